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

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use std::hash::{BuildHasher, RandomState};

use portcullis_config::next_hop::NextHop;
use portcullis_smtp::client::RcptStatus;
use portcullis_spool::{
    DeliveryState, MaildirItem, QueueId, Spool, SpoolError, StoredMessage, unique_name,
};
use std::future::Future;
use std::pin::Pin;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::bounce;
use crate::clock;
use crate::control::QueueControl;
use crate::load::{self, LoadAction};
use crate::metrics::QueueGauges;
use crate::outbound::{self, Destination, RelayResult};
use crate::queue_ops::{self, Op, Response};
use crate::state::{Runtime, Shared};
use crate::telemetry::{Event, RelayStat};

/// Messages scheduled in memory at most.
pub const MAX_ACTIVE: usize = 20_000;
/// Messages one delivery worker takes at a time.
const BATCH: usize = 32;
/// Delivery workers (blocking threads) at once.
const WORKERS: usize = 4;
/// How often held delivery looks at the load again.
const LOAD_RECHECK: Duration = Duration::from_secs(1);
/// When a message whose next hops were all busy is looked at again.
const BUSY_RETRY: Duration = Duration::from_secs(1);
/// How often the spool directory is rescanned anyway.
const RESCAN_EVERY: Duration = Duration::from_secs(300);

/// Tells the runner about a newly committed message (never blocks), and carries the
/// operator's queue commands to it.
#[derive(Clone)]
pub struct QueueHandle {
    tx: mpsc::Sender<QueueId>,
    overflow: Arc<AtomicBool>,
    control: mpsc::Sender<ControlRequest>,
    gauges: Arc<QueueGauges>,
}

/// An operator's command for the runner, with where to send the answer.
pub struct ControlRequest {
    op: Op,
    reply: oneshot::Sender<Response>,
}

/// Control requests waiting for the runner at most.
const CONTROL_QUEUE: usize = 8;

impl QueueHandle {
    /// A handle and the receiver the runner reads.
    pub fn new() -> (Self, QueueReceiver) {
        let (tx, rx) = mpsc::channel(MAX_ACTIVE);
        let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let overflow = Arc::new(AtomicBool::new(false));
        let gauges = Arc::new(QueueGauges::default());
        (
            Self {
                tx,
                overflow: overflow.clone(),
                control,
                gauges: gauges.clone(),
            },
            QueueReceiver {
                rx,
                overflow,
                control: control_rx,
                gauges,
            },
        )
    }

    /// The queue's messages by state, as the runner last counted them (for `/metrics`).
    pub fn gauges(&self) -> Arc<QueueGauges> {
        self.gauges.clone()
    }

    /// Has the runner carry out a command that changes a message (flush, delete, hold,
    /// release): it knows which messages are being delivered and what is scheduled.
    pub async fn control(&self, op: Op) -> Response {
        let (reply, answer) = oneshot::channel();
        if self
            .control
            .send(ControlRequest { op, reply })
            .await
            .is_err()
        {
            return Response::error("the queue runner is not running\n");
        }
        answer
            .await
            .unwrap_or_else(|_| Response::error("the queue runner stopped before answering\n"))
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
    control: mpsc::Receiver<ControlRequest>,
    gauges: Arc<QueueGauges>,
}

/// The control socket's handler in a running server: listings read the spool directly
/// (files are replaced by renames, so a reader never sees half a state); changes go
/// through the runner.
pub struct RunnerControl {
    spool: Arc<Spool>,
    queue: QueueHandle,
}

impl RunnerControl {
    /// A handler for this spool and runner.
    pub fn new(spool: Arc<Spool>, queue: QueueHandle) -> Self {
        Self { spool, queue }
    }
}

impl QueueControl for RunnerControl {
    fn execute(&self, op: Op) -> Pin<Box<dyn Future<Output = Response> + Send>> {
        let (spool, queue) = (self.spool.clone(), self.queue.clone());
        Box::pin(async move {
            if op.changes_spool() {
                return queue.control(op).await;
            }
            let run = move || queue_ops::execute(&spool, &op, clock::unix_secs());
            tokio::task::spawn_blocking(run)
                .await
                .unwrap_or_else(|e| Response::error(format!("the queue operation failed: {e}\n")))
        })
    }
}

/// What happened to one message in a delivery attempt.
enum Outcome {
    /// Every recipient delivered; the spool file is gone.
    Done,
    /// Try again at this unix time.
    Retry(i64),
    /// Unreadable: not scheduled again until a restart.
    Forget,
    /// Held for the administrator: not scheduled again until released.
    Held,
    /// Recipients for next hops: delivered by an async relay job, which then settles.
    Relay(Box<RelayJob>),
}

struct Scheduler {
    ready: VecDeque<QueueId>,
    /// (due unix time, id).
    waiting: BTreeSet<(i64, QueueId)>,
    /// Everything scheduled or being delivered.
    known: HashSet<QueueId>,
    /// Being delivered now (in a worker's batch or a relay job).
    busy: HashSet<QueueId>,
    /// Held messages seen since start (for `/metrics`; at most [`MAX_ACTIVE`]).
    held: HashSet<QueueId>,
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

