//! `flexlora bench-inference`: decoder inference, flexlora against transformers (+ PEFT for an
//! adapter) on the same machine, model, prompts and thread count, in one run.
//!
//! Two measurements, each for the base model and for the model with a LoRA adapter applied
//! unmerged (what `generate --adapter` and `lm-eval --run` run; PEFT's `PeftModel` on the other
//! side):
//!
//! - Greedy generation, batch 1: `--prompts` commonsense instruction prompts, exactly
//!   `--new-tokens` tokens each (no stop token on either side), with the key/value cache.
//!   Figure: generated tokens per second (prompt processing included).
//! - Multiple-choice scoring in lm-evaluation-harness's zero-shot format: the first
//!   `--questions` validation rows of each of the config's tasks. flexlora runs each prompt
//!   once and scores the choices on its cached keys and values ([`crate::lm::score_question`]);
//!   transformers runs each question's choices as one right-padded batch of
//!   context + continuation sequences and sums the continuation's log-probabilities.
//!   Figure: questions per second.
//!
//! The adapter is a seeded LoRA at the config's rank, `α` and target modules with `B` drawn at
//! random (a fresh LoRA's `B = 0` would make the adapted model equal the base), written once in
//! PEFT's format so both sides apply the same weights. The sides alternate round by round (the
//! Python side is a fresh process per round, its load time not timed) and each figure is the
//! median over rounds. The outputs are checked against each other: the share of generated
//! tokens equal to transformers' and the largest difference of a choice's log-probability.

use crate::config::{Config, PromptFormat};
use crate::data::commonsense::load_task;
use crate::lm::train::configured_tasks;
use crate::lm::{EncodedQuestion, GenerateOptions, LmModel, LmTokenizer, Sampling};
use crate::models::LlamaModel;
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use tch::{Device, Tensor};

/// Arguments of `flexlora bench-inference`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchInferenceArgs {
    /// The decoder config (model, commonsense data, tasks, adapter rank, α and targets).
    #[arg(long, default_value = crate::config_file::DEFAULT_DECODER_CONFIG)]
    pub config: PathBuf,
    /// Override a config value (repeatable), e.g. --set method.r_init=16.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Generation prompts (the first question of each task in turn).
    #[arg(long, default_value_t = 4)]
    pub prompts: usize,
    /// Tokens generated per prompt.
    #[arg(long, default_value_t = 32)]
    pub new_tokens: usize,
    /// Questions scored per task (the first rows of its validation split).
    #[arg(long, default_value_t = 25)]
    pub questions: usize,
    /// Alternating rounds (each figure is the median over rounds).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Threads on both sides (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Work folder (requests, the PEFT adapter, each round's results, inference-bench.json).
    #[arg(long, default_value = "runs/bench-inference")]
    pub workdir: PathBuf,
    /// Also write the report as Markdown here.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// The Python with torch, transformers and PEFT.
    #[arg(long, default_value = ".venv/bin/python")]
    pub python: PathBuf,
}

/// One question as both sides score it: each choice's context and continuation tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScoreRequest {
    /// Task name.
    pub task: String,
    /// Row in the task's validation split.
    pub row: usize,
    /// Context tokens of each choice (the same for all but WinoGrande's).
    pub contexts: Vec<Vec<i64>>,
    /// Continuation tokens of each choice.
    pub continuations: Vec<Vec<i64>>,
}

/// What both sides run (written as JSON for the Python side).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InferenceRequests {
    /// The decoder folder.
    pub model: PathBuf,
    /// The PEFT LoRA adapter folder both sides apply in the `lora` variant.
    pub adapter: PathBuf,
    /// Threads.
    pub threads: usize,
    /// Tokens generated per prompt.
    pub new_tokens: usize,
    /// Generation prompts as token ids.
    pub prompts: Vec<Vec<i64>>,
    /// Scored questions.
    pub questions: Vec<ScoreRequest>,
}

/// One side's measurement of one model variant in one round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VariantResult {
    /// `base` or `lora`.
    pub variant: String,
    /// Wall time of all generations in seconds.
    pub generate_seconds: f64,
    /// The generated tokens of each prompt.
    pub generated: Vec<Vec<i64>>,
    /// Wall time of all scoring in seconds.
    pub score_seconds: f64,
    /// Each question's per-choice summed log-probabilities.
    pub logprobs: Vec<Vec<f64>>,
}

/// One side's round: `flexlora` or `transformers` (its `lora` variant is PEFT's).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SideRound {
    /// `flexlora` or `transformers`.
    pub side: String,
    /// The `base` and `lora` variants.
    pub variants: Vec<VariantResult>,
}

