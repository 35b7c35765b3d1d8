// These tests drive a real `portcullis serve` process over real loopback sockets, with an
// independently written next hop (Python's aiosmtpd, offering STARTTLS with certificates
// rcgen makes at test time) behind it.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

//! STARTTLS on the relay client (issue 8): a relay through a TLS-offering next hop goes
//! encrypted; one without STARTTLS still gets the mail in plain text; `verify = true` with
//! the right `ca_file` and name delivers (address, bracketed name, MX host name), and with a
//! wrong name, an unknown issuer or no STARTTLS at all defers and never sends in plain text;
//! a next hop whose handshake breaks defers, and is not retried in plain text.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::peer::{Peer, stored};
use support::{Server, Smtp, dot_stuff, wait_until};

const WAIT: Duration = Duration::from_secs(20);

/// A CA and the PEM files of certificates it signs, in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Portcullis test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let pki = Self {
            dir: tempfile::tempdir().unwrap(),
            ca,
        };
        std::fs::write(pki.ca_file(), pki.ca.pem()).unwrap();
        pki
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A certificate for `names` (DNS names or IP addresses) signed by the CA: (cert, key).
    fn leaf(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        self.write(file, &cert.pem(), &key.serialize_pem())
    }

    /// A self-signed certificate for `names`, which no CA vouches for: (cert, key).
    fn self_signed(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        let cert = params.self_signed(&key).unwrap();
        self.write(file, &cert.pem(), &key.serialize_pem())
    }

    fn write(&self, file: &str, cert: &str, key: &str) -> (PathBuf, PathBuf) {
        let cert_path = self.dir.path().join(format!("{file}.crt"));
        let key_path = self.dir.path().join(format!("{file}.key"));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        (cert_path, key_path)
    }
}

/// `[relay]` for example.net, fast retries, and `routes` (TOML `[[route]]` tables).
fn config(routes: &str) -> String {
    format!(
        "[relay]\ndomains = [\"example.net\", \"example.com\"]\n\
         [queue]\nretry_min = \"1s\"\nretry_max = \"2s\"\n{routes}"
    )
}

/// A `[[route]]` for `domain` to `hop`, with `extra` lines.
fn route(domain: &str, hop: &str, extra: &str) -> String {
    format!("[[route]]\ndomain = \"{domain}\"\nnext_hop = \"{hop}\"\n{extra}")
}

/// `verify = true` with the PKI's CA as the trust anchors.
fn verify_with(pki: &Pki) -> String {
    format!("verify = true\nca_file = \"{}\"\n", pki.ca_file().display())
}

/// Sends one message from alice@example.org to `rcpt`, which must be accepted.
fn send(server: &Server, rcpt: &str) {
    let mut c = Smtp::connect(server.addr());
    c.greet_ehlo("client.example.org");
    assert_eq!(c.cmd("MAIL FROM:<alice@example.org>").0, 250);
    let (code, text) = c.cmd(&format!("RCPT TO:<{rcpt}>"));
    assert_eq!(code, 250, "{rcpt}: {text}");
    assert_eq!(c.cmd("DATA").0, 354);
    c.send_raw(&dot_stuff(
        "From: alice@example.org\r\nSubject: tls\r\n\r\nsecret body\r\n",
    ));
    assert_eq!(c.read_reply().0, 250);
    assert_eq!(c.cmd("QUIT").0, 221);
}

/// The first log line holding all of `parts`, waited for.
fn wait_line(server: &Server, parts: &[&str]) -> Option<String> {
    let find = || {
        server
            .log()
            .lines()
            .find(|l| parts.iter().all(|p| l.contains(p)))
            .map(str::to_owned)
    };
    wait_until(WAIT, || find().is_some());
    find()
}

/// The `.tls` notes of the peer (one per message that came over TLS).
fn tls_notes(dir: &Path) -> Vec<String> {
    let mut notes: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tls"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    notes.sort();
    notes
}

