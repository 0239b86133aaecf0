//! Copying snapshots from one repository to another.
//!
//! A copied snapshot records the id of the snapshot it copies in its
//! `original` field, so a later copy skips it. The destination then stores its
//! own blobs, sealed under its own keys, and reads them without the source.
//!
//! When both repositories share the identity secret (one was made with
//! `init --like` the other), a blob has the same id in both. Each blob that the
//! destination lacks is then decrypted and sealed again under the same id, and
//! trees are copied byte for byte. Otherwise every chunk is read, its id is
//! computed anew under the destination's chunk-id key, and every tree is
//! rewritten bottom-up with the new chunk and subtree ids. Chunk boundaries stay
//! those of the source in both cases.
//!
//! The destination is written in the order a backup uses: under a shared lock,
//! the packs and index files of one snapshot first, then that snapshot. A kill
//! at any moment leaves the destination readable, with at most some packs that
//! no snapshot uses yet, which the next copy or backup reuses.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::crypto::Payload;
use crate::id::{ChunkId, SnapshotId, TreeId};
use crate::progress::Progress;
use crate::repository::lock::LockGuard;
use crate::repository::pack::BlobKind;
use crate::repository::{BlobWriter, RepoError, Repository};
use crate::snapshot::Snapshot;
use crate::tree::{Extent, Node, NodeKind, Tree};

/// Settings of one copy run.
#[derive(Clone, Debug, Default)]
pub struct CopyOptions {
    /// Source snapshots to copy, or every readable snapshot when empty.
    pub snapshots: Vec<SnapshotId>,
    /// Copy only snapshots that carry every one of these tags.
    pub tags: Vec<String>,
    /// How long to wait for an exclusive lock on the destination (a running
    /// prune) to go away.
    pub lock_wait: Duration,
    /// Counters of snapshots copied and blob bytes read, for a progress display.
    pub progress: Option<Arc<Progress>>,
}

/// One snapshot written by a copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopiedSnapshot {
    /// The snapshot in the source repository.
    pub source: SnapshotId,
    /// The new snapshot in the destination repository.
    pub copy: SnapshotId,
}

/// Outcome of a copy run.
#[derive(Clone, Debug, Default)]
pub struct CopyReport {
    /// Snapshots written, oldest first.
    pub copied: Vec<CopiedSnapshot>,
    /// Selected snapshots that the destination already held.
    pub already_present: u64,
    /// Blobs (chunks and trees) written to the destination.
    pub blobs_added: u64,
    /// Plaintext bytes of the blobs written to the destination.
    pub blob_bytes_added: u64,
    /// Chunks read from the source.
    pub chunks_read: u64,
    /// Bytes of packs, index files and snapshots written to the destination.
    pub bytes_added: u64,
    /// True when both repositories share the identity secret, so that blobs
    /// were copied by id.
    pub same_identity: bool,
}

/// Returns the id under which a snapshot is known in every repository that
/// contains a copy of it: its `original`, or its own id if it is not a copy.
fn origin(id: SnapshotId, snapshot: &Snapshot) -> SnapshotId {
    snapshot.original.unwrap_or(id)
}

