//! Staging files: the local copies that writes to `incoming/` go to until the
//! last writer closes the file.
//!
//! A staging file is created unnamed (`O_TMPFILE`, or created and unlinked
//! where the file system lacks it), so it disappears when it is closed or the
//! process dies, and never outlives the data it holds.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::sync::atomic::Ordering;

use super::{Overlay, make_owned};
use crate::repository::{RepoError, Repository};
use crate::tree::Extent;

/// The directory that holds the staging files.
pub(crate) struct StagingDir {
    path: PathBuf,
    /// Set when the directory was created for this mount and is removed at the end.
    created: Option<tempfile::TempDir>,
}

impl StagingDir {
    /// Uses `requested` (created if missing), or creates a new directory named
    /// after the repository id under `$TMPDIR`, or `/var/tmp` when it is unset.
    pub fn create(requested: Option<&Path>, repo_id: &[u8; 16]) -> io::Result<Self> {
        if let Some(path) = requested {
            fs::create_dir_all(path).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("failed to create staging directory {}: {e}", path.display()),
                )
            })?;
            return Ok(Self {
                path: path.to_path_buf(),
                created: None,
            });
        }
        let base = std::env::var_os("TMPDIR")
            .filter(|dir| !dir.is_empty())
            .map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
        let dir = tempfile::Builder::new()
            .prefix(&format!("cairn-staging-{}-", hex::encode(repo_id)))
            .tempdir_in(&base)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "failed to create a staging directory in {}: {e}; pass --staging-dir",
                        base.display()
                    ),
                )
            })?;
        Ok(Self {
            path: dir.path().to_path_buf(),
            created: Some(dir),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the directory if this mount created it.
    pub fn remove(&mut self) -> io::Result<()> {
        match self.created.take() {
            Some(dir) => dir.close(),
            None => Ok(()),
        }
    }

    /// Creates an empty, unnamed staging file.
    pub fn new_file(&self) -> io::Result<File> {
        tempfile::tempfile_in(&self.path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "failed to create a staging file in {}: {e}",
                    self.path.display()
                ),
            )
        })
    }
}

/// The write state of one regular file of `incoming/`. Its mutex is taken
/// before the table lock, never while holding it.
#[derive(Debug, Default)]
pub(crate) struct FileIo {
    /// The staging file, which holds the file's current bytes while it exists.
    pub staging: Option<Arc<File>>,
    /// True when the staging file's bytes are stored as the node's content.
    /// The staging file is kept for reads until every chunk of that content is
    /// in a written pack, because chunks in the pack being filled cannot be read.
    pub stored: bool,
    /// Number of open handles with write access.
    pub writers: u32,
}

/// Writes a file's stored content into a new staging file: chunks are read
/// one at a time and holes are skipped, so the staging file stays sparse.
pub(crate) fn materialize(
    repo: &Repository,
    staging: &StagingDir,
    extents: &[Extent],
    size: u64,
) -> Result<File, RepoError> {
    let file = staging.new_file()?;
    let mut offset = 0u64;
    for extent in extents {
        match extent {
            Extent::Data { id, len } => {
                let data = repo.read_chunk(id)?;
                if data.len() != *len as usize {
                    return Err(RepoError::Damaged {
                        object: format!("chunk {}", id.short()),
                        detail: format!("{} bytes where the tree records {len}", data.len()),
                    });
                }
                file.write_all_at(&data, offset)?;
            }
            Extent::Hole { .. } => {}
        }
        offset += extent.len();
    }
    file.set_len(size)?;
    Ok(file)
}

