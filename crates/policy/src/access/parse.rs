//! Reading the access source text line by line into an [`AccessMap`].
//!
//! Role: `makemap`'s reading of the file (one `key value` per line, `#` comments in column
//! one, keys case-folded, first duplicate kept), plus the diagnostics makemap never gives:
//! keys that Sendmail would never match, unused tags, numbers that are not numbers.
//! Must not: stop at the first error (every error in one pass, each with its line), or
//! return a map when there was an error.
//! Invariants: a line is stored only if it produced no error; warnings never change what
//! is stored (except that a duplicate or an unused tag is not stored).

use super::index::{Duplicate, IpKey, TooLarge};
use super::key::{self, Kind, Lhs, Odd};
use super::{AccessMap, Diagnostic, Parsed, Tag};

/// C `isspace` in the C locale (makemap's separator test): Rust's ASCII whitespace plus
/// vertical tab.
fn is_space(b: u8) -> bool {
    b.is_ascii_whitespace() || b == 0x0b
}

pub(super) fn parse(source: &str, text: &[u8]) -> Result<Parsed, Vec<Diagnostic>> {
    let mut b = Builder::new(source, text);
    let mut line = 0u32;
    for raw in text.split(|c| *c == b'\n') {
        let Some(next) = line.checked_add(1) else {
            b.error(line, "too many lines (more than 4294967295)".to_owned());
            break;
        };
        line = next;
        b.line(line, raw);
    }
    b.finish()
}

struct Builder {
    map: AccessMap,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    too_large: bool,
}

impl Builder {
    fn new(source: &str, text: &[u8]) -> Self {
        let lines = text.iter().filter(|c| **c == b'\n').count() + 1;
        let mut map = AccessMap {
            source: source.to_owned(),
            ..AccessMap::default()
        };
        // Keys and values are a subset of the text, and there is at most one record per
        // line: reserving both up front avoids regrowing copies of a large map.
        map.arena.reserve(text.len());
        map.records.reserve(lines);
        Self {
            map,
            errors: Vec::new(),
            warnings: Vec::new(),
            too_large: false,
        }
    }

    fn diagnostic(&self, line: u32, message: String) -> Diagnostic {
        Diagnostic {
            source: self.map.source.clone(),
            line,
            message,
        }
    }

    fn error(&mut self, line: u32, message: String) {
        let d = self.diagnostic(line, message);
        self.errors.push(d);
    }

    fn warn(&mut self, line: u32, message: String) {
        let d = self.diagnostic(line, message);
        self.warnings.push(d);
    }

    fn finish(mut self) -> Result<Parsed, Vec<Diagnostic>> {
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        self.map.arena.shrink_to_fit();
        self.map.records.shrink_to_fit();
        Ok(Parsed {
            map: self.map,
            warnings: self.warnings,
        })
    }

    /// One line: skip it, store it, or report why not.
    fn line(&mut self, n: u32, raw: &[u8]) {
        // Comments and blank lines first, so a comment in Latin-1 is no error.
        if raw.first() == Some(&b'#') || raw.iter().all(|b| is_space(*b)) {
            return;
        }
        let Some(text) = self.decode(n, raw) else {
            return;
        };
        if text.as_bytes().first().is_some_and(|b| is_space(*b)) {
            // makemap: "syntax error (leading space)"; there are no continuation lines.
            return self.error(
                n,
                "line starts with whitespace (makemap rejects it)".to_owned(),
            );
        }
        let split = text.bytes().position(is_space).unwrap_or(text.len());
        let (lhs, rest) = text.split_at(split);
        let value = rest.trim_matches(|c: char| c.is_ascii() && is_space(c as u8));
        if value.is_empty() {
            return self.error(n, format!("no value for key \"{lhs}\""));
        }
        if !quotes_balanced(value) {
            return self.error(n, format!("unterminated quote in value {value}"));
        }
        match key::classify(lhs) {
            Err(message) => self.error(n, message),
            Ok(Lhs::Unused(word)) => self.warn(
                n,
                format!("unused tag \"{word}:\" (Portcullis does not read it); entry ignored"),
            ),
            Ok(Lhs::Key { tag, key, kind }) => {
                self.advise(n, lhs, tag, kind);
                self.check_number(n, tag, value);
                self.store(n, lhs, tag, key, kind, value);
            }
        }
    }

