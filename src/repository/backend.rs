//! Storage of repository files. Packs, index files and snapshots are immutable
//! once written; lock files are rewritten whole while their owner runs, and the
//! key file is replaced whole when its slots change.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lru::LruCache;

use rand::RngExt;

/// Reads and writes repository files by their path relative to the repository root.
pub trait Backend: Send + Sync {
    /// Returns a human-readable location, such as the directory path.
    fn location(&self) -> String;
    /// Reads a whole file.
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    /// Reads `len` bytes at `offset`; fails if the file is shorter.
    fn read_at(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Reads like [`Backend::read_at`] into `buf`, whose allocation a caller
    /// that reads many ranges can reuse.
    fn read_at_into(
        &self,
        name: &str,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> io::Result<()> {
        *buf = self.read_at(name, offset, len)?;
        Ok(())
    }
    /// Returns the size of a file in bytes.
    fn size(&self, name: &str) -> io::Result<u64>;
    /// Writes a file so that readers see either nothing or all of it, and the data
    /// is durable when this returns.
    fn write_atomic(&self, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// Lists the file names directly inside a directory; a missing directory is empty.
    fn list(&self, dir: &str) -> io::Result<Vec<String>>;
    /// Lists the files at any depth below a directory as sorted paths relative
    /// to it, such as `3f/3fa1…` below `data`. Names that start with `.` are
    /// left out at every level, and a missing directory is empty. One call
    /// replaces a listing per subdirectory, which costs a request each on S3.
    fn list_recursive(&self, dir: &str) -> io::Result<Vec<String>>;
    /// Lists the files below `dir` like [`Backend::list_recursive`], each with
    /// its size in bytes. The default calls [`Backend::size`] for each file.
    fn list_recursive_sizes(&self, dir: &str) -> io::Result<Vec<(String, u64)>> {
        self.list_recursive(dir)?
            .into_iter()
            .map(|name| {
                let size = self.size(&format!("{dir}/{name}"))?;
                Ok((name, size))
            })
            .collect()
    }
    /// Removes a file. Removing a file that does not exist fails on a local
    /// directory and succeeds on S3, whose DELETE does not tell the two apart.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Returns the free space in bytes where new files go, if the backend can tell.
    fn free_space(&self) -> Option<u64>;
    /// Removes the temporary files of writes that never finished and returns how
    /// many there were. Only safe while no other process writes.
    fn remove_temporary_files(&self) -> io::Result<u64>;
    /// Returns how many reads a bulk reader such as a restore should keep in
    /// flight. A local disk needs no more than one per core. A server or object
    /// store replies to each request after a round trip, so more requests at
    /// once keep its connection busy.
    fn read_concurrency(&self) -> usize {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }
    /// Fails with [`io::ErrorKind::PermissionDenied`] when this client may not
    /// delete or replace files, so that `command` (such as `prune`) stops
    /// before it changes anything. Only a `cairn serve` token without the
    /// admin role has such a limit.
    fn check_can_delete(&self, command: &str) -> io::Result<()> {
        let _ = command;
        Ok(())
    }
}

/// Reads in flight for [`Backend::read_concurrency`] on a server or object
/// store: enough to hide a round trip of a few milliseconds behind the
/// transfer of the others, with a bounded amount of data in memory.
pub const REMOTE_READS: usize = 8;

/// Open files kept for ranged reads, so that reading many small blobs from one
/// pack does not open the pack again for each blob.
const OPEN_FILES: usize = 64;

/// A repository in a local directory.
pub struct LocalBackend {
    root: PathBuf,
    open_files: Mutex<LruCache<String, Arc<File>>>,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalBackend({})", self.root.display())
    }
}

impl LocalBackend {
    /// Uses `root` as the repository directory.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            open_files: Mutex::new(LruCache::new(
                NonZeroUsize::new(OPEN_FILES).expect("nonzero"),
            )),
        }
    }

    fn open_cached(&self, name: &str) -> io::Result<Arc<File>> {
        if let Some(file) = self.open_files.lock().expect("file cache lock").get(name) {
            return Ok(file.clone());
        }
        let path = self.path(name);
        let file = Arc::new(File::open(&path).map_err(|e| with_path(e, &path))?);
        self.open_files
            .lock()
            .expect("file cache lock")
            .put(name.to_string(), file.clone());
        Ok(file)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Writes a file like [`Backend::write_atomic`], but only if no file of
    /// that name exists. Fails with [`io::ErrorKind::AlreadyExists`] otherwise,
    /// and leaves the existing file as it was.
    ///
    /// The check and the creation are one step: the finished temporary file is
    /// hard-linked to the final name, which fails if the name exists, even when
    /// another process creates it at the same moment. So this needs a file
    /// system with hard links.
    pub fn create_new(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.write_through_temporary(name, bytes, false)
    }

    /// Writes `bytes` to a synced temporary file in the final directory, then
    /// renames it over `name` (`replace`) or links it to `name`, and syncs the
    /// directory.
    fn write_through_temporary(&self, name: &str, bytes: &[u8], replace: bool) -> io::Result<()> {
        let path = self.path(name);
        let dir = path
            .parent()
            .expect("repository file has a parent directory");
        if !dir.is_dir() {
            fs::create_dir_all(dir).map_err(|e| with_path(e, dir))?;
            // A new directory (such as data/3f/) is durable only once its parent
            // directory is synced.
            if let Some(parent) = dir.parent() {
                File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| with_path(e, parent))?;
            }
        }

        // Temporary files carry a random suffix, so writers never collide, and a
        // leftover from a crash is never mistaken for a finished file.
        let suffix: u64 = rand::rng().random();
        let tmp = dir.join(format!(".tmp-{suffix:016x}"));
        let result = (|| {
            let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            // Large files such as packs skip the page cache, whose copy can cost
            // more CPU time than the rest of the write.
            crate::direct_io::write_direct(&file, bytes)?;
            file.sync_all()?;
            if replace {
                fs::rename(&tmp, &path)?;
            } else {
                fs::hard_link(&tmp, &path)?;
                fs::remove_file(&tmp)?;
            }
            File::open(dir)?.sync_all()
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(with_path(e, &path));
        }
        Ok(())
    }
}

