//! Tests of named keys through the `cairn` binary: adding, listing, removing,
//! changing passwords and rotating the key material. The rotation tests read
//! the stored objects with the library to show which key material opens them.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use cairn::crypto::{CryptoError, Keys, ObjectKind, sealed_epoch};
use cairn::repository::KeyFile;
use cairn::repository::pack::decode_pack;
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
fn key_list_json_names_kinds() {
    let repo = Repo::new("first password");
    let file = repo.password_file("web.pw", "web password");
    let output = repo.run(
        "first password",
        &[
            "key",
            "add",
            "--name",
            "web01",
            "--backup-only",
            "--new-password-file",
            path_arg(&file),
        ],
    );
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));

    let output = repo.run("web password", &["key", "list", "--json"]);
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    let list: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("key list --json prints JSON");
    let keys = list.as_array().expect("a JSON array");
    assert_eq!(keys.len(), 2, "{list}");
    assert_eq!(keys[0]["name"], "default");
    assert_eq!(keys[0]["kind"], "full");
    assert_eq!(keys[0]["current"], false);
    assert_eq!(keys[1]["name"], "web01");
    assert_eq!(keys[1]["kind"], "backup-only");
    assert_eq!(keys[1]["current"], true);
    assert!(
        keys[1]["created"].as_str().is_some_and(|t| t.contains('T')),
        "{list}"
    );
    assert!(
        keys[1]["created_by"]
            .as_str()
            .is_some_and(|b| !b.is_empty()),
        "{list}"
    );
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

/// Removing the last full key while a backup-only key remains would leave a
/// repository that takes new backups but can never be read.
#[test]
fn last_full_key_kept_beside_backup_only() {
    let repo = Repo::new("full password");
    let add = |name: &str, password: &str, kind: &[&str]| {
        let file = repo.password_file(&format!("{name}.pw"), password);
        let mut args = vec!["key", "add", "--name", name];
        args.extend_from_slice(kind);
        args.extend_from_slice(&["--new-password-file", path_arg(&file)]);
        let output = repo.run("full password", &args);
        assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    };
    add("web01", "web password", &["--backup-only"]);

    let output = repo.run("full password", &["key", "remove", "default"]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("only full key"), "message: {stderr}");
    let output = repo.run("full password", &["snapshots"]);
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));

    // With a second full key, the first one can go.
    add("admin2", "second full password", &[]);
    let output = repo.run("full password", &["key", "remove", "default"]);
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    let output = repo.run("second full password", &["snapshots"]);
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

impl Repo {
    /// Adds a key named `name` with `password`, opening with `current`.
    fn add_key(&self, current: &str, name: &str, password: &str) {
        let file = self.password_file(&format!("{name}.pw"), password);
        let output = self.run(
            current,
            &[
                "key",
                "add",
                "--name",
                name,
                "--new-password-file",
                path_arg(&file),
            ],
        );
        assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    }

    /// Writes `contents` to `src/name`, backs `src` up and returns the snapshot id.
    fn backup_file(&self, password: &str, name: &str, contents: &[u8]) -> String {
        let src = self.dir.path().join("src");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join(name), contents).unwrap();
        let output = self.run(password, &["backup", "--json", path_arg(&src)]);
        assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
        let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        summary["snapshot"].as_str().unwrap().to_string()
    }

    /// Lists the pack files below `data/`.
    fn packs(&self) -> BTreeSet<PathBuf> {
        let mut packs = BTreeSet::new();
        for prefix in fs::read_dir(self.path.join("data")).unwrap() {
            for pack in fs::read_dir(prefix.unwrap().path()).unwrap() {
                packs.insert(pack.unwrap().path());
            }
        }
        packs
    }
}

fn ok(output: &Output) {
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(output));
}

#[test]
fn rotate_keeps_other_keys_working() {
    let repo = Repo::new("first password");
    repo.add_key("first password", "alice", "alice password");
    let old = repo.backup_file("first password", "old.txt", b"before the rotation");

    let output = repo.run("first password", &["key", "rotate"]);
    ok(&output);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("added key epoch 1"), "{text}");
    let new = repo.backup_file("first password", "new.txt", b"after the rotation");

    // Alice's slot was sealed anew without her password, and opens both epochs.
    for snapshot in [&old, &new] {
        let target = repo.dir.path().join(format!("restored-{}", &snapshot[..8]));
        ok(&repo.run(
            "alice password",
            &["restore", snapshot, "--target", path_arg(&target)],
        ));
    }
    ok(&repo.run("alice password", &["check", "--read-data"]));
    let output = repo.run("alice password", &["key", "rotate"]);
    ok(&output);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("added key epoch 2"),
        "{}",
        describe(&output)
    );
    ok(&repo.run("first password", &["check", "--read-data"]));
}

