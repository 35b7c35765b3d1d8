//! The m4 subset a `sendmail.mc` is written in: quoted strings, macro calls, `dnl`, comments.
//!
//! Role: cut the source into macro calls (name, arguments with one level of quotes removed,
//! the line they start on) and the text that is not a macro call (kept per line, so the
//! caller can list it as not translated).
//! Must not: expand macros or know what any macro means (that is `interpret`); panic on
//! any input (unbalanced quotes and parentheses are [`LexError`]s with a line).
//! Invariants: follows m4's rules where they matter for an `.mc`: `` ` `` opens and `'`
//! closes a quote, quotes nest; `dnl` discards up to and including the next newline; a word
//! followed at once by `(` is a call whose arguments are split at top-level commas, with the
//! leading unquoted white space of each argument dropped (trailing white space is kept, as
//! m4 keeps it); `#` starts a comment up to the end of the line. Every collection is bounded
//! ([`MAX_ARGS`], [`MAX_CALL_CHARS`], [`MAX_STRAY_CHARS`], [`MAX_ITEMS`]).

/// Arguments kept per call; m4 has no limit, but no Sendmail macro takes more than a few.
pub(crate) const MAX_ARGS: usize = 32;
/// Characters of one call (name and arguments) before it is refused as malformed.
pub(crate) const MAX_CALL_CHARS: usize = 64 * 1024;
/// Characters of not-understood text kept per line (the rest is cut with `...`).
pub(crate) const MAX_STRAY_CHARS: usize = 200;
/// Items (macro calls, lines of other text) read before the input is refused as not a
/// `.mc`: each becomes a diagnostic and a TOML comment too, so this bounds the whole
/// translation's memory (a real `.mc` has a few dozen).
pub(crate) const MAX_ITEMS: usize = 10_000;

/// One macro call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Call {
    /// The macro's name (`FEATURE`, `define`, ...).
    pub(crate) name: String,
    /// The arguments, quotes removed one level; empty without parentheses.
    pub(crate) args: Vec<String>,
    /// Whether the name was followed by `(` (`LOCAL_CONFIG` is a call without).
    pub(crate) parens: bool,
    /// 1-based line of the name.
    pub(crate) line: usize,
    /// The call as written, on one line and cut to a readable length, for messages.
    pub(crate) text: String,
}

/// What the source holds, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Item {
    Call(Call),
    /// Text that is not a macro call, per line (words, stray quotes and parentheses).
    Stray {
        line: usize,
        text: String,
    },
    /// What `dnl` discarded, when it looks like a macro call: a scraped file whose line
    /// breaks were lost puts whole statements there, and m4 drops them silently.
    AfterDnl {
        line: usize,
        text: String,
    },
}

/// Input that is not well-formed m4.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LexError {
    pub(crate) line: usize,
    pub(crate) message: String,
}

/// Cuts `src` into items. After an error the rest of the input cannot be read reliably
/// (an unterminated quote swallows it), so lexing stops there.
pub(crate) fn items(src: &str) -> (Vec<Item>, Option<LexError>) {
    let mut lexer = Lexer {
        chars: src.chars().collect(),
        pos: 0,
        line: 1,
        stray: None,
        gap: false,
        out: Vec::new(),
        overflow: None,
    };
    let error = lexer.run().err();
    lexer.flush_stray();
    let error = error.or_else(|| lexer.overflow.map(too_many));
    (lexer.out, error)
}

struct Lexer {
    chars: Vec<char>,
    pos: usize,
    line: usize,
    /// Not-understood text of the current line: (line, text).
    stray: Option<(usize, String)>,
    /// White space was skipped since the last stray text (to show words apart).
    gap: bool,
    out: Vec<Item>,
    /// The line of the first item past [`MAX_ITEMS`] (not kept): reading stops there.
    overflow: Option<usize>,
}

impl Lexer {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn run(&mut self) -> Result<(), LexError> {
        while let Some(c) = self.peek() {
            if let Some(line) = self.overflow {
                return Err(too_many(line));
            }
            match c {
                '`' => {
                    let line = self.line;
                    let inner = self.quoted()?;
                    self.push_stray(line, &format!("`{inner}'"));
                }
                '#' => self.skip_line(),
                c if is_word_start(c) => self.word()?,
                c if c.is_whitespace() => {
                    if c == '\n' {
                        self.flush_stray();
                    }
                    self.gap = true;
                    self.bump();
                }
                _ => {
                    let (line, start) = (self.line, self.pos);
                    while self.peek().is_some_and(|c| {
                        !(c.is_whitespace() || c == '`' || c == '#' || is_word_start(c))
                    }) {
                        self.bump();
                    }
                    let text: String = self.chars[start..self.pos].iter().collect();
                    self.push_stray(line, &text);
                }
            }
        }
        Ok(())
    }

