//! Repairing a damaged repository: rebuilding the index from the packs, and
//! writing new snapshots in which damaged files are set apart.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::id::{SnapshotId, TreeId};
use crate::repository::index::IndexRecord;
use crate::repository::{RepoError, Repository};
use crate::tree::{Extent, Node, NodeKind, Tree, Xattr};

/// Suffix added to the name of a file or directory whose data was lost.
pub const DAMAGED_SUFFIX: &str = ".damaged";
/// Extended attribute that lists what was lost, set on repaired entries.
pub const DAMAGED_XATTR: &str = "user.cairn.damaged";

/// Outcome of `repair_index`.
#[derive(Debug, Default)]
pub struct IndexRepair {
    /// Packs whose header was read and indexed.
    pub packs_indexed: u64,
    /// Packs whose header could not be read, with the reason; their blobs are lost.
    pub packs_unreadable: Vec<String>,
    /// Blobs in the new index.
    pub blobs: u64,
}

/// Rebuilds the index from the headers of all packs and replaces the old index
/// files. Holds the exclusive lock.
pub fn repair_index(repo: &Repository, lock_wait: Duration) -> Result<IndexRepair, RepoError> {
    let lock = repo.lock_exclusive("repair index", lock_wait)?;
    let mut outcome = IndexRepair::default();
    let old_files = repo.list_index_files()?;
    let mut records = Vec::new();
    for pack in repo.list_packs()? {
        let result = repo
            .read_pack_header(&pack)
            .map(|entries| IndexRecord { pack, entries })
            .map_err(|e| e.to_string());
        match result {
            Ok(record) => {
                outcome.packs_indexed += 1;
                outcome.blobs += record.entries.len() as u64;
                records.push(record);
            }
            Err(reason) => outcome
                .packs_unreadable
                .push(format!("pack {pack}: {reason}")),
        }
    }
    lock.check()?;
    for batch in records.chunks(4096) {
        repo.write_index_file(batch)?;
    }
    for id in old_files {
        repo.backend().remove(&format!("index/{id}"))?;
    }
    repo.load_index()?;
    Ok(outcome)
}

/// One snapshot that `repair_snapshots` replaced.
#[derive(Debug)]
pub struct SnapshotRepair {
    /// The damaged snapshot.
    pub old: SnapshotId,
    /// The repaired snapshot that replaces it.
    pub new: SnapshotId,
    /// Paths set apart, each with what was lost.
    pub damaged: Vec<String>,
}

/// Writes, for each snapshot that refers to lost data, a new snapshot in which
/// every damaged file keeps its intact bytes, has holes where data was lost, is
/// renamed with the suffix `.damaged` and carries the attribute
/// `user.cairn.damaged` listing the lost byte ranges. A directory whose tree is
/// lost becomes an empty directory renamed the same way. The new snapshot gets
/// the tag `repaired` and the old one as parent. Old snapshots are deleted only
/// with `forget_damaged`.
///
/// `bad_blobs` adds blobs known to be damaged (from reading the packs) to those
/// missing from the index.
pub fn repair_snapshots(
    repo: &Repository,
    bad_blobs: &HashSet<[u8; 32]>,
    forget_damaged: bool,
    lock_wait: Duration,
) -> Result<Vec<SnapshotRepair>, RepoError> {
    let lock = repo.lock_shared("repair snapshots", lock_wait)?;
    let writer = repo.blob_writer();
    let mut rewritten: HashMap<TreeId, (TreeId, Vec<String>)> = HashMap::new();
    let mut pending = Vec::new();
    let stored_packs: HashSet<_> = repo.list_packs()?.into_iter().collect();
    let snapshots = repo.snapshots()?;
    for (id, snapshot) in &snapshots {
        let (id, snapshot) = (*id, snapshot.clone());
        let mut rewrite = Rewrite {
            repo,
            writer: &writer,
            bad_blobs,
            stored_packs: &stored_packs,
            memo: &mut rewritten,
        };
        let (tree, damaged) = rewrite.tree(&snapshot.tree, b"")?;
        // A repaired copy from an earlier run is not written again.
        let done = snapshots
            .iter()
            .any(|(_, s)| s.parent == Some(id) && s.tree == tree);
        if tree != snapshot.tree && !done {
            pending.push((id, snapshot, tree, damaged));
        }
    }
    writer.finish()?;
    lock.check()?;
    let mut repairs = Vec::new();
    for (old, mut snapshot, tree, damaged) in pending {
        snapshot.tree = tree;
        snapshot.parent = Some(old);
        // One nanosecond later than the damaged original, so that `latest` and
        // every listing order the repaired copy after it.
        snapshot.time = crate::tree::Timestamp {
            secs: snapshot.time.secs + i64::from(snapshot.time.nanos == 999_999_999),
            nanos: (snapshot.time.nanos + 1) % 1_000_000_000,
        };
        if !snapshot.tags.iter().any(|t| t == "repaired") {
            snapshot.tags.push("repaired".into());
        }
        let (new, _) = repo.save_snapshot(&snapshot)?;
        if forget_damaged {
            repo.backend().remove(&format!("snapshots/{old}"))?;
        }
        repairs.push(SnapshotRepair { old, new, damaged });
    }
    Ok(repairs)
}

