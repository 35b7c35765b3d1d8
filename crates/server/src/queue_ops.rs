//! The operator's queue operations (`portcullis queue list|show|flush|delete|hold|release`)
//! on a spool: what they do and what they print.
//!
//! Role: one function, [`execute`], shared by the two ways an operation runs: by the running
//! server when the command reaches it over the control socket ([`crate::control`]), and by
//! the command itself on the spool directly when no server is running. Also the operations'
//! one-line wire form ([`Op`]'s `Display` and `FromStr`).
//!
//! Must not: read the clock (`now` is an argument), use sockets or async I/O (the spool API is
//! synchronous; the server calls this on a blocking thread), load the data of more than one
//! message at a time (a listing reads envelopes only: [`Spool::read_envelope`]), or panic on
//! any spool content or input: a missing or malformed id is an error answer.
//!
//! Invariants: every state change is a read-modify-write of the message's sidecar through
//! [`Spool::write_state`] (atomic replace), keeping what it does not change (done flags,
//! errors, attempts). The text is safe to print on a terminal: control characters from
//! envelopes, errors or headers are shown escaped, never sent raw.
//!
//! The listing follows Sendmail's `mailq`: a header with the spool and the count, a column
//! line, then per message its id, a status character (`-`: waiting for its next attempt,
//! Sendmail's "too young"), the data size, the arrival time (UTC) and the sender; a
//! `QUARANTINE: held` line for a held message (Sendmail's hold is its quarantine); the last
//! error in parentheses; then each recipient still pending, with its own last error when it
//! differs. Sendmail says `<dir> is empty` for an empty queue; we say `Mail queue is empty`.

use std::fmt::{self, Write as _};
use std::str::FromStr;

use portcullis_spool::{QueueId, Spool, SpoolError, StoredEnvelope};

/// Bytes of a message's data `show` reads at most, to print its header section.
pub const SHOW_HEAD_BYTES: usize = 64 * 1024;
/// Width of the id column (generated ids are 16 characters; longer ones push the line).
const ID_WIDTH: usize = 16;
/// Where an error line starts (Sendmail: two tabs and a space, under the size column).
const ERROR_INDENT: usize = ID_WIDTH + 3;
/// Where the sender, and so each recipient line, starts: id, status, size, time.
const RCPT_INDENT: usize = ID_WIDTH + 1 + 8 + 1 + 16 + 1;

/// One operator request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// The queue, like `mailq`.
    List,
    /// One message in full: envelope, state and header section.
    Show(QueueId),
    /// Make one message due now, or every message that is not held.
    Flush(Option<QueueId>),
    /// Remove a message from the spool; it is gone, not delivered, not bounced.
    Delete(QueueId),
    /// Keep a message in the spool, undelivered, until it is released.
    Hold(QueueId),
    /// Undo a hold; the message is due now.
    Release(QueueId),
}

impl Op {
    /// Whether the operation changes the spool (the command says so when it works offline).
    pub fn changes_spool(&self) -> bool {
        !matches!(self, Self::List | Self::Show(_))
    }
}

/// The wire form: the verb, then the id if any, one space apart (`flush 6ALBkA0000234567`).
impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::List => f.write_str("list"),
            Self::Show(id) => write!(f, "show {id}"),
            Self::Flush(None) => f.write_str("flush"),
            Self::Flush(Some(id)) => write!(f, "flush {id}"),
            Self::Delete(id) => write!(f, "delete {id}"),
            Self::Hold(id) => write!(f, "hold {id}"),
            Self::Release(id) => write!(f, "release {id}"),
        }
    }
}

/// Why a request line is not an [`Op`]; the message is meant for the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseOpError(String);

impl fmt::Display for ParseOpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseOpError {}

