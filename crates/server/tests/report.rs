// Test code: panics are the failure report; the support module bounds its waits with the
// real clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

//! `portcullis report greet-pause`, the real binary: golden transcripts on fixture logs (ours
//! in syslog and JSON format, Sendmail's real lines, the seed's example distribution as a
//! .gz, a file with bad lines), the seed's histogram reproduced, the SVG and PNG charts
//! checked by parsing them, and the exit codes.
//!
//! Fixtures: tests/fixtures/report/<name> → <name without .log/.log.gz>.out (full stdout);
//! bad_lines also has .err (full stderr).

mod support;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{run_bounded, run_with_stdin};

const LIMIT: Duration = Duration::from_secs(30);

/// The seed's example (seeds/002), as the blog printed it (its HTML collapsed the tabs).
const SEED_EXAMPLE: &str = "\
# == 1 connection
Delay Count Histogram
0 ( 12) ############
1 ( 9) #########
2 ( 14) ##############
3 ( 9) #########
4 ( 11) ###########
5 ( 27) ###########################
6 ( 8) ########
7 ( 13) #############
8 ( 6) ######
9 ( 11) ###########";

/// The seed's example counts, delays 0 to 9.
const SEED_COUNTS: [u64; 10] = [12, 9, 14, 9, 11, 27, 8, 13, 6, 11];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/report")
}

/// Exit code, stdout, stderr.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `portcullis report greet-pause <args>`, run in the fixtures directory.
fn report(args: &[&str]) -> Run {
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .current_dir(fixtures())
            .args(["report", "greet-pause"])
            .args(args),
        LIMIT,
    );
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn expected(name: &str) -> String {
    std::fs::read_to_string(fixtures().join(name)).unwrap()
}

fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn golden_transcripts() {
    for (input, out) in [
        ("ours_syslog.log", "ours_syslog.out"),
        ("ours_json.log", "ours_json.out"),
        ("sendmail.log", "sendmail.out"),
        ("seed_example.log.gz", "seed_example.out"),
        ("bad_lines.log", "bad_lines.out"),
    ] {
        let run = report(&[input]);
        assert_eq!(run.code, Some(0), "{input}: {}", run.stderr);
        assert_eq!(run.stdout, expected(out), "{input}");
        if input != "bad_lines.log" {
            assert_eq!(run.stderr, "", "{input}");
        }
    }
}

#[test]
fn bad_lines_are_named_with_file_and_line_and_skipped() {
    let run = report(&["bad_lines.log"]);
    assert_eq!(run.code, Some(0));
    assert_eq!(run.stderr, expected("bad_lines.err"));
    assert!(
        run.stdout
            .ends_with("lines read: 10, matched: 4, bad lines skipped: 6, files: 1\n"),
        "{}",
        run.stdout
    );
}

