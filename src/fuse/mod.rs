//! Read-only FUSE mount of a repository's snapshots.
//!
//! Layout of the mounted tree:
//!
//! ```text
//! /snapshots/<time>_<short id>/   one folder per snapshot, holding its root tree
//! /snapshots/latest               symbolic link to the newest snapshot's folder
//! /ids/<full id>/                 the same snapshots, by full id
//! /hosts/<hostname>/<time>_<short id>/
//! /tags/<tag>/<time>_<short id>/
//! /incoming/                      writable, with [`mount_write_through`] only
//! ```
//!
//! `incoming/` and its saving as a snapshot at unmount are described in the
//! `overlay` module and in `docs/mount.md`. Everything below refers to the
//! read-only folders.
//!
//! `<time>` is the snapshot time in UTC as `YYYY-MM-DDTHH-MM-SSZ`. The snapshot
//! list is read once, at mount time. A tree is loaded the first time its
//! directory is looked up, listed or opened.
//!
//! # Inode numbers
//!
//! Inode numbers are allocated in order and stay valid until unmount: the
//! top-level folders first, then the entries of each snapshot directory as one
//! contiguous range when the directory is first used. Every place a snapshot
//! appears (`/snapshots`, `/ids`, `/hosts`, `/tags`) is a separate folder with
//! its own inodes. Inside one such folder, regular files that had the same
//! device and inode number at backup time and a link count above 1 share one
//! inode, so `cp -a` and rsync `-H` restore them as hard links.
//!
//! # Errors
//!
//! - A name that does not exist: ENOENT.
//! - A tree or chunk that is missing, damaged or fails to decrypt, or a file
//!   whose extents disagree with its size: EIO. A `tracing` error event names
//!   the inode, its path below the mount point and the cause. Each
//!   distinct error is logged once at error level. No read ever returns bytes
//!   that were not verified against their chunk id.
//! - Any change (write, create, rename, chmod, setxattr and so on): EROFS. The
//!   file system is also mounted with the `ro` option, unless `incoming/` is
//!   served, so the kernel rejects most changes before they get here. A rename
//!   or hard link between `incoming/` and a snapshot folder: EXDEV.
//! - A missing extended attribute: ENODATA. A buffer that is too small: ERANGE.

mod content;
mod fs;
mod inode;
mod layout;
mod overlay;
#[cfg(test)]
mod tests;
mod trees;

use std::io;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use anyhow::Context;
use fuser::{MountOption, SessionACL, SessionUnmounter};
use signal_hook::consts::signal::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};

use self::overlay::Overlay;
pub use self::overlay::{CommitOutcome, WRITE_THROUGH_TAG, WriteThroughOptions};
use crate::repository::Repository;

/// Settings of a mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Lets users other than the one who mounts access the files (FUSE
    /// `allow_other`). File permissions are still checked. A user who is not
    /// root needs `user_allow_other` in `/etc/fuse.conf` for this.
    pub allow_other: bool,
    /// Number of threads that serve kernel requests, at least 1.
    pub threads: usize,
    /// Maximum total size in bytes of the decrypted chunks kept in memory.
    pub cache_bytes: usize,
    /// Estimated memory in bytes for decoded directory trees, the mount's only
    /// per-directory metadata besides a few dozen bytes per listed directory.
    pub metadata_cache_bytes: usize,
    /// Number of chunks read ahead of a sequential reader, on background threads.
    /// 0 turns prefetching off.
    pub readahead_chunks: usize,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            allow_other: false,
            threads: 4,
            cache_bytes: 256 << 20,
            metadata_cache_bytes: 256 << 20,
            readahead_chunks: 2,
        }
    }
}

/// Mounts every snapshot of `repo` read-only at `mountpoint` and serves requests
/// until the file system is unmounted, by `umount`, `fusermount3 -u` or a
/// SIGINT or SIGTERM to this process, which unmounts it. Returns Ok after a
/// clean unmount. On a signal while the mount point is busy, the mount stays,
/// an error is logged, and the next signal tries again.
///
/// NOTE: the SIGINT and SIGTERM handlers stay installed after this returns, so
/// the process then ignores those signals (signal-hook 0.4 does not restore the
/// previous handler). Call it as the last step of a program.
pub fn mount(
    repo: Arc<Repository>,
    mountpoint: &Path,
    options: &MountOptions,
) -> anyhow::Result<()> {
    let mountpoint = check_mountpoint(mountpoint)?;
    let snapshots = repo
        .readable_snapshots()
        .with_context(|| format!("failed to list the snapshots of {}", repo.location()))?;
    serve(repo, &mountpoint, options, snapshots, None)
}

