//! The inode table: every inode number handed to the kernel.
//!
//! The inodes built at mount time (the root, the views, the snapshot folders)
//! come first and are stored whole. After them, the entries of a snapshot
//! directory are numbered together, as a contiguous range, the first time the
//! directory is looked at. The table keeps only the range and the id of the
//! directory's tree, so it costs a few dozen bytes per directory looked at and
//! nothing per file. The trees themselves live in a bounded cache of the file
//! system and are loaded again when they have been evicted. Numbers are never
//! reused while the file system is mounted, so an inode number always names
//! the same entry.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::Duration;

use fuser::{FileAttr, FileType, INodeNo};

use crate::id::TreeId;
use crate::tree::{Extent, Node, NodeKind, Timestamp, Tree};

/// Inode number of the mount's root directory.
pub(super) const ROOT_INO: u64 = 1;

/// Block size reported in `st_blksize`.
pub(super) const BLOCK_SIZE: u32 = 4096;

/// A directory built at mount time from the snapshot list, such as `/hosts`.
#[derive(Debug)]
pub(super) struct VirtualDir {
    /// The directory's own name, empty for the root.
    pub name: Vec<u8>,
    /// Entries sorted by name bytes, with their inode numbers.
    pub entries: Vec<(Vec<u8>, u64)>,
    /// Modification time: that of the newest snapshot below, or the mount time.
    pub mtime: Timestamp,
}

impl VirtualDir {
    /// Finds an entry's inode number by name with a binary search.
    pub fn find(&self, name: &[u8]) -> Option<u64> {
        self.entries
            .binary_search_by(|(entry, _)| entry.as_slice().cmp(name))
            .ok()
            .map(|i| self.entries[i].1)
    }
}

/// The loaded entries of a directory inside a snapshot: entry `i` of `tree` has
/// inode number `first + i`, unless it is a hard link numbered elsewhere (see
/// [`InodeTable::resolve`]).
#[derive(Clone, Debug)]
pub(super) struct Children {
    /// The directory's tree.
    pub tree: Arc<Tree>,
    /// Inode number of the tree's first entry.
    pub first: u64,
}

/// The kind of an inode, with the data to serve it.
#[derive(Clone, Debug)]
pub(super) enum InodeKind {
    /// A directory built at mount time.
    Virtual(Arc<VirtualDir>),
    /// `/snapshots/latest`, a symbolic link with this target.
    Latest(Arc<[u8]>),
    /// A snapshot's folder, whose entries are those of the snapshot's root tree.
    SnapshotRoot {
        /// Index into the mount's snapshot list.
        snapshot: usize,
        /// The folder's name.
        name: Arc<[u8]>,
    },
    /// An entry of a snapshot's tree.
    Node {
        /// The tree that contains the entry.
        tree: Arc<Tree>,
        /// Index of the entry in `tree.nodes`.
        index: u32,
    },
}

/// One inode, as served: built at mount time, or put together from a
/// [`Slot::Entry`] and its tree.
#[derive(Clone, Debug)]
pub(super) struct Inode {
    /// Inode number of the directory that contains it (the root's is itself). A
    /// hard-linked file records the first directory it was found in.
    pub parent: u64,
    /// Kind and data.
    pub kind: InodeKind,
}

impl Inode {
    /// Returns the tree entry of an [`InodeKind::Node`].
    pub fn node(&self) -> Option<&Node> {
        match &self.kind {
            InodeKind::Node { tree, index } => Some(&tree.nodes[*index as usize]),
            _ => None,
        }
    }

    /// Returns the entry name, as shown in its parent directory.
    pub fn name(&self) -> &[u8] {
        match &self.kind {
            InodeKind::Virtual(dir) => &dir.name,
            InodeKind::Latest(_) => b"latest",
            InodeKind::SnapshotRoot { name, .. } => name,
            InodeKind::Node { tree, index } => &tree.nodes[*index as usize].name,
        }
    }

