//! The `cairn` command: parses the command line, sets up logging and runs it.

use clap::Parser;

fn main() {
    // Die quietly on a closed pipe (`cairn ls latest | head`), like other Unix
    // tools, instead of panicking inside println!.
    // SAFETY: setting a signal disposition to its default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Usage errors exit with 1 instead of clap's 2, so that every failure uses
    // the codes listed in --help; --help and --version exit with 0.
    let cli = match cairn::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            let code = if error.use_stderr() {
                cairn::cli::EXIT_FAILURE
            } else {
                cairn::cli::EXIT_OK
            };
            std::process::exit(code);
        }
    };
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
