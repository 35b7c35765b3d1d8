//! STARTTLS, the server side: the rustls configuration, the handshake and the stream.
//!
//! Role: build the rustls [`ServerConfig`] from `[tls]` once per configuration load (it lives
//! in the [`crate::state::Runtime`], so SIGHUP swaps it and sessions in flight keep theirs);
//! run the handshake on a connection whose session said `220 Ready to start TLS`
//! ([`accept`]); describe the result in Sendmail's terms ([`TlsInfo`]); and give the driver one
//! stream type that is plaintext or TLS ([`Stream`]).
//!
//! Client certificates: the server asks for one (unless `request_client_cert = false`) and
//! accepts whatever is presented, since an MX holds no CA list for its clients; the
//! handshake signature is still checked by rustls with the ring provider's algorithms, so a
//! client cannot claim a certificate it does not hold the key of. The log says `verify=NO`
//! (none presented), `verify=FAIL` (presented, not verified) or `verify=NOT` (not asked),
//! Sendmail's `${verify}` values.
//!
//! Must not: decide SMTP replies (the session does) or log (the driver does, from the result).
//! Invariants: TLS 1.2 and 1.3 only, on ring; at most one handshake per connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use portcullis_config::{TlsConfig, TlsVersion};
use portcullis_smtp::{TlsInfo, TlsVerify};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use rustls::{CipherSuite, DigitallySignedStruct, DistinguishedName, ProtocolVersion};
use rustls::{SignatureScheme, version};
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// What the driver needs to offer STARTTLS: the rustls configuration, built once per load.
#[derive(Clone, Debug)]
pub struct Tls {
    config: Arc<ServerConfig>,
    request_client_cert: bool,
}

impl Tls {
    /// The rustls configuration for `[tls]`. Fails only if the protocol versions cannot be
    /// had from the ring provider (never, for 1.2 and 1.3).
    pub fn new(tls: &TlsConfig) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&'static rustls::SupportedProtocolVersion] = match tls.min_version {
            TlsVersion::V1_2 => &[&version::TLS13, &version::TLS12],
            TlsVersion::V1_3 => &[&version::TLS13],
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| format!("TLS configuration: {e}"))?;
        let builder = if tls.request_client_cert {
            builder.with_client_cert_verifier(Arc::new(AnyClientCert::new(&provider)))
        } else {
            builder.with_no_client_auth()
        };
        let config = builder.with_cert_resolver(Arc::new(OneCert(tls.identity.certified.clone())));
        Ok(Self {
            config: Arc::new(config),
            request_client_cert: tls.request_client_cert,
        })
    }

    /// Runs the server side of the handshake on `io`.
    pub async fn accept<S>(&self, io: S) -> io::Result<(TlsStream<S>, TlsInfo)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = TlsAcceptor::from(self.config.clone()).accept(io).await?;
        let info = info(&stream, self.request_client_cert);
        Ok((stream, info))
    }
}

/// The negotiated session in Sendmail's terms.
fn info<S>(stream: &TlsStream<S>, asked: bool) -> TlsInfo {
    let conn = stream.get_ref().1;
    let version = match conn.protocol_version() {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "unknown",
    };
    let suite = conn.negotiated_cipher_suite().map(|s| s.suite());
    let cipher = suite.map_or("unknown", cipher_name);
    let presented = conn.peer_certificates().is_some_and(|c| !c.is_empty());
    let verify = match (asked, presented) {
        (false, _) => TlsVerify::Not,
        (true, false) => TlsVerify::No,
        (true, true) => TlsVerify::Fail,
    };
    TlsInfo {
        version,
        cipher,
        bits: cipher_bits(cipher),
        verify,
    }
}

/// The suite's IANA name (`TLS_AES_256_GCM_SHA384`; rustls spells the TLS 1.3 ones `TLS13_`).
fn cipher_name(suite: CipherSuite) -> &'static str {
    match suite {
        CipherSuite::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        CipherSuite::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        other => other.as_str().unwrap_or("unknown"),
    }
}

/// The symmetric key length of a suite, from its name (Sendmail's `${cipher_bits}`).
fn cipher_bits(name: &str) -> u16 {
    if name.contains("AES_128") {
        128
    } else if name.contains("AES_256") || name.contains("CHACHA20") {
        256
    } else {
        0
    }
}

/// The one certificate this server has, whatever name the client asks for (an MX is reached
/// by its MX host name; SNI is often absent).
#[derive(Debug)]
struct OneCert(Arc<CertifiedKey>);

impl ResolvesServerCert for OneCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Asks for a client certificate, never requires one, and accepts any (see the module
/// header); the handshake signatures are verified as usual.
#[derive(Debug)]
struct AnyClientCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AnyClientCert {
    fn new(provider: &CryptoProvider) -> Self {
        Self {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
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

/// A connection before or after STARTTLS. The TLS side is boxed: rustls' connection state
/// is large, and a plaintext session should not pay for it.
#[derive(Debug)]
pub enum Stream<S> {
    /// Before STARTTLS.
    Plain(S),
    /// After a successful handshake.
    Tls(Box<TlsStream<S>>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_bits_of_suites() {
        let table: &[(CipherSuite, &str, u16)] = &[
            (
                CipherSuite::TLS13_AES_256_GCM_SHA384,
                "TLS_AES_256_GCM_SHA384",
                256,
            ),
            (
                CipherSuite::TLS13_AES_128_GCM_SHA256,
                "TLS_AES_128_GCM_SHA256",
                128,
            ),
            (
                CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
                "TLS_CHACHA20_POLY1305_SHA256",
                256,
            ),
            (
                CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                128,
            ),
            (
                CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
                256,
            ),
        ];
        for &(suite, name, bits) in table {
            assert_eq!(cipher_name(suite), name);
            assert_eq!(cipher_bits(name), bits, "{name}");
        }
    }
}
