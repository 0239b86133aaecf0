//! Integration tests of the `cairn` binary on real files and repositories.
//!
//! Each test runs the built binary as a child process against a repository in its
//! own temporary directory. The tests expect to run as root, as CI does, because
//! they change owners, set a setuid bit and switch to user `nobody` with `setpriv`.

mod support;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use tempfile::TempDir;

const PASSWORD: &str = "correct horse battery staple";

const EXIT_OK: i32 = 0;
const EXIT_FAILURE: i32 = 1;
const EXIT_INCOMPLETE: i32 = 3;
const EXIT_NO_REPOSITORY: i32 = 10;
const EXIT_WRONG_PASSWORD: i32 = 12;

/// Uid and gid of `nobody` on Debian.
const NOBODY: u32 = 65534;

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

/// Returns a `cairn` command that ignores the caller's repository, password and
/// log settings and reads no standard input.
fn cairn_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cairn"));
    for name in [
        "CAIRN_REPO",
        "CAIRN_PASSWORD",
        "CAIRN_PASSWORD_FILE",
        "RUST_LOG",
    ] {
        command.env_remove(name);
    }
    command.stdin(Stdio::null());
    command
}

/// Formats a finished command for assertion messages.
fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn stdout_of(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("cairn prints UTF-8 on standard output")
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A temporary directory with a password file and an initialized repository.
struct Fixture {
    dir: TempDir,
    repo: PathBuf,
    password_file: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("create temporary directory");
        let repo = dir.path().join("repo");
        let password_file = dir.path().join("password");
        fs::write(&password_file, format!("{PASSWORD}\n")).expect("write password file");
        let fixture = Fixture {
            dir,
            repo,
            password_file,
        };
        fixture.run_ok(["init"]);
        fixture
    }

    /// Returns a path inside the temporary directory.
    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Returns a command with `--repo` and `--password-file` set.
    fn command(&self) -> Command {
        let mut command = cairn_command();
        command
            .arg("--repo")
            .arg(&self.repo)
            .arg("--password-file")
            .arg(&self.password_file);
        command
    }

    fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command()
            .args(args)
            .output()
            .expect("start the cairn binary")
    }

    /// Runs a command that must exit 0 and returns its standard output.
    fn run_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        let output = self.run(&args);
        assert_eq!(
            output.status.code(),
            Some(EXIT_OK),
            "cairn {args:?} failed: {}",
            describe(&output)
        );
        stdout_of(&output)
    }

    /// Backs up `paths` and returns the JSON summary.
    fn backup(&self, paths: &[&Path], options: &[&str]) -> Value {
        let mut args: Vec<OsString> = vec!["backup".into(), "--json".into()];
        args.extend(options.iter().map(OsString::from));
        args.extend(paths.iter().map(|p| p.as_os_str().to_os_string()));
        let stdout = self.run_ok(&args);
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("backup --json printed invalid JSON ({e}): {stdout}"))
    }

    /// Returns the output of `snapshots --json`.
    fn snapshots(&self) -> Vec<Value> {
        let stdout = self.run_ok(["snapshots", "--json"]);
        let value: Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("snapshots --json printed invalid JSON ({e}): {stdout}"));
        value
            .as_array()
            .unwrap_or_else(|| panic!("snapshots --json printed no array: {stdout}"))
            .clone()
    }

    /// Restores `snapshot` into a new directory and returns that directory.
    fn restore(&self, snapshot: &str, target_name: &str) -> PathBuf {
        let target = self.path(target_name);
        self.run_ok([
            OsStr::new("restore"),
            OsStr::new(snapshot),
            OsStr::new("--target"),
            target.as_os_str(),
        ]);
        target
    }
}

/// Returns the place below `target` where a restore puts the absolute `path`.
fn restored_path(target: &Path, path: &Path) -> PathBuf {
    target.join(path.strip_prefix("/").expect("snapshot paths are absolute"))
}

fn snapshot_id(summary: &Value) -> String {
    summary["snapshot"]
        .as_str()
        .unwrap_or_else(|| panic!("backup summary has no snapshot id: {summary}"))
        .to_string()
}

// ---------------------------------------------------------------------------
// Building and recording trees
// ---------------------------------------------------------------------------

