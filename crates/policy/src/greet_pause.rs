//! The greeting pause: how long to wait before the 220, per client.
//!
//! Defends against: slamming spam bots (see [`portcullis_smtp::pregreet`], which times the
//! pause and classifies the traffic; this module only decides its length).
//!
//! Equivalents: Sendmail's `greet_pause` ruleset (cf/feature/greet_pause.m4): `GreetPause:`
//! access entries looked up by host name and its parent domains first, then by address and its
//! prefixes, tag only (no untagged entries, no empty-key default); nothing found → the feature
//! argument (`[greet_pause] default`). The value is milliseconds read with `strtol`: zero,
//! negative or junk means no pause; 300 s or more is clamped to 300 s. Postfix postscreen's
//! `postscreen_greet_wait` has no per-client override; its pass cache (`postscreen_cache_map`)
//! inspired [`PassCache`], which Sendmail does not have.
//!
//! Must not: read the clock or the network; time and the client's confirmed name are
//! arguments. Invariants: [`PassCache`] never holds more than its bound, and entries older than
//! the TTL are never reported as present.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use portcullis_smtp::pregreet;

use crate::access::{self, AccessMap, Entry, Tag};

/// The pause for one client and the access entry that chose it (None = the default).
pub fn pause_for<'m>(
    map: &'m AccessMap,
    default: Duration,
    host: Option<&str>,
    addr: IpAddr,
) -> (Duration, Option<Entry<'m>>) {
    match map.lookup_client_for(Tag::GreetPause, host, addr) {
        Some(entry) => (length_of(entry.value), Some(entry)),
        None => (pregreet::clamp(default), None),
    }
}

/// The pause a `GreetPause:` value asks for: milliseconds read as Sendmail's `strtol` reads
/// them (junk or negative = none), clamped to 300 s.
pub fn length_of(value: &str) -> Duration {
    pregreet::clamp(pregreet::from_millis(access::number(value)))
}

/// Clients that waited for the greeting, remembered for a while so they are not paused again
/// (Postfix postscreen's pass cache). Bounded: past `max` entries the oldest go first.
#[derive(Debug)]
pub struct PassCache {
    ttl: Duration,
    max: usize,
    passed: HashMap<IpAddr, Instant>,
    /// Insertion order with the instant of each insertion; an item whose instant no longer
    /// matches `passed` is stale (the client passed again later) and is skipped.
    order: VecDeque<(IpAddr, Instant)>,
}

impl PassCache {
    /// A cache remembering clients for `ttl` (zero = never), at most `max` of them.
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self {
            ttl,
            max: max.max(1),
            passed: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// New limits (after a reload); entries beyond the new bound are dropped, oldest first.
    pub fn reconfigure(&mut self, ttl: Duration, max: usize) {
        self.ttl = ttl;
        self.max = max.max(1);
        if ttl.is_zero() {
            self.passed.clear();
            self.order.clear();
        }
        self.evict_over_bound();
    }

    /// True when `addr` waited for a greeting less than the TTL ago.
    pub fn contains(&self, addr: IpAddr, now: Instant) -> bool {
        self.passed
            .get(&addr)
            .is_some_and(|&at| now.saturating_duration_since(at) < self.ttl)
    }

    /// `addr` waited for its greeting at `now`.
    pub fn insert(&mut self, addr: IpAddr, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        self.expire(now);
        self.passed.insert(addr, now);
        self.order.push_back((addr, now));
        self.evict_over_bound();
        if self.order.len() > 2 * self.max {
            // Many stale items (clients that passed repeatedly): keep only live ones.
            let passed = &self.passed;
            self.order.retain(|(a, t)| passed.get(a) == Some(t));
        }
    }

    /// Clients remembered now.
    pub fn len(&self) -> usize {
        self.passed.len()
    }

    /// True when nobody is remembered.
    pub fn is_empty(&self) -> bool {
        self.passed.is_empty()
    }

    /// Drops entries older than the TTL from the front of the order.
    fn expire(&mut self, now: Instant) {
        while let Some(&(addr, at)) = self.order.front() {
            if now.saturating_duration_since(at) < self.ttl {
                break;
            }
            self.order.pop_front();
            self.remove_if_current(addr, at);
        }
    }

    fn evict_over_bound(&mut self) {
        while self.passed.len() > self.max {
            let Some((addr, at)) = self.order.pop_front() else {
                self.passed.clear();
                return;
            };
            self.remove_if_current(addr, at);
        }
    }

    fn remove_if_current(&mut self, addr: IpAddr, at: Instant) {
        if self.passed.get(&addr) == Some(&at) {
            self.passed.remove(&addr);
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // Tests make up instants from the real clock.
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn remembers_for_the_ttl_only() {
        let t0 = Instant::now();
        let mut c = PassCache::new(Duration::from_secs(60), 10);
        assert!(!c.contains(ip(1), t0));
        c.insert(ip(1), t0);
        assert!(c.contains(ip(1), t0 + Duration::from_secs(59)));
        assert!(!c.contains(ip(1), t0 + Duration::from_secs(60)));
        // Expired entries leave on the next insert.
        c.insert(ip(2), t0 + Duration::from_secs(61));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn bounded_oldest_first() {
        let t0 = Instant::now();
        let mut c = PassCache::new(Duration::from_secs(3600), 3);
        for n in 1..=5 {
            c.insert(ip(n), t0 + Duration::from_secs(u64::from(n)));
        }
        assert_eq!(c.len(), 3);
        let now = t0 + Duration::from_secs(10);
        assert!(!c.contains(ip(1), now) && !c.contains(ip(2), now));
        assert!(c.contains(ip(3), now) && c.contains(ip(5), now));
    }

    #[test]
    fn repeated_passes_keep_the_latest_and_stay_bounded() {
        let t0 = Instant::now();
        let mut c = PassCache::new(Duration::from_secs(100), 2);
        for i in 0..1000u64 {
            c.insert(ip(1), t0 + Duration::from_millis(i));
        }
        assert_eq!(c.len(), 1);
        assert!(c.order.len() <= 4, "{}", c.order.len());
        c.insert(ip(2), t0 + Duration::from_secs(2));
        c.insert(ip(3), t0 + Duration::from_secs(3));
        // ip(1) is the oldest live entry and goes first.
        let now = t0 + Duration::from_secs(4);
        assert!(!c.contains(ip(1), now));
        assert!(c.contains(ip(2), now) && c.contains(ip(3), now));
    }

    #[test]
    fn zero_ttl_disables() {
        let t0 = Instant::now();
        let mut c = PassCache::new(Duration::ZERO, 10);
        c.insert(ip(1), t0);
        assert!(!c.contains(ip(1), t0));
        assert!(c.is_empty());
        let mut c = PassCache::new(Duration::from_secs(10), 10);
        c.insert(ip(1), t0);
        c.reconfigure(Duration::ZERO, 10);
        assert!(c.is_empty());
    }
}
