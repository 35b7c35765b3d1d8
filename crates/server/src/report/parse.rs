//! Parsing one matching log line of the greet-pause report into a [`Parsed`] value.
//!
//! Role: the scanner ([`super::scan`]) finds a line by one of four phrases ([`Kind`]) and
//! hands it here with the phrase's offset; this module reads the numbers and the queue id.
//! Four shapes are known:
//! - Sendmail 8.14+ and ours: `<qid>: rejecting commands from <relay> due to pre-greeting
//!   traffic after N seconds` (ours with `greet_pause.action = ignore`: `<qid>: pre-greeting
//!   traffic from <relay> after N seconds ignored (...)`); Sendmail before 8.14 stops after
//!   `pre-greeting traffic`, without a delay.
//! - ours, syslog format, right after the line above: `<qid>: greet_pause_pregreet detail:
//!   class="..", sample="..", waited_ms="1834", ...` (telemetry.rs `detail_record`).
//! - ours, every session that reached the dialogue: `<qid>: session closed: relay=<relay>,
//!   pause=1000ms, first_input=1004ms|none, duration=2503ms, messages=1`.
//! - the same texts as the `"message"` of our JSON format, whose `"qid"` and `"waited_ms"`
//!   are fields of the same object.
//!
//! The syslog prefix before the message is not read (rsyslog, BSD syslog and journalctl
//! prefixes all work): the queue id is the word in front of the message.
//!
//! Must not: allocate, or trust a number: every number is bounded ([`MAX_DELAY_MS`]) or only
//! compared. A line that has the phrase but not the shape is an error (a bad line), never a
//! panic.

use std::sync::LazyLock;

use memchr::memmem::{Finder, FinderRev};

/// Longest delay, pause or wait accepted (one hour). Sendmail and Portcullis clamp the pause
/// to 300 s, so anything longer is a corrupt line; the bound also bounds the report's maps.
pub const MAX_DELAY_MS: u64 = 3_600_000;

/// [`MAX_DELAY_MS`] in whole seconds.
pub const MAX_DELAY_SECS: u64 = MAX_DELAY_MS / 1000;

/// Longest queue id kept for joining lines (ours are 16 characters, Sendmail's 14).
const MAX_QID: usize = 32;

/// Searchers built once: building one per line cost more than the search (profiled).
static REJECTING: LazyLock<FinderRev<'static>> =
    LazyLock::new(|| FinderRev::new(b"rejecting commands from "));
static AFTER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b" after "));
static WAITED_DETAIL: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"waited_ms=\""));
static PAUSE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b", pause="));
static MESSAGE_JSON: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"message\":\""));
static QID_JSON: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"qid\":\""));
static WAITED_JSON: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b",\"waited_ms\":\""));

/// Which phrase found the line (the scanner's needles, in this order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `pre-greeting traffic`
    Pregreet,
    /// `greet_pause_pregreet detail: `
    Detail,
    /// `session closed: relay=`
    Session,
    /// ` more rejections not logged` (a rejection summary)
    Summary,
}

impl Kind {
    /// Every kind, in the scanner's order.
    pub const ALL: [Self; 4] = [Self::Pregreet, Self::Detail, Self::Session, Self::Summary];

    /// The phrase that finds a line of this kind.
    pub fn needle(self) -> &'static [u8] {
        match self {
            Self::Pregreet => b"pre-greeting traffic",
            Self::Detail => b"greet_pause_pregreet detail: ",
            Self::Session => b"session closed: relay=",
            Self::Summary => b" more rejections not logged",
        }
    }
}

/// A parsed line; `qid` borrows from the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// An early talker: `pre-greeting traffic ... after N seconds`.
    Pregreet {
        qid: Option<&'a [u8]>,
        seconds: u64,
        /// Exact milliseconds when the line itself carries them (our JSON format).
        waited_ms: Option<u64>,
    },
    /// Sendmail before 8.14: `pre-greeting traffic` without a delay.
    Untimed,
    /// Our syslog detail line: the exact wait of the early talker `qid`.
    Detail { qid: &'a [u8], waited_ms: u64 },
    /// Our end-of-session line.
    Session(Session<'a>),
    /// Our rejection summary for `greet_pause`: early talkers whose lines (pre-greeting,
    /// detail and session) were held back, counted but not timed.
    HeldBack(u64),
    /// A rejection summary of another defence (nothing for this report).
    OtherSummary,
}

/// The numbers of a `session closed:` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session<'a> {
    pub qid: Option<&'a [u8]>,
    /// The greeting pause that applied, ms (0 = not paused).
    pub pause_ms: u64,
    /// From connect to the client's first byte, ms; None when it sent nothing.
    pub first_input_ms: Option<u64>,
    /// From connect to close, ms.
    pub duration_ms: u64,
    /// Messages accepted.
    pub messages: u64,
}

