//! The per-client admission decision: too many connections lately, or too many open now.
//!
//! Defends against: one client (or one prefix, see [`crate::anvil::ClientKey`]) opening
//! connections faster than the admin allows, or holding more at once, and so taking the
//! sessions meant for everyone else.
//!
//! Equivalents: Sendmail's `FEATURE(ratecontrol)` and `FEATURE(conncontrol)` (rulesets
//! `RateControl` and `ConnControl` in `cf/m4/proto.m4`, called from `check_relay`): limits
//! come from `ClientRate:` and `ClientConn:` access entries looked up by address, its
//! prefixes, then the empty-key default (`SearchList <! Tag> <A:addr> <E:>`, tag only, never
//! by host name); a value of 0 or less is no limit. A client is refused when
//! `${client_rate} > N` (rate first) or `${client_connections} > N`, both counting the
//! connection being judged, so N connections pass and the N+1th is the first refused. A
//! `Connect:` entry of `OK` or `RELAY` for the client exempts it from both, because
//! `check_relay` returns on it before calling either ruleset. Postfix's equivalents are
//! `smtpd_client_connection_rate_limit` and `smtpd_client_connection_count_limit` (one limit
//! for all, fed by `anvil`), with `smtpd_client_event_limit_exceptions` as the exemption.
//!
//! Replies ([`Refusal::reply`]): `421 4.3.2 Connection rate limit exceeded.` /
//! `421 4.3.2 Too many open connections.` before the greeting with the feature's `terminate`
//! argument; without it, `452` with the same text to every command in null-server mode.
//! Events: the caller logs Sendmail's `ruleset=check_relay, ..., reject=<reply>` line with
//! [`Refusal::name`] and the [`Limit::line`] that set the limit.
//!
//! Must not: count (that is [`crate::anvil`]), read the clock, or look up the host name.

use std::net::IpAddr;

use portcullis_smtp::Reply;

use crate::access::{AccessMap, Action, Entry, Tag};
use crate::anvil::Counts;

/// A limit read from the access map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// The most connections allowed (more than this is refused).
    pub value: u32,
    /// The access-map line that set it, for logs.
    pub line: u32,
}

/// The limits that apply to one client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientLimits {
    /// `ClientRate:` connections per rate window; `None` = unlimited.
    pub rate: Option<Limit>,
    /// `ClientConn:` simultaneous connections; `None` = unlimited.
    pub conn: Option<Limit>,
    /// A `Connect:` entry of `OK` or `RELAY` lifts both limits.
    pub exempt: bool,
}

/// The limits for a client at `addr`, looked up as Sendmail's `RateControl`,
/// `ConnControl` and `check_relay` rulesets do (by address only).
pub fn client_limits(map: &AccessMap, addr: IpAddr) -> ClientLimits {
    let exempt = map
        .lookup_client_for(Tag::Connect, None, addr)
        .is_some_and(|e| matches!(e.action(), Action::Ok | Action::Relay));
    ClientLimits {
        rate: limit(map.lookup_client_for(Tag::ClientRate, None, addr)),
        conn: limit(map.lookup_client_for(Tag::ClientConn, None, addr)),
        exempt,
    }
}

/// An entry's value as a limit: 0 or less (or no entry) is none; beyond `u32` saturates.
fn limit(entry: Option<Entry<'_>>) -> Option<Limit> {
    let entry = entry?;
    let n = entry.number();
    (n > 0).then(|| Limit {
        value: u32::try_from(n).unwrap_or(u32::MAX),
        line: entry.line,
    })
}

/// Why a client is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `ClientRate:` exceeded.
    Rate,
    /// `ClientConn:` exceeded.
    Conn,
}

impl Refusal {
    /// Sendmail's reply text, enhanced code included.
    pub fn text(self) -> &'static str {
        match self {
            Self::Rate => "4.3.2 Connection rate limit exceeded.",
            Self::Conn => "4.3.2 Too many open connections.",
        }
    }

    /// The reply: 421 (closes at once, no greeting) with `terminate`, else 452 (greeting,
    /// then this reply to every command that needs one).
    pub fn reply(self, terminate: bool) -> Reply {
        Reply::new(if terminate { 421 } else { 452 }, self.text())
    }

    /// The defence's name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rate => "rate_control",
            Self::Conn => "conn_control",
        }
    }
}

