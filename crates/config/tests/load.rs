//! End-to-end tests of the public loading API: files on disk, `users_file` merging, the
//! rendered diagnostics the `check-config` command prints.
//! Must not: depend on the machine's host name (every config here sets `server.hostname`,
//! except the embedded-default test, which only asserts the absence of errors).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis_config::{
    BareLf, Diagnostic, LogDestination, LogFormat, Severity, embedded_default, load_file, load_str,
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
