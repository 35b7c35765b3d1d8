//! Dialogue transcripts: `tests/transcripts/*.smtp` run against the real connection driver over
//! `tokio::io::duplex`, with paused tokio time (design.md §5; chasquid `.cmy` style).
//!
//! Script lines:
//! - `! key = value`   configuration, as root-level dotted TOML keys (`! server.max_message_bytes = 100`)
//! - `@peer ADDR`      the client's address (default 127.0.0.1)
//! - `@name ADDR NAME` reverse DNS (confirmed) gives NAME for ADDR (default: no names)
//! - `@access LINE`    a line of the access map (Sendmail `access` source format)
//!
//! The greeting pause defaults to 0 here (`! greet_pause.default = "5s"` turns it on).
//! - `C: text`         the client sends `text` CRLF (`C:` alone: an empty line)
//! - `C< text`         the client sends raw bytes (`\r`, `\n`, `\t`, `\\`, `\xNN` escapes)
//! - `S: text`         the next reply line is exactly `text`
//! - `S~ text`         the next reply line starts with `text`
//! - `+5s` / `+2m`     virtual time passes
//! - `SILENT`          nothing has been sent (and the connection is open)
//! - `CLOSED`          the server has closed the connection
//! - `LOG~ text`       some log line so far contains `text`
//! - `!LOG~ text`      no log line so far contains `text`
//! - `SPOOLED n`       the spool holds `n` messages
//! - `SIGTERM`         the server starts shutting down
//! - `SHUT`            the client closes its sending side (FIN)
//! - `RECONNECT`       a new connection from the same peer to the same server state
//! - `LOAD 2.40`       the 1-minute load average is now 2.40 (written to the transcript's own
//!   `load.loadavg_file`, which starts at 0.00, and read at once)
//!
//! Every `S:`/`S~`/`SILENT`/`CLOSED` is checked WITHOUT letting virtual time move: the server
//! must have answered by the current instant. Only `+N` advances time, so a transcript pins
//! down exactly when each timeout fires.

// Test code: panics are the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use portcullis::dns::StaticNames;
use portcullis::serve::build_with_names;
use portcullis::telemetry::Telemetry;
use portcullis_config::{LogFormat, load_str};
use portcullis_spool::CommitOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::sync::CancellationToken;

struct Script {
    config: Vec<String>,
    peer: IpAddr,
    names: Vec<(IpAddr, String)>,
    access: Vec<String>,
    steps: Vec<(usize, String)>,
}

fn parse_script(text: &str) -> Script {
    let mut s = Script {
        config: Vec::new(),
        peer: "127.0.0.1".parse().unwrap(),
        names: Vec::new(),
        access: Vec::new(),
        steps: Vec::new(),
    };
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_end();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(cfg) = trimmed.strip_prefix("! ") {
            s.config.push(cfg.to_owned());
        } else if let Some(peer) = trimmed.strip_prefix("@peer ") {
            s.peer = peer.trim().parse().unwrap();
        } else if let Some(rest) = trimmed.strip_prefix("@name ") {
            let (addr, name) = rest.trim().split_once(' ').unwrap();
            s.names
                .push((addr.parse().unwrap(), name.trim().to_owned()));
        } else if let Some(entry) = trimmed.strip_prefix("@access ") {
            s.access.push(entry.to_owned());
        } else {
            s.steps.push((i + 1, trimmed.to_owned()));
        }
    }
    s
}

fn unescape(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'r' => out.push(b'\r'),
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'\\' => out.push(b'\\'),
                b'x' => {
                    out.push(u8::from_str_radix(&s[i + 2..i + 4], 16).unwrap());
                    i += 2;
                }
                other => panic!("bad escape \\{}", other as char),
            }
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn duration(s: &str) -> Duration {
    if let Some(ms) = s.strip_suffix("ms") {
        return Duration::from_millis(ms.parse().unwrap());
    }
    let (n, unit) = s.split_at(s.len() - 1);
    let n: u64 = n.parse().unwrap();
    match unit {
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(60 * n),
        "h" => Duration::from_secs(3600 * n),
        _ => panic!("bad duration {s}"),
    }
}

/// The client side: reads what the server has sent by now, never waiting for time to pass.
struct Client {
    io: DuplexStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Client {
    /// Polls the stream until it has nothing more right now (yielding so the server runs).
    async fn fill_now(&mut self) {
        for _ in 0..200 {
            let mut tmp = [0u8; 4096];
            match tokio::time::timeout(Duration::ZERO, self.io.read(&mut tmp)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.eof = true;
                    return;
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&tmp[..n]),
                Err(_) => tokio::task::yield_now().await,
            }
        }
    }

    async fn line_now(&mut self) -> Option<String> {
        if !self.buf.contains(&b'\n') {
            self.fill_now().await;
        }
        let lf = self.buf.iter().position(|&b| b == b'\n')?;
        let line: Vec<u8> = self.buf.drain(..=lf).collect();
        Some(
            String::from_utf8_lossy(&line)
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        )
    }
}

