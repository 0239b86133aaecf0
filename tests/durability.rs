//! Durability tests of the `cairn` binary: kills during backup, prune and restore,
//! backups and a prune that run at the same time, stale and live locks, a full
//! disk, a pack overwritten with garbage and a read-only repository.
//!
//! Each test runs the built binary as child processes against repositories in
//! its own temporary directory. The tests expect to run as root, as CI does,
//! because one mounts a tmpfs and another switches to user `nobody` with
//! `setpriv`.
//!
//! Run them with `cargo test --test durability`. Debug and release builds take
//! about the same time, 2.5 to 4 minutes on a 2-core machine, because
//! Cargo.toml compiles cairn with opt-level 1 in debug builds too. Without that
//! setting, a debug build restores and checks only about 12 MB/s, and this file
//! takes far longer.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;

const PASSWORD: &str = "correct horse battery staple";

const EXIT_OK: i32 = 0;
const EXIT_FAILURE: i32 = 1;
const EXIT_LOCKED: i32 = 11;

/// Uid and gid of `nobody` on Debian.
const NOBODY: u32 = 65534;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

/// Returns a command for `program` that ignores the caller's repository,
/// password and log settings and reads no standard input.
fn clean_command(program: &Path) -> Command {
    let mut command = Command::new(program);
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
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A temporary directory with a password file and a repository path.
struct Fixture {
    dir: TempDir,
    repo: PathBuf,
    password_file: PathBuf,
}

impl Fixture {
    /// Creates the directory and initializes a repository at `repo` in it.
    fn new() -> Self {
        let fixture = Self::uninitialized();
        fixture.run_ok(["init"]);
        fixture
    }

    /// Creates the directory and a password file, but no repository.
    fn uninitialized() -> Self {
        let dir = tempfile::tempdir().expect("create temporary directory");
        let repo = dir.path().join("repo");
        let password_file = dir.path().join("password");
        fs::write(&password_file, format!("{PASSWORD}\n")).expect("write password file");
        Fixture {
            dir,
            repo,
            password_file,
        }
    }

    /// Returns a path inside the temporary directory.
    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Returns a `cairn` command with `--repo` and `--password-file` set.
    fn command(&self) -> Command {
        self.command_for(&self.repo)
    }

    /// Returns a `cairn` command for another repository with this password.
    fn command_for(&self, repo: &Path) -> Command {
        let mut command = clean_command(Path::new(env!("CARGO_BIN_EXE_cairn")));
        command
            .arg("--repo")
            .arg(repo)
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

    /// Starts a command whose standard output and error go to pipes.
    fn spawn<I, S>(&self, args: I) -> Child
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the cairn binary")
    }

    /// Starts a command whose standard output and error go to files named after
    /// `log`, so that several children can run without filling a pipe.
    fn spawn_logged(&self, args: &[&OsStr], log: &str) -> LoggedChild {
        let stdout = self.path(&format!("{log}.stdout"));
        let stderr = self.path(&format!("{log}.stderr"));
        let child = self
            .command()
            .args(args)
            .stdout(File::create(&stdout).expect("create stdout log"))
            .stderr(File::create(&stderr).expect("create stderr log"))
            .spawn()
            .expect("start the cairn binary");
        LoggedChild {
            child,
            stdout,
            stderr,
        }
    }

    /// Backs up `paths` and returns the new snapshot's id.
    fn backup(&self, paths: &[&Path], options: &[&str]) -> String {
        let mut args: Vec<OsString> = vec!["backup".into(), "--json".into()];
        args.extend(options.iter().map(OsString::from));
        args.extend(paths.iter().map(|p| p.as_os_str().to_os_string()));
        snapshot_id(&self.run_ok(&args))
    }

    /// Returns the snapshots as `snapshots --json` lists them, oldest first.
    fn snapshots(&self) -> Vec<Value> {
        let stdout = self.run_ok(["snapshots", "--json"]);
        let value: Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("snapshots --json printed invalid JSON ({e}): {stdout}"));
        value
            .as_array()
            .unwrap_or_else(|| panic!("snapshots --json printed no array: {stdout}"))
            .clone()
    }

    /// Returns the full ids of all snapshots, oldest first.
    fn snapshot_ids(&self) -> Vec<String> {
        self.snapshots()
            .iter()
            .map(|s| {
                s["id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("snapshot without id: {s}"))
                    .to_string()
            })
            .collect()
    }

    /// Runs `restore SNAPSHOT --target TARGET`.
    fn restore(&self, snapshot: &str, target: &Path) -> Output {
        self.run([
            OsStr::new("restore"),
            OsStr::new(snapshot),
            OsStr::new("--target"),
            target.as_os_str(),
        ])
    }

    /// Restores `snapshot` into a scratch directory, asserts that the tree
    /// backed up from `source` comes back identical to `expected`, and removes
    /// the scratch directory again. `expected` is `source` itself, or a copy of
    /// it made right after the backup.
    fn assert_restores(&self, snapshot: &str, source: &Path, expected: &Path, context: &str) {
        let target = self.path("restore-scratch");
        let _ = fs::remove_dir_all(&target);
        let output = self.restore(snapshot, &target);
        assert_eq!(
            output.status.code(),
            Some(EXIT_OK),
            "restore of snapshot {snapshot} {context} failed: {}",
            describe(&output)
        );
        assert_same_tree(expected, &restored_path(&target, source), context);
        fs::remove_dir_all(&target).expect("remove restored tree");
    }

    /// Runs `check --read-data` and asserts that it finds no error.
    fn assert_check_passes(&self, context: &str) {
        let output = self.run(["check", "--read-data"]);
        assert_eq!(
            output.status.code(),
            Some(EXIT_OK),
            "check --read-data {context} found errors: {}",
            describe(&output)
        );
    }
}

/// A child whose output goes to files.
struct LoggedChild {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl LoggedChild {
    /// Waits for the child and returns its status and output.
    fn wait(mut self) -> Output {
        let status = self.child.wait().expect("wait for cairn");
        Output {
            status,
            stdout: fs::read(&self.stdout).expect("read stdout log"),
            stderr: fs::read(&self.stderr).expect("read stderr log"),
        }
    }
}

/// Returns the snapshot id from the output of `backup --json`.
fn snapshot_id(backup_stdout: &str) -> String {
    let summary: Value = serde_json::from_str(backup_stdout)
        .unwrap_or_else(|e| panic!("backup --json printed invalid JSON ({e}): {backup_stdout}"));
    summary["snapshot"]
        .as_str()
        .unwrap_or_else(|| panic!("backup summary has no snapshot id: {summary}"))
        .to_string()
}

/// Returns the place below `target` where a restore puts the absolute `path`.
fn restored_path(target: &Path, path: &Path) -> PathBuf {
    target.join(path.strip_prefix("/").expect("snapshot paths are absolute"))
}

/// Sends SIGKILL to a child and waits for it. Returns whether the signal ended
/// it, and its output. A child that had already exited must have exited 0.
fn kill_and_wait(child: Child, command_name: &str) -> (bool, Output) {
    let pid = Pid::from_raw(child.id() as i32);
    // The child is not reaped before `wait_with_output`, so its pid cannot have
    // been reused. A child that already exited is a zombie and ignores the signal.
    kill(pid, Signal::SIGKILL).unwrap_or_else(|e| panic!("SIGKILL {command_name}: {e}"));
    let output = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait for {command_name}: {e}"));
    let killed = output.status.signal() == Some(Signal::SIGKILL as i32);
    if !killed {
        assert_eq!(
            output.status.code(),
            Some(EXIT_OK),
            "{command_name} failed before it was killed: {}",
            describe(&output)
        );
    }
    (killed, output)
}

/// Stops `child` with SIGSTOP and waits until all its threads have stopped.
fn stop_child(child: &Child) {
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGSTOP).expect("send SIGSTOP");
    // waitpid reports the stop once the whole thread group has stopped.
    match waitpid(pid, Some(WaitPidFlag::WUNTRACED)) {
        Ok(WaitStatus::Stopped(_, _)) => {}
        other => panic!("child {pid} did not stop: {other:?}"),
    }
}

/// Lets a child run in short slices, stopping it in between, until a lock file
/// exists in `repo`. Returns the lock files, with the child stopped. A big
/// backup runs far longer than one slice after taking its lock, so the child is
/// caught while it holds the lock.
fn stop_once_locked(child: &Child, repo: &Path) -> Vec<PathBuf> {
    let pid = Pid::from_raw(child.id() as i32);
    stop_child(child);
    loop {
        let locks = lock_files(repo);
        if !locks.is_empty() {
            return locks;
        }
        kill(pid, Signal::SIGCONT).expect("send SIGCONT");
        std::thread::sleep(Duration::from_millis(1));
        stop_child(child);
    }
}

/// Returns a repository's lock files.
fn lock_files(repo: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(repo.join("locks")) else {
        return Vec::new();
    };
    entries
        .map(|entry| entry.expect("lock directory entry"))
        .filter(|entry| !entry.file_name().to_string_lossy().starts_with('.'))
        .map(|entry| entry.path())
        .collect()
}

/// Returns a repository's pack files: the files below `data/` whose names are
/// 64 hex digits, which leaves out temporary files of unfinished writes.
fn pack_files(repo: &Path) -> Vec<PathBuf> {
    let mut packs = Vec::new();
    let Ok(prefixes) = fs::read_dir(repo.join("data")) else {
        return packs;
    };
    for prefix in prefixes {
        let prefix = prefix.expect("data directory entry").path();
        for entry in fs::read_dir(&prefix).expect("list pack directory") {
            let path = entry.expect("pack directory entry").path();
            let name = path.file_name().expect("file name").to_string_lossy();
            if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                packs.push(path);
            }
        }
    }
    packs.sort();
    packs
}

