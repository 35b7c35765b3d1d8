//! SMTP replies: one type, one writer, and the catalogue of texts.
//!
//! Role: every reply the server sends is built here and written by [`Reply::write_to`]
//! (design.md §3.8, Postfix `smtpd_chat_reply`), so codes and wording stay consistent with
//! Sendmail 8.18 (reference/sendmail-behaviour.md, "Standard replies"): admins' scripts and
//! fail2ban filters match on them.
//!
//! Must not: decide which reply applies; callers do.
//! Invariants: reply text never contains CR or LF (text taken from the client is escaped by
//! [`printable`]), so a client cannot inject reply lines.

use std::fmt::Write as _;

use crate::address::{Mailbox, ReversePath};

/// One SMTP reply, possibly multi-line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The text of each line, without the code (enhanced status code included when any).
    pub lines: Vec<String>,
}

impl Reply {
    /// A single-line reply.
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        Self {
            code,
            lines: vec![text.into()],
        }
    }

    /// True for 421, which always closes the connection (RFC 5321 §3.8).
    pub fn closes(&self) -> bool {
        self.code == 421
    }

    /// Appends the wire form (`250-first`, …, `250 last`, each CRLF-terminated) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let mut head = [0u8; 4];
            head[0] = b'0' + (self.code / 100 % 10) as u8;
            head[1] = b'0' + (self.code / 10 % 10) as u8;
            head[2] = b'0' + (self.code % 10) as u8;
            head[3] = sep as u8;
            out.extend_from_slice(&head);
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if self.lines.is_empty() {
            out.extend_from_slice(format!("{} \r\n", self.code).as_bytes());
        }
    }

    /// The reply as one log-friendly string: lines joined with a space, code on the first.
    pub fn to_log_string(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" "))
    }
}

