//! Per-example prediction files, as `flexlora predict` and `flexlora eval --predictions` write
//! them: CSV or JSONL, one row per example with what identifies it, the predicted label and
//! the class probabilities.

use anyhow::Context;
use serde_json::{Map, Value};
use std::path::Path;

/// The predictions of a set of examples, in example order.
#[derive(Debug, Clone, Copy)]
pub struct Predictions<'a> {
    /// Class `i`'s label as written in the data; empty for regression.
    pub label_names: &'a [String],
    /// Per example: the predicted class (as `f32`) or value.
    pub predictions: &'a [f32],
    /// Per example: the class probabilities (empty for regression).
    pub probabilities: &'a [Vec<f32>],
}

impl Predictions<'_> {
    /// Example `i`'s predicted label as the data writes it (its value for regression).
    pub fn label(&self, i: usize) -> String {
        label_text(self.label_names, self.predictions[i])
    }
}

/// The label a class index (as `f32`) or regression value stands for: its name in
/// `label_names`, or the value itself when there are no names.
pub fn label_text(label_names: &[String], value: f32) -> String {
    match label_names.get(value as usize) {
        Some(name) if value >= 0.0 && value.fract() == 0.0 => name.clone(),
        _ => value.to_string(),
    }
}

/// Writes `p` to `output` (whole or not at all). `keys[i]` holds the fields that identify
/// example `i` (its line, file or index). A `.csv` output has the columns `csv_keys` (taken
/// from each row's keys), `prediction` and `p_<label>` per class, quoted where needed; any
/// other output is JSONL: every key, `prediction` and `probabilities`.
pub fn write_predictions(
    output: &Path,
    keys: &[Map<String, Value>],
    csv_keys: &[&str],
    p: &Predictions,
) -> anyhow::Result<()> {
    let csv = output.extension().is_some_and(|x| x == "csv");
    crate::io::write_atomic(output, |w| {
        if csv {
            let mut out = csv::Writer::from_writer(w);
            let mut header: Vec<String> = csv_keys.iter().map(|k| k.to_string()).collect();
            header.push("prediction".into());
            header.extend(p.label_names.iter().map(|l| format!("p_{l}")));
            out.write_record(&header)?;
            for (i, row) in keys.iter().enumerate() {
                let mut fields: Vec<String> = csv_keys
                    .iter()
                    .map(|k| match row.get(*k) {
                        Some(Value::String(s)) => s.clone(),
                        Some(v) => v.to_string(),
                        None => String::new(),
                    })
                    .collect();
                fields.push(p.label(i));
                fields.extend(p.probabilities[i].iter().map(|x| format!("{x:.6}")));
                out.write_record(&fields)?;
            }
            out.flush()?;
        } else {
            use std::io::Write as _;
            for (i, row) in keys.iter().enumerate() {
                let mut v = row.clone();
                v.insert("prediction".into(), p.label(i).into());
                v.insert("probabilities".into(), p.probabilities[i].clone().into());
                writeln!(w, "{}", Value::Object(v))?;
            }
        }
        Ok(())
    })
    .with_context(|| format!("writing {}", output.display()))
}

/// One row's keys from `(name, value)` pairs.
pub fn keys<const N: usize>(fields: [(&str, Value); N]) -> Map<String, Value> {
    fields
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_where_needed_and_jsonl_keeps_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["-1".to_string(), "1".to_string()];
        let p = Predictions {
            label_names: &names,
            predictions: &[1.0, 0.0],
            probabilities: &[vec![0.25, 0.75], vec![0.5, 0.5]],
        };
        let rows = [
            keys([("file", "a, b.png".into()), ("n", 3.into())]),
            keys([("file", "c.png".into()), ("n", 4.into())]),
        ];
        let csv = dir.path().join("p.csv");
        write_predictions(&csv, &rows, &["file"], &p).unwrap();
        assert_eq!(
            std::fs::read_to_string(&csv).unwrap(),
            "file,prediction,p_-1,p_1\n\"a, b.png\",1,0.250000,0.750000\nc.png,-1,0.500000,0.500000\n"
        );
        let jsonl = dir.path().join("p.jsonl");
        write_predictions(&jsonl, &rows, &["file"], &p).unwrap();
        let first: Value = serde_json::from_str(
            std::fs::read_to_string(&jsonl)
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            first,
            serde_json::json!({"file": "a, b.png", "n": 3, "prediction": "1", "probabilities": [0.25, 0.75]})
        );
        // Regression: the value itself.
        assert_eq!(label_text(&[], 2.5), "2.5");
    }
}
