//! PEFT adapters onto a base model (`flexlora import`).

use super::files::{write_dir_atomic, write_json};
use super::{ADAPTER_CONFIG, PeftError};
use crate::config::{Config, MethodName, ScalePolicy, TaskKind};
use crate::models::BertModel;
use crate::train::model::TaskModel;
use anyhow::Context;
use serde_json::json;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

mod read;
pub use read::read_peft_adapter;

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
    /// The module path in [`BertModel`] terms (`encoder.layer.0.attention.self.query`).
    pub path: String,
    /// The module's name in the PEFT-wrapped transformers model
    /// (`bert.encoder.layer.0.attention.self.query` for a sequence classifier).
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
    /// `base_model_name_or_path`, if set.
    pub base_model_name_or_path: Option<String>,
    /// Adapted modules, in model order.
    pub modules: Vec<PeftModule>,
    /// AdaLoRA's `init_r` (the slots every module's rows are placed in).
    pub init_r: Option<usize>,
    /// `classifier.weight` and `.bias` from `modules_to_save`.
    pub classifier: Option<(Tensor, Tensor)>,
    /// `bert.pooler.dense.weight` and `.bias` from `modules_to_save`.
    pub pooler: Option<(Tensor, Tensor)>,
    /// `lora_dropout` (used when training continues).
    pub dropout: f64,
}

/// A PEFT adapter loaded onto its base model.
#[derive(Debug)]
pub struct ImportedModel {
    /// The run config the model is built from (`method`, `model.path` and
    /// `model.target_modules` set from the adapter; everything else from the template).
    pub config: Config,
    /// The classifier with the adapter's weights.
    pub model: TaskModel,
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

/// The shape of a tensor in a safetensors file, if present.
fn tensor_shape(file: &Path, name: &str) -> anyhow::Result<Option<Vec<i64>>> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: not a valid safetensors file", file.display()))?;
    Ok(st
        .tensor(name)
        .ok()
        .map(|v| v.shape().iter().map(|&d| d as i64).collect()))
}

/// What a [`TaskModel`] holding an imported adapter is built from.
struct RunParts {
    config: Config,
    state: Vec<(String, Tensor)>,
    num_labels: usize,
}

