//! The next hop of the `relay` scenario: a fast SMTP (or LMTP) sink on 127.0.0.1:0 that
//! accepts everything, counts messages, recipients and bytes, and records when each
//! message arrived by the sequence number in its `X-Bench-Seq:` header.
//!
//! It speaks just enough ESMTP for a relaying MTA: EHLO (PIPELINING, 8BITMIME) or LHLO,
//! HELO, MAIL, RCPT, DATA (the end is the line `.`; the data is not unstuffed), RSET,
//! NOOP, QUIT. Replies to pipelined commands go out in one write once the input is used
//! up. In LMTP mode it answers one 250 per recipient after the data.
//!
//! It must not listen beyond loopback, buffer unbounded input (lines are read in bounded
//! pieces), wait on a silent peer forever (each read ends after [`IDLE`]) or outlive its
//! scenario (the caller aborts the handle).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::clock;

/// The header the load generator puts in each message.
pub(crate) const SEQ_HEADER: &str = "X-Bench-Seq";
/// Longest piece of a line read at once (longer lines are read in several pieces).
const MAX_PIECE: u64 = 64 * 1024;
/// A connection silent this long is closed.
const IDLE: Duration = Duration::from_secs(60);
/// Connections accepted at most (the scenario's bound on messages comes first).
const MAX_CONNECTIONS: u64 = 100_000_000;
/// Lines read per connection at most.
const MAX_LINES: u64 = 1_000_000_000;
/// Sequence numbers tracked at most.
pub(crate) const MAX_MESSAGES: u64 = 10_000_000;

/// What the sink saw, shared with the load generator.
#[derive(Debug)]
pub(crate) struct Tracker {
    origin: Instant,
    /// Per sequence number: microseconds from `origin` to the server's 250, plus one (0:
    /// not accepted).
    accepted_at: Vec<AtomicU64>,
    /// Per sequence number: microseconds from `origin` to the end of the data at the sink,
    /// plus one (0: not arrived).
    arrived_at: Vec<AtomicU64>,
    /// Distinct sequence numbers arrived.
    pub(crate) arrived: AtomicU64,
    /// Messages whose sequence number had arrived before.
    pub(crate) duplicates: AtomicU64,
    /// Messages without a valid sequence number.
    pub(crate) unnumbered: AtomicU64,
    /// Transactions that ended with the data (any sequence number or none).
    pub(crate) messages: AtomicU64,
    /// Recipients of those transactions.
    pub(crate) recipients: AtomicU64,
    /// Data bytes as received (dot-stuffed, the final `.` line included).
    pub(crate) bytes: AtomicU64,
    /// Connections accepted.
    pub(crate) connections: AtomicU64,
    /// Connections open now, and at most.
    open: AtomicU64,
    pub(crate) peak_open: AtomicU64,
    /// Commands the sink did not expect (the wrong greeting verb for its protocol, unknown
    /// verbs, DATA without recipients).
    pub(crate) bad_commands: AtomicU64,
    /// µs from the 354 to the final `.`: how long the sender took to send the message.
    pub(crate) data_time: Mutex<Histogram<u64>>,
    /// µs from accepting a connection to its QUIT.
    pub(crate) session_time: Mutex<Histogram<u64>>,
}

fn micros_since(origin: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(origin).as_micros()).unwrap_or(u64::MAX - 1)
}

/// Records `d` in a shared histogram.
fn record(h: &Mutex<Histogram<u64>>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    h.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .saturating_record(us);
}

