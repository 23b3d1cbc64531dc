//! Labelled data: reading a data set, mapping its labels, splitting it, and ordering the
//! training examples of each epoch. (Tokenisation and batching come with the trainer; the
//! split rule lives here so that every command agrees on it.)
//!
//! # Reading a file
//! - **CSV / TSV** (`data.format = "csv" | "tsv"`): read with the `csv` crate, records of any
//!   length (a record too short for a column is an error). CSV honours `"` quoting (a quoted
//!   field may hold commas, newlines and `""`); TSV has **no quoting** (GLUE's TSV files hold
//!   quote characters that are part of the text). A UTF-8 byte-order mark at the start of a
//!   file is dropped. Records whose fields are all blank are skipped. With
//!   `data.has_header`, the first (non-blank) record is the header.
//! - **JSONL**: one JSON object per non-blank line. Text fields must be strings; a label may be
//!   a string, a number (taken as written, e.g. `1` or `3.8`) or a boolean.
//! - **Columns**: a 0-based index (`text_column = 1`) works with or without a header; a name
//!   (`text_column = "sentence"`) needs a header (CSV/TSV) and matches a header cell after
//!   trimming, or is a JSONL field name. An index on JSONL is an error.
//! - Texts and label fields are trimmed of surrounding whitespace (the Pang & Lee sentences end
//!   with a newline inside their quotes).
//!
//! # Labels
//! - **Classification**: with `data.labels`, class `i` is `labels[i]` and any other value in a
//!   file is an error naming the file, record, value and the allowed labels. Without it, the
//!   classes are the distinct values found, sorted numerically when every one parses as a
//!   number (so `-1` is class 0 and `1` class 1), else as strings (byte order). At least two
//!   classes are required. [`Example::label`] is the class index as `f32`.
//! - **Regression**: the label must parse as a finite `f32`; `data.labels` must not be set.
//!
//! # Metric
//! `data.metric`, else the preset's, else accuracy (classification) or Pearson (regression).
//! Accuracy and Matthews need classification, F1 a binary classification (positive class =
//! class 1), Pearson and Spearman regression; other pairings are an error.
//!
//! # Splits
//! - **One file** (no preset): its `n` examples are taken in the order
//!   [`shuffled_indices`]`(n, data.split_seed)`; with
//!   `s = `[`SplitSizes::of`]`(n, train_fraction, validation_fraction)`, the first `s.train`
//!   go to train, the next `s.validation` to validation and the rest to test, each part in
//!   that shuffled order.
//! - **GLUE preset** (`data.preset`; `data.path` is the task folder as the GLUE benchmark
//!   distributes it): the train pool is `train.tsv` (`n` examples): in the order
//!   `shuffled_indices(n, split_seed)`, the last `round(n · validation_fraction)` form the
//!   validation set and the others the training set (`train_fraction` is ignored). The test
//!   set is `dev.tsv` (`dev_matched.tsv` for MNLI) in file order: GLUE's test labels are
//!   hidden, so papers report dev. The preset sets format, header, columns, labels, task and
//!   metric ([`GlueSpec::of`]); `data.metric` and `data.labels`, when given, override the
//!   preset's.
//!
//! - **Images** (`data.format = "idx" | "pixel_csv"`): an IDX folder's
//!   `train-*` pair is the pool and its `t10k-*` pair, when present, the test set (as a GLUE
//!   dev file); a pixel CSV file is one pool. Labels are the byte values / label fields as
//!   written, ordered as above.
//! - **Counts** (any format): `data.train_examples` and `data.validation_examples` replace
//!   `round(n · fraction)` (VTAB-1K: 800 and 200 from the shuffled pool; with a separate test
//!   set the rest of the pool is unused). `data.test_examples` caps the test set: the first
//!   that many of the rest of the shuffled pool, or of a separate test set the indices
//!   `shuffled_indices(n_test, derive_seed(split_seed, 0x7e57))[..k]` in file order.
//!
//! An empty training or test set is an error; an empty validation set is allowed
//! (`validation_fraction = 0`).
//!
//! # Errors
//! Every [`DataError`] names the file, and the record (1-based, the header not counted) and
//! the line where it starts when one record is at fault. Bad data never panics.

