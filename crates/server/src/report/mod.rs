//! Reports over our logs and Sendmail's: `portcullis report greet-pause` (issue 7).
//!
//! Role: answer "is the greeting pause the right length?" from the logs alone, as the seed's
//! Perl histogram script did for Sendmail 8.14 (seeds/002), plus what the seed could not:
//! percentiles of the early talkers' delays and what a shorter or longer pause would catch
//! and cost.
//!
//! Layout, sans-IO apart from the PNG file: [`scan`] finds the lines in byte chunks,
//! [`parse`] reads one line, [`stats`] combines them (each client counted once; the rule is in
//! its header), [`render`] writes the text, [`chart`] draws SVG/PNG. The command itself
//! (reading files, `.gz`, exit codes) is `cmd/report.rs`.
//!
//! Must not: read the clock or the network, or hold memory that grows with the log: every
//! map is bounded by the range of its keys or by a constant (see [`stats`]).

pub mod chart;
pub mod parse;
pub mod render;
pub mod scan;
pub mod stats;

pub use scan::{Counts, Scanner};
pub use stats::Analysis;
