// Test code: panics are the failure report; the support module's bounded waits read the
// clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

//! `portcullis import sendmail-mc`, the real binary, on the `.mc` files of
//! `tests/fixtures/mc/`: the seeds' snippets (`seed*.mc`, as the documents print them) and the
//! reference's test configurations rebuilt from sendmail-behaviour.md (`ref_*.mc`).
//!
//! For each: stdout and stderr equal the golden `NAME.toml` / `NAME.stderr` (regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p portcullis --test import`, then read the diff), the exit
//! status is the one listed below, and the TOML passes `portcullis check-config`. The m4
//! texts are also compared with what the real m4 prints over Sendmail's own cf files
//! (Debian's `m4` and `sendmail-cf`, which scripts/test.sh installs).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use support::run_bounded;

const LIMIT: Duration = Duration::from_secs(30);

/// Every fixture and the exit status its translation must have: 65 where m4 prints an
/// `*** ERROR` about a feature (or the input is malformed), 0 otherwise.
const FIXTURES: &[(&str, i32)] = &[
    ("ref_br", 0),
    ("ref_cc", 0),
    ("ref_cc_before_access", 65),
    ("ref_crt", 0),
    ("ref_gp1", 0),
    ("ref_gp_before_access", 0),
    ("ref_gpn", 0),
    ("ref_gpn_no_access", 65),
    ("ref_la1", 0),
    ("ref_la2", 0),
    ("ref_la3", 0),
    ("ref_mdc", 0),
    ("ref_mr", 0),
    ("ref_rc", 0),
    ("ref_rc_before_access", 65),
    ("ref_rc_kill", 65),
    ("ref_rc_nodelay", 65),
    ("ref_rcd", 0),
    ("ref_rcn", 0),
    ("ref_rcw", 0),
    ("ref_to", 0),
    ("seed000_greet_pause", 0),
    ("seed000_right_order", 0),
    ("seed000_wrong_order", 0),
    ("seed001_scraped", 65),
    ("seed002_greet_pause_10s", 0),
    ("seed003_sendmail_config", 0),
    ("seed004_whipple", 65),
    ("seed004_whipple_restored", 0),
];

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mc")
}

fn portcullis() -> Command {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
}

/// `portcullis import sendmail-mc NAME.mc [extra...]`, run in the fixtures directory so the
/// file name in the output is just `NAME.mc`.
fn import(name: &str, extra: &[&str]) -> Output {
    let mut cmd = portcullis();
    cmd.current_dir(fixtures_dir())
        .args(["import", "sendmail-mc", &format!("{name}.mc")])
        .args(extra);
    run_bounded(&mut cmd, LIMIT)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

/// Compares `got` with the golden file, or rewrites it under UPDATE_GOLDEN=1.
fn golden(file: &str, got: &str) -> Result<(), String> {
    let path = fixtures_dir().join(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, got).unwrap();
        return Ok(());
    }
    let want = std::fs::read_to_string(&path).map_err(|e| format!("{file}: {e}"))?;
    if want == got {
        Ok(())
    } else {
        Err(format!("{file} differs; got:\n{got}\n--- want:\n{want}"))
    }
}

#[test]
fn every_fixture_is_listed() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".mc")
                .map(str::to_owned)
        })
        .collect();
    on_disk.sort();
    let listed: Vec<&str> = FIXTURES.iter().map(|(n, _)| *n).collect();
    assert_eq!(on_disk, listed);
}