/// Returns `len` deterministic pseudo-random bytes from SplitMix64. They do not
/// compress, and a large file of them splits into several chunks.
fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        bytes.extend_from_slice(&z.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Sets access and modification time of `path` to `secs.nanos` without following
/// a symlink.
fn set_mtime(path: &Path, secs: i64, nanos: i64) {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;

    let time = TimeSpec::new(secs, nanos);
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &time,
        &time,
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap_or_else(|e| panic!("utimensat {}: {e}", path.display()));
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

fn set_owner(path: &Path, uid: u32, gid: u32) {
    lchown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {uid}:{gid} {}: {e}", path.display()));
}

/// Metadata and content of one entry, as a restore must bring it back.
#[derive(Debug, PartialEq)]
struct EntryState {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i128,
    size: u64,
    content: Option<blake3::Hash>,
    target: Option<PathBuf>,
}

/// Records every entry below `root` (and `root` itself, as the empty path), keyed
/// by the path relative to `root`.
fn record_tree(root: &Path) -> BTreeMap<PathBuf, EntryState> {
    let mut entries = BTreeMap::new();
    record_entry(root, PathBuf::new(), &mut entries);
    entries
}

fn record_entry(root: &Path, relative: PathBuf, entries: &mut BTreeMap<PathBuf, EntryState>) {
    let path = root.join(&relative);
    let md =
        fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    let file_type = md.file_type();
    let kind = if file_type.is_dir() {
        "directory"
    } else if file_type.is_file() {
        "file"
    } else if file_type.is_symlink() {
        "symlink"
    } else {
        "other"
    };
    let content = if file_type.is_file() {
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        Some(blake3::hash(&bytes))
    } else {
        None
    };
    let target = if file_type.is_symlink() {
        Some(fs::read_link(&path).unwrap_or_else(|e| panic!("readlink {}: {e}", path.display())))
    } else {
        None
    };
    entries.insert(
        relative.clone(),
        EntryState {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
            // A directory's size depends on the file system's history, not on its entries.
            size: if file_type.is_dir() { 0 } else { md.size() },
            content,
            target,
        },
    );
    if file_type.is_dir() {
        let mut names: Vec<OsString> = fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("list {}: {e}", path.display()))
            .map(|entry| entry.expect("directory entry").file_name())
            .collect();
        names.sort();
        for name in names {
            record_entry(root, relative.join(name), entries);
        }
    }
}

/// Asserts that two trees have the same entries, each with the same type, mode,
/// owner, mtime, size, content and symlink target.
fn assert_same_tree(source: &Path, restored: &Path) {
    let expected = record_tree(source);
    let actual = record_tree(restored);
    let expected_paths: Vec<&PathBuf> = expected.keys().collect();
    let actual_paths: Vec<&PathBuf> = actual.keys().collect();
    assert_eq!(
        actual_paths,
        expected_paths,
        "restored tree {} has other entries than {}",
        restored.display(),
        source.display()
    );
    for (path, want) in &expected {
        let got = &actual[path];
        assert_eq!(got.kind, want.kind, "type of {path:?}");
        assert_eq!(
            got.mode, want.mode,
            "mode of {path:?}: {:o} vs {:o}",
            got.mode, want.mode
        );
        assert_eq!(got.uid, want.uid, "uid of {path:?}");
        assert_eq!(got.gid, want.gid, "gid of {path:?}");
        assert_eq!(got.mtime_ns, want.mtime_ns, "mtime in ns of {path:?}");
        assert_eq!(got.size, want.size, "size of {path:?}");
        assert_eq!(got.content, want.content, "content hash of {path:?}");
        assert_eq!(got.target, want.target, "symlink target of {path:?}");
    }
}

/// Lists every file below `dir`, recursively.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        let md = fs::symlink_metadata(&path).expect("lstat repository entry");
        if md.is_dir() {
            files.extend(files_below(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Returns the total size in bytes of all files below `dir`.
fn total_size(dir: &Path) -> u64 {
    files_below(dir)
        .iter()
        .map(|f| fs::symlink_metadata(f).expect("lstat").len())
        .sum()
}

/// Lists the data regions of a file as `(start, end)` byte offsets, using
/// `lseek` with SEEK_DATA and SEEK_HOLE.
fn data_regions(file: &File, size: u64) -> Vec<(u64, u64)> {
    use std::os::fd::AsRawFd;

    let fd = file.as_raw_fd();
    let mut regions = Vec::new();
    let mut position = 0i64;
    while (position as u64) < size {
        // SAFETY: lseek on an open descriptor touches no memory.
        let start = unsafe { libc::lseek(fd, position, libc::SEEK_DATA) };
        if start < 0 {
            let error = std::io::Error::last_os_error();
            assert_eq!(
                error.raw_os_error(),
                Some(libc::ENXIO),
                "SEEK_DATA: {error}"
            );
            break;
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        assert!(end >= 0, "SEEK_HOLE: {}", std::io::Error::last_os_error());
        regions.push((start as u64, end as u64));
        position = end;
    }
    regions
}

fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// Writes `keep/one`, `keep/inner/two`, `skip/three` and `top` below `root`.
fn write_small_tree(root: &Path) {
    fs::create_dir_all(root.join("keep/inner")).unwrap();
    fs::create_dir_all(root.join("skip")).unwrap();
    fs::write(root.join("keep/one"), b"first file\n").unwrap();
    fs::write(root.join("keep/inner/two"), b"second file\n").unwrap();
    fs::write(root.join("skip/three"), b"third file\n").unwrap();
    fs::write(root.join("top"), b"top-level file\n").unwrap();
}

// ---------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------

#[test]
fn restore_matches_source_metadata() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    fs::create_dir_all(src.join("a/b/c")).unwrap();
    fs::create_dir(src.join("private")).unwrap();
    fs::create_dir(src.join("read-only")).unwrap();

    let big = pseudo_random_bytes(11 * 1024 * 1024 + 123, 1);
    fs::write(src.join("a/big.bin"), &big).unwrap();
    fs::write(src.join("a/b/c/nested.txt"), b"nested text\n").unwrap();
    fs::write(src.join("empty"), b"").unwrap();
    fs::write(src.join("setuid-tool"), b"#!/bin/sh\necho tool\n").unwrap();
    fs::write(src.join("private/secret.conf"), b"key = value\n").unwrap();
    symlink("b/c/nested.txt", src.join("a/relative-link")).unwrap();
    fs::write(
        src.join("read-only/inside"),
        b"in a directory without write bit\n",
    )
    .unwrap();
    symlink("../does/not/exist", src.join("dangling-link")).unwrap();
    nix::unistd::mkfifo(
        &src.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o620),
    )
    .unwrap();

    // chown clears the setuid bit, so owners are set before modes.
    set_owner(&src.join("setuid-tool"), 1234, 5678);
    set_owner(&src.join("private"), 4321, 8765);
    set_owner(&src.join("private/secret.conf"), 4321, 8765);
    set_owner(&src.join("dangling-link"), 1111, 2222);
    set_mode(&src.join("setuid-tool"), 0o4755);
    set_mode(&src.join("private/secret.conf"), 0o640);
    set_mode(&src.join("private"), 0o750);
    set_mode(&src.join("a/b"), 0o711);
    set_mode(&src.join("read-only/inside"), 0o444);
    set_mode(&src.join("read-only"), 0o555);

    // Times last, deepest first, because adding entries changes a directory's mtime.
    let mut mtime_secs = 1_600_000_000;
    for relative in [
        "a/big.bin",
        "a/b/c/nested.txt",
        "empty",
        "setuid-tool",
        "private/secret.conf",
        "a/relative-link",
        "dangling-link",
        "fifo",
        "read-only/inside",
        "read-only",
        "a/b/c",
        "a/b",
        "a",
        "private",
        "",
    ] {
        mtime_secs += 1000;
        set_mtime(&src.join(relative), mtime_secs, 123_456_789);
    }

    let summary = fixture.backup(&[&src], &[]);
    assert_eq!(summary["files_new"], 6, "new files in summary: {summary}");
    assert_eq!(
        summary["errors"].as_array().map(Vec::len),
        Some(0),
        "errors: {summary}"
    );

    let target = fixture.restore("latest", "target");
    assert_same_tree(&src, &restored_path(&target, &src));
}

#[test]
fn backup_unchanged_tree_adds_nothing() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    write_small_tree(&src);
    fs::write(src.join("random.bin"), pseudo_random_bytes(3 << 20, 2)).unwrap();

    let first = fixture.backup(&[&src], &[]);
    assert_eq!(first["files_new"], 5, "first backup: {first}");
    let size_before = total_size(&fixture.repo);

    let second = fixture.backup(&[&src], &[]);
    assert_eq!(second["files_new"], 0, "second backup: {second}");
    assert_eq!(second["files_changed"], 0, "second backup: {second}");
    assert_eq!(second["files_unchanged"], 5, "second backup: {second}");
    assert_eq!(second["bytes_read"], 0, "second backup: {second}");
    assert_eq!(
        second["parent"].as_str(),
        Some(snapshot_id(&first).as_str()),
        "second backup: {second}"
    );

    let size_after = total_size(&fixture.repo);
    let allowed = size_before / 100 + 4096;
    assert!(
        size_after.saturating_sub(size_before) < allowed,
        "repository grew from {size_before} to {size_after} bytes; at most {allowed} allowed"
    );
}

#[test]
fn forced_reread_counts_unchanged_files() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    write_small_tree(&src);
    fs::write(src.join("random.bin"), pseudo_random_bytes(3 << 20, 3)).unwrap();
    fixture.backup(&[&src], &[]);
    fs::write(src.join("random.bin"), pseudo_random_bytes(3 << 20, 4)).unwrap();

    let forced = fixture.backup(&[&src], &["--force"]);
    assert_eq!(forced["files_new"], 0, "{forced}");
    assert_eq!(forced["files_changed"], 1, "{forced}");
    assert_eq!(forced["files_unchanged"], 4, "{forced}");
    let read = forced["bytes_read"].as_u64().expect("bytes_read");
    assert!(read > 3 << 20, "--force read only {read} bytes: {forced}");
}

#[test]
fn growing_file_is_read_to_size_at_open() {
    use std::io::Write;

    let fixture = Fixture::new();
    let src = fixture.path("src");
    fs::create_dir_all(&src).unwrap();
    let path = src.join("app.log");
    let initial = pseudo_random_bytes(8 << 20, 5);
    fs::write(&path, &initial).unwrap();

    // A writer starts appending as soon as the backup opens the file and
    // appends far faster than the backup reads, up to 128 MiB.
    let mut appender = fs::OpenOptions::new().append(true).open(&path).unwrap();
    let watch = support::OpenWatch::new(&path, true);
    let writer = std::thread::spawn(move || {
        watch.wait();
        let block = vec![b'x'; 64 << 10];
        for _ in 0..(128 << 20) / block.len() {
            appender.write_all(&block).unwrap();
        }
    });
    let summary = fixture.backup(&[&src], &[]);
    writer.join().unwrap();

    // Whether the writer appended before the backup looked at the file again
    // depends on scheduling, so only the field is checked.
    assert!(summary["changed_while_read"].is_u64(), "{summary}");
    let read = summary["bytes_read"].as_u64().expect("bytes_read");
    let limit = initial.len() as u64 + (64 << 20);
    assert!(
        read < limit,
        "the backup read {read} bytes of a file of {} bytes at open: {summary}",
        initial.len()
    );
    let target = fixture.restore("latest", "target");
    let restored = fs::read(restored_path(&target, &src).join("app.log")).unwrap();
    assert_eq!(restored.len() as u64, read);
    assert!(
        restored[..initial.len()] == initial[..],
        "restored file lost its start"
    );
    assert!(restored[initial.len()..].iter().all(|b| *b == b'x'));
}

#[test]
fn path_below_directory_symlink_is_followed() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    fs::create_dir_all(src.join("real")).unwrap();
    fs::write(src.join("real/file"), b"reached through a link\n").unwrap();
    std::os::unix::fs::symlink("real", src.join("link")).unwrap();

    let given = src.join("link/file");
    let summary = fixture.backup(&[&given], &[]);
    assert_eq!(
        summary["errors"].as_array().map(Vec::len),
        Some(0),
        "{summary}"
    );
    assert_eq!(summary["files_new"], 1, "{summary}");

    let target = fixture.restore("latest", "target");
    let restored = restored_path(&target, &given);
    assert_eq!(fs::read(&restored).unwrap(), b"reached through a link\n");
    assert!(
        fs::symlink_metadata(restored.parent().unwrap())
            .unwrap()
            .is_dir(),
        "the link above the path is restored as a directory"
    );
}

