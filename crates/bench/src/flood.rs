//! The `flood` scenario: a legitimate client sends mail in sequential sessions, first alone
//! (baseline), then while slammers open connections from many loopback addresses at a fixed
//! rate (flood). It reports the legitimate client's session latency in both phases, how the
//! slammers were answered, and the server's memory (VmRSS, VmHWM) and CPU from /proc.
//!
//! A slammer does what a spam bot does: it writes EHLO, MAIL, RCPT and DATA as soon as the
//! connection opens, without waiting for the greeting, reads replies until the server closes
//! or `--slam-wait` passes, and closes.
//!
//! It must not connect anywhere but loopback, run unbounded (attempts are `rate × seconds`,
//! at most `--max-in-flight` at once, every wait bounded), or touch the server other than
//! over SMTP and /proc reads.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use hdrhistogram::Histogram;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::timeout_at;

use crate::clock;
use crate::held::raise_nofile;
use crate::message::build_message;
use crate::smtp::{Client, Errors, Failure, REPLY_TIMEOUT, ensure_loopback};

/// What a slammer writes at once, without waiting for the greeting.
const SLAM: &[u8] =
    b"EHLO bot.example\r\nMAIL FROM:<bot@spam.example>\r\nRCPT TO:<user@example.test>\r\nDATA\r\n";
/// Most replies a slammer reads (5 are expected: greeting, EHLO, MAIL, RCPT, DATA).
const MAX_SLAM_REPLIES: usize = 16;
/// How often the server's VmRSS is read.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Pause after a failed legitimate session before the next one.
const FAIL_PAUSE: Duration = Duration::from_millis(100);
/// File descriptors kept for everything but the slammers' sockets.
const SPARE_FDS: u64 = 256;
/// Slack after the slammers' own waits before unfinished ones are aborted.
const DRAIN_SLACK: Duration = Duration::from_secs(5);
/// Linux reports /proc/<pid>/stat times in USER_HZ ticks, 100 per second.
const TICKS_PER_SEC: f64 = 100.0;
/// Most addresses in `--slam-sources`.
const MAX_SOURCES: usize = 65_536;
/// Bound on sessions one legitimate worker runs in a phase (the phase's end comes first).
const MAX_LEGIT_SESSIONS: u64 = 100_000_000;
/// Bound on VmRSS samples in one phase (the phase's end comes first).
const MAX_SAMPLES: u64 = 100_000_000;

/// Loopback addresses, in the order they are used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SourceList(pub(crate) Vec<IpAddr>);

/// clap parser for `--slam-sources`: comma-separated IPv4 ranges (`A-B`) and addresses.
pub(crate) fn parse_source_list(s: &str) -> anyhow::Result<SourceList> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        if let Some((a, b)) = item.split_once('-') {
            let (a, b): (Ipv4Addr, Ipv4Addr) = (
                a.trim()
                    .parse()
                    .with_context(|| format!("{a:?} is not IPv4"))?,
                b.trim()
                    .parse()
                    .with_context(|| format!("{b:?} is not IPv4"))?,
            );
            ensure_loopback(IpAddr::V4(a))?;
            ensure_loopback(IpAddr::V4(b))?;
            let (lo, hi) = (u32::from(a), u32::from(b));
            ensure!(lo <= hi, "range {item:?} runs backwards");
            ensure!(
                (hi - lo) as usize + out.len() < MAX_SOURCES,
                "more than {MAX_SOURCES} sources"
            );
            out.extend((lo..=hi).map(|n| IpAddr::V4(Ipv4Addr::from(n))));
        } else {
            out.push(crate::parse_source(item)?);
        }
        ensure!(out.len() <= MAX_SOURCES, "more than {MAX_SOURCES} sources");
    }
    ensure!(!out.is_empty(), "no source address in {s:?}");
    Ok(SourceList(out))
}

/// Command-line options of `flood`, also built directly by tests.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FloodConfig {
    /// Server address (loopback IP:port only)
    #[arg(long, value_parser = crate::parse_target)]
    pub(crate) target: SocketAddr,
    /// Server process id, for /proc/<pid>/status (VmRSS, VmHWM) and /proc/<pid>/stat (CPU)
    #[arg(long)]
    pub(crate) pid: u32,
    /// Slamming connections started per second in the flood phase, open loop (0.1..=100000)
    #[arg(long, default_value_t = 1000.0)]
    pub(crate) rate: f64,
    /// Seconds of each phase: baseline, then flood
    #[arg(long, default_value_t = 20.0)]
    pub(crate) seconds: f64,
    /// Slammers' source addresses, round-robin: comma-separated IPv4 ranges and addresses
    #[arg(long, default_value = "127.0.0.2-127.0.0.201", value_parser = parse_source_list)]
    pub(crate) slam_sources: SourceList,
    /// The legitimate client's source address (exempt it from the limits in the access map)
    #[arg(long, default_value = "127.0.0.1", value_parser = crate::parse_source)]
    pub(crate) legit_source: IpAddr,
    /// Legitimate workers, each running one session after another (1..=64)
    #[arg(long, default_value_t = 1)]
    pub(crate) legit_workers: usize,
    /// Approximate size of the legitimate messages, bytes (64..=50000000)
    #[arg(long, default_value_t = 2048)]
    pub(crate) size: usize,
    /// Envelope and header recipient of the legitimate messages (must get a 250)
    #[arg(long, default_value = "alice@localhost")]
    pub(crate) to: String,
    /// Envelope and header sender of the legitimate messages
    #[arg(long, default_value = "bench@example.org")]
    pub(crate) from: String,
    /// Most slamming connections in flight; an attempt due beyond it is skipped and counted
    #[arg(long, default_value_t = 20_000)]
    pub(crate) max_in_flight: usize,
    /// Seconds a slammer waits for its connect, and then for replies, before closing
    #[arg(long, default_value_t = 3.0)]
    pub(crate) slam_wait: f64,
    /// Alternate baseline and flood this many times, each window --seconds/rounds long, and
    /// pool the figures per phase (1..=100): cancels slow changes in the machine's speed
    #[arg(long, default_value_t = 1)]
    pub(crate) rounds: u32,
}

