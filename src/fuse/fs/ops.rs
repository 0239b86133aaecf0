//! The `fuser::Filesystem` callbacks of [`CairnFs`].

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use fuser::{
    CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tracing::debug;

use super::{CairnFs, DirEntries, LIST_BATCH, ListedEntry, OpenFile, SEQUENTIAL_WINDOW};
use crate::fuse::content::FileContent;
use crate::fuse::inode::{BLOCK_SIZE, InodeKind, ttl};
use crate::tree::NodeKind;

impl CairnFs {
    /// Returns the attributes and cache lifetime of a listed entry.
    fn listed_attr(&self, entry: &ListedEntry) -> Result<(FileAttr, Duration), Errno> {
        match &entry.inode {
            Some(inode) => Ok((self.attr(entry.ino, inode), ttl(inode))),
            None => {
                let overlay = self.incoming(entry.ino).ok_or(Errno::ENOENT)?;
                Ok((self.incoming_attr(overlay)?, Duration::from_secs(1)))
            }
        }
    }
}

/// Sends an extended attribute value or name list, or its size for a probe
/// with `size` 0, or ERANGE when it does not fit in `size`.
pub(super) fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
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
        // Without a writable folder, no directory ever changes, so the kernel
        // may open directories itself: answering the first OPENDIR with ENOSYS
        // makes it stop sending OPENDIR and RELEASEDIR, and it then keeps every
        // listing cached as if FOPEN_CACHE_DIR and FOPEN_KEEP_CACHE were set.
        // That saves two round trips per directory of a `find`.
        self.kernel_opens_dirs = self.incoming.is_none()
            && config
                .capabilities()
                .contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        debug!(unsupported = ?(requested - available), "FUSE capabilities the kernel does not offer");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if let Some(overlay) = self.incoming(parent.0) {
            return self.incoming_lookup(overlay, parent.0, name, reply);
        }
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
        if let Some(overlay) = self.incoming(ino) {
            return match self.incoming_attr(overlay) {
                Ok(attr) => reply.entry(&Duration::from_secs(1), &attr, Generation(0)),
                Err(errno) => reply.error(errno),
            };
        }
        match self.inode(ino) {
            Ok(inode) => reply.entry(&ttl(&inode), &self.attr(ino, &inode), Generation(0)),
            Err(errno) => reply.error(errno),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Some(overlay) = self.incoming(ino.0) {
            return self.incoming_getattr(overlay, ino.0, reply);
        }
        match self.inode(ino.0) {
            Ok(inode) => reply.attr(&ttl(&inode), &self.attr(ino.0, &inode)),
            Err(errno) => reply.error(errno),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        if let Some(overlay) = self.incoming(ino.0) {
            return self.incoming_readlink(overlay, ino.0, reply);
        }
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
        if let Some(overlay) = self.incoming(ino.0) {
            return self.incoming_open(overlay, ino.0, flags, reply);
        }
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
        if let Some(overlay) = self.incoming(ino.0) {
            return self.incoming_read(overlay, ino.0, offset, size, reply);
        }
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
        match self.read_range(ino.0, &file.content, offset, size) {
            Ok(bytes) => reply.data(bytes.as_slice()),
            Err(errno) => reply.error(errno),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(overlay) = self.incoming(ino.0) {
            self.incoming_release(overlay, ino.0, fh);
            return reply.ok();
        }
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

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.incoming(ino.0) {
            Some(overlay) => self.incoming_fsync(overlay, ino.0, reply),
            None => reply.ok(),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if let Some(overlay) = self.incoming(ino.0) {
            return self.incoming_opendir(overlay, ino.0, reply);
        }
        if self.kernel_opens_dirs {
            return reply.error(Errno::ENOSYS);
        }
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
        if let Some(overlay) = self.incoming(ino.0) {
            return self.incoming_readdir(overlay, ino.0, offset, reply);
        }
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
                let kind = match &entry.inode {
                    Some(inode) => self.file_type(inode),
                    None => FileType::Directory,
                };
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
        if let Some(overlay) = self.incoming(ino.0) {
            return self.incoming_readdirplus(overlay, ino.0, offset, reply);
        }
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
                let (attr, ttl) = match self.listed_attr(entry) {
                    Ok(found) => found,
                    Err(errno) => return reply.error(errno),
                };
                let name = OsStr::from_bytes(&entry.name);
                if reply.add(
                    INodeNo(entry.ino),
                    entry.offset,
                    name,
                    &ttl,
                    &attr,
                    Generation(0),
                ) {
                    return reply.ok();
                }
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        // `incoming/` reports the space of its staging directory, where
        // written data waits until it is stored.
        if let Some(overlay) = self.incoming(ino.0)
            && let Ok(stat) = nix::sys::statvfs::statvfs(overlay.staging_path())
        {
            return reply.statfs(
                stat.blocks(),
                stat.blocks_free(),
                stat.blocks_available(),
                stat.files(),
                stat.files_free(),
                stat.block_size() as u32,
                255,
                stat.fragment_size() as u32,
            );
        }
        let blocks = self.stored_bytes.div_ceil(u64::from(BLOCK_SIZE));
        let files = self.inodes.read().expect("inode table lock").len();
        reply.statfs(blocks, 0, 0, files, 0, BLOCK_SIZE, 255, BLOCK_SIZE);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if let Some(overlay) = self.incoming(ino.0) {
            return self.incoming_getxattr(overlay, ino.0, name, size, reply);
        }
        match self.xattrs(ino.0) {
            Ok(xattrs) => match xattrs.iter().find(|x| x.name == name.as_bytes()) {
                Some(xattr) => reply_xattr(reply, size, &xattr.value),
                None => reply.error(Errno::NO_XATTR),
            },
            Err(errno) => reply.error(errno),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if let Some(overlay) = self.incoming(ino.0) {
            return self.incoming_listxattr(overlay, ino.0, size, reply);
        }
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
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        if let Some(overlay) = self.incoming(ino.0) {
            return self.incoming_lseek(overlay, ino.0, offset, whence, reply);
        }
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

    // Changes below `incoming/` go to its callbacks. Every other change is
    // rejected: the rest of the mount is read-only.

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.incoming(ino.0) {
            Some(overlay) => {
                self.incoming_setattr(overlay, ino.0, mode, uid, gid, size, mtime, reply)
            }
            None => reply.error(Errno::EROFS),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        match self.incoming(parent.0) {
            Some(overlay) => {
                self.incoming_mknod(overlay, req, parent.0, name, mode, umask, rdev, reply)
            }
            None => reply.error(Errno::EROFS),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match self.incoming(parent.0) {
            Some(overlay) => self.incoming_mkdir(overlay, req, parent.0, name, mode, umask, reply),
            None => reply.error(Errno::EROFS),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.incoming(parent.0) {
            Some(overlay) => self.incoming_unlink(overlay, parent.0, name, reply),
            None => reply.error(Errno::EROFS),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.incoming(parent.0) {
            Some(overlay) => self.incoming_rmdir(overlay, parent.0, name, reply),
            None => reply.error(Errno::EROFS),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        match self.incoming(parent.0) {
            Some(overlay) => {
                self.incoming_symlink(overlay, req, parent.0, link_name, target, reply)
            }
            None => reply.error(Errno::EROFS),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match (self.incoming(parent.0), self.incoming(newparent.0)) {
            (Some(overlay), Some(_)) => {
                self.incoming_rename(overlay, parent.0, name, newparent.0, newname, flags, reply)
            }
            // Between `incoming/` and a snapshot, as between two file systems.
            (Some(_), None) | (None, Some(_)) => reply.error(Errno::EXDEV),
            (None, None) => reply.error(Errno::EROFS),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match (self.incoming(ino.0), self.incoming(newparent.0)) {
            (Some(overlay), Some(_)) => {
                self.incoming_link(overlay, ino.0, newparent.0, newname, reply)
            }
            (Some(_), None) | (None, Some(_)) => reply.error(Errno::EXDEV),
            (None, None) => reply.error(Errno::EROFS),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.incoming(ino.0) {
            Some(overlay) => self.incoming_write(overlay, ino.0, fh, offset, data, reply),
            None => reply.error(Errno::EROFS),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        match self.incoming(ino.0) {
            Some(overlay) => self.incoming_setxattr(overlay, ino.0, name, value, flags, reply),
            None => reply.error(Errno::EROFS),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.incoming(ino.0) {
            Some(overlay) => self.incoming_removexattr(overlay, ino.0, name, reply),
            None => reply.error(Errno::EROFS),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.incoming(parent.0) {
            Some(overlay) => {
                self.incoming_create(overlay, req, parent.0, name, mode, umask, flags, reply)
            }
            None => reply.error(Errno::EROFS),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.incoming(ino.0) {
            Some(overlay) => self.incoming_fallocate(overlay, ino.0, offset, length, mode, reply),
            None => reply.error(Errno::EROFS),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // ENOSYS makes the kernel copy into `incoming/` with reads and writes.
        match self.incoming(ino_out.0) {
            Some(_) => reply.error(Errno::ENOSYS),
            None => reply.error(Errno::EROFS),
        }
    }
}
