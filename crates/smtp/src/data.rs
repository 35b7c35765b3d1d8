//! DATA framing: end-of-data detection, dot-unstuffing and the message limits.
//!
//! Role: consume the bytes after `354` until `CRLF.CRLF`, store the message (unstuffed, with
//! CRLF line endings), and note whatever makes it unacceptable: over the size limit, a text
//! line over 1000 octets (RFC 5321 §4.5.3.1.6), or a bare LF / bare CR.
//!
//! SMTP smuggling (CVE-2023-51765 class): only `CR LF . CR LF` ends the data. `LF . LF`,
//! `CR LF . LF`, `LF . CR LF` and the bare-CR variants never do; a bare LF or CR is either a
//! reason to reject the message ([`BareLineEndings::Reject`], the default) or rewritten to
//! CRLF ([`BareLineEndings::Normalize`]). Dot-unstuffing applies only after a real CRLF.
//!
//! Must not: reply, or keep more than `max_bytes` of message in memory. Once the message is
//! known to be rejected, bytes are only counted, not stored.

/// What to do with a bare LF or bare CR inside message data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BareLineEndings {
    /// Reject the message with `550 5.6.0` once the data ends.
    Reject,
    /// Store each bare LF or CR as CRLF and accept the message.
    Normalize,
}

/// Where the receiver is within the current line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Just after CRLF (or right after the DATA command): a `.` here is special.
    LineStart,
    /// Inside a line.
    Mid,
    /// A CR was seen and not yet stored; the next byte decides whether it was a line end.
    Cr,
    /// The line began with `.`.
    Dot,
    /// The line began with `.` then CR: LF now ends the data.
    DotCr,
}

/// Why a completed message cannot be accepted, in the order they are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataProblem {
    /// More than the maximum message size.
    TooBig,
    /// A bare LF or bare CR, with [`BareLineEndings::Reject`].
    BareLineEnding,
    /// A text line longer than 1000 octets including CRLF.
    LineTooLong,
}

/// Receives one message's data.
#[derive(Debug)]
pub struct DataReceiver {
    state: State,
    body: Vec<u8>,
    max_bytes: u64,
    /// Bytes of message (after unstuffing) seen so far, stored or not.
    size: u64,
    /// Length of the current line so far, without its line ending.
    line_len: usize,
    bare: BareLineEndings,
    saw_bare: bool,
    long_line: bool,
}

impl DataReceiver {
    /// A receiver for a message of at most `max_bytes`.
    pub fn new(max_bytes: u64, bare: BareLineEndings) -> Self {
        Self {
            state: State::LineStart,
            body: Vec::new(),
            max_bytes,
            size: 0,
            line_len: 0,
            bare,
            saw_bare: false,
            long_line: false,
        }
    }

