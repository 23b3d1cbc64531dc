//! `flexlora bench`: flexlora against transformers + PEFT on the same machine, model, data,
//! shapes, adapter placement, rank and thread count, in one run.
//!
//! - Training step at fixed shapes (batch × length, default 32 × 64, real sentences padded):
//!   flexlora's own step ([`crate::train::step`], the code `flexlora train` runs) for LoRA,
//!   AdaLoRA and FlexLoRA, and PEFT's LoRA and AdaLoRA in persistent Python workers; the sides
//!   alternate round by round and each figure is the median of all timed steps.
//! - The step's GEMM work counted from the shapes ([`gemm::step_gemms`]) against this
//!   machine's GEMM rate measured on the same shapes in the same run ([`gemm::measure_peak`]).
//! - Inference throughput over the test split (each side batching by length, no gradients).
//! - The whole main job (train + validation every epoch + test), each side a separate process
//!   (`flexlora train`, `python/bench/peft_job.py`) with dynamic padding, timed from outside
//!   with its peak resident memory; the allocators' share of flexlora's training time.

mod child;
pub mod decoder;
pub mod gemm;
pub mod inference;
mod python;
mod report;

pub use report::BenchReport;

use crate::config::Config;
use crate::data::{self, Example};
use crate::models::TextTokenizer;
use crate::optim::AdamW;
use crate::train::model::TaskModel;
use crate::train::step::{self, Allocators, StepPlan};
use anyhow::{Context, bail};
use child::run_measured;
use python::PeftWorker;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// What `flexlora bench` was asked to do.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The main job's config.
    pub config: PathBuf,
    /// `--set` overrides.
    pub overrides: Vec<String>,
    /// A few steps and a 3-step job: checks that everything runs, measures nothing useful.
    pub quick: bool,
    /// Alternating rounds of the step benchmark.
    pub rounds: usize,
    /// Timed steps per side and round.
    pub steps: usize,
    /// Batch size and padded length of the step benchmark.
    pub batch: usize,
    /// See `batch`.
    pub seq: usize,
    /// Threads on both sides (default: every core).
    pub threads: Option<usize>,
    /// Work folder (logs, data for the Python side, the jobs' run directories, bench.json).
    pub workdir: PathBuf,
    /// Also write the report as Markdown here (e.g. docs/benchmarks.md).
    pub markdown: Option<PathBuf>,
    /// The venv's Python.
    pub python: PathBuf,
    /// Skip the whole-job comparison.
    pub skip_jobs: bool,
    /// The command line, for the report.
    pub command_line: String,
}

/// The methods of the step benchmark on each side: (flexlora method, PEFT method or none).
const STEP_METHODS: [(&str, Option<&str>); 3] = [
    ("lora", Some("lora")),
    ("adalora", Some("adalora")),
    ("flexlora", None),
];

/// The config of `method` for the comparison: the base config with AdaLoRA at the equal budget
/// the ablation runner uses (1.5 · r_init pruned to r_init).
fn method_config(opts: &BenchOptions, method: &str, extra: &[String]) -> anyhow::Result<Config> {
    Ok(Config::load(&opts.config, &method_overrides(opts, method, extra)?)?.config)
}

/// Every `--set` of `method`'s config: the user's, the method's (from the base config, as the
/// ablation runner builds it), then `extra`.
fn method_overrides(
    opts: &BenchOptions,
    method: &str,
    extra: &[String],
) -> anyhow::Result<Vec<String>> {
    let base = Config::load(&opts.config, &opts.overrides)?.config;
    let v = crate::ablate::variant(method, &base).with_context(|| format!("no method {method}"))?;
    let mut o = opts.overrides.clone();
    o.extend(v.overrides);
    o.extend(extra.iter().cloned());
    Ok(o)
}

/// The short mode: jobs of 3 optimiser steps (the first entry), and allocation schedules that
/// fit in a run that short (the rest, applied everywhere).
const QUICK_JOB: [&str; 4] = [
    "training.max_steps=3",
    "schedule.t_init=0",
    "schedule.t_final=1",
    "schedule.delta_t=1",
];

