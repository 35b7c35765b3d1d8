//! Portcullis spool: makes an accepted message durable before the server says 250.
//!
//! Role: queue files with group commit ([`Spool::commit_batch`], driven by the
//! [`Committer`] thread pool), strict reading (whole, or [`Spool::read_envelope`] without
//! the data, for queue listings) and start-up [`Spool::recover`]y,
//! per-message delivery state sidecars, queue ids ([`QueueIdGen`]) and durable Maildir
//! delivery ([`deliver`]).
//! Must not: read the clock (time is an argument, unix seconds), use async I/O (the API
//! is synchronous std::fs; the server calls it from its own threads), or delete a file
//! that may hold an acknowledged message.
//! Invariants: a message that got 250 is in `queue/` complete and fsynced: written to
//! `tmp/`, fdatasynced, renamed into `queue/`, and `queue/` fsynced, once per batch. A
//! torn file fails verification (it must end with its END record) and is quarantined.

mod commit;
mod error;
mod format;
mod fsutil;
mod id;
mod maildir;
mod message;
mod spool;

pub use commit::{CommitCallback, CommitOptions, Committer};
pub use error::{SpoolError, SubmitError};
pub use id::{ParseQueueIdError, QueueId, QueueIdGen};
pub use maildir::{MaildirItem, deliver, deliver_batch, unique_name};
pub use message::{DeliveryState, Envelope, NewMessage, StoredEnvelope, StoredMessage};
pub use spool::{Recovery, Spool};
