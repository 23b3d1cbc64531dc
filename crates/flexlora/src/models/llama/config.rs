//! `LlamaConfig`: the fields of a LLaMA-family `config.json` (transformers 5.24), with
//! transformers' defaults, validated once so the model code can trust them.

use crate::models::hf::{CheckpointError, read_config};
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

/// How rotary frequencies are scaled for long contexts (`rope_parameters.rope_type`, or the
/// older `rope_scaling.type`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// No scaling (`"default"`).
    None,
    /// Position interpolation: every inverse frequency divided by `factor` (`"linear"`).
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// Llama 3.1's band-wise scaling (`"llama3"`): wavelengths longer than
    /// `original_max_position_embeddings / low_freq_factor` are divided by `factor`, those
    /// shorter than `... / high_freq_factor` kept, and the band between interpolated smoothly.
    Llama3 {
        /// The divisor of low frequencies.
        factor: f64,
        /// Lower band edge (as a multiple of the original context's wavelength).
        low_freq_factor: f64,
        /// Upper band edge.
        high_freq_factor: f64,
        /// The context length of pretraining.
        original_max_position_embeddings: f64,
    },
}

/// A validated LLaMA configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Tokens in the vocabulary.
    pub vocab_size: i64,
    /// Model width.
    pub hidden_size: i64,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: i64,
    /// Decoder layers.
    pub num_hidden_layers: i64,
    /// Query heads.
    pub num_attention_heads: i64,
    /// Key/value heads (grouped-query attention when fewer than the query heads).
    pub num_key_value_heads: i64,
    /// Width of one head.
    pub head_dim: i64,
    /// The longest context the model was trained for (a prompt beyond it is refused).
    pub max_position_embeddings: i64,
    /// RMSNorm's ε.
    pub rms_norm_eps: f64,
    /// RoPE's base `θ`.
    pub rope_theta: f64,
    /// RoPE's frequency scaling.
    pub rope_scaling: RopeScaling,
    /// Biases on the attention projections.
    pub attention_bias: bool,
    /// Biases on the MLP projections.
    pub mlp_bias: bool,
    /// Dropout on attention probabilities (training only).
    pub attention_dropout: f64,
    /// Whether the output projection is the input embedding (no `lm_head.weight`).
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<i64>,
    /// End-of-sequence tokens (generation stops at any of them).
    pub eos_token_ids: Vec<i64>,
}

/// `config.json` as written; `None` means transformers' default.
#[derive(Debug, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: Option<i64>,
    hidden_size: Option<i64>,
    intermediate_size: Option<i64>,
    num_hidden_layers: Option<i64>,
    num_attention_heads: Option<i64>,
    num_key_value_heads: Option<i64>,
    head_dim: Option<i64>,
    hidden_act: Option<String>,
    max_position_embeddings: Option<i64>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    attention_dropout: Option<f64>,
    tie_word_embeddings: Option<bool>,
    pretraining_tp: Option<i64>,
    bos_token_id: Option<i64>,
    eos_token_id: Option<Value>,
}

impl LlamaConfig {
    /// Reads and validates `<folder>/config.json`.
    pub fn from_folder(folder: &Path) -> Result<Self, CheckpointError> {
        let raw: RawConfig = read_config(folder)?;
        Self::from_raw(raw, &folder.join("config.json"))
    }

