//! Repositories on a `cairn serve` server: the `cairn` binary as client,
//! against a real `cairn serve` that each test starts on 127.0.0.1, with
//! clients of the read, append and admin roles.

mod support;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::cairn_server::{CairnServer, Client};
use support::{
    EXIT_FAILURE, EXIT_OK, PASSWORD, assert_same_tree, cairn_command, describe, parse_json,
    pseudo_random_bytes, restored_path, snapshot_id, stderr_of, stdout_of, write_file,
};
use tempfile::TempDir;

/// A server with an empty repository directory, and a password file.
struct Setup {
    dir: TempDir,
    server: CairnServer,
}

impl Setup {
    /// Starts a server and runs `init` through it with the admin token.
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("create temporary directory");
        fs::create_dir(dir.path().join("repo")).expect("create repository directory");
        fs::write(dir.path().join("password"), format!("{PASSWORD}\n")).expect("write password");
        let server = CairnServer::start(&dir.path().join("repo"));
        let setup = Self { dir, server };
        setup.run_ok(Client::Operator, ["init"]);
        setup
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Returns a command for the repository on the server, with `client`'s
    /// token file.
    fn command(&self, client: Client) -> Command {
        let mut command = cairn_command();
        command
            .arg("--repo")
            .arg(self.server.url())
            .arg("--password-file")
            .arg(self.path("password"))
            .arg("--token-file")
            .arg(self.server.token_file(client));
        command
    }

    fn run<I, S>(&self, client: Client, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(client)
            .args(args)
            .output()
            .expect("start the cairn binary")
    }

    fn run_ok<I, S>(&self, client: Client, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let output = self.run(client, args);
        assert_eq!(
            output.status.code(),
            Some(EXIT_OK),
            "cairn failed: {}\n--- server log ---\n{}",
            describe(&output),
            self.server.log()
        );
        stdout_of(&output)
    }

    fn backup(&self, client: Client, source: &Path) -> serde_json::Value {
        parse_json(&self.run_ok(
            client,
            [
                OsStr::new("backup"),
                OsStr::new("--json"),
                source.as_os_str(),
            ],
        ))
    }

    fn snapshot_count(&self, client: Client) -> usize {
        parse_json(&self.run_ok(client, ["snapshots", "--json"]))
            .as_array()
            .expect("snapshots --json prints an array")
            .len()
    }

    fn check_read_data(&self, client: Client) {
        let stdout = self.run_ok(client, ["check", "--read-data"]);
        assert!(stdout.contains("no errors found"), "{stdout}");
    }

    /// Returns every file of the repository directory with the hash of its bytes.
    fn repository_files(&self) -> BTreeMap<PathBuf, blake3::Hash> {
        let root = self.server.repository();
        let mut files = BTreeMap::new();
        let mut pending = vec![root.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in fs::read_dir(&dir).expect("list repository directory") {
                let path = entry.expect("directory entry").path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    let bytes = fs::read(&path).expect("read repository file");
                    let relative = path.strip_prefix(root).expect("below root").to_path_buf();
                    files.insert(relative, blake3::hash(&bytes));
                }
            }
        }
        files
    }

    /// Returns the path of one file below `dir` of the repository, relative
    /// to the repository.
    fn first_file(&self, dir: &str) -> String {
        let mut pending = vec![self.server.repository().join(dir)];
        while let Some(current) = pending.pop() {
            let mut entries: Vec<PathBuf> = fs::read_dir(&current)
                .expect("list repository directory")
                .map(|e| e.expect("directory entry").path())
                .collect();
            entries.sort();
            for path in entries {
                if path.is_dir() {
                    pending.push(path);
                } else if !path.file_name().unwrap().to_string_lossy().starts_with('.') {
                    let relative = path.strip_prefix(self.server.repository()).unwrap();
                    return relative.to_string_lossy().into_owned();
                }
            }
        }
        panic!("no file below {dir} in the repository");
    }
}

/// Writes a small tree with a file large enough for several chunks.
fn build_source(root: &Path) {
    write_file(root, "docs/readme.txt", b"backed up through cairn serve\n");
    write_file(root, "docs/empty", b"");
    write_file(root, "data/large.bin", &pseudo_random_bytes(3 << 20, 7));
    std::os::unix::fs::symlink("docs/readme.txt", root.join("link")).expect("create symlink");
}

