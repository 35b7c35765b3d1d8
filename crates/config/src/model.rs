//! The validated configuration: the types the server is written against.
//!
//! Role: plain data after parsing and checking (design.md principle 9: RawConfig → Config).
//! Every value here has passed its bounds, so callers never re-validate.
//! Must not: read files, parse text or emit diagnostics (that is `validate` and friends);
//! the one query of the system is the CPU count behind `LoadConfig::default()`.
//! Invariants (established by `validate`): `listen` is non-empty and duplicate-free;
//! `domains` is non-empty, lowercase, without trailing dot and duplicate-free; `users`
//! entries are lowercase local parts; `max_message_bytes > 0`; every timeout, `retry_min`,
//! `retry_max` and `lifetime` is non-zero; `rate_control.window` is 6 s to 1 h; the client
//! prefixes are at most 32 (IPv4) and 128 (IPv6); `max_tracked_clients` is 1 to 10,000,000;
//! `session_delay_budget` is at most 1 h; `max_noop_commands` is at most 10,000; the `load` load-average thresholds are at most
//! 10,000 when written as numbers (`"auto"` is 12 or 8 × CPUs, unbounded), the session percentages at most 100 (and 0 unless `max_sessions` is set), the
//! lags at most 60 s; `loadavg_file` is non-empty; `tls`, when present, holds a certificate
//! chain and the key that matches its first certificate.
//! Default values live here, once, as constants; `default.toml` repeats them for operators
//! and a test keeps the two equal.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use crate::relay::{RelayConfig, Routes};
use crate::tls::TlsConfig;

/// The whole validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Where it came from: the file path, or `<embedded default>`.
    pub origin: String,
    pub server: ServerConfig,
    pub smtp: SmtpConfig,
    pub local: LocalConfig,
    pub timeouts: Timeouts,
    pub queue: QueueConfig,
    pub log: LogConfig,
    pub greet_pause: GreetPauseConfig,
    pub access: AccessConfig,
    pub dns: DnsConfig,
    pub rate_control: RateControlConfig,
    pub conn_control: ConnControlConfig,
    pub limits: LimitsConfig,
    pub load: LoadConfig,
    /// `[relay]`: who may relay, and which domains are relayed for anyone.
    pub relay: RelayConfig,
    /// `[[route]]`: the next hop per domain.
    pub routes: Routes,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// `[tls]`: STARTTLS is offered when a certificate is configured (None: not offered).
    pub tls: Option<TlsConfig>,
}

/// `[metrics]`: where `/metrics` is served (Prometheus text); None = not served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    pub listen: Option<std::net::SocketAddr>,
}

/// What a defence does with a finding (defined beside the session, which applies it).
pub use portcullis_smtp::Action;

/// `[greet_pause]`: Sendmail's `FEATURE(greet_pause)` plus a pass cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GreetPauseConfig {
    /// Pause for clients without a `GreetPause:` entry; zero = off. At most 300 s.
    pub default: Duration,
    pub action: Action,
    /// How long a client that waited is remembered and not paused again; zero = never.
    pub pass_ttl: Duration,
    /// Bound of the pass cache (oldest entries dropped first).
    pub pass_cache_max: usize,
}

impl Default for GreetPauseConfig {
    fn default() -> Self {
        Self {
            default: Duration::from_secs(1),
            action: Action::Enforce,
            pass_ttl: Duration::from_secs(24 * 60 * 60),
            pass_cache_max: 100_000,
        }
    }
}

/// `[access]`: the Sendmail access map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessConfig {
    /// The source file (`makemap`'s input); None = an empty map.
    pub file: Option<PathBuf>,
    /// How often the file is checked for changes; zero = only on SIGHUP.
    pub watch_interval: Duration,
    /// What the `Connect:`, `From:` and `To:` checks of the map do with a refusing entry:
    /// `Enforce` answers as Sendmail does; `Drop` closes the connection without a reply;
    /// `Ignore` logs the finding and goes on as if there were no entry.
    pub action: Action,
}

