//! `flexlora embed`: one vector per text or image, from an encoder checkpoint.
//!
//! - **Text encoders** (BERT, DeBERTa-v2/v3): the last hidden states mean-pooled over the real
//!   (unpadded) tokens, as sentence-transformers computes them for models with mean pooling;
//!   input is a text or JSONL file ([`read_texts`]).
//! - **Vision encoders** (ViT, DINOv2): transformers' `pooler_output` ([`vision`]); input is an
//!   image file or a folder of them ([`crate::data::image_files`]).
//! - Decoders (LLaMA) are refused.
//!
//! The architecture comes from the folder's `config.json` ([`Architecture`]).

mod vision;

use crate::models::{Architecture, Encoder, ModelInput, TextTokenizer, l2_normalize, mean_pool};
use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// One text to embed and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct InputText {
    /// 1-based line number in the input file.
    pub line: usize,
    /// The text.
    pub text: String,
}

/// Reads the texts of `path`: a `.jsonl` file takes the `text` field of each line (`field`
/// overrides it), any other file is one text per line. Empty lines are skipped.
pub fn read_texts(path: &Path, field: &str) -> anyhow::Result<Vec<InputText>> {
    let content = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read input file {}", path.display()))?;
    let jsonl = path.extension().is_some_and(|e| e == "jsonl");
    let mut out = Vec::new();
    for (i, raw) in content.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let text = if jsonl {
            let v: serde_json::Value = serde_json::from_str(raw)
                .with_context(|| format!("{}: line {line}: not valid JSON", path.display()))?;
            match v.get(field).and_then(|t| t.as_str()) {
                Some(t) => t.to_string(),
                None => bail!("{}: line {line}: no string field `{field}`", path.display()),
            }
        } else {
            raw.to_string()
        };
        out.push(InputText { line, text });
    }
    if out.is_empty() {
        bail!("{}: no texts to embed (the file is empty)", path.display());
    }
    Ok(out)
}

/// The maximum sequence length sentence-transformers uses for the model in `folder`:
/// `max_seq_length` of `sentence_bert_config.json` when present, else the model's limit.
pub fn default_max_length(folder: &Path, model_limit: i64) -> usize {
    let configured = std::fs::read_to_string(folder.join("sentence_bert_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("max_seq_length").and_then(|m| m.as_u64()));
    let limit = model_limit.max(2) as u64;
    configured.unwrap_or(limit).min(limit) as usize
}

/// Options of [`embed_file`].
#[derive(Debug, Clone)]
pub struct EmbedOptions {
    /// Texts per forward pass.
    pub batch_size: usize,
    /// Truncation length; `None` for [`default_max_length`].
    pub max_length: Option<usize>,
    /// L2-normalise each embedding.
    pub normalize: bool,
    /// Where to run.
    pub device: Device,
    /// JSONL field holding the text.
    pub field: String,
    /// Vision encoders: the side images are resized to; `None` for the checkpoint's
    /// (`preprocessor_config.json`'s crop size or size, else `config.json`'s `image_size`).
    pub image_size: Option<u32>,
}

/// What [`embed_file`] embedded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Embedded {
    /// How many inputs.
    pub count: usize,
    /// `"texts"` or `"images"`.
    pub what: &'static str,
}

/// A progress bar over `n` inputs, called `what`.
fn progress(n: usize, what: &str) -> ProgressBar {
    ProgressBar::new(n as u64).with_style(
        ProgressStyle::with_template(&format!(
            "{{bar:30}} {{pos}}/{{len}} {what}  {{per_sec}}  eta {{eta}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    )
}

/// The model's vectors of a batch on the CPU, L2-normalised when asked.
fn rows(pooled: Tensor, normalize: bool) -> anyhow::Result<Vec<Vec<f32>>> {
    let pooled = if normalize {
        l2_normalize(&pooled)
    } else {
        pooled
    };
    let pooled = pooled.to_kind(Kind::Float).to_device(Device::Cpu);
    Vec::<Vec<f32>>::try_from(&pooled).context("reading embeddings back")
}

/// Embeds every text or image of `input` with the encoder in `model_dir` (rules in the module
/// docs) and writes one JSON object per input to `output`, through a temporary file and a
/// rename: `line`, `text`, `embedding` for texts; `file`, `embedding` for images.
pub fn embed_file(
    model_dir: &Path,
    input: &Path,
    output: &Path,
    opts: &EmbedOptions,
) -> anyhow::Result<Embedded> {
    if opts.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let arch = Architecture::of_folder(model_dir)?;
    if arch.is_decoder() {
        bail!(
            "{}: model_type \"{}\" is a decoder; `embed` takes encoders: BERT or DeBERTa-v2/v3 \
             (texts), ViT or DINOv2 (images)",
            model_dir.join("config.json").display(),
            arch.model_type()
        );
    }
    let (encoder, weights) = Encoder::from_folder(model_dir, opts.device)?;
    let count = if arch.is_vision() {
        vision::embed_images(model_dir, arch, &encoder, &weights, input, output, opts)?
    } else {
        embed_texts(model_dir, &encoder, input, output, opts)?
    };
    let what = if arch.is_vision() { "images" } else { "texts" };
    Ok(Embedded { count, what })
}

/// The text path of [`embed_file`]; returns the number of texts.
fn embed_texts(
    model_dir: &Path,
    encoder: &Encoder,
    input: &Path,
    output: &Path,
    opts: &EmbedOptions,
) -> anyhow::Result<usize> {
    let texts = read_texts(input, &opts.field)?;
    let limit = encoder.max_positions().unwrap_or(512);
    let max_length = opts
        .max_length
        .unwrap_or_else(|| default_max_length(model_dir, limit));
    let tokenizer = TextTokenizer::from_folder(model_dir, max_length)?;
    // Longest texts first, so each batch pads little (as sentence-transformers does).
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(texts[i].text.len()));
    let mut vectors: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
    let bar = progress(texts.len(), "texts");
    for chunk in order.chunks(opts.batch_size) {
        let batch: Vec<&str> = chunk.iter().map(|&i| texts[i].text.as_str()).collect();
        let encoded = ModelInput::Text(tokenizer.encode(&batch, None, opts.device)?);
        let pooled = tch::no_grad(|| {
            let hidden = encoder.forward(&encoded, false);
            mean_pool(&hidden, &encoded.text().attention_mask)
        });
        for (&i, row) in chunk.iter().zip(rows(pooled, opts.normalize)?) {
            vectors[i] = row;
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    crate::io::write_atomic(output, |w| {
        for (t, v) in texts.iter().zip(&vectors) {
            let line = serde_json::json!({"line": t.line, "text": t.text, "embedding": v});
            writeln!(w, "{line}")?;
        }
        Ok(())
    })
    .with_context(|| format!("writing {}", output.display()))?;
    Ok(texts.len())
}
