//! Shared server state: what every connection and the queue runner can reach.
//!
//! Role: [`Runtime`] is everything derived from one configuration load (session settings,
//! policy); it sits in an `ArcSwap` so SIGHUP replaces it atomically while sessions in flight
//! keep the one they started with. [`Shared`] holds the long-lived handles (telemetry, spool,
//! committer, queue-id generator, queue runner notifier).
//!
//! Must not: hold locks across awaits; everything here is either immutable or internally
//! synchronised.

use std::sync::Arc;

use arc_swap::ArcSwap;
use portcullis_config::{BareLf, Config};
use portcullis_policy::{LocalRecipients, Policy};
use portcullis_smtp::{BareLineEndings, SessionConfig};
use portcullis_spool::{Committer, QueueIdGen, Spool};

use crate::queue::QueueHandle;
use crate::telemetry::Telemetry;

/// Everything resolved from one configuration load.
#[derive(Debug)]
pub struct Runtime {
    /// The validated configuration.
    pub config: Config,
    /// Settings for new sessions.
    pub session: Arc<SessionConfig>,
    /// Decisions.
    pub policy: Policy,
}

impl Runtime {
    /// Resolves a configuration once (parse, don't validate: no string handling later).
    pub fn new(config: Config) -> Self {
        let session = SessionConfig {
            hostname: config.server.hostname.clone(),
            max_message_bytes: config.server.max_message_bytes,
            bare_line_endings: match config.smtp.bare_lf {
                BareLf::Reject => BareLineEndings::Reject,
                BareLf::Normalize => BareLineEndings::Normalize,
            },
            timeouts: config.timeouts,
            ..SessionConfig::new(config.server.hostname.clone())
        };
        let recipients = LocalRecipients::new(
            config.local.domains.iter().cloned(),
            config.local.users.iter().cloned(),
        );
        Self {
            session: Arc::new(session),
            policy: Policy { recipients },
            config,
        }
    }
}

/// Long-lived handles shared by all tasks.
pub struct Shared {
    /// The current configuration; swapped on reload.
    pub runtime: ArcSwap<Runtime>,
    /// Logs (and later metrics).
    pub telemetry: Telemetry,
    /// The spool directory.
    pub spool: Arc<Spool>,
    /// Group commit of new messages.
    pub committer: Committer,
    /// Queue ids.
    pub ids: QueueIdGen,
    /// Tells the queue runner about new messages.
    pub queue: QueueHandle,
}
