//! `[tls]`: the server's certificate and key for STARTTLS, and the clients that must use it.
//!
//! Role: read the PEM files the section names and check them at load time (readable, PEM,
//! at least one certificate, one private key, the key matching the first certificate), so a
//! bad pair is an error at the `tls.cert` / `tls.key` line of the configuration, at
//! `check-config`, at start and at SIGHUP (where the old pair then stays). The checked pair is
//! kept as a rustls [`CertifiedKey`]: the server builds its TLS configuration from it without
//! reading the files again. Also parses `required_for` (client networks and names).
//!
//! Sendmail equivalents: `confSERVER_CERT`, `confSERVER_KEY`, `confTLS_SRV_OPTIONS` (`V`: do not
//! ask for a client certificate), `confTO_STARTTLS` (`[timeouts] starttls`); `required_for` is
//! what Sendmail writes as `TLS_Clt:` entries in the access map and Postfix as
//! `smtpd_tls_security_level = encrypt` for some clients.
//!
//! Must not: build the server's TLS configuration or touch sockets (the server does).
//! Invariants: a `TlsConfig` exists only with a matching pair; each file read is at most
//! [`MAX_PEM_BYTES`].

use std::fmt;
use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use toml::Spanned;

use crate::diagnostic::Report;
use crate::names::normalize_domain;
use crate::raw::RawTls;

/// The largest certificate or key file read (a chain of a few certificates is a few KiB).
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// `[tls]`, present when a certificate is configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// `tls.cert`, as written.
    pub cert: PathBuf,
    /// `tls.key`, as written.
    pub key: PathBuf,
    /// The certificate chain and key, checked to match.
    pub identity: TlsIdentity,
    /// The lowest protocol version accepted.
    pub min_version: TlsVersion,
    /// Ask clients for a certificate (accepted whatever it is; logged as `verify=FAIL`
    /// when one is presented, `verify=NO` when not). False: `verify=NOT`.
    pub request_client_cert: bool,
    /// Clients whose MAIL is refused before STARTTLS.
    pub required_for: Vec<ClientPattern>,
}

impl TlsConfig {
    /// True when the client at `addr`, named `name` (verified), must use TLS before MAIL.
    pub fn required_for(&self, addr: IpAddr, name: Option<&str>) -> bool {
        self.required_for.iter().any(|p| p.matches(addr, name))
    }
}

/// A certificate chain with its private key, as rustls serves it. Compared by the files'
/// contents (the DER of the chain), so a reload with the same files is an equal config.
#[derive(Clone)]
pub struct TlsIdentity {
    pub certified: Arc<CertifiedKey>,
}

impl PartialEq for TlsIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.certified.cert == other.certified.cert
    }
}

impl Eq for TlsIdentity {}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key; the chain's length says enough.
        f.debug_struct("TlsIdentity")
            .field("certificates", &self.certified.cert.len())
            .finish_non_exhaustive()
    }
}

/// `tls.min_version`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    V1_2,
    /// TLS 1.3 only.
    V1_3,
}

/// One entry of `tls.required_for`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientPattern {
    /// Clients in this network (`192.0.2.0/24`, `2001:db8::/32`, `192.0.2.7`, or the access
    /// map's octet prefix `192.0.2`).
    Network(IpNet),
    /// Clients whose verified host name is this domain or below it (`example.net` matches
    /// `mx.example.net`, as an access-map `Connect:example.net` key does).
    Domain(String),
}

impl ClientPattern {
    /// Does the client at `addr` with verified name `name` match?
    pub fn matches(&self, addr: IpAddr, name: Option<&str>) -> bool {
        match self {
            Self::Network(net) => {
                let addr = match addr {
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
                    v4 => v4,
                };
                net.contains(&addr)
            }
            Self::Domain(domain) => name.is_some_and(|n| {
                let n = n.strip_suffix('.').unwrap_or(n).to_ascii_lowercase();
                n == *domain
                    || n.strip_suffix(domain.as_str())
                        .is_some_and(|head| head.ends_with('.'))
            }),
        }
    }

