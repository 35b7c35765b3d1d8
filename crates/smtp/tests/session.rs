//! Session tests: scripted client bytes, synthetic time, no runtime (design.md §5).
//!
//! A tiny harness plays the driver: it answers every question with a policy closure, commits
//! messages at once (or fails them), and collects replies and notes.

// A test may read the clock once for its starting instant; helpers unwrap freely.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_smtp::{
    Action, Ask, BareLineEndings, ClientFeatures, ClientInfo, CommandDelay, CommitError, Event,
    Finding, Message, Note, RcptFlood, ReversePath, Session, SessionConfig, Verdict, WaitPhase,
    received_header, reply,
};

struct Harness {
    session: Session,
    now: Instant,
    policy: Box<dyn FnMut(&Ask) -> Verdict>,
    commit: Result<(), CommitError>,
    /// Commit answers are held back while this is true (to test waiting and timeouts).
    hold_commits: bool,
    committed: Vec<Message>,
    notes: Vec<Note>,
    asks: Vec<Ask>,
    out: String,
}

fn config() -> SessionConfig {
    let mut cfg = SessionConfig::new("mx.example.test");
    cfg.max_message_bytes = 1000;
    cfg
}

fn harness_with(cfg: SessionConfig, addr: IpAddr) -> Harness {
    let now = Instant::now();
    let client = ClientInfo { addr, name: None };
    let session = Session::new(
        Arc::new(cfg),
        client,
        "Sat, 21 Nov 2026 11:46:10 +0000",
        now,
    );
    let mut h = Harness::around(session, now);
    h.pump();
    h
}

/// The note of a finding acted on with `enforce`.
fn enforced(finding: Finding) -> Note {
    Note::Defence {
        finding,
        action: Action::Enforce,
    }
}

fn harness() -> Harness {
    harness_with(config(), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))
}

impl Harness {
    /// A harness playing the driver of `session`, accepting every question.
    fn around(session: Session, now: Instant) -> Self {
        Self {
            session,
            now,
            policy: Box::new(|_| Verdict::Accept),
            commit: Ok(()),
            hold_commits: false,
            committed: Vec::new(),
            notes: Vec::new(),
            asks: Vec::new(),
            out: String::new(),
        }
    }

    /// Sends bytes and returns the replies they produced.
    fn send(&mut self, bytes: &[u8]) -> String {
        assert!(self.session.wants_input(), "session does not want input");
        self.session.handle_input(bytes, self.now);
        self.pump()
    }

    /// Plays the driver until the session waits for the client again.
    fn pump(&mut self) -> String {
        while let Some(ev) = self.session.poll_event() {
            match ev {
                Event::Ask(ask) => {
                    if let Ask::Mail { .. } = ask {
                        self.session.set_queue_id("6ALBkAGx022139");
                    }
                    let v = (self.policy)(&ask);
                    self.asks.push(ask);
                    self.session.answer(v, self.now);
                }
                Event::Commit(m) => {
                    self.committed.push(*m);
                    if !self.hold_commits {
                        self.session.commit_done(self.commit, self.now);
                    }
                }
                Event::Note(n) => self.notes.push(n),
                Event::StartTls { .. } => panic!("STARTTLS is not offered in these tests"),
            }
        }
        let bytes = self.session.take_output();
        let text = String::from_utf8(bytes).unwrap();
        self.out.push_str(&text);
        text
    }

    fn advance(&mut self, d: Duration) -> String {
        self.now += d;
        if self.session.poll_timeout().is_some_and(|at| at <= self.now) {
            self.session.handle_timeout(self.now);
        }
        self.pump()
    }

    fn ehlo(&mut self) {
        let r = self.send(b"EHLO client.example.org\r\n");
        assert!(
            r.starts_with("250-mx.example.test Hello [192.0.2.1], pleased to meet you\r\n"),
            "{r}"
        );
    }
}

