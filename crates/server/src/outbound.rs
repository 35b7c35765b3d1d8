//! Where each queued recipient goes, and relay delivery within the connection limits.
//!
//! Role: [`route`] maps a stored recipient to a Maildir mailbox (a local domain) or a next
//! hop: `[[route]]` (Sendmail's mailertable), an address literal as written, else the
//! domain's MX hosts. [`deliver`] sends one message's relayed recipients, grouped by next
//! hop (one session per hop carries all its recipients), each group holding a slot of
//! `[queue] max_connections` and one of its hop's `connections_per_hop` for as long as it
//! talks to it. The outcomes go back to the queue runner, which settles them.
//!
//! Must not: touch the spool (the runner does, on a blocking thread) or decide retries.
//!
//! Bounds: at most [`MAX_HOPS`] per-hop semaphores are kept; past that, the idle ones are
//! dropped (a hop's count starts again from zero, which can only let a few more through).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use portcullis_config::next_hop::{Host, NextHop, Protocol};
use portcullis_smtp::address::parse_path;
use portcullis_smtp::client::RcptStatus;
use portcullis_smtp::client::{ClientConfig, Envelope};
use portcullis_smtp::{ClientPhase, RcptOutcome, Reply, ReversePath};
use portcullis_spool::StoredMessage;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::relay::{self, AttemptTimeouts};
use crate::state::{Runtime, Shared};
use crate::telemetry::Event;

/// Per-hop semaphores kept at most.
pub const MAX_HOPS: usize = 10_000;

/// Where one recipient goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A local mailbox: (domain, mailbox) under the Maildir root.
    Local(String, String),
    /// A next hop.
    Remote(NextHop),
    /// Nowhere now (a local domain without such a mailbox after a configuration change);
    /// the reason. Retried, as Sendmail does with a temporary failure.
    Nowhere(String),
}

/// The destination of a stored recipient under the current configuration.
pub fn route(rt: &Runtime, rcpt: &str) -> Destination {
    let recipients = &rt.policy.recipients;
    let mailbox = match parse_path(rcpt) {
        Ok(ReversePath::Mailbox(m)) => m,
        Ok(ReversePath::Postmaster) => {
            return match recipients.primary_domain() {
                Some(d) => Destination::Local(d.to_owned(), "postmaster".to_owned()),
                None => Destination::Nowhere("no local domain for postmaster".to_owned()),
            };
        }
        Ok(ReversePath::Null) | Err(_) => {
            return Destination::Nowhere(format!("unusable recipient address {rcpt:?}"));
        }
    };
    if let Some((domain, local)) = recipients.mailbox_for(&mailbox) {
        return Destination::Local(domain, local);
    }
    if !mailbox.is_address_literal() && recipients.is_local_domain(&mailbox.domain) {
        return Destination::Nowhere("not a local mailbox (configuration changed?)".to_owned());
    }
    if mailbox.is_address_literal() {
        // `[192.0.2.1]` and `[IPv6:2001:db8::1]` read as next hops as they are.
        return match NextHop::parse(&format!("smtp:{}", mailbox.domain)) {
            Ok(hop) => Destination::Remote(hop),
            Err(why) => Destination::Nowhere(why),
        };
    }
    match rt.config.routes.lookup(&mailbox.domain) {
        Some(hop) => Destination::Remote(hop.clone()),
        None => Destination::Remote(NextHop::Tcp {
            protocol: Protocol::Smtp,
            host: Host::Mx(mailbox.domain.to_ascii_lowercase()),
            port: Protocol::Smtp.default_port(),
        }),
    }
}

/// The connection slots: all hops together, and per hop.
pub struct Limits {
    total: Arc<Semaphore>,
    per_hop: usize,
    hops: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Limits {
    /// `total` connections at once, `per_hop` to one next hop.
    pub fn new(total: u32, per_hop: u32) -> Self {
        Self {
            total: Arc::new(Semaphore::new(total as usize)),
            per_hop: per_hop as usize,
            hops: Mutex::new(HashMap::new()),
        }
    }

    fn hop(&self, key: &str) -> Arc<Semaphore> {
        let mut hops = self.hops.lock().unwrap_or_else(PoisonError::into_inner);
        if hops.len() >= MAX_HOPS && !hops.contains_key(key) {
            hops.retain(|_, s| Arc::strong_count(s) > 1);
        }
        hops.entry(key.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_hop)))
            .clone()
    }
}

/// One relayed recipient's result.
#[derive(Debug)]
pub struct RelayResult {
    /// Index into the envelope's recipients.
    pub index: usize,
    pub outcome: RcptOutcome,
    /// The peer that decided (`host [ip]`), when one was reached.
    pub relay: Option<String>,
    /// `esmtp` or `lmtp`, for the log's `mailer=`.
    pub mailer: &'static str,
}

/// How long a group waits for a connection slot before its message goes back to the queue.
pub const SLOT_WAIT: Duration = Duration::from_secs(2);

/// `Received:` header fields a message may carry before it is refused as looping
/// (Sendmail's `MaxHopCount`, 25 by default: `554 5.4.6 Too many hops`).
pub const MAX_HOPS_COUNT: usize = 25;

/// What one relay attempt of a message gave.
#[derive(Debug, Default)]
pub struct Delivery {
    /// The recipients that were tried (or failed without a try).
    pub results: Vec<RelayResult>,
    /// Some recipients were not tried: their next hop (or all hops together) had every
    /// connection slot taken. They are tried again soon, without counting an attempt.
    pub busy: bool,
}

