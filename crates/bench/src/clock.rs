//! The one place in the bench tool that reads the clock.
//!
//! Every other module asks `now()` / `unix_now()` here instead of calling
//! `Instant::now` or `SystemTime::now` (both are disallowed by clippy.toml).
//! It must not sleep, block or keep any state.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Monotonic time, for deadlines and latencies.
#[allow(clippy::disallowed_methods)]
pub(crate) fn now() -> Instant {
    Instant::now()
}

/// Wall time since the Unix epoch, for the `Date:` header and Message-IDs only.
#[allow(clippy::disallowed_methods)]
pub(crate) fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// A tokio deadline for the given instant (tokio timers take their own type).
pub(crate) fn tokio_at(at: Instant) -> tokio::time::Instant {
    tokio::time::Instant::from_std(at)
}
