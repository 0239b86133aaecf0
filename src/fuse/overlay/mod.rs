//! The writable `incoming/` folder of a write-through mount.
//!
//! `incoming/` starts as the root tree of one snapshot, the parent. Directories
//! are loaded from the repository the first time they are used, as in the
//! read-only folders. An entry that is never changed keeps referring to the
//! loaded tree it came from. A directory that is never opened stays a
//! [`TreeId`]. So memory grows with what is used and changed, not with the
//! size of the snapshot.
//!
//! A changed entry gets its own [`Node`]. A changed directory gets an entry
//! map. File content is written to an unnamed staging file on local disk and
//! chunked into the repository when the last writer closes the file (see
//! [`staging`] and [`store`]). At unmount, [`commit`] builds trees for the
//! changed directories and saves the snapshot.
//!
//! # Inode numbers
//!
//! Inodes of `incoming/` are numbered from [`INCOMING_INO`] up, in allocation
//! order, and are never reused while mounted. Regular files of the parent that
//! share a device and inode number and have a link count above 1 share one
//! inode, as in the read-only folders.

mod commit;
mod staging;
mod store;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fuser::{Errno, FileAttr, FileType};

pub use self::commit::{CommitOutcome, WRITE_THROUGH_TAG};
pub(super) use self::staging::{
    FileIo, StagingDir, fallocate, materialize, read_at as read_staged, seek,
};
pub(super) use self::store::Store;
use super::content::FileContent;
use super::inode::{data_blocks, node_attr, shares_inode};
use crate::id::{SnapshotId, TreeId};
use crate::meta::NameCache;
use crate::repository::Repository;
use crate::snapshot::Snapshot;
use crate::tree::{Node, NodeKind, Timestamp, Tree};

/// Inode number of `incoming/`, far above the inode numbers of the read-only
/// folders, which count up from 1.
pub(crate) const INCOMING_INO: u64 = 1 << 48;

/// Name of the writable folder in the mount's root.
pub(crate) const INCOMING_NAME: &[u8] = b"incoming";

/// Readdir offset of the first entry after `.` (1) and `..` (2).
const FIRST_COOKIE: u64 = 3;

/// Returns true for inode numbers of `incoming/` and everything below it.
pub(crate) fn is_incoming(ino: u64) -> bool {
    ino >= INCOMING_INO
}

/// The metadata of an entry: unchanged, in a tree loaded from the repository,
/// or changed and owned.
#[derive(Clone, Debug)]
pub(super) enum NodeRef {
    Base { tree: Arc<Tree>, index: u32 },
    Owned(Box<Node>),
}

impl NodeRef {
    pub fn get(&self) -> &Node {
        match self {
            NodeRef::Base { tree, index } => &tree.nodes[*index as usize],
            NodeRef::Owned(node) => node,
        }
    }

    pub fn is_owned(&self) -> bool {
        matches!(self, NodeRef::Owned(_))
    }
}

/// The entries of a directory that has been changed, with readdir offsets
/// ("cookies") that stay valid while entries are added and removed.
#[derive(Debug, Default)]
pub(super) struct EntryMap {
    by_name: HashMap<Vec<u8>, (u64, u64)>,
    by_cookie: BTreeMap<u64, Vec<u8>>,
    next_cookie: u64,
}

impl EntryMap {
    fn new() -> Self {
        Self {
            next_cookie: FIRST_COOKIE,
            ..Self::default()
        }
    }

