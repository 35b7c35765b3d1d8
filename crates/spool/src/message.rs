//! What the spool stores: the envelope, the message bytes and the delivery state.
//!
//! Role: plain data types shared by the server, the spool and the queue runner.
//! Must not: do I/O or validation; the file format lives in `format.rs`.
//! Invariants: `DeliveryState::done` is empty or has one entry per recipient, in
//! `Envelope::recipients` order (`Spool::read` treats anything else as no state).

use crate::id::QueueId;

/// The SMTP envelope and connection facts recorded with a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub id: QueueId,
    /// Unix seconds.
    pub received_at: i64,
    /// Reverse-path without `<>`; `""` for the null sender (RFC 5321 §4.5.5).
    pub sender: String,
    /// Forward-paths without `<>`.
    pub recipients: Vec<String>,
    /// E.g. `"127.0.0.1"` or `"::1"`.
    pub client_addr: String,
    /// Reverse-DNS name, or `""`.
    pub client_name: String,
    /// HELO/EHLO argument, may be `""`.
    pub helo: String,
    /// `"SMTP"` or `"ESMTP"` (for the Received header).
    pub protocol: String,
    /// Message-ID header value if found, for logging.
    pub msgid: Option<String>,
}

/// A message to commit: `data` is the complete message (headers and body, CRLF line
/// ends, dot-stuffing already removed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    pub envelope: Envelope,
    pub data: Vec<u8>,
}

/// A message read back from the queue with its delivery state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub envelope: Envelope,
    pub data: Vec<u8>,
    pub state: DeliveryState,
}

/// A message read back without its data ([`crate::Spool::read_envelope`]): what a queue
/// listing needs, at the cost of the envelope only, however large the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEnvelope {
    pub envelope: Envelope,
    /// The length of the message data in bytes (its `data-len`).
    pub data_len: usize,
    pub state: DeliveryState,
}

/// Delivery progress, kept in the sidecar file `queue/<id>.state`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryState {
    pub attempts: u32,
    /// Unix seconds; 0 = now.
    pub next_attempt_at: i64,
    /// Per recipient, in `Envelope::recipients` order; empty = none done.
    pub done: Vec<bool>,
    pub last_error: Option<String>,
    /// Per recipient, in `Envelope::recipients` order: its last temporary failure;
    /// empty = none recorded.
    pub rcpt_errors: Vec<Option<String>>,
    pub held: bool,
}
