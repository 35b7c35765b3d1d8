//! Queue ids: the name of a message in the spool, in logs and in the 250 reply.
//!
//! Role: generate Sendmail-style ids (`YMDhms` in base 60, a sequence number, the pid)
//! and validate ids read back from disk or typed by an operator.
//! Must not: read the clock (the time is an argument) or allow any character that could
//! make an id escape its directory: an id is used directly as a file name.
//! Invariants: a [`QueueId`] is 9..=24 ASCII alphanumerics; ids from one [`QueueIdGen`]
//! are unique unless 12,960,000 are made within one second; ids from the base-60
//! alphabet sort by time within a 60-year cycle, like Sendmail's.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Sendmail's base-60 digits (`0-9A-Za-x`), in ASCII order so ids sort by time.
const ALPHABET: &[u8; 60] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwx";
/// Four base-60 digits of sequence. Sendmail uses fewer, but three (216,000) is less than
/// one fast second of group commit could in principle ask for.
const SEQ_DIGITS: u32 = 4;
const SEQ_MOD: u64 = 60u64.pow(SEQ_DIGITS);
const MIN_LEN: usize = 9;
const MAX_LEN: usize = 24;

/// A validated queue id (also the queue file's name).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(String);

impl QueueId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for QueueId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Why a string is not a queue id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid queue id {input:?}: {reason}")]
pub struct ParseQueueIdError {
    input: String,
    reason: &'static str,
}

impl FromStr for QueueId {
    type Err = ParseQueueIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason| ParseQueueIdError {
            input: s.chars().take(64).collect(),
            reason,
        };
        if !(MIN_LEN..=MAX_LEN).contains(&s.len()) {
            return Err(fail("length must be 9 to 24 characters"));
        }
        if !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(fail("only 0-9, A-Z and a-z are allowed"));
        }
        Ok(Self(s.to_owned()))
    }
}

/// Generates queue ids; shared by all sessions of one process.
#[derive(Debug)]
pub struct QueueIdGen {
    pid: u32,
    seq: AtomicU64,
}

impl QueueIdGen {
    /// A generator for the process `pid` (its last 6 decimal digits go into every id).
    pub fn new(pid: u32) -> Self {
        Self {
            pid,
            seq: AtomicU64::new(0),
        }
    }

    /// The next id for a message received at `unix_secs` (UTC):
    /// 6 base-60 digits `(year-1900)%60, month (0-based), day, hour, minute, second`,
    /// 4 base-60 digits of a sequence counter, then the pid as 6 decimal digits.
    pub fn next(&self, unix_secs: i64) -> QueueId {
        // Relaxed: only uniqueness matters, not ordering with other memory.
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) % SEQ_MOD;
        let mut id = String::with_capacity(16);
        for field in time_fields(unix_secs) {
            id.push(base60(u64::from(field)));
        }
        for i in (0..SEQ_DIGITS).rev() {
            id.push(base60(seq / 60u64.pow(i)));
        }
        id.push_str(&format!("{:06}", self.pid % 1_000_000));
        QueueId(id)
    }
}

fn base60(n: u64) -> char {
    // Index is < 60 by construction; `% 60` keeps it in bounds without a panic path.
    char::from(ALPHABET[(n % 60) as usize])
}

/// `[(year-1900)%60, month0, day, hour, minute, second]`, each < 60.
fn time_fields(unix_secs: i64) -> [u32; 6] {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    // All values are reduced below 60 before narrowing, so the casts cannot truncate.
    [
        (year - 1900).rem_euclid(60) as u32,
        month - 1,
        day,
        (secs / 3600) as u32,
        (secs / 60 % 60) as u32,
        (secs % 60) as u32,
    ]
}

/// Proleptic Gregorian (year, month 1..=12, day 1..=31) of a day count since 1970-01-01.
/// Howard Hinnant's `civil_from_days`: eras of 400 years, March-based years so the
/// leap day is the last day of the year.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn time_prefix_matches_hand_computed_values() {
        // 2026-11-21 11:46:10: 126%60=6 '6', Nov=10 'A', 21 'L', 11 'B', 46 'k', 10 'A'.
        let cases = [
            (1_795_261_570, "6ALBkA"),
            (0, "A01000"),             // 1970-01-01 00:00:00: 70%60=10 'A'
            (951_868_799, "e1TNxx"),   // 2000-02-29 23:59:59 (leap day): 100%60=40 'e'
            (-1, "9BVNxx"),            // 1969-12-31 23:59:59
            (4_102_444_799, "JBVNxx"), // 2099-12-31 23:59:59: 199%60=19 'J'
        ];
        for (secs, want) in cases {
            let id = QueueIdGen::new(1).next(secs);
            assert_eq!(&id.as_str()[..6], want, "unix {secs}");
        }
    }

    #[test]
    fn full_id_layout() {
        let generator = QueueIdGen::new(1_234_567);
        assert_eq!(generator.next(1_795_261_570).as_str(), "6ALBkA0000234567");
        assert_eq!(generator.next(1_795_261_570).as_str(), "6ALBkA0001234567");
        let generator = QueueIdGen::new(42);
        for _ in 0..61 {
            generator.next(0);
        }
        assert_eq!(generator.next(0).as_str(), "A010000011000042");
    }

    #[test]
    fn civil_dates_agree_with_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        assert_eq!(civil_from_days(-719_468), (0, 3, 1));
    }

    #[test]
    fn generated_ids_are_valid_and_unique_within_one_second() {
        let generator = QueueIdGen::new(99_999);
        let mut seen = HashSet::with_capacity(300_000);
        for _ in 0..300_000 {
            let id = generator.next(1_795_261_570);
            assert_eq!(id.as_str().parse::<QueueId>().as_ref(), Ok(&id));
            assert!(seen.insert(id));
        }
    }

    #[test]
    fn extreme_times_do_not_panic() {
        for secs in [i64::MIN, i64::MAX, i64::MIN / 2, i64::MAX / 2] {
            let id = QueueIdGen::new(u32::MAX).next(secs);
            assert!(id.as_str().parse::<QueueId>().is_ok(), "{id}");
        }
    }

    #[test]
    fn from_str_rejects_unsafe_names() {
        let long = "a".repeat(25);
        for bad in [
            "",
            "..",
            ".",
            "abc/defghij",
            "../../etc/passwd",
            "abcdefgh",
            &long,
            "abcdefgh.state",
            "abcdefghi\0",
            "abcdéfghi",
            "abc defghi",
        ] {
            assert!(bad.parse::<QueueId>().is_err(), "{bad:?} accepted");
        }
        for good in ["abcdefghi", "6ALBkA0000234567", &"Z".repeat(24)] {
            assert_eq!(
                good.parse::<QueueId>().map(|i| i.to_string()).as_deref(),
                Ok(good)
            );
        }
    }
}
