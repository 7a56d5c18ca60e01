//! Learned keep-alive (`scaleDownAfter: auto`): how long idle capacity stays, and when it
//! comes back before the next burst, learned from a policy's own idle gaps with the hybrid
//! histogram policy of Shahrad et al., "Serverless in the Wild" (USENIX ATC '20, §4.2).
//!
//! An *idle gap* runs from the moment demand falls to zero replicas to the moment it is above
//! zero again. Gaps go into a histogram of one-minute bins over four hours (the paper's range);
//! from it:
//!
//! - **keep-alive**: idle capacity stays for the gaps' 99th percentile (+10 %), so 99 % of the
//!   bursts that follow a gap find it warm;
//! - **pre-warm**: when even the 5th percentile (−10 %) is long — at least twice the lead time —
//!   idle capacity goes at once and comes back at that point, created a lead time before it, and
//!   stays to the keep-alive's end; paying for the idle middle of every gap bought nothing;
//! - **fallback**, the fixed `scaleDownAfter` (10 minutes by default), while the histogram says
//!   nothing reliable: fewer than [`MIN_SAMPLES`] gaps, more than half of them beyond the range
//!   (the paper hands those to a time-series model; a GPU node kept four hours idle is not worth
//!   it), or gaps spread so evenly over the range that no percentile means much (the bin counts'
//!   coefficient of variation under the paper's threshold of 2).
//!
//! The histogram halves every count once it holds [`DECAY_AT`] gaps, so it follows a workload
//! that changes and stays bounded: a policy's state is at most [`BINS`] counters and a few
//! numbers, small enough for its status (where the provisioner keeps it across restarts).

use serde::{Deserialize, Serialize};

use crate::plan::{Millis, Want};

/// Width of one histogram bin.
pub const BIN_MS: Millis = 60_000;
/// Bins: four hours of one-minute bins.
pub const BINS: usize = 240;
/// Gaps needed before the histogram is trusted.
pub const MIN_SAMPLES: u64 = 10;
/// The paper's representativeness threshold on the bin counts' coefficient of variation.
pub const MIN_CV: f64 = 2.0;
/// Share of gaps beyond the range above which the histogram is not used.
pub const MAX_BEYOND_RANGE: f64 = 0.5;
/// The paper's margin: the pre-warm point 10 % earlier, the keep-alive 10 % longer.
pub const MARGIN: f64 = 0.10;
/// Gaps recorded before every count is halved.
pub const DECAY_AT: u64 = 1_000;
/// The longest a burst's onset is watched for its replicas.
pub const ONSET_MS: Millis = BIN_MS;

/// A policy's observed idle gaps, and where it is now in the current one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdleGaps {
    /// Gaps per bin, as `(bin, count)` for the bins that hold any, ascending (a sparse form:
    /// most bins of a real workload are empty).
    pub bins: Vec<(u16, u32)>,
    /// Gaps longer than the range.
    pub beyond_range: u32,
    /// When demand last fell to zero after having been above it; `None` while it is above
    /// zero, or before it first was.
    pub idle_since: Option<Millis>,
    /// When the current busy period began (`None` while idle).
    pub busy_since: Option<Millis>,
    /// Replicas wanted within [`ONSET_MS`] of the last busy period's start: what a burst
    /// needs at once, and what a pre-warm brings back.
    pub onset_replicas: u32,
}

/// Why the keep-alive is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Basis {
    /// From the histogram.
    Learned,
    /// The fallback: fewer than [`MIN_SAMPLES`] gaps so far.
    FewSamples,
    /// The fallback: most gaps are longer than the histogram's range.
    BeyondRange,
    /// The fallback: gaps spread too evenly for a percentile to mean anything.
    TooSpread,
}

impl Basis {
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::Learned => "Learned",
            Basis::FewSamples => "FewSamples",
            Basis::BeyondRange => "BeyondRange",
            Basis::TooSpread => "TooSpread",
        }
    }
}

/// The keep-alive decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive {
    /// How long after demand falls to zero idle capacity stays (the window's end).
    pub keep_for: Millis,
    /// When non-zero: idle capacity goes at once and is wanted again from this long after
    /// demand fell to zero until `keep_for`.
    pub prewarm_after: Millis,
    pub basis: Basis,
    /// Gaps the decision rests on (in range and beyond).
    pub samples: u64,
}

