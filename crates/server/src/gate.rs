//! Server-wide admission at the accept loops: Sendmail's MaxDaemonChildren
//! (`[limits] max_sessions`), ConnectionRateThrottle (`connection_rate_throttle`) and
//! RefuseLA (the `refuse_*` thresholds of `[load]`, see [`crate::load`]).
//!
//! While a refuse threshold is reached the loops accept nothing (new clients wait in the
//! kernel backlog) and look again every second; an accept loop idle in `accept()` looks too,
//! so a refusal does not wait for the next client to take effect.
//!
//! Role: before each accept, wait for a session slot (`max_sessions_action = "wait"`: new
//! clients wait in the kernel backlog) and for the rate to allow one more connection (the
//! excess is late, never refused). With `"refuse"`, a connection over the limit is accepted
//! and told `421 4.3.2 <hostname> Too many concurrent SMTP connections; please try again
//! later`. Both limits are read at start-up (a change takes a restart).
//!
//! Must not: refuse for the rate (Sendmail only defers), or hold a slot past the session (the
//! permit travels with the connection in its [`crate::admission::Ticket`]).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use portcullis_config::{LimitsConfig, MaxSessionsAction};
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::load::{LoadAction, Reading};
use crate::state::Shared;
use crate::telemetry::Event;

/// How often a refusing accept loop looks at the load again.
const LOAD_RECHECK: Duration = Duration::from_secs(1);

/// The accept loops' shared limits.
#[derive(Debug)]
pub struct Gate {
    sessions: Option<Arc<Semaphore>>,
    max: u32,
    action: MaxSessionsAction,
    waiting: AtomicBool,
    /// Not accepting because a `refuse_*` load threshold is reached.
    refusing: AtomicBool,
    /// A connection has been accepted since start (Sendmail logs "accepting connections
    /// again" only when it had accepted before).
    accepted_once: AtomicBool,
    /// Sessions in flight: from accept to the end of the session, through the pause.
    in_flight: Arc<AtomicU32>,
    rate: u32,
    /// The current one-second window's start and the connections let through in it.
    window: Mutex<(Option<Instant>, u32)>,
}

impl Gate {
    /// The limits from `[limits]`.
    pub fn new(limits: &LimitsConfig) -> Self {
        let max = limits.max_sessions;
        Self {
            sessions: (max > 0).then(|| Arc::new(Semaphore::new(max as usize))),
            max,
            action: limits.max_sessions_action,
            waiting: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
            accepted_once: AtomicBool::new(false),
            in_flight: Arc::new(AtomicU32::new(0)),
            rate: limits.connection_rate_throttle,
            window: Mutex::new((None, 0)),
        }
    }

