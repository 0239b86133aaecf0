//! Verifying a repository: structure always, every byte of every pack on request.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use rayon::prelude::*;

use crate::display::escape_path;
use crate::id::{ChunkId, PackId, SnapshotId, TreeId};
use crate::progress::Progress;
use crate::repository::pack::{BlobKind, PackEntry, decode_pack};
use crate::repository::{RepoError, Repository, pack_path};
use crate::tree::{Extent, NodeKind};

/// Minimum number of bytes after a pack's last blob: a header of at least one
/// byte and the 4-byte trailer.
const PACK_TAIL_MIN: u64 = 5;

/// Selection of the packs a check reads in full.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum ReadData {
    /// None: structure only.
    #[default]
    None,
    /// Every pack.
    All,
    /// Group `n` of `m` (1-based): the packs whose id, read as a number, is
    /// `n - 1` modulo `m`. Running 1/m to m/m reads every pack once.
    Group {
        /// Group number, 1 to `m`.
        n: u32,
        /// Number of groups.
        m: u32,
    },
    /// A random sample of about this fraction of the packs, 0.0 to 1.0.
    Fraction(f64),
}

impl ReadData {
    /// Parses `N%` (a random sample) or `n/m` (a fixed group).
    pub fn parse_subset(text: &str) -> Result<Self, String> {
        if let Some(percent) = text.strip_suffix('%') {
            let value: f64 = percent
                .trim()
                .parse()
                .map_err(|_| format!("invalid percentage {text:?}: use a number such as 10%"))?;
            if !(0.0..=100.0).contains(&value) {
                return Err(format!(
                    "invalid percentage {text:?}: must be between 0% and 100%"
                ));
            }
            return Ok(ReadData::Fraction(value / 100.0));
        }
        let invalid = || format!("invalid subset {text:?}: use N% or n/m, such as 2/5");
        let (n, m) = text.split_once('/').ok_or_else(invalid)?;
        let n: u32 = n.trim().parse().map_err(|_| invalid())?;
        let m: u32 = m.trim().parse().map_err(|_| invalid())?;
        if m == 0 || n == 0 || n > m {
            return Err(invalid());
        }
        Ok(ReadData::Group { n, m })
    }

    fn selects(&self, pack: &PackId) -> bool {
        match *self {
            ReadData::None => false,
            ReadData::All => true,
            ReadData::Group { n, m } => {
                let value = u64::from_be_bytes(pack.0[..8].try_into().expect("8 bytes"));
                value % u64::from(m) == u64::from(n - 1)
            }
            ReadData::Fraction(f) => rand::random::<f64>() < f,
        }
    }
}

/// Settings of a check.
#[derive(Clone, Copy, Debug, Default)]
pub struct CheckOptions {
    /// Packs to read and verify blob by blob.
    pub read_data: ReadData,
}

/// Findings of a check.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Snapshots checked.
    pub snapshots: usize,
    /// Distinct trees walked.
    pub trees: usize,
    /// Packs in the repository.
    pub packs: usize,
    /// Packs read in full (with `read_data`).
    pub packs_read: usize,
    /// Blobs in the index.
    pub blobs: usize,
    /// One line per problem; empty when the repository is healthy.
    pub problems: Vec<String>,
    /// Files whose content is damaged: snapshot, path and byte range.
    pub damaged_files: Vec<String>,
}

/// Checks the repository. Problems are collected in the report, not returned as
/// errors; an `Err` means the check itself could not run.
pub fn check(repo: &Repository, options: CheckOptions) -> Result<CheckReport, RepoError> {
    check_with_progress(repo, options, &Progress::default())
}

