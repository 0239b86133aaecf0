//! Writing new blobs into packs, and the packs into index files.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use super::index::IndexRecord;
use super::pack::{BlobKind, PackBuilder};
use super::{PACK_TARGET_SIZE, RepoError, Repository, damaged, pack_path};
use crate::id::TreeId;
use crate::tree::Tree;

/// Packs written are listed in an index file at the latest after this many, so
/// that an interrupted backup leaves most of its work findable.
const PACKS_PER_INDEX_FILE: usize = 64;

struct WriterState {
    chunks: PackBuilder,
    trees: PackBuilder,
    reserved: HashSet<[u8; 32]>,
    unindexed: Vec<IndexRecord>,
    written: Vec<IndexRecord>,
    bytes_written: u64,
    /// The bytes of the last pack written, kept to start the next pack in.
    spare_buffer: Option<Vec<u8>>,
}

/// Collects new blobs into packs (chunks and trees apart) and writes each pack
/// when it is full. Safe to share between threads.
pub struct BlobWriter<'a> {
    repo: &'a Repository,
    state: Mutex<WriterState>,
    /// When set, every tree passed to [`BlobWriter::store_tree`], stored or
    /// already present, by id with its encoding.
    recorded_trees: Option<Mutex<HashMap<TreeId, Vec<u8>>>>,
}

impl<'a> BlobWriter<'a> {
    pub(super) fn new(repo: &'a Repository) -> Self {
        Self {
            repo,
            state: Mutex::new(WriterState {
                chunks: PackBuilder::new(),
                trees: PackBuilder::new(),
                reserved: HashSet::new(),
                unindexed: Vec::new(),
                written: Vec::new(),
                bytes_written: 0,
                spare_buffer: None,
            }),
            recorded_trees: None,
        }
    }

    /// Makes the writer keep every tree it is given, so that a backup-only
    /// key, which cannot read trees back, can keep its snapshot's trees on the
    /// client.
    pub fn record_trees(mut self) -> Self {
        self.recorded_trees = Some(Mutex::default());
        self
    }

    /// Returns the trees kept since [`BlobWriter::record_trees`].
    pub fn take_recorded_trees(&self) -> HashMap<TreeId, Vec<u8>> {
        self.recorded_trees
            .as_ref()
            .map(|trees| std::mem::take(&mut *trees.lock().expect("recorded trees lock")))
            .unwrap_or_default()
    }

    /// Returns true if the caller must store the blob: it is neither in the
    /// repository nor already claimed by another caller in this session.
    pub fn reserve(&self, id: &[u8; 32]) -> bool {
        if self.repo.index().contains(id) {
            return false;
        }
        self.state.lock().expect("writer lock").reserved.insert(*id)
    }

    /// Returns true if the blob is neither in the repository nor claimed in
    /// this session, without claiming it.
    pub fn is_new(&self, id: &[u8; 32]) -> bool {
        !self.repo.index().contains(id)
            && !self
                .state
                .lock()
                .expect("writer lock")
                .reserved
                .contains(id)
    }

    /// Appends a sealed blob, writing the pack when it reaches its target size.
    pub fn add(
        &self,
        kind: BlobKind,
        id: [u8; 32],
        sealed: &[u8],
        raw_len: u32,
    ) -> Result<(), RepoError> {
        let full = {
            let mut guard = self.state.lock().expect("writer lock");
            let state = &mut *guard;
            let builder = match kind {
                BlobKind::Chunk => &mut state.chunks,
                BlobKind::Tree => &mut state.trees,
            };
            builder.add(kind, id, sealed, raw_len);
            if builder.len() >= PACK_TARGET_SIZE {
                let next = PackBuilder::with_buffer(state.spare_buffer.take().unwrap_or_default());
                Some(std::mem::replace(builder, next))
            } else {
                None
            }
        };
        if let Some(builder) = full {
            self.write_pack(builder)?;
        }
        Ok(())
    }

