//! Relay/LMTP client tests: scripted server replies, exact client bytes and outcomes, no
//! runtime (design.md §5).
//!
//! A tiny harness plays the driver: it feeds the server's bytes, collects what the client
//! writes, and writes a fixed message (through `dot_stuff` and `end_of_data`) when asked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use portcullis_smtp::client::{MAX_REPLY_BYTES, dot_stuff, end_of_data};
use portcullis_smtp::{
    Client, ClientConfig, ClientEvent, ClientPhase, Envelope, RcptOutcome, RcptStatus, Reply,
    StartTls, TlsState,
};

const PEER: &str = "mx.example.net [192.0.2.1]";
const MESSAGE: &[u8] = b"Subject: hi\r\n\r\n.hidden dot\r\nbye";
const MESSAGE_WIRE: &str = "Subject: hi\r\n\r\n..hidden dot\r\nbye\r\n.\r\n";
const GREETING: &str = "220 mx.example.net ESMTP ready\r\n";
const EHLO_PLAIN: &str = "250-mx.example.net Hello relay\r\n250-8BITMIME\r\n250 SIZE 10000\r\n";
const EHLO_PIPELINING: &str =
    "250-mx.example.net Hello relay\r\n250-PIPELINING\r\n250-SIZE\r\n250 ENHANCEDSTATUSCODES\r\n";

struct Harness {
    client: Client,
    /// Events seen, in order.
    events: Vec<ClientEvent>,
    /// Write the message when asked (false: leave the client in the Message phase).
    write_message: bool,
}

fn envelope(rcpts: &[&str]) -> Envelope {
    Envelope::new(
        "alice@example.org",
        rcpts.iter().map(|r| (*r).to_owned()).collect(),
        1234,
    )
}

fn harness_with(lmtp: bool, envelope: Envelope) -> Harness {
    harness_tls(lmtp, StartTls::Never, envelope)
}

fn harness_tls(lmtp: bool, starttls: StartTls, envelope: Envelope) -> Harness {
    let cfg = Arc::new(ClientConfig {
        helo_name: "relay.example.org".to_owned(),
        lmtp,
        starttls,
    });
    let mut h = Harness {
        client: Client::new(cfg, PEER, envelope),
        events: Vec::new(),
        write_message: true,
    };
    // Nothing is said before the greeting.
    assert_eq!(h.pump(), "");
    h
}

fn smtp(rcpts: &[&str]) -> Harness {
    harness_with(false, envelope(rcpts))
}

fn lmtp(rcpts: &[&str]) -> Harness {
    harness_with(true, envelope(rcpts))
}

impl Harness {
    /// What the client writes now, the message included when it asks for it.
    fn pump(&mut self) -> String {
        let mut out = self.client.take_output();
        while let Some(event) = self.client.poll_event() {
            self.events.push(event);
            if event == ClientEvent::WriteMessage && self.write_message {
                let mut at_line_start = true;
                dot_stuff(MESSAGE, &mut at_line_start, &mut out);
                end_of_data(at_line_start, &mut out);
                self.client.message_written();
                // Replies held while writing may have been read: more to write.
                out.extend(self.client.take_output());
            }
        }
        String::from_utf8(out).unwrap()
    }

    /// Feeds `server` in one piece; returns what the client writes in answer.
    fn feed(&mut self, server: &str) -> String {
        self.client.handle_input(server.as_bytes());
        self.pump()
    }

    /// Feeds each `(server, client)` step and checks the client's answer exactly.
    fn script(&mut self, steps: &[(&str, &str)]) {
        for (n, (server, client)) in steps.iter().enumerate() {
            assert_eq!(
                self.feed(server),
                *client,
                "step {n}: server said {server:?}"
            );
        }
    }

    fn outcomes(&self) -> Vec<RcptOutcome> {
        self.client.outcomes().expect("outcomes are final").to_vec()
    }

    fn statuses(&self) -> Vec<RcptStatus> {
        self.outcomes().iter().map(|o| o.status).collect()
    }
}

fn reply(code: u16, text: &str) -> Reply {
    Reply::new(code, text)
}

/// The outcome list's recipients, statuses and reply texts in one comparable form.
fn summary(outcomes: &[RcptOutcome]) -> Vec<(String, RcptStatus, String, bool)> {
    outcomes
        .iter()
        .map(|o| {
            (
                o.recipient.clone(),
                o.status,
                o.reply.to_log_string(),
                o.remote,
            )
        })
        .collect()
}

// ----- the dialogue ---------------------------------------------------------------------------

#[test]
fn plain_session_one_command_per_reply() {
    let mut h = smtp(&["bob@example.net", "carol@example.net"]);
    assert_eq!(h.client.phase(), ClientPhase::Greeting);
    assert!(h.client.wants_input());
    h.script(&[(GREETING, "EHLO relay.example.org\r\n")]);
    assert_eq!(h.client.phase(), ClientPhase::Ehlo);
    h.script(&[(EHLO_PLAIN, "MAIL FROM:<alice@example.org> SIZE=1234\r\n")]);
    assert_eq!(h.client.phase(), ClientPhase::Mail);
    let ext = h.client.extensions();
    assert!(!ext.pipelining && ext.eight_bit_mime && !ext.starttls);
    assert_eq!(ext.size, Some(10000));
    h.script(&[("250 2.1.0 Sender ok\r\n", "RCPT TO:<bob@example.net>\r\n")]);
    assert_eq!(h.client.phase(), ClientPhase::Rcpt);
    h.script(&[
        (
            "250 2.1.5 Recipient ok\r\n",
            "RCPT TO:<carol@example.net>\r\n",
        ),
        (
            "550 5.1.1 <carol@example.net>... User unknown\r\n",
            "DATA\r\n",
        ),
    ]);
    assert_eq!(h.client.phase(), ClientPhase::Data);
    assert!(h.client.outcomes().is_none());
    h.script(&[("354 Enter mail\r\n", MESSAGE_WIRE)]);
    assert_eq!(h.client.phase(), ClientPhase::DataFinal);
    h.script(&[("250 2.0.0 4AbC Message accepted\r\n", "QUIT\r\n")]);
    assert_eq!(h.client.phase(), ClientPhase::Quit);
    assert_eq!(
        h.events,
        [ClientEvent::WriteMessage, ClientEvent::OutcomesFinal]
    );
    let out = h.outcomes();
    assert_eq!(
        summary(&out),
        [
            (
                "bob@example.net".to_owned(),
                RcptStatus::Delivered,
                "250 2.0.0 4AbC Message accepted".to_owned(),
                true
            ),
            (
                "carol@example.net".to_owned(),
                RcptStatus::PermFail,
                "550 5.1.1 <carol@example.net>... User unknown".to_owned(),
                true
            ),
        ]
    );
    assert_eq!(out[0].phase, ClientPhase::DataFinal);
    assert_eq!(out[1].phase, ClientPhase::Rcpt);
    assert_eq!(out[0].dsn(), "2.0.0");
    assert_eq!(out[1].dsn(), "5.1.1");
    assert_eq!(h.client.remote_name(), Some("mx.example.net"));
    h.script(&[("221 2.0.0 closing\r\n", "")]);
    assert!(h.client.is_done());
    assert!(!h.client.wants_input());
    assert_eq!(h.client.phase(), ClientPhase::Done);
    // Late bytes change nothing.
    h.script(&[("554 what\r\n", "")]);
    assert_eq!(h.outcomes(), out);
}

