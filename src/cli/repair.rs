use std::collections::HashSet;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{Cli, EXIT_FAILURE, EXIT_OK, audit, open};
use crate::check::read_packs;
use crate::display::count;
use crate::repair::{repair_index, repair_snapshots};

#[derive(Debug, Args)]
pub struct RepairArgs {
    #[command(subcommand)]
    what: RepairCommand,
    /// Seconds to wait for other processes to release the repository.
    #[arg(long, default_value_t = 3600, value_name = "SECONDS", global = true)]
    lock_wait: u64,
}

impl RepairArgs {
    /// Returns the operation name of the audit log.
    pub fn operation(&self) -> &'static str {
        match self.what {
            RepairCommand::Index => "repair index",
            RepairCommand::Snapshots { .. } => "repair snapshots",
        }
    }
}

#[derive(Debug, Subcommand)]
enum RepairCommand {
    /// Rebuild the index from the headers of all packs.
    Index,
    /// Write new snapshots in which files with lost data are renamed with the
    /// suffix `.damaged` and keep their intact bytes.
    Snapshots {
        /// Also read every pack to find damaged blobs, not only missing ones.
        #[arg(long)]
        read_data: bool,
        /// Delete each damaged snapshot once its repaired copy is saved.
        #[arg(long)]
        forget: bool,
    },
}

pub fn run(cli: &Cli, args: &RepairArgs) -> anyhow::Result<i32> {
    let repo = open(cli)?;
    let wait = Duration::from_secs(args.lock_wait);
    match &args.what {
        RepairCommand::Index => {
            repo.backend().check_can_delete("repair index")?;
            let outcome = repair_index(&repo, wait)?;
            audit::arg("packs_indexed", outcome.packs_indexed);
            audit::arg("packs_unreadable", outcome.packs_unreadable.len());
            if outcome.packs_unreadable.is_empty() {
                audit::commit_ok();
            } else {
                audit::set_failure(format!(
                    "{} could not be read",
                    count(outcome.packs_unreadable.len() as u64, "pack")
                ));
            }
            println!(
                "indexed {} from {}",
                count(outcome.blobs as u64, "blob"),
                count(outcome.packs_indexed as u64, "pack")
            );
            for problem in &outcome.packs_unreadable {
                println!("error: {problem}");
            }
            if outcome.packs_unreadable.is_empty() {
                Ok(EXIT_OK)
            } else {
                Ok(EXIT_FAILURE)
            }
        }
        RepairCommand::Snapshots { read_data, forget } => {
            if *forget {
                repo.backend()
                    .check_can_delete("repair snapshots --forget")?;
            }
            let bad = if *read_data {
                let packs: HashSet<_> = repo.list_packs()?.into_iter().collect();
                let (problems, bad) = read_packs(&repo, &packs, None);
                for problem in problems {
                    println!("found: {problem}");
                }
                bad
            } else {
                HashSet::new()
            };
            audit::arg("forget", forget);
            let repairs = repair_snapshots(&repo, &bad, *forget, wait)?;
            for repair in &repairs {
                audit::arg("damaged_snapshot", repair.old.to_hex());
                audit::arg("snapshot", repair.new.to_hex());
            }
            audit::commit_ok();
            for repair in &repairs {
                println!(
                    "snapshot {} repaired as {}{}",
                    repair.old.short(),
                    repair.new.short(),
                    if *forget {
                        ", damaged original deleted"
                    } else {
                        ""
                    }
                );
                for path in &repair.damaged {
                    println!("  {path}");
                }
            }
            println!("{} repaired", count(repairs.len() as u64, "snapshot"));
            Ok(EXIT_OK)
        }
    }
}
