//! The model a run trains: a BERT classifier with the method's adapters, and its trainable
//! state as named tensors (for checkpoints, best-epoch selection and export).

use crate::adapter::{
    AdaptedLinear, Adapter, LoraAdapter, SvdAdapter, SvdAdapterConfig, inject_adapters,
};
use crate::config::{Config, MethodName, ScalePolicy, TaskKind};
use crate::models::{Classifier, Encoder, ModelInput};
use anyhow::Context;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// Standard deviation of the initial `P` and `Q` entries (AdaLoRA and FlexLoRA, docs/method.md §1).
pub const SVD_INIT_STD: f64 = 0.02;

/// Injects `config`'s adapters (FlexLoRA, AdaLoRA or LoRA, by `method.name`) into the
/// layers of `linears` (whose module paths are `paths`) that `model.target_modules` selects,
/// and returns the adapted paths in model order. Other methods inject nothing. Draws the
/// adapters' initial factors from LibTorch's global generator.
pub fn inject_method_adapters(
    config: &Config,
    linears: Vec<&mut AdaptedLinear>,
    paths: &[String],
    device: Device,
) -> anyhow::Result<Vec<String>> {
    let m = &config.method;
    let opts = (Kind::Float, device);
    match m.name {
        MethodName::Flexlora | MethodName::Adalora => {
            // AdaLoRA keeps every one of its r_init slots active and masks by zeroing λ,
            // with PEFT's scale (see crate::adalora); `method.r_max` and `method.scale`
            // apply to FlexLoRA only.
            let adalora = m.name == MethodName::Adalora;
            let svd = SvdAdapterConfig {
                r_init: m.r_init,
                r_max: if adalora { m.r_init } else { m.r_max },
                alpha: m.alpha,
                dropout: m.dropout,
                scale: if adalora {
                    ScalePolicy::PeftAdalora
                } else {
                    m.scale
                },
                init_std: SVD_INIT_STD,
            };
            inject_adapters(linears, paths, &config.model.target_modules, |i, o| {
                Ok(Adapter::Svd(SvdAdapter::new(i, o, svd, opts)?))
            })
        }
        MethodName::Lora => {
            inject_adapters(linears, paths, &config.model.target_modules, |i, o| {
                Ok(Adapter::Lora(LoraAdapter::new(
                    i, o, m.r_init, m.alpha, m.dropout, opts,
                )?))
            })
        }
        MethodName::Full | MethodName::LinearProbe => Ok(Vec::new()),
    }
    .with_context(|| format!("model.target_modules = {:?}", config.model.target_modules))
}

/// What the optimiser step, the allocators and the numerical guards need of a model being
/// trained (a classifier here, a decoder in [`crate::lm`]).
pub trait TrainableModel {
    /// The SVD adapters, in model order.
    fn svd_adapters(&self) -> Vec<&SvdAdapter>;
    /// The SVD adapters, mutably, in model order.
    fn svd_adapters_mut(&mut self) -> Vec<&mut SvdAdapter>;
    /// The trainable tensors by name (shallow handles of the live parameters).
    fn named_trainables(&self) -> Vec<(String, Tensor)>;
    /// Optimiser groups: one per SVD adapter (group `k` = adapter `k`, slot axes given), then
    /// every other trainable tensor in one unslotted group.
    fn optimiser_groups(&self) -> Vec<Vec<(&Tensor, Option<usize>)>>;
    /// Trainable parameters that take part (SVD adapters: active slots only).
    fn trainable_parameters(&self) -> i64;
    /// Module paths of the adapted layers, in model order (the order of every log and plot).
    fn adapted_paths(&self) -> &[String];
    /// The trainable state as named tensors (what a checkpoint's `model.safetensors` holds):
    /// detached copies on the CPU.
    fn state(&self) -> Vec<(String, Tensor)>;
    /// Restores a state written by [`TrainableModel::state`] for the same config, in place (the
    /// optimiser keeps pointing at the same tensors); names and shapes must match.
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> anyhow::Result<()>;
}