    fn decode<'t>(&mut self, n: u32, raw: &'t [u8]) -> Option<&'t str> {
        if raw.contains(&0) {
            self.error(n, "line contains a NUL byte".to_owned());
            return None;
        }
        match std::str::from_utf8(raw) {
            Ok(s) => Some(s),
            Err(e) => {
                let at = e.valid_up_to() + 1;
                self.error(n, format!("line is not valid UTF-8 (byte {at})"));
                None
            }
        }
    }

    /// Warnings about keys that are stored but that the lookups for their tag never (or
    /// hardly ever) reach.
    fn advise(&mut self, n: u32, lhs: &str, tag: Tag, kind: Kind) {
        const NAME_UNUSED: &str =
            "never matches: it is a name, and this tag is looked up by client address only";
        let client_tag = !matches!(tag, Tag::From | Tag::To | Tag::Spam | Tag::Untagged);
        let address_only = matches!(tag, Tag::ClientRate | Tag::ClientConn);
        let why = match kind {
            Kind::Name(Some(Odd::Bracketed)) if address_only => Some(NAME_UNUSED),
            Kind::Name(Some(Odd::Bracketed)) if client_tag => Some(
                "is in brackets, so it is no address key: it matches only the name Sendmail \
                 gives a client without reverse DNS ([192.0.2.1]); write the address without \
                 brackets",
            ),
            Kind::Name(Some(odd)) => odd_name(odd),
            Kind::V6 { mapped: true, .. } => Some(
                "never matches: it is an IPv4-mapped IPv6 address, and such clients are \
                 looked up as IPv4",
            ),
            Kind::Default => match tag {
                Tag::GreetPause | Tag::Connect | Tag::From | Tag::To | Tag::Spam => Some(
                    "never matches: it is an empty-key default, which Sendmail never looks \
                     up for this tag",
                ),
                _ => None,
            },
            Kind::Name(None) if address_only => Some(NAME_UNUSED),
            Kind::V4 { .. } | Kind::V6 { .. } if !client_tag && tag != Tag::Untagged => Some(
                "never matches: it is an address, and this tag is looked up by mail address \
                 and domain (a domain literal is written [192.0.2.1])",
            ),
            _ => None,
        };
        if let Some(why) = why {
            self.warn(n, format!("key \"{lhs}\" {why}"));
        }
    }

    /// Sendmail reads these values with `strtol`: say what it will make of a non-number.
    fn check_number(&mut self, n: u32, tag: Tag, value: &str) {
        if !tag.is_numeric() {
            return;
        }
        let digits = value.strip_prefix(['-', '+']).unwrap_or(value);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            let read = super::number(value);
            self.warn(
                n,
                format!("{tag} value \"{value}\" is not a number: Sendmail reads it as {read}"),
            );
        }
    }

    fn store(&mut self, n: u32, lhs: &str, tag: Tag, key: &str, kind: Kind, value: &str) {
        if self.too_large {
            return;
        }
        let stored = match kind {
            Kind::V4 { addr, len } => {
                self.map
                    .store_addr(tag, IpKey::v4(tag, addr, len), key, value, n)
            }
            Kind::V6 { addr, len, .. } => {
                self.map
                    .store_addr(tag, IpKey::v6(tag, addr, len), key, value, n)
            }
            Kind::Default | Kind::Name(_) => self.map.store_name(tag, key, value, n),
        };
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(Duplicate { first })) => {
                let message = match self.map.record(first) {
                    Some(was) => format!(
                        "duplicate key \"{lhs}\": line {} already has \"{}\" \
                         (the first is kept, as makemap does; this line is ignored)",
                        was.line,
                        was.lhs()
                    ),
                    None => format!("duplicate key \"{lhs}\" (this line is ignored)"),
                };
                self.warn(n, message);
            }
            Err(TooLarge) => {
                self.too_large = true;
                self.error(
                    n,
                    "map too large (over 4 GiB of keys and values)".to_owned(),
                );
            }
        }
    }
}