/// Parses the wire form (a trailing CR or LF is ignored; words are separated by spaces).
impl FromStr for Op {
    type Err = ParseOpError;

    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let mut words = line.trim_end_matches(['\r', '\n']).split_ascii_whitespace();
        let verb = words.next().unwrap_or("");
        let id = words.next().map(parse_id).transpose()?;
        if let Some(extra) = words.next() {
            let extra = clean(extra);
            return Err(ParseOpError(format!(
                "unexpected \"{extra}\" after the queue id"
            )));
        }
        let needs_id = |make: fn(QueueId) -> Self| {
            id.clone()
                .map(make)
                .ok_or_else(|| ParseOpError(format!("{verb} needs a queue id")))
        };
        match verb {
            "list" if id.is_none() => Ok(Self::List),
            "list" => Err(ParseOpError("list takes no queue id".into())),
            "flush" => Ok(Self::Flush(id)),
            "show" => needs_id(Self::Show),
            "delete" => needs_id(Self::Delete),
            "hold" => needs_id(Self::Hold),
            "release" => needs_id(Self::Release),
            "" => Err(ParseOpError("empty request".into())),
            other => Err(ParseOpError(format!(
                "unknown request \"{}\"",
                clean(other)
            ))),
        }
    }
}

/// A queue id typed by an operator; a malformed one names no message.
pub fn parse_id(text: &str) -> Result<QueueId, ParseOpError> {
    text.parse().map_err(|_| {
        let shown: String = clean(text).chars().take(64).collect();
        ParseOpError(format!(
            "no such message: {shown} (a queue id is 9 to 24 letters and digits)"
        ))
    })
}

/// What an operation answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Success (exit 0) or failure (exit 1).
    pub ok: bool,
    /// What to print, one or more complete lines.
    pub text: String,
    /// Messages this operation made due now (flush, release): the running server's queue
    /// runner must look at them again, since it schedules from memory. Not sent on the wire.
    pub due_now: Vec<QueueId>,
}

impl Response {
    /// A success printing `text`.
    pub fn ok(text: impl Into<String>) -> Self {
        Self {
            ok: true,
            text: text.into(),
            due_now: Vec::new(),
        }
    }

    /// A failure printing `text`.
    pub fn error(text: impl Into<String>) -> Self {
        Self {
            ok: false,
            text: text.into(),
            due_now: Vec::new(),
        }
    }
}

/// Runs `op` on `spool`; `now_unix` is the wall time in Unix seconds (for ages and due
/// times). Blocking file I/O: call it from a blocking thread.
pub fn execute(spool: &Spool, op: &Op, now_unix: i64) -> Response {
    match op {
        Op::List => list(spool, now_unix),
        Op::Show(id) => show(spool, id, now_unix),
        Op::Flush(Some(id)) => flush_one(spool, id, now_unix),
        Op::Flush(None) => flush_all(spool, now_unix),
        Op::Delete(id) => delete(spool, id),
        Op::Hold(id) => hold(spool, id),
        Op::Release(id) => release(spool, id),
    }
}

fn list(spool: &Spool, now: i64) -> Response {
    let ids = match spool.list() {
        Ok(ids) => ids,
        Err(e) => return Response::error(format!("cannot list the queue: {e}\n")),
    };
    let mut body = String::new();
    let mut count = 0usize;
    for id in &ids {
        match spool.read_envelope(id) {
            Ok(stored) => list_entry(&mut body, &stored, now),
            // Delivered or deleted since the directory was read.
            Err(SpoolError::NotFound { .. }) => continue,
            Err(e) => {
                let _ = writeln!(
                    body,
                    "{:<ID_WIDTH$}? (cannot read: {})",
                    id,
                    clean(&e.to_string())
                );
            }
        }
        count += 1;
    }
    if count == 0 {
        return Response::ok("Mail queue is empty\n");
    }
    let plural = if count == 1 { "" } else { "s" };
    let mut text = format!(
        "\t\t{} ({count} request{plural})\n{:-^ID_WIDTH$} --Size-- -----Q-Time----- ------------Sender/Recipient-----------\n",
        spool.dir().display(),
        "Q-ID",
    );
    text.push_str(&body);
    Response::ok(text)
}

/// One message of the listing (see the module header).
fn list_entry(out: &mut String, stored: &StoredEnvelope, now: i64) {
    let (env, state) = (&stored.envelope, &stored.state);
    let status = if !state.held && state.next_attempt_at > now {
        '-'
    } else {
        ' '
    };
    let _ = writeln!(
        out,
        "{:<ID_WIDTH$}{status}{:>8} {} <{}>",
        env.id,
        stored.data_len,
        queue_time(env.received_at),
        clean(&env.sender)
    );
    if state.held {
        out.push_str("    QUARANTINE: held\n");
    }
    if let Some(error) = &state.last_error {
        let _ = writeln!(out, "{:ERROR_INDENT$}({})", "", one_line(error));
    }
    for (i, rcpt) in env.recipients.iter().enumerate() {
        if is_done(stored, i) {
            continue;
        }
        let _ = write!(out, "{:RCPT_INDENT$}<{}>", "", clean(rcpt));
        match rcpt_error(stored, i) {
            Some(e) if state.last_error.as_deref() != Some(e) => {
                let _ = writeln!(out, " ({})", one_line(e));
            }
            _ => out.push('\n'),
        }
    }
}

