//! One optimiser step, shared by the trainer and `flexlora bench` (so the benchmark times the
//! code users run): gradients of the task loss plus the orthogonality regulariser over the
//! micro-batches, clipping, AdamW, then AdaLoRA's masking or FlexLoRA's allocation.

use crate::adalora::{AdaLoraAllocator, MaskRecord};
use crate::adapter::orthogonality_regulariser;
use crate::allocation::{AllocationPolicy, AllocationRecord, apply_allocation};
use crate::config::{Config, MethodName};
use crate::models::ModelInput;
use crate::optim::{AdamW, AdamWConfig, learning_rate};
use crate::sensitivity::SensitivityEma;
use flexlora_core::{AdjustmentSchedule, AllocationActivity, Importance, RankAllocator};
use std::time::Instant;
use tch::Tensor;

use super::guards::{self, NonFinite};
use super::model::{TaskModel, TrainableModel};
use super::run::CheckpointedState;

/// The allocators a run carries besides the optimiser (at most one is present).
#[derive(Debug, Default)]
pub struct Allocators {
    /// AdaLoRA's masking (`method.name = "adalora"`).
    pub adalora: Option<AdaLoraAllocator>,
    /// The sensitivity EMAs of FlexLoRA's `importance = "sensitivity"`.
    pub sensitivity: Option<SensitivityEma>,
}

impl Allocators {
    /// What `config`'s method needs for `model`'s adapters in a run of `total_steps` steps:
    /// AdaLoRA's allocator, or for FlexLoRA's sensitivity ablation AdaLoRA's EMAs (updated at
    /// the same point of every step), or nothing.
    pub fn for_model<M: TrainableModel + ?Sized>(
        config: &Config,
        model: &M,
        total_steps: u64,
    ) -> anyhow::Result<Self> {
        let a = &config.allocation;
        let adapters = model.svd_adapters();
        let adalora = match config.method.name {
            MethodName::Adalora => Some(AdaLoraAllocator::new(
                &adapters,
                config.adalora_budget(adapters.len(), total_steps),
                a.sensitivity_beta1,
                a.sensitivity_beta2,
            )?),
            _ => None,
        };
        let sensitivity = match (config.method.name, a.importance) {
            (MethodName::Flexlora, Importance::Sensitivity) => Some(
                SensitivityEma::new(&adapters, a.sensitivity_beta1, a.sensitivity_beta2)
                    .map_err(|e| anyhow::anyhow!("allocation.sensitivity_beta*: {e}"))?,
            ),
            _ => None,
        };
        Ok(Self {
            adalora,
            sensitivity,
        })
    }
}

impl Allocators {
    /// Each SVD adapter's rank: AdaLoRA's is the number of triplets its latest mask kept
    /// (crate::adalora), the others' the active slots.
    pub fn ranks<M: TrainableModel + ?Sized>(&self, model: &M) -> Vec<usize> {
        match &self.adalora {
            Some(a) => a.ranks(),
            None => model.svd_adapters().iter().map(|a| a.rank()).collect(),
        }
    }

    /// The model's trainable parameters that take part (AdaLoRA's masked triplets excluded).
    pub fn trainable_parameters<M: TrainableModel + ?Sized>(&self, model: &M) -> i64 {
        model.trainable_parameters()
            - self
                .adalora
                .as_ref()
                .map_or(0, |a| a.masked_parameters(&model.svd_adapters()))
    }

    /// The state a checkpoint carries for these allocators (at most one of them exists).
    pub fn checkpointed(&self) -> Option<&dyn CheckpointedState> {
        match (&self.adalora, &self.sensitivity) {
            (Some(a), _) => Some(a),
            (None, Some(s)) => Some(s),
            (None, None) => None,
        }
    }

    /// [`Allocators::checkpointed`], to restore it when resuming.
    pub fn checkpointed_mut(&mut self) -> Option<&mut dyn CheckpointedState> {
        match (&mut self.adalora, &mut self.sensitivity) {
            (Some(a), _) => Some(a),
            (None, Some(s)) => Some(s),
            (None, None) => None,
        }
    }
}

