//! The training engine: the one loop every task trains through (sequence and image
//! classification in [`super::train`], causal language models in [`crate::lm::train_lm`]).
//!
//! The engine owns everything that is the same for every task: micro-batches and gradient
//! accumulation, the optimiser step with AdaLoRA's masking and FlexLoRA's allocation
//! ([`super::step`]), the numerical guards, `metrics.jsonl` and `ranks.jsonl`, step, best and
//! final checkpoints, exact resume, `--init-from`, the progress bar and the plots. A task
//! ([`TrainingTask`]) supplies only what differs: how a micro-batch is made from training items,
//! its loss, and what is validated at an epoch's end. What is tested after training, and the
//! summary, stay with the task's command.
//!
//! Determinism: LibTorch's generator is re-seeded from `(seed, step)` before every optimiser
//! step and before every allocation, and each epoch's item order is a function of
//! `(seed, epoch)`; so a run resumed from any checkpoint continues bit-identically.

use super::checkpoint::{self, BestEpoch, TrainerState};
use super::guards::NonFinite;
use super::model::TrainableModel;
use super::run::{self, RunDir};
use super::step::{self, Allocators, StepPlan};
use super::{ALLOCATION_SALT, TrainOptions, step_seed};
use crate::config::Config;
use crate::optim::AdamW;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use std::time::Instant;
use tch::Tensor;

/// What one epoch's validation found.
#[derive(Debug, Clone)]
pub struct Validation {
    /// The metric that selects the best epoch (higher is better).
    pub metric: f64,
    /// The `validation` record of `metrics.jsonl`.
    pub record: serde_json::Value,
    /// What the progress output says of it (after `epoch N: validation `).
    pub message: String,
}

/// What a task supplies to the engine.
pub trait TrainingTask {
    /// The model being trained.
    type Model: TrainableModel;
    /// A micro-batch on the run's device.
    type Batch;
    /// The number of training items (examples, sequences).
    fn train_len(&self) -> usize;
    /// Each training item's length, for `training.bucket_by_length`.
    fn train_lengths(&self) -> Vec<usize>;
    /// The micro-batch of the training items at `indices`.
    fn batch(&self, indices: &[usize]) -> anyhow::Result<Self::Batch>;
    /// The task loss of a micro-batch (a scalar; `train` turns dropout on).
    fn loss(&self, model: &Self::Model, batch: &Self::Batch, train: bool) -> Tensor;
    /// Validates `model` at an epoch's end; `None` when the task has no validation part (then
    /// the final state is the one tested).
    fn validate(&self, model: &Self::Model) -> anyhow::Result<Option<Validation>>;
    /// The validation metric's name (the loss plot's second axis).
    fn metric_name(&self) -> &str;
}

/// A trained run as the engine leaves it: the model holds the best validation epoch's state
/// (the final one when nothing was validated), and the final state is in
/// `checkpoints/final`.
#[derive(Debug)]
pub struct Trained {
    /// The trainer's state at the end (step, histories, allocation activity, times).
    pub state: TrainerState,
    /// The allocators at the end (ranks, AdaLoRA's pattern).
    pub allocators: Allocators,
    /// The epoch whose state the model holds, with its validation metric (`NaN` when nothing
    /// was validated: then the last epoch).
    pub best: BestEpoch,
}

/// Everything the loop carries from step to step.
struct Loop<'a, T: TrainingTask> {
    config: &'a Config,
    run: &'a RunDir,
    task: &'a T,
    plan: StepPlan<'a>,
    optimiser: AdamW,
    allocators: Allocators,
    state: TrainerState,
    total_steps: u64,
    quiet: bool,
    bar: ProgressBar,
    last_checkpoint_step: u64,
}

