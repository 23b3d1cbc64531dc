//! Reading and checking a PEFT adapter folder on its own: `adapter_config.json` and
//! `adapter_model.safetensors` into a [`PeftAdapter`].

use super::fields::{
    Patterns, check_fields, config_error, count, number, strip_encoder_prefix, tensor_error,
};
use super::modules::{
    Header, ModuleTensors, adalora_masks, adalora_module, float_tensor, lora_module,
};
use super::{PeftAdapter, PeftModule, PeftType};
use crate::peft::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, KEY_PREFIX, PeftError, model_order};
use anyhow::Context;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::Tensor;

/// Reads a PEFT `LORA` or `ADALORA` adapter folder and checks it on its own (config fields,
/// tensor names, pairs and shapes); [`import_peft`](super::import_peft) then checks it against a
/// base model.
pub fn read_peft_adapter(dir: &Path) -> anyhow::Result<PeftAdapter> {
    let cfg_path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&cfg_path).with_context(|| {
        format!(
            "cannot read {} (is {} a PEFT adapter folder?)",
            cfg_path.display(),
            dir.display()
        )
    })?;
    let c: Map<String, Value> = serde_json::from_str(&text).map_err(|e| {
        config_error(
            &cfg_path,
            "(top level)",
            format!("is not a JSON object: {e}"),
        )
    })?;
    let ty = peft_type(&cfg_path, &c)?;
    check_fields(&cfg_path, &c, ty)?;
    let patterns: Patterns = serde_json::from_str(&text).map_err(|e| {
        config_error(
            &cfg_path,
            "rank_pattern",
            format!("(or `alpha_pattern`) is not an object: {e}"),
        )
    })?;
    let h = Header {
        rank_pattern: patterns.rank_pattern.unwrap_or_default().0,
        alpha_pattern: patterns.alpha_pattern.unwrap_or_default().0,
        r: count(&cfg_path, &c, "r", 8)?,
        lora_alpha: number(&cfg_path, &c, "lora_alpha", 8.0)?,
        rslora: c.get("use_rslora") == Some(&Value::Bool(true)),
        init_r: count(&cfg_path, &c, "init_r", 12)?,
        file: dir.join(ADAPTER_WEIGHTS),
        cfg_path,
    };
    let dropout = number(&h.cfg_path, &c, "lora_dropout", 0.0)?;
    let (modules, mut head) = group_tensors(&h.file, read_weights(&h.file, dir)?, ty)?;
    let masks = match ty {
        PeftType::Adalora => adalora_masks(&h, &modules)?,
        PeftType::Lora => HashMap::new(),
    };
    let modules = modules
        .into_values()
        .map(|m| module_weights(&h, ty, &masks, m))
        .collect::<Result<Vec<_>, _>>()?;
    let classifier = head_pair(&h.file, &mut head, "classifier", "classifier")?;
    let pooler = head_pair(&h.file, &mut head, "pooler", "pooler.dense")?;
    let text_field = |field: &str| c.get(field).and_then(Value::as_str).map(String::from);
    Ok(PeftAdapter {
        dir: dir.to_path_buf(),
        peft_type: ty,
        task_type: text_field("task_type"),
        base_model_name_or_path: text_field("base_model_name_or_path"),
        modules,
        init_r: (ty == PeftType::Adalora).then_some(h.init_r),
        classifier,
        pooler,
        dropout,
    })
}

/// `peft_type`: `LORA` or `ADALORA`, else an error naming what the file says.
fn peft_type(cfg_path: &Path, c: &Map<String, Value>) -> Result<PeftType, PeftError> {
    match c.get("peft_type") {
        Some(Value::String(s)) if s == "LORA" => Ok(PeftType::Lora),
        Some(Value::String(s)) if s == "ADALORA" => Ok(PeftType::Adalora),
        Some(Value::String(s)) => Err(PeftError::UnsupportedType {
            path: cfg_path.to_path_buf(),
            peft_type: s.clone(),
        }),
        Some(v) => Err(config_error(
            cfg_path,
            "peft_type",
            format!("= {v}: expected a string"),
        )),
        None => Err(config_error(cfg_path, "peft_type", "is missing")),
    }
}

/// The tensors of `adapter_model.safetensors` (a pickled `adapter_model.bin` is refused).
fn read_weights(file: &Path, dir: &Path) -> anyhow::Result<Vec<(String, Tensor)>> {
    if !file.exists() && dir.join("adapter_model.bin").exists() {
        return Err(tensor_error(
            file,
            "(file)",
            "missing; only adapter_model.bin (a pickle) is there, which is not read: save the \
             adapter with safe_serialization=True",
        )
        .into());
    }
    Tensor::read_safetensors(file).with_context(|| format!("reading {}", file.display()))
}

/// Adapter tensors grouped by module (in model order) and the head's tensors by role
/// (`classifier.weight`, `pooler.bias`, ...); a tensor that is neither is an error that says
/// what it is when we know (DoRA, embedding adapters, `lora_B` biases).
#[allow(clippy::type_complexity)]
fn group_tensors(
    file: &Path,
    tensors: Vec<(String, Tensor)>,
    ty: PeftType,
) -> Result<
    (
        BTreeMap<(usize, usize, String), ModuleTensors>,
        HashMap<&'static str, Tensor>,
    ),
    PeftError,
