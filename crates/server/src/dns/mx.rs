//! Mail exchangers of a domain: MX resolution for relay delivery.
//!
//! Role: turn a next hop `smtp:example.net` into the hosts to try, most preferred first, each
//! with its addresses, or into an error that says whether to bounce or retry. The queue holds
//! an `Arc<dyn MxLookup>`: [`HickoryMx`] in production, [`StaticMx`] for tests and the bench.
//!
//! Semantics (RFC 5321 §5.1, RFC 7505, and what Sendmail and Postfix do):
//! - the MX records are sorted by preference, lowest first. Equal preferences are shuffled
//!   (RFC 5321 §5.1: the client MUST randomise them to spread the load), with a seed the
//!   caller may fix ([`HickoryMx::with_seed`]) for reproducible tests. Answer order is not
//!   enough: the resolver caches the answer, so every delivery for a TTL would pick the same
//!   host;
//! - exchanges that are not valid host names ([`normalize_host_name`]: an address written as
//!   a name, a label with a space) are dropped, as are repeats of a host (the lowest
//!   preference stays); at most [`MAX_MX_HOSTS`] hosts are kept, after the shuffle;
//! - each host's A and AAAA records are asked for at once, and the hosts are resolved
//!   concurrently; a host's addresses are its IPv4 ones, then its IPv6 ones, at most
//!   [`MAX_ADDRS_PER_HOST`]. IPv4 first, because an IPv6 route that is configured but broken
//!   is still common and costs a connect timeout per attempt (Postfix's default is no family
//!   preference with `smtp_address_preference = any`; Sendmail tries IPv6 first). The cap
//!   keeps both families when both exist, as Postfix's `smtp_balance_inet_protocols` does,
//!   so a host with many AAAA records cannot crowd out its A records, or the reverse;
//! - a host whose address lookups fail temporarily (SERVFAIL, timeout) is left out, and so
//!   is one without addresses (NXDOMAIN, NODATA); when no host has an address the answer is
//!   [`MxError::Temporary`] if any failure was temporary, else [`MxError::NoAddresses`], a
//!   permanent error. Sendmail bounces then (5.1.2 "Host unknown (Name server: host: host
//!   not found)", naming the last host it tried); Postfix too (5.4.4, with its default
//!   `smtp_defer_if_no_mx_address_found = no`). A temporary failure dominates a permanent
//!   one, as in Postfix: the missing host may be the one that would answer;
//! - no MX records (NODATA) means the implicit MX: the domain itself, preference 0, with
//!   its A/AAAA records (RFC 5321 §5.1); no addresses there either is
//!   [`MxError::NoAddresses`] naming the domain;
//! - NXDOMAIN for the MX query is [`MxError::NoSuchDomain`] (Sendmail: 5.1.2 "Host unknown
//!   (Name server: domain: host not found)"). With the system configuration and a hosts
//!   file in use, the domain's addresses are still looked for there first, as Sendmail's
//!   `getmxrr` does ("might be in /etc/hosts"); with explicit servers there is nothing else
//!   to ask, so no further query is made;
//! - a null MX (RFC 7505 §3): the only MX record has the root `.` as its exchange. It is
//!   [`MxError::NullMx`], whatever its preference (the RFC writes 0; a record naming no host
//!   cannot mean anything else, and Postfix ignores the preference too). A `.` among other
//!   MX records (which RFC 7505 §3 forbids) is dropped like any other invalid exchange and
//!   the other hosts are used, as OpenSMTPD does: they are explicit routes;
//! - SERVFAIL, REFUSED, a timeout or a network error on the MX query is
//!   [`MxError::Temporary`]; so is a lookup that outlives its timeout (the whole lookup is
//!   bounded by one `tokio::time::timeout`);
//! - a domain that is not a valid host name is [`MxError::NoSuchDomain`]. Address literals
//!   (`[192.0.2.1]`) are the caller's: they never reach this module.
//!
//! Must not: block a thread, read the clock, panic on odd answers, connect anywhere, or
//! decide about loops (an MX host that is this server: the caller's, as Postfix's
//! `smtp_find_self` is apart from its MX lookup).
//!
//! Invariants: `Ok` holds at least one target; targets are in the order to try; every host
//! name is lowercase, has no trailing dot and passes [`normalize_host_name`]; every target
//! has 1 to [`MAX_ADDRS_PER_HOST`] addresses and there are at most [`MAX_MX_HOSTS`] targets;
//! a lookup never takes longer than its timeout (plus scheduling); the future owns
//! everything it uses (`'static + Send`).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::rdata::MX;
use hickory_resolver::proto::rr::{Name, RData, RecordType};

