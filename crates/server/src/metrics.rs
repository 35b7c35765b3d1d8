//! Metrics: Prometheus counters, gauges and histograms, fed by the telemetry catalogue.
//!
//! Role: [`Metrics::observe`] turns each [`Event`] into counter and histogram updates; it is
//! called by `Telemetry::emit` for every event, logged or summarised alike, so a log line and
//! its metric cannot drift apart (design.md §3.10). Gauges that describe a state rather than
//! an event (sessions in flight, the queue by state) are read from their owners when a
//! scrape comes ([`Live`]). [`Metrics::render`] writes the OpenMetrics text that
//! `crate::metrics_http` serves at `/metrics`.
//!
//! Names follow one pattern (Vector's instrumentation spec, Prometheus' naming guide):
//! `portcullis_<subject>_<unit>` for gauges and histograms (`_seconds`, `_messages`,
//! `_sessions`), and `portcullis_<subject>_total` for counters. Labels name a reason, never a
//! client: `defence`, `outcome`, `mailer`, `state`, each from a small fixed set of
//! `&'static str`, so an attack cannot grow the series (crates.md: "never label by client IP").
//!
//! Must not: block (every update is an atomic operation or a short lock inside
//! prometheus-client), or read the clock (durations come in the events).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use portcullis_smtp::{Action, Finding, RcptFlood};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::relay_tls::{TlsOutcome, Verify};
use crate::summary;
use crate::telemetry::{Event, RelayStat};

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// Buckets for the time to the client's first byte and for pre-greeting talk: fine around
/// the usual pauses (0.5–10 s, Sendmail's examples use 1–10 s), up to Sendmail's 300 s cap.
const FIRST_INPUT_BUCKETS: [f64; 15] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 30.0, 60.0, 300.0,
];
/// Buckets for whole sessions: from a refused connection to a long transfer.
const DURATION_BUCKETS: [f64; 13] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// The queue's messages by state, kept by the queue runner (plain atomics: the runner
/// stores, a scrape loads).
#[derive(Debug, Default)]
pub struct QueueGauges {
    /// Due now, waiting for a worker.
    pub ready: AtomicU64,
    /// Waiting for their next attempt.
    pub deferred: AtomicU64,
    /// In a delivery attempt.
    pub delivering: AtomicU64,
    /// Held by the operator (as far as the runner has seen them since start).
    pub held: AtomicU64,
}

/// State read when a scrape comes.
#[derive(Clone, Debug)]
pub struct Live {
    /// Connections accepted and not yet closed (in the pause or in the dialogue).
    pub sessions: u64,
    /// The queue by state.
    pub queue: Arc<QueueGauges>,
}

