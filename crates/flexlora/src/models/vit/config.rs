//! `ViTConfig` and `Dinov2Config`: the fields of a vision transformer's `config.json`, with
//! transformers' defaults for each model type.

use crate::models::deberta::Activation;
use crate::models::hf::{CheckpointError, read_config};
use serde::Deserialize;
use std::path::Path;

/// Which of the two architectures a folder holds (`model_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VitVariant {
    /// `model_type = "vit"`: transformers' `ViTModel` / `ViTForImageClassification`.
    Vit,
    /// `model_type = "dinov2"`: `Dinov2Model` / `Dinov2ForImageClassification` (layer scale,
    /// drop path, a head on the class token and the mean patch token).
    Dinov2,
}

impl VitVariant {
    /// The `model_type` string.
    pub fn model_type(self) -> &'static str {
        match self {
            VitVariant::Vit => "vit",
            VitVariant::Dinov2 => "dinov2",
        }
    }

    /// The encoder's name prefix in a classification checkpoint (`vit`, `dinov2`).
    pub fn prefix(self) -> &'static str {
        self.model_type()
    }

    /// The classification class name for `architectures`.
    pub fn architecture(self) -> &'static str {
        match self {
            VitVariant::Vit => "ViTForImageClassification",
            VitVariant::Dinov2 => "Dinov2ForImageClassification",
        }
    }
}

/// `image_size` / `patch_size`: one number for a square, or `[height, width]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Size2 {
    One(i64),
    Two(Vec<i64>),
}

/// `config.json` as written, every field optional (the defaults depend on `model_type`).
#[derive(Debug, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    hidden_size: Option<i64>,
    num_hidden_layers: Option<i64>,
    num_attention_heads: Option<i64>,
    intermediate_size: Option<i64>,
    mlp_ratio: Option<f64>,
    hidden_act: Option<String>,
    layer_norm_eps: Option<f64>,
    image_size: Option<Size2>,
    patch_size: Option<Size2>,
    num_channels: Option<i64>,
    qkv_bias: Option<bool>,
    hidden_dropout_prob: Option<f64>,
    attention_probs_dropout_prob: Option<f64>,
    layerscale_value: Option<f64>,
    drop_path_rate: Option<f64>,
    use_swiglu_ffn: Option<bool>,
    initializer_range: Option<f64>,
}

/// The fields of a ViT or DINOv2 `config.json` that the architecture uses.
///
/// A missing field takes the value of transformers' `ViTConfig` or `Dinov2Config` (they differ:
/// `layer_norm_eps` 1e-12 vs 1e-6, `patch_size` 16 vs 14), so a folder loads here as it loads
/// there. Fields neither model uses (`encoder_stride`, `pooler_*`, `use_mask_token`, backbone
/// settings) are ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct VitConfig {
    /// The architecture (`model_type`, required: `"vit"` or `"dinov2"`).
    pub variant: VitVariant,
    /// Hidden width.
    pub hidden_size: i64,
    /// Encoder layers.
    pub num_hidden_layers: i64,
    /// Attention heads (must divide `hidden_size`).
    pub num_attention_heads: i64,
    /// Width of the MLP: ViT's `intermediate_size` (default 3072); for DINOv2
    /// `int(hidden_size * mlp_ratio)`, as transformers computes it.
    pub intermediate_size: i64,
    /// DINOv2's `mlp_ratio` (default 4); `None` for ViT, which has `intermediate_size`.
    pub mlp_ratio: Option<f64>,
    /// MLP activation (`gelu` by default; `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`,
    /// `relu`, `silu`/`swish`, `tanh` also load).
    pub hidden_act: Activation,
    /// Layer-norm epsilon (ViT 1e-12, DINOv2 1e-6).
    pub layer_norm_eps: f64,
    /// Training image size `[height, width]` (default 224): with `patch_size` it fixes the
    /// grid of position embeddings.
    pub image_size: [i64; 2],
    /// Patch size `[height, width]` (ViT 16, DINOv2 14).
    pub patch_size: [i64; 2],
    /// Input channels (default 3).
    pub num_channels: i64,
    /// Whether the query, key and value projections have biases (default true).
    pub qkv_bias: bool,
    /// Dropout on the embeddings (both) and after attention and MLP (ViT only: DINOv2's
    /// layers have none). Default 0.
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities (default 0).
    pub attention_probs_dropout_prob: f64,
    /// DINOv2's initial layer-scale value (default 1; the checkpoint's `lambda1` are used).
    pub layerscale_value: f64,
    /// DINOv2's stochastic depth rate, the same in every layer as in transformers (default
    /// 0). ViT has no drop path: transformers ignores the field there, and so do we.
    pub drop_path_rate: f64,
    /// DINOv2's SwiGLU feed-forward (the giant model); `true` is refused.
    pub use_swiglu_ffn: bool,
    /// Std of newly initialised weights (the classification head). Default 0.02.
    pub initializer_range: f64,
}

impl VitConfig {
    /// Reads `<folder>/config.json` and checks that this build implements it.
    pub fn from_folder(folder: &Path) -> Result<Self, CheckpointError> {
        let raw: RawConfig = read_config(folder)?;
        Self::from_raw(raw, &folder.join("config.json"))
    }

