//! Hugging Face PEFT interoperability: export, import and merge (docs/method.md §7).
//!
//! A PEFT adapter folder holds `adapter_config.json` and `adapter_model.safetensors`. This
//! module writes and reads the two kinds that express our adapters, as PEFT 0.21.2 does:
//!
//! | PEFT | tensors (under `base_model.model.<prefix>.<module path>`; `<prefix>` is `bert`, `deberta`, `vit` or `dinov2` for classifiers, `model` for decoders) | PEFT's update |
//! | --- | --- | --- |
//! | `LORA` | `lora_A.weight` `[r, in]`, `lora_B.weight` `[out, r]` | `B A · α / r` (`α / √r` with `use_rslora`), `r` and `α` per module from `rank_pattern` / `alpha_pattern` |
//! | `ADALORA` | `lora_A` `[r, in]`, `lora_E` `[r, 1]`, `lora_B` `[out, r]` | `B (A ⊙ E) · α / (ranknum + 1e-5)`, `ranknum = init_r` for every module |
//!
//! **Export** ([`export_run`]): an SVD adapter (`flexlora`, and `adalora` once it trains)
//! exports as `LORA` with `lora_A = Q`, `lora_B = P diag(λ) s` over the active slots and
//! `rank_pattern = alpha_pattern = ` each module's final rank, so PEFT's `α / r` is exactly 1
//! (ranks above the config's `r` load: docs/method.md §7). A `lora` run exports its `A`, `B` and
//! `α` unchanged. `--format peft-adalora` writes an SVD adapter as `ADALORA` faithfully:
//! `init_r` is the slot count `r_max`, each module's `rank_pattern` is its mask of kept slots
//! (PEFT resizes every module to its own rank at load and keeps `ranknum = init_r`), and
//! `lora_alpha = s · (init_r + 1e-5)` makes PEFT's scale ours. The trained classifier (and a
//! newly trained pooler) go in `modules_to_save`, saved as `base_model.model.classifier.*` and
//! `base_model.model.bert.pooler.dense.*`.
//!
//! **Import** ([`import_peft`], [`import_peft_decoder`], [`import_to_run`]): a PEFT `LORA` or
//! `ADALORA` folder onto a base model folder of any architecture, checked against it (the
//! modules must be under that architecture's prefix and exist with matching shapes; the
//! `task_type` must fit: `CAUSAL_LM` on decoders only), as a
//! [`TaskModel`](crate::train::model::TaskModel) or an [`LmModel`](crate::lm::LmModel) and its
//! run config. Every
//! `adapter_config.json` field is either used, known not to affect the adapter's function, or
//! rejected by name when it describes something not implemented (DoRA, bias training,
//! initialisations that rewrite the base weights, ...).
//!
//! **Merge** ([`merge_run`]): folds the adapter into the base weights and writes a complete
//! model folder (`BertForSequenceClassification`, ..., `LlamaForCausalLM`) that transformers
//! loads without PEFT.

mod export;
mod files;
mod gguf_lora;
mod import;
mod merge;

pub use export::{PeftFormat, export_run, export_state};
pub use gguf_lora::export_run_gguf;
pub use import::{
    ImportSummary, ImportedModel, PeftAdapter, PeftModule, PeftModuleWeights, PeftType,
    import_base, import_peft, import_peft_decoder, import_to_run, read_peft_adapter,
};
pub use merge::merge_run;

use crate::config::Config;
use anyhow::Context;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::Tensor;
use thiserror::Error;

/// The config file of a PEFT adapter folder.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The weights file of a PEFT adapter folder.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The prefix of every key in a PEFT weights file.
pub const KEY_PREFIX: &str = "base_model.model.";
/// The `1e-5` PEFT's AdaLoRA adds to `ranknum` before dividing by it.
pub const ADALORA_RANKNUM_EPS: f64 = 1e-5;

/// A PEFT adapter or a run that cannot be exported, imported or merged as asked.
#[derive(Debug, Error)]
pub enum PeftError {
    /// A field of `adapter_config.json` is missing, malformed, or describes something this
    /// build does not implement.
    #[error("{path}: `{field}` {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// The field.
        field: String,
        /// What is wrong, and what is supported.
        message: String,
    },
    /// `peft_type` is not one we can import.
    #[error(
        "{path}: `peft_type` = {peft_type:?} is not supported: only \"LORA\" and \"ADALORA\" adapters can be imported"
    )]
    UnsupportedType {
        /// The config file.
        path: PathBuf,
        /// The type found.
        peft_type: String,
    },
    /// A tensor of `adapter_model.safetensors` is unexpected, missing or malformed.
    #[error("{path}: tensor `{name}`: {message}")]
    Tensor {
        /// The weights file.
        path: PathBuf,
        /// The tensor (or the one expected).
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The adapter was not made for this base model.
    #[error("the adapter in {adapter} does not fit the base model {base}: {message}")]
    BaseMismatch {
        /// The adapter folder.
        adapter: PathBuf,
        /// The base model folder.
        base: PathBuf,
        /// The module or tensor at fault, with both shapes.
        message: String,
    },
    /// A run cannot be exported or merged as asked.
    #[error("{run}: {message}")]
    Run {
        /// The run directory.
        run: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// A finished run's resolved config and trained state (the tensors of
/// [`TaskModel::state`](crate::train::model::TaskModel::state)).
#[derive(Debug)]
pub struct RunState {
    /// The run's `config.toml`.
    pub config: Config,
    /// The checkpoint folder the state was read from (`checkpoints/best`, else `final`).
    pub checkpoint: PathBuf,
    /// The trained tensors by name.
    pub tensors: HashMap<String, Tensor>,
}

impl RunState {
    /// Reads the run's config and the checkpoint `flexlora eval` uses: `checkpoints/best` (the
    /// best validation epoch, whose test metric the run reports) when present, else
    /// `checkpoints/final`; the checkpoint is verified against its manifest first.
    pub fn load(run_dir: &Path) -> anyhow::Result<Self> {
        let config = crate::train::load_run_config(run_dir)?;
        let best = run_dir.join("checkpoints/best");
        let checkpoint = if best.exists() {
            best
        } else {
            run_dir.join("checkpoints/final")
        };
        if !checkpoint.exists() {
            return Err(PeftError::Run {
                run: run_dir.to_path_buf(),
                message: "no checkpoints/best or checkpoints/final: the run has not finished an \
                          epoch"
                    .into(),
            }
            .into());
        }
        crate::train::checkpoint::verify_checkpoint(&checkpoint)?;
        let file = checkpoint.join("model.safetensors");
        let tensors = Tensor::read_safetensors(&file)
            .with_context(|| format!("reading {}", file.display()))?
            .into_iter()
            .collect();
        Ok(Self {
            config,
            checkpoint,
            tensors,
        })
    }
}

/// Sort key of a module path in model order: layer number, then the module's place in
/// [`LAYER_MODULES`](crate::models::bert::LAYER_MODULES); other paths after, by name.
pub(crate) fn model_order(path: &str) -> (usize, usize, String) {
    let parsed = path.strip_prefix("encoder.layer.").and_then(|rest| {
        let (layer, module) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let m = crate::models::bert::LAYER_MODULES
            .iter()
            .position(|&x| x == module)?;
        Some((layer, m))
    });
    match parsed {
        Some((l, m)) => (l, m, String::new()),
        None => (usize::MAX, usize::MAX, path.to_string()),
    }
}
