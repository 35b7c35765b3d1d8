//! RawConfig → Config: defaults, bounds and meanings, with a diagnostic per problem.
//!
//! Role: turn each raw section into its validated form, reporting every semantic error
//! and warning at the line of the value concerned. A bad value is reported and replaced by
//! its default so checking goes on; the loader then refuses the whole config because the
//! report holds an error, so a replaced value never reaches the server.
//! Must not: stop at the first error; reach the network; read any file other than the
//! `users_file` the config names (see `local`).
//! Invariants: every key is spelled in messages as its dotted path in backquotes
//! (`server.listen`), the same spelling docs/config.md uses.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use crate::defences::action;
use crate::diagnostic::Report;
use crate::model::{
    BareLf, Config, DEFAULT_LISTEN, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_SHUTDOWN_GRACE,
    DEFAULT_SPOOL_DIR, DelayChecks, LogConfig, LogDestination, LogFormat, MetricsConfig,
    QueueConfig, ServerConfig, SmtpConfig, SummaryConfig,
};
use crate::names::check_hostname;
use crate::raw::{
    RawBareLf, RawConfig, RawDelayChecks, RawLog, RawLogDestination, RawLogFormat, RawMetrics,
    RawQueue, RawServer, RawSmtp, Text, TextList,
};
use crate::{admission, defences, load, local, relay, timeouts, tls};

/// Where the machine's host name comes from; a parameter so tests need not depend on the
/// name of the machine they run on.
pub(crate) type HostnameSource<'a> = &'a dyn Fn() -> Result<String, String>;

/// Below this, ordinary mail (headers plus a small attachment) no longer fits.
const SMALL_MESSAGE_BYTES: u64 = 64 * 1024;

/// `cpus` is the machine's CPU count, for `[load]`'s `"auto"`; like `system_hostname`, a
/// parameter so tests need not depend on the machine they run on.
pub(crate) fn config(
    raw: RawConfig,
    report: &mut Report<'_>,
    system_hostname: HostnameSource<'_>,
    cpus: u32,
) -> Config {
    // `[load]`'s session percentages are of the validated `limits.max_sessions`.
    let limits = admission::limits(&raw.limits, report);
    let local = local::local(&raw.local, report);
    let routes = relay::routes(&raw.route, &local.domains, report);
    let server = server(&raw.server, report, system_hostname);
    let metrics = metrics(&raw.metrics, &server.listen, report);
    Config {
        origin: report.file().to_owned(),
        server,
        smtp: smtp(&raw.smtp, report),
        local,
        timeouts: timeouts::timeouts(&raw.timeouts, report),
        queue: queue(&raw.queue, report),
        log: log(&raw.log, report),
        greet_pause: defences::greet_pause(&raw.greet_pause, report),
        access: defences::access(&raw.access, report),
        dns: defences::dns(&raw.dns, report),
        rate_control: admission::rate_control(&raw.rate_control, report),
        conn_control: admission::conn_control(&raw.conn_control),
        limits,
        load: load::load(&raw.load, limits.max_sessions, cpus, report),
        relay: relay::relay(&raw.relay, report),
        routes,
        metrics,
        tls: tls::tls(&raw.tls, report),
    }
}

/// `[metrics] listen`: one address, like `server.listen`'s, and not one the SMTP listeners
/// take (the same address, or a wildcard of the same family on the same port: the second
/// bind fails at start). The endpoint has no authentication, so an address other machines
/// can reach gets a warning.
fn metrics(raw: &RawMetrics, smtp: &[SocketAddr], report: &mut Report<'_>) -> MetricsConfig {
    let Some(text) = &raw.listen else {
        return MetricsConfig::default();
    };
    let span = Some(text.span());
    let Ok(addr) = text.get_ref().parse::<SocketAddr>() else {
        report.error(
            span,
            format!(
                "`metrics.listen`: {:?} is not an IP address with a port \
                 (e.g. \"127.0.0.1:9525\"; host names are not resolved)",
                text.get_ref()
            ),
        );
        return MetricsConfig::default();
    };
    let overlaps = |other: &SocketAddr| {
        other.port() == addr.port()
            && other.is_ipv4() == addr.is_ipv4()
            && (other.ip() == addr.ip()
                || other.ip().is_unspecified()
                || addr.ip().is_unspecified())
    };
    if let Some(taken) = smtp.iter().find(|a| overlaps(a)) {
        report.error(
            span,
            format!(
                "`metrics.listen` {addr} is also in `server.listen` ({taken}): the server \
                 could not bind both; give /metrics a port of its own"
            ),
        );
        return MetricsConfig::default();
    }
    if !addr.ip().is_loopback() {
        report.warning(
            span,
            format!(
                "`metrics.listen` {addr} is not a loopback address; /metrics has no \
                 authentication, so whoever reaches it sees the server's counters"
            ),
        );
    }
    MetricsConfig { listen: Some(addr) }
}

