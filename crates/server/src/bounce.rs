//! Sending a failed message's delivery status notification (a bounce) through the queue.
//!
//! Role: decide who gets the DSN and queue it like any other message. The envelope sender
//! gets it; a message from the null sender `<>` never bounces to `<>` (RFC 5321 §6.1):
//! its notice goes to the local postmaster (Sendmail's double bounce), and a notice to the
//! postmaster that fails itself is logged and dropped, so nothing loops. The DSN is built
//! by [`crate::dsn`] and committed to the spool with fsyncs before the caller marks the
//! recipients it reports as final.
//!
//! Must not: deliver anything itself, or bounce to `<>`.

use std::time::Duration;

use portcullis_spool::{Envelope, NewMessage, StoredMessage};

use crate::dsn;
use crate::state::{Runtime, Shared};
use crate::telemetry::Event;

/// The `protocol` of a DSN to the envelope sender.
pub const DSN_PROTOCOL: &str = "DSN";
/// The `protocol` of a notice to the postmaster; when one of those fails, it is dropped.
pub const POSTMASTER_PROTOCOL: &str = "DSN-POSTMASTER";

/// A recipient that failed for good.
#[derive(Clone, Debug)]
pub struct Failed {
    /// Index into the envelope's recipients.
    pub index: usize,
    /// The enhanced status code (`5.1.1`, `4.4.7` when the lifetime ran out).
    pub status: String,
    /// The next hop that gave the reply, when it came from one.
    pub remote_mta: Option<String>,
    /// The reply, or our account of the failure.
    pub diagnostic: String,
}

/// Queues the DSN for `failed` recipients of `stored` (or logs why none is sent). Ok when
/// the recipients may be marked final; Err when the DSN could not be spooled (try later).
pub fn send(
    shared: &Shared,
    rt: &Runtime,
    stored: &StoredMessage,
    failed: &[Failed],
    expired: bool,
    now: i64,
) -> Result<(), String> {
    let env = &stored.envelope;
    let (to, protocol) = match (env.sender.as_str(), env.protocol.as_str()) {
        ("", POSTMASTER_PROTOCOL) => {
            shared.telemetry.emit(Event::DsnDropped {
                qid: env.id.as_str(),
                reason: "a notice to the postmaster could not be delivered",
            });
            return Ok(());
        }
        // A bounce (ours or anyone's) that fails: the postmaster hears of it.
        ("", _) => ("postmaster", POSTMASTER_PROTOCOL),
        (sender, _) => (sender, DSN_PROTOCOL),
    };
    let stamp =
        |secs: i64| jiff::Timestamp::from_second(secs).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let received_from = if env.client_name.is_empty() {
        format!("[{}]", env.client_addr)
    } else {
        format!("{} [{}]", env.client_name, env.client_addr)
    };
    let failures: Vec<dsn::Failure<'_>> = failed
        .iter()
        .filter_map(|f| {
            Some(dsn::Failure {
                recipient: env.recipients.get(f.index)?.as_str(),
                status: &f.status,
                remote_mta: f.remote_mta.as_deref(),
                diagnostic: Some(&f.diagnostic),
                last_attempt: stamp(now),
            })
        })
        .collect();
    let lifetime = rt.config.queue.lifetime;
    let dsn_id = shared.ids.next(now);
    let data = dsn::build(&dsn::Report {
        reporting_mta: &rt.config.server.hostname,
        queue_id: env.id.as_str(),
        arrival: stamp(env.received_at),
        now: stamp(now),
        received_from: &received_from,
        original_sender: &env.sender,
        to,
        original: &stored.data,
        failures: &failures,
        expired: expired.then_some(lifetime),
    });
    let message = NewMessage {
        envelope: Envelope {
            id: dsn_id.clone(),
            received_at: now,
            sender: String::new(),
            recipients: vec![to.to_owned()],
            client_addr: "127.0.0.1".to_owned(),
            client_name: "localhost".to_owned(),
            helo: rt.config.server.hostname.clone(),
            protocol: protocol.to_owned(),
            msgid: None,
        },
        data,
    };
    shared
        .spool
        .commit_batch(std::slice::from_ref(&message))
        .pop()
        .unwrap_or_else(|| {
            Err(portcullis_spool::SpoolError::NotFound {
                id: dsn_id.to_string(),
            })
        })
        .map_err(|e| e.to_string())?;
    shared.queue.notify(dsn_id.clone());
    let reason = failed
        .first()
        .map(|f| f.diagnostic.as_str())
        .unwrap_or_default();
    let reason = if expired {
        format!(
            "Cannot send message for {}",
            dsn::interval(Duration::from_secs(lifetime.as_secs()))
        )
    } else {
        reason.to_owned()
    };
    shared.telemetry.emit(Event::DsnQueued {
        qid: env.id.as_str(),
        dsn_qid: dsn_id.as_str(),
        to,
        reason: &reason,
    });
    Ok(())
}
