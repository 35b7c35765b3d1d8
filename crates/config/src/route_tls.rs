//! `[[route]] verify` and `ca_file`: how the relay client uses TLS towards a route's next hop.
//!
//! Role: read and check the PEM trust anchors `ca_file` names (each certificate must be
//! usable as a trust anchor, so a bad file is an error at its line, not a deferral at 3 a.m.),
//! and refuse settings that cannot mean anything (TLS on a Unix socket).
//! Must not: build TLS client configurations (the server does, at start and at reload, from
//! these certificates) or read any file but `ca_file`.
//! Invariants: a [`CaFile`] holds at least one certificate, each accepted as a trust anchor.

use std::path::PathBuf;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use toml::Spanned;

use crate::diagnostic::Report;
use crate::next_hop::NextHop;

/// Most certificates read from one `ca_file` (the system's store holds about 150).
pub const MAX_CA_CERTS: usize = 1000;

/// Most bytes read from one `ca_file`.
pub const MAX_CA_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// A route's TLS settings. The default: opportunistic STARTTLS, any certificate accepted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTls {
    /// `verify = true`: STARTTLS is required and the certificate must chain to the trust
    /// anchors and name the next hop; otherwise the recipients are deferred.
    pub verify: bool,
    /// `ca_file`: the trust anchors; None means the system's.
    pub ca_file: Option<CaFile>,
}

/// The trust anchors of one `ca_file`, read when the configuration is loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaFile {
    /// As written in the configuration.
    pub path: PathBuf,
    /// DER certificates, in file order; never empty.
    pub certs: Vec<CertificateDer<'static>>,
}

/// Reads `verify` and `ca_file` of the route to `hop`, reporting mistakes at their lines.
pub(crate) fn route_tls(
    hop: &NextHop,
    verify: Option<&Spanned<bool>>,
    ca_file: Option<&Spanned<String>>,
    report: &mut Report<'_>,
) -> RouteTls {
    if let NextHop::LmtpUnix(_) = hop {
        for span in [verify.map(Spanned::span), ca_file.map(Spanned::span)]
            .into_iter()
            .flatten()
        {
            report.error(
                Some(span),
                format!(
                    "`route.verify`/`route.ca_file`: {hop} is a Unix socket on this host; \
                     no TLS is spoken there, so there is nothing to verify"
                ),
            );
        }
        return RouteTls::default();
    }
    let ca = ca_file.and_then(|file| match read_ca_file(file.get_ref()) {
        Ok(ca) => Some(ca),
        Err(why) => {
            report.error(Some(file.span()), format!("`route.ca_file`: {why}"));
            None
        }
    });
    RouteTls {
        verify: verify.is_some_and(|v| *v.get_ref()),
        ca_file: ca,
    }
}

/// Reads a PEM bundle of CA certificates (other PEM sections, such as comments or keys,
/// are skipped; a certificate that is not one is an error).
pub(crate) fn read_ca_file(path: &str) -> Result<CaFile, String> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CA_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {path:?}: {e}"))?;
    if bytes.len() as u64 > MAX_CA_FILE_BYTES {
        return Err(format!(
            "{path:?} is larger than {MAX_CA_FILE_BYTES} bytes; is it a CA bundle?"
        ));
    }
    let mut certs = Vec::new();
    for (n, cert) in CertificateDer::pem_slice_iter(&bytes).enumerate() {
        let cert = cert.map_err(|e| format!("{path:?} is not valid PEM: {e}"))?;
        if certs.len() == MAX_CA_CERTS {
            return Err(format!(
                "{path:?} holds more than {MAX_CA_CERTS} certificates"
            ));
        }
        // The same check the TLS client makes when it builds its trust store.
        rustls::RootCertStore::empty()
            .add(cert.clone())
            .map_err(|e| {
                format!(
                    "certificate {} in {path:?} cannot be a trust anchor: {e}",
                    n + 1
                )
            })?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(format!(
            "{path:?} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(CaFile {
        path: PathBuf::from(path),
        certs,
    })
}
