//! The folders above the snapshots, built from the snapshot list at mount time:
//! `/snapshots`, `/ids`, `/hosts/<hostname>` and `/tags/<tag>`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use super::inode::{InodeKind, InodeTable, ROOT_INO, VirtualDir};
use super::overlay::INCOMING_NAME;
use crate::id::SnapshotId;
use crate::snapshot::Snapshot;
use crate::tree::Timestamp;

/// Returns a snapshot's folder name, `YYYY-MM-DDTHH-MM-SSZ_<short id>` in UTC.
/// The time has no colons, so that rsync and scp never read it as `host:path`.
pub(super) fn snapshot_folder_name(time: Timestamp, id: &SnapshotId) -> String {
    let time = chrono::DateTime::from_timestamp(time.secs, 0)
        .map(|t| t.format("%Y-%m-%dT%H-%M-%SZ").to_string())
        .unwrap_or_else(|| format!("{}s", time.secs));
    format!("{time}_{}", id.short())
}

/// Turns a host name or tag into a valid file name: `/` and NUL become `_`, and
/// an empty name, `.` or `..` get a leading `_`.
pub(super) fn file_name_for(label: &str) -> Vec<u8> {
    let name: String = label
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    match name.as_str() {
        "" | "." | ".." => format!("_{name}").into_bytes(),
        _ => name.into_bytes(),
    }
}

/// Returns one folder name per snapshot, in the order given. Names are unique:
/// when two snapshots share the second and the short id, the later one is named
/// with its full id.
pub(super) fn folder_names(snapshots: &[(SnapshotId, Snapshot)]) -> Vec<Vec<u8>> {
    let mut seen = HashSet::new();
    snapshots
        .iter()
        .map(|(id, snapshot)| {
            let short = snapshot_folder_name(snapshot.time, id);
            let name = if seen.contains(&short) {
                let time = short.rsplit_once('_').map_or("", |(time, _)| time);
                format!("{time}_{}", id.to_hex())
            } else {
                short
            };
            seen.insert(name.clone());
            name.into_bytes()
        })
        .collect()
}

/// Allocates the root directory (inode 1) and every folder above the snapshot
/// trees. `snapshots` must be sorted oldest first, as `Repository::snapshots`
/// returns them. The last one is the target of `/snapshots/latest`. When
/// `incoming` is given, the root also lists `incoming` with that inode number,
/// which this table does not hold.
pub(super) fn build(
    table: &mut InodeTable,
    snapshots: &[(SnapshotId, Snapshot)],
    mount_time: Timestamp,
    incoming: Option<u64>,
) {
    let names = folder_names(snapshots);
    let newest = |members: &[usize]| {
        members
            .iter()
            .map(|&i| snapshots[i].1.time)
            .max()
            .unwrap_or(mount_time)
    };

    let root = table.push(ROOT_INO, placeholder());
    assert_eq!(root, ROOT_INO, "the root must be the first inode");
    let mut top = Vec::new();

    // /snapshots: every snapshot, plus `latest`.
    let all: Vec<usize> = (0..snapshots.len()).collect();
    let dir = table.push(root, placeholder());
    let mut entries = snapshot_entries(table, dir, &all, |i| names[i].clone());
    if let Some(last) = names.last() {
        let latest = table.push(dir, InodeKind::Latest(Arc::from(last.as_slice())));
        entries.push((b"latest".to_vec(), latest));
    }
    finish_dir(table, dir, b"snapshots", entries, newest(&all));
    top.push((b"snapshots".to_vec(), dir));

    // /ids: one folder per snapshot, named by its full id.
    let dir = table.push(root, placeholder());
    let entries = snapshot_entries(table, dir, &all, |i| snapshots[i].0.to_hex().into_bytes());
    finish_dir(table, dir, b"ids", entries, newest(&all));
    top.push((b"ids".to_vec(), dir));

    // /hosts/<hostname> and /tags/<tag>.
    let mut hosts: BTreeMap<Vec<u8>, Vec<usize>> = BTreeMap::new();
    let mut tags: BTreeMap<Vec<u8>, Vec<usize>> = BTreeMap::new();
    for (i, (_, snapshot)) in snapshots.iter().enumerate() {
        hosts
            .entry(file_name_for(&snapshot.hostname))
            .or_default()
            .push(i);
        let unique: BTreeSet<Vec<u8>> =
            snapshot.tags.iter().map(|tag| file_name_for(tag)).collect();
        for tag in unique {
            tags.entry(tag).or_default().push(i);
        }
    }
    for (name, groups) in [(&b"hosts"[..], hosts), (&b"tags"[..], tags)] {
        let dir = table.push(root, placeholder());
        let mut entries = Vec::new();
        for (group, members) in groups {
            let group_dir = table.push(dir, placeholder());
            let group_entries = snapshot_entries(table, group_dir, &members, |i| names[i].clone());
            finish_dir(table, group_dir, &group, group_entries, newest(&members));
            entries.push((group, group_dir));
        }
        finish_dir(table, dir, name, entries, newest(&all));
        top.push((name.to_vec(), dir));
    }

    if let Some(ino) = incoming {
        top.push((INCOMING_NAME.to_vec(), ino));
    }
    finish_dir(table, root, b"", top, newest(&all));
}

