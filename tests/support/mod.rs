//! Running the `cairn` binary against a repository in a temporary directory,
//! shared by the integration tests of backup options, output and completions.

#![allow(dead_code)]

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use tempfile::TempDir;

pub mod s3_server;

pub const PASSWORD: &str = "correct horse battery staple";

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_INCOMPLETE: i32 = 3;
pub const EXIT_NO_REPOSITORY: i32 = 10;
pub const EXIT_LOCKED: i32 = 11;
pub const EXIT_WRONG_PASSWORD: i32 = 12;

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