    /// A quoted string starting at the `` ` `` under the cursor; returns its content with
    /// the outer quotes removed and nested quotes kept.
    fn quoted(&mut self) -> Result<String, LexError> {
        let opened = self.line;
        self.bump();
        let mut depth = 1usize;
        let mut inner = String::new();
        while let Some(c) = self.bump() {
            match c {
                '`' => depth += 1,
                '\'' => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(inner);
                    }
                }
                _ => {}
            }
            if inner.len() >= MAX_CALL_CHARS {
                return Err(LexError {
                    line: opened,
                    message: format!("quoted string longer than {MAX_CALL_CHARS} characters"),
                });
            }
            inner.push(c);
        }
        Err(LexError {
            line: opened,
            message: "unterminated quote: \"`\" is never closed by \"'\" \
                      (m4 would swallow the rest of the file)"
                .to_owned(),
        })
    }

    fn skip_line(&mut self) {
        while let Some(c) = self.bump() {
            if c == '\n' {
                self.flush_stray();
                return;
            }
        }
    }

    /// A word: `dnl`, a call, or stray text.
    fn word(&mut self) -> Result<(), LexError> {
        let (line, start) = (self.line, self.pos);
        while self.peek().is_some_and(is_word_char) {
            self.bump();
        }
        let name: String = self.chars[start..self.pos].iter().collect();
        if name == "dnl" {
            self.dnl(line);
            return Ok(());
        }
        if self.peek() == Some('(') {
            let args = self.args(&name, line)?;
            let text = one_line(&self.chars[start..self.pos]);
            self.push(Item::Call(Call {
                name,
                args,
                parens: true,
                line,
                text,
            }));
        } else if is_bare_macro(&name) {
            self.push(Item::Call(Call {
                text: name.clone(),
                name,
                args: Vec::new(),
                parens: false,
                line,
            }));
        } else {
            self.push_stray(line, &name);
        }
        Ok(())
    }

    /// `dnl`: everything up to and including the newline is discarded.
    fn dnl(&mut self, line: usize) {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c == '\n' {
                break;
            }
            self.bump();
        }
        let rest = one_line(&self.chars[start..self.pos]);
        let rest = rest.trim();
        if looks_like_call(rest) {
            self.push(Item::AfterDnl {
                line,
                text: rest.to_owned(),
            });
        }
        self.bump();
        self.flush_stray();
    }

    /// The arguments of a call; the cursor is on its `(`.
    fn args(&mut self, name: &str, line: usize) -> Result<Vec<String>, LexError> {
        let start = self.pos;
        self.bump();
        let mut args = Vec::new();
        let mut arg = String::new();
        let mut depth = 1usize;
        self.skip_blanks();
        loop {
            if self.pos - start > MAX_CALL_CHARS {
                return Err(LexError {
                    line,
                    message: format!("{name}(...) is longer than {MAX_CALL_CHARS} characters"),
                });
            }
            let Some(c) = self.peek() else {
                return Err(LexError {
                    line,
                    message: format!(
                        "unterminated macro call: {name}( is never closed by \")\" \
                         (m4 would swallow the rest of the file)"
                    ),
                });
            };
            match c {
                '`' => arg.push_str(&self.quoted()?),
                '(' => {
                    depth += 1;
                    arg.push(c);
                    self.bump();
                }
                ')' => {
                    self.bump();
                    depth -= 1;
                    if depth == 0 {
                        args.push(arg);
                        return Ok(args);
                    }
                    arg.push(c);
                }
                ',' if depth == 1 => {
                    self.bump();
                    if args.len() + 1 >= MAX_ARGS {
                        return Err(LexError {
                            line,
                            message: format!("{name}(...) has more than {MAX_ARGS} arguments"),
                        });
                    }
                    args.push(std::mem::take(&mut arg));
                    self.skip_blanks();
                }
                c if is_word_start(c) => {
                    let word_start = self.pos;
                    while self.peek().is_some_and(is_word_char) {
                        self.bump();
                    }
                    let word: String = self.chars[word_start..self.pos].iter().collect();
                    if word == "dnl" {
                        // m4 expands `dnl` in an argument too: the rest of the line goes.
                        while self.peek().is_some_and(|c| c != '\n') {
                            self.bump();
                        }
                        self.bump();
                    } else {
                        arg.push_str(&word);
                    }
                }
                c => {
                    arg.push(c);
                    self.bump();
                }
            }
        }
    }

    /// m4 drops the white space (newlines included) before an argument.
    fn skip_blanks(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn push_stray(&mut self, line: usize, text: &str) {
        if self.stray.as_ref().is_some_and(|(l, _)| *l != line) {
            self.flush_stray();
        }
        let gap = std::mem::take(&mut self.gap);
        let (_, buf) = self.stray.get_or_insert_with(|| (line, String::new()));
        if buf.len() >= MAX_STRAY_CHARS {
            return;
        }
        // Pieces of a line are shown as written, one space where there was white space.
        if !buf.is_empty() && gap {
            buf.push(' ');
        }
        buf.push_str(text);
        if buf.len() >= MAX_STRAY_CHARS {
            let mut cut = MAX_STRAY_CHARS;
            while !buf.is_char_boundary(cut) {
                cut -= 1;
            }
            buf.truncate(cut);
            buf.push_str("...");
        }
    }

    fn flush_stray(&mut self) {
        if let Some((line, text)) = self.stray.take() {
            self.push(Item::Stray { line, text });
        }
    }

    /// Keeps `item`, up to [`MAX_ITEMS`]; past that notes where reading must stop.
    fn push(&mut self, item: Item) {
        if self.out.len() < MAX_ITEMS {
            self.out.push(item);
        } else if self.overflow.is_none() {
            self.overflow = Some(match item {
                Item::Call(c) => c.line,
                Item::Stray { line, .. } | Item::AfterDnl { line, .. } => line,
            });
        }
    }
}

