//! Integration tests of the exclude options and --one-file-system of `backup`.
//!
//! They run as root, as CI does: the --one-file-system test mounts a tmpfs.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use support::{EXIT_FAILURE, EXIT_OK, Fixture, OpenWatch, describe, stderr_of, write_file};

/// Returns the snapshot's paths below `root`, relative to it, as a set.
fn listed_below(fixture: &Fixture, root: &Path) -> BTreeSet<String> {
    let prefix = format!("{}/", root.display());
    fixture
        .ls("latest")
        .into_iter()
        .filter_map(|line| line.strip_prefix(&prefix).map(str::to_string))
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Writes a tree with object files, build and dependency directories at two
/// depths.
fn write_project(root: &Path) {
    write_file(root, "src/main.c", b"int main(void) { return 0; }\n");
    write_file(root, "src/main.o", b"\x7fELF object");
    write_file(root, "src/deep/util.o", b"\x7fELF object");
    write_file(
        root,
        "app/node_modules/left-pad/index.js",
        b"module.exports = 1;\n",
    );
    write_file(root, "node_modules/x/index.js", b"module.exports = 2;\n");
    write_file(root, "build/out.bin", b"binary");
    // A file named like a directory pattern: `build/` must not match it.
    write_file(root, "docs/build", b"a file named build\n");
    write_file(root, "logs/app.log", b"log line\n");
    write_file(root, "logs/keep.log", b"important\n");
}

#[test]
fn exclude_name_pattern_any_depth() {
    let fixture = Fixture::new();
    let root = fixture.path("project");
    write_project(&root);
    let summary = fixture.backup(&[&root], &["--exclude", "*.o"]);
    let listed = listed_below(&fixture, &root);
    assert!(!listed.contains("src/main.o"), "{listed:?}");
    assert!(!listed.contains("src/deep/util.o"), "{listed:?}");
    assert!(listed.contains("src/main.c"), "{listed:?}");
    assert_eq!(summary["excluded"], 2, "{summary}");
    assert_eq!(summary["errors"].as_array().map(Vec::len), Some(0));
}

#[test]
fn exclude_anchored_absolute_pattern() {
    let fixture = Fixture::new();
    let root = fixture.path("project");
    write_project(&root);
    let pattern = format!("{}/logs/**", root.display());
    fixture.backup(&[&root], &["--exclude", &pattern]);
    let listed = listed_below(&fixture, &root);
    assert!(
        listed.contains("logs"),
        "the directory itself stays: {listed:?}"
    );
    assert!(!listed.contains("logs/app.log"), "{listed:?}");
    assert!(!listed.contains("logs/keep.log"), "{listed:?}");
    assert!(listed.contains("build/out.bin"), "{listed:?}");
}

#[test]
fn exclude_double_star_directory() {
    let fixture = Fixture::new();
    let root = fixture.path("project");
    write_project(&root);
    fixture.backup(&[&root], &["--exclude", "**/node_modules"]);
    let listed = listed_below(&fixture, &root);
    assert!(
        !listed.iter().any(|p| p.contains("node_modules")),
        "{listed:?}"
    );
    assert!(listed.contains("app"), "{listed:?}");
}

#[test]
fn exclude_trailing_slash_matches_only_dirs() {
    let fixture = Fixture::new();
    let root = fixture.path("project");
    write_project(&root);
    fixture.backup(&[&root], &["--exclude", "build/"]);
    let listed = listed_below(&fixture, &root);
    assert!(!listed.contains("build"), "{listed:?}");
    assert!(!listed.contains("build/out.bin"), "{listed:?}");
    assert!(
        listed.contains("docs/build"),
        "a file named build stays: {listed:?}"
    );
}

#[test]
fn exclude_negation_re_includes_file() {
    let fixture = Fixture::new();
    let root = fixture.path("project");
    write_project(&root);
    fixture.backup(&[&root], &["--exclude", "*.log", "--exclude", "!keep.log"]);
    let listed = listed_below(&fixture, &root);
    assert!(!listed.contains("logs/app.log"), "{listed:?}");
    assert!(listed.contains("logs/keep.log"), "{listed:?}");
}

#[test]
fn exclude_file_with_comments() {
    let fixture = Fixture::new();
    let root = fixture.path("project");
    write_project(&root);
    let list = fixture.path("excludes.txt");
    fs::write(
        &list,
        "# object files\n*.o\n\n   \n# dependencies\n**/node_modules\n#build/\n",
    )
    .unwrap();
    let list_arg = list.to_str().unwrap();
    let summary = fixture.backup(&[&root], &["--exclude-file", list_arg]);
    let listed = listed_below(&fixture, &root);
    assert!(!listed.contains("src/main.o"), "{listed:?}");
    assert!(!listed.contains("node_modules"), "{listed:?}");
    assert!(!listed.contains("app/node_modules"), "{listed:?}");
    assert!(
        listed.contains("build/out.bin"),
        "a commented-out pattern must not apply: {listed:?}"
    );
    assert_eq!(summary["excluded"], 4, "{summary}");
}

#[test]
fn exclude_file_missing_fails() {
    let fixture = Fixture::new();
    let root = fixture.path("project");
    write_project(&root);
    let missing = fixture.path("no-such-list");
    let output = fixture.run([
        "backup".as_ref(),
        "--exclude-file".as_ref(),
        missing.as_os_str(),
        root.as_os_str(),
    ]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    assert!(
        stderr_of(&output).contains("no-such-list"),
        "the message names the file: {}",
        describe(&output)
    );
    assert!(fixture.snapshots().is_empty(), "no snapshot is written");
}

#[test]
fn invalid_pattern_fails() {
    let fixture = Fixture::new();
    let root = fixture.path("project");
    write_project(&root);
    let output = fixture.run([
        "backup".as_ref(),
        "--exclude".as_ref(),
        "[z-a".as_ref(),
        root.as_os_str(),
    ]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    assert!(
        stderr_of(&output).contains("[z-a"),
        "the message names the pattern: {}",
        describe(&output)
    );
}

#[test]
fn exclude_if_present_skips_directory() {
    let fixture = Fixture::new();
    let root = fixture.path("home");
    write_file(&root, "photos/a.jpg", b"jpeg");
    write_file(&root, "scratch/.nobackup", b"");
    write_file(&root, "scratch/big.tmp", b"temporary");
    write_file(&root, "scratch/sub/more.tmp", b"temporary");
    let summary = fixture.backup(&[&root], &["--exclude-if-present", ".nobackup"]);
    let listed = listed_below(&fixture, &root);
    assert_eq!(listed, set(&["photos", "photos/a.jpg"]));
    assert_eq!(summary["excluded"], 1, "{summary}");
    assert_eq!(summary["errors"].as_array().map(Vec::len), Some(0));
}

#[test]
fn exclude_caches_needs_valid_signature() {
    let fixture = Fixture::new();
    let root = fixture.path("home");
    write_file(&root, "docs/a.txt", b"text");
    write_file(
        &root,
        "cache/CACHEDIR.TAG",
        b"Signature: 8a477f597d28d172789f06886806bc55\n# This file is a cache directory tag.\n",
    );
    write_file(&root, "cache/blob", b"cached");
    // A tag without the signature does not mark a cache.
    write_file(
        &root,
        "fake/CACHEDIR.TAG",
        b"Signature: not the right one\n",
    );
    write_file(&root, "fake/data", b"kept");
    fixture.backup(&[&root], &["--exclude-caches"]);
    let listed = listed_below(&fixture, &root);
    assert!(!listed.iter().any(|p| p.starts_with("cache")), "{listed:?}");
    assert!(listed.contains("fake/data"), "{listed:?}");
    assert!(listed.contains("fake/CACHEDIR.TAG"), "{listed:?}");
    assert!(listed.contains("docs/a.txt"), "{listed:?}");
}

#[test]
fn excluded_root_path_is_left_out() {
    let fixture = Fixture::new();
    let root = fixture.path("data");
    write_file(&root, "keep/a", b"a");
    write_file(&root, "skip/b", b"b");
    let keep = root.join("keep");
    let skip = root.join("skip");
    let pattern = format!("{}/", skip.display());
    let summary = fixture.backup(&[&keep, &skip], &["--exclude", &pattern]);
    let listed = listed_below(&fixture, &root);
    assert_eq!(listed, set(&["keep", "keep/a"]));
    assert_eq!(summary["excluded"], 1, "{summary}");
}

/// A tmpfs mounted for one test and unmounted when dropped.
struct TmpfsMount {
    path: std::path::PathBuf,
}

impl TmpfsMount {
    fn new(path: &Path) -> Self {
        fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m", "cairn-test"])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mount -t tmpfs failed ({status}); the test needs root"
        );
        Self {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

#[test]
fn one_file_system_keeps_mount_point_empty() {
    let fixture = Fixture::new();
    let root = fixture.path("tree");
    write_file(&root, "local.txt", b"on the same file system");
    let mount_point = root.join("mnt");
    let mount = TmpfsMount::new(&mount_point);
    write_file(&mount.path, "remote.txt", b"on the tmpfs");
    write_file(&mount.path, "sub/deeper.txt", b"on the tmpfs too");

    fixture.backup(&[&root], &["--one-file-system"]);
    let listed = listed_below(&fixture, &root);
    assert_eq!(listed, set(&["local.txt", "mnt"]));

    let id = fixture.snapshots()[0]["id"].as_str().unwrap().to_string();
    let target = fixture.restore(&id, "restored");
    let restored_mount = support::restored_path(&target, &mount_point);
    assert!(restored_mount.is_dir(), "the mount point comes back");
    assert_eq!(fs::read_dir(&restored_mount).unwrap().count(), 0);

    // Without the option, the backup descends into the mount.
    fixture.backup(&[&root], &[]);
    let listed = listed_below(&fixture, &root);
    assert!(listed.contains("mnt/remote.txt"), "{listed:?}");
    assert!(listed.contains("mnt/sub/deeper.txt"), "{listed:?}");
}

#[test]
fn one_file_system_follows_each_root() {
    let fixture = Fixture::new();
    let root = fixture.path("tree");
    write_file(&root, "local.txt", b"local");
    let mount_point = root.join("mnt");
    let mount = TmpfsMount::new(&mount_point);
    write_file(&mount.path, "remote.txt", b"remote");

    // A backed-up path on the other file system is walked in full.
    let output = fixture.run([
        "backup".as_ref(),
        "--json".as_ref(),
        "--one-file-system".as_ref(),
        mount_point.as_os_str(),
    ]);
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    let listed = listed_below(&fixture, &root);
    assert_eq!(listed, set(&["mnt", "mnt/remote.txt"]));
}

#[test]
fn exclude_rejected_with_stdin() {
    let fixture = Fixture::new();
    let output = fixture.run(["backup", "--stdin", "--exclude", "*.o"]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    assert!(
        stderr_of(&output).contains("apply to paths"),
        "{}",
        describe(&output)
    );
}

#[test]
fn excluded_files_are_never_opened() {
    let fixture = Fixture::new();
    let root = fixture.path("many");
    // The excluded file sits among files that the walker reads, so the
    // entries read ahead of the walker include it.
    for i in 0..20 {
        write_file(&root, &format!("a{i:02}.c"), b"int x;\n");
    }
    write_file(&root, "b.o", b"object code\n");
    for i in 0..20 {
        write_file(&root, &format!("c{i:02}.c"), b"int y;\n");
    }
    let excluded = root.join("b.o");
    let read = root.join("c00.c");
    let excluded_watch = OpenWatch::new(&excluded, false);
    let read_watch = OpenWatch::new(&read, false);

    let summary = fixture.backup(&[&root], &["--exclude", "*.o"]);
    assert_eq!(summary["excluded"], 1, "{summary}");
    assert!(
        read_watch.pending() > 0,
        "the watch saw no open of {}",
        read.display()
    );
    assert_eq!(
        excluded_watch.pending(),
        0,
        "the backup opened {}",
        excluded.display()
    );
}
