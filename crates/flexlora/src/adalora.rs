//! AdaLoRA on the SVD adapters, as Hugging Face PEFT 0.21.2 implements it (docs/method.md §5):
//! the tensor half of PEFT's `RankAllocator` (sensitivity EMAs, triplet scores, masking); the
//! budget and the choice of triplets come from [`flexlora_core::adalora`].
//!
//! How AdaLoRA maps onto [`SvdAdapter`]: PEFT's `lora_A` `[r, in]` is `Q`, `lora_E` `[r, 1]` is
//! `λ`, `lora_B` `[out, r]` is `P`. Every adapted matrix has `r_init` slots, all active for the
//! whole run (`r_max = r_init`, `method.r_max` is not used), and the adapters use
//! [`ScalePolicy::PeftAdalora`](crate::config::ScalePolicy::PeftAdalora). Masking a triplet
//! zeroes its `λ` and nothing else, exactly as PEFT's `masked_fill_` on `lora_E`:
//! - the slot stays active, so its `λ` keeps receiving gradients and grows back at the next
//!   optimiser step; it is zeroed again at the next masking unless its score has risen above
//!   the threshold (PEFT re-scores every triplet, masked or not);
//! - its `P` column and `Q` row stay in the orthogonality regulariser (PEFT's covers all of
//!   `lora_A` and `lora_B`);
//! - its optimiser state is never reset.
//!
//! The *rank* of a matrix in logs, `ranks.jsonl`, the rank heatmap and the trainable-parameter
//! count is the number of triplets the latest mask kept (PEFT's `rank_pattern`, what a saved
//! PEFT adapter is cut down to), `r_init` before the first masking. The number of non-zero `λ`
//! would not do: between two maskings the masked `λ` are non-zero again.
//!
//! Call order (PEFT's documented use, and the trainer's): backward, clipping, the optimiser
//! step, then [`AdaLoraAllocator::update_and_allocate`] with the gradients still in place (so
//! the sensitivity is `|p · ∇p|` with the *updated* `p` and the gradient that produced the
//! update), then `zero_grad`.

use crate::adapter::{AdapterError, SvdAdapter};
use crate::sensitivity::SensitivityEma;
use flexlora_core::{AdaLoraAction, AdaLoraBudget, mask_to_budget};
use serde::Serialize;
use std::collections::HashMap;
use tch::{Kind, Tensor};
use thiserror::Error;

/// An AdaLoRA step or state that cannot be applied.
#[derive(Debug, Error)]
pub enum AdaLoraError {
    /// The adapters do not fit the allocator (count, slots, or a checkpointed state).
    #[error("AdaLoRA: {0}")]
    Mismatch(String),
    /// An adapter refused the mask.
    #[error("AdaLoRA, matrix {matrix}: {source}")]
    Adapter {
        /// The matrix index.
        matrix: usize,
        /// The adapter's error.
        source: AdapterError,
    },
}

/// One masking (a line of `ranks.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MaskRecord {
    /// Optimiser steps done, counting the one just made (the `step` of every log line).
    pub step: u64,
    /// PEFT's `global_step` of the same call: `step − 1`.
    pub global_step: u64,
    /// The budget masked to (triplets allowed a non-zero `λ`).
    pub budget: usize,
    /// Whether this is the final mask (`global_step = T − t_final`), re-applied at every later
    /// step.
    #[serde(rename = "final")]
    pub final_mask: bool,
    /// Every triplet's score, per matrix, in slot order (as the masking saw them).
    pub scores: Vec<Vec<f64>>,
    /// Triplets kept per matrix.
    pub ranks: Vec<usize>,
    /// Which triplets keep their `λ`, per matrix (PEFT's `rank_pattern`).
    pub rank_pattern: Vec<Vec<bool>>,
}