/// Trains `model` on `task` for `total_steps` optimiser steps into the prepared run directory
/// `run`: from scratch, from `opts.init_from`'s best (else final) checkpoint, or, with
/// `opts.resume`, from the run's newest valid checkpoint. `model` must have been built from
/// a generator seeded with `step_seed(seed, u64::MAX)`.
pub fn train_task<T: TrainingTask>(
    config: &Config,
    opts: &TrainOptions,
    run: &RunDir,
    task: &T,
    model: &mut T::Model,
    total_steps: u64,
) -> anyhow::Result<Trained> {
    if let Some(source) = opts.init_from.as_ref().filter(|_| !opts.resume) {
        let best = source.join("checkpoints/best");
        let dir = if best.exists() {
            best
        } else {
            source.join("checkpoints/final")
        };
        run::load_model_checkpoint(&dir, model)
            .with_context(|| format!("--init-from {}", source.display()))?;
    }
    let mut optimiser = step::optimiser_for(config, model);
    let mut allocators = Allocators::for_model(config, model, total_steps)?;
    if opts.resume {
        // Folders a killed writer left half-made (never read: they have no final name).
        for dir in [run.checkpoints(), opts.output.clone()] {
            crate::io::remove_stale_temporaries(&dir);
        }
    }
    let state = match run.latest_checkpoint(opts.resume)? {
        Some(dir) => {
            let state = run.load_checkpoint(&dir, model, &mut optimiser)?;
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
            let ranks = allocators.ranks(model);
            run.log_ranks(&serde_json::json!({"step": 0, "ranks": ranks, "initial": true}))?;
            TrainerState {
                allocation_activity: flexlora_core::AllocationActivity::new(&ranks),
                rank_history: vec![(0, ranks)],
                ..Default::default()
            }
        }
    };
    let mut lp = Loop {
        config,
        run,
        task,
        plan: StepPlan::new(config, total_steps),
        optimiser,
        allocators,
        last_checkpoint_step: state.step,
        bar: progress_bar(total_steps, state.step, opts.quiet),
        state,
        total_steps,
        quiet: opts.quiet,
    };
    let tc = &config.training;
    let micro_per_epoch = task.train_len().div_ceil(tc.batch_size as usize) as u64;
    let lengths = task.train_lengths();
    while lp.state.epoch < tc.epochs && lp.state.step < total_steps {
        let bucket = tc.bucket_by_length.then_some(lengths.as_slice());
        let order = crate::data::epoch_order(
            task.train_len(),
            tc.seed,
            lp.state.epoch,
            bucket,
            tc.batch_size as usize,
        );
        let micro: Vec<&[usize]> = order.chunks(tc.batch_size as usize).collect();
        while lp.state.micro_in_epoch < micro_per_epoch && lp.state.step < total_steps {
            lp.step(model, &micro, micro_per_epoch)?;
        }
        if lp.state.micro_in_epoch >= micro_per_epoch {
            lp.end_epoch(model)?;
        }
    }
    lp.bar.finish_and_clear();
    lp.finish(model)
}

