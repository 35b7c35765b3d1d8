// These tests drive a real `portcullis serve` process over real loopback sockets with real
// time, so they read the clock and sleep on purpose.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

//! End-to-end tests of rejection summaries (`[log] summary_*`): pre-greeting slams from
//! 127.0.0.2 and 127.0.0.3 logged in full up to `summary_after` per client, then one summary
//! line per interval; everything logged with `summary_interval = "0s"`; and a second defence
//! (relaying denied) counted apart and flushed at shutdown.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::thread;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::{Server, Smtp, pause};

const LOCAL2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const LOCAL3: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

/// The summary line's fixed part, for counting summaries of any defence.
const SUMMARY: &str = "not logged in the last";

/// A pause long enough that every slam lands inside it.
const PAUSED: &str = "[greet_pause]\ndefault = \"2s\"\n";

/// One client that talks before the greeting: a QUIT alone (no command behind it, so no
/// stuffing finding), read to the end. Returns the first reply line.
fn slam(server: &Server, from: IpAddr) -> String {
    let mut c = Smtp::connect_from(server.addr(), from);
    c.send_raw(b"QUIT\r\n");
    let first = c.read_line().unwrap().unwrap_or_default();
    while let Ok(Some(_)) = c.read_line() {}
    first
}

/// 8 slams from 127.0.0.2 and 3 from 127.0.0.3, all at once (so all within one interval).
fn slam_eleven(server: &Server) {
    thread::scope(|s| {
        let handles: Vec<_> = std::iter::repeat_n(LOCAL2, 8)
            .chain(std::iter::repeat_n(LOCAL3, 3))
            .map(|from| s.spawn(move || slam(server, from)))
            .collect();
        for h in handles {
            let first = h.join().unwrap();
            assert_eq!(first, "554 mx.example.test ESMTP not accepting messages");
        }
    });
}

fn pregreet_line(from: &str) -> String {
    format!("rejecting commands from [{from}] due to pre-greeting traffic")
}

#[test]
fn flood_logs_first_per_client_then_one_summary() {
    let server = Server::start(&format!(
        "{PAUSED}[log]\nsummary_interval = \"2s\"\nsummary_after = 2\n"
    ));
    slam_eleven(&server);
    let summary = "greet_pause: 7 more rejections not logged in the last 2s from 2 clients \
                   (first 2 per client logged); top: [127.0.0.2] 6, [127.0.0.3] 1";
    assert!(
        server.wait_log(summary, Duration::from_secs(10)),
        "{}",
        server.log()
    );
    // One interval later, still one summary: the window was closed and nothing came since.
    pause(Duration::from_millis(2500));
    let log = server.log();
    assert_eq!(log.matches(&pregreet_line("127.0.0.2")).count(), 2, "{log}");
    assert_eq!(log.matches(&pregreet_line("127.0.0.3")).count(), 2, "{log}");
    // The detail lines went with the lines held back.
    assert_eq!(
        log.matches("greet_pause_pregreet detail:").count(),
        4,
        "{log}"
    );
    assert_eq!(log.matches(SUMMARY).count(), 1, "{log}");
    // The window starts afresh: the next slam is logged in full again.
    slam(&server, LOCAL2);
    assert!(server.wait_log_count(&pregreet_line("127.0.0.2"), 3, Duration::from_secs(5)));
}

#[test]
fn zero_interval_logs_every_rejection() {
    let mut server = Server::start(&format!(
        "{PAUSED}[log]\nsummary_interval = \"0s\"\nsummary_after = 2\n"
    ));
    slam_eleven(&server);
    assert!(
        server.wait_log_count(&pregreet_line("127.0.0.2"), 8, Duration::from_secs(5)),
        "{}",
        server.log()
    );
    assert!(server.wait_log_count(&pregreet_line("127.0.0.3"), 3, Duration::from_secs(5)));
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(10)).is_some());
    let log = server.log();
    assert_eq!(log.matches("pre-greeting traffic").count(), 11, "{log}");
    assert!(!log.contains(SUMMARY), "{log}");
}

#[test]
fn defences_count_apart_and_shutdown_logs_the_rest() {
    // An interval no test waits for: the summaries come from the shutdown.
    let mut server = Server::start(&format!(
        "{PAUSED}[log]\nsummary_interval = \"1h\"\nsummary_after = 2\n"
    ));
    for _ in 0..3 {
        slam(&server, LOCAL2);
    }
    // The same client, waiting for its greeting, then relaying five times: its greet_pause
    // count does not hold back its first two relay refusals.
    let mut c = Smtp::connect_from(server.addr(), LOCAL2);
    c.greet_ehlo("client.example.org");
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").0, 250);
    for i in 0..5 {
        let (code, text) = c.cmd(&format!("RCPT TO:<x{i}@other.example>"));
        assert_eq!(code, 550, "{text}");
        assert!(text.ends_with("Relaying denied"), "{text}");
    }
    assert_eq!(c.cmd("QUIT").0, 221);
    assert!(server.wait_log_count("Relaying denied", 2, Duration::from_secs(5)));
    server.signal(Signal::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(10)).is_some());
    let log = server.log();
    assert_eq!(log.matches(&pregreet_line("127.0.0.2")).count(), 2, "{log}");
    assert_eq!(
        log.matches("relay=[127.0.0.2], reject=550 5.7.1 <x")
            .count(),
        2,
        "{log}"
    );
    assert_eq!(log.matches(SUMMARY).count(), 2, "{log}");
    for line in [
        "greet_pause: 1 more rejection not logged in the last ",
        "relay_denied: 3 more rejections not logged in the last ",
    ] {
        let at = log
            .find(line)
            .unwrap_or_else(|| panic!("{line:?} in {log}"));
        let rest = &log[at..log[at..].find('\n').map_or(log.len(), |n| at + n)];
        let tail = match line.starts_with("greet") {
            true => "from 1 client (first 2 per client logged); top: [127.0.0.2] 1",
            false => "from 1 client (first 2 per client logged); top: [127.0.0.2] 3",
        };
        assert!(rest.ends_with(tail), "{rest}");
    }
    // Logged before the last line, after the sessions ended.
    let summary_at = log.rfind(SUMMARY).unwrap();
    assert!(log[summary_at..].contains("stopped; 0 session(s) cut off"));
}

#[test]
fn reload_applies_the_new_interval_and_keeps_the_counts() {
    let mut server = Server::start(&format!(
        "{PAUSED}[log]\nsummary_interval = \"1h\"\nsummary_after = 1\n"
    ));
    for _ in 0..3 {
        slam(&server, LOCAL3);
    }
    assert!(server.wait_log_count(&pregreet_line("127.0.0.3"), 1, Duration::from_secs(5)));
    server.write_config(&format!(
        "{PAUSED}[log]\nsummary_interval = \"2s\"\nsummary_after = 1\n"
    ));
    server.signal(Signal::SIGHUP);
    assert!(server.wait_log("configuration reloaded", Duration::from_secs(5)));
    // The window began before the reload, so it is due 2 s after the first slam at the
    // latest: the two lines held back under the old settings are in it.
    let summary = "greet_pause: 2 more rejections not logged in the last 2s from 1 client \
                   (first 1 per client logged); top: [127.0.0.3] 2";
    assert!(
        server.wait_log(summary, Duration::from_secs(10)),
        "{}",
        server.log()
    );
    assert_eq!(server.log().matches(&pregreet_line("127.0.0.3")).count(), 1);
}