mod arrow;
pub mod commonsense;
mod glue;
mod images;
mod order;
mod read;
mod source;

pub use glue::GlueSpec;
pub use images::GreyImage;
pub use order::{BUCKET_CHUNK_BATCHES, SplitMix64, derive_seed, epoch_order, shuffled_indices};

use crate::config::{DataConfig, MetricName, TaskKind};
use read::RawExample;
use source::Source;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A data set that could not be read or used.
#[derive(Debug, Error)]
pub enum DataError {
    /// The file is missing or unreadable.
    #[error(
        "cannot read data file {path}: {source} (the default data is fetched by scripts/fetch-assets)"
    )]
    Read {
        /// The data file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file would not fit in memory once read.
    #[error(transparent)]
    TooLarge(#[from] crate::resources::TooLarge),
    /// A record is malformed (too few fields, bad UTF-8 or JSON, a label that is not a number
    /// in a regression task, ...).
    #[error("{path}: record {record}{}: {message}", line_note(*line))]
    Record {
        /// The data file.
        path: PathBuf,
        /// 1-based record number (the header does not count).
        record: u64,
        /// 1-based line where the record starts.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// The file holds no examples.
    #[error("{path}: no examples found")]
    Empty {
        /// The data file.
        path: PathBuf,
    },
    /// A column named in the config is not in the header.
    #[error(
        "{path}: no column \"{name}\" ({key}) in the header; the header has {}",
        list(header)
    )]
    MissingColumn {
        /// The data file.
        path: PathBuf,
        /// The config key naming the column, e.g. `data.text_column`.
        key: &'static str,
        /// The column name looked for.
        name: String,
        /// The header's cells.
        header: Vec<String>,
    },
    /// A column is given by name but the CSV/TSV file has no header.
    #[error(
        "{path}: {key} = \"{name}\" names a column, but data.has_header = false; give a 0-based column index or set data.has_header = true"
    )]
    NameWithoutHeader {
        /// The data file.
        path: PathBuf,
        /// The config key.
        key: &'static str,
        /// The column name given.
        name: String,
    },
    /// A column is given by index for a JSONL file, whose fields have names only.
    #[error(
        "{path}: {key} = {index} is a column index, but JSON lines and Arrow data sets have named fields; give the field name"
    )]
    IndexOnJsonl {
        /// The data file.
        path: PathBuf,
        /// The config key.
        key: &'static str,
        /// The index given.
        index: usize,
    },
    /// A classification label outside the label set.
    #[error(
        "{path}: record {record}{}: unknown label \"{value}\"; the allowed labels are {}",
        line_note(*line),
        list(allowed)
    )]
    UnknownLabel {
        /// The data file.
        path: PathBuf,
        /// 1-based record number.
        record: u64,
        /// 1-based line where the record starts.
        line: u64,
        /// The label as written.
        value: String,
        /// The label set, in class order.
        allowed: Vec<String>,
    },
    /// A row of a Hugging Face data set folder lacks a field or holds a value that cannot be
    /// used (the commonsense suite, [`commonsense`]).
    #[error("{path}: row {row} (0-based), field `{field}`: {message}")]
    Field {
        /// The data set folder.
        path: PathBuf,
        /// 0-based row index.
        row: usize,
        /// The field at fault (`choices.text`, `endings[2]`, ...).
        field: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// The `[data]` settings cannot be used with this data (metric and task do not match,
    /// a bad label list, a split that leaves no training or test examples).
    #[error("{path}: {message}")]
    Config {
        /// The data file or folder.
        path: PathBuf,
        /// What is wrong and what is allowed.
        message: String,
    },
}

/// ` (line 7)`; nothing for binary files, whose records have no line (0).
fn line_note(line: u64) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(" (line {line})")
    }
}

