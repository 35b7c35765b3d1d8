//! `[rate_control]`, `[conn_control]` and `[limits]`: the sections of admission control.
//!
//! Role: defaults, bounds and warnings for the per-client connection rate (Sendmail's
//! `FEATURE(ratecontrol)`) and concurrency (`FEATURE(conncontrol)`), for how clients are
//! grouped into counters (address prefixes), and for the server-wide limits
//! (`ConnectionRateThrottle`, `MaxDaemonChildren`), the per-session delay budget and the
//! recipient defences (`MaxRecipientsPerMessage`, `BadRcptThrottle`, `BadRcptShutdown`),
//! the command-abuse limit `MaxNOOPCommands` and the actions of these defences.
//! Must not: read the per-client limits: they are `ClientRate:` and `ClientConn:` entries
//! of the access map, which the server loads; nor count or decide anything (that is
//! portcullis-policy).
//! Invariants: `rate_control.window` is 6 s to 1 h, so a bucket (window / 6) is 1 s to
//! 10 min; `client_ipv4_prefix` ≤ 32 and `client_ipv6_prefix` ≤ 128; `max_tracked_clients`
//! is 1 to 10,000,000; `session_delay_budget` is 0 s to 1 h; `max_recipients_per_message`
//! is 0 to 1000 (the server's hard cap); `bad_rcpt_throttle` and `bad_rcpt_shutdown` are 0
//! to 1,000,000; `bad_rcpt_throttle_delay` is 0 s to 60 s; `max_noop_commands` is 0 to
//! 10,000. A prefix of 0, a budget of 0 s and a throttle delay of 0 s with the throttle on
//! are allowed with a warning.

use std::time::Duration;

use toml::Spanned;

use crate::defences::action;
use crate::diagnostic::Report;
use crate::model::{ConnControlConfig, LimitsConfig, MaxSessionsAction, RateControlConfig};
use crate::raw::{RawConnControl, RawLimits, RawMaxSessionsAction, RawRateControl, Text};
use crate::validate::{bounded, duration, duration_within, fmt_duration};

/// Sendmail's CHTSIZE: the rate window is counted in this many clock-aligned buckets.
const RATE_BUCKETS: u32 = 6;

/// Shortest window: one second per bucket (Sendmail counts in whole seconds).
const MIN_WINDOW: Duration = Duration::from_secs(6);

/// Longest window: every client seen in it stays in the counter table that long.
const MAX_WINDOW: Duration = Duration::from_secs(60 * 60);

/// Above this many tracked clients the table costs more memory than it can be worth.
const MAX_TRACKED_CLIENTS: u64 = 10_000_000;

/// Longest `session_delay_budget`: already far past any client's patience for one session's
/// deliberate delays (RFC 5321 §4.5.3.2 timeouts are 2 to 10 minutes per step).
const MAX_DELAY_BUDGET: Duration = Duration::from_secs(60 * 60);

/// The server's own hard cap of recipients per message (portcullis-smtp's default
/// `max_recipients`); `max_recipients_per_message` can only lower it.
const RCPT_HARD_CAP: u64 = 1000;

/// Bound of the bad-recipient counts: far past any real transaction or session.
const MAX_BAD_RCPTS: u64 = 1_000_000;

/// Longest `bad_rcpt_throttle_delay`: Sendmail's is a fixed 1 s; past a minute, a single
/// delay nears the client's RCPT timeout (5 min, RFC 5321 §4.5.3.2).
const MAX_BAD_RCPT_DELAY: Duration = Duration::from_secs(60);

/// Bound of `max_noop_commands`: past it, the limit is as good as none (write 0 for that).
const MAX_NOOP_COMMANDS: u64 = 10_000;

/// Below this, `max_sessions` is more likely a typo than a plan.
const FEW_SESSIONS: u64 = 10;

type RawInt = Option<Spanned<u64>>;

pub(crate) fn rate_control(raw: &RawRateControl, report: &mut Report<'_>) -> RateControlConfig {
    let d = RateControlConfig::default();
    RateControlConfig {
        window: window(&raw.window, d.window, report),
        terminate: raw.terminate.as_ref().map_or(d.terminate, |v| *v.get_ref()),
        action: action(raw.action.as_ref()),
    }
}

