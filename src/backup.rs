//! Walking directories into a snapshot.
//!
//! The walk is depth first on the calling thread, because a directory's tree can
//! only be stored once all its entries are known. File content is read and chunked
//! on the calling thread too; compression and encryption of new chunks run on a
//! pool of worker threads that feed the pack writer.
//!
//! [`backup_stream`] stores a single stream, such as standard input or a
//! database dump, as one file of a snapshot, through the same writer.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::audit::state::{STATE_DIR_VARIABLE, state_dir};
use crate::direct_io::{DIRECT_MIN_SIZE, DirectBuffer, DirectReader};
use crate::display::escape_path;
use crate::exclude::{ExcludeReason, Excludes};
use crate::id::{ChunkId, SnapshotId, TreeId};
use crate::meta::{self, NameCache, ShortPath};
use crate::parent_record::{ParentTrees, RecordKey};
use crate::prefetch::{
    self, FileStamp, PREFETCH_THREADS, PREFETCH_WINDOW, PrefetchJob, prefetch_worker,
};
use crate::progress::Progress;
use crate::repository::pack::BlobKind;
use crate::repository::{BlobWriter, RepoError, Repository};
use crate::snapshot::{BackupSummary, Snapshot};
use crate::tree::{Extent, Node, NodeKind, Timestamp, Tree};

/// Settings of one backup run.
#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    /// Labels to record in the snapshot.
    pub tags: Vec<String>,
    /// Snapshot time instead of now.
    pub time: Option<Timestamp>,
    /// Host name instead of this machine's.
    pub hostname: Option<String>,
    /// Parent snapshot instead of the latest one with the same host and paths.
    pub parent: Option<SnapshotId>,
    /// Read every file, also those whose metadata shows no change.
    pub force: bool,
    /// Worker threads for compression and encryption; 0 means one per core.
    pub threads: usize,
    /// How long to wait for an exclusive lock (a running prune) to go away.
    pub lock_wait: std::time::Duration,
    /// Entries to leave out.
    pub excludes: Excludes,
    /// Stay on the file system of each backed-up path: a directory on another
    /// file system (a mount point) is stored empty, and other entries on another
    /// file system are left out.
    pub one_file_system: bool,
    /// Counters of files done and bytes read, for a progress display.
    pub progress: Option<Arc<Progress>>,
}

/// An entry that could not be backed up.
#[derive(Clone, Debug)]
pub struct EntryError {
    /// Path as raw bytes.
    pub path: Vec<u8>,
    /// What failed.
    pub reason: String,
}

/// Outcome of a backup run.
#[derive(Debug)]
pub struct BackupOutcome {
    /// The new snapshot's id.
    pub id: SnapshotId,
    /// The new snapshot.
    pub snapshot: Snapshot,
    /// Entries that could not be read, each with its reason.
    pub errors: Vec<EntryError>,
    /// Entries left out by exclude rules or `one_file_system`. Entries below an
    /// excluded directory are not listed, so they are not counted.
    pub excluded: u64,
    /// Files whose size or mtime changed while they were read. The snapshot
    /// contains the bytes read, which may mix old and new content.
    pub changed_while_read: u64,
}

