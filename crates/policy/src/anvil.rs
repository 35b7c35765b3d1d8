//! Connection counting per client: how many connections a client opened in the rate window
//! and how many it holds open now.
//!
//! Role: the counter behind `ClientRate:` and `ClientConn:` (Postfix's `anvil` server: it
//! counts, it never decides; [`crate::admission`] compares the [`Counts`] with the limits).
//! Counting sits behind the [`Anvil`] trait so a store shared by several servers can replace
//! [`MemoryAnvil`] later (design.md §3.3). An open connection is a [`ConnGuard`]: dropping it
//! is the disconnect, so no path through the server can forget one.
//!
//! Sendmail equivalent: `sendmail/ratectrl.c` (`${client_rate}`: 6 buckets per address of
//! `window / 6` seconds each, aligned in epoch time, reset when reused for a new tick; a
//! connection counts while `now_tick - tick <= 5`) and `count_open_connections()` in
//! `util.c` (`${client_connections}`). Both count in the daemon parent at `accept()`, before
//! any check, so refused connections count too and a client that keeps retrying stays
//! refused; both include the connection being counted. Sendmail keys both by the exact
//! address; [`ClientKey`] can widen that to a prefix (an IPv6 client usually owns a /64).
//!
//! Must not: decide anything, read the clock (`now` is an argument, Unix seconds), or grow
//! without bound.
//!
//! Bounded memory (Sendmail's table is 1024 slots where a collision evicts the oldest
//! entry): [`MemoryAnvil`] tracks at most `max_clients` keys, whatever number of distinct
//! addresses connect. An entry is *dead* when it has no open connection and no bucket
//! inside the window; dead entries are removed as the window passes them (a little work on
//! each connect) and are always the first to go. When a new key finds the table full, the
//! victim is the idle entry (no open connection) whose newest bucket is oldest, so the
//! least rate history is lost; only when every entry holds open connections is one of them
//! evicted, the one that opened first. That client's open count is then lost: its later
//! disconnects are ignored, or, if it has connected again meanwhile, taken from its new
//! entry (never below zero). Size `max_clients` above the session limit and this cannot
//! happen, since each entry with open connections holds at least one session. Every
//! operation is amortised O(1): entries sit in queues (one for entries with open
//! connections, six for idle ones, filed by the tick of their newest bucket) and nothing
//! scans the table per connection.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Buckets per client (Sendmail's `CHTSIZE`).
const BUCKETS: usize = 6;
/// A bucket counts while `now_tick - tick <= SPAN`: the current tick and the 5 before it.
const SPAN: u64 = BUCKETS as u64 - 1;
/// Granularity when `window / 6` is under a second (Sendmail's fallback).
const FALLBACK_GRANULARITY: u64 = 10;
/// Dead queue items removed per connect at most, so one connect never pays for a whole
/// tick's worth of clients. Each connect adds at most two queue items, so this keeps up.
const EXPIRE_BATCH: usize = 32;
/// Queue items beyond twice the bound (plus this) trigger a compaction of stale items.
const SLACK: usize = 64;

/// A client as the counters see it: its address masked to a prefix (the prefix length is
/// part of the key, so `192.0.2.0/24` and `192.0.2.0` differ).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    addr: IpAddr,
    prefix: u8,
}

impl ClientKey {
    /// The key for `addr`: IPv4 (and IPv4-mapped IPv6, `::ffff:192.0.2.1`, which is the
    /// same client) masked to `v4_prefix` bits, IPv6 to `v6_prefix` bits; prefixes beyond
    /// the address length are clamped to 32 and 128.
    pub fn new(addr: IpAddr, v4_prefix: u8, v6_prefix: u8) -> Self {
        match addr.to_canonical() {
            IpAddr::V4(a) => {
                let prefix = v4_prefix.min(32);
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                Self {
                    addr: IpAddr::V4(Ipv4Addr::from_bits(a.to_bits() & mask)),
                    prefix,
                }
            }
            IpAddr::V6(a) => {
                let prefix = v6_prefix.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                Self {
                    addr: IpAddr::V6(Ipv6Addr::from_bits(a.to_bits() & mask)),
                    prefix,
                }
            }
        }
    }