    /// Returns true for inodes inside a snapshot, whose attributes never change.
    pub fn is_in_snapshot(&self) -> bool {
        matches!(
            self.kind,
            InodeKind::SnapshotRoot { .. } | InodeKind::Node { .. }
        )
    }
}

/// The entries of one snapshot directory: inode numbers `first..first + len`
/// are the entries of tree `tree`, in order.
#[derive(Debug)]
struct Block {
    first: u64,
    len: u32,
    tree: TreeId,
    /// Inode number of the directory.
    dir: u64,
    /// Inode number of the snapshot folder the directory is under.
    root: u64,
}

/// The table's record of one inode number.
#[derive(Debug)]
pub(super) enum Slot<'a> {
    /// An inode built at mount time.
    Fixed(&'a Inode),
    /// Entry `index` of tree `tree`, in directory `parent`.
    Entry {
        tree: TreeId,
        index: u32,
        parent: u64,
    },
}

/// All inodes of a mount, plus the maps that make hard links share one inode.
#[derive(Debug, Default)]
pub(super) struct InodeTable {
    fixed: Vec<Inode>,
    /// Blocks in allocation order, so sorted by `first`.
    blocks: Vec<Block>,
    /// Directory inode number to the index of its entries' block.
    children: HashMap<u64, usize>,
    /// (snapshot folder inode, `dev`, `inode` at backup time) to the shared inode
    /// number, for regular files with a link count above 1.
    hard_links: HashMap<(u64, u64, u64), u64>,
    /// Inode numbers of hard links that are served as another number.
    aliases: HashMap<u64, u64>,
}

impl InodeTable {
    /// Appends an inode built at mount time and returns its number. Only valid
    /// before any directory's entries are attached.
    pub fn push(&mut self, parent: u64, kind: InodeKind) -> u64 {
        assert!(self.blocks.is_empty(), "mount-time inodes come first");
        self.fixed.push(Inode { parent, kind });
        self.fixed.len() as u64
    }

    /// Replaces an inode's kind, while the top-level folders are built.
    pub fn set_kind(&mut self, ino: u64, kind: InodeKind) {
        self.fixed[index(ino)].kind = kind;
    }

    /// Returns the number of inode numbers handed out, aliases included.
    pub fn len(&self) -> u64 {
        self.next() - 1
    }

    fn next(&self) -> u64 {
        self.blocks
            .last()
            .map_or(self.fixed.len() as u64 + 1, |b| b.first + u64::from(b.len))
    }

    /// Returns an inode built at mount time by number.
    pub fn get(&self, ino: u64) -> Option<&Inode> {
        let i = usize::try_from(ino).ok()?.checked_sub(1)?;
        self.fixed.get(i)
    }

