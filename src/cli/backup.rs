use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::{Cli, EXIT_INCOMPLETE, EXIT_OK, open};
use crate::backup::{BackupOptions, backup};
use crate::display::escape_path;
use crate::tree::Timestamp;

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Files and directories to back up.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
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
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

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
    let repo = open(cli)?;
    let parent = match &args.parent {
        Some(spec) => Some(repo.find_snapshot(spec)?.0),
        None => None,
    };
    let options = BackupOptions {
        tags: args.tags.clone(),
        time: args.time.as_deref().map(parse_time).transpose()?,
        hostname: args.host.clone(),
        parent,
        force: args.force,
        threads: 0,
        lock_wait: std::time::Duration::from_secs(args.lock_wait),
    };
    let outcome = backup(&repo, &args.paths, &options)?;
    let s = &outcome.snapshot.summary;
    if args.json {
        let json = serde_json::json!({
            "snapshot": outcome.id.to_hex(),
            "parent": outcome.snapshot.parent.map(|p| p.to_hex()),
            "files_new": s.files_new,
            "files_changed": s.files_changed,
            "files_unchanged": s.files_unchanged,
            "dirs": s.dirs,
            "bytes_read": s.bytes_read,
            "bytes_added": s.bytes_added,
            "total_bytes": s.total_bytes,
            "duration_ms": s.duration_ms,
            "errors": outcome.errors.iter().map(|e| serde_json::json!({
                "path": escape_path(&e.path),
                "reason": e.reason,
            })).collect::<Vec<_>>(),
        });
        println!("{json}");
    } else if !cli.quiet {
        println!(
            "files: {} new, {} changed, {} unchanged; {} directories",
            s.files_new, s.files_changed, s.files_unchanged, s.dirs
        );
        println!(
            "read {}, added {} to the repository, in {:.1} s",
            human_bytes(s.bytes_read),
            human_bytes(s.bytes_added),
            s.duration_ms as f64 / 1000.0
        );
        println!("snapshot {} saved", outcome.id.short());
    }
    if outcome.errors.is_empty() {
        Ok(EXIT_OK)
    } else {
        eprintln!(
            "warning: {} entries could not be read and are missing from snapshot {}",
            outcome.errors.len(),
            outcome.id.short()
        );
        Ok(EXIT_INCOMPLETE)
    }
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
