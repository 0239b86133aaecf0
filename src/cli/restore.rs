use std::path::PathBuf;

use clap::Args;

use super::backup::human_bytes;
use super::{Cli, EXIT_FAILURE, EXIT_OK, open};
use crate::restore::{RestoreOptions, restore};

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Snapshot: full id, unique id prefix, or `latest`.
    snapshot: String,
    /// Directory to restore into; `/srv/git` comes back as `TARGET/srv/git`.
    #[arg(short, long)]
    target: PathBuf,
    /// Restore only this absolute snapshot path and what lies below it (repeatable).
    #[arg(long = "include")]
    includes: Vec<PathBuf>,
}

pub fn run(cli: &Cli, args: &RestoreArgs) -> anyhow::Result<i32> {
    let repo = open(cli)?;
    let (id, snapshot) = repo.find_snapshot(&args.snapshot)?;
    let options = RestoreOptions {
        includes: args.includes.clone(),
    };
    let outcome = restore(&repo, &snapshot.tree, &args.target, &options)?;
    if !cli.quiet {
        println!(
            "restored snapshot {} to {}: {} files ({}), {} directories, {} other entries",
            id.short(),
            args.target.display(),
            outcome.files,
            human_bytes(outcome.bytes),
            outcome.dirs,
            outcome.others
        );
    }
    if outcome.errors.is_empty() {
        Ok(EXIT_OK)
    } else {
        eprintln!(
            "error: {} entries could not be restored; run `cairn check --read-data` to see the damage",
            outcome.errors.len()
        );
        Ok(EXIT_FAILURE)
    }
}
