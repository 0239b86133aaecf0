//! Running the `cairn` binary, repositories in temporary directories, and
//! [`MountGuard`], which owns one `cairn mount` process and its mount point.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, lchown};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

const PASSWORD: &str = "correct horse battery staple";

pub const EXIT_OK: i32 = 0;

/// Maximum time for a mount to become listable. It is an upper bound for a
/// hung process, not a performance limit, so it is generous.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);

/// Maximum time for `cairn mount` to exit after an unmount or a signal, before
/// it is killed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Panics with instructions unless `/dev/fuse` exists. These tests never skip,
/// because a run without FUSE would otherwise look like a pass.
pub fn require_fuse() {
    let device = Path::new("/dev/fuse");
    assert!(
        device.exists(),
        "/dev/fuse is missing, so the FUSE tests cannot run: load the module with \
         `modprobe fuse`, or start the container with `--device /dev/fuse --cap-add SYS_ADMIN`"
    );
}

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

/// Returns a `cairn` command that ignores the caller's repository, password,
/// S3 and log settings and reads no standard input.
pub fn cairn_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cairn"));
    for name in [
        "CAIRN_REPO",
        "CAIRN_PASSWORD",
        "CAIRN_PASSWORD_FILE",
        "CAIRN_S3_REQUEST_TIMEOUT",
        "CAIRN_S3_RETRY_TIMEOUT",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "RUST_LOG",
    ] {
        command.env_remove(name);
    }
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

/// Runs an external tool and returns its output, panicking if it cannot start.
pub fn run_tool(program: &str, args: &[&OsStr]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("failed to start {program}: {e}"))
}

/// Runs an external tool that must exit 0 and returns its standard output.
pub fn run_tool_ok(program: &str, args: &[&OsStr]) -> Vec<u8> {
    let output = run_tool(program, args);
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        describe(&output)
    );
    output.stdout
}

/// A temporary directory with a password file and an initialized repository.
pub struct Fixture {
    _dir: TempDir,
    root: PathBuf,
    /// Repository location: a directory, or an `s3:` URL.
    pub repo: PathBuf,
    /// File whose first line is the repository's password.
    pub password_file: PathBuf,
    /// Environment variables set for every command, such as S3 credentials.
    env: Vec<(OsString, OsString)>,
}

impl Fixture {
    /// Initializes a repository in the temporary directory.
    pub fn new() -> Self {
        Self::init(None, Vec::new())
    }

    /// Initializes a repository at `repo`, which may be an `s3:` URL, running
    /// every command with the environment variables `env`.
    pub fn with_repository(repo: &str, env: Vec<(OsString, OsString)>) -> Self {
        Self::init(Some(PathBuf::from(repo)), env)
    }

    fn init(repo: Option<PathBuf>, env: Vec<(OsString, OsString)>) -> Self {
        require_fuse();
        let dir = tempfile::Builder::new()
            .prefix("cairn-fuse-")
            .tempdir()
            .expect("create temporary directory");
        // Snapshots record absolute paths, so the source paths must not go
        // through a symbolic link such as a linked /tmp.
        let root = dir
            .path()
            .canonicalize()
            .expect("canonicalize temporary directory");
        let repo = repo.unwrap_or_else(|| root.join("repo"));
        let password_file = root.join("password");
        fs::write(&password_file, format!("{PASSWORD}\n")).expect("write password file");
        let fixture = Fixture {
            _dir: dir,
            root,
            repo,
            password_file,
            env,
        };
        fixture.run_ok(["init"]);
        fixture
    }

    /// Returns a path inside the temporary directory.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    /// Returns a command with `--repo` and `--password-file` set.
    pub fn command(&self) -> Command {
        let mut command = cairn_command();
        command
            .arg("--repo")
            .arg(&self.repo)
            .arg("--password-file")
            .arg(&self.password_file)
            .envs(self.env.iter().map(|(name, value)| (name, value)));
        command
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
        let output = self
            .command()
            .args(&args)
            .output()
            .expect("start the cairn binary");
        assert_eq!(
            output.status.code(),
            Some(EXIT_OK),
            "cairn {args:?} failed: {}",
            describe(&output)
        );
        String::from_utf8(output.stdout).expect("cairn prints UTF-8 on standard output")
    }

