// These tests drive a real `portcullis serve` process over real loopback sockets with real
// time, so they read the clock and sleep on purpose.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

//! End-to-end tests of the greeting pause and the access map: a slam from 127.0.0.2 over
//! loopback, client names from a fake DNS server, the access file re-read when it changes,
//! start-up with a bad map, and the `portcullis access` commands.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use portcullis::dns::fake::FakeDns;
use support::{HOSTNAME, Server, Smtp, access_file, run_bounded, toml_str, write_atomically};

const LOCAL2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const LOCAL3: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const LOCAL4: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));

/// The seeds' netcat slam: a whole session in one write.
const SLAM: &[u8] = b"HELO client.example.org\r\nMAIL FROM:<alice@example.org>\r\n\
RCPT TO:<root@localhost>\r\nDATA\r\nSubject: t\r\n\r\nhello\r\n.\r\nQUIT\r\n";

/// Seconds until the first reply line, and the line.
fn time_to_greeting(client: &mut Smtp) -> (f64, String) {
    let t0 = Instant::now();
    let line = client.read_line().unwrap().unwrap_or_default();
    (t0.elapsed().as_secs_f64(), line)
}

#[test]
fn slam_from_another_address_is_rejected_and_nothing_is_queued() {
    let server = Server::start("[greet_pause]\ndefault = \"3s\"\n");
    let mut slammer = Smtp::connect_from(server.addr(), LOCAL2);
    slammer.send_raw(SLAM);
    let mut replies = Vec::new();
    while let Ok(Some(line)) = slammer.read_line() {
        replies.push(line);
    }
    let want = [
        "554 mx.example.test ESMTP not accepting messages",
        // Sendmail 8.18: the HELO had the rest of the session behind it (stuffing).
        "554 5.5.0 SMTP protocol error",
        "550 5.0.0 Command rejected",
        "550 5.0.0 Command rejected",
        "550 5.0.0 Command rejected",
        "500 5.5.1 Command unrecognized: \"Subject: t\"",
        "500 5.5.1 Command unrecognized: \"\"",
        "500 5.5.1 Command unrecognized: \"hello\"",
        "500 5.5.1 Command unrecognized: \".\"",
        "221 2.0.0 mx.example.test closing connection",
    ];
    assert_eq!(replies, want);
    assert!(server.wait_log(
        "rejecting commands from [127.0.0.2] due to pre-greeting traffic after 0 seconds",
        Duration::from_secs(5)
    ));
    assert!(server.log().contains("class=\"smtp-command\""));
    assert!(
        server
            .log()
            .contains("rejecting server HELO from [127.0.0.2] due to traffic before response")
    );
    assert!(server.queue_files().is_empty());

    // A client that waits, from another address, gets its greeting after the pause, dated
    // with the connection time as Sendmail dates it.
    let connected = jiff::Timestamp::now();
    let mut patient = Smtp::connect_from(server.addr(), LOCAL3);
    let (secs, line) = time_to_greeting(&mut patient);
    assert!(line.starts_with("220 mx.example.test ESMTP"), "{line}");
    assert!((2.9..4.5).contains(&secs), "greeting after {secs:.3}s");
    let date = line.split_once("; ").map(|(_, d)| d).unwrap_or_default();
    let dated = jiff::fmt::rfc2822::parse(date)
        .unwrap_or_else(|e| panic!("{date:?}: {e}"))
        .timestamp();
    let skew = (dated - connected).get_seconds().abs();
    assert!(
        skew <= 1,
        "greeting dated {dated}, connected at {connected}"
    );
    assert_eq!(patient.cmd("QUIT").0, 221);
    // Remembered: the next connection from 127.0.0.3 is not paused.
    let mut again = Smtp::connect_from(server.addr(), LOCAL3);
    let (secs, line) = time_to_greeting(&mut again);
    assert!(line.starts_with("220 "), "{line}");
    assert!(secs < 1.0, "second greeting after {secs:.3}s");
}

