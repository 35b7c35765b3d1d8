//! Rejection summaries: Sendmail's `RejectLogInterval`, generalised to every per-client
//! defence.
//!
//! Role: under a flood, a defence logs its first `log.summary_after` rejections per client
//! in full, and the rest only as counts in one summary line per defence and interval
//! (`log.summary_interval`), naming the `log.summary_top` busiest clients. [`Table`] is the
//! count: a deterministic table keyed by (defence, client address) with time passed in
//! (design.md §3.3, Postfix anvil). [`Summaries`] wraps it for [`crate::telemetry`]: it picks
//! the (defence, client) an event is about ([`subject`]), reads the clock and locks the
//! table; `serve` runs the task that takes the due summaries and logs them.
//!
//! Must not: read the clock or log anything inside [`Table`] (time is an argument; the
//! caller emits the summaries); suppress an event that is not a per-client rejection (start,
//! stop, deliveries, summaries themselves are always logged).
//!
//! Invariants:
//! - Windows are per defence: one starts at the first rejection a defence records, and is
//!   due `interval` later; taking it resets that defence's per-client counts. So a steady
//!   flood gives, per interval, at most `after` full lines per client and one summary.
//! - For every tracked client, rejections admitted in full + rejections counted as
//!   suppressed == rejections recorded (the property test below).
//! - Bounded: at most [`MAX_TRACKED_CLIENTS`] (defence, client) pairs at once, all defences
//!   together. Once the table is full, a rejection from a client not in it is counted in its
//!   defence's `untracked` bucket and never logged in full, whatever `after` says: a flood
//!   from that many addresses is exactly when full lines must stop. The counts are kept, so
//!   the summary's totals stay true.
//! - A reload that changes the settings keeps the counts (a shorter interval makes windows
//!   due sooner; `"0s"` makes every window due at the next take, so nothing counted is lost).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use portcullis_config::SummaryConfig;
use portcullis_smtp::{Finding, sendmail_address};

use crate::clock;
use crate::telemetry::Event;

/// (defence, client) pairs counted at once. A pair takes 28 bytes plus the hash table's
/// slack (buckets are a power of two, at most 7/8 full): about 4 MiB at most.
pub const MAX_TRACKED_CLIENTS: usize = 65_536;

/// The per-client defences whose rejections are summarised, each named as in the summary
/// line (the configuration's words where there is one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Defence {
    /// Talked before the greeting (`[greet_pause]`).
    GreetPause,
    /// Over a `ClientRate:` limit (`[rate_control]`).
    RateControl,
    /// Over a `ClientConn:` limit (`[conn_control]`).
    ConnControl,
    /// A `Connect:`, `From:` or `To:` access entry refused or discarded (`[access]`).
    Access,
    /// `Relaying denied`.
    RelayDenied,
    /// `User unknown`.
    UserUnknown,
    /// An HTTP or SMTP-proxy command (`smtp.open_proxy_action`).
    OpenProxy,
    /// `limits.max_recipients_per_message` reached.
    MaxRecipients,
    /// `limits.bad_rcpt_throttle` / `bad_rcpt_shutdown` reached.
    BadRcpt,
    /// Commands sent before the reply to the last one (`smtp.stuffing_action`).
    Stuffing,
    /// Improper pipelining (`smtp.pipelining_action`).
    Pipelining,
    /// Too many bad or repeated commands (`limits.command_abuse_action`).
    CommandAbuse,
}

impl Defence {
    /// The name in the summary line and its `defence` field.
    pub fn name(self) -> &'static str {
        match self {
            Self::GreetPause => "greet_pause",
            Self::RateControl => "rate_control",
            Self::ConnControl => "conn_control",
            Self::Access => "access",
            Self::RelayDenied => "relay_denied",
            Self::UserUnknown => "user_unknown",
            Self::OpenProxy => "open_proxy",
            Self::MaxRecipients => "max_recipients",
            Self::BadRcpt => "bad_rcpt",
            Self::Stuffing => "stuffing",
            Self::Pipelining => "pipelining",
            Self::CommandAbuse => "command_abuse",
        }
    }

    /// The defence a session finding belongs to.
    fn of_finding(finding: &Finding) -> Self {
        match finding {
            Finding::OpenProxy { .. } => Self::OpenProxy,
            Finding::TooManyRecipients => Self::MaxRecipients,
            Finding::RcptFlood(_) => Self::BadRcpt,
            Finding::Stuffing { .. } => Self::Stuffing,
            Finding::Unsynchronized { .. } => Self::Pipelining,
            Finding::TooManyBadCommands | Finding::CommandFlood { .. } => Self::CommandAbuse,
        }
    }
}

