//! The `access-load` scenario: how fast a large Sendmail access map loads and answers.
//!
//! It generates a realistic map in memory (IPv4 addresses and prefixes, CIDR, IPv6,
//! host names and e-mail forms under several tags, some comments), times
//! `AccessMap::parse` (best and median of several runs), then times a mix of lookups of the
//! kinds the server asks (client with and without a host name, address only, mail address,
//! tag defaults), half of them hits, and reports the process's peak RSS (VmHWM).
//!
//! It must not touch the network or the file system (apart from reading /proc/self/status),
//! or run without bound (lines, lookups and runs are capped).

use std::fmt::Write as _;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use portcullis_policy::access::{AccessMap, Tag};

use crate::clock;

/// Command-line options of `access-load`, also built directly by tests.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct AccessLoadConfig {
    /// Lines in the generated map (1..=20000000)
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) lines: usize,
    /// Lookups to time after loading (1..=100000000)
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) lookups: usize,
    /// Parse runs; best and median are reported (1..=50)
    #[arg(long, default_value_t = 5)]
    pub(crate) runs: usize,
    /// Seed of the generator (same seed, same map and queries)
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
}

/// What one run measured.
#[derive(Debug)]
pub(crate) struct AccessLoadResult {
    pub(crate) text_bytes: usize,
    pub(crate) entries: usize,
    pub(crate) warnings: usize,
    /// One duration per parse run, sorted.
    pub(crate) parses: Vec<Duration>,
    pub(crate) lookups: usize,
    pub(crate) hits: usize,
    pub(crate) lookup_time: Duration,
    pub(crate) peak_rss_kb: Option<u64>,
    /// Resident growth from before the first parse to after the last: one map.
    pub(crate) map_kb: Option<u64>,
}

/// splitmix64: a small, fast, seedable generator (no dependency, same stream everywhere).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// 0..n (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items
            .get(self.below(items.len() as u64) as usize)
            .copied()
            .unwrap_or_default()
    }
}

const VALUES: &[&str] = &[
    "REJECT",
    "OK",
    "DISCARD",
    "RELAY",
    "ERROR:\"550 5.7.1 Your network is blocked\"",
    "ERROR:4.7.1:\"421 Try again later\"",
];
const TLDS: &[&str] = &["test", "example", "invalid", "org", "net", "com"];

fn v4(i: u64) -> Ipv4Addr {
    // An odd multiplier is a bijection on u32: distinct i, distinct addresses.
    Ipv4Addr::from((i as u32).wrapping_mul(0x9e37_79b1).rotate_left(7))
}

fn host(i: u64) -> String {
    format!(
        "mx{}.d{}.{}",
        i % 7,
        i / 7,
        TLDS.get((i % 6) as usize).copied().unwrap_or("test")
    )
}

fn domain(i: u64) -> String {
    format!(
        "d{}.{}",
        i,
        TLDS.get((i % 6) as usize).copied().unwrap_or("test")
    )
}

/// What a generated line holds, so that a query can ask for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Line {
    ConnectV4,
    UntaggedV4,
    GreetPauseV4,
    ConnectPrefix,
    ConnectCidr,
    ClientRate,
    ClientConn,
    ConnectV6,
    GreetPauseV6,
    ConnectV6Cidr,
    ConnectHost,
    GreetPauseHost,
    FromAddress,
    FromDomain,
    FromUser,
    ToAddress,
    Spam,
    Comment,
}

/// Line kinds by share, per cent: addresses first, as in real maps.
const SHARES: &[(u64, Line)] = &[
    (25, Line::ConnectV4),
    (10, Line::UntaggedV4),
    (10, Line::GreetPauseV4),
    (5, Line::ConnectPrefix),
    (5, Line::ConnectCidr),
    (3, Line::ClientRate),
    (2, Line::ClientConn),
    (4, Line::ConnectV6),
    (2, Line::GreetPauseV6),
    (2, Line::ConnectV6Cidr),
    (10, Line::ConnectHost),
    (5, Line::GreetPauseHost),
    (8, Line::FromAddress),
    (4, Line::FromDomain),
    (1, Line::FromUser),
    (2, Line::ToAddress),
    (1, Line::Spam),
    (1, Line::Comment),
];

fn pick_line(rng: &mut Rng) -> Line {
    let mut roll = rng.below(100);
    for (share, line) in SHARES {
        if roll < *share {
            return *line;
        }
        roll -= share;
    }
    Line::Comment
}