/// Returns the kind given to a folder inode before its entries are known.
/// `finish_dir` replaces it.
fn placeholder() -> InodeKind {
    InodeKind::Latest(Arc::from(&b""[..]))
}

/// Allocates a snapshot folder in `dir` for each member, named by `name_of`.
fn snapshot_entries(
    table: &mut InodeTable,
    dir: u64,
    members: &[usize],
    name_of: impl Fn(usize) -> Vec<u8>,
) -> Vec<(Vec<u8>, u64)> {
    members
        .iter()
        .map(|&i| {
            let name = name_of(i);
            let kind = InodeKind::SnapshotRoot {
                snapshot: i,
                name: Arc::from(name.as_slice()),
            };
            (name, table.push(dir, kind))
        })
        .collect()
}

fn finish_dir(
    table: &mut InodeTable,
    ino: u64,
    name: &[u8],
    mut entries: Vec<(Vec<u8>, u64)>,
    mtime: Timestamp,
) {
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let dir = VirtualDir {
        name: name.to_vec(),
        entries,
        mtime,
    };
    table.set_kind(ino, InodeKind::Virtual(Arc::new(dir)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::TreeId;
    use crate::snapshot::BackupSummary;

    fn snapshot(secs: i64, host: &str, tags: &[&str]) -> Snapshot {
        Snapshot {
            time: Timestamp { secs, nanos: 5 },
            hostname: host.into(),
            username: "root".into(),
            paths: vec![b"/srv".to_vec()],
            tree: TreeId([9; 32]),
            parent: None,
            original: None,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            incomplete: false,
            program_version: "0".into(),
            summary: BackupSummary::default(),
        }
    }

    fn id(byte: u8) -> SnapshotId {
        let mut bytes = [0; 32];
        bytes[0] = 0xab;
        bytes[1] = byte;
        bytes[31] = byte;
        SnapshotId(bytes)
    }

    fn dir(table: &InodeTable, ino: u64) -> Arc<VirtualDir> {
        match &table.get(ino).unwrap().kind {
            InodeKind::Virtual(dir) => dir.clone(),
            other => panic!("inode {ino} is not a folder: {other:?}"),
        }
    }

    fn names(dir: &VirtualDir) -> Vec<String> {
        dir.entries
            .iter()
            .map(|(name, _)| String::from_utf8(name.clone()).unwrap())
            .collect()
    }

    #[test]
    fn folder_name_format() {
        // 2024-03-05 07:08:09 UTC
        let name = snapshot_folder_name(
            Timestamp {
                secs: 1_709_622_489,
                nanos: 0,
            },
            &id(1),
        );
        assert_eq!(name, "2024-03-05T07-08-09Z_ab010000");
        assert!(!name.contains(':'));
    }

    #[test]
    fn folder_name_before_epoch() {
        let name = snapshot_folder_name(Timestamp { secs: -1, nanos: 0 }, &id(1));
        assert_eq!(name, "1969-12-31T23-59-59Z_ab010000");
    }

    #[test]
    fn folder_names_unique_on_collision() {
        // Same second and same first four id bytes.
        let list = vec![
            (id(1), snapshot(100, "h", &[])),
            (id(1), snapshot(100, "h", &[])),
        ];
        let names = folder_names(&list);
        assert_eq!(names[0], b"1970-01-01T00-01-40Z_ab010000");
        assert_eq!(
            names[1],
            format!("1970-01-01T00-01-40Z_{}", id(1).to_hex()).into_bytes()
        );
    }

    #[test]
    fn labels_become_file_names() {
        assert_eq!(file_name_for("web-1"), b"web-1");
        assert_eq!(file_name_for("a/b"), b"a_b");
        assert_eq!(file_name_for("nul\0x"), b"nul_x");
        assert_eq!(file_name_for(""), b"_");
        assert_eq!(file_name_for("."), b"_.");
        assert_eq!(file_name_for(".."), b"_..");
    }

    #[test]
    fn build_lays_out_top_level() {
        let list = vec![
            (id(1), snapshot(100, "alpha", &["daily", "daily"])),
            (id(2), snapshot(200, "beta", &["daily", "a/b"])),
            (id(3), snapshot(300, "alpha", &[])),
        ];
        let mut table = InodeTable::default();
        build(
            &mut table,
            &list,
            Timestamp {
                secs: 999,
                nanos: 0,
            },
            None,
        );

        let root = dir(&table, ROOT_INO);
        assert_eq!(names(&root), ["hosts", "ids", "snapshots", "tags"]);
        assert_eq!(root.mtime.secs, 300);

        let snapshots = dir(&table, root.find(b"snapshots").unwrap());
        assert_eq!(
            names(&snapshots),
            [
                "1970-01-01T00-01-40Z_ab010000",
                "1970-01-01T00-03-20Z_ab020000",
                "1970-01-01T00-05-00Z_ab030000",
                "latest"
            ]
        );
        let latest = table.get(snapshots.find(b"latest").unwrap()).unwrap();
        match &latest.kind {
            InodeKind::Latest(target) => assert_eq!(&target[..], b"1970-01-01T00-05-00Z_ab030000"),
            other => panic!("latest is {other:?}"),
        }

        let ids = dir(&table, root.find(b"ids").unwrap());
        assert_eq!(ids.entries.len(), 3);
        assert!(ids.find(id(2).to_hex().as_bytes()).is_some());

        let hosts = dir(&table, root.find(b"hosts").unwrap());
        assert_eq!(names(&hosts), ["alpha", "beta"]);
        let alpha = dir(&table, hosts.find(b"alpha").unwrap());
        assert_eq!(alpha.entries.len(), 2);
        assert_eq!(alpha.mtime.secs, 300);

        let tags = dir(&table, root.find(b"tags").unwrap());
        assert_eq!(names(&tags), ["a_b", "daily"]);
        let daily = dir(&table, tags.find(b"daily").unwrap());
        assert_eq!(daily.entries.len(), 2);
        assert_eq!(daily.mtime.secs, 200);
    }

    #[test]
    fn build_gives_each_location_its_own_folder_inode() {
        let list = vec![(id(1), snapshot(100, "alpha", &["t"]))];
        let mut table = InodeTable::default();
        build(&mut table, &list, Timestamp::default(), None);
        let root = dir(&table, ROOT_INO);
        let by_name =
            dir(&table, root.find(b"snapshots").unwrap()).find(b"1970-01-01T00-01-40Z_ab010000");
        let by_id = dir(&table, root.find(b"ids").unwrap()).find(id(1).to_hex().as_bytes());
        assert!(by_name.is_some());
        assert!(by_id.is_some());
        assert_ne!(by_name, by_id);
        for ino in [by_name.unwrap(), by_id.unwrap()] {
            assert!(matches!(
                table.get(ino).unwrap().kind,
                InodeKind::SnapshotRoot { snapshot: 0, .. }
            ));
        }
    }

    #[test]
    fn build_lists_incoming_when_given() {
        let mut table = InodeTable::default();
        build(&mut table, &[], Timestamp::default(), Some(1 << 48));
        let root = dir(&table, ROOT_INO);
        assert_eq!(
            names(&root),
            ["hosts", "ids", "incoming", "snapshots", "tags"]
        );
        assert_eq!(root.find(b"incoming"), Some(1 << 48));
    }

    #[test]
    fn build_without_snapshots() {
        let mut table = InodeTable::default();
        build(&mut table, &[], Timestamp { secs: 5, nanos: 0 }, None);
        let root = dir(&table, ROOT_INO);
        let snapshots = dir(&table, root.find(b"snapshots").unwrap());
        assert!(snapshots.entries.is_empty());
        assert_eq!(root.mtime.secs, 5);
    }
}
