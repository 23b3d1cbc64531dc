//! `flexlora generate`: text from a decoder folder, optionally with a run's adapters, from a
//! raw prompt or a conversation in the model's chat template, printed as it is generated.

use super::{
    ChatMessage, ChatTemplate, GenerateOptions, LmModel, LmTokenizer, Sampling, generate_streaming,
    read_conversation,
};
use crate::models::LlamaModel;
use anyhow::bail;
use std::io::Write;
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
    /// The prompt: raw text, or with --chat the user's message.
    #[arg(long, required_unless_present = "messages")]
    pub prompt: Option<String>,
    /// Put the prompt in the model's chat template (tokenizer_config.json's chat_template) as
    /// a user message, followed by the assistant's turn opener.
    #[arg(long)]
    pub chat: bool,
    /// With --chat: a system message before the user's.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// A conversation to continue in the chat template: a JSONL file of
    /// {"role": ..., "content": ...} lines (implies --chat; --prompt, if given, is appended as
    /// the last user message).
    #[arg(long)]
    pub messages: Option<PathBuf>,
    /// Print the prompt as the model sees it (text and token ids) on stderr first.
    #[arg(long)]
    pub verbose_prompt: bool,
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
    let mut stop_tokens = model.config().eos_token_ids.clone();
    let prompt = if args.chat || args.messages.is_some() {
        let template = ChatTemplate::from_folder(&folder)?;
        let messages = conversation(args)?;
        let text = template.render(&messages, true)?;
        // A chat model ends its turn with the tokenizer's end-of-sequence token (e.g.
        // <|im_end|>), which its config.json does not always list.
        if let Some(id) = template
            .special_token("eos_token")
            .and_then(|t| tokenizer.token_id(t))
        {
            if !stop_tokens.contains(&id) {
                stop_tokens.push(id);
            }
        }
        // The template writes the special tokens itself (apply_chat_template does not add any).
        (text.clone(), tokenizer.encode(&text, false)?)
    } else {
        let text = args.prompt.clone().unwrap_or_default();
        let ids = tokenizer.encode(&text, true)?;
        (text, ids)
    };
    if args.verbose_prompt {
        eprintln!("prompt ({} tokens):\n{}", prompt.1.len(), prompt.0);
        eprintln!("token ids: {:?}", prompt.1);
    }
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
        stop_tokens,
    };
    let mut stream = TextStream::new(&tokenizer);
    let new = generate_streaming(&model, &prompt.1, &opts, |token| stream.push(token))?;
    stream.finish(&new)?;
    Ok(())
}

/// The messages of a chat generation: the --messages file's, then --system and --prompt.
fn conversation(args: &GenerateArgs) -> anyhow::Result<Vec<ChatMessage>> {
    let mut messages = match &args.messages {
        Some(path) => read_conversation(path)?,
        None => Vec::new(),
    };
    if let Some(system) = &args.system {
        if !messages.is_empty() {
            bail!("--system with --messages: put the system message in the conversation file");
        }
        messages.push(ChatMessage::new("system", system));
    }
    if let Some(prompt) = &args.prompt {
        messages.push(ChatMessage::new("user", prompt));
    }
    Ok(messages)
}

/// Prints generated text to stdout as tokens arrive. Byte-level tokens can end inside a UTF-8
/// character, so text is held back while its decoding ends in U+FFFD; what is printed is
/// always a prefix of the decoding of all new tokens.
struct TextStream<'a> {
    tokenizer: &'a LmTokenizer,
    tokens: Vec<i64>,
    printed: String,
}

impl<'a> TextStream<'a> {
    fn new(tokenizer: &'a LmTokenizer) -> Self {
        Self {
            tokenizer,
            tokens: Vec::new(),
            printed: String::new(),
        }
    }

    /// Adds a token and prints whatever text it completes.
    fn push(&mut self, token: i64) {
        self.tokens.push(token);
        if let Ok(text) = self.tokenizer.decode(&self.tokens, false) {
            if !text.ends_with('\u{FFFD}') {
                self.print_past(&text);
            }
        }
    }

    /// Prints the rest of the decoding of `all` and a newline.
    fn finish(&mut self, all: &[i64]) -> anyhow::Result<()> {
        let text = self.tokenizer.decode(all, false)?;
        if !text.starts_with(&self.printed) {
            // A decoder that rewrites earlier text (none of the byte-level ones do): the whole
            // text again on its own line rather than a wrong tail.
            println!();
            self.printed.clear();
        }
        self.print_past(&text);
        println!();
        Ok(())
    }

    fn print_past(&mut self, text: &str) {
        if let Some(tail) = text.strip_prefix(self.printed.as_str()) {
            if !tail.is_empty() {
                let mut out = std::io::stdout().lock();
                // A closed stdout (e.g. piped into `head`) ends the printing, not the run.
                let _ = out.write_all(tail.as_bytes()).and_then(|()| out.flush());
                self.printed.push_str(tail);
            }
        }
    }
}
