//! Lookup tables and properties of the whole map (the Sendmail rows themselves are in the
//! golden scripts, `tests/scripts/*.in`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

fn map(text: &str) -> AccessMap {
    match AccessMap::parse("access", text.as_bytes()) {
        Ok(p) => p.map,
        Err(e) => panic!("{e:?}"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn line(e: Option<Entry<'_>>) -> Option<u32> {
    e.map(|e| e.line)
}

#[test]
fn entry_display_and_helpers() {
    let m = map("GreetPause:LocalHost 1500ms\nlocalhost ERROR:5.7.1:\"550 no\"\nClientRate: 7");
    let e = m.lookup_host(Tag::GreetPause, false, "localhost").unwrap();
    assert_eq!(e.to_string(), "GreetPause:LocalHost 1500ms");
    assert_eq!(e.lhs().to_string(), "GreetPause:LocalHost");
    assert_eq!(e.number(), 1500);
    let e = m.lookup_host(Tag::Untagged, false, "LOCALHOST").unwrap();
    assert_eq!(e.to_string(), "localhost ERROR:5.7.1:\"550 no\"");
    assert_eq!(
        e.action(),
        Action::Error {
            enhanced: Some("5.7.1"),
            reply: "550 no"
        }
    );
    assert_eq!(
        m.lookup_default(Tag::ClientRate).unwrap().to_string(),
        "ClientRate: 7"
    );
    assert_eq!(m.lookup_default(Tag::Untagged), None);
    assert_eq!(
        format!("{m:?}"),
        "AccessMap { source: \"access\", entries: 3, name_keys: 3, address_keys: 0 }"
    );
    let d = Diagnostic {
        source: "/etc/mail/access".into(),
        line: 3,
        message: "m".into(),
    };
    assert_eq!(d.to_string(), "/etc/mail/access:3: m");
}

#[test]
fn map_is_shareable() {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<AccessMap>();
    send_sync::<Parsed>();
}

#[test]
fn tag_names() {
    for tag in Tag::ALL {
        if tag != Tag::Untagged {
            assert_eq!(Tag::from_name(&tag.to_string().to_uppercase()), Some(tag));
        }
    }
    assert_eq!(Tag::from_name(""), None);
    assert_eq!(Tag::from_name("TLS_Clt"), None);
    assert_eq!(Tag::SrvFeatures.to_string(), "Srv_Features");
    assert_eq!(Tag::Untagged.to_string(), "");
}

#[test]
fn empty_map() {
    let m = AccessMap::default();
    assert!(m.is_empty());
    assert_eq!(m.lookup_addr(Tag::Connect, true, ip("10.0.0.1")), None);
    assert_eq!(m.lookup_host(Tag::Connect, true, "a.b"), None);
    assert_eq!(m.lookup_mail(Tag::From, true, "a", "b"), None);
    let p = AccessMap::parse("x", b"").unwrap();
    assert!(p.map.is_empty() && p.warnings.is_empty());
}

#[test]
fn untagged_tag_looks_up_untagged_keys_only() {
    let m = map("Connect:10.0.0.1 OK\n10.0.0 REJECT\nConnect:example.org OK\norg REJECT");
    assert_eq!(
        line(m.lookup_addr(Tag::Untagged, false, ip("10.0.0.1"))),
        Some(2)
    );
    assert_eq!(
        line(m.lookup_host(Tag::Untagged, false, "example.org")),
        Some(4)
    );
    assert_eq!(
        line(m.lookup_addr(Tag::Connect, false, ip("10.0.0.2"))),
        None
    );
}

#[test]
fn host_edge_cases() {
    let m =
        map("Connect:example.org OK\nConnect:[192.0.2] REJECT\nConnect:[IPv6:2001:db8] DISCARD");
    assert_eq!(
        line(m.lookup_host(Tag::Connect, false, "mx.example.org.")),
        Some(1)
    );
    assert_eq!(line(m.lookup_host(Tag::Connect, false, "")), None);
    assert_eq!(line(m.lookup_host(Tag::Connect, false, ".")), None);
    assert_eq!(line(m.lookup_host(Tag::Connect, false, "a..b")), None);
    // A client without reverse DNS is named [address] by Sendmail; D shortens inside.
    assert_eq!(
        line(m.lookup_host(Tag::Connect, false, "[192.0.2.7]")),
        Some(2)
    );
    assert_eq!(
        line(m.lookup_host(Tag::Connect, false, "[IPv6:2001:db8:0:0:0:0:0:1]")),
        Some(3)
    );
    assert_eq!(line(m.lookup_host(Tag::Connect, false, "[]")), None);
    assert_eq!(line(m.lookup_host(Tag::Connect, false, "[")), None);
}

/// Test maps: dotted prefixes and CIDR keys under GreetPause and untagged, in 10.0.0.0/14
/// so that random clients hit them often.
fn arb_v4_line() -> impl Strategy<Value = (bool, u32, u8, bool)> {
    (any::<bool>(), 0u32..(1 << 18), 0u8..=32, any::<bool>())
}

fn v4_key(addr: u32, len: u8, dotted: bool) -> (u32, u8, String) {
    let full = 0x0a00_0000 | (addr << 14) | (addr & 0x3fff);
    let net = index::mask_v4(full, len);
    let o = Ipv4Addr::from(net).octets();
    if dotted && len.is_multiple_of(8) && len > 0 {
        let n = usize::from(len / 8);
        let parts: Vec<String> = o.iter().take(n).map(ToString::to_string).collect();
        (net, len, parts.join("."))
    } else {
        (net, len, format!("{}/{len}", Ipv4Addr::from(net)))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn parser_never_panics(text in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = AccessMap::parse("fuzz", &text);
    }

    #[test]
    fn parser_never_panics_on_access_like_lines(lines in proptest::collection::vec(
        "(GreetPause:|Connect:|From:|IPv6:|TLS_Clt:|)[0-9a-fA-F.:/\\[\\]@+x]{0,40}[ \t]{0,2}[0-9A-Z\":. ]{0,12}",
        0..40,
    )) {
        let text = lines.join("\n");
        if let Ok(p) = AccessMap::parse("fuzz", text.as_bytes()) {
            for e in p.map.entries() {
                let _ = (e.to_string(), e.action(), e.number());
            }
        }
    }

    #[test]
    fn lookups_never_panic(
        lines in proptest::collection::vec("[ -~]{0,30}", 0..30),
        v4 in any::<u32>(),
        v6 in any::<u128>(),
        host in "[ -~]{0,30}",
        local in "[ -~]{0,10}",
        domain in "[ -~]{0,20}",
    ) {
        let text = lines.join("\n");
        let m = AccessMap::parse("fuzz", text.as_bytes()).map(|p| p.map).unwrap_or_default();
        for tag in Tag::ALL {
            for untagged in [false, true] {
                let _ = m.lookup_client(tag, untagged, Some(&host), IpAddr::V4(Ipv4Addr::from(v4)));
                let _ = m.lookup_addr(tag, untagged, IpAddr::V6(Ipv6Addr::from(v6)));
                let _ = m.lookup_mail(tag, untagged, &local, &domain);
                let _ = m.lookup_mail_with(tag, untagged, &local, &domain, UserStep::AfterDomain);
                let _ = m.lookup_default(tag);
                let _ = m.has_host_keys(tag);
            }
        }
    }

    /// Address lookups agree with a brute-force reading of ruleset A: the longest matching
    /// prefix wins, tagged before untagged at equal length, the first of duplicates kept.
    #[test]
    fn address_walk_is_longest_prefix_first(
        entries in proptest::collection::vec(arb_v4_line(), 0..40),
        clients in proptest::collection::vec(0u32..(1 << 18), 1..20),
        untagged in any::<bool>(),
    ) {
        let mut text = String::new();
        let mut stored: Vec<(bool, u32, u8, u32)> = Vec::new();
        for (n, (tagged, addr, len, dotted)) in entries.iter().enumerate() {
            let (net, len, key) = v4_key(*addr, *len, *dotted);
            let tag = if *tagged { "GreetPause:" } else { "" };
            text.push_str(&format!("{tag}{key} {n}\n"));
            if !stored.iter().any(|s| s.0 == *tagged && s.1 == net && s.2 == len) {
                stored.push((*tagged, net, len, n as u32 + 1));
            }
        }
        let m = map(&text);
        for c in clients {
            let client = 0x0a00_0000 | (c << 14) | (c & 0x3fff);
            let want = stored
                .iter()
                .filter(|s| (s.0 || untagged) && index::mask_v4(client, s.2) == s.1)
                .max_by_key(|s| (s.2, s.0))
                .map(|s| s.3);
            let addr = IpAddr::V4(Ipv4Addr::from(client));
            prop_assert_eq!(line(m.lookup_addr(Tag::GreetPause, untagged, addr)), want);
            // The same client as an IPv4-mapped IPv6 address.
            let mapped = IpAddr::V6(Ipv4Addr::from(client).to_ipv6_mapped());
            prop_assert_eq!(line(m.lookup_addr(Tag::GreetPause, untagged, mapped)), want);
        }
    }
}

#[test]
fn lookups_for_each_tag_follow_its_ruleset() {
    let m = map("GreetPause:mail.example.com 0\n\
                 GreetPause: 9\n\
                 ClientRate:mail.example.com 1\n\
                 ClientRate: 10\n\
                 Srv_Features: F\n\
                 mail.example.com OK\n\
                 From:spammer@ REJECT\n\
                 spammer@example.org OK\n\
                 Spam:example.org FRIEND\n");
    let host = Some("mail.example.com");
    let other = ip("203.0.113.9");
    // GreetPause: the host key; no default, ever.
    assert_eq!(
        line(m.lookup_client_for(Tag::GreetPause, host, other)),
        Some(1)
    );
    assert_eq!(
        line(m.lookup_client_for(Tag::GreetPause, None, other)),
        None
    );
    // ClientRate: never by name; the empty-key default.
    assert_eq!(
        line(m.lookup_client_for(Tag::ClientRate, host, other)),
        Some(4)
    );
    // Srv_Features: the default too.
    assert_eq!(
        line(m.lookup_client_for(Tag::SrvFeatures, None, other)),
        Some(5)
    );
    // Connect: falls back to the untagged key.
    assert_eq!(
        line(m.lookup_client_for(Tag::Connect, host, other)),
        Some(6)
    );
    // From: the full address (tagged, then untagged) comes before `user@`.
    assert_eq!(
        line(m.lookup_mail_for(Tag::From, "spammer", "example.org")),
        Some(8)
    );
    assert_eq!(
        line(m.lookup_mail_for(Tag::From, "spammer", "example.net")),
        Some(7)
    );
    // Spam: tag only.
    assert_eq!(
        line(m.lookup_mail_for(Tag::Spam, "x", "sub.example.org")),
        Some(9)
    );
    assert_eq!(
        line(m.lookup_mail_for(Tag::Spam, "spammer", "example.net")),
        None
    );
}
