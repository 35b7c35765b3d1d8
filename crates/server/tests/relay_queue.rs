// These tests drive a real `portcullis serve` process over real loopback sockets, with an
// independently written next hop (Python's aiosmtpd) behind it.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

//! Relay delivery end to end: accepted over SMTP, spooled, handed to the next hop by the
//! queue runner. Delivered; 451 then retried and delivered; 550 bounced to the sender's
//! domain; next hop down then up; SIGKILL in the middle of a delivery, then delivered after
//! the restart; LMTP with per-recipient replies.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use support::peer::{Peer, stored};
use support::{Server, Smtp, dot_stuff, pause, wait_until};

const WAIT: Duration = Duration::from_secs(20);

/// `[relay]` and `[[route]]` sending example.net (and example.org, the senders' domain) to
/// the peer on `port` over `proto`.
fn relay_config(proto: &str, port: u16) -> String {
    format!(
        "[relay]\ndomains = [\"example.net\"]\n\
         [queue]\nretry_min = \"1s\"\nretry_max = \"2s\"\n\
         [[route]]\ndomain = \"example.net\"\nnext_hop = \"{proto}:[127.0.0.1]:{port}\"\n\
         [[route]]\ndomain = \"example.org\"\nnext_hop = \"smtp:[127.0.0.1]:{port}\"\n"
    )
}

/// Sends one message from alice@example.org to `recipients`; every RCPT must be accepted.
fn send(server: &Server, recipients: &[&str], body: &str) {
    let mut c = Smtp::connect(server.addr());
    c.greet_ehlo("client.example.org");
    assert_eq!(c.cmd("MAIL FROM:<alice@example.org>").0, 250);
    for r in recipients {
        let (code, text) = c.cmd(&format!("RCPT TO:<{r}>"));
        assert_eq!(code, 250, "{r}: {text}");
    }
    assert_eq!(c.cmd("DATA").0, 354);
    c.send_raw(&dot_stuff(&format!(
        "From: alice@example.org\r\nSubject: relay\r\nMessage-ID: <m1@example.org>\r\n\r\n{body}"
    )));
    assert_eq!(c.read_reply().0, 250);
    assert_eq!(c.cmd("QUIT").0, 221);
}

/// Waits for one log line holding both `to` and `rest` (the delays between them are whole
/// seconds of wall time, so they are not compared).
fn wait_line(server: &Server, to: &str, rest: &str, limit: Duration) -> bool {
    wait_until(limit, || {
        server
            .log()
            .lines()
            .any(|l| l.contains(&format!("{to}, delay=")) && l.contains(rest))
    })
}

/// A fresh aiosmtpd next hop speaking `proto` and a server relaying example.net (and
/// example.org) to it: (the peer's directory, the peer, the server).
fn relayed(proto: &str) -> (tempfile::TempDir, Peer, Server) {
    let peer_dir = tempfile::tempdir().unwrap();
    let peer = Peer::start(proto, peer_dir.path());
    let server = Server::start(&relay_config(proto, peer.port));
    (peer_dir, peer, server)
}

/// A fake DNS server, on a runtime of its own that lives as long as the test keeps it.
fn fake_dns() -> (tokio::runtime::Runtime, portcullis::dns::fake::FakeDns) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dns = rt
        .block_on(portcullis::dns::fake::FakeDns::start())
        .unwrap();
    (rt, dns)
}

fn wait_stored(dir: &Path, n: usize) -> Vec<String> {
    wait_until(WAIT, || stored(dir).len() >= n);
    stored(dir)
}

