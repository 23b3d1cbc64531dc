//! Text generation from a decoder: greedy or sampled (temperature, nucleus), with or without
//! the key/value cache (the two give the same tokens; the cache makes each new token cost one
//! position instead of the whole sequence).

use super::LmError;
use crate::data::SplitMix64;
use crate::models::{KvCache, LlamaModel};
use tch::{Kind, Tensor};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token.
    Greedy,
    /// A draw from `softmax(logits / temperature)` restricted to the smallest set of tokens
    /// whose probabilities sum to at least `top_p` (nucleus sampling), seeded.
    Sample {
        /// Softmax temperature (> 0).
        temperature: f64,
        /// Nucleus mass in (0, 1].
        top_p: f64,
        /// Seed of the draws (same seed, same text).
        seed: u64,
    },
}

/// What [`generate`] does.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Tokens to add at most.
    pub max_new_tokens: usize,
    /// Greedy or sampled.
    pub sampling: Sampling,
    /// Keep keys and values between steps (off only to check the cache).
    pub use_cache: bool,
    /// Generation stops after any of these tokens (the model's end-of-sequence tokens).
    pub stop_tokens: Vec<i64>,
}

/// Checks that `ids` fit `model`: non-empty, every id in the vocabulary, and `ids.len() +
/// extra` positions within the model's context.
pub fn check_tokens(model: &LlamaModel, ids: &[i64], extra: usize) -> Result<(), LmError> {
    let c = model.config();
    if ids.is_empty() {
        return Err(LmError::Input("the prompt is empty (no tokens)".into()));
    }
    if let Some(bad) = ids.iter().find(|&&t| t < 0 || t >= c.vocab_size) {
        return Err(LmError::Input(format!(
            "token id {bad} is outside the model's vocabulary of {} tokens",
            c.vocab_size
        )));
    }
    let needed = ids.len() + extra;
    if needed as i64 > c.max_position_embeddings {
        return Err(LmError::Input(format!(
            "{} prompt tokens + {extra} new tokens = {needed} positions, more than the model's \
             context of {} (max_position_embeddings); shorten the prompt or ask for fewer tokens",
            ids.len(),
            c.max_position_embeddings
        )));
    }
    Ok(())
}

/// The tokens `model` appends to `prompt` (not including the prompt), stopping after a stop
/// token or `max_new_tokens`.
pub fn generate(
    model: &LlamaModel,
    prompt: &[i64],
    opts: &GenerateOptions,
) -> Result<Vec<i64>, LmError> {
    generate_streaming(model, prompt, opts, |_| {})
}

/// As [`generate`], calling `on_token` with each new token as soon as it is chosen (for
/// printing text while it is generated).
pub fn generate_streaming(
    model: &LlamaModel,
    prompt: &[i64],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(i64),
) -> Result<Vec<i64>, LmError> {
    check_tokens(model, prompt, opts.max_new_tokens)?;
    if let Sampling::Sample {
        temperature, top_p, ..
    } = opts.sampling
    {
        if !(temperature > 0.0 && temperature.is_finite()) {
            return Err(LmError::Input(format!(
                "temperature {temperature}: must be a positive number"
            )));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(LmError::Input(format!("top_p {top_p}: must be in (0, 1]")));
        }
    }
    let device = model.device();
    let mut rng = match opts.sampling {
        Sampling::Sample { seed, .. } => Some(SplitMix64::new(seed)),
        Sampling::Greedy => None,
    };
    let mut cache = opts.use_cache.then(KvCache::new);
    let mut sequence: Vec<i64> = prompt.to_vec();
    let mut new = Vec::with_capacity(opts.max_new_tokens);
    tch::no_grad(|| {
        while new.len() < opts.max_new_tokens {
            // With the cache, only the tokens it has not seen yet go in.
            let fed = match &cache {
                Some(c) => &sequence[c.len() as usize..],
                None => &sequence[..],
            };
            let ids = Tensor::from_slice(fed).to_device(device).unsqueeze(0);
            let hidden = model.forward(&ids, None, cache.as_mut(), false);
            let last = hidden.get(0).get(fed.len() as i64 - 1);
            let logits = model.logits(&last).to_kind(Kind::Double);
            let next = match (&opts.sampling, rng.as_mut()) {
                (
                    Sampling::Sample {
                        temperature, top_p, ..
                    },
                    Some(rng),
                ) => sample(&logits, *temperature, *top_p, rng),
                _ => logits.argmax(0, false).int64_value(&[]),
            };
            sequence.push(next);
            new.push(next);
            on_token(next);
            if opts.stop_tokens.contains(&next) {
                break;
            }
        }
    });
    Ok(new)
}

/// One nucleus-sampling draw from `logits` (`[vocab]`, float64): tokens sorted by probability,
/// the shortest prefix with mass ≥ `top_p` kept, and a uniform draw from `rng` inverted
/// through its renormalised cumulative sum.
fn sample(logits: &Tensor, temperature: f64, top_p: f64, rng: &mut SplitMix64) -> i64 {
    let probs = (logits / temperature).softmax(0, Kind::Double);
    let (sorted, order) = probs.sort(0, true);
    let p: Vec<f64> = Vec::<f64>::try_from(&sorted).unwrap_or_default();
    let mut kept = 0usize;
    let mut mass = 0.0;
    for &x in &p {
        kept += 1;
        mass += x;
        if mass >= top_p {
            break;
        }
    }
    // 53 random bits give a uniform draw in [0, 1).
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * mass;
    let mut acc = 0.0;
    let mut pick = kept.saturating_sub(1);
    for (i, &x) in p.iter().take(kept).enumerate() {
        acc += x;
        if u < acc {
            pick = i;
            break;
        }
    }
    order.int64_value(&[pick as i64])
}
