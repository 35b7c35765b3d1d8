//! SMTP command lines → [`Command`].
//!
//! Role: split one command line (already framed, at most 512 octets) into a verb and its
//! arguments, parse MAIL/RCPT paths and ESMTP parameters, and turn malformed input into the
//! reply Sendmail would give.
//!
//! Leniency, deliberately as Sendmail and Postfix: `MAIL FROM: <a@b>` (space after the colon)
//! and `MAIL FROM:a@b` (no brackets, as in the seed's netcat test) are accepted; a line may
//! end in a bare LF. Parameters are strict: only those we advertise (SIZE, BODY, SMTPUTF8).
//!
//! Must not: check sequence (HELO before MAIL, …) or decide anything; the session does that.

use crate::address::{AddressError, ReversePath, parse_path};
use crate::reply::{self, Reply};

/// A parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `HELO domain`.
    Helo(String),
    /// `EHLO domain`.
    Ehlo(String),
    /// `MAIL FROM:<path> [params]`.
    Mail(ReversePath, MailParams),
    /// `RCPT TO:<path>`.
    Rcpt(ReversePath),
    /// `DATA`.
    Data,
    /// `RSET`.
    Rset,
    /// `NOOP [text]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY text`.
    Vrfy,
    /// `EXPN text`.
    Expn,
    /// `ETRN text`.
    Etrn,
    /// `HELP [topic]`.
    Help,
    /// `STARTTLS` (RFC 3207); true when arguments followed it (a syntax error when TLS is
    /// offered). The session treats it as unknown when TLS is not offered.
    StartTls(bool),
    /// Anything else, including commands we do not offer (AUTH, BDAT).
    Unknown,
}

impl Command {
    /// The verb as a log-friendly name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Helo(_) => "HELO",
            Self::Ehlo(_) => "EHLO",
            Self::Mail(..) => "MAIL",
            Self::Rcpt(_) => "RCPT",
            Self::Data => "DATA",
            Self::Rset => "RSET",
            Self::Noop => "NOOP",
            Self::Quit => "QUIT",
            Self::Vrfy => "VRFY",
            Self::Expn => "EXPN",
            Self::Etrn => "ETRN",
            Self::Help => "HELP",
            Self::StartTls(_) => "STARTTLS",
            Self::Unknown => "UNKNOWN",
        }
    }
}

/// ESMTP parameters of MAIL that we advertise.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=n` (RFC 1870).
    pub size: Option<u64>,
    /// `BODY=8BITMIME` (RFC 6152); `BODY=7BIT` leaves it false.
    pub eight_bit: bool,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
}

/// Parses one command line. `line` may still carry its CRLF or LF.
///
/// Errors are the reply to send (always a 5xx syntax reply).
pub fn parse(line: &[u8]) -> Result<Command, Reply> {
    let Some((verb, args)) = split_verb(line) else {
        return Ok(Command::Unknown);
    };
    match verb.as_slice() {
        b"HELO" => parse_hello(args, "HELO").map(Command::Helo),
        b"EHLO" => parse_hello(args, "EHLO").map(Command::Ehlo),
        b"MAIL" => parse_mail(args),
        b"RCPT" => parse_rcpt(args),
        b"DATA" => Ok(Command::Data),
        b"RSET" => Ok(Command::Rset),
        b"NOOP" => Ok(Command::Noop),
        b"QUIT" => Ok(Command::Quit),
        b"VRFY" => Ok(Command::Vrfy),
        b"EXPN" => Ok(Command::Expn),
        b"ETRN" => Ok(Command::Etrn),
        b"HELP" => Ok(Command::Help),
        b"STARTTLS" => Ok(Command::StartTls(!args.is_empty())),
        _ => Ok(Command::Unknown),
    }
}

/// True for the commands Sendmail refuses in its rejecting ("null server") mode: every
/// command it knows except HELO, EHLO, NOOP, RSET and QUIT, which are answered normally, as
/// are unknown commands (source: srvrsmtp.c, the null-server switch). Looked at before the
/// arguments are parsed, so `MAIL garbage` is refused, not a syntax error.
pub fn refused_when_rejecting(line: &[u8]) -> bool {
    const REFUSED: [&[u8]; 11] = [
        b"MAIL",
        b"RCPT",
        b"DATA",
        b"VRFY",
        b"EXPN",
        b"ETRN",
        b"HELP",
        b"VERB",
        b"AUTH",
        b"STARTTLS",
        b"ONEX",
    ];
    split_verb(line).is_some_and(|(verb, _)| REFUSED.contains(&verb.as_slice()))
}