impl Default for AccessConfig {
    fn default() -> Self {
        Self {
            file: None,
            watch_interval: Duration::from_secs(2),
            action: Action::Enforce,
        }
    }
}

/// `[dns]`: client host names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// Look up client names (reverse DNS with forward confirmation).
    pub reverse: bool,
    /// Resolvers to ask; empty = the system's (/etc/resolv.conf).
    pub servers: Vec<SocketAddr>,
    /// Bound on one client's lookup (PTR and forward queries together).
    pub timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            reverse: true,
            servers: Vec::new(),
            timeout: Duration::from_secs(3),
        }
    }
}

/// `[rate_control]`: Sendmail's `FEATURE(ratecontrol)`. The per-client limits are the
/// `ClientRate:` entries of the access map; this section says how they are counted and
/// enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateControlConfig {
    /// Sendmail's `ConnectionRateWindowSize`, 6 s to 1 h. Connections are counted in 6
    /// buckets of `window / 6` aligned to the clock, as Sendmail does.
    pub window: Duration,
    /// With `Action::Enforce`: true answers `421 4.3.2` in place of the greeting and
    /// closes; false sends the greeting, then `452 4.3.2` to MAIL, RCPT and DATA.
    pub terminate: bool,
    /// `Drop` closes without any reply; `Ignore` only logs.
    pub action: Action,
}

impl Default for RateControlConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            terminate: true,
            action: Action::Enforce,
        }
    }
}

/// `[conn_control]`: Sendmail's `FEATURE(conncontrol)`. The per-client limits are the
/// `ClientConn:` entries of the access map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnControlConfig {
    /// As `RateControlConfig::terminate`.
    pub terminate: bool,
    /// `Drop` closes without any reply; `Ignore` only logs.
    pub action: Action,
}

impl Default for ConnControlConfig {
    fn default() -> Self {
        Self {
            terminate: true,
            action: Action::Enforce,
        }
    }
}