impl TrainableModel for TaskModel {
    fn svd_adapters(&self) -> Vec<&SvdAdapter> {
        TaskModel::svd_adapters(self)
    }
    fn svd_adapters_mut(&mut self) -> Vec<&mut SvdAdapter> {
        TaskModel::svd_adapters_mut(self)
    }
    fn named_trainables(&self) -> Vec<(String, Tensor)> {
        TaskModel::named_trainables(self)
    }
    fn optimiser_groups(&self) -> Vec<Vec<(&Tensor, Option<usize>)>> {
        TaskModel::optimiser_groups(self)
    }
    fn trainable_parameters(&self) -> i64 {
        TaskModel::trainable_parameters(self)
    }
    fn adapted_paths(&self) -> &[String] {
        &self.adapted_paths
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        TaskModel::state(self)
    }
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        TaskModel::load_state(self, state)
    }
}

/// A sequence classifier (BERT or DeBERTa-v2/v3, by the checkpoint's `model_type`) with the
/// method's adapters.
#[derive(Debug)]
pub struct TaskModel {
    /// Encoder and head.
    pub classifier: Classifier,
    /// Module paths of the adapted layers, in model order (the order of every log and plot).
    pub adapted_paths: Vec<String>,
    /// The method.
    pub method: MethodName,
    /// Classification or regression.
    pub task: TaskKind,
}

impl TaskModel {
    /// Loads the checkpoint of `config.model.path`, puts a new head with `num_labels` outputs
    /// on it, and injects the method's adapters (or unfreezes the encoder for `full`). Draws
    /// from LibTorch's global generator: seed it first.
    pub fn build(
        config: &Config,
        num_labels: usize,
        task: TaskKind,
        device: Device,
    ) -> anyhow::Result<Self> {
        let (mut encoder, weights) = Encoder::from_folder(&config.model.path, device)?;
        let paths = encoder.linear_paths();
        let m = &config.method;
        let adapted_paths = match m.name {
            MethodName::Full => {
                encoder.set_trainable(true);
                Vec::new()
            }
            MethodName::LinearProbe => Vec::new(),
            _ => inject_method_adapters(config, encoder.linears_mut(), &paths, device)?,
        };
        // Mixed precision: only frozen linear layers change kind (full fine-tuning trains
        // every weight, which stays float32).
        let base_kind = config.training.precision.base_kind(device);
        if base_kind != Kind::Float && m.name != MethodName::Full {
            for l in encoder.linears_mut() {
                l.set_base_kind(base_kind);
            }
        }
        let classifier = Classifier::new(encoder, &weights, num_labels as i64)?;
        Ok(Self {
            classifier,
            adapted_paths,
            method: m.name,
            task,
        })
    }

    /// The SVD adapters, in model order.
    pub fn svd_adapters(&self) -> Vec<&SvdAdapter> {
        self.classifier
            .linears()
            .into_iter()
            .filter_map(|l| l.svd_adapter())
            .collect()
    }

    /// The SVD adapters, mutably, in model order.
    pub fn svd_adapters_mut(&mut self) -> Vec<&mut SvdAdapter> {
        self.classifier
            .linears_mut()
            .into_iter()
            .filter_map(|l| l.svd_adapter_mut())
            .collect()
    }

    /// The task loss of a batch: cross-entropy for classification, mean squared error for
    /// regression; also returns the logits.
    pub fn loss(&self, input: &ModelInput, labels: &Tensor, train: bool) -> (Tensor, Tensor) {
        let logits = self.classifier.forward(input, train);
        let loss = match self.task {
            TaskKind::Classification => {
                logits.cross_entropy_for_logits(&labels.to_kind(Kind::Int64))
            }
            TaskKind::Regression => logits
                .squeeze_dim(-1)
                .mse_loss(labels, tch::Reduction::Mean),
        };
        (loss, logits)
    }

    /// Groups of trainable tensors for the optimiser, SVD adapters first (group `k` = adapter
    /// `k`, slot axes given), then every other trainable tensor in one unslotted group.
    pub fn optimiser_groups(&self) -> Vec<Vec<(&Tensor, Option<usize>)>> {
        let (mut groups, mut rest) = adapter_optimiser_groups(self.classifier.linears());
        if self.method == MethodName::Full {
            rest.extend(
                self.classifier
                    .encoder_parameters()
                    .into_iter()
                    .map(|(_, t)| (t, None)),
            );
        }
        rest.extend(
            self.classifier
                .head_parameters()
                .into_iter()
                .map(|t| (t, None)),
        );
        groups.push(rest);
        groups
    }

