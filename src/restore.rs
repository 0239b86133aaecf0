//! Writing a snapshot's files back to a directory.
//!
//! Directories are created first, files are then written in parallel, and each
//! directory's metadata is set last, deepest first, so that writing into a
//! directory does not change its restored mtime.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::display::escape_path;
use crate::id::TreeId;
use crate::meta::{self, ShortPath};
use crate::progress::Progress;
use crate::repository::{RepoError, Repository};
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
        tracing::error!("restore of {escaped} failed: {reason}");
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

    let bytes = AtomicU64::new(0);
    let files_done = AtomicU64::new(0);
    plan.files.par_iter().for_each(
        |(path, node)| match restore_file(repo, path, node, progress) {
            Ok(written) => {
                bytes.fetch_add(written, Ordering::Relaxed);
                files_done.fetch_add(1, Ordering::Relaxed);
                progress.add_items(1);
                if let Err(e) = set_metadata(path, node) {
                    fail(path, format!("metadata not restored: {e}"));
                }
            }
            Err(e) => {
                // Never leave a file whose bytes differ from the backup.
                let _ = remove_existing(path);
                fail(path, e.to_string());
            }
        },
    );

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
    outcome.files = files_done.into_inner();
    outcome.bytes = bytes.into_inner();
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

fn create_dir(path: &Path) -> io::Result<()> {
    let short = ShortPath::new(path)?;
    let path = short.path();
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => return Ok(()),
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

fn restore_file(
    repo: &Repository,
    path: &Path,
    node: &Node,
    progress: &Progress,
) -> Result<u64, RepoError> {
    remove_existing(path)?;
    let short = ShortPath::new(path)?;
    let path = short.path();
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)?;
    let mut written = 0;
    for extent in &node.content {
        match extent {
            Extent::Data { id, len } => {
                let data = repo.read_chunk(id)?;
                if data.len() != *len as usize {
                    return Err(RepoError::Damaged {
                        object: format!("chunk {}", id.short()),
                        detail: format!("{} bytes where the tree records {len}", data.len()),
                    });
                }
                file.write_all(&data)?;
                written += data.len() as u64;
                progress.add_bytes(data.len() as u64);
            }
            Extent::Hole { len } => {
                file.seek(SeekFrom::Current(*len as i64))?;
            }
        }
    }
    // A trailing hole needs the length set explicitly.
    file.set_len(node.size)?;
    Ok(written)
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
