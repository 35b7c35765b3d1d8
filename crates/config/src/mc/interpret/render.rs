//! The translated keys and their TOML text.
//!
//! Role: hold each key once (a later value replaces an earlier one, as m4's `define` does),
//! with the comments that explain it, and write them in the order docs/config.md lists
//! sections and keys, followed by the list of what was not translated.
//! Must not: write a key outside [`KEYS`] (the config would refuse it as unknown) or a
//! comment with a control character (TOML refuses those).

use super::super::printable;

/// Every key the translation may write, in the order they are written.
const KEYS: [(&str, &str); 34] = [
    ("server", "hostname"),
    ("server", "listen"),
    ("server", "max_message_bytes"),
    ("smtp", "delay_checks"),
    ("timeouts", "initial"),
    ("timeouts", "helo"),
    ("timeouts", "mail"),
    ("timeouts", "rcpt"),
    ("timeouts", "datainit"),
    ("timeouts", "datablock"),
    ("timeouts", "datafinal"),
    ("timeouts", "rset"),
    ("timeouts", "quit"),
    ("timeouts", "misc"),
    ("timeouts", "command"),
    ("timeouts", "starttls"),
    ("queue", "retry_min"),
    ("queue", "lifetime"),
    ("queue", "max_connections"),
    ("greet_pause", "default"),
    ("access", "file"),
    ("rate_control", "window"),
    ("rate_control", "terminate"),
    ("rate_control", "action"),
    ("conn_control", "terminate"),
    ("conn_control", "action"),
    ("limits", "connection_rate_throttle"),
    ("limits", "max_sessions"),
    ("limits", "max_recipients_per_message"),
    ("limits", "bad_rcpt_throttle"),
    ("limits", "max_noop_commands"),
    ("load", "refuse_la"),
    ("load", "delay_la"),
    ("load", "queue_la"),
];

/// Bound on the "not translated" list in the TOML (stderr has them all).
const MAX_TRAILER: usize = 200;

#[derive(Debug)]
struct Setting {
    key: (&'static str, &'static str),
    value: String,
    line: usize,
    comments: Vec<String>,
}

/// The keys translated so far.
#[derive(Debug, Default)]
pub(crate) struct Out {
    settings: Vec<Setting>,
    trailer: Vec<String>,
}

fn order(key: (&str, &str)) -> usize {
    KEYS.iter().position(|k| *k == key).unwrap_or(usize::MAX)
}

impl Out {
    /// Sets `key`; returns the line of the value it replaces, if any.
    pub(crate) fn set(
        &mut self,
        key: (&'static str, &'static str),
        value: String,
        line: usize,
        comments: Vec<String>,
    ) -> Option<usize> {
        debug_assert!(order(key) != usize::MAX, "{key:?} is not in KEYS");
        let setting = Setting {
            key,
            value,
            line,
            comments,
        };
        match self.settings.iter_mut().find(|s| s.key == key) {
            Some(old) => Some(std::mem::replace(old, setting).line),
            None => {
                self.settings.push(setting);
                None
            }
        }
    }

    /// Adds a line to the "not translated" list.
    pub(crate) fn trailer(&mut self, line: usize, message: &str) {
        if self.trailer.len() < MAX_TRAILER {
            self.trailer.push(format!("line {line}: {message}"));
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.settings.len()
    }

    pub(crate) fn render(&self, origin: &str) -> String {
        let mut out = format!(
            "# Portcullis configuration translated from {} by `portcullis import sendmail-mc`.\n\
             # Check it with `portcullis check-config --config FILE`. Keys not written keep\n\
             # Portcullis's defaults (docs/config.md); each comment names the .mc line used.\n",
            printable(origin)
        );
        let mut settings: Vec<&Setting> = self.settings.iter().collect();
        settings.sort_by_key(|s| order(s.key));
        let mut section = "";
        for s in settings {
            if s.key.0 != section {
                section = s.key.0;
                out.push_str(&format!("\n[{section}]\n"));
            }
            for c in &s.comments {
                out.push_str(&format!("# {}\n", printable(c)));
            }
            out.push_str(&format!("{} = {}\n", s.key.1, s.value));
        }
        if !self.trailer.is_empty() {
            out.push_str(&format!("\n# Not translated from {}:\n", printable(origin)));
            for t in &self.trailer {
                out.push_str(&format!("# {}\n", printable(t)));
            }
        }
        out
    }
}
