//! Shared helpers for the end-to-end tests: a real `portcullis serve` process in a temporary
//! directory ([`Server`]) and a tiny line-based SMTP client over a std socket ([`Smtp`]).
//!
//! Everything here uses real processes, real loopback sockets and real time. Every wait is
//! bounded; every spawned server is killed when its [`Server`] is dropped, even on panic.

// Each test file uses a different subset of these helpers.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

pub mod peer;

/// How long a server may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Read timeout of the SMTP client.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Poll interval of the bounded waits below.
const POLL: Duration = Duration::from_millis(20);

/// The server's name in every test configuration.
pub const HOSTNAME: &str = "mx.example.test";

/// Sleeps for `d` (tests use real time on purpose).
pub fn pause(d: Duration) {
    std::thread::sleep(d);
}

/// Polls `cond` every few milliseconds until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        pause(POLL);
    }
}

/// A free TCP port on 127.0.0.1 (bind port 0, read it, close). Another process may take it
/// before the server binds it; [`Server::start`] retries with a fresh port when that happens.
pub fn free_port_v4() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// A free TCP port on [::1], or the error if IPv6 loopback is not usable here.
pub fn free_port_v6() -> io::Result<u16> {
    let l = TcpListener::bind((Ipv6Addr::LOCALHOST, 0))?;
    Ok(l.local_addr()?.port())
}

/// Quotes a string as a TOML basic string.
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Merges `extra` into `base`, both simple TOML documents made of `[section]` headers and
/// one-line `key = value` entries: a key in `extra` replaces the same key of the same section
/// in `base`, other keys and sections are added. Arrays of tables (`[[route]]`) are not
/// merged: from the first `[[` line on, `extra` is appended as it is. (Enough for test
/// configurations; tests that need anything else write the whole file with
/// [`Server::write_config_raw`].)
pub fn merge_toml(base: &str, extra: &str) -> String {
    let (extra, tables) = match extra.find("[[") {
        Some(at) => extra.split_at(at),
        None => (extra, ""),
    };
    fn parse(doc: &str) -> Vec<(String, Vec<(String, String)>)> {
        let mut sections: Vec<(String, Vec<(String, String)>)> = Vec::new();
        let mut current = String::new();
        for line in doc.lines() {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            if t.starts_with('[') && t.ends_with(']') {
                current = t[1..t.len() - 1].trim().to_owned();
                if !sections.iter().any(|(s, _)| *s == current) {
                    sections.push((current.clone(), Vec::new()));
                }
                continue;
            }
            let key = t.split('=').next().unwrap_or("").trim().to_owned();
            if !sections.iter().any(|(s, _)| *s == current) {
                sections.push((current.clone(), Vec::new()));
            }
            let entries = &mut sections
                .iter_mut()
                .find(|(s, _)| *s == current)
                .expect("section just added")
                .1;
            match entries.iter_mut().find(|(k, _)| *k == key) {
                Some(entry) => entry.1 = t.to_owned(),
                None => entries.push((key, t.to_owned())),
            }
        }
        sections
    }
    let mut merged = parse(base);
    for (section, entries) in parse(extra) {
        match merged.iter_mut().find(|(s, _)| *s == section) {
            Some((_, have)) => {
                for (key, line) in entries {
                    match have.iter_mut().find(|(k, _)| *k == key) {
                        Some(entry) => entry.1 = line,
                        None => have.push((key, line)),
                    }
                }
            }
            None => merged.push((section, entries)),
        }
    }
    let mut out = String::new();
    for (section, entries) in merged {
        if !section.is_empty() {
            out.push_str(&format!("[{section}]\n"));
        }
        for (_, line) in entries {
            out.push_str(&line);
            out.push('\n');
        }
        out.push('\n');
    }
    out.push_str(tables);
    out
}

/// A `portcullis serve` process with its own configuration, spool and Maildir root in a
/// temporary directory. Dropping it kills the process.
pub struct Server {
    dir: TempDir,
    config_path: PathBuf,
    listen: Vec<SocketAddr>,
    extra: String,
    child: Option<Child>,
    /// One log file (stderr + stdout) per process started, in order.
    logs: Vec<PathBuf>,
}

