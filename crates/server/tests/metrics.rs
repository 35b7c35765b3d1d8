// These tests drive a real `portcullis serve` process over real loopback sockets with real
// time, so they read the clock and sleep on purpose.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

//! The `/metrics` endpoint (`[metrics] listen`): a scripted set of sessions against the real
//! binary, then a scrape over HTTP, checked counter by counter.

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use support::{Server, Smtp, access_file, free_port_v4};

const WAIT: Duration = Duration::from_secs(10);

fn local(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// One HTTP/1.1 request; the status line, the headers and the body.
fn http(addr: SocketAddr, request: &str) -> (String, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, WAIT).expect("connect to /metrics");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_owned(), headers.to_lowercase(), body.to_owned())
}

fn scrape(addr: SocketAddr) -> String {
    let (status, headers, body) = http(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{headers}"
    );
    body
}

/// The value of the sample `series` (its exact name and labels), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split(' ').next()?.parse().ok()
    })
}

fn get(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

fn metrics_server(extra: &str) -> (Server, SocketAddr) {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port_v4()));
    let config = format!("[metrics]\nlisten = \"{addr}\"\n{extra}");
    let server = Server::start(&config);
    assert!(server.wait_log(&format!("metrics at http://{addr}/metrics"), WAIT));
    (server, addr)
}

