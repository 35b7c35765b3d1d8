//! The access-map checks of the SMTP dialogue: `Connect:` at connection time, `From:` at
//! MAIL, `To:` at RCPT, and FEATURE(`delay_checks`) with its `Spam:` friends and haters.
//!
//! Defends against: clients, senders and recipients the admin has listed in the access map
//! (spam sources, blocked networks, disabled mailboxes), with the replies Sendmail gives
//! for them, so that admins' maps, scripts and fail2ban filters keep working.
//!
//! Role: one [`SessionChecks`] per connection. The server calls [`SessionChecks::connect`]
//! once, [`SessionChecks::mail`] for every MAIL whose syntax was accepted and
//! [`SessionChecks::rcpt`] for every RCPT before the local-recipient check. Each reports a
//! [`Finding`]: what the entry decided, worded for the place, plus what the log line needs.
//! The server applies its `[access] action` to it (`enforce` answers as Sendmail does,
//! `drop` closes, `ignore` logs and goes on as if there were no entry).
//!
//! The contract with the caller: looking does not act. `connect`, `mail` and `rcpt` never
//! make the session discard; only [`SessionChecks::apply`], which the caller calls when it
//! enforces a finding, does (a `DISCARD`). So `ignore` needs no undo. The one state the
//! lookups keep is what `delay_checks` must remember (the `Connect:` and current `From:`
//! refusals), which is only ever acted on through a later RCPT finding. The caller calls
//! [`SessionChecks::end_transaction`] at RSET, after a message and before a new MAIL.
//!
//! Sendmail equivalent (`cf/m4/proto.m4`, `sendmail/parseaddr.c`, `srvrsmtp.c`):
//! - `check_relay` (`Connect:`, host name then address, tagged then untagged): `REJECT` →
//!   `550 5.7.1 Access denied` (the server then rejects MAIL/RCPT/DATA/VRFY with it);
//!   `ERROR:"421 ..."` → that 421 in place of the greeting; `DISCARD` → every message of
//!   the session is accepted and thrown away.
//! - `check_mail` (`From:`): `REJECT` → `550 5.7.1 <addr>... Access denied`; a 5xx `ERROR:`
//!   names the sender (`550 5.0.0 <addr>... text`), a 4xx does not (`451 4.3.9 text`), as
//!   observed. The null sender `<>` is not looked up.
//! - `check_rcpt` (`To:`, as with FEATURE(`blocklist_recipients`)): `REJECT` →
//!   `550 5.2.1 <addr>... Mailbox disabled for this recipient`; `ERROR:` always names the
//!   recipient; `DISCARD` → the whole message is discarded, and every later RCPT of the
//!   transaction is accepted without the user lookup (`QS_VERIFIED` in `srvrsmtp.c`).
//! - `delay_checks`: the `Connect:` and `From:` results are not given at connection or MAIL
//!   but at each RCPT, naming the recipient: `550 5.7.1 <rcpt>... Access denied`. The order
//!   is proto.m4's delay-mode `check_rcpt`: the `To:` entry first, then the relay test (the
//!   caller's), then `Spam:` (`FRIEND` exempts a recipient in friend mode; in hater mode only
//!   `HATER` recipients get the checks), then the `From:` result (an `OK` there ends the
//!   check), then the `Connect:` one; all before the user lookup.
//! - An `ERROR:` text is read as `buildaddr()` reads `$#error`: `ddd text` with a 4xx/5xx
//!   code; a `d.s.n ` at the start of the text is kept (and wins over an `ERROR:d.s.n:`);
//!   else the `ERROR:d.s.n:` code; else `<class>.0.0`. A text that does not start with three
//!   digits and a space becomes `553 5.3.0 text` (Sendmail's `usrerr("553 5.3.0 %s")`), as
//!   does any unknown value (`0` → `553 5.3.0 0`, observed; `FRIEND`/`HATER` outside
//!   `Spam:`; `QUARANTINE:`, which we do not implement). `SKIP` ends the lookup with
//!   nothing found. `OK` and `RELAY` accept (relaying itself is decided elsewhere).
//!
//! Must not: perform I/O, log, read the clock, or panic on any map or address. Our one
//! deliberate difference: a code outside 4xx/5xx (`ERROR:"250 fine"`) is never sent as is,
//! since a 2xx would tell the client it was accepted: it becomes `550 5.0.0 <text as written>`.
//! Invariants: every reply built here is one line without control characters, whatever
//! the map holds.

