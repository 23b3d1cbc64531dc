//! `flexlora embed`: mean-pooled sentence embeddings of a text or JSONL file, as
//! sentence-transformers computes them for BERT models with mean pooling.

use crate::models::{BertModel, TextTokenizer, l2_normalize, mean_pool};
use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::Path;
use tch::{Device, Kind};

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
}

/// Embeds every text of `input` with the model in `model_dir` and writes one JSON object per
/// text (`line`, `text`, `embedding`) to `output`, through a temporary file and a rename.
/// Returns the number of texts embedded.
pub fn embed_file(
    model_dir: &Path,
    input: &Path,
    output: &Path,
    opts: &EmbedOptions,
) -> anyhow::Result<usize> {
    if opts.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let texts = read_texts(input, &opts.field)?;
    let (bert, _) = BertModel::from_folder(model_dir, opts.device)?;
    let max_length = opts
        .max_length
        .unwrap_or_else(|| default_max_length(model_dir, bert.config.max_position_embeddings));
    let tokenizer = TextTokenizer::from_folder(model_dir, max_length)?;
    // Longest texts first, so each batch pads little (as sentence-transformers does).
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(texts[i].text.len()));
    let mut vectors: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
    let bar = ProgressBar::new(texts.len() as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} texts  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    for chunk in order.chunks(opts.batch_size) {
        let batch: Vec<&str> = chunk.iter().map(|&i| texts[i].text.as_str()).collect();
        let encoded = tokenizer.encode(&batch, None, opts.device)?;
        let pooled = tch::no_grad(|| {
            let hidden = bert.forward(&encoded, false);
            let e = mean_pool(&hidden, &encoded.attention_mask);
            if opts.normalize { l2_normalize(&e) } else { e }
        });
        let pooled = pooled.to_kind(Kind::Float).to_device(Device::Cpu);
        let rows = Vec::<Vec<f32>>::try_from(&pooled).context("reading embeddings back")?;
        for (&i, row) in chunk.iter().zip(rows) {
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
