//! Command-line interface: one file per command. Only this module and `main.rs`
//! use `anyhow`; the library returns typed errors.

mod audit;
mod backup;
mod check;
mod config;
mod copy;
mod diff;
mod forget;
mod generate;
mod key;
mod ls;
mod mount;
mod progress;
mod prune;
mod repair;
mod restore;
mod serve;
mod snapshots;
mod unlock;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::repository::{Location, RepoError, Repository};

/// Exit code of a run that did its work.
pub const EXIT_OK: i32 = 0;
/// Exit code of a failure.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code of a backup that left out entries it could not read.
pub const EXIT_INCOMPLETE: i32 = 3;
/// Exit code when no repository exists at the given location.
pub const EXIT_NO_REPOSITORY: i32 = 10;
/// Exit code when another process holds a conflicting repository lock.
pub const EXIT_LOCKED: i32 = 11;
/// Exit code of a wrong password.
pub const EXIT_WRONG_PASSWORD: i32 = 12;
/// Exit code of a command stopped by SIGINT or SIGTERM, as shells report a
/// command ended by SIGINT.
pub const EXIT_INTERRUPTED: i32 = 130;

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0   success
  1   failure (the error message says what failed), also invalid usage
  3   backup incomplete: some files could not be read; the snapshot holds the rest
  10  no repository at the given location
  11  repository locked by another process
  12  wrong password
  130 interrupted by SIGINT or SIGTERM";

/// Encrypted, deduplicated backups that mount as ordinary directory trees.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// Repository: a directory, s3:http(s)://HOST[:PORT]/BUCKET[/PREFIX] with
    /// credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or
    /// cairn:http(s)://HOST[:PORT]/NAME on a `cairn serve` server.
    #[arg(
        short = 'r',
        long,
        env = "CAIRN_REPO",
        global = true,
        value_name = "LOCATION"
    )]
    pub repo: Option<PathBuf>,

    /// File whose first line is the password; otherwise CAIRN_PASSWORD, or a
    /// prompt on the terminal.
    #[arg(long, env = "CAIRN_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,

    /// File whose first line is the bearer token for a repository on a
    /// `cairn serve` server (cairn:http(s)://HOST:PORT/NAME); otherwise
    /// CAIRN_TOKEN.
    #[arg(long, env = "CAIRN_TOKEN_FILE", global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// More log output (-v info, -vv debug); RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Only errors on standard error.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Configuration file of `run`, `config check` and `schedule install`, or
    /// of `serve`, which needs a file of its own.
    #[arg(
        long,
        env = "CAIRN_CONFIG",
        global = true,
        value_name = "FILE",
        default_value = crate::config::DEFAULT_CONFIG_PATH
    )]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new repository.
    Init(InitArgs),
    /// Back up files and directories into a new snapshot.
    #[command(after_help = EXIT_CODES_HELP)]
    Backup(backup::BackupArgs),
    /// List snapshots, oldest first.
    Snapshots(snapshots::SnapshotsArgs),
    /// List the entries of a snapshot.
    Ls(ls::LsArgs),
    /// Restore a snapshot into a directory.
    Restore(restore::RestoreArgs),
    /// List the paths that differ between two snapshots.
    Diff(diff::DiffArgs),
    /// Mount all snapshots read-only at a directory, plus a writable
    /// `incoming/` with --write-through.
    Mount(mount::MountArgs),
    /// Verify the repository's structure, and optionally all data.
    Check(check::CheckArgs),
    /// Copy snapshots from another repository into this one.
    #[command(after_help = EXIT_CODES_HELP)]
    Copy(copy::CopyArgs),
    /// Remove snapshots by id or by a retention policy.
    Forget(forget::ForgetArgs),
    /// Delete data that no snapshot uses, and repack mostly unused packs.
    Prune(prune::PruneArgs),
    /// Manage the named keys (passwords) that open the repository.
    Key(key::KeyArgs),
    /// Rebuild the index, or set damaged files apart in new snapshots.
    Repair(repair::RepairArgs),
    /// Remove stale locks left by processes that were killed.
    Unlock(unlock::UnlockArgs),
    /// Serve repositories in local directories over HTTP(S) to clients with
    /// tokens, each with a read, append or admin role (--config names them).
    Serve(serve::ServeArgs),
    /// List the audit log of the repository, or verify it.
    Audit(audit::AuditArgs),
    /// Back up a dataset of the configuration file and apply its retention
    /// policy.
    Run(config::RunArgs),
    /// Check the configuration file.
    Config(config::ConfigArgs),
    /// Install systemd timers or print crontab lines for scheduled datasets.
    Schedule(config::ScheduleArgs),
    /// Print a shell completion script for bash, zsh, fish, elvish or PowerShell.
    Completions(generate::CompletionsArgs),
    /// Write manual pages generated from this help text.
    Man(generate::ManArgs),
}