use std::fmt::Write as _;
use std::net::IpAddr;

use portcullis_smtp::{Reply, ReversePath, sendmail_address};

use crate::access::{AccessMap, Action, Entry, Tag};

/// `check_relay`: the `Connect:` check, at connection time.
pub const CHECK_RELAY: &str = "check_relay";
/// `check_mail`: the `From:` check, at MAIL.
pub const CHECK_MAIL: &str = "check_mail";
/// `check_rcpt`: the `To:` check, and the delayed checks, at RCPT.
pub const CHECK_RCPT: &str = "check_rcpt";

/// Sendmail's FEATURE(`delay_checks`): where `Connect:` and `From:` results are applied.
/// Configured as `[smtp] delay_checks = false | true (= friend) | "friend" | "hater"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DelayChecks {
    /// At connection time and at MAIL (no `delay_checks`).
    #[default]
    Off,
    /// At each RCPT, except to recipients with `Spam:<rcpt> FRIEND`.
    Friend,
    /// At each RCPT, only to recipients with `Spam:<rcpt> HATER`.
    Hater,
}

impl DelayChecks {
    /// True when the results wait for RCPT.
    pub fn is_on(self) -> bool {
        self != Self::Off
    }
}

/// A refusal read from an access value, before it is worded for a place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The reply code, always 4xx or 5xx.
    pub code: u16,
    /// The enhanced status code (`5.7.1`).
    pub enhanced: String,
    /// The text after the codes (`Access denied`), without control characters.
    pub text: String,
}

impl Refusal {
    /// `REJECT` in `Connect:` and `From:` (and delayed to RCPT): `550 5.7.1 Access denied`.
    pub fn access_denied() -> Self {
        Self::fixed(550, "5.7.1", "Access denied")
    }

    /// `REJECT` in `To:`: `550 5.2.1 Mailbox disabled for this recipient`.
    pub fn mailbox_disabled() -> Self {
        Self::fixed(550, "5.2.1", "Mailbox disabled for this recipient")
    }

    /// An `ERROR:` value (`explicit` is its `d.s.n` written before the reply, `text` the
    /// reply without quotes) or an unknown value (`explicit` None, `text` the value), read
    /// as Sendmail's `buildaddr()` reads `$#error` (see the module header).
    pub fn from_error(explicit: Option<&str>, text: &str) -> Self {
        let Some((code, rest)) = reply_code(text) else {
            return Self::fixed(553, "5.3.0", text);
        };
        if !(400..600).contains(&code) {
            // Never send a 2xx/3xx (or 6xx..9xx) as a refusal: the client would misread it.
            return Self::fixed(550, "5.0.0", text);
        }
        let (enhanced, text) = match enhanced_code(rest) {
            Some(n) => (
                rest.get(..n).unwrap_or_default().to_owned(),
                rest.get(n + 1..).unwrap_or_default(),
            ),
            None => match explicit.filter(|e| enhanced_code_whole(e)) {
                Some(e) => (e.to_owned(), rest),
                None => (format!("{}.0.0", code / 100), rest),
            },
        };
        Self {
            code,
            enhanced,
            text: clean(text),
        }
    }

    /// The reply at connection time or for a 4xx at MAIL: `<code> <d.s.n> <text>`.
    pub fn reply(&self) -> Reply {
        let mut line = self.enhanced.clone();
        if !self.text.is_empty() {
            line.push(' ');
            line.push_str(&self.text);
        }
        Reply::new(self.code, line)
    }

    /// The reply naming an address (`addr` with its brackets):
    /// `<code> <d.s.n> <addr>... <text>`.
    pub fn reply_naming(&self, addr: &str) -> Reply {
        let mut line = format!("{} {}...", self.enhanced, clean(addr));
        if !self.text.is_empty() {
            line.push(' ');
            line.push_str(&self.text);
        }
        Reply::new(self.code, line)
    }

