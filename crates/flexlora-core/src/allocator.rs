//! Bidirectional rank allocation under a fixed global budget (docs/method.md §3 and §4).
//!
//! At an adjustment step with `b = b(t) > 0`, every adapted matrix `k` has been scored once
//! (see [`crate::importance`]). The allocator then
//! - prunes one direction from each of the `b` lowest-scoring matrices with `r_k > 1`, and
//! - expands each of the `b` highest-scoring matrices with `r_k < r_max` by one direction,
//!
//! in pairs, so that `Σ r_k` never changes and no matrix is both pruned and expanded.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// One adapted matrix as the allocator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MatrixRank {
    /// Current number of active directions `r_k`.
    pub rank: usize,
    /// Capacity `r_max` (number of slots).
    pub r_max: usize,
    /// Importance score, computed once before any move of this step.
    pub score: f64,
}

/// Which side of the allocation is on (the paper's prune-only / expand-only ablations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocationDirection {
    /// FlexLoRA: prune and expand in pairs; the total rank is fixed.
    #[default]
    Both,
    /// Only prune the `b` lowest-scoring matrices: the total rank falls by up to `b` per step.
    PruneOnly,
    /// Only expand the `b` highest-scoring matrices: the total rank rises by up to `b` per step.
    ExpandOnly,
}

/// What one adjustment step does: matrix indices, in the order they were chosen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Matrices that lose one direction (lowest score first).
    pub prune: Vec<usize>,
    /// Matrices that gain one direction (highest score first).
    pub expand: Vec<usize>,
}

impl Decision {
    /// True when the step changes nothing.
    pub fn is_empty(&self) -> bool {
        self.prune.is_empty() && self.expand.is_empty()
    }
}

/// FlexLoRA's rank allocator.
///
/// Decisions are a pure function of `(matrices, b)`: the same inputs always give the same
/// decision. Rules, in order:
/// 1. A matrix with a non-finite score takes part in neither list (the reference's NaN
///    entropies were ranked highest by `torch.topk`, which made rank-1 matrices flip).
/// 2. Prune candidates (`rank > 1`) are ordered by score ascending, expand candidates
///    (`rank < r_max`) by score descending; ties go to the lower matrix index.
/// 3. `Both`: the i-th prune candidate is paired with the i-th expand candidate, and pairs are
///    taken while fewer than `b` have been taken and the expand candidate's score is strictly
///    higher than the prune candidate's. Moving rank between equally important matrices would
///    only churn; and because scores strictly increase from every pruned to every expanded
///    matrix, no matrix can be in both lists. When `K ≥ 2b` and scores are distinct this is
///    exactly "the b lowest lose, the b highest gain"; when fewer matrices are eligible than
///    `b`, fewer pairs move (the total is never broken to honour `b`).
/// 4. `PruneOnly` / `ExpandOnly`: the first `b` candidates of that one list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankAllocator {
    /// Which side of the allocation is on.
    pub direction: AllocationDirection,
}

impl RankAllocator {
    /// An allocator for the given direction.
    pub fn new(direction: AllocationDirection) -> Self {
        Self { direction }
    }

    /// Decides which matrices lose and which gain a direction at a step with `b` moves.
    pub fn decide(&self, matrices: &[MatrixRank], b: usize) -> Decision {
        let finite = |i: &usize| matrices[*i].score.is_finite();
        let mut prunable: Vec<usize> = (0..matrices.len())
            .filter(finite)
            .filter(|&i| matrices[i].rank > 1)
            .collect();
        prunable.sort_by(|&a, &c| by_score(matrices, a, c));
        let mut expandable: Vec<usize> = (0..matrices.len())
            .filter(finite)
            .filter(|&i| matrices[i].rank < matrices[i].r_max)
            .collect();
        expandable.sort_by(|&a, &c| {
            let (sa, sc) = (matrices[a].score, matrices[c].score);
            sc.total_cmp(&sa).then(a.cmp(&c))
        });

        match self.direction {
            AllocationDirection::PruneOnly => Decision {
                prune: prunable.into_iter().take(b).collect(),
                expand: Vec::new(),
            },
            AllocationDirection::ExpandOnly => Decision {
                prune: Vec::new(),
                expand: expandable.into_iter().take(b).collect(),
            },
            AllocationDirection::Both => {
                let (prune, expand) = prunable
                    .into_iter()
                    .zip(expandable)
                    .take(b)
                    .take_while(|&(p, e)| matrices[e].score > matrices[p].score)
                    .unzip();
                Decision { prune, expand }
            }
        }
    }
}

