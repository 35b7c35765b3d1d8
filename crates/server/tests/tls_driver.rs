//! STARTTLS through the real connection driver over `tokio::io::duplex`, with paused time
//! (design.md §5): a handshake with a rustls client that trusts the test certificate, the
//! `starttls` timeout on a client that stalls, a handshake that fails, and what the log says.

// Test code: panics are the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/certs.rs"]
mod certs;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis::dns::StaticNames;
use portcullis::serve::build_with_names;
use portcullis::state::Shared;
use portcullis::telemetry::Telemetry;
use portcullis_config::{LogFormat, load_str};
use portcullis_spool::CommitOptions;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, DuplexStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

struct Server {
    shared: Arc<Shared>,
    _dir: tempfile::TempDir,
}

/// A server with the test certificate `pair` and `extra` configuration lines.
fn server(pair: &certs::Pair, extra: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pair.write(dir.path(), "mx");
    let toml = format!(
        "server.hostname = \"mx.example.test\"\nserver.spool_dir = \"{d}/spool\"\n\
         local.maildir_root = \"{d}/mail\"\nlocal.domains = [\"localhost\"]\n\
         greet_pause.default = \"0s\"\ndns.reverse = false\n\
         tls.cert = \"{}\"\ntls.key = \"{}\"\n{extra}",
        cert.display(),
        key.display(),
        d = dir.path().display(),
    );
    let config = load_str(&toml, "test.toml").unwrap().config;
    let inline = CommitOptions {
        threads: 0,
        ..Default::default()
    };
    let names = Arc::new(StaticNames::new(Vec::new()));
    let built =
        build_with_names(config, Telemetry::memory(LogFormat::Syslog), inline, names).unwrap();
    Server {
        shared: built.shared,
        _dir: dir,
    }
}

/// One connection from 192.0.2.1 to the driver.
fn connect(server: &Server) -> (BufReader<DuplexStream>, JoinHandle<()>) {
    let (client, io) = tokio::io::duplex(64 * 1024);
    let peer: IpAddr = "192.0.2.1".parse().unwrap();
    let task = tokio::spawn(portcullis::conn::serve_connection(
        server.shared.clone(),
        io,
        peer,
        CancellationToken::new(),
    ));
    (BufReader::new(client), task)
}

/// Reads one reply (all its lines).
async fn reply<S: AsyncRead + Unpin>(r: &mut BufReader<S>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).await.unwrap();
        assert!(n > 0, "connection closed; so far {all:?}");
        all.push_str(&line);
        if line.as_bytes().get(3) == Some(&b' ') {
            return all;
        }
    }
}

async fn cmd<S: AsyncRead + AsyncWrite + Unpin>(r: &mut BufReader<S>, line: &str) -> String {
    r.get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .await
        .unwrap();
    r.get_mut().flush().await.unwrap();
    reply(r).await
}

/// Greeting, EHLO (STARTTLS offered), STARTTLS (220).
async fn up_to_starttls(r: &mut BufReader<DuplexStream>) {
    assert!(reply(r).await.starts_with("220 mx.example.test ESMTP"));
    let ehlo = cmd(r, "EHLO client.example").await;
    assert!(ehlo.contains("250-STARTTLS\r\n"), "{ehlo}");
    assert_eq!(cmd(r, "STARTTLS").await, "220 2.0.0 Ready to start TLS\r\n");
}

fn log_has(server: &Server, text: &str) -> bool {
    server
        .shared
        .telemetry
        .lines()
        .iter()
        .any(|l| l.contains(text))
}

