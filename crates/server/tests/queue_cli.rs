// Test code: panics are the failure report; the shared support module bounds its waits with
// the real clock, which is what these real processes run on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

//! `portcullis queue ...`, the real binary: on the spool directly when no server runs (no
//! socket, or a stale one), through the control socket when one listens (served here
//! in-process by `control::serve`, no full server needed), and no fallback when a live
//! socket answers badly.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis::control::{self, OfflineControl, QueueControl};
use portcullis::queue_ops::{Op, Response};
use portcullis_spool::{DeliveryState, Envelope, NewMessage, QueueId, Spool};
use support::{free_port_v4, run_bounded, toml_str};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(30);
/// 2026-11-21 11:46:10 UTC.
const T0: i64 = 1_795_261_570;

/// A configuration whose spool is in a temporary directory.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("portcullis.toml");
        let text = format!(
            "[server]\nhostname = \"mx.example.test\"\nlisten = [\"127.0.0.1:{}\"]\nspool_dir = {}\n\n[local]\nmaildir_root = {}\n",
            free_port_v4(),
            toml_str(&dir.path().join("spool").display().to_string()),
            toml_str(&dir.path().join("mail").display().to_string()),
        );
        std::fs::write(&config, text).unwrap();
        Self { dir, config }
    }

    fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    fn spool(&self) -> Spool {
        Spool::open(&self.spool_dir()).unwrap()
    }

    /// Commits a message from alice to `rcpts`; returns its id.
    fn commit(&self, n: u32, rcpts: &[&str]) -> QueueId {
        let id: QueueId = format!("6ALBkA{n:04}234567").parse().unwrap();
        let msg = NewMessage {
            envelope: Envelope {
                id: id.clone(),
                received_at: T0,
                sender: "alice@example.org".into(),
                recipients: rcpts.iter().map(|r| (*r).to_owned()).collect(),
                client_addr: "192.0.2.7".into(),
                client_name: String::new(),
                helo: "client.example.org".into(),
                protocol: "ESMTP".into(),
                msgid: None,
            },
            data: format!("Subject: message {n}\r\n\r\nbody\r\n").into_bytes(),
        };
        let results = self.spool().commit_batch(&[msg]);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        id
    }

    fn state(&self, id: &QueueId) -> DeliveryState {
        self.spool().read_envelope(id).unwrap().state
    }

    /// `portcullis queue <args> -c <config>`.
    fn queue(&self, args: &[&str]) -> Result3 {
        let out = run_bounded(
            Command::new(env!("CARGO_BIN_EXE_portcullis"))
                .arg("queue")
                .args(args)
                .arg("-c")
                .arg(&self.config),
            LIMIT,
        );
        Result3::from(out)
    }
}