fn server(
    raw: &RawServer,
    report: &mut Report<'_>,
    system_hostname: HostnameSource<'_>,
) -> ServerConfig {
    ServerConfig {
        hostname: hostname(&raw.hostname, report, system_hostname),
        listen: listen(&raw.listen, report),
        spool_dir: path(
            &raw.spool_dir,
            "server.spool_dir",
            DEFAULT_SPOOL_DIR,
            "a directory",
            report,
        ),
        max_message_bytes: max_message_bytes(&raw.max_message_bytes, report),
        shutdown_grace: duration(
            &raw.shutdown_grace,
            "server.shutdown_grace",
            DEFAULT_SHUTDOWN_GRACE,
            report,
        ),
    }
}

/// The configured name, else the machine's. Either way it must be a valid host name,
/// because it goes into the banner, the EHLO reply and Received headers.
fn hostname(raw: &Text, report: &mut Report<'_>, system: HostnameSource<'_>) -> String {
    if let Some(name) = raw {
        let span = Some(name.span());
        let name = name.get_ref();
        match check_hostname(name) {
            Err(why) => report.error(span, format!("`server.hostname` {name:?} {why}")),
            Ok(()) if !name.contains('.') => report.warning(span, not_fqdn(name, "")),
            Ok(()) => {}
        }
        return name.clone();
    }
    let unset = "`server.hostname` is not set and the machine's host name";
    let name = match system() {
        Ok(name) => name,
        Err(why) => {
            // The load fails on this error, so the empty name is never used.
            report.error(None, format!("{unset} cannot be read: {why}; set it"));
            return String::new();
        }
    };
    match check_hostname(&name) {
        Err(why) => report.error(None, format!("{unset} {name:?} {why}; set it")),
        Ok(()) if !name.contains('.') => {
            report.warning(None, not_fqdn(&name, " (the machine's host name)"));
        }
        Ok(()) => {}
    }
    name
}

fn not_fqdn(name: &str, origin: &str) -> String {
    format!(
        "`server.hostname` {name:?}{origin} is not fully qualified (no dot); \
         RFC 5321 §4.1.1.1 expects a fully qualified domain name in the banner and EHLO reply"
    )
}

/// The machine's host name, as `nix::unistd::gethostname` gives it.
pub(crate) fn machine_hostname() -> Result<String, String> {
    let name = nix::unistd::gethostname().map_err(|e| e.to_string())?;
    name.into_string()
        .map_err(|raw| format!("{raw:?} is not valid UTF-8"))
}

fn listen(raw: &TextList, report: &mut Report<'_>) -> Vec<SocketAddr> {
    let Some(list) = raw else {
        return vec![DEFAULT_LISTEN];
    };
    if list.get_ref().is_empty() {
        report.error(
            Some(list.span()),
            "`server.listen` is empty; give at least one address:port".to_owned(),
        );
    }
    let mut addrs = Vec::new();
    for item in list.get_ref() {
        match item.get_ref().parse::<SocketAddr>() {
            Err(_) => report.error(Some(item.span()), bad_listen(item.get_ref())),
            Ok(addr) if addrs.contains(&addr) => report.error(
                Some(item.span()),
                format!("`server.listen`: {addr} is listed twice"),
            ),
            Ok(addr) => addrs.push(addr),
        }
    }
    addrs
}

fn bad_listen(text: &str) -> String {
    format!(
        "`server.listen`: {text:?} is not an IP address with a port \
         (e.g. \"127.0.0.1:25\" or \"[::1]:25\"; host names are not resolved)"
    )
}

