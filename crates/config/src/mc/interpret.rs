//! What the macros of a `sendmail.mc` mean, and the TOML they become.
//!
//! Role: walk the lexed items in order, keeping the state m4 keeps that matters here (which
//! features are defined so far: `access_db`, `delay_checks`, `greet_pause`, a `MAILER`), so
//! the ordering diagnostics come out exactly as Sendmail's m4 files print them; collect each
//! translated key with the comment that explains it; decide the keys that depend on the
//! whole file at the end (`finish`).
//! Must not: panic; write a value our configuration would refuse (each is brought into
//! range with a warning, or not written).
//! Invariants: the texts pushed to `m4` are Sendmail 8.17's errprint texts verbatim
//! (cf/feature/{greet_pause,access_db,ratecontrol,conncontrol,delay_checks}.m4 and
//! cf/m4/cfhead.m4), newline or not as there.

use super::lex::{Call, Item, LexError};
use super::values::{self, AccessDb, Daemon};
use super::{McDiagnostic, McKind, McOptions, Translation, printable};
use crate::names::check_hostname;

mod features;
mod render;

use render::Out;

/// A key of our configuration: (section, key).
type Key = (&'static str, &'static str);

/// A `FEATURE(ratecontrol)` or `FEATURE(conncontrol)` as m4 understood it.
#[derive(Clone, Debug)]
struct Control {
    line: usize,
    /// `access_db` came first, so the feature is in the generated .cf at all.
    active: bool,
    /// `terminate`: 421 and close, else 452 and the null-server mode.
    terminate: bool,
    /// `nodelay` with `delay_checks` before it: checked at connection time.
    immediate: bool,
}

/// `FEATURE(greet_pause)` as m4 understood it.
#[derive(Clone, Debug)]
struct Greet {
    line: usize,
    arg: String,
    /// No `access_db` yet: the ruleset is a fixed `$# value`, entries are never looked up.
    before_access: bool,
}

pub(super) struct Interp<'a> {
    origin: &'a str,
    options: &'a McOptions,
    m4: String,
    diags: Vec<McDiagnostic>,
    out: Out,
    access_db: Option<(usize, Option<AccessDb>)>,
    delay_checks: Option<(usize, &'static str)>,
    greet: Option<Greet>,
    rate: Option<Control>,
    conn: Option<Control>,
    mailer: bool,
    ostype: bool,
    /// `_SPAM_FRIEND_` / `_SPAM_HATER_`: some delay_checks said friend / hater.
    spam_friend: bool,
    spam_hater: bool,
    no_default_msa: bool,
    daemons: Vec<(usize, Daemon)>,
}

/// Translates the items; `lex_error` (if any) is where reading stopped.
pub(super) fn run(
    items: &[Item],
    lex_error: Option<LexError>,
    origin: &str,
    options: &McOptions,
) -> Translation {
    let mut it = Interp {
        origin,
        options,
        m4: String::new(),
        diags: Vec::new(),
        out: Out::default(),
        access_db: None,
        delay_checks: None,
        greet: None,
        rate: None,
        conn: None,
        mailer: false,
        ostype: false,
        spam_friend: false,
        spam_hater: false,
        no_default_msa: false,
        daemons: Vec::new(),
    };
    for item in items {
        match item {
            Item::Call(call) => it.call(call),
            Item::Stray { line, text } => {
                it.not_translated(*line, format!("{} (not a macro call)", printable(text)))
            }
            Item::AfterDnl { line, text } => it.not_translated(
                *line,
                format!(
                    "{} (after `dnl` on the same line: m4 discards it, so Sendmail never saw \
                     it; put it on a line of its own)",
                    printable(text)
                ),
            ),
        }
    }
    match lex_error {
        Some(e) => it.diag(
            e.line,
            McKind::Error,
            format!("{}; reading stopped here", e.message),
        ),
        // m4 stops at such an error; only a file read to its end gets proto.m4's checks.
        None => it.proto_checks(),
    }
    it.finish();
    let keys = it.out.len();
    Translation {
        toml: it.out.render(origin),
        m4_stderr: it.m4,
        diagnostics: it.diags,
        keys,
    }
}

