// These tests drive a real `portcullis serve` process over real loopback sockets with real
// time (timeouts, signals, delivery), so they read the clock and sleep on purpose.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

//! End-to-end tests: real clients (swaks, Python's smtplib, raw sockets) against the real
//! binary, checking replies on the wire, Maildir contents and log lines.

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{
    HOSTNAME, Server, Smtp, free_port_v4, free_port_v6, merge_toml, pause, read_text, run_bounded,
    run_with_stdin, toml_str,
};

const DELIVERY: Duration = Duration::from_secs(10);

/// A small message with a Message-ID and a subject.
fn message(id: &str, body: &str) -> String {
    format!(
        "Message-ID: <{id}@e2e.test>\r\nSubject: {id}\r\nFrom: <sender@example.org>\r\n\r\n{body}\r\n"
    )
}

/// Asserts `files` is exactly one file and returns its text.
fn only_file(files: &[PathBuf], what: &str) -> String {
    assert_eq!(
        files.len(),
        1,
        "{what}: expected exactly one message, found {files:?}"
    );
    read_text(&files[0])
}

/// Waits for deliveries to settle: the queue is empty, then a short quiet period so a
/// duplicate delivery (which must not happen) would have time to show up.
fn settle(server: &Server) {
    assert!(
        server.wait_queue_empty(DELIVERY),
        "spool queue did not empty: {:?}\nlog:\n{}",
        server.queue_files(),
        server.log()
    );
    pause(Duration::from_millis(300));
}

// 1 ------------------------------------------------------------------------------------------

