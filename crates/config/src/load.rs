//! `[load]`: the load controls.
//!
//! Role: defaults, bounds and warnings for the thresholds at which the server refuses
//! connections, slows commands down or holds delivery (Sendmail's `RefuseLA`, `DelayLA`
//! and `QueueLA`), on three signals: the load average, the sessions in flight (a
//! percentage of `limits.max_sessions`) and the event-loop lag; and for where the load
//! average is read.
//! Must not: read `loadavg_file` (the server does, at run time; a missing file is its
//! concern, not a configuration error), measure anything, or decide anything.
//! Invariants: the load-average thresholds are 0 to 10,000 or `"auto"`, Sendmail's
//! default for the machine's CPUs (12 × CPUs for `refuse_la`, 8 × CPUs for `queue_la`, 0
//! for `delay_la`), which is also what an absent key means; the percentages are 0 to 100
//! and 0 while `limits.max_sessions` is 0 (unlimited: there is nothing to take a
//! percentage of); the lags are 0 s to 60 s; `loadavg_file` is not empty. 0 turns a
//! threshold off. A non-zero lag below 10 ms is allowed with a warning.

use std::time::Duration;

use toml::Spanned;

use crate::diagnostic::Report;
use crate::model::{DEFAULT_LOADAVG_FILE, LoadConfig};
use crate::raw::{RawLa, RawLoad, Text};
use crate::validate::{bounded, duration_within, fmt_duration, path};

/// Above this a load average threshold can never be reached: a typo, not a plan.
const MAX_LA: u64 = 10_000;

/// Longest lag threshold: a loop a minute late has long stopped serving anyone.
const MAX_LAG: Duration = Duration::from_secs(60);

/// Below this, the scheduler's own jitter on a 100 ms tick reaches the threshold.
const NOISY_LAG: Duration = Duration::from_millis(10);

type RawInt = Option<Spanned<u64>>;

/// `max_sessions` is the validated `limits.max_sessions` (0 = unlimited); `cpus` the
/// machine's CPU count, for `"auto"` (a parameter so tests need not depend on the machine).
pub(crate) fn load(
    raw: &RawLoad,
    max_sessions: u32,
    cpus: u32,
    report: &mut Report<'_>,
) -> LoadConfig {
    let d = LoadConfig::sendmail_defaults(cpus);
    LoadConfig {
        refuse_la: la(&raw.refuse_la, "load.refuse_la", d.refuse_la, report),
        delay_la: la(&raw.delay_la, "load.delay_la", d.delay_la, report),
        queue_la: la(&raw.queue_la, "load.queue_la", d.queue_la, report),
        refuse_sessions_pct: pct(
            &raw.refuse_sessions_pct,
            "load.refuse_sessions_pct",
            max_sessions,
            d.refuse_sessions_pct,
            report,
        ),
        delay_sessions_pct: pct(
            &raw.delay_sessions_pct,
            "load.delay_sessions_pct",
            max_sessions,
            d.delay_sessions_pct,
            report,
        ),
        queue_sessions_pct: pct(
            &raw.queue_sessions_pct,
            "load.queue_sessions_pct",
            max_sessions,
            d.queue_sessions_pct,
            report,
        ),
        refuse_lag: lag(&raw.refuse_lag, "load.refuse_lag", d.refuse_lag, report),
        delay_lag: lag(&raw.delay_lag, "load.delay_lag", d.delay_lag, report),
        queue_lag: lag(&raw.queue_lag, "load.queue_lag", d.queue_lag, report),
        loadavg_file: path(
            &raw.loadavg_file,
            "load.loadavg_file",
            DEFAULT_LOADAVG_FILE,
            "a file",
            report,
        ),
    }
}

/// A load-average threshold, 0 (off) to `MAX_LA`, or `"auto"`; `auto` is what `"auto"` and
/// an absent key mean, and stands in after an error.
fn la(raw: &Option<Spanned<RawLa>>, key: &str, auto: u32, report: &mut Report<'_>) -> u32 {
    let Some(value) = raw else {
        return auto;
    };
    match value.get_ref() {
        RawLa::Number(n) => bounded(
            &Some(Spanned::new(value.span(), *n)),
            key,
            0..=MAX_LA,
            auto,
            report,
        ),
        RawLa::Word(word) if word == "auto" => auto,
        RawLa::Word(word) => {
            report.error(
                Some(value.span()),
                format!("`{key}` must be a number or \"auto\", not {word:?}"),
            );
            auto
        }
    }
}

