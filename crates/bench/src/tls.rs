//! The `tls` scenario: what STARTTLS costs the server. It starts the release `portcullis
//! serve` in a fresh directory with a certificate it makes (rcgen, ECDSA P-256) and no
//! greeting pause, then:
//!
//! 1. memory: holds `--idle` sessions idle after EHLO in plaintext and reads the server's
//!    VmRSS before and after; then, on a second fresh server, holds as many sessions idle
//!    after EHLO, STARTTLS, the handshake and a new EHLO, and reads VmRSS and VmHWM again:
//!    the difference per session is what an idle TLS session costs over a plaintext one;
//! 2. rate: on the second server, `--concurrency` clients each repeat connect, EHLO,
//!    STARTTLS, handshake, QUIT until `--handshakes` are done: handshakes per second, the
//!    latency of one such session, and the server's CPU per handshake.
//!
//! It must not connect anywhere but loopback (the server listens on 127.0.0.1), run
//! unbounded (counts are fixed and every wait ends by the reply timeout), or leave a server
//! running (each is stopped at the end, killed on any error or Ctrl-C).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use hdrhistogram::Histogram;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::timeout_at;
use tokio_rustls::TlsConnector;

use crate::clock;
use crate::flood::{cpu_time, read_status_kb};
use crate::held::raise_nofile;
use crate::relay::{Server, WorkDir, free_port, server_binary};
use crate::smtp::{Errors, Failure, REPLY_TIMEOUT, read_reply};

/// Most connects in flight while opening the idle sessions.
const MAX_IN_FLIGHT: usize = 256;
/// File descriptors kept for everything but the held sessions.
const SPARE_FDS: u64 = 256;

/// Command-line options of `tls`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TlsConfig {
    /// Sessions to hold idle for the memory figures (1..=50000)
    #[arg(long, default_value_t = 2000)]
    pub(crate) idle: usize,
    /// Handshakes for the rate (1..=1000000)
    #[arg(long, default_value_t = 5000)]
    pub(crate) handshakes: usize,
    /// Clients doing handshakes at once (1..=1000)
    #[arg(long, default_value_t = 32)]
    pub(crate) concurrency: usize,
    /// Seconds to wait after opening the idle sessions before reading memory
    #[arg(long, default_value_t = 2.0)]
    pub(crate) settle: f64,
    /// The `portcullis` binary (default: the one beside this program)
    #[arg(long)]
    pub(crate) server: Option<PathBuf>,
}

impl TlsConfig {
    fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            (1..=50_000).contains(&self.idle),
            "--idle must be 1..=50000"
        );
        ensure!(
            (1..=1_000_000).contains(&self.handshakes),
            "--handshakes must be 1..=1000000"
        );
        ensure!(
            (1..=1000).contains(&self.concurrency),
            "--concurrency must be 1..=1000"
        );
        ensure!(
            self.settle >= 0.0 && self.settle <= 600.0,
            "--settle must be in [0, 600]"
        );
        Ok(())
    }
}

/// Server memory around holding sessions, in kB.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Held {
    pub(crate) sessions: usize,
    pub(crate) rss_before_kb: u64,
    pub(crate) rss_after_kb: u64,
    pub(crate) hwm_after_kb: u64,
}

impl Held {
    fn per_session_bytes(&self) -> i64 {
        let delta = (i128::from(self.rss_after_kb) - i128::from(self.rss_before_kb)) * 1024;
        i64::try_from(delta / self.sessions.max(1) as i128).unwrap_or(i64::MAX)
    }
}

/// What a run measured.
#[derive(Debug)]
pub(crate) struct TlsResult {
    pub(crate) plain: Held,
    pub(crate) tls: Held,
    pub(crate) handshakes: u64,
    pub(crate) elapsed: Duration,
    pub(crate) latency: Histogram<u64>,
    pub(crate) server_cpu: Duration,
    pub(crate) errors: Errors,
}