/// Sets up `tracing` from `-v`/`-q` and `RUST_LOG`.
pub fn init_logging(cli: &Cli) {
    let default = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        // The server logs each request at info level.
        (false, 0) if matches!(cli.command, Command::Serve(_)) => "info",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // fuser 0.18 logs a harmless warning when an external umount is followed
        // by its own unmount attempt, so only its errors are shown by default.
        // Its reply errors are hidden too, because the kernel rejects a reply
        // only when no request waits for it any more, such as the reply to a
        // file's release that arrives after the unmount. object_store logs each retry of an S3
        // request at info level.
        tracing_subscriber::EnvFilter::new(format!(
            "cairn={default},object_store={default},fuser=error,fuser::reply=off"
        ))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Maps an error to the documented exit code.
pub fn exit_code(error: &anyhow::Error) -> i32 {
    match error.downcast_ref::<RepoError>() {
        Some(RepoError::WrongPassword(_)) => EXIT_WRONG_PASSWORD,
        Some(RepoError::NotFound(_)) => EXIT_NO_REPOSITORY,
        Some(RepoError::Locked(_)) => EXIT_LOCKED,
        Some(RepoError::Interrupted(_)) => EXIT_INTERRUPTED,
        _ => EXIT_FAILURE,
    }
}

/// Returns the operation name that the audit log records for a command, or
/// `None` for commands that only read, such as `ls`, or that work on no
/// repository.
fn audited_operation(command: &Command) -> Option<&'static str> {
    match command {
        Command::Init(_) => Some("init"),
        Command::Backup(_) => Some("backup"),
        Command::Restore(_) => Some("restore"),
        Command::Mount(_) => Some("mount"),
        Command::Check(_) => Some("check"),
        Command::Copy(_) => Some("copy"),
        Command::Forget(_) => Some("forget"),
        Command::Prune(_) => Some("prune"),
        Command::Key(args) => args.operation(),
        Command::Repair(args) => Some(args.operation()),
        Command::Unlock(_) => Some("unlock"),
        Command::Snapshots(_)
        | Command::Ls(_)
        | Command::Diff(_)
        | Command::Audit(_)
        | Command::Serve(_)
        | Command::Run(_)
        | Command::Config(_)
        | Command::Schedule(_)
        | Command::Completions(_)
        | Command::Man(_) => None,
    }
}

/// Runs a parsed command and returns the exit code. Commands that work on a
/// repository append an entry to its audit log.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    if let Some(path) = &cli.token_file {
        crate::repository::http::set_token_file(path.clone());
    }
    if !matches!(
        cli.command,
        Command::Restore(_) | Command::Mount(_) | Command::Serve(_)
    ) {
        exit_on_signals()?;
    }
    let operation = audited_operation(&cli.command);
    if let Some(operation) = operation {
        audit::begin(operation);
    }
    let result = run_command(&cli);
    if operation.is_some() {
        audit::end(&result);
    }
    result
}

