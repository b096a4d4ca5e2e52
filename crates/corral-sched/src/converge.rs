//! The live-migration convergence policy: watches the rounds of a running pre-copy and says
//! when to act. Pure (samples in, decisions out), so it is unit-tested here and the agent only
//! feeds it what QEMU reports.
//!
//! * `precopy` (QEMU's defaults): wait; at the time budget, give up (the VM stays at the
//!   source, untouched).
//! * `postcopy`: switch to post-copy as soon as the first full pass has been sent.
//! * `auto`: decides at the end of the first full pass, when the guest's dirty rate over that
//!   pass is known: a guest dirtying memory at half the link's rate or more, or one that could
//!   not converge within the budget, goes post-copy right then (which always finishes).
//!   Otherwise pre-copy goes on with QEMU's auto-converge throttling the guest if it speeds
//!   up; if rounds then stop shrinking, or at the budget, the policy accepts a longer final
//!   pause sized to what is left, so the migration ends instead of failing.
//!
//! Post-copy is only ever started at the end of the first pass: with QEMU 7.2 under TCG,
//! starting it after pages had been re-sent in later rounds left the guest's memory corrupt
//! (kernel panics at the destination, reproduced several times); at the end of the first pass
//! it was always sound.

/// How the migration is to move memory (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Auto,
    Precopy,
    Postcopy,
}

/// One observation of a running migration.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Sample {
    /// Since the memory migration started, ms.
    pub elapsed_ms: u64,
    /// Pre-copy round (QEMU's dirty-sync count; 1 during the first full pass).
    pub round: u64,
    /// Bytes still to send.
    pub remaining: u64,
    /// Bytes per second the guest dirties.
    pub dirty_rate: u64,
    /// Bytes per second sent.
    pub transfer_rate: u64,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Wait,
    /// Switch to post-copy, for this reason.
    Postcopy(String),
    /// Allow a final pause of this many ms (QEMU's downtime limit), for this reason.
    Downtime(u64, String),
    /// Cancel the migration (the VM keeps running at the source), for this reason.
    GiveUp(String),
}

/// A round needs to shrink the dirty set below this fraction of the previous round's to
/// count as progress.
const SHRINK: f64 = 0.8;
/// Rounds of slow progress tolerated (auto-converge throttles meanwhile).
const STALLS: u32 = 2;
/// Dirtying at this fraction of the link's rate or more sends the migration post-copy.
const BUSY: f64 = 0.5;

/// The policy's memory of one migration.
#[derive(Debug, Clone)]
pub struct Convergence {
    mode: Mode,
    budget_ms: u64,
    /// Remaining bytes seen at the start of each round, by round number.
    round_starts: Vec<(u64, u64)>,
    stalls: u32,
    done: bool,
    stretched: bool,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// A pause long enough to send `remaining` at `rate`, with a margin.
fn pause_for(remaining: u64, rate: u64) -> u64 {
    let ms = remaining as f64 / rate.max(1) as f64 * 1000.0;
    (ms * 1.5) as u64 + 100
}

impl Convergence {
    pub fn new(mode: Mode, budget_ms: u64) -> Self {
        Self { mode, budget_ms, round_starts: Vec::new(), stalls: 0, done: false, stretched: false }
    }

    /// Feeds one sample; returns the decision. Each kind of action is taken once.
    pub fn observe(&mut self, s: &Sample) -> Decision {
        if self.done {
            return Decision::Wait;
        }
        let new_round = self.round_starts.last().is_none_or(|(r, _)| s.round > *r);
        if new_round && s.round > 0 {
            if let Some((_, prev)) = self.round_starts.last().copied() {
                // Rounds 1 → 2 is the bulk pass ending: not a measure of convergence.
                if s.round > 2 {
                    if (s.remaining as f64) > SHRINK * prev as f64 {
                        self.stalls += 1;
                    } else {
                        self.stalls = 0;
                    }
                }
            }
            self.round_starts.push((s.round, s.remaining));
        }
        let d = self.decide(s, new_round);
        match &d {
            Decision::Wait => {}
            Decision::Downtime(..) => self.stretched = true,
            _ => self.done = true,
        }
        d
    }

