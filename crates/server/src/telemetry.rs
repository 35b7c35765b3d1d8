//! Telemetry: the catalogue of events and the one function that records them.
//!
//! Role: every observable event is a variant of [`Event`]; [`Telemetry::emit`] renders it once
//! into a [`Record`] (name, queue id, Sendmail-worded text, structured fields) and writes one
//! log line (the rendering, one arm per event, is [`render`]), so wording and fields cannot
//! drift apart (design.md §3.10). The same `emit`
//! updates the metrics.
//!
//! Compatibility: the `text` of events admins grep for keeps Sendmail's wording
//! (reference/sendmail-behaviour.md): `from=<..>, size=N, ...`, `to=<..>, delay=.., stat=Sent`,
//! `timeout waiting for input from <host> during server cmd read`, `<relay> did not issue
//! MAIL/EXPN/VRFY/ETRN during connection to MTA`. Extra detail goes in fields, which the JSON
//! format shows and the syslog format omits.
//!
//! Metrics: `emit` also hands every event to [`crate::metrics::Metrics`], before anything
//! decides whether its line is written.
//!
//! Rejection summaries: a per-client rejection past its client's first `log.summary_after`
//! in the current interval is counted, not written ([`crate::summary`]); the server's
//! summary task logs the counts as [`Event::RejectionSummary`]. Every other event is written.
//!
//! Must not: block the caller for long. Lines go to stderr (one write each) or as one datagram
//! to the local syslog socket; a syslog socket that fails falls back to stderr.

use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Mutex;

use portcullis_config::{LogDestination, LogFormat, SummaryConfig};

use portcullis_smtp::{Action, Finding, TlsInfo};

use crate::clock;
use crate::load::Reading;
use crate::metrics::Metrics;
use crate::relay_tls::TlsReport;
use crate::summary::{Summaries, Summary};

mod render;

/// Syslog severity of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Failures needing an admin.
    Error,
    /// Something wrong but handled.
    Warning,
    /// Noteworthy (start, stop, reload, refusals).
    Notice,
    /// Routine (messages, deliveries, sessions).
    Info,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Notice => "notice",
            Self::Info => "info",
        }
    }

    /// Syslog priority with the mail facility (2).
    fn priority(self) -> u8 {
        let severity = match self {
            Self::Error => 3,
            Self::Warning => 4,
            Self::Notice => 5,
            Self::Info => 6,
        };
        2 * 8 + severity
    }
}

