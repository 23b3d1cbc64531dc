//! `flexlora bench-decoder`: the memory and time of decoder training, flexlora against
//! transformers + PEFT on the same batch.
//!
//! The batch is the first `batch` training sequences of a decoder config's commonsense data, or
//! with `--longest` the longest ones (prompt, answer and end-of-sequence tokens, padded on the
//! right to the longest), the loss the
//! mean cross-entropy of the answer tokens on both sides, AdamW at the config's constant learning
//! rate. Every side runs in a fresh process
//! (so its peak resident memory, `VmHWM`, is its own): flexlora's training step for each method
//! asked ([`crate::train::step`], what `flexlora train` runs), and `LlamaForCausalLM` with PEFT's LoRA at the same
//! rank, `α` and target modules (python/bench/decoder_step.py). Each reports its peak memory,
//! the wall time of every step and every step's loss; the first step's loss is the base model's
//! on both sides (new adapters add nothing), which checks that the two compute the same thing.

use crate::config::Config;
use crate::lm::LmModel;
use crate::lm::train::{Sequence, answer_loss, load_questions, training_sequences};
use crate::train::step::{self, Allocators, StepPlan};
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// What `flexlora bench-decoder` was asked to do.
#[derive(Debug, Clone)]
pub struct DecoderBenchOptions {
    /// The decoder config (model, data, method settings).
    pub config: PathBuf,
    /// `--set` overrides.
    pub overrides: Vec<String>,
    /// Sequences in the batch.
    pub batch: usize,
    /// Take the longest training sequences (the job's worst case for memory) instead of the
    /// first.
    pub longest: bool,
    /// Optimiser steps per side.
    pub steps: usize,
    /// flexlora's methods to measure (`lora`, `flexlora`, `adalora`).
    pub methods: Vec<String>,
    /// Threads on every side.
    pub threads: usize,
    /// Work folder (the batch, each side's log and result, decoder-bench.json).
    pub workdir: PathBuf,
    /// The venv's Python.
    pub python: PathBuf,
}

/// One side's measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SideResult {
    /// `flexlora lora`, `flexlora flexlora`, `PEFT lora`, ...
    pub side: String,
    /// Peak resident memory of the process in MiB.
    pub peak_rss_mib: f64,
    /// Wall time of each optimiser step in seconds.
    pub step_seconds: Vec<f64>,
    /// The loss of each step.
    pub losses: Vec<f64>,
}

impl SideResult {
    /// The median step time, the first step left out when there are others (warm-up).
    pub fn median_step_seconds(&self) -> f64 {
        let mut t: Vec<f64> = self.step_seconds.iter().skip(1).copied().collect();
        if t.is_empty() {
            t = self.step_seconds.clone();
        }
        t.sort_by(f64::total_cmp);
        t.get(t.len() / 2).copied().unwrap_or(f64::NAN)
    }
}

/// What a worker process is told (written as JSON by the parent).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// The decoder config file and overrides (the method's included).
    pub config: PathBuf,
    /// See [`WorkerSpec::config`].
    pub overrides: Vec<String>,
    /// The batch: `input_ids`, `attention_mask` and `labels` (`-100` where no loss).
    pub batch_file: PathBuf,
    /// Optimiser steps.
    pub steps: usize,
    /// Threads.
    pub threads: usize,
    /// The side's name in the report.
    pub side: String,
    /// Where the worker writes its [`SideResult`].
    pub result: PathBuf,
    /// PEFT's side only: the decoder folder.
    pub model: PathBuf,
    /// PEFT's side only: LoRA's rank, `α`, dropout and target modules, AdamW's learning rate
    /// and weight decay, and the gradient clipping norm (0: none), as the config sets ours.
    pub r: usize,
    /// See [`WorkerSpec::r`].
    pub dropout: f64,
    /// See [`WorkerSpec::r`].
    pub lr: f64,
    /// See [`WorkerSpec::r`].
    pub weight_decay: f64,
    /// See [`WorkerSpec::r`].
    pub clip_norm: f64,
    /// See [`WorkerSpec::r`].
    pub alpha: f64,
    /// See [`WorkerSpec::r`].
    pub target_modules: Vec<String>,
}

/// The benchmark's batch as the three tensors both sides read.
fn batch_tensors(seqs: &[Sequence], pad: i64) -> Vec<(String, Tensor)> {
    let width = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(1);
    let n = seqs.len() * width;
    let (mut ids, mut mask, mut labels) = (vec![pad; n], vec![0i64; n], vec![-100i64; n]);
    for (b, s) in seqs.iter().enumerate() {
        let row = b * width;
        ids[row..row + s.ids.len()].copy_from_slice(&s.ids);
        mask[row..row + s.ids.len()].fill(1);
        labels[row + s.answer_start..row + s.ids.len()].copy_from_slice(&s.ids[s.answer_start..]);
    }
    let shape = [seqs.len() as i64, width as i64];
    [
        ("input_ids", ids),
        ("attention_mask", mask),
        ("labels", labels),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Tensor::from_slice(&v).view(shape)))
    .collect()
}

