//! `sendmail.mc` → Portcullis TOML: the translation behind `portcullis import sendmail-mc`.
//!
//! Role: read the m4 source of a Sendmail configuration (the subset a `.mc` uses: see
//! `lex`), understand the macros that configure the defences Portcullis rebuilds
//! (`FEATURE(greet_pause)`, `ratecontrol`, `conncontrol`, `access_db`, `delay_checks`, the
//! limits, load and timeout `define`s, `confDOMAIN_NAME`, `DAEMON_OPTIONS`), and write the
//! equivalent TOML, each key with a comment naming the `.mc` line it comes from. Whatever it
//! does not understand is listed, never fatal. It also reproduces, byte for byte and in
//! m4's order, the `*** ERROR` / `*** WARNING` texts Sendmail's m4 files would print about
//! the ordering of those features (`m4_stderr`), since an admin greps for them.
//! Must not: read files, print or exit (sans-IO: the CLI in the server crate does that);
//! panic on any input, however malformed (a proptest feeds it random bytes).
//! Invariants: the TOML it prints always loads without errors (`load_str`): values are
//! brought into our ranges with a warning rather than written out of range, and comments
//! never hold control characters.

mod interpret;
mod lex;
mod values;

use std::fmt;

/// Inputs larger than this are refused by the CLI before translation (an `.mc` is a few
/// KiB; the lexer holds one `char` per input byte).
pub const MAX_MC_BYTES: usize = 4 * 1024 * 1024;

/// What the caller may change in the translation.
#[derive(Clone, Debug, Default)]
pub struct McOptions {
    /// `[access] file` to write instead of the source file the `.mc` names (where the
    /// access source file lives on the Portcullis machine).
    pub access_file: Option<String>,
}

/// How serious a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum McKind {
    /// The input is malformed, or m4 would print an `*** ERROR` for it.
    Error,
    /// Translated, but not exactly as Sendmail behaves (the message says how).
    Warning,
    /// A line, macro or value with no Portcullis equivalent (the message says why).
    NotTranslated,
}

impl fmt::Display for McKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Error => "error",
            Self::Warning => "warning",
            Self::NotTranslated => "not translated",
        })
    }
}

/// One diagnostic about a line of the `.mc`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct McDiagnostic {
    /// 1-based line of the `.mc`.
    pub line: usize,
    pub kind: McKind,
    pub message: String,
}

/// The result of a translation.
#[derive(Clone, Debug)]
pub struct Translation {
    /// The Portcullis configuration (TOML), with comments.
    pub toml: String,
    /// What Sendmail's m4 files would print on stderr, exactly (m4 often leaves out the
    /// final newline; so does this).
    pub m4_stderr: String,
    /// Our own diagnostics, sorted by line.
    pub diagnostics: Vec<McDiagnostic>,
    /// How many keys were written.
    pub keys: usize,
}

impl Translation {
    /// True when the input is malformed or m4 would report an `*** ERROR` about what is
    /// translated (m4's missing-OSTYPE error is only a warning here: OSTYPE sets Sendmail's
    /// file paths, nothing Portcullis uses).
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.kind == McKind::Error)
    }

    /// The diagnostics as `ORIGIN:LINE: kind: message` lines, each ending in a newline.
    pub fn render_diagnostics(&self, origin: &str) -> String {
        let mut out = String::new();
        for d in &self.diagnostics {
            out.push_str(&format!("{origin}:{}: {}: {}\n", d.line, d.kind, d.message));
        }
        out
    }

    /// One line that sums the translation up.
    pub fn summary(&self) -> String {
        let count = |k: McKind| self.diagnostics.iter().filter(|d| d.kind == k).count();
        format!(
            "{} key(s) translated; {} error(s), {} warning(s), {} not translated",
            self.keys,
            count(McKind::Error),
            count(McKind::Warning),
            count(McKind::NotTranslated)
        )
    }
}

/// Translates the `.mc` text `src` (any bytes; not UTF-8 is reported and read lossily).
/// `origin` names the file in the TOML's comments.
pub fn translate(src: &[u8], origin: &str, options: &McOptions) -> Translation {
    let text = String::from_utf8_lossy(src);
    let mut extra = Vec::new();
    if let Err(e) = std::str::from_utf8(src) {
        let line = 1 + src[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        extra.push(McDiagnostic {
            line,
            kind: McKind::Warning,
            message: "not UTF-8: the bytes that are not are read as U+FFFD".to_owned(),
        });
    }
    let (items, lex_error) = lex::items(&text);
    let mut translation = interpret::run(&items, lex_error, origin, options);
    translation.diagnostics.extend(extra);
    translation.diagnostics.sort_by_key(|d| (d.line, d.kind));
    translation
}

/// Text made safe for a TOML comment or a terminal: control characters are escaped.
pub(crate) fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests;
