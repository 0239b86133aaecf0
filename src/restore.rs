//! Writing a snapshot's files back to a directory.
//!
//! Directories are created first. Files are then written pack by pack. The
//! chunks that the restore needs are sorted by the pack that contains them, and
//! each pack is read in few large reads, several packs at once. Each chunk goes
//! to every file and offset that contains it, so a chunk shared by many files
//! is read once, and a server or object store gets a few requests per pack
//! rather than one per chunk. Each directory's metadata is set
//! last, deepest first, so that writing into a directory does not change its
//! restored mtime.
//!
//! A file is written under a partial name beside its own, `.NAME.cairn-partial`,
//! and renamed to its name once all its chunks and its metadata are in place.
//! A file of one chunk is written unnamed where the file system allows
//! (`O_TMPFILE`) and linked to its name when complete.
//! Whatever stops a restore, a file under its own name is complete: a partial
//! one carries the partial name, which the next restore of the same snapshot
//! reuses and renames, and which a restore stopped by SIGINT or SIGTERM removes.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rayon::prelude::*;

use crate::display::escape_path;
use crate::id::{ChunkId, PackId, TreeId};
use crate::meta::{self, ShortPath};
use crate::progress::Progress;
use crate::repository::pack::BlobKind;
use crate::repository::{RepoError, Repository, pack_path, read_runs};
use crate::tree::{Extent, Node, NodeKind};

/// Settings of one restore.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Restore only these snapshot paths (absolute, as in the snapshot) and what
    /// lies below them; empty means everything.
    pub includes: Vec<PathBuf>,
    /// Set by the caller to stop the restore, such as on SIGINT. Files not yet
    /// finished are removed, and the restore returns [`RepoError::Interrupted`].
    pub interrupt: Arc<AtomicBool>,
}

/// Outcome of a restore.
#[derive(Debug, Default)]
pub struct RestoreOutcome {
    /// Files written.
    pub files: u64,
    /// Directories created.
    pub dirs: u64,
    /// Other entries created (symlinks, hard links, devices, FIFOs, sockets).
    pub others: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Entries that failed, each with its path and reason.
    pub errors: Vec<(Vec<u8>, String)>,
}

struct Plan {
    dirs: Vec<(PathBuf, Node)>,
    files: Vec<(PathBuf, Node)>,
    others: Vec<(PathBuf, Node)>,
    links: Vec<(PathBuf, PathBuf)>,
}

impl Plan {
    /// Returns every path that the restore creates.
    fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.dirs
            .iter()
            .chain(&self.files)
            .chain(&self.others)
            .map(|(path, _)| path)
            .chain(self.links.iter().map(|(path, _)| path))
    }
}

/// Restores the tree `root` below `target`: the snapshot path `/srv/git` comes
/// back as `target/srv/git`.
pub fn restore(
    repo: &Repository,
    root: &TreeId,
    target: &Path,
    options: &RestoreOptions,
) -> Result<RestoreOutcome, RepoError> {
    restore_with_progress(repo, root, target, options, &Progress::default())
}

