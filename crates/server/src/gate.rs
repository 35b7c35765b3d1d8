//! Server-wide admission at the accept loops: Sendmail's MaxDaemonChildren
//! (`[limits] max_sessions`), ConnectionRateThrottle (`connection_rate_throttle`) and
//! RefuseLA (the `refuse_*` thresholds of `[load]`, see [`crate::load`]).
//!
//! Role: before each accept, wait while a refuse threshold is reached (new clients wait in
//! the kernel backlog; an accept loop idle in `accept()` looks at the load every second too)
//! and for the rate to allow one more connection (the excess is late, never refused). After
//! accept, take the session's place in the count of sessions in flight: at `max_sessions`,
//! `"wait"` keeps the connection, without a greeting, until a session ends (and accepts no
//! other meanwhile, so the rest wait in the backlog); `"refuse"` answers `421 4.3.2
//! <hostname> Too many concurrent SMTP connections; please try again later`.
//!
//! The count is exact (a compare-and-swap below the limit, released by the session's
//! [`SessionSlot`]) and the limits are read from the current configuration at each
//! connection, so SIGHUP changes them at once; sessions open at a reload that lowers
//! `max_sessions` finish normally, and no new one starts until the count is below the new
//! limit.
//!
//! Must not: refuse for the rate (Sendmail only defers), or count a session past its end
//! (the slot travels with the connection in its [`crate::admission::Ticket`]).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use portcullis_config::MaxSessionsAction;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::load::{LoadAction, Reading};
use crate::state::Shared;
use crate::telemetry::Event;

/// How often a refusing accept loop looks at the load again, and a loop waiting for a
/// session to end looks at `max_sessions` again (a reload may have raised it).
const RECHECK: Duration = Duration::from_secs(1);

/// Sessions in flight, and a bell rung when one ends.
#[derive(Debug, Default)]
struct Sessions {
    count: AtomicU32,
    ended: Notify,
}

/// The accept loops' shared state.
#[derive(Debug, Default)]
pub struct Gate {
    sessions: Arc<Sessions>,
    /// Waiting at `max_sessions` (so the log lines come once per episode).
    waiting: AtomicBool,
    /// Not accepting because a `refuse_*` load threshold is reached.
    refusing: AtomicBool,
    /// A connection has been accepted since start (Sendmail logs "accepting connections
    /// again" only when it had accepted before).
    accepted_once: AtomicBool,
    /// The current one-second window's start and the connections let through in it.
    window: Mutex<(Option<Instant>, u32)>,
}

/// What to do with a connection accepted just now.
#[derive(Debug)]
pub enum Admit {
    /// Go on, counted as a session.
    Session(SessionSlot),
    /// `max_sessions` reached with `"refuse"`.
    Full,
}

impl Gate {
    /// No sessions yet; the limits are read from the configuration at each use.
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits until one more connection may be accepted: not while a `refuse_*` load
    /// threshold is reached, and no more than `connection_rate_throttle` per second. None
    /// when shutdown came first.
    pub async fn before_accept(&self, shared: &Shared, shutdown: &CancellationToken) -> Option<()> {
        self.wait_for_load(shared, shutdown).await?;
        loop {
            let rate = shared.runtime.load().config.limits.connection_rate_throttle;
            let Some(until) = self.take_rate(rate) else {
                return Some(());
            };
            shared.telemetry.emit(Event::DaemonDeferring { rate });
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(until)) => {}
            }
        }
    }

    /// The session's place for a connection accepted just now, waiting at `max_sessions`
    /// (`"wait"`) until a session ends. At shutdown the connection is let through, so the
    /// holder tells it `421 ... shutting down` rather than it being dropped unanswered.
    pub async fn after_accept(&self, shared: &Shared, shutdown: &CancellationToken) -> Admit {
        self.accepted_once.store(true, Ordering::Relaxed);
        loop {
            let ended = self.sessions.ended.notified();
            tokio::pin!(ended);
            // Registered before the count is read, so an end in between is not missed.
            ended.as_mut().enable();
            let limits = shared.runtime.load().config.limits;
            let max = limits.max_sessions;
            if let Some(slot) = self.try_take(max) {
                if self.waiting.swap(false, Ordering::Relaxed) {
                    shared.telemetry.emit(Event::DaemonAccepting);
                }
                return Admit::Session(slot);
            }
            if limits.max_sessions_action == MaxSessionsAction::Refuse {
                return Admit::Full;
            }
            if !self.waiting.swap(true, Ordering::Relaxed) {
                shared.telemetry.emit(Event::DaemonRejecting {
                    sessions: self.sessions.count.load(Ordering::Relaxed),
                    max,
                });
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Admit::Session(self.take_anyway()),
                () = &mut ended => {}
                () = tokio::time::sleep(RECHECK) => {}
            }
        }
    }

    /// One more session if that stays within `max` (0 = unlimited).
    fn try_take(&self, max: u32) -> Option<SessionSlot> {
        self.sessions
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then(|| n.saturating_add(1))
            })
            .ok()?;
        Some(SessionSlot {
            sessions: self.sessions.clone(),
        })
    }

    /// One more session whatever the limit.
    fn take_anyway(&self) -> SessionSlot {
        self.sessions.count.fetch_add(1, Ordering::AcqRel);
        SessionSlot {
            sessions: self.sessions.clone(),
        }
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
                () = tokio::time::sleep(RECHECK) => {}
            }
        }
    }

    /// The reading that makes the accept loops stop, if any. Sessions in flight are counted
    /// now rather than taken from the last sample, so the limit is exact.
    pub fn load_refuses(&self, shared: &Shared) -> Option<Reading> {
        shared.load.set_sessions_pct(self.sessions_pct(shared));
        shared
            .load
            .over(&shared.runtime.load().config.load, LoadAction::Refuse)
    }

    /// Connections accepted and not yet closed.
    pub fn in_flight(&self) -> u32 {
        self.sessions.count.load(Ordering::Relaxed)
    }

    /// Sessions in flight in percent of `max_sessions` (None when there is no limit).
    pub fn sessions_pct(&self, shared: &Shared) -> Option<u32> {
        let max = u64::from(shared.runtime.load().config.limits.max_sessions);
        if max == 0 {
            return None;
        }
        let used = u64::from(self.sessions.count.load(Ordering::Relaxed));
        u32::try_from(used * 100 / max).ok()
    }

    /// Counts one connection in the current second; or, when the second is full, when the
    /// next one begins. `rate` 0 is no limit.
    fn take_rate(&self, rate: u32) -> Option<Instant> {
        if rate == 0 {
            return None;
        }
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
        if w.1 < rate {
            w.1 += 1;
            return None;
        }
        Some(start + Duration::from_secs(1))
    }
}

/// A session's place in the count of sessions in flight; released when dropped (with the
/// session's [`crate::admission::Ticket`]), which lets a waiting accept loop go on.
#[derive(Debug)]
pub struct SessionSlot {
    sessions: Arc<Sessions>,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.sessions.count.fetch_sub(1, Ordering::AcqRel);
        self.sessions.ended.notify_one();
    }
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
