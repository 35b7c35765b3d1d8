//! STARTTLS in the sans-IO session (RFC 3207): scripted bytes, synthetic time, no sockets.
//!
//! The harness plays the driver: it accepts every policy question, commits at once, and when
//! the session asks for a handshake (`Event::StartTls`) the test decides its outcome.

// A test may read the clock once for its starting instant; helpers unwrap freely.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_smtp::{
    Ask, ClientInfo, Event, Message, Session, SessionConfig, TlsInfo, TlsVerify, Verdict,
    WaitPhase, received_header, reply,
};

const TLS13: TlsInfo = TlsInfo {
    version: "TLSv1.3",
    cipher: "TLS_AES_256_GCM_SHA384",
    bits: 256,
    verify: TlsVerify::No,
};

struct Harness {
    session: Session,
    now: Instant,
    asks: Vec<Ask>,
    committed: Vec<Message>,
    /// `discarded` of each `Event::StartTls`.
    starttls: Vec<usize>,
}

impl Harness {
    fn new(starttls: bool) -> Self {
        let mut cfg = SessionConfig::new("mx.example.test");
        cfg.starttls = starttls;
        let now = Instant::now();
        let client = ClientInfo {
            addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            name: None,
        };
        let session = Session::new(Arc::new(cfg), client, "DATE", now);
        let mut h = Self {
            session,
            now,
            asks: Vec::new(),
            committed: Vec::new(),
            starttls: Vec::new(),
        };
        h.pump();
        h
    }

    fn send(&mut self, bytes: &[u8]) -> String {
        self.session.handle_input(bytes, self.now);
        self.pump()
    }

    fn pump(&mut self) -> String {
        while let Some(ev) = self.session.poll_event() {
            match ev {
                Event::Ask(ask) => {
                    if let Ask::Mail { .. } = ask {
                        self.session.set_queue_id("6ALBkAGx022139");
                    }
                    self.asks.push(ask);
                    self.session.answer(Verdict::Accept, self.now);
                }
                Event::Commit(m) => {
                    self.committed.push(*m);
                    self.session.commit_done(Ok(()), self.now);
                }
                Event::Note(_) => {}
                Event::StartTls { discarded } => self.starttls.push(discarded),
            }
        }
        String::from_utf8(self.session.take_output()).unwrap()
    }

    fn ehlo(&mut self) -> String {
        self.send(b"EHLO client.example.org\r\n")
    }

    /// STARTTLS accepted and the handshake done.
    fn start_tls(&mut self) {
        assert_eq!(
            self.send(b"STARTTLS\r\n"),
            "220 2.0.0 Ready to start TLS\r\n"
        );
        self.session.tls_established(TLS13, self.now);
        assert_eq!(self.pump(), "", "nothing is said after the handshake");
    }
}