use super::{build_resolver, host_name_from_labels, normalize_host_name};

/// Mail exchangers kept at most (each costs two address queries).
pub const MAX_MX_HOSTS: usize = 10;

/// Addresses kept at most per mail exchanger.
pub const MAX_ADDRS_PER_HOST: usize = 10;

/// Step of the seed sequence (2^64 / φ, SplitMix64's increment).
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// One host to try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Lowercase, no trailing dot.
    pub host: String,
    /// The MX preference (0 for the implicit MX).
    pub preference: u16,
    /// IPv4 addresses, then IPv6, never empty.
    pub addrs: Vec<IpAddr>,
}

/// Why a domain has no host to try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MxError {
    /// RFC 7505 null MX: the domain accepts no mail. Permanent; Sendmail: 5.1.10 "Domain
    /// does not accept mail" (`nullmx`).
    NullMx,
    /// NXDOMAIN (or not a valid domain name). Permanent; Sendmail: 5.1.2 "Host unknown
    /// (Name server: domain: host not found)".
    NoSuchDomain,
    /// Mail exchangers exist (or the implicit one) but none has an address, and no lookup
    /// failed temporarily. Permanent. The host named is the last one in MX order that has
    /// no address (the domain itself for the implicit MX, or when no MX record names a
    /// valid host), the one Sendmail names in "Host unknown (Name server: host: host not
    /// found)".
    NoAddresses(String),
    /// SERVFAIL, timeout, network error: try again later. The text is for the log.
    Temporary(String),
}

impl MxError {
    /// Whether the message should bounce rather than wait for another try.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::NullMx | Self::NoSuchDomain | Self::NoAddresses(_) => true,
            Self::Temporary(_) => false,
        }
    }
}

impl std::fmt::Display for MxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NullMx => f.write_str("domain does not accept mail (null MX)"),
            Self::NoSuchDomain => f.write_str("domain not found"),
            Self::NoAddresses(host) => write!(f, "no mail exchanger has an address ({host})"),
            Self::Temporary(text) => write!(f, "temporary DNS failure: {text}"),
        }
    }
}

impl std::error::Error for MxError {}

/// The future a lookup returns: owned, boxed, sendable.
pub type MxFuture = Pin<Box<dyn Future<Output = Result<Vec<Target>, MxError>> + Send + 'static>>;

/// Finds the mail exchangers of a domain. Object-safe, so the queue holds `Arc<dyn MxLookup>`.
pub trait MxLookup: Send + Sync + 'static {
    /// The hosts to try for `domain` (a domain name, any case, trailing dot or not), bounded
    /// in time by the implementation.
    fn lookup(&self, domain: &str) -> MxFuture;
}

/// The production lookup, on hickory-resolver.
#[derive(Clone)]
pub struct HickoryMx {
    resolver: Arc<TokioResolver>,
    timeout: Duration,
    /// Whether the resolver reads the hosts file (worth asking after an NXDOMAIN).
    hosts_file: bool,
    /// Base of the shuffle seeds.
    seed: u64,
    /// Lookups started, so each shuffles differently.
    lookups: Arc<AtomicU64>,
}

impl std::fmt::Debug for HickoryMx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HickoryMx")
            .field("timeout", &self.timeout)
            .field("hosts_file", &self.hosts_file)
            .finish_non_exhaustive()
    }
}

