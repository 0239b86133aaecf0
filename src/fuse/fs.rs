//! The file system state: inodes, open files and the chunk cache, and the
//! lookups, listings and reads that the callbacks in [`ops`] are built from.

mod incoming;
mod ops;

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::ops::Range;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use fuser::{Errno, FileAttr, FileHandle, FileType};
use tracing::{debug, error};

use super::MountOptions;
use super::content::{ChunkCache, FileContent};
use super::inode::{
    Children, Inode, InodeKind, InodeTable, ROOT_INO, Slot, VirtualDir, file_type, node_attr,
    synthetic_attr,
};
use super::layout;
use super::overlay::{INCOMING_INO, Overlay, is_incoming};
use super::trees::TreeCache;
use crate::id::{ChunkId, SnapshotId, TreeId};
use crate::repository::Repository;
use crate::snapshot::Snapshot;
use crate::tree::{Extent, NodeKind, Timestamp};

/// A read that starts within this distance of where the previous read of the
/// same handle ended counts as sequential. The kernel sends readahead requests
/// of up to 1 MiB from several threads, so they arrive slightly out of order.
const SEQUENTIAL_WINDOW: u64 = 4 << 20;

/// Number of distinct errors remembered so that repeats of each are logged at
/// debug level, not error level.
const MAX_REMEMBERED_ERRORS: usize = 100_000;

/// One open regular file.
struct OpenFile {
    content: FileContent,
    /// Offset after the previous read, `u64::MAX` before the first one.
    next_offset: AtomicU64,
}

/// One entry of a directory listing.
struct ListedEntry {
    ino: u64,
    name: Vec<u8>,
    /// The inode, or `None` for `incoming/`.
    inode: Option<Inode>,
    /// The offset the kernel passes back to continue after this entry.
    offset: u64,
}

/// The result of a read: a range of one cached chunk, or bytes assembled from
/// several extents.
enum ReadBytes {
    Chunk(Arc<Vec<u8>>, Range<usize>),
    Owned(Vec<u8>),
}

impl ReadBytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            ReadBytes::Chunk(data, range) => &data[range.clone()],
            ReadBytes::Owned(bytes) => bytes,
        }
    }
}

/// Number of entries fetched at a time while filling a readdir reply.
const LIST_BATCH: usize = 512;

/// The entries of a directory, for lookup and readdir.
enum DirEntries {
    Virtual(Arc<VirtualDir>),
    Tree(Children),
}

/// The read-only file system over a repository's snapshots.
pub(super) struct CairnFs {
    repo: Arc<Repository>,
    snapshots: Vec<(SnapshotId, Snapshot)>,
    inodes: RwLock<InodeTable>,
    trees: TreeCache,
    files: RwLock<HashMap<u64, Arc<OpenFile>>>,
    next_handle: AtomicU64,
    cache: Arc<ChunkCache>,
    prefetch_pool: rayon::ThreadPool,
    readahead_chunks: usize,
    /// User and group of the mounting process, owners of the top-level folders.
    owner: (u32, u32),
    /// Sum of the stored sizes of all blobs, for `statfs`.
    stored_bytes: u64,
    logged_errors: Mutex<HashSet<u64>>,
    /// The writable `incoming/` folder of a write-through mount.
    incoming: Option<Arc<Overlay>>,
    /// False when no snapshot contains an extended attribute and nothing is
    /// writable: the first `getxattr` or `listxattr` then answers ENOSYS, which
    /// makes the kernel stop asking. `ls -l` asks for `security.selinux` on every
    /// entry, so this removes one round trip to this process per entry.
    serve_xattrs: bool,
    /// Set at FUSE init when the kernel opens directories without asking, see
    /// [`fuser::Filesystem::init`] in `ops`.
    kernel_opens_dirs: bool,
}

