//! One pre-norm encoder layer of ViT or DINOv2, and how its tensors are named.
//!
//! transformers 5.24 names the modules of a layer in one way (`layers.0.attention.q_proj` in
//! ViT, `encoder.layer.0.attention.q_proj` in DINOv2: the paths PEFT's `target_modules` see)
//! and converts the names when it reads and writes a checkpoint: `save_pretrained` still
//! writes the older spelling (`encoder.layer.0.attention.attention.query.weight`, ViT's
//! `intermediate.dense`), and `from_pretrained` reads both. We do the same.

use super::config::{VitConfig, VitVariant};
use crate::adapter::AdaptedLinear;
use crate::dropout::WithDropout;
use crate::models::hf::{CheckpointError, LayerNorm, Weights};
use tch::{Device, Kind, Tensor};

/// The linear layers of a layer as transformers 5.24 names the modules, in forward order.
pub(crate) const MODULES: [&str; 6] = [
    "attention.q_proj",
    "attention.k_proj",
    "attention.v_proj",
    "attention.o_proj",
    "mlp.fc1",
    "mlp.fc2",
];

/// The same layers as `save_pretrained` names their tensors.
fn saved_modules(variant: VitVariant) -> [&'static str; 6] {
    let (fc1, fc2) = match variant {
        VitVariant::Vit => ("intermediate.dense", "output.dense"),
        VitVariant::Dinov2 => ("mlp.fc1", "mlp.fc2"),
    };
    [
        "attention.attention.query",
        "attention.attention.key",
        "attention.attention.value",
        "attention.output.dense",
        fc1,
        fc2,
    ]
}

/// The two layer norms (before attention, before the MLP).
fn norm_names(variant: VitVariant) -> [&'static str; 2] {
    match variant {
        VitVariant::Vit => ["layernorm_before", "layernorm_after"],
        VitVariant::Dinov2 => ["norm1", "norm2"],
    }
}

/// Layer `i`'s module path: `layers.i` (ViT) or `encoder.layer.i` (DINOv2).
pub(crate) fn module_prefix(variant: VitVariant, i: usize) -> String {
    match variant {
        VitVariant::Vit => format!("layers.{i}"),
        VitVariant::Dinov2 => format!("encoder.layer.{i}"),
    }
}

/// Layer `i`'s prefix in saved checkpoints (both models).
fn saved_prefix(i: usize) -> String {
    format!("encoder.layer.{i}")
}

/// One encoder layer: `x + attention(norm1(x))`, then `x + mlp(norm2(x))`, with DINOv2's
/// layer scale on both branches.
#[derive(Debug)]
pub struct VitLayer {
    /// `attention.q_proj`, `k_proj`, `v_proj`, `o_proj`, `mlp.fc1`, `mlp.fc2`, in this order
    /// (the order of [`super::VitModel::linear_paths`]).
    pub linears: [AdaptedLinear; 6],
    norms: [LayerNorm; 2],
    /// DINOv2's `layer_scale1.lambda1` and `layer_scale2.lambda1` (`hidden`).
    layer_scales: Option<[Tensor; 2]>,
}

impl VitLayer {
    /// Loads layer `i` from `w`, in whichever spelling the file uses (the newer one when layer
    /// 0's query projection is found under it, else `save_pretrained`'s).
    pub(crate) fn load(
        w: &Weights,
        c: &VitConfig,
        i: usize,
        device: Device,
    ) -> Result<Self, CheckpointError> {
        let (h, ff) = (c.hidden_size, c.intermediate_size);
        let newer = w.contains(&format!(
            "{}.{}.weight",
            module_prefix(c.variant, 0),
            MODULES[0]
        ));
        let (prefix, names) = match newer {
            true => (module_prefix(c.variant, i), MODULES),
            false => (saved_prefix(i), saved_modules(c.variant)),
        };
        let shapes = [(h, h), (h, h), (h, h), (h, h), (ff, h), (h, ff)];
        let lin = |j: usize| -> Result<AdaptedLinear, CheckpointError> {
            let (p, (out, inp)) = (format!("{prefix}.{}", names[j]), shapes[j]);
            let weight = w.tensor(&format!("{p}.weight"), &[out, inp], Kind::Float, device)?;
            // Only the query, key and value projections follow `qkv_bias`.
            let bias = match j >= 3 || c.qkv_bias {
                true => Some(w.tensor(&format!("{p}.bias"), &[out], Kind::Float, device)?),
                false => None,
            };
            Ok(AdaptedLinear::new(weight, bias))
        };
        let linears = [lin(0)?, lin(1)?, lin(2)?, lin(3)?, lin(4)?, lin(5)?];
        let [n1, n2] = norm_names(c.variant);
        let norm =
            |n: &str| LayerNorm::load(w, &format!("{prefix}.{n}"), h, c.layer_norm_eps, device);
        let norms = [norm(n1)?, norm(n2)?];
        let layer_scales = match c.variant {
            VitVariant::Vit => None,
            VitVariant::Dinov2 => {
                let scale = |k: usize| {
                    w.tensor(
                        &format!("{prefix}.layer_scale{k}.lambda1"),
                        &[h],
                        Kind::Float,
                        device,
                    )
                };
                Some([scale(1)?, scale(2)?])
            }
        };
        Ok(Self {
            linears,
            norms,
            layer_scales,
        })
    }