impl FloodConfig {
    fn validate(&self) -> anyhow::Result<()> {
        ensure_loopback(self.target.ip())?;
        ensure_loopback(self.legit_source)?;
        ensure!(
            self.rate >= 0.1 && self.rate <= 100_000.0,
            "--rate must be in [0.1, 100000]"
        );
        ensure!(
            self.seconds > 0.0 && self.seconds <= 3_600.0,
            "--seconds must be in (0, 3600]"
        );
        ensure!(
            (1..=64).contains(&self.legit_workers),
            "--legit-workers must be 1..=64"
        );
        ensure!(
            (64..=50_000_000).contains(&self.size),
            "--size must be 64..=50000000"
        );
        ensure!(
            (1..=1_000_000).contains(&self.max_in_flight),
            "--max-in-flight must be 1..=1000000"
        );
        ensure!(
            self.slam_wait > 0.0 && self.slam_wait <= 60.0,
            "--slam-wait must be in (0, 60]"
        );
        ensure!((1..=100).contains(&self.rounds), "--rounds must be 1..=100");
        ensure!(
            self.attempts() >= 1,
            "--rate × --seconds / --rounds must give at least one slammer per window"
        );
        ensure!(
            !self.slam_sources.0.is_empty() && self.slam_sources.0.len() <= MAX_SOURCES,
            "--slam-sources must list 1..={MAX_SOURCES} addresses"
        );
        for s in self.slam_sources.0.iter().chain([&self.legit_source]) {
            ensure_loopback(*s)?;
            ensure!(
                s.is_ipv4() == self.target.is_ipv4(),
                "source {s} is not the same family as {}",
                self.target
            );
        }
        for addr in [&self.to, &self.from] {
            ensure!(
                !addr.contains(['<', '>', '\r', '\n', ' ']),
                "bad mailbox {addr:?}"
            );
        }
        Ok(())
    }

    /// One window of one phase.
    fn window(&self) -> Duration {
        Duration::from_secs_f64(self.seconds / f64::from(self.rounds))
    }

    fn slam_wait(&self) -> Duration {
        Duration::from_secs_f64(self.slam_wait)
    }

    /// Slamming connection attempts in one flood window.
    fn attempts(&self) -> u64 {
        // The factors are validated, so the product is below 4e8.
        (self.rate * self.seconds / f64::from(self.rounds)).floor() as u64
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_max(600_000_000, 3).context("histogram")
}

/// The legitimate client's figures for one phase.
#[derive(Debug)]
pub(crate) struct LegitStats {
    /// Completed sessions started within the phase.
    pub(crate) sessions: u64,
    /// Microseconds from connect to the 221 of QUIT, per completed session.
    pub(crate) latency: Histogram<u64>,
    pub(crate) errors: Errors,
}

impl LegitStats {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            sessions: 0,
            latency: histogram()?,
            errors: Errors::default(),
        })
    }
    fn merge(&mut self, other: Self) -> anyhow::Result<()> {
        self.sessions += other.sessions;
        self.latency.add(&other.latency).context("merge latency")?;
        self.errors.merge(other.errors);
        Ok(())
    }
}

/// How one slamming connection went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Outcome {
    /// Never got a 250 to MAIL or RCPT nor a 354.
    Rejected,
    /// Got a 250 to MAIL or RCPT, or a 354: the server let a slammer in.
    Accepted,
    /// No connection (refused, or none within `--slam-wait`).
    ConnectFailed,
}

/// How a slamming connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum End {
    /// The server closed the connection (EOF).
    Closed,
    /// A read error, usually a reset after the server closed with our commands unread.
    Reset,
    /// Still open when `--slam-wait` passed; we closed it.
    WaitOver,
    /// A reply that did not parse, or more than 16 of them.
    Protocol,
    /// Never connected.
    NotConnected,
}

impl End {
    fn label(self) -> &'static str {
        match self {
            Self::Closed => "closed by the server",
            Self::Reset => "reset/read error",
            Self::WaitOver => "still open at --slam-wait (closed by us)",
            Self::Protocol => "protocol error",
            Self::NotConnected => "not connected",
        }
    }
}

/// One slamming connection's result.
#[derive(Debug)]
pub(crate) struct Slam {
    pub(crate) outcome: Outcome,
    /// The code of the first reply (the greeting), if any came.
    pub(crate) first: Option<u16>,
    pub(crate) end: End,
    /// Microseconds from the connect to the first reply.
    pub(crate) first_reply_us: Option<u64>,
    pub(crate) failure: Option<Failure>,
}

/// Whether a slammer's replies (greeting, EHLO, MAIL, RCPT, DATA, in order) let it in: a
/// 250 or 251 after the greeting and the EHLO reply answers MAIL or RCPT, and a 354 is DATA.
pub(crate) fn slammer_got_in(codes: &[u16]) -> bool {
    codes.iter().enumerate().any(|(i, c)| match c {
        354 => true,
        250 | 251 => i >= 2,
        _ => false,
    })
}