fn is_done(stored: &StoredEnvelope, i: usize) -> bool {
    stored.state.done.get(i).copied().unwrap_or(false)
}

fn rcpt_error(stored: &StoredEnvelope, i: usize) -> Option<&str> {
    stored.state.rcpt_errors.get(i)?.as_deref()
}

fn show(spool: &Spool, id: &QueueId, now: i64) -> Response {
    let (stored, head) = match spool.read_head(id, SHOW_HEAD_BYTES) {
        Ok(found) => found,
        Err(e) => return read_failed(id, &e),
    };
    let (env, state) = (&stored.envelope, &stored.state);
    let mut out = String::new();
    let mut field = |name: &str, value: &str| {
        let _ = writeln!(out, "{:<14}{value}", format!("{name}:"));
    };
    field("Queue ID", id.as_str());
    field("Size", &format!("{} bytes", stored.data_len));
    field(
        "Received",
        &format!(
            "{} ({} ago)",
            date(env.received_at),
            crate::clock::sendmail_delay(now - env.received_at)
        ),
    );
    field("Sender", &format!("<{}>", clean(&env.sender)));
    field("Client", &client(&env.client_name, &env.client_addr));
    field("HELO", &clean(&env.helo));
    field("Protocol", &clean(&env.protocol));
    if let Some(msgid) = &env.msgid {
        field("Message-ID", &clean(msgid));
    }
    field("Held", if state.held { "yes" } else { "no" });
    field(
        "Next attempt",
        &next_attempt(state.held, state.next_attempt_at, now),
    );
    field("Attempts", &state.attempts.to_string());
    if let Some(error) = &state.last_error {
        field("Last error", &one_line(error));
    }
    let pending = (0..env.recipients.len())
        .filter(|&i| !is_done(&stored, i))
        .count();
    field(
        "Recipients",
        &format!("{} ({pending} pending)", env.recipients.len()),
    );
    for (i, rcpt) in env.recipients.iter().enumerate() {
        let done = if is_done(&stored, i) {
            "done   "
        } else {
            "pending"
        };
        let _ = write!(out, "  {done} <{}>", clean(rcpt));
        match rcpt_error(&stored, i) {
            Some(e) => {
                let _ = writeln!(out, " ({})", one_line(e));
            }
            None => out.push('\n'),
        }
    }
    out.push_str("\nHeader section:\n");
    header_section(&mut out, &head, stored.data_len);
    Response::ok(out)
}

/// The message's header lines (up to the blank line), from the first bytes of its data.
fn header_section(out: &mut String, head: &[u8], data_len: usize) {
    let mut lines = head.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        // The last piece of a cut head is a partial line, unless it was the whole message.
        if lines.peek().is_none() && head.len() < data_len {
            let _ = writeln!(
                out,
                "(header section longer than {} KiB: cut here)",
                SHOW_HEAD_BYTES / 1024
            );
            return;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return;
        }
        let _ = writeln!(out, "{}", clean(&String::from_utf8_lossy(line)));
    }
}

fn client(name: &str, addr: &str) -> String {
    if name.is_empty() {
        format!("[{}]", clean(addr))
    } else {
        format!("{} [{}]", clean(name), clean(addr))
    }
}

fn next_attempt(held: bool, at: i64, now: i64) -> String {
    if held {
        "none while held (`portcullis queue release` makes it due)".to_owned()
    } else if at <= now {
        "now (due)".to_owned()
    } else {
        format!(
            "{} (in {})",
            date(at),
            crate::clock::sendmail_delay(at - now)
        )
    }
}

