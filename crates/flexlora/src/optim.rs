//! AdamW with per-slot state, learning-rate schedules and gradient clipping.
//!
//! Our own optimiser because resetting the state of one rank slot is the point: when a
//! direction is pruned or added, that slot's moments and step count restart (so its bias
//! correction restarts too), while every other slot and the learning-rate schedule continue.
//! (The reference drops all Adam state and detaches its LR scheduler at every reallocation.)

use crate::config::LrSchedule;
use std::path::Path;
use tch::{Kind, Tensor};
use thiserror::Error;

/// An optimiser state that cannot be saved, loaded or used.
#[derive(Debug, Error)]
pub enum OptimError {
    /// LibTorch failed reading or writing.
    #[error("{path}: {message}")]
    Io {
        /// The state file.
        path: String,
        /// What failed.
        message: String,
    },
    /// A slot reset names a group or slot that does not exist.
    #[error("reset_slot: {0}")]
    Slot(String),
    /// A rescale names a tensor the optimiser does not hold, or an unusable factor.
    #[error("rescale_parameter: {0}")]
    Rescale(String),
}

/// AdamW hyper-parameters (torch.optim.AdamW's meaning).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// `β1`.
    pub beta1: f64,
    /// `β2`.
    pub beta2: f64,
    /// `ε`, added after the square root.
    pub eps: f64,
    /// Decoupled weight decay: `p ← p · (1 − lr · wd)` before the Adam update.
    pub weight_decay: f64,
}

/// One parameter tensor and its state.
#[derive(Debug)]
struct ParamState {
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Step count per slot along `slot_axis` (shape broadcastable to the parameter), or a
    /// single count for an unslotted parameter.
    step: Tensor,
    slot_axis: Option<usize>,
    group: usize,
}

/// AdamW over groups of parameters; the tensors of one adapted matrix form one group, and
/// [`AdamW::reset_slot`] restarts one slot of every tensor of a group.
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    params: Vec<ParamState>,
    groups: usize,
}

impl AdamW {
    /// An optimiser with no parameters yet.
    pub fn new(config: AdamWConfig) -> Self {
        Self {
            config,
            params: Vec::new(),
            groups: 0,
        }
    }

    /// Adds a group of parameters, each with its slot axis (`None` for tensors without slots,
    /// such as a classifier head), and returns the group's index.
    pub fn add_group(&mut self, params: &[(&Tensor, Option<usize>)]) -> usize {
        let group = self.groups;
        self.groups += 1;
        for (p, axis) in params {
            let step_shape: Vec<i64> = match axis {
                Some(a) => {
                    let mut s = vec![1; p.dim()];
                    s[*a] = p.size()[*a];
                    s
                }
                None => vec![1; p.dim().max(1)],
            };
            self.params.push(ParamState {
                param: p.shallow_clone(),
                exp_avg: p.zeros_like().detach(),
                exp_avg_sq: p.zeros_like().detach(),
                step: Tensor::zeros(step_shape.as_slice(), (Kind::Double, p.device())),
                slot_axis: *axis,
                group,
            });
        }
        group
    }

    /// Number of parameter groups.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// One AdamW step at learning rate `lr` with the gradients now held by the parameters
    /// (a parameter without a gradient is skipped, as torch does).
    pub fn step(&mut self, lr: f64) {
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        tch::no_grad(|| {
            for s in &mut self.params {
                let grad = s.param.grad();
                if !grad.defined() {
                    continue;
                }
                let _ = s.step.g_add_scalar_(1.0);
                // The same operations, in the same order, as torch's single-tensor AdamW.
                if weight_decay != 0.0 {
                    let _ = s.param.g_mul_scalar_(1.0 - lr * weight_decay);
                }
                let _ = s.exp_avg.lerp_(&grad, 1.0 - beta1);
                let _ = s.exp_avg_sq.g_mul_scalar_(beta2);
                let _ = s.exp_avg_sq.g_add_(&(&grad * (1.0 - beta2) * &grad));
                let kind = s.param.kind();
                // Per-slot bias corrections 1 − β^step (β^step as exp(step · ln β)).
                let bc1 = ((&s.step * beta1.ln()).exp().neg() + 1.0).to_kind(kind);
                let bc2 = ((&s.step * beta2.ln()).exp().neg() + 1.0).to_kind(kind);
                let denom = s.exp_avg_sq.sqrt() / bc2.sqrt() + eps;
                let update = &s.exp_avg / denom * lr / bc1;
                let _ = s.param.g_sub_(&update);
            }
        });
    }

    /// Restarts slot `slot` of every tensor in `group`: moments zeroed, step count 0, so its
    /// next update is a fresh AdamW's first step. Other slots and groups are untouched.
    pub fn reset_slot(&mut self, group: usize, slot: usize) -> Result<(), OptimError> {
        if group >= self.groups {
            return Err(OptimError::Slot(format!(
                "group {group} does not exist ({} groups)",
                self.groups
            )));
        }
        tch::no_grad(|| {
            for s in self.params.iter_mut().filter(|s| s.group == group) {
                let Some(axis) = s.slot_axis else { continue };
                let len = s.param.size()[axis];
                if slot as i64 >= len {
                    return Err(OptimError::Slot(format!(
                        "slot {slot} out of range (axis has {len})"
                    )));
                }
                let (a, i) = (axis as i64, slot as i64);
                let _ = s.exp_avg.narrow(a, i, 1).fill_(0.0);
                let _ = s.exp_avg_sq.narrow(a, i, 1).fill_(0.0);
                let _ = s.step.narrow(a, i, 1).fill_(0.0);
            }
            Ok(())
        })
    }

