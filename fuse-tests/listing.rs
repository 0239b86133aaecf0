//! Recursive listings of a mounted snapshot, and inode numbers across them.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::support::{Fixture, MountGuard, below, folder_name};

const DIRECTORIES: usize = 50;
const FILES_PER_DIRECTORY: usize = 100;

/// The type and size of one entry found by [`walk`].
#[derive(Debug, PartialEq)]
struct WalkedEntry {
    kind: &'static str,
    size: u64,
}

/// Lists every entry below `root` recursively, without following symlinks,
/// keyed by the path relative to `root`.
fn walk(root: &Path) -> BTreeMap<PathBuf, WalkedEntry> {
    let mut entries = BTreeMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let dir = root.join(&relative);
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display())) {
            let entry = entry.unwrap_or_else(|e| panic!("read an entry of {}: {e}", dir.display()));
            let path = relative.join(entry.file_name());
            let md = fs::symlink_metadata(entry.path())
                .unwrap_or_else(|e| panic!("lstat {}: {e}", entry.path().display()));
            let kind = if md.is_dir() {
                pending.push(path.clone());
                "directory"
            } else if md.is_symlink() {
                "symlink"
            } else if md.is_file() {
                "file"
            } else {
                "other"
            };
            let size = if md.is_dir() { 0 } else { md.len() };
            entries.insert(path, WalkedEntry { kind, size });
        }
    }
    entries
}

#[test]
fn cold_and_warm_walks_match() {
    let fixture = Fixture::new();
    let source = fixture.path("src");
    for d in 0..DIRECTORIES {
        let dir = source.join(format!("dir-{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..FILES_PER_DIRECTORY {
            fs::write(dir.join(format!("file-{f:03}")), format!("{d}/{f}\n")).unwrap();
        }
    }
    fixture.backup(&[&source], &[]);
    let snapshots = fixture.snapshots();

    let expected = walk(&source);
    assert_eq!(
        expected.len(),
        DIRECTORIES * (FILES_PER_DIRECTORY + 1),
        "entries below the source"
    );

    let mount = MountGuard::start(&fixture, &[]);
    let mounted = below(
        &mount.path("snapshots").join(folder_name(&snapshots[0])),
        &source,
    );
    for pass in ["cold", "warm"] {
        let start = Instant::now();
        let listed = walk(&mounted);
        eprintln!(
            "{pass} walk of {} entries took {:?}",
            listed.len(),
            start.elapsed()
        );
        assert_eq!(listed, expected, "{pass} walk of the mounted snapshot");
    }
}

/// Drops the kernel's dentry and inode caches, so that the next `stat` of a
/// path on the mount sends a new LOOKUP to cairn instead of using cached
/// attributes. Needs root and a writable /proc/sys.
fn drop_dentry_cache() {
    if let Err(e) = fs::write("/proc/sys/vm/drop_caches", "2") {
        // NOTE: without the drop, the second stat may come from the kernel's
        // cache, so the test then only checks that the walk changed nothing.
        eprintln!("failed to drop the dentry cache ({e}), so the second stat may be cached");
    }
}

/// Returns the inode number of each path, without following symlinks.
fn inode_numbers(paths: &[PathBuf]) -> Vec<u64> {
    paths
        .iter()
        .map(|path| {
            fs::symlink_metadata(path)
                .unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()))
                .ino()
        })
        .collect()
}

#[test]
fn inode_numbers_stay_stable() {
    check_inode_numbers_stay_stable(&[]);
}

/// With no room for directory trees, the mount keeps only the tree it used
/// last and loads every other one again; numbers and listings must not change.
#[test]
fn inode_numbers_stay_stable_when_trees_are_evicted() {
    check_inode_numbers_stay_stable(&["--metadata-cache-size", "0"]);
}

