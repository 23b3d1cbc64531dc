//! `flexlora train`: the training loop, evaluation, checkpoints and the run directory.
//!
//! One optimiser step = `grad_accum` micro-batches: forward, task loss + orthogonality
//! regulariser (divided by the number of micro-batches), backward; then gradient clipping, the
//! AdamW step at the scheduled learning rate, for AdaLoRA the sensitivity update and masking
//! (before the gradients are zeroed, as PEFT's `update_and_allocate`; see [`crate::adalora`]),
//! and, for FlexLoRA, the allocation step if the schedule says so. Steps are counted in
//! optimiser steps everywhere.
//!
//! Determinism: LibTorch's generator is re-seeded from `(seed, step)` before every optimiser
//! step and before every allocation, and each epoch's data order is a function of
//! `(seed, epoch)`; so a run resumed from any checkpoint continues bit-identically.

pub mod checkpoint;
pub mod commands;
pub mod eval;
pub mod guards;
mod memory;
pub mod model;
pub mod run;
pub mod step;

use crate::config::{Config, MethodName};
use crate::data::{self, Example};
use crate::models::{ModelInput, Preprocessor};
use anyhow::{Context, bail};
use checkpoint::{BestEpoch, TrainerState};
use guards::NonFinite;
use indicatif::{ProgressBar, ProgressStyle};
use model::TaskModel;
use run::RunDir;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Tensor};

/// How to run `train` (the rest is in the config).
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The run directory.
    pub output: PathBuf,
    /// Continue the run in `output` from its newest valid checkpoint.
    pub resume: bool,
    /// Replace a finished or unfinished run in `output`.
    pub overwrite: bool,
    /// Initialise the trainable state from this run's best (else final) checkpoint.
    pub init_from: Option<PathBuf>,
    /// No progress bar or progress messages.
    pub quiet: bool,
}

/// What a finished run reports (`summary.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// The method.
    pub method: MethodName,
    /// Name of the reported metric.
    pub metric: String,
    /// Test metric of the best validation epoch.
    pub test_metric: f64,
    /// Best validation metric; `NaN`, written as `null` in `summary.json`, when no validation
    /// ran (training stopped before the first epoch ended, e.g. at `training.max_steps`; the
    /// test metric is then of the final parameters).
    #[serde(deserialize_with = "null_as_nan")]
    pub validation_metric: f64,
    /// 0-based epoch with the best validation metric.
    pub best_epoch: u64,
    /// Examples in train / validation / test.
    pub examples: [usize; 3],
    /// Trainable parameters at the end (active slots only; AdaLoRA: kept triplets only).
    pub trainable_parameters: i64,
    /// Sum of adapter ranks at the end (SVD adapters).
    pub total_rank: usize,
    /// Optimiser steps.
    pub steps: u64,
    /// Seconds spent training (evaluation excluded).
    pub train_seconds: f64,
    /// Wall time of the whole command, in seconds.
    pub wall_seconds: f64,
    /// Optimiser steps per second of training time.
    pub steps_per_second: f64,
    /// Seconds of the training time spent in the rank allocators (AdaLoRA's sensitivity
    /// updates and masking, FlexLoRA's scoring and allocation); 0 in runs made before it was
    /// recorded.
    #[serde(default)]
    pub allocation_seconds: f64,
    /// How much FlexLoRA's allocation acted: moves, the fraction of the total rank moved,
    /// matrices that ever changed rank, moves undone at the next adjustment, and the mean and
    /// last Kendall τ_b of the importance ranking between consecutive adjustments (`null` for
    /// other methods).
    #[serde(default)]
    pub allocation: Option<flexlora_core::ActivityReport>,
    /// Peak resident memory of the process in MiB (`VmHWM`; 0 where the platform has no
    /// `/proc/self/status`, and in runs made before it was recorded).
    #[serde(default)]
    pub peak_rss_mib: f64,
    /// The seed.
    pub seed: u64,
}

/// This process's peak resident memory in MiB (`VmHWM` of `/proc/self/status`: per address
/// space, so it starts afresh at `exec`), or 0 where unavailable.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// JSON has no NaN: serde_json writes it as `null`, read back here as NaN.
fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v: Option<f64> = serde::Deserialize::deserialize(d)?;
    Ok(v.unwrap_or(f64::NAN))
}