/// Mounts like [`mount`], and adds the writable folder `incoming/`, which
/// starts as the root tree of the parent snapshot (by default the latest).
/// Holds a shared repository lock while mounted. After the unmount, saves a
/// snapshot of `incoming/` tagged [`WRITE_THROUGH_TAG`] if anything in it
/// changed, and returns it in the outcome.
///
/// File content written to `incoming/` is stored in the repository when the
/// last writer closes the file. A process killed before the unmount saves no
/// snapshot. The packs it wrote stay unreferenced until a prune, and the next
/// backup or write-through mount indexes them and reuses their chunks.
pub fn mount_write_through(
    repo: Arc<Repository>,
    mountpoint: &Path,
    options: &MountOptions,
    write_options: &WriteThroughOptions,
) -> anyhow::Result<CommitOutcome> {
    let mountpoint = check_mountpoint(mountpoint)?;
    let lock = repo.lock_shared("mount --write-through", write_options.lock_wait)?;

    // As in a backup: blobs deleted by a prune that finished before the lock
    // was taken must not be deduplicated against, so the index is read again.
    repo.load_index()?;
    let adopted = repo.index_unindexed_packs()?;
    if adopted > 0 {
        info!("indexed {adopted} packs left by an interrupted backup or mount");
    }

    let snapshots = repo
        .readable_snapshots()
        .with_context(|| format!("failed to list the snapshots of {}", repo.location()))?;
    let parent = match write_options.parent {
        Some(id) => Some((id, repo.load_snapshot(&id)?)),
        None => snapshots.last().cloned(),
    };
    let owner = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    let mut overlay = Arc::new(
        Overlay::new(
            repo.clone(),
            parent,
            write_options.staging_dir.as_deref(),
            owner,
        )
        .context("failed to set up incoming/")?,
    );
    info!(
        staging = %overlay.staging_path().display(),
        parent = ?overlay.parent_id().map(|id| id.short()),
        "incoming/ is writable"
    );

    let served = serve(
        repo.clone(),
        &mountpoint,
        options,
        snapshots,
        Some(overlay.clone()),
    );
    // Runs after a failed session too: whatever was written is stored.
    let committed = overlay.commit(&lock);
    if let Some(overlay) = Arc::get_mut(&mut overlay)
        && let Err(e) = overlay.remove_staging_dir()
    {
        warn!("failed to remove the staging directory: {e}");
    }
    drop(lock);
    if let (Err(e), Ok(outcome)) = (&served, &committed)
        && let Some((id, _)) = &outcome.saved
    {
        warn!("the FUSE session failed ({e:#}), but snapshot {id} was saved");
    }
    served?;
    Ok(committed?)
}

fn check_mountpoint(mountpoint: &Path) -> anyhow::Result<std::path::PathBuf> {
    let canonical = mountpoint
        .canonicalize()
        .with_context(|| format!("mount point {} not found", mountpoint.display()))?;
    if !canonical.is_dir() {
        anyhow::bail!("mount point {} is not a directory", canonical.display());
    }
    Ok(canonical)
}