    fn fixed(code: u16, enhanced: &str, text: &str) -> Self {
        Self {
            code,
            enhanced: enhanced.to_owned(),
            text: clean(text),
        }
    }
}

/// What one access lookup decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `OK`: accepted; no refusal.
    Accept,
    /// `RELAY`: accepted; relaying is decided elsewhere.
    Relay,
    /// A refusal, worded for its place.
    Reject(Reply),
    /// `DISCARD`: accept and throw the message(s) away (see [`SessionChecks::apply`]).
    Discard,
}

/// What one access lookup decided, with what the log line needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// [`CHECK_RELAY`], [`CHECK_MAIL`] or [`CHECK_RCPT`] (delayed results are `check_rcpt`).
    pub ruleset: &'static str,
    /// `check_relay`: the client's host name, or `[ip]` without one; else `<addr>`.
    pub arg1: String,
    /// `check_relay`: the client address in Sendmail's form; None for the others.
    pub arg2: Option<String>,
    /// What to do.
    pub outcome: Outcome,
    /// The entry that decided, its left-hand side as written (`Connect:127.0.0.2`); for a
    /// delayed result, the `Connect:` or `From:` entry.
    pub entry: String,
    /// The entry's line in the access file.
    pub line: usize,
}

impl Finding {
    /// Sendmail's log line for it (without the queue id), `relay` being the client as
    /// Sendmail shows it (`client2.example.test [127.0.0.2]`):
    /// `ruleset=check_relay, arg1=client2.example.test, arg2=127.0.0.2, relay=client2.example.test [127.0.0.2], reject=550 5.7.1 Access denied`,
    /// `ruleset=check_rcpt, arg1=<rcpt5@mx.example.test>, relay=localhost [127.0.0.1], discard`.
    /// Sendmail logs nothing for `OK` and `RELAY`; for them the line ends in `OK` or
    /// `RELAY`, for a log-only or debug record.
    pub fn log_text(&self, relay: &str) -> String {
        let mut out = format!("ruleset={}, arg1={}", self.ruleset, self.arg1);
        if let Some(arg2) = &self.arg2 {
            let _ = write!(out, ", arg2={arg2}");
        }
        let _ = write!(out, ", relay={relay}, ");
        match &self.outcome {
            Outcome::Reject(reply) => {
                let _ = write!(out, "reject={}", reply.to_log_string());
            }
            Outcome::Discard => out.push_str("discard"),
            Outcome::Accept => out.push_str("OK"),
            Outcome::Relay => out.push_str("RELAY"),
        }
        out
    }

    /// True for a refusal.
    pub fn is_reject(&self) -> bool {
        matches!(self.outcome, Outcome::Reject(_))
    }
}

/// What to do with one RCPT after the access checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptStep {
    /// Go on with the normal recipient check.
    Check,
    /// The transaction is being discarded: accept the recipient (`250 ... Recipient ok`)
    /// without the user lookup, as Sendmail does even for unknown users. Sendmail still
    /// refuses relaying there (that is part of `check_rcpt`); the caller keeps doing so.
    AcceptUnchecked,
    /// An entry decided. With [`Outcome::Discard`] the recipient is accepted as for
    /// [`RcptStep::AcceptUnchecked`] and, when enforced, [`SessionChecks::apply`] makes the
    /// transaction discard. [`Outcome::Accept`]/[`Outcome::Relay`] never come here.
    Act(Finding),
}

/// What `delay_checks` holds back until RCPT, and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Held {
    result: HeldResult,
    entry: String,
    line: usize,
}

/// A held result: Sendmail's `checkmail`/`checkrelay` answers `$#error`, `$#discard` or
/// `$# OK` (which ends the check, so a `From:` OK spares a `Connect:` REJECT client).
#[derive(Clone, Debug, PartialEq, Eq)]
enum HeldResult {
    Refuse(Refusal),
    Discard,
    Accept,
}

/// An entry's value read for one tag (`SKIP` is read as no entry).
enum Read {
    Accept,
    Relay,
    Discard,
    Refuse(Refusal),
}