#[test]
fn diff_lists_changed_removed_added() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    fs::create_dir_all(src.join("dir")).unwrap();
    fs::write(src.join("dir/changed"), b"old content\n").unwrap();
    fs::write(src.join("removed"), b"removed later\n").unwrap();
    fs::write(src.join("kept"), b"stays the same\n").unwrap();
    let first = snapshot_id(&fixture.backup(&[&src], &[]));

    fs::write(src.join("dir/changed"), b"new content, longer\n").unwrap();
    fs::remove_file(src.join("removed")).unwrap();
    fs::write(src.join("dir/added"), b"added later\n").unwrap();
    let second = snapshot_id(&fixture.backup(&[&src], &[]));

    let stdout = fixture.run_ok(["diff", first.as_str(), second.as_str()]);
    let lines: Vec<&str> = stdout.lines().collect();
    let src = src.display();
    assert_eq!(
        lines,
        [
            format!("+ {src}/dir/added"),
            format!("M {src}/dir/changed"),
            format!("- {src}/removed"),
        ],
        "diff output:\n{stdout}"
    );
}

#[test]
fn repository_contains_no_plaintext() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    fs::create_dir(&src).unwrap();
    let line = "plaintext marker 5b1e: the backup must never store this line readably";
    let name = "name-marker-8c2d.txt";
    let mut text = String::new();
    for i in 0..50 {
        text.push_str(&format!("filler line {i}\n"));
    }
    text.push_str(line);
    text.push('\n');
    fs::write(src.join(name), &text).unwrap();
    fixture.backup(&[&src], &[]);

    let files = files_below(&fixture.repo);
    assert!(files.len() >= 4, "repository has only {files:?}");
    for file in files {
        let bytes = fs::read(&file).unwrap();
        assert!(
            !contains_bytes(&bytes, line.as_bytes()),
            "{} contains the plaintext line",
            file.display()
        );
        assert!(
            !contains_bytes(&bytes, name.as_bytes()),
            "{} contains the file name",
            file.display()
        );
    }
}

#[test]
fn odd_file_names_round_trip() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    fs::create_dir(&src).unwrap();
    let latin1 = OsString::from_vec(b"caf\xe9".to_vec());
    let newline = OsString::from("new\nline");
    fs::write(src.join(&latin1), b"latin-1 name\n").unwrap();
    fs::write(src.join(&newline), b"newline name\n").unwrap();
    fixture.backup(&[&src], &[]);

    let target = fixture.restore("latest", "target");
    let restored = restored_path(&target, &src);
    let latin1_content = fs::read(restored.join(&latin1));
    assert_eq!(
        latin1_content.ok().as_deref(),
        Some(&b"latin-1 name\n"[..]),
        "restored file caf\\xe9"
    );
    let newline_content = fs::read(restored.join(&newline));
    assert_eq!(
        newline_content.ok().as_deref(),
        Some(&b"newline name\n"[..]),
        "restored file new\\nline"
    );
    assert_same_tree(&src, &restored);
}

