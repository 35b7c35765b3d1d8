//! The SMTP server session as a sans-IO state machine.
//!
//! Role: one [`Session`] per connection. The driver feeds it bytes ([`Session::handle_input`]),
//! end of input ([`Session::handle_eof`]) and the passing of time ([`Session::handle_timeout`]);
//! it drains replies ([`Session::take_output`]) and events ([`Session::poll_event`]), and sleeps
//! until [`Session::poll_timeout`]. Model: quinn-proto's `Connection`.
//!
//! The session asks, the policy answers (design.md §3.2): syntax and sequence errors are the
//! session's own, but every discretionary step (HELO, MAIL, RCPT, DATA) becomes an
//! [`Event::Ask`]; the session stops reading input until the driver calls
//! [`Session::answer`]. A finished message becomes [`Event::Commit`]; the session waits for
//! [`Session::commit_done`] before replying, so `250` is only ever sent for a durable message.
//!
//! STARTTLS (RFC 3207) is in the child module `starttls`: the command, the discarding of
//! plaintext pipelined behind it, and the reset after the handshake the driver does.
//!
//! Must not: read a socket or the clock, log, or block. Invariants: input is buffered only up to
//! one command line (512 octets) plus whatever arrived while the session waits for an answer
//! (the driver does not read in that state, see [`Session::wants_input`]); the event queue holds
//! at most a few entries because processing stops at every question.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Action;
use crate::address::ReversePath;
use crate::command::{self, Command, MailParams};
use crate::data::{BareLineEndings, DataProblem, DataReceiver};
use crate::reply::{self, Reply};

mod starttls;

pub use starttls::{TlsInfo, TlsVerify};

/// Per-phase timeouts (Sendmail's names; see docs/config.md for what each phase is).
/// The configuration crate re-exports this type, so there is one definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Greeting sent → first command.
    pub initial: Duration,
    /// Waiting for a command while no HELO/EHLO has been accepted yet.
    pub helo: Duration,
    /// After HELO/EHLO, waiting for MAIL.
    pub mail: Duration,
    /// In a transaction, waiting for RCPT or DATA.
    pub rcpt: Duration,
    /// After 354, until the first data bytes.
    pub datainit: Duration,
    /// Between two reads of message data.
    pub datablock: Duration,
    /// After the final dot: the time allowed to make the message durable.
    pub datafinal: Duration,
    /// After RSET.
    pub rset: Duration,
    /// After QUIT (flushing the 221).
    pub quit: Duration,
    /// After NOOP, VRFY, HELP and other commands.
    pub misc: Duration,
    /// Cap on every command read.
    pub command: Duration,
    /// STARTTLS: from the `220 Ready to start TLS` to the end of the handshake (Sendmail's
    /// `Timeout.starttls`). Inside TLS the other phases apply as before.
    pub starttls: Duration,
}

impl Timeouts {
    /// RFC 5321 §4.5.3.2's values (quit and misc have none there; 2m follows Sendmail).
    /// STARTTLS has none either: 1m, ample for a handshake (Sendmail's 1h would let a client
    /// that stalls mid-handshake hold its connection for an hour).
    pub const RFC5321: Self = Self {
        initial: Duration::from_secs(5 * 60),
        helo: Duration::from_secs(5 * 60),
        mail: Duration::from_secs(5 * 60),
        rcpt: Duration::from_secs(5 * 60),
        datainit: Duration::from_secs(2 * 60),
        datablock: Duration::from_secs(3 * 60),
        datafinal: Duration::from_secs(10 * 60),
        rset: Duration::from_secs(5 * 60),
        quit: Duration::from_secs(2 * 60),
        misc: Duration::from_secs(2 * 60),
        command: Duration::from_secs(5 * 60),
        starttls: Duration::from_secs(60),
    };

    /// The configured timeout of `phase`, without the cap.
    pub fn phase(&self, phase: WaitPhase) -> Duration {
        match phase {
            WaitPhase::Initial => self.initial,
            WaitPhase::Helo => self.helo,
            WaitPhase::Mail => self.mail,
            WaitPhase::Rcpt => self.rcpt,
            WaitPhase::DataInit => self.datainit,
            WaitPhase::DataBlock => self.datablock,
            WaitPhase::DataFinal => self.datafinal,
            WaitPhase::Rset => self.rset,
            WaitPhase::Quit => self.quit,
            WaitPhase::Misc => self.misc,
            WaitPhase::StartTls => self.starttls,
        }
    }

    /// The timeout to arm for `phase`: `min(phase, command)` for command reads, otherwise
    /// the phase's own value.
    pub fn effective(&self, phase: WaitPhase) -> Duration {
        let own = self.phase(phase);
        if phase.is_command_read() {
            own.min(self.command)
        } else {
            own
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self::RFC5321
    }
}

/// Settings shared by all sessions of a server (built once per config load).
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Our name, in the greeting and replies (`$j`).
    pub hostname: String,
    /// Largest message accepted, advertised as SIZE.
    pub max_message_bytes: u64,
    /// Bare LF/CR inside DATA.
    pub bare_line_endings: BareLineEndings,
    /// Per-phase timeouts.
    pub timeouts: Timeouts,
    /// Hard cap of recipients per message (RFC 5321 §4.5.3.1.8 requires at least 100).
    pub max_recipients: usize,
    /// Unknown commands tolerated; the next one gets 421 (Sendmail's MAXBADCOMMANDS, 25).
    pub max_bad_commands: u32,
    /// The deliberate delays of one session (DelayLA, throttles) never add up past this; the
    /// delay that would is answered with `421 4.3.2 ... Too busy` instead.
    pub delay_budget: Duration,
    /// Sendmail's MaxRecipientsPerMessage: accepted recipients per message; the next RCPTs
    /// get `452 4.5.3 Too many recipients`. 0: only `max_recipients` applies.
    pub max_recipients_per_message: usize,
    /// Sendmail's BadRcptThrottle: once a transaction has this many rejected RCPTs, each
    /// later RCPT waits `bad_rcpt_throttle_delay` first. 0 = off.
    pub bad_rcpt_throttle: u32,
    /// The wait of the throttle (Sendmail: 1 s).
    pub bad_rcpt_throttle_delay: Duration,
    /// Sendmail's BadRcptShutdown: after this many rejected RCPTs in the session, the next
    /// RCPT gets `421 4.7.0 ... Too many bad recipients` and the session closes. 0 = off.
    pub bad_rcpt_shutdown: u32,
    /// PIPELINING is advertised (RFC 2920). A client it is not advertised to must wait for
    /// each reply: a command sent before the previous reply is a synchronization error.
    pub pipelining: bool,
    /// NOOPs after which each NOOP's reply is delayed, doubling from 1 s (Sendmail's
    /// MaxNOOPCommands); 0 = no limit. HELO/EHLO (3), VRFY/EXPN (6) and ETRN (8) have
    /// Sendmail's fixed limits.
    pub max_noop_commands: u32,
    /// What each of the session's own defences does with a finding.
    pub actions: DefenceActions,
    /// STARTTLS is offered (RFC 3207): a certificate is configured. Without it STARTTLS is
    /// an unknown command, as in a Sendmail built without TLS.
    pub starttls: bool,
}

