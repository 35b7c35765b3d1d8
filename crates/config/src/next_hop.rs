//! Next hops, as Sendmail's mailertable writes them: `smtp:[192.0.2.1]:2525`,
//! `smtp:mail.example.net`, `lmtp:[127.0.0.1]:24`, `lmtp:unix:/run/dovecot/lmtp`.
//!
//! Role: one parser for every place a next hop is written (the routing table, the CLI), so
//! they cannot disagree. A host in brackets is used as it is (an address literal, or a name
//! resolved to its addresses with no MX lookup, as Sendmail's `[host]`); a bare name means
//! "the domain's MX hosts".
//! Must not: resolve anything (the delivery agent does) or accept a next hop it would have
//! to guess about: every error names what is wrong.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

/// The protocol spoken to a next hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// SMTP (RFC 5321), default port 25.
    Smtp,
    /// LMTP (RFC 2033), default port 24.
    Lmtp,
}

impl Protocol {
    /// The port used when none is written.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Smtp => 25,
            Self::Lmtp => 24,
        }
    }

    /// `smtp` or `lmtp`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Smtp => "smtp",
            Self::Lmtp => "lmtp",
        }
    }
}

/// Where a next hop's host is found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// `[192.0.2.1]`, `[IPv6:2001:db8::1]` or `[2001:db8::1]`: this address.
    Address(IpAddr),
    /// `[mail.example.net]`: the name's A/AAAA records, no MX lookup.
    Name(String),
    /// `mail.example.net`: the domain's MX hosts (its A/AAAA when it has no MX).
    Mx(String),
}

/// One next hop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NextHop {
    /// Over TCP.
    Tcp {
        /// SMTP or LMTP.
        protocol: Protocol,
        /// Where.
        host: Host,
        /// The port (the protocol's default when not written).
        port: u16,
    },
    /// LMTP over a Unix socket (`lmtp:unix:/path`).
    LmtpUnix(PathBuf),
}

impl NextHop {
    /// Reads `protocol:host[:port]` or `lmtp:unix:/absolute/path`. Protocol names in any
    /// case; `esmtp` and `relay` (Sendmail mailer names) mean SMTP.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (proto, rest) = text.split_once(':').ok_or_else(|| {
            format!(
                "{text:?} has no protocol: write it as \"smtp:[192.0.2.1]:25\", \"lmtp:[127.0.0.1]:24\" or \"lmtp:unix:/path\""
            )
        })?;
        let protocol = match proto.to_ascii_lowercase().as_str() {
            "smtp" | "esmtp" | "relay" => Protocol::Smtp,
            "lmtp" => Protocol::Lmtp,
            other => {
                return Err(format!(
                    "unknown protocol {other:?} in {text:?} (smtp or lmtp)"
                ));
            }
        };
        if let Some(path) = rest.strip_prefix("unix:") {
            if protocol != Protocol::Lmtp {
                return Err(format!(
                    "{text:?}: only LMTP goes over a Unix socket (lmtp:unix:/path)"
                ));
            }
            if !path.starts_with('/') {
                return Err(format!("{text:?}: the socket path must be absolute"));
            }
            return Ok(Self::LmtpUnix(PathBuf::from(path)));
        }
        let (host, port) = split_host_port(rest).map_err(|e| format!("{text:?}: {e}"))?;
        Ok(Self::Tcp {
            protocol,
            host,
            port: port.unwrap_or(protocol.default_port()),
        })
    }

    /// The protocol spoken.
    pub fn protocol(&self) -> Protocol {
        match self {
            Self::Tcp { protocol, .. } => *protocol,
            Self::LmtpUnix(_) => Protocol::Lmtp,
        }
    }
}

impl fmt::Display for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LmtpUnix(path) => write!(f, "lmtp:unix:{}", path.display()),
            Self::Tcp {
                protocol,
                host,
                port,
            } => {
                let p = protocol.name();
                match host {
                    Host::Address(IpAddr::V6(a)) => write!(f, "{p}:[IPv6:{a}]:{port}"),
                    Host::Address(a) => write!(f, "{p}:[{a}]:{port}"),
                    Host::Name(n) => write!(f, "{p}:[{n}]:{port}"),
                    Host::Mx(n) => write!(f, "{p}:{n}:{port}"),
                }
            }
        }
    }
}

