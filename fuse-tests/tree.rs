//! Recording a directory tree entry by entry and comparing two recordings.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The type of a directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Directory,
    File,
    Symlink,
    Fifo,
    Other,
}

/// Metadata and content of one entry, as a mount or a copy must show it.
#[derive(Debug, PartialEq)]
pub struct EntryState {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i128,
    /// Apparent size. 0 for directories, whose size depends on the file
    /// system's history, not on their entries.
    pub size: u64,
    /// Link count, or `None` for a directory, because cairn reports 2 for every
    /// directory while other file systems count its subdirectories.
    pub nlink: Option<u64>,
    pub content: Option<blake3::Hash>,
    pub target: Option<PathBuf>,
    /// Extended attributes read without following symlinks, by name.
    pub xattrs: BTreeMap<OsString, Vec<u8>>,
}

/// A recorded tree, with every entry below a root (the root itself as the
/// empty path) keyed by the path relative to the root.
pub struct TreeRecord {
    pub entries: BTreeMap<PathBuf, EntryState>,
    /// Device and inode number of each entry.
    pub inodes: BTreeMap<PathBuf, (u64, u64)>,
}

impl TreeRecord {
    /// Returns the groups of two or more non-directory entries that share a
    /// device and inode number, each group sorted by path.
    pub fn link_groups(&self) -> BTreeSet<Vec<PathBuf>> {
        let mut by_inode: BTreeMap<(u64, u64), Vec<PathBuf>> = BTreeMap::new();
        for (path, inode) in &self.inodes {
            if self.entries[path].kind != Kind::Directory {
                by_inode.entry(*inode).or_default().push(path.clone());
            }
        }
        by_inode
            .into_values()
            .filter(|paths| paths.len() > 1)
            .collect()
    }
}

/// Records every entry below `root`, reading the content of each regular file.
pub fn record_tree(root: &Path) -> TreeRecord {
    let mut record = TreeRecord {
        entries: BTreeMap::new(),
        inodes: BTreeMap::new(),
    };
    record_entry(root, PathBuf::new(), &mut record);
    record
}

fn record_entry(root: &Path, relative: PathBuf, record: &mut TreeRecord) {
    let path = root.join(&relative);
    let md =
        fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    let file_type = md.file_type();
    let kind = if file_type.is_dir() {
        Kind::Directory
    } else if file_type.is_file() {
        Kind::File
    } else if file_type.is_symlink() {
        Kind::Symlink
    } else if file_type.is_fifo() {
        Kind::Fifo
    } else {
        Kind::Other
    };
    let content = if kind == Kind::File {
        let hash = hash_file(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        Some(hash)
    } else {
        None
    };
    let target = if kind == Kind::Symlink {
        Some(fs::read_link(&path).unwrap_or_else(|e| panic!("readlink {}: {e}", path.display())))
    } else {
        None
    };
    let state = EntryState {
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
        size: if kind == Kind::Directory {
            0
        } else {
            md.size()
        },
        nlink: if kind == Kind::Directory {
            None
        } else {
            Some(md.nlink())
        },
        content,
        target,
        xattrs: read_xattrs(&path),
    };
    record.entries.insert(relative.clone(), state);
    record.inodes.insert(relative.clone(), (md.dev(), md.ino()));

    if kind == Kind::Directory {
        let mut names: Vec<OsString> = fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("list {}: {e}", path.display()))
            .map(|entry| entry.expect("directory entry").file_name())
            .collect();
        names.sort();
        for name in names {
            record_entry(root, relative.join(name), record);
        }
    }
}

/// Hashes a file's content without holding it in memory.
pub fn hash_file(path: &Path) -> io::Result<blake3::Hash> {
    let mut file = File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(hasher.finalize())
}

/// Reads the extended attributes of `path` without following a symlink.
pub fn read_xattrs(path: &Path) -> BTreeMap<OsString, Vec<u8>> {
    let names = xattr::list(path).unwrap_or_else(|e| panic!("llistxattr {}: {e}", path.display()));
    let mut xattrs = BTreeMap::new();
    for name in names {
        let value = xattr::get(path, &name)
            .unwrap_or_else(|e| panic!("lgetxattr {} {name:?}: {e}", path.display()))
            .unwrap_or_else(|| panic!("{} lists {name:?} but has no value", path.display()));
        xattrs.insert(name, value);
    }
    xattrs
}

/// Asserts that the tree at `actual` has the same entries as the one at
/// `expected`, each with the same type, mode, owner, mtime, size, link count,
/// content, symlink target and extended attributes, and that the same entries
/// share an inode. `label` names `actual` in messages.
pub fn assert_same_tree(expected: &Path, actual: &Path, label: &str) {
    let want = record_tree(expected);
    let got = record_tree(actual);

    let want_paths: Vec<&PathBuf> = want.entries.keys().collect();
    let got_paths: Vec<&PathBuf> = got.entries.keys().collect();
    assert_eq!(
        got_paths,
        want_paths,
        "{label} {} has other entries than {}",
        actual.display(),
        expected.display()
    );

    for (path, want_entry) in &want.entries {
        let got_entry = &got.entries[path];
        assert_eq!(got_entry.kind, want_entry.kind, "{label}: type of {path:?}");
        assert_eq!(
            got_entry.mode, want_entry.mode,
            "{label}: mode of {path:?} is {:o}, expected {:o}",
            got_entry.mode, want_entry.mode
        );
        assert_eq!(got_entry.uid, want_entry.uid, "{label}: uid of {path:?}");
        assert_eq!(got_entry.gid, want_entry.gid, "{label}: gid of {path:?}");
        assert_eq!(
            got_entry.mtime_ns, want_entry.mtime_ns,
            "{label}: mtime in ns of {path:?}"
        );
        assert_eq!(got_entry.size, want_entry.size, "{label}: size of {path:?}");
        assert_eq!(
            got_entry.nlink, want_entry.nlink,
            "{label}: link count of {path:?}"
        );
        assert_eq!(
            got_entry.content, want_entry.content,
            "{label}: content hash of {path:?}"
        );
        assert_eq!(
            got_entry.target, want_entry.target,
            "{label}: symlink target of {path:?}"
        );
        assert_eq!(
            got_entry.xattrs, want_entry.xattrs,
            "{label}: extended attributes of {path:?}"
        );
    }

    assert_eq!(
        got.link_groups(),
        want.link_groups(),
        "{label}: groups of entries that share an inode"
    );
}
