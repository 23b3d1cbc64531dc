//! Causal language models: generation, log-likelihood scoring of multiple-choice questions,
//! and fine-tuning with adapters on answer tokens (the commonsense-reasoning suite).

pub mod chat;
pub mod commands;
pub mod eval;
pub mod generate;
pub mod model;
pub mod score;
pub mod tokens;
pub mod train;

pub use chat::{ChatMessage, ChatTemplate, read_conversation};
pub use eval::{LmEvalOptions, lm_eval};
pub use generate::{GenerateOptions, Sampling, check_tokens, generate, generate_streaming};
pub use model::LmModel;
pub use score::{ChoiceScore, TaskAccuracy, accuracies, score_all, score_question};
pub use tokens::{EncodedQuestion, LmTokenizer};
pub use train::{LmSummary, train_lm};

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar over `len` units with rate and ETA (hidden when `quiet`).
pub(crate) fn progress_bar(len: u64, unit: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    ProgressBar::new(len).with_style(
        ProgressStyle::with_template(&format!(
            "{{bar:30}} {{pos}}/{{len}} {unit}  {{msg}}  {{per_sec}}  eta {{eta}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    )
}

/// Input a decoder cannot take.
#[derive(Debug, thiserror::Error)]
pub enum LmError {
    /// The tokens or options are out of range (too long, empty, unknown id, bad setting).
    #[error("{0}")]
    Input(String),
}
