use std::path::PathBuf;

use clap::Args;

use super::{Cli, open};

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Empty directory to mount at.
    mountpoint: PathBuf,
}

pub fn run(cli: &Cli, args: &MountArgs) -> anyhow::Result<i32> {
    let _repo = open(cli)?;
    anyhow::bail!(
        "mount at {} is not available yet",
        args.mountpoint.display()
    )
}
