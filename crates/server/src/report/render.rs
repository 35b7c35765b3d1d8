//! The greet-pause report as text: the seed's histogram, the delay percentiles, the what-if
//! table and the summary line.
//!
//! Role: turn an [`Analysis`] into the exact bytes the command prints. The first block is the
//! seed's Perl script's output byte for byte (seeds/002: `# == N connection(s)`, the tabbed
//! header, `%6d\t(%6d)\t####` rows with at most 40 `#`), except that delays are sorted as
//! numbers (the script sorts them as strings: 10 before 2).
//!
//! Must not: compute statistics (they are [`Analysis`]'s) or do I/O.

use std::fmt::Write as _;

use super::scan::Counts;
use super::stats::{Analysis, WhatIf};

/// The longest bar of the histogram, in `#` (the seed's 40).
pub const BAR_WIDTH: u64 = 40;

/// The whole report.
pub fn report(a: &Analysis, candidates_ms: &[u64], counts: Counts, files: usize) -> String {
    let mut out = histogram(a);
    out.push('\n');
    out.push_str(&percentiles(a));
    out.push('\n');
    out.push_str(&what_if(a, candidates_ms));
    out.push('\n');
    let _ = writeln!(
        out,
        "lines read: {}, matched: {}, bad lines skipped: {}, files: {files}",
        counts.lines, counts.matched, counts.bad
    );
    out
}

/// The seed's histogram, then the count of rejections without a delay.
pub fn histogram(a: &Analysis) -> String {
    let max = a.histogram().map(|(_, n)| n).max().unwrap_or(0);
    let scale = max / BAR_WIDTH + 1;
    let mut out = format!(
        "# == {scale} connection{}\n Delay\t Count\t\tHistogram\n",
        if scale == 1 { "" } else { "s" }
    );
    for (delay, count) in a.histogram() {
        // Perl's `'#' x (count / scale)` truncates the quotient.
        let bar = "#".repeat(usize::try_from(count / scale).unwrap_or(0));
        let _ = writeln!(out, "{delay:6}\t({count:6})\t{bar}");
    }
    if a.untimed() > 0 {
        let _ = writeln!(
            out,
            "{} more rejected without a delay (Sendmail before 8.14 logs no \"after N seconds\"); not in the histogram",
            a.untimed()
        );
    }
    out
}

fn percentiles(a: &Analysis) -> String {
    let (all, ms, whole) = a.early_talkers();
    let Some(p) = a.percentiles() else {
        return "Early talkers: none\n".to_owned();
    };
    let mut out =
        format!("Early talkers: {all} ({ms} timed to the millisecond, {whole} in whole seconds)\n");
    let held_back = a.held_back();
    if held_back > 0 {
        let _ = writeln!(
            out,
            "  (and {held_back} more held back by rejection summaries: counted there, not timed, so not in the\n   histogram, the percentiles or the what-if table; [log] summary_interval = \"0s\" logs every one)"
        );
    }
    let summarised = a.from_sessions();
    if summarised > 0 {
        let _ = writeln!(
            out,
            "  ({summarised} of them known from their session lines only: their pre-greeting lines were held back by a rejection summary)"
        );
    }
    for (name, value) in [
        ("p50", p.p50),
        ("p90", p.p90),
        ("p99", p.p99),
        ("max", p.max),
    ] {
        let _ = writeln!(out, "  {name} {value:>9} ms");
    }
    if whole > 0 {
        out.push_str(
            "  (\"after N seconds\" counts as N s: Sendmail rounds half up, so the client talked between N-0.5 and N+0.5 s)\n",
        );
    }
    out
}

fn what_if(a: &Analysis, candidates_ms: &[u64]) -> String {
    let sessions = a.sessions();
    let mut out = match (a.pause_in_force(), sessions.max_pause_ms) {
        (Some(p), Some(max)) if max != p => format!(
            "What if the pause were (pauses in force: {} to {}, from the session lines; a\n\
             candidate above {} gives only a lower bound, marked >=):\n",
            secs(p),
            secs(max),
            secs(p)
        ),
        (Some(p), Some(_)) => format!(
            "What if the pause were (pause in force: {}, from the session lines; a longer\n\
             candidate gives only a lower bound, marked >=):\n",
            secs(p)
        ),
        (Some(p), None) => format!(
            "What if the pause were (pause in force not logged: at least {}, the longest delay seen; a\n\
             longer candidate gives only a lower bound, marked >=):\n",
            secs(p)
        ),
        (None, _) => "What if the pause were:\n".to_owned(),
    };
    let (talkers, _, _) = a.early_talkers();
    let delays = sessions.total() > 0;
    out.push_str("   pause      caught      share");
    if delays {
        out.push_str("   delay total     median      lost");
    }
    out.push('\n');
    for &pause in candidates_ms {
        out.push_str(&row(&a.what_if(pause), talkers));
    }
    if delays {
        let _ = writeln!(
            out,
            "delay total and median: the waits of the clients that behaved and stay (paused ones wait the\n\
             whole pause, unpaused ones nothing); lost: paused clients that sent nothing and hung up sooner.\n\
             Session lines: {} ({} paused and behaved, {} not paused, {} early talkers counted once, by\n\
             their pre-greeting lines when logged)",
            sessions.total(),
            sessions.paused,
            sessions.unpaused,
            sessions.early
        );
    } else {
        out.push_str(
            "The delay columns need Portcullis logs: no \"session closed:\" lines in the input.\n",
        );
    }
    out
}

