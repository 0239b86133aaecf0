use clap::Args;

use super::{Cli, EXIT_OK, audit, open};
use crate::display::count;
use crate::repository::lock::read_locks;
use crate::tree::Timestamp;

#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// Remove every lock, also those of processes that may still run.
    #[arg(long)]
    remove_all: bool,
}

pub fn run(cli: &Cli, args: &UnlockArgs) -> anyhow::Result<i32> {
    let repo = open(cli)?;
    let now = Timestamp::now();
    let mut removed = 0;
    audit::arg("remove_all", args.remove_all);
    for (name, info) in read_locks(&repo)? {
        let (stale, description) = match &info {
            Ok(info) => (info.is_stale(now), info.describe()),
            Err(e) => (false, format!("unreadable: {e}")),
        };
        if stale || args.remove_all {
            repo.backend().remove(&format!("locks/{name}"))?;
            audit::arg("lock", &name);
            println!("removed lock {name}: {description}");
            removed += 1;
        } else {
            println!("kept live lock {name}: {description}");
        }
    }
    audit::commit_ok();
    println!("{} removed", count(removed as u64, "lock"));
    Ok(EXIT_OK)
}