    /// Consumes bytes. Returns `Some(n)` when the end of data was found after `n` bytes of
    /// `input` (the rest belongs to the next command), `None` when all of `input` was
    /// consumed and more data is needed.
    pub fn ingest(&mut self, input: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Mid {
                // Fast path: copy the run of ordinary bytes up to the next CR or LF.
                let run = memchr::memchr2(b'\r', b'\n', &input[i..]).unwrap_or(input.len() - i);
                self.push(&input[i..i + run]);
                self.line_len += run;
                i += run;
                if i == input.len() {
                    break;
                }
            }
            let b = input[i];
            i += 1;
            if self.step(b) {
                return Some(i);
            }
        }
        None
    }

    /// One byte through the state machine. Returns true at the end of data.
    fn step(&mut self, b: u8) -> bool {
        match (self.state, b) {
            (State::LineStart, b'.') => self.state = State::Dot,
            (State::LineStart | State::Mid, b'\r') => self.state = State::Cr,
            (State::LineStart | State::Mid, b'\n') => self.bare_line_ending(),
            (State::LineStart | State::Mid, _) => self.ordinary(b),
            (State::Cr, b'\n') => {
                self.end_line();
                self.push(b"\r\n");
                self.state = State::LineStart;
            }
            (State::Cr, b'\r') => {
                // The first CR was bare; the second may still start a CRLF.
                self.bare_line_ending();
                self.state = State::Cr;
            }
            (State::Cr, _) => {
                self.bare_line_ending();
                self.ordinary(b);
            }
            (State::Dot, b'\r') => self.state = State::DotCr,
            (State::Dot, b'\n') => {
                // `CRLF . LF`: a smuggling attempt or a broken client. Never the end.
                self.ordinary(b'.');
                self.bare_line_ending();
            }
            // RFC 5321 §4.5.2: a leading dot is removed; `..` stores one dot.
            (State::Dot, _) => self.ordinary(b),
            (State::DotCr, b'\n') => return true,
            (State::DotCr, _) => {
                // `CRLF . CR x`: the CR was bare.
                self.ordinary(b'.');
                self.bare_line_ending();
                self.state = State::Mid;
                return self.step(b);
            }
        }
        false
    }

    fn ordinary(&mut self, b: u8) {
        self.push(&[b]);
        self.line_len += 1;
        self.state = State::Mid;
    }

    fn bare_line_ending(&mut self) {
        self.saw_bare = true;
        self.end_line();
        if self.bare == BareLineEndings::Normalize {
            self.push(b"\r\n");
        }
        // Not LineStart: only a real CRLF makes a following dot special.
        self.state = State::Mid;
    }

    fn end_line(&mut self) {
        // RFC 5321 §4.5.3.1.6: 1000 octets including CRLF.
        if self.line_len > crate::MAX_TEXT_LINE - 2 {
            self.long_line = true;
        }
        self.line_len = 0;
    }

    fn push(&mut self, bytes: &[u8]) {
        self.size += bytes.len() as u64;
        if self.size > self.max_bytes || self.rejected() {
            // Count, don't store: the message will be refused; free what we held.
            if !self.body.is_empty() {
                self.body = Vec::new();
            }
            return;
        }
        self.body.extend_from_slice(bytes);
    }

    fn rejected(&self) -> bool {
        self.long_line || (self.saw_bare && self.bare == BareLineEndings::Reject)
    }

    /// Bytes of message received so far (after unstuffing), stored or not.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes held in memory now.
    pub fn stored(&self) -> usize {
        self.body.len()
    }

    /// Ends the message: the data, or why it must be refused.
    pub fn finish(mut self) -> Result<Vec<u8>, DataProblem> {
        if self.line_len > 0 {
            self.end_line();
        }
        if self.size > self.max_bytes {
            Err(DataProblem::TooBig)
        } else if self.saw_bare && self.bare == BareLineEndings::Reject {
            Err(DataProblem::BareLineEnding)
        } else if self.long_line {
            Err(DataProblem::LineTooLong)
        } else {
            Ok(self.body)
        }
    }
}

