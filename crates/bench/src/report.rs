//! The `report` scenario: how fast `portcullis report greet-pause` reads a large log.
//!
//! It writes a realistic mixed mail log (Sendmail's lines and ours, mostly `from=`/`to=`
//! traffic that the report skips, some pre-greeting, detail and `session closed:` lines)
//! of `--size-mib` into a fresh directory, and a gzip copy of it, then runs the release
//! `portcullis` binary on each `--runs` times and reports the wall time, the rate, and the
//! report process's peak RSS (VmHWM sampled every 5 ms while it runs, and the children's
//! `ru_maxrss` as a check). The report's own summary line must count exactly the lines and
//! matches written, or the run fails: a fast wrong answer is not a result.
//!
//! It must not touch a directory it did not create (the generated files are removed after
//! a clean run unless `--dir` was given), or run unbounded (sizes and runs are capped, every
//! report run is killed after `--timeout`).

use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use flate2::Compression;
use flate2::write::GzEncoder;
use nix::sys::resource::{UsageWho, getrusage};

use crate::clock;
use crate::flood::read_status_kb;

/// How often the report process's memory is read.
const POLL: Duration = Duration::from_millis(5);

/// Command-line options of `report`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ReportConfig {
    /// Size of the generated log, MiB (1..=8192)
    #[arg(long, default_value_t = 1024)]
    pub(crate) size_mib: u64,
    /// Runs per input; best and median are reported (1..=20)
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
    /// Also measure a gzip copy (level 6, as logrotate's gzip writes)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) gz: bool,
    /// The `portcullis` binary (default: the one beside this program)
    #[arg(long, value_name = "PATH")]
    pub(crate) server: Option<PathBuf>,
    /// Directory for the generated files (must not exist; kept afterwards)
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,
    /// Seed of the generator (same seed, same log)
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Seconds one report run may take before it is killed
    #[arg(long, default_value_t = 600)]
    pub(crate) timeout: u64,
}

impl ReportConfig {
    fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            (1..=8192).contains(&self.size_mib),
            "--size-mib must be 1..=8192"
        );
        ensure!((1..=20).contains(&self.runs), "--runs must be 1..=20");
        ensure!(self.timeout > 0, "--timeout must be positive");
        Ok(())
    }
}

/// What the generator wrote, to check the report's summary against.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    pub(crate) bytes: u64,
    pub(crate) lines: u64,
    /// Lines the report parses: pre-greeting (timed or not), detail and session lines.
    pub(crate) matched: u64,
    pub(crate) pregreet: u64,
}

/// splitmix64 (the same small generator as `access-load`).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Writes log lines: Sendmail's and ours, in the proportions of a busy MX.
pub(crate) struct LogGen {
    rng: Rng,
    /// Microseconds since 2026-11-21T00:00:00.
    micros: u64,
    seq: u64,
    line: String,
    pub(crate) written: Written,
}