    fn from_raw(r: RawConfig, path: &Path) -> Result<Self, CheckpointError> {
        let unsupported =
            |field: &str, value: String, message: &str| CheckpointError::Unsupported {
                path: path.to_path_buf(),
                field: field.into(),
                value,
                message: message.into(),
            };
        let variant = match r.model_type.as_deref() {
            Some("vit") => VitVariant::Vit,
            Some("dinov2") => VitVariant::Dinov2,
            other => {
                return Err(unsupported(
                    "model_type",
                    other.map_or("absent".into(), |t| format!("{t:?}")),
                    "only \"vit\" and \"dinov2\" checkpoints load as vision transformers",
                ));
            }
        };
        let dinov2 = variant == VitVariant::Dinov2;
        let size = |field: &str, v: Option<Size2>, default: i64| match v {
            None => Ok([default, default]),
            Some(Size2::One(n)) => Ok([n, n]),
            Some(Size2::Two(v)) => match v[..] {
                [h, w] => Ok([h, w]),
                _ => Err(unsupported(
                    field,
                    format!("{v:?}"),
                    "must be one number or [height, width]",
                )),
            },
        };
        let hidden_size = r.hidden_size.unwrap_or(768);
        let hidden_act = r.hidden_act.unwrap_or_else(|| "gelu".into());
        let activation = serde_json::from_value(serde_json::Value::String(hidden_act.clone()))
            .map_err(|_| {
                unsupported(
                    "hidden_act",
                    format!("{hidden_act:?}"),
                    "supported: gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu, silu, swish, \
                     tanh",
                )
            })?;
        let mlp_ratio = dinov2.then(|| r.mlp_ratio.unwrap_or(4.0));
        let c = Self {
            variant,
            hidden_size,
            num_hidden_layers: r.num_hidden_layers.unwrap_or(12),
            num_attention_heads: r.num_attention_heads.unwrap_or(12),
            // Python's int() truncates toward zero, as `as` does.
            intermediate_size: match mlp_ratio {
                Some(ratio) => (hidden_size as f64 * ratio) as i64,
                None => r.intermediate_size.unwrap_or(3072),
            },
            mlp_ratio,
            hidden_act: activation,
            layer_norm_eps: r
                .layer_norm_eps
                .unwrap_or(if dinov2 { 1e-6 } else { 1e-12 }),
            image_size: size("image_size", r.image_size, 224)?,
            patch_size: size("patch_size", r.patch_size, if dinov2 { 14 } else { 16 })?,
            num_channels: r.num_channels.unwrap_or(3),
            qkv_bias: r.qkv_bias.unwrap_or(true),
            hidden_dropout_prob: r.hidden_dropout_prob.unwrap_or(0.0),
            attention_probs_dropout_prob: r.attention_probs_dropout_prob.unwrap_or(0.0),
            layerscale_value: r.layerscale_value.unwrap_or(1.0),
            drop_path_rate: r.drop_path_rate.unwrap_or(0.0),
            use_swiglu_ffn: r.use_swiglu_ffn.unwrap_or(false),
            initializer_range: r.initializer_range.unwrap_or(0.02),
        };
        c.validate(path)?;
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
        if self.use_swiglu_ffn {
            return unsupported(
                "use_swiglu_ffn",
                "true".into(),
                "the SwiGLU feed-forward (DINOv2 giant) is not implemented; only the GELU MLP is",
            );
        }
        let mlp_field = match self.variant {
            VitVariant::Vit => "intermediate_size",
            VitVariant::Dinov2 => "mlp_ratio",
        };
        let positive = [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            (mlp_field, self.intermediate_size),
            ("num_channels", self.num_channels),
            ("image_size", self.image_size[0].min(self.image_size[1])),
            ("patch_size", self.patch_size[0].min(self.patch_size[1])),
        ];
        for (field, v) in positive {
            if v <= 0 {
                let value = match field {
                    "mlp_ratio" => format!("{:?}", self.mlp_ratio.unwrap_or_default()),
                    "image_size" => format!("{:?}", self.image_size),
                    "patch_size" => format!("{:?}", self.patch_size),
                    _ => v.to_string(),
                };
                return unsupported(field, value, "must be positive");
            }
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return unsupported(
                "num_attention_heads",
                self.num_attention_heads.to_string(),
                &format!("must divide hidden_size ({})", self.hidden_size),
            );
        }
        if self.image_size[0] < self.patch_size[0] || self.image_size[1] < self.patch_size[1] {
            return unsupported(
                "patch_size",
                format!("{:?}", self.patch_size),
                &format!(
                    "must not exceed image_size ({:?}): the grid of position embeddings would be \
                     empty",
                    self.image_size
                ),
            );
        }
        let probabilities = [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
            ("drop_path_rate", self.drop_path_rate),
        ];
        for (field, p) in probabilities {
            if !(0.0..1.0).contains(&p) {
                return unsupported(field, p.to_string(), "must be in [0, 1)");
            }
        }
        let finite_positive = [
            ("layer_norm_eps", self.layer_norm_eps),
            ("initializer_range", self.initializer_range),
        ];
        for (field, v) in finite_positive {
            if !(v.is_finite() && v > 0.0) {
                return unsupported(field, v.to_string(), "must be a positive number");
            }
        }
        Ok(())
    }

    /// The grid of position embeddings, `[rows, columns]` of patches.
    pub fn grid(&self) -> [i64; 2] {
        [
            self.image_size[0] / self.patch_size[0],
            self.image_size[1] / self.patch_size[1],
        ]
    }

    /// Width of one attention head.
    pub fn head_size(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }
}