    /// Backs up `paths` with extra `options`, checks that no entry was skipped
    /// and returns the JSON summary.
    pub fn backup(&self, paths: &[&Path], options: &[&str]) -> Value {
        let mut args: Vec<OsString> = vec!["backup".into(), "--json".into()];
        args.extend(options.iter().map(OsString::from));
        args.extend(paths.iter().map(|p| p.as_os_str().to_os_string()));
        let stdout = self.run_ok(&args);
        let summary: Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("backup --json printed invalid JSON ({e}): {stdout}"));
        assert_eq!(
            summary["errors"].as_array().map(Vec::len),
            Some(0),
            "backup skipped entries: {summary}"
        );
        summary
    }

    /// Returns the output of `snapshots --json`, oldest first.
    pub fn snapshots(&self) -> Vec<Value> {
        let stdout = self.run_ok(["snapshots", "--json"]);
        let value: Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("snapshots --json printed invalid JSON ({e}): {stdout}"));
        value
            .as_array()
            .unwrap_or_else(|| panic!("snapshots --json printed no array: {stdout}"))
            .clone()
    }
}

/// Returns the snapshot id from a `backup --json` summary.
pub fn snapshot_id(summary: &Value) -> String {
    summary["snapshot"]
        .as_str()
        .unwrap_or_else(|| panic!("backup summary has no snapshot id: {summary}"))
        .to_string()
}

/// Returns the mount's folder name for a snapshot object of `snapshots --json`,
/// which is its UTC time as `YYYY-MM-DDTHH-MM-SSZ`, `_` and its short id.
pub fn folder_name(snapshot: &Value) -> String {
    let nanos = snapshot["time_unix_ns"]
        .as_i64()
        .unwrap_or_else(|| panic!("snapshot has no time_unix_ns: {snapshot}"));
    let short_id = snapshot["short_id"]
        .as_str()
        .unwrap_or_else(|| panic!("snapshot has no short_id: {snapshot}"));
    let secs = nanos.div_euclid(1_000_000_000);
    let time = chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_else(|| panic!("snapshot time {secs} s is out of range"));
    format!("{}_{short_id}", time.format("%Y-%m-%dT%H-%M-%SZ"))
}

/// Returns where the absolute `source` path appears below a snapshot folder.
pub fn below(snapshot_dir: &Path, source: &Path) -> PathBuf {
    snapshot_dir.join(source.strip_prefix("/").expect("source paths are absolute"))
}

/// Lists the names in a directory, sorted.
pub fn list_names(dir: &Path) -> Vec<OsString> {
    let mut names: Vec<OsString> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|entry| {
            entry
                .unwrap_or_else(|e| panic!("read an entry of {}: {e}", dir.display()))
                .file_name()
        })
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------
// Building source trees
// ---------------------------------------------------------------------------

