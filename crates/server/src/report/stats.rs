//! The greet-pause report's numbers: the seed's histogram, the early talkers' delays, the
//! behaved sessions, and from them percentiles and the what-if table.
//!
//! Role: [`Analysis::accept`] takes parsed lines in log order; [`Analysis::finish`] settles
//! what is still waiting; the getters compute the report. Pure: no I/O, no clock.
//!
//! How lines combine (each client counted once):
//! - an early talker is one `pre-greeting traffic ... after N seconds` line: it alone makes
//!   the histogram (the seed's rule) and the early-talker count;
//! - its delay in milliseconds comes from the line itself (our JSON `waited_ms` field), else
//!   from our syslog detail line with the same queue id, else from our `session closed:` line
//!   with the same queue id (`first_input`), else it is the line's whole seconds;
//! - a `session closed:` line with the queue id of a pre-greeting line read before it is
//!   that same early talker and adds nothing else, even when its first byte came after its
//!   pause (the greeting waits for the name lookup, so a client can talk after its pause and
//!   still before the greeting);
//! - a session line whose client talked before its pause (`pause > 0 && first_input <
//!   pause`) without such a pre-greeting line (a log cut in the middle of a session) is an
//!   early talker counted from the session line (its `first_input`, in the histogram
//!   rounded half up as Sendmail rounds) and shown apart ([`Analysis::from_sessions`]);
//! - a `greet_pause` rejection summary's count is early talkers held back (their pre-greeting,
//!   detail and session lines alike): counted, not timed ([`Analysis::held_back`]);
//! - every other session line is a client that behaved, which the what-if's delay columns
//!   are about.
//!
//! Invariants (every map is bounded): histogram keys are at most
//! [`MAX_DELAY_SECS`](super::parse::MAX_DELAY_SECS), delay keys at most
//! [`MAX_DELAY_MS`](super::parse::MAX_DELAY_MS), silent-duration keys below [`MAX_CANDIDATE_MS`]; at most
//! [`MAX_PENDING`] early talkers are remembered by queue id (waiting for their detail or
//! session line, or settled and kept so their session line is known); the oldest is
//! forgotten, settled with what is known, when a new one would pass the bound.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::parse::{Parsed, Session};

/// Largest candidate pause of the what-if table: Sendmail and Portcullis clamp the pause to
/// 300 s.
pub const MAX_CANDIDATE_MS: u64 = 300_000;

/// Early talkers waiting for the line that gives their milliseconds.
pub const MAX_PENDING: usize = 65_536;

/// Sendmail's "after N seconds": whole seconds, rounded half up.
fn sendmail_seconds(ms: u64) -> u64 {
    (ms + 500) / 1000
}

/// An early talker read with its queue id: its milliseconds may still come (until
/// `settled`), and its session line is to be told apart from a behaved client's.
#[derive(Clone, Copy, Debug)]
struct Pending {
    seconds: u64,
    /// Insertion number, to tell a stale queue entry from a re-used queue id.
    seq: u64,
    /// Recorded already (with its milliseconds, or its whole seconds).
    settled: bool,
}

/// Everything counted so far.
#[derive(Debug, Default)]
pub struct Analysis {
    /// The seed's histogram: whole seconds → lines.
    seconds: BTreeMap<u64, u64>,
    /// Sendmail before 8.14: rejections without a delay.
    untimed: u64,
    /// Early talkers' delays, ms → count.
    delays: BTreeMap<u64, u64>,
    /// Early talkers whose delay is exact to the millisecond / only whole seconds.
    timed_ms: u64,
    timed_whole: u64,
    /// The latest early talkers with a queue id (at most [`MAX_PENDING`], oldest
    /// forgotten first; an unsettled one is settled in whole seconds as it goes).
    pending: HashMap<Vec<u8>, Pending>,
    order: VecDeque<(Vec<u8>, u64)>,
    seq: u64,
    sessions: Sessions,
    /// Early talkers known only from their session lines (their pre-greeting line is not
    /// in the input: a log cut in the middle of a session).
    from_sessions: u64,
    /// Early talkers a `greet_pause` rejection summary counted without logging them.
    held_back: u64,
}