#[test]
fn confirmed_names_select_host_keys() {
    // Loopback clients are all we can open real sockets from, and hickory answers the
    // reverse zone of 127/8 itself (RFC 6761: 127.0.0.1 is `localhost`) without asking any
    // server; the fake DNS server is configured so that nothing leaves the machine. The
    // module tests in tests/dns.rs cover answers from the fake server.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dns = rt.block_on(FakeDns::start()).unwrap();
    let mut server = Server::start("");
    let access = access_file(
        &server,
        "# exempt local clients by name\nGreetPause:localhost 0\n",
    );
    server.write_config(&format!(
        "{access}[greet_pause]\ndefault = \"3s\"\n[dns]\nreverse = true\nservers = [{}]\ntimeout = \"2s\"\n",
        toml_str(&dns.addr().to_string())
    ));
    server.restart();

    let mut named = Smtp::connect(server.addr());
    let (secs, line) = time_to_greeting(&mut named);
    assert!(line.starts_with("220 "), "{line}");
    assert!(
        secs < 1.5,
        "the name's entry exempts it, greeting after {secs:.3}s"
    );
    let ehlo = named.cmd("EHLO client.example.org").1;
    assert!(
        ehlo.starts_with("mx.example.test Hello localhost [127.0.0.1]"),
        "{ehlo}"
    );

    // 127.0.0.2's PTR says `localhost`, which does not point back to it: not confirmed, so
    // the host key does not apply and the default pause does.
    let mut forged = Smtp::connect_from(server.addr(), LOCAL2);
    assert!(forged.is_silent_for(Duration::from_millis(1500)));
    forged.send_raw(b"EHLO forged.example\r\n");
    let (code, text) = forged.read_reply();
    assert_eq!(
        (code, text.as_str()),
        (554, "mx.example.test ESMTP not accepting messages")
    );
    assert!(server.wait_log(
        "rejecting commands from [127.0.0.2] due to pre-greeting traffic after 2 seconds",
        Duration::from_secs(5)
    ));
    drop(rt);
}

#[test]
fn access_file_changes_apply_without_restart_and_bad_versions_are_refused() {
    let mut server = Server::start("");
    let access = access_file(&server, "GreetPause:127.0.0.4 0\n");
    server.write_config(&format!(
        "{access}[greet_pause]\ndefault = \"3s\"\n[access]\nwatch_interval = \"200ms\"\n"
    ));
    server.restart();
    let mut c = Smtp::connect_from(server.addr(), LOCAL4);
    let (secs, _) = time_to_greeting(&mut c);
    assert!(secs < 1.0, "exempt at first: {secs:.3}s");

    // The admin changes the file: new connections follow it at once.
    let path = server.dir().join("access");
    write_atomically(&path, "GreetPause:127.0.0.4 2000\n");
    assert!(server.wait_log_count(" loaded: 1 entries", 2, Duration::from_secs(5)));
    let mut c = Smtp::connect_from(server.addr(), LOCAL4);
    assert!(c.is_silent_for(Duration::from_millis(1000)), "now paused");

    // A broken version is refused with file:line; the last good map stays.
    write_atomically(&path, "GreetPause:127.0.0.4 0\nGreetPause:10.0.0.0/33 0\n");
    assert!(server.wait_log("not reloaded, keeping the old one", Duration::from_secs(5)));
    assert!(
        server.log().contains(&format!("{}:2:", path.display())),
        "{}",
        server.log()
    );
    let mut c = Smtp::connect_from(server.addr(), LOCAL4);
    assert!(
        c.is_silent_for(Duration::from_millis(1000)),
        "still the 2000 ms map"
    );
}

#[test]
fn a_bad_access_map_stops_the_start_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access");
    std::fs::write(&access, "# ok\nConnect:10.1.2.3 REJECT\nGreetPause:\n").unwrap();
    let config = dir.path().join("p.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhostname = {}\nlisten = [\"127.0.0.1:1\"]\nspool_dir = \"spool\"\n\
             [local]\nmaildir_root = \"mail\"\n[access]\nfile = {}\n",
            toml_str(HOSTNAME),
            toml_str(&access.display().to_string())
        ),
    )
    .unwrap();
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .current_dir(dir.path()),
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:3:", access.display())),
        "{stderr}"
    );

    let check = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("check-config")
            .arg("--config")
            .arg(&config),
        Duration::from_secs(20),
    );
    assert_eq!(check.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&check.stderr).contains(":3:"));
}