    /// A message to try now (the operator flushed or released it).
    fn make_due(&mut self, id: QueueId) {
        if let Some(at) = self
            .waiting
            .iter()
            .find(|(_, w)| *w == id)
            .map(|(at, _)| *at)
        {
            self.waiting.remove(&(at, id.clone()));
            self.ready.push_back(id);
        } else if !self.busy.contains(&id) && !self.ready.contains(&id) {
            self.known.remove(&id);
            self.add(id);
        }
    }

    /// The messages of a task that panicked: tried again at `at` (their spool files and
    /// states are as the last settled attempt left them).
    fn lost(&mut self, ids: Option<Vec<QueueId>>, at: i64) {
        for id in ids.unwrap_or_default() {
            self.busy.remove(&id);
            self.waiting.insert((at, id));
        }
    }

    /// Where a message goes after an attempt.
    fn settled(&mut self, id: QueueId, outcome: Outcome) {
        if !matches!(outcome, Outcome::Relay(_)) {
            self.busy.remove(&id);
        }
        if matches!(outcome, Outcome::Held) {
            if self.held.len() < MAX_ACTIVE {
                self.held.insert(id.clone());
            }
        } else {
            self.held.remove(&id);
        }
        match outcome {
            Outcome::Retry(at) => {
                self.waiting.insert((at, id));
            }
            // A relay job coming back as a relay job cannot happen; forget it like Done.
            Outcome::Done | Outcome::Forget | Outcome::Held | Outcome::Relay(_) => {
                self.known.remove(&id);
            }
        }
    }

