//! Integration tests of what commands print: the progress bar on a terminal, no
//! progress without one, `--json` summaries, `-q` and the exit codes.
//!
//! A terminal comes from util-linux `script`, which runs a command on a new
//! pseudo-terminal and copies everything it writes to its own output.

mod support;

use std::ffi::OsString;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use support::{
    EXIT_FAILURE, EXIT_NO_REPOSITORY, EXIT_OK, EXIT_WRONG_PASSWORD, Fixture, cairn_command,
    describe, parse_json, stderr_of, stdout_of, write_file,
};

/// Spinner frames the progress display draws.
const SPINNER_FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

fn has_progress_marks(text: &str) -> bool {
    text.chars().any(|c| SPINNER_FRAMES.contains(&c)) || text.contains("=>")
}

/// Quotes an argument for `sh -c`.
fn shell_quote(arg: &OsString) -> String {
    let text = arg.to_str().expect("test arguments are UTF-8");
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Runs cairn with `args` on a pseudo-terminal and returns everything it wrote.
fn run_on_terminal(fixture: &Fixture, args: &[OsString]) -> String {
    let mut command_line = vec![shell_quote(&env!("CARGO_BIN_EXE_cairn").into())];
    command_line.extend(fixture.global_args().iter().map(shell_quote));
    command_line.extend(args.iter().map(shell_quote));
    let output = Command::new("script")
        .args(["-q", "-e", "-c"])
        .arg(command_line.join(" "))
        .arg("/dev/null")
        .env_remove("CAIRN_REPO")
        .env_remove("CAIRN_PASSWORD")
        .env_remove("CAIRN_PASSWORD_FILE")
        .env_remove("RUST_LOG")
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output()
        .expect("run script from util-linux");
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Writes one 24 MiB file of pseudo-random bytes and 50 small files, so that
/// backup and restore run long enough for the progress display to draw.
fn write_large_tree(root: &Path) {
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut bytes = Vec::with_capacity(24 << 20);
    while bytes.len() < 24 << 20 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    write_file(root, "large.bin", &bytes);
    for i in 0..50 {
        write_file(
            root,
            &format!("small/{i}.txt"),
            format!("file {i}\n").as_bytes(),
        );
    }
}

fn args(list: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    list.iter().map(|a| a.as_ref().to_os_string()).collect()
}

#[test]
fn backup_on_terminal_shows_progress() {
    let fixture = Fixture::new();
    let root = fixture.path("data");
    write_large_tree(&root);
    let text = run_on_terminal(&fixture, &args(&[&"backup", &root]));
    assert!(
        has_progress_marks(&text),
        "no progress display on the terminal: {text:?}"
    );
    assert!(text.contains("snapshot"), "results are missing: {text:?}");
}

#[test]
fn restore_on_terminal_shows_progress() {
    let fixture = Fixture::new();
    let root = fixture.path("data");
    write_large_tree(&root);
    fixture.backup(&[&root], &[]);
    let target = fixture.path("restored");
    let text = run_on_terminal(
        &fixture,
        &args(&[&"restore", &"latest", &"--target", &target]),
    );
    assert!(
        has_progress_marks(&text),
        "no progress display on the terminal: {text:?}"
    );
    assert!(text.contains("restored snapshot"), "{text:?}");
}

#[test]
fn piped_output_has_no_progress() {
    let fixture = Fixture::new();
    let root = fixture.path("data");
    write_large_tree(&root);
    let output = fixture.run(args(&[&"backup", &root]));
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    let stderr = stderr_of(&output);
    let stdout = stdout_of(&output);
    assert!(!has_progress_marks(&stderr), "{stderr:?}");
    assert!(!stderr.contains('\x1b'), "escape sequences: {stderr:?}");
    assert!(!stdout.contains('\x1b'), "escape sequences: {stdout:?}");
    assert!(stdout.contains("snapshot"), "{stdout:?}");
}

#[test]
fn json_on_terminal_has_no_progress() {
    let fixture = Fixture::new();
    let root = fixture.path("data");
    write_large_tree(&root);
    let text = run_on_terminal(&fixture, &args(&[&"backup", &"--json", &root]));
    assert!(!has_progress_marks(&text), "{text:?}");
    let line = text.trim();
    let summary = parse_json(line);
    assert_eq!(summary["type"], "summary");
}

/// Parses every line of `stdout` as JSON and returns the values.
fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(parse_json)
        .collect()
}

fn last_summary(fixture: &Fixture, args: Vec<OsString>) -> Value {
    let stdout = fixture.run_ok(&args);
    let values = json_lines(&stdout);
    let last = values
        .last()
        .unwrap_or_else(|| panic!("cairn {args:?} printed no JSON"))
        .clone();
    assert_eq!(last["type"], "summary", "cairn {args:?}: {stdout}");
    last
}

#[test]
fn json_summaries_parse_line_by_line() {
    let fixture = Fixture::new();
    let root = fixture.path("data");
    write_file(&root, "a.txt", b"first");
    let first = last_summary(&fixture, args(&[&"backup", &"--json", &root]));
    assert_eq!(first["files_new"], 1);
    write_file(&root, "b.txt", b"second");
    let second = last_summary(&fixture, args(&[&"backup", &"--json", &root]));
    assert_eq!(second["files_new"], 1);
    assert_eq!(second["files_unchanged"], 1);

    let target = fixture.path("restored");
    let restored = last_summary(
        &fixture,
        args(&[&"restore", &"latest", &"--target", &target, &"--json"]),
    );
    assert_eq!(restored["files"], 2);
    assert_eq!(restored["errors"].as_array().map(Vec::len), Some(0));

    let checked = last_summary(&fixture, args(&[&"check", &"--read-data", &"--json"]));
    assert_eq!(checked["ok"], true);
    assert_eq!(checked["snapshots"], 2);

    let forgotten = last_summary(
        &fixture,
        args(&[&"forget", &"--keep-last", &"1", &"--json"]),
    );
    assert_eq!(forgotten["dry_run"], false);

    let pruned = last_summary(&fixture, args(&[&"prune", &"--json"]));
    assert_eq!(pruned["dry_run"], false);
    assert!(pruned["used_blobs"].as_u64().is_some(), "{pruned}");

    let snapshots = json_lines(&fixture.run_ok(["snapshots", "--json"]));
    assert_eq!(snapshots.len(), 1, "one line");
    assert_eq!(snapshots[0].as_array().map(Vec::len), Some(1));
}

#[test]
fn quiet_prints_nothing_on_success() {
    let fixture = Fixture::new();
    let root = fixture.path("data");
    write_file(&root, "a.txt", b"quiet");
    let target = fixture.path("restored");
    let commands = [
        args(&[&"-q", &"backup", &root]),
        args(&[&"-q", &"restore", &"latest", &"--target", &target]),
        args(&[&"-q", &"check"]),
        args(&[&"-q", &"prune"]),
    ];
    for command in commands {
        let output = fixture.run(&command);
        assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
        assert_eq!(stdout_of(&output), "", "cairn {command:?} printed output");
        assert_eq!(
            stderr_of(&output),
            "",
            "cairn {command:?} printed on stderr"
        );
    }
}

#[test]
fn usage_error_exits_1() {
    let output = cairn_command()
        .args(["backup", "--no-such-option"])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    let output = cairn_command().arg("--help").output().unwrap();
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    assert!(stdout_of(&output).contains("Exit codes:"));
}

/// Commands that open the repository, with arguments valid for an empty one.
fn repository_commands(dir: &Path) -> Vec<Vec<OsString>> {
    let target = dir.join("target");
    vec![
        args(&[&"backup", &dir.join("data")]),
        args(&[&"snapshots"]),
        args(&[&"ls", &"latest"]),
        args(&[&"restore", &"latest", &"--target", &target]),
        args(&[&"diff", &"latest", &"latest"]),
        args(&[&"check"]),
        args(&[&"forget", &"--keep-last", &"1"]),
        args(&[&"prune"]),
        args(&[&"repair", &"index"]),
        args(&[&"unlock"]),
    ]
}

#[test]
fn every_command_exits_10_without_repository() {
    let fixture = Fixture::new();
    write_file(&fixture.path("data"), "a", b"a");
    let missing = fixture.path("no-repository");
    for command in repository_commands(fixture.dir.path()) {
        let output = cairn_command()
            .arg("--repo")
            .arg(&missing)
            .arg("--password-file")
            .arg(&fixture.password_file)
            .args(&command)
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(EXIT_NO_REPOSITORY),
            "cairn {command:?}: {}",
            describe(&output)
        );
    }
}