/// Checks like [`check`] and counts packs read, then snapshots walked, in
/// `progress`, each step with its total.
pub fn check_with_progress(
    repo: &Repository,
    options: CheckOptions,
    progress: &Progress,
) -> Result<CheckReport, RepoError> {
    let mut report = CheckReport::default();

    for id in repo.list_index_files()? {
        if let Err(e) = repo.read_index_file(&id) {
            report.problems.push(e.to_string());
        }
    }

    let stored: HashMap<PackId, u64> = repo.list_pack_sizes()?.into_iter().collect();
    report.packs = stored.len();
    let mut bad_blobs: HashSet<[u8; 32]> = HashSet::new();
    {
        let index = repo.index();
        report.blobs = index.len();
        let mut missing_packs = HashSet::new();
        // Packs too short for the blobs the index lists in them: their size
        // and the end of the last blob.
        let mut short_packs: HashMap<PackId, (u64, u64)> = HashMap::new();
        for (id, location) in index.iter() {
            let Some(&size) = stored.get(&location.pack) else {
                missing_packs.insert(location.pack);
                bad_blobs.insert(id);
                continue;
            };
            // A pack ends with its header and a 4-byte trailer after its blobs.
            let end = u64::from(location.offset) + u64::from(location.len);
            if end + PACK_TAIL_MIN > size {
                let short = short_packs.entry(location.pack).or_insert((size, end));
                short.1 = short.1.max(end);
                bad_blobs.insert(id);
            }
        }
        for pack in missing_packs {
            report
                .problems
                .push(format!("pack {pack} is listed in the index but missing"));
        }
        for (pack, (size, end)) in short_packs {
            report.problems.push(format!(
                "pack {pack} is {size} bytes, too short for the blobs that the index lists in it, which end at byte {end}: it was truncated, and the files below lose what it held"
            ));
        }
    }

    if options.read_data != ReadData::None {
        let selected: HashSet<PackId> = stored
            .keys()
            .filter(|p| options.read_data.selects(p))
            .copied()
            .collect();
        progress.start_phase("reading packs");
        progress.set_total_items(selected.len() as u64);
        let (problems, bad) = read_packs(repo, &selected, Some(progress));
        report.packs_read = selected.len();
        report.problems.extend(problems);
        bad_blobs.extend(bad);
    }

    let mut seen_trees = HashMap::new();
    let snapshot_ids = repo.list_snapshot_ids()?;
    progress.start_phase("checking snapshots");
    progress.set_total_items(snapshot_ids.len() as u64);
    for id in snapshot_ids {
        progress.add_items(1);
        match repo.load_snapshot(&id) {
            Ok(snapshot) => {
                report.snapshots += 1;
                let mut walk = TreeWalk {
                    repo,
                    snapshot: id,
                    seen: &mut seen_trees,
                    bad_blobs: &bad_blobs,
                    report: &mut report,
                };
                walk.snapshot(&snapshot.tree)?;
            }
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    report.trees = seen_trees.len();
    Ok(report)
}

/// Reads each given pack, checks its hash against its name, decodes its header and
/// opens every blob. Returns problems and the ids of blobs that failed.
pub(crate) fn read_packs(
    repo: &Repository,
    packs: &HashSet<PackId>,
    progress: Option<&Progress>,
) -> (Vec<String>, HashSet<[u8; 32]>) {
    let problems = Mutex::new(Vec::new());
    let bad = Mutex::new(HashSet::new());
    let packs: Vec<&PackId> = packs.iter().collect();
    let check_pack = |pack: &PackId| {
        let mark_all_bad = |reason: String| {
            problems
                .lock()
                .expect("lock")
                .push(format!("pack {pack}: {reason}"));
            let index = repo.index();
            let mut bad = bad.lock().expect("lock");
            for (id, location) in index.iter() {
                if location.pack == *pack {
                    bad.insert(id);
                }
            }
        };
        let bytes = match repo.backend().read(&pack_path(pack)) {
            Ok(bytes) => bytes,
            Err(e) => return mark_all_bad(format!("unreadable: {e}")),
        };
        if *blake3::hash(&bytes).as_bytes() != pack.0 {
            problems.lock().expect("lock").push(format!(
                "pack {pack}: contents do not match its name (damaged)"
            ));
        }
        if let Some(progress) = progress {
            progress.add_bytes(bytes.len() as u64);
        }
        let entries = match decode_pack(repo.keys(), &bytes) {
            Ok(entries) => entries,
            Err(e) => {
                // A pack cut short loses its header but keeps the blobs before
                // the cut, so each blob is checked at the index's location.
                problems.lock().expect("lock").push(format!(
                    "pack {pack}: header unreadable: {e}; checking the blobs that the index lists in it"
                ));
                let index = repo.index();
                index
                    .iter()
                    .filter(|(_, location)| location.pack == *pack)
                    .map(|(id, location)| PackEntry {
                        kind: location.kind,
                        id,
                        offset: location.offset,
                        len: location.len,
                        raw_len: location.raw_len,
                    })
                    .collect()
            }
        };
        for entry in entries {
            let start = entry.offset as usize;
            let Some(sealed) = bytes.get(start..start + entry.len as usize) else {
                problems.lock().expect("lock").push(format!(
                    "pack {pack}: {:?} blob {} at offset {} lies beyond the pack's end",
                    entry.kind,
                    hex::encode(&entry.id[..4]),
                    entry.offset
                ));
                bad.lock().expect("lock").insert(entry.id);
                continue;
            };
            let ok = repo
                .keys()
                .open(
                    entry.kind.object_kind(),
                    &entry.id,
                    sealed,
                    match entry.kind {
                        BlobKind::Chunk => crate::repository::MAX_CHUNK_LEN,
                        BlobKind::Tree => crate::tree::MAX_TREE_LEN,
                    },
                )
                .map(|plain| match entry.kind {
                    BlobKind::Chunk => repo.keys().chunk_id(&plain).0 == entry.id,
                    BlobKind::Tree => repo.keys().tree_id(&plain).0 == entry.id,
                })
                .unwrap_or(false);
            if !ok {
                problems.lock().expect("lock").push(format!(
                    "pack {pack}: {:?} blob {} at offset {} is damaged",
                    entry.kind,
                    hex::encode(&entry.id[..4]),
                    entry.offset
                ));
                bad.lock().expect("lock").insert(entry.id);
            }
        }
    };
    packs.par_iter().for_each(|pack| {
        check_pack(pack);
        if let Some(progress) = progress {
            progress.add_items(1);
        }
    });
    (
        problems.into_inner().expect("lock"),
        bad.into_inner().expect("lock"),
    )
}

/// Damage found below one tree: paths relative to it, each with a description.
type Damage = std::rc::Rc<Vec<(Vec<u8>, String)>>;

struct TreeWalk<'a> {
    repo: &'a Repository,
    snapshot: SnapshotId,
    seen: &'a mut HashMap<TreeId, Damage>,
    bad_blobs: &'a HashSet<[u8; 32]>,
    report: &'a mut CheckReport,
}

impl TreeWalk<'_> {
    /// Reports every damaged file and directory of the snapshot.
    fn snapshot(&mut self, root: &TreeId) -> Result<(), RepoError> {
        let damage = self.tree(root)?;
        for (path, what) in damage.iter() {
            let line = format!(
                "snapshot {}: {} {what}",
                self.snapshot.short(),
                escape_path(path)
            );
            self.report.damaged_files.push(line);
        }
        Ok(())
    }

    /// Returns the damage below a tree; each tree is walked once, and its result
    /// is reused for every snapshot that contains it.
    fn tree(&mut self, id: &TreeId) -> Result<Damage, RepoError> {
        if let Some(damage) = self.seen.get(id) {
            return Ok(damage.clone());
        }
        let mut damage = Vec::new();
        let tree = match self.repo.load_tree(id) {
            Ok(tree) => Some(tree),
            Err(e @ (RepoError::Damaged { .. } | RepoError::Missing(_))) => {
                damage.push((Vec::new(), format!("(directory) unreadable: {e}")));
                None
            }
            Err(e) => return Err(e),
        };
        for node in tree.iter().flat_map(|t| t.nodes.iter()) {
            let mut path = vec![b'/'];
            path.extend_from_slice(&node.name);
            match node.kind {
                NodeKind::Dir => match &node.subtree {
                    Some(sub) => {
                        for (below, what) in self.tree(sub)?.iter() {
                            let mut full = path.clone();
                            full.extend_from_slice(below);
                            damage.push((full, what.clone()));
                        }
                    }
                    None => damage.push((path, "(directory) has no tree".into())),
                },
                NodeKind::File => {
                    let index = self.repo.index();
                    let lost = lost_ranges(&node.content, |id| {
                        !index.contains(&id.0) || self.bad_blobs.contains(&id.0)
                    });
                    let ranges: Vec<String> = lost
                        .iter()
                        .map(|(start, end)| format!("{start}-{end}"))
                        .collect();
                    if !ranges.is_empty() {
                        damage.push((path, format!("bytes {} lost", ranges.join(","))));
                    }
                }
                _ => {}
            }
        }
        let damage: Damage = std::rc::Rc::new(damage);
        self.seen.insert(*id, damage.clone());
        Ok(damage)
    }
}

