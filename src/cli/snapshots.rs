use clap::Args;

use super::{Cli, EXIT_OK, open};
use crate::display::count;

#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    /// Print a JSON array of snapshot objects on one line.
    #[arg(long)]
    json: bool,
}

pub fn run(cli: &Cli, args: &SnapshotsArgs) -> anyhow::Result<i32> {
    let repo = open(cli)?;
    let snapshots = repo.readable_snapshots()?;
    if args.json {
        let list: Vec<_> = snapshots
            .iter()
            .map(|(id, s)| {
                serde_json::json!({
                    "id": id.to_hex(),
                    "short_id": id.short(),
                    "time": s.time.to_rfc3339(),
                    "time_unix_ns": i128::from(s.time.secs) * 1_000_000_000 + i128::from(s.time.nanos),
                    "hostname": s.hostname,
                    "username": s.username,
                    "paths": s.paths_lossy(),
                    "parent": s.parent.map(|p| p.to_hex()),
                    "original": s.original.map(|p| p.to_hex()),
                    "tags": s.tags,
                    "tree": s.tree.to_hex(),
                    "incomplete": s.incomplete,
                    "summary": {
                        "files_new": s.summary.files_new,
                        "files_changed": s.summary.files_changed,
                        "files_unchanged": s.summary.files_unchanged,
                        "bytes_read": s.summary.bytes_read,
                        "bytes_added": s.summary.bytes_added,
                        "total_bytes": s.summary.total_bytes,
                    },
                })
            })
            .collect();
        println!("{}", serde_json::to_string(&list)?);
        return Ok(EXIT_OK);
    }
    println!(
        "{:<10} {:<20} {:<16} {:<12} paths",
        "id", "time (UTC)", "host", "tags"
    );
    for (id, s) in &snapshots {
        println!(
            "{:<10} {:<20} {:<16} {:<12} {}{}",
            id.short(),
            s.time.to_rfc3339(),
            s.hostname,
            s.tags.join(","),
            s.paths_lossy().join(" "),
            if s.incomplete { " (incomplete)" } else { "" }
        );
    }
    println!("{}", count(snapshots.len() as u64, "snapshot"));
    Ok(EXIT_OK)
}