/// Copies the selected snapshots of `source` that `dest` does not hold yet.
///
/// Fails before writing anything if both are the same repository or a named
/// snapshot cannot be read. A source blob that cannot be read stops the copy,
/// and the snapshots copied before it stay in the destination.
pub fn copy(
    source: &Repository,
    dest: &Repository,
    options: &CopyOptions,
) -> Result<CopyReport, RepoError> {
    if source.config().repo_id == dest.config().repo_id {
        return Err(RepoError::SameRepository(dest.location()));
    }
    let selected = select_snapshots(source, options)?;

    let lock = dest.lock_shared("copy", options.lock_wait)?;
    // Blobs deleted by a prune that finished before the lock was taken must not
    // be deduplicated against, so the index is read again under the lock.
    dest.load_index()?;
    let adopted = dest.index_unindexed_packs()?;
    if adopted > 0 {
        tracing::info!("indexed {adopted} packs left by an interrupted run");
    }

    // Copies in the destination, by the id of the snapshot they copy.
    let mut copies: HashMap<SnapshotId, (SnapshotId, TreeId)> = dest
        .readable_snapshots()?
        .into_iter()
        .map(|(id, snapshot)| (origin(id, &snapshot), (id, snapshot.tree)))
        .collect();
    let source_snapshots = source.readable_snapshots()?;
    let origins: HashMap<SnapshotId, SnapshotId> = source_snapshots
        .iter()
        .map(|(id, snapshot)| (*id, origin(*id, snapshot)))
        .collect();

    let mut report = CopyReport {
        same_identity: source.keys().same_identity(dest.keys()),
        ..CopyReport::default()
    };
    let selected_count = selected.len();
    let pending: Vec<(SnapshotId, Snapshot)> = selected
        .into_iter()
        .filter(|(id, snapshot)| !copies.contains_key(&origin(*id, snapshot)))
        .collect();
    report.already_present = (selected_count - pending.len()) as u64;
    let progress = options.progress.clone().unwrap_or_default();
    progress.set_total_items(pending.len() as u64);

    let mut copier = Copier {
        source,
        dest,
        same_identity: report.same_identity,
        keep_compression: source.config().compression_level == dest.config().compression_level,
        ahead: HashMap::new(),
        plan: ReadPlan::default(),
        progress: &progress,
        chunks: HashMap::new(),
        trees: HashMap::new(),
        seeded: HashSet::new(),
        blobs_added: 0,
        blob_bytes_added: 0,
        chunks_read: 0,
    };
    for (id, snapshot) in pending {
        if !copier.same_identity
            && let Some((source_tree, dest_tree)) =
                earlier_copy(&snapshot, &source_snapshots, &origins, &copies)
        {
            copier.seed(source_tree, dest_tree)?;
        }
        let parent = snapshot
            .parent
            .and_then(|parent| origins.get(&parent))
            .and_then(|parent| copies.get(parent))
            .map(|(copy_id, _)| *copy_id);
        let copy = Snapshot {
            parent,
            original: Some(origin(id, &snapshot)),
            ..snapshot
        };
        let (copy_id, copy, bytes) = copier.copy_snapshot(copy, &lock)?;
        tracing::info!("copied snapshot {} as {}", id.short(), copy_id.short());
        report.bytes_added += bytes;
        copies.insert(origin(id, &copy), (copy_id, copy.tree));
        report.copied.push(CopiedSnapshot {
            source: id,
            copy: copy_id,
        });
        progress.add_items(1);
    }
    drop(lock);
    report.blobs_added = copier.blobs_added;
    report.blob_bytes_added = copier.blob_bytes_added;
    report.chunks_read = copier.chunks_read;
    Ok(report)
}

/// Finds a snapshot copied before that probably shares most content with
/// `snapshot`: its parent, or else the newest one with the same host name and
/// paths. Returns its tree in the source and the tree of its copy.
fn earlier_copy(
    snapshot: &Snapshot,
    source_snapshots: &[(SnapshotId, Snapshot)],
    origins: &HashMap<SnapshotId, SnapshotId>,
    copies: &HashMap<SnapshotId, (SnapshotId, TreeId)>,
) -> Option<(TreeId, TreeId)> {
    let copied = |id: &SnapshotId| {
        let (_, copy_tree) = copies.get(origins.get(id)?)?;
        Some(*copy_tree)
    };
    let by_parent = snapshot.parent.and_then(|parent| {
        let (_, earlier) = source_snapshots.iter().find(|(id, _)| *id == parent)?;
        Some((earlier.tree, copied(&parent)?))
    });
    by_parent.or_else(|| {
        source_snapshots.iter().rev().find_map(|(id, earlier)| {
            let alike = earlier.hostname == snapshot.hostname && earlier.paths == snapshot.paths;
            alike.then(|| copied(id).map(|copy_tree| (earlier.tree, copy_tree)))?
        })
    })
}

/// Loads the snapshots to copy, oldest first: the named ones, or all readable
/// ones, and of those only the ones with every requested tag.
fn select_snapshots(
    source: &Repository,
    options: &CopyOptions,
) -> Result<Vec<(SnapshotId, Snapshot)>, RepoError> {
    let mut selected = if options.snapshots.is_empty() {
        source.readable_snapshots()?
    } else {
        let mut named = Vec::new();
        let mut seen = HashSet::new();
        for id in &options.snapshots {
            if seen.insert(*id) {
                named.push((*id, source.load_snapshot(id)?));
            }
        }
        named.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        named
    };
    selected.retain(|(_, snapshot)| options.tags.iter().all(|tag| snapshot.tags.contains(tag)));
    Ok(selected)
}

/// A directory being copied: its source tree and the entries copied so far.
struct Frame {
    source: TreeId,
    tree: Arc<Tree>,
    next: usize,
    nodes: Vec<Node>,
}

