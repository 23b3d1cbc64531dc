//! A PEFT adapter against its base model: the model's linear layers and the classifier's head.

use super::{PeftAdapter, PeftModule};
use crate::models::{Classifier, Encoder, HfNames, LlamaModel, Weights};
use crate::peft::PeftError;
use anyhow::Context;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The shape of a tensor in a safetensors file, if present.
fn tensor_shape(file: &Path, name: &str) -> anyhow::Result<Option<Vec<i64>>> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: not a valid safetensors file", file.display()))?;
    Ok(st
        .tensor(name)
        .ok()
        .map(|v| v.shape().iter().map(|&d| d as i64).collect()))
}

/// The adaptable linear layers of a base model, as an adapter is checked against them.
pub(super) struct BaseLayers {
    /// Its names (the prefix its layers are under, its class name).
    names: HfNames,
    /// Module paths under the prefix, in model order.
    paths: Vec<String>,
    /// The same layers under the names older checkpoints use (transformers 4's vision names).
    saved: Vec<String>,
    /// `(in_features, out_features)` of each.
    features: Vec<(i64, i64)>,
}

impl BaseLayers {
    /// The linear layers of a classifier's encoder.
    pub(super) fn of_encoder(encoder: &Encoder) -> Self {
        Self {
            names: encoder.hf_names(),
            paths: encoder.linear_paths(),
            saved: encoder.linear_saved_names(),
            features: encoder.linears().iter().map(|l| l.features()).collect(),
        }
    }

    /// The projections of a decoder (`LlamaForCausalLM`'s `model.layers.N.self_attn.q_proj`).
    pub(super) fn of_decoder(model: &LlamaModel, names: HfNames) -> Self {
        let paths = model.linear_paths();
        Self {
            names,
            saved: paths.clone(),
            paths,
            features: model.linears().iter().map(|l| l.features()).collect(),
        }
    }
}

/// Checks `adapter`'s modules against the base model's layers (its architecture's prefix, every
/// module an adaptable linear layer of matching shape), names them by the model's module paths
/// (an adapter made under transformers 4's vision module names, `attention.attention.query`,
/// gets transformers 5's, `attention.q_proj`), and puts them in the model's order.
pub(super) fn fit_to_base(
    adapter: &mut PeftAdapter,
    layers: &BaseLayers,
    base: &Path,
) -> Result<(), PeftError> {
    let mismatch = |message: String| PeftError::BaseMismatch {
        adapter: adapter.dir.clone(),
        base: base.to_path_buf(),
        message,
    };
    let names = &layers.names;
    let expected = format!("{}.", names.prefix);
    let mut order = Vec::with_capacity(adapter.modules.len());
    for m in &mut adapter.modules {
        let Some(relative) = m.hf_name.strip_prefix(&expected) else {
            let found = m.hf_name.split('.').next().unwrap_or_default();
            let other = HfNames::all_prefixes().contains(&found) || found == "model";
            return Err(mismatch(format!(
                "module `{}` is not under `{expected}`, where a {} names its layers{}",
                m.hf_name,
                names.architecture,
                if other {
                    format!(
                        " (`{found}.` is another architecture's: the adapter is for another base model)"
                    )
                } else {
                    String::new()
                }
            )));
        };
        let index = layers
            .paths
            .iter()
            .position(|p| p == relative)
            .or_else(|| layers.saved.iter().position(|p| p == relative));
        let Some(i) = index else {
            let examples: Vec<&str> = layers.paths.iter().take(6).map(String::as_str).collect();
            return Err(mismatch(format!(
                "module `{}` is not an adaptable linear layer of the base model ({} linear \
                 layers; its modules look like {})",
                m.hf_name,
                layers.paths.len(),
                examples.join(", ")
            )));
        };
        let (in_f, out_f) = layers.features[i];
        let (a_in, b_out) = m.features();
        if (a_in, b_out) != (in_f, out_f) {
            return Err(mismatch(format!(
                "module `{}`: lora_A {:?} and lora_B {:?} are for a {a_in} -> {b_out} layer, but \
                 the base layer is {in_f} -> {out_f} (in -> out)",
                m.hf_name,
                [m.rank() as i64, a_in],
                [b_out, m.rank() as i64],
            )));
        }
        m.path = layers.paths[i].clone();
        order.push(i);
    }
    let mut modules: Vec<(usize, PeftModule)> =
        order.into_iter().zip(adapter.modules.drain(..)).collect();
    modules.sort_by_key(|(i, _)| *i);
    adapter.modules = modules.into_iter().map(|(_, m)| m).collect();
    Ok(())
}

/// The classifier the imported model uses (the adapter's, else the base folder's) and its
/// number of outputs, checked against the head a classifier on this base has (`probe`: its
/// input width, and whether it has a pooler and the base a trained one).
pub(super) fn head(
    adapter: &PeftAdapter,
    probe: &Classifier,
    weights: &Weights,
    base: &Path,
) -> anyhow::Result<(Tensor, Tensor, i64)> {
    let mismatch = |message: String| PeftError::BaseMismatch {
        adapter: adapter.dir.clone(),
        base: base.to_path_buf(),
        message,
    };
    let width = probe.classifier().0.size()[1];
    let (cw, cb) = match &adapter.classifier {
        Some((w, b)) => (w.shallow_clone(), b.shallow_clone()),
        None if weights.contains("classifier.weight") => {
            let prefix = format!("{}.", probe.hf_names().prefix);
            let shape = tensor_shape(weights.path(), "classifier.weight")?
                .or(tensor_shape(
                    weights.path(),
                    &format!("{prefix}classifier.weight"),
                )?)
                .unwrap_or_default();
            let n = shape.first().copied().unwrap_or(0);
            (
                weights.tensor("classifier.weight", &[n, width], Kind::Float, Device::Cpu)?,
                weights.tensor("classifier.bias", &[n], Kind::Float, Device::Cpu)?,
            )
        }
        None => {
            return Err(mismatch(
                "the adapter has no trained classifier (modules_to_save) and the base model has \
                 none: there is no head to evaluate with"
                    .into(),
            )
            .into());
        }
    };
    let n = cw.size().first().copied().unwrap_or(0);
    if cw.size() != [n, width] || cb.size() != [n] || n < 1 {
        return Err(mismatch(format!(
            "the classifier is {:?} with bias {:?}; a {} on this base reads {width} features",
            cw.size(),
            cb.size(),
            probe.hf_names().architecture
        ))
        .into());
    }
    let pooler_shape = probe.pooler().map(|(w, _)| w.size());
    let base_pooler = pooler_shape.is_some() && !probe.pooler_is_new();
    let message = match (&adapter.pooler, &pooler_shape) {
        (Some(_), None) => Some(format!(
            "the adapter carries a pooler (modules_to_save), but a {} has none",
            probe.hf_names().architecture
        )),
        (Some(_), Some(_)) if base_pooler => Some(
            "the adapter trained the pooler (modules_to_save), but the base model has its own, \
             which flexlora keeps frozen; a trained pooler over a pretrained one is not supported"
                .into(),
        ),
        (None, Some(_)) if !base_pooler => Some(
            "the base model has no pooler and the adapter does not carry one (modules_to_save): \
             the classifier's input would be random"
                .into(),
        ),
        (Some((w, b)), Some(shape)) if w.size() != *shape || b.size() != [shape[0]] => {
            Some(format!(
                "the pooler is {:?} with bias {:?}; this base model needs {shape:?}",
                w.size(),
                b.size()
            ))
        }
        _ => None,
    };
    if let Some(message) = message {
        return Err(mismatch(message).into());
    }
    Ok((cw, cb, n))
}
