//! Spool behaviour on a real file system: commit, read, state, remove, recovery.

// Test helpers outside #[test] fns are not covered by allow-unwrap-in-tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;

use portcullis_spool::{
    DeliveryState, Envelope, NewMessage, QueueId, QueueIdGen, Spool, SpoolError,
};

const T0: i64 = 1_795_261_570;

fn message(id: QueueId, data: &[u8]) -> NewMessage {
    NewMessage {
        envelope: Envelope {
            id,
            received_at: T0,
            sender: "alice@example.org".into(),
            recipients: vec!["bob@example.net".into(), "carol@example.net".into()],
            client_addr: "192.0.2.7".into(),
            client_name: "mail.example.org".into(),
            helo: "mail.example.org".into(),
            protocol: "ESMTP".into(),
            msgid: Some("<abc@example.org>".into()),
        },
        data: data.to_vec(),
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Spool>();
    check::<QueueIdGen>();
    check::<portcullis_spool::Committer>();
}

#[test]
fn open_creates_private_layout() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("spool");
    let spool = Spool::open(&dir).unwrap();
    assert_eq!(spool.dir(), dir);
    for sub in ["tmp", "queue", "quarantine"] {
        let mode = fs::metadata(dir.join(sub)).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{sub} mode {mode:o}");
    }
    Spool::open(&dir).unwrap(); // reopening is fine
}

#[test]
fn round_trip_with_odd_bytes() {
    let root = tempfile::tempdir().unwrap();
    let spool = Spool::open(root.path()).unwrap();
    let ids = QueueIdGen::new(4242);
    let odd: Vec<u8> = (0..=255u8).chain(*b"\0\n.\r\n\nEND x 1\n").collect();
    let mut null_sender = message(ids.next(T0), b"");
    null_sender.envelope.sender = String::new();
    null_sender.envelope.msgid = None;
    null_sender.envelope.client_name = String::new();
    let batch = vec![
        message(ids.next(T0), b"Subject: hi\r\n\r\nbody\r\n"),
        message(ids.next(T0), &odd),
        null_sender,
        message(ids.next(T0), "Subject: caf\u{e9}\n\nbare LF\n".as_bytes()),
    ];
    let results = spool.commit_batch(&batch);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let mut want: Vec<QueueId> = batch.iter().map(|m| m.envelope.id.clone()).collect();
    want.sort();
    assert_eq!(spool.list().unwrap(), want);
    for msg in &batch {
        let stored = spool.read(&msg.envelope.id).unwrap();
        assert_eq!(stored.envelope, msg.envelope);
        assert_eq!(stored.data, msg.data);
        assert_eq!(stored.state, DeliveryState::default());
    }
    assert!(
        names(&root.path().join("tmp")).is_empty(),
        "tmp/ cleaned by rename"
    );
}

#[test]
fn collision_fails_only_that_item() {
    let root = tempfile::tempdir().unwrap();
    let spool = Spool::open(root.path()).unwrap();
    let ids = QueueIdGen::new(1);
    let taken = ids.next(T0);
    fs::write(
        root.path().join("queue").join(taken.as_str()),
        "someone else's",
    )
    .unwrap();
    let batch = vec![
        message(ids.next(T0), b"one"),
        message(taken.clone(), b"two"),
        message(ids.next(T0), b"three"),
    ];
    let results = spool.commit_batch(&batch);
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(
        matches!(results[1], Err(SpoolError::Exists { .. })),
        "{results:?}"
    );
    let kept = fs::read(root.path().join("queue").join(taken.as_str())).unwrap();
    assert_eq!(kept, b"someone else's", "existing file not overwritten");
    assert!(
        names(&root.path().join("tmp")).is_empty(),
        "failed item's tmp removed"
    );
    assert_eq!(spool.read(&batch[2].envelope.id).unwrap().data, b"three");
}