    /// Records that `param` (a tensor of `group`) was multiplied by `factor` outside the
    /// optimiser: its first moment is divided by `factor` and its second by `factor²`, the
    /// moments the rescaled parameter's gradients (the old ones over `factor`) would have had.
    /// The parameter itself is not touched.
    pub fn rescale_parameter(
        &mut self,
        group: usize,
        param: &Tensor,
        factor: f64,
    ) -> Result<(), OptimError> {
        if !(factor.is_finite() && factor != 0.0) {
            return Err(OptimError::Rescale(format!(
                "rescale by {factor}: not a finite non-zero factor"
            )));
        }
        let state = self
            .params
            .iter_mut()
            .find(|s| s.group == group && s.param.data_ptr() == param.data_ptr())
            .ok_or_else(|| {
                OptimError::Rescale(format!("group {group} does not hold the rescaled tensor"))
            })?;
        tch::no_grad(|| {
            let _ = state.exp_avg.g_mul_scalar_(1.0 / factor);
            let _ = state.exp_avg_sq.g_mul_scalar_(1.0 / (factor * factor));
        });
        Ok(())
    }

    /// The per-slot step counts of every tensor in `group` (one entry per slot; a tensor
    /// without slots has one entry), for logs and checks.
    pub fn slot_step_counts(&self, group: usize) -> Vec<Vec<f64>> {
        self.params
            .iter()
            .filter(|s| s.group == group)
            .map(|s| Vec::<f64>::try_from(&s.step.flatten(0, -1)).unwrap_or_default())
            .collect()
    }

    /// Zeroes the gradients of every parameter.
    pub fn zero_grad(&mut self) {
        for s in &mut self.params {
            s.param.zero_grad();
        }
    }

    /// Scales the gradients so that their global L2 norm is at most `max_norm` (torch's
    /// `clip_grad_norm_`: factor `max_norm / (norm + 1e-6)`, capped at 1) and returns the norm
    /// before clipping. `max_norm = 0` only measures.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        tch::no_grad(|| {
            let norms: Vec<Tensor> = self
                .params
                .iter()
                .map(|s| s.param.grad())
                .filter(|g| g.defined())
                .map(|g| g.to_kind(Kind::Double).norm())
                .collect();
            if norms.is_empty() {
                return 0.0;
            }
            let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
            if max_norm > 0.0 {
                let coef = (max_norm / (total + 1e-6)).min(1.0);
                for s in &mut self.params {
                    let mut g = s.param.grad();
                    if g.defined() {
                        let _ = g.g_mul_scalar_(coef);
                    }
                }
            }
            total
        })
    }

    fn state_tensors(&self) -> Vec<(String, &Tensor)> {
        let mut v = Vec::new();
        for (i, s) in self.params.iter().enumerate() {
            v.push((format!("param.{i}.exp_avg"), &s.exp_avg));
            v.push((format!("param.{i}.exp_avg_sq"), &s.exp_avg_sq));
            v.push((format!("param.{i}.step"), &s.step));
        }
        v
    }

    /// Writes the moments and step counts to `path` (safetensors), via a temporary file and a
    /// rename so a crash never leaves a half-written state.
    pub fn save(&self, path: &Path) -> Result<(), OptimError> {
        let io = |message: String| OptimError::Io {
            path: path.display().to_string(),
            message,
        };
        let tmp = path.with_extension("safetensors.tmp");
        let tensors: Vec<(String, Tensor)> = self
            .state_tensors()
            .into_iter()
            .map(|(n, t)| (n, t.to_device(tch::Device::Cpu)))
            .collect();
        Tensor::write_safetensors(&tensors, &tmp).map_err(|e| io(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| io(e.to_string()))
    }

    /// Loads moments and step counts saved by [`AdamW::save`] for the same parameters.
    pub fn load(&mut self, path: &Path) -> Result<(), OptimError> {
        let p = path.display().to_string();
        let saved = Tensor::read_safetensors(path).map_err(|e| OptimError::Io {
            path: p.clone(),
            message: e.to_string(),
        })?;
        let saved: std::collections::HashMap<String, Tensor> = saved.into_iter().collect();
        let expected: Vec<(String, Tensor)> = self
            .state_tensors()
            .into_iter()
            .map(|(n, t)| (n, t.shallow_clone()))
            .collect();
        crate::io::check_saved_tensors(&expected, &saved, "the optimiser").map_err(|message| {
            OptimError::Io {
                path: p.clone(),
                message,
            }
        })?;
        tch::no_grad(|| {
            for (i, s) in self.params.iter_mut().enumerate() {
                s.exp_avg.copy_(&saved[&format!("param.{i}.exp_avg")]);
                s.exp_avg_sq.copy_(&saved[&format!("param.{i}.exp_avg_sq")]);
                s.step.copy_(&saved[&format!("param.{i}.step")]);
            }
        });
        Ok(())
    }
}

/// The learning rate after `step` optimiser steps (0-based: the rate used by update
/// `step + 1`), as transformers' schedulers compute it: linear warm-up over
/// `warmup = ⌈warmup_ratio · T⌉` steps, then linear decay to 0 at `T`, cosine decay to 0, or
/// constant. A function of the step alone, so rank changes never disturb it.
pub fn learning_rate(
    schedule: LrSchedule,
    peak: f64,
    step: u64,
    total: u64,
    warmup_ratio: f64,
) -> f64 {
    let warmup = (warmup_ratio * total as f64).ceil() as u64;
    if step < warmup {
        return peak * step as f64 / warmup.max(1) as f64;
    }
    let rest = total.saturating_sub(warmup).max(1) as f64;
    let progress = (step - warmup) as f64 / rest;
    match schedule {
        LrSchedule::Linear => peak * (1.0 - progress).max(0.0),
        LrSchedule::Cosine => {
            peak * (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
        }
        LrSchedule::Constant => peak,
    }
}
