//! `portcullis serve`: start-up, the accept loops, signals, reload and graceful shutdown.
//!
//! Order of start-up: open the spool and recover it (torn files to quarantine) before the
//! committer starts; bind every listener before accepting anything (a bad address fails the
//! start, not half of it); then accept.
//!
//! Signals: SIGTERM/SIGINT stop accepting, give idle sessions `421 4.3.2 ... Service shutting
//! down`, let a DATA in progress finish within `shutdown_grace`, drain the committer (every
//! message acknowledged is on disk) and stop the queue runner. SIGHUP reloads the file
//! atomically for new sessions; a bad file is logged and the old configuration kept. That
//! includes `[tls]`: the certificate and key are read again, and a bad or mismatched pair
//! keeps the old pair (and everything else of the old configuration) in force.
//! Listen addresses and the log's format and destination are read at start only; the
//! rejection-summary keys (`log.summary_*`) follow a reload, keeping the counts.
//!
//! Rejection summaries: a task logs each defence's summary when its window is due, and the
//! last counts once more at shutdown, after the sessions have ended (nothing counted is lost).
//!
//! Must not: contain SMTP or policy logic.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use portcullis_config::{Config, Diagnostic, load_file};
use portcullis_policy::anvil::MemoryAnvil;
use portcullis_policy::greet_pause::PassCache;
use portcullis_spool::{CommitOptions, Committer, QueueId, QueueIdGen, Spool};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access::{self, LoadedMap};
use crate::control;
use crate::dns::mx::{HickoryMx, MxLookup, Unavailable};
use crate::dns::{HickoryLookup, NoLookup, ReverseLookup};
use crate::gate::{self, Admit, Gate};
use crate::hold::Holder;
use crate::load::{self, LoadMonitor};
use crate::metrics::Live;
use crate::metrics_http;
use crate::queue::{self, QueueHandle, QueueReceiver};
use crate::state::{Runtime, Shared};
use crate::telemetry::{Event, Telemetry};

/// The parts `run` (and tests) assemble.
pub struct Built {
    /// Shared state.
    pub shared: Arc<Shared>,
    /// The queue runner's receiver.
    pub queue_rx: QueueReceiver,
    /// Messages found in the spool at start.
    pub recovered: Vec<QueueId>,
}

/// Opens and recovers the spool, starts the committer, loads the access map and prepares
/// shared state. Client names come from `[dns]`.
pub fn build(config: Config, telemetry: Telemetry, commit: CommitOptions) -> Result<Built> {
    let names = match resolver(&config) {
        Ok(names) => names,
        Err(error) => {
            telemetry.emit(Event::DnsUnavailable { error: &error });
            Arc::new(NoLookup)
        }
    };
    build_with_names(config, telemetry, commit, names)
}

/// The name resolver `[dns]` asks for.
pub fn resolver(config: &Config) -> Result<Arc<dyn ReverseLookup>, String> {
    if !config.dns.reverse {
        return Ok(Arc::new(NoLookup));
    }
    let lookup = HickoryLookup::new(&config.dns.servers, config.dns.timeout)?;
    Ok(Arc::new(lookup))
}

/// The MX resolver for relay delivery, from `[dns]` (its servers and timeout, whether or
/// not reverse lookups are on). When it cannot be set up, lookups fail for now and the
/// mail waits in the queue.
fn mx_resolver(config: &Config, telemetry: &Telemetry) -> Arc<dyn MxLookup> {
    match HickoryMx::new(&config.dns.servers, config.dns.timeout) {
        Ok(mx) => Arc::new(mx),
        Err(error) => {
            telemetry.emit(Event::DnsUnavailable { error: &error });
            Arc::new(Unavailable(error))
        }
    }
}

/// [`build`] with a given name resolver (tests use fixed names).
pub fn build_with_names(
    config: Config,
    telemetry: Telemetry,
    commit: CommitOptions,
    names: Arc<dyn ReverseLookup>,
) -> Result<Built> {
    let access = access::load(config.access.file.as_deref()).map_err(access::MapError)?;
    if let Some(path) = &config.access.file {
        access::report_loaded(&telemetry, path, &access);
    }
    std::fs::create_dir_all(&config.local.maildir_root).with_context(|| {
        format!(
            "cannot create maildir_root {}",
            config.local.maildir_root.display()
        )
    })?;
    let spool = Arc::new(Spool::open(&config.server.spool_dir).with_context(|| {
        format!(
            "cannot open spool_dir {}",
            config.server.spool_dir.display()
        )
    })?);
    let recovery = spool.recover().context("spool recovery failed")?;
    for (path, reason) in &recovery.quarantined {
        telemetry.emit(Event::Quarantined {
            path: &path.display().to_string(),
            reason,
        });
    }
    if !recovery.ready.is_empty() {
        telemetry.emit(Event::Recovered {
            messages: recovery.ready.len(),
        });
    }
    let committer =
        Committer::start(spool.clone(), commit).context("cannot start the spool committer")?;
    let (queue, queue_rx) = QueueHandle::new();
    let mx = mx_resolver(&config, &telemetry);
    let gp = config.greet_pause;
    let anvil = Arc::new(MemoryAnvil::new(
        config.rate_control.window,
        config.limits.max_tracked_clients,
    ));
    let shared = Arc::new(Shared {
        runtime: ArcSwap::from_pointee(
            Runtime::new(config, &access, names).map_err(anyhow::Error::msg)?,
        ),
        telemetry,
        spool,
        committer,
        ids: QueueIdGen::new(std::process::id()),
        queue,
        passed: Mutex::new(PassCache::new(gp.pass_ttl, gp.pass_cache_max)),
        reload_lock: Mutex::new(()),
        anvil,
        load: LoadMonitor::new(),
        mx,
    });
    Ok(Built {
        shared,
        queue_rx,
        recovered: recovery.ready,
    })
}

