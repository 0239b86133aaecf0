//! Commands driven by the configuration file: `config check`, `run` and
//! `schedule install`.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use super::copy::{CopyRequest, DEFAULT_LOCK_WAIT_SECS, Endpoint, copy_between};
use super::{Cli, EXIT_FAILURE, EXIT_INCOMPLETE, EXIT_OK};
use crate::calendar::CalendarSpec;
use crate::config::{DatasetConfig, LoadedConfig, RepositoryConfig, Severity};

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Report every error and warning in the configuration file, with its line
    /// and value; exits with 1 if there is an error.
    Check,
}

#[derive(Debug, Args)]
#[command(after_help = RUN_HELP)]
pub struct RunArgs {
    /// Dataset to back up, as named in `[datasets.NAME]`.
    dataset: String,
}

const RUN_HELP: &str = "\
Steps, each only if the previous one succeeded:
  1. the dataset's `before` commands, with sh -c;
  2. backup of its paths with its excludes, tagged dataset:NAME and its tags;
  3. forget by its keep_* policy, among this host's snapshots tagged
     dataset:NAME (skipped without keep_* keys);
  4. copy of the snapshots tagged dataset:NAME that each `copy_to` repository
     does not hold yet, in the order listed;
  5. its `after` commands.
A backup that exits with 3 (some files unreadable) still continues, and `run`
then exits with 3. The retention policy applies to the dataset's own
repository only: a `copy_to` repository keeps every copy until `cairn forget`
runs on it.";

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    #[command(subcommand)]
    command: ScheduleCommand,
}

#[derive(Debug, Subcommand)]
enum ScheduleCommand {
    /// Write a systemd service and timer per scheduled dataset, or print
    /// crontab lines with --cron.
    Install(InstallArgs),
}

#[derive(Debug, Args)]
struct InstallArgs {
    /// Datasets to schedule; all datasets that have a `schedule` by default.
    #[arg(value_name = "DATASET")]
    datasets: Vec<String>,
    /// Write the units below this directory, in ROOT/etc/systemd/system.
    #[arg(long, value_name = "DIR", default_value = "/", conflicts_with = "cron")]
    root: PathBuf,
    /// Print lines in the /etc/cron.d format instead of writing systemd units.
    #[arg(long)]
    cron: bool,
}

/// Loads the configuration file named by `--config`.
fn load(cli: &Cli) -> anyhow::Result<LoadedConfig> {
    Ok(LoadedConfig::load(&cli.config)?)
}

pub fn run_config(cli: &Cli, args: &ConfigArgs) -> anyhow::Result<i32> {
    match args.command {
        ConfigCommand::Check => check(cli),
    }
}

fn check(cli: &Cli) -> anyhow::Result<i32> {
    let loaded = load(cli)?;
    let problems = loaded.validate();
    for problem in &problems {
        eprintln!("{problem}");
    }
    let errors = problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .count();
    if errors > 0 {
        eprintln!(
            "{} has {errors} errors and {} warnings",
            loaded.path.display(),
            problems.len() - errors
        );
        return Ok(EXIT_FAILURE);
    }
    if !cli.quiet {
        println!(
            "{}: {} repositories, {} datasets, {} warnings",
            loaded.path.display(),
            loaded.config.repositories.len(),
            loaded.config.datasets.len(),
            problems.len()
        );
    }
    Ok(EXIT_OK)
}

/// Runs a command line with `sh -c`, with this process's standard streams.
fn run_hook(kind: &str, dataset: &str, command: &str) -> anyhow::Result<()> {
    let status = Process::new("sh")
        .args(["-c", command])
        .status()
        .with_context(|| {
            format!("cannot run the {kind} command `{command}` of dataset {dataset}")
        })?;
    if !status.success() {
        bail!("the {kind} command `{command}` of dataset {dataset} failed ({status})");
    }
    Ok(())
}