/// Makes a path absolute and removes `.` and `..` components without resolving
/// symlinks, so that `cairn backup link` stores the link itself.
pub fn absolute_path(path: &Path) -> io::Result<PathBuf> {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    let mut out = PathBuf::from("/");
    for component in joined.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

/// Backs up `paths` into a new snapshot.
///
/// Entries that cannot be read are left out and listed in the outcome; the
/// snapshot is then marked incomplete. Repository errors (a full disk, say) abort
/// the run and leave no snapshot.
pub fn backup(
    repo: &Repository,
    paths: &[PathBuf],
    options: &BackupOptions,
) -> Result<BackupOutcome, RepoError> {
    let mut absolute = Vec::new();
    for path in paths {
        let path = absolute_path(path)?;
        // A path given on the command line that does not exist is a mistake, not
        // a file that vanished: saving a snapshot without it would make an empty
        // or partial snapshot the latest one.
        if let Err(e) = ShortPath::new(&path).and_then(|p| fs::symlink_metadata(p.path())) {
            return Err(RepoError::Source(format!(
                "cannot back up {}: {e}; check the path (no snapshot was saved)",
                escape_path(path.as_os_str().as_bytes())
            )));
        }
        absolute.push(path);
    }
    absolute.sort();
    absolute.dedup();
    let path_bytes: Vec<Vec<u8>> = absolute
        .iter()
        .map(|p| p.as_os_str().as_bytes().to_vec())
        .collect();
    run_backup(repo, path_bytes, options, |walker, parent_tree| {
        walker.backup_roots(&absolute, parent_tree)
    })
}

/// Backs up everything `reader` returns as one file named `name`, stored at
/// `/name` in a new snapshot whose only path is `/name`.
///
/// The file gets mode 0600, the effective user and group of this process and the
/// current time as its modification time. The stream is chunked as it is read,
/// so only a few chunks are in memory at a time. Any read error, such as the
/// failure that [`crate::stream::CommandStream`] reports for a command that exited
/// unsuccessfully, aborts the run before a snapshot is written. Chunks stored
/// until then stay in the repository, where later backups reuse them and `prune`
/// deletes them if none does.
pub fn backup_stream(
    repo: &Repository,
    name: &str,
    reader: &mut dyn Read,
    options: &BackupOptions,
) -> Result<BackupOutcome, RepoError> {
    validate_stream_name(name)?;
    let path_bytes = vec![format!("/{name}").into_bytes()];
    run_backup(repo, path_bytes, options, |walker, _| {
        walker.backup_stream(name.as_bytes(), reader)
    })
}

/// Rejects names that cannot be a single entry of the root directory.
fn validate_stream_name(name: &str) -> Result<(), RepoError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(RepoError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "invalid file name {name:?} for the stream: give a plain name without `/`, such as db.sql"
            ),
        )));
    }
    Ok(())
}

/// Takes the lock, runs `walk` with a walker and a pool of seal workers, and
/// saves the snapshot of the tree it returns. Nothing is saved if `walk` fails.
fn run_backup(
    repo: &Repository,
    path_bytes: Vec<Vec<u8>>,
    options: &BackupOptions,
    walk: impl FnOnce(&mut Walker<'_, '_>, Option<&TreeId>) -> Result<TreeId, RepoError>,
) -> Result<BackupOutcome, RepoError> {
    let started = Instant::now();
    let time = options.time.unwrap_or_else(Timestamp::now);
    let hostname = options.hostname.clone().unwrap_or_else(local_hostname);

    let lock = repo.lock_shared("backup", options.lock_wait)?;
    // Blobs deleted by a prune that finished before the lock was taken must not
    // be deduplicated against, so the index is read again under the lock.
    repo.load_index()?;
    let adopted = repo.index_unindexed_packs()?;
    if adopted > 0 {
        tracing::info!("indexed {adopted} packs left by an interrupted backup");
    }
    let record_key = RecordKey {
        repo_id: repo.config().repo_id,
        key_name: repo.slot_name(),
        hostname: &hostname,
        paths: &path_bytes,
    };
    let local_parents = if repo.is_backup_only() {
        if options.parent.is_some() {
            repo.require_full_key(
                "read the snapshot given with --parent (leave --parent out: a backup-only key compares with its own last backup)",
            )?;
        }
        load_local_parents(repo, &record_key)
    } else {
        None
    };
    let parent = match &local_parents {
        Some(local) => Some((local.snapshot, local.root)),
        None if repo.is_backup_only() => None,
        None => find_parent(repo, &hostname, &path_bytes, options)?
            .map(|(id, snapshot)| (id, snapshot.tree)),
    };
    let parent_tree = parent.map(|(_, tree)| tree);

    let writer = if repo.is_backup_only() {
        repo.blob_writer().record_trees()
    } else {
        repo.blob_writer()
    };
    let threads = if options.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        options.threads
    };

    let failure: Mutex<Option<RepoError>> = Mutex::new(None);
    let walker_result = std::thread::scope(|scope| {
        let (sender, receiver) = bounded::<(ChunkId, Vec<u8>)>(threads * 2);
        // Chunk buffers go back to the walker once sealed. The walker, the queue
        // and the workers hold at most `threads * 3 + 1` of them at a time.
        let (recycle_sender, recycled) = bounded::<Vec<u8>>(threads * 3 + 1);
        let mut workers = Vec::new();
        for _ in 0..threads {
            let receiver = receiver.clone();
            let recycle_sender = recycle_sender.clone();
            let writer = &writer;
            let failure = &failure;
            workers.push(
                scope.spawn(move || seal_worker(repo, writer, receiver, recycle_sender, failure)),
            );
        }
        drop(receiver);
        drop(recycle_sender);
        let (prefetch, prefetch_jobs) = bounded::<PrefetchJob>(PREFETCH_THREADS * PREFETCH_WINDOW);
        for _ in 0..PREFETCH_THREADS {
            let jobs = prefetch_jobs.clone();
            scope.spawn(move || prefetch_worker(jobs));
        }
        drop(prefetch_jobs);

        let mut walker = Walker {
            repo,
            writer: &writer,
            sender,
            recycled,
            failure: &failure,
            names: NameCache::default(),
            force: options.force,
            excludes: &options.excludes,
            one_file_system: options.one_file_system,
            device: None,
            progress: options.progress.as_deref(),
            summary: BackupSummary {
                xattr_entries: Some(0),
                ..BackupSummary::default()
            },
            errors: Vec::new(),
            excluded: 0,
            changed_while_read: 0,
            buffer: Vec::new(),
            direct_buffer: DirectBuffer::default(),
            prefetch: Some(prefetch),
            local_parents: local_parents.as_ref(),
        };
        let root = walk(&mut walker, parent_tree.as_ref());
        let Walker {
            sender,
            prefetch,
            summary,
            errors,
            excluded,
            changed_while_read,
            ..
        } = walker;
        drop(sender);
        drop(prefetch);
        for worker in workers {
            worker.join().expect("seal worker panicked");
        }
        if let Some(e) = failure.lock().expect("failure lock").take() {
            return Err(e);
        }
        root.map(|tree| (tree, summary, errors, excluded, changed_while_read))
    });
    let (tree, mut summary, errors, excluded, changed_while_read) = walker_result?;

    let recorded_trees = writer.take_recorded_trees();
    let mut bytes_added = writer.finish()?;
    summary.errors = errors.len() as u64;
    summary.duration_ms = started.elapsed().as_millis() as u64;
    let mut snapshot = Snapshot {
        time,
        hostname: hostname.clone(),
        username: crate::meta::current_user_name(),
        paths: path_bytes.clone(),
        tree,
        parent: parent.map(|(id, _)| id),
        original: None,
        tags: options.tags.clone(),
        incomplete: !errors.is_empty(),
        program_version: env!("CARGO_PKG_VERSION").to_string(),
        summary,
    };
    // The snapshot's own size is part of what the run added; an estimate from its
    // encoding is close enough for the figure stored inside it.
    bytes_added += snapshot.encode().len() as u64 + crate::crypto::SEAL_OVERHEAD as u64;
    snapshot.summary.bytes_added = bytes_added;
    lock.check()?;
    let (id, _) = repo.save_snapshot(&snapshot)?;
    drop(lock);
    if repo.is_backup_only() && !snapshot.incomplete {
        store_local_parents(&record_key, id, snapshot.tree, recorded_trees);
    }
    Ok(BackupOutcome {
        id,
        snapshot,
        errors,
        excluded,
        changed_while_read,
    })
}