impl Tracker {
    /// A tracker for sequence numbers `0..messages`, timing from `origin`.
    pub(crate) fn new(messages: u64, origin: Instant) -> anyhow::Result<Self> {
        let n = messages.min(MAX_MESSAGES) as usize;
        let table = || (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        let hist =
            || -> anyhow::Result<_> { Ok(Mutex::new(Histogram::new_with_max(3_600_000_000, 3)?)) };
        Ok(Self {
            origin,
            accepted_at: table(),
            arrived_at: table(),
            arrived: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            unnumbered: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            recipients: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            open: AtomicU64::new(0),
            peak_open: AtomicU64::new(0),
            bad_commands: AtomicU64::new(0),
            data_time: hist()?,
            session_time: hist()?,
        })
    }

    /// A copy of a shared histogram.
    pub(crate) fn snapshot(h: &Mutex<Histogram<u64>>) -> Histogram<u64> {
        h.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The instant times are measured from.
    pub(crate) fn origin(&self) -> Instant {
        self.origin
    }

    /// Notes the server's 250 for `seq` at `at`.
    pub(crate) fn accepted(&self, seq: u64, at: Instant) {
        if let Some(slot) = self.accepted_at.get(seq as usize) {
            slot.store(micros_since(self.origin, at) + 1, Ordering::Relaxed);
        }
    }

    /// Notes the arrival of `seq` (None: a message without a usable number) at `at`.
    pub(crate) fn arrival(&self, seq: Option<u64>, at: Instant) {
        let slot = seq.and_then(|s| self.arrived_at.get(s as usize));
        let Some(slot) = slot else {
            self.unnumbered.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let t = micros_since(self.origin, at) + 1;
        match slot.compare_exchange(0, t, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => {
                self.arrived.fetch_add(1, Ordering::Release);
            }
            Err(_) => {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Per sequence number: (µs to the 250, µs to the arrival), each if it happened.
    pub(crate) fn times(&self) -> impl Iterator<Item = (Option<u64>, Option<u64>)> + '_ {
        let get = |a: &AtomicU64| a.load(Ordering::Acquire).checked_sub(1);
        self.accepted_at
            .iter()
            .zip(&self.arrived_at)
            .map(move |(a, b)| (get(a), get(b)))
    }
}

/// Starts the sink; returns its address and the accept loop's handle.
pub(crate) async fn start(
    lmtp: bool,
    tracker: Arc<Tracker>,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        for _ in 0..MAX_CONNECTIONS {
            let Ok((stream, _)) = listener.accept().await else {
                break;
            };
            let tracker = Arc::clone(&tracker);
            tokio::spawn(async move {
                tracker.connections.fetch_add(1, Ordering::Relaxed);
                let now_open = tracker.open.fetch_add(1, Ordering::Relaxed) + 1;
                tracker.peak_open.fetch_max(now_open, Ordering::Relaxed);
                let mut counted_out = false;
                let _ = serve(stream, lmtp, &tracker, &mut counted_out).await;
                if !counted_out {
                    tracker.open.fetch_sub(1, Ordering::Relaxed);
                }
            });
        }
    });
    Ok((addr, handle))
}

/// The sequence number in a header line `X-Bench-Seq: 123` (any case), if it is one.
pub(crate) fn parse_seq(line: &[u8]) -> Option<u64> {
    let name = SEQ_HEADER.as_bytes();
    let head = line.get(..name.len())?;
    if !head.eq_ignore_ascii_case(name) {
        return None;
    }
    let value = line[name.len()..].strip_prefix(b":")?;
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// Where a connection is in its dialogue.
struct Transaction {
    rcpts: u64,
    in_data: bool,
    /// In the data: still in the header section, and at the start of a line.
    in_headers: bool,
    line_start: bool,
    seq: Option<u64>,
    bytes: u64,
    /// When the 354 was queued.
    data_start: Option<Instant>,
}

impl Transaction {
    fn new() -> Self {
        Self {
            rcpts: 0,
            in_data: false,
            in_headers: true,
            line_start: true,
            seq: None,
            bytes: 0,
            data_start: None,
        }
    }
}

/// One connection. At QUIT it stops counting the connection as open before it answers, so
/// a client that opens its next connection on the 221 is never counted twice
/// (`counted_out` tells the caller).
async fn serve(
    stream: TcpStream,
    lmtp: bool,
    tracker: &Tracker,
    counted_out: &mut bool,
) -> std::io::Result<()> {
    let opened = clock::now();
    stream.set_nodelay(true)?;
    let mut io = BufReader::with_capacity(64 * 1024, stream);
    let banner: &[u8] = if lmtp {
        b"220 sink.bench.test LMTP ready\r\n"
    } else {
        b"220 sink.bench.test ESMTP ready\r\n"
    };
    io.get_mut().write_all(banner).await?;
    let mut out: Vec<u8> = Vec::with_capacity(256);
    let mut line = Vec::with_capacity(1024);
    let mut t = Transaction::new();
    for _ in 0..MAX_LINES {
        line.clear();
        let got = timeout(IDLE, (&mut io).take(MAX_PIECE).read_until(b'\n', &mut line))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if got == 0 {
            break;
        }
        let whole = line.last() == Some(&b'\n');
        if t.in_data {
            data_piece(&mut t, &line, whole, lmtp, tracker, &mut out);
        } else if command(&mut t, &line, lmtp, tracker, &mut out) {
            record(&tracker.session_time, clock::now() - opened);
            tracker.open.fetch_sub(1, Ordering::Relaxed);
            *counted_out = true;
            io.get_mut().write_all(&out).await?;
            break;
        }
        // Pipelined commands: answer them together once the client's input is used up.
        if !out.is_empty() && io.buffer().is_empty() {
            io.get_mut().write_all(&out).await?;
            out.clear();
        }
    }
    Ok(())
}

/// One piece of the data (a whole line when `whole`); at the final `.` line, records the
/// message and queues its reply (replies) in `out`.
fn data_piece(
    t: &mut Transaction,
    piece: &[u8],
    whole: bool,
    lmtp: bool,
    tracker: &Tracker,
    out: &mut Vec<u8>,
) {
    t.bytes += piece.len() as u64;
    let at_start = t.line_start;
    t.line_start = whole;
    if !at_start {
        return;
    }
    if piece == b".\r\n" || piece == b".\n" {
        let now = clock::now();
        tracker.arrival(t.seq, now);
        if let Some(start) = t.data_start {
            record(&tracker.data_time, now - start);
        }
        tracker.messages.fetch_add(1, Ordering::Relaxed);
        tracker.recipients.fetch_add(t.rcpts, Ordering::Relaxed);
        tracker.bytes.fetch_add(t.bytes, Ordering::Relaxed);
        let replies = if lmtp { t.rcpts.max(1) } else { 1 };
        for _ in 0..replies {
            out.extend_from_slice(b"250 2.0.0 Ok: queued\r\n");
        }
        *t = Transaction::new();
        return;
    }
    if t.in_headers {
        if piece == b"\r\n" || piece == b"\n" {
            t.in_headers = false;
        } else if t.seq.is_none() {
            t.seq = parse_seq(piece);
        }
    }
}

/// One command line; queues its reply in `out`. True when the connection should close.
fn command(
    t: &mut Transaction,
    line: &[u8],
    lmtp: bool,
    tracker: &Tracker,
    out: &mut Vec<u8>,
) -> bool {
    let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
    let mut bad = false;
    let reply: &[u8] = match (&verb[..], lmtp) {
        (b"EHLO", false) | (b"LHLO", true) => {
            b"250-sink.bench.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
        }
        (b"HELO", false) => b"250 sink.bench.test\r\n",
        (b"MAIL", _) => {
            *t = Transaction::new();
            b"250 2.1.0 Ok\r\n"
        }
        (b"RCPT", _) => {
            t.rcpts += 1;
            b"250 2.1.5 Ok\r\n"
        }
        (b"DATA", _) if t.rcpts > 0 => {
            t.in_data = true;
            t.data_start = Some(clock::now());
            b"354 End data with <CR><LF>.<CR><LF>\r\n"
        }
        (b"RSET", _) => {
            *t = Transaction::new();
            b"250 2.0.0 Ok\r\n"
        }
        (b"NOOP", _) => b"250 2.0.0 Ok\r\n",
        (b"QUIT", _) => {
            out.extend_from_slice(b"221 2.0.0 Bye\r\n");
            return true;
        }
        (b"DATA", _) => {
            bad = true;
            b"554 5.5.1 No valid recipients\r\n"
        }
        _ => {
            bad = true;
            b"500 5.5.2 Command not recognized\r\n"
        }
    };
    if bad {
        tracker.bad_commands.fetch_add(1, Ordering::Relaxed);
    }
    out.extend_from_slice(reply);
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::Client;

    #[test]
    fn parses_sequence_headers() {
        assert_eq!(parse_seq(b"X-Bench-Seq: 42\r\n"), Some(42));
        assert_eq!(parse_seq(b"x-bench-seq:7\r\n"), Some(7));
        assert_eq!(parse_seq(b"X-Bench-Seq: x\r\n"), None);
        assert_eq!(parse_seq(b"X-Bench-Sequence: 1\r\n"), None);
        assert_eq!(parse_seq(b"Subject: X-Bench-Seq: 1\r\n"), None);
        assert_eq!(parse_seq(b"X-Be"), None);
    }

    async fn talk(lmtp: bool, pipelined: bool) -> Arc<Tracker> {
        let tracker = Arc::new(Tracker::new(10, clock::now()).unwrap());
        let (addr, handle) = start(lmtp, Arc::clone(&tracker)).await.unwrap();
        let hard = clock::now() + Duration::from_secs(10);
        let mut c = Client::connect(addr, None, hard).await.unwrap();
        c.expect("greeting", 220).await.unwrap();
        let hello: &[u8] = if lmtp { b"LHLO me\r\n" } else { b"EHLO me\r\n" };
        c.send("hello", hello).await.unwrap();
        let ehlo = c.expect("hello", 250).await.unwrap();
        assert!(ehlo.text.contains("PIPELINING") && ehlo.text.contains("8BITMIME"));
        for seq in [3u64, 5] {
            let cmds = "MAIL FROM:<a@b.example> BODY=8BITMIME\r\nRCPT TO:<x@example.net>\r\n\
                        RCPT TO:<y@example.net>\r\nDATA\r\n";
            if pipelined {
                c.send("cmds", cmds.as_bytes()).await.unwrap();
                for code in [250, 250, 250, 354] {
                    c.expect("cmds", code).await.unwrap();
                }
            } else {
                for cmd in cmds.split_inclusive("\r\n") {
                    c.send("cmd", cmd.as_bytes()).await.unwrap();
                    let want = if cmd.starts_with("DATA") { 354 } else { 250 };
                    c.expect("cmd", want).await.unwrap();
                }
            }
            let body = format!(
                "Received: from x\r\n\tby y\r\n{SEQ_HEADER}: {seq}\r\nSubject: s\r\n\r\n\
                 {SEQ_HEADER}: 9\r\n..leading dot\r\n{}\r\n.\r\n",
                "z".repeat(100_000)
            );
            c.send("data", body.as_bytes()).await.unwrap();
            c.expect("data-end", 250).await.unwrap();
            if lmtp {
                c.expect("data-end 2", 250).await.unwrap();
            }
        }
        c.send("rset", b"RSET\r\nNOOP\r\n").await.unwrap();
        c.expect("rset", 250).await.unwrap();
        c.expect("noop", 250).await.unwrap();
        c.send("quit", b"QUIT\r\n").await.unwrap();
        c.expect("quit", 221).await.unwrap();
        handle.abort();
        tracker
    }

    fn check(t: &Tracker) {
        assert_eq!(t.messages.load(Ordering::Relaxed), 2);
        assert_eq!(t.recipients.load(Ordering::Relaxed), 4);
        assert_eq!(t.arrived.load(Ordering::Relaxed), 2);
        assert_eq!(t.duplicates.load(Ordering::Relaxed), 0);
        assert_eq!(t.unnumbered.load(Ordering::Relaxed), 0);
        assert_eq!(t.bad_commands.load(Ordering::Relaxed), 0);
        assert!(t.bytes.load(Ordering::Relaxed) > 200_000);
        assert_eq!(Tracker::snapshot(&t.data_time).len(), 2);
        assert_eq!(Tracker::snapshot(&t.session_time).len(), 1);
        let arrived: Vec<usize> = t
            .times()
            .enumerate()
            .filter(|(_, (_, b))| b.is_some())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(arrived, vec![3, 5]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn smtp_one_by_one_and_pipelined() {
        check(&*talk(false, false).await);
        check(&*talk(false, true).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lmtp_answers_per_recipient() {
        check(&*talk(true, true).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refuses_the_other_protocols_greeting_and_counts_duplicates() {
        let tracker = Arc::new(Tracker::new(10, clock::now()).unwrap());
        let (addr, handle) = start(false, Arc::clone(&tracker)).await.unwrap();
        let hard = clock::now() + Duration::from_secs(10);
        let mut c = Client::connect(addr, None, hard).await.unwrap();
        c.expect("greeting", 220).await.unwrap();
        c.send("lhlo", b"LHLO me\r\nDATA\r\n").await.unwrap();
        c.expect("lhlo", 500).await.unwrap();
        c.expect("data", 554).await.unwrap();
        for _ in 0..2 {
            c.send("m", b"MAIL FROM:<>\r\nRCPT TO:<a@example.net>\r\nDATA\r\n")
                .await
                .unwrap();
            for code in [250, 250, 354] {
                c.expect("m", code).await.unwrap();
            }
            c.send(
                "d",
                format!("{SEQ_HEADER}: 1\r\n\r\nhi\r\n.\r\n").as_bytes(),
            )
            .await
            .unwrap();
            c.expect("d", 250).await.unwrap();
        }
        handle.abort();
        assert_eq!(tracker.bad_commands.load(Ordering::Relaxed), 2);
        assert_eq!(tracker.arrived.load(Ordering::Relaxed), 1);
        assert_eq!(tracker.duplicates.load(Ordering::Relaxed), 1);
    }
}
