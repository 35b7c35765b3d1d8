//! Golden scripts for the access map (Postfix `smtpd_check` style): each
//! `tests/scripts/NAME.in` builds maps and asks lookups; its output must equal `NAME.ref`.
//! On a mismatch the test prints a diff; `UPDATE_GOLDEN=1 cargo test -p portcullis-policy
//! --test golden` rewrites the `.ref` files (then read the diff: they are the specification).
//!
//! Script lines (every line is copied to the output; a query gets its answer appended):
//!
//! ```text
//! # text                      a comment
//! map <access line>           one line of the access file, verbatim after "map "; in
//!                             messages and answers its line number is the script's line
//! mapraw <access line>        the same with \xNN escapes decoded (non-UTF-8, NUL, CR, tab)
//! reset                       start a new, empty map
//! lookup <m><Tag> client=<ip> [host=<name>]     AccessMap::lookup_client
//! addr <m><Tag> <ip>                            AccessMap::lookup_addr
//! host <m><Tag> <name>                          AccessMap::lookup_host
//! default <Tag>                                 AccessMap::lookup_default
//! mail <m><Tag> <local@domain> [user=before|after|skip]
//!                             lookup_mail, or lookup_mail_with when user= is given
//! hostkeys <Tag>                                AccessMap::has_host_keys
//! ```
//!
//! `<m>` is `!` (tag only, Sendmail's `<! Tag>`) or `+` (tagged, then untagged: `<+ Tag>`);
//! `<Tag>` is a tag name as in the file, or `Untagged`. Answers: `-> VALUE (FILE:LINE: LHS)`
//! or `-> no match`. Before the first query after `map` lines (and before `reset` or the
//! end), the map is loaded and reported: `= N entries, W warnings` and one `= warning: ...`
//! per warning not shown before for this map, or `= rejected: E errors` and one
//! `= error: ...` per error (queries on a rejected map answer `-> no map`).

// A malformed script is a bug in the test: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use portcullis_policy::access::{AccessMap, Entry, Tag, UserStep};

#[test]
fn golden_scripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts");
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "in"))
        .collect();
    scripts.sort();
    assert!(scripts.len() >= 5, "scripts missing in {}", dir.display());
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut failed = Vec::new();
    for path in &scripts {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let output = run(&name, &std::fs::read_to_string(path).unwrap());
        let ref_path = path.with_extension("ref");
        let expected = std::fs::read_to_string(&ref_path).unwrap_or_default();
        if output == expected {
            continue;
        }
        if update {
            std::fs::write(&ref_path, &output).unwrap();
            eprintln!("updated {}", ref_path.display());
        } else {
            eprintln!(
                "--- {} (expected)\n+++ actual\n{}",
                ref_path.display(),
                diff(&expected, &output)
            );
            failed.push(name);
        }
    }
    assert!(
        failed.is_empty(),
        "golden mismatch: {failed:?} (UPDATE_GOLDEN=1 rewrites)"
    );
}

/// The map being built by a script.
struct State {
    source: String,
    /// One entry per script line so far: the access line for `map` lines, empty otherwise,
    /// so the map's line numbers are the script's.
    lines: Vec<Vec<u8>>,
    /// The map lines belong to the current map from this index on.
    start: usize,
    /// Loaded map (None: rejected), or not loaded since the last change.
    loaded: Option<Option<AccessMap>>,
    /// Diagnostics already shown for this map (a reload shows only new ones).
    shown: Vec<String>,
}

impl State {
    fn load(&mut self, out: &mut String) {
        if self.loaded.is_some() {
            return;
        }
        let mut text = Vec::new();
        for (i, l) in self.lines.iter().enumerate() {
            if i >= self.start {
                text.extend_from_slice(l);
            }
            text.push(b'\n');
        }
        match AccessMap::parse(&self.source, &text) {
            Ok(p) => {
                let (n, w) = (p.map.len(), p.warnings.len());
                let _ = writeln!(
                    out,
                    "= {}, {}",
                    plural(n, "entry", "entries"),
                    plural(w, "warning", "warnings")
                );
                for w in &p.warnings {
                    self.show(out, format!("= warning: {w}"));
                }
                self.loaded = Some(Some(p.map));
            }
            Err(errors) => {
                let _ = writeln!(
                    out,
                    "= rejected: {}",
                    plural(errors.len(), "error", "errors")
                );
                for e in &errors {
                    self.show(out, format!("= error: {e}"));
                }
                self.loaded = Some(None);
            }
        }
    }