/// The run config and the [`TaskModel::state`] tensors that hold `adapter` on the base model
/// `base` (checked against it).
fn run_state(adapter: &PeftAdapter, base: &Path, template: &Config) -> anyhow::Result<RunParts> {
    let mismatch = |message: String| PeftError::BaseMismatch {
        adapter: adapter.dir.clone(),
        base: base.to_path_buf(),
        message,
    };
    let (bert, weights) = BertModel::from_folder(base, Device::Cpu)?;
    let paths = bert.linear_paths();
    let features: HashMap<&str, (i64, i64)> = paths
        .iter()
        .map(String::as_str)
        .zip(bert.linears().iter().map(|l| l.features()))
        .collect();
    for m in &adapter.modules {
        let Some(&(in_f, out_f)) = features.get(m.path.as_str()) else {
            let examples: Vec<&str> = paths.iter().take(6).map(String::as_str).collect();
            return Err(mismatch(format!(
                "module `{}` is not an adaptable linear layer of the base model ({} layers; its \
                 modules look like {})",
                m.hf_name,
                bert.layers.len(),
                examples.join(", ")
            ))
            .into());
        };
        let (a_in, b_out) = m.features();
        if (a_in, b_out) != (in_f, out_f) {
            return Err(mismatch(format!(
                "module `{}`: lora_A {:?} and lora_B {:?} are for a {a_in} -> {b_out} layer, but \
                 the base layer is {in_f} -> {out_f} (in -> out)",
                m.hf_name,
                [m.rank() as i64, a_in],
                [b_out, m.rank() as i64],
            ))
            .into());
        }
    }
    let h = bert.config.hidden_size;
    let base_pooler = weights.contains("pooler.dense.weight");
    let (cw, cb) = match &adapter.classifier {
        Some((w, b)) => (w.shallow_clone(), b.shallow_clone()),
        None if weights.contains("classifier.weight") => {
            let shape = tensor_shape(weights.path(), "classifier.weight")?
                .or(tensor_shape(weights.path(), "bert.classifier.weight")?)
                .unwrap_or_default();
            let n = shape.first().copied().unwrap_or(0);
            (
                weights.tensor("classifier.weight", &[n, h], Kind::Float, Device::Cpu)?,
                weights.tensor("classifier.bias", &[n], Kind::Float, Device::Cpu)?,
            )
        }
        None => {
            return Err(mismatch(
                "the adapter has no trained classifier (modules_to_save) and the base model has \
                 none: there is no head to evaluate with"
                    .into(),
            )
            .into());
        }
    };
    let n = cw.size().first().copied().unwrap_or(0);
    if cw.size() != [n, h] || cb.size() != [n] || n < 1 {
        return Err(mismatch(format!(
            "the classifier is {:?} with bias {:?}; the base model's hidden size is {h}",
            cw.size(),
            cb.size()
        ))
        .into());
    }
    match (&adapter.pooler, base_pooler) {
        (Some(_), true) => {
            return Err(mismatch(
                "the adapter trained the pooler (modules_to_save), but the base model has its \
                 own, which flexlora keeps frozen; a trained pooler over a pretrained one is not \
                 supported"
                    .into(),
            )
            .into());
        }
        (None, false) => {
            return Err(mismatch(
                "the base model has no pooler and the adapter does not carry one \
                 (modules_to_save): the classifier's input would be random"
                    .into(),
            )
            .into());
        }
        (Some((w, b)), false) if w.size() != [h, h] || b.size() != [h] => {
            return Err(mismatch(format!(
                "the pooler is {:?} with bias {:?}; the base model's hidden size is {h}",
                w.size(),
                b.size()
            ))
            .into());
        }
        _ => {}
    }
    drop(bert);

    let mut config = template.clone();
    config.model.path = base.to_path_buf();
    config.model.target_modules = adapter.modules.iter().map(|m| m.path.clone()).collect();
    config.method.dropout = adapter.dropout;
    config.method.scale = ScalePolicy::InitRank;
    let mut state: Vec<(String, Tensor)> = Vec::new();
    let first_rank = adapter.modules.first().map(PeftModule::rank).unwrap_or(0);
    // One rank and one scale over all LoRA modules: `(α, scaling)` of the first.
    let uniform_lora = match adapter.modules.first().map(|m| &m.weights) {
        Some(PeftModuleWeights::Lora { alpha, scaling, .. }) => {
            let same = adapter.modules.iter().all(|m| {
                m.rank() == first_rank
                    && matches!(&m.weights, PeftModuleWeights::Lora { scaling: s, .. } if s == scaling)
            });
            same.then_some((*alpha, *scaling))
        }
        _ => None,
    };
    if let Some((alpha, scaling)) = uniform_lora {
        // A `lora` run, A and B unchanged.
        config.method.name = MethodName::Lora;
        config.method.r_init = first_rank;
        config.method.r_max = config.method.r_max.max(first_rank);
        // α / r reproduces PEFT's scale exactly unless use_rslora (then α / √r).
        config.method.alpha = if alpha / first_rank as f64 == scaling {
            alpha
        } else {
            scaling * first_rank as f64
        };
        for m in &adapter.modules {
            if let PeftModuleWeights::Lora { a, b, .. } = &m.weights {
                state.push((format!("adapters.{}.lora_A", m.path), a.shallow_clone()));
                state.push((format!("adapters.{}.lora_B", m.path), b.shallow_clone()));
            }
        }
    } else {
        // SVD form (method flexlora): P = lora_B, Q = lora_A in their slots, λ = lora_E
        // (AdaLoRA) or PEFT's scale (LoRA, so every module keeps its own rank and scale).
        let (slots_total, s) = match adapter.init_r {
            Some(init_r) => {
                let s0 = match &adapter.modules[0].weights {
                    PeftModuleWeights::Adalora { scaling, .. } => *scaling,
                    PeftModuleWeights::Lora { .. } => 1.0,
                };
                (init_r, s0)
            }
            None => {
                let r_max = adapter
                    .modules
                    .iter()
                    .map(PeftModule::rank)
                    .max()
                    .unwrap_or(1);
                (r_max, 1.0)
            }
        };
        let slots_total = slots_total.max(1);
        config.method.name = MethodName::Flexlora;
        config.method.r_init = slots_total;
        config.method.r_max = slots_total;
        config.method.alpha = s * slots_total as f64;
        // The scale the model will use: α / r_init (one rounding away from `s`).
        let s_model = config.method.alpha / slots_total as f64;
        let opts = (Kind::Float, Device::Cpu);
        for m in &adapter.modules {
            let (in_f, out_f) = m.features();
            let (a, b, lam, slots) = match &m.weights {
                PeftModuleWeights::Lora { a, b, scaling, .. } => {
                    let r = m.rank() as i64;
                    let lam = Tensor::full([r], *scaling / s_model, opts);
                    (a, b, lam, (0..m.rank()).collect::<Vec<_>>())
                }
                PeftModuleWeights::Adalora {
                    a,
                    e,
                    b,
                    slots,
                    scaling,
                } => {
                    let ratio = *scaling / s;
                    let lam = if ratio == 1.0 {
                        e.shallow_clone()
                    } else {
                        (e.to_kind(Kind::Double) * ratio).to_kind(Kind::Float)
                    };
                    (a, b, lam, slots.clone())
                }
            };
            let idx: Vec<i64> = slots.iter().map(|&i| i as i64).collect();
            let idx = Tensor::from_slice(&idx);
            let n = slots_total as i64;
            let p = Tensor::zeros([out_f, n], opts).index_copy(1, &idx, b);
            let q = Tensor::zeros([n, in_f], opts).index_copy(0, &idx, a);
            let lambda = Tensor::zeros([n], opts).index_copy(0, &idx, &lam);
            let mut active = vec![0f32; slots_total];
            for &i in &slots {
                active[i] = 1.0;
            }
            state.push((format!("adapters.{}.P", m.path), p));
            state.push((format!("adapters.{}.lambda", m.path), lambda));
            state.push((format!("adapters.{}.Q", m.path), q));
            state.push((
                format!("adapters.{}.active", m.path),
                Tensor::from_slice(&active),
            ));
        }
    }
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
    let ranks = adapter
        .modules
        .iter()
        .map(|m| (m.path.clone(), m.rank()))
        .collect();
    Ok(ImportedModel {
        config,
        model,
        peft_type: adapter.peft_type,
        ranks,
    })
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
    let adapter = read_peft_adapter(peft_dir)?;
    let base = resolve_base(&adapter, base)?;
    let parts = run_state(&adapter, &base, template)?;
    build_model(adapter, parts, device)
}

