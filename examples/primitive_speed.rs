//! Measures the speed of the primitives a backup is made of, on all cores, so that
//! benchmark results can be read as a fraction of what the machine allows.
//!
//! Usage: `cargo run --release --example primitive_speed -- FILE...`
//! Prints one line per primitive: `name MB/s` (decimal megabytes of input per
//! second), measured over the given files' contents.

use std::time::Instant;

use cairn::crypto::{KeyMaterial, Keys, ObjectKind};
use rayon::prelude::*;

const PIECE: usize = 1 << 20;

fn measure(name: &str, data: &[u8], work: impl Fn(&[u8]) + Sync) {
    let pieces: Vec<&[u8]> = data.chunks(PIECE).collect();
    // One pass to warm caches, then the timed pass.
    pieces.par_iter().take(8).for_each(|p| work(p));
    let started = Instant::now();
    pieces.par_iter().for_each(|p| work(p));
    let seconds = started.elapsed().as_secs_f64();
    println!("{name} {:.0} MB/s", data.len() as f64 / seconds / 1e6);
}

fn main() {
    let mut data = Vec::new();
    for path in std::env::args().skip(1) {
        data.extend(std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}")));
    }
    assert!(!data.is_empty(), "usage: primitive_speed FILE...");
    let keys = Keys::derive([1; 16], &KeyMaterial::generate());

    measure("blake3-keyed", &data, |p| {
        std::hint::black_box(keys.chunk_id(p));
    });
    measure("aes-256-gcm-siv", &data, |p| {
        std::hint::black_box(keys.seal(ObjectKind::Chunk, &[0; 32], p, 0).unwrap());
    });
    measure("zstd-3", &data, |p| {
        std::hint::black_box(zstd::bulk::compress(p, 3).unwrap());
    });
    measure("seal-zstd-3", &data, |p| {
        std::hint::black_box(keys.seal(ObjectKind::Chunk, &[0; 32], p, 3).unwrap());
    });
    let chunker =
        cairn::chunker::Chunker::new(cairn::chunker::ChunkerParams::DEFAULT, keys.gear_table());
    let started = Instant::now();
    let mut cuts = 0usize;
    chunker
        .chunk_reader(&data[..], |_| {
            cuts += 1;
            Ok(())
        })
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "fastcdc-one-core {:.0} MB/s",
        data.len() as f64 / seconds / 1e6
    );
}
