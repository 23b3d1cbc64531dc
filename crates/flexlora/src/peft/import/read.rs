//! Reading and checking a PEFT adapter folder: `adapter_config.json` fields and
//! `adapter_model.safetensors` tensors.

use super::*;
use crate::peft::export::adalora_divisor;
use crate::peft::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, KEY_PREFIX, PeftError, model_order};
use anyhow::Context;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

pub(super) fn config_error(path: &Path, field: &str, message: impl Into<String>) -> PeftError {
    PeftError::Config {
        path: path.to_path_buf(),
        field: field.into(),
        message: message.into(),
    }
}

pub(super) fn tensor_error(path: &Path, name: &str, message: impl Into<String>) -> PeftError {
    PeftError::Tensor {
        path: path.to_path_buf(),
        name: name.into(),
        message: message.into(),
    }
}

/// Whether a config value is a default "nothing" (`null`, `false`, `{}`, `[]`, `""`).
pub(super) fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::String(s) => s.is_empty(),
        Value::Number(_) => false,
    }
}

/// Fields that do not change what a loaded adapter computes (or that are read below).
pub(super) const KNOWN_FIELDS: &[&str] = &[
    "task_type",
    "peft_type",
    "auto_mapping",
    "peft_version",
    "base_model_name_or_path",
    "revision",
    "inference_mode",
    "target_modules",
    "exclude_modules",
    "layers_to_transform",
    "layers_pattern",
    "r",
    "lora_alpha",
    "lora_dropout",
    "rank_pattern",
    "alpha_pattern",
    "use_rslora",
    "modules_to_save",
    "fan_in_fan_out",
    "init_lora_weights",
    "bias",
    "megatron_core",
    "qalora_group_size",
    // AdaLoRA's training schedule.
    "target_r",
    "init_r",
    "tinit",
    "tfinal",
    "deltaT",
    "beta1",
    "beta2",
    "orth_reg_weight",
    "total_step",
];

/// Fields that must be off (`null`, `false`, `{}`), with what they would need.
pub(super) const UNSUPPORTED_FIELDS: &[(&str, &str)] = &[
    (
        "use_dora",
        "DoRA (weight-decomposed LoRA) is not implemented",
    ),
    ("lora_bias", "a trained bias on lora_B is not implemented"),
    ("use_qalora", "QA-LoRA is not implemented"),
    (
        "megatron_config",
        "Megatron parallel layers are not implemented",
    ),
    (
        "trainable_token_indices",
        "trainable token embeddings are not implemented",
    ),
    (
        "loftq_config",
        "LoftQ (a quantised, rewritten base model) is not implemented",
    ),
    ("eva_config", "EVA initialisation is not implemented"),
    ("corda_config", "CorDA initialisation is not implemented"),
    (
        "lora_ga_config",
        "LoRA-GA initialisation is not implemented",
    ),
    ("velora_config", "VeLoRA is not implemented"),
    ("monteclora_config", "MonteCLoRA is not implemented"),
    ("arrow_config", "Arrow routing is not implemented"),
    ("kasa_config", "KaSA is not implemented"),
    ("use_bdlora", "BD-LoRA is not implemented"),
    (
        "alora_invocation_tokens",
        "activated LoRA (aLoRA) is not implemented",
    ),
    ("layer_replication", "layer replication is not implemented"),
    (
        "target_parameters",
        "adapters on parameters (target_parameters) are not implemented",
    ),
    (
        "ensure_weight_tying",
        "adapters on tied weights are not implemented",
    ),
];

/// `name` without its leading encoder prefix (`bert.`, `deberta.`, `vit.`, `dinov2.`: what a
/// classifier calls its encoder), when it has one.
pub(super) fn strip_encoder_prefix(name: &str) -> &str {
    crate::models::HfNames::all_prefixes()
        .into_iter()
        .find_map(|p| name.strip_prefix(p)?.strip_prefix('.'))
        .unwrap_or(name)
}

pub(super) fn warn(path: &Path, message: &str) {
    eprintln!("warning: {}: {message}", path.display());
}

