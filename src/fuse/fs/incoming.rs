//! The callbacks of [`CairnFs`] for `incoming/`, the writable folder of a
//! write-through mount. The callbacks in [`super::ops`] hand requests for
//! inodes of `incoming/` to these.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FopenFlags, Generation, INodeNo, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyLseek, ReplyOpen, ReplyWrite, ReplyXattr, Request, TimeOrNow,
};
use tracing::error;

use super::CairnFs;
use super::ops::reply_xattr;
use crate::fuse::content::FileContent;
use crate::fuse::inode::ROOT_INO;
use crate::fuse::overlay::{
    FileIo, Handle, INCOMING_INO, LoadError, NodeRef, Overlay, Table, make_owned,
};
use crate::tree::{Extent, Node, NodeKind, Timestamp, Tree, Xattr};

/// Cache lifetime of entries and attributes below `incoming/`. Every change
/// reaches this file system through the kernel, which updates its own cache,
/// so the lifetime only bounds how long a listing may lag.
const TTL: Duration = Duration::from_secs(1);

/// Number of entries fetched at a time while filling a readdir reply.
const LIST_BATCH: usize = 512;

/// Maximum length of a file name in bytes, as on Linux file systems.
const MAX_NAME_LEN: usize = 255;

/// One entry of a listing of a directory of `incoming/`.
struct ListedChild {
    /// The readdir offset that continues after this entry.
    offset: u64,
    name: Vec<u8>,
    ino: u64,
    attr: FileAttr,
}

/// Converts a time from the kernel, also one before 1970.
fn timestamp_of(time: SystemTime) -> Timestamp {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => Timestamp {
            secs: after.as_secs() as i64,
            nanos: after.subsec_nanos(),
        },
        Err(before) => {
            let before = before.duration();
            let (secs, nanos) = if before.subsec_nanos() == 0 {
                (-(before.as_secs() as i64), 0)
            } else {
                (
                    -(before.as_secs() as i64) - 1,
                    1_000_000_000 - before.subsec_nanos(),
                )
            };
            Timestamp { secs, nanos }
        }
    }
}

fn time_of(time: TimeOrNow) -> Timestamp {
    match time {
        TimeOrNow::SpecificTime(time) => timestamp_of(time),
        TimeOrNow::Now => Timestamp::now(),
    }
}

/// Decodes the kernel's 32-bit `new_encode_dev` device number into a glibc
/// `dev_t`, as backups record it.
fn decode_rdev(rdev: u32) -> u64 {
    let major = (rdev & 0xfff00) >> 8;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    libc::makedev(major, minor)
}