#[test]
fn ls_escapes_odd_file_names() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join(OsStr::from_bytes(b"caf\xe9")), b"x").unwrap();
    fs::write(src.join("new\nline"), b"y").unwrap();
    fixture.backup(&[&src], &[]);

    let stdout = fixture.run_ok(["ls", "latest"]);
    let lines: Vec<&str> = stdout.lines().collect();
    let src = src.display();
    let latin1 = format!("{src}/caf\\xe9");
    let newline = format!("{src}/new\\nline");
    assert!(
        lines.contains(&latin1.as_str()),
        "no line {latin1:?} in ls output:\n{stdout}"
    );
    assert!(
        lines.contains(&newline.as_str()),
        "no line {newline:?} in ls output:\n{stdout}"
    );
    assert!(
        !lines.iter().any(|l| *l == "line" || l.ends_with("/new")),
        "a name was split across lines:\n{stdout}"
    );
}

#[test]
fn restore_writes_shared_chunks_to_every_place() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    fs::create_dir_all(src.join("copy")).unwrap();
    // The same 3 MiB twice in one file, so that its second half repeats the
    // chunks of its first, and the whole file again in another directory.
    let block = pseudo_random_bytes(3 << 20, 9);
    let twice = [block.as_slice(), block.as_slice()].concat();
    fs::write(src.join("twice"), &twice).unwrap();
    fs::write(src.join("copy/twice"), &twice).unwrap();
    fs::write(src.join("copy/block"), &block).unwrap();
    // A file with data at both ends of a hole, and one that ends in a hole.
    let holes = File::create(src.join("holes")).unwrap();
    holes.write_all_at(&block[..70_000], 0).unwrap();
    holes.write_all_at(&block[..5_000], 40 << 20).unwrap();
    let tail = File::create(src.join("tail-hole")).unwrap();
    tail.write_all_at(b"head", 0).unwrap();
    tail.set_len(9 << 20).unwrap();
    fs::write(src.join("empty"), b"").unwrap();

    let summary = fixture.backup(&[&src], &[]);
    let target = fixture.restore(&snapshot_id(&summary), "target");
    let restored = restored_path(&target, &src);
    assert_same_tree(&src, &restored);
    assert!(
        fs::metadata(restored.join("holes")).unwrap().blocks() * 512 < 8 << 20,
        "the hole was written out"
    );
}

#[test]
fn restore_keeps_hard_links() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("original"), b"one inode, two names\n").unwrap();
    fs::hard_link(src.join("original"), src.join("sub/link")).unwrap();
    fs::write(src.join("single"), b"one name\n").unwrap();
    fixture.backup(&[&src], &[]);

    let target = fixture.restore("latest", "target");
    let restored = restored_path(&target, &src);
    let original = fs::metadata(restored.join("original")).expect("restored original");
    let link = fs::metadata(restored.join("sub/link")).expect("restored link");
    let single = fs::metadata(restored.join("single")).expect("restored single");
    assert_eq!(link.ino(), original.ino(), "both names share one inode");
    assert_eq!(original.nlink(), 2, "link count of the shared inode");
    assert_eq!(single.nlink(), 1, "link count of a file with one name");
    assert_eq!(
        fs::read(restored.join("sub/link")).unwrap(),
        b"one inode, two names\n",
        "content through the second name"
    );
}

#[test]
fn sparse_file_round_trips_sparse() {
    const SIZE: u64 = 1 << 30;
    const DATA_OFFSET: u64 = SIZE / 2;

    let fixture = Fixture::new();
    let src = fixture.path("src");
    fs::create_dir(&src).unwrap();
    let data = pseudo_random_bytes(4096, 3);
    let file = File::create(src.join("sparse")).unwrap();
    file.set_len(SIZE).unwrap();
    file.write_all_at(&data, DATA_OFFSET).unwrap();
    drop(file);
    let source_blocks = fs::metadata(src.join("sparse")).unwrap().blocks();
    assert!(
        source_blocks * 512 < 1 << 20,
        "the source file system did not create a sparse file ({source_blocks} blocks)"
    );

    let summary = fixture.backup(&[&src], &[]);
    let bytes_read = summary["bytes_read"].as_u64().expect("bytes_read");
    assert!(
        bytes_read <= 1 << 20,
        "backup read {bytes_read} bytes of a file with 4 KiB of data: {summary}"
    );

    let target = fixture.restore("latest", "target");
    let restored = restored_path(&target, &src).join("sparse");
    let md = fs::metadata(&restored).expect("restored sparse file");
    assert_eq!(md.len(), SIZE, "restored size");
    assert!(
        md.blocks() * 512 < 1 << 20,
        "restored file allocates {} bytes for 4 KiB of data",
        md.blocks() * 512
    );

    // Bytes outside the data regions that SEEK_DATA and SEEK_HOLE report read as
    // zeros, so comparing the data regions compares the whole file without
    // reading 1 GiB of holes.
    let restored_file = File::open(&restored).unwrap();
    let regions = data_regions(&restored_file, SIZE);
    let mut region_bytes = 0;
    for (start, end) in &regions {
        let mut actual = vec![0u8; (end - start) as usize];
        restored_file.read_exact_at(&mut actual, *start).unwrap();
        let mut expected = vec![0u8; actual.len()];
        let data_start = DATA_OFFSET.max(*start);
        let data_end = (DATA_OFFSET + data.len() as u64).min(*end);
        if data_start < data_end {
            let source =
                &data[(data_start - DATA_OFFSET) as usize..(data_end - DATA_OFFSET) as usize];
            expected[(data_start - start) as usize..(data_end - start) as usize]
                .copy_from_slice(source);
        }
        assert!(actual == expected, "restored bytes {start}..{end} differ");
        region_bytes += end - start;
    }
    let covers_data = regions
        .iter()
        .any(|(start, end)| *start <= DATA_OFFSET && DATA_OFFSET + data.len() as u64 <= *end);
    assert!(
        covers_data,
        "no data region holds the 4 KiB of data: {regions:?}"
    );
    assert!(
        region_bytes < 1 << 20,
        "data regions of the restored file span {region_bytes} bytes: {regions:?}"
    );

    let mut restored_file = restored_file;
    let mut rest = Vec::new();
    restored_file.seek(SeekFrom::Start(SIZE)).unwrap();
    restored_file.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "bytes past the end of the restored file");
}

#[test]
fn xattrs_round_trip_on_file_and_dir() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    fs::create_dir_all(src.join("dir")).unwrap();
    fs::write(src.join("file"), b"with attribute\n").unwrap();

    let probe = Command::new("setfattr")
        .args(["-n", "user.probe", "-v", "1"])
        .arg(src.join("file"))
        .output()
        .expect("run setfattr (package attr)");
    assert!(
        probe.status.success(),
        "the file system of {} does not take user xattrs: {}",
        src.display(),
        describe(&probe)
    );
    xattr::remove(src.join("file"), "user.probe").unwrap();
    xattr::set(src.join("file"), "user.test", b"file value").unwrap();
    xattr::set(src.join("dir"), "user.test", b"directory value").unwrap();
    fixture.backup(&[&src], &[]);

    let target = fixture.restore("latest", "target");
    let restored = restored_path(&target, &src);
    let file_value = xattr::get(restored.join("file"), "user.test").unwrap();
    assert_eq!(
        file_value.as_deref(),
        Some(&b"file value"[..]),
        "user.test on the file"
    );
    let dir_value = xattr::get(restored.join("dir"), "user.test").unwrap();
    assert_eq!(
        dir_value.as_deref(),
        Some(&b"directory value"[..]),
        "user.test on the directory"
    );
}