fn window(raw: &Text, default: Duration, report: &mut Report<'_>) -> Duration {
    let key = "rate_control.window";
    let value = duration(raw, key, default, report);
    if (MIN_WINDOW..=MAX_WINDOW).contains(&value) {
        return value;
    }
    report.error(
        raw.as_ref().map(Spanned::span),
        format!(
            "`{key}` = {} is out of range: it must be between {} and {}; connections are \
             counted in {RATE_BUCKETS} clock-aligned buckets of window/{RATE_BUCKETS}, so each \
             bucket is {} to {}",
            fmt_duration(value),
            fmt_duration(MIN_WINDOW),
            fmt_duration(MAX_WINDOW),
            fmt_duration(MIN_WINDOW / RATE_BUCKETS),
            fmt_duration(MAX_WINDOW / RATE_BUCKETS)
        ),
    );
    default
}

pub(crate) fn conn_control(raw: &RawConnControl) -> ConnControlConfig {
    let d = ConnControlConfig::default();
    ConnControlConfig {
        terminate: raw.terminate.as_ref().map_or(d.terminate, |v| *v.get_ref()),
        action: action(raw.action.as_ref()),
    }
}

pub(crate) fn limits(raw: &RawLimits, report: &mut Report<'_>) -> LimitsConfig {
    let d = LimitsConfig::default();
    let limits = LimitsConfig {
        client_ipv4_prefix: prefix(
            &raw.client_ipv4_prefix,
            "limits.client_ipv4_prefix",
            "IPv4",
            32,
            d.client_ipv4_prefix,
            report,
        ),
        client_ipv6_prefix: prefix(
            &raw.client_ipv6_prefix,
            "limits.client_ipv6_prefix",
            "IPv6",
            128,
            d.client_ipv6_prefix,
            report,
        ),
        max_tracked_clients: bounded(
            &raw.max_tracked_clients,
            "limits.max_tracked_clients",
            1..=MAX_TRACKED_CLIENTS,
            d.max_tracked_clients,
            report,
        ),
        connection_rate_throttle: bounded(
            &raw.connection_rate_throttle,
            "limits.connection_rate_throttle",
            0..=u64::from(u32::MAX),
            d.connection_rate_throttle,
            report,
        ),
        max_sessions: bounded(
            &raw.max_sessions,
            "limits.max_sessions",
            0..=u64::from(u32::MAX),
            d.max_sessions,
            report,
        ),
        max_sessions_action: match raw.max_sessions_action.as_ref().map(|v| *v.get_ref()) {
            None => d.max_sessions_action,
            Some(RawMaxSessionsAction::Wait) => MaxSessionsAction::Wait,
            Some(RawMaxSessionsAction::Refuse) => MaxSessionsAction::Refuse,
        },
        session_delay_budget: delay_budget(
            &raw.session_delay_budget,
            d.session_delay_budget,
            report,
        ),
        max_recipients_per_message: max_recipients(
            &raw.max_recipients_per_message,
            d.max_recipients_per_message,
            report,
        ),
        bad_rcpt_throttle: bounded(
            &raw.bad_rcpt_throttle,
            "limits.bad_rcpt_throttle",
            0..=MAX_BAD_RCPTS,
            d.bad_rcpt_throttle,
            report,
        ),
        bad_rcpt_throttle_delay: duration_within(
            &raw.bad_rcpt_throttle_delay,
            "limits.bad_rcpt_throttle_delay",
            Duration::ZERO..=MAX_BAD_RCPT_DELAY,
            d.bad_rcpt_throttle_delay,
            report,
        ),
        bad_rcpt_shutdown: bounded(
            &raw.bad_rcpt_shutdown,
            "limits.bad_rcpt_shutdown",
            0..=MAX_BAD_RCPTS,
            d.bad_rcpt_shutdown,
            report,
        ),
        max_recipients_action: action(raw.max_recipients_action.as_ref()),
        bad_rcpt_action: action(raw.bad_rcpt_action.as_ref()),
        command_abuse_action: action(raw.command_abuse_action.as_ref()),
        max_noop_commands: bounded(
            &raw.max_noop_commands,
            "limits.max_noop_commands",
            0..=MAX_NOOP_COMMANDS,
            d.max_noop_commands,
            report,
        ),
    };
    warn_few_sessions(&raw.max_sessions, report);
    warn_silent_throttle(&raw.bad_rcpt_throttle_delay, &limits, report);
    limits
}

