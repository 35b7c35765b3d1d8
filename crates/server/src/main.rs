//! The `portcullis` binary: parse the command line, dispatch, exit (ripgrep's thin main).

use clap::Parser;

/// Exit status for a command-line usage error (sysexits EX_USAGE), as `cmd` documents.
const EX_USAGE: i32 = 64;

fn main() {
    let cli = match portcullis::cmd::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors; clap says which is which.
            let code = if e.use_stderr() { EX_USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    std::process::exit(portcullis::cmd::run(cli));
}