impl<T: TrainingTask> Loop<'_, T> {
    /// One optimiser step over the next `grad_accum` micro-batches of this epoch's `micro`,
    /// with its logging and step checkpoint.
    fn step(
        &mut self,
        model: &mut T::Model,
        micro: &[&[usize]],
        micro_per_epoch: u64,
    ) -> anyhow::Result<()> {
        let config = self.config;
        let tc = &config.training;
        let started = Instant::now();
        let state = &mut self.state;
        tch::manual_seed(step_seed(tc.seed, state.step));
        let first = state.micro_in_epoch;
        let last = (first + tc.grad_accum).min(micro_per_epoch);
        let batches = (first..last)
            .map(|k| self.task.batch(micro[k as usize]))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let task = self.task;
        let step_loss = step::accumulate(&*model, config, batches.len(), |k| {
            task.loss(model, &batches[k], true)
        });
        let update = if step_loss.is_finite() {
            step::apply_update(
                model,
                &mut self.optimiser,
                &mut self.allocators,
                &self.plan,
                (
                    state.step,
                    step_seed(tc.seed, (state.step + 1) | ALLOCATION_SALT),
                ),
                &mut state.allocation_activity,
                Some(&|m: &T::Model| task.loss(m, &batches[0], false).double_value(&[])),
            )
        } else {
            Err(NonFinite {
                what: format!("the training loss ({step_loss})"),
                step: state.step + 1,
            }
            .into())
        }
        .map_err(|e| stop_on_non_finite(e, self.run, state.epoch))?;
        state.allocation_seconds += update.allocation_seconds;
        state.step += 1;
        state.micro_in_epoch = last;
        self.run
            .record_rank_changes(state, update.mask, update.allocation)?;
        state.loss_window = (state.loss_window.0 + step_loss, state.loss_window.1 + 1);
        if state.step % tc.log_every == 0 || state.step == self.total_steps {
            let mean = state.loss_window.0 / state.loss_window.1.max(1) as f64;
            state.loss_history.push((state.step, mean));
            self.run.log_metrics(&serde_json::json!({
                "step": state.step, "epoch": state.epoch + 1, "loss": mean, "lr": update.lr,
                "grad_norm": update.grad_norm,
                "total_rank": self.allocators.ranks(model).iter().sum::<usize>(),
                "trainable_parameters": self.allocators.trainable_parameters(model),
            }))?;
            self.bar.set_message(format!("loss {mean:.4}"));
            state.loss_window = (0.0, 0);
        }
        self.bar.set_position(state.step);
        state.train_seconds += started.elapsed().as_secs_f64();
        // At an epoch's last step the epoch-end checkpoint follows; none is written here, so a
        // checkpoint's step never splits an epoch end from its validation record.
        let epoch_ends = state.micro_in_epoch >= micro_per_epoch;
        if !epoch_ends && state.step - self.last_checkpoint_step >= tc.checkpoint_every {
            self.checkpoint(model)?;
        }
        Ok(())
    }

    /// Validation, the best checkpoint when it improved, and the epoch-end checkpoint.
    fn end_epoch(&mut self, model: &T::Model) -> anyhow::Result<()> {
        let state = &mut self.state;
        if let Some(val) = self.task.validate(model)? {
            state.validation_history.push((state.step, val.metric));
            self.run.log_metrics(&serde_json::json!({
                "step": state.step, "epoch": state.epoch + 1, "validation": val.record,
            }))?;
            if !self.quiet {
                self.bar.println(format!(
                    "epoch {}: validation {}",
                    state.epoch + 1,
                    val.message
                ));
            }
            if state.best.as_ref().is_none_or(|b| val.metric > b.metric) {
                state.best = Some(BestEpoch {
                    epoch: state.epoch,
                    step: state.step,
                    metric: val.metric,
                });
                self.run.save_best(model)?;
            }
        }
        state.epoch += 1;
        state.micro_in_epoch = 0;
        self.checkpoint(model)
    }

    fn checkpoint(&mut self, model: &T::Model) -> anyhow::Result<()> {
        self.run.save_checkpoint(
            &self.state,
            model,
            &self.optimiser,
            self.allocators.checkpointed(),
        )?;
        self.last_checkpoint_step = self.state.step;
        Ok(())
    }

    /// The final checkpoint, the plots, and the best epoch's state loaded into `model`.
    fn finish(self, model: &mut T::Model) -> anyhow::Result<Trained> {
        let Self {
            config,
            run,
            task,
            state,
            allocators,
            ..
        } = self;
        run.save_final(&state, model, allocators.checkpointed())?;
        let best = match &state.best {
            Some(best) => {
                run.load_best(model)?;
                best.clone()
            }
            None => BestEpoch {
                epoch: state.epoch.saturating_sub(1),
                step: state.step,
                metric: f64::NAN,
            },
        };
        let r_max = match allocators.adalora {
            Some(_) => config.method.r_init,
            None => config.method.r_max,
        };
        let labels = run::matrix_labels(model.adapted_paths());
        run.plots(&state, &labels, r_max, task.metric_name())?;
        Ok(Trained {
            state,
            allocators,
            best,
        })
    }
}

/// A progress bar over the run's optimiser steps, at `done` (hidden when `quiet`).
fn progress_bar(total_steps: u64, done: u64, quiet: bool) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total_steps).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  {per_sec}  eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    };
    bar.set_position(done);
    bar
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
