//! Causal language models: generation, log-likelihood scoring of multiple-choice questions,
//! and fine-tuning with adapters on answer tokens (the commonsense-reasoning suite).

pub mod generate;

pub use generate::{GenerateOptions, Sampling, check_tokens, generate};

/// Input a decoder cannot take.
#[derive(Debug, thiserror::Error)]
pub enum LmError {
    /// The tokens or options are out of range (too long, empty, unknown id, bad setting).
    #[error("{0}")]
    Input(String),
}