#[test]
fn pipelining_sends_one_batch_and_keeps_per_recipient_results() {
    let mut h = smtp(&["r1@x.test", "r2@x.test", "r3@x.test", "r4@x.test"]);
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        (
            EHLO_PIPELINING,
            "MAIL FROM:<alice@example.org> SIZE=1234\r\n\
             RCPT TO:<r1@x.test>\r\nRCPT TO:<r2@x.test>\r\nRCPT TO:<r3@x.test>\r\n\
             RCPT TO:<r4@x.test>\r\nDATA\r\n",
        ),
    ]);
    assert!(h.client.extensions().pipelining);
    assert_eq!(h.client.phase(), ClientPhase::Mail);
    // Replies come in pieces: nothing is written until the 354.
    h.script(&[
        ("250 2.1.0 ok\r\n250 2.1.5 ok\r\n", ""),
        ("550 5.1.1 no such user\r\n451 4.3.0 try later\r\n", ""),
    ]);
    assert_eq!(h.client.phase(), ClientPhase::Rcpt);
    h.script(&[
        ("250 2.1.5 ok\r\n", ""),
        ("354 go ahead\r\n", MESSAGE_WIRE),
        ("250 2.0.0 queued as 77\r\n", "QUIT\r\n"),
    ]);
    assert_eq!(
        h.statuses(),
        [
            RcptStatus::Delivered,
            RcptStatus::PermFail,
            RcptStatus::TempFail,
            RcptStatus::Delivered
        ]
    );
    let out = h.outcomes();
    assert_eq!(out[1].reply, reply(550, "5.1.1 no such user"));
    assert_eq!(out[2].reply, reply(451, "4.3.0 try later"));
    assert_eq!(out[3].reply, reply(250, "2.0.0 queued as 77"));
}

#[test]
fn lmtp_reads_one_final_reply_per_accepted_recipient() {
    let mut h = lmtp(&["a@lmtp.test", "b@lmtp.test"]);
    h.script(&[
        ("220 store.test LMTP\r\n", "LHLO relay.example.org\r\n"),
        (
            "250-store.test\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n",
            "MAIL FROM:<alice@example.org>\r\nRCPT TO:<a@lmtp.test>\r\n\
             RCPT TO:<b@lmtp.test>\r\nDATA\r\n",
        ),
        ("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n", MESSAGE_WIRE),
        ("250 2.0.0 <a@lmtp.test> delivered\r\n", ""),
    ]);
    // One reply in: still waiting for the second, nothing final yet.
    assert_eq!(h.client.phase(), ClientPhase::DataFinal);
    assert!(h.client.outcomes().is_none());
    h.script(&[("452 4.2.2 <b@lmtp.test> mailbox full\r\n", "QUIT\r\n")]);
    assert_eq!(
        summary(&h.outcomes()),
        [
            (
                "a@lmtp.test".to_owned(),
                RcptStatus::Delivered,
                "250 2.0.0 <a@lmtp.test> delivered".to_owned(),
                true
            ),
            (
                "b@lmtp.test".to_owned(),
                RcptStatus::TempFail,
                "452 4.2.2 <b@lmtp.test> mailbox full".to_owned(),
                true
            ),
        ]
    );
    assert_eq!(h.outcomes()[1].dsn(), "4.2.2");
}

#[test]
fn lmtp_final_replies_skip_refused_recipients() {
    let mut h = lmtp(&["a@lmtp.test", "b@lmtp.test", "c@lmtp.test"]);
    h.script(&[
        ("220 store.test LMTP\r\n", "LHLO relay.example.org\r\n"),
        ("250 store.test\r\n", "MAIL FROM:<alice@example.org>\r\n"),
        ("250 ok\r\n", "RCPT TO:<a@lmtp.test>\r\n"),
        ("550 5.1.1 unknown\r\n", "RCPT TO:<b@lmtp.test>\r\n"),
        ("250 ok\r\n", "RCPT TO:<c@lmtp.test>\r\n"),
        ("250 ok\r\n", "DATA\r\n"),
        ("354 go\r\n", MESSAGE_WIRE),
        // Two replies, for b and c, in RCPT order.
        ("550 5.2.2 b over quota\r\n250 2.0.0 c ok\r\n", "QUIT\r\n"),
    ]);
    assert_eq!(
        summary(&h.outcomes())
            .into_iter()
            .map(|(_, s, t, _)| (s, t))
            .collect::<Vec<_>>(),
        [
            (RcptStatus::PermFail, "550 5.1.1 unknown".to_owned()),
            (RcptStatus::PermFail, "550 5.2.2 b over quota".to_owned()),
            (RcptStatus::Delivered, "250 2.0.0 c ok".to_owned()),
        ]
    );
}

#[test]
fn lmtp_has_no_helo_fallback() {
    let mut h = lmtp(&["a@lmtp.test"]);
    h.script(&[
        ("220 store.test LMTP\r\n", "LHLO relay.example.org\r\n"),
        ("500 5.5.1 what\r\n", "QUIT\r\n"),
    ]);
    assert_eq!(h.statuses(), [RcptStatus::PermFail]);
    assert_eq!(h.outcomes()[0].phase, ClientPhase::Ehlo);
}

#[test]
fn greeting_554_fails_everyone_permanently_then_quits() {
    let mut h = smtp(&["bob@example.net", "carol@example.net"]);
    h.script(&[(
        "554 mx.example.net ESMTP not accepting messages\r\n",
        "QUIT\r\n",
    )]);
    assert_eq!(h.statuses(), [RcptStatus::PermFail, RcptStatus::PermFail]);
    let o = &h.outcomes()[0];
    assert_eq!(
        o.reply,
        reply(554, "mx.example.net ESMTP not accepting messages")
    );
    assert!(o.remote);
    assert_eq!(o.phase, ClientPhase::Greeting);
    assert_eq!(o.dsn(), "5.0.0");
    assert_eq!(h.client.phase(), ClientPhase::Quit);
    // The server hangs up instead of answering QUIT: the outcomes stand.
    h.client.handle_eof();
    assert!(h.client.is_done());
    assert_eq!(h.statuses(), [RcptStatus::PermFail, RcptStatus::PermFail]);
}

