//! PEFT adapters onto a base model (`flexlora import`).

use super::ADAPTER_CONFIG;
use super::files::{write_dir_atomic, write_json};
use crate::config::{Config, ScalePolicy, TaskKind};
use crate::models::{Architecture, Classifier, Encoder};
use crate::peft::PeftError;
use crate::train::model::TaskModel;
use anyhow::Context;
use serde_json::json;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

mod base;
mod decoder;
mod fields;
mod modules;
mod read;
mod state;
pub use decoder::import_peft_decoder;
pub use read::read_peft_adapter;

use base::{BaseLayers, fit_to_base, head};
use state::adapter_state;

/// The PEFT adapter types that import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeftType {
    /// `peft_type: LORA`.
    Lora,
    /// `peft_type: ADALORA`.
    Adalora,
}

/// The weights of one adapted module, as PEFT applies them.
#[derive(Debug)]
pub enum PeftModuleWeights {
    /// `ΔW = B A · scaling`, `scaling = α / r` (`α / √r` with `use_rslora`).
    Lora {
        /// `lora_A`, `r × in`.
        a: Tensor,
        /// `lora_B`, `out × r`.
        b: Tensor,
        /// The module's `α` (from `alpha_pattern`, else `lora_alpha`).
        alpha: f64,
        /// PEFT's scale of this module.
        scaling: f64,
    },
    /// `ΔW = B (A ⊙ E) · scaling`, `scaling = α / (ranknum + 1e-5)` (`ranknum + 1e-5` in
    /// float32, `ranknum = init_r` unless the file stores it).
    Adalora {
        /// `lora_A`, `r × in`.
        a: Tensor,
        /// `lora_E` as a vector, `r`.
        e: Tensor,
        /// `lora_B`, `out × r`.
        b: Tensor,
        /// The slot (of `init_r`) of each of the `r` rows: the true entries of the module's
        /// `rank_pattern` mask, or `0..r`.
        slots: Vec<usize>,
        /// PEFT's scale of this module.
        scaling: f64,
    },
}

/// One adapted module of a PEFT adapter.
#[derive(Debug)]
pub struct PeftModule {
    /// The module path relative to the encoder (`encoder.layer.0.attention.self.query`);
    /// after [`import_peft`] checks it against a base model, that encoder's own module path.
    pub path: String,
    /// The module's name in the PEFT-wrapped transformers model
    /// (`bert.encoder.layer.0.attention.self.query` for a BERT sequence classifier,
    /// `dinov2.encoder.layer.0.attention.q_proj` for a DINOv2 image classifier).
    pub hf_name: String,
    /// Its weights.
    pub weights: PeftModuleWeights,
}

impl PeftModule {
    /// The module's rank (rows of `lora_A`).
    pub fn rank(&self) -> usize {
        let a = match &self.weights {
            PeftModuleWeights::Lora { a, .. } | PeftModuleWeights::Adalora { a, .. } => a,
        };
        a.size().first().map_or(0, |&r| r.max(0) as usize)
    }

    /// `(in_features, out_features)` of the adapted layer, from `lora_A` and `lora_B`.
    pub fn features(&self) -> (i64, i64) {
        let (a, b) = match &self.weights {
            PeftModuleWeights::Lora { a, b, .. } | PeftModuleWeights::Adalora { a, b, .. } => {
                (a, b)
            }
        };
        (
            a.size().get(1).copied().unwrap_or(0),
            b.size().first().copied().unwrap_or(0),
        )
    }
}

/// A PEFT adapter folder, read and checked (see [`read_peft_adapter`]).
#[derive(Debug)]
pub struct PeftAdapter {
    /// The folder.
    pub dir: PathBuf,
    /// `LORA` or `ADALORA`.
    pub peft_type: PeftType,
    /// `task_type` (`SEQ_CLS`, `CAUSAL_LM`), if set.
    pub task_type: Option<String>,
    /// `base_model_name_or_path`, if set.
    pub base_model_name_or_path: Option<String>,
    /// Adapted modules, in model order.
    pub modules: Vec<PeftModule>,
    /// AdaLoRA's `init_r` (the slots every module's rows are placed in).
    pub init_r: Option<usize>,
    /// `classifier.weight` and `.bias` from `modules_to_save`.
    pub classifier: Option<(Tensor, Tensor)>,
    /// The pooler's dense `weight` and `bias` from `modules_to_save` (`bert.pooler.dense`,
    /// DeBERTa's `pooler.dense`).
    pub pooler: Option<(Tensor, Tensor)>,
    /// `lora_dropout` (used when training continues).
    pub dropout: f64,
}