#[test]
fn a_relay_through_a_tls_offering_next_hop_goes_encrypted() {
    let pki = Pki::new();
    let (cert, key) = pki.self_signed("peer", &["localhost"]);
    let peer_dir = tempfile::tempdir().unwrap();
    let peer = Peer::start_tls("smtp", peer_dir.path(), &cert, &key);
    let hop = format!("smtp:[127.0.0.1]:{}", peer.port);
    let server = Server::start(&config(&route("example.net", &hop, "")));
    send(&server, "bob@example.net");
    assert!(
        wait_until(WAIT, || stored(peer_dir.path()).len() == 1),
        "{}",
        server.log()
    );
    assert!(stored(peer_dir.path())[0].contains("secret body"));
    // The peer saw the message over TLS 1.3, with no SNI (an address literal has no name).
    let notes = tls_notes(peer_dir.path());
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].starts_with("TLSv1.3 TLS_"), "{notes:?}");
    assert!(notes[0].ends_with("sni=-\n"), "{notes:?}");
    // Sendmail's client line; the self-signed certificate is accepted (opportunistic) but
    // does not verify against the system's anchors.
    let line = wait_line(
        &server,
        &["STARTTLS=client, relay=[127.0.0.1], version=TLSv1.3"],
    )
    .unwrap_or_else(|| panic!("no STARTTLS line:\n{}", server.log()));
    assert!(line.contains(", verify=FAIL, cipher=TLS_"), "{line}");
    assert!(
        line.contains(", bits=256/256") || line.contains(", bits=128/128"),
        "{line}"
    );
    assert!(
        wait_line(
            &server,
            &["to=<bob@example.net>", "relay=[127.0.0.1]", "stat=Sent"]
        )
        .is_some(),
        "{}",
        server.log()
    );
}

#[test]
fn a_next_hop_without_starttls_still_gets_the_mail_in_plain_text() {
    let peer_dir = tempfile::tempdir().unwrap();
    let peer = Peer::start("smtp", peer_dir.path());
    let hop = format!("smtp:[127.0.0.1]:{}", peer.port);
    let server = Server::start(&config(&route("example.net", &hop, "")));
    send(&server, "bob@example.net");
    assert!(
        wait_line(&server, &["to=<bob@example.net>", "stat=Sent"]).is_some(),
        "{}",
        server.log()
    );
    assert_eq!(stored(peer_dir.path()).len(), 1);
    assert!(tls_notes(peer_dir.path()).is_empty());
    assert!(
        !server.log().contains("STARTTLS=client"),
        "{}",
        server.log()
    );
}

#[test]
fn verify_with_the_right_ca_and_name_delivers() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("peer", &["localhost", "127.0.0.1"]);
    let peer_dir = tempfile::tempdir().unwrap();
    let peer = Peer::start_tls("smtp", peer_dir.path(), &cert, &key);
    // One hop by address (the certificate's IP address), one by name (its DNS name, sent
    // as SNI); [localhost] may also resolve to ::1, where nothing listens: the next address.
    let routes = route(
        "example.net",
        &format!("smtp:[127.0.0.1]:{}", peer.port),
        &verify_with(&pki),
    ) + &route(
        "example.com",
        &format!("smtp:[localhost]:{}", peer.port),
        &verify_with(&pki),
    );
    let server = Server::start(&config(&routes));
    send(&server, "bob@example.net");
    send(&server, "carol@example.com");
    assert!(
        wait_until(WAIT, || stored(peer_dir.path()).len() == 2),
        "{}",
        server.log()
    );
    let notes = tls_notes(peer_dir.path());
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes.iter().any(|n| n.ends_with("sni=-\n")), "{notes:?}");
    assert!(
        notes.iter().any(|n| n.ends_with("sni=localhost\n")),
        "{notes:?}"
    );
    for relay in ["[127.0.0.1]", "localhost"] {
        let line = wait_line(&server, &[&format!("STARTTLS=client, relay={relay}, ")])
            .unwrap_or_else(|| panic!("{relay}:\n{}", server.log()));
        assert!(line.contains(", verify=OK, "), "{line}");
    }
    assert!(wait_line(&server, &["to=<carol@example.com>", "stat=Sent"]).is_some());
}

#[test]
fn verify_checks_the_mx_host_name() {
    let (_rt, dns) = fake_dns();
    let pki = Pki::new();
    let (cert, key) = pki.leaf("mx", &["mx.example.net"]);
    let peer_dir = tempfile::tempdir().unwrap();
    let peer = Peer::start_tls("smtp", peer_dir.path(), &cert, &key);
    dns.mx("example.net", 10, "mx.example.net");
    dns.a("mx.example.net", std::net::Ipv4Addr::LOCALHOST);
    let routes = route(
        "example.net",
        &format!("smtp:example.net:{}", peer.port),
        &verify_with(&pki),
    );
    let server = Server::start(&format!(
        "[dns]\nservers = [\"{}\"]\n{}",
        dns.addr(),
        config(&routes)
    ));
    send(&server, "bob@example.net");
    assert!(
        wait_until(WAIT, || stored(peer_dir.path()).len() == 1),
        "{}",
        server.log()
    );
    assert_eq!(tls_notes(peer_dir.path()).len(), 1);
    assert!(tls_notes(peer_dir.path())[0].ends_with("sni=mx.example.net\n"));
    let line = wait_line(&server, &["STARTTLS=client, relay=mx.example.net, "]).unwrap();
    assert!(line.contains("verify=OK"), "{line}");
    drop(dns);
}

