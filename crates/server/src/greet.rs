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
//! Must not: allocate a read buffer while waiting. The wait reads at most one byte (into the
//! future's own state); only a talker, whose first bytes are needed for the log, gets a buffer.
//! A connection held here costs its socket, this future and the pending name lookup.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_policy::access::Tag;
use portcullis_policy::greet_pause::pause_for;
use portcullis_smtp::pregreet::GreetPause;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::dns::ClientName;
use crate::state::{Runtime, Shared};

/// How the session opens.
#[derive(Debug)]
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
}

/// Runs the pause for `peer`, which connected just now, and hands the result to `then`.
///
/// A continuation rather than a return value: the server's accept loop passes one that
/// spawns the dialogue as a new task, so the task that holds a paused connection is this
/// future alone (a wrapping `async` block would store the arguments a second time).
pub async fn pause<S, F, R>(
    shared: Arc<Shared>,
    mut stream: S,
    peer: IpAddr,
    shutdown: CancellationToken,
    then: F,
) -> R
where
    S: AsyncRead + Unpin,
    F: FnOnce(Paused<S>) -> R,
{
    let started = clock::now();
    let rt = shared.runtime.load_full();
    let admitted = {
        let mut w = Wait::new(&shared, &rt, peer, started);
        let mut one = [0u8; 1];
        // A byte that came while the name lookup was still pending: judged once the name (and
        // so the pause that applies) is known, as Sendmail resolves the name before it pauses.
        let mut early: Option<(u8, Instant)> = None;
        loop {
            if w.dns.is_none() {
                if let Some((first, at)) = early {
                    let opening = if w.pause.length().is_zero() {
                        Opening::Greet { first: Some(first) }
                    } else {
                        Opening::Talked { first, at }
                    };
                    break w.finish(opening);
                }
                if w.pause.length().is_zero() {
                    break w.finish(Opening::Greet { first: None });
                }
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break w.finish(Opening::Shutdown),
                n = stream.read(&mut one), if early.is_none() => match n {
                    Ok(1..) => early = Some((one[0], clock::now())),
                    Ok(0) | Err(_) => break w.finish(Opening::Closed),
                },
                name = poll_lookup(&mut w.dns) => w.named(&name, &rt, peer),
                () = sleep_until(w.pause.deadline()), if w.dns.is_none() => {
                    if !w.remembered {
                        shared.remember_pass(peer, clock::now());
                    }
                    break w.finish(Opening::Greet { first: None });
                }
            }
        }
    };
    then(Paused {
        shared,
        rt,
        stream,
        peer,
        shutdown,
        admitted,
    })
}

type Lookup = std::pin::Pin<Box<dyn Future<Output = ClientName> + Send>>;

/// The state of one pause. The runtime and the peer are not kept here: the pause future
/// already holds them, and every byte of a held connection counts.
struct Wait {
    pause: GreetPause,
    /// The pending name lookup.
    dns: Option<Lookup>,
    name: Option<String>,
    /// The client is in the pass cache: no pause.
    remembered: bool,
    entry_line: Option<u32>,
}

impl Wait {
    fn new(shared: &Shared, rt: &Runtime, peer: IpAddr, started: Instant) -> Self {
        let gp = &rt.config.greet_pause;
        let remembered = !gp.pass_ttl.is_zero() && shared.has_passed(peer, started);
        let mut w = Self {
            pause: GreetPause::new(started, Duration::ZERO),
            dns: Some(rt.names.lookup(peer)),
            name: None,
            remembered,
            entry_line: None,
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

    fn named(&mut self, name: &ClientName, rt: &Runtime, peer: IpAddr) {
        self.dns = None;
        self.name = name.confirmed().map(str::to_owned);
        if self.name.is_some() && rt.access.has_host_keys(Tag::GreetPause) {
            self.decide(rt, peer);
        }
    }

    fn finish(self, opening: Opening) -> Admitted {
        Admitted {
            name: self.name,
            opening,
            pause: self.pause,
            entry_line: self.entry_line,
        }
    }
}

async fn poll_lookup(dns: &mut Option<Lookup>) -> ClientName {
    match dns {
        Some(lookup) => lookup.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Instant) {
    tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
}