/// Returns the total size in bytes of a repository's pack files.
fn pack_bytes(repo: &Path) -> u64 {
    pack_files(repo)
        .iter()
        .map(|p| fs::metadata(p).expect("stat pack").len())
        .sum()
}

/// Copies a directory tree with `cp -a`, keeping modes and times.
fn copy_tree(from: &Path, to: &Path) {
    let output = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .expect("run cp");
    assert!(output.status.success(), "cp -a: {}", describe(&output));
}

// ---------------------------------------------------------------------------
// Building and comparing trees
// ---------------------------------------------------------------------------

/// SplitMix64, for seeded choices of sizes, names and delays.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Returns a number from `low` to `high`, both included.
    fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }
}

/// Returns `len` pseudo-random bytes derived from `seed` by BLAKE3's extendable
/// output. They do not compress, and they are generated at hundreds of MB/s.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut bytes);
    bytes
}

/// The shape of a generated source tree.
struct TreeSpec {
    /// Number of small files, spread over 20 directories.
    small_files: usize,
    /// Largest small file in bytes; sizes are drawn from 0 to this.
    small_max: usize,
    /// Sizes of the big files, which lie at the top of the tree.
    big_files: Vec<usize>,
}

/// Writes a tree of pseudo-random files below `root`.
fn write_tree(root: &Path, spec: &TreeSpec, seed: u64) {
    let mut rng = Rng(seed);
    for i in 0..spec.small_files {
        let dir = root.join(format!("dir{:02}", i % 20));
        fs::create_dir_all(&dir).expect("create source directory");
        let len = rng.range(0, spec.small_max as u64) as usize;
        fs::write(
            dir.join(format!("small{i:05}")),
            random_bytes(len, rng.next_u64()),
        )
        .expect("write small file");
    }
    fs::create_dir_all(root).expect("create source directory");
    for (i, len) in spec.big_files.iter().enumerate() {
        fs::write(
            root.join(format!("big{i:02}.bin")),
            random_bytes(*len, rng.next_u64()),
        )
        .expect("write big file");
    }
}

