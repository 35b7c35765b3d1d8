//! The SMTP/LMTP client of one delivery attempt, as a sans-IO state machine.
//!
//! Role: one [`Client`] per connection and envelope (a sender and N recipients) to a next hop.
//! The driver connects, feeds the server's bytes in ([`Client::handle_input`]), end of input
//! ([`Client::handle_eof`]) and its own timeouts ([`Client::handle_timeout`], chosen by
//! [`Client::phase`]); it writes [`Client::take_output`] to the socket and, on
//! [`ClientEvent::WriteMessage`], the message itself (through [`dot_stuff`] and
//! [`end_of_data`]) before calling [`Client::message_written`]. Model: quinn-proto, and our own
//! server [`Session`](crate::Session).
//!
//! What it gets right where mail-send and lettre do not (reference/crates.md §2): every
//! recipient gets its own outcome ([`RcptOutcome`]) and a refused RCPT never aborts the
//! others; LMTP reads one reply per accepted recipient after the data (RFC 2033 §4.2); with
//! PIPELINING offered, MAIL, every RCPT and DATA go out in one batch (RFC 2920 §3.1).
//!
//! STARTTLS (RFC 3207): when the configuration asks for it ([`StartTls`]) and the server
//! offers it, the client sends `STARTTLS` alone after the EHLO reply; on `220` it raises
//! [`ClientEvent::StartTls`] and waits while the driver does the handshake, then, told
//! [`Client::tls_established`], forgets every extension the server announced in plain text
//! and says EHLO again (§4.2). A refusal (4xx/5xx) or a failed handshake
//! ([`Client::tls_failed`]) fails the open recipients for now; it never goes on in plain text.
//! Plain text after the `220` (before the handshake) is a protocol error, never read as a reply
//! (a man in the middle could inject replies there).
//!
//! Must not: read a socket or the clock, log, block, do TLS itself, or decide about retries
//! (the queue does, from the outcomes).
//!
//! Invariants:
//! - every recipient of the envelope ends with exactly one outcome, in envelope order, at the
//!   latest when the client is done, whatever the server sends or does (no input panics);
//! - an outcome, once decided, never changes (a late 421 or a lost connection only settles the
//!   recipients that had none);
//! - memory is bounded: a reply may take at most [`MAX_REPLY_BYTES`] on the wire and
//!   smtp-proto's 4096 bytes of text; input after the end is dropped, never stored;
//! - no command carries a CR or LF taken from the envelope: an address with a control
//!   character is refused locally and never sent.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Arc;

use smtp_proto::Error as ProtoError;
use smtp_proto::response::parser::ResponseReceiver;

use crate::reply::Reply;

mod types;
mod wire;

pub use types::{
    ClientConfig, ClientEvent, ClientPhase, Envelope, Extensions, RcptOutcome, RcptStatus,
    StartTls, TlsState,
};
pub use wire::{dot_stuff, end_of_data};
use wire::{first_word, sendable, to_reply};

/// The most bytes one reply may take on the wire (all its lines, line endings included).
/// smtp-proto also caps the text of a reply at 4096 bytes; this bounds what its parser
/// buffers for lines it does not count (e.g. thousands of empty continuation lines).
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Which greeting command was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hello {
    Ehlo,
    Lhlo,
    Helo,
}

impl Hello {
    fn verb(self) -> &'static str {
        match self {
            Self::Ehlo => "EHLO",
            Self::Lhlo => "LHLO",
            Self::Helo => "HELO",
        }
    }
}

/// A reply the client waits for, in the order the server sends them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Greeting,
    Hello(Hello),
    /// The reply to STARTTLS.
    StartTls,
    /// Not a reply: the driver's TLS handshake.
    Handshake,
    Mail,
    /// The RCPT of this envelope index.
    Rcpt(usize),
    Data,
    /// SMTP: the one reply for every accepted recipient (`None`); LMTP: the reply for this
    /// envelope index.
    DataFinal(Option<usize>),
    /// The reply to the lone `.` sent after an unwanted 354 (no recipient was accepted).
    Discard,
    Quit,
}

