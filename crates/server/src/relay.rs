//! One delivery attempt to a next hop: the async driver of a sans-IO [`Client`].
//!
//! Role: move bytes between a connected stream (TCP, or a Unix socket for LMTP) and the
//! client of one envelope, write the message when the client asks for it (dot-stuffed in
//! chunks, never copied whole), and give each phase its timeout. The outcomes, one per
//! recipient, are the client's; what to do with them (retry, bounce, done) is the queue's.
//! Model: the connection driver (`conn.rs`) on the server side.
//!
//! STARTTLS: when the client asks ([`ClientEvent::StartTls`]), the plain conversation stops,
//! the stream is handed to [`relay_tls::handshake`] and the conversation goes on over TLS
//! with the same client. A host whose STARTTLS is refused or whose handshake fails counts as
//! a failed host (the next MX host is tried); it is never retried in plain text.
//!
//! Must not: decide anything about SMTP (the client does) or read the clock outside
//! `tokio::time`. Generic over the stream, so tests drive it over `tokio::io::duplex` with
//! paused time as well as against real peers.
//!
//! Memory: a 4 KiB read buffer and one 64 KiB chunk of stuffed message at a time, besides
//! the message itself, which the caller holds (the spool reads it whole today; streaming it
//! from the file is for the queue runner's wiring).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use portcullis_config::next_hop::{Host, NextHop};
use portcullis_smtp::client::{ClientConfig, Envelope, RcptStatus, dot_stuff, end_of_data};
use portcullis_smtp::{Client, ClientEvent, ClientPhase, RcptOutcome, Reply, TlsState};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::dns::mx::{MxError, MxFuture, MxLookup};
use crate::relay_tls::{self, HopTls, TlsOutcome, TlsReport, TlsTarget};

/// A connection to a next hop: TCP or a Unix socket.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where one next hop can be reached, in the order to try: TCP addresses (each with the
/// name logs give it) or a Unix socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Candidates {
    /// At most [`MAX_CANDIDATES`].
    Tcp(Vec<Candidate>),
    /// `lmtp:unix:/path`.
    Unix(PathBuf),
}

/// One address to try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// As logs name it: `mx.example.net [192.0.2.1]`, `[192.0.2.1]`.
    pub shown: String,
    /// The host's name (an MX host, a bracketed name), which TLS verifies; None for an
    /// address literal.
    pub name: Option<String>,
    pub addr: SocketAddr,
}

/// Addresses tried per attempt at most (MX hosts times their addresses).
pub const MAX_CANDIDATES: usize = 20;

/// Why a next hop has no address to try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreachable {
    /// The failure is for good (no such domain, a null MX): the recipients bounce.
    pub permanent: bool,
    /// The enhanced status code for the DSN and the log.
    pub status: &'static str,
    /// What went wrong, worded for the log and the bounce.
    pub text: String,
}

impl Unreachable {
    fn temporary(text: String) -> Self {
        Self {
            permanent: false,
            status: "4.4.3",
            text,
        }
    }
}

/// Who we are, so a next hop that is this server is never used (a mail loop).
#[derive(Clone, Debug, Default)]
pub struct Us {
    /// Our host name (an MX record naming it points at us).
    pub hostname: String,
    /// Where we listen; an unspecified address (`0.0.0.0`, `[::]`) covers loopback.
    pub listen: Vec<SocketAddr>,
}

impl Us {
    fn is(&self, host: Option<&str>, addr: SocketAddr) -> bool {
        host.is_some_and(|h| h.eq_ignore_ascii_case(&self.hostname))
            || self.listen.iter().any(|l| {
                l.port() == addr.port()
                    && (l.ip() == addr.ip() || (l.ip().is_unspecified() && addr.ip().is_loopback()))
            })
    }
}

/// Sendmail's answer when every way on leads back here.
fn loops_back(hop: &NextHop) -> Unreachable {
    Unreachable {
        permanent: true,
        status: "5.3.5",
        text: format!("{hop}: config error: mail loops back to me (MX problem?)"),
    }
}