/// Changes a tree written by [`write_tree`]: rewrites one big file and a tenth
/// of the small files with new content, adds a file and removes one.
fn change_tree(root: &Path, spec: &TreeSpec, version: u64) {
    let mut rng = Rng(version.wrapping_mul(0x1234_5678_9abc_def1));
    if !spec.big_files.is_empty() {
        let i = version as usize % spec.big_files.len();
        fs::write(
            root.join(format!("big{i:02}.bin")),
            random_bytes(spec.big_files[i], rng.next_u64()),
        )
        .expect("rewrite big file");
    }
    for _ in 0..spec.small_files / 10 {
        let i = rng.range(0, spec.small_files as u64 - 1) as usize;
        let path = root.join(format!("dir{:02}/small{i:05}", i % 20));
        let len = rng.range(0, spec.small_max as u64) as usize;
        fs::write(path, random_bytes(len, rng.next_u64())).expect("rewrite small file");
    }
    fs::write(
        root.join(format!("added-in-version-{version}")),
        random_bytes(spec.small_max, rng.next_u64()),
    )
    .expect("add file");
    let i = rng.range(0, spec.small_files as u64 - 1) as usize;
    let _ = fs::remove_file(root.join(format!("dir{:02}/small{i:05}", i % 20)));
}

/// Metadata and content of one entry, as a restore must bring it back. Owners
/// are left out, so that a restore by an unprivileged user compares equal.
#[derive(Debug, PartialEq)]
struct EntryState {
    kind: &'static str,
    mode: u32,
    mtime_ns: i128,
    size: u64,
    content: Option<blake3::Hash>,
}

/// Records every entry below `root`, keyed by the path relative to `root`.
fn record_tree(root: &Path) -> BTreeMap<PathBuf, EntryState> {
    let mut entries = BTreeMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let path = root.join(&relative);
        let md =
            fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
        let file_type = md.file_type();
        let kind = if file_type.is_dir() {
            "directory"
        } else if file_type.is_file() {
            "file"
        } else {
            "other"
        };
        let content = if file_type.is_file() {
            let bytes = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            Some(blake3::hash(&bytes))
        } else {
            None
        };
        if file_type.is_dir() {
            for entry in
                fs::read_dir(&path).unwrap_or_else(|e| panic!("list {}: {e}", path.display()))
            {
                pending.push(relative.join(entry.expect("directory entry").file_name()));
            }
        }
        entries.insert(
            relative,
            EntryState {
                kind,
                mode: md.mode() & 0o7777,
                mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
                // A directory's size depends on the file system's history.
                size: if file_type.is_dir() { 0 } else { md.size() },
                content,
            },
        );
    }
    entries
}

/// Asserts that two trees have the same entries, each with the same type, mode,
/// mtime, size and content.
fn assert_same_tree(source: &Path, restored: &Path, context: &str) {
    let expected = record_tree(source);
    let actual = record_tree(restored);
    let expected_paths: Vec<&PathBuf> = expected.keys().collect();
    let actual_paths: Vec<&PathBuf> = actual.keys().collect();
    assert_eq!(
        actual_paths,
        expected_paths,
        "restored tree {} {context} has other entries than {}",
        restored.display(),
        source.display()
    );
    for (path, want) in &expected {
        let got = &actual[path];
        assert_eq!(got.kind, want.kind, "type of {path:?} {context}");
        assert_eq!(got.mode, want.mode, "mode of {path:?} {context}");
        assert_eq!(got.mtime_ns, want.mtime_ns, "mtime of {path:?} {context}");
        assert_eq!(got.size, want.size, "size of {path:?} {context}");
        assert_eq!(got.content, want.content, "content of {path:?} {context}");
    }
}

/// Lists the regular files below `root`, recursively, sorted.
fn files_below(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = record_tree(root)
        .into_iter()
        .filter(|(_, state)| state.kind == "file")
        .map(|(relative, _)| root.join(relative))
        .collect();
    files.sort();
    files
}

// ---------------------------------------------------------------------------
// Kills
// ---------------------------------------------------------------------------