impl Expect {
    fn phase(self) -> ClientPhase {
        match self {
            Self::Greeting => ClientPhase::Greeting,
            Self::Hello(_) => ClientPhase::Ehlo,
            Self::StartTls => ClientPhase::StartTls,
            Self::Handshake => ClientPhase::TlsHandshake,
            Self::Mail => ClientPhase::Mail,
            Self::Rcpt(_) => ClientPhase::Rcpt,
            Self::Data => ClientPhase::Data,
            Self::DataFinal(_) | Self::Discard => ClientPhase::DataFinal,
            Self::Quit => ClientPhase::Quit,
        }
    }
}

/// How an attempt broke down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Breakdown {
    /// The connection closed or broke.
    Lost,
    /// The driver's timeout for the phase ran out.
    Timeout,
}

/// A decided outcome, before the recipient is attached.
#[derive(Clone, Debug)]
struct Decided {
    status: RcptStatus,
    reply: Reply,
    remote: bool,
    phase: ClientPhase,
}

/// smtp-proto's reply parser, which has no `Debug`.
struct Parser(ResponseReceiver);

impl std::fmt::Debug for Parser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseReceiver")
    }
}

/// One delivery attempt's client.
#[derive(Debug)]
pub struct Client {
    cfg: Arc<ClientConfig>,
    /// How the driver names the next hop, for our own reason texts.
    peer: String,
    envelope: Envelope,
    /// One slot per recipient; set once, never overwritten.
    decided: Vec<Option<Decided>>,
    /// Slots still unset.
    open: usize,
    /// Built once every slot is set.
    outcomes: Option<Vec<RcptOutcome>>,
    /// Recipients whose RCPT got 2xx, in RCPT order.
    accepted: Vec<usize>,
    /// Replies still to come, oldest first.
    expect: VecDeque<Expect>,
    /// The last greeting command sent.
    hello: Hello,
    /// Between 354 and [`Client::message_written`].
    writing: bool,
    done: bool,
    ext: Extensions,
    tls: TlsState,
    remote_name: Option<String>,
    receiver: Parser,
    /// Wire bytes of the reply being parsed.
    reply_bytes: usize,
    /// Input that arrived while the message was being written, read after it.
    held: Vec<u8>,
    output: Vec<u8>,
    events: VecDeque<ClientEvent>,
}

impl Client {
    /// A client for `envelope`, waiting for the greeting of the server the driver is
    /// connected to. `peer` names that server in the client's own reason texts (e.g.
    /// `mx.example.net [192.0.2.1]`, or `[127.0.0.1]:24`).
    ///
    /// Addresses with a control character are refused at once (`501`, never sent). When no
    /// recipient is left to send, the client is done from the start (its outcomes are
    /// final) and the driver need not connect.
    pub fn new(cfg: Arc<ClientConfig>, peer: impl Into<String>, envelope: Envelope) -> Self {
        let hello = if cfg.lmtp { Hello::Lhlo } else { Hello::Ehlo };
        let mut client = Self {
            cfg,
            peer: peer.into(),
            decided: vec![None; envelope.recipients.len()],
            open: envelope.recipients.len(),
            envelope,
            outcomes: None,
            accepted: Vec::new(),
            expect: VecDeque::from([Expect::Greeting]),
            hello,
            writing: false,
            done: false,
            ext: Extensions::default(),
            tls: TlsState::Plain,
            remote_name: None,
            receiver: Parser(ResponseReceiver::default()),
            reply_bytes: 0,
            held: Vec::new(),
            output: Vec::new(),
            events: VecDeque::new(),
        };
        client.refuse_bad_addresses();
        if client.open == 0 {
            client.stop();
        }
        client.check_final();
        client
    }

    // ----- driver interface -------------------------------------------------------------------

