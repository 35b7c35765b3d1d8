//! The relay client end to end: `relay::attempt` driving the sans-IO client against an
//! independently written next hop (Python's aiosmtpd, SMTP and LMTP, over loopback), and
//! against a scripted peer over `tokio::io::duplex` with paused time for the timeouts.

// Test code: panics are the failure report; paused time is read to check the timeout.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use portcullis::relay::{AttemptTimeouts, attempt};
use portcullis_smtp::{Client, ClientConfig, Envelope, RcptOutcome, RcptStatus, StartTls};
use support::peer::{Peer, stored};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as TokioBufReader};

fn client(lmtp: bool, recipients: &[&str], size: usize) -> Client {
    let cfg = Arc::new(ClientConfig {
        helo_name: "mx.example.test".into(),
        lmtp,
        starttls: StartTls::Never,
    });
    let envelope = Envelope::new(
        "alice@example.org".to_owned(),
        recipients.iter().map(|r| (*r).to_owned()).collect(),
        size as u64,
    );
    Client::new(cfg, "[127.0.0.1]", envelope)
}

fn statuses(outcomes: &[RcptOutcome]) -> Vec<(String, RcptStatus)> {
    outcomes
        .iter()
        .map(|o| (o.recipient.clone(), o.status))
        .collect()
}

const MESSAGE: &[u8] =
    b"Subject: relay test\r\n\r\n.a line that starts with a dot\r\n..two dots\r\nlast line\r\n";

/// Delivers `MESSAGE` to `recipients` through a fresh aiosmtpd next hop speaking `kind`
/// (`smtp` or `lmtp`); returns the outcomes and the directory the peer stored into.
async fn deliver_to_aiosmtpd(
    kind: &str,
    recipients: &[&str],
) -> (Vec<RcptOutcome>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let peer = Peer::start(kind, dir.path());
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", peer.port))
        .await
        .unwrap();
    let c = client(kind == "lmtp", recipients, MESSAGE.len());
    let outcomes = attempt(stream, c, MESSAGE, &AttemptTimeouts::default()).await;
    (outcomes, dir)
}

#[tokio::test]
async fn smtp_next_hop_gets_the_message_and_each_recipient_its_outcome() {
    let (outcomes, dir) = deliver_to_aiosmtpd(
        "smtp",
        &[
            "bob@example.net",
            "nosuch@example.net",
            "later@example.net",
            "carol@example.net",
        ],
    )
    .await;
    assert_eq!(
        statuses(&outcomes),
        vec![
            ("bob@example.net".into(), RcptStatus::Delivered),
            ("nosuch@example.net".into(), RcptStatus::PermFail),
            ("later@example.net".into(), RcptStatus::TempFail),
            ("carol@example.net".into(), RcptStatus::Delivered),
        ]
    );
    assert_eq!(outcomes[1].reply.code, 550);
    assert!(
        outcomes[0]
            .reply
            .to_log_string()
            .starts_with("250 2.0.0 Ok: queued as 2")
    );
    // The peer unstuffed what we stuffed: the message arrives as it was.
    let messages = stored(dir.path());
    assert_eq!(messages.len(), 1);
    let want = format!(
        "FROM alice@example.org\nTO bob@example.net carol@example.net\n\n{}",
        String::from_utf8_lossy(MESSAGE)
    );
    assert_eq!(messages[0], want);
}

#[tokio::test]
async fn lmtp_next_hop_answers_each_recipient_after_the_data() {
    let (outcomes, dir) = deliver_to_aiosmtpd(
        "lmtp",
        &["bob@example.net", "full@example.net", "nosuch@example.net"],
    )
    .await;
    assert_eq!(
        statuses(&outcomes),
        vec![
            ("bob@example.net".into(), RcptStatus::Delivered),
            ("full@example.net".into(), RcptStatus::TempFail),
            ("nosuch@example.net".into(), RcptStatus::PermFail),
        ]
    );
    assert_eq!(
        outcomes[1].reply.to_log_string(),
        "452 4.2.2 <full@example.net> Mailbox full"
    );
    assert_eq!(stored(dir.path()).len(), 1);
}

