//! File content: mapping byte ranges to extents, and a shared cache of
//! decrypted chunks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::id::ChunkId;
use crate::repository::{RepoError, Repository};
use crate::tree::{Extent, Tree};

/// The extents of one regular file with their start offsets, built when the
/// file is opened.
#[derive(Debug)]
pub(super) struct FileContent {
    tree: Arc<Tree>,
    index: usize,
    /// File offset of each extent, in order, then the file length.
    starts: Vec<u64>,
}

/// The part of one extent that a read covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Piece {
    /// Index of the extent.
    pub extent: usize,
    /// Offset of the first byte inside the extent.
    pub start: u64,
    /// Number of bytes.
    pub len: usize,
}

impl FileContent {
    /// Builds the offset table of entry `index` of `tree`. Returns `None` when
    /// the extent lengths overflow a `u64`.
    pub fn new(tree: Arc<Tree>, index: usize) -> Option<Self> {
        let content = &tree.nodes[index].content;
        let mut starts = Vec::with_capacity(content.len() + 1);
        let mut offset = 0u64;
        for extent in content {
            starts.push(offset);
            offset = offset.checked_add(extent.len())?;
        }
        starts.push(offset);
        Some(Self {
            tree,
            index,
            starts,
        })
    }

    /// Returns the extents.
    pub fn extents(&self) -> &[Extent] {
        &self.tree.nodes[self.index].content
    }

    /// Returns the file length, the sum of the extent lengths.
    pub fn len(&self) -> u64 {
        *self.starts.last().expect("starts is never empty")
    }

    /// Returns the index of the extent that contains byte `offset`, or `None`
    /// past the end. Empty extents never contain a byte.
    pub fn extent_at(&self, offset: u64) -> Option<usize> {
        if offset >= self.len() {
            return None;
        }
        // The last extent that starts at or before `offset`. Empty extents share
        // their start with the next one, so this skips them.
        let count = self.starts.len() - 1;
        Some(self.starts[..count].partition_point(|&start| start <= offset) - 1)
    }

    /// Splits the read of `size` bytes at `offset` into extent pieces, in file
    /// order. The read is cut at the end of the file.
    pub fn pieces(&self, offset: u64, size: u32) -> Vec<Piece> {
        let end = offset.saturating_add(u64::from(size)).min(self.len());
        let Some(mut extent) = self.extent_at(offset) else {
            return Vec::new();
        };
        let mut pieces = Vec::new();
        let mut position = offset;
        while position < end {
            let extent_end = self.starts[extent + 1];
            let piece_end = extent_end.min(end);
            if piece_end > position {
                pieces.push(Piece {
                    extent,
                    start: position - self.starts[extent],
                    len: (piece_end - position) as usize,
                });
            }
            position = piece_end;
            extent += 1;
        }
        pieces
    }

    /// Returns the first offset at or after `offset` inside a data extent, as
    /// `lseek(SEEK_DATA)` does, or `None` (ENXIO) if there is none.
    pub fn seek_data(&self, offset: u64) -> Option<u64> {
        let first = self.extent_at(offset)?;
        (first..self.extents().len())
            .find(|&i| matches!(self.extents()[i], Extent::Data { len, .. } if len > 0))
            .map(|i| self.starts[i].max(offset))
    }

    /// Returns the first offset at or after `offset` inside a hole, as
    /// `lseek(SEEK_HOLE)` does: the end of the file counts as a hole. Returns
    /// `None` (ENXIO) at or past the end.
    pub fn seek_hole(&self, offset: u64) -> Option<u64> {
        let first = self.extent_at(offset)?;
        let hole = (first..self.extents().len())
            .find(|&i| matches!(self.extents()[i], Extent::Hole { len } if len > 0))
            .map_or(self.len(), |i| self.starts[i]);
        Some(hole.max(offset))
    }
}

type ChunkData = Arc<Vec<u8>>;
/// A chunk being read by one thread. Other threads that want it wait on the mutex.
type LoadSlot = Arc<Mutex<Option<ChunkData>>>;