/// Opens one slamming connection from `source`, talks first, reads until EOF or `wait`.
async fn slam_one(target: SocketAddr, source: IpAddr, wait: Duration) -> Slam {
    let t0 = clock::now();
    let mut c = match Client::connect_within(target, Some(source), wait, t0 + wait).await {
        Ok(c) => c,
        Err(f) => {
            return Slam {
                outcome: Outcome::ConnectFailed,
                first: None,
                end: End::NotConnected,
                first_reply_us: None,
                failure: Some(f),
            };
        }
    };
    let connected = clock::now();
    c.set_hard(connected + wait);
    // A failed write means the server has closed already; what it said may still be readable.
    let _ = c.send("slam", SLAM).await;
    let mut codes = Vec::with_capacity(MAX_SLAM_REPLIES);
    let mut first_reply_us = None;
    let mut end = End::Protocol;
    for _ in 0..MAX_SLAM_REPLIES {
        match c.reply().await {
            Ok(r) => {
                if codes.is_empty() {
                    first_reply_us = Some(micros(clock::now() - connected));
                }
                codes.push(r.code);
            }
            Err(f) => {
                end = match f.kind.as_str() {
                    "closed" => End::Closed,
                    "timeout" => End::WaitOver,
                    "io" => End::Reset,
                    _ => End::Protocol,
                };
                break;
            }
        }
    }
    Slam {
        outcome: if slammer_got_in(&codes) {
            Outcome::Accepted
        } else {
            Outcome::Rejected
        },
        first: codes.first().copied(),
        end,
        first_reply_us,
        failure: None,
    }
}

/// The slammers' figures.
#[derive(Debug)]
pub(crate) struct SlamStats {
    /// Connections started.
    pub(crate) attempted: u64,
    pub(crate) outcomes: BTreeMap<Outcome, u64>,
    /// First reply code (`None`: no reply at all) → connections.
    pub(crate) first: BTreeMap<Option<u16>, u64>,
    pub(crate) ends: BTreeMap<End, u64>,
    pub(crate) first_reply: Histogram<u64>,
    /// Connect failures and lost tasks, by kind.
    pub(crate) errors: Errors,
    /// Attempts skipped because `--max-in-flight` connections were open.
    pub(crate) capped: u64,
    /// Connections still running at the drain deadline (aborted, not classified).
    pub(crate) unfinished: u64,
    /// Latest start behind its schedule.
    pub(crate) max_lag: Duration,
    /// Time from the phase's start to the last attempt's start.
    pub(crate) span: Duration,
}

impl SlamStats {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            attempted: 0,
            outcomes: BTreeMap::new(),
            first: BTreeMap::new(),
            ends: BTreeMap::new(),
            first_reply: histogram()?,
            errors: Errors::default(),
            capped: 0,
            unfinished: 0,
            max_lag: Duration::ZERO,
            span: Duration::ZERO,
        })
    }
    fn add(&mut self, joined: Result<Slam, tokio::task::JoinError>) {
        match joined {
            Ok(s) => {
                *self.outcomes.entry(s.outcome).or_default() += 1;
                *self.ends.entry(s.end).or_default() += 1;
                if s.outcome != Outcome::ConnectFailed {
                    *self.first.entry(s.first).or_default() += 1;
                }
                if let Some(us) = s.first_reply_us {
                    self.first_reply.saturating_record(us);
                }
                if let Some(f) = &s.failure {
                    self.errors.record(f);
                }
            }
            Err(e) => self.errors.record(&Failure::new("task", e.to_string())),
        }
    }
    fn merge(&mut self, other: Self) -> anyhow::Result<()> {
        self.attempted += other.attempted;
        for (k, n) in other.outcomes {
            *self.outcomes.entry(k).or_default() += n;
        }
        for (k, n) in other.first {
            *self.first.entry(k).or_default() += n;
        }
        for (k, n) in other.ends {
            *self.ends.entry(k).or_default() += n;
        }
        self.first_reply
            .add(&other.first_reply)
            .context("merge first-reply times")?;
        self.errors.merge(other.errors);
        self.capped += other.capped;
        self.unfinished += other.unfinished;
        self.max_lag = self.max_lag.max(other.max_lag);
        self.span += other.span;
        Ok(())
    }
    pub(crate) fn count(&self, o: Outcome) -> u64 {
        self.outcomes.get(&o).copied().unwrap_or(0)
    }
    fn rate(&self) -> f64 {
        self.attempted as f64 / self.span.as_secs_f64().max(1e-9)
    }
}

/// Starts `cfg.attempts()` slammers on schedule (open loop), then waits for them.
async fn slam(cfg: Arc<FloodConfig>, cap: usize, start: Instant) -> anyhow::Result<SlamStats> {
    let mut stats = SlamStats::new()?;
    let wait = cfg.slam_wait();
    let sources = &cfg.slam_sources.0;
    let mut set = JoinSet::new();
    for i in 0..cfg.attempts() {
        let due = start + Duration::from_secs_f64(i as f64 / cfg.rate);
        let now = clock::now();
        if due > now {
            tokio::time::sleep_until(clock::tokio_at(due)).await;
        } else {
            stats.max_lag = stats.max_lag.max(now - due);
        }
        while let Some(done) = set.try_join_next() {
            stats.add(done);
        }
        if set.len() >= cap {
            stats.capped += 1;
            continue;
        }
        let source = sources[(i % sources.len() as u64) as usize];
        set.spawn(slam_one(cfg.target, source, wait));
        stats.attempted += 1;
        stats.span = clock::now() - start;
    }
    // Each slammer ends by itself within 2 × wait; the slack covers a busy machine.
    let hard = clock::tokio_at(clock::now() + 2 * wait + DRAIN_SLACK);
    for _ in 0..=cap {
        match timeout_at(hard, set.join_next()).await {
            Ok(Some(done)) => stats.add(done),
            Ok(None) => break,
            Err(_) => {
                stats.unfinished = set.len() as u64;
                set.abort_all();
                break;
            }
        }
    }
    Ok(stats)
}

