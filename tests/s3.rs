//! Repositories in an S3 bucket: the `cairn` binary against a real
//! S3-compatible server (`moto_server`) that each test starts on 127.0.0.1.
//!
//! The tests need `moto_server` (`pip install 'moto[server]'`, which `.ci/run`
//! does), and fail without it. They expect to run as root, as CI does, because
//! the source trees have files owned by other users.

mod support;
#[path = "../fuse-tests/tree.rs"]
mod tree;

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{MetadataExt, lchown, symlink};
use std::path::Path;
use std::process::Output;

use support::s3_server::{ClosedPort, S3Server};
use support::{
    EXIT_FAILURE, EXIT_NO_REPOSITORY, Fixture, cairn_command, describe, parse_json, restored_path,
    snapshot_id, stderr_of,
};
use tree::assert_same_tree;

const BUCKET: &str = "cairn-test";
/// Key prefix of the repository in the bucket, two path segments deep.
const PREFIX: &str = "hosts/alpha";

/// Returns `len` deterministic bytes that do not compress (SplitMix64).
fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
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

/// Writes a tree with names that are not UTF-8 or hold a newline, extended
/// attributes on a file and a directory, hard links, symlinks, a FIFO, files
/// owned by other users, and a file large enough for several chunks.
fn build_tree(root: &Path) {
    fs::create_dir_all(root.join("dir/sub")).unwrap();
    fs::write(
        root.join(OsString::from_vec(b"caf\xe9".to_vec())),
        b"latin-1\n",
    )
    .unwrap();
    fs::write(root.join("new\nline"), b"newline in the name\n").unwrap();
    fs::write(root.join("dir/empty"), b"").unwrap();
    fs::write(
        root.join("dir/sub/large.bin"),
        pseudo_random_bytes(5 << 20, 1),
    )
    .unwrap();

    fs::write(root.join("original"), b"one inode, two names\n").unwrap();
    fs::hard_link(root.join("original"), root.join("dir/sub/link")).unwrap();
    symlink("dir/sub/large.bin", root.join("relative-link")).unwrap();
    symlink("../does/not/exist", root.join("dangling-link")).unwrap();
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();

    xattr::set(root.join("original"), "user.comment", b"file value").unwrap();
    xattr::set(root.join("dir"), "user.comment", b"directory value").unwrap();
    fs::write(root.join("owned"), b"owned by 1234:5678\n").unwrap();
    lchown(root.join("owned"), Some(1234), Some(5678)).unwrap();
}

/// A moto server with one bucket, and a repository under [`PREFIX`] in it.
struct S3Fixture {
    server: S3Server,
    fixture: Fixture,
}

impl S3Fixture {
    fn new() -> Self {
        let server = S3Server::start();
        server.create_bucket(BUCKET);
        let url = server.repository_url(BUCKET, PREFIX);
        let fixture = Fixture::with_repository(&url, server.credentials());
        S3Fixture { server, fixture }
    }
}

/// Runs `cairn --repo REPO ARGS` with credentials for `server` and a password
/// in the environment.
fn run_against(server: &S3Server, repo: &str, args: &[&str]) -> Output {
    cairn_command()
        .env("CAIRN_PASSWORD", support::PASSWORD)
        .envs(server.credentials())
        .arg("--repo")
        .arg(repo)
        .args(args)
        .output()
        .expect("start the cairn binary")
}