impl HickoryMx {
    /// `servers` empty = the system configuration (/etc/resolv.conf); otherwise these UDP/TCP
    /// servers (ip:port). `timeout` bounds the whole lookup (MX + address queries). The
    /// shuffle of equal preferences is seeded from the process's random hash keys.
    pub fn new(servers: &[SocketAddr], timeout: Duration) -> Result<Self, String> {
        let built = build_resolver(servers, timeout)?;
        Ok(Self {
            resolver: built.resolver,
            timeout,
            hosts_file: built.hosts_file,
            seed: RandomState::new().hash_one(GOLDEN),
            lookups: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The same lookup with a fixed shuffle seed: the same seed gives the same sequence of
    /// orders, lookup after lookup (for tests).
    pub fn with_seed(self, seed: u64) -> Self {
        Self {
            seed,
            lookups: Arc::new(AtomicU64::new(0)),
            ..self
        }
    }

    /// The shuffle state of the next lookup.
    fn next_shuffle(&self) -> u64 {
        let n = self.lookups.fetch_add(1, Ordering::Relaxed);
        let mut state = self.seed.wrapping_add(n.wrapping_mul(GOLDEN));
        splitmix64(&mut state)
    }
}

impl MxLookup for HickoryMx {
    fn lookup(&self, domain: &str) -> MxFuture {
        let resolver = Arc::clone(&self.resolver);
        let timeout = self.timeout;
        let hosts_file = self.hosts_file;
        let shuffle = self.next_shuffle();
        let domain = normalize_host_name(domain);
        Box::pin(async move {
            let Some(domain) = domain else {
                return Err(MxError::NoSuchDomain);
            };
            let work = resolve(resolver, domain.clone(), hosts_file, shuffle);
            tokio::time::timeout(timeout, work)
                .await
                .unwrap_or_else(|_| {
                    Err(MxError::Temporary(format!(
                        "MX lookup for {domain} timed out after {timeout:?}"
                    )))
                })
        })
    }
}

/// MX query, then the addresses of the hosts; `domain` is normalised.
async fn resolve(
    resolver: Arc<TokioResolver>,
    domain: String,
    hosts_file: bool,
    shuffle: u64,
) -> Result<Vec<Target>, MxError> {
    let name = absolute(&domain).ok_or(MxError::NoSuchDomain)?;
    let records = match resolver.lookup(name.clone(), RecordType::MX).await {
        Ok(lookup) => mx_records(&lookup),
        Err(e) if e.is_nx_domain() => {
            if !hosts_file {
                return Err(MxError::NoSuchDomain);
            }
            // The hosts file may still know the name (Sendmail's getmxrr); DNS has spoken.
            return implicit(&resolver, name, domain)
                .await
                .map_err(|_| MxError::NoSuchDomain);
        }
        Err(e) if e.is_no_records_found() => Vec::new(),
        Err(e) => {
            return Err(MxError::Temporary(format!("MX lookup for {domain}: {e}")));
        }
    };
    if records.is_empty() {
        return implicit(&resolver, name, domain).await;
    }
    if let [only] = records.as_slice()
        && only.exchange.is_root()
    {
        return Err(MxError::NullMx);
    }
    let hosts = order(candidates(&records), shuffle);
    if hosts.is_empty() {
        return Err(MxError::NoAddresses(domain));
    }
    let found = join_all(hosts.iter().map(|c| host_addrs(&resolver, c.name.clone()))).await;
    collect(hosts, found)
}

/// The MX records among the answers (a CNAME may precede them).
fn mx_records(lookup: &Lookup) -> Vec<MX> {
    lookup
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::MX(mx) => Some(mx.clone()),
            _ => None,
        })
        .collect()
}

/// The implicit MX (RFC 5321 §5.1): the domain itself, preference 0.
async fn implicit(
    resolver: &TokioResolver,
    name: Name,
    domain: String,
) -> Result<Vec<Target>, MxError> {
    match host_addrs(resolver, name).await {
        HostAddrs::Found(addrs) => Ok(vec![Target {
            host: domain,
            preference: 0,
            addrs,
        }]),
        HostAddrs::Missing => Err(MxError::NoAddresses(domain)),
        HostAddrs::Temporary(text) => Err(MxError::Temporary(format!("{domain}: {text}"))),
    }
}

/// The targets that have addresses, in order; else the error the failures add up to.
fn collect(hosts: Vec<Candidate>, found: Vec<HostAddrs>) -> Result<Vec<Target>, MxError> {
    let mut targets = Vec::new();
    let mut temporary = None;
    let mut missing = None;
    for (host, addrs) in hosts.into_iter().zip(found) {
        match addrs {
            HostAddrs::Found(addrs) => targets.push(Target {
                host: host.host,
                preference: host.preference,
                addrs,
            }),
            HostAddrs::Missing => missing = Some(host.host),
            HostAddrs::Temporary(text) => {
                temporary.get_or_insert_with(|| format!("{}: {text}", host.host));
            }
        }
    }
    match (targets.is_empty(), temporary, missing) {
        (false, _, _) => Ok(targets),
        (true, Some(text), _) => Err(MxError::Temporary(text)),
        (true, None, Some(host)) => Err(MxError::NoAddresses(host)),
        (true, None, None) => Err(MxError::Temporary("no lookup result".to_owned())),
    }
}

/// A mail exchanger before its addresses are known.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Candidate {
    preference: u16,
    /// Absolute, to query.
    name: Name,
    /// Normalised, to report.
    host: String,
}