/// The error for an input past [`MAX_ITEMS`], at the line of the first item not kept.
fn too_many(line: usize) -> LexError {
    LexError {
        line,
        message: format!(
            "more than {MAX_ITEMS} macro calls and lines of other text: not a sendmail.mc (one \
             has a few dozen)"
        ),
    }
}

fn is_word_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Macros of Sendmail's cf that are used without parentheses.
fn is_bare_macro(name: &str) -> bool {
    matches!(
        name,
        "LOCAL_CONFIG"
            | "LOCAL_RULESETS"
            | "LOCAL_RULE_0"
            | "LOCAL_RULE_1"
            | "LOCAL_RULE_2"
            | "LOCAL_RULE_3"
            | "LOCAL_NET_CONFIG"
            | "LOCAL_SRV_FEATURES"
            | "LOCAL_CLT_FEATURES"
            | "LOCAL_TRY_TLS"
            | "LOCAL_TLS_RCPT"
            | "LOCAL_TLS_CLIENT"
            | "LOCAL_TLS_SERVER"
    )
}

/// Whether discarded text holds something like `FEATURE(` or `define(`.
fn looks_like_call(text: &str) -> bool {
    [
        "FEATURE(",
        "define(",
        "DAEMON_OPTIONS(",
        "MAILER(",
        "OSTYPE(",
    ]
    .iter()
    .any(|m| text.contains(m))
}