#[test]
fn relayed_mail_reaches_the_next_hop_and_the_log_says_sent() {
    let (peer_dir, _peer, server) = relayed("smtp");
    send(
        &server,
        &["a@example.net", "b@example.net", "carol@localhost"],
        ".dotted line\r\nbody\r\n",
    );
    let got = wait_stored(peer_dir.path(), 1);
    assert_eq!(got.len(), 1, "{got:?}");
    // One session carried both recipients of the next hop; the local one went to Maildir.
    assert!(
        got[0].starts_with("FROM alice@example.org\nTO a@example.net b@example.net\n\n"),
        "{}",
        got[0]
    );
    assert!(
        got[0].contains("\r\n.dotted line\r\nbody\r\n"),
        "{}",
        got[0]
    );
    assert!(
        got[0].contains("Received: from client.example.org"),
        "{}",
        got[0]
    );
    assert_eq!(server.wait_maildir("localhost", "carol", 1, WAIT).len(), 1);
    assert!(server.wait_queue_empty(WAIT), "{}", server.log());
    assert!(
        wait_line(
            &server,
            "to=<a@example.net>",
            "mailer=esmtp, \
             relay=[127.0.0.1], dsn=2.0.0, stat=Sent (Ok: queued as 2)",
            WAIT
        ),
        "{}",
        server.log()
    );
}

#[test]
fn a_451_is_retried_and_then_delivered() {
    let (peer_dir, _peer, server) = relayed("smtp");
    send(&server, &["once@example.net"], "greylisted\r\n");
    assert!(
        wait_line(
            &server,
            "to=<once@example.net>",
            "mailer=esmtp, \
             relay=[127.0.0.1], dsn=4.3.0, stat=Deferred: 451 4.3.0 <once@example.net>: \
             greylisted, try again later",
            WAIT
        ),
        "{}",
        server.log()
    );
    let got = wait_stored(peer_dir.path(), 1);
    assert!(got[0].contains("TO once@example.net\n"), "{got:?}");
    assert!(server.wait_queue_empty(WAIT), "{}", server.log());
    assert!(server.log().contains("to=<once@example.net>"));
    assert_eq!(server.log().matches("stat=Sent (").count(), 1);
}

#[test]
fn a_550_bounces_to_the_senders_domain() {
    let (peer_dir, _peer, server) = relayed("smtp");
    send(
        &server,
        &["nosuch@example.net", "ok@example.net"],
        "hello\r\n",
    );
    // The original goes to the good recipient; the DSN comes back to example.org's next
    // hop (the same peer here) from the null sender.
    let got = wait_stored(peer_dir.path(), 2);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].contains("TO ok@example.net\n"), "{}", got[0]);
    let dsn = &got[1];
    assert!(
        dsn.starts_with("FROM <>\nTO alice@example.org\n")
            || dsn.starts_with("FROM \nTO alice@example.org\n"),
        "{dsn}"
    );
    for needle in [
        "Content-Type: multipart/report; report-type=delivery-status",
        "Final-Recipient: RFC822; nosuch@example.net",
        "Action: failed",
        "Status: 5.1.1",
        "Remote-MTA: DNS; [127.0.0.1]",
        "Diagnostic-Code: SMTP; 550 5.1.1 <nosuch@example.net>: Recipient address rejected: no such user",
        "Message-ID: <m1@example.org>",
        "Auto-Submitted: auto-replied",
    ] {
        assert!(dsn.contains(needle), "{needle:?} missing from:\n{dsn}");
    }
    assert!(
        !dsn.contains("Final-Recipient: RFC822; ok@example.net"),
        "{dsn}"
    );
    assert!(server.wait_queue_empty(WAIT), "{}", server.log());
    let log = server.log();
    assert!(
        log.lines().any(|l| l.contains("to=<nosuch@example.net>")
            && l.contains("mailer=esmtp, relay=[127.0.0.1], dsn=5.1.1, stat=User unknown")),
        "{log}"
    );
    assert!(
        log.contains(": DSN: 550 5.1.1 <nosuch@example.net>"),
        "{log}"
    );
}

