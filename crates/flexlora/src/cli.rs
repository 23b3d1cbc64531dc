//! The `flexlora` command line.

use crate::config_file::{DEFAULT_CONFIG, DEFAULT_DECODER_CONFIG};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Entropy-guided flexible low-rank adaptation of pretrained transformers.
#[derive(Debug, Parser)]
#[command(name = "flexlora", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Dry run of the rank-allocation schedule: every adjustment step with b(t), and when ranks
    /// freeze, for the run a config describes.
    Schedule {
        /// The run config (TOML).
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Override a config value, e.g. --set schedule.t_init=30 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Size of the training split, instead of counting the data (a dry run of a recipe
        /// whose data is not on this machine, e.g. configs/paper/).
        #[arg(long)]
        train_examples: Option<u64>,
    },
    /// Print a run config with everything resolved: the file and flags given, or with
    /// --show-defaults the value every key takes when a config leaves it out.
    Config {
        /// The run config (TOML).
        #[arg(
            long,
            default_value = DEFAULT_CONFIG,
            conflicts_with = "show_defaults"
        )]
        config: PathBuf,
        /// Override a config value (repeatable).
        #[arg(
            long = "set",
            value_name = "KEY=VALUE",
            conflicts_with = "show_defaults"
        )]
        overrides: Vec<String>,
        /// Print the defaults instead (`model.path` and the data files have none).
        #[arg(long)]
        show_defaults: bool,
    },
    /// Fine-tune a model on labelled data: FlexLoRA (default), LoRA, AdaLoRA or full fine-tuning.
    Train {
        /// The run config (TOML). Default: configs/default.toml (the main job); with --model and
        /// no --config, the defaults of every key (`flexlora config --show-defaults`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override a config value, e.g. --set optimiser.lr=1e-3 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Model folder (sets model.path).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Data file or GLUE folder (sets data.path).
        #[arg(long)]
        data: Option<PathBuf>,
        /// The text column: a header name or a 0-based index (sets data.text_column).
        #[arg(long)]
        text_column: Option<String>,
        /// The label column: a header name or a 0-based index (sets data.label_column).
        #[arg(long)]
        label_column: Option<String>,
        /// flexlora, lora, adalora, full or linear_probe (sets method.name).
        #[arg(long)]
        method: Option<String>,
        /// Epochs (sets training.epochs).
        #[arg(long)]
        epochs: Option<u64>,
        /// Seed (sets training.seed).
        #[arg(long)]
        seed: Option<u64>,
        /// cpu, cuda, cuda:N or auto (sets training.device; with --resume it replaces the run's).
        #[arg(long)]
        device: Option<String>,
        /// Run directory (default: runs/<method>-seed<seed>).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Continue the run in this directory from its newest valid checkpoint (its own
        /// config.toml is used; other config options are ignored).
        #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["output", "overwrite"])]
        resume: Option<PathBuf>,
        /// Start from the trained state of another run (e.g. one made by `flexlora import` from
        /// a PEFT adapter): its config.toml replaces --config (flags and --set still apply) and
        /// its best checkpoint initialises the adapters and head; the optimiser starts fresh.
        #[arg(long, value_name = "RUN_DIR", conflicts_with = "resume")]
        init_from: Option<PathBuf>,
        /// Replace a run already in the output directory.
        #[arg(long)]
        overwrite: bool,
        /// No progress bar or progress messages.
        #[arg(long)]
        quiet: bool,
    },
    /// Score a decoder on the commonsense suite's evaluation questions (log-likelihood of each
    /// choice; acc and acc_norm per task): the config's model zero-shot, or a decoder run's
    /// adapters with --run.
    LmEval {
        /// A decoder config (data.format = "commonsense"); ignored with --run.
        #[arg(long, default_value = DEFAULT_DECODER_CONFIG)]
        config: PathBuf,
        /// Override a config value (repeatable), e.g. --set data.eval_per_task=50.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// A finished decoder run: its config and adapters.
        #[arg(long)]
        run: Option<PathBuf>,
        /// Also write the table and every question's scores as JSON here.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Prompts: llm-adapters (the paper's instruction templates) or harness
        /// (lm-evaluation-harness's zero-shot prompts); default the config's
        /// data.prompt_format.
        #[arg(long, value_parser = ["llm-adapters", "harness"])]
        format: Option<String>,
        /// Score every row of each task's validation split, as lm-evaluation-harness does,
        /// instead of the evaluation half (zero-shot only: a run trained on the other half).
        #[arg(long, conflicts_with = "run")]
        full_split: bool,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Generate text with a decoder (greedy, or sampled with --temperature), optionally with
    /// a decoder run's adapters.
    Generate(crate::lm::commands::GenerateArgs),
    /// Decoder training against transformers + PEFT on the same batch of commonsense training
    /// sequences, each side in its own process: peak memory, step time and first loss.
    BenchDecoder(crate::bench::decoder::BenchDecoderArgs),
    /// Decoder inference against transformers (+ PEFT for an adapter): greedy generation
    /// tokens/s and harness-format scoring questions/s, the sides alternating round by round.
    BenchInference(crate::bench::inference::BenchInferenceArgs),
    /// Evaluate a finished run's best checkpoint on a split of its data.
    Eval {
        /// The run directory.
        #[arg(long)]
        run: PathBuf,
        /// train, validation or test.
        #[arg(long, default_value = "test")]
        split: String,
        /// cpu, cuda, cuda:N or auto (default: the run's training.device).
        #[arg(long)]
        device: Option<String>,
        /// Also write every example's prediction here: .csv or .jsonl (index in the split,
        /// true label, predicted label, class probabilities).
        #[arg(long, value_name = "FILE")]
        predictions: Option<PathBuf>,
    },
    /// Predict labels for texts or images with a finished run's best checkpoint.
    Predict {
        /// The run directory.
        #[arg(long)]
        run: PathBuf,
        /// Text runs: one text per line, or a .jsonl file (field `text`, and `text_pair` for
        /// pair tasks). Image runs: an image file (PNG, JPEG, BMP, WebP, PNM, TGA, ICO) or a
        /// folder of them (read in file-name order; other files are left out), each converted
        /// to 8-bit grey as the run's data is.
        #[arg(long)]
        input: PathBuf,
        /// Predictions: .csv or .jsonl (line or file name, label, and class probabilities).
        #[arg(long)]
        output: PathBuf,
        /// cpu, cuda, cuda:N or auto (default: the run's training.device).
        #[arg(long)]
        device: Option<String>,
    },
    /// Embeddings of texts or images, written as JSONL. Text encoders (BERT, DeBERTa-v2/v3):
    /// the last hidden states mean-pooled over real tokens (as sentence-transformers). Vision
    /// encoders: transformers' pooler_output: DINOv2 the class token after the final layer
    /// norm, ViT tanh(pooler.dense(class token)) (the checkpoint must have its pooler).
    Embed {
        /// Hugging Face model folder (config.json, model.safetensors; tokenizer.json for text
        /// encoders).
        #[arg(long)]
        model: PathBuf,
        /// Text encoders: a .jsonl file (field `text`) or a plain file with one text per line.
        /// Vision encoders: an image file (PNG, JPEG, BMP, WebP, PNM, TGA, ICO) or a folder of
        /// them (file-name order), each decoded to 8-bit grey, resized to the model's size and
        /// repeated to RGB.
        #[arg(long)]
        input: PathBuf,
        /// Output JSONL: one {"line", "text", "embedding"} object per text, or
        /// {"file", "embedding"} per image.
        #[arg(long)]
        output: PathBuf,
        /// L2-normalise the embeddings (sentence-transformers' Normalize module).
        #[arg(long)]
        normalize: bool,
        /// Texts or images per forward pass.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Truncation length in tokens (default: the model's sentence-transformers setting).
        #[arg(long)]
        max_length: Option<usize>,
        /// Vision encoders: the side images are resized to (default: the checkpoint's
        /// preprocessor_config.json crop size or size, else config.json's image_size).
        #[arg(long)]
        image_size: Option<u32>,
        /// JSONL field holding the text.
        #[arg(long, default_value = "text")]
        field: String,
        /// cpu, cuda, cuda:N or auto.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Intra-op CPU threads (default: all cores).
        #[arg(long)]
        threads: Option<i32>,
    },
    /// Write a finished run's adapter as a Hugging Face PEFT adapter folder
    /// (adapter_config.json, adapter_model.safetensors) that `PeftModel.from_pretrained` loads.
    Export {
        /// The run directory.
        #[arg(long)]
        run: PathBuf,
        /// peft-lora (any adapter run), peft-adalora (runs with SVD adapters) or gguf-lora
        /// (a llama.cpp LoRA adapter file, decoder runs).
        #[arg(long, value_enum, default_value = "peft-lora")]
        format: crate::peft::PeftFormat,
        /// The adapter folder to write (default: `<run>/adapter`; gguf-lora: the file, default
        /// `<run>/adapter.gguf`).
        #[arg(long)]
        output: Option<PathBuf>,
        /// gguf-lora's tensor type: f32, f16 or bf16 [default: f32].
        #[arg(long, value_enum)]
        outtype: Option<crate::gguf::TensorType>,
    },
    /// Load a Hugging Face PEFT LoRA or AdaLoRA adapter onto its base model and write a run
    /// directory: for a classifier one that `eval` and `predict` accept, for a decoder one that
    /// `lm-eval --run` and `generate --adapter` accept.
    Import {
        /// The PEFT adapter folder (adapter_config.json, adapter_model.safetensors).
        #[arg(long)]
        peft: PathBuf,
        /// The base model folder (default: the adapter's base_model_name_or_path).
        #[arg(long)]
        model: Option<PathBuf>,
        /// The run directory to write.
        #[arg(long)]
        output: PathBuf,
        /// The run config giving the data (and settings for further training); its `[method]`
        /// and model.target_modules are replaced by the adapter's [default: configs/default.toml,
        /// or configs/commonsense/smollm2-flexlora.toml when the base model is a decoder].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override a config value, e.g. --set data.path="my.csv" (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Replace what is in the output directory.
        #[arg(long)]
        overwrite: bool,
    },
    /// Fold a finished run's adapter into the base weights and write a complete Hugging Face
    /// model folder that transformers loads without PEFT.
    Merge {
        /// The run directory.
        #[arg(long)]
        run: PathBuf,
        /// The model folder to write.
        #[arg(long)]
        output: PathBuf,
    },
    /// Train every method × seed (reusing finished runs, resuming interrupted ones) and write
    /// a table of the task metric with a paired comparison: ablation.md, ablation.csv,
    /// ablation.png.
    Ablate {
        /// The base run config (TOML).
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Comma-separated methods: flexlora, adalora, lora, full, linear_probe, nuclear, frobenius,
        /// sensitivity, exact_spectrum, prune_only, expand_only, small_init, orthogonal_init,
        /// cubic_ref, linear, exp, constant.
        #[arg(long, value_delimiter = ',', required = true)]
        methods: Vec<String>,
        /// Seeds 0..N per method.
        #[arg(long, default_value_t = 3)]
        seeds: u64,
        /// Runs at the same time (the cores are split between them).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Output folder (runs/, logs/, ablation.md, ablation.csv, ablation.png).
        #[arg(long, default_value = "runs/ablation")]
        output: PathBuf,
        /// The method the others are compared with (default: the first).
        #[arg(long)]
        baseline: Option<String>,
        /// Override a config value for every method, e.g. --set training.epochs=2 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Override a config value for one method, e.g. --set-for lora:optimiser.lr=2e-3.
        #[arg(long = "set-for", value_name = "METHOD:KEY=VALUE")]
        method_overrides: Vec<String>,
        /// Choose a method's learning rate on the validation split (seed 0), e.g.
        /// --lr-grid adalora=2e-3,5e-3,1e-2 (repeatable).
        #[arg(long = "lr-grid", value_name = "METHOD=LR,LR,...")]
        lr_grids: Vec<String>,
        /// Rebuild the table from the finished runs only; train nothing.
        #[arg(long)]
        report_only: bool,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Benchmark against transformers + PEFT on this machine: training step at fixed shapes,
    /// GEMM efficiency, inference, and the whole main job (time and peak memory).
    Bench {
        /// The main job's config.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Override a config value on both sides, e.g. --set method.r_init=4 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Short mode: a few steps and 3-step jobs, to check that both sides run.
        #[arg(long)]
        quick: bool,
        /// Alternating rounds of the step benchmark.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Timed steps per side and round.
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Batch size of the step benchmark.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Padded sequence length of the step benchmark.
        #[arg(long, default_value_t = 64)]
        seq: usize,
        /// Threads on both sides (default: every core).
        #[arg(long)]
        threads: Option<usize>,
        /// Work folder (logs, the jobs' runs, bench.json).
        #[arg(long, default_value = "runs/bench")]
        workdir: PathBuf,
        /// Also write the report as Markdown here, e.g. docs/benchmarks.md.
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// The Python with torch, transformers and PEFT.
        #[arg(long, default_value = ".venv/bin/python")]
        python: PathBuf,
        /// Skip the whole-job comparison.
        #[arg(long)]
        skip_jobs: bool,
        /// Measure nothing: print (and with --markdown write) the report of an earlier run's
        /// bench.json.
        #[arg(long, value_name = "BENCH_JSON")]
        report_from: Option<PathBuf>,
    },
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Bench {
            config,
            overrides,
            quick,
            rounds,
            steps,
            batch,
            seq,
            threads,
            workdir,
            markdown,
            python,
            skip_jobs,
            report_from,
        } => {
            if let Some(json) = report_from {
                let report = crate::bench::read_report(&json)?;
                if let Some(md) = &markdown {
                    crate::bench::write_markdown(&report, md)?;
                }
                print!("{}", report.markdown());
                return Ok(());
            }
            let opts = crate::bench::BenchOptions {
                config,
                overrides,
                quick,
                rounds: if quick { 1 } else { rounds.max(1) },
                steps: if quick { 2 } else { steps.max(1) },
                batch,
                seq,
                threads,
                workdir,
                markdown,
                python,
                skip_jobs,
                command_line: command_line(),
            };
            let report = crate::bench::bench(&opts)?;
            print!("{}", report.markdown());
            Ok(())
        }
        Command::Ablate {
            config,
            methods,
            seeds,
            jobs,
            output,
            baseline,
            overrides,
            method_overrides,
            lr_grids,
            report_only,
            quiet,
        } => {
            let command_line = command_line();
            let report = crate::ablate::ablate(&crate::ablate::AblateOptions {
                config,
                overrides,
                methods,
                seeds,
                jobs,
                output: output.clone(),
                baseline,
                method_overrides,
                lr_grids,
                report_only,
                quiet,
                command_line,
            })?;
            print!("{}", report.markdown());
            eprintln!("wrote {}/ablation.md, .csv and .png", output.display());
            Ok(())
        }
        Command::Schedule {
            config,
            overrides,
            json,
            train_examples,
        } => {
            let plan =
                crate::plan::SchedulePlan::from_config_file(&config, &overrides, train_examples)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print!("{}", plan.to_table());
            }
            Ok(())
        }
        Command::Config {
            config,
            overrides,
            show_defaults,
        } => {
            if show_defaults {
                print!("{}", crate::config_file::defaults_toml()?);
            } else {
                let cfg = crate::config::Config::load(&config, &overrides)?.config;
                print!("{}", toml::to_string(&cfg)?);
            }
            Ok(())
        }
        Command::Train {
            config,
            mut overrides,
            model,
            data,
            text_column,
            label_column,
            method,
            epochs,
            seed,
            device,
            output,
            resume,
            init_from,
            overwrite,
            quiet,
        } => {
            let flags = [
                (
                    "model.path",
                    model.map(|p| toml_string(&p.display().to_string())),
                ),
                (
                    "data.path",
                    data.map(|p| toml_string(&p.display().to_string())),
                ),
                ("data.text_column", text_column.map(|c| toml_column(&c))),
                ("data.label_column", label_column.map(|c| toml_column(&c))),
                ("method.name", method.map(|m| toml_string(&m))),
                ("training.epochs", epochs.map(|e| e.to_string())),
                ("training.seed", seed.map(|s| s.to_string())),
                ("training.device", device.clone().map(|d| toml_string(&d))),
            ];
            let model_given = flags[0].1.is_some();
            for (key, value) in flags {
                if let Some(v) = value {
                    overrides.push(format!("{key}={v}"));
                }
            }
            let (cfg, output, resuming) = match resume {
                Some(dir) => {
                    let mut cfg = crate::train::load_run_config(&dir)?;
                    if let Some(d) = device {
                        cfg.training.device = d;
                    }
                    (cfg, dir, true)
                }
                None => {
                    let base = match (&init_from, config) {
                        (Some(dir), _) => Some(dir.join("config.toml")),
                        (None, Some(file)) => Some(file),
                        (None, None) if model_given => None,
                        (None, None) => Some(PathBuf::from(DEFAULT_CONFIG)),
                    };
                    let cfg = match base {
                        Some(file) => crate::config::Config::load(&file, &overrides)?.config,
                        None => crate::config::Config::load_defaults(&overrides)?.config,
                    };
                    let method = serde_json::to_value(cfg.method.name)?;
                    let default = PathBuf::from(format!(
                        "runs/{}-seed{}",
                        method.as_str().unwrap_or("run"),
                        cfg.training.seed
                    ));
                    (cfg, output.unwrap_or(default), false)
                }
            };
            let opts = crate::train::TrainOptions {
                output: output.clone(),
                resume: resuming,
                init_from,
                overwrite,
                quiet,
            };
            if crate::models::Architecture::of_folder(&cfg.model.path)?.is_decoder() {
                let s = crate::lm::train_lm(&cfg, &opts)?;
                if let Some(format) = crate::peft::PeftFormat::of_method(cfg.method.name) {
                    crate::peft::export_run(&output, format, &output.join("adapter"))?;
                }
                crate::train::write_summary(&output, &s)?;
                let avg = s.tasks.last();
                println!(
                    "{}: average acc {:.4}, acc_norm {:.4} over {} tasks ({} questions); {} trainable parameters; {:.1} s",
                    output.display(),
                    avg.map_or(f64::NAN, |a| a.acc),
                    avg.map_or(f64::NAN, |a| a.acc_norm),
                    s.tasks.len().saturating_sub(1),
                    s.eval_questions,
                    s.trainable_parameters,
                    s.wall_seconds
                );
                return Ok(());
            }
            let s = crate::train::train(&cfg, &opts)?;
            // The adapter in Hugging Face PEFT's format, for use without flexlora (full runs:
            // `merge`), then the summary that marks the run finished.
            if let Some(format) = crate::peft::PeftFormat::of_method(cfg.method.name) {
                crate::peft::export_run(&output, format, &output.join("adapter"))?;
            }
            crate::train::write_summary(&output, &s)?;
            println!(
                "{}: test {} {:.4} ({}); {} trainable parameters; {:.1} s, {:.2} steps/s",
                output.display(),
                s.metric,
                s.test_metric,
                validation_note(&s),
                s.trainable_parameters,
                s.wall_seconds,
                s.steps_per_second
            );
            Ok(())
        }
        Command::LmEval {
            config,
            overrides,
            run,
            output,
            format,
            full_split,
            quiet,
        } => {
            let mut cfg = match &run {
                Some(dir) => crate::train::load_run_config(dir)?,
                None => crate::config::Config::load(&config, &overrides)?.config,
            };
            if let Some(name) = format.as_deref() {
                cfg.data.prompt_format = crate::data::commonsense::PromptFormat::from_name(name)
                    .ok_or_else(|| {
                        anyhow::anyhow!("--format {name}: expected llm-adapters or harness")
                    })?;
            }
            let opts = crate::lm::LmEvalOptions {
                run: run.as_deref(),
                output: output.as_deref(),
                full_split,
                quiet,
            };
            crate::lm::lm_eval(&cfg, &opts).map(|_| ())
        }
        Command::Generate(args) => crate::lm::commands::generate_command(&args),
        Command::BenchDecoder(args) => crate::bench::decoder::bench_decoder_command(args),
        Command::BenchInference(args) => crate::bench::inference::bench_inference_command(args),
        Command::Eval {
            run,
            split,
            device,
            predictions,
        } => crate::train::commands::eval(&run, &split, device.as_deref(), predictions.as_deref()),
        Command::Predict {
            run,
            input,
            output,
            device,
        } => crate::train::commands::predict(&run, &input, &output, device.as_deref()),
        Command::Embed {
            model,
            input,
            output,
            normalize,
            batch_size,
            max_length,
            image_size,
            field,
            device,
            threads,
        } => {
            if let Some(n) = threads {
                tch::set_num_threads(n.max(1));
            }
            let opts = crate::embed::EmbedOptions {
                batch_size,
                max_length,
                normalize,
                device: crate::device::parse_device(&device)?,
                field,
                image_size,
            };
            let e = crate::embed::embed_file(&model, &input, &output, &opts)?;
            eprintln!("embedded {} {} -> {}", e.count, e.what, output.display());
            Ok(())
        }
        Command::Export {
            run,
            format,
            output,
            outtype,
        } => {
            if format == crate::peft::PeftFormat::GgufLora {
                let output = output.unwrap_or_else(|| run.join("adapter.gguf"));
                let ty = outtype.unwrap_or(crate::gguf::TensorType::F32);
                crate::peft::export_run_gguf(&run, ty, &output)?;
                eprintln!("exported {} -> {}", run.display(), output.display());
                return Ok(());
            }
            if outtype.is_some() {
                anyhow::bail!("--outtype is for --format gguf-lora only");
            }
            let output = output.unwrap_or_else(|| run.join("adapter"));
            crate::peft::export_run(&run, format, &output)?;
            eprintln!("exported {} -> {}", run.display(), output.display());
            Ok(())
        }
        Command::Import {
            peft,
            model,
            output,
            config,
            overrides,
            overwrite,
        } => {
            let config = match config {
                Some(file) => file,
                None => {
                    let base = crate::peft::import_base(&peft, model.as_deref())?;
                    if crate::models::Architecture::of_folder(&base)?.is_decoder() {
                        PathBuf::from(DEFAULT_DECODER_CONFIG)
                    } else {
                        PathBuf::from(DEFAULT_CONFIG)
                    }
                }
            };
            let template = crate::config::Config::load(&config, &overrides)?.config;
            let imported =
                crate::peft::import_to_run(&peft, model.as_deref(), &template, &output, overwrite)?;
            let total: usize = imported.ranks.iter().map(|(_, r)| r).sum();
            eprintln!(
                "imported {} ({:?}, {} modules, total rank {total}) -> {} (method {:?})",
                peft.display(),
                imported.peft_type,
                imported.ranks.len(),
                output.display(),
                imported.config.method.name
            );
            Ok(())
        }
        Command::Merge { run, output } => {
            crate::peft::merge_run(&run, &output)?;
            eprintln!("merged {} -> {}", run.display(), output.display());
            Ok(())
        }
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A column flag as TOML: a 0-based index when it is a number, else a header name.
fn toml_column(s: &str) -> String {
    match s.parse::<u64>() {
        Ok(i) => i.to_string(),
        Err(_) => toml_string(s),
    }
}

/// This process's command line as `flexlora …`, quoted for a shell.
fn command_line() -> String {
    std::iter::once("flexlora".to_string())
        .chain(std::env::args().skip(1).map(|a| shell_word(&a)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `arg` quoted for a POSIX shell when it needs it (for the command line in reports).
fn shell_word(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

/// The printed summary's words on validation: the best epoch and its metric, or, when no
/// validation ran (an empty validation split, or training stopped before the first epoch
/// ended, e.g. at `training.max_steps`; `summary.json` then holds `null`), that the test used
/// the final parameters.
fn validation_note(s: &crate::train::Summary) -> String {
    if s.validation_metric.is_finite() {
        format!(
            "best validation epoch {}, validation {:.4}",
            s.best_epoch, s.validation_metric
        )
    } else {
        "no validation ran (the validation split is empty, or training stopped before the \
         first epoch ended), so the test used the final parameters"
            .to_string()
    }
}