#[test]
fn stale_tmp_file_with_the_same_id_is_neither_used_nor_removed() {
    let root = tempfile::tempdir().unwrap();
    let spool = Spool::open(root.path()).unwrap();
    let id = QueueIdGen::new(1).next(T0);
    let stale = root.path().join("tmp").join(id.as_str());
    fs::write(&stale, "stale").unwrap();
    let results = spool.commit_batch(&[message(id, b"new")]);
    assert!(
        matches!(results[0], Err(SpoolError::Exists { .. })),
        "{results:?}"
    );
    assert_eq!(
        fs::read(&stale).unwrap(),
        b"stale",
        "not ours: left for recovery"
    );
    assert!(spool.list().unwrap().is_empty());
}

#[test]
fn duplicate_id_within_a_batch_keeps_the_first() {
    let root = tempfile::tempdir().unwrap();
    let spool = Spool::open(root.path()).unwrap();
    let id = QueueIdGen::new(1).next(T0);
    let results = spool.commit_batch(&[message(id.clone(), b"a"), message(id.clone(), b"b")]);
    assert!(results[0].is_ok());
    assert!(
        matches!(results[1], Err(SpoolError::Exists { .. })),
        "{results:?}"
    );
    assert_eq!(spool.read(&id).unwrap().data, b"a");
}

#[test]
fn state_round_trip_and_remove() {
    let root = tempfile::tempdir().unwrap();
    let spool = Spool::open(root.path()).unwrap();
    let id = QueueIdGen::new(1).next(T0);
    assert!(spool.commit_batch(&[message(id.clone(), b"x")])[0].is_ok());
    let state = DeliveryState {
        attempts: 2,
        next_attempt_at: T0 + 900,
        done: vec![true, false],
        last_error: Some("451 4.4.1 host down\r\nsecond line".into()),
        rcpt_errors: vec![None, Some("451 4.4.1 host down".into())],
        held: false,
    };
    spool.write_state(&id, &state).unwrap();
    assert_eq!(spool.read(&id).unwrap().state, state);
    let newer = DeliveryState {
        attempts: 3,
        held: true,
        ..state
    };
    spool.write_state(&id, &newer).unwrap();
    assert_eq!(spool.read(&id).unwrap().state, newer);
    assert_eq!(
        spool.list().unwrap(),
        vec![id.clone()],
        "sidecar is not listed"
    );
    assert!(names(&root.path().join("tmp")).is_empty());

    spool.remove(&id).unwrap();
    assert!(
        names(&root.path().join("queue")).is_empty(),
        "message and sidecar gone"
    );
    assert!(matches!(spool.read(&id), Err(SpoolError::NotFound { .. })));
    spool.remove(&id).unwrap(); // missing is fine
    let err = spool.write_state(&id, &newer).unwrap_err();
    assert!(
        matches!(err, SpoolError::NotFound { .. }),
        "no orphan sidecar: {err:?}"
    );
}

#[test]
fn corrupt_sidecar_reads_as_default_state() {
    let root = tempfile::tempdir().unwrap();
    let spool = Spool::open(root.path()).unwrap();
    let id = QueueIdGen::new(1).next(T0);
    assert!(spool.commit_batch(&[message(id.clone(), b"x")])[0].is_ok());
    let sidecar = root.path().join("queue").join(format!("{id}.state"));
    fs::write(&sidecar, "PORTCULLIS-STATE 1\nattempts 9\n").unwrap();
    assert_eq!(spool.read(&id).unwrap().state, DeliveryState::default());
}

#[test]
fn read_rejects_corrupt_queue_file() {
    let root = tempfile::tempdir().unwrap();
    let spool = Spool::open(root.path()).unwrap();
    let id = QueueIdGen::new(1).next(T0);
    assert!(spool.commit_batch(&[message(id.clone(), b"hello")])[0].is_ok());
    let path = root.path().join("queue").join(id.as_str());
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    let err = spool.read(&id).unwrap_err();
    assert!(
        matches!(err, SpoolError::Corrupt { path: ref p, .. } if *p == path),
        "{err:?}"
    );
}

