//! Fine-tuning a decoder with adapters on the commonsense suite (causal-LM loss on the answer
//! tokens only), then scoring the held-out half of every task.
//!
//! A training sequence is `prompt ‖ " " + correct choice ‖ EOS`; the loss is the mean
//! cross-entropy of the answer and EOS tokens, each predicted from everything before it
//! (prompt tokens carry no loss). Micro-batches are padded on the right to their longest
//! sequence (dynamic padding; `training.bucket_by_length` groups similar lengths), gradients
//! accumulate over `training.grad_accum` micro-batches. The loop is the training engine's
//! ([`crate::train::engine`]), the classifiers' own: the optimiser step, AdaLoRA's masking,
//! FlexLoRA's allocation, step checkpoints, exact `--resume`, `--init-from` and the run
//! directory's layout. `data.validation_fraction` of every task's training questions is held
//! out and scored at each epoch's end (mean accuracy over tasks); the best epoch's adapters are
//! the ones tested and kept in `checkpoints/best`.

use super::model::LmModel;
use super::score::{TaskAccuracy, accuracies, markdown_table, score_all};
use super::tokens::{EncodedQuestion, LmTokenizer};
use crate::config::{Config, MethodName};
use crate::data::commonsense::{CommonsenseTask, split_suite};
use crate::train::TrainOptions;
use crate::train::engine::{self, TrainingTask, Validation};
use crate::train::run::RunDir;
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// What a finished decoder run reports (`summary.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LmSummary {
    /// The method.
    pub method: MethodName,
    /// Per-task accuracy on the evaluation halves, then the mean over tasks (`average`).
    pub tasks: Vec<TaskAccuracy>,
    /// Mean accuracy over tasks of the held-out training questions at the best epoch (`null`
    /// when nothing was held out: `data.validation_fraction = 0`).
    #[serde(default)]
    pub validation_accuracy: Option<f64>,
    /// The epoch (1-based) whose adapters were tested: the best validation epoch, else the
    /// last.
    #[serde(default)]
    pub best_epoch: u64,
    /// Training sequences used / skipped for being longer than `data.max_length`.
    pub train_sequences: [usize; 2],
    /// Training questions held out for validation (best-epoch selection).
    #[serde(default)]
    pub validation_questions: usize,
    /// Evaluation questions.
    pub eval_questions: usize,
    /// Adapter parameters at the end (active slots only; AdaLoRA: kept triplets only).
    pub trainable_parameters: i64,
    /// Sum of adapter ranks at the end.
    pub total_rank: usize,
    /// Optimiser steps.
    pub steps: u64,
    /// Seconds spent training.
    pub train_seconds: f64,
    /// Seconds spent scoring the evaluation questions.
    pub eval_seconds: f64,
    /// Seconds of the training time spent in the rank allocators.
    pub allocation_seconds: f64,
    /// How much FlexLoRA's allocation acted (`null` for other methods); see
    /// [`crate::train::Summary::allocation`].
    #[serde(default)]
    pub allocation: Option<flexlora_core::ActivityReport>,
    /// Wall time of the command.
    pub wall_seconds: f64,
    /// Peak resident memory in MiB.
    pub peak_rss_mib: f64,
    /// The seed.
    pub seed: u64,
}

/// The tasks of `config.data.tasks` (all eight when unset).
pub fn configured_tasks(config: &Config) -> anyhow::Result<Vec<CommonsenseTask>> {
    match &config.data.tasks {
        None => Ok(CommonsenseTask::ALL.to_vec()),
        Some(names) if names.is_empty() => bail!("data.tasks is empty; name at least one task"),
        Some(names) => names
            .iter()
            .map(|n| {
                CommonsenseTask::from_name(n).ok_or_else(|| {
                    let known: Vec<&str> = CommonsenseTask::ALL.iter().map(|t| t.name()).collect();
                    anyhow::anyhow!("data.tasks: unknown task {n:?}; the tasks are {known:?}")
                })
            })
            .collect(),
    }
}

