//! Envelope addresses: the reverse-path of MAIL and the forward-path of RCPT (RFC 5321 §4.1.2).
//!
//! Role: turn the text between `<` and `>` into a [`Mailbox`] whose local part and domain are
//! unambiguous, so later decisions (local user? relay?) never have to re-parse strings.
//!
//! We parse ourselves rather than with smtp-proto because an MX must not lose information an
//! attacker controls: smtp-proto folds `"a@b"@c` into `a@b@c`, turns `<Postmaster>` into an
//! empty address and refuses address literals. Here a quoted local part stays one local part
//! (flagged `quoted`), `<Postmaster>` is its own case (RFC 5321 §4.5.1 requires accepting it),
//! and address literals parse.
//!
//! Must not: decide anything (local, relay, user known); that is policy's job.
//! Invariants: a parsed local part is at most 64 octets, a domain at most 255, a path at most
//! 256 (RFC 5321 §4.5.3.1); a source route (`@a,@b:user@c`) is accepted and ignored
//! (RFC 5321 §4.1.2, appendix C).

use std::fmt;

/// RFC 5321 §4.5.3.1.1.
const MAX_LOCAL_PART: usize = 64;
/// RFC 5321 §4.5.3.1.2.
const MAX_DOMAIN: usize = 255;
/// RFC 5321 §4.5.3.1.3.
const MAX_PATH: usize = 256;

/// A mailbox: `local@domain`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// The local part with any quoting removed (`"a b"@x` → `a b`).
    pub local: String,
    /// The domain as written: a host name or an address literal such as `[192.0.2.1]`.
    pub domain: String,
    /// True when the local part was written as a quoted string.
    pub quoted: bool,
}

impl Mailbox {
    /// True when the domain is an address literal (`[192.0.2.1]`, `[IPv6:...]`).
    pub fn is_address_literal(&self) -> bool {
        self.domain.starts_with('[')
    }
}

impl fmt::Display for Mailbox {
    /// Writes the address in canonical form, quoting the local part when it needs it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.quoted || !is_dot_string(self.local.as_bytes()) {
            f.write_str("\"")?;
            for c in self.local.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\"")?;
        } else {
            f.write_str(&self.local)?;
        }
        write!(f, "@{}", self.domain)
    }
}

/// What MAIL FROM or RCPT TO named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReversePath {
    /// `<>`: the null reverse-path of bounces (RFC 5321 §4.5.5). Not valid for RCPT.
    Null,
    /// `<Postmaster>` without a domain (RFC 5321 §4.5.1). Only valid for RCPT.
    Postmaster,
    /// An ordinary mailbox.
    Mailbox(Mailbox),
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => Ok(()),
            Self::Postmaster => f.write_str("Postmaster"),
            Self::Mailbox(m) => m.fmt(f),
        }
    }
}

/// Why an address did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressError {
    /// The path is longer than RFC 5321 allows.
    TooLong,
    /// The local part is malformed or too long.
    LocalPart,
    /// There is no `@domain`.
    MissingDomain,
    /// The domain or address literal is malformed.
    Domain,
    /// Characters after the address.
    Trailing,
}

/// Parses the content of a path (what stands between `<` and `>`).
///
/// `""` is the null path and `Postmaster` (any case) the special recipient; callers decide
/// which of them their command allows.
pub fn parse_path(text: &str) -> Result<ReversePath, AddressError> {
    if text.len() > MAX_PATH {
        return Err(AddressError::TooLong);
    }
    if text.is_empty() {
        return Ok(ReversePath::Null);
    }
    if text.eq_ignore_ascii_case("postmaster") {
        return Ok(ReversePath::Postmaster);
    }
    let rest = skip_source_route(text)?;
    parse_mailbox(rest).map(ReversePath::Mailbox)
}

/// `@a.example,@b.example:` before the mailbox: accepted and ignored (RFC 5321 §4.1.2).
fn skip_source_route(text: &str) -> Result<&str, AddressError> {
    if !text.starts_with('@') {
        return Ok(text);
    }
    let Some(colon) = text.find(':') else {
        return Err(AddressError::Domain);
    };
    for hop in text[..colon].split(',') {
        let domain = hop.strip_prefix('@').ok_or(AddressError::Domain)?;
        if !is_domain(domain) {
            return Err(AddressError::Domain);
        }
    }
    Ok(&text[colon + 1..])
}

fn parse_mailbox(text: &str) -> Result<Mailbox, AddressError> {
    let (local, quoted, rest) = if let Some(after_quote) = text.strip_prefix('"') {
        let (local, consumed) = parse_quoted(after_quote)?;
        (local, true, &after_quote[consumed..])
    } else {
        let end = text.find('@').ok_or(AddressError::MissingDomain)?;
        let local = &text[..end];
        if !is_dot_string(local.as_bytes()) {
            return Err(AddressError::LocalPart);
        }
        (local.to_owned(), false, &text[end..])
    };
    if local.len() > MAX_LOCAL_PART {
        return Err(AddressError::LocalPart);
    }
    let domain = rest.strip_prefix('@').ok_or(AddressError::MissingDomain)?;
    if domain.len() > MAX_DOMAIN {
        return Err(AddressError::TooLong);
    }
    if !(is_domain(domain) || is_address_literal(domain)) {
        return Err(AddressError::Domain);
    }
    Ok(Mailbox {
        local,
        domain: domain.to_owned(),
        quoted,
    })
}