/// The `action` of each defence the session runs itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DefenceActions {
    /// `smtp.open_proxy_action`: a first command of GET, POST, CONNECT or USER.
    pub open_proxy: Action,
    /// `limits.max_recipients_action`: RCPTs past `max_recipients_per_message`.
    pub max_recipients: Action,
    /// `limits.bad_rcpt_action`: the bad-recipient throttle and shutdown.
    pub bad_rcpt: Action,
    /// `smtp.stuffing_action`: input after HELO/EHLO or DATA before its reply.
    pub stuffing: Action,
    /// `smtp.pipelining_action`: a command before the previous reply, PIPELINING not offered.
    pub pipelining: Action,
    /// `limits.command_abuse_action`: the NOOP/HELO/VRFY/ETRN limits and bad commands.
    pub command_abuse: Action,
}

/// Per-client switches, from the access map's `Srv_Features:` letters (Sendmail's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientFeatures {
    /// `P`: PIPELINING is not advertised to this client, which then must wait for each reply.
    pub no_pipelining: bool,
    /// `F`: input sent ahead of a reply is not checked (neither stuffing nor synchronization).
    pub lax_pipelining: bool,
}

impl ClientFeatures {
    /// Reads Sendmail's `Srv_Features:` value: the letters `P` and `F` (case matters, as in
    /// Sendmail, where the lower-case letter means the opposite); other letters are ignored.
    pub fn parse(value: &str) -> Self {
        Self {
            no_pipelining: value.contains('P'),
            lax_pipelining: value.contains('F'),
        }
    }
}

impl SessionConfig {
    /// Defaults for `hostname`: RFC timeouts, 10 MiB, reject bare LF, 1000 recipients.
    pub fn new(hostname: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
            max_message_bytes: 10 * 1024 * 1024,
            bare_line_endings: BareLineEndings::Reject,
            timeouts: Timeouts::default(),
            max_recipients: 1000,
            max_bad_commands: 25,
            delay_budget: Duration::from_secs(60),
            max_recipients_per_message: 0,
            bad_rcpt_throttle: 0,
            bad_rcpt_throttle_delay: Duration::from_secs(1),
            bad_rcpt_shutdown: 0,
            pipelining: true,
            max_noop_commands: 20,
            actions: DefenceActions::default(),
            starttls: false,
        }
    }
}

/// Who is on the other end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientInfo {
    /// The peer address.
    pub addr: IpAddr,
    /// The verified host name, when one is known.
    pub name: Option<String>,
}

impl ClientInfo {
    /// `name [addr]` or `[addr]`, as Sendmail shows the client in replies and logs.
    pub fn display(&self) -> String {
        match &self.name {
            Some(name) => format!("{name} [{}]", sendmail_address(self.addr)),
            None => format!("[{}]", sendmail_address(self.addr)),
        }
    }
}

/// Sendmail's textual form of an address: IPv4 dotted, IPv6 as `IPv6:` plus the full
/// uncompressed form (reference, "Standard replies": `[IPv6:0:0:0:0:0:0:0:1]`).
pub fn sendmail_address(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!(
                    "IPv6:{:x}:{:x}:{:x}:{:x}:{:x}:{:x}:{:x}:{:x}",
                    s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]
                )
            }
        },
    }
}

/// A question for policy. The session does nothing more until [`Session::answer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ask {
    /// HELO or EHLO with this argument.
    Helo {
        /// The argument.
        name: String,
        /// EHLO rather than HELO.
        extended: bool,
    },
    /// MAIL FROM.
    Mail {
        /// The reverse-path.
        sender: ReversePath,
        /// The declared SIZE, if any.
        size: Option<u64>,
    },
    /// RCPT TO (a mailbox, or Postmaster).
    Rcpt {
        /// The forward-path.
        recipient: ReversePath,
        /// Recipients already accepted in this transaction.
        accepted: usize,
    },
    /// DATA, with at least one accepted recipient.
    Data,
}

/// Policy's answer to an [`Ask`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead with the normal reply.
    Accept,
    /// Refuse this step with the reply; the session goes on.
    Reject(Reply),
    /// Send the reply, then close the connection.
    Close(Reply),
    /// Close the connection without a reply (a defence's `drop` action).
    Drop,
}

/// A complete message to be made durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The reverse-path (empty for `<>`).
    pub sender: String,
    /// The accepted forward-paths.
    pub recipients: Vec<String>,
    /// The HELO/EHLO argument.
    pub helo: String,
    /// `ESMTP` after EHLO, `ESMTPS` after EHLO inside TLS (RFC 3848), `SMTP` after HELO.
    pub protocol: &'static str,
    /// The TLS session the message came through, if any (for the Received header).
    pub tls: Option<TlsInfo>,
    /// The message as received (unstuffed, CRLF), without our Received header.
    pub data: Vec<u8>,
}

/// Why the driver could not make a message durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitError {
    /// Out of space, or the spool refuses more work right now: `452 4.3.1`.
    Storage,
    /// Any other failure: `451 4.3.0`.
    Failed,
}

/// Something the driver should record (log line, metric). The session has already acted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// No command within the phase's timeout; the connection was closed without a reply.
    CommandTimeout {
        /// The timeout that ran out.
        phase: WaitPhase,
    },
    /// No data within `datainit`/`datablock`; `421 4.4.1` was sent.
    DataTimeout,
    /// The client closed its side.
    ClientClosed {
        /// True when it happened inside DATA (the message is lost, no 250 was given).
        in_data: bool,
    },
    /// A message was refused after its data.
    MessageRefused {
        /// The reply given.
        reply: Reply,
        /// Message size in bytes.
        size: u64,
    },
    /// The commit did not finish within `datafinal`; `451` was sent.
    CommitTimeout,
    /// Commands are being delayed (Sendmail's `delaying=<CMD>, load average=N >= M`); noted
    /// for the first delayed command and then at most every [`DELAY_NOTE_EVERY`].
    Delaying {
        /// The command about to be delayed (`EHLO`, `MAIL`, ...).
        command: &'static str,
        /// Why, from [`CommandDelay::reason`].
        reason: String,
    },
    /// A defence found something and applied `action` (enforce: the reply Sendmail gives;
    /// drop: closed without a reply; ignore: nothing but this note).
    Defence {
        /// What was found.
        finding: Finding,
        /// What was done about it.
        action: Action,
    },
    /// The next delay would have passed the session's delay budget: `421 4.3.2 ... Too
    /// busy` was sent and the session closed.
    DelayBudgetSpent {
        /// The deliberate delay the session had already been given.
        spent: Duration,
        /// The command that was not delayed.
        command: &'static str,
    },
}