/// The MX records whose exchange is a valid host name, in answer order.
fn candidates(records: &[MX]) -> Vec<Candidate> {
    records
        .iter()
        .filter_map(|mx| {
            let host = host_name_from_labels(mx.exchange.iter())?;
            let mut name = mx.exchange.clone();
            name.set_fqdn(true);
            Some(Candidate {
                preference: mx.preference,
                name,
                host,
            })
        })
        .collect()
}

/// Sorted by preference (stable), repeats dropped, equal preferences shuffled with
/// `shuffle`, at most [`MAX_MX_HOSTS`].
fn order(mut hosts: Vec<Candidate>, mut shuffle: u64) -> Vec<Candidate> {
    hosts.sort_by_key(|c| c.preference);
    let mut seen = HashSet::new();
    hosts.retain(|c| seen.insert(c.host.clone()));
    for run in hosts.chunk_by_mut(|a, b| a.preference == b.preference) {
        fisher_yates(run, &mut shuffle);
    }
    hosts.truncate(MAX_MX_HOSTS);
    hosts
}

/// Shuffles `items` uniformly (up to a negligible modulo bias).
fn fisher_yates<T>(items: &mut [T], state: &mut u64) {
    for i in (1..items.len()).rev() {
        let bound = u64::try_from(i + 1).unwrap_or(u64::MAX);
        let j = usize::try_from(splitmix64(state) % bound).unwrap_or(0);
        items.swap(i, j);
    }
}

/// SplitMix64: a small, well-mixed generator; load spreading needs no more.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(GOLDEN);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What the address lookups of one host found.
#[derive(Debug)]
enum HostAddrs {
    /// Capped, IPv4 first.
    Found(Vec<IpAddr>),
    /// NXDOMAIN or NODATA for both families.
    Missing,
    /// No address, and a lookup failed temporarily.
    Temporary(String),
}

/// A and AAAA of `name`, asked at once.
async fn host_addrs(resolver: &TokioResolver, name: Name) -> HostAddrs {
    let (v4, v6) = tokio::join!(
        resolver.lookup(name.clone(), RecordType::A),
        resolver.lookup(name, RecordType::AAAA)
    );
    let mut addrs = Vec::new();
    let mut temporary = None;
    for result in [v4, v6] {
        match addresses(result) {
            Ok(found) => addrs.extend(found),
            Err(text) => {
                temporary.get_or_insert(text);
            }
        }
    }
    match (addrs.is_empty(), temporary) {
        (false, _) => HostAddrs::Found(cap_addresses(addrs, MAX_ADDRS_PER_HOST)),
        (true, Some(text)) => HostAddrs::Temporary(text),
        (true, None) => HostAddrs::Missing,
    }
}

/// The addresses one query found (none for NXDOMAIN or NODATA), or a temporary failure.
fn addresses(result: Result<Lookup, NetError>) -> Result<Vec<IpAddr>, String> {
    match result {
        Ok(lookup) => Ok(lookup
            .answers()
            .iter()
            .filter_map(|r| r.data.ip_addr())
            .collect()),
        Err(e) if e.is_no_records_found() => Ok(Vec::new()),
        Err(e) => Err(e.to_string()),
    }
}

/// At most `cap` addresses, IPv4 then IPv6, each family in its order. When both families
/// are present and too many, each keeps at least half of `cap` (Postfix's balancing), and
/// a family with fewer leaves the rest to the other.
fn cap_addresses(addrs: Vec<IpAddr>, cap: usize) -> Vec<IpAddr> {
    let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = addrs.into_iter().partition(IpAddr::is_ipv4);
    let keep_v6 = v6.len().min((cap / 2).max(cap.saturating_sub(v4.len())));
    let keep_v4 = v4.len().min(cap - keep_v6);
    v4.into_iter()
        .take(keep_v4)
        .chain(v6.into_iter().take(keep_v6))
        .collect()
}

/// The absolute name of a normalised domain.
fn absolute(domain: &str) -> Option<Name> {
    let mut name = Name::from_ascii(domain).ok()?;
    name.set_fqdn(true);
    Some(name)
}

