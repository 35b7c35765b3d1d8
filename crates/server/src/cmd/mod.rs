//! The command-line interface: one file per subcommand; `main.rs` only dispatches.
//!
//! Exit codes (sysexits, as Sendmail and Postfix tools): 0 success, 1 runtime failure,
//! 64 usage (clap), 65 bad input data (`import`), 78 configuration error.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use portcullis_config::{Diagnostic, Loaded, embedded_default, load_file};

pub mod access;
pub mod check_config;
pub mod import;
pub mod probe;
pub mod queue;
pub mod report;
pub mod serve;

/// Exit status for a configuration error (EX_CONFIG).
pub const EX_CONFIG: i32 = 78;

/// Portcullis: an MX SMTP server with Sendmail's front-line defences.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (embedded default configuration unless --config is given).
    Serve {
        /// Configuration file (TOML).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Check a configuration file: errors and warnings with file:line; exit 0 if valid, 78 if not.
    CheckConfig {
        /// Configuration file (TOML); the embedded default when omitted.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// The Sendmail access map: look entries up, check a file.
    Access {
        /// What to do.
        #[command(subcommand)]
        command: access::AccessCommand,
    },
    /// The mail queue: list (like mailq), show, flush, delete, hold, release. Goes through the
    /// running server's control socket; works on the spool directly when no server runs.
    Queue {
        /// Configuration file (TOML) naming the spool; the embedded default when omitted.
        #[arg(long, short = 'c', value_name = "FILE", global = true)]
        config: Option<PathBuf>,
        /// What to do.
        #[command(subcommand)]
        command: queue::QueueCommand,
    },
    /// Translate another server's configuration into Portcullis's (TOML on stdout).
    Import {
        /// What to translate.
        #[command(subcommand)]
        command: import::ImportCommand,
    },
    /// Test a server's greeting pause as a client would: connect, time the greeting, talk
    /// politely, slam, or talk after SECS; print the transcript and a verdict.
    Probe(probe::ProbeArgs),
    /// Reports from the logs (ours and Sendmail's): `report greet-pause`.
    Report {
        /// Which report.
        #[command(subcommand)]
        command: report::ReportCommand,
    },
}

/// Loads the named file or the embedded default.
pub fn load(path: Option<&Path>) -> Result<Loaded, Vec<Diagnostic>> {
    match path {
        Some(p) => load_file(p),
        None => embedded_default(),
    }
}

/// Runs the parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Serve { config } => serve::run(config),
        Command::CheckConfig { config } => check_config::run(config.as_deref()),
        Command::Access { command } => access::run(command),
        Command::Queue { config, command } => queue::run(config.as_deref(), &command),
        Command::Import { command } => import::run(&command),
        Command::Probe(args) => probe::run(&args),
        Command::Report { command } => report::run(command),
    }
}