    pub fn get(&self, name: &[u8]) -> Option<u64> {
        self.by_name.get(name).map(|(ino, _)| *ino)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    fn insert(&mut self, name: Vec<u8>, ino: u64) {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        if let Some((_, old)) = self.by_name.insert(name.clone(), (ino, cookie)) {
            self.by_cookie.remove(&old);
        }
        self.by_cookie.insert(cookie, name);
    }

    fn remove(&mut self, name: &[u8]) -> Option<u64> {
        let (ino, cookie) = self.by_name.remove(name)?;
        self.by_cookie.remove(&cookie);
        Some(ino)
    }
}

/// The entries of a directory of `incoming/`.
#[derive(Debug)]
pub(super) enum Entries {
    /// Not loaded yet: the entries are those of the node's subtree.
    Unloaded,
    /// Loaded and unchanged: entry `i` of the base tree has slot `first + i`.
    Base { first: u64 },
    /// Changed at least once.
    Map(EntryMap),
}

/// A directory's state.
#[derive(Debug)]
pub(super) struct DirState {
    /// The tree the directory was loaded from, if it existed in the parent.
    pub base: Option<Arc<Tree>>,
    pub entries: Entries,
    /// True once the directory was removed (rmdir, or renamed over).
    pub removed: bool,
}

/// One inode of `incoming/`.
#[derive(Debug)]
pub(super) struct WInode {
    /// Directory the inode was last linked into, for `..` and messages.
    pub parent: u64,
    pub node: NodeRef,
    /// Number of directory entries that refer to the inode.
    pub nlink: u64,
    /// `(dev, inode)` of a hard-linked file of the parent snapshot, which its
    /// other links in directories not loaded yet also carry.
    pub link_key: Option<(u64, u64)>,
    pub dir: Option<Box<DirState>>,
    /// Staging file and open writers of a regular file, once it was opened.
    pub io: Option<Arc<Mutex<FileIo>>>,
    /// Extents with offsets, built on the first read after a change.
    pub content: Option<Arc<FileContent>>,
    /// True while the file has a staging file.
    pub staged: bool,
    /// True for inodes created while mounted.
    pub created: bool,
    /// True once the file's content was replaced.
    pub content_changed: bool,
}

impl WInode {
    fn new(parent: u64, node: NodeRef) -> Self {
        let (nlink, dir) = {
            let n = node.get();
            let dir = (n.kind == NodeKind::Dir).then(|| {
                Box::new(DirState {
                    base: None,
                    entries: Entries::Unloaded,
                    removed: false,
                })
            });
            let nlink = if shares_inode(n) { n.nlink } else { 1 };
            (nlink, dir)
        };
        Self {
            parent,
            node,
            nlink,
            link_key: None,
            dir,
            io: None,
            content: None,
            staged: false,
            created: false,
            content_changed: false,
        }
    }

    pub fn kind(&self) -> NodeKind {
        self.node.get().kind
    }
}

#[derive(Debug)]
enum Slot {
    Inode(WInode),
    /// Another link of a hard-linked file that already has this inode number.
    Alias(u64),
}

/// All inodes of `incoming/`: slot `i` is inode `INCOMING_INO + i`.
#[derive(Debug, Default)]
pub(super) struct Table {
    slots: Vec<Slot>,
    /// `(dev, inode)` of hard-linked files of the parent to their inode number.
    hard_links: HashMap<(u64, u64), u64>,
}

impl Table {
    fn push(&mut self, slot: Slot) -> u64 {
        self.slots.push(slot);
        INCOMING_INO + self.slots.len() as u64 - 1
    }

    fn resolve(&self, ino: u64) -> Option<u64> {
        let index = usize::try_from(ino.checked_sub(INCOMING_INO)?).ok()?;
        match self.slots.get(index)? {
            Slot::Inode(_) => Some(ino),
            Slot::Alias(target) => Some(*target),
        }
    }

    pub fn get(&self, ino: u64) -> Result<&WInode, Errno> {
        let ino = self.resolve(ino).ok_or(Errno::ENOENT)?;
        match &self.slots[(ino - INCOMING_INO) as usize] {
            Slot::Inode(inode) => Ok(inode),
            Slot::Alias(_) => Err(Errno::ENOENT),
        }
    }

    pub fn get_mut(&mut self, ino: u64) -> Result<&mut WInode, Errno> {
        let ino = self.resolve(ino).ok_or(Errno::ENOENT)?;
        match &mut self.slots[(ino - INCOMING_INO) as usize] {
            Slot::Inode(inode) => Ok(inode),
            Slot::Alias(_) => Err(Errno::ENOENT),
        }
    }

