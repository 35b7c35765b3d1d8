//! Delivery status notifications (bounces): the message that tells a sender what failed.
//!
//! Role: turn the failed recipients of one queued message into an RFC 3464 report inside an
//! RFC 6522 `multipart/report`, worded as Sendmail 8.17's bounces (savemail.c `errbody`):
//! a `text/plain` part for people ("The original message was received at ...", "----- The
//! following addresses had permanent fatal errors -----", the transcript), a
//! `message/delivery-status` part for programs, and the original's header section as
//! `text/rfc822-headers` (Sendmail's `RET=HDRS` shape; the body is never returned).
//!
//! Must not: do I/O or read the clock (every time is an argument, so the output is a pure
//! function of the [`Report`]), or decide whether and to whom to send: a bounce of a bounce
//! goes to the postmaster, and one to `<>` is never sent (RFC 5321 §4.5.5); both are the
//! queue's calls. Sendmail's differences kept on purpose: `Auto-Submitted: auto-replied`
//! (RFC 3834 §5, as Postfix and Exim) where Sendmail writes `auto-generated (failure)`, and
//! an expiry's subject names the lifetime (Sendmail up to 8.11; 8.12 and later keep
//! "see transcript for details" and say it in the transcript only, as we do too).
//!
//! Invariants, whatever the inputs (addresses, replies and the original's header section come
//! from the network):
//! - every line ends in CRLF and holds at most 998 octets (RFC 5322 §2.1.1); no NUL;
//! - text from outside reaches our header fields, the text part and the status part only as
//!   printable US-ASCII (CR, LF, controls and non-ASCII become `?`, or line breaks folded with
//!   leading white space), so a reply cannot add a header field, a part or a DSN field;
//! - the boundary occurs nowhere in the parts (checked, and changed when it does);
//! - only the third part can hold 8-bit octets (the original's, unchanged), and then it and
//!   the message say `Content-Transfer-Encoding: 8bit` (the caller sends with BODY=8BITMIME);
//! - the size is bounded: [`MAX_LISTED`] recipients of [`MAX_DIAGNOSTIC`] octets of reply
//!   each, [`MAX_HEADERS`] of the original; [`MAX_LEN`] in all.

use std::collections::HashSet;
use std::time::Duration;

use memchr::memmem;

use crate::clock;

/// Recipients described at most; the others are counted ("... and N more"). The server takes
/// at most 1000 recipients per message (`MaxRecipientsPerMessage`), so this lists them all.
pub const MAX_LISTED: usize = 1000;
/// Octets of one diagnostic shown at most (a cut is marked with `...`).
pub const MAX_DIAGNOSTIC: usize = 1024;
/// Octets of the original's header section returned at most (cut at a line end).
pub const MAX_HEADERS: usize = 64 * 1024;
/// An upper bound of [`build`]'s output, whatever the inputs: the original's headers, a few
/// KiB of our own, and at most 5 KiB per listed recipient (address, reply and host, each
/// capped, in both parts).
pub const MAX_LEN: usize = MAX_HEADERS + 32 * 1024 + MAX_LISTED * 5 * 1024;

/// Lines of one diagnostic shown at most (a multi-line SMTP reply rarely has ten).
const MAX_DIAG_LINES: usize = 32;
/// Octets of an address shown at most (RFC 5321 §4.5.3.1.3: a path is at most 256).
const MAX_ADDRESS: usize = 256;
/// Octets of a host name at most (RFC 1035 §2.3.4).
const MAX_HOST: usize = 255;
/// Octets of other text from outside (`received_from`, the remote's description) at most.
const MAX_TEXT: usize = 512;
/// Octets of the `(reason: ...)` line's reply (Sendmail's `MAXSHORTSTR` is 203).
const MAX_REASON: usize = 256;
/// Octets of a line, CRLF excluded (RFC 5322 §2.1.1).
const MAX_LINE: usize = 998;
/// Octets of the boundary's base: room for a `.N=` counter within RFC 2046's 70.
const BOUNDARY_BASE: usize = 56;

/// One recipient that failed for good.
#[derive(Clone, Copy, Debug)]
pub struct Failure<'a> {
    /// The envelope recipient as stored (`user@example.net`, no angle brackets).
    pub recipient: &'a str,
    /// The enhanced status code (`5.1.1`, `4.4.7`); anything else is shown as `5.0.0`.
    pub status: &'a str,
    /// The next hop that answered, as the relay names it (`mx.example.net [192.0.2.1]`).
    pub remote_mta: Option<&'a str>,
    /// The remote reply (lines joined with `\n`), or our own text (`Connection refused`).
    pub diagnostic: Option<&'a str>,
    /// When delivery to this recipient was last tried.
    pub last_attempt: jiff::Timestamp,
}

/// What a bounce says: the message, where it came from, and what failed.
#[derive(Clone, Copy, Debug)]
pub struct Report<'a> {
    /// Our host name (`Reporting-MTA`, `MAILER-DAEMON@...`).
    pub reporting_mta: &'a str,
    /// The original's queue id (Message-ID, boundary, the postmaster's "with id").
    pub queue_id: &'a str,
    /// When the original arrived.
    pub arrival: jiff::Timestamp,
    /// The bounce's `Date:`.
    pub now: jiff::Timestamp,
    /// Who sent us the original, as the log names it (`client.example.org [192.0.2.7]`); the
    /// first word is the `Received-From-MTA`. Empty when unknown.
    pub received_from: &'a str,
    /// The original's envelope sender; empty for `<>`, which makes this a postmaster notice.
    pub original_sender: &'a str,
    /// Whom the bounce goes to: the sender, or the postmaster for a bounce of a bounce.
    pub to: &'a str,
    /// The original message as spooled: CRLF lines, header section, empty line, body.
    pub original: &'a [u8],
    /// The recipients that failed; at least one for a valid report (RFC 3464 §2.3).
    pub failures: &'a [Failure<'a>],
    /// `Some(lifetime)` when these failed because the message outlived the queue lifetime.
    pub expired: Option<Duration>,
}