    /// Publishes the counts by state for `/metrics`.
    fn publish(&self, gauges: &QueueGauges) {
        let n = |len: usize| len as u64;
        gauges.ready.store(n(self.ready.len()), Ordering::Relaxed);
        gauges
            .deferred
            .store(n(self.waiting.len()), Ordering::Relaxed);
        gauges
            .delivering
            .store(n(self.busy.len()), Ordering::Relaxed);
        gauges.held.store(n(self.held.len()), Ordering::Relaxed);
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
        busy: HashSet::new(),
        held: HashSet::new(),
        rescan: false,
    };
    for id in initial {
        sched.add(id);
    }
    let mut workers: JoinSet<Vec<(QueueId, Outcome)>> = JoinSet::new();
    let mut relays: JoinSet<(QueueId, Outcome)> = JoinSet::new();
    // The messages each task holds, so a task that panics does not leave them "busy".
    let mut in_tasks: HashMap<tokio::task::Id, Vec<QueueId>> = HashMap::new();
    let (max_relays, limits) = {
        let q = &shared.runtime.load().config.queue;
        let limits = outbound::Limits::new(q.max_connections, q.connections_per_hop);
        (2 * q.max_connections as usize, Arc::new(limits))
    };
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
        // Each relay job holds its message in memory: at most twice `max_connections` jobs
        // (the rest of the slots' worth wait at most SLOT_WAIT for one, then give their
        // message back), so this gate never stays shut behind a slow next hop for long.
        while !held
            && workers.len() < WORKERS
            && relays.len() < max_relays
            && !sched.ready.is_empty()
        {
            let n = sched.ready.len().min(BATCH);
            let batch: Vec<QueueId> = sched.ready.drain(..n).collect();
            sched.busy.extend(batch.iter().cloned());
            let shared = shared.clone();
            let ids = batch.clone();
            let task = workers.spawn_blocking(move || deliver_batch(&shared, &batch));
            in_tasks.insert(task.id(), ids);
        }
        // With a `queue_*` threshold set, the load is looked at every second, so holding
        // and resuming (and their log lines) follow it even while nothing arrives.
        sched.publish(&rx.gauges);
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
            Some(done) = workers.join_next_with_id(), if !workers.is_empty() => {
                match done {
                    Ok((task, outcomes)) => {
                        in_tasks.remove(&task);
                        for (id, outcome) in outcomes {
                            match outcome {
                                Outcome::Relay(job) => {
                                    let ids = vec![id];
                                    let job = relay_job(shared.clone(), limits.clone(), *job);
                                    in_tasks.insert(relays.spawn(job).id(), ids);
                                }
                                other => sched.settled(id, other),
                            }
                        }
                    }
                    Err(e) => sched.lost(in_tasks.remove(&e.id()), retry_later(&shared)),
                }
            }
            Some(done) = relays.join_next_with_id(), if !relays.is_empty() => {
                match done {
                    Ok((task, (id, outcome))) => {
                        in_tasks.remove(&task);
                        sched.settled(id, outcome);
                    }
                    Err(e) => sched.lost(in_tasks.remove(&e.id()), retry_later(&shared)),
                }
            }
            Some(req) = rx.control.recv() => control(&shared, &mut sched, req).await,
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
    // Maildir batches finish; relay sessions get the shutdown grace, then are cut (their
    // messages stay in the spool and are tried again at the next start).
    while workers.join_next().await.is_some() {}
    let grace = shared.runtime.load().config.server.shutdown_grace;
    let _ =
        tokio::time::timeout(grace, async { while relays.join_next().await.is_some() {} }).await;
    relays.shutdown().await;
}

/// When a message whose attempt failed unexpectedly is tried again.
fn retry_later(shared: &Shared) -> i64 {
    clock::unix_secs() + shared.runtime.load().config.queue.retry_min.as_secs() as i64
}

/// Carries out an operator's change on the spool, unless the message is being delivered
/// right now (its attempt would overwrite the change when it settles); then brings the
/// schedule in line: flushed and released messages are tried at once.
async fn control(shared: &Arc<Shared>, sched: &mut Scheduler, req: ControlRequest) {
    let ControlRequest { op, reply } = req;
    let target = match &op {
        Op::Delete(id) | Op::Hold(id) | Op::Release(id) | Op::Flush(Some(id)) => Some(id),
        Op::List | Op::Show(_) | Op::Flush(None) => None,
    };
    if let Some(id) = target
        && sched.busy.contains(id)
    {
        let _ = reply.send(Response::error(format!(
            "{id} is being delivered right now; try again when the attempt is over\n"
        )));
        return;
    }
    let spool = shared.spool.clone();
    let run = move || {
        let response = queue_ops::execute(&spool, &op, clock::unix_secs());
        (op, response)
    };
    let Ok((op, response)) = tokio::task::spawn_blocking(run).await else {
        let _ = reply.send(Response::error("the queue operation failed\n"));
        return;
    };
    for id in &response.due_now {
        // Flushing everything skips what is being delivered (it is due already).
        if !sched.busy.contains(id) {
            sched.make_due(id.clone());
        }
    }
    if let Op::Delete(id) | Op::Hold(id) = &op
        && response.ok
    {
        sched.waiting.retain(|(_, w)| w != id);
        sched.ready.retain(|r| r != id);
        sched.known.remove(id);
    }
    match &op {
        Op::Hold(id) if response.ok && sched.held.len() < MAX_ACTIVE => {
            sched.held.insert(id.clone());
        }
        Op::Delete(id) | Op::Release(id) if response.ok => {
            sched.held.remove(id);
        }
        _ => {}
    }
    let _ = reply.send(response);
}

/// One worker's batch, on a blocking thread. Group commit on the delivery side: every
/// pending local recipient of the batch goes through one Maildir batch (one fsync per
/// `new/` directory), and the messages finished by it leave the spool with one directory
/// fsync. Messages with recipients for next hops come back as relay jobs.
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
    let remote = deliver_local(shared, &rt, &mut work, now);
    let mut finished = Vec::new();
    for (w, remote) in work.into_iter().zip(remote) {
        let id = w.stored.envelope.id.clone();
        if !remote.is_empty() {
            // Local copies made in this attempt are recorded now: a relay session can take
            // long, and a stop or crash meanwhile must not deliver them twice.
            let done_now = w.state.done.iter().filter(|&&d| d).count();
            let done_before = w.stored.state.done.iter().filter(|&&d| d).count();
            if done_now > done_before
                && let Err(e) = shared.spool.write_state(&id, &w.state)
            {
                shared.telemetry.emit(Event::SpoolReadFailed {
                    qid: id.as_str(),
                    error: &e.to_string(),
                });
            }
            let job = RelayJob {
                work: w,
                remote,
                started: now,
            };
            outcomes.push((id, Outcome::Relay(Box::new(job))));
        } else if w.state.done.iter().all(|&d| d) {
            finished.push(id);
        } else {
            outcomes.push((id, settle(shared, &rt, &w.stored, w.state, &[], false, now)));
        }
    }
    let removed = shared.spool.remove_batch(&finished);
    for id in finished {
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
    outcomes
}

/// A message due for delivery, with the state the attempt updates.
struct Work {
    stored: Arc<StoredMessage>,
    state: DeliveryState,
}

/// A message with recipients for next hops, after its local ones were delivered.
struct RelayJob {
    work: Work,
    /// (recipient index, next hop).
    remote: Vec<(usize, NextHop)>,
    /// When the attempt began (unix seconds), for `xdelay=`.
    started: i64,
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
        return Err(Outcome::Held);
    }
    if stored.state.next_attempt_at > now {
        return Err(Outcome::Retry(stored.state.next_attempt_at));
    }
    let mut state = stored.state.clone();
    let n = stored.envelope.recipients.len();
    if state.done.len() != n {
        state.done = vec![false; n];
    }
    if state.rcpt_errors.len() != n {
        state.rcpt_errors = vec![None; n];
    }
    Ok(Work {
        stored: Arc::new(stored),
        state,
    })
}

