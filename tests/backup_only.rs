//! Tests of backup-only keys through the `cairn` binary and the library: such
//! a key adds snapshots that deduplicate against what is stored and skips its
//! own unchanged files, every command that reads or deletes stored data
//! refuses it by name, and its key material opens no stored chunk, tree or
//! snapshot.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use cairn::crypto::{
    CryptoError, EpochSecret, KeyMaterial, Keys, ObjectKind, PUBLIC_OBJECT_VERSION,
};
use cairn::repository::pack::decode_pack;
use cairn::repository::{KeyFile, Unlocked};
use tempfile::TempDir;

const EXIT_OK: i32 = 0;
const EXIT_FAILURE: i32 = 1;
const ADMIN: &str = "admin password";
const WEB: &str = "web01 password";

/// A repository with a full key (`ADMIN`) and a backup-only key named web01
/// (`WEB`), a source tree and a state directory of its own.
struct Setup {
    dir: TempDir,
    repo: PathBuf,
    source: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("create temporary directory");
        let setup = Setup {
            repo: dir.path().join("repo"),
            source: dir.path().join("source"),
            dir,
        };
        ok(&setup.run(ADMIN, &["init"]));
        let web_password = setup.dir.path().join("web01.pw");
        fs::write(&web_password, format!("{WEB}\n")).unwrap();
        let output = setup.run(
            ADMIN,
            &[
                "key",
                "add",
                "--name",
                "web01",
                "--backup-only",
                "--new-password-file",
                path_arg(&web_password),
            ],
        );
        ok(&output);
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("backup-only"),
            "{}",
            describe(&output)
        );
        fs::create_dir_all(setup.source.join("sub")).unwrap();
        for i in 0..20 {
            let body: Vec<u8> = (0..(3000 + i * 997))
                .map(|n| (n * 31 + i * 7) as u8)
                .collect();
            fs::write(setup.source.join(format!("file{i}.bin")), &body).unwrap();
            fs::write(
                setup.source.join("sub").join(format!("note{i}.txt")),
                format!("note {i}\n"),
            )
            .unwrap();
        }
        setup
    }

    fn run(&self, password: &str, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cairn"));
        for name in [
            "CAIRN_REPO",
            "CAIRN_PASSWORD_FILE",
            "RUST_LOG",
            "XDG_STATE_HOME",
        ] {
            command.env_remove(name);
        }
        command
            .env("CAIRN_PASSWORD", password)
            .env("CAIRN_FROM_PASSWORD", password)
            .env("CAIRN_STATE_DIR", self.dir.path().join("state"))
            .arg("--repo")
            .arg(&self.repo)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run cairn")
    }

    /// Backs the source tree up with `password` and returns the JSON summary.
    fn backup(&self, password: &str) -> serde_json::Value {
        let output = self.run(password, &["backup", "--json", path_arg(&self.source)]);
        ok(&output);
        serde_json::from_slice(&output.stdout).expect("backup prints JSON")
    }

    /// Returns every file of the repository but the audit log, with its bytes.
    fn stored_files(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut files = BTreeMap::new();
        let mut pending = vec![self.repo.clone()];
        while let Some(dir) = pending.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let relative = path.strip_prefix(&self.repo).unwrap().to_path_buf();
                if relative.starts_with("audit") {
                    continue;
                }
                if path.is_dir() {
                    pending.push(path);
                } else {
                    files.insert(relative, fs::read(&path).unwrap());
                }
            }
        }
        files
    }

    /// Unlocks the backup-only slot with the library.
    fn backup_only_keys(&self) -> Keys {
        let file = KeyFile::decode(&fs::read(self.repo.join("keys")).unwrap()).unwrap();
        let unlocked = file.unlock_slot(WEB.as_bytes()).unwrap();
        assert_eq!(unlocked.name, "web01");
        match unlocked.material {
            Unlocked::BackupOnly(material) => {
                Keys::derive_backup_only(file.repo_id, &material).unwrap()
            }
            Unlocked::Full(_) => panic!("the backup-only slot holds the full key material"),
        }
    }

    fn full_keys(&self) -> Keys {
        let file = KeyFile::decode(&fs::read(self.repo.join("keys")).unwrap()).unwrap();
        let (material, _) = file.unlock(ADMIN.as_bytes()).unwrap();
        Keys::derive(file.repo_id, &material)
    }

    /// Every stored blob as (pack bytes range, kind, id), read with `keys`,
    /// which must open the pack headers.
    fn blobs(&self, keys: &Keys) -> Vec<(Vec<u8>, ObjectKind, [u8; 32])> {
        let mut blobs = Vec::new();
        for prefix in fs::read_dir(self.repo.join("data")).unwrap() {
            for pack in fs::read_dir(prefix.unwrap().path()).unwrap() {
                let bytes = fs::read(pack.unwrap().path()).unwrap();
                for entry in decode_pack(keys, &bytes).expect("pack header opens") {
                    let range = entry.offset as usize..(entry.offset + entry.len) as usize;
                    blobs.push((bytes[range].to_vec(), entry.kind.object_kind(), entry.id));
                }
            }
        }
        blobs
    }

    fn snapshots(&self) -> Vec<Vec<u8>> {
        fs::read_dir(self.repo.join("snapshots"))
            .unwrap()
            .map(|entry| fs::read(entry.unwrap().path()).unwrap())
            .collect()
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

fn ok(output: &Output) {
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(output));
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

#[test]
fn backup_only_key_backs_up_twice_and_skips_unchanged_files() {
    let setup = Setup::new();
    // The full key stores the tree first, so the backup-only key's first run
    // must find every chunk already stored.
    setup.backup(ADMIN);

    let first = setup.backup(WEB);
    assert_eq!(first["files_new"], 40, "{first}");
    assert!(
        first["bytes_read"].as_u64().unwrap() > 100_000,
        "the first run must read the files: {first}"
    );
    let total = first["total_bytes"].as_u64().unwrap();
    // Only trees and the snapshot are new: every chunk was deduplicated.
    assert!(
        first["bytes_added"].as_u64().unwrap() < total / 10,
        "chunks were stored again: {first}"
    );

    let second = setup.backup(WEB);
    assert_eq!(second["files_unchanged"], 40, "{second}");
    assert_eq!(second["files_new"], 0, "{second}");
    assert_eq!(
        second["bytes_read"], 0,
        "unchanged files were read: {second}"
    );
    assert_eq!(second["parent"], first["snapshot"], "{second}");

    // A changed file is read again, the others are not.
    fs::write(setup.source.join("file3.bin"), b"changed").unwrap();
    let third = setup.backup(WEB);
    assert_eq!(third["files_changed"], 1, "{third}");
    assert_eq!(third["files_unchanged"], 39, "{third}");

    // The full key reads what the backup-only key wrote.
    let snapshot = third["snapshot"].as_str().unwrap();
    let target = setup.dir.path().join("restored");
    ok(&setup.run(ADMIN, &["restore", snapshot, "--target", path_arg(&target)]));
    let restored = target.join(setup.source.strip_prefix("/").unwrap());
    let diff = Command::new("diff")
        .arg("-r")
        .arg(&setup.source)
        .arg(&restored)
        .output()
        .unwrap();
    assert!(diff.status.success(), "{}", describe(&diff));
    let check = setup.run(ADMIN, &["check", "--read-data"]);
    ok(&check);

    // After a rotation the backup-only key seals to the new epoch, which the
    // full key opens.
    ok(&setup.run(ADMIN, &["key", "rotate"]));
    fs::write(setup.source.join("after-rotation.txt"), b"new epoch").unwrap();
    let fourth = setup.backup(WEB);
    assert_eq!(fourth["files_new"], 1, "{fourth}");
    let output = setup.run(
        ADMIN,
        &[
            "restore",
            fourth["snapshot"].as_str().unwrap(),
            "--target",
            path_arg(&setup.dir.path().join("restored-after-rotation")),
        ],
    );
    ok(&output);
    ok(&setup.run(ADMIN, &["check", "--read-data"]));
    // The backup-only key links its entries without reading the log.
    ok(&setup.run(ADMIN, &["audit", "verify"]));
}

#[test]
fn backup_only_key_is_refused_every_command_that_reads_or_deletes() {
    let setup = Setup::new();
    setup.backup(ADMIN);
    setup.backup(WEB);
    let before = setup.stored_files();
    let mountpoint = setup.dir.path().join("mnt");
    fs::create_dir(&mountpoint).unwrap();
    let target = setup.dir.path().join("target");
    let other = setup.dir.path().join("other");
    let refused: Vec<(Vec<&str>, &str)> = vec![
        (vec!["snapshots"], "list snapshots"),
        (vec!["ls", "latest"], "list the files of a snapshot"),
        (
            vec!["restore", "latest", "--target", path_arg(&target)],
            "restore",
        ),
        (vec!["mount", path_arg(&mountpoint)], "mount snapshots"),
        (vec!["diff", "latest", "latest"], "compare snapshots"),
        (vec!["forget", "--keep-last", "1"], "forget snapshots"),
        (vec!["prune"], "prune"),
        (vec!["check"], "check the repository"),
        (
            vec![
                "copy",
                "--from",
                path_arg(&setup.repo),
                "--to",
                path_arg(&other),
            ],
            "copy snapshots",
        ),
        (vec!["key", "add", "--name", "x"], "add keys"),
        (vec!["key", "remove", "admin"], "remove keys"),
        (vec!["key", "rotate"], "rotate the key"),
        (vec!["audit", "verify"], "verify the audit log"),
        (vec!["audit"], "read the audit log"),
        (vec!["unlock"], "remove locks"),
    ];
    for (args, operation) in &refused {
        let output = setup.run(WEB, args);
        assert_eq!(
            output.status.code(),
            Some(EXIT_FAILURE),
            "{args:?}: {}",
            describe(&output)
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("key \"web01\" is backup-only") && stderr.contains(operation),
            "{args:?}: {stderr}"
        );
    }
    assert!(!other.exists(), "a refused copy created the destination");
    assert!(
        fs::read_dir(&mountpoint).unwrap().next().is_none(),
        "a refused mount left something in the mount point"
    );
    assert_eq!(
        setup.stored_files(),
        before,
        "a refused command changed the repository"
    );

    // Each refusal left an entry in the audit log in the key's name.
    let output = setup.run(ADMIN, &["audit", "--json"]);
    ok(&output);
    let refusals = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|entry| entry["key"] == "web01" && entry["outcome"] == "refused")
        .count();
    assert_eq!(refusals, refused.len(), "{}", describe(&output));
    ok(&setup.run(ADMIN, &["audit", "verify"]));

    // Listing keys stays open to it.
    let output = setup.run(WEB, &["key", "list"]);
    ok(&output);
    let listing = String::from_utf8_lossy(&output.stdout);
    assert!(
        listing
            .lines()
            .any(|line| line.contains("web01") && line.contains("backup-only")),
        "{listing}"
    );
}