/// The access checks of one connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionChecks {
    mode: DelayChecks,
    /// delay_checks: the `Connect:` refusal or discard, for every RCPT of the session.
    connect: Option<Held>,
    /// delay_checks: the current MAIL's `From:` refusal or discard.
    mail: Option<Held>,
    /// A `Connect:` DISCARD was applied: every message of the session is discarded.
    session_discard: bool,
    /// A `From:`/`To:` (or delayed) DISCARD was applied to this transaction.
    transaction_discard: bool,
}

impl SessionChecks {
    /// At connect: the `Connect:` lookup for the client (`host` its confirmed name, if any).
    /// Returns the checks' state and, without `delay_checks`, the finding to act on now
    /// (`OK`/`RELAY` included, so the caller knows; nothing found, `SKIP` → None). With
    /// `delay_checks` the result is held for RCPT and None is returned.
    pub fn connect(
        map: &AccessMap,
        mode: DelayChecks,
        host: Option<&str>,
        addr: IpAddr,
    ) -> (Self, Option<Finding>) {
        let mut checks = Self {
            mode,
            ..Self::default()
        };
        let Some((entry, read)) = read_entry(map.lookup_client_for(Tag::Connect, host, addr))
        else {
            return (checks, None);
        };
        if mode.is_on() {
            checks.connect = hold(read, &entry);
            return (checks, None);
        }
        let outcome = match read {
            Read::Accept => Outcome::Accept,
            Read::Relay => Outcome::Relay,
            Read::Discard => Outcome::Discard,
            Read::Refuse(r) => Outcome::Reject(r.reply()),
        };
        let finding = Finding {
            ruleset: CHECK_RELAY,
            arg1: client_name(host, addr),
            arg2: Some(sendmail_address(addr)),
            outcome,
            entry: entry.lhs,
            line: entry.line,
        };
        (checks, Some(finding))
    }

    /// At MAIL (after its syntax was accepted): the `From:` lookup. Returns the finding to
    /// act on now; None: go on (nothing found, `SKIP`, the null sender, or `delay_checks`,
    /// which holds the result for RCPT instead). `OK`/`RELAY` are returned too. A
    /// `Connect:` `OK` or `RELAY` does not exempt the sender: the two checks are
    /// independent, as in Sendmail (with and without `delay_checks`).
    pub fn mail(&mut self, map: &AccessMap, sender: &ReversePath) -> Option<Finding> {
        self.mail = None;
        let ReversePath::Mailbox(m) = sender else {
            return None;
        };
        let (entry, read) = read_entry(map.lookup_mail_for(Tag::From, &m.local, &m.domain))?;
        if self.mode.is_on() {
            self.mail = hold(read, &entry);
            return None;
        }
        let arg1 = format!("<{sender}>");
        let outcome = match read {
            Read::Accept => Outcome::Accept,
            Read::Relay => Outcome::Relay,
            Read::Discard => Outcome::Discard,
            // Observed: a 5xx names the sender, a 4xx does not.
            Read::Refuse(r) if r.code >= 500 => Outcome::Reject(r.reply_naming(&arg1)),
            Read::Refuse(r) => Outcome::Reject(r.reply()),
        };
        Some(Finding {
            ruleset: CHECK_MAIL,
            arg1,
            arg2: None,
            outcome,
            entry: entry.lhs,
            line: entry.line,
        })
    }