/// The whole bounce, CRLF lines, ready to be spooled from `<>` to [`Report::to`].
pub fn build(report: &Report<'_>) -> Vec<u8> {
    let listed = &report.failures[..report.failures.len().min(MAX_LISTED)];
    let entries: Vec<Entry> = listed.iter().map(Entry::new).collect();
    let text = human_part(report, &entries);
    let status = status_part(report, &entries);
    let (headers, eight_bit) = header_section(report.original);
    let parts = [text.as_bytes(), status.as_bytes(), &headers];
    let boundary = choose_boundary(&boundary_base(report), &parts);

    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum::<usize>() + 2048);
    out.extend_from_slice(top_header(report, &boundary, eight_bit).as_bytes());
    out.extend_from_slice(b"\r\nThis is a MIME-encapsulated message\r\n");
    let labels = [
        "Content-Type: text/plain; charset=us-ascii\r\n",
        "Content-Type: message/delivery-status\r\n",
        if eight_bit {
            "Content-Type: text/rfc822-headers\r\nContent-Transfer-Encoding: 8bit\r\n"
        } else {
            "Content-Type: text/rfc822-headers\r\n"
        },
    ];
    for (label, part) in labels.iter().zip(parts) {
        // Each part ends in CRLF and the delimiter brings its own (RFC 2046 §5.1.1): an
        // empty line before each delimiter, as Sendmail writes.
        out.extend_from_slice(format!("\r\n--{boundary}\r\n{label}\r\n").as_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// The bounce's subject: Sendmail's, with the lifetime for an expiry (as Sendmail up to 8.11
/// wrote it) and the postmaster's for a bounce of a bounce (`RTSF_PM_BOUNCE`).
pub fn subject_for(double_bounce: bool, expired: Option<Duration>) -> String {
    match (double_bounce, expired) {
        (true, _) => "Postmaster notify: see transcript for details".to_owned(),
        // Sendmail 8.12 and later: the same subject for an expiry; the transcript says
        // how long it was tried.
        (false, _) => "Returned mail: see transcript for details".to_owned(),
    }
}

/// A duration as Sendmail's `pintvl` words it: `5 days`, `1 day, 2 hours`, `30 seconds`.
pub fn interval(d: Duration) -> String {
    let s = d.as_secs();
    let units = [
        (s / 86_400, "day"),
        (s / 3600 % 24, "hour"),
        (s / 60 % 60, "minute"),
        (s % 60, "second"),
    ];
    let words: Vec<String> = units
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n} {unit}{}", if *n == 1 { "" } else { "s" }))
        .collect();
    if words.is_empty() {
        "0 seconds".to_owned()
    } else {
        words.join(", ")
    }
}

/// A failure as it is shown: every piece cleaned and capped once.
struct Entry {
    recipient: String,
    status: String,
    /// The remote as the transcript names it (`mx.example.net [192.0.2.1]`).
    remote: Option<String>,
    /// Its first word, for `Remote-MTA:`.
    remote_name: Option<String>,
    diagnostic: Vec<String>,
    last_attempt: jiff::Timestamp,
}

impl Entry {
    fn new(f: &Failure<'_>) -> Self {
        Self {
            recipient: address(f.recipient),
            status: status_code(f.status),
            remote: f
                .remote_mta
                .map(|r| printable(r.trim(), MAX_TEXT))
                .filter(|r| !r.is_empty()),
            remote_name: f.remote_mta.and_then(mta_name),
            diagnostic: f.diagnostic.map(diagnostic_lines).unwrap_or_default(),
            last_attempt: f.last_attempt,
        }
    }
}

/// The message's header section (RFC 5322 §3.6, RFC 6522 §3 for the MIME fields).
fn top_header(r: &Report<'_>, boundary: &str, eight_bit: bool) -> String {
    let host = host_name(r.reporting_mta);
    let to = match address(r.to) {
        // RFC 5322 §3.4: an empty group is the valid way to name nobody.
        a if a.is_empty() => "undisclosed-recipients:;".to_owned(),
        a => format!("<{a}>"),
    };
    let subject = subject_for(r.original_sender.is_empty(), r.expired);
    let mut out = String::new();
    line(&mut out, &format!("Date: {}", clock::rfc5322(r.now)));
    line(
        &mut out,
        &format!("From: Mail Delivery Subsystem <MAILER-DAEMON@{host}>"),
    );
    line(&mut out, &format!("To: {to}"));
    line(&mut out, &format!("Subject: {subject}"));
    line(&mut out, &format!("Message-ID: {}", message_id(r, &host)));
    line(&mut out, "Auto-Submitted: auto-replied");
    line(&mut out, "MIME-Version: 1.0");
    line(
        &mut out,
        "Content-Type: multipart/report; report-type=delivery-status;",
    );
    line(&mut out, &format!("\tboundary=\"{boundary}\""));
    if eight_bit {
        // RFC 2045 §6.4: a multipart holding an 8bit part is itself 8bit.
        line(&mut out, "Content-Transfer-Encoding: 8bit");
    }
    out
}

/// `<YYYYMMDDhhmmss.QUEUEID@host>`: Sendmail's shape, from the queue id and `now` only.
fn message_id(r: &Report<'_>, host: &str) -> String {
    let qid: String = r
        .queue_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(64)
        .collect();
    let qid = if qid.is_empty() {
        "dsn".to_owned()
    } else {
        qid
    };
    format!("<{}.{qid}@{host}>", r.now.strftime("%Y%m%d%H%M%S"))
}

/// Part 1, for people: Sendmail's introduction, the failed addresses with their reasons, and
/// the transcript.
fn human_part(r: &Report<'_>, entries: &[Entry]) -> String {
    let mut out = String::new();
    line(
        &mut out,
        &format!(
            "The original message was received at {}",
            clock::rfc5322(r.arrival)
        ),
    );
    let from = printable(r.received_from.trim(), MAX_TEXT);
    if !from.is_empty() {
        line(&mut out, &format!("from {from}"));
    }
    if r.original_sender.is_empty() {
        // Sendmail names the message in a postmaster's copy.
        line(
            &mut out,
            &format!("with id {}", printable(r.queue_id, MAX_HOST)),
        );
    }
    line(&mut out, "");
    fatal_list(&mut out, entries, r.failures.len() - entries.len());
    transcript(&mut out, r, entries);
    out
}

/// "The following addresses had permanent fatal errors", each with its reply's first line.
fn fatal_list(out: &mut String, entries: &[Entry], unlisted: usize) {
    if entries.is_empty() && unlisted == 0 {
        return;
    }
    line(
        out,
        "   ----- The following addresses had permanent fatal errors -----",
    );
    for e in entries {
        line(out, &format!("<{}>", e.recipient));
        if let Some(first) = e.diagnostic.first() {
            line(
                out,
                &format!("    (reason: {})", printable(first, MAX_REASON)),
            );
        }
    }
    if unlisted > 0 {
        line(out, &format!("    ... and {unlisted} more"));
    }
    line(out, "");
}

/// What the next hops said (`<<<`, after the host's name, once for a run of the same reply
/// from the same host), our own reasons after the address, and Sendmail's expiry lines.
fn transcript(out: &mut String, r: &Report<'_>, entries: &[Entry]) {
    let mut body = String::new();
    let mut previous: Option<&Entry> = None;
    for e in entries.iter().filter(|e| !e.diagnostic.is_empty()) {
        match &e.remote {
            Some(remote) => {
                let same_host = previous.is_some_and(|p| p.remote == e.remote);
                if same_host && previous.is_some_and(|p| p.diagnostic == e.diagnostic) {
                    continue;
                }
                if !same_host {
                    line(&mut body, &format!("... while talking to {remote}:"));
                }
                for l in &e.diagnostic {
                    push_wrapped(&mut body, "<<< ", l, "<<< ");
                }
            }
            None => {
                let first = format!("<{}>... ", e.recipient);
                let mut prefix = first.as_str();
                for l in &e.diagnostic {
                    push_wrapped(&mut body, prefix, l, "    ");
                    prefix = "    ";
                }
            }
        }
        previous = Some(e);
    }
    if let Some(lifetime) = r.expired {
        let lifetime = interval(lifetime);
        line(
            &mut body,
            &format!("Message could not be delivered for {lifetime}"),
        );
        line(&mut body, "Message will be deleted from queue");
    }
    if !body.is_empty() {
        line(out, "   ----- Transcript of session follows -----");
        out.push_str(&body);
    }
}

/// Part 2, for programs (RFC 3464 §2.2, §2.3): per-message fields, then one block per
/// recipient after an empty line. A multi-line reply is folded (§2.1, RFC 5322 §2.2.3).
fn status_part(r: &Report<'_>, entries: &[Entry]) -> String {
    let mut out = String::new();
    let host = host_name(r.reporting_mta);
    line(&mut out, &format!("Reporting-MTA: dns; {host}"));
    if let Some(name) = mta_name(r.received_from) {
        line(&mut out, &format!("Received-From-MTA: DNS; {name}"));
    }
    line(
        &mut out,
        &format!("Arrival-Date: {}", clock::rfc5322(r.arrival)),
    );
    for e in entries {
        line(&mut out, "");
        line(
            &mut out,
            &format!("Final-Recipient: RFC822; {}", e.recipient),
        );
        line(&mut out, "Action: failed");
        line(&mut out, &format!("Status: {}", e.status));
        if let Some(name) = &e.remote_name {
            line(&mut out, &format!("Remote-MTA: DNS; {name}"));
        }
        if let Some((first, rest)) = e.diagnostic.split_first() {
            push_wrapped(&mut out, "Diagnostic-Code: SMTP; ", first, " ");
            for l in rest {
                push_wrapped(&mut out, " ", l, " ");
            }
        }
        line(
            &mut out,
            &format!("Last-Attempt-Date: {}", clock::rfc5322(e.last_attempt)),
        );
    }
    out
}

/// Part 3: the original's header section, up to its first empty line (or the whole text
/// when there is none), cut at a line end within [`MAX_HEADERS`]. Well-formed lines are kept
/// byte for byte; a bare LF ends a line as CRLF would, bare CRs and NULs are dropped and a
/// line is cut at 998 octets. Says whether the result holds 8-bit octets.
fn header_section(original: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut rest = original;
    while !rest.is_empty() {
        let (raw, next) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        let start = out.len();
        out.extend(
            raw.iter()
                .copied()
                .filter(|&b| b != b'\r' && b != 0)
                .take(MAX_LINE),
        );
        if out.len() == start || out.len() + 2 > MAX_HEADERS {
            // The empty line that ends the section, or no room for this line.
            out.truncate(start);
            break;
        }
        out.extend_from_slice(b"\r\n");
        rest = next;
    }
    let eight_bit = out.iter().any(|b| *b >= 0x80);
    (out, eight_bit)
}

/// `QUEUEID.SECONDS/host`, Sendmail's boundary, within [`BOUNDARY_BASE`] octets of RFC 2046
/// `bchars` (the queue id cut to 24, so the time always shows).
fn boundary_base(r: &Report<'_>) -> String {
    let qid: String = r
        .queue_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(24)
        .collect();
    let mut base = format!("{qid}.{}/{}", r.now.as_second(), host_name(r.reporting_mta));
    base.truncate(BOUNDARY_BASE); // all ASCII
    base
}

/// `base` when no part holds it, else `base.N=` for the least N no part holds: each place
/// where a part holds `base.` followed by digits takes their number, so the search is one
/// pass over the parts whatever they hold (a part cannot make us try every N). The `=` ends
/// the number, so `base.1=` is not inside `base.12=`.
fn choose_boundary(base: &str, parts: &[&[u8]]) -> String {
    let finder = memmem::Finder::new(base.as_bytes());
    let mut seen = false;
    let mut taken = HashSet::new();
    for part in parts {
        let mut from = 0;
        // Overlapping matches too: one hidden inside another could still take a number.
        while let Some(i) = finder.find(&part[from..]) {
            let at = from + i;
            seen = true;
            if let Some(digits) = part[at + base.len()..].strip_prefix(b".") {
                // Past 20 digits a number is too big or starts with 0: no candidate's.
                let len = digits
                    .iter()
                    .take(21)
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                if let Some(n) = std::str::from_utf8(&digits[..len])
                    .ok()
                    .filter(|_| len <= 20)
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    taken.insert(n);
                }
            }
            from = at + 1;
        }
    }
    if !seen {
        return base.to_owned();
    }
    // The first free number is the answer; checking it again costs one pass and keeps the
    // invariant even if the reasoning above were wrong.
    let mut n: u64 = 1;
    loop {
        if !taken.contains(&n) {
            let candidate = format!("{base}.{n}=");
            if !parts
                .iter()
                .any(|p| memmem::find(p, candidate.as_bytes()).is_some())
            {
                return candidate;
            }
        }
        n += 1;
    }
}