/// Makes the first SIGINT or SIGTERM remove the repository locks that this
/// process holds and exit with [`EXIT_INTERRUPTED`], as a kill would but
/// without leaving locks behind. What a command had written stays, as after a
/// kill. Restore, mount and serve handle these signals themselves.
fn exit_on_signals() -> anyhow::Result<()> {
    use signal_hook::consts::signal::{SIGINT, SIGTERM};

    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("failed to install a signal handler for SIGINT or SIGTERM")?;
    std::thread::Builder::new()
        .name("cairn-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                crate::repository::lock::release_held_locks();
                let name = if signal == SIGINT { "SIGINT" } else { "SIGTERM" };
                eprintln!(
                    "error: interrupted by {name}; the repository stays readable, run the command again to finish"
                );
                std::process::exit(EXIT_INTERRUPTED);
            }
        })
        .context("failed to start the signal thread")?;
    Ok(())
}

fn run_command(cli: &Cli) -> anyhow::Result<i32> {
    match &cli.command {
        Command::Init(args) => init(cli, args),
        Command::Backup(args) => backup::run(cli, args),
        Command::Snapshots(args) => snapshots::run(cli, args),
        Command::Ls(args) => ls::run(cli, args),
        Command::Restore(args) => restore::run(cli, args),
        Command::Diff(args) => diff::run(cli, args),
        Command::Mount(args) => mount::run(cli, args),
        Command::Check(args) => check::run(cli, args),
        Command::Copy(args) => copy::run(cli, args),
        Command::Forget(args) => forget::run(cli, args),
        Command::Prune(args) => prune::run(cli, args),
        Command::Key(args) => key::run(cli, args),
        Command::Repair(args) => repair::run(cli, args),
        Command::Unlock(args) => unlock::run(cli, args),
        Command::Audit(args) => audit::run(cli, args),
        Command::Serve(args) => serve::run(cli, args),
        Command::Run(args) => config::run_dataset(cli, args),
        Command::Config(args) => config::run_config(cli, args),
        Command::Schedule(args) => config::run_schedule(cli, args),
        Command::Completions(args) => generate::completions(args),
        Command::Man(args) => generate::man(cli, args),
    }
}

fn repo_location(cli: &Cli) -> anyhow::Result<Location> {
    let value = cli
        .repo
        .as_ref()
        .context("no repository given: pass --repo LOCATION or set CAIRN_REPO")?;
    Ok(Location::parse(value.as_os_str())?)
}

/// Returns the --repo value as given, a directory or an `s3:` URL.
fn repo_path(cli: &Cli) -> anyhow::Result<&PathBuf> {
    cli.repo
        .as_ref()
        .context("no repository given: pass --repo LOCATION or set CAIRN_REPO")
}

/// Sources of the password of one repository, tried in order: a file, a
/// variable that contains the password itself, or a prompt on the terminal.
struct PasswordSource<'a> {
    /// File whose first line is the password.
    file: Option<&'a Path>,
    /// Environment variable read when no file is given.
    variable: &'static str,
    /// The options and variables to name when none is set.
    hint: &'static str,
    /// Prompt shown on the terminal.
    prompt: &'a str,
}

/// Reads a password from its source. With `confirm`, a prompt requests it
/// twice.
fn read_password(source: &PasswordSource<'_>, confirm: bool) -> anyhow::Result<Vec<u8>> {
    if let Some(file) = source.file {
        let text = std::fs::read(file)
            .with_context(|| format!("cannot read password file {}", file.display()))?;
        let line = text.split(|b| *b == b'\n').next().unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            bail!("password file {} is empty", file.display());
        }
        return Ok(line.to_vec());
    }
    if let Some(password) = std::env::var_os(source.variable) {
        use std::os::unix::ffi::OsStringExt;
        if password.is_empty() {
            bail!(
                "{} is set but empty: set it to the password, or unset it",
                source.variable
            );
        }
        return Ok(password.into_vec());
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        bail!("no password given: use {}", source.hint);
    }
    let first = rpassword::prompt_password(source.prompt).context("cannot read the password")?;
    if confirm {
        let second =
            rpassword::prompt_password("Repeat password: ").context("cannot read the password")?;
        if first != second {
            bail!("the passwords do not match");
        }
    }
    if first.is_empty() {
        bail!("an empty password is not allowed");
    }
    Ok(first.into_bytes())
}

