//! End-to-end tests of the public loading API: files on disk, `users_file` merging, the
//! rendered diagnostics the `check-config` command prints.
//! Must not: depend on the machine's host name (every config here sets `server.hostname`,
//! except the embedded-default test, which only asserts the absence of errors).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis_config::{
    AccessConfig, Action, BareLf, ConnControlConfig, DelayChecks, Diagnostic, LimitsConfig,
    LoadConfig, LogDestination, LogFormat, MaxSessionsAction, RateControlConfig, Severity,
    SmtpConfig, SummaryConfig, embedded_default, load_file, load_str,
};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

fn errors(diags: &[Diagnostic]) -> Vec<&Diagnostic> {
    diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect()
}

/// Each `(section, line, fragment)`: the section (with the quiet tail) fails with exactly
/// one error, at `line`, whose message contains `fragment`.
fn assert_one_error_each(table: &[(&str, usize, &str)]) {
    for &(section, line, fragment) in table {
        let diags = expect_err(&format!("{section}{QUIET_TAIL}"));
        let errs = errors(&diags);
        assert_eq!(errs.len(), 1, "{section:?}: {diags:#?}");
        assert_eq!(errs[0].line, line, "{section:?}: {}", errs[0]);
        assert!(
            errs[0].message.contains(fragment),
            "{section:?}: {:?} !~ {fragment:?}",
            errs[0].message
        );
    }
}

fn expect_err(src: &str) -> Vec<Diagnostic> {
    match load_str(src, "p.toml") {
        Ok(loaded) => panic!("expected errors for {src:?}, got {:?}", loaded.config),
        Err(diags) => diags,
    }
}

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn embedded_default_loads_without_errors() {
    let loaded = embedded_default().unwrap_or_else(|d| panic!("{d:#?}"));
    let c = &loaded.config;
    assert_eq!(c.origin, "<embedded default>");
    assert_eq!(
        c.server.listen,
        ["127.0.0.1:2525".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(c.server.spool_dir, Path::new("var/spool"));
    assert_eq!(c.local.maildir_root, Path::new("var/mail"));
    assert_eq!(c.local.domains, ["localhost"]);
    assert!(c.local.accepts_all_users());
    assert!(!c.server.hostname.is_empty());
    // The "every local part accepted" warning is always there for the default.
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.message.contains("every local part"))
    );
    assert!(
        loaded
            .warnings
            .iter()
            .all(|w| w.severity == Severity::Warning)
    );
}

#[test]
fn full_example_loads_with_exact_values() {
    let dir = tempfile::tempdir().unwrap();
    let users = write(dir.path(), "users", "# team\nCarol\n\n  dave\n");
    let src = format!(
        r#"
[server]
hostname = "mx.example.test"
listen = ["127.0.0.1:2525", "[::1]:2526"]
spool_dir = "/srv/spool"
max_message_bytes = 20971520
shutdown_grace = "45s"

[smtp]
bare_lf = "normalize"

[local]
domains = ["Example.TEST.", "localhost", "example.test"]
maildir_root = "mail"
users = ["Alice", "bob"]
users_file = "{}"

[timeouts]
initial = "6m"
helo = "5m"
mail = "5m"
rcpt = "5m"
datainit = "2m"
datablock = "3m"
datafinal = "10m"
rset = "5m"
quit = "1m"
misc = "2m"
command = "1h"

[queue]
retry_min = "2m"
retry_max = "2h"
lifetime = "3d"

[log]
format = "json"
destination = "syslog"
"#,
        users.display()
    );
    let config_path = write(dir.path(), "portcullis.toml", &src);
    let loaded = load_file(&config_path).unwrap_or_else(|d| panic!("{d:#?}"));
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let c = loaded.config;
    assert_eq!(c.origin, config_path.display().to_string());

    assert_eq!(c.server.hostname, "mx.example.test");
    let listen: Vec<SocketAddr> = vec![
        "127.0.0.1:2525".parse().unwrap(),
        "[::1]:2526".parse().unwrap(),
    ];
    assert_eq!(c.server.listen, listen);
    assert_eq!(c.server.spool_dir, Path::new("/srv/spool"));
    assert_eq!(c.server.max_message_bytes, 20_971_520);
    assert_eq!(c.server.shutdown_grace, Duration::from_secs(45));

    assert_eq!(c.smtp.bare_lf, BareLf::Normalize);

    assert_eq!(c.local.domains, ["example.test", "localhost"]);
    assert_eq!(c.local.maildir_root, Path::new("mail"));
    let expected: HashSet<String> = ["alice", "bob", "carol", "dave"].map(String::from).into();
    assert_eq!(c.local.users, expected);
    assert_eq!(c.local.users_file.as_deref(), Some(users.as_path()));
    assert!(!c.local.accepts_all_users());
    assert!(c.local.is_local_domain("EXAMPLE.test."));
    assert!(!c.local.is_local_domain("other.test"));

    let t = c.timeouts;
    assert_eq!(t.initial, 6 * MINUTE);
    assert_eq!(
        (t.helo, t.mail, t.rcpt, t.rset),
        (5 * MINUTE, 5 * MINUTE, 5 * MINUTE, 5 * MINUTE)
    );
    assert_eq!(
        (t.datainit, t.datablock, t.datafinal),
        (2 * MINUTE, 3 * MINUTE, 10 * MINUTE)
    );
    assert_eq!(
        (t.quit, t.misc, t.command),
        (MINUTE, 2 * MINUTE, 60 * MINUTE)
    );

    assert_eq!(c.queue.retry_min, 2 * MINUTE);
    assert_eq!(c.queue.retry_max, 120 * MINUTE);
    assert_eq!(c.queue.lifetime, Duration::from_secs(3 * 24 * 3600));

    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.log.destination, LogDestination::Syslog);
}

#[test]
fn unknown_key_and_section_at_their_lines() {
    let diags = expect_err(
        "[server]\nhostname = \"mx.example.test\"\nlisten_on = [\"127.0.0.1:25\"]\n\n[mystery]\nx = 1\n",
    );
    let errs = errors(&diags);
    assert_eq!(errs.len(), 2, "{diags:#?}");
    assert_eq!((errs[0].line, errs[0].column), (3, 1));
    assert!(
        errs[0].message.contains("unknown field `listen_on`"),
        "{}",
        errs[0]
    );
    assert_eq!(errs[1].line, 5);
    assert!(
        errs[1].message.contains("unknown field `mystery`"),
        "{}",
        errs[1]
    );
}

#[test]
fn toml_syntax_error_at_its_line() {
    let table: &[(&str, usize)] = &[
        (
            "[server]\nhostname = \"mx.example.test\"\nlisten = [\"127.0.0.1:25\"\n",
            3,
        ),
        ("[server]\n\n\nhostname = mx.example.test\n", 4),
        ("[server\n", 1),
        ("[server]\nhostname = \"a\"\nhostname = \"b\"\n", 3),
    ];
    for &(src, line) in table {
        let diags = expect_err(src);
        let errs = errors(&diags);
        assert!(!errs.is_empty(), "{src:?}");
        assert_eq!(errs[0].line, line, "{src:?}: {diags:#?}");
        assert!(errs[0].message.starts_with("TOML syntax: "), "{}", errs[0]);
        assert!(
            errs[0].to_string().starts_with(&format!("p.toml:{line}:")),
            "{}",
            errs[0]
        );
    }
}