#[test]
fn greeting_then_normal_transaction() {
    let mut h = harness();
    assert_eq!(
        h.out,
        "220 mx.example.test ESMTP Portcullis; Sat, 21 Nov 2026 11:46:10 +0000\r\n"
    );
    let r = h.send(b"EHLO client.example.org\r\n");
    assert_eq!(
        r,
        "250-mx.example.test Hello [192.0.2.1], pleased to meet you\r\n\
         250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 1000\r\n\
         250-SMTPUTF8\r\n250 HELP\r\n"
    );
    assert_eq!(
        h.send(b"MAIL FROM:<alice@example.org>\r\n"),
        "250 2.1.0 <alice@example.org>... Sender ok\r\n"
    );
    assert_eq!(
        h.send(b"RCPT TO:<bob@localhost>\r\n"),
        "250 2.1.5 <bob@localhost>... Recipient ok\r\n"
    );
    assert_eq!(
        h.send(b"DATA\r\n"),
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    assert_eq!(h.send(b"Subject: hi\r\n\r\n..dot\r\n"), "");
    assert_eq!(
        h.send(b".\r\n"),
        "250 2.0.0 6ALBkAGx022139 Message accepted for delivery\r\n"
    );
    assert_eq!(
        h.send(b"QUIT\r\n"),
        "221 2.0.0 mx.example.test closing connection\r\n"
    );
    assert!(h.session.is_closed());
    let m = &h.committed[0];
    assert_eq!(
        (m.sender.as_str(), m.recipients.clone(), m.protocol),
        (
            "alice@example.org",
            vec!["bob@localhost".to_string()],
            "ESMTP"
        )
    );
    assert_eq!(m.data, b"Subject: hi\r\n\r\n.dot\r\n");
    assert_eq!(h.session.stats().messages, 1);
}

#[test]
fn helo_and_simple_commands_match_sendmail() {
    let mut h = harness();
    assert_eq!(
        h.send(b"HELO client.example.org\r\n"),
        "250 mx.example.test Hello [192.0.2.1], pleased to meet you\r\n"
    );
    assert_eq!(h.send(b"NOOP\r\n"), "250 2.0.0 OK\r\n");
    assert_eq!(h.send(b"RSET\r\n"), "250 2.0.0 Reset state\r\n");
    assert!(h.send(b"VRFY root\r\n").starts_with("252 2.5.2 "));
    assert_eq!(
        h.send(b"EXPN root\r\n"),
        "502 5.7.0 Sorry, we do not allow this operation\r\n"
    );
    assert!(
        h.send(b"HELP\r\n")
            .ends_with("214 2.0.0 End of HELP info\r\n")
    );
    assert_eq!(
        h.send(b"FOOBAR baz\r\n"),
        "500 5.5.1 Command unrecognized: \"FOOBAR baz\"\r\n"
    );
    assert_eq!(h.send(b"\r\n"), "500 5.5.1 Command unrecognized: \"\"\r\n");
}

#[test]
fn sequence_errors() {
    let mut h = harness();
    assert_eq!(
        h.send(b"MAIL FROM:<a@b.c>\r\n"),
        "503 5.5.1 Polite people say HELO first\r\n"
    );
    h.ehlo();
    assert_eq!(
        h.send(b"RCPT TO:<a@b.c>\r\n"),
        "503 5.5.1 Need MAIL before RCPT\r\n"
    );
    assert_eq!(h.send(b"DATA\r\n"), "503 5.5.1 Need MAIL before RCPT\r\n");
    h.send(b"MAIL FROM:<a@b.c>\r\n");
    assert_eq!(
        h.send(b"MAIL FROM:<a@b.c>\r\n"),
        "503 5.5.1 Sender already specified\r\n"
    );
    assert_eq!(h.send(b"DATA\r\n"), "503 5.5.1 Need RCPT (recipient)\r\n");
    // RSET ends the transaction; MAIL works again.
    h.send(b"RSET\r\n");
    assert!(
        h.send(b"MAIL FROM:<>\r\n")
            .starts_with("250 2.1.0 <>... Sender ok")
    );
}

#[test]
fn policy_rejections_are_sent_and_the_session_goes_on() {
    let mut h = harness();
    h.policy = Box::new(|ask| match ask {
        Ask::Rcpt {
            recipient: ReversePath::Mailbox(m),
            ..
        } if m.local == "nobody" => Verdict::Reject(reply::user_unknown(m)),
        Ask::Rcpt {
            recipient: ReversePath::Mailbox(m),
            ..
        } if m.domain != "localhost" => Verdict::Reject(reply::relaying_denied(m)),
        _ => Verdict::Accept,
    });
    h.ehlo();
    h.send(b"MAIL FROM:<a@b.c>\r\n");
    assert_eq!(
        h.send(b"RCPT TO:<nobody@localhost>\r\n"),
        "550 5.1.1 <nobody@localhost>... User unknown\r\n"
    );
    assert_eq!(
        h.send(b"RCPT TO:<x@elsewhere.example>\r\n"),
        "550 5.7.1 <x@elsewhere.example>... Relaying denied\r\n"
    );
    assert_eq!(h.send(b"DATA\r\n"), "503 5.5.1 Need RCPT (recipient)\r\n");
    assert!(
        h.send(b"RCPT TO:<alice@localhost>\r\n")
            .starts_with("250 2.1.5")
    );
    assert_eq!(
        h.send(b"DATA\r\n"),
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    assert!(h.send(b"x\r\n.\r\n").starts_with("250 2.0.0"));
    assert_eq!(
        h.committed[0].recipients,
        vec!["alice@localhost".to_string()]
    );
}

#[test]
fn verdict_close_ends_the_session() {
    let mut h = harness();
    h.policy = Box::new(|_| {
        Verdict::Close(portcullis_smtp::Reply::new(
            421,
            "4.7.0 mx.example.test go away",
        ))
    });
    assert_eq!(
        h.send(b"EHLO x\r\n"),
        "421 4.7.0 mx.example.test go away\r\n"
    );
    assert!(h.session.is_closed());
    assert!(!h.session.wants_input());
}

#[test]
fn pipelined_group_is_answered_in_order_in_one_output() {
    let mut h = harness();
    h.ehlo();
    // RFC 2920: DATA ends a group; the client waits for the 354 before the text.
    let r = h.send(
        b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<a@localhost>\r\nRCPT TO:<b@localhost>\r\nDATA\r\n",
    );
    assert_eq!(
        r,
        "250 2.1.0 <alice@example.org>... Sender ok\r\n\
         250 2.1.5 <a@localhost>... Recipient ok\r\n\
         250 2.1.5 <b@localhost>... Recipient ok\r\n\
         354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    assert_eq!(
        h.send(b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n"),
        "250 2.0.0 6ALBkAGx022139 Message accepted for delivery\r\n\
         221 2.0.0 mx.example.test closing connection\r\n"
    );
    assert!(h.notes.is_empty(), "{:?}", h.notes);
    assert_eq!(h.committed[0].data, b"Subject: x\r\n\r\nbody\r\n");
}

#[test]
fn input_split_at_every_byte_gives_the_same_dialogue() {
    let script: &[u8] = b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@localhost>\r\nDATA\r\nhi\r\n..\r\n.\r\nQUIT\r\n";
    // In one write the EHLO and DATA are stuffed: this client is exempt (`Srv_Features: F`).
    let lax = ClientFeatures {
        lax_pipelining: true,
        ..ClientFeatures::default()
    };
    let mut whole = harness();
    whole.session.set_features(lax);
    whole.send(script);
    // One byte at a time, as a slow client would.
    let mut bytewise = harness();
    for b in script {
        if bytewise.session.wants_input() {
            bytewise.send(std::slice::from_ref(b));
        }
    }
    assert_eq!(whole.out, bytewise.out);
    assert_eq!(whole.committed, bytewise.committed);
}

#[test]
fn no_250_until_the_commit_is_done() {
    let mut h = harness();
    h.hold_commits = true;
    h.ehlo();
    h.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@localhost>\r\nDATA\r\n");
    assert_eq!(h.send(b"x\r\n.\r\nNOOP\r\n"), "");
    assert!(!h.session.wants_input(), "must not read while committing");
    h.session.commit_done(Ok(()), h.now);
    // The pipelined NOOP is processed only after the 250.
    assert_eq!(
        h.pump(),
        "250 2.0.0 6ALBkAGx022139 Message accepted for delivery\r\n250 2.0.0 OK\r\n"
    );
}

#[test]
fn storage_failure_is_452_and_nothing_is_acknowledged() {
    let mut h = harness();
    h.commit = Err(CommitError::Storage);
    h.ehlo();
    let r = h.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@localhost>\r\nDATA\r\n");
    assert!(
        r.ends_with("354 End data with <CR><LF>.<CR><LF>\r\n"),
        "{r}"
    );
    let r = h.send(b"x\r\n.\r\n");
    assert_eq!(r, "452 4.3.1 Insufficient system storage\r\n");
    assert!(!r.contains("Message accepted"));
    assert_eq!(h.session.stats().messages, 0);
}

#[test]
fn oversize_message_is_read_to_the_end_then_552() {
    let mut h = harness();
    h.ehlo();
    h.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@localhost>\r\nDATA\r\n");
    let big = vec![b'x'; 70];
    for _ in 0..100 {
        let mut line = big.clone();
        line.extend_from_slice(b"\r\n");
        assert_eq!(h.send(&line), "");
        assert!(
            h.session.buffered() < 4096,
            "buffered {}",
            h.session.buffered()
        );
    }
    assert_eq!(
        h.send(b".\r\n"),
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    assert!(h.committed.is_empty());
    assert!(matches!(h.notes.last(), Some(Note::MessageRefused { .. })));
    // The session is usable again.
    assert!(h.send(b"MAIL FROM:<a@b.c>\r\n").starts_with("250 2.1.0"));
}

#[test]
fn size_parameter_over_limit_refused_at_mail() {
    let mut h = harness();
    h.ehlo();
    assert_eq!(
        h.send(b"MAIL FROM:<a@b.c> SIZE=1001\r\n"),
        "552 5.3.4 Message size exceeds fixed maximum message size (1000)\r\n"
    );
    assert!(
        h.send(b"MAIL FROM:<a@b.c> SIZE=1000\r\n")
            .starts_with("250")
    );
}

#[test]
fn smuggled_commands_after_bare_lf_dot_are_never_executed() {
    let mut h = harness();
    h.ehlo();
    h.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@localhost>\r\nDATA\r\n");
    let r = h.send(
        b"hi\r\n.\nMAIL FROM:<evil@x.y>\r\nRCPT TO:<victim@localhost>\r\nDATA\r\nevil\r\n.\r\n",
    );
    // One reply only: the whole thing was one message, refused for its bare LF.
    assert_eq!(r, "550 5.6.0 bare LF or CR in message\r\n");
    assert!(h.committed.is_empty());
    assert_eq!(
        h.asks
            .iter()
            .filter(|a| matches!(a, Ask::Mail { .. }))
            .count(),
        1
    );
}

#[test]
fn bare_lf_normalized_when_configured() {
    let mut cfg = config();
    cfg.bare_line_endings = BareLineEndings::Normalize;
    let mut h = harness_with(cfg, IpAddr::V4(Ipv4Addr::LOCALHOST));
    h.send(b"EHLO c\r\n");
    h.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@localhost>\r\nDATA\r\n");
    assert!(h.send(b"a\nb\r\n.\r\n").starts_with("250 2.0.0"));
    assert_eq!(h.committed[0].data, b"a\r\nb\r\n");
}

#[test]
fn command_line_limit_is_512_octets() {
    let mut h = harness();
    let mut ok = b"NOOP ".to_vec();
    ok.resize(510, b'a');
    ok.extend_from_slice(b"\r\n");
    assert_eq!(h.send(&ok), "250 2.0.0 OK\r\n");
    let mut long = b"NOOP ".to_vec();
    long.resize(5000, b'a');
    // Sent in pieces: the session never holds more than the limit.
    for chunk in long.chunks(700) {
        assert_eq!(h.send(chunk), "");
        assert!(h.session.buffered() <= 4096);
    }
    assert_eq!(
        h.send(b"\r\nNOOP\r\n"),
        "500 5.5.0 Command line too long\r\n250 2.0.0 OK\r\n"
    );
}

#[test]
fn twenty_sixth_unknown_command_closes_with_421() {
    let mut h = harness();
    for _ in 0..25 {
        assert!(h.send(b"FOO\r\n").starts_with("500 5.5.1"));
    }
    assert_eq!(
        h.send(b"FOO\r\n"),
        "421 4.7.0 mx.example.test Too many bad commands; closing connection\r\n"
    );
    assert!(h.session.is_closed());
    assert!(h.notes.contains(&enforced(Finding::TooManyBadCommands)));
}

#[test]
fn nul_bytes_and_garbage_never_break_the_session() {
    let mut h = harness();
    let mut r = h.send(b"\x00\x00\xff\xfe\r\nEHLO \x00\r\n");
    r += &h.send(b"MAIL FROM:<\x00@x>\r\n");
    assert_eq!(
        r,
        "500 5.5.1 Command unrecognized: \"\\x00\\x00\\xff\\xfe\"\r\n501 5.5.4 Invalid domain name\r\n501 5.1.7 Bad sender address syntax\r\n"
    );
}

#[test]
fn command_timeout_closes_without_reply_and_is_noted() {
    let mut h = harness();
    h.ehlo();
    assert_eq!(h.advance(Duration::from_secs(299)), "");
    assert!(!h.session.is_closed());
    assert_eq!(h.advance(Duration::from_secs(1)), "");
    assert!(h.session.is_closed());
    assert_eq!(
        h.notes,
        vec![Note::CommandTimeout {
            phase: WaitPhase::Mail
        }]
    );
}

#[test]
fn phase_timeouts_are_capped_by_command() {
    let mut cfg = config();
    cfg.timeouts.initial = Duration::from_secs(600);
    cfg.timeouts.command = Duration::from_secs(30);
    let mut h = harness_with(cfg, IpAddr::V4(Ipv4Addr::LOCALHOST));
    h.advance(Duration::from_secs(30));
    assert_eq!(
        h.notes,
        vec![Note::CommandTimeout {
            phase: WaitPhase::Initial
        }]
    );
}

#[test]
fn data_timeout_sends_421_4_4_1() {
    let mut cfg = config();
    cfg.timeouts.datablock = Duration::from_secs(5);
    cfg.timeouts.datainit = Duration::from_secs(7);
    let mut h = harness_with(cfg, IpAddr::V4(Ipv4Addr::LOCALHOST));
    h.send(b"EHLO c\r\n");
    h.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@localhost>\r\nDATA\r\n");
    assert_eq!(
        h.advance(Duration::from_secs(6)),
        "",
        "datainit (7s) applies before the first data"
    );
    h.send(b"some data\r\n");
    assert_eq!(
        h.advance(Duration::from_secs(5)),
        "421 4.4.1 mx.example.test Timeout waiting for data\r\n"
    );
    assert!(h.session.is_closed());
    assert!(h.notes.contains(&Note::DataTimeout));
    assert!(h.committed.is_empty());
}

#[test]
fn commit_timeout_answers_451() {
    let mut h = harness();
    h.hold_commits = true;
    h.send(b"EHLO c\r\n");
    h.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@localhost>\r\nDATA\r\n");
    h.send(b"x\r\n.\r\n");
    assert_eq!(
        h.advance(Duration::from_secs(600)),
        "451 4.3.0 Temporary system failure. Please try again later.\r\n"
    );
    // A late commit result changes nothing.
    h.session.commit_done(Ok(()), h.now);
    assert_eq!(h.pump(), "");
}

#[test]
fn shutdown_idle_session_gets_421() {
    let mut h = harness();
    h.ehlo();
    h.session.shutdown();
    assert_eq!(
        h.pump(),
        "421 4.3.2 mx.example.test Service shutting down\r\n"
    );
    assert!(h.session.is_closed());
}

#[test]
fn shutdown_during_data_lets_the_message_finish() {
    let mut h = harness();
    h.send(b"EHLO c\r\n");
    h.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@localhost>\r\nDATA\r\n");
    h.send(b"part\r\n");
    h.session.shutdown();
    assert_eq!(h.pump(), "");
    assert_eq!(
        h.send(b"rest\r\n.\r\n"),
        "250 2.0.0 6ALBkAGx022139 Message accepted for delivery\r\n421 4.3.2 mx.example.test Service shutting down\r\n"
    );
    assert_eq!(h.committed.len(), 1);
}

#[test]
fn eof_in_data_loses_nothing_acknowledged() {
    let mut h = harness();
    h.send(b"EHLO c\r\n");
    h.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@localhost>\r\nDATA\r\n");
    h.send(b"part\r\n");
    h.session.handle_eof(h.now);
    h.pump();
    assert!(h.committed.is_empty());
    assert_eq!(h.notes, vec![Note::ClientClosed { in_data: true }]);
}

#[test]
fn recipient_hard_cap() {
    let mut cfg = config();
    cfg.max_recipients = 2;
    let mut h = harness_with(cfg, IpAddr::V4(Ipv4Addr::LOCALHOST));
    h.send(b"EHLO c\r\n");
    h.send(b"MAIL FROM:<a@b.c>\r\n");
    h.send(b"RCPT TO:<a@localhost>\r\nRCPT TO:<b@localhost>\r\n");
    assert_eq!(
        h.send(b"RCPT TO:<c@localhost>\r\n"),
        "452 4.5.3 Too many recipients\r\n"
    );
    // Logged like the configured limit's (Sendmail logs every excess RCPT).
    assert_eq!(h.notes, vec![enforced(Finding::TooManyRecipients)]);
}

#[test]
fn ipv6_clients_shown_in_sendmail_form() {
    let mut h = harness_with(config(), IpAddr::V6(Ipv6Addr::LOCALHOST));
    assert_eq!(
        h.send(b"HELO x\r\n"),
        "250 mx.example.test Hello [IPv6:0:0:0:0:0:0:0:1], pleased to meet you\r\n"
    );
}

#[test]
fn received_header_format() {
    let client = ClientInfo {
        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        name: Some("localhost".into()),
    };
    let h = received_header(
        "mx.example.test",
        &client,
        "c.example",
        "ESMTP",
        "QID1",
        None,
        &["a@localhost".into()],
        "DATE",
    );
    assert_eq!(
        h,
        "Received: from c.example (localhost [127.0.0.1])\r\n\tby mx.example.test (Portcullis) with ESMTP id QID1\r\n\tfor <a@localhost>; DATE\r\n"
    );
    let anon = ClientInfo {
        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        name: None,
    };
    let h = received_header(
        "mx",
        &anon,
        "c",
        "SMTP",
        "Q",
        None,
        &["a@x".into(), "b@x".into()],
        "D",
    );
    assert_eq!(
        h,
        "Received: from c ([127.0.0.1])\r\n\tby mx (Portcullis) with SMTP id Q; D\r\n"
    );
}

mod fuzzish {
    use super::*;
    use proptest::prelude::*;

    /// Pieces a hostile client might send, mixed with random bytes.
    fn chunk() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..600),
            Just(b"EHLO x\r\n".to_vec()),
            Just(b"MAIL FROM:<a@b.c>\r\n".to_vec()),
            Just(b"RCPT TO:<d@localhost>\r\n".to_vec()),
            Just(b"DATA\r\n".to_vec()),
            Just(b"\r\n.\r\n".to_vec()),
            Just(b"\n.\n".to_vec()),
            Just(vec![0u8; 700]),
            Just(vec![b'.'; 3]),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Whatever arrives, in whatever pieces, with time passing: no panic, every reply line
        /// is `NNN` + space or dash, and the session's buffers stay bounded.
        #[test]
        fn hostile_input_never_breaks_the_session(chunks in proptest::collection::vec(chunk(), 1..40), gaps in proptest::collection::vec(0u64..400, 40)) {
            let mut h = harness();
            for (i, c) in chunks.iter().enumerate() {
                if h.session.is_closed() { break; }
                if h.session.wants_input() {
                    h.session.handle_input(c, h.now);
                }
                h.pump();
                prop_assert!(h.session.buffered() < 1000 + 4096 + 64 * 1024, "buffered {}", h.session.buffered());
                h.advance(Duration::from_secs(gaps[i % gaps.len()]));
            }
            for line in h.out.split("\r\n").filter(|l| !l.is_empty()) {
                let b = line.as_bytes();
                prop_assert!(b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && (b[3] == b' ' || b[3] == b'-'), "bad reply line {line:?}");
            }
        }

        /// The same with every in-session defence armed, under any action and per-client
        /// switches: still no panic, bounded buffers, well-formed replies, and a session
        /// that is never delayed past its budget.
        #[test]
        fn hostile_input_with_every_defence_armed(
            chunks in proptest::collection::vec(chunk(), 1..40),
            gaps in proptest::collection::vec(0u64..400, 40),
            actions in proptest::collection::vec(0u8..3, 6),
            pipelining in any::<bool>(),
            features in 0u8..4,
        ) {
            let action = |i: usize| match actions[i] {
                0 => Action::Enforce,
                1 => Action::Drop,
                _ => Action::Ignore,
            };
            let mut cfg = config();
            cfg.pipelining = pipelining;
            cfg.max_noop_commands = 2;
            cfg.max_recipients_per_message = 1;
            cfg.bad_rcpt_throttle = 1;
            cfg.bad_rcpt_shutdown = 3;
            cfg.delay_budget = Duration::from_secs(10);
            cfg.actions = portcullis_smtp::DefenceActions {
                open_proxy: action(0),
                max_recipients: action(1),
                bad_rcpt: action(2),
                stuffing: action(3),
                pipelining: action(4),
                command_abuse: action(5),
            };
            let mut h = harness_with(cfg, client());
            h.session.set_features(ClientFeatures {
                no_pipelining: features & 1 != 0,
                lax_pipelining: features & 2 != 0,
            });
            h.policy = Box::new(unknown_bad_users);
            for (i, c) in chunks.iter().enumerate() {
                if h.session.is_closed() { break; }
                if h.session.wants_input() {
                    h.session.handle_input(c, h.now);
                }
                h.pump();
                prop_assert!(h.session.buffered() < 1000 + 4096 + 64 * 1024, "buffered {}", h.session.buffered());
                prop_assert!(h.session.stats().delayed <= Duration::from_secs(10));
                h.advance(Duration::from_secs(gaps[i % gaps.len()]));
            }
            for line in h.out.split("\r\n").filter(|l| !l.is_empty()) {
                let b = line.as_bytes();
                prop_assert!(b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && (b[3] == b' ' || b[3] == b'-'), "bad reply line {line:?}");
            }
        }
    }
}

/// A session in Sendmail's rejecting mode after pre-greeting traffic (reference section a).
fn rejecting() -> Harness {
    let now = Instant::now();
    let cfg = Arc::new(config());
    let client = ClientInfo {
        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        name: Some("localhost".into()),
    };
    let greeting = reply::not_accepting(&cfg.hostname);
    let mut session = Session::with_greeting(cfg, client, &greeting, now);
    session.reject_commands(reply::command_rejected());
    let mut h = Harness::around(session, now);
    h.policy = Box::new(|ask| panic!("policy asked in rejecting mode: {ask:?}"));
    assert_eq!(
        h.pump(),
        "554 mx.example.test ESMTP not accepting messages\r\n"
    );
    h
}

#[test]
fn rejecting_mode_answers_like_sendmails_null_server() {
    let mut h = rejecting();
    assert_eq!(
        h.send(b"EHLO client.example.org\r\n"),
        "250-mx.example.test Hello localhost [127.0.0.1], pleased to meet you\r\n\
         250 ENHANCEDSTATUSCODES\r\n"
    );
    assert_eq!(
        h.send(b"HELO client.example.org\r\n"),
        "250 mx.example.test Hello localhost [127.0.0.1], pleased to meet you\r\n"
    );
    for cmd in [
        "MAIL FROM:<alice@example.org>",
        "RCPT TO:<root@mx.example.test>",
        "DATA",
        "VRFY root",
        "EXPN root",
        "ETRN example.org",
        "HELP",
        "AUTH PLAIN AGFsaWNlAHNlY3JldA==",
        "STARTTLS",
        "VERB",
        "MAIL garbage",
    ] {
        assert_eq!(
            h.send(format!("{cmd}\r\n").as_bytes()),
            "550 5.0.0 Command rejected\r\n",
            "{cmd}"
        );
    }
    assert_eq!(h.send(b"NOOP\r\n"), "250 2.0.0 OK\r\n");
    assert_eq!(h.send(b"RSET\r\n"), "250 2.0.0 Reset state\r\n");
    assert_eq!(
        h.send(b"FOOBAR baz\r\n"),
        "500 5.5.1 Command unrecognized: \"FOOBAR baz\"\r\n"
    );
    assert_eq!(
        h.send(b"QUIT\r\n"),
        "221 2.0.0 mx.example.test closing connection\r\n"
    );
    assert!(h.session.is_closed());
    assert!(h.committed.is_empty() && h.asks.is_empty());
}

#[test]
fn rejecting_mode_closes_on_the_26th_refusal() {
    let mut h = rejecting();
    for n in 1..=25 {
        // Unknown commands and RSETs in between do not count.
        h.send(b"RSET\r\n");
        h.send(b"XYZZY\r\n");
        assert_eq!(
            h.send(b"MAIL FROM:<a@b.example>\r\n"),
            "550 5.0.0 Command rejected\r\n",
            "refusal {n}"
        );
    }
    assert_eq!(
        h.send(b"DATA\r\n"),
        "421 4.7.0 mx.example.test Too many bad commands; closing connection\r\n"
    );
    assert!(h.session.is_closed());
    assert!(h.notes.contains(&enforced(Finding::TooManyBadCommands)));
}

#[test]
fn rejecting_mode_answers_a_slammed_session_line_by_line() {
    // The seeds' netcat slam, written in one go: the body lines become unknown commands.
    // Sendmail 8.18 refuses the stuffed HELO too (reference section a, "slamming client").
    let slam: &[u8] = b"HELO client.example.org\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<root@mx.example.test>\r\n\
          DATA\r\nSubject: t\r\n\r\nhello\r\n.\r\nQUIT\r\n";
    let rest = "550 5.0.0 Command rejected\r\n\
         550 5.0.0 Command rejected\r\n\
         550 5.0.0 Command rejected\r\n\
         500 5.5.1 Command unrecognized: \"Subject: t\"\r\n\
         500 5.5.1 Command unrecognized: \"\"\r\n\
         500 5.5.1 Command unrecognized: \"hello\"\r\n\
         500 5.5.1 Command unrecognized: \".\"\r\n\
         221 2.0.0 mx.example.test closing connection\r\n";
    let mut h = rejecting();
    assert_eq!(
        h.send(slam),
        format!("554 5.5.0 SMTP protocol error\r\n{rest}")
    );
    let Note::Defence {
        finding: Finding::Stuffing { command, next },
        action: Action::Enforce,
    } = &h.notes[0]
    else {
        panic!("{:?}", h.notes)
    };
    assert_eq!(
        (*command, next.as_str()),
        (
            "HELO",
            "MAIL FROM:<alice@example.org>\\x0d\\x0aRCPT TO:<..."
        )
    );
    // With `Srv_Features: F`, the classic 8.13-8.17 answers: the HELO is greeted.
    let mut h = rejecting();
    h.session.set_features(ClientFeatures {
        lax_pipelining: true,
        ..ClientFeatures::default()
    });
    let out = h.send(slam);
    assert!(h.notes.is_empty(), "{:?}", h.notes);
    assert_eq!(
        out,
        "250 mx.example.test Hello localhost [127.0.0.1], pleased to meet you\r\n\
         550 5.0.0 Command rejected\r\n\
         550 5.0.0 Command rejected\r\n\
         550 5.0.0 Command rejected\r\n\
         500 5.5.1 Command unrecognized: \"Subject: t\"\r\n\
         500 5.5.1 Command unrecognized: \"\"\r\n\
         500 5.5.1 Command unrecognized: \"hello\"\r\n\
         500 5.5.1 Command unrecognized: \".\"\r\n\
         221 2.0.0 mx.example.test closing connection\r\n"
    );
}

fn load_delay() -> Option<CommandDelay> {
    Some(CommandDelay {
        each: Duration::from_secs(1),
        reason: "load average=3 >= 2".to_owned(),
    })
}

#[test]
fn command_delay_holds_each_command_but_quit_rset_and_the_dot() {
    let mut h = harness();
    h.session.set_command_delay(load_delay());
    // EHLO waits 1 s: nothing before, the reply at +1 s; no input is read meanwhile.
    assert_eq!(h.send(b"EHLO client.example.org\r\n"), "");
    assert!(!h.session.wants_input());
    assert_eq!(h.advance(Duration::from_millis(999)), "");
    assert!(
        h.advance(Duration::from_millis(1))
            .starts_with("250-mx.example.test Hello")
    );
    assert_eq!(
        h.notes,
        vec![Note::Delaying {
            command: "EHLO",
            reason: "load average=3 >= 2".to_owned()
        }]
    );
    // A pipelined group waits 1 s per command, in order.
    assert_eq!(
        h.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n"),
        ""
    );
    assert!(h.advance(Duration::from_secs(1)).starts_with("250 2.1.0"));
    assert!(h.advance(Duration::from_secs(1)).starts_with("250 2.1.5"));
    assert!(h.advance(Duration::from_secs(1)).starts_with("354"));
    // The end-of-data dot is answered at once.
    assert!(
        h.send(b"Subject: x\r\n\r\nhi\r\n.\r\n")
            .starts_with("250 2.0.0")
    );
    // RSET and QUIT are never delayed.
    assert_eq!(h.send(b"RSET\r\n"), "250 2.0.0 Reset state\r\n");
    assert!(h.send(b"QUIT\r\n").starts_with("221"));
    // Logged once: the next note is due 15 s after the first.
    assert_eq!(h.notes.len(), 1);
    assert_eq!(h.session.stats().delayed, Duration::from_secs(4));
}

#[test]
fn command_delay_is_noted_again_after_fifteen_seconds_and_stops_when_cleared() {
    let mut h = harness();
    h.session.set_command_delay(load_delay());
    h.send(b"NOOP\r\n");
    h.advance(Duration::from_secs(1));
    h.advance(Duration::from_secs(14));
    h.send(b"NOOP\r\n");
    h.advance(Duration::from_secs(1));
    assert_eq!(h.notes.len(), 2, "{:?}", h.notes);
    h.session.set_command_delay(None);
    assert_eq!(h.send(b"NOOP\r\n"), "250 2.0.0 OK\r\n");
    assert_eq!(h.session.stats().delayed, Duration::from_secs(2));
}

#[test]
fn past_the_delay_budget_the_session_gets_421_instead_of_a_delay() {
    let mut cfg = config();
    cfg.delay_budget = Duration::from_secs(2);
    let mut h = harness_with(cfg, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    h.session.set_command_delay(load_delay());
    h.send(b"NOOP\r\n");
    assert_eq!(h.advance(Duration::from_secs(1)), "250 2.0.0 OK\r\n");
    h.send(b"NOOP\r\n");
    assert_eq!(h.advance(Duration::from_secs(1)), "250 2.0.0 OK\r\n");
    // The third delay would make 3 s > 2 s: answered at once with 421, and closed.
    assert_eq!(
        h.send(b"NOOP\r\n"),
        "421 4.3.2 mx.example.test Too busy; please try again later\r\n"
    );
    assert!(h.session.is_closed());
    assert_eq!(
        h.notes.last(),
        Some(&Note::DelayBudgetSpent {
            spent: Duration::from_secs(2),
            command: "NOOP"
        })
    );
}

#[test]
fn shutdown_during_a_delay_answers_421_at_once() {
    let mut h = harness();
    h.session.set_command_delay(load_delay());
    h.send(b"EHLO client.example.org\r\n");
    h.session.shutdown();
    assert_eq!(
        h.pump(),
        "421 4.3.2 mx.example.test Service shutting down\r\n"
    );
    assert!(h.session.is_closed());
}

/// Rejects `bad*` local parts as unknown users.
fn unknown_bad_users(ask: &Ask) -> Verdict {
    match ask {
        Ask::Rcpt {
            recipient: ReversePath::Mailbox(m),
            ..
        } if m.local.starts_with("bad") => Verdict::Reject(reply::user_unknown(m)),
        _ => Verdict::Accept,
    }
}

#[test]
fn max_recipients_per_message_counts_accepted_recipients_only() {
    // Reference section d: 1 good + 1 unknown + 2 good with a limit of 3 -> the 4th good
    // RCPT gets 452 (3 accepted); the message goes to the accepted ones; a new MAIL resets.
    let mut cfg = config();
    cfg.max_recipients_per_message = 3;
    let mut h = harness_with(cfg, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    h.policy = Box::new(unknown_bad_users);
    h.ehlo();
    h.send(b"MAIL FROM:<a@example.org>\r\n");
    assert!(h.send(b"RCPT TO:<r1@localhost>\r\n").starts_with("250"));
    assert!(h.send(b"RCPT TO:<bad1@localhost>\r\n").starts_with("550"));
    assert!(h.send(b"RCPT TO:<r2@localhost>\r\n").starts_with("250"));
    assert!(h.send(b"RCPT TO:<r3@localhost>\r\n").starts_with("250"));
    assert_eq!(
        h.send(b"RCPT TO:<r4@localhost>\r\n"),
        "452 4.5.3 Too many recipients\r\n"
    );
    assert_eq!(h.notes, vec![enforced(Finding::TooManyRecipients)]);
    h.send(b"DATA\r\n");
    assert!(h.send(b"x\r\n.\r\n").starts_with("250 2.0.0"));
    assert_eq!(
        h.committed[0].recipients,
        vec!["r1@localhost", "r2@localhost", "r3@localhost"]
    );
    h.send(b"MAIL FROM:<a@example.org>\r\n");
    assert!(h.send(b"RCPT TO:<r4@localhost>\r\n").starts_with("250"));
}

#[test]
fn bad_rcpt_throttle_delays_every_later_rcpt_of_the_transaction() {
    // Reference section e: throttle 2; the 3rd and later RCPTs (good ones too) wait 1 s;
    // noted once per transaction; a new MAIL resets the count.
    let mut cfg = config();
    cfg.bad_rcpt_throttle = 2;
    let mut h = harness_with(cfg, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    h.policy = Box::new(unknown_bad_users);
    h.ehlo();
    h.send(b"MAIL FROM:<a@example.org>\r\n");
    assert!(h.send(b"RCPT TO:<bad1@localhost>\r\n").starts_with("550"));
    assert!(h.send(b"RCPT TO:<bad2@localhost>\r\n").starts_with("550"));
    assert_eq!(h.send(b"RCPT TO:<bad3@localhost>\r\n"), "");
    assert_eq!(
        h.notes,
        vec![enforced(Finding::RcptFlood(RcptFlood::Throttling))]
    );
    assert_eq!(h.advance(Duration::from_millis(999)), "");
    assert!(h.advance(Duration::from_millis(1)).starts_with("550"));
    assert_eq!(h.send(b"RCPT TO:<good@localhost>\r\n"), "");
    assert!(h.advance(Duration::from_secs(1)).starts_with("250 2.1.5"));
    assert_eq!(h.notes.len(), 1, "noted once per transaction");
    // Other commands are not throttled; MAIL resets the count.
    assert_eq!(h.send(b"RSET\r\n"), "250 2.0.0 Reset state\r\n");
    h.send(b"MAIL FROM:<b@example.org>\r\n");
    assert!(h.send(b"RCPT TO:<good@localhost>\r\n").starts_with("250"));
    assert_eq!(h.session.stats().delayed, Duration::from_secs(2));
}

#[test]
fn bad_rcpt_throttle_within_the_delay_budget() {
    let mut cfg = config();
    cfg.bad_rcpt_throttle = 1;
    cfg.delay_budget = Duration::from_secs(1);
    let mut h = harness_with(cfg, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    h.policy = Box::new(unknown_bad_users);
    h.ehlo();
    h.send(b"MAIL FROM:<a@example.org>\r\n");
    h.send(b"RCPT TO:<bad1@localhost>\r\n");
    h.send(b"RCPT TO:<bad2@localhost>\r\n");
    assert!(h.advance(Duration::from_secs(1)).starts_with("550"));
    assert_eq!(
        h.send(b"RCPT TO:<bad3@localhost>\r\n"),
        "421 4.3.2 mx.example.test Too busy; please try again later\r\n"
    );
    assert!(h.session.is_closed());
}

#[test]
fn bad_rcpt_shutdown_closes_after_that_many_bad_recipients_in_the_session() {
    let mut cfg = config();
    cfg.bad_rcpt_shutdown = 2;
    let mut h = harness_with(cfg, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    h.policy = Box::new(unknown_bad_users);
    h.ehlo();
    h.send(b"MAIL FROM:<a@example.org>\r\n");
    assert!(h.send(b"RCPT TO:<bad1@localhost>\r\n").starts_with("550"));
    // A syntax error in a RCPT counts too; a new MAIL does not reset the session's count.
    assert!(h.send(b"RCPT TO:<<>\r\n").starts_with("5"));
    h.send(b"RSET\r\n");
    h.send(b"MAIL FROM:<a@example.org>\r\n");
    assert_eq!(
        h.send(b"RCPT TO:<good@localhost>\r\n"),
        "421 4.7.0 mx.example.test Too many bad recipients; closing connection\r\n"
    );
    assert!(h.session.is_closed());
    assert_eq!(
        h.notes,
        vec![enforced(Finding::RcptFlood(RcptFlood::ShuttingDown))]
    );
}

/// A config with every session defence set to `action`.
fn with_actions(action: Action) -> SessionConfig {
    let mut cfg = config();
    cfg.actions = portcullis_smtp::DefenceActions {
        open_proxy: action,
        max_recipients: action,
        bad_rcpt: action,
        stuffing: action,
        pipelining: action,
        command_abuse: action,
    };
    cfg
}

fn client() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))
}

#[test]
fn stuffing_after_ehlo_refuses_it_and_rejects_commands() {
    // Reference section j: `EHLO`+`MAIL` in one write.
    let mut h = harness();
    assert_eq!(
        h.send(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\n"),
        "554 5.5.0 SMTP protocol error\r\n550 5.0.0 Command rejected\r\n"
    );
    assert!(h.session.is_rejecting());
    assert_eq!(
        h.send(b"QUIT\r\n"),
        "221 2.0.0 mx.example.test closing connection\r\n"
    );
    assert!(h.asks.is_empty(), "nothing asked of policy: {:?}", h.asks);
}

#[test]
fn stuffing_after_data_is_refused_and_closed_before_354() {
    // Reference section j: data after DATA before the 354 -> 554, close, no 221.
    let mut h = harness();
    h.ehlo();
    let r = h.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@localhost>\r\nDATA\r\nSubject: x\r\n");
    assert_eq!(
        r,
        "250 2.1.0 <a@b.c>... Sender ok\r\n250 2.1.5 <d@localhost>... Recipient ok\r\n\
         554 5.5.0 SMTP protocol error\r\n"
    );
    assert!(h.session.is_closed());
    assert!(h.committed.is_empty());
    assert_eq!(
        h.notes,
        vec![enforced(Finding::Stuffing {
            command: "DATA",
            next: "Subject: x\\x0d\\x0a".into()
        })]
    );
}

#[test]
fn stuffing_actions_drop_and_ignore() {
    let mut h = harness_with(with_actions(Action::Drop), client());
    assert_eq!(h.send(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\n"), "");
    assert!(h.session.is_closed());
    let mut h = harness_with(with_actions(Action::Ignore), client());
    let r = h.send(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\n");
    assert!(r.starts_with("250-mx.example.test"), "{r}");
    assert!(r.ends_with("250 2.1.0 <a@b.c>... Sender ok\r\n"), "{r}");
    assert!(matches!(
        h.notes[..],
        [Note::Defence {
            finding: Finding::Stuffing {
                command: "EHLO",
                ..
            },
            action: Action::Ignore
        }]
    ));
}

#[test]
fn pipelining_off_is_not_advertised_and_enforced() {
    let mut cfg = config();
    cfg.pipelining = false;
    let mut h = harness_with(cfg, client());
    let r = h.send(b"EHLO c\r\n");
    assert!(!r.contains("PIPELINING"), "{r}");
    assert!(r.contains("250-8BITMIME"), "{r}");
    // One command at a time is fine.
    assert!(h.send(b"MAIL FROM:<a@b.c>\r\n").starts_with("250"));
    // Two at once: the first gets 554 and the connection closes.
    assert_eq!(
        h.send(b"RCPT TO:<d@localhost>\r\nRCPT TO:<e@localhost>\r\n"),
        "554 5.5.0 SMTP protocol synchronization error\r\n"
    );
    assert!(h.session.is_closed());
    assert_eq!(
        h.notes,
        vec![enforced(Finding::Unsynchronized {
            command: "RCPT",
            next: "RCPT TO:<e@localhost>\\x0d\\x0a".into()
        })]
    );
}

#[test]
fn pipelining_off_covers_the_end_of_data() {
    let mut cfg = config();
    cfg.pipelining = false;
    let mut h = harness_with(cfg, client());
    h.send(b"EHLO c\r\n");
    h.send(b"MAIL FROM:<a@b.c>\r\n");
    h.send(b"RCPT TO:<d@localhost>\r\n");
    assert!(h.send(b"DATA\r\n").starts_with("354"));
    // QUIT before the 250: refused, and the message is not taken (no 250 was given).
    assert_eq!(
        h.send(b"x\r\n.\r\nQUIT\r\n"),
        "554 5.5.0 SMTP protocol synchronization error\r\n"
    );
    assert!(h.committed.is_empty());
}

#[test]
fn pipelining_off_actions_drop_and_ignore() {
    let mut cfg = with_actions(Action::Drop);
    cfg.pipelining = false;
    let mut h = harness_with(cfg, client());
    h.send(b"EHLO c\r\n");
    assert_eq!(
        h.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@localhost>\r\n"),
        ""
    );
    assert!(h.session.is_closed());

    let mut cfg = with_actions(Action::Ignore);
    cfg.pipelining = false;
    let mut h = harness_with(cfg, client());
    h.send(b"EHLO c\r\n");
    let r = h.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@localhost>\r\nRCPT TO:<e@localhost>\r\n");
    assert_eq!(r.matches("250 ").count(), 3, "{r}");
    let unsynchronized = h
        .notes
        .iter()
        .filter(|n| {
            matches!(
                n,
                Note::Defence {
                    finding: Finding::Unsynchronized { .. },
                    ..
                }
            )
        })
        .count();
    assert_eq!(unsynchronized, 1, "noted once per session: {:?}", h.notes);
}

#[test]
fn srv_features_p_hides_pipelining_and_f_exempts() {
    let mut h = harness();
    h.session.set_features(ClientFeatures::parse("P"));
    let r = h.send(b"EHLO c\r\n");
    assert!(!r.contains("PIPELINING"), "{r}");
    assert_eq!(
        h.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@localhost>\r\n"),
        "554 5.5.0 SMTP protocol synchronization error\r\n"
    );
    // `F` exempts from both checks, even with PIPELINING hidden.
    let mut h = harness();
    h.session.set_features(ClientFeatures::parse("PF"));
    let r = h.send(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@localhost>\r\nDATA\r\nx\r\n.\r\n");
    assert!(!r.contains("PIPELINING"), "{r}");
    assert!(
        r.ends_with("250 2.0.0 6ALBkAGx022139 Message accepted for delivery\r\n"),
        "{r}"
    );
    assert!(h.notes.is_empty(), "{:?}", h.notes);
    // Lower-case letters are other features (Sendmail: the opposite meaning).
    assert_eq!(ClientFeatures::parse("pf"), ClientFeatures::default());
}

#[test]
fn helo_flood_doubles_the_delay_from_the_third() {
    // Reference "checksmtpattack": 6 EHLOs answered at +0, +0, +1, +3, +7, +15.
    let mut h = harness();
    let mut answered = Vec::new();
    let start = h.now;
    for _ in 0..6 {
        let mut r = h.send(b"EHLO c\r\n");
        while r.is_empty() {
            r = h.advance(Duration::from_millis(500));
        }
        answered.push((h.now - start).as_millis());
    }
    assert_eq!(answered, vec![0, 0, 1000, 3000, 7000, 15000]);
    assert_eq!(
        h.notes,
        vec![enforced(Finding::CommandFlood {
            command: "HELO/EHLO",
            count: 3
        })]
    );
}

#[test]
fn noop_flood_is_delayed_from_the_limit_within_the_budget() {
    let mut cfg = config();
    cfg.max_noop_commands = 2;
    cfg.delay_budget = Duration::from_secs(3);
    let mut h = harness_with(cfg, client());
    assert_eq!(h.send(b"NOOP\r\n"), "250 2.0.0 OK\r\n");
    assert_eq!(h.send(b"NOOP\r\n"), "");
    assert_eq!(h.advance(Duration::from_secs(1)), "250 2.0.0 OK\r\n");
    assert_eq!(h.send(b"NOOP\r\n"), "");
    assert_eq!(h.advance(Duration::from_secs(2)), "250 2.0.0 OK\r\n");
    // 1 + 2 s spent; the next would wait 4 s: past the 3 s budget.
    assert_eq!(
        h.send(b"NOOP\r\n"),
        "421 4.3.2 mx.example.test Too busy; please try again later\r\n"
    );
    // VRFY has a counter of its own (6), untouched by the NOOPs.
    let mut h = harness();
    for _ in 0..5 {
        assert!(h.send(b"VRFY x\r\n").starts_with("252"));
    }
    assert_eq!(h.send(b"VRFY x\r\n"), "");
    assert_eq!(
        h.notes,
        vec![enforced(Finding::CommandFlood {
            command: "VRFY/EXPN",
            count: 6
        })]
    );
}

#[test]
fn command_abuse_actions_drop_and_ignore() {
    let mut h = harness_with(with_actions(Action::Drop), client());
    h.send(b"EHLO c\r\n");
    h.send(b"EHLO c\r\n");
    assert_eq!(h.send(b"EHLO c\r\n"), "");
    assert!(h.session.is_closed());
    let mut h = harness_with(with_actions(Action::Ignore), client());
    for _ in 0..5 {
        assert!(h.send(b"EHLO c\r\n").starts_with("250-"));
    }
    for _ in 0..30 {
        assert!(h.send(b"XYZZY\r\n").starts_with("500"));
    }
    assert_eq!(h.notes.len(), 2, "{:?}", h.notes);
    assert_eq!(h.session.stats().delayed, Duration::ZERO);
}

#[test]
fn open_proxy_actions_drop_and_ignore() {
    let mut h = harness_with(with_actions(Action::Drop), client());
    assert_eq!(h.send(b"GET / HTTP/1.0\r\n"), "");
    assert!(h.session.is_closed());
    let mut h = harness_with(with_actions(Action::Ignore), client());
    assert_eq!(
        h.send(b"GET / HTTP/1.0\r\n"),
        "500 5.5.1 Command unrecognized: \"GET / HTTP/1.0\"\r\n"
    );
    assert_eq!(
        h.notes,
        vec![Note::Defence {
            finding: Finding::OpenProxy {
                command: "GET / HTTP/1.0".into()
            },
            action: Action::Ignore
        }]
    );
}

#[test]
fn recipient_defences_drop_and_ignore() {
    let mut cfg = with_actions(Action::Ignore);
    cfg.max_recipients_per_message = 1;
    cfg.bad_rcpt_throttle = 1;
    cfg.bad_rcpt_shutdown = 2;
    let mut h = harness_with(cfg, client());
    h.policy = Box::new(unknown_bad_users);
    h.ehlo();
    h.send(b"MAIL FROM:<a@example.org>\r\n");
    assert!(h.send(b"RCPT TO:<bad1@localhost>\r\n").starts_with("550"));
    assert!(h.send(b"RCPT TO:<bad2@localhost>\r\n").starts_with("550"));
    assert!(h.send(b"RCPT TO:<r1@localhost>\r\n").starts_with("250"));
    // Past the limit of 1, past the throttle and the shutdown: all answered at once.
    assert!(h.send(b"RCPT TO:<r2@localhost>\r\n").starts_with("250"));
    assert!(h.send(b"RCPT TO:<r3@localhost>\r\n").starts_with("250"));
    assert_eq!(h.session.stats().delayed, Duration::ZERO);
    let findings: Vec<_> = h
        .notes
        .iter()
        .map(|n| match n {
            Note::Defence {
                finding,
                action: Action::Ignore,
            } => finding.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        findings,
        vec![
            Finding::RcptFlood(RcptFlood::Throttling),
            Finding::RcptFlood(RcptFlood::ShuttingDown),
            Finding::TooManyRecipients,
            Finding::TooManyRecipients,
        ]
    );

    let mut cfg = with_actions(Action::Drop);
    cfg.max_recipients_per_message = 1;
    let mut h = harness_with(cfg, client());
    h.ehlo();
    h.send(b"MAIL FROM:<a@example.org>\r\n");
    assert!(h.send(b"RCPT TO:<r1@localhost>\r\n").starts_with("250"));
    assert_eq!(h.send(b"RCPT TO:<r2@localhost>\r\n"), "");
    assert!(h.session.is_closed());
}

#[test]
fn ignored_synchronization_leaves_the_stuffing_check_on() {
    let mut cfg = config();
    cfg.pipelining = false;
    cfg.actions.pipelining = Action::Ignore;
    let mut h = harness_with(cfg, client());
    assert_eq!(
        h.send(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\n"),
        "554 5.5.0 SMTP protocol error\r\n550 5.0.0 Command rejected\r\n"
    );
    let kinds: Vec<_> = h
        .notes
        .iter()
        .map(|n| match n {
            Note::Defence { finding, action } => (finding.action_key(), *action),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("smtp.pipelining_action", Action::Ignore),
            ("smtp.stuffing_action", Action::Enforce)
        ]
    );
}

#[test]
fn rejecting_mode_refusals_are_not_slowed_down() {
    // Sendmail's null server refuses VRFY before checksmtpattack counts it: each refusal at
    // once, and the 26th refused command gets the bad-commands 421.
    let mut h = rejecting();
    for n in 1..=25 {
        assert_eq!(
            h.send(b"VRFY root\r\n"),
            "550 5.0.0 Command rejected\r\n",
            "refusal {n}"
        );
    }
    assert_eq!(
        h.send(b"VRFY root\r\n"),
        "421 4.7.0 mx.example.test Too many bad commands; closing connection\r\n"
    );
    assert_eq!(h.session.stats().delayed, Duration::ZERO);
}

#[test]
fn more_drop_actions_close_without_a_reply() {
    // Stuffing after DATA.
    let mut h = harness_with(with_actions(Action::Drop), client());
    h.ehlo();
    let r = h.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@localhost>\r\nDATA\r\nSubject: x\r\n");
    assert_eq!(
        r,
        "250 2.1.0 <a@b.c>... Sender ok\r\n250 2.1.5 <d@localhost>... Recipient ok\r\n"
    );
    assert!(h.session.is_closed());
    // Stuffing after DATA, ignored: the 354 and the message go through.
    let mut h = harness_with(with_actions(Action::Ignore), client());
    h.ehlo();
    let r = h.send(
        b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@localhost>\r\nDATA\r\nSubject: x\r\n\r\nb\r\n.\r\n",
    );
    assert!(
        r.ends_with("250 2.0.0 6ALBkAGx022139 Message accepted for delivery\r\n"),
        "{r}"
    );
    assert_eq!(h.committed.len(), 1);
    // Too many bad commands.
    let mut h = harness_with(with_actions(Action::Drop), client());
    for _ in 0..25 {
        assert!(h.send(b"XYZZY\r\n").starts_with("500"));
    }
    assert_eq!(h.send(b"XYZZY\r\n"), "");
    assert!(h.session.is_closed());
    // The bad-recipient throttle, then the shutdown: each drops the RCPT after a bad one.
    let after_a_bad_rcpt = |set: fn(&mut SessionConfig)| {
        let mut cfg = with_actions(Action::Drop);
        set(&mut cfg);
        let mut h = harness_with(cfg, client());
        h.policy = Box::new(unknown_bad_users);
        h.ehlo();
        h.send(b"MAIL FROM:<a@example.org>\r\n");
        assert!(h.send(b"RCPT TO:<bad1@localhost>\r\n").starts_with("550"));
        assert_eq!(h.send(b"RCPT TO:<r1@localhost>\r\n"), "");
        assert!(h.session.is_closed());
        h
    };
    after_a_bad_rcpt(|cfg| cfg.bad_rcpt_throttle = 1);
    let h = after_a_bad_rcpt(|cfg| cfg.bad_rcpt_shutdown = 1);
    assert_eq!(
        h.notes.last(),
        Some(&Note::Defence {
            finding: Finding::RcptFlood(RcptFlood::ShuttingDown),
            action: Action::Drop
        })
    );
}
