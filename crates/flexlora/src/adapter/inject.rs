//! PEFT-style `target_modules` matching on Hugging Face module paths.

use super::{AdaptedLinear, Adapter, AdapterError};

/// One entry of `target_modules`.
#[derive(Debug, Clone)]
pub enum TargetPattern {
    /// A name: matches a module path equal to it or ending in `.<name>` (PEFT's rule), so
    /// `query` matches `encoder.layer.0.attention.self.query` and `output.dense` matches both
    /// `attention.output.dense` and the feed-forward `output.dense`.
    Suffix(String),
    /// `re:<regex>`: the regex must match the whole module path.
    Regex(regex::Regex),
}

impl TargetPattern {
    /// Parses one entry: `re:` introduces a regex, anything else is a name.
    pub fn parse(s: &str) -> Result<Self, AdapterError> {
        match s.strip_prefix("re:") {
            Some(re) => regex::Regex::new(&format!("^(?:{re})$"))
                .map(TargetPattern::Regex)
                .map_err(|e| AdapterError::Target(format!("`{s}` is not a valid regex: {e}"))),
            None if s.trim().is_empty() => Err(AdapterError::Target("an entry is empty".into())),
            None => Ok(TargetPattern::Suffix(s.to_string())),
        }
    }

    /// Whether this pattern selects the module at `path`.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            TargetPattern::Suffix(name) => {
                path == name
                    || path
                        .strip_suffix(name.as_str())
                        .is_some_and(|head| head.ends_with('.'))
            }
            TargetPattern::Regex(re) => re.is_match(path),
        }
    }
}

/// The indices into `module_paths` of the modules to adapt.
///
/// `module_paths` must list the model's adaptable linear layers in forward order (layer, then
/// module within the layer); the result keeps that order, and it is the order of every log,
/// plot and checkpoint. Every pattern must match at least one module: a pattern that matches
/// nothing is an error naming it and a few of the available paths.
pub fn select_targets(
    module_paths: &[String],
    patterns: &[String],
) -> Result<Vec<usize>, AdapterError> {
    if patterns.is_empty() {
        return Err(AdapterError::Target("no patterns given".into()));
    }
    let parsed: Vec<TargetPattern> = patterns
        .iter()
        .map(|p| TargetPattern::parse(p))
        .collect::<Result<_, _>>()?;
    for (raw, pat) in patterns.iter().zip(&parsed) {
        if !module_paths.iter().any(|m| pat.matches(m)) {
            let examples: Vec<&str> = module_paths.iter().take(8).map(String::as_str).collect();
            return Err(AdapterError::Target(format!(
                "`{raw}` matches no module; modules look like: {}",
                examples.join(", ")
            )));
        }
    }
    Ok((0..module_paths.len())
        .filter(|&i| parsed.iter().any(|p| p.matches(&module_paths[i])))
        .collect())
}

/// Puts an adapter made by `make(in_features, out_features)` on every layer of `linears`
/// (listed with their module `paths`, in forward order) that `patterns` select, and returns
/// the adapted paths in that order. Layers already adapted are replaced.
pub fn inject_adapters(
    linears: Vec<&mut AdaptedLinear>,
    paths: &[String],
    patterns: &[String],
    mut make: impl FnMut(i64, i64) -> Result<Adapter, AdapterError>,
) -> Result<Vec<String>, AdapterError> {
    let selected = select_targets(paths, patterns)?;
    let mut linears: Vec<Option<&mut AdaptedLinear>> = linears.into_iter().map(Some).collect();
    let mut adapted = Vec::with_capacity(selected.len());
    for i in selected {
        let layer = linears.get_mut(i).and_then(Option::take).ok_or_else(|| {
            AdapterError::Target(format!("no layer for module path {}", paths[i]))
        })?;
        let (in_f, out_f) = layer.features();
        layer.adapter = Some(make(in_f, out_f)?);
        adapted.push(paths[i].clone());
    }
    Ok(adapted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::bert::LAYER_MODULES;

    fn bert_paths(layers: usize) -> Vec<String> {
        (0..layers)
            .flat_map(|l| {
                LAYER_MODULES
                    .iter()
                    .map(move |m| format!("encoder.layer.{l}.{m}"))
            })
            .collect()
    }

    #[test]
    fn names_match_path_suffixes_in_layer_order() {
        let paths = bert_paths(2);
        let sel = select_targets(&paths, &["value".into(), "query".into()]).unwrap();
        assert_eq!(
            sel,
            vec![0, 2, 6, 8],
            "layer by layer, module order within a layer"
        );
        let sel = select_targets(&paths, &["output.dense".into()]).unwrap();
        assert_eq!(
            sel,
            vec![3, 5, 9, 11],
            "PEFT's suffix rule matches both output.dense"
        );
        let sel = select_targets(&paths, &["attention.output.dense".into()]).unwrap();
        assert_eq!(sel, vec![3, 9]);
        // A suffix must start at a component boundary: `dense` does not match `xdense`.
        assert!(!TargetPattern::parse("uery").unwrap().matches("a.query"));
    }

    #[test]
    fn regexes_match_whole_paths() {
        let paths = bert_paths(3);
        let sel = select_targets(&paths, &[r"re:encoder\.layer\.[01]\..*\.query".into()]).unwrap();
        assert_eq!(sel, vec![0, 6]);
        assert!(
            select_targets(&paths, &["re:query".into()]).is_err(),
            "must match whole path"
        );
    }

    #[test]
    fn unknown_patterns_are_errors() {
        let paths = bert_paths(1);
        let e = select_targets(&paths, &["query".into(), "q_proj".into()]).unwrap_err();
        assert!(e.to_string().contains("`q_proj` matches no module"), "{e}");
        assert!(
            e.to_string()
                .contains("encoder.layer.0.attention.self.query"),
            "{e}"
        );
        assert!(select_targets(&paths, &["re:(".into()]).is_err());
        assert!(select_targets(&paths, &[]).is_err());
    }
}
