//! AdaLoRA's smoothed gradient sensitivity of every `P`, `λ`, `Q` entry (docs/method.md §5), shared
//! by AdaLoRA's masking ([`crate::adalora`]) and FlexLoRA's `importance = "sensitivity"`
//! ablation, which sums it up per matrix ([`flexlora_core::matrix_sensitivity`]).
//!
//! Per entry `p`, after each optimiser step with the gradient still in place:
//! `I = |p · ∇p|`, `Ī ← β1 Ī + (1 − β1) I`, `Ū ← β2 Ū + (1 − β2) |I − Ī|` (with the new `Ī`),
//! in PEFT's operation order; a triplet's score is
//! `S_i = s(λ_i) + mean_j s(Q_ij) + mean_o s(P_oi)` with `s = Ī · Ū`.

use crate::adapter::SvdAdapter;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// The per-element EMAs of one tensor: sensitivity `Ī` and uncertainty `Ū`.
#[derive(Debug)]
struct Ema {
    ipt: Tensor,
    unc: Tensor,
}

/// The names of an adapter's slotted tensors, in [`SvdAdapter::slotted_parameters`] order.
const TENSORS: [&str; 3] = ["P", "lambda", "Q"];

/// Sensitivity EMAs for a list of SVD adapters (the model's, in model order).
#[derive(Debug)]
pub struct SensitivityEma {
    beta1: f64,
    beta2: f64,
    ema: Vec<[Ema; 3]>,
}

impl SensitivityEma {
    /// Zero EMAs shaped like every adapter's `P`, `λ`, `Q`. `beta1` and `beta2` must lie in
    /// `(0, 1)` (PEFT asserts the same); the error says which does not.
    pub fn new(adapters: &[&SvdAdapter], beta1: f64, beta2: f64) -> Result<Self, String> {
        for (name, beta) in [("beta1", beta1), ("beta2", beta2)] {
            if !(beta > 0.0 && beta < 1.0) {
                return Err(format!("{name} = {beta} is not in (0, 1)"));
            }
        }
        let ema = adapters
            .iter()
            .map(|a| {
                a.slotted_parameters().map(|(p, _)| Ema {
                    ipt: p.detach().zeros_like(),
                    unc: p.detach().zeros_like(),
                })
            })
            .collect();
        Ok(Self { beta1, beta2, ema })
    }

    /// The number of adapters tracked.
    pub fn len(&self) -> usize {
        self.ema.len()
    }

    /// Whether no adapter is tracked.
    pub fn is_empty(&self) -> bool {
        self.ema.is_empty()
    }

    /// One EMA update from the gradients now held by `adapters` (the same adapters, in the same
    /// order, as at construction). A tensor without a gradient is skipped.
    pub fn update(&mut self, adapters: &[&mut SvdAdapter]) {
        let (b1, b2) = (self.beta1, self.beta2);
        tch::no_grad(|| {
            for (a, emas) in adapters.iter().zip(self.ema.iter_mut()) {
                for ((p, _), e) in a.slotted_parameters().into_iter().zip(emas.iter_mut()) {
                    let grad = p.grad();
                    if !grad.defined() {
                        continue;
                    }
                    let ipt = (p * &grad).abs();
                    e.ipt = &e.ipt * b1 + &ipt * (1.0 - b1);
                    e.unc = &e.unc * b2 + (&ipt - &e.ipt).abs() * (1.0 - b2);
                }
            }
        });
    }

    /// Every triplet's score `S_i`, per matrix, as `[slots]` tensors (PEFT's `mask_to_budget`).
    pub fn triplet_scores(&self) -> Vec<Tensor> {
        tch::no_grad(|| {
            self.ema
                .iter()
                .map(|[p, l, q]| {
                    let s_p = (&p.ipt * &p.unc).mean_dim(Some([0i64].as_slice()), false, None);
                    let s_q = (&q.ipt * &q.unc).mean_dim(Some([1i64].as_slice()), false, None);
                    &l.ipt * &l.unc + (s_q + s_p)
                })
                .collect()
        })
    }

    /// [`SensitivityEma::triplet_scores`] copied to the host as `f64`.
    pub fn triplet_scores_host(&self) -> Vec<Vec<f64>> {
        self.triplet_scores()
            .iter()
            .map(|t| {
                Vec::<f32>::try_from(&t.to_kind(Kind::Float).to_device(Device::Cpu))
                    .unwrap_or_default()
                    .into_iter()
                    .map(f64::from)
                    .collect()
            })
            .collect()
    }

    /// Zeroes the EMAs of one slot of adapter `k` (its `P` column, `λ` entry and `Q` row): a
    /// pruned or newly added direction starts its history afresh, like its optimiser state.
    pub fn reset_slot(&mut self, k: usize, slot: usize) {
        let Some(emas) = self.ema.get_mut(k) else {
            return;
        };
        tch::no_grad(|| {
            for (e, axis) in emas.iter_mut().zip([1i64, 0, 0]) {
                for t in [&mut e.ipt, &mut e.unc] {
                    if (slot as i64) < t.size()[axis as usize] {
                        let _ = t.narrow(axis, slot as i64, 1).zero_();
                    }
                }
            }
        });
    }

    /// Zeroes every EMA (PEFT's `reset_ipt`).
    pub fn zero(&mut self) {
        tch::no_grad(|| {
            for e in self.ema.iter_mut().flatten() {
                let _ = e.ipt.zero_();
                let _ = e.unc.zero_();
            }
        });
    }

    /// The state to checkpoint (CPU copies): `<prefix>.<k>.<P|lambda|Q>.exp_avg_ipt` and
    /// `.exp_avg_unc` per adapter `k`.
    pub fn state(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let cpu = |t: &Tensor| t.detach().to_device(Device::Cpu).copy();
        let mut v = Vec::new();
        for (k, emas) in self.ema.iter().enumerate() {
            for (name, e) in TENSORS.iter().zip(emas) {
                v.push((format!("{prefix}.{k}.{name}.exp_avg_ipt"), cpu(&e.ipt)));
                v.push((format!("{prefix}.{k}.{name}.exp_avg_unc"), cpu(&e.unc)));
            }
        }
        v
    }

    /// Restores a state written by [`SensitivityEma::state`] with the same `prefix`. The caller
    /// checks names and shapes first (see [`crate::io::check_saved_tensors`]); a missing name is
    /// an error here too.
    pub fn load_state(
        &mut self,
        prefix: &str,
        state: &HashMap<String, Tensor>,
    ) -> Result<(), String> {
        let get = |name: String| state.get(&name).ok_or(format!("{name} is missing"));
        for (k, emas) in self.ema.iter_mut().enumerate() {
            for (name, e) in TENSORS.iter().zip(emas.iter_mut()) {
                let ipt = get(format!("{prefix}.{k}.{name}.exp_avg_ipt"))?;
                let unc = get(format!("{prefix}.{k}.{name}.exp_avg_unc"))?;
                tch::no_grad(|| {
                    e.ipt.copy_(ipt);
                    e.unc.copy_(unc);
                });
            }
        }
        Ok(())
    }
}