#[test]
fn greeting_421_and_450_fail_for_now() {
    let mut h = smtp(&["bob@example.net"]);
    h.script(&[("421 4.3.2 mx.example.net busy\r\n", "")]);
    assert!(h.client.is_done());
    assert_eq!(h.statuses(), [RcptStatus::TempFail]);
    assert_eq!(
        h.outcomes()[0].reply,
        reply(421, "4.3.2 mx.example.net busy")
    );

    let mut h = smtp(&["bob@example.net"]);
    h.script(&[("450 not now\r\n", "QUIT\r\n")]);
    assert_eq!(h.statuses(), [RcptStatus::TempFail]);
}

#[test]
fn ehlo_502_falls_back_to_helo_without_extensions() {
    let mut h = smtp(&["bob@example.net"]);
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        (
            "502 5.5.1 Command not implemented\r\n",
            "HELO relay.example.org\r\n",
        ),
        (
            "250 old.example.net\r\n",
            "MAIL FROM:<alice@example.org>\r\n",
        ),
        ("250 ok\r\n", "RCPT TO:<bob@example.net>\r\n"),
        ("250 ok\r\n", "DATA\r\n"),
        ("354 go\r\n", MESSAGE_WIRE),
        ("250 ok\r\n", "QUIT\r\n"),
    ]);
    assert_eq!(h.client.extensions(), &Default::default());
    assert_eq!(h.client.remote_name(), Some("old.example.net"));
    assert_eq!(h.statuses(), [RcptStatus::Delivered]);
    assert_eq!(h.outcomes()[0].dsn(), "2.0.0");
}

#[test]
fn helo_refused_too() {
    let mut h = smtp(&["bob@example.net"]);
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        ("500 no\r\n", "HELO relay.example.org\r\n"),
        ("501 5.5.4 go away\r\n", "QUIT\r\n"),
    ]);
    assert_eq!(h.statuses(), [RcptStatus::PermFail]);
    assert_eq!(h.outcomes()[0].reply, reply(501, "5.5.4 go away"));
}

#[test]
fn mail_451_fails_every_recipient_for_now() {
    let mut h = smtp(&["bob@example.net", "carol@example.net"]);
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        (EHLO_PLAIN, "MAIL FROM:<alice@example.org> SIZE=1234\r\n"),
        ("451 4.3.0 temporary trouble\r\n", "QUIT\r\n"),
    ]);
    assert_eq!(h.statuses(), [RcptStatus::TempFail, RcptStatus::TempFail]);
    for o in h.outcomes() {
        assert_eq!(o.reply, reply(451, "4.3.0 temporary trouble"));
        assert_eq!(o.phase, ClientPhase::Mail);
    }
}

#[test]
fn mail_refused_with_pipelining_reads_the_rest_then_quits() {
    let mut h = smtp(&["bob@example.net", "carol@example.net"]);
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        (
            EHLO_PIPELINING,
            "MAIL FROM:<alice@example.org> SIZE=1234\r\nRCPT TO:<bob@example.net>\r\n\
             RCPT TO:<carol@example.net>\r\nDATA\r\n",
        ),
        ("553 5.1.8 sender domain does not exist\r\n", ""),
    ]);
    // Decided already, but the RCPT and DATA replies are still to be read.
    assert_eq!(h.statuses(), [RcptStatus::PermFail, RcptStatus::PermFail]);
    assert_eq!(h.client.phase(), ClientPhase::Rcpt);
    // Even a server that takes the RCPTs and DATA gets an empty message, not ours.
    h.script(&[
        ("250 ok\r\n250 ok\r\n", ""),
        ("354 go\r\n", ".\r\n"),
        ("503 5.5.1 no recipients\r\n", "QUIT\r\n"),
    ]);
    assert!(!h.events.contains(&ClientEvent::WriteMessage));
    for o in h.outcomes() {
        assert_eq!(o.reply, reply(553, "5.1.8 sender domain does not exist"));
    }
}

#[test]
fn all_recipients_refused_no_data_no_message() {
    let mut h = smtp(&["bob@example.net", "carol@example.net"]);
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        (EHLO_PLAIN, "MAIL FROM:<alice@example.org> SIZE=1234\r\n"),
        ("250 ok\r\n", "RCPT TO:<bob@example.net>\r\n"),
        ("550 5.1.1 unknown\r\n", "RCPT TO:<carol@example.net>\r\n"),
        ("450 4.2.0 greylisted\r\n", "QUIT\r\n"),
    ]);
    assert_eq!(h.statuses(), [RcptStatus::PermFail, RcptStatus::TempFail]);
    assert!(!h.events.contains(&ClientEvent::WriteMessage));
}

#[test]
fn all_recipients_refused_with_pipelining_ignores_the_data_refusal() {
    let mut h = smtp(&["bob@example.net", "carol@example.net"]);
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        (
            EHLO_PIPELINING,
            "MAIL FROM:<alice@example.org> SIZE=1234\r\nRCPT TO:<bob@example.net>\r\n\
             RCPT TO:<carol@example.net>\r\nDATA\r\n",
        ),
        (
            "250 ok\r\n550 5.1.1 unknown\r\n550 5.1.1 unknown too\r\n",
            "",
        ),
    ]);
    // Final, though DATA's reply is still due.
    assert_eq!(h.events, [ClientEvent::OutcomesFinal]);
    assert_eq!(h.client.phase(), ClientPhase::Data);
    h.script(&[("554 5.5.1 Error: no valid recipients\r\n", "QUIT\r\n")]);
    assert_eq!(h.statuses(), [RcptStatus::PermFail, RcptStatus::PermFail]);
    assert_eq!(h.outcomes()[1].reply, reply(550, "5.1.1 unknown too"));
}

#[test]
fn data_refused_settles_the_accepted_recipients() {
    let mut h = smtp(&["bob@example.net", "carol@example.net"]);
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        (EHLO_PLAIN, "MAIL FROM:<alice@example.org> SIZE=1234\r\n"),
        ("250 ok\r\n", "RCPT TO:<bob@example.net>\r\n"),
        ("250 ok\r\n", "RCPT TO:<carol@example.net>\r\n"),
        ("550 5.1.1 unknown\r\n", "DATA\r\n"),
        ("451 4.3.0 no queue space\r\n", "QUIT\r\n"),
    ]);
    assert_eq!(h.statuses(), [RcptStatus::TempFail, RcptStatus::PermFail]);
    assert_eq!(h.outcomes()[0].phase, ClientPhase::Data);
}

#[test]
fn size_limit_exceeded_fails_permanently_without_mail() {
    let mut env = envelope(&["bob@example.net"]);
    env.size = 20_000;
    let mut h = harness_with(false, env);
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        (EHLO_PLAIN, "QUIT\r\n"),
    ]);
    let o = &h.outcomes()[0];
    assert_eq!(o.status, RcptStatus::PermFail);
    assert!(!o.remote);
    assert_eq!(
        o.reply,
        reply(
            552,
            "5.3.4 message size 20000 exceeds size limit 10000 of mx.example.net [192.0.2.1]"
        )
    );
    assert_eq!(o.dsn(), "5.3.4");
}

