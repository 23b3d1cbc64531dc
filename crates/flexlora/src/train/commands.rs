//! `flexlora eval` and `flexlora predict` on a finished run.

use super::model::TaskModel;
use super::{eval, load_run_config, run};
use crate::data::{self, Example};
use crate::models::Preprocessor;
use anyhow::{Context, bail};
use std::io::Write;
use std::path::Path;

/// Loads a finished run's config, data, best model and its preprocessing (tokenizer or image
/// processing), on `device` (a device name) or else the run's `training.device`.
fn load_run(
    run_dir: &Path,
    device: Option<&str>,
) -> anyhow::Result<(
    crate::config::Config,
    data::Splits,
    TaskModel,
    Preprocessor,
    tch::Device,
)> {
    let config = load_run_config(run_dir)?;
    let device = crate::device::parse_device(device.unwrap_or(&config.training.device))?;
    let splits = data::load_splits(&config.data)?;
    let mut model = TaskModel::build(&config, splits.num_labels(), splits.task, device)?;
    let best = run_dir.join("checkpoints/best");
    let dir = if best.exists() {
        best
    } else {
        run_dir.join("checkpoints/final")
    };
    run::load_model_checkpoint(&dir, &mut model)?;
    let preprocessor = Preprocessor::for_model(&config.model.path, &config.data)?;
    Ok((config, splits, model, preprocessor, device))
}

/// Evaluates the run's best checkpoint on `split` and prints every metric; `device` replaces
/// the run's `training.device`.
pub fn eval(run_dir: &Path, split: &str, device: Option<&str>) -> anyhow::Result<()> {
    let (config, splits, model, preprocessor, device) = load_run(run_dir, device)?;
    let examples = match split {
        "train" => &splits.train,
        "validation" => &splits.validation,
        "test" => &splits.test,
        other => bail!("--split {other}: expected train, validation or test"),
    };
    let e = eval::evaluate(
        &model,
        &preprocessor,
        examples,
        splits.metric,
        config.training.eval_batch_size as usize,
        device,
    )?;
    println!(
        "{}",
        serde_json::json!({"split": split, "examples": examples.len(), "result": e.to_json(splits.metric)})
    );
    Ok(())
}

/// Predicts the label of every text in `input` and writes CSV or JSONL to `output`.
pub fn predict(
    run_dir: &Path,
    input: &Path,
    output: &Path,
    device: Option<&str>,
) -> anyhow::Result<()> {
    let (config, splits, model, preprocessor, device) = load_run(run_dir, device)?;
    if config.data.format.is_image() {
        bail!(
            "{}: `predict` reads texts, and this run's model reads images; `flexlora eval {} \
             --split test` evaluates it on its image data",
            run_dir.display(),
            run_dir.display()
        );
    }
    let texts = crate::embed::read_texts(input, "text")?;
    let pairs: Vec<Option<String>> = if input.extension().is_some_and(|e| e == "jsonl") {
        let content = std::fs::read_to_string(input)?;
        content
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["text_pair"].as_str().map(String::from))
            })
            .collect()
    } else {
        vec![None; texts.len()]
    };
    let examples: Vec<Example> = texts
        .iter()
        .zip(pairs)
        .map(|(t, p)| Example {
            text: t.text.clone(),
            text_pair: p,
            label: 0.0,
            image: None,
        })
        .collect();
    let e = eval::predict(
        &model,
        &preprocessor,
        &examples,
        config.training.eval_batch_size as usize,
        device,
    )?;
    let csv = output.extension().is_some_and(|x| x == "csv");
    crate::io::write_atomic(output, |w| {
        if csv {
            let mut header = vec!["line".to_string(), "prediction".to_string()];
            header.extend(splits.label_names.iter().map(|l| format!("p_{l}")));
            writeln!(w, "{}", header.join(","))?;
        }
        for (i, t) in texts.iter().enumerate() {
            let label = match splits.label_names.get(e.predictions[i] as usize) {
                Some(name) if !splits.label_names.is_empty() => name.clone(),
                _ => e.predictions[i].to_string(),
            };
            if csv {
                let probs: Vec<String> = e.probabilities[i].iter().map(|p| format!("{p:.6}")).collect();
                let mut row = vec![t.line.to_string(), label];
                row.extend(probs);
                writeln!(w, "{}", row.join(","))?;
            } else {
                let v = serde_json::json!({"line": t.line, "text": t.text, "prediction": label, "probabilities": e.probabilities[i]});
                writeln!(w, "{v}")?;
            }
        }
        Ok(())
    })
    .with_context(|| format!("writing {}", output.display()))?;
    eprintln!("predicted {} texts -> {}", texts.len(), output.display());
    Ok(())
}
