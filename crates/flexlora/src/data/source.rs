//! Where a data set's examples come from: `[data]` with any preset applied, the files that
//! make its training pool and (when it has them) its separate validation and test sets, and
//! reading or counting them (rules in the module documentation of [`crate::data`]).

use super::error::{DataError, list};
use super::example::{Layout, RawExample};
use super::glue::GlueSpec;
use super::{images, read};
use crate::config::{Column, DataConfig, DataFormat, MetricName, TaskKind};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where the examples come from and how to read them: `[data]` with any preset applied.
pub(super) struct Source {
    /// The files of the training pool and of the separate parts, if any.
    pub files: Files,
    pub layout: Layout,
    pub labels: Option<Vec<String>>,
    pub task: TaskKind,
    pub metric: MetricName,
}

pub(super) enum Files {
    /// Text, Arrow or Parquet data: the training pool and, when separate, the validation and
    /// test files (a GLUE folder is `train.tsv` and a dev file as the test set).
    Tables {
        pool: PathBuf,
        validation: Option<PathBuf>,
        test: Option<PathBuf>,
    },
    /// An IDX folder (its files are looked up when read).
    Idx(PathBuf),
    /// A pixel CSV file.
    PixelCsv(PathBuf),
}

/// The examples (or record counts) of one part of a data set, with the file they came from.
pub(super) type Part<T> = (PathBuf, T);

/// A data set's training pool and its separate validation and test sets, when it has them.
pub(super) struct Parts<T> {
    pub pool: Part<T>,
    pub validation: Option<Part<T>>,
    pub test: Option<Part<T>>,
}

/// A setting of `[data]` that names its files inconsistently: the key at fault, its value and
/// what is allowed.
pub(crate) struct FilesProblem {
    pub key: &'static str,
    pub value: String,
    pub message: String,
}

/// Checks that `[data]` names its files in one of the accepted ways: `path` (one file or
/// folder) or `train` with optional `validation` and `test`; and that the encoding is known
/// and applies to the format.
/// [`crate::validate`] reports the problem against the config; the data readers against the
/// data (a `DataConfig` built in code is never validated).
pub(crate) fn check_files(cfg: &DataConfig) -> Result<(), FilesProblem> {
    let problem = |key, value: &Path, message: &str| FilesProblem {
        key,
        value: format!("\"{}\"", value.display()),
        message: message.to_string(),
    };
    let has_path = !cfg.path.as_os_str().is_empty();
    match (&cfg.train, has_path) {
        (None, false) => {
            return Err(FilesProblem {
                key: "data.path",
                value: "(missing)".into(),
                message: "give data.path (one data file, split by data.train_fraction and \
                          data.validation_fraction) or data.train (the training file, with \
                          optional data.validation and data.test files)"
                    .into(),
            });
        }
        (Some(train), true) => {
            return Err(problem(
                "data.train",
                train,
                "data.path is given too: give data.path (one file, split by the fractions) \
                 or data.train (separate split files), not both",
            ));
        }
        (Some(train), false) => {
            if cfg.preset.is_some() {
                return Err(problem(
                    "data.train",
                    train,
                    "a GLUE preset reads the task folder data.path (train.tsv and its dev \
                     file); leave data.train, data.validation and data.test out",
                ));
            }
            if !cfg.format.is_table() {
                return Err(problem(
                    "data.train",
                    train,
                    "separate split files need data.format = \"csv\", \"tsv\", \"jsonl\", \
                     \"arrow\" or \"parquet\"; image and commonsense data sets are one \
                     data.path",
                ));
            }
        }
        (None, true) => {
            for (key, file) in [
                ("data.validation", &cfg.validation),
                ("data.test", &cfg.test),
            ] {
                if let Some(file) = file {
                    return Err(problem(
                        key,
                        file,
                        "needs data.train (the training file) instead of data.path; with \
                         data.path every part is drawn from that one file",
                    ));
                }
            }
        }
    }
    check_encoding(cfg)
}

/// `data.encoding` names a known text encoding, and one other than UTF-8 only for text files.
fn check_encoding(cfg: &DataConfig) -> Result<(), FilesProblem> {
    let encoding = || FilesProblem {
        key: "data.encoding",
        value: format!("\"{}\"", cfg.encoding),
        message: String::new(),
    };
    match cfg.text_encoding() {
        None => Err(FilesProblem {
            message: "not a known text encoding; give a WHATWG label such as \"utf-8\", \
                      \"windows-1252\" (or \"cp1252\"), \"latin-1\" (or \"iso-8859-1\"), \
                      \"iso-8859-15\", \"windows-1250\", \"shift_jis\", \"gbk\", \"euc-kr\" \
                      or \"utf-16le\""
                .into(),
            ..encoding()
        }),
        Some(e) if e != encoding_rs::UTF_8 && !cfg.format.is_text() && cfg.preset.is_none() => {
            Err(FilesProblem {
                message: "applies to csv, tsv and jsonl files only; leave it out (or \
                          \"utf-8\") for this data.format"
                    .into(),
                ..encoding()
            })
        }
        Some(_) => Ok(()),
    }
}

