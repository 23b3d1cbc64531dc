//! Fine-tuning a decoder with adapters on the commonsense suite (causal-LM loss on the answer
//! tokens only), then scoring the held-out half of every task.
//!
//! A training sequence is `prompt ‖ " " + correct choice ‖ EOS`; the loss is the mean
//! cross-entropy of the answer and EOS tokens, each predicted from everything before it
//! (prompt tokens carry no loss). Micro-batches are padded on the right to their longest
//! sequence (dynamic padding; `training.bucket_by_length` groups similar lengths), gradients
//! accumulate over `training.grad_accum` micro-batches, and the optimiser step, AdaLoRA's
//! masking and FlexLoRA's allocation are the classifiers' ([`crate::train::step`]).

use super::model::{ADAPTER_FILE, LmModel};
use super::score::{TaskAccuracy, accuracies, markdown_table, score_all};
use super::tokens::{EncodedQuestion, LmTokenizer};
use crate::config::{Config, MethodName};
use crate::data::commonsense::{CommonsenseTask, split_suite};
use crate::train::TrainOptions;
use crate::train::checkpoint::TrainerState;
use crate::train::run::{RunDir, matrix_labels};
use crate::train::step;
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
    /// Training sequences used / skipped for being longer than `data.max_length`.
    pub train_sequences: [usize; 2],
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
struct Sequence {
    ids: Vec<i64>,
    answer_start: usize,
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
fn answer_loss(
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

/// Trains the decoder run described by `config` into `opts.output`, scores its evaluation
/// questions and returns the summary.
pub fn train_lm(config: &Config, opts: &TrainOptions) -> anyhow::Result<LmSummary> {
    let wall = Instant::now();
    let tc = &config.training;
    if opts.resume || opts.init_from.is_some() {
        bail!("--resume and --init-from are not supported for decoder runs yet");
    }
    crate::train::set_threads(tc.threads);
    let device = crate::device::parse_device(&tc.device)?;
    let (train_questions, eval_questions) = load_questions(config)?;
    if train_questions.is_empty() {
        bail!(
            "{}: no training questions (data.train_per_task = 0?)",
            config.data.path.display()
        );
    }
    let n_total = train_questions.len();
    // Everything that can be refused is checked before the run directory is touched.
    LmModel::check_method(config.method.name)?;
    let llama = crate::models::LlamaConfig::from_folder(&config.model.path)?;
    let eos = llama.eos_token_ids.first().copied();
    let pad = eos.unwrap_or(0);
    let max_len = (config.data.max_length as i64).min(llama.max_position_embeddings);
    let mut skipped = 0usize;
    let sequences: Vec<Sequence> = train_questions
        .iter()
        .filter_map(|q| {
            let mut ids = q.prompt.clone();
            ids.extend(&q.choices[q.answer]);
            ids.extend(eos);
            if ids.len() as i64 > max_len {
                skipped += 1;
                return None;
            }
            Some(Sequence {
                answer_start: q.prompt.len(),
                ids,
            })
        })
        .collect();
    let vocab = llama.vocab_size;
    if let Some(bad) = sequences
        .iter()
        .flat_map(|s| s.ids.iter())
        .chain(
            eval_questions
                .iter()
                .flat_map(|q| q.prompt.iter().chain(q.choices.iter().flatten())),
        )
        .find(|&&t| t < 0 || t >= vocab)
    {
        bail!(
            "{}: the tokenizer produced token id {bad}, outside the model's vocabulary of {vocab} \
             (config.json vocab_size): tokenizer.json and the weights do not belong together",
            config.model.path.display()
        );
    }
    if sequences.is_empty() {
        bail!(
            "every training sequence is longer than data.max_length = {} tokens; raise it",
            config.data.max_length
        );
    }
    if let Some(q) = eval_questions
        .iter()
        .find(|q| q.longest() as i64 - 1 > llama.max_position_embeddings)
    {
        bail!(
            "{} row {}: prompt and choice take {} tokens, more than the model's context of {}",
            q.task.name(),
            q.row,
            q.longest() - 1,
            llama.max_position_embeddings
        );
    }
    let n_train = sequences.len();
    let total_steps = config.total_steps(n_train as u64);
    let origin = opts.output.join("config.toml").display().to_string();
    if config.method.name == MethodName::Flexlora {
        crate::validate::schedule(config, total_steps, &origin)?;
        if !opts.quiet {
            for w in crate::plan::movement_warnings(config, total_steps) {
                eprintln!("warning: {w}");
            }
        }
    }
    if config.method.name == MethodName::Adalora {
        crate::validate::adalora_schedule(config, total_steps, &origin)?;
    }
    let run = RunDir::prepare(&opts.output, config, false, opts.overwrite)?;
    if skipped > 0 && !opts.quiet {
        eprintln!(
            "{skipped} of {n_total} training sequences are longer than data.max_length = {} \
             tokens and are left out",
            config.data.max_length
        );
    }
    tch::manual_seed(crate::train::step_seed(tc.seed, u64::MAX));
    let mut model = LmModel::build(config, device)?;
    let mut optimiser = step::optimiser_for(config, &model);
    let mut allocators = step::Allocators::for_model(config, &model, total_steps)?;
    let plan = step::StepPlan::new(config, total_steps);
    let mut state = TrainerState {
        rank_history: vec![(0, allocators.ranks(&model))],
        allocation_activity: flexlora_core::AllocationActivity::new(&allocators.ranks(&model)),
        ..Default::default()
    };
    run.log_ranks(
        &serde_json::json!({"step": 0, "ranks": state.rank_history[0].1, "initial": true}),
    )?;

    let batch_size = tc.batch_size as usize;
    let micro_per_epoch = n_train.div_ceil(batch_size) as u64;
    let lengths: Vec<usize> = sequences.iter().map(|s| s.ids.len()).collect();
    let bar = super::progress_bar(total_steps, "steps", opts.quiet);
    let mut window = (0.0f64, 0u64);
    while state.epoch < tc.epochs && state.step < total_steps {
        let bucket = tc.bucket_by_length.then_some(lengths.as_slice());
        let order = crate::data::epoch_order(n_train, tc.seed, state.epoch, bucket, batch_size);
        let micro: Vec<&[usize]> = order.chunks(batch_size).collect();
        state.micro_in_epoch = 0;
        while state.micro_in_epoch < micro_per_epoch && state.step < total_steps {
            let started = Instant::now();
            tch::manual_seed(crate::train::step_seed(tc.seed, state.step));
            let first = state.micro_in_epoch;
            let last = (first + tc.grad_accum).min(micro_per_epoch);
            let micro_batches: Vec<_> = (first..last)
                .map(|m| {
                    let seqs: Vec<&Sequence> =
                        micro[m as usize].iter().map(|&i| &sequences[i]).collect();
                    batch(&seqs, pad, device)
                })
                .collect();
            let step_loss = step::accumulate(&model, config, micro_batches.len(), |k| {
                let (input, positions, targets) = &micro_batches[k];
                answer_loss(&model, (input, positions, targets), true)
            });
            if !step_loss.is_finite() {
                bail!(
                    "the training loss ({step_loss}) at optimiser step {}: training stopped; \
                     lower optimiser.lr",
                    state.step + 1
                );
            }
            let mut update = step::apply_update(
                &mut model,
                &mut optimiser,
                &mut allocators,
                &plan,
                (
                    state.step,
                    crate::train::step_seed(
                        tc.seed,
                        (state.step + 1) | crate::train::ALLOCATION_SALT,
                    ),
                ),
                &mut state.allocation_activity,
                Some(&|m: &LmModel| {
                    let (input, positions, targets) = &micro_batches[0];
                    answer_loss(m, (input, positions, targets), false).double_value(&[])
                }),
            )?;
            state.allocation_seconds += update.allocation_seconds;
            state.step += 1;
            state.micro_in_epoch = last;
            run.record_rank_changes(&mut state, update.mask.take(), update.allocation.take())?;
            window = (window.0 + step_loss, window.1 + 1);
            if state.step % tc.log_every == 0 || state.step == total_steps {
                let mean = window.0 / window.1.max(1) as f64;
                state.loss_history.push((state.step, mean));
                run.log_metrics(&serde_json::json!({
                    "step": state.step, "epoch": state.epoch + 1, "loss": mean, "lr": update.lr,
                    "grad_norm": update.grad_norm,
                    "total_rank": allocators.ranks(&model).iter().sum::<usize>(),
                    "trainable_parameters": allocators.trainable_parameters(&model),
                }))?;
                bar.set_message(format!("loss {mean:.4}"));
                window = (0.0, 0);
            }
            bar.set_position(state.step);
            state.train_seconds += started.elapsed().as_secs_f64();
        }
        state.epoch += 1;
    }
    bar.finish_and_clear();
    save_adapter(&opts.output, &model)?;

    let eval_started = Instant::now();
    let outcomes = score_all(&model.model, &eval_questions, opts.quiet)?;
    let eval_seconds = eval_started.elapsed().as_secs_f64();
    let table = accuracies(&outcomes);
    write_outcomes(&opts.output.join("predictions.jsonl"), &outcomes)?;
    run.log_metrics(&serde_json::json!({"step": state.step, "test": table}))?;
    run.plots(
        &state,
        &matrix_labels(&model.adapted_paths),
        match allocators.adalora {
            Some(_) => config.method.r_init,
            None => config.method.r_max,
        },
        "acc",
    )?;
    if !opts.quiet {
        eprint!("{}", markdown_table(&table));
    }
    let summary = LmSummary {
        method: config.method.name,
        tasks: table,
        train_sequences: [n_train, skipped],
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
    let text = serde_json::to_string_pretty(&summary)?;
    crate::io::write_atomic(&opts.output.join("summary.json"), |w| {
        std::io::Write::write_all(w, text.as_bytes())
    })?;
    Ok(summary)
}

/// Writes the adapters to `<run>/adapter.safetensors` through a temporary file.
fn save_adapter(run: &Path, model: &LmModel) -> anyhow::Result<()> {
    let path = run.join(ADAPTER_FILE);
    let tmp = run.join(format!(".{ADAPTER_FILE}.tmp-{}", std::process::id()));
    let state = model.state();
    Tensor::write_safetensors(&state, &tmp)
        .and_then(|_| std::fs::rename(&tmp, &path).map_err(Into::into))
        .with_context(|| format!("writing {}", path.display()))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
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

/// `flexlora lm-eval`: scores the evaluation questions of `config` with the base model
/// (zero-shot) or, with `run`, with that decoder run's adapters; prints the table and writes
/// `output` (JSON: the table and every question's scores) when given.
pub fn lm_eval(
    config: &Config,
    run: Option<&Path>,
    output: Option<&Path>,
    quiet: bool,
) -> anyhow::Result<Vec<TaskAccuracy>> {
    crate::train::set_threads(config.training.threads);
    let device = crate::device::parse_device(&config.training.device)?;
    let (_, questions) = load_questions(config)?;
    let model = match run {
        Some(r) => LmModel::from_run(r, device)?.1.model,
        None => crate::models::LlamaModel::from_folder(&config.model.path, device)?,
    };
    let started = Instant::now();
    let outcomes = score_all(&model, &questions, quiet)?;
    let seconds = started.elapsed().as_secs_f64();
    let table = accuracies(&outcomes);
    print!("{}", markdown_table(&table));
    if let Some(path) = output {
        let value = serde_json::json!({
            "model": config.model.path, "run": run, "tasks": table,
            "eval_seconds": seconds, "outcomes": outcomes,
        });
        let text = serde_json::to_string_pretty(&value)?;
        crate::io::write_atomic(path, |w| std::io::Write::write_all(w, text.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(table)
}
