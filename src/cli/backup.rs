use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;

use super::progress::{ItemNoun, ProgressDisplay};
use super::{Cli, EXIT_INCOMPLETE, EXIT_OK, audit, open};
use crate::backup::{BackupOptions, BackupOutcome, backup, backup_stream};
use crate::display::{count, escape_path};
use crate::exclude::{ExcludeOptions, Excludes};
use crate::stream::CommandStream;
use crate::tree::Timestamp;

#[derive(Debug, Args)]
#[command(after_help = BACKUP_HELP)]
pub struct BackupArgs {
    /// Files and directories to back up; with --stdin-from-command, the command
    /// and its arguments, after `--`.
    #[arg(
        value_name = "PATH",
        required_unless_present = "stdin",
        conflicts_with = "stdin"
    )]
    paths: Vec<OsString>,
    /// Leave out entries that match this gitignore-style pattern (repeatable);
    /// see below for the rules.
    #[arg(short = 'e', long = "exclude", value_name = "PATTERN")]
    excludes: Vec<String>,
    /// Read exclude patterns from FILE, one per line; blank lines and lines that
    /// start with `#` are skipped (repeatable).
    #[arg(long = "exclude-file", value_name = "FILE")]
    exclude_files: Vec<PathBuf>,
    /// Leave out every directory that contains an entry named NAME, such as
    /// .nobackup (repeatable).
    #[arg(long = "exclude-if-present", value_name = "NAME")]
    exclude_if_present: Vec<OsString>,
    /// Leave out directories that contain a CACHEDIR.TAG file starting with the
    /// signature of the Cache Directory Tagging Specification.
    #[arg(long)]
    exclude_caches: bool,
    /// Do not cross into other file systems: a mount point below a given path is
    /// stored as an empty directory.
    #[arg(short = 'x', long)]
    one_file_system: bool,
    /// Back up standard input as one file, stored at /NAME (see --stdin-filename).
    #[arg(long, conflicts_with = "stdin_from_command")]
    stdin: bool,
    /// Run the command given after `--` and back up its standard output as one
    /// file. If the command exits with a status other than 0, the backup fails
    /// and saves no snapshot.
    #[arg(long)]
    stdin_from_command: bool,
    /// File name of the --stdin or --stdin-from-command stream in the snapshot.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_STDIN_FILENAME)]
    stdin_filename: String,
    /// Label the snapshot (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Record this host name instead of the machine's.
    #[arg(long)]
    host: Option<String>,
    /// Record this time instead of now, as RFC 3339 (`2026-01-31T02:00:00Z`) or
    /// `YYYY-MM-DD HH:MM:SS` in UTC.
    #[arg(long)]
    time: Option<String>,
    /// Compare with this snapshot instead of the latest of the same host and paths.
    #[arg(long)]
    parent: Option<String>,
    /// Read every file, even those whose size, times and inode are unchanged.
    #[arg(long)]
    force: bool,
    /// Seconds to wait while a prune holds the repository lock.
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    lock_wait: u64,
    /// Print the summary as one JSON object with "type": "summary", and no
    /// progress bar.
    #[arg(long)]
    json: bool,
}

/// File name of a stream in the snapshot when --stdin-filename is not given.
const DEFAULT_STDIN_FILENAME: &str = "stdin";

const BACKUP_HELP: &str = "\
Exclude patterns follow gitignore(5), applied to absolute paths as if the
.gitignore were in /:
  *.o              a name without `/` matches at any depth
  /srv/tmp/**      a pattern with a leading or inner `/` is anchored at /
  **/node_modules  `**` matches any number of directories
  build/           a trailing `/` matches directories only
  !keep.log        re-includes what an earlier pattern excluded
Excluded entries are not errors and do not change the exit code.

Database dumps without temporary files:
  cairn backup --stdin-from-command --stdin-filename db.sql -- pg_dump mydb
  pg_dump mydb | cairn backup --stdin --stdin-filename db.sql";

pub fn parse_time(text: &str) -> anyhow::Result<Timestamp> {
    let parsed = chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").map(|t| t.and_utc())
        })
        .with_context(|| {
            format!("invalid time {text:?}: use RFC 3339, such as 2026-01-31T02:00:00Z")
        })?;
    Ok(Timestamp {
        secs: parsed.timestamp(),
        nanos: parsed.timestamp_subsec_nanos(),
    })
}