fn v6(i: u64) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(i as u32) << 64 | 0x2001_0db8u128 << 96)
}

/// A distinct /48 per entry, outside `v6`'s 2001:db8::/32.
fn v6_net(i: u64) -> Ipv6Addr {
    Ipv6Addr::from(0x2002u128 << 112 | u128::from(i as u32) << 80)
}

/// Writes the line of kind `kind` for entry number `i`.
fn map_line(rng: &mut Rng, kind: Line, i: u64, out: &mut String) {
    let value = rng.pick(VALUES);
    let _ = match kind {
        Line::ConnectV4 => writeln!(out, "Connect:{} {value}", v4(i)),
        Line::UntaggedV4 => writeln!(out, "{} {value}", v4(i)),
        Line::GreetPauseV4 => writeln!(out, "GreetPause:{} {}", v4(i), rng.below(10_000)),
        Line::ConnectPrefix => {
            let o = v4(i).octets();
            writeln!(out, "Connect:{}.{}.{} {value}", o[0], o[1], o[2])
        }
        Line::ConnectCidr => {
            let len = 17 + rng.below(14) as u8;
            let net = u32::from(v4(i)) & (u32::MAX << (32 - u32::from(len)));
            writeln!(out, "Connect:{}/{len} {value}", Ipv4Addr::from(net))
        }
        Line::ClientRate => writeln!(out, "ClientRate:{} {}", v4(i), rng.below(100)),
        Line::ClientConn => writeln!(out, "ClientConn:{} {}", v4(i), rng.below(20)),
        Line::ConnectV6 => writeln!(out, "Connect:IPv6:{} {value}", v6(i)),
        Line::GreetPauseV6 => {
            let g = v6(i).segments();
            writeln!(out, "GreetPause:IPv6:2001:db8:{:x}:{:x} 0", g[2], g[3])
        }
        Line::ConnectV6Cidr => writeln!(out, "Connect:IPv6:{}/48 {value}", v6_net(i)),
        Line::ConnectHost => writeln!(out, "Connect:{} {value}", host(i)),
        Line::GreetPauseHost => writeln!(out, "GreetPause:{} {}", host(i), rng.below(10_000)),
        Line::FromAddress => writeln!(out, "From:user{}@{} {value}", i % 1000, domain(i)),
        Line::FromDomain => writeln!(out, "From:{} {value}", domain(i)),
        Line::FromUser => writeln!(out, "From:spammer{i}@ REJECT"),
        Line::ToAddress => writeln!(out, "To:rcpt{}@{} {value}", i % 1000, domain(i)),
        Line::Spam => writeln!(out, "Spam:rcpt{i}@mx.example.test FRIEND"),
        Line::Comment => writeln!(out, "# comment line {i}"),
    };
}

/// The generated map text (`lines` lines, two of them the ClientRate/ClientConn defaults)
/// and the kind of each entry line, indexed by entry number.
pub(crate) fn generate(lines: usize, seed: u64) -> (String, Vec<Line>) {
    let mut rng = Rng(seed);
    let mut out = String::with_capacity(lines * 40);
    out.push_str("ClientRate: 50\nClientConn: 10\n");
    let kinds: Vec<Line> = (2..lines as u64)
        .map(|i| {
            let kind = pick_line(&mut rng);
            map_line(&mut rng, kind, i, &mut out);
            kind
        })
        .collect();
    (out, kinds)
}

/// One timed question.
enum Query {
    Client(Tag, bool, Option<String>, IpAddr),
    Addr(Tag, bool, IpAddr),
    Default(Tag),
    Mail(Tag, bool, String, String),
}