struct Lru {
    chunks: LruCache<ChunkId, ChunkData>,
    bytes: usize,
}

/// Decrypted chunks shared by all open files, bounded by their total size.
///
/// Readers that want the same chunk at the same time read it from the
/// repository once: a per-chunk lock is held while that chunk is read, so only
/// threads that want it wait. The locks shared by all chunks are held only for
/// map operations, never while a chunk is read or decrypted.
pub(super) struct ChunkCache {
    repo: Arc<Repository>,
    max_bytes: usize,
    lru: Mutex<Lru>,
    loading: Mutex<HashMap<ChunkId, LoadSlot>>,
}

impl ChunkCache {
    /// Creates an empty cache that keeps at most `max_bytes` of plaintext.
    pub fn new(repo: Arc<Repository>, max_bytes: usize) -> Self {
        Self {
            repo,
            max_bytes,
            lru: Mutex::new(Lru {
                chunks: LruCache::unbounded(),
                bytes: 0,
            }),
            loading: Mutex::new(HashMap::new()),
        }
    }

    /// Returns true if the chunk is cached or being read.
    pub fn is_cached_or_loading(&self, id: &ChunkId) -> bool {
        self.lru
            .lock()
            .expect("chunk cache lock")
            .chunks
            .contains(id)
            || self
                .loading
                .lock()
                .expect("chunk loading lock")
                .contains_key(id)
    }

    /// Returns a chunk's plaintext from the cache, or reads, verifies and
    /// decrypts it and adds it to the cache.
    pub fn get(&self, id: &ChunkId) -> Result<ChunkData, RepoError> {
        if let Some(data) = self.cached(id) {
            return Ok(data);
        }
        let slot = self
            .loading
            .lock()
            .expect("chunk loading lock")
            .entry(*id)
            .or_default()
            .clone();
        // Only threads that want this chunk wait on its slot.
        let mut loaded = slot.lock().expect("chunk slot lock");
        if let Some(data) = loaded.as_ref() {
            return Ok(data.clone());
        }
        // The thread that filled the slot may have removed it from `loading`
        // before this thread created a new one.
        if let Some(data) = self.cached(id) {
            return Ok(data);
        }
        let result = self.repo.read_chunk(id).map(Arc::new);
        if let Ok(data) = &result {
            *loaded = Some(data.clone());
            self.insert(*id, data.clone());
        }
        self.loading.lock().expect("chunk loading lock").remove(id);
        result
    }

    fn cached(&self, id: &ChunkId) -> Option<ChunkData> {
        self.lru
            .lock()
            .expect("chunk cache lock")
            .chunks
            .get(id)
            .cloned()
    }

    fn insert(&self, id: ChunkId, data: ChunkData) {
        if data.len() > self.max_bytes {
            return;
        }
        let mut evicted = Vec::new();
        {
            let mut lru = self.lru.lock().expect("chunk cache lock");
            lru.bytes += data.len();
            if let Some(old) = lru.chunks.put(id, data) {
                lru.bytes -= old.len();
            }
            while lru.bytes > self.max_bytes {
                let Some((_, old)) = lru.chunks.pop_lru() else {
                    break;
                };
                lru.bytes -= old.len();
                evicted.push(old);
            }
        }
        // Freed here, outside the lock.
        drop(evicted);
    }