/// Resolves `hop`: an address literal as it is, a bracketed name to its addresses (no MX
/// lookup, as Sendmail's `[host]`), a bare domain to its MX hosts by preference (each host's
/// addresses in turn; the domain itself when it has no MX).
pub async fn candidates(
    hop: &NextHop,
    mx: &dyn MxLookup,
    us: &Us,
    limit: Duration,
) -> Result<Candidates, Unreachable> {
    let (host, port) = match hop {
        NextHop::LmtpUnix(path) => return Ok(Candidates::Unix(path.clone())),
        NextHop::Tcp { host, port, .. } => (host, *port),
    };
    let mut found = Vec::new();
    match host {
        Host::Address(a) => {
            let addr = SocketAddr::new(*a, port);
            if us.is(None, addr) {
                return Err(loops_back(hop));
            }
            found.push(Candidate {
                shown: format!("[{a}]"),
                name: None,
                addr,
            });
        }
        Host::Name(n) => {
            let addrs = tokio::time::timeout(limit, tokio::net::lookup_host((n.as_str(), port)))
                .await
                .map_err(|_| Unreachable::temporary(format!("looking up {n} timed out")))?
                .map_err(|e| Unreachable::temporary(format!("cannot resolve {n}: {e}")))?;
            for addr in addrs.take(MAX_CANDIDATES) {
                if us.is(Some(n), addr) {
                    return Err(loops_back(hop));
                }
                found.push(Candidate {
                    shown: format!("{n} [{}]", addr.ip()),
                    name: Some(n.clone()),
                    addr,
                });
            }
        }
        Host::Mx(domain) => {
            let targets = mx
                .lookup(domain)
                .await
                .map_err(|e| mx_unreachable(domain, &e))?;
            // RFC 5321 §5.1: when we are one of the MX hosts, only those more preferred
            // than us are tried; when we are the best, there is nowhere to go.
            let ours = targets
                .iter()
                .filter(|t| {
                    t.host.eq_ignore_ascii_case(&us.hostname)
                        || t.addrs
                            .iter()
                            .any(|ip| us.is(None, SocketAddr::new(*ip, port)))
                })
                .map(|t| t.preference)
                .min();
            'outer: for target in targets {
                if ours.is_some_and(|p| target.preference >= p) {
                    continue;
                }
                for ip in target.addrs {
                    if found.len() == MAX_CANDIDATES {
                        break 'outer;
                    }
                    found.push(Candidate {
                        shown: format!("{} [{ip}]", target.host),
                        name: Some(target.host.clone()),
                        addr: SocketAddr::new(ip, port),
                    });
                }
            }
            if found.is_empty() && ours.is_some() {
                return Err(loops_back(hop));
            }
        }
    }
    if found.is_empty() {
        return Err(Unreachable::temporary(format!(
            "{hop}: no address to connect to"
        )));
    }
    Ok(Candidates::Tcp(found))
}

/// Sendmail's and Postfix's wording for an MX lookup that found nowhere to deliver.
fn mx_unreachable(domain: &str, e: &MxError) -> Unreachable {
    match e {
        MxError::NullMx => Unreachable {
            permanent: true,
            status: "5.1.10",
            text: format!("Domain {domain} does not accept mail (nullMX)"),
        },
        MxError::NoSuchDomain => Unreachable {
            permanent: true,
            status: "5.1.2",
            text: format!("Host unknown (Name server: {domain}: host not found)"),
        },
        // Sendmail (5.1.2) and Postfix's default bounce when no MX host has an address.
        MxError::NoAddresses(host) => Unreachable {
            permanent: true,
            status: "5.1.2",
            text: format!("Host unknown (Name server: {host}: host not found)"),
        },
        MxError::Temporary(why) => {
            Unreachable::temporary(format!("Host name lookup failure ({domain}: {why})"))
        }
    }
}

/// Connects to one candidate within `limit`; the error is worded as Sendmail logs it
/// (`Connection refused by [192.0.2.1]`).
async fn connect_one(
    addr: SocketAddr,
    shown: &str,
    limit: Duration,
) -> Result<Box<dyn Io>, String> {
    match tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            // Commands and the message's last bytes go out at once: with Nagle's algorithm
            // the final dot waits for the peer's delayed ACK (about 40 ms per message).
            let _ = stream.set_nodelay(true);
            Ok(Box::new(stream))
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err(format!("Connection refused by {shown}"))
        }
        Ok(Err(e)) => Err(format!("connect to {shown}: {e}")),
        Err(_) => Err(format!("Connection timed out with {shown}")),
    }
}

