//! The tensors of one adapted module, checked against what `adapter_config.json` says about
//! it: rank, `α` and PEFT's scale for LoRA; slots, `λ` and scale for AdaLoRA.

use super::PeftModuleWeights;
use super::fields::{config_error, pattern_value, tensor_error};
use crate::peft::export::adalora_divisor;
use crate::peft::{ADAPTER_WEIGHTS, PeftError};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

pub(super) fn float_tensor(file: &Path, name: &str, t: Tensor) -> Result<Tensor, PeftError> {
    match t.kind() {
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16 => Ok(t.to_kind(Kind::Float)),
        k => Err(tensor_error(
            file,
            name,
            format!("has type {k:?}; expected a floating-point tensor"),
        )),
    }
}

/// The tensors of one module, by role.
#[derive(Default)]
pub(super) struct ModuleTensors {
    pub(super) hf_name: String,
    pub(super) path: String,
    pub(super) parts: HashMap<&'static str, (String, Tensor)>,
}

/// What `adapter_config.json` says about the tensors, and where errors point.
pub(super) struct Header {
    pub(super) cfg_path: PathBuf,
    pub(super) file: PathBuf,
    pub(super) rank_pattern: Vec<(String, Value)>,
    pub(super) alpha_pattern: Vec<(String, Value)>,
    pub(super) r: usize,
    pub(super) lora_alpha: f64,
    pub(super) rslora: bool,
    pub(super) init_r: usize,
}

/// AdaLoRA's `rank_pattern`: `<module name>.lora_E` (possibly with the adapter name) -> the
/// mask of kept slots, for modules that have tensors.
pub(super) fn adalora_masks(
    h: &Header,
    modules: &BTreeMap<(usize, usize, String), ModuleTensors>,
) -> Result<HashMap<String, Vec<bool>>, PeftError> {
    let cfg = |message: String| config_error(&h.cfg_path, "rank_pattern", message);
    let mut masks = HashMap::new();
    for (key, v) in &h.rank_pattern {
        let module = key
            .strip_suffix(".lora_E.default")
            .or_else(|| key.strip_suffix(".lora_E"))
            .ok_or_else(|| cfg(format!("key {key:?}: expected `<module name>.lora_E`")))?;
        let mask: Vec<bool> = v
            .as_array()
            .and_then(|a| a.iter().map(Value::as_bool).collect::<Option<Vec<bool>>>())
            .ok_or_else(|| {
                cfg(format!(
                    "{key:?} = {v}: expected a list of true/false, one per slot"
                ))
            })?;
        if mask.len() != h.init_r {
            return Err(cfg(format!(
                "{key:?} has {} entries, but init_r = {}",
                mask.len(),
                h.init_r
            )));
        }
        if !modules.values().any(|m| m.hf_name == module) {
            return Err(cfg(format!(
                "{key:?} names a module that has no tensors in {ADAPTER_WEIGHTS}"
            )));
        }
        masks.insert(module.to_string(), mask);
    }
    Ok(masks)
}

