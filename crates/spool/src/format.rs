//! The on-disk formats of queue files and state sidecars (pure: bytes in, bytes out).
//!
//! Role: encode and strictly decode both formats; the spool adds paths and I/O.
//! Must not: do I/O, or accept a file that is not complete to the last byte: a torn or
//! padded file must fail to decode so recovery quarantines it.
//!
//! Queue file `queue/<id>` (version 1):
//! ```text
//! PORTCULLIS-SPOOL 1\n
//! id <queue-id>\n
//! received-at <unix-secs>\n
//! sender <value>\n            (empty value for the null sender)
//! rcpt <value>\n              (one line per recipient, in order; zero or more)
//! client-addr <value>\n
//! client-name <value>\n
//! helo <value>\n
//! protocol <value>\n
//! msgid <value>\n             (only when a Message-ID was seen)
//! data-len <n>\n
//! \n
//! <exactly n bytes of message data, verbatim>
//! END <queue-id> <n>\n
//! ```
//! Each header line is `key`, one space, value. Values are percent-encoded: every byte
//! below 0x21 (controls, space), `%` and 0x7f become `%XX` (upper-case hex), so no value
//! can contain a line end or be confused with the blank separator line; other bytes,
//! including UTF-8, are kept so the file stays readable. The reader requires the magic
//! line, every field exactly once (except `rcpt` and `msgid`), no unknown keys, the id
//! to match the file name, and the end record to match id and length with nothing after.
//!
//! State sidecar `queue/<id>.state` (version 1):
//! ```text
//! PORTCULLIS-STATE 1\n
//! attempts <u32>\n
//! next-attempt-at <unix-secs>\n
//! held <0|1>\n
//! done <one 0/1 per recipient, empty value if none>\n
//! last-error <value>\n        (only when set)
//! rcpt-error <index> <value>\n (zero or more: a recipient's last temporary failure;
//!                             index into the recipients, at most once each)
//! END <queue-id>\n
//! ```

use crate::id::QueueId;
use crate::message::{DeliveryState, Envelope};

pub(crate) const MAGIC: &[u8] = b"PORTCULLIS-SPOOL 1";
pub(crate) const STATE_MAGIC: &[u8] = b"PORTCULLIS-STATE 1";
const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn needs_escape(b: u8) -> bool {
    b < 0x21 || b == b'%' || b == 0x7f
}

/// Appends `value` percent-encoded.
pub(crate) fn encode_value(value: &str, out: &mut Vec<u8>) {
    for &b in value.as_bytes() {
        if needs_escape(b) {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        } else {
            out.push(b);
        }
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Reverses [`encode_value`]; rejects raw control bytes, bad escapes and non-UTF-8.
pub(crate) fn decode_value(raw: &[u8]) -> Result<String, String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        if b == b'%' {
            let hi = raw.get(i + 1).copied().and_then(hex_digit);
            let lo = raw.get(i + 2).copied().and_then(hex_digit);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err("bad percent escape in value".into());
            };
            out.push(hi << 4 | lo);
            i += 3;
        } else if needs_escape(b) {
            return Err(format!("unescaped byte 0x{b:02x} in value"));
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "value is not UTF-8".into())
}

fn push_field(out: &mut Vec<u8>, key: &str, value: &str) {
    out.extend_from_slice(key.as_bytes());
    out.push(b' ');
    encode_value(value, out);
    out.push(b'\n');
}

/// Everything before the data: magic, envelope fields, `data-len`, blank line.
pub(crate) fn message_header(env: &Envelope, data_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(MAGIC);
    out.push(b'\n');
    push_field(&mut out, "id", env.id.as_str());
    push_field(&mut out, "received-at", &env.received_at.to_string());
    push_field(&mut out, "sender", &env.sender);
    for rcpt in &env.recipients {
        push_field(&mut out, "rcpt", rcpt);
    }
    push_field(&mut out, "client-addr", &env.client_addr);
    push_field(&mut out, "client-name", &env.client_name);
    push_field(&mut out, "helo", &env.helo);
    push_field(&mut out, "protocol", &env.protocol);
    if let Some(msgid) = &env.msgid {
        push_field(&mut out, "msgid", msgid);
    }
    push_field(&mut out, "data-len", &data_len.to_string());
    out.push(b'\n');
    out
}