/// Twenty backups are killed at pseudo-random moments. After each kill the
/// repository must pass `check --read-data`, and the earlier snapshot must
/// restore. In the end a backup must complete, and the killed runs must have
/// left at most one extra pack each.
#[test]
fn backup_survives_repeated_kills() {
    const KILLS: u32 = 20;
    let fixture = Fixture::new();

    let base = fixture.path("base");
    write_tree(
        &base,
        &TreeSpec {
            small_files: 100,
            small_max: 8 * KIB,
            big_files: vec![3 * MIB],
        },
        1,
    );
    let base_snapshot = fixture.backup(&[&base], &[]);
    let base_packs = pack_files(&fixture.repo).len();
    let base_pack_bytes = pack_bytes(&fixture.repo);

    // About 190 MB.
    let spec = TreeSpec {
        small_files: 2000,
        small_max: 20 * KIB,
        big_files: [5, 7, 9, 11, 12, 13, 14, 16, 17, 18, 19, 20]
            .iter()
            .map(|m| m * MIB)
            .collect(),
    };
    let src = fixture.path("src");
    write_tree(&src, &spec, 2);

    // A clean backup in a repository of its own gives the pack count to compare
    // with and the durations that the kill delays are drawn from. `full` is the
    // duration of a backup that stores everything. `reread` is the duration of
    // a backup that reads everything but stores nothing new.
    let reference = Fixture::new();
    let started = Instant::now();
    reference.backup(&[&src], &[]);
    let full = started.elapsed();
    let clean_packs = pack_files(&reference.repo).len();
    let clean_pack_bytes = pack_bytes(&reference.repo);
    let started = Instant::now();
    reference.backup(&[&src], &["--force"]);
    let reread = started.elapsed().min(full);
    drop(reference);

    let mut rng = Rng(0xdead_beef);
    for kill_number in 1..=KILLS {
        // Each killed run leaves its finished packs, which the next run indexes
        // and does not write again, so the next run is shorter. The delay is
        // drawn from the estimated duration of the next run.
        let stored = pack_bytes(&fixture.repo).saturating_sub(base_pack_bytes);
        let left = 1.0 - (stored as f64 / clean_pack_bytes as f64).min(1.0);
        let expected = reread + (full - reread).mul_f64(left);
        let delay = Duration::from_micros(rng.range(0, expected.as_micros() as u64));
        let context = format!("after kill {kill_number} of {KILLS}, {delay:?} into the backup");

        let child = fixture.spawn([OsStr::new("backup"), OsStr::new("--json"), src.as_os_str()]);
        std::thread::sleep(delay);
        let (killed, output) = kill_and_wait(child, "backup");

        fixture.assert_check_passes(&context);
        let listed = fixture.snapshot_ids();
        assert!(
            listed.contains(&base_snapshot),
            "snapshot {base_snapshot} is missing {context}: {listed:?}"
        );
        let new: Vec<&String> = listed.iter().filter(|id| **id != base_snapshot).collect();
        assert!(
            new.len() <= 1,
            "the backup left several snapshots {new:?} {context}"
        );
        if killed {
            // A backup killed after it saved its snapshot, while it released
            // its lock, leaves that snapshot; any other is a fault.
            if let Some(id) = new.first() {
                fixture.assert_restores(id, &src, &src, &context);
            }
        } else {
            let id = snapshot_id(&stdout_of(&output));
            assert_eq!(
                new,
                vec![&id],
                "snapshots besides the base {context}, with backup {id} completed"
            );
            fixture.assert_restores(&id, &src, &src, &context);
        }
        fixture.assert_restores(&base_snapshot, &base, &base, &context);

        // After a completed run nothing is left to write, so forget its
        // snapshot and delete its data: the next run starts from scratch.
        if let Some(id) = new.first() {
            fixture.run_ok(["forget", id]);
            fixture.run_ok(["prune"]);
        }
    }

    let last = fixture.backup(&[&src], &[]);
    fixture.assert_restores(&last, &src, &src, "of the backup after all kills");
    fixture.assert_check_passes("after the backup that followed all kills");

    let packs = pack_files(&fixture.repo).len();
    let extra = packs as i64 - base_packs as i64 - clean_packs as i64;
    assert!(
        extra <= i64::from(KILLS),
        "{packs} packs in the repository: {base_packs} of the first snapshot, {clean_packs} that a clean backup writes, and {extra} extra after {KILLS} kills"
    );
}

/// Ten prunes that repack are killed at pseudo-random moments. After each kill
/// `check --read-data` must pass and every remaining snapshot must restore.
#[test]
fn kill_during_prune_leaves_readable_repository() {
    const KILLS: u32 = 10;
    const VERSIONS: u64 = 8;
    let fixture = Fixture::new();
    // About 26 MB per snapshot, with about a fifth new in each version, in
    // several packs.
    let spec = TreeSpec {
        small_files: 400,
        small_max: 20 * KIB,
        big_files: vec![4 * MIB, 6 * MIB, 5 * MIB, 7 * MIB],
    };
    let src = fixture.path("src");
    write_tree(&src, &spec, 3);

    // Each snapshot with a copy of the tree it was taken of.
    let mut snapshots: Vec<(String, PathBuf)> = Vec::new();
    for version in 0..VERSIONS {
        if version > 0 {
            change_tree(&src, &spec, version);
        }
        let id = fixture.backup(&[&src], &[]);
        let copy = fixture.path(&format!("version-{version}"));
        copy_tree(&src, &copy);
        snapshots.push((id, copy));
    }

    // Forget every other snapshot, so that most packs hold unused blobs and a
    // prune with --max-unused 0 repacks them.
    let mut remaining = Vec::new();
    let mut forget: Vec<String> = vec!["forget".into()];
    for (i, snapshot) in snapshots.into_iter().enumerate() {
        if i % 2 == 0 {
            forget.push(snapshot.0);
        } else {
            remaining.push(snapshot);
        }
    }
    fixture.run_ok(&forget);

    let mut rng = Rng(0x0bad_cafe);
    for kill_number in 1..=KILLS {
        // The same prune on a copy of the repository gives its duration, which
        // the kill delay is drawn from.
        let scratch = fixture.path("measured-repo");
        copy_tree(&fixture.repo, &scratch);
        let started = Instant::now();
        let measured = fixture
            .command_for(&scratch)
            .args(["prune", "--max-unused", "0"])
            .output()
            .expect("start the cairn binary");
        let duration = started.elapsed();
        assert_eq!(
            measured.status.code(),
            Some(EXIT_OK),
            "prune of a copy of the repository before kill {kill_number}: {}",
            describe(&measured)
        );
        let check = fixture
            .command_for(&scratch)
            .args(["check", "--read-data"])
            .output()
            .expect("start the cairn binary");
        assert_eq!(
            check.status.code(),
            Some(EXIT_OK),
            "check --read-data after a complete prune of a copy of the repository before kill {kill_number}: {}",
            describe(&check)
        );
        fs::remove_dir_all(&scratch).expect("remove repository copy");

        let delay = Duration::from_micros(rng.range(0, duration.as_micros() as u64));
        let context = format!("after kill {kill_number} of {KILLS}, {delay:?} into the prune");
        let child = fixture.spawn(["prune", "--max-unused", "0"]);
        std::thread::sleep(delay);
        let (killed, _) = kill_and_wait(child, "prune");

        fixture.assert_check_passes(&context);
        for (id, copy) in &remaining {
            fixture.assert_restores(id, &src, copy, &context);
        }
        // A prune that finished left nothing to do, so forget one more snapshot
        // to give the next prune work.
        if !killed && remaining.len() > 2 {
            let (id, _) = remaining.remove(0);
            fixture.run_ok(["forget", &id]);
        }
    }

    fixture.run_ok(["prune", "--max-unused", "0"]);
    fixture.assert_check_passes("after the prune that followed all kills");
    for (id, copy) in &remaining {
        fixture.assert_restores(id, &src, copy, "after the prune that followed all kills");
    }
}