/// Runs both phases.
pub(crate) async fn run_tls(cfg: TlsConfig) -> anyhow::Result<TlsResult> {
    cfg.validate()?;
    let bin = server_binary(cfg.server.as_deref())?;
    raise_nofile(cfg.idle as u64 + SPARE_FDS)?;
    let client = Arc::new(client_config()?);
    let mut errors = Errors::default();

    let (work, server, target) = start(&bin).await?;
    let (plain, conns) = hold(&cfg, target, server.pid, None, &mut errors).await?;
    drop(conns);
    server.stop().await;
    work.remove_if_ours();

    let (work, server, target) = start(&bin).await?;
    let (tls, conns) = hold(&cfg, target, server.pid, Some(&client), &mut errors).await?;
    drop(conns);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu_before = cpu_time(Some(server.pid))?;
    let started = clock::now();
    let (handshakes, latency) = rate(&cfg, target, &client, &mut errors).await?;
    let elapsed = clock::now().saturating_duration_since(started);
    let server_cpu = cpu_time(Some(server.pid))?.saturating_sub(cpu_before);
    server.stop().await;
    work.remove_if_ours();
    Ok(TlsResult {
        plain,
        tls,
        handshakes,
        elapsed,
        latency,
        server_cpu,
        errors,
    })
}

/// A fresh server with a new certificate, listening on a free loopback port.
async fn start(bin: &Path) -> anyhow::Result<(WorkDir, Server, SocketAddr)> {
    let work = WorkDir::create(None)?;
    let cert = rcgen::generate_simple_self_signed(vec!["mx.bench.test".to_owned()])
        .context("making the test certificate")?;
    let (cert_path, key_path) = (work.path.join("mx.crt"), work.path.join("mx.key"));
    std::fs::write(&cert_path, cert.cert.pem()).context("writing mx.crt")?;
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).context("writing mx.key")?;
    let listen = free_port()?;
    let config = format!(
        "# written by portcullis-bench tls\n\
         [server]\nlisten = [\"{listen}\"]\nhostname = \"mx.bench.test\"\n\
         spool_dir = \"{spool}\"\nshutdown_grace = \"1s\"\n\n\
         [local]\nmaildir_root = \"{mail}\"\n\n\
         [greet_pause]\ndefault = \"0s\"\n\n[dns]\nreverse = false\n\n\
         [tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n",
        spool = work.path.join("spool").display(),
        mail = work.path.join("mail").display(),
        cert = cert_path.display(),
        key = key_path.display(),
    );
    std::fs::write(work.path.join("portcullis.toml"), config).context("writing the config")?;
    let server = Server::start(bin, &work.path).await?;
    Ok((work, server, listen))
}

/// An open session: plaintext, or TLS after STARTTLS. Held only to keep the connection
/// open (its memory on the server is what is measured); never read again.
#[allow(dead_code)]
enum Session {
    Plain(BufReader<TcpStream>),
    Tls(Box<BufReader<tokio_rustls::client::TlsStream<TcpStream>>>),
}

/// Opens `cfg.idle` sessions (TLS with `client`), settles, reads the server's memory.
async fn hold(
    cfg: &TlsConfig,
    target: SocketAddr,
    pid: u32,
    client: Option<&Arc<ClientConfig>>,
    errors: &mut Errors,
) -> anyhow::Result<(Held, Vec<Session>)> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before_kb = read_status_kb(pid, "VmRSS:")?;
    let mut sessions = Vec::with_capacity(cfg.idle);
    let mut set = JoinSet::new();
    let mut next = 0;
    for _ in 0..=2 * cfg.idle {
        while next < cfg.idle && set.len() < MAX_IN_FLIGHT {
            let client = client.cloned();
            set.spawn(async move { open(target, client.as_ref(), false).await });
            next += 1;
        }
        match set.join_next().await {
            Some(Ok(Ok(s))) => sessions.push(s),
            Some(Ok(Err(f))) => errors.record(&f),
            Some(Err(e)) => errors.record(&Failure::new("task", e.to_string())),
            None => break,
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(cfg.settle)).await;
    let held = Held {
        sessions: sessions.len(),
        rss_before_kb,
        rss_after_kb: read_status_kb(pid, "VmRSS:")?,
        hwm_after_kb: read_status_kb(pid, "VmHWM:")?,
    };
    Ok((held, sessions))
}

