//! Test certificates made at test time, and a TLS client configuration for them.
//!
//! ECDSA keys come from rcgen (ring); ring cannot generate RSA keys, so an RSA key is made by
//! `openssl genpkey` and rcgen signs the certificate with it. Every certificate is
//! self-signed for `mx.example.test` with the serial and common name given, so a test can
//! tell which one a server presented.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use portcullis::relay_tls::AcceptAny;
use rcgen::{CertificateParams, DnType, KeyPair, SerialNumber};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

/// A certificate and its key, PEM and DER.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
}

impl Pair {
    /// Writes `<stem>.crt` and `<stem>.key` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }

    /// The certificate as rustls sees it.
    pub fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from(self.cert_der.clone())
    }

    /// The key as rustls takes it (for a client certificate).
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        use rustls::pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key PEM")
    }
}

fn sign(key: KeyPair, common_name: &str, serial: u64) -> Pair {
    let mut params = CertificateParams::new(vec!["mx.example.test".to_owned()]).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.serial_number = Some(SerialNumber::from(serial));
    let cert = params.self_signed(&key).expect("self-sign");
    Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().to_vec(),
    }
}

/// An ECDSA P-256 certificate.
pub fn ecdsa(common_name: &str, serial: u64) -> Pair {
    sign(KeyPair::generate().expect("ECDSA key"), common_name, serial)
}

/// An RSA 2048 certificate (the key from `openssl genpkey`).
pub fn rsa(common_name: &str, serial: u64) -> Pair {
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("run openssl genpkey (scripts/test.sh installs openssl)");
    assert!(out.status.success(), "openssl genpkey failed: {out:?}");
    let pem = String::from_utf8(out.stdout).expect("PEM is text");
    sign(
        KeyPair::from_pem(&pem).expect("RSA key"),
        common_name,
        serial,
    )
}

/// A client configuration trusting exactly `pair`'s certificate.
pub fn client_trusting(pair: &Pair) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    roots.add(pair.der()).expect("trust anchor");
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A client configuration that accepts any server certificate (a test then looks at which
/// one it got), offering `versions`, with an optional client certificate.
pub fn client_any(
    versions: &[&'static rustls::SupportedProtocolVersion],
    client_cert: Option<&Pair>,
) -> ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny::new(&provider)));
    match client_cert {
        Some(pair) => builder
            .with_client_auth_cert(vec![pair.der()], pair.private_key())
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    }
}

/// The name clients ask for.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from("mx.example.test").expect("name")
}
