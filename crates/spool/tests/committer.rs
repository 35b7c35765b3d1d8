//! The group-commit pool under concurrency, overload and shutdown.

// Test helpers outside #[test] fns are not covered by allow-unwrap-in-tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use portcullis_spool::{
    CommitOptions, Committer, Envelope, NewMessage, QueueId, QueueIdGen, Spool, SubmitError,
};

const T0: i64 = 1_795_261_570;

fn message(id: QueueId, n: usize) -> NewMessage {
    NewMessage {
        envelope: Envelope {
            id,
            received_at: T0,
            sender: format!("s{n}@example.org"),
            recipients: vec![format!("r{n}@example.net")],
            client_addr: "::1".into(),
            client_name: String::new(),
            helo: "client".into(),
            protocol: "ESMTP".into(),
            msgid: None,
        },
        data: format!("Subject: {n}\r\n\r\nmessage {n}\r\n").into_bytes(),
    }
}

#[test]
fn concurrent_submitters_all_hear_back_once() {
    const SUBMITTERS: usize = 8;
    const PER_THREAD: usize = 250;
    const TOTAL: usize = SUBMITTERS * PER_THREAD;
    let root = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(root.path()).unwrap());
    // Capacity for all: this test is about delivery of callbacks, not backpressure.
    let opts = CommitOptions {
        queue_capacity: TOTAL,
        ..CommitOptions::default()
    };
    let committer = Arc::new(Committer::start(Arc::clone(&spool), opts).unwrap());
    let ids = Arc::new(QueueIdGen::new(std::process::id()));
    let calls: Arc<Vec<AtomicU32>> = Arc::new((0..TOTAL).map(|_| AtomicU32::new(0)).collect());
    let committed = Arc::new(Mutex::new(Vec::new()));

    let submitters: Vec<_> = (0..SUBMITTERS)
        .map(|t| {
            let (committer, ids) = (Arc::clone(&committer), Arc::clone(&ids));
            let (calls, committed) = (Arc::clone(&calls), Arc::clone(&committed));
            thread::spawn(move || {
                for i in 0..PER_THREAD {
                    let n = t * PER_THREAD + i;
                    let (calls, committed) = (Arc::clone(&calls), Arc::clone(&committed));
                    let done = Box::new(move |result: Result<QueueId, _>| {
                        calls[n].fetch_add(1, Ordering::SeqCst);
                        committed.lock().unwrap().push((n, result.unwrap()));
                    });
                    committer.submit(message(ids.next(T0), n), done).unwrap();
                }
            })
        })
        .collect();
    for s in submitters {
        s.join().unwrap();
    }
    committer.shutdown();

    assert!(
        calls.iter().all(|c| c.load(Ordering::SeqCst) == 1),
        "each callback exactly once"
    );
    let committed = committed.lock().unwrap();
    assert_eq!(committed.len(), TOTAL);
    for (n, id) in committed.iter() {
        let stored = spool.read(id).unwrap();
        assert_eq!(stored.envelope.sender, format!("s{n}@example.org"));
        assert_eq!(stored.data, message(id.clone(), *n).data);
    }
    assert_eq!(spool.list().unwrap().len(), TOTAL);
    assert_eq!(
        committer.submit(message(ids.next(T0), 0), Box::new(|_| {})),
        Err(SubmitError::Closed)
    );
}