fn with_path(error: io::Error, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        let path = self.path(name);
        fs::read(&path).map_err(|e| with_path(e, &path))
    }

    fn read_at(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.read_at_into(name, offset, len, &mut buf)?;
        Ok(buf)
    }

    fn read_at_into(
        &self,
        name: &str,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> io::Result<()> {
        let file = self.open_cached(name)?;
        buf.clear();
        buf.resize(len, 0);
        file.read_exact_at(buf, offset)
            .map_err(|e| with_path(e, &self.path(name)))
    }

    fn size(&self, name: &str) -> io::Result<u64> {
        let path = self.path(name);
        Ok(fs::metadata(&path).map_err(|e| with_path(e, &path))?.len())
    }

    fn write_atomic(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.write_through_temporary(name, bytes, true)
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let path = self.path(dir);
        let entries = match fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(with_path(e, &path)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| with_path(e, &path))?;
            if let Some(name) = entry.file_name().to_str()
                && !name.starts_with('.')
            {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    fn list_recursive(&self, dir: &str) -> io::Result<Vec<String>> {
        let mut files = Vec::new();
        let mut pending = vec![String::new()];
        while let Some(relative) = pending.pop() {
            let path = self.path(dir).join(&relative);
            let entries = match fs::read_dir(&path) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound && relative.is_empty() => break,
                Err(e) => return Err(with_path(e, &path)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| with_path(e, &path))?;
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if name.starts_with('.') {
                    continue;
                }
                let child = if relative.is_empty() {
                    name
                } else {
                    format!("{relative}/{name}")
                };
                if entry.file_type().map_err(|e| with_path(e, &path))?.is_dir() {
                    pending.push(child);
                } else {
                    files.push(child);
                }
            }
        }
        files.sort();
        Ok(files)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.open_files.lock().expect("file cache lock").pop(name);
        let path = self.path(name);
        fs::remove_file(&path).map_err(|e| with_path(e, &path))
    }

    fn free_space(&self) -> Option<u64> {
        let stats = nix::sys::statvfs::statvfs(&self.root).ok()?;
        Some(stats.blocks_available() as u64 * stats.fragment_size() as u64)
    }

    fn remove_temporary_files(&self) -> io::Result<u64> {
        let mut removed = 0;
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in fs::read_dir(&dir).map_err(|e| with_path(e, &dir))? {
                let entry = entry?;
                let path = entry.path();
                if entry.file_type()?.is_dir() {
                    // Processes waiting for a lock keep writing lock files while
                    // the exclusive lock is held, so locks/ is left alone.
                    if path != self.root.join("locks") {
                        dirs.push(path);
                    }
                } else if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                    fs::remove_file(&path).map_err(|e| with_path(e, &path))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_recursive_skips_dot_names() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path());
        backend.write_atomic("data/ab/ab01", b"pack").unwrap();
        backend.write_atomic("data/cd/cd02", b"pack").unwrap();
        fs::write(dir.path().join("data/ab/.tmp-0123456789abcdef"), b"").unwrap();
        fs::create_dir_all(dir.path().join("data/.hidden")).unwrap();
        fs::write(dir.path().join("data/.hidden/ef03"), b"").unwrap();

        assert_eq!(
            backend.list_recursive("data").unwrap(),
            ["ab/ab01", "cd/cd02"]
        );
        assert_eq!(backend.list_recursive("data/ab").unwrap(), ["ab01"]);
    }

    #[test]
    fn create_new_keeps_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path());
        backend.create_new("data/ab/ab01", b"first").unwrap();

        let error = backend.create_new("data/ab/ab01", b"second").unwrap_err();

        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists, "{error}");
        assert_eq!(backend.read("data/ab/ab01").unwrap(), b"first");
        assert_eq!(
            fs::read_dir(dir.path().join("data/ab")).unwrap().count(),
            1,
            "a temporary file was left behind"
        );
    }

    #[test]
    fn list_recursive_of_missing_dir_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path());
        assert!(backend.list_recursive("data").unwrap().is_empty());
    }
}