/// `[literal]`, `[name]` or `name`, each optionally followed by `:port`.
fn split_host_port(s: &str) -> Result<(Host, Option<u16>), String> {
    let (host, after) = if let Some(inner) = s.strip_prefix('[') {
        let (inside, after) = inner
            .split_once(']')
            .ok_or_else(|| "a '[' without its ']'".to_owned())?;
        (bracketed(inside)?, after)
    } else {
        let (name, after) = match s.find(':') {
            Some(i) => (&s[..i], &s[i..]),
            None => (s, ""),
        };
        let name = domain(name)?;
        if name
            .rsplit('.')
            .next()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(format!(
                "{name:?} looks like an address: write it in brackets, [{name}]"
            ));
        }
        (Host::Mx(name), after)
    };
    let port = match after {
        "" => None,
        p => {
            let digits = p
                .strip_prefix(':')
                .ok_or_else(|| format!("unexpected {p:?} after the host"))?;
            if !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("{digits:?} is not a port (1-65535)"));
            }
            match digits.parse::<u16>() {
                Ok(0) | Err(_) => return Err(format!("{digits:?} is not a port (1-65535)")),
                Ok(n) => Some(n),
            }
        }
    };
    Ok((host, port))
}

fn bracketed(inside: &str) -> Result<Host, String> {
    let tagged = inside.get(..5).filter(|p| p.eq_ignore_ascii_case("IPv6:"));
    if let Some(literal) = tagged.and_then(|_| inside.get(5..)) {
        return match literal.parse::<std::net::Ipv6Addr>() {
            Ok(v6) => Ok(Host::Address(IpAddr::V6(v6))),
            Err(_) => Err(format!("{literal:?} is not an IPv6 address")),
        };
    }
    if let Ok(addr) = inside.parse::<IpAddr>() {
        return Ok(Host::Address(addr));
    }
    Ok(Host::Name(domain(inside)?))
}

/// A host name: letters, digits, hyphens and dots, at most 253 characters, lower-cased.
fn domain(name: &str) -> Result<String, String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(format!("{name:?} is not a host name or address"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(protocol: Protocol, host: Host, port: u16) -> NextHop {
        NextHop::Tcp {
            protocol,
            host,
            port,
        }
    }

    #[test]
    fn forms_sendmail_writes() {
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let table = [
            (
                "smtp:[127.0.0.1]:2600",
                tcp(Protocol::Smtp, Host::Address(v4), 2600),
            ),
            (
                "smtp:[127.0.0.1]",
                tcp(Protocol::Smtp, Host::Address(v4), 25),
            ),
            (
                "esmtp:[IPv6:2001:db8::1]:26",
                tcp(Protocol::Smtp, Host::Address(v6), 26),
            ),
            (
                "relay:[2001:db8::1]",
                tcp(Protocol::Smtp, Host::Address(v6), 25),
            ),
            (
                "lmtp:[127.0.0.1]",
                tcp(Protocol::Lmtp, Host::Address(v4), 24),
            ),
            (
                "LMTP:[127.0.0.1]:2424",
                tcp(Protocol::Lmtp, Host::Address(v4), 2424),
            ),
            (
                "smtp:[Mail.Example.NET]",
                tcp(Protocol::Smtp, Host::Name("mail.example.net".into()), 25),
            ),
            (
                "smtp:example.net",
                tcp(Protocol::Smtp, Host::Mx("example.net".into()), 25),
            ),
            (
                "smtp:example.net.:587",
                tcp(Protocol::Smtp, Host::Mx("example.net".into()), 587),
            ),
            (
                "lmtp:unix:/run/dovecot/lmtp",
                NextHop::LmtpUnix("/run/dovecot/lmtp".into()),
            ),
        ];
        for (text, want) in table {
            assert_eq!(NextHop::parse(text), Ok(want.clone()), "{text}");
            // Display writes a form that reads back the same.
            assert_eq!(NextHop::parse(&want.to_string()), Ok(want), "{text}");
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let table = [
            ("127.0.0.1:25", "unknown protocol"),
            ("[127.0.0.1]", "has no protocol"),
            ("uucp:[127.0.0.1]", "unknown protocol"),
            ("smtp:unix:/x", "only LMTP"),
            ("lmtp:unix:relative/path", "must be absolute"),
            ("smtp:[127.0.0.1", "without its ']'"),
            ("smtp:[127.0.0.1]:0", "is not a port"),
            ("smtp:[127.0.0.1]:99999", "is not a port"),
            ("smtp:[127.0.0.1]x", "unexpected"),
            ("smtp:", "is not a host name"),
            ("smtp:bad_name.example", "is not a host name"),
            ("smtp:[a..b]", "is not a host name"),
            ("smtp:192.0.2.1", "write it in brackets"),
            ("smtp:[IPv6:192.0.2.1]", "is not an IPv6 address"),
            ("smtp:[127.0.0.1]:+25", "is not a port"),
        ];
        for (text, want) in table {
            let err = NextHop::parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
