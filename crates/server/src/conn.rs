//! The connection driver: moves bytes between a socket and a [`Session`].
//!
//! Role: the thin async loop of design.md §3.1 (quinn's `drive_timer`). It reads when the
//! session wants input, writes what the session replied, answers the session's questions by
//! calling policy, hands finished messages to the spool's group committer and sleeps until
//! the session's deadline. It logs the session's notes through telemetry. On STARTTLS it
//! writes the 220, runs the handshake (bounded by the session's `starttls` deadline) on the
//! same socket and goes on over TLS; it keeps no bytes of its own between reads (each read
//! goes to the session whole), so the plaintext the session discards after STARTTLS is all
//! there was.
//!
//! Must not: make SMTP decisions (the session and policy do) or read the clock outside
//! [`crate::clock`]. Generic over the stream so tests drive it over `tokio::io::duplex` with
//! paused time.
//!
//! Memory: a connection in the greeting pause has no task and no read buffer (see
//! [`crate::hold`]); the dialogue's task starts when the pause is over. An idle session holds
//! a 1 KiB read buffer; the buffer doubles (to 64 KiB) only while reads keep filling it
//! (message data) and shrinks back when they stop. After STARTTLS the session also holds
//! rustls' connection state, boxed (about 8 KiB more when idle; docs/benchmarks.md).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use portcullis_config::Action;
use portcullis_policy::Tag;
use portcullis_policy::checks::{self, Outcome, RcptStep, SessionChecks};
use portcullis_policy::recipients::{RecipientVerdict, RelayRights};
use portcullis_smtp::pregreet::Pregreet;
use portcullis_smtp::{
    Ask, ClientFeatures, ClientInfo, CommandDelay, CommitError, Event as SessionEvent, Finding,
    Message, Note, ReversePath, Session, SessionConfig, Verdict, received_header, reply,
};
use portcullis_spool::{Envelope, NewMessage, QueueId, SpoolError, SubmitError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::admission::Ticket;
use crate::clock;
use crate::greet::{self, Admitted, Opening, Paused};
use crate::load::LoadAction;
use crate::state::{Runtime, Shared};
use crate::telemetry::Event;
use crate::tls::Stream;

const MIN_READ: usize = 1024;
const MAX_READ: usize = 64 * 1024;
/// DelayLA's wait before each command (Sendmail sleeps 1 s).
const DELAY_EACH: std::time::Duration = std::time::Duration::from_secs(1);

/// What the `from=` line needs once the commit is done.
struct Pending {
    rx: oneshot::Receiver<Result<QueueId, SpoolError>>,
    from: String,
    size: usize,
    nrcpts: usize,
    msgid: Option<String>,
    proto: &'static str,
}

/// Runs one SMTP session on `stream` until it ends: the greeting pause, then the dialogue.
pub async fn serve_connection<S>(
    shared: Arc<Shared>,
    stream: S,
    peer: IpAddr,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let paused = greet::pause(shared, stream, peer, shutdown, |p| p).await;
    // Boxed: the dialogue's state is allocated only once the pause is over.
    Box::pin(dialogue(paused)).await;
}

/// Builds the session the pause's outcome calls for and runs it to the end.
pub async fn dialogue<S>(paused: Paused<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Paused {
        shared,
        rt,
        mut stream,
        peer,
        shutdown,
        mut admitted,
        ticket,
    } = paused;
    // Sendmail dates the greeting with the connection time, however long the pause.
    let started = admitted.pause.started();
    let pause = admitted.pause.length();
    let waited = clock::now().saturating_duration_since(started);
    // When the client first sent something (its session line and metrics say).
    let mut first_input = match admitted.opening {
        Opening::Talked { at, .. } => Some(at),
        Opening::Greet { first: Some(_) } => Some(clock::now()),
        _ => None,
    };
    let now = clock::wall();
    let connected_at = now.checked_sub(waited).unwrap_or(now);
    let mut buf = vec![0u8; MIN_READ];
    let input = early_input(&mut stream, &admitted.opening, &mut buf).await;
    let client = ClientInfo {
        addr: peer,
        name: admitted.name.take(),
    };
    let relay = client.display();
    let mut driver = Driver {
        shared,
        rt,
        pending: None,
        relay,
        peer,
        quiet_end: false,
        log_id: None,
        delay_trigger: None,
        checks: SessionChecks::default(),
        client_relays: false,
        held_back: ticket.held_back(),
        starttls: None,
        _ticket: ticket,
    };
    let Some(mut session) = driver.open(client, connected_at, &admitted, &buf[..input]) else {
        return; // Dropped by admission: not a word.
    };
    converse(
        &mut driver,
        &mut session,
        stream,
        buf,
        &shutdown,
        &mut first_input,
    )
    .await;
    driver.drain_events(&mut session);
    // Sendmail logs this for every session that ends without MAIL, except in rejecting mode.
    if !session.stats().mail_issued && !session.is_rejecting() && !driver.quiet_end {
        driver.shared.telemetry.emit(Event::NoMailIssued {
            relay: &driver.relay,
        });
    }
    // A connection admission refused (421 in place of the greeting) had no session for a
    // pause to delay: no session line (the report would count it as an unpaused client).
    if matches!(admitted.opening, Opening::Refused(_)) {
        return;
    }
    let qid = driver.log_id(&session);
    driver.shared.telemetry.emit(Event::SessionClosed {
        qid: &qid,
        relay: &driver.relay,
        pause,
        first_input: first_input.map(|at| at.saturating_duration_since(started)),
        duration: clock::now().saturating_duration_since(started),
        messages: session.stats().messages,
        held_back: driver.held_back,
    });
}

/// The dialogue's loop, from the greeting to the end of the session; STARTTLS swaps the
/// plaintext stream for TLS on the way.
async fn converse<S>(
    driver: &mut Driver,
    session: &mut Session,
    stream: S,
    mut buf: Vec<u8>,
    shutdown: &CancellationToken,
    first_input: &mut Option<Instant>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut stream = Stream::Plain(stream);
    let mut shutdown_seen = false;
    loop {
        driver.update_delay(session);
        driver.drain_events(session);
        if session.has_output() {
            let out = session.take_output();
            if !write_out(&mut stream, &out, driver.rt.session.timeouts.command).await {
                break; // The client stopped reading or went away.
            }
        }
        if session.is_closed() {
            break;
        }
        if let Some(discarded) = driver.starttls.take() {
            // Boxed: the handshake's state (rustls' connection, held inline) is allocated only
            // while it runs, not in every session's future.
            let handshake = Box::pin(driver.start_tls(stream, session, discarded));
            let Some(upgraded) = handshake.await else {
                return; // The handshake failed: the socket is gone with it.
            };
            stream = upgraded;
            continue;
        }
        let deadline = session.poll_timeout();
        tokio::select! {
            biased;
            () = shutdown.cancelled(), if !shutdown_seen => {
                shutdown_seen = true;
                session.shutdown();
            }
            result = recv_commit(&mut driver.pending) => driver.commit_finished(session, result),
            n = stream.read(&mut buf), if session.wants_input() => match n {
                Ok(0) | Err(_) => session.handle_eof(clock::now()),
                Ok(n) => {
                    let now = clock::now();
                    first_input.get_or_insert(now);
                    driver.update_delay(session);
                    session.handle_input(&buf[..n], now);
                    resize_read_buffer(&mut buf, n);
                }
            },
            () = sleep_until(deadline) => session.handle_timeout(clock::now()),
        }
    }
    let _ = tokio::time::timeout(driver.rt.session.timeouts.quit, stream.shutdown()).await;
}

/// Writes `out` and flushes it (TLS holds written bytes until flushed) within `limit`.
async fn write_out<S>(stream: &mut Stream<S>, out: &[u8], limit: std::time::Duration) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let write = async {
        stream.write_all(out).await?;
        stream.flush().await
    };
    matches!(tokio::time::timeout(limit, write).await, Ok(Ok(())))
}