/// Restores like [`restore`] and counts files and bytes written in `progress`,
/// whose totals are set once the snapshot's tree has been read.
pub fn restore_with_progress(
    repo: &Repository,
    root: &TreeId,
    target: &Path,
    options: &RestoreOptions,
    progress: &Progress,
) -> Result<RestoreOutcome, RepoError> {
    let includes: Vec<Vec<u8>> = options
        .includes
        .iter()
        .map(|p| p.as_os_str().as_bytes().to_vec())
        .map(|p| {
            if p.len() > 1 && p.ends_with(b"/") {
                p[..p.len() - 1].to_vec()
            } else {
                p
            }
        })
        .collect();

    let mut plan = Plan {
        dirs: Vec::new(),
        files: Vec::new(),
        others: Vec::new(),
        links: Vec::new(),
    };
    let mut hard_links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    plan_tree(
        repo,
        root,
        target,
        b"",
        &includes,
        &mut plan,
        &mut hard_links,
    )?;
    for include in &includes {
        let wanted = target.join(OsStr::from_bytes(
            include.strip_prefix(b"/").unwrap_or(include),
        ));
        let planned = plan.paths().any(|path| *path == wanted);
        if !planned && include.as_slice() != b"/" {
            return Err(RepoError::SnapshotSpec(format!(
                "--include {} is not in the snapshot: run `cairn ls SNAPSHOT` to list its paths",
                escape_path(include)
            )));
        }
    }
    if options.interrupt.load(Ordering::Relaxed) {
        return Err(RepoError::Interrupted(
            "restore interrupted before it wrote anything".into(),
        ));
    }
    fs::create_dir_all(target)?;

    progress.set_total_items(plan.files.len() as u64);
    progress.set_total_bytes(
        plan.files
            .iter()
            .flat_map(|(_, node)| &node.content)
            .filter(|extent| matches!(extent, Extent::Data { .. }))
            .map(Extent::len)
            .sum(),
    );

    let outcome = Mutex::new(RestoreOutcome::default());
    let fail = |path: &Path, reason: String| {
        let escaped = escape_path(path.as_os_str().as_bytes());
        // Reported on stderr below; the log line is for `RUST_LOG=debug` runs.
        tracing::debug!("restore of {escaped} failed: {reason}");
        eprintln!("error: {escaped}: {reason}");
        outcome
            .lock()
            .expect("outcome lock")
            .errors
            .push((path.as_os_str().as_bytes().to_vec(), reason));
    };

    let mut dirs = 0;
    for (path, _) in &plan.dirs {
        match create_dir(path) {
            Ok(()) => dirs += 1,
            Err(e) => fail(path, e.to_string()),
        }
    }
    outcome.lock().expect("outcome lock").dirs = dirs;

    let (files_done, bytes) = write_files(repo, &plan, progress, &options.interrupt, &fail)?;
    outcome.lock().expect("outcome lock").files = files_done;
    let mut others = 0;
    for (path, node) in &plan.others {
        match create_special(path, node).and_then(|()| set_metadata(path, node)) {
            Ok(()) => others += 1,
            Err(e) => fail(path, e.to_string()),
        }
    }
    for (path, first) in &plan.links {
        let _ = remove_existing(path);
        let linked = ShortPath::new(first)
            .and_then(|first| ShortPath::new(path).map(|path| (first, path)))
            .and_then(|(first, path)| fs::hard_link(first.path(), path.path()));
        match linked {
            Ok(()) => others += 1,
            Err(e) => fail(
                path,
                format!(
                    "hard link to {} failed: {e}",
                    escape_path(first.as_os_str().as_bytes())
                ),
            ),
        }
    }
    for (path, node) in plan.dirs.iter().rev() {
        if let Err(e) = set_metadata(path, node) {
            fail(path, format!("metadata not restored: {e}"));
        }
    }

    let mut outcome = outcome.into_inner().expect("outcome lock");
    outcome.bytes = bytes;
    outcome.others = others;
    Ok(outcome)
}

/// True if `path` is selected by the include list, or lies above a selected path
/// (so that it must exist as a directory).
fn selection(path: &[u8], includes: &[Vec<u8>]) -> (bool, bool) {
    if includes.is_empty() {
        return (true, false);
    }
    let mut selected = false;
    let mut above = false;
    for include in includes {
        if path == include.as_slice()
            || (path.starts_with(include) && path.get(include.len()) == Some(&b'/'))
            || include.as_slice() == b"/"
        {
            selected = true;
        } else if include.starts_with(path) && include.get(path.len()) == Some(&b'/') {
            above = true;
        }
    }
    (selected, above)
}

fn plan_tree(
    repo: &Repository,
    tree_id: &TreeId,
    dir: &Path,
    snapshot_dir: &[u8],
    includes: &[Vec<u8>],
    plan: &mut Plan,
    hard_links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), RepoError> {
    let tree = repo.load_tree(tree_id)?;
    repo.prefetch_trees(tree.nodes.iter().filter_map(|node| node.subtree.as_ref()));
    for node in &tree.nodes {
        let mut snapshot_path = snapshot_dir.to_vec();
        snapshot_path.push(b'/');
        snapshot_path.extend_from_slice(&node.name);
        let (selected, above) = selection(&snapshot_path, includes);
        if !selected && !above {
            continue;
        }
        let path = dir.join(OsStr::from_bytes(&node.name));
        match node.kind {
            NodeKind::Dir => {
                plan.dirs.push((path.clone(), node.clone()));
                if let Some(sub) = &node.subtree {
                    let child_includes: Vec<Vec<u8>> = if selected {
                        Vec::new()
                    } else {
                        includes.to_vec()
                    };
                    plan_tree(
                        repo,
                        sub,
                        &path,
                        &snapshot_path,
                        &child_includes,
                        plan,
                        hard_links,
                    )?;
                }
            }
            _ if !selected => {}
            kind => {
                if node.nlink > 1 && kind != NodeKind::Symlink {
                    if let Some(first) = hard_links.get(&(node.dev, node.inode)) {
                        plan.links.push((path, first.clone()));
                        continue;
                    }
                    hard_links.insert((node.dev, node.inode), path.clone());
                }
                if kind == NodeKind::File {
                    plan.files.push((path, node.clone()));
                } else {
                    plan.others.push((path, node.clone()));
                }
            }
        }
    }
    Ok(())
}

