//! A run's adapter in PEFT's format (`flexlora export`).

use super::files::{write_dir_atomic, write_json};
use super::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, KEY_PREFIX, PeftError, RunState, model_order};
use crate::adapter::{LoraAdapter, SvdAdapter, SvdAdapterConfig};
use crate::config::Config;
use crate::train::model::SVD_INIT_STD;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{Kind, Tensor};

/// The adapter format to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PeftFormat {
    /// `peft_type: LORA` with per-module `rank_pattern` / `alpha_pattern` (any run with
    /// adapters).
    #[value(name = "peft-lora")]
    Lora,
    /// `peft_type: ADALORA` (runs with SVD adapters: `flexlora`, `adalora`).
    #[value(name = "peft-adalora")]
    Adalora,
    /// A llama.cpp LoRA adapter (GGUF; decoder runs only): see [`super::gguf_lora`].
    #[value(name = "gguf-lora")]
    GgufLora,
}

impl PeftFormat {
    /// The format a finished run of `method` writes into its `adapter/` folder: PEFT's LoRA
    /// for FlexLoRA and LoRA runs, AdaLoRA's for AdaLoRA; none for `full` and `linear_probe`,
    /// which have no adapter.
    pub fn of_method(method: crate::config::MethodName) -> Option<Self> {
        use crate::config::MethodName;
        match method {
            MethodName::Flexlora | MethodName::Lora => Some(PeftFormat::Lora),
            MethodName::Adalora => Some(PeftFormat::Adalora),
            MethodName::Full | MethodName::LinearProbe => None,
        }
    }
}

/// One adapted module of a run's state.
enum RunModule {
    Svd {
        p: Tensor,
        lambda: Tensor,
        q: Tensor,
        active: Vec<bool>,
        scale: f64,
    },
    Lora {
        a: Tensor,
        b: Tensor,
        alpha: f64,
    },
}

impl RunModule {
    /// An SVD adapter as a LoRA pair over its active slots with the whole scale in `B`:
    /// `A = Q_a` (`[r, in]`), `B = P_a diag(s · λ_a)` (`[out, r]`, the product in float64);
    /// `None` at rank 0 and for LoRA modules.
    fn svd_pair(&self) -> Option<(Tensor, Tensor)> {
        let RunModule::Svd {
            p,
            lambda,
            q,
            active,
            scale,
        } = self
        else {
            return None;
        };
        let slots = active_slots(active);
        if slots.is_empty() {
            return None;
        }
        let idx = slot_index(&slots);
        let l = lambda.index_select(0, &idx).to_kind(Kind::Double) * *scale;
        let b =
            (p.index_select(1, &idx).to_kind(Kind::Double) * l.unsqueeze(0)).to_kind(Kind::Float);
        Some((q.index_select(0, &idx), b))
    }
}

/// The adapters and trained head of a run's state, modules in model order.
pub(super) struct RunAdapters {
    modules: Vec<(String, RunModule)>,
    /// The classifier's weight and bias (none for a decoder, whose head is the frozen
    /// language-model head).
    classifier: Option<(Tensor, Tensor)>,
    pooler: Option<(Tensor, Tensor)>,
    /// The base architecture's names (`bert.` or `deberta.` module paths).
    names: crate::models::HfNames,
}

fn run_error(message: String) -> PeftError {
    PeftError::Run {
        run: "the run's state".into(),
        message,
    }
}

fn take<'a>(
    fields: &'a HashMap<&str, &Tensor>,
    path: &str,
    name: &str,
) -> Result<&'a Tensor, PeftError> {
    fields
        .get(name)
        .copied()
        .ok_or_else(|| run_error(format!("tensor `adapters.{path}.{name}` is missing")))
}

/// A module path and its state tensors by field name (`P`, `lambda`, ..., `lora_A`, ...).
type ModuleFields<'a> = (String, HashMap<&'a str, &'a Tensor>);

