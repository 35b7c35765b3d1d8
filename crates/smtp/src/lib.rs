//! Sans-IO SMTP server core for Portcullis.
//!
//! Role: everything about the SMTP dialogue that does not need a socket, a clock or a disk:
//! command and envelope-address parsing ([`command`], [`address`]), reply texts ([`reply`]),
//! DATA framing with its limits ([`data`]) and the [`Session`] state machine that ties them
//! together; and the other side, the relay/LMTP [`Client`] of one delivery attempt
//! ([`client`]).
//!
//! Must not: perform I/O, read the clock, spawn tasks or log. Time comes in as an argument
//! (`now: Instant`), bytes come in through [`Session::handle_input`], and everything the
//! session wants done (replies to write, questions for policy, messages to make durable,
//! findings to log, the next deadline) comes out through its `poll_*` methods. This keeps
//! every behaviour testable with made-up instants and no runtime (design.md §3.1, §3.5).
//!
//! Invariants: every buffer is bounded (command lines by [`MAX_COMMAND_LINE`], message data by
//! the configured maximum, the event queue by construction); no input can make the session
//! panic.

#![warn(missing_docs)]

mod action;
pub mod address;
pub mod client;
pub mod command;
pub mod data;
pub mod pregreet;
pub mod reply;
mod session;

pub use action::Action;
pub use address::{AddressError, Mailbox, ReversePath};
pub use client::{
    Client, ClientConfig, ClientEvent, ClientPhase, Envelope, Extensions, RcptOutcome, RcptStatus,
    StartTls, TlsState,
};
pub use command::{Command, MailParams};
pub use data::{BareLineEndings, DataReceiver};
pub use reply::Reply;
pub use session::{
    Ask, ClientFeatures, ClientInfo, CommandDelay, CommitError, DELAY_NOTE_EVERY, DefenceActions,
    Event, Finding, Message, Note, RcptFlood, Session, SessionConfig, SessionStats, Timeouts,
    TlsInfo, TlsVerify, Verdict, WaitPhase, received_header, sendmail_address,
};

/// RFC 5321 §4.5.3.1.4: the maximum total length of a command line including the CRLF.
pub const MAX_COMMAND_LINE: usize = 512;

/// RFC 5321 §4.5.3.1.6: the maximum total length of a text line including the CRLF.
pub const MAX_TEXT_LINE: usize = 1000;