/// The destination of one copy of a chunk: a file of the plan, an offset in it
/// and the length that the file's tree records.
struct Placement {
    file: u32,
    len: u32,
    offset: u64,
}

/// A chunk to read from a pack, and every place it goes.
struct PackChunk {
    id: ChunkId,
    offset: u32,
    len: u32,
    placements: Vec<Placement>,
}

/// The chunks a restore needs from one pack, by offset.
struct PackReads {
    pack: PackId,
    chunks: Vec<PackChunk>,
}

/// The progress of one file.
#[derive(Default)]
struct FileState {
    /// Chunk copies not yet written or given up.
    remaining: AtomicUsize,
    /// The first reason the file cannot be restored, or for a file linked
    /// without its metadata, the reason for that.
    error: OnceLock<String>,
    /// The file is made of one chunk copy and is created when that is written,
    /// which saves opening it twice.
    create_on_write: bool,
    /// [`NOT_LINKED`], [`LINKED`] or [`LINKED_WITHOUT_METADATA`].
    linked: AtomicU8,
}

/// A file that is still to be renamed to its own name, or that failed.
const NOT_LINKED: u8 = 0;
/// A file written unnamed and linked to its own name with its metadata.
const LINKED: u8 = 1;
/// A file linked to its own name whose metadata could not be set.
const LINKED_WITHOUT_METADATA: u8 = 2;

/// Sorts the chunks that `files` need by the pack that contains them, in the
/// order the packs are first needed, and counts the chunk copies each file
/// waits for. A file with a chunk that no index lists gets its error here.
fn plan_reads(
    repo: &Repository,
    files: &[(PathBuf, Node)],
) -> Result<(Vec<PackReads>, Vec<FileState>), RepoError> {
    // A prune may have replaced the index files since they were loaded. Its new
    // files list every chunk that a snapshot still needs, so reload once.
    for attempt in 0..2 {
        let index = repo.index();
        let mut packs: Vec<PackReads> = Vec::new();
        let mut pack_numbers: HashMap<PackId, usize> = HashMap::new();
        let mut chunk_numbers: HashMap<ChunkId, (usize, usize)> = HashMap::new();
        let mut states = Vec::with_capacity(files.len());
        let mut missing = false;
        for (file, (_, node)) in files.iter().enumerate() {
            let mut state = FileState::default();
            let mut copies = 0;
            let mut offset = 0;
            for extent in &node.content {
                if let Extent::Data { id, len } = extent {
                    let placement = Placement {
                        file: file as u32,
                        len: *len,
                        offset,
                    };
                    let known = chunk_numbers.get(id).copied().or_else(|| {
                        let location = index.get(&id.0)?;
                        let pack = *pack_numbers.entry(location.pack).or_insert_with(|| {
                            packs.push(PackReads {
                                pack: location.pack,
                                chunks: Vec::new(),
                            });
                            packs.len() - 1
                        });
                        packs[pack].chunks.push(PackChunk {
                            id: *id,
                            offset: location.offset,
                            len: location.len,
                            placements: Vec::new(),
                        });
                        let numbers = (pack, packs[pack].chunks.len() - 1);
                        chunk_numbers.insert(*id, numbers);
                        Some(numbers)
                    });
                    match known {
                        Some((pack, chunk)) => {
                            packs[pack].chunks[chunk].placements.push(placement);
                            copies += 1;
                        }
                        None => {
                            missing = true;
                            let _ = state.error.set(format!(
                                "chunk {} is not in the repository's index: run `cairn check`",
                                id.short()
                            ));
                        }
                    }
                }
                offset += extent.len();
            }
            state.remaining.store(copies, Ordering::Relaxed);
            state.create_on_write = copies == 1;
            states.push(state);
        }
        if missing && attempt == 0 {
            drop(index);
            repo.load_index()?;
            continue;
        }
        for pack in &mut packs {
            pack.chunks.sort_by_key(|chunk| chunk.offset);
        }
        return Ok((packs, states));
    }
    unreachable!("the second attempt returns")
}