fn run_file(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let script = parse_script(&text);
    let dir = tempfile::tempdir().unwrap();
    let mut toml = format!(
        "server.hostname = \"mx.example.test\"\nserver.spool_dir = \"{}/spool\"\nlocal.maildir_root = \"{}/mail\"\nlocal.domains = [\"localhost\"]\n",
        dir.path().display(),
        dir.path().display()
    );
    let loadavg = dir.path().join("loadavg");
    std::fs::write(&loadavg, "0.00 0.00 0.00 1/100 1\n").unwrap();
    toml.push_str(&format!("load.loadavg_file = \"{}\"\n", loadavg.display()));
    for line in &script.config {
        toml.push_str(line);
        toml.push('\n');
    }
    if !script
        .config
        .iter()
        .any(|l| l.starts_with("greet_pause.default"))
    {
        toml.push_str("greet_pause.default = \"0s\"\n");
    }
    if !script.access.is_empty() {
        let file = dir.path().join("access");
        std::fs::write(&file, script.access.join("\n") + "\n").unwrap();
        toml.push_str(&format!("access.file = \"{}\"\n", file.display()));
    }
    let config = match load_str(&toml, &path.display().to_string()) {
        Ok(l) => l.config,
        Err(d) => panic!("{}: config: {d:?}", path.display()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async move {
        let telemetry = Telemetry::memory(LogFormat::Syslog);
        let inline = CommitOptions {
            threads: 0,
            ..Default::default()
        };
        let names = Arc::new(StaticNames::new(script.names.clone()));
        let built = build_with_names(config, telemetry, inline, names).unwrap();
        let shared = built.shared;
        shared.load.refresh_loadavg(&loadavg, &shared.telemetry);
        let token = CancellationToken::new();
        let connect = || {
            let (client_io, server_io) = tokio::io::duplex(64 * 1024);
            let server = tokio::spawn(portcullis::conn::serve_connection(
                shared.clone(),
                server_io,
                script.peer,
                token.clone(),
            ));
            let client = Client {
                io: client_io,
                buf: Vec::new(),
                eof: false,
            };
            (client, server)
        };
        let (mut client, mut server) = connect();
        for (lineno, step) in &script.steps {
            let at = format!("{}:{lineno}: `{step}`", path.display());
            if step == "RECONNECT" {
                drop(client);
                let _ = tokio::time::timeout(Duration::from_secs(3600), server).await;
                (client, server) = connect();
                continue;
            }
            if let Some(value) = step.strip_prefix("LOAD ") {
                std::fs::write(&loadavg, format!("{value} 0.00 0.00 1/100 1\n")).unwrap();
                shared.load.refresh_loadavg(&loadavg, &shared.telemetry);
                continue;
            }
            run_step(&mut client, step, &shared, &token, &at).await;
        }
        drop(client);
        let _ = tokio::time::timeout(Duration::from_secs(3600), server).await;
        drop(dir);
    });
}

async fn run_step(
    client: &mut Client,
    step: &str,
    shared: &Arc<portcullis::state::Shared>,
    token: &CancellationToken,
    at: &str,
) {
    let log = || shared.telemetry.lines();
    if step == "C:" {
        client.io.write_all(b"\r\n").await.unwrap();
    } else if let Some(text) = step.strip_prefix("C: ") {
        client
            .io
            .write_all(format!("{text}\r\n").as_bytes())
            .await
            .unwrap();
    } else if let Some(raw) = step.strip_prefix("C< ") {
        client.io.write_all(&unescape(raw)).await.unwrap();
    } else if let Some(want) = step.strip_prefix("S: ") {
        let got = client.line_now().await;
        assert_eq!(got.as_deref(), Some(want), "{at}");
    } else if let Some(want) = step.strip_prefix("S~ ") {
        let got = client
            .line_now()
            .await
            .unwrap_or_else(|| panic!("{at}: no reply line"));
        assert!(got.starts_with(want), "{at}: got {got:?}");
    } else if let Some(d) = step.strip_prefix('+') {
        tokio::time::sleep(duration(d)).await;
    } else if step == "SILENT" {
        client.fill_now().await;
        assert!(
            client.buf.is_empty() && !client.eof,
            "{at}: got {:?} eof={}",
            String::from_utf8_lossy(&client.buf),
            client.eof
        );
    } else if step == "CLOSED" {
        client.fill_now().await;
        assert!(
            client.buf.is_empty(),
            "{at}: unread {:?}",
            String::from_utf8_lossy(&client.buf)
        );
        assert!(client.eof, "{at}: connection still open");
    } else if let Some(want) = step.strip_prefix("LOG~ ") {
        client.fill_now().await;
        assert!(
            log().iter().any(|l| l.contains(want)),
            "{at}: log was:\n{}",
            log().join("\n")
        );
    } else if let Some(want) = step.strip_prefix("!LOG~ ") {
        client.fill_now().await;
        assert!(
            !log().iter().any(|l| l.contains(want)),
            "{at}: log was:\n{}",
            log().join("\n")
        );
    } else if let Some(n) = step.strip_prefix("SPOOLED ") {
        let n: usize = n.trim().parse().unwrap();
        assert_eq!(shared.spool.list().unwrap().len(), n, "{at}");
    } else if step == "SIGTERM" {
        token.cancel();
    } else if step == "SHUT" {
        client.io.shutdown().await.unwrap();
    } else {
        panic!("{at}: unknown step");
    }
}

#[test]
fn transcripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "smtp"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "transcripts missing in {}",
        dir.display()
    );
    for f in files {
        run_file(&f);
    }
}