    fn decide(&self, s: &Sample, new_round: bool) -> Decision {
        let over_budget = s.elapsed_ms >= self.budget_ms;
        match self.mode {
            Mode::Precopy => {
                if over_budget {
                    return Decision::GiveUp(format!(
                        "did not converge within its {} s budget: {:.1} MiB still dirty after {} rounds \
                         (guest dirties {:.1} MiB/s, link sends {:.1} MiB/s); the VM keeps running at the source \
                         — use --mode auto",
                        self.budget_ms / 1000,
                        mib(s.remaining),
                        s.round,
                        mib(s.dirty_rate),
                        mib(s.transfer_rate)
                    ));
                }
                Decision::Wait
            }
            Mode::Postcopy => {
                if s.round == 2 && new_round {
                    return Decision::Postcopy("first full pass sent".into());
                }
                if over_budget && !self.stretched {
                    return self.stretch(s, "time budget reached");
                }
                Decision::Wait
            }
            Mode::Auto => {
                if s.round == 2 && new_round {
                    if s.transfer_rate > 0 && s.dirty_rate as f64 >= BUSY * s.transfer_rate as f64 {
                        return Decision::Postcopy(format!(
                            "after the first pass the guest dirties {:.1} MiB/s against {:.1} MiB/s sent",
                            mib(s.dirty_rate),
                            mib(s.transfer_rate)
                        ));
                    }
                    // Rounds shrink by dirty/transfer each: a geometric series.
                    if s.transfer_rate > s.dirty_rate {
                        let est_ms = s.remaining as f64 / (s.transfer_rate - s.dirty_rate) as f64 * 1000.0;
                        let left_ms = self.budget_ms.saturating_sub(s.elapsed_ms) as f64;
                        if est_ms > left_ms {
                            return Decision::Postcopy(format!(
                                "after the first pass converging would take about {:.0} s, more than the {:.0} s \
                                 left of the budget",
                                est_ms / 1000.0,
                                left_ms / 1000.0
                            ));
                        }
                    }
                    return Decision::Wait;
                }
                if self.stretched {
                    return Decision::Wait;
                }
                if over_budget {
                    return self.stretch(s, "time budget reached");
                }
                if !new_round || s.round < 3 {
                    return Decision::Wait;
                }
                if let [.., (_, a), (_, b)] = self.round_starts.as_slice() {
                    if *b as f64 >= 0.95 * *a as f64 {
                        return self.stretch(s, &format!("round {}: the dirty set stopped shrinking", s.round));
                    }
                }
                if self.stalls >= STALLS {
                    return self.stretch(s, &format!("round {}: {STALLS} rounds of slow progress", s.round));
                }
                Decision::Wait
            }
        }
    }

