//! The greeting pause (Sendmail's `FEATURE(greet_pause)`), sans-IO.
//!
//! Defends against: "slamming" clients, spam bots that write their whole session as soon as
//! the connection opens without waiting for the 220 (RFC 5321 §3.1 and §4.3.1 say the client
//! waits for the greeting). A real MTA waits; a bot that talks first gives itself away.
//!
//! Equivalents: Sendmail 8.13+ `FEATURE(greet_pause, ms)` with `GreetPause:` access entries;
//! Postfix postscreen's `postscreen_greet_wait` and pregreet test (which, unlike Sendmail,
//! greets with a multi-line `220-` teaser; we keep Sendmail's silent pause because admins'
//! tools expect its log line).
//!
//! Role: the arithmetic and classification the driver needs, with time as an argument:
//! [`GreetPause`] turns a configured length and a start instant into a deadline (clamped to
//! 300 s as Sendmail does, RFC 5321 §4.5.3.2's greeting timeout), and [`Pregreet`] describes
//! the traffic that ended the pause: how long the client waited (rounded half up, as Sendmail
//! logs it), the first bytes it sent (at most [`SAMPLE_BYTES`]) and what they look like
//! ([`TrafficClass`]). The replies are in [`crate::reply`] (`not_accepting`,
//! `command_rejected`); the rejecting mode is [`crate::Session::reject_commands`].
//!
//! Must not: hold a read buffer or the session: a connection waiting in the pause is only a
//! socket, an instant and this small struct, so tens of thousands can wait at once.

use std::time::{Duration, Instant};

/// Sendmail clamps any pause of 300 s or more to exactly 300 s ("RFC 2821 4.3.5.2").
pub const MAX_PAUSE: Duration = Duration::from_secs(300);

/// How many of the client's first bytes are kept for the log.
pub const SAMPLE_BYTES: usize = 100;

/// A greeting pause in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GreetPause {
    started: Instant,
    length: Duration,
}

impl GreetPause {
    /// A pause of `length` (clamped to [`MAX_PAUSE`]) that began at `started`.
    pub fn new(started: Instant, length: Duration) -> Self {
        Self {
            started,
            length: clamp(length),
        }
    }

    /// When the pause began (the connection time).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The (clamped) length.
    pub fn length(&self) -> Duration {
        self.length
    }

    /// Changes the length, e.g. once the client's host name selected another access entry.
    /// The pause still counts from its start.
    pub fn set_length(&mut self, length: Duration) {
        self.length = clamp(length);
    }

    /// When the greeting is due.
    pub fn deadline(&self) -> Instant {
        self.started + self.length
    }

    /// True once `now` has reached the deadline.
    pub fn is_over(&self, now: Instant) -> bool {
        now >= self.deadline()
    }

    /// The client spoke at `now`; `first` holds what it sent (only the first
    /// [`SAMPLE_BYTES`] are kept).
    pub fn traffic(&self, first: &[u8], now: Instant) -> Pregreet {
        let sample = first[..first.len().min(SAMPLE_BYTES)].to_vec();
        Pregreet {
            waited: now.saturating_duration_since(self.started),
            class: TrafficClass::of(&sample),
            sample,
        }
    }
}

/// Sendmail's clamp: 300 s or more becomes exactly 300 s.
pub fn clamp(length: Duration) -> Duration {
    length.min(MAX_PAUSE)
}

/// A pause from an access-map value in milliseconds, as Sendmail reads it with `strtol`:
/// zero or negative means no pause.
pub fn from_millis(ms: i64) -> Duration {
    u64::try_from(ms).map_or(Duration::ZERO, Duration::from_millis)
}

/// Traffic before the greeting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pregreet {
    /// From connect to the first byte.
    pub waited: Duration,
    /// The first bytes the client sent (at most [`SAMPLE_BYTES`]).
    pub sample: Vec<u8>,
    /// What they look like.
    pub class: TrafficClass,
}

impl Pregreet {
    /// The wait in whole seconds as Sendmail logs it: `sec + (usec >= 500000)`.
    pub fn seconds(&self) -> u64 {
        self.waited.as_secs() + u64::from(self.waited.subsec_micros() >= 500_000)
    }

    /// The sample, escaped for a log line (`\r\n` → `\x0d\x0a`).
    pub fn escaped_sample(&self) -> String {
        crate::reply::printable(&self.sample, SAMPLE_BYTES * 4)
    }
}

/// What the early bytes look like (beyond Sendmail: admins want to know whether the talker was
/// a spam bot, a TLS client on the wrong port, a web proxy scanner or a load balancer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficClass {
    /// A TLS handshake record: implicit TLS (SMTPS) spoken on the plain port.
    TlsClientHello,
    /// An HTTP request line (GET, POST, CONNECT, ...): a proxy scanner or a web client.
    Http,
    /// An SMTP command: the classic slammer.
    SmtpCommand,
    /// A PROXY protocol header (v1 text or v2 binary): a load balancer not configured for us.
    ProxyHeader,
    /// Anything else.
    Other,
}

impl TrafficClass {
    /// Classifies the first bytes of a connection.
    pub fn of(first: &[u8]) -> Self {
        if is_tls_record(first) {
            Self::TlsClientHello
        } else if first.starts_with(b"PROXY ") || first.starts_with(PROXY_V2_SIGNATURE) {
            Self::ProxyHeader
        } else if HTTP_METHODS.iter().any(|m| first.starts_with(m)) {
            Self::Http
        } else if starts_with_smtp_verb(first) {
            Self::SmtpCommand
        } else {
            Self::Other
        }
    }

