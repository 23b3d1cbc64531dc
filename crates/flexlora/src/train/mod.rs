//! `flexlora train` for classifiers (text and images): the task the training engine
//! ([`engine`]) runs, evaluation, checkpoints and the run directory.
//!
//! One optimiser step = `grad_accum` micro-batches: forward, task loss + orthogonality
//! regulariser (divided by the number of micro-batches), backward; then gradient clipping, the
//! AdamW step at the scheduled learning rate, for AdaLoRA the sensitivity update and masking
//! (before the gradients are zeroed, as PEFT's `update_and_allocate`; see [`crate::adalora`]),
//! and, for FlexLoRA, the allocation step if the schedule says so ([`step`]). Steps are
//! counted in optimiser steps everywhere. The loop itself, its checkpoints and its
//! determinism are the engine's, shared with decoder runs ([`crate::lm::train_lm`]).

pub mod checkpoint;
pub mod commands;
pub mod engine;
pub mod eval;
pub mod guards;
mod memory;
pub mod model;
pub mod predictions;
pub mod run;
pub mod step;

use crate::config::{Config, MethodName};
use crate::data::{self, Example};
use crate::models::{ModelInput, Preprocessor};
use anyhow::bail;
use engine::{TrainingTask, Validation};
use model::TaskModel;
use run::RunDir;
use std::io::Write as _;
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

/// Sequence or image classification (and regression) as a [`TrainingTask`]: batches of
/// labelled examples, the model's task loss, the validation split's metric.
struct ClassificationTask<'a> {
    preprocessor: &'a Preprocessor,
    splits: &'a data::Splits,
    eval_batch_size: usize,
    device: Device,
}

impl TrainingTask for ClassificationTask<'_> {
    type Model = TaskModel;
    type Batch = (ModelInput, Tensor);

    fn train_len(&self) -> usize {
        self.splits.train.len()
    }

    fn train_lengths(&self) -> Vec<usize> {
        self.splits.train.iter().map(|e| e.text.len()).collect()
    }

    fn batch(&self, indices: &[usize]) -> anyhow::Result<Self::Batch> {
        let examples: Vec<&Example> = indices.iter().map(|&i| &self.splits.train[i]).collect();
        batch_tensors(self.preprocessor, &examples, self.device)
    }

    fn loss(&self, model: &TaskModel, (input, labels): &Self::Batch, train: bool) -> Tensor {
        model.loss(input, labels, train).0
    }

    fn validate(&self, model: &TaskModel) -> anyhow::Result<Option<Validation>> {
        if self.splits.validation.is_empty() {
            return Ok(None);
        }
        let metric = self.splits.metric;
        let val = eval::evaluate(
            model,
            self.preprocessor,
            &self.splits.validation,
            metric,
            self.eval_batch_size,
            self.device,
        )?;
        Ok(Some(Validation {
            metric: val.metric,
            record: val.to_json(metric),
            message: format!("{} {:.4} (loss {:.4})", metric.name(), val.metric, val.loss),
        }))
    }

    fn metric_name(&self) -> &str {
        self.splits.metric.name()
    }
}

/// Trains the run described by `config` into `opts.output`, tests its best epoch and returns
/// the summary, which [`write_summary`] then writes (after the caller's PEFT export: the PEFT
/// format is a layer above training).
pub fn train(config: &Config, opts: &TrainOptions) -> anyhow::Result<Summary> {
    let wall = Instant::now();
    let tc = &config.training;
    set_threads(tc.threads);
    let device = crate::device::parse_device(&tc.device)?;
    // Everything that can be refused is checked before the run directory is touched: the
    // model's kind of input first (the clearer error), then the data and the schedule.
    let preprocessor = Preprocessor::for_model(&config.model.path, &config.data)?;
    let splits = data::load_splits(&config.data)?;
    let n_train = splits.train.len();
    let total_steps = config.total_steps(n_train as u64);
    validate_schedule(config, total_steps, &opts.output, opts.quiet)?;
    memory::check_step_memory(config, &preprocessor)?;
    tch::manual_seed(step_seed(tc.seed, u64::MAX));
    let mut model = TaskModel::build(config, splits.num_labels(), splits.task, device)?;
    let run = RunDir::prepare(&opts.output, config, opts.resume, opts.overwrite)?;
    let task = ClassificationTask {
        preprocessor: &preprocessor,
        splits: &splits,
        eval_batch_size: tc.eval_batch_size as usize,
        device,
    };
    let trained = engine::train_task(config, opts, &run, &task, &mut model, total_steps)?;
    let (state, allocators, best) = (&trained.state, &trained.allocators, &trained.best);

    // Test with the best validation epoch's parameters (the final state when there was no
    // validation split).
    let test = eval::evaluate(
        &model,
        &preprocessor,
        &splits.test,
        splits.metric,
        tc.eval_batch_size as usize,
        device,
    )?;
    run.log_metrics(&serde_json::json!({"step": state.step, "test": test.to_json(splits.metric), "best_epoch": best.epoch + 1}))?;
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
    Ok(summary)
}

/// Writes `summary.json` into the run directory `output`: the last file of a run, since a
/// summary marks the run finished (the caller writes the PEFT adapter folder first).
pub fn write_summary(
    output: &std::path::Path,
    summary: &impl serde::Serialize,
) -> anyhow::Result<()> {
    fail::fail_point!("train.before_summary", |a| Err(crate::faults::io_error(
        "train.before_summary",
        a
    )
    .into()));
    let text = serde_json::to_string_pretty(summary)?;
    crate::io::write_atomic(&output.join("summary.json"), |w| {
        w.write_all(text.as_bytes())
    })?;
    Ok(())
}

/// Refuses a FlexLoRA or AdaLoRA schedule that does not fit a run of `total_steps` steps
/// (naming the config the run in `output` has), and prints FlexLoRA's warnings when its ranks
/// cannot move (unless `quiet`).
pub(crate) fn validate_schedule(
    config: &Config,
    total_steps: u64,
    output: &std::path::Path,
    quiet: bool,
) -> anyhow::Result<()> {
    let origin = output.join("config.toml").display().to_string();
    match config.method.name {
        MethodName::Flexlora => {
            crate::validate::schedule(config, total_steps, &origin)?;
            if !quiet {
                for w in crate::plan::movement_warnings(config, total_steps) {
                    eprintln!("warning: {w}");
                }
            }
        }
        MethodName::Adalora => crate::validate::adalora_schedule(config, total_steps, &origin)?,
        _ => {}
    }
    Ok(())
}

/// The run's resolved config, as written in its directory.
pub fn load_run_config(run_dir: &std::path::Path) -> anyhow::Result<Config> {
    let path = run_dir.join("config.toml");
    if !path.exists() {
        bail!("{}: no run there (config.toml missing)", run_dir.display());
    }
    Ok(Config::load(&path, &[])?.config)
}