/// A percentage of `max_sessions`, 0 (off) to 100; non-zero needs `max_sessions`.
fn pct(raw: &RawInt, key: &str, max_sessions: u32, default: u8, report: &mut Report<'_>) -> u8 {
    let value = bounded(raw, key, 0..=100, default, report);
    if let Some(v) = raw
        && value != 0
        && max_sessions == 0
    {
        report.error(
            Some(v.span()),
            format!("`{key}` needs `limits.max_sessions` (it is a percentage of it)"),
        );
        return default;
    }
    value
}

/// An event-loop lag threshold, 0 s (off) to `MAX_LAG`; a non-zero value below
/// `NOISY_LAG` warns.
fn lag(raw: &Text, key: &str, default: Duration, report: &mut Report<'_>) -> Duration {
    let value = duration_within(raw, key, Duration::ZERO..=MAX_LAG, default, report);
    if let Some(v) = raw
        && !value.is_zero()
        && value < NOISY_LAG
    {
        report.warning(
            Some(v.span()),
            format!(
                "`{key}` = {} is below {}, scheduling noise alone will trigger it",
                fmt_duration(value),
                fmt_duration(NOISY_LAG)
            ),
        );
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(value: u64) -> RawInt {
        Some(Spanned::new(0..1, value))
    }

    fn text(value: &str) -> Text {
        Some(Spanned::new(0..1, value.to_owned()))
    }

    fn la_value(value: RawLa) -> Option<Spanned<RawLa>> {
        Some(Spanned::new(0..1, value))
    }

    #[test]
    fn la_bounds() {
        // (value, Some(result) or None = error and the "auto" value)
        let table: &[(u64, Option<u32>)] = &[
            (0, Some(0)),
            (1, Some(1)),
            (12, Some(12)),
            (10_000, Some(10_000)),
            (10_001, None),
            (u64::from(u32::MAX) + 1, None),
        ];
        for &(value, expected) in table {
            let mut report = Report::new("t", "x\n");
            let got = la(
                &la_value(RawLa::Number(value)),
                "load.refuse_la",
                7,
                &mut report,
            );
            assert_eq!(got, expected.unwrap_or(7), "{value}");
            assert_eq!(report.has_errors(), expected.is_none(), "{value}");
        }
    }

    #[test]
    fn la_words() {
        // (word, is an error): either way the result is the "auto" value, 7 here.
        let table: &[(&str, bool)] = &[
            ("auto", false),
            ("Auto", true),
            ("AUTO", true),
            (" auto", true),
            ("", true),
            ("12", true),
            ("foo", true),
        ];
        for &(word, is_error) in table {
            let mut report = Report::new("t", "x\n");
            let raw = la_value(RawLa::Word(word.to_owned()));
            let got = la(&raw, "load.queue_la", 7, &mut report);
            assert_eq!(got, 7, "{word:?}");
            let diags = report.into_sorted();
            assert_eq!(diags.len(), usize::from(is_error), "{word:?}");
            if is_error {
                assert_eq!(
                    diags[0].message,
                    format!("`load.queue_la` must be a number or \"auto\", not {word:?}")
                );
            }
        }
        let mut report = Report::new("t", "x\n");
        assert_eq!(la(&None, "load.queue_la", 7, &mut report), 7);
        assert!(report.into_sorted().is_empty());
    }

    #[test]
    fn auto_is_sendmails_default_for_the_cpus() {
        let word = |w: &str| la_value(RawLa::Word(w.to_owned()));
        let raw = RawLoad {
            refuse_la: word("auto"),
            delay_la: word("auto"),
            queue_la: word("auto"),
            ..RawLoad::default()
        };
        let mut report = Report::new("t", "x\n");
        let got = load(&raw, 0, 2, &mut report);
        assert!(report.into_sorted().is_empty());
        assert_eq!((got.refuse_la, got.delay_la, got.queue_la), (24, 0, 16));
        assert_eq!(got, LoadConfig::sendmail_defaults(2));
        let mut report = Report::new("t", "x\n");
        let got = load(&raw, 0, 1, &mut report);
        assert_eq!((got.refuse_la, got.delay_la, got.queue_la), (12, 0, 8));
        // Numbers are kept as written, whatever the CPUs.
        let raw = RawLoad {
            refuse_la: la_value(RawLa::Number(40)),
            delay_la: la_value(RawLa::Number(30)),
            queue_la: la_value(RawLa::Number(0)),
            ..RawLoad::default()
        };
        let got = load(&raw, 0, 64, &mut report);
        assert_eq!((got.refuse_la, got.delay_la, got.queue_la), (40, 30, 0));
        assert!(report.into_sorted().is_empty());
        // No overflow on an absurd count.
        let big = LoadConfig::sendmail_defaults(u32::MAX);
        assert_eq!((big.refuse_la, big.queue_la), (u32::MAX, u32::MAX));
    }

    #[test]
    fn pct_bounds_and_max_sessions() {
        // (value, max_sessions, Some(result) or None = error and default)
        let table: &[(u64, u32, Option<u8>)] = &[
            (0, 0, Some(0)),
            (0, 100, Some(0)),
            (1, 100, Some(1)),
            (100, 100, Some(100)),
            (100, 1, Some(100)),
            (101, 100, None),
            (u64::MAX, 100, None),
            (1, 0, None),
            (100, 0, None),
        ];
        for &(value, max_sessions, expected) in table {
            let mut report = Report::new("t", "x\n");
            let got = pct(
                &int(value),
                "load.queue_sessions_pct",
                max_sessions,
                0,
                &mut report,
            );
            assert_eq!(got, expected.unwrap_or(0), "{value} of {max_sessions}");
            let diags = report.into_sorted();
            assert_eq!(
                diags.len(),
                usize::from(expected.is_none()),
                "{value} of {max_sessions}: {diags:?}"
            );
            assert!(diags.iter().all(|d| d.is_error()), "{diags:?}");
        }
        // Only the range error when both apply: one problem, one message.
        let mut report = Report::new("t", "x\n");
        pct(&int(101), "load.delay_sessions_pct", 0, 0, &mut report);
        let diags = report.into_sorted();
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert_eq!(
            diags[0].message,
            "`load.delay_sessions_pct` must be between 0 and 100, not 101"
        );
        let mut report = Report::new("t", "x\n");
        pct(&int(50), "load.refuse_sessions_pct", 0, 0, &mut report);
        let diags = report.into_sorted();
        assert_eq!(
            diags[0].message,
            "`load.refuse_sessions_pct` needs `limits.max_sessions` (it is a percentage of it)"
        );
    }

    #[test]
    fn lag_bounds_and_noise_warning() {
        // (value, Some(warns) when valid, None = error and default)
        let table: &[(&str, Option<bool>)] = &[
            ("0s", Some(false)),
            ("1ms", Some(true)),
            ("9ms", Some(true)),
            ("9999us", Some(true)),
            ("10ms", Some(false)),
            ("250ms", Some(false)),
            ("60s", Some(false)),
            ("1m", Some(false)),
            ("60001ms", None),
            ("2m", None),
            ("fast", None),
        ];
        for &(value, expected) in table {
            let mut report = Report::new("t", "x\n");
            let got = lag(&text(value), "load.delay_lag", Duration::ZERO, &mut report);
            let diags = report.into_sorted();
            match expected {
                Some(warns) => {
                    assert_eq!(Some(got), humantime::parse_duration(value).ok(), "{value}");
                    assert_eq!(diags.len(), usize::from(warns), "{value}: {diags:?}");
                    assert!(diags.iter().all(|d| !d.is_error()), "{value}: {diags:?}");
                }
                None => {
                    assert_eq!(got, Duration::ZERO, "{value}");
                    assert_eq!(diags.len(), 1, "{value}: {diags:?}");
                    assert!(diags[0].is_error(), "{value}: {diags:?}");
                }
            }
        }
    }

    #[test]
    fn absent_keys_take_the_defaults() {
        let mut report = Report::new("t", "");
        let got = load(&RawLoad::default(), 0, 2, &mut report);
        assert_eq!(got, LoadConfig::sendmail_defaults(2));
        assert_eq!((got.refuse_la, got.delay_la, got.queue_la), (24, 0, 16));
        assert!(report.into_sorted().is_empty());
    }
}
