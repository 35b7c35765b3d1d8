//! Reading a value (right-hand side): as a number, the way Sendmail's C code does, or as an
//! access action, the way the `check_*` rulesets match it.
//!
//! Role: two pure functions every defence shares, so `GreetPause:` and `ClientRate:` read
//! numbers alike and `Connect:`/`From:`/`To:` read `ERROR:` alike.
//! Must not: allocate, panic, or decide what an action does (that is each defence's).
//! Sendmail equivalent: `strtol(value, NULL, 10)` in `srvrsmtp.c` (greet_pause); the
//! `R<ERROR:$-.$-.$-:$+>` and `R<ERROR:$+>` rules of `Basic_check_relay`/`check_mail`; the
//! classes `{Accept}` (`OK RELAY`) and the `REJECT`, `DISCARD`, `SKIP`, `FRIEND`, `HATER`
//! keywords.

use super::strip_prefix_ci;

/// C `strtol(value, NULL, 10)`: leading whitespace, an optional sign, then as many digits as
/// there are; anything else ends the number. `"abc"` → 0, `"1500ms"` → 1500, `"-5"` → -5;
/// out of range saturates at `i64::MIN`/`i64::MAX` as `strtol` does at `LONG_MIN`/`LONG_MAX`.
pub fn number(value: &str) -> i64 {
    let s = value.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b');
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, s.get(1..).unwrap_or_default()),
        Some(b'+') => (false, s.get(1..).unwrap_or_default()),
        _ => (false, s),
    };
    digits
        .bytes()
        .take_while(u8::is_ascii_digit)
        .fold(0i64, |n, b| {
            let d = i64::from(b - b'0');
            // Accumulating towards the sign keeps i64::MIN reachable.
            if negative {
                n.saturating_mul(10).saturating_sub(d)
            } else {
                n.saturating_mul(10).saturating_add(d)
            }
        })
}

/// An access value as the `check_relay`/`check_mail`/`check_rcpt` rulesets read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// `OK`: accept, skip further checks of this kind.
    Ok,
    /// `RELAY`: accept and allow relaying.
    Relay,
    /// `REJECT`: refuse with the standard text (`550 5.7.1 Access denied` and friends).
    Reject,
    /// `DISCARD`: accept and throw the message away.
    Discard,
    /// `SKIP`: stop the lookup here and use the default.
    Skip,
    /// `FRIEND` (Spam:): a spam friend under delay_checks.
    Friend,
    /// `HATER` (Spam:): a spam hater under delay_checks.
    Hater,
    /// `ERROR:[d.s.n:]reply`: refuse with this reply. `enhanced` is the `d.s.n` written
    /// before the reply, if any; `reply` is the text without its surrounding quotes.
    Error {
        /// The enhanced status code given as `ERROR:5.7.1:...`.
        enhanced: Option<&'a str>,
        /// The reply, e.g. `550 Your network is blocked`.
        reply: &'a str,
    },
    /// Anything else (a number, `QUARANTINE:...`, free text), trimmed. Sendmail's
    /// `check_relay` turns an unknown value into an error with that text
    /// (`553 5.3.0 0` for a stray `0`).
    Other(&'a str),
}

/// Reads an access value; keywords in any case (`ok`, `Reject`), surrounding whitespace
/// ignored.
pub fn action(value: &str) -> Action<'_> {
    let v = value.trim();
    if let Some(rest) = strip_prefix_ci(v, "ERROR:") {
        return error(rest.trim_start());
    }
    let keywords = [
        ("OK", Action::Ok),
        ("RELAY", Action::Relay),
        ("REJECT", Action::Reject),
        ("DISCARD", Action::Discard),
        ("SKIP", Action::Skip),
        ("FRIEND", Action::Friend),
        ("HATER", Action::Hater),
    ];
    keywords
        .into_iter()
        .find(|(word, _)| v.eq_ignore_ascii_case(word))
        .map_or(Action::Other(v), |(_, a)| a)
}

/// After `ERROR:`: `d.s.n:reply` or `reply`, the reply possibly in double quotes.
fn error(rest: &str) -> Action<'_> {
    let (enhanced, reply) = match enhanced_code(rest) {
        Some(n) => (
            rest.get(..n),
            rest.get(n + 1..).unwrap_or_default().trim_start(),
        ),
        None => (None, rest),
    };
    Action::Error {
        enhanced,
        reply: unquote(reply),
    }
}

/// Length of a leading `digits.digits.digits` followed by `:` (RFC 3463 shape; Sendmail's
/// pattern is three single tokens, and only digits make a usable code).
fn enhanced_code(s: &str) -> Option<usize> {
    let (code, _) = s.split_once(':')?;
    let mut parts = code.split('.');
    let ok = (0..3).all(|_| {
        parts
            .next()
            .is_some_and(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
    }) && parts.next().is_none();
    ok.then_some(code.len())
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
        .unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_like_strtol() {
        let cases: &[(&str, i64)] = &[
            ("0", 0),
            ("1500", 1500),
            ("  1500", 1500),
            ("\t\x0b+42", 42),
            ("-5", -5),
            ("abc", 0),
            ("", 0),
            ("-", 0),
            ("1500ms", 1500),
            ("12 34", 12),
            ("- 5", 0),
            ("99999999999999999999999", i64::MAX),
            ("-99999999999999999999999", i64::MIN),
            ("-9223372036854775808", i64::MIN),
            ("9223372036854775807", i64::MAX),
            ("٣", 0),
        ];
        for (s, want) in cases {
            assert_eq!(number(s), *want, "{s:?}");
        }
    }

    #[test]
    fn actions() {
        let err = |enhanced, reply| Action::Error { enhanced, reply };
        let cases: &[(&str, Action<'_>)] = &[
            ("OK", Action::Ok),
            ("ok", Action::Ok),
            ("RELAY", Action::Relay),
            ("Reject", Action::Reject),
            ("DISCARD", Action::Discard),
            ("SKIP", Action::Skip),
            ("FRIEND", Action::Friend),
            ("hater", Action::Hater),
            ("0", Action::Other("0")),
            ("QUARANTINE:held", Action::Other("QUARANTINE:held")),
            ("OK please", Action::Other("OK please")),
            ("ERROR:\"550 go away\"", err(None, "550 go away")),
            (
                "ERROR:\"421 4.7.1 Go away, you are blocked\"",
                err(None, "421 4.7.1 Go away, you are blocked"),
            ),
            (
                "ERROR:5.7.2:\"550 Your network is blocked\"",
                err(Some("5.7.2"), "550 Your network is blocked"),
            ),
            (
                "ERROR:4.3.9:\"451 Temporarily blocked\"",
                err(Some("4.3.9"), "451 Temporarily blocked"),
            ),
            ("ERROR:550 no quotes", err(None, "550 no quotes")),
            ("error: \"550 spaced\"", err(None, "550 spaced")),
            ("ERROR:5.7.1:550 bare", err(Some("5.7.1"), "550 bare")),
            ("ERROR:x.y.z:\"550 t\"", err(None, "x.y.z:\"550 t\"")),
            ("ERROR:5.7:\"550 t\"", err(None, "5.7:\"550 t\"")),
            ("ERROR:", err(None, "")),
            ("ERROR:\"", err(None, "\"")),
        ];
        for (s, want) in cases {
            assert_eq!(action(s), *want, "{s:?}");
        }
    }
}
