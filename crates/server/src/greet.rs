//! The greeting pause, driven: what happens between accept and the first reply.
//!
//! Role: wait until the pause for this client is over (its length from
//! `portcullis_policy::greet_pause`, the deadline from `portcullis_smtp::pregreet`), while
//! watching for the client's first byte, its FIN, the reverse-DNS answer and shutdown. The
//! outcome is an [`Opening`] from which the driver builds the session.
//!
//! Order, as Sendmail: the client's name is resolved before the greeting (host-name keys beat
//! address keys, so the pause may change once the name is known; the greeting never goes out
//! before the lookup ended or timed out). Traffic ends the pause at once. With no pause at all,
//! nothing is read here (Sendmail only checks for early talkers when it pauses).
//!
//! Two drivers share the decisions in [`Wait`] (sans-IO: it is told of the byte, the name and
//! the time, and says when the pause is over and how the session opens): the server's
//! [`crate::hold`], which keeps every paused socket in one epoll set without a task each, and
//! [`pause`], the same wait as one future over any stream (tests over `tokio::io::duplex`, and
//! the holder's fallback).
//!
//! Must not: allocate a read buffer while waiting. The wait reads at most one byte; only a
//! talker, whose first bytes are needed for the log, gets a buffer (in the dialogue).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_policy::access::Tag;
use portcullis_policy::greet_pause::pause_for;
use portcullis_smtp::pregreet::GreetPause;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

use portcullis_policy::admission::Refusal;

use crate::admission::{self, Entry, Ticket};
use crate::clock;
use crate::dns::{ClientName, LookupFuture};
use crate::state::{Runtime, Shared};

/// How the session opens.
#[derive(Clone, Debug)]
pub enum Opening {
    /// The normal greeting; `first` is a byte that arrived while no pause applied (the
    /// client's name chose "no pause" while its lookup was pending).
    Greet { first: Option<u8> },
    /// The client closed its side during the pause (not traffic: a normal greeting, then end).
    Closed,
    /// The client talked before the greeting: its first byte and when it came. The driver
    /// reads what else arrived with it (a buffer exists only from here on).
    Talked { first: u8, at: Instant },
    /// The server is stopping.
    Shutdown,
    /// Admission turned the client away: its 421 in place of the greeting, then close.
    Refused(Refusal),
    /// Admission dropped the client: close without a word.
    Dropped,
}

/// The pause's outcome plus what was learnt on the way.
#[derive(Debug)]
pub struct Admitted {
    /// The confirmed client name, if any.
    pub name: Option<String>,
    /// How to open.
    pub opening: Opening,
    /// The pause as it stood at the end (its start and length).
    pub pause: GreetPause,
    /// The access-map line that set the pause; None for `greet_pause.default` or the pass
    /// cache. (A line number, not text: nothing is formatted unless there is a finding.)
    pub entry_line: Option<u32>,
    /// Admission let the client in but refuses its restricted commands (452).
    pub restrict: Option<Refusal>,
}

/// A connection whose pause is over: everything the dialogue needs, moved through the pause
/// rather than borrowed across it, so a held connection's task stores each value once.
pub struct Paused<S> {
    /// Shared state.
    pub shared: Arc<Shared>,
    /// The runtime the connection started with.
    pub rt: Arc<Runtime>,
    /// The client's stream.
    pub stream: S,
    /// The client's address.
    pub peer: IpAddr,
    /// Shutdown signal.
    pub shutdown: CancellationToken,
    /// The outcome.
    pub admitted: Admitted,
    /// The connection's place in the admission counts, released when the session ends.
    pub ticket: Ticket,
}

