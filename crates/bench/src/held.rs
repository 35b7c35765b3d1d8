//! The `held` scenario: opens many idle SMTP connections to a server and reads the
//! server's memory (PSS/RSS from /proc/<pid>/smaps_rollup) before and after, to
//! give the memory cost of one held connection.
//!
//! It must not send mail, connect anywhere but loopback, or open connections
//! without bound (at most 512 connects in flight, every wait 30 s at most).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, ensure};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tokio::task::JoinSet;

use crate::clock;
use crate::smtp::{Client, Errors, Failure, REPLY_TIMEOUT, ensure_loopback};

/// Most connection attempts in flight at once.
const MAX_IN_FLIGHT: usize = 512;
/// File descriptors kept for everything but the held connections.
const SPARE_FDS: u64 = 256;

/// Command-line options of `held`, also built directly by tests.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct HeldConfig {
    /// Server address (loopback IP:port only)
    #[arg(long, value_parser = crate::parse_target)]
    pub(crate) target: SocketAddr,
    /// Connections to open and hold (1..=1000000)
    #[arg(long, default_value_t = 10_000)]
    pub(crate) connections: usize,
    /// Server process id, for /proc/<pid>/smaps_rollup and /proc/<pid>/limits
    #[arg(long)]
    pub(crate) pid: u32,
    /// Seconds to hold the connections after measuring
    #[arg(long, default_value_t = 10.0)]
    pub(crate) hold: f64,
    /// Read the 220 greeting of each connection (false: send and read nothing)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) wait_greeting: bool,
    /// Local loopback addresses to connect from, round-robin (e.g. 127.0.0.1,127.0.0.2)
    #[arg(long, value_delimiter = ',', value_parser = crate::parse_source)]
    pub(crate) sources: Vec<IpAddr>,
    /// Also send EHLO and read its reply, leaving an idle session
    #[arg(long)]
    pub(crate) after_ehlo: bool,
    /// Seconds to wait after the last connect before reading memory again
    #[arg(long, default_value_t = 2.0)]
    pub(crate) settle: f64,
}

/// Server memory from smaps_rollup, in kB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Memory {
    pub(crate) pss_kb: u64,
    pub(crate) rss_kb: u64,
}

/// What one run measured.
#[derive(Debug)]
pub(crate) struct HeldResult {
    pub(crate) held: usize,
    pub(crate) errors: Errors,
    pub(crate) before: Memory,
    pub(crate) after: Memory,
    /// The server's soft "Max open files", when readable.
    pub(crate) server_nofile: Option<u64>,
    /// Our own soft RLIMIT_NOFILE after raising it.
    pub(crate) our_nofile: u64,
    pub(crate) sources: Vec<IpAddr>,
}

/// The measured result plus the open connections, closed by `hold_then_close`.
#[derive(Debug)]
pub(crate) struct HeldRun {
    pub(crate) result: HeldResult,
    conns: Vec<Client>,
}

pub(crate) fn parse_smaps_rollup(text: &str) -> Option<Memory> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(name)).then(|| words.next()?.parse().ok())?
        })
    };
    Some(Memory {
        pss_kb: field("Pss:")?,
        rss_kb: field("Rss:")?,
    })
}

/// Soft "Max open files" from /proc/<pid>/limits text (`unlimited` = u64::MAX).
pub(crate) fn parse_nofile_soft(text: &str) -> Option<u64> {
    let rest = text
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    match rest.split_whitespace().next()? {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

fn read_memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_smaps_rollup(&text).with_context(|| format!("no Pss:/Rss: in {path}"))
}

/// Raises our soft RLIMIT_NOFILE to `want` (and the hard one when permitted).
pub(crate) fn raise_nofile(want: u64) -> anyhow::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(NOFILE)")?;
    if soft >= want {
        return Ok(soft);
    }
    if want > hard && setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        return Ok(want);
    }
    let soft = want.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).context("setrlimit(NOFILE)")?;
    Ok(soft)
}

/// Opens one connection and leaves it in the requested state.
async fn open_one(cfg: &HeldConfig, source: IpAddr) -> Result<Client, Failure> {
    let hard = clock::now() + REPLY_TIMEOUT;
    let mut c = Client::connect(cfg.target, Some(source), hard).await?;
    if cfg.wait_greeting {
        c.expect("greeting", 220).await?;
        if cfg.after_ehlo {
            c.send("ehlo", b"EHLO bench.example.org\r\n").await?;
            c.expect("ehlo", 250).await?;
        }
    }
    Ok(c)
}

