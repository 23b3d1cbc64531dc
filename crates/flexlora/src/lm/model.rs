//! The decoder a run trains: a LLaMA model with the method's adapters, and its adapter state
//! as named tensors (saved in the run, loaded by `generate` and `lm-eval`).

use crate::adapter::{AdaptedLinear, SvdAdapter};
use crate::config::{Config, MethodName};
use crate::models::LlamaModel;
use crate::train::model::{
    TrainableModel, adapter_masks, adapter_optimiser_groups, adapter_parameters,
    adapter_trainables, inject_method_adapters, restore_adapters,
};
use anyhow::bail;
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Tensor};

/// A LLaMA decoder with FlexLoRA, AdaLoRA or LoRA adapters (the base frozen).
#[derive(Debug)]
pub struct LmModel {
    /// The decoder.
    pub model: LlamaModel,
    /// Module paths of the adapted projections, in model order.
    pub adapted_paths: Vec<String>,
    /// The method.
    pub method: MethodName,
}

impl LmModel {
    /// Loads `config.model.path` and injects the method's adapters into the projections
    /// `model.target_modules` selects. Draws from LibTorch's global generator: seed it first.
    pub fn build(config: &Config, device: Device) -> anyhow::Result<Self> {
        Self::check_method(config.method.name)?;
        let model = LlamaModel::from_folder(&config.model.path, device)?;
        Self::with_adapters(config, model, device)
    }

    /// Injects the method's adapters into `model`, the decoder loaded from
    /// `config.model.path` (see [`LmModel::build`]).
    pub fn with_adapters(
        config: &Config,
        mut model: LlamaModel,
        device: Device,
    ) -> anyhow::Result<Self> {
        let method = config.method.name;
        Self::check_method(method)?;
        let paths = model.linear_paths();
        let adapted_paths = inject_method_adapters(config, model.linears_mut(), &paths, device)?;
        Ok(Self {
            model,
            adapted_paths,
            method,
        })
    }

    /// Refuses methods without adapters (decoders are not fully fine-tuned here).
    pub fn check_method(method: MethodName) -> anyhow::Result<()> {
        if !matches!(
            method,
            MethodName::Flexlora | MethodName::Adalora | MethodName::Lora
        ) {
            bail!(
                "method.name = {:?}: decoders train with adapters only (flexlora, adalora or \
                 lora); full fine-tuning and linear probes are for classifiers",
                serde_json::to_value(method)?.as_str().unwrap_or("?")
            );
        }
        Ok(())
    }

    /// The model of a finished decoder run: its config's model with the adapters of the run's
    /// best validation epoch (`checkpoints/best`, else `checkpoints/final`); also returns the
    /// run's config.
    pub fn from_run(run: &Path, device: Device) -> anyhow::Result<(Config, Self)> {
        let config = crate::train::load_run_config(run)?;
        tch::manual_seed(0);
        let mut model = Self::build(&config, device)?;
        let best = run.join("checkpoints/best");
        let dir = if best.exists() {
            best
        } else {
            run.join("checkpoints/final")
        };
        if !dir.exists() {
            bail!(
                "{}: no trained adapters there (the run did not finish, or is not a decoder run)",
                run.display()
            );
        }
        crate::train::run::load_model_checkpoint(&dir, &mut model)?;
        Ok((config, model))
    }

    fn adapted_linears(&self) -> Vec<&AdaptedLinear> {
        self.model
            .linears()
            .into_iter()
            .filter(|l| l.adapter.is_some())
            .collect()
    }

    fn adapted_linears_mut(&mut self) -> Vec<&mut AdaptedLinear> {
        self.model
            .linears_mut()
            .into_iter()
            .filter(|l| l.adapter.is_some())
            .collect()
    }

    /// Adapter parameters that take part (active slots only for SVD adapters).
    pub fn trainable_parameters(&self) -> i64 {
        adapter_parameters(self.model.linears())
    }

    /// The adapters' state: trainable tensors and slot masks, detached copies on the CPU.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> =
            adapter_trainables(&self.adapted_paths, self.adapted_linears())
                .into_iter()
                .map(|(n, t)| (n, t.detach().to_device(Device::Cpu).copy()))
                .collect();
        v.extend(adapter_masks(&self.adapted_paths, self.adapted_linears()));
        v
    }

    /// Restores a state written by [`LmModel::state`] (same config); names and shapes must
    /// match.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        crate::io::check_saved_tensors(&self.state(), state, "the adapters")
            .map_err(anyhow::Error::msg)?;
        let paths = self.adapted_paths.clone();
        restore_adapters(&paths, self.adapted_linears_mut(), state)
    }
}

impl TrainableModel for LmModel {
    fn svd_adapters(&self) -> Vec<&SvdAdapter> {
        self.model
            .linears()
            .into_iter()
            .filter_map(|l| l.svd_adapter())
            .collect()
    }

    fn svd_adapters_mut(&mut self) -> Vec<&mut SvdAdapter> {
        self.model
            .linears_mut()
            .into_iter()
            .filter_map(|l| l.svd_adapter_mut())
            .collect()
    }

    fn named_trainables(&self) -> Vec<(String, Tensor)> {
        adapter_trainables(&self.adapted_paths, self.adapted_linears())
    }

    fn optimiser_groups(&self) -> Vec<Vec<(&Tensor, Option<usize>)>> {
        let (mut groups, rest) = adapter_optimiser_groups(self.model.linears());
        groups.push(rest);
        groups
    }

    fn trainable_parameters(&self) -> i64 {
        LmModel::trainable_parameters(self)
    }

    fn adapted_paths(&self) -> &[String] {
        &self.adapted_paths
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        LmModel::state(self)
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        LmModel::load_state(self, state)
    }
}