/// Every metric Portcullis exports, in one registry (no process-global state: tests build
/// their own and read it back).
pub struct Metrics {
    registry: Registry,
    defence_findings: Family<Labels2, Counter>,
    messages: Family<Labels1, Counter>,
    deliveries: Family<Labels2, Counter>,
    dsns: Family<Labels1, Counter>,
    relay_tls: Family<Labels1, Counter>,
    sessions_closed: Counter,
    tls_handshakes: Family<Labels1, Counter>,
    sessions_in_flight: Gauge,
    queue: Family<Labels1, Gauge>,
    first_input: Histogram,
    pregreet: Histogram,
    session_duration: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let defence_findings = Family::<Labels2, Counter>::default();
        registry.register(
            "defence_findings",
            "Findings of each defence, by what was done (rejected, dropped, ignored, delayed, closed, discarded)",
            defence_findings.clone(),
        );
        let messages = Family::<Labels1, Counter>::default();
        registry.register(
            "messages",
            "Messages received, by outcome (accepted, refused, discarded, commit_failed)",
            messages.clone(),
        );
        let deliveries = Family::<Labels2, Counter>::default();
        registry.register(
            "deliveries",
            "Delivery attempts per recipient, by mailer (local, esmtp, lmtp) and outcome (sent, deferred, bounced)",
            deliveries.clone(),
        );
        let dsns = Family::<Labels1, Counter>::default();
        registry.register(
            "dsns",
            "Delivery status notifications, by outcome (queued, dropped)",
            dsns.clone(),
        );
        let relay_tls = Family::<Labels1, Counter>::default();
        registry.register(
            "relay_tls",
            "STARTTLS with next hops, by outcome (verified, unverified, not_offered, refused, handshake_failed, certificate_rejected)",
            relay_tls.clone(),
        );
        let sessions_closed = Counter::default();
        registry.register(
            "sessions_closed",
            "SMTP sessions ended after the greeting pause",
            sessions_closed.clone(),
        );
        let tls_handshakes = Family::<Labels1, Counter>::default();
        registry.register(
            "tls_handshakes",
            "STARTTLS handshakes, by outcome (ok, failed, timeout)",
            tls_handshakes.clone(),
        );
        let sessions_in_flight = Gauge::default();
        registry.register(
            "sessions_in_flight",
            "Connections accepted and not yet closed (in the greeting pause or the dialogue)",
            sessions_in_flight.clone(),
        );
        let queue = Family::<Labels1, Gauge>::default();
        registry.register(
            "queue_messages",
            "Messages in the queue, by state (ready, deferred, delivering, held)",
            queue.clone(),
        );
        let first_input = Histogram::new(FIRST_INPUT_BUCKETS);
        registry.register(
            "first_input_seconds",
            "Time from connect to the client's first byte, for sessions in which it sent one",
            first_input.clone(),
        );
        let pregreet = Histogram::new(FIRST_INPUT_BUCKETS);
        registry.register(
            "pregreet_seconds",
            "Time from connect to the first byte of clients that talked before the greeting",
            pregreet.clone(),
        );
        let session_duration = Histogram::new(DURATION_BUCKETS);
        registry.register(
            "session_duration_seconds",
            "Time from connect to close of SMTP sessions",
            session_duration.clone(),
        );
        let metrics = Self {
            registry,
            defence_findings,
            messages,
            deliveries,
            dsns,
            relay_tls,
            sessions_closed,
            tls_handshakes,
            sessions_in_flight,
            queue,
            first_input,
            pregreet,
            session_duration,
        };
        metrics.zero_known_series();
        metrics
    }

    /// Series that exist from the start, so a dashboard shows 0 rather than nothing before
    /// the first event of each kind.
    fn zero_known_series(&self) {
        for state in ["ready", "deferred", "delivering", "held"] {
            let _ = self.queue.get_or_create(&[("state", state)]);
        }
        for outcome in ["accepted", "refused"] {
            let _ = self.messages.get_or_create(&[("outcome", outcome)]);
        }
        // The names come from summary::Defence, as the events' labels do (a literal here
        // once said "relay" while the events counted "relay_denied").
        for outcome in ["ok", "failed", "timeout"] {
            let _ = self.tls_handshakes.get_or_create(&[("outcome", outcome)]);
        }
        for defence in [
            summary::Defence::GreetPause,
            summary::Defence::RateControl,
            summary::Defence::ConnControl,
            summary::Defence::Access,
            summary::Defence::RelayDenied,
        ] {
            let _ = self
                .defence_findings
                .get_or_create(&[("defence", defence.name()), ("outcome", "rejected")]);
        }
    }

    /// Counts one event (called for every event telemetry records).
    pub fn observe(&self, event: &Event<'_>) {
        // The per-client defences carry the same names in metrics and in summary lines.
        if let Some((defence, _)) = summary::subject(event) {
            self.finding(defence.name(), finding_outcome(event));
        }
        match event {
            Event::Pregreet { waited_ms, .. } => {
                self.pregreet.observe(*waited_ms as f64 / 1000.0);
            }
            // The finding was counted by its AccessCheck (once per entry matched); this is
            // one message thrown away.
            Event::Discarded { .. } => self.message("discarded"),
            Event::DaemonDeferring { .. } => self.finding("connection_rate_throttle", "delayed"),
            Event::DaemonRefusingLoad { .. } => self.finding("load", "rejected"),
            Event::Delaying { .. } => self.finding("load", "delayed"),
            Event::DelayBudgetSpent { .. } => self.finding("delay_budget", "rejected"),
            Event::CommandTimeout { .. } | Event::DataTimeout { .. } => {
                self.finding("timeout", "closed");
            }
            Event::MessageAccepted { .. } => self.message("accepted"),
            Event::MessageRefused { .. } => self.message("refused"),
            Event::CommitFailed { .. } | Event::CommitTimeout { .. } => {
                self.message("commit_failed");
            }
            Event::Delivered { mailer, .. } => self.delivery(mailer, "sent"),
            Event::Deferred { mailer, .. } => self.delivery(mailer, "deferred"),
            Event::Relayed { mailer, stat, .. } => {
                let outcome = match stat {
                    RelayStat::Sent(_) => "sent",
                    RelayStat::Deferred(_) => "deferred",
                    RelayStat::Bounced(_) => "bounced",
                };
                self.delivery(mailer, outcome);
            }
            Event::TlsStarted { .. } => self.tls_handshake("ok"),
            Event::TlsFailed { timed_out, .. } => {
                self.tls_handshake(if *timed_out { "timeout" } else { "failed" });
            }
            Event::TlsPlaintextDiscarded { .. } => self.finding("starttls_injection", "discarded"),
            Event::DsnQueued { .. } => self.dsn("queued"),
            Event::DsnDropped { .. } => self.dsn("dropped"),
            Event::RelayTls { report, .. } => {
                let outcome = match &report.outcome {
                    TlsOutcome::Established {
                        verify: Verify::Ok, ..
                    } => "verified",
                    TlsOutcome::Established { .. } => "unverified",
                    TlsOutcome::NotOffered => "not_offered",
                    TlsOutcome::Refused(_) => "refused",
                    TlsOutcome::Failed {
                        certificate: true, ..
                    } => "certificate_rejected",
                    TlsOutcome::Failed { .. } => "handshake_failed",
                };
                self.relay_tls.get_or_create(&[("outcome", outcome)]).inc();
            }
            Event::SessionClosed {
                first_input,
                duration,
                ..
            } => {
                self.sessions_closed.inc();
                if let Some(first) = first_input {
                    self.first_input.observe(first.as_secs_f64());
                }
                self.session_duration.observe(duration.as_secs_f64());
            }
            _ => {}
        }
    }

    fn finding(&self, defence: &'static str, outcome: &'static str) {
        self.defence_findings
            .get_or_create(&[("defence", defence), ("outcome", outcome)])
            .inc();
    }

    fn message(&self, outcome: &'static str) {
        self.messages.get_or_create(&[("outcome", outcome)]).inc();
    }

    fn delivery(&self, mailer: &str, outcome: &'static str) {
        let mailer = match mailer {
            "local" => "local",
            "esmtp" | "smtp" => "esmtp",
            "lmtp" => "lmtp",
            _ => "other",
        };
        self.deliveries
            .get_or_create(&[("mailer", mailer), ("outcome", outcome)])
            .inc();
    }

    fn tls_handshake(&self, outcome: &'static str) {
        self.tls_handshakes
            .get_or_create(&[("outcome", outcome)])
            .inc();
    }

    fn dsn(&self, outcome: &'static str) {
        self.dsns.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// The OpenMetrics text of every metric, with the gauges read from `live`.
    pub fn render(&self, live: &Live) -> String {
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.sessions_in_flight.set(gauge(live.sessions));
        let q = &live.queue;
        for (state, value) in [
            ("ready", &q.ready),
            ("deferred", &q.deferred),
            ("delivering", &q.delivering),
            ("held", &q.held),
        ] {
            self.queue
                .get_or_create(&[("state", state)])
                .set(gauge(value.load(Ordering::Relaxed)));
        }
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The outcome label of a configured action.
fn action_outcome(action: Action) -> &'static str {
    match action {
        Action::Enforce => "rejected",
        Action::Drop => "dropped",
        Action::Ignore => "ignored",
    }
}

/// The `outcome` label of a per-client defence's event: its action, and for `enforce` what
/// the defence then does (most refuse; the throttles delay; some close).
fn finding_outcome(event: &Event<'_>) -> &'static str {
    let (action, enforced) = match event {
        Event::Pregreet { action, .. } | Event::ClientLimited { action, .. } => {
            (*action, "rejected")
        }
        Event::AccessCheck {
            action, discard, ..
        } => (*action, if *discard { "discarded" } else { "rejected" }),
        Event::SessionDefence {
            action, finding, ..
        } => (*action, enforced_session_outcome(finding)),
        _ => (Action::Enforce, "rejected"),
    };
    match action {
        Action::Enforce => enforced,
        other => action_outcome(other),
    }
}

/// What an enforced session defence does.
fn enforced_session_outcome(finding: &Finding) -> &'static str {
    match finding {
        Finding::RcptFlood(RcptFlood::Throttling) | Finding::CommandFlood { .. } => "delayed",
        Finding::RcptFlood(RcptFlood::ShuttingDown) | Finding::TooManyBadCommands => "closed",
        Finding::OpenProxy { .. }
        | Finding::TooManyRecipients
        | Finding::Stuffing { .. }
        | Finding::Unsynchronized { .. } => "rejected",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn live() -> Live {
        Live {
            sessions: 3,
            queue: Arc::new(QueueGauges::default()),
        }
    }

    /// The value of the sample line `name{labels} value` (exact name and labels).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(series)?.strip_prefix(' ')?;
            rest.split(' ').next()?.parse().ok()
        })
    }

    #[test]
    fn a_pregreet_counts_its_defence_and_its_seconds() {
        let m = Metrics::new();
        for (ms, action) in [(1500, Action::Enforce), (200, Action::Ignore)] {
            m.observe(&Event::Pregreet {
                qid: "Q",
                client: std::net::IpAddr::from([192, 0, 2, 1]),
                relay: "[192.0.2.1]",
                seconds: 2,
                waited_ms: ms,
                class: "smtp",
                sample: "EHLO",
                action,
                entry: None,
            });
        }
        let text = m.render(&live());
        let rejected =
            r#"portcullis_defence_findings_total{defence="greet_pause",outcome="rejected"}"#;
        let ignored =
            r#"portcullis_defence_findings_total{defence="greet_pause",outcome="ignored"}"#;
        assert_eq!(sample(&text, rejected), Some(1.0));
        assert_eq!(sample(&text, ignored), Some(1.0));
        assert_eq!(
            sample(&text, "portcullis_pregreet_seconds_count"),
            Some(2.0)
        );
        assert_eq!(sample(&text, "portcullis_pregreet_seconds_sum"), Some(1.7));
        // 0.2 s falls in the 0.25 bucket, 1.5 s in the 1.5 bucket.
        let le = |b: &str| format!("portcullis_pregreet_seconds_bucket{{le=\"{b}\"}}");
        assert_eq!(sample(&text, &le("0.1")), Some(0.0));
        assert_eq!(sample(&text, &le("0.25")), Some(1.0));
        assert_eq!(sample(&text, &le("1.5")), Some(2.0));
    }

    #[test]
    fn series_at_zero_from_the_start_use_the_defence_names_events_use() {
        let m = Metrics::new();
        let text = m.render(&live());
        let rejected = |d: &str| {
            format!("portcullis_defence_findings_total{{defence=\"{d}\",outcome=\"rejected\"}}")
        };
        // docs/metrics.md lists these as present at 0 before the first event.
        for defence in [
            "greet_pause",
            "rate_control",
            "conn_control",
            "access",
            "relay_denied",
        ] {
            assert_eq!(sample(&text, &rejected(defence)), Some(0.0), "{defence}");
        }
        // A refused relay counts in the series that was there at 0, not in a new one.
        m.observe(&Event::RecipientRefused {
            qid: "Q",
            relay: "[192.0.2.1]",
            client: std::net::IpAddr::from([192, 0, 2, 1]),
            recipient: "x@elsewhere.example",
            reply: "550 5.7.1 <x@elsewhere.example>... Relaying denied",
            relaying: true,
        });
        let text = m.render(&live());
        assert_eq!(sample(&text, &rejected("relay_denied")), Some(1.0));
        assert!(!text.contains("defence=\"relay\""), "{text}");
    }

    #[test]
    fn sessions_and_queue_gauges_are_read_at_scrape() {
        let m = Metrics::new();
        let l = live();
        l.queue.deferred.store(7, Ordering::Relaxed);
        let text = m.render(&l);
        assert_eq!(sample(&text, "portcullis_sessions_in_flight"), Some(3.0));
        let q = |s: &str| format!("portcullis_queue_messages{{state=\"{s}\"}}");
        assert_eq!(sample(&text, &q("deferred")), Some(7.0));
        assert_eq!(sample(&text, &q("ready")), Some(0.0));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn session_lines_feed_the_histograms() {
        let m = Metrics::new();
        m.observe(&Event::SessionClosed {
            qid: "Q",
            relay: "[192.0.2.1]",
            pause: Duration::from_secs(1),
            first_input: Some(Duration::from_millis(1200)),
            duration: Duration::from_millis(2500),
            messages: 1,
            held_back: false,
        });
        m.observe(&Event::SessionClosed {
            qid: "Q",
            relay: "[192.0.2.1]",
            pause: Duration::ZERO,
            first_input: None,
            duration: Duration::from_millis(20),
            messages: 0,
            held_back: true,
        });
        let text = m.render(&live());
        assert_eq!(sample(&text, "portcullis_sessions_closed_total"), Some(2.0));
        assert_eq!(
            sample(&text, "portcullis_first_input_seconds_count"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "portcullis_session_duration_seconds_count"),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "portcullis_session_duration_seconds_sum"),
            Some(2.52)
        );
    }

    #[test]
    fn deliveries_are_labelled_by_mailer_and_outcome() {
        let m = Metrics::new();
        m.observe(&Event::Relayed {
            qid: "Q",
            to: "a@example.net",
            delay: 0,
            xdelay: 0,
            mailer: "esmtp",
            relay: None,
            dsn: "5.1.1",
            stat: RelayStat::Bounced("User unknown"),
        });
        m.observe(&Event::Delivered {
            qid: "Q",
            to: "a@localhost",
            delay: 0,
            xdelay: 0,
            mailer: "local",
            path: "/x",
        });
        let text = m.render(&live());
        let d = |mailer: &str, outcome: &str| {
            format!("portcullis_deliveries_total{{mailer=\"{mailer}\",outcome=\"{outcome}\"}}")
        };
        assert_eq!(sample(&text, &d("esmtp", "bounced")), Some(1.0));
        assert_eq!(sample(&text, &d("local", "sent")), Some(1.0));
        assert_eq!(sample(&text, &d("esmtp", "sent")), None);
    }

    #[test]
    fn relay_tls_is_counted_by_outcome() {
        use crate::relay_tls::{TlsOutcome, TlsReport, Verify};
        let m = Metrics::new();
        let established = |verify| TlsOutcome::Established {
            version: "TLSv1.3".into(),
            cipher: "TLS_AES_256_GCM_SHA384".into(),
            bits: 256,
            verify,
        };
        for outcome in [
            established(Verify::Ok),
            established(Verify::Ok),
            established(Verify::Fail("UnknownIssuer".into())),
            TlsOutcome::NotOffered,
            TlsOutcome::Refused("454 4.7.0 no".into()),
            TlsOutcome::Failed {
                reason: "bad".into(),
                certificate: true,
            },
            TlsOutcome::Failed {
                reason: "eof".into(),
                certificate: false,
            },
        ] {
            let report = TlsReport {
                relay: "mx.example.net".into(),
                outcome,
            };
            m.observe(&Event::RelayTls {
                qid: "Q",
                report: &report,
            });
        }
        let text = m.render(&live());
        let t = |o: &str| {
            sample(
                &text,
                &format!("portcullis_relay_tls_total{{outcome=\"{o}\"}}"),
            )
        };
        assert_eq!(t("verified"), Some(2.0));
        for o in [
            "unverified",
            "not_offered",
            "refused",
            "certificate_rejected",
            "handshake_failed",
        ] {
            assert_eq!(t(o), Some(1.0), "{o}");
        }
    }
}
