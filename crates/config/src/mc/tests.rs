//! Table tests of the whole translation: `.mc` text in; TOML keys, m4's texts and our
//! diagnostics out. Every TOML written must load without errors, whatever the input
//! (including random bytes and random macro soup, by proptest).

use proptest::prelude::*;

use super::*;

fn fqdn() -> Result<String, String> {
    Ok("mx.example.test".to_owned())
}

fn tr(src: &str) -> Translation {
    translate(src.as_bytes(), "sendmail.mc", &McOptions::default())
}

/// The TOML must load as a configuration without errors.
fn assert_loads(t: &Translation) {
    if let Err(diags) = crate::load_with(&t.toml, "out.toml", &fqdn, 2) {
        panic!("the translation does not load: {diags:#?}\n{}", t.toml);
    }
}

/// The value of `section.key` as TOML text, or None.
fn get(t: &Translation, path: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(&t.toml).unwrap_or_else(|e| panic!("{e}\n{}", t.toml));
    let (section, key) = path.split_once('.').unwrap();
    table.get(section)?.get(key).map(ToString::to_string)
}

fn has_diag(t: &Translation, line: usize, kind: McKind, fragment: &str) -> bool {
    t.diagnostics
        .iter()
        .any(|d| d.line == line && d.kind == kind && d.message.contains(fragment))
}

const GP_BEFORE: &str = "*** WARNING: FEATURE(`greet_pause') before FEATURE(`access_db')\n\tgreet_pause will not use access_db!";
const GP_REQUIRES: &str = "*** ERROR: FEATURE(`greet_pause') requires FEATURE(`access_db')\n";

#[test]
fn m4_ordering_texts_are_exact_and_in_m4_order() {
    // (mc, m4's stderr exactly, errors expected)
    let table: &[(&str, &str, bool)] = &[
        (
            "FEATURE(`access_db')\nFEATURE(`greet_pause', `5000')\n",
            "",
            false,
        ),
        (
            "FEATURE(`greet_pause', `5000')\nFEATURE(`access_db')\n",
            GP_BEFORE,
            false,
        ),
        ("FEATURE(`greet_pause', `5000')\n", "", false),
        ("FEATURE(`greet_pause')\n", GP_REQUIRES, true),
        (
            "FEATURE(`greet_pause')\nFEATURE(`access_db')\n",
            "*** ERROR: FEATURE(`greet_pause') requires FEATURE(`access_db')\n*** WARNING: FEATURE(`greet_pause') before FEATURE(`access_db')\n\tgreet_pause will not use access_db!",
            true,
        ),
        (
            "FEATURE(`ratecontrol', `nodelay', `kill')\nFEATURE(`conncontrol')\nFEATURE(`access_db')\n",
            "*** ERROR: FEATURE(`ratecontrol') requires FEATURE(`access_db')\n*** ERROR: FEATURE(`conncontrol') requires FEATURE(`access_db')\n",
            true,
        ),
        (
            // The nodelay text has no newline in Sendmail's file: the next one follows on.
            "FEATURE(`access_db')\nFEATURE(`ratecontrol', `nodelay', `kill')\n\
             FEATURE(`conncontrol', `foo', `terminate')\nFEATURE(`delay_checks', `xyz')\n\
             FEATURE(`access_db', `hash -o /etc/mail/access')\n",
            "*** ERROR: FEATURE(`ratecontrol', `nodelay') requires FEATURE(`delay_checks')*** ERROR: FEATURE(`ratecontrol'): unknown argument \"kill\"\n*** ERROR: unknown parameter \"foo\" for FEATURE(`conncontrol')*** ERROR: illegal argument _ARG_ for FEATURE(delay_checks)\n*** WARNING: missing -T<TMPF> in argument of FEATURE(`access_db', hash -o /etc/mail/access)\n",
            true,
        ),
        (
            "FEATURE(`access_db')\nFEATURE(`delay_checks', `friend')\n\
             FEATURE(`ratecontrol', `NoDelay', `terminate')\n",
            "",
            false,
        ),
        (
            "MAILER(`local')\nFEATURE(`access_db')\n",
            "*** ERROR: FEATURE() should be before MAILER()\n",
            true,
        ),
        (
            // A second access_db after greet_pause warns again, as m4 re-reads the file.
            "FEATURE(`access_db')\nFEATURE(`greet_pause', `1000')\nFEATURE(`access_db')\n",
            GP_BEFORE,
            false,
        ),
        // proto.m4's checks come last, in its order.
        (
            "FEATURE(`delay_checks', `friend')\nFEATURE(`delay_checks', `hater')\n",
            "*** ERROR: FEATURE(`delay_checks', `argument') requires FEATURE(`access_db')\n*** ERROR: define either Hater or Friend -- not both.\n",
            true,
        ),
    ];
    for &(src, m4, errors) in table {
        // OSTYPE on line 1 too, so proto.m4's "No system type" check stays quiet.
        let t = tr(&format!("OSTYPE(`linux'){src}"));
        assert_eq!(t.m4_stderr, m4, "{src}");
        assert_eq!(t.has_errors(), errors, "{src}: {:#?}", t.diagnostics);
        assert_loads(&t);
    }
}