impl Session<'_> {
    /// Talked before the greeting (it also has a pre-greeting line).
    pub fn early_talker(&self) -> bool {
        self.pause_ms > 0 && self.first_input_ms.is_some_and(|t| t < self.pause_ms)
    }
}

/// Why a line with the phrase could not be read.
pub type Bad = &'static str;

/// Parses `line` (without its newline), found by `kind` at offset `at`.
pub fn parse(kind: Kind, line: &[u8], at: usize) -> Result<Parsed<'_>, Bad> {
    let (head, rest) = line.split_at(at.min(line.len()));
    let rest = rest.get(kind.needle().len()..).ok_or("truncated line")?;
    match kind {
        Kind::Pregreet => pregreet(line, head, rest),
        Kind::Detail => detail(head, rest),
        Kind::Session => session(line, head, rest).map(Parsed::Session),
        Kind::Summary => summary(head),
    }
}

/// `greet_pause: N more rejections not logged in the last ...`: the text before the phrase
/// ends with `<defence>: <N>`.
fn summary(head: &[u8]) -> Result<Parsed<'_>, Bad> {
    let digits = head.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    let (before, n) = head.split_at(head.len() - digits);
    let n: u64 = std::str::from_utf8(n)
        .ok()
        .and_then(|n| n.parse().ok())
        .ok_or("summary without a count")?;
    if before.ends_with(b" greet_pause: ") || before.ends_with(b"\"greet_pause: ") {
        Ok(Parsed::HeldBack(n))
    } else if before.ends_with(b": ") {
        Ok(Parsed::OtherSummary)
    } else {
        Err("summary without a defence")
    }
}

fn pregreet<'a>(line: &'a [u8], head: &'a [u8], rest: &'a [u8]) -> Result<Parsed<'a>, Bad> {
    let json = is_json(head);
    let (seconds, start) = if let Some(after) = rest.strip_prefix(b" after ") {
        // Sendmail 8.14+ and ours: `rejecting commands from <relay> due to ...`.
        let start = REJECTING.rfind(head);
        (seconds_then_word(after)?, start)
    } else if let Some(from) = rest.strip_prefix(b" from ") {
        // Ours with `action = ignore`: the message starts with the phrase.
        let after = AFTER.find(from).ok_or("no \"after N seconds\"")?;
        (seconds_then_word(&from[after + 7..])?, Some(head.len()))
    } else if untimed_end(rest) {
        return Ok(Parsed::Untimed);
    } else {
        return Err("unknown pre-greeting wording");
    };
    let qid = if json {
        json_field(line, &QID_JSON)
    } else {
        start.and_then(|s| qid_before(&head[..s]))
    };
    let waited_ms = if json {
        json_field(line, &WAITED_JSON)
            .map(|v| bounded_number(v).ok_or("bad waited_ms"))
            .transpose()?
    } else {
        None
    };
    Ok(Parsed::Pregreet {
        qid,
        seconds,
        waited_ms,
    })
}

/// `N seconds...`: the delay, bounded.
fn seconds_then_word(s: &[u8]) -> Result<u64, Bad> {
    let mut c = Cursor(s);
    let n = c.number().ok_or("no number after \"after\"")?;
    c.literal(b" seconds")
        .ok_or("no \"seconds\" after the delay")?;
    if n > MAX_DELAY_SECS {
        return Err("delay over an hour");
    }
    Ok(n)
}

/// Sendmail before 8.14 ends the line after the phrase (our JSON would end the string).
fn untimed_end(rest: &[u8]) -> bool {
    let rest = rest.trim_ascii();
    rest.is_empty() || rest.starts_with(b"\"")
}

