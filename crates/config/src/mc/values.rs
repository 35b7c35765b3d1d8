//! Sendmail's value syntaxes, read as Sendmail reads them, and written as our TOML wants.
//!
//! Role: numbers (`strtol`/`atol`: leading blanks and sign, digits, the rest ignored), time
//! values (`convtime`: `1h30m`; a bare number in the option's default unit), the
//! `DAEMON_OPTIONS` list and the `access_db` map specification; and the TOML spellings of
//! durations and strings.
//! Must not: decide what a value means for Portcullis (that is `interpret`); panic on any
//! text: overflow saturates, and what Sendmail would reject is an `Err` with the reason.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Sendmail's `strtol(s, NULL, 10)`: leading white space, an optional sign, digits; the
/// rest is ignored. Returns the number and whether anything followed the digits (or there
/// were none), so the caller can warn about `10M` or `num`.
pub(crate) fn strtol(text: &str) -> (i64, bool) {
    let t = text.trim_start();
    let (negative, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    let mut n: i64 = 0;
    for b in digits[..end].bytes() {
        n = n.saturating_mul(10).saturating_add(i64::from(b - b'0'));
    }
    let odd = end == 0 || !digits[end..].trim().is_empty();
    (if negative { -n } else { n }, odd)
}

/// Sendmail's `convtime(value, default_unit)`, in seconds: numbers each followed by a unit
/// (`w` `d` `h` `m` `s`), the last one's unit may be left out (then `default_unit`).
/// `Err` for what Sendmail rejects ("Invalid time unit") or what is not a time at all.
pub(crate) fn convtime(text: &str, default_unit: char) -> Result<u64, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("is empty, not a time".to_owned());
    }
    let mut total: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if end == 0 {
            return Err(format!(
                "{t:?} is not a time (a number and a unit: 30s, 5m, 2h, 1d)"
            ));
        }
        let mut n: u64 = 0;
        for b in rest[..end].bytes() {
            n = n.saturating_mul(10).saturating_add(u64::from(b - b'0'));
        }
        rest = &rest[end..];
        let unit = match rest.chars().next() {
            None => default_unit,
            Some(c) => {
                rest = &rest[c.len_utf8()..];
                c
            }
        };
        let scale = match unit {
            'w' => 7 * 86_400,
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            other => {
                return Err(format!(
                    "{t:?}: invalid time unit {other:?} (Sendmail's are s, m, h, d, w)"
                ));
            }
        };
        total = total.saturating_add(n.saturating_mul(scale));
    }
    Ok(total)
}