> {
    let mut modules: BTreeMap<(usize, usize, String), ModuleTensors> = BTreeMap::new();
    let mut head: HashMap<&'static str, Tensor> = HashMap::new();
    let (roles, hint) = tensor_roles(ty);
    for (name, t) in tensors {
        let Some(key) = name.strip_prefix(KEY_PREFIX) else {
            return Err(tensor_error(
                file,
                &name,
                format!("does not start with `{KEY_PREFIX}` (not a PEFT adapter file?)"),
            ));
        };
        let t = float_tensor(file, &name, t)?;
        let short = strip_encoder_prefix(key);
        let head_role = match short {
            "classifier.weight" => Some("classifier.weight"),
            "classifier.bias" => Some("classifier.bias"),
            "pooler.dense.weight" => Some("pooler.weight"),
            "pooler.dense.bias" => Some("pooler.bias"),
            _ => None,
        };
        if let Some(role) = head_role {
            head.insert(role, t);
            continue;
        }
        let Some((suffix, role)) = roles.iter().find(|(s, _)| key.ends_with(s)) else {
            return Err(tensor_error(file, &name, unknown_tensor(key, hint)));
        };
        let hf_name = &key[..key.len() - suffix.len()];
        let path = strip_encoder_prefix(hf_name);
        let entry = modules
            .entry(model_order(path))
            .or_insert_with(|| ModuleTensors {
                hf_name: hf_name.to_string(),
                path: path.to_string(),
                ..Default::default()
            });
        entry.parts.insert(*role, (name.clone(), t));
    }
    if modules.is_empty() {
        return Err(tensor_error(
            file,
            "(all)",
            format!("no adapter tensors ({hint})"),
        ));
    }
    Ok((modules, head))
}

/// The tensor-name suffixes of `ty` with their roles, and a hint saying what a file holds.
fn tensor_roles(ty: PeftType) -> (&'static [(&'static str, &'static str)], &'static str) {
    match ty {
        PeftType::Lora => (
            &[(".lora_A.weight", "lora_A"), (".lora_B.weight", "lora_B")],
            "a LoRA file holds <module>.lora_A.weight and .lora_B.weight",
        ),
        PeftType::Adalora => (
            &[
                (".lora_A", "lora_A"),
                (".lora_E", "lora_E"),
                (".lora_B", "lora_B"),
                (".ranknum", "ranknum"),
            ],
            "an AdaLoRA file holds <module>.lora_A, .lora_E and .lora_B",
        ),
    }
}

/// What is wrong with a tensor name that is neither an adapter's nor the head's.
fn unknown_tensor(key: &str, hint: &str) -> String {
    if key.contains("lora_magnitude_vector") {
        "DoRA's magnitude vector: DoRA is not implemented".to_string()
    } else if key.contains("lora_embedding_") {
        "an adapter on an embedding layer, which is not implemented".to_string()
    } else if key.ends_with(".lora_B.bias") {
        "a lora_B bias (lora_bias = true), which is not implemented".to_string()
    } else if key.starts_with("lm_head.") || key.starts_with("model.embed_tokens.") {
        "a trained copy of the decoder's embeddings or output layer (modules_to_save), which \
         is not implemented: only adapters on the decoder's projections import"
            .to_string()
    } else {
        format!(
            "not a tensor this importer knows ({hint}; modules_to_save may hold the classifier \
             and the pooler)"
        )
    }
}

/// One module's weights: its tensors checked as a pair (`[r, in]`, `[out, r]`) and read with
/// the config's rank, `α` and (AdaLoRA) slot mask.
fn module_weights(
    h: &Header,
    ty: PeftType,
    masks: &HashMap<String, Vec<bool>>,
    m: ModuleTensors,
) -> Result<PeftModule, PeftError> {
    let get = |role: &'static str| -> Result<&(String, Tensor), PeftError> {
        m.parts.get(role).ok_or_else(|| {
            let suffix = match ty {
                PeftType::Lora => format!(".{role}.weight"),
                PeftType::Adalora => format!(".{role}"),
            };
            tensor_error(
                &h.file,
                &format!("{KEY_PREFIX}{}{suffix}", m.hf_name),
                format!("missing (module {} has an incomplete adapter)", m.hf_name),
            )
        })
    };
    let a = get("lora_A")?;
    let (b_name, b) = get("lora_B")?;
    let (sa, sb) = (a.1.size(), b.size());
    if sa.len() != 2 || sb.len() != 2 || sa[0] != sb[1] {
        return Err(tensor_error(
            &h.file,
            &a.0,
            format!(
                "has shape {sa:?} and `{b_name}` {sb:?}: expected [r, in] and [out, r] with the \
                 same r"
            ),
        ));
    }
    let weights = match ty {
        PeftType::Lora => lora_module(h, &m, a, b)?,
        PeftType::Adalora => adalora_module(h, &m, masks, a, b, get("lora_E")?)?,
    };
    Ok(PeftModule {
        path: m.path,
        hf_name: m.hf_name,
        weights,
    })
}

/// The `<role>.weight` and `<role>.bias` head tensors as a pair (saved under
/// `<module>.weight` / `.bias`), or none; one without the other is an error.
fn head_pair(
    file: &Path,
    head: &mut HashMap<&'static str, Tensor>,
    role: &str,
    module: &str,
) -> Result<Option<(Tensor, Tensor)>, PeftError> {
    let weight = head.remove(format!("{role}.weight").as_str());
    let bias = head.remove(format!("{role}.bias").as_str());
    match (weight, bias) {
        (Some(w), Some(b)) => Ok(Some((w, b))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(tensor_error(
            file,
            &format!("{KEY_PREFIX}{module}.bias"),
            "missing (the weight is there)",
        )),
        (None, Some(_)) => Err(tensor_error(
            file,
            &format!("{KEY_PREFIX}{module}.weight"),
            "missing (the bias is there)",
        )),
    }
}
