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

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

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
        let planned = plan
            .dirs
            .iter()
            .chain(&plan.files)
            .chain(&plan.others)
            .map(|(path, _)| path)
            .chain(plan.links.iter().map(|(path, _)| path))
            .any(|path| *path == wanted);
        if !planned && include.as_slice() != b"/" {
            return Err(RepoError::SnapshotSpec(format!(
                "--include {} is not in the snapshot: run `cairn ls SNAPSHOT` to list its paths",
                escape_path(include)
            )));
        }
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

    for (path, _) in &plan.dirs {
        if let Err(e) = create_dir(path) {
            fail(path, e.to_string());
        }
    }
    outcome.lock().expect("outcome lock").dirs = plan.dirs.len() as u64;

    let (files_done, bytes) = write_files(repo, &plan.files, progress, &fail)?;
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
    /// The first reason the file cannot be restored.
    error: OnceLock<String>,
    /// The file is made of one chunk copy and is created when that is written,
    /// which saves opening it twice.
    create_on_write: bool,
}

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

/// Writes the content of `files`. Files that take other than exactly one chunk
/// copy are created first. Then each pack's needed chunks are read with as few
/// reads as the gaps allow, several packs at once, and each chunk is written to
/// every place it goes; files of one chunk are created on the way. A file's metadata is set once its last chunk is written.
/// A file that cannot be restored whole is removed and reported through `fail`.
/// Returns the number of files restored and their bytes.
fn write_files(
    repo: &Repository,
    files: &[(PathBuf, Node)],
    progress: &Progress,
    fail: &(dyn Fn(&Path, String) + Sync),
) -> Result<(u64, u64), RepoError> {
    let (packs, states) = plan_reads(repo, files)?;
    let done = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let unreachable = OnceLock::new();
    let finish = |file: usize| {
        let (path, node) = &files[file];
        if let Some(reason) = states[file].error.get() {
            // Never leave a file whose bytes differ from the backup.
            let _ = remove_existing(path);
            fail(path, reason.clone());
            return;
        }
        done.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(data_len(node), Ordering::Relaxed);
        progress.add_items(1);
        if let Err(e) = set_metadata(path, node) {
            fail(path, format!("metadata not restored: {e}"));
        }
    };

    repo.read_pool().install(|| {
        files
            .par_iter()
            .enumerate()
            .for_each(|(file, (path, node))| {
                let state = &states[file];
                if state.error.get().is_none()
                    && !state.create_on_write
                    && let Err(e) = create_file(path, node.size)
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
                if unreachable.get().is_some() {
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
                            place(chunk, plain, files, &states, &mut open, progress, &finish);
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
                            let plain = repo.read_chunk(&chunk.id);
                            if let Err(RepoError::Io(e)) = &plain
                                && e.kind() == io::ErrorKind::TimedOut
                            {
                                let _ = unreachable.set(io::Error::new(e.kind(), e.to_string()));
                                return;
                            }
                            place(chunk, plain, files, &states, &mut open, progress, &finish);
                        }
                    }
                }
            }
        });
    });
    if let Some(e) = unreachable.into_inner() {
        // Files created before the reads stopped are incomplete. Files of one
        // chunk not yet created keep whatever the target had at their path.
        let mut removed = 0u64;
        for (file, (path, _)) in files.iter().enumerate() {
            let state = &states[file];
            if state.remaining.load(Ordering::Acquire) > 0 && !state.create_on_write {
                let _ = remove_existing(path);
                removed += 1;
            }
        }
        return Err(RepoError::Io(io::Error::new(
            e.kind(),
            format!(
                "restore stopped, the repository cannot be read: {e}. Restored: {}; removed from the target as incomplete: {}. Run the same restore again once the repository is reachable",
                crate::display::count(done.into_inner(), "file"),
                crate::display::count(removed, "file"),
            ),
        )));
    }
    Ok((done.into_inner(), bytes.into_inner()))
}

/// Writes one chunk's plaintext, or its error, to every place it goes, and
/// finishes each file whose last chunk this was. `open` keeps the file written
/// last, since consecutive chunks of a pack mostly belong to one file.
fn place(
    chunk: &PackChunk,
    plain: Result<Vec<u8>, RepoError>,
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
    (path, node): &(PathBuf, Node),
    data: &[u8],
) -> io::Result<()> {
    if state.create_on_write {
        let file = create_file(path, node.size)?;
        return file.write_all_at(data, placement.offset);
    }
    let file = match open {
        Some((number, file)) if *number == placement.file => file,
        _ => {
            let short = ShortPath::new(path)?;
            let file = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(short.path())?;
            &mut open.insert((placement.file, file)).1
        }
    };
    file.write_all_at(data, placement.offset)
}

/// Replaces whatever lies at `path` with an empty file of `size` bytes, private
/// until its metadata is restored. Holes need no writes: the bytes that no
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
