//! The queue directory: group commit of accepted messages, reading, state, recovery.
//!
//! Layout under the spool directory (all 0700):
//! - `tmp/`        files being written; nothing here was ever acknowledged;
//! - `queue/`      committed messages `<id>` and their state sidecars `<id>.state`;
//! - `quarantine/` torn, corrupt or unexpected files moved aside by [`Spool::recover`].
//!
//! Role: make a message durable before the server replies 250 (write to `tmp/`,
//! fdatasync, rename into `queue/`, fsync `queue/`), batching many messages per
//! directory fsync (group commit).
//! Must not: overwrite a queue file, delete a file that may hold an acknowledged message
//! (recovery moves, never deletes), or read the clock.
//! Invariants: a file in `queue/` named by a queue id is complete and fsynced, or was
//! damaged later and will be quarantined by recovery; `commit_batch` returns `Ok` for an
//! item only after the directory fsync that made its rename durable. `recover` is a
//! start-up step: run it before any commit, since it quarantines everything in `tmp/`.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::SpoolError;
use crate::format;
use crate::fsutil::{create_dir_durable, fsync_dir, rename_noreplace, write_new};
use crate::id::QueueId;
use crate::message::{DeliveryState, NewMessage, StoredEnvelope, StoredMessage};

const STATE_SUFFIX: &str = ".state";

/// A spool directory. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    tmp: PathBuf,
    queue: PathBuf,
    quarantine: PathBuf,
    /// Kept open so each batch's directory fsync costs one syscall, not three.
    queue_dir: File,
    /// Makes sidecar temp names unique within the process.
    state_seq: AtomicU64,
}

/// The outcome of [`Spool::recover`]. The caller logs every quarantined file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Complete queue files, sorted by id.
    pub ready: Vec<QueueId>,
    /// Files moved aside: (new path under `quarantine/`, reason).
    pub quarantined: Vec<(PathBuf, String)>,
}