#[test]
fn size_without_limit_and_body_and_smtputf8_parameters() {
    let mut env = envelope(&["bob@example.net"]);
    env.size = 1 << 40;
    env.eight_bit = true;
    env.smtputf8 = true;
    let mut h = harness_with(false, env);
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        (
            "250-mx\r\n250-SIZE 0\r\n250-8bitmime\r\n250-SMTPUTF8\r\n250 STARTTLS\r\n",
            "MAIL FROM:<alice@example.org> SIZE=1099511627776 BODY=8BITMIME SMTPUTF8\r\n",
        ),
    ]);
    assert!(h.client.extensions().starttls);
    assert_eq!(h.client.extensions().size, Some(0));
}

#[test]
fn eight_bit_not_offered_goes_as_is() {
    let mut env = envelope(&["bob@example.net"]);
    env.eight_bit = true;
    let mut h = harness_with(false, env);
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        (
            "250-mx\r\n250 SIZE\r\n",
            "MAIL FROM:<alice@example.org> SIZE=1234\r\n",
        ),
    ]);
}

#[test]
fn smtputf8_needed_but_not_offered_fails_permanently() {
    let mut h = smtp(&["jörg@example.net", "bob@example.net"]);
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        (EHLO_PLAIN, "QUIT\r\n"),
    ]);
    assert_eq!(h.statuses(), [RcptStatus::PermFail, RcptStatus::PermFail]);
    assert_eq!(
        h.outcomes()[0].reply,
        reply(
            553,
            "5.6.7 SMTPUTF8 is required, but was not offered by mx.example.net [192.0.2.1]"
        )
    );
}

#[test]
fn addresses_that_would_inject_commands_are_never_sent() {
    let mut h = smtp(&[
        "bob@example.net\r\nRCPT TO:<evil@x.test>",
        "",
        "carol@example.net",
    ]);
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        (EHLO_PLAIN, "MAIL FROM:<alice@example.org> SIZE=1234\r\n"),
        ("250 ok\r\n", "RCPT TO:<carol@example.net>\r\n"),
    ]);
    let out = h.client.outcomes();
    assert!(out.is_none());

    let mut bad_sender = envelope(&["bob@example.net"]);
    bad_sender.sender = "a\n@x".to_owned();
    let h = harness_with(false, bad_sender);
    assert!(h.client.is_done());
    assert_eq!(h.statuses(), [RcptStatus::PermFail]);
    assert!(!h.outcomes()[0].remote);
}

#[test]
fn null_sender_and_no_recipients() {
    let mut env = envelope(&["bob@example.net"]);
    env.sender = String::new();
    let mut h = harness_with(false, env);
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        ("250 mx\r\n", "MAIL FROM:<>\r\n"),
    ]);

    let mut h = smtp(&[]);
    assert!(h.client.is_done());
    assert_eq!(h.client.outcomes(), Some(&[][..]));
    assert_eq!(h.client.phase(), ClientPhase::Done);
    assert_eq!(h.pump(), "");
}

// ----- breakdowns -----------------------------------------------------------------------------

#[test]
fn a_421_mid_rcpt_fails_the_rest_for_now() {
    let mut h = smtp(&["r1@x.test", "r2@x.test", "r3@x.test"]);
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        (
            EHLO_PIPELINING,
            "MAIL FROM:<alice@example.org> SIZE=1234\r\nRCPT TO:<r1@x.test>\r\n\
             RCPT TO:<r2@x.test>\r\nRCPT TO:<r3@x.test>\r\nDATA\r\n",
        ),
        (
            "250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n\
             421 4.7.0 mx.example.net Too many bad recipients\r\n",
            "",
        ),
    ]);
    assert!(h.client.is_done());
    let out = h.outcomes();
    assert_eq!(
        h.statuses(),
        [
            RcptStatus::TempFail,
            RcptStatus::PermFail,
            RcptStatus::TempFail
        ]
    );
    let closing = reply(421, "4.7.0 mx.example.net Too many bad recipients");
    assert_eq!(out[0].reply, closing);
    assert_eq!(out[2].reply, closing);
    assert!(out[0].remote);
    assert_eq!(out[0].phase, ClientPhase::Rcpt);
}

#[test]
fn eof_after_the_data_warns_of_a_duplicate() {
    let mut h = smtp(&["bob@example.net", "carol@example.net"]);
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        (EHLO_PLAIN, "MAIL FROM:<alice@example.org> SIZE=1234\r\n"),
        ("250 ok\r\n", "RCPT TO:<bob@example.net>\r\n"),
        ("250 ok\r\n", "RCPT TO:<carol@example.net>\r\n"),
        ("550 5.1.1 unknown\r\n", "DATA\r\n"),
        ("354 go\r\n", MESSAGE_WIRE),
        ("25", ""),
    ]);
    h.client.handle_eof();
    assert!(h.client.is_done());
    let out = h.outcomes();
    assert_eq!(out[0].status, RcptStatus::TempFail);
    assert!(!out[0].remote);
    assert_eq!(out[0].phase, ClientPhase::DataFinal);
    assert_eq!(
        out[0].reply,
        reply(
            451,
            "4.4.2 lost connection with mx.example.net [192.0.2.1] while waiting for the \
             reply to end of data -- message may be sent more than once"
        )
    );
    assert_eq!(out[0].dsn(), "4.4.2");
    // The refused one keeps its own outcome.
    assert_eq!(out[1].reply, reply(550, "5.1.1 unknown"));
}

#[test]
fn eof_while_writing_the_message() {
    let mut h = smtp(&["bob@example.net"]);
    h.write_message = false;
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        ("250 mx\r\n", "MAIL FROM:<alice@example.org>\r\n"),
        ("250 ok\r\n", "RCPT TO:<bob@example.net>\r\n"),
        ("250 ok\r\n", "DATA\r\n"),
        ("354 go\r\n", ""),
    ]);
    assert_eq!(h.client.phase(), ClientPhase::Message);
    assert!(h.client.wants_input());
    h.client.handle_eof();
    assert_eq!(
        h.outcomes()[0].reply,
        reply(
            451,
            "4.4.2 lost connection with mx.example.net [192.0.2.1] while sending the message body"
        )
    );
    // Too late now.
    h.client.message_written();
    assert!(h.client.is_done());
}

fn writing(rcpts: &[&str]) -> Harness {
    let mut h = smtp(rcpts);
    h.write_message = false;
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        ("250 mx\r\n", "MAIL FROM:<alice@example.org>\r\n"),
        ("250 ok\r\n", "RCPT TO:<bob@example.net>\r\n"),
        ("250 ok\r\n", "DATA\r\n"),
        ("354 go\r\n", ""),
    ]);
    h
}