impl Interp<'_> {
    fn diag(&mut self, line: usize, kind: McKind, message: String) {
        self.diags.push(McDiagnostic {
            line,
            kind,
            message,
        });
    }

    fn not_translated(&mut self, line: usize, message: String) {
        self.out.trailer(line, &message);
        self.diag(line, McKind::NotTranslated, message);
    }

    /// An errprint of Sendmail's m4 files: the exact text to `m4`, and our own line (an
    /// error for an `*** ERROR`, a warning otherwise).
    fn m4(&mut self, line: usize, text: &str, explanation: &str) {
        let kind = if text.starts_with("*** ERROR") {
            McKind::Error
        } else {
            McKind::Warning
        };
        self.m4_as(kind, line, text, explanation);
    }

    fn m4_as(&mut self, kind: McKind, line: usize, text: &str, explanation: &str) {
        self.m4.push_str(text);
        let first = text.lines().next().unwrap_or_default();
        self.diag(line, kind, format!("m4 prints {first:?}: {explanation}"));
    }

    /// The checks cf/m4/proto.m4 makes once the whole file is read, in its order.
    fn proto_checks(&mut self) {
        if !self.ostype {
            // Only a warning here: OSTYPE picks Sendmail's own file paths, nothing we use.
            self.m4_as(
                McKind::Warning,
                1,
                "*** ERROR: No system type defined (use OSTYPE macro)\n",
                "Sendmail needs OSTYPE for its file paths; nothing to translate (not an error \
                 for this translation)",
            );
        }
        let line = self.delay_checks.map_or(1, |(line, _)| line);
        if (self.spam_friend || self.spam_hater) && self.access_db.is_none() {
            self.m4(
                line,
                "*** ERROR: FEATURE(`delay_checks', `argument') requires FEATURE(`access_db')\n",
                "Spam:FRIEND and Spam:HATER entries live in the access map",
            );
        }
        if self.spam_friend && self.spam_hater {
            self.m4(
                line,
                "*** ERROR: define either Hater or Friend -- not both.\n",
                "FEATURE(`delay_checks') was given both `friend` and `hater`",
            );
        }
    }

    fn call(&mut self, call: &Call) {
        let arg = |i: usize| call.args.get(i).map(String::as_str).unwrap_or_default();
        match call.name.as_str() {
            "FEATURE" => self.feature(call),
            "define" => self.define(call),
            "DAEMON_OPTIONS" => self.daemon_options(call),
            "MAILER" => {
                self.mailer = true;
                match arg(0).trim() {
                    "local" | "smtp" => {}
                    _ => self.not_translated(
                        call.line,
                        format!(
                            "{} (Portcullis delivers to Maildir and relays by SMTP/LMTP; \
                             see [[route]])",
                            printable(&call.text)
                        ),
                    ),
                }
            }
            // m4 housekeeping and the platform's paths: nothing to configure.
            "OSTYPE" => self.ostype = true,
            "divert" | "VERSIONID" | "dnl" => {}
            "include" if arg(0).contains("cf.m4") => {}
            _ => {
                let reason = other_macro_reason(&call.name);
                self.not_translated(call.line, format!("{} ({reason})", printable(&call.text)));
            }
        }
    }

    /// `define(`name', `value')`.
    fn define(&mut self, call: &Call) {
        let name = call.args.first().map(|s| s.trim()).unwrap_or_default();
        let value = call.args.get(1).map(String::as_str).unwrap_or_default();
        let line = call.line;
        // `source` heads the key's comment; messages name the call itself (`text`).
        let text = printable(&call.text);
        let source = format!("{}:{line}: {text}", self.origin);
        if !name.starts_with("conf") || value.trim().is_empty() {
            let reason = if name.starts_with("conf") {
                "empty value: Sendmail keeps its default".to_owned()
            } else {
                other_define_reason(name)
            };
            self.not_translated(line, format!("{} ({reason})", printable(&call.text)));
            return;
        }
        match name {
            "confDOMAIN_NAME" => self.hostname(line, value, &source),
            "confCONNECTION_RATE_THROTTLE" => {
                self.count(
                    line,
                    value,
                    &source,
                    ("limits", "connection_rate_throttle"),
                    4_294_967_295,
                );
            }
            "confMAX_DAEMON_CHILDREN" => {
                self.count(
                    line,
                    value,
                    &source,
                    ("limits", "max_sessions"),
                    4_294_967_295,
                );
            }
            "confMAX_RCPTS_PER_MESSAGE" => {
                self.count(
                    line,
                    value,
                    &source,
                    ("limits", "max_recipients_per_message"),
                    1000,
                );
            }
            "confBAD_RCPT_THROTTLE" => {
                self.count(
                    line,
                    value,
                    &source,
                    ("limits", "bad_rcpt_throttle"),
                    1_000_000,
                );
            }
            "confMAX_NOOP_COMMANDS" => {
                self.count(
                    line,
                    value,
                    &source,
                    ("limits", "max_noop_commands"),
                    10_000,
                );
            }
            "confQUEUE_LA" => self.count(line, value, &source, ("load", "queue_la"), 10_000),
            "confREFUSE_LA" => self.count(line, value, &source, ("load", "refuse_la"), 10_000),
            "confDELAY_LA" => self.count(line, value, &source, ("load", "delay_la"), 10_000),
            "confMAX_MESSAGE_SIZE" => self.message_size(line, value, &source),
            "confCONNECTION_RATE_WINDOW_SIZE" => self.window(line, value, &source),
            "confMAX_QUEUE_CHILDREN" => self.queue_children(line, value, &source),
            "confMIN_QUEUE_AGE" => {
                self.time(line, value, &source, ("queue", "retry_min"), 'm');
            }
            _ => match timeout_key(name) {
                Some(Ok((key, unit))) => self.time(line, value, &source, key, unit),
                Some(Err(reason)) => {
                    self.not_translated(line, format!("{} ({reason})", printable(&call.text)));
                }
                None => {
                    let reason = other_define_reason(name);
                    self.not_translated(line, format!("{} ({reason})", printable(&call.text)));
                }
            },
        }
    }

    fn hostname(&mut self, line: usize, value: &str, source: &str) {
        let name = value.trim();
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.contains('$') {
            self.not_translated(
                line,
                format!(
                    "confDOMAIN_NAME {:?} (holds Sendmail macros, expanded at run time; set \
                     server.hostname to the name itself)",
                    printable(name)
                ),
            );
            return;
        }
        if let Err(why) = check_hostname(name) {
            self.not_translated(
                line,
                format!("confDOMAIN_NAME {:?} ({why})", printable(name)),
            );
            return;
        }
        let value = values::toml_string(name);
        self.set(line, ("server", "hostname"), value, vec![source.to_owned()]);
    }

    /// A count read with `strtol`: 0 or negative is Sendmail's "off" (ours too), above
    /// `max` is brought down with a warning.
    fn count(&mut self, line: usize, value: &str, source: &str, key: Key, max: i64) {
        let (n, odd) = values::strtol(value);
        let mut comments = vec![source.to_owned()];
        if odd {
            let msg = format!(
                "{:?} is not a plain number; Sendmail reads it as {n} (strtol), and so does this",
                printable(value)
            );
            self.diag(line, McKind::Warning, msg.clone());
            comments.push(msg);
        }
        let n = if n < 0 {
            comments.push(format!("{n}: negative is off in Sendmail, 0 here"));
            0
        } else if n > max {
            let msg = format!(
                "{n} is over Portcullis's limit for `{}.{}`; {max} written",
                key.0, key.1
            );
            self.diag(line, McKind::Warning, msg.clone());
            comments.push(msg);
            max
        } else {
            n
        };
        self.set(line, key, n.to_string(), comments);
    }

    fn message_size(&mut self, line: usize, value: &str, source: &str) {
        let (n, odd) = values::strtol(value);
        if odd {
            self.diag(
                line,
                McKind::Warning,
                format!(
                    "{:?} is not a plain number of bytes; Sendmail reads it as {n} (atol)",
                    printable(value)
                ),
            );
        }
        if n <= 0 {
            self.not_translated(
                line,
                format!(
                    "confMAX_MESSAGE_SIZE {n} (no limit in Sendmail; Portcullis always has one: \
                     server.max_message_bytes keeps its default of 10 MiB)"
                ),
            );
            return;
        }
        self.set(
            line,
            ("server", "max_message_bytes"),
            n.to_string(),
            vec![source.to_owned()],
        );
    }

    /// A Sendmail time value (`convtime`) for a key that must be greater than zero.
    fn time(&mut self, line: usize, value: &str, source: &str, key: Key, unit: char) {
        match values::convtime(value, unit) {
            Err(why) => self.diag(line, McKind::Error, format!("{}: {why}", call_text(source))),
            Ok(0) => self.not_translated(
                line,
                format!(
                    "{} (0 turns this wait off in Sendmail; Portcullis always bounds it, so \
                     `{}.{}` keeps its default)",
                    call_text(source),
                    key.0,
                    key.1
                ),
            ),
            Ok(secs) => {
                let mut comments = vec![source.to_owned()];
                if value.trim().bytes().all(|b| b.is_ascii_digit()) {
                    comments.push(format!(
                        "a bare number is in {} here, as Sendmail reads it",
                        unit_name(unit)
                    ));
                }
                if key.0 == "timeouts" {
                    comments.push(
                        "Sendmail times its client side with most of these; Portcullis uses the \
                         name for the same step of the server side (docs/config.md)"
                            .to_owned(),
                    );
                }
                let ms = secs.saturating_mul(1000);
                self.set(
                    line,
                    key,
                    values::toml_string(&values::duration_ms(ms)),
                    comments,
                );
            }
        }
    }

    fn window(&mut self, line: usize, value: &str, source: &str) {
        let secs = match values::convtime(value, 's') {
            Ok(s) => s,
            Err(why) => {
                self.diag(line, McKind::Error, format!("{}: {why}", call_text(source)));
                return;
            }
        };
        let mut comments = vec![source.to_owned()];
        let written = if secs < 6 {
            let msg = format!(
                "{secs} s: Sendmail's bucket (window / 6) is then 0, which it replaces with \
                 10 s, a 60 s window; 60s written"
            );
            self.diag(line, McKind::Warning, msg.clone());
            comments.push(msg);
            60
        } else if secs > 3600 {
            let msg = format!("{secs} s is over Portcullis's 1 h limit; 1h written");
            self.diag(line, McKind::Warning, msg.clone());
            comments.push(msg);
            3600
        } else {
            secs
        };
        let value = values::toml_string(&values::duration_ms(written * 1000));
        self.set(line, ("rate_control", "window"), value, comments);
    }

    fn queue_children(&mut self, line: usize, value: &str, source: &str) {
        let (n, _) = values::strtol(value);
        if n <= 0 {
            self.not_translated(
                line,
                format!("confMAX_QUEUE_CHILDREN {n} (no limit in Sendmail; queue.max_connections keeps its default)"),
            );
            return;
        }
        let n = n.min(10_000);
        let comments = vec![
            source.to_owned(),
            "Sendmail limits queue-runner processes; Portcullis limits relay sessions".to_owned(),
        ];
        self.set(line, ("queue", "max_connections"), n.to_string(), comments);
    }

    fn daemon_options(&mut self, call: &Call) {
        let text = call.args.first().map(String::as_str).unwrap_or_default();
        match values::daemon_options(text) {
            Err(why) => {
                self.not_translated(call.line, format!("{} ({why})", printable(&call.text)))
            }
            Ok((daemon, ignored)) => {
                let msa = daemon.name.as_deref() == Some("MSA")
                    || daemon.addr.port() == 587
                    || daemon.modifiers.contains(['a', 's']);
                if msa {
                    self.not_translated(
                        call.line,
                        format!(
                            "{} (a submission or SMTPS daemon; Portcullis is an MX and serves \
                             plain SMTP only)",
                            printable(&call.text)
                        ),
                    );
                    return;
                }
                if !ignored.is_empty() || !daemon.modifiers.is_empty() {
                    let mut rest = ignored;
                    if !daemon.modifiers.is_empty() {
                        rest.push(format!("M={}", daemon.modifiers));
                    }
                    self.diag(
                        call.line,
                        McKind::Warning,
                        format!(
                            "DAEMON_OPTIONS: {} not translated (listen address only)",
                            printable(&rest.join(", "))
                        ),
                    );
                }
                self.daemons.push((call.line, daemon));
            }
        }
    }

    fn set(&mut self, line: usize, key: Key, value: String, comments: Vec<String>) {
        if let Some(earlier) = self.out.set(key, value, line, comments) {
            self.diag(
                line,
                McKind::Warning,
                format!(
                    "`{}.{}` was already set from line {earlier}; the later value wins, as \
                     with m4's define",
                    key.0, key.1
                ),
            );
        }
    }

    /// The keys that depend on the whole file.
    fn finish(&mut self) {
        self.finish_listen();
        self.finish_access();
        self.finish_greet_pause();
        self.finish_control(true);
        self.finish_control(false);
        if let Some((line, mode)) = self.delay_checks {
            let value = if mode == "true" {
                "true".to_owned()
            } else {
                values::toml_string(mode)
            };
            let comment = format!("{}:{line}: FEATURE(`delay_checks'...)", self.origin);
            self.out
                .set(("smtp", "delay_checks"), value, line, vec![comment]);
        }
    }

    fn finish_listen(&mut self) {
        let mut addrs: Vec<std::net::SocketAddr> = Vec::new();
        let mut comments = Vec::new();
        let mut first_line = 0;
        for (line, d) in std::mem::take(&mut self.daemons) {
            if addrs.contains(&d.addr) {
                self.diag(
                    line,
                    McKind::Warning,
                    format!("{} is already listened on; listed once", d.addr),
                );
                continue;
            }
            if first_line == 0 {
                first_line = line;
            }
            comments.push(format!(
                "{}:{line}: DAEMON_OPTIONS -> {}",
                self.origin, d.addr
            ));
            addrs.push(d.addr);
        }
        if addrs.is_empty() {
            comments.push(
                "no DAEMON_OPTIONS: Sendmail's default daemon listens on port 25 of every IPv4 \
                 address"
                    .to_owned(),
            );
            if !self.no_default_msa {
                comments.push(
                    "(and on 587 as an MSA, without FEATURE(`no_default_msa'); Portcullis \
                     serves no submission port)"
                        .to_owned(),
                );
            }
            addrs.push(std::net::SocketAddr::from(([0, 0, 0, 0], 25)));
        }
        let list: Vec<String> = addrs
            .iter()
            .map(|a| values::toml_string(&a.to_string()))
            .collect();
        self.out.set(
            ("server", "listen"),
            format!("[{}]", list.join(", ")),
            first_line,
            comments,
        );
    }

    fn finish_access(&mut self) {
        let Some((line, Some(db))) = self.access_db.take() else {
            return;
        };
        let mut comments = vec![format!(
            "{}:{line}: FEATURE(`access_db') -> {} map {}",
            self.origin,
            db.map_type,
            if db.stripped_db {
                format!("{}.db", db.file)
            } else {
                db.file.clone()
            }
        )];
        comments.push(format!(
            "Sendmail looks up the map makemap compiles from the text file {}; Portcullis \
             reads that text file itself (no makemap step)",
            db.file
        ));
        if db.tempfail {
            comments.push(
                "-T<TMPF>: Sendmail answers 4xx when a lookup fails temporarily. Portcullis \
                 holds the whole map in memory, so a lookup cannot fail: an unreadable file \
                 stops the start-up, and at a reload the old map stays"
                    .to_owned(),
            );
        }
        if db.optional {
            comments.push(
                "-o: Sendmail runs without the map when it is missing; Portcullis refuses to \
                 start without the file (remove `file` to run with no map)"
                    .to_owned(),
            );
        }
        let file = match &self.options.access_file {
            Some(f) => {
                comments.push(format!(
                    "path given with --access-file (Sendmail's: {})",
                    db.file
                ));
                f.clone()
            }
            None => db.file.clone(),
        };
        self.out.set(
            ("access", "file"),
            values::toml_string(&file),
            line,
            comments,
        );
        self.access_db = Some((line, Some(db)));
    }
}

