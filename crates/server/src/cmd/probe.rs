//! `portcullis probe HOST:PORT [--bind ADDR] [--mode polite|slam|early=SECS] [--timeout DUR]`:
//! the seeds' netcat test of a greeting pause, done right.
//!
//! Role: open one SMTP connection (from `--bind` if given, so an admin can test as a given
//! client), measure the time from the connection to the first byte of the greeting, talk
//! in the chosen way (`polite` waits for the greeting; `slam` sends EHLO at once; `early`
//! sends it after SECS unless the greeting came first), print the transcript (`<- ` what
//! the server said, `-> ` what we sent, each with its time offset) and a one-line verdict
//! ([`verdict`], sans-IO, from the transcript alone).
//! Must not: connect anywhere but where it is told (HOST is an IP literal, or a name
//! resolved once through the system resolver: no MX lookup, no scan, one connection); wait
//! without a bound (connecting and each whole reply are bounded by `--timeout`, default
//! 330 s: Sendmail clamps a greeting pause at 300 s; `--timeout` and `early=SECS` are at most
//! [`MAX_WAIT`]); hold more than [`MAX_LINE`] bytes of a line or [`MAX_LINES`]
//! lines.
//! Exit status: 0 the probe ran (whatever the verdict), 1 it could not connect or a wait
//! timed out, 64 usage.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::clock;

/// Longest reply line kept (RFC 5321 §4.5.3.1.5 says 512 octets; a few servers exceed it).
pub const MAX_LINE: usize = 2048;
/// Most reply lines read in one probe; a server that says more is cut off.
pub const MAX_LINES: usize = 200;
/// A greeting later than this counts as a pause in the verdict. Sendmail's and our pauses
/// are 700 ms and more in practice; a server that resolves the client's name first can be
/// as slow without pausing (slam mode tells the two apart).
pub const PAUSE_THRESHOLD: Duration = Duration::from_millis(500);

/// Exit status for a usage error (sysexits EX_USAGE).
const EX_USAGE: i32 = 64;

/// Longest `--timeout` and `early=SECS`: far past Sendmail's 300 s clamp, and small enough
/// that no deadline computed from them can overflow an `Instant` (which panics).
pub const MAX_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

/// Arguments of `portcullis probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Where to connect: IP:PORT, [IPv6]:PORT or NAME:PORT (the name is resolved once).
    #[arg(value_name = "HOST:PORT")]
    target: String,
    /// Local address to connect from (e.g. 127.0.0.2), to be seen as that client.
    #[arg(long, value_name = "ADDR")]
    bind: Option<IpAddr>,
    /// polite (wait for the greeting), slam (EHLO at once) or early=SECS (EHLO after SECS
    /// seconds unless the greeting comes first).
    #[arg(long, default_value = "polite", value_name = "MODE")]
    mode: String,
    /// Bound on every wait: connecting, and each reply.
    #[arg(long, default_value = "330s", value_parser = humantime::parse_duration, value_name = "DUR")]
    timeout: Duration,
    /// The name given in EHLO.
    #[arg(long, default_value = "probe.invalid", value_name = "NAME")]
    ehlo: String,
}

/// How the probe talks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Polite,
    Slam,
    Early(Duration),
}

impl Mode {
    /// `polite`, `slam` or `early=SECS` (seconds, fractions allowed).
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "polite" => Ok(Self::Polite),
            "slam" => Ok(Self::Slam),
            other => {
                let secs = other
                    .strip_prefix("early=")
                    .ok_or_else(|| format!("--mode {other:?}: use polite, slam or early=SECS"))?;
                let wait = secs
                    .parse::<f64>()
                    .ok()
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .ok_or_else(|| format!("--mode {other:?}: SECS must be a number of seconds"))?;
                if wait > MAX_WAIT {
                    return Err(format!(
                        "--mode {other:?}: SECS must be at most {} (a day)",
                        MAX_WAIT.as_secs()
                    ));
                }
                Ok(Self::Early(wait))
            }
        }
    }
}

