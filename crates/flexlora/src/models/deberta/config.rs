//! `DebertaV2Config`: the fields of a DeBERTa-v2/v3 `config.json`, with transformers' defaults.

use crate::models::hf::{CheckpointError, read_config};
use serde::{Deserialize, Deserializer, Serialize};
use std::path::Path;
use tch::Tensor;

/// An activation named in the config (`hidden_act`, `conv_act`, `pooler_hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// Exact (erf) GELU: `gelu`.
    #[serde(rename = "gelu")]
    Gelu,
    /// Tanh-approximated GELU: `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`.
    #[serde(rename = "gelu_tanh")]
    #[serde(alias = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
    /// `relu`.
    #[serde(rename = "relu")]
    Relu,
    /// `silu` / `swish`.
    #[serde(rename = "silu", alias = "swish")]
    Silu,
    /// `tanh` (transformers' default `conv_act`).
    #[serde(rename = "tanh")]
    Tanh,
}

impl Activation {
    /// Applies the activation elementwise.
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Gelu => x.gelu("none"),
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::Relu => x.relu(),
            Activation::Silu => x.silu(),
            Activation::Tanh => x.tanh(),
        }
    }
}

/// Which disentangled attention terms are on (`pos_att_type`).
pub const ATTENTION_TERMS: [&str; 2] = ["c2p", "p2c"];

/// The fields of a DeBERTa-v2/v3 `config.json` that the architecture uses.
///
/// A missing field takes the value transformers' `DebertaV2Config` (or the modelling code's
/// `getattr` fallback) gives it, so a folder loads here exactly when and as it loads there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DebertaV2Config {
    /// Must be `deberta-v2` (DeBERTa v1 is another architecture).
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Hidden width.
    pub hidden_size: i64,
    /// Encoder layers.
    pub num_hidden_layers: i64,
    /// Attention heads.
    pub num_attention_heads: i64,
    /// Width of one head (defaults to `hidden_size / num_attention_heads`); heads × this
    /// must equal `hidden_size`, as the attention output layer is `hidden × hidden`.
    pub attention_head_size: Option<i64>,
    /// Feed-forward width.
    pub intermediate_size: i64,
    /// Feed-forward activation.
    pub hidden_act: Activation,
    /// Dropout after embeddings, attention output, feed-forward, convolution and on the
    /// relative position embeddings.
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    pub attention_probs_dropout_prob: f64,
    /// Rows of the absolute position table; also the relative range when
    /// `max_relative_positions < 1`.
    pub max_position_embeddings: i64,
    /// Segment vocabulary; 0 means no token type embeddings (DeBERTa-v3).
    pub type_vocab_size: i64,
    /// Std of newly initialised weights (heads).
    pub initializer_range: f64,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
    /// Width of the embedding tables (defaults to `hidden_size`); when different, a
    /// projection `embed_proj` maps embeddings to `hidden_size`.
    pub embedding_size: Option<i64>,
    /// Whether absolute position embeddings are added to the word embeddings.
    pub position_biased_input: bool,
    /// Whether attention has the disentangled relative-position terms.
    pub relative_attention: bool,
    /// Relative distances are clipped to ± this; `< 1` means `max_position_embeddings`.
    pub max_relative_positions: i64,
    /// Log buckets of relative positions (`> 0` turns bucketing on, DeBERTa-v3: 256).
    pub position_buckets: i64,
    /// The relative terms: `c2p` (content to position), `p2c` (position to content). A
    /// `"p2c|c2p"` string (older configs) is read as a list.
    #[serde(deserialize_with = "string_or_list")]
    pub pos_att_type: Vec<String>,
    /// Whether the relative embeddings are projected with the content `query_proj` /
    /// `key_proj` (v3) instead of their own `pos_query_proj` / `pos_key_proj` (v2).
    pub share_att_key: bool,
    /// `"layer_norm"` normalises the relative embedding table; `"none"` leaves it. Entries
    /// are separated by `|`.
    pub norm_rel_ebd: String,
    /// Kernel of the convolution after the first layer (v2); 0 means none.
    pub conv_kernel_size: i64,
    /// Activation of that convolution.
    pub conv_act: Activation,
    /// Groups of that convolution.
    pub conv_groups: i64,
    /// Width of the classification pooler (defaults to `hidden_size`, and must equal it).
    pub pooler_hidden_size: Option<i64>,
    /// Dropout on the `[CLS]` state before the pooler.
    pub pooler_dropout: f64,
    /// Activation of the pooler.
    pub pooler_hidden_act: Activation,
    /// Dropout before the classifier (defaults to `hidden_dropout_prob`).
    pub cls_dropout: Option<f64>,
}