#[test]
fn s3_backup_restore_check_prune() {
    let s3 = S3Fixture::new();
    let fixture = &s3.fixture;
    let src = fixture.path("src");
    build_tree(&src);
    assert!(
        xattr::get(src.join("dir"), "user.comment")
            .unwrap()
            .is_some(),
        "the source file system keeps no user xattrs"
    );
    fs::write(src.join("only-in-first"), pseudo_random_bytes(6 << 20, 2)).unwrap();

    let first = fixture.backup(&[&src], &[]);
    assert_eq!(
        first["errors"].as_array().map(Vec::len),
        Some(0),
        "backup errors: {first}"
    );
    let first_id = snapshot_id(&first);

    // Every object lies below the prefix, with the names that a local
    // repository gives its files.
    let keys = s3.server.list_keys(BUCKET, "");
    assert!(!keys.is_empty(), "the bucket is empty after a backup");
    for key in &keys {
        assert!(
            key.starts_with(&format!("{PREFIX}/")),
            "object {key} lies outside the prefix {PREFIX}"
        );
    }
    for name in ["config", "keys"] {
        let key = format!("{PREFIX}/{name}");
        assert!(keys.contains(&key), "no object {key} in {keys:?}");
    }
    for dir in ["data/", "index/", "snapshots/"] {
        let inside = format!("{PREFIX}/{dir}");
        assert!(
            keys.iter().any(|k| k.starts_with(&inside)),
            "no object below {inside} in {keys:?}"
        );
    }
    let lock_prefix = format!("{PREFIX}/locks/");
    assert!(
        !keys.iter().any(|k| k.starts_with(&lock_prefix)),
        "a lock is left after the backup: {keys:?}"
    );

    let listed = fixture.ls("latest");
    let large = src.join("dir/sub/large.bin");
    assert!(
        listed.iter().any(|line| Path::new(line) == large),
        "ls does not list {}: {listed:?}",
        large.display()
    );

    let target = fixture.restore("latest", "first-restore");
    assert_same_tree(
        &src,
        &restored_path(&target, &src),
        "restore of the first backup",
    );

    fs::remove_file(src.join("only-in-first")).unwrap();
    fs::write(src.join("dir/added"), b"new in the second backup\n").unwrap();
    let second = fixture.backup(&[&src], &[]);
    let second_id = snapshot_id(&second);
    let snapshots = fixture.snapshots();
    let ids: Vec<&str> = snapshots.iter().filter_map(|s| s["id"].as_str()).collect();
    assert_eq!(
        ids,
        [first_id.as_str(), second_id.as_str()],
        "snapshot ids, oldest first"
    );
    assert_eq!(
        snapshots[1]["parent"],
        first_id.as_str(),
        "parent of the second snapshot"
    );

    let check = parse_json(&fixture.run_ok(["check", "--read-data", "--json"]));
    assert_eq!(
        check["ok"], true,
        "check --read-data before the prune: {check}"
    );
    let pack_objects = s3
        .server
        .list_keys(BUCKET, &format!("{PREFIX}/data/"))
        .len();
    assert_eq!(
        check["packs"].as_u64(),
        Some(pack_objects as u64),
        "packs that check counted, with {pack_objects} objects below data/: {check}"
    );
    assert!(
        check["packs_read"].as_u64().unwrap_or(0) >= 2,
        "check read fewer packs than two backups wrote: {check}"
    );

    fixture.run_ok(["forget", &first_id]);
    let prune = parse_json(&fixture.run_ok(["prune", "--json"]));
    let rewritten = prune["packs_deleted"].as_u64().unwrap_or(0)
        + prune["packs_repacked"].as_u64().unwrap_or(0);
    assert!(
        rewritten >= 1,
        "prune deleted and repacked no pack: {prune}"
    );
    assert!(
        prune["bytes_freed"].as_u64().unwrap_or(0) >= 6 << 20,
        "prune freed less than the file that only the first snapshot had: {prune}"
    );

    let snapshots = fixture.snapshots();
    assert_eq!(snapshots.len(), 1, "snapshots after forget: {snapshots:?}");
    assert_eq!(snapshots[0]["id"], second_id.as_str(), "the kept snapshot");
    let check = parse_json(&fixture.run_ok(["check", "--read-data", "--json"]));
    assert_eq!(
        check["ok"], true,
        "check --read-data after the prune: {check}"
    );

    let target = fixture.restore("latest", "second-restore");
    let restored = restored_path(&target, &src);
    assert_same_tree(&src, &restored, "restore after the prune");
    let link = fs::metadata(restored.join("dir/sub/link")).unwrap();
    assert_eq!(link.nlink(), 2, "link count of the hard-linked file");
}

#[test]
fn s3_objects_form_local_repository() {
    let s3 = S3Fixture::new();
    let src = s3.fixture.path("src");
    build_tree(&src);
    let snapshot = snapshot_id(&s3.fixture.backup(&[&src], &[]));

    let local = s3.fixture.path("downloaded");
    let keys = s3.server.list_keys(BUCKET, &format!("{PREFIX}/"));
    for key in &keys {
        let relative = key
            .strip_prefix(&format!("{PREFIX}/"))
            .expect("listed keys start with the prefix");
        let path = local.join(relative);
        fs::create_dir_all(path.parent().expect("object path has a parent")).unwrap();
        fs::write(&path, s3.server.get_object(BUCKET, key)).unwrap();
    }

    let local_repo = Fixture {
        dir: tempfile::tempdir().unwrap(),
        repo: local,
        password_file: s3.fixture.password_file.clone(),
        env: Vec::new(),
    };
    let check = parse_json(&local_repo.run_ok(["check", "--read-data", "--json"]));
    assert_eq!(
        check["ok"], true,
        "check of the downloaded objects: {check}"
    );
    let target = local_repo.restore(&snapshot, "target");
    assert_same_tree(
        &src,
        &restored_path(&target, &src),
        "restore from the downloaded objects",
    );
}