/// One step of the transcript.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A line we sent (without CRLF).
    Sent(String),
    /// A line the server sent (without CRLF), timed at its first byte.
    Received(String),
    /// The server closed the connection.
    Closed,
}

/// What happened, with offsets from the moment the connection was established.
#[derive(Clone, Debug, Default)]
pub struct Transcript {
    pub steps: Vec<(Duration, Step)>,
}

impl Transcript {
    fn push(&mut self, at: Duration, step: Step) {
        self.steps.push((at, step));
    }

    /// The transcript as printed: `+S.mmm <- line` / `+S.mmm -> line`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (at, step) in &self.steps {
            let line = match step {
                Step::Sent(l) => format!("-> {l}"),
                Step::Received(l) => format!("<- {l}"),
                Step::Closed => "<- (connection closed)".to_owned(),
            };
            out.push_str(&format!("+{} {line}\n", secs(*at)));
        }
        out
    }
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

fn secs2(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

/// The verdict on a transcript: was there a pause, and was a client that talked first
/// rejected? Decided from the facts only (what came when), so it holds whatever the mode.
pub fn verdict(transcript: &Transcript, mode: Mode) -> String {
    let greeting = transcript.steps.iter().find_map(|(at, s)| match s {
        Step::Received(line) => Some((*at, line.as_str())),
        _ => None,
    });
    let Some((at, line)) = greeting else {
        return "no reply: the server closed the connection without a greeting".to_owned();
    };
    let code = line.get(..3).unwrap_or(line);
    let talked_first = transcript
        .steps
        .iter()
        .any(|(t, s)| matches!(s, Step::Sent(_)) && *t <= at);
    let pause = if at >= PAUSE_THRESHOLD {
        format!("greet pause active (greeting after {} s)", secs2(at))
    } else {
        format!("no greet pause (greeting after {} s)", secs2(at))
    };
    let early = match mode {
        Mode::Early(wait) => Some(secs2(wait)),
        _ => None,
    };
    match (talked_first, code) {
        (false, "220") => match early {
            Some(wait) => format!(
                "{pause}; a client that waits {wait} s is not caught (the greeting came first)"
            ),
            None => pause,
        },
        (false, _) => format!(
            "refused before any command ({code} after {} s): {line}",
            secs2(at)
        ),
        (true, "554") => match early {
            Some(wait) => format!(
                "greet pause active; a client that waits {wait} s is caught (554 after {} s)",
                secs2(at)
            ),
            None => format!(
                "greet pause active; slamming rejected (554 after {} s)",
                secs2(at)
            ),
        },
        (true, "220") => match early {
            Some(wait) => format!("{pause}; a client that waits {wait} s is NOT caught (220)"),
            None => format!("{pause}; slamming NOT rejected (220)"),
        },
        (true, _) => format!(
            "we talked first; the server answered {code} after {} s: {line}",
            secs2(at)
        ),
    }
}

/// Runs the probe; returns the exit code.
pub fn run(args: &ProbeArgs) -> i32 {
    let mode = match Mode::parse(&args.mode) {
        Ok(mode) => mode,
        Err(why) => {
            eprintln!("portcullis probe: {why}");
            return EX_USAGE;
        }
    };
    if args.timeout > MAX_WAIT {
        eprintln!(
            "portcullis probe: --timeout {} is too long: at most {}",
            humantime::format_duration(args.timeout),
            humantime::format_duration(MAX_WAIT)
        );
        return EX_USAGE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis probe: cannot start: {e}");
            return 1;
        }
    };
    match runtime.block_on(probe(args, mode)) {
        Ok(transcript) => {
            print!("{}", transcript.render());
            println!("verdict: {}", verdict(&transcript, mode));
            0
        }
        Err(Failure::Usage(why)) => {
            eprintln!("portcullis probe: {why}");
            EX_USAGE
        }
        Err(Failure::Failed(why, transcript)) => {
            print!("{}", transcript.render());
            eprintln!("portcullis probe: {why}");
            1
        }
    }
}