#[test]
fn restore_include_selects_subtree() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    write_small_tree(&src);
    fixture.backup(&[&src], &[]);

    let target = fixture.path("target");
    fixture.run_ok([
        OsStr::new("restore"),
        OsStr::new("latest"),
        OsStr::new("--target"),
        target.as_os_str(),
        OsStr::new("--include"),
        src.join("keep").as_os_str(),
    ]);

    let restored = restored_path(&target, &src);
    assert_same_tree(&src.join("keep"), &restored.join("keep"));
    assert!(
        !restored.join("skip").exists(),
        "the directory outside the include was restored"
    );
    assert!(
        !restored.join("top").exists(),
        "the file outside the include was restored"
    );
    let names: Vec<OsString> = fs::read_dir(&restored)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["keep"], "entries of the restored source directory");
}

#[test]
fn restore_include_keeps_trailing_space() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("name"), b"without space\n").unwrap();
    fs::write(src.join("name "), b"with trailing space\n").unwrap();
    fixture.backup(&[&src], &[]);

    let target = fixture.path("target");
    fixture.run_ok([
        OsStr::new("restore"),
        OsStr::new("latest"),
        OsStr::new("--target"),
        target.as_os_str(),
        OsStr::new("--include"),
        src.join("name ").as_os_str(),
    ]);

    let restored = restored_path(&target, &src);
    assert_eq!(
        fs::read(restored.join("name ")).ok().as_deref(),
        Some(&b"with trailing space\n"[..]),
        "the included file \"name \""
    );
    assert!(
        !restored.join("name").exists(),
        "the file \"name\" outside the include was restored"
    );
}

#[test]
fn ls_long_shows_type_mode_owner_size() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    fs::create_dir(&src).unwrap();
    let file = src.join("file");
    let link = src.join("link");
    fs::write(&file, b"eleven byte").unwrap();
    symlink("file", &link).unwrap();
    set_owner(&file, 1234, 5678);
    set_mode(&file, 0o640);
    set_mtime(&file, 1_600_000_000, 0);
    fixture.backup(&[&src], &[]);

    let stdout = fixture.run_ok(["ls", "latest", "-l"]);
    let file_line = stdout
        .lines()
        .find(|l| l.ends_with(file.to_str().unwrap()))
        .unwrap_or_else(|| panic!("no line for {}:\n{stdout}", file.display()));
    let fields: Vec<&str> = file_line.split_whitespace().collect();
    assert_eq!(fields.len(), 6, "fields of {file_line:?}");
    assert_eq!(fields[0], "-0640", "type and mode in {file_line:?}");
    assert_eq!(
        fields[1], "1234",
        "owner without a user name in {file_line:?}"
    );
    assert_eq!(
        fields[2], "5678",
        "group without a group name in {file_line:?}"
    );
    assert_eq!(fields[3], "11", "size in {file_line:?}");
    assert!(
        fields[4].starts_with("2020-09-13T12:26:40"),
        "mtime in {file_line:?}"
    );

    let link_suffix = format!("{} -> file", link.display());
    let link_line = stdout
        .lines()
        .find(|l| l.ends_with(&link_suffix))
        .unwrap_or_else(|| panic!("no line ending in {link_suffix:?}:\n{stdout}"));
    assert!(link_line.starts_with('l'), "type of {link_line:?}");
}

// ---------------------------------------------------------------------------
// Snapshots and their ids
// ---------------------------------------------------------------------------

#[test]
fn snapshots_json_lists_fields_and_parent() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    write_small_tree(&src);
    let first = snapshot_id(&fixture.backup(
        &[&src],
        &[
            "--time",
            "2025-01-02T03:04:05Z",
            "--tag",
            "nightly",
            "--host",
            "test-host",
        ],
    ));
    fs::write(src.join("top"), b"changed\n").unwrap();
    let second = snapshot_id(&fixture.backup(&[&src], &["--host", "test-host"]));

    let list = fixture.snapshots();
    assert_eq!(list.len(), 2, "snapshots: {list:?}");
    let by_id = |id: &str| {
        list.iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("snapshot {id} missing from {list:?}"))
            .clone()
    };
    let first_json = by_id(&first);
    let second_json = by_id(&second);
    let src_text = src.to_str().unwrap();

    assert_eq!(first_json["time"], "2025-01-02T03:04:05Z", "{first_json}");
    assert_eq!(
        first_json["paths"],
        serde_json::json!([src_text]),
        "{first_json}"
    );
    assert_eq!(
        first_json["tags"],
        serde_json::json!(["nightly"]),
        "{first_json}"
    );
    assert_eq!(first_json["hostname"], "test-host", "{first_json}");
    assert!(first_json["parent"].is_null(), "{first_json}");
    assert_eq!(second_json["parent"], first.as_str(), "{second_json}");
    assert_eq!(
        second_json["paths"],
        serde_json::json!([src_text]),
        "{second_json}"
    );
    assert_eq!(second_json["hostname"], "test-host", "{second_json}");
    assert!(second_json["time"].is_string(), "{second_json}");
}

#[test]
fn snapshot_latest_and_prefix_resolve() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    write_small_tree(&src);
    let first = snapshot_id(&fixture.backup(&[&src], &[]));
    fs::write(src.join("only-in-second"), b"new\n").unwrap();
    let second = snapshot_id(&fixture.backup(&[&src], &[]));

    let latest = fixture.run_ok(["ls", "latest"]);
    assert!(
        latest.contains("/only-in-second"),
        "`latest` did not list the second snapshot:\n{latest}"
    );

    // The shortest prefix of the first id that the second id does not share.
    let length = first
        .chars()
        .zip(second.chars())
        .take_while(|(a, b)| a == b)
        .count()
        + 1;
    let prefix = &first[..length];
    let by_prefix = fixture.run_ok(["ls", prefix]);
    assert!(
        by_prefix.contains("/keep/one"),
        "prefix {prefix} listed no files:\n{by_prefix}"
    );
    assert!(
        !by_prefix.contains("/only-in-second"),
        "prefix {prefix} resolved to the second snapshot:\n{by_prefix}"
    );

    let upper = fixture.run_ok(["ls", &first[..8].to_ascii_uppercase()]);
    assert_eq!(
        upper, by_prefix,
        "an upper-case prefix resolves like a lower-case one"
    );
}