#[test]
fn golden_transcripts_and_exit_status() {
    let mut failures = Vec::new();
    for &(name, status) in FIXTURES {
        let out = import(name, &[]);
        if out.status.code() != Some(status) {
            failures.push(format!(
                "{name}: exit {:?}, want {status}",
                out.status.code()
            ));
        }
        for (file, got) in [
            (format!("{name}.toml"), text(&out.stdout)),
            (format!("{name}.stderr"), text(&out.stderr)),
        ] {
            if let Err(e) = golden(&file, &got) {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_translation_passes_check_config() {
    let dir = tempfile::tempdir().unwrap();
    // The access file the .mc names lives on the Sendmail host; here an empty one stands in,
    // given with --access-file.
    let access = dir.path().join("access");
    std::fs::write(&access, "").unwrap();
    let access_arg = access.display().to_string();
    for &(name, _) in FIXTURES {
        let plain = text(&import(name, &[]).stdout);
        let out = import(name, &["--access-file", &access_arg]);
        let toml = text(&out.stdout);
        // --access-file changes the `file` line and adds one comment, nothing else.
        let changed: Vec<&str> = toml
            .lines()
            .filter(|l| !plain.lines().any(|p| p == *l))
            .collect();
        if plain.contains("\n[access]\n") {
            assert_eq!(changed.len(), 2, "{name}: {changed:?}");
            assert!(
                changed
                    .iter()
                    .any(|l| l.starts_with("file = ") && l.contains(&access_arg))
            );
        } else {
            assert!(changed.is_empty(), "{name}: {changed:?}");
        }
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, &toml).unwrap();
        let check = run_bounded(
            portcullis()
                .arg("check-config")
                .arg("--config")
                .arg(&config),
            LIMIT,
        );
        assert_eq!(
            check.status.code(),
            Some(0),
            "{name}: check-config failed:\n{}\n{toml}",
            text(&check.stderr)
        );
        assert!(text(&check.stdout).contains("configuration OK"), "{name}");
    }
}

/// What the real m4 prints over Sendmail's cf files, without m4's own `m4:` notes (those
/// name its input files and are not Sendmail's texts).
fn real_m4(mc: &Path) -> String {
    let cf = Path::new("/usr/share/sendmail/cf");
    assert!(
        cf.join("m4/cf.m4").exists(),
        "the m4 cross-check needs Debian's m4 and sendmail-cf (scripts/test.sh installs them)"
    );
    let out = run_bounded(
        Command::new("m4")
            .arg(format!("-D_CF_DIR_={}/", cf.display()))
            .arg(cf.join("m4/cf.m4"))
            .arg(mc),
        LIMIT,
    );
    let stderr = text(&out.stderr);
    let mut kept = String::new();
    for piece in stderr.split_inclusive('\n') {
        if !piece.starts_with("m4:") {
            kept.push_str(piece);
        }
    }
    kept
}

#[test]
fn m4_texts_match_the_real_m4_over_sendmails_cf_files() {
    for &(name, _) in FIXTURES {
        let real = real_m4(&fixtures_dir().join(format!("{name}.mc")));
        let ours = text(&import(name, &[]).stderr);
        // Ours: m4's texts first, then our own `NAME.mc:LINE:` lines.
        let origin = format!("{name}.mc:");
        let block_end = ours
            .match_indices('\n')
            .map(|(i, _)| i + 1)
            .chain([0])
            .filter(|&i| ours[i..].starts_with(&origin))
            .min()
            .unwrap_or(ours.len());
        let ours = &ours[..block_end];
        let mut want = real.clone();
        if !want.is_empty() && !want.ends_with('\n') {
            want.push('\n'); // the one newline we add so our lines start on their own
        }
        assert_eq!(ours, want, "{name}");
    }
}

#[test]
fn stdin_unreadable_files_and_garbage() {
    let out = support::run_with_stdin(
        portcullis().args(["import", "sendmail-mc", "-"]),
        "FEATURE(`access_db')\nFEATURE(`greet_pause', `2500')dnl\n",
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("default = \"2s 500ms\""));
    assert!(
        text(&out.stderr).contains("<stdin>: "),
        "{}",
        text(&out.stderr)
    );

    let out = run_bounded(
        portcullis().args(["import", "sendmail-mc", "/nonexistent/sendmail.mc"]),
        LIMIT,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).is_empty());
    assert!(
        text(&out.stderr).starts_with("portcullis import: cannot read /nonexistent/sendmail.mc: "),
        "{}",
        text(&out.stderr)
    );

    // Random bytes: a translation (possibly empty), never a crash.
    let dir = tempfile::tempdir().unwrap();
    let mut state = 0x2545_F491_4F6C_DD1D_u64;
    for round in 0..20 {
        let bytes: Vec<u8> = (0..2000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        let path = dir.path().join(format!("garbage{round}.mc"));
        std::fs::write(&path, &bytes).unwrap();
        let out = run_bounded(
            portcullis().args(["import", "sendmail-mc"]).arg(&path),
            LIMIT,
        );
        assert!(
            matches!(out.status.code(), Some(0 | 65)),
            "{:?}",
            out.status
        );
        let config = dir.path().join(format!("garbage{round}.toml"));
        std::fs::write(&config, &out.stdout).unwrap();
        let check = run_bounded(
            portcullis()
                .arg("check-config")
                .arg("--config")
                .arg(&config),
            LIMIT,
        );
        assert_eq!(check.status.code(), Some(0), "{}", text(&check.stderr));
    }
}