/// The training and evaluation questions of `config`, tokenized.
pub fn load_questions(
    config: &Config,
) -> anyhow::Result<(Vec<EncodedQuestion>, Vec<EncodedQuestion>)> {
    let d = &config.data;
    if d.format != crate::config::DataFormat::Commonsense {
        bail!(
            "a decoder (model_type \"llama\") trains on data.format = \"commonsense\", not {:?}",
            d.format
        );
    }
    let tasks = configured_tasks(config)?;
    let cap = |v: Option<u64>| v.map(|n| n as usize);
    let split = split_suite(
        &d.path,
        &tasks,
        d.split_seed,
        cap(d.train_per_task),
        cap(d.eval_per_task),
        d.prompt_format,
    )?;
    let tokenizer = LmTokenizer::from_folder(&config.model.path)?;
    let encode = |qs: &[crate::data::commonsense::ChoiceQuestion]| {
        qs.iter()
            .map(|q| EncodedQuestion::new(&tokenizer, q))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok((encode(&split.train)?, encode(&split.eval)?))
}

/// A training sequence: token ids and where the answer starts.
pub(crate) struct Sequence {
    /// Prompt, answer and end-of-sequence tokens.
    pub(crate) ids: Vec<i64>,
    /// Where the answer starts in `ids`.
    pub(crate) answer_start: usize,
}

/// Input ids `[batch, longest]` (padded on the right with `pad`), the flat positions whose
/// next token carries loss, and those next tokens.
fn batch(seqs: &[&Sequence], pad: i64, device: Device) -> (Tensor, Tensor, Tensor) {
    let width = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(1);
    let mut ids = vec![pad; seqs.len() * width];
    let (mut positions, mut targets) = (Vec::new(), Vec::new());
    for (b, s) in seqs.iter().enumerate() {
        ids[b * width..b * width + s.ids.len()].copy_from_slice(&s.ids);
        for t in s.answer_start..s.ids.len() {
            positions.push((b * width + t - 1) as i64);
            targets.push(s.ids[t]);
        }
    }
    let input = Tensor::from_slice(&ids)
        .view([seqs.len() as i64, width as i64])
        .to_device(device);
    (
        input,
        Tensor::from_slice(&positions).to_device(device),
        Tensor::from_slice(&targets).to_device(device),
    )
}

/// Mean cross-entropy of the answer tokens of a micro-batch.
pub(crate) fn answer_loss(
    model: &LmModel,
    (input, positions, targets): (&Tensor, &Tensor, &Tensor),
    train: bool,
) -> Tensor {
    let hidden = model.model.forward(input, None, None, train);
    let h = hidden
        .reshape([-1, hidden.size()[2]])
        .index_select(0, positions);
    model
        .model
        .logits(&h)
        .cross_entropy_for_logits(targets)
        .to_kind(Kind::Float)
}

/// Holds out `fraction` of every task's training questions for validation: the last
/// `round(n_t · fraction)` of task `t`'s `n_t` (which come in a seeded shuffled order, see
/// [`split_suite`]), so every task is represented in both parts.
fn hold_out_validation(
    questions: Vec<EncodedQuestion>,
    fraction: f64,
) -> (Vec<EncodedQuestion>, Vec<EncodedQuestion>) {
    let mut per_task: Vec<(CommonsenseTask, usize)> = Vec::new();
    for q in &questions {
        match per_task.last_mut() {
            Some((t, n)) if *t == q.task => *n += 1,
            _ => per_task.push((q.task, 1)),
        }
    }
    let (mut train, mut validation) = (Vec::new(), Vec::new());
    let mut rest = questions.into_iter();
    for (_, n) in per_task {
        let held = ((n as f64 * fraction).round() as usize).min(n);
        train.extend(rest.by_ref().take(n - held));
        validation.extend(rest.by_ref().take(held));
    }
    (train, validation)
}

/// Causal-LM fine-tuning on answer tokens as a [`TrainingTask`]: batches of training
/// sequences, the answer tokens' cross-entropy, and the mean accuracy over tasks of the held-out
/// training questions.
struct CausalLmTask {
    sequences: Vec<Sequence>,
    validation: Vec<EncodedQuestion>,
    pad: i64,
    device: Device,
}

impl TrainingTask for CausalLmTask {
    type Model = LmModel;
    type Batch = (Tensor, Tensor, Tensor);

    fn train_len(&self) -> usize {
        self.sequences.len()
    }

    fn train_lengths(&self) -> Vec<usize> {
        self.sequences.iter().map(|s| s.ids.len()).collect()
    }

    fn batch(&self, indices: &[usize]) -> anyhow::Result<Self::Batch> {
        let seqs: Vec<&Sequence> = indices.iter().map(|&i| &self.sequences[i]).collect();
        Ok(batch(&seqs, self.pad, self.device))
    }

    fn loss(
        &self,
        model: &LmModel,
        (input, positions, targets): &Self::Batch,
        train: bool,
    ) -> Tensor {
        answer_loss(model, (input, positions, targets), train)
    }

    fn validate(&self, model: &LmModel) -> anyhow::Result<Option<Validation>> {
        if self.validation.is_empty() {
            return Ok(None);
        }
        let table = accuracies(&score_all(&model.model, &self.validation, true)?);
        let average = table.last().map_or(f64::NAN, |r| r.acc);
        Ok(Some(Validation {
            metric: average,
            record: serde_json::json!({"metric": "acc", "value": average, "tasks": table}),
            message: format!("acc {average:.4} (mean over tasks)"),
        }))
    }

    fn metric_name(&self) -> &str {
        "acc"
    }
}

/// The training sequences of `questions` (those longer than `max_len` tokens are left out and
/// counted).
pub(crate) fn training_sequences(
    questions: &[EncodedQuestion],
    eos: Option<i64>,
    max_len: i64,
) -> (Vec<Sequence>, usize) {
    let mut skipped = 0usize;
    let sequences = questions
        .iter()
        .filter_map(|q| {
            let prompt = q.prompt_of(q.answer);
            let mut ids = prompt.to_vec();
            ids.extend(&q.choices[q.answer]);
            ids.extend(eos);
            if ids.len() as i64 > max_len {
                skipped += 1;
                return None;
            }
            Some(Sequence {
                answer_start: prompt.len(),
                ids,
            })
        })
        .collect();
    (sequences, skipped)
}

/// Refuses token ids outside the model's vocabulary and questions longer than its context.
fn check_tokens_fit(
    config: &Config,
    llama: &crate::models::LlamaConfig,
    sequences: &[Sequence],
    scored: &[&[EncodedQuestion]],
) -> anyhow::Result<()> {
    let vocab = llama.vocab_size;
    let scored = || scored.iter().flat_map(|qs| qs.iter());
    if let Some(bad) = sequences
        .iter()
        .flat_map(|s| s.ids.iter())
        .chain(scored().flat_map(|q| {
            q.prompt
                .iter()
                .chain(q.choice_prompts.iter().flatten())
                .chain(q.choices.iter().flatten())
        }))
        .find(|&&t| t < 0 || t >= vocab)
    {
        bail!(
            "{}: the tokenizer produced token id {bad}, outside the model's vocabulary of {vocab} \
             (config.json vocab_size): tokenizer.json and the weights do not belong together",
            config.model.path.display()
        );
    }
    if let Some(q) = scored().find(|q| q.longest() as i64 - 1 > llama.max_position_embeddings) {
        bail!(
            "{} row {}: prompt and choice take {} tokens, more than the model's context of {}",
            q.task.name(),
            q.row,
            q.longest() - 1,
            llama.max_position_embeddings
        );
    }
    Ok(())
}

/// Trains the decoder run described by `config` into `opts.output` through the training
/// engine (so with step checkpoints, `--resume` and `--init-from`), selects the best epoch on
/// the held-out training questions (`data.validation_fraction` of each task's), scores its
/// evaluation questions and returns the summary, which
/// [`write_summary`](crate::train::write_summary) writes after the caller's PEFT export, as for
/// classifier runs.
pub fn train_lm(config: &Config, opts: &TrainOptions) -> anyhow::Result<LmSummary> {
    let wall = Instant::now();
    let tc = &config.training;
    crate::train::set_threads(tc.threads);
    let device = crate::device::parse_device(&tc.device)?;
    // Everything that can be refused is checked before the run directory is touched.
    let (train_questions, eval_questions) = load_questions(config)?;
    if train_questions.is_empty() {
        bail!(
            "{}: no training questions (data.train_per_task = 0?)",
            config.data.path.display()
        );
    }
    let (train_questions, validation) =
        hold_out_validation(train_questions, config.data.validation_fraction);
    LmModel::check_method(config.method.name)?;
    let llama = crate::models::LlamaConfig::from_folder(&config.model.path)?;
    let eos = llama.eos_token_ids.first().copied();
    let max_len = (config.data.max_length as i64).min(llama.max_position_embeddings);
    let (sequences, skipped) = training_sequences(&train_questions, eos, max_len);
    check_tokens_fit(config, &llama, &sequences, &[&validation, &eval_questions])?;
    if sequences.is_empty() {
        bail!(
            "every training sequence is longer than data.max_length = {} tokens; raise it",
            config.data.max_length
        );
    }
    let n_train = sequences.len();
    let total_steps = config.total_steps(n_train as u64);
    crate::train::validate_schedule(config, total_steps, &opts.output, opts.quiet)?;
    tch::manual_seed(crate::train::step_seed(tc.seed, u64::MAX));
    let mut model = LmModel::build(config, device)?;
    let run = RunDir::prepare(&opts.output, config, opts.resume, opts.overwrite)?;
    if skipped > 0 && !opts.quiet {
        eprintln!(
            "{skipped} of {} training sequences are longer than data.max_length = {} \
             tokens and are left out",
            train_questions.len(),
            config.data.max_length
        );
    }
    let task = CausalLmTask {
        sequences,
        validation,
        pad: eos.unwrap_or(0),
        device,
    };
    let trained = engine::train_task(config, opts, &run, &task, &mut model, total_steps)?;
    let (state, allocators, best) = (&trained.state, &trained.allocators, &trained.best);

    // The evaluation questions, scored with the best validation epoch's adapters.
    let eval_started = Instant::now();
    let outcomes = score_all(&model.model, &eval_questions, opts.quiet)?;
    let eval_seconds = eval_started.elapsed().as_secs_f64();
    let table = accuracies(&outcomes);
    write_outcomes(&opts.output.join("predictions.jsonl"), &outcomes)?;
    run.log_metrics(
        &serde_json::json!({"step": state.step, "test": table, "best_epoch": best.epoch + 1}),
    )?;
    if !opts.quiet {
        eprint!("{}", markdown_table(&table));
    }
    let summary = LmSummary {
        method: config.method.name,
        tasks: table,
        validation_accuracy: best.metric.is_finite().then_some(best.metric),
        best_epoch: best.epoch + 1,
        train_sequences: [n_train, skipped],
        validation_questions: task.validation.len(),
        eval_questions: eval_questions.len(),
        trainable_parameters: allocators.trainable_parameters(&model),
        total_rank: allocators.ranks(&model).iter().sum(),
        steps: state.step,
        train_seconds: state.train_seconds,
        eval_seconds,
        allocation_seconds: state.allocation_seconds,
        allocation: (config.method.name == MethodName::Flexlora)
            .then(|| state.allocation_activity.report()),
        wall_seconds: wall.elapsed().as_secs_f64(),
        peak_rss_mib: crate::train::peak_rss_mib(),
        seed: tc.seed,
    };
    Ok(summary)
}

/// One JSON line per scored question (task, row, answer, each choice's score), atomically.
pub fn write_outcomes(path: &Path, outcomes: &[super::score::Outcome]) -> anyhow::Result<()> {
    let mut text = String::new();
    for o in outcomes {
        text.push_str(&serde_json::to_string(o)?);
        text.push('\n');
    }
    crate::io::write_atomic(path, |w| std::io::Write::write_all(w, text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}