/// Mail to bob@example.net through a `verify = true` route to a peer with `cert`: it is
/// deferred with a reason containing `why`, and the peer gets nothing.
fn assert_deferred_unverified(pki: &Pki, cert: (PathBuf, PathBuf), why: &str) {
    let peer_dir = tempfile::tempdir().unwrap();
    let peer = Peer::start_tls("smtp", peer_dir.path(), &cert.0, &cert.1);
    let hop = format!("smtp:[127.0.0.1]:{}", peer.port);
    let server = Server::start(&config(&route("example.net", &hop, &verify_with(pki))));
    send(&server, "bob@example.net");
    let line = wait_line(&server, &["to=<bob@example.net>", "stat=Deferred"])
        .unwrap_or_else(|| panic!("not deferred:\n{}", server.log()));
    assert!(line.contains("dsn=4.7.5"), "{line}");
    assert!(
        line.contains("TLS handshake failed: invalid peer certificate"),
        "{line}"
    );
    assert!(line.contains(why), "{line}");
    let tls = wait_line(
        &server,
        &["STARTTLS=client, relay=[127.0.0.1], verify=FAIL, error"],
    );
    assert!(tls.is_some(), "{}", server.log());
    // Retried (1 s) and deferred again, never delivered in plain text.
    assert!(
        server.wait_log_count("to=<bob@example.net>", 2, WAIT),
        "{}",
        server.log()
    );
    assert!(stored(peer_dir.path()).is_empty());
    assert!(!server.log().contains("stat=Sent"), "{}", server.log());
}

#[test]
fn verify_with_a_wrong_name_defers_and_never_sends_in_plain_text() {
    let pki = Pki::new();
    let cert = pki.leaf("wrong", &["mx.example.net"]);
    assert_deferred_unverified(&pki, cert, "not valid for name");
}

#[test]
fn verify_with_an_issuer_not_in_ca_file_defers() {
    let pki = Pki::new();
    let cert = pki.self_signed("stranger", &["127.0.0.1"]);
    assert_deferred_unverified(&pki, cert, "UnknownIssuer");
}

#[test]
fn verify_when_the_next_hop_does_not_offer_starttls_defers() {
    let pki = Pki::new();
    let peer_dir = tempfile::tempdir().unwrap();
    let peer = Peer::start("smtp", peer_dir.path());
    let hop = format!("smtp:[127.0.0.1]:{}", peer.port);
    let server = Server::start(&config(&route("example.net", &hop, &verify_with(&pki))));
    send(&server, "bob@example.net");
    let line = wait_line(&server, &["to=<bob@example.net>", "stat=Deferred"])
        .unwrap_or_else(|| panic!("not deferred:\n{}", server.log()));
    assert!(
        line.contains(
            "dsn=4.7.4, stat=Deferred: TLS is required, but was not offered by [127.0.0.1]"
        ),
        "{line}"
    );
    assert!(
        wait_line(
            &server,
            &["STARTTLS=client, relay=[127.0.0.1], verify=NONE, error: TLS is required"]
        )
        .is_some(),
        "{}",
        server.log()
    );
    assert!(stored(peer_dir.path()).is_empty());
}

/// A next hop that offers STARTTLS, says 220 to it, then answers the TLS ClientHello with
/// plain text and closes, on `ip`:`port` (0: any free port). Records every command line it
/// read.
fn broken_tls_hop(ip: &str, port: u16) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind((ip, port)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(20) {
            let Ok(mut conn) = conn else { continue };
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let _ = conn.write_all(b"220 broken.example ESMTP\r\n");
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                log.lock().unwrap().push(line.trim_end().to_owned());
                let verb = line.to_ascii_uppercase();
                if verb.starts_with("EHLO") {
                    let _ = conn.write_all(b"250-broken.example\r\n250 STARTTLS\r\n");
                } else if verb.starts_with("STARTTLS") {
                    let _ = conn.write_all(b"220 2.0.0 go ahead\r\n");
                    // Wait for the ClientHello, then answer in plain text.
                    let mut hello = [0u8; 5];
                    let _ = reader.read_exact(&mut hello);
                    let _ = conn.write_all(b"500 this is not TLS\r\n");
                    break;
                } else {
                    let _ = conn.write_all(b"250 ok\r\n");
                }
                line.clear();
            }
        }
    });
    (port, seen)
}