    /// The name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::TlsClientHello => "tls-client-hello",
            Self::Http => "http",
            Self::SmtpCommand => "smtp-command",
            Self::ProxyHeader => "proxy-header",
            Self::Other => "other",
        }
    }
}

/// PROXY protocol v2's 12-byte signature.
const PROXY_V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// HTTP methods (RFC 9110 §9) with their space; CONNECT is what open-proxy scanners send.
const HTTP_METHODS: [&[u8]; 7] = [
    b"GET ",
    b"POST ",
    b"CONNECT ",
    b"HEAD ",
    b"PUT ",
    b"OPTIONS ",
    b"DELETE ",
];

/// A TLS record of type handshake (22) with major version 3 (SSL 3.0 to TLS 1.3), or an
/// SSLv2-framed ClientHello (high bit set, message type 1).
fn is_tls_record(b: &[u8]) -> bool {
    match b {
        [0x16] | [0x16, 0x03, ..] => true,
        [first, _, 0x01, ..] => first & 0x80 != 0,
        _ => false,
    }
}

fn starts_with_smtp_verb(b: &[u8]) -> bool {
    const VERBS: [&[u8]; 15] = [
        b"HELO",
        b"EHLO",
        b"MAIL",
        b"RCPT",
        b"DATA",
        b"RSET",
        b"NOOP",
        b"QUIT",
        b"VRFY",
        b"EXPN",
        b"HELP",
        b"ETRN",
        b"AUTH",
        b"STARTTLS",
        b"BDAT",
    ];
    let word_end = b
        .iter()
        .position(|&c| c == b' ' || c == b'\r' || c == b'\n')
        .unwrap_or(b.len());
    let word = &b[..word_end];
    VERBS.iter().any(|v| word.eq_ignore_ascii_case(v))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // Tests make up instants from the real clock.
mod tests {
    use super::*;

    #[test]
    fn clamps_to_five_minutes() {
        let t0 = Instant::now();
        let p = GreetPause::new(t0, Duration::from_secs(400));
        assert_eq!(p.length(), Duration::from_secs(300));
        assert_eq!(p.deadline(), t0 + Duration::from_secs(300));
        let p = GreetPause::new(t0, Duration::from_millis(1500));
        assert_eq!(p.deadline(), t0 + Duration::from_millis(1500));
    }

    #[test]
    fn millis_follow_strtol_meaning() {
        assert_eq!(from_millis(0), Duration::ZERO);
        assert_eq!(from_millis(-5), Duration::ZERO);
        assert_eq!(from_millis(1500), Duration::from_millis(1500));
    }

    #[test]
    fn seconds_round_half_up_like_sendmail() {
        // The reference's observations: 0.0 → 0, 2.0 → 2, 2.6 → 3, 4.4 → 4, 4.6 → 5, 1.0 → 1.
        let t0 = Instant::now();
        let p = GreetPause::new(t0, Duration::from_secs(5));
        for (ms, want) in [
            (0, 0),
            (2000, 2),
            (2600, 3),
            (4400, 4),
            (4600, 5),
            (1000, 1),
            (499, 0),
            (500, 1),
        ] {
            let g = p.traffic(b"x", t0 + Duration::from_millis(ms));
            assert_eq!(g.seconds(), want, "{ms} ms");
        }
    }

    #[test]
    fn sample_is_bounded_and_escaped() {
        let t0 = Instant::now();
        let p = GreetPause::new(t0, Duration::from_secs(5));
        let long = vec![b'A'; 1000];
        assert_eq!(p.traffic(&long, t0).sample.len(), SAMPLE_BYTES);
        let g = p.traffic(b"EHLO x\r\n", t0);
        assert_eq!(g.escaped_sample(), "EHLO x\\x0d\\x0a");
    }

    #[test]
    fn classes() {
        let cases: [(&[u8], TrafficClass); 12] = [
            (b"\x16\x03\x01\x02\x00\x01", TrafficClass::TlsClientHello),
            (b"\x16", TrafficClass::TlsClientHello),
            (b"\x80\x2e\x01\x03\x01", TrafficClass::TlsClientHello),
            (b"GET / HTTP/1.1\r\n", TrafficClass::Http),
            (b"CONNECT mx:25 HTTP/1.0\r\n", TrafficClass::Http),
            (b"POST /x HTTP/1.1\r\n", TrafficClass::Http),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 25\r\n",
                TrafficClass::ProxyHeader,
            ),
            (b"\r\n\r\n\0\r\nQUIT\n\x21", TrafficClass::ProxyHeader),
            (b"EHLO client.example.org\r\n", TrafficClass::SmtpCommand),
            (b"helo x\r\nMAIL FROM:<a@b>\r\n", TrafficClass::SmtpCommand),
            (b"QUIT", TrafficClass::SmtpCommand),
            (b"\r\n", TrafficClass::Other),
        ];
        for (bytes, want) in cases {
            assert_eq!(TrafficClass::of(bytes), want, "{bytes:?}");
        }
        assert_eq!(
            TrafficClass::of(b"SSH-2.0-OpenSSH\r\n"),
            TrafficClass::Other
        );
        assert_eq!(TrafficClass::of(b"get / HTTP/1.1"), TrafficClass::Other);
    }
}