/// The session lines, tallied.
#[derive(Debug, Default, Clone)]
pub struct Sessions {
    /// Session lines of early talkers (counted through their pre-greeting lines).
    pub early: u64,
    /// Behaved clients that were paused.
    pub paused: u64,
    /// Clients that were not paused (pass cache, exemption, no pause configured).
    pub unpaused: u64,
    /// Shortest and longest pause in force (ms) among paused sessions (early talkers' too).
    pub min_pause_ms: Option<u64>,
    pub max_pause_ms: Option<u64>,
    /// Paused behaved clients that sent nothing: how long they stayed (ms) → count, kept
    /// only below [`MAX_CANDIDATE_MS`] (a longer stay is never lost to a candidate).
    silent: BTreeMap<u64, u64>,
}

impl Sessions {
    /// All session lines read.
    pub fn total(&self) -> u64 {
        self.early + self.paused + self.unpaused
    }

    /// Paused behaved clients that sent nothing and hung up before `pause_ms`.
    pub fn lost(&self, pause_ms: u64) -> u64 {
        self.silent.range(..pause_ms).map(|(_, n)| n).sum()
    }
}

/// Percentiles of the early talkers' delays, ms (nearest rank).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

/// One row of the what-if table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WhatIf {
    /// The candidate pause, ms.
    pub pause_ms: u64,
    /// Observed early talkers that talked before it.
    pub caught: u64,
    /// The candidate is longer than the pause in force: more clients might have talked
    /// early had they been kept waiting, so `caught` is a lower bound.
    pub lower_bound: bool,
    /// Delay columns, when there are session lines.
    pub delay: Option<DelayCost>,
}

/// What a candidate pause costs the clients that behaved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DelayCost {
    /// Sum of the waits of the behaved clients that stay, ms.
    pub total_ms: u64,
    /// Median wait of the behaved clients that stay, ms (None when there are none).
    pub median_ms: Option<u64>,
    /// Behaved clients that would hang up silently before the greeting.
    pub lost: u64,
}

impl Analysis {
    /// Takes one parsed line.
    pub fn accept(&mut self, line: Parsed<'_>) {
        match line {
            Parsed::Pregreet {
                qid,
                seconds,
                waited_ms,
            } => self.pregreet(qid, seconds, waited_ms),
            Parsed::Untimed => self.untimed += 1,
            Parsed::Detail { qid, waited_ms } => self.settle(qid, Some(waited_ms)),
            Parsed::Session(s) => self.session(&s),
            Parsed::HeldBack(n) => self.held_back = self.held_back.saturating_add(n),
            Parsed::OtherSummary => {}
        }
    }

    /// End of input: early talkers still waiting keep their whole seconds.
    pub fn finish(&mut self) {
        while let Some((qid, seq)) = self.order.pop_front() {
            if self.pending.get(&qid).is_some_and(|p| p.seq == seq) {
                self.settle(&qid, None);
            }
        }
    }

    fn pregreet(&mut self, qid: Option<&[u8]>, seconds: u64, waited_ms: Option<u64>) {
        *self.seconds.entry(seconds).or_default() += 1;
        let Some(qid) = qid else {
            return self.record(seconds, waited_ms);
        };
        if self.pending.contains_key(qid) {
            // A queue id seen again (logs concatenated twice): settle the first one.
            self.settle(qid, None);
        } else if self.pending.len() >= MAX_PENDING {
            self.forget_oldest();
        }
        self.seq += 1;
        let seq = self.seq;
        let settled = waited_ms.is_some();
        self.pending.insert(
            qid.to_vec(),
            Pending {
                seconds,
                seq,
                settled,
            },
        );
        self.order.push_back((qid.to_vec(), seq));
        if settled {
            self.record(seconds, waited_ms);
        }
        if self.order.len() > 2 * MAX_PENDING {
            // Drop the entries a re-used queue id left behind.
            let pending = &self.pending;
            self.order
                .retain(|(q, s)| pending.get(q).is_some_and(|p| p.seq == *s));
        }
    }