/// The end record that must close a queue file.
pub(crate) fn message_trailer(id: &QueueId, data_len: usize) -> Vec<u8> {
    format!("END {id} {data_len}\n").into_bytes()
}

/// Decodes a whole queue file, which must belong to `expected`. Returns the envelope
/// and the data (the buffer is reused for it). The error is the reason, for quarantine.
pub(crate) fn decode_message(
    mut bytes: Vec<u8>,
    expected: &QueueId,
) -> Result<(Envelope, Vec<u8>), String> {
    let header_end = find(&bytes, b"\n\n").ok_or(NO_BLANK_LINE)?;
    let (env, data_len) = decode_header(&bytes[..header_end], expected)?;
    let data_start = header_end + 2;
    let data_end = data_end(data_start, data_len, bytes.len())?;
    check_trailer(&bytes[data_end..], &message_trailer(&env.id, data_len))?;
    bytes.truncate(data_end);
    bytes.drain(..data_start);
    Ok((env, bytes))
}

/// Why a file has no header: it never reached the blank line.
pub(crate) const NO_BLANK_LINE: &str = "no blank line ending the header (torn?)";

/// Decodes the header of a queue file that must belong to `expected`: the bytes before
/// the blank line, without its two line ends. Returns the envelope and `data-len`.
pub(crate) fn decode_header(
    header: &[u8],
    expected: &QueueId,
) -> Result<(Envelope, usize), String> {
    let mut lines = header.split(|&b| b == b'\n');
    if lines.next() != Some(MAGIC) {
        return Err("missing magic line PORTCULLIS-SPOOL 1".into());
    }
    let mut fields = EnvelopeFields::default();
    for line in lines {
        let (key, raw) = split_field(line)?;
        fields.apply(key, raw)?;
    }
    let (env, data_len) = fields.finish()?;
    if env.id != *expected {
        return Err(format!("file holds id {} instead of {expected}", env.id));
    }
    Ok((env, data_len))
}

/// Where the data ends (and the end record starts) in a file of `file_len` bytes whose
/// data starts at `data_start`; an error if the file is too short to hold it.
pub(crate) fn data_end(
    data_start: usize,
    data_len: usize,
    file_len: usize,
) -> Result<usize, String> {
    data_start
        .checked_add(data_len)
        .filter(|&end| end <= file_len)
        .ok_or_else(|| "file shorter than data-len (torn)".into())
}

/// Checks what follows the data against the end record of `id` with `data_len` bytes.
/// `found` may be cut one byte past the record's length: that is enough to tell every case.
pub(crate) fn check_end_record(found: &[u8], id: &QueueId, data_len: usize) -> Result<(), String> {
    check_trailer(found, &message_trailer(id, data_len))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn split_field(line: &[u8]) -> Result<(&str, &[u8]), String> {
    let space = line
        .iter()
        .position(|&b| b == b' ')
        .ok_or("header line without a space")?;
    let key = std::str::from_utf8(&line[..space]).map_err(|_| "header key is not UTF-8")?;
    Ok((key, &line[space + 1..]))
}

fn check_trailer(found: &[u8], want: &[u8]) -> Result<(), String> {
    if found == want {
        Ok(())
    } else if found.starts_with(want) {
        Err("bytes after the end record".into())
    } else if want.starts_with(found) {
        Err("missing or incomplete end record (torn)".into())
    } else {
        Err("end record does not match id and length".into())
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T, key: &str) -> Result<(), String> {
    if slot.replace(value).is_some() {
        return Err(format!("duplicate field {key}"));
    }
    Ok(())
}

fn parse_num<T: std::str::FromStr>(raw: &[u8], key: &str) -> Result<T, String> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("field {key} is not a valid number"))
}

fn require<T>(slot: Option<T>, key: &str) -> Result<T, String> {
    slot.ok_or_else(|| format!("missing field {key}"))
}

