//! The one place that reads clocks (clippy.toml forbids it everywhere else).
//!
//! Role: hand the rest of the program `now` as a value, so the sans-IO session and policy
//! take time as an argument and tests can control it.
//!
//! The monotonic clock is tokio's, converted to `std::time::Instant`: under
//! `#[tokio::test(start_paused = true)]` it is the paused virtual clock, so driver tests over
//! `tokio::io::duplex` see timeouts fire at exactly the virtual instant (design.md §3.5).
//! Wall time is only for dates shown to people (greeting, Received:, logs) and for spool
//! timestamps, never for deadlines.

use std::time::Instant;

/// Monotonic now (virtual under paused tokio time).
#[allow(clippy::disallowed_methods)]
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Wall-clock now.
#[allow(clippy::disallowed_methods)]
pub fn wall() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

/// Wall-clock seconds since the Unix epoch.
pub fn unix_secs() -> i64 {
    wall().as_second()
}

/// Seconds since the Unix epoch on the monotonic clock: the wall time read once, advanced by
/// [`now`]. For counters aligned to epoch seconds (Sendmail's rate buckets): they follow
/// paused tokio time in tests, and a wall-clock step does not disturb them.
pub fn epoch_secs() -> u64 {
    static BASE: std::sync::OnceLock<(u64, Instant)> = std::sync::OnceLock::new();
    let (secs, at) = *BASE.get_or_init(|| (u64::try_from(unix_secs()).unwrap_or(0), now()));
    secs + now().saturating_duration_since(at).as_secs()
}

/// RFC 5322 date, as in the greeting and Received: (`Sat, 21 Nov 2026 11:46:10 +0000`).
pub fn rfc5322(t: jiff::Timestamp) -> String {
    t.strftime("%a, %d %b %Y %H:%M:%S +0000").to_string()
}

/// RFC 3339 with microseconds, the log timestamp (`2026-11-21T11:46:16.865807+00:00`).
pub fn rfc3339(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
}

/// Sendmail's `delay=` format: `HH:MM:SS`, with `D+` in front past a day.
pub fn sendmail_delay(secs: i64) -> String {
    let secs = secs.max(0);
    let (d, rest) = (secs / 86_400, secs % 86_400);
    let hms = format!(
        "{:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    );
    if d > 0 { format!("{d}+{hms}") } else { hms }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let t: jiff::Timestamp = "2026-11-21T11:46:10.123456Z".parse().unwrap();
        assert_eq!(rfc5322(t), "Sat, 21 Nov 2026 11:46:10 +0000");
        assert_eq!(rfc3339(t), "2026-11-21T11:46:10.123456+00:00");
        assert_eq!(sendmail_delay(3661), "01:01:01");
        assert_eq!(sendmail_delay(86_400 * 2 + 5), "2+00:00:05");
        assert_eq!(sendmail_delay(-4), "00:00:00");
    }
}