/// A diagnostic's lines as shown: split at CR and LF, trimmed, cleaned, empty ones dropped,
/// at most [`MAX_DIAG_LINES`] and [`MAX_DIAGNOSTIC`] octets in all; a cut ends in ` ...`.
/// Only the first 16 KiB are read (a reply padded with more blank lines shows less).
fn diagnostic_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut budget = MAX_DIAGNOSTIC;
    let mut cut = false;
    for raw in head(text, 16 * MAX_DIAGNOSTIC)
        .split(['\r', '\n'])
        .map(str::trim)
    {
        if raw.is_empty() {
            continue;
        }
        if lines.len() == MAX_DIAG_LINES || budget == 0 {
            cut = true;
            break;
        }
        let (l, short) = clean(raw, budget);
        budget -= l.len();
        lines.push(l);
        if short {
            cut = true;
            break;
        }
    }
    if cut && let Some(last) = lines.last_mut() {
        last.push_str(" ...");
    }
    lines
}

/// An address without one pair of angle brackets, cleaned and capped.
fn address(s: &str) -> String {
    let s = head(s, 2 * MAX_ADDRESS).trim();
    let bare = s
        .strip_prefix('<')
        .and_then(|x| x.strip_suffix('>'))
        .unwrap_or(s);
    printable(bare, MAX_ADDRESS)
}

