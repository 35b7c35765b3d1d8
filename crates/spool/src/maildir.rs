//! Durable Maildir delivery (the `maildir` crate never fsyncs the directory).
//!
//! Role: write one message into `<root>/<domain>/<local>/new/` the Maildir way: create
//! `tmp/<unique>`, write, fsync, rename to `new/<unique>`, fsync `new/`.
//! Must not: let `domain`, `local` or `unique` escape the mailbox (`..`, `/`, NUL,
//! leading dot), overwrite an existing message, create the root (a missing root is a
//! misconfiguration, e.g. an unmounted mail volume, and must fail loudly), or leave a
//! file in `tmp/` after a failed delivery.
//! Invariants: when `deliver` returns `Ok(path)`, the message and every directory entry
//! leading to it (including directories created on the way) are on disk.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::SpoolError;
use std::fs::File;
use std::os::unix::fs::MetadataExt;

use crate::fsutil::{
    create_dir_durable, fsync_dir, rename_noreplace, syncfs, write_new, write_new_synced,
};
use crate::id::QueueId;

/// Delivers into <root>/<domain>/<local>/: creates tmp/, new/, cur/ (0700) if missing,
/// writes tmp/<unique> (create_new, 0600), fsyncs it, renames it into new/ without
/// replacing anything, and fsyncs new/. Returns the final path.
pub fn deliver(
    root: &Path,
    domain: &str,
    local: &str,
    unique: &str,
    data: &[u8],
) -> Result<PathBuf, SpoolError> {
    let paths = prepare(root, domain, local, unique)?;
    write_new_synced(&paths.tmp, &[data])?;
    publish(&paths)?;
    fsync_dir(&paths.new_dir)?;
    Ok(paths.dest)
}

/// One message for one mailbox, for [`deliver_batch`].
#[derive(Clone, Copy, Debug)]
pub struct MaildirItem<'a> {
    /// Domain directory (a path component).
    pub domain: &'a str,
    /// Mailbox directory (a path component).
    pub local: &'a str,
    /// Maildir unique name ([`unique_name`]).
    pub unique: &'a str,
    /// The message.
    pub data: &'a [u8],
}

