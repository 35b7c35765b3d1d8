// These tests drive a real `portcullis serve` process over real loopback sockets.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

//! End-to-end tests of the load controls (`[load]`: Sendmail's RefuseLA, DelayLA, QueueLA and
//! the sessions signal). Each server reads its load average from its own file (the support
//! base configuration), so the machine's real load never decides a test.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{Server, Smtp, local};

const MESSAGE: &str = "Subject: load\r\n\r\nhello\r\n";

#[test]
fn refuse_la_stops_accepting_until_the_load_drops() {
    let server = Server::start("[load]\nrefuse_la = 2\n");
    let mut before = Smtp::connect(server.addr());
    assert_eq!(before.read_reply().0, 220);
    server.set_loadavg("1.50"); // Rounds to 2, as Sendmail rounds it.
    assert!(
        server.wait_log(
            "rejecting connections on daemon MTA: load average: 2",
            Duration::from_secs(5)
        ),
        "{}",
        server.log()
    );
    // A new client waits in the kernel backlog: connected, but no greeting.
    let mut waiting = Smtp::connect_from(server.addr(), local(2));
    assert!(waiting.is_silent_for(Duration::from_millis(1500)));
    // The session that was already open goes on.
    assert_eq!(before.cmd("NOOP").0, 250);
    server.set_loadavg("0.20");
    let (code, _) = waiting.read_reply();
    assert_eq!(code, 220);
    assert!(server.wait_log(
        "accepting connections again for daemon MTA",
        Duration::from_secs(5)
    ));
}

#[test]
fn delay_la_waits_a_second_before_commands_over_real_sockets() {
    let server = Server::start("[load]\ndelay_la = 1\n");
    server.set_loadavg("1.00");
    // The sampler reads the file once a second.
    assert!(support::wait_until(Duration::from_secs(5), || {
        let mut c = Smtp::connect(server.addr());
        c.read_reply();
        let t = Instant::now();
        c.cmd("NOOP");
        t.elapsed() >= Duration::from_millis(900)
    }));
    let mut c = Smtp::connect_from(server.addr(), local(3));
    assert_eq!(c.read_reply().0, 220);
    let t = Instant::now();
    assert_eq!(c.cmd("EHLO client.example.org").0, 250);
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "{:?}",
        t.elapsed()
    );
    let t = Instant::now();
    assert_eq!(c.cmd("RSET").0, 250);
    assert_eq!(c.cmd("QUIT").0, 221);
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert!(server.wait_log("delaying=EHLO, load average=1 >= 1", Duration::from_secs(5)));
}

#[test]
fn queue_la_accepts_mail_but_holds_delivery_until_the_load_drops() {
    let server = Server::start("[load]\nqueue_la = 3\n");
    server.set_loadavg("3.20");
    assert!(
        server.wait_log(
            "holding delivery: load average=3 >= 3",
            Duration::from_secs(5)
        ),
        "{}",
        server.log()
    );
    let mut c = Smtp::connect(server.addr());
    c.greet_ehlo("client.example.org");
    let (code, _) = c.send_message("a@example.org", &["root@localhost"], MESSAGE);
    assert_eq!(code, 250);
    assert_eq!(c.cmd("QUIT").0, 221);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(server.maildir_files("localhost", "root").is_empty());
    assert_eq!(
        server.queue_files().len(),
        1,
        "the message waits in the spool"
    );
    server.set_loadavg("0.70");
    assert_eq!(
        server
            .wait_maildir("localhost", "root", 1, Duration::from_secs(10))
            .len(),
        1
    );
    assert!(server.wait_log("delivery resumed", Duration::from_secs(5)));
}

#[test]
fn refuse_sessions_pct_counts_sessions_in_flight_exactly() {
    // 4 sessions at most, refuse at 50%: two sessions are let in, the third waits. The
    // accept loop's own reserved slot for its next client is not a session.
    let server = Server::start("[limits]\nmax_sessions = 4\n[load]\nrefuse_sessions_pct = 50\n");
    let mut first = Smtp::connect_from(server.addr(), local(2));
    assert_eq!(first.read_reply().0, 220);
    std::thread::sleep(Duration::from_millis(1200)); // the sampler has run meanwhile
    let mut second = Smtp::connect_from(server.addr(), local(3));
    assert_eq!(
        second.read_reply().0,
        220,
        "one session of four is 25%, under 50%"
    );
    let mut third = Smtp::connect_from(server.addr(), local(4));
    assert!(third.is_silent_for(Duration::from_millis(1500)));
    assert!(server.wait_log(
        "rejecting connections on daemon MTA: sessions: 50% of max_sessions",
        Duration::from_secs(5)
    ));
    assert_eq!(first.cmd("QUIT").0, 221);
    assert_eq!(third.read_reply().0, 220);
    assert_eq!(second.cmd("QUIT").0, 221);
}

#[test]
fn refuse_lag_sees_a_stalled_server_at_the_first_check_after_the_stall() {
    let server = Server::start("[load]\nrefuse_lag = \"300ms\"\n");
    let mut c = Smtp::connect(server.addr());
    assert_eq!(c.read_reply().0, 220);
    // The whole process stops for 1.5 s: when it runs again, its event loop is 1.5 s late.
    server.signal(Signal::SIGSTOP);
    std::thread::sleep(Duration::from_millis(1500));
    server.signal(Signal::SIGCONT);
    assert!(
        server.wait_log(
            "rejecting connections on daemon MTA: event loop lag: ",
            Duration::from_secs(5)
        ),
        "{}",
        server.log()
    );
    // The lag is gone a second later, and accepting resumes by itself.
    assert!(server.wait_log(
        "accepting connections again for daemon MTA",
        Duration::from_secs(5)
    ));
    let mut after = Smtp::connect_from(server.addr(), local(4));
    assert_eq!(after.read_reply().0, 220);
    assert_eq!(c.cmd("QUIT").0, 221);
}