#[test]
fn early_refusal_while_writing_is_heard_at_the_close() {
    let mut h = writing(&["bob@example.net"]);
    h.script(&[("552 5.3.4 message too big\r\n", "")]);
    // Held while the driver writes: it may have read this before the end of its write.
    assert_eq!(h.client.phase(), ClientPhase::Message);
    assert!(h.client.outcomes().is_none());
    // The server closes; the write fails: its verdict beats "lost connection".
    h.client.handle_eof();
    assert!(h.client.is_done());
    assert_eq!(h.statuses(), [RcptStatus::PermFail]);
    assert_eq!(h.outcomes()[0].reply, reply(552, "5.3.4 message too big"));
    assert_eq!(h.outcomes()[0].phase, ClientPhase::Message);
    assert!(h.outcomes()[0].remote);

    // Or the write finishes: the reply is then read as the final one.
    let mut h = writing(&["bob@example.net"]);
    h.script(&[("552 5.3.4 message too big\r\n", "")]);
    h.client.message_written();
    assert_eq!(h.pump(), "QUIT\r\n");
    assert_eq!(h.outcomes()[0].reply, reply(552, "5.3.4 message too big"));
    assert_eq!(h.outcomes()[0].phase, ClientPhase::DataFinal);

    // An early 250 is nonsense.
    let mut h = writing(&["bob@example.net"]);
    h.script(&[("250 thanks\r\n", "")]);
    h.client.handle_timeout();
    assert_eq!(h.statuses(), [RcptStatus::TempFail]);
    assert!(h.outcomes()[0].reply.lines[0].contains("unexpected reply: 250 thanks"));

    // Holding is bounded.
    let mut h = writing(&["bob@example.net"]);
    h.client.handle_input(&vec![b'x'; MAX_REPLY_BYTES]);
    assert!(!h.client.is_done());
    h.client.handle_input(b"x");
    assert!(h.client.is_done());
    assert_eq!(h.statuses(), [RcptStatus::TempFail]);
}

#[test]
fn timeouts_name_the_wait() {
    let mut h = smtp(&["bob@example.net"]);
    h.client.handle_timeout();
    assert_eq!(
        h.outcomes()[0].reply,
        reply(
            451,
            "4.4.2 conversation with mx.example.net [192.0.2.1] timed out while waiting for the greeting"
        )
    );
    assert_eq!(h.outcomes()[0].phase, ClientPhase::Greeting);

    let mut h = smtp(&["bob@example.net"]);
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        ("250 mx\r\n", "MAIL FROM:<alice@example.org>\r\n"),
        ("250 ok\r\n", "RCPT TO:<bob@example.net>\r\n"),
    ]);
    assert_eq!(h.client.phase().timeout_name(), "rcpt");
    h.client.handle_timeout();
    assert!(h.client.is_done());
    assert_eq!(
        h.outcomes()[0].reply,
        reply(
            451,
            "4.4.2 conversation with mx.example.net [192.0.2.1] timed out while waiting for \
             the reply to RCPT TO"
        )
    );

    // After the final reply, a QUIT timeout changes nothing.
    let mut h = smtp(&["bob@example.net"]);
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        ("250 mx\r\n", "MAIL FROM:<alice@example.org>\r\n"),
        ("250 ok\r\n", "RCPT TO:<bob@example.net>\r\n"),
        ("250 ok\r\n", "DATA\r\n"),
        ("354 go\r\n", MESSAGE_WIRE),
        ("250 ok\r\n", "QUIT\r\n"),
    ]);
    h.client.handle_timeout();
    assert!(h.client.is_done());
    assert_eq!(h.statuses(), [RcptStatus::Delivered]);
}

#[test]
fn garbage_replies_are_protocol_errors() {
    for garbage in [
        "hello there\r\n",
        "22\r\n",
        "220x mx\r\n",
        "\x00\x01\x02\r\n",
        "099 too small\r\n",
        "999 too big\r\n",
        "250 wrong greeting code\r\n",
    ] {
        let mut h = smtp(&["bob@example.net"]);
        h.script(&[(garbage, "")]);
        assert!(h.client.is_done(), "{garbage:?}");
        let o = &h.outcomes()[0];
        assert_eq!(o.status, RcptStatus::TempFail, "{garbage:?}");
        assert!(!o.remote);
        assert!(
            o.reply.lines[0].starts_with(
                "4.5.0 protocol error from mx.example.net [192.0.2.1] while waiting for the greeting"
            ),
            "{:?}",
            o.reply
        );
    }
    // A 354 to RCPT makes no sense either.
    let mut h = smtp(&["bob@example.net"]);
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        ("250 mx\r\n", "MAIL FROM:<alice@example.org>\r\n"),
        ("250 ok\r\n", "RCPT TO:<bob@example.net>\r\n"),
        ("354 go\r\n", ""),
    ]);
    assert_eq!(
        h.outcomes()[0].reply,
        reply(
            451,
            "4.5.0 protocol error from mx.example.net [192.0.2.1] while waiting for the reply \
             to RCPT TO: unexpected reply: 354 go"
        )
    );
    assert_eq!(h.outcomes()[0].phase, ClientPhase::Rcpt);
}

#[test]
fn over_long_replies_fail_with_bounded_memory() {
    // One endless line: smtp-proto's 4096-byte cap.
    let mut h = smtp(&["bob@example.net"]);
    let mut fed = 0;
    let chunk = vec![b'x'; 1000];
    h.client.handle_input(b"220 ");
    while !h.client.is_done() {
        h.client.handle_input(&chunk);
        fed += chunk.len();
        assert!(fed <= 8 * 1024, "still reading after {fed} bytes");
    }
    assert!(h.outcomes()[0].reply.lines[0].ends_with("reply too long"));

    // Endless empty continuation lines, which smtp-proto does not count: our cap.
    let mut h = smtp(&["bob@example.net"]);
    let mut fed = 0;
    let chunk = "250-\r\n".repeat(100);
    while !h.client.is_done() {
        h.client.handle_input(chunk.as_bytes());
        fed += chunk.len();
        assert!(fed <= MAX_REPLY_BYTES + chunk.len());
    }
    assert!(fed > MAX_REPLY_BYTES);
    assert_eq!(h.statuses(), [RcptStatus::TempFail]);
    assert!(h.outcomes()[0].reply.lines[0].ends_with("reply too long"));

    // The same in one huge piece.
    let mut h = smtp(&["bob@example.net"]);
    h.client.handle_input("220-\r\n".repeat(50_000).as_bytes());
    assert!(h.client.is_done());
    assert!(h.outcomes()[0].reply.lines[0].ends_with("reply too long"));
}

#[test]
fn multi_line_replies_keep_their_lines_and_status_code() {
    let mut h = smtp(&["bob@example.net"]);
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        ("250 mx\r\n", "MAIL FROM:<alice@example.org>\r\n"),
        (
            "550-5.7.1 first line\r\n550-5.7.1 second\r\n550 5.7.1 \x1b[31mthird\r\n",
            "QUIT\r\n",
        ),
    ]);
    let o = &h.outcomes()[0];
    // smtp-proto takes the status code off every line; it comes back on the first.
    assert_eq!(
        o.reply,
        Reply {
            code: 550,
            lines: vec![
                "5.7.1 first line".to_owned(),
                "second".to_owned(),
                "\\x1b[31mthird".to_owned()
            ],
        }
    );
    assert_eq!(o.dsn(), "5.7.1");
    // LF-only line endings are read too.
    let mut h = smtp(&["bob@example.net"]);
    h.script(&[(
        "220-mx.example.net\n220 more\n",
        "EHLO relay.example.org\r\n",
    )]);
}

