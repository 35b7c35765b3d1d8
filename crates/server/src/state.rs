//! Shared server state: what every connection and the queue runner can reach.
//!
//! Role: [`Runtime`] is everything derived from one configuration load (session settings,
//! policy, the access map, the name resolver, the STARTTLS certificate); it sits in an `ArcSwap` so SIGHUP (or a changed
//! access file) replaces it atomically while sessions in flight keep the one they started with.
//! [`Shared`] holds the long-lived handles (telemetry, spool, committer, queue-id generator,
//! queue runner notifier, the greet-pause pass cache, the per-client connection counts, the
//! load readings).
//!
//! Must not: hold locks across awaits; everything here is either immutable or internally
//! synchronised, and every lock is held for a map operation only.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use portcullis_config::{BareLf, Config};
use portcullis_policy::access::AccessMap;
use portcullis_policy::anvil::MemoryAnvil;
use portcullis_policy::greet_pause::PassCache;
use portcullis_policy::{LocalRecipients, Policy};
use portcullis_smtp::{BareLineEndings, DefenceActions, SessionConfig};
use portcullis_spool::{Committer, QueueIdGen, Spool};

use crate::access::{FileStamp, LoadedMap};
use crate::dns::ReverseLookup;
use crate::dns::mx::MxLookup;
use crate::load::LoadMonitor;
use crate::queue::QueueHandle;
use crate::relay_tls::RelayTls;
use crate::telemetry::Telemetry;
use crate::tls::Tls;

/// Everything resolved from one configuration load.
pub struct Runtime {
    /// The validated configuration.
    pub config: Config,
    /// Settings for new sessions.
    pub session: Arc<SessionConfig>,
    /// Decisions.
    pub policy: Policy,
    /// The Sendmail access map (empty without `[access] file`).
    pub access: Arc<AccessMap>,
    /// The access file's stamp when it was read (for the change watcher).
    pub access_stamp: Option<FileStamp>,
    /// Client host names.
    pub names: Arc<dyn ReverseLookup>,
    /// STARTTLS towards next hops (built here, so once per load, never per connection).
    pub relay_tls: RelayTls,
    /// STARTTLS, when `[tls]` has a certificate (a session keeps the one it started with, so
    /// a reload with a new certificate affects new sessions only).
    pub tls: Option<Tls>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.config.origin)
            .field("access_entries", &self.access.len())
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Resolves a configuration once (parse, don't validate: no string handling later).
    ///
    /// # Errors
    /// When the TLS configuration cannot be built from the (already checked) certificate.
    pub fn new(
        config: Config,
        access: &LoadedMap,
        names: Arc<dyn ReverseLookup>,
    ) -> Result<Self, String> {
        let tls = config.tls.as_ref().map(Tls::new).transpose()?;
        let session = SessionConfig {
            hostname: config.server.hostname.clone(),
            max_message_bytes: config.server.max_message_bytes,
            bare_line_endings: match config.smtp.bare_lf {
                BareLf::Reject => BareLineEndings::Reject,
                BareLf::Normalize => BareLineEndings::Normalize,
            },
            timeouts: config.timeouts,
            delay_budget: config.limits.session_delay_budget,
            max_recipients_per_message: config.limits.max_recipients_per_message as usize,
            bad_rcpt_throttle: config.limits.bad_rcpt_throttle,
            bad_rcpt_throttle_delay: config.limits.bad_rcpt_throttle_delay,
            bad_rcpt_shutdown: config.limits.bad_rcpt_shutdown,
            pipelining: config.smtp.pipelining,
            max_noop_commands: config.limits.max_noop_commands,
            actions: DefenceActions {
                open_proxy: config.smtp.open_proxy_action,
                max_recipients: config.limits.max_recipients_action,
                bad_rcpt: config.limits.bad_rcpt_action,
                stuffing: config.smtp.stuffing_action,
                pipelining: config.smtp.pipelining_action,
                command_abuse: config.limits.command_abuse_action,
            },
            starttls: tls.is_some(),
            ..SessionConfig::new(config.server.hostname.clone())
        };
        let recipients = LocalRecipients::new(
            config.local.domains.iter().cloned(),
            config.local.users.iter().cloned(),
        )
        .with_relay_domains(config.relay.domains.iter().cloned());
        Ok(Self {
            session: Arc::new(session),
            policy: Policy { recipients },
            access: access.map.clone(),
            access_stamp: access.stamp,
            names,
            relay_tls: RelayTls::new(&config.routes),
            config,
            tls,
        })
    }

    /// The same runtime with another access map (the file changed).
    fn with_access(&self, access: &LoadedMap) -> Self {
        Self {
            config: self.config.clone(),
            session: self.session.clone(),
            policy: self.policy.clone(),
            access: access.map.clone(),
            access_stamp: access.stamp,
            names: self.names.clone(),
            relay_tls: self.relay_tls.clone(),
            tls: self.tls.clone(),
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
    /// Clients that waited for their greeting recently (not paused again).
    pub passed: Mutex<PassCache>,
    /// Serialises the two ways the runtime is replaced (SIGHUP, access file change).
    pub reload_lock: Mutex<()>,
    /// Per-client connection counts (rate and concurrency).
    pub anvil: Arc<MemoryAnvil>,
    /// Load readings for `[load]`.
    pub load: LoadMonitor,
    /// MX lookups for relay delivery (set up from `[dns]` at start).
    pub mx: Arc<dyn MxLookup>,
}

impl Shared {
    /// Installs a whole new runtime (SIGHUP) and applies its pass-cache limits.
    pub fn replace_runtime(&self, runtime: Runtime) {
        let _guard = self.reload_lock.lock();
        let gp = runtime.config.greet_pause;
        if let Ok(mut cache) = self.passed.lock() {
            cache.reconfigure(gp.pass_ttl, gp.pass_cache_max);
        }
        let config = &runtime.config;
        self.anvil.reconfigure(
            config.rate_control.window,
            config.limits.max_tracked_clients,
        );
        self.runtime.store(Arc::new(runtime));
    }

    /// Installs a new access map read from `path`, unless a reload meanwhile pointed the
    /// configuration at another file.
    pub fn replace_access(&self, path: &Path, access: LoadedMap) {
        let _guard = self.reload_lock.lock();
        let current = self.runtime.load();
        if current.config.access.file.as_deref() == Some(path) {
            self.runtime.store(Arc::new(current.with_access(&access)));
        }
    }

    /// True when `addr` waited for a greeting within `pass_ttl`.
    pub fn has_passed(&self, addr: IpAddr, now: Instant) -> bool {
        self.passed.lock().is_ok_and(|c| c.contains(addr, now))
    }

    /// `addr` waited for its greeting.
    pub fn remember_pass(&self, addr: IpAddr, now: Instant) {
        if let Ok(mut c) = self.passed.lock() {
            c.insert(addr, now);
        }
    }
}