/// One row of the report: a side and variant with its median throughputs over rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InferenceRow {
    /// `flexlora` or `transformers` / `transformers + PEFT`.
    pub side: String,
    /// `base` or `lora`.
    pub variant: String,
    /// Median generated tokens per second.
    pub tokens_per_second: f64,
    /// Median questions scored per second.
    pub questions_per_second: f64,
}

/// The whole benchmark: settings, every round's results and the summary rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InferenceReport {
    /// The command line.
    pub command: String,
    /// Threads on both sides.
    pub threads: usize,
    /// Generation prompts, tokens per prompt and scored questions.
    pub prompts: usize,
    /// See [`InferenceReport::prompts`].
    pub new_tokens: usize,
    /// See [`InferenceReport::prompts`].
    pub questions: usize,
    /// Median figures per side and variant.
    pub rows: Vec<InferenceRow>,
    /// Per variant: the share of flexlora's generated tokens equal to transformers' (first
    /// round), and the largest |difference| of a choice's summed log-probability.
    pub agreement: Vec<Agreement>,
    /// Every round of every side.
    pub rounds: Vec<SideRound>,
}

/// How closely the two sides agree on one variant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Agreement {
    /// `base` or `lora`.
    pub variant: String,
    /// Share of generated positions where both sides chose the same token.
    pub same_tokens: f64,
    /// Largest |difference| between the sides' summed log-probability of a choice.
    pub max_logprob_diff: f64,
    /// Questions whose highest-scoring choice differs between the sides.
    pub different_picks: usize,
    /// Largest |difference| between this variant's and the base's summed log-probability of
    /// a choice on each side (flexlora, transformers): shows that the adapter is applied.
    pub vs_base: (f64, f64),
}

/// The requests of `config`: generation prompts in the LLM-Adapters instruction format (what a
/// fine-tuned model is asked), scored questions in the harness format.
fn build_requests(
    config: &Config,
    args: &BenchInferenceArgs,
    adapter: PathBuf,
    threads: usize,
) -> anyhow::Result<(InferenceRequests, Vec<EncodedQuestion>)> {
    let tokenizer = LmTokenizer::from_folder(&config.model.path)?;
    let tasks = configured_tasks(config)?;
    let (mut questions, mut encoded) = (Vec::new(), Vec::new());
    let mut instruction_prompts: Vec<Vec<Vec<i64>>> = Vec::new();
    for &task in &tasks {
        let rows = load_task(&config.data.path, task, PromptFormat::Harness)?;
        for q in rows.iter().take(args.questions) {
            let e = EncodedQuestion::new(&tokenizer, q)?;
            questions.push(ScoreRequest {
                task: task.name().to_string(),
                row: e.row,
                contexts: (0..e.choices.len())
                    .map(|j| e.prompt_of(j).to_vec())
                    .collect(),
                continuations: e.choices.clone(),
            });
            encoded.push(e);
        }
        let rows = load_task(&config.data.path, task, PromptFormat::LlmAdapters)?;
        let mut mine = Vec::new();
        for q in rows.iter().take(args.prompts.div_ceil(tasks.len())) {
            mine.push(tokenizer.encode(&q.prompt, true)?);
        }
        instruction_prompts.push(mine);
    }
    // The first question of each task, then the second of each, ...
    let mut prompts = Vec::new();
    'fill: for i in 0.. {
        let before = prompts.len();
        for per_task in &instruction_prompts {
            if prompts.len() == args.prompts {
                break 'fill;
            }
            if let Some(p) = per_task.get(i) {
                prompts.push(p.clone());
            }
        }
        if prompts.len() == before {
            break;
        }
    }
    let requests = InferenceRequests {
        model: config.model.path.clone(),
        adapter,
        threads,
        new_tokens: args.new_tokens,
        prompts,
        questions,
    };
    Ok((requests, encoded))
}

/// The LoRA model of the `lora` variant: the config's LoRA (seed 0) with every `B` drawn from
/// N(0, 0.02²) (seed 1), also written to `dir` as a PEFT adapter.
fn random_lora(config: &Config, dir: &Path) -> anyhow::Result<LlamaModel> {
    let mut config = config.clone();
    config.method.name = crate::config::MethodName::Lora;
    tch::manual_seed(0);
    let mut model = LmModel::build(&config, Device::Cpu)?;
    tch::manual_seed(1);
    let state: HashMap<String, Tensor> = model
        .state()
        .into_iter()
        .map(|(name, t)| match name.ends_with(".lora_B") {
            true => {
                let b = Tensor::randn(t.size(), (t.kind(), t.device())) * 0.02;
                (name, b)
            }
            false => (name, t),
        })
        .collect();
    model.load_state(&state)?;
    crate::peft::export_state(&config, &state, crate::peft::PeftFormat::Lora, None, dir)?;
    Ok(model.model)
}