#[test]
fn snapshot_ambiguous_prefix_fails() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    write_small_tree(&src);

    // Of 17 snapshot ids, at least two start with the same hex digit.
    let mut ids: Vec<String> = Vec::new();
    let shared = loop {
        let time = format!("2025-01-01T00:00:{:02}Z", ids.len());
        let id = snapshot_id(&fixture.backup(&[&src], &["--time", &time]));
        let first_digit = id[..1].to_string();
        if ids.iter().any(|other| other.starts_with(&first_digit)) {
            break first_digit;
        }
        ids.push(id);
        assert!(
            ids.len() <= 16,
            "17 distinct first digits among hex ids: {ids:?}"
        );
    };

    let output = fixture.run(["ls", shared.as_str()]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "ls with an ambiguous prefix: {}",
        describe(&output)
    );
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains(&format!("start with \"{shared}\"")),
        "the error names no ambiguity: {stderr}"
    );
    assert!(
        stderr.contains("give more characters"),
        "the error does not say what to do: {stderr}"
    );
}

#[test]
fn snapshot_unknown_prefix_fails() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    write_small_tree(&src);
    let id = snapshot_id(&fixture.backup(&[&src], &[]));
    let unknown = if id.starts_with('0') { "1" } else { "0" };

    let output = fixture.run(["ls", unknown]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "ls with an unknown prefix: {}",
        describe(&output)
    );
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains(&format!("no snapshot matches \"{unknown}\"")),
        "the error does not say that no snapshot matches: {stderr}"
    );
    assert!(
        stdout_of(&output).is_empty(),
        "ls printed entries for an unknown prefix"
    );
}

// ---------------------------------------------------------------------------
// Passwords and missing repositories
// ---------------------------------------------------------------------------

#[test]
fn wrong_password_exits_12() {
    let fixture = Fixture::new();
    let output = cairn_command()
        .arg("--repo")
        .arg(&fixture.repo)
        .arg("snapshots")
        .env("CAIRN_PASSWORD", "not the password")
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(EXIT_WRONG_PASSWORD),
        "{}",
        describe(&output)
    );
    let stderr = stderr_of(&output);
    assert!(stderr.contains("wrong password"), "stderr: {stderr}");
}

#[test]
fn password_from_environment_opens_repository() {
    let fixture = Fixture::new();
    let output = cairn_command()
        .arg("--repo")
        .arg(&fixture.repo)
        .arg("snapshots")
        .env("CAIRN_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    assert!(
        stdout_of(&output).contains("0 snapshots"),
        "{}",
        describe(&output)
    );
}

#[test]
fn missing_repository_exits_10() {
    let dir = tempfile::tempdir().unwrap();
    let output = cairn_command()
        .arg("--repo")
        .arg(dir.path().join("nothing-here"))
        .arg("snapshots")
        .env("CAIRN_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(EXIT_NO_REPOSITORY),
        "{}",
        describe(&output)
    );
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("cairn init"),
        "the error names no next step: {stderr}"
    );
}

// ---------------------------------------------------------------------------
// Damage and read errors
// ---------------------------------------------------------------------------

/// A repository whose largest pack has one byte flipped in its middle. That pack
/// contains only the chunks of `src/big.bin`, because the other files were
/// backed up earlier into other packs.
struct DamagedRepository {
    fixture: Fixture,
    src: PathBuf,
    big: PathBuf,
    snapshot: String,
}

fn damaged_repository() -> DamagedRepository {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    write_small_tree(&src);
    fixture.backup(&[&src], &[]);

    let big = src.join("big.bin");
    fs::write(&big, pseudo_random_bytes(11 << 20, 4)).unwrap();
    let snapshot = snapshot_id(&fixture.backup(&[&src], &[]));
    fixture.run_ok(["check", "--read-data"]);

    let largest = files_below(&fixture.repo.join("data"))
        .into_iter()
        .max_by_key(|f| fs::metadata(f).unwrap().len())
        .expect("the repository has packs");
    let length = fs::metadata(&largest).unwrap().len();
    assert!(
        length > 10 << 20,
        "largest pack {} is small",
        largest.display()
    );
    let pack = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&largest)
        .unwrap();
    let mut byte = [0u8; 1];
    pack.read_exact_at(&mut byte, length / 2).unwrap();
    byte[0] ^= 0x01;
    pack.write_all_at(&byte, length / 2).unwrap();

    DamagedRepository {
        fixture,
        src,
        big,
        snapshot,
    }
}

#[test]
fn damaged_pack_fails_restore_of_its_file() {
    let damaged = damaged_repository();
    let target = damaged.fixture.path("target");
    let output = damaged.fixture.run([
        OsStr::new("restore"),
        OsStr::new(&damaged.snapshot),
        OsStr::new("--target"),
        target.as_os_str(),
    ]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    let restored_big = restored_path(&target, &damaged.big);
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains(restored_big.to_str().unwrap()),
        "the error does not name {}: {stderr}",
        restored_big.display()
    );

    if let Ok(bytes) = fs::read(&restored_big) {
        assert!(
            bytes == fs::read(&damaged.big).unwrap(),
            "{} was left with wrong bytes",
            restored_big.display()
        );
    }
}

#[test]
fn damaged_pack_leaves_other_packs_restorable() {
    let damaged = damaged_repository();
    let target = damaged.fixture.path("target");
    damaged.fixture.run([
        OsStr::new("restore"),
        OsStr::new(&damaged.snapshot),
        OsStr::new("--target"),
        target.as_os_str(),
    ]);
    let restored = restored_path(&target, &damaged.src);
    for relative in ["keep/one", "keep/inner/two", "skip/three", "top"] {
        let content = fs::read(restored.join(relative));
        assert_eq!(
            content.ok(),
            Some(fs::read(damaged.src.join(relative)).unwrap()),
            "{relative} from an undamaged pack"
        );
    }
}

/// Returns the pack file, offset and length of the sealed first chunk of
/// `file` in the latest snapshot, found through the library.
fn first_chunk_location(fixture: &Fixture, file: &Path) -> (PathBuf, u64, u64) {
    use cairn::repository::{Repository, pack_path};
    use cairn::tree::Extent;

    let repo = Repository::open_local(&fixture.repo, PASSWORD.as_bytes()).unwrap();
    let (_, snapshot) = repo.find_snapshot("latest").unwrap();
    let mut tree = repo.load_tree(&snapshot.tree).unwrap();
    let names: Vec<&OsStr> = file.iter().skip(1).collect();
    for (depth, name) in names.iter().enumerate() {
        let node = tree
            .nodes
            .iter()
            .find(|node| node.name == name.as_bytes())
            .unwrap_or_else(|| panic!("{} is not in the snapshot", file.display()))
            .clone();
        if depth + 1 < names.len() {
            tree = repo.load_tree(&node.subtree.expect("directory")).unwrap();
            continue;
        }
        let Some(Extent::Data { id, .. }) = node.content.first() else {
            panic!("{} has no stored chunk", file.display());
        };
        let location = repo.index().get(&id.0).expect("the index lists the chunk");
        return (
            fixture.repo.join(pack_path(&location.pack)),
            location.offset.into(),
            location.len.into(),
        );
    }
    unreachable!("the loop returns at the file")
}

