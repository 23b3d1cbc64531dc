//! Reading a config file: TOML syntax, `--set key=value` overrides ([`crate::overrides`]),
//! deserialisation ([`Config::from_table`]), the defaults that depend on the model
//! (`model.target_modules`, [`Architecture::default_target_modules`]) and the range checks
//! ([`crate::validate`]). It sits above those modules so that the config types depend on none
//! of them.

use crate::config::{Config, ConfigError};
use crate::models::Architecture;
use std::path::Path;

/// The run config commands read when none is given: the main job (a text classifier).
pub const DEFAULT_CONFIG: &str = "configs/default.toml";
/// The decoder config commands read when none is given and the model is a decoder.
pub const DEFAULT_DECODER_CONFIG: &str = "configs/commonsense/smollm2-flexlora.toml";

/// A config as loaded, with where it came from (for error messages and relative paths).
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The validated configuration.
    pub config: Config,
    /// `"<file>"` or `"<file> with --set overrides"`.
    pub origin: String,
}

impl Config {
    /// Reads `path`, applies `--set key=value` overrides in order, and validates the result.
    pub fn load(path: &Path, overrides: &[String]) -> Result<LoadedConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: path.to_path_buf(),
                    message: e.to_string().trim_end().to_string(),
                })?;
        let origin = if overrides.is_empty() {
            path.display().to_string()
        } else {
            format!("{} with --set overrides", path.display())
        };
        Self::load_table(table, overrides, origin)
    }

    /// The defaults of every key with `overrides` applied (`--model` and `--data` at least:
    /// `model.path` and a data file have no default), validated: what a command line with no
    /// `--config` trains.
    pub fn load_defaults(overrides: &[String]) -> Result<LoadedConfig, ConfigError> {
        Self::load_table(
            toml::Table::new(),
            overrides,
            "the defaults with command-line settings".into(),
        )
    }

    fn load_table(
        mut table: toml::Table,
        overrides: &[String],
        origin: String,
    ) -> Result<LoadedConfig, ConfigError> {
        for arg in overrides {
            crate::overrides::apply(&mut table, arg)?;
        }
        let targets_given = table
            .get("model")
            .and_then(|m| m.get("target_modules"))
            .is_some();
        let mut config = Self::from_table(table, &origin)?;
        if !targets_given {
            config.model.target_modules = default_targets(&config.model.path, &origin)?;
        }
        config.validate(&origin)?;
        Ok(LoadedConfig { config, origin })
    }

    /// Checks every value against its allowed range; see [`crate::validate`].
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        crate::validate::check(self, origin)
    }
}

/// `model.target_modules` for a config that leaves it out: the architecture's default, read
/// from the model folder's `config.json`.
fn default_targets(model: &Path, origin: &str) -> Result<Vec<String>, ConfigError> {
    let arch = Architecture::of_folder(model).map_err(|e| ConfigError::Invalid {
        origin: origin.to_string(),
        key: "model.target_modules".into(),
        value: "(not given)".into(),
        message: format!(
            "its default depends on the model's architecture, which could not be read: {e}"
        ),
    })?;
    Ok(arch
        .default_target_modules()
        .iter()
        .map(|m| m.to_string())
        .collect())
}

/// The value of every key when a config leaves it out, as TOML with a header saying what has
/// no default: `flexlora config --show-defaults`.
pub fn defaults_toml() -> Result<String, ConfigError> {
    let mut table = toml::Table::new();
    for (section, key) in [("model", "path"), ("data", "path")] {
        let mut t = toml::Table::new();
        t.insert(key.into(), toml::Value::String(String::new()));
        table.insert(section.into(), toml::Value::Table(t));
    }
    let config = Config::from_table(table, "the defaults")?;
    let mut text = String::from(
        "# The value of every key a config leaves out. Nothing defaults model.path (a Hugging \
         Face\n# checkpoint folder) or the data (data.path, or data.train with optional \
         data.validation and\n# data.test). method.alpha is 8 * r_init for flexlora (shown) \
         and 8 for lora and adalora;\n# model.target_modules is every linear layer of the \
         architecture's blocks (LLaMA: the paper's five projections):\n",
    );
    for arch in Architecture::ALL {
        text.push_str(&format!(
            "#   {}: {:?}\n",
            arch.model_type(),
            arch.default_target_modules()
        ));
    }
    text.push('\n');
    let body = toml::to_string(&config).map_err(|e| ConfigError::Syntax {
        path: "the defaults".into(),
        message: e.to_string(),
    })?;
    text.push_str(&body);
    Ok(text)
}