/// Returns the name under which the file at `path` is written until it is
/// complete: `.NAME.cairn-partial` beside it, or a name made of a hash of the
/// file's name where that is too long or where `hashed`, which the restore sets
/// when one of its own names ends like a partial name.
fn partial_path(path: &Path, hashed: bool) -> PathBuf {
    let name = path.file_name().unwrap_or_default().as_bytes();
    if hashed || name.len() + 1 + PARTIAL_SUFFIX.len() > NAME_MAX {
        let hash = blake3::hash(name).to_hex();
        return path.with_file_name(format!(".{}{PARTIAL_SUFFIX}", &hash[..32]));
    }
    let mut partial = Vec::with_capacity(name.len() + 1 + PARTIAL_SUFFIX.len());
    partial.push(b'.');
    partial.extend_from_slice(name);
    partial.extend_from_slice(PARTIAL_SUFFIX.as_bytes());
    path.with_file_name(OsStr::from_bytes(&partial))
}

/// Ends the name of a file that a restore has not finished.
const PARTIAL_SUFFIX: &str = ".cairn-partial";

/// Maximum length in bytes of a file name on Linux file systems.
const NAME_MAX: usize = 255;

/// Writes the content of the plan's files. Files that take other than exactly
/// one chunk copy are created first, under their partial names. Then the
/// needed chunks of each pack are read with as few reads as the gaps allow,
/// several packs at once. Each chunk is written to every place it goes, and a
/// file of one chunk is created when that chunk arrives. Once a file's last chunk is written, its
/// metadata is set and it is renamed to its own name. A file that cannot be
/// restored whole is removed and reported through `fail`. Returns the number of
/// files restored and their bytes.
fn write_files(
    repo: &Repository,
    plan: &Plan,
    progress: &Progress,
    interrupt: &AtomicBool,
    fail: &(dyn Fn(&Path, String) + Sync),
) -> Result<(u64, u64), RepoError> {
    let files = &plan.files;
    let (packs, states) = plan_reads(repo, files)?;
    // A name of the snapshot that ends like a partial name could be the
    // partial name of another file. Hashed partial names avoid the clash.
    let hashed = plan.paths().any(|path| {
        path.as_os_str()
            .as_bytes()
            .ends_with(PARTIAL_SUFFIX.as_bytes())
    });
    let partial = |file: usize| partial_path(&files[file].0, hashed);
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let unreachable = OnceLock::new();
    let finish = |file: usize| {
        let (path, node) = &files[file];
        let state = &states[file];
        let linked = state.linked.load(Ordering::Relaxed);
        if linked != NOT_LINKED {
            done.fetch_add(1, Ordering::Relaxed);
            bytes.fetch_add(data_len(node), Ordering::Relaxed);
            progress.add_items(1);
            if let (LINKED_WITHOUT_METADATA, Some(reason)) = (linked, state.error.get()) {
                fail(path, format!("metadata not restored: {reason}"));
            }
            return;
        }
        let partial = &partial(file);
        if let Some(reason) = state.error.get() {
            // Never leave a file whose bytes differ from the backup.
            let _ = remove_existing(partial);
            failed.fetch_add(1, Ordering::Relaxed);
            fail(path, reason.clone());
            return;
        }
        let metadata = set_metadata(partial, node);
        if let Err(e) = rename_into_place(partial, path) {
            let _ = remove_existing(partial);
            failed.fetch_add(1, Ordering::Relaxed);
            fail(
                path,
                format!("cannot rename the restored file into place: {e}"),
            );
            return;
        }
        done.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(data_len(node), Ordering::Relaxed);
        progress.add_items(1);
        if let Err(e) = metadata {
            fail(path, format!("metadata not restored: {e}"));
        }
    };
    let stopped = || unreachable.get().is_some() || interrupt.load(Ordering::Relaxed);

    repo.read_pool().install(|| {
        files.par_iter().enumerate().for_each(|(file, (_, node))| {
            let state = &states[file];
            if stopped() {
                return;
            }
            if state.error.get().is_none()
                && !state.create_on_write
                && let Err(e) = create_file(&partial(file), node.size)
            {
                let _ = state.error.set(e.to_string());
            }
            if state.remaining.load(Ordering::Acquire) == 0 {
                finish(file);
            }
        });
        packs.par_iter().for_each_init(Vec::new, |sealed, reads| {
            let mut open = None;
            let name = pack_path(&reads.pack);
            for run in read_runs(&reads.chunks, |chunk| {
                (chunk.offset.into(), chunk.len.into())
            }) {
                if stopped() {
                    return;
                }
                let start = u64::from(run[0].offset);
                let last = &run[run.len() - 1];
                let len = u64::from(last.offset) + u64::from(last.len) - start;
                match repo
                    .backend()
                    .read_at_into(&name, start, len as usize, sealed)
                {
                    Ok(()) => {
                        for chunk in run {
                            let at = (u64::from(chunk.offset) - start) as usize;
                            let plain = repo.open_blob(
                                BlobKind::Chunk,
                                &chunk.id.0,
                                &sealed[at..at + chunk.len as usize],
                                &reads.pack,
                            );
                            place(
                                chunk, plain, &partial, files, &states, &mut open, progress,
                                &finish,
                            );
                        }
                    }
                    // The backend gave up after retrying: every other read
                    // would wait as long, so the restore stops.
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                        let _ = unreachable.set(e);
                        return;
                    }
                    Err(e) => {
                        // Reading the chunks one by one names the damaged ones
                        // and finds chunks that a prune moved since.
                        tracing::debug!("reading {len} bytes of {name} failed: {e}");
                        for chunk in run {
                            if stopped() {
                                return;
                            }
                            let plain = repo.read_chunk(&chunk.id);
                            if let Err(RepoError::Io(e)) = &plain
                                && e.kind() == io::ErrorKind::TimedOut
                            {
                                let _ = unreachable.set(io::Error::new(e.kind(), e.to_string()));
                                return;
                            }
                            place(
                                chunk, plain, &partial, files, &states, &mut open, progress,
                                &finish,
                            );
                        }
                    }
                }
            }
        });
    });
    let unfinished = || {
        // Files started before the reads stopped are incomplete, under their
        // partial names. What the target had at the files' own paths stays.
        for (file, state) in states.iter().enumerate() {
            if state.remaining.load(Ordering::Acquire) > 0 {
                let _ = remove_existing(&partial(file));
            }
        }
        files.len() as u64 - done.load(Ordering::Relaxed) - failed.load(Ordering::Relaxed)
    };
    if let Some(e) = unreachable.into_inner() {
        let left = unfinished();
        return Err(RepoError::Io(io::Error::new(
            e.kind(),
            format!(
                "restore stopped, the repository cannot be read: {e}. Restored: {}; not restored: {}. Run the same restore again once the repository is reachable",
                crate::display::count(done.load(Ordering::Relaxed), "file"),
                crate::display::count(left, "file"),
            ),
        )));
    }
    if interrupt.load(Ordering::Relaxed) {
        let left = unfinished();
        return Err(RepoError::Interrupted(format!(
            "restore interrupted. Restored: {}; not restored: {}, and no directory, link or special file metadata was set. Run the same restore again to finish it",
            crate::display::count(done.load(Ordering::Relaxed), "file"),
            crate::display::count(left, "file"),
        )));
    }
    Ok((done.into_inner(), bytes.into_inner()))
}

