//! Diagnostics: what a configuration check tells the operator, and where.
//!
//! Role: the `Diagnostic` value (severity, file, 1-based line and column, message), its
//! compiler-style rendering, the byte-offset → line/column index, and `Report`, the sink
//! every validation step writes into so that one pass collects all problems.
//! Must not: print anything, or decide validity on its own (the loader does that: any
//! `Severity::Error` makes the configuration invalid).
//! Invariants: `line` and `column` are 1-based; `line == 0` means "no position" (for
//! example an unreadable file), and then `column` is 0 too. Columns count characters, not
//! bytes, so they match what an editor shows for non-ASCII text.

use std::fmt;
use std::ops::Range;

/// How serious a diagnostic is. Any `Error` makes the configuration unusable; a `Warning`
/// points at something legal but probably unintended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warning => "warning",
        }
    }
}

/// One finding about a configuration file (or a file it refers to, such as `users_file`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The file the position refers to: the config path, `<embedded default>`, or the path
    /// of a file named by the config (`users_file`).
    pub file: String,
    /// 1-based line; 0 when the problem has no position in the file.
    pub line: usize,
    /// 1-based column (in characters); 0 when unknown.
    pub column: usize,
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic that concerns a whole file rather than a place in it.
    pub(crate) fn whole_file(severity: Severity, file: &str, message: String) -> Self {
        Self {
            severity,
            file: file.to_owned(),
            line: 0,
            column: 0,
            message,
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// `FILE:LINE:COL: error: MESSAGE`, the form compilers use, so editors and `grep -n`
/// habits work; without a position, `FILE: error: MESSAGE`.
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = self.severity.as_str();
        match (self.line, self.column) {
            (0, _) => write!(f, "{}: {severity}: {}", self.file, self.message),
            (line, 0) => write!(f, "{}:{line}: {severity}: {}", self.file, self.message),
            (line, col) => write!(
                f,
                "{}:{line}:{col}: {severity}: {}",
                self.file, self.message
            ),
        }
    }
}

impl std::error::Error for Diagnostic {}

/// Maps byte offsets of one source text to 1-based (line, column).
#[derive(Debug)]
pub(crate) struct LineIndex<'a> {
    src: &'a str,
    /// Byte offset at which each line starts; always begins with 0.
    line_starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(src: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        Self { src, line_starts }
    }

    /// 1-based line and character column of `offset` (clamped into the text).
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.src.len());
        // partition_point gives the number of line starts <= offset, which is the 1-based line.
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line - 1];
        let column = self
            .src
            .get(start..offset)
            .map_or(offset - start, |text| text.chars().count());
        (line, column + 1)
    }
}

/// Collects diagnostics for one source text; spans are byte ranges in that text.
#[derive(Debug)]
pub(crate) struct Report<'a> {
    file: String,
    index: LineIndex<'a>,
    diagnostics: Vec<Diagnostic>,
}

impl<'a> Report<'a> {
    pub(crate) fn new(file: &str, src: &'a str) -> Self {
        Self {
            file: file.to_owned(),
            index: LineIndex::new(src),
            diagnostics: Vec::new(),
        }
    }

    pub(crate) fn file(&self) -> &str {
        &self.file
    }

    /// Records a diagnostic at `span` (its start), or without position when `span` is None.
    pub(crate) fn at(&mut self, severity: Severity, span: Option<Range<usize>>, message: String) {
        let diagnostic = match span {
            Some(span) => {
                let (line, column) = self.index.position(span.start);
                Diagnostic {
                    severity,
                    file: self.file.clone(),
                    line,
                    column,
                    message,
                }
            }
            None => Diagnostic::whole_file(severity, &self.file, message),
        };
        self.diagnostics.push(diagnostic);
    }

    pub(crate) fn error(&mut self, span: Option<Range<usize>>, message: String) {
        self.at(Severity::Error, span, message);
    }

    pub(crate) fn warning(&mut self, span: Option<Range<usize>>, message: String) {
        self.at(Severity::Warning, span, message);
    }

    /// Adds diagnostics produced against another file (e.g. lines of `users_file`).
    pub(crate) fn extend(&mut self, others: impl IntoIterator<Item = Diagnostic>) {
        self.diagnostics.extend(others);
    }

    pub(crate) fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// All diagnostics, this file's first in source order (serde reports keys in its own
    /// order, so sorting is what makes the output read top to bottom), then other files'.
    pub(crate) fn into_sorted(self) -> Vec<Diagnostic> {
        let mut diagnostics = self.diagnostics;
        let file = self.file;
        diagnostics.sort_by_key(|d| (d.file != file, d.line, d.column));
        diagnostics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let src = "a = 1\n\nkey = \"é\" x\n";
        let index = LineIndex::new(src);
        let table: &[(usize, (usize, usize))] = &[
            (0, (1, 1)),
            (4, (1, 5)),
            (5, (1, 6)), // the newline itself belongs to line 1
            (6, (2, 1)), // empty line
            (7, (3, 1)),
            (17, (3, 10)), // after the two-byte 'é' and the closing quote: 9 chars before
            (999, (4, 1)), // clamped to the end of the text
        ];
        for &(offset, expected) in table {
            assert_eq!(index.position(offset), expected, "offset {offset}");
        }
    }

    #[test]
    fn display_forms() {
        let mut d = Diagnostic {
            severity: Severity::Error,
            file: "p.toml".into(),
            line: 3,
            column: 7,
            message: "bad".into(),
        };
        assert_eq!(d.to_string(), "p.toml:3:7: error: bad");
        d.severity = Severity::Warning;
        d.column = 0;
        assert_eq!(d.to_string(), "p.toml:3: warning: bad");
        d.line = 0;
        assert_eq!(d.to_string(), "p.toml: warning: bad");
    }

    #[test]
    fn report_sorts_own_file_first_by_position() {
        let src = "a\nb\nc\n";
        let mut report = Report::new("main.toml", src);
        report.error(Some(4..5), "third".into());
        report.extend([Diagnostic::whole_file(
            Severity::Error,
            "users",
            "other".into(),
        )]);
        report.warning(Some(2..3), "second".into());
        report.error(None, "first".into());
        let order: Vec<_> = report
            .into_sorted()
            .into_iter()
            .map(|d| d.message)
            .collect();
        assert_eq!(order, ["first", "second", "third", "other"]);
    }
}
