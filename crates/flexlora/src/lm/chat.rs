//! Chat templates: a decoder folder's own Jinja template (`chat_template.jinja`, or the
//! `chat_template` field of `tokenizer_config.json`) rendered the way transformers'
//! `apply_chat_template` renders it, so that a conversation becomes the same prompt text and
//! the same token ids.
//!
//! transformers renders with Jinja2's sandbox, `trim_blocks` and `lstrip_blocks` on, the
//! `loopcontrols` extension, a `raise_exception(message)` function, a `tojson` filter that
//! writes Python's `json.dumps` (non-ASCII kept), and the tokenizer's special-token strings
//! (`bos_token`, `eos_token`, ...) beside `messages` and `add_generation_prompt`. The rendered
//! text is tokenized without adding special tokens: the template writes them itself.

use super::LmError;
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One turn of a conversation, as in transformers' `messages`: `{"role": ..., "content": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (the template decides what it accepts).
    pub role: String,
    /// The turn's text.
    pub content: String,
}

impl ChatMessage {
    /// A message of `role` with `content`.
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// The special-token strings transformers passes to every template.
const SPECIAL_TOKEN_FIELDS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// A decoder's chat template with the special-token strings it may refer to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    /// The Jinja source.
    source: String,
    /// Where the source was read (for error messages).
    origin: PathBuf,
    /// `bos_token`, `eos_token`, ... as strings.
    special_tokens: BTreeMap<String, String>,
}

impl ChatTemplate {
    /// Reads the template of a Hugging Face folder: `chat_template.jinja` when present (how
    /// transformers saves it since 4.43), else `tokenizer_config.json`'s `chat_template` (a
    /// string, or a list of `{name, template}` of which `default` is used).
    pub fn from_folder(folder: &Path) -> Result<Self, LmError> {
        let config_path = folder.join("tokenizer_config.json");
        let config: serde_json::Value = match std::fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                LmError::Input(format!("{}: not valid JSON: {e}", config_path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::Value::Null,
            Err(e) => {
                return Err(LmError::Input(format!(
                    "cannot read {}: {e}",
                    config_path.display()
                )));
            }
        };
        let special_tokens = special_tokens(&config, &config_path)?;
        let jinja_path = folder.join("chat_template.jinja");
        if jinja_path.exists() {
            let source = std::fs::read_to_string(&jinja_path).map_err(|e| {
                LmError::Input(format!("cannot read {}: {e}", jinja_path.display()))
            })?;
            return Ok(Self {
                source,
                origin: jinja_path,
                special_tokens,
            });
        }
        let source = match config.get("chat_template") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(named)) => default_of_named(named, &config_path)?,
            Some(other) => {
                return Err(LmError::Input(format!(
                    "{}: field chat_template: expected a string or a list of {{name, template}}, \
                     found {other}",
                    config_path.display()
                )));
            }
            None => {
                return Err(LmError::Input(format!(
                    "{} has no chat template: neither chat_template.jinja nor a chat_template \
                     field in tokenizer_config.json (a base model without one cannot take \
                     --chat; give the raw text with --prompt instead)",
                    folder.display()
                )));
            }
        };
        Ok(Self {
            source,
            origin: config_path,
            special_tokens,
        })
    }

    /// A template from its source and special-token strings (for templates not in a folder).
    pub fn new(source: &str, special_tokens: BTreeMap<String, String>) -> Self {
        Self {
            source: source.to_string(),
            origin: PathBuf::from("<template>"),
            special_tokens,
        }
    }

    /// The special-token string `name` (e.g. `eos_token`), if the tokenizer config sets it.
    pub fn special_token(&self, name: &str) -> Option<&str> {
        self.special_tokens.get(name).map(String::as_str)
    }

    /// The prompt text of `messages`, ending with the assistant's turn opener when
    /// `add_generation_prompt` (transformers' `apply_chat_template(..., tokenize=False)`).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, LmError> {
        let fail = |e: Error| {
            let mut text = format!("chat template of {}: {e}", self.origin.display());
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            LmError::Input(text)
        };
        let env = environment();
        let template = env.template_from_str(&self.source).map_err(fail)?;
        let mut context: BTreeMap<String, Value> = self
            .special_tokens
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        context.insert("messages".into(), Value::from_serialize(messages));
        context.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        template.render(context).map_err(fail)
    }
}