/// Why a name that looks like an address is never produced by an address lookup.
fn odd_name(odd: Odd) -> Option<&'static str> {
    match odd {
        Odd::TrailingDot => Some(
            "never matches: it ends with a dot, which address lookups never produce (they \
             strip whole octets)",
        ),
        // A bracketed literal is a fine From:/To: domain (`user@[192.0.2.1]`).
        Odd::Bracketed => None,
        Odd::BadV4 => Some(
            "never matches: it looks like an IPv4 address but is not 1 to 4 octets of 0-255 \
             without leading zeros",
        ),
        Odd::V6WithoutPrefix => {
            Some("never matches: it is an IPv6 address without the \"IPv6:\" prefix")
        }
        Odd::BadV6 => {
            Some("never matches: it starts with \"IPv6:\" but is not an IPv6 address or prefix")
        }
    }
}

/// Double quotes pair up; a backslash escapes the next character (Sendmail's tokenizer).
fn quotes_balanced(value: &str) -> bool {
    let mut open = false;
    let mut escaped = false;
    for c in value.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => open = !open,
            _ => {}
        }
    }
    !open
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Parsed {
        match AccessMap::parse("access", text.as_bytes()) {
            Ok(p) => p,
            Err(e) => panic!("{text:?}: {e:?}"),
        }
    }

    fn messages(d: &[Diagnostic]) -> Vec<String> {
        d.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn entries_as_written() {
        let text = "# comment\n\nGreetPause:LocalHost\t 2000  \r\n\
                    Connect:127.0.0.3\tERROR:\"421 4.7.1 Go away, you are blocked\"\n\
                    ClientRate:  10\nFrom:user@ REJECT\nIPv6:2001:db8::/32 OK\n   \t\n";
        let p = parsed(text);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let got: Vec<String> = p
            .map
            .entries()
            .map(|e| format!("{}|{}|{}|{}", e.line, e.tag, e.key, e.value))
            .collect();
        assert_eq!(
            got,
            [
                "3|GreetPause|LocalHost|2000",
                "4|Connect|127.0.0.3|ERROR:\"421 4.7.1 Go away, you are blocked\"",
                "5|ClientRate||10",
                "6|From|user@|REJECT",
                "7||IPv6:2001:db8::/32|OK",
            ]
        );
        assert_eq!(p.map.len(), 5);
        assert_eq!(p.map.source(), "access");
        assert!(p.map.has_host_keys(Tag::GreetPause) && p.map.has_host_keys(Tag::From));
        assert!(!p.map.has_host_keys(Tag::ClientRate) && !p.map.has_host_keys(Tag::Connect));
    }

    #[test]
    fn errors_are_all_collected() {
        let cases: &[(&[u8], &[&str])] = &[
            (
                b"GreetPause:127.0.0.1\n",
                &["access:1: no value for key \"GreetPause:127.0.0.1\""],
            ),
            (
                b"localhost  \r\n",
                &["access:1: no value for key \"localhost\""],
            ),
            (
                b" localhost 0\n",
                &["access:1: line starts with whitespace (makemap rejects it)"],
            ),
            (
                b"Connect:10 ERROR:\"550 go away\n",
                &["access:1: unterminated quote in value ERROR:\"550 go away"],
            ),
            (
                b"a\xff b\n",
                &["access:1: line is not valid UTF-8 (byte 2)"],
            ),
            (b"a b\0c\n", &["access:1: line contains a NUL byte"]),
            (
                b"10.0.0.1/8 OK\nx 1\nIPv6:2001:db8::/200 OK\n",
                &[
                    "access:1: bad CIDR key \"10.0.0.1/8\": host bits are set (did you mean 10.0.0.0/8?)",
                    "access:3: bad CIDR key \"IPv6:2001:db8::/200\": prefix length \"200\" is not a number from 0 to 128",
                ],
            ),
        ];
        for (text, want) in cases {
            let got = AccessMap::parse("access", text).map(|p| p.map.len());
            assert_eq!(
                got.map_err(|e| messages(&e)),
                Err(want.iter().map(ToString::to_string).collect()),
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn warnings() {
        let cases: &[(&str, &str)] = &[
            (
                "TLS_Clt:host VERIFY",
                "unused tag \"TLS_Clt:\" (Portcullis does not read it); entry ignored",
            ),
            (
                "a 1\nA 2",
                "duplicate key \"A\": line 1 already has \"a\" (the first is kept, as makemap does; this line is ignored)",
            ),
            (
                "10.1.2 1\n10.1.2.0/24 2",
                "duplicate key \"10.1.2.0/24\": line 1 already has \"10.1.2\" (the first is kept, as makemap does; this line is ignored)",
            ),
            (
                "GreetPause:127.0.0. 0",
                "key \"GreetPause:127.0.0.\" never matches: it ends with a dot, which address lookups never produce (they strip whole octets)",
            ),
            (
                "GreetPause:[127.0.0.1] 0",
                "key \"GreetPause:[127.0.0.1]\" is in brackets, so it is no address key: it matches only the name Sendmail gives a client without reverse DNS ([192.0.2.1]); write the address without brackets",
            ),
            (
                "GreetPause:0:0:0:0:0:0:0:1 0",
                "key \"GreetPause:0:0:0:0:0:0:0:1\" never matches: it is an IPv6 address without the \"IPv6:\" prefix",
            ),
            (
                "GreetPause:IPv6:x 0",
                "key \"GreetPause:IPv6:x\" never matches: it starts with \"IPv6:\" but is not an IPv6 address or prefix",
            ),
            (
                "Connect:127.0.0.01 OK",
                "key \"Connect:127.0.0.01\" never matches: it looks like an IPv4 address but is not 1 to 4 octets of 0-255 without leading zeros",
            ),
            (
                "IPv6:::ffff:10.0.0.1 OK",
                "key \"IPv6:::ffff:10.0.0.1\" never matches: it is an IPv4-mapped IPv6 address, and such clients are looked up as IPv4",
            ),
            (
                "GreetPause: 1000",
                "key \"GreetPause:\" never matches: it is an empty-key default, which Sendmail never looks up for this tag",
            ),
            (
                "ClientRate:localhost 5",
                "key \"ClientRate:localhost\" never matches: it is a name, and this tag is looked up by client address only",
            ),
            (
                "From:10.1.2.3 REJECT",
                "key \"From:10.1.2.3\" never matches: it is an address, and this tag is looked up by mail address and domain (a domain literal is written [192.0.2.1])",
            ),
            (
                "GreetPause:127.0.0.1 abc",
                "GreetPause value \"abc\" is not a number: Sendmail reads it as 0",
            ),
            (
                "ClientConn:10 1500ms",
                "ClientConn value \"1500ms\" is not a number: Sendmail reads it as 1500",
            ),
        ];
        for (text, want) in cases {
            let p = parsed(text);
            let last = p.warnings.last().map(ToString::to_string);
            assert_eq!(
                last.as_deref(),
                Some(format!("access:{}: {want}", text.lines().count()).as_str()),
                "{text}"
            );
            assert_eq!(p.warnings.len(), 1, "{text}: {:?}", p.warnings);
        }
        // Not warned: what Sendmail reads fine, and bracketed domain literals for mail tags.
        let quiet = "GreetPause:127.0.0.1 -5\nClientRate: +10\nFrom:[192.0.2.1] REJECT\n\
                     [192.0.2.1] OK\nSpam:abuse@ FRIEND\nIPv6:::1 0\nSrv_Features: F\n\
                     Connect:x ERROR:\"550 \\\"quoted\\\" text\"";
        assert!(
            parsed(quiet).warnings.is_empty(),
            "{:?}",
            parsed(quiet).warnings
        );
    }

    #[test]
    fn quotes() {
        assert!(quotes_balanced("ERROR:\"550 x\""));
        assert!(quotes_balanced("plain"));
        assert!(quotes_balanced("\"a \\\" b\""));
        assert!(!quotes_balanced("\"a"));
        assert!(!quotes_balanced("\"a\\\""));
    }
}