    /// Returns what the table holds for an inode number. An alias is returned as
    /// the entry it is, unresolved.
    pub fn slot(&self, ino: u64) -> Option<Slot<'_>> {
        if let Some(inode) = self.get(ino) {
            return Some(Slot::Fixed(inode));
        }
        let i = self
            .blocks
            .partition_point(|b| b.first <= ino)
            .checked_sub(1)?;
        let block = &self.blocks[i];
        let index = ino.checked_sub(block.first)?;
        (index < u64::from(block.len)).then_some(Slot::Entry {
            tree: block.tree,
            index: index as u32,
            parent: block.dir,
        })
    }

    /// Returns the inode number to give the kernel for a slot: the number of the
    /// first hard link found for an alias, or the slot itself.
    pub fn resolve(&self, ino: u64) -> u64 {
        self.aliases.get(&ino).copied().unwrap_or(ino)
    }

    /// Returns the tree id and first inode number of a directory's entries, if
    /// they are attached.
    pub fn children(&self, dir: u64) -> Option<(TreeId, u64)> {
        let block = &self.blocks[*self.children.get(&dir)?];
        Some((block.tree, block.first))
    }

    /// Numbers the entries of a snapshot directory, unless another thread already
    /// did, and returns the number of the first. `dir` must be a snapshot folder
    /// or a directory entry, and `tree` the tree with id `tree_id`.
    pub fn attach_children(&mut self, dir: u64, tree_id: TreeId, tree: &Tree) -> u64 {
        if let Some(&existing) = self.children.get(&dir) {
            return self.blocks[existing].first;
        }
        let root = match self.slot(dir) {
            Some(Slot::Fixed(Inode {
                kind: InodeKind::SnapshotRoot { .. },
                ..
            })) => dir,
            Some(Slot::Entry { .. }) => {
                let i = self.blocks.partition_point(|b| b.first <= dir) - 1;
                self.blocks[i].root
            }
            other => panic!("inode {dir} is not a snapshot directory: {other:?}"),
        };

        let first = self.next();
        let len = u32::try_from(tree.nodes.len()).expect("a tree has fewer than 2^32 entries");
        for (i, node) in tree.nodes.iter().enumerate() {
            if shares_inode(node) {
                let ino = first + i as u64;
                match self.hard_links.entry((root, node.dev, node.inode)) {
                    Entry::Occupied(existing) => {
                        self.aliases.insert(ino, *existing.get());
                    }
                    Entry::Vacant(slot) => {
                        slot.insert(ino);
                    }
                }
            }
        }
        self.blocks.push(Block {
            first,
            len,
            tree: tree_id,
            dir,
            root,
        });
        self.children.insert(dir, self.blocks.len() - 1);
        first
    }
}

fn index(ino: u64) -> usize {
    usize::try_from(ino - 1).expect("inode number fits in usize")
}

/// Returns true for a node that must share its inode with its other hard links.
pub(super) fn shares_inode(node: &Node) -> bool {
    node.kind == NodeKind::File && node.nlink > 1
}

/// Returns the FUSE file type of a tree entry.
pub(super) fn file_type(kind: NodeKind) -> FileType {
    match kind {
        NodeKind::File => FileType::RegularFile,
        NodeKind::Dir => FileType::Directory,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::Fifo => FileType::NamedPipe,
        NodeKind::Socket => FileType::Socket,
        NodeKind::CharDevice => FileType::CharDevice,
        NodeKind::BlockDevice => FileType::BlockDevice,
    }
}