/// Reads up to `size` bytes at `offset` of a staging file, fewer at its end.
pub(crate) fn read_at(file: &File, offset: u64, size: u32) -> io::Result<Vec<u8>> {
    let mut buffer = vec![0; size as usize];
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read_at(&mut buffer[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buffer.truncate(filled);
    Ok(buffer)
}

/// Runs `lseek` with SEEK_DATA or SEEK_HOLE on a staging file. Returns
/// `Ok(None)` for ENXIO (no data or hole at or after `offset`).
pub(crate) fn seek(file: &File, offset: i64, whence: i32) -> io::Result<Option<i64>> {
    // SAFETY: lseek on an open descriptor has no memory effects.
    let position = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if position >= 0 {
        return Ok(Some(position));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(e)
    }
}

/// Runs `fallocate` on a staging file.
pub(crate) fn fallocate(file: &File, mode: i32, offset: u64, length: u64) -> io::Result<()> {
    let (Ok(offset), Ok(length)) = (i64::try_from(offset), i64::try_from(length)) else {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    };
    // SAFETY: fallocate on an open descriptor has no memory effects.
    let result = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, length) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Overlay {
    /// Chunks the staging file of file `ino` into the repository and makes the
    /// chunks the file's content. The staging file stays the source of reads
    /// until its chunks can be read from the repository. A file that is no
    /// longer linked anywhere is dropped without being stored. The caller
    /// holds the file's [`FileIo`] lock. On error the staging file stays.
    pub(crate) fn store_staged(&self, ino: u64, io: &mut FileIo) -> Result<(), RepoError> {
        let Some(file) = io.staging.clone() else {
            return Ok(());
        };
        if io.stored {
            return Ok(());
        }
        let linked = self.lock().get(ino).is_ok_and(|inode| inode.nlink > 0);
        if !linked {
            io.staging = None;
            if let Ok(inode) = self.lock().get_mut(ino) {
                inode.staged = false;
                inode.content = None;
            }
            return Ok(());
        }
        let stored = self.store.store_file(file)?;
        self.bytes_chunked
            .fetch_add(stored.bytes_read, Ordering::Relaxed);
        {
            let mut table = self.lock();
            if let Ok(inode) = table.get_mut(ino) {
                let node = make_owned(inode, ino, self.session_dev);
                node.content = stored.content;
                node.size = stored.size;
                inode.content = None;
            }
        }
        io.stored = true;
        let retained = {
            let mut retained = self.retained.lock().expect("retained lock");
            retained.push(ino);
            retained.len()
        };
        if retained >= self.max_retained {
            self.store.flush()?;
        }
        self.drop_readable_staging(ino, io);
        Ok(())
    }

    /// Drops the staging files of stored files whose chunks are all in written
    /// packs: `current` (whose lock the caller holds) and those of other files
    /// that no other thread is using.
    fn drop_readable_staging(&self, current: u64, current_io: &mut FileIo) {
        let retained = std::mem::take(&mut *self.retained.lock().expect("retained lock"));
        let mut kept = Vec::new();
        for ino in retained {
            let keep = if ino == current {
                !self.drop_if_readable(ino, current_io)
            } else {
                let io = self.lock().get(ino).ok().and_then(|inode| inode.io.clone());
                match io {
                    Some(io) => match io.try_lock() {
                        Ok(mut io) => !self.drop_if_readable(ino, &mut io),
                        Err(_) => true,
                    },
                    None => false,
                }
            };
            if keep {
                kept.push(ino);
            }
        }
        self.retained.lock().expect("retained lock").extend(kept);
    }

    /// Drops a stored file's staging file if every chunk of its content can be
    /// read from the repository. Returns true when the file needs no more
    /// checks: its staging file is gone, or holds bytes not stored yet.
    fn drop_if_readable(&self, ino: u64, io: &mut FileIo) -> bool {
        if io.staging.is_none() || !io.stored {
            return true;
        }
        if io.writers > 0 {
            return false;
        }
        let mut table = self.lock();
        let Ok(inode) = table.get_mut(ino) else {
            io.staging = None;
            return true;
        };
        let readable = {
            let index = self.repo.index();
            inode.node.get().content.iter().all(|extent| match extent {
                Extent::Data { id, .. } => index.contains(&id.0),
                Extent::Hole { .. } => true,
            })
        };
        if readable {
            io.staging = None;
            inode.staged = false;
            inode.content = None;
        }
        readable
    }
}
