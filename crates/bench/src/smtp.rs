//! Minimal SMTP client shared by the scenarios: loopback-only connect, a bounded
//! reply reader (RFC 5321 §4.2 multi-line replies) and a command writer, plus the
//! error tally both reports use.
//!
//! It must not connect to anything but loopback, buffer unbounded input, or wait
//! on the network without a deadline.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout_at;

use crate::clock;

/// Longest reply line accepted, CRLF included.
pub(crate) const MAX_LINE: usize = 4096;
/// Most lines accepted in one multi-line reply.
pub(crate) const MAX_REPLY_LINES: usize = 100;
/// Longest wait for any one reply, write or connect.
pub(crate) const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Refuses every address outside 127.0.0.0/8 and ::1 (workplace rule: loopback only).
pub(crate) fn ensure_loopback(ip: IpAddr) -> anyhow::Result<()> {
    let ok = match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback(),
    };
    anyhow::ensure!(
        ok,
        "refusing non-loopback address {ip}: this tool only talks to 127.0.0.0/8 or ::1"
    );
    Ok(())
}

/// Whether the kernel picks `ip` as the source for any loopback target by itself (the
/// `local 127.0.0.0/8 ... src 127.0.0.1` route; `::1` for IPv6).
fn is_default_source(ip: IpAddr) -> bool {
    ip == IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        || ip == IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
}

/// One complete reply: its code and its text (lines joined by '\n').
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) code: u16,
    pub(crate) text: String,
}

/// Why a step failed: `kind` groups failures in reports, `text` is the first detail.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) kind: String,
    pub(crate) text: String,
}

impl Failure {
    pub(crate) fn new(kind: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            text: text.into(),
        }
    }
}

/// Failures counted by kind, keeping the first text of each kind.
#[derive(Debug, Default, Clone)]
pub(crate) struct Errors(pub(crate) BTreeMap<String, (u64, String)>);

impl Errors {
    pub(crate) fn record(&mut self, f: &Failure) {
        self.0
            .entry(f.kind.clone())
            .or_insert((0, f.text.clone()))
            .0 += 1;
    }
    pub(crate) fn merge(&mut self, other: Self) {
        for (kind, (n, text)) in other.0 {
            self.0.entry(kind).or_insert((0, text)).0 += n;
        }
    }
    pub(crate) fn total(&self) -> u64 {
        self.0.values().map(|(n, _)| n).sum()
    }
    /// Report lines: total, then one line per kind with its first text.
    pub(crate) fn report(&self) -> String {
        let mut out = format!("  errors:          {}\n", self.total());
        for (kind, (n, text)) in &self.0 {
            out.push_str(&format!("    {kind}: {n} (first: {text})\n"));
        }
        out
    }
}

/// Parses one reply line into (code, is_last, text). Accepts a bare `NNN` as last.
pub(crate) fn parse_line(line: &[u8]) -> Result<(u16, bool, String), String> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = String::from_utf8_lossy(line);
    let bad = || {
        format!(
            "bad reply line {:?}",
            text.chars().take(80).collect::<String>()
        )
    };
    let digits = line.get(..3).ok_or_else(bad)?;
    if !digits.iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&digits[0]) {
        return Err(bad());
    }
    let code = u16::from(digits[0] - b'0') * 100
        + u16::from(digits[1] - b'0') * 10
        + u16::from(digits[2] - b'0');
    let rest = text.get(4..).unwrap_or("").to_string();
    match line.get(3) {
        None => Ok((code, true, rest)),
        Some(b' ') => Ok((code, true, rest)),
        Some(b'-') => Ok((code, false, rest)),
        Some(_) => Err(bad()),
    }
}

/// Reads one complete (possibly multi-line) reply; bounded in line length and count.
pub(crate) async fn read_reply<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Reply, Failure> {
    let mut text = String::new();
    let mut code = None;
    let mut buf = Vec::with_capacity(128);
    for _ in 0..MAX_REPLY_LINES {
        buf.clear();
        let got = (&mut *r)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|e| Failure::new("io", e.to_string()))?;
        if got == 0 {
            return Err(Failure::new("closed", "connection closed by server"));
        }
        if buf.last() != Some(&b'\n') {
            return Err(if got >= MAX_LINE {
                Failure::new("protocol", "reply line longer than 4 KiB")
            } else {
                Failure::new("closed", "connection closed in the middle of a reply line")
            });
        }
        let (c, last, t) = parse_line(&buf).map_err(|e| Failure::new("protocol", e))?;
        if code.is_some_and(|first| first != c) {
            return Err(Failure::new(
                "protocol",
                "reply code changed within a multi-line reply",
            ));
        }
        code = Some(c);
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&t);
        if last {
            return Ok(Reply { code: c, text });
        }
    }
    Err(Failure::new("protocol", "reply longer than 100 lines"))
}

/// One client connection. Every wait ends at min(now + 30 s, the hard deadline).
#[derive(Debug)]
pub(crate) struct Client {
    io: BufReader<TcpStream>,
    hard: Instant,
}

impl Client {
    /// Connects to a loopback `target`, first binding to `source` when given.
    pub(crate) async fn connect(
        target: SocketAddr,
        source: Option<IpAddr>,
        hard: Instant,
    ) -> Result<Self, Failure> {
        Self::connect_within(target, source, REPLY_TIMEOUT, hard).await
    }

