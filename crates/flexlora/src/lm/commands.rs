//! `flexlora generate`: text from a decoder folder, optionally with a run's adapters.

use super::{GenerateOptions, LmModel, LmTokenizer, Sampling, generate};
use crate::models::LlamaModel;
use anyhow::bail;
use std::path::PathBuf;

/// Arguments of `flexlora generate`.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// Hugging Face decoder folder (config.json, model.safetensors, tokenizer.json); with
    /// --adapter, the run's model is used and this may be omitted.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A finished decoder run whose adapters to apply.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// The prompt (raw text: no chat template is applied).
    #[arg(long)]
    pub prompt: String,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Sample with this temperature (greedy when absent or 0).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Nucleus mass for sampling.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Recompute the whole sequence for every token instead of using the key/value cache.
    #[arg(long)]
    pub no_cache: bool,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Runs `flexlora generate`: prints the prompt's continuation.
pub fn generate_command(args: &GenerateArgs) -> anyhow::Result<()> {
    let device = crate::device::parse_device(&args.device)?;
    let (folder, model) = match (&args.adapter, &args.model) {
        (Some(run), given) => {
            let (config, m) = LmModel::from_run(run, device)?;
            if let Some(f) = given {
                if f != &config.model.path {
                    bail!(
                        "--model {} differs from the run's model.path {}; omit --model",
                        f.display(),
                        config.model.path.display()
                    );
                }
            }
            (config.model.path, m.model)
        }
        (None, Some(f)) => (f.clone(), LlamaModel::from_folder(f, device)?),
        (None, None) => bail!("give --model <folder> or --adapter <run>"),
    };
    let tokenizer = LmTokenizer::from_folder(&folder)?;
    let prompt = tokenizer.encode(&args.prompt, true)?;
    let sampling = match args.temperature {
        Some(t) if t != 0.0 => Sampling::Sample {
            temperature: t,
            top_p: args.top_p,
            seed: args.seed,
        },
        _ => Sampling::Greedy,
    };
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling,
        use_cache: !args.no_cache,
        stop_tokens: model.config().eos_token_ids.clone(),
    };
    let new = generate(&model, &prompt, &opts)?;
    println!("{}", tokenizer.decode(&new, false)?);
    Ok(())
}
