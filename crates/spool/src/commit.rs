//! The group-commit worker pool: turns many concurrent "make this durable" requests
//! into few directory fsyncs.
//!
//! Role: a bounded queue in front of [`Spool::commit_batch`] and `threads` workers. Each
//! worker blocks for one message, drains whatever else is queued (up to `max_batch`)
//! without blocking, commits the batch, then runs the callbacks. Under load batches grow
//! by themselves; when idle a lone message is committed at once (no batching delay).
//! Must not: block the caller (`submit` uses `try_send`, so the server can answer
//! 452 4.3.1 at once), or hold the receiver lock while committing.
//! Invariants: every accepted message's callback runs exactly once, on a commit thread,
//! after its batch is durable or has failed; `shutdown` returns only when all of them
//! have run. A panicking callback is contained and does not stop its worker.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::{self, JoinHandle};

use crate::error::{SpoolError, SubmitError};
use crate::id::QueueId;
use crate::message::NewMessage;
use crate::spool::Spool;

/// Sizing of the committer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitOptions {
    /// Most messages per batch (one directory fsync each). At least 1.
    pub max_batch: usize,
    /// Messages that may wait for a worker before `submit` says `Full`. At least 1.
    pub queue_capacity: usize,
    /// Worker threads: while one fsyncs, another gathers the next batch. 0 means no
    /// threads: `submit` commits on the caller's thread before returning. That inline mode
    /// is for tools and for tests under paused tokio time, where a commit finishing on a
    /// thread tokio cannot see would let virtual time jump past every deadline.
    pub threads: usize,
}

impl Default for CommitOptions {
    fn default() -> Self {
        Self {
            max_batch: 64,
            queue_capacity: 1024,
            threads: 2,
        }
    }
}

/// Called once with the queue id (durable) or the error (not durable: answer 451).
pub type CommitCallback = Box<dyn FnOnce(Result<QueueId, SpoolError>) + Send>;

struct Job {
    msg: NewMessage,
    done: CommitCallback,
}

/// A pool of commit threads over one [`Spool`]. Dropping it shuts it down (and so
/// blocks until the queue is drained); call [`Committer::shutdown`] where blocking is fine.
pub struct Committer {
    /// `None` once shut down. Read-locked by `submit` (concurrent), write-locked once.
    sender: RwLock<Option<SyncSender<Job>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Inline mode (`threads == 0`): the spool, `None` once shut down.
    inline: RwLock<Option<Arc<Spool>>>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").finish_non_exhaustive()
    }
}

impl Committer {
    /// Starts `opts.threads` workers named `spool-commit-N` (zero sizes other than
    /// `threads` count as 1; `threads == 0` is inline mode).
    pub fn start(spool: Arc<Spool>, opts: CommitOptions) -> Result<Self, SpoolError> {
        if opts.threads == 0 {
            return Ok(Self {
                sender: RwLock::new(None),
                workers: Mutex::new(Vec::new()),
                inline: RwLock::new(Some(spool)),
            });
        }
        let (sender, receiver) = sync_channel(opts.queue_capacity.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        let max_batch = opts.max_batch.max(1);
        let mut workers = Vec::new();
        for n in 0..opts.threads {
            let (own_spool, own_receiver) = (Arc::clone(&spool), Arc::clone(&receiver));
            let spawned = thread::Builder::new()
                .name(format!("spool-commit-{n}"))
                .spawn(move || worker(&own_spool, &own_receiver, max_batch));
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(e) => {
                    // Closing the channel lets the workers already started exit.
                    drop(sender);
                    workers.into_iter().for_each(|w| drop(w.join()));
                    return Err(SpoolError::io(spool.dir(), e));
                }
            }
        }
        Ok(Self {
            sender: RwLock::new(Some(sender)),
            workers: Mutex::new(workers),
            inline: RwLock::new(None),
        })
    }

    /// Queues `msg` for commit without blocking. On `Ok`, `done` will be called exactly
    /// once; on `Err`, neither the message nor `done` is kept and `done` is not called.
    pub fn submit(&self, msg: NewMessage, done: CommitCallback) -> Result<(), SubmitError> {
        if let Some(spool) = &*self.inline.read().unwrap_or_else(PoisonError::into_inner) {
            let id = msg.envelope.id.clone();
            let result = spool
                .commit_batch(std::slice::from_ref(&msg))
                .pop()
                .unwrap_or(Ok(()))
                .map(|()| id);
            done(result);
            return Ok(());
        }
        let guard = self.sender.read().unwrap_or_else(PoisonError::into_inner);
        let sender = guard.as_ref().ok_or(SubmitError::Closed)?;
        sender.try_send(Job { msg, done }).map_err(|e| match e {
            TrySendError::Full(_) => SubmitError::Full,
            TrySendError::Disconnected(_) => SubmitError::Closed,
        })
    }

    /// Stops accepting, lets the workers commit everything already queued (all
    /// callbacks run), and joins them. Idempotent.
    pub fn shutdown(&self) {
        drop(
            self.inline
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        // Dropping the only sender disconnects the channel once it is drained.
        drop(
            self.sender
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let workers =
            std::mem::take(&mut *self.workers.lock().unwrap_or_else(PoisonError::into_inner));
        let me = thread::current().id();
        for worker in workers {
            // A callback that drops the last handle to us runs on a worker: don't join it.
            if worker.thread().id() != me {
                // A worker only panics on a bug in the spool; its jobs' callbacks are lost
                // with it, which the server sees as a timeout. Nothing to add here.
                let _ = worker.join();
            }
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn worker(spool: &Spool, receiver: &Mutex<Receiver<Job>>, max_batch: usize) {
    while let Some(jobs) = next_batch(receiver, max_batch) {
        let (msgs, callbacks): (Vec<NewMessage>, Vec<CommitCallback>) =
            jobs.into_iter().map(|job| (job.msg, job.done)).unzip();
        let results = spool.commit_batch(&msgs);
        for ((msg, done), result) in msgs.into_iter().zip(callbacks).zip(results) {
            let outcome = result.map(|()| msg.envelope.id);
            // Contain a panicking callback so the rest of the batch still hears back.
            let _ = catch_unwind(AssertUnwindSafe(move || done(outcome)));
        }
    }
}

/// Blocks for one job, then takes what is already queued, up to `max_batch`. `None`
/// when the channel is closed and empty. The lock is held only while gathering.
fn next_batch(receiver: &Mutex<Receiver<Job>>, max_batch: usize) -> Option<Vec<Job>> {
    // Receiving cannot panic, so a poisoned lock still guards a sound receiver.
    let receiver = receiver.lock().unwrap_or_else(PoisonError::into_inner);
    let mut batch = vec![receiver.recv().ok()?];
    while batch.len() < max_batch {
        match receiver.try_recv() {
            Ok(job) => batch.push(job),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
        }
    }
    Some(batch)
}
