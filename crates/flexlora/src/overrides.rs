//! `--set key=value` overrides applied to a parsed TOML table before it is deserialised.

use crate::config::ConfigError;

/// Applies one `key=value` override to `table`.
///
/// `key` is a dotted path (`schedule.t_init`); missing tables on the way are created, so an
/// override can fill a section the file leaves out. `value` is read as a TOML value (`3`,
/// `0.5`, `true`, `"text"`, `["query", "value"]`); anything that is not valid TOML is taken as
/// a plain string, so `--set data.path=my file.csv` works without quotes. Whether the key
/// exists is checked when the table is deserialised, which names unknown keys.
pub fn apply(table: &mut toml::Table, arg: &str) -> Result<(), ConfigError> {
    let err = |message: &str| ConfigError::Override {
        arg: arg.to_string(),
        message: message.to_string(),
    };
    let (key, raw) = arg
        .split_once('=')
        .ok_or_else(|| err("expected key=value, e.g. schedule.t_init=30"))?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(err("the key must be a dotted path such as training.epochs"));
    }
    let value = parse_value(raw.trim());
    let (last, parents) = parts.split_last().expect("split of a non-empty key");
    let mut current = table;
    for (depth, part) in parents.iter().enumerate() {
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry.as_table_mut().ok_or_else(|| {
            err(&format!(
                "`{}` is a value, not a section",
                parts[..=depth].join(".")
            ))
        })?;
    }
    current.insert(last.to_string(), value);
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_values_and_new_sections() {
        let mut t: toml::Table = "[schedule]\nt_init = 1\n".parse().unwrap();
        apply(&mut t, "schedule.t_init=30").unwrap();
        apply(&mut t, "training.seed = 7").unwrap();
        apply(&mut t, "model.target_modules=[\"query\", \"key\"]").unwrap();
        apply(&mut t, "data.path=my data.csv").unwrap();
        assert_eq!(t["schedule"]["t_init"].as_integer(), Some(30));
        assert_eq!(t["training"]["seed"].as_integer(), Some(7));
        assert_eq!(
            t["model"]["target_modules"].as_array().map(|a| a.len()),
            Some(2)
        );
        assert_eq!(t["data"]["path"].as_str(), Some("my data.csv"));
    }

    #[test]
    fn malformed_overrides_are_errors() {
        let mut t: toml::Table = "[schedule]\nt_init = 1\n".parse().unwrap();
        for bad in [
            "schedule.t_init",
            "=3",
            "schedule..t_init=1",
            "schedule.t_init.x=1",
        ] {
            let e = apply(&mut t, bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--set {bad}:")), "{e}");
        }
    }
}
