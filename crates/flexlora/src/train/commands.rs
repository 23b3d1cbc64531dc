//! `flexlora eval` and `flexlora predict` on a finished run.

use super::model::TaskModel;
use super::predictions::{Predictions, keys, label_text, write_predictions};
use super::{eval, load_run_config, run};
use crate::data::{self, Example};
use crate::models::Preprocessor;
use anyhow::bail;
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
/// the run's `training.device`. With `predictions`, also writes each example's prediction
/// there (CSV or JSONL by its extension: `index` in the split, true `label`, `prediction`,
/// class probabilities), as `predict` writes them.
pub fn eval(
    run_dir: &Path,
    split: &str,
    device: Option<&str>,
    predictions: Option<&Path>,
) -> anyhow::Result<()> {
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
    if let Some(output) = predictions {
        let keys: Vec<_> = examples
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let label = label_text(&splits.label_names, x.label);
                keys([("index", i.into()), ("label", label.into())])
            })
            .collect();
        let p = Predictions {
            label_names: &splits.label_names,
            predictions: &e.predictions,
            probabilities: &e.probabilities,
        };
        write_predictions(output, &keys, &["index", "label"], &p)?;
    }
    println!(
        "{}",
        serde_json::json!({"split": split, "examples": examples.len(), "result": e.to_json(splits.metric)})
    );
    Ok(())
}

/// Predicts the label of every text (text runs) or image (image runs) in `input` and writes
/// CSV or JSONL to `output` (by its extension).
///
/// Texts: one per line, or a `.jsonl` file's `text` (and `text_pair`) fields; rows are keyed
/// by `line`. Images: an image file or a folder of them ([`data::image_files`]), decoded to
/// 8-bit grey; rows are keyed by `file` (the file name).
pub fn predict(
    run_dir: &Path,
    input: &Path,
    output: &Path,
    device: Option<&str>,
) -> anyhow::Result<()> {
    let (config, splits, model, preprocessor, device) = load_run(run_dir, device)?;
    let batch = (config.training.eval_batch_size as usize).max(1);
    if let Preprocessor::Image(_) = preprocessor {
        return predict_images(&model, &preprocessor, &splits, input, output, batch, device);
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
    let e = eval::predict(&model, &preprocessor, &examples, batch, device)?;
    let keys: Vec<_> = texts
        .iter()
        .map(|t| keys([("line", t.line.into()), ("text", t.text.as_str().into())]))
        .collect();
    let p = Predictions {
        label_names: &splits.label_names,
        predictions: &e.predictions,
        probabilities: &e.probabilities,
    };
    write_predictions(output, &keys, &["line"], &p)?;
    eprintln!("predicted {} texts -> {}", texts.len(), output.display());
    Ok(())
}

/// `predict` on an image run: every image of `input` (a file or a folder), decoded a batch at
/// a time, written as rows keyed by `file`.
fn predict_images(
    model: &TaskModel,
    preprocessor: &Preprocessor,
    splits: &data::Splits,
    input: &Path,
    output: &Path,
    batch: usize,
    device: tch::Device,
) -> anyhow::Result<()> {
    let files = data::image_files(input)?;
    let (mut predictions, mut probabilities) = (Vec::new(), Vec::new());
    // Decoded a batch at a time, so a folder of large photos is never all in memory.
    for chunk in files.files.chunks(batch) {
        let examples = chunk
            .iter()
            .map(|(_, path)| {
                Ok(Example {
                    text: String::new(),
                    text_pair: None,
                    label: 0.0,
                    image: Some(data::read_grey_image(path)?),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let e = eval::predict(model, preprocessor, &examples, batch, device)?;
        predictions.extend(e.predictions);
        probabilities.extend(e.probabilities);
    }
    let keys: Vec<_> = files
        .files
        .iter()
        .map(|(name, _)| keys([("file", name.as_str().into())]))
        .collect();
    let p = Predictions {
        label_names: &splits.label_names,
        predictions: &predictions,
        probabilities: &probabilities,
    };
    write_predictions(output, &keys, &["file"], &p)?;
    files.report_skipped(input);
    eprintln!(
        "predicted {} images -> {}",
        files.files.len(),
        output.display()
    );
    Ok(())
}