#[test]
fn read_envelope_agrees_with_read_without_the_data() {
    let root = tempfile::tempdir().unwrap();
    let spool = Spool::open(root.path()).unwrap();
    let ids = QueueIdGen::new(4242);
    let odd: Vec<u8> = (0..=255u8).chain(*b"\0\n\n.\r\n\nEND x 1\n").collect();
    let batch = vec![
        message(ids.next(T0), b""),
        message(ids.next(T0), b"Subject: hi\r\n\r\nbody\r\n"),
        message(ids.next(T0), &odd),
    ];
    assert!(spool.commit_batch(&batch).iter().all(Result::is_ok));
    let state = DeliveryState {
        attempts: 1,
        done: vec![true, false],
        rcpt_errors: vec![None, Some("451 4.2.2 full".into())],
        ..Default::default()
    };
    spool.write_state(&batch[2].envelope.id, &state).unwrap();
    for msg in &batch {
        let id = &msg.envelope.id;
        let full = spool.read(id).unwrap();
        let light = spool.read_envelope(id).unwrap();
        assert_eq!(light.envelope, full.envelope);
        assert_eq!(light.data_len, full.data.len());
        assert_eq!(light.state, full.state);
        for max in [0, 1, 5, msg.data.len(), msg.data.len() + 10] {
            let (again, head) = spool.read_head(id, max).unwrap();
            assert_eq!(again, light);
            assert_eq!(head, &msg.data[..max.min(msg.data.len())], "max {max}");
        }
    }
    assert_eq!(
        spool.read_envelope(&batch[2].envelope.id).unwrap().state,
        state
    );
    let missing = ids.next(T0);
    assert!(matches!(
        spool.read_envelope(&missing),
        Err(SpoolError::NotFound { .. })
    ));
}

/// `read_envelope` must refuse exactly the files `read` refuses: torn at every offset,
/// bytes after the end record, a wrong length, a foreign file.
#[test]
fn read_envelope_rejects_what_read_rejects() {
    let root = tempfile::tempdir().unwrap();
    let spool = Spool::open(root.path()).unwrap();
    let id = QueueIdGen::new(1).next(T0);
    assert!(spool.commit_batch(&[message(id.clone(), b"Hi\r\n\r\n")])[0].is_ok());
    let path = root.path().join("queue").join(id.as_str());
    let full = fs::read(&path).unwrap();
    let text = String::from_utf8(full.clone()).unwrap();
    let mut damaged: Vec<Vec<u8>> = (0..full.len()).map(|cut| full[..cut].to_vec()).collect();
    for junk in [&b"x"[..], b"\n", b"END again\n"] {
        damaged.push([full.as_slice(), junk].concat());
    }
    for (from, to) in [("data-len 6", "data-len 5"), ("data-len 6", "data-len 7")] {
        damaged.push(text.replace(from, to).into_bytes());
    }
    damaged.push(b"not a queue file\n\nat all".to_vec());
    for bytes in damaged {
        fs::write(&path, &bytes).unwrap();
        let shown = String::from_utf8_lossy(&bytes);
        assert!(
            matches!(spool.read(&id), Err(SpoolError::Corrupt { .. })),
            "read accepted {shown:?}"
        );
        let err = spool.read_envelope(&id).unwrap_err();
        assert!(
            matches!(err, SpoolError::Corrupt { path: ref p, .. } if *p == path),
            "{shown:?}: {err:?}"
        );
    }
    fs::write(&path, &full).unwrap();
    assert_eq!(spool.read_envelope(&id).unwrap().data_len, 6);
}

