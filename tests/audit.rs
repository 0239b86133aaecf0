//! Tests of the audit log through the `cairn` binary on real repositories:
//! what the commands record, and how `cairn audit verify` finds edited,
//! deleted, reordered, inserted and forged entries.

mod support;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use cairn::audit::{AuditArg, AuditEntry, Outcome, entry_name, list_entries, seal_entry};
use cairn::repository::Repository;
use cairn::tree::Timestamp;
use serde_json::Value;
use support::{EXIT_FAILURE, EXIT_OK, Fixture, cairn_command, describe, stderr_of, write_file};
use tempfile::TempDir;

const ALICE_PASSWORD: &str = "alice password";

/// A repository whose commands all use one state directory, so that the
/// remembered head of the audit log stays inside the test.
struct Logged {
    fixture: Fixture,
    /// Holds the repository and the state directory.
    outer: TempDir,
}

impl Logged {
    fn new() -> Self {
        let outer = tempfile::tempdir().expect("create temporary directory");
        let repo = outer.path().join("repo");
        let state = outer.path().join("state");
        let env: Vec<(OsString, OsString)> =
            vec![("CAIRN_STATE_DIR".into(), state.into_os_string())];
        let fixture = Fixture::with_repository(repo.to_str().expect("UTF-8 path"), env);
        Logged { fixture, outer }
    }

    fn repo(&self) -> &Path {
        &self.fixture.repo
    }

    fn audit_dir(&self) -> PathBuf {
        self.repo().join("audit")
    }

    /// Returns the entry files, sorted by name.
    fn entry_files(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.audit_dir())
            .expect("list audit/")
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| !name.starts_with('.'))
            .collect();
        names.sort();
        names
    }

    fn run(&self, args: &[&str]) -> Output {
        self.fixture.run(args)
    }

    fn run_ok(&self, args: &[&str]) -> String {
        self.fixture.run_ok(args)
    }

    /// Runs a command with the password of `alice`.
    fn run_as_alice(&self, args: &[&str]) -> Output {
        let password = self.outer.path().join("alice.pw");
        fs::write(&password, format!("{ALICE_PASSWORD}\n")).unwrap();
        self.alice_command(&password).args(args).output().unwrap()
    }

    fn alice_command(&self, password: &Path) -> Command {
        let mut command = cairn_command();
        command
            .arg("--repo")
            .arg(self.repo())
            .arg("--password-file")
            .arg(password);
        command.envs(self.fixture.env.iter().map(|(name, value)| (name, value)));
        command
    }

    fn add_alice(&self) {
        let password = self.outer.path().join("alice-new.pw");
        fs::write(&password, format!("{ALICE_PASSWORD}\n")).unwrap();
        self.run_ok(&[
            "key",
            "add",
            "--name",
            "alice",
            "--new-password-file",
            password.to_str().unwrap(),
        ]);
    }

    fn backup(&self, source: &Path) -> String {
        support::snapshot_id(&self.fixture.backup(&[source], &[]))
    }

    /// Returns the entries that `cairn audit --json` prints.
    fn entries(&self) -> Vec<Value> {
        self.run_ok(&["audit", "--json"])
            .lines()
            .map(support::parse_json)
            .collect()
    }

    /// Runs `cairn audit verify`, which must fail, and returns its error.
    fn verify_fails(&self) -> String {
        let output = self.run(&["audit", "verify"]);
        assert_eq!(
            output.status.code(),
            Some(EXIT_FAILURE),
            "verify passed on a damaged log: {}",
            describe(&output)
        );
        stderr_of(&output)
    }

    fn verify_passes(&self) -> String {
        self.run_ok(&["audit", "verify"])
    }
}

/// Writes a small source tree and returns its path.
fn source(logged: &Logged) -> PathBuf {
    let source = logged.outer.path().join("src");
    write_file(&source, "a.txt", b"first file");
    write_file(&source, "dir/b.txt", b"second file");
    source
}