/// `limits.max_recipients_per_message`, 0 to the server's hard cap; the error says why the
/// cap is there.
fn max_recipients(raw: &RawInt, default: u32, report: &mut Report<'_>) -> u32 {
    let key = "limits.max_recipients_per_message";
    match raw {
        Some(v) if *v.get_ref() > RCPT_HARD_CAP => {
            report.error(
                Some(v.span()),
                format!(
                    "`{key}` must be between 0 and {RCPT_HARD_CAP}, not {}: the hard cap is \
                     {RCPT_HARD_CAP} recipients per message (0 = no limit of its own)",
                    v.get_ref()
                ),
            );
            default
        }
        _ => bounded(raw, key, 0..=RCPT_HARD_CAP, default, report),
    }
}

/// A `bad_rcpt_throttle_delay` written as 0 s while `bad_rcpt_throttle` is on: legal, but
/// the throttle then delays nothing.
fn warn_silent_throttle(raw_delay: &Text, limits: &LimitsConfig, report: &mut Report<'_>) {
    if let Some(v) = raw_delay
        && limits.bad_rcpt_throttle_delay.is_zero()
        && limits.bad_rcpt_throttle > 0
    {
        report.warning(
            Some(v.span()),
            format!(
                "`limits.bad_rcpt_throttle_delay` = 0s with `limits.bad_rcpt_throttle` = {}: \
                 the throttle then only logs (`Possible SMTP RCPT flood, throttling.`) and \
                 delays nothing",
                limits.bad_rcpt_throttle
            ),
        );
    }
}

/// `limits.session_delay_budget`, 0 s to 1 h. 0 is legal but turns every deliberate delay
/// into a 421, so it warns.
fn delay_budget(raw: &Text, default: Duration, report: &mut Report<'_>) -> Duration {
    let key = "limits.session_delay_budget";
    let value = duration_within(raw, key, Duration::ZERO..=MAX_DELAY_BUDGET, default, report);
    if let Some(v) = raw
        && value.is_zero()
    {
        report.warning(
            Some(v.span()),
            format!(
                "`{key}` = 0s allows no deliberate delay in a session: every delay becomes a \
                 421 and the session is closed"
            ),
        );
    }
    value
}

/// A client prefix length of `family`, whose addresses are `bits` long. 0 is legal but
/// makes the whole family one client, so it warns.
fn prefix(
    raw: &RawInt,
    key: &str,
    family: &str,
    bits: u8,
    default: u8,
    report: &mut Report<'_>,
) -> u8 {
    let value = bounded(raw, key, 0..=u64::from(bits), default, report);
    if let Some(v) = raw
        && *v.get_ref() == 0
    {
        report.warning(
            Some(v.span()),
            format!(
                "`{key}` = 0 counts every {family} client as one: a single `ClientRate:` or \
                 `ClientConn:` limit then applies to all of them together"
            ),
        );
    }
    value
}