/// True when `line` starts like an HTTP or POP request (GET, POST, CONNECT, USER): a
/// first command like that is an open-proxy probe or a confused client (Sendmail).
pub fn is_proxy_probe(line: &[u8]) -> bool {
    const PROBES: [&[u8]; 4] = [b"GET", b"POST", b"CONNECT", b"USER"];
    split_verb(line).is_some_and(|(verb, _)| PROBES.contains(&verb.as_slice()))
}

/// The verb of a command line as a log name (`EHLO`, `MAIL`, ...; `UNKNOWN` for anything
/// else), without parsing the arguments: what Sendmail names in `delaying=<CMD>`.
pub fn verb_name(line: &[u8]) -> &'static str {
    const KNOWN: [&str; 15] = [
        "HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "EXPN", "ETRN",
        "HELP", "VERB", "AUTH", "STARTTLS",
    ];
    split_verb(line)
        .and_then(|(verb, _)| KNOWN.into_iter().find(|k| k.as_bytes() == verb.as_slice()))
        .unwrap_or("UNKNOWN")
}

/// The verb, upper-cased (at most 8 octets; longer verbs are unknown by definition), and the
/// arguments after it.
fn split_verb(line: &[u8]) -> Option<(Verb, &[u8])> {
    let line = strip_eol(line);
    let (verb, args) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], trim_start(&line[i + 1..])),
        None => (line, &[][..]),
    };
    let mut upper = [0u8; 8];
    if verb.len() > upper.len() {
        return None;
    }
    for (dst, src) in upper.iter_mut().zip(verb) {
        *dst = src.to_ascii_uppercase();
    }
    Some((
        Verb {
            bytes: upper,
            len: verb.len(),
        },
        args,
    ))
}

/// An upper-cased verb held without allocation.
struct Verb {
    bytes: [u8; 8],
    len: usize,
}

impl Verb {
    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Removes a trailing CRLF or LF.
pub fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|&&c| c == b' ' || c == b'\t').count();
    &b[n..]
}

fn trim_end(b: &[u8]) -> &[u8] {
    let n = b
        .iter()
        .rev()
        .take_while(|&&c| c == b' ' || c == b'\t')
        .count();
    &b[..b.len() - n]
}

/// HELO/EHLO take a domain or an address literal. Sendmail accepts the first word and
/// ignores the rest, so do we.
fn parse_hello(args: &[u8], verb: &str) -> Result<String, Reply> {
    let word = args.split(|&b| b == b' ').next().unwrap_or_default();
    if word.is_empty() {
        return Err(reply::helo_needs_domain(verb));
    }
    let Ok(text) = std::str::from_utf8(word) else {
        return Err(reply::invalid_helo_domain());
    };
    // RFC 5321 §4.1.4: the argument is a domain or address literal. Clients in the wild send
    // bare IPs and underscores; Sendmail accepts anything printable, and rejecting here only
    // loses mail, so we check only for printable, bracket-balanced text.
    let printable = text.bytes().all(|b| (0x21..0x7f).contains(&b));
    if !printable || text.len() > 255 {
        return Err(reply::invalid_helo_domain());
    }
    Ok(text.to_owned())
}

fn parse_mail(args: &[u8]) -> Result<Command, Reply> {
    let Some(rest) = strip_keyword(args, b"FROM:") else {
        return Err(reply::syntax_scanning("from"));
    };
    let (path, params) = split_path(rest).ok_or_else(|| reply::syntax_scanning("from"))?;
    let path = match parse_path_bytes(path) {
        Ok(ReversePath::Postmaster) | Err(_) => return Err(reply::bad_sender_syntax()),
        Ok(p) => p,
    };
    let params = parse_mail_params(params)?;
    Ok(Command::Mail(path, params))
}

fn parse_rcpt(args: &[u8]) -> Result<Command, Reply> {
    let Some(rest) = strip_keyword(args, b"TO:") else {
        return Err(reply::syntax_scanning("to"));
    };
    let (path, params) = split_path(rest).ok_or_else(|| reply::syntax_scanning("to"))?;
    let path = match parse_path_bytes(path) {
        Ok(ReversePath::Null) | Err(_) => return Err(reply::bad_recipient_syntax()),
        Ok(p) => p,
    };
    // We advertise no RCPT parameters (no DSN), so any is unrecognized (RFC 5321 §4.1.1.11).
    if let Some(param) = params.split(|&b| b == b' ').find(|p| !p.is_empty()) {
        return Err(reply::parameter_unrecognized(param));
    }
    Ok(Command::Rcpt(path))
}

