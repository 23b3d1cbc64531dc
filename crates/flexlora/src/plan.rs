//! The dry-run plan behind `flexlora schedule`: how many optimiser steps a run has, and at which
//! of them ranks move.

use crate::config::{Config, MethodName};
use crate::data::{SplitSizes, count_examples, split_sizes};
use flexlora_core::AllocationDirection;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// Where the run's number of optimiser steps `T` comes from.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum StepCount {
    /// `training.max_steps`.
    MaxSteps {
        /// The configured value.
        max_steps: u64,
    },
    /// Epochs times optimiser steps per epoch, from the size of the training split.
    Epochs {
        /// Examples in the data file.
        examples: u64,
        /// The split of those examples.
        split: SplitSizes,
        /// Passes over the training split.
        epochs: u64,
        /// Optimiser steps per epoch.
        steps_per_epoch: u64,
    },
    /// Epochs times optimiser steps per epoch, from a training-split size given on the command
    /// line (`--train-examples`: a dry run without the data, e.g. of a GLUE recipe).
    GivenExamples {
        /// Examples in the training split.
        train: u64,
        /// Passes over the training split.
        epochs: u64,
        /// Optimiser steps per epoch.
        steps_per_epoch: u64,
    },
}

/// One step at which ranks move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Adjustment {
    /// The optimiser step `t` after which the allocation runs.
    pub step: u64,
    /// `b(t)`: matrices pruned (and, for `both`, expanded) at this step.
    pub b: u32,
}

/// Everything `flexlora schedule` reports.
#[derive(Debug, Clone, Serialize)]
pub struct SchedulePlan {
    /// The config file (and whether overrides were applied).
    pub config: String,
    /// The method of the run.
    pub method: MethodName,
    /// Total optimiser steps `T`.
    pub total_steps: u64,
    /// How `T` was obtained.
    pub steps: StepCount,
    /// The budget schedule's name; `None` for methods without rank allocation.
    pub schedule: Option<&'static str>,
    /// `b0`.
    pub b0: Option<u32>,
    /// `t_init`.
    pub t_init: Option<u64>,
    /// `t_final`.
    pub t_final: Option<u64>,
    /// `ΔT`.
    pub delta_t: Option<u64>,
    /// First step with frozen ranks, `T − t_final`.
    pub freeze_step: Option<u64>,
    /// The steps that move ranks (`b(t) > 0`), in order.
    pub adjustments: Vec<Adjustment>,
    /// Which side of the allocation is on; `None` for methods without rank allocation.
    pub direction: Option<AllocationDirection>,
    /// `Σ b(t)`: the most prunes (and expansions) the run can make.
    pub max_slot_moves: u64,
    /// Why ranks cannot move, or can move less than the table suggests (empty when nothing
    /// stands in the way).
    pub warnings: Vec<String>,
}

/// Why a FlexLoRA config's ranks cannot move in a run of `total_steps` steps: every matrix at
/// the rank-1 floor (nothing to prune), or at `r_max` (nothing to expand), with the direction
/// that needs it; or no adjustment step with `b(t) > 0`. Also says when `b(t)` is only a cap
/// (`adaptive`). Empty for other methods and for configs whose ranks can move.
pub fn movement_warnings(config: &Config, total_steps: u64) -> Vec<String> {
    if config.method.name != MethodName::Flexlora {
        return Vec::new();
    }
    let (m, direction) = (&config.method, config.allocation.direction);
    let mut warnings = Vec::new();
    let prunes = direction != AllocationDirection::ExpandOnly;
    let expands = direction != AllocationDirection::PruneOnly;
    if m.r_init <= 1 && prunes {
        warnings.push(format!(
            "ranks cannot move: every matrix starts at method.r_init = {}, the floor of one \
             direction, so none can be pruned{}; give the budget room, e.g. method.r_init = 2 \
             (same total for every matrix, any one can then lose a direction)",
            m.r_init,
            if expands {
                ", and with allocation.direction = \"both\" every expansion needs a prune"
            } else {
                ""
            }
        ));
    }
    if m.r_init >= m.r_max && expands {
        warnings.push(format!(
            "ranks cannot move: every matrix starts at method.r_max = {}, so none can gain a \
             direction{}; raise method.r_max above method.r_init",
            m.r_max,
            if prunes {
                ", and with allocation.direction = \"both\" every prune needs an expansion"
            } else {
                ""
            }
        ));
    }
    let schedule = config.adjustment_schedule(total_steps);
    if schedule.b0 == 0 {
        warnings.push(
            "schedule.b0 = 0: no allocation; this is the SVD form with fixed ranks (the \
             control that isolates what the allocation adds)"
                .to_string(),
        );
    } else if schedule.validate().is_ok() && schedule.adjustment_steps().next().is_none() {
        warnings.push(format!(
            "ranks cannot move: no adjustment step has b(t) > 0 in T = {total_steps} steps \
             (schedule.b0 = {}, kind {}); raise schedule.b0 or widen the window",
            schedule.b0,
            schedule.schedule.name()
        ));
    }
    if schedule.schedule == flexlora_core::BudgetSchedule::Adaptive {
        warnings.push(
            "schedule.kind = \"adaptive\": the b(t) listed is a cap; at run time each \
             adjustment moves b0 * (1 - max(tau, 0)), tau the rank correlation of the \
             importance scores with the previous adjustment's (ranks.jsonl records both)"
                .to_string(),
        );
    }
    warnings
}

