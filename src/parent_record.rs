//! The trees of a backup-only key's last snapshot, kept on the client.
//!
//! A backup-only key cannot open the trees it stored, so it could not compare
//! files with its previous snapshot and would read every file again. Instead,
//! after each complete backup it keeps that snapshot's trees in a file in the
//! state directory (see [`crate::audit::state::state_dir`]):
//!
//! ```text
//! parents/<32 hex of the repository id>-<32 hex of a hash of key name, host and paths>
//!
//! offset  size  field
//! 0       8     magic "CAIRNPAR"
//! 8       4     version, u32 little endian (1)
//! 12      ...   zstd of postcard(Record)
//! ```
//!
//! The trees describe files of the client itself, which the client can read
//! anyway, so the file is not encrypted; it is created with mode 0600. Every
//! tree is checked against its keyed id when the file is read, and the file
//! only decides which files are read again: their chunks are still looked up
//! in the repository's index.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::crypto::Keys;
use crate::id::{SnapshotId, TreeId};
use crate::tree::Tree;

const MAGIC: &[u8; 8] = b"CAIRNPAR";
const VERSION: u32 = 1;
/// Largest record file read, 1 GiB of compressed trees.
const MAX_FILE_LEN: u64 = 1 << 30;

/// What the file stores.
#[derive(Serialize, Deserialize)]
struct Record {
    snapshot: SnapshotId,
    root: TreeId,
    trees: Vec<(TreeId, Vec<u8>)>,
}

/// The trees of the last snapshot that a backup-only key made of the same
/// paths on this host.
pub struct ParentTrees {
    /// The snapshot.
    pub snapshot: SnapshotId,
    /// Its root tree.
    pub root: TreeId,
    trees: HashMap<TreeId, Vec<u8>>,
}

/// Identifies the record of one key, host and set of paths in one repository.
pub struct RecordKey<'a> {
    /// Repository id.
    pub repo_id: [u8; 16],
    /// Name of the key slot.
    pub key_name: &'a str,
    /// Host name of the snapshots.
    pub hostname: &'a str,
    /// Backed-up paths, sorted.
    pub paths: &'a [Vec<u8>],
}

impl RecordKey<'_> {
    fn path(&self, dir: &Path) -> PathBuf {
        let mut hasher = blake3::Hasher::new_derive_key("cairn 2026-12 parent record name");
        for part in [self.key_name.as_bytes(), self.hostname.as_bytes()] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        for path in self.paths {
            hasher.update(&(path.len() as u64).to_le_bytes());
            hasher.update(path);
        }
        let hash = hasher.finalize();
        dir.join("parents").join(format!(
            "{}-{}",
            hex::encode(self.repo_id),
            hex::encode(&hash.as_bytes()[..16])
        ))
    }
}

impl ParentTrees {
    /// Reads the record of `key` from the state directory `dir`. A missing
    /// file is `None`; trees whose id does not match their bytes are left
    /// out, so the files below them are read again.
    pub fn load(dir: &Path, key: &RecordKey<'_>, keys: &Keys) -> io::Result<Option<Self>> {
        let path = key.path(dir);
        let invalid = |detail: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is not a valid record of the last backup ({detail}): this backup reads every file and then replaces it",
                    path.display()
                ),
            )
        };
        let bytes = match std::fs::metadata(&path) {
            Ok(meta) if meta.len() > MAX_FILE_LEN => {
                return Err(invalid(format!("{} bytes", meta.len())));
            }
            Ok(_) => std::fs::read(&path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        };
        if bytes.len() < 12 || &bytes[..8] != MAGIC {
            return Err(invalid("no magic".into()));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4-byte slice"));
        if version != VERSION {
            return Err(invalid(format!("version {version}")));
        }
        let plain = zstd::stream::decode_all(&bytes[12..]).map_err(|e| invalid(e.to_string()))?;
        let record: Record = postcard::from_bytes(&plain).map_err(|e| invalid(e.to_string()))?;
        let total = record.trees.len();
        let trees: HashMap<TreeId, Vec<u8>> = record
            .trees
            .into_iter()
            .filter(|(id, encoded)| keys.tree_id(encoded) == *id)
            .collect();
        if trees.len() != total {
            tracing::warn!(
                "{} of {total} trees in {} do not match their ids; the files below them are read again",
                total - trees.len(),
                path.display()
            );
        }
        Ok(Some(Self {
            snapshot: record.snapshot,
            root: record.root,
            trees,
        }))
    }

    /// Returns the tree `id`, or `None` when the record does not hold it.
    pub fn tree(&self, id: &TreeId) -> Option<Arc<Tree>> {
        let encoded = self.trees.get(id)?;
        Tree::decode(encoded).ok().map(Arc::new)
    }
}

/// Replaces the record of `key` with the trees reachable from `root` among
/// `trees`, the trees of snapshot `snapshot`.
pub fn store(
    dir: &Path,
    key: &RecordKey<'_>,
    snapshot: SnapshotId,
    root: TreeId,
    mut trees: HashMap<TreeId, Vec<u8>>,
) -> io::Result<()> {
    let mut kept = Vec::new();
    let mut pending = vec![root];
    while let Some(id) = pending.pop() {
        let Some(encoded) = trees.remove(&id) else {
            continue;
        };
        if let Ok(tree) = Tree::decode(&encoded) {
            pending.extend(tree.nodes.iter().filter_map(|node| node.subtree));
        }
        kept.push((id, encoded));
    }
    let record = Record {
        snapshot,
        root,
        trees: kept,
    };
    let plain = postcard::to_allocvec(&record).expect("parent record encodes");
    let path = key.path(dir);
    let parent = path.parent().expect("record path has a directory");
    std::fs::create_dir_all(parent)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", parent.display())))?;
    let mut file = tempfile::NamedTempFile::new_in(parent)?;
    file.write_all(MAGIC)?;
    file.write_all(&VERSION.to_le_bytes())?;
    zstd::stream::copy_encode(plain.as_slice(), &mut file, 3)?;
    file.as_file().sync_all()?;
    file.persist(&path)
        .map_err(|e| io::Error::new(e.error.kind(), format!("{}: {}", path.display(), e.error)))?;
    Ok(())
}