/// Returns `len` deterministic pseudo-random bytes from SplitMix64. They do not
/// compress, and a large file of them splits into several chunks.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut random = SplitMix64(seed);
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        bytes.extend_from_slice(&random.next().to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// The SplitMix64 pseudo-random number generator.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Returns a number in `0..bound`. `bound` must be above 0.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// Sets access and modification time of `path` to `secs.nanos` without following
/// a symlink.
pub fn set_mtime(path: &Path, secs: i64, nanos: i64) {
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

pub fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// Changes the owner of `path` without following a symlink.
pub fn set_owner(path: &Path, uid: u32, gid: u32) {
    lchown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {uid}:{gid} {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------
// Mounting
// ---------------------------------------------------------------------------

/// Returns true if `path` is a mount point in this process's mount namespace.
pub fn is_mounted(path: &Path) -> bool {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    let expected = path.as_os_str().as_bytes();
    mountinfo.lines().any(|line| {
        // Field 5 is the mount point, with space, tab, newline and backslash
        // written as octal escapes.
        line.split(' ')
            .nth(4)
            .is_some_and(|field| unescape_mountinfo(field) == expected)
    })
}

fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// Unmounts `mountpoint` with `fusermount3 -u`, or with `umount -l` if that
/// fails. Returns the tools' error output if both fail.
fn unmount(mountpoint: &Path) -> Result<(), String> {
    if !is_mounted(mountpoint) {
        return Ok(());
    }
    let mut errors = String::new();
    for (program, flag) in [("fusermount3", "-u"), ("umount", "-l")] {
        match Command::new(program)
            .arg(flag)
            .arg(mountpoint)
            .stdin(Stdio::null())
            .output()
        {
            Ok(output) if output.status.success() => return Ok(()),
            Ok(output) => errors.push_str(&format!(
                "{program} {flag} failed: {}\n",
                String::from_utf8_lossy(&output.stderr).trim()
            )),
            Err(e) => errors.push_str(&format!("failed to start {program}: {e}\n")),
        }
    }
    Err(errors)
}

/// Polls `child` until it exits or `timeout` passes. Returns `Ok(None)` on
/// timeout.
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// A running `cairn mount` on a mount point in its own temporary directory.
///
/// Dropping the guard unmounts the file system (`fusermount3 -u`, then `umount
/// -l`), waits for the process and kills it if it has not exited after
/// [`EXIT_TIMEOUT`]. A failing test therefore leaves no mount behind.
pub struct MountGuard {
    child: Option<Child>,
    mountpoint: PathBuf,
    log: PathBuf,
    // Dropped after `Drop::drop` has unmounted, so it never removes files
    // through a live mount.
    _dir: TempDir,
}

impl MountGuard {
    /// Starts `cairn mount` on the repository of `fixture` with `extra_args`
    /// before the mount point, and waits until `snapshots/` is listable.
    pub fn start(fixture: &Fixture, extra_args: &[&str]) -> Self {
        require_fuse();
        let dir = tempfile::Builder::new()
            .prefix("cairn-mount-")
            .tempdir()
            .expect("create temporary directory for the mount point");
        let base = dir
            .path()
            .canonicalize()
            .expect("canonicalize mount directory");
        let mountpoint = base.join("mnt");
        fs::create_dir(&mountpoint).expect("create mount point");
        let log = base.join("mount.log");
        let log_file = File::create(&log).expect("create mount log");
        let child = fixture
            .command()
            .arg("mount")
            .args(extra_args)
            .arg(&mountpoint)
            .stdout(log_file.try_clone().expect("duplicate mount log handle"))
            .stderr(log_file)
            .spawn()
            .expect("start cairn mount");
        let mut guard = MountGuard {
            child: Some(child),
            mountpoint,
            log,
            _dir: dir,
        };
        guard.wait_until_ready();
        guard
    }

    fn wait_until_ready(&mut self) {
        let start = Instant::now();
        loop {
            let child = self.child.as_mut().expect("the mount process is running");
            if let Some(status) = child.try_wait().expect("poll cairn mount") {
                panic!(
                    "cairn mount exited with {status} before {} was mounted:\n{}",
                    self.mountpoint.display(),
                    self.log()
                );
            }
            if is_mounted(&self.mountpoint) && fs::read_dir(self.path("snapshots")).is_ok() {
                return;
            }
            assert!(
                start.elapsed() < MOUNT_TIMEOUT,
                "{}/snapshots was not listable within {MOUNT_TIMEOUT:?}:\n{}",
                self.mountpoint.display(),
                self.log()
            );
            thread::sleep(POLL_INTERVAL);
        }
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Returns a path below the mount point.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.mountpoint.join(relative)
    }

    /// Returns what `cairn mount` has written to standard output and error.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.log) {
            let mut bytes = Vec::new();
            let _ = file.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    }

    /// Returns the process id of `cairn mount`.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("the mount process is running")
            .id()
    }

    /// Returns true while `cairn mount` has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("poll cairn mount").is_none(),
            None => false,
        }
    }

    /// Unmounts with `fusermount3 -u`, which must succeed, and returns the
    /// exit status of `cairn mount`.
    pub fn unmount_with_fusermount(&mut self) -> ExitStatus {
        let output = run_tool(
            "fusermount3",
            &[OsStr::new("-u"), self.mountpoint.as_os_str()],
        );
        assert!(
            output.status.success(),
            "fusermount3 -u {} failed: {}",
            self.mountpoint.display(),
            describe(&output)
        );
        self.wait_for_exit()
    }

    /// Waits for `cairn mount` to exit and returns its status. Panics if it
    /// still runs after [`EXIT_TIMEOUT`]. The guard kills it when dropped.
    pub fn wait_for_exit(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("the mount process is running");
        let result = wait_with_timeout(child, EXIT_TIMEOUT);
        match result {
            Ok(Some(status)) => {
                self.child = None;
                status
            }
            Ok(None) => panic!(
                "cairn mount did not exit within {EXIT_TIMEOUT:?}:\n{}",
                self.log()
            ),
            Err(e) => panic!("failed to wait for cairn mount: {e}"),
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        // Nothing here may panic, because a panic during a test's unwinding
        // aborts the whole test binary.
        if thread::panicking() {
            eprintln!(
                "--- cairn mount log ({}) ---\n{}",
                self.mountpoint.display(),
                self.log()
            );
        }
        if let Err(errors) = unmount(&self.mountpoint) {
            eprintln!("failed to unmount {}:\n{errors}", self.mountpoint.display());
        }
        if let Some(mut child) = self.child.take() {
            match wait_with_timeout(&mut child, EXIT_TIMEOUT) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    eprintln!(
                        "cairn mount (pid {}) did not exit within {EXIT_TIMEOUT:?} after the \
                         unmount, killing it",
                        child.id()
                    );
                    let _ = child.kill();
                    let _ = child.wait();
                }
                Err(e) => eprintln!("failed to wait for cairn mount (pid {}): {e}", child.id()),
            }
        }
        // A killed FUSE server can leave a mount whose requests fail with
        // ENOTCONN. A lazy unmount removes it.
        if is_mounted(&self.mountpoint) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
    }
}
