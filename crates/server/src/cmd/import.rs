//! `portcullis import sendmail-mc FILE`: a Sendmail `.mc` → a Portcullis configuration.
//!
//! Role: the I/O around `portcullis_config::mc` (which translates without touching files):
//! read FILE (`-` = standard input, at most `MAX_MC_BYTES`), print the TOML on standard
//! output and, on standard error, first what Sendmail's m4 would print about the features'
//! ordering (byte for byte; a newline is added only when m4's last text lacks one, so our
//! lines do not run into it), then our `FILE:LINE: kind: message` lines and a summary.
//! Exit status: 0 translated (warnings and "not translated" lines allowed); 1 the file
//! cannot be read; 65 (EX_DATAERR) the input is malformed or m4 would print an
//! `*** ERROR` for it: the TOML is still printed, but Sendmail's own build of that `.mc`
//! is broken too (m4 exits 0 there, which hides it).
//! Must not: write any file; stop at the first problem.

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use portcullis_config::mc::{MAX_MC_BYTES, McOptions, translate};

/// Exit status for bad input data (sysexits EX_DATAERR).
pub const EX_DATAERR: i32 = 65;

/// `portcullis import ...`
#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Translate a Sendmail .mc file into a Portcullis configuration (TOML on stdout,
    /// diagnostics on stderr). Exit 0 translated, 1 unreadable, 65 malformed or m4 ERROR.
    SendmailMc {
        /// The .mc file (`-` for standard input).
        file: PathBuf,
        /// Where the access source file lives here, written as `[access] file` instead of
        /// the one FEATURE(`access_db') names.
        #[arg(long, value_name = "FILE")]
        access_file: Option<PathBuf>,
    },
}

/// Runs an `import` subcommand; returns the exit code.
pub fn run(command: &ImportCommand) -> i32 {
    match command {
        ImportCommand::SendmailMc { file, access_file } => {
            sendmail_mc(file, access_file.as_deref())
        }
    }
}

fn sendmail_mc(file: &Path, access_file: Option<&Path>) -> i32 {
    let stdin = file.as_os_str() == "-";
    let origin = if stdin {
        "<stdin>".to_owned()
    } else {
        file.display().to_string()
    };
    let src = match read_bounded(file, stdin) {
        Ok(src) => src,
        Err(why) => {
            eprintln!("portcullis import: cannot read {origin}: {why}");
            return 1;
        }
    };
    let options = McOptions {
        access_file: access_file.map(|p| p.display().to_string()),
    };
    let translation = translate(&src, &origin, &options);
    print!("{}", translation.toml);
    let mut err = translation.m4_stderr.clone();
    if !err.is_empty() && !err.ends_with('\n') {
        err.push('\n');
    }
    err.push_str(&translation.render_diagnostics(&origin));
    err.push_str(&format!("{origin}: {}\n", translation.summary()));
    eprint!("{err}");
    if translation.has_errors() {
        EX_DATAERR
    } else {
        0
    }
}

/// The file's bytes, refused past `MAX_MC_BYTES` (an .mc is a few KiB).
fn read_bounded(file: &Path, stdin: bool) -> std::io::Result<Vec<u8>> {
    let reader: Box<dyn Read> = if stdin {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(file)?)
    };
    let mut src = Vec::new();
    let limit = u64::try_from(MAX_MC_BYTES).unwrap_or(u64::MAX) + 1;
    reader.take(limit).read_to_end(&mut src)?;
    if src.len() > MAX_MC_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {} MiB: not a sendmail.mc",
            MAX_MC_BYTES / (1024 * 1024)
        )));
    }
    Ok(src)
}