#[test]
fn append_token_backs_up_and_reader_restores() {
    let setup = Setup::new();
    let source = setup.path("source");
    build_source(&source);

    let first = setup.backup(Client::Writer, &source);
    let second = setup.backup(Client::Writer, &source);

    assert_eq!(first["files_new"], 3, "{first}");
    assert_eq!(second["files_unchanged"], 3, "{second}");
    let added = second["bytes_added"].as_u64().expect("bytes_added");
    assert!(added < 4096, "the second backup stored {added} bytes again");
    assert_eq!(setup.snapshot_count(Client::Reader), 2);

    let target = setup.path("restored");
    setup.run_ok(
        Client::Reader,
        [
            OsStr::new("restore"),
            OsStr::new(&snapshot_id(&second)),
            OsStr::new("--target"),
            target.as_os_str(),
        ],
    );
    assert_same_tree(&source, &restored_path(&target, &source));
    setup.check_read_data(Client::Reader);
}

#[test]
fn append_token_cannot_change_files() {
    let setup = Setup::new();
    let source = setup.path("source");
    build_source(&source);
    setup.backup(Client::Writer, &source);
    let before = setup.repository_files();
    let token = Client::Writer.token();
    let token = Some(token.as_str());
    let pack = setup.first_file("data");
    let index = setup.first_file("index");
    let snapshot = setup.first_file("snapshots");

    for path in [&pack, &index, &snapshot, "config", "keys"] {
        let target = format!("/main/{path}");
        let (status, body) = setup.server.raw_request("DELETE", &target, token, &[], b"");
        assert_eq!(status, 403, "DELETE {path}: {body}");
        assert!(body.contains("append role"), "DELETE {path}: {body}");

        let (status, body) = setup
            .server
            .raw_request("PUT", &target, token, &[], b"other bytes");
        assert_eq!(status, 409, "PUT {path}: {body}");
        assert!(
            body.contains("exists with other content"),
            "PUT {path}: {body}"
        );
    }
    let (status, body) =
        setup
            .server
            .raw_request("POST", "/main?remove-temporary-files", token, &[], b"");
    assert_eq!(status, 403, "{body}");

    assert_eq!(
        setup.repository_files(),
        before,
        "a repository file changed"
    );
    setup.check_read_data(Client::Operator);
}

#[test]
fn reader_cannot_write() {
    let setup = Setup::new();
    let source = setup.path("source");
    build_source(&source);

    let output = setup.run(Client::Reader, [OsStr::new("backup"), source.as_os_str()]);

    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("the server rejected the request to write"),
        "{stderr}"
    );
    assert!(stderr.contains("read role"), "{stderr}");
}

#[test]
fn forget_and_prune_need_admin() {
    let setup = Setup::new();
    let source = setup.path("source");
    build_source(&source);
    setup.backup(Client::Writer, &source);
    write_file(&source, "docs/readme.txt", b"changed\n");
    setup.backup(Client::Writer, &source);
    let before = setup.repository_files();

    for args in [
        vec!["forget", "--keep-last", "1"],
        vec!["forget", "--keep-last", "1", "--prune"],
        vec!["prune"],
        vec!["key", "add", "--name", "second"],
    ] {
        let output = setup.run(Client::Writer, &args);
        assert_eq!(
            output.status.code(),
            Some(EXIT_FAILURE),
            "{args:?}: {}",
            describe(&output)
        );
        let stderr = stderr_of(&output);
        assert!(stderr.contains("admin role"), "{args:?}: {stderr}");
        assert!(stderr.contains("append role"), "{args:?}: {stderr}");
    }
    // Each refusal is recorded in the audit log, and nothing else changes.
    let (before_audit, before_other): (BTreeMap<_, _>, BTreeMap<_, _>) = before
        .into_iter()
        .partition(|(path, _)| path.starts_with("audit/"));
    let (after_audit, after_other): (BTreeMap<_, _>, BTreeMap<_, _>) = setup
        .repository_files()
        .into_iter()
        .partition(|(path, _)| path.starts_with("audit/"));
    assert_eq!(
        after_other, before_other,
        "a rejected command changed files"
    );
    assert_eq!(
        after_audit.len(),
        before_audit.len() + 4,
        "one audit entry for each refused command"
    );
    assert!(
        before_audit
            .iter()
            .all(|(path, hash)| after_audit.get(path) == Some(hash)),
        "a rejected command changed an audit entry"
    );

    setup.run_ok(Client::Operator, ["forget", "--keep-last", "1", "--prune"]);
    assert_eq!(setup.snapshot_count(Client::Reader), 1);
    setup.check_read_data(Client::Reader);
}

