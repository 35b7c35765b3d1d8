//! STARTTLS end to end: the real `portcullis serve` on loopback, with real clients (OpenSSL's
//! `s_client -starttls smtp`, swaks `--tls`, and a rustls client over a std socket), test
//! certificates made at test time (ECDSA by rcgen; RSA keys by `openssl genpkey`).
//!
//! Covers: a message delivered over TLS with `ESMTPS` in its Received header; the command
//! injection defence over a real socket; RSA and ECDSA certificates; SIGHUP with a new pair
//! (new sessions get it, an open TLS session goes on) and with a broken key (logged, old pair
//! kept); `required_for`'s 530 until TLS; a ClientHello before the greeting classified as
//! implicit TLS in the pre-greet log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

#[path = "support/certs.rs"]
mod certs;
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use support::{READ_TIMEOUT, Server, local, toml_str, wait_until};
use tempfile::TempDir;

const WAIT: Duration = Duration::from_secs(10);

/// A server whose `[tls]` uses `pair` (written as `mx.crt` and `mx.key` into the returned
/// directory, which must outlive the server), `tls_extra` lines for `[tls]` and `extra`
/// configuration.
fn tls_server(pair: &certs::Pair, tls_extra: &str, extra: &str) -> (Server, TempDir) {
    // The files must exist before the server starts.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pair.write(dir.path(), "mx");
    let server = Server::start(&format!(
        "[tls]\ncert = {}\nkey = {}\n{tls_extra}\n{extra}",
        toml_str(&cert.display().to_string()),
        toml_str(&key.display().to_string()),
    ));
    (server, dir)
}

/// Reads one reply byte by byte (nothing past it is consumed: the handshake follows).
fn raw_reply(stream: &mut impl Read) -> String {
    let mut all = Vec::new();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = stream.read(&mut byte).expect("read reply");
        assert_eq!(n, 1, "closed; so far {:?}", String::from_utf8_lossy(&all));
        line.push(byte[0]);
        if byte[0] == b'\n' {
            all.extend_from_slice(&line);
            if line.get(3) == Some(&b' ') {
                return String::from_utf8_lossy(&all).into_owned();
            }
            line.clear();
        }
    }
}

fn send_cmd(stream: &mut (impl Read + Write), line: &str) -> String {
    stream.write_all(format!("{line}\r\n").as_bytes()).unwrap();
    stream.flush().unwrap();
    raw_reply(stream)
}

/// A TLS session on a real socket: the plaintext part up to the 220, then a rustls handshake.
struct TlsSmtp {
    stream: StreamOwned<ClientConnection, TcpStream>,
}

impl TlsSmtp {
    /// Connects from `source`, greets, EHLOs and does STARTTLS with `config`.
    fn open(addr: SocketAddr, source: IpAddr, config: ClientConfig) -> Self {
        let mut tcp = plain_from(addr, source);
        assert!(raw_reply(&mut tcp).starts_with("220 "));
        assert!(send_cmd(&mut tcp, "EHLO client.example").contains("250-STARTTLS"));
        assert_eq!(
            send_cmd(&mut tcp, "STARTTLS"),
            "220 2.0.0 Ready to start TLS\r\n"
        );
        Self::handshake(tcp, config)
    }

    fn handshake(tcp: TcpStream, config: ClientConfig) -> Self {
        let conn = ClientConnection::new(Arc::new(config), certs::server_name()).unwrap();
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .expect("TLS handshake");
        }
        Self { stream }
    }

    fn cmd(&mut self, line: &str) -> String {
        send_cmd(&mut self.stream, line)
    }

    /// The DER of the certificate the server presented.
    fn presented(&self) -> Vec<u8> {
        self.stream.conn.peer_certificates().unwrap()[0].to_vec()
    }
}

fn plain_from(addr: SocketAddr, source: IpAddr) -> TcpStream {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .unwrap();
    socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
    socket.connect_timeout(&addr.into(), READ_TIMEOUT).unwrap();
    let tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    tcp.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
    tcp
}

fn any_client() -> ClientConfig {
    certs::client_any(&[&rustls::version::TLS13, &rustls::version::TLS12], None)
}

/// `openssl s_client` as an interactive client: lines in, reply lines out.
struct SClient {
    child: Child,
    lines: Receiver<String>,
}