    /// Bytes from the server.
    ///
    /// While the message is being written, input is held (up to [`MAX_REPLY_BYTES`]) and read
    /// once [`Client::message_written`] is called, so the reply to the end of data is never
    /// mistaken for an early one, whatever order the driver notices the two in. A server
    /// that refuses the message early and closes is heard at [`Client::handle_eof`].
    pub fn handle_input(&mut self, data: &[u8]) {
        self.parse(data, false);
    }

    /// The server closed the connection (or it broke).
    pub fn handle_eof(&mut self) {
        self.break_down(Breakdown::Lost);
    }

    /// The driver's timeout for the current [`Client::phase`] ran out.
    pub fn handle_timeout(&mut self) {
        self.break_down(Breakdown::Timeout);
    }

    /// The driver's TLS handshake after [`ClientEvent::StartTls`] succeeded: the dialogue
    /// starts again with EHLO (LHLO), over TLS (RFC 3207 §4.2: what the server announced
    /// before is forgotten, and read again from the new reply).
    pub fn tls_established(&mut self) {
        if self.done || self.expect.front() != Some(&Expect::Handshake) {
            return;
        }
        self.expect.pop_front();
        self.tls = TlsState::Active;
        self.ext = Extensions::default();
        self.receiver = Parser(ResponseReceiver::default());
        self.reply_bytes = 0;
        let hello = if self.cfg.lmtp {
            Hello::Lhlo
        } else {
            Hello::Ehlo
        };
        self.send_hello(hello);
    }

    /// The driver's TLS handshake failed (`why`, for the log and the DSN): the open
    /// recipients fail for now and the client is done (nothing more can be said on a broken
    /// TLS session, and nothing is said in plain text).
    pub fn tls_failed(&mut self, why: &str) {
        if self.done {
            return;
        }
        self.tls = TlsState::Failed(why.to_owned());
        let text = format!("4.7.5 {}: TLS handshake failed: {why}", self.peer);
        self.break_off(Reply::new(451, text), ClientPhase::TlsHandshake);
    }

    /// The driver has written the whole message, terminator included. Replies that came
    /// while it wrote are read now, so output and events may follow.
    pub fn message_written(&mut self) {
        if !self.writing || self.done {
            return;
        }
        self.writing = false;
        if self.cfg.lmtp {
            // RFC 2033 §4.2: one reply per accepted recipient, in RCPT order.
            let replies = self.accepted.iter().map(|&i| Expect::DataFinal(Some(i)));
            self.expect.extend(replies);
        } else {
            self.expect.push_back(Expect::DataFinal(None));
        }
        let held = std::mem::take(&mut self.held);
        self.parse(&held, false);
    }

    /// Command bytes to write, in order. The buffer is handed over.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// True when command bytes are waiting.
    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Where the dialogue is (pick the timeout from it).
    pub fn phase(&self) -> ClientPhase {
        if self.done {
            return ClientPhase::Done;
        }
        match self.expect.front() {
            Some(expect) => expect.phase(),
            None if self.writing => ClientPhase::Message,
            None => ClientPhase::Done,
        }
    }

    /// True while the driver should read from the server (also while it writes the
    /// message, so a 421 or a close is noticed).
    pub fn wants_input(&self) -> bool {
        !self.done
    }

    /// True once the attempt is over: flush the output, then close the connection.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Every recipient's outcome in envelope order, once all are final (at the latest when
    /// the client is done).
    pub fn outcomes(&self) -> Option<&[RcptOutcome]> {
        self.outcomes.as_deref()
    }

    /// The server's name for itself: from the EHLO/LHLO/HELO reply, else from the greeting.
    pub fn remote_name(&self) -> Option<&str> {
        self.remote_name.as_deref()
    }

    /// The extensions the server offered (none before the EHLO reply, none after HELO;
    /// after STARTTLS, those of the EHLO over TLS).
    pub fn extensions(&self) -> &Extensions {
        &self.ext
    }