/// Returns the byte ranges, as (start, end), of a file's chunks for which
/// `lost` is true, with adjacent ranges merged.
fn lost_ranges(content: &[Extent], lost: impl Fn(&ChunkId) -> bool) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut offset = 0u64;
    for extent in content {
        if let Extent::Data { id, len } = extent
            && lost(id)
        {
            let end = offset + u64::from(*len);
            match ranges.last_mut() {
                Some(last) if last.1 == offset => last.1 = end,
                _ => ranges.push((offset, end)),
            }
        }
        offset += extent.len();
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_ranges_merge_adjacent_chunks() {
        let chunk = |n: u8, len: u32| Extent::Data {
            id: ChunkId([n; 32]),
            len,
        };
        // Chunks 1, 2 and 4 are lost; chunk 3 and the hole are not.
        let content = [
            chunk(1, 100),
            chunk(2, 50),
            chunk(3, 10),
            Extent::Hole { len: 5 },
            chunk(4, 20),
        ];
        let ranges = lost_ranges(&content, |id| id.0[0] != 3);
        assert_eq!(ranges, vec![(0, 150), (165, 185)]);
    }

    #[test]
    fn subset_parses_percent_and_group() {
        assert_eq!(ReadData::parse_subset("10%"), Ok(ReadData::Fraction(0.1)));
        assert_eq!(
            ReadData::parse_subset("2/5"),
            Ok(ReadData::Group { n: 2, m: 5 })
        );
    }

    #[test]
    fn subset_rejects_bad_values() {
        for bad in ["0/5", "6/5", "1/0", "x", "101%", "-1%", "1/"] {
            assert!(ReadData::parse_subset(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn subset_groups_cover_each_pack_once() {
        for byte in 0..=255u8 {
            let pack = PackId([byte; 32]);
            let groups = (1..=3)
                .filter(|&n| ReadData::Group { n, m: 3 }.selects(&pack))
                .count();
            assert_eq!(groups, 1, "pack {byte} is in {groups} groups");
        }
    }
}