/// Connects, EHLO; with `client`, STARTTLS, the handshake and EHLO again; with `quit`,
/// QUIT (and the 221) at the end.
async fn open(
    target: SocketAddr,
    client: Option<&Arc<ClientConfig>>,
    quit: bool,
) -> Result<Session, Failure> {
    let deadline = clock::tokio_at(clock::now() + REPLY_TIMEOUT);
    let tcp = timeout_at(deadline, TcpStream::connect(target))
        .await
        .map_err(|_| Failure::new("connect timeout", "no connection within 30 s"))?
        .map_err(|e| Failure::new("connect", e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let mut plain = BufReader::new(tcp);
    expect(&mut plain, "greeting", None, 220, deadline).await?;
    expect(
        &mut plain,
        "ehlo",
        Some(b"EHLO bench.example\r\n"),
        250,
        deadline,
    )
    .await?;
    let Some(client) = client else {
        return Ok(Session::Plain(plain));
    };
    expect(&mut plain, "starttls", Some(b"STARTTLS\r\n"), 220, deadline).await?;
    let name =
        ServerName::try_from("mx.bench.test").map_err(|e| Failure::new("tls", e.to_string()))?;
    let tls = timeout_at(
        deadline,
        TlsConnector::from(client.clone()).connect(name, plain.into_inner()),
    )
    .await
    .map_err(|_| Failure::new("handshake timeout", "no handshake within 30 s"))?
    .map_err(|e| Failure::new("handshake", e.to_string()))?;
    let mut tls = BufReader::new(tls);
    expect(
        &mut tls,
        "ehlo-tls",
        Some(b"EHLO bench.example\r\n"),
        250,
        deadline,
    )
    .await?;
    if quit {
        expect(&mut tls, "quit", Some(b"QUIT\r\n"), 221, deadline).await?;
    }
    Ok(Session::Tls(Box::new(tls)))
}

/// Sends `line` (if any) and requires a reply of `want` by `deadline`.
async fn expect<S>(
    io: &mut BufReader<S>,
    stage: &str,
    line: Option<&[u8]>,
    want: u16,
    deadline: tokio::time::Instant,
) -> Result<(), Failure>
where
    S: tokio::io::AsyncRead + AsyncWrite + Unpin,
{
    let exchange = async {
        if let Some(line) = line {
            io.get_mut()
                .write_all(line)
                .await
                .map_err(|e| Failure::new("write", e.to_string()))?;
            io.get_mut()
                .flush()
                .await
                .map_err(|e| Failure::new("write", e.to_string()))?;
        }
        read_reply(io).await
    };
    let reply = timeout_at(deadline, exchange)
        .await
        .map_err(|_| Failure::new(format!("{stage} timeout"), "no reply within 30 s"))??;
    if reply.code == want {
        Ok(())
    } else {
        Err(Failure::new(format!("{stage} {}", reply.code), reply.text))
    }
}

/// `cfg.handshakes` whole sessions (connect … QUIT) from `cfg.concurrency` clients.
async fn rate(
    cfg: &TlsConfig,
    target: SocketAddr,
    client: &Arc<ClientConfig>,
    errors: &mut Errors,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let per_client = cfg.handshakes.div_ceil(cfg.concurrency);
    let mut set = JoinSet::new();
    for i in 0..cfg.concurrency {
        let count = per_client.min(cfg.handshakes.saturating_sub(i * per_client));
        let client = client.clone();
        set.spawn(async move {
            let mut latency = Histogram::<u64>::new(3).ok();
            let mut errors = Errors::default();
            let mut done = 0u64;
            for _ in 0..count {
                let at = clock::now();
                match open(target, Some(&client), true).await {
                    Ok(_) => {
                        done += 1;
                        let us = clock::now().saturating_duration_since(at).as_micros();
                        if let Some(h) = latency.as_mut() {
                            let _ = h.record(u64::try_from(us).unwrap_or(u64::MAX));
                        }
                    }
                    Err(f) => errors.record(&f),
                }
            }
            (done, latency, errors)
        });
    }
    let mut total = Histogram::<u64>::new(3).context("histogram")?;
    let mut done = 0;
    while let Some(joined) = set.join_next().await {
        let (n, latency, e) = joined.context("a client task failed")?;
        done += n;
        if let Some(h) = latency {
            total.add(h).context("merging histograms")?;
        }
        errors.merge(e);
    }
    Ok((done, total))
}

/// A client that accepts the server's self-signed certificate (the benchmark measures the
/// server, not certificate checking) but verifies the handshake signatures.
fn client_config() -> anyhow::Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS client versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    Ok(config)
}

#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl TlsResult {
    fn rate(&self) -> f64 {
        self.handshakes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Human report followed by the one `RESULT` line.
    pub(crate) fn report(&self, cfg: &TlsConfig) -> String {
        let ms = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        let mut out = format!(
            "portcullis-bench tls\n\
             \x20 machine: {} cores; this client (2 worker threads) shares them with the server\n\
             \x20 certificate: ECDSA P-256 (rcgen), TLS 1.3 negotiated\n",
            crate::cores()
        );
        for (name, h) in [
            ("plaintext idle after EHLO", &self.plain),
            ("TLS idle after EHLO", &self.tls),
        ] {
            out.push_str(&format!(
                "  {name}: {} sessions; VmRSS {} -> {} kB (VmHWM {} kB): {} B per session\n",
                h.sessions,
                h.rss_before_kb,
                h.rss_after_kb,
                h.hwm_after_kb,
                h.per_session_bytes()
            ));
        }
        out.push_str(&format!(
            "  TLS over plaintext: {} B per idle session\n\
             \x20 rate: {} sessions (connect, EHLO, STARTTLS, handshake, EHLO, QUIT) from {} clients \
             in {:.2} s: {:.0} handshakes/s\n\
             \x20 session latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n\
             \x20 server CPU: {:.2} s, {:.0} us per handshake\n",
            self.tls.per_session_bytes() - self.plain.per_session_bytes(),
            self.handshakes,
            cfg.concurrency,
            self.elapsed.as_secs_f64(),
            self.rate(),
            ms(0.5),
            ms(0.99),
            self.latency.max() as f64 / 1000.0,
            self.server_cpu.as_secs_f64(),
            self.server_cpu.as_secs_f64() * 1e6 / self.handshakes.max(1) as f64,
        ));
        out.push_str(&self.errors.report());
        out.push_str(&format!(
            "RESULT tls handshakes_per_s={:.0} plain_idle_bytes={} tls_idle_bytes={} errors={}",
            self.rate(),
            self.plain.per_session_bytes(),
            self.tls.per_session_bytes(),
            self.errors.total()
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TlsConfig {
        TlsConfig {
            idle: 10,
            handshakes: 10,
            concurrency: 2,
            settle: 0.0,
            server: None,
        }
    }

    #[test]
    fn bounds_are_checked() {
        assert!(config().validate().is_ok());
        for bad in [
            TlsConfig {
                idle: 0,
                ..config()
            },
            TlsConfig {
                idle: 50_001,
                ..config()
            },
            TlsConfig {
                handshakes: 0,
                ..config()
            },
            TlsConfig {
                concurrency: 1001,
                ..config()
            },
            TlsConfig {
                settle: -1.0,
                ..config()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn per_session_memory() {
        let held = Held {
            sessions: 4,
            rss_before_kb: 1000,
            rss_after_kb: 1010,
            hwm_after_kb: 1010,
        };
        assert_eq!(held.per_session_bytes(), 2560);
        let shrunk = Held {
            rss_after_kb: 990,
            ..held
        };
        assert_eq!(shrunk.per_session_bytes(), -2560);
    }
}
