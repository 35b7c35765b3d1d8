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
//! Memory: a 4 KiB read buffer and one 64 KiB chunk of stuffed message at a time.

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
    loop {
        if client.has_output() {
            let limit = timeouts.for_phase(client.phase());
            if !flush(&mut wr, &mut client, limit).await {
                client.handle_eof();
            }
        }
        let mut write_message = false;
        while let Some(event) = client.poll_event() {
            write_message |= event == ClientEvent::WriteMessage;
        }
        if write_message {
            if write_stuffed(&mut wr, message, timeouts.datablock).await {
                client.message_written();
            } else {
                client.handle_eof();
            }
            continue; // Output and events again: replies held meanwhile are read now.
        }
        if client.is_done() || !client.wants_input() {
            break;
        }
        match tokio::time::timeout(timeouts.for_phase(client.phase()), rd.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => client.handle_eof(),
            Ok(Ok(n)) => client.handle_input(&buf[..n]),
            Err(_) => client.handle_timeout(),
        }
    }
    let _ = tokio::time::timeout(timeouts.quit, wr.shutdown()).await;
    client
        .outcomes()
        .map(<[RcptOutcome]>::to_vec)
        .unwrap_or_default()
}

/// Writes the client's pending output within `limit`. False when the peer is gone or slow.
async fn flush<W: AsyncWrite + Unpin>(wr: &mut W, client: &mut Client, limit: Duration) -> bool {
    let out = client.take_output();
    matches!(
        tokio::time::timeout(limit, wr.write_all(&out)).await,
        Ok(Ok(()))
    )
}

/// Writes `message` dot-stuffed and terminated, chunk by chunk, each chunk within `limit`.
async fn write_stuffed<W: AsyncWrite + Unpin>(wr: &mut W, message: &[u8], limit: Duration) -> bool {
    let mut at_line_start = true;
    let mut out = Vec::with_capacity(CHUNK + CHUNK / 8);
    for chunk in message.chunks(CHUNK) {
        out.clear();
        dot_stuff(chunk, &mut at_line_start, &mut out);
        if !matches!(
            tokio::time::timeout(limit, wr.write_all(&out)).await,
            Ok(Ok(()))
        ) {
            return false;
        }
    }
    out.clear();
    end_of_data(at_line_start, &mut out);
    matches!(
        tokio::time::timeout(limit, async {
            wr.write_all(&out).await?;
            wr.flush().await
        })
        .await,
        Ok(Ok(()))
    )
}
