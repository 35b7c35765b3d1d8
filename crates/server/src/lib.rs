//! Portcullis, the server: the only crate that owns sockets, timers, tasks and files.
//!
//! Role: wire the sans-IO session (`portcullis-smtp`), the pure policy (`portcullis-policy`),
//! the spool (`portcullis-spool`) and the configuration (`portcullis-config`) to the outside
//! world: listeners ([`serve`]), the per-connection driver ([`conn`]), the queue runner and
//! Maildir delivery ([`queue`]), logs ([`telemetry`]), log reports ([`report`]) and the CLI ([`cmd`]).
//!
//! Must not: hold SMTP or policy rules (they live in the crates above) or read the clock
//! outside [`clock`].

pub mod access;
pub mod admission;
pub mod bounce;
pub mod clock;
pub mod cmd;
pub mod conn;
pub mod control;
pub mod dns;
pub mod dsn;
pub mod gate;
pub mod greet;
pub mod hold;
pub mod load;
pub mod metrics;
pub mod metrics_http;
pub mod outbound;
pub mod queue;
pub mod queue_ops;
pub mod relay;
pub mod relay_tls;
pub mod report;
pub mod serve;
pub mod state;
pub mod summary;
pub mod telemetry;
pub mod tls;
