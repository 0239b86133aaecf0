//! Integration tests of `backup --stdin` and `backup --stdin-from-command`, with
//! real commands.

mod support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use support::{
    EXIT_FAILURE, EXIT_OK, Fixture, describe, parse_json, restored_path, snapshot_id, stderr_of,
    stdout_of,
};

/// Runs `backup` with `args` and the given bytes on standard input.
fn backup_with_input(fixture: &Fixture, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = fixture
        .command()
        .arg("backup")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the cairn binary");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin.write_all(input).expect("write standard input");
    drop(stdin);
    child.wait_with_output().expect("wait for cairn")
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn stdin_round_trips_as_named_file() {
    let fixture = Fixture::new();
    let input: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let started = now_secs();
    let output = backup_with_input(
        &fixture,
        &["--json", "--stdin", "--stdin-filename", "db.sql"],
        &input,
    );
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    let summary = parse_json(&stdout_of(&output));
    assert_eq!(summary["paths"], serde_json::json!(["/db.sql"]));
    assert_eq!(summary["files_new"], 1);
    assert_eq!(summary["bytes_read"], input.len() as u64);

    let snapshots = fixture.snapshots();
    assert_eq!(snapshots.len(), 1);
    assert_eq!(snapshots[0]["paths"], serde_json::json!(["/db.sql"]));

    let target = fixture.restore(&snapshot_id(&summary), "restored");
    let restored = target.join("db.sql");
    assert_eq!(fs::read(&restored).unwrap(), input);
    let metadata = fs::metadata(&restored).unwrap();
    assert_eq!(metadata.mode() & 0o7777, 0o600);
    assert_eq!(metadata.uid(), nix::unistd::geteuid().as_raw());
    assert!(
        metadata.mtime() >= started - 1 && metadata.mtime() <= now_secs() + 1,
        "mtime {} is not the time of the backup",
        metadata.mtime()
    );
}

#[test]
fn stdin_filename_defaults_to_stdin() {
    let fixture = Fixture::new();
    let output = backup_with_input(&fixture, &["--json", "--stdin"], b"hello\n");
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    let summary = parse_json(&stdout_of(&output));
    assert_eq!(summary["paths"], serde_json::json!(["/stdin"]));
    let target = fixture.restore("latest", "restored");
    assert_eq!(fs::read(target.join("stdin")).unwrap(), b"hello\n");
}

#[test]
fn stdin_filename_with_slash_rejected() {
    let fixture = Fixture::new();
    let output = backup_with_input(&fixture, &["--stdin", "--stdin-filename", "a/b"], b"x");
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    assert!(stderr_of(&output).contains("a/b"), "{}", describe(&output));
    assert!(fixture.snapshots().is_empty());
}

#[test]
fn command_large_stream_round_trips() {
    let fixture = Fixture::new();
    let output = fixture.run([
        "backup",
        "--json",
        "--stdin-from-command",
        "--",
        "seq",
        "1",
        "2000000",
    ]);
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    let summary = parse_json(&stdout_of(&output));
    assert_eq!(summary["paths"], serde_json::json!(["/stdin"]));

    let expected = Command::new("seq")
        .args(["1", "2000000"])
        .output()
        .expect("run seq")
        .stdout;
    assert_eq!(summary["bytes_read"], expected.len() as u64);
    let target = fixture.restore(&snapshot_id(&summary), "restored");
    let restored = fs::read(target.join("stdin")).unwrap();
    assert_eq!(restored.len(), expected.len());
    assert!(
        restored == expected,
        "restored dump differs from seq output"
    );
}

#[test]
fn command_failure_saves_no_snapshot() {
    let fixture = Fixture::new();
    let output = fixture.run([
        "backup",
        "--stdin-from-command",
        "--stdin-filename",
        "dump.sql",
        "--",
        "sh",
        "-c",
        "printf 'partial dump\\n'; echo 'pg_dump: error: connection refused' >&2; exit 3",
    ]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    let stderr = stderr_of(&output);
    assert!(stderr.contains("exited with status 3"), "{stderr}");
    assert!(stderr.contains("connection refused"), "{stderr}");
    assert!(
        fixture.snapshots().is_empty(),
        "a failed dump left a snapshot"
    );

    // The repository stays usable, and the next good run succeeds.
    let output = fixture.run([
        "backup",
        "--stdin-from-command",
        "--",
        "sh",
        "-c",
        "printf 'partial dump\\n'",
    ]);
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    assert_eq!(fixture.snapshots().len(), 1);
    fixture.run_ok(["check", "--read-data"]);
}

#[test]
fn killed_command_saves_no_snapshot() {
    let fixture = Fixture::new();
    let output = fixture.run([
        "backup",
        "--stdin-from-command",
        "--",
        "sh",
        "-c",
        "printf 'some output'; kill -9 $$",
    ]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    assert!(
        stderr_of(&output).contains("killed by signal 9"),
        "{}",
        describe(&output)
    );
    assert!(fixture.snapshots().is_empty());
}

#[test]
fn missing_command_fails() {
    let fixture = Fixture::new();
    let output = fixture.run([
        "backup",
        "--stdin-from-command",
        "--",
        "/nonexistent/pg_dump",
    ]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    assert!(
        stderr_of(&output).contains("/nonexistent/pg_dump"),
        "{}",
        describe(&output)
    );
    assert!(fixture.snapshots().is_empty());
}

#[test]
fn command_needs_arguments() {
    let fixture = Fixture::new();
    let output = fixture.run(["backup", "--stdin-from-command"]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    assert!(
        stderr_of(&output).contains("required"),
        "{}",
        describe(&output)
    );
}

#[test]
fn stdin_and_paths_conflict() {
    let fixture = Fixture::new();
    let dir = fixture.path("x");
    fs::create_dir(&dir).unwrap();
    let output = fixture.run(["backup".as_ref(), "--stdin".as_ref(), dir.as_os_str()]);
    assert_ne!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    assert!(fixture.snapshots().is_empty());
}

/// Peak resident set size in KiB over all waited-for children of this process.
fn children_max_rss_kib() -> i64 {
    // SAFETY: getrusage only writes to the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let result = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(result, 0, "getrusage failed");
    usage.ru_maxrss
}

#[test]
fn command_stream_not_held_in_memory() {
    let fixture = Fixture::new();
    // A run that kept these 512 MiB of zeros in memory would need more than
    // that. A streaming run needs the key derivation's 64 MiB and some buffers.
    let output = fixture.run([
        "backup",
        "--json",
        "--stdin-from-command",
        "--",
        "head",
        "-c",
        "512M",
        "/dev/zero",
    ]);
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    let summary = parse_json(&stdout_of(&output));
    assert_eq!(summary["bytes_read"], 512u64 << 20);
    let max_rss_mib = children_max_rss_kib() / 1024;
    assert!(
        max_rss_mib < 300,
        "a child of the test used {max_rss_mib} MiB; the stream seems to be buffered"
    );
    let restored = fixture.restore("latest", "restored");
    let size = fs::metadata(restored_path(&restored, std::path::Path::new("/stdin")))
        .unwrap()
        .len();
    assert_eq!(size, 512 << 20);
}

#[test]
fn stdin_filename_without_stdin_rejected() {
    let fixture = Fixture::new();
    let dir = fixture.path("x");
    fs::create_dir(&dir).unwrap();
    let output = fixture.run([
        "backup".as_ref(),
        "--stdin-filename".as_ref(),
        "db.sql".as_ref(),
        dir.as_os_str(),
    ]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    assert!(fixture.snapshots().is_empty());
}
