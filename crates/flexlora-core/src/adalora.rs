//! AdaLoRA's budget logic as Hugging Face PEFT implements it (docs/method.md §5), without tensors.
//!
//! The gradient-based triplet scores (EMA sensitivity times EMA uncertainty) are tensor work
//! and live with the adapters; what is here decides, from those scores, how many triplets keep
//! their `λ` and which.

use crate::schedule::ScheduleError;
use serde::{Deserialize, Serialize};

/// AdaLoRA's cubic total-rank budget, from `init_r · K` down to `target_r · K`.
///
/// For optimiser step `t` (PEFT's `RankAllocator.budget_schedule`):
/// - `t ≤ t_init`: budget = initial, no masking;
/// - `t > T − t_final`: budget = target, mask at every step;
/// - otherwise `m = 1 − (t − t_init) / (T − t_final − t_init)`,
///   budget = `⌊(initial − target) · m³ + target⌋`, mask when `t mod ΔT = 0`.
///
/// Note the masking interval is `t mod ΔT` here, not `(t − t_init) mod ΔT` as in FlexLoRA's
/// reference; both are kept as their authors wrote them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdaLoraBudget {
    /// `init_r · K`: every triplet of every adapted matrix.
    pub initial: usize,
    /// `target_r · K`.
    pub target: usize,
    /// Steps before the first masking.
    pub t_init: u64,
    /// Steps at the end with the final mask.
    pub t_final: u64,
    /// Masking interval `ΔT` (at least 1).
    pub delta_t: u64,
    /// Total optimiser steps `T`.
    pub total_steps: u64,
}

/// The budget at one step and whether to mask there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdaLoraStep {
    /// Number of triplets allowed a non-zero `λ`.
    pub budget: usize,
    /// Whether the triplets are masked to `budget` after this step.
    pub mask: bool,
}

impl AdaLoraBudget {
    /// The budget and masking flag at PEFT's `global_step = t` (`RankAllocator.budget_schedule`;
    /// see [`AdaLoraAction`] for how `t` counts and what PEFT does around it).
    pub fn at(&self, t: u64) -> AdaLoraStep {
        if t <= self.t_init {
            return AdaLoraStep {
                budget: self.initial,
                mask: false,
            };
        }
        if t > self.total_steps.saturating_sub(self.t_final) {
            return AdaLoraStep {
                budget: self.target,
                mask: true,
            };
        }
        let window = self
            .total_steps
            .saturating_sub(self.t_final)
            .saturating_sub(self.t_init);
        let m = 1.0 - (t - self.t_init) as f64 / window as f64;
        let span = self.initial as f64 - self.target as f64;
        // `powf` (C `pow`) rather than `powi`, to round exactly as Python's `m ** 3` does.
        let budget = (span * m.powf(3.0) + self.target as f64).trunc().max(0.0) as usize;
        AdaLoraStep {
            budget,
            mask: t % self.delta_t.max(1) == 0,
        }
    }
}

/// What PEFT's `AdaLoraModel.update_and_allocate(global_step)` does at one step
/// (`peft/tuners/adalora/model.py`, PEFT 0.21.2), with `global_step` counted as PEFT's own
/// example counts it: the number of optimiser steps taken *before* the one just made (the call
/// comes after `optimizer.step()`, with the gradients still in place, and before `zero_grad()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum AdaLoraAction {
    /// `global_step < T − t_final`: update the sensitivity EMAs from the current gradients,
    /// then, when `mask`, mask the triplets to `budget` with the fresh scores
    /// (`RankAllocator.update_and_allocate`).
    Update {
        /// The budget of [`AdaLoraBudget::at`].
        budget: usize,
        /// Whether to mask at this step (`t > t_init` and `t mod ΔT = 0`).
        mask: bool,
    },
    /// `global_step = T − t_final`: mask to `budget` (the target) with the scores as they are
    /// (no EMA update, `force_mask=True`), keep that pattern for the rest of training, and drop
    /// the EMAs (`reset_ipt`).
    Finalise {
        /// The budget, `target`.
        budget: usize,
    },
    /// `global_step > T − t_final`: zero the `λ` the final pattern masks, again
    /// (`mask_using_rank_pattern`); the EMAs are no longer updated.
    Reapply,
}