impl Server {
    /// Starts a server listening on a free port of 127.0.0.1, with the base configuration
    /// (hostname `mx.example.test`, local domains `localhost` and `example.test`, spool and
    /// Maildir in the temporary directory, no greeting pause, no DNS) merged with `extra`
    /// (see [`merge_toml`]).
    pub fn start(extra: &str) -> Self {
        Self::start_listening(
            || vec![SocketAddr::from((Ipv4Addr::LOCALHOST, free_port_v4()))],
            extra,
        )
    }

    /// Like [`Server::start`], listening on the addresses `pick` returns (called again for
    /// each attempt when a picked port was taken meanwhile).
    pub fn start_listening(pick: impl Fn() -> Vec<SocketAddr>, extra: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-e2e-")
            .tempdir()
            .expect("create temp dir");
        let mut server = Self {
            config_path: dir.path().join("portcullis.toml"),
            dir,
            listen: Vec::new(),
            extra: extra.to_owned(),
            child: None,
            logs: Vec::new(),
        };
        server.set_loadavg("0.00");
        for attempt in 1..=5 {
            server.listen = pick();
            server.write_config(extra);
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(log) if log.contains("cannot bind") && attempt < 5 => continue,
                Err(log) => panic!("server did not start; its log:\n{log}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// The configuration file for `extra` (merged into the base).
    pub fn config_text(&self, extra: &str) -> String {
        let listen = self
            .listen
            .iter()
            .map(|a| toml_str(&a.to_string()))
            .collect::<Vec<_>>()
            .join(", ");
        let base = format!(
            "[server]\nhostname = {}\nlisten = [{listen}]\nspool_dir = {}\n\n[local]\ndomains = [\"localhost\", \"example.test\"]\nmaildir_root = {}\n\n[greet_pause]\ndefault = \"0s\"\n\n[dns]\nreverse = false\n\n[load]\nloadavg_file = {}\n",
            toml_str(HOSTNAME),
            toml_str(&self.spool_dir().display().to_string()),
            toml_str(&self.maildir_root().display().to_string()),
            toml_str(&self.loadavg_path().display().to_string()),
        );
        merge_toml(&base, extra)
    }

    /// The server's load-average file (the base configuration's `load.loadavg_file`); it
    /// reads 0.00 until [`Server::set_loadavg`] changes it, whatever the machine's load.
    pub fn loadavg_path(&self) -> PathBuf {
        self.dir.path().join("loadavg")
    }

    /// Makes the server's 1-minute load average `value` (e.g. "2.40").
    pub fn set_loadavg(&self, value: &str) {
        write_atomically(
            &self.loadavg_path(),
            &format!("{value} 0.00 0.00 1/100 1\n"),
        );
    }

    /// Rewrites the configuration file (base merged with `extra`) atomically.
    pub fn write_config(&mut self, extra: &str) {
        self.extra = extra.to_owned();
        let text = self.config_text(extra);
        self.write_config_raw(&text);
    }

    /// Replaces the configuration file with `text` atomically (write a temp file, rename).
    pub fn write_config_raw(&self, text: &str) {
        let tmp = self.dir.path().join(".portcullis.toml.tmp");
        fs::write(&tmp, text).expect("write config");
        fs::rename(&tmp, &self.config_path).expect("rename config");
    }

    /// Spawns the process and waits until every listener is up. `Err(log)` if it exits or
    /// does not listen within [`START_TIMEOUT`].
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log_path = self
            .dir
            .path()
            .join(format!("server-{}.log", self.logs.len() + 1));
        let log = File::create(&log_path).expect("create log file");
        let out = log.try_clone().expect("clone log file");
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log)
            .spawn()
            .expect("spawn portcullis");
        self.logs.push(log_path);
        self.child = Some(child);
        let wanted: Vec<String> = self
            .listen
            .iter()
            .map(|a| format!("listening on {a}"))
            .collect();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let log = self.log();
            if wanted.iter().all(|w| log.contains(w.as_str())) {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                return Err(format!("(exited: {status})\n{}", self.log()));
            }
            if Instant::now() >= deadline {
                self.kill9();
                return Err(format!(
                    "(not listening after {START_TIMEOUT:?})\n{}",
                    self.log()
                ));
            }
            pause(POLL);
        }
    }