/// Connects to an LMTP Unix socket within `limit`, errors worded as [`connect_one`]'s.
async fn connect_unix(path: &Path, shown: &str, limit: Duration) -> Result<Box<dyn Io>, String> {
    match tokio::time::timeout(limit, tokio::net::UnixStream::connect(path)).await {
        Ok(Ok(stream)) => Ok(Box::new(stream)),
        Ok(Err(e)) => Err(format!("connect to {shown}: {e}")),
        Err(_) => Err(format!("Connection timed out with {shown}")),
    }
}

/// Connects to the first of `hop`'s addresses that answers (a bracketed name or a literal;
/// MX lookups go through [`candidates`]). Returns the stream and the peer as logs name it.
pub async fn connect(hop: &NextHop, limit: Duration) -> Result<(Box<dyn Io>, String), String> {
    match candidates(hop, &NoMx, &Us::default(), limit)
        .await
        .map_err(|u| u.text)?
    {
        Candidates::Unix(path) => {
            let shown = format!("unix:{}", path.display());
            Ok((connect_unix(&path, &shown, limit).await?, shown))
        }
        Candidates::Tcp(list) => {
            let mut last = String::new();
            for Candidate { shown, addr, .. } in list {
                match connect_one(addr, &shown, limit).await {
                    Ok(stream) => return Ok((stream, shown)),
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
    }
}

/// What one group of recipients got from one next hop.
#[derive(Debug)]
pub struct GroupResult {
    /// One per recipient, in the envelope's order.
    pub outcomes: Vec<RcptOutcome>,
    /// The peer the outcomes came from (`host [ip]`), or the last one tried.
    pub relay: Option<String>,
    /// STARTTLS with each host tried, in order (at most [`MAX_CANDIDATES`]).
    pub tls: Vec<TlsReport>,
}

/// Delivers `envelope` to `hop`: tries its addresses in order until one holds a session
/// that reaches MAIL (a refused connection, a greeting or EHLO failure, or a lost session
/// before MAIL moves on to the next, as Sendmail and Postfix do with MX hosts). A 5xx
/// greeting defers rather than bounces (Postfix's `smtp_skip_5xx_greeting`): the host
/// refused the session, not the recipients. STARTTLS follows `tls` (and `cfg.starttls`,
/// which the caller sets from it); a refused STARTTLS or a failed handshake moves on too.
#[allow(clippy::too_many_arguments)] // Each is one thing the attempt needs; a struct of them would be read once.
pub async fn deliver_group(
    hop: &NextHop,
    mx: &dyn MxLookup,
    us: &Us,
    cfg: Arc<ClientConfig>,
    tls: &HopTls,
    envelope: Envelope,
    message: &[u8],
    timeouts: &AttemptTimeouts,
) -> GroupResult {
    let all =
        |status: RcptStatus, code: u16, dsn: &str, text: &str, relay: Option<String>| GroupResult {
            outcomes: envelope
                .recipients
                .iter()
                .map(|r| RcptOutcome {
                    recipient: r.clone(),
                    status,
                    reply: Reply::new(code, format!("{dsn} {text}")),
                    remote: false,
                    phase: ClientPhase::Greeting,
                })
                .collect(),
            relay,
            tls: Vec::new(),
        };
    let list = match candidates(hop, mx, us, timeouts.connect).await {
        Ok(Candidates::Tcp(list)) => list,
        Ok(Candidates::Unix(path)) => {
            let shown = format!("unix:{}", path.display());
            return match connect_unix(&path, &shown, timeouts.connect).await {
                Ok(stream) => {
                    let client = Client::new(cfg, shown.clone(), envelope);
                    GroupResult {
                        outcomes: attempt(stream, client, message, timeouts).await,
                        relay: Some(shown),
                        tls: Vec::new(),
                    }
                }
                Err(e) => all(RcptStatus::TempFail, 451, "4.4.1", &e, Some(shown)),
            };
        }
        Err(u) if u.permanent => return all(RcptStatus::PermFail, 550, u.status, &u.text, None),
        Err(u) => return all(RcptStatus::TempFail, 451, u.status, &u.text, None),
    };
    let mut last = None;
    let mut reports = Vec::new();
    let count = list.len();
    for (i, candidate) in list.into_iter().enumerate() {
        let Candidate { shown, name, addr } = candidate;
        let stream = match connect_one(addr, &shown, timeouts.connect).await {
            Ok(s) => s,
            Err(e) => {
                last = Some(all(RcptStatus::TempFail, 451, "4.4.1", &e, Some(shown)));
                continue;
            }
        };
        let target = TlsTarget::new(tls.clone(), name.as_deref(), addr.ip());
        let client = Client::new(cfg.clone(), shown.clone(), envelope.clone());
        let (mut outcomes, report) =
            attempt_tls(stream, client, message, timeouts, Some(&target)).await;
        if let Some(outcome) = report {
            reports.push(TlsReport {
                relay: target.relay,
                outcome,
            });
        }
        // The host failed before the transaction (greeting, EHLO, STARTTLS): the next one.
        let session_failed = outcomes.iter().all(|o| {
            o.status != RcptStatus::Delivered
                && matches!(
                    o.phase,
                    ClientPhase::Greeting
                        | ClientPhase::Ehlo
                        | ClientPhase::StartTls
                        | ClientPhase::TlsHandshake
                )
        });
        if session_failed {
            for o in &mut outcomes {
                o.status = RcptStatus::TempFail;
            }
            if i + 1 < count {
                last = Some(GroupResult {
                    outcomes,
                    relay: Some(shown),
                    tls: Vec::new(),
                });
                continue;
            }
        }
        return GroupResult {
            outcomes,
            relay: Some(shown),
            tls: reports,
        };
    }
    let mut result = last.unwrap_or_else(|| {
        all(
            RcptStatus::TempFail,
            451,
            "4.4.1",
            "no address to connect to",
            None,
        )
    });
    result.tls = reports;
    result
}

/// A resolver for next hops that never need MX lookups (the CLI's `connect`).
struct NoMx;

impl MxLookup for NoMx {
    fn lookup(&self, domain: &str) -> MxFuture {
        let why = format!("no MX lookups here (for {domain})");
        Box::pin(async move { Err(MxError::Temporary(why)) })
    }
}

/// The clock, as tokio's timers read it (paused in tests).
fn now() -> tokio::time::Instant {
    tokio::time::Instant::from_std(crate::clock::now())
}

/// Message bytes stuffed and written per write.
const CHUNK: usize = 64 * 1024;

/// The client-side timeouts of one attempt, with Sendmail's defaults (`Timeout.*` of the
/// client side: `initial` 5m, `helo` 5m, `mail` 10m, `rcpt` 1h, `datainit` 5m, `datablock`
/// 1h, `datafinal` 1h, `quit` 2m), except `starttls`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptTimeouts {
    /// Opening the connection (Sendmail's `Timeout.connect`: the kernel's by default; 1m
    /// here so a black-holed host cannot hold a connection slot for minutes).
    pub connect: Duration,
    /// Waiting for the greeting.
    pub initial: Duration,
    /// Waiting for the EHLO/LHLO/HELO reply.
    pub helo: Duration,
    /// Waiting for the reply to STARTTLS, and then for the TLS handshake (each). 5m,
    /// Postfix's `smtp_starttls_timeout`: Sendmail's `Timeout.starttls` of 1h would let a
    /// host that stalls its handshake hold a connection slot for an hour.
    pub starttls: Duration,
    /// Waiting for the MAIL reply.
    pub mail: Duration,
    /// Waiting for a RCPT reply.
    pub rcpt: Duration,
    /// Waiting for the 354.
    pub datainit: Duration,
    /// Writing one chunk of the message.
    pub datablock: Duration,
    /// Waiting for the reply (LMTP: the replies) after the final dot.
    pub datafinal: Duration,
    /// Waiting for the 221 (the outcomes are final by then).
    pub quit: Duration,
}

impl Default for AttemptTimeouts {
    fn default() -> Self {
        let m = |n: u64| Duration::from_secs(60 * n);
        Self {
            connect: m(1),
            initial: m(5),
            helo: m(5),
            starttls: m(5),
            mail: m(10),
            rcpt: m(60),
            datainit: m(5),
            datablock: m(60),
            datafinal: m(60),
            quit: m(2),
        }
    }
}

impl AttemptTimeouts {
    /// The timeout of what the client waits for in `phase`.
    pub fn for_phase(&self, phase: ClientPhase) -> Duration {
        match phase {
            ClientPhase::Greeting => self.initial,
            ClientPhase::Ehlo => self.helo,
            ClientPhase::StartTls | ClientPhase::TlsHandshake => self.starttls,
            ClientPhase::Mail => self.mail,
            ClientPhase::Rcpt => self.rcpt,
            ClientPhase::Data => self.datainit,
            ClientPhase::Message => self.datablock,
            ClientPhase::DataFinal => self.datafinal,
            ClientPhase::Quit | ClientPhase::Done => self.quit,
        }
    }
}

/// Runs `client` over `stream` until every recipient has its outcome (and the QUIT is
/// answered or timed out), writing `message` (CRLF lines, not yet dot-stuffed) when asked.
/// Returns one outcome per recipient, in envelope order. No TLS: a client configured for
/// STARTTLS fails the host when it gets to it (see [`attempt_tls`]).
pub async fn attempt<S>(
    stream: S,
    client: Client,
    message: &[u8],
    timeouts: &AttemptTimeouts,
) -> Vec<RcptOutcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    attempt_tls(stream, client, message, timeouts, None).await.0
}

/// [`attempt`] with STARTTLS towards `tls`: when the client asks for it, the handshake runs
/// (within `timeouts.starttls`) and the conversation goes on over TLS. Also returns how
/// STARTTLS went, when it came up (not offered to a client that requires it, refused,
/// failed, or established with its version, cipher and verification).
pub async fn attempt_tls<S>(
    stream: S,
    mut client: Client,
    message: &[u8],
    timeouts: &AttemptTimeouts,
    tls: Option<&TlsTarget>,
) -> (Vec<RcptOutcome>, Option<TlsOutcome>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut report = None;
    if let Some(plain) = converse(stream, &mut client, message, timeouts).await {
        match tls {
            None => client.tls_failed("no TLS settings for this next hop"),
            Some(target) => match relay_tls::handshake(plain, target, timeouts.starttls).await {
                Ok((secure, outcome)) => {
                    report = Some(outcome);
                    client.tls_established();
                    // The client never asks twice (it is on TLS now); were it to, stop.
                    if converse(secure, &mut client, message, timeouts)
                        .await
                        .is_some()
                    {
                        client.tls_failed("STARTTLS asked for again over TLS");
                    }
                }
                Err(outcome) => {
                    if let TlsOutcome::Failed { reason, .. } = &outcome {
                        client.tls_failed(reason);
                    }
                    report = Some(outcome);
                }
            },
        }
    }
    let report = report.or_else(|| match client.tls() {
        TlsState::NotOffered => Some(TlsOutcome::NotOffered),
        TlsState::Refused(reply) => Some(TlsOutcome::Refused(reply.to_log_string())),
        TlsState::Failed(why) => Some(TlsOutcome::Failed {
            reason: why.clone(),
            certificate: false,
        }),
        _ => None,
    });
    let outcomes = client
        .outcomes()
        .map(<[RcptOutcome]>::to_vec)
        .unwrap_or_default();
    (outcomes, report)
}

/// The conversation over one stream, until the client is done (then the stream is shut
/// down: None) or asks for STARTTLS (then the stream is handed back for the handshake).
///
/// It reads whenever it writes (RFC 2920 §3.1: a pipelined group larger than the TCP
/// window would otherwise deadlock with a server that writes replies before it reads on),
/// and a server that answers in the middle of the message (an early `552`) is heard: the
/// writing stops and that reply becomes the outcome. Each phase has one deadline, set when
/// the phase begins (while the message is written: from the last write that made progress),
/// so a peer trickling bytes cannot stretch it.
async fn converse<S>(
    stream: S,
    client: &mut Client,
    message: &[u8],
    timeouts: &AttemptTimeouts,
) -> Option<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf = vec![0u8; 4096];
    let mut pending: Vec<u8> = Vec::new();
    let mut written = 0;
    let mut body: Option<Body> = None;
    let mut early = Vec::new();
    let mut phase = client.phase();
    let mut deadline = now() + timeouts.for_phase(phase);
    let mut starttls = false;
    loop {
        while let Some(event) = client.poll_event() {
            match event {
                ClientEvent::WriteMessage if !client.is_done() => body = Some(Body::default()),
                ClientEvent::StartTls if !client.is_done() => starttls = true,
                _ => {}
            }
        }
        if written == pending.len() {
            pending.clear();
            written = 0;
            if client.has_output() {
                pending = client.take_output();
            } else if let Some(b) = body.as_mut() {
                if b.finished {
                    body = None;
                    client.message_written();
                    continue; // Output and events again: held replies are read now.
                }
                b.next_chunk(message, &mut pending);
            }
        }
        if client.is_done() {
            break;
        }
        if starttls && written == pending.len() {
            // RFC 3207 §4: the handshake starts now, over the same connection.
            return Some(rd.unsplit(wr));
        }
        if client.phase() != phase {
            phase = client.phase();
            deadline = now() + timeouts.for_phase(phase);
        }
        let writing = written < pending.len();
        tokio::select! {
            n = rd.read(&mut buf) => match n {
                Ok(0) | Err(_) => client.handle_eof(),
                Ok(n) => {
                    client.handle_input(&buf[..n]);
                    if body.is_some() && heard_a_reply(&mut early, &buf[..n]) {
                        // The server answered before the end of the message: stop writing;
                        // the reply it gave is the outcome.
                        client.handle_eof();
                    }
                }
            },
            w = wr.write(&pending[written..]), if writing => match w {
                Ok(0) | Err(_) => client.handle_eof(),
                Ok(n) => {
                    written += n;
                    if written == pending.len() && wr.flush().await.is_err() {
                        client.handle_eof();
                    }
                    if body.is_some() {
                        deadline = now() + timeouts.datablock;
                    }
                }
            },
            () = tokio::time::sleep_until(deadline) => client.handle_timeout(),
        }
    }
    let _ = tokio::time::timeout(timeouts.quit, wr.shutdown()).await;
    None
}

