//! Rendering: each [`Event`] becomes one [`Record`] (name, level, queue id, Sendmail-worded
//! text, structured fields), one arm per event.
//!
//! Must not: write anything or touch state; [`super::Telemetry::emit`] decides what is written.

use portcullis_smtp::{Action, Finding, RcptFlood};

use super::{Event, Level, Record, RelayStat};
use crate::clock;
use crate::relay_tls::{TlsOutcome, TlsReport, Verify};
use crate::summary::Summary;

impl Event<'_> {
    /// Renders the event (one arm per event, each a single expression).
    pub fn render(&self) -> Record {
        use Level::{Error, Info, Notice, Warning};
        let r = |name, level, qid: Option<&str>, text: String| Record {
            name,
            level,
            qid: qid.map(str::to_owned),
            text,
            fields: Vec::new(),
            detail: false,
        };
        match *self {
            Self::ServerStarted { version, config } => r(
                "server_started",
                Notice,
                None,
                format!("starting daemon (Portcullis {version}): config={config}"),
            ),
            Self::ListenerBound { addr } => r(
                "server_listening",
                Notice,
                None,
                format!("listening on {addr}"),
            ),
            Self::MetricsListening { addr } => r(
                "metrics_listening",
                Notice,
                None,
                format!("metrics at http://{addr}/metrics"),
            ),
            Self::DaemonRejecting { sessions, max } => r(
                "admission_max_sessions",
                Notice,
                None,
                format!("rejecting connections on daemon MTA: {sessions} children, max {max}"),
            ),
            Self::DaemonAccepting => r(
                "admission_accepting_again",
                Notice,
                None,
                "accepting connections again for daemon MTA".to_owned(),
            ),
            Self::DaemonDeferring { rate } => r(
                "admission_throttled",
                Notice,
                None,
                format!("deferring connections on daemon MTA: {rate} per second"),
            ),
            Self::ConfigReloaded { origin } => r(
                "config_reloaded",
                Notice,
                None,
                format!("configuration reloaded from {origin}"),
            ),
            Self::ConfigReloadFailed { origin, error } => r(
                "config_reload_failed",
                Error,
                None,
                format!("configuration reload from {origin} failed, keeping the old one: {error}"),
            ),
            Self::ShutdownStarted { signal } => r(
                "server_stopping",
                Notice,
                None,
                format!("interrupt ({signal}): stopping"),
            ),
            Self::ShutdownDone { sessions_left } => r(
                "server_stopped",
                Notice,
                None,
                format!("stopped; {sessions_left} session(s) cut off"),
            ),
            Self::AcceptFailed { error } => r(
                "server_accept_failed",
                Warning,
                None,
                format!("accept failed: {error}"),
            ),
            Self::CommandTimeout { qid, host, phase } => r(
                "smtp_command_timeout",
                Info,
                qid,
                format!("timeout waiting for input from {host} during server cmd read"),
            )
            .with("phase", phase),
            Self::DataTimeout { qid, relay } => r(
                "smtp_data_timeout",
                Info,
                qid,
                format!("timeout waiting for data from {relay}: 421 4.4.1 sent"),
            ),
            Self::CommitTimeout { qid, relay } => r(
                "smtp_commit_timeout",
                Warning,
                qid,
                format!("spool did not commit within datafinal for {relay}: 451 4.3.0 sent"),
            ),
            Self::NoMailIssued { relay } => r(
                "smtp_no_mail",
                Info,
                None,
                format!("{relay} did not issue MAIL/EXPN/VRFY/ETRN during connection to MTA"),
            ),
            Self::SessionClosed {
                qid,
                relay,
                pause,
                first_input,
                duration,
                messages,
                ..
            } => r(
                "smtp_session_closed",
                Info,
                Some(qid),
                format!(
                    "session closed: relay={relay}, pause={}ms, first_input={}, duration={}ms, messages={messages}",
                    pause.as_millis(),
                    first_input.map_or_else(|| "none".to_owned(), |f| format!("{}ms", f.as_millis())),
                    duration.as_millis()
                ),
            ),
            Self::LostInput {
                qid,
                relay,
                in_data,
            } => r(
                "smtp_lost_input",
                Info,
                qid,
                format!(
                    "lost input channel from {relay} to MTA after {}",
                    if in_data { "data" } else { "mail" }
                ),
            ),
            Self::MessageAccepted {
                qid,
                from,
                size,
                nrcpts,
                msgid,
                proto,
                relay,
            } => r(
                "smtp_message_accepted",
                Info,
                Some(qid),
                format!(
                    "from=<{from}>, size={size}, class=0, nrcpts={nrcpts}, msgid={}, proto={proto}, daemon=MTA, relay={relay}",
                    msgid.unwrap_or("<>")
                ),
            ),
            Self::MessageRefused {
                qid,
                relay,
                reply,
                size,
            } => r(
                "smtp_message_refused",
                Info,
                qid,
                format!("message from {relay} refused: {reply}"),
            )
            .with("size", &size.to_string()),
            Self::CommitFailed { qid, error } => r(
                "spool_commit_failed",
                Error,
                qid,
                format!("SYSERR: spool commit failed: {error}"),
            ),
            Self::Delivered {
                qid,
                to,
                delay,
                xdelay,
                mailer,
                path,
            } => r(
                "delivery_sent",
                Info,
                Some(qid),
                format!(
                    "to=<{to}>, delay={}, xdelay={}, mailer={mailer}, dsn=2.0.0, stat=Sent",
                    clock::sendmail_delay(delay),
                    clock::sendmail_delay(xdelay)
                ),
            )
            .with("path", path),
            Self::Deferred {
                qid,
                to,
                delay,
                xdelay,
                mailer,
                error,
            } => r(
                "delivery_deferred",
                Warning,
                Some(qid),
                format!(
                    "to=<{to}>, delay={}, xdelay={}, mailer={mailer}, dsn=4.0.0, stat=Deferred: {error}",
                    clock::sendmail_delay(delay),
                    clock::sendmail_delay(xdelay)
                ),
            ),
            Self::Relayed {
                qid,
                to,
                delay,
                xdelay,
                mailer,
                relay,
                dsn,
                stat,
            } => {
                let relay = relay.map(|r| format!(", relay={r}")).unwrap_or_default();
                let head = format!(
                    "to=<{to}>, delay={}, xdelay={}, mailer={mailer}{relay}, dsn={dsn}",
                    clock::sendmail_delay(delay),
                    clock::sendmail_delay(xdelay)
                );
                let (name, level, stat) = match stat {
                    RelayStat::Sent(reply) => ("delivery_sent", Info, format!("Sent ({reply})")),
                    RelayStat::Deferred(why) => {
                        ("delivery_deferred", Warning, format!("Deferred: {why}"))
                    }
                    RelayStat::Bounced(why) => ("delivery_bounced", Notice, why.to_owned()),
                };
                r(name, level, Some(qid), format!("{head}, stat={stat}"))
            }
            Self::DsnQueued {
                qid,
                dsn_qid,
                to,
                reason,
            } => r(
                "dsn_queued",
                Notice,
                Some(qid),
                format!("{dsn_qid}: DSN: {reason}"),
            )
            .with("dsn_to", to),
            Self::DsnDropped { qid, reason } => r(
                "dsn_dropped",
                Warning,
                Some(qid),
                format!("no DSN sent: {reason}"),
            ),
            Self::LifetimeExceeded { qid, age } => r(
                "queue_lifetime_exceeded",
                Warning,
                Some(qid),
                format!(
                    "Cannot send message for {}; returning it to the sender",
                    clock::sendmail_delay(age)
                ),
            ),
            Self::SpoolReadFailed { qid, error } => r(
                "spool_read_failed",
                Error,
                Some(qid),
                format!("SYSERR: cannot read queue file: {error}"),
            ),
            Self::Quarantined { path, reason } => r(
                "spool_quarantined",
                Warning,
                None,
                format!("quarantined {path}: {reason}"),
            ),
            Self::Recovered { messages } => r(
                "spool_recovered",
                Notice,
                None,
                format!("recovered {messages} queued message(s)"),
            ),
            Self::Pregreet {
                client: _,
                qid,
                relay,
                seconds,
                waited_ms,
                class,
                sample,
                action,
                entry,
            } => r(
                "greet_pause_pregreet",
                Notice,
                Some(qid),
                match action {
                    Action::Ignore => format!(
                        "pre-greeting traffic from {relay} after {seconds} seconds ignored (greet_pause.action = ignore)"
                    ),
                    _ => format!(
                        "rejecting commands from {relay} due to pre-greeting traffic after {seconds} seconds"
                    ),
                },
            )
            .with("class", class)
            .with("sample", sample)
            .with("waited_ms", &waited_ms.to_string())
            .with("action", action.name())
            .with("pause_entry", entry.unwrap_or("greet_pause.default"))
            .with_detail_line(),
            Self::ClientLimited {
                client: _,
                host,
                addr,
                relay,
                reply,
                defence,
                action,
                key,
                count,
                limit,
                entry,
            } => r(
                "admission_client_limited",
                Notice,
                None,
                match action {
                    Action::Ignore => format!(
                        "{relay} over its limit ({reply}) ignored ({defence}.action = ignore)"
                    ),
                    _ => format!(
                        "ruleset=check_relay, arg1={host}, arg2={addr}, relay={relay}, reject={reply}"
                    ),
                },
            )
            .with("defence", defence)
            .with("action", action.name())
            .with("key", key)
            .with("count", &count.to_string())
            .with("limit", &limit.to_string())
            .with("limit_entry", entry)
            .with_detail_line(),
            Self::AccessMapLoaded {
                path,
                entries,
                warnings,
                millis,
            } => r(
                "access_map_loaded",
                Notice,
                None,
                format!(
                    "access map {path} loaded: {entries} entries, {warnings} warning(s), {millis} ms"
                ),
            ),
            Self::AccessMapWarning { diagnostic } => r(
                "access_map_warning",
                Warning,
                None,
                format!("access map: {diagnostic}"),
            ),
            Self::AccessMapReloadFailed { path, error } => r(
                "access_map_reload_failed",
                Error,
                None,
                format!("access map {path} not reloaded, keeping the old one: {error}"),
            ),
            Self::DnsUnavailable { error } => r(
                "dns_unavailable",
                Warning,
                None,
                format!("client host names will not be looked up: {error}"),
            ),
            Self::DaemonRefusingLoad { reading } => r(
                "load_refusing",
                Notice,
                None,
                format!("rejecting connections on daemon MTA: {}", reading.value()),
            )
            .with("signal", reading.signal())
            .with("reading", &reading.to_string()),
            Self::LoadUnavailable { path, error } => r(
                "load_unavailable",
                Warning,
                None,
                format!(
                    "cannot read the load average from {path}: {error}; the *_la thresholds of [load] are inactive until it reads again"
                ),
            ),
            Self::Delaying {
                qid,
                relay,
                command,
                reason,
            } => r(
                "load_delaying",
                Info,
                Some(qid),
                format!("delaying={command}, {reason}"),
            )
            .with("relay", relay),
            Self::DelayBudgetSpent {
                qid,
                relay,
                command,
                spent,
                budget,
            } => r(
                "session_delay_budget_spent",
                Notice,
                Some(qid),
                format!(
                    "{relay}: delay budget spent ({}s of {}s) before {command}; replied 421 4.3.2 Too busy",
                    spent.as_secs(),
                    budget.as_secs()
                ),
            ),
            Self::AccessCheck {
                client: _,
                discard: _,
                qid,
                text,
                action,
                entry,
            } => r(
                "access_check",
                Notice,
                qid,
                match action {
                    Action::Ignore => format!("ignored (access.action = ignore): {text}"),
                    _ => text.to_owned(),
                },
            )
            .with("action", action.name())
            .with("access_entry", entry)
            .with_detail_line(),
            Self::RecipientRefused {
                client: _,
                qid,
                relay,
                recipient,
                reply,
                relaying,
            } => {
                let text = if relaying {
                    format!("ruleset=check_rcpt, arg1=<{recipient}>, relay={relay}, reject={reply}")
                } else {
                    // Sendmail logs the reply's text without the codes.
                    let bare = reply.splitn(3, ' ').nth(2).unwrap_or(reply);
                    bare.to_owned()
                };
                let name = if relaying { "relay_denied" } else { "user_unknown" };
                r(name, Notice, Some(qid), text)
            }
            Self::Discarded { qid } => r("access_discarded", Notice, Some(qid), "discarded".to_owned()),
            Self::TlsStarted { relay, info } => r(
                "tls_started",
                Info,
                None,
                format!(
                    "STARTTLS=server, relay={relay}, version={}, verify={}, cipher={}, bits={}/{}",
                    info.version,
                    info.verify.name(),
                    info.cipher,
                    info.bits,
                    info.bits
                ),
            ),
            Self::TlsFailed {
                relay,
                reason,
                timed_out,
            } => r(
                "tls_failed",
                Warning,
                None,
                format!("STARTTLS=server, error: accept failed, reason={reason}, relay={relay}"),
            )
            .with("timed_out", if timed_out { "true" } else { "false" }),
            Self::TlsPlaintextDiscarded { relay, bytes } => r(
                "tls_plaintext_discarded",
                Notice,
                None,
                format!(
                    "STARTTLS=server, relay={relay}, discarded {bytes} bytes of plaintext sent after STARTTLS (not executed)"
                ),
            ),
            Self::SessionDefence {
                client: _,
                qid,
                relay,
                finding,
                action,
            } => {
                let (name, level, text) = defence_text(relay, finding);
                let text = match action {
                    Action::Ignore => format!("ignored ({} = ignore): {text}", finding.action_key()),
                    _ => text,
                };
                let record = r(name, level, qid, text)
                    .with("relay", relay)
                    .with("action", action.name());
                match finding {
                    Finding::Stuffing { next, .. } => {
                        record.with("next_input", next).with_detail_line()
                    }
                    _ => record,
                }
            }
            Self::DeliveryHeld { reading } => r(
                "load_delivery_held",
                Notice,
                None,
                format!("holding delivery: {reading}; mail is still accepted"),
            )
            .with("signal", reading.signal()),
            Self::DeliveryResumed => r(
                "load_delivery_resumed",
                Notice,
                None,
                "delivery resumed: load below queue thresholds".to_owned(),
            ),
            Self::RejectionSummary { summary } => summary_record(summary),
            Self::RelayTls { qid, report } => relay_tls_record(qid, report),
        }
    }
}