/// Runs every side and returns their results (also written to `workdir/decoder-bench.json`).
pub fn bench_decoder(opts: &DecoderBenchOptions) -> anyhow::Result<Vec<SideResult>> {
    let config = Config::load(&opts.config, &opts.overrides)?.config;
    std::fs::create_dir_all(&opts.workdir)
        .with_context(|| format!("creating {}", opts.workdir.display()))?;
    let (questions, _) = load_questions(&config)?;
    let llama = crate::models::LlamaConfig::from_folder(&config.model.path)?;
    let eos = llama.eos_token_ids.first().copied();
    let (mut sequences, _) = training_sequences(&questions, eos, config.data.max_length as i64);
    if opts.longest {
        // Stable: equal lengths keep the data's order.
        sequences.sort_by_key(|s| std::cmp::Reverse(s.ids.len()));
    }
    if sequences.len() < opts.batch {
        bail!(
            "{}: {} training sequences fit data.max_length, fewer than --batch {}",
            opts.config.display(),
            sequences.len(),
            opts.batch
        );
    }
    let batch_file = opts.workdir.join("decoder-batch.safetensors");
    Tensor::write_safetensors(
        &batch_tensors(&sequences[..opts.batch], eos.unwrap_or(0)),
        &batch_file,
    )?;
    let spec = |side: String, extra: &[String]| {
        // PEFT's side steps at a constant learning rate (no scheduler), so ours does too.
        let mut overrides = opts.overrides.clone();
        overrides.extend([
            "optimiser.lr_schedule=\"constant\"".to_string(),
            "optimiser.warmup_ratio=0.0".to_string(),
        ]);
        overrides.extend(extra.iter().cloned());
        WorkerSpec {
            config: opts.config.clone(),
            overrides,
            batch_file: batch_file.clone(),
            steps: opts.steps,
            threads: opts.threads,
            result: opts.workdir.join(format!("{}.json", file_stem(&side))),
            side,
            model: config.model.path.clone(),
            r: config.method.r_init,
            dropout: config.method.dropout,
            lr: config.optimiser.lr,
            weight_decay: config.optimiser.weight_decay,
            clip_norm: config.optimiser.clip_norm,
            alpha: config.method.alpha,
            target_modules: config.model.target_modules.clone(),
        }
    };
    let mut results = Vec::new();
    let exe = std::env::current_exe().context("locating the flexlora binary")?;
    for method in &opts.methods {
        let s = spec(
            format!("flexlora {method}"),
            &[format!("method.name=\"{method}\"")],
        );
        let mut cmd = Command::new(&exe);
        cmd.arg("bench-decoder")
            .arg("--worker")
            .arg(write_spec(&s, opts)?);
        results.push(run_side(cmd, &s, opts)?);
    }
    let s = spec("PEFT lora".into(), &[]);
    let mut cmd = Command::new(&opts.python);
    cmd.arg("python/bench/decoder_step.py")
        .arg(write_spec(&s, opts)?);
    results.push(run_side(cmd, &s, opts)?);
    let json = serde_json::to_string_pretty(&results)?;
    crate::io::write_atomic(&opts.workdir.join("decoder-bench.json"), |w| {
        std::io::Write::write_all(w, json.as_bytes())
    })?;
    Ok(results)
}

/// A side's name as a file name stem (`flexlora lora` -> `flexlora_lora`).
fn file_stem(side: &str) -> String {
    side.replace([' ', '+'], "_")
}