/// What one of the session's defences found (Sendmail's log wording in brackets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// The first command looked like HTTP or POP (`GET`, `POST`, `CONNECT`, `USER`):
    /// `421 4.7.0 ... Rejecting open proxy` (`probable open proxy: command=...`).
    OpenProxy {
        /// The command line, printable, at most 40 characters (Sendmail's `command=`).
        command: String,
    },
    /// A RCPT past `max_recipients_per_message`: `452 4.5.3 Too many recipients`.
    TooManyRecipients,
    /// Too many rejected RCPTs.
    RcptFlood(RcptFlood),
    /// More than `max_bad_commands` unknown or refused commands: `421 4.7.0 ... Too many bad
    /// commands`.
    TooManyBadCommands,
    /// Input arrived after HELO/EHLO or DATA before its reply (Sendmail 8.18's fix for
    /// CVE-2023-51765): `554 5.5.0 SMTP protocol error` (`rejecting server EHLO from ...
    /// due to traffic before response`).
    Stuffing {
        /// `HELO`, `EHLO` or `DATA`.
        command: &'static str,
        /// The start of the input that came too early, printable.
        next: String,
    },
    /// PIPELINING is not offered to this client and it sent input before a reply: `554
    /// 5.5.0 SMTP protocol synchronization error`.
    Unsynchronized {
        /// The command whose reply was not awaited (`END-OF-MESSAGE` after the final dot).
        command: &'static str,
        /// The start of the input that came too early, printable.
        next: String,
    },
    /// A command past its limit (Sendmail's checksmtpattack): replies are delayed from now
    /// on (`possible SMTP attack: command=NOOP, count=20`).
    CommandFlood {
        /// `HELO/EHLO`, `NOOP`, `VRFY/EXPN` or `ETRN`.
        command: &'static str,
        /// The count reached (the limit).
        count: u32,
    },
}

impl Finding {
    /// The configuration key of the action that applies (for "ignored (<key> = ignore)").
    pub fn action_key(&self) -> &'static str {
        match self {
            Self::OpenProxy { .. } => "smtp.open_proxy_action",
            Self::TooManyRecipients => "limits.max_recipients_action",
            Self::RcptFlood(_) => "limits.bad_rcpt_action",
            Self::TooManyBadCommands | Self::CommandFlood { .. } => "limits.command_abuse_action",
            Self::Stuffing { .. } => "smtp.stuffing_action",
            Self::Unsynchronized { .. } => "smtp.pipelining_action",
        }
    }
}

/// Recipient defences the driver logs (Sendmail's wording in brackets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RcptFlood {
    /// The transaction reached `bad_rcpt_throttle`: its RCPTs are delayed from now on
    /// (`Possible SMTP RCPT flood, throttling.`), once per transaction.
    Throttling,
    /// `bad_rcpt_shutdown` reached: 421 sent, session closed (`Possible SMTP RCPT flood,
    /// shutting down connection.`).
    ShuttingDown,
}

/// Sendmail's compile-time checksmtpattack limits (MAXHELOCOMMANDS, MAXVRFYCOMMANDS,
/// MAXETRNCOMMANDS); NOOP's is `SessionConfig::max_noop_commands`.
const MAX_HELO_COMMANDS: u32 = 3;
const MAX_VRFY_COMMANDS: u32 = 6;
const MAX_ETRN_COMMANDS: u32 = 8;
/// Sendmail caps one checksmtpattack delay at MAXTIMEOUT (4 minutes).
const MAX_COMMAND_FLOOD_DELAY: Duration = Duration::from_secs(240);

/// Sendmail logs its `delaying=` line at most this often per session.
pub const DELAY_NOTE_EVERY: Duration = Duration::from_secs(15);

/// A wait the server puts before each command while it is busy (Sendmail's DelayLA): set
/// and cleared by the driver with [`Session::set_command_delay`] as its load changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandDelay {
    /// How long before each command (Sendmail: 1 s).
    pub each: Duration,
    /// Why, for the log: e.g. `load average=3 >= 2`.
    pub reason: String,
}

/// Output of the session other than reply bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A question for policy.
    Ask(Ask),
    /// Make this message durable, then call [`Session::commit_done`].
    Commit(Box<Message>),
    /// Something to record.
    Note(Note),
    /// STARTTLS was accepted and `220 2.0.0 Ready to start TLS` queued: write the output,
    /// drop whatever else was read, do the TLS handshake (by [`Session::poll_timeout`]), then
    /// call [`Session::tls_established`] or [`Session::tls_failed`].
    StartTls {
        /// Plaintext bytes the client sent after the STARTTLS line, thrown away unread (the
        /// CVE-2011-0411 class of command injection).
        discarded: usize,
    },
}

/// Which wait a deadline belongs to (Sendmail's timeout names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WaitPhase {
    /// `initial`.
    Initial,
    /// `helo`.
    Helo,
    /// `mail`.
    Mail,
    /// `rcpt`.
    Rcpt,
    /// `datainit`.
    DataInit,
    /// `datablock`.
    DataBlock,
    /// `datafinal`.
    DataFinal,
    /// `rset`.
    Rset,
    /// `quit`.
    Quit,
    /// `misc`.
    Misc,
    /// `starttls`: the TLS handshake after `220 Ready to start TLS`.
    StartTls,
}

impl WaitPhase {
    /// Waits for a command line; `command` caps exactly these. Data reads, the server's own
    /// work after the dot and the closing flush are not command reads.
    pub fn is_command_read(self) -> bool {
        matches!(
            self,
            Self::Initial | Self::Helo | Self::Mail | Self::Rcpt | Self::Rset | Self::Misc
        )
    }

    /// The option name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Initial => "initial",
            Self::Helo => "helo",
            Self::Mail => "mail",
            Self::Rcpt => "rcpt",
            Self::DataInit => "datainit",
            Self::DataBlock => "datablock",
            Self::DataFinal => "datafinal",
            Self::Rset => "rset",
            Self::Quit => "quit",
            Self::Misc => "misc",
            Self::StartTls => "starttls",
        }
    }
}

/// Counters the driver reads for its end-of-session log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// A MAIL command was issued (Sendmail logs "did not issue MAIL/EXPN/VRFY/ETRN" otherwise).
    pub mail_issued: bool,
    /// Messages accepted with 250.
    pub messages: u32,
    /// Commands processed.
    pub commands: u32,
    /// Unknown commands so far.
    pub bad_commands: u32,
    /// Deliberate delay given so far (counted against the delay budget).
    pub delayed: Duration,
}

#[derive(Debug)]
enum Phase {
    /// Reading command lines.
    Command,
    /// Reading message data.
    Data(DataReceiver),
    /// Waiting for [`Session::answer`].
    Asking(Pending),
    /// Waiting for [`Session::commit_done`].
    Committing,
    /// Holding this command line until the deadline (a deliberate delay).
    Delaying(Vec<u8>),
    /// The 220 to STARTTLS is out; the driver does the handshake. No input is taken.
    StartTls,
    /// Done; the driver should flush and close.
    Closed,
}

/// What an outstanding [`Ask`] was about.
#[derive(Debug)]
enum Pending {
    Helo {
        name: String,
        extended: bool,
    },
    Mail {
        sender: ReversePath,
        params: MailParams,
    },
    Rcpt {
        recipient: ReversePath,
    },
    Data,
}

#[derive(Debug)]
struct Transaction {
    sender: ReversePath,
    recipients: Vec<ReversePath>,
}