#[tokio::test]
async fn a_next_hop_that_closes_at_once_is_a_temporary_failure() {
    // The connection ends before the greeting: every recipient fails temporarily.
    let (ours, theirs) = tokio::io::duplex(1024);
    drop(theirs);
    let c = client(false, &["bob@example.net", "carol@example.net"], 10);
    let outcomes = attempt(ours, c, b"x\r\n", &AttemptTimeouts::default()).await;
    assert!(outcomes.iter().all(|o| o.status == RcptStatus::TempFail));
    assert_eq!(outcomes.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_next_hop_that_stalls_after_the_data_times_out_at_datafinal() {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let timeouts = AttemptTimeouts {
        datafinal: Duration::from_secs(600),
        ..AttemptTimeouts::default()
    };
    // A scripted next hop without PIPELINING that never answers the final dot.
    let peer = tokio::spawn(async move {
        let (rd, mut wr) = tokio::io::split(theirs);
        let mut lines = TokioBufReader::new(rd).lines();
        wr.write_all(b"220 next.example ESMTP\r\n").await.unwrap();
        let mut in_data = false;
        while let Ok(Some(line)) = lines.next_line().await {
            if in_data {
                if line == "." {
                    // Stall: hold the connection open, answer nothing.
                    std::future::pending::<()>().await;
                }
                continue;
            }
            let reply: &[u8] = match line.get(..4).unwrap_or("") {
                "EHLO" => b"250-next.example\r\n250 8BITMIME\r\n",
                "MAIL" | "RCPT" => b"250 2.1.0 Ok\r\n",
                "DATA" => {
                    in_data = true;
                    b"354 go ahead\r\n"
                }
                _ => b"500 what\r\n",
            };
            wr.write_all(reply).await.unwrap();
        }
    });
    let started = tokio::time::Instant::now();
    let c = client(false, &["bob@example.net"], 3);
    let outcomes = attempt(ours, c, b"x\r\n", &timeouts).await;
    assert_eq!(started.elapsed(), Duration::from_secs(600));
    assert_eq!(outcomes[0].status, RcptStatus::TempFail);
    let text = outcomes[0].reply.to_log_string();
    assert!(text.contains("timed out"), "{text}");
    assert!(text.contains("may be sent more than once"), "{text}");
    peer.abort();
}

#[tokio::test]
async fn connect_reaches_each_kind_of_next_hop() {
    use portcullis::relay::connect;
    use portcullis_config::next_hop::NextHop;
    let limit = Duration::from_secs(5);

    // An address literal and a bracketed name, against the aiosmtpd next hop.
    let dir = tempfile::tempdir().unwrap();
    let peer = Peer::start("smtp", dir.path());
    for (text, shown) in [
        (
            format!("smtp:[127.0.0.1]:{}", peer.port),
            "[127.0.0.1]".to_owned(),
        ),
        (
            format!("smtp:[localhost]:{}", peer.port),
            "localhost [".to_owned(),
        ),
    ] {
        let hop = NextHop::parse(&text).unwrap();
        let (stream, name) = connect(&hop, limit).await.unwrap();
        assert!(name.starts_with(&shown), "{name}");
        let c = client(false, &["bob@example.net"], MESSAGE.len());
        let outcomes = attempt(stream, c, MESSAGE, &AttemptTimeouts::default()).await;
        assert_eq!(outcomes[0].status, RcptStatus::Delivered, "{text}");
    }
    assert_eq!(stored(dir.path()).len(), 2);

    // LMTP over a Unix socket, with a scripted next hop.
    let sock = dir.path().join("lmtp.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let (rd, mut wr) = tokio::io::split(s);
        let mut lines = TokioBufReader::new(rd).lines();
        wr.write_all(b"220 lmtp.example LMTP\r\n").await.unwrap();
        let mut in_data = false;
        let mut seen = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line.clone());
            let reply: &[u8] = if in_data {
                if line != "." {
                    continue;
                }
                in_data = false;
                b"250 2.0.0 bob ok\r\n"
            } else {
                match line.get(..4).unwrap_or("") {
                    "LHLO" => b"250-lmtp.example\r\n250 PIPELINING\r\n",
                    "MAIL" | "RCPT" => b"250 2.1.0 Ok\r\n",
                    "DATA" => {
                        in_data = true;
                        b"354 go ahead\r\n"
                    }
                    "QUIT" => b"221 bye\r\n",
                    _ => b"500 what\r\n",
                }
            };
            wr.write_all(reply).await.unwrap();
        }
        seen
    });
    let hop = NextHop::parse(&format!("lmtp:unix:{}", sock.display())).unwrap();
    let (stream, name) = connect(&hop, limit).await.unwrap();
    assert_eq!(name, format!("unix:{}", sock.display()));
    let c = client(true, &["bob@example.net"], MESSAGE.len());
    let outcomes = attempt(stream, c, MESSAGE, &AttemptTimeouts::default()).await;
    assert_eq!(outcomes[0].status, RcptStatus::Delivered);
    let seen = server.await.unwrap();
    assert_eq!(seen[0], "LHLO mx.example.test");
    // On the wire every line starting with a dot has one more (RFC 5321 §4.5.2).
    assert!(
        seen.contains(&"..a line that starts with a dot".to_owned()),
        "{seen:?}"
    );
    assert!(seen.contains(&"...two dots".to_owned()), "{seen:?}");

    // Nothing listening: an error naming the next hop, never a panic.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let hop = NextHop::parse(&format!("smtp:[127.0.0.1]:{port}")).unwrap();
    let err = connect(&hop, limit).await.err().unwrap();
    // Sendmail's words, which log tools know.
    assert_eq!(err, "Connection refused by [127.0.0.1]");
    // A bare domain needs an MX lookup, which `connect` does not make: refused with why.
    let err = connect(&NextHop::parse("smtp:example.net").unwrap(), limit)
        .await
        .err()
        .unwrap();
    assert!(err.contains("no MX lookups"), "{err}");
}