/// [`deliver`] for many messages, as group commit on the delivery side: every file is
/// written to its `tmp/`, then one `syncfs` per filesystem touched (a Maildir tree may span
/// several; usually it is one) makes them all durable, then each is renamed into `new/` and
/// each distinct `new/` directory is fsynced once. An item counts as delivered only after
/// its directory fsync. A lone item takes the per-file path of [`deliver`].
pub fn deliver_batch(root: &Path, items: &[MaildirItem<'_>]) -> Vec<Result<PathBuf, SpoolError>> {
    if items.len() < 2 {
        return items
            .iter()
            .map(|it| deliver(root, it.domain, it.local, it.unique, it.data))
            .collect();
    }
    let written: Vec<Result<(Paths, File), SpoolError>> = items
        .iter()
        .map(|it| {
            let paths = prepare(root, it.domain, it.local, it.unique)?;
            let file = write_new(&paths.tmp, &[it.data], false)?;
            Ok((paths, file))
        })
        .collect();
    let mut flushed: Vec<(u64, Result<(), String>)> = Vec::new();
    let mut synced_dirs: Vec<(PathBuf, Result<(), String>)> = Vec::new();
    let published: Vec<Result<Paths, SpoolError>> = written
        .into_iter()
        .map(|w| {
            let (paths, file) = w?;
            let dev = file
                .metadata()
                .map_err(|e| SpoolError::io(&paths.tmp, e))?
                .dev();
            let outcome = once(&mut flushed, dev, || syncfs(&file, &paths.tmp));
            if let Err(reason) = outcome {
                let _ = std::fs::remove_file(&paths.tmp);
                return Err(SpoolError::io(&paths.tmp, std::io::Error::other(reason)));
            }
            publish(&paths)?;
            Ok(paths)
        })
        .collect();
    published
        .into_iter()
        .map(|p| {
            let paths = p?;
            once(&mut synced_dirs, paths.new_dir.clone(), || {
                fsync_dir(&paths.new_dir)
            })
            .map(|()| paths.dest)
            .map_err(|reason| SpoolError::io(&paths.new_dir, std::io::Error::other(reason)))
        })
        .collect()
}

/// Runs `op` the first time `key` is seen and remembers its outcome for the others.
fn once<K: PartialEq>(
    seen: &mut Vec<(K, Result<(), String>)>,
    key: K,
    op: impl FnOnce() -> Result<(), SpoolError>,
) -> Result<(), String> {
    if let Some((_, outcome)) = seen.iter().find(|(k, _)| *k == key) {
        return outcome.clone();
    }
    let outcome = op().map_err(|e| e.to_string());
    seen.push((key, outcome.clone()));
    outcome
}

/// Where one delivery's file lives.
struct Paths {
    tmp: PathBuf,
    dest: PathBuf,
    new_dir: PathBuf,
}

/// Checks the names and makes sure the mailbox's directories exist.
fn prepare(root: &Path, domain: &str, local: &str, unique: &str) -> Result<Paths, SpoolError> {
    check_component("domain", domain)?;
    check_component("local part", local)?;
    check_unique(unique)?;
    if !root.is_dir() {
        return Err(SpoolError::Io {
            path: root.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "Maildir root is missing or not a directory",
            ),
        });
    }
    let mailbox = root.join(domain).join(local);
    let (tmp_dir, new_dir) = (mailbox.join("tmp"), mailbox.join("new"));
    for dir in [&tmp_dir, &new_dir, &mailbox.join("cur")] {
        create_dir_durable(dir)?;
    }
    Ok(Paths {
        tmp: tmp_dir.join(unique),
        dest: new_dir.join(unique),
        new_dir,
    })
}

/// Renames tmp/<unique> into new/ without replacing anything.
fn publish(paths: &Paths) -> Result<(), SpoolError> {
    rename_noreplace(&paths.tmp, &paths.dest).inspect_err(|_| {
        // Ours (just created); the rename error is the one to report.
        let _ = std::fs::remove_file(&paths.tmp);
    })
}

/// Maildir names handed out by this process (the `Q` part of a unique name).
static DELIVERIES: AtomicU64 = AtomicU64::new(0);

/// A Maildir unique name, `<secs>.M<usec>P<pid>Q<n>.<qid>_<rcpt>.<host>`, after the Maildir
/// conventions: the delivering process's pid and a per-process counter make every attempt's
/// name new. That matters after a crash: a message whose copy reached `new/` before its spool
/// file was removed is delivered again by the restarted server, possibly within the same
/// second, and must not collide with the first copy (at-least-once, never a stuck retry).
/// `/` and `:` in the host name become `\057` and `\072`, as the convention says.
pub fn unique_name(
    unix_secs: i64,
    micros: u32,
    id: &QueueId,
    rcpt_index: usize,
    hostname: &str,
) -> String {
    let host = hostname.replace('/', "\\057").replace(':', "\\072");
    let n = DELIVERIES.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    format!("{unix_secs}.M{micros}P{pid}Q{n}.{id}_{rcpt_index}.{host}")
}

fn check_component(what: &str, name: &str) -> Result<(), SpoolError> {
    let problem = if name.is_empty() {
        Some("is empty")
    } else if name.starts_with('.') {
        Some("starts with '.'")
    } else if name.contains(['/', '\0']) {
        Some("contains '/' or NUL")
    } else {
        None
    };
    match problem {
        Some(p) => Err(SpoolError::InvalidMailbox {
            reason: format!("{what} {name:?} {p}"),
        }),
        None => Ok(()),
    }
}