/// SIGINT and SIGTERM end a backup at once, as a kill does, but remove its
/// lock, so that a prune right after it does not wait for the lock to turn
/// stale. The repository must stay intact and the next backup must work.
#[test]
fn interrupted_backup_removes_its_lock() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    write_tree(&src, &big_tree_spec(), 3);
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        let child = fixture.spawn([OsStr::new("backup"), src.as_os_str()]);
        stop_once_locked(&child, &fixture.repo);
        let pid = Pid::from_raw(child.id() as i32);
        kill(pid, signal).unwrap();
        kill(pid, Signal::SIGCONT).unwrap();
        let output = child.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(130), "{}", describe(&output));
        let stderr = stderr_of(&output);
        assert!(
            stderr.contains(&format!("interrupted by {signal}")),
            "the message does not name {signal}: {stderr}"
        );
        assert_eq!(
            lock_files(&fixture.repo),
            Vec::<PathBuf>::new(),
            "{signal} left the backup's lock"
        );
        let prune = fixture
            .command()
            .args(["prune", "--lock-wait", "0"])
            .output()
            .unwrap();
        assert_eq!(prune.status.code(), Some(EXIT_OK), "{}", describe(&prune));
        fixture.assert_check_passes(&format!("after a backup stopped by {signal}"));
    }
    let snapshot = fixture.backup(&[&src], &[]);
    fixture.assert_restores(&snapshot, &src, &src, "after two interrupted backups");
}

/// Sends SIGKILL to a child process that has not been waited for, so that its
/// pid cannot have been reused, when a test ends before waiting for it.
struct KillOnDrop(Option<Pid>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
    }
}