fn warn_few_sessions(raw: &RawInt, report: &mut Report<'_>) {
    let Some(v) = raw else {
        return;
    };
    let n = *v.get_ref();
    if (1..FEW_SESSIONS).contains(&n) {
        report.warning(
            Some(v.span()),
            format!(
                "`limits.max_sessions` = {n} allows only {n} SMTP session(s) at once for all \
                 clients together; 0 means unlimited"
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_budget_bounds() {
        // (value, Some(is warning) when clean, None = error and default)
        let table: &[(&str, Option<bool>)] = &[
            ("0s", Some(true)),
            ("1ms", Some(false)),
            ("60s", Some(false)),
            ("1h", Some(false)),
            ("3600001ms", None),
            ("1h 1s", None),
            ("2h", None),
            ("soon", None),
        ];
        for &(text, expected) in table {
            let mut report = Report::new("t", "x\n");
            let raw = Some(Spanned::new(0..1, text.to_owned()));
            let got = delay_budget(&raw, Duration::from_secs(60), &mut report);
            let diags = report.into_sorted();
            match expected {
                Some(warns) => {
                    assert_eq!(Some(got), humantime::parse_duration(text).ok(), "{text}");
                    assert_eq!(diags.len(), usize::from(warns), "{text}: {diags:?}");
                    assert!(diags.iter().all(|d| !d.is_error()), "{text}: {diags:?}");
                }
                None => {
                    assert_eq!(got, Duration::from_secs(60), "{text}");
                    assert_eq!(diags.len(), 1, "{text}: {diags:?}");
                    assert!(diags[0].is_error(), "{text}: {diags:?}");
                }
            }
        }
    }

    #[test]
    fn max_recipients_bounds() {
        // (value, Some(result) or None = error and default)
        let table: &[(u64, Option<u32>)] = &[
            (0, Some(0)),
            (1, Some(1)),
            (100, Some(100)),
            (1000, Some(1000)),
            (1001, None),
            (u64::from(u32::MAX) + 1, None),
        ];
        for &(value, expected) in table {
            let mut report = Report::new("t", "x\n");
            let raw = Some(Spanned::new(0..1, value));
            let got = max_recipients(&raw, 7, &mut report);
            let diags = report.into_sorted();
            assert_eq!(got, expected.unwrap_or(7), "{value}");
            match expected {
                Some(_) => assert!(diags.is_empty(), "{value}: {diags:?}"),
                None => {
                    assert_eq!(diags.len(), 1, "{value}: {diags:?}");
                    assert!(diags[0].is_error(), "{value}: {diags:?}");
                    assert!(
                        diags[0].message.contains("the hard cap is 1000"),
                        "{value}: {diags:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn bad_rcpt_bounds_and_silent_throttle() {
        // (throttle, delay, shutdown, Some((throttle, delay ms, shutdown, warns)) when
        // clean, None = one error)
        type Row = (
            Option<u64>,
            Option<&'static str>,
            Option<u64>,
            Option<(u32, u64, u32, bool)>,
        );
        let table: &[Row] = &[
            (None, None, None, Some((0, 1000, 0, false))),
            (Some(2), None, Some(4), Some((2, 1000, 4, false))),
            (
                Some(1_000_000),
                Some("60s"),
                Some(1_000_000),
                Some((1_000_000, 60_000, 1_000_000, false)),
            ),
            (Some(2), Some("250ms"), None, Some((2, 250, 0, false))),
            (Some(2), Some("0s"), None, Some((2, 0, 0, true))),
            // The delay is unused with the throttle off: no warning.
            (Some(0), Some("0s"), None, Some((0, 0, 0, false))),
            (None, Some("0s"), Some(3), Some((0, 0, 3, false))),
            (Some(1_000_001), None, None, None),
            (None, None, Some(1_000_001), None),
            (Some(2), Some("61s"), None, None),
            (Some(2), Some("60001ms"), None, None),
            (Some(2), Some("soon"), None, None),
            // An out-of-range throttle falls back to off, so the 0s delay does not warn.
            (Some(1_000_001), Some("0s"), None, None),
        ];
        for &(throttle, delay, shutdown, expected) in table {
            let raw = RawLimits {
                bad_rcpt_throttle: throttle.map(|n| Spanned::new(0..1, n)),
                bad_rcpt_throttle_delay: delay.map(|t| Spanned::new(0..1, t.to_owned())),
                bad_rcpt_shutdown: shutdown.map(|n| Spanned::new(0..1, n)),
                ..RawLimits::default()
            };
            let mut report = Report::new("t", "x\n");
            let got = limits(&raw, &mut report);
            let diags = report.into_sorted();
            let row = (throttle, delay, shutdown);
            match expected {
                Some((t, ms, s, warns)) => {
                    let ms = Duration::from_millis(ms);
                    assert_eq!(
                        (
                            got.bad_rcpt_throttle,
                            got.bad_rcpt_throttle_delay,
                            got.bad_rcpt_shutdown
                        ),
                        (t, ms, s),
                        "{row:?}"
                    );
                    assert_eq!(diags.len(), usize::from(warns), "{row:?}: {diags:?}");
                    assert!(diags.iter().all(|d| !d.is_error()), "{row:?}: {diags:?}");
                    if warns {
                        assert!(
                            diags[0].message.contains("the throttle then only logs"),
                            "{row:?}: {diags:?}"
                        );
                    }
                }
                None => {
                    assert_eq!(diags.len(), 1, "{row:?}: {diags:?}");
                    assert!(diags[0].is_error(), "{row:?}: {diags:?}");
                }
            }
        }
    }

    #[test]
    fn window_bounds() {
        let table: &[(&str, bool)] = &[
            ("6s", true),
            ("5s", false),
            ("5999ms", false),
            ("0s", false),
            ("12s", true),
            ("1h", true),
            ("1h 1s", false),
        ];
        for &(text, ok) in table {
            let mut report = Report::new("t", "x\n");
            let raw = Some(Spanned::new(0..1, text.to_owned()));
            let got = window(&raw, Duration::from_secs(60), &mut report);
            assert_eq!(!report.has_errors(), ok, "{text}");
            if ok {
                assert_eq!(Some(got), humantime::parse_duration(text).ok(), "{text}");
            } else {
                assert_eq!(got, Duration::from_secs(60), "{text}");
            }
        }
    }
}
