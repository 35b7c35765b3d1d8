//! TLS for the relay client: the rustls configurations per next hop, the handshake after
//! STARTTLS, and what the log says about it.
//!
//! Role: [`RelayTls`] is built once per configuration load (at start and at each reload,
//! with the runtime) from the `[[route]]` TLS settings: one opportunistic rustls client
//! configuration shared by every hop, one verifying configuration per route with
//! `verify = true`, and the trust anchors (the route's `ca_file`, else the system's) that
//! say `verify=OK` or `verify=FAIL` in the log for opportunistic sessions. [`handshake`] runs
//! the TLS handshake within a time limit and reports version, cipher and verification.
//!
//! Policy (docs/tls.md, "Relay client"): SMTP next hops get opportunistic STARTTLS (Postfix's `may`):
//! any certificate is accepted, but the handshake's signatures are still checked with the
//! ring provider's algorithms, so the session is encrypted with the key of whatever
//! certificate the server showed. `verify = true` makes STARTTLS required and the
//! certificate checked by rustls' WebPKI verifier during the handshake (chain to the anchors,
//! the MX host name, the bracketed name or the IP address). LMTP over TCP uses TLS only when
//! its route verifies (Postfix's `lmtp_tls_security_level` is empty by default); a Unix
//! socket never does.
//!
//! Must not: log (the caller turns a [`TlsReport`] into an event), read the clock except
//! through `crate::clock`, or fall back to plain text: a failed handshake fails the host.
//!
//! Invariant: no configuration is built per connection; a hop's settings are a few `Arc`s.
//! Memory: rustls bounds its own buffers (64 KiB of outgoing data; no more TLS is read while
//! decrypted input waits to be read) and its session cache (256 sessions per configuration).

use std::sync::Arc;
use std::time::Duration;

use portcullis_config::Routes;
use portcullis_config::next_hop::{NextHop, Protocol};
use portcullis_config::route_tls::RouteTls;
use portcullis_smtp::StartTls;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, ProtocolVersion, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Longest failure reason kept (a certificate can list many names).
const MAX_REASON: usize = 300;

/// A verifier, or why none could be built (no trust anchors).
type Checker = Result<Arc<WebPkiServerVerifier>, String>;

/// The TLS settings of every next hop, from one configuration load.
#[derive(Clone, Debug)]
pub struct RelayTls {
    /// Accepts any certificate (opportunistic sessions), or why it could not be built.
    any: Result<Arc<rustls::ClientConfig>, String>,
    /// The system's trust anchors, for the log's `verify=` of opportunistic sessions.
    system: Checker,
    /// The hops routes name with settings of their own (routes are few: a list).
    hops: Vec<(NextHop, HopTls)>,
}

/// How the relay client treats one next hop.
#[derive(Clone, Debug)]
pub struct HopTls {
    /// Whether the client sends STARTTLS.
    pub starttls: StartTls,
    /// The configuration for the handshake, or why none could be built.
    config: Result<Arc<rustls::ClientConfig>, String>,
    /// For opportunistic sessions: the anchors the log's `verify=` is judged by. None when
    /// rustls verifies during the handshake.
    check: Option<Checker>,
}

impl HopTls {
    /// No TLS (a Unix socket; LMTP by default).
    fn never() -> Self {
        Self {
            starttls: StartTls::Never,
            config: Err("no TLS towards this next hop".to_owned()),
            check: None,
        }
    }
}

impl RelayTls {
    /// The settings of `routes`, with the system's trust anchors read once (they are read
    /// again at the next reload).
    pub fn new(routes: &Routes) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let system = checker(
            &provider,
            Arc::new(native_roots()),
            "the system's trust store",
        );
        let any = client_config(&provider, Arc::new(AcceptAny::new(&provider)));
        let mut hops: Vec<(NextHop, HopTls)> = Vec::new();
        for route in routes.iter() {
            if hops.iter().any(|(h, _)| *h == route.next_hop) {
                continue; // The configuration makes routes through one hop agree.
            }
            let hop = hop_tls(&provider, &route.next_hop, &route.tls, &any, &system);
            hops.push((route.next_hop.clone(), hop));
        }
        Self { any, system, hops }
    }

    /// The settings for `hop`: its route's, else opportunistic with the system's anchors
    /// for the log (LMTP and Unix sockets: no TLS).
    pub fn for_hop(&self, hop: &NextHop) -> HopTls {
        if let Some((_, tls)) = self.hops.iter().find(|(h, _)| h == hop) {
            return tls.clone();
        }
        match hop {
            NextHop::Tcp {
                protocol: Protocol::Smtp,
                ..
            } => HopTls {
                starttls: StartTls::Opportunistic,
                config: self.any.clone(),
                check: Some(self.system.clone()),
            },
            _ => HopTls::never(),
        }
    }
}