    /// Encodes, seals and stores a tree unless it is already stored.
    pub fn store_tree(&self, tree: &Tree) -> Result<TreeId, RepoError> {
        self.store_tree_if_new(tree).map(|(id, _)| id)
    }

    /// Stores a tree like [`BlobWriter::store_tree`], and also returns the
    /// length of its encoding if this call stored it.
    pub fn store_tree_if_new(&self, tree: &Tree) -> Result<(TreeId, Option<u64>), RepoError> {
        let encoded = tree.encode();
        if encoded.len() > crate::tree::MAX_TREE_LEN {
            return Err(RepoError::Damaged {
                object: "new directory tree".into(),
                detail: format!(
                    "{} entries encode to {} bytes, more than the {} byte limit for one directory",
                    tree.nodes.len(),
                    encoded.len(),
                    crate::tree::MAX_TREE_LEN
                ),
            });
        }
        let keys = self.repo.keys();
        let id = keys.tree_id(&encoded);
        if let Some(recorded) = &self.recorded_trees {
            recorded
                .lock()
                .expect("recorded trees lock")
                .insert(id, encoded.clone());
        }
        if !self.reserve(&id.0) {
            return Ok((id, None));
        }
        let sealed = keys
            .seal(
                BlobKind::Tree.object_kind(),
                &id.0,
                &encoded,
                self.repo.config().compression_level,
            )
            .map_err(|e| damaged(format!("new tree {}", id.short()), e))?;
        self.add(BlobKind::Tree, id.0, &sealed, encoded.len() as u32)?;
        Ok((id, Some(encoded.len() as u64)))
    }

    fn write_pack(&self, builder: PackBuilder) -> Result<(), RepoError> {
        if builder.is_empty() {
            return Ok(());
        }
        let (id, bytes, entries) = builder.finish(self.repo.keys());
        self.repo.write_file(&pack_path(&id), &bytes)?;
        let record = IndexRecord { pack: id, entries };
        self.repo.add_index_record(&record);

        let to_index = {
            let mut state = self.state.lock().expect("writer lock");
            state.bytes_written += bytes.len() as u64;
            state.spare_buffer = Some(bytes);
            state.written.push(record.clone());
            state.unindexed.push(record);
            if state.unindexed.len() >= PACKS_PER_INDEX_FILE {
                Some(std::mem::take(&mut state.unindexed))
            } else {
                None
            }
        };
        if let Some(records) = to_index {
            let (_, len) = self.repo.write_index_file(&records)?;
            self.state.lock().expect("writer lock").bytes_written += len;
        }
        Ok(())
    }

    /// Writes the open chunk pack now, however small, so that its chunks can be
    /// read from the repository.
    pub fn flush_chunks(&self) -> Result<(), RepoError> {
        let chunks = std::mem::take(&mut self.state.lock().expect("writer lock").chunks);
        self.write_pack(chunks)
    }

    /// Writes the open packs and an index file for every pack not yet listed in
    /// one. Returns the bytes written to the repository in this session.
    pub fn finish(self) -> Result<u64, RepoError> {
        self.finish_with_records().map(|(bytes, _)| bytes)
    }

    /// Like [`BlobWriter::finish`], and also returns the index records of every
    /// pack written in this session.
    pub fn finish_with_records(self) -> Result<(u64, Vec<IndexRecord>), RepoError> {
        let (chunks, trees) = {
            let mut state = self.state.lock().expect("writer lock");
            (
                std::mem::take(&mut state.chunks),
                std::mem::take(&mut state.trees),
            )
        };
        self.write_pack(chunks)?;
        self.write_pack(trees)?;
        let mut state = self.state.into_inner().expect("writer lock");
        if !state.unindexed.is_empty() {
            let (_, len) = self.repo.write_index_file(&state.unindexed)?;
            state.bytes_written += len;
        }
        Ok((state.bytes_written, state.written))
    }
}