#[test]
fn the_seeds_example_distribution_gives_the_seeds_histogram() {
    let run = report(&["seed_example.log.gz"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    // Byte for byte what the seed's Perl prints (tabs, %6d)...
    let mut perl = String::from("# == 1 connection\n Delay\t Count\t\tHistogram\n");
    for (delay, count) in SEED_COUNTS.iter().enumerate() {
        perl.push_str(&format!(
            "{delay:6}\t({count:6})\t{}\n",
            "#".repeat(*count as usize)
        ));
    }
    assert!(run.stdout.starts_with(&perl), "{}", run.stdout);
    // ...which is the seed's printed example once whitespace is collapsed as its page did.
    let collapsed: Vec<String> = run
        .stdout
        .lines()
        .take(12)
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(collapsed.join("\n"), SEED_EXAMPLE);
}

#[test]
fn gz_stdin_and_several_files_read_alike() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("seed_example.log");
    std::fs::write(&plain, gunzip(&fixtures().join("seed_example.log.gz"))).unwrap();
    let from_plain = report(&[plain.to_str().unwrap()]);
    assert_eq!(from_plain.stdout, expected("seed_example.out"));

    let text = String::from_utf8(std::fs::read(&plain).unwrap()).unwrap();
    let from_stdin = run_with_stdin(
        Command::new(env!("CARGO_BIN_EXE_portcullis")).args(["report", "greet-pause"]),
        &text,
        LIMIT,
    );
    assert_eq!(
        String::from_utf8_lossy(&from_stdin.stdout),
        from_plain.stdout
    );

    // Two inputs, one of them standard input by `-`: one report over both.
    let both = run_with_stdin(
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .current_dir(fixtures())
            .args(["report", "greet-pause", "sendmail.log", "-"]),
        &text,
        LIMIT,
    );
    let both = String::from_utf8_lossy(&both.stdout).into_owned();
    assert!(both.starts_with("# == 1 connection\n"), "{both}");
    // Delay 5: 27 from the seed's example plus 1 Sendmail line.
    assert!(both.contains("     5\t(    28)\t"), "{both}");
    assert!(both.contains("2 more rejected without a delay"), "{both}");
    assert!(
        both.ends_with("lines read: 175, matched: 128, bad lines skipped: 0, files: 2\n"),
        "{both}"
    );
}

#[test]
fn pauses_option_sets_the_candidates() {
    let run = report(&["ours_syslog.log", "--pauses", "4,0.25,4"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let rows: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()) && l.contains(" s "))
        .collect();
    assert_eq!(rows.len(), 2, "{}", run.stdout);
    // 0.25 s catches the 12 ms talker only; 4 s all but 4400 and 4999 ms.
    assert!(
        rows[0].starts_with("  0.25 s           1      12.5%"),
        "{}",
        rows[0]
    );
    assert!(
        rows[1].starts_with("     4 s           6      75.0%"),
        "{}",
        rows[1]
    );
}

/// The bars of an SVG chart: (x, height), left to right.
fn svg_bars(svg: &str) -> Vec<(f64, f64)> {
    let doc = roxmltree::Document::parse(svg).unwrap();
    let mut bars: Vec<(f64, f64)> = doc
        .descendants()
        .filter(|n| n.has_tag_name("rect") && n.attribute("fill") == Some("#2B6CB0"))
        .map(|n| {
            let num = |a| n.attribute(a).unwrap().parse::<f64>().unwrap();
            (num("x"), num("height"))
        })
        .collect();
    bars.sort_by(|a, b| a.0.total_cmp(&b.0));
    bars
}

#[test]
fn svg_chart_has_one_bar_per_delay_in_proportion() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("chart.svg");
    let run = report(&["seed_example.log.gz", "--svg", svg.to_str().unwrap()]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, expected("seed_example.out"));
    let text = std::fs::read_to_string(&svg).unwrap();
    let bars = svg_bars(&text);
    assert_eq!(bars.len(), SEED_COUNTS.len(), "{text}");
    // Height per connection is the same for every bar (within a pixel of rounding).
    let unit = bars[5].1 / 27.0;
    for ((_, height), count) in bars.iter().zip(SEED_COUNTS) {
        assert!(
            (height - unit * count as f64).abs() <= 1.0,
            "bar of {count}: height {height}, expected {}",
            unit * count as f64
        );
    }
    // The axes are labelled.
    let doc = roxmltree::Document::parse(&text).unwrap();
    let labels: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text().map(str::trim))
        .collect();
    assert!(labels.contains(&"Connections"), "{labels:?}");
    assert!(
        labels.contains(&"Delay before the client talked (seconds)"),
        "{labels:?}"
    );
}

/// Checks a PNG's chunks (CRCs), inflates its image data, and returns (width, height).
fn decode_png(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    let be = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
    let (mut pos, mut size, mut channels, mut idat) = (8, (0, 0), 0, Vec::new());
    loop {
        let len = be(&bytes[pos..pos + 4]) as usize;
        let kind = &bytes[pos + 4..pos + 8];
        let data = &bytes[pos + 8..pos + 8 + len];
        let mut crc = flate2::Crc::new();
        crc.update(&bytes[pos + 4..pos + 8 + len]);
        assert_eq!(crc.sum(), be(&bytes[pos + 8 + len..pos + 12 + len]), "CRC");
        match kind {
            b"IHDR" => {
                size = (be(&data[..4]), be(&data[4..8]));
                assert_eq!(data[8], 8, "8 bits per sample");
                channels = match data[9] {
                    2 => 3,
                    6 => 4,
                    other => panic!("colour type {other}"),
                };
            }
            b"IDAT" => idat.extend_from_slice(data),
            b"IEND" => break,
            _ => {}
        }
        pos += 12 + len;
    }
    let mut pixels = Vec::new();
    flate2::read::ZlibDecoder::new(&idat[..])
        .read_to_end(&mut pixels)
        .unwrap();
    // One filter byte per row, then the row's samples.
    assert_eq!(
        pixels.len(),
        size.1 as usize * (1 + size.0 as usize * channels)
    );
    size
}

#[test]
fn png_chart_decodes_with_the_right_size() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("chart.png");
    let run = report(&["sendmail.log", "--png", png.to_str().unwrap()]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(decode_png(&std::fs::read(&png).unwrap()), (900, 500));
}

