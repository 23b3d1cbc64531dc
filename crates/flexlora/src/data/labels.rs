//! Class labels: the label set of a classification task and the mapping of raw examples to
//! [`Example`]s (rules in the module documentation of [`crate::data`]).

use super::error::{DataError, list};
use super::example::{Example, RawExample};
use super::source::Source;
use crate::config::TaskKind;
use std::collections::HashMap;
use std::path::Path;

/// The class labels: the configured or preset ones, else those found in `raw` (numeric order
/// when all are numbers, else string order). Empty for regression.
pub(super) fn label_set(
    path: &Path,
    source: &Source,
    raw: &[RawExample],
) -> Result<Vec<String>, DataError> {
    if source.task == TaskKind::Regression {
        return Ok(Vec::new());
    }
    if let Some(labels) = &source.labels {
        return Ok(labels.clone());
    }
    let mut found: Vec<&str> = raw.iter().map(|r| r.label.as_str()).collect();
    found.sort_unstable();
    found.dedup();
    let numbers: Option<Vec<f64>> = found.iter().map(|s| s.parse::<f64>().ok()).collect();
    if let Some(numbers) = numbers {
        let mut pairs: Vec<(f64, &str)> = numbers.into_iter().zip(found).collect();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
        found = pairs.into_iter().map(|(_, s)| s).collect();
    }
    if found.len() < 2 {
        return Err(DataError::Config {
            path: path.to_path_buf(),
            message: format!(
                "classification needs at least 2 classes, but every label is {}; set data.task = regression for numeric targets",
                list(&found.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            ),
        });
    }
    Ok(found.into_iter().map(str::to_string).collect())
}

/// Raw examples to [`Example`]s: class indices for classification, parsed targets for
/// regression.
pub(super) fn convert(
    path: &Path,
    source: &Source,
    labels: &[String],
    raw: Vec<RawExample>,
) -> Result<Vec<Example>, DataError> {
    let index: HashMap<&str, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.trim(), i))
        .collect();
    raw.into_iter()
        .map(|r| {
            let label = match source.task {
                TaskKind::Classification => match index.get(r.label.as_str()) {
                    Some(&i) => i as f32,
                    None => {
                        return Err(DataError::UnknownLabel {
                            path: path.to_path_buf(),
                            record: r.record,
                            line: r.line,
                            value: r.label,
                            allowed: labels.to_vec(),
                        });
                    }
                },
                TaskKind::Regression => match r.label.parse::<f32>() {
                    Ok(x) if x.is_finite() => x,
                    _ => {
                        return Err(DataError::Record {
                            path: path.to_path_buf(),
                            record: r.record,
                            line: r.line,
                            message: format!(
                                "label \"{}\" is not a finite number (data.task = regression)",
                                r.label
                            ),
                        });
                    }
                },
            };
            Ok(Example {
                text: r.text,
                text_pair: r.text_pair,
                label,
                image: r.image,
            })
        })
        .collect()
}
