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
//! - **Encoding** (CSV, TSV, JSONL): `data.encoding` (default `utf-8`) is a WHATWG label
//!   (`windows-1252`, `cp1252`, `latin-1`, `shift_jis`, `utf-16le`, ...; `latin-1` and
//!   `iso-8859-1` decode as windows-1252, as browsers do). UTF-8 files are parsed as they are
//!   and a field or line that is not valid UTF-8 is an error naming its record and line. Any
//!   other encoding is decoded to UTF-8 first (a byte-order mark of that encoding is dropped);
//!   bytes that are not valid in it are an error naming the line.
//! - **Arrow** (`data.format = "arrow"`): a Hugging Face `save_to_disk` folder or one Arrow IPC
//!   stream file; rows are read as JSON objects are (fields by name).
//! - **Parquet** (`data.format = "parquet"`): one `.parquet` file, or a folder whose
//!   `*.parquet` files are its shards, read in file-name order (other files are ignored); every
//!   shard must have the first shard's columns and types, else the error names the shard.
//!   Text columns hold strings; a label column strings, integers, floats or booleans (written
//!   as label text the way the Arrow reader writes them: `1`, `2.5`, `true`); dictionary
//!   (categorical) columns of these are read through their values. A null (or a non-finite
//!   float) in a used column is an error naming the shard, the row (1-based within the shard,
//!   reported as its record) and the column. Corrupt files are an error naming the file.
//! - **Columns**: a 0-based index (`text_column = 1`) works with or without a header; a name
//!   (`text_column = "sentence"`) needs a header (CSV/TSV) and matches a header cell after
//!   trimming, or is a JSONL / Arrow field name or Parquet column name. An index is a position
//!   in a Parquet file's schema; on JSONL and Arrow it is an error.
//! - Texts and label fields are trimmed of surrounding whitespace (the Pang & Lee sentences end
//!   with a newline inside their quotes).
//!
//! # Labels
//! - **Classification**: with `data.labels`, class `i` is `labels[i]` and any other value in a
//!   file is an error naming the file, record, value and the allowed labels. Without it, the
//!   classes are the distinct values of the training pool (the one data file, `data.train`, or
//!   a GLUE folder's `train.tsv`), sorted numerically when every one parses as a number (so
//!   `-1` is class 0 and `1` class 1), else as strings (byte order); a value that only a
//!   separate validation or test file holds is then an unknown label there, named with that
//!   file and record. At least two classes are required. [`Example::label`] is the class index
//!   as `f32`.
//! - **Regression**: the label must parse as a finite `f32`; `data.labels` must not be set.
//!
//! # Metric
//! `data.metric`, else the preset's, else accuracy (classification) or Pearson (regression).
//! Accuracy and Matthews need classification, F1 a binary classification (positive class =
//! class 1), Pearson and Spearman regression; other pairings are an error.
//!
//! # Splits
//! - **One file** (`data.path`, no preset): its `n` examples are taken in the order
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
//! - **Separate split files** (`data.train`, optional `data.validation` and `data.test`,
//!   instead of `data.path`; CSV, TSV, JSONL, Arrow or Parquet, every file read with the same
//!   columns, header setting and encoding): the training file is the pool, its `n` examples
//!   taken in the order `shuffled_indices(n, split_seed)`; a part with its own file is that file
//!   in file order. A part without one is drawn from the pool:
//!   - train only: exactly the one-file rule above, as if `data.train` were `data.path`;
//!   - train and test: the GLUE rule below (the last `round(n · validation_fraction)` of the
//!     shuffled pool validate, the others train; `train_fraction` is ignored);
//!   - train and validation: the one-file rule with no validation part: the first
//!     `round(n · train_fraction)` train and the rest test (`validation_fraction` is ignored);
//!   - all three: the whole pool trains (both fractions are ignored).
//!
//!   A split file that is missing, lacks a column or holds an unknown label is an error naming
//!   that file. `data.path` and `data.train` together, or `data.validation` / `data.test`
//!   without `data.train`, are config errors.
//! - **Images** (`data.format = "idx" | "pixel_csv"`): an IDX folder's
//!   `train-*` pair is the pool and its `t10k-*` pair, when present, the test set (as a GLUE
//!   dev file); a pixel CSV file is one pool. Labels are the byte values / label fields as
//!   written, ordered as above.
//! - **Counts** (any format): `data.train_examples` and `data.validation_examples` replace
//!   `round(n · fraction)` (VTAB-1K: 800 and 200 from the shuffled pool; with a separate test
//!   set the rest of the pool is unused). `data.train_examples` takes the first that many of
//!   the shuffled pool in every case (with a validation file too). `data.test_examples` caps
//!   the test set: the first that many of the rest of the shuffled pool, or of a separate test
//!   set the indices `shuffled_indices(n_test, derive_seed(split_seed, 0x7e57))[..k]` in file
//!   order. With a validation file, `data.validation_examples` caps it the same way (stream
//!   `0x7a11` instead of `0x7e57`).
//!
//! Image files given to `predict` and `embed` (not data sets) are read by [`image_files`] and
//! [`read_grey_image`].
//!
//! An empty training or test set is an error; an empty validation set is allowed
//! (`validation_fraction = 0`).
//!
//! # Errors
//! Every [`DataError`] names the file, and the record (1-based, the header not counted) and
//! the line where it starts when one record is at fault. Bad data never panics.