/// Our own host name for header fields: letters, digits, `.` and `-` only.
fn host_name(s: &str) -> String {
    let h: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        .take(MAX_HOST)
        .collect();
    if h.is_empty() {
        "localhost".to_owned()
    } else {
        h
    }
}

/// An MTA's name for a DSN field: the first word of its description, without a final dot
/// (as Sendmail's `Remote-MTA:`).
fn mta_name(s: &str) -> Option<String> {
    let word = head(s, 2 * MAX_HOST)
        .split_whitespace()
        .next()?
        .trim_end_matches('.');
    let name = printable(word, MAX_HOST);
    (!name.is_empty()).then_some(name)
}

/// An enhanced status code (RFC 3463 §2: class 2, 4 or 5, then two numbers of 1 to 3
/// digits), or `5.0.0` for anything else.
fn status_code(s: &str) -> String {
    let number = |p: &str| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
    let mut it = s.trim().split('.');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(c @ ("2" | "4" | "5")), Some(a), Some(b), None) if number(a) && number(b) => {
            format!("{c}.{a}.{b}")
        }
        _ => "5.0.0".to_owned(),
    }
}

/// `text` as printable US-ASCII (tab becomes a space, any other control or non-ASCII
/// character `?`) of at most `max` octets; says whether it was cut.
fn clean(text: &str, max: usize) -> (String, bool) {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        if out.len() >= max {
            return (out, true);
        }
        out.push(match c {
            ' '..='~' => c,
            '\t' => ' ',
            _ => '?',
        });
    }
    (out, false)
}

/// [`clean`], with `...` after a cut.
fn printable(text: &str, max: usize) -> String {
    let (mut s, cut) = clean(text, max);
    if cut {
        s.push_str("...");
    }
    s
}

