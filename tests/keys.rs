//! Tests of named keys through the `cairn` binary: adding, listing, removing and
//! changing passwords.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

const EXIT_OK: i32 = 0;
const EXIT_FAILURE: i32 = 1;
const EXIT_WRONG_PASSWORD: i32 = 12;

struct Repo {
    dir: TempDir,
    path: PathBuf,
}

impl Repo {
    fn new(password: &str) -> Self {
        let dir = tempfile::tempdir().expect("create temporary directory");
        let path = dir.path().join("repo");
        let repo = Repo { dir, path };
        let output = repo.run(password, &["init"]);
        assert_eq!(
            output.status.code(),
            Some(EXIT_OK),
            "init: {}",
            describe(&output)
        );
        repo
    }

    fn password_file(&self, name: &str, password: &str) -> PathBuf {
        let file = self.dir.path().join(name);
        fs::write(&file, format!("{password}\n")).expect("write password file");
        file
    }

    fn run(&self, password: &str, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cairn"));
        for name in ["CAIRN_REPO", "CAIRN_PASSWORD_FILE", "RUST_LOG"] {
            command.env_remove(name);
        }
        command
            .env("CAIRN_PASSWORD", password)
            .arg("--repo")
            .arg(&self.path)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run cairn")
    }
}

fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

#[test]
fn added_key_opens_repository() {
    let repo = Repo::new("first password");
    let file = repo.password_file("alice.pw", "alice password");
    let output = repo.run(
        "first password",
        &[
            "key",
            "add",
            "--name",
            "alice",
            "--new-password-file",
            path_arg(&file),
        ],
    );
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));

    let output = repo.run("alice password", &["snapshots"]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_OK),
        "alice's password: {}",
        describe(&output)
    );

    let list = repo.run("alice password", &["key", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("default"),
        "list lacks the first key:\n{text}"
    );
    assert!(text.contains("alice"), "list lacks alice:\n{text}");
}

#[test]
fn removed_key_cannot_open_repository() {
    let repo = Repo::new("first password");
    let file = repo.password_file("bob.pw", "bob password");
    let output = repo.run(
        "first password",
        &[
            "key",
            "add",
            "--name",
            "bob",
            "--new-password-file",
            path_arg(&file),
        ],
    );
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));

    let output = repo.run("first password", &["key", "remove", "bob"]);
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));

    let output = repo.run("bob password", &["snapshots"]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_WRONG_PASSWORD),
        "{}",
        describe(&output)
    );
    let output = repo.run("first password", &["snapshots"]);
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
}

#[test]
fn last_key_cannot_be_removed() {
    let repo = Repo::new("only password");
    let output = repo.run("only password", &["key", "remove", "default"]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("only key"), "message: {stderr}");
    let output = repo.run("only password", &["snapshots"]);
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
}

#[test]
fn duplicate_key_name_rejected() {
    let repo = Repo::new("first password");
    let file = repo.password_file("other.pw", "other password");
    let output = repo.run(
        "first password",
        &[
            "key",
            "add",
            "--name",
            "default",
            "--new-password-file",
            path_arg(&file),
        ],
    );
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("already exists"), "message: {stderr}");
}

#[test]
fn passwd_replaces_old_password() {
    let repo = Repo::new("old password");
    let file = repo.password_file("new.pw", "new password");
    let output = repo.run(
        "old password",
        &["key", "passwd", "--new-password-file", path_arg(&file)],
    );
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));

    let output = repo.run("old password", &["snapshots"]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_WRONG_PASSWORD),
        "old password: {}",
        describe(&output)
    );
    let output = repo.run("new password", &["snapshots"]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_OK),
        "new password: {}",
        describe(&output)
    );
}