fn check_name(name: &[u8]) -> Result<(), Errno> {
    if name.len() > MAX_NAME_LEN {
        return Err(Errno::ENAMETOOLONG);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// Returns the extents of the first `size` bytes of a file, or `None` when
/// `size` falls inside a data extent, which then has to be chunked again.
fn cut_extents(extents: &[Extent], size: u64) -> Option<Vec<Extent>> {
    let mut prefix = Vec::new();
    let mut position = 0u64;
    for extent in extents {
        if position >= size {
            break;
        }
        let len = extent.len();
        if position + len <= size {
            prefix.push(*extent);
            position += len;
            continue;
        }
        match extent {
            Extent::Hole { .. } => {
                prefix.push(Extent::Hole {
                    len: size - position,
                });
                position = size;
            }
            Extent::Data { .. } => return None,
        }
    }
    Some(prefix)
}

/// Appends a hole, merged with a hole that ends the file.
fn push_hole(extents: &mut Vec<Extent>, len: u64) {
    if let Some(Extent::Hole { len: previous }) = extents.last_mut() {
        *previous += len;
    } else if len > 0 {
        extents.push(Extent::Hole { len });
    }
}

/// Sets a directory's modification and change time, after an entry was
/// added to or removed from it.
fn touch_dir(table: &mut Table, dir: u64, session_dev: u64) {
    if let Ok(inode) = table.get_mut(dir) {
        let node = make_owned(inode, dir, session_dev);
        node.mtime = Timestamp::now();
        node.ctime = node.mtime;
    }
}

/// Records a change of an inode's metadata.
fn touch_ctime(table: &mut Table, ino: u64, session_dev: u64) {
    if let Ok(inode) = table.get_mut(ino) {
        make_owned(inode, ino, session_dev).ctime = Timestamp::now();
    }
}

impl CairnFs {
    /// Returns `incoming/`'s state if `ino` is one of its inodes.
    pub(super) fn incoming(&self, ino: u64) -> Option<&Overlay> {
        crate::fuse::overlay::is_incoming(ino)
            .then_some(self.incoming.as_deref())
            .flatten()
    }

    fn load_incoming_dir(&self, overlay: &Overlay, ino: u64) -> Result<(), Errno> {
        overlay.load_dir(ino).map_err(|e| match e {
            LoadError::Errno(errno) => errno,
            LoadError::Repo(e) => self.io_error(ino, "failed to load directory", &e),
        })
    }

    /// Returns the write state of a regular file, created on first use.
    fn file_io(overlay: &Overlay, ino: u64) -> Result<Arc<Mutex<FileIo>>, Errno> {
        let mut table = overlay.lock();
        let inode = table.get_mut(ino)?;
        match inode.kind() {
            NodeKind::File => Ok(inode.io.get_or_insert_with(Default::default).clone()),
            NodeKind::Dir => Err(Errno::EISDIR),
            _ => Err(Errno::EINVAL),
        }
    }

    /// Makes sure the file's bytes are in a staging file, copying its stored
    /// content there first, and returns the staging file.
    fn staging_file(
        &self,
        overlay: &Overlay,
        ino: u64,
        io: &mut FileIo,
    ) -> Result<Arc<std::fs::File>, Errno> {
        if let Some(file) = &io.staging {
            return Ok(file.clone());
        }
        let (extents, size) = {
            let table = overlay.lock();
            let node = table.get(ino)?.node.get();
            (node.content.clone(), node.size)
        };
        let file = crate::fuse::overlay::materialize(&self.repo, &overlay.staging, &extents, size)
            .map_err(|e| self.io_error(ino, "failed to copy file content to a staging file", &e))?;
        let file = Arc::new(file);
        io.staging = Some(file.clone());
        io.stored = false;
        let mut table = overlay.lock();
        let inode = table.get_mut(ino)?;
        inode.staged = true;
        inode.content = None;
        Ok(file)
    }

    /// Records that a file's bytes in its staging file (or, when it has none,
    /// its extents) changed and its length is now `size`.
    fn content_written(overlay: &Overlay, ino: u64, size: u64) -> Result<(), Errno> {
        let mut table = overlay.lock();
        let inode = table.get_mut(ino)?;
        let node = make_owned(inode, ino, overlay.session_dev);
        node.size = size;
        node.mtime = Timestamp::now();
        node.ctime = node.mtime;
        inode.content_changed = true;
        inode.content = None;
        Ok(())
    }

    /// Sets a file's length. The caller holds the file's [`FileIo`] lock.
    fn truncate_locked(
        &self,
        overlay: &Overlay,
        ino: u64,
        io: &mut FileIo,
        size: u64,
    ) -> Result<(), Errno> {
        if let Some(file) = &io.staging {
            file.set_len(size).map_err(Errno::from)?;
            io.stored = false;
            return Self::content_written(overlay, ino, size);
        }
        let (extents, current) = {
            let table = overlay.lock();
            let node = table.get(ino)?.node.get();
            (node.content.clone(), node.size)
        };
        if size == current {
            return Ok(());
        }
        let cut = if size > current {
            let mut extended = extents;
            push_hole(&mut extended, size - current);
            Some(extended)
        } else {
            cut_extents(&extents, size)
        };
        let Some(content) = cut else {
            // The new end falls inside a chunk: the rest of that chunk is
            // chunked again through a staging file.
            let file = self.staging_file(overlay, ino, io)?;
            file.set_len(size).map_err(Errno::from)?;
            io.stored = false;
            Self::content_written(overlay, ino, size)?;
            if io.writers == 0 {
                overlay
                    .store_staged(ino, io)
                    .map_err(|e| self.io_error(ino, "failed to store truncated file", &e))?;
            }
            return Ok(());
        };
        Self::content_written(overlay, ino, size)?;
        let mut table = overlay.lock();
        let inode = table.get_mut(ino)?;
        make_owned(inode, ino, overlay.session_dev).content = content;
        Ok(())
    }

    /// Returns the extents and offsets of a file that is not staged.
    fn stored_content(&self, table: &mut Table, ino: u64) -> Result<Arc<FileContent>, Errno> {
        let inode = table.get_mut(ino)?;
        if let Some(content) = &inode.content {
            return Ok(content.clone());
        }
        let content = match &inode.node {
            NodeRef::Base { tree, index } => FileContent::new(tree.clone(), *index as usize),
            NodeRef::Owned(node) => FileContent::new(
                Arc::new(Tree {
                    nodes: vec![(**node).clone()],
                }),
                0,
            ),
        };
        let size = inode.node.get().size;
        match content {
            Some(content) if content.len() == size => {
                let content = Arc::new(content);
                inode.content = Some(content.clone());
                Ok(content)
            }
            Some(content) => {
                let detail = format!(
                    "its extents add up to {} bytes, its size is {size}",
                    content.len()
                );
                Err(self.io_error(ino, "failed to open file", &detail))
            }
            None => Err(self.io_error(ino, "failed to open file", &"its extent lengths overflow")),
        }
    }

    /// Adds a new inode named `name` to directory `parent`.
    fn create_node(
        &self,
        overlay: &Overlay,
        req: &Request,
        parent: u64,
        name: &[u8],
        mut node: Node,
    ) -> Result<(u64, FileAttr), Errno> {
        check_name(name)?;
        self.load_incoming_dir(overlay, parent)?;
        let mut table = overlay.lock();
        let dir = table.get(parent)?;
        let state = dir.dir.as_deref().ok_or(Errno::ENOTDIR)?;
        if state.removed {
            return Err(Errno::ENOENT);
        }
        if table.child(parent, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        let dir_node = dir.node.get();
        // NOTE: a default POSIX ACL of the directory is not inherited; the
        // new entry gets `mode & !umask` only.
        let setgid = dir_node.mode & libc::S_ISGID != 0;
        node.name = name.to_vec();
        node.uid = req.uid();
        node.gid = if setgid { dir_node.gid } else { req.gid() };
        if setgid && node.kind == NodeKind::Dir {
            node.mode |= libc::S_ISGID;
        }
        node.user = overlay.names.user(node.uid);
        node.group = overlay.names.group(node.gid);
        node.mtime = Timestamp::now();
        node.ctime = node.mtime;
        node.dev = overlay.session_dev;
        let ino = table.create(parent, node);
        table.insert_entry(parent, name, ino)?;
        touch_dir(&mut table, parent, overlay.session_dev);
        let attr = overlay.attr(&table, ino)?;
        Ok((ino, attr))
    }

    fn open_handle(
        &self,
        overlay: &Overlay,
        ino: u64,
        flags: i32,
        created: bool,
    ) -> Result<u64, Errno> {
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        {
            let table = overlay.lock();
            match table.get(ino)?.kind() {
                NodeKind::File => {}
                NodeKind::Dir => return Err(Errno::EISDIR),
                _ => return Err(Errno::EINVAL),
            }
        }
        if write {
            let io = Self::file_io(overlay, ino)?;
            let mut io = io.lock().expect("file io lock");
            if flags & libc::O_TRUNC != 0 && !created {
                self.truncate_locked(overlay, ino, &mut io, 0)?;
            }
            io.writers += 1;
        }
        let fh = overlay.next_handle.fetch_add(1, Ordering::Relaxed);
        overlay
            .handles
            .lock()
            .expect("handle lock")
            .insert(fh, Handle { ino, write });
        Ok(fh)
    }

    fn handle(overlay: &Overlay, fh: FileHandle) -> Result<Handle, Errno> {
        overlay
            .handles
            .lock()
            .expect("handle lock")
            .get(&fh.0)
            .copied()
            .ok_or(Errno::EBADF)
    }

    pub(super) fn incoming_lookup(
        &self,
        overlay: &Overlay,
        parent: u64,
        name: &OsStr,
        reply: ReplyEntry,
    ) {
        if let Err(errno) = self.load_incoming_dir(overlay, parent) {
            return reply.error(errno);
        }
        let table = overlay.lock();
        let result = table
            .child(parent, name.as_bytes())
            .and_then(|child| child.ok_or(Errno::ENOENT))
            .and_then(|child| overlay.attr(&table, child));
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(errno) => reply.error(errno),
        }
    }

    pub(super) fn incoming_getattr(&self, overlay: &Overlay, ino: u64, reply: ReplyAttr) {
        let table = overlay.lock();
        match overlay.attr(&table, ino) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(errno) => reply.error(errno),
        }
    }

    /// Returns the attributes of `incoming/` for the root folder's listing.
    pub(super) fn incoming_attr(&self, overlay: &Overlay) -> Result<FileAttr, Errno> {
        overlay.attr(&overlay.lock(), INCOMING_INO)
    }

    pub(super) fn incoming_readlink(&self, overlay: &Overlay, ino: u64, reply: ReplyData) {
        let table = overlay.lock();
        match table.get(ino).map(|inode| inode.node.get()) {
            Ok(node) if node.kind == NodeKind::Symlink => reply.data(&node.target),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(errno) => reply.error(errno),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn incoming_setattr(
        &self,
        overlay: &Overlay,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        mtime: Option<TimeOrNow>,
        reply: ReplyAttr,
    ) {
        if let Some(size) = size {
            let result = Self::file_io(overlay, ino).and_then(|io| {
                let mut io = io.lock().expect("file io lock");
                self.truncate_locked(overlay, ino, &mut io, size)
            });
            if let Err(errno) = result {
                return reply.error(errno);
            }
        }
        let mut table = overlay.lock();
        let Ok(inode) = table.get_mut(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let current = inode.node.get();
        let mode = mode.map(|m| m & 0o7777).filter(|m| *m != current.mode);
        let uid = uid.filter(|u| *u != current.uid);
        let gid = gid.filter(|g| *g != current.gid);
        let mtime = mtime.map(time_of).filter(|t| *t != current.mtime);
        // Changes to the access time alone are not recorded: trees store none.
        if mode.is_some() || uid.is_some() || gid.is_some() || mtime.is_some() {
            let node = make_owned(inode, ino, overlay.session_dev);
            if let Some(mode) = mode {
                node.mode = mode;
            }
            if let Some(uid) = uid {
                node.uid = uid;
                node.user = overlay.names.user(uid);
            }
            if let Some(gid) = gid {
                node.gid = gid;
                node.group = overlay.names.group(gid);
            }
            if let Some(mtime) = mtime {
                node.mtime = mtime;
            }
            node.ctime = Timestamp::now();
        }
        match overlay.attr(&table, ino) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(errno) => reply.error(errno),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn incoming_mknod(
        &self,
        overlay: &Overlay,
        req: &Request,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => NodeKind::File,
            libc::S_IFIFO => NodeKind::Fifo,
            libc::S_IFSOCK => NodeKind::Socket,
            libc::S_IFCHR => NodeKind::CharDevice,
            libc::S_IFBLK => NodeKind::BlockDevice,
            _ => return reply.error(Errno::EINVAL),
        };
        let mut node = Node::new(Vec::new(), kind);
        node.mode = mode & !umask & 0o7777;
        if matches!(kind, NodeKind::CharDevice | NodeKind::BlockDevice) {
            node.rdev = decode_rdev(rdev);
        }
        match self.create_node(overlay, req, parent, name.as_bytes(), node) {
            Ok((_, attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(errno) => reply.error(errno),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn incoming_mkdir(
        &self,
        overlay: &Overlay,
        req: &Request,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut node = Node::new(Vec::new(), NodeKind::Dir);
        node.mode = mode & !umask & 0o7777;
        match self.create_node(overlay, req, parent, name.as_bytes(), node) {
            Ok((_, attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(errno) => reply.error(errno),
        }
    }

    pub(super) fn incoming_symlink(
        &self,
        overlay: &Overlay,
        req: &Request,
        parent: u64,
        name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let mut node = Node::new(Vec::new(), NodeKind::Symlink);
        node.mode = 0o777;
        node.target = target.as_os_str().as_bytes().to_vec();
        match self.create_node(overlay, req, parent, name.as_bytes(), node) {
            Ok((_, attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(errno) => reply.error(errno),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn incoming_create(
        &self,
        overlay: &Overlay,
        req: &Request,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut node = Node::new(Vec::new(), NodeKind::File);
        node.mode = mode & !umask & 0o7777;
        let result = self
            .create_node(overlay, req, parent, name.as_bytes(), node)
            .and_then(|(ino, attr)| Ok((self.open_handle(overlay, ino, flags, true)?, attr)));
        match result {
            Ok((fh, attr)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(errno) => reply.error(errno),
        }
    }

    pub(super) fn incoming_link(
        &self,
        overlay: &Overlay,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let result = (|| {
            let name = newname.as_bytes();
            check_name(name)?;
            self.load_incoming_dir(overlay, newparent)?;
            let mut table = overlay.lock();
            if table.get(ino)?.kind() == NodeKind::Dir {
                return Err(Errno::EPERM);
            }
            if table.dir(newparent)?.removed {
                return Err(Errno::ENOENT);
            }
            if table.child(newparent, name)?.is_some() {
                return Err(Errno::EEXIST);
            }
            table.insert_entry(newparent, name, ino)?;
            table.get_mut(ino)?.nlink += 1;
            touch_ctime(&mut table, ino, overlay.session_dev);
            touch_dir(&mut table, newparent, overlay.session_dev);
            overlay.attr(&table, ino)
        })();
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(errno) => reply.error(errno),
        }
    }

    pub(super) fn incoming_unlink(
        &self,
        overlay: &Overlay,
        parent: u64,
        name: &OsStr,
        reply: ReplyEmpty,
    ) {
        let result = (|| {
            self.load_incoming_dir(overlay, parent)?;
            let mut table = overlay.lock();
            let child = table.child(parent, name.as_bytes())?.ok_or(Errno::ENOENT)?;
            if table.get(child)?.kind() == NodeKind::Dir {
                return Err(Errno::EISDIR);
            }
            table.remove_entry(parent, name.as_bytes())?;
            let inode = table.get_mut(child)?;
            inode.nlink = inode.nlink.saturating_sub(1);
            touch_ctime(&mut table, child, overlay.session_dev);
            touch_dir(&mut table, parent, overlay.session_dev);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    /// Loads a directory entry's own entries if it is a directory, so that
    /// rmdir and rename can check that it is empty.
    fn load_if_dir(&self, overlay: &Overlay, parent: u64, name: &[u8]) -> Result<(), Errno> {
        let child = {
            let table = overlay.lock();
            table
                .child(parent, name)?
                .filter(|child| table.get(*child).is_ok_and(|i| i.kind() == NodeKind::Dir))
        };
        match child {
            Some(child) => self.load_incoming_dir(overlay, child),
            None => Ok(()),
        }
    }

    pub(super) fn incoming_rmdir(
        &self,
        overlay: &Overlay,
        parent: u64,
        name: &OsStr,
        reply: ReplyEmpty,
    ) {
        let name = name.as_bytes();
        let result = (|| {
            self.load_incoming_dir(overlay, parent)?;
            self.load_if_dir(overlay, parent, name)?;
            let mut table = overlay.lock();
            let child = table.child(parent, name)?.ok_or(Errno::ENOENT)?;
            if table.get(child)?.kind() != NodeKind::Dir {
                return Err(Errno::ENOTDIR);
            }
            if table.entry_count(child)? > 0 {
                return Err(Errno::ENOTEMPTY);
            }
            table.remove_entry(parent, name)?;
            let inode = table.get_mut(child)?;
            inode.nlink = 0;
            if let Some(state) = inode.dir.as_deref_mut() {
                state.removed = true;
            }
            touch_dir(&mut table, parent, overlay.session_dev);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn incoming_rename(
        &self,
        overlay: &Overlay,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, newname) = (name.as_bytes(), newname.as_bytes());
        let result = (|| {
            if flags.contains(RenameFlags::RENAME_WHITEOUT)
                || flags.contains(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_NOREPLACE)
            {
                return Err(Errno::EINVAL);
            }
            check_name(newname)?;
            self.load_incoming_dir(overlay, parent)?;
            self.load_incoming_dir(overlay, newparent)?;
            self.load_if_dir(overlay, newparent, newname)?;
            let mut table = overlay.lock();
            if table.dir(newparent)?.removed {
                return Err(Errno::ENOENT);
            }
            let source = table.child(parent, name)?.ok_or(Errno::ENOENT)?;
            let target = table.child(newparent, newname)?;
            let source_is_dir = table.get(source)?.kind() == NodeKind::Dir;
            if source_is_dir && is_within(&table, newparent, source) {
                return Err(Errno::EINVAL);
            }
            if flags.contains(RenameFlags::RENAME_EXCHANGE) {
                let target = target.ok_or(Errno::ENOENT)?;
                if table.get(target)?.kind() == NodeKind::Dir && is_within(&table, parent, target) {
                    return Err(Errno::EINVAL);
                }
                table.insert_entry(parent, name, target)?;
                table.insert_entry(newparent, newname, source)?;
                table.get_mut(source)?.parent = newparent;
                table.get_mut(target)?.parent = parent;
                touch_dir(&mut table, parent, overlay.session_dev);
                touch_dir(&mut table, newparent, overlay.session_dev);
                return Ok(());
            }
            if let Some(target) = target {
                if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                    return Err(Errno::EEXIST);
                }
                if target == source {
                    return Ok(());
                }
                let target_is_dir = table.get(target)?.kind() == NodeKind::Dir;
                match (source_is_dir, target_is_dir) {
                    (true, false) => return Err(Errno::ENOTDIR),
                    (false, true) => return Err(Errno::EISDIR),
                    (true, true) if table.entry_count(target)? > 0 => {
                        return Err(Errno::ENOTEMPTY);
                    }
                    _ => {}
                }
                table.remove_entry(newparent, newname)?;
                let replaced = table.get_mut(target)?;
                if let Some(state) = replaced.dir.as_deref_mut() {
                    state.removed = true;
                    replaced.nlink = 0;
                } else {
                    replaced.nlink = replaced.nlink.saturating_sub(1);
                }
                touch_ctime(&mut table, target, overlay.session_dev);
            }
            table.remove_entry(parent, name)?;
            table.insert_entry(newparent, newname, source)?;
            table.get_mut(source)?.parent = newparent;
            touch_dir(&mut table, parent, overlay.session_dev);
            if newparent != parent {
                touch_dir(&mut table, newparent, overlay.session_dev);
            }
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    pub(super) fn incoming_open(
        &self,
        overlay: &Overlay,
        ino: u64,
        flags: OpenFlags,
        reply: ReplyOpen,
    ) {
        match self.open_handle(overlay, ino, flags.0, false) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(errno) => reply.error(errno),
        }
    }

    pub(super) fn incoming_read(
        &self,
        overlay: &Overlay,
        ino: u64,
        offset: u64,
        size: u32,
        reply: ReplyData,
    ) {
        let result = (|| {
            let io = overlay.lock().get(ino)?.io.clone();
            let io = io.as_ref().map(|io| io.lock().expect("file io lock"));
            if let Some(file) = io.as_ref().and_then(|io| io.staging.clone()) {
                let bytes = super::super::overlay::read_staged(&file, offset, size)
                    .map_err(|e| self.io_error(ino, "failed to read staging file", &e))?;
                return Ok(bytes);
            }
            let content = self.stored_content(&mut overlay.lock(), ino)?;
            drop(io);
            let bytes = self.read_range(ino, &content, offset, size)?;
            Ok(bytes.as_slice().to_vec())
        })();
        match result {
            Ok(bytes) => reply.data(&bytes),
            Err(errno) => reply.error(errno),
        }
    }

    pub(super) fn incoming_write(
        &self,
        overlay: &Overlay,
        ino: u64,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        reply: ReplyWrite,
    ) {
        let result = (|| {
            if !Self::handle(overlay, fh)?.write {
                return Err(Errno::EBADF);
            }
            let end = offset.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?;
            let io = Self::file_io(overlay, ino)?;
            let mut io = io.lock().expect("file io lock");
            let file = self.staging_file(overlay, ino, &mut io)?;
            file.write_all_at(data, offset).map_err(Errno::from)?;
            io.stored = false;
            let size = overlay.lock().get(ino)?.node.get().size.max(end);
            Self::content_written(overlay, ino, size)?;
            Ok(data.len() as u32)
        })();
        match result {
            Ok(written) => reply.written(written),
            Err(errno) => reply.error(errno),
        }
    }

    pub(super) fn incoming_release(&self, overlay: &Overlay, ino: u64, fh: FileHandle) {
        let handle = overlay.handles.lock().expect("handle lock").remove(&fh.0);
        let Some(handle) = handle.filter(|handle| handle.write) else {
            return;
        };
        let Ok(io) = Self::file_io(overlay, handle.ino) else {
            return;
        };
        let mut io = io.lock().expect("file io lock");
        io.writers = io.writers.saturating_sub(1);
        if io.writers == 0
            && let Err(e) = overlay.store_staged(handle.ino, &mut io)
        {
            // The staging file stays; the commit at unmount tries again.
            error!(
                inode = ino,
                path = %overlay.path_of(ino),
                "failed to store file content: {e}"
            );
        }
    }

    pub(super) fn incoming_fsync(&self, overlay: &Overlay, ino: u64, reply: ReplyEmpty) {
        let staging = overlay
            .lock()
            .get(ino)
            .ok()
            .and_then(|inode| inode.io.clone());
        let result = match staging {
            Some(io) => match &io.lock().expect("file io lock").staging {
                Some(file) => file.sync_data().map_err(Errno::from),
                None => Ok(()),
            },
            None => Ok(()),
        };
        match result {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    pub(super) fn incoming_fallocate(
        &self,
        overlay: &Overlay,
        ino: u64,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let result = (|| {
            let io = Self::file_io(overlay, ino)?;
            let mut io = io.lock().expect("file io lock");
            let file = self.staging_file(overlay, ino, &mut io)?;
            super::super::overlay::fallocate(&file, mode, offset, length).map_err(Errno::from)?;
            io.stored = false;
            let size = file.metadata().map_err(Errno::from)?.len();
            Self::content_written(overlay, ino, size)
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    pub(super) fn incoming_lseek(
        &self,
        overlay: &Overlay,
        ino: u64,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        if whence != libc::SEEK_DATA && whence != libc::SEEK_HOLE {
            // The kernel handles the other kinds of seek itself.
            return reply.error(Errno::EINVAL);
        }
        let result = (|| {
            let io = overlay.lock().get(ino)?.io.clone();
            let io = io.as_ref().map(|io| io.lock().expect("file io lock"));
            if let Some(file) = io.as_ref().and_then(|io| io.staging.clone()) {
                return super::super::overlay::seek(&file, offset, whence).map_err(Errno::from);
            }
            let content = self.stored_content(&mut overlay.lock(), ino)?;
            let Ok(offset) = u64::try_from(offset) else {
                return Ok(None);
            };
            let found = if whence == libc::SEEK_DATA {
                content.seek_data(offset)
            } else {
                content.seek_hole(offset)
            };
            Ok(found.and_then(|position| i64::try_from(position).ok()))
        })();
        match result {
            Ok(Some(position)) => reply.offset(position),
            Ok(None) => reply.error(Errno::ENXIO),
            Err(errno) => reply.error(errno),
        }
    }

    pub(super) fn incoming_opendir(&self, overlay: &Overlay, ino: u64, reply: ReplyOpen) {
        match self.load_incoming_dir(overlay, ino) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(errno) => reply.error(errno),
        }
    }

    /// Returns the listing of a directory after readdir offset `offset`, with
    /// `.` at offset 1 and `..` at 2.
    fn incoming_list(
        &self,
        overlay: &Overlay,
        ino: u64,
        offset: u64,
    ) -> Result<Vec<ListedChild>, Errno> {
        self.load_incoming_dir(overlay, ino)?;
        let table = overlay.lock();
        let inode = table.get(ino)?;
        let mut list = Vec::new();
        if offset < 1 {
            list.push(ListedChild {
                offset: 1,
                name: b".".to_vec(),
                ino,
                attr: overlay.attr(&table, ino)?,
            });
        }
        if offset < 2 {
            let parent = inode.parent;
            let attr = if parent == ROOT_INO {
                let mut attr = overlay.attr(&table, ino)?;
                attr.ino = INodeNo(ROOT_INO);
                attr
            } else {
                overlay.attr(&table, parent)?
            };
            list.push(ListedChild {
                offset: 2,
                name: b"..".to_vec(),
                ino: parent,
                attr,
            });
        }
        for (cookie, name, child) in table.entries_after(ino, offset.max(2), LIST_BATCH) {
            list.push(ListedChild {
                offset: cookie,
                name,
                ino: child,
                attr: overlay.attr(&table, child)?,
            });
        }
        Ok(list)
    }

    pub(super) fn incoming_readdir(
        &self,
        overlay: &Overlay,
        ino: u64,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut offset = offset;
        loop {
            let list = match self.incoming_list(overlay, ino, offset) {
                Ok(list) => list,
                Err(errno) => return reply.error(errno),
            };
            let Some(last) = list.last() else {
                break;
            };
            offset = last.offset;
            for child in &list {
                let name = OsStr::from_bytes(&child.name);
                if reply.add(INodeNo(child.ino), child.offset, child.attr.kind, name) {
                    return reply.ok();
                }
            }
        }
        reply.ok();
    }

    pub(super) fn incoming_readdirplus(
        &self,
        overlay: &Overlay,
        ino: u64,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let mut offset = offset;
        loop {
            let list = match self.incoming_list(overlay, ino, offset) {
                Ok(list) => list,
                Err(errno) => return reply.error(errno),
            };
            let Some(last) = list.last() else {
                break;
            };
            offset = last.offset;
            for child in &list {
                let name = OsStr::from_bytes(&child.name);
                let ino = INodeNo(child.ino);
                if reply.add(ino, child.offset, name, &TTL, &child.attr, Generation(0)) {
                    return reply.ok();
                }
            }
        }
        reply.ok();
    }

    pub(super) fn incoming_getxattr(
        &self,
        overlay: &Overlay,
        ino: u64,
        name: &OsStr,
        size: u32,
        reply: ReplyXattr,
    ) {
        let table = overlay.lock();
        match table.get(ino).map(|inode| inode.node.get()) {
            Ok(node) => match node.xattrs.iter().find(|x| x.name == name.as_bytes()) {
                Some(xattr) => reply_xattr(reply, size, &xattr.value),
                None => reply.error(Errno::NO_XATTR),
            },
            Err(errno) => reply.error(errno),
        }
    }

    pub(super) fn incoming_listxattr(
        &self,
        overlay: &Overlay,
        ino: u64,
        size: u32,
        reply: ReplyXattr,
    ) {
        let table = overlay.lock();
        match table.get(ino).map(|inode| inode.node.get()) {
            Ok(node) => {
                let mut names = Vec::new();
                for xattr in &node.xattrs {
                    names.extend_from_slice(&xattr.name);
                    names.push(0);
                }
                reply_xattr(reply, size, &names);
            }
            Err(errno) => reply.error(errno),
        }
    }

    pub(super) fn incoming_setxattr(
        &self,
        overlay: &Overlay,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        reply: ReplyEmpty,
    ) {
        let name = name.as_bytes();
        let result = (|| {
            if name.is_empty() || name.len() > MAX_NAME_LEN {
                return Err(Errno::ERANGE);
            }
            let mut table = overlay.lock();
            let inode = table.get_mut(ino)?;
            let xattrs = &inode.node.get().xattrs;
            let position = xattrs.binary_search_by(|x| x.name.as_slice().cmp(name));
            match position {
                Ok(_) if flags & libc::XATTR_CREATE != 0 => return Err(Errno::EEXIST),
                Err(_) if flags & libc::XATTR_REPLACE != 0 => return Err(Errno::NO_XATTR),
                Ok(i) if xattrs[i].value == value => return Ok(()),
                _ => {}
            }
            let node = make_owned(inode, ino, overlay.session_dev);
            let xattr = Xattr {
                name: name.to_vec(),
                value: value.to_vec(),
            };
            match position {
                Ok(i) => node.xattrs[i] = xattr,
                Err(i) => node.xattrs.insert(i, xattr),
            }
            node.ctime = Timestamp::now();
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }

    pub(super) fn incoming_removexattr(
        &self,
        overlay: &Overlay,
        ino: u64,
        name: &OsStr,
        reply: ReplyEmpty,
    ) {
        let name = name.as_bytes();
        let result = (|| {
            let mut table = overlay.lock();
            let inode = table.get_mut(ino)?;
            let position = inode
                .node
                .get()
                .xattrs
                .binary_search_by(|x| x.name.as_slice().cmp(name))
                .map_err(|_| Errno::NO_XATTR)?;
            let node = make_owned(inode, ino, overlay.session_dev);
            node.xattrs.remove(position);
            node.ctime = Timestamp::now();
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(errno) => reply.error(errno),
        }
    }
}

/// Returns true if directory `dir` is `ancestor` or lies below it.
fn is_within(table: &Table, dir: u64, ancestor: u64) -> bool {
    let mut current = dir;
    for _ in 0..4096 {
        if current == ancestor {
            return true;
        }
        if current == INCOMING_INO {
            return false;
        }
        match table.get(current) {
            Ok(inode) => current = inode.parent,
            Err(_) => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ChunkId;

    fn data(len: u32) -> Extent {
        Extent::Data {
            id: ChunkId([len as u8; 32]),
            len,
        }
    }

    #[test]
    fn cut_extents_at_boundaries() {
        let extents = [data(10), Extent::Hole { len: 10 }, data(10)];
        assert_eq!(cut_extents(&extents, 10).unwrap(), [data(10)]);
        assert_eq!(
            cut_extents(&extents, 15).unwrap(),
            [data(10), Extent::Hole { len: 5 }]
        );
        assert_eq!(cut_extents(&extents, 30).unwrap(), extents);
        assert!(cut_extents(&extents, 0).unwrap().is_empty());
    }

    #[test]
    fn cut_extents_inside_data() {
        let extents = [data(10), data(10)];
        assert!(cut_extents(&extents, 5).is_none());
        assert!(cut_extents(&extents, 15).is_none());
    }

    #[test]
    fn rdev_decoding_inverts_kernel_encoding() {
        for (major, minor) in [(8, 1), (1, 3), (259, 0x12345)] {
            let dev = libc::makedev(major, minor);
            assert_eq!(decode_rdev(crate::fuse::inode::encode_rdev(dev)), dev);
        }
    }

    #[test]
    fn times_before_epoch() {
        let time = UNIX_EPOCH - Duration::new(1, 500_000_000);
        assert_eq!(
            timestamp_of(time),
            Timestamp {
                secs: -2,
                nanos: 500_000_000
            }
        );
        assert_eq!(timestamp_of(time).to_system_time(), time);
    }
}