/// The settings of one route's next hop.
fn hop_tls(
    provider: &Arc<CryptoProvider>,
    hop: &NextHop,
    tls: &RouteTls,
    any: &Result<Arc<rustls::ClientConfig>, String>,
    system: &Checker,
) -> HopTls {
    let lmtp = matches!(
        hop,
        NextHop::LmtpUnix(_)
            | NextHop::Tcp {
                protocol: Protocol::Lmtp,
                ..
            }
    );
    if matches!(hop, NextHop::LmtpUnix(_)) || (lmtp && !tls.verify) {
        return HopTls::never();
    }
    let check = match &tls.ca_file {
        Some(ca) => {
            // The configuration checked each certificate as a trust anchor already.
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(ca.certs.iter().cloned());
            checker(provider, Arc::new(roots), &ca.path.display().to_string())
        }
        None => system.clone(),
    };
    if !tls.verify {
        return HopTls {
            starttls: StartTls::Opportunistic,
            config: any.clone(),
            check: Some(check),
        };
    }
    HopTls {
        starttls: StartTls::Required,
        config: check.and_then(|verifier| client_config(provider, verifier)),
        check: None,
    }
}

/// A WebPKI verifier over `roots`; an empty store is an error naming `what`.
fn checker(provider: &Arc<CryptoProvider>, roots: Arc<RootCertStore>, what: &str) -> Checker {
    WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| format!("no trust anchors in {what}: {e}"))
}

/// The system's trust anchors (rustls-native-certs); unreadable ones are left out.
fn native_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    roots
}

/// A client configuration with `verifier`, TLS 1.2 and 1.3, no client certificate.
fn client_config(
    provider: &Arc<CryptoProvider>,
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?;
    Ok(Arc::new(
        builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    ))
}

/// Opportunistic TLS: any certificate is accepted (there is nothing to verify it against
/// that the next hop agreed to), but the handshake signatures are checked, so the keys are
/// those of the certificate shown.
#[derive(Debug)]
pub struct AcceptAny {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AcceptAny {
    /// Checks handshake signatures with `provider`'s algorithms.
    pub fn new(provider: &CryptoProvider) -> Self {
        Self {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// One candidate host of a next hop, as TLS sees it.
#[derive(Clone, Debug)]
pub struct TlsTarget {
    /// The hop's settings.
    pub hop: HopTls,
    /// The name sent as SNI and verified (an MX host name, a bracketed name), or the
    /// address (`[addr]` hops: no SNI, the certificate must name the address).
    pub name: ServerName<'static>,
    /// How the log's `relay=` names the host: the name, or `[address]`.
    pub relay: String,
}

impl TlsTarget {
    /// The target for a host called `name` (None for an address literal) at `ip`.
    pub fn new(hop: HopTls, name: Option<&str>, ip: std::net::IpAddr) -> Self {
        let dns = name.and_then(|n| ServerName::try_from(n.trim_end_matches('.').to_owned()).ok());
        let relay = name.map_or_else(|| format!("[{ip}]"), str::to_owned);
        Self {
            hop,
            name: dns.unwrap_or(ServerName::IpAddress(ip.into())),
            relay,
        }
    }
}

/// Whether the certificate was checked, as Sendmail's `${verify}` says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verify {
    /// It chains to the trust anchors and names the host.
    Ok,
    /// It does not (opportunistic sessions go on): why.
    Fail(String),
}

/// How STARTTLS went with one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsOutcome {
    /// Encrypted.
    Established {
        /// `TLSv1.3`, `TLSv1.2`.
        version: String,
        /// The IANA name: `TLS_AES_256_GCM_SHA384`.
        cipher: String,
        /// The cipher's key size.
        bits: u16,
        verify: Verify,
    },
    /// The host did not offer STARTTLS and the route requires it.
    NotOffered,
    /// The host answered STARTTLS with this reply.
    Refused(String),
    /// The handshake failed; `certificate`: because the certificate was not accepted.
    Failed { reason: String, certificate: bool },
}

/// What the log says about STARTTLS with one host of an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsReport {
    /// The host: its name, or `[address]`.
    pub relay: String,
    pub outcome: TlsOutcome,
}

/// What a successful handshake gives the driver.
pub type Handshake<S> = (TlsStream<S>, TlsOutcome);

/// The TLS handshake over `stream` towards `target`, within `limit`. The failure's text says
/// why (for the deferral and the log) and whether the certificate was the reason.
pub async fn handshake<S>(
    stream: S,
    target: &TlsTarget,
    limit: Duration,
) -> Result<Handshake<S>, TlsOutcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let failed = |reason: String, certificate: bool| TlsOutcome::Failed {
        reason,
        certificate,
    };
    let config = target.hop.config.clone().map_err(|why| failed(why, true))?;
    let connecting = TlsConnector::from(config).connect(target.name.clone(), stream);
    let tls = match tokio::time::timeout(limit, connecting).await {
        Err(_) => return Err(failed("timed out".to_owned(), false)),
        Ok(Err(e)) => {
            let certificate = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)));
            // The text may quote names from the peer's certificate: printable and bounded
            // before it reaches a log line or a DSN.
            let reason = portcullis_smtp::reply::printable(e.to_string().as_bytes(), MAX_REASON);
            return Err(failed(reason, certificate));
        }
        Ok(Ok(tls)) => tls,
    };
    let outcome = established(tls.get_ref().1, target);
    Ok((tls, outcome))
}

