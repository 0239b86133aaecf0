//! Turning `incoming/` into a snapshot at unmount.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Entries, INCOMING_INO, Overlay, Table, WInode};
use crate::id::{SnapshotId, TreeId};
use crate::repository::RepoError;
use crate::repository::lock::LockGuard;
use crate::snapshot::{BackupSummary, Snapshot};
use crate::tree::{Node, NodeKind, Timestamp, Tree};

/// Tag of every snapshot that a write-through mount saves.
pub const WRITE_THROUGH_TAG: &str = "write-through";

/// The result of the commit at unmount.
#[derive(Debug)]
pub struct CommitOutcome {
    /// The snapshot that `incoming/` started from.
    pub parent: Option<SnapshotId>,
    /// The new snapshot, or `None` when nothing in `incoming/` changed.
    pub saved: Option<(SnapshotId, Snapshot)>,
}

impl Overlay {
    /// Stores what is left in staging files, builds trees for the changed
    /// directories, writes the open packs and, if anything changed, saves a
    /// snapshot whose parent is the snapshot `incoming/` started from. Call it
    /// once, after the file system was unmounted.
    pub(crate) fn commit(&self, lock: &LockGuard) -> Result<CommitOutcome, RepoError> {
        self.store_all_staged()?;
        let parent_id = self.parent.as_ref().map(|(id, _)| *id);

        let table = self.lock();
        let rewrites: HashMap<(u64, u64), &WInode> = table
            .inodes()
            .filter_map(|(_, inode)| {
                let key = inode.link_key?;
                inode.node.is_owned().then_some((key, inode))
            })
            .collect();
        let mut builder = Builder {
            overlay: self,
            table: &table,
            rewrites,
            dirs_stored: 0,
            bytes_delta: 0,
        };
        let (root, changed) = builder.build_dir(INCOMING_INO)?;
        let dirs_stored = builder.dirs_stored;
        let mut bytes_delta = builder.bytes_delta;
        // Removed directories were emptied first, so each entry of their base
        // tree was removed while they were loaded.
        for (_, inode) in table.inodes() {
            if let Some(state) = inode.dir.as_deref()
                && state.removed
                && let Some(base) = &state.base
            {
                bytes_delta -= i128::from(file_bytes(&base.nodes));
            }
        }
        let (files_new, files_changed) = count_files(&table);
        drop(table);

        let mut bytes_added = self.store.finish()?;
        if let Some(failure) = self.store.failure() {
            return Err(RepoError::Io(std::io::Error::other(format!(
                "storing data from incoming/ failed earlier ({failure}); no snapshot was saved, and the changes made in incoming/ during this mount are lost: fix the cause, mount again and write them again"
            ))));
        }
        if !changed {
            return Ok(CommitOutcome {
                parent: parent_id,
                saved: None,
            });
        }

        let parent = self.parent.as_ref().map(|(_, snapshot)| snapshot);
        let parent_total = parent.map_or(0, |p| p.summary.total_bytes);
        let total_bytes = (i128::from(parent_total) + bytes_delta).max(0);
        let mut snapshot = Snapshot {
            time: Timestamp::now(),
            hostname: parent.map_or_else(crate::backup::local_hostname, |p| p.hostname.clone()),
            username: crate::meta::current_user_name(),
            paths: parent.map_or_else(|| vec![b"/".to_vec()], |p| p.paths.clone()),
            tree: root,
            parent: parent_id,
            original: None,
            tags: vec![WRITE_THROUGH_TAG.to_string()],
            incomplete: false,
            program_version: env!("CARGO_PKG_VERSION").to_string(),
            summary: BackupSummary {
                files_new,
                files_changed,
                // NOTE: unchanged files are not counted, because that would
                // need every tree of the parent to be read.
                files_unchanged: 0,
                dirs: dirs_stored,
                errors: 0,
                bytes_read: self.bytes_chunked.load(Ordering::Relaxed),
                bytes_added: 0,
                total_bytes: u64::try_from(total_bytes).unwrap_or(u64::MAX),
                duration_ms: self.started.elapsed().as_millis() as u64,
                // Counting would also need every tree of the parent.
                xattr_entries: None,
            },
        };
        // As in a backup, the snapshot's own size is estimated from its encoding.
        bytes_added += snapshot.encode().len() as u64 + crate::crypto::SEAL_OVERHEAD as u64;
        snapshot.summary.bytes_added = bytes_added;
        lock.check()?;
        let (id, _) = self.repo.save_snapshot(&snapshot)?;
        Ok(CommitOutcome {
            parent: parent_id,
            saved: Some((id, snapshot)),
        })
    }

    /// Stores every file whose bytes are still in a staging file: the kernel
    /// drops release requests that are queued when the file system is
    /// unmounted, so some files may never have seen their last release.
    fn store_all_staged(&self) -> Result<(), RepoError> {
        let staged: Vec<(u64, Arc<std::sync::Mutex<super::FileIo>>)> = self
            .lock()
            .inodes()
            .filter_map(|(ino, inode)| Some((ino, inode.io.clone()?)))
            .collect();
        for (ino, io) in staged {
            let mut io = io.lock().expect("file io lock");
            io.writers = 0;
            self.store_staged(ino, &mut io)?;
        }
        Ok(())
    }
}