/// Checks every field of `adapter_config.json`: used, known to be harmless, or rejected by
/// name.
pub(super) fn check_fields(
    path: &Path,
    c: &Map<String, Value>,
    ty: PeftType,
) -> Result<(), PeftError> {
    for (field, why) in UNSUPPORTED_FIELDS {
        if let Some(v) = c.get(*field) {
            if !is_empty(v) {
                return Err(config_error(path, field, format!("= {v}: {why}")));
            }
        }
    }
    for (field, v) in c {
        let known = KNOWN_FIELDS.contains(&field.as_str())
            || UNSUPPORTED_FIELDS.iter().any(|(f, _)| f == field);
        if !known && !is_empty(v) {
            return Err(config_error(
                path,
                field,
                format!(
                    "= {v}: not a LoRA / AdaLoRA field this importer knows (PEFT 0.21.2); \
                     refusing to ignore it"
                ),
            ));
        }
    }
    match c.get("task_type") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "SEQ_CLS" => {}
        Some(v) => {
            return Err(config_error(
                path,
                "task_type",
                format!(
                    "= {v}: only sequence-classification adapters (\"SEQ_CLS\", on BERT and \
                     DeBERTa) and image-classification adapters (no task type, on ViT and \
                     DINOv2) import"
                ),
            ));
        }
    }
    match c.get("bias") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "none" => {}
        Some(v) => {
            return Err(config_error(
                path,
                "bias",
                format!(
                    "= {v}: trained biases of the base layers are not implemented (only \"none\")"
                ),
            ));
        }
    }
    match c.get("init_lora_weights") {
        None | Some(Value::Null) | Some(Value::Bool(_)) => {}
        Some(Value::String(s)) if s == "gaussian" => {}
        Some(v) => {
            return Err(config_error(
                path,
                "init_lora_weights",
                format!(
                    "= {v}: only true, false and \"gaussian\" are implemented (other \
                     initialisations such as PiSSA or OLoRA change the base weights when PEFT \
                     loads the adapter)"
                ),
            ));
        }
    }
    if let Some(v) = c.get("modules_to_save") {
        let names: Vec<&str> = match v {
            Value::Null => Vec::new(),
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => {
                return Err(config_error(
                    path,
                    "modules_to_save",
                    format!("= {v}: expected a list of module names"),
                ));
            }
        };
        for name in names {
            if !["classifier", "score", "pooler", "bert.pooler"].contains(&name) {
                return Err(config_error(
                    path,
                    "modules_to_save",
                    format!(
                        "entry {name:?}: only the classifier and the pooler can be trained \
                         alongside an adapter here"
                    ),
                ));
            }
        }
    }
    if c.get("fan_in_fan_out") == Some(&Value::Bool(true)) {
        warn(
            path,
            "fan_in_fan_out = true; the encoders' layers are torch.nn.Linear, for which PEFT sets \
             it to false when it loads the adapter, and so does this import",
        );
    }
    if ty == PeftType::Adalora {
        if c.get("use_rslora") == Some(&Value::Bool(true)) {
            warn(
                path,
                "use_rslora = true, which PEFT's AdaLoRA ignores; so does this import",
            );
        }
        if c.get("alpha_pattern").is_some_and(|v| !is_empty(v)) {
            warn(
                path,
                "alpha_pattern is set, which PEFT's AdaLoRA ignores (every module uses \
                 lora_alpha); so does this import",
            );
        }
    }
    Ok(())
}

/// A JSON object with its keys in file order (PEFT takes the first matching pattern key).
#[derive(Debug, Default)]
pub(super) struct Ordered(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Ordered, A::Error> {
                let mut v = Vec::new();
                while let Some(entry) = m.next_entry::<String, Value>()? {
                    v.push(entry);
                }
                Ok(Ordered(v))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize)]
pub(super) struct Patterns {
    #[serde(default)]
    rank_pattern: Option<Ordered>,
    #[serde(default)]
    alpha_pattern: Option<Ordered>,
}

/// PEFT's `get_pattern_key`: the first key `k` (in file order) with
/// `re.match(rf"(.*\.)?({k})$", name)`.
pub(super) fn pattern_value<'a>(
    path: &Path,
    field: &str,
    pattern: &'a [(String, Value)],
    name: &str,
) -> Result<Option<&'a Value>, PeftError> {
    for (key, value) in pattern {
        let re = regex::Regex::new(&format!(r"^(?:.*\.)?(?:{key})$")).map_err(|e| {
            config_error(
                path,
                field,
                format!("key {key:?} is not a regex PEFT can use: {e}"),
            )
        })?;
        if re.is_match(name) {
            return Ok(Some(value));
        }
    }
    Ok(None)
}

pub(super) fn number(
    path: &Path,
    c: &Map<String, Value>,
    field: &str,
    default: f64,
) -> Result<f64, PeftError> {
    match c.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| config_error(path, field, format!("= {v}: expected a number"))),
    }
}

pub(super) fn count(
    path: &Path,
    c: &Map<String, Value>,
    field: &str,
    default: usize,
) -> Result<usize, PeftError> {
    match c.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_u64().map(|x| x as usize).ok_or_else(|| {
            config_error(path, field, format!("= {v}: expected a whole number >= 0"))
        }),
    }
}

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
    hf_name: String,
    path: String,
    parts: HashMap<&'static str, (String, Tensor)>,
}

