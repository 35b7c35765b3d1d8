//! The queue runner against a real spool and Maildir: temporary failures are retried with
//! backoff, and a message past its lifetime bounces (a failing bounce ends with the
//! postmaster, and a failing notice to the postmaster is dropped, logged).
//!
//! These use real (not paused) time: retries are scheduled on the wall clock in whole
//! seconds, so each test waits a few seconds at most.

// Test code: panics are the failure report; waiting uses the real clock on purpose.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::serve::build;
use portcullis::state::Shared;
use portcullis::telemetry::Telemetry;
use portcullis_config::{LogFormat, load_str};
use portcullis_spool::{CommitOptions, Envelope, NewMessage, QueueId};
use tokio_util::sync::CancellationToken;

fn config(dir: &Path, extra: &str) -> portcullis_config::Config {
    let toml = format!(
        "server.hostname = \"mx.example.test\"\nserver.spool_dir = \"{0}/spool\"\nlocal.maildir_root = \"{0}/mail\"\nlocal.domains = [\"localhost\"]\n{extra}",
        dir.display()
    );
    load_str(&toml, "test").unwrap().config
}

fn spool_message(shared: &Shared, rcpt: &str) -> QueueId {
    let id = shared.ids.next(portcullis::clock::unix_secs());
    let envelope = Envelope {
        id: id.clone(),
        received_at: portcullis::clock::unix_secs(),
        sender: "bob@example.org".into(),
        recipients: vec![rcpt.into()],
        client_addr: "127.0.0.1".into(),
        client_name: String::new(),
        helo: "c".into(),
        protocol: "ESMTP".into(),
        msgid: None,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let msg = NewMessage {
        envelope,
        data: b"Subject: q\r\n\r\nbody\r\n".to_vec(),
    };
    shared
        .committer
        .submit(msg, Box::new(move |r| tx.send(r.is_ok()).unwrap()))
        .unwrap();
    assert!(rx.recv().unwrap());
    id
}

async fn wait_for(shared: &Shared, needle: &str, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if shared.telemetry.lines().iter().any(|l| l.contains(needle)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A server whose Maildir root is broken (a file), one message spooled, the runner started.
struct Broken {
    dir: tempfile::TempDir,
    shared: Arc<Shared>,
    id: QueueId,
    token: CancellationToken,
    runner: tokio::task::JoinHandle<()>,
}

fn start_broken(queue_config: &str) -> Broken {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), queue_config);
    let inline = CommitOptions {
        threads: 0,
        ..Default::default()
    };
    let built = build(cfg, Telemetry::memory(LogFormat::Syslog), inline).unwrap();
    let shared: Arc<Shared> = built.shared;
    let root = dir.path().join("mail");
    std::fs::remove_dir(&root).unwrap();
    std::fs::write(&root, b"not a directory").unwrap();
    let id = spool_message(&shared, "alice@localhost");
    let token = CancellationToken::new();
    let rx = built.queue_rx;
    let runner = tokio::spawn(portcullis::queue::run(
        shared.clone(),
        rx,
        vec![id.clone()],
        token.clone(),
    ));
    Broken {
        dir,
        shared,
        id,
        token,
        runner,
    }
}

#[tokio::test]
async fn temporary_failure_is_retried_then_delivered() {
    let Broken {
        dir,
        shared,
        id,
        token,
        runner,
    } = start_broken("queue.retry_min = \"1s\"\nqueue.retry_max = \"2s\"\n");
    let root = dir.path().join("mail");

    assert!(
        wait_for(&shared, "stat=Deferred", Duration::from_secs(5)).await,
        "{:?}",
        shared.telemetry.lines()
    );
    let state = shared.spool.read(&id).unwrap().state;
    assert_eq!(state.attempts, 1);
    assert!(state.last_error.is_some());
    assert!(!state.held);

    // Repair it; the retry (after retry_min) delivers and empties the spool.
    std::fs::remove_file(&root).unwrap();
    std::fs::create_dir(&root).unwrap();
    assert!(
        wait_for(&shared, "stat=Sent", Duration::from_secs(10)).await,
        "{:?}",
        shared.telemetry.lines()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(shared.spool.list().unwrap().is_empty());
    let new = root.join("localhost/alice/new");
    let files: Vec<_> = std::fs::read_dir(&new).unwrap().collect();
    assert_eq!(files.len(), 1);
    let data = std::fs::read(files[0].as_ref().unwrap().path()).unwrap();
    assert_eq!(data, b"Subject: q\r\n\r\nbody\r\n");
    token.cancel();
    runner.await.unwrap();
}

#[tokio::test]
async fn past_its_lifetime_a_message_bounces_and_a_failing_bounce_ends_with_the_postmaster() {
    // The sender's domain does not exist (the fake DNS knows no names): the DSN to it fails
    // for good.
    let dns = portcullis::dns::fake::FakeDns::start().await.unwrap();
    let Broken {
        dir: _dir,
        shared,
        id,
        token,
        runner,
    } = start_broken(
        // Ages are whole seconds: with a lifetime of 2 s the first attempt (at age 0 or 1)
        // always fails and is retried before the message expires.
        &format!(
            "queue.retry_min = \"1s\"\nqueue.retry_max = \"1s\"\nqueue.lifetime = \"2s\"\n\
             dns.reverse = false\ndns.servers = [\"{}\"]\n",
            dns.addr()
        ),
    );
    // The DSN to bob@example.org bounces (no such domain); the notice about it to the
    // postmaster cannot be delivered (the Maildir is broken) and, past its own lifetime, is
    // dropped, logged: nothing loops, nothing is left in the queue.
    assert!(
        wait_for(
            &shared,
            "no DSN sent: a notice to the postmaster could not be delivered",
            Duration::from_secs(20)
        )
        .await,
        "{:?}",
        shared.telemetry.lines()
    );
    let lines = shared.telemetry.lines();
    let dsn_lines: Vec<&String> = lines.iter().filter(|l| l.contains(": DSN: ")).collect();
    assert_eq!(dsn_lines.len(), 2, "{lines:#?}");
    assert!(dsn_lines[0].contains(&format!("{id}: ")), "{lines:#?}");
    assert!(dsn_lines[0].contains("DSN: Cannot send message for 2 seconds"));
    assert!(dsn_lines[1].contains("DSN: Host unknown (Name server: example.org: host not found)"));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("to=<bob@example.org>, delay=")
                && l.contains("mailer=esmtp, dsn=5.1.2, stat=Host unknown")),
        "the bounce went to the envelope sender: {lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("to=<postmaster>") && l.contains("stat=Deferred")),
        "the failed bounce went to the postmaster: {lines:#?}"
    );
    assert!(matches!(
        shared.spool.read(&id),
        Err(portcullis_spool::SpoolError::NotFound { .. })
    ));
    token.cancel();
    runner.await.unwrap();
    assert_eq!(shared.spool.list().unwrap(), Vec::<QueueId>::new());
}