/// Encodes a Linux `st_rdev` (glibc's 64-bit `dev_t`) in the kernel's 32-bit
/// `new_encode_dev` format, which is what the FUSE protocol carries.
pub(super) fn encode_rdev(rdev: u64) -> u32 {
    let major = libc::major(rdev);
    let minor = libc::minor(rdev);
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// Returns the number of 512-byte blocks that a file's stored data covers.
/// Holes take none.
pub(super) fn data_blocks(content: &[Extent]) -> u64 {
    let data: u64 = content
        .iter()
        .map(|extent| match extent {
            Extent::Data { len, .. } => u64::from(*len),
            Extent::Hole { .. } => 0,
        })
        .sum();
    data.div_ceil(512)
}

/// Returns the attributes of a tree entry.
pub(super) fn node_attr(ino: u64, node: &Node) -> FileAttr {
    let mtime = node.mtime.to_system_time();
    let (size, blocks) = match node.kind {
        NodeKind::File => (node.size, data_blocks(&node.content)),
        NodeKind::Symlink => (node.target.len() as u64, 0),
        _ => (0, 0),
    };
    let nlink = if node.kind == NodeKind::Dir {
        2
    } else if shares_inode(node) {
        u32::try_from(node.nlink).unwrap_or(u32::MAX)
    } else {
        1
    };
    let rdev = match node.kind {
        NodeKind::CharDevice | NodeKind::BlockDevice => encode_rdev(node.rdev),
        _ => 0,
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks,
        atime: mtime,
        mtime,
        ctime: node.ctime.to_system_time(),
        crtime: mtime,
        kind: file_type(node.kind),
        perm: (node.mode & 0o7777) as u16,
        nlink,
        uid: node.uid,
        gid: node.gid,
        rdev,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

/// Returns the attributes of a directory or symbolic link made by the mount
/// itself, owned by the user who mounted.
pub(super) fn synthetic_attr(
    ino: u64,
    kind: FileType,
    size: u64,
    mtime: Timestamp,
    owner: (u32, u32),
) -> FileAttr {
    let time = mtime.to_system_time();
    let (perm, nlink) = match kind {
        FileType::Directory => (0o555, 2),
        _ => (0o777, 1),
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: 0,
        atime: time,
        mtime: time,
        ctime: time,
        crtime: time,
        kind,
        perm,
        nlink,
        uid: owner.0,
        gid: owner.1,
        rdev: 0,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

/// Returns the cache lifetime of an inode's entry and attributes: long inside a
/// snapshot, which never changes, short for the top-level folders.
pub(super) fn ttl(inode: &Inode) -> Duration {
    if inode.is_in_snapshot() {
        Duration::from_secs(3600)
    } else {
        Duration::from_secs(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{ChunkId, TreeId};

    fn file(name: &str, dev: u64, inode: u64, nlink: u64) -> Node {
        let mut node = Node::new(name.as_bytes().to_vec(), NodeKind::File);
        node.dev = dev;
        node.inode = inode;
        node.nlink = nlink;
        node
    }

    fn table_with_snapshot() -> (InodeTable, u64) {
        let mut table = InodeTable::default();
        let root = table.push(ROOT_INO, InodeKind::Latest(Arc::from(&b"x"[..])));
        let snapshot = table.push(
            root,
            InodeKind::SnapshotRoot {
                snapshot: 0,
                name: Arc::from(&b"s"[..]),
            },
        );
        (table, snapshot)
    }

    #[test]
    fn hard_links_share_inode_within_snapshot() {
        let (mut table, snapshot) = table_with_snapshot();
        let mut dir = Node::new(b"d".to_vec(), NodeKind::Dir);
        dir.subtree = Some(TreeId([1; 32]));
        let tree = Arc::new(Tree {
            nodes: vec![file("a", 5, 77, 2), dir, file("z", 5, 77, 2)],
        });
        let first = table.attach_children(snapshot, TreeId([2; 32]), &tree);
        let a = table.resolve(first);
        let z = table.resolve(first + 2);
        assert_eq!(a, first);
        assert_eq!(z, a);

        let sub = Arc::new(Tree {
            nodes: vec![file("b", 5, 77, 2), file("c", 5, 78, 1)],
        });
        let sub_first = table.attach_children(first + 1, TreeId([3; 32]), &sub);
        assert_eq!(table.resolve(sub_first), a);
        assert_eq!(table.resolve(sub_first + 1), sub_first + 1);
        match table.slot(sub_first + 1) {
            Some(Slot::Entry {
                tree,
                index,
                parent,
            }) => {
                assert_eq!(tree, TreeId([3; 32]));
                assert_eq!(index, 1);
                assert_eq!(parent, first + 1);
            }
            other => panic!("unexpected slot {other:?}"),
        }
        assert!(table.slot(sub_first + 2).is_none());
    }

    #[test]
    fn hard_links_differ_between_snapshots() {
        let (mut table, first_snapshot) = table_with_snapshot();
        let second_snapshot = table.push(
            ROOT_INO,
            InodeKind::SnapshotRoot {
                snapshot: 1,
                name: Arc::from(&b"t"[..]),
            },
        );
        let tree = Arc::new(Tree {
            nodes: vec![file("a", 5, 77, 2)],
        });
        let one = table.attach_children(first_snapshot, TreeId([4; 32]), &tree);
        let two = table.attach_children(second_snapshot, TreeId([4; 32]), &tree);
        assert_ne!(table.resolve(one), table.resolve(two));
    }

    #[test]
    fn single_link_files_get_own_inodes() {
        let (mut table, snapshot) = table_with_snapshot();
        let tree = Arc::new(Tree {
            nodes: vec![file("a", 5, 77, 1), file("b", 5, 77, 1)],
        });
        let first = table.attach_children(snapshot, TreeId([5; 32]), &tree);
        assert_ne!(table.resolve(first), table.resolve(first + 1));
    }

    #[test]
    fn attach_children_twice_keeps_numbers() {
        let (mut table, snapshot) = table_with_snapshot();
        let tree = Arc::new(Tree {
            nodes: vec![file("a", 1, 2, 1)],
        });
        let first = table.attach_children(snapshot, TreeId([6; 32]), &tree);
        let len = table.len();
        let second = table.attach_children(snapshot, TreeId([6; 32]), &tree);
        assert_eq!(first, second);
        assert_eq!(table.len(), len);
    }

    #[test]
    fn get_rejects_out_of_range() {
        let (table, _) = table_with_snapshot();
        assert!(table.slot(0).is_none());
        assert!(table.slot(3).is_none());
        assert!(table.slot(u64::MAX).is_none());
    }

    #[test]
    fn rdev_encoding_matches_kernel() {
        // Linux new_encode_dev: minor low byte, 12-bit major, minor high bits.
        assert_eq!(encode_rdev(libc::makedev(8, 1)), 0x801);
        assert_eq!(encode_rdev(libc::makedev(1, 3)), 0x103);
        assert_eq!(encode_rdev(libc::makedev(259, 0x12345)), 0x1231_0345);
    }

    #[test]
    fn blocks_count_only_data() {
        let content = [
            Extent::Data {
                id: ChunkId([0; 32]),
                len: 1000,
            },
            Extent::Hole { len: 1 << 30 },
            Extent::Data {
                id: ChunkId([1; 32]),
                len: 25,
            },
        ];
        assert_eq!(data_blocks(&content), 3);
        assert_eq!(data_blocks(&[]), 0);
    }

    #[test]
    fn node_attr_fields() {
        let mut node = file("f", 1, 2, 3);
        node.mode = 0o4755;
        node.uid = 1000;
        node.gid = 100;
        node.size = 1000;
        node.mtime = Timestamp {
            secs: 1_700_000_000,
            nanos: 123,
        };
        node.content = vec![Extent::Data {
            id: ChunkId([0; 32]),
            len: 1000,
        }];
        let attr = node_attr(42, &node);
        assert_eq!(attr.ino, INodeNo(42));
        assert_eq!(attr.kind, FileType::RegularFile);
        assert_eq!(attr.perm, 0o4755);
        assert_eq!(attr.nlink, 3);
        assert_eq!(attr.uid, 1000);
        assert_eq!(attr.gid, 100);
        assert_eq!(attr.size, 1000);
        assert_eq!(attr.blocks, 2);
        assert_eq!(attr.mtime, node.mtime.to_system_time());
        assert_eq!(attr.atime, attr.mtime);
        assert_eq!(attr.blksize, BLOCK_SIZE);
    }

    #[test]
    fn node_attr_symlink_and_device() {
        let mut link = Node::new(b"l".to_vec(), NodeKind::Symlink);
        link.target = b"../target".to_vec();
        link.mode = 0o777;
        let attr = node_attr(7, &link);
        assert_eq!(attr.kind, FileType::Symlink);
        assert_eq!(attr.size, 9);
        assert_eq!(attr.nlink, 1);

        let mut device = Node::new(b"sda".to_vec(), NodeKind::BlockDevice);
        device.rdev = libc::makedev(8, 0);
        device.nlink = 2;
        let attr = node_attr(8, &device);
        assert_eq!(attr.kind, FileType::BlockDevice);
        assert_eq!(attr.rdev, 0x800);
        assert_eq!(attr.nlink, 1);
    }
}
