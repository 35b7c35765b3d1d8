//! The `relay` scenario: relay throughput end to end. It starts an SMTP (or LMTP) sink
//! in this process, starts `portcullis serve` in a fresh directory with `[relay]` and a
//! `[[route]]` that send the relayed domain to the sink, and sends `--messages` messages
//! to the server from `--sessions` concurrent client sessions. The server accepts each one
//! (durably, before its 250), and its queue runner relays it to the sink, which records
//! its arrival by the `X-Bench-Seq:` header the client put in.
//!
//! Figures: messages per second from the first send until the sink has them all, the
//! accept-side rate alone (first send to last 250), the delay from each message's 250 to
//! its arrival at the sink, and the server's CPU (`/proc/<pid>/stat`) and peak memory
//! (VmHWM, and VmRSS every 100 ms).
//!
//! It must not connect anywhere but loopback (the server listens on 127.0.0.1, the sink
//! too), run unbounded (every wait ends by `--timeout`, and the message count is fixed),
//! leave the server running (it is stopped at the end, killed on any error or Ctrl-C), or
//! touch a directory it did not create.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use hdrhistogram::Histogram;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::timeout_at;

use crate::clock;
use crate::flood::{cpu_time, machine_ticks, read_status_kb, sample_rss};
use crate::message::build_message;
use crate::sink::{self, SEQ_HEADER, Tracker};
use crate::smtp::{Client, Errors, Failure};

/// The domain relayed to the sink.
const DOMAIN: &str = "example.net";
/// Envelope and header sender.
const FROM: &str = "bench@example.org";
/// Pause before a failed session reconnects.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// How often the arrivals and the spool are looked at while waiting.
const POLL: Duration = Duration::from_millis(5);
/// Longest wait for the server's `listening on` line.
const START_LIMIT: Duration = Duration::from_secs(15);
/// The server's `shutdown_grace`, and how long it may take to stop before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Bound on connections one session opens (the message count normally ends it first).
const MAX_CONNECTIONS_PER_SESSION: u64 = 10_000_000;
/// Bound on polls in one wait (the deadline normally ends it first).
const MAX_POLLS: u64 = 100_000_000;

/// Command-line options of `relay`, also built directly by tests.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RelayConfig {
    /// Messages to send (1..=10000000)
    #[arg(long, default_value_t = 5_000)]
    pub(crate) messages: u64,
    /// Concurrent client sessions (1..=10000)
    #[arg(long, default_value_t = 32)]
    pub(crate) sessions: usize,
    /// Approximate message size on the wire, bytes (256..=10000000)
    #[arg(long, default_value_t = 4096)]
    pub(crate) size: usize,
    /// Messages per client connection before QUIT (1..=1000000)
    #[arg(long, default_value_t = 1)]
    pub(crate) per_connection: u32,
    /// Recipients per message, all in the relayed domain (1..=100)
    #[arg(long, default_value_t = 1)]
    pub(crate) recipients: u32,
    /// The sink speaks LMTP (the route says `lmtp:`) instead of SMTP
    #[arg(long)]
    pub(crate) lmtp: bool,
    /// The server's `[queue] connections_per_hop` (1..=1000)
    #[arg(long, default_value_t = 10)]
    pub(crate) connections_per_hop: u32,
    /// The server's `[queue] max_connections` (1..=10000)
    #[arg(long, default_value_t = 100)]
    pub(crate) max_connections: u32,
    /// The client sends MAIL, RCPT and DATA in one write (RFC 2920)
    #[arg(long)]
    pub(crate) pipeline: bool,
    /// The `portcullis` binary to run (default: the one beside this program, so a
    /// release build of this tool runs the release server)
    #[arg(long)]
    pub(crate) server: Option<PathBuf>,
    /// Directory for the server's configuration, spool and log; must not exist (default:
    /// a fresh one under the temporary directory, removed after a clean run)
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
    /// Seconds the whole run may take at most (sending, relaying and the spool's emptying)
    #[arg(long, default_value_t = 300.0)]
    pub(crate) timeout: f64,
}

impl RelayConfig {
    fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            (1..=sink::MAX_MESSAGES).contains(&self.messages),
            "--messages must be 1..={}",
            sink::MAX_MESSAGES
        );
        ensure!(
            (1..=10_000).contains(&self.sessions),
            "--sessions must be 1..=10000"
        );
        ensure!(
            (256..=10_000_000).contains(&self.size),
            "--size must be 256..=10000000"
        );
        ensure!(
            (1..=1_000_000).contains(&self.per_connection),
            "--per-connection must be 1..=1000000"
        );
        ensure!(
            (1..=100).contains(&self.recipients),
            "--recipients must be 1..=100"
        );
        ensure!(
            (1..=1000).contains(&self.connections_per_hop),
            "--connections-per-hop must be 1..=1000"
        );
        ensure!(
            (1..=10_000).contains(&self.max_connections),
            "--max-connections must be 1..=10000"
        );
        ensure!(
            self.timeout > 0.0 && self.timeout <= 86_400.0,
            "--timeout must be in (0, 86400]"
        );
        Ok(())
    }

    fn next_hop(&self, sink: SocketAddr) -> String {
        let protocol = if self.lmtp { "lmtp" } else { "smtp" };
        format!("{protocol}:[{}]:{}", sink.ip(), sink.port())
    }
}