#[test]
fn removed_key_cannot_read_data_after_rotation() {
    let repo = Repo::new("first password");
    repo.add_key("first password", "bob", "bob password");
    let old_snapshot = repo.backup_file("first password", "old.txt", b"before the rotation");
    let old_packs = repo.packs();

    // Bob keeps a copy of the key file, and with it the key material of today.
    let bob_key_file_bytes = fs::read(repo.path.join("keys")).unwrap();
    ok(&repo.run("first password", &["key", "remove", "bob"]));
    ok(&repo.run("first password", &["key", "rotate"]));
    let new_snapshot = repo.backup_file("first password", "new.txt", b"after the rotation");
    let new_packs: Vec<PathBuf> = repo.packs().difference(&old_packs).cloned().collect();
    assert!(!new_packs.is_empty(), "the second backup wrote no pack");

    let bob_key_file = KeyFile::decode(&bob_key_file_bytes).unwrap();
    let (material, slot) = bob_key_file.unlock(b"bob password").unwrap();
    assert_eq!(slot, "bob");
    let bob = Keys::derive(bob_key_file.repo_id, &material);

    let read_snapshot = |id: &str| fs::read(repo.path.join("snapshots").join(id)).unwrap();
    let old_bytes = read_snapshot(&old_snapshot);
    let new_bytes = read_snapshot(&new_snapshot);
    assert_eq!(sealed_epoch(&old_bytes), Some(0));
    assert_eq!(sealed_epoch(&new_bytes), Some(1));
    assert!(
        bob.open(ObjectKind::Snapshot, &[0; 32], &old_bytes, 1 << 24)
            .is_ok(),
        "bob's kept material no longer opens the old snapshot"
    );
    assert!(matches!(
        bob.open(ObjectKind::Snapshot, &[0; 32], &new_bytes, 1 << 24),
        Err(CryptoError::UnknownEpoch(1))
    ));

    for pack in &old_packs {
        let bytes = fs::read(pack).unwrap();
        let entries = decode_pack(&bob, &bytes).unwrap();
        for entry in entries {
            let sealed = &bytes[entry.offset as usize..(entry.offset + entry.len) as usize];
            let opened = bob.open(entry.kind.object_kind(), &entry.id, sealed, 1 << 26);
            assert!(opened.is_ok(), "old blob in {}: {opened:?}", pack.display());
        }
    }

    // The current key material, which bob never held, opens the new packs; bob's
    // opens neither their headers nor any blob in them.
    let current = KeyFile::decode(&fs::read(repo.path.join("keys")).unwrap()).unwrap();
    assert!(
        current.unlock(b"bob password").is_err(),
        "bob's password still opens the key file"
    );
    let (material, _) = current.unlock(b"first password").unwrap();
    let owner = Keys::derive(current.repo_id, &material);
    for pack in &new_packs {
        let bytes = fs::read(pack).unwrap();
        assert!(
            decode_pack(&bob, &bytes).is_err(),
            "bob's material opens the header of new pack {}",
            pack.display()
        );
        let entries = decode_pack(&owner, &bytes).unwrap();
        assert!(!entries.is_empty());
        for entry in entries {
            let sealed = &bytes[entry.offset as usize..(entry.offset + entry.len) as usize];
            assert_eq!(sealed_epoch(sealed), Some(1));
            assert!(
                owner
                    .open(entry.kind.object_kind(), &entry.id, sealed, 1 << 26)
                    .is_ok()
            );
            assert!(matches!(
                bob.open(entry.kind.object_kind(), &entry.id, sealed, 1 << 26),
                Err(CryptoError::UnknownEpoch(1))
            ));
        }
    }
}

#[test]
fn replaced_key_material_is_rejected() {
    let repo = Repo::new("first password");
    let other = Repo::new("other password");
    // An attacker without any key seals other key material, here another
    // repository's, to the public key of this repository's only slot.
    let mut file = KeyFile::decode(&fs::read(repo.path.join("keys")).unwrap()).unwrap();
    let others = KeyFile::decode(&fs::read(other.path.join("keys")).unwrap()).unwrap();
    let (foreign, _) = others.unlock(b"other password").unwrap();
    let slot = &mut file.slots[0];
    let mut binding = b"cairn key material".to_vec();
    binding.extend_from_slice(&file.repo_id);
    binding.extend_from_slice(slot.name.as_bytes());
    slot.material = cairn::crypto::seal_material(&slot.public, &binding, &foreign).unwrap();
    fs::write(repo.path.join("keys"), file.encode()).unwrap();

    let output = repo.run("first password", &["snapshots"]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("was replaced"), "{stderr}");
}

#[test]
fn rotate_rejects_slot_added_without_key() {
    let repo = Repo::new("first password");
    let other = Repo::new("mallory password");
    // Someone who can write the storage but holds no key adds a slot of their
    // own, hoping that the next rotation seals the new key material to it.
    let mut file = KeyFile::decode(&fs::read(repo.path.join("keys")).unwrap()).unwrap();
    let mut foreign = KeyFile::decode(&fs::read(other.path.join("keys")).unwrap())
        .unwrap()
        .slots
        .remove(0);
    foreign.name = "mallory".into();
    file.slots.push(foreign);
    let tampered = file.encode();
    fs::write(repo.path.join("keys"), &tampered).unwrap();

    let output = repo.run("first password", &["key", "rotate"]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("\"mallory\""), "{stderr}");
    assert!(
        stderr.contains("not added with this repository's key material"),
        "{stderr}"
    );
    assert_eq!(
        fs::read(repo.path.join("keys")).unwrap(),
        tampered,
        "the key file changed"
    );
}