/// A PEFT adapter loaded onto its base model: a classifier ([`TaskModel`], from
/// [`import_peft`]) or a decoder ([`LmModel`], from [`import_peft_decoder`]).
#[derive(Debug)]
pub struct ImportedModel<M = TaskModel> {
    /// The run config the model is built from (`method`, `model.path` and
    /// `model.target_modules` set from the adapter; everything else from the template).
    pub config: Config,
    /// The model with the adapter's weights.
    pub model: M,
    /// `LORA` or `ADALORA`.
    pub peft_type: PeftType,
    /// `(module path, rank)` of every adapted module, in model order.
    pub ranks: Vec<(String, usize)>,
}

/// The base model folder: `base` when given, else the adapter's `base_model_name_or_path`
/// when that is a local folder.
fn resolve_base(adapter: &PeftAdapter, base: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(b) = base {
        return Ok(b.to_path_buf());
    }
    match &adapter.base_model_name_or_path {
        Some(name) if Path::new(name).join("config.json").exists() => Ok(PathBuf::from(name)),
        Some(name) => anyhow::bail!(
            "{}: base_model_name_or_path {name:?} is not a local model folder; give the base \
             model with --model",
            adapter.dir.join(ADAPTER_CONFIG).display()
        ),
        None => anyhow::bail!(
            "{}: no base_model_name_or_path; give the base model with --model",
            adapter.dir.join(ADAPTER_CONFIG).display()
        ),
    }
}

/// The base model folder an import of the adapter in `peft_dir` uses: `base` when given, else
/// the adapter's `base_model_name_or_path` when that is a local folder.
pub fn import_base(peft_dir: &Path, base: Option<&Path>) -> anyhow::Result<PathBuf> {
    resolve_base(&read_peft_adapter(peft_dir)?, base)
}

/// What a [`TaskModel`] holding an imported adapter is built from.
struct RunParts {
    config: Config,
    state: Vec<(String, Tensor)>,
    num_labels: usize,
}

/// The run config and the [`TaskModel::state`] tensors that hold `adapter` on the base model
/// `base` (checked against it, and its modules renamed and ordered as the encoder's).
fn run_state(
    adapter: &mut PeftAdapter,
    base: &Path,
    template: &Config,
) -> anyhow::Result<RunParts> {
    let (encoder, weights) = Encoder::from_folder(base, Device::Cpu)?;
    check_task_type(adapter, base, false)?;
    fit_to_base(adapter, &BaseLayers::of_encoder(&encoder), base)?;
    // A classifier on this base, for the shapes of its head (the new head's draws are unused).
    let probe = Classifier::new(encoder, &weights, 1)?;
    let (cw, cb, n) = head(adapter, &probe, &weights, base)?;
    drop(probe);

    let mut config = template.clone();
    config.model.path = base.to_path_buf();
    config.model.target_modules = adapter.modules.iter().map(|m| m.path.clone()).collect();
    config.method.dropout = adapter.dropout;
    config.method.scale = ScalePolicy::InitRank;
    let mut state = adapter_state(adapter, &mut config);
    state.push(("head.classifier.weight".into(), cw));
    state.push(("head.classifier.bias".into(), cb));
    if let Some((w, b)) = &adapter.pooler {
        state.push(("head.pooler.weight".into(), w.shallow_clone()));
        state.push(("head.pooler.bias".into(), b.shallow_clone()));
    }
    config
        .validate("the imported adapter's config")
        .context("building the run config of the imported adapter")?;
    Ok(RunParts {
        config,
        state,
        num_labels: n as usize,
    })
}

