//! How much the allocation acts in a run: moves, the fraction of the budget that moved, which
//! matrices ever changed rank, moves undone at the next adjustment, and how stable the
//! importance ranking is from one adjustment to the next.
//!
//! The trainer feeds every adjustment step's scores and decision to one [`AllocationActivity`];
//! it is plain data (serde), so it travels in checkpoints and a resumed run reports the same
//! figures as an uninterrupted one.

use serde::{Deserialize, Serialize};

/// Kendall's rank correlation τ_b between two score vectors of the same matrices.
///
/// `τ_b = (C − D) / sqrt((n0 − n1)(n0 − n2))` over all pairs `i < j`, with `C` / `D` the
/// concordant / discordant pairs, `n0 = n(n−1)/2`, and `n1`, `n2` the pairs tied in `a`, in
/// `b`. 1: the same order; −1: reversed; 0: unrelated. `None` when the lengths differ, fewer
/// than two values are given, a value is not finite, or either side is all ties (the
/// correlation is undefined there). O(n²), which is nothing next to a training step for the
/// few hundred matrices a model has.
pub fn kendall_tau_b(a: &[f64], b: &[f64]) -> Option<f64> {
    let n = a.len();
    if n != b.len() || n < 2 || a.iter().chain(b).any(|x| !x.is_finite()) {
        return None;
    }
    let (mut concordant, mut discordant, mut ties_a, mut ties_b) = (0u64, 0u64, 0u64, 0u64);
    for i in 0..n {
        for j in i + 1..n {
            let da = a[i].total_cmp(&a[j]) as i8;
            let db = b[i].total_cmp(&b[j]) as i8;
            match (da, db) {
                (0, 0) => {
                    ties_a += 1;
                    ties_b += 1;
                }
                (0, _) => ties_a += 1,
                (_, 0) => ties_b += 1,
                _ if da == db => concordant += 1,
                _ => discordant += 1,
            }
        }
    }
    let pairs = (n * (n - 1) / 2) as u64;
    let denominator = (((pairs - ties_a) as f64) * ((pairs - ties_b) as f64)).sqrt();
    if denominator == 0.0 {
        return None;
    }
    Some((concordant as f64 - discordant as f64) / denominator)
}

/// What the allocation has done so far in a run (FlexLoRA; the counters stay at zero for
/// methods without allocation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AllocationActivity {
    /// `Σ r_k` before the first adjustment (the budget moves are measured against).
    pub initial_total_rank: usize,
    /// Adjustment steps that ran (including those whose decision was empty).
    pub adjustments: u64,
    /// Directions pruned, summed over the run.
    pub pruned: u64,
    /// Directions added, summed over the run.
    pub expanded: u64,
    /// Per matrix: whether its rank ever changed.
    pub ever_changed: Vec<bool>,
    /// Moves that undo the matrix's own move at the previous adjustment step (a direction
    /// added then pruned straight away, or the reverse): churn rather than allocation.
    pub reversals: u64,
    /// The latest Kendall τ_b between consecutive adjustments' scores.
    pub last_tau: Option<f64>,
    /// Sum and count of those τ_b, for the run's mean.
    pub tau_sum: f64,
    /// Number of τ_b values in `tau_sum`.
    pub tau_count: u64,
    /// The scores of the latest adjustment, to compare the next one with.
    pub previous_scores: Option<Vec<f64>>,
    /// Per matrix: the sign of its move at the latest adjustment (−1 pruned, +1 expanded, 0
    /// unchanged); empty before the first adjustment.
    previous_moves: Vec<i8>,
}

/// The figures of [`AllocationActivity`] a run reports (`summary.json`, a line of
/// `ranks.jsonl` carries the running values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivityReport {
    /// Adjustment steps that ran.
    pub adjustments: u64,
    /// Directions moved: prune/expand pairs with both sides on; otherwise the one side's count.
    pub moves: u64,
    /// `moves / initial total rank`.
    pub moved_fraction: f64,
    /// Matrices whose rank ever changed.
    pub matrices_changed: usize,
    /// Matrices in all.
    pub matrices: usize,
    /// Moves that undid the same matrix's move at the previous adjustment.
    pub reversals: u64,
    /// Mean Kendall τ_b between consecutive adjustments' scores (`None` before two
    /// adjustments).
    pub mean_tau: Option<f64>,
    /// The latest such τ_b.
    pub last_tau: Option<f64>,
}

impl AllocationActivity {
    /// A tracker for matrices whose ranks start at `ranks`.
    pub fn new(ranks: &[usize]) -> Self {
        Self {
            initial_total_rank: ranks.iter().sum(),
            ever_changed: vec![false; ranks.len()],
            ..Self::default()
        }
    }

    /// Kendall τ_b of `scores` against the previous adjustment's (`None` at the first one).
    pub fn tau_against_previous(&self, scores: &[f64]) -> Option<f64> {
        self.previous_scores
            .as_deref()
            .and_then(|prev| kendall_tau_b(prev, scores))
    }