/// Runs the pause for `peer`, which connected just now, as one future, and hands the result
/// to `then`. The server holds its paused sockets in [`crate::hold`] instead; this form serves
/// any stream (tests drive it over `tokio::io::duplex` with paused time).
///
/// A continuation rather than a return value: a caller that spawns the dialogue as a new task
/// keeps the task that waits down to this future alone (a wrapping `async` block would store
/// the arguments a second time).
pub fn pause<S, F, R>(
    shared: Arc<Shared>,
    stream: S,
    peer: IpAddr,
    shutdown: CancellationToken,
    then: F,
) -> impl Future<Output = R>
where
    S: AsyncRead + Unpin,
    F: FnOnce(Paused<S>) -> R,
{
    let rt = shared.runtime.load_full();
    let mut wait = Wait::new(&shared, &rt, peer, clock::now());
    let (ticket, entry) = admission::check_client(&shared, &rt, peer);
    wait.admit(entry);
    let dns = wait.naming().then(|| rt.names.lookup(peer));
    drive(
        Pausing {
            shared,
            rt,
            stream,
            peer,
            shutdown,
            wait,
            dns,
            ticket,
        },
        then,
    )
}

/// A pause under way, before (or between) its drivers.
pub(crate) struct Pausing<S> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) rt: Arc<Runtime>,
    pub(crate) stream: S,
    pub(crate) peer: IpAddr,
    pub(crate) shutdown: CancellationToken,
    pub(crate) wait: Wait,
    /// The name lookup, while it runs.
    pub(crate) dns: Option<LookupFuture>,
    pub(crate) ticket: Ticket,
}

/// Drives a pause to its end as one future, then hands the result to `then`.
pub(crate) async fn drive<S, F, R>(pausing: Pausing<S>, then: F) -> R
where
    S: AsyncRead + Unpin,
    F: FnOnce(Paused<S>) -> R,
{
    let Pausing {
        shared,
        rt,
        mut stream,
        peer,
        shutdown,
        mut wait,
        mut dns,
        ticket,
    } = pausing;
    if dns.is_none() && wait.naming() {
        // The lookup was lost on the way here (the holder let the connection go): as if it
        // had failed, rather than wait for an answer that cannot come.
        wait.named(&ClientName::TempFail, &rt, peer);
    }
    let mut one = [0u8; 1];
    let admitted = loop {
        if let Some(opening) = wait.ready() {
            break wait.finish(opening);
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break wait.finish(Opening::Shutdown),
            n = stream.read(&mut one), if wait.wants_byte() => match n {
                Ok(1..) => wait.byte(one[0], clock::now()),
                Ok(0) | Err(_) => break wait.finish(Opening::Closed),
            },
            name = poll_lookup(&mut dns) => {
                dns = None;
                wait.named(&name, &rt, peer);
            }
            () = sleep_until(wait.deadline()) => break wait.expire(&shared, peer),
        }
    };
    then(Paused {
        shared,
        rt,
        stream,
        peer,
        shutdown,
        admitted,
        ticket,
    })
}

/// The state of one pause, without I/O: both [`pause`] and [`crate::hold`] feed it the
/// client's first byte, the name lookup's answer and the clock, and ask it when the pause is
/// over. The runtime and the peer are not kept here (their holders already have them): every
/// byte of a held connection counts.
#[derive(Debug)]
pub(crate) struct Wait {
    pause: GreetPause,
    /// The name lookup has not answered yet.
    naming: bool,
    name: Option<String>,
    /// The client is in the pass cache: no pause.
    remembered: bool,
    entry_line: Option<u32>,
    /// A byte that came before the pause was over, and when. Judged once the name (and so
    /// the pause that applies) is known, as Sendmail resolves the name before it pauses.
    early: Option<(u8, Instant)>,
    /// Admission's verdict: a refusal ends the pause before it begins; a restriction (452
    /// to restricted commands) is carried to the session.
    admission: Entry,
}

