//! The `fuser::Filesystem` callbacks of [`CairnFs`].

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use fuser::{
    CopyFileRangeFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tracing::debug;

use super::{CairnFs, DirEntries, LIST_BATCH, OpenFile, SEQUENTIAL_WINDOW};
use crate::fuse::content::FileContent;
use crate::fuse::inode::{BLOCK_SIZE, InodeKind, ttl};
use crate::tree::NodeKind;

/// Sends an extended attribute value or name list, or its size for a probe
/// with `size` 0, or ERANGE when it does not fit in `size`.
fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    let Ok(len) = u32::try_from(value.len()) else {
        reply.error(Errno::E2BIG);
        return;
    };
    if size == 0 {
        reply.size(len);
    } else if len > size {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

impl Filesystem for CairnFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Requests more than the kernel allows, because the error carries its maximum.
        if let Err(max) = config.set_max_readahead(u32::MAX) {
            let _ = config.set_max_readahead(max);
        }
        let requested = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_POSIX_ACL;
        let available = requested & config.capabilities();
        if config.add_capabilities(available).is_err() {
            debug!("kernel rejected FUSE capabilities {available:?}");
        }
        debug!(unsupported = ?(requested - available), "FUSE capabilities the kernel does not offer");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.as_bytes();
        let ino = match self.dir_entries(parent.0) {
            Ok(DirEntries::Virtual(dir)) => dir.find(name),
            Ok(DirEntries::Tree(children)) => children
                .tree
                .nodes
                .binary_search_by(|node| node.name.as_slice().cmp(name))
                .ok()
                .map(|i| {
                    let slot = children.first + i as u64;
                    self.inodes.read().expect("inode table lock").resolve(slot)
                }),
            Err(errno) => return reply.error(errno),
        };
        let Some(ino) = ino else {
            return reply.error(Errno::ENOENT);
        };
        match self.inode(ino) {
            Ok(inode) => reply.entry(&ttl(&inode), &self.attr(ino, &inode), Generation(0)),
            Err(errno) => reply.error(errno),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.inode(ino.0) {
            Ok(inode) => reply.attr(&ttl(&inode), &self.attr(ino.0, &inode)),
            Err(errno) => reply.error(errno),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let inode = match self.inode(ino.0) {
            Ok(inode) => inode,
            Err(errno) => return reply.error(errno),
        };
        match &inode.kind {
            InodeKind::Latest(target) => reply.data(target),
            InodeKind::Node { .. } => match inode.node() {
                Some(node) if node.kind == NodeKind::Symlink => reply.data(&node.target),
                _ => reply.error(Errno::EINVAL),
            },
            _ => reply.error(Errno::EINVAL),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(Errno::EROFS);
        }
        let inode = match self.inode(ino.0) {
            Ok(inode) => inode,
            Err(errno) => return reply.error(errno),
        };
        let InodeKind::Node { tree, index, .. } = &inode.kind else {
            return reply.error(Errno::EISDIR);
        };
        let node = &tree.nodes[*index as usize];
        if node.kind != NodeKind::File {
            return reply.error(if node.kind == NodeKind::Dir {
                Errno::EISDIR
            } else {
                Errno::EINVAL
            });
        }
        let content = match FileContent::new(tree.clone(), *index as usize) {
            Some(content) if content.len() == node.size => content,
            Some(content) => {
                let detail = format!(
                    "its extents add up to {} bytes, its size is {}",
                    content.len(),
                    node.size
                );
                return reply.error(self.io_error(ino.0, "failed to open file", &detail));
            }
            None => {
                return reply.error(self.io_error(
                    ino.0,
                    "failed to open file",
                    &"its extent lengths overflow",
                ));
            }
        };
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let file = OpenFile {
            content,
            next_offset: AtomicU64::new(u64::MAX),
        };
        self.files
            .write()
            .expect("open file lock")
            .insert(fh, Arc::new(file));
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let file = match self.file(fh) {
            Ok(file) => file,
            Err(errno) => return reply.error(errno),
        };
        let end = offset
            .saturating_add(u64::from(size))
            .min(file.content.len());
        let previous_end = file.next_offset.swap(end, Ordering::Relaxed);
        let sequential =
            previous_end != u64::MAX && offset.abs_diff(previous_end) <= SEQUENTIAL_WINDOW;
        if sequential && end > offset {
            self.prefetch_after(&file, end - 1);
        }
        match self.read_range(ino.0, &file, offset, size) {
            Ok(bytes) => reply.data(bytes.as_slice()),
            Err(errno) => reply.error(errno),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.files.write().expect("open file lock").remove(&fh.0);
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.dir_entries(ino.0) {
            // Snapshot directories never change, so the kernel may keep their listing.
            Ok(DirEntries::Tree(_)) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Ok(DirEntries::Virtual(_)) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(errno) => reply.error(errno),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut position = usize::try_from(offset).unwrap_or(usize::MAX);
        loop {
            let list = match self.list(ino.0, position, LIST_BATCH) {
                Ok(list) => list,
                Err(errno) => return reply.error(errno),
            };
            if list.is_empty() {
                break;
            }
            position += list.len();
            for entry in &list {
                let kind = self.file_type(&entry.inode);
                if reply.add(
                    INodeNo(entry.ino),
                    entry.offset,
                    kind,
                    OsStr::from_bytes(&entry.name),
                ) {
                    return reply.ok();
                }
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let mut position = usize::try_from(offset).unwrap_or(usize::MAX);
        loop {
            let list = match self.list(ino.0, position, LIST_BATCH) {
                Ok(list) => list,
                Err(errno) => return reply.error(errno),
            };
            if list.is_empty() {
                break;
            }
            position += list.len();
            for entry in &list {
                let attr = self.attr(entry.ino, &entry.inode);
                let name = OsStr::from_bytes(&entry.name);
                if reply.add(
                    INodeNo(entry.ino),
                    entry.offset,
                    name,
                    &ttl(&entry.inode),
                    &attr,
                    Generation(0),
                ) {
                    return reply.ok();
                }
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.stored_bytes.div_ceil(u64::from(BLOCK_SIZE));
        let files = self.inodes.read().expect("inode table lock").len() as u64;
        reply.statfs(blocks, 0, 0, files, 0, BLOCK_SIZE, 255, BLOCK_SIZE);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.xattrs(ino.0) {
            Ok(xattrs) => match xattrs.iter().find(|x| x.name == name.as_bytes()) {
                Some(xattr) => reply_xattr(reply, size, &xattr.value),
                None => reply.error(Errno::NO_XATTR),
            },
            Err(errno) => reply.error(errno),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.xattrs(ino.0) {
            Ok(xattrs) => {
                let mut names = Vec::new();
                for xattr in &xattrs {
                    names.extend_from_slice(&xattr.name);
                    names.push(0);
                }
                reply_xattr(reply, size, &names);
            }
            Err(errno) => reply.error(errno),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let file = match self.file(fh) {
            Ok(file) => file,
            Err(errno) => return reply.error(errno),
        };
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(Errno::ENXIO);
        };
        let found = match whence {
            libc::SEEK_DATA => file.content.seek_data(offset),
            libc::SEEK_HOLE => file.content.seek_hole(offset),
            // The kernel handles the other kinds of seek itself.
            _ => return reply.error(Errno::EINVAL),
        };
        match found.and_then(|position| i64::try_from(position).ok()) {
            Some(position) => reply.offset(position),
            None => reply.error(Errno::ENXIO),
        }
    }

    // Every change is rejected: the mount is read-only.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }
}
