//! Builds the test messages the throughput scenario sends: realistic headers, a
//! body of 76-character lines, CRLF line ends, dot-stuffed, ending `\r\n.\r\n`.
//!
//! Pure functions only: it must not read the clock or do I/O (time is an argument).

/// Text the body lines are cut from (no '.', so only the forced lines start with one).
const TEXT: &[u8] = b"The quick brown fox jumps over the lazy dog while 0123456789 mail flows on ";
/// Body line length before CRLF.
const LINE: usize = 76;
/// Every this-many body lines, one starts with '.' to exercise dot-stuffing.
const DOT_EVERY: usize = 16;
/// Bound on body lines (about 76 MB), whatever `size` says.
const MAX_LINES: usize = 1_000_000;

/// Appends one line, dot-stuffed (RFC 5321 §4.5.2), with CRLF.
fn push_line(out: &mut Vec<u8>, line: &[u8]) {
    if line.first() == Some(&b'.') {
        out.push(b'.');
    }
    out.extend_from_slice(line);
    out.extend_from_slice(b"\r\n");
}

/// The whole DATA payload, about `size` bytes on the wire including the final `.\r\n`.
pub(crate) fn build_message(
    size: usize,
    from: &str,
    to: &str,
    message_id: &str,
    unix_secs: u64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 128);
    let headers = [
        format!("From: Portcullis Bench <{from}>"),
        format!("To: <{to}>"),
        format!("Subject: portcullis bench message {message_id}"),
        format!("Date: {}", rfc5322_date(unix_secs)),
        format!("Message-ID: <{message_id}>"),
        "MIME-Version: 1.0".to_string(),
        "Content-Type: text/plain; charset=us-ascii".to_string(),
        String::new(),
    ];
    for h in &headers {
        push_line(&mut out, h.as_bytes());
    }
    let mut line = Vec::with_capacity(LINE);
    for i in 0..MAX_LINES {
        // room left for this line's text, keeping 3 bytes for ".\r\n"
        let room = size.saturating_sub(out.len() + 2 + 3 + 1);
        if room == 0 && i > 0 {
            break;
        }
        line.clear();
        if i % DOT_EVERY == DOT_EVERY - 1 {
            line.push(b'.');
        }
        let rest = LINE.min(room.max(8)) - line.len();
        line.extend(TEXT.iter().cycle().skip(i % TEXT.len()).take(rest));
        push_line(&mut out, &line);
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// RFC 5322 date in UTC, e.g. `Thu, 01 Jan 1970 00:00:00 +0000`.
pub(crate) fn rfc5322_date(unix_secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    // civil-from-days (H. Hinnant), unsigned because the epoch is the floor here
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines without their CRLF (the last one, ".", included).
    fn lines(msg: &[u8]) -> Vec<&[u8]> {
        let text = msg.strip_suffix(b"\r\n").unwrap();
        text.split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .collect()
    }

    #[test]
    fn ends_with_dot_and_is_stuffed() {
        let msg = build_message(4096, "a@example.org", "b@localhost", "1.2@bench", 0);
        assert!(msg.ends_with(b"\r\n.\r\n"));
        let all = lines(&msg);
        let (last, rest) = all.split_last().unwrap();
        assert_eq!(*last, b".");
        let dotted: Vec<_> = rest.iter().filter(|l| l.first() == Some(&b'.')).collect();
        assert!(!dotted.is_empty(), "expected some stuffed lines");
        assert!(dotted.iter().all(|l| l.starts_with(b"..")));
        assert!(rest.iter().all(|l| l.len() <= 78));
        assert!(
            !msg.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'),
            "bare LF"
        );
        assert!(
            rest.iter()
                .any(|l| l.starts_with(b"Message-ID: <1.2@bench>"))
        );
    }

    #[test]
    fn about_the_right_size() {
        for size in [64, 1024, 4096, 100_000] {
            let msg = build_message(size, "a@example.org", "b@localhost", "x@bench", 0);
            let n = msg.len();
            assert!(
                n + 80 >= size && n <= size.max(400) + 80,
                "size {size} gave {n}"
            );
        }
    }

    #[test]
    fn formats_dates() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_700_000_000),
            "Tue, 14 Nov 2023 22:13:20 +0000"
        );
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    }
}