    /// Returns every inode with its number.
    pub fn inodes(&self) -> impl Iterator<Item = (u64, &WInode)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, slot)| match slot {
                Slot::Inode(inode) => Some((INCOMING_INO + i as u64, inode)),
                Slot::Alias(_) => None,
            })
    }

    pub fn dir(&self, ino: u64) -> Result<&DirState, Errno> {
        self.get(ino)?.dir.as_deref().ok_or(Errno::ENOTDIR)
    }

    /// Allocates slots for the entries of a loaded directory tree.
    fn attach(&mut self, dir: u64, tree: Arc<Tree>) {
        let first = INCOMING_INO + self.slots.len() as u64;
        for (i, node) in tree.nodes.iter().enumerate() {
            let ino = first + i as u64;
            let key = (node.dev, node.inode);
            if shares_inode(node)
                && let Some(&existing) = self.hard_links.get(&key)
            {
                self.slots.push(Slot::Alias(existing));
                continue;
            }
            let mut inode = WInode::new(
                dir,
                NodeRef::Base {
                    tree: tree.clone(),
                    index: i as u32,
                },
            );
            if shares_inode(node) {
                self.hard_links.insert(key, ino);
                inode.link_key = Some(key);
            }
            self.slots.push(Slot::Inode(inode));
        }
        let state = self
            .get_mut(dir)
            .ok()
            .and_then(|inode| inode.dir.as_deref_mut())
            .expect("attach is called for a directory");
        state.base = Some(tree);
        state.entries = Entries::Base { first };
    }

    /// Adds an inode created while mounted and returns its number, which also
    /// becomes the node's recorded inode number.
    pub fn create(&mut self, parent: u64, mut node: Node) -> u64 {
        node.inode = INCOMING_INO + self.slots.len() as u64;
        let mut inode = WInode::new(parent, NodeRef::Owned(Box::new(node)));
        inode.created = true;
        if let Some(state) = inode.dir.as_deref_mut() {
            state.entries = Entries::Map(EntryMap::new());
        }
        self.push(Slot::Inode(inode))
    }

    /// Returns the inode number of entry `name` of a loaded directory.
    pub fn child(&self, dir: u64, name: &[u8]) -> Result<Option<u64>, Errno> {
        let state = self.dir(dir)?;
        Ok(match &state.entries {
            Entries::Unloaded => None,
            Entries::Base { first } => {
                let tree = state.base.as_ref().expect("a loaded directory has a tree");
                tree.nodes
                    .binary_search_by(|node| node.name.as_slice().cmp(name))
                    .ok()
                    .and_then(|i| self.resolve(first + i as u64))
            }
            Entries::Map(map) => map.get(name),
        })
    }

    /// Returns the entries of a loaded directory whose readdir offset is above
    /// `offset`, at most `max`, as (offset, name, inode number).
    pub fn entries_after(&self, dir: u64, offset: u64, max: usize) -> Vec<(u64, Vec<u8>, u64)> {
        let Ok(state) = self.dir(dir) else {
            return Vec::new();
        };
        match &state.entries {
            Entries::Unloaded => Vec::new(),
            Entries::Base { first } => {
                let tree = state.base.as_ref().expect("a loaded directory has a tree");
                let start = offset.saturating_sub(FIRST_COOKIE - 1) as usize;
                tree.nodes
                    .iter()
                    .enumerate()
                    .skip(start)
                    .take(max)
                    .filter_map(|(i, node)| {
                        let ino = self.resolve(first + i as u64)?;
                        Some((FIRST_COOKIE + i as u64, node.name.clone(), ino))
                    })
                    .collect()
            }
            Entries::Map(map) => map
                .by_cookie
                .range(offset.saturating_add(1)..)
                .take(max)
                .filter_map(|(cookie, name)| Some((*cookie, name.clone(), map.get(name)?)))
                .collect(),
        }
    }

    /// Returns the number of entries of a loaded directory.
    pub fn entry_count(&self, dir: u64) -> Result<usize, Errno> {
        let state = self.dir(dir)?;
        match &state.entries {
            // Callers load the directory first, so that no entry is missed.
            Entries::Unloaded => Err(Errno::EIO),
            Entries::Base { .. } => Ok(state.base.as_ref().map_or(0, |t| t.nodes.len())),
            Entries::Map(map) => Ok(map.len()),
        }
    }

    /// Turns a loaded directory's entries into an [`EntryMap`], keeping the
    /// readdir offsets of the entries.
    fn entry_map(&mut self, dir: u64) -> Result<&mut EntryMap, Errno> {
        let first = match &self.dir(dir)?.entries {
            Entries::Base { first } => Some(*first),
            Entries::Map(_) => None,
            Entries::Unloaded => panic!("directory {dir} is changed before it is loaded"),
        };
        if let Some(first) = first {
            let tree = self.dir(dir)?.base.clone().expect("loaded");
            let mut map = EntryMap::new();
            for (i, node) in tree.nodes.iter().enumerate() {
                let ino = self.resolve(first + i as u64).expect("slot exists");
                let cookie = FIRST_COOKIE + i as u64;
                map.by_name.insert(node.name.clone(), (ino, cookie));
                map.by_cookie.insert(cookie, node.name.clone());
            }
            map.next_cookie = FIRST_COOKIE + tree.nodes.len() as u64;
            self.get_mut(dir)?.dir.as_mut().expect("checked").entries = Entries::Map(map);
        }
        match &mut self.get_mut(dir)?.dir.as_mut().expect("checked").entries {
            Entries::Map(map) => Ok(map),
            _ => unreachable!("converted above"),
        }
    }

    pub fn insert_entry(&mut self, dir: u64, name: &[u8], ino: u64) -> Result<(), Errno> {
        self.entry_map(dir)?.insert(name.to_vec(), ino);
        Ok(())
    }

    pub fn remove_entry(&mut self, dir: u64, name: &[u8]) -> Result<u64, Errno> {
        self.entry_map(dir)?.remove(name).ok_or(Errno::ENOENT)
    }

    /// Returns the name under which `ino` appears in `dir`, for messages.
    fn name_in(&self, dir: u64, ino: u64) -> Option<Vec<u8>> {
        let mut offset = 0;
        loop {
            let batch = self.entries_after(dir, offset, 4096);
            let last = batch.last()?.0;
            if let Some((_, name, _)) = batch.into_iter().find(|(_, _, child)| *child == ino) {
                return Some(name);
            }
            offset = last;
        }
    }
}