impl Default for DebertaV2Config {
    /// transformers' `DebertaV2Config()` (microsoft/deberta-v2-xlarge sizes) with the
    /// modelling code's fallbacks for the fields the class does not declare.
    fn default() -> Self {
        Self {
            model_type: "deberta-v2".into(),
            vocab_size: 128_100,
            hidden_size: 1536,
            num_hidden_layers: 24,
            num_attention_heads: 24,
            attention_head_size: None,
            intermediate_size: 6144,
            hidden_act: Activation::Gelu,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 512,
            type_vocab_size: 0,
            initializer_range: 0.02,
            layer_norm_eps: 1e-7,
            embedding_size: None,
            position_biased_input: true,
            relative_attention: false,
            max_relative_positions: -1,
            position_buckets: -1,
            pos_att_type: Vec::new(),
            share_att_key: false,
            norm_rel_ebd: "none".into(),
            conv_kernel_size: 0,
            conv_act: Activation::Tanh,
            conv_groups: 1,
            pooler_hidden_size: None,
            pooler_dropout: 0.0,
            pooler_hidden_act: Activation::Gelu,
            cls_dropout: None,
        }
    }
}

/// `pos_att_type` as transformers reads it: a list, a `|`-separated string (lower-cased and
/// trimmed), or null for none.
fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<Form>::deserialize(d)? {
        None => Vec::new(),
        Some(Form::Many(v)) => v,
        Some(Form::One(s)) => s
            .to_lowercase()
            .split('|')
            .map(|x| x.trim().into())
            .collect(),
    })
}

impl DebertaV2Config {
    /// Reads `<folder>/config.json` and checks that this build implements it.
    pub fn from_folder(folder: &Path) -> Result<Self, CheckpointError> {
        let c: DebertaV2Config = read_config(folder)?;
        c.validate(&folder.join("config.json"))?;
        Ok(c)
    }