/// Why the probe did not run to its end.
enum Failure {
    Usage(String),
    /// Could not connect, or a wait timed out; what happened until then.
    Failed(String, Transcript),
}

async fn probe(args: &ProbeArgs, mode: Mode) -> Result<Transcript, Failure> {
    let target = resolve(&args.target, args.bind, args.timeout).await?;
    let stream = connect(target, args.bind, args.timeout).await?;
    let local = stream
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    println!(
        "probe: connected to {target} from {local}, mode {}",
        args.mode
    );
    let mut session = Session {
        stream,
        started: clock::now(),
        buf: Vec::new(),
        transcript: Transcript::default(),
        timeout: args.timeout,
        lines: 0,
    };
    let ehlo = format!("EHLO {}", args.ehlo);
    let result = session.talk(mode, &ehlo).await;
    match result {
        Ok(()) => Ok(session.transcript),
        Err(why) => Err(Failure::Failed(why, session.transcript)),
    }
}

/// HOST:PORT → one address: an IP literal as is, a name through the system resolver, once
/// (the first address of `--bind`'s family).
async fn resolve(
    target: &str,
    bind: Option<IpAddr>,
    timeout: Duration,
) -> Result<SocketAddr, Failure> {
    if let Ok(addr) = target.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let usage = || {
        Failure::Usage(format!(
            "{target:?} is not HOST:PORT (e.g. 192.0.2.25:25, [2001:db8::25]:25, mx.example.net:25)"
        ))
    };
    let (host, port) = target.rsplit_once(':').ok_or_else(usage)?;
    let port: u16 = port.parse().map_err(|_| usage())?;
    if host.is_empty() || host.contains(':') {
        return Err(usage());
    }
    let failed = |why: String| Failure::Failed(why, Transcript::default());
    let found = tokio::time::timeout(timeout, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| {
            failed(format!(
                "resolving {host}: timed out after {}",
                humantime::format_duration(timeout)
            ))
        })?
        .map_err(|e| failed(format!("resolving {host}: {e}")))?;
    let mut found = found;
    found
        .find(|a| bind.is_none_or(|b| b.is_ipv4() == a.is_ipv4()))
        .ok_or_else(|| {
            failed(format!(
                "{host} has no address of the --bind address's family"
            ))
        })
}

async fn connect(
    target: SocketAddr,
    bind: Option<IpAddr>,
    timeout: Duration,
) -> Result<TcpStream, Failure> {
    let failed = |why: String| Failure::Failed(why, Transcript::default());
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| failed(format!("cannot create a socket: {e}")))?;
    if let Some(addr) = bind {
        socket
            .bind(SocketAddr::new(addr, 0))
            .map_err(|e| failed(format!("cannot bind to {addr}: {e}")))?;
    }
    let stream = tokio::time::timeout(timeout, socket.connect(target))
        .await
        .map_err(|_| {
            failed(format!(
                "cannot connect to {target}: timed out after {}",
                humantime::format_duration(timeout)
            ))
        })?
        .map_err(|e| failed(format!("cannot connect to {target}: {e}")))?;
    // Each command goes out at once, as the mode says, not when Nagle allows.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// One connection being probed.
struct Session {
    stream: TcpStream,
    started: Instant,
    /// Bytes read and not yet cut into lines (bounded: see `read_line`).
    buf: Vec<u8>,
    transcript: Transcript,
    timeout: Duration,
    lines: usize,
}

/// What reading a reply found.
enum Read {
    /// A whole reply; its lines are in the transcript.
    Reply,
    /// The server closed the connection.
    Closed,
    /// `Early` mode's wait ended before anything arrived.
    Waited,
}

impl Session {
    fn elapsed(&self) -> Duration {
        clock::now().saturating_duration_since(self.started)
    }