#[test]
fn users_file_bad_line_reported_in_that_file() {
    let dir = tempfile::tempdir().unwrap();
    let users = write(dir.path(), "users", "alice\n# comment\n\nbob smith\n");
    let src = format!(
        "[server]\nhostname = \"mx.example.test\"\n[local]\nusers_file = \"{}\"\n",
        users.display()
    );
    let diags = expect_err(&src);
    let errs = errors(&diags);
    assert_eq!(errs.len(), 1, "{diags:#?}");
    assert_eq!(errs[0].file, users.display().to_string());
    assert_eq!((errs[0].line, errs[0].column), (4, 1));
    assert_eq!(
        errs[0].to_string(),
        format!(
            "{}:4:1: error: local part \"bob smith\" contains whitespace or a control character",
            users.display()
        )
    );
}

#[test]
fn unreadable_users_file_reported_at_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-file");
    let src = format!(
        "[server]\nhostname = \"mx.example.test\"\n\n[local]\nusers = [\"a\"]\nusers_file = \"{}\"\n",
        missing.display()
    );
    let diags = expect_err(&src);
    let errs = errors(&diags);
    assert_eq!(errs.len(), 1, "{diags:#?}");
    assert_eq!((errs[0].file.as_str(), errs[0].line), ("p.toml", 6));
    assert!(errs[0].message.contains("cannot read"), "{}", errs[0]);
}

#[test]
fn empty_users_file_accepts_nobody_and_warns() {
    let dir = tempfile::tempdir().unwrap();
    let users = write(dir.path(), "users", "# nobody yet\n");
    let src = format!(
        "[server]\nhostname = \"mx.example.test\"\n[local]\nusers_file = \"{}\"\n",
        users.display()
    );
    let loaded = load_str(&src, "p.toml").unwrap();
    assert!(!loaded.config.local.accepts_all_users());
    assert_eq!(loaded.warnings.len(), 1, "{:#?}", loaded.warnings);
    assert_eq!(loaded.warnings[0].line, 4);
    assert!(loaded.warnings[0].message.contains("will be refused"));
}

#[test]
fn unreadable_config_file_is_one_error_without_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let diags = load_file(&path).unwrap_err();
    assert_eq!(diags.len(), 1);
    assert_eq!(diags[0].line, 0);
    let rendered = diags[0].to_string();
    assert!(
        rendered.starts_with(&format!(
            "{}: error: cannot read the configuration file",
            path.display()
        )),
        "{rendered}"
    );
}

#[test]
fn rendered_diagnostic_has_file_line_column() {
    let diags = expect_err("[server]\nhostname = \"mx.example.test\"\nmax_message_bytes = 0\n");
    let errs = errors(&diags);
    assert_eq!(
        errs[0].to_string(),
        "p.toml:3:21: error: `server.max_message_bytes` must be greater than 0"
    );
}

#[test]
fn defence_sections_parse_and_clamp() {
    let src = "[server]\nhostname = \"mx.example.test\"\n\
               [greet_pause]\ndefault = \"400s\"\naction = \"drop\"\npass_ttl = \"0s\"\npass_cache_max = 10\n\
               [access]\nfile = \"/etc/mail/access\"\nwatch_interval = \"0s\"\n\
               [dns]\nreverse = false\nservers = [\"127.0.0.1:5353\", \"::1\"]\ntimeout = \"1s\"\n";
    let loaded = load_str(src, "p.toml").unwrap_or_else(|d| panic!("{d:#?}"));
    let c = &loaded.config;
    assert_eq!(c.greet_pause.default, Duration::from_secs(300), "clamped");
    assert_eq!(c.greet_pause.action, portcullis_config::Action::Drop);
    assert_eq!(c.greet_pause.pass_ttl, Duration::ZERO);
    assert_eq!(c.greet_pause.pass_cache_max, 10);
    assert_eq!(
        c.access.file.as_deref(),
        Some(Path::new("/etc/mail/access"))
    );
    assert_eq!(c.access.watch_interval, Duration::ZERO);
    assert!(!c.dns.reverse);
    assert_eq!(
        c.dns.servers,
        vec![
            "127.0.0.1:5353".parse::<SocketAddr>().unwrap(),
            "[::1]:53".parse().unwrap()
        ]
    );
    let clamp = loaded
        .warnings
        .iter()
        .find(|w| w.message.contains("greet_pause.default"))
        .expect("a clamp warning");
    assert_eq!(clamp.line, 4);
    assert!(clamp.message.contains("clamped to 300s"), "{clamp}");
}

#[test]
fn defence_sections_report_bad_values_at_their_lines() {
    let diags = expect_err(
        "[greet_pause]\naction = \"tarpit\"\npass_cache_max = 0\n\
         [access]\nfile = \"\"\n[dns]\nservers = [\"dns.example\"]\ntimeout = \"0s\"\n",
    );
    let lines: Vec<usize> = errors(&diags).iter().map(|d| d.line).collect();
    assert_eq!(lines, vec![2, 3, 5, 7, 8], "{diags:#?}");
}

/// Appended after the section under test, so that section's line numbers are the ones
/// written in the test, and nothing else in the file warns.
const QUIET_TAIL: &str = "\n[server]\nhostname = \"mx.example.test\"\n[local]\nusers = [\"a\"]\n";

#[test]
fn admission_sections_default_when_absent() {
    let loaded = load_str(QUIET_TAIL, "p.toml").unwrap_or_else(|d| panic!("{d:#?}"));
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let c = &loaded.config;
    assert_eq!(
        c.rate_control,
        RateControlConfig {
            window: MINUTE,
            terminate: true,
            action: Action::Enforce,
        }
    );
    assert_eq!(
        c.conn_control,
        ConnControlConfig {
            terminate: true,
            action: Action::Enforce,
        }
    );
    assert_eq!(
        c.limits,
        LimitsConfig {
            client_ipv4_prefix: 32,
            client_ipv6_prefix: 64,
            max_tracked_clients: 100_000,
            connection_rate_throttle: 0,
            max_sessions: 0,
            max_sessions_action: MaxSessionsAction::Wait,
            session_delay_budget: MINUTE,
            max_recipients_per_message: 0,
            bad_rcpt_throttle: 0,
            bad_rcpt_throttle_delay: Duration::from_secs(1),
            bad_rcpt_shutdown: 0,
            max_recipients_action: Action::Enforce,
            bad_rcpt_action: Action::Enforce,
            command_abuse_action: Action::Enforce,
            max_noop_commands: 20,
        }
    );
    assert_eq!(c.rate_control, RateControlConfig::default());
    assert_eq!(c.conn_control, ConnControlConfig::default());
    assert_eq!(c.limits, LimitsConfig::default());
    // The embedded default.toml writes the same values out.
    let embedded = embedded_default().unwrap_or_else(|d| panic!("{d:#?}"));
    assert_eq!(embedded.config.rate_control, c.rate_control);
    assert_eq!(embedded.config.conn_control, c.conn_control);
    assert_eq!(embedded.config.limits, c.limits);
    assert_eq!(MaxSessionsAction::Wait.name(), "wait");
    assert_eq!(MaxSessionsAction::Refuse.name(), "refuse");
}