    /// As [`Client::connect`], giving up on the connect itself after `limit` (or at `hard`).
    pub(crate) async fn connect_within(
        target: SocketAddr,
        source: Option<IpAddr>,
        limit: Duration,
        hard: Instant,
    ) -> Result<Self, Failure> {
        let refuse = |e: anyhow::Error| Failure::new("refused", e.to_string());
        ensure_loopback(target.ip()).map_err(refuse)?;
        let socket = if target.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| Failure::new("socket", e.to_string()))?;
        if let Some(ip) = source {
            ensure_loopback(ip).map_err(refuse)?;
        }
        // The family's own loopback address is what the kernel picks anyway: connect without
        // binding it, so the port is chosen at connect for the 4-tuple. bind(ip, 0) searches
        // for a port free on that address, which grows costly in kernel time (inet_bhash2_*)
        // while thousands of other sockets are bound to 127/8 ports, as in a flood.
        let bind = source.filter(|ip| !is_default_source(*ip));
        if let Some(ip) = bind {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| Failure::new("bind", format!("{ip}: {e}")))?;
        }
        let deadline = clock::tokio_at((clock::now() + limit).min(hard));
        let stream = timeout_at(deadline, socket.connect(target))
            .await
            .map_err(|_| {
                Failure::new(
                    "connect timeout",
                    format!("no connection within {:.1} s", limit.as_secs_f64()),
                )
            })?
            .map_err(|e| Failure::new("connect", e.to_string()))?;
        stream
            .set_nodelay(true)
            .map_err(|e| Failure::new("socket", e.to_string()))?;
        if let Some(ip) = source {
            let local = stream
                .local_addr()
                .map_err(|e| Failure::new("socket", e.to_string()))?;
            if local.ip() != ip {
                return Err(Failure::new(
                    "source",
                    format!("connected from {} instead of {ip}", local.ip()),
                ));
            }
        }
        Ok(Self {
            io: BufReader::new(stream),
            hard,
        })
    }

    fn deadline(&self) -> tokio::time::Instant {
        clock::tokio_at((clock::now() + REPLY_TIMEOUT).min(self.hard))
    }

    /// Writes `bytes` completely; `stage` names the step in failures.
    pub(crate) async fn send(&mut self, stage: &str, bytes: &[u8]) -> Result<(), Failure> {
        timeout_at(self.deadline(), self.io.get_mut().write_all(bytes))
            .await
            .map_err(|_| Failure::new(format!("{stage} timeout"), "write stalled for 30 s"))?
            .map_err(|e| Failure::new(format!("{stage} write"), e.to_string()))
    }

    /// Moves the hard deadline (every later wait ends by it).
    pub(crate) fn set_hard(&mut self, hard: Instant) {
        self.hard = hard;
    }

    /// Reads one reply, whatever its code; failure kinds are `timeout` and those of
    /// [`read_reply`] (`closed`, `io`, `protocol`).
    pub(crate) async fn reply(&mut self) -> Result<Reply, Failure> {
        timeout_at(self.deadline(), read_reply(&mut self.io))
            .await
            .map_err(|_| Failure::new("timeout", "no reply by the deadline"))?
    }

    /// Reads one reply and requires exactly `want`; anything else is a failure of `stage`.
    pub(crate) async fn expect(&mut self, stage: &str, want: u16) -> Result<Reply, Failure> {
        let reply = self
            .reply()
            .await
            .map_err(|f| Failure::new(format!("{stage} {}", f.kind), f.text))?;
        if reply.code == want {
            Ok(reply)
        } else {
            Err(Failure::new(format!("{stage} {}", reply.code), reply.text))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(input: &str) -> Result<Reply, Failure> {
        read_reply(&mut input.as_bytes()).await
    }

    #[tokio::test]
    async fn reads_single_and_multi_line_replies() {
        let r = parse("220 mx.example ESMTP\r\n").await.unwrap();
        assert_eq!((r.code, r.text.as_str()), (220, "mx.example ESMTP"));
        let r = parse("250-mx.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\nextra")
            .await
            .unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(r.text, "mx.example\nPIPELINING\nSIZE 1000");
        let r = parse("354\r\n").await.unwrap();
        assert_eq!((r.code, r.text.as_str()), (354, ""));
    }

    #[tokio::test]
    async fn rejects_bad_lines() {
        for bad in [
            "hello\r\n",
            "25\r\n",
            "250x\r\n",
            "650 no\r\n",
            "250-a\r\n251 b\r\n",
        ] {
            assert!(parse(bad).await.unwrap_err().kind == "protocol", "{bad:?}");
        }
        assert_eq!(parse("").await.unwrap_err().kind, "closed");
        assert_eq!(parse("250-a\r\n250 b").await.unwrap_err().kind, "closed");
        let long = format!("250 {}\r\n", "x".repeat(MAX_LINE));
        assert_eq!(parse(&long).await.unwrap_err().kind, "protocol");
        let many = "250-x\r\n".repeat(MAX_REPLY_LINES + 1);
        assert_eq!(parse(&many).await.unwrap_err().kind, "protocol");
    }

    #[test]
    fn loopback_only() {
        for ok in ["127.0.0.1", "127.0.0.5", "127.255.0.9", "::1"] {
            assert!(ensure_loopback(ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for bad in [
            "10.0.0.1",
            "192.168.1.1",
            "0.0.0.0",
            "::",
            "::ffff:127.0.0.1",
            "8.8.8.8",
        ] {
            assert!(ensure_loopback(bad.parse().unwrap()).is_err(), "{bad}");
        }
    }
}
