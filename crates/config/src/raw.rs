//! The raw configuration: TOML text → serde structs that still carry byte spans.
//!
//! Role: syntax and shape only. TOML syntax errors, unknown sections and keys
//! (`deny_unknown_fields`) and wrong value types are reported here, each at its own line.
//! Must not: apply defaults or check meanings (ranges, addresses, durations): that is
//! `validate`, which needs the spans kept here to point at the offending line.
//! Invariants: every leaf is `Option<Spanned<_>>`, so "absent" and "where" are both known;
//! the raw structs mirror the documented file exactly (docs/config.md).
//!
//! Serde stops at the first error of a document. To still report every bad key in one
//! pass, `parse` removes the entry the error points at and deserializes again, until the
//! rest is clean; each round removes one entry, so the loop ends.

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diagnostic::Report;

/// An optional string value with its span.
pub(crate) type Text = Option<Spanned<String>>;
/// An optional array of strings: the span of the array (for "is empty") and of each item.
pub(crate) type TextList = Option<Spanned<Vec<Spanned<String>>>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a configuration document")]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) server: RawServer,
    #[serde(default)]
    pub(crate) smtp: RawSmtp,
    #[serde(default)]
    pub(crate) local: RawLocal,
    #[serde(default)]
    pub(crate) timeouts: RawTimeouts,
    #[serde(default)]
    pub(crate) queue: RawQueue,
    #[serde(default)]
    pub(crate) log: RawLog,
    #[serde(default)]
    pub(crate) greet_pause: RawGreetPause,
    #[serde(default)]
    pub(crate) access: RawAccess,
    #[serde(default)]
    pub(crate) dns: RawDns,
    #[serde(default)]
    pub(crate) rate_control: RawRateControl,
    #[serde(default)]
    pub(crate) conn_control: RawConnControl,
    #[serde(default)]
    pub(crate) limits: RawLimits,
    #[serde(default)]
    pub(crate) load: RawLoad,
    #[serde(default)]
    pub(crate) relay: RawRelay,
    #[serde(default)]
    pub(crate) metrics: RawMetrics,
    #[serde(default)]
    pub(crate) tls: RawTls,
    /// `[[route]]` tables, in the order written.
    #[serde(default)]
    pub(crate) route: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [relay] table")]
pub(crate) struct RawRelay {
    pub(crate) domains: TextList,
    pub(crate) networks: TextList,
}

/// `[tls]`: the server's certificate for STARTTLS, and who must use it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [tls] table")]
pub(crate) struct RawTls {
    pub(crate) cert: Text,
    pub(crate) key: Text,
    pub(crate) min_version: Text,
    pub(crate) request_client_cert: Option<Spanned<bool>>,
    pub(crate) required_for: TextList,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[route]] table")]