#[test]
fn swaks_delivers_to_maildir() {
    let probe = Command::new("swaks").arg("--version").output();
    assert!(
        matches!(&probe, Ok(out) if out.status.success()),
        "swaks is not installed (or does not run: {probe:?}); scripts/test.sh installs it \
         (apt-get install swaks). This end-to-end test needs a real third-party SMTP client."
    );
    let server = Server::start("");
    let out = run_bounded(
        Command::new("swaks").args([
            "--server",
            &format!("127.0.0.1:{}", server.port()),
            "--to",
            "alice@localhost",
            "--from",
            "bob@example.org",
        ]),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "swaks failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let files = server.wait_maildir("localhost", "alice", 1, DELIVERY);
    let text = only_file(&files, "alice's Maildir after swaks");
    assert!(
        text.starts_with("Received: from "),
        "no Received header first:\n{text}"
    );
    assert!(
        text.contains(&format!("by {HOSTNAME} (Portcullis) with ESMTP id ")),
        "our Received header is missing:\n{text}"
    );
    assert!(text.contains("for <alice@localhost>"), "{text}");
    assert!(
        text.contains("This is a test mailing"),
        "swaks' body is missing:\n{text}"
    );
    settle(&server);
    assert_eq!(server.maildir_files("localhost", "alice").len(), 1);
}

// 2 ------------------------------------------------------------------------------------------

#[test]
fn python_smtplib_partial_refusal() {
    let server = Server::start("[local]\nusers = [\"alice\"]");
    let script = format!(
        r#"
import smtplib
s = smtplib.SMTP("127.0.0.1", {port}, timeout=10)
msg = "Message-ID: <py-1@e2e.test>\r\nSubject: from python\r\n\r\nhello from smtplib\r\n"
refused = s.sendmail("bob@example.org", ["alice@localhost", "nobody@localhost"], msg)
for rcpt, (code, text) in sorted(refused.items()):
    print("REFUSED|%s|%d|%s" % (rcpt, code, text.decode()))
s.quit()
print("DONE")
"#,
        port = server.port()
    );
    let out = run_with_stdin(
        Command::new("python3").arg("-"),
        &script,
        Duration::from_secs(30),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python3 failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let refused: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("REFUSED|"))
        .collect();
    assert_eq!(
        refused,
        vec!["REFUSED|nobody@localhost|550|5.1.1 <nobody@localhost>... User unknown"],
        "smtplib's refused dict; stdout:\n{stdout}"
    );
    assert!(stdout.lines().any(|l| l == "DONE"), "{stdout}");
    server.wait_maildir("localhost", "alice", 1, DELIVERY);
    settle(&server);
    let text = only_file(
        &server.maildir_files("localhost", "alice"),
        "alice's Maildir",
    );
    assert!(text.contains("hello from smtplib"), "{text}");
    assert!(
        !server
            .maildir_root()
            .join("localhost")
            .join("nobody")
            .exists(),
        "a Maildir was created for the refused recipient"
    );
}

// 3 ------------------------------------------------------------------------------------------

#[test]
fn pipelined_group_replies_in_order() {
    let server = Server::start("[local]\nusers = [\"alice\", \"bob\"]");
    let mut c = Smtp::connect(server.addr());
    let ehlo = c.greet_ehlo("client.example.org");
    assert!(
        ehlo.iter().any(|l| l == "PIPELINING"),
        "PIPELINING not advertised: {ehlo:?}"
    );

    // One write: the whole RFC 2920 group up to DATA.
    c.send_raw(
        b"MAIL FROM:<sender@example.org>\r\n\
          RCPT TO:<alice@localhost>\r\n\
          RCPT TO:<bob@example.test>\r\n\
          RCPT TO:<unknown@localhost>\r\n\
          DATA\r\n",
    );
    let want = [
        (250, "2.1.0 <sender@example.org>... Sender ok"),
        (250, "2.1.5 <alice@localhost>... Recipient ok"),
        (250, "2.1.5 <bob@example.test>... Recipient ok"),
        (550, "5.1.1 <unknown@localhost>... User unknown"),
        (354, "End data with <CR><LF>.<CR><LF>"),
    ];
    for (code, text) in want {
        assert_eq!(c.read_reply(), (code, text.to_owned()));
    }
    // One write: body, the final dot and QUIT.
    let mut tail =
        b"Message-ID: <pipe-1@e2e.test>\r\nSubject: pipelined\r\n\r\npipelined body\r\n".to_vec();
    tail.extend_from_slice(b".\r\nQUIT\r\n");
    c.send_raw(&tail);
    let (code, text) = c.read_reply();
    assert_eq!(code, 250, "{text}");
    let qid = text
        .strip_prefix("2.0.0 ")
        .and_then(|t| t.strip_suffix(" Message accepted for delivery"))
        .unwrap_or_else(|| panic!("unexpected final reply {text:?}"));
    assert!(
        !qid.is_empty() && qid.chars().all(|ch| ch.is_ascii_alphanumeric()),
        "queue id {qid:?}"
    );
    assert_eq!(
        c.read_reply(),
        (221, format!("2.0.0 {HOSTNAME} closing connection"))
    );
    c.expect_eof().unwrap();

    let alice = server.wait_maildir("localhost", "alice", 1, DELIVERY);
    let bob = server.wait_maildir("example.test", "bob", 1, DELIVERY);
    settle(&server);
    for (who, files) in [("alice", alice), ("bob", bob)] {
        let text = only_file(&files, who);
        assert!(text.contains("pipelined body"), "{who}: {text}");
        assert!(
            text.contains(&format!("id {qid}")),
            "{who}: queue id not in Received:\n{text}"
        );
    }
    assert!(
        !server
            .maildir_root()
            .join("localhost")
            .join("unknown")
            .exists()
    );
    assert!(
        server
            .log()
            .contains(&format!("{qid}: from=<sender@example.org>, size=")),
        "{}",
        server.log()
    );
}

// 4 ------------------------------------------------------------------------------------------

#[test]
fn relaying_denied_from_any_source() {
    let server = Server::start("");
    let relay_denied = (550, "5.7.1 <x@other.example>... Relaying denied".to_owned());

    let mut c = Smtp::connect(server.addr());
    c.greet_ehlo("client.example.org");
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<x@other.example>"), relay_denied);
    assert_eq!(
        c.cmd("DATA"),
        (503, "5.5.1 Need RCPT (recipient)".to_owned())
    );
    assert_eq!(c.cmd("QUIT").0, 221);

    let src = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let mut c = Smtp::connect_from(server.addr(), src);
    assert_eq!(c.local_addr().ip(), src);
    let ehlo = c.greet_ehlo("other.example.org");
    assert_eq!(
        ehlo[0],
        format!("{HOSTNAME} Hello [127.0.0.2], pleased to meet you")
    );
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<x@other.example>"), relay_denied);
    assert_eq!(
        c.cmd("RCPT TO:<alice@localhost>"),
        (250, "2.1.5 <alice@localhost>... Recipient ok".to_owned())
    );
    assert_eq!(c.cmd("DATA").0, 354);
    c.send_raw(&support::dot_stuff(&message("relay-1", "from 127.0.0.2")));
    let (code, text) = c.read_reply();
    assert_eq!(code, 250, "{text}");
    assert_eq!(c.cmd("QUIT").0, 221);

    assert!(
        server.wait_log("relay=[127.0.0.2]", DELIVERY),
        "no accepted-message line with relay=[127.0.0.2]:\n{}",
        server.log()
    );
    let accepted = server
        .log()
        .lines()
        .find(|l| l.contains("from=<a@example.org>") && l.contains("relay=[127.0.0.2]"))
        .map(str::to_owned);
    assert!(accepted.is_some(), "{}", server.log());
    let files = server.wait_maildir("localhost", "alice", 1, DELIVERY);
    settle(&server);
    let text = only_file(&files, "alice");
    assert!(
        text.contains("([127.0.0.2])"),
        "Received header should name 127.0.0.2:\n{text}"
    );
    assert!(
        !server.maildir_root().join("other.example").exists(),
        "a relayed recipient reached the mail store"
    );
}

// 5 ------------------------------------------------------------------------------------------

/// `A` letter, `0` digit, anything else literal.
fn matches_shape(s: &str, shape: &str) -> bool {
    s.len() == shape.len()
        && s.chars().zip(shape.chars()).all(|(c, p)| match p {
            'A' => c.is_ascii_alphabetic(),
            '0' => c.is_ascii_digit(),
            p => c == p,
        })
}

#[test]
fn greeting_unknown_command_and_quit() {
    let server = Server::start("");
    let mut c = Smtp::connect(server.addr());
    let (code, text) = c.read_reply();
    assert_eq!(code, 220, "{text}");
    let prefix = format!("{HOSTNAME} ESMTP Portcullis; ");
    let date = text
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("greeting {text:?} does not start with {prefix:?}"));
    assert!(
        matches_shape(date, "AAA, 00 AAA 0000 00:00:00 +0000"),
        "greeting date {date:?} is not an RFC 5322 date like `Sat, 21 Nov 2026 11:46:10 +0000`"
    );
    let parsed = jiff::fmt::rfc2822::parse(date)
        .unwrap_or_else(|e| panic!("greeting date {date:?} does not parse as RFC 5322: {e}"));
    let skew = (parsed.timestamp().as_second() - jiff::Timestamp::now().as_second()).abs();
    assert!(
        skew < 120,
        "greeting date {date:?} is {skew} s away from now"
    );

    assert_eq!(
        c.cmd("FOOBAR baz"),
        (500, "5.5.1 Command unrecognized: \"FOOBAR baz\"".to_owned())
    );
    assert_eq!(
        c.cmd("QUIT"),
        (221, format!("2.0.0 {HOSTNAME} closing connection"))
    );
    c.expect_eof().unwrap();
}