/// How a relayed recipient's attempt ended, for [`Event::Relayed`].
#[derive(Clone, Copy, Debug)]
pub enum RelayStat<'a> {
    /// Accepted by the next hop; its reply.
    Sent(&'a str),
    /// To be retried; the reply or the error.
    Deferred(&'a str),
    /// Failed for good; a DSN follows.
    Bounced(&'a str),
}

/// Every event Portcullis records.
#[derive(Clone, Debug)]
pub enum Event<'a> {
    /// The server is up.
    ServerStarted { version: &'a str, config: &'a str },
    /// A listening socket is open.
    ListenerBound { addr: std::net::SocketAddr },
    /// `/metrics` is served here (`[metrics] listen`).
    MetricsListening { addr: std::net::SocketAddr },
    /// `max_sessions` reached: accepting stops (Sendmail's MaxDaemonChildren wording).
    DaemonRejecting { sessions: u32, max: u32 },
    /// Below `max_sessions` again.
    DaemonAccepting,
    /// `connection_rate_throttle` reached: new connections wait (Sendmail's wording).
    DaemonDeferring { rate: u32 },
    /// The configuration was reloaded (SIGHUP).
    ConfigReloaded { origin: &'a str },
    /// A reload failed; the old configuration stays.
    ConfigReloadFailed { origin: &'a str, error: &'a str },
    /// A signal asked us to stop.
    ShutdownStarted { signal: &'a str },
    /// Everything stopped.
    ShutdownDone { sessions_left: usize },
    /// accept() failed.
    AcceptFailed { error: &'a str },
    /// No command within the timeout (Sendmail wording).
    CommandTimeout {
        qid: Option<&'a str>,
        host: &'a str,
        phase: &'a str,
    },
    /// No data within the timeout.
    DataTimeout {
        qid: Option<&'a str>,
        relay: &'a str,
    },
    /// The spool did not commit within `datafinal`.
    CommitTimeout {
        qid: Option<&'a str>,
        relay: &'a str,
    },
    /// A session ended without MAIL (Sendmail wording).
    NoMailIssued { relay: &'a str },
    /// Every session that reached the dialogue (not a connection admission refused with a 421
    /// in place of the greeting), at its end: the greeting pause it had, when the client
    /// first sent something and how long it lasted (no Sendmail line; the `report
    /// greet-pause` what-if table reads it).
    SessionClosed {
        qid: &'a str,
        relay: &'a str,
        pause: std::time::Duration,
        /// From connect to the client's first byte; None when it sent nothing.
        first_input: Option<std::time::Duration>,
        duration: std::time::Duration,
        messages: u32,
        /// One of the session's rejection lines was held back by a rejection summary: this
        /// line is held back with it (counted in metrics, not written), so a flood costs one
        /// summary line per interval, not one line per connection.
        held_back: bool,
    },
    /// The client went away inside a transaction.
    LostInput {
        qid: Option<&'a str>,
        relay: &'a str,
        in_data: bool,
    },
    /// A message is durable and acknowledged (Sendmail's `from=` line).
    MessageAccepted {
        qid: &'a str,
        from: &'a str,
        size: usize,
        nrcpts: usize,
        msgid: Option<&'a str>,
        proto: &'a str,
        relay: &'a str,
    },
    /// A message was refused after its data.
    MessageRefused {
        qid: Option<&'a str>,
        relay: &'a str,
        reply: &'a str,
        size: u64,
    },
    /// The spool could not take a message.
    CommitFailed {
        qid: Option<&'a str>,
        error: &'a str,
    },
    /// One recipient delivered (Sendmail's `to=` line).
    Delivered {
        qid: &'a str,
        to: &'a str,
        delay: i64,
        xdelay: i64,
        mailer: &'a str,
        path: &'a str,
    },
    /// One recipient deferred.
    Deferred {
        qid: &'a str,
        to: &'a str,
        delay: i64,
        xdelay: i64,
        mailer: &'a str,
        error: &'a str,
    },
    /// One recipient's attempt at a next hop (SMTP or LMTP), in Sendmail's words:
    /// `to=<..>, delay=.., xdelay=.., mailer=esmtp, relay=host [ip], dsn=2.0.0, stat=Sent (<reply>)`,
    /// `dsn=4.x.x, stat=Deferred: <reply or error>`, `dsn=5.x.x, stat=<reply text>`.
    Relayed {
        qid: &'a str,
        to: &'a str,
        delay: i64,
        xdelay: i64,
        mailer: &'a str,
        relay: Option<&'a str>,
        dsn: &'a str,
        stat: RelayStat<'a>,
    },
    /// A delivery status notification was queued (Sendmail's `<qid>: <dsn-qid>: DSN: <why>`).
    DsnQueued {
        qid: &'a str,
        dsn_qid: &'a str,
        to: &'a str,
        reason: &'a str,
    },
    /// A failed message whose notice has nowhere to go (a failing notice to the
    /// postmaster, or no local postmaster): logged, then removed.
    DsnDropped { qid: &'a str, reason: &'a str },
    /// A message stays queued past its lifetime: its pending recipients bounce.
    LifetimeExceeded { qid: &'a str, age: i64 },
    /// A spool file could not be read.
    SpoolReadFailed { qid: &'a str, error: &'a str },
    /// Recovery moved a file to quarantine.
    Quarantined { path: &'a str, reason: &'a str },
    /// Recovery found messages to deliver.
    Recovered { messages: usize },
    /// A client talked before the greeting (Sendmail's greet_pause finding).
    Pregreet {
        qid: &'a str,
        relay: &'a str,
        /// The client, for rejection summaries ([`crate::summary`]).
        client: IpAddr,
        /// Whole seconds, rounded half up (Sendmail's "after N seconds").
        seconds: u64,
        waited_ms: u128,
        class: &'a str,
        sample: &'a str,
        action: Action,
        /// The access entry that set the pause (`file:line: GreetPause:key value`), or None for
        /// `greet_pause.default`.
        entry: Option<&'a str>,
    },
    /// A client over its `ClientRate:` or `ClientConn:` limit (Sendmail's check_relay line).
    ClientLimited {
        /// `[ip]` or the client's name (Sendmail's arg1).
        host: &'a str,
        /// The client, for rejection summaries ([`crate::summary`]).
        client: IpAddr,
        addr: &'a str,
        relay: &'a str,
        /// The reply as logged (`421 4.3.2 Connection rate limit exceeded.`).
        reply: &'a str,
        /// `rate_control` or `conn_control`.
        defence: &'a str,
        action: Action,
        /// The counted key (an address or a prefix) and its count against the limit.
        key: &'a str,
        count: u32,
        limit: u32,
        /// The access entry that set the limit (`file:line`).
        entry: &'a str,
    },
    /// The access map was loaded (at start, SIGHUP or a file change).
    AccessMapLoaded {
        path: &'a str,
        entries: usize,
        warnings: usize,
        millis: u128,
    },
    /// A questionable access map line (`file:line: message`).
    AccessMapWarning { diagnostic: &'a str },
    /// A changed access map could not be loaded; the old one stays.
    AccessMapReloadFailed { path: &'a str, error: &'a str },
    /// Client names cannot be looked up; sessions go on with addresses only.
    DnsUnavailable { error: &'a str },
    /// A `refuse_*` load threshold is reached: accepting stops (Sendmail's RefuseLA wording).
    DaemonRefusingLoad { reading: Reading },
    /// The load-average file cannot be read; the load-average thresholds are inactive.
    LoadUnavailable { path: &'a str, error: &'a str },
    /// Commands of a session are delayed (Sendmail's DelayLA line).
    Delaying {
        qid: &'a str,
        relay: &'a str,
        command: &'a str,
        reason: &'a str,
    },
    /// A delay would have passed `limits.session_delay_budget`: 421 and close instead.
    DelayBudgetSpent {
        qid: &'a str,
        relay: &'a str,
        command: &'a str,
        spent: std::time::Duration,
        budget: std::time::Duration,
    },
    /// An access-map entry (`Connect:`, `From:`, `To:`, delayed by `delay_checks`) decided:
    /// Sendmail's `ruleset=check_relay, arg1=..., relay=..., reject=...` line (`text`), or
    /// with `ignore` the same after `ignored (access.action = ignore):`.
    AccessCheck {
        qid: Option<&'a str>,
        /// The client, for rejection summaries ([`crate::summary`]).
        client: IpAddr,
        text: &'a str,
        action: Action,
        /// The entry discards (`DISCARD`) rather than refuses: its metric outcome.
        discard: bool,
        /// `file:line` of the entry.
        entry: &'a str,
    },
    /// A RCPT refused because the recipient is not ours: Sendmail's
    /// `<qid>: <addr>... User unknown` and, for relaying,
    /// `<qid>: ruleset=check_rcpt, arg1=<addr>, relay=<client>, reject=550 5.7.1 <addr>... Relaying denied`.
    RecipientRefused {
        qid: &'a str,
        relay: &'a str,
        /// The client, for rejection summaries ([`crate::summary`]).
        client: IpAddr,
        recipient: &'a str,
        reply: &'a str,
        relaying: bool,
    },
    /// A message accepted from a `DISCARD` client, sender or recipient was thrown away
    /// (Sendmail's `<qid>: discarded`).
    Discarded { qid: &'a str },
    /// One of the session's own defences found something (open proxy, recipient limits,
    /// stuffing, pipelining, command abuse) and applied `action`. Worded as Sendmail logs
    /// it; with `ignore` the line starts `ignored (<key> = ignore):`, so filters written for
    /// Sendmail's lines (fail2ban) do not ban clients an admin is only watching.
    SessionDefence {
        qid: Option<&'a str>,
        relay: &'a str,
        /// The client, for rejection summaries ([`crate::summary`]).
        client: IpAddr,
        finding: &'a Finding,
        action: Action,
    },
    /// A `queue_*` load threshold is reached: delivery waits (mail is still accepted).
    DeliveryHeld { reading: Reading },
    /// Below every `queue_*` threshold again: delivery goes on.
    DeliveryResumed,
    /// What a defence did not log in full during one window of `log.summary_interval`
    /// (Sendmail's `RejectLogInterval`, generalised; see [`crate::summary`]).
    RejectionSummary { summary: &'a Summary },
    /// STARTTLS with one host of a relay attempt (Sendmail's `STARTTLS=client` line).
    RelayTls { qid: &'a str, report: &'a TlsReport },
    /// STARTTLS succeeded: Sendmail's `STARTTLS=server, relay=..., version=TLSv1.3,
    /// verify=NO, cipher=TLS_AES_256_GCM_SHA384, bits=256/256`.
    TlsStarted { relay: &'a str, info: &'a TlsInfo },
    /// The TLS handshake failed or ran out of `timeouts.starttls`; the connection is closed
    /// (Sendmail: `STARTTLS=server, error: accept failed=..., relay=...`).
    TlsFailed {
        relay: &'a str,
        reason: &'a str,
        timed_out: bool,
    },
    /// Plaintext the client sent after STARTTLS was thrown away, never executed (the
    /// CVE-2011-0411 class of command injection).
    TlsPlaintextDiscarded { relay: &'a str, bytes: usize },
}

/// An event rendered once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Stable event name (`smtp_message_accepted`, ...).
    pub name: &'static str,
    /// Severity.
    pub level: Level,
    /// The queue id the line is about, if any.
    pub qid: Option<String>,
    /// The Sendmail-worded text.
    pub text: String,
    /// Extra structured fields.
    pub fields: Vec<(&'static str, String)>,
    /// The fields matter to admins reading plain syslog too: that format writes them on a
    /// second line (`QID: <event> detail: k="v", ...`), so the first keeps Sendmail's exact
    /// wording for anchored fail2ban patterns.
    pub detail: bool,
}

impl Record {
    fn with(mut self, key: &'static str, value: &str) -> Self {
        self.fields.push((key, value.to_owned()));
        self
    }

    fn with_detail_line(mut self) -> Self {
        self.detail = true;
        self
    }

    /// The second syslog line of a record with `detail`: its fields, quoted.
    fn detail_record(&self) -> Self {
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('"', "\\\"")))
            .collect();
        Self {
            name: self.name,
            level: self.level,
            qid: self.qid.clone(),
            text: format!("{} detail: {}", self.name, fields.join(", ")),
            fields: Vec::new(),
            detail: false,
        }
    }

    /// The syslog-style message (without timestamp and tag): `QID: text`.
    pub fn message(&self) -> String {
        match &self.qid {
            Some(q) => format!("{q}: {}", self.text),
            None => self.text.clone(),
        }
    }

    /// One JSON object.
    pub fn json(&self, ts: &str) -> String {
        let mut out = format!(
            "{{\"ts\":\"{ts}\",\"level\":\"{}\",\"event\":\"{}\"",
            self.level.name(),
            self.name
        );
        if let Some(q) = &self.qid {
            out.push_str(&format!(",\"qid\":{}", json_string(q)));
        }
        out.push_str(&format!(",\"message\":{}", json_string(&self.text)));
        for (k, v) in &self.fields {
            out.push_str(&format!(",\"{k}\":{}", json_string(v)));
        }
        out.push('}');
        out
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

enum Sink {
    Stderr,
    Syslog(UnixDatagram),
    /// Tests read the lines back.
    Memory(Mutex<Vec<String>>),
}

/// Where events go.
pub struct Telemetry {
    format: LogFormat,
    sink: Sink,
    hostname: String,
    pid: u32,
    metrics: Metrics,
    /// Rejection summaries; off until [`Telemetry::configure_summaries`].
    summaries: Summaries,
}

impl Telemetry {
    /// Opens the configured destination. A syslog socket that cannot be opened falls back to
    /// stderr, with a warning there.
    pub fn new(format: LogFormat, destination: LogDestination, hostname: &str) -> Self {
        Self::with_syslog_socket(format, destination, hostname, Path::new("/dev/log"))
    }

    /// [`Telemetry::new`] with another syslog socket path (tests).
    pub fn with_syslog_socket(
        format: LogFormat,
        destination: LogDestination,
        hostname: &str,
        socket: &Path,
    ) -> Self {
        let sink = match destination {
            LogDestination::Stderr => Sink::Stderr,
            LogDestination::Syslog => match UnixDatagram::unbound().and_then(|s| {
                s.connect(socket)?;
                Ok(s)
            }) {
                Ok(s) => Sink::Syslog(s),
                Err(e) => {
                    eprintln!(
                        "portcullis: cannot open {} ({e}); logging to stderr",
                        socket.display()
                    );
                    Sink::Stderr
                }
            },
        };
        Self {
            format,
            sink,
            hostname: hostname.to_owned(),
            pid: std::process::id(),
            metrics: Metrics::new(),
            summaries: Summaries::off(),
        }
    }

    /// Collects lines in memory (tests).
    pub fn memory(format: LogFormat) -> Self {
        Self {
            format,
            sink: Sink::Memory(Mutex::new(Vec::new())),
            hostname: "test".into(),
            pid: 0,
            metrics: Metrics::new(),
            summaries: Summaries::off(),
        }
    }

    /// The lines collected by a memory sink.
    pub fn lines(&self) -> Vec<String> {
        match &self.sink {
            Sink::Memory(m) => m.lock().map(|v| v.clone()).unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// The metrics every event updates.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Turns rejection summaries on (or off, or changes them: a reload keeps the counts).
    /// Whoever turns them on logs [`Telemetry::summaries`]' due summaries (`serve`).
    pub fn configure_summaries(&self, settings: SummaryConfig) {
        self.summaries.configure(settings);
    }

    /// The rejection-summary counts.
    pub fn summaries(&self) -> &Summaries {
        &self.summaries
    }

    /// Records one event. False when its line was held back by a rejection summary (the
    /// session then keeps its own `session closed:` line back too).
    pub fn emit(&self, event: Event<'_>) -> bool {
        // metrics count every event, logged or not
        self.metrics.observe(&event);
        // A rejection past its client's first `log.summary_after` is only counted, and not
        // even rendered: under a flood that is the point. Its detail line goes with it.
        if !self.summaries.admit(&event) {
            return false;
        }
        let record = event.render();
        self.write(&record);
        if self.format == LogFormat::Syslog && record.detail {
            self.write(&record.detail_record());
        }
        true
    }

    fn write(&self, record: &Record) {
        let now = clock::wall();
        let line = match self.format {
            LogFormat::Json => record.json(&clock::rfc3339(now)),
            LogFormat::Syslog => match self.sink {
                // syslogd adds its own timestamp and host.
                Sink::Syslog(_) => format!(
                    "<{}>portcullis[{}]: {}",
                    record.level.priority(),
                    self.pid,
                    record.message()
                ),
                _ => format!(
                    "{} {} portcullis[{}]: {}",
                    clock::rfc3339(now),
                    self.hostname,
                    self.pid,
                    record.message()
                ),
            },
        };
        match &self.sink {
            Sink::Stderr => write_stderr(&line),
            Sink::Syslog(sock) => {
                let datagram = match self.format {
                    LogFormat::Json => format!(
                        "<{}>portcullis[{}]: {line}",
                        record.level.priority(),
                        self.pid
                    ),
                    LogFormat::Syslog => line.clone(),
                };
                if sock.send(datagram.as_bytes()).is_err() {
                    write_stderr(&line);
                }
            }
            Sink::Memory(m) => {
                if let Ok(mut v) = m.lock() {
                    v.push(line);
                }
            }
        }
    }
}

fn write_stderr(line: &str) {
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    // One write per line so concurrent lines do not interleave; a failing stderr is ignored.
    let _ = std::io::stderr().lock().write_all(&buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sendmail_wording() {
        let e = Event::MessageAccepted {
            qid: "6ALBkAGx022139",
            from: "alice@example.org",
            size: 18,
            nrcpts: 1,
            msgid: Some("<x@y>"),
            proto: "ESMTP",
            relay: "localhost [127.0.0.1]",
        };
        assert_eq!(
            e.render().message(),
            "6ALBkAGx022139: from=<alice@example.org>, size=18, class=0, nrcpts=1, msgid=<x@y>, proto=ESMTP, daemon=MTA, relay=localhost [127.0.0.1]"
        );
        let e = Event::CommandTimeout {
            qid: None,
            host: "localhost",
            phase: "mail",
        };
        assert_eq!(
            e.render().message(),
            "timeout waiting for input from localhost during server cmd read"
        );
        let e = Event::Delivered {
            qid: "Q",
            to: "a@localhost",
            delay: 61,
            xdelay: 0,
            mailer: "local",
            path: "/x",
        };
        assert_eq!(
            e.render().message(),
            "Q: to=<a@localhost>, delay=00:01:01, xdelay=00:00:00, mailer=local, dsn=2.0.0, stat=Sent"
        );
    }

    #[test]
    fn syslog_datagrams_carry_priority_and_tag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let t =
            Telemetry::with_syslog_socket(LogFormat::Syslog, LogDestination::Syslog, "mx", &path);
        t.emit(Event::NoMailIssued {
            relay: "[127.0.0.1]",
        });
        t.emit(Event::ConfigReloadFailed {
            origin: "f",
            error: "e",
        });
        let mut buf = [0u8; 512];
        let n = server.recv(&mut buf).unwrap();
        let pid = std::process::id();
        // mail facility (2) * 8 + info (6) = 22; error (3) = 19.
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            format!(
                "<22>portcullis[{pid}]: [127.0.0.1] did not issue MAIL/EXPN/VRFY/ETRN during connection to MTA"
            )
        );
        let n = server.recv(&mut buf).unwrap();
        assert!(
            std::str::from_utf8(&buf[..n])
                .unwrap()
                .starts_with("<19>portcullis[")
        );
    }

    fn pregreet(client: IpAddr) -> Event<'static> {
        Event::Pregreet {
            qid: "Q",
            relay: "[192.0.2.1]",
            client,
            seconds: 0,
            waited_ms: 3,
            class: "smtp-command",
            sample: "EHLO x",
            action: Action::Enforce,
            entry: None,
        }
    }

    #[test]
    fn summarised_rejections_are_counted_not_written() {
        let t = Telemetry::memory(LogFormat::Syslog);
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        // Off by default: every rejection is written (with its detail line).
        t.emit(pregreet(client));
        assert_eq!(t.lines().len(), 2);
        t.configure_summaries(SummaryConfig {
            interval: std::time::Duration::from_secs(60),
            after: 1,
            top: 5,
        });
        for _ in 0..3 {
            t.emit(pregreet(client));
            // Not a rejection: never held back.
            t.emit(Event::NoMailIssued {
                relay: "[192.0.2.1]",
            });
        }
        let lines = t.lines();
        let pregreets = lines.iter().filter(|l| l.contains("pre-greeting")).count();
        let details = lines.iter().filter(|l| l.contains(" detail: ")).count();
        let no_mail = lines.iter().filter(|l| l.contains("did not issue")).count();
        assert_eq!((pregreets, details, no_mail), (2, 2, 3), "{lines:#?}");
        let due = t.summaries().take_all();
        assert_eq!(due.len(), 1);
        t.emit(Event::RejectionSummary { summary: &due[0] });
        let last = t.lines().pop().unwrap();
        assert!(
            last.ends_with(
                "portcullis[0]: greet_pause: 2 more rejections not logged in the last 1s \
                 from 1 client (first 1 per client logged); top: [192.0.2.1] 2"
            ),
            "{last}"
        );
    }

    #[test]
    fn summary_json_fields() {
        let summary = Summary {
            defence: crate::summary::Defence::RelayDenied,
            suppressed: 9,
            clients: 2,
            untracked: 3,
            window: std::time::Duration::from_secs(60),
            after: 5,
            top: vec![
                ("2001:db8::1".parse().unwrap(), 4),
                ("192.0.2.7".parse().unwrap(), 2),
            ],
        };
        let j = Event::RejectionSummary { summary: &summary }
            .render()
            .json("T");
        assert_eq!(
            j,
            "{\"ts\":\"T\",\"level\":\"notice\",\"event\":\"rejections_summary\",\
             \"message\":\"relay_denied: 9 more rejections not logged in the last 60s from 2 \
             clients (first 5 per client logged); top: [IPv6:2001:db8:0:0:0:0:0:1] 4, \
             [192.0.2.7] 2; 3 from clients not tracked (table full)\",\"defence\":\"relay_denied\",\
             \"suppressed\":\"9\",\"clients\":\"2\",\"untracked\":\"3\",\"interval_s\":\"60\",\
             \"top\":\"2001:db8::1=4,192.0.2.7=2\"}"
        );
    }

    #[test]
    fn json_is_escaped() {
        let e = Event::ConfigReloadFailed {
            origin: "a\"b",
            error: "line\nbreak",
        };
        let j = e.render().json("T");
        assert_eq!(
            j,
            "{\"ts\":\"T\",\"level\":\"error\",\"event\":\"config_reload_failed\",\"message\":\"configuration reload from a\\\"b failed, keeping the old one: line\\nbreak\"}"
        );
    }

    #[test]
    fn relay_tls_lines_are_sendmails_client_line() {
        use crate::relay_tls::{TlsOutcome, TlsReport, Verify};
        let line = |relay: &str, outcome: TlsOutcome| {
            let report = TlsReport {
                relay: relay.to_owned(),
                outcome,
            };
            Event::RelayTls {
                qid: "Q",
                report: &report,
            }
            .render()
        };
        let ok = line(
            "mx.example.net",
            TlsOutcome::Established {
                version: "TLSv1.3".into(),
                cipher: "TLS_AES_256_GCM_SHA384".into(),
                bits: 256,
                verify: Verify::Ok,
            },
        );
        assert_eq!(
            ok.message(),
            "Q: STARTTLS=client, relay=mx.example.net, version=TLSv1.3, verify=OK, \
             cipher=TLS_AES_256_GCM_SHA384, bits=256/256"
        );
        let unverified = line(
            "[192.0.2.1]",
            TlsOutcome::Established {
                version: "TLSv1.2".into(),
                cipher: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into(),
                bits: 128,
                verify: Verify::Fail("UnknownIssuer".into()),
            },
        );
        assert!(
            unverified.message().contains(
                "verify=FAIL, cipher=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, bits=128/128"
            )
        );
        assert!(
            unverified
                .json("t")
                .contains("\"verify_reason\":\"UnknownIssuer\"")
        );
        let failed = line(
            "[192.0.2.1]",
            TlsOutcome::Failed {
                reason: "invalid peer certificate: UnknownIssuer".into(),
                certificate: true,
            },
        );
        assert_eq!(
            failed.message(),
            "Q: STARTTLS=client, relay=[192.0.2.1], verify=FAIL, error: handshake failed: \
             invalid peer certificate: UnknownIssuer"
        );
        assert_eq!(failed.level, Level::Notice);
        let refused = line(
            "[192.0.2.1]",
            TlsOutcome::Refused("454 4.7.0 not now".into()),
        );
        assert!(
            refused
                .message()
                .ends_with("verify=NONE, error: STARTTLS refused: 454 4.7.0 not now")
        );
        let broken = line(
            "[192.0.2.1]",
            TlsOutcome::Failed {
                reason: "eof".into(),
                certificate: false,
            },
        );
        assert!(broken.message().contains("verify=SOFTWARE"));
    }
}