    /// The temporary directory holding everything.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The configuration file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The spool directory of the base configuration.
    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// The Maildir root of the base configuration.
    pub fn maildir_root(&self) -> PathBuf {
        self.dir.path().join("mail")
    }

    /// The first listening address.
    pub fn addr(&self) -> SocketAddr {
        self.listen[0]
    }

    /// Every listening address.
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listen
    }

    /// The first listening port.
    pub fn port(&self) -> u16 {
        self.addr().port()
    }

    /// The process id of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The log (stderr) of the current process.
    pub fn log(&self) -> String {
        self.logs
            .last()
            .map(|p| fs::read_to_string(p).unwrap_or_default())
            .unwrap_or_default()
    }

    /// The logs of every process started so far (index 0 is the first).
    pub fn logs(&self) -> Vec<String> {
        self.logs
            .iter()
            .map(|p| fs::read_to_string(p).unwrap_or_default())
            .collect()
    }

    /// Waits until the current log contains `pattern`.
    pub fn wait_log(&self, pattern: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.log().contains(pattern))
    }

    /// Waits until `pattern` occurs at least `n` times in the current log.
    pub fn wait_log_count(&self, pattern: &str, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.log().matches(pattern).count() >= n)
    }

    /// Files in `<maildir_root>/<domain>/<user>/new/`, sorted.
    pub fn maildir_files(&self, domain: &str, user: &str) -> Vec<PathBuf> {
        list_files(&self.maildir_root().join(domain).join(user).join("new"))
    }

    /// Waits until `<domain>/<user>/new/` holds at least `n` files; returns them.
    pub fn wait_maildir(
        &self,
        domain: &str,
        user: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<PathBuf> {
        wait_until(timeout, || self.maildir_files(domain, user).len() >= n);
        self.maildir_files(domain, user)
    }

    /// Files in `<spool_dir>/queue/`.
    pub fn queue_files(&self) -> Vec<PathBuf> {
        list_files(&self.spool_dir().join("queue"))
    }

    /// Files in `<spool_dir>/quarantine/`.
    pub fn quarantine_files(&self) -> Vec<PathBuf> {
        list_files(&self.spool_dir().join("quarantine"))
    }

    /// Waits until the spool's `queue/` directory is empty.
    pub fn wait_queue_empty(&self, timeout: Duration) -> bool {
        wait_until(timeout, || self.queue_files().is_empty())
    }

    /// Sends `sig` to the server process.
    pub fn signal(&self, sig: Signal) {
        let pid = self.pid().expect("server is running");
        kill(Pid::from_raw(pid as i32), sig).expect("send signal");
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits (bounded) for the process to exit; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.child.as_mut()?.try_wait().expect("try_wait");
            if let Some(status) = status {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            pause(POLL);
        }
    }

    /// Starts a new process with the same configuration file and directories (kills the
    /// current one first if it still runs).
    pub fn restart(&mut self) {
        self.kill9();
        if let Err(log) = self.spawn_and_wait() {
            panic!("server did not restart; its log:\n{log}");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Regular files in `dir` (none if it does not exist), sorted.
pub fn list_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .map(|e| e.path())
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Reads a file as (lossy) text.
pub fn read_text(path: &Path) -> String {
    String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned()
}

/// Counts, per Message-ID header value, how many of `files` carry it.
pub fn message_ids(files: &[PathBuf]) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for f in files {
        let text = read_text(f);
        for line in text.lines() {
            if line.len() > 11 && line[..11].eq_ignore_ascii_case("message-id:") {
                *ids.entry(line[11..].trim().to_owned()).or_insert(0) += 1;
                break;
            }
        }
    }
    ids
}

/// 127.0.0.`last`: a loopback client address other than the default one.
pub fn local(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A server restarted with an access file holding `lines` and `extra` configuration.
pub fn server_with_access(lines: &str, extra: &str) -> Server {
    let mut server = Server::start("");
    let access = access_file(&server, lines);
    server.write_config(&format!("{access}{extra}"));
    server.restart();
    server
}

/// Writes `lines` as the server's access file; returns the `[access]` section naming it.
pub fn access_file(server: &Server, lines: &str) -> String {
    let path = server.dir().join("access");
    write_atomically(&path, lines);
    format!(
        "[access]\nfile = {}\n",
        toml_str(&path.display().to_string())
    )
}

/// Replaces `path` with `text` in one rename (the watcher never sees half a file).
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A line-based SMTP client over a std socket, with read and write timeouts.
pub struct Smtp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Smtp {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> Self {
        Self::try_connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    }

    /// Connects to `addr`, returning errors.
    pub fn try_connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, READ_TIMEOUT)?;
        Self::from_stream(stream)
    }

    /// Connects to `addr` from the local address `source` (e.g. 127.0.0.2).
    pub fn connect_from(addr: SocketAddr, source: IpAddr) -> Self {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .expect("socket");
        socket
            .bind(&SocketAddr::new(source, 0).into())
            .unwrap_or_else(|e| panic!("bind source address {source}: {e}"));
        socket
            .connect_timeout(&addr.into(), READ_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect {addr} from {source}: {e}"));
        Self::from_stream(socket.into()).expect("configure socket")
    }

    fn from_stream(stream: TcpStream) -> io::Result<Self> {
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_write_timeout(Some(READ_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let writer = stream.try_clone()?;
        Ok(Self {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Closes the connection with a reset (RST) rather than a FIN.
    pub fn reset(self) {
        socket2::SockRef::from(&self.writer)
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER");
    }

    /// Changes the read timeout.
    pub fn set_read_timeout(&self, t: Duration) {
        self.writer
            .set_read_timeout(Some(t))
            .expect("set_read_timeout");
    }

    /// The local address of the connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.writer.local_addr().expect("local_addr")
    }

    /// One line without its CRLF; `Ok(None)` at end of stream.
    pub fn read_line(&mut self) -> io::Result<Option<String>> {
        let mut line = Vec::new();
        let n = self.reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(None);
        }
        if !line.ends_with(b"\r\n") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "reply line not ended by CRLF: {:?}",
                    String::from_utf8_lossy(&line)
                ),
            ));
        }
        line.truncate(line.len() - 2);
        Ok(Some(String::from_utf8_lossy(&line).into_owned()))
    }

    /// One reply: `(code, text)`, the lines of a multi-line reply (`250-...`) joined with `\n`,
    /// each without its code.
    pub fn try_read_reply(&mut self) -> io::Result<(u16, String)> {
        let mut code = None;
        let mut lines = Vec::new();
        for _ in 0..100 {
            let Some(line) = self.read_line()? else {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed after reply lines {lines:?}"),
                ));
            };
            let bad = || {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad reply line {line:?}"),
                )
            };
            if line.len() < 3 || !line.is_char_boundary(3) {
                return Err(bad());
            }
            let this: u16 = line[..3].parse().map_err(|_| bad())?;
            if *code.get_or_insert(this) != this {
                return Err(bad());
            }
            let sep = line.as_bytes().get(3).copied();
            lines.push(line.get(4..).unwrap_or("").to_owned());
            match sep {
                None | Some(b' ') => return Ok((this, lines.join("\n"))),
                Some(b'-') => continue,
                Some(_) => return Err(bad()),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "reply of more than 100 lines",
        ))
    }

    /// One reply; panics (with the error) if none arrives.
    pub fn read_reply(&mut self) -> (u16, String) {
        self.try_read_reply()
            .unwrap_or_else(|e| panic!("no reply from the server: {e}"))
    }

    /// Sends `line` + CRLF and reads the reply, returning errors.
    pub fn try_cmd(&mut self, line: &str) -> io::Result<(u16, String)> {
        self.writer.write_all(format!("{line}\r\n").as_bytes())?;
        self.try_read_reply()
    }

    /// Sends `line` + CRLF and reads the reply.
    pub fn cmd(&mut self, line: &str) -> (u16, String) {
        self.try_cmd(line)
            .unwrap_or_else(|e| panic!("command {line:?}: {e}"))
    }

    /// Writes bytes as they are, in one write call.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.try_send_raw(bytes)
            .unwrap_or_else(|e| panic!("write to the server: {e}"));
    }

    /// Writes bytes as they are, returning errors.
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)?;
        self.writer.flush()
    }

    /// Reads the greeting and says EHLO; returns the EHLO reply's lines.
    pub fn greet_ehlo(&mut self, name: &str) -> Vec<String> {
        let (code, text) = self.read_reply();
        assert_eq!(code, 220, "greeting: {text}");
        let (code, text) = self.cmd(&format!("EHLO {name}"));
        assert_eq!(code, 250, "EHLO reply: {text}");
        text.lines().map(str::to_owned).collect()
    }

    /// MAIL, RCPT (each must be accepted), DATA, `data` (dot-stuffed here, CRLF line ends
    /// expected) and the final dot; returns the final reply.
    pub fn send_message(&mut self, from: &str, rcpts: &[&str], data: &str) -> (u16, String) {
        let (code, text) = self.cmd(&format!("MAIL FROM:<{from}>"));
        assert_eq!(code, 250, "MAIL reply: {text}");
        for r in rcpts {
            let (code, text) = self.cmd(&format!("RCPT TO:<{r}>"));
            assert_eq!(code, 250, "RCPT {r} reply: {text}");
        }
        let (code, text) = self.cmd("DATA");
        assert_eq!(code, 354, "DATA reply: {text}");
        self.send_raw(&dot_stuff(data));
        self.read_reply()
    }

    /// True if nothing at all arrives within `wait` (the connection stays open and silent).
    pub fn is_silent_for(&mut self, wait: Duration) -> bool {
        if !self.reader.buffer().is_empty() {
            return false;
        }
        self.set_read_timeout(wait);
        let mut byte = [0u8; 1];
        let silent = match self.reader.get_mut().peek(&mut byte) {
            Err(e) => matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            Ok(_) => false,
        };
        self.set_read_timeout(READ_TIMEOUT);
        silent
    }

    /// Waits (up to the read timeout) for the server to close: `Ok(())` at end of stream,
    /// `Err(what arrived instead)` otherwise.
    pub fn expect_eof(&mut self) -> Result<(), String> {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) if rest.is_empty() => Ok(()),
            Ok(_) => Err(format!(
                "data before EOF: {:?}",
                String::from_utf8_lossy(&rest)
            )),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset && rest.is_empty() => Ok(()),
            Err(e) => Err(format!(
                "no EOF: {e} (after {:?})",
                String::from_utf8_lossy(&rest)
            )),
        }
    }

    /// Closes the write side.
    pub fn shutdown_write(&self) {
        let _ = self.writer.shutdown(Shutdown::Write);
    }
}

/// Dot-stuffs `data` (a leading `.` on a line doubled) and appends the final `.` line.
pub fn dot_stuff(data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    for line in data.split_inclusive("\r\n") {
        if line.starts_with('.') {
            out.push(b'.');
        }
        out.extend_from_slice(line.as_bytes());
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Runs `cmd` to completion with an empty standard input (bounded by `timeout`; killed
/// and panics past it).
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> std::process::Output {
    run_with_stdin(cmd, "", timeout)
}

/// Runs `cmd` with `input` on its standard input (bounded by `timeout`).
pub fn run_with_stdin(cmd: &mut Command, input: &str, timeout: Duration) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out_pipe = child.stdout.take().expect("stdout");
    let err_pipe = child.stderr.take().expect("stderr");
    let read_all = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out_thread = read_all(Box::new(out_pipe));
    let err_thread = read_all(Box::new(err_pipe));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let status = child.wait().expect("wait");
            panic!("{cmd:?} did not finish within {timeout:?} (killed: {status})");
        }
        pause(POLL);
    };
    let _ = writer.join();
    std::process::Output {
        status,
        stdout: out_thread.join().unwrap_or_default(),
        stderr: err_thread.join().unwrap_or_default(),
    }
}
