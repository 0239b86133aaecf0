//! Removing data that no snapshot refers to.
//!
//! Prune holds the exclusive lock, so no backup runs while it decides what is
//! unused. Its steps, in an order that leaves a readable repository after a kill
//! at any point:
//!
//! 1. mark every blob reachable from a snapshot (any unreadable snapshot or tree
//!    stops the prune before anything is deleted);
//! 2. copy the used blobs of packs that are mostly unused into new packs;
//! 3. write index files that list every used blob, then delete all older index
//!    files;
//! 4. delete packs that hold no used blob, repacked packs, packs that no index
//!    lists (left by killed backups) and leftover temporary files.
//!
//! A kill before step 3 finishes leaves the old index files, which still point to
//! packs that all exist. A kill during step 4 leaves unreferenced packs, which the
//! next prune deletes.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::id::{PackId, TreeId};
use crate::progress::Progress;
use crate::repository::index::IndexRecord;
use crate::repository::pack::PackEntry;
use crate::repository::{RepoError, Repository, pack_path};
use crate::tree::{Extent, NodeKind};

/// Settings of a prune.
#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Repack a pack when more than this percentage of its bytes is unused.
    pub max_unused_percent: u8,
    /// Report what would be done without changing anything.
    pub dry_run: bool,
    /// How long to wait for running backups to finish.
    pub lock_wait: Duration,
}

impl Default for PruneOptions {
    fn default() -> Self {
        Self {
            max_unused_percent: 20,
            dry_run: false,
            lock_wait: Duration::from_secs(3600),
        }
    }
}

/// Outcome of a prune, or with `dry_run` the planned outcome.
#[derive(Debug, Default)]
pub struct PruneReport {
    /// Blobs that some snapshot uses.
    pub used_blobs: u64,
    /// Blobs no snapshot uses.
    pub unused_blobs: u64,
    /// Packs deleted because no blob in them is used.
    pub packs_deleted: u64,
    /// Packs whose used blobs were copied to new packs before deletion.
    pub packs_repacked: u64,
    /// Packs on storage that no index listed.
    pub packs_unindexed: u64,
    /// Bytes of packs and index files deleted.
    pub bytes_freed: u64,
    /// Bytes of new packs and index files written.
    pub bytes_written: u64,
}

/// Removes unused data; see the module documentation for the order of steps.
pub fn prune(repo: &Repository, options: &PruneOptions) -> Result<PruneReport, RepoError> {
    prune_with_progress(repo, options, &Progress::default())
}