    fn show(&mut self, out: &mut String, line: String) {
        if !self.shown.contains(&line) {
            out.push_str(&line);
            out.push('\n');
            self.shown.push(line);
        }
    }

    fn pending(&self) -> bool {
        self.loaded.is_none() && self.lines[self.start..].iter().any(|l| !l.is_empty())
    }
}

fn run(source: &str, script: &str) -> String {
    let mut st = State {
        source: source.to_owned(),
        lines: Vec::new(),
        start: 0,
        loaded: None,
        shown: Vec::new(),
    };
    let mut out = String::new();
    for line in script.lines() {
        let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
        let mut access = Vec::new();
        match cmd {
            "map" => access = rest.as_bytes().to_vec(),
            "mapraw" => access = unescape(rest),
            "reset" => {
                if st.pending() {
                    st.load(&mut out);
                }
                st.start = st.lines.len() + 1;
                st.loaded = None;
                st.shown.clear();
            }
            _ => {}
        }
        if !access.is_empty() {
            st.loaded = None;
        }
        st.lines.push(access);
        if matches!(cmd, "" | "#" | "map" | "mapraw" | "reset") || cmd.starts_with('#') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        st.load(&mut out);
        let answer = match &st.loaded {
            Some(Some(map)) => query(map, cmd, rest),
            _ => "no map".to_owned(),
        };
        let _ = writeln!(out, "{line} -> {answer}");
    }
    if st.pending() {
        st.load(&mut out);
    }
    out
}

fn query(map: &AccessMap, cmd: &str, rest: &str) -> String {
    let words: Vec<&str> = rest.split_whitespace().collect();
    let arg = |name: &str| {
        words
            .iter()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
    };
    let found = match cmd {
        "lookup" => {
            let (tag, untagged) = marked_tag(words[0]);
            let addr: IpAddr = arg("client").expect("client=").parse().expect("client ip");
            map.lookup_client(tag, untagged, arg("host"), addr)
        }
        "addr" => {
            let (tag, untagged) = marked_tag(words[0]);
            map.lookup_addr(tag, untagged, words[1].parse().expect("ip"))
        }
        "host" => {
            let (tag, untagged) = marked_tag(words[0]);
            map.lookup_host(tag, untagged, words[1])
        }
        "default" => map.lookup_default(tag(words[0])),
        "mail" => {
            let (tag, untagged) = marked_tag(words[0]);
            let (local, domain) = words[1].rsplit_once('@').unwrap_or((words[1], ""));
            match arg("user") {
                None => map.lookup_mail(tag, untagged, local, domain),
                Some(step) => {
                    let step = match step {
                        "before" => UserStep::BeforeDomain,
                        "after" => UserStep::AfterDomain,
                        "skip" => UserStep::Skip,
                        other => panic!("user={other}?"),
                    };
                    map.lookup_mail_with(tag, untagged, local, domain, step)
                }
            }
        }
        "hostkeys" => return map.has_host_keys(tag(words[0])).to_string(),
        other => panic!("unknown script command {other:?}"),
    };
    answer(map, found)
}

fn answer(map: &AccessMap, found: Option<Entry<'_>>) -> String {
    match found {
        Some(e) => format!("{} ({}:{}: {})", e.value, map.source(), e.line, e.lhs()),
        None => "no match".to_owned(),
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn tag(name: &str) -> Tag {
    match name {
        "Untagged" => Tag::Untagged,
        _ => Tag::from_name(name).unwrap_or_else(|| panic!("unknown tag {name:?}")),
    }
}

fn marked_tag(word: &str) -> (Tag, bool) {
    match word.split_at(1) {
        ("!", name) => (tag(name), false),
        ("+", name) => (tag(name), true),
        _ => panic!("tag needs a ! or + mark: {word:?}"),
    }
}

/// `\xNN` escapes to bytes; everything else as is.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') && i + 4 <= b.len() {
            let hex = std::str::from_utf8(&b[i + 2..i + 4]).unwrap();
            out.push(u8::from_str_radix(hex, 16).expect("\\xNN"));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// A line diff (longest common subsequence), `-` expected, `+` actual, with two lines of
/// context around each change.
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            ops.push(('+', b[j]));
            j += 1;
        } else {
            ops.push(('-', a[i]));
            i += 1;
        }
    }
    let near_change = |k: usize| {
        let lo = k.saturating_sub(2);
        ops[lo..(k + 3).min(ops.len())]
            .iter()
            .any(|(c, _)| *c != ' ')
    };
    let mut out = String::new();
    for (k, (c, line)) in ops.iter().enumerate() {
        if near_change(k) {
            let _ = writeln!(out, "{c} {line}");
        }
    }
    out
}
