//! The client's public vocabulary: its settings, the envelope, the extensions a server
//! announces, the phases and events the driver sees, and each recipient's outcome.
//!
//! Must not: hold dialogue state (the [`Client`](super::Client) does).

use crate::reply::Reply;

use super::wire::is_enhanced_code;

/// Settings of the client, shared by the attempts to one next hop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Our name, sent with EHLO/LHLO/HELO.
    pub helo_name: String,
    /// Speak LMTP (RFC 2033): LHLO, and one reply per accepted recipient after the data.
    pub lmtp: bool,
    /// When to use STARTTLS.
    pub starttls: StartTls,
}

/// When the client uses STARTTLS (RFC 3207).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartTls {
    /// Never, even when offered (a Unix socket; LMTP unless its route verifies).
    #[default]
    Never,
    /// When the server offers it; plain text only when it does not (Postfix's
    /// `smtp_tls_security_level = may`).
    Opportunistic,
    /// Always: a server that does not offer it fails the attempt for now (Postfix's
    /// `verify`; the driver checks the certificate).
    Required,
}

/// Where the session stands with TLS, for the driver's log line and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TlsState {
    /// Plain text: STARTTLS was not offered, not wanted, or not reached yet.
    #[default]
    Plain,
    /// STARTTLS is required and the server did not offer it.
    NotOffered,
    /// The server answered STARTTLS with this 4xx/5xx.
    Refused(Reply),
    /// The server said 220: the driver is doing the handshake.
    Handshake,
    /// The session is encrypted.
    Active,
    /// The handshake failed (or plain text came after the 220): why.
    Failed(String),
}

/// What one attempt delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The reverse-path, without brackets; empty for `<>`.
    pub sender: String,
    /// The forward-paths, without brackets.
    pub recipients: Vec<String>,
    /// The message size in bytes, declared as `SIZE=` when offered (RFC 1870).
    pub size: u64,
    /// The message has 8-bit content: `BODY=8BITMIME` when offered (RFC 6152). When it is not
    /// offered the message goes as is (what Postfix does by default; no 8→7 bit conversion).
    pub eight_bit: bool,
    /// The message needs SMTPUTF8 (RFC 6531). Also implied by a non-ASCII address. When the
    /// server does not offer it, every recipient fails permanently before MAIL (RFC 6531
    /// §3.2; no downgrade).
    pub smtputf8: bool,
}

impl Envelope {
    /// An envelope of plain 7-bit mail.
    pub fn new(sender: impl Into<String>, recipients: Vec<String>, size: u64) -> Self {
        Self {
            sender: sender.into(),
            recipients,
            size,
            eight_bit: false,
            smtputf8: false,
        }
    }
}

/// The service extensions the server announced in its EHLO/LHLO reply (all off after HELO).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    /// PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// SIZE (RFC 1870): `Some(0)` when offered without a limit (or with one we cannot read).
    pub size: Option<u64>,
    /// 8BITMIME (RFC 6152).
    pub eight_bit_mime: bool,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// STARTTLS (RFC 3207).
    pub starttls: bool,
    /// ENHANCEDSTATUSCODES (RFC 2034).
    pub enhanced_status_codes: bool,
}

impl Extensions {
    /// Reads the keyword lines of an EHLO reply (every line after the first).
    pub(super) fn parse(lines: &[String]) -> Self {
        let mut ext = Self::default();
        for line in lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => ext.pipelining = true,
                "SIZE" => {
                    let limit = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                    ext.size = Some(limit);
                }
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "STARTTLS" => ext.starttls = true,
                "ENHANCEDSTATUSCODES" => ext.enhanced_status_codes = true,
                _ => {}
            }
        }
        ext
    }
}