/// Exit code, stdout, stderr.
#[derive(Debug)]
struct Result3 {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl From<Output> for Result3 {
    fn from(out: Output) -> Self {
        Self {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

const OFFLINE_NOTE: &str = "(server not running: changed the spool directly)";

#[test]
fn offline_commands_work_on_the_spool() {
    let s = Setup::new();
    let a = s.commit(1, &["bob@example.net"]);
    let b = s.commit(2, &["carol@example.net", "dave@example.net"]);

    let list = s.queue(&["list"]);
    assert_eq!(list.code, Some(0), "{list:?}");
    assert!(
        list.stderr.is_empty(),
        "nothing extra when offline: {list:?}"
    );
    assert!(list.stdout.contains("(2 requests)"), "{}", list.stdout);
    for want in [
        format!("{a}       28 Sat Nov 21 11:46 <alice@example.org>"),
        format!("{b}       28 Sat Nov 21 11:46 <alice@example.org>"),
        "<carol@example.net>".to_owned(),
        "<dave@example.net>".to_owned(),
    ] {
        assert!(
            list.stdout.contains(&want),
            "{want:?} missing:\n{}",
            list.stdout
        );
    }

    let hold = s.queue(&["hold", a.as_str()]);
    assert_eq!(hold.code, Some(0), "{hold:?}");
    assert!(hold.stdout.starts_with(&format!("{a}: held")), "{hold:?}");
    assert!(hold.stderr.contains(OFFLINE_NOTE), "{hold:?}");
    assert!(s.state(&a).held);
    let list = s.queue(&["list"]);
    let held_entry =
        format!("{a}       28 Sat Nov 21 11:46 <alice@example.org>\n    QUARANTINE: held\n");
    assert!(list.stdout.contains(&held_entry), "{}", list.stdout);

    let release = s.queue(&["release", a.as_str()]);
    assert_eq!(release.code, Some(0), "{release:?}");
    let state = s.state(&a);
    assert!(!state.held && state.next_attempt_at == 0, "{state:?}");
    assert!(!s.queue(&["list"]).stdout.contains("QUARANTINE"));

    s.spool()
        .write_state(
            &b,
            &DeliveryState {
                next_attempt_at: i64::MAX / 2,
                ..Default::default()
            },
        )
        .unwrap();
    let flush = s.queue(&["flush"]);
    assert_eq!(flush.code, Some(0), "{flush:?}");
    assert_eq!(flush.stdout, "2 messages due now\n");
    assert_eq!(s.state(&b).next_attempt_at, 0);

    let show = s.queue(&["show", b.as_str()]);
    assert_eq!(show.code, Some(0), "{show:?}");
    for want in [
        format!("Queue ID:     {b}\n"),
        "Sender:       <alice@example.org>\n".to_owned(),
        "Client:       [192.0.2.7]\n".to_owned(),
        "  pending <dave@example.net>\n".to_owned(),
        "Header section:\nSubject: message 2\n".to_owned(),
    ] {
        assert!(
            show.stdout.contains(&want),
            "{want:?} missing:\n{}",
            show.stdout
        );
    }
    assert!(!show.stdout.contains("body"), "{}", show.stdout);

    let delete = s.queue(&["delete", a.as_str()]);
    assert_eq!(delete.code, Some(0), "{delete:?}");
    assert!(
        delete.stdout.contains("deleted; the message is gone"),
        "{delete:?}"
    );
    assert_eq!(s.spool().list().unwrap(), vec![b]);
    assert!(s.queue(&["list"]).stdout.contains("(1 request)"));
}

#[test]
fn unknown_or_malformed_ids_fail_with_exit_1() {
    let s = Setup::new();
    s.commit(1, &["bob@example.net"]);
    for (args, want) in [
        (
            &["show", "6ALBkA0009234567"][..],
            "no such message: 6ALBkA0009234567\n",
        ),
        (
            &["delete", "6ALBkA0009234567"][..],
            "no such message: 6ALBkA0009234567\n",
        ),
        (
            &["hold", "../../etc"][..],
            "no such message: ../../etc (a queue id is",
        ),
        (&["flush", "x"][..], "no such message: x (a queue id is"),
    ] {
        let got = s.queue(args);
        assert_eq!(got.code, Some(1), "{args:?}: {got:?}");
        assert!(got.stderr.starts_with(want), "{args:?}: {got:?}");
        assert!(got.stdout.is_empty(), "{args:?}: {got:?}");
    }
}

#[test]
fn a_missing_spool_or_a_bad_configuration_is_not_an_empty_queue() {
    let s = Setup::new();
    let got = s.queue(&["list"]);
    assert_eq!(got.code, Some(1), "{got:?}");
    assert!(got.stderr.contains("no spool at"), "{got:?}");
    assert!(!s.spool_dir().exists(), "the command created nothing");

    std::fs::write(&s.config, "[server]\nbogus = 1\n").unwrap();
    let got = s.queue(&["list"]);
    assert_eq!(got.code, Some(78), "{got:?}");
    assert!(got.stderr.contains("bogus"), "{got:?}");
}

/// Wraps the offline handler and records what reached it through the socket.
struct Recording {
    inner: OfflineControl,
    seen: Arc<Mutex<Vec<Op>>>,
}

impl QueueControl for Recording {
    fn execute(
        &self,
        op: Op,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>> {
        self.seen.lock().unwrap().push(op.clone());
        self.inner.execute(op)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_commands_go_through_the_socket() {
    let s = Arc::new(Setup::new());
    let id = s.commit(1, &["bob@example.net"]);
    s.spool()
        .write_state(
            &id,
            &DeliveryState {
                next_attempt_at: i64::MAX / 2,
                ..Default::default()
            },
        )
        .unwrap();
    let path = control::socket_path(&s.spool_dir());
    let listener = tokio::net::UnixListener::from_std(control::bind(&path).unwrap()).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o600, "socket mode {mode:o}");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler = Recording {
        inner: OfflineControl::new(Arc::new(s.spool())),
        seen: seen.clone(),
    };
    let token = CancellationToken::new();
    let server = tokio::spawn(control::serve(listener, Arc::new(handler), token.clone()));

    let (cli, flush_id) = (s.clone(), id.clone());
    let (list, flush, missing) = tokio::task::spawn_blocking(move || {
        (
            cli.queue(&["list"]),
            cli.queue(&["flush", flush_id.as_str()]),
            cli.queue(&["release", "6ALBkA0009234567"]),
        )
    })
    .await
    .unwrap();
    assert_eq!(list.code, Some(0), "{list:?}");
    assert!(
        list.stdout.contains(&format!("{id}-")),
        "waiting: {}",
        list.stdout
    );
    assert!(list.stderr.is_empty(), "{list:?}");
    assert_eq!(flush.code, Some(0), "{flush:?}");
    assert_eq!(flush.stdout, format!("{id}: due now\n"));
    assert!(
        !flush.stderr.contains(OFFLINE_NOTE),
        "went online: {flush:?}"
    );
    assert_eq!(missing.code, Some(1), "{missing:?}");
    assert_eq!(missing.stderr, "no such message: 6ALBkA0009234567\n");
    assert_eq!(
        s.state(&id).next_attempt_at,
        0,
        "the server's handler changed it"
    );
    let missing_id: QueueId = "6ALBkA0009234567".parse().unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Op::List, Op::Flush(Some(id)), Op::Release(missing_id)]
    );
    token.cancel();
    tokio::time::timeout(LIMIT, server).await.unwrap().unwrap();
}

#[test]
fn a_stale_socket_means_no_server() {
    let s = Setup::new();
    let id = s.commit(1, &["bob@example.net"]);
    let path = control::socket_path(&s.spool_dir());
    drop(control::bind(&path).unwrap());
    assert!(path.exists(), "stale socket left behind");
    let list = s.queue(&["list"]);
    assert_eq!(list.code, Some(0), "{list:?}");
    assert!(list.stdout.contains(id.as_str()), "{list:?}");
    let hold = s.queue(&["hold", id.as_str()]);
    assert_eq!(hold.code, Some(0), "{hold:?}");
    assert!(hold.stderr.contains(OFFLINE_NOTE), "{hold:?}");
    assert!(s.state(&id).held);
}

/// A live socket that answers nonsense is a failure, not a reason to touch the spool.
#[test]
fn a_live_server_that_answers_badly_is_an_error_without_fallback() {
    let s = Setup::new();
    let id = s.commit(1, &["bob@example.net"]);
    let path = control::socket_path(&s.spool_dir());
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let peer = std::thread::spawn(move || {
        use std::io::{BufRead, BufReader, Write};
        let (stream, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        (&stream).write_all(b"what?\n").unwrap();
        line
    });
    let hold = s.queue(&["hold", id.as_str()]);
    assert_eq!(peer.join().unwrap(), format!("hold {id}\n"));
    assert_eq!(hold.code, Some(1), "{hold:?}");
    assert!(
        hold.stderr.contains("bad answer from the server"),
        "{hold:?}"
    );
    assert!(
        hold.stderr.contains("the spool was not touched"),
        "{hold:?}"
    );
    assert!(!s.state(&id).held, "no fallback");
}