/// Our AdamW with `config`'s settings over `model`'s parameter groups (adapters first, in
/// model order, so group `k` is adapter `k`).
pub fn optimiser_for<M: TrainableModel + ?Sized>(config: &Config, model: &M) -> AdamW {
    let o = &config.optimiser;
    let mut optimiser = AdamW::new(AdamWConfig {
        beta1: o.beta1,
        beta2: o.beta2,
        eps: o.eps,
        weight_decay: o.weight_decay,
    });
    for group in model.optimiser_groups() {
        optimiser.add_group(&group);
    }
    optimiser
}

/// What does not change from step to step.
#[derive(Debug, Clone)]
pub struct StepPlan<'a> {
    /// The run's config (method, optimiser, regulariser, seed).
    pub config: &'a Config,
    /// `T`.
    pub total_steps: u64,
    /// FlexLoRA's adjustment steps and `b(t)`.
    pub schedule: AdjustmentSchedule,
    /// FlexLoRA's allocation policy.
    pub policy: AllocationPolicy,
}

impl<'a> StepPlan<'a> {
    /// The plan of `config` for a run of `total_steps` optimiser steps.
    pub fn new(config: &'a Config, total_steps: u64) -> Self {
        let a = &config.allocation;
        Self {
            config,
            total_steps,
            schedule: config.adjustment_schedule(total_steps),
            policy: AllocationPolicy {
                importance: a.importance,
                exact_spectrum: a.exact_spectrum,
                allocator: RankAllocator::new(a.direction),
                init: a.new_direction_init,
                init_std: a.new_direction_std,
            },
        }
    }
}

/// What one update did.
#[derive(Debug)]
pub struct Update {
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    /// The learning rate used.
    pub lr: f64,
    /// AdaLoRA's masking by scores, when one happened.
    pub mask: Option<MaskRecord>,
    /// FlexLoRA's allocation, when the step was an adjustment step.
    pub allocation: Option<AllocationRecord>,
    /// Seconds spent in the allocators (sensitivity updates, masking, allocation).
    pub allocation_seconds: f64,
}

/// Forward and backward over the micro-batches of one optimiser step; gradients accumulate in
/// the parameters (each micro-batch's loss divided by their number). Returns the mean task
/// loss (without the regulariser).
pub fn accumulate_gradients(
    model: &TaskModel,
    micro_batches: &[(ModelInput, Tensor)],
    config: &Config,
) -> f64 {
    accumulate(model, config, micro_batches.len(), |k| {
        let (input, labels) = &micro_batches[k];
        model.loss(input, labels, true).0
    })
}

/// [`accumulate_gradients`] for any model: `loss_of(k)` is the task loss of micro-batch `k`
/// of `n`; the orthogonality regulariser is added to each, and each sum is divided by `n`
/// before its backward pass. Returns the mean task loss.
pub fn accumulate<M: TrainableModel + ?Sized>(
    model: &M,
    config: &Config,
    n: usize,
    mut loss_of: impl FnMut(usize) -> Tensor,
) -> f64 {
    let gamma = config.method.orth_reg_weight;
    let scale = n.max(1) as f64;
    let mut step_loss = 0.0;
    for k in 0..n {
        let (loss, taps) = crate::adapter::tape::record(|| loss_of(k));
        let regulariser = (gamma > 0.0)
            .then(|| {
                orthogonality_regulariser(model.svd_adapters(), gamma, config.method.orth_norm)
            })
            .flatten();
        // A new tensor: an in-place `+=` on a shallow clone would write into `loss` itself,
        // and the task loss reported below would include the regulariser.
        let total = match regulariser {
            Some(r) => &loss + r,
            None => loss.shallow_clone(),
        };
        crate::adapter::tape::backward(&(total / scale), taps, || {
            model
                .named_trainables()
                .into_iter()
                .map(|(_, t)| t)
                .collect()
        });
        step_loss += loss.double_value(&[]) / scale;
    }
    step_loss
}