#[test]
fn admission_sections_round_trip() {
    let src = format!(
        "[rate_control]\nwindow = \"12s\"\nterminate = false\naction = \"drop\"\n\
         [conn_control]\nterminate = false\naction = \"ignore\"\n\
         [limits]\nclient_ipv4_prefix = 24\nclient_ipv6_prefix = 48\n\
         max_tracked_clients = 5000\nconnection_rate_throttle = 2\nmax_sessions = 200\n\
         max_sessions_action = \"refuse\"\nsession_delay_budget = \"90s\"\n\
         max_recipients_per_message = 100\nbad_rcpt_throttle = 2\n\
         bad_rcpt_throttle_delay = \"1500ms\"\nbad_rcpt_shutdown = 10\n\
         max_recipients_action = \"drop\"\nbad_rcpt_action = \"ignore\"\n\
         command_abuse_action = \"drop\"\nmax_noop_commands = 0\n{QUIET_TAIL}"
    );
    let loaded = load_str(&src, "p.toml").unwrap_or_else(|d| panic!("{d:#?}"));
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let c = &loaded.config;
    assert_eq!(
        c.rate_control,
        RateControlConfig {
            window: Duration::from_secs(12),
            terminate: false,
            action: Action::Drop,
        }
    );
    assert_eq!(
        c.conn_control,
        ConnControlConfig {
            terminate: false,
            action: Action::Ignore,
        }
    );
    assert_eq!(
        c.limits,
        LimitsConfig {
            client_ipv4_prefix: 24,
            client_ipv6_prefix: 48,
            max_tracked_clients: 5000,
            connection_rate_throttle: 2,
            max_sessions: 200,
            max_sessions_action: MaxSessionsAction::Refuse,
            session_delay_budget: Duration::from_secs(90),
            max_recipients_per_message: 100,
            bad_rcpt_throttle: 2,
            bad_rcpt_throttle_delay: Duration::from_millis(1500),
            bad_rcpt_shutdown: 10,
            max_recipients_action: Action::Drop,
            bad_rcpt_action: Action::Ignore,
            command_abuse_action: Action::Drop,
            max_noop_commands: 0,
        }
    );
}

#[test]
fn admission_bounds_are_inclusive() {
    // (section text, check on the loaded config): each loads without any diagnostic.
    type Check = fn(&portcullis_config::Config) -> bool;
    let table: &[(&str, Check)] = &[
        ("[rate_control]\nwindow = \"6s\"\n", |c| {
            c.rate_control.window == Duration::from_secs(6)
        }),
        ("[rate_control]\nwindow = \"1h\"\n", |c| {
            c.rate_control.window == 60 * MINUTE
        }),
        ("[limits]\nclient_ipv4_prefix = 1\n", |c| {
            c.limits.client_ipv4_prefix == 1
        }),
        ("[limits]\nclient_ipv6_prefix = 128\n", |c| {
            c.limits.client_ipv6_prefix == 128
        }),
        ("[limits]\nmax_tracked_clients = 1\n", |c| {
            c.limits.max_tracked_clients == 1
        }),
        ("[limits]\nmax_tracked_clients = 10000000\n", |c| {
            c.limits.max_tracked_clients == 10_000_000
        }),
        ("[limits]\nmax_sessions = 10\n", |c| {
            c.limits.max_sessions == 10
        }),
        ("[limits]\nconnection_rate_throttle = 4294967295\n", |c| {
            c.limits.connection_rate_throttle == u32::MAX
        }),
        ("[limits]\nsession_delay_budget = \"1h\"\n", |c| {
            c.limits.session_delay_budget == 60 * MINUTE
        }),
        ("[limits]\nsession_delay_budget = \"1ms\"\n", |c| {
            c.limits.session_delay_budget == Duration::from_millis(1)
        }),
        ("[limits]\nmax_recipients_per_message = 1\n", |c| {
            c.limits.max_recipients_per_message == 1
        }),
        ("[limits]\nmax_recipients_per_message = 1000\n", |c| {
            c.limits.max_recipients_per_message == 1000
        }),
        ("[limits]\nbad_rcpt_throttle = 1000000\n", |c| {
            c.limits.bad_rcpt_throttle == 1_000_000
        }),
        ("[limits]\nbad_rcpt_shutdown = 1000000\n", |c| {
            c.limits.bad_rcpt_shutdown == 1_000_000
        }),
        (
            "[limits]\nbad_rcpt_throttle = 1\nbad_rcpt_throttle_delay = \"60s\"\n",
            |c| c.limits.bad_rcpt_throttle_delay == MINUTE,
        ),
        // 0s is silent while the throttle is off.
        ("[limits]\nbad_rcpt_throttle_delay = \"0s\"\n", |c| {
            c.limits.bad_rcpt_throttle_delay.is_zero()
        }),
        ("[limits]\nmax_noop_commands = 0\n", |c| {
            c.limits.max_noop_commands == 0
        }),
        ("[limits]\nmax_noop_commands = 10000\n", |c| {
            c.limits.max_noop_commands == 10_000
        }),
    ];
    for &(section, check) in table {
        let src = format!("{section}{QUIET_TAIL}");
        let loaded = load_str(&src, "p.toml").unwrap_or_else(|d| panic!("{section:?}: {d:#?}"));
        assert!(
            loaded.warnings.is_empty(),
            "{section:?}: {:#?}",
            loaded.warnings
        );
        assert!(check(&loaded.config), "{section:?}: {:?}", loaded.config);
    }
}

