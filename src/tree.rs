//! Directory trees: one encoded object per directory, entries sorted by name bytes.
//!
//! A tree is stored as a sealed postcard encoding of [`Tree`]. Its id is the keyed
//! BLAKE3 hash of that encoding, so an unchanged directory encodes to the same id
//! in every snapshot and is stored once.

use serde::{Deserialize, Serialize};

use crate::id::{ChunkId, TreeId};

/// Largest encoded tree accepted when reading, 256 MiB: about two million entries.
pub const MAX_TREE_LEN: usize = 256 << 20;

/// A point in time with nanosecond precision, seconds relative to the Unix epoch
/// (negative before 1970).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timestamp {
    /// Whole seconds since 1970-01-01 00:00:00 UTC.
    pub secs: i64,
    /// Nanoseconds, 0 to 999,999,999.
    pub nanos: u32,
}

impl Timestamp {
    /// Returns the current time.
    pub fn now() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            secs: now.as_secs() as i64,
            nanos: now.subsec_nanos(),
        }
    }

    /// Converts to `SystemTime`, also for times before 1970.
    pub fn to_system_time(self) -> std::time::SystemTime {
        use std::time::{Duration, UNIX_EPOCH};
        if self.secs >= 0 {
            UNIX_EPOCH + Duration::new(self.secs as u64, self.nanos)
        } else {
            UNIX_EPOCH - Duration::new(self.secs.unsigned_abs(), 0) + Duration::new(0, self.nanos)
        }
    }

    /// Formats as UTC `YYYY-MM-DDTHH:MM:SSZ`.
    pub fn to_rfc3339(self) -> String {
        chrono::DateTime::from_timestamp(self.secs, self.nanos)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_else(|| format!("{}s", self.secs))
    }
}

/// The type of a directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Unix domain socket.
    Socket,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
}

/// One piece of a regular file's content, in file order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Extent {
    /// A stored chunk and its plaintext length in bytes.
    Data {
        /// Chunk id.
        id: ChunkId,
        /// Plaintext length in bytes.
        len: u32,
    },
    /// A run of zero bytes that is not stored (a hole in a sparse file), in bytes.
    Hole {
        /// Length in bytes.
        len: u64,
    },
}

impl Extent {
    /// Returns the number of file bytes the extent covers.
    pub fn len(&self) -> u64 {
        match self {
            Extent::Data { len, .. } => u64::from(*len),
            Extent::Hole { len } => *len,
        }
    }

    /// Returns true for an extent that covers no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An extended attribute: name and value as raw bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Xattr {
    /// Full name including the namespace, such as `user.comment`.
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    /// Value bytes.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// One directory entry with all the metadata a restore brings back.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Node {
    /// File name as raw bytes; never contains `/` or NUL.
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    /// Entry type.
    pub kind: NodeKind,
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Owner name at backup time, if it resolved.
    pub user: Option<String>,
    /// Group name at backup time, if it resolved.
    pub group: Option<String>,
    /// Size in bytes of a regular file (sum of its extents); 0 for other types.
    pub size: u64,
    /// Modification time.
    pub mtime: Timestamp,
    /// Status change time, used only to detect unchanged files.
    pub ctime: Timestamp,
    /// Device the entry was on, used to detect unchanged files and hard links.
    pub dev: u64,
    /// Inode number at backup time, used to detect unchanged files and hard links.
    pub inode: u64,
    /// Link count at backup time.
    pub nlink: u64,
    /// Device number of a character or block device.
    pub rdev: u64,
    /// Target of a symbolic link, as raw bytes.
    #[serde(with = "serde_bytes")]
    pub target: Vec<u8>,
    /// Content of a regular file.
    pub content: Vec<Extent>,
    /// Tree of a directory.
    pub subtree: Option<TreeId>,
    /// Extended attributes, sorted by name; POSIX ACLs appear as
    /// `system.posix_acl_access` and `system.posix_acl_default`.
    pub xattrs: Vec<Xattr>,
}

impl Node {
    /// Creates a node of the given kind with empty metadata.
    pub fn new(name: Vec<u8>, kind: NodeKind) -> Self {
        Self {
            name,
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            user: None,
            group: None,
            size: 0,
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            dev: 0,
            inode: 0,
            nlink: 1,
            rdev: 0,
            target: Vec::new(),
            content: Vec::new(),
            subtree: None,
            xattrs: Vec::new(),
        }
    }
}

/// The entries of one directory, sorted by name bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// Entries in ascending byte order of their names.
    pub nodes: Vec<Node>,
}

/// Errors of tree decoding.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The bytes are not a valid tree encoding.
    #[error("malformed tree: {0}")]
    Malformed(String),
}

impl Tree {
    /// Encodes the tree; entries must already be sorted.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("tree encodes")
    }

    /// Decodes a tree and checks that names are valid and sorted without duplicates.
    pub fn decode(bytes: &[u8]) -> Result<Self, TreeError> {
        let tree: Tree =
            postcard::from_bytes(bytes).map_err(|e| TreeError::Malformed(e.to_string()))?;
        for node in &tree.nodes {
            if node.name.is_empty()
                || node.name.contains(&b'/')
                || node.name.contains(&0)
                || node.name == b"."
                || node.name == b".."
            {
                return Err(TreeError::Malformed(format!(
                    "invalid entry name {:?}",
                    String::from_utf8_lossy(&node.name)
                )));
            }
        }
        if tree.nodes.windows(2).any(|w| w[0].name >= w[1].name) {
            return Err(TreeError::Malformed(
                "entries not sorted or duplicated".into(),
            ));
        }
        Ok(tree)
    }

    /// Finds an entry by name with a binary search.
    pub fn find(&self, name: &[u8]) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| n.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_round_trip() {
        let mut file = Node::new(b"a\xffb".to_vec(), NodeKind::File);
        file.content = vec![
            Extent::Data {
                id: ChunkId([3; 32]),
                len: 10,
            },
            Extent::Hole { len: 1 << 40 },
        ];
        file.xattrs.push(Xattr {
            name: b"user.x".to_vec(),
            value: vec![0; 100],
        });
        let tree = Tree {
            nodes: vec![file, Node::new(b"b".to_vec(), NodeKind::Dir)],
        };
        assert_eq!(Tree::decode(&tree.encode()).unwrap(), tree);
    }

    #[test]
    fn tree_decode_rejects_unsorted_and_bad_names() {
        let unsorted = Tree {
            nodes: vec![
                Node::new(b"b".to_vec(), NodeKind::File),
                Node::new(b"a".to_vec(), NodeKind::File),
            ],
        };
        assert!(Tree::decode(&unsorted.encode()).is_err());
        let slash = Tree {
            nodes: vec![Node::new(b"a/b".to_vec(), NodeKind::File)],
        };
        assert!(Tree::decode(&slash.encode()).is_err());
        let dotdot = Tree {
            nodes: vec![Node::new(b"..".to_vec(), NodeKind::Dir)],
        };
        assert!(Tree::decode(&dotdot.encode()).is_err());
    }

    #[test]
    fn tree_decode_rejects_garbage() {
        assert!(Tree::decode(&[0xff; 40]).is_err());
    }

    #[test]
    fn timestamp_before_epoch() {
        let t = Timestamp {
            secs: -2,
            nanos: 500_000_000,
        };
        let st = t.to_system_time();
        let d = std::time::UNIX_EPOCH.duration_since(st).unwrap();
        assert_eq!(d.as_millis(), 1500);
    }
}