    /// Trainable parameters that currently take part (SVD adapters count active slots only:
    /// `r · (in + out + 1)`).
    pub fn trainable_parameters(&self) -> i64 {
        let mut n = adapter_parameters(self.classifier.linears());
        if self.method == MethodName::Full {
            n += self
                .classifier
                .encoder_parameters()
                .iter()
                .map(|(_, t)| t.numel() as i64)
                .sum::<i64>();
        }
        n + self
            .classifier
            .head_parameters()
            .iter()
            .map(|t| t.numel() as i64)
            .sum::<i64>()
    }

    /// The trainable tensors by name: adapters (`adapters.<path>.P|lambda|Q`,
    /// `adapters.<path>.lora_A|lora_B`), the head (`head.*`) and, for `full`, the encoder
    /// (`bert.*` / `deberta.*`). Shallow handles of the live parameters (their gradients included).
    pub fn named_trainables(&self) -> Vec<(String, Tensor)> {
        let mut v = adapter_trainables(&self.adapted_paths, self.adapted_linears());
        let c = &self.classifier;
        for (name, t) in c.head_tensors() {
            v.push((format!("head.{name}"), t.shallow_clone()));
        }
        if self.method == MethodName::Full {
            let prefix = c.hf_names().prefix;
            for (n, t) in c.encoder_parameters() {
                v.push((format!("{prefix}.{n}"), t.shallow_clone()));
            }
        }
        v
    }

    /// The trainable state as named tensors: [`TaskModel::named_trainables`] plus each SVD
    /// adapter's slot mask (`adapters.<path>.active`). Detached copies on the CPU.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self
            .named_trainables()
            .into_iter()
            .map(|(n, t)| (n, t.detach().to_device(Device::Cpu).copy()))
            .collect();
        // (safetensors files order tensors by name, so appending changes no bytes.)
        v.extend(adapter_masks(&self.adapted_paths, self.adapted_linears()));
        v
    }

    /// Restores a state written by [`TaskModel::state`] (same config), in place, so the
    /// optimiser keeps pointing at the same tensors. Names and shapes must match.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        crate::io::check_saved_tensors(&self.state(), state, "the model")
            .map_err(anyhow::Error::msg)?;
        let paths = self.adapted_paths.clone();
        restore_adapters(&paths, self.adapted_linears_mut(), state)?;
        tch::no_grad(|| -> anyhow::Result<()> {
            // Shallow handles share storage with the live tensors, so the optimiser keeps
            // pointing at what is restored here.
            let c = &self.classifier;
            for (name, t) in c.head_tensors() {
                t.shallow_clone().copy_(&state[&format!("head.{name}")]);
            }
            if self.method == MethodName::Full {
                let prefix = c.hf_names().prefix;
                for (n, t) in c.encoder_parameters() {
                    t.shallow_clone().copy_(&state[&format!("{prefix}.{n}")]);
                }
            }
            Ok(())
        })
    }

    fn adapted_linears(&self) -> Vec<&crate::adapter::AdaptedLinear> {
        self.classifier
            .linears()
            .into_iter()
            .filter(|l| l.adapter.is_some())
            .collect()
    }

    fn adapted_linears_mut(&mut self) -> Vec<&mut crate::adapter::AdaptedLinear> {
        self.classifier
            .linears_mut()
            .into_iter()
            .filter(|l| l.adapter.is_some())
            .collect()
    }
}