/// A rejection summary's line: `greet_pause: 1234 more rejections not logged in the last 60s
/// from 87 clients (first 5 per client logged); top: [192.0.2.1] 400, [192.0.2.7] 120`.
/// No filter written for Sendmail's lines matches it, so a summary bans nobody.
fn summary_record(s: &Summary) -> Record {
    let plural = |n: u64, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    let mut text = format!(
        "{}: {} not logged in the last {}s from {} (first {} per client logged)",
        s.defence.name(),
        plural(s.suppressed, "more rejection"),
        s.window_secs(),
        plural(u64::try_from(s.clients).unwrap_or(u64::MAX), "client"),
        s.after
    );
    if !s.top.is_empty() {
        text.push_str("; top: ");
        text.push_str(&s.top_text());
    }
    if s.untracked > 0 {
        text.push_str(&format!(
            "; {} from clients not tracked (table full)",
            s.untracked
        ));
    }
    let top: Vec<String> = s.top.iter().map(|(a, n)| format!("{a}={n}")).collect();
    Record {
        name: "rejections_summary",
        level: Level::Notice,
        qid: None,
        text,
        fields: Vec::new(),
        detail: false,
    }
    .with("defence", s.defence.name())
    .with("suppressed", &s.suppressed.to_string())
    .with("clients", &s.clients.to_string())
    .with("untracked", &s.untracked.to_string())
    .with("interval_s", &s.window_secs().to_string())
    .with("top", &top.join(","))
}

