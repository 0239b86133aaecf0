//! The `cairn` command: parses the command line, sets up logging and runs it.

use clap::Parser;

fn main() {
    // Die quietly on a closed pipe (`cairn ls latest | head`), like other Unix
    // tools, instead of panicking inside println!.
    // SAFETY: setting a signal disposition to its default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
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