// 6 ------------------------------------------------------------------------------------------

#[test]
fn size_and_line_limits() {
    let server = Server::start("[server]\nmax_message_bytes = 100000");
    let mut c = Smtp::connect(server.addr());
    let ehlo = c.greet_ehlo("client.example.org");
    assert!(
        ehlo.iter().any(|l| l == "SIZE 100000"),
        "SIZE not advertised: {ehlo:?}"
    );

    assert_eq!(
        c.cmd("MAIL FROM:<a@b.c> SIZE=200000"),
        (
            552,
            "5.3.4 Message size exceeds fixed maximum message size (100000)".to_owned()
        )
    );
    // No transaction was started: a new MAIL is fine.
    assert_eq!(c.cmd("MAIL FROM:<a@b.c>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@localhost>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    let line = format!("{}\r\n", "x".repeat(78));
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    while body.len() < 200_000 {
        body.extend_from_slice(line.as_bytes());
    }
    c.send_raw(&body);
    assert!(
        c.is_silent_for(Duration::from_millis(500)),
        "the server replied before the end of the data"
    );
    c.send_raw(b".\r\n");
    assert_eq!(
        c.read_reply(),
        (
            552,
            "5.3.4 Message size exceeds fixed maximum message size".to_owned()
        )
    );
    assert_eq!(c.cmd("NOOP"), (250, "2.0.0 OK".to_owned()));

    let long = format!("NOOP {}", "y".repeat(595));
    assert_eq!(long.len() + 2, 602);
    assert_eq!(
        c.cmd(&long),
        (500, "5.5.0 Command line too long".to_owned())
    );
    assert_eq!(c.cmd("NOOP"), (250, "2.0.0 OK".to_owned()));
    assert_eq!(c.cmd("QUIT").0, 221);

    assert!(
        server.wait_log("refused: 552 5.3.4", DELIVERY),
        "no refusal logged:\n{}",
        server.log()
    );
    pause(Duration::from_millis(300));
    assert!(server.queue_files().is_empty());
    assert!(server.maildir_files("localhost", "alice").is_empty());
    assert!(!server.log().contains("from=<a@b.c>"), "{}", server.log());
}

// 7 ------------------------------------------------------------------------------------------

const SMUGGLE: &[u8] =
    b"hello\r\n.\nMAIL FROM:<evil@x.y>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\nevil\r\n.\r\n";

/// Sends the smuggling payload in one DATA; returns the reply to it, after checking that
/// exactly one reply came (the next command gets its own reply).
fn smuggle(server: &Server) -> (u16, String) {
    let mut c = Smtp::connect(server.addr());
    c.greet_ehlo("client.example.org");
    assert_eq!(c.cmd("MAIL FROM:<good@example.org>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@localhost>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c.send_raw(SMUGGLE);
    let reply = c.read_reply();
    assert!(
        c.is_silent_for(Duration::from_millis(500)),
        "more than one reply to one DATA (after {reply:?})"
    );
    assert_eq!(c.cmd("NOOP"), (250, "2.0.0 OK".to_owned()));
    assert_eq!(c.cmd("QUIT").0, 221);
    reply
}

#[test]
fn smuggling_rejected_by_default() {
    let server = Server::start("");
    assert_eq!(
        smuggle(&server),
        (550, "5.6.0 bare LF or CR in message".to_owned())
    );
    assert!(
        server.wait_log("refused: 550 5.6.0", DELIVERY),
        "{}",
        server.log()
    );
    pause(Duration::from_millis(500));
    assert!(
        server.queue_files().is_empty(),
        "{:?}",
        server.queue_files()
    );
    assert!(
        server.maildir_files("localhost", "alice").is_empty(),
        "a smuggled or refused message was delivered"
    );
    assert!(!server.log().contains("from=<"), "{}", server.log());
}

#[test]
fn smuggling_normalized_is_one_message() {
    let server = Server::start("[smtp]\nbare_lf = \"normalize\"");
    let (code, text) = smuggle(&server);
    assert_eq!(code, 250, "{text}");
    assert!(text.ends_with(" Message accepted for delivery"), "{text}");
    server.wait_maildir("localhost", "alice", 1, DELIVERY);
    settle(&server);
    let text = only_file(&server.maildir_files("localhost", "alice"), "alice");
    assert!(
        text.ends_with(
            "\r\n\r\nhello\r\n.\r\nMAIL FROM:<evil@x.y>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\nevil\r\n"
        ) || text.ends_with(
            "\r\nhello\r\n.\r\nMAIL FROM:<evil@x.y>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\nevil\r\n"
        ),
        "the smuggled lines should be body text of the one message:\n{text:?}"
    );
    let log = server.log();
    assert_eq!(log.matches("from=<").count(), 1, "{log}");
    assert!(!log.contains("from=<evil@x.y>"), "{log}");
}

// 8 ------------------------------------------------------------------------------------------

#[test]
fn check_config_reports_lines() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_portcullis");
    let t = Duration::from_secs(20);

    let good = dir.path().join("good.toml");
    let text = merge_toml(
        &format!(
            "[server]\nhostname = \"mx.example.test\"\nlisten = [\"127.0.0.1:2525\"]\nspool_dir = {}\n[local]\ndomains = [\"localhost\"]\nusers = [\"alice\"]\nmaildir_root = {}\n",
            toml_str(&dir.path().join("spool").display().to_string()),
            toml_str(&dir.path().join("mail").display().to_string())
        ),
        "",
    );
    std::fs::write(&good, text).unwrap();
    let out = run_bounded(
        Command::new(bin)
            .arg("check-config")
            .arg("--config")
            .arg(&good),
        t,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("configuration OK"), "{stdout}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nmax_message_bytes = 0\nbogus = 1\n").unwrap();
    let out = run_bounded(
        Command::new(bin)
            .arg("check-config")
            .arg("--config")
            .arg(&bad),
        t,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    let file = bad.display().to_string();
    let line_of = |n: u32, needle: &str| {
        stderr.lines().any(|l| {
            l.starts_with(&format!("{file}:{n}:")) && l.contains("error") && l.contains(needle)
        })
    };
    assert!(
        line_of(2, "max_message_bytes"),
        "no FILE:2: error for max_message_bytes:\n{stderr}"
    );
    assert!(line_of(3, "bogus"), "no FILE:3: error for bogus:\n{stderr}");

    let out = run_bounded(
        Command::new(bin)
            .arg("check-config")
            .current_dir(dir.path()),
        t,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "embedded default:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
}

// 9 ------------------------------------------------------------------------------------------

#[test]
fn serve_refuses_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port_v4();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nhostname = \"mx.example.test\"\nlisten = [\"127.0.0.1:{port}\"]\nbogus = 1\n"
        ),
    )
    .unwrap();
    let started = Instant::now();
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .current_dir(dir.path()),
        Duration::from_secs(10),
    );
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        elapsed < Duration::from_secs(5),
        "took {elapsed:?} to refuse a bad config"
    );
    assert!(
        stderr.contains(&format!("{}:4:", path.display())) && stderr.contains("bogus"),
        "{stderr}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
    assert!(
        TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Duration::from_secs(2)
        )
        .is_err(),
        "something listens on the port of a refused configuration"
    );
    assert!(
        !dir.path().join("var").exists(),
        "a refused configuration created directories"
    );
}