#[test]
fn prefetched_trees_skip_damaged_tree() {
    use cairn::repository::{Repository, pack_path};

    let fixture = Fixture::new();
    let src = fixture.path("src");
    for n in 0..12 {
        let dir = src.join(format!("dir-{n:02}"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("file"), format!("file {n}\n")).unwrap();
    }
    fixture.backup(&[&src], &[]);

    let repo = Repository::open_local(&fixture.repo, PASSWORD.as_bytes()).unwrap();
    let (_, snapshot) = repo.find_snapshot("latest").unwrap();
    let mut tree = repo.load_tree(&snapshot.tree).unwrap();
    for name in src.iter().skip(1) {
        let node = tree
            .find(name.as_bytes())
            .expect("path in snapshot")
            .clone();
        tree = repo.load_tree(&node.subtree.unwrap()).unwrap();
    }
    let subtrees: Vec<_> = tree.nodes.iter().map(|n| n.subtree.unwrap()).collect();
    assert_eq!(subtrees.len(), 12);

    // Damage one subtree in its pack, then prefetch them all.
    let damaged = repo.index().get(&subtrees[5].0).unwrap();
    let pack = fixture.repo.join(pack_path(&damaged.pack));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pack)
        .unwrap();
    let at = u64::from(damaged.offset) + u64::from(damaged.len) / 2;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 1], at).unwrap();
    repo.prefetch_trees(&subtrees);

    // With the pack emptied (the repository may keep it open), only the
    // cache can return the trees.
    for id in &subtrees {
        assert_eq!(repo.index().get(&id.0).unwrap().pack, damaged.pack);
    }
    file.set_len(0).unwrap();
    for (n, id) in subtrees.iter().enumerate() {
        let loaded = repo.load_tree(id);
        if n == 5 {
            assert!(loaded.is_err(), "the damaged tree was prefetched");
        } else {
            let tree = loaded.unwrap_or_else(|e| panic!("tree {n} was not prefetched: {e}"));
            assert_eq!(tree.nodes[0].name, b"file");
        }
    }
}

#[test]
fn damaged_chunk_fails_only_its_file() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    fs::create_dir(&src).unwrap();
    for n in 0..20u64 {
        fs::write(
            src.join(format!("file-{n:02}")),
            pseudo_random_bytes(10_000 + n as usize, n),
        )
        .unwrap();
    }
    let snapshot = snapshot_id(&fixture.backup(&[&src], &[]));

    let damaged = src.join("file-07");
    let (pack, offset, len) = first_chunk_location(&fixture, &damaged);
    let undamaged = first_chunk_location(&fixture, &src.join("file-08"));
    assert_eq!(
        undamaged.0, pack,
        "the files were expected to share one pack"
    );
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pack)
        .unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset + len / 2).unwrap();
    byte[0] ^= 0x40;
    file.write_all_at(&byte, offset + len / 2).unwrap();

    let target = fixture.path("target");
    let output = fixture.run([
        OsStr::new("restore"),
        OsStr::new(&snapshot),
        OsStr::new("--target"),
        target.as_os_str(),
    ]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    let restored = restored_path(&target, &src);
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains(restored.join("file-07").to_str().unwrap()),
        "the error does not name file-07: {stderr}"
    );
    assert_eq!(
        stderr.lines().filter(|line| line.contains("file-")).count(),
        1,
        "one line names the one damaged file: {stderr}"
    );
    assert!(
        !restored.join("file-07").exists(),
        "the file with the damaged chunk was left in the target"
    );
    for n in (0..20u64).filter(|n| *n != 7) {
        let name = format!("file-{n:02}");
        assert_eq!(
            fs::read(restored.join(&name)).unwrap(),
            fs::read(src.join(&name)).unwrap(),
            "{name} shares the damaged chunk's pack but not the chunk"
        );
    }
}

#[test]
fn check_read_data_names_damaged_file() {
    let damaged = damaged_repository();
    let output = damaged.fixture.run(["check", "--read-data"]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    let stdout = stdout_of(&output);
    let big = damaged.big.to_str().unwrap();
    assert!(
        stdout.lines().any(|l| l.contains(big)),
        "check does not name {big}:\n{stdout}"
    );
    for relative in ["keep/one", "top"] {
        let path = damaged.src.join(relative);
        let path = path.to_str().unwrap();
        assert!(
            !stdout.lines().any(|l| l.contains(path)),
            "check names the undamaged {path}:\n{stdout}"
        );
    }
}

/// A pack cut short is found without reading data: its size no longer covers
/// the blobs the index lists in it. Check names the file whose chunks it held.
#[test]
fn check_finds_truncated_pack() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    write_small_tree(&src);
    fixture.backup(&[&src], &[]);
    let big = src.join("big.bin");
    fs::write(&big, pseudo_random_bytes(11 << 20, 5)).unwrap();
    fixture.backup(&[&src], &[]);

    let largest = files_below(&fixture.repo.join("data"))
        .into_iter()
        .max_by_key(|f| fs::metadata(f).unwrap().len())
        .expect("the repository has packs");
    let length = fs::metadata(&largest).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&largest)
        .unwrap()
        .set_len(length / 2)
        .unwrap();

    let output = fixture.run(["check"]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    let text = format!("{}{}", stdout_of(&output), stderr_of(&output));
    assert!(
        text.contains("too short"),
        "check misses the truncated pack:\n{text}"
    );
    let big = big.to_str().unwrap();
    assert!(
        text.lines().any(|line| line.contains(big)),
        "check does not name {big}:\n{text}"
    );
    let undamaged = src.join("top");
    let undamaged = undamaged.to_str().unwrap();
    assert!(
        !text.lines().any(|line| line.contains(undamaged)),
        "check names the undamaged {undamaged}:\n{text}"
    );

    // Reading the data finds the same lost ranges: the pack's header is gone
    // with its second half, so its blobs are checked where the index puts them.
    let output = fixture.run(["check", "--read-data"]);
    let read_data = format!("{}{}", stdout_of(&output), stderr_of(&output));
    let lost = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|line| line.contains(" lost"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        lost(&read_data),
        lost(&text),
        "check and check --read-data disagree:\n{text}\n{read_data}"
    );
}

