use clap::Args;

use super::{Cli, EXIT_OK, open};
use crate::diff::diff_trees;
use crate::display::escape_path;

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// First snapshot: full id, unique id prefix, or `latest`.
    first: String,
    /// Second snapshot.
    second: String,
}

pub fn run(cli: &Cli, args: &DiffArgs) -> anyhow::Result<i32> {
    let repo = open(cli)?;
    let (_, a) = repo.find_snapshot(&args.first)?;
    let (_, b) = repo.find_snapshot(&args.second)?;
    let mut stdout = std::io::stdout().lock();
    let mut result = Ok(());
    diff_trees(&repo, Some(&a.tree), Some(&b.tree), &mut |change, path| {
        if result.is_ok() {
            use std::io::Write;
            result = writeln!(stdout, "{} {}", change.marker(), escape_path(path));
        }
    })?;
    result?;
    Ok(EXIT_OK)
}
