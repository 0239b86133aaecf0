//! The index: which pack holds each blob, and where.
//!
//! Index files are sealed postcard encodings of `Vec<IndexRecord>`, one record
//! per pack. Each backup writes one or more of them after its packs and before
//! its snapshot. In memory, all index files are merged into one [`Index`].

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::pack::{BlobKind, PackEntry};
use crate::id::PackId;

/// Largest index file accepted when reading, 512 MiB.
pub const MAX_INDEX_LEN: usize = 512 << 20;

/// The blobs of one pack, as stored in an index file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexRecord {
    /// The pack.
    pub pack: PackId,
    /// Its blobs.
    pub entries: Vec<PackEntry>,
}

/// Decodes the plaintext of an index file.
pub fn decode_index(plain: &[u8]) -> Result<Vec<IndexRecord>, postcard::Error> {
    postcard::from_bytes(plain)
}

/// Location of a stored blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLocation {
    /// The pack.
    pub pack: PackId,
    /// Chunk or tree.
    pub kind: BlobKind,
    /// Offset of the sealed blob in the pack.
    pub offset: u32,
    /// Length of the sealed blob.
    pub len: u32,
    /// Length of the plaintext.
    pub raw_len: u32,
}

/// A blob's location, with the pack as a number into [`Index`]'s pack list.
/// Packed to 17 bytes, because the index contains one per blob of the
/// repository.
#[derive(Clone, Copy)]
#[repr(C, packed)]
struct Slot {
    pack: u32,
    offset: u32,
    len: u32,
    raw_len: u32,
    kind: BlobKind,
}

/// A blob's id and location: 49 bytes.
#[derive(Clone, Copy)]
#[repr(C, packed)]
struct Entry {
    id: [u8; 32],
    slot: Slot,
}

/// Sorted entries per bucket that the bucket table aims at: few enough that a
/// lookup's binary search touches two or three cache lines, for a table of
/// about one byte per blob.
const BUCKET_TARGET: usize = 4;

/// Blobs added one record at a time stay in a hash map until there are this
/// many, or an eighth of the sorted entries if that is more. Then they are
/// merged into the sorted entries.
const MERGE_MIN: usize = 1 << 17;

/// All known blobs.
///
/// Most entries lie in one vector sorted by id, 49 bytes per blob, with a table
/// of positions, about one byte per blob, that narrows a lookup to the few
/// entries that share the id's first bits. Blobs added during a command (a backup's new packs) go to a
/// hash map first, about 60 bytes per blob, and are merged into the vector once
/// the map grows large. A blob listed twice keeps the location added first.
#[derive(Default)]
pub struct Index {
    packs: Vec<PackId>,
    pack_numbers: HashMap<PackId, u32>,
    /// Entries sorted by id, each id once.
    sorted: Vec<Entry>,
    /// `buckets[b]..buckets[b + 1]` are the positions in `sorted` of the ids
    /// whose first `bucket_bits` bits are `b`. Empty while `sorted` is.
    buckets: Vec<u32>,
    bucket_bits: u32,
    /// Blobs added since the last merge whose ids `sorted` lacks.
    recent: HashMap<[u8; 32], Slot>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Index({} blobs in {} packs)",
            self.len(),
            self.packs.len()
        )
    }
}

/// Collects the records of many index files and sorts them once, which takes
/// less time and memory than adding them to an [`Index`] one by one.
#[derive(Default)]
pub struct IndexBuilder {
    index: Index,
    entries: Vec<Entry>,
}

impl IndexBuilder {
    /// Adds every blob of a record.
    pub fn add_record(&mut self, record: &IndexRecord) {
        let pack = self.index.pack_number(&record.pack);
        self.entries.extend(record.entries.iter().map(|e| Entry {
            id: e.id,
            slot: Slot::new(e, pack),
        }));
    }

    /// Sorts the blobs and returns the index. A blob listed twice keeps the
    /// location added first.
    pub fn finish(mut self) -> Index {
        // A stable sort keeps equal ids in the order they were added, so the
        // first of each run is the first added.
        self.entries.sort_by_key(|entry| entry.id);
        self.entries.dedup_by(|later, first| later.id == first.id);
        self.entries.shrink_to_fit();
        self.index.sorted = self.entries;
        self.index.rebuild_buckets();
        self.index
    }
}