/// Delivers every pending local recipient of the batch at once, marks the done ones and
/// logs each outcome (a failure is kept as the recipient's error). Returns, per message,
/// its recipients for next hops.
fn deliver_local(
    shared: &Shared,
    rt: &Runtime,
    work: &mut [Work],
    now: i64,
) -> Vec<Vec<(usize, NextHop)>> {
    let hostname = &rt.config.server.hostname;
    let micros = clock::wall().subsec_microsecond().unsigned_abs();
    let mut remote = vec![Vec::new(); work.len()];
    // (message, recipient, mailbox or why not, unique name)
    let mut plans = Vec::new();
    for (m, w) in work.iter().enumerate() {
        for (r, rcpt) in w.stored.envelope.recipients.iter().enumerate() {
            if w.state.done[r] {
                continue;
            }
            let target = match outbound::route(rt, rcpt) {
                Destination::Local(domain, local) => Ok((domain, local)),
                Destination::Remote(hop) => {
                    remote[m].push((r, hop));
                    continue;
                }
                Destination::Nowhere(why) => Err(why),
            };
            let unique = unique_name(now, micros, &w.stored.envelope.id, r, hostname);
            plans.push((m, r, target, unique));
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
    for (m, r, target, _) in plans {
        let result = match target {
            Ok(_) => delivered
                .next()
                .unwrap_or_else(|| Err("delivery result missing".to_owned())),
            Err(e) => Err(e),
        };
        let w = &mut work[m];
        let env = &w.stored.envelope;
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
                w.state.done[r] = true;
                w.state.rcpt_errors[r] = None;
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
                w.state.rcpt_errors[r] = Some(error.clone());
                w.state.last_error = Some(error);
            }
        }
    }
    remote
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

/// Delivers a relay job's recipients, then settles the message on a blocking thread.
async fn relay_job(
    shared: Arc<Shared>,
    limits: Arc<outbound::Limits>,
    job: RelayJob,
) -> (QueueId, Outcome) {
    let rt = shared.runtime.load_full();
    let RelayJob {
        work,
        remote,
        started,
    } = job;
    let id = work.stored.envelope.id.clone();
    let delivery = outbound::deliver(
        shared.clone(),
        rt.clone(),
        limits,
        work.stored.clone(),
        remote,
    )
    .await;
    let retry_min = rt.config.queue.retry_min;
    let settled = tokio::task::spawn_blocking(move || {
        settle(
            &shared,
            &rt,
            &work.stored,
            work.state,
            &delivery.results,
            delivery.busy,
            started,
        )
    })
    .await;
    // A panic while settling: try again later (the spool still holds the message).
    let outcome =
        settled.unwrap_or_else(|_| Outcome::Retry(clock::unix_secs() + retry_min.as_secs() as i64));
    (id, outcome)
}

/// Takes an attempt's outcomes into the message's state: logs each relayed recipient,
/// bounces the permanent failures (and, past `[queue] lifetime`, every recipient still
/// pending), then removes the message when every recipient is final, or schedules the
/// next attempt with backoff. The DSN is in the spool before the recipients it reports are
/// marked final, so a crash in between sends it twice rather than never.
fn settle(
    shared: &Shared,
    rt: &Runtime,
    stored: &StoredMessage,
    mut state: DeliveryState,
    relayed: &[RelayResult],
    busy: bool,
    started: i64,
) -> Outcome {
    let now = clock::unix_secs();
    let env = &stored.envelope;
    let id = &env.id;
    let (delay, xdelay) = (now - env.received_at, now - started);
    let mut failed = Vec::new();
    for r in relayed {
        let Some(to) = env.recipients.get(r.index) else {
            continue;
        };
        let dsn = r.outcome.dsn();
        let reply = r.outcome.reply.to_log_string();
        // The reply's text without its codes (Sendmail's `stat=Sent (Ok: queued as …)`).
        let bare = reply_text(&r.outcome.reply);
        let text = if r.outcome.remote {
            reply.clone()
        } else {
            bare.clone()
        };
        let stat = match r.outcome.status {
            RcptStatus::Delivered => {
                state.done[r.index] = true;
                state.rcpt_errors[r.index] = None;
                RelayStat::Sent(&bare)
            }
            RcptStatus::PermFail => {
                failed.push(bounce::Failed {
                    index: r.index,
                    status: dsn.clone(),
                    remote_mta: r.relay.clone().filter(|_| r.outcome.remote),
                    diagnostic: text.clone(),
                });
                RelayStat::Bounced(bounce_stat(&dsn))
            }
            RcptStatus::TempFail => {
                state.rcpt_errors[r.index] = Some(text.clone());
                state.last_error = Some(text.clone());
                RelayStat::Deferred(&text)
            }
        };
        shared.telemetry.emit(Event::Relayed {
            qid: id.as_str(),
            to,
            delay,
            xdelay,
            mailer: r.mailer,
            relay: r.relay.as_deref(),
            dsn: &dsn,
            stat,
        });
    }
    let pending = |state: &DeliveryState, f: &[bounce::Failed]| {
        (0..env.recipients.len())
            .filter(|&i| !state.done[i] && !f.iter().any(|x| x.index == i))
            .collect::<Vec<_>>()
    };
    let expired =
        delay >= rt.config.queue.lifetime.as_secs() as i64 && !pending(&state, &failed).is_empty();
    if expired {
        shared.telemetry.emit(Event::LifetimeExceeded {
            qid: id.as_str(),
            age: delay,
        });
        for index in pending(&state, &failed) {
            let why = state.rcpt_errors[index]
                .clone()
                .or_else(|| state.last_error.clone())
                .unwrap_or_else(|| "not delivered in time".to_owned());
            failed.push(bounce::Failed {
                index,
                status: "4.4.7".to_owned(),
                remote_mta: None,
                diagnostic: why,
            });
        }
    }
    if !failed.is_empty() {
        match bounce::send(shared, rt, stored, &failed, expired, now) {
            Ok(()) => {
                for f in &failed {
                    state.done[f.index] = true;
                }
            }
            Err(e) => {
                // The DSN could not be spooled: keep the recipients pending, try again.
                shared.telemetry.emit(Event::SpoolReadFailed {
                    qid: id.as_str(),
                    error: &format!("cannot queue the DSN: {e}"),
                });
            }
        }
    }
    if state.done.iter().all(|&d| d) {
        return match shared.spool.remove(id) {
            Ok(()) => Outcome::Done,
            Err(e) => {
                shared.telemetry.emit(Event::SpoolReadFailed {
                    qid: id.as_str(),
                    error: &e.to_string(),
                });
                Outcome::Forget
            }
        };
    }
    let q = &rt.config.queue;
    let at = if busy && relayed.is_empty() {
        // Nothing was tried: every next hop was busy. Soon again, not counted.
        now + BUSY_RETRY.as_secs() as i64
    } else {
        state.attempts += 1;
        let jitter = RandomState::new().hash_one((id.as_str(), state.attempts, now));
        let delay = retry_delay(state.attempts, q.retry_min, q.retry_max, jitter);
        let at = now + delay.as_secs() as i64;
        if busy {
            at.min(now + BUSY_RETRY.as_secs() as i64)
        } else {
            at
        }
    };
    state.next_attempt_at = at;
    if let Err(e) = shared.spool.write_state(id, &state) {
        shared.telemetry.emit(Event::SpoolReadFailed {
            qid: id.as_str(),
            error: &e.to_string(),
        });
    }
    Outcome::Retry(at)
}

/// A reply's text without its code and enhanced status code.
fn reply_text(reply: &portcullis_smtp::Reply) -> String {
    let text = reply.lines.join(" ");
    match text.split_once(' ') {
        Some((first, rest))
            if first.split('.').count() == 3 && first.starts_with(['2', '4', '5']) =>
        {
            rest.to_owned()
        }
        _ => text,
    }
}

/// Sendmail's short `stat=` for a recipient that bounced, from its status code (the reply
/// itself is in the DSN line that follows).
fn bounce_stat(dsn: &str) -> &'static str {
    match dsn {
        "5.1.0" | "5.1.1" | "5.1.3" | "5.1.6" | "5.2.1" => "User unknown",
        "5.1.2" => "Host unknown",
        "5.3.5" => "Local configuration error",
        "5.4.6" => "Too many hops",
        "5.2.3" | "5.3.4" => "Message is too large",
        _ => "Service unavailable",
    }
}