impl LogGen {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            rng: Rng(seed),
            micros: 0,
            seq: 0,
            line: String::with_capacity(512),
            written: Written::default(),
        }
    }

    /// Writes one connection's lines to `out`.
    pub(crate) fn connection(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        self.seq += 1;
        self.micros += 1 + self.rng.below(20_000);
        let ours = self.rng.below(2) == 0;
        let ip = format!(
            "{}.{}.{}.{}",
            [192, 198, 203][self.rng.below(3) as usize],
            self.rng.below(256),
            self.rng.below(256),
            1 + self.rng.below(254)
        );
        let qid = if ours {
            format!("6AL{:05}{:08}", self.seq % 100_000, self.seq % 100_000_000)
        } else {
            format!("6AL{:03}{:08}", self.seq % 1000, self.seq % 100_000_000)
        };
        self.line.clear();
        match self.rng.below(1000) {
            0..=699 => self.message(ours, &qid, &ip),
            700..=849 => self.no_mail(ours, &qid, &ip),
            850..=899 => self.refused(ours, &qid, &ip),
            900..=929 => self.early_talker(ours, &qid, &ip),
            _ => self.other(ours, &qid, &ip),
        }
        self.written.bytes += self.line.len() as u64;
        out.write_all(self.line.as_bytes())
    }

    /// Appends one line with the syslog prefix.
    fn push(&mut self, ours: bool, text: &str) {
        let s = self.micros / 1_000_000;
        let (h, m, sec) = (s / 3600 % 24, s / 60 % 60, s % 60);
        let (tag, pid) = if ours {
            ("portcullis", 4242)
        } else {
            ("sendmail", 20_000 + self.seq % 10_000)
        };
        let _ = writeln!(
            self.line,
            "2026-11-21T{h:02}:{m:02}:{sec:02}.{:06}+00:00 mx {tag}[{pid}]: {text}",
            self.micros % 1_000_000
        );
        self.written.lines += 1;
    }

    /// Our end-of-session line (a match).
    fn session(&mut self, qid: &str, ip: &str, pause: u64, first: Option<u64>, messages: u64) {
        let first_text = first.map_or_else(|| "none".to_owned(), |f| format!("{f}ms"));
        let duration = first.unwrap_or(pause) + 200 + self.rng.below(5000);
        let text = format!(
            "{qid}: session closed: relay=client.example [{ip}], pause={pause}ms, first_input={first_text}, duration={duration}ms, messages={messages}"
        );
        self.push(true, &text);
        self.written.matched += 1;
    }

    /// A behaved client's pause and first byte: a pass-cache hit (not paused) or a wait.
    fn behaved(&mut self) -> (u64, Option<u64>) {
        if self.rng.below(10) < 4 {
            (0, Some(1 + self.rng.below(20)))
        } else {
            (5000, Some(5001 + self.rng.below(40)))
        }
    }

    fn message(&mut self, ours: bool, qid: &str, ip: &str) {
        if self.rng.below(10) < 3 {
            self.push(ours, &format!("STARTTLS=server, relay=mail.example.com [{ip}], version=TLSv1.3, verify=NO, cipher=TLS_AES_256_GCM_SHA384, bits=256/256"));
        }
        let rcpts = 1 + self.rng.below(3);
        let n = self.seq;
        let size = 2000 + self.rng.below(60_000);
        self.push(ours, &format!("{qid}: from=<newsletter{n}@lists.example.org>, size={size}, class=0, nrcpts={rcpts}, msgid=<{n}.{qid}@lists.example.org>, proto=ESMTP, daemon=MTA, relay=mail.example.com [{ip}]"));
        for r in 0..rcpts {
            let (delay, pri) = (self.rng.below(10), 30_000 + self.rng.below(90_000));
            self.push(ours, &format!("{qid}: to=<user{r}@example.net>, delay=00:00:0{delay}, xdelay=00:00:00, mailer=local, pri={pri}, dsn=2.0.0, stat=Sent"));
        }
        if ours {
            let (pause, first) = self.behaved();
            self.session(qid, ip, pause, first, 1);
        }
    }

    fn no_mail(&mut self, ours: bool, qid: &str, ip: &str) {
        self.push(
            ours,
            &format!("[{ip}] did not issue MAIL/EXPN/VRFY/ETRN during connection to MTA"),
        );
        if ours {
            // Some said nothing at all (scanners, clients that gave up).
            let (pause, first) = self.behaved();
            let first = if self.rng.below(3) == 0 { None } else { first };
            self.session(qid, ip, pause, first, 0);
        }
    }

    fn refused(&mut self, ours: bool, qid: &str, ip: &str) {
        let text = format!("{qid}: <nobody{}@example.net>... User unknown", self.seq);
        self.push(ours, &text);
        self.push(ours, &format!("{qid}: ruleset=check_rcpt, arg1=<x@elsewhere.example>, relay=[{ip}], reject=550 5.7.1 <x@elsewhere.example>... Relaying denied"));
        if ours {
            let (pause, first) = self.behaved();
            self.session(qid, ip, pause, first, 0);
        }
    }

    fn early_talker(&mut self, ours: bool, qid: &str, ip: &str) {
        // Most slam at once; some wait a fixed few seconds.
        let ms = if self.rng.below(2) == 0 {
            self.rng.below(300)
        } else {
            self.rng.below(5000)
        };
        let secs = (ms + 500) / 1000;
        self.written.pregreet += 1;
        self.written.matched += 1;
        if !ours && self.rng.below(20) == 0 {
            // Sendmail 8.13: no delay.
            self.push(
                false,
                &format!("{qid}: rejecting commands from [{ip}] due to pre-greeting traffic"),
            );
            return;
        }
        self.push(ours, &format!("{qid}: rejecting commands from [{ip}] due to pre-greeting traffic after {secs} seconds"));
        if ours {
            self.push(true, &format!("{qid}: greet_pause_pregreet detail: class=\"smtp\", sample=\"EHLO x\\x0d\\x0a\", waited_ms=\"{ms}\", action=\"enforce\", pause_entry=\"greet_pause.default\""));
            self.written.matched += 1;
            self.session(qid, ip, 5000, Some(ms), 0);
        }
    }

    fn other(&mut self, ours: bool, qid: &str, ip: &str) {
        let text = match self.rng.below(3) {
            0 => format!("timeout waiting for input from [{ip}] during server cmd read"),
            1 => format!("{qid}: lost input channel from [{ip}] to MTA after rcpt"),
            _ => format!("{qid}: Milter: data, reject=554 5.7.1 Spam score too high"),
        };
        self.push(ours, &text);
        if ours {
            let (pause, first) = self.behaved();
            self.session(qid, ip, pause, first, 0);
        }
    }
}