/// A whole pipelined dialogue as the server's bytes.
const PIPELINED_SERVER: &[&str] = &[
    "220-mx.example.net ESMTP\r\n220 2.0.0 welcome\r\n",
    "250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250 8BITMIME\r\n",
    "250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 <b@x.test>... User unknown\r\n\
     451 4.7.1 greylisted\r\n250 2.1.5 ok\r\n354 Enter mail, end with \".\"\r\n",
    "250 2.0.0 4abc Message accepted for delivery\r\n",
    "221 2.0.0 closing\r\n",
];

/// Runs the pipelined dialogue with the server's bytes cut by `cut`; returns everything
/// the client wrote and the outcomes.
fn run_cut(cut: &dyn Fn(&[u8]) -> Vec<Vec<u8>>) -> (String, Vec<RcptOutcome>) {
    let mut h = smtp(&["a@x.test", "b@x.test", "c@x.test", "d@x.test"]);
    let mut written = String::new();
    for server in PIPELINED_SERVER {
        for piece in cut(server.as_bytes()) {
            h.client.handle_input(&piece);
            written.push_str(&h.pump());
        }
    }
    assert!(h.client.is_done());
    (written, h.outcomes())
}

#[test]
fn a_reply_split_anywhere_reads_the_same() {
    let whole = run_cut(&|b| vec![b.to_vec()]);
    assert_eq!(
        whole.1.iter().map(|o| o.status).collect::<Vec<_>>(),
        [
            RcptStatus::Delivered,
            RcptStatus::PermFail,
            RcptStatus::TempFail,
            RcptStatus::Delivered
        ]
    );
    assert_eq!(
        whole.1[0].reply,
        reply(250, "2.0.0 4abc Message accepted for delivery")
    );
    assert!(whole.0.ends_with("QUIT\r\n"));
    // Every byte on its own.
    let bytes = run_cut(&|b| b.iter().map(|&x| vec![x]).collect());
    assert_eq!(bytes, whole);
    // Every single cut of every server turn.
    let longest = PIPELINED_SERVER.iter().map(|s| s.len()).max().unwrap();
    for at in 0..=longest {
        let cut = run_cut(&|b: &[u8]| {
            let (x, y) = b.split_at(at.min(b.len()));
            vec![x.to_vec(), y.to_vec()]
        });
        assert_eq!(cut, whole, "cut at {at}");
    }
    // All of the server's bytes at once, before the client even answered: the same.
    let mut h = smtp(&["a@x.test", "b@x.test", "c@x.test", "d@x.test"]);
    h.client.handle_input(PIPELINED_SERVER.concat().as_bytes());
    assert_eq!(h.pump(), whole.0);
    assert_eq!(h.outcomes(), whole.1);
}

// ----- dot-stuffing ---------------------------------------------------------------------------

fn stuffed(pieces: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at_line_start = true;
    for piece in pieces {
        dot_stuff(piece, &mut at_line_start, &mut out);
    }
    end_of_data(at_line_start, &mut out);
    out
}

#[test]
fn dot_stuffing_doubles_leading_dots() {
    assert_eq!(
        stuffed(&[b".\r\n..x\r\nabc\r\n.end\r\n"]),
        b"..\r\n...x\r\nabc\r\n..end\r\n.\r\n"
    );
    assert_eq!(stuffed(&[b"a.b\r\n. \r\n"]), b"a.b\r\n.. \r\n.\r\n");
}

#[test]
fn end_of_data_adds_a_missing_line_ending() {
    assert_eq!(stuffed(&[b"no newline"]), b"no newline\r\n.\r\n");
    assert_eq!(stuffed(&[b"newline\r\n"]), b"newline\r\n.\r\n");
    assert_eq!(stuffed(&[b""]), b".\r\n");
    assert_eq!(stuffed(&[]), b".\r\n");
    assert_eq!(stuffed(&[b"."]), b"..\r\n.\r\n");
}

#[test]
fn bare_line_endings_are_made_crlf_and_cannot_end_the_data() {
    // SMTP smuggling: a bare LF before the dot must not end the data at a lax next hop.
    assert_eq!(
        stuffed(&[b"a\n.\r\nMAIL FROM:<x>\r\n"]),
        b"a\r\n..\r\nMAIL FROM:<x>\r\n.\r\n"
    );
    assert_eq!(stuffed(&[b"a\r.\rb"]), b"a.b\r\n.\r\n");
    assert_eq!(stuffed(&[b"a\n"]), b"a\r\n.\r\n");
    assert_eq!(stuffed(&[b"a\r"]), b"a\r\n.\r\n");
    assert_eq!(stuffed(&[b"a\r\r\n.x"]), b"a\r\n..x\r\n.\r\n");
}

#[test]
fn dot_stuffing_in_pieces_is_the_same_as_in_one() {
    let message: &[u8] = b".a\r\n.\r\n\r\n..b\r\nc.d\r\n.\n.\r.e\r\nend.";
    let whole = stuffed(&[message]);
    for at in 0..=message.len() {
        let (x, y) = message.split_at(at);
        assert_eq!(stuffed(&[x, y]), whole, "cut at {at}");
        for at2 in at..=message.len() {
            let (y1, y2) = y.split_at(at2 - at);
            assert_eq!(stuffed(&[x, y1, y2]), whole, "cut at {at} and {at2}");
        }
    }
    let bytes: Vec<&[u8]> = message.chunks(1).collect();
    assert_eq!(stuffed(&bytes), whole);
}

// ----- properties -----------------------------------------------------------------------------

// ----- STARTTLS (RFC 3207) --------------------------------------------------------------------

const EHLO_TLS: &str =
    "250-mx.example.net Hello relay\r\n250-STARTTLS\r\n250-SIZE 100\r\n250 PIPELINING\r\n";
const EHLO_TLS_AGAIN: &str =
    "250-mx.example.net Hello\r\n250-STARTTLS\r\n250-PIPELINING\r\n250 SIZE 10000\r\n";
const EHLO_AFTER_TLS: &str =
    "250-mx.example.net Hello again\r\n250-PIPELINING\r\n250 SIZE 10000\r\n";

fn tls(starttls: StartTls, rcpts: &[&str]) -> Harness {
    harness_tls(false, starttls, envelope(rcpts))
}