#[test]
fn a_missing_ostype_is_m4s_error_but_only_our_warning() {
    let t = tr("FEATURE(`greet_pause', `1000')\n");
    assert_eq!(
        t.m4_stderr,
        "*** ERROR: No system type defined (use OSTYPE macro)\n"
    );
    assert!(!t.has_errors());
    assert!(has_diag(&t, 1, McKind::Warning, "No system type"));
    // After a malformed input m4 stops: no end-of-file checks.
    let t = tr("FEATURE(`greet_pause");
    assert_eq!(t.m4_stderr, "");
}

#[test]
fn greet_pause_values() {
    let table: &[(&str, &str)] = &[
        (
            "FEATURE(`access_db')FEATURE(`greet_pause', `5000')",
            "\"5s\"",
        ),
        (
            "FEATURE(`access_db')FEATURE(`greet_pause', `1500')",
            "\"1s 500ms\"",
        ),
        (
            "FEATURE(`access_db')FEATURE(`greet_pause', `700')dnl",
            "\"700ms\"",
        ),
        ("FEATURE(access_db)\nFEATURE(`greet_pause',5000)", "\"5s\""),
        (
            "FEATURE(`access_db')FEATURE(`greet_pause', `400000')",
            "\"5m\"",
        ),
        (
            "FEATURE(`access_db')FEATURE(`greet_pause', `abc')",
            "\"0s\"",
        ),
        ("FEATURE(`access_db')FEATURE(`greet_pause', `-5')", "\"0s\""),
        ("FEATURE(`access_db')FEATURE(`greet_pause')", "\"0s\""),
        ("FEATURE(`access_db')", "\"0s\""),
        // The first of two answers in Sendmail.
        (
            "FEATURE(`greet_pause', `1000')\nFEATURE(`greet_pause', `2000')",
            "\"1s\"",
        ),
    ];
    for &(src, want) in table {
        let t = tr(src);
        assert_eq!(
            get(&t, "greet_pause.default").as_deref(),
            Some(want),
            "{src}\n{}",
            t.toml
        );
        assert_loads(&t);
    }
    let t = tr("FEATURE(`greet_pause', `5000')\nFEATURE(`access_db')\n");
    assert!(t.toml.contains("ignoring GreetPause:"), "{}", t.toml);
    assert!(has_diag(&t, 1, McKind::Warning, "Portcullis reads them"));
    let t = tr("FEATURE(`access_db')FEATURE(`greet_pause', `abc')");
    assert!(has_diag(&t, 1, McKind::Warning, "reads it as 0 (strtol)"));
}

#[test]
fn controls() {
    // (mc, rate_control.terminate, rate_control.action, a warning about RCPT time)
    let table: &[(&str, Option<&str>, Option<&str>, bool)] = &[
        (
            "FEATURE(`access_db')FEATURE(`ratecontrol', ,`terminate')",
            Some("true"),
            None,
            false,
        ),
        (
            "FEATURE(`access_db')FEATURE(`ratecontrol')",
            Some("false"),
            None,
            false,
        ),
        (
            "FEATURE(`access_db')FEATURE(`ratecontrol', , `kill')",
            Some("false"),
            None,
            false,
        ),
        (
            "FEATURE(`ratecontrol', ,`terminate')",
            None,
            Some("\"ignore\""),
            false,
        ),
        ("FEATURE(`access_db')", None, Some("\"ignore\""), false),
        ("", None, None, false),
        (
            "FEATURE(`access_db')FEATURE(`delay_checks')FEATURE(`ratecontrol', ,`terminate')",
            Some("true"),
            None,
            true,
        ),
        (
            "FEATURE(`access_db')FEATURE(`delay_checks')FEATURE(`ratecontrol', `nodelay',`terminate')",
            Some("true"),
            None,
            false,
        ),
        (
            // delay_checks after the feature still delays the check (proto.m4 decides last).
            "FEATURE(`access_db')FEATURE(`ratecontrol', `nodelay',`terminate')FEATURE(`delay_checks')",
            Some("true"),
            None,
            true,
        ),
    ];
    for &(src, terminate, action, rcpt_warning) in table {
        let t = tr(src);
        assert_eq!(
            get(&t, "rate_control.terminate").as_deref(),
            terminate,
            "{src}"
        );
        assert_eq!(get(&t, "rate_control.action").as_deref(), action, "{src}");
        let warned = t
            .diagnostics
            .iter()
            .any(|d| d.message.contains("at each RCPT"));
        assert_eq!(warned, rcpt_warning, "{src}: {:#?}", t.diagnostics);
        assert_loads(&t);
        // conncontrol reads the same way.
        let cc = tr(&src.replace("ratecontrol", "conncontrol"));
        assert_eq!(
            get(&cc, "conn_control.terminate").as_deref(),
            terminate,
            "{src}"
        );
        assert_eq!(get(&cc, "conn_control.action").as_deref(), action, "{src}");
        assert_loads(&cc);
    }
}