/// The defence and client an event is about, for the per-client rejection events; None for
/// every other event (never summarised).
pub fn subject(event: &Event<'_>) -> Option<(Defence, IpAddr)> {
    match *event {
        Event::Pregreet { client, .. } => Some((Defence::GreetPause, client)),
        Event::ClientLimited {
            client, defence, ..
        } => match defence {
            "rate_control" => Some((Defence::RateControl, client)),
            "conn_control" => Some((Defence::ConnControl, client)),
            _ => None,
        },
        Event::AccessCheck { client, .. } => Some((Defence::Access, client)),
        Event::RecipientRefused {
            client, relaying, ..
        } => Some((
            if relaying {
                Defence::RelayDenied
            } else {
                Defence::UserUnknown
            },
            client,
        )),
        Event::SessionDefence {
            client, finding, ..
        } => Some((Defence::of_finding(finding), client)),
        _ => None,
    }
}

/// One summary line's worth: what a defence did not log in full during one window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub defence: Defence,
    /// Rejections not logged in full (tracked and untracked clients).
    pub suppressed: u64,
    /// Tracked clients with at least one suppressed rejection.
    pub clients: usize,
    /// Of `suppressed`, those from clients the full table could not track.
    pub untracked: u64,
    /// The window's length: the interval, or less for a window cut short (shutdown, or
    /// summaries turned off by a reload).
    pub window: Duration,
    /// `log.summary_after` when the summary was taken.
    pub after: u32,
    /// The busiest clients by suppressed count, highest first; ties by address.
    pub top: Vec<(IpAddr, u64)>,
}

impl Summary {
    /// The window in whole seconds, rounded up (a cut-short window never reads "0s").
    pub fn window_secs(&self) -> u64 {
        let secs = self.window.as_secs();
        if self.window.subsec_nanos() > 0 {
            secs + 1
        } else {
            secs
        }
    }