#[test]
fn admission_bad_values_at_their_lines() {
    // (section text, line, message fragment): exactly one error each.
    let table: &[(&str, usize, &str)] = &[
        (
            "[rate_control]\nterminate = true\nwindow = \"5s\"\n",
            3,
            "`rate_control.window` = 5s is out of range: it must be between 6s and 1h; \
             connections are counted in 6 clock-aligned buckets of window/6",
        ),
        (
            "[rate_control]\nwindow = \"0s\"\n",
            2,
            "`rate_control.window` = 0s is out of range",
        ),
        (
            "[rate_control]\nwindow = \"61m\"\n",
            2,
            "`rate_control.window` = 1h 1m is out of range",
        ),
        (
            "[rate_control]\nwindow = \"a minute\"\n",
            2,
            "`rate_control.window`: \"a minute\" is not a duration",
        ),
        (
            "[rate_control]\naction = \"tarpit\"\n",
            2,
            "`rate_control.action`: unknown variant `tarpit`",
        ),
        (
            "[conn_control]\naction = \"reject\"\n",
            2,
            "`conn_control.action`: unknown variant `reject`",
        ),
        (
            "[conn_control]\nwindow = \"60s\"\n",
            2,
            "`conn_control.window`: unknown field `window`",
        ),
        (
            "[limits]\nclient_ipv4_prefix = 33\n",
            2,
            "`limits.client_ipv4_prefix` must be between 0 and 32, not 33",
        ),
        (
            "[limits]\n\nclient_ipv6_prefix = 129\n",
            3,
            "`limits.client_ipv6_prefix` must be between 0 and 128, not 129",
        ),
        (
            "[limits]\nmax_tracked_clients = 0\n",
            2,
            "`limits.max_tracked_clients` must be between 1 and 10000000, not 0",
        ),
        (
            "[limits]\nmax_tracked_clients = 10000001\n",
            2,
            "`limits.max_tracked_clients` must be between 1 and 10000000, not 10000001",
        ),
        (
            "[limits]\nconnection_rate_throttle = 4294967296\n",
            2,
            "`limits.connection_rate_throttle` must be between 0 and 4294967295, not 4294967296",
        ),
        (
            "[limits]\nmax_sessions = 4294967296\n",
            2,
            "`limits.max_sessions` must be between 0 and 4294967295, not 4294967296",
        ),
        (
            "[limits]\nmax_sessions = -1\n",
            2,
            "`limits.max_sessions`: invalid value",
        ),
        (
            "[limits]\nmax_sessions_action = \"block\"\n",
            2,
            "`limits.max_sessions_action`: unknown variant `block`",
        ),
        (
            "[limits]\nsession_delay_budget = \"61m\"\n",
            2,
            "`limits.session_delay_budget` = 1h 1m is out of range: it must be between 0s and 1h",
        ),
        (
            "[limits]\nsession_delay_budget = \"a minute\"\n",
            2,
            "`limits.session_delay_budget`: \"a minute\" is not a duration",
        ),
        (
            "[limits]\nmax_recipients_per_message = 1001\n",
            2,
            "`limits.max_recipients_per_message` must be between 0 and 1000, not 1001: \
             the hard cap is 1000",
        ),
        (
            "[limits]\nmax_recipients_per_message = -1\n",
            2,
            "`limits.max_recipients_per_message`: invalid value",
        ),
        (
            "[limits]\nbad_rcpt_throttle = 1000001\n",
            2,
            "`limits.bad_rcpt_throttle` must be between 0 and 1000000, not 1000001",
        ),
        (
            "[limits]\n\nbad_rcpt_shutdown = 1000001\n",
            3,
            "`limits.bad_rcpt_shutdown` must be between 0 and 1000000, not 1000001",
        ),
        (
            "[limits]\nbad_rcpt_throttle_delay = \"61s\"\n",
            2,
            "`limits.bad_rcpt_throttle_delay` = 1m 1s is out of range: it must be between 0s \
             and 1m",
        ),
        (
            "[limits]\nbad_rcpt_throttle_delay = 1\n",
            2,
            "`limits.bad_rcpt_throttle_delay`: invalid type: integer",
        ),
        (
            "[limits]\n\nmax_noop_commands = 10001\n",
            3,
            "`limits.max_noop_commands` must be between 0 and 10000, not 10001",
        ),
        (
            "[limits]\nmax_noop_commands = -1\n",
            2,
            "`limits.max_noop_commands`: invalid value",
        ),
        (
            "[limits]\nmax_noop_commands = \"20\"\n",
            2,
            "`limits.max_noop_commands`: invalid type: string",
        ),
        (
            "[limits]\nbad_rcpt_action = \"tarpit\"\n",
            2,
            "`limits.bad_rcpt_action`: unknown variant `tarpit`",
        ),
        (
            "[limits]\nmax_recipients_action = \"refuse\"\n",
            2,
            "`limits.max_recipients_action`: unknown variant `refuse`",
        ),
        (
            "[limits]\ncommand_abuse_action = true\n",
            2,
            "`limits.command_abuse_action`: wanted string or table",
        ),
    ];
    assert_one_error_each(table);
}

#[test]
fn admission_errors_all_reported_in_one_pass() {
    let diags = expect_err(
        "[rate_control]\nwindow = \"2h\"\n\
         [limits]\nclient_ipv4_prefix = 40\nclient_ipv6_prefix = 200\n\
         max_tracked_clients = 0\nmax_sessions_action = \"later\"\n\
         max_recipients_per_message = 5000\nbad_rcpt_throttle_delay = \"1h\"\n\
         bad_rcpt_shutdown = -4\n",
    );
    let lines: Vec<usize> = errors(&diags).iter().map(|d| d.line).collect();
    assert_eq!(lines, vec![2, 4, 5, 6, 7, 8, 9, 10], "{diags:#?}");
    assert_eq!(
        errors(&diags)[1].to_string(),
        "p.toml:4:22: error: `limits.client_ipv4_prefix` must be between 0 and 32, not 40"
    );
}

#[test]
fn admission_warnings_at_their_lines() {
    // (section text, expected (line, message fragment) list)
    let table: &[(&str, &[(usize, &str)])] = &[
        (
            "[limits]\nclient_ipv4_prefix = 0\n",
            &[(
                2,
                "`limits.client_ipv4_prefix` = 0 counts every IPv4 client as one",
            )],
        ),
        (
            "[limits]\nmax_sessions = 3\nclient_ipv6_prefix = 0\n",
            &[
                (
                    2,
                    "`limits.max_sessions` = 3 allows only 3 SMTP session(s) at once",
                ),
                (
                    3,
                    "`limits.client_ipv6_prefix` = 0 counts every IPv6 client as one",
                ),
            ],
        ),
        (
            "[limits]\nmax_sessions = 1\n",
            &[(2, "`limits.max_sessions` = 1")],
        ),
        (
            "[limits]\nmax_sessions = 0\nmax_sessions_action = \"refuse\"\n",
            &[],
        ),
        (
            "[limits]\n\nsession_delay_budget = \"0s\"\n",
            &[(
                3,
                "`limits.session_delay_budget` = 0s allows no deliberate delay in a session: \
                 every delay becomes a 421",
            )],
        ),
        (
            "[limits]\nbad_rcpt_throttle_delay = \"0s\"\n\nbad_rcpt_throttle = 3\n",
            &[(
                2,
                "`limits.bad_rcpt_throttle_delay` = 0s with `limits.bad_rcpt_throttle` = 3: \
                 the throttle then only logs",
            )],
        ),
        (
            "[limits]\nbad_rcpt_throttle = 0\nbad_rcpt_throttle_delay = \"0s\"\n",
            &[],
        ),
    ];
    for &(section, expected) in table {
        let loaded = load_str(&format!("{section}{QUIET_TAIL}"), "p.toml")
            .unwrap_or_else(|d| panic!("{section:?}: {d:#?}"));
        let got = &loaded.warnings;
        assert_eq!(got.len(), expected.len(), "{section:?}: {got:#?}");
        for (warning, &(line, fragment)) in got.iter().zip(expected) {
            assert_eq!(warning.line, line, "{section:?}: {warning}");
            assert!(
                warning.message.contains(fragment),
                "{section:?}: {:?} !~ {fragment:?}",
                warning.message
            );
        }
    }
}

#[test]
fn load_section_defaults_when_absent() {
    let loaded = load_str(QUIET_TAIL, "p.toml").unwrap_or_else(|d| panic!("{d:#?}"));
    // Sendmail's defaults for this machine's CPUs, whatever their number (the library's
    // unit tests pin the arithmetic with an injected count).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpus = u32::try_from(cpus).unwrap_or(u32::MAX);
    assert_eq!(
        loaded.config.load,
        LoadConfig {
            refuse_la: 12 * cpus,
            delay_la: 0,
            queue_la: 8 * cpus,
            refuse_sessions_pct: 0,
            delay_sessions_pct: 0,
            queue_sessions_pct: 0,
            refuse_lag: Duration::ZERO,
            delay_lag: Duration::ZERO,
            queue_lag: Duration::ZERO,
            loadavg_file: PathBuf::from("/proc/loadavg"),
        }
    );
    assert_eq!(loaded.config.load, LoadConfig::default());
    assert_eq!(loaded.config.load, LoadConfig::sendmail_defaults(cpus));
    let embedded = embedded_default().unwrap_or_else(|d| panic!("{d:#?}"));
    assert_eq!(embedded.config.load, loaded.config.load);
    let auto = "[load]\nrefuse_la = \"auto\"\ndelay_la = \"auto\"\nqueue_la = \"auto\"\n";
    let loaded =
        load_str(&format!("{auto}{QUIET_TAIL}"), "p.toml").unwrap_or_else(|d| panic!("{d:#?}"));
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    assert_eq!(loaded.config.load, LoadConfig::default());
}