/// Ascending by score, then by index (scores are finite here).
fn by_score(m: &[MatrixRank], a: usize, b: usize) -> Ordering {
    m[a].score.total_cmp(&m[b].score).then(a.cmp(&b))
}

/// The slot to deactivate when a matrix is pruned: the active slot with the smallest `|λ|`
/// (least energy), ties to the lowest slot index. The reference takes `argmin(λ)` over signed
/// values, which removes a large negative direction; docs/method.md §3 fixes that. A NaN `λ` counts
/// as the largest magnitude, so it is never preferred. `None` when no slot is active.
pub fn slot_to_prune(lambdas: &[f32], active: &[bool]) -> Option<usize> {
    let magnitude = |i: usize| {
        let l = lambdas[i].abs();
        if l.is_nan() { f32::INFINITY } else { l }
    };
    (0..lambdas.len().min(active.len()))
        .filter(|&i| active[i])
        .min_by(|&a, &b| magnitude(a).total_cmp(&magnitude(b)).then(a.cmp(&b)))
}

/// The slot to activate when a matrix is expanded: the lowest free slot, `None` when full.
pub fn slot_to_expand(active: &[bool]) -> Option<usize> {
    active.iter().position(|&a| !a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(rank: usize, r_max: usize, score: f64) -> MatrixRank {
        MatrixRank { rank, r_max, score }
    }

    #[test]
    fn lowest_lose_highest_gain() {
        let ms = [
            m(4, 8, 0.5),
            m(4, 8, 0.1),
            m(4, 8, 0.9),
            m(4, 8, 0.3),
            m(4, 8, 0.7),
            m(4, 8, 0.8),
        ];
        let d = RankAllocator::default().decide(&ms, 2);
        assert_eq!(d.prune, vec![1, 3]);
        assert_eq!(d.expand, vec![2, 5]);
    }

    #[test]
    fn caps_exclude_matrices() {
        // Matrix 0 is lowest but at rank 1; matrix 2 is highest but full.
        let ms = [m(1, 8, 0.0), m(3, 8, 0.2), m(8, 8, 1.0), m(3, 8, 0.6)];
        let d = RankAllocator::default().decide(&ms, 1);
        assert_eq!(
            d,
            Decision {
                prune: vec![1],
                expand: vec![3]
            }
        );
    }

    /// The reference gives a rank-1 matrix a NaN entropy, ranked highest by topk, so it is
    /// forced to grow whatever the others score. Here NaN scores (which our metrics never
    /// produce) take part in nothing.
    #[test]
    fn reference_failure_nan_scores_take_part_in_nothing() {
        let ms = [m(4, 8, f64::NAN), m(4, 8, 0.2), m(4, 8, 0.9)];
        let d = RankAllocator::default().decide(&ms, 3);
        assert_eq!(
            d,
            Decision {
                prune: vec![1],
                expand: vec![2]
            }
        );
    }

    /// A matrix pruned down to rank 1 must be able to regrow (it could not when rank 1 scored
    /// the entropy's floor, 0). Scores come from the real metric: matrix 0 has one direction
    /// in use (entropy 1); matrices 1..4 hold their energy in one of four directions (low
    /// entropy), matrix 4 spreads it evenly. Over two adjustments with b = 1, matrix 0 grows
    /// first (it ties with matrix 4 at 1 and has the lower index), then matrix 4.
    #[test]
    fn rank_one_matrix_regrows() {
        let concentrated = [2.0f32, 0.05, 0.0, 0.01];
        let even = [1.0f32, -1.0, 1.0, 1.0];
        let mut spectra: Vec<Vec<f32>> = vec![vec![0.8], concentrated.to_vec()];
        spectra.push(vec![3.0, 0.1, 0.2, 0.0]);
        spectra.push(vec![1.0, 0.0, 0.0, 0.3]);
        spectra.push(even.to_vec());
        let score = |s: &[f32]| crate::spectral_entropy(s);
        let ms: Vec<MatrixRank> = spectra.iter().map(|s| m(s.len(), 8, score(s))).collect();
        assert_eq!(ms[0].score, 1.0);
        let d = RankAllocator::default().decide(&ms, 1);
        assert_eq!(d.expand, vec![0], "the rank-1 matrix regrows: {ms:?}");
        assert_eq!(d.prune.len(), 1);
        // Its new direction starts at λ = 0 (zero-impact) and then trains; once it carries
        // energy the matrix is an ordinary rank-2 matrix.
        spectra[0] = vec![0.8, 0.6];
        spectra[d.prune[0]].pop();
        let ms: Vec<MatrixRank> = spectra.iter().map(|s| m(s.len(), 8, score(s))).collect();
        let d = RankAllocator::default().decide(&ms, 1);
        assert_eq!(d.expand, vec![4]);
        // Every matrix at rank 1 and in use: nothing can be pruned, so nothing moves; that is
        // a property of the budget (see `flexlora schedule`'s warnings), not of the score.
        let ones = [m(1, 4, 1.0), m(1, 4, 1.0), m(1, 4, 1.0)];
        assert!(RankAllocator::default().decide(&ones, 2).is_empty());
    }

    /// b larger than the number of eligible matrices: fewer pairs, total kept.
    #[test]
    fn reference_failure_b_larger_than_eligible() {
        let ms = [m(2, 4, 0.1), m(1, 4, 0.4), m(4, 4, 0.9)];
        let d = RankAllocator::default().decide(&ms, 10);
        // prunable: 0 (0.1), 2 (0.9); expandable: 1 (0.4), 0 (0.1).
        // pair (0, 1): 0.4 > 0.1 -> move; pair (2, 0): 0.1 > 0.9 is false -> stop.
        assert_eq!(
            d,
            Decision {
                prune: vec![0],
                expand: vec![1]
            }
        );
    }

    /// All-zero λ everywhere (step 0 of an SVD adapter) gives equal scores: nothing moves.
    #[test]
    fn reference_failure_all_zero_lambda_moves_nothing() {
        let scores: Vec<f64> = (0..6).map(|_| crate::spectral_entropy(&[0.0; 4])).collect();
        let ms: Vec<MatrixRank> = scores.iter().map(|&s| m(4, 8, s)).collect();
        assert!(RankAllocator::default().decide(&ms, 2).is_empty());
    }

    #[test]
    fn ties_go_to_lower_index() {
        let ms = [m(4, 8, 0.1), m(4, 8, 0.1), m(4, 8, 0.9), m(4, 8, 0.9)];
        let d = RankAllocator::default().decide(&ms, 1);
        assert_eq!(
            d,
            Decision {
                prune: vec![0],
                expand: vec![2]
            }
        );
    }

    #[test]
    fn one_sided_ablations() {
        let ms = [m(1, 4, 0.0), m(2, 4, 0.3), m(4, 4, 0.9), m(3, 4, 0.5)];
        let prune = RankAllocator::new(AllocationDirection::PruneOnly).decide(&ms, 2);
        assert_eq!(
            prune,
            Decision {
                prune: vec![1, 3],
                expand: vec![]
            }
        );
        let expand = RankAllocator::new(AllocationDirection::ExpandOnly).decide(&ms, 2);
        assert_eq!(
            expand,
            Decision {
                prune: vec![],
                expand: vec![3, 1]
            }
        );
    }

    #[test]
    fn prune_slot_is_smallest_magnitude_not_smallest_signed() {
        // The reference's argmin(λ) would pick slot 0 (−5).
        let l = [-5.0, 0.3, -0.2, 0.2, 9.0];
        assert_eq!(slot_to_prune(&l, &[true; 5]), Some(2));
        assert_eq!(slot_to_prune(&l, &[true, true, false, true, true]), Some(3));
        assert_eq!(slot_to_prune(&[f32::NAN, 1.0], &[true, true]), Some(1));
        assert_eq!(slot_to_prune(&l, &[false; 5]), None);
    }

    #[test]
    fn expand_slot_is_lowest_free() {
        assert_eq!(slot_to_expand(&[true, false, true, false]), Some(1));
        assert_eq!(slot_to_expand(&[true, true]), None);
    }

    fn matrices() -> impl Strategy<Value = (Vec<MatrixRank>, usize)> {
        (1usize..24, 1usize..12).prop_flat_map(|(k, b)| {
            let one = (1usize..10).prop_flat_map(|r_max| {
                (
                    1..=r_max,
                    Just(r_max),
                    prop_oneof![
                        4 => 0.0f64..1.0,
                        1 => Just(0.0),
                        1 => Just(0.5),
                    ],
                )
                    .prop_map(|(rank, r_max, score)| MatrixRank {
                        rank,
                        r_max,
                        score,
                    })
            });
            (proptest::collection::vec(one, k), Just(b))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn allocation_invariants((ms, b) in matrices()) {
            let alloc = RankAllocator::default();
            let d = alloc.decide(&ms, b);
            // Fixed total: every prune is paired with an expansion.
            prop_assert_eq!(d.prune.len(), d.expand.len());
            prop_assert!(d.prune.len() <= b);
            // Caps: 1 <= r and r <= r_max after the step, each matrix moved at most once.
            let mut after: Vec<usize> = ms.iter().map(|x| x.rank).collect();
            for &i in &d.prune { after[i] -= 1; }
            for &i in &d.expand { after[i] += 1; }
            for (i, x) in ms.iter().enumerate() {
                prop_assert!(after[i] >= 1 && after[i] <= x.r_max);
            }
            prop_assert_eq!(after.iter().sum::<usize>(), ms.iter().map(|x| x.rank).sum::<usize>());
            // Never both pruned and expanded; no duplicates.
            let mut seen = std::collections::HashSet::new();
            for i in d.prune.iter().chain(&d.expand) {
                prop_assert!(seen.insert(*i), "matrix {} chosen twice", i);
            }
            // Every pruned matrix scores strictly below every expanded one.
            for &p in &d.prune {
                for &e in &d.expand {
                    prop_assert!(ms[p].score < ms[e].score);
                }
            }
            // Deterministic: the same inputs give the same decision.
            prop_assert_eq!(alloc.decide(&ms, b), d);
        }

        #[test]
        fn maximal_when_scores_are_distinct(
            scores in proptest::collection::hash_set(0u32..1_000_000, 2..20),
            b in 1usize..12,
        ) {
            let ms: Vec<MatrixRank> =
                scores.iter().map(|&s| m(4, 8, f64::from(s))).collect();
            let d = RankAllocator::default().decide(&ms, b);
            prop_assert_eq!(d.prune.len(), b.min(ms.len() / 2));
        }

        #[test]
        fn one_sided_respect_caps((ms, b) in matrices()) {
            let p = RankAllocator::new(AllocationDirection::PruneOnly).decide(&ms, b);
            prop_assert!(p.expand.is_empty() && p.prune.len() <= b);
            prop_assert!(p.prune.iter().all(|&i| ms[i].rank > 1));
            let e = RankAllocator::new(AllocationDirection::ExpandOnly).decide(&ms, b);
            prop_assert!(e.prune.is_empty() && e.expand.len() <= b);
            prop_assert!(e.expand.iter().all(|&i| ms[i].rank < ms[i].r_max));
        }
    }
}