impl Slot {
    fn new(entry: &PackEntry, pack: u32) -> Self {
        Slot {
            pack,
            offset: entry.offset,
            len: entry.len,
            raw_len: entry.raw_len,
            kind: entry.kind,
        }
    }
}

impl Index {
    fn pack_number(&mut self, pack: &PackId) -> u32 {
        if let Some(n) = self.pack_numbers.get(pack) {
            return *n;
        }
        let n = self.packs.len() as u32;
        self.packs.push(*pack);
        self.pack_numbers.insert(*pack, n);
        n
    }

    /// Adds every blob of a record; a blob already known keeps its first location.
    pub fn add_record(&mut self, record: &IndexRecord) {
        let pack = self.pack_number(&record.pack);
        for entry in &record.entries {
            if self.find_sorted(&entry.id).is_none() {
                self.recent
                    .entry(entry.id)
                    .or_insert_with(|| Slot::new(entry, pack));
            }
        }
        if self.recent.len() >= MERGE_MIN.max(self.sorted.len() / 8) {
            self.merge_recent();
        }
    }

    /// Moves the entries of `recent` into `sorted`, merging from the back so
    /// that no second copy of `sorted` is needed.
    fn merge_recent(&mut self) {
        // Taking the map rather than draining it also frees its table.
        let recent = std::mem::take(&mut self.recent);
        let mut new: Vec<Entry> = recent
            .into_iter()
            .map(|(id, slot)| Entry { id, slot })
            .collect();
        new.sort_unstable_by_key(|entry| entry.id);
        let old_len = self.sorted.len();
        let filler = new[0];
        self.sorted.reserve_exact(new.len());
        self.sorted.resize(old_len + new.len(), filler);
        // `old` and `fresh` count the entries of `sorted` and of `new` not yet
        // placed. No id is in both, because `recent` only takes ids that
        // `sorted` lacks.
        let (mut old, mut fresh) = (old_len, new.len());
        while fresh > 0 {
            let to = old + fresh - 1;
            if old > 0 && self.sorted[old - 1].id > new[fresh - 1].id {
                self.sorted[to] = self.sorted[old - 1];
                old -= 1;
            } else {
                self.sorted[to] = new[fresh - 1];
                fresh -= 1;
            }
        }
        self.rebuild_buckets();
    }

    fn rebuild_buckets(&mut self) {
        self.buckets.clear();
        if self.sorted.is_empty() {
            return;
        }
        let buckets_needed = (self.sorted.len() / BUCKET_TARGET).max(1);
        self.bucket_bits = buckets_needed.next_power_of_two().trailing_zeros().min(24);
        self.buckets.reserve_exact((1 << self.bucket_bits) + 1);
        let mut position = 0;
        for bucket in 0..=(1u64 << self.bucket_bits) {
            while position < self.sorted.len()
                && u64::from(bucket_of(&self.sorted[position].id, self.bucket_bits)) < bucket
            {
                position += 1;
            }
            self.buckets.push(position as u32);
        }
    }

    fn find_sorted(&self, id: &[u8; 32]) -> Option<&Slot> {
        if self.sorted.is_empty() {
            return None;
        }
        let bucket = bucket_of(id, self.bucket_bits) as usize;
        let range = self.buckets[bucket] as usize..self.buckets[bucket + 1] as usize;
        let candidates = &self.sorted[range];
        let at = candidates.binary_search_by(|e| e.id.cmp(id)).ok()?;
        Some(&candidates[at].slot)
    }

    fn find(&self, id: &[u8; 32]) -> Option<&Slot> {
        self.find_sorted(id).or_else(|| self.recent.get(id))
    }

    fn location(&self, slot: &Slot) -> BlobLocation {
        BlobLocation {
            pack: self.packs[slot.pack as usize],
            kind: slot.kind,
            offset: slot.offset,
            len: slot.len,
            raw_len: slot.raw_len,
        }
    }

    /// Looks a blob up by id.
    pub fn get(&self, id: &[u8; 32]) -> Option<BlobLocation> {
        self.find(id).map(|slot| self.location(slot))
    }

    /// Returns true if the blob is stored.
    pub fn contains(&self, id: &[u8; 32]) -> bool {
        self.find(id).is_some()
    }