/// Case-insensitive `FROM:` / `TO:` prefix; returns what follows, leading blanks removed.
fn strip_keyword<'a>(args: &'a [u8], keyword: &[u8]) -> Option<&'a [u8]> {
    if args.len() < keyword.len() || !args[..keyword.len()].eq_ignore_ascii_case(keyword) {
        return None;
    }
    Some(trim_start(&args[keyword.len()..]))
}

/// Splits `<path> params` (or a bare `path params`) into the path text and the parameters.
fn split_path(rest: &[u8]) -> Option<(&[u8], &[u8])> {
    if let Some(inner) = rest.strip_prefix(b"<") {
        let end = closing_bracket(inner)?;
        Some((&inner[..end], trim_end(trim_start(&inner[end + 1..]))))
    } else {
        let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        if end == 0 {
            return None;
        }
        Some((&rest[..end], trim_end(trim_start(&rest[end..]))))
    }
}

/// Index of the `>` that closes a path, skipping quoted strings (a quoted local part may
/// contain `>`).
fn closing_bracket(inner: &[u8]) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, &b) in inner.iter().enumerate() {
        match (quoted, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (_, false, b'"') => quoted = !quoted,
            (false, _, b'>') => return Some(i),
            _ => {}
        }
    }
    None
}

fn parse_path_bytes(path: &[u8]) -> Result<ReversePath, AddressError> {
    let text = std::str::from_utf8(path).map_err(|_| AddressError::LocalPart)?;
    parse_path(text)
}