/// The question the server would ask about the client or sender of entry `i`: a hit when
/// `i` is in the map (and the generated keys did not collide), a miss otherwise.
fn query_for(kind: Line, i: u64) -> Query {
    let addr = IpAddr::V4(v4(i));
    // A client whose name is not in the map (a fresh index), so the address decides.
    let other = Some(host(i | 1 << 40));
    match kind {
        Line::ConnectV4 | Line::UntaggedV4 | Line::ConnectPrefix | Line::ConnectCidr => {
            Query::Client(Tag::Connect, true, other, addr)
        }
        Line::GreetPauseV4 => Query::Client(Tag::GreetPause, false, other, addr),
        Line::ClientRate => Query::Addr(Tag::ClientRate, false, addr),
        Line::ClientConn => Query::Addr(Tag::ClientConn, false, addr),
        // What ratecontrol asks when the address has no entry.
        Line::Comment => Query::Default(Tag::ClientRate),
        Line::ConnectV6 => Query::Addr(Tag::Connect, true, IpAddr::V6(v6(i))),
        Line::ConnectV6Cidr => {
            let a = u128::from(v6_net(i)) | 5;
            Query::Addr(Tag::Connect, true, IpAddr::V6(Ipv6Addr::from(a)))
        }
        Line::GreetPauseV6 => Query::Client(Tag::GreetPause, false, None, IpAddr::V6(v6(i))),
        Line::ConnectHost => Query::Client(Tag::Connect, true, Some(host(i)), addr),
        Line::GreetPauseHost => Query::Client(Tag::GreetPause, false, Some(host(i)), addr),
        Line::FromAddress | Line::FromDomain => {
            Query::Mail(Tag::From, true, format!("user{}", i % 1000), domain(i))
        }
        Line::FromUser => Query::Mail(Tag::From, true, format!("spammer{i}"), domain(i)),
        Line::ToAddress => Query::Mail(Tag::To, true, format!("rcpt{}", i % 1000), domain(i)),
        Line::Spam => Query::Mail(
            Tag::Spam,
            false,
            format!("rcpt{i}"),
            "mx.example.test".into(),
        ),
    }
}

/// Half the queries ask about entries in the map, half about the same kinds of client or
/// sender outside it (indexes past the end).
fn queries(n: usize, kinds: &[Line], seed: u64) -> Vec<Query> {
    let mut rng = Rng(seed ^ 0x5eed);
    let len = kinds.len().max(1) as u64;
    (0..n)
        .map(|_| {
            let slot = rng.below(len);
            let kind = kinds.get(slot as usize).copied().unwrap_or(Line::Comment);
            // Entry numbers start at 2 (after the two defaults).
            let i = if rng.below(2) == 0 {
                slot + 2
            } else {
                slot + 2 + len
            };
            query_for(kind, i)
        })
        .collect()
}

fn ask(map: &AccessMap, q: &Query) -> bool {
    let found = match q {
        Query::Client(tag, untagged, host, addr) => {
            map.lookup_client(*tag, *untagged, host.as_deref(), *addr)
        }
        Query::Addr(tag, untagged, addr) => map.lookup_addr(*tag, *untagged, *addr),
        Query::Default(tag) => map.lookup_default(*tag),
        Query::Mail(tag, untagged, local, domain) => {
            map.lookup_mail(*tag, *untagged, local, domain)
        }
    };
    black_box(found).is_some()
}

/// A kB field of /proc/self/status text (`VmHWM:` peak RSS, `VmRSS:` current).
pub(crate) fn status_field(status: &str, field: &str) -> Option<u64> {
    let rest = status.lines().find_map(|l| l.strip_prefix(field))?;
    rest.split_whitespace().next()?.parse().ok()
}

fn status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status_field(&status, field)
}

fn rss_kb() -> Option<u64> {
    status_kb("VmRSS:")
}

pub(crate) fn run_access_load(cfg: &AccessLoadConfig) -> anyhow::Result<AccessLoadResult> {
    ensure!(
        (1..=20_000_000).contains(&cfg.lines),
        "--lines must be 1..=20000000"
    );
    ensure!(
        (1..=100_000_000).contains(&cfg.lookups),
        "--lookups must be 1..=100000000"
    );
    ensure!((1..=50).contains(&cfg.runs), "--runs must be 1..=50");
    let (text, kinds) = generate(cfg.lines, cfg.seed);
    let rss_before = rss_kb();
    let mut parses = Vec::with_capacity(cfg.runs);
    let mut kept = None;
    for _ in 0..cfg.runs {
        // Drop the previous map first, so the peak RSS is one map plus the text.
        drop(kept.take());
        let start = clock::now();
        let parsed = AccessMap::parse("generated", text.as_bytes());
        parses.push(start.elapsed());
        match parsed {
            Ok(p) => kept = Some(p),
            Err(errors) => bail!(
                "generated map rejected: {}",
                errors.first().map(ToString::to_string).unwrap_or_default()
            ),
        }
    }
    parses.sort();
    let parsed = kept.context("no parse run")?;
    let map_kb = rss_kb().zip(rss_before).map(|(a, b)| a.saturating_sub(b));
    let queries = queries(cfg.lookups, &kinds, cfg.seed);
    let start = clock::now();
    let hits = queries.iter().filter(|q| ask(&parsed.map, q)).count();
    let lookup_time = start.elapsed();
    let peak_rss_kb = status_kb("VmHWM:");
    Ok(AccessLoadResult {
        text_bytes: text.len(),
        entries: parsed.map.len(),
        warnings: parsed.warnings.len(),
        parses,
        lookups: queries.len(),
        hits,
        lookup_time,
        peak_rss_kb,
        map_kb,
    })
}