/// Measures memory, opens the connections, waits `settle`, measures again.
pub(crate) async fn run_held(mut cfg: HeldConfig) -> anyhow::Result<HeldRun> {
    ensure_loopback(cfg.target.ip())?;
    ensure!(
        (1..=1_000_000).contains(&cfg.connections),
        "--connections must be 1..=1000000"
    );
    ensure!(
        cfg.hold >= 0.0 && cfg.hold <= 86_400.0,
        "--hold must be in [0, 86400]"
    );
    ensure!(
        cfg.settle >= 0.0 && cfg.settle <= 600.0,
        "--settle must be in [0, 600]"
    );
    ensure!(cfg.sources.len() <= 256, "at most 256 --sources");
    ensure!(
        cfg.wait_greeting || !cfg.after_ehlo,
        "--after-ehlo needs --wait-greeting true"
    );
    if cfg.sources.is_empty() {
        let local = if cfg.target.is_ipv4() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        };
        cfg.sources.push(local);
    }
    for s in &cfg.sources {
        ensure_loopback(*s)?;
        ensure!(
            s.is_ipv4() == cfg.target.is_ipv4(),
            "source {s} is not the same family as {}",
            cfg.target
        );
    }
    let server_nofile = std::fs::read_to_string(format!("/proc/{}/limits", cfg.pid))
        .ok()
        .and_then(|t| parse_nofile_soft(&t));
    let before = read_memory(cfg.pid)?;
    let our_nofile = raise_nofile(cfg.connections as u64 + SPARE_FDS)?;
    ensure!(
        our_nofile >= cfg.connections as u64 + SPARE_FDS,
        "our open-files limit ({our_nofile}) allows only {} connections; raise the hard limit \
         (ulimit -Hn, or run as root) or ask for fewer",
        our_nofile.saturating_sub(SPARE_FDS)
    );

    let cfg = std::sync::Arc::new(cfg);
    let mut conns = Vec::with_capacity(cfg.connections);
    let mut errors = Errors::default();
    let mut set = JoinSet::new();
    let mut next = 0;
    // Each turn starts connects up to the in-flight bound and collects one: at most 2n turns.
    for _ in 0..=2 * cfg.connections {
        while next < cfg.connections && set.len() < MAX_IN_FLIGHT {
            let source = cfg.sources[next % cfg.sources.len()];
            let cfg = std::sync::Arc::clone(&cfg);
            set.spawn(async move { open_one(&cfg, source).await });
            next += 1;
        }
        match set.join_next().await {
            Some(Ok(Ok(c))) => conns.push(c),
            Some(Ok(Err(f))) => errors.record(&f),
            Some(Err(e)) => errors.record(&Failure::new("task", e.to_string())),
            None => break,
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(cfg.settle)).await;
    let after = read_memory(cfg.pid)?;
    let result = HeldResult {
        held: conns.len(),
        errors,
        before,
        after,
        server_nofile,
        our_nofile,
        sources: cfg.sources.clone(),
    };
    Ok(HeldRun { result, conns })
}

impl HeldRun {
    /// Keeps the connections open for `hold` (Ctrl-C ends early), then closes them all.
    pub(crate) async fn hold_then_close(self, hold: Duration) -> usize {
        tokio::select! {
            () = tokio::time::sleep(hold) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        let n = self.conns.len();
        drop(self.conns);
        n
    }
}

fn per_conn_bytes(before_kb: u64, after_kb: u64, n: usize) -> i64 {
    let delta = (i128::from(after_kb) - i128::from(before_kb)) * 1024;
    i64::try_from(delta / n.max(1) as i128).unwrap_or(i64::MAX)
}

impl HeldResult {
    pub(crate) fn pss_per_conn(&self) -> i64 {
        per_conn_bytes(self.before.pss_kb, self.after.pss_kb, self.held)
    }
    pub(crate) fn rss_per_conn(&self) -> i64 {
        per_conn_bytes(self.before.rss_kb, self.after.rss_kb, self.held)
    }

