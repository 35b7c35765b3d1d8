//! The `throughput` scenario: N concurrent SMTP sessions sending messages as fast
//! as the server accepts them, like Postfix smtp-source (`-P` = `--pipeline`).
//!
//! It must not run unbounded: every session stops starting messages at the end of
//! the measured window and every wait ends by the drain deadline (stop + 30 s).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use hdrhistogram::Histogram;
use tokio::task::JoinSet;
use tokio::time::timeout_at;

use crate::clock;
use crate::message::build_message;
use crate::smtp::{Client, Errors, Failure, ensure_loopback};

/// How long in-flight messages may take to finish after the window closes.
const DRAIN: Duration = Duration::from_secs(30);
/// Pause before a failed session reconnects.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// Upper bound on connections one session opens (the time bound normally ends it first).
const MAX_CONNECTIONS_PER_SESSION: u64 = 10_000_000;

/// Command-line options of `throughput`, also built directly by tests.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ThroughputConfig {
    /// Server address (loopback IP:port only)
    #[arg(long, value_parser = crate::parse_target)]
    pub(crate) target: SocketAddr,
    /// Concurrent client sessions (1..=10000)
    #[arg(long, default_value_t = 32)]
    pub(crate) sessions: usize,
    /// Approximate message size on the wire, bytes (64..=50000000)
    #[arg(long, default_value_t = 4096)]
    pub(crate) size: usize,
    /// Measured seconds (after the warm-up)
    #[arg(long, default_value_t = 20.0)]
    pub(crate) seconds: f64,
    /// Messages per connection before QUIT (1..=1000000)
    #[arg(long, default_value_t = 1)]
    pub(crate) per_connection: u32,
    /// Envelope and header recipient
    #[arg(long, default_value = "alice@localhost")]
    pub(crate) to: String,
    /// Envelope and header sender
    #[arg(long, default_value = "bench@example.org")]
    pub(crate) from: String,
    /// Send MAIL, RCPT and DATA in one write (RFC 2920)
    #[arg(long)]
    pub(crate) pipeline: bool,
    /// Warm-up seconds, run but excluded from the figures
    #[arg(long, default_value_t = 2.0)]
    pub(crate) warmup: f64,
}

impl ThroughputConfig {
    fn validate(&self) -> anyhow::Result<()> {
        ensure_loopback(self.target.ip())?;
        ensure!(
            (1..=10_000).contains(&self.sessions),
            "--sessions must be 1..=10000"
        );
        ensure!(
            (64..=50_000_000).contains(&self.size),
            "--size must be 64..=50000000"
        );
        ensure!(
            (1..=1_000_000).contains(&self.per_connection),
            "--per-connection must be 1..=1000000"
        );
        ensure!(
            self.seconds > 0.0 && self.seconds <= 86_400.0,
            "--seconds must be in (0, 86400]"
        );
        ensure!(
            self.warmup >= 0.0 && self.warmup <= 3_600.0,
            "--warmup must be in [0, 3600]"
        );
        for addr in [&self.to, &self.from] {
            ensure!(
                !addr.contains(['<', '>', '\r', '\n', ' ']),
                "bad mailbox {addr:?}"
            );
        }
        Ok(())
    }
}

/// What one run measured.
#[derive(Debug)]
pub(crate) struct ThroughputResult {
    pub(crate) accepted: u64,
    /// Microseconds from writing MAIL FROM to reading the final 250.
    pub(crate) latency: Histogram<u64>,
    /// Microseconds from connect to 221 (only when per-connection is 1).
    pub(crate) connection: Histogram<u64>,
    pub(crate) errors: Errors,
    pub(crate) measured: Duration,
    pub(crate) drain: Duration,
    /// Sessions still running at the drain deadline (aborted, their figures lost).
    pub(crate) unfinished: usize,
}

/// When the window opens and closes, and the hard end of all waiting.
#[derive(Debug, Clone, Copy)]
struct Plan {
    warm_end: Instant,
    stop: Instant,
    hard: Instant,
}

/// Per-session counters, merged at the end.
struct Stats {
    accepted: u64,
    latency: Histogram<u64>,
    connection: Histogram<u64>,
    errors: Errors,
}

