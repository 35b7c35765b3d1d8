//! The wire format around the client: message bytes after `354` (dot-stuffing, CRLF, the
//! end of data), replies as smtp-proto hands them over, and the small text checks the
//! client makes on addresses and replies.
//!
//! Must not: keep state beyond what the caller passes in (`at_line_start`).
//! Invariant: nothing written here carries a bare CR or LF, and reply text never carries a
//! control character (so none reaches a log line or a DSN).

use std::fmt::Write as _;

use crate::reply::Reply;

/// Longest remote host name kept for the log.
const MAX_NAME: usize = 255;

/// An address fits in a command line: no control characters.
pub(super) fn sendable(addr: &str) -> bool {
    !addr.bytes().any(|b| b < 0x20 || b == 0x7f)
}

/// `x.y.z` with one-digit class and one-to-three-digit subject and detail (RFC 3463).
pub(super) fn is_enhanced_code(s: &str) -> bool {
    let mut parts = s.split('.');
    let ok = |p: Option<&str>, max: usize| {
        p.is_some_and(|p| !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit()))
    };
    ok(parts.next(), 1) && ok(parts.next(), 3) && ok(parts.next(), 3) && parts.next().is_none()
}

/// smtp-proto's reply as ours: lines split, control characters escaped (so no CR or LF
/// reaches a log line or a DSN), and the enhanced status code, which smtp-proto takes off,
/// put back in front of the first line.
pub(super) fn to_reply(response: smtp_proto::Response<String>) -> Reply {
    let mut lines: Vec<String> = response.message.split('\n').map(clean_line).collect();
    if response.esc != [0, 0, 0]
        && let Some(first) = lines.first_mut()
    {
        let [class, subject, detail] = response.esc;
        let code = format!("{class}.{subject}.{detail}");
        *first = if first.is_empty() {
            code
        } else {
            format!("{code} {first}")
        };
    }
    Reply {
        code: response.code,
        lines,
    }
}

/// One reply line without CR, with other control characters as `\xNN`.
fn clean_line(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    for c in line.chars() {
        match c {
            '\r' => {}
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// The first word of a reply that names the server (greeting, EHLO), bounded, skipping an
/// enhanced status code.
pub(super) fn first_word(reply: &Reply) -> Option<String> {
    let line = reply.lines.first()?;
    let word = line
        .split_ascii_whitespace()
        .find(|w| !is_enhanced_code(w))?;
    Some(word.chars().take(MAX_NAME).collect())
}

/// Appends `input`, a piece of the message, to `out` as it goes on the wire after `354`
/// (RFC 5321 §4.5.2): a `.` that begins a line is doubled.
///
/// Line endings are made CRLF on the way: every CR is dropped and every LF written as CRLF,
/// so CRLF stays CRLF, a bare LF becomes CRLF and a bare CR disappears (RFC 5321 §2.3.8
/// allows no other). The bytes sent therefore never contain a bare CR or LF, and the data can
/// never end early at a next hop that takes a bare line ending for one (SMTP smuggling).
/// The message our server stores is CRLF-only already, where this changes nothing but the
/// dots.
///
/// Usable in pieces: `at_line_start` carries the state from one piece to the next. Start with
/// `true`; finish with [`end_of_data`]. Cutting the message anywhere gives the same bytes.
pub fn dot_stuff(input: &[u8], at_line_start: &mut bool, out: &mut Vec<u8>) {
    out.reserve(input.len() + input.len() / 32 + 2);
    let mut rest = input;
    while let Some((&first, _)) = rest.split_first() {
        if *at_line_start && first == b'.' {
            out.push(b'.');
        }
        match memchr::memchr2(b'\r', b'\n', rest) {
            None => {
                out.extend_from_slice(rest);
                *at_line_start = false;
                return;
            }
            Some(at) => {
                let (text, tail) = rest.split_at(at);
                out.extend_from_slice(text);
                if !text.is_empty() {
                    *at_line_start = false;
                }
                let Some((&end, tail)) = tail.split_first() else {
                    return;
                };
                if end == b'\n' {
                    out.extend_from_slice(b"\r\n");
                    *at_line_start = true;
                }
                rest = tail;
            }
        }
    }
}

/// Appends the end of the data: CRLF when the message did not end with a line ending, then
/// `.` CRLF (RFC 5321 §4.1.1.4). `at_line_start` is the state [`dot_stuff`] left.
pub fn end_of_data(at_line_start: bool, out: &mut Vec<u8>) {
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}
