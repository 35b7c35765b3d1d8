//! The pause holder: every connection in its greeting pause, held by one thread.
//!
//! Role: a paused connection only waits: for its deadline, its first byte or FIN, its name,
//! or shutdown. A tokio task per paused connection costs the task's cell and the socket's
//! registration with tokio's reactor (both 128-byte aligned) plus the pause's future, about
//! 1.3 KiB in all. Here a paused connection is a slot in one table (its socket, address,
//! runtime and [`Wait`]), one entry in a timer heap, and one entry in an epoll set of our own
//! (kernel memory), armed one-shot for the first byte or FIN. One thread waits on that set
//! (postscreen's design: one process holds every waiting client), woken early by an eventfd
//! when the accept loops hand it a connection, a name lookup answers (lookups run as tokio
//! tasks, bounded by `[dns] timeout`) or shutdown begins. When a pause ends, the socket goes
//! to tokio and the dialogue gets its task ([`crate::conn::dialogue`]). A thread rather than
//! a tokio task because tokio registers foreign descriptors (the epoll set's) only through
//! an `unsafe` API, and this workspace has none.
//!
//! The decisions are [`Wait`]'s, shared with [`crate::greet::pause`] (the same pause as one
//! future, for any stream: tests over `tokio::io::duplex`, and the fallback here when the
//! holder cannot take a socket).
//!
//! Must not: block on anything but the epoll set (every socket here is non-blocking), read
//! more than one byte from a client, or keep a socket past its pause.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read};
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{self, Ticket};
use crate::clock;
use crate::conn::dialogue;
use crate::dns::{ClientName, LookupFuture};
use crate::gate::SessionSlot;
use crate::greet::{self, Admitted, Opening, Paused, Pausing, Wait};
use crate::state::{Runtime, Shared};
use crate::telemetry::Event;

/// Connections handed over but not yet taken in (the accept loops wait when it is full).
const INBOX: usize = 1024;
/// Readiness events taken from the epoll set per wait.
const EVENTS: usize = 256;
/// The timer heap is rebuilt when it holds more than twice the live entries plus this many
/// (entries of connections that left early stay in it until they come due).
const HEAP_SLACK: usize = 1024;
/// First byte, FIN or error; one-shot, so a talker's further bytes cause no more events.
const ARMED: EpollFlags = EpollFlags::EPOLLIN
    .union(EpollFlags::EPOLLRDHUP)
    .union(EpollFlags::EPOLLONESHOT);
/// The epoll token of the eventfd (no connection's: their slot index is below `u32::MAX`).
const BELL: u64 = u64::MAX;

/// The accept loops' handle on the holder.
#[derive(Clone)]
pub struct Holder {
    inbox: mpsc::Sender<Msg>,
    /// Wakes the holder's thread.
    bell: Arc<EventFd>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

enum Msg {
    /// A connection to hold, with its name lookup if that is still running.
    Hold(Held, Option<LookupFuture>),
    /// A name lookup answered.
    Named { token: u64, name: ClientName },
}

/// One held connection.
struct Held {
    stream: std::net::TcpStream,
    peer: IpAddr,
    /// The runtime the connection started with.
    rt: Arc<Runtime>,
    wait: Wait,
    /// The name lookup's task, while it runs (aborted if the connection leaves first).
    lookup: Option<tokio::task::AbortHandle>,
    ticket: Ticket,
}

impl Holder {
    /// Creates the epoll set and starts the holder's thread. Call from within the tokio
    /// runtime: the thread releases connections into it. Shutdown (the token) stops the
    /// thread once every held connection has been handed its shutdown reply; until then the
    /// thread counts as a task of `tracker`.
    ///
    /// # Errors
    /// When the epoll set, the eventfd or the thread cannot be created.
    pub fn start(
        shared: Arc<Shared>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> io::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let bell = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        epoll.add(&bell, EpollEvent::new(EpollFlags::EPOLLIN, BELL))?;
        let (tx, rx) = mpsc::channel(INBOX);
        let holder = Self {
            inbox: tx,
            bell: Arc::new(bell),
            shared,
            shutdown,
            tracker,
        };
        let task = Task {
            holder: holder.clone(),
            epoll,
            table: Table::default(),
            timers: BinaryHeap::new(),
            serial: 0,
        };
        let runtime = tokio::runtime::Handle::current();
        let alive = holder.tracker.token();
        std::thread::Builder::new()
            .name("portcullis-hold".to_owned())
            .spawn(move || {
                let _context = runtime.enter();
                task.run(rx);
                drop(alive);
            })?;
        let (shutdown, bell) = (holder.shutdown.clone(), holder.bell.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            let _ = bell.write(1);
        });
        Ok(holder)
    }