impl Source {
    pub(super) fn of(cfg: &DataConfig) -> Result<Self, DataError> {
        check_files(cfg).map_err(|p| DataError::Config {
            // A `[data]` that names no file at all is reported as the section.
            path: match cfg.location() {
                l if l.as_os_str().is_empty() => PathBuf::from("[data]"),
                l => l.to_path_buf(),
            },
            message: format!("{} = {}: {}", p.key, p.value, p.message),
        })?;
        let encoding = cfg.text_encoding().unwrap_or(encoding_rs::UTF_8);
        Ok(match cfg.preset {
            None => Self {
                files: match (cfg.format, &cfg.train) {
                    (DataFormat::Idx, _) => Files::Idx(cfg.path.clone()),
                    (DataFormat::PixelCsv, _) => Files::PixelCsv(cfg.path.clone()),
                    (_, Some(train)) => Files::Tables {
                        pool: train.clone(),
                        validation: cfg.validation.clone(),
                        test: cfg.test.clone(),
                    },
                    (_, None) => Files::Tables {
                        pool: cfg.path.clone(),
                        validation: None,
                        test: None,
                    },
                },
                layout: Layout {
                    format: cfg.format,
                    has_header: cfg.header(),
                    text: cfg.text_column.clone(),
                    text_pair: cfg.text_pair_column.clone(),
                    label: cfg.label_column.clone(),
                    encoding,
                },
                labels: cfg.labels.clone(),
                task: cfg.task,
                metric: cfg.metric.unwrap_or(match cfg.task {
                    TaskKind::Classification => MetricName::Accuracy,
                    TaskKind::Regression => MetricName::Pearson,
                }),
            },
            Some(preset) => {
                let spec = GlueSpec::of(preset);
                Self {
                    files: Files::Tables {
                        pool: cfg.path.join(spec.train_file),
                        validation: None,
                        test: Some(cfg.path.join(spec.test_file)),
                    },
                    layout: Layout {
                        format: spec.format(),
                        has_header: spec.has_header,
                        text: spec.text_column.clone(),
                        text_pair: spec.text_pair_column.clone(),
                        label: spec.label_column.clone(),
                        encoding,
                    },
                    labels: cfg.labels.clone().or_else(|| {
                        spec.labels
                            .map(|l| l.iter().map(|s| s.to_string()).collect())
                    }),
                    task: spec.task,
                    metric: cfg.metric.unwrap_or(spec.metric),
                }
            }
        })
    }

