//! Reading one left-hand side: which tag, and what kind of key follows it.
//!
//! Role: split `Tag:key`, and sort the key into the Sendmail `A` forms (dotted IPv4 prefix,
//! `IPv6:` full-form prefix, bare `IPv6`), our extensions (CIDR, compressed IPv6), the
//! tag's default (empty key), or a name (host, domain, e-mail form) — noting names that look
//! like addresses but that no address lookup will ever produce.
//! Must not: decide anything per tag (which key kinds a tag's lookups use is the parser's
//! business), or allocate except for an error message.
//! Invariants: an address kind's host bits are zero and its length fits its family
//! (IPv4 ≤ 32, IPv6 ≤ 128); `key` is a sub-slice of the input.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{Tag, strip_prefix_ci};

/// What a left-hand side holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lhs<'a> {
    /// A tag Sendmail knows and we do not use (`TLS_Clt`, `QGRP` ...), without its colon.
    Unused(&'a str),
    /// A key we store.
    Key {
        tag: Tag,
        /// The key after the tag, as written.
        key: &'a str,
        kind: Kind,
    },
}

/// The kind of key after the tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// Nothing after the tag: the tag's default (`ClientRate:`).
    Default,
    /// A host name, domain or e-mail form; `Some` when it looks like an address that no
    /// address lookup produces, so it never matches a client address.
    Name(Option<Odd>),
    /// An IPv4 prefix, host bits zero.
    V4 { addr: u32, len: u8 },
    /// An IPv6 prefix, host bits zero. `mapped`: inside `::ffff:0:0/96`, where no client
    /// is looked up (those clients are looked up as IPv4).
    V6 { addr: u128, len: u8, mapped: bool },
}

/// Address look-alikes that are stored as names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Odd {
    /// `127.0.0.` — `A` strips whole octets, it never yields a trailing dot.
    TrailingDot,
    /// `[127.0.0.1]` — the address-literal form of a host name, not an address key.
    Bracketed,
    /// Digits and dots but not 1–4 octets 0–255 without leading zeros (`127.000.0.1`).
    BadV4,
    /// An IPv6 address without the `IPv6:` prefix (`0:0:0:0:0:0:0:1`).
    V6WithoutPrefix,
    /// `IPv6:` followed by something that is not an address or group prefix.
    BadV6,
}

/// Reads a left-hand side. `Err` carries the message for a bad CIDR key.
pub(super) fn classify(lhs: &str) -> Result<Lhs<'_>, String> {
    let (tag, key) = match split_tag(lhs) {
        Split::Unused(word) => return Ok(Lhs::Unused(word)),
        Split::Tagged(tag, key) => (tag, key),
    };
    let kind = kind(key)?;
    Ok(Lhs::Key { tag, key, kind })
}

enum Split<'a> {
    Tagged(Tag, &'a str),
    Unused(&'a str),
}

/// `Word:rest` is a tag when `Word` is a tag-like word other than `IPv6`; a whole key that
/// is an IPv6 address or network (`fe80::/10`) is untagged even though it starts like one.
fn split_tag(lhs: &str) -> Split<'_> {
    if bare_v6(lhs) {
        return Split::Tagged(Tag::Untagged, lhs);
    }
    let Some((word, rest)) = lhs.split_once(':') else {
        return Split::Tagged(Tag::Untagged, lhs);
    };
    if !is_tag_word(word) || word.eq_ignore_ascii_case("ipv6") {
        return Split::Tagged(Tag::Untagged, lhs);
    }
    match Tag::from_name(word) {
        Some(tag) => Split::Tagged(tag, rest),
        None => Split::Unused(word),
    }
}