#[test]
fn bad_paths_and_tokens_are_rejected() {
    let setup = Setup::new();
    let token = Client::Operator.token();
    let token = Some(token.as_str());
    let request = |target: &str, token| setup.server.raw_request("GET", target, token, &[], b"");

    for target in [
        "/main/../x",
        "/main/%2e%2e/x",
        "/main/%2E%2E/config",
        "/main/data/..%2f..%2fx",
        "/main//etc/passwd",
        "/main/locks/.owner-0123456789abcdef",
    ] {
        let (status, body) = request(target, token);
        assert_eq!(status, 400, "GET {target}: {body}");
    }
    for target in [
        "/main/etc/passwd",
        "/etc/passwd",
        "http://127.0.0.1/etc/passwd",
        "/main/data/ab/cd",
    ] {
        let (status, body) = request(target, token);
        assert_eq!(status, 404, "GET {target}: {body}");
    }

    let (status, body) = request("/main/config", Some("not-a-token"));
    assert_eq!(status, 401, "{body}");
    let (status, body) = request("/main/config", None);
    assert_eq!(status, 401, "{body}");
    let (status, body) = request("/main/config", token);
    assert_eq!(status, 200, "{body}");

    let output = setup
        .command(Client::Writer)
        .env_remove("CAIRN_TOKEN_FILE")
        .args(["--token-file", "/dev/null", "snapshots"])
        .output()
        .expect("start the cairn binary");
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
}

#[test]
fn unknown_token_fails_with_hint() {
    let setup = Setup::new();
    let wrong = setup.path("wrong.token");
    fs::write(&wrong, "no-such-client\n").unwrap();

    let output = cairn_command()
        .arg("--repo")
        .arg(setup.server.url())
        .arg("--token-file")
        .arg(&wrong)
        .arg("snapshots")
        .output()
        .expect("start the cairn binary");

    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    let stderr = stderr_of(&output);
    assert!(stderr.contains("rejected the token"), "{stderr}");
    assert!(stderr.contains("CAIRN_TOKEN"), "{stderr}");
}

#[test]
fn oversized_body_is_rejected() {
    let setup = Setup::new();
    let token = Client::Operator.token();
    let pack = format!("/main/data/00/00{}", "0".repeat(62));

    let (status, body) = setup.server.raw_request(
        "PUT",
        &pack,
        Some(&token),
        &[("Content-Length", (100u64 << 20).to_string())],
        b"",
    );

    assert_eq!(status, 413, "{body}");
    let lock = "/main/locks/0123456789abcdef";
    let (status, body) =
        setup
            .server
            .raw_request("PUT", lock, Some(&token), &[], &vec![0u8; 100 << 10]);
    assert_eq!(status, 413, "{body}");
}

/// Returns true once a pack file exists below `data/` of the repository.
fn has_pack(repository: &Path) -> bool {
    let Ok(prefixes) = fs::read_dir(repository.join("data")) else {
        return false;
    };
    prefixes.flatten().any(|prefix| {
        fs::read_dir(prefix.path()).is_ok_and(|mut files| {
            files.any(|f| f.is_ok_and(|f| !f.file_name().to_string_lossy().starts_with('.')))
        })
    })
}