    /// The masked address (host bits zero).
    pub fn addr(self) -> IpAddr {
        self.addr
    }

    /// The prefix length the address was masked to.
    pub fn prefix(self) -> u8 {
        self.prefix
    }

    fn is_host(self) -> bool {
        match self.addr {
            IpAddr::V4(_) => self.prefix == 32,
            IpAddr::V6(_) => self.prefix == 128,
        }
    }
}

/// `192.0.2.1` for a whole address, CIDR (`192.0.2.0/24`, `2001:db8:1:2::/64`) otherwise.
impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_host() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// What [`Anvil::connect`] counted; both include the connection just counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Connections in the rate window (Sendmail's `${client_rate}`).
    pub rate: u32,
    /// Connections open now (Sendmail's `${client_connections}`).
    pub open: u32,
}

/// A connection counter shared by every session of the server.
pub trait Anvil: Send + Sync {
    /// Counts a new connection from `key` at `now` (Unix seconds) and returns the counts
    /// including it. Every accepted connection is counted, refused ones too, as Sendmail does.
    fn connect(&self, key: ClientKey, now: u64) -> Counts;

    /// One connection from `key` closed. Never goes below zero; an unknown key is ignored.
    fn disconnect(&self, key: ClientKey);

    /// How many keys are tracked now.
    fn tracked(&self) -> usize;
}

/// One open connection: dropping it tells the anvil the connection closed.
pub struct ConnGuard {
    anvil: Arc<dyn Anvil>,
    key: ClientKey,
}

impl ConnGuard {
    /// The client this connection is counted under.
    pub fn key(&self) -> ClientKey {
        self.key
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.anvil.disconnect(self.key);
    }
}

impl fmt::Debug for ConnGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnGuard").field("key", &self.key).finish()
    }
}

/// Counts a new connection from `key` at `now` and returns the counts with the guard that
/// closes it when dropped.
pub fn open(anvil: &Arc<dyn Anvil>, key: ClientKey, now: u64) -> (Counts, ConnGuard) {
    let counts = anvil.connect(key, now);
    let guard = ConnGuard {
        anvil: Arc::clone(anvil),
        key,
    };
    (counts, guard)
}

/// The in-process [`Anvil`]: one table behind a mutex, bounded to `max_clients` keys (see
/// the module documentation for what is evicted).
pub struct MemoryAnvil {
    table: Mutex<Table>,
}

impl MemoryAnvil {
    /// A counter with a rate window of `window` (Sendmail's `ConnectionRateWindowSize`,
    /// default 60 s) tracking at most `max_clients` keys (at least 1).
    pub fn new(window: Duration, max_clients: usize) -> Self {
        Self {
            table: Mutex::new(Table::new(granularity(window), max_clients)),
        }
    }

    /// New settings after a reload. Counts are kept; a new window converts each bucket to
    /// the new granularity by its start time. A smaller bound evicts at once.
    pub fn reconfigure(&self, window: Duration, max_clients: usize) {
        self.lock().reconfigure(granularity(window), max_clients);
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Nothing panics while holding the lock; if something ever did, the counts are
        // still better than refusing every connection.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Anvil for MemoryAnvil {
    fn connect(&self, key: ClientKey, now: u64) -> Counts {
        self.lock().connect(key, now)
    }

    fn disconnect(&self, key: ClientKey) {
        self.lock().disconnect(key);
    }

    fn tracked(&self) -> usize {
        self.lock().entries.len()
    }
}

impl fmt::Debug for MemoryAnvil {
    // The table may hold a million clients: say how it is set and how full it is.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.lock();
        f.debug_struct("MemoryAnvil")
            .field("granularity_secs", &t.granularity)
            .field("max_clients", &t.max)
            .field("tracked", &t.entries.len())
            .finish()
    }
}

/// Bucket length in seconds for a window: `window / 6`, or 10 s when that is 0 (ratectrl.c).
fn granularity(window: Duration) -> u64 {
    match window.as_secs() / BUCKETS as u64 {
        0 => FALLBACK_GRANULARITY,
        g => g,
    }
}