/// Prunes like [`prune`] and counts trees marked, packs repacked and packs
/// deleted in `progress`, one step after the other.
pub fn prune_with_progress(
    repo: &Repository,
    options: &PruneOptions,
    progress: &Progress,
) -> Result<PruneReport, RepoError> {
    let lock = repo.lock_exclusive("prune", options.lock_wait)?;
    repo.load_index()?;
    let mut report = PruneReport::default();

    progress.start_phase("marking used trees");
    let used = mark(repo, progress)?;
    let old_index_files = repo.list_index_files()?;
    let stored_packs: HashSet<PackId> = repo.list_packs()?.into_iter().collect();

    // Per pack: used and unused bytes, and the used entries.
    let mut packs: HashMap<PackId, (u64, u64, Vec<PackEntry>)> = HashMap::new();
    for (id, location) in repo.index().iter() {
        let stats = packs.entry(location.pack).or_default();
        if used.contains(&id) && !stored_packs.contains(&location.pack) {
            return Err(RepoError::Damaged {
                object: format!("pack {}", location.pack.short()),
                detail: "it holds blobs that snapshots use but is missing; prune stopped before deleting anything (run `cairn check`, then `cairn repair index`)".into(),
            });
        }
        if used.contains(&id) {
            stats.0 += u64::from(location.len);
            stats.2.push(PackEntry {
                kind: location.kind,
                id,
                offset: location.offset,
                len: location.len,
                raw_len: location.raw_len,
            });
            report.used_blobs += 1;
        } else {
            stats.1 += u64::from(location.len);
            report.unused_blobs += 1;
        }
    }
    for id in &used {
        if !repo.index().contains(id) {
            return Err(RepoError::Damaged {
                object: format!("blob {}", hex::encode(&id[..4])),
                detail: "a snapshot uses it but no index lists it; prune stopped before deleting anything".into(),
            });
        }
    }

    let mut delete = Vec::new();
    let mut repack = Vec::new();
    for (pack, (used_bytes, unused_bytes, entries)) in &packs {
        if !stored_packs.contains(pack) {
            continue;
        }
        if *used_bytes == 0 {
            delete.push(*pack);
        } else if *unused_bytes * 100
            > (*used_bytes + *unused_bytes) * u64::from(options.max_unused_percent)
        {
            repack.push((*pack, entries.clone()));
        }
    }
    let unindexed: Vec<PackId> = stored_packs
        .iter()
        .filter(|p| !packs.contains_key(p))
        .copied()
        .collect();
    report.packs_deleted = delete.len() as u64;
    report.packs_repacked = repack.len() as u64;
    report.packs_unindexed = unindexed.len() as u64;
    if options.dry_run {
        return Ok(report);
    }
    if delete.is_empty() && repack.is_empty() && unindexed.is_empty() {
        remove_temporary_files(repo);
        return Ok(report);
    }

    // Step 2: sealed blobs do not depend on their pack, so they are copied as
    // they are, without decrypting.
    let writer = repo.blob_writer();
    progress.start_phase("repacking");
    progress.set_total_items(repack.len() as u64);
    for (pack, entries) in &repack {
        let bytes = repo.backend().read(&pack_path(pack))?;
        progress.add_items(1);
        progress.add_bytes(bytes.len() as u64);
        for entry in entries {
            let start = entry.offset as usize;
            let end = start + entry.len as usize;
            let sealed = bytes.get(start..end).ok_or_else(|| RepoError::Damaged {
                object: format!("pack {}", pack.short()),
                detail: format!("blob at {start}..{end} lies past the end of the pack"),
            })?;
            writer.add(entry.kind, entry.id, sealed, entry.raw_len)?;
        }
    }
    let (written, new_packs) = writer.finish_with_records()?;
    report.bytes_written += written;

    // Step 3: the in-memory index still maps repacked blobs to their old packs,
    // so the new packs' records are taken from the writer.
    let gone: HashSet<PackId> = delete
        .iter()
        .chain(repack.iter().map(|(p, _)| p))
        .copied()
        .collect();
    let mut records: Vec<IndexRecord> = packs
        .into_iter()
        .filter(|(pack, (_, _, entries))| {
            !gone.contains(pack) && stored_packs.contains(pack) && !entries.is_empty()
        })
        .map(|(pack, (_, _, entries))| IndexRecord { pack, entries })
        .collect();
    records.extend(new_packs);
    let current_index_files = repo.list_index_files()?;
    lock.check()?;
    for batch in records.chunks(4096) {
        report.bytes_written += repo.write_index_file(batch)?.1;
    }
    for id in old_index_files.iter().chain(&current_index_files) {
        let path = format!("index/{id}");
        if let Ok(size) = repo.backend().size(&path) {
            repo.backend().remove(&path)?;
            report.bytes_freed += size;
        }
    }

    // Step 4.
    progress.start_phase("deleting packs");
    progress.set_total_items((gone.len() + unindexed.len()) as u64);
    for pack in gone.iter().chain(&unindexed) {
        progress.add_items(1);
        let path = pack_path(pack);
        report.bytes_freed += repo.backend().size(&path).unwrap_or(0);
        repo.backend().remove(&path)?;
    }
    remove_temporary_files(repo);
    repo.load_index()?;
    drop(lock);
    Ok(report)
}

/// Collects the ids of every tree and chunk reachable from any snapshot.
fn mark(repo: &Repository, progress: &Progress) -> Result<HashSet<[u8; 32]>, RepoError> {
    let mut used = HashSet::new();
    let mut pending: Vec<TreeId> = Vec::new();
    for (_, snapshot) in repo.snapshots()? {
        pending.push(snapshot.tree);
    }
    while let Some(id) = pending.pop() {
        if !used.insert(id.0) {
            continue;
        }
        let tree = repo.load_tree(&id)?;
        progress.add_items(1);
        for node in &tree.nodes {
            match node.kind {
                NodeKind::Dir => pending.extend(node.subtree),
                NodeKind::File => {
                    for extent in &node.content {
                        if let Extent::Data { id, .. } = extent {
                            used.insert(id.0);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(used)
}

/// Deletes temporary files that killed writers left; under the exclusive lock no
/// writer is running.
fn remove_temporary_files(repo: &Repository) {
    match repo.backend().remove_temporary_files() {
        Ok(0) => {}
        Ok(count) => tracing::info!("removed {count} temporary files"),
        Err(e) => tracing::warn!("failed to remove temporary files: {e}"),
    }
}
