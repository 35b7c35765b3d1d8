//! The `portcullis` binary: parse the command line, dispatch, exit (ripgrep's thin main).

use clap::Parser;

fn main() {
    let cli = portcullis::cmd::Cli::parse();
    std::process::exit(portcullis::cmd::run(cli));
}