impl SchedulePlan {
    /// Loads and validates the config, counts the data (unless `max_steps` is set or
    /// `train_examples` gives the training split's size), and lists the adjustment steps.
    pub fn from_config_file(
        path: &Path,
        overrides: &[String],
        train_examples: Option<u64>,
    ) -> anyhow::Result<Self> {
        let loaded = Config::load(path, overrides)?;
        let config = &loaded.config;
        let steps = match (config.training.max_steps, train_examples) {
            (Some(max_steps), _) => StepCount::MaxSteps { max_steps },
            (None, Some(train)) => StepCount::GivenExamples {
                train,
                epochs: config.training.epochs,
                steps_per_epoch: config.steps_per_epoch(train),
            },
            (None, None) => {
                let examples = count_examples(&config.data)?;
                let split = split_sizes(&config.data)?;
                let epochs = config.training.epochs;
                let steps_per_epoch = config.steps_per_epoch(split.train);
                StepCount::Epochs {
                    examples,
                    split,
                    epochs,
                    steps_per_epoch,
                }
            }
        };
        let total_steps = match &steps {
            StepCount::MaxSteps { max_steps } => *max_steps,
            StepCount::Epochs {
                epochs,
                steps_per_epoch,
                ..
            }
            | StepCount::GivenExamples {
                epochs,
                steps_per_epoch,
                ..
            } => epochs * steps_per_epoch,
        };
        let mut plan = SchedulePlan {
            config: loaded.origin.clone(),
            method: config.method.name,
            total_steps,
            steps,
            schedule: None,
            b0: None,
            t_init: None,
            t_final: None,
            delta_t: None,
            freeze_step: None,
            adjustments: Vec::new(),
            direction: None,
            max_slot_moves: 0,
            warnings: movement_warnings(config, total_steps),
        };
        match config.method.name {
            MethodName::Flexlora => {
                crate::validate::schedule(config, total_steps, &loaded.origin)?;
                let s = config.adjustment_schedule(total_steps);
                plan.adjustments = s
                    .adjustment_steps()
                    .map(|(step, b)| Adjustment { step, b })
                    .collect();
                plan.max_slot_moves = plan.adjustments.iter().map(|a| u64::from(a.b)).sum();
                plan.schedule = Some(s.schedule.name());
                plan.b0 = Some(s.b0);
                plan.t_init = Some(s.t_init);
                plan.t_final = Some(s.t_final);
                plan.delta_t = Some(s.delta_t);
                plan.freeze_step = Some(s.freeze_step());
                plan.direction = Some(config.allocation.direction);
            }
            MethodName::Adalora => anyhow::bail!(
                "{}: `flexlora schedule` does not describe AdaLoRA's budget yet (it needs the \
                 number of adapted matrices, known once the model is loaded); use method.name = \
                 \"flexlora\"",
                loaded.origin
            ),
            MethodName::Lora | MethodName::Full | MethodName::LinearProbe => {}
        }
        Ok(plan)
    }

    /// A human-readable table of the plan.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "config: {}", self.config);
        let method = serde_json::to_value(self.method).ok();
        let method = method.as_ref().and_then(|m| m.as_str()).unwrap_or("?");
        match &self.steps {
            StepCount::MaxSteps { max_steps } => {
                let _ = writeln!(out, "T = {max_steps} optimiser steps (training.max_steps)");
            }
            StepCount::Epochs {
                examples,
                split,
                epochs,
                steps_per_epoch,
            } => {
                let _ = writeln!(
                    out,
                    "T = {} optimiser steps: {epochs} epochs x {steps_per_epoch} steps \
                     ({examples} examples split {} train / {} validation / {} test)",
                    self.total_steps, split.train, split.validation, split.test
                );
            }
            StepCount::GivenExamples {
                train,
                epochs,
                steps_per_epoch,
            } => {
                let _ = writeln!(
                    out,
                    "T = {} optimiser steps: {epochs} epochs x {steps_per_epoch} steps ({train} training examples, --train-examples)",
                    self.total_steps
                );
            }
        }
        let (Some(schedule), Some(b0), Some(t_init), Some(t_final), Some(delta_t), Some(freeze)) = (
            self.schedule,
            self.b0,
            self.t_init,
            self.t_final,
            self.delta_t,
            self.freeze_step,
        ) else {
            let _ = writeln!(out, "method {method}: fixed ranks, no adjustment steps");
            return out;
        };
        let _ = writeln!(
            out,
            "method {method}: schedule {schedule}, b0 = {b0}; ranks move after step t when \
             {t_init} < t < {freeze} (= T - t_final, t_final = {t_final}) and (t - {t_init}) \
             mod {delta_t} = 0, if b(t) > 0"
        );
        let _ = writeln!(out, "{:>8}  {:>4}", "step", "b(t)");
        for a in &self.adjustments {
            let _ = writeln!(out, "{:>8}  {:>4}", a.step, a.b);
        }
        let _ = writeln!(out, "ranks freeze at step {freeze}");
        let moves = match self.direction {
            Some(AllocationDirection::PruneOnly) => "prunes (prune-only: the total rank falls)",
            Some(AllocationDirection::ExpandOnly) => {
                "expansions (expand-only: the total rank rises)"
            }
            _ => "moves, each pruning one matrix and expanding another (the total rank is fixed)",
        };
        let _ = writeln!(
            out,
            "{} adjustment steps move ranks: at most {} {moves}",
            self.adjustments.len(),
            self.max_slot_moves
        );
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        out
    }
}