/// `[limits]`: how clients are grouped for counting, and the server-wide admission limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitsConfig {
    /// IPv4 clients are counted by this prefix length, 0 to 32 (32 = each address).
    pub client_ipv4_prefix: u8,
    /// IPv6 clients are counted by this prefix length, 0 to 128 (64 = each subnet, since
    /// one holder of a /64 can use any of its 2^64 addresses).
    pub client_ipv6_prefix: u8,
    /// Bound of the per-client counter table, 1 to 10,000,000; the entries idle the
    /// longest are forgotten first.
    pub max_tracked_clients: usize,
    /// Sendmail's `ConnectionRateThrottle`: at most this many new connections per second,
    /// all clients together; the excess waits (it is never refused). 0 = off.
    pub connection_rate_throttle: u32,
    /// Sendmail's `MaxDaemonChildren`: sessions at once; 0 = unlimited.
    pub max_sessions: u32,
    /// What happens once `max_sessions` sessions are open.
    pub max_sessions_action: MaxSessionsAction,
    /// The deliberate delays the server puts into one session (`load.delay_*`'s 1 s per
    /// command, the bad-recipient throttle's `bad_rcpt_throttle_delay`, and later tarpits)
    /// never add up past this, 0 s to 1 h: once the next delay would pass it, the session
    /// gets `421 4.3.2 <hostname> Too busy; please try again later` and is closed, so a
    /// well-behaved client never times out on us. The greeting pause (bounded on its own) and
    /// `connection_rate_throttle` (before the session exists) do not count. 0 = no
    /// deliberate delay at all: every delay becomes a 421.
    pub session_delay_budget: Duration,
    /// Sendmail's `MaxRecipientsPerMessage`: accepted recipients per message, 0 to 1000;
    /// the next RCPTs get `452 4.5.3 Too many recipients` and count as bad recipients.
    /// 0 = no limit of its own (the server's hard cap of 1000 still applies).
    pub max_recipients_per_message: u32,
    /// Sendmail's `BadRcptThrottle`: once a transaction has this many rejected RCPTs, every
    /// later RCPT of it (good or bad) waits `bad_rcpt_throttle_delay` before its reply,
    /// counted against `session_delay_budget`. The count resets at MAIL. 0 to 1,000,000;
    /// 0 = off.
    pub bad_rcpt_throttle: u32,
    /// Sendmail's `BadRcptThrottleDelay` (fixed at 1 s where it is not compiled in): the
    /// wait of each throttled RCPT, 0 s to 60 s. 0 s = the throttle only logs.
    pub bad_rcpt_throttle_delay: Duration,
    /// Sendmail's `BadRcptShutdown`: after this many rejected RCPTs in one session, the next
    /// RCPT gets `421 4.7.0 <hostname> Too many bad recipients; closing connection` and the
    /// connection is closed. 0 to 1,000,000; 0 = off.
    pub bad_rcpt_shutdown: u32,
    /// What `max_recipients_per_message` does with the RCPTs over it: `Enforce` answers
    /// `452 4.5.3 Too many recipients`; `Drop` closes the connection without a reply;
    /// `Ignore` logs and accepts them (the hard cap of 1000 still applies).
    pub max_recipients_action: Action,
    /// What `bad_rcpt_throttle` and `bad_rcpt_shutdown` do once reached: `Enforce` delays,
    /// or answers 421 and closes, as above; `Drop` closes the connection without a reply;
    /// `Ignore` only logs.
    pub bad_rcpt_action: Action,
    /// What the command-abuse checks do: the delays of NOOPs past `max_noop_commands` and of
    /// too many HELO/EHLO, VRFY/EXPN and ETRN commands, and the `421` after 25 bad commands
    /// (Sendmail's `MAXBADCOMMANDS`). `Enforce` is Sendmail's behaviour; `Drop` closes the
    /// connection without a reply; `Ignore` only logs.
    pub command_abuse_action: Action,
    /// Sendmail's `MaxNOOPCommands`: past this many NOOPs in a session, each NOOP's reply is
    /// delayed, by 1 s and then doubling, counted against `session_delay_budget`. 0 to
    /// 10,000; 0 = no limit.
    pub max_noop_commands: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            client_ipv4_prefix: 32,
            client_ipv6_prefix: 64,
            max_tracked_clients: 100_000,
            connection_rate_throttle: 0,
            max_sessions: 0,
            max_sessions_action: MaxSessionsAction::Wait,
            session_delay_budget: Duration::from_secs(60),
            max_recipients_per_message: 0,
            bad_rcpt_throttle: 0,
            bad_rcpt_throttle_delay: Duration::from_secs(1),
            bad_rcpt_shutdown: 0,
            max_recipients_action: Action::Enforce,
            bad_rcpt_action: Action::Enforce,
            command_abuse_action: Action::Enforce,
            max_noop_commands: 20,
        }
    }
}

/// `limits.max_sessions_action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MaxSessionsAction {
    /// Stop accepting: new clients wait in the kernel's listen backlog.
    #[default]
    Wait,
    /// Accept, answer `421 4.3.2 <hostname> Too many concurrent SMTP connections; please
    /// try again later`, and close.
    Refuse,
}

impl MaxSessionsAction {
    /// The name in the configuration and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Wait => "wait",
            Self::Refuse => "refuse",
        }
    }
}

/// `[load]`: load controls. Each action fires when any of its signals is at or over its
/// threshold; 0 turns a threshold off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadConfig {
    /// Sendmail's RefuseLA: at or over this 1-minute load average (rounded as Sendmail does,
    /// so 0.5 counts as 1), stop accepting connections. Default (`"auto"`) 12 × CPUs, as
    /// Sendmail's.
    pub refuse_la: u32,
    /// Sendmail's DelayLA: at or over it, wait 1 s before each command except QUIT, RSET and the
    /// end-of-data dot. Default 0 (off), as Sendmail's.
    pub delay_la: u32,
    /// Sendmail's QueueLA: at or over it, accept mail but hold delivery. Default (`"auto"`)
    /// 8 × CPUs, as Sendmail's.
    pub queue_la: u32,
    /// The same three actions on sessions in flight, in percent of `limits.max_sessions`
    /// (1..=100; 0 off). Default 0 each. This one: stop accepting connections.
    pub refuse_sessions_pct: u8,
    /// As `refuse_sessions_pct`, for the 1 s wait before each command.
    pub delay_sessions_pct: u8,
    /// As `refuse_sessions_pct`, for holding delivery.
    pub queue_sessions_pct: u8,
    /// The same three actions on the server's event-loop lag (how late a 100 ms tick fires,
    /// worst in the last second). 0s off; default 0s each. This one: stop accepting
    /// connections.
    pub refuse_lag: Duration,
    /// As `refuse_lag`, for the 1 s wait before each command.
    pub delay_lag: Duration,
    /// As `refuse_lag`, for holding delivery.
    pub queue_lag: Duration,
    /// Where the load average is read: the first field of this file. Default "/proc/loadavg".
    /// In a container, point it at a cgroup-aware view (e.g. one LXCFS provides).
    pub loadavg_file: PathBuf,
}