/// The server's configuration for a run.
fn server_config(cfg: &RelayConfig, listen: SocketAddr, sink: SocketAddr, dir: &Path) -> String {
    let max_bytes = (cfg.size as u64 * 2).max(10 * 1024 * 1024);
    format!(
        "# written by portcullis-bench relay\n\
         [server]\n\
         listen = [\"{listen}\"]\n\
         hostname = \"mx.bench.test\"\n\
         spool_dir = \"{spool}\"\n\
         max_message_bytes = {max_bytes}\n\
         shutdown_grace = \"{grace}s\"\n\
         \n\
         [local]\n\
         maildir_root = \"{mail}\"\n\
         \n\
         [greet_pause]\n\
         default = \"0s\"\n\
         \n\
         [dns]\n\
         reverse = false\n\
         \n\
         [queue]\n\
         connections_per_hop = {per_hop}\n\
         max_connections = {max}\n\
         \n\
         [relay]\n\
         domains = [\"{DOMAIN}\"]\n\
         \n\
         [[route]]\n\
         domain = \"{DOMAIN}\"\n\
         next_hop = \"{hop}\"\n",
        spool = dir.join("spool").display(),
        mail = dir.join("mail").display(),
        grace = STOP_GRACE.as_secs(),
        per_hop = cfg.connections_per_hop,
        max = cfg.max_connections,
        hop = cfg.next_hop(sink),
    )
}

/// The run's directory: created fresh, removed at the end only if we chose it and the run
/// was clean. (The `tls` scenario uses it too.)
pub(crate) struct WorkDir {
    pub(crate) path: PathBuf,
    ours: bool,
}

impl WorkDir {
    pub(crate) fn create(given: Option<&Path>) -> anyhow::Result<Self> {
        let (path, ours) = match given {
            Some(p) => (p.to_path_buf(), false),
            None => {
                let name = format!(
                    "portcullis-bench.{}.{}",
                    std::process::id(),
                    clock::unix_now().as_nanos()
                );
                (std::env::temp_dir().join(name), true)
            }
        };
        std::fs::create_dir(&path)
            .with_context(|| format!("creating {} (it must not exist)", path.display()))?;
        let path = path
            .canonicalize()
            .with_context(|| format!("resolving {}", path.display()))?;
        Ok(Self { path, ours })
    }

    /// Removes the directory if it is ours; true when it was removed.
    pub(crate) fn remove_if_ours(&self) -> bool {
        self.ours && std::fs::remove_dir_all(&self.path).is_ok()
    }
}

/// The `portcullis` binary: `--server`, else the one beside this program.
pub(crate) fn server_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let bin = match given {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .context("locating this program")?
            .with_file_name("portcullis"),
    };
    ensure!(
        bin.is_file(),
        "no server binary at {} (build it: cargo build --release -p portcullis -p \
         portcullis-bench, or pass --server)",
        bin.display()
    );
    Ok(bin)
}

/// A free port on 127.0.0.1 (bound and released; the server binds it right after).
pub(crate) fn free_port() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    l.local_addr().context("finding a free port")
}

/// The running server. Dropping it kills the process (error paths, Ctrl-C).
pub(crate) struct Server {
    child: Child,
    pub(crate) pid: u32,
    log: PathBuf,
}