/// One legitimate session: connect, 220, EHLO, MAIL, RCPT, DATA, body, 250, QUIT, 221.
async fn legit_session(cfg: &FloodConfig, body: &[u8], started: Instant) -> Result<(), Failure> {
    let mut c =
        Client::connect(cfg.target, Some(cfg.legit_source), started + REPLY_TIMEOUT).await?;
    c.expect("greeting", 220).await?;
    c.send("ehlo", b"EHLO legit.example.org\r\n").await?;
    c.expect("ehlo", 250).await?;
    c.send("mail", format!("MAIL FROM:<{}>\r\n", cfg.from).as_bytes())
        .await?;
    c.expect("mail", 250).await?;
    c.send("rcpt", format!("RCPT TO:<{}>\r\n", cfg.to).as_bytes())
        .await?;
    c.expect("rcpt", 250).await?;
    c.send("data", b"DATA\r\n").await?;
    c.expect("data", 354).await?;
    c.send("data-end", body).await?;
    c.expect("data-end", 250).await?;
    c.send("quit", b"QUIT\r\n").await?;
    c.expect("quit", 221).await?;
    Ok(())
}

/// One legitimate worker: sessions one after another until `stop`.
async fn legit_worker(
    cfg: Arc<FloodConfig>,
    id: usize,
    stop: Instant,
) -> anyhow::Result<LegitStats> {
    let mut stats = LegitStats::new()?;
    for seq in 0..MAX_LEGIT_SESSIONS {
        if clock::now() >= stop {
            break;
        }
        let msg_id = format!(
            "{}.{}.{id}.{seq}@legit.example.org",
            clock::unix_now().as_secs(),
            std::process::id()
        );
        let body = build_message(
            cfg.size,
            &cfg.from,
            &cfg.to,
            &msg_id,
            clock::unix_now().as_secs(),
        );
        let started = clock::now();
        match legit_session(&cfg, &body, started).await {
            Ok(()) => {
                stats.sessions += 1;
                stats
                    .latency
                    .saturating_record(micros(clock::now() - started));
            }
            Err(f) => {
                stats.errors.record(&f);
                tokio::time::sleep(FAIL_PAUSE).await;
            }
        }
    }
    Ok(stats)
}

/// Runs the legitimate workers on a thread and runtime of their own, so that the slammers'
/// tasks never queue ahead of them in this tool's scheduler.
fn spawn_legit(
    cfg: Arc<FloodConfig>,
    stop: Instant,
) -> anyhow::Result<oneshot::Receiver<anyhow::Result<LegitStats>>> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("legit".into())
        .spawn(move || {
            let run = || -> anyhow::Result<LegitStats> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("building the legitimate client's runtime")?;
                rt.block_on(async {
                    let mut set = JoinSet::new();
                    for id in 0..cfg.legit_workers {
                        set.spawn(legit_worker(Arc::clone(&cfg), id, stop));
                    }
                    let mut total = LegitStats::new()?;
                    while let Some(joined) = set.join_next().await {
                        total.merge(joined.context("legitimate worker")??)?;
                    }
                    Ok(total)
                })
            };
            let _ = tx.send(run());
        })
        .context("starting the legitimate client's thread")?;
    Ok(rx)
}

/// A kB field (`VmRSS:`, `VmHWM:`) of /proc/<pid>/status text.
pub(crate) fn status_kb(status: &str, field: &str) -> Option<u64> {
    crate::access::status_field(status, field)
}

pub(crate) fn read_status_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status_kb(&text, field).with_context(|| format!("no {field} in {path}"))
}

/// utime + stime, in ticks, from /proc/<pid>/stat text (fields 14 and 15; the command name
/// in parentheses may contain spaces, so fields are counted after its closing one).
pub(crate) fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time used so far by `pid` (`None`: this process).
pub(crate) fn cpu_time(pid: Option<u32>) -> anyhow::Result<Duration> {
    let path = pid.map_or_else(
        || "/proc/self/stat".to_owned(),
        |p| format!("/proc/{p}/stat"),
    );
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = parse_stat_ticks(&text).with_context(|| format!("no utime/stime in {path}"))?;
    Ok(Duration::from_secs_f64(ticks as f64 / TICKS_PER_SEC))
}

/// (steal, total) ticks of the machine from /proc/stat text: the `cpu` line's fields
/// user nice system idle iowait irq softirq steal.
pub(crate) fn parse_cpu_steal(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    Some((*fields.get(7)?, fields.iter().sum()))
}

/// The machine's (steal, total) CPU ticks so far; zeros when unreadable.
pub(crate) fn machine_ticks() -> (u64, u64) {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| parse_cpu_steal(&t))
        .unwrap_or((0, 0))
}

/// Reads the server's VmRSS every 100 ms until told to stop; returns (peak kB, samples).
pub(crate) async fn sample_rss(pid: u32, mut stop: oneshot::Receiver<()>) -> (u64, u64) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut peak, mut samples) = (0, 0);
    for _ in 0..MAX_SAMPLES {
        let stopping = tokio::select! {
            _ = &mut stop => true,
            _ = tick.tick() => false,
        };
        if let Ok(kb) = read_status_kb(pid, "VmRSS:") {
            peak = u64::max(peak, kb);
            samples += 1;
        }
        if stopping {
            break;
        }
    }
    (peak, samples)
}

