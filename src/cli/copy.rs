use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use super::backup::human_bytes;
use super::progress::{ItemNoun, ProgressDisplay};
use super::{Cli, EXIT_OK, PasswordSource, audit, open_at, password, read_password, repo_path};
use crate::audit::{AuditArg, Outcome, Record};
use crate::copy::{CopyOptions, CopyReport, copy};
use crate::repository::{RepoError, Repository};

#[derive(Debug, Args)]
#[command(after_help = COPY_HELP)]
pub struct CopyArgs {
    /// Snapshots of the source to copy, each a full id, a unique id prefix or
    /// `latest`. All snapshots by default.
    #[arg(value_name = "SNAPSHOT")]
    snapshots: Vec<String>,
    /// Source repository directory.
    #[arg(long, env = "CAIRN_FROM_REPO", value_name = "REPO")]
    from: PathBuf,
    /// File whose first line is the source repository's password; otherwise
    /// CAIRN_FROM_PASSWORD, or a prompt on the terminal.
    #[arg(long, env = "CAIRN_FROM_PASSWORD_FILE", value_name = "FILE")]
    from_password_file: Option<PathBuf>,
    /// Token file for a source on a cairn serve server; otherwise the token of
    /// --token-file or the environment, which the destination uses.
    #[arg(long, env = "CAIRN_FROM_TOKEN_FILE", value_name = "FILE")]
    from_token_file: Option<PathBuf>,
    /// Destination repository directory, --repo (CAIRN_REPO) by default. Its
    /// password comes from --password-file, CAIRN_PASSWORD or a prompt.
    #[arg(long, value_name = "REPO")]
    to: Option<PathBuf>,
    /// Copy only snapshots that carry this tag (repeatable: every tag given
    /// must be present).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Seconds to wait while a prune holds the destination's lock.
    #[arg(long, default_value_t = DEFAULT_LOCK_WAIT_SECS, value_name = "SECONDS")]
    lock_wait: u64,
    /// Print the summary as one JSON object with "type": "summary", and no
    /// progress bar.
    #[arg(long)]
    json: bool,
}

const COPY_HELP: &str = "\
A snapshot is copied only if the destination holds no copy of it yet: each
copy records the id of the snapshot it copies, so running the same copy again
writes nothing new. Only blobs that the destination lacks are written.

When the destination was made with `cairn init --like SOURCE` (or the other way
round), both share the identity secret and blobs are copied by id. Otherwise
each chunk's id is computed again with the destination's key and each tree is
rewritten, which reads every chunk of the copied snapshots.";

/// Default of --lock-wait in seconds, the same as for a backup.
pub const DEFAULT_LOCK_WAIT_SECS: u64 = 3600;

/// One end of a copy: a repository location, its password and, for a
/// server, its token file.
pub struct Endpoint<'a> {
    /// Repository directory or URL.
    pub path: &'a Path,
    /// Its password.
    pub password: Vec<u8>,
    /// Token file for a repository on a `cairn serve` server, when it is not
    /// the one of `--token-file` or the environment.
    pub token_file: Option<&'a Path>,
}

/// The snapshots to copy and the output format.
pub struct CopyRequest<'a> {
    /// Snapshot names of the source, or empty for all.
    pub snapshots: &'a [String],
    /// Tags that every copied snapshot must carry.
    pub tags: &'a [String],
    /// Seconds to wait for the destination's lock.
    pub lock_wait: u64,
    /// Print a JSON summary.
    pub json: bool,
}

pub fn run(cli: &Cli, args: &CopyArgs) -> anyhow::Result<i32> {
    let to = match &args.to {
        Some(to) => to.as_path(),
        None => repo_path(cli)
            .context("no destination given: pass --to PATH, or --repo PATH, or set CAIRN_REPO")?,
    };
    let prompt = format!("Password of the source {}: ", args.from.display());
    let from_password = read_password(
        &PasswordSource {
            file: args.from_password_file.as_deref(),
            variable: "CAIRN_FROM_PASSWORD",
            hint: "--from-password-file, CAIRN_FROM_PASSWORD_FILE or CAIRN_FROM_PASSWORD",
            prompt: &prompt,
        },
        false,
    )?;
    let source = Endpoint {
        path: &args.from,
        password: from_password,
        token_file: args.from_token_file.as_deref(),
    };
    let dest = Endpoint {
        path: to,
        password: password(cli, false)?,
        token_file: None,
    };
    let request = CopyRequest {
        snapshots: &args.snapshots,
        tags: &args.tags,
        lock_wait: args.lock_wait,
        json: args.json,
    };
    copy_between(cli, &source, &dest, &request)
}

