//! PEFT adapters onto a LLaMA-family decoder (`task_type: CAUSAL_LM`, the layers of
//! `LlamaForCausalLM` under `model.`).

use super::base::{BaseLayers, fit_to_base};
use super::state::adapter_state;
use super::{ImportedModel, PeftAdapter, check_task_type, read_peft_adapter, resolve_base};
use crate::config::{Config, DataFormat, ScalePolicy};
use crate::lm::LmModel;
use crate::models::{Architecture, HfNames, LlamaModel};
use crate::peft::PeftError;
use anyhow::Context;
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Tensor};

/// Loads the PEFT adapter in `peft_dir` (made by PEFT on a `LlamaForCausalLM`) onto the decoder
/// folder `base` (default: the adapter's `base_model_name_or_path` when it is a local folder)
/// as an [`LmModel`] on `device`, for scoring, generation or further training.
///
/// The run config comes from `template` (a decoder config: `data.format = "commonsense"`) with
/// `model.path`, `model.target_modules` and `[method]` set from the adapter by the rules of
/// [`import_peft`](super::import_peft). Adapters on the embeddings or the output layer, and a
/// trained copy of either (`modules_to_save`), are refused by name.
pub fn import_peft_decoder(
    peft_dir: &Path,
    base: Option<&Path>,
    template: &Config,
    device: Device,
) -> anyhow::Result<ImportedModel<LmModel>> {
    let adapter = read_peft_adapter(peft_dir)?;
    let base = resolve_base(&adapter, base)?;
    import(adapter, &base, template, device)
}

/// [`import_peft_decoder`] on an adapter already read, onto the decoder `base`.
pub(super) fn import(
    mut adapter: PeftAdapter,
    base: &Path,
    template: &Config,
    device: Device,
) -> anyhow::Result<ImportedModel<LmModel>> {
    let arch = Architecture::of_folder(base)?;
    if !arch.is_decoder() {
        anyhow::bail!(
            "{} is a {} classifier's encoder, not a decoder: import its adapters with import_peft",
            base.display(),
            arch.model_type()
        );
    }
    check_task_type(&adapter, base, true)?;
    if adapter.classifier.is_some() || adapter.pooler.is_some() {
        return Err(PeftError::BaseMismatch {
            adapter: adapter.dir.clone(),
            base: base.to_path_buf(),
            message: "the adapter carries a classifier or pooler (modules_to_save), which a \
                      causal language model does not have"
                .into(),
        }
        .into());
    }
    if template.data.format != DataFormat::Commonsense {
        anyhow::bail!(
            "the run config for a decoder adapter must be a decoder config (data.format = \
             \"commonsense\", as configs/commonsense/smollm2-flexlora.toml), not data.format = \
             {:?}; choose it with --config",
            template.data.format
        );
    }
    let decoder = LlamaModel::from_folder(base, device)?;
    let layers = BaseLayers::of_decoder(&decoder, HfNames::of_folder(base)?);
    fit_to_base(&mut adapter, &layers, base)?;

    let mut config = template.clone();
    config.model.path = base.to_path_buf();
    config.model.target_modules = adapter.modules.iter().map(|m| m.path.clone()).collect();
    config.method.dropout = adapter.dropout;
    config.method.scale = ScalePolicy::InitRank;
    let state: HashMap<String, Tensor> = adapter_state(&adapter, &mut config).into_iter().collect();
    config
        .validate("the imported adapter's config")
        .context("building the run config of the imported adapter")?;
    // The adapters' random initialisation is overwritten; seeded so the draw is the same.
    tch::manual_seed(0);
    let mut model = LmModel::with_adapters(&config, decoder, device)?;
    model
        .load_state(&state)
        .with_context(|| format!("loading the adapter in {}", adapter.dir.display()))?;
    Ok(ImportedModel::new(config, model, &adapter))
}