fn detail<'a>(head: &'a [u8], rest: &'a [u8]) -> Result<Parsed<'a>, Bad> {
    let qid = qid_before(head).ok_or("detail line without a queue id")?;
    // The sample field before it has every `"` escaped as `\"`, so `waited_ms="` cannot be
    // forged by what the client sent.
    let at = WAITED_DETAIL
        .find(rest)
        .ok_or("detail line without waited_ms")?;
    let value = &rest[at + 11..];
    let end = memchr::memchr(b'"', value).ok_or("unterminated waited_ms")?;
    let waited_ms = bounded_number(&value[..end]).ok_or("bad waited_ms")?;
    Ok(Parsed::Detail { qid, waited_ms })
}

fn session<'a>(line: &'a [u8], head: &'a [u8], rest: &'a [u8]) -> Result<Session<'a>, Bad> {
    let qid = if is_json(head) {
        json_field(line, &QID_JSON)
    } else {
        qid_before(head)
    };
    // The relay (`host [ip]`) comes first; host names have no ", pause=".
    let at = PAUSE.find(rest).ok_or("session line without pause=")?;
    let mut c = Cursor(&rest[at + 8..]);
    let pause_ms = c.millis().ok_or("bad pause=")?;
    if pause_ms > MAX_DELAY_MS {
        return Err("pause over an hour");
    }
    c.literal(b", first_input=").ok_or("no first_input=")?;
    let first_input_ms = match c.literal(b"none") {
        Some(()) => None,
        None => Some(c.millis().ok_or("bad first_input=")?),
    };
    c.literal(b", duration=").ok_or("no duration=")?;
    let duration_ms = c.millis().ok_or("bad duration=")?;
    c.literal(b", messages=").ok_or("no messages=")?;
    let messages = c.number().ok_or("bad messages=")?;
    Ok(Session {
        qid,
        pause_ms,
        first_input_ms,
        duration_ms,
        messages,
    })
}

/// The text is the `"message"` of a JSON object.
fn is_json(head: &[u8]) -> bool {
    MESSAGE_JSON.find(head).is_some()
}

/// The queue id that ends `head` (`... sendmail[123]: <qid>: `), if it looks like one.
fn qid_before(head: &[u8]) -> Option<&[u8]> {
    let head = head.strip_suffix(b": ")?;
    let start = memchr::memrchr(b' ', head).map_or(0, |i| i + 1);
    valid_qid(&head[start..])
}

/// The string value after `key` (which ends with the opening quote).
fn json_field<'a>(line: &'a [u8], key: &Finder<'_>) -> Option<&'a [u8]> {
    let at = key.find(line)? + key.needle().len();
    let value = &line[at..];
    let end = memchr::memchr(b'"', value)?;
    Some(&value[..end])
}

/// Queue ids are letters and digits (`6ALBkHR8022237`); anything else is not joinable.
fn valid_qid(s: &[u8]) -> Option<&[u8]> {
    let ok = !s.is_empty() && s.len() <= MAX_QID && s.iter().all(u8::is_ascii_alphanumeric);
    ok.then_some(s)
}

/// All of `s` as a number no greater than [`MAX_DELAY_MS`].
fn bounded_number(s: &[u8]) -> Option<u64> {
    let mut c = Cursor(s);
    let n = c.number()?;
    (c.0.is_empty() && n <= MAX_DELAY_MS).then_some(n)
}

