//! Running the `cairn` binary against a repository in a temporary directory,
//! shared by the integration tests of backup options, output and completions.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use tempfile::TempDir;

pub mod cairn_server;
pub mod s3_server;

pub const PASSWORD: &str = "correct horse battery staple";

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_INCOMPLETE: i32 = 3;
pub const EXIT_NO_REPOSITORY: i32 = 10;
pub const EXIT_LOCKED: i32 = 11;
pub const EXIT_WRONG_PASSWORD: i32 = 12;

/// Returns a `cairn` command that ignores the caller's repository, password,
/// S3, server token and log settings and reads no standard input. It remembers
/// the newest audit log entries in a directory below the system's temporary
/// directory, not in the caller's home.
pub fn cairn_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cairn"));
    for name in [
        "CAIRN_REPO",
        "CAIRN_PASSWORD",
        "CAIRN_PASSWORD_FILE",
        "CAIRN_FROM_REPO",
        "CAIRN_FROM_PASSWORD",
        "CAIRN_FROM_PASSWORD_FILE",
        "CAIRN_LIKE_PASSWORD",
        "CAIRN_LIKE_PASSWORD_FILE",
        "CAIRN_LIKE_TOKEN_FILE",
        "CAIRN_FROM_TOKEN_FILE",
        "CAIRN_S3_REQUEST_TIMEOUT",
        "CAIRN_S3_RETRY_TIMEOUT",
        "CAIRN_TOKEN",
        "CAIRN_TOKEN_FILE",
        "CAIRN_CA_FILE",
        "CAIRN_HTTP_REQUEST_TIMEOUT",
        "CAIRN_HTTP_RETRY_TIMEOUT",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "RUST_LOG",
    ] {
        command.env_remove(name);
    }
    command.env(
        "CAIRN_STATE_DIR",
        std::env::temp_dir().join("cairn-tests-state"),
    );
    command.stdin(Stdio::null());
    command
}

/// Formats a finished command for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

pub fn stdout_of(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("cairn prints UTF-8 on standard output")
}

pub fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A temporary directory with a password file and an initialized repository.
pub struct Fixture {
    pub dir: TempDir,
    /// Repository location: a directory, or an `s3:` URL.
    pub repo: PathBuf,
    pub password_file: PathBuf,
    /// Environment variables set for every command, such as S3 credentials.
    pub env: Vec<(OsString, OsString)>,
}

impl Fixture {
    /// Initializes a repository in the temporary directory.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("create temporary directory");
        let repo = dir.path().join("repo");
        Self::init_at(dir, repo, Vec::new())
    }

    /// Initializes a repository at `repo`, which may be an `s3:` URL, running
    /// every command with the environment variables `env`.
    pub fn with_repository(repo: &str, env: Vec<(OsString, OsString)>) -> Self {
        let dir = tempfile::tempdir().expect("create temporary directory");
        Self::init_at(dir, PathBuf::from(repo), env)
    }

    fn init_at(dir: TempDir, repo: PathBuf, env: Vec<(OsString, OsString)>) -> Self {
        let password_file = dir.path().join("password");
        fs::write(&password_file, format!("{PASSWORD}\n")).expect("write password file");
        let fixture = Fixture {
            dir,
            repo,
            password_file,
            env,
        };
        fixture.run_ok(["init"]);
        fixture
    }

    /// Returns a path inside the temporary directory.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Returns the global options that select the repository and password.
    pub fn global_args(&self) -> Vec<OsString> {
        vec![
            "--repo".into(),
            self.repo.clone().into_os_string(),
            "--password-file".into(),
            self.password_file.clone().into_os_string(),
        ]
    }

    /// Returns a command with `--repo` and `--password-file` set.
    pub fn command(&self) -> Command {
        let mut command = cairn_command();
        command.args(self.global_args());
        command.envs(self.env.iter().map(|(name, value)| (name, value)));
        command
    }

    pub fn run<I, S>(&self, args: I) -> Output
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
    pub fn run_ok<I, S>(&self, args: I) -> String
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

    /// Backs up `paths` with `options` and returns the JSON summary.
    pub fn backup(&self, paths: &[&Path], options: &[&str]) -> Value {
        let mut args: Vec<OsString> = vec!["backup".into(), "--json".into()];
        args.extend(options.iter().map(OsString::from));
        args.extend(paths.iter().map(|p| p.as_os_str().to_os_string()));
        let stdout = self.run_ok(&args);
        parse_json(&stdout)
    }

    /// Returns the output of `snapshots --json`.
    pub fn snapshots(&self) -> Vec<Value> {
        let stdout = self.run_ok(["snapshots", "--json"]);
        parse_json(&stdout)
            .as_array()
            .unwrap_or_else(|| panic!("snapshots --json printed no array: {stdout}"))
            .clone()
    }

    /// Restores `snapshot` into a new directory and returns that directory.
    pub fn restore(&self, snapshot: &str, target_name: &str) -> PathBuf {
        let target = self.path(target_name);
        self.run_ok([
            OsStr::new("restore"),
            OsStr::new(snapshot),
            OsStr::new("--target"),
            target.as_os_str(),
        ]);
        target
    }

    /// Lists the paths of a snapshot with `ls`, one per line.
    pub fn ls(&self, snapshot: &str) -> Vec<String> {
        self.run_ok(["ls", snapshot])
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// Parses one JSON value, failing with the text.
pub fn parse_json(text: &str) -> Value {
    serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("cairn printed invalid JSON ({e}): {text}"))
}