    /// Waits until one more connection may be accepted; returns its session slot (when
    /// `max_sessions` is set and waits), or None when shutdown came first.
    pub async fn before_accept(
        &self,
        shared: &Shared,
        shutdown: &CancellationToken,
    ) -> Option<Option<OwnedSemaphorePermit>> {
        let permit = match &self.sessions {
            Some(sem) if self.action == MaxSessionsAction::Wait => {
                match sem.clone().try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) => {
                        if !self.waiting.swap(true, Ordering::Relaxed) {
                            shared.telemetry.emit(Event::DaemonRejecting {
                                sessions: self.max,
                                max: self.max,
                            });
                        }
                        let p = tokio::select! {
                            biased;
                            () = shutdown.cancelled() => return None,
                            p = sem.clone().acquire_owned() => p.ok()?,
                        };
                        if self.waiting.swap(false, Ordering::Relaxed) {
                            shared.telemetry.emit(Event::DaemonAccepting);
                        }
                        Some(p)
                    }
                }
            }
            _ => None,
        };
        // After the wait for a slot: the load may have risen meanwhile.
        self.wait_for_load(shared, shutdown).await?;
        if self.rate > 0 {
            while let Some(until) = self.take_rate() {
                shared
                    .telemetry
                    .emit(Event::DaemonDeferring { rate: self.rate });
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep_until(tokio::time::Instant::from_std(until)) => {}
                }
            }
        }
        Some(permit)
    }

    /// While a `refuse_*` threshold of `[load]` is reached, accepts nothing (Sendmail's
    /// RefuseLA; new clients wait in the kernel backlog), looking again every second. None
    /// when shutdown came first.
    async fn wait_for_load(&self, shared: &Shared, shutdown: &CancellationToken) -> Option<()> {
        loop {
            let Some(reading) = self.load_refuses(shared) else {
                if self.refusing.swap(false, Ordering::Relaxed)
                    && self.accepted_once.load(Ordering::Relaxed)
                {
                    shared.telemetry.emit(Event::DaemonAccepting);
                }
                return Some(());
            };
            if !self.refusing.swap(true, Ordering::Relaxed) {
                shared.telemetry.emit(Event::DaemonRefusingLoad { reading });
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(LOAD_RECHECK) => {}
            }
        }
    }

    /// The reading that makes the accept loops stop, if any. Sessions in flight are counted
    /// now rather than taken from the last sample, so the limit is exact.
    pub fn load_refuses(&self, shared: &Shared) -> Option<Reading> {
        shared.load.set_sessions_pct(self.sessions_pct());
        shared
            .load
            .over(&shared.runtime.load().config.load, LoadAction::Refuse)
    }

    /// Sessions in flight in percent of `max_sessions` (None when there is no limit). The
    /// count is of sessions, not of semaphore permits: an accept loop waiting for its next
    /// client already holds the permit that client will use.
    pub fn sessions_pct(&self) -> Option<u32> {
        self.sessions.as_ref()?;
        let max = u64::from(self.max.max(1));
        let used = u64::from(self.in_flight.load(Ordering::Relaxed));
        u32::try_from(used * 100 / max).ok()
    }

    /// Records that a connection was accepted.
    pub fn accepted(&self) {
        self.accepted_once.store(true, Ordering::Relaxed);
    }

    /// The place of a connection accepted just now in the server-wide counts, holding its
    /// `max_sessions` permit (if any) until the session ends.
    pub fn session(&self, permit: Option<OwnedSemaphorePermit>) -> SessionSlot {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        SessionSlot {
            _permit: permit,
            count: self.in_flight.clone(),
        }
    }

    /// Counts one connection in the current second; or, when the second is full, when the
    /// next one begins.
    fn take_rate(&self) -> Option<Instant> {
        let now = clock::now();
        let Ok(mut w) = self.window.lock() else {
            return None;
        };
        let start = match w.0 {
            Some(start) if now.saturating_duration_since(start) < Duration::from_secs(1) => start,
            _ => {
                *w = (Some(now), 0);
                now
            }
        };
        if w.1 < self.rate {
            w.1 += 1;
            return None;
        }
        Some(start + Duration::from_secs(1))
    }

    /// After accept, with `max_sessions_action = "refuse"`: the session's slot (None when
    /// the limit is off or waits), or `Full` (the caller refuses the connection).
    pub fn slot_or_refuse(&self) -> Slot {
        match &self.sessions {
            Some(sem) if self.action == MaxSessionsAction::Refuse => {
                match sem.clone().try_acquire_owned() {
                    Ok(p) => Slot::Got(Some(p)),
                    Err(_) => Slot::Full,
                }
            }
            _ => Slot::Got(None),
        }
    }
}

/// A session's place in the server-wide counts; released when dropped (with the session's
/// [`crate::admission::Ticket`]).
#[derive(Debug)]
pub struct SessionSlot {
    _permit: Option<OwnedSemaphorePermit>,
    count: Arc<AtomicU32>,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A session slot after accept.
#[derive(Debug)]
pub enum Slot {
    /// Go on (holding the slot, if the limit is on).
    Got(Option<OwnedSemaphorePermit>),
    /// `max_sessions` reached with `"refuse"`.
    Full,
}

/// Tells a client over `max_sessions` so, and closes.
pub async fn refuse(mut stream: tokio::net::TcpStream, hostname: String) {
    let line = format!(
        "421 4.3.2 {hostname} Too many concurrent SMTP connections; please try again later\r\n"
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = stream.write_all(line.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