/// The chunks that the copy of one snapshot reads, in the order the copy
/// needs them, and how far they have been read ahead.
#[derive(Default)]
struct ReadPlan {
    chunks: Vec<ChunkId>,
    /// Each chunk's position in `chunks`.
    positions: HashMap<ChunkId, usize>,
    /// The number of chunks read ahead so far.
    read: usize,
}

/// A chunk read ahead of its file: its payload, the length of its plaintext,
/// and its id in the destination.
struct ReadAhead {
    payload: Payload,
    plain_len: usize,
    dest_id: ChunkId,
}

/// The most sealed bytes read ahead at once.
const READ_AHEAD_BYTES: u64 = 32 << 20;

/// The state of one copy run: which blobs are copied, and under which ids.
struct Copier<'a> {
    source: &'a Repository,
    dest: &'a Repository,
    same_identity: bool,
    /// Both repositories compress at the same level, so a blob's compressed
    /// payload is sealed again as it is, which saves compressing it anew.
    keep_compression: bool,
    /// Chunks read ahead in merged reads, by source id, until their file
    /// comes up.
    ahead: HashMap<ChunkId, ReadAhead>,
    plan: ReadPlan,
    progress: &'a Progress,
    /// Source chunk id to destination chunk id, for chunks read in this run.
    chunks: HashMap<ChunkId, ChunkId>,
    /// Source tree id to destination tree id, for trees whose whole content was
    /// copied in this run or found complete in an earlier copy.
    trees: HashMap<TreeId, TreeId>,
    /// Pairs of source and destination trees compared by [`Copier::seed`].
    seeded: HashSet<(TreeId, TreeId)>,
    blobs_added: u64,
    blob_bytes_added: u64,
    chunks_read: u64,
}

/// A pair of directories being compared: a source tree and the tree of an
/// earlier copy of it.
struct SeedFrame {
    source: TreeId,
    dest: TreeId,
    source_tree: Arc<Tree>,
    dest_tree: Arc<Tree>,
    next: usize,
    /// False once an entry differs other than by its ids.
    matches: bool,
}

/// Returns a node without its chunk and subtree ids, to compare a source node
/// with its copy.
fn without_ids(node: &Node) -> Node {
    let mut node = node.clone();
    node.subtree = None;
    for extent in &mut node.content {
        if let Extent::Data { id, .. } = extent {
            *id = ChunkId([0; 32]);
        }
    }
    node
}

