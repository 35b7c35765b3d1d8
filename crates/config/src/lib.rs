//! portcullis-config: the Portcullis configuration file, from TOML text to a validated
//! `Config`, with compiler-style diagnostics (`FILE:LINE:COL: error: MESSAGE`).
//!
//! Role: the only place that knows the file format (docs/config.md documents it). Two
//! stages (design.md principle 9): `raw` parses TOML into serde structs that keep byte
//! spans and refuse unknown keys; `validate` (with `local`, `timeouts`, `defences`,
//! `admission` and `load`) applies defaults and bounds and reports each problem at its line. One pass
//! collects every error it can.
//! Must not: bind sockets, create directories, print, or exit; the binary decides what to
//! do with the diagnostics (`portcullis check-config` prints them and exits 0 or 78).
//! Files read: the config file (`load_file`), the `local.users_file` and `route.ca_file`
//! it names and the `tls.cert` / `tls.key` pair (checked to match), nothing else. Relative
//! paths are returned as written, relative to the working directory.
//! Invariants: `Ok` means no `Severity::Error` was found; `Err` holds every diagnostic,
//! warnings included, sorted by position.

mod admission;
mod defences;
mod diagnostic;
mod load;
mod local;
pub mod mc;
mod model;
mod names;
pub mod next_hop;
mod raw;
pub mod relay;
pub mod route_tls;
mod timeouts;
pub mod tls;
mod validate;

use std::path::Path;

pub use diagnostic::{Diagnostic, Severity};
pub use model::{
    AccessConfig, Action, BareLf, Config, ConnControlConfig, DEFAULT_TIMEOUTS, DelayChecks,
    DnsConfig, GreetPauseConfig, LimitsConfig, LoadConfig, LocalConfig, LogConfig, LogDestination,
    LogFormat, MaxSessionsAction, MetricsConfig, Phase, QueueConfig, RateControlConfig,
    ServerConfig, SmtpConfig, SummaryConfig, Timeouts,
};
pub use relay::{RelayConfig, Route, RouteDomain, Routes};
pub use route_tls::{CaFile, RouteTls};
pub use tls::{ClientPattern, TlsConfig, TlsIdentity, TlsVersion};

use diagnostic::Report;
use validate::HostnameSource;

/// The embedded default configuration (crates/config/default.toml).
pub const DEFAULT_CONFIG: &str = include_str!("../default.toml");

/// The name `origin` and diagnostics use for [`DEFAULT_CONFIG`].
pub const EMBEDDED_ORIGIN: &str = "<embedded default>";

/// A valid configuration and the warnings found on the way.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Diagnostic>,
}

/// Reads and validates the file at `path`. An unreadable file gives one error without a
/// line; diagnostics name the file as `path` displays.
pub fn load_file(path: &Path) -> Result<Loaded, Vec<Diagnostic>> {
    let origin = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(src) => load_str(&src, &origin),
        Err(why) => Err(vec![Diagnostic::whole_file(
            Severity::Error,
            &origin,
            format!("cannot read the configuration file: {why}"),
        )]),
    }
}

/// Validates `src`; `origin` names it in diagnostics and in `Config::origin`.
pub fn load_str(src: &str, origin: &str) -> Result<Loaded, Vec<Diagnostic>> {
    load_with(
        src,
        origin,
        &validate::machine_hostname,
        model::online_cpus(),
    )
}

/// The embedded default configuration, validated like any file.
pub fn embedded_default() -> Result<Loaded, Vec<Diagnostic>> {
    load_str(DEFAULT_CONFIG, EMBEDDED_ORIGIN)
}

