//! A tree with every kind of entry and metadata that cairn stores, compared
//! with its mounted snapshot and with a `cp -a` copy out of the mount.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, symlink};
use std::path::{Path, PathBuf};

use crate::support::{
    Fixture, MountGuard, below, folder_name, pseudo_random_bytes, run_tool_ok, set_mode, set_mtime,
    set_owner,
};
use crate::tree::{assert_same_tree, read_xattrs};

/// Apparent size of the sparse file.
const SPARSE_SIZE: u64 = 1 << 30;
/// Offset of the sparse file's only data.
const SPARSE_DATA_OFFSET: u64 = 256 << 20;
/// Length of the sparse file's only data.
const SPARSE_DATA_LEN: usize = 64 << 10;
/// Upper bound on the bytes that the sparse file may allocate in the source, on
/// the mount and in a copy. It is the 64 KiB of data rounded up to allocation
/// units, with room to spare. A copy that filled the holes would allocate 1 GiB.
const SPARSE_MAX_ALLOCATED: u64 = 1 << 20;

/// Relative paths of the entries with a POSIX ACL.
const ACL_PATHS: [&str; 2] = ["acl/file", "acl/dir"];

/// Writes the source tree below `root`, which must not exist.
pub fn build_tree(root: &Path) {
    let at = |relative: &str| root.join(relative);

    fs::create_dir_all(at("nested/a/b/c")).unwrap();
    fs::write(at("nested/a/b/c/deep.txt"), b"deep inside\n").unwrap();

    // Files of 0 B, 1 B, a few KiB and ~20 MiB. The large one is pseudo-random,
    // so it does not compress and splits into many chunks.
    fs::create_dir(at("sizes")).unwrap();
    fs::write(at("sizes/empty"), b"").unwrap();
    fs::write(at("sizes/one-byte"), b"x").unwrap();
    fs::write(at("sizes/few-kib"), pseudo_random_bytes(3 * 1024 + 17, 11)).unwrap();
    fs::write(
        at("sizes/large.bin"),
        pseudo_random_bytes(20 * 1024 * 1024 + 4321, 12),
    )
    .unwrap();

    fs::create_dir(at("links")).unwrap();
    symlink("../nested/a/b/c/deep.txt", at("links/relative")).unwrap();
    symlink(at("sizes/one-byte"), at("links/absolute")).unwrap();
    symlink("../does/not/exist", at("links/dangling")).unwrap();
    symlink("../nested/a", at("links/to-dir")).unwrap();

    nix::unistd::mkfifo(&at("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();

    // chown clears setuid and setgid bits, so owners are set before modes.
    fs::create_dir(at("owned")).unwrap();
    fs::write(at("owned/file"), b"owned by 1234:5678\n").unwrap();
    symlink("file", at("owned/link")).unwrap();
    set_owner(&at("owned/file"), 1234, 5678);
    set_owner(&at("owned/link"), 1111, 2222);
    set_owner(&at("owned"), 4321, 8765);

    fs::create_dir(at("modes")).unwrap();
    for (name, mode) in [
        ("setuid-dir", 0o4755),
        ("setgid-dir", 0o2750),
        ("sticky-dir", 0o1777),
    ] {
        fs::create_dir(at("modes").join(name)).unwrap();
        set_mode(&at("modes").join(name), mode);
    }
    fs::write(at("modes/setuid-file"), b"#!/bin/sh\n").unwrap();
    set_mode(&at("modes/setuid-file"), 0o4755);
    fs::write(at("modes/private-file"), b"secret\n").unwrap();
    set_mode(&at("modes/private-file"), 0o600);

    fs::create_dir(at("names")).unwrap();
    fs::write(
        at("names").join(OsStr::from_bytes(b"latin1-caf\xe9")),
        b"name is not UTF-8\n",
    )
    .unwrap();
    fs::write(at("names/line\nbreak"), b"name with a newline\n").unwrap();

    // One inode with names in two directories.
    fs::write(at("nested/hard-link"), b"one inode, two names\n").unwrap();
    fs::hard_link(at("nested/hard-link"), at("nested/a/hard-link-2")).unwrap();

    let sparse = File::create(at("sparse.img")).unwrap();
    sparse.set_len(SPARSE_SIZE).unwrap();
    sparse
        .write_all_at(
            &pseudo_random_bytes(SPARSE_DATA_LEN, 13),
            SPARSE_DATA_OFFSET,
        )
        .unwrap();
    drop(sparse);
    let sparse_allocated = fs::metadata(at("sparse.img")).unwrap().blocks() * 512;
    assert!(
        sparse_allocated <= SPARSE_MAX_ALLOCATED,
        "the file system of {} did not create a sparse file ({sparse_allocated} bytes allocated)",
        root.display()
    );

    // user.* attributes are not allowed on symlinks, so the symlink gets a
    // trusted.* one, which needs root.
    fs::create_dir(at("xattrs")).unwrap();
    fs::write(at("xattrs/file"), b"with attributes\n").unwrap();
    fs::create_dir(at("xattrs/dir")).unwrap();
    symlink("file", at("xattrs/link")).unwrap();
    xattr::set(at("xattrs/file"), "user.comment", b"file value").unwrap();
    xattr::set(at("xattrs/file"), "user.binary", &[0, 1, 2, 255, 0]).unwrap();
    xattr::set(at("xattrs/dir"), "user.comment", b"directory value").unwrap();
    xattr::set(at("xattrs/link"), "trusted.cairn-test", b"symlink value").unwrap();

    fs::create_dir(at("acl")).unwrap();
    fs::write(at("acl/file"), b"with an access ACL\n").unwrap();
    fs::create_dir(at("acl/dir")).unwrap();
    run_tool_ok(
        "setfacl",
        &[
            OsStr::new("-m"),
            OsStr::new("u:1234:rw,g:5678:r"),
            at("acl/file").as_os_str(),
        ],
    );
    run_tool_ok(
        "setfacl",
        &[
            OsStr::new("-m"),
            OsStr::new("u:1234:rwx,d:u:1234:rx,d:g:5678:rx"),
            at("acl/dir").as_os_str(),
        ],
    );

    // Times last, deepest first, because adding entries changes a directory's
    // mtime. Nanoseconds differ per entry, and one time is before 1970.
    set_mtime(&at("sizes/few-kib"), -86_400 * 400, 987_654_321);
    set_mtime(&at("links/relative"), 1_234_567_890, 1);
    set_mtime(&at("fifo"), 1_500_000_000, 999_999_999);
    set_mtime(&at("nested/a/b/c/deep.txt"), 1_600_000_000, 123_456_789);
    set_mtime(&at("nested/a/b/c"), 1_600_000_001, 500_000_000);
    set_mtime(&at("modes/sticky-dir"), 1_700_000_000, 42);
    set_mtime(&at("nested"), 1_700_000_001, 7);
}

/// Returns `getfacl -n` output for `path`, without the header that names it.
fn acl_text(path: &Path) -> String {
    let stdout = run_tool_ok(
        "getfacl",
        &[
            OsStr::new("--numeric"),
            OsStr::new("--omit-header"),
            OsStr::new("--physical"),
            path.as_os_str(),
        ],
    );
    String::from_utf8(stdout).expect("getfacl prints UTF-8")
}

/// Asserts the properties of the sparse file and the ACLs that the tree
/// comparison does not cover.
pub fn assert_sparse_and_acls(source: &Path, actual: &Path, label: &str) {
    let sparse = actual.join("sparse.img");
    let md = fs::metadata(&sparse).unwrap_or_else(|e| panic!("stat {}: {e}", sparse.display()));
    assert_eq!(
        md.len(),
        SPARSE_SIZE,
        "{label}: apparent size of sparse.img"
    );
    assert!(
        md.blocks() * 512 <= SPARSE_MAX_ALLOCATED,
        "{label}: sparse.img allocates {} bytes for {SPARSE_DATA_LEN} bytes of data",
        md.blocks() * 512
    );

    for relative in ACL_PATHS {
        let want = acl_text(&source.join(relative));
        assert!(
            want.contains("user:1234:"),
            "the source ACL of {relative} has no named user:\n{want}"
        );
        let got = acl_text(&actual.join(relative));
        assert_eq!(got, want, "{label}: getfacl -n of {relative}");
    }
}

#[test]
fn mounted_tree_and_copy_match_source() {
    let fixture = Fixture::new();
    let source = fixture.path("src");
    build_tree(&source);
    let symlink_xattrs = read_xattrs(&source.join("xattrs/link"));
    assert!(
        !symlink_xattrs.is_empty(),
        "the source symlink has no extended attribute"
    );

    fixture.backup(&[&source], &[]);
    let snapshots = fixture.snapshots();
    assert_eq!(snapshots.len(), 1, "snapshots after one backup");
    let mount = MountGuard::start(&fixture, &[]);
    let folder = mount.path("snapshots").join(folder_name(&snapshots[0]));
    let mounted: PathBuf = below(&folder, &source);

    assert_same_tree(&source, &mounted, "mount");
    assert_sparse_and_acls(&source, &mounted, "mount");
    let mounted_xattrs = read_xattrs(&mounted.join("xattrs/link"));
    assert_eq!(
        mounted_xattrs, symlink_xattrs,
        "lgetxattr of the symlink on the mount"
    );

    let copy = fixture.path("copy");
    run_tool_ok(
        "cp",
        &[
            OsStr::new("-a"),
            OsStr::new("--preserve=all"),
            mounted.as_os_str(),
            copy.as_os_str(),
        ],
    );
    assert_same_tree(&source, &copy, "copy");
    assert_sparse_and_acls(&source, &copy, "copy");
}
