//! One LLaMA decoder layer, RMSNorm, and the key/value cache of generation.

use super::config::LlamaConfig;
use crate::adapter::AdaptedLinear;
use crate::models::hf::{CheckpointError, Weights};
use tch::{Device, Kind, Tensor};

/// Module paths of a layer's projections (relative to `layers.N`), in the order of
/// [`LlamaLayer::linears`].
pub(crate) const MODULES: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// RMSNorm: `y = w · x / sqrt(mean(x²) + ε)` over the last dimension, in float32.
#[derive(Debug)]
pub(crate) struct RmsNorm {
    pub(crate) weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// `<prefix>.weight` of width `dim`.
    pub(crate) fn load(
        w: &Weights,
        prefix: &str,
        dim: i64,
        eps: f64,
        device: Device,
    ) -> Result<Self, CheckpointError> {
        Ok(Self {
            weight: w.tensor(&format!("{prefix}.weight"), &[dim], Kind::Float, device)?,
            eps,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        let variance = x.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        &self.weight * (x * (variance + self.eps).rsqrt())
    }
}

/// Keys and values of every layer for the tokens seen so far (`[batch, kv_heads, tokens,
/// head_dim]` each, after the rotary embedding), so generation feeds one new token per step.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: i64,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tokens cached.
    pub fn len(&self) -> i64 {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn layer(&mut self, i: usize) -> &mut Option<(Tensor, Tensor)> {
        if self.layers.len() <= i {
            self.layers.resize_with(i + 1, || None);
        }
        &mut self.layers[i]
    }

    pub(crate) fn advance(&mut self, tokens: i64) {
        self.len += tokens;
    }
}

/// A decoder layer: `x + attn(norm₁(x))`, then `+ mlp(norm₂(·))` with
/// `mlp(h) = down(silu(gate(h)) ⊙ up(h))`.
#[derive(Debug)]
pub struct LlamaLayer {
    /// q, k, v, o, gate, up, down projections (the order of [`MODULES`]).
    pub linears: [AdaptedLinear; 7],
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

fn projection(
    w: &Weights,
    prefix: &str,
    out: i64,
    inp: i64,
    bias: bool,
    device: Device,
) -> Result<AdaptedLinear, CheckpointError> {
    let weight = w.tensor(
        &format!("{prefix}.weight"),
        &[out, inp],
        Kind::Float,
        device,
    )?;
    let bias = match bias {
        true => Some(w.tensor(&format!("{prefix}.bias"), &[out], Kind::Float, device)?),
        false => None,
    };
    Ok(AdaptedLinear::new(weight, bias))
}

impl LlamaLayer {
    /// Layer `i` from `w` (names relative to the decoder: `layers.{i}.self_attn.q_proj.weight`).
    pub(crate) fn load(
        w: &Weights,
        c: &LlamaConfig,
        i: usize,
        device: Device,
    ) -> Result<Self, CheckpointError> {
        let (h, d, f) = (c.hidden_size, c.head_dim, c.intermediate_size);
        let (q, kv) = (c.num_attention_heads * d, c.num_key_value_heads * d);
        let shapes = [(q, h), (kv, h), (kv, h), (h, q), (f, h), (f, h), (h, f)];
        let mut linears = Vec::with_capacity(7);
        for (k, (m, (out, inp))) in MODULES.iter().zip(shapes).enumerate() {
            let bias = if k < 4 { c.attention_bias } else { c.mlp_bias };
            linears.push(projection(
                w,
                &format!("layers.{i}.{m}"),
                out,
                inp,
                bias,
                device,
            )?);
        }
        let norm =
            |n: &str| RmsNorm::load(w, &format!("layers.{i}.{n}"), h, c.rms_norm_eps, device);
        Ok(Self {
            linears: linears.try_into().map_err(|_| unreachable_shape())?,
            input_layernorm: norm("input_layernorm")?,
            post_attention_layernorm: norm("post_attention_layernorm")?,
        })
    }

    /// The layer's weights by Hugging Face name (`layers.{i}....`).
    pub(crate) fn named_parameters(&self, i: usize) -> Vec<(String, &Tensor)> {
        let mut out = Vec::new();
        for (m, l) in MODULES.iter().zip(&self.linears) {
            out.push((format!("layers.{i}.{m}.weight"), &l.weight));
            if let Some(b) = &l.bias {
                out.push((format!("layers.{i}.{m}.bias"), b));
            }
        }
        out.push((
            format!("layers.{i}.input_layernorm.weight"),
            &self.input_layernorm.weight,
        ));
        out.push((
            format!("layers.{i}.post_attention_layernorm.weight"),
            &self.post_attention_layernorm.weight,
        ));
        out
    }

    /// The layer on `x` (`[batch, tokens, hidden]`); `cos`/`sin` are `[tokens, head_dim]`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &self,
        c: &LlamaConfig,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        train: bool,
    ) -> Tensor {
        let [q, k, v, o, gate, up, down] = &self.linears;
        let (batch, tokens) = (x.size()[0], x.size()[1]);
        let d = c.head_dim;
        let h = self.input_layernorm.forward(x);
        let heads = |l: &AdaptedLinear, n: i64| {
            l.forward(&h, train)
                .view([batch, tokens, n, d])
                .transpose(1, 2)
        };
        let query = rotate(&heads(q, c.num_attention_heads), cos, sin);
        let mut key = rotate(&heads(k, c.num_key_value_heads), cos, sin);
        let mut value = heads(v, c.num_key_value_heads);
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                key = Tensor::cat(&[pk, &key], 2);
                value = Tensor::cat(&[pv, &value], 2);
            }
            *slot = Some((key.shallow_clone(), value.shallow_clone()));
        }
        let (key, value) = (
            repeat_kv(&key, c.group_size()),
            repeat_kv(&value, c.group_size()),
        );
        let p = if train { c.attention_dropout } else { 0.0 };
        let causal = mask.is_none() && tokens > 1;
        let ctx = Tensor::scaled_dot_product_attention(
            &query, &key, &value, mask, p, causal, None, false,
        )
        .transpose(1, 2)
        .reshape([batch, tokens, c.num_attention_heads * d]);
        let x = x + o.forward(&ctx, train);
        let h = self.post_attention_layernorm.forward(&x);
        let act = gate.forward(&h, train).silu() * up.forward(&h, train);
        &x + down.forward(&act, train)
    }
}

/// An internal invariant (seven shapes give seven layers), never a user error.
fn unreachable_shape() -> CheckpointError {
    CheckpointError::Config {
        path: "config.json".into(),
        message: "internal: a LLaMA layer has seven projections".into(),
    }
}

/// Rotary embedding `x·cos + rotate_half(x)·sin`, with `rotate_half([a, b]) = [−b, a]` over
/// the two halves of the head (transformers' layout, not GGUF's interleaved pairs).
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    let (a, b) = (x.narrow(3, 0, half), x.narrow(3, half, half));
    let rotated = Tensor::cat(&[&b.neg(), &a], 3);
    x * cos + rotated * sin
}

/// Each key/value head repeated for the `group` query heads that share it.
fn repeat_kv(x: &Tensor, group: i64) -> Tensor {
    if group == 1 {
        return x.shallow_clone();
    }
    let s = x.size();
    x.unsqueeze(2)
        .expand([s[0], s[1], group, s[2], s[3]], false)
        .reshape([s[0], s[1] * group, s[2], s[3]])
}