/// Envelope fields collected while reading the header.
#[derive(Default)]
struct EnvelopeFields {
    id: Option<QueueId>,
    received_at: Option<i64>,
    sender: Option<String>,
    recipients: Vec<String>,
    client_addr: Option<String>,
    client_name: Option<String>,
    helo: Option<String>,
    protocol: Option<String>,
    msgid: Option<String>,
    data_len: Option<usize>,
}

impl EnvelopeFields {
    fn apply(&mut self, key: &str, raw: &[u8]) -> Result<(), String> {
        match key {
            "id" => set_once(&mut self.id, parse_id(raw)?, key),
            "received-at" => set_once(&mut self.received_at, parse_num(raw, key)?, key),
            "sender" => set_once(&mut self.sender, decode_value(raw)?, key),
            "rcpt" => {
                self.recipients.push(decode_value(raw)?);
                Ok(())
            }
            "client-addr" => set_once(&mut self.client_addr, decode_value(raw)?, key),
            "client-name" => set_once(&mut self.client_name, decode_value(raw)?, key),
            "helo" => set_once(&mut self.helo, decode_value(raw)?, key),
            "protocol" => set_once(&mut self.protocol, decode_value(raw)?, key),
            "msgid" => set_once(&mut self.msgid, decode_value(raw)?, key),
            "data-len" => set_once(&mut self.data_len, parse_num(raw, key)?, key),
            _ => Err(format!("unknown field {key:?}")),
        }
    }

    fn finish(self) -> Result<(Envelope, usize), String> {
        let env = Envelope {
            id: require(self.id, "id")?,
            received_at: require(self.received_at, "received-at")?,
            sender: require(self.sender, "sender")?,
            recipients: self.recipients,
            client_addr: require(self.client_addr, "client-addr")?,
            client_name: require(self.client_name, "client-name")?,
            helo: require(self.helo, "helo")?,
            protocol: require(self.protocol, "protocol")?,
            msgid: self.msgid,
        };
        Ok((env, require(self.data_len, "data-len")?))
    }
}

fn parse_id(raw: &[u8]) -> Result<QueueId, String> {
    std::str::from_utf8(raw)
        .map_err(|_| "id is not UTF-8".to_string())?
        .parse()
        .map_err(|e: crate::id::ParseQueueIdError| e.to_string())
}

/// Encodes a state sidecar for message `id`.
pub(crate) fn encode_state(id: &QueueId, state: &DeliveryState) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(STATE_MAGIC);
    out.push(b'\n');
    push_field(&mut out, "attempts", &state.attempts.to_string());
    push_field(
        &mut out,
        "next-attempt-at",
        &state.next_attempt_at.to_string(),
    );
    push_field(&mut out, "held", if state.held { "1" } else { "0" });
    let done: String = state
        .done
        .iter()
        .map(|&d| if d { '1' } else { '0' })
        .collect();
    push_field(&mut out, "done", &done);
    if let Some(err) = &state.last_error {
        push_field(&mut out, "last-error", err);
    }
    for (i, err) in state.rcpt_errors.iter().enumerate() {
        if let Some(err) = err {
            out.extend_from_slice(format!("rcpt-error {i} ").as_bytes());
            encode_value(err, &mut out);
            out.push(b'\n');
        }
    }
    out.extend_from_slice(format!("END {id}\n").as_bytes());
    out
}

/// Decodes a state sidecar of message `id` with `recipients` recipients.
pub(crate) fn decode_state(
    bytes: &[u8],
    id: &QueueId,
    recipients: usize,
) -> Result<DeliveryState, String> {
    let body = bytes.strip_suffix(format!("END {id}\n").as_bytes());
    let body = body.ok_or("missing, torn or foreign end record")?;
    let mut lines = body.split(|&b| b == b'\n');
    if lines.next() != Some(STATE_MAGIC) {
        return Err("missing magic line PORTCULLIS-STATE 1".into());
    }
    let mut fields = StateFields::default();
    // The body ends with '\n', so the split yields one empty last piece; skip it.
    for line in lines.filter(|l| !l.is_empty()) {
        let (key, raw) = split_field(line)?;
        fields.apply(key, raw)?;
    }
    let state = fields.finish(recipients)?;
    if !state.done.is_empty() && state.done.len() != recipients {
        return Err(format!(
            "done has {} entries for {recipients} recipients",
            state.done.len()
        ));
    }
    Ok(state)
}

