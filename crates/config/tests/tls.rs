//! `[tls]` from files on disk: the certificate and key are read and checked at load, and each
//! problem is an error at the line of the configuration that names the file.

// Test code: panics are the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use portcullis_config::{ClientPattern, Diagnostic, Severity, TlsVersion, load_str};

const HEAD: &str = "[server]\nhostname = \"mx.example.test\"\n[local]\nusers = [\"a\"]\n";

/// A fresh ECDSA certificate and key, PEM, for mx.example.test.
fn pair() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["mx.example.test".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// The errors of `tls` (the `[tls]` section, from line 5 of the file).
fn errors(tls: &str) -> Vec<(usize, String)> {
    let src = format!("{HEAD}{tls}");
    match load_str(&src, "p.toml") {
        Ok(loaded) => panic!("expected errors for {src:?}, got {:?}", loaded.config.tls),
        Err(diags) => diags
            .iter()
            .filter(|d: &&Diagnostic| d.severity == Severity::Error)
            .map(|d| (d.line, d.message.clone()))
            .collect(),
    }
}

fn assert_one(tls: &str, line: usize, fragment: &str) {
    let errs = errors(tls);
    assert_eq!(errs.len(), 1, "{tls}: {errs:#?}");
    assert_eq!(errs[0].0, line, "{tls}: {errs:?}");
    assert!(
        errs[0].1.contains(fragment),
        "{:?} !~ {fragment:?}",
        errs[0].1
    );
}

#[test]
fn a_matching_pair_loads() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pair();
    let cert = write(dir.path(), "c.pem", &cert);
    let key = write(dir.path(), "k.pem", &key);
    let src = format!(
        "{HEAD}[tls]\ncert = \"{cert}\"\nkey = \"{key}\"\nrequired_for = [\"192.0.2.0/24\", \
         \"Connect:198.51.100\", \"partner.example\"]\n[timeouts]\nstarttls = \"20s\"\n"
    );
    let config = load_str(&src, "p.toml").unwrap().config;
    let tls = config.tls.expect("[tls] with a certificate");
    assert_eq!(tls.cert.display().to_string(), cert);
    assert_eq!(tls.min_version, TlsVersion::V1_2);
    assert!(tls.request_client_cert);
    assert_eq!(tls.identity.certified.cert.len(), 1);
    assert_eq!(tls.required_for.len(), 3);
    assert!(matches!(&tls.required_for[2], ClientPattern::Domain(d) if d == "partner.example"));
    assert!(tls.required_for("198.51.100.20".parse().unwrap(), None));
    assert!(!tls.required_for("203.0.113.1".parse().unwrap(), None));
    assert_eq!(config.timeouts.starttls, Duration::from_secs(20));
}

#[test]
fn no_section_no_tls() {
    let config = load_str(HEAD, "p.toml").unwrap().config;
    assert!(config.tls.is_none());
    assert_eq!(config.timeouts.starttls, Duration::from_secs(60));
}

#[test]
fn each_problem_at_the_line_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pair();
    let (_, other_key) = pair();
    let cert = write(dir.path(), "c.pem", &cert);
    let key = write(dir.path(), "k.pem", &key);
    let other_key = write(dir.path(), "other.pem", &other_key);
    let text = write(dir.path(), "text.txt", "not a certificate\n");
    let missing = dir.path().join("missing.pem").display().to_string();
    let garbled = write(
        dir.path(),
        "garbled.pem",
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    );
    let both = |c: &str, k: &str| format!("[tls]\ncert = \"{c}\"\n\nkey = \"{k}\"\n");
    assert_one(&both(&missing, &key), 6, "`tls.cert`: cannot read");
    assert_one(&both(&text, &key), 6, "holds no PEM certificate");
    assert_one(&both(&garbled, &key), 6, "is not valid PEM");
    assert_one(&both(&cert, &missing), 8, "`tls.key`: cannot read");
    assert_one(&both(&cert, &text), 8, "holds no PEM private key");
    // A certificate given as the key file holds no key either.
    assert_one(&both(&cert, &cert), 8, "holds no PEM private key");
    assert_one(
        &both(&cert, &other_key),
        8,
        "does not match the certificate",
    );
    assert_one(
        &format!("[tls]\ncert = \"{cert}\"\n"),
        6,
        "`tls.cert` and `tls.key` go together",
    );
    assert_one(
        &format!("[tls]\nkey = \"{key}\"\n"),
        6,
        "`tls.cert` and `tls.key` go together",
    );
    assert_one(
        "[tls]\nrequired_for = [\"192.0.2.0/24\"]\n",
        6,
        "`tls.required_for` needs `tls.cert` and `tls.key`",
    );
    assert_one(
        &format!("{}min_version = \"1.1\"\n", both(&cert, &key)),
        9,
        "`tls.min_version` must be \"1.2\" or \"1.3\"",
    );
    assert_one(
        &format!(
            "{}required_for = [\n  \"ok.example\",\n  \"10.0.0.1/8\",\n]\n",
            both(&cert, &key)
        ),
        11,
        "has host bits set",
    );
}

#[test]
fn oversized_file_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.pem");
    let file = std::fs::File::create(&big).unwrap();
    file.set_len(portcullis_config::tls::MAX_PEM_BYTES + 1)
        .unwrap();
    let (_, key) = pair();
    let key = write(dir.path(), "k.pem", &key);
    assert_one(
        &format!("[tls]\ncert = \"{}\"\nkey = \"{key}\"\n", big.display()),
        6,
        "is larger than",
    );
}