/// Runs `futures` concurrently in the calling task; their outputs, in order. Dropping the
/// returned future drops them all (that is how the lookup's timeout cancels them).
async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (future, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => done = false,
                }
            }
        }
        if done { Poll::Ready(()) } else { Poll::Pending }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// A fixed domain → targets table, for tests and the bench. Answers are returned as given
/// (no sorting, shuffling or caps); unknown domains are [`MxError::NoSuchDomain`], a domain
/// listed with no targets is [`MxError::NoAddresses`].
#[derive(Clone, Debug, Default)]
pub struct StaticMx {
    table: HashMap<String, Result<Vec<Target>, MxError>>,
}

impl StaticMx {
    /// The table; domains are normalised ([`normalize_host_name`]) and entries whose domain
    /// is not a valid host name are left out.
    pub fn new(table: impl IntoIterator<Item = (String, Vec<Target>)>) -> Self {
        let table = table
            .into_iter()
            .filter_map(|(domain, targets)| {
                let domain = normalize_host_name(&domain)?;
                let answer = if targets.is_empty() {
                    Err(MxError::NoAddresses(domain.clone()))
                } else {
                    Ok(targets)
                };
                Some((domain, answer))
            })
            .collect();
        Self { table }
    }

    /// The same table, with `domain` answering `error` (ignored if `domain` is not a valid
    /// host name).
    pub fn with_error(mut self, domain: &str, error: MxError) -> Self {
        if let Some(domain) = normalize_host_name(domain) {
            self.table.insert(domain, Err(error));
        }
        self
    }
}

impl MxLookup for StaticMx {
    fn lookup(&self, domain: &str) -> MxFuture {
        let answer = normalize_host_name(domain)
            .and_then(|d| self.table.get(&d).cloned())
            .unwrap_or(Err(MxError::NoSuchDomain));
        Box::pin(std::future::ready(answer))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn candidate(preference: u16, host: &str) -> Candidate {
        Candidate {
            preference,
            name: Name::from_ascii(format!("{host}.")).unwrap(),
            host: host.to_owned(),
        }
    }

    fn hosts(list: &[Candidate]) -> Vec<(u16, &str)> {
        list.iter()
            .map(|c| (c.preference, c.host.as_str()))
            .collect()
    }

    #[test]
    fn order_sorts_by_preference_and_drops_repeats() {
        let input = vec![
            candidate(20, "c.example"),
            candidate(10, "a.example"),
            candidate(30, "a.example"),
            candidate(5, "b.example"),
        ];
        let ordered = order(input, 1);
        assert_eq!(
            hosts(&ordered),
            [(5, "b.example"), (10, "a.example"), (20, "c.example")]
        );
    }

    #[test]
    fn order_shuffles_only_within_a_preference() {
        let input = vec![
            candidate(10, "a.example"),
            candidate(10, "b.example"),
            candidate(10, "c.example"),
            candidate(0, "first.example"),
            candidate(20, "last.example"),
        ];
        let mut seen = HashSet::new();
        for seed in 0..200 {
            let ordered = order(input.clone(), splitmix64(&mut { seed }));
            let list = hosts(&ordered);
            assert_eq!(list.first(), Some(&(0, "first.example")));
            assert_eq!(list.last(), Some(&(20, "last.example")));
            let mut middle: Vec<&str> = list[1..4].iter().map(|(_, h)| *h).collect();
            seen.insert(middle.join(","));
            middle.sort_unstable();
            assert_eq!(middle, ["a.example", "b.example", "c.example"]);
        }
        assert_eq!(seen.len(), 6, "every order of three shows up: {seen:?}");
        // The same seed, the same order.
        assert_eq!(order(input.clone(), 42), order(input, 42));
    }

    #[test]
    fn order_caps_after_the_shuffle() {
        let input: Vec<_> = (0..12)
            .map(|i| candidate(10, &format!("h{i}.example")))
            .collect();
        let mut seen = HashSet::new();
        for seed in 0..50 {
            let ordered = order(input.clone(), splitmix64(&mut { seed }));
            assert_eq!(ordered.len(), MAX_MX_HOSTS);
            seen.extend(ordered.into_iter().map(|c| c.host));
        }
        assert_eq!(seen.len(), 12, "no host is always cut off");
    }

    #[test]
    fn shuffle_is_roughly_uniform() {
        let mut state = 7;
        let mut first = [0usize; 4];
        for _ in 0..4000 {
            let mut items = [0, 1, 2, 3];
            fisher_yates(&mut items, &mut state);
            first[items[0]] += 1;
        }
        for count in first {
            assert!((800..1200).contains(&count), "{first:?}");
        }
    }

    #[test]
    fn candidates_skip_invalid_exchanges() {
        let mx = |pref, name: &str| MX::new(pref, Name::from_ascii(name).unwrap());
        let records = [
            mx(10, "MX1.Example.NET."),
            mx(20, "."),
            mx(30, "192.0.2.1."),
            mx(40, "mx2.example.net"),
        ];
        let found = candidates(&records);
        assert_eq!(
            hosts(&found),
            [(10, "mx1.example.net"), (40, "mx2.example.net")]
        );
        assert!(found.iter().all(|c| c.name.is_fqdn()));
    }

    #[test]
    fn address_cap_balances_families() {
        let v4 = |n: u8| IpAddr::from(Ipv4Addr::new(192, 0, 2, n));
        let v6 = |n: u16| IpAddr::from(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n));
        let count = |list: &[IpAddr]| {
            (
                list.iter().filter(|a| a.is_ipv4()).count(),
                list.iter().filter(|a| a.is_ipv6()).count(),
            )
        };
        let cases: &[(u8, u16, (usize, usize))] = &[
            (3, 2, (3, 2)),
            (12, 0, (10, 0)),
            (0, 12, (0, 10)),
            (8, 8, (5, 5)),
            (12, 2, (8, 2)),
            (2, 12, (2, 8)),
            (6, 5, (5, 5)),
            (5, 6, (5, 5)),
        ];
        for &(n4, n6, want) in cases {
            // Interleaved on input: the output still has IPv4 first.
            let mut input = Vec::new();
            for i in 0..n4.max(u8::try_from(n6).unwrap()) {
                if i < n4 {
                    input.push(v4(i));
                }
                if u16::from(i) < n6 {
                    input.push(v6(u16::from(i)));
                }
            }
            let kept = cap_addresses(input, MAX_ADDRS_PER_HOST);
            assert_eq!(count(&kept), want, "{n4} + {n6}");
            let first_v6 = kept.iter().position(IpAddr::is_ipv6).unwrap_or(kept.len());
            assert!(kept[first_v6..].iter().all(IpAddr::is_ipv6), "{kept:?}");
            if want.0 > 0 {
                assert_eq!(kept[0], v4(0), "each family keeps its own order");
            }
        }
    }