fn max_message_bytes(raw: &Option<Spanned<u64>>, report: &mut Report<'_>) -> u64 {
    let Some(value) = raw else {
        return DEFAULT_MAX_MESSAGE_BYTES;
    };
    let (span, bytes) = (Some(value.span()), *value.get_ref());
    if bytes == 0 {
        report.error(
            span,
            "`server.max_message_bytes` must be greater than 0".to_owned(),
        );
        return DEFAULT_MAX_MESSAGE_BYTES;
    }
    if bytes < SMALL_MESSAGE_BYTES {
        report.warning(
            span,
            format!(
                "`server.max_message_bytes` = {bytes} is below 64 KiB; \
                 most ordinary messages will be refused with 552"
            ),
        );
    }
    bytes
}

fn smtp(raw: &RawSmtp, report: &mut Report<'_>) -> SmtpConfig {
    let d = SmtpConfig::default();
    let bare_lf = match raw.bare_lf.as_ref().map(|v| *v.get_ref()) {
        None => d.bare_lf,
        Some(RawBareLf::Reject) => BareLf::Reject,
        Some(RawBareLf::Normalize) => BareLf::Normalize,
    };
    SmtpConfig {
        bare_lf,
        pipelining: raw
            .pipelining
            .as_ref()
            .map_or(d.pipelining, |v| *v.get_ref()),
        pipelining_action: action(raw.pipelining_action.as_ref()),
        stuffing_action: action(raw.stuffing_action.as_ref()),
        open_proxy_action: action(raw.open_proxy_action.as_ref()),
        delay_checks: delay_checks(raw.delay_checks.as_ref(), d.delay_checks, report),
    }
}

/// `smtp.delay_checks`: false, or true / `"friend"` / `"hater"` as Sendmail's
/// `FEATURE(delay_checks)` and its argument. Any other word is an error at the value.
fn delay_checks(
    raw: Option<&Spanned<RawDelayChecks>>,
    default: DelayChecks,
    report: &mut Report<'_>,
) -> DelayChecks {
    let Some(v) = raw else {
        return default;
    };
    match v.get_ref() {
        RawDelayChecks::Flag(false) => DelayChecks::Off,
        RawDelayChecks::Flag(true) => DelayChecks::Friend,
        RawDelayChecks::Word(w) if w == "friend" => DelayChecks::Friend,
        RawDelayChecks::Word(w) if w == "hater" => DelayChecks::Hater,
        RawDelayChecks::Word(w) => {
            report.error(
                Some(v.span()),
                format!(
                    "`smtp.delay_checks` must be true, false, \"friend\" or \"hater\", \
                     not {w:?}"
                ),
            );
            default
        }
    }
}

fn queue(raw: &RawQueue, report: &mut Report<'_>) -> QueueConfig {
    let default = QueueConfig::default();
    let queue = QueueConfig {
        retry_min: nonzero_duration(&raw.retry_min, "queue.retry_min", default.retry_min, report),
        retry_max: nonzero_duration(&raw.retry_max, "queue.retry_max", default.retry_max, report),
        lifetime: nonzero_duration(&raw.lifetime, "queue.lifetime", default.lifetime, report),
        connections_per_hop: bounded(
            &raw.connections_per_hop,
            "queue.connections_per_hop",
            1..=1000,
            default.connections_per_hop,
            report,
        ),
        max_connections: bounded(
            &raw.max_connections,
            "queue.max_connections",
            1..=10_000,
            default.max_connections,
            report,
        ),
    };
    if queue.retry_min > queue.retry_max {
        let span = raw
            .retry_min
            .as_ref()
            .or(raw.retry_max.as_ref())
            .map(Spanned::span);
        report.warning(
            span,
            format!(
                "`queue.retry_min` = {} is longer than `queue.retry_max` = {}; \
                 every retry will wait `queue.retry_max`",
                fmt_duration(queue.retry_min),
                fmt_duration(queue.retry_max)
            ),
        );
    }
    queue
}

fn log(raw: &RawLog, report: &mut Report<'_>) -> LogConfig {
    let format = match raw.format.as_ref().map(|v| *v.get_ref()) {
        None => LogFormat::default(),
        Some(RawLogFormat::Syslog) => LogFormat::Syslog,
        Some(RawLogFormat::Json) => LogFormat::Json,
    };
    let destination = match raw.destination.as_ref().map(|v| *v.get_ref()) {
        None => LogDestination::default(),
        Some(RawLogDestination::Stderr) => LogDestination::Stderr,
        Some(RawLogDestination::Syslog) => LogDestination::Syslog,
    };
    LogConfig {
        format,
        destination,
        summaries: summaries(raw, report),
    }
}