    /// Returns the number of cached chunks and their total size in bytes.
    #[cfg(test)]
    fn usage(&self) -> (usize, usize) {
        let lru = self.lru.lock().unwrap();
        (lru.chunks.len(), lru.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Node, NodeKind};

    fn data(len: u32) -> Extent {
        Extent::Data {
            id: ChunkId([len as u8; 32]),
            len,
        }
    }

    fn hole(len: u64) -> Extent {
        Extent::Hole { len }
    }

    fn content(extents: Vec<Extent>) -> FileContent {
        let mut node = Node::new(b"f".to_vec(), NodeKind::File);
        node.content = extents;
        FileContent::new(Arc::new(Tree { nodes: vec![node] }), 0).unwrap()
    }

    fn piece(extent: usize, start: u64, len: usize) -> Piece {
        Piece { extent, start, len }
    }

    #[test]
    fn pieces_inside_one_extent() {
        let file = content(vec![data(100), data(50)]);
        assert_eq!(file.len(), 150);
        assert_eq!(file.pieces(10, 20), [piece(0, 10, 20)]);
        assert_eq!(file.pieces(100, 50), [piece(1, 0, 50)]);
    }

    #[test]
    fn pieces_across_extents() {
        let file = content(vec![data(100), hole(1000), data(50)]);
        assert_eq!(
            file.pieces(90, 1100),
            [piece(0, 90, 10), piece(1, 0, 1000), piece(2, 0, 50)]
        );
    }

    #[test]
    fn pieces_cut_at_end_of_file() {
        let file = content(vec![data(100)]);
        assert_eq!(file.pieces(90, 4096), [piece(0, 90, 10)]);
        assert!(file.pieces(100, 10).is_empty());
        assert!(file.pieces(u64::MAX, u32::MAX).is_empty());
    }

    #[test]
    fn pieces_skip_empty_extents() {
        let file = content(vec![data(0), data(10), hole(0), data(0), data(10)]);
        assert_eq!(file.extent_at(0), Some(1));
        assert_eq!(file.extent_at(10), Some(4));
        assert_eq!(file.pieces(0, 20), [piece(1, 0, 10), piece(4, 0, 10)]);
    }

    #[test]
    fn empty_file_has_no_pieces() {
        let file = content(vec![]);
        assert_eq!(file.len(), 0);
        assert_eq!(file.extent_at(0), None);
        assert!(file.pieces(0, 10).is_empty());
    }

    #[test]
    fn extent_at_boundaries() {
        let file = content(vec![data(10), hole(10), data(10)]);
        assert_eq!(file.extent_at(0), Some(0));
        assert_eq!(file.extent_at(9), Some(0));
        assert_eq!(file.extent_at(10), Some(1));
        assert_eq!(file.extent_at(29), Some(2));
        assert_eq!(file.extent_at(30), None);
    }

    #[test]
    fn seek_data_and_hole() {
        let file = content(vec![hole(10), data(10), hole(10), data(10)]);
        assert_eq!(file.seek_data(0), Some(10));
        assert_eq!(file.seek_data(15), Some(15));
        assert_eq!(file.seek_data(20), Some(30));
        assert_eq!(file.seek_data(40), None);
        assert_eq!(file.seek_hole(0), Some(0));
        assert_eq!(file.seek_hole(10), Some(20));
        assert_eq!(file.seek_hole(31), Some(40));
        assert_eq!(file.seek_hole(40), None);
    }

    #[test]
    fn seek_data_in_trailing_hole() {
        let file = content(vec![data(10), hole(10)]);
        assert_eq!(file.seek_data(12), None);
        assert_eq!(file.seek_hole(3), Some(10));
    }

    #[test]
    fn offsets_overflow_rejected() {
        let mut node = Node::new(b"f".to_vec(), NodeKind::File);
        node.content = vec![hole(u64::MAX), hole(1)];
        assert!(FileContent::new(Arc::new(Tree { nodes: vec![node] }), 0).is_none());
    }

    #[test]
    fn cache_evicts_by_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let repo = crate::repository::Repository::init(
            Box::new(crate::repository::LocalBackend::new(dir.path())),
            b"pw",
            "test",
            crate::crypto::KdfParams {
                memory_kib: 1024,
                iterations: 1,
                parallelism: 1,
            },
        )
        .unwrap();
        let cache = ChunkCache::new(Arc::new(repo), 250);
        for i in 0..4u8 {
            cache.insert(ChunkId([i; 32]), Arc::new(vec![i; 100]));
        }
        assert_eq!(cache.usage(), (2, 200));
        assert!(cache.cached(&ChunkId([0; 32])).is_none());
        assert!(cache.cached(&ChunkId([3; 32])).is_some());
        cache.insert(ChunkId([9; 32]), Arc::new(vec![0; 251]));
        assert!(cache.cached(&ChunkId([9; 32])).is_none());
    }
}