/// `load_str` with the source of the machine's host name and its CPU count (for
/// `[load]`'s `"auto"`) as parameters (for tests).
fn load_with(
    src: &str,
    origin: &str,
    system_hostname: HostnameSource<'_>,
    cpus: u32,
) -> Result<Loaded, Vec<Diagnostic>> {
    let mut report = Report::new(origin, src);
    // Shape errors do not stop here: the surviving keys are still checked for meaning, so
    // one run shows everything. Only TOML syntax errors return None.
    let config = raw::parse(src, &mut report)
        .map(|raw| validate::config(raw, &mut report, system_hostname, cpus));
    match config {
        Some(config) if !report.has_errors() => Ok(Loaded {
            config,
            warnings: report.into_sorted(),
        }),
        _ => Err(report.into_sorted()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fqdn() -> Result<String, String> {
        Ok("mx.example.test".to_owned())
    }

    /// The CPU count the tests load with, whatever the machine has.
    const CPUS: u32 = 2;

    /// (line, is_error, message fragment) of each diagnostic.
    fn summary(diags: &[Diagnostic]) -> Vec<(usize, bool, String)> {
        diags
            .iter()
            .map(|d| (d.line, d.is_error(), d.message.clone()))
            .collect()
    }

    fn errors_of(src: &str) -> Vec<(usize, bool, String)> {
        match load_with(src, "t.toml", &fqdn, CPUS) {
            Ok(loaded) => panic!("expected errors, got {:?}", loaded.warnings),
            Err(diags) => summary(&diags),
        }
    }

    fn warnings_of(src: &str) -> Vec<(usize, String)> {
        match load_with(src, "t.toml", &fqdn, CPUS) {
            Ok(loaded) => loaded
                .warnings
                .into_iter()
                .map(|d| (d.line, d.message))
                .collect(),
            Err(diags) => panic!("unexpected errors: {diags:#?}"),
        }
    }

    const USERS: &str = "[local]\nusers = [\"alice\"]\n";

    #[test]
    fn semantic_errors_at_their_lines() {
        // (source, line, message fragment): one error each, plus whatever warnings.
        let table: &[(&str, usize, &str)] = &[
            (
                "[timeouts]\n\nmail = \"5 parsecs\"\n",
                3,
                "`timeouts.mail`: \"5 parsecs\" is not a duration",
            ),
            (
                "[timeouts]\nrcpt = \"0s\"\n",
                2,
                "`timeouts.rcpt` must be greater than zero",
            ),
            (
                "[server]\nlisten = [\"localhost:25\"]\n",
                2,
                "`server.listen`: \"localhost:25\" is not an IP address",
            ),
            (
                "[server]\nlisten = [\n  \"[::1]:25\",\n  \"::1:25\",\n]\n",
                4,
                "is not an IP address",
            ),
            (
                "[server]\nlisten = [\"[::1]:25\", \"[::1]:25\"]\n",
                2,
                "is listed twice",
            ),
            ("[server]\nlisten = []\n", 2, "`server.listen` is empty"),
            (
                "[server]\nmax_message_bytes = 0\n",
                2,
                "`server.max_message_bytes` must be greater than 0",
            ),
            (
                "[server]\nhostname = \"mx_1.example.test\"\n",
                2,
                "`server.hostname` \"mx_1.example.test\" contains '_'",
            ),
            (
                "[server]\nhostname = \"mx..example\"\n",
                2,
                "has an empty label",
            ),
            (
                "[server]\nspool_dir = \"\"\n",
                2,
                "`server.spool_dir` is empty",
            ),
            (
                "[server]\nshutdown_grace = \"soon\"\n",
                2,
                "`server.shutdown_grace`: \"soon\" is not a duration",
            ),
            (
                "[local]\ndomains = []\nusers = [\"a\"]\n",
                2,
                "`local.domains` is empty",
            ),
            (
                "[local]\nusers = [\"a\"]\ndomains = [\"ok.test\", \"bad domain\"]\n",
                3,
                "`local.domains`: \"bad domain\" contains ' '",
            ),
            (
                "[local]\nusers = [\"a\", \"b@c\"]\n",
                2,
                "`local.users`: local part \"b@c\" contains '@'",
            ),
            (
                "[local]\nusers_file = \"/nonexistent/portcullis/users\"\n",
                2,
                "`local.users_file`: cannot read",
            ),
            (
                "[queue]\nlifetime = \"0s\"\n",
                2,
                "`queue.lifetime` must be greater than zero",
            ),
        ];
        for &(src, line, fragment) in table {
            let errors: Vec<_> = errors_of(src).into_iter().filter(|d| d.1).collect();
            assert_eq!(errors.len(), 1, "{src:?}: {errors:?}");
            assert_eq!(errors[0].0, line, "{src:?}: {errors:?}");
            assert!(
                errors[0].2.contains(fragment),
                "{src:?}: {:?} !~ {fragment:?}",
                errors[0].2
            );
        }
    }

    #[test]
    fn all_errors_in_one_pass() {
        let src = "\
[server]
hostname = \"bad_host\"
listen = [\"nope\"]
max_message_bytes = 0
colour = \"blue\"
[timeouts]
mail = \"x\"
[local]
domains = []
users = [\"a\"]
";
        let lines: Vec<usize> = errors_of(src)
            .into_iter()
            .filter(|d| d.1)
            .map(|d| d.0)
            .collect();
        assert_eq!(lines, [2, 3, 4, 5, 7, 9]);
    }

    #[test]
    fn warnings_table() {
        // (source, expected (line, message fragment) list)
        let table: &[(&str, &[(usize, &str)])] = &[
            (USERS, &[]),
            (
                "",
                &[(0, "every local part at the local domains is accepted")],
            ),
            (
                "[local]\nusers = []\n",
                &[(2, "every local part at the local domains is accepted")],
            ),
            (
                "[local]\nusers = [\"a\"]\n[server]\nhostname = \"mx\"\n",
                &[(4, "`server.hostname` \"mx\" is not fully qualified")],
            ),
            (
                "[local]\nusers = [\"a\"]\n[server]\nmax_message_bytes = 1000\n",
                &[(4, "`server.max_message_bytes` = 1000 is below 64 KiB")],
            ),
            (
                "[local]\nusers = [\"a\"]\n[queue]\nretry_min = \"2h\"\n",
                &[(
                    4,
                    "`queue.retry_min` = 2h is longer than `queue.retry_max` = 1h",
                )],
            ),
            (
                "[local]\nusers = [\"a\"]\n[timeouts]\ninitial = \"1m\"\ndatainit = \"1m\"\nquit = \"1s\"\n",
                &[
                    (
                        4,
                        "`timeouts.initial` = 1m is shorter than the RFC 5321 minimum of 5m",
                    ),
                    (
                        5,
                        "`timeouts.datainit` = 1m is shorter than the RFC 5321 minimum of 2m",
                    ),
                ],
            ),
            (
                "[local]\nusers = [\"a\"]\n[timeouts]\nmail = \"10m\"\n",
                &[(
                    4,
                    "`timeouts.mail` = 10m is longer than `timeouts.command` = 5m",
                )],
            ),
            (
                // A short command caps defaulted phases silently; only its own minimum warns.
                "[local]\nusers = [\"a\"]\n[timeouts]\ncommand = \"1m\"\nmisc = \"90s\"\n",
                &[
                    (
                        4,
                        "`timeouts.command` = 1m is shorter than the RFC 5321 minimum of 5m",
                    ),
                    (
                        5,
                        "`timeouts.misc` = 1m 30s is longer than `timeouts.command` = 1m",
                    ),
                ],
            ),
        ];
        for &(src, expected) in table {
            let got = warnings_of(src);
            assert_eq!(got.len(), expected.len(), "{src:?}: {got:#?}");
            for ((line, message), &(want_line, want)) in got.iter().zip(expected) {
                assert_eq!(*line, want_line, "{src:?}: {message}");
                assert!(message.contains(want), "{src:?}: {message:?} !~ {want:?}");
            }
        }
    }

    #[test]
    fn invalid_users_do_not_count_as_an_empty_list() {
        let diags = errors_of("[local]\nusers = [\"a/b\"]\n");
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert!(diags[0].1, "{diags:?}");
    }

    #[test]
    fn err_carries_warnings_too() {
        let Err(diags) = load_with(
            "[server]\nmax_message_bytes = 0\nhostname = \"mx\"\n",
            "t",
            &fqdn,
            CPUS,
        ) else {
            panic!("expected an error")
        };
        let kinds: Vec<_> = diags.iter().map(|d| (d.line, d.severity)).collect();
        assert_eq!(
            kinds,
            [
                (0, Severity::Warning),
                (2, Severity::Error),
                (3, Severity::Warning)
            ]
        );
    }

    #[test]
    fn load_auto_is_sendmails_default_for_the_cpus() {
        let load = |src: &str, cpus| match load_with(src, "t.toml", &fqdn, cpus) {
            Ok(loaded) => {
                let l = loaded.config.load;
                (l.refuse_la, l.delay_la, l.queue_la)
            }
            Err(diags) => panic!("{src:?}: {diags:#?}"),
        };
        let auto = "[load]\nrefuse_la = \"auto\"\ndelay_la = \"auto\"\nqueue_la = \"auto\"\n";
        assert_eq!(load(auto, 2), (24, 0, 16));
        assert_eq!(load(auto, 1), (12, 0, 8));
        // Absent keys are "auto".
        assert_eq!(load("", 2), (24, 0, 16));
        assert_eq!(load("[load]\nrefuse_la = 30\n", 2), (30, 0, 16));
        // Numbers are kept, whatever the CPUs.
        let numbers = "[load]\nrefuse_la = 12\ndelay_la = 10\nqueue_la = 8\n";
        assert_eq!(load(numbers, 16), (12, 10, 8));
        assert_eq!(
            errors_of(&format!(
                "{USERS}[load]\nrefuse_la = 12\n\nqueue_la = \"foo\"\n"
            )),
            [(
                6,
                true,
                "`load.queue_la` must be a number or \"auto\", not \"foo\"".to_owned()
            )]
        );
    }

    #[test]
    fn embedded_default_matches_the_code_defaults() {
        let loaded = load_with(DEFAULT_CONFIG, EMBEDDED_ORIGIN, &fqdn, CPUS).unwrap();
        let empty = load_with("", EMBEDDED_ORIGIN, &fqdn, CPUS).unwrap();
        assert_eq!(loaded.config, empty.config);
        assert_eq!(loaded.config.timeouts, Timeouts::default());
        assert_eq!(loaded.config.queue, QueueConfig::default());
        assert_eq!(loaded.config.greet_pause, GreetPauseConfig::default());
        assert_eq!(loaded.config.smtp, SmtpConfig::default());
        assert_eq!(loaded.config.access, AccessConfig::default());
        assert_eq!(loaded.config.dns, DnsConfig::default());
        assert_eq!(loaded.config.rate_control, RateControlConfig::default());
        assert_eq!(loaded.config.conn_control, ConnControlConfig::default());
        assert_eq!(loaded.config.limits, LimitsConfig::default());
        assert_eq!(loaded.config.load, LoadConfig::sendmail_defaults(CPUS));
        assert_eq!(loaded.config.server.hostname, "mx.example.test");
        assert_eq!(loaded.config.origin, EMBEDDED_ORIGIN);
    }
}
