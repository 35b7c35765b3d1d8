//! What a defence does with a finding (design.md principle 4).
//!
//! Role: the one `enforce | drop | ignore` switch every defence has. It lives here because
//! the session applies it to the defences it runs itself (open-proxy probes, recipient
//! limits, stuffing, pipelining, command abuse); the configuration crate re-exports it.

/// A defence's action, set per defence in the configuration (`action = "enforce"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Action {
    /// Sendmail's behaviour.
    #[default]
    Enforce,
    /// Close the connection. What the client hears first is the defence's to say:
    /// `greet_pause` sends its 554; the others send nothing.
    Drop,
    /// Log only; the session goes on as if nothing happened.
    Ignore,
}

impl Action {
    /// The name in the configuration and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Drop => "drop",
            Self::Ignore => "ignore",
        }
    }
}
