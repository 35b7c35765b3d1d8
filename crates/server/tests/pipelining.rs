// These tests drive a real `portcullis serve` process over real loopback sockets with real
// time (delivery is waited for), so they read the clock and sleep on purpose.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

//! End-to-end tests of pipelining and command stuffing (reference section j): Sendmail
//! 8.18's anti-stuffing check (CVE-2023-51765) after HELO and after DATA, the
//! `Srv_Features:` `F` exemption, a proper RFC 2920 group, the synchronization check when
//! PIPELINING is not offered (`[smtp] pipelining = false`, `Srv_Features:` `P`) and
//! `[smtp] stuffing_action = "ignore"`. Every session is a real client on a real socket;
//! replies are checked on the wire, messages in the Maildir and the queue, findings in the
//! log.

mod support;

use std::time::Duration;

use support::{HOSTNAME, Server, Smtp, local, pause, server_with_access};

/// How long a delivery (or a log line) may take to show up.
const WAIT: Duration = Duration::from_secs(10);

/// The seeds' slam: a whole session in one write.
const SLAM: &[u8] = b"HELO client.example.org\r\nMAIL FROM:<alice@example.org>\r\n\
RCPT TO:<root@localhost>\r\nDATA\r\nSubject: t\r\n\r\nhello\r\n.\r\nQUIT\r\n";

/// Every reply line until the server closes the connection (panics on a read error or
/// timeout: the server must close).
fn lines_until_eof(c: &mut Smtp) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        match c.read_line() {
            Ok(Some(line)) => lines.push(line),
            Ok(None) => return lines,
            Err(e) => panic!("no EOF after {lines:?}: {e}"),
        }
    }
}

/// Reads the greeting; it must be the normal 220.
fn expect_greeting(c: &mut Smtp) {
    let (code, text) = c.read_reply();
    assert_eq!(code, 220, "greeting: {text}");
    assert!(text.starts_with(&format!("{HOSTNAME} ESMTP")), "{text}");
}

/// The queue id of a `250 2.0.0 <qid> Message accepted for delivery` line.
fn accepted_qid(line: &str) -> &str {
    let qid = line
        .strip_prefix("250 2.0.0 ")
        .and_then(|t| t.strip_suffix(" Message accepted for delivery"))
        .unwrap_or_else(|| panic!("not an acceptance: {line:?}"));
    assert!(
        !qid.is_empty() && qid.chars().all(|ch| ch.is_ascii_alphanumeric()),
        "queue id {qid:?}"
    );
    qid
}

/// Asserts nothing was queued or delivered for `root@localhost` (after a short quiet
/// period in which a wrongly accepted message would have been delivered).
fn assert_nothing_queued(server: &Server) {
    pause(Duration::from_millis(300));
    assert!(
        server.queue_files().is_empty(),
        "queued: {:?}",
        server.queue_files()
    );
    assert!(
        server.maildir_files("localhost", "root").is_empty(),
        "delivered: {:?}",
        server.maildir_files("localhost", "root")
    );
    assert!(
        !server.log().contains("Message accepted"),
        "{}",
        server.log()
    );
}

/// Asserts exactly one message reached root's Maildir and the queue emptied.
fn assert_one_delivered_to_root(server: &Server, body: &str) {
    let files = server.wait_maildir("localhost", "root", 1, WAIT);
    assert!(server.wait_queue_empty(WAIT), "{:?}", server.queue_files());
    pause(Duration::from_millis(300));
    let files_now = server.maildir_files("localhost", "root");
    assert_eq!(files_now.len(), 1, "{files:?} then {files_now:?}");
    let text = support::read_text(&files_now[0]);
    assert!(text.contains(body), "{text}");
}

/// The replies Sendmail 8.18 gives the slam after the greeting (HELO with input behind it).
const STUFFED_SLAM_REPLIES: [&str; 9] = [
    "554 5.5.0 SMTP protocol error",
    "550 5.0.0 Command rejected",
    "550 5.0.0 Command rejected",
    "550 5.0.0 Command rejected",
    "500 5.5.1 Command unrecognized: \"Subject: t\"",
    "500 5.5.1 Command unrecognized: \"\"",
    "500 5.5.1 Command unrecognized: \"hello\"",
    "500 5.5.1 Command unrecognized: \".\"",
    "221 2.0.0 mx.example.test closing connection",
];

