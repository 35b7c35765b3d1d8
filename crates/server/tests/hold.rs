// These tests drive a real `portcullis serve` process over real loopback sockets with real
// time, so they read the clock and sleep on purpose.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

//! End-to-end tests of the pause holder (`portcullis::hold`): the server keeps every
//! connection in its greeting pause in one epoll set with one timer heap, and gives each back
//! to tokio when its pause ends. These check, over real sockets, that per-client pauses end in
//! deadline order while a talker is answered at once, that a FIN or a reset during the pause
//! touches no other connection, that many connections held together are all greeted on time,
//! and that shutdown answers every held connection.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{Server, Smtp, local, server_with_access};

/// The first reply line and its time since `t0`.
fn greeting(client: &mut Smtp, t0: Instant) -> (String, f64) {
    let line = client.read_line().unwrap().unwrap_or_default();
    (line, t0.elapsed().as_secs_f64())
}

#[test]
fn pauses_end_in_deadline_order_and_a_talker_is_answered_at_once() {
    let server = server_with_access(
        "GreetPause:127.0.0.2 600\nGreetPause:127.0.0.3 1800\n",
        "[greet_pause]\ndefault = \"4s\"\n",
    );
    let t0 = Instant::now();
    // Connected in the opposite order of their deadlines. Never early; up to 2 s late is
    // allowed, since a loaded 2-core CI machine can stall a test thread that long.
    let mut long = Smtp::connect_from(server.addr(), local(1));
    let mut middle = Smtp::connect_from(server.addr(), local(3));
    let mut short = Smtp::connect_from(server.addr(), local(2));
    let mut talker = Smtp::connect_from(server.addr(), local(4));
    talker.send_raw(b"EHLO early.example\r\n");
    let (line, at) = greeting(&mut talker, t0);
    assert_eq!(line, "554 mx.example.test ESMTP not accepting messages");
    assert!(at < 0.6, "the talker waited {at:.3}s for its 554");

    let (line, at) = greeting(&mut short, t0);
    assert!(line.starts_with("220 mx.example.test ESMTP"), "{line}");
    assert!(
        (0.6..2.6).contains(&at),
        "600 ms pause ended after {at:.3}s"
    );
    let (line, at) = greeting(&mut middle, t0);
    assert!(line.starts_with("220 "), "{line}");
    assert!(
        (1.8..3.8).contains(&at),
        "1800 ms pause ended after {at:.3}s"
    );
    let (line, at) = greeting(&mut long, t0);
    assert!(line.starts_with("220 "), "{line}");
    assert!(
        (4.0..6.0).contains(&at),
        "default 4 s pause ended after {at:.3}s"
    );

    // Each session goes on normally once out of the holder.
    for client in [&mut short, &mut middle, &mut long] {
        assert_eq!(client.cmd("NOOP").0, 250);
        assert_eq!(client.cmd("QUIT").0, 221);
    }
    // The talker stays in rejecting mode.
    let ehlo = talker.read_reply();
    assert_eq!(ehlo.0, 250);
    assert_eq!(
        talker.cmd("MAIL FROM:<a@example.org>"),
        (550, "5.0.0 Command rejected".to_owned())
    );

    // The client that waited is in the pass cache: no pause the next time.
    let t1 = Instant::now();
    let mut again = Smtp::connect_from(server.addr(), local(3));
    let (line, at) = greeting(&mut again, t1);
    assert!(line.starts_with("220 "), "{line}");
    assert!(at < 0.5, "a remembered client waited {at:.3}s");
}

#[test]
fn fin_or_reset_during_the_pause_leaves_the_others_held() {
    let server = Server::start("[greet_pause]\ndefault = \"2s\"\n");
    let t0 = Instant::now();
    let mut waiting = Smtp::connect_from(server.addr(), local(1));
    let resetting = Smtp::connect_from(server.addr(), local(2));
    let mut closing = Smtp::connect_from(server.addr(), local(3));
    std::thread::sleep(Duration::from_millis(200));
    resetting.reset();
    closing.shutdown_write();
    // A FIN is not traffic: the normal greeting at once, then the end.
    let (line, at) = greeting(&mut closing, t0);
    assert!(line.starts_with("220 mx.example.test ESMTP"), "{line}");
    assert!(at < 1.5, "the FIN was answered after {at:.3}s");
    closing.expect_eof().unwrap();

    let (line, at) = greeting(&mut waiting, t0);
    assert!(line.starts_with("220 "), "{line}");
    assert!(at >= 2.0, "the pause was cut short: {at:.3}s");
    let (code, ehlo) = waiting.cmd("EHLO client.example.org");
    assert_eq!(code, 250);
    assert!(ehlo.contains("PIPELINING"), "{ehlo}");
    assert!(server.wait_log(
        "[127.0.0.3] did not issue MAIL/EXPN/VRFY/ETRN",
        Duration::from_secs(5)
    ));
    assert!(!server.log().contains("pre-greeting traffic"));
}

