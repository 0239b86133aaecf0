use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::{Cli, EXIT_OK, open};
use crate::fuse::{MountOptions, mount};

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Empty directory to mount at.
    mountpoint: PathBuf,
    /// Let other users than the one who mounts access the file system (needs
    /// `user_allow_other` in /etc/fuse.conf unless run as root).
    #[arg(long)]
    allow_other: bool,
    /// Threads that serve requests.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Memory for decrypted chunks, in MiB.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    cache_size: usize,
}

pub fn run(cli: &Cli, args: &MountArgs) -> anyhow::Result<i32> {
    let repo = Arc::new(open(cli)?);
    let options = MountOptions {
        allow_other: args.allow_other,
        threads: args.threads.max(1),
        cache_bytes: args.cache_size << 20,
        ..MountOptions::default()
    };
    if !cli.quiet {
        eprintln!(
            "mounting {} at {}; unmount with `fusermount3 -u {}` or Ctrl-C",
            repo.location(),
            args.mountpoint.display(),
            args.mountpoint.display()
        );
    }
    mount(repo, &args.mountpoint, &options)?;
    Ok(EXIT_OK)
}