/// The adapters' trainable tensors by name (`adapters.<path>.P|lambda|Q` for SVD adapters,
/// `adapters.<path>.lora_A|lora_B` for LoRA), for the adapted `linears` at `paths`; shallow
/// handles of the live parameters.
pub fn adapter_trainables(paths: &[String], linears: Vec<&AdaptedLinear>) -> Vec<(String, Tensor)> {
    let mut v = Vec::new();
    for (path, l) in paths.iter().zip(linears) {
        match &l.adapter {
            Some(Adapter::Svd(a)) => {
                v.push((format!("adapters.{path}.P"), a.p.shallow_clone()));
                v.push((format!("adapters.{path}.lambda"), a.lambda.shallow_clone()));
                v.push((format!("adapters.{path}.Q"), a.q.shallow_clone()));
            }
            Some(Adapter::Lora(a)) => {
                v.push((format!("adapters.{path}.lora_A"), a.a.shallow_clone()));
                v.push((format!("adapters.{path}.lora_B"), a.b.shallow_clone()));
            }
            None => {}
        }
    }
    v
}

/// Each SVD adapter's slot mask as `adapters.<path>.active` (1 = active), on the CPU.
pub fn adapter_masks(paths: &[String], linears: Vec<&AdaptedLinear>) -> Vec<(String, Tensor)> {
    let mut v = Vec::new();
    for (path, l) in paths.iter().zip(linears) {
        if let Some(Adapter::Svd(a)) = &l.adapter {
            let active: Vec<f32> = a.active().iter().map(|&b| f32::from(u8::from(b))).collect();
            v.push((
                format!("adapters.{path}.active"),
                Tensor::from_slice(&active),
            ));
        }
    }
    v
}

/// Restores adapters saved as [`adapter_trainables`] + [`adapter_masks`], in place (names and
/// shapes already checked by the caller).
pub fn restore_adapters(
    paths: &[String],
    linears: Vec<&mut AdaptedLinear>,
    state: &HashMap<String, Tensor>,
) -> anyhow::Result<()> {
    let get = |name: String| {
        state
            .get(&name)
            .ok_or_else(|| anyhow::anyhow!("the saved state has no `{name}`"))
    };
    tch::no_grad(|| -> anyhow::Result<()> {
        for (path, l) in paths.iter().zip(linears) {
            match &mut l.adapter {
                Some(Adapter::Svd(a)) => {
                    let active: Vec<f32> =
                        Vec::<f32>::try_from(get(format!("adapters.{path}.active"))?)?;
                    let device = a.p.device();
                    let p = get(format!("adapters.{path}.P"))?.to_device(device);
                    let lam = get(format!("adapters.{path}.lambda"))?.to_device(device);
                    let q = get(format!("adapters.{path}.Q"))?.to_device(device);
                    a.restore(&p, &lam, &q, active.iter().map(|&x| x > 0.5).collect())?;
                }
                Some(Adapter::Lora(a)) => {
                    a.a.copy_(get(format!("adapters.{path}.lora_A"))?);
                    a.b.copy_(get(format!("adapters.{path}.lora_B"))?);
                }
                None => {}
            }
        }
        Ok(())
    })
}

/// Trainable parameters of the adapters that currently take part (SVD adapters count active
/// slots only: `r · (in + out + 1)`; LoRA `r · (in + out)`).
pub fn adapter_parameters(linears: Vec<&AdaptedLinear>) -> i64 {
    linears
        .iter()
        .map(|l| {
            let (i, o) = l.features();
            match &l.adapter {
                Some(Adapter::Svd(a)) => a.rank() as i64 * (i + o + 1),
                Some(Adapter::Lora(a)) => a.rank() as i64 * (i + o),
                None => 0,
            }
        })
        .sum()
}

/// The adapters' optimiser groups: one per SVD adapter of `linears` (in order, slot axes
/// given), and LoRA's factors as unslotted tensors for the caller's last group.
#[allow(clippy::type_complexity)]
pub fn adapter_optimiser_groups(
    linears: Vec<&AdaptedLinear>,
) -> (
    Vec<Vec<(&Tensor, Option<usize>)>>,
    Vec<(&Tensor, Option<usize>)>,
) {
    let mut groups = Vec::new();
    let mut rest = Vec::new();
    for l in linears {
        match &l.adapter {
            Some(Adapter::Svd(a)) => groups.push(
                a.slotted_parameters()
                    .into_iter()
                    .map(|(t, axis)| (t, Some(axis)))
                    .collect(),
            ),
            Some(Adapter::Lora(a)) => rest.extend([(&a.a, None), (&a.b, None)]),
            None => {}
        }
    }
    (groups, rest)
}
