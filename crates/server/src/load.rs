//! Load signals and the three load actions (`[load]`): Sendmail's RefuseLA, DelayLA and
//! QueueLA, on the 1-minute load average and on two signals of this server itself.
//!
//! Role: keep the current readings ([`LoadMonitor`]) and say whether an action's threshold is
//! reached ([`LoadMonitor::over`]). The accept loops stop accepting on [`LoadAction::Refuse`]
//! (see [`crate::gate`]), sessions wait 1 s before each command on [`LoadAction::Delay`] (the
//! driver hands the session a [`portcullis_smtp::CommandDelay`]), and the queue runner holds
//! delivery on [`LoadAction::Queue`].
//!
//! The signals:
//! - the load average, read from `loadavg_file` (first field) once a second and rounded as
//!   Sendmail rounds it (`(int)(x + 0.5)`: 0.5 already counts as 1);
//! - sessions in flight in percent of `limits.max_sessions`;
//! - event-loop lag: how late a 100 ms tick fires, the worst of the last second. Unlike the
//!   load average it measures this server, not the machine, and it is the first thing to
//!   grow when the server has more work than cores. A tick that is overdue right now counts
//!   at once, so the first check after a stall sees it.
//!
//! Must not: block. Readings are atomics; the sampler task is the only writer (tests call
//! [`LoadMonitor::refresh_loadavg`] themselves).

use std::fmt;
use std::io::Read as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use portcullis_config::LoadConfig;
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::gate::Gate;
use crate::state::Shared;
use crate::telemetry::{Event, Telemetry};

/// `/proc/loadavg` is about 30 bytes; a configured file is read no further than this.
const LOADAVG_MAX_BYTES: u64 = 256;

/// A load-average read that has not returned after this many seconds (a hung file system)
/// makes the reading unknown until one returns.
const LOADAVG_STUCK_SECS: u32 = 3;

/// No reading yet (or the file cannot be read): never over any threshold.
const UNKNOWN: u32 = u32::MAX;

/// How often the lag tick fires.
const TICK: Duration = Duration::from_millis(100);

/// Ticks per second: the lag reported is the worst of this many.
const TICKS_PER_READING: usize = 10;

/// The three load actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadAction {
    /// Stop accepting connections (RefuseLA).
    Refuse,
    /// Wait 1 s before each command (DelayLA).
    Delay,
    /// Accept, but hold delivery (QueueLA).
    Queue,
}

/// A signal at or over its threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    /// The rounded load average and its threshold.
    LoadAverage { value: u32, threshold: u32 },
    /// Sessions in flight in percent of `max_sessions`, and the threshold.
    Sessions { pct: u32, threshold: u8 },
    /// Event-loop lag and its threshold.
    Lag {
        value: Duration,
        threshold: Duration,
    },
}

impl Reading {
    /// The value alone, as Sendmail's `rejecting connections on daemon MTA: load average: N`
    /// names it.
    pub fn value(&self) -> String {
        match *self {
            Self::LoadAverage { value, .. } => format!("load average: {value}"),
            Self::Sessions { pct, .. } => format!("sessions: {pct}% of max_sessions"),
            Self::Lag { value, .. } => format!("event loop lag: {}ms", value.as_millis()),
        }
    }

    /// What tells one reading from another for the log: the signal, its threshold and, for
    /// the load average and sessions (which change at most once a second or so), the value.
    /// The lag changes at every tick, so its value is left out.
    pub fn trigger(&self) -> (&'static str, u64, u64) {
        let (threshold, value) = match *self {
            Self::LoadAverage { value, threshold } => (u64::from(threshold), u64::from(value)),
            Self::Sessions { pct, threshold } => (u64::from(threshold), u64::from(pct)),
            Self::Lag { threshold, .. } => {
                (u64::try_from(threshold.as_micros()).unwrap_or(u64::MAX), 0)
            }
        };
        (self.signal(), threshold, value)
    }

    /// The signal's name, for structured fields.
    pub fn signal(&self) -> &'static str {
        match self {
            Self::LoadAverage { .. } => "load_average",
            Self::Sessions { .. } => "sessions",
            Self::Lag { .. } => "lag",
        }
    }
}