#[test]
fn full_when_workers_are_stalled_then_shutdown_drains() {
    let root = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(root.path()).unwrap());
    let opts = CommitOptions {
        max_batch: 1,
        queue_capacity: 1,
        threads: 1,
    };
    let committer = Committer::start(Arc::clone(&spool), opts).unwrap();
    let ids = QueueIdGen::new(1);
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (results_tx, results_rx) = mpsc::channel();

    // The first callback holds the only worker until we release it.
    let results = results_tx.clone();
    let stall = Box::new(move |r: Result<QueueId, _>| {
        entered_tx.send(()).unwrap();
        release_rx.recv().unwrap();
        results.send(r.is_ok()).unwrap();
    });
    committer.submit(message(ids.next(T0), 0), stall).unwrap();
    entered_rx.recv().unwrap();

    let results = results_tx.clone();
    let queued = Box::new(move |r: Result<QueueId, _>| results.send(r.is_ok()).unwrap());
    committer.submit(message(ids.next(T0), 1), queued).unwrap();
    let refused = committer.submit(message(ids.next(T0), 2), Box::new(|_| panic!("refused")));
    assert_eq!(refused, Err(SubmitError::Full));

    release_tx.send(()).unwrap();
    committer.shutdown();
    drop(results_tx);
    assert_eq!(results_rx.iter().collect::<Vec<_>>(), vec![true, true]);
    assert_eq!(spool.list().unwrap().len(), 2);
    assert_eq!(
        committer.submit(message(ids.next(T0), 3), Box::new(|_| {})),
        Err(SubmitError::Closed)
    );
}

#[test]
fn failed_commit_reports_the_error_and_a_panicking_callback_is_contained() {
    let root = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(root.path()).unwrap());
    let opts = CommitOptions {
        max_batch: 1,
        queue_capacity: 8,
        threads: 1,
    };
    let committer = Committer::start(Arc::clone(&spool), opts).unwrap();
    let id = QueueIdGen::new(1).next(T0);
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    committer
        .submit(message(id.clone(), 0), Box::new(|_| panic!("callback bug")))
        .unwrap();
    // Same id again: the spool refuses to overwrite, the callback gets the error.
    committer
        .submit(
            message(id.clone(), 1),
            Box::new(move |r| tx.send(r.is_err()).unwrap()),
        )
        .unwrap();
    committer
        .submit(
            message(QueueIdGen::new(2).next(T0), 2),
            Box::new(move |r| tx2.send(r.is_ok()).unwrap()),
        )
        .unwrap();
    committer.shutdown();
    assert_eq!(
        rx.iter().collect::<Vec<_>>(),
        vec![true, true],
        "worker survived the panic"
    );
    assert_eq!(spool.read(&id).unwrap().envelope.sender, "s0@example.org");
}

/// Inline mode (threads = 0) commits before `submit` returns: what paused-time tests need.
#[test]
fn inline_mode_commits_before_submit_returns() {
    let dir = tempfile::tempdir().unwrap();
    let spool = std::sync::Arc::new(portcullis_spool::Spool::open(dir.path()).unwrap());
    let opts = portcullis_spool::CommitOptions {
        threads: 0,
        ..Default::default()
    };
    let committer = portcullis_spool::Committer::start(spool.clone(), opts).unwrap();
    let id = portcullis_spool::QueueIdGen::new(7).next(1_800_000_000);
    let msg = portcullis_spool::NewMessage {
        envelope: portcullis_spool::Envelope {
            id: id.clone(),
            received_at: 1_800_000_000,
            sender: "a@b.c".into(),
            recipients: vec!["d@localhost".into()],
            client_addr: "127.0.0.1".into(),
            client_name: String::new(),
            helo: "h".into(),
            protocol: "ESMTP".into(),
            msgid: None,
        },
        data: b"x\r\n".to_vec(),
    };
    let got = std::sync::Arc::new(std::sync::Mutex::new(None));
    let sink = got.clone();
    committer
        .submit(
            msg,
            Box::new(move |r| *sink.lock().unwrap() = Some(r.map_err(|e| e.to_string()))),
        )
        .unwrap();
    assert_eq!(
        got.lock().unwrap().clone(),
        Some(Ok(id.clone())),
        "callback ran inside submit"
    );
    assert!(spool.read(&id).is_ok());
    committer.shutdown();
    let late = committer.submit(
        portcullis_spool::NewMessage {
            envelope: spool.read(&id).unwrap().envelope,
            data: Vec::new(),
        },
        Box::new(|_| {}),
    );
    assert_eq!(late, Err(portcullis_spool::SubmitError::Closed));
}