/// Returns the values of an argument of an entry of `audit --json`.
fn arg_values(entry: &Value, name: &str) -> Vec<String> {
    entry["args"][name]
        .as_array()
        .map(|values| {
            values
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A repository with entries 0 to 3: init and three backups.
fn four_entries() -> Logged {
    let logged = Logged::new();
    let source = source(&logged);
    for round in 0..3 {
        write_file(&source, "round.txt", format!("round {round}").as_bytes());
        logged.backup(&source);
    }
    assert_eq!(logged.entry_files().len(), 4);
    logged
}

#[test]
fn operations_are_logged_in_order() {
    let logged = Logged::new();
    let source = source(&logged);
    let first = logged.backup(&source);
    write_file(&source, "a.txt", b"changed");
    let second = logged.backup(&source);
    logged.add_alice();
    let target = logged.outer.path().join("restored");
    let output = logged.run_as_alice(&["restore", &first, "--target", target.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    logged.run_ok(&["forget", &first]);
    logged.run_ok(&["prune"]);
    logged.run_ok(&["check"]);
    logged.run_ok(&["key", "remove", "alice"]);

    let verified = logged.verify_passes();
    let entries = logged.entries();
    let operations: Vec<&str> = entries
        .iter()
        .map(|e| e["operation"].as_str().unwrap())
        .collect();
    assert_eq!(
        operations,
        [
            "init",
            "backup",
            "backup",
            "key add",
            "restore",
            "forget",
            "prune",
            "check",
            "key remove"
        ]
    );
    let keys: Vec<&str> = entries.iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(
        keys,
        [
            "default", "default", "default", "default", "alice", "default", "default", "default",
            "default"
        ]
    );
    for (seq, entry) in entries.iter().enumerate() {
        assert_eq!(entry["seq"], seq, "sequence number of {entry}");
        assert_eq!(entry["outcome"], "ok", "outcome of {entry}");
    }
    assert_eq!(arg_values(&entries[1], "snapshot"), [first.as_str()]);
    assert_eq!(arg_values(&entries[2], "snapshot"), [second.as_str()]);
    assert_eq!(arg_values(&entries[2], "parent"), [first.as_str()]);
    assert_eq!(arg_values(&entries[3], "slot"), ["alice"]);
    assert_eq!(arg_values(&entries[4], "snapshot"), [first.as_str()]);
    assert_eq!(arg_values(&entries[5], "removed"), [first.as_str()]);
    assert_eq!(arg_values(&entries[8], "removed"), ["alice"]);

    let head = entries.last().unwrap()["file"].as_str().unwrap();
    let head_prefix = head.rsplit('-').next().unwrap();
    assert!(
        verified.starts_with("audit log intact: 9 entries, head ")
            && verified.contains(head_prefix),
        "verify output: {verified}"
    );
}

#[test]
fn removed_key_entries_still_verify() {
    let logged = Logged::new();
    logged.add_alice();
    let output = logged.run_as_alice(&["check"]);
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    logged.run_ok(&["key", "remove", "alice"]);
    logged.run_ok(&["key", "rotate"]);
    logged.verify_passes();
    let keys: Vec<String> = logged
        .entries()
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, ["default", "default", "alice", "default", "default"]);
}

#[test]
fn refused_and_failed_commands_are_logged() {
    let logged = Logged::new();
    let output = logged.run(&["key", "remove", "default"]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    let output = logged.run(&["restore", "0123abcd", "--target", "/nonexistent"]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );

    let entries = logged.entries();
    assert_eq!(entries.len(), 3, "{entries:?}");
    assert_eq!(entries[1]["operation"], "key remove");
    assert_eq!(entries[1]["outcome"], "refused");
    assert!(
        entries[1]["error"].as_str().unwrap().contains("only key"),
        "{}",
        entries[1]
    );
    assert_eq!(entries[2]["operation"], "restore");
    assert_eq!(entries[2]["outcome"], "failed");
    assert!(entries[2]["error"].is_string(), "{}", entries[2]);
    logged.verify_passes();
}

#[test]
fn edited_entry_fails_verify() {
    let logged = four_entries();
    let name = logged.entry_files()[2].clone();
    let path = logged.audit_dir().join(&name);
    let mut bytes = fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(&path, &bytes).unwrap();

    let error = logged.verify_fails();
    assert!(
        error.contains(&format!("audit entry 2 (audit/{name})")),
        "{error}"
    );
    assert!(error.contains("do not hash to its name"), "{error}");

    // Renamed to the hash of its new bytes, the entry no longer opens.
    let hash = blake3::hash(&bytes);
    let renamed = entry_name(2, hash.as_bytes());
    fs::rename(&path, logged.audit_dir().join(&renamed)).unwrap();
    let error = logged.verify_fails();
    assert!(
        error.contains(&format!("audit entry 2 (audit/{renamed})")),
        "{error}"
    );
    assert!(error.contains("does not open"), "{error}");
}

#[test]
fn entry_removed_from_middle_fails_verify() {
    let logged = four_entries();
    let files = logged.entry_files();
    fs::remove_file(logged.audit_dir().join(&files[1])).unwrap();

    let error = logged.verify_fails();
    assert!(
        error.contains(&format!("audit entry 2 (audit/{})", files[2])),
        "{error}"
    );
    assert!(error.contains("is missing"), "{error}");
}

#[test]
fn reordered_entries_fail_verify() {
    let logged = four_entries();
    let files = logged.entry_files();
    let (one, two) = (
        logged.audit_dir().join(&files[1]),
        logged.audit_dir().join(&files[2]),
    );
    let swap = logged.audit_dir().join("swap");
    fs::rename(&one, &swap).unwrap();
    fs::rename(&two, &one).unwrap();
    fs::rename(&swap, &two).unwrap();

    let error = logged.verify_fails();
    assert!(
        error.contains(&format!("audit entry 1 (audit/{})", files[1])),
        "{error}"
    );
    assert!(error.contains("do not hash to its name"), "{error}");
}

#[test]
fn copied_entry_fails_verify() {
    let logged = four_entries();
    let files = logged.entry_files();
    let prefix = files[1].rsplit('-').next().unwrap();
    let copy = format!("{:020}-{prefix}", 4);
    fs::copy(
        logged.audit_dir().join(&files[1]),
        logged.audit_dir().join(&copy),
    )
    .unwrap();

    let error = logged.verify_fails();
    assert!(
        error.contains(&format!("audit entry 4 (audit/{copy})")),
        "{error}"
    );
    assert!(
        error.contains("holds sequence number 1, not the 4"),
        "{error}"
    );
}

#[test]
fn entry_of_other_repository_fails_verify() {
    let logged = four_entries();
    let other = four_entries();
    let foreign = other.entry_files()[3].clone();
    let inserted = format!("{:020}-{}", 4, foreign.rsplit('-').next().unwrap());
    fs::copy(
        other.audit_dir().join(&foreign),
        logged.audit_dir().join(&inserted),
    )
    .unwrap();

    let error = logged.verify_fails();
    assert!(
        error.contains(&format!("audit entry 4 (audit/{inserted})")),
        "{error}"
    );
    assert!(error.contains("does not open"), "{error}");
}

#[test]
fn deleted_newest_entry_fails_verify() {
    let logged = four_entries();
    logged.verify_passes();
    let files = logged.entry_files();
    let newest = files.last().unwrap();
    fs::remove_file(logged.audit_dir().join(newest)).unwrap();

    let error = logged.verify_fails();
    assert!(error.contains("cut short"), "{error}");
    assert!(
        error.contains(&format!("entry 3 (audit/{newest})")),
        "{error}"
    );

    // A client that never saw the deleted entry cannot tell.
    let fresh = logged.outer.path().join("fresh-state");
    let output = logged
        .fixture
        .command()
        .env("CAIRN_STATE_DIR", &fresh)
        .args(["audit", "verify"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).starts_with("audit log intact: 3 entries"),
        "{}",
        describe(&output)
    );
}

/// Writes an entry after the newest one in the name of `key`, signed by the
/// slot that `password` opens, and returns its file name.
fn append_signed(repo_path: &Path, password: &str, key: &str) -> String {
    let repo = Repository::open_local(repo_path, password.as_bytes()).unwrap();
    let names = list_entries(repo.backend()).unwrap().entries;
    let (seq, newest) = names.last().unwrap();
    let args = vec![AuditArg {
        name: "removed".into(),
        value: "0".repeat(64),
    }];
    write_signed_after(&repo, (*seq, newest), key, ("forget", args))
}

/// Writes an entry in the name of `key` that follows the entry `prev` with
/// sequence number `seq`, signed by the slot that opened `repo`.
fn write_signed_after(
    repo: &Repository,
    (seq, prev): (u64, &str),
    key: &str,
    (operation, args): (&str, Vec<AuditArg>),
) -> String {
    let repo_path = PathBuf::from(repo.location());
    let stored = fs::read(repo_path.join("audit").join(prev)).unwrap();
    let entry = AuditEntry {
        seq: seq + 1,
        prev: vec![*blake3::hash(&stored).as_bytes()],
        time: Timestamp::now(),
        key: key.to_string(),
        host: "test".into(),
        user: "test".into(),
        operation: operation.into(),
        args,
        outcome: Outcome::Ok,
    };
    let sealed = seal_entry(repo.keys(), repo.signing_key(), &entry).unwrap();
    let name = entry_name(seq + 1, blake3::hash(&sealed).as_bytes());
    fs::write(repo_path.join("audit").join(&name), sealed).unwrap();
    name
}

#[test]
fn entry_signed_by_other_key_fails_verify() {
    let logged = Logged::new();
    logged.add_alice();

    // An entry that alice signs in her own name is valid.
    append_signed(logged.repo(), ALICE_PASSWORD, "alice");
    logged.verify_passes();

    let forged = append_signed(logged.repo(), ALICE_PASSWORD, "default");
    let error = logged.verify_fails();
    assert!(
        error.contains(&format!("audit entry 3 (audit/{forged})")),
        "{error}"
    );
    assert!(
        error.contains("signature does not match the signing key of \"default\""),
        "{error}"
    );
}

#[test]
fn key_add_cannot_rebind_other_key() {
    let logged = Logged::new();
    logged.add_alice();
    let repo = Repository::open_local(logged.repo(), ALICE_PASSWORD.as_bytes()).unwrap();
    let files = logged.entry_files();
    let own_key = hex::encode(repo.signing_key().verifying_key().to_bytes());
    let args = vec![
        AuditArg {
            name: "slot".into(),
            value: "default".into(),
        },
        AuditArg {
            name: "signing_key".into(),
            value: own_key,
        },
    ];
    let rebind = write_signed_after(&repo, (1, &files[1]), "alice", ("key add", args));

    let error = logged.verify_fails();
    assert!(
        error.contains(&format!("audit entry 2 (audit/{rebind})")),
        "{error}"
    );
    assert!(
        error.contains("binds a signing key to \"default\""),
        "{error}"
    );
}

#[test]
fn sibling_entries_verify_and_join() {
    let logged = four_entries();
    let repo = Repository::open_local(logged.repo(), support::PASSWORD.as_bytes()).unwrap();
    let files = logged.entry_files();
    let check = || ("check", Vec::new());
    let first = write_signed_after(&repo, (3, &files[3]), "default", check());
    let second = write_signed_after(&repo, (3, &files[3]), "default", check());
    let verified = logged.verify_passes();
    assert!(
        verified.contains("1 entries of concurrent writers are not followed"),
        "{verified}"
    );

    logged.run_ok(&["check"]);
    let verified = logged.verify_passes();
    assert!(
        verified.starts_with("audit log intact: 7 entries"),
        "{verified}"
    );
    assert!(!verified.contains("not followed"), "{verified}");
    let entries = logged.entries();
    let check = entries.last().unwrap();
    assert_eq!(check["seq"], 5);
    let prev: Vec<&str> = check["prev"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p.as_str().unwrap()[..16])
        .collect();
    let mut expected = vec![
        first.rsplit('-').next().unwrap(),
        second.rsplit('-').next().unwrap(),
    ];
    expected.sort();
    assert_eq!(prev, expected);
}

#[test]
fn concurrent_backups_keep_log_intact() {
    let logged = Logged::new();
    let source = source(&logged);
    let children: Vec<Child> = (0..3)
        .map(|_| {
            logged
                .fixture
                .command()
                .args(["backup", "-q"])
                .arg(&source)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    }
    logged.run_ok(&["check"]);

    let verified = logged.verify_passes();
    assert!(
        verified.starts_with("audit log intact: 5 entries"),
        "{verified}"
    );
    let entries = logged.entries();
    let backups = entries
        .iter()
        .filter(|e| e["operation"] == "backup" && e["outcome"] == "ok")
        .count();
    assert_eq!(backups, 3, "{entries:?}");
    // The check follows every entry that the backups left, siblings included.
    assert_eq!(entries.last().unwrap()["operation"], "check");
    assert!(!verified.contains("not followed"), "{verified}");
}

#[test]
fn failed_audit_write_only_warns() {
    let logged = Logged::new();
    let source = source(&logged);
    // A file in place of the directory makes every audit write fail.
    fs::remove_dir_all(logged.audit_dir()).unwrap();
    fs::write(logged.audit_dir(), b"not a directory").unwrap();

    let output = logged
        .fixture
        .command()
        .args(["backup", "--json"])
        .arg(&source)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    let summary = support::parse_json(&String::from_utf8_lossy(&output.stdout));
    assert!(summary["snapshot"].is_string(), "{summary}");
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("warning: the audit log entry of `backup` could not be written"),
        "{stderr}"
    );
}