#[derive(Debug)]
struct Helo {
    name: String,
    extended: bool,
}

/// One SMTP server session.
#[derive(Debug)]
pub struct Session {
    cfg: Arc<SessionConfig>,
    client: ClientInfo,
    phase: Phase,
    /// Unprocessed input (a partial command line, or bytes that arrived while asking).
    input: Vec<u8>,
    /// Discarding an over-long command line until its LF.
    skipping_long_line: bool,
    output: Vec<u8>,
    events: VecDeque<Event>,
    deadline: Option<(Instant, WaitPhase)>,
    helo: Option<Helo>,
    tx: Option<Transaction>,
    queue_id: Option<String>,
    shutting_down: bool,
    /// Sendmail's rejecting ("null server") mode: restricted commands get this reply.
    rejecting: Option<Reply>,
    /// Commands refused in rejecting mode (the 26th gets 421).
    refused: u32,
    /// The wait before each command while the server is busy.
    command_delay: Option<CommandDelay>,
    /// When the last [`Note::Delaying`] was given.
    delay_noted_at: Option<Instant>,
    /// Rejected RCPTs in this transaction (reset by MAIL) and in the whole session.
    tx_bad_rcpts: u32,
    session_bad_rcpts: u32,
    /// [`RcptFlood::Throttling`] was noted in this transaction.
    throttle_noted: bool,
    /// Findings an `ignore` action notes once per session: shutdown, bad commands, sync.
    ignored: Ignored,
    /// `Srv_Features:` switches for this client.
    features: ClientFeatures,
    /// HELO/EHLO, NOOP, VRFY/EXPN and ETRN commands so far (Sendmail's checksmtpattack).
    abuse: [u32; 4],
    stats: SessionStats,
    /// The TLS session, once STARTTLS succeeded.
    tls: Option<TlsInfo>,
    /// MAIL is refused before TLS (`[tls] required_for` lists this client).
    tls_required: bool,
}

/// Findings noted once per session when their action is `ignore` (they would otherwise
/// repeat with every command).
#[derive(Debug, Default)]
struct Ignored {
    rcpt_shutdown: bool,
    bad_commands: bool,
    unsynchronized: bool,
}

impl Session {
    /// A new session whose greeting (dated `date`, the connection time) is already queued.
    pub fn new(cfg: Arc<SessionConfig>, client: ClientInfo, date: &str, now: Instant) -> Self {
        let greeting = reply::greeting(&cfg.hostname, date);
        Self::with_greeting(cfg, client, &greeting, now)
    }

    /// A new session that opens with `greeting` instead of the 220, e.g. the 554 given to a
    /// client that talked before the greeting (combine with [`Session::reject_commands`]).
    pub fn with_greeting(
        cfg: Arc<SessionConfig>,
        client: ClientInfo,
        greeting: &Reply,
        now: Instant,
    ) -> Self {
        let mut s = Self {
            cfg,
            client,
            phase: Phase::Command,
            input: Vec::new(),
            skipping_long_line: false,
            output: Vec::new(),
            events: VecDeque::new(),
            deadline: None,
            helo: None,
            tx: None,
            queue_id: None,
            shutting_down: false,
            rejecting: None,
            refused: 0,
            command_delay: None,
            delay_noted_at: None,
            tx_bad_rcpts: 0,
            session_bad_rcpts: 0,
            throttle_noted: false,
            ignored: Ignored::default(),
            features: ClientFeatures::default(),
            abuse: [0; 4],
            stats: SessionStats::default(),
            tls: None,
            tls_required: false,
        };
        s.send(greeting);
        s.arm(WaitPhase::Initial, now);
        s
    }

    /// Enters Sendmail's rejecting ("null server") mode: HELO, EHLO (advertising only
    /// ENHANCEDSTATUSCODES), NOOP, RSET, QUIT and unknown commands are answered normally;
    /// every other command gets `reply`; the command after `max_bad_commands` refusals gets
    /// `421 4.7.0 <host> Too many bad commands`. Nothing is asked of policy in this mode.
    pub fn reject_commands(&mut self, reply: Reply) {
        self.rejecting = Some(reply);
    }

    /// True in rejecting mode (Sendmail then skips its "did not issue MAIL" line).
    pub fn is_rejecting(&self) -> bool {
        self.rejecting.is_some()
    }

    /// Ends the session once the output queued so far is written (the `drop` action).
    pub fn close_now(&mut self) {
        self.close();
    }

    /// The client's `Srv_Features:` switches (before its first command).
    pub fn set_features(&mut self, features: ClientFeatures) {
        self.features = features;
    }

    /// True when this client is offered PIPELINING (the configuration, less `Srv_Features: P`).
    pub fn offers_pipelining(&self) -> bool {
        self.cfg.pipelining && !self.features.no_pipelining
    }

    /// Starts (Some) or stops (None) waiting before each command; the driver calls this as
    /// its load signal changes. A command already being delayed finishes its wait.
    pub fn set_command_delay(&mut self, delay: Option<CommandDelay>) {
        self.command_delay = delay;
    }

    // ----- driver interface -------------------------------------------------------------------