#[test]
fn load_section_round_trip() {
    let src = format!(
        "[load]\nrefuse_la = 40\ndelay_la = 30\nqueue_la = 20\n\
         refuse_sessions_pct = 100\ndelay_sessions_pct = 1\nqueue_sessions_pct = 80\n\
         refuse_lag = \"60s\"\ndelay_lag = \"10ms\"\nqueue_lag = \"250ms\"\n\
         loadavg_file = \"/var/lib/lxcfs/proc/loadavg\"\n\
         [limits]\nmax_sessions = 500\n{QUIET_TAIL}"
    );
    let loaded = load_str(&src, "p.toml").unwrap_or_else(|d| panic!("{d:#?}"));
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    assert_eq!(
        loaded.config.load,
        LoadConfig {
            refuse_la: 40,
            delay_la: 30,
            queue_la: 20,
            refuse_sessions_pct: 100,
            delay_sessions_pct: 1,
            queue_sessions_pct: 80,
            refuse_lag: MINUTE,
            delay_lag: Duration::from_millis(10),
            queue_lag: Duration::from_millis(250),
            loadavg_file: PathBuf::from("/var/lib/lxcfs/proc/loadavg"),
        }
    );
}

#[test]
fn load_bounds_are_inclusive() {
    // (section text, check on the loaded config): each loads without any diagnostic.
    type Check = fn(&portcullis_config::Config) -> bool;
    let table: &[(&str, Check)] = &[
        ("[load]\nrefuse_la = 0\ndelay_la = 0\nqueue_la = 0\n", |c| {
            (c.load.refuse_la, c.load.delay_la, c.load.queue_la) == (0, 0, 0)
        }),
        ("[load]\nrefuse_la = 10000\n", |c| {
            c.load.refuse_la == 10_000
        }),
        ("[load]\ndelay_la = 10000\n", |c| c.load.delay_la == 10_000),
        ("[load]\nqueue_la = 10000\n", |c| c.load.queue_la == 10_000),
        (
            // 0 is "off", so it needs no max_sessions.
            "[load]\nrefuse_sessions_pct = 0\ndelay_sessions_pct = 0\nqueue_sessions_pct = 0\n",
            |c| c.load.refuse_sessions_pct == 0,
        ),
        (
            "[load]\nrefuse_sessions_pct = 100\n[limits]\nmax_sessions = 10\n",
            |c| c.load.refuse_sessions_pct == 100,
        ),
        (
            "[load]\nqueue_sessions_pct = 1\n[limits]\nmax_sessions = 10\n",
            |c| c.load.queue_sessions_pct == 1,
        ),
        ("[load]\nrefuse_lag = \"0s\"\n", |c| {
            c.load.refuse_lag.is_zero()
        }),
        ("[load]\nqueue_lag = \"60s\"\n", |c| {
            c.load.queue_lag == MINUTE
        }),
        ("[load]\ndelay_lag = \"10ms\"\n", |c| {
            c.load.delay_lag == Duration::from_millis(10)
        }),
        ("[load]\nloadavg_file = \"loadavg\"\n", |c| {
            c.load.loadavg_file == Path::new("loadavg")
        }),
    ];
    for &(section, check) in table {
        let src = format!("{section}{QUIET_TAIL}");
        let loaded = load_str(&src, "p.toml").unwrap_or_else(|d| panic!("{section:?}: {d:#?}"));
        assert!(
            loaded.warnings.is_empty(),
            "{section:?}: {:#?}",
            loaded.warnings
        );
        assert!(check(&loaded.config), "{section:?}: {:?}", loaded.config);
    }
}

#[test]
fn load_bad_values_at_their_lines() {
    // (section text, line, message fragment): exactly one error each.
    let table: &[(&str, usize, &str)] = &[
        (
            "[load]\nrefuse_la = 10001\n",
            2,
            "`load.refuse_la` must be between 0 and 10000, not 10001",
        ),
        (
            "[load]\ndelay_la = 4294967296\n",
            2,
            "`load.delay_la` must be between 0 and 10000, not 4294967296",
        ),
        (
            "[load]\nqueue_la = -1\n",
            2,
            "`load.queue_la`: invalid value",
        ),
        (
            "[load]\nqueue_la = 1.5\n",
            2,
            "`load.queue_la`: invalid type: floating point",
        ),
        (
            "[load]\ndelay_la = 0\n\nrefuse_la = \"foo\"\n",
            4,
            "`load.refuse_la` must be a number or \"auto\", not \"foo\"",
        ),
        (
            "[load]\nqueue_la = \"8\"\n",
            2,
            "`load.queue_la` must be a number or \"auto\", not \"8\"",
        ),
        (
            "[limits]\nmax_sessions = 100\n[load]\nrefuse_sessions_pct = 101\n",
            4,
            "`load.refuse_sessions_pct` must be between 0 and 100, not 101",
        ),
        (
            "[load]\nrefuse_sessions_pct = 90\n",
            2,
            "`load.refuse_sessions_pct` needs `limits.max_sessions` (it is a percentage of it)",
        ),
        (
            "[load]\n\ndelay_sessions_pct = 50\n[limits]\nmax_sessions = 0\n",
            3,
            "`load.delay_sessions_pct` needs `limits.max_sessions` (it is a percentage of it)",
        ),
        (
            "[load]\nqueue_sessions_pct = 100\n",
            2,
            "`load.queue_sessions_pct` needs `limits.max_sessions` (it is a percentage of it)",
        ),
        (
            "[load]\nrefuse_lag = \"61s\"\n",
            2,
            "`load.refuse_lag` = 1m 1s is out of range: it must be between 0s and 1m",
        ),
        (
            "[load]\ndelay_lag = \"60001ms\"\n",
            2,
            "`load.delay_lag` = 1m 1ms is out of range",
        ),
        (
            "[load]\nqueue_lag = \"soon\"\n",
            2,
            "`load.queue_lag`: \"soon\" is not a duration",
        ),
        (
            "[load]\nqueue_lag = 1\n",
            2,
            "`load.queue_lag`: invalid type: integer",
        ),
        (
            "[load]\nloadavg_file = \"\"\n",
            2,
            "`load.loadavg_file` is empty; give a file",
        ),
        (
            "[load]\nrefuse_la = 12\nrefuse_load = 12\n",
            3,
            "`load.refuse_load`: unknown field `refuse_load`",
        ),
    ];
    assert_one_error_each(table);
}

#[test]
fn load_errors_all_reported_in_one_pass() {
    let diags = expect_err(
        "[load]\nrefuse_la = 20000\nbogus = 1\nqueue_sessions_pct = 5\n\
         refuse_lag = \"2m\"\nloadavg_file = \"\"\n",
    );
    let lines: Vec<usize> = errors(&diags).iter().map(|d| d.line).collect();
    assert_eq!(lines, vec![2, 3, 4, 5, 6], "{diags:#?}");
    assert_eq!(
        errors(&diags)[2].to_string(),
        "p.toml:4:22: error: `load.queue_sessions_pct` needs `limits.max_sessions` \
         (it is a percentage of it)"
    );
}