impl Server {
    /// Starts `bin serve --config <dir>/portcullis.toml` in `dir`, its log (stderr) in
    /// `dir/server.log`, and waits for its `listening on` line.
    pub(crate) async fn start(bin: &Path, dir: &Path) -> anyhow::Result<Self> {
        let log = dir.join("server.log");
        let file = std::fs::File::create(&log).context("creating server.log")?;
        let child = Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(dir.join("portcullis.toml"))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id();
        let mut server = Self { child, pid, log };
        let deadline = clock::now() + START_LIMIT;
        for _ in 0..MAX_POLLS {
            let text = std::fs::read_to_string(&server.log).unwrap_or_default();
            if text.contains("listening on") {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                bail!("the server exited ({status}) before listening:\n{text}");
            }
            if clock::now() >= deadline {
                bail!(
                    "the server did not listen within {} s:\n{text}",
                    START_LIMIT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("the server did not start")
    }

    /// SIGTERM, then waits up to its shutdown grace and a second; kills it after that.
    /// Returns whether it exited by itself.
    pub(crate) async fn stop(mut self) -> bool {
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        let deadline = clock::now() + STOP_GRACE + Duration::from_secs(1);
        for _ in 0..MAX_POLLS {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return true;
            }
            if clock::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What the server's log said about the relayed recipients.
#[derive(Debug, Default)]
pub(crate) struct LogCounts {
    pub(crate) sent: u64,
    pub(crate) deferred: u64,
    pub(crate) bounced: u64,
    /// The first deferral or bounce line, for the report.
    pub(crate) first_problem: Option<String>,
}

/// Counts the relay outcome lines (`mailer=esmtp|lmtp, ..., stat=...`) of a server log.
pub(crate) fn count_log(text: &str) -> LogCounts {
    let mut c = LogCounts::default();
    for line in text.lines() {
        if !(line.contains("mailer=esmtp") || line.contains("mailer=lmtp")) {
            continue;
        }
        if line.contains("stat=Sent") {
            c.sent += 1;
            continue;
        }
        if line.contains("stat=Deferred") {
            c.deferred += 1;
        } else if line.contains("dsn=5.") {
            c.bounced += 1;
        } else {
            continue;
        }
        if c.first_problem.is_none() {
            c.first_problem = Some(line.chars().take(300).collect());
        }
    }
    c
}

/// Files in the spool's `queue/` (messages and their state sidecars).
fn queued_files(spool: &Path) -> Option<usize> {
    Some(std::fs::read_dir(spool.join("queue")).ok()?.count())
}

/// What one run measured.
#[derive(Debug)]
pub(crate) struct RelayResult {
    pub(crate) server_bin: PathBuf,
    pub(crate) pid: u32,
    pub(crate) dir: PathBuf,
    pub(crate) dir_removed: bool,
    pub(crate) next_hop: String,
    /// Bytes of one message as sent (the last one built).
    pub(crate) wire_size: usize,
    pub(crate) accepted: u64,
    pub(crate) errors: Errors,
    /// Client latency, µs from MAIL FROM to the final 250.
    pub(crate) latency: Histogram<u64>,
    /// µs from a message's 250 to its arrival at the sink.
    pub(crate) delay: Histogram<u64>,
    /// At the sink: µs from the 354 to the final dot, and from connect to QUIT.
    pub(crate) sink_data: Histogram<u64>,
    pub(crate) sink_session: Histogram<u64>,
    /// Arrivals seen by the sink before the client read the 250 (counted as 0 delay).
    pub(crate) early: u64,
    /// Accepted messages that arrived at the sink.
    pub(crate) arrived: u64,
    /// Time from the first send to the last 250, and to the last arrival.
    pub(crate) accept_span: Duration,
    pub(crate) e2e_span: Duration,
    /// Time from the first arrival to the last.
    pub(crate) sink_span: Duration,
    /// Accepted messages not yet at the sink when the last 250 came.
    pub(crate) backlog: u64,
    /// The sink's counters.
    pub(crate) sink_messages: u64,
    pub(crate) sink_recipients: u64,
    pub(crate) sink_bytes: u64,
    pub(crate) sink_connections: u64,
    pub(crate) sink_peak_open: u64,
    pub(crate) duplicates: u64,
    pub(crate) unnumbered: u64,
    pub(crate) bad_commands: u64,
    /// From the last arrival until the spool's queue/ was empty (None: it was not).
    pub(crate) spool_drain: Option<Duration>,
    pub(crate) spool_left: usize,
    pub(crate) server_cpu: Duration,
    /// The server's CPU until the last client session ended, and the arrivals by then: the
    /// rest of the CPU went to relaying alone.
    pub(crate) sending_cpu: Duration,
    pub(crate) arrived_while_sending: u64,
    pub(crate) our_cpu: Duration,
    pub(crate) rss_before_kb: u64,
    pub(crate) rss_peak_kb: u64,
    pub(crate) vmhwm_kb: u64,
    pub(crate) steal_pct: f64,
    pub(crate) log: LogCounts,
    pub(crate) stopped_cleanly: bool,
}

/// Per-session counters, merged at the end.
struct Stats {
    accepted: u64,
    latency: Histogram<u64>,
    errors: Errors,
    wire_size: usize,
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_max(3_600_000_000, 3).context("histogram")
}

impl Stats {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            accepted: 0,
            latency: histogram()?,
            errors: Errors::default(),
            wire_size: 0,
        })
    }
    fn merge(&mut self, other: Self) -> anyhow::Result<()> {
        self.accepted += other.accepted;
        self.latency.add(&other.latency).context("merge latency")?;
        self.errors.merge(other.errors);
        self.wire_size = self.wire_size.max(other.wire_size);
        Ok(())
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// What the client sessions share.
struct Load {
    cfg: RelayConfig,
    target: SocketAddr,
    next: AtomicU64,
    tracker: Arc<Tracker>,
    hard: Instant,
    /// `RCPT TO:` lines, all of them.
    rcpts: String,
}

/// Runs the scenario: sink, server, load, waits, figures. Ctrl-C stops the server too.
/// On failure the run's directory is kept and named in the error.
pub(crate) async fn run_relay(cfg: RelayConfig) -> anyhow::Result<RelayResult> {
    cfg.validate()?;
    let bin = server_binary(cfg.server.as_deref())?;
    let work = WorkDir::create(cfg.dir.as_deref())?;
    let kept = work.path.clone();
    let result = tokio::select! {
        r = run(cfg, bin, work) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted (the server was stopped)")),
    };
    result.with_context(|| format!("run directory kept: {}", kept.display()))
}

async fn run(cfg: RelayConfig, bin: PathBuf, work: WorkDir) -> anyhow::Result<RelayResult> {
    let hard = clock::now() + Duration::from_secs_f64(cfg.timeout);
    let tracker = Arc::new(Tracker::new(cfg.messages, clock::now())?);
    let (sink_addr, sink_task) = sink::start(cfg.lmtp, Arc::clone(&tracker)).await?;
    let listen = free_port()?;
    std::fs::write(
        work.path.join("portcullis.toml"),
        server_config(&cfg, listen, sink_addr, &work.path),
    )
    .context("writing portcullis.toml")?;
    let server = Server::start(&bin, &work.path).await?;
    let pid = server.pid;
    let rss_before_kb = read_status_kb(pid, "VmRSS:")?;
    let server_cpu0 = cpu_time(Some(pid))?;
    let our_cpu0 = cpu_time(None)?;
    let (steal0, total0) = machine_ticks();
    let (stop_sampler, stopped) = oneshot::channel();
    let sampler = tokio::spawn(sample_rss(pid, stopped));

    let rcpts = (1..=cfg.recipients)
        .map(|i| format!("RCPT TO:<rcpt{i}@{DOMAIN}>\r\n"))
        .collect();
    let load = Arc::new(Load {
        cfg: cfg.clone(),
        target: listen,
        next: AtomicU64::new(0),
        tracker: Arc::clone(&tracker),
        hard,
        rcpts,
    });
    let start = clock::now();
    let mut set = JoinSet::new();
    for id in 0..cfg.sessions {
        set.spawn(session(Arc::clone(&load), id, Stats::new()?));
    }
    let mut total = Stats::new()?;
    for _ in 0..=cfg.sessions {
        match timeout_at(
            clock::tokio_at(hard + Duration::from_secs(1)),
            set.join_next(),
        )
        .await
        {
            Ok(Some(Ok(stats))) => total.merge(stats)?,
            Ok(Some(Err(e))) => total.errors.record(&Failure::new("task", e.to_string())),
            Ok(None) => break,
            Err(_) => {
                set.abort_all();
                total
                    .errors
                    .record(&Failure::new("timeout", "sessions unfinished at --timeout"));
                break;
            }
        }
    }
    let sending_cpu = cpu_time(Some(pid))?.saturating_sub(server_cpu0);
    let arrived_while_sending = tracker.arrived.load(Ordering::Acquire);

    // Until every accepted message is at the sink (or the deadline).
    for _ in 0..MAX_POLLS {
        if tracker.arrived.load(Ordering::Acquire) >= total.accepted
            && tracker.times().all(|(a, b)| a.is_none() || b.is_some())
        {
            break;
        }
        if clock::now() >= hard {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    // Then until the spool's queue/ is empty: the last removals happen after the 250s.
    let spool = work.path.join("spool");
    let mut spool_empty_at = None;
    for _ in 0..MAX_POLLS {
        if queued_files(&spool) == Some(0) {
            spool_empty_at = Some(clock::now());
            break;
        }
        if clock::now() >= hard {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let server_cpu = cpu_time(Some(pid))?.saturating_sub(server_cpu0);
    let our_cpu = cpu_time(None)?.saturating_sub(our_cpu0);
    let (steal1, total1) = machine_ticks();
    let vmhwm_kb = read_status_kb(pid, "VmHWM:")?;
    let _ = stop_sampler.send(());
    let (rss_peak_kb, _) = sampler.await.context("memory sampler")?;
    let spool_left = queued_files(&spool).unwrap_or(0);
    let stopped_cleanly = server.stop().await;
    sink_task.abort();
    let log = count_log(&std::fs::read_to_string(work.path.join("server.log")).unwrap_or_default());

    let mut result = figures(&tracker, start, total)?;
    let last_arrival = tracker.times().filter_map(|(_, b)| b).max();
    result.spool_drain = match (spool_empty_at, last_arrival) {
        (Some(at), Some(b)) => {
            Some(at.saturating_duration_since(tracker.origin() + Duration::from_micros(b)))
        }
        _ => None,
    };
    result.spool_left = spool_left;
    result.server_bin = bin;
    result.pid = pid;
    result.next_hop = cfg.next_hop(sink_addr);
    result.sink_messages = tracker.messages.load(Ordering::Relaxed);
    result.sink_recipients = tracker.recipients.load(Ordering::Relaxed);
    result.sink_bytes = tracker.bytes.load(Ordering::Relaxed);
    result.sink_connections = tracker.connections.load(Ordering::Relaxed);
    result.sink_peak_open = tracker.peak_open.load(Ordering::Relaxed);
    result.duplicates = tracker.duplicates.load(Ordering::Relaxed);
    result.unnumbered = tracker.unnumbered.load(Ordering::Relaxed);
    result.bad_commands = tracker.bad_commands.load(Ordering::Relaxed);
    result.server_cpu = server_cpu;
    result.sending_cpu = sending_cpu;
    result.arrived_while_sending = arrived_while_sending;
    result.our_cpu = our_cpu;
    result.rss_before_kb = rss_before_kb;
    result.rss_peak_kb = rss_peak_kb;
    result.vmhwm_kb = vmhwm_kb;
    result.steal_pct =
        100.0 * steal1.saturating_sub(steal0) as f64 / total1.saturating_sub(total0).max(1) as f64;
    result.log = log;
    result.stopped_cleanly = stopped_cleanly;
    let clean = result.complete() && result.errors.total() == 0 && stopped_cleanly;
    result.dir_removed = clean && work.remove_if_ours();
    result.dir = work.path;
    Ok(result)
}

/// The timing figures from the tracker's tables; the rest of the result is filled in by
/// the caller.
fn figures(tracker: &Tracker, start: Instant, total: Stats) -> anyhow::Result<RelayResult> {
    let t0 = micros(start.saturating_duration_since(tracker.origin()));
    let mut delay = histogram()?;
    let (mut arrived, mut early) = (0, 0);
    let (mut last_accept, mut last_arrival, mut first_arrival) = (t0, t0, u64::MAX);
    for (a, b) in tracker.times() {
        if let Some(b) = b {
            last_arrival = last_arrival.max(b);
            first_arrival = first_arrival.min(b);
        }
        let Some(a) = a else { continue };
        last_accept = last_accept.max(a);
        if let Some(b) = b {
            arrived += 1;
            if b < a {
                early += 1;
            }
            delay.saturating_record(b.saturating_sub(a));
        }
    }
    let backlog = tracker
        .times()
        .filter(|(a, b)| a.is_some() && b.is_none_or(|b| b > last_accept))
        .count() as u64;
    let span = |from: u64, to: u64| Duration::from_micros(to.saturating_sub(from));
    Ok(RelayResult {
        server_bin: PathBuf::new(),
        pid: 0,
        dir: PathBuf::new(),
        dir_removed: false,
        next_hop: String::new(),
        wire_size: total.wire_size,
        accepted: total.accepted,
        errors: total.errors,
        latency: total.latency,
        delay,
        sink_data: Tracker::snapshot(&tracker.data_time),
        sink_session: Tracker::snapshot(&tracker.session_time),
        early,
        arrived,
        accept_span: span(t0, last_accept),
        e2e_span: span(t0, last_arrival),
        sink_span: span(first_arrival.min(last_arrival), last_arrival),
        backlog,
        sink_messages: 0,
        sink_recipients: 0,
        sink_bytes: 0,
        sink_connections: 0,
        sink_peak_open: 0,
        duplicates: 0,
        unnumbered: 0,
        bad_commands: 0,
        spool_drain: None,
        spool_left: 0,
        server_cpu: Duration::ZERO,
        sending_cpu: Duration::ZERO,
        arrived_while_sending: 0,
        our_cpu: Duration::ZERO,
        rss_before_kb: 0,
        rss_peak_kb: 0,
        vmhwm_kb: 0,
        steal_pct: 0.0,
        log: LogCounts::default(),
        stopped_cleanly: false,
    })
}

/// One client: connections until the messages run out.
async fn session(load: Arc<Load>, id: usize, mut stats: Stats) -> Stats {
    for _ in 0..MAX_CONNECTIONS_PER_SESSION {
        if load.next.load(Ordering::Relaxed) >= load.cfg.messages || clock::now() >= load.hard {
            break;
        }
        if let Err(f) = connection(&load, id, &mut stats).await {
            stats.errors.record(&f);
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
    }
    stats
}

/// One connection: greeting, EHLO, up to `per_connection` messages, QUIT.
async fn connection(load: &Load, id: usize, stats: &mut Stats) -> Result<(), Failure> {
    let cfg = &load.cfg;
    let mut c = Client::connect(load.target, None, load.hard).await?;
    c.expect("greeting", 220).await?;
    c.send("ehlo", b"EHLO bench.example.org\r\n").await?;
    let ehlo = c.expect("ehlo", 250).await?;
    let pipelining = ehlo.text.lines().any(|l| {
        l.split_whitespace()
            .next()
            .is_some_and(|k| k.eq_ignore_ascii_case("PIPELINING"))
    });
    if cfg.pipeline && !pipelining {
        return Err(Failure::new(
            "ehlo no-pipelining",
            "server does not advertise PIPELINING",
        ));
    }
    for _ in 0..cfg.per_connection {
        let seq = load.next.fetch_add(1, Ordering::Relaxed);
        if seq >= cfg.messages {
            break;
        }
        let body = message_for(cfg, id, seq);
        stats.wire_size = body.len();
        let started = clock::now();
        transaction(&mut c, load, &body).await?;
        let at = clock::now();
        load.tracker.accepted(seq, at);
        stats.accepted += 1;
        stats.latency.saturating_record(micros(at - started));
    }
    c.send("quit", b"QUIT\r\n").await?;
    c.expect("quit", 221).await?;
    Ok(())
}

/// The DATA payload of message `seq`: the sequence header, then a generated message, about
/// `--size` bytes in all.
fn message_for(cfg: &RelayConfig, id: usize, seq: u64) -> Vec<u8> {
    let header = format!("{SEQ_HEADER}: {seq}\r\n");
    let msg_id = format!(
        "{}.{}.{id}.{seq}@bench.example.org",
        clock::unix_now().as_secs(),
        std::process::id()
    );
    let rest = build_message(
        cfg.size.saturating_sub(header.len()),
        FROM,
        &format!("rcpt1@{DOMAIN}"),
        &msg_id,
        clock::unix_now().as_secs(),
    );
    let mut body = Vec::with_capacity(header.len() + rest.len());
    body.extend_from_slice(header.as_bytes());
    body.extend_from_slice(&rest);
    body
}

/// One transaction; Ok only on 250 after the final dot.
async fn transaction(c: &mut Client, load: &Load, body: &[u8]) -> Result<(), Failure> {
    let mail = format!("MAIL FROM:<{FROM}>\r\n");
    let n = load.cfg.recipients;
    if load.cfg.pipeline {
        c.send("mail", format!("{mail}{}DATA\r\n", load.rcpts).as_bytes())
            .await?;
        c.expect("mail", 250).await?;
        for _ in 0..n {
            c.expect("rcpt", 250).await?;
        }
        c.expect("data", 354).await?;
    } else {
        c.send("mail", mail.as_bytes()).await?;
        c.expect("mail", 250).await?;
        for line in load.rcpts.split_inclusive("\r\n") {
            c.send("rcpt", line.as_bytes()).await?;
            c.expect("rcpt", 250).await?;
        }
        c.send("data", b"DATA\r\n").await?;
        c.expect("data", 354).await?;
    }
    c.send("data-end", body).await?;
    c.expect("data-end", 250).await?;
    Ok(())
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

impl RelayResult {
    /// Every accepted message arrived at the sink.
    pub(crate) fn complete(&self) -> bool {
        self.arrived == self.accepted
    }
    pub(crate) fn accept_rate(&self) -> f64 {
        rate(self.accepted, self.accept_span)
    }
    /// End-to-end messages per second (0 when some never arrived).
    pub(crate) fn e2e_rate(&self) -> f64 {
        if self.complete() {
            rate(self.arrived, self.e2e_span)
        } else {
            0.0
        }
    }
    pub(crate) fn cpu_per_message_us(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / self.accepted.max(1) as f64
    }

    /// Human report followed by the one `RESULT` line.
    pub(crate) fn report(&self, cfg: &RelayConfig) -> String {
        let (d, l) = (&self.delay, &self.latency);
        let mut out = String::new();
        let _ = write!(
            out,
            "portcullis-bench relay\n\
             \x20 end to end: this client -> portcullis serve (pid {}, {}) -> its queue runner\n\
             \x20   -> {} (an {} sink in this process)\n\
             \x20 machine: {} cores; this process (client and sink, 2 worker threads) shares them\n\
             \x20   with the server, so the figures depend on the core count\n\
             \x20 messages {}, sessions {}, size {} B ({} B sent), per connection {}, recipients {},\n\
             \x20   client pipelining {}; server: connections_per_hop {}, max_connections {}\n\
             \x20 accepted:        {} of {} in {:.2} s: {:.1} msg/s (first send -> last 250)\n",
            self.pid,
            self.server_bin.display(),
            self.next_hop,
            if cfg.lmtp { "LMTP" } else { "SMTP" },
            crate::cores(),
            cfg.messages,
            cfg.sessions,
            cfg.size,
            self.wire_size,
            cfg.per_connection,
            cfg.recipients,
            if cfg.pipeline { "on" } else { "off" },
            cfg.connections_per_hop,
            cfg.max_connections,
            self.accepted,
            cfg.messages,
            self.accept_span.as_secs_f64(),
            self.accept_rate(),
        );
        if self.complete() {
            let _ = writeln!(
                out,
                "  end to end:      {} at the sink in {:.2} s: {:.1} msg/s (first send -> last arrival)",
                self.arrived,
                self.e2e_span.as_secs_f64(),
                self.e2e_rate()
            );
        } else {
            let _ = writeln!(
                out,
                "  end to end:      INCOMPLETE: {} of {} accepted messages reached the sink by --timeout",
                self.arrived, self.accepted
            );
        }
        let _ = write!(
            out,
            "  sink rate:       {:.1} msg/s (first arrival -> last, {:.2} s)\n\
             \x20 backlog:         {} accepted messages not yet at the sink at the last 250\n\
             \x20 delay ms:        p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}  (server's 250 -> arrival at the sink)\n\
             \x20 accept ms:       p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}  (MAIL FROM -> final 250)\n\
             \x20 sink:            {} messages, {} recipients, {:.1} MB, {} connections (at most {} at once)\n\
             \x20 at the sink ms:  354 -> final dot p50 {:.2}  p99 {:.2}; connect -> QUIT p50 {:.2}  p99 {:.2}\n",
            rate(self.arrived, self.sink_span),
            self.sink_span.as_secs_f64(),
            self.backlog,
            ms(d, 0.5),
            ms(d, 0.9),
            ms(d, 0.99),
            d.max() as f64 / 1000.0,
            ms(l, 0.5),
            ms(l, 0.9),
            ms(l, 0.99),
            l.max() as f64 / 1000.0,
            self.sink_messages,
            self.sink_recipients,
            self.sink_bytes as f64 / 1e6,
            self.sink_connections,
            self.sink_peak_open,
            ms(&self.sink_data, 0.5),
            ms(&self.sink_data, 0.99),
            ms(&self.sink_session, 0.5),
            ms(&self.sink_session, 0.99),
        );
        if self.early > 0 || self.duplicates > 0 || self.unnumbered > 0 || self.bad_commands > 0 {
            let _ = writeln!(
                out,
                "  sink oddities:   {} arrived before the client read the 250 (counted as 0 ms), {} \
                 duplicates, {} without a sequence number, {} unexpected commands",
                self.early, self.duplicates, self.unnumbered, self.bad_commands
            );
        }
        let _ = writeln!(
            out,
            "  server log:      {} stat=Sent, {} deferred, {} bounced (relayed recipients)",
            self.log.sent, self.log.deferred, self.log.bounced
        );
        if let Some(line) = &self.log.first_problem {
            let _ = writeln!(out, "    first: {line}");
        }
        match self.spool_drain {
            Some(t) => {
                let _ = writeln!(
                    out,
                    "  spool:           queue/ empty {:.1} ms after the last arrival",
                    t.as_secs_f64() * 1000.0
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "  spool:           {} files still in queue/ at the end",
                    self.spool_left
                );
            }
        }
        let relay_cpu = self.server_cpu.saturating_sub(self.sending_cpu);
        let relayed_after = self.arrived.saturating_sub(self.arrived_while_sending);
        let _ = write!(
            out,
            "  server CPU:      {:.2} s, {:.0} µs per message (first send -> spool empty)\n\
             \x20   of which {:.2} s while the client sent ({} accepted, {} relayed), then {:.2} s\n\
             \x20   relaying alone ({} messages: {:.0} µs each)\n\
             \x20 this process:    {:.2} s CPU (client and sink)\n\
             \x20 server memory:   VmRSS {} kB before, peak sampled {} kB, VmHWM {} kB\n\
             \x20 CPU steal:       {:.1} % of the machine's time\n",
            self.server_cpu.as_secs_f64(),
            self.cpu_per_message_us(),
            self.sending_cpu.as_secs_f64(),
            self.accepted,
            self.arrived_while_sending,
            relay_cpu.as_secs_f64(),
            relayed_after,
            relay_cpu.as_secs_f64() * 1e6 / relayed_after.max(1) as f64,
            self.our_cpu.as_secs_f64(),
            self.rss_before_kb,
            self.rss_peak_kb,
            self.vmhwm_kb,
            self.steal_pct,
        );
        out.push_str(&self.errors.report());
        if !self.stopped_cleanly {
            out.push_str("  WARNING: the server did not stop on SIGTERM in time and was killed\n");
        }
        if self.dir_removed {
            out.push_str("  run directory removed\n");
        } else {
            let _ = writeln!(
                out,
                "  run directory kept: {} (portcullis.toml, server.log, spool/)",
                self.dir.display()
            );
        }
        let _ = write!(
            out,
            "RESULT relay messages={} sessions={} size={} per_connection={} recipients={} lmtp={} \
             per_hop={} accepted={} accept_rate={:.1} e2e_rate={:.1} delay_p50_ms={:.2} \
             delay_p99_ms={:.2} cpu_us_per_msg={:.0} vmhwm_kb={} errors={}",
            cfg.messages,
            cfg.sessions,
            cfg.size,
            cfg.per_connection,
            cfg.recipients,
            cfg.lmtp,
            cfg.connections_per_hop,
            self.accepted,
            self.accept_rate(),
            self.e2e_rate(),
            ms(d, 0.5),
            ms(d, 0.99),
            self.cpu_per_message_us(),
            self.vmhwm_kb,
            self.errors.total() + u64::from(!self.complete()),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RelayConfig {
        RelayConfig {
            messages: 100,
            sessions: 4,
            size: 4096,
            per_connection: 1,
            recipients: 1,
            lmtp: false,
            connections_per_hop: 10,
            max_connections: 100,
            pipeline: false,
            server: None,
            dir: None,
            timeout: 60.0,
        }
    }

    #[test]
    fn writes_a_server_config_with_the_route() {
        let cfg = RelayConfig {
            lmtp: true,
            connections_per_hop: 3,
            ..config()
        };
        let text = server_config(
            &cfg,
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.1:40001".parse().unwrap(),
            Path::new("/tmp/run"),
        );
        for want in [
            "listen = [\"127.0.0.1:40000\"]",
            "spool_dir = \"/tmp/run/spool\"",
            "connections_per_hop = 3",
            "max_connections = 100",
            "domains = [\"example.net\"]",
            "[[route]]\ndomain = \"example.net\"\nnext_hop = \"lmtp:[127.0.0.1]:40001\"",
        ] {
            assert!(text.contains(want), "{want:?} missing in\n{text}");
        }
    }

    #[test]
    fn validates_options() {
        assert!(config().validate().is_ok());
        for bad in [
            RelayConfig {
                messages: 0,
                ..config()
            },
            RelayConfig {
                recipients: 101,
                ..config()
            },
            RelayConfig {
                connections_per_hop: 0,
                ..config()
            },
            RelayConfig {
                size: 10,
                ..config()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn messages_carry_their_sequence_number_first() {
        let m = message_for(&config(), 2, 77);
        assert!(m.starts_with(b"X-Bench-Seq: 77\r\n"));
        assert!(m.ends_with(b"\r\n.\r\n"));
        assert!(
            m.len() + 100 >= 4096 && m.len() <= 4096 + 100,
            "{}",
            m.len()
        );
        assert_eq!(sink::parse_seq(&m[..17]), Some(77));
    }

    #[test]
    fn counts_relay_lines_of_the_log() {
        let log = "\
            Jan  1 00:00:00 mx portcullis[1]: A1: to=<rcpt1@example.net>, delay=00:00:00, xdelay=00:00:00, mailer=esmtp, relay=[127.0.0.1], dsn=2.0.0, stat=Sent (250 2.0.0 Ok: queued)\n\
            Jan  1 00:00:00 mx portcullis[1]: A2: to=<rcpt1@example.net>, delay=00:00:00, xdelay=00:00:00, mailer=lmtp, relay=[127.0.0.1], dsn=4.4.1, stat=Deferred: Connection refused by [127.0.0.1]\n\
            Jan  1 00:00:00 mx portcullis[1]: A3: to=<rcpt1@example.net>, delay=00:00:00, xdelay=00:00:00, mailer=esmtp, relay=[127.0.0.1], dsn=5.1.1, stat=User unknown\n\
            Jan  1 00:00:00 mx portcullis[1]: A4: from=<bench@example.org>, size=4096, nrcpts=1\n";
        let c = count_log(log);
        assert_eq!((c.sent, c.deferred, c.bounced), (1, 1, 1));
        assert!(c.first_problem.unwrap().contains("A2"));
    }

    #[test]
    fn figures_from_the_tables() {
        let origin = clock::now();
        let t = Tracker::new(4, origin).unwrap();
        let at = |ms: u64| origin + Duration::from_millis(ms);
        // sent from 10 ms; accepted at 20, 30, 40; arrivals at 25, 50, (none); seq 3 never
        // accepted.
        t.accepted(0, at(20));
        t.accepted(1, at(30));
        t.accepted(2, at(40));
        t.arrival(Some(0), at(25));
        t.arrival(Some(1), at(50));
        let mut stats = Stats::new().unwrap();
        stats.accepted = 3;
        let r = figures(&t, at(10), stats).unwrap();
        assert_eq!(r.arrived, 2);
        assert!(!r.complete());
        assert_eq!(r.e2e_rate(), 0.0);
        assert_eq!(r.accept_span, Duration::from_millis(30));
        assert_eq!(r.e2e_span, Duration::from_millis(40));
        assert_eq!(r.backlog, 2);
        assert_eq!(r.delay.len(), 2);
        assert!((ms(&r.delay, 0.5) - 5.0).abs() < 0.1);
        assert!((ms(&r.delay, 1.0) - 20.0).abs() < 0.1);
    }
}