/// Writes the log (and its gzip copy) into `dir`; returns what was written.
fn generate(cfg: &ReportConfig, dir: &Path) -> anyhow::Result<(PathBuf, Option<PathBuf>, Written)> {
    let plain_path = dir.join("mail.log");
    let gz_path = dir.join("mail.log.gz");
    let file = std::fs::File::create(&plain_path).context("creating mail.log")?;
    let mut plain = BufWriter::with_capacity(1 << 20, file);
    let mut gz = if cfg.gz {
        let f = std::fs::File::create(&gz_path).context("creating mail.log.gz")?;
        Some(GzEncoder::new(
            BufWriter::with_capacity(1 << 20, f),
            Compression::new(6),
        ))
    } else {
        None
    };
    let target = cfg.size_mib * 1024 * 1024;
    let mut logs = LogGen::new(cfg.seed);
    let mut block = Vec::with_capacity(1 << 20);
    while logs.written.bytes < target {
        logs.connection(&mut block).context("generating")?;
        if block.len() >= 1 << 20 {
            write_block(&mut plain, gz.as_mut(), &mut block)?;
        }
    }
    write_block(&mut plain, gz.as_mut(), &mut block)?;
    plain.flush().context("writing mail.log")?;
    if let Some(gz) = gz {
        gz.finish()
            .and_then(|mut w| w.flush())
            .context("writing mail.log.gz")?;
    }
    Ok((plain_path, cfg.gz.then_some(gz_path), logs.written))
}

fn write_block(
    plain: &mut impl Write,
    gz: Option<&mut GzEncoder<BufWriter<std::fs::File>>>,
    block: &mut Vec<u8>,
) -> anyhow::Result<()> {
    plain.write_all(block).context("writing mail.log")?;
    if let Some(gz) = gz {
        gz.write_all(block).context("writing mail.log.gz")?;
    }
    block.clear();
    Ok(())
}

/// One report run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    pub(crate) wall: Duration,
    pub(crate) peak_rss_kb: u64,
}