#[test]
fn s3_repository_at_bucket_root() {
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    let url = server.repository_url(BUCKET, "");
    let fixture = Fixture::with_repository(&url, server.credentials());
    let src = fixture.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("file"), b"at the root of the bucket\n").unwrap();
    fixture.backup(&[&src], &[]);

    let keys = server.list_keys(BUCKET, "");
    assert!(
        keys.contains(&"config".to_string()),
        "no object config in {keys:?}"
    );
    let pack_objects = server.list_keys(BUCKET, "data/").len();
    assert!(pack_objects >= 2, "objects below data/: {keys:?}");
    let check = parse_json(&fixture.run_ok(["check", "--read-data", "--json"]));
    assert_eq!(check["ok"], true, "check --read-data: {check}");
    assert_eq!(
        check["packs"].as_u64(),
        Some(pack_objects as u64),
        "packs that check counted: {check}"
    );
    let target = fixture.restore("latest", "target");
    assert_same_tree(&src, &restored_path(&target, &src), "restore");
}

#[test]
fn s3_init_twice_fails() {
    let s3 = S3Fixture::new();
    let output = s3.fixture.run(["init"]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    let stderr = stderr_of(&output);
    assert!(stderr.contains("already exists"), "{stderr}");
}

#[test]
fn s3_empty_prefix_exits_10() {
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    let url = server.repository_url(BUCKET, "nothing/here");
    let output = run_against(&server, &url, &["snapshots"]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_NO_REPOSITORY),
        "{}",
        describe(&output)
    );
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains(&url),
        "the error does not name {url}: {stderr}"
    );
    assert!(
        stderr.contains("cairn init"),
        "the error names no next step: {stderr}"
    );
}

#[test]
fn s3_missing_bucket_names_bucket() {
    let server = S3Server::start();
    let url = server.repository_url("no-such-bucket", "repo");
    let output = run_against(&server, &url, &["snapshots"]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains(&url),
        "the error does not name {url}: {stderr}"
    );
    assert!(
        stderr.contains("\"no-such-bucket\" does not exist"),
        "the error does not say that the bucket is missing: {stderr}"
    );

    let init = run_against(&server, &url, &["init"]);
    assert_eq!(
        init.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&init)
    );
    let stderr = stderr_of(&init);
    assert!(
        stderr.contains("\"no-such-bucket\" does not exist"),
        "init does not say that the bucket is missing: {stderr}"
    );
}

#[test]
fn s3_server_down_fails_after_retries() {
    // A port that nothing listens on: every connection is refused, and the
    // retries end after CAIRN_S3_RETRY_TIMEOUT.
    let closed = ClosedPort::reserve();
    let port = closed.port;
    let url = format!("s3:http://127.0.0.1:{port}/{BUCKET}/{PREFIX}");
    let output = cairn_command()
        .env("CAIRN_PASSWORD", support::PASSWORD)
        .env("AWS_ACCESS_KEY_ID", "key")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("CAIRN_S3_RETRY_TIMEOUT", "2")
        .args(["--repo", &url, "snapshots"])
        .output()
        .expect("start the cairn binary");
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains(&url),
        "the error does not name {url}: {stderr}"
    );
    assert!(
        stderr.contains(&format!("S3 server at http://127.0.0.1:{port}")),
        "the error does not say what to check: {stderr}"
    );
}

#[test]
fn s3_missing_credentials_fail() {
    let closed = ClosedPort::reserve();
    let url = format!("s3:http://127.0.0.1:{}/{BUCKET}", closed.port);
    let output = cairn_command()
        .env("CAIRN_PASSWORD", support::PASSWORD)
        .args(["--repo", &url, "snapshots"])
        .output()
        .expect("start the cairn binary");
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    let stderr = stderr_of(&output);
    assert!(stderr.contains("AWS_ACCESS_KEY_ID"), "{stderr}");
    assert!(
        stderr.contains(&url),
        "the error does not name {url}: {stderr}"
    );
}

#[test]
fn s3_invalid_url_fails() {
    let output = cairn_command()
        .env("CAIRN_PASSWORD", support::PASSWORD)
        .args(["--repo", "s3:http://127.0.0.1:9", "snapshots"])
        .output()
        .expect("start the cairn binary");
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("BUCKET"),
        "the error shows no URL form: {stderr}"
    );
}

/// Returns the object keys below `prefix` in the bucket, without the audit log
/// entries that every command adds.
fn data_keys(server: &S3Server, prefix: &str) -> Vec<String> {
    server
        .list_keys(BUCKET, prefix)
        .into_iter()
        .filter(|key| !key.contains("/audit/"))
        .collect()
}