#[test]
fn exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    // An input that cannot be read: 1, with its path, and no report.
    let missing = dir.path().join("nope.log");
    let run = report(&["sendmail.log", missing.to_str().unwrap()]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains(missing.to_str().unwrap()),
        "{}",
        run.stderr
    );
    assert_eq!(run.stdout, "");
    let run = report(&[dir.path().to_str().unwrap()]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("is a directory"), "{}", run.stderr);
    // A .gz that is not gzip: 1, with its path.
    let fake = dir.path().join("fake.log.gz");
    std::fs::write(&fake, "pre-greeting traffic after 1 seconds\n").unwrap();
    let run = report(&[fake.to_str().unwrap()]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("fake.log.gz"), "{}", run.stderr);
    // A chart that cannot be written: 1, with its path.
    let nowhere = dir.path().join("no/such/dir/chart.svg");
    let run = report(&["sendmail.log", "--svg", nowhere.to_str().unwrap()]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("chart.svg"), "{}", run.stderr);
    // Usage: 64.
    for args in [
        &["--pauses", "0"][..],
        &["--pauses", "301"],
        &["--pauses", "1,x"],
        &["--no-such-flag"],
    ] {
        let run = report(args);
        assert_eq!(run.code, Some(64), "{args:?}: {}", run.stderr);
        assert_eq!(run.stdout, "");
    }
    // --help is not an error.
    assert_eq!(report(&["--help"]).code, Some(0));
}

/// The real server's own log, with rejection summaries holding back a flooding client's
/// lines (its pre-greeting, detail and session lines alike): the report times the talkers
/// logged in full and counts the held-back ones from the summary line.
#[test]
fn a_live_servers_log_counts_talkers_held_back_by_a_summary() {
    use std::net::{IpAddr, Ipv4Addr};
    let mut server = support::Server::start(
        "[greet_pause]\ndefault = \"1s\"\npass_ttl = \"0s\"\n\n[log]\nsummary_after = 2\n",
    );
    let slammer = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    for _ in 0..5 {
        let mut c = support::Smtp::connect_from(server.addr(), slammer);
        c.send_raw(b"EHLO slam.example\r\n");
        assert_eq!(c.read_reply().0, 554);
        c.cmd("QUIT");
    }
    let polite_addr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
    let mut polite = support::Smtp::connect_from(server.addr(), polite_addr);
    polite.greet_ehlo("polite.example");
    polite.cmd("QUIT");
    assert!(server.wait_log_count("session closed:", 3, LIMIT));
    // The summary of the held-back lines is written at the latest at shutdown.
    server.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(server.wait_exit(LIMIT).is_some());
    let log = server.log();
    assert_eq!(
        log.matches("pre-greeting traffic after").count(),
        2,
        "{log}"
    );
    assert_eq!(log.matches("session closed:").count(), 3, "{log}");
    assert!(
        log.contains("greet_pause: 3 more rejections not logged"),
        "{log}"
    );
    let path = server.dir().join("copy.log");
    std::fs::write(&path, &log).unwrap();
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["report", "greet-pause"])
            .arg(&path),
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("     0\t(     2)\t##\n"), "{stdout}");
    assert!(
        stdout.contains("Early talkers: 2 (2 timed to the millisecond"),
        "{stdout}"
    );
    assert!(
        stdout.contains("(and 3 more held back by rejection summaries"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Session lines: 3 (1 paused and behaved"),
        "{stdout}"
    );
}

/// Connections a `ClientRate:` limit refuses with a 421 before any greeting are not clients
/// whose delay a pause could change: the report must not count them as clients that were not
/// paused (under a rate-limited flood they made the what-if's median delay 0 for every
/// candidate).
#[test]
fn a_live_servers_refused_connections_are_not_behaved_clients() {
    use std::net::{IpAddr, Ipv4Addr};
    let limited = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));
    let server = support::server_with_access(
        "ClientRate:127.0.0.9\t1\n",
        "[greet_pause]\ndefault = \"1s\"\npass_ttl = \"0s\"\n",
    );
    let mut first = support::Smtp::connect_from(server.addr(), limited);
    first.greet_ehlo("limited.example");
    first.cmd("QUIT");
    for _ in 0..3 {
        let mut c = support::Smtp::connect_from(server.addr(), limited);
        let (code, text) = c.read_reply();
        assert_eq!(code, 421, "{text}");
    }
    assert!(server.wait_log_count("Connection rate limit exceeded", 3, LIMIT));
    // A second client, whose session outlasts the refused ones' ends.
    let mut other =
        support::Smtp::connect_from(server.addr(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10)));
    other.greet_ehlo("other.example");
    other.cmd("QUIT");
    assert!(server.wait_log("relay=[127.0.0.10], pause=1000ms", LIMIT));
    let path = server.dir().join("copy.log");
    std::fs::write(&path, server.log()).unwrap();
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["report", "greet-pause", "--pauses", "1"])
            .arg(&path),
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Session lines: 2 (2 paused and behaved, 0 not paused"),
        "{stdout}"
    );
    // Both behaved clients wait the whole candidate pause: the median is 1 s.
    assert!(
        stdout.contains("     1 s           0          -           2 s        1 s         0\n"),
        "{stdout}"
    );
}