/// Binds one listening socket: SO_REUSEADDR, IPv6-only for IPv6 addresses (so `[::]` and
/// `0.0.0.0` can both be listed), a deep backlog for bursts.
fn bind(addr: SocketAddr) -> Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket
        .bind(&addr.into())
        .with_context(|| format!("cannot bind {addr}"))?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(TcpListener::from_std(socket.into())?)
}

/// Lets this process hold as many connections as the hard limit allows.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Runs the server until SIGTERM or SIGINT.
pub async fn run(config: Config, config_path: Option<PathBuf>) -> Result<()> {
    raise_fd_limit();
    let telemetry = Telemetry::new(
        config.log.format,
        config.log.destination,
        &config.server.hostname,
    );
    telemetry.configure_summaries(config.log.summaries);
    let listen = config.server.listen.clone();
    let metrics_listen = config.metrics.listen;
    let origin = config.origin.clone();
    // The operator's `portcullis queue` commands come in here (owner-only socket). Bound
    // before recovery: a second server on the same spool is refused before it touches it
    // (its recovery would quarantine the running one's files in flight).
    let spool_dir = config.server.spool_dir.clone();
    Spool::open(&spool_dir)
        .with_context(|| format!("cannot open spool_dir {}", spool_dir.display()))?;
    let control_path = control::socket_path(&spool_dir);
    let control_listener = {
        let path = control_path.clone();
        tokio::task::spawn_blocking(move || control::bind(&path))
            .await
            .context("cannot bind the control socket")?
            .with_context(|| format!("cannot bind the control socket {}", control_path.display()))?
    };
    let Built {
        shared,
        queue_rx,
        recovered,
    } = build(config, telemetry, CommitOptions::default())?;
    let listeners = listen
        .iter()
        .map(|a| bind(*a))
        .collect::<Result<Vec<_>>>()?;
    let metrics_listener = match metrics_listen {
        Some(addr) => Some(bind(addr).context("cannot bind metrics.listen")?),
        None => None,
    };
    let control_listener = tokio::net::UnixListener::from_std(control_listener)?;
    shared.telemetry.emit(Event::ServerStarted {
        version: env!("CARGO_PKG_VERSION"),
        config: &origin,
    });

    let shutdown = CancellationToken::new();
    let sessions = TaskTracker::new();
    tokio::spawn(access::watch(shared.clone(), shutdown.clone()));
    let runner = tokio::spawn(queue::run(
        shared.clone(),
        queue_rx,
        recovered,
        shutdown.clone(),
    ));
    let handler = Arc::new(queue::RunnerControl::new(
        shared.spool.clone(),
        shared.queue.clone(),
    ));
    let control_server = tokio::spawn(control::serve(control_listener, handler, shutdown.clone()));
    let holder = Holder::start(shared.clone(), shutdown.clone(), sessions.clone())
        .context("cannot start the greeting-pause holder")?;
    let gate = Arc::new(Gate::new());
    tokio::spawn(load::sample(shared.clone(), gate.clone(), shutdown.clone()));
    if let Some(listener) = metrics_listener {
        if let Ok(addr) = listener.local_addr() {
            shared.telemetry.emit(Event::MetricsListening { addr });
        }
        let (gate, queue) = (gate.clone(), shared.queue.gauges());
        let live = move || Live {
            sessions: u64::from(gate.in_flight()),
            queue: queue.clone(),
        };
        tokio::spawn(metrics_http::serve(
            listener,
            shared.clone(),
            live,
            shutdown.clone(),
        ));
    }
    tokio::spawn(log_summaries(shared.clone(), shutdown.clone()));
    for listener in listeners {
        if let Ok(addr) = listener.local_addr() {
            shared.telemetry.emit(Event::ListenerBound { addr });
        }
        // Tracked: a connection accepted as shutdown begins is answered before the exit.
        sessions.spawn(accept_loop(
            shared.clone(),
            listener,
            holder.clone(),
            gate.clone(),
            shutdown.clone(),
        ));
    }
    drop(holder);

    let signal_name = wait_for_stop(&shared, config_path.as_deref()).await?;
    shared.telemetry.emit(Event::ShutdownStarted {
        signal: signal_name,
    });
    shutdown.cancel();
    sessions.close();
    let grace = shared.runtime.load().config.server.shutdown_grace;
    let left = match tokio::time::timeout(grace + Duration::from_secs(1), sessions.wait()).await {
        Ok(()) => 0,
        Err(_) => sessions.len(),
    };
    let _ = runner.await;
    let _ = control_server.await;
    let _ = std::fs::remove_file(&control_path);
    let committer_owner = shared.clone();
    let _ = tokio::task::spawn_blocking(move || committer_owner.committer.shutdown()).await;
    for summary in &shared.telemetry.summaries().take_all() {
        shared.telemetry.emit(Event::RejectionSummary { summary });
    }
    shared.telemetry.emit(Event::ShutdownDone {
        sessions_left: left,
    });
    Ok(())
}