    /// Checks the values; errors name `path` (the config file) and the field.
    pub fn validate(&self, path: &Path) -> Result<(), CheckpointError> {
        let unsupported = |field: &str, value: String, message: &str| {
            Err(CheckpointError::Unsupported {
                path: path.to_path_buf(),
                field: field.into(),
                value,
                message: message.into(),
            })
        };
        if self.model_type != "deberta-v2" {
            return unsupported(
                "model_type",
                format!("{:?}", self.model_type),
                "only \"deberta-v2\" checkpoints (DeBERTa-v2 and v3) load as DeBERTa encoders",
            );
        }
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("attention_head_size", self.head_size()),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("embedding_size", self.embedding_size()),
            ("conv_groups", self.conv_groups),
        ];
        for (field, v) in positive {
            if v <= 0 {
                return unsupported(field, v.to_string(), "must be positive");
            }
        }
        if self.type_vocab_size < 0 {
            return unsupported(
                "type_vocab_size",
                self.type_vocab_size.to_string(),
                "must be 0 (no token types) or positive",
            );
        }
        // Without `attention_head_size` transformers rejects a width the heads do not divide;
        // with it, the attention output layer (`hidden × hidden`) still needs the product.
        if self.attention_head_size.is_none() && self.hidden_size % self.num_attention_heads != 0 {
            return unsupported(
                "num_attention_heads",
                self.num_attention_heads.to_string(),
                &format!("must divide hidden_size ({})", self.hidden_size),
            );
        }
        if self.num_attention_heads * self.head_size() != self.hidden_size {
            return unsupported(
                "attention_head_size",
                self.head_size().to_string(),
                &format!(
                    "times num_attention_heads ({}) must equal hidden_size ({})",
                    self.num_attention_heads, self.hidden_size
                ),
            );
        }
        if let Some(bad) = self
            .pos_att_type
            .iter()
            .find(|t| !ATTENTION_TERMS.contains(&t.as_str()))
        {
            return unsupported(
                "pos_att_type",
                format!("{:?}", self.pos_att_type),
                &format!("{bad:?} is not a DeBERTa-v2 attention term (\"c2p\", \"p2c\")"),
            );
        }
        if let Some(bad) = self
            .norm_rel_ebd_entries()
            .into_iter()
            .find(|e| e != "layer_norm" && e != "none")
        {
            return unsupported(
                "norm_rel_ebd",
                format!("{:?}", self.norm_rel_ebd),
                &format!("{bad:?} is not \"layer_norm\" or \"none\""),
            );
        }
        if self.conv_kernel_size > 0 {
            // An even kernel with transformers' padding `(k − 1) / 2` shortens the sequence.
            if self.conv_kernel_size % 2 == 0 {
                return unsupported(
                    "conv_kernel_size",
                    self.conv_kernel_size.to_string(),
                    "must be odd (or 0 for no convolution)",
                );
            }
            if self.hidden_size % self.conv_groups != 0 {
                return unsupported(
                    "conv_groups",
                    self.conv_groups.to_string(),
                    &format!("must divide hidden_size ({})", self.hidden_size),
                );
            }
        }
        if self.relative_attention && self.position_buckets > 0 {
            // The log buckets divide by log((max − 1) / (buckets / 2)), which must be positive.
            let mid = self.position_buckets / 2;
            if mid < 1 || self.max_relative_positions() - 1 <= mid {
                return unsupported(
                    "position_buckets",
                    self.position_buckets.to_string(),
                    &format!(
                        "must be at least 2 and its half below the relative range minus one ({})",
                        self.max_relative_positions() - 1
                    ),
                );
            }
        }
        let pooler = self.pooler_hidden_size.unwrap_or(self.hidden_size);
        if pooler != self.hidden_size {
            return unsupported(
                "pooler_hidden_size",
                pooler.to_string(),
                &format!(
                    "must equal hidden_size ({}): the classifier reads the pooler output as \
                     hidden_size wide",
                    self.hidden_size
                ),
            );
        }
        Ok(())
    }

    /// Width of one attention head.
    pub fn head_size(&self) -> i64 {
        self.attention_head_size
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Width of the embedding tables.
    pub fn embedding_size(&self) -> i64 {
        self.embedding_size.unwrap_or(self.hidden_size)
    }

    /// The relative range in effect (`max_relative_positions`, or `max_position_embeddings`
    /// when that is below 1).
    pub fn max_relative_positions(&self) -> i64 {
        if self.max_relative_positions < 1 {
            self.max_position_embeddings
        } else {
            self.max_relative_positions
        }
    }

    /// Half the rows of the relative embedding table (`att_span` in transformers): the
    /// bucket count when bucketing, else the relative range.
    pub fn attention_span(&self) -> i64 {
        if self.position_buckets > 0 {
            self.position_buckets
        } else {
            self.max_relative_positions()
        }
    }

    /// Whether the content-to-position term is on.
    pub fn c2p(&self) -> bool {
        self.pos_att_type.iter().any(|t| t == "c2p")
    }

    /// Whether the position-to-content term is on.
    pub fn p2c(&self) -> bool {
        self.pos_att_type.iter().any(|t| t == "p2c")
    }

    /// Whether the relative embedding table is layer-normed before use.
    pub fn norm_rel_embeddings(&self) -> bool {
        self.norm_rel_ebd_entries()
            .iter()
            .any(|e| e == "layer_norm")
    }

    fn norm_rel_ebd_entries(&self) -> Vec<String> {
        self.norm_rel_ebd
            .to_lowercase()
            .split('|')
            .map(|x| x.trim().to_string())
            .collect()
    }

    /// The dropout before the classifier.
    pub fn classifier_dropout(&self) -> f64 {
        self.cls_dropout.unwrap_or(self.hidden_dropout_prob)
    }
}