#[test]
fn a_next_hop_that_is_down_is_retried_until_it_is_up() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Server::start(&relay_config("smtp", port));
    send(&server, &["waiting@example.net"], "patience\r\n");
    assert!(
        wait_line(
            &server,
            "to=<waiting@example.net>",
            "mailer=esmtp, \
             relay=[127.0.0.1], dsn=4.4.1, stat=Deferred: Connection refused by [127.0.0.1]",
            WAIT
        ),
        "{}",
        server.log()
    );
    assert_eq!(server.queue_files().len(), 2, "message and its state");
    let peer_dir = tempfile::tempdir().unwrap();
    let _peer = Peer::start_on("smtp", peer_dir.path(), port);
    let got = wait_stored(peer_dir.path(), 1);
    assert_eq!(got.len(), 1, "{}", server.log());
    assert!(got[0].contains("TO waiting@example.net\n"), "{got:?}");
    assert!(server.wait_queue_empty(WAIT), "{}", server.log());
}

#[test]
fn lmtp_next_hop_gives_each_recipient_its_own_reply() {
    let (peer_dir, _peer, server) = relayed("lmtp");
    send(
        &server,
        &["one@example.net", "full@example.net"],
        "lmtp\r\n",
    );
    let got = wait_stored(peer_dir.path(), 1);
    assert!(
        got[0].contains("TO one@example.net full@example.net\n"),
        "{got:?}"
    );
    assert!(
        wait_line(
            &server,
            "to=<one@example.net>",
            "mailer=lmtp, \
             relay=[127.0.0.1], dsn=2.0.0, stat=Sent (<one@example.net> delivered)",
            WAIT
        ),
        "{}",
        server.log()
    );
    assert!(
        wait_line(
            &server,
            "to=<full@example.net>",
            "mailer=lmtp, \
             relay=[127.0.0.1], dsn=4.2.2, stat=Deferred: 452 4.2.2 <full@example.net> Mailbox full",
            WAIT
        ),
        "{}",
        server.log()
    );
    // Only the deferred recipient is tried again.
    assert!(
        server.wait_log_count("to=<full@example.net>", 2, WAIT),
        "{}",
        server.log()
    );
    assert_eq!(server.log().matches("to=<one@example.net>").count(), 1);
}

/// A next hop that takes the whole message and never answers the final dot.
fn stalling_peer(listener: TcpListener, got_dot: std::sync::mpsc::Sender<()>) {
    std::thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        let mut w = stream.try_clone().unwrap();
        let mut r = BufReader::new(stream);
        let _ = w.write_all(b"220 stall.example ESMTP\r\n");
        let mut line = String::new();
        let mut in_data = false;
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if in_data {
                if l == "." {
                    let _ = got_dot.send(());
                    pause(Duration::from_secs(60));
                    return;
                }
                continue;
            }
            let reply: &[u8] = match l.get(..4).unwrap_or(l).to_ascii_uppercase().as_str() {
                "EHLO" => b"250 stall.example\r\n",
                "DATA" => {
                    in_data = true;
                    b"354 go\r\n"
                }
                _ => b"250 ok\r\n",
            };
            let _ = w.write_all(reply);
        }
    });
}

#[test]
fn sigkill_in_the_middle_of_a_delivery_then_delivered_after_the_restart() {
    let stall = TcpListener::bind("127.0.0.1:0").unwrap();
    let stall_port = stall.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    stalling_peer(stall, tx);
    let mut server = Server::start(&relay_config("smtp", stall_port));
    send(&server, &["crash@example.net"], "survives a crash\r\n");
    // The whole message went out; the next hop never answers: kill -9 the server now.
    rx.recv_timeout(WAIT).expect("the next hop got the message");
    server.kill9();
    assert_eq!(
        server.queue_files().len(),
        1,
        "still spooled after the crash"
    );
    // It comes back with a working next hop and delivers the message it had.
    let peer_dir = tempfile::tempdir().unwrap();
    let peer = Peer::start("smtp", peer_dir.path());
    server.write_config(&relay_config("smtp", peer.port));
    server.restart();
    let got = wait_stored(peer_dir.path(), 1);
    assert!(got[0].contains("TO crash@example.net\n"), "{got:?}");
    assert!(got[0].contains("survives a crash"), "{got:?}");
    assert!(server.wait_queue_empty(WAIT), "{}", server.log());
}