impl Copier<'_> {
    /// Copies the blobs of a snapshot that the destination lacks, then saves the
    /// snapshot with its tree replaced by the tree's id in the destination.
    /// Returns the new snapshot's id, the snapshot, and the bytes written.
    fn copy_snapshot(
        &mut self,
        mut snapshot: Snapshot,
        lock: &LockGuard,
    ) -> Result<(SnapshotId, Snapshot, u64), RepoError> {
        let writer = self.dest.blob_writer();
        self.plan = self.plan_reads(&writer, snapshot.tree)?;
        let copied = self.copy_tree(&writer, snapshot.tree);
        self.plan = ReadPlan::default();
        self.ahead.clear();
        snapshot.tree = copied?;
        let mut bytes = writer.finish()?;
        lock.check()?;
        let (id, len) = self.dest.save_snapshot(&snapshot)?;
        bytes += len;
        Ok((id, snapshot, bytes))
    }

    /// Learns the destination ids of chunks and trees from an earlier copy,
    /// so that the chunks of unchanged files are not read again when the
    /// repositories do not share the identity secret.
    ///
    /// The source tree and the copy's tree are walked side by side. Entries
    /// must be equal except for their ids, which is what `copy` writes, so a
    /// copy that `repair snapshots` changed maps only where it still matches.
    /// A chunk is mapped when the destination's index lists its copy, and a
    /// tree only when its whole content matches.
    fn seed(&mut self, source_root: TreeId, dest_root: TreeId) -> Result<(), RepoError> {
        let mut stack = match self.seed_frame(source_root, dest_root)? {
            Some(frame) => vec![frame],
            None => return Ok(()),
        };
        while let Some(frame) = stack.last_mut() {
            let position = frame.next;
            frame.next += 1;
            let pair = frame
                .source_tree
                .nodes
                .get(position)
                .zip(frame.dest_tree.nodes.get(position));
            if let Some((source_node, dest_node)) = pair {
                if without_ids(source_node) != without_ids(dest_node) {
                    frame.matches = false;
                    continue;
                }
                for (source_extent, dest_extent) in
                    source_node.content.iter().zip(&dest_node.content)
                {
                    if let (Extent::Data { id: from, .. }, Extent::Data { id: to, .. }) =
                        (source_extent, dest_extent)
                    {
                        if self.dest.index().contains(&to.0) {
                            self.chunks.insert(*from, *to);
                        } else {
                            frame.matches = false;
                        }
                    }
                }
                if let (Some(from), Some(to)) = (source_node.subtree, dest_node.subtree) {
                    match self.trees.get(&from) {
                        Some(known) => frame.matches &= *known == to,
                        None => match self.seed_frame(from, to)? {
                            Some(child) => stack.push(child),
                            // Compared before, and not complete.
                            None => frame.matches = false,
                        },
                    }
                }
                continue;
            }

            let frame = stack
                .pop()
                .expect("the loop runs while the stack has a frame");
            let complete = frame.matches
                && frame.source_tree.nodes.len() == frame.dest_tree.nodes.len()
                && self.dest.index().contains(&frame.dest.0);
            if complete {
                self.trees.insert(frame.source, frame.dest);
            }
            if let Some(parent) = stack.last_mut() {
                parent.matches &= complete;
            }
        }
        Ok(())
    }

    /// Loads a pair of trees to compare, or returns `None` if the pair was
    /// compared before or either tree cannot be read.
    fn seed_frame(&mut self, source: TreeId, dest: TreeId) -> Result<Option<SeedFrame>, RepoError> {
        if !self.seeded.insert((source, dest)) {
            return Ok(None);
        }
        let load = |repo: &Repository, id: &TreeId| match repo.load_tree(id) {
            Ok(tree) => Ok(Some(tree)),
            Err(e @ (RepoError::Damaged { .. } | RepoError::Missing(_))) => {
                tracing::warn!("not reusing the ids of an earlier copy: {e}");
                Ok(None)
            }
            Err(e) => Err(e),
        };
        let Some(source_tree) = load(self.source, &source)? else {
            return Ok(None);
        };
        let Some(dest_tree) = load(self.dest, &dest)? else {
            return Ok(None);
        };
        Ok(Some(SeedFrame {
            source,
            dest,
            source_tree,
            dest_tree,
            next: 0,
            matches: true,
        }))
    }

    /// Copies a tree and everything below it that the destination lacks, and
    /// returns the tree's id in the destination.
    ///
    /// Every tree is walked even if the destination lists it, because a killed
    /// run can leave a tree whose chunks never reached a written pack. Only trees
    /// completed in this run are skipped. The walk uses its own stack, because
    /// directories can nest thousands deep.
    fn copy_tree(&mut self, writer: &BlobWriter<'_>, root: TreeId) -> Result<TreeId, RepoError> {
        if let Some(id) = self.trees.get(&root) {
            return Ok(*id);
        }
        let mut stack = vec![self.frame(root)?];
        loop {
            let frame = stack
                .last_mut()
                .expect("the root frame stays on the stack until it returns");
            if let Some(node) = frame.tree.nodes.get(frame.next) {
                frame.next += 1;
                let mut node = node.clone();
                match (node.kind, node.subtree) {
                    (NodeKind::File, _) => {
                        for extent in &mut node.content {
                            if let Extent::Data { id, .. } = extent {
                                *id = self.copy_chunk(writer, *id)?;
                            }
                        }
                        frame.nodes.push(node);
                    }
                    (NodeKind::Dir, Some(subtree)) => match self.trees.get(&subtree) {
                        Some(copied) => {
                            node.subtree = Some(*copied);
                            frame.nodes.push(node);
                        }
                        None => {
                            // The subtree id is set when the child frame finishes.
                            frame.nodes.push(node);
                            let child = self.frame(subtree)?;
                            stack.push(child);
                        }
                    },
                    _ => frame.nodes.push(node),
                }
                continue;
            }

            let frame = stack
                .pop()
                .expect("the loop runs while the stack has a frame");
            let id = self.store_tree(writer, frame.source, frame.nodes)?;
            self.trees.insert(frame.source, id);
            match stack.last_mut() {
                Some(parent) => {
                    let node = parent
                        .nodes
                        .last_mut()
                        .expect("the directory node was pushed");
                    node.subtree = Some(id);
                }
                None => return Ok(id),
            }
        }
    }

    /// Lists the chunks that copying the tree `root` reads, each once, in the
    /// order in which [`Copier::copy_tree`] needs them. It walks the trees in
    /// the same order, prefetching them level by level.
    fn plan_reads(&self, writer: &BlobWriter<'_>, root: TreeId) -> Result<ReadPlan, RepoError> {
        let mut plan = ReadPlan::default();
        if !self.keep_compression || self.trees.contains_key(&root) {
            return Ok(plan);
        }
        // Each stack entry is a tree and the position of its next entry.
        let mut stack = vec![(self.load_and_prefetch(root)?, 0)];
        while let Some((tree, next)) = stack.last_mut() {
            let Some(node) = tree.nodes.get(*next) else {
                stack.pop();
                continue;
            };
            *next += 1;
            match (node.kind, node.subtree) {
                (NodeKind::File, _) => {
                    for extent in &node.content {
                        let Extent::Data { id, .. } = extent else {
                            continue;
                        };
                        let needed = if self.same_identity {
                            writer.is_new(&id.0)
                        } else {
                            !self.chunks.contains_key(id)
                        };
                        if needed && !plan.positions.contains_key(id) {
                            plan.positions.insert(*id, plan.chunks.len());
                            plan.chunks.push(*id);
                        }
                    }
                }
                (NodeKind::Dir, Some(subtree)) if !self.trees.contains_key(&subtree) => {
                    let child = self.load_and_prefetch(subtree)?;
                    stack.push((child, 0));
                }
                _ => {}
            }
        }
        Ok(plan)
    }

    /// Reads ahead, if `id` is planned and not yet read, the planned chunks
    /// from the first one not read up to `id`, in batches of up to
    /// [`READ_AHEAD_BYTES`]. Each batch takes one request per run of a pack
    /// instead of one per chunk, which matters on S3 or a server.
    fn read_ahead_to(&mut self, id: &ChunkId) {
        let Some(&position) = self.plan.positions.get(id) else {
            return;
        };
        while self.plan.read <= position {
            let mut batch = Vec::new();
            let mut bytes = 0;
            {
                let index = self.source.index();
                while self.plan.read < self.plan.chunks.len() && bytes < READ_AHEAD_BYTES {
                    let id = self.plan.chunks[self.plan.read];
                    self.plan.read += 1;
                    bytes += index
                        .get(&id.0)
                        .map_or(0, |location| u64::from(location.len));
                    batch.push(id);
                }
            }
            let dest_keys = self.dest.keys();
            let same_identity = self.same_identity;
            let read = self.source.read_chunks_ahead(&batch, |id, plain, payload| {
                let dest_id = if same_identity {
                    id
                } else {
                    dest_keys.chunk_id(&plain)
                };
                let plain_len = plain.len();
                (
                    id,
                    ReadAhead {
                        payload,
                        plain_len,
                        dest_id,
                    },
                )
            });
            self.ahead.extend(read);
        }
    }

    /// Loads a source tree and prefetches its subtrees.
    fn load_and_prefetch(&self, id: TreeId) -> Result<Arc<Tree>, RepoError> {
        let tree = self.source.load_tree(&id)?;
        // Subtrees come in few merged reads, which saves a request per
        // directory when the source is a server or an object store.
        self.source.prefetch_trees(
            tree.nodes
                .iter()
                .filter_map(|node| node.subtree.as_ref())
                .filter(|subtree| !self.trees.contains_key(subtree)),
        );
        Ok(tree)
    }

    fn frame(&self, source: TreeId) -> Result<Frame, RepoError> {
        // The plan loaded the trees already, but a large snapshot's trees may
        // not all have stayed in the tree cache.
        let tree = self.load_and_prefetch(source)?;
        Ok(Frame {
            source,
            nodes: Vec::with_capacity(tree.nodes.len()),
            tree,
            next: 0,
        })
    }

    /// Stores a directory's tree in the destination unless it is there, and
    /// returns its id there.
    fn store_tree(
        &mut self,
        writer: &BlobWriter<'_>,
        source_id: TreeId,
        nodes: Vec<Node>,
    ) -> Result<TreeId, RepoError> {
        if !self.same_identity {
            let (id, stored) = writer.store_tree_if_new(&Tree { nodes })?;
            if let Some(len) = stored {
                self.blobs_added += 1;
                self.blob_bytes_added += len;
                self.progress.add_bytes(len);
            }
            return Ok(id);
        }
        // The source's exact bytes keep the id valid, since both repositories
        // compute tree ids with the same key.
        if writer.reserve(&source_id.0) {
            self.copy_blob(writer, BlobKind::Tree, source_id.0)?;
        }
        Ok(source_id)
    }

    /// Copies a chunk unless the destination contains it, and returns its id
    /// there.
    fn copy_chunk(&mut self, writer: &BlobWriter<'_>, id: ChunkId) -> Result<ChunkId, RepoError> {
        if self.same_identity {
            if writer.reserve(&id.0) {
                self.chunks_read += 1;
                self.read_ahead_to(&id);
                match self.ahead.remove(&id) {
                    Some(read) => self.add_payload(
                        writer,
                        BlobKind::Chunk,
                        id.0,
                        &read.payload,
                        read.plain_len,
                    )?,
                    None => self.copy_blob(writer, BlobKind::Chunk, id.0)?,
                }
            }
            return Ok(id);
        }
        if let Some(copied) = self.chunks.get(&id) {
            return Ok(*copied);
        }
        self.read_ahead_to(&id);
        if let Some(read) = self.ahead.remove(&id) {
            self.chunks_read += 1;
            if writer.reserve(&read.dest_id.0) {
                self.add_payload(
                    writer,
                    BlobKind::Chunk,
                    read.dest_id.0,
                    &read.payload,
                    read.plain_len,
                )?;
            }
            self.chunks.insert(id, read.dest_id);
            return Ok(read.dest_id);
        }
        self.chunks_read += 1;
        let (plain, payload) = if self.keep_compression {
            let (plain, payload) = self.source.read_blob_payload(BlobKind::Chunk, &id.0)?;
            (plain, Some(payload))
        } else {
            (self.source.read_chunk(&id)?, None)
        };
        let copied = self.dest.keys().chunk_id(&plain);
        if writer.reserve(&copied.0) {
            match payload {
                Some(payload) => {
                    self.add_payload(writer, BlobKind::Chunk, copied.0, &payload, plain.len())?
                }
                None => self.add_blob(writer, BlobKind::Chunk, copied.0, &plain)?,
            }
        }
        self.chunks.insert(id, copied);
        Ok(copied)
    }

    /// Copies a blob under the same id, keeping its compression where
    /// [`Copier::keep_compression`] allows.
    fn copy_blob(
        &mut self,
        writer: &BlobWriter<'_>,
        kind: BlobKind,
        id: [u8; 32],
    ) -> Result<(), RepoError> {
        if self.keep_compression {
            let (plain, payload) = self.source.read_blob_payload(kind, &id)?;
            return self.add_payload(writer, kind, id, &payload, plain.len());
        }
        let plain = self.source.read_blob(kind, &id)?;
        self.add_blob(writer, kind, id, &plain)
    }

    /// Seals a payload opened in the source under the destination's keys, as
    /// it is, and adds it to a pack.
    fn add_payload(
        &mut self,
        writer: &BlobWriter<'_>,
        kind: BlobKind,
        id: [u8; 32],
        payload: &Payload,
        plain_len: usize,
    ) -> Result<(), RepoError> {
        let sealed = self
            .dest
            .keys()
            .seal_payload(kind.object_kind(), &id, payload)
            .map_err(|e| RepoError::Damaged {
                object: format!("copied blob {}", hex::encode(&id[..4])),
                detail: e.to_string(),
            })?;
        writer.add(kind, id, &sealed, plain_len as u32)?;
        self.blobs_added += 1;
        self.blob_bytes_added += plain_len as u64;
        self.progress.add_bytes(plain_len as u64);
        Ok(())
    }

    /// Seals a blob under the destination's keys and adds it to a pack.
    fn add_blob(
        &mut self,
        writer: &BlobWriter<'_>,
        kind: BlobKind,
        id: [u8; 32],
        plain: &[u8],
    ) -> Result<(), RepoError> {
        let sealed = self
            .dest
            .keys()
            .seal(
                kind.object_kind(),
                &id,
                plain,
                self.dest.config().compression_level,
            )
            .map_err(|e| RepoError::Damaged {
                object: format!("copied blob {}", hex::encode(&id[..4])),
                detail: e.to_string(),
            })?;
        writer.add(kind, id, &sealed, plain.len() as u32)?;
        self.blobs_added += 1;
        self.blob_bytes_added += plain.len() as u64;
        self.progress.add_bytes(plain.len() as u64);
        Ok(())
    }
}