    /// Forgets the oldest talker, settled in whole seconds if its milliseconds never came.
    fn forget_oldest(&mut self) {
        while let Some((qid, seq)) = self.order.pop_front() {
            if self.pending.get(&qid).is_some_and(|p| p.seq == seq) {
                self.settle(&qid, None);
                self.pending.remove(&qid);
                return;
            }
        }
    }

    /// Records the early talker `qid` with `ms`, or its whole seconds, unless it was
    /// recorded already (or is unknown).
    fn settle(&mut self, qid: &[u8], ms: Option<u64>) {
        if let Some(p) = self.pending.get_mut(qid)
            && !p.settled
        {
            p.settled = true;
            let seconds = p.seconds;
            self.record(seconds, ms);
        }
    }

    fn record(&mut self, seconds: u64, ms: Option<u64>) {
        let delay = match ms {
            Some(ms) => {
                self.timed_ms += 1;
                ms
            }
            None => {
                self.timed_whole += 1;
                seconds * 1000
            }
        };
        *self.delays.entry(delay).or_default() += 1;
    }

    fn session(&mut self, s: &Session<'_>) {
        let t = &mut self.sessions;
        if s.pause_ms > 0 {
            // Early talkers' sessions were paused too: their pause was in force.
            t.min_pause_ms = Some(t.min_pause_ms.map_or(s.pause_ms, |m| m.min(s.pause_ms)));
            t.max_pause_ms = Some(t.max_pause_ms.map_or(s.pause_ms, |m| m.max(s.pause_ms)));
        }
        // A session whose pre-greeting line was read is that early talker, even when its
        // first byte came after its pause: the greeting waits for the client's name lookup
        // (up to dns.timeout), so a client can talk after the pause and still before the
        // greeting.
        let counted = s.qid.is_some_and(|q| self.pending.contains_key(q));
        if s.early_talker() || counted {
            t.early += 1;
            match (s.qid, s.first_input_ms) {
                (Some(qid), Some(ms)) if counted => self.settle(qid, Some(ms)),
                (_, Some(ms)) if !counted => {
                    // Its pre-greeting line is not in the input (a log cut mid-session; a
                    // rejection summary holds the session line back with it).
                    self.from_sessions += 1;
                    *self.seconds.entry(sendmail_seconds(ms)).or_default() += 1;
                    self.record(0, Some(ms));
                }
                _ => {}
            }
            return;
        }
        if s.pause_ms == 0 {
            t.unpaused += 1;
            return;
        }
        t.paused += 1;
        if s.first_input_ms.is_none() && s.duration_ms < MAX_CANDIDATE_MS {
            *t.silent.entry(s.duration_ms).or_default() += 1;
        }
    }

    /// The seed's histogram: (whole seconds, lines), by seconds.
    pub fn histogram(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.seconds.iter().map(|(k, v)| (*k, *v))
    }

    /// Rejections without a delay (Sendmail before 8.14).
    pub fn untimed(&self) -> u64 {
        self.untimed
    }

    /// Early talkers: all, those timed to the ms, those in whole seconds only.
    pub fn early_talkers(&self) -> (u64, u64, u64) {
        (
            self.timed_ms + self.timed_whole,
            self.timed_ms,
            self.timed_whole,
        )
    }

    /// Early talkers counted from their session lines alone (their pre-greeting lines were
    /// held back by a rejection summary); included in [`Analysis::early_talkers`].
    pub fn from_sessions(&self) -> u64 {
        self.from_sessions
    }

    /// Early talkers held back by `greet_pause` rejection summaries: counted, not timed (not
    /// in the histogram, the percentiles or the what-if table).
    pub fn held_back(&self) -> u64 {
        self.held_back
    }

