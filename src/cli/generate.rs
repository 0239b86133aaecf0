//! `cairn completions` and `cairn man`: shell completion scripts and manual
//! pages generated from the command-line definition, so they never drift from
//! `--help`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::{Cli, EXIT_OK};

#[derive(Debug, Args)]
#[command(after_help = COMPLETIONS_HELP)]
pub struct CompletionsArgs {
    /// Shell to print the completion script for.
    #[arg(value_enum)]
    shell: Shell,
}

const COMPLETIONS_HELP: &str = "\
Install the script where the shell looks for completions, for example:
  cairn completions bash > /etc/bash_completion.d/cairn
  cairn completions zsh > /usr/local/share/zsh/site-functions/_cairn
  cairn completions fish > ~/.config/fish/completions/cairn.fish";

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write cairn.1 and one page per subcommand (cairn-backup.1, ...) into
    /// this directory, creating it if needed; without it, print cairn.1 to
    /// standard output.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// Prints the completion script for a shell.
pub fn completions(args: &CompletionsArgs) -> anyhow::Result<i32> {
    let mut command = Cli::command();
    clap_complete::generate(args.shell, &mut command, "cairn", &mut std::io::stdout());
    Ok(EXIT_OK)
}

/// Writes the manual pages, or prints the main page.
pub fn man(cli: &Cli, args: &ManArgs) -> anyhow::Result<i32> {
    let command = Cli::command();
    let Some(out) = &args.out else {
        clap_mangen::Man::new(command)
            .render(&mut std::io::stdout())
            .context("cannot write the manual page to standard output")?;
        return Ok(EXIT_OK);
    };
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create directory {}", out.display()))?;
    clap_mangen::generate_to(command, out)
        .with_context(|| format!("cannot write manual pages to {}", out.display()))?;
    if !cli.quiet {
        println!("wrote manual pages to {}", out.display());
    }
    Ok(EXIT_OK)
}