/// A duration in our TOML spelling (humantime): `5d`, `1h 30m`, `1s 500ms`, `0s`.
pub(crate) fn duration_ms(ms: u64) -> String {
    let parts = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
        (1, "ms"),
    ];
    let mut rest = ms;
    let mut out = Vec::new();
    for (size, unit) in parts {
        if rest >= size {
            out.push(format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    if out.is_empty() {
        "0s".to_owned()
    } else {
        out.join(" ")
    }
}

/// A TOML basic string.
pub(crate) fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One `DAEMON_OPTIONS` daemon, as far as we can listen like it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Daemon {
    pub(crate) addr: SocketAddr,
    pub(crate) name: Option<String>,
    /// `M=` modifiers, as written.
    pub(crate) modifiers: String,
}

/// Reads `Port=smtp, Addr=127.0.0.1, Name=MTA, Family=inet6, M=E`. Keys are recognised by
/// their first letter, as Sendmail's `setsockaddroptions` does; unknown keys are returned
/// in `ignored` for the caller to list.
pub(crate) fn daemon_options(text: &str) -> Result<(Daemon, Vec<String>), String> {
    let mut family_v6 = false;
    let (mut addr, mut port, mut name, mut modifiers) = (None, 25u16, None, String::new());
    let mut ignored = Vec::new();
    for field in text.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        let Some((key, value)) = field.split_once('=') else {
            return Err(format!("{field:?} is not Key=value"));
        };
        let (key, value) = (key.trim(), value.trim());
        match key.chars().next().map(|c| c.to_ascii_uppercase()) {
            Some('A') => addr = Some(value.to_owned()),
            Some('P') => port = service_port(value)?,
            Some('N') => name = Some(value.to_owned()),
            Some('F') => match value {
                "inet" => family_v6 = false,
                "inet6" => family_v6 = true,
                other => return Err(format!("Family={other}: only inet and inet6 are served")),
            },
            Some('M') => modifiers = value.to_owned(),
            _ => ignored.push(field.to_owned()),
        }
    }
    let ip: IpAddr = match addr {
        None if family_v6 => Ipv6Addr::UNSPECIFIED.into(),
        None => Ipv4Addr::UNSPECIFIED.into(),
        Some(a) => a
            .parse()
            .map_err(|_| format!("Addr={a}: not an IP address (host names are not resolved)"))?,
    };
    Ok((
        Daemon {
            addr: SocketAddr::new(ip, port),
            name,
            modifiers,
        },
        ignored,
    ))
}

/// A port number or one of the service names Sendmail configurations use.
fn service_port(value: &str) -> Result<u16, String> {
    match value {
        "smtp" => Ok(25),
        "submission" => Ok(587),
        "smtps" => Ok(465),
        n => n
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("Port={n}: not a port number or smtp/submission/smtps")),
    }
}

/// The `access_db` map specification, e.g. `hash -T<TMPF> -o /etc/mail/access`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AccessDb {
    /// The source text file: the map's path without `.db` (what `makemap` reads).
    pub(crate) file: String,
    /// The map type (`hash`, `btree`, `dbm`).
    pub(crate) map_type: String,
    /// `-T<TMPF>`: a temporary lookup failure answers 4xx.
    pub(crate) tempfail: bool,
    /// `-o`: the map is optional (missing = empty).
    pub(crate) optional: bool,
    /// Whether the path named the compiled `.db` file.
    pub(crate) stripped_db: bool,
}

/// The map types whose source is a text file `makemap` compiles.
const FILE_MAP_TYPES: [&str; 3] = ["hash", "btree", "dbm"];