#[test]
fn server_killed_during_backup() {
    let mut setup = Setup::new();
    // The stream writes enough for two packs, then waits until the test has
    // killed the server, so the backup cannot finish before the kill.
    let flag = setup.path("server-killed");
    let stream = format!(
        "head -c 40000000 /dev/urandom; while [ ! -e '{}' ]; do sleep 0.05; done; head -c 1000 /dev/urandom",
        flag.display()
    );
    let mut backup = setup
        .command(Client::Writer)
        .env("CAIRN_HTTP_RETRY_TIMEOUT", "1")
        .args([
            "backup",
            "--stdin-filename",
            "stream.bin",
            "--stdin-from-command",
            "--",
            "sh",
            "-c",
        ])
        .arg(&stream)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the backup");
    while !has_pack(setup.server.repository()) {
        if backup.try_wait().expect("poll the backup").is_some() {
            let output = backup
                .wait_with_output()
                .expect("collect the backup output");
            panic!(
                "the backup ended before any pack was stored: {}",
                describe(&output)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    setup.server.kill();
    fs::write(&flag, b"").expect("create the flag file");
    let interrupted = backup.wait_with_output().expect("wait for the backup");

    assert_eq!(
        interrupted.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&interrupted)
    );
    let stderr = stderr_of(&interrupted);
    assert!(stderr.contains("check that cairn serve runs"), "{stderr}");

    setup.server.restart();
    assert_eq!(setup.snapshot_count(Client::Reader), 0);
    let source = setup.path("source");
    build_source(&source);
    let summary = setup.backup(Client::Writer, &source);
    assert_eq!(summary["files_new"], 3, "{summary}");
    setup.check_read_data(Client::Reader);
    assert_eq!(setup.snapshot_count(Client::Reader), 1);
}

/// A machine with a backup-only key and an append token: the key keeps it
/// from reading what is stored, the token from deleting or replacing it.
#[test]
fn backup_only_key_with_append_token_adds_snapshots_only() {
    let setup = Setup::new();
    let source = setup.path("source");
    build_source(&source);
    setup.backup(Client::Operator, &source);
    let web_password = setup.path("web01.password");
    fs::write(&web_password, "web01 password\n").expect("write password");
    setup.run_ok(
        Client::Operator,
        [
            OsStr::new("key"),
            OsStr::new("add"),
            OsStr::new("--name"),
            OsStr::new("web01"),
            OsStr::new("--backup-only"),
            OsStr::new("--new-password-file"),
            web_password.as_os_str(),
        ],
    );
    let web = |client: Client, args: &[&OsStr]| {
        cairn_command()
            .arg("--repo")
            .arg(setup.server.url())
            .arg("--password-file")
            .arg(&web_password)
            .arg("--token-file")
            .arg(setup.server.token_file(client))
            .args(args)
            .output()
            .expect("start the cairn binary")
    };

    let backup = [
        OsStr::new("backup"),
        OsStr::new("--json"),
        source.as_os_str(),
    ];
    let first = web(Client::Writer, &backup);
    assert_eq!(first.status.code(), Some(EXIT_OK), "{}", describe(&first));
    let first = parse_json(&stdout_of(&first));
    let second = web(Client::Writer, &backup);
    assert_eq!(second.status.code(), Some(EXIT_OK), "{}", describe(&second));
    let second = parse_json(&stdout_of(&second));
    assert_eq!(first["files_new"], 3, "{first}");
    assert_eq!(second["files_unchanged"], 3, "{second}");
    assert_eq!(second["bytes_read"], 0, "{second}");

    // Refused by the key even with the admin token, which the server would
    // let delete.
    for args in [["snapshots"], ["prune"]] {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        let output = web(Client::Operator, &args);
        assert_eq!(
            output.status.code(),
            Some(EXIT_FAILURE),
            "{}",
            describe(&output)
        );
        assert!(
            stderr_of(&output).contains("key \"web01\" is backup-only"),
            "{}",
            describe(&output)
        );
    }

    // The full key reads what the backup-only key wrote.
    let target = setup.path("restored");
    setup.run_ok(
        Client::Reader,
        [
            OsStr::new("restore"),
            OsStr::new(&snapshot_id(&second)),
            OsStr::new("--target"),
            target.as_os_str(),
        ],
    );
    assert_same_tree(&source, &restored_path(&target, &source));
    assert_eq!(setup.snapshot_count(Client::Reader), 3);
    setup.check_read_data(Client::Reader);
}

/// A reader restores and checks, which take a lock and write an audit entry,
/// but cannot add data.
#[test]
fn reader_restores_and_leaves_audit_entries() {
    let setup = Setup::new();
    let source = setup.path("source");
    build_source(&source);
    let snapshot = snapshot_id(&setup.backup(Client::Writer, &source));

    let target = setup.path("restored");
    let output = setup.run(
        Client::Reader,
        [
            OsStr::new("restore"),
            OsStr::new(&snapshot),
            OsStr::new("--target"),
            target.as_os_str(),
        ],
    );
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    assert!(
        !stderr_of(&output).contains("warning"),
        "{}",
        describe(&output)
    );
    assert_same_tree(&source, &restored_path(&target, &source));
    setup.check_read_data(Client::Reader);

    let log = setup.run_ok(Client::Operator, ["audit", "--json"]);
    for operation in ["restore", "check"] {
        assert!(
            log.lines().any(|line| {
                let entry = parse_json(line);
                entry["operation"] == operation && entry["outcome"] == "ok"
            }),
            "no {operation} entry: {log}"
        );
    }
    setup.run_ok(Client::Operator, ["audit", "verify"]);

    let token = Client::Reader.token();
    let (status, body) = setup.server.raw_request(
        "PUT",
        &format!("/main/{}", setup.first_file("data")),
        Some(&token),
        &[],
        b"other bytes",
    );
    assert_eq!(status, 403, "{body}");
}

/// Over HTTPS with a self-signed certificate: a client that trusts it through
/// CAIRN_CA_FILE backs up and restores; one that does not refuses to send
/// anything, and names the certificate problem.
#[test]
fn https_with_trusted_certificate_only() {
    let dir = tempfile::tempdir().expect("create temporary directory");
    fs::create_dir(dir.path().join("repo")).expect("create repository directory");
    let password = dir.path().join("password");
    fs::write(&password, format!("{PASSWORD}\n")).expect("write password");
    let server = CairnServer::start_tls(&dir.path().join("repo"));
    assert!(server.url().starts_with("cairn:https://"));
    let run = |client: Client, trust: bool, args: &[&OsStr]| {
        let mut command = cairn_command();
        command
            .arg("--repo")
            .arg(server.url())
            .arg("--password-file")
            .arg(&password)
            .arg("--token-file")
            .arg(server.token_file(client))
            .args(args);
        if trust {
            command.env("CAIRN_CA_FILE", server.certificate());
        }
        command
            .env("CAIRN_HTTP_RETRY_TIMEOUT", "2")
            .output()
            .expect("start the cairn binary")
    };

    let output = run(Client::Operator, true, &[OsStr::new("init")]);
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    let source = dir.path().join("source");
    build_source(&source);
    let output = run(
        Client::Writer,
        true,
        &[
            OsStr::new("backup"),
            OsStr::new("--json"),
            source.as_os_str(),
        ],
    );
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    let snapshot = snapshot_id(&parse_json(&stdout_of(&output)));
    let target = dir.path().join("restored");
    let output = run(
        Client::Reader,
        true,
        &[
            OsStr::new("restore"),
            OsStr::new(&snapshot),
            OsStr::new("--target"),
            target.as_os_str(),
        ],
    );
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    assert_same_tree(&source, &restored_path(&target, &source));

    // Without the certificate among its roots, the client stops at the
    // handshake, before its token leaves the machine.
    let requests_before = server.log().lines().count();
    let output = run(Client::Reader, false, &[OsStr::new("snapshots")]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("invalid peer certificate") && stderr.contains("set CAIRN_CA_FILE"),
        "{stderr}"
    );
    assert!(
        !server
            .log()
            .lines()
            .skip(requests_before)
            .any(|line| line.contains("reader")),
        "a request of the untrusting client reached the server:\n{}",
        server.log()
    );
}

#[test]
fn sigterm_stops_server_after_requests() {
    let mut setup = Setup::new();
    let source = setup.path("source");
    build_source(&source);
    setup.backup(Client::Writer, &source);

    let status = setup.server.terminate();
    let log = setup.server.log();
    assert!(status.success(), "exit status {status}:\n{log}");
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("server stopped"), "{log}");

    // What the server wrote before it stopped is complete.
    setup.server.restart();
    assert_eq!(setup.snapshot_count(Client::Reader), 1);
    setup.check_read_data(Client::Reader);
}

#[test]
fn each_repository_uses_its_token_file() {
    let setup = Setup::new();
    let source = setup.path("source");
    build_source(&source);
    let password = setup.path("password");
    let local = setup.path("local");
    let output = cairn_command()
        .arg("--repo")
        .arg(&local)
        .arg("--password-file")
        .arg(&password)
        .arg("init")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));

    // The dataset lives on the server and is copied to a local directory; no
    // token is given on the command line or in the environment.
    let config = setup.path("cairn.toml");
    let write_config = |local_token: &str| {
        let text = format!(
            r#"[repositories.remote]
path = "{url}"
password_file = "{password}"
token_file = "{token}"

[repositories.local]
path = "{local}"
password_file = "{password}"
{local_token}

[datasets.home]
repository = "remote"
paths = ["{source}"]
copy_to = ["local"]
"#,
            url = setup.server.url(),
            password = password.display(),
            token = setup.server.token_file(Client::Writer).display(),
            local = local.display(),
            source = source.display(),
        );
        fs::write(&config, text).unwrap();
    };
    write_config("");
    let output = cairn_command()
        .arg("--config")
        .arg(&config)
        .args(["run", "home"])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(EXIT_OK),
        "{}\n--- server log ---\n{}",
        describe(&output),
        setup.server.log()
    );
    assert_eq!(setup.snapshot_count(Client::Reader), 1);
    let local_snapshots = |repo: &Path| {
        let output = cairn_command()
            .arg("--repo")
            .arg(repo)
            .arg("--password-file")
            .arg(&password)
            .args(["snapshots", "--json"])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
        parse_json(&stdout_of(&output)).as_array().unwrap().len()
    };
    assert_eq!(local_snapshots(&local), 1);

    // copy takes the source's token from --from-token-file.
    let second = setup.path("second");
    let output = cairn_command()
        .arg("--repo")
        .arg(&second)
        .arg("--password-file")
        .arg(&password)
        .arg("init")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    let output = cairn_command()
        .arg("--password-file")
        .arg(&password)
        .arg("copy")
        .arg("--from")
        .arg(setup.server.url())
        .arg("--from-password-file")
        .arg(&password)
        .arg("--from-token-file")
        .arg(setup.server.token_file(Client::Reader))
        .arg("--to")
        .arg(&second)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    assert_eq!(local_snapshots(&second), 1);

    // A token file on a repository that is not on a server is a config error.
    write_config(&format!(
        "token_file = \"{}\"",
        setup.server.token_file(Client::Writer).display()
    ));
    let output = cairn_command()
        .arg("--config")
        .arg(&config)
        .args(["config", "check"])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    let stderr = stderr_of(&output);
    assert!(stderr.contains("repositories.local.token_file"), "{stderr}");
    assert!(stderr.contains("cairn serve"), "{stderr}");
}