/// Clipping, the AdamW step with the scheduled learning rate, the allocators, `zero_grad`, and
/// for FlexLoRA the allocation when `step + 1` is an adjustment step. A non-finite gradient
/// (before the update) or λ (after it) is a [`NonFinite`] error. `step` counts the
/// optimiser steps made before this one; `allocation_seed` seeds the generator for new
/// directions; `activity` is told what each allocation did. With
/// `allocation.measure_impact`, `probe` scores the model (a loss, no gradients) just before and
/// just after an allocation, and the record carries the difference.
pub fn apply_update<M: TrainableModel + ?Sized>(
    model: &mut M,
    optimiser: &mut AdamW,
    allocators: &mut Allocators,
    plan: &StepPlan<'_>,
    (step, allocation_seed): (u64, i64),
    activity: &mut AllocationActivity,
    probe: Option<&dyn Fn(&M) -> f64>,
) -> anyhow::Result<Update> {
    let o = &plan.config.optimiser;
    gradient_fault_point(model);
    let grad_norm = optimiser.clip_grad_norm(o.clip_norm);
    if !grad_norm.is_finite() {
        let what = guards::non_finite_gradient(model)
            .unwrap_or_else(|| format!("the gradient norm ({grad_norm})"));
        return Err(NonFinite {
            what,
            step: step + 1,
        }
        .into());
    }
    let lr = learning_rate(o.lr_schedule, o.lr, step, plan.total_steps, o.warmup_ratio);
    optimiser.step(lr);
    if let Some(what) = guards::non_finite_lambda(model) {
        return Err(NonFinite {
            what,
            step: step + 1,
        }
        .into());
    }
    let started = Instant::now();
    // AdaLoRA between the optimiser step and zero_grad, as PEFT's update_and_allocate, whose
    // global_step counts the steps before this one.
    let mask = match allocators.adalora.as_mut() {
        Some(a) => a.update_and_allocate(&mut model.svd_adapters_mut(), step)?,
        None => None,
    };
    if let Some(s) = allocators.sensitivity.as_mut() {
        s.update(&model.svd_adapters_mut());
    }
    let mut allocation_seconds = started.elapsed().as_secs_f64();
    optimiser.zero_grad();
    let done = step + 1;
    let mut allocation = None;
    if plan.config.method.name == MethodName::Flexlora {
        if let Some(cap) = plan.schedule.moves_at(done) {
            let probe = probe.filter(|_| plan.config.allocation.measure_impact);
            let before = probe.map(|p| tch::no_grad(|| p(model)));
            let started = Instant::now();
            tch::manual_seed(allocation_seed);
            let mut adapters = model.svd_adapters_mut();
            let mut record = apply_allocation(
                &mut adapters,
                optimiser,
                &plan.policy,
                allocators.sensitivity.as_mut(),
                (done, cap, &plan.schedule),
                activity,
            )?;
            allocation_seconds += started.elapsed().as_secs_f64();
            if let (Some(p), Some(before)) = (probe, before) {
                record.loss_change = Some(tch::no_grad(|| p(model)) - before);
            }
            allocation = Some(record);
        }
    }
    Ok(Update {
        grad_norm,
        lr,
        mask,
        allocation,
        allocation_seconds,
    })
}

/// Fault point `step.poison_gradient` (tests only): when armed with a trainable tensor's
/// name, one element of that tensor's gradient becomes NaN; the step then goes on as usual.
fn gradient_fault_point<M: TrainableModel + ?Sized>(model: &M) {
    let _ = model; // unused where fault points are compiled out
    fail::fail_point!("step.poison_gradient", |name: Option<String>| {
        poison_gradient(model, name.as_deref().unwrap_or_default())
    });
}

#[allow(dead_code)] // called only where fault points are compiled in
fn poison_gradient<M: TrainableModel + ?Sized>(model: &M, name: &str) {
    if let Some((_, t)) = model
        .named_trainables()
        .into_iter()
        .find(|(n, _)| n == name)
    {
        let g = t.grad();
        if g.defined() {
            tch::no_grad(|| {
                let _ = g.view(-1).get(0).fill_(f64::NAN);
            });
        }
    }
}
