//! Integration tests of `cairn copy` and `cairn init --like` through the built
//! binary, between real repositories in a temporary directory.

mod support;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use support::{
    EXIT_OK, EXIT_WRONG_PASSWORD, Fixture, assert_same_tree, cairn_command, data_file_sizes,
    describe, parse_json, pseudo_random_bytes, restored_path, snapshot_id, stderr_of, stdout_of,
    write_file,
};

/// A second repository next to a fixture's, with a password of its own.
struct OtherRepo {
    repo: PathBuf,
    password_file: PathBuf,
}

impl OtherRepo {
    /// Initializes `name` in the fixture's directory with `password` and the
    /// extra `init` arguments.
    fn init(fixture: &Fixture, name: &str, password: &str, init_args: &[&OsStr]) -> Self {
        let repo = fixture.path(name);
        let password_file = fixture.path(&format!("{name}.pw"));
        fs::write(&password_file, format!("{password}\n")).unwrap();
        let other = OtherRepo {
            repo,
            password_file,
        };
        let mut args: Vec<&OsStr> = vec![OsStr::new("init")];
        args.extend_from_slice(init_args);
        other.run_ok(&args);
        other
    }

    /// Initializes `name` with `init --like` the fixture's repository.
    fn init_like(fixture: &Fixture, name: &str, password: &str) -> Self {
        Self::init(
            fixture,
            name,
            password,
            &[
                OsStr::new("--like"),
                fixture.repo.as_os_str(),
                OsStr::new("--like-password-file"),
                fixture.password_file.as_os_str(),
            ],
        )
    }

    fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        cairn_command()
            .arg("--repo")
            .arg(&self.repo)
            .arg("--password-file")
            .arg(&self.password_file)
            .args(args)
            .output()
            .expect("start the cairn binary")
    }

    fn run_ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let output = self.run(args);
        assert_eq!(
            output.status.code(),
            Some(EXIT_OK),
            "cairn {:?} on {}: {}",
            args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
            self.repo.display(),
            describe(&output)
        );
        stdout_of(&output)
    }

    /// Copies from the fixture's repository into this one with `extra`
    /// arguments, and returns the output.
    fn copy_from(&self, fixture: &Fixture, extra: &[&str]) -> Output {
        let mut args: Vec<OsString> = vec![
            "copy".into(),
            "--from".into(),
            fixture.repo.clone().into(),
            "--from-password-file".into(),
            fixture.password_file.clone().into(),
        ];
        args.extend(extra.iter().map(OsString::from));
        self.run(&args)
    }

    /// Copies with `--json` and returns the summary.
    fn copy_json(&self, fixture: &Fixture, extra: &[&str]) -> Value {
        let mut args = vec!["--json"];
        args.extend_from_slice(extra);
        let output = self.copy_from(fixture, &args);
        assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
        parse_json(&stdout_of(&output))
    }

    fn snapshots(&self) -> Vec<Value> {
        let stdout = self.run_ok(&["snapshots", "--json"]);
        parse_json(&stdout).as_array().unwrap().clone()
    }

    fn restore(&self, snapshot: &str, target: &Path) {
        self.run_ok(&[
            OsStr::new("restore"),
            OsStr::new(snapshot),
            OsStr::new("--target"),
            target.as_os_str(),
        ]);
    }
}

