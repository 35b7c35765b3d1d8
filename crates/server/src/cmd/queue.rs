//! `portcullis queue list|show ID|flush [ID]|delete ID|hold ID|release ID [--config FILE]`:
//! the mail queue from the shell (Sendmail's `mailq`, `sendmail -qI`, `-qQ`).
//!
//! The command asks the running server over its control socket (`<spool_dir>/control.sock`,
//! [`crate::control`]), so the server's queue runner learns of every change. When no server
//! runs (no socket, or a stale one nobody listens on) it works on the spool itself, with the
//! same code ([`crate::queue_ops`]), so the output is the same; a change made that way is
//! noted on stderr. Any other failure to reach the server (permission denied, no answer) is
//! an error and the spool is left alone: changing it under a live queue runner would race it.
//!
//! Output: the answer on stdout; a failure's text on stderr. Exit 0 on success, 1 on a
//! failure (no such message, server unreachable, spool unreadable), 78 when the
//! configuration cannot be loaded.

use std::path::Path;
use std::time::Duration;

use clap::Subcommand;
use portcullis_spool::Spool;

use super::{EX_CONFIG, load};
use crate::control::{self, ClientError};
use crate::queue_ops::{self, Op, ParseOpError, Response, parse_id};

/// How long the server may take to answer (a listing of a very large queue takes a while).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// `portcullis queue ...`
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// List the queue like `mailq`: id, size, arrival (UTC), sender, the last error and every
    /// recipient still pending. `-` after the id: waiting for its next attempt.
    List,
    /// Show one message: envelope, recipients (done or pending, with errors), delivery state
    /// and the message's header section.
    Show {
        /// Queue id (as in the logs and the 250 reply).
        id: String,
    },
    /// Make a message due for delivery now; without an id, every message that is not held.
    Flush {
        /// Queue id; omit to flush the whole queue.
        id: Option<String>,
    },
    /// Delete a message: it is removed from the spool, not delivered, and no bounce is sent.
    Delete {
        /// Queue id.
        id: String,
    },
    /// Hold a message: it stays queued, undelivered, until released.
    Hold {
        /// Queue id.
        id: String,
    },
    /// Release a held message; it is due for delivery now.
    Release {
        /// Queue id.
        id: String,
    },
}

impl QueueCommand {
    /// The operation, or why an id names no message.
    fn op(&self) -> Result<Op, ParseOpError> {
        Ok(match self {
            Self::List => Op::List,
            Self::Show { id } => Op::Show(parse_id(id)?),
            Self::Flush { id } => Op::Flush(id.as_deref().map(parse_id).transpose()?),
            Self::Delete { id } => Op::Delete(parse_id(id)?),
            Self::Hold { id } => Op::Hold(parse_id(id)?),
            Self::Release { id } => Op::Release(parse_id(id)?),
        })
    }
}

/// Runs a `queue` subcommand with the configuration at `config` (the embedded default when
/// `None`); returns the exit code.
pub fn run(config: Option<&Path>, command: &QueueCommand) -> i32 {
    let loaded = match load(config) {
        Ok(loaded) => loaded,
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            let errors = diags.iter().filter(|d| d.is_error()).count();
            eprintln!("{errors} error(s); configuration not valid");
            return EX_CONFIG;
        }
    };
    let op = match command.op() {
        Ok(op) => op,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let spool_dir = &loaded.config.server.spool_dir;
    let response = match control::request(&control::socket_path(spool_dir), &op, ANSWER_TIMEOUT) {
        Ok(response) => response,
        Err(ClientError::NotRunning) => offline(spool_dir, &op),
        Err(e) => {
            eprintln!("portcullis: {e}; the spool was not touched");
            return 1;
        }
    };
    if response.ok {
        print!("{}", response.text);
        0
    } else {
        eprint!("{}", response.text);
        1
    }
}

/// No server runs: the same operation on the spool itself.
fn offline(spool_dir: &Path, op: &Op) -> Response {
    // Spool::open would create a missing spool; a mistyped path must not look like an
    // empty queue.
    if !spool_dir.join("queue").is_dir() {
        return Response::error(format!(
            "no spool at {} (no queue/ directory: has the server run with this configuration?)\n",
            spool_dir.display()
        ));
    }
    let spool = match Spool::open(spool_dir) {
        Ok(spool) => spool,
        Err(e) => return Response::error(format!("cannot open the spool: {e}\n")),
    };
    let response = queue_ops::execute(&spool, op, crate::clock::unix_secs());
    if op.changes_spool() && response.ok {
        eprintln!("(server not running: changed the spool directly)");
    }
    response
}