/// An open file of `incoming/`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Handle {
    pub ino: u64,
    pub write: bool,
}

/// The state of `incoming/`, shared by the file system callbacks and the
/// commit at unmount.
pub(crate) struct Overlay {
    pub(super) repo: Arc<Repository>,
    pub(super) table: Mutex<Table>,
    pub(super) handles: Mutex<HashMap<u64, Handle>>,
    pub(super) next_handle: AtomicU64,
    pub(super) staging: StagingDir,
    pub(super) store: Store,
    /// Device number recorded for inodes created or changed while mounted, so
    /// that their `(dev, inode)` pairs never match those of other snapshots.
    /// Random, with the top bit set.
    pub(super) session_dev: u64,
    pub(super) names: NameCache,
    pub(super) parent: Option<(SnapshotId, Snapshot)>,
    pub(super) started: Instant,
    /// Bytes read from staging files to chunk them, for the snapshot summary.
    pub(super) bytes_chunked: AtomicU64,
    /// Stored files whose staging files are kept until their chunks are in
    /// written packs.
    pub(super) retained: Mutex<Vec<u64>>,
    /// Stored files whose staging files may stay open at once. Beyond it, the
    /// open chunk pack is written early so that they can be closed.
    pub(super) max_retained: usize,
}

/// Settings of the writable folder.
#[derive(Clone, Debug, Default)]
pub struct WriteThroughOptions {
    /// Snapshot that `incoming/` starts from; the latest snapshot when `None`.
    pub parent: Option<SnapshotId>,
    /// Directory for staging files; a new directory under `$TMPDIR` (or
    /// `/var/tmp`) when `None`.
    pub staging_dir: Option<std::path::PathBuf>,
    /// How long to wait for an exclusive lock (a running prune) to go away.
    pub lock_wait: std::time::Duration,
}

impl Overlay {
    /// Sets up `incoming/` over `parent`'s root tree, or over an empty tree
    /// when the repository has no snapshot.
    pub(crate) fn new(
        repo: Arc<Repository>,
        parent: Option<(SnapshotId, Snapshot)>,
        staging_dir: Option<&Path>,
        owner: (u32, u32),
    ) -> std::io::Result<Self> {
        let staging = StagingDir::create(staging_dir, &repo.config().repo_id)?;
        let store = Store::start(repo.clone())?;
        let session_dev = rand::random::<u64>() | 1 << 63;

        let mut root = Node::new(Vec::new(), NodeKind::Dir);
        root.mode = 0o755;
        root.uid = owner.0;
        root.gid = owner.1;
        root.mtime = parent
            .as_ref()
            .map_or_else(Timestamp::now, |(_, snapshot)| snapshot.time);
        root.ctime = root.mtime;
        root.subtree = parent.as_ref().map(|(_, snapshot)| snapshot.tree);
        let mut table = Table::default();
        let ino = table.push(Slot::Inode(WInode::new(
            super::inode::ROOT_INO,
            NodeRef::Owned(Box::new(root)),
        )));
        debug_assert_eq!(ino, INCOMING_INO);

        Ok(Self {
            repo,
            table: Mutex::new(table),
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            staging,
            store,
            session_dev,
            names: NameCache::default(),
            parent,
            started: Instant::now(),
            bytes_chunked: AtomicU64::new(0),
            retained: Mutex::new(Vec::new()),
            max_retained: max_retained_staging(),
        })
    }

