//! Integration tests of `cairn completions` and `cairn man`.

mod support;

use std::fs;
use std::process::Command;

use support::{EXIT_FAILURE, EXIT_OK, cairn_command, describe, stdout_of};

#[test]
fn bash_completion_mentions_subcommands() {
    let output = cairn_command()
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    let script = stdout_of(&output);
    assert!(!script.trim().is_empty(), "empty completion script");
    assert!(script.contains("backup"), "no `backup` in:\n{script}");
    assert!(script.contains("--exclude"), "no `--exclude` in the script");

    // bash itself must accept the script.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cairn.bash");
    fs::write(&path, &script).unwrap();
    let check = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(
        check.status.success(),
        "bash -n rejected it: {}",
        describe(&check)
    );
}

#[test]
fn zsh_and_fish_completions_are_generated() {
    for shell in ["zsh", "fish"] {
        let output = cairn_command()
            .args(["completions", shell])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
        let script = stdout_of(&output);
        assert!(script.contains("backup"), "{shell} script lacks `backup`");
    }
}

#[test]
fn unknown_shell_is_rejected() {
    let output = cairn_command()
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
}

#[test]
fn man_writes_page_per_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    let output = cairn_command()
        .args(["man", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    for page in [
        "cairn.1",
        "cairn-backup.1",
        "cairn-restore.1",
        "cairn-forget.1",
    ] {
        assert!(out.join(page).is_file(), "{page} is missing");
    }
    let backup_page = fs::read_to_string(out.join("cairn-backup.1")).unwrap();
    // roff escapes the hyphens of options as `\-`.
    let unescaped = backup_page.replace("\\-", "-");
    assert!(unescaped.contains("--exclude"), "{backup_page}");
    assert!(unescaped.contains("--stdin-from-command"), "{backup_page}");
    assert!(backup_page.starts_with(".ie") || backup_page.contains(".TH"));
}

#[test]
fn man_without_out_prints_main_page() {
    let output = cairn_command().arg("man").output().unwrap();
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    let page = stdout_of(&output);
    assert!(page.contains(".TH cairn"), "{page}");
}