impl CairnFs {
    /// Builds the top-level folders from `snapshots`, sorted oldest first, and
    /// adds `incoming/` when `incoming` is given.
    pub fn new(
        repo: Arc<Repository>,
        snapshots: Vec<(SnapshotId, Snapshot)>,
        options: &MountOptions,
        incoming: Option<Arc<Overlay>>,
    ) -> io::Result<Self> {
        let mut inodes = InodeTable::default();
        let incoming_entry = incoming.as_ref().map(|_| INCOMING_INO);
        layout::build(&mut inodes, &snapshots, Timestamp::now(), incoming_entry);
        let serve_xattrs = incoming.is_some()
            || snapshots
                .iter()
                .any(|(_, snapshot)| snapshot.summary.xattr_entries != Some(0));
        let stored_bytes = repo
            .index()
            .iter()
            .map(|(_, location)| u64::from(location.len))
            .sum();
        let prefetch_pool = rayon::ThreadPoolBuilder::new()
            .num_threads(options.readahead_chunks.clamp(1, 4))
            .thread_name(|i| format!("cairn-prefetch-{i}"))
            .build()
            .map_err(io::Error::other)?;
        Ok(Self {
            cache: Arc::new(ChunkCache::new(repo.clone(), options.cache_bytes)),
            trees: TreeCache::new(repo.clone(), options.metadata_cache_bytes),
            repo,
            snapshots,
            inodes: RwLock::new(inodes),
            files: RwLock::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            prefetch_pool,
            readahead_chunks: options.readahead_chunks,
            owner: (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            ),
            stored_bytes,
            logged_errors: Mutex::new(HashSet::new()),
            incoming,
            serve_xattrs,
            kernel_opens_dirs: false,
        })
    }

    /// Returns an inode, with the tree of a snapshot entry loaded. An alias is
    /// resolved to the inode it stands for.
    fn inode(&self, ino: u64) -> Result<Inode, Errno> {
        let (tree_id, index, parent) = {
            let inodes = self.inodes.read().expect("inode table lock");
            match inodes.slot(inodes.resolve(ino)) {
                Some(Slot::Fixed(inode)) => return Ok(inode.clone()),
                Some(Slot::Entry {
                    tree,
                    index,
                    parent,
                }) => (tree, index, parent),
                None => return Err(Errno::ENOENT),
            }
        };
        let tree = self.tree(ino, &tree_id)?;
        Ok(Inode {
            parent,
            kind: InodeKind::Node { tree, index },
        })
    }

    /// Returns a tree from the tree cache, loading it if needed.
    fn tree(&self, ino: u64, id: &TreeId) -> Result<Arc<crate::tree::Tree>, Errno> {
        self.trees
            .get(id)
            .map_err(|e| self.io_error(ino, "failed to load directory", &e))
    }

    /// Returns the path of an inode below the mount point, for messages.
    fn path_of(&self, ino: u64) -> String {
        if let Some(overlay) = self.incoming(ino) {
            return overlay.path_of(ino);
        }
        // Only cached trees are used: this runs while reporting errors, which
        // may be errors loading a tree.
        let inodes = self.inodes.read().expect("inode table lock");
        let mut names = Vec::new();
        let mut current = ino;
        while current != ROOT_INO && names.len() < 4096 {
            let (name, parent) = match inodes.slot(current) {
                Some(Slot::Fixed(inode)) => (inode.name().to_vec(), inode.parent),
                Some(Slot::Entry {
                    tree,
                    index,
                    parent,
                }) => match self.trees.peek(&tree) {
                    Some(tree) => (tree.nodes[index as usize].name.clone(), parent),
                    None => (format!("<inode {current}>").into_bytes(), parent),
                },
                None => break,
            };
            names.push(String::from_utf8_lossy(&name).into_owned());
            current = parent;
        }
        names.reverse();
        format!("/{}", names.join("/"))
    }

    /// Logs a failure to read repository data for an inode and returns EIO.
    /// Each distinct error is logged at error level once.
    fn io_error(&self, ino: u64, action: &str, cause: &dyn std::fmt::Display) -> Errno {
        let message = format!("{action}: {cause}");
        let mut hasher = DefaultHasher::new();
        (ino, &message).hash(&mut hasher);
        let first_time = {
            let mut logged = self.logged_errors.lock().expect("error log lock");
            // Once the set is full, every error is logged at error level.
            logged.len() >= MAX_REMEMBERED_ERRORS || logged.insert(hasher.finish())
        };
        let path = self.path_of(ino);
        if first_time {
            error!(inode = ino, path = %path, errno = "EIO", "{message}");
        } else {
            debug!(inode = ino, path = %path, errno = "EIO", "repeated: {message}");
        }
        Errno::EIO
    }