fn parse_mail_params(params: &[u8]) -> Result<MailParams, Reply> {
    let mut out = MailParams::default();
    for param in params.split(|&b| b == b' ').filter(|p| !p.is_empty()) {
        let (key, value) = match param.iter().position(|&b| b == b'=') {
            Some(i) => (&param[..i], Some(&param[i + 1..])),
            None => (param, None),
        };
        if key.eq_ignore_ascii_case(b"SIZE") {
            let size = value
                .and_then(|v| std::str::from_utf8(v).ok())
                .filter(|v| !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| reply::bad_parameter("SIZE"))?;
            out.size = Some(size);
        } else if key.eq_ignore_ascii_case(b"BODY") {
            match value {
                Some(v) if v.eq_ignore_ascii_case(b"8BITMIME") => out.eight_bit = true,
                Some(v) if v.eq_ignore_ascii_case(b"7BIT") => out.eight_bit = false,
                _ => return Err(reply::bad_parameter("BODY")),
            }
        } else if key.eq_ignore_ascii_case(b"SMTPUTF8") && value.is_none() {
            out.smtputf8 = true;
        } else {
            return Err(reply::parameter_unrecognized(param));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Mailbox;

    fn mb(local: &str, domain: &str) -> ReversePath {
        ReversePath::Mailbox(Mailbox {
            local: local.into(),
            domain: domain.into(),
            quoted: false,
        })
    }

    fn code(r: Result<Command, Reply>) -> String {
        match r {
            Ok(c) => format!("ok {}", c.name()),
            Err(r) => r.to_log_string(),
        }
    }

    #[test]
    fn parses_commands() {
        let table: &[(&[u8], Command)] = &[
            (
                b"HELO client.example.org\r\n",
                Command::Helo("client.example.org".into()),
            ),
            (
                b"helo localhost.localdomain\n",
                Command::Helo("localhost.localdomain".into()),
            ),
            (b"EHLO [127.0.0.1]\r\n", Command::Ehlo("[127.0.0.1]".into())),
            (b"EHLO a b\r\n", Command::Ehlo("a".into())),
            (
                b"MAIL FROM:<a@b.c>\r\n",
                Command::Mail(mb("a", "b.c"), MailParams::default()),
            ),
            (
                b"mail from: hal@deer-run.com\r\n",
                Command::Mail(mb("hal", "deer-run.com"), MailParams::default()),
            ),
            (
                b"MAIL FROM: <a@b.c>\r\n",
                Command::Mail(mb("a", "b.c"), MailParams::default()),
            ),
            (
                b"MAIL FROM:<>\r\n",
                Command::Mail(ReversePath::Null, MailParams::default()),
            ),
            (
                b"MAIL FROM:<a@b.c> SIZE=100 BODY=8BITMIME SMTPUTF8\r\n",
                Command::Mail(
                    mb("a", "b.c"),
                    MailParams {
                        size: Some(100),
                        eight_bit: true,
                        smtputf8: true,
                    },
                ),
            ),
            (b"RCPT TO:<x@y>\r\n", Command::Rcpt(mb("x", "y"))),
            (
                b"rcpt to: hal@sysiphus.com\r\n",
                Command::Rcpt(mb("hal", "sysiphus.com")),
            ),
            (
                b"RCPT TO:<Postmaster>\r\n",
                Command::Rcpt(ReversePath::Postmaster),
            ),
            (b"DATA\r\n", Command::Data),
            (b"data\r\n", Command::Data),
            (b"RSET\r\n", Command::Rset),
            (b"NOOP hi there\r\n", Command::Noop),
            (b"QUIT\r\n", Command::Quit),
            (b"VRFY root\r\n", Command::Vrfy),
            (b"HELP\r\n", Command::Help),
            (b"FOOBAR baz\r\n", Command::Unknown),
            (b"\r\n", Command::Unknown),
            (b"STARTTLS\r\n", Command::StartTls(false)),
            (b"starttls \r\n", Command::StartTls(false)),
            (b"STARTTLS now\r\n", Command::StartTls(true)),
            (b"From: hal@deer-run.com\r\n", Command::Unknown),
            (b"GET / HTTP/1.0\r\n", Command::Unknown),
            (b"\x00\x01\x02\r\n", Command::Unknown),
            (b"VERYLONGVERB x\r\n", Command::Unknown),
        ];
        for (line, want) in table {
            assert_eq!(
                parse(line).as_ref(),
                Ok(want),
                "line {:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn syntax_errors_get_sendmail_replies() {
        let table: &[(&[u8], &str)] = &[
            (b"HELO\r\n", "501 5.5.4 HELO requires domain address"),
            (b"EHLO \r\n", "501 5.5.4 EHLO requires domain address"),
            (b"EHLO a\x01b\r\n", "501 5.5.4 Invalid domain name"),
            (
                b"MAIL\r\n",
                "501 5.5.2 Syntax error in parameters scanning \"from\"",
            ),
            (
                b"MAIL TO:<a@b>\r\n",
                "501 5.5.2 Syntax error in parameters scanning \"from\"",
            ),
            (
                b"MAIL FROM:<a@b\r\n",
                "501 5.5.2 Syntax error in parameters scanning \"from\"",
            ),
            (
                b"MAIL FROM:<a..b@c>\r\n",
                "501 5.1.7 Bad sender address syntax",
            ),
            (
                b"MAIL FROM:<Postmaster>\r\n",
                "501 5.1.7 Bad sender address syntax",
            ),
            (
                b"MAIL FROM:<a@b.c> FOO=bar\r\n",
                "555 5.5.4 FOO=bar parameter unrecognized",
            ),
            (
                b"MAIL FROM:<a@b.c> SIZE=abc\r\n",
                "501 5.5.4 Syntax error in parameter SIZE",
            ),
            (
                b"MAIL FROM:<a@b.c> BODY=9BIT\r\n",
                "501 5.5.4 Syntax error in parameter BODY",
            ),
            (b"RCPT TO:<>\r\n", "501 5.1.3 Bad recipient address syntax"),
            (
                b"RCPT TO:<a b@c>\r\n",
                "501 5.1.3 Bad recipient address syntax",
            ),
            (
                b"RCPT TO:<a@b.c> NOTIFY=NEVER\r\n",
                "555 5.5.4 NOTIFY=NEVER parameter unrecognized",
            ),
            (
                b"RCPT FROM:<a@b.c>\r\n",
                "501 5.5.2 Syntax error in parameters scanning \"to\"",
            ),
            (
                b"RCPT TO:\r\n",
                "501 5.5.2 Syntax error in parameters scanning \"to\"",
            ),
        ];
        for (line, want) in table {
            assert_eq!(
                code(parse(line)),
                *want,
                "line {:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn quoted_local_part_may_hold_brackets() {
        let got = parse(b"RCPT TO:<\"a>b\"@c.d>\r\n").unwrap();
        let Command::Rcpt(ReversePath::Mailbox(m)) = got else {
            panic!("not a mailbox: {got:?}");
        };
        assert_eq!(
            (m.local.as_str(), m.domain.as_str(), m.quoted),
            ("a>b", "c.d", true)
        );
    }
}