/// Longest `log.summary_interval`: a day (Sendmail's `RejectLogInterval` defaults to 3 h).
const MAX_SUMMARY_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

/// `log.summary_*`. The interval is 0 (off) or 1 s to a day: below a second the summary
/// lines would themselves be a flood, and the summary line counts whole seconds.
fn summaries(raw: &RawLog, report: &mut Report<'_>) -> SummaryConfig {
    let d = SummaryConfig::default();
    let key = "log.summary_interval";
    let mut interval = duration_within(
        &raw.summary_interval,
        key,
        Duration::ZERO..=MAX_SUMMARY_INTERVAL,
        d.interval,
        report,
    );
    if !interval.is_zero() && interval < Duration::from_secs(1) {
        report.error(
            raw.summary_interval.as_ref().map(Spanned::span),
            format!(
                "`{key}` = {} is too short: give \"0s\" (off) or at least 1s",
                fmt_duration(interval)
            ),
        );
        interval = d.interval;
    }
    SummaryConfig {
        interval,
        after: bounded(
            &raw.summary_after,
            "log.summary_after",
            0..=10_000,
            d.after,
            report,
        ),
        top: bounded(&raw.summary_top, "log.summary_top", 0..=50, d.top, report),
    }
}

/// A path value, naming `what` ("a directory", "a file"); relative paths stay relative
/// (to the working directory, at use).
pub(crate) fn path(
    raw: &Text,
    key: &str,
    default: &str,
    what: &str,
    report: &mut Report<'_>,
) -> PathBuf {
    match raw {
        None => PathBuf::from(default),
        Some(value) if value.get_ref().is_empty() => {
            report.error(Some(value.span()), format!("`{key}` is empty; give {what}"));
            PathBuf::from(default)
        }
        Some(value) => PathBuf::from(value.get_ref()),
    }
}

/// A humantime duration ("30s", "5m", "1h 30m"); zero allowed.
pub(crate) fn duration(
    raw: &Text,
    key: &str,
    default: Duration,
    report: &mut Report<'_>,
) -> Duration {
    let Some(value) = raw else {
        return default;
    };
    match humantime::parse_duration(value.get_ref()) {
        Ok(parsed) => parsed,
        Err(why) => {
            report.error(
                Some(value.span()),
                format!(
                    "`{key}`: {:?} is not a duration ({why}); write e.g. \"30s\", \"5m\", \"1h\"",
                    value.get_ref()
                ),
            );
            default
        }
    }
}

/// A duration that must be greater than zero (a zero timeout or retry delay would spin).
pub(crate) fn nonzero_duration(
    raw: &Text,
    key: &str,
    default: Duration,
    report: &mut Report<'_>,
) -> Duration {
    let parsed = duration(raw, key, default, report);
    if parsed.is_zero() {
        let span = raw.as_ref().map(Spanned::span);
        report.error(span, format!("`{key}` must be greater than zero"));
        return default;
    }
    parsed
}

/// A duration that must lie in `range`; outside it is an error at the value naming the
/// range, and the default stands in.
pub(crate) fn duration_within(
    raw: &Text,
    key: &str,
    range: RangeInclusive<Duration>,
    default: Duration,
    report: &mut Report<'_>,
) -> Duration {
    let value = duration(raw, key, default, report);
    if range.contains(&value) {
        return value;
    }
    report.error(
        raw.as_ref().map(Spanned::span),
        format!(
            "`{key}` = {} is out of range: it must be between {} and {}",
            fmt_duration(value),
            fmt_duration(*range.start()),
            fmt_duration(*range.end())
        ),
    );
    default
}