#[test]
fn defines_and_units() {
    // (define's name, value, key, value written)
    let table: &[(&str, &str, &str, &str)] = &[
        (
            "confCONNECTION_RATE_THROTTLE",
            "2",
            "limits.connection_rate_throttle",
            "2",
        ),
        (
            "confCONNECTION_RATE_THROTTLE",
            "-1",
            "limits.connection_rate_throttle",
            "0",
        ),
        (
            "confCONNECTION_RATE_WINDOW_SIZE",
            "12s",
            "rate_control.window",
            "\"12s\"",
        ),
        (
            "confCONNECTION_RATE_WINDOW_SIZE",
            "120",
            "rate_control.window",
            "\"2m\"",
        ),
        (
            "confCONNECTION_RATE_WINDOW_SIZE",
            "3s",
            "rate_control.window",
            "\"1m\"",
        ),
        (
            "confCONNECTION_RATE_WINDOW_SIZE",
            "2h",
            "rate_control.window",
            "\"1h\"",
        ),
        (
            "confMAX_RCPTS_PER_MESSAGE",
            "3",
            "limits.max_recipients_per_message",
            "3",
        ),
        (
            "confMAX_RCPTS_PER_MESSAGE",
            "5000",
            "limits.max_recipients_per_message",
            "1000",
        ),
        (
            "confBAD_RCPT_THROTTLE",
            "2",
            "limits.bad_rcpt_throttle",
            "2",
        ),
        (
            "confMAX_DAEMON_CHILDREN",
            "500",
            "limits.max_sessions",
            "500",
        ),
        ("confQUEUE_LA", "5", "load.queue_la", "5"),
        ("confREFUSE_LA", "20", "load.refuse_la", "20"),
        ("confDELAY_LA", "1", "load.delay_la", "1"),
        (
            "confMAX_MESSAGE_SIZE",
            "10000000",
            "server.max_message_bytes",
            "10000000",
        ),
        (
            "confMAX_MESSAGE_SIZE",
            "10M",
            "server.max_message_bytes",
            "10",
        ),
        (
            "confDOMAIN_NAME",
            "mx.example.test",
            "server.hostname",
            "\"mx.example.test\"",
        ),
        (
            "confDOMAIN_NAME",
            "mx.example.test.",
            "server.hostname",
            "\"mx.example.test\"",
        ),
        ("confTO_COMMAND", "5s", "timeouts.command", "\"5s\""),
        ("confTO_COMMAND", "5", "timeouts.command", "\"5m\""),
        (
            "confTO_DATABLOCK",
            "1h30m",
            "timeouts.datablock",
            "\"1h 30m\"",
        ),
        ("confTO_INITIAL", "30s", "timeouts.initial", "\"30s\""),
        ("confTO_QUIT", "2m", "timeouts.quit", "\"2m\""),
        ("confTO_STARTTLS", "2m", "timeouts.starttls", "\"2m\""),
        ("confTO_QUEUERETURN", "5", "queue.lifetime", "\"5d\""),
        ("confTO_QUEUERETURN", "1w", "queue.lifetime", "\"7d\""),
        (
            "confTO_QUEUERETURN_NORMAL",
            "3d",
            "queue.lifetime",
            "\"3d\"",
        ),
        ("confMIN_QUEUE_AGE", "30m", "queue.retry_min", "\"30m\""),
        (
            "confMAX_QUEUE_CHILDREN",
            "20",
            "queue.max_connections",
            "20",
        ),
        (
            "confMAX_NOOP_COMMANDS",
            "20",
            "limits.max_noop_commands",
            "20",
        ),
    ];
    for &(name, value, key, want) in table {
        let src = format!("define(`{name}', `{value}')dnl\n");
        let t = tr(&src);
        assert_eq!(get(&t, key).as_deref(), Some(want), "{src}\n{}", t.toml);
        assert!(!t.has_errors(), "{src}: {:#?}", t.diagnostics);
        assert_loads(&t);
    }
    // Not translated, each with its reason; never an error.
    let table: &[(&str, &str, &str)] = &[
        ("confTO_CONNECT", "30s", "client side"),
        ("confTO_ICONNECT", "15s", "client side"),
        ("confTO_QUEUEWARN", "4h", "no \"warning"),
        ("confTO_QUEUERETURN_URGENT", "1d", "no message priorities"),
        ("confTO_IDENT", "0s", "IDENT"),
        ("confTO_AUTH", "10m", "no AUTH"),
        ("confTO_COMMAND", "0", "0 turns this wait off"),
        ("confLOG_LEVEL", "9", "no log level"),
        ("confMAX_MESSAGE_SIZE", "0", "no limit in Sendmail"),
        ("confDOMAIN_NAME", "$w.$m", "Sendmail macros"),
        ("confDOMAIN_NAME", "bad_name", "only letters"),
        ("confTO_QUEUEWARN_DSN", "", "empty value"),
        ("SMART_HOST", "relay.example.net", "[[route]]"),
    ];
    for &(name, value, reason) in table {
        let src = format!("define(`{name}', `{value}')\n");
        let t = tr(&src);
        assert!(
            has_diag(&t, 1, McKind::NotTranslated, reason),
            "{src}: {:#?}",
            t.diagnostics
        );
        assert!(!t.has_errors(), "{src}");
        assert!(
            t.toml.contains("# Not translated from sendmail.mc:"),
            "{}",
            t.toml
        );
        assert_loads(&t);
    }
    // Values Sendmail itself rejects are errors, with their line.
    for src in [
        "\ndefine(`confTO_COMMAND', `5x')",
        "\ndefine(`confCONNECTION_RATE_WINDOW_SIZE',`secs')",
    ] {
        let t = tr(src);
        assert!(
            t.diagnostics
                .iter()
                .any(|d| d.line == 2 && d.kind == McKind::Error),
            "{src}"
        );
        assert_loads(&t);
    }
}

