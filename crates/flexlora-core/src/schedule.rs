//! When ranks move and how many move (docs/method.md §3).
//!
//! `t` counts optimiser steps, never micro-batches: the allocation hook runs after optimiser
//! step `t` (`t = 1` after the first update), whatever the gradient accumulation.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// How the number of rank moves per adjustment step, `b(t)`, decays over training.
///
/// With progress `p = clamp((t − t_init) / (T − t_final − t_init), 0, 1)`:
///
/// | schedule | `b(t)` before rounding |
/// | --- | --- |
/// | `cubic` | `b0 · (1 − p)³` (AdaLoRA-style cubic decay; the paper's wording) |
/// | `cubic_ref` | `b0 · (1 − p³)` (what the reference's scheduler computes) |
/// | `linear` | `b0 · (1 − p)` |
/// | `exp` | `b0 · exp(−k·p)`, `k` = `exp_rate` (default 5: `b` ends near 0.7 % of `b0`) |
/// | `constant` | `b0` (what the reference's GLUE driver runs, with `b0 = 4`) |
/// | `adaptive` | `b0 · (1 − max(τ, 0))`, τ = Kendall's τ_b of the importance ranking against the previous adjustment's ([`AdjustmentSchedule::adaptive_moves`]) |
///
/// `b(t)` is then rounded to the nearest integer, halves to even (Python's `round`, which the
/// reference uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetSchedule {
    /// `b0 · (1 − p)³`.
    #[default]
    Cubic,
    /// `b0 · (1 − p³)`.
    CubicRef,
    /// `b0 · (1 − p)`.
    Linear,
    /// `b0 · exp(−k·p)`.
    Exp,
    /// `b0`.
    Constant,
    /// Set by the scores themselves: `b0` scaled by how much the importance ranking changed
    /// since the previous adjustment (see [`AdjustmentSchedule::adaptive_moves`]).
    Adaptive,
}

impl BudgetSchedule {
    /// The decay factor at progress `p ∈ [0, 1]`, before multiplying by `b0`.
    pub fn factor(self, p: f64, exp_rate: f64) -> f64 {
        match self {
            BudgetSchedule::Cubic => (1.0 - p).powi(3),
            BudgetSchedule::CubicRef => 1.0 - p.powi(3),
            BudgetSchedule::Linear => 1.0 - p,
            BudgetSchedule::Exp => (-exp_rate * p).exp(),
            // The cap; the ranking's stability lowers it at run time.
            BudgetSchedule::Constant | BudgetSchedule::Adaptive => 1.0,
        }
    }

    /// The config name of this schedule.
    pub fn name(self) -> &'static str {
        match self {
            BudgetSchedule::Cubic => "cubic",
            BudgetSchedule::CubicRef => "cubic_ref",
            BudgetSchedule::Linear => "linear",
            BudgetSchedule::Exp => "exp",
            BudgetSchedule::Constant => "constant",
            BudgetSchedule::Adaptive => "adaptive",
        }
    }
}

/// An impossible schedule. `field` is the name of the offending parameter as the config spells
/// it, so the config layer can name the full key.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{field}: {message}")]
pub struct ScheduleError {
    /// The parameter at fault (`t_init`, `t_final`, `delta_t`, `b0`, `total_steps`, `exp_rate`).
    pub field: &'static str,
    /// What was wrong and what is allowed.
    pub message: String,
}

/// The complete rule for FlexLoRA's adjustment steps and their move counts.
///
/// Adjustment steps are the `t` with `t_init < t < T − t_final` and `(t − t_init) mod ΔT = 0`
/// (as in the reference). At such a step `b(t)` matrices lose a direction and `b(t)` gain one;
/// a step whose `b(t)` rounds to 0 moves nothing. From `T − t_final` on, ranks are frozen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdjustmentSchedule {
    /// Warm-up steps before the first adjustment (`t_init`).
    pub t_init: u64,
    /// Steps at the end with frozen ranks (`t_final`).
    pub t_final: u64,
    /// Interval between adjustments (`ΔT`), at least 1.
    pub delta_t: u64,
    /// Total number of optimiser steps of the run (`T`).
    pub total_steps: u64,
    /// Moves per adjustment at the start of the window (`b0`), at least 1.
    pub b0: u32,
    /// How `b(t)` decays.
    pub schedule: BudgetSchedule,
    /// `k` of the `exp` schedule; ignored by the others.
    pub exp_rate: f64,
}