/// Runs `bin report greet-pause file` once; checks its summary against `want`.
async fn run_once(bin: &Path, file: &Path, want: &Written, limit: Duration) -> anyhow::Result<Run> {
    let start = clock::now();
    let mut child = Command::new(bin)
        .args(["report", "greet-pause"])
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id();
    // The report's output is a few kB: the pipes cannot fill while it runs.
    let mut peak = 0;
    let deadline = start + limit;
    let status = loop {
        if let Ok(kb) = read_status_kb(pid, "VmHWM:") {
            peak = peak.max(kb);
        }
        if let Some(status) = child.try_wait().context("waiting for the report")? {
            break status;
        }
        if clock::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the report took over {} s", limit.as_secs());
        }
        tokio::time::sleep(POLL).await;
    };
    let wall = clock::now() - start;
    let out = child.wait_with_output().context("reading the report")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        status.success(),
        "the report failed ({status}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = format!(
        "lines read: {}, matched: {}, bad lines skipped: 0, files: 1",
        want.lines, want.matched
    );
    ensure!(
        stdout.lines().any(|l| l == summary),
        "the report's summary is not {summary:?}:\n{stdout}"
    );
    Ok(Run {
        wall,
        peak_rss_kb: peak,
    })
}

/// All runs of one input.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    pub(crate) file_bytes: u64,
    /// Sorted by wall time.
    pub(crate) runs: Vec<Run>,
}

impl Series {
    fn best(&self) -> Duration {
        self.runs.first().map_or(Duration::ZERO, |r| r.wall)
    }
    fn median(&self) -> Duration {
        self.runs
            .get(self.runs.len() / 2)
            .map_or(Duration::ZERO, |r| r.wall)
    }
    fn peak_rss_kb(&self) -> u64 {
        self.runs.iter().map(|r| r.peak_rss_kb).max().unwrap_or(0)
    }
}

/// What the scenario measured.
#[derive(Debug)]
pub(crate) struct ReportResult {
    pub(crate) written: Written,
    pub(crate) plain: Series,
    pub(crate) gz: Option<Series>,
    /// `ru_maxrss` of the largest report process, kB.
    pub(crate) children_max_rss_kb: i64,
    pub(crate) dir: PathBuf,
    pub(crate) kept: bool,
}

pub(crate) async fn run_report(cfg: ReportConfig) -> anyhow::Result<ReportResult> {
    cfg.validate()?;
    let bin = match &cfg.server {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("locating this program")?
            .with_file_name("portcullis"),
    };
    ensure!(
        bin.is_file(),
        "no portcullis binary at {} (build it: cargo build --release -p portcullis -p \
         portcullis-bench, or pass --server)",
        bin.display()
    );
    let (dir, ours) = match &cfg.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!(
                "portcullis-bench-report.{}.{}",
                std::process::id(),
                clock::unix_now().as_nanos()
            )),
            true,
        ),
    };
    std::fs::create_dir(&dir)
        .with_context(|| format!("creating {} (it must not exist)", dir.display()))?;
    let result = measure(&cfg, &bin, &dir).await;
    let kept = !(ours && result.is_ok() && std::fs::remove_dir_all(&dir).is_ok());
    let (written, plain, gz) =
        result.with_context(|| format!("files kept in {}", dir.display()))?;
    let children_max_rss_kb = getrusage(UsageWho::RUSAGE_CHILDREN).map_or(0, |u| u.max_rss());
    Ok(ReportResult {
        written,
        plain,
        gz,
        children_max_rss_kb,
        dir,
        kept,
    })
}

async fn measure(
    cfg: &ReportConfig,
    bin: &Path,
    dir: &Path,
) -> anyhow::Result<(Written, Series, Option<Series>)> {
    println!("generating {} MiB in {} ...", cfg.size_mib, dir.display());
    let (plain, gz, written) = generate(cfg, dir)?;
    let limit = Duration::from_secs(cfg.timeout);
    let series = |path: PathBuf| async move {
        let file_bytes = std::fs::metadata(&path).map_or(0, |m| m.len());
        let mut runs = Vec::with_capacity(cfg.runs);
        for _ in 0..cfg.runs {
            runs.push(run_once(bin, &path, &written, limit).await?);
        }
        runs.sort_by_key(|r| r.wall);
        anyhow::Ok(Series { file_bytes, runs })
    };
    let plain = series(plain).await?;
    let gz = match gz {
        Some(path) => Some(series(path).await?),
        None => None,
    };
    Ok((written, plain, gz))
}

