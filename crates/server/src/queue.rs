//! The queue runner: delivers spooled messages to Maildir, retries failures with backoff.
//!
//! Role: schedule (in memory) what the spool holds (on disk). New messages arrive through
//! [`QueueHandle::notify`]; due ones go to a few blocking delivery workers in batches; each
//! recipient is delivered durably (`portcullis_spool::deliver`: tmp, fsync, rename, fsync
//! `new/`) and only when every recipient is done is the spool file removed. A crash between
//! a delivery and the state update re-delivers at most that attempt (at-least-once).
//!
//! Bounds: at most [`MAX_ACTIVE`] messages are scheduled in memory. Beyond that (or when the
//! notify channel is full) the runner remembers that it must rescan the spool directory, and
//! does so once it has room, as Postfix's active queue limit does.
//!
//! Must not: decide anything about SMTP; it only delivers what was accepted. Failures are all
//! treated as temporary in this release (no bounces yet): a message that stays undeliverable
//! past `[queue] lifetime` is held in the spool for the administrator, never dropped.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use portcullis_smtp::ReversePath;
use portcullis_smtp::address::parse_path;
use portcullis_spool::{
    DeliveryState, MaildirItem, QueueId, SpoolError, StoredMessage, unique_name,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::load::{self, LoadAction};
use crate::state::{Runtime, Shared};
use crate::telemetry::Event;

/// Messages scheduled in memory at most.
pub const MAX_ACTIVE: usize = 20_000;
/// Messages one delivery worker takes at a time.
const BATCH: usize = 32;
/// Delivery workers (blocking threads) at once.
const WORKERS: usize = 4;
/// How often held delivery looks at the load again.
const LOAD_RECHECK: Duration = Duration::from_secs(1);
/// How often the spool directory is rescanned anyway.
const RESCAN_EVERY: Duration = Duration::from_secs(300);

/// Tells the runner about a newly committed message. Never blocks.
#[derive(Clone)]
pub struct QueueHandle {
    tx: mpsc::Sender<QueueId>,
    overflow: Arc<AtomicBool>,
}

impl QueueHandle {
    /// A handle and the receiver the runner reads.
    pub fn new() -> (Self, QueueReceiver) {
        let (tx, rx) = mpsc::channel(MAX_ACTIVE);
        let overflow = Arc::new(AtomicBool::new(false));
        (
            Self {
                tx,
                overflow: overflow.clone(),
            },
            QueueReceiver { rx, overflow },
        )
    }

    /// Schedules `id`. If the runner is saturated, the id is picked up by its next rescan.
    pub fn notify(&self, id: QueueId) {
        if self.tx.try_send(id).is_err() {
            self.overflow.store(true, Ordering::Relaxed);
        }
    }
}

/// The runner's end of [`QueueHandle`].
pub struct QueueReceiver {
    rx: mpsc::Receiver<QueueId>,
    overflow: Arc<AtomicBool>,
}

/// What happened to one message in a delivery attempt.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Every recipient delivered; the spool file is gone.
    Done,
    /// Try again at this unix time.
    Retry(i64),
    /// Held for the administrator, or unreadable: not scheduled again until a restart.
    Forget,
}

struct Scheduler {
    ready: VecDeque<QueueId>,
    /// (due unix time, id).
    waiting: BTreeSet<(i64, QueueId)>,
    /// Everything scheduled or being delivered.
    known: HashSet<QueueId>,
    rescan: bool,
}

impl Scheduler {
    fn add(&mut self, id: QueueId) {
        if self.known.contains(&id) {
            return;
        }
        if self.known.len() >= MAX_ACTIVE {
            self.rescan = true;
            return;
        }
        self.known.insert(id.clone());
        self.ready.push_back(id);
    }

    fn promote_due(&mut self, now: i64) {
        while let Some((at, _)) = self.waiting.first() {
            if *at > now {
                break;
            }
            if let Some((_, id)) = self.waiting.pop_first() {
                self.ready.push_back(id);
            }
        }
    }

    fn next_wake(&self, now: i64) -> Duration {
        let secs = self
            .waiting
            .first()
            .map_or(RESCAN_EVERY.as_secs(), |(at, _)| {
                (at - now).clamp(0, 300) as u64
            });
        Duration::from_secs(secs.max(1))
    }
}

