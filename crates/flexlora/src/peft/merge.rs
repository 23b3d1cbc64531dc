//! A run's adapter folded into the base weights, as a Hugging Face folder (`flexlora merge`).

use super::RunState;
use super::files::{write_dir_atomic, write_json};
use crate::config::TaskKind;
use crate::train::model::TaskModel;
use anyhow::Context;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Tokenizer (and generation) files copied from the base folder when present.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
];

/// The provenance file a merged folder holds (and the mark of one, for replacing it).
const MERGE_RECORD: &str = "flexlora_merge.json";

/// Folds the adapter of the finished run in `run_dir` into its base model's weights and writes
/// a complete Hugging Face folder at `output` (`…ForSequenceClassification` or
/// `…ForImageClassification`; a decoder run's `LlamaForCausalLM`, see [`merge_decoder_run`]),
/// which transformers loads without PEFT:
///
/// - `model.safetensors`: every encoder weight with its `bert.` name, each adapted layer's
///   weight replaced by `W + ΔW` (for `full` runs, the trained weights), the pooler
///   (pretrained, or the run's trained one) and the classifier;
/// - `config.json`: the base model's, with `architectures`, `id2label` / `label2id` (the run's
///   data labels when its data file can be read, else `LABEL_i`) and `problem_type`;
/// - the base folder's tokenizer files, and `flexlora_merge.json` (what was merged).
///
/// The state is the checkpoint `flexlora eval` uses (`checkpoints/best`, else `final`). The
/// folder is written whole; an existing `output` is replaced only if it is empty or an earlier
/// merge. Draws from LibTorch's global generator (the model is built, then overwritten).
pub fn merge_run(run_dir: &Path, output: &Path) -> anyhow::Result<()> {
    let run = RunState::load(run_dir)?;
    if crate::models::Architecture::of_folder(&run.config.model.path)?.is_decoder() {
        return merge_decoder_run(run_dir, &run, output);
    }
    let config = &run.config;
    let num_labels = run
        .tensors
        .get("head.classifier.weight")
        .and_then(|t| t.size().first().map(|&n| n.max(0) as usize))
        .filter(|&n| n > 0)
        .with_context(|| {
            format!(
                "{}: no (or an empty) head.classifier.weight in the checkpoint",
                run.checkpoint.display()
            )
        })?;
    let task = if num_labels == 1 {
        TaskKind::Regression
    } else {
        TaskKind::Classification
    };
    let mut model = TaskModel::build(config, num_labels, task, Device::Cpu)?;
    model
        .load_state(&run.tensors)
        .with_context(|| format!("loading {}", run.checkpoint.display()))?;

    let c = &model.classifier;
    // Deltas are keyed by the saved names, which are the module paths except for vision models.
    let paths = c.linear_saved_names();
    let names = c.hf_names();
    let (prefix, pooler_name, architecture) = (names.prefix, names.pooler, names.architecture);
    let mut deltas: HashMap<String, Tensor> = HashMap::new();
    tch::no_grad(|| {
        for (path, layer) in paths.iter().zip(c.linears()) {
            if let Some(adapter) = &layer.adapter {
                deltas.insert(
                    format!("{path}.weight"),
                    adapter.delta_weight().to_kind(Kind::Double),
                );
            }
        }
    });
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    tch::no_grad(|| {
        for (name, t) in c.encoder_parameters() {
            let t = t.detach().to_device(Device::Cpu);
            let merged = match deltas.get(&name) {
                Some(d) => (t.to_kind(Kind::Double) + d).to_kind(Kind::Float),
                None => t.to_kind(Kind::Float).copy(),
            };
            tensors.push((format!("{prefix}.{name}"), merged.contiguous()));
        }
        let cpu = |t: &Tensor| {
            t.detach()
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous()
        };
        if let (Some((pw, pb)), Some(pooler_name)) = (c.pooler(), pooler_name) {
            tensors.push((format!("{pooler_name}.weight"), cpu(pw)));
            tensors.push((format!("{pooler_name}.bias"), cpu(pb)));
        }
        let (cw, cb) = c.classifier();
        tensors.push(("classifier.weight".into(), cpu(cw)));
        tensors.push(("classifier.bias".into(), cpu(cb)));
    });

    let base = &config.model.path;
    let config_path = base.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let mut hf: Map<String, Value> = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a JSON object", config_path.display()))?;
    let labels = label_names(config, num_labels, task);
    hf.insert("architectures".into(), json!([architecture]));
    let id2label: Map<String, Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), json!(l)))
        .collect();
    let label2id: Map<String, Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), json!(i)))
        .collect();
    hf.insert("id2label".into(), Value::Object(id2label));
    hf.insert("label2id".into(), Value::Object(label2id));
    hf.insert(
        "problem_type".into(),
        json!(match task {
            TaskKind::Regression => "regression",
            TaskKind::Classification => "single_label_classification",
        }),
    );
    let merged = MergedFolder {
        run_dir,
        checkpoint: &run.checkpoint,
        config,
        merged_modules: &model.adapted_paths,
        tensors: &tensors,
        hf_config: Some(Value::Object(hf)),
    };
    merged.write(output)
}