impl ReportResult {
    /// Human report followed by the one `RESULT` line.
    pub(crate) fn report(&self, cfg: &ReportConfig) -> String {
        let w = &self.written;
        let mb = |bytes: u64, d: Duration| bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9);
        let mut out = format!(
            "portcullis-bench report (portcullis report greet-pause)\n\
             \x20 machine: {} cores; the report reads on one thread and scans on another\n\
             \x20 log:     {:.1} MiB, {} lines, {} matched by the report ({} pre-greeting), seed {}\n",
            crate::cores(),
            w.bytes as f64 / (1024.0 * 1024.0),
            w.lines,
            w.matched,
            w.pregreet,
            cfg.seed
        );
        let line = |name: &str, s: &Series, rate_of: u64| {
            format!(
                "  {name:<6} {:.1} MiB: best {:.2} s, median {:.2} s of {} runs; {:.0} MB/s of log; peak RSS {} kB\n",
                s.file_bytes as f64 / (1024.0 * 1024.0),
                s.best().as_secs_f64(),
                s.median().as_secs_f64(),
                s.runs.len(),
                mb(rate_of, s.median()),
                s.peak_rss_kb()
            )
        };
        out.push_str(&line("plain:", &self.plain, w.bytes));
        if let Some(gz) = &self.gz {
            out.push_str(&line("gz:", gz, w.bytes));
        }
        let _ = writeln!(
            out,
            "  ru_maxrss of the largest report process: {} kB; files {}",
            self.children_max_rss_kb,
            if self.kept {
                format!("kept in {}", self.dir.display())
            } else {
                "removed".to_owned()
            }
        );
        let gz = self.gz.as_ref();
        let _ = write!(
            out,
            "RESULT report size_mib={} lines={} plain_median_s={:.3} plain_mb_s={:.0} plain_rss_kb={} gz_mib={:.1} gz_median_s={:.3} gz_mb_s={:.0} gz_rss_kb={}",
            cfg.size_mib,
            w.lines,
            self.plain.median().as_secs_f64(),
            mb(w.bytes, self.plain.median()),
            self.plain.peak_rss_kb(),
            gz.map_or(0.0, |s| s.file_bytes as f64 / (1024.0 * 1024.0)),
            gz.map_or(0.0, |s| s.median().as_secs_f64()),
            gz.map_or(0.0, |s| mb(w.bytes, s.median())),
            gz.map_or(0, Series::peak_rss_kb),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_counts_what_it_writes() {
        let mut g = LogGen::new(7);
        let mut out = Vec::new();
        for _ in 0..5000 {
            g.connection(&mut out).unwrap();
        }
        let text = String::from_utf8(out).unwrap();
        let w = g.written;
        assert_eq!(w.bytes, text.len() as u64);
        assert_eq!(w.lines, text.lines().count() as u64);
        let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count() as u64;
        let matched = count("pre-greeting traffic")
            + count("greet_pause_pregreet detail: ")
            + count("session closed: relay=");
        assert_eq!(w.matched, matched);
        assert_eq!(w.pregreet, count("pre-greeting traffic"));
        // Mostly traffic the report skips, some of each kind it reads.
        assert!(w.pregreet > 50 && w.matched * 3 < w.lines, "{w:?}");
        assert!(count("from=<") > 1000);
        // Sendmail 8.13's lines without a delay are among them.
        assert!(
            text.lines()
                .any(|l| l.ends_with("due to pre-greeting traffic"))
        );
    }

    #[test]
    fn validates_options() {
        let cfg = ReportConfig {
            size_mib: 1,
            runs: 1,
            gz: false,
            server: None,
            dir: None,
            seed: 1,
            timeout: 1,
        };
        assert!(cfg.validate().is_ok());
        assert!(
            ReportConfig {
                size_mib: 0,
                ..cfg.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            ReportConfig {
                runs: 21,
                ..cfg.clone()
            }
            .validate()
            .is_err()
        );
        assert!(ReportConfig { timeout: 0, ..cfg }.validate().is_err());
    }
}
