//! The `flexlora` command line.

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
        #[arg(long, default_value = "configs/default.toml")]
        config: PathBuf,
        /// Override a config value, e.g. --set schedule.t_init=30 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Sentence embeddings (mean pooling, as sentence-transformers) of a text file (one text
    /// per line) or a JSONL file, written as JSONL.
    Embed {
        /// Hugging Face model folder (config.json, model.safetensors, tokenizer.json).
        #[arg(long)]
        model: PathBuf,
        /// Texts: a .jsonl file (field `text`) or a plain file with one text per line.
        #[arg(long)]
        input: PathBuf,
        /// Output JSONL: one {"line", "text", "embedding"} object per text.
        #[arg(long)]
        output: PathBuf,
        /// L2-normalise the embeddings (sentence-transformers' Normalize module).
        #[arg(long)]
        normalize: bool,
        /// Texts per forward pass.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Truncation length in tokens (default: the model's sentence-transformers setting).
        #[arg(long)]
        max_length: Option<usize>,
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
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Schedule {
            config,
            overrides,
            json,
        } => {
            let plan = crate::plan::SchedulePlan::from_config_file(&config, &overrides)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print!("{}", plan.to_table());
            }
            Ok(())
        }
        Command::Embed {
            model,
            input,
            output,
            normalize,
            batch_size,
            max_length,
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
            };
            let n = crate::embed::embed_file(&model, &input, &output, &opts)?;
            eprintln!("embedded {n} texts -> {}", output.display());
            Ok(())
        }
    }
}