/// Version, cipher and verification of an established session.
fn established(conn: &rustls::ClientConnection, target: &TlsTarget) -> TlsOutcome {
    let version = match conn.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
        Some(v) => format!("{v:?}"),
        None => "unknown".to_owned(),
    };
    let suite = conn
        .negotiated_cipher_suite()
        .and_then(|s| s.suite().as_str())
        .unwrap_or("unknown");
    // rustls says TLS13_AES_256_GCM_SHA384; the IANA name (and OpenSSL's) has no "13".
    let cipher = suite.replacen("TLS13_", "TLS_", 1);
    let bits = if cipher.contains("AES_128") { 128 } else { 256 };
    let verify = match &target.hop.check {
        None => Verify::Ok, // rustls verified during the handshake.
        Some(check) => judge(check, conn.peer_certificates().unwrap_or_default(), target),
    };
    TlsOutcome::Established {
        version,
        cipher,
        bits,
        verify,
    }
}

/// The log's `verify=` for an opportunistic session: the same WebPKI check a verifying
/// route makes, after the fact, deciding nothing.
fn judge(check: &Checker, chain: &[CertificateDer<'static>], target: &TlsTarget) -> Verify {
    let verifier = match check {
        Ok(v) => v,
        Err(why) => return Verify::Fail(why.clone()),
    };
    let Some((end_entity, intermediates)) = chain.split_first() else {
        return Verify::Fail("no certificate".to_owned());
    };
    let secs = u64::try_from(crate::clock::unix_secs()).unwrap_or(0);
    let now = UnixTime::since_unix_epoch(Duration::from_secs(secs));
    match verifier.verify_server_cert(end_entity, intermediates, &target.name, &[], now) {
        Ok(_) => Verify::Ok,
        Err(e) => Verify::Fail(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(text: &str) -> Routes {
        portcullis_config::load_str(
            &format!(
                "{text}\n[server]\nhostname = \"mx.example.test\"\n[local]\nusers = [\"a\"]\n"
            ),
            "t.toml",
        )
        .map(|l| l.config.routes)
        .unwrap_or_else(|d| panic!("{d:?}"))
    }

    fn hop(text: &str) -> NextHop {
        NextHop::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn each_hop_gets_its_policy() {
        let tls = RelayTls::new(&routes(
            "[[route]]\ndomain = \"a.test\"\nnext_hop = \"smtp:[192.0.2.1]\"\nverify = true\n\
             [[route]]\ndomain = \"b.test\"\nnext_hop = \"lmtp:[192.0.2.2]\"\n\
             [[route]]\ndomain = \"c.test\"\nnext_hop = \"lmtp:[192.0.2.3]\"\nverify = true\n\
             [[route]]\ndomain = \"d.test\"\nnext_hop = \"lmtp:unix:/run/lmtp\"\n",
        ));
        let mode = |h: &str| tls.for_hop(&hop(h)).starttls;
        assert_eq!(mode("smtp:[192.0.2.1]"), StartTls::Required);
        assert_eq!(mode("lmtp:[192.0.2.2]"), StartTls::Never);
        assert_eq!(mode("lmtp:[192.0.2.3]"), StartTls::Required);
        assert_eq!(mode("lmtp:unix:/run/lmtp"), StartTls::Never);
        // Not routed: an MX or an address literal, opportunistic.
        assert_eq!(mode("smtp:example.org"), StartTls::Opportunistic);
        assert_eq!(mode("smtp:[192.0.2.9]"), StartTls::Opportunistic);
        // Verifying hops check in the handshake, opportunistic ones after it.
        assert!(tls.for_hop(&hop("smtp:[192.0.2.1]")).check.is_none());
        assert!(tls.for_hop(&hop("smtp:example.org")).check.is_some());
    }

    #[test]
    fn targets_name_what_the_certificate_must_name() {
        let ip: std::net::IpAddr = "192.0.2.7".parse().unwrap_or_else(|e| panic!("{e}"));
        // An MX host or a bracketed name: SNI and verification use the name.
        let t = TlsTarget::new(HopTls::never(), Some("mx1.example.org."), ip);
        let want = ServerName::try_from("mx1.example.org").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.name, want);
        assert_eq!(t.relay, "mx1.example.org.");
        // An address literal: no SNI, the certificate must name the address.
        let t = TlsTarget::new(HopTls::never(), None, ip);
        assert_eq!(t.name, ServerName::IpAddress(ip.into()));
        assert_eq!(t.relay, "[192.0.2.7]");
    }
}