/// The bytes that came before the session starts: the early byte the pause read, plus, for
/// a talker, whatever else arrived with it (without waiting for more). Returns the length
/// used in `buf`.
async fn early_input<S: AsyncRead + Unpin>(
    stream: &mut S,
    opening: &Opening,
    buf: &mut [u8],
) -> usize {
    let (Opening::Greet { first: Some(first) } | Opening::Talked { first, .. }) = *opening else {
        return 0;
    };
    buf[0] = first;
    if !matches!(opening, Opening::Talked { .. }) {
        return 1;
    }
    let more = tokio::time::timeout(std::time::Duration::ZERO, stream.read(&mut buf[1..])).await;
    1 + more.map_or(0, |r| r.unwrap_or(0))
}

/// The configuration's `[smtp] delay_checks` as the checks read it.
fn delay_checks(mode: portcullis_config::DelayChecks) -> checks::DelayChecks {
    match mode {
        portcullis_config::DelayChecks::Off => checks::DelayChecks::Off,
        portcullis_config::DelayChecks::Friend => checks::DelayChecks::Friend,
        portcullis_config::DelayChecks::Hater => checks::DelayChecks::Hater,
    }
}

/// Grows the buffer while reads fill it, shrinks it back once they do not.
fn resize_read_buffer(buf: &mut Vec<u8>, used: usize) {
    if used == buf.len() && buf.len() < MAX_READ {
        buf.resize(buf.len() * 2, 0);
    } else if used < MIN_READ && buf.len() > MIN_READ {
        *buf = vec![0u8; MIN_READ];
    }
}