/// Asserts the classic (Sendmail 8.13-8.17) answers to the slam from `ip`, line by line,
/// the acceptance included.
fn assert_classic_slam_replies(lines: &[String], ip: &str) {
    let want_prefixes = [
        format!("250 {HOSTNAME} Hello [{ip}], pleased to meet you"),
        "250 2.1.0 <alice@example.org>... Sender ok".to_owned(),
        "250 2.1.5 <root@localhost>... Recipient ok".to_owned(),
        "354 ".to_owned(),
    ];
    assert_eq!(lines.len(), 6, "{lines:?}");
    for (line, want) in lines.iter().zip(&want_prefixes) {
        assert!(line.starts_with(want.as_str()), "{line:?} is not {want:?}");
    }
    accepted_qid(&lines[4]);
    assert_eq!(
        lines[5],
        format!("221 2.0.0 {HOSTNAME} closing connection"),
        "{lines:?}"
    );
}

// 1 ------------------------------------------------------------------------------------------

#[test]
fn a_slam_after_the_greeting_is_stuffing_and_nothing_is_queued() {
    let server = Server::start("");
    let mut c = Smtp::connect(server.addr());
    expect_greeting(&mut c);
    c.send_raw(SLAM);
    let lines = lines_until_eof(&mut c);
    assert_eq!(lines, STUFFED_SLAM_REPLIES);
    assert!(
        server.wait_log(
            "rejecting server HELO from [127.0.0.1] due to traffic before response",
            WAIT
        ),
        "{}",
        server.log()
    );
    assert!(
        server
            .log()
            .contains("next_input=\"MAIL FROM:<alice@example.org>"),
        "{}",
        server.log()
    );
    assert_nothing_queued(&server);
}

// 2 ------------------------------------------------------------------------------------------

#[test]
fn srv_features_f_exempts_a_client_from_the_stuffing_check() {
    let server = server_with_access("Srv_Features:127.0.0.5 F\n", "");
    let mut c = Smtp::connect_from(server.addr(), local(5));
    expect_greeting(&mut c);
    c.send_raw(SLAM);
    let lines = lines_until_eof(&mut c);
    assert_classic_slam_replies(&lines, "127.0.0.5");
    assert_one_delivered_to_root(&server, "hello");
    assert!(
        !server.log().contains("traffic before response"),
        "{}",
        server.log()
    );

    // Another address, without the entry, is still held to 8.18's rule.
    let mut other = Smtp::connect_from(server.addr(), local(6));
    expect_greeting(&mut other);
    other.send_raw(SLAM);
    assert_eq!(lines_until_eof(&mut other), STUFFED_SLAM_REPLIES);
    assert!(server.wait_log(
        "rejecting server HELO from [127.0.0.6] due to traffic before response",
        WAIT
    ));
    assert_eq!(server.maildir_files("localhost", "root").len(), 1);
}

// 3 ------------------------------------------------------------------------------------------

#[test]
fn input_after_data_before_the_354_is_rejected_and_the_connection_closed() {
    let server = Server::start("");
    let mut c = Smtp::connect(server.addr());
    c.greet_ehlo("client.example.org");
    c.send_raw(
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<root@localhost>\r\nDATA\r\n\
          Subject: x\r\n\r\nbody\r\n.\r\n",
    );
    let lines = lines_until_eof(&mut c);
    assert_eq!(
        lines,
        [
            "250 2.1.0 <a@example.org>... Sender ok",
            "250 2.1.5 <root@localhost>... Recipient ok",
            "554 5.5.0 SMTP protocol error",
        ]
    );
    assert!(
        server.wait_log(
            "rejecting server DATA from [127.0.0.1] due to traffic before response",
            WAIT
        ),
        "{}",
        server.log()
    );
    assert_nothing_queued(&server);
}

// 4 ------------------------------------------------------------------------------------------

#[test]
fn a_proper_rfc_2920_group_is_answered_in_order_and_delivered() {
    let server = Server::start("[local]\nusers = [\"alice\", \"bob\"]\n");
    let mut c = Smtp::connect(server.addr());
    let ehlo = c.greet_ehlo("client.example.org");
    assert!(ehlo.iter().any(|l| l == "PIPELINING"), "{ehlo:?}");

    // One write: MAIL, three RCPTs (one unknown), DATA; all five replies come back, in
    // order, without the client writing anything more.
    c.send_raw(
        b"MAIL FROM:<sender@example.org>\r\nRCPT TO:<alice@localhost>\r\n\
          RCPT TO:<unknown@localhost>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n",
    );
    let want = [
        (250, "2.1.0 <sender@example.org>... Sender ok"),
        (250, "2.1.5 <alice@localhost>... Recipient ok"),
        (550, "5.1.1 <unknown@localhost>... User unknown"),
        (250, "2.1.5 <bob@example.test>... Recipient ok"),
        (354, "End data with <CR><LF>.<CR><LF>"),
    ];
    for (code, text) in want {
        assert_eq!(c.read_reply(), (code, text.to_owned()));
    }

    // One write: the body, the final dot and QUIT.
    c.send_raw(b"Subject: group\r\n\r\npipelined body\r\n.\r\nQUIT\r\n");
    let lines = lines_until_eof(&mut c);
    assert_eq!(lines.len(), 2, "{lines:?}");
    accepted_qid(&lines[0]);
    assert_eq!(lines[1], format!("221 2.0.0 {HOSTNAME} closing connection"));

    for user in ["alice", "bob"] {
        let domain = if user == "alice" {
            "localhost"
        } else {
            "example.test"
        };
        let files = server.wait_maildir(domain, user, 1, WAIT);
        assert_eq!(files.len(), 1, "{user}: {files:?}");
        assert!(support::read_text(&files[0]).contains("pipelined body"));
    }
    assert!(server.wait_queue_empty(WAIT));
    let log = server.log();
    assert!(!log.contains("traffic before response"), "{log}");
    assert!(!log.contains("improper command pipelining"), "{log}");
}