/// The Message-ID header's value, for the `msgid=` log field. Looks only at the header
/// section (up to the first empty line), at most 64 KiB in; a folded value is followed onto
/// its next line; the result is at most 200 characters.
pub fn message_id(data: &[u8]) -> Option<String> {
    let limit = data.len().min(64 * 1024);
    let headers_end = memchr::memmem::find(&data[..limit], b"\r\n\r\n").map_or(limit, |p| p + 2);
    let mut lines = data[..headers_end].split(|&b| b == b'\n');
    while let Some(line) = lines.next() {
        if line.len() > 11 && line[..11].eq_ignore_ascii_case(b"message-id:") {
            let mut value = String::from_utf8_lossy(&line[11..]).trim().to_owned();
            if value.is_empty() {
                value = lines
                    .next()
                    .map(|l| String::from_utf8_lossy(l).trim().to_owned())?;
            }
            return (!value.is_empty()).then(|| value.chars().take(200).collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(input: &[u8], bare: BareLineEndings) -> (Option<usize>, Result<Vec<u8>, DataProblem>) {
        let mut r = DataReceiver::new(1 << 20, bare);
        let end = r.ingest(input);
        (end, r.finish())
    }

    #[test]
    fn ends_only_on_crlf_dot_crlf() {
        let (end, body) = run(
            b"Subject: t\r\n\r\nhello\r\n.\r\nQUIT\r\n",
            BareLineEndings::Reject,
        );
        assert_eq!(end, Some(24));
        assert_eq!(body.unwrap(), b"Subject: t\r\n\r\nhello\r\n");
        // An empty message: the dot right after the DATA line.
        assert_eq!(run(b".\r\n", BareLineEndings::Reject).0, Some(3));
    }

    #[test]
    fn smuggling_sequences_never_end_data() {
        for seq in [
            &b"a\n.\nMAIL FROM:<x@y>\n"[..],
            b"a\r\n.\nMAIL FROM:<x@y>\r\n",
            b"a\n.\r\nMAIL FROM:<x@y>\r\n",
            b"a\r.\rMAIL FROM:<x@y>\r\n",
            b"a\r\n.\rMAIL FROM:<x@y>\r\n",
            b"a\r.\r\nMAIL FROM:<x@y>\r\n",
        ] {
            for mode in [BareLineEndings::Reject, BareLineEndings::Normalize] {
                let (end, _) = run(seq, mode);
                assert_eq!(
                    end,
                    None,
                    "{:?} ended data in {mode:?}",
                    String::from_utf8_lossy(seq)
                );
            }
        }
    }

    #[test]
    fn bare_line_endings_rejected_or_normalized() {
        let input = b"a\nb\rc\r\n.\r\n";
        assert_eq!(
            run(input, BareLineEndings::Reject).1,
            Err(DataProblem::BareLineEnding)
        );
        assert_eq!(
            run(input, BareLineEndings::Normalize).1.unwrap(),
            b"a\r\nb\r\nc\r\n"
        );
    }

    #[test]
    fn dot_unstuffing() {
        let (_, body) = run(b"..leading\r\n...\r\n.x\r\n.\r\n", BareLineEndings::Reject);
        assert_eq!(body.unwrap(), b".leading\r\n..\r\nx\r\n");
    }

    #[test]
    fn size_limit_counts_but_does_not_store() {
        let mut r = DataReceiver::new(10, BareLineEndings::Reject);
        assert_eq!(r.ingest(&[b'x'; 5000]), None);
        assert!(r.stored() <= 10, "stored {}", r.stored());
        assert_eq!(r.ingest(b"\r\n.\r\n"), Some(5));
        assert_eq!(r.finish(), Err(DataProblem::TooBig));
    }

    #[test]
    fn text_line_limit_is_1000_with_crlf() {
        let ok = [vec![b'a'; 998], b"\r\n.\r\n".to_vec()].concat();
        assert!(run(&ok, BareLineEndings::Reject).1.is_ok());
        let long = [vec![b'a'; 999], b"\r\n.\r\n".to_vec()].concat();
        assert_eq!(
            run(&long, BareLineEndings::Reject).1,
            Err(DataProblem::LineTooLong)
        );
    }

    #[test]
    fn finds_message_id() {
        assert_eq!(
            message_id(b"Subject: x\r\nMessage-ID: <a@b>\r\n\r\nbody"),
            Some("<a@b>".into())
        );
        assert_eq!(
            message_id(b"message-id:\r\n <folded@x>\r\n\r\n"),
            Some("<folded@x>".into())
        );
        assert_eq!(
            message_id(b"Subject: x\r\n\r\nMessage-ID: <in-body@x>\r\n"),
            None
        );
        assert_eq!(message_id(b""), None);
    }

    #[test]
    fn nul_bytes_are_data() {
        let (end, body) = run(b"a\0b\r\n.\r\n", BareLineEndings::Reject);
        assert_eq!(end, Some(8));
        assert_eq!(body.unwrap(), b"a\0b\r\n");
    }

    proptest! {
        /// Any split of the input into chunks gives the same result as one piece.
        #[test]
        fn chunking_does_not_matter(data in proptest::collection::vec(prop_oneof![
            Just(b'\r'), Just(b'\n'), Just(b'.'), Just(b'a')], 0..200), cut in 0usize..200) {
            let mut input = data;
            input.extend_from_slice(b"\r\n.\r\n");
            let whole = {
                let mut r = DataReceiver::new(1 << 20, BareLineEndings::Normalize);
                let end = r.ingest(&input);
                (end, r.finish())
            };
            let cut = cut.min(input.len());
            let mut r = DataReceiver::new(1 << 20, BareLineEndings::Normalize);
            let split = match r.ingest(&input[..cut]) {
                Some(n) => (Some(n), r.finish()),
                None => {
                    let end = r.ingest(&input[cut..]).map(|n| n + cut);
                    (end, r.finish())
                }
            };
            prop_assert_eq!(whole, split);
        }

        /// Whatever the bytes, stored data never contains a bare LF or CR in normalize mode.
        #[test]
        fn normalized_data_has_only_crlf(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut r = DataReceiver::new(1 << 20, BareLineEndings::Normalize);
            if r.ingest(&data).is_none() {
                let _ = r.ingest(b"\r\n.\r\n");
            }
            if let Ok(body) = r.finish() {
                for (i, &b) in body.iter().enumerate() {
                    if b == b'\n' { prop_assert!(i > 0 && body[i - 1] == b'\r'); }
                    if b == b'\r' { prop_assert!(body.get(i + 1) == Some(&b'\n')); }
                }
            }
        }
    }
}
