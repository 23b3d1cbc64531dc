//! Adapters on frozen linear layers, and where they go.
//!
//! [`AdaptedLinear`] is a frozen `y = x Wᵀ + b` plus an optional [`Adapter`]; a model keeps one
//! for every linear layer it may adapt, under its Hugging Face module path. [`select_targets`]
//! turns PEFT-style `target_modules` patterns into the list of adapted layers, in the order
//! every log, plot and checkpoint uses.

mod inject;
mod lora;
mod svd;
pub mod tape;
pub mod thin;

pub use inject::{TargetPattern, inject_adapters, select_targets};
pub use lora::LoraAdapter;
pub use svd::{SvdAdapter, SvdAdapterConfig};

use crate::config::OrthNorm;
use crate::dropout::WithDropout;
use tch::Tensor;
use thiserror::Error;

/// An adapter that cannot be built or changed as asked.
#[derive(Debug, Error, PartialEq)]
pub enum AdapterError {
    /// A configuration value is out of range.
    #[error("adapter config `{field}`: {message}")]
    Config {
        /// The field (`r_init`, `r_max`, `alpha`, `dropout`, `init_std`).
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Tensors of the wrong shape.
    #[error("adapter tensors: {0}")]
    Shape(String),
    /// A prune or expand of a slot that is not in the right state.
    #[error("adapter slot: {0}")]
    Slot(String),
    /// A `target_modules` pattern is malformed or matches no module.
    #[error("target_modules: {0}")]
    Target(String),
}

/// The update added to a frozen linear layer.
#[derive(Debug)]
pub enum Adapter {
    /// SVD form with rank slots (FlexLoRA, AdaLoRA and the ablations).
    Svd(SvdAdapter),
    /// Plain LoRA.
    Lora(LoraAdapter),
}

impl Adapter {
    /// The adapter's contribution to the layer output for input `x`.
    pub fn forward_delta(&self, x: &Tensor, train: bool) -> Tensor {
        match self {
            Adapter::Svd(a) => a.forward_delta(x, train),
            Adapter::Lora(a) => a.forward_delta(x, train),
        }
    }

    /// `ΔW = up · down` as differentiable factors (`out × r`, `r × in`) with every scale
    /// folded into them: `(down, up)`.
    pub fn factors(&self) -> (Tensor, Tensor) {
        match self {
            Adapter::Svd(a) => a.factors(),
            Adapter::Lora(a) => a.factors(),
        }
    }

    /// The dropout probability on the adapter's input.
    pub fn dropout(&self) -> f64 {
        match self {
            Adapter::Svd(a) => a.config().dropout,
            Adapter::Lora(a) => a.dropout(),
        }
    }

    /// The materialised update `ΔW` (`out × in`).
    pub fn delta_weight(&self) -> Tensor {
        match self {
            Adapter::Svd(a) => a.delta_weight(),
            Adapter::Lora(a) => a.delta_weight(),
        }
    }
}

/// `dropout(x) downᵀ upᵀ`: an adapter's contribution from its factors, dropout `p` on its
/// input when `train`.
fn low_rank_delta(x: &Tensor, p: f64, train: bool, (down, up): (Tensor, Tensor)) -> Tensor {
    let x = if train && p > 0.0 {
        x.with_dropout(p, true)
    } else {
        x.shallow_clone()
    };
    x.matmul(&down.tr()).matmul(&up.tr())
}

/// A frozen linear layer with an optional adapter.
#[derive(Debug)]
pub struct AdaptedLinear {
    /// Frozen weight, `out × in`.
    pub weight: Tensor,
    /// Frozen bias, `out`.
    pub bias: Option<Tensor>,
    /// The trainable update, if this layer is adapted.
    pub adapter: Option<Adapter>,
}

impl AdaptedLinear {
    /// Wraps a frozen layer (gradients of `weight` and `bias` are switched off).
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight: weight.set_requires_grad(false),
            bias: bias.map(|b| b.set_requires_grad(false)),
            adapter: None,
        }
    }

    /// Stores the frozen weight and bias in `kind` (e.g. bfloat16 for mixed precision); the
    /// forward pass casts its input to match and its output back.
    pub fn set_base_kind(&mut self, kind: tch::Kind) {
        self.weight = self.weight.to_kind(kind).set_requires_grad(false);
        self.bias = self
            .bias
            .take()
            .map(|b| b.to_kind(kind).set_requires_grad(false));
    }

    /// `(in_features, out_features)`.
    pub fn features(&self) -> (i64, i64) {
        let s = self.weight.size();
        (s[1], s[0])
    }

    /// The SVD adapter of this layer, if it has one.
    pub fn svd_adapter(&self) -> Option<&SvdAdapter> {
        match &self.adapter {
            Some(Adapter::Svd(a)) => Some(a),
            _ => None,
        }
    }

    /// The SVD adapter of this layer, mutably (for allocation steps).
    pub fn svd_adapter_mut(&mut self) -> Option<&mut SvdAdapter> {
        match &mut self.adapter {
            Some(Adapter::Svd(a)) => Some(a),
            _ => None,
        }
    }

    /// `y = x Wᵀ + b + adapter(x)`; `train` switches the adapter's dropout on. While the
    /// training step records ([`tape::record`]), a layer whose input is in the graph computes
    /// it as `x (W + ΔW)ᵀ + b` instead (see [`tape`]).
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let same_kind = self.weight.kind() == x.kind();
        if let Some(a) = &self.adapter {
            let no_dropout = !(train && a.dropout() > 0.0);
            if same_kind && no_dropout && x.requires_grad() && tape::recording() {
                let (down, up) = a.factors();
                return tape::merged_forward(x, &self.weight, self.bias.as_ref(), down, up);
            }
        }
        // A base stored in bf16 (training.precision) multiplies in bf16 and hands back the
        // input's kind, so the adapter's sum and everything after stay in float32.
        let y = if same_kind {
            crate::gemm::linear(x, &self.weight, self.bias.as_ref())
        } else {
            x.to_kind(self.weight.kind())
                .linear(&self.weight, self.bias.as_ref())
                .to_kind(x.kind())
        };
        match &self.adapter {
            Some(a) => y + a.forward_delta(x, train),
            None => y,
        }
    }
}

/// The orthogonality regulariser over all SVD adapters (docs/method.md §1), a mean over the `2K`
/// factors as the reference computes it: `R = γ / (2K) · Σ_k (‖P_kᵀP_k − I‖ + ‖Q_kQ_kᵀ − I‖)`,
/// active slots only. `None` when there is no adapter.
pub fn orthogonality_regulariser<'a>(
    adapters: impl IntoIterator<Item = &'a SvdAdapter>,
    gamma: f64,
    norm: OrthNorm,
) -> Option<Tensor> {
    let mut total: Option<Tensor> = None;
    let mut k = 0usize;
    for a in adapters {
        let p = a.orth_penalty(norm);
        total = Some(match total {
            Some(t) => t + p,
            None => p,
        });
        k += 1;
    }
    total.map(|t| t * (gamma / (2.0 * k as f64)))
}
