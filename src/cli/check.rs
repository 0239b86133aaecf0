use clap::Args;

use super::{Cli, EXIT_FAILURE, EXIT_OK, open};
use crate::check::{CheckOptions, ReadData, check};

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also read every pack and verify every chunk's content.
    #[arg(long, conflicts_with = "read_data_subset")]
    read_data: bool,
    /// Read only part of the packs: `N%` for a random sample, or `n/m` for group
    /// n of m (running 1/m to m/m over m days reads everything once).
    #[arg(long, value_name = "N% | n/m", value_parser = ReadData::parse_subset)]
    read_data_subset: Option<ReadData>,
}

pub fn run(cli: &Cli, args: &CheckArgs) -> anyhow::Result<i32> {
    let repo = open(cli)?;
    let read_data = match (args.read_data, args.read_data_subset) {
        (true, _) => ReadData::All,
        (false, Some(subset)) => subset,
        (false, None) => ReadData::None,
    };
    let report = check(&repo, CheckOptions { read_data })?;
    for problem in &report.problems {
        println!("error: {problem}");
    }
    if !report.damaged_files.is_empty() {
        println!("damaged files:");
        for line in &report.damaged_files {
            println!("  {line}");
        }
    }
    println!(
        "checked {} snapshots, {} trees, {} blobs in {} packs{}",
        report.snapshots,
        report.trees,
        report.blobs,
        report.packs,
        if read_data != ReadData::None {
            format!(", read {} packs", report.packs_read)
        } else {
            String::new()
        }
    );
    if report.problems.is_empty() && report.damaged_files.is_empty() {
        println!("no errors found");
        Ok(EXIT_OK)
    } else {
        println!("the repository has errors");
        Ok(EXIT_FAILURE)
    }
}