fn build_model(
    adapter: PeftAdapter,
    parts: RunParts,
    device: Device,
) -> anyhow::Result<ImportedModel> {
    let RunParts {
        config,
        state,
        num_labels,
    } = parts;
    let task = if num_labels == 1 {
        TaskKind::Regression
    } else {
        TaskKind::Classification
    };
    let mut model = TaskModel::build(&config, num_labels, task, device)?;
    let state: HashMap<String, Tensor> = state.into_iter().collect();
    model
        .load_state(&state)
        .with_context(|| format!("loading the adapter in {}", adapter.dir.display()))?;
    Ok(ImportedModel::new(config, model, &adapter))
}

/// Loads the PEFT adapter in `peft_dir` onto the base model folder `base` (default: the
/// adapter's `base_model_name_or_path` when it is a local folder) as a [`TaskModel`] on
/// `device`, ready for evaluation, prediction or further training.
///
/// The run config comes from `template` with `model.path`, `model.target_modules` (the
/// adapted paths) and `[method]` set from the adapter:
/// - a `LORA` adapter whose modules share one rank and one scale becomes a `lora` model with
///   `lora_A` and `lora_B` unchanged (`α` such that `α / r` is PEFT's scale);
/// - any other `LORA` adapter (per-module `rank_pattern` / `alpha_pattern`) becomes SVD
///   adapters (`flexlora`, `r_init = r_max` = the largest rank, `s = 1`): `P = lora_B`,
///   `Q = lora_A`, `λ` = the module's PEFT scale on its first `r` slots;
/// - an `ADALORA` adapter becomes SVD adapters with `r_max = r_init = init_r`,
///   `P = lora_B`, `λ = lora_E`, `Q = lora_A` in the slots of its `rank_pattern` mask, and
///   `s = α / (init_r + 1e-5)` as PEFT (method `flexlora` until AdaLoRA training exists).
///
/// The head comes from `modules_to_save` (or, for the classifier, the base folder). Errors
/// name the module, tensor or config field at fault. Draws from LibTorch's global generator
/// (the model is built, then overwritten).
pub fn import_peft(
    peft_dir: &Path,
    base: Option<&Path>,
    template: &Config,
    device: Device,
) -> anyhow::Result<ImportedModel> {
    let mut adapter = read_peft_adapter(peft_dir)?;
    let base = resolve_base(&adapter, base)?;
    if Architecture::of_folder(&base)?.is_decoder() {
        anyhow::bail!(
            "{} is a decoder: import its adapters with import_peft_decoder",
            base.display()
        );
    }
    let parts = run_state(&mut adapter, &base, template)?;
    build_model(adapter, parts, device)
}

/// What [`import_to_run`] wrote.
#[derive(Debug)]
pub struct ImportSummary {
    /// The run's config.
    pub config: Config,
    /// `LORA` or `ADALORA`.
    pub peft_type: PeftType,
    /// `(module path, rank)` of every adapted module, in model order.
    pub ranks: Vec<(String, usize)>,
}

impl<M> ImportedModel<M> {
    /// `model` holding `adapter`, built from `config`.
    fn new(config: Config, model: M, adapter: &PeftAdapter) -> Self {
        let ranks = adapter
            .modules
            .iter()
            .map(|m| (m.path.clone(), m.rank()))
            .collect();
        Self {
            config,
            model,
            peft_type: adapter.peft_type,
            ranks,
        }
    }

    fn summary(&self) -> ImportSummary {
        ImportSummary {
            config: self.config.clone(),
            peft_type: self.peft_type,
            ranks: self.ranks.clone(),
        }
    }
}

/// Refuses an adapter whose `task_type` is for the other kind of model than `base`
/// (`CAUSAL_LM` on a classifier, `SEQ_CLS` on a decoder).
fn check_task_type(adapter: &PeftAdapter, base: &Path, decoder: bool) -> Result<(), PeftError> {
    let fits = match adapter.task_type.as_deref() {
        None => true,
        Some("CAUSAL_LM") => decoder,
        Some(_) => !decoder,
    };
    if fits {
        return Ok(());
    }
    Err(PeftError::BaseMismatch {
        adapter: adapter.dir.clone(),
        base: base.to_path_buf(),
        message: format!(
            "task_type {:?} is for a {}, but the base model is a {}",
            adapter.task_type.as_deref().unwrap_or_default(),
            if decoder {
                "classifier"
            } else {
                "causal language model"
            },
            if decoder {
                "decoder (LlamaForCausalLM)"
            } else {
                "classifier's encoder"
            },
        ),
    })
}

