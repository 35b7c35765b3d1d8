//! `portcullis report greet-pause [FILE...] [--svg FILE] [--png FILE] [--pauses 0.5,1,2,3,5,10]`:
//! the seed's greet-pause histogram, the early talkers' delay percentiles, a what-if table
//! of other pauses and a summary, from our logs (syslog or JSON format) and Sendmail's.
//!
//! Role: the I/O around the sans-IO [`crate::report`]: open every input first (standard
//! input when none is named or for `-`; a name ending `.gz` is decompressed), feed them in
//! large chunks to one scanner per input, print, draw. Bad lines are skipped and named on
//! stderr as `file:line` (the first few per input), never fatal.
//!
//! Exit codes: 0 report printed; 1 an input cannot be read (or a chart not written), with
//! the path; 64 usage (clap, or a bad `--pauses`).
//!
//! Must not: hold more than [`BUFFERS`] chunks ([`CHUNK`]) of an input at a time.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use clap::{Args, Subcommand};
use flate2::read::MultiGzDecoder;

use crate::report::stats::MAX_CANDIDATE_MS;
use crate::report::{Analysis, Counts, Scanner, chart, render};

/// Bytes read and scanned at a time.
pub const CHUNK: usize = 1 << 20;

/// Most candidate pauses in `--pauses`.
const MAX_CANDIDATES: usize = 20;

/// `portcullis report ...`
#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Greet-pause histogram (the Sendmail 8.14 seed's), delay percentiles and what other
    /// pauses would catch and cost; reads standard input when no FILE is given
    GreetPause(GreetPauseArgs),
}

/// Arguments of `report greet-pause`.
#[derive(Debug, Args)]
pub struct GreetPauseArgs {
    /// Log files: ours (syslog or JSON format) and Sendmail's; `.gz` is decompressed; `-` is
    /// standard input
    #[arg(value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Also draw the histogram as an SVG file
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Also draw the histogram as a PNG file
    #[arg(long, value_name = "FILE")]
    png: Option<PathBuf>,
    /// Candidate pauses for the what-if table, in seconds (up to 300, ms precision, at most
    /// 20; sorted)
    #[arg(long, value_name = "SECONDS,...", value_parser = parse_pauses, default_value = "0.5,1,2,3,5,10")]
    pauses: Pauses,
}

/// Candidate pauses, ms, ascending, distinct.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pauses(pub Vec<u64>);

/// clap parser for `--pauses`: `0.5,1,2` → [500, 1000, 2000] ms.
pub fn parse_pauses(s: &str) -> Result<Pauses, String> {
    let mut ms: Vec<u64> = s.split(',').map(pause_ms).collect::<Result<_, _>>()?;
    ms.sort_unstable();
    ms.dedup();
    if ms.len() > MAX_CANDIDATES {
        return Err(format!("at most {MAX_CANDIDATES} pauses"));
    }
    Ok(Pauses(ms))
}

/// One candidate: seconds with up to 3 decimals, above 0 and at most 300.
fn pause_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not a pause in seconds (0.001 to 300, e.g. 0.5)");
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if int.len() > 3 || frac.len() > 3 || !digits(int) || !digits(frac) || s.is_empty() {
        return Err(bad());
    }
    let int: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let frac: u64 = format!("{frac:0<3}").parse().map_err(|_| bad())?;
    let ms = int * 1000 + frac;
    if ms == 0 || ms > MAX_CANDIDATE_MS {
        return Err(bad());
    }
    Ok(ms)
}

/// Runs a `report` subcommand; returns the exit code.
pub fn run(command: ReportCommand) -> i32 {
    match command {
        ReportCommand::GreetPause(args) => greet_pause(&args),
    }
}

/// One input, opened.
struct Input {
    name: String,
    reader: Box<dyn Read + Send>,
}

fn greet_pause(args: &GreetPauseArgs) -> i32 {
    let inputs = match open_all(&args.files) {
        Ok(inputs) => inputs,
        Err(message) => {
            eprintln!("portcullis: {message}");
            return 1;
        }
    };
    let files = inputs.len();
    let mut analysis = Analysis::default();
    let mut counts = Counts::default();
    for input in inputs {
        match scan(input, &mut analysis) {
            Ok(c) => counts += c,
            Err(message) => {
                eprintln!("portcullis: {message}");
                return 1;
            }
        }
    }
    analysis.finish();
    let text = render::report(&analysis, &args.pauses.0, counts, files);
    // A reader that stopped early (`| head`) is not an error.
    if let Err(e) = io::stdout().lock().write_all(text.as_bytes())
        && e.kind() != io::ErrorKind::BrokenPipe
    {
        eprintln!("portcullis: writing the report: {e}");
        return 1;
    }
    match draw(args, &analysis) {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("portcullis: {message}");
            1
        }
    }
}

/// Opens every input before reading any, so a missing file fails before the work.
fn open_all(files: &[PathBuf]) -> Result<Vec<Input>, String> {
    if files.is_empty() {
        return Ok(vec![stdin()]);
    }
    files.iter().map(|p| open(p)).collect()
}

fn stdin() -> Input {
    Input {
        name: "<stdin>".to_owned(),
        reader: Box::new(io::stdin()),
    }
}

fn open(path: &Path) -> Result<Input, String> {
    if path == Path::new("-") {
        return Ok(stdin());
    }
    let name = path.display().to_string();
    let file = File::open(path).map_err(|e| format!("{name}: {e}"))?;
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(format!("{name}: is a directory"));
    }
    let reader: Box<dyn Read + Send> = if path.extension().is_some_and(|e| e == "gz") {
        // Several members (concatenated .gz files) are one stream, as zcat reads them.
        Box::new(MultiGzDecoder::new(io::BufReader::with_capacity(
            CHUNK, file,
        )))
    } else {
        Box::new(file)
    };
    Ok(Input { name, reader })
}