impl IdleGaps {
    /// Gaps recorded (in range and beyond).
    pub fn samples(&self) -> u64 {
        self.bins.iter().map(|&(_, c)| u64::from(c)).sum::<u64>() + u64::from(self.beyond_range)
    }

    /// Takes one reading of the replicas demand wants now.
    pub fn observe(&mut self, now: Millis, wanted: u32) {
        if wanted > 0 {
            match self.busy_since {
                None => {
                    if let Some(since) = self.idle_since.take() {
                        self.record(now.saturating_sub(since));
                    }
                    self.busy_since = Some(now);
                    self.onset_replicas = wanted;
                }
                Some(start) if now.saturating_sub(start) <= ONSET_MS => {
                    self.onset_replicas = self.onset_replicas.max(wanted);
                }
                Some(_) => {}
            }
        } else if self.busy_since.take().is_some() {
            self.idle_since = Some(now);
        }
    }

    /// Adds one gap of `gap` milliseconds.
    pub fn record(&mut self, gap: Millis) {
        let bin = gap.max(0) / BIN_MS;
        if bin >= BINS as Millis {
            self.beyond_range = self.beyond_range.saturating_add(1);
        } else {
            let bin = bin as u16;
            match self.bins.binary_search_by_key(&bin, |&(b, _)| b) {
                Ok(i) => self.bins[i].1 = self.bins[i].1.saturating_add(1),
                Err(i) => self.bins.insert(i, (bin, 1)),
            }
        }
        if self.samples() >= DECAY_AT {
            for (_, c) in &mut self.bins {
                *c /= 2;
            }
            self.bins.retain(|&(_, c)| c > 0);
            self.beyond_range /= 2;
        }
    }

    /// Repairs state read back from storage: bins in range, ascending, no duplicates, no
    /// zeros, and at most [`BINS`] of them. Whatever a status held, the result is bounded.
    pub fn sanitised(mut self) -> Self {
        self.bins.retain(|&(b, c)| usize::from(b) < BINS && c > 0);
        self.bins.sort_unstable_by_key(|&(b, _)| b);
        self.bins.dedup_by(|next, kept| {
            if next.0 == kept.0 {
                kept.1 = kept.1.saturating_add(next.1);
                true
            } else {
                false
            }
        });
        self
    }

    /// The keep-alive for a policy whose fixed fallback is `fallback` and whose capacity takes
    /// `lead` to become ready.
    pub fn decide(&self, fallback: Millis, lead: Millis) -> KeepAlive {
        let samples = self.samples();
        let fixed = |basis| KeepAlive {
            keep_for: fallback,
            prewarm_after: 0,
            basis,
            samples,
        };
        if samples < MIN_SAMPLES {
            return fixed(Basis::FewSamples);
        }
        let in_range: u64 = samples - u64::from(self.beyond_range);
        if in_range == 0 || f64::from(self.beyond_range) > MAX_BEYOND_RANGE * samples as f64 {
            return fixed(Basis::BeyondRange);
        }
        // Coefficient of variation of the counts over every bin of the range.
        let n = BINS as f64;
        let mean = in_range as f64 / n;
        let sum_sq: f64 = self.bins.iter().map(|&(_, c)| f64::from(c).powi(2)).sum();
        let var = (sum_sq / n - mean * mean).max(0.0);
        if var.sqrt() / mean < MIN_CV {
            return fixed(Basis::TooSpread);
        }
        // Percentiles of the in-range gaps, by bin: the 5th at its bin's start, the 99th at its
        // bin's end.
        let bin_at = |q: f64| -> Millis {
            let rank = (q * in_range as f64).ceil().max(1.0) as u64;
            let mut seen = 0u64;
            for &(b, c) in &self.bins {
                seen += u64::from(c);
                if seen >= rank {
                    return Millis::from(b);
                }
            }
            BINS as Millis - 1
        };
        let head = ((bin_at(0.05) * BIN_MS) as f64 * (1.0 - MARGIN)) as Millis;
        let tail = (((bin_at(0.99) + 1) * BIN_MS) as f64 * (1.0 + MARGIN)) as Millis;
        let prewarm_after = if head >= 2 * lead.max(0) && head > 0 {
            head
        } else {
            0
        };
        KeepAlive {
            keep_for: tail,
            prewarm_after,
            basis: Basis::Learned,
            samples,
        }
    }
}