/// `"a", "b", "c"`.
fn list(items: &[String]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One labelled example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The (first) text, trimmed; empty in an image data set.
    pub text: String,
    /// The second text of a pair task, trimmed.
    pub text_pair: Option<String>,
    /// Classification: the class index (`0..num_labels`) as `f32`; regression: the target.
    pub label: f32,
    /// The image of an image data set (`data.format = "idx" | "pixel_csv"`).
    pub image: Option<GreyImage>,
}

/// A data set split into train / validation / test, with its labels and metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Splits {
    /// Training examples.
    pub train: Vec<Example>,
    /// Validation examples (model selection); may be empty.
    pub validation: Vec<Example>,
    /// Test examples (the reported metric).
    pub test: Vec<Example>,
    /// Class `i`'s label as written in the file; empty for regression.
    pub label_names: Vec<String>,
    /// Classification or regression.
    pub task: TaskKind,
    /// The reported metric, resolved (config, else preset, else the task's default).
    pub metric: MetricName,
}

impl Splits {
    /// Outputs of the model head: the number of classes, or 1 for regression.
    pub fn num_labels(&self) -> usize {
        match self.task {
            TaskKind::Classification => self.label_names.len(),
            TaskKind::Regression => 1,
        }
    }
}

/// Sizes of the train / validation / test parts of a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SplitSizes {
    /// Training examples.
    pub train: u64,
    /// Validation examples (model selection).
    pub validation: u64,
    /// Test examples (reported metric).
    pub test: u64,
}

impl SplitSizes {
    /// `train = round(n · train_fraction)`, `validation = round(n · validation_fraction)`,
    /// `test` = the rest. Rounding (not flooring) keeps 4000 · 0.7 at 2800 despite `0.7` having
    /// no exact binary form.
    pub fn of(n: u64, train_fraction: f64, validation_fraction: f64) -> Self {
        let part = |f: f64| ((n as f64 * f).round() as u64).min(n);
        let train = part(train_fraction);
        let validation = part(validation_fraction).min(n - train);
        Self {
            train,
            validation,
            test: n - train - validation,
        }
    }

    /// A GLUE train pool of `n_pool` examples and a dev file of `n_test`:
    /// `validation = round(n_pool · validation_fraction)`, `train` = the rest of the pool.
    pub fn glue(n_pool: u64, validation_fraction: f64, n_test: u64) -> Self {
        let validation = ((n_pool as f64 * validation_fraction).round() as u64).min(n_pool);
        Self {
            train: n_pool - validation,
            validation,
            test: n_test,
        }
    }
}

/// Counts the examples that [`load_splits`] would load, in all: the data file's records, or
/// for a GLUE preset or an IDX folder the train pool's plus the test file's. Fields are not
/// checked.
pub fn count_examples(data: &DataConfig) -> Result<u64, DataError> {
    let (_, pool, test) = Source::of(data).counts(data)?;
    Ok(pool + test.unwrap_or(0))
}

/// The sizes of the parts [`load_splits`] would make, from record counts alone (no labels are
/// checked): what `flexlora schedule` needs to count optimiser steps.
pub fn split_sizes(data: &DataConfig) -> Result<SplitSizes, DataError> {
    let (path, pool, test) = Source::of(data).counts(data)?;
    plan_sizes(data, &path, pool, test)
}