/// Returns this machine's host name.
pub fn local_hostname() -> String {
    hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Reads the trees that a backup-only key kept of its last snapshot of the
/// same paths. Without them every file is read again, which is slower but
/// complete, so a problem is a warning.
fn load_local_parents(repo: &Repository, key: &RecordKey<'_>) -> Option<ParentTrees> {
    let Some(dir) = state_dir() else {
        tracing::warn!(
            "no state directory (set {STATE_DIR_VARIABLE} or HOME): a backup-only key reads every file again"
        );
        return None;
    };
    match ParentTrees::load(&dir, key, repo.keys()) {
        Ok(parents) => parents,
        Err(e) => {
            tracing::warn!("{e}");
            None
        }
    }
}

/// Keeps the trees of a backup-only key's new snapshot for the next backup.
fn store_local_parents(
    key: &RecordKey<'_>,
    snapshot: SnapshotId,
    root: TreeId,
    trees: std::collections::HashMap<TreeId, Vec<u8>>,
) {
    let Some(dir) = state_dir() else {
        return;
    };
    if let Err(e) = crate::parent_record::store(&dir, key, snapshot, root, trees) {
        tracing::warn!(
            "the trees of snapshot {} could not be kept for the next backup, which reads every file again: {e}",
            snapshot.short()
        );
    }
}

fn find_parent(
    repo: &Repository,
    hostname: &str,
    paths: &[Vec<u8>],
    options: &BackupOptions,
) -> Result<Option<(SnapshotId, Snapshot)>, RepoError> {
    if let Some(id) = options.parent {
        return Ok(Some((id, repo.load_snapshot(&id)?)));
    }
    Ok(repo
        .readable_snapshots()?
        .into_iter()
        .rev()
        .find(|(_, s)| s.hostname == hostname && s.paths == paths && !s.incomplete))
}

/// Chunk and sealed-object buffers with a larger capacity than this are freed
/// after use instead of being kept for the next chunk. A few chunks of the
/// maximum size then do not keep their memory for the rest of the backup.
const MAX_REUSED_BUFFER: usize = 2 << 20;

fn seal_worker(
    repo: &Repository,
    writer: &BlobWriter<'_>,
    receiver: Receiver<(ChunkId, Vec<u8>)>,
    recycle: Sender<Vec<u8>>,
    failure: &Mutex<Option<RepoError>>,
) {
    let level = repo.config().compression_level;
    let mut sealed = Vec::new();
    for (id, data) in receiver {
        let result = repo
            .keys()
            .seal_into(
                BlobKind::Chunk.object_kind(),
                &id.0,
                &data,
                level,
                &mut sealed,
            )
            .map_err(|e| RepoError::Damaged {
                object: format!("new chunk {}", id.short()),
                detail: e.to_string(),
            })
            .and_then(|()| writer.add(BlobKind::Chunk, id.0, &sealed, data.len() as u32));
        if let Err(e) = result {
            let mut slot = failure.lock().expect("failure lock");
            if slot.is_none() {
                *slot = Some(e);
            }
        }
        if sealed.capacity() > MAX_REUSED_BUFFER {
            sealed = Vec::new();
        }
        if data.capacity() <= MAX_REUSED_BUFFER {
            // A full channel or a finished walker only means the buffer is freed.
            let _ = recycle.try_send(data);
        }
    }
}

/// A node of the path skeleton: the directories above the backed-up paths.
#[derive(Default)]
struct Skeleton {
    children: BTreeMap<Vec<u8>, Skeleton>,
    is_root: bool,
}

struct Walker<'a, 'w> {
    repo: &'a Repository,
    writer: &'w BlobWriter<'a>,
    sender: Sender<(ChunkId, Vec<u8>)>,
    /// Chunk buffers that the seal workers are done with.
    recycled: Receiver<Vec<u8>>,
    failure: &'w Mutex<Option<RepoError>>,
    names: NameCache,
    force: bool,
    excludes: &'w Excludes,
    one_file_system: bool,
    /// Device of the backed-up path being walked, set with `one_file_system`.
    device: Option<u64>,
    progress: Option<&'w Progress>,
    summary: BackupSummary,
    errors: Vec<EntryError>,
    excluded: u64,
    changed_while_read: u64,
    buffer: Vec<u8>,
    /// Aligned buffer for reading large files without the page cache.
    direct_buffer: DirectBuffer,
    /// Entries to read ahead of the walker.
    prefetch: Option<Sender<PrefetchJob>>,
    /// The trees of the last snapshot, kept on the client, for a backup-only
    /// key.
    local_parents: Option<&'w ParentTrees>,
}

impl Walker<'_, '_> {
    fn backup_roots(
        &mut self,
        paths: &[PathBuf],
        parent: Option<&crate::id::TreeId>,
    ) -> Result<crate::id::TreeId, RepoError> {
        let mut skeleton = Skeleton::default();
        for path in paths {
            let mut node = &mut skeleton;
            for component in path.components() {
                if let Component::Normal(part) = component {
                    node = node.children.entry(part.as_bytes().to_vec()).or_default();
                }
            }
            node.is_root = true;
        }
        if skeleton.is_root {
            // `cairn backup /`: the root directory's entries form the root tree.
            self.device = fs::symlink_metadata("/").ok().map(|md| md.dev());
            return self.backup_dir_contents(Path::new("/"), parent);
        }
        self.backup_skeleton(Path::new("/"), &skeleton, parent)
    }

    fn backup_skeleton(
        &mut self,
        dir: &Path,
        skeleton: &Skeleton,
        parent: Option<&crate::id::TreeId>,
    ) -> Result<crate::id::TreeId, RepoError> {
        let parent_tree = self.load_parent_tree(parent);
        let mut nodes = Vec::new();
        for (name, child) in &skeleton.children {
            let path = dir.join(std::ffi::OsStr::from_bytes(name));
            let parent_node = parent_tree.as_ref().and_then(|t| t.find(name)).cloned();
            if child.is_root {
                self.device = None;
                if let Some(node) = self.backup_entry(&path, name, parent_node.as_ref(), true)? {
                    nodes.push(node);
                }
                continue;
            }
            // A directory above a backed-up path: keep its metadata, and only the
            // entries that lead to backed-up paths. A symlink to a directory
            // here (such as /bin to usr/bin) is followed, as the system does
            // for the path given, and stored as the directory it points to.
            let (md, real) = match fs::symlink_metadata(&path) {
                Ok(md) if md.is_dir() => (md, path.clone()),
                Ok(md) if md.file_type().is_symlink() => {
                    match fs::canonicalize(&path).and_then(|real| Ok((fs::metadata(&real)?, real)))
                    {
                        Ok((md, real)) if md.is_dir() => (md, real),
                        Ok(_) => {
                            self.report(&path, "is a symlink to something other than a directory");
                            continue;
                        }
                        Err(e) => {
                            self.report(&path, &format!("symlink not followed: {e}"));
                            continue;
                        }
                    }
                }
                Ok(_) => {
                    self.report(&path, "is not a directory");
                    continue;
                }
                Err(e) => {
                    self.report(&path, &e.to_string());
                    continue;
                }
            };
            let mut node = meta::node_from_metadata(name, NodeKind::Dir, &md, &self.names);
            match meta::read_xattrs(&real) {
                Ok(xattrs) => {
                    if !xattrs.is_empty() {
                        *self.summary.xattr_entries.get_or_insert(0) += 1;
                    }
                    node.xattrs = xattrs;
                }
                Err(e) => self.report(&path, &format!("extended attributes not read: {e}")),
            }
            let parent_sub = parent_node.as_ref().and_then(|n| n.subtree);
            node.subtree = Some(self.backup_skeleton(&path, child, parent_sub.as_ref())?);
            nodes.push(node);
        }
        self.writer.store_tree(&Tree { nodes })
    }

    fn load_parent_tree(&mut self, id: Option<&crate::id::TreeId>) -> Option<std::sync::Arc<Tree>> {
        let id = id?;
        if let Some(local) = self.local_parents {
            return local.tree(id);
        }
        match self.repo.load_tree(id) {
            Ok(tree) => {
                // The walk compares each subdirectory with its parent tree next.
                self.repo
                    .prefetch_trees(tree.nodes.iter().filter_map(|n| n.subtree.as_ref()));
                Some(tree)
            }
            Err(e) => {
                tracing::warn!(
                    "parent tree {} unreadable, files below are read again: {e}",
                    id.short()
                );
                None
            }
        }
    }

    fn report(&mut self, path: &Path, reason: &str) {
        let escaped = escape_path(path.as_os_str().as_bytes());
        // The line on stderr is the message for the user. The log line is at
        // debug level, so the default output does not say it twice.
        tracing::debug!("skipped {escaped}: {reason}");
        eprintln!("error: {escaped}: {reason}");
        self.errors.push(EntryError {
            path: path.as_os_str().as_bytes().to_vec(),
            reason: reason.to_string(),
        });
    }

    fn check_failure(&self) -> Result<(), RepoError> {
        if let Some(e) = self.failure.lock().expect("failure lock").take() {
            return Err(e);
        }
        Ok(())
    }

    fn exclude(&mut self, path: &Path, reason: ExcludeReason) {
        tracing::debug!(
            "excluded {}: {reason}",
            escape_path(path.as_os_str().as_bytes())
        );
        self.excluded += 1;
    }

    /// Returns why an entry is left out, if it is. `is_root` marks a backed-up
    /// path, whose ancestors are checked against the patterns too; `short` is the
    /// entry's path for system calls.
    fn exclusion(
        &mut self,
        path: &Path,
        short: &Path,
        md: &fs::Metadata,
        is_root: bool,
    ) -> Option<ExcludeReason> {
        let is_dir = md.is_dir();
        if !self.excludes.is_empty() {
            let by_pattern = if is_root {
                self.excludes.match_pattern_or_parent(path, is_dir)
            } else {
                self.excludes.match_pattern(path, is_dir)
            };
            if by_pattern.is_some() {
                return by_pattern;
            }
            if is_dir && let Some(reason) = self.excludes.match_directory(short) {
                return Some(reason);
            }
        }
        if self.one_file_system {
            let device = *self.device.get_or_insert(md.dev());
            // A directory on another file system is a mount point: it is kept, but
            // empty (see `backup_entry`).
            if md.dev() != device && !is_dir {
                return Some(ExcludeReason::OtherFileSystem);
            }
        }
        None
    }

    /// Backs up one entry; `Ok(None)` means it was skipped: reported as an error,
    /// or excluded.
    fn backup_entry(
        &mut self,
        path: &Path,
        name: &[u8],
        parent: Option<&Node>,
        is_root: bool,
    ) -> Result<Option<Node>, RepoError> {
        // The short path (and any ancestor descriptor it holds) is dropped before
        // descending, so deep trees do not pile up open descriptors.
        let (kind, mut node, target) = {
            let short = match ShortPath::new(path) {
                Ok(short) => short,
                Err(e) => {
                    self.report(path, &e.to_string());
                    return Ok(None);
                }
            };
            let md = match fs::symlink_metadata(short.path()) {
                Ok(md) => md,
                Err(e) => {
                    self.report(path, &e.to_string());
                    return Ok(None);
                }
            };
            if let Some(reason) = self.exclusion(path, short.path(), &md, is_root) {
                self.exclude(path, reason);
                return Ok(None);
            }
            let Some(kind) = meta::node_kind(&md) else {
                self.report(path, "unknown file type");
                return Ok(None);
            };
            let mut node = meta::node_from_metadata(name, kind, &md, &self.names);
            match meta::read_xattrs(short.path()) {
                Ok(xattrs) => {
                    if !xattrs.is_empty() {
                        *self.summary.xattr_entries.get_or_insert(0) += 1;
                    }
                    node.xattrs = xattrs;
                }
                Err(e) => self.report(path, &format!("extended attributes not read: {e}")),
            }
            let target = if kind == NodeKind::Symlink {
                Some(fs::read_link(short.path()))
            } else {
                None
            };
            (kind, node, target)
        };

        match kind {
            NodeKind::Dir if self.one_file_system && Some(node.dev) != self.device => {
                // A mount point below a backed-up path, stored empty like restic
                // does, so that a restore recreates the directory to mount on.
                tracing::debug!(
                    "not descending into {}: another file system",
                    escape_path(path.as_os_str().as_bytes())
                );
                self.summary.dirs += 1;
                node.subtree = Some(self.writer.store_tree(&Tree::default())?);
            }
            NodeKind::Dir => {
                self.summary.dirs += 1;
                let parent_sub = parent
                    .filter(|p| p.kind == NodeKind::Dir)
                    .and_then(|p| p.subtree);
                node.subtree = Some(self.backup_dir_contents(path, parent_sub.as_ref())?);
            }
            NodeKind::Symlink => match target.expect("read for symlinks") {
                Ok(target) => node.target = target.as_os_str().as_bytes().to_vec(),
                Err(e) => {
                    self.report(path, &e.to_string());
                    return Ok(None);
                }
            },
            NodeKind::File => {
                let parent = parent.filter(|p| p.kind == NodeKind::File);
                if !self.force
                    && let Some(old) = parent.filter(|p| self.unchanged(p, &node))
                {
                    node.content = old.content.clone();
                    self.summary.files_unchanged += 1;
                    self.summary.total_bytes += node.size;
                    self.count_file_done();
                    return Ok(Some(node));
                }
                match self.read_file(path, &mut node) {
                    Ok(()) => {}
                    Err(ReadError::Source(e)) => {
                        self.report(path, &e.to_string());
                        return Ok(None);
                    }
                    Err(ReadError::Repo(e)) => return Err(e),
                }
                match parent {
                    // A file read again only because of --force, or because
                    // its chunks were pruned, is unchanged if it reads the same.
                    Some(old) if same_metadata(old, &node) && old.content == node.content => {
                        self.summary.files_unchanged += 1;
                    }
                    Some(_) => self.summary.files_changed += 1,
                    None => self.summary.files_new += 1,
                }
                self.summary.total_bytes += node.size;
                self.count_file_done();
            }
            NodeKind::Fifo | NodeKind::Socket | NodeKind::CharDevice | NodeKind::BlockDevice => {}
        }
        Ok(Some(node))
    }

    fn count_file_done(&self) {
        if let Some(progress) = self.progress {
            progress.add_items(1);
        }
    }

    /// Stores the stream as the only entry of the root tree.
    fn backup_stream(&mut self, name: &[u8], reader: &mut dyn Read) -> Result<TreeId, RepoError> {
        let now = Timestamp::now();
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let mut node = Node::new(name.to_vec(), NodeKind::File);
        node.mode = 0o600;
        node.uid = uid;
        node.gid = gid;
        node.user = self.names.user(uid);
        node.group = self.names.group(gid);
        node.mtime = now;
        node.ctime = now;

        let mut content = Vec::new();
        let bytes = match self.chunk_stream(reader, &mut content) {
            Ok(bytes) => bytes,
            Err(ReadError::Source(e)) => return Err(RepoError::Io(e)),
            Err(ReadError::Repo(e)) => return Err(e),
        };
        self.check_failure()?;
        node.size = bytes;
        node.content = content;
        self.summary.bytes_read += bytes;
        self.summary.total_bytes += bytes;
        self.summary.files_new += 1;
        self.count_file_done();
        self.writer.store_tree(&Tree { nodes: vec![node] })
    }

    /// True when the file's metadata matches the parent's and all its chunks are
    /// still stored, so its content need not be read.
    fn unchanged(&self, old: &Node, new: &Node) -> bool {
        same_metadata(old, new) && {
            let index = self.repo.index();
            old.content.iter().all(|e| match e {
                Extent::Data { id, .. } => index.contains(&id.0),
                Extent::Hole { .. } => true,
            })
        }
    }

    fn backup_dir_contents(
        &mut self,
        path: &Path,
        parent: Option<&crate::id::TreeId>,
    ) -> Result<crate::id::TreeId, RepoError> {
        let parent_tree = self.load_parent_tree(parent);
        let mut names = Vec::new();
        let listing = ShortPath::new(path).and_then(|short| fs::read_dir(short.path()));
        match listing {
            Ok(entries) => {
                for entry in entries {
                    match entry {
                        Ok(entry) => names.push(entry.file_name().as_bytes().to_vec()),
                        Err(e) => self.report(path, &format!("listing failed: {e}")),
                    }
                }
            }
            Err(e) => self.report(path, &format!("listing failed: {e}")),
        }
        names.sort();

        let mut nodes = Vec::with_capacity(names.len());
        // Entries from `offered` on have not been handed to the prefetch
        // threads yet, and the walker reads the first entry itself.
        let mut offered = 1;
        for (i, name) in names.iter().enumerate() {
            self.check_failure()?;
            let end = names.len().min(i + 1 + PREFETCH_WINDOW);
            self.read_ahead(path, &names[offered..end], parent_tree.as_deref());
            offered = end;
            let child = path.join(std::ffi::OsStr::from_bytes(name));
            let parent_node = parent_tree.as_ref().and_then(|t| t.find(name));
            if let Some(node) = self.backup_entry(&child, name, parent_node, false)? {
                nodes.push(node);
            }
        }
        self.writer.store_tree(&Tree { nodes })
    }

    /// Hands the entries `names` of directory `dir` to the prefetch threads.
    /// Entries that an exclude pattern leaves out as files are skipped, because
    /// the threads open regular files and an excluded one must not be opened.
    fn read_ahead(&self, dir: &Path, names: &[Vec<u8>], parent_tree: Option<&Tree>) {
        let Some(prefetch) = &self.prefetch else {
            return;
        };
        let device = if self.one_file_system {
            self.device
        } else {
            None
        };
        for name in names {
            let path = dir.join(std::ffi::OsStr::from_bytes(name));
            if self.excludes.match_pattern(&path, false).is_some() {
                continue;
            }
            let known = match parent_tree.and_then(|t| t.find(name)) {
                Some(node) if !self.force => FileStamp::of_node(node),
                _ => None,
            };
            prefetch::offer(
                prefetch,
                PrefetchJob {
                    path,
                    known,
                    device,
                },
            );
        }
    }

    fn read_file(&mut self, path: &Path, node: &mut Node) -> Result<(), ReadError> {
        // O_NOFOLLOW: the entry was a regular file at lstat time; if it has been
        // swapped for a symlink since, reading must not follow it. O_NONBLOCK keeps
        // a file swapped for a FIFO from blocking the backup.
        let short = ShortPath::new(path).map_err(ReadError::Source)?;
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(short.path())
            .map_err(ReadError::Source)?;
        drop(short);
        let before = file.metadata().map_err(ReadError::Source)?;
        if !before.is_file() {
            return Err(ReadError::Source(io::Error::other(
                "replaced by a non-regular file during the backup",
            )));
        }

        let sparse = before.blocks() * 512 < before.size();
        // Reading stops at the size seen at open, so a file that grows while
        // it is read (a log being written) cannot keep the backup reading.
        // Files that show size 0 but have content, as in /proc, are read to
        // their end.
        let limit = match before.size() {
            0 => u64::MAX,
            size => size,
        };
        let mut content = Vec::new();
        let bytes = if sparse {
            self.read_sparse(&file, before.size(), &mut content)?
        } else if before.size() >= DIRECT_MIN_SIZE {
            let mut buffer = std::mem::take(&mut self.direct_buffer);
            let reader = DirectReader::new(&file, &mut buffer, before.size()).take(limit);
            let read = self.chunk_stream(reader, &mut content);
            self.direct_buffer = buffer;
            read?
        } else {
            self.chunk_stream((&file).take(limit), &mut content)?
        };
        self.summary.bytes_read += bytes;

        let after = file.metadata().map_err(ReadError::Source)?;
        if after.mtime() != before.mtime()
            || after.mtime_nsec() != before.mtime_nsec()
            || after.size() != before.size()
        {
            self.changed_while_read += 1;
            tracing::debug!(
                "{} changed while it was read",
                escape_path(path.as_os_str().as_bytes())
            );
            eprintln!(
                "warning: {} changed while it was read; the snapshot holds the bytes read",
                escape_path(path.as_os_str().as_bytes())
            );
        }
        node.size = content.iter().map(Extent::len).sum();
        node.content = content;
        Ok(())
    }

    /// Reads a sparse file region by region with SEEK_DATA and SEEK_HOLE, so that
    /// holes cost nothing.
    fn read_sparse(
        &mut self,
        file: &File,
        size: u64,
        content: &mut Vec<Extent>,
    ) -> Result<u64, ReadError> {
        use std::os::fd::AsRawFd;

        let fd = file.as_raw_fd();
        let mut position = 0u64;
        let mut total = 0u64;
        while position < size {
            // SAFETY: lseek on a valid open descriptor has no memory effects.
            let data = unsafe { libc::lseek(fd, position as i64, libc::SEEK_DATA) };
            if data < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENXIO) {
                    push_hole(content, size - position);
                    break;
                }
                return Err(ReadError::Source(e));
            }
            // The file may have changed size since fstat: stay within `size`.
            let data = (data as u64).min(size);
            if data >= size {
                push_hole(content, size - position);
                break;
            }
            if data > position {
                push_hole(content, data - position);
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data as i64, libc::SEEK_HOLE) };
            if hole < 0 {
                return Err(ReadError::Source(io::Error::last_os_error()));
            }
            let hole = (hole as u64).clamp(data, size);
            let mut region = io::Read::take(ReadAt { file, offset: data }, hole - data);
            total += self.chunk_stream(&mut region, content)?;
            position = hole;
        }
        Ok(total)
    }

    fn chunk_stream(
        &mut self,
        reader: impl Read,
        content: &mut Vec<Extent>,
    ) -> Result<u64, ReadError> {
        let repo = self.repo;
        let writer = self.writer;
        let sender = &self.sender;
        let recycled = &self.recycled;
        let progress = self.progress;
        let mut repo_error = None;
        let read = repo
            .chunker()
            .chunk_reader_with_buffer(reader, &mut self.buffer, |chunk| {
                let id = repo.keys().chunk_id(chunk);
                if let Some(progress) = progress {
                    progress.add_bytes(chunk.len() as u64);
                }
                content.push(Extent::Data {
                    id,
                    len: chunk.len() as u32,
                });
                if writer.reserve(&id.0) {
                    let mut data = recycled.try_recv().unwrap_or_default();
                    data.clear();
                    // Exact sizes keep buffers from growing past MAX_REUSED_BUFFER
                    // only because a chunk was a little too large for them.
                    data.reserve_exact(chunk.len());
                    data.extend_from_slice(chunk);
                    if sender.send((id, data)).is_err() {
                        repo_error =
                            Some(RepoError::Io(io::Error::other("all seal workers stopped")));
                        return Err(io::Error::other("seal workers stopped"));
                    }
                }
                Ok(())
            });
        if let Some(e) = repo_error {
            return Err(ReadError::Repo(e));
        }
        read.map_err(ReadError::Source)
    }
}

/// True when size, mtime, ctime, inode and device number match: what decides
/// that a file need not be read again.
fn same_metadata(old: &Node, new: &Node) -> bool {
    old.size == new.size
        && old.mtime == new.mtime
        && old.ctime == new.ctime
        && old.inode == new.inode
        && old.dev == new.dev
}

fn push_hole(content: &mut Vec<Extent>, len: u64) {
    if let Some(Extent::Hole { len: previous }) = content.last_mut() {
        *previous += len;
    } else {
        content.push(Extent::Hole { len });
    }
}

struct ReadAt<'f> {
    file: &'f File,
    offset: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

enum ReadError {
    /// The source file failed; the entry is skipped.
    Source(io::Error),
    /// The repository failed; the backup stops.
    Repo(RepoError),
}