    /// Returns the staging directory.
    pub(crate) fn staging_path(&self) -> &Path {
        self.staging.path()
    }

    /// Returns the id of the snapshot `incoming/` started from.
    pub(crate) fn parent_id(&self) -> Option<SnapshotId> {
        self.parent.as_ref().map(|(id, _)| *id)
    }

    /// Removes the staging directory if this mount created it.
    pub(crate) fn remove_staging_dir(&mut self) -> std::io::Result<()> {
        self.staging.remove()
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().expect("incoming table lock")
    }

    /// Loads a directory's entries from its tree unless they are loaded.
    /// Returns ENOTDIR for other inodes and EIO when the tree cannot be read.
    pub(super) fn load_dir(&self, ino: u64) -> Result<(), LoadError> {
        let tree_id: Option<TreeId> = {
            let table = self.lock();
            let inode = table.get(ino)?;
            let state = inode.dir.as_deref().ok_or(Errno::ENOTDIR)?;
            if !matches!(state.entries, Entries::Unloaded) {
                return Ok(());
            }
            inode.node.get().subtree
        };
        // The tree is read without holding the table lock.
        let tree = match tree_id {
            Some(id) => self.repo.load_tree(&id).map_err(LoadError::Repo)?,
            None => Arc::new(Tree::default()),
        };
        let mut table = self.lock();
        if matches!(table.dir(ino)?.entries, Entries::Unloaded) {
            table.attach(ino, tree);
        }
        Ok(())
    }

    /// Returns the path of an inode below the mount point, for messages.
    pub(super) fn path_of(&self, ino: u64) -> String {
        let table = self.lock();
        let mut names = Vec::new();
        let mut current = ino;
        while current != INCOMING_INO && names.len() < 4096 {
            let Ok(inode) = table.get(current) else {
                break;
            };
            let name = table
                .name_in(inode.parent, current)
                .unwrap_or_else(|| b"(removed)".to_vec());
            names.push(String::from_utf8_lossy(&name).into_owned());
            current = inode.parent;
        }
        names.push("incoming".into());
        names.reverse();
        format!("/{}", names.join("/"))
    }

    /// Returns the attributes of an inode.
    pub(super) fn attr(&self, table: &Table, ino: u64) -> Result<FileAttr, Errno> {
        let ino = table.resolve(ino).ok_or(Errno::ENOENT)?;
        let inode = table.get(ino)?;
        let node = inode.node.get();
        let mut attr = node_attr(ino, node);
        match node.kind {
            NodeKind::Dir => attr.nlink = 2,
            _ => attr.nlink = u32::try_from(inode.nlink).unwrap_or(u32::MAX),
        }
        if node.kind == NodeKind::File {
            attr.blocks = if inode.staged {
                node.size.div_ceil(512)
            } else {
                data_blocks(&node.content)
            };
        }
        if ino == INCOMING_INO {
            attr.kind = FileType::Directory;
        }
        Ok(attr)
    }
}

/// Returns the node of an inode for changing it. The first change copies it
/// out of its tree and, unless it is a hard-linked file of the parent, gives it
/// a new `(dev, inode)` pair, so that it matches no entry of another snapshot
/// (restore links entries with equal pairs).
pub(super) fn make_owned(inode: &mut WInode, ino: u64, session_dev: u64) -> &mut Node {
    if let NodeRef::Base { tree, index } = &inode.node {
        let mut node = tree.nodes[*index as usize].clone();
        if inode.link_key.is_none() {
            node.dev = session_dev;
            node.inode = ino;
        }
        inode.node = NodeRef::Owned(Box::new(node));
    }
    match &mut inode.node {
        NodeRef::Owned(node) => node,
        NodeRef::Base { .. } => unreachable!("replaced above"),
    }
}

/// An error while loading a directory.
#[derive(Debug)]
pub(super) enum LoadError {
    Errno(Errno),
    Repo(crate::repository::RepoError),
}

impl From<Errno> for LoadError {
    fn from(errno: Errno) -> Self {
        LoadError::Errno(errno)
    }
}

/// Returns how many staging files of stored files may stay open: a quarter of
/// the open file limit, which is first raised to its hard limit, and at most
/// 4096. Each such file takes a descriptor until the pack with its chunks is
/// written, and a copy of many small files would otherwise reach the limit
/// (often 1024) long before a 16 MiB pack fills.
fn max_retained_staging() -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};

    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 256;
    };
    let soft = if hard > soft && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    usize::try_from(soft / 4)
        .unwrap_or(usize::MAX)
        .clamp(16, 4096)
}