#[test]
fn s3_copy_from_local_repository() {
    let server = S3Server::start();
    server.create_bucket(BUCKET);
    let local = Fixture::new();
    let src = local.path("src");
    build_tree(&src);
    local.backup(&[&src], &[]);
    fs::write(src.join("added"), b"only in the second snapshot\n").unwrap();
    local.backup(&[&src], &[]);

    // The S3 repository has its own keys and identity, so every chunk gets a
    // new id on the way.
    let url = server.repository_url(BUCKET, "copies");
    let remote = Fixture::with_repository(&url, server.credentials());
    let copy = || {
        let mut args: Vec<OsString> = vec!["copy".into(), "--json".into(), "--from".into()];
        args.push(local.repo.clone().into_os_string());
        args.push("--from-password-file".into());
        args.push(local.password_file.clone().into_os_string());
        parse_json(&remote.run_ok(args))
    };

    let first = copy();
    assert_eq!(first["snapshots_copied"], 2, "{first}");
    let copied_keys = data_keys(&server, "copies/");

    let again = copy();
    assert_eq!(again["snapshots_copied"], 0, "{again}");
    assert_eq!(again["blobs_added"], 0, "{again}");
    assert_eq!(
        data_keys(&server, "copies/"),
        copied_keys,
        "a second copy wrote objects other than its audit entry"
    );

    remote.run_ok(["check", "--read-data"]);
    let target = remote.restore("latest", "restored-from-s3");
    assert_same_tree(
        &src,
        &restored_path(&target, &src),
        "restore of the copy in S3",
    );
}

/// Returns the request lines in `log` that read repository files below `dir`.
fn reads_below(log: &str, dir: &str) -> usize {
    let request = format!("\"GET /{BUCKET}/{PREFIX}/{dir}/");
    log.lines().filter(|line| line.contains(&request)).count()
}

#[test]
fn s3_restore_reads_each_pack_in_few_requests() {
    let s3 = S3Fixture::new();
    let fixture = &s3.fixture;
    let src = fixture.path("src");
    // 300 small files in 30 directories: one chunk pack and one tree pack.
    for n in 0..300 {
        let dir = src.join(format!("dir-{:02}", n % 30));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join(format!("file-{n:03}")),
            pseudo_random_bytes(3000, n),
        )
        .unwrap();
    }
    let snapshot = snapshot_id(&fixture.backup(&[&src], &[]));
    let packs = data_keys(&s3.server, PREFIX)
        .iter()
        .filter(|key| key.contains("/data/"))
        .count();
    assert_eq!(packs, 2, "expected one chunk pack and one tree pack");

    let before = reads_below(&s3.server.log(), "data");
    let target = fixture.restore(&snapshot, "target");
    let reads = reads_below(&s3.server.log(), "data") - before;
    assert_same_tree(&src, &restored_path(&target, &src), "restore");
    // The trees on the way down to `src` take one request per path component.
    // Its 30 subtrees and the 300 chunks take one request per pack, where
    // reading chunk by chunk took over 300.
    let components = src.components().count();
    assert!(
        reads <= components + 2,
        "{reads} pack reads for {packs} packs and a path of {components} components"
    );
}

#[test]
fn s3_copy_reads_each_pack_in_few_requests() {
    let s3 = S3Fixture::new();
    let src = s3.fixture.path("src");
    // 300 small files in 30 directories: one chunk pack and one tree pack.
    for n in 0..300 {
        let dir = src.join(format!("dir-{:02}", n % 30));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join(format!("file-{n:03}")),
            pseudo_random_bytes(3000, n),
        )
        .unwrap();
    }
    s3.fixture.backup(&[&src], &[]);

    // A local repository with its own identity, so every chunk is read.
    let dir = s3.fixture.path("local");
    let local = Fixture::with_repository(dir.to_str().unwrap(), s3.server.credentials());
    let before = reads_below(&s3.server.log(), "data");
    let url = s3.server.repository_url(BUCKET, PREFIX);
    let copied = parse_json(&local.run_ok([
        OsString::from("copy"),
        "--json".into(),
        "--from".into(),
        url.into(),
        "--from-password-file".into(),
        s3.fixture.password_file.clone().into_os_string(),
    ]));
    let reads = reads_below(&s3.server.log(), "data") - before;
    assert_eq!(copied["snapshots_copied"], 1, "{copied}");
    let target = local.restore("latest", "restored");
    assert_same_tree(&src, &restored_path(&target, &src), "restore of the copy");
    // The path down to `src` takes a request per component. The 30 subtrees
    // and the 300 chunks take one request per pack, where reading chunk by
    // chunk took over 300 and reading each directory's chunks apart over 30.
    let components = src.components().count();
    assert!(
        reads <= components + 2,
        "{reads} pack reads to copy 300 chunks in 30 directories below a path of {components} components"
    );
}