    fn stretch(&self, s: &Sample, why: &str) -> Decision {
        let ms = pause_for(s.remaining, s.transfer_rate);
        Decision::Downtime(
            ms,
            format!("{why} with {:.1} MiB dirty: allowing a final pause of up to {ms} ms to finish", mib(s.remaining)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mode: Mode, budget: u64, samples: &[Sample]) -> (usize, Decision) {
        let mut c = Convergence::new(mode, budget);
        for (i, s) in samples.iter().enumerate() {
            let d = c.observe(s);
            if d != Decision::Wait {
                return (i, d);
            }
        }
        (samples.len(), Decision::Wait)
    }

    fn s(elapsed_ms: u64, round: u64, remaining_mib: u64, dirty: u64, xfer: u64) -> Sample {
        Sample { elapsed_ms, round, remaining: remaining_mib << 20, dirty_rate: dirty << 20, transfer_rate: xfer << 20 }
    }

    #[test]
    fn an_idle_guest_is_left_alone() {
        let samples = [s(100, 1, 200, 0, 100), s(1000, 1, 50, 0, 100), s(2000, 2, 2, 1, 100), s(2100, 3, 0, 1, 100)];
        assert_eq!(run(Mode::Auto, 60_000, &samples).1, Decision::Wait);
    }

    #[test]
    fn precopy_gives_up_at_the_budget_and_only_then() {
        let busy: Vec<Sample> = (0..100).map(|i| s(i * 1000, 1 + i / 2, 60, 40, 10)).collect();
        let (at, d) = run(Mode::Precopy, 30_000, &busy);
        assert_eq!(at, 30);
        assert!(matches!(d, Decision::GiveUp(ref m) if m.contains("did not converge")), "{d:?}");
    }

    #[test]
    fn postcopy_switches_at_the_end_of_the_first_pass() {
        let samples = [s(100, 1, 200, 0, 100), s(500, 1, 100, 0, 100), s(900, 2, 20, 0, 100)];
        let (at, d) = run(Mode::Postcopy, 60_000, &samples);
        assert_eq!(at, 2);
        assert!(matches!(d, Decision::Postcopy(_)));
    }

    #[test]
    fn auto_goes_postcopy_when_the_guest_dirties_at_half_the_link() {
        let samples = [s(100, 1, 200, 0, 10), s(9000, 2, 48, 5, 10)];
        let (at, d) = run(Mode::Auto, 60_000, &samples);
        assert_eq!(at, 1);
        assert!(matches!(d, Decision::Postcopy(ref m) if m.contains("dirties")), "{d:?}");
    }

    #[test]
    fn auto_goes_postcopy_when_convergence_would_outlast_the_budget() {
        // 100 MiB left, converging at 10 - 4 = 6 MiB/s: about 17 s, with 11 s left.
        let samples = [s(100, 1, 300, 0, 10), s(9000, 2, 100, 4, 10)];
        let (at, d) = run(Mode::Auto, 20_000, &samples);
        assert_eq!(at, 1);
        assert!(matches!(d, Decision::Postcopy(ref m) if m.contains("converging would take")), "{d:?}");
    }

    #[test]
    fn auto_never_starts_postcopy_after_the_first_pass() {
        // Slow dirtying at first, then the guest speeds up: stretch the pause, no post-copy.
        let samples =
            [s(100, 1, 200, 0, 100), s(2000, 2, 20, 10, 100), s(2500, 3, 19, 90, 100), s(3000, 4, 19, 90, 100)];
        let (at, d) = run(Mode::Auto, 60_000, &samples);
        assert_eq!(at, 2, "{d:?}");
        assert!(matches!(d, Decision::Downtime(ms, ref m) if ms > 0 && m.contains("stopped shrinking")), "{d:?}");
    }

    #[test]
    fn auto_gives_throttling_two_rounds_then_stretches_the_pause() {
        let samples = [
            s(100, 1, 200, 1, 10),
            s(5000, 2, 30, 1, 10),
            s(11000, 3, 26, 9, 10),
            s(17000, 4, 22, 9, 10),
            s(23000, 5, 20, 9, 10),
        ];
        let (at, d) = run(Mode::Auto, 600_000, &samples);
        assert_eq!(at, 3, "{d:?}");
        assert!(matches!(d, Decision::Downtime(_, ref m) if m.contains("slow progress")), "{d:?}");
    }

    #[test]
    fn auto_acts_at_the_budget_instead_of_failing() {
        let samples: Vec<Sample> = (0..50).map(|i| s(i * 1000, 1, 200 - i, 0, 1)).collect();
        let (at, d) = run(Mode::Auto, 20_000, &samples);
        assert_eq!(at, 20);
        // 180 MiB at 1 MiB/s: a pause of about 270 s is what finishing takes.
        assert!(matches!(d, Decision::Downtime(ms, ref m) if ms > 180_000 && m.contains("budget")), "{d:?}");
    }

    #[test]
    fn a_stretched_pause_is_not_stretched_again() {
        let mut c = Convergence::new(Mode::Auto, 1000);
        assert!(matches!(c.observe(&s(2000, 1, 10, 0, 1)), Decision::Downtime(..)));
        assert_eq!(c.observe(&s(3000, 1, 10, 0, 1)), Decision::Wait);
    }

    #[test]
    fn one_postcopy_only() {
        let mut c = Convergence::new(Mode::Postcopy, 1000);
        assert_eq!(c.observe(&s(10, 1, 1, 0, 1)), Decision::Wait);
        assert!(matches!(c.observe(&s(20, 2, 1, 0, 1)), Decision::Postcopy(_)));
        assert_eq!(c.observe(&s(30, 3, 1, 0, 1)), Decision::Wait);
    }
}