fn row(w: &WhatIf, talkers: u64) -> String {
    let mark = if w.lower_bound { ">=" } else { "" };
    let share = if talkers == 0 {
        "-".to_owned()
    } else {
        // Tenths of a percent, rounded half up, in integers (no float formatting surprises).
        let tenths = (w.caught * 2000 + talkers) / (2 * talkers);
        format!("{mark}{}.{}%", tenths / 10, tenths % 10)
    };
    let caught = format!("{mark}{}", w.caught);
    let mut out = format!("{:>8}  {caught:>10}  {share:>9}", secs(w.pause_ms));
    if let Some(d) = w.delay {
        let median = d.median_ms.map_or_else(|| "-".to_owned(), secs);
        let _ = write!(
            out,
            "  {:>12}  {median:>9}  {:>8}",
            secs(d.total_ms),
            d.lost
        );
    }
    out.push('\n');
    out
}

/// Milliseconds as seconds, without trailing zeros: `500` → `0.5 s`, `2000` → `2 s`.
pub fn secs(ms: u64) -> String {
    let (s, frac) = (ms / 1000, ms % 1000);
    if frac == 0 {
        return format!("{s} s");
    }
    let frac = format!("{frac:03}");
    format!("{s}.{} s", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::super::parse::Parsed;
    use super::*;

    fn with_seconds(counts: &[(u64, u64)]) -> Analysis {
        let mut a = Analysis::default();
        for &(seconds, n) in counts {
            for _ in 0..n {
                a.accept(Parsed::Pregreet {
                    qid: None,
                    seconds,
                    waited_ms: None,
                });
            }
        }
        a.finish();
        a
    }

    #[test]
    fn the_seeds_example_exactly() {
        let counts = [12, 9, 14, 9, 11, 27, 8, 13, 6, 11];
        let a = with_seconds(
            &counts
                .iter()
                .copied()
                .enumerate()
                .map(|(d, n)| (d as u64, n))
                .collect::<Vec<_>>(),
        );
        let mut want = String::from("# == 1 connection\n Delay\t Count\t\tHistogram\n");
        for (d, n) in counts.iter().enumerate() {
            want.push_str(&format!("{d:6}\t({n:6})\t{}\n", "#".repeat(*n as usize)));
        }
        assert_eq!(histogram(&a), want);
        assert!(histogram(&a).contains("     5\t(    27)\t###########################\n"));
    }

    #[test]
    fn scale_keeps_bars_at_most_40() {
        let table: &[(u64, &str, usize)] = &[
            (40, "# == 2 connections\n", 20),
            (39, "# == 1 connection\n", 39),
            (79, "# == 2 connections\n", 39),
            (80, "# == 3 connections\n", 26),
            (1000, "# == 26 connections\n", 38),
        ];
        for &(n, head, bar) in table {
            let text = histogram(&with_seconds(&[(3, n), (10, 1)]));
            assert!(text.starts_with(head), "{n}: {text}");
            let row = format!("     3\t({n:6})\t{}\n", "#".repeat(bar));
            assert!(text.contains(&row), "{n}: {text}");
            // Numeric order: 3 before 10 (the seed's string sort would put 10 first).
            assert!(text.find("     3\t").unwrap() < text.find("    10\t").unwrap());
        }
    }

    #[test]
    fn empty_histogram_is_the_seeds_empty_output() {
        assert_eq!(
            histogram(&Analysis::default()),
            "# == 1 connection\n Delay\t Count\t\tHistogram\n"
        );
    }

    #[test]
    fn seconds_format() {
        let table = [
            (0, "0 s"),
            (500, "0.5 s"),
            (1000, "1 s"),
            (1250, "1.25 s"),
            (10_001, "10.001 s"),
        ];
        for (ms, want) in table {
            assert_eq!(secs(ms), want);
        }
    }

    #[test]
    fn share_rounds_and_marks() {
        let w = |caught, lower_bound| WhatIf {
            pause_ms: 500,
            caught,
            lower_bound,
            delay: None,
        };
        assert_eq!(row(&w(1, false), 3), "   0.5 s           1      33.3%\n");
        assert_eq!(row(&w(2, false), 3), "   0.5 s           2      66.7%\n");
        assert_eq!(row(&w(3, true), 3), "   0.5 s         >=3   >=100.0%\n");
        assert_eq!(row(&w(0, false), 0), "   0.5 s           0          -\n");
    }
}
