//! Measures the memory and lookup time of the in-memory index for a given
//! number of blobs, so that the cost per blob in `docs/benchmarks.md` can be
//! checked on any machine.
//!
//! Usage: `cargo run --release --example index_memory -- [BLOBS]` (default
//! 2,000,000). Prints the resident memory per blob after loading the blobs as
//! index files are loaded, and after adding as many again one pack at a time as
//! a backup adds them. Then it prints the time of a lookup, and the same
//! figures for a plain hash map from id to location.

use std::time::Instant;

use cairn::id::PackId;
use cairn::repository::index::{IndexBuilder, IndexRecord};
use cairn::repository::pack::{BlobKind, PackEntry};

/// Blobs per pack record, as in a pack of 16 MiB with chunks of 16 KiB.
const PER_PACK: usize = 1000;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn blob_id(n: u64) -> [u8; 32] {
    *blake3::hash(&n.to_le_bytes()).as_bytes()
}

fn records(first: u64, count: u64) -> impl Iterator<Item = IndexRecord> {
    (first..first + count)
        .step_by(PER_PACK)
        .map(move |start| IndexRecord {
            pack: PackId(blob_id(u64::MAX - start)),
            entries: (start..(start + PER_PACK as u64).min(first + count))
                .map(|n| PackEntry {
                    kind: BlobKind::Chunk,
                    id: blob_id(n),
                    offset: (n % PER_PACK as u64) as u32 * 16_384,
                    len: 16_000,
                    raw_len: 20_000,
                })
                .collect(),
        })
}

fn main() {
    let blobs: u64 = std::env::args()
        .nth(1)
        .map_or(2_000_000, |n| n.parse().expect("BLOBS is a number"));

    let before = resident_bytes();
    let mut builder = IndexBuilder::default();
    for record in records(0, blobs) {
        builder.add_record(&record);
    }
    let mut index = builder.finish();
    let loaded = resident_bytes() - before;
    println!(
        "loaded {blobs} blobs: {:.1} bytes per blob",
        loaded as f64 / blobs as f64
    );

    for record in records(blobs, blobs) {
        index.add_record(&record);
    }
    let added = resident_bytes() - before;
    println!(
        "added {blobs} more one pack at a time: {:.1} bytes per blob",
        added as f64 / (2 * blobs) as f64
    );

    let lookups = 1_000_000u64;
    let started = Instant::now();
    let mut found = 0;
    for n in 0..lookups {
        // Half of the lookups ask for a blob that is not stored.
        found += usize::from(index.contains(&blob_id(n * 8 % (8 * blobs))));
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "lookup: {:.0} ns ({found} of {lookups} found)",
        seconds / lookups as f64 * 1e9
    );
    assert_eq!(index.len() as u64, 2 * blobs);
    drop(index);

    // For comparison: a hash map from id to a 20-byte location.
    let before = resident_bytes();
    let mut map = std::collections::HashMap::new();
    for n in 0..2 * blobs {
        map.insert(blob_id(n), [0u8; 20]);
    }
    println!(
        "hash map of the same {} blobs: {:.1} bytes per blob",
        2 * blobs,
        (resident_bytes() - before) as f64 / (2 * blobs) as f64
    );
    let started = Instant::now();
    let mut found = 0;
    for n in 0..lookups {
        found += usize::from(map.contains_key(&blob_id(n * 8 % (8 * blobs))));
    }
    println!(
        "hash map lookup: {:.0} ns ({found} of {lookups} found)",
        started.elapsed().as_secs_f64() / lookups as f64 * 1e9
    );
}
