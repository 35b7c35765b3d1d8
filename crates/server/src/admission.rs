//! Connection admission, per client: Sendmail's ratecontrol and conncontrol.
//!
//! Role: at accept, count the connection in the anvil (`portcullis_policy::anvil`, clients
//! grouped by `[limits] client_ipv4_prefix` / `client_ipv6_prefix`), look up the client's
//! `ClientRate:` and `ClientConn:` limits and `Connect:` exemption in the access map, let
//! `portcullis_policy::admission::judge` decide, apply the defence's action and log
//! Sendmail's check_relay line. The decision comes before the greeting pause and without
//! waiting for the client's name: a flood is turned away at once, at the cost of Sendmail's
//! `arg1=<name>` (we log `[ip]`) and of `Connect:` host-name exemptions.
//!
//! Must not: decide anything itself (policy does), or hold the count past the connection
//! (the [`Ticket`] releases it when dropped).

use std::net::IpAddr;
use std::sync::Arc;

use portcullis_config::Action;
use portcullis_policy::admission::{Refusal, client_limits, judge};
use portcullis_policy::anvil::{self, Anvil, ClientKey, ConnGuard};

use crate::clock;
use crate::gate::SessionSlot;
use crate::state::{Runtime, Shared};
use crate::telemetry::Event;

/// What a connection holds for its whole life: its place in the per-client counts and its
/// session slot (`max_sessions`).
#[derive(Debug, Default)]
pub struct Ticket {
    _client: Option<ConnGuard>,
    _session: Option<SessionSlot>,
    /// Its admission line was held back by a rejection summary.
    held_back: bool,
}

impl Ticket {
    /// The connection's admission line was held back by a rejection summary (so is its
    /// `session closed:` line).
    pub fn held_back(&self) -> bool {
        self.held_back
    }

    /// The ticket holding `slot` too.
    pub fn with_slot(self, slot: SessionSlot) -> Self {
        Self {
            _session: Some(slot),
            ..self
        }
    }
}

/// How the connection goes on (two bytes: a held connection keeps it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// As usual; with `Some`, restricted commands get this refusal's 452 (Sendmail's
    /// null-server mode, `terminate = false`).
    Proceed(Option<Refusal>),
    /// This refusal's 421 in place of the greeting, then close (`terminate = true`).
    Refuse(Refusal),
    /// Close without a word (`action = "drop"`).
    Drop,
}

/// Counts the connection from `peer` and decides whether it may go on.
pub fn check_client(shared: &Shared, rt: &Runtime, peer: IpAddr) -> (Ticket, Entry) {
    let limits = &rt.config.limits;
    let key = ClientKey::new(peer, limits.client_ipv4_prefix, limits.client_ipv6_prefix);
    let counter: Arc<dyn Anvil> = shared.anvil.clone();
    let (counts, guard) = anvil::open(&counter, key, clock::epoch_secs());
    let mut ticket = Ticket {
        _client: Some(guard),
        _session: None,
        held_back: false,
    };
    let client = client_limits(&rt.access, peer);
    let Some(refusal) = judge(&client, counts) else {
        return (ticket, Entry::Proceed(None));
    };
    let (action, terminate, limit, count) = match refusal {
        Refusal::Rate => (
            rt.config.rate_control.action,
            rt.config.rate_control.terminate,
            client.rate,
            counts.rate,
        ),
        Refusal::Conn => (
            rt.config.conn_control.action,
            rt.config.conn_control.terminate,
            client.conn,
            counts.open,
        ),
    };
    let reply = refusal.reply(terminate);
    let host = format!("[{peer}]");
    let entry = limit.map_or_else(String::new, |l| {
        format!("{}:{}", rt.access.source(), l.line)
    });
    ticket.held_back = !shared.telemetry.emit(Event::ClientLimited {
        host: &host,
        client: peer,
        addr: &peer.to_string(),
        relay: &host,
        reply: &reply.to_log_string(),
        defence: refusal.name(),
        action,
        key: &key.to_string(),
        count,
        limit: limit.map_or(0, |l| l.value),
        entry: &entry,
    });
    let entry = match action {
        Action::Ignore => Entry::Proceed(None),
        Action::Drop => Entry::Drop,
        Action::Enforce if terminate => Entry::Refuse(refusal),
        Action::Enforce => Entry::Proceed(Some(refusal)),
    };
    (ticket, entry)
}