/// Where the dialogue is: the driver picks its timeout from this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientPhase {
    /// Waiting for the server's greeting.
    Greeting,
    /// Waiting for the reply to EHLO, LHLO or HELO.
    Ehlo,
    /// Waiting for the reply to STARTTLS.
    StartTls,
    /// The driver is doing the TLS handshake ([`ClientEvent::StartTls`]).
    TlsHandshake,
    /// Waiting for the reply to MAIL.
    Mail,
    /// Waiting for a reply to RCPT.
    Rcpt,
    /// Waiting for the reply to DATA.
    Data,
    /// The driver is writing the message ([`ClientEvent::WriteMessage`]).
    Message,
    /// Waiting for the reply (LMTP: replies) to the end of data.
    DataFinal,
    /// QUIT sent; every outcome is final. Wait briefly for the 221, or just close.
    Quit,
    /// Over: flush the output and close.
    Done,
}

impl ClientPhase {
    /// Sendmail's name for the client timeout of this phase (`Timeout.<name>`).
    pub fn timeout_name(self) -> &'static str {
        match self {
            Self::Greeting => "initial",
            Self::Ehlo => "helo",
            Self::StartTls | Self::TlsHandshake => "starttls",
            Self::Mail => "mail",
            Self::Rcpt => "rcpt",
            Self::Data => "datainit",
            Self::Message => "datablock",
            Self::DataFinal => "datafinal",
            Self::Quit | Self::Done => "quit",
        }
    }
}

/// What the driver must do besides moving bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// DATA got 354: write the message now, dot-stuffed and terminated ([`dot_stuff`],
    /// [`end_of_data`]), after the pending output, then call [`Client::message_written`]
    /// and look at the output and events again (replies held meanwhile are read then).
    /// Should the client be done before that (a lost connection, a timeout), stop writing.
    WriteMessage,
    /// Every recipient has its final outcome ([`Client::outcomes`]); the attempt can be
    /// recorded now, before the 221 to QUIT arrives.
    OutcomesFinal,
    /// STARTTLS got 220: read no more plain text, do the TLS handshake over the connection
    /// (after writing the pending output, of which there is none), then call
    /// [`Client::tls_established`] or [`Client::tls_failed`]. Ignore it when the client is
    /// done by then.
    StartTls,
}

/// The result for one recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RcptStatus {
    /// The server took responsibility for it (2xx after the data).
    Delivered,
    /// Try again later (4xx, or the attempt broke down).
    TempFail,
    /// Bounce (5xx).
    PermFail,
}

impl RcptStatus {
    /// The status a reply code stands for: 2xx delivered, 5xx permanent, anything else
    /// temporary.
    pub(super) fn of(code: u16) -> Self {
        match code / 100 {
            2 => Self::Delivered,
            5 => Self::PermFail,
            _ => Self::TempFail,
        }
    }
}

/// One recipient's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RcptOutcome {
    /// The forward-path, as in the envelope.
    pub recipient: String,
    /// Delivered, or failed for now or for good.
    pub status: RcptStatus,
    /// The server's reply (when `remote`), or the client's own account of what went wrong
    /// (lost connection, timeout, protocol error, size limit), in the same shape.
    pub reply: Reply,
    /// `reply` came from the server (a DSN's `Diagnostic-Code: smtp; ...`).
    pub remote: bool,
    /// The phase in which the outcome was decided (Postfix's "in reply to RCPT TO command").
    pub phase: ClientPhase,
}

impl RcptOutcome {
    /// The enhanced status code for the log's `dsn=` and the DSN: the reply's own when it
    /// has one of the right class, else `2.0.0`, `4.0.0` or `5.0.0`.
    pub fn dsn(&self) -> String {
        let class = match self.status {
            RcptStatus::Delivered => '2',
            RcptStatus::TempFail => '4',
            RcptStatus::PermFail => '5',
        };
        let first = self.reply.lines.first().map(String::as_str).unwrap_or("");
        match first.split(' ').next() {
            Some(code) if is_enhanced_code(code) && code.starts_with(class) => code.to_owned(),
            _ => format!("{class}.0.0"),
        }
    }
}