/// What `adapter_config.json` says about the tensors, and where errors point.
pub(super) struct Header {
    cfg_path: PathBuf,
    file: PathBuf,
    rank_pattern: Vec<(String, Value)>,
    alpha_pattern: Vec<(String, Value)>,
    r: usize,
    lora_alpha: f64,
    rslora: bool,
    init_r: usize,
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

/// Reads a PEFT `LORA` or `ADALORA` adapter folder and checks it on its own (config fields,
/// tensor names, pairs and shapes); [`import_peft`] then checks it against a base model.
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
    let ty = match c.get("peft_type") {
        Some(Value::String(s)) if s == "LORA" => PeftType::Lora,
        Some(Value::String(s)) if s == "ADALORA" => PeftType::Adalora,
        Some(Value::String(s)) => {
            return Err(PeftError::UnsupportedType {
                path: cfg_path,
                peft_type: s.clone(),
            }
            .into());
        }
        Some(v) => {
            return Err(
                config_error(&cfg_path, "peft_type", format!("= {v}: expected a string")).into(),
            );
        }
        None => return Err(config_error(&cfg_path, "peft_type", "is missing").into()),
    };
    check_fields(&cfg_path, &c, ty)?;
    let patterns: Patterns = serde_json::from_str(&text).map_err(|e| {
        config_error(
            &cfg_path,
            "rank_pattern",
            format!("(or `alpha_pattern`) is not an object: {e}"),
        )
    })?;
    let rank_pattern = patterns.rank_pattern.unwrap_or_default().0;
    let alpha_pattern = patterns.alpha_pattern.unwrap_or_default().0;
    let r = count(&cfg_path, &c, "r", 8)?;
    let lora_alpha = number(&cfg_path, &c, "lora_alpha", 8.0)?;
    let dropout = number(&cfg_path, &c, "lora_dropout", 0.0)?;
    let rslora = c.get("use_rslora") == Some(&Value::Bool(true));
    let init_r = count(&cfg_path, &c, "init_r", 12)?;

    let file = dir.join(ADAPTER_WEIGHTS);
    if !file.exists() && dir.join("adapter_model.bin").exists() {
        return Err(tensor_error(
            &file,
            "(file)",
            "missing; only adapter_model.bin (a pickle) is there, which is not read: save the \
             adapter with safe_serialization=True",
        )
        .into());
    }
    let tensors =
        Tensor::read_safetensors(&file).with_context(|| format!("reading {}", file.display()))?;

    let mut modules: BTreeMap<(usize, usize, String), ModuleTensors> = BTreeMap::new();
    let mut head: HashMap<&'static str, Tensor> = HashMap::new();
    let (roles, hint): (&[(&str, &'static str)], &str) = match ty {
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
    };
    for (name, t) in tensors {
        let Some(key) = name.strip_prefix(KEY_PREFIX) else {
            return Err(tensor_error(
                &file,
                &name,
                format!("does not start with `{KEY_PREFIX}` (not a PEFT adapter file?)"),
            )
            .into());
        };
        let t = float_tensor(&file, &name, t)?;
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
            let what = if key.contains("lora_magnitude_vector") {
                "DoRA's magnitude vector: DoRA is not implemented".to_string()
            } else if key.contains("lora_embedding_") {
                "an adapter on an embedding layer, which is not implemented".to_string()
            } else if key.ends_with(".lora_B.bias") {
                "a lora_B bias (lora_bias = true), which is not implemented".to_string()
            } else {
                format!(
                    "not a tensor this importer knows ({hint}; modules_to_save may hold the \
                     classifier and the pooler)"
                )
            };
            return Err(tensor_error(&file, &name, what).into());
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
        return Err(tensor_error(&file, "(all)", format!("no adapter tensors ({hint})")).into());
    }

    let h = Header {
        cfg_path,
        file,
        rank_pattern,
        alpha_pattern,
        r,
        lora_alpha,
        rslora,
        init_r,
    };
    let masks = match ty {
        PeftType::Adalora => adalora_masks(&h, &modules)?,
        PeftType::Lora => HashMap::new(),
    };
    let mut out = Vec::with_capacity(modules.len());
    for (_, m) in modules {
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
                    "has shape {sa:?} and `{b_name}` {sb:?}: expected [r, in] and [out, r] with \
                     the same r"
                ),
            )
            .into());
        }
        let weights = match ty {
            PeftType::Lora => lora_module(&h, &m, a, b)?,
            PeftType::Adalora => adalora_module(&h, &m, &masks, a, b, get("lora_E")?)?,
        };
        out.push(PeftModule {
            path: m.path,
            hf_name: m.hf_name,
            weights,
        });
    }

    let mut pair = |w: &'static str,
                    b: &'static str,
                    module: &str|
     -> Result<Option<(Tensor, Tensor)>, PeftError> {
        match (head.remove(w), head.remove(b)) {
            (Some(w), Some(b)) => Ok(Some((w, b))),
            (None, None) => Ok(None),
            (Some(_), None) => Err(tensor_error(
                &h.file,
                &format!("{KEY_PREFIX}{module}.bias"),
                "missing (the weight is there)",
            )),
            (None, Some(_)) => Err(tensor_error(
                &h.file,
                &format!("{KEY_PREFIX}{module}.weight"),
                "missing (the bias is there)",
            )),
        }
    };
    let classifier = pair("classifier.weight", "classifier.bias", "classifier")?;
    let pooler = pair("pooler.weight", "pooler.bias", "pooler.dense")?;
    Ok(PeftAdapter {
        dir: dir.to_path_buf(),
        peft_type: ty,
        base_model_name_or_path: c
            .get("base_model_name_or_path")
            .and_then(Value::as_str)
            .map(String::from),
        modules: out,
        init_r: (ty == PeftType::Adalora).then_some(init_r),
        classifier,
        pooler,
        dropout,
    })
}
