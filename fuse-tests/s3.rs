//! A repository in an S3 bucket of a private `moto_server` on 127.0.0.1,
//! mounted and copied out with `cp -a`. The mount reads chunks with ranged GET
//! requests and holds its shared lock as an object in the bucket.

use std::ffi::OsStr;

use crate::round_trip::{assert_sparse_and_acls, build_tree};
use crate::s3_server::S3Server;
use crate::support::{Fixture, MountGuard, below, folder_name, run_tool_ok};
use crate::tree::assert_same_tree;

const BUCKET: &str = "cairn-mount";

#[test]
fn s3_mounted_copy_matches_source() {
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    let url = server.repository_url(BUCKET, "mounted/repo");
    let fixture = Fixture::with_repository(&url, server.credentials());
    let source = fixture.path("src");
    build_tree(&source);
    fixture.backup(&[&source], &[]);
    let snapshots = fixture.snapshots();
    assert_eq!(snapshots.len(), 1, "snapshots after one backup");

    let mount = MountGuard::start(&fixture, &[]);
    let locks = server.list_keys(BUCKET, "mounted/repo/locks/");
    assert_eq!(locks.len(), 1, "lock objects while mounted: {locks:?}");

    let folder = mount.path("snapshots").join(folder_name(&snapshots[0]));
    let mounted = below(&folder, &source);
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
    assert_same_tree(&source, &copy, "copy out of the S3 mount");
    assert_sparse_and_acls(&source, &copy, "copy out of the S3 mount");

    drop(mount);
    let locks = server.list_keys(BUCKET, "mounted/repo/locks/");
    assert!(
        locks.is_empty(),
        "lock objects after the unmount: {locks:?}"
    );
}

/// Mounts `fixture`'s only snapshot and checks that `cp -a` out of it gives
/// `source` again.
fn assert_mount_matches(fixture: &Fixture, source: &std::path::Path, what: &str) {
    let snapshots = fixture.snapshots();
    assert_eq!(snapshots.len(), 1, "snapshots in {what}");
    let mount = MountGuard::start(fixture, &[]);
    let mounted = below(
        &mount.path("snapshots").join(folder_name(&snapshots[0])),
        source,
    );
    let copy = fixture.path(&format!("copy-{}", what.replace(' ', "-")));
    run_tool_ok(
        "cp",
        &[
            OsStr::new("-a"),
            OsStr::new("--preserve=all"),
            mounted.as_os_str(),
            copy.as_os_str(),
        ],
    );
    assert_same_tree(source, &copy, what);
}

#[test]
fn copies_in_s3_and_on_disk_mount_on_their_own() {
    let local = Fixture::new();
    let source = local.path("src");
    build_tree(&source);
    local.backup(&[&source], &[]);

    // Both copies have their own keys, so every chunk gets a new id.
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    let in_s3 = Fixture::with_repository(
        &server.repository_url(BUCKET, "copies/repo"),
        server.credentials(),
    );
    let on_disk = Fixture::new();
    for copy in [&in_s3, &on_disk] {
        copy.run_ok([
            OsStr::new("copy"),
            OsStr::new("--from"),
            local.repo.as_os_str(),
            OsStr::new("--from-password-file"),
            local.password_file.as_os_str(),
        ]);
    }

    assert_mount_matches(&in_s3, &source, "copy in S3");
    assert_mount_matches(&on_disk, &source, "copy on disk");
}