    /// At RCPT, before the local-recipient check, in the order of Sendmail's delay-mode
    /// `check_rcpt` (proto.m4): the `To:` lookup first (a refusal or a discard ends the
    /// check); then, when `relay_denied` (the recipient is not ours and the client may not
    /// relay), [`RcptStep::Check`] so the caller refuses relaying; then, with
    /// `delay_checks`, the recipient's `Spam:` entry decides whether the held results
    /// apply: the MAIL's `From:` result (`OK`/`RELAY` there ends the check), then the
    /// `Connect:` one. `<Postmaster>` is looked up as the unqualified `postmaster` (only
    /// `To:postmaster@` and untagged `postmaster@` can match it). Does not change the state
    /// (see the module header).
    pub fn rcpt(&self, map: &AccessMap, recipient: &ReversePath, relay_denied: bool) -> RcptStep {
        let (local, domain) = match recipient {
            ReversePath::Mailbox(m) => (m.local.as_str(), m.domain.as_str()),
            ReversePath::Postmaster => ("postmaster", ""),
            ReversePath::Null => return self.proceed(),
        };
        let arg1 = format!("<{recipient}>");
        match read_entry(map.lookup_mail_for(Tag::To, local, domain)) {
            Some((entry, Read::Refuse(r))) => {
                return self.act(Some(&r), &arg1, &entry.lhs, entry.line);
            }
            Some((entry, Read::Discard)) => return self.act(None, &arg1, &entry.lhs, entry.line),
            Some((_, Read::Accept | Read::Relay)) | None => {}
        }
        if relay_denied || self.discarding() {
            return self.proceed();
        }
        match self.held_for(map, local, domain) {
            Some(Held {
                result: HeldResult::Refuse(r),
                entry,
                line,
            }) => self.act(Some(r), &arg1, entry, *line),
            Some(Held {
                result: HeldResult::Discard,
                entry,
                line,
            }) => self.act(None, &arg1, entry, *line),
            Some(Held {
                result: HeldResult::Accept,
                ..
            })
            | None => self.proceed(),
        }
    }

    /// The caller enforces `finding`: a DISCARD makes the session (from `Connect:`) or the
    /// transaction (from `From:`, `To:` or a delayed result) discard. Refusals and
    /// acceptances change nothing here. Applying twice is harmless.
    pub fn apply(&mut self, finding: &Finding) {
        if finding.outcome != Outcome::Discard {
            return;
        }
        if finding.ruleset == CHECK_RELAY {
            self.session_discard = true;
        } else {
            self.transaction_discard = true;
        }
    }

    /// True when the message must be thrown away after its 250 (a DISCARD was applied to
    /// the session or to this transaction).
    pub fn discarding(&self) -> bool {
        self.session_discard || self.transaction_discard
    }

    /// A transaction ended (RSET, message done, new MAIL): forget the MAIL's held result
    /// and a `From:`/`To:` discard; keep what came from the connection.
    pub fn end_transaction(&mut self) {
        self.mail = None;
        self.transaction_discard = false;
    }

    /// The `delay_checks` mode the checks were made with.
    pub fn mode(&self) -> DelayChecks {
        self.mode
    }

    /// The held result that applies to this recipient: the MAIL's `From:` one first (an
    /// `OK` there ends the check), then the `Connect:` one, if the recipient's `Spam:` entry
    /// lets them (friend or hater mode).
    fn held_for(&self, map: &AccessMap, local: &str, domain: &str) -> Option<&Held> {
        let held = self.mail.as_ref().or(self.connect.as_ref())?;
        let spam = map
            .lookup_mail_for(Tag::Spam, local, domain)
            .map(|e| e.action());
        let applies = match self.mode {
            DelayChecks::Off => false,
            DelayChecks::Friend => spam != Some(Action::Friend),
            DelayChecks::Hater => spam == Some(Action::Hater),
        };
        applies.then_some(held)
    }

    /// An RCPT finding: a refusal naming the recipient, or (None) a discard.
    fn act(&self, refusal: Option<&Refusal>, arg1: &str, entry: &str, line: usize) -> RcptStep {
        let outcome = match refusal {
            Some(r) => Outcome::Reject(r.reply_naming(arg1)),
            None => Outcome::Discard,
        };
        RcptStep::Act(Finding {
            ruleset: CHECK_RCPT,
            arg1: arg1.to_owned(),
            arg2: None,
            outcome,
            entry: entry.to_owned(),
            line,
        })
    }

    fn proceed(&self) -> RcptStep {
        if self.discarding() {
            RcptStep::AcceptUnchecked
        } else {
            RcptStep::Check
        }
    }
}

/// The parts of an entry a finding keeps.
struct Found {
    lhs: String,
    line: usize,
}