/// The sizes of the parts of a training pool of `n_pool` examples and a separate test set of
/// `n_test` (module docs), checked to leave a training and a test set.
fn plan_sizes(
    cfg: &DataConfig,
    path: &Path,
    n_pool: u64,
    n_test: Option<u64>,
) -> Result<SplitSizes, DataError> {
    let err = |message: String| DataError::Config {
        path: cfg.path.clone(),
        message,
    };
    let mut sizes = if cfg.train_examples.is_some() || cfg.validation_examples.is_some() {
        let part = |f: f64| (n_pool as f64 * f).round() as u64;
        let train = cfg
            .train_examples
            .unwrap_or_else(|| part(cfg.train_fraction));
        let validation = cfg
            .validation_examples
            .unwrap_or_else(|| part(cfg.validation_fraction));
        if train.saturating_add(validation) > n_pool {
            return Err(err(format!(
                "{train} training + {validation} validation examples (data.train_examples, \
                 data.validation_examples) are more than the {n_pool} of {}",
                path.display()
            )));
        }
        SplitSizes {
            train,
            validation,
            test: n_test.unwrap_or(n_pool - train - validation),
        }
    } else {
        match n_test {
            None => SplitSizes::of(n_pool, cfg.train_fraction, cfg.validation_fraction),
            Some(t) => SplitSizes::glue(n_pool, cfg.validation_fraction, t),
        }
    };
    if let Some(k) = cfg.test_examples {
        sizes.test = sizes.test.min(k);
    }
    if sizes.train == 0 || sizes.test == 0 {
        let part = if sizes.train == 0 { "training" } else { "test" };
        return Err(err(match n_test {
            None => format!(
                "{n_pool} examples with train_fraction = {} and validation_fraction = {} (or \
                 data.train_examples / validation_examples / test_examples) leave an empty {part} set",
                cfg.train_fraction, cfg.validation_fraction
            ),
            Some(_) => format!(
                "{n_pool} training examples with validation_fraction = {} (or \
                 data.train_examples / validation_examples / test_examples) leave an empty {part} set",
                cfg.validation_fraction
            ),
        }));
    }
    Ok(sizes)
}

/// Stream of [`derive_seed`] that samples a separate test set down to `data.test_examples`.
const TEST_SAMPLE_STREAM: u64 = 0x7e57;

/// Reads the data set of `[data]`, maps its labels and splits it (rules in the module docs).
pub fn load_splits(cfg: &DataConfig) -> Result<Splits, DataError> {
    if cfg.format == crate::config::DataFormat::Commonsense {
        return Err(DataError::Config {
            path: cfg.path.clone(),
            message: "data.format = \"commonsense\" is a question suite for decoders \
                      (model_type \"llama\"), not labelled examples for a classifier"
                .into(),
        });
    }
    let source = Source::of(cfg);
    source.check(&cfg.path)?;
    let (pool_path, raw_pool, raw_test) = source.read(cfg)?;
    let label_names = label_set(&pool_path, &source, &raw_pool)?;
    let train_pool = convert(&pool_path, &source, &label_names, raw_pool)?;
    let test = match raw_test {
        Some((path, raw)) => Some(convert(&path, &source, &label_names, raw)?),
        None => None,
    };
    if source.metric == MetricName::F1 && label_names.len() != 2 {
        return Err(DataError::Config {
            path: cfg.path.clone(),
            message: format!(
                "data.metric = f1 needs a binary task, but the labels are {}",
                list(&label_names)
            ),
        });
    }
    let sizes = plan_sizes(
        cfg,
        &pool_path,
        train_pool.len() as u64,
        test.as_ref().map(|t| t.len() as u64),
    )?;
    let order = shuffled_indices(train_pool.len(), cfg.split_seed);
    let mut slots: Vec<Option<Example>> = train_pool.into_iter().map(Some).collect();
    let mut take = |indices: &[usize]| -> Vec<Example> {
        indices.iter().filter_map(|&i| slots[i].take()).collect()
    };
    let (t, v, k) = (
        sizes.train as usize,
        sizes.validation as usize,
        sizes.test as usize,
    );
    let train = take(&order[..t]);
    let validation = take(&order[t..t + v]);
    let test = match test {
        // A separate test set in file order, or a seeded sample of it kept in file order.
        Some(test) if test.len() == k => test,
        Some(test) => {
            let mut keep = vec![false; test.len()];
            let seed = derive_seed(cfg.split_seed, TEST_SAMPLE_STREAM);
            for &i in &shuffled_indices(test.len(), seed)[..k] {
                keep[i] = true;
            }
            test.into_iter()
                .zip(keep)
                .filter(|(_, k)| *k)
                .map(|(e, _)| e)
                .collect()
        }
        None => take(&order[t + v..t + v + k]),
    };
    Ok(Splits {
        train,
        validation,
        test,
        label_names,
        task: source.task,
        metric: source.metric,
    })
}

