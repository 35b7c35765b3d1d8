//! `portcullis check-config [--config FILE]`: print every diagnostic as
//! `FILE:LINE:COL: error|warning: message`, then those of the access map the configuration
//! names (`FILE:LINE: message`); exit 0 when valid (warnings allowed), 78 on errors.

use std::path::Path;

use super::{EX_CONFIG, load};

/// Runs the check; returns the exit code.
pub fn run(path: Option<&Path>) -> i32 {
    match load(path) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("{w}");
            }
            let map = crate::access::load(loaded.config.access.file.as_deref());
            match &map {
                Ok(map) => map.warnings.iter().for_each(|w| eprintln!("{w}")),
                Err(errors) => {
                    errors.iter().for_each(|e| eprintln!("{e}"));
                    eprintln!("{} error(s) in the access map", errors.len());
                    return EX_CONFIG;
                }
            }
            println!(
                "{}: configuration OK ({} warning(s))",
                loaded.config.origin,
                loaded.warnings.len()
            );
            0
        }
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            let errors = diags.iter().filter(|d| d.is_error()).count();
            eprintln!("{errors} error(s); configuration not valid");
            EX_CONFIG
        }
    }
}