/// Source text on one line (newlines and tabs as spaces), cut to 160 characters.
fn one_line(chars: &[char]) -> String {
    let mut s = String::new();
    for &c in chars.iter().take(160) {
        s.push(if c == '\n' || c == '\t' || c == '\r' {
            ' '
        } else {
            c
        });
    }
    if chars.len() > 160 {
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, args: &[&str], line: usize) -> Item {
        Item::Call(Call {
            name: name.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            parens: true,
            line,
            text: String::new(),
        })
    }

    /// The items with the calls' `text` blanked (it is for messages only).
    fn lexed(src: &str) -> (Vec<Item>, Option<LexError>) {
        let (items, err) = items(src);
        let items = items
            .into_iter()
            .map(|i| match i {
                Item::Call(c) => Item::Call(Call {
                    text: String::new(),
                    ..c
                }),
                other => other,
            })
            .collect();
        (items, err)
    }

    #[test]
    fn calls_quotes_and_dnl() {
        let table: &[(&str, &[Item])] = &[
            (
                "FEATURE(`greet_pause', `5000')dnl\n",
                &[call("FEATURE", &["greet_pause", "5000"], 1)],
            ),
            // The leading blanks of an argument go (newline included); trailing ones stay.
            (
                "FEATURE(`access_db',\n\n`hash -o -T<TMPF> /etc/mail/access')\nX",
                &[
                    call(
                        "FEATURE",
                        &["access_db", "hash -o -T<TMPF> /etc/mail/access"],
                        1,
                    ),
                    Item::Stray {
                        line: 4,
                        text: "X".into(),
                    },
                ],
            ),
            (
                "FEATURE(`ratecontrol', ,`terminate')",
                &[call("FEATURE", &["ratecontrol", "", "terminate"], 1)],
            ),
            ("define(`a', 5 )", &[call("define", &["a", "5 "], 1)]),
            // Nested quotes keep their inner quotes.
            (
                "define(`confDEF_USER_ID',``8:12'')",
                &[call("define", &["confDEF_USER_ID", "`8:12'"], 1)],
            ),
            // Unquoted words in arguments are kept as written; parentheses nest.
            (
                "FEATURE(access_db)\nx(a(b),c)",
                &[
                    call("FEATURE", &["access_db"], 1),
                    call("x", &["a(b)", "c"], 2),
                ],
            ),
            // dnl discards the rest of the line, even a call; a scraped call is noted.
            (
                "FEATURE(`access_db')dnl FEATURE(`ratecontrol', ,`terminate')dnl\n",
                &[
                    call("FEATURE", &["access_db"], 1),
                    Item::AfterDnl {
                        line: 1,
                        text: "FEATURE(`ratecontrol', ,`terminate')dnl".into(),
                    },
                ],
            ),
            // `dnlwhere` is a word, not dnl.
            (
                "define(`x',`1')dnlwhere secs is\n",
                &[
                    call("define", &["x", "1"], 1),
                    Item::Stray {
                        line: 1,
                        text: "dnlwhere secs is".into(),
                    },
                ],
            ),
            // Comments, and bare macros.
            (
                "# FEATURE(`x')\nLOCAL_CONFIG\n",
                &[Item::Call(Call {
                    name: "LOCAL_CONFIG".into(),
                    args: vec![],
                    parens: false,
                    line: 2,
                    text: String::new(),
                })],
            ),
            (
                "...other configuration lines can go here...\n",
                &[Item::Stray {
                    line: 1,
                    text: "...other configuration lines can go here...".into(),
                }],
            ),
            (
                "`hash -o /etc/mail/access')\n",
                &[Item::Stray {
                    line: 1,
                    text: "`hash -o /etc/mail/access')".into(),
                }],
            ),
        ];
        for (src, want) in table {
            let (got, err) = lexed(src);
            assert_eq!(err, None, "{src:?}");
            assert_eq!(&got, want, "{src:?}");
        }
    }

    #[test]
    fn malformed_input_is_an_error_with_its_line() {
        let table: &[(&str, usize, &str)] = &[
            (
                "x\nFEATURE(`greet_pause', `5000)\n",
                2,
                "unterminated quote",
            ),
            (
                "\n\nFEATURE(`greet_pause'\n",
                3,
                "unterminated macro call: FEATURE(",
            ),
            ("define(`a', (b)", 1, "unterminated macro call"),
        ];
        for &(src, line, message) in table {
            let (_, err) = lexed(src);
            let err = err.unwrap_or_else(|| panic!("{src:?}: no error"));
            assert_eq!(err.line, line, "{src:?}");
            assert!(err.message.starts_with(message), "{src:?}: {}", err.message);
        }
    }

    #[test]
    fn statements_are_bounded() {
        // Each line of junk is an item, a diagnostic and a TOML comment: without a bound, a
        // 4 MiB file of "a\n" held half a GiB.
        let (items, err) = lexed(&"a\n".repeat(MAX_ITEMS + 10));
        assert_eq!(items.len(), MAX_ITEMS);
        let err = err.expect("an error past the bound");
        assert_eq!(err.line, MAX_ITEMS + 1);
        assert!(err.message.contains("more than"), "{}", err.message);
        // A real .mc is far below it.
        let (items, err) = lexed(&"FEATURE(`x')dnl\n".repeat(MAX_ITEMS));
        assert_eq!((items.len(), err), (MAX_ITEMS, None));
    }

    #[test]
    fn bounds_hold() {
        let many = format!("x({})", ",".repeat(MAX_ARGS + 5));
        assert!(lexed(&many).1.unwrap().message.contains("more than"));
        let long = format!("x(`{}')", "a".repeat(MAX_CALL_CHARS + 10));
        assert!(lexed(&long).1.is_some());
        let stray = "~ ".repeat(MAX_STRAY_CHARS * 2);
        let (items, _) = lexed(&stray);
        match &items[..] {
            [Item::Stray { text, .. }] => assert!(text.len() <= MAX_STRAY_CHARS + 3),
            other => panic!("{other:?}"),
        }
    }
}