// 10 -----------------------------------------------------------------------------------------

fn rcpt_reply(server: &Server, rcpt: &str) -> (u16, String) {
    let mut c = Smtp::connect(server.addr());
    c.greet_ehlo("client.example.org");
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").0, 250);
    let reply = c.cmd(&format!("RCPT TO:<{rcpt}>"));
    assert_eq!(c.cmd("QUIT").0, 221);
    reply
}

#[test]
fn sighup_reloads_users() {
    let mut server = Server::start("[local]\nusers = [\"alice\"]");
    let unknown = (550, "5.1.1 <bob@localhost>... User unknown".to_owned());
    let ok = (250, "2.1.5 <bob@localhost>... Recipient ok".to_owned());
    assert_eq!(rcpt_reply(&server, "bob@localhost"), unknown);

    // A session opened before the reload keeps the configuration it started with.
    let mut old = Smtp::connect(server.addr());
    old.greet_ehlo("old.example.org");

    server.write_config("[local]\nusers = [\"alice\", \"bob\"]");
    server.signal(Signal::SIGHUP);
    assert!(
        server.wait_log("configuration reloaded", DELIVERY),
        "no reload logged:\n{}",
        server.log()
    );
    assert_eq!(rcpt_reply(&server, "bob@localhost"), ok);
    assert_eq!(old.cmd("MAIL FROM:<a@example.org>").0, 250);
    assert_eq!(
        old.cmd("RCPT TO:<bob@localhost>"),
        unknown,
        "reload changed a session in flight"
    );
    assert_eq!(old.cmd("QUIT").0, 221);

    server.write_config_raw("[server]\nmax_message_bytes = 0\n[local]\nusers = [\"alice\"]\n");
    server.signal(Signal::SIGHUP);
    assert!(
        server.wait_log("failed, keeping the old one", DELIVERY),
        "no failed reload logged:\n{}",
        server.log()
    );
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("failed, keeping the old one"))
        .unwrap();
    assert!(line.contains("reload"), "{line}");
    assert!(
        line.contains("max_message_bytes"),
        "the error is not named: {line}"
    );
    assert_eq!(
        rcpt_reply(&server, "bob@localhost"),
        ok,
        "a bad reload replaced the config"
    );
    assert_eq!(
        server.wait_exit(Duration::ZERO),
        None,
        "the server died on a bad reload"
    );
}