#[test]
fn backup_only_key_material_opens_nothing_stored() {
    let setup = Setup::new();
    setup.backup(ADMIN);
    fs::write(setup.source.join("only-web01.txt"), b"written by web01").unwrap();
    setup.backup(WEB);

    // The full unlock refuses the slot: it holds no key material.
    let file = KeyFile::decode(&fs::read(setup.repo.join("keys")).unwrap()).unwrap();
    assert!(matches!(
        file.unlock(WEB.as_bytes()),
        Err(CryptoError::BackupOnly(_))
    ));
    let Unlocked::BackupOnly(material) = file.unlock_slot(WEB.as_bytes()).unwrap().material else {
        panic!("web01 unlocked as a full key");
    };

    let web = setup.backup_only_keys();
    let full = setup.full_keys();
    let blobs = setup.blobs(&web);
    let snapshots = setup.snapshots();
    assert_eq!(snapshots.len(), 2);
    let written_by_web = blobs
        .iter()
        .filter(|(sealed, _, _)| sealed[0] == PUBLIC_OBJECT_VERSION)
        .count();
    assert!(written_by_web > 0, "web01 wrote no blob of its own");

    // The keys that the slot gives open no chunk, tree or snapshot, neither
    // those of the full key nor those it wrote itself in an earlier run.
    for (sealed, kind, id) in &blobs {
        assert!(
            matches!(
                web.open(*kind, id, sealed, 1 << 26),
                Err(CryptoError::BackupOnly(_))
            ),
            "web01 opened a {kind:?}"
        );
        full.open(*kind, id, sealed, 1 << 26)
            .expect("the full key opens every blob");
    }
    for sealed in &snapshots {
        assert!(
            web.open(ObjectKind::Snapshot, &[0; 32], sealed, 1 << 24)
                .is_err()
        );
        full.open(ObjectKind::Snapshot, &[0; 32], sealed, 1 << 24)
            .expect("the full key opens every snapshot");
    }

    // Nor any audit log entry, which names the paths of every key's backups.
    let entries: Vec<Vec<u8>> = fs::read_dir(setup.repo.join("audit"))
        .unwrap()
        .map(|entry| fs::read(entry.unwrap().path()).unwrap())
        .collect();
    assert!(entries.len() >= 4, "{} audit entries", entries.len());
    for sealed in &entries {
        assert!(matches!(
            web.open(ObjectKind::AuditEntry, &[0; 32], sealed, 1 << 22),
            Err(CryptoError::BackupOnly(_))
        ));
        full.open(ObjectKind::AuditEntry, &[0; 32], sealed, 1 << 22)
            .expect("the full key opens every audit log entry");
    }

    // No secret in the slot serves as the identity or the epoch secret of a
    // full key: every pairing of them fails to open every blob and snapshot.
    let mut secrets = vec![material.identity, material.config_mac];
    for epoch in &material.epochs {
        secrets.push(epoch.index);
        secrets.push(epoch.content_public);
    }
    for identity in &secrets {
        for secret in &secrets {
            let guess = Keys::derive(
                file.repo_id,
                &KeyMaterial {
                    identity: *identity,
                    epochs: vec![EpochSecret {
                        epoch: 0,
                        secret: *secret,
                    }],
                },
            );
            for (sealed, kind, id) in &blobs {
                assert!(guess.open(*kind, id, sealed, 1 << 26).is_err());
            }
            for sealed in &snapshots {
                assert!(
                    guess
                        .open(ObjectKind::Snapshot, &[0; 32], sealed, 1 << 24)
                        .is_err()
                );
            }
        }
    }
}

#[test]
fn run_with_keep_rules_names_them_for_a_backup_only_key() {
    let setup = Setup::new();
    let config = setup.dir.path().join("cairn.toml");
    fs::write(
        &config,
        format!(
            "[repositories.main]\npath = {:?}\npassword_file = {:?}\n\n\
             [datasets.web]\nrepository = \"main\"\npaths = [{:?}]\nkeep_daily = 7\n",
            path_arg(&setup.repo),
            path_arg(&setup.dir.path().join("web01.pw")),
            path_arg(&setup.source),
        ),
    )
    .unwrap();
    let output = setup.run(WEB, &["--config", path_arg(&config), "run", "web"]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("dataset web was saved") && stderr.contains("keep_* rules need a full key"),
        "{stderr}"
    );
    let listing = setup.run(ADMIN, &["snapshots", "--json"]);
    ok(&listing);
    let snapshots: serde_json::Value = serde_json::from_slice(&listing.stdout).unwrap();
    assert_eq!(snapshots.as_array().unwrap().len(), 1, "{snapshots}");
}
