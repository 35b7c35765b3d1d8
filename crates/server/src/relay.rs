//! One delivery attempt to a next hop: the async driver of a sans-IO [`Client`].
//!
//! Role: move bytes between a connected stream (TCP, or a Unix socket for LMTP) and the
//! client of one envelope, write the message when the client asks for it (dot-stuffed in
//! chunks, never copied whole), and give each phase its timeout. The outcomes, one per
//! recipient, are the client's; what to do with them (retry, bounce, done) is the queue's.
//! Model: the connection driver (`conn.rs`) on the server side.
//!
//! Must not: decide anything about SMTP (the client does) or read the clock outside
//! `tokio::time`. Generic over the stream, so tests drive it over `tokio::io::duplex` with
//! paused time as well as against real peers.
//!
//! Memory: a 4 KiB read buffer and one 64 KiB chunk of stuffed message at a time, besides
//! the message itself, which the caller holds (the spool reads it whole today; streaming it
//! from the file is for the queue runner's wiring).

use std::time::Duration;

use portcullis_config::next_hop::{Host, NextHop};
use portcullis_smtp::client::{dot_stuff, end_of_data};
use portcullis_smtp::{Client, ClientEvent, ClientPhase, RcptOutcome};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A connection to a next hop: TCP or a Unix socket.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Connects to `hop` within `limit` (per address tried). Returns the stream and the peer as
/// logs name it (`[192.0.2.1]`, `mail.example.net [192.0.2.1]`, `unix:/path`).
///
/// A bracketed name is resolved to its addresses and each is tried in turn. MX lookups
/// (a bare domain) are not done yet: such a next hop is refused with a reason.
pub async fn connect(hop: &NextHop, limit: Duration) -> Result<(Box<dyn Io>, String), String> {
    let (host, port) = match hop {
        NextHop::LmtpUnix(path) => {
            let stream = tokio::time::timeout(limit, tokio::net::UnixStream::connect(path))
                .await
                .map_err(|_| format!("connect to unix:{} timed out", path.display()))?
                .map_err(|e| format!("connect to unix:{}: {e}", path.display()))?;
            return Ok((Box::new(stream), format!("unix:{}", path.display())));
        }
        NextHop::Tcp { host, port, .. } => (host, *port),
    };
    let (name, addrs) = match host {
        Host::Address(a) => (None, vec![std::net::SocketAddr::new(*a, port)]),
        Host::Name(n) => {
            let found = tokio::time::timeout(limit, tokio::net::lookup_host((n.as_str(), port)))
                .await
                .map_err(|_| format!("looking up {n} timed out"))?
                .map_err(|e| format!("cannot resolve {n}: {e}"))?;
            (Some(n.as_str()), found.collect())
        }
        Host::Mx(d) => {
            return Err(format!(
                "MX lookup for {d} is not done yet: write the next hop with the host in brackets"
            ));
        }
    };
    let mut last = format!("{} has no address", name.unwrap_or("the next hop"));
    for addr in addrs {
        let shown = match name {
            Some(n) => format!("{n} [{}]", addr.ip()),
            None => format!("[{}]", addr.ip()),
        };
        match tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok((Box::new(stream), shown)),
            Ok(Err(e)) => last = format!("connect to {shown}:{port}: {e}"),
            Err(_) => last = format!("connect to {shown}:{port} timed out"),
        }
    }
    Err(last)
}

/// The clock, as tokio's timers read it (paused in tests).
fn now() -> tokio::time::Instant {
    tokio::time::Instant::from_std(crate::clock::now())
}

/// Message bytes stuffed and written per write.
const CHUNK: usize = 64 * 1024;

/// The client-side timeouts of one attempt, with Sendmail's defaults (`Timeout.*` of the
/// client side: `initial` 5m, `helo` 5m, `mail` 10m, `rcpt` 1h, `datainit` 5m, `datablock`
/// 1h, `datafinal` 1h, `quit` 2m).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptTimeouts {
    /// Waiting for the greeting.
    pub initial: Duration,
    /// Waiting for the EHLO/LHLO/HELO reply.
    pub helo: Duration,
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
            initial: m(5),
            helo: m(5),
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
/// Returns one outcome per recipient, in envelope order.
///
/// It reads whenever it writes (RFC 2920 §3.1: a pipelined group larger than the TCP
/// window would otherwise deadlock with a server that writes replies before it reads on),
/// and a server that answers in the middle of the message (an early `552`) is heard: the
/// writing stops and that reply becomes the outcome. Each phase has one deadline, set when
/// the phase begins (while the message is written: from the last write that made progress),
/// so a peer trickling bytes cannot stretch it.
pub async fn attempt<S>(
    stream: S,
    mut client: Client,
    message: &[u8],
    timeouts: &AttemptTimeouts,
) -> Vec<RcptOutcome>
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
    loop {
        while let Some(event) = client.poll_event() {
            if event == ClientEvent::WriteMessage && !client.is_done() {
                body = Some(Body::default());
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
    client
        .outcomes()
        .map(<[RcptOutcome]>::to_vec)
        .unwrap_or_default()
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
