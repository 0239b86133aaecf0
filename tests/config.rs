//! Integration tests of the configuration file: `config check`, `run` and
//! `schedule install`.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::{
    EXIT_FAILURE, EXIT_OK, Fixture, assert_same_tree, describe, restored_path, stderr_of,
    stdout_of, write_file,
};

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
    assert!(
        stderr.contains("copy_to = \"offsite\": no repository of this name is defined"),
        "{stderr}"
    );
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
fn run_rejects_copy_to_own_repository() {
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
        stderr_of(&output).contains("the dataset's own repository"),
        "{}",
        describe(&output)
    );
    assert!(fixture.snapshots().is_empty(), "the backup ran");
}

/// A repository of the configuration: its directory and password file.
struct ConfiguredRepo {
    path: PathBuf,
    password_file: PathBuf,
}

impl ConfiguredRepo {
    fn command(&self) -> Command {
        let mut command = support::cairn_command();
        command
            .arg("--repo")
            .arg(&self.path)
            .arg("--password-file")
            .arg(&self.password_file);
        command
    }

    fn snapshots(&self) -> Vec<Value> {
        let output = self
            .command()
            .args(["snapshots", "--json"])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
        support::parse_json(&stdout_of(&output))
            .as_array()
            .unwrap()
            .clone()
    }

    /// Returns the ids of the snapshots tagged `dataset:NAME`, each mapped to
    /// the id of the snapshot it copies (or its own id if it is no copy).
    fn dataset_origins(&self, dataset: &str) -> BTreeMap<String, String> {
        let tag = Value::from(format!("dataset:{dataset}"));
        self.snapshots()
            .iter()
            .filter(|s| s["tags"].as_array().unwrap().contains(&tag))
            .map(|s| {
                let id = s["id"].as_str().unwrap().to_string();
                let origin = s["original"].as_str().map_or(id.clone(), str::to_string);
                (origin, id)
            })
            .collect()
    }

    /// Restores `snapshot` and compares the backed-up `path` with its current
    /// state.
    fn assert_restores(&self, snapshot: &str, path: &Path, target: &Path) {
        let output = self
            .command()
            .args(["restore", snapshot, "--target"])
            .arg(target)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
        assert_same_tree(path, &restored_path(target, path));
    }
}

#[test]
fn run_copies_datasets_to_other_repositories() {
    let fixture = Fixture::new();
    let main = ConfiguredRepo {
        path: fixture.repo.clone(),
        password_file: fixture.password_file.clone(),
    };
    let make = |name: &str, like: Option<&ConfiguredRepo>| {
        let repo = ConfiguredRepo {
            path: fixture.path(name),
            password_file: fixture.path(&format!("{name}.pw")),
        };
        fs::write(&repo.password_file, format!("password of {name}\n")).unwrap();
        let mut command = repo.command();
        command.arg("init");
        if let Some(like) = like {
            command
                .arg("--like")
                .arg(&like.path)
                .arg("--like-password-file")
                .arg(&like.password_file);
        }
        let output = command.output().unwrap();
        assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
        repo
    };
    let offline = make("offline", Some(&main));
    let offsite = make("offsite", None);

    let home = fixture.path("home");
    let db = fixture.path("db");
    write_file(&home, "a.txt", b"home, first version");
    write_file(&db, "dump.sql", b"create table t;");
    let text = format!(
        r#"[repositories.main]
path = "{main}"
password_file = "{main_pw}"

[repositories.offline]
path = "{offline}"
password_file = "{offline_pw}"

[repositories.offsite]
path = "{offsite}"
password_file = "{offsite_pw}"

[datasets.home]
repository = "main"
paths = ["{home}"]
keep_last = 2
copy_to = ["offline", "offsite"]

[datasets.db]
repository = "offsite"
paths = ["{db}"]
keep_last = 1
copy_to = ["offline"]
"#,
        main = main.path.display(),
        main_pw = main.password_file.display(),
        offline = offline.path.display(),
        offline_pw = offline.password_file.display(),
        offsite = offsite.path.display(),
        offsite_pw = offsite.password_file.display(),
        home = home.display(),
        db = db.display(),
    );
    let config = fixture.path("cairn.toml");
    fs::write(&config, text).unwrap();
    let output = run_with_config(&fixture, &config, &["config", "check"]);
    assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));

    for round in 1..=3 {
        write_file(&home, "a.txt", format!("home, version {round}").as_bytes());
        write_file(&db, "dump.sql", format!("insert {round};").as_bytes());
        for dataset in ["home", "db"] {
            let output = run_with_config(&fixture, &config, &["run", dataset]);
            assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
            let stdout = stdout_of(&output);
            assert!(
                stdout.contains(&format!("copying dataset {dataset} to repository offline")),
                "{stdout}"
            );
        }
    }

    // Retention applies in each dataset's own repository.
    let home_snapshots = main.dataset_origins("home");
    let db_snapshots = offsite.dataset_origins("db");
    assert_eq!(home_snapshots.len(), 2, "keep_last = 2: {home_snapshots:?}");
    assert_eq!(db_snapshots.len(), 1, "keep_last = 1: {db_snapshots:?}");
    // Every run copied its new snapshot, and copies are kept.
    let home_in_offline = offline.dataset_origins("home");
    let home_in_offsite = offsite.dataset_origins("home");
    let db_in_offline = offline.dataset_origins("db");
    assert_eq!(home_in_offline.len(), 3, "{home_in_offline:?}");
    assert_eq!(home_in_offsite.len(), 3, "{home_in_offsite:?}");
    assert_eq!(db_in_offline.len(), 3, "{db_in_offline:?}");
    for origin in home_snapshots.keys() {
        assert!(
            home_in_offline.contains_key(origin),
            "{origin} not in offline"
        );
        assert!(
            home_in_offsite.contains_key(origin),
            "{origin} not in offsite"
        );
    }
    let (db_origin, _) = db_snapshots.first_key_value().unwrap();
    assert!(
        db_in_offline.contains_key(db_origin),
        "{db_origin} not in offline"
    );

    // The newest copies restore the current state of the data.
    let latest_home = main.snapshots().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    offline.assert_restores(
        &home_in_offline[&latest_home],
        &home,
        &fixture.path("restored-offline-home"),
    );
    offsite.assert_restores(
        &home_in_offsite[&latest_home],
        &home,
        &fixture.path("restored-offsite-home"),
    );
    offline.assert_restores(
        &db_in_offline[db_origin],
        &db,
        &fixture.path("restored-offline-db"),
    );
    for repo in [&main, &offline, &offsite] {
        let output = repo
            .command()
            .args(["check", "--read-data"])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(EXIT_OK), "{}", describe(&output));
    }
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
