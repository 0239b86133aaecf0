use clap::Args;

use super::backup::human_bytes;
use super::forget::prune_json;
use super::progress::{ItemNoun, ProgressDisplay};
use super::{Cli, EXIT_OK, audit, open};
use crate::display::count;
use crate::prune::{PruneOptions, PruneReport, prune_with_progress};

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Repack a pack when more than this percentage of its bytes is unused.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u8).range(0..=100))]
    max_unused: u8,
    /// Print what would be removed without changing anything.
    #[arg(long)]
    dry_run: bool,
    /// Seconds to wait for running backups to release the repository.
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    lock_wait: u64,
    /// Print the report as one JSON object with "type": "summary", and no
    /// progress bar.
    #[arg(long)]
    json: bool,
}

impl PruneArgs {
    /// Returns the library options these arguments select.
    pub fn options(&self) -> PruneOptions {
        PruneOptions {
            max_unused_percent: self.max_unused,
            dry_run: self.dry_run,
            lock_wait: std::time::Duration::from_secs(self.lock_wait),
        }
    }
}

/// Prints a prune report.
pub fn print_report(report: &PruneReport, dry_run: bool) {
    let verb = if dry_run { "would delete" } else { "deleted" };
    println!(
        "{} in use, {} unused",
        count(report.used_blobs, "blob"),
        report.unused_blobs
    );
    println!(
        "{verb} {} unused, {} that no index lists; {} {}",
        count(report.packs_deleted, "pack"),
        count(report.packs_unindexed, "pack"),
        if dry_run { "would repack" } else { "repacked" },
        count(report.packs_repacked, "pack")
    );
    if !dry_run {
        println!(
            "freed {}, wrote {}",
            human_bytes(report.bytes_freed),
            human_bytes(report.bytes_written)
        );
    }
}

pub fn run(cli: &Cli, args: &PruneArgs) -> anyhow::Result<i32> {
    let repo = open(cli)?;
    if !args.dry_run {
        repo.backend().check_can_delete("prune")?;
    }
    let (progress, display) = ProgressDisplay::start(cli, args.json, ItemNoun("items"));
    let report = prune_with_progress(&repo, &args.options(), &progress)?;
    if let Some(display) = display {
        display.finish();
    }
    audit::arg("dry_run", args.dry_run);
    audit::arg("packs_deleted", report.packs_deleted);
    audit::arg("packs_unindexed", report.packs_unindexed);
    audit::arg("packs_repacked", report.packs_repacked);
    audit::arg("bytes_freed", report.bytes_freed);
    audit::commit_ok();
    if args.json {
        let mut json = prune_json(&report);
        json["type"] = "summary".into();
        json["dry_run"] = args.dry_run.into();
        println!("{}", serde_json::to_string(&json)?);
    } else if !cli.quiet {
        print_report(&report, args.dry_run);
    }
    Ok(EXIT_OK)
}
