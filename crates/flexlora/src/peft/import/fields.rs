//! `adapter_config.json`: every field used, known to be harmless or refused by name; the
//! pattern maps (`rank_pattern`, `alpha_pattern`) and the errors that point at a field or tensor.

use super::PeftType;
use crate::peft::PeftError;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::path::Path;

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
        Some(Value::String(s)) if s == "SEQ_CLS" || s == "CAUSAL_LM" => {}
        Some(v) => {
            return Err(config_error(
                path,
                "task_type",
                format!(
                    "= {v}: only sequence-classification adapters (\"SEQ_CLS\", on BERT and \
                     DeBERTa), image-classification adapters (no task type, on ViT and DINOv2) \
                     and causal-LM adapters (\"CAUSAL_LM\", on LLaMA-family decoders) import"
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
pub(super) struct Ordered(pub(super) Vec<(String, Value)>);

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
    pub(super) rank_pattern: Option<Ordered>,
    #[serde(default)]
    pub(super) alpha_pattern: Option<Ordered>,
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
