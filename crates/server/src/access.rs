//! The access map file: loaded at start, on SIGHUP and whenever the file changes.
//!
//! Role: read the Sendmail `access` source file named by `[access] file` and hand it to the
//! pure parser (`portcullis_policy::access`); watch it for changes (a stat every
//! `watch_interval`: mtime, size and inode, so editors that replace the file are seen) and swap
//! the new map in atomically with the rest of the runtime. Sendmail re-opens its map in every
//! connection's child, so an admin who runs `makemap` sees the change at once; we match that
//! without a per-connection read.
//!
//! Must not: keep a bad map: at start-up a bad or unreadable file stops the server (every
//! error with file:line), at reload the old map stays and the failure is logged once per
//! version of the file. Parsing a large map runs on a blocking thread, never on the event loop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use portcullis_policy::access::{AccessMap, Diagnostic};
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::state::Shared;
use crate::telemetry::{Event, Telemetry};

/// What identifies one version of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    /// The file's current stamp; None when it cannot be read.
    pub fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: meta.ino(),
        })
    }
}

/// A loaded map with what it was loaded from.
#[derive(Debug)]
pub struct LoadedMap {
    /// The map (empty when no file is configured).
    pub map: Arc<AccessMap>,
    /// Questionable lines.
    pub warnings: Vec<Diagnostic>,
    /// The file's stamp when it was read.
    pub stamp: Option<FileStamp>,
    /// How long reading and parsing took.
    pub took: Duration,
}

/// A map that cannot be used, with every problem as `file:line: message`.
#[derive(Debug)]
pub struct MapError(pub Vec<String>);

impl std::fmt::Display for MapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the access map cannot be used:")?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for MapError {}

/// Reads and parses `path` (None = an empty map). Errors are rendered `file:line: message`.
pub fn load(path: Option<&Path>) -> Result<LoadedMap, Vec<String>> {
    let Some(path) = path else {
        return Ok(LoadedMap {
            map: Arc::new(AccessMap::default()),
            warnings: Vec::new(),
            stamp: None,
            took: Duration::ZERO,
        });
    };
    let started = clock::now();
    let stamp = FileStamp::of(path);
    let text = std::fs::read(path).map_err(|e| {
        vec![format!(
            "{}: cannot read the access map: {e}",
            path.display()
        )]
    })?;
    let parsed = AccessMap::parse(&path.display().to_string(), &text)
        .map_err(|diags| diags.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    Ok(LoadedMap {
        map: Arc::new(parsed.map),
        warnings: parsed.warnings,
        stamp,
        took: clock::now().saturating_duration_since(started),
    })
}

/// Logs a successful load: each warning, then the summary.
pub fn report_loaded(t: &Telemetry, path: &Path, loaded: &LoadedMap) {
    for w in &loaded.warnings {
        t.emit(Event::AccessMapWarning {
            diagnostic: &w.to_string(),
        });
    }
    t.emit(Event::AccessMapLoaded {
        path: &path.display().to_string(),
        entries: loaded.map.len(),
        warnings: loaded.warnings.len(),
        millis: loaded.took.as_millis(),
    });
}

/// Watches the configured file and swaps in each new version that parses.
pub async fn watch(shared: Arc<Shared>, shutdown: CancellationToken) {
    // The last version we tried and failed to load, so a bad file is reported once.
    let mut failed: Option<(PathBuf, Option<FileStamp>)> = None;
    loop {
        let (path, interval, loaded_stamp) = {
            let rt = shared.runtime.load();
            (
                rt.config.access.file.clone(),
                rt.config.access.watch_interval,
                rt.access_stamp,
            )
        };
        let pause = if interval.is_zero() {
            Duration::from_secs(1) // Only to notice a reload that turns watching on.
        } else {
            interval
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        let Some(path) = path else { continue };
        if interval.is_zero() {
            continue;
        }
        let now = FileStamp::of(&path);
        let tried = failed
            .as_ref()
            .is_some_and(|(p, s)| p == &path && *s == now);
        if now == loaded_stamp || tried {
            continue;
        }
        let reader = path.clone();
        match tokio::task::spawn_blocking(move || load(Some(&reader))).await {
            Ok(Ok(loaded)) => {
                failed = None;
                report_loaded(&shared.telemetry, &path, &loaded);
                shared.replace_access(&path, loaded);
            }
            Ok(Err(errors)) => {
                failed = Some((path.clone(), now));
                shared.telemetry.emit(Event::AccessMapReloadFailed {
                    path: &path.display().to_string(),
                    error: &errors.join("; "),
                });
            }
            Err(_) => {} // The blocking pool is shutting down.
        }
    }
}