pub(super) fn run_adapters(
    config: &Config,
    tensors: &HashMap<String, Tensor>,
) -> Result<RunAdapters, PeftError> {
    let mut grouped: BTreeMap<(usize, usize, String), ModuleFields> = BTreeMap::new();
    for (name, t) in tensors {
        let Some(rest) = name.strip_prefix("adapters.") else {
            continue;
        };
        let Some((path, field)) = rest.rsplit_once('.') else {
            return Err(run_error(format!("unexpected tensor name `{name}`")));
        };
        grouped
            .entry(model_order(path))
            .or_insert_with(|| (path.to_string(), HashMap::new()))
            .1
            .insert(field, t);
    }
    let m = &config.method;
    let mut modules = Vec::with_capacity(grouped.len());
    for (_, (path, fields)) in grouped {
        let module = if fields.contains_key("P") {
            let p = take(&fields, &path, "P")?;
            let lambda = take(&fields, &path, "lambda")?;
            let q = take(&fields, &path, "Q")?;
            let active_t = take(&fields, &path, "active")?;
            let active: Vec<bool> = Vec::<f32>::try_from(&active_t.to_kind(Kind::Float))
                .map_err(|e| run_error(format!("`adapters.{path}.active`: {e}")))?
                .into_iter()
                .map(|x| x > 0.5)
                .collect();
            let svd = SvdAdapterConfig {
                r_init: m.r_init,
                r_max: p.size().get(1).copied().unwrap_or(0).max(0) as usize,
                alpha: m.alpha,
                dropout: m.dropout,
                // AdaLoRA runs train with PEFT's own scale (the trainer sets it; configs cannot).
                scale: if m.name == crate::config::MethodName::Adalora {
                    crate::config::ScalePolicy::PeftAdalora
                } else {
                    m.scale
                },
                init_std: SVD_INIT_STD,
            };
            let adapter = SvdAdapter::from_parts(
                p.detach(),
                lambda.detach(),
                q.detach(),
                active.clone(),
                svd,
            )
            .map_err(|e| run_error(format!("adapters.{path}: {e}")))?;
            RunModule::Svd {
                p: p.detach().to_kind(Kind::Float),
                lambda: lambda.detach().to_kind(Kind::Float),
                q: q.detach().to_kind(Kind::Float),
                active,
                scale: adapter.scale(),
            }
        } else if fields.contains_key("lora_A") {
            let a = take(&fields, &path, "lora_A")?;
            let b = take(&fields, &path, "lora_B")?;
            // Checks the pair's shapes.
            LoraAdapter::from_parts(a.detach(), b.detach(), m.alpha, 0.0)
                .map_err(|e| run_error(format!("adapters.{path}: {e}")))?;
            RunModule::Lora {
                a: a.detach().to_kind(Kind::Float),
                b: b.detach().to_kind(Kind::Float),
                alpha: m.alpha,
            }
        } else {
            let mut names: Vec<&&str> = fields.keys().collect();
            names.sort();
            return Err(run_error(format!(
                "adapters.{path}: neither an SVD adapter (P, lambda, Q, active) nor a LoRA adapter \
                 (lora_A, lora_B); found {names:?}"
            )));
        };
        modules.push((path, module));
    }
    if modules.is_empty() {
        return Err(run_error(if !m.name.has_adapters() {
            "a full fine-tuning or linear-probe run has no adapter to export; `flexlora merge` \
             writes its weights as a Hugging Face folder"
                .into()
        } else {
            "the checkpoint holds no adapter tensors (`adapters.*`)".into()
        }));
    }
    let get = |name: &str| {
        tensors
            .get(name)
            .map(|t| t.detach().to_kind(Kind::Float))
            .ok_or_else(|| run_error(format!("tensor `{name}` is missing")))
    };
    let base_error = |e| run_error(format!("the base model: {e}"));
    let names = crate::models::HfNames::of_folder(&config.model.path).map_err(base_error)?;
    let decoder = crate::models::Architecture::of_folder(&config.model.path)
        .map_err(base_error)?
        .is_decoder();
    let classifier = if decoder {
        None
    } else {
        Some((get("head.classifier.weight")?, get("head.classifier.bias")?))
    };
    let pooler = if tensors.contains_key("head.pooler.weight") {
        Some((get("head.pooler.weight")?, get("head.pooler.bias")?))
    } else {
        None
    };
    Ok(RunAdapters {
        modules,
        classifier,
        pooler,
        names,
    })
}