    async fn talk(&mut self, mode: Mode, ehlo: &str) -> Result<(), String> {
        let first = match mode {
            Mode::Polite => self.reply(None).await?,
            Mode::Slam => {
                self.send(ehlo).await?;
                return self.after_early_ehlo().await;
            }
            Mode::Early(wait) => {
                let deadline = self.started + wait;
                self.reply(Some(deadline)).await?
            }
        };
        match first {
            Read::Closed => Ok(()),
            Read::Waited => {
                self.send(ehlo).await?;
                self.after_early_ehlo().await
            }
            Read::Reply => {
                self.send(ehlo).await?;
                if let Read::Closed = self.reply(None).await? {
                    return Ok(());
                }
                self.quit().await
            }
        }
    }

    /// EHLO went out before the greeting: read the greeting and the EHLO's reply, then QUIT.
    async fn after_early_ehlo(&mut self) -> Result<(), String> {
        for _ in 0..2 {
            if let Read::Closed = self.reply(None).await? {
                return Ok(());
            }
        }
        self.quit().await
    }

    async fn quit(&mut self) -> Result<(), String> {
        self.send("QUIT").await?;
        self.reply(None).await?;
        Ok(())
    }

    async fn send(&mut self, line: &str) -> Result<(), String> {
        let at = self.elapsed();
        self.transcript.push(at, Step::Sent(line.to_owned()));
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .map_err(|e| format!("sending {line:?}: {e}"))
    }

    /// Reads one reply (lines up to one whose code is followed by a space), all of it within
    /// `--timeout` (a server that dribbles its reply a byte at a time is cut off too). With
    /// `until`, gives up quietly at that instant if nothing at all has arrived (early mode).
    async fn reply(&mut self, until: Option<Instant>) -> Result<Read, String> {
        let mut first = true;
        // Early mode's wait comes first; the reply's own bound starts when it is over.
        let now = clock::now();
        let deadline = until.map_or(now, |t| t.max(now)) + self.timeout;
        loop {
            let line = match self
                .read_line(if first { until } else { None }, deadline)
                .await?
            {
                Some(Some(line)) => line,
                Some(None) => return Ok(Read::Closed),
                None => return Ok(Read::Waited),
            };
            first = false;
            let last = line.as_bytes().get(3) != Some(&b'-');
            if last {
                return Ok(Read::Reply);
            }
        }
    }