/// Global options that select the repository of a dataset and pass on the
/// output settings.
fn global_args(cli: &Cli, repository: &RepositoryConfig) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "cairn".into(),
        "--config".into(),
        cli.config.clone().into(),
        "--repo".into(),
        repository.path.get_ref().into(),
    ];
    let password_file = repository
        .password_file
        .as_ref()
        .map(|file| file.get_ref().clone())
        .or_else(|| cli.password_file.clone());
    if let Some(file) = password_file {
        args.push("--password-file".into());
        args.push(file.into());
    }
    if let Some(file) = &repository.token_file {
        args.push("--token-file".into());
        args.push(file.get_ref().into());
    }
    if cli.quiet {
        args.push("--quiet".into());
    }
    for _ in 0..cli.verbose {
        args.push("--verbose".into());
    }
    args
}

fn backup_args(name: &str, dataset: &DatasetConfig) -> Vec<OsString> {
    // Values are joined to their options with `=`, so that a value that starts
    // with `-` is not read as an option.
    let joined = |option: &str, value: &std::ffi::OsStr| {
        let mut arg = OsString::from(format!("--{option}="));
        arg.push(value);
        arg
    };
    let mut args: Vec<OsString> = vec!["backup".into(), format!("--tag=dataset:{name}").into()];
    for tag in &dataset.tags {
        args.push(format!("--tag={}", tag.get_ref()).into());
    }

    let options = dataset.exclude_options();
    for pattern in options.patterns {
        args.push(format!("--exclude={pattern}").into());
    }
    for file in options.pattern_files {
        args.push(joined("exclude-file", file.as_os_str()));
    }
    for marker in options.if_present {
        args.push(joined("exclude-if-present", &marker));
    }
    if options.caches {
        args.push("--exclude-caches".into());
    }
    if dataset.one_file_system {
        args.push("--one-file-system".into());
    }

    args.push("--".into());
    args.extend(dataset.paths.get_ref().iter().map(|p| p.get_ref().into()));
    args
}

/// Parses an argument list as a command line and runs it in this process, so
/// that `run` behaves exactly as the commands it stands for.
fn dispatch(args: Vec<OsString>) -> anyhow::Result<i32> {
    let cli = Cli::try_parse_from(&args)
        .with_context(|| format!("invalid generated command line {args:?}"))?;
    super::run(cli)
}

pub fn run_dataset(cli: &Cli, args: &RunArgs) -> anyhow::Result<i32> {
    let loaded = load(cli)?;
    let name = args.dataset.as_str();
    let (dataset, repository) = loaded.dataset(name)?;
    let dataset_key = format!("datasets.{name}");
    let repository_keys: Vec<String> = std::iter::once(&dataset.repository)
        .chain(&dataset.copy_to)
        .map(|repository| format!("repositories.{}", repository.get_ref()))
        .collect();
    let concerns_dataset = |key: &str| {
        key_within(key, &dataset_key) || repository_keys.iter().any(|r| key_within(key, r))
    };
    let blocking: Vec<_> = loaded
        .validate()
        .into_iter()
        .filter(|p| p.severity == Severity::Error)
        .filter(|p| concerns_dataset(&p.key))
        .collect();
    if !blocking.is_empty() {
        for problem in &blocking {
            eprintln!("{problem}");
        }
        bail!("dataset {name} has configuration errors; nothing was run");
    }

    for command in &dataset.before {
        run_hook("before", name, command.get_ref())?;
    }

    let global = global_args(cli, repository);
    let mut backup = global.clone();
    backup.extend(backup_args(name, dataset));
    let backup_code = dispatch(backup)?;
    if backup_code != EXIT_OK && backup_code != EXIT_INCOMPLETE {
        return Ok(backup_code);
    }

    let policy = dataset.forget_args();
    if !policy.is_empty() {
        let mut forget = global.clone();
        forget.extend(
            [
                "forget",
                &format!("--tag=dataset:{name}"),
                &format!("--host={}", crate::backup::local_hostname()),
            ]
            .map(OsString::from),
        );
        forget.extend(policy.into_iter().map(OsString::from));
        let forget_code = dispatch(forget).map_err(|error| {
            if matches!(
                error.downcast_ref::<crate::repository::RepoError>(),
                Some(crate::repository::RepoError::BackupOnly { .. })
            ) {
                error.context(format!(
                    "the backup of dataset {name} was saved, but its keep_* rules need a full key: remove them from the dataset and apply retention from a machine with a full key"
                ))
            } else {
                error
            }
        })?;
        if forget_code != EXIT_OK {
            return Ok(forget_code);
        }
    }

    for target_name in &dataset.copy_to {
        let target = loaded
            .config
            .repositories
            .get(target_name.get_ref().as_str())
            .with_context(|| format!("no repository named {}", target_name.get_ref()))?;
        if !cli.quiet {
            println!(
                "copying dataset {name} to repository {}",
                target_name.get_ref()
            );
        }
        copy_dataset(cli, name, repository, target).with_context(|| {
            format!(
                "copying dataset {name} to repository {} failed",
                target_name.get_ref()
            )
        })?;
    }

    for command in &dataset.after {
        run_hook("after", name, command.get_ref())?;
    }
    Ok(backup_code)
}