pub fn run(cli: &Cli, args: &BackupArgs) -> anyhow::Result<i32> {
    let streaming = args.stdin || args.stdin_from_command;
    if streaming
        && (!args.excludes.is_empty()
            || !args.exclude_files.is_empty()
            || !args.exclude_if_present.is_empty()
            || args.exclude_caches
            || args.one_file_system)
    {
        bail!(
            "exclude options and --one-file-system apply to paths, not to --stdin or --stdin-from-command"
        );
    }
    if !streaming && args.stdin_filename != DEFAULT_STDIN_FILENAME {
        bail!("--stdin-filename applies only with --stdin or --stdin-from-command");
    }
    if args.stdin_from_command && args.paths.is_empty() {
        bail!("--stdin-from-command needs a command after `--`, such as `-- pg_dump mydb`");
    }
    let excludes = Excludes::new(&ExcludeOptions {
        patterns: args.excludes.clone(),
        pattern_files: args.exclude_files.clone(),
        if_present: args.exclude_if_present.clone(),
        caches: args.exclude_caches,
    })?;

    let repo = open(cli)?;
    if streaming {
        audit::arg("path", format!("/{}", args.stdin_filename));
    } else {
        for path in &args.paths {
            let path = std::path::absolute(path).unwrap_or_else(|_| PathBuf::from(path));
            audit::arg("path", path.display());
        }
    }
    for tag in &args.tags {
        audit::arg("tag", tag);
    }
    let parent = match &args.parent {
        Some(spec) => {
            repo.require_full_key(
                "read the snapshot given with --parent (leave --parent out: a backup-only key compares with its own last backup)",
            )?;
            Some(repo.find_snapshot(spec)?.0)
        }
        None => None,
    };
    let (progress, display) = ProgressDisplay::start(cli, args.json, ItemNoun("files"));
    let options = BackupOptions {
        tags: args.tags.clone(),
        time: args.time.as_deref().map(parse_time).transpose()?,
        hostname: args.host.clone(),
        parent,
        force: args.force,
        threads: 0,
        lock_wait: std::time::Duration::from_secs(args.lock_wait),
        excludes,
        one_file_system: args.one_file_system,
        progress: Some(progress),
    };
    let mut command_stderr = None;
    let outcome = if args.stdin {
        let mut stdin = std::io::stdin().lock();
        backup_stream(&repo, &args.stdin_filename, &mut stdin, &options)?
    } else if args.stdin_from_command {
        let mut stream = CommandStream::spawn(&args.paths)?;
        let outcome = backup_stream(&repo, &args.stdin_filename, &mut stream, &options)?;
        command_stderr = Some((stream.command_line().to_string(), stream.stderr_tail()));
        outcome
    } else {
        let paths: Vec<PathBuf> = args.paths.iter().map(PathBuf::from).collect();
        backup(&repo, &paths, &options)?
    };
    if let Some(display) = display {
        display.finish();
    }
    audit::arg("snapshot", outcome.id.to_hex());
    if let Some(parent) = outcome.snapshot.parent {
        audit::arg("parent", parent.to_hex());
    }
    audit::arg("files_new", outcome.snapshot.summary.files_new);
    audit::arg("files_changed", outcome.snapshot.summary.files_changed);
    audit::arg("bytes_added", outcome.snapshot.summary.bytes_added);
    if !outcome.errors.is_empty() {
        audit::arg("unreadable_entries", outcome.errors.len());
    }
    audit::commit_ok();
    if let Some((command_line, tail)) = command_stderr
        && !tail.trim().is_empty()
        && !cli.quiet
    {
        eprintln!(
            "warning: `{command_line}` succeeded but wrote to standard error:\n{}",
            tail.trim_end()
        );
    }
    print_summary(cli, args, &outcome)?;
    if outcome.errors.is_empty() {
        Ok(EXIT_OK)
    } else {
        eprintln!(
            "warning: {} could not be read and {} missing from snapshot {}",
            count(outcome.errors.len() as u64, "entry"),
            if outcome.errors.len() == 1 {
                "is"
            } else {
                "are"
            },
            outcome.id.short()
        );
        Ok(EXIT_INCOMPLETE)
    }
}

fn print_summary(cli: &Cli, args: &BackupArgs, outcome: &BackupOutcome) -> anyhow::Result<()> {
    let s = &outcome.snapshot.summary;
    if args.json {
        let json = serde_json::json!({
            "type": "summary",
            "snapshot": outcome.id.to_hex(),
            "parent": outcome.snapshot.parent.map(|p| p.to_hex()),
            "paths": outcome.snapshot.paths_lossy(),
            "files_new": s.files_new,
            "files_changed": s.files_changed,
            "files_unchanged": s.files_unchanged,
            "dirs": s.dirs,
            "excluded": outcome.excluded,
            "changed_while_read": outcome.changed_while_read,
            "bytes_read": s.bytes_read,
            "bytes_added": s.bytes_added,
            "total_bytes": s.total_bytes,
            "duration_ms": s.duration_ms,
            "errors": outcome.errors.iter().map(|e| serde_json::json!({
                "path": escape_path(&e.path),
                "reason": e.reason,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string(&json)?);
    } else if !cli.quiet {
        let excluded = if outcome.excluded > 0 {
            format!("; {} excluded", count(outcome.excluded, "entry"))
        } else {
            String::new()
        };
        println!(
            "files: {} new, {} changed, {} unchanged; {}{excluded}",
            s.files_new,
            s.files_changed,
            s.files_unchanged,
            count(s.dirs, "directory")
        );
        println!(
            "read {}, added {} to the repository, in {:.1} s",
            human_bytes(s.bytes_read),
            human_bytes(s.bytes_added),
            s.duration_ms as f64 / 1000.0
        );
        println!("snapshot {} saved", outcome.id.short());
    }
    if outcome.changed_while_read > 0 && !cli.quiet {
        eprintln!(
            "warning: {} changed while read; back up again for a copy that matches one moment",
            count(outcome.changed_while_read, "file")
        );
    }
    Ok(())
}

/// Formats a byte count with a binary unit, such as `1.5 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