#[test]
fn access_db_and_listen() {
    let t = tr("FEATURE(`access_db', `hash -T<TMPF> -o /etc/mail/access.db')\n");
    assert_eq!(
        get(&t, "access.file").as_deref(),
        Some("\"/etc/mail/access\"")
    );
    assert!(
        t.toml.contains("-T<TMPF>: Sendmail answers 4xx"),
        "{}",
        t.toml
    );
    assert!(
        t.toml.contains("-o: Sendmail runs without the map"),
        "{}",
        t.toml
    );
    let t = translate(
        b"FEATURE(`access_db')",
        "sendmail.mc",
        &McOptions {
            access_file: Some("/etc/portcullis/access".into()),
        },
    );
    assert_eq!(
        get(&t, "access.file").as_deref(),
        Some("\"/etc/portcullis/access\"")
    );
    let t = tr("FEATURE(`access_db', `LDAP')");
    assert_eq!(get(&t, "access.file"), None);
    assert!(has_diag(&t, 1, McKind::NotTranslated, "only file maps"));

    let t = tr("");
    assert_eq!(
        get(&t, "server.listen").as_deref(),
        Some("[\"0.0.0.0:25\"]")
    );
    let t = tr("DAEMON_OPTIONS(`Port=smtp,Addr=127.0.0.1, Name=MTA')dnl\n\
                DAEMON_OPTIONS(`Family=inet6, Name=MTA-v6, Port=2525, Addr=::1')\n\
                DAEMON_OPTIONS(`Port=submission, Name=MSA, M=Ea')\n\
                DAEMON_OPTIONS(`Port=smtp,Addr=127.0.0.1, Name=MTA2')\n");
    assert_eq!(
        get(&t, "server.listen").as_deref(),
        Some("[\"127.0.0.1:25\", \"[::1]:2525\"]")
    );
    assert!(has_diag(&t, 3, McKind::NotTranslated, "submission"));
    assert!(has_diag(&t, 4, McKind::Warning, "already listened on"));
    assert_loads(&t);
}

