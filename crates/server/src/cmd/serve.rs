//! `portcullis serve [--config FILE]`: load (refusing a bad file with its diagnostics and exit
//! 78), then run the server on a multi-threaded runtime until SIGTERM/SIGINT.

use std::path::PathBuf;

use super::{EX_CONFIG, load};

/// Runs the server; returns the exit code.
pub fn run(path: Option<PathBuf>) -> i32 {
    let loaded = match load(path.as_deref()) {
        Ok(l) => l,
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            return EX_CONFIG;
        }
    };
    for w in &loaded.warnings {
        eprintln!("{w}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis: cannot start the runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(crate::serve::run(loaded.config, path)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("portcullis: error: {e:#}");
            if e.downcast_ref::<crate::access::MapError>().is_some() {
                EX_CONFIG
            } else {
                1
            }
        }
    }
}
