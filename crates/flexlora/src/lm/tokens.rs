//! A decoder's tokenizer (`tokenizer.json`) and the commonsense questions as token ids.

use super::LmError;
use crate::data::commonsense::{ChoiceQuestion, CommonsenseTask, PromptFormat};
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

/// A multiple-choice question as token ids. In the LLM-Adapters format the prompt is encoded
/// with the tokenizer's special tokens and each choice on its own; in the harness format as
/// lm-evaluation-harness encodes a request: trailing whitespace of the context moves to the
/// continuation, the context is encoded alone and the continuation is what encoding the whole
/// text adds after it (no special tokens, as the harness for causal models).
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedQuestion {
    /// The task.
    pub task: CommonsenseTask,
    /// Row in the task's split.
    pub row: usize,
    /// Prompt tokens every choice continues (unused when `choice_prompts` is set).
    pub prompt: Vec<i64>,
    /// Per-choice prompt tokens (WinoGrande in the harness format); empty otherwise.
    pub choice_prompts: Vec<Vec<i64>>,
    /// Tokens of each choice (each at least one).
    pub choices: Vec<Vec<i64>>,
    /// acc_norm's normaliser per choice ([`ChoiceQuestion::norm_lengths`]).
    pub norm_lengths: Vec<usize>,
    /// The correct choice.
    pub answer: usize,
}

impl EncodedQuestion {
    /// Tokenizes `q`.
    pub fn new(tokenizer: &LmTokenizer, q: &ChoiceQuestion) -> Result<Self, LmError> {
        let no_tokens = |c: &str| {
            LmError::Input(format!(
                "{} row {}: choice {c:?} has no tokens",
                q.task.name(),
                q.row
            ))
        };
        let (prompt, choice_prompts, choices) = match q.format {
            PromptFormat::LlmAdapters => {
                let mut choices = Vec::with_capacity(q.choices.len());
                for c in &q.choices {
                    let ids = tokenizer.encode(c, false)?;
                    if ids.is_empty() {
                        return Err(no_tokens(c));
                    }
                    choices.push(ids);
                }
                (tokenizer.encode(&q.prompt, true)?, Vec::new(), choices)
            }
            PromptFormat::Harness => {
                let mut prompts = Vec::with_capacity(q.choices.len());
                let mut choices = Vec::with_capacity(q.choices.len());
                for (j, c) in q.choices.iter().enumerate() {
                    let context = q.prompt_of(j);
                    let kept = context.trim_end();
                    let continuation = format!("{}{c}", &context[kept.len()..]);
                    let context_ids = tokenizer.encode(kept, false)?;
                    let whole = tokenizer.encode(&format!("{kept}{continuation}"), false)?;
                    let ids = whole.get(context_ids.len()..).unwrap_or_default().to_vec();
                    if ids.is_empty() {
                        return Err(no_tokens(c));
                    }
                    prompts.push(context_ids);
                    choices.push(ids);
                }
                if q.choice_prompts.is_empty() {
                    let shared = prompts.swap_remove(0);
                    (shared, Vec::new(), choices)
                } else {
                    (Vec::new(), prompts, choices)
                }
            }
        };
        Ok(Self {
            task: q.task,
            row: q.row,
            prompt,
            choice_prompts,
            choices,
            norm_lengths: q.norm_lengths.clone(),
            answer: q.answer,
        })
    }

    /// The prompt tokens choice `j` continues.
    pub fn prompt_of(&self, j: usize) -> &[i64] {
        self.choice_prompts.get(j).unwrap_or(&self.prompt)
    }

    /// The longest sequence scoring or training builds from it: prompt + longest choice (+1
    /// for the end-of-sequence token of training).
    pub fn longest(&self) -> usize {
        (0..self.choices.len())
            .map(|j| self.prompt_of(j).len() + self.choices[j].len())
            .max()
            .unwrap_or(0)
            + 1
    }
}