    /// Returns the number of blobs.
    pub fn len(&self) -> usize {
        self.sorted.len() + self.recent.len()
    }

    /// Returns true when no blob is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns true if some index record lists the pack.
    pub fn has_pack(&self, pack: &PackId) -> bool {
        self.pack_numbers.contains_key(pack)
    }

    /// Iterates over all blobs.
    pub fn iter(&self) -> impl Iterator<Item = ([u8; 32], BlobLocation)> + '_ {
        let sorted = self.sorted.iter().map(|e| (e.id, e.slot));
        let recent = self.recent.iter().map(|(id, slot)| (*id, *slot));
        sorted
            .chain(recent)
            .map(|(id, slot)| (id, self.location(&slot)))
    }
}

/// Returns the bucket of an id: its first `bits` bits, at most 32.
fn bucket_of(id: &[u8; 32], bits: u32) -> u32 {
    let prefix = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
    prefix.checked_shr(32 - bits).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pack: u8, ids: &[[u8; 32]], offset: u32) -> IndexRecord {
        IndexRecord {
            pack: PackId([pack; 32]),
            entries: ids
                .iter()
                .enumerate()
                .map(|(n, id)| PackEntry {
                    id: *id,
                    kind: BlobKind::Chunk,
                    offset: offset + n as u32,
                    len: 10,
                    raw_len: 20,
                })
                .collect(),
        }
    }

    /// Ids spread over every bucket, with some sharing a bucket.
    fn ids(count: usize, seed: u8) -> Vec<[u8; 32]> {
        (0..count)
            .map(|n| *blake3::hash(&[&n.to_le_bytes()[..], &[seed]].concat()).as_bytes())
            .collect()
    }

    #[test]
    fn builder_keeps_first_location_of_repeated_blob() {
        let blobs = ids(5000, 1);
        let mut builder = IndexBuilder::default();
        builder.add_record(&record(1, &blobs[..3000], 0));
        builder.add_record(&record(2, &blobs[2000..], 100_000));
        let index = builder.finish();

        assert_eq!(index.len(), 5000);
        for (n, id) in blobs.iter().enumerate() {
            let location = index.get(id).expect("every added blob is found");
            if n < 3000 {
                assert_eq!(location.pack, PackId([1; 32]), "blob {n}");
                assert_eq!(location.offset, n as u32, "blob {n}");
            } else {
                assert_eq!(location.pack, PackId([2; 32]), "blob {n}");
                assert_eq!(location.offset, 100_000 + n as u32 - 2000, "blob {n}");
            }
        }
        for id in ids(1000, 2) {
            assert!(!index.contains(&id));
        }
        assert_eq!(index.iter().count(), 5000);
    }

    #[test]
    fn added_records_merge_into_sorted_entries() {
        let loaded = ids(1000, 3);
        let mut builder = IndexBuilder::default();
        builder.add_record(&record(1, &loaded, 0));
        let mut index = builder.finish();

        // Enough single records to pass MERGE_MIN twice, some repeating blobs
        // that are already known.
        let added = ids(2 * MERGE_MIN + 10, 4);
        for (n, batch) in added.chunks(1000).enumerate() {
            index.add_record(&record((n % 100) as u8 + 2, batch, 0));
            index.add_record(&record(200, &loaded[..10], 5000));
        }
        assert!(index.recent.len() < MERGE_MIN, "entries were merged");
        assert_eq!(index.len(), loaded.len() + added.len());
        assert!(index.sorted.windows(2).all(|w| w[0].id < w[1].id));
        for (n, id) in loaded.iter().enumerate() {
            let location = index.get(id).unwrap();
            assert_eq!(location.pack, PackId([1; 32]), "loaded blob {n}");
            assert_eq!(location.offset, n as u32, "loaded blob {n}");
        }
        for (n, id) in added.iter().enumerate() {
            let location = index.get(id).unwrap();
            let pack = (n / 1000 % 100) as u8 + 2;
            assert_eq!(location.pack, PackId([pack; 32]), "added blob {n}");
            assert_eq!(location.offset, (n % 1000) as u32, "added blob {n}");
        }
        assert!(index.has_pack(&PackId([200; 32])));
        assert!(!index.has_pack(&PackId([255; 32])));
    }

    #[test]
    fn entry_takes_49_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 49);
    }
}