// 11 -----------------------------------------------------------------------------------------

#[test]
fn sigterm_finishes_data_then_421() {
    let mut server =
        Server::start("[server]\nshutdown_grace = \"10s\"\n[local]\nusers = [\"alice\"]");
    let shutting_down = (421, format!("4.3.2 {HOSTNAME} Service shutting down"));

    let mut idle = Smtp::connect(server.addr());
    idle.greet_ehlo("idle.example.org");

    let mut busy = Smtp::connect(server.addr());
    busy.greet_ehlo("busy.example.org");
    assert_eq!(busy.cmd("MAIL FROM:<a@example.org>").0, 250);
    assert_eq!(busy.cmd("RCPT TO:<alice@localhost>").0, 250);
    assert_eq!(busy.cmd("DATA").0, 354);
    busy.send_raw(b"Message-ID: <term-1@e2e.test>\r\nSubject: in flight\r\n\r\nfirst half\r\n");
    // Let the server take in the first half before the signal.
    pause(Duration::from_millis(200));

    let signalled = Instant::now();
    server.signal(Signal::SIGTERM);
    assert_eq!(idle.read_reply(), shutting_down, "idle session");
    idle.expect_eof().unwrap();

    busy.send_raw(b"second half\r\n.\r\n");
    let (code, text) = busy.read_reply();
    assert_eq!(code, 250, "message in flight at SIGTERM: {text}");
    assert!(text.ends_with(" Message accepted for delivery"), "{text}");
    assert_eq!(busy.read_reply(), shutting_down, "after the 250");
    busy.expect_eof().unwrap();

    let status = server.wait_exit(Duration::from_secs(10));
    let elapsed = signalled.elapsed();
    let status =
        status.unwrap_or_else(|| panic!("still running 10 s after SIGTERM:\n{}", server.log()));
    assert!(status.success(), "exit status {status}:\n{}", server.log());
    assert!(elapsed < Duration::from_secs(10), "exit took {elapsed:?}");
    let log = server.log();
    assert!(log.contains("interrupt (SIGTERM): stopping"), "{log}");
    assert!(log.contains("stopped; 0 session(s) cut off"), "{log}");

    // Delivered already, or safely spooled: a restart delivers it.
    let delivered = server.maildir_files("localhost", "alice");
    if delivered.is_empty() {
        assert!(
            !server.queue_files().is_empty(),
            "acknowledged message is neither in the Maildir nor in the spool"
        );
        server.restart();
    }
    let files = server.wait_maildir("localhost", "alice", 1, DELIVERY);
    let text = only_file(&files, "alice");
    assert!(text.contains("first half\r\nsecond half\r\n"), "{text}");
}

