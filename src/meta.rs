//! Reading and writing file metadata: owners, times, extended attributes.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::Metadata;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::Mutex;

use crate::tree::{Node, NodeKind, Timestamp, Xattr};

/// Maps numeric ids to names once per id.
#[derive(Debug, Default)]
pub struct NameCache {
    users: Mutex<HashMap<u32, Option<String>>>,
    groups: Mutex<HashMap<u32, Option<String>>>,
}

impl NameCache {
    /// Returns the user name of a uid, if it has one.
    pub fn user(&self, uid: u32) -> Option<String> {
        let mut users = self.users.lock().expect("name cache lock");
        users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .clone()
    }

    /// Returns the group name of a gid, if it has one.
    pub fn group(&self, gid: u32) -> Option<String> {
        let mut groups = self.groups.lock().expect("name cache lock");
        groups
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
                    .ok()
                    .flatten()
                    .map(|g| g.name)
            })
            .clone()
    }
}

/// Returns the node kind of a file type, or `None` for an unknown type.
pub fn node_kind(metadata: &Metadata) -> Option<NodeKind> {
    let t = metadata.file_type();
    Some(if t.is_file() {
        NodeKind::File
    } else if t.is_dir() {
        NodeKind::Dir
    } else if t.is_symlink() {
        NodeKind::Symlink
    } else if t.is_fifo() {
        NodeKind::Fifo
    } else if t.is_socket() {
        NodeKind::Socket
    } else if t.is_char_device() {
        NodeKind::CharDevice
    } else if t.is_block_device() {
        NodeKind::BlockDevice
    } else {
        return None;
    })
}

/// Builds a node from `lstat` metadata, without content, symlink target or xattrs.
pub fn node_from_metadata(name: &[u8], kind: NodeKind, md: &Metadata, names: &NameCache) -> Node {
    let mut node = Node::new(name.to_vec(), kind);
    node.mode = md.mode() & 0o7777;
    node.uid = md.uid();
    node.gid = md.gid();
    node.user = names.user(md.uid());
    node.group = names.group(md.gid());
    node.size = if kind == NodeKind::File { md.size() } else { 0 };
    node.mtime = Timestamp {
        secs: md.mtime(),
        nanos: md.mtime_nsec() as u32,
    };
    node.ctime = Timestamp {
        secs: md.ctime(),
        nanos: md.ctime_nsec() as u32,
    };
    node.dev = md.dev();
    node.inode = md.ino();
    node.nlink = md.nlink();
    if matches!(kind, NodeKind::CharDevice | NodeKind::BlockDevice) {
        node.rdev = md.rdev();
    }
    node
}

/// Reads all extended attributes of a path without following a symlink.
/// File systems without xattr support yield an empty list.
pub fn read_xattrs(path: &Path) -> io::Result<Vec<Xattr>> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names {
        match xattr::get(path, &name) {
            Ok(Some(value)) => out.push(Xattr {
                name: name.as_bytes().to_vec(),
                value,
            }),
            Ok(None) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Sets extended attributes on a path without following a symlink.
pub fn write_xattrs(path: &Path, xattrs: &[Xattr]) -> io::Result<()> {
    for attr in xattrs {
        xattr::set(path, OsStr::from_bytes(&attr.name), &attr.value)?;
    }
    Ok(())
}

/// Sets the modification and access time (both to `mtime`) without following a
/// symlink.
pub fn set_mtime(path: &Path, mtime: Timestamp) -> io::Result<()> {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;

    let ts = TimeSpec::new(mtime.secs, mtime.nanos as i64);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &ts,
        &ts,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

/// Paths up to this many bytes go to system calls as they are; longer ones are
/// reached through a file descriptor of an ancestor directory. The kernel rejects
/// paths of `PATH_MAX` (4096) bytes or more with `ENAMETOOLONG`.
const SHORT_PATH_MAX: usize = 3072;

/// A path that system calls accept even when the original is longer than
/// `PATH_MAX`: a long path is rewritten as `/proc/self/fd/N/rest`, where `N` is an
/// open descriptor of an ancestor directory, as many times as needed.
#[derive(Debug)]
pub struct ShortPath {
    path: std::path::PathBuf,
    _ancestor: Option<(std::os::fd::OwnedFd, Box<ShortPath>)>,
}

impl ShortPath {
    /// Opens ancestors as needed so that [`ShortPath::path`] is short.
    pub fn new(path: &Path) -> io::Result<Self> {
        let bytes = path.as_os_str().as_bytes();
        if bytes.len() < SHORT_PATH_MAX {
            return Ok(Self {
                path: path.to_path_buf(),
                _ancestor: None,
            });
        }
        // Names are at most 255 bytes, so a separator lies within the window.
        let split = bytes[..SHORT_PATH_MAX]
            .iter()
            .rposition(|b| *b == b'/')
            .filter(|i| *i > 0)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENAMETOOLONG))?;
        let parent = Path::new(OsStr::from_bytes(&bytes[..split]));
        let fd = nix::fcntl::open(
            parent,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(io::Error::from)?;
        use std::os::fd::AsRawFd;
        let mut rest = format!("/proc/self/fd/{}/", fd.as_raw_fd()).into_bytes();
        rest.extend_from_slice(&bytes[split + 1..]);
        let inner = ShortPath::new(Path::new(OsStr::from_bytes(&rest)))?;
        Ok(Self {
            path: inner.path.clone(),
            _ancestor: Some((fd, Box::new(inner))),
        })
    }

    /// Returns the path to pass to system calls while `self` lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Returns the name of the user running this process: `$USER`, else the name
/// of the effective user id (services often run without `$USER`), else
/// `unknown`.
pub fn current_user_name() -> String {
    if let Some(user) = std::env::var_os("USER").filter(|user| !user.is_empty()) {
        return user.to_string_lossy().into_owned();
    }
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|user| user.name)
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_path_reaches_deep_file() {
        let root = tempfile::tempdir().unwrap();
        let mut path = root.path().to_path_buf();
        let name = "d".repeat(200);
        // 30 levels of 201 bytes: about 6,000 bytes, beyond PATH_MAX.
        for _ in 0..30 {
            path.push(&name);
            let short = ShortPath::new(&path).unwrap();
            std::fs::create_dir(short.path()).unwrap();
        }
        path.push("file");
        assert!(path.as_os_str().len() > 4096);
        let short = ShortPath::new(&path).unwrap();
        assert!(short.path().as_os_str().len() < 4096);
        std::fs::write(short.path(), b"deep").unwrap();
        let again = ShortPath::new(&path).unwrap();
        assert_eq!(std::fs::read(again.path()).unwrap(), b"deep");
    }

    #[test]
    fn short_path_keeps_short_paths() {
        let short = ShortPath::new(Path::new("/tmp/x")).unwrap();
        assert_eq!(short.path(), Path::new("/tmp/x"));
    }
}