/// PEFT's `RankAllocator` over SVD adapters: sensitivity EMAs of every `P`, `λ`, `Q` entry,
/// the current rank pattern, and the phase logic of `AdaLoraModel.update_and_allocate`.
#[derive(Debug)]
pub struct AdaLoraAllocator {
    budget: AdaLoraBudget,
    /// The sensitivity EMAs of every `P`, `λ`, `Q` entry.
    sensitivity: SensitivityEma,
    pattern: Vec<Vec<bool>>,
    finalised: bool,
}

impl AdaLoraAllocator {
    /// An allocator for `adapters` (the model's SVD adapters, in model order) with zero EMAs and
    /// every triplet kept. `budget.initial` must be the total number of slots, every slot must
    /// be active, and `beta1`, `beta2` must lie in (0, 1) (PEFT asserts the same).
    pub fn new(
        adapters: &[&SvdAdapter],
        budget: AdaLoraBudget,
        beta1: f64,
        beta2: f64,
    ) -> Result<Self, AdaLoraError> {
        let sensitivity =
            SensitivityEma::new(adapters, beta1, beta2).map_err(AdaLoraError::Mismatch)?;
        let slots: usize = adapters.iter().map(|a| a.active().len()).sum();
        if slots != budget.initial {
            return Err(AdaLoraError::Mismatch(format!(
                "the budget starts at {} triplets but the adapters have {slots} slots",
                budget.initial
            )));
        }
        if let Some(k) = adapters.iter().position(|a| a.rank() != a.active().len()) {
            return Err(AdaLoraError::Mismatch(format!(
                "matrix {k} has inactive slots; AdaLoRA keeps every slot active and masks λ"
            )));
        }
        Ok(Self {
            budget,
            sensitivity,
            pattern: adapters
                .iter()
                .map(|a| vec![true; a.active().len()])
                .collect(),
            finalised: false,
        })
    }

    /// The budget schedule.
    pub fn budget(&self) -> &AdaLoraBudget {
        &self.budget
    }

    /// Which triplets the latest mask kept, per matrix (all before the first masking).
    pub fn rank_pattern(&self) -> &[Vec<bool>] {
        &self.pattern
    }

    /// Triplets kept per matrix: AdaLoRA's rank (see the module documentation).
    pub fn ranks(&self) -> Vec<usize> {
        self.pattern
            .iter()
            .map(|p| p.iter().filter(|&&k| k).count())
            .collect()
    }

    /// Whether the final mask has been fixed (`T − t_final` passed).
    pub fn is_final(&self) -> bool {
        self.finalised
    }

    /// Parameters of masked triplets, `Σ_k (slots_k − kept_k) · (in_k + out_k + 1)`: what to
    /// subtract from the model's count of active-slot parameters to count kept triplets only.
    pub fn masked_parameters(&self, adapters: &[&SvdAdapter]) -> i64 {
        adapters
            .iter()
            .zip(&self.pattern)
            .map(|(a, keep)| {
                let masked = keep.iter().filter(|&&k| !k).count() as i64;
                masked * (a.p.size()[0] + a.q.size()[1] + 1)
            })
            .sum()
    }

    /// PEFT's `AdaLoraModel.update_and_allocate(global_step)` on `adapters` (the same adapters,
    /// in the same order, as at construction), after the optimiser step and before the
    /// gradients are zeroed; `global_step` counts the optimiser steps made before this one (see
    /// [`AdaLoraAction`]). Returns the record of a masking by scores, `None` otherwise.
    pub fn update_and_allocate(
        &mut self,
        adapters: &mut [&mut SvdAdapter],
        global_step: u64,
    ) -> Result<Option<MaskRecord>, AdaLoraError> {
        if adapters.len() != self.sensitivity.len() {
            return Err(AdaLoraError::Mismatch(format!(
                "{} adapters given, the allocator tracks {}",
                adapters.len(),
                self.sensitivity.len()
            )));
        }
        match self.budget.action(global_step) {
            AdaLoraAction::Update { budget, mask } => {
                self.sensitivity.update(adapters);
                if !mask {
                    return Ok(None);
                }
                self.mask(adapters, global_step, budget, false).map(Some)
            }
            AdaLoraAction::Finalise { budget } => {
                let record = self.mask(adapters, global_step, budget, true)?;
                self.finalised = true;
                // PEFT's `reset_ipt`: the EMAs are never used again.
                self.sensitivity.zero();
                Ok(Some(record))
            }
            AdaLoraAction::Reapply => {
                for (k, (a, keep)) in adapters.iter_mut().zip(&self.pattern).enumerate() {
                    a.zero_lambdas(keep)
                        .map_err(|source| AdaLoraError::Adapter { matrix: k, source })?;
                }
                Ok(None)
            }
        }
    }

