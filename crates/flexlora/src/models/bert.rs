//! BERT-family encoders in the Hugging Face `BertModel` layout.
//!
//! Every linear layer is an [`AdaptedLinear`] reachable by its Hugging Face module path
//! (`encoder.layer.3.attention.self.query`), so adapters can be injected by PEFT-style patterns.

use super::hf::{CheckpointError, LayerNorm, Weights, linear, read_config};
use super::packing::TokenPacking;
use crate::adapter::AdaptedLinear;
use crate::dropout::WithDropout;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The activation named by `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// Exact (erf) GELU: `gelu`.
    #[serde(rename = "gelu")]
    Gelu,
    /// Tanh-approximated GELU: `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`.
    #[serde(alias = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    #[serde(rename = "gelu_tanh")]
    GeluTanh,
    /// `relu`.
    #[serde(rename = "relu")]
    Relu,
    /// `silu` / `swish`.
    #[serde(rename = "silu", alias = "swish")]
    Silu,
}

impl Activation {
    fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Gelu => x.gelu("none"),
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::Relu => x.relu(),
            Activation::Silu => x.silu(),
        }
    }
}

fn default_model_type() -> String {
    "bert".into()
}
fn default_position_embedding_type() -> String {
    "absolute".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_type_vocab_size() -> i64 {
    2
}
fn default_initializer_range() -> f64 {
    0.02
}

/// The fields of a BERT `config.json` that the architecture uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Must be `bert`.
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Hidden width.
    pub hidden_size: i64,
    /// Encoder layers.
    pub num_hidden_layers: i64,
    /// Attention heads (must divide `hidden_size`).
    pub num_attention_heads: i64,
    /// Feed-forward width.
    pub intermediate_size: i64,
    /// Feed-forward activation.
    pub hidden_act: Activation,
    /// Dropout after embeddings, attention output and feed-forward.
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Longest input in tokens.
    pub max_position_embeddings: i64,
    /// Segment vocabulary (2 for sentence pairs).
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: i64,
    /// Layer-norm epsilon.
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Only `absolute` is implemented.
    #[serde(default = "default_position_embedding_type")]
    pub position_embedding_type: String,
    /// Std of newly initialised weights (heads).
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    /// Dropout before the classifier (defaults to `hidden_dropout_prob`).
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
}

impl BertConfig {
    /// Reads `<folder>/config.json` and checks that this build implements it.
    pub fn from_folder(folder: &Path) -> Result<Self, CheckpointError> {
        let c: BertConfig = read_config(folder)?;
        let path = folder.join("config.json");
        let unsupported = |field: &str, value: String, message: &str| {
            Err(CheckpointError::Unsupported {
                path: path.clone(),
                field: field.into(),
                value,
                message: message.into(),
            })
        };
        if c.model_type != "bert" {
            return unsupported(
                "model_type",
                format!("{:?}", c.model_type),
                "only \"bert\" checkpoints load as BERT encoders",
            );
        }
        if c.position_embedding_type != "absolute" {
            return unsupported(
                "position_embedding_type",
                format!("{:?}", c.position_embedding_type),
                "only \"absolute\" position embeddings are implemented",
            );
        }
        let positive = [
            ("vocab_size", c.vocab_size),
            ("hidden_size", c.hidden_size),
            ("num_hidden_layers", c.num_hidden_layers),
            ("num_attention_heads", c.num_attention_heads),
            ("intermediate_size", c.intermediate_size),
            ("max_position_embeddings", c.max_position_embeddings),
            ("type_vocab_size", c.type_vocab_size),
        ];
        for (field, v) in positive {
            if v <= 0 {
                return unsupported(field, v.to_string(), "must be positive");
            }
        }
        if c.hidden_size % c.num_attention_heads != 0 {
            return unsupported(
                "num_attention_heads",
                c.num_attention_heads.to_string(),
                &format!("must divide hidden_size ({})", c.hidden_size),
            );
        }
        Ok(c)
    }
}

/// One encoder layer.
#[derive(Debug)]
pub struct BertLayer {
    /// `attention.self.query`.
    pub query: AdaptedLinear,
    /// `attention.self.key`.
    pub key: AdaptedLinear,
    /// `attention.self.value`.
    pub value: AdaptedLinear,
    /// `attention.output.dense`.
    pub attention_output: AdaptedLinear,
    attention_norm: LayerNorm,
    /// `intermediate.dense`.
    pub intermediate: AdaptedLinear,
    /// `output.dense`.
    pub output: AdaptedLinear,
    output_norm: LayerNorm,
}

/// The module names inside a layer, in forward order (the order of every adapter list).
pub const LAYER_MODULES: [&str; 6] = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
];

impl BertLayer {
    fn linears_mut(&mut self) -> [&mut AdaptedLinear; 6] {
        [
            &mut self.query,
            &mut self.key,
            &mut self.value,
            &mut self.attention_output,
            &mut self.intermediate,
            &mut self.output,
        ]
    }

    fn linears(&self) -> [&AdaptedLinear; 6] {
        [
            &self.query,
            &self.key,
            &self.value,
            &self.attention_output,
            &self.intermediate,
            &self.output,
        ]
    }
}

/// A BERT encoder (`BertModel` without pooler; see [`crate::models::heads`] for heads).
#[derive(Debug)]
pub struct BertModel {
    /// The configuration it was built from.
    pub config: BertConfig,
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    embeddings_norm: LayerNorm,
    /// The encoder layers.
    pub layers: Vec<BertLayer>,
    device: Device,
}

/// One tokenised batch, padded to its longest member.
#[derive(Debug)]
pub struct EncoderInput {
    /// Token ids, `[batch, len]` (int64).
    pub input_ids: Tensor,
    /// 1 for real tokens, 0 for padding, `[batch, len]` (int64).
    pub attention_mask: Tensor,
    /// Segment ids, `[batch, len]` (int64).
    pub token_type_ids: Tensor,
}

impl BertModel {
    /// Loads a BERT encoder from a Hugging Face folder (`config.json`, `model.safetensors`)
    /// onto `device`. Names may carry a `bert.` prefix. All weights are frozen.
    pub fn from_folder(folder: &Path, device: Device) -> Result<(Self, Weights), CheckpointError> {
        let config = BertConfig::from_folder(folder)?;
        let w = Weights::read(folder, "bert.")?;
        let h = config.hidden_size;
        let eps = config.layer_norm_eps;
        let emb = |name: &str, rows: i64| {
            w.tensor(
                &format!("embeddings.{name}.weight"),
                &[rows, h],
                Kind::Float,
                device,
            )
        };
        let word_embeddings = emb("word_embeddings", config.vocab_size)?;
        let position_embeddings = emb("position_embeddings", config.max_position_embeddings)?;
        let token_type_embeddings = emb("token_type_embeddings", config.type_vocab_size)?;
        let embeddings_norm = LayerNorm::load(&w, "embeddings.LayerNorm", h, eps, device)?;
        let mut layers = Vec::new();
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let ff = config.intermediate_size;
            layers.push(BertLayer {
                query: linear(&w, &format!("{p}.attention.self.query"), h, h, device)?,
                key: linear(&w, &format!("{p}.attention.self.key"), h, h, device)?,
                value: linear(&w, &format!("{p}.attention.self.value"), h, h, device)?,
                attention_output: linear(&w, &format!("{p}.attention.output.dense"), h, h, device)?,
                attention_norm: LayerNorm::load(
                    &w,
                    &format!("{p}.attention.output.LayerNorm"),
                    h,
                    eps,
                    device,
                )?,
                intermediate: linear(&w, &format!("{p}.intermediate.dense"), ff, h, device)?,
                output: linear(&w, &format!("{p}.output.dense"), h, ff, device)?,
                output_norm: LayerNorm::load(&w, &format!("{p}.output.LayerNorm"), h, eps, device)?,
            });
        }
        let model = Self {
            config,
            word_embeddings,
            position_embeddings,
            token_type_embeddings,
            embeddings_norm,
            layers,
            device,
        };
        Ok((model, w))
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Module paths of every adaptable linear layer, in forward order (layer, then
    /// [`LAYER_MODULES`] order).
    pub fn linear_paths(&self) -> Vec<String> {
        (0..self.layers.len())
            .flat_map(|i| {
                LAYER_MODULES
                    .iter()
                    .map(move |m| format!("encoder.layer.{i}.{m}"))
            })
            .collect()
    }

    /// Every adaptable linear layer, in the order of [`BertModel::linear_paths`].
    pub fn linears_mut(&mut self) -> Vec<&mut AdaptedLinear> {
        self.layers
            .iter_mut()
            .flat_map(|l| l.linears_mut())
            .collect()
    }

    /// Every adaptable linear layer, in the order of [`BertModel::linear_paths`].
    pub fn linears(&self) -> Vec<&AdaptedLinear> {
        self.layers.iter().flat_map(|l| l.linears()).collect()
    }

    /// Every weight of the encoder with its Hugging Face name (`embeddings.word_embeddings.weight`,
    /// `encoder.layer.0.attention.self.query.weight`, ...), for full fine-tuning and checkpoints.
    pub fn named_parameters(&self) -> Vec<(String, &Tensor)> {
        let mut v: Vec<(String, &Tensor)> = vec![
            (
                "embeddings.word_embeddings.weight".into(),
                &self.word_embeddings,
            ),
            (
                "embeddings.position_embeddings.weight".into(),
                &self.position_embeddings,
            ),
            (
                "embeddings.token_type_embeddings.weight".into(),
                &self.token_type_embeddings,
            ),
            (
                "embeddings.LayerNorm.weight".into(),
                &self.embeddings_norm.weight,
            ),
            (
                "embeddings.LayerNorm.bias".into(),
                &self.embeddings_norm.bias,
            ),
        ];
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("encoder.layer.{i}");
            for (m, l) in LAYER_MODULES.iter().zip(layer.linears()) {
                v.push((format!("{p}.{m}.weight"), &l.weight));
                if let Some(b) = &l.bias {
                    v.push((format!("{p}.{m}.bias"), b));
                }
            }
            for (n, norm) in [
                ("attention.output.LayerNorm", &layer.attention_norm),
                ("output.LayerNorm", &layer.output_norm),
            ] {
                v.push((format!("{p}.{n}.weight"), &norm.weight));
                v.push((format!("{p}.{n}.bias"), &norm.bias));
            }
        }
        v
    }

    /// Makes every encoder weight trainable (full fine-tuning) or frozen.
    pub fn set_trainable(&mut self, trainable: bool) {
        for (_, t) in self.named_parameters() {
            let _ = t.set_requires_grad(trainable);
        }
    }

    /// The last hidden states `[batch, len, hidden]`. `train` switches dropout on.
    ///
    /// Padding is removed before the work that is per token (every linear layer, layer norm,
    /// activation and dropout runs on the real tokens only, packed as `[tokens, hidden]`), and
    /// attention runs on groups of sequences of similar length, each padded only to its own
    /// longest ([`super::packing`]), as FlashAttention's "unpadded" BERT does: real tokens get
    /// the values of the padded computation up to summation order (padding never reaches
    /// them: it is masked out of attention), at a fraction of the cost when batches hold short
    /// sentences. Padding positions of the result are zeros (transformers leaves unused values
    /// there).
    pub fn forward(&self, input: &EncoderInput, train: bool) -> Tensor {
        let c = &self.config;
        let (batch, len) = (input.input_ids.size()[0], input.input_ids.size()[1]);
        let positions = Tensor::arange(len, (Kind::Int64, self.device)).unsqueeze(0);
        let x = input.input_ids.embedding_lookup(&self.word_embeddings)
            + positions.embedding_lookup(&self.position_embeddings)
            + input
                .token_type_ids
                .embedding_lookup(&self.token_type_embeddings);
        let tokens = TokenPacking::new(&input.attention_mask);
        let mut h = self
            .embeddings_norm
            .forward(&tokens.pack(&x))
            .with_dropout(c.hidden_dropout_prob, train);
        let heads = c.num_attention_heads;
        let p = if train {
            c.attention_probs_dropout_prob
        } else {
            0.0
        };
        for layer in &self.layers {
            let q = layer.query.forward(&h, train);
            let k = layer.key.forward(&h, train);
            let v = layer.value.forward(&h, train);
            let ctx = tokens.attention(&q, &k, &v, heads, |q, k, v, mask| {
                attention(q, k, v, mask, p)
            });
            let attn = layer
                .attention_output
                .forward(&ctx, train)
                .with_dropout(c.hidden_dropout_prob, train);
            let attn = layer.attention_norm.forward(&(attn + &h));
            let ff = c
                .hidden_act
                .apply(&layer.intermediate.forward(&attn, train));
            let out = layer
                .output
                .forward(&ff, train)
                .with_dropout(c.hidden_dropout_prob, train);
            h = layer.output_norm.forward(&(out + attn));
        }
        tokens.unpack(&h, batch, len)
    }
}

/// Scaled dot-product attention of `[batch, heads, len, head_dim]` inputs under an additive
/// `mask`, with dropout `p` on the attention probabilities. Without dropout, or off the CPU,
/// LibTorch's fused kernel; with dropout on the CPU, where LibTorch would fall back to the
/// same unfused products but draw the mask serially, the products with the parallel mask of
/// [`crate::dropout::dropout`].
fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, p: f64) -> Tensor {
    if p > 0.0 && q.device() == Device::Cpu {
        let (n, h, l, d) = (q.size()[0], q.size()[1], q.size()[2], q.size()[3]);
        // Batched products on contiguous `[n · h, l, d]` copies (a matmul of the strided
        // head views copies them too, more slowly), and the scale and mask applied by the
        // product itself (`mask + scale · q kᵀ`, the mask broadcast over the query rows).
        let batched = |t: &Tensor| t.contiguous().view([n * h, l, d]);
        let bias = mask.expand([n, h, 1, l], false).reshape([n * h, 1, l]);
        let scale = 1.0 / (d as f64).sqrt();
        let scores = bias.baddbmm(&batched(q), &batched(k).transpose(1, 2), 1.0, scale);
        let probs = scores.softmax(-1, scores.kind()).with_dropout(p, true);
        return probs.bmm(&batched(v)).view([n, h, l, d]);
    }
    Tensor::scaled_dot_product_attention(q, k, v, Some(mask), p, false, None, false)
}

trait EmbeddingLookup {
    fn embedding_lookup(&self, table: &Tensor) -> Tensor;
}

impl EmbeddingLookup for Tensor {
    fn embedding_lookup(&self, table: &Tensor) -> Tensor {
        Tensor::embedding(table, self, -1, false, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU path for attention with dropout (batched products, scale and mask inside the
    /// product) gives LibTorch's fused attention's values and input gradients when dropout
    /// keeps everything (`p` so small that no element is dropped and the scale is 1), on
    /// strided head views as the model hands them over and with masked key positions.
    #[test]
    fn eager_attention_matches_the_fused_kernel() {
        tch::manual_seed(5);
        let (n, h, l, d) = (3i64, 2i64, 5i64, 4i64);
        let packed = Tensor::randn([n, l, h * d * 3], (Kind::Float, Device::Cpu));
        let mut lengths_mask = vec![0f32; (n * l) as usize];
        for (b, len) in [(0usize, 5usize), (1, 3), (2, 1)] {
            for t in len..l as usize {
                lengths_mask[b * l as usize + t] = f32::MIN;
            }
        }
        let mask = Tensor::from_slice(&lengths_mask).view([n, 1, 1, l]);
        let upstream = Tensor::randn([n, h, l, d], (Kind::Float, Device::Cpu));
        let run = |p: f64| {
            let leaf = packed.copy().set_requires_grad(true);
            let heads = |i: i64| {
                leaf.narrow(2, i * h * d, h * d)
                    .view([n, l, h, d])
                    .transpose(1, 2)
            };
            let out = attention(&heads(0), &heads(1), &heads(2), &mask, p);
            (&out * &upstream).sum(Kind::Float).backward();
            (out.detach(), leaf.grad())
        };
        let (eager, eager_grad) = run(1e-12);
        let (fused, fused_grad) = run(0.0);
        let diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
        assert!(diff(&eager, &fused) < 1e-5, "values differ");
        assert!(diff(&eager_grad, &fused_grad) < 1e-5, "gradients differ");
        assert!(fused_grad.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }
}