#[derive(Default)]
struct StateFields {
    attempts: Option<u32>,
    next_attempt_at: Option<i64>,
    held: Option<bool>,
    done: Option<Vec<bool>>,
    last_error: Option<String>,
    rcpt_errors: Vec<(usize, String)>,
}

impl StateFields {
    fn apply(&mut self, key: &str, raw: &[u8]) -> Result<(), String> {
        match key {
            "attempts" => set_once(&mut self.attempts, parse_num(raw, key)?, key),
            "next-attempt-at" => set_once(&mut self.next_attempt_at, parse_num(raw, key)?, key),
            "held" => set_once(&mut self.held, parse_flag(raw)?, key),
            "done" => set_once(
                &mut self.done,
                raw.iter()
                    .map(|&b| parse_flag(&[b]))
                    .collect::<Result<_, _>>()?,
                key,
            ),
            "last-error" => set_once(&mut self.last_error, decode_value(raw)?, key),
            "rcpt-error" => {
                let (index, value) = split_field(raw)?;
                let index: usize = parse_num(index.as_bytes(), key)?;
                if self.rcpt_errors.iter().any(|(i, _)| *i == index) {
                    return Err(format!("duplicate rcpt-error {index}"));
                }
                self.rcpt_errors.push((index, decode_value(value)?));
                Ok(())
            }
            _ => Err(format!("unknown field {key:?}")),
        }
    }

    fn finish(self, recipients: usize) -> Result<DeliveryState, String> {
        let mut rcpt_errors = Vec::new();
        if !self.rcpt_errors.is_empty() {
            rcpt_errors = vec![None; recipients];
            for (index, err) in self.rcpt_errors {
                let slot = rcpt_errors
                    .get_mut(index)
                    .ok_or_else(|| format!("rcpt-error {index} for {recipients} recipients"))?;
                *slot = Some(err);
            }
        }
        Ok(DeliveryState {
            attempts: require(self.attempts, "attempts")?,
            next_attempt_at: require(self.next_attempt_at, "next-attempt-at")?,
            done: require(self.done, "done")?,
            last_error: self.last_error,
            rcpt_errors,
            held: require(self.held, "held")?,
        })
    }
}