/// Writes one chunk's plaintext, or its error, to every place it goes, and
/// finishes each file whose last chunk this was. `open` keeps the file written
/// last, since consecutive chunks of a pack mostly belong to one file.
#[allow(clippy::too_many_arguments)]
fn place(
    chunk: &PackChunk,
    plain: Result<Vec<u8>, RepoError>,
    partial: &(dyn Fn(usize) -> PathBuf + Sync),
    files: &[(PathBuf, Node)],
    states: &[FileState],
    open: &mut Option<(u32, fs::File)>,
    progress: &Progress,
    finish: &(dyn Fn(usize) + Sync),
) {
    for placement in &chunk.placements {
        let state = &states[placement.file as usize];
        let written = match &plain {
            Err(e) => Err(e.to_string()),
            Ok(data) if data.len() != placement.len as usize => Err(RepoError::Damaged {
                object: format!("chunk {}", chunk.id.short()),
                detail: format!(
                    "{} bytes where the tree records {}",
                    data.len(),
                    placement.len
                ),
            }
            .to_string()),
            Ok(_) if state.error.get().is_some() => Ok(()),
            Ok(data) => write_at(
                open,
                placement,
                state,
                partial,
                &files[placement.file as usize],
                data,
            )
            .map(|()| progress.add_bytes(data.len() as u64))
            .map_err(|e| e.to_string()),
        };
        if let Err(reason) = written {
            let _ = state.error.set(reason);
        }
        if state.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            if matches!(open, Some((file, _)) if *file == placement.file) {
                *open = None;
            }
            finish(placement.file as usize);
        }
    }
}