/// Loads the PEFT adapter in `peft_dir` onto its base model ([`import_peft`] for classifiers,
/// [`import_peft_decoder`] for decoders) and writes a run directory at `output` that the
/// commands reading runs accept (`eval` and `predict` for a classifier, `lm-eval --run` and
/// `generate --adapter` for a decoder, `train --init-from`, `export`, `merge`):
/// `config.toml`, `checkpoints/best` and `checkpoints/final` (the same state), and
/// `import.json` (where it came from).
///
/// The template's `[data]` must fit the adapter: as many classes as the adapter's classifier
/// has outputs, or `format = "commonsense"` for a decoder. The folder is written whole; an
/// existing non-empty `output` is replaced only with `overwrite`.
pub fn import_to_run(
    peft_dir: &Path,
    base: Option<&Path>,
    template: &Config,
    output: &Path,
    overwrite: bool,
) -> anyhow::Result<ImportSummary> {
    let mut adapter = read_peft_adapter(peft_dir)?;
    let base = resolve_base(&adapter, base)?;
    let source = adapter.dir.clone();
    let (summary, state) = if Architecture::of_folder(&base)?.is_decoder() {
        let imported = decoder::import(adapter, &base, template, Device::Cpu)?;
        (imported.summary(), imported.model.state())
    } else {
        let parts = run_state(&mut adapter, &base, template)?;
        check_classes(&parts)?;
        let imported = build_model(adapter, parts, Device::Cpu)?;
        (imported.summary(), imported.model.state())
    };
    let provenance = json!({
        "peft_adapter": std::fs::canonicalize(&source).unwrap_or(source).display().to_string(),
        "peft_type": match summary.peft_type { PeftType::Lora => "LORA", PeftType::Adalora => "ADALORA" },
        "base_model": base.display().to_string(),
        "method": summary.config.method.name,
        "ranks": summary.ranks.iter().map(|(p, r)| json!({"module": p, "rank": r})).collect::<Vec<_>>(),
    });
    write_run(output, overwrite, &summary.config, &state, &provenance)?;
    Ok(summary)
}

/// Refuses a template whose data has another number of classes (or task) than the adapter's
/// classifier.
fn check_classes(parts: &RunParts) -> anyhow::Result<()> {
    let (config, n) = (&parts.config, parts.num_labels);
    let splits = crate::data::load_splits(&config.data)?;
    let task = if n == 1 {
        TaskKind::Regression
    } else {
        TaskKind::Classification
    };
    if splits.num_labels() != n || splits.task != task {
        anyhow::bail!(
            "the adapter's classifier has {n} output(s), but the data {} is a {:?} task with \
             {} output(s) (labels {:?}); choose the matching data with --config / --set",
            config.data.location().display(),
            splits.task,
            splits.num_labels(),
            splits.label_names
        );
    }
    Ok(())
}

/// Writes the run directory of an imported adapter (see [`import_to_run`]).
fn write_run(
    output: &Path,
    overwrite: bool,
    config: &Config,
    state: &[(String, Tensor)],
    provenance: &serde_json::Value,
) -> anyhow::Result<()> {
    let toml_text = toml::to_string(config).context("serialising the config")?;
    write_dir_atomic(
        output,
        "a run (pass --overwrite to replace it)",
        |_| overwrite,
        |tmp| {
            crate::io::write_atomic(&tmp.join("config.toml"), |w| {
                w.write_all(toml_text.as_bytes())
            })?;
            for name in ["best", "final"] {
                crate::train::checkpoint::write_checkpoint(
                    &tmp.join("checkpoints").join(name),
                    |d| {
                        Ok(Tensor::write_safetensors(
                            state,
                            d.join("model.safetensors"),
                        )?)
                    },
                )?;
            }
            write_json(&tmp.join("import.json"), provenance)
        },
    )
}