#[test]
fn advertised_only_when_tls_is_configured_and_not_started() {
    let mut plain = Harness::new(false);
    assert!(!plain.ehlo().contains("STARTTLS"));
    let mut h = Harness::new(true);
    let ehlo = h.ehlo();
    assert!(ehlo.contains("250-STARTTLS\r\n250 HELP\r\n"), "{ehlo}");
    h.start_tls();
    let ehlo = h.ehlo();
    assert!(ehlo.starts_with("250-mx.example.test Hello"), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
}

#[test]
fn unknown_command_without_tls() {
    let mut h = Harness::new(false);
    h.ehlo();
    assert_eq!(
        h.send(b"STARTTLS\r\n"),
        "500 5.5.1 Command unrecognized: \"STARTTLS\"\r\n"
    );
    assert!(h.starttls.is_empty());
}

#[test]
fn refusals_in_sendmails_words() {
    let mut h = Harness::new(true);
    h.ehlo();
    assert_eq!(
        h.send(b"STARTTLS now\r\n"),
        "501 5.5.2 Syntax error (no parameters allowed)\r\n"
    );
    h.send(b"MAIL FROM:<a@example.org>\r\n");
    assert_eq!(
        h.send(b"STARTTLS\r\n"),
        "503 5.5.0 TLS not permitted during a mail transaction\r\n"
    );
    h.send(b"RSET\r\n");
    h.start_tls();
    assert_eq!(
        h.send(b"STARTTLS\r\n"),
        "454 4.3.3 TLS not available after start\r\n"
    );
    assert_eq!(h.starttls, [0]);
}

#[test]
fn ready_reply_waits_for_the_handshake_within_starttls() {
    let mut h = Harness::new(true);
    h.ehlo();
    assert_eq!(h.send(b"STARTTLS\r\n"), "220 2.0.0 Ready to start TLS\r\n");
    assert!(!h.session.wants_input(), "no plaintext is read now");
    let limit = SessionConfig::new("x")
        .timeouts
        .effective(WaitPhase::StartTls);
    assert_eq!(limit, Duration::from_secs(60));
    assert_eq!(h.session.poll_timeout(), Some(h.now + limit));
    // A handshake that does not finish in time ends the session.
    h.now += limit;
    h.session.handle_timeout(h.now);
    assert!(h.session.is_closed());
}

#[test]
fn failed_handshake_closes() {
    let mut h = Harness::new(true);
    h.send(b"STARTTLS\r\n");
    h.session.tls_failed();
    assert!(h.session.is_closed());
    assert_eq!(h.pump(), "");
}

/// CVE-2011-0411: commands pipelined behind STARTTLS in the same packet are discarded, not
/// run inside the TLS session.
#[test]
fn plaintext_after_starttls_is_never_executed() {
    let mut h = Harness::new(true);
    h.ehlo();
    let injected = b"STARTTLS\r\nRSET\r\nMAIL FROM:<evil@x.example>\r\n";
    assert_eq!(h.send(injected), "220 2.0.0 Ready to start TLS\r\n");
    assert_eq!(h.starttls, [injected.len() - b"STARTTLS\r\n".len()]);
    // More plaintext before the handshake is dropped too.
    assert_eq!(h.send(b"RCPT TO:<victim@localhost>\r\n"), "");
    h.session.tls_established(TLS13, h.now);
    assert_eq!(h.pump(), "");
    // The session starts over before EHLO: a MAIL needs a new hello.
    assert_eq!(
        h.send(b"MAIL FROM:<a@example.org>\r\n"),
        "503 5.5.1 Polite people say HELO first\r\n"
    );
    assert_eq!(
        h.asks
            .iter()
            .filter(|a| matches!(a, Ask::Mail { .. }))
            .count(),
        0,
        "no MAIL ever reached policy: {:?}",
        h.asks
    );
}

#[test]
fn state_resets_and_messages_say_esmtps() {
    let mut h = Harness::new(true);
    h.ehlo();
    h.start_tls();
    // The HELO count starts again (Sendmail's n_helo = 0): three more hellos are not delayed.
    for _ in 0..2 {
        assert!(h.ehlo().starts_with("250-"));
    }
    h.send(b"MAIL FROM:<a@example.org>\r\n");
    h.send(b"RCPT TO:<b@localhost>\r\n");
    assert_eq!(
        h.send(b"DATA\r\n"),
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    let r = h.send(b"Subject: x\r\n\r\nhi\r\n.\r\n");
    assert!(r.starts_with("250 2.0.0 "), "{r}");
    let m = &h.committed[0];
    assert_eq!(m.protocol, "ESMTPS");
    assert_eq!(m.tls, Some(TLS13));
    let client = ClientInfo {
        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        name: None,
    };
    let header = received_header(
        "mx.example.test",
        &client,
        &m.helo,
        m.protocol,
        "QID",
        m.tls.as_ref(),
        &m.recipients,
        "DATE",
    );
    assert_eq!(
        header,
        "Received: from client.example.org ([127.0.0.1])\r\n\tby mx.example.test (Portcullis) \
         with ESMTPS id QID\r\n\t(version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384 bits=256 \
         verify=NO)\r\n\tfor <b@localhost>; DATE\r\n"
    );
}

#[test]
fn helo_inside_tls_stays_smtp() {
    let mut h = Harness::new(true);
    h.start_tls();
    h.send(b"HELO client.example.org\r\n");
    h.send(b"MAIL FROM:<a@example.org>\r\n");
    h.send(b"RCPT TO:<b@localhost>\r\n");
    h.send(b"DATA\r\n");
    h.send(b"\r\nhi\r\n.\r\n");
    assert_eq!(h.committed[0].protocol, "SMTP");
}

#[test]
fn required_clients_get_530_until_tls() {
    let mut h = Harness::new(true);
    h.session.require_tls();
    h.ehlo();
    assert_eq!(
        h.send(b"MAIL FROM:<a@example.org>\r\n"),
        format!("{}\r\n", reply::must_starttls().to_log_string())
    );
    assert_eq!(
        h.send(b"MAIL FROM:<a@example.org>\r\n"),
        "530 5.7.0 Must issue a STARTTLS command first\r\n"
    );
    h.start_tls();
    h.ehlo();
    assert_eq!(
        h.send(b"MAIL FROM:<a@example.org>\r\n"),
        "250 2.1.0 <a@example.org>... Sender ok\r\n"
    );
}

#[test]
fn not_required_clients_mail_in_plaintext() {
    let mut h = Harness::new(true);
    h.ehlo();
    assert_eq!(
        h.send(b"MAIL FROM:<a@example.org>\r\n"),
        "250 2.1.0 <a@example.org>... Sender ok\r\n"
    );
}