#[test]
fn what_is_not_understood_is_listed_by_line() {
    let src = "divert(-1)\nVERSIONID(`x')\nOSTYPE(`linux')dnl\n\
               FEATURE(`access_db')dnl FEATURE(`ratecontrol', ,`terminate')dnl\n\
               ...other configuration lines can go here...\n\
               FEATURE(`mailertable')\nLOCAL_CONFIG\nMAILER(`local')\nMAILER(`procmail')\n";
    let t = tr(src);
    assert!(
        has_diag(&t, 4, McKind::NotTranslated, "after `dnl`"),
        "{:#?}",
        t.diagnostics
    );
    assert!(has_diag(&t, 5, McKind::NotTranslated, "not a macro call"));
    assert!(has_diag(&t, 6, McKind::NotTranslated, "[[route]]"));
    assert!(has_diag(&t, 7, McKind::NotTranslated, "no rulesets"));
    assert!(has_diag(&t, 9, McKind::NotTranslated, "MAILER(`procmail')"));
    // divert, VERSIONID, OSTYPE and MAILER(local) are understood and say nothing.
    assert!(
        t.diagnostics
            .iter()
            .all(|d| ![1, 2, 3, 8].contains(&d.line)),
        "{:#?}",
        t.diagnostics
    );
    // The ratecontrol after dnl never happened: no rate_control keys but "ignore".
    assert_eq!(get(&t, "rate_control.terminate"), None);
    let rendered = t.render_diagnostics("sendmail.mc");
    assert!(
        rendered.starts_with("sendmail.mc:4: not translated: FEATURE(`ratecontrol'"),
        "{rendered}"
    );
    assert_loads(&t);
}

#[test]
fn malformed_input_is_reported_and_the_rest_still_translates() {
    let t = tr(
        "define(`confMAX_DAEMON_CHILDREN', `5')\nFEATURE(`greet_pause', `5000)\nMAILER(local)\n",
    );
    assert!(
        has_diag(&t, 2, McKind::Error, "unterminated quote"),
        "{:#?}",
        t.diagnostics
    );
    assert_eq!(get(&t, "limits.max_sessions").as_deref(), Some("5"));
    assert_loads(&t);
    let t = translate(
        b"define(`confDOMAIN_NAME', `mx\xff.example')\n\x00\x01",
        "x.mc",
        &McOptions::default(),
    );
    assert!(has_diag(&t, 1, McKind::Warning, "not UTF-8"));
    assert!(!t.toml.contains('\u{0}'));
    assert_loads(&t);
}

/// Pieces an `.mc` is made of, for the random soup below.
const SOUP: &[&str] = &[
    "FEATURE(`greet_pause', `",
    "FEATURE(`access_db'",
    "FEATURE(`ratecontrol'",
    "FEATURE(`conncontrol'",
    "FEATURE(`delay_checks'",
    "define(`confTO_COMMAND', `",
    "define(`confCONNECTION_RATE_WINDOW_SIZE', `",
    "define(`confMAX_RCPTS_PER_MESSAGE', `",
    "define(`confDOMAIN_NAME', `",
    "define(`confREFUSE_LA', `",
    "define(`confMAX_MESSAGE_SIZE', `",
    "define(`confTO_QUEUERETURN', `",
    "DAEMON_OPTIONS(`Port=",
    "DAEMON_OPTIONS(`Addr=",
    "MAILER(`local')",
    "`",
    "'",
    "(",
    ")",
    ",",
    " ",
    "\n",
    "dnl",
    "#",
    "nodelay",
    "terminate",
    "friend",
    "hater",
    "5000",
    "-1",
    "0",
    "99999999999999999999",
    "12s",
    "1h",
    "5x",
    "inet6",
    "::1",
    "127.0.0.1",
    "$w",
    "<TMPF>",
    "hash -o /etc/mail/access",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn random_bytes_never_panic_and_always_load(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let t = translate(&bytes, "fuzz.mc", &McOptions::default());
        prop_assert!(crate::load_with(&t.toml, "out.toml", &fqdn, 2).is_ok(), "{}", t.toml);
        for d in &t.diagnostics {
            prop_assert!(!d.message.contains('\n'));
        }
    }

    #[test]
    fn random_macro_soup_always_loads(pieces in proptest::collection::vec(0..SOUP.len(), 0..60)) {
        let src: String = pieces.iter().map(|&i| SOUP[i]).collect();
        let t = tr(&src);
        prop_assert!(crate::load_with(&t.toml, "out.toml", &fqdn, 2).is_ok(), "{src}\n{}", t.toml);
    }
}
