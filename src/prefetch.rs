//! Reading ahead of the backup walker.
//!
//! The walker reads one file at a time, and on a cold cache it waits for the
//! device on every small file. A few prefetch threads take the next entries
//! of the directory being walked, `lstat` them and ask the kernel to read
//! the files that the walker will read into the page cache. When the walker
//! gets there, it finds the inode and the data cached. The threads only give
//! the kernel hints, so nothing they do changes what the backup stores, and
//! they never open a file that an exclude pattern or `--one-file-system`
//! leaves out.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use crossbeam_channel::{Receiver, Sender};

use crate::tree::{Node, NodeKind};

/// Number of prefetch threads. They spend their time waiting for the device,
/// so more threads than cores keep more reads in flight.
pub const PREFETCH_THREADS: usize = 4;

/// Entries of a directory that the walker hands out ahead of the one it
/// backs up.
pub const PREFETCH_WINDOW: usize = 32;

/// Files larger than this are not read ahead: the kernel's own readahead
/// keeps up with the walker once it reads them, and reading them early would
/// fill the cache with data that waits longer for its turn.
const PREFETCH_MAX_SIZE: u64 = 4 << 20;

/// A request to read one directory entry ahead of the walker.
pub struct PrefetchJob {
    pub path: PathBuf,
    /// Metadata of the entry in the parent snapshot. When the entry still has
    /// it, the walker will not read the file, so only its inode is read ahead.
    pub known: Option<FileStamp>,
    /// With `--one-file-system`, the device of the walk: a file on another
    /// device is excluded, so it is not opened.
    pub device: Option<u64>,
}

/// The metadata that decides whether a file is unchanged since the parent
/// snapshot.
#[derive(PartialEq, Eq)]
pub struct FileStamp {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    inode: u64,
    dev: u64,
}

impl FileStamp {
    /// Returns the stamp of a file node of a snapshot.
    pub fn of_node(node: &Node) -> Option<Self> {
        (node.kind == NodeKind::File).then(|| Self {
            size: node.size,
            mtime: (node.mtime.secs, i64::from(node.mtime.nanos)),
            ctime: (node.ctime.secs, i64::from(node.ctime.nanos)),
            inode: node.inode,
            dev: node.dev,
        })
    }

    fn of_metadata(md: &std::fs::Metadata) -> Self {
        Self {
            size: md.size(),
            mtime: (md.mtime(), md.mtime_nsec()),
            ctime: (md.ctime(), md.ctime_nsec()),
            inode: md.ino(),
            dev: md.dev(),
        }
    }
}

/// Hands `job` to the prefetch threads unless they are busy, in which case
/// the hint is dropped.
pub fn offer(sender: &Sender<PrefetchJob>, job: PrefetchJob) {
    // A full queue or stopped threads only cost the hint.
    let _ = sender.try_send(job);
}

/// Runs one prefetch thread until the walker drops its sender.
pub fn prefetch_worker(jobs: Receiver<PrefetchJob>) {
    for job in jobs {
        // Errors are the walker's to report when it reaches the entry.
        let Ok(md) = std::fs::symlink_metadata(&job.path) else {
            continue;
        };
        if !md.is_file() || md.size() == 0 || md.size() > PREFETCH_MAX_SIZE {
            continue;
        }
        if job.device.is_some_and(|device| device != md.dev()) {
            continue;
        }
        if job.known.as_ref() == Some(&FileStamp::of_metadata(&md)) {
            continue;
        }
        let Ok(file) = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(&job.path)
        else {
            continue;
        };
        will_need(&file);
    }
}

/// Asks the kernel to start reading all of `file` into the page cache.
fn will_need(file: &File) {
    // SAFETY: posix_fadvise on a valid descriptor has no memory effects.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{NameCache, node_from_metadata};

    #[test]
    fn stamp_of_stored_node_matches_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        std::fs::write(&path, b"content").unwrap();
        let md = std::fs::symlink_metadata(&path).unwrap();
        let node = node_from_metadata(b"file", NodeKind::File, &md, &NameCache::default());

        assert!(FileStamp::of_node(&node) == Some(FileStamp::of_metadata(&md)));
        std::fs::write(&path, b"new content").unwrap();
        let changed = std::fs::symlink_metadata(&path).unwrap();
        assert!(FileStamp::of_node(&node) != Some(FileStamp::of_metadata(&changed)));
    }

    #[test]
    fn stamp_only_for_files() {
        let node = Node::new(b"dir".to_vec(), NodeKind::Dir);
        assert!(FileStamp::of_node(&node).is_none());
    }
}