/// Restores a snapshot whose last file's pack is a FIFO, so the restore waits
/// in the open of that pack for as long as the test wants. Meanwhile every
/// file under its own name must be complete, and the unfinished one must lie
/// under its partial name. SIGINT must then remove the partial file and exit
/// with 130; SIGKILL leaves it, and the next restore replaces it.
#[test]
fn interrupted_restore_leaves_only_complete_files() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    fs::create_dir(&src).unwrap();
    for n in 0..40u64 {
        fs::write(
            src.join(format!("small-{n:02}")),
            random_bytes(10 * KIB + n as usize, n),
        )
        .unwrap();
    }
    fixture.backup(&[&src], &[]);
    let packs_before = pack_files(&fixture.repo);
    // Larger than the largest chunk, so the file takes several chunks and is
    // created before its chunks are read.
    fs::write(src.join("zz-big"), random_bytes(12 * MIB, 99)).unwrap();
    let snapshot = fixture.backup(&[&src], &[]);
    let pack = pack_files(&fixture.repo)
        .into_iter()
        .filter(|pack| !packs_before.contains(pack))
        .max_by_key(|pack| fs::metadata(pack).unwrap().len())
        .expect("the second backup wrote a pack");
    let saved = fixture.path("saved-pack");
    fs::rename(&pack, &saved).unwrap();
    nix::unistd::mkfifo(&pack, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();

    for signal in [Signal::SIGINT, Signal::SIGKILL] {
        let target = fixture.path(&format!("target-{signal}"));
        let restore = fixture.spawn_logged(
            &[
                OsStr::new("restore"),
                OsStr::new(&snapshot),
                OsStr::new("--target"),
                target.as_os_str(),
            ],
            &format!("restore-{signal}"),
        );
        // A failed assertion must not leave the restore waiting on the FIFO.
        let mut guard = KillOnDrop(Some(Pid::from_raw(restore.child.id() as i32)));
        let restored = restored_path(&target, &src);
        let partial = restored.join(".zz-big.cairn-partial");
        let small_done = || (0..40).all(|n| restored.join(format!("small-{n:02}")).exists());
        let deadline = Instant::now() + Duration::from_secs(120);
        while !(partial.exists() && small_done()) {
            assert!(
                !restored.join("zz-big").exists(),
                "zz-big is under its own name before its chunks were read"
            );
            assert!(
                Instant::now() < deadline,
                "the restore never reached the FIFO pack with all small files done"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        for n in 0..40 {
            let name = format!("small-{n:02}");
            assert_eq!(
                fs::read(restored.join(&name)).unwrap(),
                fs::read(src.join(&name)).unwrap(),
                "{name} is under its own name before it is complete"
            );
        }
        assert!(
            !restored.join("zz-big").exists(),
            "zz-big is under its own name before its chunks were read"
        );

        let pid = Pid::from_raw(restore.child.id() as i32);
        kill(pid, signal).unwrap();
        if signal == Signal::SIGINT {
            // Opening the FIFO for writing lets the waiting open return. The
            // read that follows fails, and the restore then checks its flag.
            let mut child = restore;
            while child.child.try_wait().unwrap().is_none() {
                let _ = OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&pack);
                std::thread::sleep(Duration::from_millis(10));
            }
            let output = child.wait();
            guard.0 = None;
            assert_eq!(output.status.code(), Some(130), "{}", describe(&output));
            let stderr = stderr_of(&output);
            assert!(
                stderr.contains("restore interrupted"),
                "the message does not name the interrupt: {stderr}"
            );
            assert!(
                stderr.contains("not restored: 1 file"),
                "the message does not count the file left out: {stderr}"
            );
            assert!(
                !partial.exists(),
                "SIGINT left the partial file {}",
                partial.display()
            );
            assert_eq!(
                files_below(&restored).len(),
                40,
                "the target holds other files than the small ones"
            );
        } else {
            let output = restore.wait();
            guard.0 = None;
            assert_eq!(output.status.signal(), Some(Signal::SIGKILL as i32));
            assert!(
                partial.exists() && !restored.join("zz-big").exists(),
                "SIGKILL must leave the unfinished file under its partial name only"
            );
        }
    }

    fs::remove_file(&pack).unwrap();
    fs::rename(&saved, &pack).unwrap();
    let target = fixture.path("target-SIGKILL");
    let output = fixture.restore(&snapshot, &target);
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    assert_same_tree(
        &src,
        &restored_path(&target, &src),
        "after a restore killed and run again",
    );
}

// ---------------------------------------------------------------------------
// Concurrency and locks
// ---------------------------------------------------------------------------

/// Two backups of different trees and a prune start at the same moment, in
/// three rounds. All must succeed, and every kept snapshot must restore.
#[test]
fn concurrent_backups_and_prune_keep_all_snapshots() {
    const ROUNDS: u64 = 3;
    let fixture = Fixture::new();
    let spec = TreeSpec {
        small_files: 400,
        small_max: 20 * KIB,
        big_files: vec![6 * MIB, 9 * MIB],
    };
    let first = fixture.path("first");
    let second = fixture.path("second");
    let doomed = fixture.path("doomed");
    write_tree(&first, &spec, 4);
    write_tree(&second, &spec, 5);

    // Each kept snapshot with the tree it was taken of and a copy of that tree.
    let mut kept_snapshots: Vec<(String, PathBuf, PathBuf)> = Vec::new();
    for round in 0..ROUNDS {
        // New data of `first` and of a tree that is then forgotten share packs,
        // so the prune has packs to repack as well as packs to delete.
        if round > 0 {
            change_tree(&first, &spec, 3 * round);
        }
        write_tree(&doomed, &spec, 100 + round);
        let mixed = fixture.backup(&[&first, &doomed], &[]);
        let id = fixture.backup(&[&first], &[]);
        let copy = fixture.path(&format!("first-before-{round}"));
        copy_tree(&first, &copy);
        kept_snapshots.push((id, first.clone(), copy));
        fixture.run_ok(["forget", &mixed]);
        fs::remove_dir_all(&doomed).expect("remove forgotten tree");

        // The backups that run next to the prune have new data to store.
        change_tree(&first, &spec, 3 * round + 1);
        change_tree(&second, &spec, 3 * round + 2);

        let backup = |source: &Path| -> Vec<OsString> {
            ["backup", "--json", "--lock-wait", "600"]
                .iter()
                .map(OsString::from)
                .chain([source.as_os_str().to_os_string()])
                .collect()
        };
        let commands: [(&str, Vec<OsString>); 3] = [
            ("backup-first", backup(&first)),
            ("backup-second", backup(&second)),
            (
                "prune",
                ["prune", "--max-unused", "0", "--lock-wait", "600"]
                    .iter()
                    .map(OsString::from)
                    .collect(),
            ),
        ];
        // Each round starts the three commands in another order.
        let mut children = Vec::new();
        for i in 0..commands.len() {
            let (name, args) = &commands[(i + round as usize) % commands.len()];
            let args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
            let log = format!("{name}-{round}");
            children.push((*name, fixture.spawn_logged(&args, &log)));
        }
        let mut outputs = BTreeMap::new();
        for (name, child) in children {
            outputs.insert(name, child.wait());
        }
        for (name, output) in &outputs {
            assert_eq!(
                output.status.code(),
                Some(EXIT_OK),
                "{name} in round {round} failed: {}",
                describe(output)
            );
        }

        for (name, source) in [("backup-first", &first), ("backup-second", &second)] {
            let id = snapshot_id(&stdout_of(&outputs[name]));
            let copy = fixture.path(&format!("{name}-{round}"));
            copy_tree(source, &copy);
            kept_snapshots.push((id, source.clone(), copy));
        }
        let context = format!("after round {round}");
        fixture.assert_check_passes(&context);
        for (id, source, copy) in &kept_snapshots {
            fixture.assert_restores(id, source, copy, &context);
        }
    }
}

/// Returns the spec of a tree whose backup runs long after taking its lock.
fn big_tree_spec() -> TreeSpec {
    TreeSpec {
        small_files: 1000,
        small_max: 8 * KIB,
        big_files: vec![16 * MIB, 16 * MIB, 16 * MIB],
    }
}

#[test]
fn stale_lock_of_dead_process_is_ignored() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    write_tree(&src, &big_tree_spec(), 6);

    let child = fixture.spawn([OsStr::new("backup"), src.as_os_str()]);
    let locks = stop_once_locked(&child, &fixture.repo);
    let (killed, output) = kill_and_wait(child, "backup");
    assert!(
        killed,
        "the stopped backup was not killed: {}",
        describe(&output)
    );
    assert_eq!(
        lock_files(&fixture.repo),
        locks,
        "the killed backup's lock file is gone"
    );

    // With --lock-wait 0 the prune fails at once if it takes the lock for live.
    let prune = fixture.run(["prune", "--lock-wait", "0"]);
    assert_eq!(
        prune.status.code(),
        Some(EXIT_OK),
        "prune with the lock of a killed backup present: {}",
        describe(&prune)
    );
    assert_eq!(
        lock_files(&fixture.repo),
        Vec::<PathBuf>::new(),
        "lock files left after the prune"
    );
    fixture.assert_check_passes("after the prune");
}