/// Commits `victim` and `intact`, damages the victim's file with `damage`, recovers.
fn recover_after(damage: impl FnOnce(&Path)) -> (tempfile::TempDir, QueueId, QueueId, Vec<u8>) {
    let root = tempfile::tempdir().unwrap();
    let spool = Spool::open(root.path()).unwrap();
    let ids = QueueIdGen::new(7);
    let (victim, intact) = (ids.next(T0), ids.next(T0));
    let results = spool.commit_batch(&[
        message(victim.clone(), b"Hi\r\n"),
        message(intact.clone(), b"ok"),
    ]);
    assert!(results.iter().all(Result::is_ok));
    let path = root.path().join("queue").join(victim.as_str());
    damage(&path);
    let damaged = fs::read(&path).unwrap();
    (root, victim, intact, damaged)
}

fn assert_quarantined(root: &Path, victim: &QueueId, intact: &QueueId, damaged: &[u8]) {
    let spool = Spool::open(root).unwrap();
    let rec = spool.recover().unwrap();
    assert_eq!(rec.ready, vec![intact.clone()]);
    assert_eq!(rec.quarantined.len(), 1, "{:?}", rec.quarantined);
    let (path, reason) = &rec.quarantined[0];
    assert_eq!(*path, root.join("quarantine").join(victim.as_str()));
    assert!(!reason.is_empty());
    assert_eq!(
        fs::read(path).unwrap(),
        damaged,
        "same bytes, never deleted"
    );
    assert_eq!(spool.list().unwrap(), vec![intact.clone()]);
}

#[test]
fn torn_file_at_every_offset_is_quarantined() {
    let (_root, _, _, full) = recover_after(|_| {});
    for cut in 0..full.len() {
        let (root, victim, intact, damaged) = recover_after(|path| {
            let file = fs::OpenOptions::new().write(true).open(path).unwrap();
            file.set_len(cut as u64).unwrap();
        });
        assert_eq!(damaged.len(), cut);
        assert_quarantined(root.path(), &victim, &intact, &damaged);
    }
}

#[test]
fn junk_after_end_record_is_quarantined() {
    for junk in [&b"x"[..], b"\n", b"END again\n"] {
        let (root, victim, intact, damaged) = recover_after(|path| {
            let mut bytes = fs::read(path).unwrap();
            bytes.extend_from_slice(junk);
            fs::write(path, bytes).unwrap();
        });
        assert_quarantined(root.path(), &victim, &intact, &damaged);
    }
}

#[test]
fn complete_spool_recovers_untouched() {
    let (root, victim, intact, _) = recover_after(|_| {});
    let spool = Spool::open(root.path()).unwrap();
    let rec = spool.recover().unwrap();
    assert!(rec.quarantined.is_empty(), "{:?}", rec.quarantined);
    let mut want = vec![victim, intact];
    want.sort();
    assert_eq!(rec.ready, want);
}