fn flush_one(spool: &Spool, id: &QueueId, now: i64) -> Response {
    let stored = match spool.read_envelope(id) {
        Ok(stored) => stored,
        Err(e) => return read_failed(id, &e),
    };
    if stored.state.held {
        return Response::error(format!(
            "{id}: held, not flushed (`portcullis queue release {id}` makes it due)\n"
        ));
    }
    if stored.state.next_attempt_at > now {
        let mut state = stored.state;
        state.next_attempt_at = 0;
        if let Err(e) = spool.write_state(id, &state) {
            return write_failed(id, &e);
        }
    }
    let mut response = Response::ok(format!("{id}: due now\n"));
    response.due_now.push(id.clone());
    response
}

fn flush_all(spool: &Spool, now: i64) -> Response {
    let ids = match spool.list() {
        Ok(ids) => ids,
        Err(e) => return Response::error(format!("cannot list the queue: {e}\n")),
    };
    let (mut held, mut failures) = (0usize, String::new());
    let mut due = Vec::new();
    for id in ids {
        let stored = match spool.read_envelope(&id) {
            Ok(stored) => stored,
            Err(SpoolError::NotFound { .. }) => continue,
            Err(e) => {
                failures.push_str(&read_failed(&id, &e).text);
                continue;
            }
        };
        if stored.state.held {
            held += 1;
            continue;
        }
        if stored.state.next_attempt_at > now {
            let mut state = stored.state;
            state.next_attempt_at = 0;
            match spool.write_state(&id, &state) {
                Ok(()) => {}
                Err(SpoolError::NotFound { .. }) => continue,
                Err(e) => {
                    failures.push_str(&write_failed(&id, &e).text);
                    continue;
                }
            }
        }
        due.push(id);
    }
    let plural = if due.len() == 1 { "" } else { "s" };
    let mut text = format!("{} message{plural} due now", due.len());
    if held > 0 {
        let _ = write!(text, "; {held} held, not flushed");
    }
    text.push('\n');
    text.push_str(&failures);
    Response {
        ok: failures.is_empty(),
        text,
        due_now: due,
    }
}

fn delete(spool: &Spool, id: &QueueId) -> Response {
    let stored = match spool.read_envelope(id) {
        Ok(stored) => Some(stored),
        // A damaged file is still the operator's to delete.
        Err(SpoolError::Corrupt { .. }) => None,
        Err(e) => return read_failed(id, &e),
    };
    if let Err(e) = spool.remove(id) {
        return Response::error(format!("{id}: cannot delete: {}\n", clean(&e.to_string())));
    }
    let pending = stored.map_or_else(
        || "its recipients".to_owned(),
        |s| {
            let n = (0..s.envelope.recipients.len())
                .filter(|&i| !is_done(&s, i))
                .count();
            format!("{n} pending recipient{}", if n == 1 { "" } else { "s" })
        },
    );
    Response::ok(format!(
        "{id}: deleted; the message is gone and will not be delivered to {pending} (no bounce is sent)\n"
    ))
}

fn hold(spool: &Spool, id: &QueueId) -> Response {
    let stored = match spool.read_envelope(id) {
        Ok(stored) => stored,
        Err(e) => return read_failed(id, &e),
    };
    if stored.state.held {
        return Response::ok(format!("{id}: already held\n"));
    }
    let mut state = stored.state;
    state.held = true;
    if let Err(e) = spool.write_state(id, &state) {
        return write_failed(id, &e);
    }
    Response::ok(format!(
        "{id}: held; not delivered until `portcullis queue release {id}`\n"
    ))
}

fn release(spool: &Spool, id: &QueueId) -> Response {
    let stored = match spool.read_envelope(id) {
        Ok(stored) => stored,
        Err(e) => return read_failed(id, &e),
    };
    let was_held = stored.state.held;
    let mut state = stored.state;
    state.held = false;
    state.next_attempt_at = 0;
    if let Err(e) = spool.write_state(id, &state) {
        return write_failed(id, &e);
    }
    let text = if was_held {
        format!("{id}: released; due now\n")
    } else {
        format!("{id}: was not held; due now\n")
    };
    let mut response = Response::ok(text);
    response.due_now.push(id.clone());
    response
}

fn read_failed(id: &QueueId, e: &SpoolError) -> Response {
    match e {
        SpoolError::NotFound { .. } => Response::error(format!("no such message: {id}\n")),
        e => Response::error(format!("{id}: cannot read: {}\n", clean(&e.to_string()))),
    }
}

