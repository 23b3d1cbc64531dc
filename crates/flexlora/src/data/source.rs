//! Where a data set's examples come from: `[data]` with any preset applied, the files that
//! make its training pool and (when it has one) its separate test set, and reading or counting
//! them (rules in the module documentation of [`crate::data`]).

use super::glue::GlueSpec;
use super::read::{self, Layout, RawExample};
use super::{DataError, images, list};
use crate::config::{Column, DataConfig, DataFormat, MetricName, TaskKind};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where the examples come from and how to read them: `[data]` with any preset applied.
pub(super) struct Source {
    /// The files of the training pool and of the test set, if separate.
    pub files: Files,
    pub layout: Layout,
    pub labels: Option<Vec<String>>,
    pub task: TaskKind,
    pub metric: MetricName,
}

pub(super) enum Files {
    Single(PathBuf),
    Glue {
        train: PathBuf,
        test: PathBuf,
    },
    /// An IDX folder (its files are looked up when read).
    Idx(PathBuf),
    /// A pixel CSV file.
    PixelCsv(PathBuf),
}

/// A training pool and, when the data has one, a separate test set, each with its file.
pub(super) type Pools = (PathBuf, Vec<RawExample>, Option<(PathBuf, Vec<RawExample>)>);

impl Source {
    pub(super) fn of(cfg: &DataConfig) -> Self {
        match cfg.preset {
            None => Self {
                files: match cfg.format {
                    DataFormat::Idx => Files::Idx(cfg.path.clone()),
                    DataFormat::PixelCsv => Files::PixelCsv(cfg.path.clone()),
                    _ => Files::Single(cfg.path.clone()),
                },
                layout: Layout {
                    format: cfg.format,
                    has_header: cfg.has_header,
                    text: cfg.text_column.clone(),
                    text_pair: cfg.text_pair_column.clone(),
                    label: cfg.label_column.clone(),
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
                    files: Files::Glue {
                        train: cfg.path.join(spec.train_file),
                        test: cfg.path.join(spec.test_file),
                    },
                    layout: Layout {
                        format: spec.format(),
                        has_header: spec.has_header,
                        text: spec.text_column.clone(),
                        text_pair: spec.text_pair_column.clone(),
                        label: spec.label_column.clone(),
                    },
                    labels: cfg.labels.clone().or_else(|| {
                        spec.labels
                            .map(|l| l.iter().map(|s| s.to_string()).collect())
                    }),
                    task: spec.task,
                    metric: cfg.metric.unwrap_or(spec.metric),
                }
            }
        }
    }

    /// The records of `path` ([`DataError::Empty`] when none).
    pub(super) fn count(&self, path: &Path) -> Result<u64, DataError> {
        let n = read::count_records(path, self.layout.format, self.layout.has_header)?;
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

    /// The record counts of the training pool and of the separate test set, if any.
    pub(super) fn counts(
        &self,
        cfg: &DataConfig,
    ) -> Result<(PathBuf, u64, Option<u64>), DataError> {
        Ok(match &self.files {
            Files::Single(path) => (path.clone(), self.count(path)?, None),
            Files::Glue { train, test } => {
                (train.clone(), self.count(train)?, Some(self.count(test)?))
            }
            Files::Idx(folder) => {
                let (train, test) = images::idx_files(folder)?;
                let n_test = test.as_ref().map(images::count_idx).transpose()?;
                (train.images.clone(), images::count_idx(&train)?, n_test)
            }
            Files::PixelCsv(_) => {
                let (path, pool, _) = self.read(cfg)?;
                (path, pool.len() as u64, None)
            }
        })
    }

    /// The raw examples of the training pool and of the separate test set, if any.
    pub(super) fn read(&self, cfg: &DataConfig) -> Result<Pools, DataError> {
        Ok(match &self.files {
            Files::Single(path) => (path.clone(), read::read_examples(path, &self.layout)?, None),
            Files::Glue { train, test } => (
                train.clone(),
                read::read_examples(train, &self.layout)?,
                Some((test.clone(), read::read_examples(test, &self.layout)?)),
            ),
            Files::Idx(folder) => {
                let (train, test) = images::idx_files(folder)?;
                let test = match test {
                    Some(t) => Some((t.images.clone(), images::read_idx(&t)?)),
                    None => None,
                };
                (train.images.clone(), images::read_idx(&train)?, test)
            }
            Files::PixelCsv(path) => {
                let (label, shape) = self.pixel_layout(cfg, path)?;
                let pool = images::read_pixel_csv(path, label, shape, cfg.pixel_max)?;
                (path.clone(), pool, None)
            }
        })
    }
}