#[test]
fn a_scripted_session_shows_in_every_counter() {
    // A next hop that refuses connections, so the relayed message is deferred.
    let dead = free_port_v4();
    let (server, metrics) = metrics_server(&format!(
        "[greet_pause]\ndefault = \"500ms\"\n\n[relay]\ndomains = [\"example.net\"]\n\n\
         [[route]]\ndomain = \"example.net\"\nnext_hop = \"smtp:[127.0.0.1]:{dead}\"\n"
    ));
    let before = scrape(metrics);
    assert_eq!(
        get(&before, r#"portcullis_messages_total{outcome="accepted"}"#),
        0.0
    );
    assert_eq!(
        get(
            &before,
            r#"portcullis_defence_findings_total{defence="greet_pause",outcome="rejected"}"#
        ),
        0.0
    );

    // A client that waits for its greeting and sends a message for a local mailbox.
    let mut polite = Smtp::connect_from(server.addr(), local(2));
    polite.greet_ehlo("polite.example.org");
    let (code, _) = polite.send_message(
        "a@example.org",
        &["alice@localhost"],
        "Subject: 1\r\n\r\nhi\r\n",
    );
    assert_eq!(code, 250);
    polite.cmd("QUIT");

    // A slammer: talks before the greeting.
    let mut slammer = Smtp::connect_from(server.addr(), local(3));
    slammer.send_raw(b"EHLO slam.example.org\r\n");
    let (code, _) = slammer.read_reply();
    assert_eq!(code, 554);
    slammer.cmd("QUIT");

    // A client refused a relay, then sends a message for a relay domain whose next hop is down.
    let mut relayer = Smtp::connect_from(server.addr(), local(4));
    relayer.greet_ehlo("relay.example.org");
    relayer.cmd("MAIL FROM:<b@example.org>");
    let (code, _) = relayer.cmd("RCPT TO:<x@elsewhere.example>");
    assert_eq!(code, 550);
    relayer.cmd("RSET");
    let (code, _) = relayer.send_message(
        "b@example.org",
        &["x@example.net"],
        "Subject: 2\r\n\r\nhi\r\n",
    );
    assert_eq!(code, 250);
    relayer.cmd("QUIT");

    assert_eq!(server.wait_maildir("localhost", "alice", 1, WAIT).len(), 1);
    assert!(server.wait_log("stat=Deferred", WAIT));
    assert!(server.wait_log_count("session closed:", 3, WAIT));
    // One session still open while scraping.
    let mut idle = Smtp::connect_from(server.addr(), local(5));
    idle.read_reply();

    let m = scrape(metrics);
    let finding = |defence: &str, outcome: &str| {
        get(
            &m,
            &format!(
                "portcullis_defence_findings_total{{defence=\"{defence}\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    assert_eq!(finding("greet_pause", "rejected"), 1.0);
    assert_eq!(finding("relay_denied", "rejected"), 1.0);
    assert_eq!(
        get(&m, r#"portcullis_messages_total{outcome="accepted"}"#),
        2.0
    );
    assert_eq!(
        get(
            &m,
            r#"portcullis_deliveries_total{mailer="local",outcome="sent"}"#
        ),
        1.0
    );
    assert_eq!(
        get(
            &m,
            r#"portcullis_deliveries_total{mailer="esmtp",outcome="deferred"}"#
        ),
        1.0
    );
    assert_eq!(
        get(&m, r#"portcullis_queue_messages{state="deferred"}"#),
        1.0
    );
    assert_eq!(get(&m, r#"portcullis_queue_messages{state="ready"}"#), 0.0);
    assert_eq!(get(&m, "portcullis_sessions_in_flight"), 1.0);
    assert_eq!(get(&m, "portcullis_sessions_closed_total"), 3.0);
    // The slammer talked at once; the other two only after the 500 ms pause.
    assert_eq!(get(&m, "portcullis_pregreet_seconds_count"), 1.0);
    assert!(get(&m, "portcullis_pregreet_seconds_sum") < 0.25);
    assert_eq!(get(&m, "portcullis_first_input_seconds_count"), 3.0);
    assert_eq!(
        get(&m, r#"portcullis_first_input_seconds_bucket{le="0.25"}"#),
        1.0
    );
    assert_eq!(
        get(&m, r#"portcullis_first_input_seconds_bucket{le="+Inf"}"#),
        3.0
    );
    assert_eq!(get(&m, "portcullis_session_duration_seconds_count"), 3.0);
    assert!(get(&m, "portcullis_session_duration_seconds_sum") >= 1.0);
    // No series names a client.
    assert!(!m.contains("127.0.0."), "{m}");
    drop(idle);

    // The operator holds the deferred message: the gauges follow.
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("stat=Deferred"))
        .expect("a deferral line");
    let qid = line
        .split(": ")
        .nth(1)
        .expect("the queue id after the syslog tag")
        .to_owned();
    let out = support::run_bounded(
        std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["queue", "hold", &qid, "-c"])
            .arg(server.config_path()),
        WAIT,
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // The runner publishes its counts as its loop turns, just after it answered.
    let held = r#"portcullis_queue_messages{state="held"}"#;
    support::wait_until(WAIT, || get(&scrape(metrics), held) == 1.0);
    let m = scrape(metrics);
    assert_eq!(get(&m, held), 1.0);
    assert_eq!(
        get(&m, r#"portcullis_queue_messages{state="deferred"}"#),
        0.0
    );
}

#[test]
fn a_discard_entry_is_one_finding_counted_as_discarded_not_rejected() {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port_v4()));
    let mut server = Server::start("");
    let access = access_file(&server, "Connect:127.0.0.7\tDISCARD\n");
    server.write_config(&format!(
        "{access}[greet_pause]\ndefault = \"0s\"\n\n[metrics]\nlisten = \"{addr}\"\n"
    ));
    server.restart();
    assert!(server.wait_log(&format!("metrics at http://{addr}/metrics"), WAIT));
    // One session, one DISCARD finding, two messages accepted and thrown away.
    let mut c = Smtp::connect_from(server.addr(), local(7));
    c.greet_ehlo("discarded.example.org");
    for i in 0..2 {
        let (code, _) = c.send_message(
            "a@example.org",
            &["alice@localhost"],
            &format!("Subject: {i}\r\n\r\nhi\r\n"),
        );
        assert_eq!(code, 250);
    }
    c.cmd("QUIT");
    assert!(server.wait_log_count(": discarded", 2, WAIT));
    assert!(server.wait_log("session closed:", WAIT));
    let m = scrape(addr);
    let finding = |outcome: &str| {
        value(
            &m,
            &format!(
                "portcullis_defence_findings_total{{defence=\"access\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    assert_eq!(finding("discarded"), Some(1.0), "{m}");
    assert_eq!(finding("rejected"), Some(0.0), "{m}");
    assert_eq!(
        get(&m, r#"portcullis_messages_total{outcome="discarded"}"#),
        2.0
    );
}

#[test]
fn only_metrics_is_served() {
    let (_server, metrics) = metrics_server("");
    let (status, _, body) = http(
        metrics,
        "GET /other HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    assert!(body.contains("/metrics"));
    let (status, headers, _) = http(
        metrics,
        "POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert!(headers.contains("allow: get, head"), "{headers}");
    // Not HTTP at all: the connection is closed, the endpoint goes on serving.
    let mut junk = TcpStream::connect(metrics).unwrap();
    junk.write_all(b"\x16\x03\x01\x00\x05hello\r\n\r\n")
        .unwrap();
    let mut sink = Vec::new();
    junk.set_read_timeout(Some(WAIT)).unwrap();
    let _ = junk.read_to_end(&mut sink);
    assert!(scrape(metrics).contains("portcullis_sessions_in_flight 0"));
}

#[test]
fn a_bad_metrics_address_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(&path, "[metrics]\nlisten = \"localhost:9525\"\n").unwrap();
    let out = support::run_bounded(
        std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["check-config", "--config"])
            .arg(&path),
        WAIT,
    );
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "p.toml:2:10: error: `metrics.listen`: \"localhost:9525\" is not an IP address"
        ),
        "{err}"
    );
    std::fs::write(&path, "[metrics]\nlisten = \"0.0.0.0:9525\"\n").unwrap();
    let out = support::run_bounded(
        std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["check-config", "--config"])
            .arg(&path),
        WAIT,
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a loopback address"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
