// These tests drive a real `portcullis serve` process and the `portcullis probe` binary over
// real loopback sockets with real time.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

//! `portcullis probe` against the real server: each mode's verdict over loopback, the
//! server's own pre-greeting log line for the slam, `--bind` making the probe a given client
//! (its `GreetPause:` entry applies and the server names that address), and a closed port.
//! The server pauses 1 s (`pass_ttl = "0s"`, so every probe is paused again).

mod support;

use std::io::Write;
use std::process::{Command, Output};
use std::time::Duration;

use support::{Server, run_bounded, server_with_access};

const LIMIT: Duration = Duration::from_secs(30);
const PAUSING: &str = "[greet_pause]\ndefault = \"1s\"\npass_ttl = \"0s\"\n";

fn probe(server: &Server, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.arg("probe").arg(server.addr().to_string()).args(args);
    run_bounded(&mut cmd, LIMIT)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn verdict(out: &Output) -> String {
    let text = stdout(out);
    let line = text.lines().last().unwrap_or_default();
    line.strip_prefix("verdict: ")
        .unwrap_or_else(|| panic!("no verdict line in:\n{text}"))
        .to_owned()
}

#[test]
fn polite_sees_the_pause_and_talks_normally() {
    let server = Server::start(PAUSING);
    let out = probe(&server, &["--mode", "polite", "--bind", "127.0.0.5"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    assert!(text.contains("<- 220 mx.example.test ESMTP"), "{text}");
    assert!(text.contains("-> EHLO probe.invalid"), "{text}");
    assert!(text.contains("<- 250 HELP"), "{text}");
    assert!(
        text.contains("<- 221 2.0.0 mx.example.test closing connection"),
        "{text}"
    );
    assert!(
        verdict(&out).starts_with("greet pause active (greeting after "),
        "{text}"
    );
    // The greeting came no earlier than the pause: the transcript's own offset says so.
    let greeting = text.lines().find(|l| l.contains("<- 220 ")).unwrap();
    let at: f64 = greeting[1..greeting.find(' ').unwrap()].parse().unwrap();
    assert!(at >= 1.0, "{greeting}");
    assert!(!server.log().contains("pre-greeting traffic"));
}

#[test]
fn slam_is_rejected_and_logged_by_the_server() {
    let server = Server::start(PAUSING);
    let out = probe(&server, &["--mode", "slam", "--bind", "127.0.0.6"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    // The transcript without its time offsets.
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with('+'))
        .map(|l| &l[l.find(' ').unwrap() + 1..])
        .collect();
    assert_eq!(
        lines,
        [
            "-> EHLO probe.invalid",
            "<- 554 mx.example.test ESMTP not accepting messages",
            // Sendmail's null-server mode answers EHLO, with ENHANCEDSTATUSCODES only.
            "<- 250-mx.example.test Hello [127.0.0.6], pleased to meet you",
            "<- 250 ENHANCEDSTATUSCODES",
            "-> QUIT",
            "<- 221 2.0.0 mx.example.test closing connection",
        ],
        "{text}"
    );
    // (The 554's offset is how fast the server answered: not asserted.)
    assert!(
        verdict(&out).starts_with("greet pause active; slamming rejected (554 after "),
        "{text}"
    );
    assert!(server.wait_log(
        "rejecting commands from [127.0.0.6] due to pre-greeting traffic after 0 seconds",
        Duration::from_secs(5)
    ));
}

#[test]
fn early_talker_is_caught_or_not_depending_on_its_wait() {
    let server = Server::start(PAUSING);
    let caught = probe(&server, &["--mode", "early=0.2", "--bind", "127.0.0.7"]);
    assert_eq!(caught.status.code(), Some(0));
    assert!(
        verdict(&caught)
            .starts_with("greet pause active; a client that waits 0.20 s is caught (554 after "),
        "{}",
        stdout(&caught)
    );
    assert!(server.wait_log(
        "rejecting commands from [127.0.0.7] due to pre-greeting traffic",
        Duration::from_secs(5)
    ));
    let patient = probe(&server, &["--mode", "early=5", "--bind", "127.0.0.8"]);
    assert_eq!(patient.status.code(), Some(0));
    let v = verdict(&patient);
    assert!(v.starts_with("greet pause active (greeting after "), "{v}");
    assert!(
        v.ends_with("a client that waits 5.00 s is not caught (the greeting came first)"),
        "{v}"
    );
    assert!(
        !server
            .log()
            .contains("from [127.0.0.8] due to pre-greeting")
    );
}

#[test]
fn bind_makes_the_probe_that_client() {
    // 127.0.0.2 has no pause in the access map; every other client waits 1 s.
    let server = server_with_access("GreetPause:127.0.0.2 0\n", PAUSING);
    let exempt = probe(&server, &["--bind", "127.0.0.2"]);
    assert_eq!(exempt.status.code(), Some(0));
    let text = stdout(&exempt);
    assert!(text.contains(" from 127.0.0.2:"), "{text}");
    assert!(
        text.contains("<- 250-mx.example.test Hello [127.0.0.2], pleased to meet you"),
        "{text}"
    );
    assert!(
        verdict(&exempt).starts_with("no greet pause (greeting after 0."),
        "{text}"
    );
    let slam = probe(&server, &["--bind", "127.0.0.2", "--mode", "slam"]);
    assert!(
        verdict(&slam).ends_with("slamming NOT rejected (220)"),
        "{}",
        stdout(&slam)
    );

    let other = probe(&server, &["--bind", "127.0.0.3", "--mode", "slam"]);
    assert!(
        verdict(&other).contains("slamming rejected (554"),
        "{}",
        stdout(&other)
    );
    assert!(server.wait_log(
        "rejecting commands from [127.0.0.3]",
        Duration::from_secs(5)
    ));
    assert!(!server.log().contains("rejecting commands from [127.0.0.2]"));
}

#[test]
fn closed_port_and_usage_errors() {
    let port = support::free_port_v4();
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["probe", &format!("127.0.0.1:{port}")]),
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "portcullis probe: cannot connect to 127.0.0.1:{port}: "
        )),
        "{err}"
    );
    assert!(!stdout(&out).contains("verdict"));
    for args in [
        vec!["probe", "127.0.0.1"],
        vec!["probe", "127.0.0.1:25", "--mode", "loud"],
        vec!["probe", "127.0.0.1:25", "--timeout", "soon"],
        vec!["probe"],
    ] {
        let out = run_bounded(
            Command::new(env!("CARGO_BIN_EXE_portcullis")).args(&args),
            LIMIT,
        );
        assert_eq!(out.status.code(), Some(64), "{args:?}");
    }
}