#[test]
fn load_warnings_at_their_lines() {
    // (section text, expected (line, message fragment) list)
    let table: &[(&str, &[(usize, &str)])] = &[
        (
            "[load]\nrefuse_lag = \"5ms\"\n",
            &[(
                2,
                "`load.refuse_lag` = 5ms is below 10ms, scheduling noise alone will trigger it",
            )],
        ),
        (
            "[load]\ndelay_lag = \"1ms\"\nqueue_lag = \"9ms 999us\"\n",
            &[
                (2, "`load.delay_lag` = 1ms is below 10ms"),
                (3, "`load.queue_lag` = 9ms 999us is below 10ms"),
            ],
        ),
        ("[load]\ndelay_lag = \"0s\"\nqueue_lag = \"10ms\"\n", &[]),
    ];
    for &(section, expected) in table {
        let loaded = load_str(&format!("{section}{QUIET_TAIL}"), "p.toml")
            .unwrap_or_else(|d| panic!("{section:?}: {d:#?}"));
        let got = &loaded.warnings;
        assert_eq!(got.len(), expected.len(), "{section:?}: {got:#?}");
        for (warning, &(line, fragment)) in got.iter().zip(expected) {
            assert_eq!(warning.line, line, "{section:?}: {warning}");
            assert!(
                warning.message.contains(fragment),
                "{section:?}: {:?} !~ {fragment:?}",
                warning.message
            );
        }
    }
}

#[test]
fn session_defence_keys_default_when_absent() {
    let loaded = load_str(QUIET_TAIL, "p.toml").unwrap_or_else(|d| panic!("{d:#?}"));
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let c = &loaded.config;
    assert_eq!(
        c.smtp,
        SmtpConfig {
            bare_lf: BareLf::Reject,
            pipelining: true,
            pipelining_action: Action::Enforce,
            stuffing_action: Action::Enforce,
            open_proxy_action: Action::Enforce,
            delay_checks: DelayChecks::Off,
        }
    );
    assert_eq!(c.smtp, SmtpConfig::default());
    assert_eq!(c.access.action, Action::Enforce);
    assert_eq!(c.access, AccessConfig::default());
    let l = &c.limits;
    assert_eq!(
        (
            l.max_recipients_action,
            l.bad_rcpt_action,
            l.command_abuse_action,
            l.max_noop_commands
        ),
        (Action::Enforce, Action::Enforce, Action::Enforce, 20)
    );
    // The embedded default.toml writes the same values out.
    let embedded = embedded_default().unwrap_or_else(|d| panic!("{d:#?}"));
    assert_eq!(embedded.config.smtp, c.smtp);
    assert_eq!(embedded.config.access, c.access);
    assert_eq!(embedded.config.limits, c.limits);
    assert_eq!(DelayChecks::Off.name(), "false");
    assert_eq!(DelayChecks::Friend.name(), "friend");
    assert_eq!(DelayChecks::Hater.name(), "hater");
}

#[test]
fn session_defence_keys_round_trip() {
    let src = format!(
        "[smtp]\nbare_lf = \"normalize\"\npipelining = false\npipelining_action = \"drop\"\n\
         stuffing_action = \"ignore\"\nopen_proxy_action = \"drop\"\ndelay_checks = \"hater\"\n\
         [access]\naction = \"ignore\"\n{QUIET_TAIL}"
    );
    let loaded = load_str(&src, "p.toml").unwrap_or_else(|d| panic!("{d:#?}"));
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let c = &loaded.config;
    assert_eq!(
        c.smtp,
        SmtpConfig {
            bare_lf: BareLf::Normalize,
            pipelining: false,
            pipelining_action: Action::Drop,
            stuffing_action: Action::Ignore,
            open_proxy_action: Action::Drop,
            delay_checks: DelayChecks::Hater,
        }
    );
    assert_eq!(c.access.action, Action::Ignore);
    // Each action key on its own, so no key is read from another's value.
    type Get = fn(&portcullis_config::Config) -> Action;
    let table: &[(&str, Get)] = &[
        ("[smtp]\npipelining_action", |c| c.smtp.pipelining_action),
        ("[smtp]\nstuffing_action", |c| c.smtp.stuffing_action),
        ("[smtp]\nopen_proxy_action", |c| c.smtp.open_proxy_action),
        ("[access]\naction", |c| c.access.action),
        ("[limits]\nmax_recipients_action", |c| {
            c.limits.max_recipients_action
        }),
        ("[limits]\nbad_rcpt_action", |c| c.limits.bad_rcpt_action),
        ("[limits]\ncommand_abuse_action", |c| {
            c.limits.command_abuse_action
        }),
    ];
    for &(key, get) in table {
        for action in [Action::Enforce, Action::Drop, Action::Ignore] {
            let src = format!("{key} = \"{}\"\n{QUIET_TAIL}", action.name());
            let loaded = load_str(&src, "p.toml").unwrap_or_else(|d| panic!("{src:?}: {d:#?}"));
            assert_eq!(get(&loaded.config), action, "{src:?}");
        }
    }
}

#[test]
fn delay_checks_takes_a_bool_or_friend_or_hater() {
    let table: &[(&str, DelayChecks)] = &[
        ("false", DelayChecks::Off),
        ("true", DelayChecks::Friend),
        ("\"friend\"", DelayChecks::Friend),
        ("\"hater\"", DelayChecks::Hater),
    ];
    for &(value, expected) in table {
        let src = format!("[smtp]\ndelay_checks = {value}\n{QUIET_TAIL}");
        let loaded = load_str(&src, "p.toml").unwrap_or_else(|d| panic!("{value}: {d:#?}"));
        assert!(
            loaded.warnings.is_empty(),
            "{value}: {:#?}",
            loaded.warnings
        );
        assert_eq!(loaded.config.smtp.delay_checks, expected, "{value}");
    }
    let diags = expect_err(&format!(
        "[smtp]\npipelining = true\n\ndelay_checks = \"bogus\"\n{QUIET_TAIL}"
    ));
    let errs = errors(&diags);
    assert_eq!(errs.len(), 1, "{diags:#?}");
    assert_eq!(
        errs[0].to_string(),
        "p.toml:4:16: error: `smtp.delay_checks` must be true, false, \"friend\" or \"hater\", \
         not \"bogus\""
    );
}

#[test]
fn session_defence_bad_values_at_their_lines() {
    // (section text, line, message fragment): exactly one error each.
    let table: &[(&str, usize, &str)] = &[
        (
            "[smtp]\ndelay_checks = \"bogus\"\n",
            2,
            "`smtp.delay_checks` must be true, false, \"friend\" or \"hater\", not \"bogus\"",
        ),
        (
            // Sendmail's arguments are lowercase; so are ours.
            "[smtp]\n\ndelay_checks = \"FRIEND\"\n",
            3,
            "`smtp.delay_checks` must be true, false, \"friend\" or \"hater\", not \"FRIEND\"",
        ),
        (
            "[smtp]\ndelay_checks = 1\n",
            2,
            "`smtp.delay_checks`: invalid type: integer `1`, expected true, false, \"friend\" \
             or \"hater\"",
        ),
        (
            "[smtp]\npipelining = \"yes\"\n",
            2,
            "`smtp.pipelining`: invalid type: string",
        ),
        (
            "[smtp]\npipelining_action = \"reject\"\n",
            2,
            "`smtp.pipelining_action`: unknown variant `reject`",
        ),
        (
            "[smtp]\nstuffing_action = \"tarpit\"\n",
            2,
            "`smtp.stuffing_action`: unknown variant `tarpit`",
        ),
        (
            "[smtp]\nopen_proxy_action = false\n",
            2,
            "`smtp.open_proxy_action`: wanted string or table",
        ),
        (
            "[smtp]\nopen_proxy = \"enforce\"\n",
            2,
            "`smtp.open_proxy`: unknown field `open_proxy`",
        ),
        (
            "[access]\naction = \"reject\"\n",
            2,
            "`access.action`: unknown variant `reject`",
        ),
    ];
    assert_one_error_each(table);
}