impl AdaLoraBudget {
    /// What PEFT's `update_and_allocate(global_step)` does at `global_step` (see
    /// [`AdaLoraAction`]). With `t_final = 0` the final phase is never reached (the last
    /// `global_step` is `T − 1`), exactly as in PEFT.
    pub fn action(&self, global_step: u64) -> AdaLoraAction {
        let end = self.total_steps.saturating_sub(self.t_final);
        match global_step.cmp(&end) {
            std::cmp::Ordering::Less => {
                let s = self.at(global_step);
                AdaLoraAction::Update {
                    budget: s.budget,
                    mask: s.mask,
                }
            }
            std::cmp::Ordering::Equal => AdaLoraAction::Finalise {
                budget: self.at(global_step).budget,
            },
            std::cmp::Ordering::Greater => AdaLoraAction::Reapply,
        }
    }

    /// Checks what PEFT's `AdaLoraConfig` checks, and what the budget needs: `T ≥ 1`,
    /// `t_init < T − t_final` (a budgeting phase exists), `ΔT ≥ 1`, `target ≤ initial`.
    /// `field` of the error is `total_steps`, `t_init`, `delta_t` or `target`.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        if self.total_steps == 0 {
            return Err(ScheduleError {
                field: "total_steps",
                message: "must be at least 1".into(),
            });
        }
        if self.t_init.saturating_add(self.t_final) >= self.total_steps {
            return Err(ScheduleError {
                field: "t_init",
                message: format!(
                    "t_init ({}) must be less than T − t_final ({} − {}): AdaLoRA needs a \
                     budgeting phase (PEFT's AdaLoraConfig refuses this too)",
                    self.t_init, self.total_steps, self.t_final
                ),
            });
        }
        if self.delta_t == 0 {
            return Err(ScheduleError {
                field: "delta_t",
                message: "must be at least 1".into(),
            });
        }
        if self.target > self.initial {
            return Err(ScheduleError {
                field: "target",
                message: format!(
                    "the target budget {} exceeds the initial one {}",
                    self.target, self.initial
                ),
            });
        }
        Ok(())
    }
}

