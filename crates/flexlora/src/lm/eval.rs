//! `flexlora lm-eval`: a decoder, zero-shot or with a run's adapters, scored on the
//! commonsense suite in either prompt format.

use super::model::LmModel;
use super::score::{TaskAccuracy, accuracies, markdown_table, score_all};
use super::tokens::{EncodedQuestion, LmTokenizer};
use super::train::{configured_tasks, load_questions};
use crate::config::Config;
use crate::data::commonsense::load_task;
use anyhow::{Context, bail};
use std::path::Path;
use std::time::Instant;

/// What [`lm_eval`] scores and where it writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct LmEvalOptions<'a> {
    /// A finished decoder run whose adapters to apply (zero-shot when absent).
    pub run: Option<&'a Path>,
    /// Where to write the table and every question's scores as JSON.
    pub output: Option<&'a Path>,
    /// Every row of each task's validation split rather than the evaluation half.
    pub full_split: bool,
    /// No progress bar.
    pub quiet: bool,
}

/// Scores `config`'s evaluation questions (or, with `full_split`, every row of its tasks)
/// with the base model or a run's adapters, prints the accuracy table and optionally writes
/// it with every question's scores as JSON.
pub fn lm_eval(config: &Config, opts: &LmEvalOptions) -> anyhow::Result<Vec<TaskAccuracy>> {
    crate::train::set_threads(config.training.threads);
    let device = crate::device::parse_device(&config.training.device)?;
    let questions = if opts.full_split {
        if opts.run.is_some() {
            bail!("--full-split scores the questions a run trained on; use it zero-shot only");
        }
        let tokenizer = LmTokenizer::from_folder(&config.model.path)?;
        let mut all = Vec::new();
        for task in configured_tasks(config)? {
            for q in load_task(&config.data.path, task, config.data.prompt_format)? {
                all.push(EncodedQuestion::new(&tokenizer, &q)?);
            }
        }
        all
    } else {
        load_questions(config)?.1
    };
    let model = match opts.run {
        Some(r) => LmModel::from_run(r, device)?.1.model,
        None => crate::models::LlamaModel::from_folder(&config.model.path, device)?,
    };
    let started = Instant::now();
    let outcomes = score_all(&model, &questions, opts.quiet)?;
    let seconds = started.elapsed().as_secs_f64();
    let table = accuracies(&outcomes);
    println!(
        "prompts: {}; questions: {}",
        config.data.prompt_format.name(),
        if opts.full_split {
            "every row of each validation split"
        } else {
            "the evaluation half of each task"
        }
    );
    print!("{}", markdown_table(&table));
    if let Some(path) = opts.output {
        let value = serde_json::json!({
            "model": config.model.path, "run": opts.run, "tasks": table,
            "prompt_format": config.data.prompt_format, "full_split": opts.full_split,
            "eval_seconds": seconds, "outcomes": outcomes,
        });
        let text = serde_json::to_string_pretty(&value)?;
        crate::io::write_atomic(path, |w| std::io::Write::write_all(w, text.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(table)
}
