//! Refusing a training step that would not fit in memory, before any work starts.

use crate::config::{Config, MethodName};
use crate::models::Preprocessor;
use crate::resources::EncoderShape;

/// Refuses a batch shape (`training.batch_size` x `data.max_length` tokens, or x the image's
/// patches + 1) whose training step would not fit in memory (see
/// [`crate::resources::training_step_bytes`]).
pub(crate) fn check_step_memory(config: &Config, input: &Preprocessor) -> anyhow::Result<()> {
    let Some((shape, seq, what)) = (match input {
        Preprocessor::Text(_) => text_shape(config),
        Preprocessor::Image(p) => image_shape(config, p.size),
    }) else {
        return Ok(());
    };
    let batch = config.training.batch_size;
    let full = config.method.name == MethodName::Full;
    crate::resources::check(
        || {
            format!(
                "a training step of training.batch_size = {batch} x {what} on {}",
                config.model.path.display()
            )
        },
        crate::resources::training_step_bytes(shape, batch, seq, full),
        "lower training.batch_size (training.grad_accum keeps the effective batch) or the input size",
    )?;
    Ok(())
}

/// A text encoder's shape from the fields every supported one's config.json shares (BERT,
/// DeBERTa-v2/v3); none when they are missing (the model loader then says precisely why).
fn text_shape(config: &Config) -> Option<(EncoderShape, u64, String)> {
    #[derive(serde::Deserialize)]
    struct Shape {
        hidden_size: u64,
        num_hidden_layers: u64,
        num_attention_heads: u64,
        intermediate_size: u64,
        vocab_size: u64,
        #[serde(default)]
        max_position_embeddings: u64,
        #[serde(default)]
        type_vocab_size: u64,
    }
    let c = crate::models::hf::read_config::<Shape>(&config.model.path).ok()?;
    let (h, i, layers) = (c.hidden_size, c.intermediate_size, c.num_hidden_layers);
    let embeddings = (c.vocab_size + c.max_position_embeddings + c.type_vocab_size) * h;
    let shape = EncoderShape {
        layers,
        hidden: h,
        intermediate: i,
        heads: c.num_attention_heads,
        parameters: embeddings + layers * (4 * h * h + 2 * h * i),
    };
    let seq = config.data.max_length as u64;
    Some((shape, seq, format!("data.max_length = {seq} tokens")))
}

/// A vision transformer's shape on `size x size` images: one token per patch plus the class
/// token.
fn image_shape(config: &Config, size: u32) -> Option<(EncoderShape, u64, String)> {
    let c = crate::models::VitConfig::from_folder(&config.model.path).ok()?;
    let (h, i, layers) = (
        c.hidden_size as u64,
        c.intermediate_size as u64,
        c.num_hidden_layers as u64,
    );
    let patches = |p: i64| u64::from(size) / p.max(1) as u64;
    let seq = patches(c.patch_size[0]) * patches(c.patch_size[1]) + 1;
    let [gh, gw] = c.grid();
    let embeddings = ((gh * gw) as u64 + 1) * h
        + h * c.num_channels as u64 * (c.patch_size[0] * c.patch_size[1]) as u64;
    let shape = EncoderShape {
        layers,
        hidden: h,
        intermediate: i,
        heads: c.num_attention_heads as u64,
        parameters: embeddings + layers * (4 * h * h + 2 * h * i),
    };
    Some((
        shape,
        seq,
        format!("data.image_size = {size} pixels ({seq} tokens)"),
    ))
}