/// The Python worker's spec for `method` (PEFT's names), from our config of the same method.
fn peft_spec(
    c: &Config,
    method: &str,
    threads: usize,
    batch_file: &Path,
    total: u64,
) -> serde_json::Value {
    // The same layers as model.target_modules (all six linear layers of every encoder layer).
    let target = r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)";
    serde_json::json!({
        "method": method,
        "threads": threads,
        "batch": batch_file,
        "target_modules": target,
        "r": c.method.r_init,
        "alpha": c.method.alpha,
        "init_r": c.method.r_init,
        "target_r": c.method.target_r,
        "tinit": c.schedule.t_init.steps(total),
        "tfinal": c.schedule.t_final.steps(total),
        "deltaT": c.schedule.delta_t,
        "total_step": total,
        "orth_reg_weight": c.method.orth_reg_weight,
        "lr": c.optimiser.lr,
        "warmup_ratio": c.optimiser.warmup_ratio,
        "clip_norm": c.optimiser.clip_norm,
        "max_length": c.data.max_length,
        "eval_batch_size": c.training.eval_batch_size,
        "epochs": c.training.epochs,
        "batch_size": c.training.batch_size,
        "seed": c.training.seed,
        // training.precision = "bf16" on our side; PEFT's side then runs its forward and loss
        // under torch.autocast("cpu", bfloat16), the documented way to get bf16 there.
        "bf16": c.training.precision.base_kind(tch::Device::Cpu) == tch::Kind::BFloat16,
    })
}

/// flexlora's side of the step benchmark for one method.
struct OurStep<'a> {
    model: TaskModel,
    optimiser: AdamW,
    allocators: Allocators,
    plan: StepPlan<'a>,
    activity: flexlora_core::AllocationActivity,
    step: u64,
}

impl<'a> OurStep<'a> {
    fn new(config: &'a Config, num_labels: usize, total: u64) -> anyhow::Result<Self> {
        tch::manual_seed(0);
        let model = TaskModel::build(
            config,
            num_labels,
            crate::config::TaskKind::Classification,
            Device::Cpu,
        )?;
        Ok(Self {
            optimiser: step::optimiser_for(config, &model),
            allocators: Allocators::for_model(config, &model, total)?,
            model,
            plan: StepPlan::new(config, total),
            activity: Default::default(),
            step: 0,
        })
    }

    /// `n` steps on `batch`; the wall time of each.
    fn steps(
        &mut self,
        n: usize,
        batch: &[(crate::models::ModelInput, Tensor)],
    ) -> anyhow::Result<Vec<f64>> {
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            let loss = step::accumulate_gradients(&self.model, batch, self.plan.config);
            if !loss.is_finite() {
                bail!("the benchmark's training loss became {loss}");
            }
            step::apply_update(
                &mut self.model,
                &mut self.optimiser,
                &mut self.allocators,
                &self.plan,
                (self.step % self.plan.total_steps, self.step as i64),
                &mut self.activity,
                None,
            )?;
            self.step += 1;
            times.push(started.elapsed().as_secs_f64());
        }
        Ok(times)
    }
}

/// The median of `v` (`NaN` for none).
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

fn write_jsonl(path: &Path, rows: &[Example]) -> anyhow::Result<()> {
    crate::io::write_atomic(path, |w| {
        for e in rows {
            writeln!(
                w,
                "{}",
                serde_json::json!({"text": e.text, "label": e.label as i64})
            )?;
        }
        Ok(())
    })
    .with_context(|| format!("writing {}", path.display()))
}

/// The short mode's data: the first 200 examples of the configured data as JSONL in the work
/// folder, and the overrides that point the config at it (same label order).
fn quick_data(opts: &BenchOptions) -> anyhow::Result<Vec<String>> {
    let base = Config::load(&opts.config, &opts.overrides)?.config;
    let splits = data::load_splits(&base.data)?;
    std::fs::create_dir_all(&opts.workdir)?;
    let path = opts.workdir.join("quick.jsonl");
    let rows: Vec<&Example> = splits
        .train
        .iter()
        .chain(&splits.validation)
        .chain(&splits.test)
        .take(200)
        .collect();
    crate::io::write_atomic(&path, |w| {
        for e in &rows {
            let label = splits
                .label_names
                .get(e.label as usize)
                .cloned()
                .unwrap_or_default();
            writeln!(w, "{}", serde_json::json!({"text": e.text, "label": label}))?;
        }
        Ok(())
    })?;
    Ok(vec![
        format!(
            "data.path={}",
            serde_json::to_string(&path.display().to_string())?
        ),
        "data.format=\"jsonl\"".into(),
        "data.has_header=false".into(),
        "data.text_column=\"text\"".into(),
        "data.label_column=\"label\"".into(),
        format!(
            "data.labels={}",
            serde_json::to_string(&splits.label_names)?
        ),
    ])
}