/// Waits for SIGTERM or SIGINT, reloading on every SIGHUP meanwhile.
async fn wait_for_stop(shared: &Shared, config_path: Option<&Path>) -> Result<&'static str> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok("SIGTERM"),
            _ = int.recv() => return Ok("SIGINT"),
            _ = hup.recv() => reload(shared, config_path).await,
        }
    }
}

/// Re-reads the configuration file and the access map it names; keeps the old ones on any
/// error. The files are read on a blocking thread (a large map takes a moment to parse).
pub async fn reload(shared: &Shared, config_path: Option<&Path>) {
    let Some(path) = config_path else {
        shared.telemetry.emit(Event::ConfigReloaded {
            origin: "<embedded default> (unchanged)",
        });
        return;
    };
    let origin = path.display().to_string();
    let reader = path.to_owned();
    let loaded = tokio::task::spawn_blocking(move || load_runtime_files(&reader))
        .await
        .unwrap_or_else(|_| Err("the loader thread stopped".to_owned()));
    match loaded {
        Ok((config, access)) => {
            let old = shared.runtime.load_full();
            let names = if old.config.dns == config.dns {
                old.names.clone()
            } else {
                resolver(&config).unwrap_or_else(|error| {
                    shared
                        .telemetry
                        .emit(Event::DnsUnavailable { error: &error });
                    Arc::new(NoLookup)
                })
            };
            if let Some(file) = &config.access.file {
                access::report_loaded(&shared.telemetry, file, &access);
            }
            let summaries = config.log.summaries;
            match Runtime::new(config, &access, names) {
                Ok(runtime) => {
                    shared.telemetry.configure_summaries(summaries);
                    shared.replace_runtime(runtime);
                    shared
                        .telemetry
                        .emit(Event::ConfigReloaded { origin: &origin });
                }
                Err(error) => {
                    shared.telemetry.emit(Event::ConfigReloadFailed {
                        origin: &origin,
                        error: &error,
                    });
                }
            }
        }
        Err(error) => {
            shared.telemetry.emit(Event::ConfigReloadFailed {
                origin: &origin,
                error: &error,
            });
        }
    }
}

/// The configuration and its access map, or every error in one string.
fn load_runtime_files(path: &Path) -> Result<(Config, LoadedMap), String> {
    let config = load_file(path).map_err(|diags| {
        diags
            .iter()
            .filter(|d| d.is_error())
            .map(Diagnostic::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    let access = access::load(config.config.access.file.as_deref()).map_err(|e| e.join("; "))?;
    Ok((config.config, access))
}

/// The longest the summary task sleeps: a reload that turns summaries on, off or to a
/// shorter interval takes effect within it.
const SUMMARY_RECHECK: Duration = Duration::from_secs(1);

/// Logs each rejection summary when its window is due, until shutdown (which logs the rest).
async fn log_summaries(shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let (due, next) = shared.telemetry.summaries().take_due(SUMMARY_RECHECK);
        for summary in &due {
            shared.telemetry.emit(Event::RejectionSummary { summary });
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep_until(next.into()) => {}
        }
    }
}

/// How often an accept loop waiting for a client looks at the load.
const LOAD_RECHECK: Duration = Duration::from_secs(1);

/// Accepts connections and hands each to the pause holder.
async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    holder: Holder,
    gate: Arc<Gate>,
    shutdown: CancellationToken,
) {
    loop {
        if gate.before_accept(&shared, &shutdown).await.is_none() {
            return;
        }
        // While waiting for a client, look at the load every second: a refusal by load
        // must not wait for the next connection to take effect.
        let accepted = loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                r = listener.accept() => break Some(r),
                () = tokio::time::sleep(LOAD_RECHECK) => {
                    if gate.load_refuses(&shared).is_some() {
                        break None;
                    }
                }
            }
        };
        let Some(accepted) = accepted else {
            continue; // Back to the gate, which waits for the load to drop.
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let slot = match gate.after_accept(&shared, &shutdown).await {
                    Admit::Session(slot) => slot,
                    Admit::Full => {
                        let hostname = shared.runtime.load().config.server.hostname.clone();
                        tokio::spawn(gate::refuse(stream, hostname));
                        continue;
                    }
                };
                holder.admit(stream, peer.ip(), slot).await;
            }
            Err(e) => {
                // EMFILE and friends: say so, back off briefly instead of spinning.
                shared.telemetry.emit(Event::AcceptFailed {
                    error: &e.to_string(),
                });
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
