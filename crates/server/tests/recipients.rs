// These tests drive a real `portcullis serve` process over real loopback sockets.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

//! End-to-end tests of the recipient defences (Sendmail's MaxRecipientsPerMessage,
//! BadRcptThrottle, BadRcptShutdown).

mod support;

use std::time::{Duration, Instant};

use support::{Server, Smtp, dot_stuff, local};

#[test]
fn a_dictionary_attack_is_throttled_and_the_real_recipients_still_get_the_mail() {
    // One session, 200 RCPTs, 198 of them unknown users. The delay is 20 ms here so the
    // test is quick; Sendmail's is 1 s.
    let server = Server::start(
        "[local]\nusers = [\"alice\", \"bob\"]\n[limits]\nbad_rcpt_throttle = 5\nbad_rcpt_throttle_delay = \"20ms\"\n",
    );
    let mut c = Smtp::connect_from(server.addr(), local(7));
    c.greet_ehlo("dict.example.org");
    assert_eq!(c.cmd("MAIL FROM:<spammer@example.org>").0, 250);
    let started = Instant::now();
    let mut slow = 0;
    let mut accepted = 0;
    for i in 0..200 {
        let rcpt = match i {
            50 => "alice@localhost".to_owned(),
            150 => "bob@localhost".to_owned(),
            _ => format!("guess{i}@localhost"),
        };
        let t = Instant::now();
        let (code, text) = c.cmd(&format!("RCPT TO:<{rcpt}>"));
        if t.elapsed() >= Duration::from_millis(20) {
            slow += 1;
        }
        match code {
            250 => accepted += 1,
            550 => assert!(text.ends_with("User unknown"), "{text}"),
            other => panic!("RCPT {i}: {other} {text}"),
        }
    }
    assert_eq!(accepted, 2);
    // The first 5 rejected RCPTs are answered at once, every later one waits.
    assert!(slow >= 195, "only {slow} RCPTs were delayed");
    assert!(started.elapsed() >= Duration::from_millis(195 * 20));
    assert_eq!(c.cmd("DATA").0, 354);
    c.send_raw(&dot_stuff("Subject: dictionary\r\n\r\nhello\r\n"));
    assert_eq!(c.read_reply().0, 250);
    assert_eq!(c.cmd("QUIT").0, 221);
    assert_eq!(
        server
            .wait_maildir("localhost", "alice", 1, Duration::from_secs(10))
            .len(),
        1
    );
    assert_eq!(
        server
            .wait_maildir("localhost", "bob", 1, Duration::from_secs(10))
            .len(),
        1
    );
    let logs = server.log();
    assert_eq!(
        logs.matches("[127.0.0.7]: Possible SMTP RCPT flood, throttling.")
            .count(),
        1,
        "{logs}"
    );
}

#[test]
fn bad_rcpt_shutdown_closes_the_connection() {
    let server = Server::start("[local]\nusers = [\"alice\"]\n[limits]\nbad_rcpt_shutdown = 3\n");
    let mut c = Smtp::connect(server.addr());
    c.greet_ehlo("dict.example.org");
    assert_eq!(c.cmd("MAIL FROM:<spammer@example.org>").0, 250);
    for i in 0..3 {
        assert_eq!(c.cmd(&format!("RCPT TO:<guess{i}@localhost>")).0, 550);
    }
    assert_eq!(
        c.cmd("RCPT TO:<alice@localhost>"),
        (
            421,
            "4.7.0 mx.example.test Too many bad recipients; closing connection".to_owned()
        )
    );
    c.expect_eof().unwrap();
    assert!(server.wait_log(
        "Possible SMTP RCPT flood, shutting down connection.",
        Duration::from_secs(5)
    ));
}