/// Scans one input to its end; names its first bad lines on stderr.
fn scan(input: Input, analysis: &mut Analysis) -> Result<Counts, String> {
    let Input { name, reader } = input;
    let mut scanner = Scanner::default();
    read_in_chunks(reader, |chunk| scanner.feed(chunk, analysis))
        .map_err(|e| format!("{name}: {e}"))?;
    scanner.finish(analysis);
    let counts = scanner.counts();
    for (line, why) in scanner.bad_samples() {
        eprintln!("{name}:{line}: bad line skipped: {why}");
    }
    let more = counts.bad - scanner.bad_samples().len() as u64;
    if more > 0 {
        eprintln!("{name}: {more} more bad line(s) skipped");
    }
    Ok(counts)
}

/// Chunks in memory at once: one being read, one queued, one being scanned.
const BUFFERS: usize = 3;

/// Reads `reader` on a thread of its own and hands `scan` each chunk in order: reading
/// (decompressing a `.gz` above all) overlaps scanning, on this machine's second core.
/// At most [`BUFFERS`] chunks exist; they go back to the reader once scanned.
fn read_in_chunks(mut reader: Box<dyn Read + Send>, mut scan: impl FnMut(&[u8])) -> io::Result<()> {
    std::thread::scope(|s| {
        let (full_tx, full_rx) = mpsc::sync_channel::<io::Result<(Vec<u8>, usize)>>(BUFFERS);
        let (empty_tx, empty_rx) = mpsc::sync_channel::<Vec<u8>>(BUFFERS);
        for _ in 0..BUFFERS {
            let _ = empty_tx.send(vec![0u8; CHUNK]);
        }
        s.spawn(move || {
            // Ends at the end of the input, on an error, or when the scanner hung up.
            while let Ok(mut buf) = empty_rx.recv() {
                let read = fill(&mut reader, &mut buf);
                let last = !matches!(read, Ok(n) if n > 0);
                if full_tx.send(read.map(|n| (buf, n))).is_err() || last {
                    break;
                }
            }
        });
        for message in full_rx {
            let (buf, n) = message?;
            if n == 0 {
                break;
            }
            scan(&buf[..n]);
            // The reader may have stopped already; then the buffer is dropped.
            let _ = empty_tx.send(buf);
        }
        Ok(())
    })
}

/// Reads until `buf` is full or the input ends (a decoder returns small pieces; the scanner
/// is fastest on large chunks). Returns the bytes read.
fn fill(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn draw(args: &GreetPauseArgs, analysis: &Analysis) -> Result<(), String> {
    if let Some(path) = &args.svg {
        let svg = chart::svg(analysis).map_err(|e| format!("drawing the SVG chart: {e}"))?;
        std::fs::write(path, svg).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &args.png {
        chart::png(analysis, path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_parse_in_seconds_to_ms() {
        let ok: &[(&str, &[u64])] = &[
            ("0.5,1,2,3,5,10", &[500, 1000, 2000, 3000, 5000, 10_000]),
            ("10, 2 ,2", &[2000, 10_000]),
            (".25", &[250]),
            ("300", &[300_000]),
            ("1.001", &[1001]),
        ];
        for (s, want) in ok {
            assert_eq!(parse_pauses(s), Ok(Pauses(want.to_vec())), "{s}");
        }
        for bad in [
            "", "0", "0.0001", "301", "-1", "1e3", "x", "1,,2", "1.2.3", "1000",
        ] {
            assert!(parse_pauses(bad).is_err(), "{bad}");
        }
        let many = (1..=21)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert!(parse_pauses(&many).is_err());
    }

    #[test]
    fn chunks_arrive_whole_and_in_order_and_errors_surface() {
        let data: Vec<u8> = (0..CHUNK * 5 / 2).map(|i| (i % 251) as u8).collect();
        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        read_in_chunks(Box::new(io::Cursor::new(data.clone())), |c| {
            sizes.push(c.len());
            seen.extend_from_slice(c);
        })
        .unwrap();
        assert_eq!(seen, data);
        assert_eq!(sizes, [CHUNK, CHUNK, CHUNK / 2]);

        struct Broken(bool);
        impl Read for Broken {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if std::mem::replace(&mut self.0, true) {
                    return Err(io::Error::other("corrupt deflate stream"));
                }
                buf[..4].copy_from_slice(b"abc\n");
                Ok(4)
            }
        }
        let mut got = Vec::new();
        let err = read_in_chunks(Box::new(Broken(false)), |c| got.extend_from_slice(c));
        assert_eq!(err.unwrap_err().to_string(), "corrupt deflate stream");
        // The bytes before the error are not scanned: the chunk failed as a whole.
        assert!(got.is_empty());
    }

    #[test]
    fn fill_reads_across_short_reads() {
        // A reader that returns 3 bytes at a time.
        struct Dribble(Vec<u8>);
        impl Read for Dribble {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(3).min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0.drain(..n);
                Ok(n)
            }
        }
        let mut r = Dribble(b"0123456789".to_vec());
        let mut buf = [0u8; 8];
        assert_eq!(fill(&mut r, &mut buf).unwrap(), 8);
        assert_eq!(&buf, b"01234567");
        assert_eq!(fill(&mut r, &mut buf).unwrap(), 2);
        assert_eq!(fill(&mut r, &mut buf).unwrap(), 0);
    }
}