/// A backup stopped with SIGSTOP while it holds its lock is alive but makes no
/// progress, which makes its lock's lifetime independent of timing.
#[test]
fn lock_of_live_process_blocks_prune() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    write_tree(&src, &big_tree_spec(), 7);

    let child = fixture.spawn([OsStr::new("backup"), OsStr::new("--json"), src.as_os_str()]);
    let pid = child.id();
    stop_once_locked(&child, &fixture.repo);

    let prune = fixture.run(["prune", "--lock-wait", "1"]);
    kill(Pid::from_raw(pid as i32), Signal::SIGCONT).expect("send SIGCONT");
    assert_eq!(
        prune.status.code(),
        Some(EXIT_LOCKED),
        "prune while a backup holds the lock: {}",
        describe(&prune)
    );
    let stderr = stderr_of(&prune);
    assert!(
        stderr.contains("locked by backup"),
        "the message does not name the operation that holds the lock: {stderr}"
    );
    assert!(
        stderr.contains(&format!("pid {pid}")),
        "the message does not name the backup's pid {pid}: {stderr}"
    );

    let backup = child.wait_with_output().expect("wait for backup");
    assert_eq!(
        backup.status.code(),
        Some(EXIT_OK),
        "backup after it was held up: {}",
        describe(&backup)
    );
    fixture.run_ok(["prune", "--lock-wait", "0"]);
    let id = snapshot_id(&stdout_of(&backup));
    fixture.assert_restores(&id, &src, &src, "after the prune");
}

// ---------------------------------------------------------------------------
// Storage failures and damage
// ---------------------------------------------------------------------------

/// A tmpfs mounted for one test and unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Self {
        fs::create_dir_all(path).expect("create mount point");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size}"))
            .arg("tmpfs")
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            output.status.success(),
            "mounting a tmpfs needs root: {}",
            describe(&output)
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let output = Command::new("umount").arg(&self.path).output();
        match output {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!("umount {}: {}", self.path.display(), describe(&output)),
            Err(e) => eprintln!("umount {}: {e}", self.path.display()),
        }
    }
}

#[test]
fn full_disk_fails_clearly_and_recovers() {
    let mut fixture = Fixture::uninitialized();
    let mount = Tmpfs::mount(&fixture.path("small-disk"), "64M");
    fixture.repo = mount.path.join("repo");
    fixture.run_ok(["init"]);

    // 150 MiB in fifteen files, backed up in name order.
    let src = fixture.path("src");
    fs::create_dir(&src).expect("create source directory");
    for i in 0..15u64 {
        fs::write(
            src.join(format!("file{i:02}")),
            random_bytes(10 * MIB, 1000 + i),
        )
        .expect("write source file");
    }

    let output = fixture.run([OsStr::new("backup"), src.as_os_str()]);
    assert_ne!(
        output.status.code(),
        Some(EXIT_OK),
        "backup of 150 MiB into 64 MiB succeeded: {}",
        describe(&output)
    );
    let stderr = stderr_of(&output);
    assert!(
        stderr.to_lowercase().contains("no space left"),
        "the message does not say that no space is left: {stderr}"
    );
    let repo = fixture.repo.to_str().expect("UTF-8 path");
    assert!(
        stderr.contains(repo),
        "the message does not name the repository {repo}: {stderr}"
    );
    fixture.run_ok(["check"]);
    assert_eq!(
        fixture.snapshot_ids(),
        Vec::<String>::new(),
        "the failed backup left a snapshot"
    );

    // The first three files were stored before the disk filled up, in packs
    // that the next backup finds and does not write again.
    for i in 3..15 {
        fs::remove_file(src.join(format!("file{i:02}"))).expect("remove source file");
    }
    let id = fixture.backup(&[&src], &[]);
    fixture.assert_check_passes("after the second backup");
    fixture.assert_restores(&id, &src, &src, "after the disk filled up once");
}