/// The comparison, as Sendmail's `delaying=EHLO, load average=1 >= 1` words it.
impl fmt::Display for Reading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::LoadAverage { value, threshold } => {
                write!(f, "load average={value} >= {threshold}")
            }
            Self::Sessions { pct, threshold } => write!(f, "sessions={pct}% >= {threshold}%"),
            Self::Lag { value, threshold } => write!(
                f,
                "event loop lag={}ms >= {}ms",
                value.as_millis(),
                threshold.as_millis()
            ),
        }
    }
}

/// The current readings.
#[derive(Debug)]
pub struct LoadMonitor {
    /// The rounded load average, or [`UNKNOWN`].
    loadavg: AtomicU32,
    /// Sessions in flight in percent of `max_sessions`, or [`UNKNOWN`].
    sessions_pct: AtomicU32,
    /// Worst lag of the last second, in microseconds.
    lag_us: AtomicU64,
    /// When the sampler's pending tick is due, in nanoseconds after `base` (0: none). A
    /// tick that is late right now counts as lag at once, so a stalled loop is seen by the
    /// first check after it, not only once the sampler runs again.
    tick_due_ns: AtomicU64,
    base: Instant,
    /// The load-average file failed to read last time (so the failure is logged once).
    unreadable: AtomicBool,
    /// A read of the load-average file is in progress on a blocking thread.
    reading: AtomicBool,
}

impl Default for LoadMonitor {
    fn default() -> Self {
        Self::new()
    }
}

impl LoadMonitor {
    /// No readings yet: nothing is over any threshold.
    pub fn new() -> Self {
        Self {
            loadavg: AtomicU32::new(UNKNOWN),
            sessions_pct: AtomicU32::new(UNKNOWN),
            lag_us: AtomicU64::new(0),
            tick_due_ns: AtomicU64::new(0),
            base: clock::now(),
            unreadable: AtomicBool::new(false),
            reading: AtomicBool::new(false),
        }
    }

    /// The first signal at or over `action`'s threshold in `cfg`, if any (load average first,
    /// then sessions, then lag).
    pub fn over(&self, cfg: &LoadConfig, action: LoadAction) -> Option<Reading> {
        let (la, pct, lag) = thresholds(cfg, action);
        let value = self.loadavg.load(Ordering::Relaxed);
        if la > 0 && value != UNKNOWN && value >= la {
            return Some(Reading::LoadAverage {
                value,
                threshold: la,
            });
        }
        let now = self.sessions_pct.load(Ordering::Relaxed);
        if pct > 0 && now != UNKNOWN && now >= u32::from(pct) {
            return Some(Reading::Sessions {
                pct: now,
                threshold: pct,
            });
        }
        if lag.is_zero() {
            return None;
        }
        // Only read when a lag threshold is set: it reads the clock.
        let value = self.lag();
        (value >= lag).then_some(Reading::Lag {
            value,
            threshold: lag,
        })
    }

    /// Reads the load average from `path` (first field, rounded as Sendmail does). A file
    /// that cannot be read or parsed leaves the signal unknown (never over) and is reported
    /// once until it reads again.
    pub fn refresh_loadavg(&self, path: &Path, telemetry: &Telemetry) {
        match read_loadavg(path) {
            Ok(value) => {
                self.loadavg.store(value, Ordering::Relaxed);
                self.unreadable.store(false, Ordering::Relaxed);
            }
            Err(error) => {
                self.loadavg.store(UNKNOWN, Ordering::Relaxed);
                if !self.unreadable.swap(true, Ordering::Relaxed) {
                    telemetry.emit(Event::LoadUnavailable {
                        path: &path.display().to_string(),
                        error: &error,
                    });
                }
            }
        }
    }

    pub(crate) fn set_sessions_pct(&self, pct: Option<u32>) {
        self.sessions_pct
            .store(pct.unwrap_or(UNKNOWN), Ordering::Relaxed);
    }

    /// The worst lag of the last second, or the pending tick's lateness if that is worse.
    fn lag(&self) -> Duration {
        let sampled = Duration::from_micros(self.lag_us.load(Ordering::Relaxed));
        let due = self.tick_due_ns.load(Ordering::Relaxed);
        if due == 0 {
            return sampled;
        }
        let due = self.base + Duration::from_nanos(due);
        sampled.max(clock::now().saturating_duration_since(due))
    }

