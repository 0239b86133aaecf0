//! Integration tests of the configuration file: `config check`, `run` and
//! `schedule install`.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;

use support::{EXIT_FAILURE, EXIT_OK, Fixture, describe, stderr_of, stdout_of, write_file};

/// Writes a configuration with repository `main` (the fixture's) and dataset
/// `home` backing up `data`, followed by `extra` lines in the dataset table.
fn write_config(fixture: &Fixture, extra: &str) -> std::path::PathBuf {
    let data = fixture.path("data");
    write_file(&data, "a.txt", b"kept");
    write_file(&data, "node_modules/x.js", b"left out");
    let text = format!(
        r#"[repositories.main]
path = "{repo}"
password_file = "{password}"

[datasets.home]
repository = "main"
paths = ["{data}"]
excludes = ["**/node_modules"]
{extra}
"#,
        repo = fixture.repo.display(),
        password = fixture.password_file.display(),
        data = data.display(),
    );
    let path = fixture.path("cairn.toml");
    fs::write(&path, text).unwrap();
    path
}

fn run_with_config(fixture: &Fixture, config: &Path, args: &[&str]) -> std::process::Output {
    support::cairn_command()
        .arg("--config")
        .arg(config)
        .args(args)
        .current_dir(fixture.dir.path())
        .output()
        .expect("start the cairn binary")
}

#[test]
fn config_check_accepts_valid_file() {
    let fixture = Fixture::new();
    let config = write_config(&fixture, "schedule = \"daily\"\nkeep_daily = 7");
    let output = run_with_config(&fixture, &config, &["config", "check"]);
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    assert!(
        stdout_of(&output).contains("1 datasets"),
        "{}",
        describe(&output)
    );
}

#[test]
fn config_check_reports_line_and_value() {
    let fixture = Fixture::new();
    // Lines 9 to 11 of the file.
    let config = write_config(
        &fixture,
        "schedule = \"every other day\"\nkeep_within = \"3x\"\ncopy_to = [\"offsite\"]",
    );
    let output = run_with_config(&fixture, &config, &["config", "check"]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    let stderr = stderr_of(&output);
    let file = config.display().to_string();
    assert!(
        stderr.contains(&format!(
            "{file}:9:12: datasets.home.schedule = \"every other day\""
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}:10:15: datasets.home.keep_within = \"3x\"")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{file}:11:12: datasets.home.copy_to = \"offsite\""
        )),
        "{stderr}"
    );
    assert!(stderr.contains("not available yet"), "{stderr}");
}