#[test]
fn recover_quarantines_tmp_leftovers_orphans_and_foreign_files() {
    let root = tempfile::tempdir().unwrap();
    let spool = Spool::open(root.path()).unwrap();
    let ids = QueueIdGen::new(7);
    let (good, torn, gone, left) = (ids.next(T0), ids.next(T0), ids.next(T0), ids.next(T0));
    let batch = [message(good.clone(), b"g"), message(torn.clone(), b"t")];
    assert!(spool.commit_batch(&batch).iter().all(Result::is_ok));
    spool
        .write_state(
            &good,
            &DeliveryState {
                attempts: 1,
                ..Default::default()
            },
        )
        .unwrap();
    spool
        .write_state(
            &torn,
            &DeliveryState {
                attempts: 1,
                ..Default::default()
            },
        )
        .unwrap();
    let (queue, tmp) = (root.path().join("queue"), root.path().join("tmp"));
    fs::write(queue.join(torn.as_str()), "PORTCULLIS-SPOOL 1\nid").unwrap();
    fs::write(queue.join(format!("{gone}.state")), "orphan").unwrap();
    fs::write(queue.join("README"), "foreign").unwrap();
    fs::write(tmp.join(left.as_str()), "half a message").unwrap();
    fs::write(tmp.join(format!("{good}.state.3")), "half a state").unwrap();
    // A quarantined file of the same name already exists: the new one must not replace it.
    fs::write(root.path().join("quarantine").join(left.as_str()), "older").unwrap();

    let rec = spool.recover().unwrap();
    assert_eq!(rec.ready, vec![good.clone()]);
    let q = root.path().join("quarantine");
    let mut moved: Vec<_> = rec.quarantined.iter().map(|(p, _)| p.clone()).collect();
    moved.sort();
    let mut want = vec![
        q.join(format!("{left}.1")),
        q.join(format!("{good}.state.3")),
        q.join(torn.as_str()),
        q.join(format!("{torn}.state")),
        q.join(format!("{gone}.state")),
        q.join("README"),
    ];
    want.sort();
    assert_eq!(moved, want);
    assert_eq!(fs::read(q.join(left.as_str())).unwrap(), b"older");
    assert_eq!(
        fs::read(q.join(format!("{left}.1"))).unwrap(),
        b"half a message"
    );
    assert!(names(&tmp).is_empty());
    assert_eq!(
        names(&queue),
        vec![good.to_string(), format!("{good}.state")]
    );
    assert_eq!(spool.read(&good).unwrap().state.attempts, 1);
    // A second recovery finds nothing more to do.
    let again = spool.recover().unwrap();
    assert_eq!((again.ready, again.quarantined.len()), (vec![good], 0));
}

/// Group commit on the delivery side: every item lands in new/, a bad item fails alone.
#[test]
fn maildir_batch_delivers_each_item_and_isolates_failures() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let items = [
        portcullis_spool::MaildirItem {
            domain: "localhost",
            local: "alice",
            unique: "1.a",
            data: b"one\r\n",
        },
        portcullis_spool::MaildirItem {
            domain: "localhost",
            local: "alice",
            unique: "1.b",
            data: b"two\r\n",
        },
        portcullis_spool::MaildirItem {
            domain: "localhost",
            local: "../evil",
            unique: "1.c",
            data: b"x",
        },
        portcullis_spool::MaildirItem {
            domain: "localhost",
            local: "bob",
            unique: "1.d",
            data: b"three\r\n",
        },
    ];
    let results = portcullis_spool::deliver_batch(root, &items);
    assert!(
        results[0].is_ok() && results[1].is_ok() && results[3].is_ok(),
        "{results:?}"
    );
    assert!(matches!(
        results[2],
        Err(portcullis_spool::SpoolError::InvalidMailbox { .. })
    ));
    assert_eq!(
        std::fs::read(root.join("localhost/alice/new/1.b")).unwrap(),
        b"two\r\n"
    );
    assert_eq!(
        std::fs::read(root.join("localhost/bob/new/1.d")).unwrap(),
        b"three\r\n"
    );
    assert_eq!(
        std::fs::read_dir(root.join("localhost/alice/tmp"))
            .unwrap()
            .count(),
        0
    );
    assert!(!root.join("evil").exists() && !root.join("localhost/evil").exists());
}

#[test]
fn remove_batch_removes_every_message() {
    let dir = tempfile::tempdir().unwrap();
    let spool = portcullis_spool::Spool::open(dir.path()).unwrap();
    let ids_gen = portcullis_spool::QueueIdGen::new(1);
    let batch: Vec<_> = (0..5)
        .map(|_| message(ids_gen.next(1_800_000_000), b"x\r\n"))
        .collect();
    assert!(spool.commit_batch(&batch).iter().all(Result::is_ok));
    let ids: Vec<_> = batch.iter().map(|m| m.envelope.id.clone()).collect();
    spool.remove_batch(&ids[..4]).unwrap();
    assert_eq!(spool.list().unwrap(), vec![ids[4].clone()]);
}