    /// The session lines' tallies.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Nearest-rank percentiles of the delays; None without early talkers.
    pub fn percentiles(&self) -> Option<Percentiles> {
        let n = self.timed_ms + self.timed_whole;
        let max = *self.delays.keys().next_back()?;
        Some(Percentiles {
            p50: self.rank(n.div_ceil(2))?,
            p90: self.rank((n * 9).div_ceil(10))?,
            p99: self.rank((n * 99).div_ceil(100))?,
            max,
        })
    }

    /// The delay with 1-based rank `r`.
    fn rank(&self, r: u64) -> Option<u64> {
        let mut seen = 0;
        for (delay, count) in &self.delays {
            seen += count;
            if seen >= r.max(1) {
                return Some(*delay);
            }
        }
        None
    }

    /// The pause in force, ms, for the lower-bound mark: the shortest pause of the paused
    /// session lines; without session lines, the longest delay seen (the pause was at least
    /// that long, and nothing proves a longer candidate is not above it).
    pub fn pause_in_force(&self) -> Option<u64> {
        self.sessions
            .min_pause_ms
            .or_else(|| self.delays.keys().next_back().copied())
    }

    /// The what-if row of a candidate pause.
    pub fn what_if(&self, pause_ms: u64) -> WhatIf {
        let caught = self.delays.range(..pause_ms).map(|(_, n)| n).sum();
        let lower_bound = self.pause_in_force().is_some_and(|p| pause_ms > p);
        let s = &self.sessions;
        let delay = (s.total() > 0).then(|| {
            let lost = s.lost(pause_ms);
            let stay = s.paused - lost;
            let n = stay + s.unpaused;
            // Sorted waits: `unpaused` zeros, then `stay` full pauses.
            let median_ms = (n > 0).then(|| {
                if n.div_ceil(2) <= s.unpaused {
                    0
                } else {
                    pause_ms
                }
            });
            DelayCost {
                total_ms: stay * pause_ms,
                median_ms,
                lost,
            }
        });
        WhatIf {
            pause_ms,
            caught,
            lower_bound,
            delay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn talker(qid: Option<&'static str>, seconds: u64, ms: Option<u64>) -> Parsed<'static> {
        Parsed::Pregreet {
            qid: qid.map(str::as_bytes),
            seconds,
            waited_ms: ms,
        }
    }

    fn session(
        qid: Option<&'static str>,
        pause: u64,
        first: Option<u64>,
        duration: u64,
    ) -> Parsed<'static> {
        Parsed::Session(Session {
            qid: qid.map(str::as_bytes),
            pause_ms: pause,
            first_input_ms: first,
            duration_ms: duration,
            messages: 0,
        })
    }

    fn analyse(lines: &[Parsed<'static>]) -> Analysis {
        let mut a = Analysis::default();
        lines.iter().for_each(|l| a.accept(*l));
        a.finish();
        a
    }

    #[test]
    fn milliseconds_come_from_the_line_the_detail_or_the_session() {
        let a = analyse(&[
            talker(Some("J"), 2, Some(1834)),
            talker(Some("D"), 1, None),
            Parsed::Detail {
                qid: b"D",
                waited_ms: 640,
            },
            talker(Some("S"), 3, None),
            talker(None, 4, None),
            talker(Some("W"), 5, None),
            // The session line of S settles it with first_input; it is not a second client.
            session(Some("S"), 5000, Some(2900), 9000),
            // A detail for an unknown id changes nothing.
            Parsed::Detail {
                qid: b"X",
                waited_ms: 1,
            },
        ]);
        assert_eq!(a.early_talkers(), (5, 3, 2));
        let delays: Vec<_> = a.delays.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(
            delays,
            [(640, 1), (1834, 1), (2900, 1), (4000, 1), (5000, 1)]
        );
        let hist: Vec<_> = a.histogram().collect();
        assert_eq!(hist, [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)]);
        assert_eq!(a.sessions().early, 1);
        assert_eq!(a.sessions().paused, 0);
    }

    #[test]
    fn a_talker_whose_pregreet_line_was_summarised_counts_from_its_session_line() {
        let a = analyse(&[
            // Logged in full: the pregreet line, its detail, its session line.
            talker(Some("A"), 0, None),
            Parsed::Detail {
                qid: b"A",
                waited_ms: 120,
            },
            session(Some("A"), 1000, Some(120), 130),
            // Held back by a rejection summary: only the session lines remain.
            session(Some("B"), 1000, Some(450), 460),
            session(Some("C"), 1000, Some(700), 710),
            // A client that behaved.
            session(Some("D"), 1000, Some(1003), 2000),
        ]);
        assert_eq!(a.early_talkers(), (3, 3, 0));
        assert_eq!(a.from_sessions(), 2);
        // 450 ms rounds to 0 s and 700 ms to 1 s, as Sendmail's "after N seconds" does.
        let hist: Vec<_> = a.histogram().collect();
        assert_eq!(hist, [(0, 2), (1, 1)]);
        let delays: Vec<_> = a.delays.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(delays, [(120, 1), (450, 1), (700, 1)]);
        assert_eq!(a.sessions().early, 3);
        assert_eq!(a.sessions().paused, 1);
    }

    #[test]
    fn a_talker_greeted_late_is_not_also_a_behaved_client() {
        // Pause 1 s, but the greeting waited for a slow name lookup (up to dns.timeout): the
        // client talked at 1.5 s, before the greeting, and was logged as an early talker.
        // Its session line says first_input >= pause; it is still that early talker.
        let a = analyse(&[
            talker(Some("T"), 2, None),
            Parsed::Detail {
                qid: b"T",
                waited_ms: 1500,
            },
            session(Some("T"), 1000, Some(1500), 1600),
            session(Some("B"), 1000, Some(1004), 2000),
        ]);
        assert_eq!(a.early_talkers(), (1, 1, 0));
        let s = a.sessions();
        assert_eq!((s.early, s.paused, s.unpaused), (1, 1, 0));
        // Only B waits for a candidate pause.
        assert_eq!(a.what_if(1000).delay.map(|d| d.total_ms), Some(1000));
    }

    #[test]
    fn a_reused_queue_id_counts_twice_and_pending_is_bounded() {
        let a = analyse(&[talker(Some("Q"), 1, None), talker(Some("Q"), 2, None)]);
        assert_eq!(a.early_talkers(), (2, 0, 2));

        let mut a = Analysis::default();
        let ids: Vec<String> = (0..MAX_PENDING + 10).map(|i| format!("q{i}")).collect();
        for id in &ids {
            a.accept(Parsed::Pregreet {
                qid: Some(id.as_bytes()),
                seconds: 1,
                waited_ms: None,
            });
        }
        assert_eq!(a.pending.len(), MAX_PENDING);
        // The oldest were settled in whole seconds; a late detail for one changes nothing.
        a.accept(Parsed::Detail {
            qid: b"q0",
            waited_ms: 7,
        });
        a.accept(Parsed::Detail {
            qid: b"q20",
            waited_ms: 7,
        });
        a.finish();
        assert_eq!(
            a.early_talkers(),
            (MAX_PENDING as u64 + 10, 1, MAX_PENDING as u64 + 9)
        );
        assert!(a.order.len() <= 2 * MAX_PENDING);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let table: &[(&[u64], Option<Percentiles>)] = &[
            (&[], None),
            (
                &[7],
                Some(Percentiles {
                    p50: 7,
                    p90: 7,
                    p99: 7,
                    max: 7,
                }),
            ),
            (
                &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
                Some(Percentiles {
                    p50: 5,
                    p90: 9,
                    p99: 10,
                    max: 10,
                }),
            ),
            (
                &[100, 100, 100, 4000],
                Some(Percentiles {
                    p50: 100,
                    p90: 4000,
                    p99: 4000,
                    max: 4000,
                }),
            ),
        ];
        for (delays, want) in table {
            let lines: Vec<_> = delays.iter().map(|d| talker(None, 0, Some(*d))).collect();
            assert_eq!(analyse(&lines).percentiles(), *want, "{delays:?}");
        }
    }

    #[test]
    fn what_if_catches_and_marks_lower_bounds() {
        // Sendmail only: whole seconds, pause in force unknown (at least the longest, 5 s).
        let a = analyse(&[
            talker(None, 0, None),
            talker(None, 0, None),
            talker(None, 1, None),
            talker(None, 5, None),
        ]);
        let rows: Vec<_> = [500, 1000, 2000, 5000, 10_000]
            .iter()
            .map(|p| {
                let w = a.what_if(*p);
                (w.caught, w.lower_bound, w.delay)
            })
            .collect();
        assert_eq!(
            rows,
            [
                (2, false, None),
                (2, false, None),
                (3, false, None),
                (3, false, None),
                (4, true, None)
            ]
        );
    }

    #[test]
    fn delay_columns_from_behaved_sessions() {
        let a = analyse(&[
            talker(Some("E"), 0, None),
            session(Some("E"), 2000, Some(300), 800),
            // Behaved: two waited for the greeting, two silent (one left after 700 ms).
            session(Some("A"), 2000, Some(2004), 5000),
            session(Some("B"), 3000, Some(3010), 5000),
            session(Some("C"), 2000, None, 700),
            session(Some("D"), 2000, None, 2500),
            // Not paused (pass cache): waits nothing.
            session(Some("F"), 0, Some(2), 40),
            session(Some("G"), 0, None, 10),
        ]);
        let s = a.sessions();
        assert_eq!((s.early, s.paused, s.unpaused, s.total()), (1, 4, 2, 7));
        assert_eq!((s.min_pause_ms, s.max_pause_ms), (Some(2000), Some(3000)));
        assert_eq!(a.pause_in_force(), Some(2000));
        let row = |p| {
            let w = a.what_if(p);
            (w.caught, w.lower_bound, w.delay)
        };
        let cost = |total_ms, median_ms, lost| {
            Some(DelayCost {
                total_ms,
                median_ms: Some(median_ms),
                lost,
            })
        };
        assert_eq!(row(300), (0, false, cost(1200, 300, 0)));
        assert_eq!(row(500), (1, false, cost(2000, 500, 0)));
        // C hung up at 700 ms: lost to 1 s and longer; 3 stay paused, 2 unpaused: median 1 s.
        assert_eq!(row(1000), (1, false, cost(3000, 1000, 1)));
        // C and D lost: 2 stay paused, 2 unpaused: the median (rank 2 of 4) is 0.
        assert_eq!(row(3000), (1, true, cost(6000, 0, 2)));
        // Everything lost but the unpaused: the median is 0.
        let a = analyse(&[session(None, 1000, None, 10), session(None, 0, None, 10)]);
        assert_eq!(a.what_if(5000).delay, cost(0, 0, 1));
        let a = analyse(&[session(None, 1000, None, 10)]);
        assert_eq!(
            a.what_if(5000).delay,
            Some(DelayCost {
                total_ms: 0,
                median_ms: None,
                lost: 1
            })
        );
    }

    #[test]
    fn an_early_talkers_shorter_pause_is_the_pause_in_force() {
        let a = analyse(&[
            talker(Some("E"), 0, None),
            session(Some("E"), 800, Some(100), 300),
            session(Some("A"), 2000, Some(2004), 5000),
        ]);
        assert_eq!(a.pause_in_force(), Some(800));
        assert!(a.what_if(1000).lower_bound);
    }

    #[test]
    fn untimed_lines_are_apart() {
        let a = analyse(&[Parsed::Untimed, Parsed::Untimed, talker(None, 3, None)]);
        assert_eq!(a.untimed(), 2);
        assert_eq!(a.early_talkers(), (1, 0, 1));
    }
}
