//! `[rate_control]`, `[conn_control]` and `[limits]`: the sections of admission control.
//!
//! Role: defaults, bounds and warnings for the per-client connection rate (Sendmail's
//! `FEATURE(ratecontrol)`) and concurrency (`FEATURE(conncontrol)`), for how clients are
//! grouped into counters (address prefixes), and for the server-wide limits
//! (`ConnectionRateThrottle`, `MaxDaemonChildren`).
//! Must not: read the per-client limits: they are `ClientRate:` and `ClientConn:` entries
//! of the access map, which the server loads; nor count or decide anything (that is
//! portcullis-policy).
//! Invariants: `rate_control.window` is 6 s to 1 h, so a bucket (window / 6) is 1 s to
//! 10 min; `client_ipv4_prefix` ≤ 32 and `client_ipv6_prefix` ≤ 128; `max_tracked_clients`
//! is 1 to 10,000,000. A prefix of 0 is allowed with a warning.

use std::ops::RangeInclusive;
use std::time::Duration;

use toml::Spanned;

use crate::defences::action;
use crate::diagnostic::Report;
use crate::model::{ConnControlConfig, LimitsConfig, MaxSessionsAction, RateControlConfig};
use crate::raw::{RawConnControl, RawLimits, RawMaxSessionsAction, RawRateControl, Text};
use crate::validate::{duration, fmt_duration};

/// Sendmail's CHTSIZE: the rate window is counted in this many clock-aligned buckets.
const RATE_BUCKETS: u32 = 6;

/// Shortest window: one second per bucket (Sendmail counts in whole seconds).
const MIN_WINDOW: Duration = Duration::from_secs(6);

/// Longest window: every client seen in it stays in the counter table that long.
const MAX_WINDOW: Duration = Duration::from_secs(60 * 60);

/// Above this many tracked clients the table costs more memory than it can be worth.
const MAX_TRACKED_CLIENTS: u64 = 10_000_000;

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
    };
    warn_few_sessions(&raw.max_sessions, report);
    limits
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

/// An integer that must lie in `range`; outside it is an error at the value, and the
/// default stands in. `range` must fit `T`, so the conversion cannot fail.
fn bounded<T: TryFrom<u64> + Copy>(
    raw: &RawInt,
    key: &str,
    range: RangeInclusive<u64>,
    default: T,
    report: &mut Report<'_>,
) -> T {
    let Some(v) = raw else {
        return default;
    };
    let n = *v.get_ref();
    if !range.contains(&n) {
        report.error(
            Some(v.span()),
            format!(
                "`{key}` must be between {} and {}, not {n}",
                range.start(),
                range.end()
            ),
        );
        return default;
    }
    T::try_from(n).unwrap_or(default)
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

    fn int(value: u64) -> RawInt {
        Some(Spanned::new(0..1, value))
    }

    #[test]
    fn bounded_table() {
        // (value, range, Some(result) or None = error and default)
        let table: &[(u64, RangeInclusive<u64>, Option<u8>)] = &[
            (0, 0..=32, Some(0)),
            (32, 0..=32, Some(32)),
            (33, 0..=32, None),
            (0, 1..=5, None),
            (128, 0..=128, Some(128)),
            (u64::MAX, 0..=128, None),
        ];
        for (value, range, expected) in table {
            let mut report = Report::new("t", "x\n");
            let got: u8 = bounded(&int(*value), "k", range.clone(), 7, &mut report);
            assert_eq!(got, expected.unwrap_or(7), "{value}");
            assert_eq!(report.has_errors(), expected.is_none(), "{value}");
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