    /// Human report followed by the one `RESULT` line.
    pub(crate) fn report(&self, cfg: &HeldConfig) -> String {
        let mode = match (cfg.wait_greeting, cfg.after_ehlo) {
            (false, _) => "nothing sent or read (held before/in the greeting)",
            (true, false) => "220 greeting read, then idle",
            (true, true) => "greeting and EHLO done, then idle",
        };
        let sources: Vec<String> = self.sources.iter().map(ToString::to_string).collect();
        let mut out = format!(
            "portcullis-bench held\n\
             \x20 measures the server process {} listening at {} (memory from /proc/{}/smaps_rollup)\n\
             \x20 machine: {} cores; this client (2 worker threads) shares them with the server\n\
             \x20 mode:            {mode}\n\
             \x20 sources:         {}\n\
             \x20 connections:     {} held of {} asked ({} failed); our NOFILE soft limit {}\n",
            cfg.pid,
            cfg.target,
            cfg.pid,
            crate::cores(),
            sources.join(","),
            self.held,
            cfg.connections,
            self.errors.total(),
            self.our_nofile,
        );
        match self.server_nofile {
            Some(n) if n < cfg.connections as u64 => out.push_str(&format!(
                "  NOTE: the server's soft \"Max open files\" is {n}, below the {} connections asked; it may refuse some\n",
                cfg.connections
            )),
            Some(_) => {}
            None => out.push_str(&format!("  note: could not read /proc/{}/limits\n", cfg.pid)),
        }
        for (name, b, a, per) in [
            (
                "PSS",
                self.before.pss_kb,
                self.after.pss_kb,
                self.pss_per_conn(),
            ),
            (
                "RSS",
                self.before.rss_kb,
                self.after.rss_kb,
                self.rss_per_conn(),
            ),
        ] {
            out.push_str(&format!(
                "  {name}:             before {b} kB, after {a} kB; per connection {per} B ({:.2} KiB)\n",
                per as f64 / 1024.0
            ));
        }
        out.push_str(&self.errors.report());
        out.push_str(&format!(
            "RESULT held connections={} pss_per_conn_bytes={} rss_per_conn_bytes={}",
            self.held,
            self.pss_per_conn(),
            self.rss_per_conn()
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let smaps = "55a6-7ffd ---p 00000000 00:00 0 [rollup]\nRss:  1752 kB\nPss:  445 kB\nPss_Dirty:  112 kB\n";
        assert_eq!(
            parse_smaps_rollup(smaps),
            Some(Memory {
                pss_kb: 445,
                rss_kb: 1752
            })
        );
        assert_eq!(parse_smaps_rollup("Pss_Anon: 3 kB\n"), None);
        let limits =
            "Max cpu time  unlimited  unlimited  seconds\nMax open files  1024  524288  files\n";
        assert_eq!(parse_nofile_soft(limits), Some(1024));
        assert_eq!(
            parse_nofile_soft("Max open files unlimited unlimited files"),
            Some(u64::MAX)
        );
        assert_eq!(per_conn_bytes(1000, 1010, 10), 1024);
        assert_eq!(per_conn_bytes(1010, 1000, 0), -10240);
    }

    fn config(target: SocketAddr) -> HeldConfig {
        HeldConfig {
            target,
            connections: 50,
            pid: std::process::id(),
            hold: 0.0,
            wait_greeting: true,
            sources: vec!["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()],
            after_ehlo: true,
            settle: 0.0,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn holds_connections_to_fake_server() {
        let (addr, server) = crate::fake::start().await;
        for cfg in [
            config(addr),
            HeldConfig {
                wait_greeting: false,
                after_ehlo: false,
                ..config(addr)
            },
        ] {
            let run = run_held(cfg.clone()).await.unwrap();
            let report = run.result.report(&cfg);
            assert_eq!(run.result.held, 50, "{report}");
            assert_eq!(run.result.errors.total(), 0, "{report}");
            assert!(report.contains("RESULT held connections=50 "), "{report}");
            assert_eq!(run.hold_then_close(Duration::ZERO).await, 50);
        }
        server.abort();
    }

    #[tokio::test]
    async fn refuses_non_loopback() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let bad = HeldConfig {
            sources: vec!["192.168.1.1".parse().unwrap()],
            ..config(addr)
        };
        assert!(
            run_held(bad)
                .await
                .unwrap_err()
                .to_string()
                .contains("non-loopback")
        );
        let bad = config("10.0.0.1:25".parse().unwrap());
        assert!(
            run_held(bad)
                .await
                .unwrap_err()
                .to_string()
                .contains("non-loopback")
        );
    }
}