/// One phase's figures.
#[derive(Debug)]
pub(crate) struct Phase {
    pub(crate) legit: LegitStats,
    pub(crate) slam: Option<SlamStats>,
    /// The phase's length (start to the last session's end).
    pub(crate) wall: Duration,
    pub(crate) server_cpu: Duration,
    pub(crate) our_cpu: Duration,
    pub(crate) rss_peak_kb: u64,
    pub(crate) rss_samples: u64,
    /// CPU time the hypervisor gave to others (/proc/stat steal), and all CPU time, in ticks.
    pub(crate) steal_ticks: u64,
    pub(crate) total_ticks: u64,
}

impl Phase {
    fn merge(&mut self, other: Self) -> anyhow::Result<()> {
        self.legit.merge(other.legit)?;
        match (&mut self.slam, other.slam) {
            (Some(a), Some(b)) => a.merge(b)?,
            (None, b) => self.slam = b,
            (Some(_), None) => {}
        }
        self.wall += other.wall;
        self.server_cpu += other.server_cpu;
        self.our_cpu += other.our_cpu;
        self.rss_peak_kb = self.rss_peak_kb.max(other.rss_peak_kb);
        self.rss_samples += other.rss_samples;
        self.steal_ticks += other.steal_ticks;
        self.total_ticks += other.total_ticks;
        Ok(())
    }
    fn steal_pct(&self) -> f64 {
        100.0 * self.steal_ticks as f64 / self.total_ticks.max(1) as f64
    }
    fn rate(&self, seconds: f64) -> f64 {
        self.legit.sessions as f64 / seconds
    }
    fn ms(&self, q: f64) -> f64 {
        self.legit.latency.value_at_quantile(q) as f64 / 1000.0
    }
    fn max_ms(&self) -> f64 {
        self.legit.latency.max() as f64 / 1000.0
    }
}

/// Runs one phase: the legitimate workers for `--seconds`, with the slammers when `cap` is
/// given, while sampling the server's memory.
async fn phase(cfg: &Arc<FloodConfig>, cap: Option<usize>) -> anyhow::Result<Phase> {
    let server_cpu0 = cpu_time(Some(cfg.pid))?;
    let our_cpu0 = cpu_time(None)?;
    let (steal0, total0) = machine_ticks();
    let start = clock::now();
    let stop = start + cfg.window();
    let (stop_sampler, stopped) = oneshot::channel();
    let sampler = tokio::spawn(sample_rss(cfg.pid, stopped));
    let legit = spawn_legit(Arc::clone(cfg), stop)?;
    let slam = match cap {
        Some(cap) => Some(slam(Arc::clone(cfg), cap, start).await?),
        None => None,
    };
    let legit = legit
        .await
        .context("the legitimate client's thread ended without a result")??;
    let wall = clock::now() - start;
    let _ = stop_sampler.send(());
    let (rss_peak_kb, rss_samples) = sampler.await.context("memory sampler")?;
    let (steal1, total1) = machine_ticks();
    Ok(Phase {
        legit,
        slam,
        wall,
        server_cpu: cpu_time(Some(cfg.pid))?.saturating_sub(server_cpu0),
        our_cpu: cpu_time(None)?.saturating_sub(our_cpu0),
        rss_peak_kb,
        rss_samples,
        steal_ticks: steal1.saturating_sub(steal0),
        total_ticks: total1.saturating_sub(total0),
    })
}

/// What one run measured.
#[derive(Debug)]
pub(crate) struct FloodResult {
    pub(crate) baseline: Phase,
    pub(crate) flood: Phase,
    /// Per round: (baseline p99 ms, flood p99 ms, baseline steal %, flood steal %).
    pub(crate) rounds: Vec<(f64, f64, f64, f64)>,
    pub(crate) rss_before_kb: u64,
    pub(crate) vmhwm_kb: u64,
    /// The in-flight cap used (`--max-in-flight`, lowered to fit our open-files limit).
    pub(crate) cap: usize,
    pub(crate) our_nofile: u64,
}

/// Runs the baseline phase, then the flood phase, against `cfg.target`.
pub(crate) async fn run_flood(cfg: FloodConfig) -> anyhow::Result<FloodResult> {
    cfg.validate()?;
    let spare = SPARE_FDS + cfg.legit_workers as u64;
    let our_nofile = raise_nofile(cfg.max_in_flight as u64 + spare)?;
    let cap = usize::try_from(our_nofile.saturating_sub(spare))
        .unwrap_or(usize::MAX)
        .min(cfg.max_in_flight);
    ensure!(
        cap >= 1,
        "our open-files limit ({our_nofile}) leaves no room for slammers"
    );
    let rss_before_kb = read_status_kb(cfg.pid, "VmRSS:")?;
    let cfg = Arc::new(cfg);
    let mut baseline = phase(&cfg, None).await?;
    let mut flood = phase(&cfg, Some(cap)).await?;
    let mut rounds = vec![round_figures(&baseline, &flood)];
    for _ in 1..cfg.rounds {
        let b = phase(&cfg, None).await?;
        let f = phase(&cfg, Some(cap)).await?;
        rounds.push(round_figures(&b, &f));
        baseline.merge(b)?;
        flood.merge(f)?;
    }
    let vmhwm_kb = read_status_kb(cfg.pid, "VmHWM:")?;
    Ok(FloodResult {
        baseline,
        flood,
        rounds,
        rss_before_kb,
        vmhwm_kb,
        cap,
        our_nofile,
    })
}

fn round_figures(b: &Phase, f: &Phase) -> (f64, f64, f64, f64) {
    (b.ms(0.99), f.ms(0.99), b.steal_pct(), f.steal_pct())
}

/// The median of per-round p99 ratios (flood over baseline).
fn median_ratio(rounds: &[(f64, f64, f64, f64)]) -> f64 {
    let mut r: Vec<f64> = rounds.iter().map(|x| x.1 / x.0.max(1e-9)).collect();
    r.sort_by(f64::total_cmp);
    match r.len() {
        0 => 0.0,
        n if n % 2 == 1 => r[n / 2],
        n => (r[n / 2 - 1] + r[n / 2]) / 2.0,
    }
}