    /// Takes a connection accepted just now from `peer`. Holds it when a pause applies; when
    /// none does, starts its dialogue (the name known at once: no reverse DNS, or a cached
    /// answer) or waits for its name in a task of its own (a lookup ends within `[dns]
    /// timeout`; clients with no pause are the exempt and the remembered, not the flood).
    pub async fn admit(&self, stream: tokio::net::TcpStream, peer: IpAddr, slot: SessionSlot) {
        let shared = &self.shared;
        let rt = shared.runtime.load_full();
        let mut wait = Wait::new(shared, &rt, peer, clock::now());
        let (ticket, entry) = admission::check_client(shared, &rt, peer);
        let ticket = ticket.with_slot(slot);
        wait.admit(entry);
        // Without reverse DNS (or with a cached answer) the name is there at once.
        let mut dns = wait.naming().then(|| rt.names.lookup(peer));
        if let Some(lookup) = &mut dns
            && let Poll::Ready(name) = lookup
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
        {
            wait.named(&name, &rt, peer);
            dns = None;
        }
        if dns.is_none()
            && let Some(opening) = wait.ready()
        {
            let admitted = wait.finish(opening);
            self.start_dialogue(rt, stream, peer, admitted, ticket);
            return;
        }
        if !wait.pauses() {
            return self.wait_alone(Pausing {
                shared: shared.clone(),
                rt,
                stream,
                peer,
                shutdown: self.shutdown.clone(),
                wait,
                dns,
                ticket,
            });
        }
        // Fails only for a socket already gone (reset): nothing to answer.
        let Ok(stream) = stream.into_std() else {
            return;
        };
        let held = Held {
            stream,
            peer,
            rt,
            wait,
            lookup: None,
            ticket,
        };
        if let Err(mpsc::error::SendError(Msg::Hold(held, dns))) =
            self.send(Msg::Hold(held, dns)).await
        {
            // The holder has stopped (shutdown).
            self.fallback(held, dns);
        }
    }

    async fn send(&self, msg: Msg) -> Result<(), mpsc::error::SendError<Msg>> {
        self.inbox.send(msg).await?;
        let _ = self.bell.write(1);
        Ok(())
    }

    /// The pause is over: the socket goes back to tokio and the dialogue starts.
    fn release(&self, held: Held, finish: impl FnOnce(Wait) -> Admitted) {
        if let Some(p) = self.unhold(held, None) {
            let admitted = finish(p.wait);
            self.start_dialogue(p.rt, p.stream, p.peer, admitted, p.ticket);
        }
    }

    fn start_dialogue(
        &self,
        rt: Arc<Runtime>,
        stream: tokio::net::TcpStream,
        peer: IpAddr,
        admitted: Admitted,
        ticket: Ticket,
    ) {
        self.tracker.spawn(dialogue(Paused {
            shared: self.shared.clone(),
            rt,
            stream,
            peer,
            shutdown: self.shutdown.clone(),
            admitted,
            ticket,
        }));
    }

    /// A held connection the holder cannot keep (its inbox closed at shutdown, or the epoll
    /// set refused the socket) waits on as a task of its own, with `dns` if its lookup had
    /// not started yet; one already running as a task is aborted (it answers the holder),
    /// and the pause goes on as if the lookup had failed.
    fn fallback(&self, held: Held, dns: Option<LookupFuture>) {
        if let Some(pausing) = self.unhold(held, dns) {
            self.wait_alone(pausing);
        }
    }

    /// Takes a connection out of the holder: its lookup task (if any) is aborted and its
    /// socket goes back to tokio. None if tokio cannot take the socket (logged).
    fn unhold(
        &self,
        held: Held,
        dns: Option<LookupFuture>,
    ) -> Option<Pausing<tokio::net::TcpStream>> {
        let Held {
            stream,
            peer,
            rt,
            wait,
            lookup,
            ticket,
        } = held;
        if let Some(lookup) = lookup {
            lookup.abort();
        }
        match tokio::net::TcpStream::from_std(stream) {
            Ok(stream) => Some(Pausing {
                shared: self.shared.clone(),
                rt,
                stream,
                peer,
                shutdown: self.shutdown.clone(),
                wait,
                dns,
                ticket,
            }),
            Err(e) => {
                self.registration_failed(&e);
                None
            }
        }
    }