/// The call in a `source` comment (`ORIGIN:LINE: CALL`), for messages that carry their own
/// `ORIGIN:LINE:` already.
fn call_text(source: &str) -> &str {
    source.split_once(": ").map_or(source, |(_, call)| call)
}

/// The unit name of a `convtime` default unit.
fn unit_name(unit: char) -> &'static str {
    match unit {
        's' => "seconds",
        'h' => "hours",
        'd' => "days",
        _ => "minutes",
    }
}

/// The key of a `confTO_*` define and the default unit of a bare number in it (Sendmail's
/// `settimeout`: minutes, hours for queuewarn, days for queuereturn); `Err(reason)` for the
/// timeouts without an equivalent; `None` when the name is no timeout at all.
fn timeout_key(name: &str) -> Option<Result<(Key, char), &'static str>> {
    let key = |k: &'static str| Some(Ok((("timeouts", k), 'm')));
    let client = "a timeout of Sendmail's client side (delivery to other servers); \
                  Portcullis's relay client uses Sendmail's defaults, fixed";
    match name.strip_prefix("confTO_")? {
        "INITIAL" => key("initial"),
        "HELO" => key("helo"),
        "MAIL" => key("mail"),
        "RCPT" => key("rcpt"),
        "DATAINIT" => key("datainit"),
        "DATABLOCK" => key("datablock"),
        "DATAFINAL" => key("datafinal"),
        "RSET" => key("rset"),
        "QUIT" => key("quit"),
        "MISC" => key("misc"),
        "COMMAND" => key("command"),
        "QUEUERETURN" | "QUEUERETURN_NORMAL" => Some(Ok((("queue", "lifetime"), 'd'))),
        "QUEUERETURN_URGENT" | "QUEUERETURN_NONURGENT" | "QUEUERETURN_DSN" => Some(Err(
            "Portcullis has no message priorities: one queue.lifetime for all (confTO_QUEUERETURN)",
        )),
        q if q.starts_with("QUEUEWARN") => Some(Err(
            "Portcullis sends no \"warning: could not send message for past N hours\" notices",
        )),
        "CONNECT" | "ICONNECT" | "ACONNECT" | "LHLO" | "HOSTSTATUS" => Some(Err(client)),
        "IDENT" => Some(Err("Portcullis makes no IDENT (RFC 1413) queries")),
        "FILEOPEN" => Some(Err(
            "no equivalent (Sendmail's wait to open a file, e.g. over NFS)",
        )),
        "CONTROL" => Some(Err("no equivalent: the control socket answers at once")),
        "STARTTLS" => key("starttls"),
        "AUTH" => Some(Err("Portcullis serves no AUTH")),
        r if r.starts_with("RESOLVER") => Some(Err(
            "Sendmail's resolver retransmission settings; Portcullis bounds a client's whole \
             lookup with dns.timeout",
        )),
        _ => Some(Err("no Portcullis equivalent")),
    }
}