    /// The records of `path` ([`DataError::Empty`] when none).
    pub(super) fn count(&self, path: &Path) -> Result<u64, DataError> {
        let n = read::count_records(path, &self.layout)?;
        if n == 0 {
            return Err(DataError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(n)
    }

    /// Checks the settings that need no data: metric against task, the label list.
    pub(super) fn check(&self, path: &Path) -> Result<(), DataError> {
        let err = |message: String| {
            Err(DataError::Config {
                path: path.to_path_buf(),
                message,
            })
        };
        let metric = self.metric.name();
        match (self.task, self.metric) {
            (TaskKind::Classification, MetricName::Pearson | MetricName::Spearman) => {
                return err(format!(
                    "data.metric = {metric} needs data.task = regression; a classification task takes accuracy, f1 or matthews"
                ));
            }
            (
                TaskKind::Regression,
                MetricName::Accuracy | MetricName::F1 | MetricName::Matthews,
            ) => {
                return err(format!(
                    "data.metric = {metric} needs data.task = classification; a regression task takes pearson or spearman"
                ));
            }
            _ => {}
        }
        if let Some(labels) = &self.labels {
            if self.task == TaskKind::Regression {
                return err(
                    "data.labels is set, but data.task = regression has no classes; remove it"
                        .into(),
                );
            }
            let mut seen = HashMap::new();
            for l in labels {
                if seen.insert(l.trim(), ()).is_some() {
                    return err(format!("data.labels lists \"{l}\" twice"));
                }
            }
            if labels.len() < 2 {
                return err(format!(
                    "data.labels = [{}]: classification needs at least 2 classes",
                    list(labels)
                ));
            }
        }
        Ok(())
    }
}

impl Source {
    /// The label column and stored shape of a pixel CSV file.
    pub(super) fn pixel_layout(
        &self,
        cfg: &DataConfig,
        path: &Path,
    ) -> Result<(usize, [u32; 2]), DataError> {
        let err = |message: &str| DataError::Config {
            path: path.to_path_buf(),
            message: message.into(),
        };
        let Column::Index(label) = self.layout.label else {
            return Err(err(
                "data.format = \"pixel_csv\" files have no header: give data.label_column as a 0-based index",
            ));
        };
        match cfg.image_shape {
            Some([h, w]) if h > 0 && w > 0 => Ok((label, [h, w])),
            Some(_) => Err(err("data.image_shape must be two sizes > 0")),
            None => Err(err(
                "data.format = \"pixel_csv\" needs data.image_shape = [height, width] of the stored images",
            )),
        }
    }

    /// The record counts of the training pool and of the separate parts, if any.
    pub(super) fn counts(&self, cfg: &DataConfig) -> Result<Parts<u64>, DataError> {
        let count = |path: &PathBuf| -> Result<Part<u64>, DataError> {
            Ok((path.clone(), self.count(path)?))
        };
        Ok(match &self.files {
            Files::Tables {
                pool,
                validation,
                test,
            } => Parts {
                pool: count(pool)?,
                validation: validation.as_ref().map(count).transpose()?,
                test: test.as_ref().map(count).transpose()?,
            },
            Files::Idx(folder) => {
                let (train, test) = images::idx_files(folder)?;
                let test = match test {
                    Some(t) => Some((t.images.clone(), images::count_idx(&t)?)),
                    None => None,
                };
                Parts {
                    pool: (train.images.clone(), images::count_idx(&train)?),
                    validation: None,
                    test,
                }
            }
            Files::PixelCsv(_) => {
                let parts = self.read(cfg)?;
                let (path, pool) = parts.pool;
                Parts {
                    pool: (path, pool.len() as u64),
                    validation: None,
                    test: None,
                }
            }
        })
    }

    /// The raw examples of the training pool and of the separate parts, if any.
    pub(super) fn read(&self, cfg: &DataConfig) -> Result<Parts<Vec<RawExample>>, DataError> {
        let read = |path: &PathBuf| -> Result<Part<Vec<RawExample>>, DataError> {
            Ok((path.clone(), read::read_examples(path, &self.layout)?))
        };
        Ok(match &self.files {
            Files::Tables {
                pool,
                validation,
                test,
            } => Parts {
                pool: read(pool)?,
                validation: validation.as_ref().map(read).transpose()?,
                test: test.as_ref().map(read).transpose()?,
            },
            Files::Idx(folder) => {
                let (train, test) = images::idx_files(folder)?;
                let test = match test {
                    Some(t) => Some((t.images.clone(), images::read_idx(&t)?)),
                    None => None,
                };
                Parts {
                    pool: (train.images.clone(), images::read_idx(&train)?),
                    validation: None,
                    test,
                }
            }
            Files::PixelCsv(path) => {
                let (label, shape) = self.pixel_layout(cfg, path)?;
                let pool = images::read_pixel_csv(path, label, shape, cfg.pixel_max)?;
                Parts {
                    pool: (path.clone(), pool),
                    validation: None,
                    test: None,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::DataConfig;
    use crate::data::{count_examples, load_splits};

    /// A `[data]` built in code (never validated) that names its files inconsistently is
    /// refused by the readers too, naming the key.
    #[test]
    fn unvalidated_file_settings_are_data_errors() {
        let mut cfg: DataConfig = toml::from_str("path = 'd.csv'").unwrap();
        cfg.test = Some("t.csv".into());
        let e = load_splits(&cfg).unwrap_err().to_string();
        assert!(
            e.starts_with("d.csv: data.test = \"t.csv\": needs data.train"),
            "{e}"
        );
        cfg.path = Default::default();
        cfg.test = None;
        let e = count_examples(&cfg).unwrap_err().to_string();
        assert!(e.starts_with("[data]: data.path = (missing)"), "{e}");
        cfg.train = Some("train.csv".into());
        cfg.encoding = "no-such-encoding".into();
        let e = load_splits(&cfg).unwrap_err().to_string();
        assert!(
            e.starts_with("train.csv: data.encoding = \"no-such-encoding\": not a known"),
            "{e}"
        );
    }
}