/// Every adapted module's LoRA pair with its whole scale folded into `B`:
/// `(path, A [r, in], B [out, r])` with `ΔW = B A`, in model order; modules at rank 0 (no active
/// slot) are left out.
pub(super) fn scaled_pairs(run: &RunAdapters) -> Vec<(String, Tensor, Tensor)> {
    let mut pairs = Vec::new();
    for (path, module) in &run.modules {
        match module {
            RunModule::Svd { .. } => {
                if let Some((a, b)) = module.svd_pair() {
                    pairs.push((path.clone(), a, b));
                }
            }
            RunModule::Lora { a, b, alpha } => {
                let r = a.size()[0] as f64;
                let b = (b.to_kind(Kind::Double) * (*alpha / r)).to_kind(Kind::Float);
                pairs.push((path.clone(), a.shallow_clone(), b));
            }
        }
    }
    pairs
}

/// A JSON number, written as an integer when it is one (as PEFT's own configs).
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

fn slot_index(slots: &[i64]) -> Tensor {
    Tensor::from_slice(slots)
}

/// PEFT's AdaLoRA divisor `ranknum + 1e-5`, computed as PEFT does: `ranknum` is a float32
/// tensor holding `r`, and the addition happens in float32.
pub(crate) fn adalora_divisor(ranknum: f32) -> f64 {
    f64::from(ranknum + super::ADALORA_RANKNUM_EPS as f32)
}

/// Writes the adapters and head of a run state (the tensors of
/// [`TaskModel::state`](crate::train::model::TaskModel::state), made with `config`) to
/// `out_dir` as a PEFT adapter folder of `format` (see the [module docs](super)).
///
/// `total_steps` (the run's optimiser steps) only fills AdaLoRA's `total_step`, which PEFT uses
/// when training continues. `out_dir` is written whole through a temporary folder; an existing
/// one is replaced only if it is empty or holds an `adapter_config.json`.
pub fn export_state(
    config: &Config,
    tensors: &HashMap<String, Tensor>,
    format: PeftFormat,
    total_steps: Option<u64>,
    out_dir: &Path,
) -> anyhow::Result<()> {
    let run = run_adapters(config, tensors)?;
    let (weights, adapter_config) = match format {
        PeftFormat::Lora => lora_files(config, &run),
        PeftFormat::Adalora => adalora_files(config, &run, total_steps)?,
        // A single file, not a PEFT folder: written by `export_run_gguf`.
        PeftFormat::GgufLora => anyhow::bail!(
            "gguf-lora writes a llama.cpp adapter file: use export_run_gguf (flexlora export \
             --format gguf-lora)"
        ),
    };
    write_dir_atomic(
        out_dir,
        "a PEFT adapter (adapter_config.json)",
        |d| d.join(ADAPTER_CONFIG).exists(),
        |tmp| {
            Tensor::write_safetensors(&weights, tmp.join(ADAPTER_WEIGHTS))?;
            fail::fail_point!("export.weights_written", |a| Err(crate::faults::io_error(
                "export.weights_written",
                a
            )
            .into()));
            write_json(&tmp.join(ADAPTER_CONFIG), &adapter_config)
        },
    )
}