impl SClient {
    fn start(addr: SocketAddr) -> Self {
        let mut child = Command::new("openssl")
            .args(["s_client", "-starttls", "smtp", "-name", "client.example"])
            .args(["-connect", &addr.to_string(), "-crlf", "-quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run openssl s_client (scripts/test.sh installs openssl)");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// Sends `line` and waits for the last line of its reply (`NNN text`).
    fn cmd(&mut self, line: &str) -> String {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let got = self.lines.recv_timeout(left).expect("s_client reply");
            if got.as_bytes().get(3) == Some(&b' ') {
                return got;
            }
        }
    }
}

impl Drop for SClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn delivered_text(server: &Server, user: &str, n: usize) -> String {
    let files = server.wait_maildir("localhost", user, n, WAIT);
    assert_eq!(files.len(), n, "{}", server.log());
    std::fs::read_to_string(&files[n - 1]).unwrap()
}

#[test]
fn openssl_s_client_delivers_over_tls() {
    let (server, _certs) = tls_server(&certs::ecdsa("mx.example.test", 1), "", "");
    let mut c = SClient::start(server.addr());
    // After the handshake the server says nothing until the client's new EHLO.
    let ehlo = c.cmd("EHLO client.example");
    assert!(ehlo.starts_with("250 "), "{ehlo}");
    assert!(c.cmd("MAIL FROM:<alice@example.org>").starts_with("250 "));
    assert!(c.cmd("RCPT TO:<bob@localhost>").starts_with("250 "));
    assert!(c.cmd("DATA").starts_with("354 "));
    let done = c.cmd("Subject: over s_client\n\nhello over TLS\n.");
    assert!(done.starts_with("250 2.0.0 "), "{done}");
    assert!(c.cmd("QUIT").starts_with("221 "));
    let text = delivered_text(&server, "bob", 1);
    assert!(text.contains("with ESMTPS id"), "{text}");
    assert!(
        text.contains("(version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384 bits=256 verify=NO)"),
        "{text}"
    );
    assert!(server.wait_log(
        "STARTTLS=server, relay=[127.0.0.1], version=TLSv1.3, verify=NO, cipher=TLS_AES_256_GCM_SHA384, bits=256/256",
        WAIT
    ));
}

#[test]
fn swaks_tls_delivers() {
    let (server, _certs) = tls_server(&certs::rsa("mx.example.test", 2), "", "");
    let out = support::run_bounded(
        Command::new("swaks")
            .args(["--server", &server.addr().to_string(), "--tls"])
            .args(["--from", "alice@example.org", "--to", "carol@localhost"])
            .args(["--helo", "client.example", "--header", "Subject: swaks"]),
        WAIT,
    );
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{transcript}");
    assert!(
        transcript.contains("220 2.0.0 Ready to start TLS"),
        "{transcript}"
    );
    assert!(transcript.contains("TLS started"), "{transcript}");
    let text = delivered_text(&server, "carol", 1);
    assert!(text.contains("with ESMTPS id"), "{text}");
}

/// CVE-2011-0411 over a real socket: commands written in the same packet as STARTTLS are
/// never executed inside the TLS session.
#[test]
fn pipelined_plaintext_after_starttls_is_not_executed() {
    let (server, _certs) = tls_server(&certs::ecdsa("mx.example.test", 1), "", "");
    let mut tcp = plain_from(server.addr(), local(1));
    assert!(raw_reply(&mut tcp).starts_with("220 "));
    assert!(send_cmd(&mut tcp, "EHLO client.example").contains("250-STARTTLS"));
    let injected = b"STARTTLS\r\nRSET\r\nMAIL FROM:<evil@x.example>\r\n";
    tcp.write_all(injected).unwrap();
    assert_eq!(raw_reply(&mut tcp), "220 2.0.0 Ready to start TLS\r\n");
    let mut tls = TlsSmtp::handshake(tcp, any_client());
    // Had the injected MAIL run, this would be "Sender already specified"; the session
    // starts over before EHLO instead.
    assert_eq!(
        tls.cmd("MAIL FROM:<alice@example.org>"),
        "503 5.5.1 Polite people say HELO first\r\n"
    );
    assert!(tls.cmd("EHLO client.example").starts_with("250-"));
    assert!(tls.cmd("MAIL FROM:<alice@example.org>").starts_with("250 "));
    assert!(tls.cmd("QUIT").starts_with("221 "));
    let discarded = injected.len() - b"STARTTLS\r\n".len();
    assert!(server.wait_log(
        &format!("discarded {discarded} bytes of plaintext sent after STARTTLS (not executed)"),
        WAIT
    ));
    assert!(!server.log().contains("evil@x.example"), "{}", server.log());
}

/// Both key types serve, each with its own TLS 1.2 suites (a TLS 1.2 client shows which
/// key signed the handshake).
#[test]
fn rsa_and_ecdsa_certificates() {
    for (pair, kx) in [
        (certs::rsa("rsa.example.test", 3), "TLS_ECDHE_RSA_WITH_"),
        (
            certs::ecdsa("ecdsa.example.test", 4),
            "TLS_ECDHE_ECDSA_WITH_",
        ),
    ] {
        let (server, _certs) = tls_server(&pair, "", "");
        let tls12 = certs::client_any(&[&rustls::version::TLS12], None);
        let mut tls = TlsSmtp::open(server.addr(), local(1), tls12);
        assert_eq!(tls.presented(), pair.cert_der);
        assert!(tls.cmd("QUIT").starts_with("221 "));
        assert!(
            server.wait_log(&format!("version=TLSv1.2, verify=NO, cipher={kx}"), WAIT),
            "{}",
            server.log()
        );
    }
}

fn replace_file(path: &str, text: &str) {
    support::write_atomically(Path::new(path), text);
}

#[test]
fn sighup_swaps_the_pair_and_keeps_sessions() {
    let old = certs::ecdsa("old.example.test", 10);
    let new = certs::ecdsa("new.example.test", 11);
    let (server, certs_dir) = tls_server(&old, "", "");
    let cert = certs_dir.path().join("mx.crt").display().to_string();
    let key = certs_dir.path().join("mx.key").display().to_string();
    let mut open = TlsSmtp::open(server.addr(), local(1), any_client());
    assert_eq!(open.presented(), old.cert_der);
    assert!(open.cmd("EHLO client.example").starts_with("250-"));

    // A new pair: new sessions get it, the open one goes on with the old.
    replace_file(&key, &new.key_pem);
    replace_file(&cert, &new.cert_pem);
    server.signal(Signal::SIGHUP);
    assert!(
        server.wait_log("configuration reloaded", WAIT),
        "{}",
        server.log()
    );
    let mut fresh = TlsSmtp::open(server.addr(), local(2), any_client());
    assert_eq!(fresh.presented(), new.cert_der);
    assert!(fresh.cmd("QUIT").starts_with("221 "));
    assert!(
        open.cmd("MAIL FROM:<alice@example.org>")
            .starts_with("250 ")
    );
    assert!(open.cmd("RCPT TO:<dave@localhost>").starts_with("250 "));
    assert!(open.cmd("DATA").starts_with("354 "));
    assert!(
        open.cmd("Subject: kept\r\n\r\nsame session\r\n.")
            .starts_with("250 ")
    );
    assert!(open.cmd("QUIT").starts_with("221 "));
    delivered_text(&server, "dave", 1);

    // A key that does not load: logged, and the pair in force stays.
    replace_file(
        &key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    );
    server.signal(Signal::SIGHUP);
    assert!(
        server.wait_log("failed, keeping the old one", WAIT),
        "{}",
        server.log()
    );
    assert!(server.log().contains("`tls.key`"), "{}", server.log());
    let mut after = TlsSmtp::open(server.addr(), local(3), any_client());
    assert_eq!(after.presented(), new.cert_der);
    assert!(after.cmd("QUIT").starts_with("221 "));
}

#[test]
fn required_for_gets_530_until_tls() {
    let (server, _certs) = tls_server(
        &certs::ecdsa("mx.example.test", 1),
        "required_for = [\"127.0.0.2\"]",
        "",
    );
    // A listed client: 530 in plaintext, then fine inside TLS.
    let mut tcp = plain_from(server.addr(), local(2));
    assert!(raw_reply(&mut tcp).starts_with("220 "));
    send_cmd(&mut tcp, "EHLO client.example");
    assert_eq!(
        send_cmd(&mut tcp, "MAIL FROM:<alice@example.org>"),
        "530 5.7.0 Must issue a STARTTLS command first\r\n"
    );
    assert_eq!(
        send_cmd(&mut tcp, "STARTTLS"),
        "220 2.0.0 Ready to start TLS\r\n"
    );
    let mut tls = TlsSmtp::handshake(tcp, any_client());
    assert!(tls.cmd("EHLO client.example").starts_with("250-"));
    assert!(tls.cmd("MAIL FROM:<alice@example.org>").starts_with("250 "));
    assert!(tls.cmd("QUIT").starts_with("221 "));
    // Any other client may still send in plaintext (RFC 3207 §4: a public MX must not
    // require TLS of everyone).
    let mut other = plain_from(server.addr(), local(3));
    assert!(raw_reply(&mut other).starts_with("220 "));
    send_cmd(&mut other, "EHLO client.example");
    assert!(send_cmd(&mut other, "MAIL FROM:<alice@example.org>").starts_with("250 "));
}

/// Implicit TLS (a ClientHello before the greeting) on the plain port is classified as such
/// in the pre-greet log, and the handshake goes nowhere.
#[test]
fn client_hello_before_the_greeting_is_classified() {
    let (server, _certs) = tls_server(
        &certs::ecdsa("mx.example.test", 1),
        "",
        "[greet_pause]\ndefault = \"2s\"\n",
    );
    let tcp = plain_from(server.addr(), local(4));
    let conn = ClientConnection::new(Arc::new(any_client()), certs::server_name()).unwrap();
    let mut stream = StreamOwned::new(conn, tcp);
    // The ClientHello goes out at once; the server answers in plaintext SMTP, which the
    // client cannot take as TLS.
    let handshake = stream.conn.complete_io(&mut stream.sock);
    let _ = handshake.and_then(|_| stream.conn.complete_io(&mut stream.sock));
    assert!(
        wait_until(WAIT, || server.log().contains("class=\"tls-client-hello\"")),
        "{}",
        server.log()
    );
    assert!(server.log().contains("due to pre-greeting traffic"));
}
