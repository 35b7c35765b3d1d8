//! `[timeouts]`: parse the per-phase timeouts and warn about risky values.
//!
//! Role: humantime strings → `Timeouts`, with RFC 5321 §4.5.3.2 as the yardstick. Values
//! below the RFC minimum are allowed (operators tighten them against slow-drip attacks;
//! the seeds use 1m) but earn a warning, because a legitimate slow client may be cut off.
//! Must not: apply the `command` cap here; the stored values are what the operator wrote,
//! and `Timeouts::effective` applies the cap where a timer is armed.
//! Invariants: every timeout is non-zero (a zero timer would close every session at once).
//! A "longer than command" warning is given only for phases written in the file: a
//! defaulted phase capped by a short `command` is exactly what `command` is for.

use std::time::Duration;

use crate::diagnostic::Report;
use crate::model::{DEFAULT_TIMEOUTS, Phase, Timeouts};
use crate::raw::{RawTimeouts, Text};
use crate::validate::{fmt_duration, nonzero_duration};

/// One `[timeouts]` key: its name, raw value, RFC 5321 §4.5.3.2 minimum (None where the RFC
/// gives none) and the phase it times, if `command` caps it.
struct Key<'a> {
    name: &'static str,
    raw: &'a Text,
    rfc_minimum: Option<Duration>,
    capped_phase: Option<Phase>,
}

pub(crate) fn timeouts(raw: &RawTimeouts, report: &mut Report<'_>) -> Timeouts {
    let d = DEFAULT_TIMEOUTS;
    let mut t = d;
    // Each row: the key, where its value goes, and its default.
    let rows: [(Key<'_>, &mut Duration, Duration); 12] = [
        (
            key("initial", &raw.initial, 5, Some(Phase::Initial)),
            &mut t.initial,
            d.initial,
        ),
        (
            key("helo", &raw.helo, 5, Some(Phase::Helo)),
            &mut t.helo,
            d.helo,
        ),
        (
            key("mail", &raw.mail, 5, Some(Phase::Mail)),
            &mut t.mail,
            d.mail,
        ),
        (
            key("rcpt", &raw.rcpt, 5, Some(Phase::Rcpt)),
            &mut t.rcpt,
            d.rcpt,
        ),
        (
            key("datainit", &raw.datainit, 2, None),
            &mut t.datainit,
            d.datainit,
        ),
        (
            key("datablock", &raw.datablock, 3, None),
            &mut t.datablock,
            d.datablock,
        ),
        (
            key("datafinal", &raw.datafinal, 10, None),
            &mut t.datafinal,
            d.datafinal,
        ),
        (
            key("rset", &raw.rset, 5, Some(Phase::Rset)),
            &mut t.rset,
            d.rset,
        ),
        (key("quit", &raw.quit, 0, None), &mut t.quit, d.quit),
        (
            key("misc", &raw.misc, 0, Some(Phase::Misc)),
            &mut t.misc,
            d.misc,
        ),
        (
            key("command", &raw.command, 5, None),
            &mut t.command,
            d.command,
        ),
        // The TLS handshake: not a command read, and RFC 5321 gives it no minimum.
        (
            key("starttls", &raw.starttls, 0, None),
            &mut t.starttls,
            d.starttls,
        ),
    ];
    let mut capped = Vec::new();
    for (key, slot, default) in rows {
        *slot = parse_one(&key, default, report);
        if let (Some(phase), Some(value)) = (key.capped_phase, key.raw) {
            capped.push((key.name, phase, value.span()));
        }
    }
    for (name, phase, span) in capped {
        warn_if_capped(&t, name, phase, span, report);
    }
    t
}

/// `rfc_minutes` = 0: the RFC gives no minimum for this key.
fn key<'a>(name: &'static str, raw: &'a Text, rfc_minutes: u64, phase: Option<Phase>) -> Key<'a> {
    Key {
        name,
        raw,
        rfc_minimum: (rfc_minutes > 0).then(|| Duration::from_secs(rfc_minutes * 60)),
        capped_phase: phase,
    }
}

fn parse_one(key: &Key<'_>, default: Duration, report: &mut Report<'_>) -> Duration {
    let full_name = format!("timeouts.{}", key.name);
    let value = nonzero_duration(key.raw, &full_name, default, report);
    if let (Some(minimum), Some(raw)) = (key.rfc_minimum, key.raw)
        && value < minimum
    {
        report.warning(
            Some(raw.span()),
            format!(
                "`{full_name}` = {} is shorter than the RFC 5321 minimum of {} \
                 (§4.5.3.2); allowed, but slow legitimate clients may be cut off",
                fmt_duration(value),
                fmt_duration(minimum)
            ),
        );
    }
    value
}

fn warn_if_capped(
    t: &Timeouts,
    name: &str,
    phase: Phase,
    span: std::ops::Range<usize>,
    report: &mut Report<'_>,
) {
    let own = t.phase(phase);
    if own > t.command {
        report.warning(
            Some(span),
            format!(
                "`timeouts.{name}` = {} is longer than `timeouts.command` = {}; \
                 the command timeout caps it, so {} applies",
                fmt_duration(own),
                fmt_duration(t.command),
                fmt_duration(t.command)
            ),
        );
    }
}
