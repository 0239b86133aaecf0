//! The folders above the snapshot trees: `snapshots/` with `latest`, `ids/`,
//! `hosts/` and `tags/`.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use crate::support::{Fixture, MountGuard, below, describe, folder_name, list_names, snapshot_id};

#[test]
fn two_backups_show_change() {
    let fixture = Fixture::new();
    let source = fixture.path("src");
    fs::create_dir_all(source.join("sub")).unwrap();
    fs::write(source.join("same.txt"), b"unchanged\n").unwrap();
    fs::write(source.join("sub/same-too.txt"), b"also unchanged\n").unwrap();
    fs::write(source.join("changed.txt"), b"first version\n").unwrap();
    fs::write(source.join("removed.txt"), b"only in the first backup\n").unwrap();
    let first_id = snapshot_id(&fixture.backup(&[&source], &[]));

    fs::write(source.join("changed.txt"), b"second version\n").unwrap();
    fs::remove_file(source.join("removed.txt")).unwrap();
    fs::write(source.join("sub/added.txt"), b"only in the second backup\n").unwrap();
    let second_id = snapshot_id(&fixture.backup(&[&source], &[]));

    let snapshots = fixture.snapshots();
    assert_eq!(snapshots.len(), 2, "snapshots after two backups");
    assert_eq!(snapshots[0]["id"], first_id.as_str(), "oldest snapshot");
    assert_eq!(snapshots[1]["id"], second_id.as_str(), "newest snapshot");
    let first = folder_name(&snapshots[0]);
    let second = folder_name(&snapshots[1]);

    let mount = MountGuard::start(&fixture, &[]);
    let snapshots_dir = mount.path("snapshots");
    let mut expected_names: Vec<OsString> =
        vec![first.clone().into(), second.clone().into(), "latest".into()];
    expected_names.sort();
    assert_eq!(
        list_names(&snapshots_dir),
        expected_names,
        "entries of {}",
        snapshots_dir.display()
    );

    let latest = snapshots_dir.join("latest");
    let latest_md = fs::symlink_metadata(&latest).expect("lstat snapshots/latest");
    assert!(
        latest_md.file_type().is_symlink(),
        "snapshots/latest is not a symlink"
    );
    assert_eq!(
        fs::read_link(&latest).expect("readlink snapshots/latest"),
        PathBuf::from(&second),
        "target of snapshots/latest"
    );
    assert_eq!(
        fs::read(below(&latest, &source).join("changed.txt")).expect("read through latest"),
        b"second version\n",
        "changed.txt through snapshots/latest"
    );

    // diff runs in snapshots/, so its output names short relative paths.
    let relative_source = source.strip_prefix("/").unwrap();
    let old = Path::new(&first).join(relative_source);
    let new = Path::new(&second).join(relative_source);
    let output = std::process::Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(&old)
        .arg(&new)
        .current_dir(&snapshots_dir)
        .output()
        .expect("start diff");
    assert_eq!(
        output.status.code(),
        Some(1),
        "diff exit status (1 means the trees differ): {}",
        describe(&output)
    );
    let expected = format!(
        "diff -r --no-dereference {old}/changed.txt {new}/changed.txt\n\
         1c1\n\
         < first version\n\
         ---\n\
         > second version\n\
         Only in {old}: removed.txt\n\
         Only in {new}/sub: added.txt\n",
        old = old.display(),
        new = new.display()
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        expected,
        "diff -r between the mounted snapshots"
    );
    assert!(
        output.stderr.is_empty(),
        "diff wrote errors: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Asserts that `dir` contains exactly `names`.
fn assert_names(dir: &Path, names: &[&str]) {
    let mut expected: Vec<OsString> = names.iter().map(OsString::from).collect();
    expected.sort();
    assert_eq!(list_names(dir), expected, "entries of {}", dir.display());
}

#[test]
fn ids_hosts_tags_list_snapshots() {
    let fixture = Fixture::new();
    let source = fixture.path("src");
    fs::create_dir(&source).unwrap();
    fs::write(source.join("file.txt"), b"first backup\n").unwrap();
    fixture.backup(&[&source], &["--tag", "nightly", "--host", "testhost"]);
    fs::write(source.join("file.txt"), b"second backup\n").unwrap();
    fixture.backup(&[&source], &["--host", "otherhost"]);

    let snapshots = fixture.snapshots();
    assert_eq!(snapshots.len(), 2, "snapshots after two backups");
    let tagged = &snapshots[0];
    let untagged = &snapshots[1];
    assert_eq!(tagged["hostname"], "testhost", "host of the first snapshot");
    assert_eq!(
        untagged["hostname"], "otherhost",
        "host of the second snapshot"
    );
    let tagged_id = tagged["id"].as_str().expect("snapshot id").to_string();
    let untagged_id = untagged["id"].as_str().expect("snapshot id").to_string();
    let tagged_folder = folder_name(tagged);
    let untagged_folder = folder_name(untagged);

    let mount = MountGuard::start(&fixture, &[]);
    assert_names(mount.mountpoint(), &["hosts", "ids", "snapshots", "tags"]);
    assert_names(&mount.path("ids"), &[&tagged_id, &untagged_id]);
    assert_names(&mount.path("hosts"), &["otherhost", "testhost"]);
    assert_names(&mount.path("hosts/testhost"), &[&tagged_folder]);
    assert_names(&mount.path("hosts/otherhost"), &[&untagged_folder]);
    assert_names(&mount.path("tags"), &["nightly"]);
    assert_names(&mount.path("tags/nightly"), &[&tagged_folder]);

    // Every view of a snapshot shows that snapshot's tree.
    let views = [
        (mount.path("ids").join(&tagged_id), "first backup\n"),
        (mount.path("ids").join(&untagged_id), "second backup\n"),
        (
            mount.path("hosts/testhost").join(&tagged_folder),
            "first backup\n",
        ),
        (
            mount.path("hosts/otherhost").join(&untagged_folder),
            "second backup\n",
        ),
        (
            mount.path("tags/nightly").join(&tagged_folder),
            "first backup\n",
        ),
    ];
    for (view, expected) in views {
        let file = below(&view, &source).join("file.txt");
        let content =
            fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        assert_eq!(content, expected, "content of {}", file.display());
    }

    let unknown = mount.path("ids").join("0".repeat(64));
    let error = fs::symlink_metadata(&unknown).expect_err("lstat of an unknown snapshot id");
    assert_eq!(
        error.raw_os_error(),
        Some(libc::ENOENT),
        "lstat {}: {error}",
        unknown.display()
    );
}