impl LoadConfig {
    /// The defaults on a machine with `cpus` CPUs: Sendmail's RefuseLA = 12 × CPUs,
    /// DelayLA = 0 (off), QueueLA = 8 × CPUs; every other threshold off. What `"auto"`
    /// and an absent key mean.
    pub fn sendmail_defaults(cpus: u32) -> Self {
        Self {
            refuse_la: cpus.saturating_mul(12),
            delay_la: 0,
            queue_la: cpus.saturating_mul(8),
            refuse_sessions_pct: 0,
            delay_sessions_pct: 0,
            queue_sessions_pct: 0,
            refuse_lag: Duration::ZERO,
            delay_lag: Duration::ZERO,
            queue_lag: Duration::ZERO,
            loadavg_file: PathBuf::from(DEFAULT_LOADAVG_FILE),
        }
    }
}

/// The defaults for this machine's CPUs ([`online_cpus`]).
impl Default for LoadConfig {
    fn default() -> Self {
        Self::sendmail_defaults(online_cpus())
    }
}

/// The CPUs this process may run on (`std::thread::available_parallelism`: the online
/// CPUs, narrowed by the affinity mask and a cgroup CPU quota); 1 when unknown.
pub(crate) fn online_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
}

/// `[server]`: identity, sockets, spool, size limit, shutdown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Our name in the banner, EHLO reply and Received headers (Sendmail `$j`).
    pub hostname: String,
    pub listen: Vec<SocketAddr>,
    /// Relative paths are relative to the process's working directory.
    pub spool_dir: PathBuf,
    /// Advertised as `SIZE` in EHLO; larger messages get 552.
    pub max_message_bytes: u64,
    /// How long a DATA in progress may finish after SIGTERM.
    pub shutdown_grace: Duration,
}

/// `[smtp]`: dialogue options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmtpConfig {
    pub bare_lf: BareLf,
    /// Advertise PIPELINING in the EHLO reply. False: it is not advertised, and a client
    /// that sends a command before the reply to the previous one is a synchronization error
    /// (`554 5.5.0 SMTP protocol synchronization error`, then close; Exim's
    /// `smtp_enforce_sync`, Postfix's `smtpd_forbid_unauth_pipelining`). The same applies to
    /// one client with `Srv_Features:<addr> P` in the access map.
    pub pipelining: bool,
    /// What the synchronization check does: `Enforce` answers the 554 and closes; `Drop`
    /// closes without a reply; `Ignore` only logs.
    pub pipelining_action: Action,
    /// Sendmail 8.18's CVE-2023-51765 fix: input after HELO/EHLO before its reply gets
    /// `554 5.5.0 SMTP protocol error` and the session rejects every later command; input
    /// after DATA before the 354 gets the same 554 and the connection is closed.
    /// `Srv_Features:<addr> F` in the access map exempts a client. `Drop` closes without a
    /// reply; `Ignore` only logs.
    pub stuffing_action: Action,
    /// A first command of `GET`, `POST`, `CONNECT` or `USER` (an HTTP or POP proxy probe)
    /// gets `421 4.7.0 <hostname> Rejecting open proxy <client>` and the connection is
    /// closed. `Drop` closes without a reply; `Ignore` only logs.
    pub open_proxy_action: Action,
    /// Sendmail's `FEATURE(delay_checks)`: where `Connect:` and `From:` refusals are applied.
    pub delay_checks: DelayChecks,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            bare_lf: BareLf::default(),
            pipelining: true,
            pipelining_action: Action::Enforce,
            stuffing_action: Action::Enforce,
            open_proxy_action: Action::Enforce,
            delay_checks: DelayChecks::default(),
        }
    }
}