    /// Records one adjustment step: the scores it was decided on, their τ against the previous
    /// adjustment's ([`AllocationActivity::tau_against_previous`], which the caller has already
    /// computed to size the step), and the matrices that lost (`pruned`) and gained
    /// (`expanded`) a direction.
    pub fn record(
        &mut self,
        scores: &[f64],
        tau: Option<f64>,
        pruned: &[usize],
        expanded: &[usize],
    ) {
        if let Some(tau) = tau {
            self.tau_sum += tau;
            self.tau_count += 1;
            self.last_tau = Some(tau);
        }
        let k = scores.len().max(self.ever_changed.len());
        self.ever_changed.resize(k, false);
        let mut moves = vec![0i8; k];
        for &i in pruned.iter().filter(|&&i| i < k) {
            moves[i] = -1;
        }
        for &i in expanded.iter().filter(|&&i| i < k) {
            moves[i] = 1;
        }
        for (i, &m) in moves.iter().enumerate() {
            if m == 0 {
                continue;
            }
            self.ever_changed[i] = true;
            if self.previous_moves.get(i) == Some(&-m) {
                self.reversals += 1;
            }
        }
        self.previous_moves = moves;
        self.previous_scores = Some(scores.to_vec());
        self.adjustments += 1;
        self.pruned += pruned.len() as u64;
        self.expanded += expanded.len() as u64;
    }

    /// The run's figures so far.
    pub fn report(&self) -> ActivityReport {
        let moves = self.pruned.max(self.expanded);
        ActivityReport {
            adjustments: self.adjustments,
            moves,
            moved_fraction: if self.initial_total_rank == 0 {
                0.0
            } else {
                moves as f64 / self.initial_total_rank as f64
            },
            matrices_changed: self.ever_changed.iter().filter(|&&c| c).count(),
            matrices: self.ever_changed.len(),
            reversals: self.reversals,
            mean_tau: (self.tau_count > 0).then(|| self.tau_sum / self.tau_count as f64),
            last_tau: self.last_tau,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tau_hand_computed() {
        assert_eq!(
            kendall_tau_b(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]),
            Some(1.0)
        );
        assert_eq!(
            kendall_tau_b(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]),
            Some(-1.0)
        );
        // Pairs (0,1) C, (0,2) D, (0,3) C, (1,2) D, (1,3) D, (2,3) C: (3 − 3) / 6 = 0.
        assert_eq!(
            kendall_tau_b(&[1.0, 2.0, 3.0, 4.0], &[2.0, 4.0, 1.0, 3.0]),
            Some(0.0)
        );
        // With ties: a = (1, 1, 2), b = (1, 2, 3): C = 2, D = 0, ties in a = 1:
        // 2 / sqrt((3 − 1) · 3) = 0.816496580927726.
        let t = kendall_tau_b(&[1.0, 1.0, 2.0], &[1.0, 2.0, 3.0]).unwrap();
        assert!((t - 0.816_496_580_927_726).abs() < 1e-12, "{t}");
        assert_eq!(kendall_tau_b(&[1.0, 1.0], &[1.0, 2.0]), None);
        assert_eq!(kendall_tau_b(&[1.0], &[1.0]), None);
        assert_eq!(kendall_tau_b(&[1.0, f64::NAN], &[1.0, 2.0]), None);
        assert_eq!(kendall_tau_b(&[1.0, 2.0], &[1.0]), None);
    }

    /// Records an adjustment with the τ its scores have against the previous ones.
    fn record(a: &mut AllocationActivity, scores: &[f64], pruned: &[usize], expanded: &[usize]) {
        let tau = a.tau_against_previous(scores);
        a.record(scores, tau, pruned, expanded);
    }

    #[test]
    fn activity_counts_moves_changes_reversals_and_tau() {
        let mut a = AllocationActivity::new(&[4, 4, 4, 4]);
        record(&mut a, &[0.1, 0.2, 0.3, 0.4], &[0], &[3]);
        assert_eq!(a.report().mean_tau, None);
        // Matrix 0 gains back what it lost: a reversal; so does matrix 3. Ranking reversed.
        record(&mut a, &[0.4, 0.3, 0.2, 0.1], &[3], &[0]);
        // An empty adjustment still counts and compares scores.
        record(&mut a, &[0.4, 0.3, 0.2, 0.1], &[], &[]);
        let r = a.report();
        assert_eq!(r.adjustments, 3);
        assert_eq!(r.moves, 2);
        assert_eq!(r.moved_fraction, 2.0 / 16.0);
        assert_eq!((r.matrices_changed, r.matrices), (2, 4));
        assert_eq!(r.reversals, 2);
        assert_eq!(r.last_tau, Some(1.0));
        assert_eq!(r.mean_tau, Some(0.0));
        // Not a reversal when an adjustment lies between the two moves.
        record(&mut a, &[0.1, 0.2, 0.3, 0.4], &[0], &[3]);
        assert_eq!(a.report().reversals, 2);
    }

    #[test]
    fn activity_survives_serde_exactly() {
        let mut a = AllocationActivity::new(&[2, 3]);
        record(&mut a, &[0.25, 0.75], &[0], &[1]);
        let text = serde_json::to_string(&a).unwrap();
        let back: AllocationActivity = serde_json::from_str(&text).unwrap();
        assert_eq!(back, a);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn tau_is_symmetric_bounded_and_one_on_itself(
            v in proptest::collection::vec((0u8..6, 0u8..6), 2..30),
        ) {
            let a: Vec<f64> = v.iter().map(|x| f64::from(x.0)).collect();
            let b: Vec<f64> = v.iter().map(|x| f64::from(x.1)).collect();
            if let Some(t) = kendall_tau_b(&a, &b) {
                prop_assert!((-1.0 - 1e-12..=1.0 + 1e-12).contains(&t), "{t}");
                prop_assert_eq!(Some(t), kendall_tau_b(&b, &a));
                let neg: Vec<f64> = b.iter().map(|x| -x).collect();
                let tn = kendall_tau_b(&a, &neg).unwrap();
                prop_assert!((t + tn).abs() < 1e-12);
            }
            if let Some(t) = kendall_tau_b(&a, &a) {
                prop_assert!((t - 1.0).abs() < 1e-12);
            }
        }
    }
}