#[test]
fn starttls_when_offered_then_ehlo_again_over_tls() {
    let mut h = tls(StartTls::Opportunistic, &["bob@example.net"]);
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        // STARTTLS goes alone, although PIPELINING was offered.
        (EHLO_TLS, "STARTTLS\r\n"),
    ]);
    assert_eq!(h.client.phase(), ClientPhase::StartTls);
    assert_eq!(h.client.phase().timeout_name(), "starttls");
    assert_eq!(h.feed("220 2.0.0 Ready to start TLS\r\n"), "");
    assert_eq!(h.events, [ClientEvent::StartTls]);
    assert_eq!(h.client.phase(), ClientPhase::TlsHandshake);
    assert_eq!(*h.client.tls(), TlsState::Handshake);
    assert!(!h.client.has_output());
    h.client.tls_established();
    assert_eq!(*h.client.tls(), TlsState::Active);
    // RFC 3207 §4.2: what the server said in plain text is forgotten...
    assert_eq!(*h.client.extensions(), Default::default());
    assert_eq!(h.pump(), "EHLO relay.example.org\r\n");
    assert_eq!(h.client.phase(), ClientPhase::Ehlo);
    // ...and read again: SIZE 10000 now (the message's 1234 bytes fit; 100 said before TLS
    // would have refused it), and no second STARTTLS.
    h.script(&[(
        EHLO_AFTER_TLS,
        "MAIL FROM:<alice@example.org> SIZE=1234\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n",
    )]);
    assert_eq!(h.client.extensions().size, Some(10000));
    h.script(&[("250 ok\r\n250 ok\r\n354 go\r\n", MESSAGE_WIRE)]);
    h.script(&[("250 2.0.0 queued\r\n", "QUIT\r\n")]);
    assert_eq!(h.statuses(), [RcptStatus::Delivered]);
    assert_eq!(*h.client.tls(), TlsState::Active);
}

#[test]
fn an_offered_starttls_in_a_second_ehlo_is_not_taken_twice() {
    let mut h = tls(StartTls::Required, &["bob@example.net"]);
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        (EHLO_TLS, "STARTTLS\r\n"),
        ("220 go\r\n", ""),
    ]);
    h.client.tls_established();
    assert_eq!(h.pump(), "EHLO relay.example.org\r\n");
    // A server that still lists STARTTLS over TLS gets the transaction, not STARTTLS.
    h.script(&[(
        EHLO_TLS_AGAIN,
        "MAIL FROM:<alice@example.org> SIZE=1234\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n",
    )]);
}

#[test]
fn no_starttls_when_not_offered_or_not_wanted() {
    // Opportunistic, not offered: plain text, as before.
    let mut h = tls(StartTls::Opportunistic, &["bob@example.net"]);
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        (EHLO_PLAIN, "MAIL FROM:<alice@example.org> SIZE=1234\r\n"),
    ]);
    assert_eq!(*h.client.tls(), TlsState::Plain);
    // Offered, but this hop never uses it (an LMTP socket).
    let mut h = tls(StartTls::Never, &["bob@example.net"]);
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        (
            EHLO_TLS_AGAIN,
            "MAIL FROM:<alice@example.org> SIZE=1234\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n",
        ),
    ]);
    assert!(h.client.extensions().starttls);
    assert!(h.events.is_empty());
}

#[test]
fn required_tls_not_offered_fails_for_now_and_sends_nothing() {
    let mut h = tls(
        StartTls::Required,
        &["bob@example.net", "carol@example.net"],
    );
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        (EHLO_PLAIN, "QUIT\r\n"),
    ]);
    assert_eq!(*h.client.tls(), TlsState::NotOffered);
    let out = h.outcomes();
    assert_eq!(h.statuses(), [RcptStatus::TempFail, RcptStatus::TempFail]);
    assert_eq!(
        out[0].reply.to_log_string(),
        "451 4.7.4 TLS is required, but was not offered by mx.example.net [192.0.2.1]"
    );
    assert!(!out[0].remote);
    assert_eq!(out[0].phase, ClientPhase::StartTls);
    assert_eq!(out[0].dsn(), "4.7.4");
    // After a HELO (no extensions at all) the same.
    let mut h = tls(StartTls::Required, &["bob@example.net"]);
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        ("502 5.5.1 no EHLO\r\n", "HELO relay.example.org\r\n"),
        ("250 hi\r\n", "QUIT\r\n"),
    ]);
    assert_eq!(h.statuses(), [RcptStatus::TempFail]);
}

#[test]
fn a_refused_starttls_fails_for_now_and_never_goes_on_in_plain_text() {
    for refusal in [
        "454 4.7.0 TLS not available due to local problem",
        "554 5.7.3 no",
    ] {
        let mut h = tls(StartTls::Opportunistic, &["bob@example.net"]);
        h.script(&[
            (GREETING, "EHLO relay.example.org\r\n"),
            (EHLO_TLS, "STARTTLS\r\n"),
            // No MAIL: QUIT at once.
            (&format!("{refusal}\r\n"), "QUIT\r\n"),
        ]);
        assert_eq!(h.statuses(), [RcptStatus::TempFail], "{refusal}");
        let out = h.outcomes();
        assert_eq!(
            out[0].reply.to_log_string(),
            format!("451 4.7.0 mx.example.net [192.0.2.1] refused STARTTLS: {refusal}")
        );
        assert_eq!(out[0].phase, ClientPhase::StartTls);
        assert!(matches!(h.client.tls(), TlsState::Refused(r) if r.to_log_string() == refusal));
        assert!(h.events.iter().all(|e| *e != ClientEvent::StartTls));
    }
}

#[test]
fn a_failed_handshake_ends_the_attempt_without_a_word() {
    let mut h = tls(
        StartTls::Opportunistic,
        &["bob@example.net", "carol@example.net"],
    );
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        (EHLO_TLS, "STARTTLS\r\n"),
        ("220 go ahead\r\n", ""),
    ]);
    h.client.tls_failed("received corrupt message");
    // No QUIT: the connection is in no state to carry one.
    assert_eq!(h.pump(), "");
    assert!(h.client.is_done());
    assert_eq!(h.statuses(), [RcptStatus::TempFail, RcptStatus::TempFail]);
    let out = h.outcomes();
    assert_eq!(
        out[1].reply.to_log_string(),
        "451 4.7.5 mx.example.net [192.0.2.1]: TLS handshake failed: received corrupt message"
    );
    assert_eq!(out[1].phase, ClientPhase::TlsHandshake);
    assert_eq!(
        *h.client.tls(),
        TlsState::Failed("received corrupt message".to_owned())
    );
    // Too late to succeed now.
    h.client.tls_established();
    assert_eq!(h.pump(), "");
}

