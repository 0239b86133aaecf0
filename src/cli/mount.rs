use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::{Cli, EXIT_OK, audit, open};
use crate::display::count;
use crate::fuse::{MountOptions, WriteThroughOptions, mount, mount_write_through};

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
    /// Memory for decoded directory listings, in MiB (an estimate that leaves
    /// out allocator overhead).
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    metadata_cache_size: usize,
    /// Add a writable folder `incoming/` that starts as the latest snapshot
    /// (or --parent); at unmount, its changes are saved as a new snapshot.
    #[arg(long)]
    write_through: bool,
    /// Snapshot that `incoming/` starts from: full id, unique id prefix, or
    /// `latest`.
    #[arg(long, requires = "write_through", value_name = "SNAPSHOT")]
    parent: Option<String>,
    /// Directory on local disk for the files being written in `incoming/`
    /// (default: a new directory under $TMPDIR, or /var/tmp).
    #[arg(long, requires = "write_through", value_name = "DIR")]
    staging_dir: Option<PathBuf>,
    /// Seconds to wait while a prune holds the repository lock.
    #[arg(
        long,
        requires = "write_through",
        default_value_t = 3600,
        value_name = "SECONDS"
    )]
    lock_wait: u64,
}

/// Rejects a mount point that is missing, not a directory, or not empty, because
/// mounting over files hides them.
fn check_mountpoint(path: &std::path::Path) -> anyhow::Result<()> {
    let mut entries = std::fs::read_dir(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot use {} as mount point: {e}; create an empty directory first",
            path.display()
        )
    })?;
    if entries.next().is_some() {
        anyhow::bail!(
            "mount point {} is not empty: mounting would hide its files; use an empty directory",
            path.display()
        );
    }
    Ok(())
}

pub fn run(cli: &Cli, args: &MountArgs) -> anyhow::Result<i32> {
    let repo = Arc::new(open(cli)?);
    let options = MountOptions {
        allow_other: args.allow_other,
        threads: args.threads.max(1),
        cache_bytes: args.cache_size << 20,
        metadata_cache_bytes: args.metadata_cache_size << 20,
        ..MountOptions::default()
    };
    check_mountpoint(&args.mountpoint)?;
    audit::arg("mountpoint", args.mountpoint.display());
    audit::arg("write_through", args.write_through);
    if !cli.quiet {
        eprintln!(
            "mounting {} at {}; unmount with `fusermount3 -u {}` or Ctrl-C",
            repo.location(),
            args.mountpoint.display(),
            args.mountpoint.display()
        );
    }
    if !args.write_through {
        // A prune while mounted would delete data that the mount still shows, so
        // the mount holds a shared lock and prune waits until it is unmounted.
        let lock = repo.lock_shared("mount", std::time::Duration::from_secs(args.lock_wait))?;
        audit::commit_ok();
        audit::restart("unmount");
        audit::arg("mountpoint", args.mountpoint.display());
        mount(repo.clone(), &args.mountpoint, &options)?;
        drop(lock);
        return Ok(EXIT_OK);
    }

    let parent = match &args.parent {
        Some(spec) => Some(repo.find_snapshot(spec)?.0),
        None => None,
    };
    let write_options = WriteThroughOptions {
        parent,
        staging_dir: args.staging_dir.clone(),
        lock_wait: std::time::Duration::from_secs(args.lock_wait),
    };
    audit::commit_ok();
    audit::restart("unmount");
    audit::arg("mountpoint", args.mountpoint.display());
    let outcome = mount_write_through(repo, &args.mountpoint, &options, &write_options)?;
    if let Some((id, _)) = &outcome.saved {
        audit::arg("snapshot", id.to_hex());
    }
    audit::commit_ok();
    let parent = outcome
        .parent
        .map_or_else(|| "none".to_string(), |id| id.to_hex());
    match outcome.saved {
        Some((id, snapshot)) => {
            println!("snapshot {} saved (parent {parent})", id.to_hex());
            if !cli.quiet {
                eprintln!(
                    "incoming/: {} new, {} changed, {} written, {} added",
                    count(snapshot.summary.files_new, "file"),
                    count(snapshot.summary.files_changed, "file"),
                    count(snapshot.summary.dirs, "directory"),
                    count(snapshot.summary.bytes_added, "byte")
                );
            }
        }
        None => println!("no changes in incoming/, no snapshot saved (parent {parent})"),
    }
    Ok(EXIT_OK)
}