    #[test]
    fn collect_prefers_temporary_to_missing() {
        let a = candidate(10, "a.example");
        let b = candidate(20, "b.example");
        let c = candidate(30, "c.example");
        let addr = IpAddr::from(Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(
            collect(
                vec![a.clone(), b.clone(), c.clone()],
                vec![HostAddrs::Missing, HostAddrs::Missing, HostAddrs::Missing]
            ),
            Err(MxError::NoAddresses("c.example".into()))
        );
        assert_eq!(
            collect(
                vec![a.clone(), b.clone(), c.clone()],
                vec![
                    HostAddrs::Missing,
                    HostAddrs::Temporary("SERVFAIL".into()),
                    HostAddrs::Missing
                ]
            ),
            Err(MxError::Temporary("b.example: SERVFAIL".into()))
        );
        assert_eq!(
            collect(
                vec![a, b, c],
                vec![
                    HostAddrs::Temporary("SERVFAIL".into()),
                    HostAddrs::Missing,
                    HostAddrs::Found(vec![addr])
                ]
            ),
            Ok(vec![Target {
                host: "c.example".into(),
                preference: 30,
                addrs: vec![addr]
            }])
        );
    }

    #[test]
    fn permanence() {
        assert!(MxError::NullMx.is_permanent());
        assert!(MxError::NoSuchDomain.is_permanent());
        assert!(MxError::NoAddresses("a.example".into()).is_permanent());
        assert!(!MxError::Temporary("x".into()).is_permanent());
    }
}

/// No MX lookups (the resolver could not be set up): every lookup fails for now, with the
/// reason, so the mail waits in the queue instead of bouncing.
#[derive(Clone, Debug)]
pub struct Unavailable(pub String);

impl MxLookup for Unavailable {
    fn lookup(&self, domain: &str) -> MxFuture {
        let why = format!("no MX lookups for {domain}: {}", self.0);
        Box::pin(async move { Err(MxError::Temporary(why)) })
    }
}