/// Sendmail's client line, `STARTTLS=client, relay=mx.example.net, version=TLSv1.3,
/// verify=OK, cipher=TLS_AES_256_GCM_SHA384, bits=256/256`, with `verify=` in Sendmail's
/// vocabulary: OK or FAIL (the certificate did or did not verify), NONE (no STARTTLS),
/// SOFTWARE (the handshake failed).
fn relay_tls_record(qid: &str, report: &TlsReport) -> Record {
    let relay = &report.relay;
    let (name, level, verify, text) = match &report.outcome {
        TlsOutcome::Established {
            version,
            cipher,
            bits,
            verify,
        } => {
            let word = match verify {
                Verify::Ok => "OK",
                Verify::Fail(_) => "FAIL",
            };
            let text = format!(
                "STARTTLS=client, relay={relay}, version={version}, verify={word}, \
                 cipher={cipher}, bits={bits}/{bits}"
            );
            ("relay_tls", Level::Info, word, text)
        }
        TlsOutcome::NotOffered => (
            "relay_tls_failed",
            Level::Notice,
            "NONE",
            format!(
                "STARTTLS=client, relay={relay}, verify=NONE, error: TLS is required, but was \
                 not offered"
            ),
        ),
        TlsOutcome::Refused(reply) => (
            "relay_tls_failed",
            Level::Notice,
            "NONE",
            format!(
                "STARTTLS=client, relay={relay}, verify=NONE, error: STARTTLS refused: {reply}"
            ),
        ),
        TlsOutcome::Failed {
            reason,
            certificate,
        } => {
            let word = if *certificate { "FAIL" } else { "SOFTWARE" };
            let text = format!(
                "STARTTLS=client, relay={relay}, verify={word}, error: handshake failed: {reason}"
            );
            ("relay_tls_failed", Level::Notice, word, text)
        }
    };
    let record = Record {
        name,
        level,
        qid: Some(qid.to_owned()),
        text,
        fields: Vec::new(),
        detail: false,
    }
    .with("relay", relay)
    .with("verify", verify);
    match &report.outcome {
        TlsOutcome::Established {
            verify: Verify::Fail(why),
            ..
        } => record.with("verify_reason", why),
        _ => record,
    }
}