fn code_label(code: Option<u16>) -> String {
    code.map_or_else(|| "none".to_owned(), |c| c.to_string())
}

impl FloodResult {
    /// p99 of the flood phase over p99 of the baseline.
    pub(crate) fn p99_ratio(&self) -> f64 {
        self.flood.ms(0.99) / self.baseline.ms(0.99).max(1e-9)
    }

    pub(crate) fn legit_failures(&self) -> u64 {
        self.baseline.legit.errors.total() + self.flood.legit.errors.total()
    }

    /// Human report followed by the one `RESULT` line.
    pub(crate) fn report(&self, cfg: &FloodConfig) -> String {
        let secs = cfg.seconds;
        let sources = &cfg.slam_sources.0;
        let (first_src, last_src) = (
            sources
                .first()
                .map_or_else(String::new, ToString::to_string),
            sources.last().map_or_else(String::new, ToString::to_string),
        );
        let mut out = format!(
            "portcullis-bench flood\n\
             \x20 measures the SMTP server at {} (pid {}): an exempt client's latency alone, then under a connection flood\n\
             \x20 machine: {} cores; this client shares them with the server (slammers on 2 tokio worker threads,\n\
             \x20   the legitimate client on a thread of its own)\n\
             \x20 legit:    {} worker(s) from {}, sessions back to back, {} B messages to <{}>\n\
             \x20   latency = one whole session: connect -> 220 -> EHLO -> MAIL -> RCPT -> DATA -> body -> 250 -> QUIT -> 221\n\
             \x20 slammers: {} connections/s for {:.1} s (open loop, at most {} in flight; our NOFILE {}) from {} addresses ({first_src} .. {last_src});\n\
             \x20   each writes EHLO, MAIL, RCPT, DATA at once, reads until EOF or {:.1} s, closes\n\
             \x20 phases:   baseline (legit alone) then flood (legit + slammers), {:.1} s each, in {} round(s) of {:.1} s windows\n",
            cfg.target,
            cfg.pid,
            crate::cores(),
            cfg.legit_workers,
            cfg.legit_source,
            cfg.size,
            cfg.to,
            cfg.rate,
            secs,
            self.cap,
            self.our_nofile,
            sources.len(),
            cfg.slam_wait,
            secs,
            cfg.rounds,
            secs / f64::from(cfg.rounds),
        );
        for (name, p) in [("baseline", &self.baseline), ("flood", &self.flood)] {
            out.push_str(&format!(
                "  {name:<9} {:>6} sessions, {:>7.1} msg/s; ms p50 {:.2}  p99 {:.2}  max {:.2}; failures {}\n",
                p.legit.sessions,
                p.rate(secs),
                p.ms(0.5),
                p.ms(0.99),
                p.max_ms(),
                p.legit.errors.total(),
            ));
        }
        out.push_str(&format!(
            "  p99 flood/baseline: {:.2} (bar: at most 1.2)\n",
            self.p99_ratio()
        ));
        if self.rounds.len() > 1 {
            for (i, (b, f, sb, sf)) in self.rounds.iter().enumerate() {
                out.push_str(&format!(
                    "    round {:>2}: p99 baseline {b:.2} ms (steal {sb:.0} %), flood {f:.2} ms (steal {sf:.0} %), ratio {:.2}\n",
                    i + 1,
                    f / b.max(1e-9),
                ));
            }
            out.push_str(&format!(
                "    median of the per-round ratios: {:.2}\n",
                median_ratio(&self.rounds)
            ));
        }
        out.push_str(&format!(
            "  CPU steal (the hypervisor running others, whole machine): baseline {:.0} %, flood {:.0} %\n",
            self.baseline.steal_pct(),
            self.flood.steal_pct()
        ));
        for (name, p) in [("baseline", &self.baseline), ("flood", &self.flood)] {
            if p.legit.errors.total() > 0 {
                out.push_str(&format!(
                    "  !!! LEGITIMATE CLIENT FAILED {} TIMES IN THE {} PHASE !!!\n",
                    p.legit.errors.total(),
                    name.to_uppercase()
                ));
                out.push_str(&p.legit.errors.report());
            }
        }
        if let Some(s) = &self.flood.slam {
            out.push_str(&format!(
                "  slammers: {} attempted ({:.1}/s achieved; latest start {:.1} ms behind schedule), \
                 {} rejected, {} accepted, {} connect_failed, {} skipped at the in-flight cap, {} unfinished\n",
                s.attempted,
                s.rate(),
                s.max_lag.as_secs_f64() * 1000.0,
                s.count(Outcome::Rejected),
                s.count(Outcome::Accepted),
                s.count(Outcome::ConnectFailed),
                s.capped,
                s.unfinished,
            ));
            let codes: Vec<String> = s
                .first
                .iter()
                .map(|(c, n)| format!("{}: {n}", code_label(*c)))
                .collect();
            out.push_str(&format!("    first reply: {}\n", codes.join(", ")));
            let ends: Vec<String> = s
                .ends
                .iter()
                .map(|(e, n)| format!("{}: {n}", e.label()))
                .collect();
            out.push_str(&format!("    ended: {}\n", ends.join(", ")));
            let h = &s.first_reply;
            out.push_str(&format!(
                "    connect -> first reply ms: p50 {:.2}  p99 {:.2}  max {:.2}\n",
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
                h.max() as f64 / 1000.0,
            ));
            if s.errors.total() > 0 {
                out.push_str("    connect failures:\n");
                out.push_str(&s.errors.report());
            }
            if s.count(Outcome::Accepted) > 0 {
                out.push_str(&format!(
                    "  !!! {} SLAMMERS GOT IN (a 250 to MAIL or RCPT, or a 354) !!!\n",
                    s.count(Outcome::Accepted)
                ));
            }
        }
        out.push_str(&format!(
            "  server memory: VmRSS before {} kB; peak sampled every 100 ms: baseline {} kB ({} samples), \
             flood {} kB ({} samples); VmHWM at the end {} kB\n",
            self.rss_before_kb,
            self.baseline.rss_peak_kb,
            self.baseline.rss_samples,
            self.flood.rss_peak_kb,
            self.flood.rss_samples,
            self.vmhwm_kb,
        ));
        if self.vmhwm_kb < self.baseline.rss_peak_kb.max(self.flood.rss_peak_kb) {
            out.push_str(
                "    (VmHWM is below a sampled VmRSS: the kernel raises it at unmaps, not when \
                 memory is given back with madvise)\n",
            );
        }
        for (who, base, flood) in [
            ("server", self.baseline.server_cpu, self.flood.server_cpu),
            ("this tool", self.baseline.our_cpu, self.flood.our_cpu),
        ] {
            out.push_str(&format!(
                "  {who} CPU: baseline {:.2} s in {:.1} s ({:.0} % of a core), flood {:.2} s in {:.1} s ({:.0} %)\n",
                base.as_secs_f64(),
                self.baseline.wall.as_secs_f64(),
                100.0 * base.as_secs_f64() / self.baseline.wall.as_secs_f64().max(1e-9),
                flood.as_secs_f64(),
                self.flood.wall.as_secs_f64(),
                100.0 * flood.as_secs_f64() / self.flood.wall.as_secs_f64().max(1e-9),
            ));
        }
        let slam = self.flood.slam.as_ref();
        let count = |o| slam.map_or(0, |s| s.count(o));
        let codes: String = slam.map_or_else(String::new, |s| {
            s.first
                .iter()
                .map(|(c, n)| format!(" code_{}={n}", code_label(*c)))
                .collect()
        });
        out.push_str(&format!(
            "RESULT flood rate={} seconds={:.1} rounds={} legit_workers={} base_sessions={} base_rate={:.1} \
             base_p50_ms={:.2} base_p99_ms={:.2} base_max_ms={:.2} flood_sessions={} flood_rate={:.1} \
             flood_p50_ms={:.2} flood_p99_ms={:.2} flood_max_ms={:.2} p99_ratio={:.2} p99_ratio_round_median={:.2} \
             legit_failures={} \
             slam_attempted={} slam_rejected={} slam_accepted={} slam_connect_failed={} slam_capped={} \
             slam_unfinished={}{codes} rss_before_kb={} rss_peak_base_kb={} rss_peak_flood_kb={} \
             vmhwm_kb={} cpu_base_s={:.2} cpu_flood_s={:.2} steal_base_pct={:.0} steal_flood_pct={:.0}",
            cfg.rate,
            secs,
            cfg.rounds,
            cfg.legit_workers,
            self.baseline.legit.sessions,
            self.baseline.rate(secs),
            self.baseline.ms(0.5),
            self.baseline.ms(0.99),
            self.baseline.max_ms(),
            self.flood.legit.sessions,
            self.flood.rate(secs),
            self.flood.ms(0.5),
            self.flood.ms(0.99),
            self.flood.max_ms(),
            self.p99_ratio(),
            median_ratio(&self.rounds),
            self.legit_failures(),
            slam.map_or(0, |s| s.attempted),
            count(Outcome::Rejected),
            count(Outcome::Accepted),
            count(Outcome::ConnectFailed),
            slam.map_or(0, |s| s.capped),
            slam.map_or(0, |s| s.unfinished),
            self.rss_before_kb,
            self.baseline.rss_peak_kb,
            self.flood.rss_peak_kb,
            self.vmhwm_kb,
            self.baseline.server_cpu.as_secs_f64(),
            self.flood.server_cpu.as_secs_f64(),
            self.baseline.steal_pct(),
            self.flood.steal_pct(),
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_source_lists() {
        let l = parse_source_list("127.0.0.2-127.0.0.4").unwrap();
        assert_eq!(l.0, vec![ip("127.0.0.2"), ip("127.0.0.3"), ip("127.0.0.4")]);
        let l = parse_source_list("127.0.0.9, 127.0.1.255-127.0.2.0,::1").unwrap();
        assert_eq!(
            l.0,
            vec![
                ip("127.0.0.9"),
                ip("127.0.1.255"),
                ip("127.0.2.0"),
                ip("::1")
            ]
        );
        assert_eq!(
            parse_source_list("127.0.0.2-127.0.0.201").unwrap().0.len(),
            200
        );
        for bad in [
            "",
            "127.0.0.5-127.0.0.4",
            "10.0.0.1",
            "127.0.0.1-128.0.0.1",
            "127.0.0.0-127.1.0.0",
            "x",
        ] {
            assert!(parse_source_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn classifies_slammer_replies() {
        // Rejected: 554 banner and 550s; a 421 in place of the greeting; nothing at all.
        assert!(!slammer_got_in(&[554, 250, 550, 550, 550]));
        assert!(!slammer_got_in(&[421]));
        assert!(!slammer_got_in(&[]));
        assert!(!slammer_got_in(&[220, 250, 550, 550, 503]));
        // Let in: a 250 to MAIL or RCPT, or a 354.
        assert!(slammer_got_in(&[220, 250, 250, 550, 503]));
        assert!(slammer_got_in(&[220, 250, 550, 251]));
        assert!(slammer_got_in(&[554, 250, 550, 550, 354]));
    }

    #[test]
    fn parses_proc_stat() {
        let stat =
            "4242 (portcullis (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 150 37 0 0 20 0 5 0";
        assert_eq!(parse_stat_ticks(stat), Some(187));
        assert_eq!(parse_stat_ticks("4242 (p) S 1 2"), None);
        let status = "Name:\tportcullis\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_kb(status, "VmRSS:"), Some(10240));
        assert_eq!(status_kb(status, "VmHWM:"), Some(20480));
        assert!(cpu_time(None).is_ok());
        let proc_stat = "cpu  100 5 50 800 10 1 2 32 0 0\ncpu0 50 2 25 400 5 0 1 16 0 0\n";
        assert_eq!(parse_cpu_steal(proc_stat), Some((32, 1000)));
        assert_eq!(parse_cpu_steal("cpu0 1 2 3\n"), None);
        assert_eq!(
            median_ratio(&[(2.0, 3.0, 0.0, 0.0), (4.0, 4.0, 0.0, 0.0)]),
            1.25
        );
    }

    fn config(target: SocketAddr) -> FloodConfig {
        FloodConfig {
            target,
            pid: std::process::id(),
            rate: 200.0,
            seconds: 0.5,
            slam_sources: parse_source_list("127.0.0.2-127.0.0.11").unwrap(),
            legit_source: ip("127.0.0.1"),
            legit_workers: 2,
            size: 2048,
            to: "alice@localhost".into(),
            from: "bench@example.org".into(),
            max_in_flight: 1000,
            slam_wait: 0.3,
            rounds: 1,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slammers_rejected_by_a_554_banner() {
        let (addr, server) = crate::fake::start_rejecting_all_but(ip("127.0.0.1")).await;
        let cfg = config(addr);
        let r = run_flood(cfg.clone()).await.unwrap();
        let report = r.report(&cfg);
        let s = r.flood.slam.as_ref().unwrap();
        assert_eq!(s.attempted, 100, "{report}");
        assert_eq!(s.count(Outcome::Rejected), 100, "{report}");
        assert_eq!(s.count(Outcome::Accepted), 0, "{report}");
        assert_eq!(s.first.get(&Some(554)), Some(&100), "{report}");
        // The fake never closes: every slammer gives up at --slam-wait.
        assert_eq!(s.ends.get(&End::WaitOver), Some(&100), "{report}");
        assert!(r.baseline.legit.sessions > 0, "{report}");
        assert!(r.flood.legit.sessions > 0, "{report}");
        assert_eq!(r.legit_failures(), 0, "{report}");
        assert!(r.baseline.slam.is_none());
        // VmHWM may be below a sampled VmRSS here: the kernel raises it at unmaps, not when the
        // other tests' allocators give memory back with madvise.
        assert!(r.rss_before_kb > 0 && r.vmhwm_kb > 0 && r.flood.rss_samples > 0);
        assert!(
            report.contains(" slam_rejected=100 slam_accepted=0 "),
            "{report}"
        );
        assert!(report.contains(" code_554=100 "), "{report}");
        assert!(!report.contains("!!!"), "{report}");
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slammers_let_in_are_reported_loudly_over_rounds() {
        let (addr, server) = crate::fake::start().await;
        let cfg = FloodConfig {
            legit_workers: 1,
            rounds: 2,
            ..config(addr)
        };
        let r = run_flood(cfg.clone()).await.unwrap();
        let report = r.report(&cfg);
        let s = r.flood.slam.as_ref().unwrap();
        // Two windows of 0.25 s at 200/s: 50 slammers each.
        assert_eq!(s.attempted, 100, "{report}");
        assert_eq!(s.count(Outcome::Accepted), 100, "{report}");
        assert_eq!(s.first.get(&Some(220)), Some(&100), "{report}");
        assert!(report.contains("!!! 100 SLAMMERS GOT IN"), "{report}");
        assert_eq!(r.rounds.len(), 2);
        assert!(
            report.contains("round  2:") && report.contains(" rounds=2 "),
            "{report}"
        );
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn legitimate_failures_and_connect_failures_are_counted() {
        // Everyone is rejected, the legitimate client too; and a second target is closed.
        let (addr, server) = crate::fake::start_rejecting_all_but(ip("127.0.0.200")).await;
        let cfg = FloodConfig {
            seconds: 0.3,
            ..config(addr)
        };
        let r = run_flood(cfg.clone()).await.unwrap();
        let report = r.report(&cfg);
        assert!(r.baseline.legit.errors.total() > 0, "{report}");
        assert!(
            r.baseline.legit.errors.0.contains_key("greeting 554"),
            "{report}"
        );
        assert!(
            report.contains("LEGITIMATE CLIENT FAILED") && report.contains("BASELINE PHASE"),
            "{report}"
        );
        server.abort();

        let closed = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let cfg = FloodConfig {
            seconds: 0.2,
            rate: 50.0,
            ..config(closed)
        };
        let r = run_flood(cfg.clone()).await.unwrap();
        let s = r.flood.slam.as_ref().unwrap();
        assert_eq!(s.count(Outcome::ConnectFailed), 10, "{}", r.report(&cfg));
        assert!(s.first.is_empty());
    }

    #[tokio::test]
    async fn refuses_non_loopback() {
        let cfg = FloodConfig {
            legit_source: ip("192.168.1.1"),
            ..config("127.0.0.1:1".parse().unwrap())
        };
        assert!(
            run_flood(cfg)
                .await
                .unwrap_err()
                .to_string()
                .contains("non-loopback")
        );
        let cfg = config("10.0.0.1:25".parse().unwrap());
        assert!(
            run_flood(cfg)
                .await
                .unwrap_err()
                .to_string()
                .contains("non-loopback")
        );
    }
}
