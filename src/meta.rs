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