/// Sendmail tags are identifiers: `GreetPause`, `TLS_Clt`, `Srv_Features`, `QGRP`.
fn is_tag_word(word: &str) -> bool {
    let mut chars = word.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// True for an IPv6 address or `address/length` written without the `IPv6:` prefix.
fn bare_v6(s: &str) -> bool {
    let addr = s.split_once('/').map_or(s, |(a, _)| a);
    addr.contains(':') && addr.parse::<Ipv6Addr>().is_ok()
}

fn kind(key: &str) -> Result<Kind, String> {
    if key.is_empty() {
        return Ok(Kind::Default);
    }
    if key.eq_ignore_ascii_case("ipv6") {
        // The bare `IPv6` is where ruleset A ends for every IPv6 client: /0 over IPv6.
        return Ok(Kind::V6 {
            addr: 0,
            len: 0,
            mapped: false,
        });
    }
    if let Some(rest) = strip_prefix_ci(key, "ipv6:") {
        return v6_key(rest).map_err(|why| bad_cidr(key, &why));
    }
    if let Some((addr, len)) = key.split_once('/') {
        if is_v4_chars(addr) {
            return cidr_v4(addr, len).map_err(|why| bad_cidr(key, &why));
        }
        if bare_v6(key) || is_v6_chars(addr) {
            return cidr_v6(addr, len).map_err(|why| bad_cidr(key, &why));
        }
    }
    if is_v4_chars(key) {
        return Ok(dotted_v4(key));
    }
    if key.len() > 2 && key.starts_with('[') && key.ends_with(']') {
        return Ok(Kind::Name(Some(Odd::Bracketed)));
    }
    if bare_v6(key) {
        return Ok(Kind::Name(Some(Odd::V6WithoutPrefix)));
    }
    Ok(Kind::Name(None))
}

fn bad_cidr(key: &str, why: &str) -> String {
    format!("bad CIDR key \"{key}\": {why}")
}

fn is_v4_chars(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

fn is_v6_chars(s: &str) -> bool {
    s.contains(':')
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
}

/// `a`, `a.b`, `a.b.c`, `a.b.c.d`: the strings ruleset `A` produces from an IPv4 address.
fn dotted_v4(key: &str) -> Kind {
    if key.ends_with('.') {
        return Kind::Name(Some(Odd::TrailingDot));
    }
    let mut addr = 0u32;
    let mut octets = 0u8;
    for part in key.split('.') {
        match octet(part) {
            Some(o) if octets < 4 => {
                addr |= u32::from(o) << (24 - 8 * u32::from(octets));
                octets += 1;
            }
            _ => return Kind::Name(Some(Odd::BadV4)),
        }
    }
    Kind::V4 {
        addr,
        len: octets * 8,
    }
}

/// One octet as Sendmail prints it: 0–255, no leading zero.
fn octet(s: &str) -> Option<u8> {
    let ok = !s.is_empty() && s.len() <= 3 && (s == "0" || !s.starts_with('0'));
    ok.then(|| s.parse().ok()).flatten()
}

/// After `IPv6:`: a network (our extension), Sendmail's full form with 1–8 groups (a
/// prefix of 16 bits per group), or a compressed address (our extension, /128). `Err`
/// says why a network is bad.
fn v6_key(rest: &str) -> Result<Kind, String> {
    if let Some((addr, len)) = rest.split_once('/') {
        return cidr_v6(addr, len);
    }
    if let Some((addr, len)) = full_form(rest) {
        return Ok(v6_kind(addr, len));
    }
    match rest.parse::<Ipv6Addr>() {
        Ok(a) => Ok(v6_kind(u128::from(a), 128)),
        Err(_) => Ok(Kind::Name(Some(Odd::BadV6))),
    }
}

/// `g1:g2:...:gn` with 1 ≤ n ≤ 8 groups of 1–4 hex digits, no `::`.
fn full_form(s: &str) -> Option<(u128, u8)> {
    let mut addr = 0u128;
    let mut groups = 0u8;
    for part in s.split(':') {
        if groups == 8 || part.is_empty() || part.len() > 4 {
            return None;
        }
        let g = u16::from_str_radix(part, 16).ok()?;
        // from_str_radix takes a sign; a group never has one.
        if part.starts_with('+') {
            return None;
        }
        addr |= u128::from(g) << (112 - 16 * u32::from(groups));
        groups += 1;
    }
    Some((addr, groups * 16))
}

fn v6_kind(addr: u128, len: u8) -> Kind {
    // Sendmail prints an IPv4-mapped client as IPv4, and so do we: a key inside
    // ::ffff:0:0/96 is never reached.
    let mapped = len >= 96 && addr >> 32 == 0xffff;
    Kind::V6 { addr, len, mapped }
}

fn prefix_len(s: &str, max: u8) -> Result<u8, String> {
    let n = (!s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse::<u8>().ok())
        .flatten()
        .filter(|n| *n <= max);
    n.ok_or_else(|| format!("prefix length \"{s}\" is not a number from 0 to {max}"))
}

fn cidr_v4(addr: &str, len: &str) -> Result<Kind, String> {
    let a: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("\"{addr}\" is not an IPv4 address (write all four octets)"))?;
    let len = prefix_len(len, 32)?;
    let bits = u32::from(a);
    let net = super::index::mask_v4(bits, len);
    if net != bits {
        return Err(format!(
            "host bits are set (did you mean {}/{len}?)",
            Ipv4Addr::from(net)
        ));
    }
    Ok(Kind::V4 { addr: bits, len })
}

fn cidr_v6(addr: &str, len: &str) -> Result<Kind, String> {
    let a: Ipv6Addr = addr
        .parse()
        .map_err(|_| format!("\"{addr}\" is not an IPv6 address"))?;
    let len = prefix_len(len, 128)?;
    let bits = u128::from(a);
    let net = super::index::mask_v6(bits, len);
    if net != bits {
        return Err(format!(
            "host bits are set (did you mean {}/{len}?)",
            Ipv6Addr::from(net)
        ));
    }
    Ok(v6_kind(bits, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tag: Tag, key: &str, kind: Kind) -> Result<Lhs<'_>, String> {
        Ok(Lhs::Key { tag, key, kind })
    }

    fn v4(a: [u8; 4], len: u8) -> Kind {
        Kind::V4 {
            addr: u32::from(Ipv4Addr::from(a)),
            len,
        }
    }

    fn v6(a: &str, len: u8) -> Kind {
        Kind::V6 {
            addr: u128::from(a.parse::<Ipv6Addr>().unwrap()),
            len,
            mapped: false,
        }
    }

    #[test]
    fn tags() {
        use Tag::*;
        let name = Kind::Name(None);
        let cases: &[(&str, Result<Lhs<'_>, String>)] = &[
            ("GreetPause:localhost", key(GreetPause, "localhost", name)),
            ("greetpause:localhost", key(GreetPause, "localhost", name)),
            ("SRV_FEATURES:host", key(SrvFeatures, "host", name)),
            ("ClientRate:", key(ClientRate, "", Kind::Default)),
            ("localhost", key(Untagged, "localhost", name)),
            ("TLS_Clt:host", Ok(Lhs::Unused("TLS_Clt"))),
            ("QGRP:x", Ok(Lhs::Unused("QGRP"))),
            (
                "IPv6:0:0:0:0:0:0:0:1",
                key(Untagged, "IPv6:0:0:0:0:0:0:0:1", v6("::1", 128)),
            ),
            ("ipv6", key(Untagged, "ipv6", v6("::", 0))),
            ("GreetPause:IPv6", key(GreetPause, "IPv6", v6("::", 0))),
            ("GreetPause:IPv6:0", key(GreetPause, "IPv6:0", v6("::", 16))),
            ("fe80::/10", key(Untagged, "fe80::/10", v6("fe80::", 10))),
            ("From:user@example.org", key(From, "user@example.org", name)),
            ("From:user@", key(From, "user@", name)),
            (":odd", key(Untagged, ":odd", name)),
            ("9x:odd", key(Untagged, "9x:odd", name)),
        ];
        for (lhs, want) in cases {
            assert_eq!(&classify(lhs), want, "{lhs}");
        }
    }

    #[test]
    fn address_kinds() {
        let cases: &[(&str, Kind)] = &[
            ("127", v4([127, 0, 0, 0], 8)),
            ("127.0", v4([127, 0, 0, 0], 16)),
            ("192.168.1", v4([192, 168, 1, 0], 24)),
            ("10.1.2.3", v4([10, 1, 2, 3], 32)),
            ("0", v4([0, 0, 0, 0], 8)),
            ("10.0.0.0/8", v4([10, 0, 0, 0], 8)),
            ("10.1.16.0/20", v4([10, 1, 16, 0], 20)),
            ("0.0.0.0/0", v4([0, 0, 0, 0], 0)),
            ("IPv6:2001:db8", v6("2001:db8::", 32)),
            ("IPv6:2001:0DB8:0:0:0:0:0:1", v6("2001:db8::1", 128)),
            ("IPv6:2001:db8::1", v6("2001:db8::1", 128)),
            ("IPv6:::1", v6("::1", 128)),
            ("IPv6:2001:db8::/32", v6("2001:db8::", 32)),
            ("2001:db8::/32", v6("2001:db8::", 32)),
            (
                "IPv6:::ffff:1.2.3.4",
                Kind::V6 {
                    addr: u128::from("::ffff:1.2.3.4".parse::<Ipv6Addr>().unwrap()),
                    len: 128,
                    mapped: true,
                },
            ),
            ("127.0.0.", Kind::Name(Some(Odd::TrailingDot))),
            ("[127.0.0.1]", Kind::Name(Some(Odd::Bracketed))),
            ("127.000.0.1", Kind::Name(Some(Odd::BadV4))),
            ("256.1", Kind::Name(Some(Odd::BadV4))),
            ("1.2.3.4.5", Kind::Name(Some(Odd::BadV4))),
            ("1..2", Kind::Name(Some(Odd::BadV4))),
            ("0:0:0:0:0:0:0:1", Kind::Name(Some(Odd::V6WithoutPrefix))),
            ("::1", Kind::Name(Some(Odd::V6WithoutPrefix))),
            ("IPv6:xyz", Kind::Name(Some(Odd::BadV6))),
            ("IPv6:", Kind::Name(Some(Odd::BadV6))),
            ("IPv6:1:2:3:4:5:6:7:8:9", Kind::Name(Some(Odd::BadV6))),
            ("IPv6:+1", Kind::Name(Some(Odd::BadV6))),
            ("abc/def", Kind::Name(None)),
            ("example.test", Kind::Name(None)),
        ];
        for (k, want) in cases {
            assert_eq!(kind(k).as_ref(), Ok(want), "{k}");
        }
    }

    #[test]
    fn bad_cidr_keys() {
        let cases = [
            ("10.0.0.1/8", "host bits are set (did you mean 10.0.0.0/8?)"),
            (
                "10.0.0.0/33",
                "prefix length \"33\" is not a number from 0 to 32",
            ),
            (
                "10.0.0.0/",
                "prefix length \"\" is not a number from 0 to 32",
            ),
            (
                "10.0.0.0/+8",
                "prefix length \"+8\" is not a number from 0 to 32",
            ),
            (
                "10/8",
                "\"10\" is not an IPv4 address (write all four octets)",
            ),
            (
                "010.0.0.0/8",
                "\"010.0.0.0\" is not an IPv4 address (write all four octets)",
            ),
            (
                "IPv6:2001:db8::1/32",
                "host bits are set (did you mean 2001:db8::/32?)",
            ),
            (
                "IPv6:2001:db8::/129",
                "prefix length \"129\" is not a number from 0 to 128",
            ),
            ("IPv6:2001:db8/32", "\"2001:db8\" is not an IPv6 address"),
            (
                "2001:db8::1/32",
                "host bits are set (did you mean 2001:db8::/32?)",
            ),
            ("2001:zz::/32", ""),
        ];
        for (k, why) in cases {
            let got = kind(k);
            if why.is_empty() {
                // Not IPv6 characters: an (odd) name, not a CIDR key.
                assert_eq!(got, Ok(Kind::Name(None)), "{k}");
            } else {
                assert_eq!(got, Err(format!("bad CIDR key \"{k}\": {why}")), "{k}");
            }
        }
    }
}
