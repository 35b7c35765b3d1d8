//! Pure policy decisions for Portcullis.
//!
//! Role: answer the session's questions ([`portcullis_smtp::Ask`]) with a
//! [`portcullis_smtp::Verdict`]. Every defence will live here as one module with the same
//! shape (design.md §3: detection apart from action, time as an argument); today the crate
//! holds the one decision every MX needs, which recipients are ours ([`recipients`]), and
//! the access-map checks of the dialogue (`Connect:`, `From:`, `To:`, `delay_checks`;
//! [`checks`]).
//!
//! Must not: perform I/O, read the clock, or depend on tokio. Everything it needs (users,
//! domains, counters) is passed in, so each decision is a plain function testable with tables
//! and golden scripts.

#![warn(missing_docs)]

pub mod access;
pub mod admission;
pub mod anvil;
pub mod checks;
pub mod greet_pause;
pub mod recipients;

pub use access::{AccessMap, Action, Diagnostic, Entry, Parsed, Tag, UserStep};
pub use recipients::{LocalRecipients, RecipientVerdict, RelayRights};

use portcullis_smtp::{Ask, Verdict};

/// Everything policy knows, resolved once per configuration load.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Local domains and users.
    pub recipients: LocalRecipients,
}

impl Policy {
    /// Answers one of the session's questions (one arm per verb; each a single call);
    /// `relay` is what the client and the recipient's domain may relay.
    pub fn decide(&self, ask: &Ask, relay: RelayRights) -> Verdict {
        match ask {
            Ask::Helo { .. } | Ask::Mail { .. } | Ask::Data => Verdict::Accept,
            Ask::Rcpt { recipient, .. } => self.recipients.check_rcpt(recipient, relay),
        }
    }
}