/// The message being written: where the next chunk starts, and the stuffing state.
#[derive(Debug)]
struct Body {
    offset: usize,
    at_line_start: bool,
    finished: bool,
}

impl Default for Body {
    fn default() -> Self {
        Self {
            offset: 0,
            at_line_start: true,
            finished: false,
        }
    }
}

impl Body {
    /// The next chunk of `message`, stuffed, into `out`; the terminator after the last.
    fn next_chunk(&mut self, message: &[u8], out: &mut Vec<u8>) {
        match message.get(self.offset..) {
            Some(rest) if !rest.is_empty() => {
                let chunk = &rest[..rest.len().min(CHUNK)];
                dot_stuff(chunk, &mut self.at_line_start, out);
                self.offset += chunk.len();
                if self.offset == message.len() {
                    // The terminator rides with the last chunk: one write, one segment.
                    end_of_data(self.at_line_start, out);
                    self.finished = true;
                }
            }
            _ => {
                end_of_data(self.at_line_start, out);
                self.finished = true;
            }
        }
    }
}

/// Collects what the server sent while the message was being written (at most 64 KiB) and
/// says when it holds a complete reply: a last line `ddd text`.
fn heard_a_reply(early: &mut Vec<u8>, input: &[u8]) -> bool {
    let room = portcullis_smtp::client::MAX_REPLY_BYTES.saturating_sub(early.len());
    early.extend_from_slice(&input[..input.len().min(room)]);
    if room < input.len() {
        return true; // Too much: the client's own limit will judge it.
    }
    let Some(text) = early.strip_suffix(b"\n") else {
        return false;
    };
    let last = text.rsplit(|&b| b == b'\n').next().unwrap_or(text);
    last.get(3) == Some(&b' ')
}
