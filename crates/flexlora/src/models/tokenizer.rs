//! `tokenizer.json` through the `tokenizers` crate: truncation to a maximum length, sentence
//! pairs with token type ids, and dynamic padding (to the longest sequence of each batch).
//!
//! The file's normalizer, pre-tokenizer and template are used as written. For DeBERTa-v3 that is
//! sentencepiece's own normalization (its NFKC charsmap), so ids equal the `spm.model`'s and
//! transformers' generic fast tokenizer on the file; transformers 5's `DebertaV2Tokenizer` class
//! instead rebuilds the normalizer without the charsmap and turns e.g. `…` into `[UNK]`
//! (tests/deberta_tokenizer.rs shows both).

use super::bert::EncoderInput;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};
use thiserror::Error;
use tokenizers::{EncodeInput, Tokenizer, TruncationParams, TruncationStrategy};

/// A tokenizer that cannot be loaded or used.
#[derive(Debug, Error)]
pub enum TokenizerError {
    /// `tokenizer.json` is missing, unreadable or not a tokenizer.
    #[error("{path}: cannot load the tokenizer: {message}")]
    Load {
        /// The tokenizer file.
        path: PathBuf,
        /// The library's message.
        message: String,
    },
    /// Encoding failed.
    #[error("tokenizing: {0}")]
    Encode(String),
}

/// A Hugging Face tokenizer set up for one model: padding off (batches are padded to their own
/// longest member), truncation to `max_length` tokens including special tokens.
pub struct TextTokenizer {
    inner: Tokenizer,
    pad_id: i64,
    max_length: usize,
    pad_to: usize,
}

impl TextTokenizer {
    /// Loads `<folder>/tokenizer.json` and truncates to `max_length` tokens.
    pub fn from_folder(folder: &Path, max_length: usize) -> Result<Self, TokenizerError> {
        let path = folder.join("tokenizer.json");
        let load = |message: String| TokenizerError::Load {
            path: path.clone(),
            message,
        };
        if !path.exists() {
            // DeBERTa-v2/v3 checkpoints often ship only the sentencepiece model, which this
            // crate cannot read; naming the converter saves a search. (Not transformers 5's
            // `DebertaV2Tokenizer.save_pretrained`: its normalizer drops sentencepiece's NFKC map.)
            let hint = if folder.join("spm.model").exists() {
                "; the folder has only a sentencepiece spm.model: convert it to tokenizer.json \
                 with transformers' DebertaV2Converter (convert_slow_tokenizer)"
            } else {
                ""
            };
            return Err(load(format!(
                "file not found (a Hugging Face fast tokenizer is required){hint}"
            )));
        }
        let bytes = std::fs::read(&path).map_err(|e| load(e.to_string()))?;
        // The tokenizers crate panics (`expect("Helper")`) on some malformed JSON inside a
        // `decoder` (found by the long fuzz run, docs/reliability.md): the whole file is checked
        // as JSON here first, and any other panic inside the crate becomes an error too.
        serde_json::from_slice::<serde::de::IgnoredAny>(&bytes)
            .map_err(|e| load(format!("not valid JSON: {e}")))?;
        let parsed = std::panic::catch_unwind(|| Tokenizer::from_bytes(&bytes))
            .map_err(|_| load("the tokenizers library could not parse it (it panicked)".into()))?;
        let mut inner = parsed.map_err(|e| load(e.to_string()))?;
        // Pad per batch ourselves; the file's own padding (e.g. a fixed 128) is switched off.
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                ..Default::default()
            }))
            .map_err(|e| load(e.to_string()))?;
        let pad_id = ["[PAD]", "<pad>"]
            .iter()
            .find_map(|t| inner.token_to_id(t))
            .unwrap_or(0) as i64;
        Ok(Self {
            inner,
            pad_id,
            max_length,
            pad_to: 0,
        })
    }

    /// Pads every batch to at least `len` tokens (fixed shapes, e.g. for benchmarks); `0`
    /// (the default) pads each batch to its own longest member only.
    pub fn pad_to(mut self, len: usize) -> Self {
        self.pad_to = len;
        self
    }

    /// The truncation length.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Tokenises single texts (`pairs = None`) or sentence pairs into one padded batch.
    pub fn encode(
        &self,
        texts: &[&str],
        pairs: Option<&[&str]>,
        device: Device,
    ) -> Result<EncoderInput, TokenizerError> {
        let inputs: Vec<EncodeInput> = match pairs {
            None => texts
                .iter()
                .map(|&t| EncodeInput::Single(t.into()))
                .collect(),
            Some(p) => {
                if p.len() != texts.len() {
                    return Err(TokenizerError::Encode(format!(
                        "{} texts but {} pair texts",
                        texts.len(),
                        p.len()
                    )));
                }
                texts
                    .iter()
                    .zip(p)
                    .map(|(&a, &b)| EncodeInput::Dual(a.into(), b.into()))
                    .collect()
            }
        };
        let encodings = self
            .inner
            .encode_batch(inputs, true)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        let len = encodings
            .iter()
            .map(|e| e.get_ids().len())
            .max()
            .unwrap_or(0)
            .max(self.pad_to)
            .max(1);
        let batch = encodings.len();
        let mut ids = vec![self.pad_id; batch * len];
        let mut mask = vec![0i64; batch * len];
        let mut types = vec![0i64; batch * len];
        for (row, e) in encodings.iter().enumerate() {
            for (col, ((&id, &m), &t)) in e
                .get_ids()
                .iter()
                .zip(e.get_attention_mask())
                .zip(e.get_type_ids())
                .enumerate()
            {
                ids[row * len + col] = i64::from(id);
                mask[row * len + col] = i64::from(m);
                types[row * len + col] = i64::from(t);
            }
        }
        let shape = [batch as i64, len as i64];
        let t = |v: &[i64]| Tensor::from_slice(v).view(shape).to_device(device);
        Ok(EncoderInput {
            input_ids: t(&ids),
            attention_mask: t(&mask),
            token_type_ids: t(&types),
        })
    }
}