fn write_at(
    open: &mut Option<(u32, fs::File)>,
    placement: &Placement,
    state: &FileState,
    partial: &(dyn Fn(usize) -> PathBuf + Sync),
    (path, node): &(PathBuf, Node),
    data: &[u8],
) -> io::Result<()> {
    if state.create_on_write {
        if let Unnamed::Linked { metadata } = write_unnamed(path, node, placement.offset, data)? {
            let linked = match metadata {
                Ok(()) => LINKED,
                Err(e) => {
                    let _ = state.error.set(e.to_string());
                    LINKED_WITHOUT_METADATA
                }
            };
            state.linked.store(linked, Ordering::Relaxed);
            return Ok(());
        }
        let file = create_file(&partial(placement.file as usize), node.size)?;
        return file.write_all_at(data, placement.offset);
    }
    let file = match open {
        Some((number, file)) if *number == placement.file => file,
        _ => {
            let short = ShortPath::new(&partial(placement.file as usize))?;
            let file = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(short.path())?;
            &mut open.insert((placement.file, file)).1
        }
    };
    file.write_all_at(data, placement.offset)
}

/// The outcome of [`write_unnamed`].
enum Unnamed {
    /// The file is under its own name, with the outcome of setting its metadata.
    Linked { metadata: io::Result<()> },
    /// The file system or the system cannot create or link unnamed files.
    Unsupported,
}

/// Writes a file of one chunk as an unnamed file in its directory
/// (`O_TMPFILE`), sets its metadata through the descriptor and links it to
/// `path`, replacing what was there. Until the link the file has no name, so a
/// restore killed before it leaves nothing behind. This takes fewer system
/// calls than a partial name and a rename, which matters for the many small
/// files of a source tree.
fn write_unnamed(path: &Path, node: &Node, offset: u64, data: &[u8]) -> io::Result<Unnamed> {
    use std::os::fd::AsRawFd;

    let short = ShortPath::new(path)?;
    let Some(dir) = short.path().parent() else {
        return Ok(Unnamed::Unsupported);
    };
    let file = match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(dir)
    {
        Ok(file) => file,
        // Kernels and file systems without O_TMPFILE fail with these.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
            ) =>
        {
            return Ok(Unnamed::Unsupported);
        }
        Err(e) => return Err(e),
    };
    file.set_len(node.size)?;
    file.write_all_at(data, offset)?;
    let metadata = set_file_metadata(&file, node);

    // Linking through /proc needs no privilege, unlike AT_EMPTY_PATH.
    let from = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .expect("no NUL in the path");
    let to = std::ffi::CString::new(short.path().as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let link = || {
        // SAFETY: both paths are NUL-terminated strings that outlive the call.
        let result = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if result == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    match link() {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            remove_existing(path)?;
            link()?;
        }
        // Without /proc, write the file under its partial name instead.
        Err(_) => return Ok(Unnamed::Unsupported),
    }
    Ok(Unnamed::Linked { metadata })
}

/// Sets owner, mode, extended attributes and mtime of an open file, in the
/// order of [`set_metadata`].
fn set_file_metadata(file: &fs::File, node: &Node) -> io::Result<()> {
    use nix::sys::stat::futimens;
    use nix::sys::time::TimeSpec;
    use xattr::FileExt as _;

    if nix::unistd::geteuid().is_root() {
        nix::unistd::fchown(
            file,
            Some(nix::unistd::Uid::from_raw(node.uid)),
            Some(nix::unistd::Gid::from_raw(node.gid)),
        )
        .map_err(io::Error::from)?;
    }
    file.set_permissions(fs::Permissions::from_mode(node.mode))?;
    for attr in &node.xattrs {
        file.set_xattr(OsStr::from_bytes(&attr.name), &attr.value)?;
    }
    let time = TimeSpec::new(node.mtime.secs, node.mtime.nanos as i64);
    futimens(file, &time, &time).map_err(io::Error::from)
}

