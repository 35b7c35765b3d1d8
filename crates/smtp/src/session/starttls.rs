//! STARTTLS in the session (RFC 3207): the command, the injection defence and the reset.
//!
//! Role: decide the reply to STARTTLS, and on `220 2.0.0 Ready to start TLS` throw away every
//! byte the client sent after the STARTTLS line before the driver starts the handshake, so
//! plaintext pipelined behind STARTTLS (CVE-2011-0411 and its kin: a man in the middle appends
//! commands that would run inside the client's TLS session) is never executed. After the
//! handshake [`Session::tls_established`] puts the session back before EHLO (RFC 3207 §4.2:
//! everything learnt from the client before TLS is forgotten).
//!
//! Replies (Sendmail's srvrsmtp.c, `case CMDSTLS`): with arguments `501 5.5.2 Syntax error
//! (no parameters allowed)`; inside a transaction `503 5.5.0 TLS not permitted during a mail
//! transaction`; inside TLS `454 4.3.3 TLS not available after start`; TLS not offered (no
//! certificate configured) `500 5.5.1 Command unrecognized`, as a Sendmail built without TLS;
//! in the rejecting mode `550 5.0.0 Command rejected` (handled before this module). STARTTLS
//! before EHLO is accepted, as Sendmail does (RFC 3207 does not require EHLO first).
//!
//! Must not: do the handshake or look at certificates (the driver does; it hands the result in
//! as a [`TlsInfo`]).

use std::time::Instant;

use super::{Event, Phase, Session, WaitPhase};
use crate::reply;

/// What Sendmail's `${verify}` says about the client's certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVerify {
    /// `NOT`: no certificate was asked for (`[tls] request_client_cert = false`).
    Not,
    /// `NO`: asked for, none presented.
    No,
    /// `FAIL`: presented, not verified (we hold no CA list to verify it against).
    Fail,
}

impl TlsVerify {
    /// Sendmail's word.
    pub fn name(self) -> &'static str {
        match self {
            Self::Not => "NOT",
            Self::No => "NO",
            Self::Fail => "FAIL",
        }
    }
}

/// The TLS session as negotiated, for logs and the Received header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.2` or `TLSv1.3` (Sendmail's `${tls_version}`).
    pub version: &'static str,
    /// The cipher suite's IANA name, e.g. `TLS_AES_256_GCM_SHA384` (`${cipher}`).
    pub cipher: &'static str,
    /// The symmetric key length in bits (`${cipher_bits}`).
    pub bits: u16,
    /// The client certificate (`${verify}`).
    pub verify: TlsVerify,
}

impl TlsInfo {
    /// Sendmail's Received-header comment:
    /// `(version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384 bits=256 verify=NO)`.
    pub fn comment(&self) -> String {
        format!(
            "(version={} cipher={} bits={} verify={})",
            self.version,
            self.cipher,
            self.bits,
            self.verify.name()
        )
    }
}

impl Session {
    /// True when STARTTLS is offered to this client now: TLS is configured and not started
    /// yet (after the handshake it is not offered again, RFC 3207 §4.2).
    pub fn offers_starttls(&self) -> bool {
        self.cfg.starttls && self.tls.is_none()
    }

    /// The TLS session, once established.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// MAIL is refused with `530 5.7.0 Must issue a STARTTLS command first` until TLS is up
    /// (`[tls] required_for` lists this client). Call before the first command.
    pub fn require_tls(&mut self) {
        self.tls_required = true;
    }

    /// The handshake succeeded: the session starts over before EHLO (RFC 3207 §4.2), with no
    /// new greeting. The HELO count restarts too, as Sendmail's `n_helo = 0`.
    pub fn tls_established(&mut self, info: TlsInfo, now: Instant) {
        if !matches!(self.phase, Phase::StartTls) {
            return;
        }
        self.tls = Some(info);
        self.helo = None;
        self.end_transaction();
        self.abuse[0] = 0;
        self.input.clear();
        self.phase = Phase::Command;
        self.arm(WaitPhase::Helo, now);
    }

    /// The handshake failed or ran out of time: nothing more can be said in plaintext, so
    /// the connection closes (RFC 3207 §4.1; Sendmail drops it too). The driver logs why.
    pub fn tls_failed(&mut self) {
        if matches!(self.phase, Phase::StartTls) {
            self.close();
        }
    }

    /// STARTTLS, `args` true when it had arguments; `line` is the command line (for the
    /// unknown-command reply when TLS is not offered).
    pub(super) fn cmd_starttls(&mut self, args: bool, line: &[u8], now: Instant) {
        if !self.cfg.starttls {
            self.cmd_unknown(line, now);
            return;
        }
        let refusal = if args {
            Some(reply::starttls_no_parameters())
        } else if self.tls.is_some() {
            Some(reply::tls_already_active())
        } else if self.tx.is_some() {
            Some(reply::tls_in_transaction())
        } else {
            None
        };
        if let Some(r) = refusal {
            self.send(&r);
            self.arm_for_next_command(now);
            return;
        }
        self.send(&reply::ready_to_start_tls());
        // RFC 3207 §4.2 / RFC 2920 §3.1: STARTTLS ends a pipelined group; whatever came after
        // it in plaintext is dropped here, never parsed.
        let discarded = self.input.len();
        self.input = Vec::new();
        self.skipping_long_line = false;
        self.events.push_back(Event::StartTls { discarded });
        self.phase = Phase::StartTls;
        self.arm(WaitPhase::StartTls, now);
    }
}