#[test]
fn many_held_connections_are_all_greeted_on_time() {
    const N: usize = 400;
    let server = Server::start("[greet_pause]\ndefault = \"1s\"\n");
    let t0 = Instant::now();
    let mut clients: Vec<Smtp> = (0..N)
        .map(|i| Smtp::connect_from(server.addr(), local(1 + (i % 4) as u8)))
        .collect();
    let connected = t0.elapsed().as_secs_f64();
    // Every client got its greeting no earlier than one second after its own connect
    // (the last connected at `connected`), and none waited far beyond.
    for (i, client) in clients.iter_mut().enumerate() {
        let (line, at) = greeting(client, t0);
        assert!(
            line.starts_with("220 mx.example.test ESMTP"),
            "client {i}: {line}"
        );
        assert!(
            at < connected + 3.0,
            "client {i} waited {at:.3}s (all connected after {connected:.3}s)"
        );
    }
    assert!(t0.elapsed().as_secs_f64() >= 1.0);
    for client in &mut clients {
        assert_eq!(client.cmd("QUIT").0, 221);
    }
    assert!(server.wait_log_count("did not issue MAIL", N, Duration::from_secs(10)));
}

#[test]
fn shutdown_answers_every_held_connection() {
    const N: usize = 100;
    let mut server = Server::start("[greet_pause]\ndefault = \"60s\"\n");
    let mut clients: Vec<Smtp> = (0..N)
        .map(|_| Smtp::connect_from(server.addr(), local(2)))
        .collect();
    // Wait until the last one is held (its pause has begun) before stopping.
    assert!(clients[N - 1].is_silent_for(Duration::from_millis(300)));
    let t0 = Instant::now();
    server.signal(Signal::SIGTERM);
    for (i, client) in clients.iter_mut().enumerate() {
        let (code, text) = client.read_reply();
        assert_eq!(
            (code, text.as_str()),
            (421, "4.3.2 mx.example.test Service shutting down"),
            "client {i}"
        );
        client.expect_eof().unwrap();
    }
    let status = server.wait_exit(Duration::from_secs(10)).expect("exited");
    assert!(status.success(), "{status:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "shutdown took {:?}",
        t0.elapsed()
    );
}

#[test]
fn a_remembered_client_skips_the_pause_but_not_its_name_lookup() {
    // As in tests/greet_pause.rs: hickory answers 127.0.0.1's PTR (`localhost`) itself; the
    // fake server only makes sure nothing leaves the machine.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dns = rt
        .block_on(portcullis::dns::fake::FakeDns::start())
        .unwrap();
    let server = Server::start(&format!(
        "[greet_pause]\ndefault = \"600ms\"\n[dns]\nreverse = true\nservers = [{}]\n",
        support::toml_str(&dns.addr().to_string())
    ));
    for (round, (min, max)) in [(0.6, 2.0), (0.0, 0.5)].into_iter().enumerate() {
        let t0 = Instant::now();
        let mut client = Smtp::connect_from(server.addr(), local(1));
        let (line, at) = greeting(&mut client, t0);
        assert!(line.starts_with("220 "), "{line}");
        assert!(
            (min..max).contains(&at),
            "round {round}: greeting after {at:.3}s"
        );
        let (code, text) = client.cmd("EHLO client.example.org");
        assert_eq!(code, 250);
        assert!(
            text.starts_with("mx.example.test Hello localhost [127.0.0.1]"),
            "round {round}: {text}"
        );
        assert_eq!(client.cmd("QUIT").0, 221);
    }
    drop(rt);
}

#[test]
fn talkers_are_caught_even_when_the_server_gets_to_them_after_their_deadline() {
    // The server is stopped (SIGSTOP) while the clients talk, and resumed after their
    // deadline: their bytes came before it, so each is a talker, not a patient client.
    const N: usize = 200;
    // Every talker's line is counted below, so none may be held back for a summary.
    let server =
        Server::start("[greet_pause]\ndefault = \"1s\"\n[log]\nsummary_interval = \"0s\"\n");
    let mut clients: Vec<Smtp> = (0..N)
        .map(|i| Smtp::connect_from(server.addr(), local(1 + (i % 4) as u8)))
        .collect();
    assert!(clients[N - 1].is_silent_for(Duration::from_millis(200)));
    server.signal(Signal::SIGSTOP);
    for client in &mut clients {
        client.send_raw(b"EHLO early.example\r\n");
    }
    std::thread::sleep(Duration::from_millis(1500));
    server.signal(Signal::SIGCONT);
    for (i, client) in clients.iter_mut().enumerate() {
        let (code, text) = client.read_reply();
        assert_eq!(
            (code, text.as_str()),
            (554, "mx.example.test ESMTP not accepting messages"),
            "client {i}"
        );
    }
    assert!(server.wait_log_count("due to pre-greeting traffic", N, Duration::from_secs(10)));
}