impl Stats {
    fn new() -> anyhow::Result<Self> {
        let hist = || Histogram::new_with_max(600_000_000, 3).context("histogram");
        Ok(Self {
            accepted: 0,
            latency: hist()?,
            connection: hist()?,
            errors: Errors::default(),
        })
    }
    fn merge(&mut self, other: Self) -> anyhow::Result<()> {
        self.accepted += other.accepted;
        self.latency.add(&other.latency).context("merge latency")?;
        self.connection
            .add(&other.connection)
            .context("merge connection time")?;
        self.errors.merge(other.errors);
        Ok(())
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Runs the scenario against `cfg.target` and returns the figures.
pub(crate) async fn run_throughput(cfg: ThroughputConfig) -> anyhow::Result<ThroughputResult> {
    cfg.validate()?;
    let start = clock::now();
    let warm_end = start + Duration::from_secs_f64(cfg.warmup);
    let stop = warm_end + Duration::from_secs_f64(cfg.seconds);
    let plan = Plan {
        warm_end,
        stop,
        hard: stop + DRAIN,
    };
    let cfg = Arc::new(cfg);
    let mut set = JoinSet::new();
    for id in 0..cfg.sessions {
        set.spawn(session(Arc::clone(&cfg), plan, id, Stats::new()?));
    }
    let mut total = Stats::new()?;
    let mut unfinished = 0;
    // One join per session at most; the extra second covers scheduling after `hard`.
    for _ in 0..=cfg.sessions {
        match timeout_at(
            clock::tokio_at(plan.hard + Duration::from_secs(1)),
            set.join_next(),
        )
        .await
        {
            Ok(Some(Ok(stats))) => total.merge(stats)?,
            Ok(Some(Err(e))) => total.errors.record(&Failure::new("task", e.to_string())),
            Ok(None) => break,
            Err(_) => {
                unfinished = set.len();
                set.abort_all();
                break;
            }
        }
    }
    Ok(ThroughputResult {
        accepted: total.accepted,
        latency: total.latency,
        connection: total.connection,
        errors: total.errors,
        measured: stop - warm_end,
        drain: clock::now().saturating_duration_since(stop),
        unfinished,
    })
}

/// One client: connect, send, QUIT, repeat until the window closes.
async fn session(cfg: Arc<ThroughputConfig>, plan: Plan, id: usize, mut stats: Stats) -> Stats {
    let mut seq = 0u64;
    for _ in 0..MAX_CONNECTIONS_PER_SESSION {
        if clock::now() >= plan.stop {
            break;
        }
        if let Err(f) = connection(&cfg, plan, id, &mut seq, &mut stats).await {
            if clock::now() >= plan.warm_end {
                stats.errors.record(&f);
            }
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
    }
    stats
}

/// One connection: greeting, EHLO, up to `per_connection` messages, QUIT.
async fn connection(
    cfg: &ThroughputConfig,
    plan: Plan,
    id: usize,
    seq: &mut u64,
    stats: &mut Stats,
) -> Result<(), Failure> {
    let opened = clock::now();
    let mut c = Client::connect(cfg.target, None, plan.hard).await?;
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
    let mut sent = 0;
    for _ in 0..cfg.per_connection {
        *seq += 1;
        let id = format!(
            "{}.{}.{id}.{seq}@bench.example.org",
            clock::unix_now().as_secs(),
            std::process::id()
        );
        let body = build_message(
            cfg.size,
            &cfg.from,
            &cfg.to,
            &id,
            clock::unix_now().as_secs(),
        );
        let started = clock::now();
        if started >= plan.stop {
            break;
        }
        message(&mut c, cfg, &body).await?;
        if started >= plan.warm_end {
            stats.accepted += 1;
            stats
                .latency
                .saturating_record(micros(clock::now() - started));
        }
        sent += 1;
    }
    c.send("quit", b"QUIT\r\n").await?;
    c.expect("quit", 221).await?;
    if cfg.per_connection == 1 && sent == 1 && opened >= plan.warm_end && opened < plan.stop {
        stats
            .connection
            .saturating_record(micros(clock::now() - opened));
    }
    Ok(())
}

/// One transaction; Ok only on 250 after the final dot.
async fn message(c: &mut Client, cfg: &ThroughputConfig, body: &[u8]) -> Result<(), Failure> {
    let mail = format!("MAIL FROM:<{}>\r\n", cfg.from);
    let rcpt = format!("RCPT TO:<{}>\r\n", cfg.to);
    if cfg.pipeline {
        c.send("mail", format!("{mail}{rcpt}DATA\r\n").as_bytes())
            .await?;
        c.expect("mail", 250).await?;
        c.expect("rcpt", 250).await?;
        c.expect("data", 354).await?;
    } else {
        c.send("mail", mail.as_bytes()).await?;
        c.expect("mail", 250).await?;
        c.send("rcpt", rcpt.as_bytes()).await?;
        c.expect("rcpt", 250).await?;
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

impl ThroughputResult {
    pub(crate) fn rate(&self) -> f64 {
        self.accepted as f64 / self.measured.as_secs_f64().max(1e-9)
    }

    /// Human report followed by the one `RESULT` line.
    pub(crate) fn report(&self, cfg: &ThroughputConfig) -> String {
        let (l, c) = (&self.latency, &self.connection);
        let mut out = format!(
            "portcullis-bench throughput\n\
             \x20 measures the SMTP server listening at {} (whatever runs there), not this tool\n\
             \x20 machine: {} cores; this client (2 worker threads) shares them with the server,\n\
             \x20   so the figures depend on the core count\n\
             \x20 sessions {}, size {} B, per connection {}, pipelining {}\n\
             \x20 measured:        {:.1} s after {:.1} s warm-up (drain {:.2} s)\n\
             \x20 accepted:        {} messages, {:.1} msg/s\n\
             \x20 latency ms:      p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}  (MAIL FROM -> final 250)\n",
            cfg.target,
            crate::cores(),
            cfg.sessions,
            cfg.size,
            cfg.per_connection,
            if cfg.pipeline { "on" } else { "off" },
            self.measured.as_secs_f64(),
            cfg.warmup,
            self.drain.as_secs_f64(),
            self.accepted,
            self.rate(),
            ms(l, 0.5),
            ms(l, 0.9),
            ms(l, 0.99),
            l.max() as f64 / 1000.0,
        );
        if cfg.per_connection == 1 {
            out.push_str(&format!(
                "  connection ms:   p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}  (connect -> 221)\n",
                ms(c, 0.5),
                ms(c, 0.9),
                ms(c, 0.99),
                c.max() as f64 / 1000.0
            ));
        }
        if self.unfinished > 0 {
            out.push_str(&format!(
                "  WARNING: {} sessions did not finish by the drain deadline\n",
                self.unfinished
            ));
        }
        out.push_str(&self.errors.report());
        out.push_str(&format!(
            "RESULT throughput sessions={} size={} per_connection={} seconds={:.1} accepted={} rate={:.1} p50_ms={:.2} p99_ms={:.2} errors={}",
            cfg.sessions,
            cfg.size,
            cfg.per_connection,
            self.measured.as_secs_f64(),
            self.accepted,
            self.rate(),
            ms(l, 0.5),
            ms(l, 0.99),
            self.errors.total()
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(target: SocketAddr) -> ThroughputConfig {
        ThroughputConfig {
            target,
            sessions: 4,
            size: 4096,
            seconds: 1.0,
            per_connection: 1,
            to: "alice@localhost".into(),
            from: "bench@example.org".into(),
            pipeline: false,
            warmup: 0.0,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_second_against_fake_server() {
        let (addr, server) = crate::fake::start().await;
        let cfg = config(addr);
        let r = run_throughput(cfg.clone()).await.unwrap();
        assert!(r.accepted > 0, "{}", r.report(&cfg));
        assert_eq!(r.errors.total(), 0, "{}", r.report(&cfg));
        assert_eq!(r.latency.len(), r.accepted);
        assert!(!r.connection.is_empty());
        assert!(
            r.report(&cfg)
                .contains("RESULT throughput sessions=4 size=4096 per_connection=1")
        );
        server.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipelined_several_per_connection() {
        let (addr, server) = crate::fake::start().await;
        let cfg = ThroughputConfig {
            pipeline: true,
            per_connection: 5,
            seconds: 0.5,
            ..config(addr)
        };
        let r = run_throughput(cfg.clone()).await.unwrap();
        assert!(r.accepted > 0, "{}", r.report(&cfg));
        assert_eq!(r.errors.total(), 0, "{}", r.report(&cfg));
        server.abort();
    }

    #[tokio::test]
    async fn refuses_non_loopback_target() {
        let err = run_throughput(config("10.0.0.1:25".parse().unwrap()))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("non-loopback"), "{err}");
    }
}