/// The event name, level and Sendmail-worded text of a session defence's finding.
fn defence_text(relay: &str, finding: &Finding) -> (&'static str, Level, String) {
    match finding {
        Finding::OpenProxy { command } => (
            "session_open_proxy",
            Level::Notice,
            format!("probable open proxy: command={command}"),
        ),
        Finding::TooManyRecipients => (
            "recipients_too_many",
            Level::Info,
            "Too many recipients".to_owned(),
        ),
        Finding::RcptFlood(RcptFlood::Throttling) => (
            "recipients_flood",
            Level::Notice,
            format!("{relay}: Possible SMTP RCPT flood, throttling."),
        ),
        Finding::RcptFlood(RcptFlood::ShuttingDown) => (
            "recipients_flood",
            Level::Notice,
            format!("{relay}: Possible SMTP RCPT flood, shutting down connection."),
        ),
        Finding::TooManyBadCommands => (
            "smtp_too_many_bad_commands",
            Level::Notice,
            format!("{relay}: too many bad commands; closing connection"),
        ),
        Finding::Stuffing { command, .. } => (
            "smtp_stuffing",
            Level::Notice,
            format!("rejecting server {command} from {relay} due to traffic before response"),
        ),
        // No Sendmail line; Postfix's, which its fail2ban filter knows.
        Finding::Unsynchronized { command, next } => (
            "smtp_unsynchronized",
            Level::Notice,
            format!("improper command pipelining after {command} from {relay}: {next}"),
        ),
        Finding::CommandFlood { command, count } => (
            "smtp_command_flood",
            Level::Notice,
            format!("{relay}: possible SMTP attack: command={command}, count={count}"),
        ),
    }
}
