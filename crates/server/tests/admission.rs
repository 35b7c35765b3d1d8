// These tests drive a real `portcullis serve` process over real loopback sockets.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

//! End-to-end tests of connection admission (Sendmail's ratecontrol and conncontrol) from
//! several loopback addresses over real sockets.

mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use support::{Server, Smtp, access_file, local, server_with_access};

#[test]
fn conncontrol_limits_simultaneous_sessions_per_address() {
    let server = server_with_access("ClientConn:127.0.0.2 2\n", "");
    let mut first = Smtp::connect_from(server.addr(), local(2));
    let mut second = Smtp::connect_from(server.addr(), local(2));
    assert_eq!(first.read_reply().0, 220);
    assert_eq!(second.read_reply().0, 220);
    let mut third = Smtp::connect_from(server.addr(), local(2));
    assert_eq!(
        third.read_reply(),
        (421, "4.3.2 Too many open connections.".to_owned())
    );
    third.expect_eof().unwrap();
    assert!(server.wait_log(
        "ruleset=check_relay, arg1=[127.0.0.2], arg2=127.0.0.2, relay=[127.0.0.2], reject=421 4.3.2 Too many open connections.",
        Duration::from_secs(5)
    ));
    // Another address is not affected.
    let mut other = Smtp::connect_from(server.addr(), local(3));
    assert_eq!(other.read_reply().0, 220);
    // Once a session ends, its place is free again.
    assert_eq!(first.cmd("QUIT").0, 221);
    first.expect_eof().unwrap();
    let mut later = None;
    for _ in 0..50 {
        let mut c = Smtp::connect_from(server.addr(), local(2));
        if c.read_reply().0 == 220 {
            later = Some(c);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(later.is_some(), "no place freed after QUIT");
}

#[test]
fn ratecontrol_counts_each_address_of_a_prefix_entry_alone() {
    // `ClientRate:127.0.0 2`: 127.0.0.2 and 127.0.0.3 each get two (reference section b).
    let server = server_with_access("ClientRate:127.0.0 2\n", "");
    for addr in [local(2), local(3)] {
        for _ in 0..2 {
            let mut c = Smtp::connect_from(server.addr(), addr);
            assert_eq!(c.read_reply().0, 220, "{addr}");
            assert_eq!(c.cmd("QUIT").0, 221);
        }
        let mut c = Smtp::connect_from(server.addr(), addr);
        assert_eq!(
            c.read_reply(),
            (421, "4.3.2 Connection rate limit exceeded.".to_owned()),
            "{addr}"
        );
    }
}

#[test]
fn conncontrol_counts_an_ipv6_client_by_its_64() {
    let Ok(port) = support::free_port_v6() else {
        eprintln!("no IPv6 loopback here; skipped");
        return;
    };
    let mut server = Server::start_listening(
        || {
            vec![std::net::SocketAddr::from((
                std::net::Ipv6Addr::LOCALHOST,
                port,
            ))]
        },
        "",
    );
    let access = access_file(&server, "ClientConn:IPv6:0:0:0:0:0:0:0:1 1\n");
    server.write_config(&access);
    server.restart();
    let mut first = Smtp::connect(server.addr());
    assert_eq!(first.read_reply().0, 220);
    let mut second = Smtp::connect(server.addr());
    assert_eq!(
        second.read_reply(),
        (421, "4.3.2 Too many open connections.".to_owned())
    );
    assert!(server.wait_log("key=\"::/64\"", Duration::from_secs(5)));
}

#[test]
fn max_sessions_wait_keeps_new_clients_in_the_backlog() {
    let server = Server::start("[limits]\nmax_sessions = 2\n");
    let mut a = Smtp::connect(server.addr());
    let mut b = Smtp::connect(server.addr());
    assert_eq!(a.read_reply().0, 220);
    assert_eq!(b.read_reply().0, 220);
    // The third connects (kernel backlog) but hears nothing while two sessions run.
    let mut c = Smtp::connect(server.addr());
    assert!(c.is_silent_for(Duration::from_millis(500)));
    assert!(server.wait_log(
        "rejecting connections on daemon MTA: 2 children, max 2",
        Duration::from_secs(5)
    ));
    assert_eq!(a.cmd("QUIT").0, 221);
    assert_eq!(c.read_reply().0, 220);
    assert!(server.wait_log(
        "accepting connections again for daemon MTA",
        Duration::from_secs(5)
    ));
}

#[test]
fn sighup_changes_max_sessions_at_once_and_a_lower_limit_is_exact() {
    let mut server = Server::start("[limits]\nmax_sessions = 2\n");
    let mut open: Vec<Smtp> = (0..2)
        .map(|_| {
            let mut c = Smtp::connect(server.addr());
            assert_eq!(c.read_reply().0, 220);
            c
        })
        .collect();
    let mut third = Smtp::connect(server.addr());
    assert!(third.is_silent_for(Duration::from_millis(500)));
    // Raised to 3: the waiting client is let in without any session ending.
    server.write_config("[limits]\nmax_sessions = 3\n");
    server.signal(Signal::SIGHUP);
    assert!(server.wait_log("configuration reloaded", Duration::from_secs(5)));
    assert_eq!(third.read_reply().0, 220);
    open.push(third);
    // Lowered to 1 with three open: they go on, and a new client waits until the count is
    // below the new limit, i.e. until all three have ended.
    server.write_config("[limits]\nmax_sessions = 1\n");
    server.signal(Signal::SIGHUP);
    assert!(server.wait_log_count("configuration reloaded", 2, Duration::from_secs(5)));
    let mut fourth = Smtp::connect(server.addr());
    for mut c in open.drain(..2) {
        assert_eq!(c.cmd("QUIT").0, 221);
    }
    assert!(
        fourth.is_silent_for(Duration::from_millis(1500)),
        "one session is still open: the limit of 1 is reached"
    );
    let mut last = open.pop().unwrap();
    assert_eq!(last.cmd("QUIT").0, 221);
    assert_eq!(fourth.read_reply().0, 220);
}

#[test]
fn max_sessions_refuse_answers_421() {
    let server = Server::start("[limits]\nmax_sessions = 1\nmax_sessions_action = \"refuse\"\n");
    let mut a = Smtp::connect(server.addr());
    assert_eq!(a.read_reply().0, 220);
    let mut b = Smtp::connect(server.addr());
    assert_eq!(
        b.read_reply(),
        (
            421,
            "4.3.2 mx.example.test Too many concurrent SMTP connections; please try again later"
                .to_owned()
        )
    );
    b.expect_eof().unwrap();
    assert_eq!(a.cmd("QUIT").0, 221);
    a.expect_eof().unwrap();
    let mut c = None;
    for _ in 0..50 {
        let mut s = Smtp::connect(server.addr());
        if s.read_reply().0 == 220 {
            c = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(c.is_some(), "the slot was not given back");
}

#[test]
fn connection_rate_throttle_defers_and_never_refuses() {
    let server = Server::start("[limits]\nconnection_rate_throttle = 2\n");
    let t0 = std::time::Instant::now();
    let mut clients: Vec<Smtp> = (0..6).map(|_| Smtp::connect(server.addr())).collect();
    let mut times = Vec::new();
    for c in &mut clients {
        assert_eq!(c.read_reply().0, 220);
        times.push(t0.elapsed().as_secs_f64());
    }
    // Two per second: the fifth and sixth wait about two seconds.
    assert!(times[1] < 0.9, "{times:?}");
    assert!(times[4] >= 1.8, "{times:?}");
    assert!(times[5] < 4.0, "{times:?}");
    assert!(server.wait_log(
        "deferring connections on daemon MTA: 2 per second",
        Duration::from_secs(5)
    ));
}

#[test]
fn conncontrol_without_terminate_serves_the_null_server_452() {
    let server = server_with_access(
        "ClientConn:127.0.0.2 1\n",
        "[conn_control]\nterminate = false\n",
    );
    let mut first = Smtp::connect_from(server.addr(), local(2));
    assert_eq!(first.read_reply().0, 220);
    let mut second = Smtp::connect_from(server.addr(), local(2));
    assert_eq!(second.read_reply().0, 220);
    assert_eq!(second.cmd("HELO client.example.org").0, 250);
    assert_eq!(
        second.cmd("MAIL FROM:<alice@example.org>"),
        (452, "4.3.2 Too many open connections.".to_owned())
    );
    assert_eq!(
        second.cmd("RCPT TO:<root@localhost>"),
        (452, "4.3.2 Too many open connections.".to_owned())
    );
    assert_eq!(second.cmd("QUIT").0, 221);
    assert!(server.wait_log(
        "reject=452 4.3.2 Too many open connections.",
        Duration::from_secs(5)
    ));
    // The first session is untouched.
    assert_eq!(first.cmd("HELO client.example.org").0, 250);
    assert_eq!(first.cmd("MAIL FROM:<alice@example.org>").0, 250);
}