/// The wait before attempt `attempts + 1`: [`backoff`] spread by up to ±10 % with `jitter`
/// (any number; the runner passes a random one, tests a chosen one), so messages deferred
/// together do not all come back in the same second. Never below `min`, never above `max`.
pub fn retry_delay(attempts: u32, min: Duration, max: Duration, jitter: u64) -> Duration {
    let base = backoff(attempts, min, max);
    let spread_ms = u64::try_from(base.as_millis() / 5).unwrap_or(u64::MAX);
    let offset = if spread_ms == 0 {
        0
    } else {
        jitter % (spread_ms + 1)
    };
    let low = base.saturating_sub(base / 10);
    (low + Duration::from_millis(offset)).clamp(min.min(max), max)
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

    #[test]
    fn retry_delay_spreads_within_ten_percent_and_the_bounds() {
        let m = Duration::from_secs(60);
        let h = Duration::from_secs(3600);
        // Attempt 3: 240 s, spread over 216..=264 s by the jitter.
        let got: Vec<u64> = [0, 24_000, 48_000, 48_001, u64::MAX]
            .iter()
            .map(|&j| retry_delay(3, m, h, j).as_secs())
            .collect();
        assert_eq!(
            got,
            vec![216, 240, 264, 216, 216 + (u64::MAX % 48_001) / 1000]
        );
        // Never below retry_min, never above retry_max.
        for j in [0, 1_000_000, u64::MAX] {
            let first = retry_delay(1, m, h, j);
            assert!(first >= m && first <= Duration::from_secs(66), "{first:?}");
            assert!(retry_delay(30, m, h, j) <= h);
        }
        assert_eq!(
            retry_delay(1, Duration::ZERO, Duration::ZERO, 7),
            Duration::ZERO
        );
    }
}