/// Makes client-supplied bytes safe to echo in a reply or a log: printable ASCII is kept,
/// everything else becomes `\xNN`; longer than `max` characters is cut and marked `...`
/// (Sendmail's `shortenstring`).
pub fn printable(bytes: &[u8], max: usize) -> String {
    let mut out = String::with_capacity(bytes.len().min(max) + 3);
    for (n, &b) in bytes.iter().enumerate() {
        if n >= max {
            out.push_str("...");
            break;
        }
        match b {
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out
}

/// Formats a path the way Sendmail names it in replies: `<addr>`.
fn bracket(path: &dyn std::fmt::Display) -> String {
    format!("<{path}>")
}

// The catalogue. Functions, not constants, because most texts carry a host name or address.

/// `220 <host> ESMTP Portcullis; <date>`: the greeting (Sendmail puts the connection time).
pub fn greeting(hostname: &str, date: &str) -> Reply {
    Reply::new(220, format!("{hostname} ESMTP Portcullis; {date}"))
}

/// `250 <host> Hello <client>, pleased to meet you` (HELO).
pub fn helo(hostname: &str, client: &str) -> Reply {
    Reply::new(
        250,
        format!("{hostname} Hello {client}, pleased to meet you"),
    )
}

/// The EHLO reply: the hello line, then the extensions we offer (RFC 5321 §4.1.1.1), in
/// Sendmail's order. SIZE carries the configured maximum (RFC 1870); PIPELINING is left out
/// when it is not offered to this client (`[smtp] pipelining = false`, `Srv_Features: P`);
/// STARTTLS (RFC 3207) is offered only while a certificate is configured and the session is
/// not in TLS yet (Sendmail lists it after AUTH, before HELP).
pub fn ehlo(
    hostname: &str,
    client: &str,
    max_message_bytes: u64,
    pipelining: bool,
    starttls: bool,
) -> Reply {
    let mut lines = vec![
        format!("{hostname} Hello {client}, pleased to meet you"),
        "ENHANCEDSTATUSCODES".to_owned(),
    ];
    if pipelining {
        lines.push("PIPELINING".to_owned());
    }
    lines.extend([
        "8BITMIME".to_owned(),
        format!("SIZE {max_message_bytes}"),
        "SMTPUTF8".to_owned(),
    ]);
    if starttls {
        lines.push("STARTTLS".to_owned());
    }
    lines.push("HELP".to_owned());
    Reply { code: 250, lines }
}

/// `554 5.5.0 SMTP protocol error`: input came after HELO/EHLO or DATA before its reply
/// (Sendmail 8.18's answer to command stuffing, CVE-2023-51765).
pub fn protocol_error() -> Reply {
    Reply::new(554, "5.5.0 SMTP protocol error")
}

/// `554 5.5.0 SMTP protocol synchronization error`: a command before the previous reply
/// from a client PIPELINING was not offered to (Exim's wording, without its detail).
pub fn synchronization_error() -> Reply {
    Reply::new(554, "5.5.0 SMTP protocol synchronization error")
}

/// `554 <host> ESMTP not accepting messages`: the greeting for a client that talked before
/// it (Sendmail's greet_pause greeting, "hostname + greetmsg" with ESMTP inserted).
pub fn not_accepting(hostname: &str) -> Reply {
    Reply::new(554, format!("{hostname} ESMTP not accepting messages"))
}

/// `550 5.0.0 Command rejected`: every restricted command in Sendmail's rejecting ("null
/// server") mode after pre-greeting traffic.
pub fn command_rejected() -> Reply {
    Reply::new(550, "5.0.0 Command rejected")
}

/// The EHLO reply in rejecting mode: the hello line and only `ENHANCEDSTATUSCODES`, as
/// Sendmail's null server advertises.
pub fn ehlo_rejecting(hostname: &str, client: &str) -> Reply {
    let lines = vec![
        format!("{hostname} Hello {client}, pleased to meet you"),
        "ENHANCEDSTATUSCODES".to_owned(),
    ];
    Reply { code: 250, lines }
}

/// `250 2.1.0 <addr>... Sender ok`.
pub fn sender_ok(path: &ReversePath) -> Reply {
    Reply::new(250, format!("2.1.0 {}... Sender ok", bracket(path)))
}

/// `250 2.1.5 <addr>... Recipient ok`.
pub fn recipient_ok(path: &ReversePath) -> Reply {
    Reply::new(250, format!("2.1.5 {}... Recipient ok", bracket(path)))
}

/// `550 5.1.1 <addr>... User unknown`.
pub fn user_unknown(mailbox: &Mailbox) -> Reply {
    Reply::new(550, format!("5.1.1 {}... User unknown", bracket(mailbox)))
}

/// `550 5.7.1 <addr>... Relaying denied`.
pub fn relaying_denied(mailbox: &Mailbox) -> Reply {
    Reply::new(
        550,
        format!("5.7.1 {}... Relaying denied", bracket(mailbox)),
    )
}

/// `354 End data with <CR><LF>.<CR><LF>`.
pub fn start_data() -> Reply {
    Reply::new(354, "End data with <CR><LF>.<CR><LF>")
}

/// `250 2.0.0 <qid> Message accepted for delivery`.
pub fn message_accepted(queue_id: &str) -> Reply {
    Reply::new(
        250,
        format!("2.0.0 {queue_id} Message accepted for delivery"),
    )
}

/// `250 2.0.0 OK` (NOOP).
pub fn ok() -> Reply {
    Reply::new(250, "2.0.0 OK")
}

/// `250 2.0.0 Reset state` (RSET).
pub fn reset() -> Reply {
    Reply::new(250, "2.0.0 Reset state")
}

/// `221 2.0.0 <host> closing connection` (QUIT).
pub fn closing(hostname: &str) -> Reply {
    Reply::new(221, format!("2.0.0 {hostname} closing connection"))
}

/// `252 2.5.2 ...` (VRFY): we never confirm users (RFC 5321 §3.5.3 allows 252).
pub fn cannot_vrfy() -> Reply {
    Reply::new(
        252,
        "2.5.2 Cannot VRFY user; try RCPT to attempt delivery (or try finger)",
    )
}

/// `502 5.7.0 Sorry, we do not allow this operation` (EXPN, ETRN).
pub fn not_allowed() -> Reply {
    Reply::new(502, "5.7.0 Sorry, we do not allow this operation")
}

/// The HELP text.
pub fn help() -> Reply {
    Reply {
        code: 214,
        lines: vec![
            "2.0.0 This is Portcullis, an MX server".into(),
            "2.0.0 Topics: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY".into(),
            "2.0.0 End of HELP info".into(),
        ],
    }
}

/// `500 5.5.1 Command unrecognized: "<line>"`.
pub fn unrecognized(line: &[u8]) -> Reply {
    Reply::new(
        500,
        format!("5.5.1 Command unrecognized: \"{}\"", printable(line, 200)),
    )
}

/// `500 5.5.0 Command line too long` (RFC 5321 §4.5.3.1.4: 512 octets).
pub fn line_too_long() -> Reply {
    Reply::new(500, "5.5.0 Command line too long")
}

/// `501 5.5.4 <VERB> requires domain address`.
pub fn helo_needs_domain(verb: &str) -> Reply {
    Reply::new(501, format!("5.5.4 {verb} requires domain address"))
}

/// `501 5.5.4 Invalid domain name` for a HELO/EHLO argument that is not a domain.
pub fn invalid_helo_domain() -> Reply {
    Reply::new(501, "5.5.4 Invalid domain name")
}

/// `501 5.5.2 Syntax error in parameters scanning "<what>"`.
pub fn syntax_scanning(what: &str) -> Reply {
    Reply::new(
        501,
        format!("5.5.2 Syntax error in parameters scanning \"{what}\""),
    )
}

/// `501 5.1.7 Bad sender address syntax`.
pub fn bad_sender_syntax() -> Reply {
    Reply::new(501, "5.1.7 Bad sender address syntax")
}

/// `501 5.1.3 Bad recipient address syntax`.
pub fn bad_recipient_syntax() -> Reply {
    Reply::new(501, "5.1.3 Bad recipient address syntax")
}

/// `555 5.5.4 <PARAM> parameter unrecognized` (RFC 5321 §4.1.1.11).
pub fn parameter_unrecognized(param: &[u8]) -> Reply {
    Reply::new(
        555,
        format!("5.5.4 {} parameter unrecognized", printable(param, 40)),
    )
}

/// `501 5.5.4 Syntax error in parameter <P>`.
pub fn bad_parameter(param: &str) -> Reply {
    Reply::new(501, format!("5.5.4 Syntax error in parameter {param}"))
}

/// `220 2.0.0 Ready to start TLS` (RFC 3207 §4; Sendmail's text).
pub fn ready_to_start_tls() -> Reply {
    Reply::new(220, "2.0.0 Ready to start TLS")
}

/// `501 5.5.2 Syntax error (no parameters allowed)`: STARTTLS takes no argument (RFC 3207
/// §4; Sendmail's code and text, srvrsmtp.c).
pub fn starttls_no_parameters() -> Reply {
    Reply::new(501, "5.5.2 Syntax error (no parameters allowed)")
}

/// `503 5.5.0 TLS not permitted during a mail transaction` (Sendmail): RFC 3207 §4.2 resets
/// the session after the handshake, which would silently drop the open transaction.
pub fn tls_in_transaction() -> Reply {
    Reply::new(503, "5.5.0 TLS not permitted during a mail transaction")
}

/// `454 4.3.3 TLS not available after start`: STARTTLS inside TLS (RFC 3207 §4.2 forbids a
/// second one). Sendmail's reply when it no longer offers TLS on the connection.
pub fn tls_already_active() -> Reply {
    Reply::new(454, "4.3.3 TLS not available after start")
}

/// `530 5.7.0 Must issue a STARTTLS command first` (RFC 3207 §4; Postfix's text): MAIL from a
/// client `[tls] required_for` lists, before TLS.
pub fn must_starttls() -> Reply {
    Reply::new(530, "5.7.0 Must issue a STARTTLS command first")
}

/// `503 5.5.1 Polite people say HELO first`.
pub fn need_helo() -> Reply {
    Reply::new(503, "5.5.1 Polite people say HELO first")
}

/// `503 5.5.1 Sender already specified`.
pub fn sender_already_specified() -> Reply {
    Reply::new(503, "5.5.1 Sender already specified")
}

/// `503 5.5.1 Need MAIL before RCPT`.
pub fn need_mail() -> Reply {
    Reply::new(503, "5.5.1 Need MAIL before RCPT")
}

/// `503 5.5.1 Need RCPT (recipient)`.
pub fn need_rcpt() -> Reply {
    Reply::new(503, "5.5.1 Need RCPT (recipient)")
}

/// `552 5.3.4 Message size exceeds fixed maximum message size (N)` (at MAIL, SIZE=).
pub fn size_exceeds_at_mail(max: u64) -> Reply {
    Reply::new(
        552,
        format!("5.3.4 Message size exceeds fixed maximum message size ({max})"),
    )
}

/// `552 5.3.4 Message size exceeds fixed maximum message size` (after DATA).
pub fn size_exceeds() -> Reply {
    Reply::new(552, "5.3.4 Message size exceeds fixed maximum message size")
}

/// `550 5.6.0 bare LF or CR in message` (SMTP smuggling defence, our wording).
pub fn bare_line_ending() -> Reply {
    Reply::new(550, "5.6.0 bare LF or CR in message")
}

/// `550 5.6.0 line longer than 1000 octets in message` (RFC 5321 §4.5.3.1.6).
pub fn text_line_too_long() -> Reply {
    Reply::new(550, "5.6.0 line longer than 1000 octets in message")
}

/// `452 4.5.3 Too many recipients`.
pub fn too_many_recipients() -> Reply {
    Reply::new(452, "4.5.3 Too many recipients")
}

/// `452 4.3.1 Insufficient system storage`.
pub fn insufficient_storage() -> Reply {
    Reply::new(452, "4.3.1 Insufficient system storage")
}

/// `451 4.3.0 Temporary system failure. Please try again later.`
pub fn temporary_failure() -> Reply {
    Reply::new(
        451,
        "4.3.0 Temporary system failure. Please try again later.",
    )
}

/// `421 4.4.1 <host> Timeout waiting for data`.
pub fn data_timeout(hostname: &str) -> Reply {
    Reply::new(421, format!("4.4.1 {hostname} Timeout waiting for data"))
}

/// `421 4.7.0 <host> Too many bad commands; closing connection`.
pub fn too_many_bad_commands(hostname: &str) -> Reply {
    Reply::new(
        421,
        format!("4.7.0 {hostname} Too many bad commands; closing connection"),
    )
}

/// `421 4.7.0 <host> Rejecting open proxy <client>` (Sendmail).
pub fn open_proxy(hostname: &str, client: &str) -> Reply {
    Reply::new(
        421,
        format!("4.7.0 {hostname} Rejecting open proxy {client}"),
    )
}

/// `421 4.7.0 <host> Too many bad recipients; closing connection` (Sendmail's
/// BadRcptShutdown).
pub fn too_many_bad_recipients(hostname: &str) -> Reply {
    Reply::new(
        421,
        format!("4.7.0 {hostname} Too many bad recipients; closing connection"),
    )
}

/// `421 4.3.2 <host> Too busy; please try again later`: a deliberate delay would have
/// taken the session past its delay budget.
pub fn too_busy(hostname: &str) -> Reply {
    Reply::new(
        421,
        format!("4.3.2 {hostname} Too busy; please try again later"),
    )
}

/// `421 4.3.2 <host> Service shutting down`.
pub fn shutting_down(hostname: &str) -> Reply {
    Reply::new(421, format!("4.3.2 {hostname} Service shutting down"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(r: &Reply) -> String {
        let mut out = Vec::new();
        r.write_to(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_single_and_multi_line() {
        assert_eq!(wire(&ok()), "250 2.0.0 OK\r\n");
        let r = ehlo("mx", "[127.0.0.1]", 1000, true, false);
        assert_eq!(
            wire(&r),
            "250-mx Hello [127.0.0.1], pleased to meet you\r\n250-ENHANCEDSTATUSCODES\r\n\
             250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 1000\r\n250-SMTPUTF8\r\n250 HELP\r\n"
        );
        let r = ehlo("mx", "[127.0.0.1]", 1000, false, false);
        assert_eq!(
            wire(&r),
            "250-mx Hello [127.0.0.1], pleased to meet you\r\n250-ENHANCEDSTATUSCODES\r\n\
             250-8BITMIME\r\n250-SIZE 1000\r\n250-SMTPUTF8\r\n250 HELP\r\n"
        );
        let r = ehlo("mx", "[127.0.0.1]", 1000, true, true);
        assert_eq!(
            wire(&r),
            "250-mx Hello [127.0.0.1], pleased to meet you\r\n250-ENHANCEDSTATUSCODES\r\n\
             250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 1000\r\n250-SMTPUTF8\r\n\
             250-STARTTLS\r\n250 HELP\r\n"
        );
    }

    #[test]
    fn escapes_client_text() {
        assert_eq!(
            wire(&unrecognized(b"FOO\rBAR\x00")),
            "500 5.5.1 Command unrecognized: \"FOO\\x0dBAR\\x00\"\r\n"
        );
        assert_eq!(printable(b"abcdef", 3), "abc...");
        assert_eq!(printable(b"a\\b", 10), "a\\\\b");
    }
}