    /// Where the session stands with TLS.
    pub fn tls(&self) -> &TlsState {
        &self.tls
    }

    // ----- reading ------------------------------------------------------------------------------

    /// Reads replies from `data` and acts on each. Once the message is being written, the
    /// rest is held, unless `early` (the attempt is ending while writing).
    fn parse(&mut self, data: &[u8], early: bool) {
        let mut rest = data;
        while !rest.is_empty() && !self.done {
            if self.writing && !early {
                return self.hold(rest);
            }
            if self.expect.front() == Some(&Expect::Handshake) {
                // RFC 3207 §5 (and Postfix's check for injected replies): the next bytes must
                // be the TLS handshake; plain text here is never read as a reply.
                let why = "plain text after the 220 reply to STARTTLS";
                self.tls = TlsState::Failed(why.to_owned());
                return self.protocol_error_in(ClientPhase::TlsHandshake, why);
            }
            // Feed no more than one byte past the reply budget, so the parser never holds
            // more than the budget allows.
            let room = MAX_REPLY_BYTES.saturating_sub(self.reply_bytes) + 1;
            let chunk = rest.get(..room).unwrap_or(rest);
            let mut iter = chunk.iter();
            let result = self.receiver.0.parse(&mut iter);
            let used = chunk.len() - iter.as_slice().len();
            // The parser stops after one reply: go on with what it left, then the tail.
            rest = rest.get(used..).unwrap_or_default();
            self.reply_bytes += used;
            let too_long = self.reply_bytes > MAX_REPLY_BYTES;
            match result {
                _ if too_long => return self.protocol_error("reply too long"),
                Ok(response) => {
                    self.receiver.0.reset();
                    self.reply_bytes = 0;
                    self.on_reply(to_reply(response));
                }
                Err(ProtoError::NeedsMoreData { .. }) => {}
                Err(ProtoError::ResponseTooLong) => return self.protocol_error("reply too long"),
                Err(_) => return self.protocol_error("malformed reply"),
            }
        }
    }

    fn hold(&mut self, data: &[u8]) {
        if self.held.len() + data.len() > MAX_REPLY_BYTES {
            return self.protocol_error("too much input while sending the message body");
        }
        self.held.extend_from_slice(data);
    }