#[tokio::test(start_paused = true)]
async fn handshake_then_mail_over_tls() {
    let pair = certs::ecdsa("mx.example.test", 1);
    let server = server(&pair, "");
    let (mut plain, task) = connect(&server);
    up_to_starttls(&mut plain).await;
    let connector = TlsConnector::from(Arc::new(certs::client_trusting(&pair)));
    let tls = connector
        .connect(certs::server_name(), plain.into_inner())
        .await
        .expect("handshake with the trusted test certificate");
    let mut r = BufReader::new(tls);
    // No new greeting: the client speaks first, and STARTTLS is not offered again.
    let ehlo = cmd(&mut r, "EHLO client.example").await;
    assert!(ehlo.starts_with("250-mx.example.test Hello"), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(
        cmd(&mut r, "MAIL FROM:<a@example.org>")
            .await
            .starts_with("250")
    );
    assert!(
        cmd(&mut r, "RCPT TO:<b@localhost>")
            .await
            .starts_with("250")
    );
    assert!(cmd(&mut r, "DATA").await.starts_with("354"));
    let done = cmd(&mut r, "Subject: t\r\n\r\nover TLS\r\n.").await;
    assert!(done.starts_with("250 2.0.0"), "{done}");
    assert!(cmd(&mut r, "QUIT").await.starts_with("221"));
    task.await.unwrap();
    assert!(log_has(
        &server,
        "STARTTLS=server, relay=[192.0.2.1], version=TLSv1.3, verify=NO, cipher=TLS_"
    ));
    let spooled = server.shared.spool.list().unwrap();
    assert_eq!(spooled.len(), 1);
    let text = String::from_utf8(server.shared.spool.read(&spooled[0]).unwrap().data).unwrap();
    assert!(text.contains("with ESMTPS id"), "{text}");
    assert!(text.contains("(version=TLSv1.3 cipher=TLS_"), "{text}");
}

/// A client that takes STARTTLS and then says nothing holds its socket until `starttls`.
#[tokio::test(start_paused = true)]
async fn stalled_handshake_is_closed_at_the_starttls_timeout() {
    let pair = certs::ecdsa("mx.example.test", 1);
    let server = server(&pair, "timeouts.starttls = \"30s\"\n");
    let (mut plain, task) = connect(&server);
    up_to_starttls(&mut plain).await;
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert!(!task.is_finished(), "closed before the timeout");
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::yield_now().await;
    assert!(task.is_finished(), "still open after the timeout");
    let mut rest = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut plain, &mut rest)
        .await
        .unwrap();
    assert!(
        rest.is_empty(),
        "nothing more is said in plaintext: {rest:?}"
    );
    assert!(log_has(
        &server,
        "STARTTLS=server, error: accept failed, reason=handshake not done within 30s, relay=[192.0.2.1]"
    ));
}

/// Plaintext where the ClientHello should be ends the connection; none of it is executed.
#[tokio::test(start_paused = true)]
async fn plaintext_instead_of_a_handshake_fails_it() {
    let pair = certs::ecdsa("mx.example.test", 1);
    let server = server(&pair, "");
    let (mut plain, task) = connect(&server);
    up_to_starttls(&mut plain).await;
    plain
        .get_mut()
        .write_all(b"MAIL FROM:<evil@example.org>\r\n")
        .await
        .unwrap();
    task.await.unwrap();
    assert!(log_has(
        &server,
        "STARTTLS=server, error: accept failed, reason="
    ));
    assert!(!log_has(&server, "evil@example.org"));
}

/// A client certificate is asked for and accepted unverified: `verify=FAIL`; TLS 1.2 works.
#[tokio::test(start_paused = true)]
async fn client_certificate_and_tls12() {
    let pair = certs::ecdsa("mx.example.test", 1);
    let client = certs::ecdsa("client.example", 7);
    let server = server(&pair, "");
    let (mut plain, task) = connect(&server);
    up_to_starttls(&mut plain).await;
    let config = certs::client_any(&[&rustls::version::TLS12], Some(&client));
    let tls = TlsConnector::from(Arc::new(config))
        .connect(certs::server_name(), plain.into_inner())
        .await
        .expect("TLS 1.2 handshake with a client certificate");
    let mut r = BufReader::new(tls);
    assert!(cmd(&mut r, "QUIT").await.starts_with("221"));
    task.await.unwrap();
    let line = server
        .shared
        .telemetry
        .lines()
        .into_iter()
        .find(|l| l.contains("STARTTLS=server, relay="))
        .expect("STARTTLS line");
    assert!(
        line.contains("version=TLSv1.2, verify=FAIL, cipher=TLS_ECDHE_ECDSA_WITH_"),
        "{line}"
    );
}

/// `request_client_cert = false`: no certificate is asked for (`verify=NOT`);
/// `min_version = "1.3"` refuses a TLS 1.2-only client.
#[tokio::test(start_paused = true)]
async fn options_not_asked_and_tls13_only() {
    let pair = certs::ecdsa("mx.example.test", 1);
    let server = server(
        &pair,
        "tls.request_client_cert = false\ntls.min_version = \"1.3\"\n",
    );
    let (mut plain, task) = connect(&server);
    up_to_starttls(&mut plain).await;
    let config = certs::client_any(&[&rustls::version::TLS13], None);
    let tls = TlsConnector::from(Arc::new(config))
        .connect(certs::server_name(), plain.into_inner())
        .await
        .unwrap();
    let mut r = BufReader::new(tls);
    assert!(cmd(&mut r, "QUIT").await.starts_with("221"));
    task.await.unwrap();
    assert!(log_has(&server, "version=TLSv1.3, verify=NOT, cipher="));

    let (mut plain, task) = connect(&server);
    up_to_starttls(&mut plain).await;
    let config = certs::client_any(&[&rustls::version::TLS12], None);
    let refused = TlsConnector::from(Arc::new(config))
        .connect(certs::server_name(), plain.into_inner())
        .await;
    assert!(refused.is_err(), "a TLS 1.2 client got through");
    task.await.unwrap();
    assert!(log_has(&server, "STARTTLS=server, error: accept failed"));
}