/// [`import_peft`], then writes a run directory at `output` that `flexlora eval` and
/// `flexlora predict` accept: `config.toml` (the template's `[data]` must have as many classes
/// as the adapter's classifier has outputs), `checkpoints/best` and `checkpoints/final` (the
/// same state), and `import.json` (where it came from). The folder is written whole; an
/// existing non-empty `output` is replaced only with `overwrite`.
pub fn import_to_run(
    peft_dir: &Path,
    base: Option<&Path>,
    template: &Config,
    output: &Path,
    overwrite: bool,
) -> anyhow::Result<ImportedModel> {
    let adapter = read_peft_adapter(peft_dir)?;
    let base = resolve_base(&adapter, base)?;
    let parts = run_state(&adapter, &base, template)?;
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
    let peft_type = adapter.peft_type;
    let source = adapter.dir.clone();
    let imported = build_model(adapter, parts, Device::Cpu)?;
    let toml_text = toml::to_string(&imported.config).context("serialising the config")?;
    let provenance = json!({
        "peft_adapter": std::fs::canonicalize(&source).unwrap_or(source).display().to_string(),
        "peft_type": match peft_type { PeftType::Lora => "LORA", PeftType::Adalora => "ADALORA" },
        "base_model": base.display().to_string(),
        "method": imported.config.method.name,
        "ranks": imported.ranks.iter().map(|(p, r)| json!({"module": p, "rank": r})).collect::<Vec<_>>(),
    });
    let state = imported.model.state();
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
                            &state,
                            d.join("model.safetensors"),
                        )?)
                    },
                )?;
            }
            write_json(&tmp.join("import.json"), &provenance)
        },
    )?;
    Ok(imported)
}
