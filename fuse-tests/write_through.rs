//! Tests of `cairn mount --write-through`: changes made in `incoming/` with
//! system calls, `rsync` and `cp` are checked while mounted and in the
//! snapshot that the unmount saves.
//!
//! Each test runs the built binary against a repository in its own temporary
//! directory, and unmounts in a drop guard, so a failed check leaves no mount
//! behind. The tests need `/dev/fuse` and fail, never skip, without it. They
//! expect root, as CI has, because they change owners and unmount with
//! `umount`, and they need `fusermount3`, `rsync` and `cp`.
//!
//! Run them with `cargo test --test fuse_write_through`.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt, lchown, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

const PASSWORD: &str = "write-through test password";

/// Minimum chunk size of the default chunker, 512 KiB.
const MIN_CHUNK: usize = 512 << 10;

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A temporary directory with an initialized repository.
struct Fixture {
    dir: TempDir,
    repo: PathBuf,
    password_file: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        assert!(
            Path::new("/dev/fuse").exists(),
            "/dev/fuse is missing: these tests need the fuse kernel module (modprobe fuse)"
        );
        let dir = tempfile::tempdir().expect("create temporary directory");
        // Canonical, so that the paths a backup records match those below
        // `incoming/`.
        let root = dir.path().canonicalize().unwrap();
        let fixture = Fixture {
            repo: root.join("repo"),
            password_file: root.join("password"),
            dir,
        };
        fs::write(&fixture.password_file, format!("{PASSWORD}\n")).unwrap();
        fixture.run_ok(["init"]);
        fixture
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().canonicalize().unwrap().join(relative)
    }

    fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cairn"));
        for name in [
            "CAIRN_REPO",
            "CAIRN_PASSWORD",
            "CAIRN_PASSWORD_FILE",
            "RUST_LOG",
        ] {
            command.env_remove(name);
        }
        command
            .arg("--repo")
            .arg(&self.repo)
            .arg("--password-file")
            .arg(&self.password_file)
            .stdin(Stdio::null());
        command
    }

    fn run_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        let output = self.command().args(&args).output().unwrap();
        assert!(
            output.status.success(),
            "cairn {args:?} failed: {}",
            describe(&output)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn backup(&self, path: &Path) -> String {
        let stdout = self.run_ok([OsStr::new("backup"), OsStr::new("--json"), path.as_os_str()]);
        let summary: Value = serde_json::from_str(&stdout).unwrap();
        summary["snapshot"].as_str().unwrap().to_string()
    }

    fn snapshots(&self) -> Vec<Value> {
        let stdout = self.run_ok(["snapshots", "--json"]);
        serde_json::from_str::<Value>(&stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    fn snapshot(&self, id: &str) -> Value {
        self.snapshots()
            .into_iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("snapshot {id} is not listed"))
    }

    /// Restores a snapshot into a new directory and returns it.
    fn restore(&self, id: &str, name: &str) -> PathBuf {
        let target = self.path(name);
        self.run_ok([
            OsStr::new("restore"),
            OsStr::new(id),
            OsStr::new("--target"),
            target.as_os_str(),
        ]);
        target
    }

    /// Returns the total size of the repository's files, without locks and
    /// audit log entries.
    fn repo_bytes(&self) -> u64 {
        fn walk(path: &Path) -> u64 {
            let mut total = 0;
            for entry in fs::read_dir(path).unwrap() {
                let entry = entry.unwrap();
                let md = entry.metadata().unwrap();
                // Locks come and go, and every mount adds audit log entries.
                if entry.file_name() == "locks" || entry.file_name() == "audit" {
                    continue;
                }
                total += if md.is_dir() {
                    walk(&entry.path())
                } else {
                    md.len()
                };
            }
            total
        }
        walk(&self.repo)
    }

    /// Starts `cairn mount --write-through` and waits until it is mounted.
    fn mount(&self, extra: &[&str]) -> Mount {
        self.mount_with(extra, self.command())
    }

    /// Starts the mount like [`Fixture::mount`], with a limit of `files` open
    /// files, soft and hard, for the mount process.
    fn mount_with_file_limit(&self, files: u64) -> Mount {
        let mut command = self.command();
        // SAFETY: setrlimit is async-signal-safe, as pre_exec requires.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: files,
                    rlim_max: files,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        self.mount_with(&[], command)
    }

    fn mount_with(&self, extra: &[&str], mut command: Command) -> Mount {
        let mountpoint = self.path("mnt");
        fs::create_dir_all(&mountpoint).unwrap();
        let child = command
            .arg("mount")
            .arg("--write-through")
            .args(extra)
            .arg(&mountpoint)
            .env("TMPDIR", self.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut mount = Mount {
            child: Some(child),
            path: mountpoint,
        };
        mount.wait_for(true);
        mount
    }
}

fn is_mounted(path: &Path) -> bool {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = path.to_str().unwrap();
    mountinfo
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(path))
}

/// A running write-through mount. Dropping it unmounts lazily and ends the
/// process, so that a failed check leaves no mount behind.
struct Mount {
    child: Option<Child>,
    path: PathBuf,
}

impl Mount {
    fn incoming(&self) -> PathBuf {
        self.path.join("incoming")
    }

    fn wait_for(&mut self, mounted: bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while is_mounted(&self.path) != mounted {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                let output = self.child.take().unwrap().wait_with_output().unwrap();
                panic!("cairn mount exited with {status}: {}", describe(&output));
            }
            assert!(
                Instant::now() < deadline,
                "{} mounted is not {mounted} after 20 s",
                self.path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Unmounts with `fusermount3 -u`, waits for the process and returns its
    /// standard output.
    fn unmount(mut self) -> String {
        let status = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(status.success(), "fusermount3 -u failed with {status}");
        let output = self.child.take().unwrap().wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "cairn mount failed: {}",
            describe(&output)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Sends SIGTERM, which makes the mount unmount itself, waits for the
    /// process and returns its standard output.
    fn terminate(mut self) -> String {
        let child = self.child.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "cairn mount failed after SIGTERM: {}",
            describe(&output)
        );
        assert!(!is_mounted(&self.path), "still mounted after SIGTERM");
        String::from_utf8(output.stdout).unwrap()
    }

    /// Unmounts and returns the id of the snapshot the mount saved.
    fn unmount_saved(self) -> String {
        let stdout = self.unmount();
        saved_id(&stdout)
    }
}

/// Returns the id in the mount's "snapshot <id> saved" line.
fn saved_id(stdout: &str) -> String {
    let id = stdout
        .strip_prefix("snapshot ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no snapshot saved: {stdout}"));
    assert_eq!(id.len(), 64, "snapshot id in {stdout:?}");
    id.to_string()
}

impl Drop for Mount {
    fn drop(&mut self) {
        if is_mounted(&self.path) {
            let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
        }
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// Files and trees
// ---------------------------------------------------------------------------

/// Returns `len` pseudo-random bytes that zstd cannot compress.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

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
    .unwrap();
}

fn errno(result: std::io::Result<impl Sized>) -> i32 {
    result.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

/// The compared properties of one tree entry.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    /// Modification time in ns; `None` for directories, whose restored times
    /// depend on the order of writes into them.
    mtime: Option<i128>,
    size: u64,
    content: Option<Vec<u8>>,
    target: Option<PathBuf>,
}

/// Lists every entry below `root` with its metadata and content.
fn tree(root: &Path) -> BTreeMap<PathBuf, Entry> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let md = fs::symlink_metadata(&path).unwrap();
            let file_type = md.file_type();
            let kind = if file_type.is_dir() {
                "dir"
            } else if file_type.is_symlink() {
                "symlink"
            } else if file_type.is_fifo() {
                "fifo"
            } else {
                "file"
            };
            let mtime = i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec());
            out.insert(
                path.strip_prefix(root).unwrap().to_path_buf(),
                Entry {
                    kind,
                    mode: md.mode() & 0o7777,
                    uid: md.uid(),
                    gid: md.gid(),
                    mtime: (kind != "dir").then_some(mtime),
                    size: if kind == "file" { md.len() } else { 0 },
                    content: (kind == "file").then(|| fs::read(&path).unwrap()),
                    target: (kind == "symlink").then(|| fs::read_link(&path).unwrap()),
                },
            );
            if kind == "dir" {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Asserts that two trees hold the same entries, naming the first difference.
fn assert_same_tree(actual: &Path, expected: &Path) {
    let actual_tree = tree(actual);
    let expected_tree = tree(expected);
    let actual_names: Vec<_> = actual_tree.keys().collect();
    let expected_names: Vec<_> = expected_tree.keys().collect();
    assert_eq!(
        actual_names,
        expected_names,
        "entries of {} and {} differ",
        actual.display(),
        expected.display()
    );
    for (name, entry) in &expected_tree {
        let found = &actual_tree[name];
        assert!(
            found == entry,
            "{} differs: {} (expected {})",
            name.display(),
            found.summary(),
            entry.summary()
        );
    }
}

impl Entry {
    /// Describes the entry without its content, for assertion messages.
    fn summary(&self) -> String {
        format!(
            "{} mode {:o} owner {}:{} mtime {:?} size {} target {:?} content hash {:?}",
            self.kind,
            self.mode,
            self.uid,
            self.gid,
            self.mtime,
            self.size,
            self.target,
            self.content
                .as_deref()
                .map(|c| blake3::hash(c).to_hex()[..16].to_string())
        )
    }
}

/// Returns `path` (absolute) as it appears below a restore target or `incoming/`.
fn below(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap())
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Each kind of change through system calls, checked while mounted and in
/// the restored snapshot.
#[test]
fn write_through_operations() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    fs::create_dir_all(src.join("dir/empty")).unwrap();
    fs::write(src.join("keep.txt"), b"unchanged\n").unwrap();
    let change = random_bytes(3 * MIN_CHUNK, 1);
    fs::write(src.join("change.bin"), &change).unwrap();
    let shrink = random_bytes(3 * MIN_CHUNK, 2);
    fs::write(src.join("shrink.bin"), &shrink).unwrap();
    fs::write(src.join("gone.txt"), b"delete me\n").unwrap();
    fs::write(src.join("old-name.txt"), b"renamed\n").unwrap();
    fs::write(src.join("target.txt"), b"replaced by a rename\n").unwrap();
    fs::write(src.join("dir/inner.txt"), b"inner\n").unwrap();
    fs::write(src.join("attrs.txt"), b"attributes\n").unwrap();
    xattr::set(src.join("attrs.txt"), "user.old", b"1").unwrap();
    let parent = fixture.backup(&src);

    let mount = fixture.mount(&[]);
    let incoming = below(&mount.incoming(), &src);
    assert_eq!(fs::read(incoming.join("keep.txt")).unwrap(), b"unchanged\n");

    // create, overwrite with O_TRUNC, write at an offset of stored content
    fs::write(incoming.join("new.txt"), b"created\n").unwrap();
    fs::write(incoming.join("keep.txt"), b"overwritten\n").unwrap();
    fs::write(incoming.join("keep.txt"), b"overwritten again\n").unwrap();
    let file = OpenOptions::new()
        .write(true)
        .open(incoming.join("change.bin"))
        .unwrap();
    file.write_all_at(b"PATCH", MIN_CHUNK as u64 + 7).unwrap();
    drop(file);
    let mut change_expected = change.clone();
    change_expected[MIN_CHUNK + 7..MIN_CHUNK + 12].copy_from_slice(b"PATCH");
    assert!(fs::read(incoming.join("change.bin")).unwrap() == change_expected);

    // sparse write: a hole, then data, beyond the end of a new file
    let sparse = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(incoming.join("sparse.bin"))
        .unwrap();
    sparse.write_all_at(b"tail", 10 << 20).unwrap();
    drop(sparse);

    // truncate inside a chunk, and beyond the end
    let shrink_len = MIN_CHUNK as u64 + 1234;
    OpenOptions::new()
        .write(true)
        .open(incoming.join("shrink.bin"))
        .unwrap()
        .set_len(shrink_len)
        .unwrap();
    let grow = incoming.join("grow.bin");
    fs::write(&grow, b"grow").unwrap();
    OpenOptions::new()
        .write(true)
        .open(&grow)
        .unwrap()
        .set_len(100_000)
        .unwrap();
    assert_eq!(fs::metadata(&grow).unwrap().len(), 100_000);

    // rename, rename over an existing file, unlink, mkdir, rmdir
    fs::rename(incoming.join("old-name.txt"), incoming.join("new-name.txt")).unwrap();
    fs::rename(incoming.join("new.txt"), incoming.join("target.txt")).unwrap();
    fs::remove_file(incoming.join("gone.txt")).unwrap();
    fs::create_dir(incoming.join("made")).unwrap();
    fs::rename(
        incoming.join("dir/inner.txt"),
        incoming.join("made/inner.txt"),
    )
    .unwrap();
    fs::remove_dir(incoming.join("dir/empty")).unwrap();
    assert_eq!(
        errno(fs::remove_dir(incoming.join("made"))),
        libc::ENOTEMPTY
    );

    // symlink, hard link, FIFO
    symlink("keep.txt", incoming.join("link")).unwrap();
    fs::hard_link(incoming.join("keep.txt"), incoming.join("hard")).unwrap();
    let keep_ino = fs::metadata(incoming.join("keep.txt")).unwrap().ino();
    assert_eq!(fs::metadata(incoming.join("hard")).unwrap().ino(), keep_ino);
    assert_eq!(fs::metadata(incoming.join("hard")).unwrap().nlink(), 2);
    nix::unistd::mkfifo(
        &incoming.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();

    // chmod, chown, utimens with nanoseconds, extended attributes
    fs::set_permissions(
        incoming.join("new-name.txt"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    lchown(incoming.join("new-name.txt"), Some(1234), Some(5678)).unwrap();
    set_mtime(&incoming.join("new-name.txt"), 1_500_000_000, 123_456_789);
    xattr::set(incoming.join("attrs.txt"), "user.new", b"value").unwrap();
    xattr::remove(incoming.join("attrs.txt"), "user.old").unwrap();

    // Inode numbers stay the same while mounted.
    assert_eq!(
        fs::metadata(incoming.join("keep.txt")).unwrap().ino(),
        keep_ino
    );
    // Everything outside incoming/ stays read-only.
    assert_eq!(
        errno(fs::write(mount.path.join("snapshots/new"), b"x")),
        libc::EROFS
    );

    let id = mount.unmount_saved();
    let snapshot = fixture.snapshot(&id);
    assert_eq!(snapshot["parent"], parent.as_str());
    assert_eq!(snapshot["tags"], serde_json::json!(["write-through"]));
    assert_eq!(
        snapshot["paths"],
        fixture.snapshot(&parent)["paths"],
        "paths of the new snapshot"
    );

    let restored = below(&fixture.restore(&id, "restored"), &src);
    let read = |name: &str| fs::read(restored.join(name)).unwrap();
    assert_eq!(read("keep.txt"), b"overwritten again\n");
    assert!(read("change.bin") == change_expected);
    assert!(read("shrink.bin") == shrink[..shrink_len as usize]);
    let mut grown = b"grow".to_vec();
    grown.resize(100_000, 0);
    assert!(read("grow.bin") == grown);
    let sparse = read("sparse.bin");
    assert_eq!(sparse.len(), (10 << 20) + 4);
    assert!(sparse[..10 << 20].iter().all(|b| *b == 0));
    assert_eq!(&sparse[10 << 20..], b"tail");
    assert_eq!(read("target.txt"), b"created\n");
    assert_eq!(read("new-name.txt"), b"renamed\n");
    assert!(!restored.join("old-name.txt").exists());
    assert!(!restored.join("gone.txt").exists());
    assert!(!restored.join("new.txt").exists());
    assert_eq!(read("made/inner.txt"), b"inner\n");
    assert!(!restored.join("dir/inner.txt").exists());
    assert!(!restored.join("dir/empty").exists());
    assert!(restored.join("dir").is_dir());
    assert_eq!(
        fs::read_link(restored.join("link")).unwrap(),
        Path::new("keep.txt")
    );
    let hard = fs::metadata(restored.join("hard")).unwrap();
    assert_eq!(
        hard.ino(),
        fs::metadata(restored.join("keep.txt")).unwrap().ino()
    );
    assert_eq!(hard.nlink(), 2);
    let fifo = fs::symlink_metadata(restored.join("fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o640);
    let renamed = fs::metadata(restored.join("new-name.txt")).unwrap();
    assert_eq!(renamed.mode() & 0o7777, 0o600);
    assert_eq!(renamed.uid(), 1234);
    assert_eq!(renamed.gid(), 5678);
    assert_eq!(renamed.mtime(), 1_500_000_000);
    assert_eq!(renamed.mtime_nsec(), 123_456_789);
    assert_eq!(
        xattr::get(restored.join("attrs.txt"), "user.new").unwrap(),
        Some(b"value".to_vec())
    );
    assert_eq!(
        xattr::get(restored.join("attrs.txt"), "user.old").unwrap(),
        None
    );

    let check = fixture.run_ok(["check", "--read-data"]);
    assert!(check.contains("no errors found"), "{check}");
}

/// Creates the tree that the rsync test backs up first.
fn make_source(src: &Path) {
    fs::create_dir_all(src.join("docs/old")).unwrap();
    fs::create_dir_all(src.join("data")).unwrap();
    fs::write(src.join("docs/readme.txt"), b"read me\n").unwrap();
    fs::write(src.join("docs/old/notes.txt"), b"old notes\n").unwrap();
    fs::write(src.join("data/unchanged.bin"), random_bytes(6 << 20, 10)).unwrap();
    fs::write(src.join("data/touched.bin"), random_bytes(4 << 20, 11)).unwrap();
    fs::write(src.join("data/modified.bin"), random_bytes(3 << 20, 12)).unwrap();
    fs::write(src.join("data/removed.bin"), random_bytes(1 << 20, 13)).unwrap();
    symlink("../docs/readme.txt", src.join("data/readme-link")).unwrap();
    lchown(src.join("docs/readme.txt"), Some(1000), Some(1000)).unwrap();
    set_mtime(&src.join("docs/readme.txt"), 1_600_000_000, 987_654_321);
}

/// Changes the source tree and returns the least and the most bytes of new
/// content that the repository has to store for it.
fn change_source(src: &Path) -> (u64, u64) {
    let mut new_bytes = 0;

    // Same content, new mtime: rsync copies it again, dedup stores nothing.
    set_mtime(&src.join("data/touched.bin"), 1_700_000_000, 5);
    // One MiB in the middle replaced: the chunks around it change too, the
    // first and last chunks may stay the same.
    let mut modified = fs::read(src.join("data/modified.bin")).unwrap();
    modified[1 << 20..2 << 20].copy_from_slice(&random_bytes(1 << 20, 20));
    fs::write(src.join("data/modified.bin"), &modified).unwrap();
    let modified_min = 1 << 20;
    let modified_max = 3 << 20;

    fs::remove_file(src.join("data/removed.bin")).unwrap();
    fs::remove_dir_all(src.join("docs/old")).unwrap();
    fs::create_dir_all(src.join("docs/new/deeper")).unwrap();
    let added = random_bytes(2 << 20, 21);
    fs::write(src.join("docs/new/deeper/added.bin"), &added).unwrap();
    new_bytes += added.len() as u64;
    fs::write(src.join("docs/new/small.txt"), b"small\n").unwrap();
    new_bytes += 6;

    fs::set_permissions(
        src.join("docs/readme.txt"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    lchown(src.join("docs/readme.txt"), Some(2000), Some(3000)).unwrap();
    symlink("deeper/added.bin", src.join("docs/new/link")).unwrap();
    nix::unistd::mkfifo(
        &src.join("docs/pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    // Times in the past, so that the copy has to set them. rsync leaves the
    // time of a new symlink or FIFO alone when it is in the same second as the
    // source's.
    for (i, name) in [
        "data/modified.bin",
        "docs/new/deeper/added.bin",
        "docs/new/small.txt",
        "docs/new/link",
        "docs/pipe",
    ]
    .iter()
    .enumerate()
    {
        set_mtime(&src.join(name), 1_650_000_000 + i as i64, 123_456_789);
    }
    (new_bytes + modified_min, new_bytes + modified_max)
}

fn rsync(from: &Path, to: &Path) {
    let mut source = from.as_os_str().to_os_string();
    source.push("/");
    let mut target = to.as_os_str().to_os_string();
    target.push("/");
    let output = Command::new("rsync")
        .arg("-a")
        .arg("--delete")
        .arg(&source)
        .arg(&target)
        .output()
        .expect("run rsync (apt-get install rsync)");
    assert!(
        output.status.success(),
        "rsync failed: {}",
        describe(&output)
    );
}

/// `rsync -a --delete` into `incoming/` saves a snapshot equal to the source
/// that costs only the changed bytes, and a mount without changes saves none.
#[test]
fn rsync_into_incoming() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    make_source(&src);
    let parent = fixture.backup(&src);
    let (min_bytes, max_bytes) = change_source(&src);
    let before = fixture.repo_bytes();

    let mount = fixture.mount(&[]);
    rsync(&src, &below(&mount.incoming(), &src));
    assert_same_tree(&below(&mount.incoming(), &src), &src);
    let id = mount.unmount_saved();

    assert_eq!(fixture.snapshot(&id)["parent"], parent.as_str());
    let restored = fixture.restore(&id, "restored");
    assert_same_tree(&below(&restored, &src), &src);

    // The new content is random, so it does not compress. Trees, pack
    // headers, the index file and the snapshot add a few KiB. Storing the
    // 6 MiB unchanged or the 4 MiB touched file again would exceed the bound.
    let growth = fixture.repo_bytes() - before;
    assert!(
        growth >= min_bytes,
        "repository grew by {growth} bytes, less than the {min_bytes} new bytes"
    );
    assert!(
        growth <= max_bytes + (256 << 10),
        "repository grew by {growth} bytes, more than the {max_bytes} new bytes"
    );

    // The same rsync again writes nothing, so no snapshot is saved.
    let count = fixture.snapshots().len();
    let size = fixture.repo_bytes();
    let mount = fixture.mount(&[]);
    rsync(&src, &below(&mount.incoming(), &src));
    let stdout = mount.unmount();
    assert!(stdout.starts_with("no changes in incoming/"), "{stdout}");
    assert_eq!(fixture.snapshots().len(), count);
    assert_eq!(fixture.repo_bytes(), size);

    // Reads alone save nothing either.
    let mount = fixture.mount(&[]);
    let copy = fixture.path("read-copy");
    let status = Command::new("cp")
        .arg("-a")
        .arg(below(&mount.incoming(), &src))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let stdout = mount.unmount();
    assert!(stdout.starts_with("no changes in incoming/"), "{stdout}");
    assert_eq!(fixture.snapshots().len(), count);
    assert_eq!(fixture.repo_bytes(), size);
}

/// `cp -a` of a tree into `incoming/`, from a chosen parent, with a chosen
/// staging directory.
#[test]
fn cp_into_incoming_with_parent() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    make_source(&src);
    let first = fixture.backup(&src);
    fs::write(src.join("later.txt"), b"only in the second snapshot\n").unwrap();
    fixture.backup(&src);

    let staging = fixture.path("staging");
    let mount = fixture.mount(&[
        "--parent",
        &first[..12],
        "--staging-dir",
        staging.to_str().unwrap(),
    ]);
    let incoming = below(&mount.incoming(), &src);
    assert!(!incoming.join("later.txt").exists());
    let extra = fixture.path("extra");
    make_source(&extra);
    let status = Command::new("cp")
        .arg("-a")
        .arg(&extra)
        .arg(incoming.join("copied"))
        .status()
        .unwrap();
    assert!(status.success());
    let id = mount.unmount_saved();
    assert!(staging.is_dir(), "a given staging directory is kept");
    assert_eq!(fs::read_dir(&staging).unwrap().count(), 0);

    assert_eq!(fixture.snapshot(&id)["parent"], first.as_str());
    let restored = below(&fixture.restore(&id, "restored"), &src);
    assert_same_tree(&restored.join("copied"), &extra);
    assert!(!restored.join("later.txt").exists());
}

/// A mount killed with SIGKILL leaves earlier snapshots readable, saves
/// nothing, and a later backup reuses the packs it wrote.
#[test]
fn killed_mount_keeps_repository() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    make_source(&src);
    let parent = fixture.backup(&src);

    let mut mount = fixture.mount(&[]);
    // More than one 16 MiB pack, so at least one pack is written before the kill.
    let big = random_bytes(20 << 20, 30);
    let incoming = below(&mount.incoming(), &src);
    let mut file = File::create(incoming.join("big.bin")).unwrap();
    file.write_all(&big).unwrap();
    drop(file);
    // The mount stores the file on its last release, which the kernel sends
    // after close returns: reading it back waits for nothing, so wait until
    // the packs appear.
    let deadline = Instant::now() + Duration::from_secs(30);
    let packs = |repo: &Path| -> usize {
        let Ok(prefixes) = fs::read_dir(repo.join("data")) else {
            return 0;
        };
        // Only complete packs: a pack being written has a temporary name.
        prefixes
            .flat_map(|prefix| fs::read_dir(prefix.unwrap().path()).unwrap())
            .filter(|entry| entry.as_ref().unwrap().file_name().len() == 64)
            .count()
    };
    let packs_before = packs(&fixture.repo);
    while packs(&fixture.repo) == packs_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut child = mount.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let status = Command::new("fusermount3")
        .arg("-u")
        .arg(&mount.path)
        .status()
        .unwrap();
    assert!(status.success());
    mount.wait_for(false);

    assert_eq!(fixture.snapshots().len(), 1);
    let check = fixture.run_ok(["check", "--read-data"]);
    assert!(check.contains("no errors found"), "{check}");
    let restored = below(&fixture.restore(&parent, "restored"), &src);
    assert_same_tree(&restored, &src);

    // A backup of the same content reuses the chunks in the orphaned packs.
    fs::write(src.join("big.bin"), &big).unwrap();
    let before = fixture.repo_bytes();
    fixture.backup(&src);
    let growth = fixture.repo_bytes() - before;
    assert!(
        growth < 4 << 20,
        "backup of content already in orphaned packs grew the repository by {growth} bytes"
    );
}

/// Reads of a file being written see the written bytes, before and after
/// the last writer closes it.
#[test]
fn reads_follow_writes() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"0123456789").unwrap();
    fixture.backup(&src);

    let mount = fixture.mount(&[]);
    let path = below(&mount.incoming(), &src).join("f");
    let mut writer = OpenOptions::new().append(true).open(&path).unwrap();
    writer.write_all(b"abc").unwrap();
    let mut read = String::new();
    File::open(&path)
        .unwrap()
        .read_to_string(&mut read)
        .unwrap();
    assert_eq!(read, "0123456789abc");
    drop(writer);
    assert_eq!(fs::read(&path).unwrap(), b"0123456789abc");
    let id = mount.unmount_saved();
    let restored = below(&fixture.restore(&id, "restored"), &src);
    assert_eq!(fs::read(restored.join("f")).unwrap(), b"0123456789abc");
}

/// SIGTERM unmounts and saves the snapshot, as an unmount does.
#[test]
fn sigterm_saves_snapshot() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"before").unwrap();
    let parent = fixture.backup(&src);

    let mount = fixture.mount(&[]);
    fs::write(below(&mount.incoming(), &src).join("f"), b"after").unwrap();
    let id = saved_id(&mount.terminate());

    assert_eq!(fixture.snapshot(&id)["parent"], parent.as_str());
    let restored = below(&fixture.restore(&id, "restored"), &src);
    assert_eq!(fs::read(restored.join("f")).unwrap(), b"after");
}

/// `cairn restore` into `incoming/`. This file system has no `O_TMPFILE`, so
/// the restore writes every file under a partial name and renames it. The
/// saved snapshot must hold the restored tree and no partial file.
#[test]
fn restore_into_incoming() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    make_source(&src);
    let first = fixture.backup(&src);

    let mount = fixture.mount(&[]);
    let target = mount.incoming().join("restored");
    let output = fixture
        .command()
        .arg("restore")
        .arg(&first)
        .arg("--target")
        .arg(&target)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    let id = mount.unmount_saved();

    let out = fixture.restore(&id, "out");
    assert_same_tree(&below(&out.join("restored"), &src), &src);
    assert_same_tree(&below(&out, &src), &src);
}

/// A mount allowed only 256 open files takes 2,000 new small files. The
/// staging file of each stored file stays open until its chunks are in a
/// written pack, so the mount must write packs early to stay within the limit.
#[test]
fn many_small_files_within_file_limit() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("first"), b"first\n").unwrap();
    fixture.backup(&src);

    let mount = fixture.mount_with_file_limit(256);
    let incoming = below(&mount.incoming(), &src);
    for n in 0..2000u64 {
        fs::write(
            incoming.join(format!("small-{n:04}")),
            random_bytes(3000, n),
        )
        .unwrap_or_else(|e| panic!("writing small-{n:04} failed: {e}"));
    }
    let id = mount.unmount_saved();

    let restored = below(&fixture.restore(&id, "restored"), &src);
    for n in 0..2000u64 {
        let name = format!("small-{n:04}");
        assert_eq!(
            fs::read(restored.join(&name)).unwrap(),
            random_bytes(3000, n),
            "{name}"
        );
    }
}
