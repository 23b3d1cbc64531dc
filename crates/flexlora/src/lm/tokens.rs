//! A decoder's tokenizer (`tokenizer.json`) and the commonsense questions as token ids.

use super::LmError;
use crate::data::commonsense::{ChoiceQuestion, CommonsenseTask};
use std::path::Path;

/// The tokenizer of a decoder folder, without truncation or padding (the callers check lengths).
#[derive(Debug, Clone)]
pub struct LmTokenizer {
    inner: tokenizers::Tokenizer,
}

impl LmTokenizer {
    /// Reads `<folder>/tokenizer.json`.
    pub fn from_folder(folder: &Path) -> Result<Self, LmError> {
        let path = folder.join("tokenizer.json");
        let mut inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| LmError::Input(format!("{}: {e}", path.display())))?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| LmError::Input(format!("{}: {e}", path.display())))?;
        Ok(Self { inner })
    }

    /// Token ids of `text`, with the tokenizer's special tokens (e.g. a BOS) when `special`.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<i64>, LmError> {
        let e = self
            .inner
            .encode(text, special)
            .map_err(|e| LmError::Input(format!("cannot tokenize {text:?}: {e}")))?;
        Ok(e.get_ids().iter().map(|&i| i64::from(i)).collect())
    }

    /// The text of `ids` (special tokens kept when `keep_special`).
    pub fn decode(&self, ids: &[i64], keep_special: bool) -> Result<String, LmError> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.inner
            .decode(&ids, !keep_special)
            .map_err(|e| LmError::Input(format!("cannot decode tokens: {e}")))
    }

    /// The id of a token written as text (e.g. `<|im_end|>`), if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }
}

/// A multiple-choice question as token ids: the prompt with the tokenizer's special tokens,
/// each choice without (lm-evaluation-harness: context and continuation are encoded apart and
/// concatenated).
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedQuestion {
    /// The task.
    pub task: CommonsenseTask,
    /// Row in the task's split.
    pub row: usize,
    /// Prompt tokens.
    pub prompt: Vec<i64>,
    /// Tokens of each choice (each at least one).
    pub choices: Vec<Vec<i64>>,
    /// Length of each choice in UTF-8 bytes (acc_norm's normaliser).
    pub choice_bytes: Vec<usize>,
    /// The correct choice.
    pub answer: usize,
}

impl EncodedQuestion {
    /// Tokenizes `q`.
    pub fn new(tokenizer: &LmTokenizer, q: &ChoiceQuestion) -> Result<Self, LmError> {
        let prompt = tokenizer.encode(&q.prompt, true)?;
        let mut choices = Vec::with_capacity(q.choices.len());
        for c in &q.choices {
            let ids = tokenizer.encode(c, false)?;
            if ids.is_empty() {
                return Err(LmError::Input(format!(
                    "{} row {}: choice {c:?} has no tokens",
                    q.task.name(),
                    q.row
                )));
            }
            choices.push(ids);
        }
        Ok(Self {
            task: q.task,
            row: q.row,
            prompt,
            choice_bytes: q.choices.iter().map(String::len).collect(),
            choices,
            answer: q.answer,
        })
    }

    /// The longest sequence scoring or training builds from it: prompt + longest choice (+1
    /// for the end-of-sequence token of training).
    pub fn longest(&self) -> usize {
        self.prompt.len() + self.choices.iter().map(Vec::len).max().unwrap_or(0) + 1
    }
}
