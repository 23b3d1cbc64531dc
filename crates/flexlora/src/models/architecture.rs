//! The one place that chooses a checkpoint's architecture: `config.json`'s `model_type`, read
//! once into [`Architecture`]; every command that loads a model matches on it.

use super::hf::{CheckpointError, read_config};
use std::path::Path;

/// The architectures flexlora loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `model_type = "bert"` (also when the field is absent, as in transformers' BertConfig).
    Bert,
    /// `model_type = "deberta-v2"` (DeBERTa-v2 and v3).
    DebertaV2,
    /// `model_type = "vit"`.
    Vit,
    /// `model_type = "dinov2"`.
    Dinov2,
    /// `model_type = "llama"` (LLaMA-family decoders).
    Llama,
}

impl Architecture {
    /// Every architecture, in the order errors list them.
    pub const ALL: [Architecture; 5] = [
        Architecture::Bert,
        Architecture::DebertaV2,
        Architecture::Vit,
        Architecture::Dinov2,
        Architecture::Llama,
    ];

    /// The `model_type` that names it.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Bert => "bert",
            Architecture::DebertaV2 => "deberta-v2",
            Architecture::Vit => "vit",
            Architecture::Dinov2 => "dinov2",
            Architecture::Llama => "llama",
        }
    }

    /// The architecture of the checkpoint folder `folder`; a `model_type` none of them has is
    /// an error naming the file, the value and the supported ones.
    pub fn of_folder(folder: &Path) -> Result<Self, CheckpointError> {
        #[derive(serde::Deserialize)]
        struct ModelType {
            #[serde(default)]
            model_type: Option<String>,
        }
        let t: ModelType = read_config(folder)?;
        let Some(name) = t.model_type else {
            return Ok(Architecture::Bert);
        };
        Self::ALL
            .into_iter()
            .find(|a| a.model_type() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|a| a.model_type()).collect();
                CheckpointError::Unsupported {
                    path: folder.join("config.json"),
                    field: "model_type".into(),
                    value: format!("{name:?}"),
                    message: format!("the supported architectures are {known:?}"),
                }
            })
    }

    /// The `model.target_modules` of a config that names none: every linear layer of every
    /// block (PEFT's `"all-linear"`), as the FlexLoRA paper adapts them and as the configs in
    /// configs/ do, since rank can only move between matrices that have adapters; for LLaMA the
    /// paper's five projections (attention q, k, v and the MLP's up and down). Names are the
    /// module names of transformers' current classes (ViT and DINOv2 say `q_proj`, `fc1`).
    /// PEFT's own default, the query and value projections only, would give the main job's
    /// FlexLoRA 12 matrices to move rank between instead of 36.
    pub fn default_target_modules(self) -> &'static [&'static str] {
        match self {
            Architecture::Bert => &[
                "query",
                "key",
                "value",
                "attention.output.dense",
                "intermediate.dense",
                "output.dense",
            ],
            Architecture::DebertaV2 => &[
                "query_proj",
                "key_proj",
                "value_proj",
                "attention.output.dense",
                "intermediate.dense",
                "output.dense",
            ],
            Architecture::Vit | Architecture::Dinov2 => {
                &["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"]
            }
            Architecture::Llama => &["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
        }
    }

    /// Whether its inputs are images (ViT, DINOv2).
    pub fn is_vision(self) -> bool {
        matches!(self, Architecture::Vit | Architecture::Dinov2)
    }

    /// Whether it is a causal decoder (trained on the commonsense suite, used by `generate`).
    pub fn is_decoder(self) -> bool {
        self == Architecture::Llama
    }
}