/// Runs until `shutdown`; deliveries in progress then finish.
pub async fn run(
    shared: Arc<Shared>,
    mut rx: QueueReceiver,
    initial: Vec<QueueId>,
    shutdown: CancellationToken,
) {
    let mut sched = Scheduler {
        ready: VecDeque::new(),
        waiting: BTreeSet::new(),
        known: HashSet::new(),
        rescan: false,
    };
    for id in initial {
        sched.add(id);
    }
    let mut workers: JoinSet<Vec<(QueueId, Outcome)>> = JoinSet::new();
    let mut last_scan = clock::now();
    let mut held = false;
    loop {
        // QueueLA: while a `queue_*` threshold is reached, nothing new starts; mail keeps
        // being accepted and waits in the spool.
        let over = shared
            .load
            .over(&shared.runtime.load().config.load, LoadAction::Queue);
        match (over, held) {
            (Some(reading), false) => {
                held = true;
                shared.telemetry.emit(Event::DeliveryHeld { reading });
            }
            (None, true) => {
                held = false;
                shared.telemetry.emit(Event::DeliveryResumed);
            }
            _ => {}
        }
        while !held && workers.len() < WORKERS && !sched.ready.is_empty() {
            let n = sched.ready.len().min(BATCH);
            let batch: Vec<QueueId> = sched.ready.drain(..n).collect();
            let shared = shared.clone();
            workers.spawn_blocking(move || deliver_batch(&shared, &batch));
        }
        // With a `queue_*` threshold set, the load is looked at every second, so holding
        // and resuming (and their log lines) follow it even while nothing arrives.
        let mut wake = sched.next_wake(clock::unix_secs());
        if held || load::any_threshold(&shared.runtime.load().config.load, LoadAction::Queue) {
            wake = wake.min(LOAD_RECHECK);
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(id) = rx.rx.recv() => {
                sched.add(id);
                while let Ok(id) = rx.rx.try_recv() {
                    sched.add(id);
                }
            }
            Some(done) = workers.join_next(), if !workers.is_empty() => {
                for (id, outcome) in done.unwrap_or_default() {
                    match outcome {
                        Outcome::Retry(at) => { sched.waiting.insert((at, id)); }
                        Outcome::Done | Outcome::Forget => { sched.known.remove(&id); }
                    }
                }
            }
            () = tokio::time::sleep(wake) => sched.promote_due(clock::unix_secs()),
        }
        let overflow = rx.overflow.swap(false, Ordering::Relaxed);
        let periodic = clock::now().duration_since(last_scan) >= RESCAN_EVERY;
        if (sched.rescan || overflow || periodic) && sched.known.len() < MAX_ACTIVE / 2 {
            sched.rescan = false;
            last_scan = clock::now();
            if let Ok(ids) = shared.spool.list() {
                for id in ids {
                    sched.add(id);
                }
            }
        }
    }
    while workers.join_next().await.is_some() {}
}

/// One worker's batch, on a blocking thread. Group commit on the delivery side: every
/// pending recipient of the batch goes through one Maildir batch (one fsync per `new/`
/// directory), and the finished messages leave the spool with one directory fsync.
fn deliver_batch(shared: &Shared, batch: &[QueueId]) -> Vec<(QueueId, Outcome)> {
    let rt = shared.runtime.load_full();
    let now = clock::unix_secs();
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut work = Vec::with_capacity(batch.len());
    for id in batch {
        match load_due(shared, id, now) {
            Ok(w) => work.push(w),
            Err(outcome) => outcomes.push((id.clone(), outcome)),
        }
    }
    let errors = deliver_recipients(shared, &rt, &mut work, now);
    let (finished, unfinished): (Vec<_>, Vec<_>) = work
        .into_iter()
        .zip(errors)
        .partition(|(w, _)| w.state.done.iter().all(|&d| d));
    let finished_ids: Vec<QueueId> = finished
        .iter()
        .map(|(w, _)| w.stored.envelope.id.clone())
        .collect();
    let removed = shared.spool.remove_batch(&finished_ids);
    for id in finished_ids {
        match &removed {
            Ok(()) => outcomes.push((id, Outcome::Done)),
            Err(e) => {
                // Delivered but still spooled: it is delivered again at the next start.
                shared.telemetry.emit(Event::SpoolReadFailed {
                    qid: id.as_str(),
                    error: &e.to_string(),
                });
                outcomes.push((id, Outcome::Forget));
            }
        }
    }
    for (w, last_error) in unfinished {
        let id = w.stored.envelope.id.clone();
        outcomes.push((
            id,
            reschedule(shared, &rt, &w.stored, w.state, last_error, now),
        ));
    }
    outcomes
}

/// A message due for delivery, with the state the attempt updates.
struct Work {
    stored: StoredMessage,
    state: DeliveryState,
}

/// Reads a message if it is due; otherwise says what to do with it.
fn load_due(shared: &Shared, id: &QueueId, now: i64) -> Result<Work, Outcome> {
    let stored = match shared.spool.read(id) {
        Ok(s) => s,
        Err(SpoolError::NotFound { .. }) => return Err(Outcome::Done),
        Err(e) => {
            shared.telemetry.emit(Event::SpoolReadFailed {
                qid: id.as_str(),
                error: &e.to_string(),
            });
            return Err(Outcome::Forget);
        }
    };
    if stored.state.held {
        return Err(Outcome::Forget);
    }
    if stored.state.next_attempt_at > now {
        return Err(Outcome::Retry(stored.state.next_attempt_at));
    }
    let mut state = stored.state.clone();
    if state.done.len() != stored.envelope.recipients.len() {
        state.done = vec![false; stored.envelope.recipients.len()];
    }
    Ok(Work { stored, state })
}