    fn file_type(&self, inode: &Inode) -> FileType {
        match &inode.kind {
            InodeKind::Latest(_) => FileType::Symlink,
            InodeKind::Node { tree, index, .. } => file_type(tree.nodes[*index as usize].kind),
            _ => FileType::Directory,
        }
    }

    fn attr(&self, ino: u64, inode: &Inode) -> FileAttr {
        match &inode.kind {
            InodeKind::Virtual(dir) => {
                synthetic_attr(ino, FileType::Directory, 0, dir.mtime, self.owner)
            }
            InodeKind::Latest(target) => synthetic_attr(
                ino,
                FileType::Symlink,
                target.len() as u64,
                self.snapshots
                    .last()
                    .map_or_else(Timestamp::default, |(_, s)| s.time),
                self.owner,
            ),
            InodeKind::SnapshotRoot { snapshot, .. } => synthetic_attr(
                ino,
                FileType::Directory,
                0,
                self.snapshots[*snapshot].1.time,
                self.owner,
            ),
            InodeKind::Node { tree, index } => node_attr(ino, &tree.nodes[*index as usize]),
        }
    }

    /// Returns a directory's entries, numbering them on first use.
    fn dir_entries(&self, ino: u64) -> Result<DirEntries, Errno> {
        let inode = self.inode(ino)?;
        let attached = self.inodes.read().expect("inode table lock").children(ino);
        if let Some((tree_id, first)) = attached {
            let tree = self.tree(ino, &tree_id)?;
            return Ok(DirEntries::Tree(Children { tree, first }));
        }
        let tree_id: TreeId = match &inode.kind {
            InodeKind::Virtual(dir) => return Ok(DirEntries::Virtual(dir.clone())),
            InodeKind::SnapshotRoot { snapshot, .. } => self.snapshots[*snapshot].1.tree,
            InodeKind::Node { tree, index } => {
                let node = &tree.nodes[*index as usize];
                if node.kind != NodeKind::Dir {
                    return Err(Errno::ENOTDIR);
                }
                match node.subtree {
                    Some(id) => id,
                    None => {
                        return Err(self.io_error(
                            ino,
                            "failed to list directory",
                            &"its entry has no tree",
                        ));
                    }
                }
            }
            InodeKind::Latest(_) => return Err(Errno::ENOTDIR),
        };
        // The tree is loaded without holding the table lock. If two threads load
        // the same directory, `attach_children` keeps the first numbering.
        let tree = self.tree(ino, &tree_id)?;
        let first = self
            .inodes
            .write()
            .expect("inode table lock")
            .attach_children(ino, tree_id, &tree);
        Ok(DirEntries::Tree(Children { tree, first }))
    }

    /// Returns up to `max` entries of a directory, starting at position `start`
    /// of the listing: `.` is at 0, `..` at 1 and the entries follow.
    fn list(&self, ino: u64, start: usize, max: usize) -> Result<Vec<ListedEntry>, Errno> {
        let entries = self.dir_entries(ino)?;
        let count = 2 + match &entries {
            DirEntries::Virtual(dir) => dir.entries.len(),
            DirEntries::Tree(children) => children.tree.nodes.len(),
        };
        let end = count.min(start.saturating_add(max));
        // Numbers and names first, under the table lock; then the inodes, which
        // may need other trees (for `..` and hard links numbered elsewhere).
        let (parent, numbered) = {
            let inodes = self.inodes.read().expect("inode table lock");
            let parent = match inodes.slot(ino) {
                Some(Slot::Fixed(inode)) => inode.parent,
                Some(Slot::Entry { parent, .. }) => parent,
                None => ROOT_INO,
            };
            let numbered: Vec<(u64, Option<u32>)> = (start.max(2)..end)
                .map(|position| match &entries {
                    DirEntries::Virtual(dir) => (dir.entries[position - 2].1, None),
                    DirEntries::Tree(children) => {
                        let slot = children.first + (position - 2) as u64;
                        let resolved = inodes.resolve(slot);
                        let index = (resolved == slot).then_some((position - 2) as u32);
                        (resolved, index)
                    }
                })
                .collect();
            (parent, numbered)
        };

        let mut list = Vec::new();
        for position in start..end {
            let (child, name, inode) = match position {
                0 => (ino, b".".to_vec(), Some(self.inode(ino)?)),
                1 => (parent, b"..".to_vec(), Some(self.inode(parent)?)),
                p => {
                    let (child, index) = numbered[p - start.max(2)];
                    let inode = match (&entries, index) {
                        // An entry of this directory: its tree is at hand.
                        (DirEntries::Tree(children), Some(index)) => Some(Inode {
                            parent: ino,
                            kind: InodeKind::Node {
                                tree: children.tree.clone(),
                                index,
                            },
                        }),
                        _ if is_incoming(child) => None,
                        _ => Some(self.inode(child)?),
                    };
                    let name = match &entries {
                        DirEntries::Virtual(dir) => dir.entries[p - 2].0.clone(),
                        DirEntries::Tree(children) => children.tree.nodes[p - 2].name.clone(),
                    };
                    (child, name, inode)
                }
            };
            list.push(ListedEntry {
                ino: child,
                name,
                inode,
                offset: position as u64 + 1,
            });
        }
        Ok(list)
    }