impl AccessLoadResult {
    fn best(&self) -> Duration {
        self.parses.first().copied().unwrap_or_default()
    }

    fn median(&self) -> Duration {
        self.parses
            .get(self.parses.len() / 2)
            .copied()
            .unwrap_or_default()
    }

    fn lookup_ns(&self) -> f64 {
        self.lookup_time.as_nanos() as f64 / self.lookups.max(1) as f64
    }

    /// Human report followed by the one `RESULT` line.
    pub(crate) fn report(&self, cfg: &AccessLoadConfig) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let rate = cfg.lines as f64 / self.best().as_secs_f64().max(1e-9);
        let kb = |v: Option<u64>| {
            v.map_or_else(
                || "unknown".to_owned(),
                |kb| format!("{kb} kB ({:.1} MiB)", kb as f64 / 1024.0),
            )
        };
        format!(
            "portcullis-bench access-load\n\
             \x20 machine: {} cores; single-threaded parse and lookups\n\
             \x20 map:      {} lines, {:.1} MiB of text, {} entries, {} warnings (seed {})\n\
             \x20 parse:    best {:.1} ms, median {:.1} ms of {} runs ({:.2} M lines/s)\n\
             \x20 lookups:  {} in {:.1} ms, {:.0} ns each, {} hits\n\
             \x20 map RSS:  {} (resident growth across the parses: one map)\n\
             \x20 peak RSS: {} (the text, one map, the queries)\n\
             RESULT access-load lines={} parse_best_ms={:.1} parse_median_ms={:.1} lookups={} lookup_ns={:.0} hits={} map_rss_kb={} peak_rss_kb={}",
            crate::cores(),
            cfg.lines,
            self.text_bytes as f64 / (1024.0 * 1024.0),
            self.entries,
            self.warnings,
            cfg.seed,
            ms(self.best()),
            ms(self.median()),
            self.parses.len(),
            rate / 1e6,
            self.lookups,
            ms(self.lookup_time),
            self.lookup_ns(),
            self.hits,
            kb(self.map_kb),
            kb(self.peak_rss_kb),
            cfg.lines,
            ms(self.best()),
            ms(self.median()),
            self.lookups,
            self.lookup_ns(),
            self.hits,
            self.map_kb.unwrap_or(0),
            self.peak_rss_kb.unwrap_or(0),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_map_loads_and_answers() {
        let cfg = AccessLoadConfig {
            lines: 5000,
            lookups: 2000,
            runs: 2,
            seed: 7,
        };
        let r = run_access_load(&cfg).unwrap();
        assert!(r.entries > 4500, "{r:?}");
        assert!(r.warnings < 50, "{r:?}");
        // Half the queries name an entry (a few of those collided with an earlier key and
        // answer for it); the default asked for comment lines always answers.
        assert!(r.hits > 900 && r.hits < 1100, "{r:?}");
        assert_eq!(r.parses.len(), 2);
        let report = r.report(&cfg);
        assert!(
            report.contains("RESULT access-load lines=5000 "),
            "{report}"
        );
        assert_eq!(generate(100, 3).0, generate(100, 3).0);
    }

    #[test]
    fn reads_proc_status() {
        let status = "Name:\tx\nVmHWM:\t  123456 kB\nVmRSS:\t1 kB\n";
        assert_eq!(status_field(status, "VmHWM:"), Some(123_456));
        assert_eq!(status_field(status, "VmRSS:"), Some(1));
        assert_eq!(status_field("VmRSS: 1 kB\n", "VmHWM:"), None);
    }

    #[test]
    fn refuses_out_of_range() {
        let cfg = AccessLoadConfig {
            lines: 0,
            lookups: 1,
            runs: 1,
            seed: 1,
        };
        assert!(run_access_load(&cfg).is_err());
    }
}
