use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;

use clap::Args;

use super::backup::human_bytes;
use super::progress::{ItemNoun, ProgressDisplay};
use super::{Cli, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, audit, open};
use crate::display::{count, escape_path};
use crate::restore::{RestoreOptions, restore_with_progress};

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
    /// Print the summary as one JSON object with "type": "summary", and no
    /// progress bar.
    #[arg(long)]
    json: bool,
}

/// Returns a flag that the first SIGINT or SIGTERM sets, so that the restore
/// stops and removes the files it has not finished. A second one ends the
/// process at once, leaving those files under their partial names.
fn stop_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    use signal_hook::consts::signal::{SIGINT, SIGTERM};
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        // The first handler ends the process only once the flag is set, that is
        // on the second signal.
        signal_hook::flag::register_conditional_shutdown(signal, EXIT_INTERRUPTED, flag.clone())
            .context("failed to install a signal handler for SIGINT or SIGTERM")?;
        signal_hook::flag::register(signal, flag.clone())
            .context("failed to install a signal handler for SIGINT or SIGTERM")?;
    }
    Ok(flag)
}

pub fn run(cli: &Cli, args: &RestoreArgs) -> anyhow::Result<i32> {
    // Installed first, so that a signal while the repository opens stops the
    // restore too, before it writes anything.
    let interrupt = stop_on_signals()?;
    let repo = open(cli)?;
    audit::arg("target", args.target.display());
    for include in &args.includes {
        audit::arg("include", include.display());
    }
    let (id, snapshot) = repo.find_snapshot(&args.snapshot)?;
    audit::arg("snapshot", id.to_hex());
    let options = RestoreOptions {
        includes: args.includes.clone(),
        interrupt,
    };
    let (progress, display) = ProgressDisplay::start(cli, args.json, ItemNoun("files"));
    let outcome = restore_with_progress(&repo, &snapshot.tree, &args.target, &options, &progress)?;
    if let Some(display) = display {
        display.finish();
    }
    audit::arg("files", outcome.files);
    audit::arg("bytes", outcome.bytes);
    if outcome.errors.is_empty() {
        audit::commit_ok();
    } else {
        audit::set_failure(format!(
            "{} could not be restored",
            count(outcome.errors.len() as u64, "entry")
        ));
    }
    if args.json {
        let json = serde_json::json!({
            "type": "summary",
            "snapshot": id.to_hex(),
            "target": args.target.display().to_string(),
            "files": outcome.files,
            "dirs": outcome.dirs,
            "others": outcome.others,
            "bytes": outcome.bytes,
            "errors": outcome.errors.iter().map(|(path, reason)| serde_json::json!({
                "path": escape_path(path),
                "reason": reason,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string(&json)?);
    } else if !cli.quiet {
        println!(
            "restored snapshot {} to {}: {} ({}), {}, {}",
            id.short(),
            args.target.display(),
            count(outcome.files, "file"),
            human_bytes(outcome.bytes),
            count(outcome.dirs, "directory"),
            count(outcome.others, "other entry")
        );
    }
    if outcome.errors.is_empty() {
        Ok(EXIT_OK)
    } else {
        eprintln!(
            "error: {} could not be restored, for the reasons above; run the same restore again once they are fixed, and `cairn check --read-data` if a reason names damage",
            count(outcome.errors.len() as u64, "entry")
        );
        Ok(EXIT_FAILURE)
    }
}