/// The Jinja environment of transformers' chat templates.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    // Python string and dict methods (`.strip()`, `.startswith()`, `.items()`, ...), which
    // Jinja2 templates call freely.
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |message: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        },
    );
    env.add_filter("tojson", python_json);
    env
}

/// `tojson` as transformers defines it: `json.dumps(value, ensure_ascii=False, indent=indent)`,
/// whose separators are `", "` and `": "` without an indent and `","` / `": "` with one; maps
/// keep their insertion order, as Python's dicts do.
fn python_json(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_python_json(&value, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

/// Appends `value` as Python's `json.dumps` writes it.
fn write_python_json(
    value: &Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) -> Result<(), Error> {
    let quoted = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&value.to_string()),
        ValueKind::String => out.push_str(&quoted(value.as_str().unwrap_or_default())),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_bracketed(out, indent, depth, "[]", &items, |out, item| {
                write_python_json(item, indent, depth + 1, out)
            })?;
        }
        ValueKind::Map => {
            let keys: Vec<Value> = value.try_iter()?.collect();
            write_bracketed(out, indent, depth, "{}", &keys, |out, key| {
                out.push_str(&quoted(&key.to_string()));
                out.push_str(": ");
                write_python_json(&value.get_item(key)?, indent, depth + 1, out)
            })?;
        }
        other => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: a {other} value has no JSON form"),
            ));
        }
    }
    Ok(())
}

/// Appends `brackets`' opening character, each of `items` written by `write` (separated and,
/// with an indent, one per line as `json.dumps` lays them out), then the closing character.
fn write_bracketed(
    out: &mut String,
    indent: Option<usize>,
    depth: usize,
    brackets: &str,
    items: &[Value],
    mut write: impl FnMut(&mut String, &Value) -> Result<(), Error>,
) -> Result<(), Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let mut chars = brackets.chars();
    out.extend(chars.next());
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(if indent.is_some() { "," } else { ", " });
        }
        newline(out, depth + 1);
        write(out, item)?;
    }
    if !items.is_empty() {
        newline(out, depth);
    }
    out.extend(chars.next());
    Ok(())
}

/// The `default` template of a named-template list.
fn default_of_named(named: &[serde_json::Value], path: &Path) -> Result<String, LmError> {
    for entry in named {
        if entry.get("name").and_then(|n| n.as_str()) == Some("default") {
            if let Some(t) = entry.get("template").and_then(|t| t.as_str()) {
                return Ok(t.to_string());
            }
        }
    }
    Err(LmError::Input(format!(
        "{}: field chat_template: a list of named templates without a `default` entry",
        path.display()
    )))
}

/// `bos_token`, `eos_token`, ... of a tokenizer config: a string, or an added-token object
/// whose `content` is the string.
fn special_tokens(
    config: &serde_json::Value,
    path: &Path,
) -> Result<BTreeMap<String, String>, LmError> {
    let mut tokens = BTreeMap::new();
    for name in SPECIAL_TOKEN_FIELDS {
        match config.get(name) {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(s)) => {
                tokens.insert(name.to_string(), s.clone());
            }
            Some(v) => match v.get("content").and_then(|c| c.as_str()) {
                Some(s) => {
                    tokens.insert(name.to_string(), s.to_string());
                }
                None => {
                    return Err(LmError::Input(format!(
                        "{}: field {name}: expected a string or an object with a string \
                         `content`, found {v}",
                        path.display()
                    )));
                }
            },
        }
    }
    Ok(tokens)
}

/// Reads a conversation from a JSONL file: one `{"role": ..., "content": ...}` per line
/// (blank lines skipped).
pub fn read_conversation(path: &Path) -> Result<Vec<ChatMessage>, LmError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| LmError::Input(format!("cannot read {}: {e}", path.display())))?;
    let mut messages = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let message: ChatMessage = serde_json::from_str(line).map_err(|e| {
            LmError::Input(format!(
                "{} line {}: expected {{\"role\": string, \"content\": string}}: {e}",
                path.display(),
                i + 1
            ))
        })?;
        messages.push(message);
    }
    if messages.is_empty() {
        return Err(LmError::Input(format!(
            "{}: no messages (one JSON object per line: {{\"role\": ..., \"content\": ...}})",
            path.display()
        )));
    }
    Ok(messages)
}