    fn set_tick_due(&self, at: Option<Instant>) {
        let ns = at.map_or(0, |at| {
            u64::try_from(at.saturating_duration_since(self.base).as_nanos())
                .unwrap_or(u64::MAX)
                .max(1)
        });
        self.tick_due_ns.store(ns, Ordering::Relaxed);
    }

    fn set_lag(&self, lag: Duration) {
        let us = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        self.lag_us.store(us, Ordering::Relaxed);
    }
}

/// An action's thresholds: load average, sessions percentage, lag (0 = off).
fn thresholds(cfg: &LoadConfig, action: LoadAction) -> (u32, u8, Duration) {
    match action {
        LoadAction::Refuse => (cfg.refuse_la, cfg.refuse_sessions_pct, cfg.refuse_lag),
        LoadAction::Delay => (cfg.delay_la, cfg.delay_sessions_pct, cfg.delay_lag),
        LoadAction::Queue => (cfg.queue_la, cfg.queue_sessions_pct, cfg.queue_lag),
    }
}

/// True when `action` has any threshold set.
pub fn any_threshold(cfg: &LoadConfig, action: LoadAction) -> bool {
    let (la, pct, lag) = thresholds(cfg, action);
    la > 0 || pct > 0 || !lag.is_zero()
}

/// The first field of a `/proc/loadavg`-style file, rounded: `(int)(x + 0.5)`. Reads at
/// most [`LOADAVG_MAX_BYTES`], whatever the file is.
fn read_loadavg(path: &Path) -> Result<u32, String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(LOADAVG_MAX_BYTES).read_to_string(&mut text))
        .map_err(|e| e.to_string())?;
    parse_loadavg(&text)
}

fn parse_loadavg(text: &str) -> Result<u32, String> {
    let first = text.split_ascii_whitespace().next().unwrap_or_default();
    match first.parse::<f64>() {
        // The cast saturates; a load average is never near u32::MAX anyway.
        Ok(x) if x.is_finite() && x >= 0.0 => Ok((x + 0.5) as u32),
        _ => Err(format!(
            "{first:?} is not a load average (expected the format of /proc/loadavg)"
        )),
    }
}

/// Updates the readings until shutdown: the lag every tick, sessions every tick, the load
/// average once a second.
pub async fn sample(shared: Arc<Shared>, gate: Arc<Gate>, shutdown: CancellationToken) {
    let mut worst = [Duration::ZERO; TICKS_PER_READING];
    let mut tick = 0usize;
    let mut stuck = 0u32;
    loop {
        let due = clock::now() + TICK;
        shared.load.set_tick_due(Some(due));
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(due)) => {}
        }
        let late = clock::now().saturating_duration_since(due);
        shared.load.set_tick_due(None);
        worst[tick % TICKS_PER_READING] = late;
        shared
            .load
            .set_lag(worst.iter().copied().max().unwrap_or_default());
        shared.load.set_sessions_pct(gate.sessions_pct(&shared));
        if tick.is_multiple_of(TICKS_PER_READING) {
            stuck = read_in_background(&shared, stuck);
        }
        tick = tick.wrapping_add(1);
    }
}

