//! A decoder run's adapters as a llama.cpp LoRA adapter (`flexlora export --format gguf-lora`).
//!
//! llama.cpp loads an adapter GGUF with `general.type = "adapter"`, `adapter.type = "lora"` and
//! `general.architecture` equal to the base model's, and pairs `<tensor>.lora_a` with
//! `<tensor>.lora_b`, where `<tensor>` is the base model's GGUF tensor name
//! (`blk.N.attn_q.weight`, ...). Each pair's rank is read from its shapes (`lora_a` is
//! `[r, in]`, `lora_b` `[out, r]` row-major), so every matrix keeps the rank FlexLoRA gave it;
//! matrices at rank 0 are left out. llama.cpp scales a pair by `alpha / r` unless
//! `adapter.lora.alpha` is 0, when the scale is the user's adapter scale (1 by default): so the
//! file says `alpha = 0` and each matrix's whole scale (`s · λ` for SVD adapters, `α / r` for
//! LoRA) is folded into its `lora_b`.
//!
//! llama.cpp's LLaMA converter reorders the rows of every head of `q_proj` and `k_proj` for its
//! interleaved rotary embedding (rows `[2, head_dim/2]` of a head become `[head_dim/2, 2]`); the
//! adapter's `lora_b` rows get the same reordering, so `ΔW` lands on the rows the base weights
//! were moved to.

use super::PeftError;
use super::export::{RunAdapters, scaled_pairs};
use crate::config::Config;
use crate::gguf::{MetaValue, TensorType, write_gguf};
use crate::models::{Architecture, LlamaConfig};
use std::path::Path;
use tch::Tensor;

/// llama.cpp's tensor name of the decoder projection at `path` (`layers.3.self_attn.q_proj` ->
/// `blk.3.attn_q.weight`), with the head count whose rows llama.cpp reorders (`q_proj`,
/// `k_proj`), or `None` for a path llama.cpp's LLaMA has no tensor for.
fn llama_cpp_name(path: &str, config: &LlamaConfig) -> Option<(String, Option<i64>)> {
    let rest = path.strip_prefix("layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (name, heads) = match module {
        "self_attn.q_proj" => ("attn_q", Some(config.num_attention_heads)),
        "self_attn.k_proj" => ("attn_k", Some(config.num_key_value_heads)),
        "self_attn.v_proj" => ("attn_v", None),
        "self_attn.o_proj" => ("attn_output", None),
        "mlp.gate_proj" => ("ffn_gate", None),
        "mlp.up_proj" => ("ffn_up", None),
        "mlp.down_proj" => ("ffn_down", None),
        _ => return None,
    };
    Some((format!("blk.{layer}.{name}.weight"), heads))
}

/// The rows of `b` (`[heads · head_dim, r]`) in llama.cpp's order for interleaved rotary
/// embeddings: per head, `[2, head_dim/2]` becomes `[head_dim/2, 2]`.
fn rotary_rows(b: &Tensor, heads: i64) -> Tensor {
    let size = b.size();
    let half = size[0] / heads / 2;
    b.reshape([heads, 2, half, size[1]])
        .transpose(1, 2)
        .reshape(size.as_slice())
}

/// Writes `run`'s adapters (made with `config`, a decoder run) to the GGUF file `out`.
pub(super) fn write_gguf_lora(
    config: &Config,
    run: &RunAdapters,
    ty: TensorType,
    out: &Path,
) -> anyhow::Result<()> {
    let base = &config.model.path;
    let arch = Architecture::of_folder(base)?;
    if !arch.is_decoder() {
        return Err(PeftError::Run {
            run: base.clone(),
            message: format!(
                "gguf-lora is for decoder runs (llama.cpp runs LLaMA-family decoders); this \
                 run's model is a {} (model_type \"{}\"): export it with --format peft-lora",
                if arch.is_vision() {
                    "vision classifier"
                } else {
                    "text classifier"
                },
                arch.model_type()
            ),
        }
        .into());
    }
    let llama = LlamaConfig::from_folder(base)?;
    let mut tensors = Vec::new();
    for (path, a, b) in scaled_pairs(run) {
        let Some((name, heads)) = llama_cpp_name(&path, &llama) else {
            return Err(PeftError::Run {
                run: base.clone(),
                message: format!(
                    "adapted module `{path}` has no llama.cpp tensor name in this exporter \
                     (it maps the seven projections of LLaMA's decoder layers)"
                ),
            }
            .into());
        };
        let b = match heads {
            Some(h) => rotary_rows(&b, h),
            None => b,
        };
        tensors.push((format!("{name}.lora_a"), a.contiguous()));
        tensors.push((format!("{name}.lora_b"), b.contiguous()));
    }
    if tensors.is_empty() {
        anyhow::bail!("every adapted matrix has rank 0: there is no adapter to export");
    }
    let metadata = [
        ("general.architecture", MetaValue::Str("llama".into())),
        ("general.type", MetaValue::Str("adapter".into())),
        ("general.name", MetaValue::Str("flexlora adapter".into())),
        ("adapter.type", MetaValue::Str("lora".into())),
        // 0: llama.cpp applies no alpha / r of its own; the scales are in lora_b.
        ("adapter.lora.alpha", MetaValue::F32(0.0)),
    ];
    write_gguf(out, &metadata, &tensors, ty)
}

/// Exports the finished decoder run in `run_dir` (its `checkpoints/best`, else `final`) as a
/// llama.cpp LoRA adapter at `out`, tensors stored as `ty`.
pub fn export_run_gguf(run_dir: &Path, ty: TensorType, out: &Path) -> anyhow::Result<()> {
    let state = super::RunState::load(run_dir)?;
    let run = super::export::run_adapters(&state.config, &state.tensors)?;
    write_gguf_lora(&state.config, &run, ty, out)
}