#[test]
fn config_check_reports_unknown_key() {
    let fixture = Fixture::new();
    let config = write_config(&fixture, "keep_dayly = 7");
    let output = run_with_config(&fixture, &config, &["config", "check"]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    let stderr = stderr_of(&output);
    assert!(stderr.contains(":9:"), "no line 9 in: {stderr}");
    assert!(stderr.contains("keep_dayly"), "{stderr}");
}

#[test]
fn missing_config_file_fails() {
    let fixture = Fixture::new();
    let missing = fixture.path("no-such.toml");
    let output = run_with_config(&fixture, &missing, &["config", "check"]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    assert!(
        stderr_of(&output).contains("no-such.toml"),
        "{}",
        describe(&output)
    );
}

#[test]
fn run_backs_up_and_applies_policy() {
    let fixture = Fixture::new();
    let before_marker = fixture.path("before-ran");
    let after_marker = fixture.path("after-ran");
    let config = write_config(
        &fixture,
        &format!(
            "keep_last = 2\ntags = [\"nightly\"]\nbefore = [\"touch '{}'\"]\nafter = [\"touch '{}'\"]",
            before_marker.display(),
            after_marker.display()
        ),
    );
    for _ in 0..3 {
        let output = run_with_config(&fixture, &config, &["run", "home"]);
        assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    }
    assert!(before_marker.exists(), "the before command did not run");
    assert!(after_marker.exists(), "the after command did not run");

    let snapshots = fixture.snapshots();
    assert_eq!(snapshots.len(), 2, "keep_last = 2 keeps two");
    for snapshot in &snapshots {
        let tags = snapshot["tags"].as_array().unwrap();
        assert!(tags.contains(&"dataset:home".into()), "{snapshot}");
        assert!(tags.contains(&"nightly".into()), "{snapshot}");
    }
    let listed = fixture.ls("latest");
    assert!(
        listed.iter().any(|p| p.ends_with("/data/a.txt")),
        "{listed:?}"
    );
    assert!(
        !listed.iter().any(|p| p.contains("node_modules")),
        "{listed:?}"
    );
}

#[test]
fn run_policy_spares_other_datasets() {
    let fixture = Fixture::new();
    let config = write_config(&fixture, "keep_last = 1");
    // A snapshot that is not of dataset `home` must survive its policy.
    let other = fixture.path("other");
    write_file(&other, "b.txt", b"other");
    fixture.backup(&[&other], &["--tag", "manual"]);
    for _ in 0..2 {
        let output = run_with_config(&fixture, &config, &["run", "home"]);
        assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    }
    let snapshots = fixture.snapshots();
    assert_eq!(snapshots.len(), 2, "{snapshots:?}");
    assert!(
        snapshots
            .iter()
            .any(|s| s["tags"].as_array().unwrap().contains(&"manual".into()))
    );
}

#[test]
fn run_stops_when_before_fails() {
    let fixture = Fixture::new();
    let config = write_config(&fixture, "before = [\"echo dump failed >&2; exit 7\"]");
    let output = run_with_config(&fixture, &config, &["run", "home"]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    let stderr = stderr_of(&output);
    assert!(stderr.contains("before command"), "{stderr}");
    assert!(stderr.contains("exit status: 7"), "{stderr}");
    assert!(fixture.snapshots().is_empty());
}

#[test]
fn run_reports_copy_to_unavailable() {
    let fixture = Fixture::new();
    let config = write_config(&fixture, "copy_to = [\"main\"]");
    let output = run_with_config(&fixture, &config, &["run", "home"]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    assert!(
        stderr_of(&output).contains("not available yet"),
        "{}",
        describe(&output)
    );
    assert_eq!(fixture.snapshots().len(), 1, "the backup itself ran");
}

#[test]
fn run_unknown_dataset_lists_names() {
    let fixture = Fixture::new();
    let config = write_config(&fixture, "");
    let output = run_with_config(&fixture, &config, &["run", "hmoe"]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    assert!(stderr_of(&output).contains("home"), "{}", describe(&output));
}

fn systemd_analyze_available() -> bool {
    Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn schedule_install_writes_units() {
    let fixture = Fixture::new();
    let config = write_config(&fixture, "schedule = \"Mon..Fri *-*-* 02:30\"");
    let root = fixture.path("root");
    let root_arg = root.to_str().unwrap();
    let output = run_with_config(
        &fixture,
        &config,
        &["schedule", "install", "--root", root_arg],
    );
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    let units = root.join("etc/systemd/system");
    let service = units.join("cairn-home.service");
    let timer = units.join("cairn-home.timer");
    let timer_text = fs::read_to_string(&timer).unwrap();
    assert!(
        timer_text.contains("OnCalendar=Mon..Fri *-*-* 02:30\n"),
        "{timer_text}"
    );
    let service_text = fs::read_to_string(&service).unwrap();
    assert!(service_text.contains(" run home\n"), "{service_text}");
    assert!(
        service_text.contains(&format!("--config {}", config.display())),
        "{service_text}"
    );

    if systemd_analyze_available() {
        let verify = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&service)
            .arg(&timer)
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "systemd-analyze verify rejected the units: {}",
            describe(&verify)
        );
    }
}

#[test]
fn schedule_install_cron_prints_lines() {
    let fixture = Fixture::new();
    let config = write_config(&fixture, "schedule = \"Mon..Fri *-*-* 02:30\"");
    let output = run_with_config(&fixture, &config, &["schedule", "install", "--cron"]);
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    let stdout = stdout_of(&output);
    let line = stdout
        .lines()
        .find(|line| !line.starts_with('#'))
        .unwrap_or_else(|| panic!("no crontab line in {stdout}"));
    assert!(line.starts_with("30 2 * * 1-5 "), "{line}");
    assert!(line.ends_with(" run home"), "{line}");
}

#[test]
fn schedule_cron_rejects_seconds() {
    let fixture = Fixture::new();
    let config = write_config(&fixture, "schedule = \"*-*-* 02:30:15\"");
    let output = run_with_config(&fixture, &config, &["schedule", "install", "--cron"]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    assert!(
        stderr_of(&output).contains("cannot be written as a crontab line"),
        "{}",
        describe(&output)
    );
}

#[test]
fn schedule_without_scheduled_dataset_fails() {
    let fixture = Fixture::new();
    let config = write_config(&fixture, "");
    let output = run_with_config(&fixture, &config, &["schedule", "install", "--cron"]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_FAILURE),
        "{}",
        describe(&output)
    );
    assert!(
        stderr_of(&output).contains("schedule"),
        "{}",
        describe(&output)
    );
}