/// Starts a read of the load-average file on a blocking thread, unless one is still running
/// (a hung file then costs one thread, never more). Returns for how many seconds the
/// running read has been stuck; past [`LOADAVG_STUCK_SECS`] the reading becomes unknown.
/// Nothing is read while no `*_la` threshold is set.
fn read_in_background(shared: &Arc<Shared>, stuck: u32) -> u32 {
    let rt = shared.runtime.load();
    let cfg = &rt.config.load;
    if thresholds(cfg, LoadAction::Refuse).0 == 0
        && thresholds(cfg, LoadAction::Delay).0 == 0
        && thresholds(cfg, LoadAction::Queue).0 == 0
    {
        shared.load.loadavg.store(UNKNOWN, Ordering::Relaxed);
        return 0;
    }
    if shared.load.reading.swap(true, Ordering::Relaxed) {
        let stuck = stuck.saturating_add(1);
        if stuck == LOADAVG_STUCK_SECS {
            shared.load.loadavg.store(UNKNOWN, Ordering::Relaxed);
            shared.telemetry.emit(Event::LoadUnavailable {
                path: &cfg.loadavg_file.display().to_string(),
                error: "a read has not returned for 3 seconds",
            });
        }
        return stuck;
    }
    let path = cfg.loadavg_file.clone();
    let owner = shared.clone();
    tokio::task::spawn_blocking(move || {
        owner.load.refresh_loadavg(&path, &owner.telemetry);
        owner.load.reading.store(false, Ordering::Relaxed);
    });
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_as_sendmail() {
        let table: &[(&str, Result<u32, ()>)] = &[
            ("0.00 0.01 0.05 1/100 42\n", Ok(0)),
            ("0.49 0.5 0.5 1/1 1", Ok(0)),
            ("0.50 0.5 0.5 1/1 1", Ok(1)),
            ("0.94 1 1 1/1 1", Ok(1)),
            ("1.49", Ok(1)),
            ("12.51 3 3", Ok(13)),
            ("", Err(())),
            ("abc 1 2", Err(())),
            ("-1.0 1 1", Err(())),
            ("NaN 1 1", Err(())),
            ("inf 1 1", Err(())),
        ];
        for (text, want) in table {
            assert_eq!(parse_loadavg(text).map_err(|_| ()), *want, "{text:?}");
        }
    }

    fn cfg() -> LoadConfig {
        LoadConfig {
            refuse_la: 4,
            delay_la: 2,
            queue_la: 0,
            refuse_sessions_pct: 0,
            delay_sessions_pct: 0,
            queue_sessions_pct: 80,
            refuse_lag: Duration::from_millis(200),
            delay_lag: Duration::ZERO,
            queue_lag: Duration::ZERO,
            ..LoadConfig::default()
        }
    }

    #[test]
    fn an_overdue_tick_counts_as_lag_at_once() {
        let mut m = LoadMonitor::new();
        let c = LoadConfig {
            refuse_lag: Duration::from_millis(200),
            ..LoadConfig::default()
        };
        // A tick that was due a second ago and has not fired.
        m.base = m.base.checked_sub(Duration::from_secs(1)).unwrap_or(m.base);
        m.set_tick_due(Some(m.base));
        assert!(m.lag() >= Duration::from_millis(999), "{:?}", m.lag());
        assert!(matches!(
            m.over(&c, LoadAction::Refuse),
            Some(Reading::Lag { .. })
        ));
        m.set_tick_due(None);
        assert_eq!(m.lag(), Duration::ZERO);
        assert_eq!(m.over(&c, LoadAction::Refuse), None);
    }

    #[test]
    fn thresholds_are_at_or_over_and_zero_is_off() {
        let m = LoadMonitor::new();
        let c = cfg();
        // Nothing read yet: never over.
        for action in [LoadAction::Refuse, LoadAction::Delay, LoadAction::Queue] {
            assert_eq!(m.over(&c, action), None);
        }
        m.loadavg.store(2, Ordering::Relaxed);
        assert_eq!(
            m.over(&c, LoadAction::Delay),
            Some(Reading::LoadAverage {
                value: 2,
                threshold: 2
            })
        );
        assert_eq!(m.over(&c, LoadAction::Refuse), None);
        assert_eq!(m.over(&c, LoadAction::Queue), None, "queue_la = 0 is off");
        m.set_sessions_pct(Some(80));
        assert_eq!(
            m.over(&c, LoadAction::Queue),
            Some(Reading::Sessions {
                pct: 80,
                threshold: 80
            })
        );
        m.set_lag(Duration::from_millis(250));
        let r = m.over(&c, LoadAction::Refuse);
        assert_eq!(
            r.map(|r| r.to_string()).as_deref(),
            Some("event loop lag=250ms >= 200ms")
        );
        m.loadavg.store(5, Ordering::Relaxed);
        // The load average is looked at first.
        assert_eq!(
            m.over(&c, LoadAction::Refuse).map(|r| r.value()).as_deref(),
            Some("load average: 5")
        );
    }
}