fn write_failed(id: &QueueId, e: &SpoolError) -> Response {
    match e {
        // Delivered or deleted between our read and our write.
        SpoolError::NotFound { .. } => Response::error(format!("no such message: {id}\n")),
        e => Response::error(format!(
            "{id}: cannot update its state: {}\n",
            clean(&e.to_string())
        )),
    }
}

/// Sendmail's Q-Time column: `Sat Nov 21 11:46` (16 characters), here in UTC.
fn queue_time(unix: i64) -> String {
    match jiff::Timestamp::from_second(unix) {
        Ok(t) => t.strftime("%a %b %e %H:%M").to_string(),
        Err(_) => format!("{unix:>16}"),
    }
}

/// An RFC 5322 date in UTC, as in our logs and Received: headers.
fn date(unix: i64) -> String {
    match jiff::Timestamp::from_second(unix) {
        Ok(t) => crate::clock::rfc5322(t),
        Err(_) => format!("@{unix}"),
    }
}

/// `s` with every control character but tab escaped (`\u{1b}`), so text from the network
/// cannot move the cursor or recolour an operator's terminal.
fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// An error text on one line: its line breaks become spaces, then [`clean`].
fn one_line(s: &str) -> String {
    let joined: Vec<&str> = s
        .split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    clean(&joined.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_spool::{DeliveryState, Envelope, NewMessage, QueueIdGen};

    /// 2026-11-21 11:46:10 UTC.
    const T0: i64 = 1_795_261_570;
    const NOW: i64 = T0 + 3_725;

    fn id(n: u32) -> QueueId {
        format!("6ALBkA{n:04}234567").parse().unwrap()
    }

    fn message(id: QueueId, sender: &str, rcpts: &[&str], data: &[u8]) -> NewMessage {
        NewMessage {
            envelope: Envelope {
                id,
                received_at: T0,
                sender: sender.into(),
                recipients: rcpts.iter().map(|r| (*r).to_owned()).collect(),
                client_addr: "192.0.2.7".into(),
                client_name: "mail.example.org".into(),
                helo: "mail.example.org".into(),
                protocol: "ESMTP".into(),
                msgid: Some("<abc@example.org>".into()),
            },
            data: data.to_vec(),
        }
    }

    fn spool_with(messages: &[NewMessage]) -> (tempfile::TempDir, Spool) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        assert!(spool.commit_batch(messages).iter().all(Result::is_ok));
        (dir, spool)
    }

    fn state(spool: &Spool, id: &QueueId) -> DeliveryState {
        spool.read_envelope(id).unwrap().state
    }

    #[test]
    fn wire_form_round_trips() {
        let ops = [
            (Op::List, "list"),
            (Op::Show(id(1)), "show 6ALBkA0001234567"),
            (Op::Flush(None), "flush"),
            (Op::Flush(Some(id(2))), "flush 6ALBkA0002234567"),
            (Op::Delete(id(3)), "delete 6ALBkA0003234567"),
            (Op::Hold(id(4)), "hold 6ALBkA0004234567"),
            (Op::Release(id(5)), "release 6ALBkA0005234567"),
        ];
        for (op, wire) in ops {
            assert_eq!(op.to_string(), wire);
            assert_eq!(wire.parse::<Op>(), Ok(op.clone()), "{wire}");
            assert_eq!(format!("{wire}\r\n").parse::<Op>(), Ok(op), "{wire} CRLF");
        }
        assert!(Op::Hold(id(1)).changes_spool() && Op::Flush(None).changes_spool());
        assert!(!Op::List.changes_spool() && !Op::Show(id(1)).changes_spool());
    }

    #[test]
    fn bad_requests_say_why() {
        for (line, want) in [
            ("", "empty request"),
            ("   \n", "empty request"),
            ("frobnicate", "unknown request \"frobnicate\""),
            ("LIST", "unknown request"),
            ("list 6ALBkA0001234567", "list takes no queue id"),
            ("show", "show needs a queue id"),
            ("release", "release needs a queue id"),
            ("hold ../../etc/passwd", "no such message: ../../etc/passwd"),
            ("delete short", "no such message: short (a queue id is"),
            ("show 6ALBkA0001234567 extra", "unexpected \"extra\""),
            ("x\u{1b}[2J", "unknown request \"x\\u{1b}[2J\""),
        ] {
            let err = line.parse::<Op>().unwrap_err().to_string();
            assert!(err.contains(want), "{line:?}: {err:?} lacks {want:?}");
        }
        assert_eq!(
            parse_id("nope").unwrap_err().to_string(),
            "no such message: nope (a queue id is 9 to 24 letters and digits)"
        );
    }

    /// The listing's exact layout: three messages, one of each kind.
    #[test]
    fn list_is_mailq_shaped() {
        let body = vec![b'x'; 1234];
        let (dir, spool) = spool_with(&[
            message(
                id(1),
                "alice@example.org",
                &["bob@example.net", "carol@example.net"],
                &body,
            ),
            message(
                id(2),
                "",
                &["dave@example.net"],
                b"Subject: x\r\n\r\nhi\r\n",
            ),
            message(
                id(3),
                "eve@example.org",
                &["frank@example.net", "gina@example.net"],
                b"",
            ),
        ]);
        // 1: bob done, carol deferred with the same error as the message: shown once.
        let waiting = DeliveryState {
            attempts: 2,
            next_attempt_at: NOW + 600,
            done: vec![true, false],
            last_error: Some("451 4.2.2 mailbox full".into()),
            rcpt_errors: vec![None, Some("451 4.2.2 mailbox full".into())],
            held: false,
        };
        spool.write_state(&id(1), &waiting).unwrap();
        // 2: held past its lifetime.
        let held = DeliveryState {
            attempts: 9,
            next_attempt_at: NOW + 600,
            last_error: Some("451 4.4.1 host down\r\nsecond line".into()),
            held: true,
            ..Default::default()
        };
        spool.write_state(&id(2), &held).unwrap();
        // 3: due, one recipient with its own error.
        let due = DeliveryState {
            attempts: 1,
            last_error: Some("451 4.3.0 try later".into()),
            rcpt_errors: vec![Some("452 4.2.2 over quota".into()), None],
            ..Default::default()
        };
        spool.write_state(&id(3), &due).unwrap();

        let got = execute(&spool, &Op::List, NOW);
        assert!(got.ok);
        let pad = " ".repeat(RCPT_INDENT);
        let want = format!(
            "\t\t{} (3 requests)\n\
             ------Q-ID------ --Size-- -----Q-Time----- ------------Sender/Recipient-----------\n\
             6ALBkA0001234567-    1234 Sat Nov 21 11:46 <alice@example.org>\n\
             \x20                  (451 4.2.2 mailbox full)\n\
             {pad}<carol@example.net>\n\
             6ALBkA0002234567       18 Sat Nov 21 11:46 <>\n\
             \x20   QUARANTINE: held\n\
             \x20                  (451 4.4.1 host down second line)\n\
             {pad}<dave@example.net>\n\
             6ALBkA0003234567        0 Sat Nov 21 11:46 <eve@example.org>\n\
             \x20                  (451 4.3.0 try later)\n\
             {pad}<frank@example.net> (452 4.2.2 over quota)\n\
             {pad}<gina@example.net>\n",
            dir.path().display()
        );
        assert_eq!(got.text, want, "\n{}", got.text);
    }

    #[test]
    fn empty_queue_and_vanished_or_damaged_files() {
        let (dir, spool) = spool_with(&[]);
        assert_eq!(
            execute(&spool, &Op::List, NOW),
            Response::ok("Mail queue is empty\n")
        );
        let ids = QueueIdGen::new(1);
        let (good, torn) = (ids.next(T0), ids.next(T0));
        let msgs = [
            message(good.clone(), "a@b.c", &["d@e.f"], b"x"),
            message(torn.clone(), "a@b.c", &["d@e.f"], b"y"),
        ];
        assert!(spool.commit_batch(&msgs).iter().all(Result::is_ok));
        std::fs::write(
            dir.path().join("queue").join(torn.as_str()),
            "PORTCULLIS-SPOOL 1\nid",
        )
        .unwrap();
        let got = execute(&spool, &Op::List, NOW);
        assert!(got.ok, "{}", got.text);
        assert!(got.text.contains("(2 requests)"), "{}", got.text);
        assert!(
            got.text
                .contains(&format!("{torn}? (cannot read: corrupt spool file")),
            "{}",
            got.text
        );
        assert!(
            got.text.contains(&format!("{good}        1 ")),
            "{}",
            got.text
        );
    }

    #[test]
    fn show_prints_envelope_state_and_headers_only() {
        let data =
            b"Subject: hello\r\nFrom: Alice <alice@example.org>\r\n\tfolded\r\n\r\nsecret body\r\n";
        let (_dir, spool) = spool_with(&[message(
            id(1),
            "alice@example.org",
            &["bob@example.net", "carol@example.net"],
            data,
        )]);
        let st = DeliveryState {
            attempts: 3,
            next_attempt_at: NOW + 1_800,
            done: vec![true, false],
            last_error: Some("451 4.4.1 no answer".into()),
            rcpt_errors: vec![None, Some("451 4.4.1 no answer".into())],
            held: false,
        };
        spool.write_state(&id(1), &st).unwrap();
        let got = execute(&spool, &Op::Show(id(1)), NOW);
        assert!(got.ok);
        let want = format!(
            "Queue ID:     6ALBkA0001234567\n\
             Size:         {} bytes\n\
             Received:     Sat, 21 Nov 2026 11:46:10 +0000 (01:02:05 ago)\n\
             Sender:       <alice@example.org>\n\
             Client:       mail.example.org [192.0.2.7]\n\
             HELO:         mail.example.org\n\
             Protocol:     ESMTP\n\
             Message-ID:   <abc@example.org>\n\
             Held:         no\n\
             Next attempt: Sat, 21 Nov 2026 13:18:15 +0000 (in 00:30:00)\n\
             Attempts:     3\n\
             Last error:   451 4.4.1 no answer\n\
             Recipients:   2 (1 pending)\n\
             \x20 done    <bob@example.net>\n\
             \x20 pending <carol@example.net> (451 4.4.1 no answer)\n\
             \n\
             Header section:\n\
             Subject: hello\n\
             From: Alice <alice@example.org>\n\
             \tfolded\n",
            data.len()
        );
        assert_eq!(got.text, want, "\n{}", got.text);
        let missing = execute(&spool, &Op::Show(id(9)), NOW);
        assert_eq!(
            missing,
            Response::error("no such message: 6ALBkA0009234567\n")
        );
    }

    #[test]
    fn show_reads_a_bounded_head_and_escapes_controls() {
        let mut data = b"Subject: \x1b[31mred\x1b[0m\r\nX-Long: ".to_vec();
        data.extend(vec![b'a'; 2 * SHOW_HEAD_BYTES]);
        data.extend_from_slice(b"\r\n\r\nbody\r\n");
        let (_dir, spool) = spool_with(&[message(id(1), "\u{1b}]0;pwned\u{7}@x", &["r@x"], &data)]);
        let got = execute(&spool, &Op::Show(id(1)), NOW);
        assert!(got.ok);
        assert!(
            !got.text.contains('\u{1b}') && !got.text.contains('\u{7}'),
            "{:?}",
            got.text
        );
        assert!(
            got.text.contains("Sender:       <\\u{1b}]0;pwned\\u{7}@x>"),
            "{}",
            got.text
        );
        assert!(
            got.text.contains("Subject: \\u{1b}[31mred\\u{1b}[0m\n"),
            "{}",
            got.text
        );
        assert!(
            got.text
                .ends_with("(header section longer than 64 KiB: cut here)\n"),
            "{}",
            got.text
        );
        assert!(
            got.text.len() < SHOW_HEAD_BYTES + 2_000,
            "bounded: {}",
            got.text.len()
        );
        // A message that is all header, without a blank line, shows all of it.
        let (_dir, spool) = spool_with(&[message(id(2), "a@x", &["r@x"], b"Subject: only\r\n")]);
        let got = execute(&spool, &Op::Show(id(2)), NOW);
        assert!(
            got.text.ends_with("Header section:\nSubject: only\n"),
            "{}",
            got.text
        );
    }

    #[test]
    fn hold_release_flush_change_only_their_fields() {
        let (_dir, spool) = spool_with(&[message(id(1), "a@x", &["b@x", "c@x"], b"x")]);
        let before = DeliveryState {
            attempts: 4,
            next_attempt_at: NOW + 900,
            done: vec![true, false],
            last_error: Some("451 busy".into()),
            rcpt_errors: vec![None, Some("451 busy".into())],
            held: false,
        };
        spool.write_state(&id(1), &before).unwrap();

        let got = execute(&spool, &Op::Hold(id(1)), NOW);
        assert!(got.ok && got.text.contains("held"), "{}", got.text);
        assert_eq!(
            state(&spool, &id(1)),
            DeliveryState {
                held: true,
                ..before.clone()
            }
        );
        assert!(
            execute(&spool, &Op::List, NOW)
                .text
                .contains("QUARANTINE: held")
        );
        assert_eq!(
            execute(&spool, &Op::Hold(id(1)), NOW).text,
            "6ALBkA0001234567: already held\n"
        );

        let refused = execute(&spool, &Op::Flush(Some(id(1))), NOW);
        assert!(
            !refused.ok && refused.text.contains("held, not flushed"),
            "{}",
            refused.text
        );
        assert!(
            state(&spool, &id(1)).held,
            "a refused flush changes nothing"
        );

        let got = execute(&spool, &Op::Release(id(1)), NOW);
        assert_eq!(got.text, "6ALBkA0001234567: released; due now\n");
        assert_eq!(got.due_now, vec![id(1)]);
        let released = DeliveryState {
            next_attempt_at: 0,
            ..before.clone()
        };
        assert_eq!(state(&spool, &id(1)), released);

        spool.write_state(&id(1), &before).unwrap();
        let got = execute(&spool, &Op::Flush(Some(id(1))), NOW);
        assert_eq!(
            (got.ok, got.text.as_str()),
            (true, "6ALBkA0001234567: due now\n")
        );
        assert_eq!(got.due_now, vec![id(1)]);
        assert_eq!(state(&spool, &id(1)), released);
    }

    #[test]
    fn flush_all_skips_held_messages() {
        let msgs: Vec<_> = (1..=4)
            .map(|n| message(id(n), "a@x", &["b@x"], b"x"))
            .collect();
        let (_dir, spool) = spool_with(&msgs);
        let later = |held| DeliveryState {
            next_attempt_at: NOW + 60,
            held,
            ..Default::default()
        };
        spool.write_state(&id(1), &later(false)).unwrap();
        spool.write_state(&id(2), &later(true)).unwrap();
        spool.write_state(&id(3), &later(false)).unwrap();
        // 4 has no sidecar: already due.
        let got = execute(&spool, &Op::Flush(None), NOW);
        assert_eq!(got.text, "3 messages due now; 1 held, not flushed\n");
        assert!(got.ok);
        assert_eq!(got.due_now, vec![id(1), id(3), id(4)]);
        for n in [1, 3, 4] {
            assert_eq!(state(&spool, &id(n)).next_attempt_at, 0, "{n}");
        }
        assert_eq!(state(&spool, &id(2)), later(true));
    }

    #[test]
    fn delete_removes_the_message_and_says_it_is_gone() {
        let (dir, spool) = spool_with(&[message(id(1), "a@x", &["b@x", "c@x"], b"x")]);
        spool
            .write_state(
                &id(1),
                &DeliveryState {
                    done: vec![false, true],
                    ..Default::default()
                },
            )
            .unwrap();
        let got = execute(&spool, &Op::Delete(id(1)), NOW);
        assert_eq!(
            got,
            Response::ok(
                "6ALBkA0001234567: deleted; the message is gone and will not be delivered to 1 pending recipient (no bounce is sent)\n"
            )
        );
        assert!(
            std::fs::read_dir(dir.path().join("queue"))
                .unwrap()
                .next()
                .is_none()
        );
        assert_eq!(
            execute(&spool, &Op::List, NOW).text,
            "Mail queue is empty\n"
        );
    }

    #[test]
    fn unknown_ids_are_errors_for_every_operation() {
        let (_dir, spool) = spool_with(&[message(id(1), "a@x", &["b@x"], b"x")]);
        for op in [
            Op::Show(id(7)),
            Op::Flush(Some(id(7))),
            Op::Delete(id(7)),
            Op::Hold(id(7)),
            Op::Release(id(7)),
        ] {
            let got = execute(&spool, &op, NOW);
            assert_eq!(
                got,
                Response::error("no such message: 6ALBkA0007234567\n"),
                "{op}"
            );
        }
        assert_eq!(spool.list().unwrap(), vec![id(1)], "nothing created");
    }
}