    /// `[192.0.2.1] 400, [IPv6:2001:db8:0:0:0:0:0:1] 12`, Sendmail's address form.
    pub fn top_text(&self) -> String {
        self.top
            .iter()
            .map(|(addr, n)| format!("[{}] {n}", sendmail_address(*addr)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One client's rejections by one defence in the current window (saturating: four billion
/// in one window is past any flood a socket can carry).
#[derive(Clone, Copy, Debug, Default)]
struct Count {
    recorded: u32,
    suppressed: u32,
}

/// One defence's current window.
#[derive(Debug)]
struct Window {
    started: Instant,
    untracked: u64,
    clients: HashMap<IpAddr, Count>,
}

impl Window {
    fn new(now: Instant) -> Self {
        Self {
            started: now,
            untracked: 0,
            clients: HashMap::new(),
        }
    }
}

/// The counts, sans-IO: time is an argument of every call.
#[derive(Debug)]
pub struct Table {
    settings: SummaryConfig,
    windows: BTreeMap<Defence, Window>,
    /// (defence, client) pairs in all windows together.
    tracked: usize,
    cap: usize,
}

impl Table {
    /// An empty table tracking up to [`MAX_TRACKED_CLIENTS`] pairs.
    pub fn new(settings: SummaryConfig) -> Self {
        Self::with_cap(settings, MAX_TRACKED_CLIENTS)
    }

    /// An empty table tracking up to `cap` pairs (tests use a small one).
    pub fn with_cap(settings: SummaryConfig, cap: usize) -> Self {
        Self {
            settings,
            windows: BTreeMap::new(),
            tracked: 0,
            cap,
        }
    }

    /// New settings (a reload); the counts are kept.
    pub fn configure(&mut self, settings: SummaryConfig) {
        self.settings = settings;
    }

    /// The settings in force.
    pub fn settings(&self) -> SummaryConfig {
        self.settings
    }

    /// Records one rejection by `defence` of `client`; true: log it in full.
    pub fn admit(&mut self, defence: Defence, client: IpAddr, now: Instant) -> bool {
        if !self.settings.enabled() {
            return true;
        }
        let after = self.settings.after;
        let full = self.tracked >= self.cap;
        let window = self
            .windows
            .entry(defence)
            .or_insert_with(|| Window::new(now));
        if !window.clients.contains_key(&client) {
            if full {
                window.untracked = window.untracked.saturating_add(1);
                return false;
            }
            self.tracked += 1;
        }
        let count = window.clients.entry(client).or_default();
        count.recorded = count.recorded.saturating_add(1);
        if count.recorded <= after {
            return true;
        }
        count.suppressed = count.suppressed.saturating_add(1);
        false
    }

    /// When the earliest window is due (None: nothing counted). A caller that sleeps until
    /// then, or at most one interval when None, misses no window: a window that starts
    /// meanwhile is due a whole interval after it starts.
    pub fn next_due(&self) -> Option<Instant> {
        let interval = self.settings.interval;
        self.windows.values().map(|w| w.started + interval).min()
    }

    /// Closes every window that is due at `now` (all of them while summaries are off) and
    /// returns a summary for each that suppressed something, in defence order.
    pub fn take_due(&mut self, now: Instant) -> Vec<Summary> {
        let interval = self.settings.interval;
        let enabled = self.settings.enabled();
        self.take(now, |w| !enabled || w.started + interval <= now)
    }

    /// Closes every window (shutdown), due or not.
    pub fn take_all(&mut self, now: Instant) -> Vec<Summary> {
        self.take(now, |_| true)
    }

    fn take(&mut self, now: Instant, due: impl Fn(&Window) -> bool) -> Vec<Summary> {
        let closing: Vec<Defence> = self
            .windows
            .iter()
            .filter(|(_, w)| due(w))
            .map(|(d, _)| *d)
            .collect();
        let mut summaries = Vec::new();
        for defence in closing {
            let Some(window) = self.windows.remove(&defence) else {
                continue;
            };
            self.tracked = self.tracked.saturating_sub(window.clients.len());
            if let Some(summary) = self.summarise(defence, &window, now) {
                summaries.push(summary);
            }
        }
        summaries
    }

    /// The summary of a closed window; None when it suppressed nothing.
    fn summarise(&self, defence: Defence, window: &Window, now: Instant) -> Option<Summary> {
        let mut busy: Vec<(IpAddr, u64)> = window
            .clients
            .iter()
            .filter(|(_, c)| c.suppressed > 0)
            .map(|(addr, c)| (*addr, u64::from(c.suppressed)))
            .collect();
        let suppressed = busy.iter().map(|(_, n)| n).sum::<u64>() + window.untracked;
        if suppressed == 0 {
            return None;
        }
        let clients = busy.len();
        busy.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        busy.truncate(usize::try_from(self.settings.top).unwrap_or(usize::MAX));
        let mut window_len = now.saturating_duration_since(window.started);
        if self.settings.enabled() {
            window_len = window_len.min(self.settings.interval);
        }
        Some(Summary {
            defence,
            suppressed,
            clients,
            untracked: window.untracked,
            window: window_len,
            after: self.settings.after,
            top: busy,
        })
    }
}

/// The table as telemetry uses it: shared, locked for each call, fed by the clock.
#[derive(Debug)]
pub struct Summaries {
    table: Mutex<Table>,
}

impl Summaries {
    /// Off until [`Summaries::configure`] turns it on: only the server (whose task logs the
    /// due summaries) does; a telemetry without that task must not hold lines back.
    pub fn off() -> Self {
        let off = SummaryConfig {
            interval: Duration::ZERO,
            ..SummaryConfig::default()
        };
        Self {
            table: Mutex::new(Table::new(off)),
        }
    }

    /// New settings; the counts are kept.
    pub fn configure(&self, settings: SummaryConfig) {
        if let Ok(mut table) = self.table.lock() {
            table.configure(settings);
        }
    }

    /// Whether `event` is to be logged in full: always for an event that is not a
    /// per-client rejection, and for a rejection within its client's first `after`.
    pub fn admit(&self, event: &Event<'_>) -> bool {
        if let Event::SessionClosed { held_back, .. } = event {
            return !held_back;
        }
        let Some((defence, client)) = subject(event) else {
            return true;
        };
        match self.table.lock() {
            Ok(mut table) => table.admit(defence, client, clock::now()),
            Err(_) => true, // A panic elsewhere poisoned it: log rather than lose lines.
        }
    }

    /// The due summaries, and when to look again: at the next window's end, or after
    /// `idle` when nothing is counted (capped at `idle` either way, so a reload that
    /// shortens the interval takes effect within it).
    pub fn take_due(&self, idle: Duration) -> (Vec<Summary>, Instant) {
        let now = clock::now();
        let Ok(mut table) = self.table.lock() else {
            return (Vec::new(), now + idle);
        };
        let due = table.take_due(now);
        let next = table.next_due().map_or(now + idle, |t| t.min(now + idle));
        (due, next)
    }

    /// Every window's summary, due or not (shutdown).
    pub fn take_all(&self) -> Vec<Summary> {
        match self.table.lock() {
            Ok(mut table) => table.take_all(clock::now()),
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // Tests make up instants from the real clock.
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn settings(interval_secs: u64, after: u32, top: u32) -> SummaryConfig {
        SummaryConfig {
            interval: Duration::from_secs(interval_secs),
            after,
            top,
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn first_after_per_client_logged_then_one_summary() {
        let t0 = Instant::now();
        let mut t = Table::new(settings(60, 2, 5));
        // 8 rejections from .2, 3 from .3, all within the window.
        let mut logged = Vec::new();
        for i in 0..8 {
            logged.push(t.admit(Defence::GreetPause, ip(2), t0 + secs(i)));
        }
        for i in 0..3 {
            logged.push(t.admit(Defence::GreetPause, ip(3), t0 + secs(10 + i)));
        }
        let full: Vec<bool> = [[true; 2].as_slice(), &[false; 6], &[true; 2], &[false]].concat();
        assert_eq!(logged, full);
        assert_eq!(t.next_due(), Some(t0 + secs(60)));
        assert!(t.take_due(t0 + secs(59)).is_empty());
        let due = t.take_due(t0 + secs(60));
        assert_eq!(
            due,
            vec![Summary {
                defence: Defence::GreetPause,
                suppressed: 7,
                clients: 2,
                untracked: 0,
                window: secs(60),
                after: 2,
                top: vec![(ip(2), 6), (ip(3), 1)],
            }]
        );
        assert_eq!(due[0].top_text(), "[192.0.2.2] 6, [192.0.2.3] 1");
        // The window is gone and the counts with it: the next rejection is logged in full.
        assert_eq!(t.next_due(), None);
        assert!(t.admit(Defence::GreetPause, ip(2), t0 + secs(61)));
        assert_eq!(t.next_due(), Some(t0 + secs(121)));
    }

    #[test]
    fn defences_count_apart() {
        let t0 = Instant::now();
        let mut t = Table::new(settings(10, 1, 5));
        assert!(t.admit(Defence::GreetPause, ip(2), t0));
        assert!(t.admit(Defence::RelayDenied, ip(2), t0 + secs(3)));
        assert!(!t.admit(Defence::GreetPause, ip(2), t0 + secs(4)));
        assert!(!t.admit(Defence::RelayDenied, ip(2), t0 + secs(5)));
        assert!(!t.admit(Defence::RelayDenied, ip(2), t0 + secs(6)));
        // Each defence's window started at its own first rejection.
        let due = t.take_due(t0 + secs(10));
        assert_eq!(due.len(), 1);
        assert_eq!(
            (due[0].defence, due[0].suppressed),
            (Defence::GreetPause, 1)
        );
        let due = t.take_due(t0 + secs(13));
        assert_eq!(due.len(), 1);
        assert_eq!(
            (due[0].defence, due[0].suppressed),
            (Defence::RelayDenied, 2)
        );
        assert_eq!(due[0].top, vec![(ip(2), 2)]);
    }

    #[test]
    fn quiet_window_gives_no_summary() {
        let t0 = Instant::now();
        let mut t = Table::new(settings(10, 5, 5));
        for i in 1..=5 {
            assert!(t.admit(Defence::Access, ip(i), t0));
        }
        assert!(t.take_due(t0 + secs(10)).is_empty());
        assert_eq!(t.next_due(), None, "the window closed all the same");
    }

    #[test]
    fn top_is_by_count_then_address_and_cut_to_top() {
        let t0 = Instant::now();
        let mut t = Table::new(settings(10, 0, 3));
        // Suppressed counts: .9 → 3, .4 → 2, .7 → 2, .1 → 2, .5 → 1.
        for (last, n) in [(5, 1), (7, 2), (9, 3), (1, 2), (4, 2)] {
            for _ in 0..n {
                assert!(!t.admit(Defence::UserUnknown, ip(last), t0));
            }
        }
        let due = t.take_all(t0 + Duration::from_millis(2500));
        assert_eq!(due.len(), 1);
        let s = &due[0];
        assert_eq!((s.suppressed, s.clients), (10, 5));
        assert_eq!(s.top, vec![(ip(9), 3), (ip(1), 2), (ip(4), 2)]);
        // A window cut short reports its own length, rounded up.
        assert_eq!(s.window_secs(), 3);
    }

    #[test]
    fn top_zero_names_nobody() {
        let t0 = Instant::now();
        let mut t = Table::new(settings(10, 0, 0));
        assert!(!t.admit(Defence::Stuffing, ip(1), t0));
        let due = t.take_due(t0 + secs(10));
        assert_eq!((due[0].suppressed, due[0].clients), (1, 1));
        assert!(due[0].top.is_empty());
    }

    #[test]
    fn full_table_counts_newcomers_as_untracked() {
        let t0 = Instant::now();
        let mut t = Table::with_cap(settings(10, 1, 5), 2);
        assert!(t.admit(Defence::GreetPause, ip(1), t0));
        assert!(t.admit(Defence::RateControl, ip(1), t0));
        // Full: a third pair is never logged in full, even its first time.
        assert!(!t.admit(Defence::GreetPause, ip(2), t0));
        assert!(!t.admit(Defence::GreetPause, ip(3), t0));
        // Tracked clients go on as before.
        assert!(!t.admit(Defence::GreetPause, ip(1), t0));
        let due = t.take_due(t0 + secs(10));
        assert_eq!(due.len(), 1, "rate_control suppressed nothing");
        let s = &due[0];
        assert_eq!((s.suppressed, s.untracked, s.clients), (3, 2, 1));
        assert_eq!(s.top, vec![(ip(1), 1)]);
        // Taking the windows frees their places.
        assert!(t.admit(Defence::GreetPause, ip(2), t0 + secs(11)));
    }

    #[test]
    fn off_logs_everything_and_flushes_what_was_counted() {
        let t0 = Instant::now();
        let mut t = Table::new(settings(60, 1, 5));
        assert!(t.admit(Defence::BadRcpt, ip(1), t0));
        assert!(!t.admit(Defence::BadRcpt, ip(1), t0 + secs(1)));
        // A reload turns summaries off: the counts are kept and due at once.
        t.configure(settings(0, 1, 5));
        assert!(t.admit(Defence::BadRcpt, ip(1), t0 + secs(2)));
        let due = t.take_due(t0 + secs(3));
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].suppressed, due[0].window_secs()), (1, 3));
        assert_eq!(t.next_due(), None);
    }

    #[test]
    fn reload_keeps_counts_and_moves_the_due_time() {
        let t0 = Instant::now();
        let mut t = Table::new(settings(60, 1, 5));
        assert!(t.admit(Defence::OpenProxy, ip(1), t0));
        assert!(!t.admit(Defence::OpenProxy, ip(1), t0 + secs(1)));
        t.configure(settings(30, 1, 5));
        assert_eq!(t.next_due(), Some(t0 + secs(30)));
        assert!(!t.admit(Defence::OpenProxy, ip(1), t0 + secs(2)));
        let due = t.take_due(t0 + secs(30));
        assert_eq!((due[0].suppressed, due[0].window_secs()), (2, 30));
    }

    #[test]
    fn subject_of_events() {
        let client = ip(7);
        let finding = Finding::CommandFlood {
            command: "NOOP",
            count: 21,
        };
        let defence = Event::SessionDefence {
            qid: None,
            relay: "[192.0.2.7]",
            client,
            finding: &finding,
            action: portcullis_config::Action::Enforce,
        };
        assert_eq!(subject(&defence), Some((Defence::CommandAbuse, client)));
        let refused = |relaying| Event::RecipientRefused {
            qid: "Q",
            relay: "[192.0.2.7]",
            client,
            recipient: "x@y",
            reply: "550 5.7.1 x",
            relaying,
        };
        assert_eq!(
            subject(&refused(true)),
            Some((Defence::RelayDenied, client))
        );
        assert_eq!(
            subject(&refused(false)),
            Some((Defence::UserUnknown, client))
        );
        assert_eq!(subject(&Event::DaemonAccepting), None);
        assert_eq!(
            subject(&Event::NoMailIssued {
                relay: "[192.0.2.7]"
            }),
            None
        );
    }

    proptest! {
        /// For every client: logged in full + suppressed (as the summaries report it) ==
        /// recorded, across windows and takes at random times.
        #[test]
        fn logged_plus_suppressed_is_total(
            steps in proptest::collection::vec((0u8..3, 0u8..6, 0u64..4000, any::<bool>()), 1..200),
            after in 0u32..4,
        ) {
            let defences = [Defence::GreetPause, Defence::Access, Defence::UserUnknown];
            let t0 = Instant::now();
            let mut t = Table::new(settings(5, after, 50));
            let mut now = t0;
            let mut recorded: HashMap<(Defence, IpAddr), u64> = HashMap::new();
            let mut logged: HashMap<(Defence, IpAddr), u64> = HashMap::new();
            let mut suppressed: HashMap<(Defence, IpAddr), u64> = HashMap::new();
            let mut add = |summaries: Vec<Summary>| {
                for s in summaries {
                    prop_assert_eq!(s.untracked, 0);
                    prop_assert_eq!(s.top.len(), s.clients);
                    prop_assert_eq!(s.top.iter().map(|(_, n)| n).sum::<u64>(), s.suppressed);
                    for (addr, n) in s.top {
                        *suppressed.entry((s.defence, addr)).or_default() += n;
                    }
                }
                Ok(())
            };
            for (d, c, advance_ms, take) in steps {
                now += Duration::from_millis(advance_ms);
                let key = (defences[usize::from(d)], ip(c));
                *recorded.entry(key).or_default() += 1;
                if t.admit(key.0, key.1, now) {
                    *logged.entry(key).or_default() += 1;
                }
                if take {
                    add(t.take_due(now))?;
                }
            }
            add(t.take_all(now))?;
            for (key, total) in recorded {
                let got = logged.get(&key).copied().unwrap_or(0)
                    + suppressed.get(&key).copied().unwrap_or(0);
                prop_assert_eq!(got, total, "{:?}", key);
            }
        }

        /// With a tiny table, nothing is lost either: all rejections are logged or counted.
        #[test]
        fn full_table_loses_no_count(
            clients in proptest::collection::vec(0u8..20, 1..200),
            cap in 1usize..5,
        ) {
            let t0 = Instant::now();
            let mut t = Table::with_cap(settings(60, 1, 50), cap);
            let logged = clients
                .iter()
                .filter(|c| t.admit(Defence::GreetPause, ip(**c), t0))
                .count() as u64;
            let suppressed: u64 = t.take_all(t0).iter().map(|s| s.suppressed).sum();
            prop_assert_eq!(logged + suppressed, clients.len() as u64);
            prop_assert!(logged <= cap as u64);
        }
    }
}
