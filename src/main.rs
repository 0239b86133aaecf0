//! The `cairn` command: parses the command line, sets up logging and runs it.

use clap::Parser;

fn main() {
    let cli = cairn::cli::Cli::parse();
    cairn::cli::init_logging(&cli);
    let code = match cairn::cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            cairn::cli::exit_code(&error)
        }
    };
    std::process::exit(code);
}