/// Why a `define` of something other than our keys is not translated.
fn other_define_reason(name: &str) -> String {
    match name {
        "SMART_HOST" => {
            "write a [[route]] with domain = \"*\" and next_hop = \"smtp:[host]\"".to_owned()
        }
        "confLOG_LEVEL" => "Portcullis has no log level: every event is logged".to_owned(),
        "confCW_FILE" => "list the domains in local.domains".to_owned(),
        "confPRIVACY_FLAGS" => "no equivalent: VRFY answers 252, EXPN is refused".to_owned(),
        "confDELIVERY_MODE" => {
            "Portcullis always queues, then delivers in the background".to_owned()
        }
        _ => "no Portcullis equivalent".to_owned(),
    }
}

/// Why another macro is not translated.
fn other_macro_reason(name: &str) -> &'static str {
    match name {
        "DOMAIN" => "includes a cf/domain file this tool does not read; translate what it defines",
        "LOCAL_CONFIG" | "LOCAL_RULESETS" | "LOCAL_NET_CONFIG" => {
            "raw sendmail.cf text follows; Portcullis has no rulesets"
        }
        "APPENDDEF" => {
            "a build option of site.config.m4, not of the .mc (for -DPIPELINING=0 the \
             equivalent is smtp.pipelining = false)"
        }
        "MASQUERADE_AS" | "MASQUERADE_DOMAIN" | "EXPOSED_USER" => {
            "no header rewriting in Portcullis"
        }
        "INPUT_MAIL_FILTER" | "MAIL_FILTER" => "Portcullis speaks no milter protocol",
        "LOCAL_DOMAIN" => "list the domain in local.domains",
        "RELAY_DOMAIN" => "list the domain in relay.domains",
        "undefine" => "no Portcullis equivalent",
        "include" | "sinclude" => {
            "includes a file this tool does not read; translate what it defines"
        }
        _ => "not a macro this tool knows",
    }
}