    /// One line into the transcript, timed at its first byte, by `deadline` (the reply's).
    /// `Some(None)`: closed; `None`: `until` passed first with nothing read.
    async fn read_line(
        &mut self,
        until: Option<Instant>,
        deadline: Instant,
    ) -> Result<Option<Option<String>>, String> {
        if self.lines >= MAX_LINES {
            return Err(format!(
                "the server sent more than {MAX_LINES} lines; stopped"
            ));
        }
        let mut first_byte = (!self.buf.is_empty()).then(|| self.elapsed());
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let raw: Vec<u8> = self.buf.drain(..=end).collect();
                let text = String::from_utf8_lossy(&raw);
                let text = text.trim_end_matches(['\r', '\n']).to_owned();
                let at = first_byte.unwrap_or_else(|| self.elapsed());
                self.transcript.push(at, Step::Received(text.clone()));
                self.lines += 1;
                return Ok(Some(Some(text)));
            }
            if self.buf.len() > MAX_LINE {
                return Err(format!(
                    "a reply line longer than {MAX_LINE} bytes; stopped"
                ));
            }
            let deadline = match until {
                Some(t) if first_byte.is_none() => tokio::time::Instant::from_std(t),
                _ => tokio::time::Instant::from_std(deadline),
            };
            let mut chunk = [0u8; 512];
            let read = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await;
            let n = match read {
                Err(_) if until.is_some() && first_byte.is_none() => return Ok(None),
                Err(_) => {
                    return Err(format!(
                        "no reply within {} (--timeout)",
                        humantime::format_duration(self.timeout)
                    ));
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
                Ok(Err(e)) => return Err(format!("reading: {e}")),
                Ok(Ok(n)) => n,
            };
            if n == 0 {
                let at = self.elapsed();
                self.transcript.push(at, Step::Closed);
                return Ok(Some(None));
            }
            first_byte.get_or_insert_with(|| self.elapsed());
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn t(steps: &[(u64, Step)]) -> Transcript {
        Transcript {
            steps: steps.iter().map(|(at, s)| (ms(*at), s.clone())).collect(),
        }
    }

    fn sent(s: &str) -> Step {
        Step::Sent(s.to_owned())
    }

    fn got(s: &str) -> Step {
        Step::Received(s.to_owned())
    }

    #[test]
    fn verdicts() {
        let table: &[(Transcript, Mode, &str)] = &[
            (
                t(&[
                    (1003, got("220 mx ESMTP")),
                    (1004, sent("EHLO p")),
                    (1005, got("250 mx")),
                ]),
                Mode::Polite,
                "greet pause active (greeting after 1.00 s)",
            ),
            (
                t(&[(2, got("220 mx ESMTP")), (3, sent("EHLO p"))]),
                Mode::Polite,
                "no greet pause (greeting after 0.00 s)",
            ),
            (
                t(&[
                    (0, sent("EHLO p")),
                    (1, got("554 mx ESMTP not accepting messages")),
                ]),
                Mode::Slam,
                "greet pause active; slamming rejected (554 after 0.00 s)",
            ),
            (
                t(&[(0, sent("EHLO p")), (2, got("220 mx ESMTP"))]),
                Mode::Slam,
                "no greet pause (greeting after 0.00 s); slamming NOT rejected (220)",
            ),
            (
                t(&[(0, sent("EHLO p")), (1001, got("220 mx ESMTP"))]),
                Mode::Slam,
                "greet pause active (greeting after 1.00 s); slamming NOT rejected (220)",
            ),
            (
                t(&[(500, sent("EHLO p")), (501, got("554 mx"))]),
                Mode::Early(ms(500)),
                "greet pause active; a client that waits 0.50 s is caught (554 after 0.50 s)",
            ),
            (
                t(&[(1000, got("220 mx")), (1001, sent("EHLO p"))]),
                Mode::Early(ms(3000)),
                "greet pause active (greeting after 1.00 s); a client that waits 3.00 s is not \
                 caught (the greeting came first)",
            ),
            (
                t(&[
                    (3, got("421 4.3.2 Connection rate limit exceeded.")),
                    (4, Step::Closed),
                ]),
                Mode::Polite,
                "refused before any command (421 after 0.00 s): 421 4.3.2 Connection rate limit exceeded.",
            ),
            (
                t(&[(3, Step::Closed)]),
                Mode::Slam,
                "no reply: the server closed the connection without a greeting",
            ),
        ];
        for (transcript, mode, want) in table {
            assert_eq!(verdict(transcript, *mode), *want, "{transcript:?}");
        }
    }

    #[test]
    fn modes_and_rendering() {
        assert_eq!(Mode::parse("polite"), Ok(Mode::Polite));
        assert_eq!(Mode::parse("slam"), Ok(Mode::Slam));
        assert_eq!(Mode::parse("early=2.5"), Ok(Mode::Early(ms(2500))));
        assert_eq!(Mode::parse("early=86400"), Ok(Mode::Early(MAX_WAIT)));
        for bad in [
            "early=",
            "early=-1",
            "early=x",
            "loud",
            "early=1e400",
            "early=86400.5",
            "early=1e19",
        ] {
            assert!(Mode::parse(bad).is_err(), "{bad}");
        }
        let text = t(&[(0, sent("EHLO p")), (1, got("554 x")), (2, Step::Closed)]).render();
        assert_eq!(
            text,
            "+0.000 -> EHLO p\n+0.001 <- 554 x\n+0.002 <- (connection closed)\n"
        );
    }
}