/// One client's counters. No heap allocation: 6 buckets, the open count, a queue stamp.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// Bucket `i` holds connections of tick `ticks[i]` (`tick % 6 == i` once used).
    ticks: [u64; BUCKETS],
    counts: [u32; BUCKETS],
    open: u32,
    /// The stamp of the entry's one valid queue item: the held queue while `open > 0`, an
    /// idle queue otherwise. Every change between the two states takes a fresh stamp.
    stamp: u64,
}

impl Slot {
    /// Adds a connection at `tick` and returns the rate including it (ratectrl.c).
    fn count(&mut self, tick: u64) -> u32 {
        let i = bucket_of(tick);
        if self.ticks[i] != tick {
            self.ticks[i] = tick;
            self.counts[i] = 0;
        }
        self.counts[i] = self.counts[i].saturating_add(1);
        self.rate(tick)
    }

    /// Connections in buckets at most [`SPAN`] ticks old. A bucket ahead of `tick` (the
    /// clock went back) still counts: it is recent.
    fn rate(&self, tick: u64) -> u32 {
        self.ticks
            .iter()
            .zip(self.counts)
            .filter(|&(&t, _)| tick.saturating_sub(t) <= SPAN)
            .fold(0u32, |sum, (_, c)| sum.saturating_add(c))
    }

    /// The tick of the newest bucket holding a connection.
    fn newest(&self) -> Option<u64> {
        self.ticks
            .iter()
            .zip(self.counts)
            .filter(|&(_, c)| c > 0)
            .map(|(&t, _)| t)
            .max()
    }

    /// True when the newest bucket is inside the window at `tick`.
    fn recent(&self, tick: u64) -> bool {
        self.newest()
            .is_some_and(|t| tick.saturating_sub(t) <= SPAN)
    }

    /// Re-buckets the history from granularity `from` to `to` (seconds), by bucket start.
    fn regrain(&mut self, from: u64, to: u64) {
        let old = *self;
        self.ticks = [0; BUCKETS];
        self.counts = [0; BUCKETS];
        for (t, c) in old.ticks.into_iter().zip(old.counts) {
            if c == 0 {
                continue;
            }
            let tick = t.saturating_mul(from) / to.max(1);
            let i = bucket_of(tick);
            if self.ticks[i] == tick {
                self.counts[i] = self.counts[i].saturating_add(c);
            } else if self.counts[i] == 0 || self.ticks[i] < tick {
                self.ticks[i] = tick;
                self.counts[i] = c;
            }
        }
    }
}

fn bucket_of(tick: u64) -> usize {
    // Always below BUCKETS, so the cast is lossless and the index in range.
    (tick % BUCKETS as u64) as usize
}

/// A queue item: valid while the entry for `key` still carries `stamp`.
#[derive(Clone, Copy, Debug)]
struct Item {
    key: ClientKey,
    stamp: u64,
}

/// Idle entries whose newest bucket is at `tick`.
#[derive(Debug, Default)]
struct IdleQueue {
    tick: u64,
    items: VecDeque<Item>,
}

#[derive(Debug)]
struct Table {
    /// Bucket length, seconds.
    granularity: u64,
    /// At most this many entries.
    max: usize,
    /// The latest `now` seen: the time deadness is judged at (never goes back).
    clock: u64,
    next_stamp: u64,
    entries: HashMap<ClientKey, Slot>,
    /// Entries with open connections, in the order they opened their first one.
    held: VecDeque<Item>,
    /// Idle entries, filed by the tick of their newest bucket: queue `t % 6` holds tick `t`.
    /// Six ticks cover the window, so a queue whose tick left the window holds only dead
    /// entries, and the queue with the smallest tick holds the oldest idle entries.
    idle: [IdleQueue; BUCKETS],
    /// Items in all idle queues, stale ones included.
    idle_items: usize,
}

impl Table {
    fn new(granularity: u64, max: usize) -> Self {
        Self {
            granularity,
            max: max.max(1),
            clock: 0,
            next_stamp: 0,
            entries: HashMap::new(),
            held: VecDeque::new(),
            idle: Default::default(),
            idle_items: 0,
        }
    }

    fn clock_tick(&self) -> u64 {
        self.clock / self.granularity
    }