/// The first `max` octets of `s` at most, cut at a character boundary: what is read of
/// text from outside, so a huge input costs no more than a short one.
fn head(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn line(out: &mut String, text: &str) {
    out.push_str(text);
    out.push_str("\r\n");
}

/// `first` then `text`, broken into lines of at most [`MAX_LINE`] octets, each further one
/// starting with `next` (white space, for a folded field).
fn push_wrapped(out: &mut String, first: &str, text: &str, next: &str) {
    let mut prefix = first;
    let mut rest = text;
    loop {
        let mut cut = MAX_LINE.saturating_sub(prefix.len()).max(1).min(rest.len());
        while !rest.is_char_boundary(cut) {
            cut -= 1; // text is ASCII here; this only guards the split
        }
        if cut == 0 {
            cut = rest.chars().next().map_or(0, char::len_utf8);
        }
        let (head, tail) = rest.split_at(cut);
        out.push_str(prefix);
        out.push_str(head);
        out.push_str("\r\n");
        if tail.is_empty() {
            return;
        }
        prefix = next;
        rest = tail;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ORIGINAL: &[u8] = b"Received: from client.example.org\r\n\tby mx.example.com\r\n\
From: Alice <alice@example.org>\r\nTo: user@example.net\r\nSubject: hello\r\n\
Message-ID: <1@example.org>\r\n\r\nThe body stays here.\r\n";

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    fn failure<'a>(recipient: &'a str, diagnostic: Option<&'a str>) -> Failure<'a> {
        Failure {
            recipient,
            status: "5.1.1",
            remote_mta: Some("mx.example.net [192.0.2.1]"),
            diagnostic,
            last_attempt: ts("2026-11-21T10:00:00Z"),
        }
    }

    fn report<'a>(failures: &'a [Failure<'a>]) -> Report<'a> {
        Report {
            reporting_mta: "mx.example.com",
            queue_id: "6ALBkA0000234567",
            arrival: ts("2026-11-21T09:59:58Z"),
            now: ts("2026-11-21T10:00:01Z"),
            received_from: "client.example.org [192.0.2.7]",
            original_sender: "alice@example.org",
            to: "alice@example.org",
            original: ORIGINAL,
            failures,
            expired: None,
        }
    }

    /// A header section's fields, unfolded (RFC 5322 §2.2.3: CRLF before WSP removed).
    fn fields(head: &[u8]) -> Vec<(String, String)> {
        let text = std::str::from_utf8(head).expect("header fields are ASCII");
        let mut out: Vec<(String, String)> = Vec::new();
        for l in text.split("\r\n").filter(|l| !l.is_empty()) {
            if l.starts_with([' ', '\t']) {
                out.last_mut()
                    .expect("a continuation follows a field")
                    .1
                    .push_str(l);
            } else {
                let (name, value) = l.split_once(':').expect("a field has a colon");
                assert!(!name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()));
                out.push((name.to_owned(), value.trim_start().to_owned()));
            }
        }
        out
    }

    fn field<'f>(fields: &'f [(String, String)], name: &str) -> Option<&'f str> {
        fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Header section (with its last CRLF) and body.
    fn split_head(bytes: &[u8]) -> (&[u8], &[u8]) {
        let i = memmem::find(bytes, b"\r\n\r\n").expect("an empty line ends the header");
        (&bytes[..i + 2], &bytes[i + 4..])
    }

    struct Part {
        fields: Vec<(String, String)>,
        content: Vec<u8>,
    }

    struct Parsed {
        fields: Vec<(String, String)>,
        boundary: String,
        parts: Vec<Part>,
    }

    /// Parses the bounce as a MIME reader would, checking that the boundary occurs only in
    /// the Content-Type field and as delimiter lines.
    fn parse(msg: &[u8]) -> Parsed {
        let (head, _) = split_head(msg);
        let fields = fields(head);
        let ct = field(&fields, "Content-Type").expect("Content-Type");
        assert!(ct.starts_with("multipart/report; report-type=delivery-status;"));
        let boundary = ct
            .split_once("boundary=\"")
            .and_then(|(_, b)| b.split_once('"'))
            .map(|(b, _)| b.to_owned())
            .expect("a quoted boundary");
        assert!(!boundary.is_empty() && boundary.len() <= 70);

        let places: Vec<usize> = memmem::find_iter(msg, boundary.as_bytes()).collect();
        assert_eq!(places.len(), 5, "Content-Type, three delimiters, the close");
        assert!(places[0] < head.len());
        for &at in &places[1..] {
            assert_eq!(&msg[at - 4..at], b"\r\n--", "a delimiter starts a line");
            let after = &msg[at + boundary.len()..];
            assert!(after.starts_with(b"\r\n") || after == b"--\r\n");
        }
        assert!(msg.ends_with(format!("\r\n--{boundary}--\r\n").as_bytes()));

        let delimiter = format!("\r\n--{boundary}");
        let mut body = b"\r\n".to_vec();
        body.extend_from_slice(body_of(msg, head.len()));
        let pieces: Vec<&[u8]> = split(&body, delimiter.as_bytes());
        assert_eq!(pieces.len(), 5, "preamble, three parts, close");
        assert_eq!(pieces[4], b"--\r\n");
        let parts = pieces[1..4]
            .iter()
            .map(|p| {
                let p = p.strip_prefix(b"\r\n").expect("CRLF after a delimiter");
                let (h, content) = split_head(p);
                Part {
                    fields: self::fields(h),
                    content: content.to_vec(),
                }
            })
            .collect();
        Parsed {
            fields,
            boundary,
            parts,
        }
    }

    fn body_of(msg: &[u8], head_len: usize) -> &[u8] {
        &msg[head_len + 2..]
    }

    fn split<'b>(hay: &'b [u8], pat: &[u8]) -> Vec<&'b [u8]> {
        let mut out = Vec::new();
        let mut from = 0;
        for at in memmem::find_iter(hay, pat) {
            out.push(&hay[from..at]);
            from = at + pat.len();
        }
        out.push(&hay[from..]);
        out
    }

    fn text(part: &Part) -> &str {
        std::str::from_utf8(&part.content).expect("ASCII")
    }

    /// The delivery-status part's groups of fields: per-message first, then per-recipient.
    fn groups(part: &Part) -> Vec<Vec<(String, String)>> {
        text(part)
            .split("\r\n\r\n")
            .map(|g| fields(format!("{g}\r\n").as_bytes()))
            .filter(|g| !g.is_empty())
            .collect()
    }

    /// The invariants of the module header, on any output.
    fn assert_well_formed(msg: &[u8]) {
        assert!(msg.ends_with(b"\r\n"));
        assert!(!msg.contains(&0));
        for (i, &b) in msg.iter().enumerate() {
            if b == b'\r' {
                assert_eq!(msg.get(i + 1), Some(&b'\n'), "bare CR at {i}");
            }
            if b == b'\n' {
                assert!(i > 0 && msg[i - 1] == b'\r', "bare LF at {i}");
            }
        }
        for l in split(msg, b"\r\n") {
            assert!(l.len() <= MAX_LINE, "a line of {} octets", l.len());
        }
        let (head, _) = split_head(msg);
        assert!(head.is_ascii());
        let known = [
            "Date",
            "From",
            "To",
            "Subject",
            "Message-ID",
            "Auto-Submitted",
            "MIME-Version",
            "Content-Type",
            "Content-Transfer-Encoding",
        ];
        let names: Vec<String> = fields(head).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), 8 + usize::from(names.len() == 9));
        for n in &names {
            assert!(known.contains(&n.as_str()), "unexpected field {n}");
        }
        let parsed = parse(msg);
        assert!(parsed.parts[0].content.is_ascii());
        assert!(parsed.parts[1].content.is_ascii());
    }

    #[test]
    fn a_bounce_has_sendmails_header_and_three_parts() {
        let failures = [failure(
            "user@example.net",
            Some("550 5.1.1 <user@example.net>... User unknown"),
        )];
        let msg = build(&report(&failures));
        assert_well_formed(&msg);
        let p = parse(&msg);
        let f = &p.fields;
        assert_eq!(field(f, "Date"), Some("Sat, 21 Nov 2026 10:00:01 +0000"));
        assert_eq!(
            field(f, "From"),
            Some("Mail Delivery Subsystem <MAILER-DAEMON@mx.example.com>")
        );
        assert_eq!(field(f, "To"), Some("<alice@example.org>"));
        assert_eq!(
            field(f, "Subject"),
            Some("Returned mail: see transcript for details")
        );
        assert_eq!(
            field(f, "Message-ID"),
            Some("<20261121100001.6ALBkA0000234567@mx.example.com>")
        );
        assert_eq!(field(f, "Auto-Submitted"), Some("auto-replied"));
        assert_eq!(field(f, "MIME-Version"), Some("1.0"));
        assert_eq!(field(f, "Content-Transfer-Encoding"), None);
        assert_eq!(p.boundary, "6ALBkA0000234567.1795255201/mx.example.com");

        let types: Vec<&str> = p
            .parts
            .iter()
            .map(|part| field(&part.fields, "Content-Type").unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "text/plain; charset=us-ascii",
                "message/delivery-status",
                "text/rfc822-headers"
            ]
        );
        assert_eq!(
            text(&p.parts[0]),
            "The original message was received at Sat, 21 Nov 2026 09:59:58 +0000\r\n\
             from client.example.org [192.0.2.7]\r\n\
             \r\n   ----- The following addresses had permanent fatal errors -----\r\n\
             <user@example.net>\r\n\
             \x20   (reason: 550 5.1.1 <user@example.net>... User unknown)\r\n\
             \r\n   ----- Transcript of session follows -----\r\n\
             ... while talking to mx.example.net [192.0.2.1]:\r\n\
             <<< 550 5.1.1 <user@example.net>... User unknown\r\n"
        );
        // The header section as it was, without the body.
        let (head, _) = split_head(ORIGINAL);
        assert_eq!(p.parts[2].content, head);
        assert!(memmem::find(&msg, b"The body stays here").is_none());
        // Deterministic: the same report gives the same bytes.
        assert_eq!(build(&report(&failures)), msg);
    }

    #[test]
    fn per_recipient_blocks_match_the_failures() {
        let failures = [
            failure(
                "a@example.net",
                Some(
                    "550-5.1.1 The email account that you tried to reach does not exist.\n550 5.1.1 Please try again.",
                ),
            ),
            Failure {
                recipient: "<b@example.net>",
                status: "4.4.1",
                remote_mta: None,
                diagnostic: Some("Connection refused"),
                last_attempt: ts("2026-11-20T08:00:00Z"),
            },
            Failure {
                recipient: "c@example.net",
                status: "not a status",
                remote_mta: Some("mx2.example.net."),
                diagnostic: None,
                last_attempt: ts("2026-11-21T10:00:00Z"),
            },
        ];
        let msg = build(&report(&failures));
        assert_well_formed(&msg);
        let p = parse(&msg);
        let g = groups(&p.parts[1]);
        assert_eq!(g.len(), 4);
        assert_eq!(
            g[0],
            [
                ("Reporting-MTA".into(), "dns; mx.example.com".into()),
                ("Received-From-MTA".into(), "DNS; client.example.org".into()),
                (
                    "Arrival-Date".into(),
                    "Sat, 21 Nov 2026 09:59:58 +0000".into()
                ),
            ]
        );
        let want: [&[(&str, &str)]; 3] = [
            &[
                ("Final-Recipient", "RFC822; a@example.net"),
                ("Action", "failed"),
                ("Status", "5.1.1"),
                ("Remote-MTA", "DNS; mx.example.net"),
                (
                    "Diagnostic-Code",
                    "SMTP; 550-5.1.1 The email account that you tried to reach does not exist. 550 5.1.1 Please try again.",
                ),
                ("Last-Attempt-Date", "Sat, 21 Nov 2026 10:00:00 +0000"),
            ],
            &[
                ("Final-Recipient", "RFC822; b@example.net"),
                ("Action", "failed"),
                ("Status", "4.4.1"),
                ("Diagnostic-Code", "SMTP; Connection refused"),
                ("Last-Attempt-Date", "Fri, 20 Nov 2026 08:00:00 +0000"),
            ],
            &[
                ("Final-Recipient", "RFC822; c@example.net"),
                ("Action", "failed"),
                ("Status", "5.0.0"),
                ("Remote-MTA", "DNS; mx2.example.net"),
                ("Last-Attempt-Date", "Sat, 21 Nov 2026 10:00:00 +0000"),
            ],
        ];
        for (got, want) in g[1..].iter().zip(want) {
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect();
            assert_eq!(*got, want);
        }
        let human = text(&p.parts[0]);
        assert!(human.contains(
            "<a@example.net>\r\n    (reason: 550-5.1.1 The email account that you tried to reach does not exist.)\r\n\
             <b@example.net>\r\n    (reason: Connection refused)\r\n<c@example.net>\r\n\r\n"
        ));
        assert!(human.contains(
            "<<< 550 5.1.1 Please try again.\r\n<b@example.net>... Connection refused\r\n"
        ));
    }

    #[test]
    fn a_reply_cannot_add_a_header_a_part_or_a_field() {
        let failures = [Failure {
            recipient: "u@example.net\r\nBcc: evil@x",
            status: "5.0.0\r\nX: y",
            remote_mta: Some("mx.example.net\r\nBcc: evil@x"),
            diagnostic: Some("550 x\r\nBcc: evil@x\r\n\r\nAction: delivered\n\r\n--x--"),
            last_attempt: ts("2026-11-21T10:00:00Z"),
        }];
        let r = Report {
            to: "alice@example.org>\r\nBcc: evil@x",
            received_from: "client\r\nBcc: evil@x",
            reporting_mta: "mx.example.com\r\nBcc: evil@x",
            ..report(&failures)
        };
        let msg = build(&r);
        assert_well_formed(&msg);
        let p = parse(&msg);
        assert!(field(&p.fields, "Bcc").is_none());
        assert_eq!(
            field(&p.fields, "To"),
            Some("<alice@example.org>??Bcc: evil@x>")
        );
        for part in &p.parts[..2] {
            assert_eq!(part.fields.len(), 1);
        }
        let g = groups(&p.parts[1]);
        assert_eq!(g.len(), 2, "the empty line in the reply ends no block");
        for group in &g {
            assert!(field(group, "Bcc").is_none());
        }
        let fields: Vec<&str> = g[1].iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            fields,
            [
                "Final-Recipient",
                "Action",
                "Status",
                "Remote-MTA",
                "Diagnostic-Code",
                "Last-Attempt-Date"
            ]
        );
        assert_eq!(field(&g[1], "Status"), Some("5.0.0"));
        assert_eq!(field(&g[1], "Action"), Some("failed"));
        assert_eq!(
            field(&g[1], "Diagnostic-Code"),
            Some("SMTP; 550 x Bcc: evil@x Action: delivered --x--")
        );
        assert!(!text(&p.parts[0]).lines().any(|l| l.starts_with("Bcc")));
    }

    #[test]
    fn a_part_holding_the_boundary_forces_another() {
        let failures = [failure("u@example.net", None)];
        let base = boundary_base(&report(&failures));
        assert_eq!(base, "6ALBkA0000234567.1795255201/mx.example.com");
        // The base, the first counters and a longer one that holds `.1` as a prefix.
        let original = format!(
            "X-Trap: --{base}\r\nX-Trap: {base}.1=\r\nX-Trap: {base}.12=\r\n\r\n--{base}--\r\n"
        );
        let diagnostic = format!("550 --{base}.2=\n--{base}.3");
        let failures = [failure("u@example.net", Some(&diagnostic))];
        let r = Report {
            original: original.as_bytes(),
            ..report(&failures)
        };
        let msg = build(&r);
        assert_well_formed(&msg);
        let p = parse(&msg);
        assert_eq!(p.boundary, format!("{base}.4="));
        assert_eq!(
            p.parts[2].content,
            &original.as_bytes()[..original.len() - 2 - base.len() - 6]
        );

        // Without the base anywhere, the base itself.
        assert_eq!(choose_boundary("b", &[b"a", b"c"]), "b");
        // Every number up to 20000 taken: still one pass to find 20001.
        let crowded: String = (0..=20_000).map(|n| format!("b.{n}=")).collect();
        assert_eq!(choose_boundary("b", &[crowded.as_bytes()]), "b.20001=");
        // Overlapping matches count too.
        assert_eq!(choose_boundary("aba", &[b"ababa.1="]), "aba.2=");
    }

    #[test]
    fn eight_bit_headers_are_labelled_and_kept() {
        let failures = [failure("u@example.net", Some("550 x"))];
        let original = b"Subject: caf\xc3\xa9\r\nFrom: \xff@x\r\n\r\nbody\r\n";
        let msg = build(&Report {
            original,
            ..report(&failures)
        });
        assert_well_formed(&msg);
        let p = parse(&msg);
        assert_eq!(field(&p.fields, "Content-Transfer-Encoding"), Some("8bit"));
        let part = &p.parts[2];
        assert_eq!(
            field(&part.fields, "Content-Transfer-Encoding"),
            Some("8bit")
        );
        assert_eq!(part.content, &original[..original.len() - 8]);
        assert!(field(&p.parts[0].fields, "Content-Transfer-Encoding").is_none());
    }

    #[test]
    fn an_expired_message_names_its_lifetime() {
        let failures = [Failure {
            status: "4.4.7",
            diagnostic: Some("451 4.3.0 Temporary failure"),
            ..failure("u@example.net", None)
        }];
        let five_days = Duration::from_secs(5 * 86_400);
        let msg = build(&Report {
            expired: Some(five_days),
            ..report(&failures)
        });
        assert_well_formed(&msg);
        let p = parse(&msg);
        // Sendmail 8.12+: the usual subject; the transcript names the lifetime.
        assert_eq!(
            field(&p.fields, "Subject"),
            Some("Returned mail: see transcript for details")
        );
        assert!(text(&p.parts[0]).ends_with(
            "<<< 451 4.3.0 Temporary failure\r\n\
             Message could not be delivered for 5 days\r\n\
             Message will be deleted from queue\r\n"
        ));
        assert_eq!(field(&groups(&p.parts[1])[1], "Status"), Some("4.4.7"));

        assert_eq!(interval(Duration::from_secs(86_400)), "1 day");
        assert_eq!(
            interval(Duration::from_secs(86_400 + 2 * 3600 + 61)),
            "1 day, 2 hours, 1 minute, 1 second"
        );
        assert_eq!(interval(Duration::from_secs(2)), "2 seconds");
        assert_eq!(interval(Duration::ZERO), "0 seconds");
    }

    #[test]
    fn a_bounce_of_a_bounce_is_a_postmaster_notice() {
        let failures = [failure("u@example.net", Some("550 5.1.1 unknown"))];
        let msg = build(&Report {
            original_sender: "",
            to: "postmaster",
            expired: Some(Duration::from_secs(3600)),
            ..report(&failures)
        });
        assert_well_formed(&msg);
        let p = parse(&msg);
        assert_eq!(
            field(&p.fields, "Subject"),
            Some("Postmaster notify: see transcript for details")
        );
        assert_eq!(field(&p.fields, "To"), Some("<postmaster>"));
        assert!(
            text(&p.parts[0]).contains(
                "from client.example.org [192.0.2.7]\r\nwith id 6ALBkA0000234567\r\n\r\n"
            )
        );

        // Nobody to send to still builds, with a valid To:.
        let msg = build(&Report {
            original_sender: "",
            to: "",
            ..report(&failures)
        });
        assert_well_formed(&msg);
        assert_eq!(
            field(&parse(&msg).fields, "To"),
            Some("undisclosed-recipients:;")
        );
    }

    #[test]
    fn the_original_header_section_is_cut_at_a_line_end() {
        let failures = [failure("u@example.net", Some("550 x"))];
        let mut original = Vec::new();
        while original.len() < 2 * MAX_HEADERS {
            original.extend_from_slice(
                format!("X-{:06}: {}\r\n", original.len(), "v".repeat(90)).as_bytes(),
            );
        }
        original.extend_from_slice(b"\r\nbody\r\n");
        let msg = build(&Report {
            original: &original,
            ..report(&failures)
        });
        assert_well_formed(&msg);
        let part = &parse(&msg).parts[2].content;
        assert!(part.len() <= MAX_HEADERS && part.len() > MAX_HEADERS - 200);
        assert!(part.ends_with(b"\r\n") && original.starts_with(part));

        // No separator: the whole text, repaired; a bare LF ends a line, bare CR and NUL go,
        // a long line is cut.
        let original = [b"A: 1\nB: \r2\0\r\nC: ".as_slice(), &[b'x'; 2000]].concat();
        let msg = build(&Report {
            original: &original,
            ..report(&failures)
        });
        assert_well_formed(&msg);
        let part = &parse(&msg).parts[2].content;
        let want = [
            b"A: 1\r\nB: 2\r\nC: ".as_slice(),
            &[b'x'; MAX_LINE - 3],
            b"\r\n",
        ]
        .concat();
        assert_eq!(*part, want);

        // An empty original gives an empty third part.
        let msg = build(&Report {
            original: b"",
            ..report(&failures)
        });
        assert_well_formed(&msg);
        assert!(parse(&msg).parts[2].content.is_empty());
    }

    #[test]
    fn huge_inputs_stay_bounded() {
        let long_line = "x".repeat(1 << 20);
        let many_lines = "5\n".repeat(1 << 19);
        let address = "a".repeat(1 << 16);
        let mut failures = Vec::new();
        for i in 0..5000 {
            failures.push(Failure {
                recipient: &address,
                status: "5.0.0",
                remote_mta: (i % 2 == 0).then_some(address.as_str()),
                diagnostic: Some(if i % 3 == 0 { &long_line } else { &many_lines }),
                last_attempt: ts("2026-11-21T10:00:00Z"),
            });
        }
        let original = vec![b'h'; 10 << 20];
        let r = Report {
            original: &original,
            received_from: &address,
            to: &address,
            queue_id: &address,
            reporting_mta: &address,
            ..report(&failures)
        };
        let msg = build(&r);
        assert!(msg.len() <= MAX_LEN, "{} > {MAX_LEN}", msg.len());
        assert_well_formed(&msg);
        let p = parse(&msg);
        assert_eq!(groups(&p.parts[1]).len(), 1 + MAX_LISTED);
        assert!(text(&p.parts[0]).contains("\r\n    ... and 4000 more\r\n"));
        assert!(p.parts[2].content.len() <= MAX_HEADERS);
    }

    #[test]
    fn diagnostics_are_cleaned_and_capped() {
        assert_eq!(
            diagnostic_lines(" 550 a\tb\u{e9}\x07 \r\n\r\n  \n550 c "),
            ["550 a b??", "550 c"]
        );
        let lines = diagnostic_lines(&"y".repeat(5000));
        assert_eq!(lines, [format!("{} ...", "y".repeat(MAX_DIAGNOSTIC))]);
        let lines = diagnostic_lines(&"z\n".repeat(100));
        assert_eq!(lines.len(), MAX_DIAG_LINES);
        assert_eq!(lines[MAX_DIAG_LINES - 1], "z ...");
        assert_eq!(status_code("5.7.1"), "5.7.1");
        assert_eq!(status_code("2.0.0"), "2.0.0");
        for bad in [
            "", "6.0.0", "5.1", "5.1.1.1", "5.1000.1", "5.a.1", "5.1.1 x",
        ] {
            assert_eq!(status_code(bad), "5.0.0", "{bad:?}");
        }
        assert_eq!(address("<a@b>"), "a@b");
        assert_eq!(
            mta_name("  mx.example.net. [192.0.2.1]"),
            Some("mx.example.net".into())
        );
        assert_eq!(mta_name(" \r\n"), None);
        assert_eq!(host_name("\u{e9}"), "localhost");
    }

    /// Any octets, with CR, LF and `-` made common (as lines and boundaries).
    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..max).prop_map(|v| {
            v.into_iter()
                .map(|b| match b {
                    1..=8 => b'\r',
                    9..=16 => b'\n',
                    17..=20 => b'-',
                    _ => b,
                })
                .collect()
        })
    }

    fn lossy() -> impl Strategy<Value = String> {
        bytes(300).prop_map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    proptest! {
        #[test]
        fn any_input_gives_a_well_formed_bounce(
            recipient in lossy(),
            diagnostic in proptest::option::of(lossy()),
            remote in proptest::option::of(lossy()),
            status in prop_oneof!["[245]\\.[0-9]{1,4}\\.[0-9]{1,4}", lossy()],
            to in lossy(),
            received_from in lossy(),
            original in bytes(2000),
            count in 1usize..4,
            expired in any::<bool>(),
        ) {
            let failures = vec![
                Failure {
                    recipient: &recipient,
                    status: &status,
                    remote_mta: remote.as_deref(),
                    diagnostic: diagnostic.as_deref(),
                    last_attempt: ts("2026-11-21T10:00:00Z"),
                };
                count
            ];
            let r = Report {
                to: &to,
                received_from: &received_from,
                original: &original,
                expired: expired.then_some(Duration::from_secs(86_400)),
                ..report(&failures)
            };
            let msg = build(&r);
            assert_well_formed(&msg);
            prop_assert!(memmem::find(&msg, b"\r\n\r\n").is_some());
            let p = parse(&msg);
            prop_assert_eq!(groups(&p.parts[1]).len(), 1 + count);
        }
    }
}