async fn recv_commit(pending: &mut Option<Pending>) -> Option<Result<QueueId, SpoolError>> {
    match pending {
        Some(p) => (&mut p.rx).await.ok(),
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// The per-connection state the driver keeps beside the session.
struct Driver {
    shared: Arc<Shared>,
    /// The configuration this session started with (a reload affects new sessions only).
    rt: Arc<Runtime>,
    pending: Option<Pending>,
    /// `name [addr]` for logs.
    relay: String,
    /// The client's address (rejection summaries count by it).
    peer: IpAddr,
    /// No "did not issue MAIL" line at the end (dropped talker, shutdown in the pause,
    /// refused by admission).
    quiet_end: bool,
    /// The id of log lines about this session before it has a queue id (made on first use).
    log_id: Option<String>,
    /// The `delay_*` threshold the session's command delay was made for (None: no delay).
    delay_trigger: Option<(&'static str, u64, u64)>,
    /// The access-map checks of this session (`Connect:`, `From:`, `To:`, `delay_checks`).
    checks: SessionChecks,
    /// The client may relay to any domain (`[relay] networks`, `Connect:<client> RELAY`).
    client_relays: bool,
    /// A rejection line of this session was held back by a rejection summary.
    held_back: bool,
    /// The session accepted STARTTLS: the handshake comes after the 220 is written. The
    /// number is the plaintext it discarded.
    starttls: Option<usize>,
    /// The connection's place in the admission counts, held until the session ends.
    _ticket: Ticket,
}

impl Driver {
    /// The session for the pause's outcome (the greet_pause action applies here, in one
    /// place: design.md principle 4).
    fn open(
        &mut self,
        client: ClientInfo,
        connected_at: jiff::Timestamp,
        admitted: &Admitted,
        input: &[u8],
    ) -> Option<Session> {
        let cfg = self.rt.session.clone();
        let now = clock::now();
        self.client_relays = self.rt.config.relay.client_may_relay(client.addr)
            || checks::client_may_relay(&self.rt.access, client.name.as_deref(), client.addr);
        // A talker's early lines are commands like any other: DelayLA applies to them too.
        let delay = self.command_delay();
        let features = self
            .rt
            .access
            .lookup_client_for(Tag::SrvFeatures, client.name.as_deref(), client.addr)
            .map_or_else(ClientFeatures::default, |e| ClientFeatures::parse(e.value));
        // `[tls] required_for`: policy picks the clients, the session refuses their MAIL.
        let tls_required = self.rt.config.tls.as_ref().is_some_and(|t| {
            self.rt.tls.is_some() && t.required_for(client.addr, client.name.as_deref())
        });
        let feed = |session: &mut Session| {
            session.set_features(features);
            if tls_required {
                session.require_tls();
            }
            session.set_command_delay(delay.clone());
            if !input.is_empty() {
                session.handle_input(input, now);
            }
        };
        // Sendmail dates the greeting with the connection time, however long the pause.
        let date = clock::rfc5322(connected_at);
        let session = match admitted.opening {
            Opening::Dropped => return None,
            Opening::Greet { .. } => {
                let mut session = if let Some(refusal) = admitted.restrict {
                    // Sendmail's null-server mode for a client over its limit (its
                    // check_relay ends there: the Connect: entry is not consulted).
                    let mut session = Session::new(cfg, client, &date, now);
                    session.reject_commands(refusal.reply(false));
                    session
                } else {
                    self.connect_check(cfg, client, &date, now)?
                };
                feed(&mut session);
                session
            }
            Opening::Refused(refusal) => {
                self.quiet_end = true;
                let mut session = Session::with_greeting(cfg, client, &refusal.reply(true), now);
                session.close_now();
                session
            }
            Opening::Closed => {
                let mut session = Session::new(cfg, client, &date, now);
                session.handle_eof(now);
                session
            }
            Opening::Shutdown => {
                self.quiet_end = true;
                let r = reply::shutting_down(&cfg.hostname);
                Session::with_greeting(cfg, client, &r, now)
            }
            Opening::Talked { at, .. } => {
                let action = self.rt.config.greet_pause.action;
                let pregreet = admitted.pause.traffic(input, at);
                let entry = admitted
                    .entry_line
                    .map(|line| format!("{}:{line}", self.rt.access.source()));
                self.log_pregreet(&pregreet, action, entry.as_deref());
                let rejected = reply::not_accepting(&cfg.hostname);
                match action {
                    Action::Enforce => {
                        let mut session = Session::with_greeting(cfg, client, &rejected, now);
                        session.reject_commands(reply::command_rejected());
                        feed(&mut session);
                        session
                    }
                    Action::Drop => {
                        self.quiet_end = true;
                        let mut session = Session::with_greeting(cfg, client, &rejected, now);
                        session.close_now();
                        session
                    }
                    Action::Ignore => {
                        let mut session = self.connect_check(cfg, client, &date, now)?;
                        feed(&mut session);
                        session
                    }
                }
            }
        };
        Some(session)
    }

    /// The `Connect:` check (Sendmail's check_relay) for a client about to be greeted: the
    /// session it gets. None: dropped (`[access] action = "drop"`).
    fn connect_check(
        &mut self,
        cfg: Arc<SessionConfig>,
        client: ClientInfo,
        date: &str,
        now: Instant,
    ) -> Option<Session> {
        let mode = delay_checks(self.rt.config.smtp.delay_checks);
        let (state, finding) =
            SessionChecks::connect(&self.rt.access, mode, client.name.as_deref(), client.addr);
        self.checks = state;
        let Some(finding) = finding else {
            return Some(Session::new(cfg, client, date, now));
        };
        let action = self.access_finding(None, &finding);
        match (action, &finding.outcome) {
            (Action::Drop, _) => {
                self.quiet_end = true;
                None
            }
            (Action::Enforce, Outcome::Reject(r)) if r.closes() => {
                // `ERROR:"421 ..."`: in place of the greeting, then close.
                self.quiet_end = true;
                let mut session = Session::with_greeting(cfg, client, r, now);
                session.close_now();
                Some(session)
            }
            (Action::Enforce, Outcome::Reject(r)) => {
                let mut session = Session::new(cfg, client, date, now);
                session.reject_commands(r.clone());
                Some(session)
            }
            _ => Some(Session::new(cfg, client, date, now)),
        }
    }

    /// Logs an access finding that refuses or discards (Sendmail logs nothing for OK and
    /// RELAY), applies a discard when enforced, and returns the action to take.
    fn access_finding(&mut self, qid: Option<&str>, finding: &checks::Finding) -> Action {
        let action = self.rt.config.access.action;
        if matches!(finding.outcome, Outcome::Accept | Outcome::Relay) {
            return Action::Enforce;
        }
        let text = finding.log_text(&self.relay);
        let entry = format!("{}:{}", self.rt.access.source(), finding.line);
        self.held_back |= !self.shared.telemetry.emit(Event::AccessCheck {
            qid,
            client: self.peer,
            text: &text,
            action,
            discard: matches!(finding.outcome, Outcome::Discard),
            entry: &entry,
        });
        if action == Action::Enforce {
            self.checks.apply(finding);
        }
        action
    }

    /// The access checks' verdict on MAIL or RCPT, when an entry decides; None: ask policy.
    /// `relay_denied`: the RCPT's recipient is not ours and may not be relayed.
    fn access_verdict(
        &mut self,
        session: &Session,
        ask: &Ask,
        relay_denied: bool,
    ) -> Option<Verdict> {
        let finding = match ask {
            Ask::Mail { sender, .. } => {
                self.checks.end_transaction();
                self.checks.mail(&self.rt.access, sender)?
            }
            Ask::Rcpt { recipient, .. } => {
                // Sendmail's check_rcpt tests relaying before the held delay_checks results.
                match self.checks.rcpt(&self.rt.access, recipient, relay_denied) {
                    RcptStep::Check => return None,
                    // A transaction being discarded: accepted without the user lookup, as
                    // Sendmail does; relaying is still refused.
                    RcptStep::AcceptUnchecked if relay_denied => return None,
                    RcptStep::AcceptUnchecked => return Some(Verdict::Accept),
                    RcptStep::Act(finding) => finding,
                }
            }
            Ask::Helo { .. } | Ask::Data => return None,
        };
        let qid = self.log_id(session);
        match (self.access_finding(Some(&qid), &finding), finding.outcome) {
            (Action::Drop, _) => Some(Verdict::Drop),
            (Action::Enforce, Outcome::Reject(r)) => Some(Verdict::Reject(r)),
            // A DISCARD recipient is accepted as it is (Sendmail's `$#discard` comes before
            // its relay test); the transaction is thrown away.
            (Action::Enforce, Outcome::Discard) => match ask {
                Ask::Rcpt { .. } => Some(Verdict::Accept),
                _ => None,
            },
            _ => None,
        }
    }

    /// What may be relayed to `recipient`: anything for a client with relaying rights; else
    /// whether its domain has `To:<domain> RELAY`.
    fn relay_rights(&self, recipient: &ReversePath) -> RelayRights {
        RelayRights {
            client: self.client_relays,
            recipient_domain: !self.client_relays
                && checks::recipient_domain_relays(&self.rt.access, recipient),
        }
    }

    /// DelayLA: 1 s before each command while a `delay_*` threshold of `[load]` is reached.
    /// Remembers which threshold it was, for [`Driver::update_delay`].
    fn command_delay(&mut self) -> Option<CommandDelay> {
        let reading = self
            .shared
            .load
            .over(&self.rt.config.load, LoadAction::Delay);
        self.delay_trigger = reading.map(|r| r.trigger());
        reading.map(|r| CommandDelay {
            each: DELAY_EACH,
            reason: r.to_string(),
        })
    }

    /// Hands the session a new command delay only when the threshold reached changes: the
    /// driver asks before every command, and building the delay's text allocates.
    fn update_delay(&mut self, session: &mut Session) {
        let reading = self
            .shared
            .load
            .over(&self.rt.config.load, LoadAction::Delay);
        if reading.map(|r| r.trigger()) != self.delay_trigger {
            session.set_command_delay(self.command_delay());
        }
    }

    /// The handshake after `220 Ready to start TLS`, by the session's `starttls` deadline.
    /// Logs the outcome; None when it failed (the session is closed, the socket dropped).
    async fn start_tls<S>(
        &mut self,
        stream: Stream<S>,
        session: &mut Session,
        discarded: usize,
    ) -> Option<Stream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let relay = self.relay.as_str();
        let telemetry = &self.shared.telemetry;
        if discarded > 0 {
            telemetry.emit(Event::TlsPlaintextDiscarded {
                relay,
                bytes: discarded,
            });
        }
        // The session offers STARTTLS only with a certificate, and only once.
        let (Stream::Plain(io), Some(tls)) = (stream, self.rt.tls.as_ref()) else {
            session.tls_failed();
            return None;
        };
        let limit = self.rt.session.timeouts.starttls;
        let deadline = session
            .poll_timeout()
            .unwrap_or_else(|| clock::now() + limit);
        let deadline = tokio::time::Instant::from_std(deadline);
        let failed = |reason: &str, timed_out| {
            telemetry.emit(Event::TlsFailed {
                relay,
                reason,
                timed_out,
            });
        };
        match tokio::time::timeout_at(deadline, tls.accept(io)).await {
            Ok(Ok((tls_stream, info))) => {
                telemetry.emit(Event::TlsStarted { relay, info: &info });
                session.tls_established(info, clock::now());
                Some(Stream::Tls(Box::new(tls_stream)))
            }
            Ok(Err(e)) => {
                failed(&e.to_string(), false);
                session.tls_failed();
                None
            }
            Err(_) => {
                let limit = humantime::format_duration(limit);
                failed(&format!("handshake not done within {limit}"), true);
                session.tls_failed();
                None
            }
        }
    }

    /// The session's queue id, or else an id made once for its log lines.
    fn log_id(&mut self, session: &Session) -> String {
        if let Some(qid) = session.queue_id() {
            return qid.to_owned();
        }
        self.log_id
            .get_or_insert_with(|| self.shared.ids.next(clock::unix_secs()).as_str().to_owned())
            .clone()
    }

    fn log_pregreet(&mut self, pregreet: &Pregreet, action: Action, entry: Option<&str>) {
        let qid = self.shared.ids.next(clock::unix_secs());
        // Sendmail's later lines about the session (a stuffed HELO) carry the same id.
        self.log_id = Some(qid.as_str().to_owned());
        self.held_back |= !self.shared.telemetry.emit(Event::Pregreet {
            qid: qid.as_str(),
            relay: &self.relay,
            client: self.peer,
            seconds: pregreet.seconds(),
            waited_ms: pregreet.waited.as_millis(),
            class: pregreet.class.name(),
            sample: &pregreet.escaped_sample(),
            action,
            entry,
        });
    }

    fn drain_events(&mut self, session: &mut Session) {
        while let Some(ev) = session.poll_event() {
            match ev {
                SessionEvent::Ask(ask) => self.answer(session, &ask),
                SessionEvent::Commit(message) => self.commit(session, *message),
                SessionEvent::Note(note) => self.record(session, note),
                SessionEvent::StartTls { discarded } => self.starttls = Some(discarded),
            }
        }
    }

    fn answer(&mut self, session: &mut Session, ask: &Ask) {
        // A recipient is classified once: the access checks need to know whether it is
        // relaying, policy's reply and the refusal's log line come from the same class.
        let class = match ask {
            Ask::Rcpt { recipient, .. } => Some(
                self.rt
                    .policy
                    .recipients
                    .classify(recipient, self.relay_rights(recipient)),
            ),
            _ => None,
        };
        let relay_denied = matches!(class, Some(RecipientVerdict::RelayDenied));
        let verdict = match self.access_verdict(session, ask, relay_denied) {
            Some(v) => v,
            None => match (ask, &class) {
                (Ask::Rcpt { recipient, .. }, Some(class)) => {
                    let verdict = self.rt.policy.recipients.verdict(class, recipient);
                    if let Verdict::Reject(reply) = &verdict {
                        let qid = self.log_id(session);
                        self.held_back |= !self.shared.telemetry.emit(Event::RecipientRefused {
                            qid: &qid,
                            relay: &self.relay,
                            client: self.peer,
                            recipient: &recipient.to_string(),
                            reply: &reply.to_log_string(),
                            relaying: relay_denied,
                        });
                    }
                    verdict
                }
                _ => self.rt.policy.decide(ask, RelayRights::default()),
            },
        };
        if matches!(ask, Ask::Mail { .. }) && verdict == Verdict::Accept {
            session.set_queue_id(self.shared.ids.next(clock::unix_secs()).as_str());
        }
        session.answer(verdict, clock::now());
    }

    /// Hands the message to the group committer; the reply waits for its callback.
    fn commit(&mut self, session: &mut Session, message: Message) {
        let qid = session.queue_id().and_then(|q| q.parse::<QueueId>().ok());
        let Some(id) = qid else {
            session.commit_done(Err(CommitError::Failed), clock::now());
            return;
        };
        if self.checks.discarding() {
            // A DISCARD entry: the client is told the message was accepted; it is not kept.
            self.shared.telemetry.emit(Event::MessageAccepted {
                qid: id.as_str(),
                from: &message.sender,
                size: message.data.len(),
                nrcpts: message.recipients.len(),
                msgid: portcullis_smtp::data::message_id(&message.data).as_deref(),
                proto: message.protocol,
                relay: &self.relay,
            });
            self.shared
                .telemetry
                .emit(Event::Discarded { qid: id.as_str() });
            session.commit_done(Ok(()), clock::now());
            return;
        }
        let client = session.client();
        let date = clock::rfc5322(clock::wall());
        let header = received_header(
            &self.rt.session.hostname,
            client,
            &message.helo,
            message.protocol,
            id.as_str(),
            message.tls.as_ref(),
            &message.recipients,
            &date,
        );
        let mut data = Vec::with_capacity(header.len() + message.data.len());
        data.extend_from_slice(header.as_bytes());
        data.extend_from_slice(&message.data);
        let msgid = portcullis_smtp::data::message_id(&message.data);
        let nrcpts = message.recipients.len();
        let size = data.len();
        let from = message.sender.clone();
        let envelope = Envelope {
            id: id.clone(),
            received_at: clock::unix_secs(),
            sender: message.sender,
            recipients: message.recipients,
            client_addr: client.addr.to_string(),
            client_name: client.name.clone().unwrap_or_default(),
            helo: message.helo,
            protocol: message.protocol.to_owned(),
            msgid: msgid.clone(),
        };
        let (tx, rx) = oneshot::channel();
        let done = Box::new(move |result| {
            let _ = tx.send(result);
        });
        match self
            .shared
            .committer
            .submit(NewMessage { envelope, data }, done)
        {
            Ok(()) => {
                self.pending = Some(Pending {
                    rx,
                    from,
                    size,
                    nrcpts,
                    msgid,
                    proto: message.protocol,
                });
            }
            Err(e) => {
                let error = match e {
                    SubmitError::Full => "spool queue full",
                    SubmitError::Closed => "spool closed",
                };
                self.shared.telemetry.emit(Event::CommitFailed {
                    qid: Some(id.as_str()),
                    error,
                });
                session.commit_done(Err(CommitError::Storage), clock::now());
            }
        }
    }

    fn commit_finished(
        &mut self,
        session: &mut Session,
        result: Option<Result<QueueId, SpoolError>>,
    ) {
        let Some(p) = self.pending.take() else {
            return;
        };
        match result {
            Some(Ok(id)) => {
                self.shared.telemetry.emit(Event::MessageAccepted {
                    qid: id.as_str(),
                    from: &p.from,
                    size: p.size,
                    nrcpts: p.nrcpts,
                    msgid: p.msgid.as_deref(),
                    proto: p.proto,
                    relay: &self.relay,
                });
                session.commit_done(Ok(()), clock::now());
                self.shared.queue.notify(id);
            }
            Some(Err(e)) => {
                let error = e.to_string();
                self.shared.telemetry.emit(Event::CommitFailed {
                    qid: session.queue_id(),
                    error: &error,
                });
                session.commit_done(Err(CommitError::Storage), clock::now());
            }
            None => {
                self.shared.telemetry.emit(Event::CommitFailed {
                    qid: session.queue_id(),
                    error: "committer stopped",
                });
                session.commit_done(Err(CommitError::Storage), clock::now());
            }
        }
    }

    /// Logs a finding of the session's defences, with the id Sendmail gives its line: the
    /// queue id (or a session id) for the per-message ones, none for the session-level ones.
    fn record_finding(&mut self, session: &Session, finding: &Finding, action: Action) {
        let qid = match finding {
            Finding::TooManyBadCommands | Finding::Unsynchronized { .. } => None,
            _ => Some(self.log_id(session)),
        };
        let rejected = matches!(
            finding,
            Finding::OpenProxy { .. } | Finding::Stuffing { .. }
        );
        if action == Action::Drop || (action == Action::Enforce && rejected) {
            // Dropped without a word, or ended in rejection or the rejecting mode: no "did
            // not issue MAIL" line after this one.
            self.quiet_end = true;
        }
        self.held_back |= !self.shared.telemetry.emit(Event::SessionDefence {
            qid: qid.as_deref(),
            relay: &self.relay,
            client: self.peer,
            finding,
            action,
        });
    }

    fn record(&mut self, session: &Session, note: Note) {
        match note {
            Note::Delaying { command, reason } => {
                let qid = self.log_id(session);
                self.shared.telemetry.emit(Event::Delaying {
                    qid: &qid,
                    relay: &self.relay,
                    command,
                    reason: &reason,
                });
                return;
            }
            Note::Defence { finding, action } => {
                self.record_finding(session, &finding, action);
                return;
            }
            Note::DelayBudgetSpent { spent, command } => {
                let qid = self.log_id(session);
                self.shared.telemetry.emit(Event::DelayBudgetSpent {
                    qid: &qid,
                    relay: &self.relay,
                    command,
                    spent,
                    budget: self.rt.session.delay_budget,
                });
                return;
            }
            _ => {}
        }
        let t = &self.shared.telemetry;
        let qid = session.queue_id();
        let relay = self.relay.as_str();
        match note {
            Note::CommandTimeout { phase } => {
                let host = session
                    .client()
                    .name
                    .clone()
                    .unwrap_or_else(|| relay.to_owned());
                t.emit(Event::CommandTimeout {
                    qid,
                    host: &host,
                    phase: phase.name(),
                });
                if qid.is_some() {
                    t.emit(Event::LostInput {
                        qid,
                        relay,
                        in_data: false,
                    });
                }
            }
            Note::DataTimeout => {
                t.emit(Event::DataTimeout { qid, relay });
            }
            Note::CommitTimeout => {
                t.emit(Event::CommitTimeout { qid, relay });
            }
            Note::ClientClosed { in_data } => {
                if qid.is_some() {
                    t.emit(Event::LostInput {
                        qid,
                        relay,
                        in_data,
                    });
                }
            }
            Note::MessageRefused { reply, size } => {
                let reply = reply.to_log_string();
                t.emit(Event::MessageRefused {
                    qid,
                    relay,
                    reply: &reply,
                    size,
                });
            }
            Note::Delaying { .. } | Note::DelayBudgetSpent { .. } | Note::Defence { .. } => {} // Logged above.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_buffer_adapts() {
        let mut buf = vec![0u8; MIN_READ];
        resize_read_buffer(&mut buf, MIN_READ);
        assert_eq!(buf.len(), 2 * MIN_READ);
        for _ in 0..20 {
            let n = buf.len();
            resize_read_buffer(&mut buf, n);
        }
        assert_eq!(buf.len(), MAX_READ);
        resize_read_buffer(&mut buf, 10);
        assert_eq!(buf.len(), MIN_READ);
    }
}