/// Mounts the file system and serves requests until it is unmounted.
fn serve(
    repo: Arc<Repository>,
    mountpoint: &Path,
    options: &MountOptions,
    snapshots: Vec<(crate::id::SnapshotId, crate::snapshot::Snapshot)>,
    incoming: Option<Arc<Overlay>>,
) -> anyhow::Result<()> {
    let mountpoint = mountpoint.to_path_buf();
    let snapshot_count = snapshots.len();
    let writable = incoming.is_some();
    let filesystem = fs::CairnFs::new(repo.clone(), snapshots, options, incoming)?;

    let mut config = fuser::Config::default();
    config.mount_options = vec![
        // A write-through mount is writable for `incoming/`. The callbacks
        // reject changes everywhere else with EROFS.
        if writable {
            MountOption::RW
        } else {
            MountOption::RO
        },
        MountOption::FSName("cairn".into()),
        MountOption::Subtype("cairn".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    config.acl = if options.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(options.threads.max(1));
    config.clone_fd = true;

    // Registered before mounting, so that a signal that arrives while mounting
    // is delivered once the watcher runs, instead of killing the process and
    // leaving a dead mount behind.
    let signals = Signals::new([SIGINT, SIGTERM]).context("failed to install signal handlers")?;
    let signal_handle = signals.handle();

    let mut session = fuser::Session::new(filesystem, &mountpoint, &config)
        .with_context(|| format!("failed to mount at {}", mountpoint.display()))?;
    info!(
        mountpoint = %mountpoint.display(),
        repository = %repo.location(),
        snapshots = snapshot_count,
        "mounted; unmount with `umount` or Ctrl-C"
    );

    // fuser's unmounter comes first: it also stops fuser from unmounting the
    // path a second time when the session ends.
    let unmounter = session.unmount_callable();
    let watched = mountpoint.clone();
    // The thread hands `signals` back instead of dropping it: dropping closes
    // the socket that `signal_handle.close()` writes to, and that write would
    // then fail with EPIPE.
    let watcher = std::thread::Builder::new()
        .name("cairn-signals".into())
        .spawn(move || {
            let mut signals = signals;
            unmount_on_signal(&mut signals, unmounter, &watched);
            signals
        })
        .context("failed to start the signal thread")?;

    // NOTE: after an external `umount`, fuser 0.18.0 tries to unmount the path
    // once more when the session ends and logs the failure ("Failed to umount
    // filesystem: Invalid argument") as a warning, because its check for a
    // live mount is inverted. The extra attempt has no effect.
    let result = session.run();
    signal_handle.close();
    match watcher.join() {
        Ok(signals) => drop(signals),
        Err(_) => warn!("the signal thread panicked"),
    }
    result.with_context(|| format!("FUSE session at {} failed", mountpoint.display()))?;
    info!(mountpoint = %mountpoint.display(), "unmounted");
    Ok(())
}

/// Unmounts `mountpoint` on each SIGINT or SIGTERM until an unmount succeeds
/// or the signal handle is closed. A busy mount stays mounted and is retried on
/// the next signal.
fn unmount_on_signal(signals: &mut Signals, unmounter: SessionUnmounter, mountpoint: &Path) {
    let mut unmounter = Some(unmounter);
    for signal in signals.forever() {
        info!(signal, mountpoint = %mountpoint.display(), "signal received, unmounting");
        // fuser's unmounter works once, so later attempts use `unmount`.
        let result = match unmounter.take() {
            Some(mut unmounter) => unmounter.unmount(),
            None => unmount(mountpoint),
        };
        match result {
            Ok(()) => return,
            Err(e) => error!(
                mountpoint = %mountpoint.display(),
                "failed to unmount: {e}; close the programs that use it (`fuser -vm {}` lists them) \
                 and send the signal again, or run `umount -l {}`",
                mountpoint.display(),
                mountpoint.display()
            ),
        }
    }
}

/// Unmounts a FUSE mount: with umount(2) as root, else through the setuid
/// `fusermount3` (or `fusermount`) helper.
fn unmount(mountpoint: &Path) -> io::Result<()> {
    match nix::mount::umount(mountpoint) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) => unmount_with_helper(mountpoint),
        Err(e) => Err(e.into()),
    }
}

fn unmount_with_helper(mountpoint: &Path) -> io::Result<()> {
    let mut last_error = io::Error::new(
        io::ErrorKind::NotFound,
        "fusermount3 and fusermount not found",
    );
    for helper in ["fusermount3", "fusermount"] {
        let output = match Command::new(helper)
            .arg("-u")
            .arg("--")
            .arg(mountpoint)
            .output()
        {
            Ok(output) => output,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if output.status.success() {
            return Ok(());
        }
        let message = String::from_utf8_lossy(&output.stderr).trim().to_string();
        last_error = io::Error::other(format!("{helper} -u failed: {message}"));
        break;
    }
    Err(last_error)
}
