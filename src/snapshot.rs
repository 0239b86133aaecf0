//! Snapshots: the small root object that records one backup run.

use serde::{Deserialize, Serialize};

use crate::id::{SnapshotId, TreeId};
use crate::tree::Timestamp;

/// Largest encoded snapshot accepted when reading, 16 MiB.
pub const MAX_SNAPSHOT_LEN: usize = 16 << 20;

/// Figures of one backup run, printed at the end and kept in the snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSummary {
    /// Files not in the parent snapshot.
    pub files_new: u64,
    /// Files in the parent snapshot whose metadata changed, so they were read.
    pub files_changed: u64,
    /// Files taken from the parent snapshot without reading them.
    pub files_unchanged: u64,
    /// Directories walked.
    pub dirs: u64,
    /// Entries that could not be read and are missing from the snapshot.
    pub errors: u64,
    /// Bytes read from files.
    pub bytes_read: u64,
    /// Bytes written to the repository (packs, index and snapshot).
    pub bytes_added: u64,
    /// Total size of all files in the snapshot.
    pub total_bytes: u64,
    /// Duration of the run in milliseconds.
    pub duration_ms: u64,
    /// Entries with extended attributes (ACLs included), or `None` where they were
    /// not counted. A mount serves no extended attributes at all when every
    /// snapshot counts zero, which spares a kernel round trip per `ls -l` entry.
    pub xattr_entries: Option<u64>,
}

/// One backup run: when, from where, of which paths, and its root tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Time the backup started.
    pub time: Timestamp,
    /// Host name of the machine that was backed up.
    pub hostname: String,
    /// User who ran the backup.
    pub username: String,
    /// Backed-up paths as given, made absolute, as raw bytes.
    pub paths: Vec<Vec<u8>>,
    /// Root tree: a directory tree that contains each path at its absolute location.
    pub tree: TreeId,
    /// Snapshot used to skip unchanged files, if any.
    pub parent: Option<SnapshotId>,
    /// For a snapshot written by `copy`: the id of the snapshot it copies, in
    /// the repository where that snapshot was first written. `None` for a
    /// snapshot written by a backup.
    pub original: Option<SnapshotId>,
    /// Free-form labels.
    pub tags: Vec<String>,
    /// True when some entries could not be read and are missing.
    pub incomplete: bool,
    /// Version of cairn that wrote the snapshot.
    pub program_version: String,
    /// Figures of the run.
    pub summary: BackupSummary,
}

impl Snapshot {
    /// Encodes the snapshot.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("snapshot encodes")
    }

    /// Decodes a snapshot.
    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// Returns the paths as displayable strings.
    pub fn paths_lossy(&self) -> Vec<String> {
        self.paths
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }
}