    fn stamp(&mut self) -> u64 {
        self.next_stamp = self.next_stamp.wrapping_add(1);
        self.next_stamp
    }

    fn is_current(&self, item: Item) -> bool {
        self.entries
            .get(&item.key)
            .is_some_and(|s| s.stamp == item.stamp)
    }

    fn connect(&mut self, key: ClientKey, now: u64) -> Counts {
        self.clock = self.clock.max(now);
        self.expire();
        if !self.entries.contains_key(&key) && self.entries.len() >= self.max {
            self.evict_one();
        }
        let stamp = self.stamp();
        let tick = now / self.granularity;
        let slot = self.entries.entry(key).or_default();
        let rate = slot.count(tick);
        slot.open = slot.open.saturating_add(1);
        let open = slot.open;
        if open == 1 {
            slot.stamp = stamp;
            self.held.push_back(Item { key, stamp });
            self.compact_held();
        }
        Counts { rate, open }
    }

    fn disconnect(&mut self, key: ClientKey) {
        let clock_tick = self.clock_tick();
        let Some(slot) = self.entries.get_mut(&key) else {
            return;
        };
        if slot.open == 0 {
            return;
        }
        slot.open -= 1;
        if slot.open > 0 {
            return;
        }
        match slot.newest() {
            Some(tick) if clock_tick.saturating_sub(tick) <= SPAN => {
                self.next_stamp = self.next_stamp.wrapping_add(1);
                slot.stamp = self.next_stamp;
                let item = Item {
                    key,
                    stamp: slot.stamp,
                };
                self.file_idle(item, tick);
            }
            // Idle and nothing in the window: dead already.
            _ => {
                self.entries.remove(&key);
            }
        }
    }

    /// Puts an entry that just became idle in the queue of its newest tick.
    fn file_idle(&mut self, item: Item, tick: u64) {
        let i = bucket_of(tick);
        if self.idle[i].tick != tick {
            // Left over from six or more ticks ago: dead, not yet expired.
            let removed = drain(&mut self.entries, &mut self.idle[i], usize::MAX);
            self.idle_items -= removed;
            self.idle[i].tick = tick;
        }
        self.idle[i].items.push_back(item);
        self.idle_items += 1;
        self.compact_idle();
    }

    /// Removes up to [`EXPIRE_BATCH`] items from queues whose tick left the window.
    fn expire(&mut self) {
        let clock_tick = self.clock_tick();
        let mut budget = EXPIRE_BATCH;
        for q in &mut self.idle {
            if budget == 0 {
                break;
            }
            if !q.items.is_empty() && clock_tick.saturating_sub(q.tick) > SPAN {
                let removed = drain(&mut self.entries, q, budget);
                self.idle_items -= removed;
                budget -= removed;
            }
        }
    }

    /// Makes room for one entry: the oldest idle one (dead ones are the oldest), else the
    /// one with open connections that opened first.
    fn evict_one(&mut self) {
        if self.evict_idle() || self.evict_held() {
            return;
        }
        // Unreachable while every entry has its queue item; keep the bound regardless.
        if let Some(key) = self.entries.keys().next().copied() {
            self.entries.remove(&key);
        }
    }

    fn evict_idle(&mut self) -> bool {
        loop {
            let Some(q) = self
                .idle
                .iter_mut()
                .filter(|q| !q.items.is_empty())
                .min_by_key(|q| q.tick)
            else {
                return false;
            };
            let Some(item) = q.items.pop_front() else {
                return false;
            };
            self.idle_items -= 1;
            if self
                .entries
                .get(&item.key)
                .is_some_and(|s| s.stamp == item.stamp)
            {
                self.entries.remove(&item.key);
                return true;
            }
        }
    }

    fn evict_held(&mut self) -> bool {
        while let Some(item) = self.held.pop_front() {
            if self.is_current(item) {
                self.entries.remove(&item.key);
                return true;
            }
        }
        false
    }

    fn compaction_limit(&self) -> usize {
        self.max.saturating_mul(2).saturating_add(SLACK)
    }