    /// Every weight of layer `i` under the name `save_pretrained` writes.
    pub(crate) fn named_parameters(&self, variant: VitVariant, i: usize) -> Vec<(String, &Tensor)> {
        let p = saved_prefix(i);
        let mut v = Vec::new();
        for (name, l) in saved_modules(variant).iter().zip(&self.linears) {
            v.push((format!("{p}.{name}.weight"), &l.weight));
            if let Some(b) = &l.bias {
                v.push((format!("{p}.{name}.bias"), b));
            }
        }
        for (name, n) in norm_names(variant).iter().zip(&self.norms) {
            v.push((format!("{p}.{name}.weight"), &n.weight));
            v.push((format!("{p}.{name}.bias"), &n.bias));
        }
        if let Some(scales) = &self.layer_scales {
            for (k, s) in scales.iter().enumerate() {
                v.push((format!("{p}.layer_scale{}.lambda1", k + 1), s));
            }
        }
        v
    }

    /// Saved tensor-name prefixes of the linear layers of layer `i`, in the order of
    /// [`VitLayer::linears`].
    pub(crate) fn saved_linear_names(variant: VitVariant, i: usize) -> Vec<String> {
        let p = saved_prefix(i);
        saved_modules(variant)
            .iter()
            .map(|m| format!("{p}.{m}"))
            .collect()
    }

    /// The layer on `x` (`[batch, tokens, hidden]`).
    pub(crate) fn forward(&self, c: &VitConfig, x: &Tensor, train: bool) -> Tensor {
        let [q, k, v, o, fc1, fc2] = &self.linears;
        let (batch, tokens) = (x.size()[0], x.size()[1]);
        let (heads, head) = (c.num_attention_heads, c.head_size());
        let h = self.norms[0].forward(x);
        let split = |l: &AdaptedLinear| {
            l.forward(&h, train)
                .view([batch, tokens, heads, head])
                .transpose(1, 2)
        };
        let p = if train {
            c.attention_probs_dropout_prob
        } else {
            0.0
        };
        let ctx = Tensor::scaled_dot_product_attention(
            &split(q),
            &split(k),
            &split(v),
            None::<&Tensor>,
            p,
            false,
            None,
            false,
        )
        .transpose(1, 2)
        .reshape([batch, tokens, heads * head]);
        let x = self.residual(c, o.forward(&ctx, train), 0, x, train);
        let h = c
            .hidden_act
            .apply(&fc1.forward(&self.norms[1].forward(&x), train));
        self.residual(c, fc2.forward(&h, train), 1, &x, train)
    }

    /// `x + branch`, the branch scaled by layer scale `k` (DINOv2) and passed through dropout
    /// (ViT) or drop path (DINOv2) when training.
    fn residual(&self, c: &VitConfig, branch: Tensor, k: usize, x: &Tensor, train: bool) -> Tensor {
        match &self.layer_scales {
            None => branch.with_dropout(c.hidden_dropout_prob, train) + x,
            Some(scales) => drop_path(branch * &scales[k], c.drop_path_rate, train) + x,
        }
    }
}

/// Stochastic depth per sample (transformers' `Dinov2DropPath`): each sample's branch is kept
/// with probability `1 − rate` and then divided by it; the identity outside training.
fn drop_path(x: Tensor, rate: f64, train: bool) -> Tensor {
    if !train || rate == 0.0 {
        return x;
    }
    let keep = 1.0 - rate;
    let mut shape = vec![1; x.dim()];
    shape[0] = x.size()[0];
    let mask = (Tensor::rand(shape, (x.kind(), x.device())) + keep).floor();
    x / keep * mask
}