/// Derives the generator seed of one step (SplitMix64 finaliser of `seed` and `salt`).
pub(crate) fn step_seed(seed: u64, salt: u64) -> i64 {
    let mut z = seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}

/// Salt for the generator state of allocation steps, kept apart from the training steps'.
pub(crate) const ALLOCATION_SALT: u64 = 1 << 62;

/// Sets LibTorch's intra-op threads to `threads` (`training.threads`), all cores when unset.
pub(crate) fn set_threads(threads: Option<usize>) {
    let n = threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    tch::set_num_threads(n as i32);
}

/// A batch of examples as model inputs and a label tensor.
pub(crate) fn batch_tensors(
    preprocessor: &Preprocessor,
    examples: &[&Example],
    device: Device,
) -> anyhow::Result<(ModelInput, Tensor)> {
    let input = preprocessor.batch(examples, device)?;
    let labels: Vec<f32> = examples.iter().map(|e| e.label).collect();
    Ok((input, Tensor::from_slice(&labels).to_device(device)))
}

/// Trains the run described by `config` into `opts.output` and returns its summary.
pub fn train(config: &Config, opts: &TrainOptions) -> anyhow::Result<Summary> {
    let wall = Instant::now();
    let tc = &config.training;
    set_threads(tc.threads);
    let device = crate::device::parse_device(&tc.device)?;
    let run = RunDir::prepare(&opts.output, config, opts.resume, opts.overwrite)?;
    // Before the data is read: a model that cannot read this kind of data is the clearer error.
    let preprocessor = Preprocessor::for_model(&config.model.path, &config.data)?;

    let splits = data::load_splits(&config.data)?;
    let n_train = splits.train.len();
    let total_steps = config.total_steps(n_train as u64);
    if config.method.name == MethodName::Flexlora {
        crate::validate::schedule(config, total_steps, &run.config_origin())?;
        if !opts.quiet {
            for w in crate::plan::movement_warnings(config, total_steps) {
                eprintln!("warning: {w}");
            }
        }
    }
    if config.method.name == MethodName::Adalora {
        crate::validate::adalora_schedule(config, total_steps, &run.config_origin())?;
    }
    memory::check_step_memory(config, &preprocessor)?;
    tch::manual_seed(step_seed(tc.seed, u64::MAX));
    let mut model = TaskModel::build(config, splits.num_labels(), splits.task, device)?;
    if let Some(source) = &opts.init_from {
        if !opts.resume {
            let best = source.join("checkpoints/best");
            let dir = if best.exists() {
                best
            } else {
                source.join("checkpoints/final")
            };
            run::load_model_checkpoint(&dir, &mut model)
                .with_context(|| format!("--init-from {}", source.display()))?;
        }
    }
    let mut optimiser = step::optimiser_for(config, &model);
    let mut allocators = step::Allocators::for_model(config, &model, total_steps)?;
    let plan = step::StepPlan::new(config, total_steps);

    // AdaLoRA's rank is the number of triplets its latest mask kept (crate::adalora).
    if opts.resume {
        // Folders a killed writer left half-made (never read: they have no final name).
        for dir in [run.checkpoints(), opts.output.clone()] {
            crate::io::remove_stale_temporaries(&dir);
        }
    }
    let mut state = match run.latest_checkpoint(opts.resume)? {
        Some(dir) => {
            let state = run.load_checkpoint(&dir, &mut model, &mut optimiser)?;
            if let Some(a) = allocators.checkpointed_mut() {
                run.load_allocator(&dir, a)?;
            }
            if !opts.quiet {
                eprintln!(
                    "resuming {} from optimiser step {}",
                    opts.output.display(),
                    state.step
                );
            }
            state
        }
        None => {
            let state = TrainerState {
                rank_history: vec![(0, allocators.ranks(&model))],
                allocation_activity: flexlora_core::AllocationActivity::new(
                    &allocators.ranks(&model),
                ),
                ..Default::default()
            };
            run.log_ranks(
                &serde_json::json!({"step": 0, "ranks": allocators.ranks(&model), "initial": true}),
            )?;
            state
        }
    };

    let batch = tc.batch_size as usize;
    let accum = tc.grad_accum;
    let micro_per_epoch = n_train.div_ceil(batch) as u64;
    let lengths: Vec<usize> = splits.train.iter().map(|e| e.text.len()).collect();
    let bar = if opts.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total_steps).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  {per_sec}  eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    };
    bar.set_position(state.step);
    let mut last_checkpoint_step = state.step;

    while state.epoch < tc.epochs && state.step < total_steps {
        let bucket = tc.bucket_by_length.then_some(lengths.as_slice());
        let order = data::epoch_order(n_train, tc.seed, state.epoch, bucket, batch);
        let micro: Vec<&[usize]> = order.chunks(batch).collect();
        while state.micro_in_epoch < micro_per_epoch && state.step < total_steps {
            let step_started = Instant::now();
            tch::manual_seed(step_seed(tc.seed, state.step));
            let first = state.micro_in_epoch;
            let last = (first + accum).min(micro_per_epoch);
            let mut micro_batches = Vec::with_capacity((last - first) as usize);
            for k in first..last {
                let examples: Vec<&Example> = micro[k as usize]
                    .iter()
                    .map(|&i| &splits.train[i])
                    .collect();
                micro_batches.push(batch_tensors(&preprocessor, &examples, device)?);
            }
            let step_loss = step::accumulate_gradients(&model, &micro_batches, config);
            let update = if step_loss.is_finite() {
                step::apply_update(
                    &mut model,
                    &mut optimiser,
                    &mut allocators,
                    &plan,
                    (
                        state.step,
                        step_seed(tc.seed, (state.step + 1) | ALLOCATION_SALT),
                    ),
                    &mut state.allocation_activity,
                    Some(&|m: &TaskModel| {
                        let (input, labels) = &micro_batches[0];
                        m.loss(input, labels, false).0.double_value(&[])
                    }),
                )
            } else {
                Err(NonFinite {
                    what: format!("the training loss ({step_loss})"),
                    step: state.step + 1,
                }
                .into())
            }
            .map_err(|e| stop_on_non_finite(e, &run, state.epoch))?;
            let (grad_norm, lr) = (update.grad_norm, update.lr);
            state.allocation_seconds += update.allocation_seconds;
            state.step += 1;
            state.micro_in_epoch = last;
            run.record_rank_changes(&mut state, update.mask, update.allocation)?;
            let window = &mut state.loss_window;
            *window = (window.0 + step_loss, window.1 + 1);
            if state.step % tc.log_every == 0 || state.step == total_steps {
                let mean = state.loss_window.0 / state.loss_window.1.max(1) as f64;
                state.loss_history.push((state.step, mean));
                run.log_metrics(&serde_json::json!({
                    "step": state.step, "epoch": state.epoch + 1, "loss": mean, "lr": lr,
                    "grad_norm": grad_norm,
                    "total_rank": allocators.ranks(&model).iter().sum::<usize>(),
                    "trainable_parameters": allocators.trainable_parameters(&model),
                }))?;
                bar.set_message(format!("loss {mean:.4}"));
                state.loss_window = (0.0, 0);
            }
            bar.set_position(state.step);
            state.train_seconds += step_started.elapsed().as_secs_f64();
            // At an epoch's last step the epoch-end checkpoint follows; none is written here, so
            // a checkpoint's step never splits an epoch end from its validation record.
            let epoch_ends = state.micro_in_epoch >= micro_per_epoch;
            if !epoch_ends && state.step - last_checkpoint_step >= tc.checkpoint_every {
                run.save_checkpoint(&state, &model, &optimiser, allocators.checkpointed())?;
                last_checkpoint_step = state.step;
            }
        }
        if state.micro_in_epoch >= micro_per_epoch {
            let val = eval::evaluate(
                &model,
                &preprocessor,
                &splits.validation,
                splits.metric,
                tc.eval_batch_size as usize,
                device,
            )?;
            state.validation_history.push((state.step, val.metric));
            run.log_metrics(&serde_json::json!({
                "step": state.step, "epoch": state.epoch + 1, "validation": val.to_json(splits.metric),
            }))?;
            if !opts.quiet {
                bar.println(format!(
                    "epoch {}: validation {} {:.4} (loss {:.4})",
                    state.epoch + 1,
                    splits.metric.name(),
                    val.metric,
                    val.loss
                ));
            }
            if state.best.as_ref().is_none_or(|b| val.metric > b.metric) {
                state.best = Some(BestEpoch {
                    epoch: state.epoch,
                    step: state.step,
                    metric: val.metric,
                });
                run.save_best(&model)?;
            }
            state.epoch += 1;
            state.micro_in_epoch = 0;
            run.save_checkpoint(&state, &model, &optimiser, allocators.checkpointed())?;
            last_checkpoint_step = state.step;
        }
    }
    bar.finish_and_clear();
    run.save_final(&state, &model, allocators.checkpointed())?;

    // Test with the best validation epoch's parameters (the final state when there was no
    // validation split).
    let best = state.best.clone().unwrap_or(BestEpoch {
        epoch: state.epoch.saturating_sub(1),
        step: state.step,
        metric: f64::NAN,
    });
    if state.best.is_some() {
        run.load_best(&mut model)?;
    }
    let test = eval::evaluate(
        &model,
        &preprocessor,
        &splits.test,
        splits.metric,
        tc.eval_batch_size as usize,
        device,
    )?;
    run.log_metrics(&serde_json::json!({"step": state.step, "test": test.to_json(splits.metric), "best_epoch": best.epoch + 1}))?;
    let matrix_labels = run::matrix_labels(&model.adapted_paths);
    run.plots(
        &state,
        &matrix_labels,
        match allocators.adalora {
            Some(_) => config.method.r_init,
            None => config.method.r_max,
        },
        splits.metric.name(),
    )?;
    let summary = Summary {
        method: config.method.name,
        metric: splits.metric.name().to_string(),
        test_metric: test.metric,
        validation_metric: best.metric,
        best_epoch: best.epoch + 1,
        examples: [n_train, splits.validation.len(), splits.test.len()],
        trainable_parameters: allocators.trainable_parameters(&model),
        total_rank: allocators.ranks(&model).iter().sum(),
        steps: state.step,
        train_seconds: state.train_seconds,
        wall_seconds: wall.elapsed().as_secs_f64(),
        steps_per_second: state.step as f64 / state.train_seconds.max(1e-9),
        allocation_seconds: state.allocation_seconds,
        allocation: (config.method.name == MethodName::Flexlora)
            .then(|| state.allocation_activity.report()),
        peak_rss_mib: peak_rss_mib(),
        seed: tc.seed,
    };
    // The adapter in Hugging Face PEFT's format, for use without flexlora (full runs: `merge`).
    let format = match config.method.name {
        MethodName::Flexlora | MethodName::Lora => Some(crate::peft::PeftFormat::Lora),
        MethodName::Adalora => Some(crate::peft::PeftFormat::Adalora),
        MethodName::Full | MethodName::LinearProbe => None,
    };
    if let Some(format) = format {
        crate::peft::export_run(&opts.output, format, &opts.output.join("adapter"))?;
    }
    fail::fail_point!("train.before_summary", |a| Err(crate::faults::io_error(
        "train.before_summary",
        a
    )
    .into()));
    run.write_summary(&summary)?;
    Ok(summary)
}

/// Adds to a [`NonFinite`] error which checkpoint a resumed run would start from and what to
/// change; other errors pass through.
fn stop_on_non_finite(e: anyhow::Error, run: &RunDir, epoch: u64) -> anyhow::Error {
    if !e.is::<NonFinite>() {
        return e;
    }
    let last_good = match checkpoint::latest_valid(&run.checkpoints()) {
        Some(dir) => format!("the last good checkpoint is {}", dir.display()),
        None => "no checkpoint had been written yet".to_string(),
    };
    anyhow::anyhow!(
        "{e} (epoch {}): training stopped; {last_good}. Lower optimiser.lr or check the data.",
        epoch + 1
    )
}

/// The run's resolved config, as written in its directory.
pub fn load_run_config(run_dir: &std::path::Path) -> anyhow::Result<Config> {
    let path = run_dir.join("config.toml");
    if !path.exists() {
        bail!("{}: no run there (config.toml missing)", run_dir.display());
    }
    Ok(Config::load(&path, &[])?.config)
}