/// A LoRA module's weights and scale (`r` and `α` from the patterns, PEFT's
/// `get_pattern_key`).
pub(super) fn lora_module(
    h: &Header,
    m: &ModuleTensors,
    (a_name, a): &(String, Tensor),
    b: &Tensor,
) -> Result<PeftModuleWeights, PeftError> {
    let rank = a.size()[0] as usize;
    let r_m = match pattern_value(&h.cfg_path, "rank_pattern", &h.rank_pattern, &m.hf_name)? {
        None => h.r,
        Some(v) => v.as_u64().map(|x| x as usize).ok_or_else(|| {
            config_error(
                &h.cfg_path,
                "rank_pattern",
                format!("value for {} is {v}, not a whole number", m.hf_name),
            )
        })?,
    };
    if r_m != rank {
        return Err(tensor_error(
            &h.file,
            a_name,
            format!(
                "has {rank} rows, but the config gives module {} rank {r_m} (r / rank_pattern)",
                m.hf_name
            ),
        ));
    }
    let alpha = match pattern_value(&h.cfg_path, "alpha_pattern", &h.alpha_pattern, &m.hf_name)? {
        None => h.lora_alpha,
        Some(v) => v.as_f64().ok_or_else(|| {
            config_error(
                &h.cfg_path,
                "alpha_pattern",
                format!("value for {} is {v}, not a number", m.hf_name),
            )
        })?,
    };
    let scaling = if h.rslora {
        alpha / (rank as f64).sqrt()
    } else {
        alpha / rank as f64
    };
    if !(scaling.is_finite() && scaling > 0.0) {
        return Err(config_error(
            &h.cfg_path,
            "lora_alpha",
            format!(
                "gives module {} alpha {alpha} at rank {rank}: a scale of {scaling} (only a \
                 finite scale > 0 imports)",
                m.hf_name
            ),
        ));
    }
    Ok(PeftModuleWeights::Lora {
        a: a.shallow_clone(),
        b: b.shallow_clone(),
        alpha,
        scaling,
    })
}

/// An AdaLoRA module's weights, slots and scale (`α / (ranknum + 1e-5)`, `ranknum` in float32).
pub(super) fn adalora_module(
    h: &Header,
    m: &ModuleTensors,
    masks: &HashMap<String, Vec<bool>>,
    (a_name, a): &(String, Tensor),
    b: &Tensor,
    (e_name, e): &(String, Tensor),
) -> Result<PeftModuleWeights, PeftError> {
    let rank = a.size()[0] as usize;
    let se = e.size();
    let e_ok = (se.len() == 2 && se[1] == 1 && se[0] == rank as i64)
        || (se.len() == 1 && se[0] == rank as i64);
    if !e_ok {
        return Err(tensor_error(
            &h.file,
            e_name,
            format!("has shape {se:?}; expected [{rank}, 1] like lora_A's rows"),
        ));
    }
    let mask = masks.get(&m.hf_name);
    let slots: Vec<usize> = match mask {
        Some(mask) => (0..h.init_r).filter(|&i| mask[i]).collect(),
        None => (0..rank).collect(),
    };
    let expected = if mask.is_some() {
        slots.len()
    } else {
        h.init_r
    };
    if rank != expected {
        return Err(tensor_error(
            &h.file,
            a_name,
            format!(
                "has {rank} rows, but module {} has rank {expected} ({})",
                m.hf_name,
                if mask.is_some() {
                    "the true entries of its rank_pattern mask"
                } else {
                    "init_r, as it has no rank_pattern entry"
                }
            ),
        ));
    }
    // PEFT keeps `ranknum` at init_r through the resize and (0.21) does not save it; a file
    // from an older PEFT may store it.
    let ranknum = match m.parts.get("ranknum") {
        Some((_, t)) if t.numel() == 1 => t.view([-1]).double_value(&[0]) as f32,
        Some((n, t)) => {
            return Err(tensor_error(
                &h.file,
                n,
                format!("has shape {:?}; expected one number", t.size()),
            ));
        }
        None => h.init_r as f32,
    };
    // PEFT: `lora_alpha if lora_alpha > 0 else float(r)`, r of the (resized) layer.
    let numerator = if h.lora_alpha > 0.0 {
        h.lora_alpha
    } else if mask.is_some() {
        rank as f64
    } else {
        h.init_r as f64
    };
    let scaling = numerator / adalora_divisor(ranknum);
    if !(scaling.is_finite() && scaling > 0.0) {
        return Err(config_error(
            &h.cfg_path,
            "lora_alpha",
            format!("gives module {} a scale of {scaling}", m.hf_name),
        ));
    }
    Ok(PeftModuleWeights::Adalora {
        a: a.shallow_clone(),
        e: e.view([-1]),
        b: b.shallow_clone(),
        slots,
        scaling,
    })
}