// 5 ------------------------------------------------------------------------------------------

#[test]
fn without_pipelining_a_pipelined_command_is_a_synchronization_error() {
    let server = Server::start("[smtp]\npipelining = false\n");
    let mut c = Smtp::connect(server.addr());
    let ehlo = c.greet_ehlo("client.example.org");
    assert!(!ehlo.iter().any(|l| l.contains("PIPELINING")), "{ehlo:?}");
    assert_eq!(
        c.cmd("MAIL FROM:<alice@example.org>"),
        (250, "2.1.0 <alice@example.org>... Sender ok".to_owned())
    );
    c.send_raw(b"RCPT TO:<a@localhost>\r\nRCPT TO:<b@localhost>\r\n");
    assert_eq!(
        lines_until_eof(&mut c),
        ["554 5.5.0 SMTP protocol synchronization error"]
    );
    assert!(
        server.wait_log(
            "improper command pipelining after RCPT from [127.0.0.1]: RCPT TO:<b@localhost>",
            WAIT
        ),
        "{}",
        server.log()
    );
    assert_nothing_queued(&server);
}

// 6 ------------------------------------------------------------------------------------------

#[test]
fn srv_features_p_withholds_pipelining_from_one_client_only() {
    let server = server_with_access("Srv_Features:127.0.0.8 P\n", "");

    let mut held = Smtp::connect_from(server.addr(), local(8));
    let ehlo = held.greet_ehlo("held.example.org");
    assert!(!ehlo.iter().any(|l| l.contains("PIPELINING")), "{ehlo:?}");
    held.send_raw(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<root@localhost>\r\n");
    assert_eq!(
        lines_until_eof(&mut held),
        ["554 5.5.0 SMTP protocol synchronization error"]
    );
    assert!(
        server.wait_log(
            "improper command pipelining after MAIL from [127.0.0.8]: RCPT TO:<root@localhost>",
            WAIT
        ),
        "{}",
        server.log()
    );

    // Another address is offered PIPELINING and may use it.
    let mut free = Smtp::connect_from(server.addr(), local(9));
    let ehlo = free.greet_ehlo("free.example.org");
    assert!(ehlo.iter().any(|l| l == "PIPELINING"), "{ehlo:?}");
    free.send_raw(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<root@localhost>\r\nDATA\r\n");
    assert_eq!(free.read_reply().0, 250);
    assert_eq!(free.read_reply().0, 250);
    assert_eq!(free.read_reply().0, 354);
    free.send_raw(b"Subject: p\r\n\r\nnot held\r\n.\r\nQUIT\r\n");
    let lines = lines_until_eof(&mut free);
    assert_eq!(lines.len(), 2, "{lines:?}");
    accepted_qid(&lines[0]);
    assert_eq!(lines[1], format!("221 2.0.0 {HOSTNAME} closing connection"));
    assert_one_delivered_to_root(&server, "not held");
    let log = server.log();
    assert!(
        !log.lines()
            .any(|l| l.contains("improper command pipelining") && l.contains("[127.0.0.9]")),
        "{log}"
    );
}

// 7 ------------------------------------------------------------------------------------------

#[test]
fn stuffing_action_ignore_only_logs() {
    let server = Server::start("[smtp]\nstuffing_action = \"ignore\"\n");
    let mut c = Smtp::connect(server.addr());
    expect_greeting(&mut c);
    c.send_raw(SLAM);
    let lines = lines_until_eof(&mut c);
    assert_classic_slam_replies(&lines, "127.0.0.1");
    assert!(
        server.wait_log(
            "ignored (smtp.stuffing_action = ignore): rejecting server HELO from [127.0.0.1] \
             due to traffic before response",
            WAIT
        ),
        "{}",
        server.log()
    );
    assert_one_delivered_to_root(&server, "hello");
}