#[test]
fn session_defence_errors_all_reported_in_one_pass() {
    let diags = expect_err(
        "[smtp]\npipelining = 1\nstuffing_action = \"no\"\ndelay_checks = \"maybe\"\n\
         [access]\naction = \"x\"\n[limits]\nmax_noop_commands = 20000\n",
    );
    let lines: Vec<usize> = errors(&diags).iter().map(|d| d.line).collect();
    assert_eq!(lines, vec![2, 3, 4, 6, 8], "{diags:#?}");
}

/// docs/config.md shows default.toml under "The built-in default"; the values must agree
/// (comments may differ).
#[test]
fn docs_show_the_embedded_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/config.md");
    let docs = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let block = docs
        .split_once("## The built-in default")
        .and_then(|(_, section)| section.split_once("```toml\n"))
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block)
        .unwrap_or_else(|| panic!("no ```toml block under \"## The built-in default\""));
    let shown: toml::Table = block.parse().unwrap_or_else(|e| panic!("docs block: {e}"));
    let embedded: toml::Table = portcullis_config::DEFAULT_CONFIG
        .parse()
        .unwrap_or_else(|e| panic!("default.toml: {e}"));
    assert_eq!(
        shown, embedded,
        "docs/config.md is out of date with default.toml"
    );
}

#[test]
fn relay_and_routes_round_trip() {
    let src = format!(
        "[relay]\ndomains = [\"Example.NET.\", \".sub.example.org\"]\n\
         networks = [\"127.0.0.0/8\", \"::1\", \"192.0.2.7\"]\n\
         [queue]\nconnections_per_hop = 3\nmax_connections = 40\n\
         [[route]]\ndomain = \"example.net\"\nnext_hop = \"lmtp:[127.0.0.1]:24\"\n\
         [[route]]\ndomain = \".sub.example.org\"\nnext_hop = \"smtp:[192.0.2.1]:2600\"\n\
         [[route]]\ndomain = \"*\"\nnext_hop = \"lmtp:unix:/run/lmtp\"\n{QUIET_TAIL}"
    );
    let loaded = load_str(&src, "p.toml").unwrap_or_else(|d| panic!("{d:#?}"));
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let c = &loaded.config;
    assert_eq!(c.relay.domains, vec!["example.net", ".sub.example.org"]);
    let nets: Vec<String> = c.relay.networks.iter().map(ToString::to_string).collect();
    assert_eq!(nets, vec!["127.0.0.0/8", "::1/128", "192.0.2.7/32"]);
    assert_eq!(
        (c.queue.connections_per_hop, c.queue.max_connections),
        (3, 40)
    );
    let hop = |d: &str| c.routes.lookup(d).map(ToString::to_string);
    assert_eq!(hop("example.net").as_deref(), Some("lmtp:[127.0.0.1]:24"));
    assert_eq!(
        hop("a.sub.example.org").as_deref(),
        Some("smtp:[192.0.2.1]:2600")
    );
    assert_eq!(
        hop("elsewhere.test").as_deref(),
        Some("lmtp:unix:/run/lmtp")
    );
}

#[test]
fn relay_and_routes_default_to_nothing() {
    let loaded = load_str(QUIET_TAIL, "p.toml").unwrap_or_else(|d| panic!("{d:#?}"));
    let c = &loaded.config;
    assert!(c.relay.domains.is_empty() && c.relay.networks.is_empty());
    assert!(c.routes.is_empty());
    assert_eq!(
        (c.queue.connections_per_hop, c.queue.max_connections),
        (10, 100)
    );
}

#[test]
fn relay_and_route_bad_values_at_their_lines() {
    let table: &[(&str, usize, &str)] = &[
        (
            "[relay]\ndomains = [\"ok.test\",\n  \"bad..test\"]\n",
            3,
            "`relay.domains`: \"bad..test\"",
        ),
        (
            "[relay]\nnetworks = [\"10.0.0.1/8\"]\n",
            2,
            "did you mean 10.0.0.0/8?",
        ),
        (
            "[relay]\nnetworks = [\"example.net\"]\n",
            2,
            "is not an address or a network",
        ),
        (
            "[[route]]\ndomain = \"example.net\"\nnext_hop = \"smtp:example.net:99999\"\n",
            3,
            "`route.next_hop`",
        ),
        (
            "[[route]]\ndomain = \"example.net\"\nnext_hop = \"ftp:[127.0.0.1]\"\n",
            3,
            "unknown protocol",
        ),
        (
            "[[route]]\ndomain = \"example.net\"\nnext_hop = \"smtp:[127.0.0.1]\"\n\
             [[route]]\ndomain = \"EXAMPLE.net\"\nnext_hop = \"smtp:[127.0.0.2]\"\n",
            5,
            "has a route already",
        ),
        ("[[route]]\ndomain = \"example.net\"\n", 1, "needs both"),
        (
            "[queue]\nconnections_per_hop = 0\n",
            2,
            "between 1 and 1000",
        ),
    ];
    assert_one_error_each(table);
}

#[test]
fn relay_warnings_at_their_lines() {
    let src = format!(
        "[relay]\nnetworks = [\"0.0.0.0/0\"]\n\
         [[route]]\ndomain = \"localhost\"\nnext_hop = \"smtp:[127.0.0.1]\"\n{QUIET_TAIL}\
         domains = [\"localhost\"]\n"
    );
    let loaded = load_str(&src, "p.toml").unwrap_or_else(|d| panic!("{d:#?}"));
    let lines: Vec<(usize, &str)> = loaded
        .warnings
        .iter()
        .map(|w| (w.line, w.message.as_str()))
        .collect();
    assert!(
        lines
            .iter()
            .any(|(l, m)| *l == 2 && m.contains("open relay")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|(l, m)| *l == 4 && m.contains("delivered to Maildir")),
        "{lines:?}"
    );
}

#[test]
fn summary_keys_default_when_absent() {
    let loaded = load_str(QUIET_TAIL, "p.toml").unwrap_or_else(|d| panic!("{d:#?}"));
    let s = loaded.config.log.summaries;
    assert_eq!(
        (s.interval, s.after, s.top),
        (Duration::from_secs(60), 5, 5)
    );
    assert!(s.enabled());
    assert_eq!(s, SummaryConfig::default());
    let embedded = embedded_default().unwrap_or_else(|d| panic!("{d:#?}"));
    assert_eq!(embedded.config.log.summaries, s);
}

#[test]
fn summary_keys_round_trip() {
    // (text, interval in ms, after, top)
    let table: &[(&str, u64, u32, u32)] = &[
        ("summary_interval = \"0s\"", 0, 5, 5),
        ("summary_interval = \"1s\"", 1000, 5, 5),
        (
            "summary_interval = \"3h\"\nsummary_after = 0",
            3 * 3_600_000,
            0,
            5,
        ),
        (
            "summary_interval = \"1d\"\nsummary_after = 10000",
            86_400_000,
            10_000,
            5,
        ),
        ("summary_top = 0", 60_000, 5, 0),
        ("summary_top = 50\nsummary_after = 1", 60_000, 1, 50),
    ];
    for &(text, ms, after, top) in table {
        let src = format!("[log]\n{text}\n{QUIET_TAIL}");
        let loaded = load_str(&src, "p.toml").unwrap_or_else(|d| panic!("{src:?}: {d:#?}"));
        assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
        let s = loaded.config.log.summaries;
        assert_eq!(
            (s.interval, s.after, s.top),
            (Duration::from_millis(ms), after, top),
            "{src:?}"
        );
        assert_eq!(s.enabled(), ms > 0, "{src:?}");
    }
}