    /// Bytes from the client.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        // Plaintext after STARTTLS is never kept: only the handshake may follow it.
        if matches!(self.phase, Phase::Closed | Phase::StartTls) {
            return;
        }
        self.input.extend_from_slice(data);
        self.process(now);
    }

    /// The client closed its side (or the connection broke).
    pub fn handle_eof(&mut self, _now: Instant) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        let in_data = matches!(self.phase, Phase::Data(_));
        self.note(Note::ClientClosed { in_data });
        self.close();
    }

    /// Call when `now` has reached [`Session::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some((at, phase)) = self.deadline else {
            return;
        };
        if now < at {
            return;
        }
        self.deadline = None;
        match &self.phase {
            // Sendmail closes without a reply on a command timeout (its 421 is written after
            // the output is closed), and says so in the log.
            Phase::Command => {
                self.note(Note::CommandTimeout { phase });
                self.close();
            }
            Phase::Data(_) => {
                let r = reply::data_timeout(&self.cfg.hostname);
                self.send(&r);
                self.note(Note::DataTimeout);
                self.close();
            }
            Phase::Committing => {
                // The spool may still finish; the client will retry (a possible duplicate,
                // never a loss).
                self.send(&reply::temporary_failure());
                self.note(Note::CommitTimeout);
                self.close();
            }
            Phase::Delaying(_) => {
                let Phase::Delaying(line) = std::mem::replace(&mut self.phase, Phase::Command)
                else {
                    return;
                };
                self.handle_line(&line, now);
                self.process(now);
            }
            // The driver's handshake ran past `starttls` without telling us: give up.
            Phase::StartTls => self.close(),
            Phase::Asking(_) | Phase::Closed => {}
        }
    }

    /// The answer to the last [`Event::Ask`].
    pub fn answer(&mut self, verdict: Verdict, now: Instant) {
        if !matches!(self.phase, Phase::Asking(_)) {
            return; // Closed meanwhile (shutdown), or no question open.
        }
        let Phase::Asking(pending) = std::mem::replace(&mut self.phase, Phase::Command) else {
            return;
        };
        match verdict {
            Verdict::Accept => self.proceed(pending, now),
            Verdict::Reject(r) => {
                if matches!(pending, Pending::Rcpt { .. }) && self.tx.is_some() {
                    self.bad_rcpt();
                }
                self.send(&r);
                self.arm_for_next_command(now);
            }
            Verdict::Close(r) => {
                self.send(&r);
                self.close();
            }
            Verdict::Drop => self.close(),
        }
        self.process(now);
    }

    /// Set by the driver when it accepts MAIL: the id named in the 250 after DATA.
    pub fn set_queue_id(&mut self, id: impl Into<String>) {
        self.queue_id = Some(id.into());
    }

    /// The current transaction's queue id, if any.
    pub fn queue_id(&self) -> Option<&str> {
        self.queue_id.as_deref()
    }

    /// The result of the last [`Event::Commit`].
    pub fn commit_done(&mut self, result: Result<(), CommitError>, now: Instant) {
        if !matches!(self.phase, Phase::Committing) {
            return; // Timed out already, or closed.
        }
        self.phase = Phase::Command;
        let r = match result {
            Ok(()) => {
                self.stats.messages += 1;
                reply::message_accepted(self.queue_id.as_deref().unwrap_or("NOQUEUE"))
            }
            Err(CommitError::Storage) => reply::insufficient_storage(),
            Err(CommitError::Failed) => reply::temporary_failure(),
        };
        self.send(&r);
        self.end_transaction();
        if self.shutting_down {
            self.send_shutdown();
            return;
        }
        self.arm(WaitPhase::Mail, now);
        self.process(now);
    }

    /// The server is shutting down: an idle session gets `421 4.3.2` and closes at once; a
    /// session inside DATA or a commit finishes that message first.
    pub fn shutdown(&mut self) {
        self.shutting_down = true;
        if matches!(
            self.phase,
            Phase::Command | Phase::Asking(_) | Phase::Delaying(_)
        ) {
            self.send_shutdown();
        }
    }

    /// Reply bytes to write, in order. The buffer is handed over; the session keeps none.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// True when reply bytes are waiting.
    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Session::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline.map(|(at, _)| at)
    }

    /// True when the driver should read more input (not while a question or commit is open).
    pub fn wants_input(&self) -> bool {
        matches!(self.phase, Phase::Command | Phase::Data(_))
    }

    /// True once the session is over: flush the output, then close the connection.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// The client.
    pub fn client(&self) -> &ClientInfo {
        &self.client
    }

    /// Counters for logging.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// Bytes buffered in the session (input and output), for memory accounting.
    pub fn buffered(&self) -> usize {
        let data = match &self.phase {
            Phase::Data(d) => d.stored(),
            Phase::Delaying(line) => line.capacity(),
            _ => 0,
        };
        self.input.capacity() + self.output.capacity() + data
    }

    // ----- processing -------------------------------------------------------------------------

    /// Consumes buffered input until it runs out or the session must wait.
    fn process(&mut self, now: Instant) {
        loop {
            match &mut self.phase {
                Phase::Command => {
                    let Some(line) = self.next_line() else { break };
                    let Some(verb) = self.screen(&line, now) else {
                        continue;
                    };
                    if let Some(line) = self.delay(line, verb, now) {
                        self.handle_line(&line, now);
                    }
                }
                Phase::Data(receiver) => {
                    if self.input.is_empty() {
                        break;
                    }
                    match receiver.ingest(&self.input) {
                        Some(used) => {
                            self.input.drain(..used);
                            // A client that must wait for each reply waits for this one too.
                            // Postfix's name for it, one token for log filters.
                            self.out_of_sync("END-OF-MESSAGE");
                            if self.is_closed() {
                                break;
                            }
                            self.finish_data(now);
                        }
                        None => {
                            self.input.clear();
                            self.arm(WaitPhase::DataBlock, now);
                            break;
                        }
                    }
                }
                Phase::Asking(_)
                | Phase::Committing
                | Phase::Delaying(_)
                | Phase::StartTls
                | Phase::Closed => {
                    break;
                }
            }
        }
        if self.input.is_empty() && self.input.capacity() > crate::MAX_COMMAND_LINE * 2 {
            // A pipelined burst or a message went through: give the memory back so an idle
            // session stays small.
            self.input = Vec::new();
        }
    }

    /// Takes the next complete command line from the input, enforcing the 512-octet limit.
    fn next_line(&mut self) -> Option<Vec<u8>> {
        loop {
            match memchr::memchr(b'\n', &self.input) {
                Some(lf) if self.skipping_long_line => {
                    self.input.drain(..=lf);
                    self.skipping_long_line = false;
                    self.send(&reply::line_too_long());
                }
                Some(lf) if lf < crate::MAX_COMMAND_LINE => {
                    return Some(self.input.drain(..=lf).collect());
                }
                Some(lf) => {
                    self.input.drain(..=lf);
                    self.send(&reply::line_too_long());
                }
                None if self.input.len() >= crate::MAX_COMMAND_LINE => {
                    // Keep no more than the limit: discard until the LF arrives.
                    self.input.clear();
                    self.skipping_long_line = true;
                    return None;
                }
                None => return None,
            }
        }
    }

    /// The checks a command line meets as it is taken from the input, before any delay:
    /// the open-proxy probe, synchronization and stuffing. Returns the line's verb for what
    /// follows, or None when the line is done with (answered, or the session closed).
    fn screen(&mut self, line: &[u8], now: Instant) -> Option<&'static str> {
        if self.stats.commands == 0 && command::is_proxy_probe(line) {
            // Sendmail's `%.40s`: the first 40 characters, cut without a mark.
            let text = command::strip_eol(line);
            let command = reply::printable(&text[..text.len().min(40)], 40);
            let action = self.cfg.actions.open_proxy;
            self.finding(Finding::OpenProxy { command }, action);
            let r = reply::open_proxy(&self.cfg.hostname, &self.client.display());
            if self.close_with(action, &r) {
                return None;
            }
        }
        let verb = command::verb_name(line);
        // Out of sync with `ignore`: noted, and the stuffing check below still applies.
        if self.rejecting.is_none() && self.out_of_sync(verb) && self.is_closed() {
            return None;
        }
        if matches!(verb, "HELO" | "EHLO") && self.stuffed(verb) {
            match self.cfg.actions.stuffing {
                Action::Enforce => {
                    // Sendmail 8.18: the hello is refused and the session goes on in rejecting
                    // mode, where only HELO, EHLO, NOOP, RSET and QUIT work.
                    self.stats.commands += 1;
                    self.send(&reply::protocol_error());
                    if self.rejecting.is_none() {
                        self.rejecting = Some(reply::command_rejected());
                    }
                    self.arm_for_next_command(now);
                    return None;
                }
                Action::Drop => {
                    self.close();
                    return None;
                }
                Action::Ignore => {}
            }
        }
        Some(verb)
    }

    /// Input is waiting behind the command just taken although the client has not seen its
    /// reply yet, and the client is not exempt (`Srv_Features: F`).
    fn early_input(&self) -> bool {
        !self.input.is_empty() && !self.features.lax_pipelining
    }

    /// The start of the waiting input, for the log.
    fn next_input(&self) -> String {
        // One byte past the limit, so a longer input is marked `...`.
        let n = self.input.len().min(41);
        reply::printable(&self.input[..n], 40)
    }

    /// Sendmail 8.18's stuffing check for `command` (HELO, EHLO, DATA): notes the finding
    /// and returns true when input came before the reply.
    fn stuffed(&mut self, command: &'static str) -> bool {
        if !self.early_input() {
            return false;
        }
        let next = self.next_input();
        self.finding(
            Finding::Stuffing { command, next },
            self.cfg.actions.stuffing,
        );
        true
    }

    /// Without PIPELINING offered, input waiting behind `command` is a synchronization
    /// error: 554 and close (enforce), close (drop), noted once (ignore). Returns true when
    /// it was found.
    fn out_of_sync(&mut self, command: &'static str) -> bool {
        if self.offers_pipelining() || !self.early_input() {
            return false;
        }
        let action = self.cfg.actions.pipelining;
        if action == Action::Ignore && self.ignored.unsynchronized {
            return false;
        }
        self.ignored.unsynchronized = action == Action::Ignore;
        let next = self.next_input();
        self.finding(Finding::Unsynchronized { command, next }, action);
        self.close_with(action, &reply::synchronization_error());
        true
    }

    fn handle_line(&mut self, line: &[u8], now: Instant) {
        self.stats.commands += 1;
        if self.rejecting.is_some() {
            self.handle_rejecting(line, now);
            return;
        }
        let cmd = match command::parse(line) {
            Ok(cmd) => cmd,
            Err(r) => {
                if self.tx.is_some() && command::verb_name(line) == "RCPT" {
                    self.bad_rcpt();
                }
                self.send(&r);
                self.arm_for_next_command(now);
                return;
            }
        };
        match cmd {
            Command::Helo(name) => self.ask(Pending::Helo {
                name,
                extended: false,
            }),
            Command::Ehlo(name) => self.ask(Pending::Helo {
                name,
                extended: true,
            }),
            Command::Mail(sender, params) => self.cmd_mail(sender, params, now),
            Command::Rcpt(recipient) => self.cmd_rcpt(recipient, now),
            Command::Data => self.cmd_data(now),
            Command::Rset => self.simple(reply::reset(), WaitPhase::Rset, now, true),
            Command::Noop => self.simple(reply::ok(), WaitPhase::Misc, now, false),
            Command::Vrfy => self.simple(reply::cannot_vrfy(), WaitPhase::Misc, now, false),
            Command::Expn | Command::Etrn => {
                self.simple(reply::not_allowed(), WaitPhase::Misc, now, false);
            }
            Command::Help => self.simple(reply::help(), WaitPhase::Misc, now, false),
            Command::StartTls(args) => self.cmd_starttls(args, line, now),
            Command::Quit => {
                let r = reply::closing(&self.cfg.hostname);
                self.send(&r);
                self.close();
            }
            Command::Unknown => self.cmd_unknown(line, now),
        }
    }

    /// Puts the command delay before `line` (whose verb is `command`), within the delay budget. Returns the line when
    /// it is to be handled now (no delay, or QUIT and RSET, which Sendmail never delays).
    fn delay(&mut self, line: Vec<u8>, command: &'static str, now: Instant) -> Option<Vec<u8>> {
        let in_rcpt = command == "RCPT" && self.tx.is_some() && self.rejecting.is_none();
        let bad_rcpt = self.cfg.actions.bad_rcpt;
        let shutdown = self.cfg.bad_rcpt_shutdown;
        if in_rcpt && shutdown > 0 && self.session_bad_rcpts >= shutdown {
            let noted = bad_rcpt == Action::Ignore && self.ignored.rcpt_shutdown;
            if !noted {
                self.ignored.rcpt_shutdown = bad_rcpt == Action::Ignore;
                self.finding(Finding::RcptFlood(RcptFlood::ShuttingDown), bad_rcpt);
            }
            let r = reply::too_many_bad_recipients(&self.cfg.hostname);
            if self.close_with(bad_rcpt, &r) {
                return None;
            }
        }
        // Sendmail's null server refuses these before checksmtpattack would count them.
        let refused = self.rejecting.is_some() && command::refused_when_rejecting(&line);
        let attack = if refused {
            Duration::ZERO
        } else {
            self.command_flood(command)?
        };
        let load = self
            .command_delay
            .as_ref()
            .filter(|_| !matches!(command, "QUIT" | "RSET"))
            .map(|d| (d.each, d.reason.clone()));
        let throttle = self.cfg.bad_rcpt_throttle;
        let throttled = in_rcpt && throttle > 0 && self.tx_bad_rcpts >= throttle;
        if throttled && !self.throttle_noted {
            self.throttle_noted = true;
            self.finding(Finding::RcptFlood(RcptFlood::Throttling), bad_rcpt);
            if bad_rcpt == Action::Drop {
                self.close();
                return None;
            }
        }
        let throttle_wait = if throttled && bad_rcpt == Action::Enforce {
            self.cfg.bad_rcpt_throttle_delay
        } else {
            Duration::ZERO
        };
        let each = load.as_ref().map_or(Duration::ZERO, |(d, _)| *d) + throttle_wait + attack;
        let spent = self.stats.delayed;
        if !each.is_zero() && spent + each > self.cfg.delay_budget {
            let r = reply::too_busy(&self.cfg.hostname);
            self.send(&r);
            self.note(Note::DelayBudgetSpent { spent, command });
            self.close();
            return None;
        }
        if let Some((d, reason)) = load
            && !d.is_zero()
            && self
                .delay_noted_at
                .is_none_or(|at| now.saturating_duration_since(at) >= DELAY_NOTE_EVERY)
        {
            self.delay_noted_at = Some(now);
            self.note(Note::Delaying { command, reason });
        }
        if each.is_zero() {
            return Some(line);
        }
        self.stats.delayed += each;
        // The phase is not read for a delay (handle_timeout goes by Phase::Delaying); the
        // armed one is kept only because a deadline carries one.
        let phase = self.deadline.map_or(WaitPhase::Misc, |(_, p)| p);
        self.deadline = Some((now + each, phase));
        self.phase = Phase::Delaying(line);
        None
    }

    /// Sendmail's checksmtpattack: counts HELO/EHLO, NOOP, VRFY/EXPN and ETRN; from the
    /// command's limit on, each is delayed `2^(count - limit)` s (at most 240 s, Sendmail's
    /// MAXTIMEOUT), noted once at the limit. Returns the delay, or None when the session was
    /// closed (drop).
    fn command_flood(&mut self, command: &'static str) -> Option<Duration> {
        let (slot, name, limit) = match command {
            "HELO" | "EHLO" => (0, "HELO/EHLO", MAX_HELO_COMMANDS),
            "NOOP" => (1, "NOOP", self.cfg.max_noop_commands),
            "VRFY" | "EXPN" => (2, "VRFY/EXPN", MAX_VRFY_COMMANDS),
            "ETRN" => (3, "ETRN", MAX_ETRN_COMMANDS),
            _ => return Some(Duration::ZERO),
        };
        if limit == 0 {
            return Some(Duration::ZERO);
        }
        let count = self.abuse[slot].saturating_add(1);
        self.abuse[slot] = count;
        if count < limit {
            return Some(Duration::ZERO);
        }
        let action = self.cfg.actions.command_abuse;
        if count == limit {
            self.finding(
                Finding::CommandFlood {
                    command: name,
                    count,
                },
                action,
            );
        }
        match action {
            Action::Enforce => {
                let secs = 1u64 << (count - limit).min(8);
                Some(Duration::from_secs(secs).min(MAX_COMMAND_FLOOD_DELAY))
            }
            Action::Drop => {
                self.close();
                None
            }
            Action::Ignore => Some(Duration::ZERO),
        }
    }

    /// A command was unknown (or refused in rejecting mode) and the count passed
    /// `max_bad_commands`: 421 and close (enforce), close (drop), noted once (ignore).
    /// Returns true when the session goes on.
    fn too_many_bad_commands(&mut self) -> bool {
        let action = self.cfg.actions.command_abuse;
        if action == Action::Ignore && self.ignored.bad_commands {
            return true;
        }
        self.ignored.bad_commands = action == Action::Ignore;
        self.finding(Finding::TooManyBadCommands, action);
        let r = reply::too_many_bad_commands(&self.cfg.hostname);
        !self.close_with(action, &r)
    }

    /// A finding's action that ends the session: `enforce` sends `r` and closes, `drop`
    /// closes without a word. True when the session was closed (false for `ignore`).
    fn close_with(&mut self, action: Action, r: &Reply) -> bool {
        match action {
            Action::Enforce => {
                self.send(r);
                self.close();
            }
            Action::Drop => self.close(),
            Action::Ignore => return false,
        }
        true
    }

    /// A RCPT of the open transaction was refused (Sendmail counts every RCPT that ends
    /// in an error reply).
    fn bad_rcpt(&mut self) {
        self.tx_bad_rcpts = self.tx_bad_rcpts.saturating_add(1);
        self.session_bad_rcpts = self.session_bad_rcpts.saturating_add(1);
    }

    /// One command line in rejecting mode (Sendmail's null-server switch).
    fn handle_rejecting(&mut self, line: &[u8], now: Instant) {
        if command::refused_when_rejecting(line) {
            self.refused += 1;
            if self.refused > self.cfg.max_bad_commands && !self.too_many_bad_commands() {
                return;
            }
            if let Some(r) = self.rejecting.clone() {
                self.send(&r);
                self.arm_for_next_command(now);
            }
            return;
        }
        match command::parse(line) {
            Ok(Command::Helo(name)) => self.greet_rejecting(name, false, now),
            Ok(Command::Ehlo(name)) => self.greet_rejecting(name, true, now),
            Ok(Command::Rset) => self.simple(reply::reset(), WaitPhase::Rset, now, true),
            Ok(Command::Noop) => self.simple(reply::ok(), WaitPhase::Misc, now, false),
            Ok(Command::Quit) => {
                let r = reply::closing(&self.cfg.hostname);
                self.send(&r);
                self.close();
            }
            Ok(_) => self.cmd_unknown(line, now),
            Err(r) => {
                self.send(&r);
                self.arm_for_next_command(now);
            }
        }
    }

    /// HELO/EHLO in rejecting mode: the normal hello, a bare EHLO list, no policy question.
    fn greet_rejecting(&mut self, name: String, extended: bool, now: Instant) {
        let client = self.client.display();
        let r = if extended {
            reply::ehlo_rejecting(&self.cfg.hostname, &client)
        } else {
            reply::helo(&self.cfg.hostname, &client)
        };
        self.helo = Some(Helo { name, extended });
        self.send(&r);
        self.arm(WaitPhase::Mail, now);
    }

    /// A command whose reply is fixed.
    fn simple(&mut self, r: Reply, wait: WaitPhase, now: Instant, reset: bool) {
        if reset {
            self.end_transaction();
        }
        self.send(&r);
        self.arm(wait, now);
    }

    fn cmd_unknown(&mut self, line: &[u8], now: Instant) {
        self.stats.bad_commands += 1;
        if self.stats.bad_commands > self.cfg.max_bad_commands && !self.too_many_bad_commands() {
            return;
        }
        self.send(&reply::unrecognized(command::strip_eol(line)));
        self.arm_for_next_command(now);
    }

    fn cmd_mail(&mut self, sender: ReversePath, params: MailParams, now: Instant) {
        let check = if self.helo.is_none() {
            Some(reply::need_helo())
        } else if self.tx.is_some() {
            Some(reply::sender_already_specified())
        } else if self.tls_required && self.tls.is_none() {
            Some(reply::must_starttls())
        } else {
            match params.size {
                Some(size) if size > self.cfg.max_message_bytes => {
                    Some(reply::size_exceeds_at_mail(self.cfg.max_message_bytes))
                }
                _ => None,
            }
        };
        self.stats.mail_issued = true;
        match check {
            Some(r) => {
                self.send(&r);
                self.arm_for_next_command(now);
            }
            None => self.ask(Pending::Mail { sender, params }),
        }
    }

    fn cmd_rcpt(&mut self, recipient: ReversePath, now: Instant) {
        let Some(tx) = &self.tx else {
            self.send(&reply::need_mail());
            self.arm_for_next_command(now);
            return;
        };
        let accepted = tx.recipients.len();
        // The hard cap always holds; the configured limit is a defence with an action.
        let over_cap = accepted >= self.cfg.max_recipients;
        let over_limit = accepted >= self.recipient_limit();
        let action = self.cfg.actions.max_recipients;
        if over_limit && !over_cap {
            self.finding(Finding::TooManyRecipients, action);
            if action == Action::Drop {
                self.close();
                return;
            }
        }
        if over_cap {
            // Logged as Sendmail logs every excess RCPT, whatever the configured limit's action.
            self.finding(Finding::TooManyRecipients, Action::Enforce);
        }
        if over_cap || (over_limit && action == Action::Enforce) {
            self.bad_rcpt();
            self.send(&reply::too_many_recipients());
            self.arm_for_next_command(now);
            return;
        }
        self.ask(Pending::Rcpt { recipient });
    }

    /// Accepted recipients a message may have: MaxRecipientsPerMessage within the hard cap.
    fn recipient_limit(&self) -> usize {
        match self.cfg.max_recipients_per_message {
            0 => self.cfg.max_recipients,
            n => n.min(self.cfg.max_recipients),
        }
    }

    fn cmd_data(&mut self, now: Instant) {
        let check = match &self.tx {
            None => Some(reply::need_mail()),
            Some(tx) if tx.recipients.is_empty() => Some(reply::need_rcpt()),
            Some(_) => None,
        };
        match check {
            Some(r) => {
                self.send(&r);
                self.arm_for_next_command(now);
            }
            None => self.ask(Pending::Data),
        }
    }

    /// Queues the question and stops processing until it is answered.
    fn ask(&mut self, pending: Pending) {
        let ask = match &pending {
            Pending::Helo { name, extended } => Ask::Helo {
                name: name.clone(),
                extended: *extended,
            },
            Pending::Mail { sender, params } => Ask::Mail {
                sender: sender.clone(),
                size: params.size,
            },
            Pending::Rcpt { recipient } => Ask::Rcpt {
                recipient: recipient.clone(),
                accepted: self.tx.as_ref().map_or(0, |t| t.recipients.len()),
            },
            Pending::Data => Ask::Data,
        };
        // No deadline while policy thinks: the driver bounds its own work.
        self.deadline = None;
        self.events.push_back(Event::Ask(ask));
        self.phase = Phase::Asking(pending);
    }

    /// Policy accepted: perform the step and give the normal reply.
    fn proceed(&mut self, pending: Pending, now: Instant) {
        match pending {
            Pending::Helo { name, extended } => {
                self.end_transaction();
                let client = self.client.display();
                let r = if extended {
                    reply::ehlo(
                        &self.cfg.hostname,
                        &client,
                        self.cfg.max_message_bytes,
                        self.offers_pipelining(),
                        self.offers_starttls(),
                    )
                } else {
                    reply::helo(&self.cfg.hostname, &client)
                };
                self.helo = Some(Helo { name, extended });
                self.send(&r);
                self.arm(WaitPhase::Mail, now);
            }
            Pending::Mail { sender, .. } => {
                // Sendmail resets its bad-recipient count at every accepted MAIL.
                self.tx_bad_rcpts = 0;
                self.throttle_noted = false;
                self.send(&reply::sender_ok(&sender));
                self.tx = Some(Transaction {
                    sender,
                    recipients: Vec::new(),
                });
                self.arm(WaitPhase::Rcpt, now);
            }
            Pending::Rcpt { recipient } => {
                self.send(&reply::recipient_ok(&recipient));
                if let Some(tx) = &mut self.tx {
                    tx.recipients.push(recipient);
                }
                self.arm(WaitPhase::Rcpt, now);
            }
            Pending::Data => {
                // Sendmail 8.18: no 354, and the connection is closed.
                if self.stuffed("DATA")
                    && self.close_with(self.cfg.actions.stuffing, &reply::protocol_error())
                {
                    return;
                }
                self.send(&reply::start_data());
                let receiver =
                    DataReceiver::new(self.cfg.max_message_bytes, self.cfg.bare_line_endings);
                self.phase = Phase::Data(receiver);
                self.arm(WaitPhase::DataInit, now);
            }
        }
    }

    /// The final dot arrived.
    fn finish_data(&mut self, now: Instant) {
        let Phase::Data(receiver) = std::mem::replace(&mut self.phase, Phase::Command) else {
            return;
        };
        let size = receiver.size();
        match receiver.finish() {
            Ok(data) => {
                let Some(tx) = self.tx.as_ref() else {
                    return;
                };
                // RFC 3848: ESMTPS for ESMTP inside STARTTLS; HELO stays SMTP (Sendmail).
                let (helo, protocol) = match (&self.helo, self.tls.is_some()) {
                    (Some(h), true) if h.extended => (h.name.clone(), "ESMTPS"),
                    (Some(h), _) if h.extended => (h.name.clone(), "ESMTP"),
                    (Some(h), _) => (h.name.clone(), "SMTP"),
                    (None, _) => (String::new(), "SMTP"),
                };
                let message = Message {
                    sender: tx.sender.to_string(),
                    recipients: tx.recipients.iter().map(ToString::to_string).collect(),
                    helo,
                    protocol,
                    tls: self.tls,
                    data,
                };
                self.events.push_back(Event::Commit(Box::new(message)));
                self.phase = Phase::Committing;
                self.arm(WaitPhase::DataFinal, now);
            }
            Err(problem) => {
                let r = match problem {
                    DataProblem::TooBig => reply::size_exceeds(),
                    DataProblem::BareLineEnding => reply::bare_line_ending(),
                    DataProblem::LineTooLong => reply::text_line_too_long(),
                };
                self.send(&r);
                self.note(Note::MessageRefused { reply: r, size });
                self.end_transaction();
                if self.shutting_down {
                    self.send_shutdown();
                } else {
                    self.arm(WaitPhase::Mail, now);
                }
            }
        }
    }

    // ----- helpers ----------------------------------------------------------------------------

    /// Every reply goes through here (design.md §3.8). A 421 closes the session.
    fn send(&mut self, r: &Reply) {
        r.write_to(&mut self.output);
        if r.closes() {
            self.close();
        }
    }

    fn send_shutdown(&mut self) {
        let r = reply::shutting_down(&self.cfg.hostname);
        self.send(&r);
    }

    fn note(&mut self, note: Note) {
        self.events.push_back(Event::Note(note));
    }

    fn finding(&mut self, finding: Finding, action: Action) {
        self.note(Note::Defence { finding, action });
    }

    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.deadline = None;
        self.input = Vec::new();
    }

    fn end_transaction(&mut self) {
        self.tx = None;
        self.queue_id = None;
    }

    /// Starts the timer for the next wait; the phase's value is capped by `command`.
    fn arm(&mut self, phase: WaitPhase, now: Instant) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        let d = self.cfg.timeouts.effective(phase);
        self.deadline = Some((now + d, phase));
    }

    /// After an error reply: the wait that fits where the dialogue stands.
    fn arm_for_next_command(&mut self, now: Instant) {
        let phase = match (&self.helo, &self.tx) {
            (None, _) => WaitPhase::Helo,
            (Some(_), None) => WaitPhase::Mail,
            (Some(_), Some(_)) => WaitPhase::Rcpt,
        };
        self.arm(phase, now);
    }
}