/// True when `key` is `prefix` or a key below it, such as
/// `repositories.main.path` below `repositories.main`.
fn key_within(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// Copies the snapshots of dataset `name` from `source` to `target`, with each
/// repository's password file, or else the password that --password-file or
/// CAIRN_PASSWORD gives.
fn copy_dataset(
    cli: &Cli,
    name: &str,
    source: &RepositoryConfig,
    target: &RepositoryConfig,
) -> anyhow::Result<()> {
    let password_of = |repository: &RepositoryConfig| {
        let file = repository
            .password_file
            .as_ref()
            .map(|file| file.get_ref().as_path())
            .or(cli.password_file.as_deref());
        super::read_password(&super::primary_password_source(file), false)
    };
    let from = Endpoint {
        path: source.path.get_ref(),
        password: password_of(source)?,
        token_file: source
            .token_file
            .as_ref()
            .map(|file| file.get_ref().as_path()),
    };
    let to = Endpoint {
        path: target.path.get_ref(),
        password: password_of(target)?,
        token_file: target
            .token_file
            .as_ref()
            .map(|file| file.get_ref().as_path()),
    };
    let tags = [format!("dataset:{name}")];
    let request = CopyRequest {
        snapshots: &[],
        tags: &tags,
        lock_wait: DEFAULT_LOCK_WAIT_SECS,
        json: false,
    };
    // `run` calls the copy directly, not through `cli::run`, so it records the
    // copy's audit entry itself.
    super::audit::begin("copy");
    let result = copy_between(cli, &from, &to, &request);
    super::audit::end(&result);
    result?;
    Ok(())
}

pub fn run_schedule(cli: &Cli, args: &ScheduleArgs) -> anyhow::Result<i32> {
    let ScheduleCommand::Install(install) = &args.command;
    let loaded = load(cli)?;
    let names: Vec<String> = if install.datasets.is_empty() {
        loaded
            .config
            .datasets
            .iter()
            .filter(|(_, dataset)| dataset.schedule.is_some())
            .map(|(name, _)| name.get_ref().clone())
            .collect()
    } else {
        install.datasets.clone()
    };
    if names.is_empty() {
        bail!(
            "no dataset in {} has a schedule; add schedule = \"daily\" to a [datasets.NAME] table",
            loaded.path.display()
        );
    }

    let executable = std::env::current_exe().context("cannot find the path of this program")?;
    let config_path = crate::backup::absolute_path(&cli.config)?;
    let mut scheduled = Vec::new();
    for name in &names {
        let (dataset, _) = loaded.dataset(name)?;
        let Some(schedule) = &dataset.schedule else {
            bail!("dataset {name} has no schedule; add schedule = \"daily\" to [datasets.{name}]");
        };
        if !crate::config::is_unit_name_safe(name) {
            bail!(
                "dataset name {name:?} cannot name a systemd unit; use letters, digits, `-`, `_` and `.`"
            );
        }
        crate::calendar::validate(schedule.get_ref())?;
        scheduled.push((name.as_str(), schedule.get_ref().as_str()));
    }

    if install.cron {
        print!("{}", cron_lines(&executable, &config_path, &scheduled)?);
        return Ok(EXIT_OK);
    }
    let unit_dir = install.root.join("etc/systemd/system");
    std::fs::create_dir_all(&unit_dir)
        .with_context(|| format!("cannot create {}", unit_dir.display()))?;
    for (name, schedule) in &scheduled {
        let service = unit_dir.join(format!("cairn-{name}.service"));
        let timer = unit_dir.join(format!("cairn-{name}.timer"));
        std::fs::write(&service, service_unit(&executable, &config_path, name))
            .with_context(|| format!("cannot write {}", service.display()))?;
        std::fs::write(&timer, timer_unit(name, schedule))
            .with_context(|| format!("cannot write {}", timer.display()))?;
        if !cli.quiet {
            println!("wrote {} and {}", service.display(), timer.display());
        }
    }
    if !cli.quiet {
        let timers: Vec<String> = scheduled
            .iter()
            .map(|(name, _)| format!("cairn-{name}.timer"))
            .collect();
        println!(
            "enable with: systemctl daemon-reload && systemctl enable --now {}",
            timers.join(" ")
        );
    }
    Ok(EXIT_OK)
}

/// Quotes one word of an `ExecStart=` line: systemd splits on spaces, reads
/// `\` escapes inside double quotes and expands `%` specifiers.
fn systemd_word(path: &Path) -> String {
    let text = path.to_string_lossy().replace('%', "%%");
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@".contains(c))
    {
        return text;
    }
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

fn service_unit(executable: &Path, config: &Path, name: &str) -> String {
    format!(
        "\
# Written by `cairn schedule install`; running it again overwrites this file.
[Unit]
Description=cairn backup of dataset {name}

[Service]
Type=oneshot
ExecStart={} --config {} run {name}
Nice=10
IOSchedulingClass=idle
",
        systemd_word(executable),
        systemd_word(config)
    )
}

fn timer_unit(name: &str, schedule: &str) -> String {
    format!(
        "\
# Written by `cairn schedule install`; running it again overwrites this file.
[Unit]
Description=Schedule of the cairn backup of dataset {name}

[Timer]
OnCalendar={schedule}
Persistent=true
Unit=cairn-{name}.service

[Install]
WantedBy=timers.target
"
    )
}

/// Quotes a word for the shell that cron runs commands with.
fn shell_word(path: &Path) -> String {
    let text = path.to_string_lossy();
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@".contains(c))
    {
        return text.into_owned();
    }
    // cron treats `%` as a newline unless it is escaped.
    format!("'{}'", text.replace('\'', r"'\''").replace('%', "\\%"))
}

fn cron_lines(
    executable: &Path,
    config: &Path,
    scheduled: &[(&str, &str)],
) -> anyhow::Result<String> {
    let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map_or_else(|| "root".to_string(), |u| u.name);
    let mut text = String::from(
        "# cairn backups, in /etc/cron.d format: minute hour day-of-month month weekday user command\n",
    );
    for (name, schedule) in scheduled {
        let spec = CalendarSpec::parse(schedule)?;
        let fields = spec.to_cron(schedule)?;
        writeln!(text, "# dataset {name}: OnCalendar={schedule}")?;
        if spec.is_utc() {
            writeln!(
                text,
                "# NOTE: the schedule is in UTC, but cron uses its own time zone"
            )?;
        }
        writeln!(
            text,
            "{fields} {user} {} --config {} --quiet run {name}",
            shell_word(executable),
            shell_word(config)
        )?;
    }
    Ok(text)
}