/// Reads the first argument of `FEATURE(`access_db')`; empty is Sendmail's default
/// (`hash -T<TMPF> /etc/mail/access`).
pub(crate) fn access_db(spec: &str) -> Result<AccessDb, String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return access_db("hash -T<TMPF> /etc/mail/access");
    }
    let mut words = spec.split_whitespace().peekable();
    let mut map_type = "hash".to_owned();
    if let Some(first) = words.peek()
        && !first.starts_with('-')
        && !first.starts_with('/')
    {
        map_type = (*first).to_owned();
        words.next();
    }
    if !FILE_MAP_TYPES.contains(&map_type.as_str()) {
        return Err(format!(
            "map type {map_type:?}: Portcullis reads the access source file itself; \
             only file maps (hash, btree, dbm) have one"
        ));
    }
    let (mut tempfail, mut optional, mut path) = (false, false, None);
    for word in words {
        match word {
            w if w.starts_with("-T") => tempfail = true,
            "-o" => optional = true,
            w if w.starts_with('-') => {}
            w => path = Some(w.to_owned()),
        }
    }
    let path = path.ok_or_else(|| format!("no file path in {spec:?}"))?;
    let (file, stripped_db) = match path.strip_suffix(".db") {
        Some(base) if !base.is_empty() => (base.to_owned(), true),
        _ => (path, false),
    };
    Ok(AccessDb {
        file,
        map_type,
        tempfail,
        optional,
        stripped_db,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strtol_reads_as_sendmail() {
        let table: &[(&str, i64, bool)] = &[
            ("5000", 5000, false),
            (" 5000 ", 5000, false),
            ("-5", -5, false),
            ("+7", 7, false),
            ("abc", 0, true),
            ("10M", 10, true),
            ("", 0, true),
            ("99999999999999999999999", i64::MAX, false),
        ];
        for &(text, n, odd) in table {
            assert_eq!(strtol(text), (n, odd), "{text:?}");
        }
    }

    #[test]
    fn convtime_reads_as_sendmail() {
        let table: &[(&str, char, Option<u64>)] = &[
            ("30s", 'm', Some(30)),
            ("5", 'm', Some(300)),
            ("5", 'd', Some(432_000)),
            ("4", 'h', Some(14_400)),
            ("12", 's', Some(12)),
            ("1h30m", 'm', Some(5_400)),
            ("2w", 'm', Some(1_209_600)),
            (" 1m ", 'm', Some(60)),
            ("0s", 'm', Some(0)),
            ("secs", 's', None),
            ("10x", 'm', None),
            ("", 'm', None),
            ("-5m", 'm', None),
            ("5m 3s", 'm', None),
        ];
        for &(text, unit, want) in table {
            assert_eq!(convtime(text, unit).ok(), want, "{text:?}");
        }
    }

    #[test]
    fn durations_in_our_spelling() {
        let table: &[(u64, &str)] = &[
            (0, "0s"),
            (700, "700ms"),
            (1_000, "1s"),
            (1_500, "1s 500ms"),
            (300_000, "5m"),
            (5_400_000, "1h 30m"),
            (432_000_000, "5d"),
        ];
        for &(ms, want) in table {
            assert_eq!(duration_ms(ms), want);
            let back = humantime::parse_duration(want).unwrap();
            assert_eq!(back.as_millis(), u128::from(ms), "{want}");
        }
    }

    #[test]
    fn daemon_options_table() {
        let (d, ignored) = daemon_options("Port=smtp,Addr=127.0.0.1, Name=MTA").unwrap();
        assert_eq!(d.addr, "127.0.0.1:25".parse().unwrap());
        assert_eq!(d.name.as_deref(), Some("MTA"));
        assert!(ignored.is_empty());
        let (d, _) = daemon_options("Family=inet6, Port=2525").unwrap();
        assert_eq!(d.addr, "[::]:2525".parse().unwrap());
        let (d, ignored) = daemon_options("Port=587, Name=MSA, M=Ea, Listen=64").unwrap();
        assert_eq!(d.addr.port(), 587);
        assert_eq!(d.modifiers, "Ea");
        assert_eq!(ignored, ["Listen=64"]);
        for bad in [
            "Addr=mail.example.com",
            "Port=gopher",
            "Port=0",
            "Family=local",
            "junk",
        ] {
            assert!(daemon_options(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn access_db_specs() {
        let a = access_db("hash -T<TMPF> -o /etc/mail/access").unwrap();
        assert_eq!(
            (a.file.as_str(), a.tempfail, a.optional, a.stripped_db),
            ("/etc/mail/access", true, true, false)
        );
        let a = access_db("hash -o -T<TMPF> /etc/mail/access.db").unwrap();
        assert_eq!((a.file.as_str(), a.stripped_db), ("/etc/mail/access", true));
        let a = access_db("").unwrap();
        assert_eq!((a.file.as_str(), a.tempfail), ("/etc/mail/access", true));
        let a = access_db("/etc/mail/access.db").unwrap();
        assert_eq!(
            (a.map_type.as_str(), a.file.as_str()),
            ("hash", "/etc/mail/access")
        );
        assert!(access_db("LDAP").is_err());
        assert!(access_db("sequence a b").is_err());
        assert!(access_db("hash -o").is_err());
    }

    #[test]
    fn toml_strings_round_trip() {
        for s in ["plain", "with \"quotes\" and \\", "tab\tand\u{1}"] {
            let doc = format!("k = {}", toml_string(s));
            let v: toml::Table = toml::from_str(&doc).unwrap();
            assert_eq!(v["k"].as_str(), Some(s));
        }
    }
}