/// Runs the benchmark and writes `bench.json` (and the Markdown report when asked).
pub fn bench(opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    let mut opts = opts.clone();
    if opts.quick {
        let extra = quick_data(&opts)?;
        opts.overrides.extend(extra);
        opts.overrides
            .extend(QUICK_JOB[1..].iter().map(|s| s.to_string()));
    }
    let opts = &opts;
    let threads = opts
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    tch::set_num_threads(threads as i32);
    let python = &opts.python;
    if !python.exists() {
        bail!(
            "{}: no Python interpreter there; run scripts/setup (the venv with torch, \
             transformers and PEFT) or pass --python",
            python.display()
        );
    }
    let root = std::env::current_dir()?;
    let worker = root.join("python/bench/peft_worker.py");
    let job = root.join("python/bench/peft_job.py");
    for f in [&worker, &job] {
        if !f.exists() {
            bail!(
                "{} is missing (run flexlora bench from the repository root)",
                f.display()
            );
        }
    }
    std::fs::create_dir_all(&opts.workdir)?;
    let work = &opts.workdir;
    let lora = method_config(opts, "lora", &[])?;
    if !lora.model.path.join("config.json").exists() {
        bail!(
            "{}: no model folder (run scripts/fetch-assets)",
            lora.model.path.display()
        );
    }
    let splits = data::load_splits(&lora.data)?;
    let num_labels = splits.num_labels();
    let total = lora.total_steps(splits.train.len() as u64);
    let mut report = BenchReport::new(opts, threads);
    let base = Config::load(&opts.config, &opts.overrides)?.config;
    if base.training.precision.base_kind(tch::Device::Cpu) == tch::Kind::BFloat16 {
        report.precision = "bf16".into();
    }
    let started = Instant::now();
    let say = |what: &str| eprintln!("[bench {:6.1} s] {what}", started.elapsed().as_secs_f64());

    // The fixed batch: the first `batch` training sentences padded to `seq` tokens.
    let tokenizer = TextTokenizer::from_folder(&lora.model.path, opts.seq)?.pad_to(opts.seq);
    let rows: Vec<&Example> = splits.train.iter().take(opts.batch).collect();
    if rows.len() < opts.batch {
        bail!(
            "the training split has {} examples, fewer than --batch {}",
            rows.len(),
            opts.batch
        );
    }
    let texts: Vec<&str> = rows.iter().map(|e| e.text.as_str()).collect();
    let input = tokenizer.encode(&texts, None, Device::Cpu)?;
    let labels = Tensor::from_slice(&rows.iter().map(|e| e.label).collect::<Vec<f32>>());
    let batch_file = work.join("batch.safetensors");
    Tensor::write_safetensors(
        &[
            ("input_ids", &input.input_ids),
            ("attention_mask", &input.attention_mask),
            ("token_type_ids", &input.token_type_ids),
            ("labels", &labels.to_kind(Kind::Int64)),
        ],
        &batch_file,
    )?;
    let real_tokens = input.attention_mask.sum(Kind::Int64).int64_value(&[]);
    // Attention's length groups, as the model forms them for this batch.
    let attention_groups =
        crate::models::packing::TokenPacking::new(&input.attention_mask).group_shapes();
    report.shapes = format!(
        "{} × {} tokens ({} real, the rest padding)",
        opts.batch, opts.seq, real_tokens
    );
    let micro = [(crate::models::ModelInput::Text(input), labels)];

    // GEMM work and this machine's rate on the same shapes.
    let bert = crate::models::hf::read_config::<crate::models::BertConfig>(&lora.model.path)?;
    let dims = gemm::StepDims {
        tokens: real_tokens,
        attention: attention_groups.clone(),
        hidden: bert.hidden_size,
        intermediate: bert.intermediate_size,
        layers: bert.num_hidden_layers,
        heads: bert.num_attention_heads,
        rank: lora.method.r_init as i64,
        merged_adapters: true,
    };
    let shapes = gemm::step_gemms(&dims);
    report.step_gflop = gemm::total_flops(&shapes) / 1e9;
    report.attention_groups = attention_groups;
    let padded = gemm::StepDims {
        tokens: (opts.batch * opts.seq) as i64,
        attention: vec![(opts.batch as i64, opts.seq as i64)],
        merged_adapters: false,
        ..dims.clone()
    };
    report.padded_step_gflop = gemm::total_flops(&gemm::step_gemms(&padded)) / 1e9;
    say("GEMM rate on the step's shapes");
    let peak = gemm::measure_peak(
        &shapes,
        if opts.quick { 1 } else { 5 },
        opts.quick,
        Device::Cpu,
    );
    report.gemm_peak_gflops = peak.gflops;
    report.gemm_per_shape = peak.per_shape;
    report.gemm_peak_by_library = peak.by_library;

    // Step benchmark: ours and PEFT's, alternating.
    let configs: Vec<Config> = STEP_METHODS
        .iter()
        .map(|(m, _)| method_config(opts, m, &[]))
        .collect::<anyhow::Result<_>>()?;
    let mut ours = Vec::new();
    for c in &configs {
        ours.push(OurStep::new(c, num_labels, total)?);
    }
    let mut workers = Vec::new();
    for ((_, peft), c) in STEP_METHODS.iter().zip(&configs) {
        if let Some(p) = peft {
            let spec = work.join(format!("peft-{p}.json"));
            std::fs::write(
                &spec,
                serde_json::to_vec_pretty(&peft_spec(c, p, threads, &batch_file, total))?,
            )?;
            say(&format!("starting the PEFT {p} worker"));
            let log = work.join(format!("peft-{p}.log"));
            workers.push(Some((
                PeftWorker::start(python, &worker, &lora.model.path, &spec, &log, p)?,
                log,
            )));
        } else {
            workers.push(None);
        }
    }
    let mut ours_times = vec![Vec::new(); STEP_METHODS.len()];
    let mut peft_times = vec![Vec::new(); STEP_METHODS.len()];
    say("warm-up steps");
    // One untimed warm-up step each.
    for (i, o) in ours.iter_mut().enumerate() {
        o.steps(1, &micro)?;
        if let Some((w, log)) = workers[i].as_mut() {
            w.steps(1, log)?;
        }
    }
    for round in 0..opts.rounds {
        say(&format!("step round {}/{}", round + 1, opts.rounds));
        for (i, o) in ours.iter_mut().enumerate() {
            ours_times[i].extend(o.steps(opts.steps, &micro)?);
            if let Some((w, log)) = workers[i].as_mut() {
                peft_times[i].extend(w.steps(opts.steps, log)?);
            }
        }
    }
    for (i, (m, p)) in STEP_METHODS.iter().enumerate() {
        report.steps.push(report::StepRow {
            method: m.to_string(),
            ours_ms: 1e3 * median(&ours_times[i]),
            peft_method: p.map(String::from),
            peft_ms: p.map(|_| 1e3 * median(&peft_times[i])),
            samples: ours_times[i].len(),
        });
    }

    say("inference");
    // Inference throughput over the test split (LoRA model on both sides).
    let test: Vec<Example> = if opts.quick {
        splits.test.iter().take(64).cloned().collect()
    } else {
        splits.test.clone()
    };
    let test_file = work.join("predict.jsonl");
    write_jsonl(&test_file, &test)?;
    let eval_tok = crate::models::Preprocessor::for_model(&lora.model.path, &lora.data)?;
    let mut ours_s = f64::INFINITY;
    let mut peft_s = f64::INFINITY;
    for _ in 0..if opts.quick { 1 } else { 3 } {
        let started = Instant::now();
        crate::train::eval::evaluate(
            &ours[0].model,
            &eval_tok,
            &test,
            splits.metric,
            lora.training.eval_batch_size as usize,
            Device::Cpu,
        )?;
        ours_s = ours_s.min(started.elapsed().as_secs_f64());
        if let Some((w, log)) = workers[0].as_mut() {
            let v = w.call(
                serde_json::json!({"cmd": "predict", "file": test_file}),
                log,
            )?;
            peft_s = peft_s.min(v["seconds"].as_f64().unwrap_or(f64::NAN));
        }
    }
    report.predict = Some(report::PredictRow {
        examples: test.len(),
        ours_per_s: test.len() as f64 / ours_s,
        peft_per_s: test.len() as f64 / peft_s,
    });
    drop(workers);
    drop(ours);

    // Whole jobs: separate processes, timed from outside.
    if !opts.skip_jobs {
        let data_dir = work.join("data");
        std::fs::create_dir_all(&data_dir)?;
        write_jsonl(&data_dir.join("train.jsonl"), &splits.train)?;
        write_jsonl(&data_dir.join("validation.jsonl"), &splits.validation)?;
        write_jsonl(&data_dir.join("test.jsonl"), &splits.test)?;
        let exe = std::env::current_exe()?;
        let quick: Vec<String> = QUICK_JOB[..1].iter().map(|s| s.to_string()).collect();
        let extra: &[String] = if opts.quick { &quick } else { &[] };
        let mut peft_jobs: Vec<(String, child::ChildCost, serde_json::Value)> = Vec::new();
        for (ours_m, peft_m) in [
            ("lora", "lora"),
            ("adalora", "adalora"),
            ("flexlora", "adalora"),
        ] {
            let run_dir = work.join(format!("job-{ours_m}"));
            let mut cmd = Command::new(&exe);
            cmd.arg("train")
                .arg("--config")
                .arg(&opts.config)
                .arg("--output")
                .arg(&run_dir)
                .arg("--overwrite")
                .arg("--quiet");
            for o in method_overrides(opts, ours_m, extra)? {
                cmd.arg("--set").arg(o);
            }
            cmd.arg("--set").arg(format!("training.threads={threads}"));
            say(&format!("job: flexlora {ours_m}"));
            let ours_cost = run_measured(cmd, &work.join(format!("job-{ours_m}.log")))?;
            let summary = crate::ablate::read_summary(&run_dir)?;
            // PEFT's job of each method runs once (FlexLoRA is compared with PEFT's AdaLoRA,
            // run with AdaLoRA's own config).
            if !peft_jobs.iter().any(|(m, _, _)| m == peft_m) {
                let pc = method_config(opts, peft_m, extra)?;
                let spec_path = work.join(format!("job-peft-{peft_m}.json"));
                let mut spec = peft_spec(&pc, peft_m, threads, &batch_file, total);
                if opts.quick {
                    spec["max_steps"] = 3.into();
                }
                std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec)?)?;
                let out = work.join(format!("job-peft-{peft_m}.out.json"));
                let mut cmd = Command::new(python);
                cmd.arg(&job)
                    .arg(&lora.model.path)
                    .arg(&spec_path)
                    .arg(&data_dir)
                    .arg(&out);
                say(&format!("job: PEFT {peft_m}"));
                let cost = run_measured(cmd, &work.join(format!("job-peft-{peft_m}.log")))?;
                let v: serde_json::Value = serde_json::from_str(
                    &std::fs::read_to_string(&out)
                        .with_context(|| format!("reading {}", out.display()))?,
                )?;
                peft_jobs.push((peft_m.to_string(), cost, v));
            }
            let (_, peft_cost, peft_out) = peft_jobs
                .iter()
                .find(|(m, _, _)| m == peft_m)
                .cloned()
                .context("PEFT job")?;
            report.jobs.push(report::JobRow {
                ours_method: ours_m.to_string(),
                peft_method: peft_m.to_string(),
                ours_seconds: ours_cost.seconds,
                peft_seconds: peft_cost.seconds,
                ours_rss_mib: summary.peak_rss_mib,
                peft_rss_mib: peft_out["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
                ours_accuracy: summary.test_metric,
                peft_accuracy: peft_out["test_accuracy"].as_f64().unwrap_or(f64::NAN),
                steps: summary.steps,
                allocation_fraction: summary.allocation_seconds / summary.train_seconds.max(1e-9),
            });
        }
    }
    report.versions = versions(python);
    let json = serde_json::to_string_pretty(&report)?;
    crate::io::write_atomic(&work.join("bench.json"), |w| w.write_all(json.as_bytes()))?;
    if let Some(md) = &opts.markdown {
        write_markdown(&report, md)?;
    }
    Ok(report)
}

/// Writes `report` as Markdown to `path` (creating its folder).
pub fn write_markdown(report: &BenchReport, path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = report.markdown();
    crate::io::write_atomic(path, |w| w.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

/// Reads a `bench.json` written by [`bench`] (to render it again without measuring).
pub fn read_report(path: &Path) -> anyhow::Result<BenchReport> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a bench.json", path.display()))
}

/// `torch`, `transformers` and `peft` versions of the venv, and the CPU model.
fn versions(python: &Path) -> String {
    let py = Command::new(python)
        .arg("-c")
        .arg("import torch, transformers, peft; print(f'torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}')")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "flexlora {} (tch 0.24.0, LibTorch from the same torch); {py}",
        env!("CARGO_PKG_VERSION")
    )
}
