//! LLaMA-family decoders in the Hugging Face `LlamaForCausalLM` layout (transformers 5.24):
//! token embedding, pre-norm decoder layers (RMSNorm, rotary self-attention with grouped
//! key/value heads, SwiGLU MLP), a final RMSNorm and the output projection, tied to the
//! embedding when `tie_word_embeddings` is set.
//!
//! Every attention and MLP projection is an [`AdaptedLinear`] under its transformers module
//! path relative to the decoder (`layers.3.self_attn.q_proj`, `layers.3.mlp.down_proj`), so
//! adapters are injected by the same PEFT-style patterns as on the encoders. Generation keeps
//! keys and values in a [`KvCache`].

mod config;
mod layer;

pub use config::{LlamaConfig, RopeScaling};
pub use layer::{KvCache, LlamaLayer};

use super::hf::{CheckpointError, Weights};
use crate::adapter::AdaptedLinear;
use layer::{MODULES, RmsNorm};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// A LLaMA decoder with its output projection (`LlamaForCausalLM`).
#[derive(Debug)]
pub struct LlamaModel {
    config: LlamaConfig,
    embed_tokens: Tensor,
    /// The decoder layers.
    pub layers: Vec<LlamaLayer>,
    norm: RmsNorm,
    /// `lm_head.weight` when it is not tied to the embedding.
    lm_head: Option<Tensor>,
    /// RoPE's inverse frequencies, `[head_dim / 2]`.
    inv_freq: Tensor,
    device: Device,
}

impl LlamaModel {
    /// Loads a `LlamaForCausalLM` folder (`config.json`, `model.safetensors`; tensors named
    /// `model.layers.N...` or without the `model.` prefix) onto `device`, frozen.
    pub fn from_folder(folder: &Path, device: Device) -> Result<Self, CheckpointError> {
        let config = LlamaConfig::from_folder(folder)?;
        let w = Weights::read(folder, "model.")?;
        Self::from_weights(config, &w, device)
    }

    /// Builds the model for `config` (validated) from `w`.
    pub fn from_weights(
        config: LlamaConfig,
        w: &Weights,
        device: Device,
    ) -> Result<Self, CheckpointError> {
        let c = &config;
        let embed_tokens = w.tensor(
            "embed_tokens.weight",
            &[c.vocab_size, c.hidden_size],
            Kind::Float,
            device,
        )?;
        // A tied checkpoint may still carry a copy of the embedding as `lm_head.weight`; it is
        // the embedding (transformers ties them on load), so it is not read.
        let lm_head = match c.tie_word_embeddings {
            true => None,
            false => Some(w.tensor(
                "lm_head.weight",
                &[c.vocab_size, c.hidden_size],
                Kind::Float,
                device,
            )?),
        };
        let layers = (0..c.num_hidden_layers as usize)
            .map(|i| LlamaLayer::load(w, c, i, device))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            embed_tokens,
            lm_head,
            layers,
            norm: RmsNorm::load(w, "norm", c.hidden_size, c.rms_norm_eps, device)?,
            inv_freq: inverse_frequencies(c).to_device(device),
            device,
            config,
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The device its weights are on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Final hidden states `[batch, tokens, hidden]` (after the last RMSNorm) of `input_ids`
    /// (`[batch, tokens]`, int64, each below `vocab_size`).
    ///
    /// Without a cache or `attention_mask`, attention is causal; batches padded on the right
    /// need no mask (real tokens never see the later padding). `attention_mask`
    /// (`[batch, past + tokens]`, 1 = real token) masks padding anywhere, as transformers
    /// does; positions are `past + 0, 1, ...` either way, as transformers' default
    /// `position_ids`. With `cache`, keys and values of earlier calls are attended to and this
    /// call's are appended.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Tensor {
        let tokens = input_ids.size()[1];
        let past = cache.as_ref().map_or(0, |c| c.len());
        let positions = Tensor::arange_start(past, past + tokens, (Kind::Int64, self.device));
        let mask = allowed_keys(attention_mask, past, tokens, self.device);
        self.layers_forward(input_ids, &positions, mask.as_ref(), cache, train)
    }

    /// Final hidden states `[1, tokens, hidden]` of several sequences packed into one row
    /// (`input_ids` `[1, tokens]`): token `i` sits at rotary position `positions[i]` and
    /// attends to the keys `allowed[i, j]` (`[tokens, tokens]`, bool) permits. A prompt and
    /// its continuations packed this way (each continuation seeing the prompt and itself)
    /// score all continuations in one forward without copying the prompt's keys and values;
    /// the result equals running each sequence on its own, up to float rounding.
    pub fn forward_packed(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        allowed: &Tensor,
    ) -> Tensor {
        let mask = allowed.to_device(self.device).unsqueeze(0).unsqueeze(0);
        self.layers_forward(
            input_ids,
            &positions.to_device(self.device),
            Some(&mask),
            None,
            false,
        )
    }