/// Our `Received:` header (RFC 5321 §4.4), prepended to the message when it is spooled.
///
/// `for <addr>` is given only for a single recipient, so a message to many does not disclose
/// the others. A message that came through TLS gets Sendmail's comment after the id:
/// `(version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384 bits=256 verify=NO)`.
#[allow(clippy::too_many_arguments)] // Each is one field of the header; a struct adds nothing.
pub fn received_header(
    hostname: &str,
    client: &ClientInfo,
    helo: &str,
    protocol: &str,
    queue_id: &str,
    tls: Option<&TlsInfo>,
    recipients: &[String],
    date: &str,
) -> String {
    let from_name = client.name.as_deref().unwrap_or("");
    let addr = sendmail_address(client.addr);
    let helo = reply::printable(helo.as_bytes(), 100);
    let mut h = format!(
        "Received: from {helo} ({from_name}{sep}[{addr}])\r\n\tby {hostname} (Portcullis) with {protocol} id {queue_id}",
        sep = if from_name.is_empty() { "" } else { " " },
    );
    if let Some(tls) = tls {
        h.push_str(&format!("\r\n\t{}", tls.comment()));
    }
    if let [only] = recipients {
        h.push_str(&format!("\r\n\tfor <{only}>"));
    }
    h.push_str(&format!("; {date}\r\n"));
    h
}