    fn file(&self, fh: FileHandle) -> Result<Arc<OpenFile>, Errno> {
        self.files
            .read()
            .expect("open file lock")
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    /// Returns a chunk's plaintext after checking that it has the length the
    /// file's extent lists.
    fn chunk(&self, ino: u64, id: &ChunkId, len: u32) -> Result<Arc<Vec<u8>>, Errno> {
        let data = self
            .cache
            .get(id)
            .map_err(|e| self.io_error(ino, "failed to read file content", &e))?;
        if data.len() != len as usize {
            let detail = format!(
                "chunk {} has {} bytes, the file lists {len}",
                id.short(),
                data.len()
            );
            return Err(self.io_error(ino, "failed to read file content", &detail));
        }
        Ok(data)
    }

    /// Reads up to `size` bytes at `offset`, fewer at the end of the file.
    fn read_range(
        &self,
        ino: u64,
        content: &FileContent,
        offset: u64,
        size: u32,
    ) -> Result<ReadBytes, Errno> {
        let pieces = content.pieces(offset, size);
        let extents = content.extents();
        if let [piece] = pieces.as_slice()
            && let Extent::Data { id, len } = &extents[piece.extent]
        {
            let data = self.chunk(ino, id, *len)?;
            let start = piece.start as usize;
            return Ok(ReadBytes::Chunk(data, start..start + piece.len));
        }
        let total = pieces.iter().map(|piece| piece.len).sum();
        let mut buffer = Vec::with_capacity(total);
        for piece in &pieces {
            match &extents[piece.extent] {
                Extent::Data { id, len } => {
                    let data = self.chunk(ino, id, *len)?;
                    let start = piece.start as usize;
                    buffer.extend_from_slice(&data[start..start + piece.len]);
                }
                Extent::Hole { .. } => buffer.resize(buffer.len() + piece.len, 0),
            }
        }
        Ok(ReadBytes::Owned(buffer))
    }

    /// Starts reading the data extents after the one that contains `offset` on the
    /// prefetch threads, so that they are cached when a sequential reader gets
    /// there.
    fn prefetch_after(&self, file: &OpenFile, offset: u64) {
        let Some(current) = file.content.extent_at(offset) else {
            return;
        };
        let next_chunks = file.content.extents()[current + 1..]
            .iter()
            .filter_map(|extent| match extent {
                Extent::Data { id, len } if *len > 0 => Some(*id),
                _ => None,
            })
            .take(self.readahead_chunks);
        for id in next_chunks {
            if self.cache.is_cached_or_loading(&id) {
                continue;
            }
            let cache = self.cache.clone();
            self.prefetch_pool.spawn(move || {
                // A failure is logged when a read needs the chunk.
                if let Err(e) = cache.get(&id) {
                    debug!(chunk = %id.short(), "prefetch failed: {e}");
                }
            });
        }
    }

    fn xattrs(&self, ino: u64) -> Result<Vec<crate::tree::Xattr>, Errno> {
        if !self.serve_xattrs {
            return Err(Errno::ENOSYS);
        }
        let inode = self.inode(ino)?;
        Ok(inode
            .node()
            .map(|node| node.xattrs.clone())
            .unwrap_or_default())
    }
}