#[test]
fn a_bare_domain_next_hop_is_found_through_its_mx_records() {
    let (_rt, dns) = fake_dns();
    let peer_dir = tempfile::tempdir().unwrap();
    let peer = Peer::start("smtp", peer_dir.path());
    // The preferred MX host refuses connections (nothing listens on 127.0.0.2): the next
    // one by preference gets the mail.
    dns.mx("example.net", 20, "mx2.example.net");
    dns.mx("example.net", 10, "mx1.example.net");
    dns.a("mx1.example.net", std::net::Ipv4Addr::new(127, 0, 0, 2));
    dns.a("mx2.example.net", std::net::Ipv4Addr::LOCALHOST);
    let server = Server::start(&format!(
        "[dns]\nservers = [\"{}\"]\n[relay]\ndomains = [\"example.net\"]\n\
         [[route]]\ndomain = \"example.net\"\nnext_hop = \"smtp:example.net:{}\"\n",
        dns.addr(),
        peer.port
    ));
    send(&server, &["mx@example.net"], "found by MX\r\n");
    let got = wait_stored(peer_dir.path(), 1);
    assert_eq!(got.len(), 1, "{}", server.log());
    assert!(got[0].contains("TO mx@example.net\n"), "{got:?}");
    assert!(
        wait_line(
            &server,
            "to=<mx@example.net>",
            "mailer=esmtp, \
             relay=mx2.example.net [127.0.0.1], dsn=2.0.0, stat=Sent (Ok: queued as 1)",
            WAIT
        ),
        "{}",
        server.log()
    );
    drop(dns);
}