/// `smtp.delay_checks`: Sendmail's `FEATURE(delay_checks)`. With it, the refusals of the
/// `Connect:` and `From:` checks of the access map are not given at connection or MAIL
/// time but at RCPT time, so the recipient's `Spam:` entry can decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DelayChecks {
    /// Refusals are given when found (no `FEATURE(delay_checks)`).
    #[default]
    Off,
    /// `FEATURE(delay_checks, friend)`: refusals are applied at RCPT time, except to
    /// recipients with `Spam:<rcpt> FRIEND` (without such entries, plain
    /// `FEATURE(delay_checks)`).
    Friend,
    /// `FEATURE(delay_checks, hater)`: refusals are applied at RCPT time, and only to
    /// recipients with `Spam:<rcpt> HATER`.
    Hater,
}

impl DelayChecks {
    /// The name in the configuration and in logs (`false` for `Off`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Off => "false",
            Self::Friend => "friend",
            Self::Hater => "hater",
        }
    }
}

/// What to do with a bare LF or bare CR inside DATA. Ambiguous line endings are what SMTP
/// smuggling exploits (a `\n.\n` one server takes as end of data and the next does not).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BareLf {
    /// Refuse the message (Sendmail 8.18 default behaviour).
    #[default]
    Reject,
    /// Accept and rewrite the stray LF/CR as CRLF.
    Normalize,
}

/// `[local]`: which recipients we deliver to ourselves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalConfig {
    /// Lowercase, without trailing dot.
    pub domains: Vec<String>,
    pub maildir_root: PathBuf,
    /// Lowercase local parts: `users` merged with the lines of `users_file`.
    pub users: HashSet<String>,
    /// The configured path (as written), kept so a reload can re-read it.
    pub users_file: Option<PathBuf>,
}

impl LocalConfig {
    /// Is `domain` one of ours? Case-insensitive (RFC 5321 §2.4: domains are not case
    /// sensitive) and ignores one trailing dot (an absolute name means the same domain).
    pub fn is_local_domain(&self, domain: &str) -> bool {
        let domain = domain.strip_suffix('.').unwrap_or(domain);
        self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// True when no user list is configured at all: every local part at the local domains
    /// is accepted. A configured but empty `users_file` is a list (of nobody), not "all".
    pub fn accepts_all_users(&self) -> bool {
        self.users.is_empty() && self.users_file.is_none()
    }
}

/// `[timeouts]`: the session's own type (one definition, owned by the crate that arms the
/// timers); `Phase` names a wait and `Timeouts::effective` applies the `command` cap.
pub use portcullis_smtp::{Timeouts, WaitPhase as Phase};

/// The values an operator gets without a `[timeouts]` section (RFC 5321 §4.5.3.2).
pub const DEFAULT_TIMEOUTS: Timeouts = Timeouts::RFC5321;

/// `[queue]`: retry schedule of temporary delivery failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// First retry delay; doubles after each failure.
    pub retry_min: Duration,
    /// Upper bound of the retry delay.
    pub retry_max: Duration,
    /// Bounce after this long in the queue.
    pub lifetime: Duration,
    /// Connections open to one next hop at once (Postfix's destination concurrency).
    pub connections_per_hop: u32,
    /// Relay connections open at once, all next hops together.
    pub max_connections: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            retry_min: Duration::from_secs(60),
            retry_max: Duration::from_secs(60 * 60),
            lifetime: Duration::from_secs(5 * 24 * 60 * 60),
            connections_per_hop: 10,
            max_connections: 100,
        }
    }
}