impl Wait {
    /// The pause for `peer`, which connected at `started`; its name is still to come.
    pub(crate) fn new(shared: &Shared, rt: &Runtime, peer: IpAddr, started: Instant) -> Self {
        let gp = &rt.config.greet_pause;
        let remembered = !gp.pass_ttl.is_zero() && shared.has_passed(peer, started);
        let mut w = Self {
            pause: GreetPause::new(started, Duration::ZERO),
            naming: true,
            name: None,
            remembered,
            entry_line: None,
            early: None,
            admission: Entry::Proceed(None),
        };
        w.decide(rt, peer);
        w
    }

    /// Sets the pause length from the access map (host name first, once known).
    fn decide(&mut self, rt: &Runtime, peer: IpAddr) {
        if self.remembered {
            self.pause.set_length(Duration::ZERO);
            return;
        }
        let default = rt.config.greet_pause.default;
        let (length, entry) = pause_for(&rt.access, default, self.name.as_deref(), peer);
        self.entry_line = entry.map(|e| e.line);
        self.pause.set_length(length);
    }

    /// Admission's verdict for this connection. When it turns the client away, the pause
    /// ends before it begins: no pause, no name lookup.
    pub(crate) fn admit(&mut self, entry: Entry) {
        self.admission = entry;
        if !matches!(entry, Entry::Proceed(_)) {
            self.naming = false;
            self.pause.set_length(Duration::ZERO);
        }
    }

    /// The name lookup answered.
    pub(crate) fn named(&mut self, name: &ClientName, rt: &Runtime, peer: IpAddr) {
        self.naming = false;
        self.name = name.confirmed().map(str::to_owned);
        if self.name.is_some() && rt.access.has_host_keys(Tag::GreetPause) {
            self.decide(rt, peer);
        }
    }

    /// True while the client's first byte is still of interest.
    pub(crate) fn wants_byte(&self) -> bool {
        self.early.is_none()
    }

    /// The client sent `first` at `at`.
    pub(crate) fn byte(&mut self, first: u8, at: Instant) {
        self.early = Some((first, at));
    }

    /// True while the name lookup has not answered.
    pub(crate) fn naming(&self) -> bool {
        self.naming
    }

    /// True when a pause applies (as it stands: the name may change it).
    pub(crate) fn pauses(&self) -> bool {
        !self.pause.length().is_zero()
    }

    /// When the pause ends by itself; None while the name is pending (the greeting waits
    /// for the lookup, which its own timeout bounds).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        (!self.naming).then(|| self.pause.deadline())
    }

    /// How the session opens, when that no longer depends on waiting: the name is known, and
    /// the client talked or no pause applies.
    pub(crate) fn ready(&self) -> Option<Opening> {
        match self.admission {
            Entry::Refuse(refusal) => return Some(Opening::Refused(refusal)),
            Entry::Drop => return Some(Opening::Dropped),
            Entry::Proceed(_) => {}
        }
        if self.naming {
            return None;
        }
        let no_pause = self.pause.length().is_zero();
        match self.early {
            Some((first, _)) if no_pause => Some(Opening::Greet { first: Some(first) }),
            Some((first, at)) => Some(Opening::Talked { first, at }),
            None if no_pause => Some(Opening::Greet { first: None }),
            None => None,
        }
    }

    /// The deadline passed with the client silent: it has earned its greeting, and a place in
    /// the pass cache.
    pub(crate) fn expire(self, shared: &Shared, peer: IpAddr) -> Admitted {
        if !self.remembered {
            shared.remember_pass(peer, clock::now());
        }
        self.finish(Opening::Greet { first: None })
    }

    /// The pause is over.
    pub(crate) fn finish(self, opening: Opening) -> Admitted {
        Admitted {
            name: self.name,
            opening,
            pause: self.pause,
            entry_line: self.entry_line,
            restrict: match self.admission {
                Entry::Proceed(restrict) => restrict,
                Entry::Refuse(_) | Entry::Drop => None,
            },
        }
    }
}

async fn poll_lookup(dns: &mut Option<LookupFuture>) -> ClientName {
    match dns {
        Some(lookup) => lookup.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