/// Returns a command that runs cairn as user `nobody` on the fixture's
/// repository, which it opens to all users first.
fn nobody_command(fixture: &Fixture) -> Command {
    // The binary is copied into the temporary directory, because the build
    // directory may not be open to other users.
    let binary = fixture.path("cairn");
    if !binary.exists() {
        fs::copy(env!("CARGO_BIN_EXE_cairn"), &binary).unwrap();
    }
    set_mode(&binary, 0o755);
    set_mode(fixture.dir.path(), 0o755);
    set_mode(&fixture.password_file, 0o644);
    let chmod = Command::new("chmod")
        .args(["-R", "0777"])
        .arg(&fixture.repo)
        .output()
        .unwrap();
    assert!(chmod.status.success(), "{}", describe(&chmod));

    let setpriv = Command::new("setpriv")
        .arg("--version")
        .output()
        .expect("setpriv (package util-linux) must be installed for this test");
    assert!(setpriv.status.success(), "{}", describe(&setpriv));
    let state = fixture.path("nobody-state");
    fs::create_dir_all(&state).unwrap();
    lchown(&state, Some(NOBODY), Some(NOBODY)).unwrap();

    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .arg(&binary)
        .arg("--repo")
        .arg(&fixture.repo)
        .arg("--password-file")
        .arg(&fixture.password_file)
        .env_remove("CAIRN_REPO")
        .env_remove("CAIRN_PASSWORD")
        .env_remove("CAIRN_PASSWORD_FILE")
        .env("CAIRN_STATE_DIR", &state)
        .stdin(Stdio::null());
    command
}

#[test]
fn user_restores_twice_into_read_only_dirs() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    fs::create_dir_all(src.join("read-only")).unwrap();
    fs::create_dir_all(src.join("closed")).unwrap();
    fs::write(
        src.join("read-only/inside"),
        b"in a directory of mode 555\n",
    )
    .unwrap();
    fs::write(src.join("closed/inside"), b"in a directory of mode 000\n").unwrap();
    set_mode(&src.join("read-only"), 0o555);
    set_mode(&src.join("closed"), 0o000);
    let snapshot = snapshot_id(&fixture.backup(&[&src], &[]));

    // A target that `nobody` may write to, restored into twice.
    let target = fixture.path("target");
    fs::create_dir(&target).unwrap();
    lchown(&target, Some(NOBODY), Some(NOBODY)).unwrap();
    for round in ["first", "second"] {
        let output = nobody_command(&fixture)
            .arg("restore")
            .arg(&snapshot)
            .arg("--target")
            .arg(&target)
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(EXIT_OK),
            "{round} restore: {}",
            describe(&output)
        );
    }
    let restored = restored_path(&target, &src);
    for (dir, mode) in [("read-only", 0o555), ("closed", 0o000)] {
        let md = fs::metadata(restored.join(dir)).unwrap();
        assert_eq!(md.mode() & 0o7777, mode, "mode of {dir}");
        assert_eq!(
            fs::read(restored.join(dir).join("inside")).unwrap(),
            fs::read(src.join(dir).join("inside")).unwrap(),
            "{dir}/inside"
        );
    }
}

/// A user other than root cannot set `trusted.*` attributes. The files must
/// still reach their own names whole, both the file of one chunk, which is
/// written unnamed and linked, and the larger one, which is renamed from its
/// partial name, and the error must name each of them.
#[test]
fn user_restore_reports_unset_metadata() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    fs::create_dir(&src).unwrap();
    let files = [
        ("one-chunk", pseudo_random_bytes(40_000, 1)),
        ("many-chunks", pseudo_random_bytes(12 << 20, 2)),
    ];
    for (name, bytes) in &files {
        fs::write(src.join(name), bytes).unwrap();
        xattr::set(src.join(name), "trusted.origin", b"root only").unwrap();
    }
    let snapshot = snapshot_id(&fixture.backup(&[&src], &[]));

    let target = fixture.path("target");
    fs::create_dir(&target).unwrap();
    lchown(&target, Some(NOBODY), Some(NOBODY)).unwrap();
    let output = nobody_command(&fixture)
        .arg("restore")
        .arg(&snapshot)
        .arg("--target")
        .arg(&target)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    let stderr = stderr_of(&output);
    let restored = restored_path(&target, &src);
    for (name, bytes) in &files {
        assert!(
            stderr
                .lines()
                .any(|line| line.contains(name) && line.contains("metadata not restored")),
            "no error names the metadata of {name}: {stderr}"
        );
        assert_eq!(
            &fs::read(restored.join(name)).unwrap(),
            bytes,
            "content of {name}"
        );
    }
    let names: Vec<_> = fs::read_dir(&restored)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "other entries than the two files: {names:?}"
    );
}

#[test]
fn backup_unreadable_file_exits_3() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    write_small_tree(&src);
    let unreadable = src.join("keep/unreadable");
    fs::write(&unreadable, b"only root reads this\n").unwrap();
    set_mode(&unreadable, 0o000);

    let output = nobody_command(&fixture)
        .arg("backup")
        .arg(&src)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(EXIT_INCOMPLETE),
        "{}",
        describe(&output)
    );
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains(unreadable.to_str().unwrap()),
        "stderr does not name {}: {stderr}",
        unreadable.display()
    );

    let listing = fixture.run_ok(["ls", "latest"]);
    let lines: Vec<&str> = listing.lines().collect();
    for relative in ["keep/one", "keep/inner/two", "skip/three", "top"] {
        let path = src.join(relative);
        assert!(
            lines.contains(&path.to_str().unwrap()),
            "snapshot lacks {}:\n{listing}",
            path.display()
        );
    }
    assert!(
        !lines.contains(&unreadable.to_str().unwrap()),
        "snapshot lists the unreadable file:\n{listing}"
    );

    let list = fixture.snapshots();
    assert_eq!(list.len(), 1, "snapshots: {list:?}");
    assert_eq!(list[0]["incomplete"], true, "{}", list[0]);
}

#[test]
fn closed_stdout_ends_listing_quietly() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    fs::create_dir(&src).unwrap();
    // Far more output than a pipe buffers, so `ls` is still writing when the
    // reader goes away.
    for i in 0..5000 {
        fs::write(src.join(format!("file-with-a-long-name-{i:05}")), b"x").unwrap();
    }
    fixture.backup(&[&src], &[]);

    let mut child = fixture
        .command()
        .args(["ls", "latest"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cairn ls");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut first = [0u8; 1];
    stdout
        .read_exact(&mut first)
        .expect("read the first byte of the listing");
    drop(stdout);
    let output = child.wait_with_output().expect("wait for cairn ls");

    // 141 is what a shell shows for a process ended by SIGPIPE.
    assert_eq!(output.status.code(), Some(141), "{}", describe(&output));
    assert!(
        !stderr_of(&output).contains("panicked"),
        "{}",
        describe(&output)
    );
}