/// flexlora's side of one round: both variants, generation then scoring.
fn flexlora_round(
    models: &[(&str, &LlamaModel)],
    requests: &InferenceRequests,
    questions: &[EncodedQuestion],
) -> anyhow::Result<SideRound> {
    let opts = GenerateOptions {
        max_new_tokens: requests.new_tokens,
        sampling: Sampling::Greedy,
        use_cache: true,
        stop_tokens: Vec::new(),
    };
    let mut variants = Vec::new();
    for (variant, model) in models {
        let started = Instant::now();
        let mut generated = Vec::new();
        for p in &requests.prompts {
            generated.push(crate::lm::generate(model, p, &opts)?);
        }
        let generate_seconds = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let mut logprobs = Vec::new();
        for q in questions {
            let scores = crate::lm::score_question(model, q)?;
            logprobs.push(scores.iter().map(|s| s.logprob).collect());
        }
        variants.push(VariantResult {
            variant: variant.to_string(),
            generate_seconds,
            generated,
            score_seconds: started.elapsed().as_secs_f64(),
            logprobs,
        });
    }
    Ok(SideRound {
        side: "flexlora".into(),
        variants,
    })
}

/// Runs the benchmark: requests, the adapter, `rounds` alternating rounds, the report (also
/// written to `workdir/inference-bench.json`).
pub fn bench_inference(
    args: &BenchInferenceArgs,
    command: String,
) -> anyhow::Result<InferenceReport> {
    if args.rounds == 0 || args.prompts == 0 || args.new_tokens == 0 || args.questions == 0 {
        bail!("--rounds, --prompts, --new-tokens and --questions must be at least 1");
    }
    let script = PathBuf::from("python/bench/decoder_inference.py");
    if !script.exists() {
        bail!(
            "{} is missing (run flexlora bench-inference from the repository root)",
            script.display()
        );
    }
    if !args.python.exists() {
        bail!(
            "{}: no Python interpreter there; run scripts/setup (the venv with torch, \
             transformers and PEFT) or pass --python",
            args.python.display()
        );
    }
    let config = Config::load(&args.config, &args.overrides)?.config;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    tch::set_num_threads(threads as i32);
    let work = &args.workdir;
    std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let adapter_dir = std::path::absolute(work.join("peft-adapter"))?;
    let (requests, questions) = build_requests(&config, args, adapter_dir.clone(), threads)?;
    let requests_file = work.join("inference-requests.json");
    std::fs::write(&requests_file, serde_json::to_string(&requests)?)
        .with_context(|| format!("writing {}", requests_file.display()))?;
    let base = LlamaModel::from_folder(&config.model.path, Device::Cpu)?;
    let lora = random_lora(&config, &adapter_dir)?;
    let models = [("base", &base), ("lora", &lora)];
    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        eprintln!("[bench-inference] round {} of {}", round + 1, args.rounds);
        rounds.push(flexlora_round(&models, &requests, &questions)?);
        let result = work.join(format!("transformers-round{round}.json"));
        let log = work.join("transformers.log");
        let mut cmd = Command::new(&args.python);
        cmd.arg(&script).arg(&requests_file).arg(&result);
        super::child::run_measured(cmd, &log)?;
        let text = std::fs::read_to_string(&result)
            .with_context(|| format!("reading {}", result.display()))?;
        rounds.push(
            serde_json::from_str(&text).with_context(|| format!("parsing {}", result.display()))?,
        );
    }
    let report = summarise(args, command, threads, &requests, rounds);
    let json = serde_json::to_string_pretty(&report)?;
    crate::io::write_atomic(&work.join("inference-bench.json"), |w| {
        std::io::Write::write_all(w, json.as_bytes())
    })?;
    if let Some(path) = &args.markdown {
        let text = markdown(&report);
        crate::io::write_atomic(path, |w| std::io::Write::write_all(w, text.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

/// The report's rows and agreement from the rounds.
fn summarise(
    args: &BenchInferenceArgs,
    command: String,
    threads: usize,
    requests: &InferenceRequests,
    rounds: Vec<SideRound>,
) -> InferenceReport {
    let generated_tokens = (requests.prompts.len() * requests.new_tokens) as f64;
    let questions = requests.questions.len() as f64;
    let find = |side: &str, variant: &str| -> Vec<&VariantResult> {
        rounds
            .iter()
            .filter(|r| r.side == side)
            .flat_map(|r| r.variants.iter().filter(|v| v.variant == variant))
            .collect()
    };
    let mut rows = Vec::new();
    let mut agreement = Vec::new();
    for variant in ["base", "lora"] {
        for side in ["flexlora", "transformers"] {
            let results = find(side, variant);
            let tokens: Vec<f64> = results
                .iter()
                .map(|v| generated_tokens / v.generate_seconds)
                .collect();
            let scored: Vec<f64> = results
                .iter()
                .map(|v| questions / v.score_seconds)
                .collect();
            rows.push(InferenceRow {
                side: match (side, variant) {
                    ("transformers", "lora") => "transformers + PEFT".into(),
                    _ => side.into(),
                },
                variant: variant.into(),
                tokens_per_second: super::median(&tokens),
                questions_per_second: super::median(&scored),
            });
        }
        let first = |side: &str, variant: &str| find(side, variant).first().copied();
        if let (Some(ours), Some(theirs), Some(our_base), Some(their_base)) = (
            first("flexlora", variant),
            first("transformers", variant),
            first("flexlora", "base"),
            first("transformers", "base"),
        ) {
            let mut a = compare(variant, ours, theirs);
            a.vs_base = (
                compare(variant, ours, our_base).max_logprob_diff,
                compare(variant, theirs, their_base).max_logprob_diff,
            );
            agreement.push(a);
        }
    }
    InferenceReport {
        command,
        threads,
        prompts: requests.prompts.len(),
        new_tokens: args.new_tokens,
        questions: requests.questions.len(),
        rows,
        agreement,
        rounds,
    }
}

/// How closely two sides' results of one variant agree.
fn compare(variant: &str, ours: &VariantResult, theirs: &VariantResult) -> Agreement {
    let (mut same, mut total) = (0usize, 0usize);
    for (a, b) in ours.generated.iter().zip(&theirs.generated) {
        total += a.len().max(b.len());
        same += a.iter().zip(b).filter(|(x, y)| x == y).count();
    }
    let mut max_diff = 0.0f64;
    let mut different_picks = 0;
    for (a, b) in ours.logprobs.iter().zip(&theirs.logprobs) {
        for (x, y) in a.iter().zip(b) {
            max_diff = max_diff.max((x - y).abs());
        }
        if argmax(a) != argmax(b) {
            different_picks += 1;
        }
    }
    Agreement {
        variant: variant.into(),
        same_tokens: if total == 0 {
            1.0
        } else {
            same as f64 / total as f64
        },
        max_logprob_diff: max_diff,
        different_picks,
        vs_base: (0.0, 0.0),
    }
}

/// The choice `lm-eval` picks by summed log-probability ([`crate::lm::score::pick`]).
fn argmax(logprobs: &[f64]) -> usize {
    let scores: Vec<crate::lm::ChoiceScore> = logprobs
        .iter()
        .map(|&logprob| crate::lm::ChoiceScore {
            logprob,
            tokens: 0,
            norm_length: 1,
        })
        .collect();
    crate::lm::score::pick(&scores, false)
}

/// The report as Markdown: throughputs with flexlora's ratio to the other side, then the
/// agreement.
pub fn markdown(report: &InferenceReport) -> String {
    let mut s = format!(
        "Decoder inference, {} threads: greedy generation of {} tokens from each of {} prompts \
         (batch 1, key/value cache) and harness-format scoring of {} questions.\n\n\
         | variant | side | generation (tokens/s) | flexlora vs this | scoring (questions/s) | \
         flexlora vs this |\n| --- | --- | ---: | ---: | ---: | ---: |\n",
        report.threads, report.new_tokens, report.prompts, report.questions
    );
    for row in &report.rows {
        let ours = report
            .rows
            .iter()
            .find(|r| r.side == "flexlora" && r.variant == row.variant);
        let ratio = |f: fn(&InferenceRow) -> f64| match ours {
            Some(o) if row.side != "flexlora" => format!("{:.2}x", f(o) / f(row)),
            _ => String::new(),
        };
        s.push_str(&format!(
            "| {} | {} | {:.1} | {} | {:.2} | {} |\n",
            row.variant,
            row.side,
            row.tokens_per_second,
            ratio(|r| r.tokens_per_second),
            row.questions_per_second,
            ratio(|r| r.questions_per_second),
        ));
    }
    s.push_str(
        "\n| variant | generated tokens equal | largest log-probability difference | \
         different picks | vs base: flexlora | vs base: transformers |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for a in &report.agreement {
        s.push_str(&format!(
            "| {} | {:.1}% | {:.2e} | {} | {:.2e} | {:.2e} |\n",
            a.variant,
            100.0 * a.same_tokens,
            a.max_logprob_diff,
            a.different_picks,
            a.vs_base.0,
            a.vs_base.1
        ));
    }
    s.push_str(&format!("\nCommand: `{}`\n", report.command));
    s
}

/// Runs `flexlora bench-inference` and prints the Markdown report.
pub fn bench_inference_command(args: BenchInferenceArgs) -> anyhow::Result<()> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let report = bench_inference(&args, command)?;
    print!("{}", markdown(&report));
    Ok(())
}