    /// Drops stale items once they outnumber the entries: O(len) after at least `max`
    /// pushes, so amortised O(1).
    fn compact_held(&mut self) {
        if self.held.len() > self.compaction_limit() {
            let entries = &self.entries;
            self.held
                .retain(|it| entries.get(&it.key).is_some_and(|s| s.stamp == it.stamp));
        }
    }

    fn compact_idle(&mut self) {
        if self.idle_items > self.compaction_limit() {
            let entries = &self.entries;
            let mut left = 0;
            for q in &mut self.idle {
                q.items
                    .retain(|it| entries.get(&it.key).is_some_and(|s| s.stamp == it.stamp));
                left += q.items.len();
            }
            self.idle_items = left;
        }
    }

    fn reconfigure(&mut self, granularity: u64, max: usize) {
        self.max = max.max(1);
        if granularity != self.granularity {
            let from = self.granularity;
            self.granularity = granularity;
            self.refile(from);
        }
        while self.entries.len() > self.max {
            self.evict_one();
        }
    }

    /// Converts every history to the new granularity and files the idle entries again
    /// (their ticks changed). O(entries), once per reload.
    fn refile(&mut self, from: u64) {
        let clock_tick = self.clock_tick();
        let to = self.granularity;
        let mut idle = Vec::new();
        self.entries.retain(|&key, slot| {
            slot.regrain(from, to);
            if slot.open > 0 {
                return true;
            }
            let keep = slot.recent(clock_tick);
            if keep {
                idle.push(key);
            }
            keep
        });
        self.idle = Default::default();
        self.idle_items = 0;
        for key in idle {
            let stamp = self.stamp();
            let Some(slot) = self.entries.get_mut(&key) else {
                continue;
            };
            slot.stamp = stamp;
            if let Some(tick) = slot.newest() {
                self.file_idle(Item { key, stamp }, tick);
            }
        }
    }
}