/// An integer that must lie in `range`; outside it is an error at the value, and the
/// default stands in. `range` must fit `T`, so the conversion cannot fail.
pub(crate) fn bounded<T: TryFrom<u64> + Copy>(
    raw: &Option<Spanned<u64>>,
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

pub(crate) fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(start: usize, value: &str) -> Text {
        Some(Spanned::new(start..start + value.len(), value.to_owned()))
    }

    #[test]
    fn duration_table() {
        let src = "x = \"5m\"\n";
        let table: &[(&str, Option<u64>)] = &[
            ("5m", Some(300)),
            ("30s", Some(30)),
            ("1h", Some(3600)),
            ("1h 30m", Some(5400)),
            ("5d", Some(432_000)),
            ("0", Some(0)),
            ("5", None),
            ("five minutes", None),
            ("", None),
            ("-1s", None),
        ];
        for &(value, expected) in table {
            let mut report = Report::new("t", src);
            let got = duration(&text(4, value), "k", Duration::from_secs(7), &mut report);
            match expected {
                Some(secs) => {
                    assert_eq!(got, Duration::from_secs(secs), "{value:?}");
                    assert!(!report.has_errors(), "{value:?}");
                }
                None => {
                    assert_eq!(got, Duration::from_secs(7), "{value:?}");
                    assert!(report.has_errors(), "{value:?}");
                }
            }
        }
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
            let raw = Some(Spanned::new(0..1, *value));
            let got: u8 = bounded(&raw, "k", range.clone(), 7, &mut report);
            assert_eq!(got, expected.unwrap_or(7), "{value}");
            assert_eq!(report.has_errors(), expected.is_none(), "{value}");
        }
    }

    #[test]
    fn duration_within_table() {
        let src = "x = \"5m\"\n";
        let range = Duration::ZERO..=Duration::from_secs(60);
        // (value, Some(seconds) or None = error and default)
        let table: &[(&str, Option<u64>)] = &[
            ("0s", Some(0)),
            ("60s", Some(60)),
            ("1m", Some(60)),
            ("61s", None),
            ("60001ms", None),
            ("later", None),
        ];
        for &(value, expected) in table {
            let mut report = Report::new("t", src);
            let got = duration_within(
                &text(4, value),
                "k",
                range.clone(),
                Duration::from_secs(7),
                &mut report,
            );
            assert_eq!(got, Duration::from_secs(expected.unwrap_or(7)), "{value:?}");
            assert_eq!(report.has_errors(), expected.is_none(), "{value:?}");
        }
        let mut report = Report::new("t", src);
        duration_within(&text(4, "2m"), "k", range, Duration::ZERO, &mut report);
        let diags = report.into_sorted();
        assert_eq!(diags.len(), 1);
        assert_eq!(diags[0].line, 1);
        assert_eq!(
            diags[0].message,
            "`k` = 2m is out of range: it must be between 0s and 1m"
        );
    }

    #[test]
    fn nonzero_duration_rejects_zero() {
        let mut report = Report::new("t", "x = \"0s\"\n");
        let got = nonzero_duration(&text(4, "0s"), "k", Duration::from_secs(9), &mut report);
        assert_eq!(got, Duration::from_secs(9));
        let diags = report.into_sorted();
        assert_eq!(diags.len(), 1);
        assert_eq!(diags[0].line, 1);
        assert_eq!(diags[0].message, "`k` must be greater than zero");
    }

    #[test]
    fn system_hostname_is_checked_too() {
        let table: &[(Result<&str, &str>, Option<bool>)] = &[
            // (what the machine says, None = clean, Some(is_error))
            (Ok("mx.example.test"), None),
            (Ok("vm"), Some(false)),
            (Ok("bad_name"), Some(true)),
            (Err("EPERM"), Some(true)),
        ];
        for &(system, expected) in table {
            let source = move || system.map(str::to_owned).map_err(str::to_owned);
            let mut report = Report::new("t", "");
            let name = hostname(&None, &mut report, &source);
            let diags = report.into_sorted();
            match expected {
                None => assert!(diags.is_empty(), "{system:?}: {diags:?}"),
                Some(is_error) => {
                    assert_eq!(diags.len(), 1, "{system:?}: {diags:?}");
                    assert_eq!(diags[0].is_error(), is_error, "{system:?}: {diags:?}");
                    assert_eq!(diags[0].line, 0);
                }
            }
            if let Ok(system) = system {
                assert_eq!(name, system);
            }
        }
    }

    #[test]
    fn machine_hostname_reads_something() {
        let name = machine_hostname().unwrap();
        assert!(!name.is_empty());
    }
}