/// Writes a tree with nested directories, a symlink, an empty file, a file with
/// its own mode and a file of several chunks.
fn write_source(root: &Path) {
    write_file(root, "notes/a.txt", b"first notes\n");
    write_file(root, "notes/deep/b.txt", b"second notes\n");
    write_file(root, "empty", b"");
    write_file(root, "big.bin", &pseudo_random_bytes(3 << 20, 7));
    fs::set_permissions(
        root.join("notes/a.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    symlink("notes/a.txt", root.join("link")).unwrap();
}

/// Returns a copy summary's field as a number.
fn number(summary: &Value, field: &str) -> u64 {
    summary[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {field} in {summary}"))
}

/// Maps each snapshot of a listing to the id of the snapshot it copies.
fn originals(snapshots: &[Value]) -> BTreeMap<String, String> {
    snapshots
        .iter()
        .map(|s| {
            let original = s["original"]
                .as_str()
                .unwrap_or_else(|| panic!("copy without original: {s}"));
            (original.to_string(), s["id"].as_str().unwrap().to_string())
        })
        .collect()
}

/// Backs up the source twice, with a change between, and returns both ids and
/// a copy of the source as it was at the first backup.
fn two_snapshots(fixture: &Fixture) -> (PathBuf, [String; 2], PathBuf) {
    let src = fixture.path("src");
    write_source(&src);
    let first = snapshot_id(&fixture.backup(&[&src], &[]));
    let first_state = fixture.restore(&first, "first-state");
    write_file(&src, "notes/c.txt", b"added later\n");
    fs::remove_file(src.join("notes/deep/b.txt")).unwrap();
    let second = snapshot_id(&fixture.backup(&[&src], &[]));
    let first_state = restored_path(&first_state, &src);
    (src, [first, second], first_state)
}

/// Restores both copies from `dest` after the source is gone, compares them
/// with the source states, and runs `check --read-data`.
fn assert_copies_restore(
    fixture: &Fixture,
    dest: &OtherRepo,
    src: &Path,
    first_state: &Path,
    source_ids: &[String; 2],
) {
    let copies = originals(&dest.snapshots());
    assert_eq!(copies.len(), 2, "{copies:?}");
    for (source_id, state) in source_ids.iter().zip([first_state, src]) {
        let copy_id = copies
            .get(source_id)
            .unwrap_or_else(|| panic!("no copy of {source_id} in {copies:?}"));
        let target = fixture.path(&format!("restored-{}", &copy_id[..8]));
        dest.restore(copy_id, &target);
        assert_same_tree(state, &restored_path(&target, src));
    }
    dest.run_ok(&["check", "--read-data"]);
}

#[test]
fn copy_to_like_repository_copies_by_id() {
    let fixture = Fixture::new();
    let (src, ids, first_state) = two_snapshots(&fixture);
    let dest = OtherRepo::init_like(&fixture, "offline", "another password");

    let summary = dest.copy_json(&fixture, &[]);
    assert_eq!(summary["type"], "summary", "{summary}");
    assert_eq!(number(&summary, "snapshots_copied"), 2, "{summary}");
    assert_eq!(number(&summary, "snapshots_already_present"), 0);
    assert_eq!(summary["same_identity"], true, "{summary}");
    assert!(number(&summary, "blobs_added") > 4, "{summary}");

    // Chunk ids and cut points are the source's, so a backup of the same tree
    // into the copy finds all 3 MiB of chunks there and adds only metadata.
    let backup =
        parse_json(&dest.run_ok(&[OsStr::new("backup"), OsStr::new("--json"), src.as_os_str()]));
    assert!(
        number(&backup, "bytes_added") < 256 << 10,
        "a backup of copied data stored its chunks again: {backup}"
    );
    dest.run_ok(&["forget", &snapshot_id(&backup)]);

    fs::rename(&fixture.repo, fixture.path("source-moved-away")).unwrap();
    assert_copies_restore(&fixture, &dest, &src, &first_state, &ids);
}

#[test]
fn copy_again_writes_nothing_new() {
    let fixture = Fixture::new();
    two_snapshots(&fixture);
    let dest = OtherRepo::init_like(&fixture, "offline", "another password");
    let first = dest.copy_from(&fixture, &[]);
    assert_eq!(first.status.code(), Some(EXIT_OK), "{}", describe(&first));
    let text = stdout_of(&first);
    assert!(text.contains("2 copied"), "{text}");

    let before = data_file_sizes(&dest.repo);
    let again = dest.copy_from(&fixture, &[]);
    assert_eq!(again.status.code(), Some(EXIT_OK), "{}", describe(&again));
    assert_eq!(
        data_file_sizes(&dest.repo),
        before,
        "a second copy wrote files other than its audit entry"
    );
    let text = stdout_of(&again);
    assert!(text.contains("nothing new to copy"), "{text}");
    assert!(text.contains("0 copied, 2 already present"), "{text}");
    assert!(text.contains("0 new blobs"), "{text}");

    let summary = dest.copy_json(&fixture, &[]);
    assert_eq!(number(&summary, "snapshots_copied"), 0, "{summary}");
    assert_eq!(number(&summary, "snapshots_already_present"), 2);
    assert_eq!(number(&summary, "blobs_added"), 0, "{summary}");
    assert_eq!(number(&summary, "bytes_added"), 0, "{summary}");
}

#[test]
fn copy_to_unrelated_repository_rewrites_ids() {
    let fixture = Fixture::new();
    let (src, ids, first_state) = two_snapshots(&fixture);
    let dest = OtherRepo::init(&fixture, "offsite", "offsite password", &[]);

    let summary = dest.copy_json(&fixture, &[]);
    assert_eq!(number(&summary, "snapshots_copied"), 2, "{summary}");
    assert_eq!(summary["same_identity"], false, "{summary}");
    let copies = dest.snapshots();
    let source_trees: Vec<Value> = fixture
        .snapshots()
        .iter()
        .map(|s| s["tree"].clone())
        .collect();
    for copy in &copies {
        assert!(
            !source_trees.contains(&copy["tree"]),
            "tree id {} is the source's, though the keys differ",
            copy["tree"]
        );
    }

    let before = data_file_sizes(&dest.repo);
    let again = dest.copy_json(&fixture, &[]);
    assert_eq!(number(&again, "blobs_added"), 0, "{again}");
    assert_eq!(
        data_file_sizes(&dest.repo),
        before,
        "a second copy wrote files other than its audit entry"
    );

    fs::rename(&fixture.repo, fixture.path("source-moved-away")).unwrap();
    assert_copies_restore(&fixture, &dest, &src, &first_state, &ids);
}

#[test]
fn copy_named_snapshot_then_rest() {
    let fixture = Fixture::new();
    let (_, [first, second], _) = two_snapshots(&fixture);
    let dest = OtherRepo::init(&fixture, "offsite", "offsite password", &[]);

    let summary = dest.copy_json(&fixture, &[&first[..10]]);
    assert_eq!(number(&summary, "snapshots_copied"), 1, "{summary}");
    assert_eq!(summary["snapshots"][0]["source"], first.as_str());
    let copies = originals(&dest.snapshots());
    assert_eq!(copies.keys().collect::<Vec<_>>(), [&first]);

    let summary = dest.copy_json(&fixture, &[]);
    assert_eq!(number(&summary, "snapshots_copied"), 1, "{summary}");
    assert_eq!(number(&summary, "snapshots_already_present"), 1);
    assert_eq!(summary["snapshots"][0]["source"], second.as_str());
    let listed = dest.snapshots();
    let copy_of_first = &copies[&first];
    let copy_of_second = listed
        .iter()
        .find(|s| s["original"] == second.as_str())
        .unwrap();
    assert_eq!(
        copy_of_second["parent"],
        copy_of_first.as_str(),
        "the copy's parent is not the copy of the source's parent"
    );
}

#[test]
fn copy_chain_keeps_first_original() {
    let fixture = Fixture::new();
    let (_, [first, _], _) = two_snapshots(&fixture);
    let middle = OtherRepo::init_like(&fixture, "middle", "middle password");
    let summary = middle.copy_json(&fixture, &[&first]);
    assert_eq!(number(&summary, "snapshots_copied"), 1, "{summary}");

    // Copying the copy back into the source finds the source's own snapshot.
    let output = cairn_command()
        .args(fixture.global_args())
        .arg("copy")
        .arg("--from")
        .arg(&middle.repo)
        .arg("--from-password-file")
        .arg(&middle.password_file)
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    let summary = parse_json(&stdout_of(&output));
    assert_eq!(number(&summary, "snapshots_copied"), 0, "{summary}");
    assert_eq!(number(&summary, "snapshots_already_present"), 1);
}

#[test]
fn copy_wrong_source_password_names_repository() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    write_file(&src, "a", b"a");
    fixture.backup(&[&src], &[]);
    let dest = OtherRepo::init(&fixture, "offsite", "offsite password", &[]);
    let wrong = fixture.path("wrong.pw");
    fs::write(&wrong, "not the password\n").unwrap();

    let output = dest.run(&[
        OsStr::new("copy"),
        OsStr::new("--from"),
        fixture.repo.as_os_str(),
        OsStr::new("--from-password-file"),
        wrong.as_os_str(),
    ]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_WRONG_PASSWORD),
        "{}",
        describe(&output)
    );
    let stderr = stderr_of(&output);
    let source = fixture.repo.display().to_string();
    assert!(
        stderr.contains(&format!("cannot open the source repository {source}")),
        "{stderr}"
    );
    assert!(stderr.contains("wrong password"), "{stderr}");
    assert!(dest.snapshots().is_empty(), "a snapshot was copied");
}

#[test]
fn copy_password_from_environment() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    write_file(&src, "a", b"a");
    fixture.backup(&[&src], &[]);
    let dest = OtherRepo::init(&fixture, "offsite", "offsite password", &[]);

    let output = cairn_command()
        .env("CAIRN_REPO", &dest.repo)
        .env("CAIRN_PASSWORD", "offsite password")
        .env("CAIRN_FROM_REPO", &fixture.repo)
        .env("CAIRN_FROM_PASSWORD", support::PASSWORD)
        .args(["copy", "--json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    let summary = parse_json(&stdout_of(&output));
    assert_eq!(number(&summary, "snapshots_copied"), 1, "{summary}");
}

#[test]
fn copy_to_itself_fails() {
    let fixture = Fixture::new();
    let output = fixture.run([
        OsStr::new("copy"),
        OsStr::new("--from"),
        fixture.repo.as_os_str(),
        OsStr::new("--from-password-file"),
        fixture.password_file.as_os_str(),
    ]);
    assert_eq!(
        output.status.code(),
        Some(support::EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    assert!(
        stderr_of(&output).contains("same repository"),
        "{}",
        describe(&output)
    );
}

#[test]
fn init_like_wrong_password_exits_12() {
    let fixture = Fixture::new();
    let wrong = fixture.path("wrong.pw");
    fs::write(&wrong, "not the password\n").unwrap();
    let password_file = fixture.path("new.pw");
    fs::write(&password_file, "new password\n").unwrap();
    let new_repo = fixture.path("new");
    let output = cairn_command()
        .arg("--repo")
        .arg(&new_repo)
        .arg("--password-file")
        .arg(&password_file)
        .arg("init")
        .arg("--like")
        .arg(&fixture.repo)
        .arg("--like-password-file")
        .arg(&wrong)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(EXIT_WRONG_PASSWORD),
        "{}",
        describe(&output)
    );
    assert!(
        stderr_of(&output).contains(&fixture.repo.display().to_string()),
        "{}",
        describe(&output)
    );
    assert!(
        !new_repo.join("config").exists(),
        "a repository was created"
    );
}

#[test]
fn copy_unrelated_reads_only_new_chunks() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    write_source(&src);
    fixture.backup(&[&src], &[]);
    let dest = OtherRepo::init(&fixture, "offsite", "offsite password", &[]);
    let summary = dest.copy_json(&fixture, &[]);
    // Two small files and at least one chunk of big.bin; where big.bin is cut
    // depends on the repository's random gear table.
    assert!(number(&summary, "chunks_read") >= 3, "{summary}");

    // The next copy learns the ids of unchanged chunks from the first copy,
    // so it reads only the chunk of the new file.
    write_file(&src, "notes/c.txt", b"added later\n");
    fixture.backup(&[&src], &[]);
    let summary = dest.copy_json(&fixture, &[]);
    assert_eq!(number(&summary, "snapshots_copied"), 1, "{summary}");
    assert_eq!(number(&summary, "chunks_read"), 1, "{summary}");

    let copy_id = summary["snapshots"][0]["copy"]
        .as_str()
        .unwrap()
        .to_string();
    let target = fixture.path("restored");
    dest.restore(&copy_id, &target);
    assert_same_tree(&src, &restored_path(&target, &src));
    dest.run_ok(&["check", "--read-data"]);
}

#[test]
fn killed_copy_leaves_destination_readable() {
    let fixture = Fixture::new();
    let src = fixture.path("src");
    for round in 0..5u64 {
        for file in 0..3u64 {
            let contents = pseudo_random_bytes(2 << 20, round * 10 + file);
            write_file(&src, &format!("round-{round}/file-{file}"), &contents);
        }
        fixture.backup(&[&src], &[]);
    }
    // A clean copy into a repository of its own gives the duration that the
    // kill delays are drawn from.
    let reference = OtherRepo::init(&fixture, "reference", "reference password", &[]);
    let started = std::time::Instant::now();
    reference.copy_json(&fixture, &[]);
    let duration = started.elapsed();

    // Kills land at different points of the copy: while the repositories are
    // opened, while packs are written, between index files and snapshots, or
    // after it finished. Whatever was written, the destination must pass
    // `check`.
    let dest = OtherRepo::init(&fixture, "offsite", "offsite password", &[]);
    for tenths in 3..=9 {
        let delay = duration.mul_f64(f64::from(tenths) / 10.0);
        let mut child = cairn_command()
            .arg("--repo")
            .arg(&dest.repo)
            .arg("--password-file")
            .arg(&dest.password_file)
            .arg("copy")
            .arg("--from")
            .arg(&fixture.repo)
            .arg("--from-password-file")
            .arg(&fixture.password_file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        child.wait().unwrap();
        let check = dest.run(&["check"]);
        assert_eq!(
            check.status.code(),
            Some(EXIT_OK),
            "check after a kill {delay:?} into the copy: {}",
            describe(&check)
        );
    }

    let summary = dest.copy_json(&fixture, &[]);
    assert_eq!(
        number(&summary, "snapshots_copied") + number(&summary, "snapshots_already_present"),
        5,
        "{summary}"
    );
    assert_eq!(dest.snapshots().len(), 5);
    let copy_of_latest = &originals(&dest.snapshots())[&snapshot_id_of_latest(&fixture)];
    let target = fixture.path("restored");
    dest.restore(copy_of_latest, &target);
    assert_same_tree(&src, &restored_path(&target, &src));
    dest.run_ok(&["check", "--read-data"]);
}

/// Returns the id of the newest snapshot of the fixture's repository.
fn snapshot_id_of_latest(fixture: &Fixture) -> String {
    let snapshots = fixture.snapshots();
    let latest = snapshots.last().expect("the repository has a snapshot");
    latest["id"].as_str().unwrap().to_string()
}