#[test]
fn access_lookup_and_check_commands() {
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access");
    std::fs::write(
        &access,
        "GreetPause:192.168 0\nGreetPause:mail.example.com 2000\nClientRate: 10\n\
         From:spammer@example.org REJECT\nGreetPause:10.0.0.0/8 400000\n",
    )
    .unwrap();
    let file = access.display().to_string();
    let portcullis = |args: &[&str]| {
        let out = run_bounded(
            Command::new(env!("CARGO_BIN_EXE_portcullis")).args(args),
            Duration::from_secs(20),
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), stdout, stderr)
    };
    // `access lookup --tag TAG ARGS... --file FILE`
    let lookup = |tag: &str, args: &[&str]| {
        let mut all = vec!["access", "lookup", "--tag", tag];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--file", &file]);
        portcullis(&all)
    };

    let (code, stdout, _) = lookup("GreetPause", &["--client", "192.168.1.5"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        stdout,
        format!("0\n{file}:1: GreetPause:192.168 0\nmeaning: no greeting pause\n")
    );
    // The host name is tried first.
    let args = ["--client", "192.168.1.5", "--host", "mail.example.com"];
    let (_, stdout, _) = lookup("GreetPause", &args);
    assert!(stdout.starts_with(&format!("2000\n{file}:2: ")), "{stdout}");
    // The clamp is explained.
    let (_, stdout, _) = lookup("GreetPause", &["--client", "10.9.8.7"]);
    assert!(stdout.contains("(clamped to 300 s)"), "{stdout}");
    // ClientRate falls back to its empty-key default.
    let (_, stdout, _) = lookup("ClientRate", &["--client", "203.0.113.9"]);
    assert!(stdout.starts_with(&format!("10\n{file}:3: ")), "{stdout}");
    // Mail addresses.
    let (_, stdout, _) = lookup("From", &["--address", "spammer@example.org"]);
    assert!(
        stdout.starts_with(&format!("REJECT\n{file}:4: ")),
        "{stdout}"
    );
    // No match: exit 1.
    let (code, stdout, _) = lookup("GreetPause", &["--client", "203.0.113.9"]);
    assert_eq!(code, Some(1));
    assert!(stdout.starts_with("no match for GreetPause"), "{stdout}");

    let (code, stdout, stderr) = portcullis(&["access", "check", &file]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("access map OK: 5 entries"), "{stdout}");
    std::fs::write(&access, "GreetPause:1.2.3.4\n").unwrap();
    let (code, _, stderr) = portcullis(&["access", "check", &file]);
    assert_eq!(code, Some(78));
    assert!(stderr.contains(&format!("{file}:1:")), "{stderr}");
}

#[test]
fn sighup_reloads_the_access_map_when_watching_is_off() {
    let mut server = Server::start("");
    let access = access_file(&server, "GreetPause:127.0.0.4 0\n");
    server.write_config(&format!(
        "{access}[greet_pause]\ndefault = \"3s\"\n[access]\nwatch_interval = \"0s\"\n"
    ));
    server.restart();
    write_atomically(&server.dir().join("access"), "GreetPause:127.0.0.4 2000\n");
    std::thread::sleep(Duration::from_millis(1500));
    let mut c = Smtp::connect_from(server.addr(), LOCAL4);
    let (secs, _) = time_to_greeting(&mut c);
    assert!(secs < 1.0, "not watched: still the old map ({secs:.3}s)");

    server.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(server.wait_log("configuration reloaded", Duration::from_secs(5)));
    let mut c = Smtp::connect_from(server.addr(), LOCAL4);
    assert!(
        c.is_silent_for(Duration::from_millis(1000)),
        "the new map pauses it"
    );
}
