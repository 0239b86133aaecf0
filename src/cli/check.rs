use clap::Args;

use super::progress::{ItemNoun, ProgressDisplay};
use super::{Cli, EXIT_FAILURE, EXIT_OK, audit, open};
use crate::check::{CheckOptions, CheckReport, ReadData, check_with_progress};
use crate::display::count;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also read every pack and verify every chunk's content.
    #[arg(long, conflicts_with = "read_data_subset")]
    read_data: bool,
    /// Read only part of the packs: `N%` for a random sample, or `n/m` for group
    /// n of m (running 1/m to m/m over m days reads everything once).
    #[arg(long, value_name = "N% | n/m", value_parser = ReadData::parse_subset)]
    read_data_subset: Option<ReadData>,
    /// Print the result as one JSON object with "type": "summary", and no
    /// progress bar.
    #[arg(long)]
    json: bool,
}

pub fn run(cli: &Cli, args: &CheckArgs) -> anyhow::Result<i32> {
    let repo = open(cli)?;
    let read_data = match (args.read_data, args.read_data_subset) {
        (true, _) => ReadData::All,
        (false, Some(subset)) => subset,
        (false, None) => ReadData::None,
    };
    let (progress, display) = ProgressDisplay::start(cli, args.json, ItemNoun("items"));
    let report = check_with_progress(&repo, CheckOptions { read_data }, &progress)?;
    if let Some(display) = display {
        display.finish();
    }
    let healthy = report.problems.is_empty() && report.damaged_files.is_empty();
    audit::arg("read_data", format!("{read_data:?}"));
    audit::arg("packs", report.packs);
    audit::arg("packs_read", report.packs_read);
    audit::arg("snapshots", report.snapshots);
    if healthy {
        audit::commit_ok();
    } else {
        audit::set_failure(format!(
            "{} problems, {} damaged files",
            report.problems.len(),
            report.damaged_files.len()
        ));
    }
    if args.json {
        print_json(&report, healthy)?;
    } else {
        print_text(cli, &report, read_data, healthy);
    }
    Ok(if healthy { EXIT_OK } else { EXIT_FAILURE })
}

fn print_json(report: &CheckReport, healthy: bool) -> anyhow::Result<()> {
    let json = serde_json::json!({
        "type": "summary",
        "ok": healthy,
        "snapshots": report.snapshots,
        "trees": report.trees,
        "blobs": report.blobs,
        "packs": report.packs,
        "packs_read": report.packs_read,
        "problems": report.problems,
        "damaged_files": report.damaged_files,
    });
    println!("{}", serde_json::to_string(&json)?);
    Ok(())
}

/// Prints problems and damaged files always, and the counts unless `-q` is given.
fn print_text(cli: &Cli, report: &CheckReport, read_data: ReadData, healthy: bool) {
    for problem in &report.problems {
        println!("error: {problem}");
    }
    if !report.damaged_files.is_empty() {
        println!("damaged files:");
        for line in &report.damaged_files {
            println!("  {line}");
        }
    }
    if cli.quiet {
        return;
    }
    println!(
        "checked {}, {}, {} in {}{}",
        count(report.snapshots as u64, "snapshot"),
        count(report.trees as u64, "tree"),
        count(report.blobs as u64, "blob"),
        count(report.packs as u64, "pack"),
        if read_data != ReadData::None {
            format!(", read {}", count(report.packs_read as u64, "pack"))
        } else {
            String::new()
        }
    );
    if healthy {
        println!("no errors found");
    } else {
        println!("the repository has errors");
    }
}