pub(crate) struct RawRoute {
    pub(crate) domain: Text,
    pub(crate) next_hop: Text,
    pub(crate) verify: Option<Spanned<bool>>,
    pub(crate) ca_file: Text,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [greet_pause] table")]
pub(crate) struct RawGreetPause {
    pub(crate) default: Text,
    pub(crate) action: Option<Spanned<RawAction>>,
    pub(crate) pass_ttl: Text,
    pub(crate) pass_cache_max: Option<Spanned<u64>>,
}

/// `enforce | drop | ignore`, shared by every defence (design.md principle 4).
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawAction {
    Enforce,
    Drop,
    Ignore,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [access] table")]
pub(crate) struct RawAccess {
    pub(crate) file: Text,
    pub(crate) watch_interval: Text,
    pub(crate) action: Option<Spanned<RawAction>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [dns] table")]
pub(crate) struct RawDns {
    pub(crate) reverse: Option<Spanned<bool>>,
    pub(crate) servers: TextList,
    pub(crate) timeout: Text,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [rate_control] table")]
pub(crate) struct RawRateControl {
    pub(crate) window: Text,
    pub(crate) terminate: Option<Spanned<bool>>,
    pub(crate) action: Option<Spanned<RawAction>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [conn_control] table")]
pub(crate) struct RawConnControl {
    pub(crate) terminate: Option<Spanned<bool>>,
    pub(crate) action: Option<Spanned<RawAction>>,
}

/// Integers are read as u64 whatever their model type, so an out-of-range value gets
/// `validate`'s message naming the range rather than serde's "expected u8".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [limits] table")]
pub(crate) struct RawLimits {
    pub(crate) client_ipv4_prefix: Option<Spanned<u64>>,
    pub(crate) client_ipv6_prefix: Option<Spanned<u64>>,
    pub(crate) max_tracked_clients: Option<Spanned<u64>>,
    pub(crate) connection_rate_throttle: Option<Spanned<u64>>,
    pub(crate) max_sessions: Option<Spanned<u64>>,
    pub(crate) max_sessions_action: Option<Spanned<RawMaxSessionsAction>>,
    pub(crate) session_delay_budget: Text,
    pub(crate) max_recipients_per_message: Option<Spanned<u64>>,
    pub(crate) bad_rcpt_throttle: Option<Spanned<u64>>,
    pub(crate) bad_rcpt_throttle_delay: Text,
    pub(crate) bad_rcpt_shutdown: Option<Spanned<u64>>,
    pub(crate) max_recipients_action: Option<Spanned<RawAction>>,
    pub(crate) bad_rcpt_action: Option<Spanned<RawAction>>,
    pub(crate) command_abuse_action: Option<Spanned<RawAction>>,
    pub(crate) max_noop_commands: Option<Spanned<u64>>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawMaxSessionsAction {
    Wait,
    Refuse,
}

/// Integers as u64, as in `RawLimits`. The load-average thresholds also take a string,
/// for `"auto"`; which strings mean something is `load`'s business.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [load] table")]
pub(crate) struct RawLoad {
    pub(crate) refuse_la: Option<Spanned<RawLa>>,
    pub(crate) delay_la: Option<Spanned<RawLa>>,
    pub(crate) queue_la: Option<Spanned<RawLa>>,
    pub(crate) refuse_sessions_pct: Option<Spanned<u64>>,
    pub(crate) delay_sessions_pct: Option<Spanned<u64>>,
    pub(crate) queue_sessions_pct: Option<Spanned<u64>>,
    pub(crate) refuse_lag: Text,
    pub(crate) delay_lag: Text,
    pub(crate) queue_lag: Text,
    pub(crate) loadavg_file: Text,
}

/// A load-average threshold: an integer, or a string (`"auto"`).
///
/// Untagged in effect, but deserialized by hand: serde's `#[serde(untagged)]` would turn
/// `-1` or `1.5` into "data did not match any variant", where this keeps serde's own
/// "invalid value: integer `-1`" and "invalid type: floating point `1.5`".
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RawLa {
    Number(u64),
    Word(String),
}

impl<'de> Deserialize<'de> for RawLa {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawLaVisitor)
    }
}

struct RawLaVisitor;

impl serde::de::Visitor<'_> for RawLaVisitor {
    type Value = RawLa;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a non-negative integer or \"auto\"")
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawLa, E> {
        Ok(RawLa::Number(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawLa, E> {
        u64::try_from(v)
            .map(RawLa::Number)
            .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawLa, E> {
        Ok(RawLa::Word(v.to_owned()))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [server] table")]
pub(crate) struct RawServer {
    pub(crate) hostname: Text,
    pub(crate) listen: TextList,
    pub(crate) spool_dir: Text,
    pub(crate) max_message_bytes: Option<Spanned<u64>>,
    pub(crate) shutdown_grace: Text,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [smtp] table")]
pub(crate) struct RawSmtp {
    pub(crate) bare_lf: Option<Spanned<RawBareLf>>,
    pub(crate) pipelining: Option<Spanned<bool>>,
    pub(crate) pipelining_action: Option<Spanned<RawAction>>,
    pub(crate) stuffing_action: Option<Spanned<RawAction>>,
    pub(crate) open_proxy_action: Option<Spanned<RawAction>>,
    pub(crate) delay_checks: Option<Spanned<RawDelayChecks>>,
}

/// `smtp.delay_checks`: a boolean, or a string (`"friend"`, `"hater"`); which strings mean
/// something is `validate`'s business. Deserialized by hand, as `RawLa` is, so a wrong type
/// keeps serde's own "invalid type: integer `1`" message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RawDelayChecks {
    Flag(bool),
    Word(String),
}

impl<'de> Deserialize<'de> for RawDelayChecks {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawDelayChecksVisitor)
    }
}

struct RawDelayChecksVisitor;

impl serde::de::Visitor<'_> for RawDelayChecksVisitor {
    type Value = RawDelayChecks;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("true, false, \"friend\" or \"hater\"")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<RawDelayChecks, E> {
        Ok(RawDelayChecks::Flag(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawDelayChecks, E> {
        Ok(RawDelayChecks::Word(v.to_owned()))
    }
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawBareLf {
    Reject,
    Normalize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [local] table")]
pub(crate) struct RawLocal {
    pub(crate) domains: TextList,
    pub(crate) maildir_root: Text,
    pub(crate) users: TextList,
    pub(crate) users_file: Text,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [timeouts] table")]
pub(crate) struct RawTimeouts {
    pub(crate) initial: Text,
    pub(crate) helo: Text,
    pub(crate) mail: Text,
    pub(crate) rcpt: Text,
    pub(crate) datainit: Text,
    pub(crate) datablock: Text,
    pub(crate) datafinal: Text,
    pub(crate) rset: Text,
    pub(crate) quit: Text,
    pub(crate) misc: Text,
    pub(crate) command: Text,
    pub(crate) starttls: Text,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [queue] table")]
pub(crate) struct RawQueue {
    pub(crate) retry_min: Text,
    pub(crate) retry_max: Text,
    pub(crate) lifetime: Text,
    pub(crate) connections_per_hop: Option<Spanned<u64>>,
    pub(crate) max_connections: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [log] table")]
pub(crate) struct RawLog {
    pub(crate) format: Option<Spanned<RawLogFormat>>,
    pub(crate) destination: Option<Spanned<RawLogDestination>>,
    pub(crate) summary_interval: Text,
    pub(crate) summary_after: Option<Spanned<u64>>,
    pub(crate) summary_top: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [metrics] table")]
pub(crate) struct RawMetrics {
    pub(crate) listen: Option<Spanned<String>>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawLogFormat {
    Syslog,
    Json,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawLogDestination {
    Stderr,
    Syslog,
}

/// Parses `src` into a `RawConfig`, reporting syntax and shape errors into `report`.
/// Returns None after syntax errors: a recovered document is partial, and checking its
/// meaning would add confusing follow-on errors.
pub(crate) fn parse(src: &str, report: &mut Report<'_>) -> Option<RawConfig> {
    let (mut doc, syntax_errors) = DeTable::parse_recoverable(src);
    if !syntax_errors.is_empty() {
        for err in syntax_errors {
            report.error(err.span(), format!("TOML syntax: {}", err.message()));
        }
        return None;
    }
    drop_non_table_sections(doc.get_mut(), report);
    Some(deserialize_all(doc, report))
}

/// The sections of the file, i.e. the fields of `RawConfig`.
const SECTIONS: [&str; 15] = [
    "server",
    "smtp",
    "local",
    "timeouts",
    "queue",
    "log",
    "greet_pause",
    "access",
    "dns",
    "rate_control",
    "conn_control",
    "limits",
    "load",
    "relay",
    "tls",
];

/// A section given as something other than a table (`server = 5`, or `[[server]]`) is
/// reported and dropped here: serde would accept an array as a struct in field order and
/// report a baffling "expected a string" about its first element.
fn drop_non_table_sections(root: &mut DeTable<'_>, report: &mut Report<'_>) {
    let misshapen: Vec<(String, Range<usize>, &str)> = root
        .iter()
        .filter(|(key, value)| SECTIONS.contains(&&**key.get_ref()) && !value.get_ref().is_table())
        .map(|(key, value)| {
            (
                key.get_ref().to_string(),
                key.span(),
                value.get_ref().type_str(),
            )
        })
        .collect();
    for (name, span, kind) in misshapen {
        report.error(
            Some(span),
            format!(
                "`{name}` must be a table ([{name}]), not {}",
                with_article(kind)
            ),
        );
        root.remove(name.as_str());
    }
}

fn with_article(kind: &str) -> String {
    let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {kind}")
}

/// Deserializes, and on each error reports it, drops the offending entry and retries.
fn deserialize_all(mut doc: Spanned<DeTable<'_>>, report: &mut Report<'_>) -> RawConfig {
    loop {
        let attempt = RawConfig::deserialize(toml::de::Deserializer::from(doc.clone()));
        let err = match attempt {
            Ok(raw) => return raw,
            Err(err) => err,
        };
        let span = err.span();
        let path = span.as_ref().and_then(|s| find_entry(doc.get_ref(), s));
        let message = match &path {
            Some(path) => format!("`{}`: {}", path.join("."), err.message()),
            None => err.message().to_owned(),
        };
        report.error(span, message);
        // Without an entry to drop, another round would fail the same way: give up on the
        // shape (the errors are reported, so the load fails anyway).
        if !path.is_some_and(|path| remove_entry(doc.get_mut(), &path)) {
            return RawConfig::default();
        }
    }
}

/// The key path of the innermost table entry whose key or value contains `span`.
/// Children are searched first and regardless of the parent's span, because a table
/// opened by a `[header]` has a span that does not cover the keys below it.
fn find_entry(table: &DeTable<'_>, span: &Range<usize>) -> Option<Vec<String>> {
    for (key, value) in table.iter() {
        if let DeValue::Table(inner) = value.get_ref()
            && let Some(mut path) = find_entry(inner, span)
        {
            path.insert(0, key.get_ref().to_string());
            return Some(path);
        }
        if contains(&key.span(), span) || contains(&value.span(), span) {
            return Some(vec![key.get_ref().to_string()]);
        }
    }
    None
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

/// Removes the entry at `path`; false when it is not there.
fn remove_entry(table: &mut DeTable<'_>, path: &[String]) -> bool {
    match path {
        [] => false,
        [last] => table.remove(last.as_str()).is_some(),
        [first, rest @ ..] => match table.get_mut(first.as_str()).map(Spanned::get_mut) {
            Some(DeValue::Table(inner)) => remove_entry(inner, rest),
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(src: &str) -> (Option<RawConfig>, Vec<(usize, String)>) {
        let mut report = Report::new("t.toml", src);
        let raw = parse(src, &mut report);
        let diags = report
            .into_sorted()
            .into_iter()
            .map(|d| (d.line, d.message))
            .collect();
        (raw, diags)
    }

    #[test]
    fn shape_errors_are_all_reported_at_their_lines() {
        // (source, expected (line, message fragment) list)
        let table: &[(&str, &[(usize, &str)])] = &[
            ("", &[]),
            (
                "[server]\nhostnme = \"x\"\n",
                &[(2, "`server.hostnme`: unknown field `hostnme`")],
            ),
            ("[nope]\n", &[(1, "`nope`: unknown field `nope`")]),
            (
                "[server]\nmax_message_bytes = \"10M\"\nlisten = \"x\"\n[log]\nformat = \"xml\"\n",
                &[
                    (2, "`server.max_message_bytes`: invalid type: string"),
                    (3, "`server.listen`: invalid type: string"),
                    (5, "`log.format`: unknown variant `xml`"),
                ],
            ),
            (
                "server.hostname = 5\n",
                &[(1, "`server.hostname`: invalid type: integer")],
            ),
            (
                "[timeouts]\ninitial = 300\n\n[smtp]\nbare_lf = \"strip\"\n",
                &[
                    (2, "`timeouts.initial`: invalid type: integer"),
                    (5, "`smtp.bare_lf`: unknown variant `strip`"),
                ],
            ),
            (
                "server = 5\n",
                &[(1, "`server` must be a table ([server]), not an integer")],
            ),
            (
                "[[log]]\nformat = \"json\"\n",
                &[(1, "`log` must be a table ([log]), not an array")],
            ),
            (
                "hostname = \"x\"\n",
                &[(1, "`hostname`: unknown field `hostname`")],
            ),
            (
                "[server]\nlisten = [\n  \"127.0.0.1:25\",\n  25,\n]\n",
                // The element's own line, not the key's.
                &[(4, "`server.listen`: invalid type: integer `25`")],
            ),
            (
                "[server]\nmax_message_bytes = -1\n",
                &[(2, "`server.max_message_bytes`: invalid value")],
            ),
            (
                "[rate_control]\nwindow = 60\n[limits]\nmax_sessions_action = \"block\"\n\
                 max_sessions = \"8\"\n[conn_control]\nterminate = \"yes\"\n",
                &[
                    (2, "`rate_control.window`: invalid type: integer"),
                    (4, "`limits.max_sessions_action`: unknown variant `block`"),
                    (5, "`limits.max_sessions`: invalid type: string"),
                    (7, "`conn_control.terminate`: invalid type: string"),
                ],
            ),
            (
                "[limits]\nclient_ipv6_prefix = -64\nmax_children = 5\n",
                &[
                    (2, "`limits.client_ipv6_prefix`: invalid value"),
                    (3, "`limits.max_children`: unknown field `max_children`"),
                ],
            ),
            (
                // A string `queue_la` passes the shape check: `load` judges the word.
                "[load]\nrefuse_la = 12\nrefuse_load = 12\ndelay_lag = 5\nqueue_la = \"8\"\n\
                 delay_la = -1\n",
                &[
                    (3, "`load.refuse_load`: unknown field `refuse_load`"),
                    (4, "`load.delay_lag`: invalid type: integer"),
                    (
                        6,
                        "`load.delay_la`: invalid value: integer `-1`, \
                         expected a non-negative integer or \"auto\"",
                    ),
                ],
            ),
            (
                "[load]\nrefuse_la = 1.5\nqueue_la = true\n",
                &[
                    (
                        2,
                        "`load.refuse_la`: invalid type: floating point `1.5`, \
                         expected a non-negative integer or \"auto\"",
                    ),
                    (3, "`load.queue_la`: invalid type: boolean `true`"),
                ],
            ),
            (
                "[limits]\nsession_delay_budget = 60\n",
                &[(2, "`limits.session_delay_budget`: invalid type: integer")],
            ),
            (
                "[limits]\nbad_rcpt_throttle_delay = 1\nbad_rcpt_throttle = \"2\"\n\
                 max_recipients_per_message = -1\nbad_rcpt_shutdown = 1.5\n",
                &[
                    (2, "`limits.bad_rcpt_throttle_delay`: invalid type: integer"),
                    (3, "`limits.bad_rcpt_throttle`: invalid type: string"),
                    (4, "`limits.max_recipients_per_message`: invalid value"),
                    (
                        5,
                        "`limits.bad_rcpt_shutdown`: invalid type: floating point",
                    ),
                ],
            ),
            (
                "load = 1\n",
                &[(1, "`load` must be a table ([load]), not an integer")],
            ),
            (
                // A string passes the shape check: `validate` judges the word.
                "[smtp]\ndelay_checks = 1.5\npipelining = \"no\"\ndelay_checks_x = 1\n\
                 stuffing_action = \"strict\"\n[access]\naction = 0\n",
                &[
                    (
                        2,
                        "`smtp.delay_checks`: invalid type: floating point `1.5`, \
                         expected true, false, \"friend\" or \"hater\"",
                    ),
                    (3, "`smtp.pipelining`: invalid type: string"),
                    (4, "`smtp.delay_checks_x`: unknown field `delay_checks_x`"),
                    (5, "`smtp.stuffing_action`: unknown variant `strict`"),
                    (7, "`access.action`: wanted string or table"),
                ],
            ),
            (
                "[smtp]\ndelay_checks = \"bogus\"\n[limits]\nmax_noop_commands = 1.0\n",
                &[(
                    4,
                    "`limits.max_noop_commands`: invalid type: floating point",
                )],
            ),
        ];
        for &(src, expected) in table {
            let (raw, diags) = run(src);
            assert!(raw.is_some(), "{src:?}");
            assert_eq!(diags.len(), expected.len(), "{src:?}: {diags:?}");
            for ((line, message), &(want_line, want)) in diags.iter().zip(expected) {
                assert_eq!(*line, want_line, "{src:?}: {message}");
                assert!(
                    message.starts_with(want),
                    "{src:?}: {message:?} !~ {want:?}"
                );
            }
        }
    }

    #[test]
    fn syntax_errors_stop_before_shape_checks() {
        let (raw, diags) = run("[server]\nhostname = \"x\nunknown = 1\n");
        assert!(raw.is_none());
        assert!(!diags.is_empty());
        assert_eq!(diags[0].0, 2, "{diags:?}");
        assert!(diags[0].1.starts_with("TOML syntax: "), "{diags:?}");
    }

    #[test]
    fn good_keys_survive_the_removal_of_bad_ones() {
        let (raw, diags) = run("[server]\nspool_dir = \"s\"\nbogus = 1\n");
        assert_eq!(diags.len(), 1);
        let raw = raw.unwrap();
        assert_eq!(raw.server.spool_dir.unwrap().into_inner(), "s");
    }
}