/// Removes up to `max` items from the front of `q`, deleting the entries they still
/// stand for (idle entries whose newest bucket is at `q.tick`). Returns how many items
/// went.
fn drain(entries: &mut HashMap<ClientKey, Slot>, q: &mut IdleQueue, max: usize) -> usize {
    let mut removed = 0;
    while removed < max {
        let Some(item) = q.items.pop_front() else {
            break;
        };
        removed += 1;
        if entries
            .get(&item.key)
            .is_some_and(|s| s.stamp == item.stamp)
        {
            entries.remove(&item.key);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn host(s: &str) -> ClientKey {
        ClientKey::new(ip(s), 32, 128)
    }

    fn v4(n: u32) -> ClientKey {
        ClientKey::new(IpAddr::V4(Ipv4Addr::from_bits(n)), 32, 64)
    }

    fn shared(window: u64, max: usize) -> (Arc<MemoryAnvil>, Arc<dyn Anvil>) {
        let mem = Arc::new(MemoryAnvil::new(Duration::from_secs(window), max));
        let dynamic: Arc<dyn Anvil> = mem.clone();
        (mem, dynamic)
    }

    fn open_of(a: &MemoryAnvil, key: ClientKey) -> Option<u32> {
        a.lock().entries.get(&key).map(|s| s.open)
    }

    /// One connection that closes at once (as a refused client does).
    fn touch(a: &Arc<dyn Anvil>, key: ClientKey, now: u64) -> Counts {
        open(a, key, now).0
    }

    #[test]
    fn keys_mask_and_display() {
        let cases = [
            // (address, v4 prefix, v6 prefix, masked, display)
            ("192.0.2.77", 32, 64, "192.0.2.77", "192.0.2.77"),
            ("192.0.2.77", 24, 64, "192.0.2.0", "192.0.2.0/24"),
            ("192.0.2.77", 0, 64, "0.0.0.0", "0.0.0.0/0"),
            ("192.0.2.77", 99, 64, "192.0.2.77", "192.0.2.77"),
            (
                "2001:db8:1:2:3:4:5:6",
                32,
                64,
                "2001:db8:1:2::",
                "2001:db8:1:2::/64",
            ),
            ("2001:db8::1", 32, 200, "2001:db8::1", "2001:db8::1"),
            ("::1", 32, 128, "::1", "::1"),
            // IPv4-mapped IPv6 is the IPv4 client, under the IPv4 prefix.
            ("::ffff:192.0.2.77", 24, 64, "192.0.2.0", "192.0.2.0/24"),
            ("::ffff:192.0.2.77", 32, 64, "192.0.2.77", "192.0.2.77"),
        ];
        for (addr, p4, p6, masked, shown) in cases {
            let k = ClientKey::new(ip(addr), p4, p6);
            assert_eq!(k.addr(), ip(masked), "{addr} /{p4} /{p6}");
            assert_eq!(k.to_string(), shown, "{addr} /{p4} /{p6}");
        }
        assert_eq!(ClientKey::new(ip("::ffff:192.0.2.77"), 32, 64).prefix(), 32);
        // The prefix is part of the key.
        assert_ne!(
            ClientKey::new(ip("192.0.2.0"), 24, 64),
            ClientKey::new(ip("192.0.2.0"), 32, 64)
        );
        assert_eq!(
            ClientKey::new(ip("192.0.2.1"), 24, 64),
            ClientKey::new(ip("192.0.2.200"), 24, 64)
        );
    }

    #[test]
    fn granularity_is_a_sixth_of_the_window_or_ten_seconds() {
        assert_eq!(granularity(Duration::from_secs(60)), 10);
        assert_eq!(granularity(Duration::from_secs(12)), 2);
        assert_eq!(granularity(Duration::from_secs(5)), 10);
        assert_eq!(granularity(Duration::ZERO), 10);
    }

    /// reference/sendmail-behaviour.md §b "Window algorithm": window 12 s (g = 2 s),
    /// `ClientRate` 3, a burst of 4, then one probe; each probe is its own experiment, its
    /// start aligned so the tick difference is the one measured.
    #[test]
    fn reproduces_the_sendmail_window_measurement() {
        let even = 1_700_000_000;
        let limit = 3;
        // (probe offset s, burst start, tick difference, still over the limit)
        let probes = [
            (8, even, 4, true),
            (9, even, 4, true),
            (10, even, 5, true),
            (11, even + 1, 6, false),
            (12, even, 6, false),
        ];
        for (offset, t, diff, over) in probes {
            assert_eq!((t + offset) / 2 - t / 2, diff, "alignment for +{offset}");
            let (_, a) = shared(12, 100);
            let k = host("127.0.0.1");
            let burst: Vec<u32> = (0..4).map(|_| touch(&a, k, t).rate).collect();
            assert_eq!(burst, [1, 2, 3, 4]);
            let probe = touch(&a, k, t + offset).rate;
            assert_eq!(probe > limit, over, "+{offset}: rate {probe}");
            assert_eq!(probe, if over { 5 } else { 1 }, "+{offset}");
        }
    }

    #[test]
    fn buckets_reset_when_reused_and_count_five_ticks_back() {
        let (_, a) = shared(60, 100); // g = 10 s
        let k = host("192.0.2.1");
        assert_eq!(touch(&a, k, 1000).rate, 1); // tick 100
        assert_eq!(touch(&a, k, 1009).rate, 2); // same tick
        assert_eq!(touch(&a, k, 1010).rate, 3); // tick 101
        assert_eq!(touch(&a, k, 1059).rate, 4); // tick 105: tick 100 is 5 back, counted
        // Tick 106 reuses tick 100's bucket: its two connections are gone.
        assert_eq!(touch(&a, k, 1060).rate, 3);
        // Tick 107 drops tick 101.
        assert_eq!(touch(&a, k, 1070).rate, 3);
        // Much later everything is forgotten.
        assert_eq!(touch(&a, k, 5000).rate, 1);
        // Other clients count apart.
        assert_eq!(touch(&a, host("192.0.2.2"), 5000).rate, 1);
    }

    #[test]
    fn a_clock_going_back_does_not_lose_counts() {
        let (_, a) = shared(60, 100);
        let k = host("192.0.2.1");
        assert_eq!(touch(&a, k, 1000).rate, 1);
        assert_eq!(touch(&a, k, 990).rate, 2);
    }

    #[test]
    fn open_counts_follow_guards_and_never_underflow() {
        let (mem, a) = shared(60, 100);
        let k = host("192.0.2.1");
        let (c1, g1) = open(&a, k, 10);
        let (c2, g2) = open(&a, k, 11);
        assert_eq!(
            (c1, c2),
            (Counts { rate: 1, open: 1 }, Counts { rate: 2, open: 2 })
        );
        assert_eq!(g1.key(), k);
        drop(g1);
        assert_eq!(open_of(&mem, k), Some(1));
        drop(g2);
        assert_eq!(open_of(&mem, k), Some(0));
        // Extra and unknown disconnects are ignored.
        a.disconnect(k);
        a.disconnect(host("192.0.2.99"));
        assert_eq!(open_of(&mem, k), Some(0));
        assert_eq!(open_of(&mem, host("192.0.2.99")), None);
        assert_eq!(a.connect(k, 12), Counts { rate: 3, open: 1 });
    }

    #[test]
    fn prefix_keys_count_together() {
        let (_, a) = shared(60, 100);
        let k1 = ClientKey::new(ip("2001:db8:1:2::1"), 32, 64);
        let k2 = ClientKey::new(ip("2001:db8:1:2:ffff::9"), 32, 64);
        let (_c, _g) = open(&a, k1, 0);
        assert_eq!(a.connect(k2, 0), Counts { rate: 2, open: 2 });
    }

    #[test]
    fn dead_entries_leave_as_the_window_passes() {
        let (mem, a) = shared(60, 100);
        for n in 0..10 {
            touch(&a, v4(n), 1000);
        }
        let (_c, held) = open(&a, v4(100), 1000);
        assert_eq!(a.tracked(), 11);
        // Still inside the window at tick 105.
        touch(&a, v4(200), 1059);
        assert_eq!(a.tracked(), 12);
        // Tick 106: the idle clients of tick 100 are dead; the held one stays.
        touch(&a, v4(200), 1060);
        assert_eq!(a.tracked(), 2);
        assert_eq!(open_of(&mem, v4(100)), Some(1));
        // It becomes dead the moment it closes.
        drop(held);
        assert_eq!(open_of(&mem, v4(100)), None);
        assert_eq!(a.tracked(), 1);
    }

    #[test]
    fn full_table_evicts_oldest_idle_then_oldest_held() {
        let (mem, a) = shared(60, 3);
        let (_c, ga) = open(&a, v4(1), 0); // held
        touch(&a, v4(2), 10); // idle, tick 1
        touch(&a, v4(3), 20); // idle, tick 2
        // Full: v4(2) (oldest idle) goes, not the older held v4(1).
        touch(&a, v4(4), 30);
        assert_eq!(open_of(&mem, v4(2)), None);
        assert_eq!(open_of(&mem, v4(1)), Some(1));
        assert_eq!(open_of(&mem, v4(3)), Some(0));
        // A client that connected again is younger: v4(4) goes before v4(3).
        touch(&a, v4(3), 40);
        touch(&a, v4(5), 40);
        assert_eq!(open_of(&mem, v4(4)), None);
        assert_eq!(open_of(&mem, v4(3)), Some(0));
        assert_eq!(a.connect(v4(3), 41).rate, 3);
        a.disconnect(v4(3));
        // Every entry held: the one that opened first goes, and its guard's drop is
        // then ignored.
        let (_c, _g3) = open(&a, v4(3), 42);
        let (_c, _g5) = open(&a, v4(5), 42);
        let (_c, _g6) = open(&a, v4(6), 42);
        assert_eq!(a.tracked(), 3);
        assert_eq!(open_of(&mem, v4(1)), None);
        drop(ga);
        assert_eq!(open_of(&mem, v4(1)), None);
        assert_eq!(a.tracked(), 3);
    }

    #[test]
    fn a_million_clients_stay_within_the_bound() {
        let (mem, a) = shared(60, 1000);
        // Ten clients hold connections throughout.
        let held: Vec<(Counts, ConnGuard)> = (0..10).map(|n| open(&a, v4(n), 0)).collect();
        let mut now = 0;
        for n in 0..1_000_000u32 {
            // 2,000 new clients a second: 50 ticks pass, so clients die as well as being
            // evicted.
            if n % 2_000 == 0 {
                now += 1;
            }
            let key = v4(1_000 + n);
            let c = touch(&a, key, now);
            assert_eq!(c, Counts { rate: 1, open: 1 });
            assert!(a.tracked() <= 1000, "{} at {n}", a.tracked());
        }
        for (_, g) in &held {
            assert_eq!(open_of(&mem, g.key()), Some(1), "{}", g.key());
        }
        // The queues stay bounded too.
        let t = mem.lock();
        assert!(t.held.len() <= t.compaction_limit() + 1);
        assert!(t.idle_items <= t.compaction_limit() + 1);
        let items: usize = t.idle.iter().map(|q| q.items.len()).sum();
        assert_eq!(items, t.idle_items);
    }

    #[test]
    fn dead_entries_go_before_live_idle_ones() {
        let (mem, a) = shared(60, 4);
        // A client whose last connection is old but closed only now: dead on closing.
        let (_c, long) = open(&a, v4(1), 0);
        touch(&a, v4(2), 55); // idle, tick 5
        touch(&a, v4(3), 60); // idle, tick 6
        touch(&a, v4(4), 65); // idle, tick 6
        drop(long); // tick 0 is out of the window at tick 6
        assert_eq!(open_of(&mem, v4(1)), None);
        touch(&a, v4(5), 69); // idle, tick 6: the table is full
        assert_eq!(a.tracked(), 4);
        // Tick 11: v4(2) (tick 5) is dead and makes room; the live ones all stay.
        touch(&a, v4(6), 110);
        assert_eq!(open_of(&mem, v4(2)), None);
        for n in 3..=6 {
            assert_eq!(open_of(&mem, v4(n)), Some(0), "{n}");
        }
        assert_eq!(a.tracked(), 4);
    }

    #[test]
    fn reconfigure_keeps_history_and_applies_the_bound() {
        let (mem, a) = shared(60, 10);
        let k = host("192.0.2.1");
        for _ in 0..3 {
            touch(&a, k, 1000);
        }
        let (_c, g) = open(&a, host("192.0.2.2"), 1000);
        // 120 s window: g = 20 s, tick 50; still three connections in it.
        mem.reconfigure(Duration::from_secs(120), 10);
        assert_eq!(a.connect(k, 1100).rate, 4);
        a.disconnect(k);
        // Shrinking the bound evicts the idle client first.
        mem.reconfigure(Duration::from_secs(120), 1);
        assert_eq!(a.tracked(), 1);
        assert_eq!(open_of(&mem, g.key()), Some(1));
        drop(g);
        assert_eq!(a.tracked(), 1);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Connect { key: u8, dt: u8 },
        Drop(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..4, 0u8..30).prop_map(|(key, dt)| Op::Connect { key, dt }),
            any::<usize>().prop_map(Op::Drop),
        ]
    }

    proptest! {
        #[test]
        fn open_counts_equal_live_guards(ops in proptest::collection::vec(op(), 0..200)) {
            let (mem, a) = shared(12, 64);
            let mut now = 1_000;
            let mut guards: Vec<ConnGuard> = Vec::new();
            let keys: Vec<ClientKey> = (0..4).map(|n| v4(n + 1)).collect();
            for op in ops {
                match op {
                    Op::Connect { key, dt } => {
                        now += u64::from(dt);
                        let key = keys[usize::from(key)];
                        let (c, g) = open(&a, key, now);
                        guards.push(g);
                        let live = guards.iter().filter(|g| g.key() == key).count();
                        prop_assert_eq!(c.open as usize, live);
                        prop_assert!(c.rate >= 1);
                    }
                    Op::Drop(i) => {
                        if !guards.is_empty() {
                            let i = i % guards.len();
                            drop(guards.swap_remove(i));
                        }
                    }
                }
                for &key in &keys {
                    let live = guards.iter().filter(|g| g.key() == key).count() as u32;
                    let open = open_of(&mem, key).unwrap_or(0);
                    prop_assert_eq!(open, live, "{}", key);
                }
            }
            guards.clear();
            for &key in &keys {
                prop_assert_eq!(open_of(&mem, key).unwrap_or(0), 0);
            }
        }
    }
}