    /// Every triplet's score, per matrix (`[r]` tensors), as PEFT's `mask_to_budget` computes
    /// it (see [`SensitivityEma::triplet_scores`]).
    pub fn triplet_scores(&self) -> Vec<Tensor> {
        self.sensitivity.triplet_scores()
    }

    /// Masks to `budget` by the current scores and records it.
    fn mask(
        &mut self,
        adapters: &mut [&mut SvdAdapter],
        global_step: u64,
        budget: usize,
        final_mask: bool,
    ) -> Result<MaskRecord, AdaLoraError> {
        let scores = self.sensitivity.triplet_scores_host();
        let flat: Vec<f64> = scores.iter().flatten().copied().collect();
        let keep = mask_to_budget(&flat, self.budget.initial, budget);
        let mut pattern = Vec::with_capacity(adapters.len());
        let mut offset = 0;
        for (k, a) in adapters.iter_mut().enumerate() {
            let n = a.active().len();
            let kept = keep
                .get(offset..offset + n)
                .ok_or_else(|| {
                    AdaLoraError::Mismatch(format!("matrix {k}: no scores for its {n} slots"))
                })?
                .to_vec();
            a.zero_lambdas(&kept)
                .map_err(|source| AdaLoraError::Adapter { matrix: k, source })?;
            pattern.push(kept);
            offset += n;
        }
        self.pattern = pattern;
        Ok(MaskRecord {
            step: global_step + 1,
            global_step,
            budget,
            final_mask,
            scores,
            ranks: self.ranks(),
            rank_pattern: self.pattern.clone(),
        })
    }

    /// The state to checkpoint (CPU copies): `adalora.<k>.<P|lambda|Q>.exp_avg_ipt` and
    /// `.exp_avg_unc`, `adalora.<k>.keep` (0/1) per matrix `k`, and `adalora.final` (0/1).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut v = self.sensitivity.state("adalora");
        for (k, keep) in self.pattern.iter().enumerate() {
            let flags: Vec<f32> = keep.iter().map(|&b| f32::from(u8::from(b))).collect();
            v.push((format!("adalora.{k}.keep"), Tensor::from_slice(&flags)));
        }
        v.push((
            "adalora.final".into(),
            Tensor::from_slice(&[f32::from(u8::from(self.finalised))]),
        ));
        v
    }

    /// Restores a state written by [`AdaLoraAllocator::state`] for the same adapters; every
    /// name and shape must match.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<(), AdaLoraError> {
        crate::io::check_saved_tensors(&self.state(), state, "the allocator")
            .map_err(AdaLoraError::Mismatch)?;
        let flags = |name: &str| -> Vec<bool> {
            Vec::<f32>::try_from(&state[name].to_kind(Kind::Float))
                .unwrap_or_default()
                .into_iter()
                .map(|x| x > 0.5)
                .collect()
        };
        self.sensitivity
            .load_state("adalora", state)
            .map_err(AdaLoraError::Mismatch)?;
        for (k, keep) in self.pattern.iter_mut().enumerate() {
            *keep = flags(&format!("adalora.{k}.keep"));
        }
        self.finalised = flags("adalora.final").first().copied().unwrap_or(false);
        Ok(())
    }
}