/// Exports the adapter of the finished run in `run_dir` to `out_dir` (see
/// [`export_state`]): the checkpoint `flexlora eval` uses (`checkpoints/best`, else `final`).
/// A `full` run has no adapter and is an error (`flexlora merge` covers it); a `lora` run
/// exports only as [`PeftFormat::Lora`].
pub fn export_run(run_dir: &Path, format: PeftFormat, out_dir: &Path) -> anyhow::Result<()> {
    let run = RunState::load(run_dir)?;
    let steps = std::fs::read_to_string(run_dir.join("checkpoints/final/state.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .and_then(|v| v["step"].as_u64());
    export_state(&run.config, &run.tensors, format, steps, out_dir).map_err(|e| {
        match e.downcast::<PeftError>() {
            Ok(PeftError::Run { message, .. }) => PeftError::Run {
                run: run_dir.to_path_buf(),
                message: format!("{} ({message})", run.checkpoint.display()),
            }
            .into(),
            Ok(other) => other.into(),
            Err(e) => e.context(format!("exporting {}", run_dir.display())),
        }
    })
}

fn base_model_name(config: &Config) -> String {
    let p = &config.model.path;
    std::fs::canonicalize(p)
        .unwrap_or_else(|_| p.clone())
        .display()
        .to_string()
}

/// The fields every adapter config we write shares.
fn common_config(config: &Config, run: &RunAdapters, targets: Vec<String>) -> Map<String, Value> {
    let mut modules_to_save = Vec::new();
    if run.classifier.is_some() {
        modules_to_save.push("classifier");
    }
    if run.pooler.is_some() {
        modules_to_save.push("pooler");
    }
    // PEFT writes null for no modules to save.
    let modules_to_save = (!modules_to_save.is_empty()).then_some(modules_to_save);
    let v = json!({
        "task_type": run.names.peft_task_type,
        "base_model_name_or_path": base_model_name(config),
        "revision": null,
        "inference_mode": true,
        "target_modules": targets,
        "exclude_modules": null,
        "lora_dropout": config.method.dropout,
        "fan_in_fan_out": false,
        "bias": "none",
        "use_rslora": false,
        "modules_to_save": modules_to_save,
        "init_lora_weights": true,
        "layers_to_transform": null,
        "layers_pattern": null,
        "use_dora": false,
        "lora_bias": false,
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn head_tensors(run: &RunAdapters, out: &mut Vec<(String, Tensor)>) {
    if let Some((w, b)) = &run.classifier {
        out.push((format!("{KEY_PREFIX}classifier.weight"), w.contiguous()));
        out.push((format!("{KEY_PREFIX}classifier.bias"), b.contiguous()));
    }
    if let (Some((w, b)), Some(pooler)) = (&run.pooler, run.names.pooler) {
        out.push((format!("{KEY_PREFIX}{pooler}.weight"), w.contiguous()));
        out.push((format!("{KEY_PREFIX}{pooler}.bias"), b.contiguous()));
    }
}

fn active_slots(active: &[bool]) -> Vec<i64> {
    (0..active.len() as i64)
        .filter(|&i| active[i as usize])
        .collect()
}

/// `LORA`: `lora_A = Q`, `lora_B = P diag(λ) s` over the active slots with `α = r` (PEFT's
/// scale exactly 1), or a LoRA adapter's own `A`, `B` and `α`.
fn lora_files(config: &Config, run: &RunAdapters) -> (Vec<(String, Tensor)>, Value) {
    let mut weights = Vec::new();
    let mut rank_pattern = Map::new();
    let mut alpha_pattern = Map::new();
    let mut targets = Vec::new();
    // `r` and `lora_alpha` only matter for modules without a pattern entry (none): for SVD
    // adapters the largest rank with α = r, for LoRA the run's own.
    let mut default_r = 0;
    let mut default_alpha = 0.0;
    for (path, module) in &run.modules {
        let (a, b, rank, alpha) = match module {
            RunModule::Svd { .. } => {
                // ΔW = 0 at rank 0: PEFT has no rank-0 LoRA.
                let Some((a, b)) = module.svd_pair() else {
                    continue;
                };
                let rank = a.size()[0] as usize;
                default_r = default_r.max(rank);
                default_alpha = default_r as f64;
                (a.contiguous(), b.contiguous(), rank, rank as f64)
            }
            RunModule::Lora { a, b, alpha } => {
                let r = a.size()[0] as usize;
                default_r = r;
                default_alpha = *alpha;
                (a.contiguous(), b.contiguous(), r, *alpha)
            }
        };
        let prefix = run.names.prefix;
        weights.push((format!("{KEY_PREFIX}{prefix}.{path}.lora_A.weight"), a));
        weights.push((format!("{KEY_PREFIX}{prefix}.{path}.lora_B.weight"), b));
        rank_pattern.insert(path.clone(), json!(rank));
        alpha_pattern.insert(path.clone(), number(alpha));
        targets.push(path.clone());
    }
    head_tensors(run, &mut weights);
    let mut c = common_config(config, run, targets);
    c.insert("peft_type".into(), json!("LORA"));
    c.insert("r".into(), json!(default_r));
    c.insert("lora_alpha".into(), number(default_alpha));
    c.insert("rank_pattern".into(), Value::Object(rank_pattern));
    c.insert("alpha_pattern".into(), Value::Object(alpha_pattern));
    (weights, Value::Object(c))
}

/// `ADALORA`: `init_r` = the slot count, `rank_pattern` = each module's kept slots (active with
/// `λ ≠ 0`), `lora_A = Q`, `lora_E = λ`, `lora_B = P` over those slots, and
/// `lora_alpha = s · (init_r + 1e-5)` so PEFT's `α / (ranknum + 1e-5)` is our `s`.
fn adalora_files(
    config: &Config,
    run: &RunAdapters,
    total_steps: Option<u64>,
) -> anyhow::Result<(Vec<(String, Tensor)>, Value)> {
    let mut init_r: Option<usize> = None;
    let mut scale_ref: Option<f64> = None;
    for (path, module) in &run.modules {
        match module {
            RunModule::Svd { active, scale, .. } => {
                if init_r.is_some_and(|r| r != active.len()) {
                    return Err(run_error(format!(
                        "adapters.{path} has {} slots, other modules {}: PEFT AdaLoRA has one init_r",
                        active.len(),
                        init_r.unwrap_or(0)
                    ))
                    .into());
                }
                init_r = Some(active.len());
                scale_ref.get_or_insert(*scale);
            }
            RunModule::Lora { .. } => {
                return Err(run_error(format!(
                    "adapters.{path} is a LoRA adapter (lora_A, lora_B), which has no singular \
                     values for AdaLoRA's lora_E; export it with --format peft-lora"
                ))
                .into());
            }
        }
    }
    let (Some(init_r), Some(scale_ref)) = (init_r, scale_ref) else {
        return Err(run_error("no SVD adapter to export".into()).into());
    };
    let divisor = adalora_divisor(init_r as f32);
    let mut lora_alpha = scale_ref * divisor;
    // An `adalora` run whose scale is PEFT's own α / (r_init + 1e-5) exports its α unchanged.
    if config.method.r_init == init_r
        && (lora_alpha - config.method.alpha).abs() <= 1e-12 * config.method.alpha.abs()
    {
        lora_alpha = config.method.alpha;
    }
    let mut weights = Vec::new();
    let mut rank_pattern = Map::new();
    let mut targets = Vec::new();
    for (path, module) in &run.modules {
        let RunModule::Svd {
            p,
            lambda,
            q,
            active,
            scale,
        } = module
        else {
            continue;
        };
        let lambdas = Vec::<f32>::try_from(lambda).unwrap_or_default();
        let keep: Vec<bool> = active
            .iter()
            .zip(lambdas.iter().chain(std::iter::repeat(&0.0)))
            .map(|(&a, &l)| a && l != 0.0)
            .collect();
        let slots = active_slots(&keep);
        if slots.is_empty() {
            continue; // ΔW = 0.
        }
        let idx = slot_index(&slots);
        let e = (lambda.index_select(0, &idx).to_kind(Kind::Double) * (*scale / scale_ref))
            .to_kind(Kind::Float)
            .view([-1, 1])
            .contiguous();
        let prefix = run.names.prefix;
        weights.push((
            format!("{KEY_PREFIX}{prefix}.{path}.lora_A"),
            q.index_select(0, &idx).contiguous(),
        ));
        weights.push((format!("{KEY_PREFIX}{prefix}.{path}.lora_E"), e));
        weights.push((
            format!("{KEY_PREFIX}{prefix}.{path}.lora_B"),
            p.index_select(1, &idx).contiguous(),
        ));
        rank_pattern.insert(format!("{prefix}.{path}.lora_E"), json!(keep));
        targets.push(path.clone());
    }
    head_tensors(run, &mut weights);
    let s = &config.schedule;
    let (tinit, tfinal) = (
        s.t_init.steps(total_steps.unwrap_or(0)),
        s.t_final.steps(total_steps.unwrap_or(0)),
    );
    // PEFT refuses a schedule without a budgeting phase (`tinit < total_step - tfinal`).
    let total_step = total_steps.unwrap_or(0).max(tinit + tfinal + 1);
    let mut c = common_config(config, run, targets);
    c.insert("peft_type".into(), json!("ADALORA"));
    // PEFT's default `r`; AdaLoRA ignores it (and warns when it is not 8).
    c.insert("r".into(), json!(8));
    c.insert("lora_alpha".into(), number(lora_alpha));
    c.insert("init_r".into(), json!(init_r));
    c.insert("target_r".into(), json!(config.method.target_r));
    c.insert("tinit".into(), json!(tinit));
    c.insert("tfinal".into(), json!(tfinal));
    c.insert("deltaT".into(), json!(s.delta_t.max(1)));
    c.insert("beta1".into(), json!(0.85));
    c.insert("beta2".into(), json!(0.85));
    c.insert(
        "orth_reg_weight".into(),
        json!(config.method.orth_reg_weight),
    );
    c.insert("total_step".into(), json!(total_step));
    c.insert("rank_pattern".into(), Value::Object(rank_pattern));
    c.insert("alpha_pattern".into(), json!({}));
    Ok((weights, Value::Object(c)))
}