/// The class labels: the configured or preset ones, else those found in `raw` (numeric order
/// when all are numbers, else string order). Empty for regression.
fn label_set(path: &Path, source: &Source, raw: &[RawExample]) -> Result<Vec<String>, DataError> {
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
fn convert(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Column, DataFormat};

    fn config(path: &Path, format: DataFormat, has_header: bool) -> DataConfig {
        DataConfig {
            path: path.to_path_buf(),
            preset: None,
            format,
            has_header,
            text_column: Column::Index(1),
            text_pair_column: None,
            label_column: Column::Index(0),
            labels: None,
            task: TaskKind::Classification,
            metric: None,
            train_fraction: 0.5,
            validation_fraction: 0.25,
            split_seed: 0,
            max_length: 64,
            train_examples: None,
            validation_examples: None,
            test_examples: None,
            image_shape: None,
            pixel_max: 255,
            image_size: None,
            tasks: None,
            train_per_task: None,
            eval_per_task: None,
        }
    }

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn all(s: &Splits) -> Vec<Example> {
        let mut v: Vec<Example> = s
            .train
            .iter()
            .chain(&s.validation)
            .chain(&s.test)
            .cloned()
            .collect();
        v.sort_by(|a, b| a.text.cmp(&b.text));
        v
    }

    #[test]
    fn numeric_labels_sort_by_value_others_as_strings() {
        let dir = tempfile::tempdir().unwrap();
        let numeric = write(&dir, "n.csv", "10,a\n-1,b\n2,c\n10,d\n");
        let s = load_splits(&config(&numeric, DataFormat::Csv, false)).unwrap();
        assert_eq!(s.label_names, ["-1", "2", "10"]);
        let labels: Vec<f32> = all(&s).iter().map(|e| e.label).collect();
        assert_eq!(labels, [2.0, 0.0, 1.0, 2.0]);
        let words = write(&dir, "w.csv", "pos,a\nneg,b\nNeutral,c\npos,d\n");
        let s = load_splits(&config(&words, DataFormat::Csv, false)).unwrap();
        assert_eq!(s.label_names, ["Neutral", "neg", "pos"]);
        assert_eq!(s.num_labels(), 3);
    }

    #[test]
    fn csv_quotes_tsv_does_not_and_blank_records_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let csv = write(
            &dir,
            "q.csv",
            "\u{feff}1,\"a, \"\"quoted\"\" one\n\"\n\n  \n0, b \n1,c\n0,d\n",
        );
        let cfg = config(&csv, DataFormat::Csv, false);
        assert_eq!(count_examples(&cfg).unwrap(), 4);
        let s = load_splits(&cfg).unwrap();
        let texts: Vec<String> = all(&s).into_iter().map(|e| e.text).collect();
        assert_eq!(texts, ["a, \"quoted\" one", "b", "c", "d"]);
        let tsv = write(
            &dir,
            "q.tsv",
            "label\ttext\n1\tsay \"hi\n0\tb\n1\tc\n0\td\n",
        );
        let mut cfg = config(&tsv, DataFormat::Tsv, true);
        cfg.text_column = Column::Name("text".into());
        cfg.label_column = Column::Name("label".into());
        assert_eq!(count_examples(&cfg).unwrap(), 4);
        let s = load_splits(&cfg).unwrap();
        assert_eq!(all(&s)[3].text, "say \"hi");
        assert_eq!(
            split_sizes(&cfg).unwrap(),
            SplitSizes {
                train: 2,
                validation: 1,
                test: 1
            }
        );
    }

    #[test]
    fn jsonl_takes_string_number_and_boolean_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "d.jsonl",
            "{\"t\": \" x \", \"y\": 1, \"b\": true}\n\n{\"t\": \"y\", \"y\": 0, \"b\": false}\n\
             {\"t\": \"z\", \"y\": 1, \"b\": true}\n{\"t\": \"w\", \"y\": 0, \"b\": false}\n",
        );
        let mut cfg = config(&path, DataFormat::Jsonl, false);
        cfg.text_column = Column::Name("t".into());
        cfg.label_column = Column::Name("y".into());
        assert_eq!(count_examples(&cfg).unwrap(), 4);
        let s = load_splits(&cfg).unwrap();
        assert_eq!(s.label_names, ["0", "1"]);
        assert_eq!(all(&s)[1].text, "x");
        cfg.label_column = Column::Name("b".into());
        assert_eq!(load_splits(&cfg).unwrap().label_names, ["false", "true"]);
        cfg.label_column = Column::Name("missing".into());
        let e = load_splits(&cfg).unwrap_err().to_string();
        assert!(e.contains("record 1 (line 1): no field `missing`"), "{e}");
        assert!(
            e.contains("`t`, `y`, `b`") || e.contains("`b`, `t`, `y`"),
            "{e}"
        );
    }

    #[test]
    fn metric_must_suit_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "m.csv", "0,a\n1,b\n2,c\n0,d\n");
        let mut cfg = config(&path, DataFormat::Csv, false);
        cfg.metric = Some(MetricName::F1);
        let e = load_splits(&cfg).unwrap_err().to_string();
        assert!(e.contains("f1 needs a binary task"), "{e}");
        cfg.metric = Some(MetricName::Pearson);
        let e = load_splits(&cfg).unwrap_err().to_string();
        assert!(e.contains("needs data.task = regression"), "{e}");
        cfg.metric = None;
        cfg.task = TaskKind::Regression;
        let s = load_splits(&cfg).unwrap();
        assert_eq!((s.metric, s.num_labels()), (MetricName::Pearson, 1));
        assert!(s.label_names.is_empty());
        cfg.labels = Some(vec!["0".into(), "1".into()]);
        let e = load_splits(&cfg).unwrap_err().to_string();
        assert!(e.contains("data.labels is set"), "{e}");
    }

    #[test]
    fn tiny_or_degenerate_data_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let one_class = write(&dir, "o.csv", "1,a\n1,b\n");
        let e = load_splits(&config(&one_class, DataFormat::Csv, false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 2 classes"), "{e}");
        let two = write(&dir, "t.csv", "1,a\n0,b\n");
        let mut cfg = config(&two, DataFormat::Csv, false);
        cfg.train_fraction = 0.9;
        cfg.validation_fraction = 0.05;
        let e = load_splits(&cfg).unwrap_err().to_string();
        assert!(e.contains("leave an empty test set"), "{e}");
        let mut cfg = config(&two, DataFormat::Csv, false);
        cfg.labels = Some(vec!["0".into(), "0".into()]);
        let e = load_splits(&cfg).unwrap_err().to_string();
        assert!(e.contains("lists \"0\" twice"), "{e}");
        let short = write(&dir, "s.csv", "1,a\n0\n");
        let e = load_splits(&config(&short, DataFormat::Csv, false))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("record 2 (line 2): has 1 field(s), too few for data.text_column = 1"),
            "{e}"
        );
    }

    #[test]
    fn split_of_pang_lee_sentences() {
        assert_eq!(
            SplitSizes::of(4000, 0.7, 0.1),
            SplitSizes {
                train: 2800,
                validation: 400,
                test: 800
            }
        );
        assert_eq!(
            SplitSizes::of(4000, 0.8, 0.0),
            SplitSizes {
                train: 3200,
                validation: 0,
                test: 800
            }
        );
    }

    #[test]
    fn split_never_exceeds_total() {
        for n in 0..200u64 {
            for (a, b) in [(0.99, 0.0), (0.5, 0.49), (0.01, 0.98)] {
                let s = SplitSizes::of(n, a, b);
                assert_eq!(s.train + s.validation + s.test, n);
            }
        }
    }
}
