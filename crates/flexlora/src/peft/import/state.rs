//! The flexlora adapter state that computes what a PEFT adapter computes.

use super::{PeftAdapter, PeftModule, PeftModuleWeights};
use crate::config::{Config, MethodName};
use tch::{Device, Kind, Tensor};

/// The [`TaskModel::state`](crate::train::model::TaskModel::state) tensors of `adapter`'s
/// modules, with `config.method` (name, ranks, `α`) set to build the adapters they fit (the
/// rules are in [`import_peft`](super::import_peft)'s docs).
pub(super) fn adapter_state(adapter: &PeftAdapter, config: &mut Config) -> Vec<(String, Tensor)> {
    let first_rank = adapter.modules.first().map(PeftModule::rank).unwrap_or(0);
    // One rank and one scale over all LoRA modules: `(α, scaling)` of the first.
    let uniform_lora = match adapter.modules.first().map(|m| &m.weights) {
        Some(PeftModuleWeights::Lora { alpha, scaling, .. }) => {
            let same = adapter.modules.iter().all(|m| {
                m.rank() == first_rank
                    && matches!(&m.weights, PeftModuleWeights::Lora { scaling: s, .. } if s == scaling)
            });
            same.then_some((*alpha, *scaling))
        }
        _ => None,
    };
    match uniform_lora {
        Some((alpha, scaling)) => lora_state(adapter, config, first_rank, alpha, scaling),
        None => svd_state(adapter, config),
    }
}

/// A `lora` model with every module's `A` and `B` unchanged (one rank `r` and one scale).
fn lora_state(
    adapter: &PeftAdapter,
    config: &mut Config,
    first_rank: usize,
    alpha: f64,
    scaling: f64,
) -> Vec<(String, Tensor)> {
    let mut state = Vec::new();
    // A `lora` run, A and B unchanged.
    config.method.name = MethodName::Lora;
    config.method.r_init = first_rank;
    config.method.r_max = config.method.r_max.max(first_rank);
    // α / r reproduces PEFT's scale exactly unless use_rslora (then α / √r).
    config.method.alpha = if alpha / first_rank as f64 == scaling {
        alpha
    } else {
        scaling * first_rank as f64
    };
    for m in &adapter.modules {
        if let PeftModuleWeights::Lora { a, b, .. } = &m.weights {
            state.push((format!("adapters.{}.lora_A", m.path), a.shallow_clone()));
            state.push((format!("adapters.{}.lora_B", m.path), b.shallow_clone()));
        }
    }
    state
}

/// SVD adapters (method `flexlora`) in the slots of each module (AdaLoRA's, or the first `r`).
fn svd_state(adapter: &PeftAdapter, config: &mut Config) -> Vec<(String, Tensor)> {
    let mut state = Vec::new();
    // SVD form (method flexlora): P = lora_B, Q = lora_A in their slots, λ = lora_E
    // (AdaLoRA) or PEFT's scale (LoRA, so every module keeps its own rank and scale).
    let (slots_total, s) = match adapter.init_r {
        Some(init_r) => {
            let s0 = match &adapter.modules[0].weights {
                PeftModuleWeights::Adalora { scaling, .. } => *scaling,
                PeftModuleWeights::Lora { .. } => 1.0,
            };
            (init_r, s0)
        }
        None => {
            let r_max = adapter
                .modules
                .iter()
                .map(PeftModule::rank)
                .max()
                .unwrap_or(1);
            (r_max, 1.0)
        }
    };
    let slots_total = slots_total.max(1);
    config.method.name = MethodName::Flexlora;
    config.method.r_init = slots_total;
    config.method.r_max = slots_total;
    config.method.alpha = s * slots_total as f64;
    // The scale the model will use: α / r_init (one rounding away from `s`).
    let s_model = config.method.alpha / slots_total as f64;
    let opts = (Kind::Float, Device::Cpu);
    for m in &adapter.modules {
        let (in_f, out_f) = m.features();
        let (a, b, lam, slots) = match &m.weights {
            PeftModuleWeights::Lora { a, b, scaling, .. } => {
                let r = m.rank() as i64;
                let lam = Tensor::full([r], *scaling / s_model, opts);
                (a, b, lam, (0..m.rank()).collect::<Vec<_>>())
            }
            PeftModuleWeights::Adalora {
                a,
                e,
                b,
                slots,
                scaling,
            } => {
                let ratio = *scaling / s;
                let lam = if ratio == 1.0 {
                    e.shallow_clone()
                } else {
                    (e.to_kind(Kind::Double) * ratio).to_kind(Kind::Float)
                };
                (a, b, lam, slots.clone())
            }
        };
        let idx: Vec<i64> = slots.iter().map(|&i| i as i64).collect();
        let idx = Tensor::from_slice(&idx);
        let n = slots_total as i64;
        let p = Tensor::zeros([out_f, n], opts).index_copy(1, &idx, b);
        let q = Tensor::zeros([n, in_f], opts).index_copy(0, &idx, a);
        let lambda = Tensor::zeros([n], opts).index_copy(0, &idx, &lam);
        let mut active = vec![0f32; slots_total];
        for &i in &slots {
            active[i] = 1.0;
        }
        state.push((format!("adapters.{}.P", m.path), p));
        state.push((format!("adapters.{}.lambda", m.path), lambda));
        state.push((format!("adapters.{}.Q", m.path), q));
        state.push((
            format!("adapters.{}.active", m.path),
            Tensor::from_slice(&active),
        ));
    }
    state
}