/// A scripted next hop over `duplex`: answers the greeting, EHLO (with PIPELINING), MAIL and
/// every RCPT, and DATA with 354; then runs `in_data` on the rest of the stream.
async fn scripted_until_data<F, Fut>(theirs: tokio::io::DuplexStream, in_data: F)
where
    F: FnOnce(
        tokio::io::Lines<TokioBufReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>>,
        tokio::io::WriteHalf<tokio::io::DuplexStream>,
    ) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (rd, mut wr) = tokio::io::split(theirs);
    let mut lines = TokioBufReader::new(rd).lines();
    wr.write_all(b"220 next.example ESMTP\r\n").await.unwrap();
    while let Ok(Some(line)) = lines.next_line().await {
        let reply: &[u8] = match line.get(..4).unwrap_or("") {
            "EHLO" => b"250-next.example\r\n250 PIPELINING\r\n",
            "MAIL" | "RCPT" => b"250 2.1.0 Ok\r\n",
            "DATA" => {
                wr.write_all(b"354 go ahead\r\n").await.unwrap();
                in_data(lines, wr).await;
                return;
            }
            _ => b"500 what\r\n",
        };
        wr.write_all(reply).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn an_early_refusal_in_the_message_is_heard_though_the_peer_stops_reading() {
    // The peer reads a little of a large message, answers 552 and reads no more: the
    // driver must not wait for `datablock` on a write that cannot finish.
    let (ours, theirs) = tokio::io::duplex(8 * 1024);
    let peer = tokio::spawn(scripted_until_data(
        theirs,
        |mut lines, mut wr| async move {
            let _ = lines.next_line().await;
            wr.write_all(b"552 5.3.4 Message too big for this system\r\n")
                .await
                .unwrap();
            std::future::pending::<()>().await;
        },
    ));
    let message = format!("{}\r\n", "x".repeat(78)).repeat(20_000);
    let started = tokio::time::Instant::now();
    let c = client(false, &["bob@example.net"], message.len());
    let outcomes = attempt(ours, c, message.as_bytes(), &AttemptTimeouts::default()).await;
    assert!(
        started.elapsed() < Duration::from_secs(5 * 60),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        outcomes[0].status,
        RcptStatus::PermFail,
        "{:?}",
        outcomes[0]
    );
    assert_eq!(outcomes[0].reply.code, 552);
    peer.abort();
}

#[tokio::test(start_paused = true)]
async fn a_large_pipelined_group_does_not_deadlock_on_a_small_window() {
    // 300 recipients in one RFC 2920 group through a 1 KiB pipe: the peer writes each reply
    // before it reads on, so a driver that only wrote would wait for the timeout.
    let (ours, theirs) = tokio::io::duplex(1024);
    let peer = tokio::spawn(scripted_until_data(
        theirs,
        |mut lines, mut wr| async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line == "." {
                    wr.write_all(b"250 2.0.0 queued\r\n").await.unwrap();
                }
                if line == "QUIT" {
                    wr.write_all(b"221 bye\r\n").await.unwrap();
                    return;
                }
            }
        },
    ));
    let rcpts: Vec<String> = (0..300).map(|i| format!("user{i}@example.net")).collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let started = tokio::time::Instant::now();
    let c = client(false, &refs, MESSAGE.len());
    let outcomes = attempt(ours, c, MESSAGE, &AttemptTimeouts::default()).await;
    assert_eq!(started.elapsed(), Duration::ZERO, "no timeout waited for");
    assert_eq!(outcomes.len(), 300);
    assert!(outcomes.iter().all(|o| o.status == RcptStatus::Delivered));
    peer.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_peer_trickling_bytes_cannot_stretch_a_phase() {
    // One byte of the greeting every 4 minutes: the 5-minute `initial` deadline holds.
    let (ours, theirs) = tokio::io::duplex(1024);
    let peer = tokio::spawn(async move {
        let (_rd, mut wr) = tokio::io::split(theirs);
        for b in b"220 slow.example ESMTP\r\n" {
            tokio::time::sleep(Duration::from_secs(240)).await;
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
        }
        std::future::pending::<()>().await;
    });
    let started = tokio::time::Instant::now();
    let c = client(false, &["bob@example.net"], 3);
    let outcomes = attempt(ours, c, b"x\r\n", &AttemptTimeouts::default()).await;
    assert_eq!(started.elapsed(), Duration::from_secs(300));
    assert_eq!(outcomes[0].status, RcptStatus::TempFail);
    peer.abort();
}