#[test]
fn every_command_exits_12_on_wrong_password() {
    let fixture = Fixture::new();
    write_file(&fixture.path("data"), "a", b"a");
    let wrong = fixture.path("wrong-password");
    fs::write(&wrong, "not the password\n").unwrap();
    for command in repository_commands(fixture.dir.path()) {
        let output = cairn_command()
            .arg("--repo")
            .arg(&fixture.repo)
            .arg("--password-file")
            .arg(&wrong)
            .args(&command)
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(EXIT_WRONG_PASSWORD),
            "cairn {command:?}: {}",
            describe(&output)
        );
    }
}

#[test]
fn prune_exits_11_while_backup_runs() {
    let fixture = Fixture::new();
    // The backup holds its shared lock while the command runs.
    let release = fixture.path("release");
    let script = format!(
        "while [ ! -e '{}' ]; do sleep 0.1; done; echo done",
        release.display()
    );
    let mut backup = fixture
        .command()
        .args(["backup", "--stdin-from-command", "--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start backup");
    let locks = fixture.repo.join("locks");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while fs::read_dir(&locks).map_or(0, |dir| dir.count()) == 0 {
        if std::time::Instant::now() > deadline {
            let _ = backup.kill();
            let _ = backup.wait();
            panic!("the backup took no lock within 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    let output = fixture.run(["prune", "--lock-wait", "0"]);
    fs::write(&release, b"").unwrap();
    let backup_status = backup.wait().expect("wait for backup");
    assert_eq!(
        output.status.code(),
        Some(support::EXIT_LOCKED),
        "{}",
        describe(&output)
    );
    assert!(backup_status.success(), "backup failed: {backup_status}");
    assert_eq!(fixture.snapshots().len(), 1);
}