#[test]
fn summary_bad_values_at_their_lines() {
    let table: &[(&str, usize, &str)] = &[
        (
            "[log]\nsummary_interval = \"500ms\"\n",
            2,
            "`log.summary_interval` = 500ms is too short: give \"0s\" (off) or at least 1s",
        ),
        (
            "[log]\n\nsummary_interval = \"2d\"\n",
            3,
            "`log.summary_interval` = 2days is out of range: it must be between 0s and 1day",
        ),
        (
            "[log]\nsummary_interval = \"often\"\n",
            2,
            "`log.summary_interval`: \"often\" is not a duration",
        ),
        (
            "[log]\nsummary_interval = 60\n",
            2,
            "`log.summary_interval`: invalid type: integer `60`",
        ),
        (
            "[log]\nsummary_after = 10001\n",
            2,
            "`log.summary_after` must be between 0 and 10000, not 10001",
        ),
        (
            "[log]\nsummary_after = -1\n",
            2,
            "`log.summary_after`: invalid value: integer `-1`",
        ),
        (
            "[log]\nformat = \"json\"\nsummary_top = 51\n",
            3,
            "`log.summary_top` must be between 0 and 50, not 51",
        ),
        (
            "[log]\nsummary_every = \"1m\"\n",
            2,
            "`log.summary_every`: unknown field `summary_every`",
        ),
    ];
    assert_one_error_each(table);
}

#[test]
fn metrics_listen_on_a_server_listen_address_is_an_error() {
    let config = |metrics: &str, server: &str| {
        format!(
            "[metrics]\nlisten = \"{metrics}\"\n[server]\nhostname = \"mx.example.test\"\n\
             listen = [\"{server}\"]\n[local]\nusers = [\"a\"]\n"
        )
    };
    // The same address, or one a wildcard of the same family covers: the server could not
    // bind both, and stopped at its start with no file:line.
    for (metrics, server) in [
        ("127.0.0.1:2525", "127.0.0.1:2525"),
        ("127.0.0.1:2525", "0.0.0.0:2525"),
        ("0.0.0.0:2525", "127.0.0.1:2525"),
        ("[::1]:2525", "[::]:2525"),
    ] {
        let diags = expect_err(&config(metrics, server));
        let errs = errors(&diags);
        assert_eq!(errs.len(), 1, "{metrics} {server}: {diags:#?}");
        assert_eq!(errs[0].line, 2, "{}", errs[0]);
        assert!(
            errs[0].message.contains("also in `server.listen`"),
            "{}",
            errs[0].message
        );
    }
    // Another port, or the other family (IPv6 sockets are IPv6-only), is fine.
    for (metrics, server) in [
        ("127.0.0.1:9525", "127.0.0.1:2525"),
        ("[::1]:2525", "0.0.0.0:2525"),
    ] {
        let src = config(metrics, server);
        load_str(&src, "p.toml").unwrap_or_else(|d| panic!("{src:?}: {d:#?}"));
    }
}

/// A CA certificate in PEM, made by rcgen.
fn ca_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap_or_else(|e| panic!("rcgen: {e}"));
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap_or_else(|e| panic!("rcgen: {e}"));
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .self_signed(&key)
        .unwrap_or_else(|e| panic!("rcgen: {e}"))
        .pem()
}

#[test]
fn route_tls_settings_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    // Two CAs in one bundle, with text around them (as in the system's bundles).
    let bundle = format!("# test CAs\n{}\nsome text\n{}", ca_pem(), ca_pem());
    let ca = write(dir.path(), "ca.pem", &bundle);
    let src = format!(
        "[[route]]\ndomain = \"example.net\"\nnext_hop = \"smtp:[mx.example.net]\"\n\
         verify = true\nca_file = \"{}\"\n\
         [[route]]\ndomain = \"example.com\"\nnext_hop = \"smtp:[mx.example.net]\"\n\
         verify = true\nca_file = \"{}\"\n\
         [[route]]\ndomain = \"example.org\"\nnext_hop = \"smtp:example.org\"\nverify = true\n\
         [[route]]\ndomain = \"*\"\nnext_hop = \"lmtp:unix:/run/lmtp\"\n{QUIET_TAIL}",
        ca.display(),
        ca.display()
    );
    let loaded = load_str(&src, "p.toml").unwrap_or_else(|d| panic!("{d:#?}"));
    let routes = &loaded.config.routes;
    let tls = |hop: &str| {
        routes
            .tls_for(&portcullis_config::next_hop::NextHop::parse(hop).unwrap())
            .cloned()
    };
    let net = tls("smtp:[mx.example.net]").unwrap();
    assert!(net.verify);
    let ca_file = net.ca_file.unwrap();
    assert_eq!(ca_file.certs.len(), 2);
    assert_eq!(ca_file.path, ca);
    // verify without ca_file: the system's anchors.
    let org = tls("smtp:example.org").unwrap();
    assert!(org.verify && org.ca_file.is_none());
    // Defaults: opportunistic.
    assert_eq!(tls("lmtp:unix:/run/lmtp"), Some(Default::default()));
    assert_eq!(tls("smtp:elsewhere.test"), None);
}

#[test]
fn route_tls_bad_values_at_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = write(dir.path(), "not.pem", "just some text\n");
    let broken = write(
        dir.path(),
        "broken.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    );
    let not_a_cert = write(
        dir.path(),
        "junk.pem",
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    );
    let ok = write(dir.path(), "ok.pem", &ca_pem());
    let missing = dir.path().join("missing.pem");
    let route = |extra: &str| {
        format!("[[route]]\ndomain = \"example.net\"\nnext_hop = \"smtp:[192.0.2.1]\"\n{extra}")
    };
    let ca = |p: &Path| format!("ca_file = \"{}\"\n", p.display());
    let table: Vec<(String, usize, &str)> = vec![
        (route(&ca(&missing)), 4, "`route.ca_file`: cannot read"),
        (route(&ca(&not_pem)), 4, "holds no PEM certificate"),
        (route(&ca(&broken)), 4, "is not valid PEM"),
        (route(&ca(&not_a_cert)), 4, "certificate 1 in"),
        (route("verify = \"yes\"\n"), 4, "bool"),
        (
            "[[route]]\ndomain = \"example.net\"\nnext_hop = \"lmtp:unix:/run/lmtp\"\n\
             verify = true\n"
                .to_owned(),
            4,
            "is a Unix socket on this host",
        ),
        (
            format!(
                "[[route]]\ndomain = \"example.net\"\nnext_hop = \"lmtp:unix:/run/lmtp\"\n{}",
                ca(&ok)
            ),
            4,
            "is a Unix socket on this host",
        ),
        (
            format!(
                "{}[[route]]\ndomain = \"example.com\"\nnext_hop = \"smtp:[192.0.2.1]:25\"\n",
                route("verify = true\n")
            ),
            5,
            "is also the next hop of the route for example.net",
        ),
    ];
    let table: Vec<(&str, usize, &str)> =
        table.iter().map(|(s, l, f)| (s.as_str(), *l, *f)).collect();
    assert_one_error_each(&table);
}