/// Opens both repositories, copies and prints the summary.
pub fn copy_between(
    cli: &Cli,
    source: &Endpoint<'_>,
    dest: &Endpoint<'_>,
    request: &CopyRequest<'_>,
) -> anyhow::Result<i32> {
    let from = open_at(
        source.path,
        &source.password,
        source.token_file,
        "copy",
        "copy snapshots",
    )
    .with_context(|| {
        format!(
            "cannot open the source repository {}",
            source.path.display()
        )
    })?;
    let to = open_at(
        dest.path,
        &dest.password,
        dest.token_file,
        "copy",
        "copy snapshots",
    )
    .with_context(|| {
        format!(
            "cannot open the destination repository {}",
            dest.path.display()
        )
    })?;
    audit::attach(&to);
    audit::arg("from", from.location());
    let mut snapshots = Vec::new();
    for spec in request.snapshots {
        let (id, _) = from
            .find_snapshot(spec)
            .with_context(|| format!("in the source repository {}", source.path.display()))?;
        snapshots.push(id);
    }

    let (progress, display) = ProgressDisplay::start(cli, request.json, ItemNoun("snapshots"));
    let options = CopyOptions {
        snapshots,
        tags: request.tags.to_vec(),
        lock_wait: std::time::Duration::from_secs(request.lock_wait),
        progress: Some(progress),
    };
    let result = copy(&from, &to, &options);
    if let Some(display) = display {
        display.finish();
    }
    record_source_read(&from, &to, &result);
    let report = match result {
        Err(RepoError::SameRepository(_)) => anyhow::bail!(
            "{} and {} are the same repository: give another destination",
            source.path.display(),
            dest.path.display()
        ),
        other => other?,
    };
    for copied in &report.copied {
        audit::arg("source_snapshot", copied.source.to_hex());
        audit::arg("snapshot", copied.copy.to_hex());
    }
    audit::arg("blobs_added", report.blobs_added);
    audit::commit_ok();
    print_summary(cli, request, source.path, dest.path, &report)?;
    Ok(EXIT_OK)
}

/// Appends an entry to the source's audit log that names the destination and
/// the snapshots read.
fn record_source_read(from: &Repository, to: &Repository, result: &Result<CopyReport, RepoError>) {
    let mut args = vec![AuditArg {
        name: "to".into(),
        value: to.location(),
    }];
    let outcome = match result {
        Ok(report) => {
            args.extend(report.copied.iter().map(|copied| AuditArg {
                name: "snapshot".into(),
                value: copied.source.to_hex(),
            }));
            Outcome::Ok
        }
        Err(e) => Outcome::Failed(e.to_string()),
    };
    let record = Record {
        operation: "copy (source)".into(),
        args,
        outcome,
    };
    audit::write_to(from, record);
}

fn print_summary(
    cli: &Cli,
    request: &CopyRequest<'_>,
    from: &Path,
    to: &Path,
    report: &CopyReport,
) -> anyhow::Result<()> {
    if request.json {
        let json = serde_json::json!({
            "type": "summary",
            "from": from.display().to_string(),
            "to": to.display().to_string(),
            "snapshots_copied": report.copied.len(),
            "snapshots_already_present": report.already_present,
            "blobs_added": report.blobs_added,
            "blob_bytes_added": report.blob_bytes_added,
            "chunks_read": report.chunks_read,
            "bytes_added": report.bytes_added,
            "same_identity": report.same_identity,
            "snapshots": report.copied.iter().map(|c| serde_json::json!({
                "source": c.source.to_hex(),
                "copy": c.copy.to_hex(),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string(&json)?);
        return Ok(());
    }
    if cli.quiet {
        return Ok(());
    }
    for copied in &report.copied {
        println!(
            "copied snapshot {} as {}",
            copied.source.short(),
            copied.copy.short()
        );
    }
    if report.copied.is_empty() {
        println!(
            "nothing new to copy: {} already holds every selected snapshot",
            to.display()
        );
    }
    let id_mode = if report.same_identity {
        "by id (shared identity secret)"
    } else {
        "with new ids (different identity secrets)"
    };
    println!(
        "snapshots: {} copied, {} already present",
        report.copied.len(),
        report.already_present
    );
    println!(
        "{} new blobs ({} of content) copied {id_mode}; added {} to {}",
        report.blobs_added,
        human_bytes(report.blob_bytes_added),
        human_bytes(report.bytes_added),
        to.display()
    );
    Ok(())
}