    /// The pause as a task ([`greet::drive`]); the dialogue follows as a second task.
    fn wait_alone(&self, pausing: Pausing<tokio::net::TcpStream>) {
        let next = self.tracker.clone();
        self.tracker.spawn(greet::drive(pausing, move |paused| {
            next.spawn(dialogue(paused));
        }));
    }

    fn registration_failed(&self, error: &io::Error) {
        let error = format!("cannot register a connection with the reactor: {error}");
        self.shared
            .telemetry
            .emit(Event::AcceptFailed { error: &error });
    }
}

/// The held connections: slots reused through a free list. A token is the slot's index in
/// its low 32 bits and the item's serial in its high 32, so an answer meant for a connection
/// that has left never reaches the next one in its slot.
struct Table<T> {
    slots: Vec<Option<(u32, T)>>,
    free: Vec<u32>,
    live: usize,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }
}

fn token(serial: u32, index: usize) -> u64 {
    (u64::from(serial) << 32) | index as u64
}

impl<T> Table<T> {
    fn insert(&mut self, serial: u32, item: T) -> u64 {
        let index = match self.free.pop() {
            Some(i) => match self.slots.get_mut(i as usize) {
                Some(slot) => {
                    *slot = Some((serial, item));
                    i as usize
                }
                None => {
                    self.slots.push(Some((serial, item)));
                    self.slots.len() - 1
                }
            },
            None => {
                self.slots.push(Some((serial, item)));
                self.slots.len() - 1
            }
        };
        self.live += 1;
        token(serial, index)
    }

    fn index(&self, token: u64) -> Option<usize> {
        let index = usize::try_from(token & u64::from(u32::MAX)).ok()?;
        let serial = u32::try_from(token >> 32).ok()?;
        let (s, _) = self.slots.get(index)?.as_ref()?;
        (*s == serial).then_some(index)
    }

    fn get(&self, token: u64) -> Option<&T> {
        Some(&self.slots.get(self.index(token)?)?.as_ref()?.1)
    }

    fn get_mut(&mut self, token: u64) -> Option<&mut T> {
        let index = self.index(token)?;
        Some(&mut self.slots.get_mut(index)?.as_mut()?.1)
    }

    fn remove(&mut self, token: u64) -> Option<T> {
        let index = self.index(token)?;
        let (_, item) = self.slots.get_mut(index)?.take()?;
        self.live -= 1;
        if self.live == 0 {
            // After a flood, give the memory back.
            self.slots = Vec::new();
            self.free = Vec::new();
            return Some(item);
        }
        if let Ok(index) = u32::try_from(index) {
            self.free.push(index);
        }
        if self.live * 4 < self.slots.len() {
            // Mostly empty: drop the free slots at the end (a straggler at the front still
            // keeps its own), at a cost paid once per shrink, not per removal.
            while self.slots.last().is_some_and(Option::is_none) {
                self.slots.pop();
            }
            let len = self.slots.len();
            self.free.retain(|&i| (i as usize) < len);
            self.slots.shrink_to(len * 2);
            self.free.shrink_to(len);
        }
        Some(item)
    }

    fn drain(&mut self) -> impl Iterator<Item = T> + use<T> {
        self.live = 0;
        self.free = Vec::new();
        std::mem::take(&mut self.slots)
            .into_iter()
            .flatten()
            .map(|(_, item)| item)
    }

    fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        self.slots.iter().enumerate().filter_map(|(i, slot)| {
            let (serial, item) = slot.as_ref()?;
            Some((token(*serial, i), item))
        })
    }
}

/// The holder's thread.
struct Task {
    holder: Holder,
    epoll: Epoll,
    table: Table<Held>,
    /// Deadlines of held connections, soonest first. An entry whose connection has left or
    /// whose deadline has moved is skipped when it comes due.
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    serial: u32,
}