/// Returns the place below `target` where a restore puts the absolute `path`.
pub fn restored_path(target: &Path, path: &Path) -> PathBuf {
    target.join(path.strip_prefix("/").expect("snapshot paths are absolute"))
}

pub fn snapshot_id(summary: &Value) -> String {
    summary["snapshot"]
        .as_str()
        .unwrap_or_else(|| panic!("backup summary has no snapshot id: {summary}"))
        .to_string()
}

/// Writes `contents` to `root/relative`, creating parent directories.
pub fn write_file(root: &Path, relative: &str, contents: &[u8]) {
    let path = root.join(relative);
    fs::create_dir_all(path.parent().expect("file has a parent")).expect("create parent");
    fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Metadata and content of one entry, as a restore must bring it back.
#[derive(Debug, PartialEq)]
pub struct EntryState {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i128,
    pub size: u64,
    pub content: Option<blake3::Hash>,
    pub target: Option<PathBuf>,
}

/// Records every entry below `root` (and `root` itself, as the empty path), keyed
/// by the path relative to `root`.
pub fn record_tree(root: &Path) -> BTreeMap<PathBuf, EntryState> {
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
pub fn assert_same_tree(source: &Path, restored: &Path) {
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
        assert_eq!(got.mode, want.mode, "mode of {path:?}");
        assert_eq!(got.uid, want.uid, "uid of {path:?}");
        assert_eq!(got.gid, want.gid, "gid of {path:?}");
        assert_eq!(got.mtime_ns, want.mtime_ns, "mtime in ns of {path:?}");
        assert_eq!(got.size, want.size, "size of {path:?}");
        assert_eq!(got.content, want.content, "content hash of {path:?}");
        assert_eq!(got.target, want.target, "symlink target of {path:?}");
    }
}

/// Returns every file below `dir` with its size, keyed by the path relative to
/// `dir`, so that two listings show whether anything was written.
pub fn file_sizes(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut sizes = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in
            fs::read_dir(&current).unwrap_or_else(|e| panic!("list {}: {e}", current.display()))
        {
            let path = entry.expect("directory entry").path();
            let md = fs::symlink_metadata(&path).expect("lstat repository entry");
            if md.is_dir() {
                pending.push(path);
            } else {
                let relative = path.strip_prefix(dir).expect("below dir").to_path_buf();
                sizes.insert(relative, md.len());
            }
        }
    }
    sizes
}

/// Returns the files of a repository with their sizes, like [`file_sizes`],
/// without the audit log, to which every command appends an entry.
pub fn data_file_sizes(repo: &Path) -> BTreeMap<PathBuf, u64> {
    let mut sizes = file_sizes(repo);
    sizes.retain(|path, _| !path.starts_with("audit"));
    sizes
}

/// Returns `len` deterministic pseudo-random bytes from SplitMix64. They do not
/// compress, and a large file of them splits into several chunks.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
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

/// An inotify watch for opens of one file.
pub struct OpenWatch {
    fd: std::os::fd::OwnedFd,
}

impl OpenWatch {
    /// Starts watching `path` for opens. With `blocking`, [`OpenWatch::wait`]
    /// waits for an event; otherwise [`OpenWatch::pending`] returns at once.
    pub fn new(path: &Path, blocking: bool) -> Self {
        use std::os::fd::FromRawFd;
        use std::os::unix::ffi::OsStrExt;

        let flags = if blocking {
            libc::IN_CLOEXEC
        } else {
            libc::IN_NONBLOCK | libc::IN_CLOEXEC
        };
        // SAFETY: inotify_init1 has no memory effects; the descriptor is owned below.
        let fd = unsafe { libc::inotify_init1(flags) };
        assert!(
            fd >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd was just returned by inotify_init1 and nothing else owns it.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: `name` is a valid C string that outlives the call.
        let watch = unsafe {
            libc::inotify_add_watch(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                name.as_ptr(),
                libc::IN_OPEN,
            )
        };
        assert!(
            watch >= 0,
            "inotify_add_watch: {}",
            std::io::Error::last_os_error()
        );
        Self { fd }
    }

    /// Reads the waiting events and returns their length in bytes: 0 when
    /// there are none, for a watch that does not block.
    fn read_events(&self) -> usize {
        let mut buffer = [0u8; 4096];
        // SAFETY: the buffer is valid for its length during the call.
        let n = unsafe {
            libc::read(
                std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
            )
        };
        if n < 0 {
            let error = std::io::Error::last_os_error();
            assert_eq!(
                error.raw_os_error(),
                Some(libc::EAGAIN),
                "read inotify: {error}"
            );
            return 0;
        }
        n as usize
    }

    /// Returns the bytes of events waiting, without waiting for more.
    pub fn pending(&self) -> usize {
        self.read_events()
    }

    /// Waits until the file is opened.
    pub fn wait(&self) {
        assert!(self.read_events() > 0, "inotify returned no event");
    }
}