// 12 -----------------------------------------------------------------------------------------

#[test]
fn command_timeout_closes_silently() {
    let server = Server::start("[timeouts]\ncommand = \"2s\"");
    let mut c = Smtp::connect(server.addr());
    c.greet_ehlo("slow.example.org");
    let idle_since = Instant::now();
    c.expect_eof()
        .unwrap_or_else(|e| panic!("idle client was not disconnected silently: {e}"));
    let waited = idle_since.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_millis(4500),
        "disconnected after {waited:?}, expected about 2 s"
    );
    assert!(
        server.wait_log(
            "timeout waiting for input from [127.0.0.1] during server cmd read",
            DELIVERY
        ),
        "{}",
        server.log()
    );
}

#[test]
fn data_timeout_sends_421() {
    let server = Server::start("[timeouts]\ncommand = \"2s\"\ndatablock = \"2s\"");
    let mut c = Smtp::connect(server.addr());
    c.greet_ehlo("slow.example.org");
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@localhost>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c.send_raw(b"Subject: slow\r\n\r\npart of a body");
    let silent_since = Instant::now();
    assert_eq!(
        c.read_reply(),
        (421, format!("4.4.1 {HOSTNAME} Timeout waiting for data"))
    );
    let waited = silent_since.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_millis(4500),
        "421 after {waited:?}, expected about 2 s"
    );
    c.expect_eof().unwrap();
    assert!(
        server.wait_log("timeout waiting for data from [127.0.0.1]", DELIVERY),
        "{}",
        server.log()
    );
    assert!(server.queue_files().is_empty());
    assert!(server.maildir_files("localhost", "alice").is_empty());
}

// 13 -----------------------------------------------------------------------------------------