impl AdjustmentSchedule {
    /// Checks that the schedule is possible: `t_init + t_final < T` (else there is no window),
    /// `ΔT ≥ 1`, and a finite positive `exp_rate`. `b0 = 0` is allowed: no step moves ranks
    /// (the SVD form with fixed ranks, the control that isolates what allocation adds).
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
                    "t_init ({}) + t_final ({}) must be less than the total number of optimiser \
                     steps T ({}), else no step can adjust ranks",
                    self.t_init, self.t_final, self.total_steps
                ),
            });
        }
        if self.delta_t == 0 {
            return Err(ScheduleError {
                field: "delta_t",
                message: "must be at least 1".into(),
            });
        }
        // The first candidate step is t_init + delta_t; it must come before T - t_final.
        let frozen_from = self.total_steps - self.t_final;
        if self.t_init.saturating_add(self.delta_t) >= frozen_from {
            return Err(ScheduleError {
                field: "delta_t",
                message: format!(
                    "no step adjusts ranks: the first candidate, t_init + delta_t = {} + {} = {}, \
                     is not before T - t_final = {} - {} = {} (t_final counts the last steps, \
                     with frozen ranks); lower t_init, delta_t or t_final",
                    self.t_init,
                    self.delta_t,
                    self.t_init + self.delta_t,
                    self.total_steps,
                    self.t_final,
                    frozen_from
                ),
            });
        }
        if !(self.exp_rate.is_finite() && self.exp_rate > 0.0) {
            return Err(ScheduleError {
                field: "exp_rate",
                message: format!("must be a finite number > 0, got {}", self.exp_rate),
            });
        }
        Ok(())
    }

    /// The first step with frozen ranks, `T − t_final`.
    pub fn freeze_step(&self) -> u64 {
        self.total_steps.saturating_sub(self.t_final)
    }

    /// Progress `p = clamp((t − t_init) / (T − t_final − t_init), 0, 1)`.
    pub fn progress(&self, t: u64) -> f64 {
        let window = self.freeze_step().saturating_sub(self.t_init);
        if window == 0 {
            return 1.0;
        }
        ((t as f64 - self.t_init as f64) / window as f64).clamp(0.0, 1.0)
    }

    /// `b(t)`: the decayed move count, rounded to the nearest integer with halves to even.
    pub fn budget(&self, t: u64) -> u32 {
        let raw = f64::from(self.b0) * self.schedule.factor(self.progress(t), self.exp_rate);
        raw.round_ties_even().clamp(0.0, f64::from(self.b0)) as u32
    }

    /// Whether `t` is an adjustment step: `t_init < t < T − t_final` and
    /// `(t − t_init) mod ΔT = 0`. (`b(t)` may still be 0 there.)
    pub fn is_adjustment_step(&self, t: u64) -> bool {
        t > self.t_init
            && t < self.freeze_step()
            && self.delta_t > 0
            && (t - self.t_init) % self.delta_t == 0
    }

    /// The number of moves to make after optimiser step `t`: `Some(b(t))` at an adjustment step
    /// whose `b(t) > 0`, otherwise `None`.
    pub fn moves_at(&self, t: u64) -> Option<u32> {
        if !self.is_adjustment_step(t) {
            return None;
        }
        Some(self.budget(t)).filter(|&b| b > 0)
    }

    /// The moves to make at an adjustment step whose schedule allows `cap` (its `b(t)`), given
    /// Kendall's τ_b between this step's importance scores and the previous adjustment's
    /// (`None` at the first adjustment, or when the ranking is all ties).
    ///
    /// For every schedule but `adaptive` this is `cap`. `adaptive` (the paper's first open
    /// question, a task-aware schedule) moves `round(cap · (1 − max(τ, 0)))`, halves to even:
    /// all `b0` while the ranking is no better than unrelated to the previous one or when there
    /// is nothing to compare, fewer as consecutive rankings agree, none once the ranking stops
    /// changing at all. The moves themselves change the moved matrices' scores, so a ranking
    /// only settles when the allocation has stopped reshuffling it.
    pub fn adaptive_moves(&self, cap: u32, tau: Option<f64>) -> u32 {
        if self.schedule != BudgetSchedule::Adaptive {
            return cap;
        }
        let Some(tau) = tau.filter(|t| t.is_finite()) else {
            return cap;
        };
        let raw = f64::from(cap) * (1.0 - tau.clamp(0.0, 1.0));
        raw.round_ties_even().clamp(0.0, f64::from(cap)) as u32
    }

    /// Every step that moves ranks, with its `b(t)`, in order.
    pub fn adjustment_steps(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        let first = self.t_init + self.delta_t.max(1);
        (first..self.freeze_step())
            .step_by(self.delta_t.max(1) as usize)
            .filter_map(move |t| self.moves_at(t).map(|b| (t, b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sched(t_init: u64, t_final: u64, delta_t: u64, total: u64, b0: u32) -> AdjustmentSchedule {
        AdjustmentSchedule {
            t_init,
            t_final,
            delta_t,
            total_steps: total,
            b0,
            schedule: BudgetSchedule::Cubic,
            exp_rate: 5.0,
        }
    }

    #[test]
    fn window_and_interval() {
        // t_init = 10, T = 100, t_final = 20: adjustments at 15, 20, ..., 75 (80 is frozen).
        let s = sched(10, 20, 5, 100, 4);
        let steps: Vec<u64> = (0..=100).filter(|&t| s.is_adjustment_step(t)).collect();
        assert_eq!(steps, (15..=75).step_by(5).collect::<Vec<_>>());
        assert_eq!(s.freeze_step(), 80);
        assert!(!s.is_adjustment_step(10), "t_init itself never adjusts");
        assert!(!s.is_adjustment_step(80), "T - t_final is already frozen");
    }

    #[test]
    fn hand_computed_budgets_per_schedule() {
        // Window 10..80 (length 70). At t = 45: p = 0.5.
        let mut s = sched(10, 20, 5, 100, 4);
        let cases = [
            (BudgetSchedule::Cubic, 0),    // 4 * 0.125 = 0.5 -> 0 (half to even)
            (BudgetSchedule::CubicRef, 4), // 4 * 0.875 = 3.5 -> 4 (half to even)
            (BudgetSchedule::Linear, 2),   // 4 * 0.5 = 2
            (BudgetSchedule::Exp, 0),      // 4 * e^-2.5 = 0.328 -> 0
            (BudgetSchedule::Constant, 4), // 4
        ];
        for (kind, want) in cases {
            s.schedule = kind;
            assert_eq!(s.budget(45), want, "{}", kind.name());
        }
        // At t = 24: p = 0.2; cubic 4 * 0.512 = 2.048 -> 2; cubic_ref 4 * 0.992 = 3.968 -> 4.
        s.schedule = BudgetSchedule::Cubic;
        assert_eq!(s.budget(24), 2);
        s.schedule = BudgetSchedule::CubicRef;
        assert_eq!(s.budget(24), 4);
    }

    #[test]
    fn rounding_is_half_to_even() {
        // Linear, b0 = 4, window 0..8 (dyadic, so every product is exact):
        // t = 1 -> 3.5 -> 4; t = 3 -> 2.5 -> 2; t = 5 -> 1.5 -> 2; t = 7 -> 0.5 -> 0.
        let mut s = sched(0, 0, 1, 8, 4);
        s.schedule = BudgetSchedule::Linear;
        assert_eq!(s.budget(1), 4);
        assert_eq!(s.budget(3), 2);
        assert_eq!(s.budget(5), 2);
        assert_eq!(s.budget(7), 0);
    }

    #[test]
    fn zero_budget_steps_do_not_move() {
        let s = sched(10, 20, 5, 100, 4);
        assert_eq!(s.moves_at(45), None, "cubic b(45) = 0");
        assert_eq!(s.moves_at(15), Some(3), "4 * (1 - 5/70)^3 = 3.2 -> 3");
        let listed: Vec<(u64, u32)> = s.adjustment_steps().collect();
        assert!(
            listed
                .iter()
                .all(|&(t, b)| b > 0 && s.moves_at(t) == Some(b))
        );
        assert_eq!(listed.first(), Some(&(15, 3)));
    }

    #[test]
    fn adaptive_moves_follow_the_ranking_stability() {
        let mut s = sched(0, 0, 1, 100, 8);
        s.schedule = BudgetSchedule::Adaptive;
        // The dry-run cap is b0 at every adjustment step.
        assert!(s.adjustment_steps().all(|(_, b)| b == 8));
        assert_eq!(s.adaptive_moves(8, None), 8);
        assert_eq!(s.adaptive_moves(8, Some(-0.4)), 8);
        assert_eq!(s.adaptive_moves(8, Some(0.0)), 8);
        assert_eq!(s.adaptive_moves(8, Some(0.5)), 4);
        assert_eq!(
            s.adaptive_moves(8, Some(0.8125)),
            2,
            "8 * 0.1875 = 1.5 -> 2"
        );
        assert_eq!(
            s.adaptive_moves(8, Some(0.9375)),
            0,
            "8 * 0.0625 = 0.5 -> 0"
        );
        assert_eq!(s.adaptive_moves(8, Some(1.0)), 0);
        assert_eq!(s.adaptive_moves(8, Some(f64::NAN)), 8);
        // Every other schedule ignores τ.
        s.schedule = BudgetSchedule::Cubic;
        assert_eq!(s.adaptive_moves(3, Some(1.0)), 3);
    }

    #[test]
    fn impossible_schedules_name_the_field() {
        assert_eq!(
            sched(50, 50, 1, 100, 4).validate().unwrap_err().field,
            "t_init"
        );
        assert_eq!(
            sched(0, 0, 0, 100, 4).validate().unwrap_err().field,
            "delta_t"
        );
        // b0 = 0 is the control: the SVD form with fixed ranks, no step adjusts.
        assert!(sched(0, 0, 1, 100, 0).validate().is_ok());
        assert_eq!(sched(0, 0, 1, 100, 0).adjustment_steps().count(), 0);
        assert_eq!(
            sched(0, 0, 1, 0, 1).validate().unwrap_err().field,
            "total_steps"
        );
        let mut s = sched(0, 0, 1, 10, 1);
        s.exp_rate = f64::NAN;
        assert_eq!(s.validate().unwrap_err().field, "exp_rate");
        // t_init < t < T - t_final holds for t = 49 only when t_init = 48: with 49 no step
        // adjusts, and neither does a delta_t that jumps past the window.
        assert!(sched(48, 50, 1, 100, 4).validate().is_ok());
        assert_eq!(
            sched(49, 50, 1, 100, 4).validate().unwrap_err().field,
            "delta_t"
        );
        assert_eq!(
            sched(10, 35, 5, 50, 4).validate().unwrap_err().field,
            "delta_t"
        );
        assert!(sched(10, 34, 5, 50, 4).validate().is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn budget_never_exceeds_b0_and_never_increases(
            t_init in 0u64..200, t_final in 0u64..200, extra in 1u64..500,
            delta_t in 1u64..20, b0 in 1u32..16, kind in 0usize..5,
        ) {
            let kinds = [BudgetSchedule::Cubic, BudgetSchedule::CubicRef, BudgetSchedule::Linear,
                         BudgetSchedule::Exp, BudgetSchedule::Constant];
            let mut s = sched(t_init, t_final, delta_t, t_init + t_final + delta_t + extra, b0);
            s.schedule = kinds[kind];
            prop_assert!(s.validate().is_ok());
            let mut last = u32::MAX;
            for (t, b) in s.adjustment_steps() {
                prop_assert!(b >= 1 && b <= b0);
                prop_assert!(b <= last, "b rose from {last} to {b} at {t}");
                prop_assert!(t > s.t_init && t < s.freeze_step());
                prop_assert!((t - s.t_init) % s.delta_t == 0);
                last = b;
            }
        }
    }
}