/// The decision for a connection counted as `counts` (which include it): the rate limit
/// first, then the open-connection limit, as `check_relay` calls `RateControl` before
/// `ConnControl`. `None` lets it in.
pub fn judge(limits: &ClientLimits, counts: Counts) -> Option<Refusal> {
    if limits.exempt {
        return None;
    }
    let over = |limit: Option<Limit>, n: u32| limit.is_some_and(|l| n > l.value);
    if over(limits.rate, counts.rate) {
        Some(Refusal::Rate)
    } else if over(limits.conn, counts.open) {
        Some(Refusal::Conn)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::anvil::{self, Anvil, ClientKey, MemoryAnvil};

    fn map(text: &str) -> AccessMap {
        match AccessMap::parse("access", text.as_bytes()) {
            Ok(p) => p.map,
            Err(e) => panic!("{e:?}"),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const MAP: &str = "\
ClientRate: 2
ClientRate:127.0.0.2 0
ClientRate:127.0 5
ClientRate:127.0.0.3 1
ClientRate:10.0.0.1 -4
ClientRate:10.0.0.2 lots
ClientRate:10.0.0.3 99999999999
ClientConn: 3
ClientConn:IPv6:2001:db8:1 4
ClientConn:IPv6:2001:db8:1:2:0:0:0:1 1
ClientConn:192.0.2.0/24 7
Connect:127.0.0.9 OK
Connect:127.0.0.10 RELAY
Connect:127.0.0.11 REJECT
Connect:127.0.0.12 ERROR:\"421 4.7.1 Go away\"
127.0.0.13 OK
Connect:client.example.org OK
";

    fn lim(value: u32, line: u32) -> Option<Limit> {
        Some(Limit { value, line })
    }

    #[test]
    fn limits_follow_sendmails_lookup_order() {
        let m = map(MAP);
        // (client, rate limit, conn limit, exempt)
        let cases = [
            // Nothing specific: both defaults.
            ("203.0.113.5", lim(2, 1), lim(3, 8), false),
            // The exact address beats the prefix, which beats the default.
            ("127.0.0.3", lim(1, 4), lim(3, 8), false),
            ("127.0.0.1", lim(5, 3), lim(3, 8), false),
            // 0 is unlimited even though the default is 2; so is a negative number or junk.
            ("127.0.0.2", None, lim(3, 8), false),
            ("10.0.0.1", None, lim(3, 8), false),
            ("10.0.0.2", None, lim(3, 8), false),
            ("10.0.0.3", lim(u32::MAX, 7), lim(3, 8), false),
            // IPv6 prefix keys (Sendmail's group form), the full address first; our CIDR
            // keys too.
            ("2001:db8:1:2::1", lim(2, 1), lim(1, 10), false),
            ("2001:db8:1:2::2", lim(2, 1), lim(4, 9), false),
            ("2001:db8:2::1", lim(2, 1), lim(3, 8), false),
            ("192.0.2.200", lim(2, 1), lim(7, 11), false),
            // An IPv4-mapped client is the IPv4 client.
            ("::ffff:127.0.0.3", lim(1, 4), lim(3, 8), false),
            // Connect: OK and RELAY exempt (tagged or untagged); REJECT and ERROR do not.
            ("127.0.0.9", lim(5, 3), lim(3, 8), true),
            ("127.0.0.10", lim(5, 3), lim(3, 8), true),
            ("127.0.0.11", lim(5, 3), lim(3, 8), false),
            ("127.0.0.12", lim(5, 3), lim(3, 8), false),
            ("127.0.0.13", lim(5, 3), lim(3, 8), true),
        ];
        for (client, rate, conn, exempt) in cases {
            let got = client_limits(&m, ip(client));
            assert_eq!(got, ClientLimits { rate, conn, exempt }, "{client}");
        }
    }

    #[test]
    fn an_empty_map_limits_nothing() {
        let got = client_limits(&AccessMap::default(), ip("192.0.2.1"));
        assert_eq!(got, ClientLimits::default());
        assert_eq!(
            judge(
                &got,
                Counts {
                    rate: 1000,
                    open: 1000
                }
            ),
            None
        );
    }

    #[test]
    fn judge_table() {
        let both = ClientLimits {
            rate: lim(3, 1),
            conn: lim(2, 2),
            exempt: false,
        };
        let rate_only = ClientLimits { conn: None, ..both };
        let exempt = ClientLimits {
            exempt: true,
            ..both
        };
        let c = |rate, open| Counts { rate, open };
        let cases = [
            (both, c(3, 2), None),
            (both, c(4, 1), Some(Refusal::Rate)),
            (both, c(3, 3), Some(Refusal::Conn)),
            // Rate is checked first.
            (both, c(4, 3), Some(Refusal::Rate)),
            (rate_only, c(3, 99), None),
            (exempt, c(99, 99), None),
        ];
        for (limits, counts, want) in cases {
            assert_eq!(judge(&limits, counts), want, "{limits:?} {counts:?}");
        }
    }

    #[test]
    fn the_n_plus_first_connection_is_the_first_refused() {
        let m = map("ClientRate:127.0.0.1 3\nClientConn:127.0.0.2 2\n");
        let store: Arc<dyn Anvil> = Arc::new(MemoryAnvil::new(Duration::from_secs(60), 100));
        // Rate: sequential connections, each closed at once (refused ones count too).
        let addr = ip("127.0.0.1");
        let limits = client_limits(&m, addr);
        let key = ClientKey::new(addr, 32, 64);
        let verdicts: Vec<_> = (0..5)
            .map(|_| judge(&limits, anvil::open(&store, key, 1000).0))
            .collect();
        let r = Some(Refusal::Rate);
        assert_eq!(verdicts, [None, None, None, r, r]);
        // Conn: connections held open; closing one lets the next in.
        let addr = ip("127.0.0.2");
        let limits = client_limits(&m, addr);
        let key = ClientKey::new(addr, 32, 64);
        let mut held = Vec::new();
        let mut verdicts = Vec::new();
        for _ in 0..4 {
            let (counts, guard) = anvil::open(&store, key, 1000);
            verdicts.push(judge(&limits, counts));
            held.push(guard);
        }
        let c = Some(Refusal::Conn);
        assert_eq!(verdicts, [None, None, c, c]);
        held.truncate(1);
        assert_eq!(judge(&limits, anvil::open(&store, key, 1000).0), None);
    }

    /// reference/sendmail-behaviour.md §b: window 12 s, `ClientRate` 3, burst of 4, then a
    /// probe 10 s (tick difference 5, refused) or 11 s (difference 6, accepted) later.
    #[test]
    fn window_measurement_end_to_end() {
        let m = map("ClientRate:127.0.0.1 3\n");
        let addr = ip("127.0.0.1");
        let limits = client_limits(&m, addr);
        let key = ClientKey::new(addr, 32, 64);
        let t = 1_700_000_001; // odd: +11 s is 6 ticks of 2 s later
        for (offset, want) in [(10, Some(Refusal::Rate)), (11, None)] {
            let store: Arc<dyn Anvil> = Arc::new(MemoryAnvil::new(Duration::from_secs(12), 10));
            let burst: Vec<_> = (0..4)
                .map(|_| judge(&limits, anvil::open(&store, key, t).0))
                .collect();
            assert_eq!(burst, [None, None, None, Some(Refusal::Rate)]);
            let probe = judge(&limits, anvil::open(&store, key, t + offset).0);
            assert_eq!(probe, want, "+{offset}");
        }
    }

    #[test]
    fn replies_and_names() {
        let cases = [
            (
                Refusal::Rate,
                "4.3.2 Connection rate limit exceeded.",
                "rate_control",
            ),
            (
                Refusal::Conn,
                "4.3.2 Too many open connections.",
                "conn_control",
            ),
        ];
        for (r, text, name) in cases {
            assert_eq!(r.text(), text);
            assert_eq!(r.name(), name);
            assert_eq!(r.reply(true), Reply::new(421, text));
            assert!(r.reply(true).closes());
            assert_eq!(r.reply(false), Reply::new(452, text));
            assert_eq!(r.reply(false).to_log_string(), format!("452 {text}"));
        }
    }
}