fn check_unique(unique: &str) -> Result<(), SpoolError> {
    let bad =
        unique.is_empty() || unique == "." || unique == ".." || unique.contains(['/', ':', '\0']);
    if bad {
        return Err(SpoolError::InvalidMailbox {
            reason: format!(
                "unique name {unique:?} is empty, a dot name, or contains '/', ':' or NUL"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn id() -> QueueId {
        "6ALBkA0000234567".parse().unwrap()
    }

    #[test]
    fn delivers_into_new_and_leaves_tmp_empty() {
        let root = tempfile::tempdir().unwrap();
        let data = b"Subject: x\r\n\r\nbody\0\xff\n";
        let unique = unique_name(1_795_261_570, 0, &id(), 0, "mx.example.org");
        let path = deliver(root.path(), "example.org", "alice", &unique, data).unwrap();
        let mailbox = root.path().join("example.org/alice");
        assert_eq!(path, mailbox.join("new").join(&unique));
        assert_eq!(fs::read(&path).unwrap(), data);
        assert_eq!(fs::read_dir(mailbox.join("tmp")).unwrap().count(), 0);
        assert!(mailbox.join("cur").is_dir());
        // A second recipient in the same existing mailbox.
        let unique2 = unique_name(1_795_261_570, 0, &id(), 1, "mx.example.org");
        deliver(root.path(), "example.org", "alice", &unique2, b"2").unwrap();
        assert_eq!(fs::read_dir(mailbox.join("new")).unwrap().count(), 2);
    }

    #[test]
    fn never_overwrites_a_delivered_message() {
        let root = tempfile::tempdir().unwrap();
        deliver(root.path(), "d", "l", "u1", b"first").unwrap();
        let err = deliver(root.path(), "d", "l", "u1", b"second").unwrap_err();
        assert!(matches!(err, SpoolError::Exists { .. }), "{err:?}");
        assert_eq!(fs::read(root.path().join("d/l/new/u1")).unwrap(), b"first");
        assert_eq!(
            fs::read_dir(root.path().join("d/l/tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn rejects_path_traversal() {
        let root = tempfile::tempdir().unwrap();
        for bad in ["", ".", "..", "a/b", ".hidden", "../x", "a\0b", "/abs"] {
            for (domain, local) in [(bad, "ok"), ("ok", bad)] {
                let err = deliver(root.path(), domain, local, "u", b"x").unwrap_err();
                assert!(
                    matches!(err, SpoolError::InvalidMailbox { .. }),
                    "{bad:?}: {err:?}"
                );
            }
        }
        for bad in ["", ".", "..", "a/b", "a:2,S", "../../x"] {
            let err = deliver(root.path(), "d", "l", bad, b"x").unwrap_err();
            assert!(matches!(err, SpoolError::InvalidMailbox { .. }), "{bad:?}");
        }
        assert_eq!(
            fs::read_dir(root.path()).unwrap().count(),
            0,
            "nothing created"
        );
    }

    #[test]
    fn missing_root_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let missing = root.path().join("not-mounted");
        let err = deliver(&missing, "d", "l", "u", b"x").unwrap_err();
        assert!(
            matches!(err, SpoolError::Io { ref path, .. } if *path == missing),
            "{err:?}"
        );
        assert!(!missing.exists());
    }

    #[test]
    fn unique_name_escapes_host() {
        let name = unique_name(1_795_261_570, 42, &id(), 3, "mx/a:b");
        let pid = std::process::id();
        assert!(
            name.starts_with(&format!("1795261570.M42P{pid}Q")),
            "{name}"
        );
        assert!(
            name.ends_with(".6ALBkA0000234567_3.mx\\057a\\072b"),
            "{name}"
        );
    }

    /// Regression (issue 2 fault test): a re-delivery in the same second, same message and
    /// recipient, must get a new name.
    #[test]
    fn unique_names_never_repeat_for_the_same_message_and_second() {
        let a = unique_name(1_795_261_570, 0, &id(), 0, "mx");
        let b = unique_name(1_795_261_570, 0, &id(), 0, "mx");
        assert_ne!(a, b);
    }
}