    /// The attempt ends while the message is being written: a reply that came meanwhile is
    /// an early verdict (e.g. a 552 for a message over the server's limit, sent before it
    /// closed), which says more than "lost connection".
    fn read_held_early(&mut self) {
        if self.writing && !self.done && !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            self.parse(&held, true);
        }
    }

    // ----- replies ------------------------------------------------------------------------------

    /// One complete reply from the server.
    fn on_reply(&mut self, reply: Reply) {
        if !(200..600).contains(&reply.code) {
            return self.unexpected(&reply, self.phase());
        }
        let Some(expect) = self.expect.pop_front() else {
            return self.on_early_reply(reply);
        };
        if reply.closes() && expect != Expect::Quit {
            // RFC 5321 §3.8: the server is closing; nothing more will be answered.
            return self.break_off_remote(reply, expect.phase());
        }
        match expect {
            Expect::Greeting => self.on_greeting(reply),
            Expect::Hello(hello) => self.on_hello(hello, reply),
            Expect::StartTls => self.on_starttls(reply),
            Expect::Handshake => self.unexpected(&reply, ClientPhase::TlsHandshake),
            Expect::Mail => self.on_mail(reply),
            Expect::Rcpt(i) => self.on_rcpt(i, reply),
            Expect::Data => self.on_data(reply),
            Expect::DataFinal(target) => self.on_data_final(target, reply),
            Expect::Discard => {}
            Expect::Quit => self.done = true,
        }
        if self.expect.is_empty() && !self.writing && !self.done {
            self.quit();
        }
    }

    fn on_greeting(&mut self, reply: Reply) {
        match reply.code {
            220 => {
                self.remote_name = first_word(&reply);
                self.send_hello(self.hello);
            }
            400..=599 => self.fail_all(&reply, ClientPhase::Greeting),
            _ => self.unexpected(&reply, ClientPhase::Greeting),
        }
    }

    fn on_hello(&mut self, hello: Hello, reply: Reply) {
        match reply.code {
            200..=299 => {
                if let Some(name) = first_word(&reply) {
                    self.remote_name = Some(name);
                }
                if hello != Hello::Helo {
                    self.ext = Extensions::parse(&reply.lines);
                }
                self.after_hello();
            }
            // RFC 5321 §3.2: a server that does not know EHLO gets HELO (not in LMTP, which
            // has no HELO).
            500..=599 if hello == Hello::Ehlo => self.send_hello(Hello::Helo),
            400..=599 => self.fail_all(&reply, ClientPhase::Ehlo),
            _ => self.unexpected(&reply, ClientPhase::Ehlo),
        }
    }

    /// After a successful EHLO/LHLO/HELO: STARTTLS when wanted and offered, a refusal when
    /// required and not offered, else the transaction.
    fn after_hello(&mut self) {
        if self.tls == TlsState::Active || self.cfg.starttls == StartTls::Never {
            return self.start_transaction();
        }
        if self.ext.starttls {
            // Alone, never pipelined (RFC 2920 §3.1: STARTTLS ends a group).
            self.command("STARTTLS");
            self.expect.push_back(Expect::StartTls);
            return;
        }
        if self.cfg.starttls == StartTls::Required {
            self.tls = TlsState::NotOffered;
            // Postfix's words and code for the same case.
            let text = format!(
                "4.7.4 TLS is required, but was not offered by {}",
                self.peer
            );
            return self.fail_all_local(&Reply::new(451, text), ClientPhase::StartTls);
        }
        self.start_transaction();
    }

    fn on_starttls(&mut self, reply: Reply) {
        match reply.code {
            220 => {
                self.tls = TlsState::Handshake;
                self.expect.push_back(Expect::Handshake);
                self.events.push_back(ClientEvent::StartTls);
            }
            400..=599 => {
                // The host failed, not the recipients: for now, whatever the code (its next
                // MX host, or a later attempt, may do better), and never in plain text.
                let text = format!(
                    "4.7.0 {} refused STARTTLS: {}",
                    self.peer,
                    reply.to_log_string()
                );
                self.tls = TlsState::Refused(reply);
                self.fail_all_local(&Reply::new(451, text), ClientPhase::StartTls);
            }
            _ => self.unexpected(&reply, ClientPhase::StartTls),
        }
    }

    fn on_mail(&mut self, reply: Reply) {
        match reply.code {
            200..=299 if !self.ext.pipelining => self.send_next_rcpt(0),
            200..=299 => {}
            // With pipelining, the RCPT and DATA replies still come; they are read and ignored
            // (every recipient is decided now).
            400..=599 => self.fail_all(&reply, ClientPhase::Mail),
            _ => self.unexpected(&reply, ClientPhase::Mail),
        }
    }

    fn on_rcpt(&mut self, i: usize, reply: Reply) {
        let decided = self.decided.get(i).is_none_or(Option::is_some);
        match reply.code {
            _ if decided => {} // MAIL was refused: this reply no longer matters.
            200..=299 => self.accepted.push(i),
            400..=599 => self.decide(i, &reply, true, ClientPhase::Rcpt),
            _ => return self.unexpected(&reply, ClientPhase::Rcpt),
        }
        if !self.ext.pipelining {
            self.send_next_rcpt(i + 1);
        }
    }

    fn on_data(&mut self, reply: Reply) {
        match reply.code {
            354 if self.accepted.is_empty() => {
                // RFC 2920 §3.1: the server took DATA although no RCPT succeeded; end the
                // empty message and ignore its reply.
                self.output.extend_from_slice(b".\r\n");
                self.expect.push_back(Expect::Discard);
            }
            354 => {
                self.writing = true;
                self.events.push_back(ClientEvent::WriteMessage);
            }
            400..=599 => {
                for i in self.accepted.clone() {
                    self.decide(i, &reply, true, ClientPhase::Data);
                }
            }
            _ => self.unexpected(&reply, ClientPhase::Data),
        }
    }

    fn on_data_final(&mut self, target: Option<usize>, reply: Reply) {
        if !matches!(reply.code / 100, 2 | 4 | 5) {
            return self.unexpected(&reply, ClientPhase::DataFinal);
        }
        match target {
            Some(i) => self.decide(i, &reply, true, ClientPhase::DataFinal),
            None => {
                for i in self.accepted.clone() {
                    self.decide(i, &reply, true, ClientPhase::DataFinal);
                }
            }
        }
    }

    /// A reply nothing was waiting for (read by [`Client::read_held_early`]). While the
    /// message is being written, a 4xx/5xx is the server refusing it early (e.g. over its size
    /// limit): it settles the accepted recipients, and the dialogue cannot go on. Anything
    /// else breaks the protocol.
    fn on_early_reply(&mut self, reply: Reply) {
        if self.writing && reply.code >= 400 {
            self.writing = false;
            for i in self.accepted.clone() {
                self.decide(i, &reply, true, ClientPhase::Message);
            }
            self.break_off_remote(reply, ClientPhase::Message);
        } else {
            self.unexpected(&reply, ClientPhase::Message);
        }
    }

    // ----- commands -----------------------------------------------------------------------------

    fn send_hello(&mut self, hello: Hello) {
        self.hello = hello;
        self.command(&format!("{} {}", hello.verb(), self.cfg.helo_name));
        self.expect.push_back(Expect::Hello(hello));
    }

    /// After a successful EHLO/HELO: the checks that need no server, then MAIL (with
    /// PIPELINING also every RCPT and DATA, as one batch: RFC 2920 §3.1).
    fn start_transaction(&mut self) {
        if let Some(limit) = self.ext.size.filter(|&l| l > 0 && self.envelope.size > l) {
            // RFC 1870 §6.1: do not send a message the server said it will not take.
            let text = format!(
                "5.3.4 message size {} exceeds size limit {limit} of {}",
                self.envelope.size, self.peer
            );
            return self.fail_all_local(&Reply::new(552, text), ClientPhase::Mail);
        }
        let utf8 = self.needs_smtputf8();
        if utf8 && !self.ext.smtputf8 {
            let text = format!(
                "5.6.7 SMTPUTF8 is required, but was not offered by {}",
                self.peer
            );
            return self.fail_all_local(&Reply::new(553, text), ClientPhase::Mail);
        }
        let mut mail = format!("MAIL FROM:<{}>", self.envelope.sender);
        if self.ext.size.is_some() {
            let _ = write!(mail, " SIZE={}", self.envelope.size);
        }
        if self.envelope.eight_bit && self.ext.eight_bit_mime {
            mail.push_str(" BODY=8BITMIME");
        }
        if utf8 {
            mail.push_str(" SMTPUTF8");
        }
        self.command(&mail);
        self.expect.push_back(Expect::Mail);
        if self.ext.pipelining {
            for i in 0..self.decided.len() {
                self.send_rcpt(i);
            }
            self.command("DATA");
            self.expect.push_back(Expect::Data);
        }
    }

    /// Without pipelining: RCPT for the next undecided recipient from `from` on, or DATA
    /// once they are all sent (nothing, and so QUIT, when none was accepted).
    fn send_next_rcpt(&mut self, from: usize) {
        let next = (from..self.decided.len()).find(|&i| self.is_open(i));
        match next {
            Some(i) => self.send_rcpt(i),
            None if self.accepted.is_empty() => {}
            None => {
                self.command("DATA");
                self.expect.push_back(Expect::Data);
            }
        }
    }

    fn send_rcpt(&mut self, i: usize) {
        if !self.is_open(i) {
            return;
        }
        let Some(rcpt) = self.envelope.recipients.get(i) else {
            return;
        };
        let line = format!("RCPT TO:<{rcpt}>");
        self.command(&line);
        self.expect.push_back(Expect::Rcpt(i));
    }

    /// Every outcome is in: say goodbye. One envelope per connection, so no RSET.
    fn quit(&mut self) {
        let reply = Reply::new(
            451,
            "4.3.0 internal error: no reply was read for this recipient",
        );
        self.fail_rest(&reply, false, ClientPhase::Quit);
        self.command("QUIT");
        self.expect.push_back(Expect::Quit);
    }

    fn command(&mut self, line: &str) {
        self.output.extend_from_slice(line.as_bytes());
        self.output.extend_from_slice(b"\r\n");
    }

    // ----- outcomes -----------------------------------------------------------------------------

    /// A recipient without an outcome (not refused locally, not yet answered).
    fn is_open(&self, i: usize) -> bool {
        matches!(self.decided.get(i), Some(None))
    }

    /// Sets recipient `i`'s outcome from `reply`, unless it has one.
    fn decide(&mut self, i: usize, reply: &Reply, remote: bool, phase: ClientPhase) {
        if let Some(slot @ None) = self.decided.get_mut(i) {
            *slot = Some(Decided {
                status: RcptStatus::of(reply.code),
                reply: reply.clone(),
                remote,
                phase,
            });
            self.open = self.open.saturating_sub(1);
            self.check_final();
        }
    }

    /// Every recipient still open gets `reply`.
    fn fail_rest(&mut self, reply: &Reply, remote: bool, phase: ClientPhase) {
        for i in 0..self.decided.len() {
            self.decide(i, reply, remote, phase);
        }
    }

    /// The server refused the whole transaction before the data.
    fn fail_all(&mut self, reply: &Reply, phase: ClientPhase) {
        self.fail_rest(reply, true, phase);
    }

    /// We refuse the whole transaction before MAIL.
    fn fail_all_local(&mut self, reply: &Reply, phase: ClientPhase) {
        self.fail_rest(reply, false, phase);
    }

    /// Builds the outcome list once every recipient has one.
    fn check_final(&mut self) {
        if self.outcomes.is_some() || self.open > 0 {
            return;
        }
        let outcomes: Option<Vec<RcptOutcome>> = self
            .decided
            .iter()
            .zip(&self.envelope.recipients)
            .map(|(d, rcpt)| {
                d.as_ref().map(|d| RcptOutcome {
                    recipient: rcpt.clone(),
                    status: d.status,
                    reply: d.reply.clone(),
                    remote: d.remote,
                    phase: d.phase,
                })
            })
            .collect();
        if outcomes.is_some() {
            self.outcomes = outcomes;
            self.events.push_back(ClientEvent::OutcomesFinal);
        }
    }

    // ----- breakdowns ---------------------------------------------------------------------------

    /// The server sent a reply that makes no sense in `phase`.
    fn unexpected(&mut self, reply: &Reply, phase: ClientPhase) {
        let detail = format!("unexpected reply: {}", reply.to_log_string());
        self.protocol_error_in(phase, &detail);
    }

    /// The reply being read cannot be parsed.
    fn protocol_error(&mut self, detail: &str) {
        self.protocol_error_in(self.phase(), detail);
    }

    /// The dialogue is broken (malformed, over-long or unexpected reply): the open
    /// recipients fail for now, and the client stops.
    fn protocol_error_in(&mut self, phase: ClientPhase, detail: &str) {
        if self.done {
            return;
        }
        let text = format!(
            "4.5.0 protocol error from {} while {}: {detail}{}",
            self.peer,
            self.doing(phase),
            duplicate_warning(phase)
        );
        self.break_off(Reply::new(451, text), phase);
    }

    /// The connection broke or the driver timed out: the open recipients fail for now, with
    /// where it happened (Postfix's wording, which names the step).
    fn break_down(&mut self, how: Breakdown) {
        self.read_held_early();
        if self.done {
            return;
        }
        let phase = self.phase();
        let (peer, doing, warning) = (&self.peer, self.doing(phase), duplicate_warning(phase));
        let text = match how {
            Breakdown::Lost => format!("4.4.2 lost connection with {peer} while {doing}{warning}"),
            Breakdown::Timeout => {
                format!("4.4.2 conversation with {peer} timed out while {doing}{warning}")
            }
        };
        if self.tls == TlsState::Handshake {
            self.tls = TlsState::Failed(text.clone());
        }
        self.break_off(Reply::new(451, text), phase);
    }

    /// Ends the attempt at once with a reply of our own for every open recipient.
    fn break_off(&mut self, reply: Reply, phase: ClientPhase) {
        self.fail_rest(&reply, false, phase);
        self.stop();
    }

    /// Ends the attempt at once with the server's reply (421) for every open recipient.
    fn break_off_remote(&mut self, reply: Reply, phase: ClientPhase) {
        self.fail_rest(&reply, true, phase);
        self.stop();
    }

    fn stop(&mut self) {
        self.expect.clear();
        self.writing = false;
        self.done = true;
    }

    // ----- helpers ------------------------------------------------------------------------------

    /// Refuses the addresses that cannot be sent: a control character would end the command
    /// line early (command injection); an empty forward-path is not one.
    fn refuse_bad_addresses(&mut self) {
        if !sendable(&self.envelope.sender) {
            let reply = Reply::new(501, "5.1.7 Bad sender address syntax (not sent)");
            return self.fail_all_local(&reply, ClientPhase::Mail);
        }
        for i in 0..self.decided.len() {
            let bad = self
                .envelope
                .recipients
                .get(i)
                .is_none_or(|r| r.is_empty() || !sendable(r));
            if bad {
                let reply = Reply::new(501, "5.1.3 Bad recipient address syntax (not sent)");
                self.decide(i, &reply, false, ClientPhase::Rcpt);
            }
        }
    }

    /// The envelope needs SMTPUTF8: declared so, or a non-ASCII address (RFC 6531 §3.4).
    fn needs_smtputf8(&self) -> bool {
        self.envelope.smtputf8
            || !self.envelope.sender.is_ascii()
            || self
                .decided
                .iter()
                .zip(&self.envelope.recipients)
                .any(|(d, r)| d.is_none() && !r.is_ascii())
    }

    /// What the client is doing in `phase`, for reason texts.
    fn doing(&self, phase: ClientPhase) -> String {
        match phase {
            ClientPhase::Greeting => "waiting for the greeting".to_owned(),
            ClientPhase::Ehlo => format!("waiting for the reply to {}", self.hello.verb()),
            ClientPhase::StartTls => "waiting for the reply to STARTTLS".to_owned(),
            ClientPhase::TlsHandshake => "doing the TLS handshake".to_owned(),
            ClientPhase::Mail => "waiting for the reply to MAIL FROM".to_owned(),
            ClientPhase::Rcpt => "waiting for the reply to RCPT TO".to_owned(),
            ClientPhase::Data => "waiting for the reply to DATA".to_owned(),
            ClientPhase::Message => "sending the message body".to_owned(),
            ClientPhase::DataFinal => "waiting for the reply to end of data".to_owned(),
            ClientPhase::Quit | ClientPhase::Done => "waiting for the reply to QUIT".to_owned(),
        }
    }
}

/// Postfix's warning when the attempt breaks after the data was sent: the server may have
/// taken the message, and the retry may deliver it again.
fn duplicate_warning(phase: ClientPhase) -> &'static str {
    if phase == ClientPhase::DataFinal {
        " -- message may be sent more than once"
    } else {
        ""
    }
}