/// `[log]`: event log format and destination, and rejection summaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LogConfig {
    pub format: LogFormat,
    pub destination: LogDestination,
    pub summaries: SummaryConfig,
}

/// Rejection summaries (Sendmail's `RejectLogInterval`, generalised): under a flood each
/// defence logs its first rejections per client in full, then one summary line per interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SummaryConfig {
    /// `log.summary_interval`: the length of one counting window; zero = off (every
    /// rejection logged in full).
    pub interval: Duration,
    /// `log.summary_after`: rejections logged in full per client and defence in a window.
    pub after: u32,
    /// `log.summary_top`: clients named in a summary line.
    pub top: u32,
}

impl SummaryConfig {
    /// Whether rejections are summarised at all.
    pub fn enabled(&self) -> bool {
        !self.interval.is_zero()
    }
}

impl Default for SummaryConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            // fail2ban's default maxretry: filters written for Sendmail's lines still see
            // enough of them per client to ban.
            after: 5,
            top: 5,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One text line per event, in Sendmail's wording (fail2ban filters keep working).
    #[default]
    Syslog,
    /// One JSON object per event.
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogDestination {
    #[default]
    Stderr,
    /// The local syslog socket `/dev/log`.
    Syslog,
}

/// Defaults of `[server]` and `[local]` that have no `Default` impl because the host name
/// is not a constant.
pub(crate) const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 2525));
pub(crate) const DEFAULT_SPOOL_DIR: &str = "var/spool";
pub(crate) const DEFAULT_MAX_MESSAGE_BYTES: u64 = 10 * 1024 * 1024;
pub(crate) const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
pub(crate) const DEFAULT_DOMAIN: &str = "localhost";
pub(crate) const DEFAULT_MAILDIR_ROOT: &str = "var/mail";
/// `load.loadavg_file`'s default, a `&str` for `validate::path`.
pub(crate) const DEFAULT_LOADAVG_FILE: &str = "/proc/loadavg";

#[cfg(test)]
mod tests {
    use super::*;

    fn local(domains: &[&str]) -> LocalConfig {
        LocalConfig {
            domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            maildir_root: PathBuf::from("m"),
            users: HashSet::new(),
            users_file: None,
        }
    }

    #[test]
    fn is_local_domain_table() {
        let l = local(&["example.test", "localhost"]);
        let table: &[(&str, bool)] = &[
            ("example.test", true),
            ("EXAMPLE.Test", true),
            ("example.test.", true),
            ("Example.TEST.", true),
            ("example.test..", false), // only one trailing dot is ignored
            ("mx.example.test", false),
            ("example", false),
            ("", false),
            (".", false),
            ("LOCALHOST", true),
        ];
        for &(domain, expected) in table {
            assert_eq!(l.is_local_domain(domain), expected, "{domain:?}");
        }
    }

    #[test]
    fn accepts_all_users_only_without_any_list() {
        let mut l = local(&["x"]);
        assert!(l.accepts_all_users());
        l.users_file = Some(PathBuf::from("empty"));
        assert!(!l.accepts_all_users());
        l.users_file = None;
        l.users.insert("alice".into());
        assert!(!l.accepts_all_users());
    }

    #[test]
    fn effective_caps_command_reads_only() {
        let t = Timeouts {
            command: Duration::from_secs(60),
            ..Timeouts::default()
        };
        let table: &[(Phase, u64)] = &[
            (Phase::Initial, 60),
            (Phase::Helo, 60),
            (Phase::Mail, 60),
            (Phase::Rcpt, 60),
            (Phase::Rset, 60),
            (Phase::Misc, 60),
            (Phase::DataInit, 120),
            (Phase::DataBlock, 180),
            (Phase::DataFinal, 600),
            (Phase::Quit, 120),
        ];
        for &(phase, secs) in table {
            assert_eq!(t.effective(phase), Duration::from_secs(secs), "{phase:?}");
        }
        // A phase shorter than the cap keeps its own value.
        let t = Timeouts {
            mail: Duration::from_secs(10),
            ..Timeouts::default()
        };
        assert_eq!(t.effective(Phase::Mail), Duration::from_secs(10));
    }
}
