use clap::Args;

use super::{Cli, EXIT_FAILURE, EXIT_OK, open};
use crate::check::{CheckOptions, check};

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also read every pack and verify every chunk's content.
    #[arg(long)]
    read_data: bool,
}

pub fn run(cli: &Cli, args: &CheckArgs) -> anyhow::Result<i32> {
    let repo = open(cli)?;
    let report = check(
        &repo,
        CheckOptions {
            read_data: args.read_data,
        },
    )?;
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
        if args.read_data {
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