fn parse_flag(raw: &[u8]) -> Result<bool, String> {
    match raw {
        b"0" => Ok(false),
        b"1" => Ok(true),
        _ => Err("flag is not 0 or 1".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id() -> QueueId {
        "6ALBkA0000234567".parse().unwrap()
    }

    fn envelope() -> Envelope {
        Envelope {
            id: id(),
            received_at: 1_795_261_570,
            sender: String::new(),
            recipients: vec!["a@example.org".into(), "b c@example.org".into()],
            client_addr: "::1".into(),
            client_name: String::new(),
            helo: "x%41\r\nrcpt evil@example.org".into(),
            protocol: "ESMTP".into(),
            msgid: Some("<1@x>".into()),
        }
    }

    fn encode(env: &Envelope, data: &[u8]) -> Vec<u8> {
        let mut out = message_header(env, data.len());
        out.extend_from_slice(data);
        out.extend(message_trailer(&env.id, data.len()));
        out
    }

    #[test]
    fn message_layout_is_as_documented() {
        let mut env = envelope();
        env.helo = "h x".into();
        let text = String::from_utf8(encode(&env, b"Hi\r\n")).unwrap();
        let want = "PORTCULLIS-SPOOL 1\nid 6ALBkA0000234567\nreceived-at 1795261570\nsender \n\
            rcpt a@example.org\nrcpt b%20c@example.org\nclient-addr ::1\nclient-name \n\
            helo h%20x\nprotocol ESMTP\nmsgid <1@x>\ndata-len 4\n\nHi\r\nEND 6ALBkA0000234567 4\n";
        assert_eq!(text, want);
    }

    #[test]
    fn injected_lines_stay_in_their_value() {
        let env = envelope();
        let bytes = encode(&env, b"x");
        assert_eq!(decode_message(bytes, &id()).unwrap(), (env, b"x".to_vec()));
    }

    #[test]
    fn decode_rejects_bad_files() {
        let good = encode(&envelope(), b"data");
        let text = String::from_utf8(good.clone()).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (text.replace("SPOOL 1", "SPOOL 2").into(), "magic"),
            (text.replace("helo ", "hello ").into(), "unknown field"),
            (
                text.replace("protocol ESMTP\n", "").into(),
                "missing field protocol",
            ),
            (
                text.replace("sender \n", "sender \nsender \n").into(),
                "duplicate",
            ),
            (
                text.replace("data-len 4", "data-len 5").into(),
                "end record",
            ),
            (text.replace("data-len 4", "data-len 99").into(), "shorter"),
            (text.replace("rcpt a@", "rcpt a%4@").into(), "percent"),
            (
                text.replace("END 6ALBkA0000234567", "END 6ALBkA0000234568")
                    .into(),
                "end record",
            ),
            ([good.as_slice(), b"x"].concat(), "after the end"),
        ];
        for (bytes, want) in cases {
            let err = decode_message(bytes, &id()).unwrap_err();
            assert!(err.contains(want), "{err:?} lacks {want:?}");
        }
        let other: QueueId = "6ALBkA0000234568".parse().unwrap();
        assert!(
            decode_message(good, &other)
                .unwrap_err()
                .contains("instead of")
        );
    }

    #[test]
    fn state_round_trip_and_rejections() {
        let state = DeliveryState {
            attempts: 3,
            next_attempt_at: -5,
            done: vec![true, false],
            last_error: Some("451 4.4.1 try\r\nlater %".into()),
            rcpt_errors: vec![None, Some("451 4.3.0 busy\r\nnow".into())],
            held: true,
        };
        let bytes = encode_state(&id(), &state);
        assert_eq!(decode_state(&bytes, &id(), 2).unwrap(), state);
        let text = String::from_utf8(bytes.clone()).unwrap();
        for (bad, why) in [
            ("rcpt-error 1 ", "rcpt-error 2 "),
            ("rcpt-error 1 ", "rcpt-error x "),
            ("rcpt-error 1 ", "rcpt-error 1 a\nrcpt-error 1 "),
        ] {
            let edited = text.replace(bad, why);
            assert!(decode_state(edited.as_bytes(), &id(), 2).is_err(), "{why}");
        }
        assert!(
            decode_state(&bytes, &id(), 3).is_err(),
            "done length mismatch"
        );
        let other: QueueId = "6ALBkA0000234568".parse().unwrap();
        assert!(decode_state(&bytes, &other, 2).is_err(), "foreign sidecar");
        for cut in 0..bytes.len() {
            assert!(
                decode_state(&bytes[..cut], &id(), 2).is_err(),
                "cut at {cut}"
            );
        }
        let empty = encode_state(&id(), &DeliveryState::default());
        assert_eq!(
            decode_state(&empty, &id(), 7).unwrap(),
            DeliveryState::default()
        );
    }

    proptest! {
        #[test]
        fn value_encoding_round_trips(s in any::<String>()) {
            let mut out = Vec::new();
            encode_value(&s, &mut out);
            prop_assert!(!out.iter().any(|&b| b < 0x21 || b == 0x7f));
            prop_assert_eq!(decode_value(&out).unwrap(), s);
        }

        #[test]
        fn envelope_round_trips(
            sender in any::<String>(),
            recipients in proptest::collection::vec(any::<String>(), 0..6),
            helo in any::<String>(),
            msgid in proptest::option::of(any::<String>()),
            data in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let env = Envelope { sender, recipients, helo, msgid, ..envelope() };
            let decoded = decode_message(encode(&env, &data), &id()).unwrap();
            prop_assert_eq!(decoded, (env, data));
        }
    }
}