/// Delivers the recipients `remote` (index, next hop) of `stored`, one session per next hop,
/// the sessions in parallel. A group whose hop has no free slot (`connections_per_hop`, or
/// `max_connections` for all) within [`SLOT_WAIT`] is not tried now: a job never holds a
/// message in memory for long while it queues behind a slow next hop.
pub async fn deliver(
    shared: Arc<Shared>,
    rt: Arc<Runtime>,
    limits: Arc<Limits>,
    stored: Arc<StoredMessage>,
    remote: Vec<(usize, NextHop)>,
) -> Delivery {
    let hops = received_count(&stored.data);
    if hops > MAX_HOPS_COUNT {
        // A loop (a route or an MX record pointing back here, or between two servers):
        // bounce instead of passing it round again.
        let text = format!("5.4.6 Too many hops {hops} ({MAX_HOPS_COUNT} max)");
        let results = remote
            .into_iter()
            .filter_map(|(index, hop)| {
                Some(RelayResult {
                    index,
                    outcome: RcptOutcome {
                        recipient: stored.envelope.recipients.get(index)?.clone(),
                        status: RcptStatus::PermFail,
                        reply: Reply::new(554, text.clone()),
                        remote: false,
                        phase: ClientPhase::Greeting,
                    },
                    relay: None,
                    mailer: mailer(&hop),
                })
            })
            .collect();
        return Delivery {
            results,
            busy: false,
        };
    }
    let mut groups: Vec<(NextHop, Vec<usize>)> = Vec::new();
    for (index, hop) in remote {
        match groups.iter_mut().find(|(h, _)| *h == hop) {
            Some((_, members)) => members.push(index),
            None => groups.push((hop, vec![index])),
        }
    }
    let eight_bit = stored.data.iter().any(|b| !b.is_ascii());
    let us = Arc::new(relay::Us {
        hostname: rt.config.server.hostname.clone(),
        listen: rt.config.server.listen.clone(),
    });
    let mut tasks = JoinSet::new();
    for (hop, members) in groups {
        let (shared, rt, stored, us) = (shared.clone(), rt.clone(), stored.clone(), us.clone());
        let hop_sem = limits.hop(&hop.to_string());
        let total_sem = limits.total.clone();
        tasks.spawn(async move {
            // The hop's slot first, then the global one (a saturated hop holds no global
            // slot), each waited for a short while only: a slow or dead next hop gives the
            // message back instead of holding it in memory behind its sessions.
            let slots = tokio::time::timeout(SLOT_WAIT, async {
                let hop_slot = hop_sem.acquire_owned().await.ok()?;
                let total_slot = total_sem.acquire_owned().await.ok()?;
                Some((hop_slot, total_slot))
            })
            .await;
            let Ok(Some(_slots)) = slots else {
                return (Vec::new(), true);
            };
            let lmtp = mailer(&hop) == "lmtp";
            let tls = rt.relay_tls.for_hop(&hop);
            let cfg = Arc::new(ClientConfig {
                helo_name: rt.config.server.hostname.clone(),
                lmtp,
                starttls: tls.starttls,
            });
            let env = &stored.envelope;
            let mut envelope = Envelope::new(
                env.sender.clone(),
                members
                    .iter()
                    .filter_map(|&i| env.recipients.get(i).cloned())
                    .collect(),
                stored.data.len() as u64,
            );
            envelope.eight_bit = eight_bit;
            let timeouts = AttemptTimeouts::default();
            let result = relay::deliver_group(
                &hop,
                shared.mx.as_ref(),
                &us,
                cfg,
                &tls,
                envelope,
                &stored.data,
                &timeouts,
            )
            .await;
            for report in &result.tls {
                shared.telemetry.emit(Event::RelayTls {
                    qid: env.id.as_str(),
                    report,
                });
            }
            let mailer = mailer(&hop);
            let results = members
                .into_iter()
                .zip(result.outcomes)
                .map(|(index, outcome)| RelayResult {
                    index,
                    outcome,
                    relay: result.relay.clone(),
                    mailer,
                })
                .collect::<Vec<_>>();
            (results, false)
        });
    }
    let mut busy = false;
    let mut results = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (group, skipped) = done.unwrap_or_default();
        results.extend(group);
        busy |= skipped;
    }
    Delivery { results, busy }
}

/// `esmtp` or `lmtp`, for the log's `mailer=`.
fn mailer(hop: &NextHop) -> &'static str {
    match hop {
        NextHop::LmtpUnix(_)
        | NextHop::Tcp {
            protocol: Protocol::Lmtp,
            ..
        } => "lmtp",
        NextHop::Tcp { .. } => "esmtp",
    }
}

/// How many `Received:` fields the header section of `data` holds.
fn received_count(data: &[u8]) -> usize {
    let head = memchr::memmem::find(data, b"\r\n\r\n").map_or(data, |end| &data[..end + 2]);
    let mut count = usize::from(head.len() >= 9 && head[..9].eq_ignore_ascii_case(b"received:"));
    for at in memchr::memmem::find_iter(head, b"\r\n") {
        let line = &head[at + 2..];
        if line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:") {
            count += 1;
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_fields_are_counted_in_the_header_section_only() {
        assert_eq!(received_count(b""), 0);
        assert_eq!(
            received_count(b"Received: a\r\nSubject: x\r\n\r\nReceived: body\r\n"),
            1
        );
        assert_eq!(
            received_count(b"X: y\r\nRECEIVED: a\r\n  folded\r\nreceived:b\r\n\r\n"),
            2
        );
        assert_eq!(
            received_count(b"X-Received: no\r\nReceivedx: no\r\n\r\n"),
            0
        );
        // No body separator: all of it is the header section.
        assert_eq!(received_count(b"Received: a\r\nReceived: b\r\n"), 2);
    }
}