#[test]
fn ipv6_session_delivers() {
    if let Err(e) = free_port_v6() {
        panic!(
            "IPv6 loopback [::1] is not available on this machine (bind failed: {e}); this test needs it"
        );
    }
    let server = Server::start_listening(
        || {
            vec![
                SocketAddr::from((Ipv4Addr::LOCALHOST, free_port_v4())),
                SocketAddr::from((Ipv6Addr::LOCALHOST, free_port_v6().expect("bind [::1]:0"))),
            ]
        },
        "",
    );
    let v6 = server.listen_addrs()[1];
    assert!(v6.is_ipv6());
    let mut c = Smtp::connect(v6);
    assert_eq!(c.read_reply().0, 220);
    assert_eq!(
        c.cmd("HELO client6.example.org"),
        (
            250,
            format!("{HOSTNAME} Hello [IPv6:0:0:0:0:0:0:0:1], pleased to meet you")
        )
    );
    let (code, text) = c.send_message(
        "a@example.org",
        &["alice@localhost"],
        &message("v6-1", "over IPv6"),
    );
    assert_eq!(code, 250, "{text}");
    assert_eq!(c.cmd("QUIT").0, 221);
    let files = server.wait_maildir("localhost", "alice", 1, DELIVERY);
    let text = only_file(&files, "alice");
    assert!(text.contains("[IPv6:0:0:0:0:0:0:0:1]"), "{text}");
    assert!(text.contains(" with SMTP id "), "{text}");
    assert!(
        server.log().contains("relay=[IPv6:0:0:0:0:0:0:0:1]"),
        "{}",
        server.log()
    );

    // The IPv4 listener works too.
    let mut c = Smtp::connect(server.addr());
    c.greet_ehlo("client4.example.org");
    assert_eq!(c.cmd("QUIT").0, 221);
}

// 14 -----------------------------------------------------------------------------------------

/// Unmounts a tmpfs on drop (after the server using it was killed).
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// True when the effective user id is 0 (from /proc; nix's `user` feature is not enabled).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

fn mount_tmpfs(dir: &Path, size: &str) -> Result<Mount, String> {
    if !is_root() {
        return Err("not running as root".into());
    }
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mount -t tmpfs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(Mount(dir.to_path_buf()))
}

#[test]
fn full_spool_disk_gives_452_and_loses_nothing() {
    let mnt = tempfile::tempdir().unwrap();
    let mount = mount_tmpfs(mnt.path(), "256k").unwrap_or_else(|e| {
        panic!(
            "this test needs root and a tmpfs mount for the spool ({e}); CI runs as root. \
             Run the tests as root (e.g. in the project's container) to exercise the full-disk path."
        )
    });
    let spool = mnt.path().join("spool");
    let mut server = Server::start(&format!(
        "[server]\nspool_dir = {}\n[local]\nusers = [\"alice\"]\n[queue]\nretry_min = \"1s\"\nretry_max = \"1s\"",
        toml_str(&spool.display().to_string())
    ));
    // Hold deliveries (the mail volume "goes away") so accepted messages stay in the small
    // spool until it is full.
    let root = server.maildir_root();
    let away = server.dir().join("mail.away");
    std::fs::rename(&root, &away).unwrap();

    let mut c = Smtp::connect(server.addr());
    c.greet_ehlo("client.example.org");
    let filler = format!("{}\r\n", "z".repeat(98));
    let mut acked = Vec::new();
    let mut refused = None;
    for n in 0..20 {
        let mut body = message(&format!("full-{n}"), "");
        while body.len() < 100_000 {
            body.push_str(&filler);
        }
        let reply = c.send_message("a@example.org", &["alice@localhost"], &body);
        match reply.0 {
            250 => acked.push(format!("<full-{n}@e2e.test>")),
            _ => {
                refused = Some(reply);
                break;
            }
        }
    }
    let refused = refused.unwrap_or_else(|| {
        panic!(
            "20 messages of 100 KB fit in a 256 KiB spool?\n{}",
            server.log()
        )
    });
    assert_eq!(
        refused,
        (452, "4.3.1 Insufficient system storage".to_owned()),
        "log:\n{}",
        server.log()
    );
    assert!(!acked.is_empty(), "not even one message fit");
    assert!(
        server.log().contains("SYSERR: spool commit failed"),
        "{}",
        server.log()
    );
    // The session goes on after a 452.
    assert_eq!(c.cmd("NOOP"), (250, "2.0.0 OK".to_owned()));
    assert_eq!(c.cmd("QUIT").0, 221);
    assert!(
        support::list_files(&spool.join("tmp")).is_empty(),
        "a failed commit left a file in tmp/"
    );

    // The mail volume is back: every acknowledged message must arrive.
    std::fs::rename(&away, &root).unwrap();
    let files = server.wait_maildir("localhost", "alice", acked.len(), Duration::from_secs(30));
    settle(&server);
    let ids = support::message_ids(&files);
    for id in &acked {
        assert!(
            ids.contains_key(id),
            "acknowledged {id} not delivered; delivered {ids:?}"
        );
    }
    assert_eq!(files.len(), acked.len(), "unexpected deliveries: {ids:?}");
    server.kill9();
    drop(server);
    drop(mount);
}