impl Spool {
    /// Opens the spool at `dir`, creating `dir` itself and `tmp/`, `queue/`,
    /// `quarantine/` (mode 0700) if missing, and fsyncing the parents of what it created.
    pub fn open(dir: &Path) -> Result<Self, SpoolError> {
        let (tmp, queue, quarantine) = (dir.join("tmp"), dir.join("queue"), dir.join("quarantine"));
        for sub in [&tmp, &queue, &quarantine] {
            create_dir_durable(sub)?;
        }
        let queue_dir = File::open(&queue).map_err(|e| SpoolError::io(&queue, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            tmp,
            queue,
            quarantine,
            queue_dir,
            state_seq: AtomicU64::new(0),
        })
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn queue_path(&self, id: &QueueId) -> PathBuf {
        self.queue.join(id.as_str())
    }

    fn state_path(&self, id: &QueueId) -> PathBuf {
        self.queue.join(format!("{id}{STATE_SUFFIX}"))
    }

    /// Group commit: writes and fdatasyncs `tmp/<id>` for every message, renames each
    /// written one to `queue/<id>` (never over an existing file), then fsyncs `queue/`
    /// once. Returns one result per input, in order. A failed item leaves no file of its
    /// own behind; other items are unaffected, except that a failed directory fsync
    /// fails every item.
    ///
    /// A lone message is fdatasynced by itself. For two or more, every file is written
    /// first and one `syncfs` of the spool's filesystem makes them all durable: one device
    /// flush per batch instead of one per message, which is what lets group commit beat
    /// per-file fsync on a flush-bound disk (docs/benchmarks.md). `tmp/` and `queue/` are
    /// on one filesystem (the rename requires it), so the queue directory's descriptor,
    /// open since [`Spool::open`], covers both. The cost: other programs' dirty data on the
    /// same filesystem is flushed too, so give the spool its own filesystem.
    pub fn commit_batch(&self, batch: &[NewMessage]) -> Vec<Result<(), SpoolError>> {
        let each = batch.len() < 2;
        let mut results: Vec<_> = batch.iter().map(|msg| self.write_tmp(msg, each)).collect();
        if !results.iter().any(Result::is_ok) {
            return results;
        }
        if !each && let Err(e) = nix::unistd::syncfs(&self.queue_dir).map_err(io::Error::from) {
            for (msg, result) in batch.iter().zip(results.iter_mut()) {
                if result.is_ok() {
                    let _ = fs::remove_file(self.tmp.join(msg.envelope.id.as_str()));
                    *result = Err(SpoolError::io(&self.queue, copy_io_error(&e)));
                }
            }
            return results;
        }
        for (msg, result) in batch.iter().zip(results.iter_mut()) {
            if result.is_ok() {
                *result = self.publish(&msg.envelope.id);
            }
        }
        if !results.iter().any(Result::is_ok) {
            return results;
        }
        if let Err(e) = self.queue_dir.sync_all() {
            self.unpublish(batch, &results);
            for result in results.iter_mut().filter(|r| r.is_ok()) {
                *result = Err(SpoolError::io(&self.queue, copy_io_error(&e)));
            }
        }
        results
    }

    fn write_tmp(&self, msg: &NewMessage, sync: bool) -> Result<(), SpoolError> {
        let env = &msg.envelope;
        let header = format::message_header(env, msg.data.len());
        let trailer = format::message_trailer(&env.id, msg.data.len());
        let path = self.tmp.join(env.id.as_str());
        write_new(&path, &[&header, &msg.data, &trailer], sync).map(drop)
    }

    fn publish(&self, id: &QueueId) -> Result<(), SpoolError> {
        let tmp = self.tmp.join(id.as_str());
        rename_noreplace(&tmp, &self.queue_path(id)).inspect_err(|_| {
            // Ours (write_tmp created it); the error being reported is the rename's.
            let _ = fs::remove_file(&tmp);
        })
    }

    /// The batch's renames may or may not be durable; the client will be told to retry,
    /// so remove our queue files rather than deliver a message it will send again.
    fn unpublish(&self, batch: &[NewMessage], results: &[Result<(), SpoolError>]) {
        for (msg, result) in batch.iter().zip(results) {
            if result.is_ok() {
                let _ = fs::remove_file(self.queue_path(&msg.envelope.id));
            }
        }
    }

    /// Reads and verifies `queue/<id>`, with its state from the sidecar. A missing or
    /// corrupt sidecar yields the default state (at worst a recipient gets a duplicate).
    pub fn read(&self, id: &QueueId) -> Result<StoredMessage, SpoolError> {
        let path = self.queue_path(id);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SpoolError::NotFound { id: id.to_string() });
            }
            Err(e) => return Err(SpoolError::io(&path, e)),
        };
        let (envelope, data) = format::decode_message(bytes, id)
            .map_err(|reason| SpoolError::Corrupt { path, reason })?;
        let state = self.read_state(id, envelope.recipients.len())?;
        Ok(StoredMessage {
            envelope,
            data,
            state,
        })
    }

    /// Reads and verifies `queue/<id>` as strictly as [`Spool::read`], with its state, but
    /// without loading the data: the header is read line by line, then only the end
    /// record is read (after a seek past the data) and checked against the id and
    /// `data-len`, and the file must end right after it. The data bytes themselves are
    /// opaque to `read` as well, so both accept the same files. Memory: the envelope, not
    /// the message (a file damaged before its header's blank line is read to its end).
    pub fn read_envelope(&self, id: &QueueId) -> Result<StoredEnvelope, SpoolError> {
        self.read_head(id, 0).map(|(stored, _)| stored)
    }

    /// [`Spool::read_envelope`] plus the first `max` bytes of the data (all of it when
    /// shorter): enough to show a message's header section without reading its body.
    pub fn read_head(
        &self,
        id: &QueueId,
        max: usize,
    ) -> Result<(StoredEnvelope, Vec<u8>), SpoolError> {
        let path = self.queue_path(id);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SpoolError::NotFound { id: id.to_string() });
            }
            Err(e) => return Err(SpoolError::io(&path, e)),
        };
        let io_error = |e| SpoolError::io(&path, e);
        let corrupt = |reason| SpoolError::Corrupt {
            path: path.clone(),
            reason,
        };
        // Queue files are never rewritten, so the length read now is the file's.
        let file_len = file.metadata().map_err(io_error)?.len();
        let mut reader = BufReader::new(file);
        let header = read_header(&mut reader)
            .map_err(io_error)?
            .map_err(corrupt)?;
        // `read_header` returned the header with its blank line: at least "M\n\n".
        let data_start = header.len();
        let (envelope, data_len) =
            format::decode_header(&header[..data_start - 2], id).map_err(corrupt)?;
        let file_len = usize::try_from(file_len).unwrap_or(usize::MAX);
        let data_end = format::data_end(data_start, data_len, file_len).map_err(corrupt)?;
        let head = read_at(&mut reader, data_start, max.min(data_len)).map_err(io_error)?;
        let record_len = format::message_trailer(id, data_len).len();
        let end = read_at(&mut reader, data_end, record_len + 1).map_err(io_error)?;
        format::check_end_record(&end, id, data_len).map_err(corrupt)?;
        let state = self.read_state(id, envelope.recipients.len())?;
        let stored = StoredEnvelope {
            envelope,
            data_len,
            state,
        };
        Ok((stored, head))
    }

    fn read_state(&self, id: &QueueId, recipients: usize) -> Result<DeliveryState, SpoolError> {
        let path = self.state_path(id);
        match fs::read(&path) {
            Ok(bytes) => Ok(format::decode_state(&bytes, id, recipients).unwrap_or_default()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(DeliveryState::default()),
            // Unreadable is not "no state": retrying later beats re-delivering to all.
            Err(e) => Err(SpoolError::io(&path, e)),
        }
    }

    /// Ids of the queue files (not sidecars or foreign names), sorted.
    pub fn list(&self) -> Result<Vec<QueueId>, SpoolError> {
        let mut ids: Vec<QueueId> = read_names(&self.queue)?
            .iter()
            .filter_map(|name| name.to_str()?.parse().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Atomically replaces `queue/<id>.state`: write a temp file in `tmp/`, fdatasync,
    /// rename over the sidecar, fsync `queue/`. `NotFound` if the message is gone, so a
    /// late update cannot leave an orphan sidecar behind.
    pub fn write_state(&self, id: &QueueId, state: &DeliveryState) -> Result<(), SpoolError> {
        if !self.queue_path(id).exists() {
            return Err(SpoolError::NotFound { id: id.to_string() });
        }
        let seq = self.state_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp.join(format!("{id}{STATE_SUFFIX}.{seq}"));
        write_truncate_synced(&tmp, &format::encode_state(id, state))?;
        let target = self.state_path(id);
        if let Err(e) = fs::rename(&tmp, &target) {
            let _ = fs::remove_file(&tmp);
            return Err(SpoolError::io(&target, e));
        }
        fsync_dir(&self.queue)
    }

    /// Removes a fully delivered message and its sidecar, then fsyncs `queue/`. The
    /// message goes first: a crash in between leaves an orphan sidecar (quarantined by
    /// recovery), never a message without its state (which would be re-delivered to
    /// every recipient). Missing files are not an error.
    pub fn remove(&self, id: &QueueId) -> Result<(), SpoolError> {
        self.remove_batch(std::slice::from_ref(id))
    }

    /// [`Spool::remove`] for many messages with one directory fsync. Stops at the first
    /// error (the messages not yet removed are simply delivered again later).
    pub fn remove_batch(&self, ids: &[QueueId]) -> Result<(), SpoolError> {
        for id in ids {
            for path in [self.queue_path(id), self.state_path(id)] {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(SpoolError::io(&path, e)),
                }
            }
        }
        fsync_dir(&self.queue)
    }

    /// Start-up recovery; call before committing anything. Verifies every queue file:
    /// complete ones are `ready` (sorted); torn or corrupt ones, together with their
    /// sidecar, are moved to `quarantine/` with the reason. Also quarantined, never
    /// deleted: everything left in `tmp/` (never acknowledged), orphan sidecars (a crash
    /// inside `remove`, kept out of `queue/` so a future message can't inherit them) and
    /// foreign names in `queue/`. Sidecars of ready messages are left alone (a corrupt
    /// one reads as default state). The touched directories are fsynced, quarantine first.
    pub fn recover(&self) -> Result<Recovery, SpoolError> {
        let mut rec = Recovery::default();
        for name in read_names(&self.tmp)? {
            let reason = tmp_reason(&name);
            rec.quarantined
                .push(self.quarantine_file(&self.tmp, &name, reason)?);
        }
        let names = read_names(&self.queue)?;
        let mut sidecars = Vec::new();
        for name in names {
            match classify(&name) {
                Entry::Message(id) => self.recover_message(id, &mut rec)?,
                Entry::Sidecar(id) => sidecars.push((name, id)),
                Entry::Foreign => {
                    let reason = "unexpected file name in queue/".to_string();
                    rec.quarantined
                        .push(self.quarantine_file(&self.queue, &name, reason)?);
                }
            }
        }
        rec.ready.sort(); // already sorted (names are); binary_search below relies on it
        for (name, id) in sidecars {
            if rec.ready.binary_search(&id).is_err() && self.queue.join(&name).exists() {
                let reason = format!("state file without message {id}");
                rec.quarantined
                    .push(self.quarantine_file(&self.queue, &name, reason)?);
            }
        }
        if !rec.quarantined.is_empty() {
            fsync_dir(&self.quarantine)?;
            fsync_dir(&self.tmp)?;
            fsync_dir(&self.queue)?;
        }
        Ok(rec)
    }

    /// Verifies one queue file: ready, or quarantined together with its sidecar.
    fn recover_message(&self, id: QueueId, rec: &mut Recovery) -> Result<(), SpoolError> {
        let path = self.queue_path(&id);
        let verdict = match fs::read(&path) {
            Ok(bytes) => format::decode_message(bytes, &id).map(drop),
            Err(e) => Err(format!("unreadable: {e}")),
        };
        let reason = match verdict {
            Ok(()) => {
                rec.ready.push(id);
                return Ok(());
            }
            Err(reason) => reason,
        };
        let name = OsStr::new(id.as_str());
        rec.quarantined
            .push(self.quarantine_file(&self.queue, name, reason)?);
        let sidecar = OsString::from(format!("{id}{STATE_SUFFIX}"));
        if self.queue.join(&sidecar).exists() {
            let reason = format!("state of quarantined message {id}");
            rec.quarantined
                .push(self.quarantine_file(&self.queue, &sidecar, reason)?);
        }
        Ok(())
    }

    /// Moves `dir/name` into `quarantine/`, adding `.1`, `.2`, ... if the name is taken.
    fn quarantine_file(
        &self,
        dir: &Path,
        name: &OsStr,
        reason: String,
    ) -> Result<(PathBuf, String), SpoolError> {
        let from = dir.join(name);
        let mut attempt = 0u32;
        loop {
            let mut to_name = name.to_os_string();
            if attempt > 0 {
                to_name.push(format!(".{attempt}"));
            }
            let to = self.quarantine.join(to_name);
            match rename_noreplace(&from, &to) {
                Ok(()) => return Ok((to, reason)),
                Err(SpoolError::Exists { .. }) if attempt < 10_000 => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

/// What a name in `queue/` is.
enum Entry {
    Message(QueueId),
    Sidecar(QueueId),
    Foreign,
}

fn classify(name: &OsStr) -> Entry {
    let Some(name) = name.to_str() else {
        return Entry::Foreign;
    };
    if let Ok(id) = name.parse() {
        return Entry::Message(id);
    }
    match name.strip_suffix(STATE_SUFFIX).map(str::parse) {
        Some(Ok(id)) => Entry::Sidecar(id),
        _ => Entry::Foreign,
    }
}

fn tmp_reason(name: &OsStr) -> String {
    if name.to_string_lossy().contains(STATE_SUFFIX) {
        "interrupted state update in tmp/ (never renamed)".into()
    } else {
        "left in tmp/ by a crash before commit (never acknowledged)".into()
    }
}

/// The entry names of `dir`, sorted.
fn read_names(dir: &Path) -> Result<Vec<OsString>, SpoolError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| SpoolError::io(dir, e))? {
        names.push(entry.map_err(|e| SpoolError::io(dir, e))?.file_name());
    }
    names.sort();
    Ok(names)
}

/// Reads a queue file's header up to and including the blank line that ends it, one line
/// at a time so the data after it is never read. `Ok(Err(reason))` when the file is not a
/// queue file (checked on the first line, so a foreign file is not read further) or ends
/// before the blank line.
fn read_header(reader: &mut impl BufRead) -> io::Result<Result<Vec<u8>, String>> {
    let mut header = Vec::with_capacity(512);
    loop {
        let start = header.len();
        let n = reader.read_until(b'\n', &mut header)?;
        if n == 0 || header.last() != Some(&b'\n') {
            return Ok(Err(format::NO_BLANK_LINE.into()));
        }
        let line = &header[start..header.len() - 1];
        if start == 0 && line != format::MAGIC {
            return Ok(Err("missing magic line PORTCULLIS-SPOOL 1".into()));
        }
        if line.is_empty() {
            return Ok(Ok(header));
        }
    }
}

/// Reads at most `len` bytes starting at byte `offset` (fewer at the end of the file).
fn read_at(reader: &mut (impl Read + Seek), offset: usize, len: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    if len == 0 {
        return Ok(out);
    }
    // usize to u64 never truncates on the platforms we build for.
    reader.seek(SeekFrom::Start(offset as u64))?;
    reader.take(len as u64).read_to_end(&mut out)?;
    Ok(out)
}

/// `io::Error` is not `Clone`; keep the OS error code so `Full` is still recognised.
fn copy_io_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

/// Writes a private temp file (mode 0600, truncating a stale one) and fdatasyncs it.
fn write_truncate_synced(path: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| SpoolError::io(path, e))?;
    if let Err(e) = file.write_all(bytes).and_then(|()| file.sync_data()) {
        let _ = fs::remove_file(path);
        return Err(SpoolError::io(path, e));
    }
    Ok(())
}