/// The decoder form of [`merge_run`]: the base folder's `model.safetensors` with every adapted
/// projection's weight replaced by `W + ΔW` (computed in f64, stored in the base's dtype), and
/// its `config.json` (`LlamaForCausalLM`), generation and tokenizer files unchanged.
fn merge_decoder_run(run_dir: &Path, run: &RunState, output: &Path) -> anyhow::Result<()> {
    let (config, model) = crate::lm::LmModel::from_run(run_dir, Device::Cpu)?;
    let adapted = model
        .model
        .linears()
        .into_iter()
        .filter(|l| l.adapter.is_some());
    let mut deltas: HashMap<String, Tensor> = HashMap::new();
    tch::no_grad(|| {
        for (path, layer) in model.adapted_paths.iter().zip(adapted) {
            if let Some(adapter) = &layer.adapter {
                let delta = adapter.delta_weight().to_kind(Kind::Double);
                deltas.insert(format!("model.{path}.weight"), delta);
            }
        }
    });
    let base = &config.model.path;
    let weights = base.join("model.safetensors");
    let mut tensors = Tensor::read_safetensors(&weights)
        .with_context(|| format!("reading {} (one weights file is merged)", weights.display()))?;
    let mut merged = 0;
    tch::no_grad(|| {
        for (name, t) in tensors.iter_mut() {
            if let Some(d) = deltas.get(name.as_str()) {
                *t = (t.to_kind(Kind::Double) + d).to_kind(t.kind()).contiguous();
                merged += 1;
            }
        }
    });
    if merged != deltas.len() {
        anyhow::bail!(
            "{}: {} of the {} adapted projections have no weight of that name there",
            weights.display(),
            deltas.len() - merged,
            deltas.len()
        );
    }
    let merged = MergedFolder {
        run_dir,
        checkpoint: &run.checkpoint,
        config: &config,
        merged_modules: &model.adapted_paths,
        tensors: &tensors,
        hf_config: None,
    };
    merged.write(output)
}

/// What a merged folder is written from.
struct MergedFolder<'a> {
    run_dir: &'a Path,
    checkpoint: &'a Path,
    config: &'a crate::config::Config,
    merged_modules: &'a [String],
    tensors: &'a [(String, Tensor)],
    /// The folder's `config.json`; `None` copies the base model's.
    hf_config: Option<Value>,
}

impl MergedFolder<'_> {
    /// Writes `model.safetensors`, `config.json`, the base folder's tokenizer files and
    /// `flexlora_merge.json` (what was merged) to `output`, whole: an existing `output` is
    /// replaced only if it is empty or an earlier merge.
    fn write(&self, output: &Path) -> anyhow::Result<()> {
        let base = &self.config.model.path;
        let run_dir = self.run_dir;
        let record = json!({
            "run": std::fs::canonicalize(run_dir).unwrap_or_else(|_| run_dir.to_path_buf()).display().to_string(),
            "checkpoint": self.checkpoint.display().to_string(),
            "method": self.config.method.name,
            "base_model": base.display().to_string(),
            "merged_modules": self.merged_modules,
        });
        let copied: Vec<&str> = match &self.hf_config {
            Some(_) => TOKENIZER_FILES.to_vec(),
            None => std::iter::once("config.json")
                .chain(TOKENIZER_FILES.iter().copied())
                .collect(),
        };
        write_dir_atomic(
            output,
            "a merged model (flexlora_merge.json)",
            |d| d.join(MERGE_RECORD).exists(),
            |tmp| {
                Tensor::write_safetensors(self.tensors, tmp.join("model.safetensors"))?;
                if let Some(hf) = &self.hf_config {
                    write_json(&tmp.join("config.json"), hf)?;
                }
                for f in &copied {
                    let src = base.join(f);
                    if src.exists() {
                        std::fs::copy(&src, tmp.join(f))
                            .with_context(|| format!("copying {}", src.display()))?;
                    }
                }
                write_json(&tmp.join(MERGE_RECORD), &record)
            },
        )
    }
}

/// Class names for `id2label`: the run's data labels when the data file reads and agrees with
/// the checkpoint, else `LABEL_i` (with a warning).
fn label_names(config: &crate::config::Config, num_labels: usize, task: TaskKind) -> Vec<String> {
    let generic = || (0..num_labels).map(|i| format!("LABEL_{i}")).collect();
    if task == TaskKind::Regression {
        return generic();
    }
    match crate::data::load_splits(&config.data) {
        Ok(s) if s.label_names.len() == num_labels => s.label_names,
        Ok(s) => {
            eprintln!(
                "warning: the run's data has {} labels but its classifier {num_labels} outputs; \
                 config.json gets LABEL_0..",
                s.label_names.len()
            );
            generic()
        }
        Err(e) => {
            eprintln!(
                "warning: the run's data could not be read for label names ({e}); config.json gets \
                 LABEL_0.."
            );
            generic()
        }
    }
}
