//! `[greet_pause]`, `[access]` and `[dns]`: the sections of the front-line defences.
//!
//! Role: defaults, bounds and warnings for the greeting pause (Sendmail's
//! `FEATURE(greet_pause, ms)`), the access map's location and action, and the client name
//! lookup; and `action`, the reading of every defence's `enforce | drop | ignore`.
//! Must not: read the access file: the server loads it (it must also re-load it on change),
//! and `portcullis check-config` reports its problems at file:line next to these.
//! Invariants: `greet_pause.default` is at most 300 s (Sendmail's clamp, RFC 5321
//! §4.5.3.2), `pass_cache_max` ≥ 1, `dns.timeout` > 0.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use crate::diagnostic::Report;
use crate::model::{AccessConfig, Action, DnsConfig, GreetPauseConfig};
use crate::raw::{RawAccess, RawAction, RawDns, RawGreetPause};
use crate::validate::{duration, fmt_duration, nonzero_duration};

/// Sendmail clamps longer pauses to this.
const MAX_PAUSE: Duration = portcullis_smtp::pregreet::MAX_PAUSE;

/// Above this many remembered clients the cache costs more than it saves (about 64 bytes
/// each): 10 million is 640 MB.
const MAX_PASS_CACHE: u64 = 10_000_000;

pub(crate) fn action(raw: Option<&Spanned<RawAction>>) -> Action {
    match raw.map(|v| *v.get_ref()) {
        None => Action::default(),
        Some(RawAction::Enforce) => Action::Enforce,
        Some(RawAction::Drop) => Action::Drop,
        Some(RawAction::Ignore) => Action::Ignore,
    }
}

pub(crate) fn greet_pause(raw: &RawGreetPause, report: &mut Report<'_>) -> GreetPauseConfig {
    let d = GreetPauseConfig::default();
    let mut default = duration(&raw.default, "greet_pause.default", d.default, report);
    if default > MAX_PAUSE {
        report.warning(
            raw.default.as_ref().map(Spanned::span),
            format!(
                "`greet_pause.default` = {} is longer than 5 minutes; clamped to 300s as \
                 Sendmail does (RFC 5321 §4.5.3.2: clients wait 5 minutes for the greeting)",
                fmt_duration(default)
            ),
        );
        default = MAX_PAUSE;
    }
    let pass_cache_max = match &raw.pass_cache_max {
        None => d.pass_cache_max,
        Some(v) if *v.get_ref() == 0 || *v.get_ref() > MAX_PASS_CACHE => {
            report.error(
                Some(v.span()),
                format!(
                    "`greet_pause.pass_cache_max` must be between 1 and {MAX_PASS_CACHE} \
                     (to turn the cache off, set `greet_pause.pass_ttl = \"0s\"`)"
                ),
            );
            d.pass_cache_max
        }
        Some(v) => usize::try_from(*v.get_ref()).unwrap_or(d.pass_cache_max),
    };
    GreetPauseConfig {
        default,
        action: action(raw.action.as_ref()),
        pass_ttl: duration(&raw.pass_ttl, "greet_pause.pass_ttl", d.pass_ttl, report),
        pass_cache_max,
    }
}

pub(crate) fn access(raw: &RawAccess, report: &mut Report<'_>) -> AccessConfig {
    let d = AccessConfig::default();
    let file = match &raw.file {
        None => None,
        Some(v) if v.get_ref().is_empty() => {
            report.error(
                Some(v.span()),
                "`access.file` is empty; give the path of the access source file, \
                 or leave the key out for an empty map"
                    .to_owned(),
            );
            None
        }
        Some(v) => Some(PathBuf::from(v.get_ref())),
    };
    AccessConfig {
        file,
        watch_interval: duration(
            &raw.watch_interval,
            "access.watch_interval",
            d.watch_interval,
            report,
        ),
        action: action(raw.action.as_ref()),
    }
}

pub(crate) fn dns(raw: &RawDns, report: &mut Report<'_>) -> DnsConfig {
    let d = DnsConfig::default();
    let mut servers = Vec::new();
    for item in raw.servers.iter().flat_map(|l| l.get_ref()) {
        match parse_server(item.get_ref()) {
            Some(addr) if servers.contains(&addr) => report.error(
                Some(item.span()),
                format!("`dns.servers`: {addr} is listed twice"),
            ),
            Some(addr) => servers.push(addr),
            None => report.error(
                Some(item.span()),
                format!(
                    "`dns.servers`: {:?} is not an IP address or IP:port \
                     (e.g. \"127.0.0.53\" or \"[::1]:53\")",
                    item.get_ref()
                ),
            ),
        }
    }
    DnsConfig {
        reverse: raw.reverse.as_ref().map_or(d.reverse, |v| *v.get_ref()),
        servers,
        timeout: nonzero_duration(&raw.timeout, "dns.timeout", d.timeout, report),
    }
}

/// `ip` (port 53) or `ip:port` / `[ipv6]:port`.
fn parse_server(text: &str) -> Option<SocketAddr> {
    text.parse::<SocketAddr>().ok().or_else(|| {
        text.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_server_forms() {
        assert_eq!(
            parse_server("127.0.0.53"),
            Some("127.0.0.53:53".parse().unwrap())
        );
        assert_eq!(
            parse_server("127.0.0.1:5353"),
            Some("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(parse_server("::1"), Some("[::1]:53".parse().unwrap()));
        assert_eq!(parse_server("[::1]:54"), Some("[::1]:54".parse().unwrap()));
        assert_eq!(parse_server("dns.example"), None);
    }
}