/// Returns the number of regular files created, and of files of the parent
/// whose content was replaced, that are still linked.
fn count_files(table: &Table) -> (u64, u64) {
    let mut created = 0;
    let mut changed = 0;
    for (_, inode) in table.inodes() {
        if inode.kind() != NodeKind::File || inode.nlink == 0 {
            continue;
        }
        if inode.created {
            created += 1;
        } else if inode.content_changed {
            changed += 1;
        }
    }
    (created, changed)
}

/// Returns the sum of the sizes of the regular files among `nodes`.
fn file_bytes(nodes: &[Node]) -> u64 {
    nodes
        .iter()
        .filter(|node| node.kind == NodeKind::File)
        .map(|node| node.size)
        .sum()
}

struct Builder<'a> {
    overlay: &'a Overlay,
    table: &'a Table,
    /// Changed hard-linked files of the parent, by their `(dev, inode)`: their
    /// links in directories that were never loaded must change with them.
    rewrites: HashMap<(u64, u64), &'a WInode>,
    dirs_stored: u64,
    /// Change of the total size of all regular files, hard links counted per link.
    bytes_delta: i128,
}

impl Builder<'_> {
    /// Returns the tree of a directory and whether it differs from the tree
    /// the directory started with. Only changed trees are stored.
    fn build_dir(&mut self, ino: u64) -> Result<(TreeId, bool), RepoError> {
        let table = self.table;
        let inode = table.get(ino).map_err(|_| missing(ino))?;
        let state = inode.dir.as_deref().ok_or_else(|| missing(ino))?;
        let base_id = inode.node.get().subtree;

        let nodes = match &state.entries {
            Entries::Unloaded => {
                let id = base_id.unwrap_or_else(|| self.empty_tree_id());
                if self.rewrites.is_empty() {
                    return Ok((id, false));
                }
                return self.rewrite_unloaded(&id);
            }
            Entries::Base { .. } | Entries::Map(_) => {
                let mut nodes = Vec::new();
                let mut offset = 0;
                loop {
                    let batch = table.entries_after(ino, offset, 4096);
                    let Some(last) = batch.last() else {
                        break;
                    };
                    offset = last.0;
                    for (_, name, child) in batch {
                        nodes.push(self.entry_node(child, name)?);
                    }
                }
                nodes.sort_unstable_by(|a, b| a.name.cmp(&b.name));
                nodes
            }
        };

        let base_nodes: &[Node] = state.base.as_ref().map_or(&[], |tree| &tree.nodes);
        self.bytes_delta += i128::from(file_bytes(&nodes)) - i128::from(file_bytes(base_nodes));
        if let Some(id) = base_id
            && state.base.is_some()
            && nodes == base_nodes
        {
            return Ok((id, false));
        }
        if base_id.is_none() && nodes.is_empty() && ino == INCOMING_INO {
            // An empty repository whose incoming/ stayed empty.
            return Ok((self.empty_tree_id(), false));
        }
        let id = self.overlay.store.store_tree(Tree { nodes })?;
        self.dirs_stored += 1;
        Ok((id, true))
    }

    /// Returns the tree entry for inode `ino` under `name`.
    fn entry_node(&mut self, ino: u64, name: Vec<u8>) -> Result<Node, RepoError> {
        let inode = self.table.get(ino).map_err(|_| missing(ino))?;
        let mut node = inode.node.get().clone();
        node.name = name;
        if node.kind == NodeKind::Dir {
            node.subtree = Some(self.build_dir(ino)?.0);
        } else if inode.node.is_owned() {
            node.nlink = inode.nlink.max(1);
        }
        Ok(node)
    }

    /// Returns a tree that was never loaded, with the links of changed
    /// hard-linked files replaced. This reads every tree below it.
    fn rewrite_unloaded(&mut self, id: &TreeId) -> Result<(TreeId, bool), RepoError> {
        let tree = self.overlay.repo.load_tree(id)?;
        let mut nodes = Vec::with_capacity(tree.nodes.len());
        let mut changed = false;
        for node in &tree.nodes {
            let mut node = node.clone();
            match node.kind {
                NodeKind::Dir => {
                    if let Some(sub) = node.subtree {
                        let (new, sub_changed) = self.rewrite_unloaded(&sub)?;
                        node.subtree = Some(new);
                        changed |= sub_changed;
                    }
                }
                NodeKind::File if node.nlink > 1 => {
                    if let Some(inode) = self.rewrites.get(&(node.dev, node.inode)) {
                        let mut replacement = inode.node.get().clone();
                        replacement.name = node.name.clone();
                        replacement.nlink = inode.nlink.max(1);
                        self.bytes_delta += i128::from(replacement.size) - i128::from(node.size);
                        changed |= replacement != node;
                        node = replacement;
                    }
                }
                _ => {}
            }
            nodes.push(node);
        }
        if !changed {
            return Ok((*id, false));
        }
        let id = self.overlay.store.store_tree(Tree { nodes })?;
        self.dirs_stored += 1;
        Ok((id, true))
    }

    fn empty_tree_id(&self) -> TreeId {
        self.overlay.repo.keys().tree_id(&Tree::default().encode())
    }
}

fn missing(ino: u64) -> RepoError {
    RepoError::Io(std::io::Error::other(format!(
        "inode {ino} of incoming/ is missing from the inode table"
    )))
}