    /// Embedding, every layer and the final RMSNorm at the given rotary `positions` and
    /// attention `mask` (`None`: causal).
    fn layers_forward(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
        train: bool,
    ) -> Tensor {
        let tokens = input_ids.size()[1];
        let (cos, sin) = self.rotary(positions);
        let mut x = Tensor::embedding(&self.embed_tokens, input_ids, -1, false, false);
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| c.layer(i));
            x = layer.forward(&self.config, &x, &cos, &sin, mask, layer_cache, train);
        }
        if let Some(c) = cache {
            c.advance(tokens);
        }
        self.norm.forward(&x)
    }

    /// Next-token logits `[..., vocab]` for hidden states `[..., hidden]` (compute them only
    /// where they are needed: the vocabulary projection is a large part of a small model).
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        crate::gemm::linear(hidden, self.output_weight(), None)
    }

    /// The output projection, `[vocab, hidden]` (the embedding when tied).
    pub fn output_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// `cos` and `sin` of the rotary angles at `positions`, `[tokens, head_dim]`.
    fn rotary(&self, positions: &Tensor) -> (Tensor, Tensor) {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * self.inv_freq.unsqueeze(0);
        let angles = Tensor::cat(&[&freqs, &freqs], -1);
        (angles.cos(), angles.sin())
    }

    /// Hugging Face module paths of the projections (relative to the decoder: the
    /// `LlamaForCausalLM` prefix `model.` is not included), in model order.
    pub fn linear_paths(&self) -> Vec<String> {
        (0..self.layers.len())
            .flat_map(|i| MODULES.iter().map(move |m| format!("layers.{i}.{m}")))
            .collect()
    }

    /// The projections, in the order of [`LlamaModel::linear_paths`].
    pub fn linears(&self) -> Vec<&AdaptedLinear> {
        self.layers.iter().flat_map(|l| l.linears.iter()).collect()
    }

    /// The projections, mutably.
    pub fn linears_mut(&mut self) -> Vec<&mut AdaptedLinear> {
        self.layers
            .iter_mut()
            .flat_map(|l| l.linears.iter_mut())
            .collect()
    }

    /// Every weight by its Hugging Face name without the `model.` prefix (`lm_head.weight`
    /// when untied).
    pub fn named_parameters(&self) -> Vec<(String, &Tensor)> {
        let mut out = vec![("embed_tokens.weight".to_string(), &self.embed_tokens)];
        for (i, l) in self.layers.iter().enumerate() {
            out.extend(l.named_parameters(i));
        }
        out.push(("norm.weight".into(), &self.norm.weight));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".into(), h));
        }
        out
    }
}

/// RoPE's inverse frequencies `θ^(−2i/d)` for `i < d/2`, in float32 as transformers computes
/// them, then scaled by `config.rope_scaling`.
pub fn inverse_frequencies(config: &LlamaConfig) -> Tensor {
    let d = config.head_dim;
    let opts = (Kind::Float, Device::Cpu);
    let exponents = Tensor::arange_start_step(0, d, 2, opts) / d as f64;
    // `1.0 / base ** x` in PyTorch is `reciprocal(pow(base, x))`: the same rounding here.
    let inv = Tensor::pow_scalar(config.rope_theta, &exponents).reciprocal();
    match config.rope_scaling {
        RopeScaling::None => inv,
        RopeScaling::Linear { factor } => inv / factor,
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        } => {
            let wavelen = inv.reciprocal() * (2.0 * std::f64::consts::PI);
            let long = wavelen.gt(old / low_freq_factor);
            let scaled = (&inv / factor).where_self(&long, &inv);
            let smooth = (wavelen.reciprocal() * old - low_freq_factor)
                / (high_freq_factor - low_freq_factor);
            let smoothed = (smooth.neg() + 1.0) * &scaled / factor + &smooth * &scaled;
            let medium = wavelen
                .lt(old / high_freq_factor)
                .logical_not()
                .logical_and(&long.logical_not());
            smoothed.where_self(&medium, &scaled)
        }
    }
}

/// The boolean attention mask `[batch, 1, tokens, past + tokens]` (true = may attend), or
/// `None` when causal attention alone is right (no padding mask, no cached keys).
///
/// A query may see keys at or before its position that are real tokens; every query also
/// sees itself, so a row of padding never softmaxes over nothing (its output is unused).
fn allowed_keys(
    attention_mask: Option<&Tensor>,
    past: i64,
    tokens: i64,
    device: Device,
) -> Option<Tensor> {
    let needs_padding_mask =
        attention_mask.is_some_and(|m| i64::try_from(m.min()).map(|v| v == 0).unwrap_or(true));
    if !needs_padding_mask && (past == 0 || tokens == 1) {
        return None;
    }
    let total = past + tokens;
    let q = Tensor::arange_start(past, total, (Kind::Int64, device)).unsqueeze(-1);
    let k = Tensor::arange(total, (Kind::Int64, device)).unsqueeze(0);
    let causal = k.le_tensor(&q);
    let allowed = match attention_mask.filter(|_| needs_padding_mask) {
        Some(m) => {
            let real = m.to_device(device).ne(0).unsqueeze(1).unsqueeze(1);
            causal.unsqueeze(0).unsqueeze(0).logical_and(&real)
        }
        None => causal.unsqueeze(0).unsqueeze(0),
    };
    let own = k.eq_tensor(&q).unsqueeze(0).unsqueeze(0);
    Some(allowed.logical_or(&own))
}