#[test]
fn plain_text_after_the_220_is_never_read_as_a_reply() {
    let mut h = tls(StartTls::Opportunistic, &["bob@example.net"]);
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        (EHLO_TLS, "STARTTLS\r\n"),
    ]);
    // A man in the middle appends a reply to the 220, hoping it is read after the handshake.
    assert_eq!(h.feed("220 go\r\n250 2.0.0 injected\r\n"), "");
    assert!(h.client.is_done());
    assert_eq!(h.statuses(), [RcptStatus::TempFail]);
    let text = h.outcomes()[0].reply.to_log_string();
    assert!(
        text.contains("plain text after the 220 reply to STARTTLS"),
        "{text}"
    );
    assert!(matches!(h.client.tls(), TlsState::Failed(_)));
    // The driver, seeing the client done, does no handshake.
    h.client.tls_established();
    assert_eq!(
        *h.client.tls(),
        TlsState::Failed("plain text after the 220 reply to STARTTLS".to_owned())
    );
}

#[test]
fn a_lost_connection_during_the_handshake_is_a_tls_failure() {
    let mut h = tls(StartTls::Opportunistic, &["bob@example.net"]);
    h.script(&[
        (GREETING, "EHLO relay.example.org\r\n"),
        (EHLO_TLS, "STARTTLS\r\n"),
        ("220 go\r\n", ""),
    ]);
    h.client.handle_timeout();
    let text = h.outcomes()[0].reply.to_log_string();
    assert_eq!(
        text,
        "451 4.4.2 conversation with mx.example.net [192.0.2.1] timed out while doing the TLS handshake"
    );
    assert!(matches!(h.client.tls(), TlsState::Failed(why) if text.ends_with(why.as_str())));
}

#[test]
fn lmtp_over_tls_says_lhlo_again() {
    let mut h = harness_tls(true, StartTls::Required, envelope(&["bob@example.net"]));
    h.script(&[
        (GREETING, "LHLO relay.example.org\r\n"),
        (EHLO_TLS, "STARTTLS\r\n"),
        ("220 go\r\n", ""),
    ]);
    h.client.tls_established();
    assert_eq!(h.pump(), "LHLO relay.example.org\r\n");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Replies a server might send, and some it should not.
    fn server_line() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"220 mx ESMTP\r\n".to_vec()),
            Just(b"250 ok\r\n".to_vec()),
            Just(b"250-mx\r\n250-PIPELINING\r\n250 SIZE 100\r\n".to_vec()),
            Just(b"250-mx\r\n250 PIPELINING\r\n".to_vec()),
            Just(b"354 go\r\n".to_vec()),
            Just(b"421 4.3.2 bye\r\n".to_vec()),
            Just(b"451 4.3.0 later\r\n".to_vec()),
            Just(b"452 4.5.3 too many\r\n".to_vec()),
            Just(b"502 5.5.1 what\r\n".to_vec()),
            Just(b"550 5.1.1 no\r\n".to_vec()),
            Just(b"554 go away\r\n".to_vec()),
            Just(b"221 bye\r\n".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..40),
        ]
    }

    fn check_outcomes(client: &Client, rcpts: &[String]) {
        let outcomes = client.outcomes().expect("final when done");
        assert_eq!(outcomes.len(), rcpts.len());
        for (o, r) in outcomes.iter().zip(rcpts) {
            assert_eq!(&o.recipient, r);
            assert_eq!(
                o.status,
                match o.reply.code / 100 {
                    2 => RcptStatus::Delivered,
                    5 => RcptStatus::PermFail,
                    _ => RcptStatus::TempFail,
                }
            );
            for line in &o.reply.lines {
                assert!(!line.contains(['\r', '\n']), "{line:?}");
            }
        }
    }

    /// Feeds `pieces` with the driver's duties done; then ends the connection.
    fn drive(lmtp: bool, n_rcpts: usize, pieces: &[Vec<u8>], write: bool) {
        let rcpts: Vec<String> = (0..n_rcpts).map(|i| format!("r{i}@x.test")).collect();
        // STARTTLS whenever offered, so arbitrary replies also go through the TLS steps.
        let cfg = Arc::new(ClientConfig {
            helo_name: "relay.test".to_owned(),
            lmtp,
            starttls: StartTls::Opportunistic,
        });
        let mut env = Envelope::new("s@x.test", rcpts.clone(), 50);
        env.eight_bit = true;
        let mut client = Client::new(cfg, "[192.0.2.9]", env);
        let mut finals = 0;
        for piece in pieces {
            client.handle_input(piece);
            let _ = client.take_output();
            assert!(!client.has_output());
            while let Some(event) = client.poll_event() {
                match event {
                    ClientEvent::WriteMessage if write => client.message_written(),
                    ClientEvent::WriteMessage => {}
                    ClientEvent::OutcomesFinal => finals += 1,
                    ClientEvent::StartTls => client.tls_established(),
                }
            }
            if client.is_done() {
                check_outcomes(&client, &rcpts);
            }
        }
        client.handle_eof();
        assert!(client.is_done());
        assert!(!client.wants_input());
        assert_eq!(client.phase(), ClientPhase::Done);
        while let Some(event) = client.poll_event() {
            if event == ClientEvent::OutcomesFinal {
                finals += 1;
            }
        }
        assert_eq!(finals, 1);
        check_outcomes(&client, &rcpts);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn random_bytes_never_break_the_client(
            pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20),
            n in 0usize..5,
            lmtp in any::<bool>(),
        ) {
            drive(lmtp, n, &pieces, true);
        }

        #[test]
        fn random_replies_never_break_the_client(
            lines in proptest::collection::vec(server_line(), 0..30),
            n in 0usize..5,
            lmtp in any::<bool>(),
            write in any::<bool>(),
            cut in 1usize..50,
        ) {
            let stream = lines.concat();
            let pieces: Vec<Vec<u8>> = stream.chunks(cut).map(<[u8]>::to_vec).collect();
            drive(lmtp, n, &pieces, write);
        }

        #[test]
        fn dot_stuffing_any_message_in_any_pieces(
            message in proptest::collection::vec(
                prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), any::<u8>()], 0..300),
            cuts in proptest::collection::vec(0usize..300, 0..6),
        ) {
            let whole = stuffed(&[&message]);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(message.len())).collect();
            cuts.sort_unstable();
            let mut pieces: Vec<&[u8]> = Vec::new();
            let mut from = 0;
            for c in cuts {
                pieces.push(&message[from..c]);
                from = c;
            }
            pieces.push(&message[from..]);
            prop_assert_eq!(stuffed(&pieces), whole.as_slice());
            // Only CRLF pairs, and the end of data only at the end.
            let body = &whole[..whole.len() - 3];
            for (i, &b) in body.iter().enumerate() {
                if b == b'\r' {
                    prop_assert_eq!(body.get(i + 1), Some(&b'\n'));
                }
                if b == b'\n' {
                    prop_assert!(i > 0 && body[i - 1] == b'\r');
                    prop_assert!(!(body.get(i + 1) == Some(&b'.') && body.get(i + 2) != Some(&b'.')));
                }
            }
            prop_assert!(whole.ends_with(b".\r\n"));
            prop_assert!(whole.len() == 3 || whole[..whole.len() - 3].ends_with(b"\r\n"));
            prop_assert!(!(body.first() == Some(&b'.') && body.get(1) != Some(&b'.')));
        }
    }
}