#[test]
fn garbage_pack_names_affected_files() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    write_tree(
        &src,
        &TreeSpec {
            small_files: 40,
            small_max: 16 * KIB,
            big_files: vec![2 * MIB],
        },
        8,
    );
    let first = fixture.backup(&[&src], &[]);
    let packs_before = pack_files(&fixture.repo);

    // The second backup stores only this file's chunks, so they get a chunk
    // pack of their own. The other new pack contains the trees.
    let victim = src.join("victim.bin");
    let victim_len = 12 * MIB;
    fs::write(&victim, random_bytes(victim_len, 9)).expect("write victim file");
    let second = fixture.backup(&[&src], &[]);
    let new_packs: Vec<PathBuf> = pack_files(&fixture.repo)
        .into_iter()
        .filter(|p| !packs_before.contains(p))
        .filter(|p| fs::metadata(p).expect("stat pack").len() > MIB as u64)
        .collect();
    assert_eq!(
        new_packs.len(),
        1,
        "the second backup wrote other than one large pack: {new_packs:?}"
    );
    let pack = &new_packs[0];
    let pack_len = fs::metadata(pack).expect("stat pack").len() as usize;
    OpenOptions::new()
        .write(true)
        .open(pack)
        .expect("open pack")
        .write_all_at(&random_bytes(pack_len, 10), 0)
        .expect("overwrite pack");

    let check = fixture.run(["check", "--read-data"]);
    assert_eq!(
        check.status.code(),
        Some(EXIT_FAILURE),
        "check of a repository with a garbage pack: {}",
        describe(&check)
    );
    let stdout = stdout_of(&check);
    let victim_text = victim.to_str().expect("UTF-8 path");
    let second_short = &second[..8];
    assert!(
        stdout
            .lines()
            .any(|l| l.contains(victim_text) && l.contains(second_short)),
        "check names no damage to {victim_text} in snapshot {second_short}:\n{stdout}"
    );
    let first_prefix = format!("snapshot {}", &first[..8]);
    assert!(
        !stdout
            .lines()
            .any(|l| l.trim_start().starts_with(&first_prefix)),
        "check names damage in {first_prefix}, which does not contain {victim_text}:\n{stdout}"
    );
    let others: Vec<PathBuf> = files_below(&src)
        .into_iter()
        .filter(|f| *f != victim)
        .collect();
    for other in &others {
        let text = format!("{} ", other.display());
        assert!(
            !stdout.contains(&text),
            "check names the undamaged {}:\n{stdout}",
            other.display()
        );
    }

    let target = fixture.path("restore-damaged");
    let restore = fixture.restore(&second, &target);
    assert_eq!(
        restore.status.code(),
        Some(EXIT_FAILURE),
        "restore of a snapshot with a damaged file: {}",
        describe(&restore)
    );
    let restored_victim = restored_path(&target, &victim);
    if let Ok(bytes) = fs::read(&restored_victim) {
        assert!(
            bytes == fs::read(&victim).expect("read victim"),
            "{} was restored with wrong bytes",
            restored_victim.display()
        );
    }
    for other in &others {
        let restored = fs::read(restored_path(&target, other)).ok();
        assert!(
            restored == Some(fs::read(other).expect("read source file")),
            "{} was not restored identically",
            other.display()
        );
    }

    let repair = fixture.run_ok(["repair", "snapshots", "--read-data"]);
    let repaired: Vec<String> = fixture
        .snapshots()
        .iter()
        .filter(|s| {
            s["tags"]
                .as_array()
                .is_some_and(|t| t.contains(&"repaired".into()))
        })
        .map(|s| s["id"].as_str().expect("snapshot id").to_string())
        .collect();
    assert_eq!(
        repaired.len(),
        1,
        "snapshots tagged repaired: {repaired:?}; repair printed:\n{repair}"
    );
    let target = fixture.path("restore-repaired");
    let restore = fixture.restore(&repaired[0], &target);
    assert_eq!(
        restore.status.code(),
        Some(EXIT_OK),
        "restore of the repaired snapshot: {}",
        describe(&restore)
    );
    let restored_victim = restored_path(&target, &victim);
    let damaged_copy = PathBuf::from(format!("{}.damaged", restored_victim.display()));
    let damaged_md = fs::metadata(&damaged_copy);
    assert!(
        damaged_md.is_ok(),
        "{} is missing from the repaired snapshot: {damaged_md:?}",
        damaged_copy.display()
    );
    assert_eq!(
        damaged_md.expect("checked above").len(),
        victim_len as u64,
        "size of {}",
        damaged_copy.display()
    );
    assert!(
        !restored_victim.exists(),
        "{} is still present under its own name",
        restored_victim.display()
    );
    for other in &others {
        let restored = fs::read(restored_path(&target, other)).ok();
        assert!(
            restored == Some(fs::read(other).expect("read source file")),
            "{} was not restored identically from the repaired snapshot",
            other.display()
        );
    }
}

/// Runs the copied `binary` as user `nobody` on the fixture's repository.
fn run_as_nobody(fixture: &Fixture, binary: &Path, args: &[&OsStr]) -> Output {
    let mut command = clean_command(Path::new("setpriv"));
    command
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .arg(binary)
        .arg("--repo")
        .arg(&fixture.repo)
        .arg("--password-file")
        .arg(&fixture.password_file)
        .args(args);
    command
        .output()
        .expect("setpriv (package util-linux) must be installed for this test")
}

#[test]
fn read_only_repository_fails_clearly() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    write_tree(
        &src,
        &TreeSpec {
            small_files: 40,
            small_max: 16 * KIB,
            big_files: vec![3 * MIB],
        },
        11,
    );
    let id = fixture.backup(&[&src], &[]);

    // The binary is copied into the temporary directory, because the build
    // directory may not be open to other users.
    let binary = fixture.path("cairn");
    fs::copy(env!("CARGO_BIN_EXE_cairn"), &binary).expect("copy the binary");
    fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).expect("chmod binary");
    fs::set_permissions(fixture.dir.path(), fs::Permissions::from_mode(0o755))
        .expect("chmod temporary directory");
    fs::set_permissions(&fixture.password_file, fs::Permissions::from_mode(0o644))
        .expect("chmod password file");
    let chmod = Command::new("chmod")
        .args(["-R", "a-w"])
        .arg(&fixture.repo)
        .output()
        .expect("run chmod");
    assert!(chmod.status.success(), "{}", describe(&chmod));

    let backup = run_as_nobody(&fixture, &binary, &[OsStr::new("backup"), src.as_os_str()]);
    assert_eq!(
        backup.status.code(),
        Some(EXIT_FAILURE),
        "backup into a read-only repository: {}",
        describe(&backup)
    );
    let stderr = stderr_of(&backup);
    let repo = fixture.repo.to_str().expect("UTF-8 path");
    assert!(
        stderr.contains(repo),
        "the message does not name a path in the repository {repo}: {stderr}"
    );
    assert!(
        stderr.contains("Permission denied"),
        "the message does not give the cause: {stderr}"
    );

    let target = fixture.path("target");
    fs::create_dir(&target).expect("create restore target");
    nix::unistd::chown(
        &target,
        Some(nix::unistd::Uid::from_raw(NOBODY)),
        Some(nix::unistd::Gid::from_raw(NOBODY)),
    )
    .expect("chown restore target");
    let restore = run_as_nobody(
        &fixture,
        &binary,
        &[
            OsStr::new("restore"),
            OsStr::new(&id),
            OsStr::new("--target"),
            target.as_os_str(),
        ],
    );
    assert_eq!(
        restore.status.code(),
        Some(EXIT_OK),
        "restore by nobody from a read-only repository: {}",
        describe(&restore)
    );
    assert_same_tree(
        &src,
        &restored_path(&target, &src),
        "restored by nobody from a read-only repository",
    );
    let check = run_as_nobody(&fixture, &binary, &[OsStr::new("check")]);
    assert_eq!(
        check.status.code(),
        Some(EXIT_OK),
        "check by nobody of a read-only repository: {}",
        describe(&check)
    );
}