fn check_inode_numbers_stay_stable(mount_args: &[&str]) {
    let fixture = Fixture::new();
    let source = fixture.path("src");
    fs::create_dir_all(source.join("dir/sub")).unwrap();
    fs::write(source.join("dir/sub/file"), b"deep file\n").unwrap();
    fs::write(source.join("linked"), b"two names\n").unwrap();
    fs::hard_link(source.join("linked"), source.join("dir/linked-2")).unwrap();
    symlink("dir/sub/file", source.join("symlink")).unwrap();
    nix::unistd::mkfifo(
        &source.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    for i in 0..200 {
        fs::write(source.join(format!("dir/filler-{i:03}")), format!("{i}\n")).unwrap();
    }
    fixture.backup(&[&source], &["--tag", "stable"]);
    let snapshots = fixture.snapshots();

    let mount = MountGuard::start(&fixture, mount_args);
    let folder = mount.path("snapshots").join(folder_name(&snapshots[0]));
    let mounted = below(&folder, &source);
    let hard_link = mounted.join("linked");
    let hard_link_2 = mounted.join("dir/linked-2");
    let paths: Vec<PathBuf> = vec![
        folder.clone(),
        mounted.clone(),
        mounted.join("dir"),
        mounted.join("dir/sub"),
        mounted.join("dir/sub/file"),
        hard_link.clone(),
        hard_link_2.clone(),
        mounted.join("symlink"),
        mounted.join("fifo"),
        mounted.join("dir/filler-199"),
    ];
    let first = inode_numbers(&paths);

    // The walk loads every tree of every view, which allocates new inodes.
    let walked = walk(mount.mountpoint());
    assert!(
        walked.len() > 4 * 200,
        "the walk of all views found only {} entries",
        walked.len()
    );
    drop_dentry_cache();
    let second = inode_numbers(&paths);

    assert_eq!(
        walk(mount.mountpoint()),
        walked,
        "a second walk of all views"
    );
    for ((path, before), after) in paths.iter().zip(&first).zip(&second) {
        assert_eq!(
            after,
            before,
            "inode number of {} after a walk",
            path.display()
        );
    }
    assert_eq!(
        inode_numbers(&[hard_link_2]),
        inode_numbers(&[hard_link]),
        "inode numbers of the two names of a hard link"
    );
}

/// Reads an extended attribute on the mount and returns the error number, or 0.
fn getxattr_errno(path: &Path, name: &str) -> i32 {
    match xattr::get(path, name) {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

#[test]
fn extended_attributes_are_served_only_when_a_snapshot_has_some() {
    let fixture = Fixture::new();
    let source = fixture.path("src");
    fs::create_dir_all(source.join("dir")).unwrap();
    fs::write(source.join("dir/plain"), b"no attributes\n").unwrap();
    fixture.backup(&[&source], &[]);

    // No snapshot contains an attribute: the mount answers ENOTSUP, and the kernel
    // stops sending the requests, which `ls -l` makes for every entry.
    {
        let mount = MountGuard::start(&fixture, &[]);
        let snapshots = fixture.snapshots();
        let mounted = below(
            &mount.path("snapshots").join(folder_name(&snapshots[0])),
            &source,
        );
        for name in ["security.selinux", "user.comment"] {
            assert_eq!(
                getxattr_errno(&mounted.join("dir/plain"), name),
                libc::ENOTSUP,
                "getxattr {name} on a mount without attributes"
            );
        }
        assert_eq!(
            fs::read(mounted.join("dir/plain")).unwrap(),
            b"no attributes\n"
        );
    }

    // One snapshot with an attribute: every snapshot's attributes are served,
    // and a missing one is ENODATA again.
    xattr::set(source.join("dir/plain"), "user.comment", b"now set").unwrap();
    fixture.backup(&[&source], &[]);
    let mount = MountGuard::start(&fixture, &[]);
    let snapshots = fixture.snapshots();
    let folder = |i: usize| {
        below(
            &mount.path("snapshots").join(folder_name(&snapshots[i])),
            &source,
        )
    };
    assert_eq!(
        xattr::get(folder(1).join("dir/plain"), "user.comment").unwrap(),
        Some(b"now set".to_vec())
    );
    assert_eq!(
        xattr::get(folder(0).join("dir/plain"), "user.comment").unwrap(),
        None,
        "the older snapshot has no attribute"
    );
}