#[test]
fn a_failed_handshake_defers_and_is_not_retried_in_plain_text() {
    let (port, seen) = broken_tls_hop("127.0.0.1", 0);
    let hop = format!("smtp:[127.0.0.1]:{port}");
    let server = Server::start(&config(&route("example.net", &hop, "")));
    send(&server, "bob@example.net");
    let line = wait_line(&server, &["to=<bob@example.net>", "stat=Deferred"])
        .unwrap_or_else(|| panic!("not deferred:\n{}", server.log()));
    assert!(
        line.contains("dsn=4.7.5, stat=Deferred: [127.0.0.1]: TLS handshake failed: "),
        "{line}"
    );
    let tls = wait_line(
        &server,
        &["STARTTLS=client, relay=[127.0.0.1], verify=SOFTWARE, error: handshake failed: "],
    );
    assert!(tls.is_some(), "{}", server.log());
    // A second attempt (1 s later) does the same; no attempt ever says MAIL in plain text.
    assert!(
        server.wait_log_count("to=<bob@example.net>", 2, WAIT),
        "{}",
        server.log()
    );
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().filter(|l| *l == "STARTTLS").count() >= 2,
        "{seen:?}"
    );
    assert!(!seen.iter().any(|l| l.starts_with("MAIL")), "{seen:?}");
}

#[test]
fn a_failed_handshake_moves_on_to_the_next_mx_host() {
    let (_rt, dns) = fake_dns();
    let pki = Pki::new();
    let (cert, key) = pki.self_signed("mx2", &["mx2.example.net"]);
    let peer_dir = tempfile::tempdir().unwrap();
    let peer = Peer::start_tls("smtp", peer_dir.path(), &cert, &key);
    // The preferred MX host breaks the handshake; the next one takes the mail over TLS.
    let (_, seen) = broken_tls_hop("127.0.0.2", peer.port);
    dns.mx("example.net", 10, "mx1.example.net");
    dns.mx("example.net", 20, "mx2.example.net");
    dns.a("mx1.example.net", std::net::Ipv4Addr::new(127, 0, 0, 2));
    dns.a("mx2.example.net", std::net::Ipv4Addr::LOCALHOST);
    let hop = format!("smtp:example.net:{}", peer.port);
    let server = Server::start(&format!(
        "[dns]\nservers = [\"{}\"]\n{}",
        dns.addr(),
        config(&route("example.net", &hop, ""))
    ));
    send(&server, "bob@example.net");
    let sent = wait_line(&server, &["to=<bob@example.net>", "stat=Sent"])
        .unwrap_or_else(|| panic!("not sent:\n{}", server.log()));
    assert!(sent.contains("relay=mx2.example.net [127.0.0.1]"), "{sent}");
    let log = server.log();
    let first = log
        .find("STARTTLS=client, relay=mx1.example.net, verify=SOFTWARE, error: handshake failed")
        .unwrap_or_else(|| panic!("{log}"));
    let second = log
        .find("STARTTLS=client, relay=mx2.example.net, version=TLSv1.3, verify=FAIL")
        .unwrap_or_else(|| panic!("{log}"));
    assert!(first < second, "{log}");
    assert_eq!(tls_notes(peer_dir.path()).len(), 1);
    assert!(tls_notes(peer_dir.path())[0].ends_with("sni=mx2.example.net\n"));
    let seen = seen.lock().unwrap().clone();
    assert!(seen.contains(&"STARTTLS".to_owned()), "{seen:?}");
    assert!(!seen.iter().any(|l| l.starts_with("MAIL")), "{seen:?}");
    drop(dns);
}

#[test]
fn a_reload_applies_new_tls_settings() {
    let pki = Pki::new();
    let (cert, key) = pki.self_signed("peer", &["127.0.0.1"]);
    let peer_dir = tempfile::tempdir().unwrap();
    let peer = Peer::start_tls("smtp", peer_dir.path(), &cert, &key);
    let hop = format!("smtp:[127.0.0.1]:{}", peer.port);
    let mut server = Server::start(&config(&route("example.net", &hop, "")));
    send(&server, "bob@example.net");
    assert!(wait_line(&server, &["to=<bob@example.net>", "stat=Sent"]).is_some());
    // Now the route verifies against a CA that did not sign the peer's certificate.
    server.write_config(&config(&route("example.net", &hop, &verify_with(&pki))));
    server.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        server.wait_log("configuration reloaded", WAIT),
        "{}",
        server.log()
    );
    send(&server, "carol@example.net");
    let line = wait_line(&server, &["to=<carol@example.net>", "stat=Deferred"])
        .unwrap_or_else(|| panic!("not deferred:\n{}", server.log()));
    assert!(
        line.contains("invalid peer certificate: UnknownIssuer"),
        "{line}"
    );
    assert_eq!(stored(peer_dir.path()).len(), 1);
}

/// A fake DNS server, on a runtime of its own that lives as long as the test keeps it.
fn fake_dns() -> (tokio::runtime::Runtime, portcullis::dns::fake::FakeDns) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dns = rt
        .block_on(portcullis::dns::fake::FakeDns::start())
        .unwrap();
    (rt, dns)
}