fn write_spec(spec: &WorkerSpec, opts: &DecoderBenchOptions) -> anyhow::Result<PathBuf> {
    let path = opts
        .workdir
        .join(format!("{}.spec.json", file_stem(&spec.side)));
    std::fs::write(&path, serde_json::to_string_pretty(spec)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn run_side(
    cmd: Command,
    spec: &WorkerSpec,
    opts: &DecoderBenchOptions,
) -> anyhow::Result<SideResult> {
    eprintln!("[bench-decoder] {}", spec.side);
    let log = opts.workdir.join(format!("{}.log", file_stem(&spec.side)));
    let _ = std::fs::remove_file(&log);
    super::child::run_measured(cmd, &log)?;
    let text = std::fs::read_to_string(&spec.result)
        .with_context(|| format!("reading {}", spec.result.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", spec.result.display()))
}

/// flexlora's side, in its own process: `spec.steps` optimiser steps of the training engine's
/// step on the batch, then the result file.
pub fn decoder_worker(spec_file: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(spec_file)
        .with_context(|| format!("reading {}", spec_file.display()))?;
    let spec: WorkerSpec =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", spec_file.display()))?;
    let config = Config::load(&spec.config, &spec.overrides)?.config;
    crate::train::set_threads(Some(spec.threads));
    let tensors: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(&spec.batch_file)?
            .into_iter()
            .collect();
    let (input, labels) = match (tensors.get("input_ids"), tensors.get("labels")) {
        (Some(i), Some(l)) => (i, l),
        _ => bail!("{}: input_ids or labels missing", spec.batch_file.display()),
    };
    // The loss positions: the token before each labelled one predicts it.
    let flat = labels.view([-1]);
    let labelled = flat.ne(-100).nonzero().view([-1]);
    let positions = &labelled - 1;
    let targets = flat.index_select(0, &labelled).to_kind(Kind::Int64);
    let total = spec.steps.max(1) as u64;
    tch::manual_seed(0);
    let mut model = LmModel::build(&config, Device::Cpu)?;
    let mut optimiser = step::optimiser_for(&config, &model);
    let mut allocators = Allocators::for_model(&config, &model, total)?;
    let plan = StepPlan::new(&config, total);
    let mut activity = Default::default();
    let (mut step_seconds, mut losses) = (Vec::new(), Vec::new());
    for s in 0..spec.steps {
        let started = Instant::now();
        let loss = step::accumulate(&model, &config, 1, |_| {
            answer_loss(&model, (input, &positions, &targets), true)
        });
        step::apply_update(
            &mut model,
            &mut optimiser,
            &mut allocators,
            &plan,
            (s as u64, s as i64),
            &mut activity,
            None,
        )?;
        step_seconds.push(started.elapsed().as_secs_f64());
        losses.push(loss);
    }
    let result = SideResult {
        side: spec.side.clone(),
        peak_rss_mib: crate::train::peak_rss_mib(),
        step_seconds,
        losses,
    };
    std::fs::write(&spec.result, serde_json::to_string_pretty(&result)?)
        .with_context(|| format!("writing {}", spec.result.display()))?;
    Ok(())
}

/// The results as a Markdown table: peak memory and median step time, each also as a ratio to
/// PEFT's, and the first step's loss.
pub fn markdown(results: &[SideResult]) -> String {
    let peft = results.iter().find(|r| r.side.starts_with("PEFT"));
    let mut out = String::from(
        "| side | peak memory (MiB) | vs PEFT | median step (s) | vs PEFT | first loss |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for r in results {
        let ratio = |ours: f64, theirs: Option<f64>| {
            theirs.map_or("".to_string(), |t| format!("{:.2}x", ours / t))
        };
        out.push_str(&format!(
            "| {} | {:.0} | {} | {:.2} | {} | {:.4} |\n",
            r.side,
            r.peak_rss_mib,
            ratio(r.peak_rss_mib, peft.map(|p| p.peak_rss_mib)),
            r.median_step_seconds(),
            ratio(
                r.median_step_seconds(),
                peft.map(|p| p.median_step_seconds())
            ),
            r.losses.first().copied().unwrap_or(f64::NAN),
        ));
    }
    out
}

/// Arguments of `flexlora bench-decoder`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchDecoderArgs {
    /// The decoder config (model, commonsense data, method settings).
    #[arg(long, default_value = crate::config_file::DEFAULT_DECODER_CONFIG)]
    pub config: PathBuf,
    /// Override a config value on both sides (repeatable), e.g. --set method.r_init=16.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Sequences in the batch (the config's first training sequences).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Take the longest training sequences (the job's worst case for memory) instead of the
    /// first.
    #[arg(long)]
    pub longest: bool,
    /// Optimiser steps per side (the first is left out of the median time).
    #[arg(long, default_value_t = 4)]
    pub steps: usize,
    /// flexlora's methods, comma-separated (PEFT's side is LoRA).
    #[arg(long, default_value = "lora,flexlora", value_delimiter = ',')]
    pub methods: Vec<String>,
    /// Threads on every side (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Work folder (the batch, each side's spec, log and result, decoder-bench.json).
    #[arg(long, default_value = "runs/bench-decoder")]
    pub workdir: PathBuf,
    /// The Python with torch, transformers and PEFT.
    #[arg(long, default_value = ".venv/bin/python")]
    pub python: PathBuf,
    /// Internal: run one flexlora side from this spec file.
    #[arg(long, hide = true)]
    pub worker: Option<PathBuf>,
}

/// Runs `flexlora bench-decoder`: every side, then the table on stdout.
pub fn bench_decoder_command(args: BenchDecoderArgs) -> anyhow::Result<()> {
    if let Some(spec) = &args.worker {
        return decoder_worker(spec);
    }
    if args.batch == 0 || args.steps == 0 {
        bail!("--batch and --steps must be at least 1");
    }
    let opts = DecoderBenchOptions {
        config: args.config,
        overrides: args.overrides,
        batch: args.batch,
        longest: args.longest,
        steps: args.steps,
        methods: args.methods,
        threads: args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        workdir: args.workdir,
        python: args.python,
    };
    let results = bench_decoder(&opts)?;
    print!("{}", markdown(&results));
    Ok(())
}