mod arrow;
pub mod commonsense;
mod error;
mod example;
mod file;
mod glue;
mod image_files;
mod images;
mod labels;
mod order;
mod parquet;
mod read;
mod source;
mod split;

pub use error::DataError;
pub use example::{Example, GreyImage};
pub use glue::GlueSpec;
pub use image_files::{ImageFiles, image_extensions, image_files, read_grey_image};
pub use order::{BUCKET_CHUNK_BATCHES, SplitMix64, derive_seed, epoch_order, shuffled_indices};
pub use split::SplitSizes;

pub(crate) use source::check_files;

use crate::config::{DataConfig, MetricName, TaskKind};
use error::list;
use example::RawExample;
use source::Source;
use split::PartCounts;
use std::path::PathBuf;

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

/// Counts the examples that [`load_splits`] would load, in all: the data file's records, or
/// for a GLUE preset, an IDX folder or separate split files the training pool's plus the
/// separate parts'. Fields are not checked.
pub fn count_examples(data: &DataConfig) -> Result<u64, DataError> {
    let parts = Source::of(data)?.counts(data)?;
    let separate = |p: Option<(PathBuf, u64)>| p.map_or(0, |(_, n)| n);
    Ok(parts.pool.1 + separate(parts.validation) + separate(parts.test))
}

/// The sizes of the parts [`load_splits`] would make, from record counts alone (no labels are
/// checked): what `flexlora schedule` needs to count optimiser steps.
pub fn split_sizes(data: &DataConfig) -> Result<SplitSizes, DataError> {
    let parts = Source::of(data)?.counts(data)?;
    let counts = PartCounts {
        pool: parts.pool.1,
        validation: parts.validation.map(|(_, n)| n),
        test: parts.test.map(|(_, n)| n),
    };
    split::plan_sizes(data, &parts.pool.0, counts)
}

/// Reads the data set of `[data]`, maps its labels and splits it (rules in the module docs).
pub fn load_splits(cfg: &DataConfig) -> Result<Splits, DataError> {
    if cfg.format == crate::config::DataFormat::Commonsense {
        return Err(DataError::Config {
            path: cfg.location().to_path_buf(),
            message: "data.format = \"commonsense\" is a question suite for decoders \
                      (model_type \"llama\"), not labelled examples for a classifier"
                .into(),
        });
    }
    let source = Source::of(cfg)?;
    source.check(cfg.location())?;
    let parts = source.read(cfg)?;
    let (pool_path, raw_pool) = parts.pool;
    // The classes come from the training pool; a label seen only in a separate validation or
    // test file is an unknown label there.
    let label_names = labels::label_set(&pool_path, &source, &raw_pool)?;
    let convert = |(path, raw): (PathBuf, Vec<RawExample>)| {
        labels::convert(&path, &source, &label_names, raw)
    };
    let pool = labels::convert(&pool_path, &source, &label_names, raw_pool)?;
    let validation = parts.validation.map(convert).transpose()?;
    let test = parts.test.map(convert).transpose()?;
    if source.metric == MetricName::F1 && label_names.len() != 2 {
        return Err(DataError::Config {
            path: cfg.location().to_path_buf(),
            message: format!(
                "data.metric = f1 needs a binary task, but the labels are {}",
                list(&label_names)
            ),
        });
    }
    let counts = PartCounts {
        pool: pool.len() as u64,
        validation: validation.as_ref().map(|v| v.len() as u64),
        test: test.as_ref().map(|t| t.len() as u64),
    };
    let sizes = split::plan_sizes(cfg, &pool_path, counts)?;
    let (train, validation, test) = split::share_out(cfg, sizes, pool, validation, test);
    Ok(Splits {
        train,
        validation,
        test,
        label_names,
        task: source.task,
        metric: source.metric,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Column, DataFormat};
    use std::path::Path;

    fn config(path: &Path, format: DataFormat, has_header: bool) -> DataConfig {
        DataConfig {
            path: path.to_path_buf(),
            train: None,
            validation: None,
            test: None,
            encoding: "utf-8".into(),
            preset: None,
            format,
            has_header: Some(has_header),
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
            prompt_format: Default::default(),
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
}