    /// Parses an entry: an optional `Connect:` tag (access-map style), then an address, a
    /// network, an octet prefix of an IPv4 address, an `IPv6:` address, or a host name.
    fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let t = match t.get(..8) {
            Some(tag) if tag.eq_ignore_ascii_case("connect:") => &t[8..],
            _ => t,
        };
        let t = match t.get(..5) {
            Some(tag) if tag.eq_ignore_ascii_case("ipv6:") => &t[5..],
            _ => t,
        };
        if let Ok(addr) = t.parse::<IpAddr>() {
            return Ok(Self::Network(IpNet::from(addr)));
        }
        if let Ok(net) = t.parse::<IpNet>() {
            if net.trunc() != net {
                return Err(format!(
                    "{text:?} has host bits set below the prefix; did you mean {}?",
                    net.trunc()
                ));
            }
            return Ok(Self::Network(net));
        }
        if let Some(net) = octet_prefix(t) {
            return Ok(Self::Network(net));
        }
        if t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            // No top-level domain is numeric: this was meant as an address.
            return Err(format!(
                "{text:?} is not an IPv4 address, network or octet prefix"
            ));
        }
        normalize_domain(t)
            .map(Self::Domain)
            .map_err(|why| format!("{text:?} is not an address, a network or a host name: {why}"))
    }
}

/// `192.0.2` → 192.0.2.0/24, `10` → 10.0.0.0/8: the access map's IPv4 prefixes.
fn octet_prefix(text: &str) -> Option<IpNet> {
    let octets: Vec<&str> = text.split('.').collect();
    if !(1..=3).contains(&octets.len()) {
        return None;
    }
    let mut bytes = [0u8; 4];
    for (slot, octet) in bytes.iter_mut().zip(&octets) {
        if octet.is_empty() || !octet.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *slot = octet.parse().ok()?;
    }
    let prefix = u8::try_from(octets.len() * 8).ok()?;
    IpNet::new(IpAddr::V4(Ipv4Addr::from(bytes)), prefix).ok()
}

/// `[tls]` → `Some(TlsConfig)` when a certificate is configured.
pub(crate) fn tls(raw: &RawTls, report: &mut Report<'_>) -> Option<TlsConfig> {
    let min_version = min_version(raw, report);
    let required_for = required_for(raw, report);
    let (cert, key) = match (&raw.cert, &raw.key) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) => {
            if let Some(list) = raw
                .required_for
                .as_ref()
                .filter(|_| !required_for.is_empty())
            {
                report.error(
                    Some(list.span()),
                    "`tls.required_for` needs `tls.cert` and `tls.key`: without a certificate \
                     STARTTLS is not offered, and these clients could never send mail"
                        .to_owned(),
                );
            }
            return None;
        }
        (Some(one), None) | (None, Some(one)) => {
            report.error(
                Some(one.span()),
                "`tls.cert` and `tls.key` go together: give both, or neither".to_owned(),
            );
            return None;
        }
    };
    let identity = identity(cert, key, report)?;
    Some(TlsConfig {
        cert: PathBuf::from(cert.get_ref()),
        key: PathBuf::from(key.get_ref()),
        identity,
        min_version,
        request_client_cert: raw
            .request_client_cert
            .as_ref()
            .is_none_or(|v| *v.get_ref()),
        required_for,
    })
}

fn min_version(raw: &RawTls, report: &mut Report<'_>) -> TlsVersion {
    let Some(v) = &raw.min_version else {
        return TlsVersion::default();
    };
    match v.get_ref().as_str() {
        "1.2" => TlsVersion::V1_2,
        "1.3" => TlsVersion::V1_3,
        other => {
            report.error(
                Some(v.span()),
                format!("`tls.min_version` must be \"1.2\" or \"1.3\", not {other:?}"),
            );
            TlsVersion::default()
        }
    }
}

fn required_for(raw: &RawTls, report: &mut Report<'_>) -> Vec<ClientPattern> {
    let mut out = Vec::new();
    for item in raw.required_for.iter().flat_map(|l| l.get_ref()) {
        match ClientPattern::parse(item.get_ref()) {
            Ok(p) if out.contains(&p) => {}
            Ok(p) => out.push(p),
            Err(why) => report.error(Some(item.span()), format!("`tls.required_for`: {why}")),
        }
    }
    out
}

