//! The index: which pack holds each blob, and where.
//!
//! Index files are sealed postcard encodings of `Vec<IndexRecord>`, one record
//! per pack. Each backup writes one or more of them after its packs and before
//! its snapshot. In memory, all index files are merged into one hash map.

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

#[derive(Clone, Copy, Debug)]
struct Slot {
    pack: u32,
    kind: BlobKind,
    offset: u32,
    len: u32,
    raw_len: u32,
}

/// All known blobs. About 90 bytes per blob with the hash map's overhead.
#[derive(Debug, Default)]
pub struct Index {
    packs: Vec<PackId>,
    pack_numbers: HashMap<PackId, u32>,
    blobs: HashMap<[u8; 32], Slot>,
}

impl Index {
    /// Adds every blob of a record; a blob already known keeps its first location.
    pub fn add_record(&mut self, record: &IndexRecord) {
        let number = match self.pack_numbers.get(&record.pack) {
            Some(n) => *n,
            None => {
                let n = self.packs.len() as u32;
                self.packs.push(record.pack);
                self.pack_numbers.insert(record.pack, n);
                n
            }
        };
        for entry in &record.entries {
            self.blobs.entry(entry.id).or_insert(Slot {
                pack: number,
                kind: entry.kind,
                offset: entry.offset,
                len: entry.len,
                raw_len: entry.raw_len,
            });
        }
    }

    /// Looks a blob up by id.
    pub fn get(&self, id: &[u8; 32]) -> Option<BlobLocation> {
        self.blobs.get(id).map(|slot| BlobLocation {
            pack: self.packs[slot.pack as usize],
            kind: slot.kind,
            offset: slot.offset,
            len: slot.len,
            raw_len: slot.raw_len,
        })
    }

    /// Returns true if the blob is stored.
    pub fn contains(&self, id: &[u8; 32]) -> bool {
        self.blobs.contains_key(id)
    }

    /// Returns the number of blobs.
    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    /// Returns true when no blob is known.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Returns true if some index record lists the pack.
    pub fn has_pack(&self, pack: &PackId) -> bool {
        self.pack_numbers.contains_key(pack)
    }

    /// Iterates over all blobs.
    pub fn iter(&self) -> impl Iterator<Item = ([u8; 32], BlobLocation)> + '_ {
        self.blobs.iter().map(|(id, slot)| {
            (
                *id,
                BlobLocation {
                    pack: self.packs[slot.pack as usize],
                    kind: slot.kind,
                    offset: slot.offset,
                    len: slot.len,
                    raw_len: slot.raw_len,
                },
            )
        })
    }
}