/// Parses a quoted string's body (after the opening quote). Returns the unescaped text and the
/// number of bytes consumed including the closing quote.
fn parse_quoted(text: &str) -> Result<(String, usize), AddressError> {
    let mut out = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, i + 1)),
            '\\' => {
                let (_, escaped) = chars.next().ok_or(AddressError::LocalPart)?;
                // RFC 5321 quoted-pairSMTP: %d92 %d32-126.
                if !(' '..='~').contains(&escaped) {
                    return Err(AddressError::LocalPart);
                }
                out.push(escaped);
            }
            // qtextSMTP: %d32-33 / %d35-91 / %d93-126, plus UTF-8 (RFC 6531).
            c if c == ' ' || c == '!' || ('#'..='~').contains(&c) || !c.is_ascii() => out.push(c),
            _ => return Err(AddressError::LocalPart),
        }
    }
    Err(AddressError::LocalPart)
}

/// RFC 5321 Dot-string: atoms of atext separated by single dots. UTF-8 is allowed (RFC 6531).
fn is_dot_string(s: &[u8]) -> bool {
    !s.is_empty()
        && s.split(|&b| b == b'.')
            .all(|atom| !atom.is_empty() && atom.iter().all(|&b| is_atext(b)))
}

fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b) || b >= 0x80
}

/// RFC 5321 Domain: sub-domains of letters, digits and inner hyphens, separated by dots.
/// UTF-8 labels are allowed (RFC 6531 U-labels).
pub fn is_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_DOMAIN
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b.iter()
                    .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c >= 0x80)
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// RFC 5321 address-literal: `[IPv4]` or `[IPv6:...]`.
fn is_address_literal(s: &str) -> bool {
    let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) else {
        return false;
    };
    if let Some(v6) = inner
        .strip_prefix("IPv6:")
        .or_else(|| inner.strip_prefix("ipv6:"))
    {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    inner.parse::<std::net::Ipv4Addr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailbox(local: &str, domain: &str, quoted: bool) -> ReversePath {
        ReversePath::Mailbox(Mailbox {
            local: local.into(),
            domain: domain.into(),
            quoted,
        })
    }

    #[test]
    fn parses_paths() {
        let table: &[(&str, Result<ReversePath, AddressError>)] = &[
            ("", Ok(ReversePath::Null)),
            ("Postmaster", Ok(ReversePath::Postmaster)),
            ("POSTMASTER", Ok(ReversePath::Postmaster)),
            (
                "alice@example.org",
                Ok(mailbox("alice", "example.org", false)),
            ),
            ("a.b+c@x.y", Ok(mailbox("a.b+c", "x.y", false))),
            ("\"a b\"@x.y", Ok(mailbox("a b", "x.y", true))),
            ("\"a@b\"@c.d", Ok(mailbox("a@b", "c.d", true))),
            ("\"a\\\"q\"@c.d", Ok(mailbox("a\"q", "c.d", true))),
            ("@relay.example:a@b.c", Ok(mailbox("a", "b.c", false))),
            (
                "@r1.example,@r2.example:a@b.c",
                Ok(mailbox("a", "b.c", false)),
            ),
            ("a%b@c.d", Ok(mailbox("a%b", "c.d", false))),
            ("a@[127.0.0.1]", Ok(mailbox("a", "[127.0.0.1]", false))),
            ("a@[IPv6:::1]", Ok(mailbox("a", "[IPv6:::1]", false))),
            ("ä@c.d", Ok(mailbox("ä", "c.d", false))),
            ("postmaster@x.y", Ok(mailbox("postmaster", "x.y", false))),
            ("a", Err(AddressError::MissingDomain)),
            ("a@", Err(AddressError::Domain)),
            ("@b", Err(AddressError::Domain)),
            ("a..b@c", Err(AddressError::LocalPart)),
            (".a@c", Err(AddressError::LocalPart)),
            ("a b@c", Err(AddressError::LocalPart)),
            ("a\0b@c", Err(AddressError::LocalPart)),
            ("a@b..c", Err(AddressError::Domain)),
            ("a@-b.c", Err(AddressError::Domain)),
            ("a@b_c.d", Err(AddressError::Domain)),
            ("a@[300.0.0.1]", Err(AddressError::Domain)),
            ("\"unterminated@c", Err(AddressError::LocalPart)),
            ("\"a\"b@c", Err(AddressError::MissingDomain)),
            ("@x:", Err(AddressError::MissingDomain)),
        ];
        for (input, want) in table {
            assert_eq!(&parse_path(input), want, "input {input:?}");
        }
    }

    #[test]
    fn enforces_rfc_lengths() {
        let long_local = format!("{}@x.y", "a".repeat(65));
        assert_eq!(parse_path(&long_local), Err(AddressError::LocalPart));
        let ok_local = format!("{}@x.y", "a".repeat(64));
        assert!(parse_path(&ok_local).is_ok());
        let long_path = format!("a@{}", "b.".repeat(130));
        assert_eq!(parse_path(&long_path), Err(AddressError::TooLong));
    }

    #[test]
    fn displays_canonically() {
        let table = [
            ("alice@example.org", "alice@example.org"),
            ("\"a b\"@x.y", "\"a b\"@x.y"),
            ("\"plain\"@x.y", "\"plain\"@x.y"),
            ("\"a\\\"q\"@c.d", "\"a\\\"q\"@c.d"),
            ("@r.example:a@b.c", "a@b.c"),
            ("", ""),
        ];
        for (input, shown) in table {
            let path = parse_path(input).unwrap();
            assert_eq!(path.to_string(), shown, "input {input:?}");
        }
    }
}