/// Reads the password from --password-file, CAIRN_PASSWORD or the terminal.
fn password(cli: &Cli, confirm: bool) -> anyhow::Result<Vec<u8>> {
    read_password(
        &primary_password_source(cli.password_file.as_deref()),
        confirm,
    )
}

/// Returns the password source of the repository that --repo names, with
/// `file` in place of --password-file.
fn primary_password_source(file: Option<&Path>) -> PasswordSource<'_> {
    PasswordSource {
        file,
        variable: "CAIRN_PASSWORD",
        hint: "--password-file, CAIRN_PASSWORD_FILE or CAIRN_PASSWORD",
        prompt: "Password: ",
    }
}

/// Opens the repository named on the command line.
fn open(cli: &Cli) -> anyhow::Result<Repository> {
    open_with_password(cli).map(|(repo, _)| repo)
}

/// Opens the repository named on the command line, and returns the password
/// that opened it too. A missing repository is reported before the password
/// is read.
fn open_with_password(cli: &Cli) -> anyhow::Result<(Repository, Vec<u8>)> {
    let location = repo_location(cli)?;
    let backend = location.connect()?;
    if !Repository::exists(backend.as_ref())? {
        return Err(RepoError::NotFound(location.to_string()).into());
    }
    let password = password(cli, false)?;
    let repo = Repository::open(backend, &password)?;
    audit::attach(&repo);
    if let Some(operation) = needs_full_key(&cli.command)
        && let Err(refusal) = repo.require_full_key(operation)
    {
        // Commands that only read leave no entry when they succeed, but a
        // backup-only key trying one is worth a trace.
        if audited_operation(&cli.command).is_none() {
            audit::write_to(
                &repo,
                crate::audit::Record {
                    operation: command_name(&cli.command).to_string(),
                    args: Vec::new(),
                    outcome: crate::audit::Outcome::Refused(refusal.to_string()),
                },
            );
        }
        return Err(refusal.into());
    }
    Ok((repo, password))
}

/// Returns the name of a command that the audit log does not record when it
/// succeeds.
fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Snapshots(_) => "snapshots",
        Command::Ls(_) => "ls",
        Command::Diff(_) => "diff",
        Command::Audit(args) if args.verifies() => "audit verify",
        Command::Audit(_) => "audit",
        Command::Key(_) => "key list",
        _ => "other",
    }
}

/// Returns what a command does that a backup-only key may not, or `None` for
/// the commands that it may run: `backup`, `run` (whose forget step is a
/// command of its own) and `key list`.
///
/// The keys enforce the same: a backup-only key holds no key that opens a
/// stored chunk, tree or snapshot. This check only turns the failure into a
/// message that names the key, before any work.
fn needs_full_key(command: &Command) -> Option<&'static str> {
    match command {
        Command::Backup(_) | Command::Run(_) => None,
        Command::Key(args) => args.needs_full_key(),
        Command::Audit(args) if args.verifies() => Some("verify the audit log"),
        Command::Audit(_) => Some("read the audit log"),
        Command::Snapshots(_) => Some("list snapshots"),
        Command::Ls(_) => Some("list the files of a snapshot"),
        Command::Restore(_) => Some("restore"),
        Command::Diff(_) => Some("compare snapshots"),
        Command::Mount(_) => Some("mount snapshots"),
        Command::Check(_) => Some("check the repository"),
        Command::Copy(_) => Some("copy snapshots"),
        Command::Forget(_) => Some("forget snapshots"),
        Command::Prune(_) => Some("prune"),
        Command::Repair(_) => Some("repair the repository"),
        Command::Unlock(_) => Some("remove locks"),
        Command::Init(_) => Some("share its keys with a new repository"),
        Command::Serve(_)
        | Command::Config(_)
        | Command::Schedule(_)
        | Command::Completions(_)
        | Command::Man(_) => None,
    }
}