#[test]
fn a_silent_server_times_out() {
    // A listener that accepts (in the kernel backlog) and never speaks.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_portcullis")).args([
            "probe",
            &addr.to_string(),
            "--timeout",
            "300ms",
        ]),
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no reply within 300ms (--timeout)"), "{err}");
    drop(listener);
}

#[test]
fn out_of_range_waits_are_usage_errors_not_panics() {
    // Something to connect to, so a bad wait cannot hide behind a connection error.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    for args in [
        vec!["probe", &addr, "--mode", "early=1e19", "--timeout", "1s"],
        vec!["probe", &addr, "--timeout", "500000000000years"],
    ] {
        let out = run_bounded(
            Command::new(env!("CARGO_BIN_EXE_portcullis")).args(&args),
            LIMIT,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains("at most"), "{err}");
    }
    drop(listener);
}

#[test]
fn a_reply_dribbled_slower_than_the_timeout_is_cut_off() {
    // A server whose greeting comes one byte every 100 ms: each read is quick, the reply as
    // a whole takes 3 s. --timeout bounds each reply, not each read.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        for b in b"220 dribbling.example ESMTP slowly slowly\r\n" {
            if s.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_portcullis")).args([
            "probe",
            &addr.to_string(),
            "--timeout",
            "1s",
        ]),
        LIMIT,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}{err}", stdout(&out));
    assert!(err.contains("no reply within 1s (--timeout)"), "{err}");
    assert!(!stdout(&out).contains("verdict"));
    server.join().unwrap();
}