impl Task {
    fn run(mut self, mut inbox: mpsc::Receiver<Msg>) {
        let mut events = vec![EpollEvent::empty(); EVENTS];
        let mut failed = false;
        'run: while !self.holder.shutdown.is_cancelled() {
            let mut timeout = self.timeout();
            // Every ready socket is read before any deadline is judged: a byte that came
            // before its deadline makes a talker, however late this thread gets to it.
            loop {
                let n = match self.epoll.wait(&mut events, timeout) {
                    Ok(n) => n,
                    Err(Errno::EINTR) => continue 'run,
                    Err(e) => {
                        let error = format!("the greeting pause's epoll set failed: {e}");
                        self.holder
                            .shared
                            .telemetry
                            .emit(Event::AcceptFailed { error: &error });
                        failed = true;
                        break 'run;
                    }
                };
                for event in events.iter().take(n) {
                    match event.data() {
                        BELL => {
                            let _ = self.holder.bell.read();
                            while let Ok(msg) = inbox.try_recv() {
                                self.take(msg);
                            }
                        }
                        token => self.readable(token),
                    }
                }
                if n < events.len() {
                    break;
                }
                timeout = EpollTimeout::ZERO;
            }
            self.expire();
        }
        // Shutdown: every held connection, and every one still on its way here, gets the
        // shutdown reply; later arrivals find the inbox closed and run their pause alone.
        // (After a failure of the epoll set, each goes on as a task of its own instead.)
        inbox.close();
        for held in self.table.drain() {
            let _ = self.epoll.delete(&held.stream);
            if failed {
                self.holder.fallback(held, None);
            } else {
                self.holder.release(held, |w| w.finish(Opening::Shutdown));
            }
        }
        // Until every sender that had room has sent (try_recv would stop early).
        while let Some(msg) = inbox.blocking_recv() {
            if let Msg::Hold(held, dns) = msg {
                if failed {
                    self.holder.fallback(held, dns);
                } else {
                    self.holder.release(held, |w| w.finish(Opening::Shutdown));
                }
            }
        }
    }

    /// Until the soonest deadline, in whole milliseconds rounded up; forever when none.
    fn timeout(&self) -> EpollTimeout {
        let Some(Reverse((at, _))) = self.timers.peek() else {
            return EpollTimeout::NONE;
        };
        let left = at.saturating_duration_since(clock::now());
        let ms = left.as_nanos().div_ceil(1_000_000);
        EpollTimeout::try_from(ms).unwrap_or(EpollTimeout::MAX)
    }

    fn take(&mut self, msg: Msg) {
        match msg {
            Msg::Hold(held, lookup) => {
                self.serial = self.serial.wrapping_add(1);
                let wants_byte = held.wait.wants_byte();
                let token = self.table.insert(self.serial, held);
                if wants_byte && !self.arm(token, true) {
                    if let Some(held) = self.table.remove(token) {
                        self.holder.fallback(held, lookup);
                    }
                    return;
                }
                if let Some(lookup) = lookup {
                    let holder = self.holder.clone();
                    let task = tokio::spawn(async move {
                        let name = lookup.await;
                        let _ = holder.send(Msg::Named { token, name }).await;
                    });
                    if let Some(held) = self.table.get_mut(token) {
                        held.lookup = Some(task.abort_handle());
                    }
                }
                self.settle(token);
            }
            Msg::Named { token, name } => {
                if let Some(held) = self.table.get_mut(token) {
                    held.lookup = None;
                    held.wait.named(&name, &held.rt, held.peer);
                    self.settle(token);
                }
            }
        }
    }

    /// Asks for the connection's next byte or FIN. False when the epoll set refused it.
    fn arm(&self, token: u64, new: bool) -> bool {
        let Some(held) = self.table.get(token) else {
            return false;
        };
        let mut event = EpollEvent::new(ARMED, token);
        let armed = if new {
            self.epoll.add(&held.stream, event)
        } else {
            self.epoll.modify(&held.stream, &mut event)
        };
        armed.is_ok()
    }

    /// After news for `token`: ends its pause when that is decided, or files its deadline.
    fn settle(&mut self, token: u64) {
        let Some(held) = self.table.get(token) else {
            return;
        };
        if let Some(opening) = held.wait.ready() {
            self.release(token, |w| w.finish(opening));
        } else if let Some(at) = held.wait.deadline() {
            if at <= clock::now() {
                self.release_expired(token);
            } else {
                self.timers.push(Reverse((at, token)));
            }
        }
    }

    /// The epoll set says `token`'s socket has a byte, a FIN or an error.
    fn readable(&mut self, token: u64) {
        // Re-arming an fd already in the set fails only if the kernel is out of memory: the
        // connection then waits on as a task of its own.
        if self.try_byte(token) == Some(false)
            && !self.arm(token, false)
            && let Some(held) = self.table.remove(token)
        {
            let _ = self.epoll.delete(&held.stream);
            self.holder.fallback(held, None);
        }
    }

    /// Reads the client's first byte if there is one. Some(true): the connection has moved on
    /// (it talked, closed or failed); Some(false): nothing to read yet; None: not held.
    fn try_byte(&mut self, token: u64) -> Option<bool> {
        let held = self.table.get_mut(token)?;
        let mut one = [0u8; 1];
        match (&held.stream).read(&mut one) {
            Ok(1..) => {
                held.wait.byte(one[0], clock::now());
                self.settle(token);
                Some(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Some(false)
            }
            // A FIN (not traffic: the session sees end of input) or a reset.
            Ok(0) | Err(_) => {
                self.release(token, |w| w.finish(Opening::Closed));
                Some(true)
            }
        }
    }

    /// Ends the pauses whose deadline has come.
    fn expire(&mut self) {
        let now = clock::now();
        while let Some(&Reverse((at, token))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self
                .table
                .get(token)
                .is_some_and(|h| h.wait.deadline() == Some(at))
            {
                self.release_expired(token);
            }
        }
        if self.timers.len() > 2 * self.table.live + HEAP_SLACK {
            self.timers = self
                .table
                .iter()
                .filter_map(|(token, h)| Some(Reverse((h.wait.deadline()?, token))))
                .collect();
        }
    }

    /// The deadline has passed. A byte that is waiting unread arrived before it (this
    /// thread was late, or its events not yet fetched): the client talked.
    fn release_expired(&mut self, token: u64) {
        let Some(held) = self.table.get(token) else {
            return;
        };
        let peer = held.peer;
        if held.wait.wants_byte() && self.try_byte(token) != Some(false) {
            return;
        }
        let shared = self.holder.shared.clone();
        self.release(token, |w| w.expire(&shared, peer));
    }

    fn release(&mut self, token: u64, finish: impl FnOnce(Wait) -> Admitted) {
        if let Some(held) = self.table.remove(token) {
            // Not in the set (never armed) is fine.
            let _ = self.epoll.delete(&held.stream);
            self.holder.release(held, finish);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_outlives_its_connection_harmlessly() {
        let mut t = Table::default();
        let a = t.insert(1, "a");
        let b = t.insert(2, "b");
        assert_eq!((t.get(a), t.get(b), t.live), (Some(&"a"), Some(&"b"), 2));
        assert_eq!(t.remove(a), Some("a"));
        // The slot is reused by the next connection, under a new serial.
        let c = t.insert(3, "c");
        assert_eq!(c & u64::from(u32::MAX), a & u64::from(u32::MAX));
        assert_eq!(t.get(a), None, "a late answer for `a` must not reach `c`");
        assert_eq!(t.remove(a), None);
        assert_eq!(t.get(c), Some(&"c"));
        *t.get_mut(c).unwrap() = "c2";
        let mut all: Vec<_> = t.iter().map(|(tok, v)| (tok, *v)).collect();
        all.sort_unstable();
        assert_eq!(all, vec![(b, "b"), (c, "c2")]);
    }

    #[test]
    fn an_empty_table_gives_its_memory_back() {
        let mut t = Table::default();
        let tokens: Vec<_> = (0..1000).map(|i| t.insert(i, i)).collect();
        for tok in &tokens[..999] {
            t.remove(*tok);
        }
        assert_eq!(t.live, 1);
        assert!(t.slots.len() >= 1000);
        t.remove(tokens[999]);
        assert_eq!((t.live, t.slots.capacity(), t.free.capacity()), (0, 0, 0));
        // Tokens from before still resolve to nothing.
        let fresh = t.insert(5000, 1);
        assert_eq!(t.get(tokens[0]), None);
        assert_eq!(t.get(fresh), Some(&1));
    }

    #[test]
    fn a_straggler_does_not_keep_a_flood_s_slots() {
        let mut t = Table::default();
        let tokens: Vec<_> = (0..1000).map(|i| t.insert(i, i)).collect();
        for tok in &tokens[1..] {
            t.remove(*tok);
        }
        assert_eq!(t.live, 1);
        assert!(t.slots.len() <= 4, "{} slots kept", t.slots.len());
        assert!(t.free.iter().all(|&i| (i as usize) < t.slots.len()));
        assert_eq!(t.get(tokens[0]), Some(&0));
        // Reuse after the shrink.
        let next = t.insert(2000, 7);
        assert_eq!(t.get(next), Some(&7));
    }

    #[test]
    fn drain_empties_the_table() {
        let mut t = Table::default();
        for i in 0..10 {
            t.insert(i, i);
        }
        let mut out: Vec<_> = t.drain().collect();
        out.sort_unstable();
        assert_eq!(out, (0..10).collect::<Vec<_>>());
        assert_eq!((t.live, t.iter().count()), (0, 0));
    }
}