/// Opens the repository at `value`, a directory or a URL, for `operation` of
/// `command`, which needs a full key. A server's token comes from
/// `token_file` when given. Fails with [`RepoError::NotFound`] if there is no
/// repository. A backup-only key is refused, and the refusal recorded in the
/// repository's audit log.
fn open_at(
    value: &Path,
    password: &[u8],
    token_file: Option<&Path>,
    command: &str,
    operation: &str,
) -> anyhow::Result<Repository> {
    let location = Location::parse(value.as_os_str())?;
    let backend = location.connect_with_token(token_file)?;
    if !Repository::exists(backend.as_ref())? {
        return Err(RepoError::NotFound(location.to_string()).into());
    }
    let repo = Repository::open(backend, password)?;
    if let Err(refusal) = repo.require_full_key(operation) {
        audit::write_to(
            &repo,
            crate::audit::Record {
                operation: command.to_string(),
                args: Vec::new(),
                outcome: crate::audit::Outcome::Refused(refusal.to_string()),
            },
        );
        return Err(refusal.into());
    }
    Ok(repo)
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Share the identity secret and chunker parameters of this repository, so
    /// that chunk and tree ids match and `copy` between the two moves blobs by
    /// id. The new repository still gets its own encryption keys.
    #[arg(long, value_name = "REPO")]
    like: Option<PathBuf>,
    /// File whose first line is the password of the --like repository;
    /// otherwise CAIRN_LIKE_PASSWORD, or a prompt on the terminal.
    #[arg(long, env = "CAIRN_LIKE_PASSWORD_FILE", value_name = "FILE")]
    like_password_file: Option<PathBuf>,
    /// Token file for a --like repository on a cairn serve server; otherwise
    /// the token of --token-file or the environment.
    #[arg(long, env = "CAIRN_LIKE_TOKEN_FILE", value_name = "FILE")]
    like_token_file: Option<PathBuf>,
}

fn init(cli: &Cli, args: &InitArgs) -> anyhow::Result<i32> {
    let location = repo_location(cli)?;
    let like = match &args.like {
        Some(like_path) => {
            let prompt = format!("Password of {}: ", like_path.display());
            let like_password = read_password(
                &PasswordSource {
                    file: args.like_password_file.as_deref(),
                    variable: "CAIRN_LIKE_PASSWORD",
                    hint: "--like-password-file, CAIRN_LIKE_PASSWORD_FILE or CAIRN_LIKE_PASSWORD",
                    prompt: &prompt,
                },
                false,
            )?;
            let repo = open_at(
                like_path,
                &like_password,
                args.like_token_file.as_deref(),
                "init",
                "share its keys with a new repository",
            )
            .with_context(|| {
                format!("cannot open the --like repository {}", like_path.display())
            })?;
            Some(repo)
        }
        None => None,
    };
    let password = password(cli, true)?;
    let repo = match &like {
        Some(like) => Repository::init_like_at(&location, &password, "default", like)?,
        None => Repository::init_at(&location, &password, "default")?,
    };
    audit::attach(&repo);
    audit::arg(crate::audit::ARG_SLOT, repo.slot_name());
    audit::arg(
        crate::audit::ARG_SIGNING_KEY,
        hex::encode(repo.signing_key().verifying_key().to_bytes()),
    );
    if let Some(like) = &like {
        audit::arg("like", like.location());
    }
    audit::commit_ok();
    println!(
        "created repository {} at {location}",
        hex::encode(repo.config().repo_id),
    );
    if let Some(like) = &like {
        println!(
            "it shares the identity secret of {}: chunk and tree ids match, so `cairn copy` between them copies blobs by id",
            like.location()
        );
    }
    println!("keep the password safe: without it the data cannot be restored");
    Ok(EXIT_OK)
}