/// Reads and checks the pair; every problem is an error at the line naming the file.
fn identity(
    cert: &Spanned<String>,
    key: &Spanned<String>,
    report: &mut Report<'_>,
) -> Option<TlsIdentity> {
    let chain = read_pem(cert, "tls.cert", report).and_then(|pem| {
        let chain: Result<Vec<CertificateDer<'static>>, _> =
            CertificateDer::pem_slice_iter(&pem).collect();
        match chain {
            Ok(chain) if !chain.is_empty() => Some(chain),
            Ok(_) => {
                report.error(
                    Some(cert.span()),
                    format!(
                        "`tls.cert`: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                        cert.get_ref()
                    ),
                );
                None
            }
            Err(e) => {
                report.error(
                    Some(cert.span()),
                    format!("`tls.cert`: {} is not valid PEM: {e}", cert.get_ref()),
                );
                None
            }
        }
    });
    let private = read_pem(key, "tls.key", report).and_then(|pem| {
        match PrivateKeyDer::from_pem_slice(&pem) {
            Ok(k) => Some(k),
            Err(e) => {
                report.error(
                    Some(key.span()),
                    format!(
                        "`tls.key`: {} holds no PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC): {e}",
                        key.get_ref()
                    ),
                );
                None
            }
        }
    });
    let (chain, private) = (chain?, private?);
    let provider = rustls::crypto::ring::default_provider();
    match CertifiedKey::from_der(chain, private, &provider) {
        Ok(certified) => Some(TlsIdentity {
            certified: Arc::new(certified),
        }),
        Err(e) => {
            let why = match e {
                rustls::Error::InconsistentKeys(_) => format!(
                    "the key in {} does not match the certificate in {}",
                    key.get_ref(),
                    cert.get_ref()
                ),
                other => format!("{}: unusable key: {other}", key.get_ref()),
            };
            report.error(Some(key.span()), format!("`tls.key`: {why}"));
            None
        }
    }
}

/// The file `value` names, at most [`MAX_PEM_BYTES`]; an error at its line otherwise.
fn read_pem(value: &Spanned<String>, name: &str, report: &mut Report<'_>) -> Option<Vec<u8>> {
    let path = Path::new(value.get_ref());
    let read = std::fs::File::open(path).and_then(|f| {
        let mut buf = Vec::new();
        f.take(MAX_PEM_BYTES + 1).read_to_end(&mut buf).map(|_| buf)
    });
    match read {
        Ok(buf) if buf.len() as u64 > MAX_PEM_BYTES => {
            report.error(
                Some(value.span()),
                format!(
                    "`{name}`: {} is larger than {MAX_PEM_BYTES} bytes; not a PEM file?",
                    path.display()
                ),
            );
            None
        }
        Ok(buf) => Some(buf),
        Err(e) => {
            report.error(
                Some(value.span()),
                format!("`{name}`: cannot read {}: {e}", path.display()),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse_and_match() {
        let p = |t: &str| ClientPattern::parse(t).unwrap();
        let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
        let table: &[(&str, &str, Option<&str>, bool)] = &[
            ("192.0.2.0/24", "192.0.2.9", None, true),
            ("192.0.2.0/24", "192.0.3.9", None, false),
            ("192.0.2.7", "192.0.2.7", None, true),
            ("192.0.2.7", "::ffff:192.0.2.7", None, true),
            ("Connect:192.0.2", "192.0.2.200", None, true),
            ("connect:10", "10.1.2.3", None, true),
            ("10", "11.1.2.3", None, false),
            ("IPv6:2001:db8::/32", "2001:db8::1", None, true),
            ("2001:db8::1", "2001:db8::2", None, false),
            ("example.net", "192.0.2.1", Some("mx.Example.NET."), true),
            ("example.net", "192.0.2.1", Some("example.net"), true),
            ("example.net", "192.0.2.1", Some("badexample.net"), false),
            ("example.net", "192.0.2.1", None, false),
        ];
        for &(pattern, addr, name, want) in table {
            assert_eq!(
                p(pattern).matches(v4(addr), name),
                want,
                "{pattern} ~ {addr} {name:?}"
            );
        }
        assert!(ClientPattern::parse("192.0.2.1/24").is_err());
        assert!(ClientPattern::parse("bad name").is_err());
        assert!(ClientPattern::parse("1.2.3.4.5").is_err());
        assert!(ClientPattern::parse("192.0.2.300").is_err());
    }
}