#[test]
fn restore_stops_when_packs_cannot_be_read() {
    let mut setup = Setup::new();
    let source = setup.path("source");
    build_source(&source);
    for n in 0..20 {
        write_file(
            &source,
            &format!("small/{n:02}"),
            format!("file {n}\n").as_bytes(),
        );
    }
    let snapshot = snapshot_id(&setup.backup(Client::Writer, &source));

    // The largest pack contains the chunks. A directory in its place makes
    // every read of it fail on the server with status 500, which the client
    // retries until its time limit. The tree pack stays readable.
    let pack = largest_file(&setup.server.repository().join("data"));
    let aside = pack.with_extension("aside");
    fs::rename(&pack, &aside).unwrap();
    fs::create_dir(&pack).unwrap();

    let target = setup.path("target");
    let output = setup
        .command(Client::Reader)
        .env("CAIRN_HTTP_RETRY_TIMEOUT", "1")
        .args([
            OsStr::new("restore"),
            OsStr::new(&snapshot),
            OsStr::new("--target"),
            target.as_os_str(),
        ])
        .output()
        .expect("start the cairn binary");
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    let stderr = stderr_of(&output);
    assert!(stderr.contains("restore stopped"), "{stderr}");
    assert!(stderr.contains("the same restore again"), "{stderr}");
    assert!(
        stderr.lines().count() < 5,
        "one message, not one per file: {stderr}"
    );
    // The restore leaves complete files only.
    let restored = restored_path(&target, &source);
    for file in files_below(&restored) {
        let relative = file.strip_prefix(&restored).unwrap();
        assert_eq!(
            fs::read(&file).unwrap(),
            fs::read(source.join(relative)).unwrap(),
            "{} was left with other bytes than the source",
            relative.display()
        );
    }

    // The server keeps pack files open, so it starts again after the repair.
    fs::remove_dir(&pack).unwrap();
    fs::rename(&aside, &pack).unwrap();
    setup.server.restart();
    setup.run_ok(
        Client::Reader,
        [
            OsStr::new("restore"),
            OsStr::new(&snapshot),
            OsStr::new("--target"),
            target.as_os_str(),
        ],
    );
    assert_same_tree(&source, &restored);
}

/// Returns the regular files below `root`, at any depth.
fn files_below(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = fs::read_dir(root) else {
        return files;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let kind = fs::symlink_metadata(&path).unwrap().file_type();
        if kind.is_dir() {
            files.extend(files_below(&path));
        } else if kind.is_file() {
            files.push(path);
        }
    }
    files
}

/// Returns the largest regular file below `root`.
fn largest_file(root: &Path) -> PathBuf {
    files_below(root)
        .into_iter()
        .max_by_key(|file| fs::metadata(file).unwrap().len())
        .expect("a file below the directory")
}