/// Runs `portcullis queue <args> -c <config>`; (exit code, stdout, stderr).
fn queue_cmd(server: &Server, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("queue")
        .args(args)
        .arg("-c")
        .arg(server.config_path())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_queue_commands_reach_the_running_server() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = relay_config("smtp", port);
    // Long enough that only the operator makes the message come back.
    cfg = cfg.replace(
        "retry_min = \"1s\"\nretry_max = \"2s\"",
        "retry_min = \"1h\"\nretry_max = \"2h\"",
    );
    let server = Server::start(&cfg);
    send(&server, &["queued@example.net"], "operator\r\n");
    assert!(server.wait_log("stat=Deferred: Connection refused by [127.0.0.1]", WAIT));
    let (code, list, err) = queue_cmd(&server, &["list"]);
    assert_eq!(code, 0, "{err}");
    assert!(list.contains("(1 request"), "{list}");
    assert!(list.contains("<alice@example.org>"), "{list}");
    assert!(list.contains("<queued@example.net>"), "{list}");
    assert!(list.contains("Connection refused by [127.0.0.1]"), "{list}");
    assert!(err.is_empty(), "through the socket, not the spool: {err}");
    let id = list
        .lines()
        .nth(2)
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .trim_end_matches('-')
        .to_owned();

    // Held: a flush leaves it alone.
    let (code, _, err) = queue_cmd(&server, &["hold", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty(), "{err}");
    assert!(queue_cmd(&server, &["list"]).1.contains("QUARANTINE: held"));
    // Released with the next hop up: delivered at once, not in an hour.
    let peer_dir = tempfile::tempdir().unwrap();
    let _peer = Peer::start_on("smtp", peer_dir.path(), port);
    let (code, _, err) = queue_cmd(&server, &["release", &id]);
    assert_eq!(code, 0, "{err}");
    let got = wait_stored(peer_dir.path(), 1);
    assert!(got[0].contains("TO queued@example.net\n"), "{got:?}");
    assert!(server.wait_queue_empty(WAIT), "{}", server.log());
    let (code, list, _) = queue_cmd(&server, &["list"]);
    assert_eq!((code, list.trim()), (0, "Mail queue is empty"));
    let (code, _, err) = queue_cmd(&server, &["delete", &id]);
    assert_eq!(code, 1);
    assert!(err.contains("no such message"), "{err}");
}

#[test]
fn an_mx_pointing_back_here_bounces_instead_of_looping() {
    let (_rt, dns) = fake_dns();
    let peer_dir = tempfile::tempdir().unwrap();
    let peer = Peer::start("smtp", peer_dir.path());
    // We are the best MX of example.net (a backup MX whose primary is gone from DNS): there
    // is nowhere to send it. The sender's domain is routed to the peer, for the bounce.
    dns.mx("example.net", 10, "mx.example.test");
    dns.a("mx.example.test", std::net::Ipv4Addr::LOCALHOST);
    let server = Server::start(&format!(
        "[dns]\nservers = [\"{}\"]\n[relay]\ndomains = [\"example.net\"]\n\
         [[route]]\ndomain = \"example.org\"\nnext_hop = \"smtp:[127.0.0.1]:{}\"\n",
        dns.addr(),
        peer.port
    ));
    send(&server, &["loop@example.net"], "round and round\r\n");
    let got = wait_stored(peer_dir.path(), 1);
    assert_eq!(got.len(), 1, "{}", server.log());
    assert!(got[0].contains("TO alice@example.org\n"), "{}", got[0]);
    assert!(got[0].contains("Status: 5.3.5"), "{}", got[0]);
    assert!(
        got[0].contains("mail loops back to me (MX problem?)"),
        "{}",
        got[0]
    );
    assert!(server.wait_queue_empty(WAIT), "{}", server.log());
    // Delivered nowhere, tried once.
    assert_eq!(server.log().matches("to=<loop@example.net>").count(), 1);
    drop(dns);
}

#[test]
fn a_message_that_went_round_too_often_bounces() {
    let (peer_dir, _peer, server) = relayed("smtp");
    let hops: String = (0..25)
        .map(|i| format!("Received: from hop{i}.example by hop{}.example; Sat, 21 Nov 2026 10:00:00 +0000\r\n", i + 1))
        .collect();
    // Our own Received: makes 26.
    send(&server, &["looped@example.net"], &format!("x\r\n{hops}"));
    let mut c = Smtp::connect(server.addr());
    c.greet_ehlo("client.example.org");
    assert_eq!(c.cmd("MAIL FROM:<alice@example.org>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<looped@example.net>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c.send_raw(&dot_stuff(&format!("{hops}Subject: loop\r\n\r\nbody\r\n")));
    assert_eq!(c.read_reply().0, 250);
    assert_eq!(c.cmd("QUIT").0, 221);
    // The first message (its Received: lines in the body) went through; the second bounced.
    assert!(
        wait_line(
            &server,
            "to=<looped@example.net>",
            "dsn=5.4.6, stat=Too many hops",
            WAIT
        ),
        "{}",
        server.log()
    );
    let got = wait_stored(peer_dir.path(), 2);
    assert_eq!(got.len(), 2, "{}", server.log());
    assert!(
        got.iter().any(|m| m.contains("Too many hops 26 (25 max)")),
        "{got:?}"
    );
}

#[test]
fn a_next_hop_that_never_answers_does_not_hold_up_other_mail() {
    // One connection slot in all, taken by a next hop that accepts and never greets.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let peer_dir = tempfile::tempdir().unwrap();
    let peer = Peer::start("smtp", peer_dir.path());
    let server = Server::start(&format!(
        "[relay]\ndomains = [\"example.net\", \"example.com\"]\n\
         [queue]\nmax_connections = 1\nretry_min = \"1s\"\nretry_max = \"2s\"\n\
         [[route]]\ndomain = \"example.net\"\nnext_hop = \"smtp:[127.0.0.1]:{silent_port}\"\n\
         [[route]]\ndomain = \"example.com\"\nnext_hop = \"smtp:[127.0.0.1]:{}\"\n",
        peer.port
    ));
    send(&server, &["stuck@example.net"], "first\r\n");
    // Give the runner time to open the session that never ends.
    pause(Duration::from_millis(300));
    send(&server, &["carol@localhost"], "local\r\n");
    send(&server, &["fine@example.com"], "other hop\r\n");
    // Local delivery goes on, and the other hop's mail waits only until the slot is free
    // (here: not within the test), never forever in memory.
    assert_eq!(server.wait_maildir("localhost", "carol", 1, WAIT).len(), 1);
    // The other hop's message waited a moment for the slot, then went back to the queue
    // with its state (retried soon), rather than waiting in memory.
    assert!(
        wait_until(WAIT, || server.queue_files().len() == 3),
        "stuck + fine, with one state file: {:?}\n{}",
        server.queue_files(),
        server.log()
    );
    drop(silent);
}

#[test]
fn a_second_server_on_the_same_spool_is_refused_before_it_touches_it() {
    let server = Server::start("");
    // A file in flight in tmp/ (as the running server's committer would have).
    let in_flight = server
        .spool_dir()
        .join("tmp")
        .join("6ALBkA0000234567.state.7");
    std::fs::write(&in_flight, "in flight").unwrap();
    let other_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(server.config_path())
        .unwrap()
        .replace(&server.port().to_string(), &other_port.to_string());
    let second = server.dir().join("second.toml");
    std::fs::write(&second, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "-c"])
        .arg(&second)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another server"), "{err}");
    assert!(
        in_flight.exists(),
        "the second server's recovery ran: {err}"
    );
    assert!(server.quarantine_files().is_empty());
}

/// A next hop that answers every command at once but holds the reply after each final dot
/// for `hold`; counts the messages it took and the most sessions it had open at once.
fn counting_peer(
    hold: Duration,
) -> (
    u16,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (open, most, taken) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let (most_out, taken_out) = (most.clone(), taken.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let (open, most, taken) = (open.clone(), most.clone(), taken.clone());
            std::thread::spawn(move || {
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let mut w = stream.try_clone().unwrap();
                let mut r = BufReader::new(stream);
                let _ = w.write_all(b"220 count.example ESMTP\r\n");
                let (mut line, mut in_data) = (String::new(), false);
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let l = line.trim_end();
                    if in_data {
                        if l == "." {
                            in_data = false;
                            pause(hold);
                            taken.fetch_add(1, Ordering::SeqCst);
                            let _ = w.write_all(b"250 2.0.0 taken\r\n");
                        }
                        continue;
                    }
                    let verb = l.get(..4).unwrap_or(l).to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" => b"250 count.example\r\n",
                        "DATA" => {
                            in_data = true;
                            b"354 go\r\n"
                        }
                        "QUIT" => b"221 bye\r\n",
                        _ => b"250 ok\r\n",
                    };
                    if verb == "QUIT" {
                        // Counted out before the 221: once the server has it, it may open
                        // the next session at once, and this thread may not have run yet.
                        open.fetch_sub(1, Ordering::SeqCst);
                        let _ = w.write_all(reply);
                        return;
                    }
                    let _ = w.write_all(reply);
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (port, most_out, taken_out)
}

#[test]
fn sessions_to_one_next_hop_stay_within_connections_per_hop() {
    let (port, most, taken) = counting_peer(Duration::from_millis(300));
    let server = Server::start(&format!(
        "[relay]\ndomains = [\"example.net\"]\n[queue]\nconnections_per_hop = 2\n\
         [[route]]\ndomain = \"example.net\"\nnext_hop = \"smtp:[127.0.0.1]:{port}\"\n"
    ));
    for i in 0..6 {
        send(&server, &[&format!("r{i}@example.net")], "counted\r\n");
    }
    assert!(
        wait_until(WAIT, || taken.load(std::sync::atomic::Ordering::SeqCst)
            == 6),
        "{}",
        server.log()
    );
    assert!(server.wait_queue_empty(WAIT), "{}", server.log());
    // Six messages at once, each session held 300 ms: two sessions at a time, never more.
    assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 2);
}