/// Reads a line left to right.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn literal(&mut self, lit: &[u8]) -> Option<()> {
        self.0 = self.0.strip_prefix(lit)?;
        Some(())
    }

    /// 1 to 19 decimal digits (so no overflow).
    fn number(&mut self) -> Option<u64> {
        let len = self.0.iter().take_while(|b| b.is_ascii_digit()).count();
        if len == 0 || len > 19 {
            return None;
        }
        let (digits, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
    }

    /// `<number>ms`.
    fn millis(&mut self) -> Option<u64> {
        let n = self.number()?;
        self.literal(b"ms")?;
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(line: &str) -> Result<Parsed<'_>, Bad> {
        let bytes = line.as_bytes();
        let (kind, at) = Kind::ALL
            .iter()
            .filter_map(|k| memchr::memmem::find(bytes, k.needle()).map(|at| (*k, at)))
            .min_by_key(|(_, at)| *at)
            .expect("a needle");
        parse(kind, bytes, at)
    }

    fn pregreet(qid: Option<&str>, seconds: u64, waited_ms: Option<u64>) -> Parsed<'_> {
        Parsed::Pregreet {
            qid: qid.map(str::as_bytes),
            seconds,
            waited_ms,
        }
    }

    #[test]
    fn pregreet_lines() {
        let table: &[(&str, Result<Parsed<'_>, Bad>)] = &[
            // Sendmail 8.17 as rsyslog wrote it (sendmail-behaviour.md).
            (
                "2026-11-21T11:46:16.865807+00:00 vm sendmail[22237]: 6ALBkHR8022237: rejecting commands from localhost [127.0.0.1] due to pre-greeting traffic after 2 seconds",
                Ok(pregreet(Some("6ALBkHR8022237"), 2, None)),
            ),
            // BSD syslog prefix, trailing CR stripped by the scanner, not here: still fine.
            (
                "Nov 21 11:46:16 mx sendmail[1]: 6ALBkGjZ022188: rejecting commands from [192.0.2.1] due to pre-greeting traffic after 0 seconds",
                Ok(pregreet(Some("6ALBkGjZ022188"), 0, None)),
            ),
            // No queue id: counted, not joinable.
            (
                "sendmail[1]: rejecting commands from h [192.0.2.1] due to pre-greeting traffic after 7 seconds",
                Ok(pregreet(None, 7, None)),
            ),
            // The seed's regex matches anywhere.
            (
                "pre-greeting traffic after 12 seconds",
                Ok(pregreet(None, 12, None)),
            ),
            // Ours with action = ignore.
            (
                "2026-11-21T10:00:00.123Z mx portcullis[4242]: 6ALEkX0000021853: pre-greeting traffic from host.example [192.0.2.1] after 3 seconds ignored (greet_pause.action = ignore)",
                Ok(pregreet(Some("6ALEkX0000021853"), 3, None)),
            ),
            // Ours in JSON: qid and exact ms from the object's fields.
            (
                r#"{"ts":"t","level":"notice","event":"greet_pause_pregreet","qid":"6ALEkX0000021853","message":"rejecting commands from [127.0.0.1] due to pre-greeting traffic after 2 seconds","class":"smtp","sample":"EHLO x","waited_ms":"1834","action":"enforce","pause_entry":"greet_pause.default"}"#,
                Ok(pregreet(Some("6ALEkX0000021853"), 2, Some(1834))),
            ),
            (
                r#"{"ts":"t","qid":"Q1","message":"pre-greeting traffic from [127.0.0.1] after 0 seconds ignored (greet_pause.action = ignore)","sample":"\"waited_ms\":\"9","waited_ms":"12"}"#,
                Ok(pregreet(Some("Q1"), 0, Some(12))),
            ),
            // Sendmail before 8.14: no delay.
            (
                "Jun  1 10:00:00 mx sendmail[9]: k51A0Y: rejecting commands from host [10.0.0.1] due to pre-greeting traffic",
                Ok(Parsed::Untimed),
            ),
            (
                "sendmail[9]: k51A0Y: rejecting commands from host [10.0.0.1] due to pre-greeting traffic  ",
                Ok(Parsed::Untimed),
            ),
            // Bad lines.
            (
                "x: rejecting commands from h [1.2.3.4] due to pre-greeting traffic after many seconds",
                Err("no number after \"after\""),
            ),
            (
                "x: due to pre-greeting traffic after 3 secs",
                Err("no \"seconds\" after the delay"),
            ),
            (
                "x: due to pre-greeting traffic after 99999999999999999999 seconds",
                Err("no number after \"after\""),
            ),
            (
                "x: due to pre-greeting traffic after 3601 seconds",
                Err("delay over an hour"),
            ),
            (
                "x: pre-greeting traffic from [1.2.3.4] soon",
                Err("no \"after N seconds\""),
            ),
            (
                "x: pre-greeting traffic, surely",
                Err("unknown pre-greeting wording"),
            ),
            (
                r#"{"qid":"Q","message":"rejecting commands from [127.0.0.1] due to pre-greeting traffic after 2 seconds","waited_ms":"x"}"#,
                Err("bad waited_ms"),
            ),
        ];
        for (line, want) in table {
            assert_eq!(&run(line), want, "{line}");
        }
    }

    #[test]
    fn detail_lines() {
        let table: &[(&str, Result<Parsed<'_>, Bad>)] = &[
            (
                r#"2026-11-21T10:00:00.123Z mx portcullis[4242]: 6ALEkX0000021853: greet_pause_pregreet detail: class="smtp", sample="EHLO x", waited_ms="1834", action="enforce", pause_entry="greet_pause.default""#,
                Ok(Parsed::Detail {
                    qid: b"6ALEkX0000021853",
                    waited_ms: 1834,
                }),
            ),
            // What the client sent cannot forge the field: its quotes are escaped.
            (
                r#"mx portcullis[1]: Q2: greet_pause_pregreet detail: class="other", sample="a\", waited_ms=\"5", waited_ms="40", action="drop""#,
                Ok(Parsed::Detail {
                    qid: b"Q2",
                    waited_ms: 40,
                }),
            ),
            (
                r#"portcullis[1]: greet_pause_pregreet detail: waited_ms="1""#,
                Err("detail line without a queue id"),
            ),
            (
                r#"portcullis[1]: Q: greet_pause_pregreet detail: class="smtp""#,
                Err("detail line without waited_ms"),
            ),
            (
                r#"portcullis[1]: Q: greet_pause_pregreet detail: waited_ms="4000000""#,
                Err("bad waited_ms"),
            ),
        ];
        for (line, want) in table {
            assert_eq!(&run(line), want, "{line}");
        }
    }

    #[test]
    fn session_lines() {
        let s = |qid: Option<&'static str>, pause, first, duration, messages| {
            Ok(Parsed::Session(Session {
                qid: qid.map(str::as_bytes),
                pause_ms: pause,
                first_input_ms: first,
                duration_ms: duration,
                messages,
            }))
        };
        let table: &[(&str, Result<Parsed<'_>, Bad>)] = &[
            (
                "2026-11-21T10:00:00.123Z mx portcullis[4242]: 6ALEkX0000021853: session closed: relay=host.example [192.0.2.1], pause=1000ms, first_input=1004ms, duration=2503ms, messages=1",
                s(Some("6ALEkX0000021853"), 1000, Some(1004), 2503, 1),
            ),
            (
                r#"{"ts":"t","level":"info","event":"smtp_session_closed","qid":"Q9","message":"session closed: relay=[127.0.0.1], pause=0ms, first_input=none, duration=5ms, messages=0","x":"y"}"#,
                s(Some("Q9"), 0, None, 5, 0),
            ),
            (
                "Q: session closed: relay=[::1], pause=5000ms, first_input=none, duration=1200ms, messages=0",
                s(Some("Q"), 5000, None, 1200, 0),
            ),
            (
                "Q: session closed: relay=[::1], pause=5s, first_input=none, duration=1ms, messages=0",
                Err("bad pause="),
            ),
            (
                "Q: session closed: relay=[::1], first_input=none",
                Err("session line without pause="),
            ),
            (
                "Q: session closed: relay=[::1], pause=1ms, first_input=soon, duration=1ms, messages=0",
                Err("bad first_input="),
            ),
            (
                "Q: session closed: relay=[::1], pause=1ms, first_input=none, duration=1ms",
                Err("no messages="),
            ),
            (
                "Q: session closed: relay=[::1], pause=3600001ms, first_input=none, duration=1ms, messages=0",
                Err("pause over an hour"),
            ),
        ];
        for (line, want) in table {
            assert_eq!(&run(line), want, "{line}");
        }
    }

    #[test]
    fn early_talker_is_pause_and_first_input_before_it() {
        let base = Session {
            qid: None,
            pause_ms: 1000,
            first_input_ms: Some(999),
            duration_ms: 0,
            messages: 0,
        };
        assert!(base.early_talker());
        let at = Session {
            first_input_ms: Some(1000),
            ..base
        };
        assert!(!at.early_talker());
        let silent = Session {
            first_input_ms: None,
            ..base
        };
        assert!(!silent.early_talker());
        let unpaused = Session {
            pause_ms: 0,
            first_input_ms: Some(0),
            ..base
        };
        assert!(!unpaused.early_talker());
    }
}