/// Delivers every recipient not yet done, for the whole batch at once; marks the done ones
/// and logs each outcome. Returns each message's last error.
fn deliver_recipients(
    shared: &Shared,
    rt: &Runtime,
    work: &mut [Work],
    now: i64,
) -> Vec<Option<String>> {
    let hostname = &rt.config.server.hostname;
    let micros = clock::wall().subsec_microsecond().unsigned_abs();
    // (message, recipient, mailbox or why not, unique name)
    let mut plans = Vec::new();
    for (m, w) in work.iter().enumerate() {
        for (r, rcpt) in w.stored.envelope.recipients.iter().enumerate() {
            if !w.state.done[r] {
                let target = mailbox(rt, rcpt)
                    .ok_or_else(|| "not a local mailbox (configuration changed?)".to_owned());
                plans.push((
                    m,
                    r,
                    target,
                    unique_name(now, micros, &w.stored.envelope.id, r, hostname),
                ));
            }
        }
    }
    let items: Vec<MaildirItem<'_>> = plans
        .iter()
        .filter_map(|(m, _, target, unique)| {
            let (domain, local) = target.as_ref().ok()?;
            Some(MaildirItem {
                domain,
                local,
                unique,
                data: &work[*m].stored.data,
            })
        })
        .collect();
    let mut delivered = deliver_batch_to_maildir(&rt.config.local.maildir_root, &items).into_iter();
    let mut errors = vec![None; work.len()];
    for (m, r, target, _) in plans {
        let result = match target {
            Ok(_) => delivered
                .next()
                .unwrap_or_else(|| Err("delivery result missing".to_owned())),
            Err(e) => Err(e),
        };
        let env = &work[m].stored.envelope;
        let (to, delay) = (env.recipients[r].as_str(), now - env.received_at);
        match result {
            Ok(path) => {
                shared.telemetry.emit(Event::Delivered {
                    qid: env.id.as_str(),
                    to,
                    delay,
                    xdelay: 0,
                    mailer: "local",
                    path: &path,
                });
                work[m].state.done[r] = true;
            }
            Err(error) => {
                shared.telemetry.emit(Event::Deferred {
                    qid: env.id.as_str(),
                    to,
                    delay,
                    xdelay: 0,
                    mailer: "local",
                    error: &error,
                });
                errors[m] = Some(error);
            }
        }
    }
    errors
}

fn deliver_batch_to_maildir(
    root: &std::path::Path,
    items: &[MaildirItem<'_>],
) -> Vec<Result<String, String>> {
    portcullis_spool::deliver_batch(root, items)
        .into_iter()
        .map(|r| {
            r.map(|p| p.display().to_string())
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// Records a failed attempt: retry later with backoff, or hold past the lifetime.
fn reschedule(
    shared: &Shared,
    rt: &Runtime,
    stored: &StoredMessage,
    mut state: DeliveryState,
    last_error: Option<String>,
    now: i64,
) -> Outcome {
    let id = &stored.envelope.id;
    let q = &rt.config.queue;
    state.attempts += 1;
    state.last_error = last_error;
    let age = now - stored.envelope.received_at;
    let outcome = if age >= q.lifetime.as_secs() as i64 {
        shared.telemetry.emit(Event::LifetimeExceeded {
            qid: id.as_str(),
            age,
        });
        state.held = true;
        Outcome::Forget
    } else {
        let at = now + backoff(state.attempts, q.retry_min, q.retry_max).as_secs() as i64;
        state.next_attempt_at = at;
        Outcome::Retry(at)
    };
    if let Err(e) = shared.spool.write_state(id, &state) {
        shared.telemetry.emit(Event::SpoolReadFailed {
            qid: id.as_str(),
            error: &e.to_string(),
        });
    }
    outcome
}

/// Where a recipient's mail goes: (domain, mailbox) under the Maildir root.
fn mailbox(rt: &Runtime, rcpt: &str) -> Option<(String, String)> {
    let recipients = &rt.policy.recipients;
    match parse_path(rcpt).ok()? {
        ReversePath::Postmaster => Some((
            recipients.primary_domain()?.to_owned(),
            "postmaster".to_owned(),
        )),
        ReversePath::Mailbox(m) => recipients.mailbox_for(&m),
        ReversePath::Null => None,
    }
}

/// `retry_min`, doubling per attempt, capped at `retry_max`.
pub fn backoff(attempts: u32, min: Duration, max: Duration) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    min.saturating_mul(1u32 << exp).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let m = Duration::from_secs(60);
        let h = Duration::from_secs(3600);
        let got: Vec<u64> = (1..=8).map(|a| backoff(a, m, h).as_secs()).collect();
        assert_eq!(got, vec![60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(backoff(1000, m, h), h);
    }
}