/// Replaces whatever lies at `path`, a partial name, with an empty file of
/// `size` bytes, private until its metadata is restored. Holes need no writes: the bytes that no
/// chunk covers read as zeros.
fn create_file(path: &Path, size: u64) -> io::Result<fs::File> {
    remove_existing(path)?;
    let short = ShortPath::new(path)?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(short.path())?;
    file.set_len(size)?;
    Ok(file)
}

/// Returns the number of stored bytes of a file, without its holes.
fn data_len(node: &Node) -> u64 {
    node.content
        .iter()
        .filter(|extent| matches!(extent, Extent::Data { .. }))
        .map(Extent::len)
        .sum()
}

fn create_dir(path: &Path) -> io::Result<()> {
    let short = ShortPath::new(path)?;
    let path = short.path();
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => {
            // An earlier restore may have left the directory read-only. Its
            // owner's write and search bits are added until its own mode is
            // restored at the end. A directory that is writable, such as `/usr`
            // for root, keeps its mode meanwhile.
            use nix::unistd::{AccessFlags, access};
            if access(path, AccessFlags::W_OK | AccessFlags::X_OK).is_err() {
                let mode = md.permissions().mode() & 0o7777 | 0o300;
                fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
            }
            return Ok(());
        }
        Ok(_) => fs::remove_file(path)?,
        Err(_) => {}
    }
    fs::create_dir(path)?;
    // Until its own mode is restored at the end, the directory must stay writable.
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
}

/// Renames the finished file at `partial` to `path`, replacing a file or an
/// empty directory there, or else removing a directory that is in the way.
fn rename_into_place(partial: &Path, path: &Path) -> io::Result<()> {
    let rename = || {
        let from = ShortPath::new(partial)?;
        let to = ShortPath::new(path)?;
        fs::rename(from.path(), to.path())
    };
    match rename() {
        Err(e)
            if e.kind() == io::ErrorKind::IsADirectory
                || e.kind() == io::ErrorKind::DirectoryNotEmpty =>
        {
            remove_existing(path)?;
            rename()
        }
        result => result,
    }
}

fn remove_existing(path: &Path) -> io::Result<()> {
    let short = ShortPath::new(path)?;
    let path = short.path();
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => Ok(()),
    }
}

fn create_special(path: &Path, node: &Node) -> io::Result<()> {
    use nix::sys::stat::{Mode, SFlag, mknod};

    remove_existing(path)?;
    let short = ShortPath::new(path)?;
    let path = short.path();
    match node.kind {
        NodeKind::Symlink => std::os::unix::fs::symlink(OsStr::from_bytes(&node.target), path),
        NodeKind::Fifo => {
            nix::unistd::mkfifo(path, Mode::from_bits_truncate(0o600)).map_err(io::Error::from)
        }
        kind => {
            let flag = match kind {
                NodeKind::Socket => SFlag::S_IFSOCK,
                NodeKind::CharDevice => SFlag::S_IFCHR,
                _ => SFlag::S_IFBLK,
            };
            mknod(path, flag, Mode::from_bits_truncate(0o600), node.rdev).map_err(io::Error::from)
        }
    }
}

/// Restores owner, mode, extended attributes and mtime, in an order where no
/// step undoes an earlier one: chown clears setuid bits, so mode comes after it.
fn set_metadata(path: &Path, node: &Node) -> io::Result<()> {
    let short = ShortPath::new(path)?;
    let path = short.path();
    use nix::fcntl::AtFlags;
    use nix::unistd::{Gid, Uid, fchownat};

    let is_root = nix::unistd::geteuid().is_root();
    if is_root {
        fchownat(
            nix::fcntl::AT_FDCWD,
            path,
            Some(Uid::from_raw(node.uid)),
            Some(Gid::from_raw(node.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(io::Error::from)?;
    }
    if node.kind != NodeKind::Symlink {
        fs::set_permissions(path, fs::Permissions::from_mode(node.mode))?;
    }
    meta::write_xattrs(path, &node.xattrs)?;
    meta::set_mtime(path, node.mtime)
}