/// Reads the entry a lookup found: its value as the `check_*` rulesets read it.
/// `SKIP` → None (it stopped the lookup with nothing found); `FRIEND`/`HATER` and unknown
/// values → `553 5.3.0 <value>` (or the reply the value spells); the `To:` `REJECT` has its
/// own text.
/// Sendmail's `Connect:<client> RELAY` (also untagged, as `check_relay` reads it): the
/// client may relay to any domain. Looked up by itself, whatever `delay_checks` says, as
/// proto.m4's `Relay_ok` does at each RCPT.
pub fn client_may_relay(map: &AccessMap, host: Option<&str>, addr: IpAddr) -> bool {
    matches!(
        read_entry(map.lookup_client_for(Tag::Connect, host, addr)),
        Some((_, Read::Relay))
    )
}

/// Sendmail's `To:<domain> RELAY` (or untagged): mail to this recipient's domain may be
/// relayed by anyone, as with a relay domain. Only the domain keys (and their parents)
/// count: a `To:user@domain` RELAY entry accepts that address, it gives no relaying rights.
pub fn recipient_domain_relays(map: &AccessMap, recipient: &ReversePath) -> bool {
    let ReversePath::Mailbox(m) = recipient else {
        return false;
    };
    map.lookup_mail_for(Tag::To, "", &m.domain)
        .is_some_and(|entry| matches!(entry.action(), Action::Relay))
}

fn read_entry(entry: Option<Entry<'_>>) -> Option<(Found, Read)> {
    let entry = entry?;
    let read = match entry.action() {
        Action::Skip => return None,
        Action::Ok => Read::Accept,
        Action::Relay => Read::Relay,
        Action::Discard => Read::Discard,
        Action::Reject if entry.tag == Tag::To => Read::Refuse(Refusal::mailbox_disabled()),
        Action::Reject => Read::Refuse(Refusal::access_denied()),
        Action::Error { enhanced, reply } => Read::Refuse(Refusal::from_error(enhanced, reply)),
        Action::Friend | Action::Hater => Read::Refuse(Refusal::from_error(None, entry.value)),
        Action::Other(text) => Read::Refuse(Refusal::from_error(None, text)),
    };
    let found = Found {
        lhs: entry.lhs().to_string(),
        line: usize::try_from(entry.line).unwrap_or(usize::MAX),
    };
    Some((found, read))
}

/// What `delay_checks` keeps of a result for RCPT.
fn hold(read: Read, found: &Found) -> Option<Held> {
    let result = match read {
        Read::Refuse(r) => HeldResult::Refuse(r),
        Read::Discard => HeldResult::Discard,
        Read::Accept | Read::Relay => HeldResult::Accept,
    };
    Some(Held {
        result,
        entry: found.lhs.clone(),
        line: found.line,
    })
}

/// `check_relay`'s arg1: the client's name (without a trailing dot), or `[addr]`.
fn client_name(host: Option<&str>, addr: IpAddr) -> String {
    match host.map(|h| h.strip_suffix('.').unwrap_or(h)) {
        Some(h) if !h.is_empty() => clean(h),
        _ => format!("[{}]", sendmail_address(addr)),
    }
}

/// `ddd text`: the code and the text after its space (Sendmail's `ISSMTPCODE` and
/// `ubuf[3] == ' '`).
fn reply_code(text: &str) -> Option<(u16, &str)> {
    let digits = text.get(..3)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) || text.as_bytes().get(3) != Some(&b' ') {
        return None;
    }
    Some((digits.parse().ok()?, text.get(4..)?))
}

/// Length of an enhanced status code at the start of `s` followed by a space (Sendmail's
/// `isenhsc(s, ' ')`: class 2, 4 or 5, then two numbers of one to three digits).
fn enhanced_code(s: &str) -> Option<usize> {
    let (code, _) = s.split_once(' ')?;
    enhanced_code_whole(code).then_some(code.len())
}

/// True when all of `s` is an enhanced status code (`isenhsc(s, '\0')`).
fn enhanced_code_whole(s: &str) -> bool {
    let mut parts = s.split('.');
    let class = parts.next().is_some_and(|c| matches!(c, "2" | "4" | "5"));
    let number = |p: Option<&str>| {
        p.is_some_and(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
    };
    class && number(parts.next()) && number(parts.next()) && parts.next().is_none()
}

/// `s` with every control character (CR and LF above all) turned into a space, so a reply
/// stays one line whatever the map holds.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests;
