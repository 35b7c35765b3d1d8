//! portcullis-bench: load generator for measuring a Portcullis (or any SMTP)
//! server on this machine — `throughput` (messages/s, latency), `held`
//! (server memory per idle connection), `flood` (an exempt client's latency under a
//! connection flood), `relay` (relay throughput end to end, through a `portcullis serve`
//! it starts itself, to a sink in this process), `report` (`portcullis report
//! greet-pause` over a generated 1 GiB log) and `tls` (STARTTLS handshakes per second and
//! the memory of an idle TLS session, against a `portcullis serve` it starts itself).
//!
//! It must not talk to anything but loopback (127.0.0.0/8, ::1), run without a
//! time or count bound, or touch a server it did not start other than over SMTP and /proc
//! reads (`relay` starts its own in a fresh directory, and stops it).

mod access;
mod clock;
#[cfg(test)]
mod fake;
mod flood;
mod held;
mod message;
mod relay;
mod report;
mod sink;
mod smtp;
mod throughput;
mod tls;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Load generator and benchmark scenarios for Portcullis (loopback targets only).
#[derive(Debug, Parser)]
#[command(
    name = "portcullis-bench",
    long_about = "Load generator and benchmark scenarios for Portcullis.\n\n\
        It measures the SMTP server at the address given (loopback only: 127.0.0.0/8 or ::1). \
        The client runs on a tokio runtime with 2 worker threads, because the target machine \
        has 2 cores and the server shares them; results therefore depend on the machine's \
        core count and on what else runs there."
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Concurrent sessions sending messages; reports msg/s and latency percentiles
    ///
    /// Runs on 2 tokio worker threads (the machine has 2 cores, shared with the
    /// server), so the figures depend on the core count.
    Throughput(throughput::ThroughputConfig),
    /// Holds many idle connections; reports server PSS/RSS per connection
    ///
    /// Runs on 2 tokio worker threads (the machine has 2 cores, shared with the
    /// server). Pass several --sources to exceed one address's ephemeral ports.
    Held(held::HeldConfig),
    /// An exempt client's session latency alone, then under a connection flood; server memory
    ///
    /// Phase 1 (baseline): the legitimate client alone for --seconds. Phase 2 (flood): the
    /// same client while slammers open --rate connections per second from --slam-sources,
    /// each talking before the greeting. Slammers run on 2 tokio worker threads, the
    /// legitimate client on a thread of its own; all share the machine with the server.
    Flood(flood::FloodConfig),
    /// Generates a large Sendmail access map; times parsing and lookups, reports peak RSS
    ///
    /// Runs in this process only (no server, no network); single-threaded.
    AccessLoad(access::AccessLoadConfig),
    /// Relay end to end: client -> a spawned `portcullis serve` -> its queue runner -> a sink
    ///
    /// Starts an SMTP (or `--lmtp`) sink in this process and the release `portcullis`
    /// binary in a fresh directory, with `[relay] domains = ["example.net"]` and a
    /// `[[route]]` to the sink; sends --messages messages and waits until the sink has them
    /// all. Reports the end-to-end and accept-side rates, the delay from each message's
    /// 250 to its arrival at the sink, and the server's CPU and memory. The client and the
    /// sink run on 2 tokio worker threads, sharing the machine with the server.
    Relay(relay::RelayConfig),
    /// `portcullis report greet-pause` over a generated mail log: wall time, MB/s, peak RSS
    ///
    /// Writes a realistic mixed log (Sendmail's lines and ours) of --size-mib and a gzip
    /// copy into a fresh directory, then runs the release `portcullis` binary beside this
    /// program on each, --runs times. The report's summary must count exactly the lines
    /// written. Run it when nothing else builds: the machine has 2 cores.
    Report(report::ReportConfig),
    /// STARTTLS: server memory per idle TLS session, and handshakes per second
    ///
    /// Starts the release `portcullis` binary twice in fresh directories with a new ECDSA
    /// certificate and no greeting pause: holds --idle sessions idle after EHLO in
    /// plaintext, then (second server) as many after STARTTLS and a new EHLO, reading the
    /// server's VmRSS/VmHWM before and after; then --concurrency clients repeat connect,
    /// EHLO, STARTTLS, handshake, EHLO, QUIT until --handshakes are done. Clients run on
    /// 2 tokio worker threads, sharing the machine with the server.
    Tls(tls::TlsConfig),
}

/// clap parser for `--target`: an IP:port on loopback (no host names, no DNS).
pub(crate) fn parse_target(s: &str) -> anyhow::Result<SocketAddr> {
    let addr: SocketAddr = s
        .parse()
        .with_context(|| format!("{s:?} is not IP:port (e.g. 127.0.0.1:2525 or [::1]:2525)"))?;
    smtp::ensure_loopback(addr.ip())?;
    Ok(addr)
}

/// clap parser for one `--sources` entry: a loopback IP.
pub(crate) fn parse_source(s: &str) -> anyhow::Result<IpAddr> {
    let ip: IpAddr = s
        .parse()
        .with_context(|| format!("{s:?} is not an IP address"))?;
    smtp::ensure_loopback(ip)?;
    Ok(ip)
}

/// Cores available to this process, for the reports.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    rt.block_on(async {
        match cli.scenario {
            Scenario::Throughput(cfg) => {
                let result = throughput::run_throughput(cfg.clone()).await?;
                println!("{}", result.report(&cfg));
            }
            Scenario::Held(cfg) => {
                let run = held::run_held(cfg.clone()).await?;
                println!("{}", run.result.report(&cfg));
                println!("holding for {:.1} s (Ctrl-C ends early)", cfg.hold);
                let closed = run.hold_then_close(Duration::from_secs_f64(cfg.hold)).await;
                println!("closed {closed} connections");
            }
            Scenario::Flood(cfg) => {
                let result = flood::run_flood(cfg.clone()).await?;
                println!("{}", result.report(&cfg));
            }
            Scenario::Relay(cfg) => {
                let result = relay::run_relay(cfg.clone()).await?;
                println!("{}", result.report(&cfg));
            }
            Scenario::Report(cfg) => {
                let result = report::run_report(cfg.clone()).await?;
                println!("{}", result.report(&cfg));
            }
            Scenario::Tls(cfg) => {
                let result = tls::run_tls(cfg.clone()).await?;
                println!("{}", result.report(&cfg));
            }
            Scenario::AccessLoad(cfg) => {
                let result = access::run_access_load(&cfg)?;
                println!("{}", result.report(&cfg));
            }
        }
        Ok(())
    })
}