/// Which triplets keep their `λ` when masking `scores` (one per triplet, all matrices
/// concatenated) down to `budget`, as PEFT does it: the threshold is the `k`-th smallest score
/// with `k = initial − budget`, and every triplet whose score is `≤` the threshold is masked.
///
/// Two PEFT behaviours are kept on purpose: ties at the threshold are all masked (so more than
/// `k` triplets can go), and a masked triplet is still scored and may come back at the next
/// masking. Where PEFT would call `kthvalue` with `k = 0` (an error in torch), nothing is
/// masked. NaN scores sort above every number (torch's order), so they are kept.
pub fn mask_to_budget(scores: &[f64], initial: usize, budget: usize) -> Vec<bool> {
    let k = initial.saturating_sub(budget).min(scores.len());
    if k == 0 {
        return vec![true; scores.len()];
    }
    let mut sorted = scores.to_vec();
    sorted.sort_by(f64::total_cmp);
    let threshold = sorted[k - 1];
    // Written as PEFT's `~(score <= threshold)` so NaN behaves as it does there.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    scores.iter().map(|&s| !(s <= threshold)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn budget() -> AdaLoraBudget {
        // 6 matrices, init_r 12 -> target_r 8 (the README's AdaLoRA baseline setting).
        AdaLoraBudget {
            initial: 72,
            target: 48,
            t_init: 10,
            t_final: 20,
            delta_t: 5,
            total_steps: 100,
        }
    }

    #[test]
    fn phases_match_peft() {
        let b = budget();
        assert_eq!(
            b.at(0),
            AdaLoraStep {
                budget: 72,
                mask: false
            }
        );
        assert_eq!(
            b.at(10),
            AdaLoraStep {
                budget: 72,
                mask: false
            }
        );
        // t = 45: m = 1 - 35/70 = 0.5; 24 * 0.125 + 48 = 51.
        assert_eq!(
            b.at(45),
            AdaLoraStep {
                budget: 51,
                mask: true
            }
        );
        // t = 44: m = 1 - 34/70; 24 * m^3 + 48 = 51.26 -> 51; 44 mod 5 != 0.
        assert_eq!(
            b.at(44),
            AdaLoraStep {
                budget: 51,
                mask: false
            }
        );
        // t = 11: m = 69/70; 24 * 0.9578 + 48 = 70.99 -> 70 (truncation, not rounding).
        assert_eq!(b.at(11).budget, 70);
        // t = 80 = T - t_final: still the cubic branch, m = 0.
        assert_eq!(
            b.at(80),
            AdaLoraStep {
                budget: 48,
                mask: true
            }
        );
        assert_eq!(
            b.at(81),
            AdaLoraStep {
                budget: 48,
                mask: true
            }
        );
    }

    #[test]
    fn mask_keeps_the_top_scores() {
        let s = [0.5, 0.1, 0.9, 0.3, 0.7];
        assert_eq!(
            mask_to_budget(&s, 5, 3),
            vec![true, false, true, false, true]
        );
        assert_eq!(
            mask_to_budget(&s, 5, 5),
            vec![true; 5],
            "k = 0 masks nothing"
        );
        assert_eq!(mask_to_budget(&s, 5, 0), vec![false; 5]);
    }

    #[test]
    fn ties_at_threshold_are_all_masked_as_in_peft() {
        let s = [0.2, 0.2, 0.2, 0.9];
        assert_eq!(mask_to_budget(&s, 4, 3), vec![false, false, false, true]);
    }

    #[test]
    fn actions_follow_peft_update_and_allocate() {
        // T = 100, t_final = 20: update (and mask on multiples of 5 after t_init = 10) before
        // 80, finalise at 80, re-apply after.
        let b = budget();
        assert_eq!(
            b.action(0),
            AdaLoraAction::Update {
                budget: 72,
                mask: false
            }
        );
        assert_eq!(
            b.action(10),
            AdaLoraAction::Update {
                budget: 72,
                mask: false
            }
        );
        assert_eq!(
            b.action(45),
            AdaLoraAction::Update {
                budget: 51,
                mask: true
            }
        );
        assert_eq!(
            b.action(79),
            AdaLoraAction::Update {
                budget: 48,
                mask: false
            }
        );
        // Finalising masks whether or not T − t_final is a multiple of ΔT (`force_mask`).
        assert_eq!(b.action(80), AdaLoraAction::Finalise { budget: 48 });
        let odd = AdaLoraBudget {
            delta_t: 7,
            ..b.clone()
        };
        assert_eq!(odd.action(80), AdaLoraAction::Finalise { budget: 48 });
        assert_eq!(b.action(81), AdaLoraAction::Reapply);
        assert_eq!(b.action(99), AdaLoraAction::Reapply);
        // t_final = 0: the last call is global_step T − 1, still updating.
        let no_final = AdaLoraBudget {
            t_final: 0,
            ..b.clone()
        };
        assert!(matches!(no_final.action(99), AdaLoraAction::Update { .. }));
    }

    #[test]
    fn validation_matches_peft_config() {
        let b = budget();
        assert!(b.validate().is_ok());
        let e = AdaLoraBudget {
            t_init: 80,
            ..b.clone()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "t_init");
        assert!(
            AdaLoraBudget {
                t_init: 79,
                ..b.clone()
            }
            .validate()
            .is_ok()
        );
        assert_eq!(
            AdaLoraBudget {
                delta_t: 0,
                ..b.clone()
            }
            .validate()
            .unwrap_err()
            .field,
            "delta_t"
        );
        assert_eq!(
            AdaLoraBudget {
                total_steps: 0,
                t_init: 0,
                t_final: 0,
                ..b.clone()
            }
            .validate()
            .unwrap_err()
            .field,
            "total_steps"
        );
        assert_eq!(
            AdaLoraBudget { target: 73, ..b }
                .validate()
                .unwrap_err()
                .field,
            "target"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn budget_is_monotone_and_bounded(
            init_r in 1usize..16, shrink in 0usize..16, k in 1usize..50,
            t_init in 0u64..100, t_final in 0u64..100, extra in 1u64..300, delta_t in 1u64..10,
        ) {
            let target_r = init_r.saturating_sub(shrink).max(1);
            let b = AdaLoraBudget {
                initial: init_r * k, target: target_r * k, t_init, t_final, delta_t,
                total_steps: t_init + t_final + extra,
            };
            let mut last = usize::MAX;
            for t in 0..=b.total_steps + 5 {
                let s = b.at(t);
                prop_assert!(s.budget >= b.target && s.budget <= b.initial);
                prop_assert!(s.budget <= last);
                last = s.budget;
            }
        }

        #[test]
        fn mask_keeps_at_most_budget(
            scores in proptest::collection::vec(0f64..1.0, 1..100), cut in 0usize..100,
        ) {
            let n = scores.len();
            let budget = n.saturating_sub(cut);
            let keep = mask_to_budget(&scores, n, budget);
            prop_assert!(keep.iter().filter(|&&k| k).count() <= budget);
            // Every kept score beats every masked one.
            for (i, &ki) in keep.iter().enumerate() {
                for (j, &kj) in keep.iter().enumerate() {
                    if ki && !kj { prop_assert!(scores[i] > scores[j]); }
                }
            }
        }
    }
}