    /// Parses and validates a config given as JSON (`path` names it in errors).
    pub fn from_json(value: Value, path: &Path) -> Result<Self, CheckpointError> {
        let raw: RawConfig =
            serde_json::from_value(value).map_err(|e| CheckpointError::Config {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Self::from_raw(raw, path)
    }

    fn from_raw(r: RawConfig, path: &Path) -> Result<Self, CheckpointError> {
        let unsupported =
            |field: &str, value: String, message: &str| CheckpointError::Unsupported {
                path: path.to_path_buf(),
                field: field.into(),
                value,
                message: message.into(),
            };
        match r.model_type.as_deref() {
            Some("llama") | None => {}
            Some(t) => {
                return Err(unsupported(
                    "model_type",
                    format!("{t:?}"),
                    "a decoder checkpoint must be \"llama\" (LlamaForCausalLM)",
                ));
            }
        }
        if let Some(act) = r.hidden_act.as_deref() {
            if act != "silu" {
                return Err(unsupported(
                    "hidden_act",
                    format!("{act:?}"),
                    "LLaMA's MLP is SwiGLU: only \"silu\" is supported",
                ));
            }
        }
        if let Some(tp) = r.pretraining_tp {
            if tp != 1 {
                return Err(unsupported(
                    "pretraining_tp",
                    tp.to_string(),
                    "only 1 is supported (the sliced-projection forward is not implemented)",
                ));
            }
        }
        let hidden_size = r.hidden_size.unwrap_or(4096);
        let heads = r.num_attention_heads.unwrap_or(32);
        let positive = |field: &str, v: i64| {
            if v > 0 {
                Ok(v)
            } else {
                Err(unsupported(field, v.to_string(), "must be positive"))
            }
        };
        positive("hidden_size", hidden_size)?;
        positive("num_attention_heads", heads)?;
        let kv_heads = positive(
            "num_key_value_heads",
            r.num_key_value_heads.unwrap_or(heads),
        )?;
        if heads % kv_heads != 0 {
            return Err(unsupported(
                "num_key_value_heads",
                kv_heads.to_string(),
                &format!("must divide num_attention_heads = {heads}"),
            ));
        }
        let head_dim = match r.head_dim {
            Some(d) => positive("head_dim", d)?,
            None if hidden_size % heads == 0 => hidden_size / heads,
            None => {
                return Err(unsupported(
                    "hidden_size",
                    hidden_size.to_string(),
                    &format!(
                        "must be a multiple of num_attention_heads = {heads} when head_dim is absent"
                    ),
                ));
            }
        };
        if head_dim % 2 != 0 {
            return Err(unsupported(
                "head_dim",
                head_dim.to_string(),
                "rotary embeddings need an even head width",
            ));
        }
        let (rope_theta, rope_scaling) =
            rope(&r.rope_parameters, &r.rope_scaling, r.rope_theta, path)?;
        let eos_token_ids = match &r.eos_token_id {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Number(n)) => n.as_i64().into_iter().collect(),
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
            Some(other) => {
                return Err(unsupported(
                    "eos_token_id",
                    other.to_string(),
                    "must be a token id or a list of them",
                ));
            }
        };
        Ok(Self {
            vocab_size: positive("vocab_size", r.vocab_size.unwrap_or(32000))?,
            hidden_size,
            intermediate_size: positive("intermediate_size", r.intermediate_size.unwrap_or(11008))?,
            num_hidden_layers: positive("num_hidden_layers", r.num_hidden_layers.unwrap_or(32))?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            max_position_embeddings: positive(
                "max_position_embeddings",
                r.max_position_embeddings.unwrap_or(2048),
            )?,
            rms_norm_eps: r.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            attention_bias: r.attention_bias.unwrap_or(false),
            mlp_bias: r.mlp_bias.unwrap_or(false),
            attention_dropout: r.attention_dropout.unwrap_or(0.0),
            tie_word_embeddings: r.tie_word_embeddings.unwrap_or(false),
            bos_token_id: r.bos_token_id,
            eos_token_ids,
        })
    }

    /// Query heads per key/value head.
    pub fn group_size(&self) -> i64 {
        self.num_attention_heads / self.num_key_value_heads
    }
}

/// RoPE's base and scaling from transformers 5's `rope_parameters`, or from the older
/// `rope_theta` + `rope_scaling` fields.
fn rope(
    parameters: &Option<Value>,
    scaling: &Option<Value>,
    theta: Option<f64>,
    path: &Path,
) -> Result<(f64, RopeScaling), CheckpointError> {
    let bad = |field: &str, value: String, message: &str| CheckpointError::Unsupported {
        path: path.to_path_buf(),
        field: field.into(),
        value,
        message: message.into(),
    };
    let (field, params) = match (parameters, scaling) {
        (Some(p @ Value::Object(_)), _) => ("rope_parameters", Some(p)),
        (_, Some(s @ Value::Object(_))) => ("rope_scaling", Some(s)),
        _ => ("rope_parameters", None),
    };
    let get = |key: &str| params.and_then(|p| p.get(key)).and_then(Value::as_f64);
    let theta = get("rope_theta").or(theta).unwrap_or(10000.0);
    if theta <= 0.0 || !theta.is_finite() {
        return Err(bad(
            "rope_theta",
            theta.to_string(),
            "must be a positive number",
        ));
    }
    let kind = params
        .and_then(|p| p.get("rope_type").or_else(|| p.get("type")))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let need = |key: &str| {
        get(key).filter(|v| *v > 0.0).ok_or_else(|| {
            bad(
                &format!("{field}.{key}"),
                "missing".into(),
                &format!("rope type {kind:?} needs a positive `{key}`"),
            )
        })
    };
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: need("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_position_embeddings: need("original_max_position_embeddings")?,
        },
        other => {
            return Err(bad(
                &format!("{field}.rope_type"),
                format!("{other:?}"),
                "supported rope types: \"default\", \"linear\", \"llama3\"",
            ));
        }
    };
    Ok((theta, scaling))
}