struct Rewrite<'a, 'w> {
    repo: &'a Repository,
    writer: &'w crate::repository::BlobWriter<'a>,
    bad_blobs: &'w HashSet<[u8; 32]>,
    stored_packs: &'w HashSet<crate::id::PackId>,
    memo: &'w mut HashMap<TreeId, (TreeId, Vec<String>)>,
}

impl Rewrite<'_, '_> {
    fn lost(&self, id: &[u8; 32]) -> bool {
        if self.bad_blobs.contains(id) {
            return true;
        }
        match self.repo.index().get(id) {
            Some(location) => !self.stored_packs.contains(&location.pack),
            None => true,
        }
    }

    /// Returns the repaired tree's id (equal to `id` when nothing was lost) and
    /// the damaged paths below it.
    fn tree(&mut self, id: &TreeId, dir: &[u8]) -> Result<(TreeId, Vec<String>), RepoError> {
        if let Some(done) = self.memo.get(id) {
            return Ok(done.clone());
        }
        let tree = self.repo.load_tree(id)?;
        let mut nodes = Vec::with_capacity(tree.nodes.len());
        let mut damaged = Vec::new();
        let mut changed = false;
        for node in &tree.nodes {
            let mut path = dir.to_vec();
            path.push(b'/');
            path.extend_from_slice(&node.name);
            let mut node = node.clone();
            match node.kind {
                NodeKind::Dir => {
                    let Some(sub) = node.subtree else {
                        nodes.push(node);
                        continue;
                    };
                    if self.lost(&sub.0) {
                        node.subtree = Some(self.writer.store_tree(&Tree::default())?);
                        mark_damaged(&mut node, "directory contents lost".into());
                        damaged.push(format!("{} (directory contents lost)", escape(&path)));
                        changed = true;
                    } else {
                        let (new_sub, below) = self.tree(&sub, &path)?;
                        if new_sub != sub {
                            node.subtree = Some(new_sub);
                            changed = true;
                        }
                        damaged.extend(below);
                    }
                }
                NodeKind::File => {
                    let mut offset = 0u64;
                    let mut ranges = Vec::new();
                    for extent in node.content.iter_mut() {
                        let len = extent.len();
                        if let Extent::Data { id, .. } = extent
                            && self.lost(&id.0)
                        {
                            ranges.push(format!("{offset}-{}", offset + len));
                            *extent = Extent::Hole { len };
                        }
                        offset += len;
                    }
                    if !ranges.is_empty() {
                        let lost = format!("bytes {} lost", ranges.join(","));
                        damaged.push(format!("{} ({lost})", escape(&path)));
                        mark_damaged(&mut node, lost);
                        changed = true;
                    }
                }
                _ => {}
            }
            nodes.push(node);
        }
        let new_id = if changed {
            make_names_unique(&mut nodes);
            self.writer.store_tree(&Tree { nodes })?
        } else {
            *id
        };
        self.memo.insert(*id, (new_id, damaged.clone()));
        Ok((new_id, damaged))
    }
}

fn mark_damaged(node: &mut Node, what: String) {
    node.name.extend_from_slice(DAMAGED_SUFFIX.as_bytes());
    node.xattrs.retain(|x| x.name != DAMAGED_XATTR.as_bytes());
    node.xattrs.push(Xattr {
        name: DAMAGED_XATTR.as_bytes().to_vec(),
        value: what.into_bytes(),
    });
    node.xattrs.sort_by(|a, b| a.name.cmp(&b.name));
}

/// Sorts the nodes and appends the damaged suffix again to any renamed entry
/// whose new name an existing entry already has, so that no entry is dropped.
fn make_names_unique(nodes: &mut [Node]) {
    loop {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let mut clash = false;
        for i in 1..nodes.len() {
            if nodes[i].name == nodes[i - 1].name {
                let renamed = if nodes[i].name.ends_with(DAMAGED_SUFFIX.as_bytes())
                    && nodes[i]
                        .xattrs
                        .iter()
                        .any(|x| x.name == DAMAGED_XATTR.as_bytes())
                {
                    i
                } else {
                    i - 1
                };
                nodes[renamed]
                    .name
                    .extend_from_slice(DAMAGED_SUFFIX.as_bytes());
                clash = true;
            }
        }
        if !clash {
            return;
        }
    }
}

fn escape(path: &[u8]) -> String {
    crate::display::escape_path(path)
}