/// One reconcile's keep-alive: the decision, and what the plan gets from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub decision: KeepAlive,
    /// The plan's `scale_down_after`.
    pub scale_down_after: Millis,
    /// A demand point to add to the plan's forecast (the pre-warm).
    pub prewarm: Option<Want>,
}

impl IdleGaps {
    /// Observes `wanted` (`None`: the reading is incomplete — a missing reading is not a zero,
    /// so it is left out), decides and applies: what the controller and the simulator run at
    /// every plan.
    pub fn step(
        &mut self,
        now: Millis,
        wanted: Option<u32>,
        fallback: Millis,
        lead: Millis,
    ) -> Step {
        if let Some(w) = wanted {
            self.observe(now, w);
        }
        let decision = self.decide(fallback, lead);
        let (scale_down_after, prewarm) = decision.apply(self, now);
        Step {
            decision,
            scale_down_after,
            prewarm,
        }
    }
}

impl KeepAlive {
    /// What the plan gets at `now`: its `scale_down_after`, and a demand point to add to its
    /// forecast (the pre-warm: the last burst's onset replicas, from the pre-warm point to the
    /// keep-alive's end, which the plan acts on a lead time ahead as on any forecast).
    pub fn apply(&self, gaps: &IdleGaps, now: Millis) -> (Millis, Option<Want>) {
        if self.prewarm_after == 0 {
            return (self.keep_for, None);
        }
        let Some(since) = gaps.idle_since else {
            // Busy: dips that are not gaps keep capacity for the keep-alive.
            return (self.keep_for, None);
        };
        let end = since.saturating_add(self.keep_for);
        if now >= end || gaps.onset_replicas == 0 {
            // Past the window: the next burst is later than 99 % of them; let it all go.
            return (0, None);
        }
        let at = now.max(since.saturating_add(self.prewarm_after));
        (
            0,
            Some(Want {
                at,
                replicas: gaps.onset_replicas,
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: Millis = 60_000;

    fn with_gaps(gaps: &[Millis]) -> IdleGaps {
        let mut g = IdleGaps::default();
        for &x in gaps {
            g.record(x);
        }
        g
    }

    #[test]
    fn gaps_are_measured_from_zero_demand_to_the_next_burst() {
        let mut g = IdleGaps::default();
        // Idle before anything was ever busy: no gap (the controller may have just started).
        g.observe(0, 0);
        g.observe(10 * MIN, 3);
        assert_eq!(g.samples(), 0);
        assert_eq!(g.onset_replicas, 3);
        g.observe(10 * MIN + 30_000, 5); // within the onset
        g.observe(15 * MIN, 9); // later in the burst: not the onset
        assert_eq!(g.onset_replicas, 5);
        g.observe(20 * MIN, 0);
        assert_eq!(g.idle_since, Some(20 * MIN));
        g.observe(25 * MIN, 0);
        g.observe(47 * MIN, 2);
        assert_eq!(g.bins, vec![(27, 1)]);
        assert_eq!(g.idle_since, None);
        assert_eq!(g.onset_replicas, 2);
    }

    #[test]
    fn few_gaps_spread_gaps_and_gaps_beyond_the_range_use_the_fallback() {
        let fallback = 10 * MIN;
        let few = with_gaps(&[30 * MIN; 9]);
        assert_eq!(few.decide(fallback, 3 * MIN).basis, Basis::FewSamples);
        assert_eq!(few.decide(fallback, 3 * MIN).keep_for, fallback);
        let far = with_gaps(&[5 * 3_600_000; 20]);
        assert_eq!(far.decide(fallback, 3 * MIN).basis, Basis::BeyondRange);
        // One gap in every bin: no percentile says anything.
        let spread: Vec<Millis> = (0..BINS as Millis).map(|b| b * MIN + 1).collect();
        let spread = with_gaps(&spread);
        let k = spread.decide(fallback, 3 * MIN);
        assert_eq!(
            (k.basis, k.keep_for, k.prewarm_after),
            (Basis::TooSpread, fallback, 0)
        );
    }

    #[test]
    fn short_regular_gaps_keep_capacity_to_their_p99() {
        // Gaps of 2 to 4 minutes: shorter than twice the lead, so nothing is released early.
        let gaps: Vec<Millis> = (0..50).map(|i| (2 + i % 3) * MIN + 5_000).collect();
        let k = with_gaps(&gaps).decide(10 * MIN, 3 * MIN);
        assert_eq!(k.basis, Basis::Learned);
        assert_eq!(k.prewarm_after, 0);
        // p99 in the 4-minute bin: its end, 5 min, + 10 %.
        assert_eq!(k.keep_for, 330_000);
    }

    #[test]
    fn a_nightly_batch_releases_capacity_and_prewarms_it_before_the_next() {
        // A burst every 24 h would be beyond the range; a burst every 50-52 minutes is not.
        let gaps: Vec<Millis> = (0..30).map(|i| (50 + i % 3) * MIN + 10_000).collect();
        let mut g = with_gaps(&gaps);
        let k = g.decide(10 * MIN, 3 * MIN);
        assert_eq!(k.basis, Basis::Learned);
        assert_eq!(k.prewarm_after, (50.0 * MIN as f64 * 0.9) as Millis); // 45 min
        assert_eq!(k.keep_for, (53.0 * MIN as f64 * 1.1) as Millis);
        g.observe(0, 4);
        g.observe(10 * MIN, 0);
        // Right after the burst: released at once, and wanted again at the pre-warm point.
        let (sda, want) = k.apply(&g, 11 * MIN);
        assert_eq!(sda, 0);
        assert_eq!(
            want,
            Some(Want {
                at: 10 * MIN + k.prewarm_after,
                replicas: 4
            })
        );
        // Inside the window: wanted now.
        let (_, want) = k.apply(&g, 60 * MIN);
        assert_eq!(want.map(|w| w.at), Some(60 * MIN));
        // Past it: nothing more.
        assert_eq!(k.apply(&g, 10 * MIN + k.keep_for), (0, None));
        // Busy again: the keep-alive holds through dips.
        g.observe(70 * MIN, 1);
        assert_eq!(k.apply(&g, 71 * MIN), (k.keep_for, None));
    }

    #[test]
    fn a_step_leaves_an_incomplete_reading_out() {
        let mut g = IdleGaps::default();
        g.step(0, Some(3), 10 * MIN, 3 * MIN);
        let s = g.step(MIN, None, 10 * MIN, 3 * MIN);
        assert_eq!(g.busy_since, Some(0), "no reading is not a zero");
        assert_eq!((s.scale_down_after, s.prewarm), (10 * MIN, None));
        g.step(2 * MIN, Some(0), 10 * MIN, 3 * MIN);
        assert_eq!(g.idle_since, Some(2 * MIN));
    }

    #[test]
    fn counts_decay_and_stored_state_is_repaired() {
        let mut g = with_gaps(&vec![30 * MIN; DECAY_AT as usize]);
        assert!(g.samples() < DECAY_AT);
        assert_eq!(g.samples(), DECAY_AT / 2);
        g.record(-5);
        assert_eq!(g.bins[0], (0, 1));
        let bad = IdleGaps {
            bins: vec![(9, 1), (3, 2), (9, 4), (500, 7), (4, 0)],
            ..IdleGaps::default()
        }
        .sanitised();
        assert_eq!(bad.bins, vec![(3, 2), (9, 5)]);
    }

    proptest! {
        #[test]
        fn state_stays_bounded_and_the_decision_sane(
            gaps in proptest::collection::vec(-10i64..30_000_000, 0..3_000),
            fallback in 0i64..86_400_000,
            lead in 0i64..3_600_000,
        ) {
            let g = with_gaps(&gaps);
            prop_assert!(g.bins.len() <= BINS);
            prop_assert!(g.samples() < DECAY_AT);
            prop_assert!(g.bins.windows(2).all(|w| w[0].0 < w[1].0));
            let k = g.decide(fallback, lead);
            if k.basis == Basis::Learned {
                prop_assert!(k.keep_for > 0 && k.keep_for <= (BINS as f64 * 1.1) as Millis * BIN_MS);
                prop_assert!(k.prewarm_after == 0 || k.prewarm_after >= 2 * lead);
                prop_assert!(k.prewarm_after < k.keep_for);
            } else {
                prop_assert_eq!((k.keep_for, k.prewarm_after), (fallback, 0));
            }
        }
    }
}
