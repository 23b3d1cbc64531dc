//! Labelled data: counting and splitting examples. (Tokenisation and batching come with the
//! trainer; the split rule lives here so that every command agrees on it.)

use crate::config::{DataConfig, DataFormat};
use std::path::PathBuf;
use thiserror::Error;

/// A data file that could not be read.
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
    /// A record is malformed.
    #[error("{path}: record {record}: {message}")]
    Record {
        /// The data file.
        path: PathBuf,
        /// 1-based record number.
        record: u64,
        /// What is wrong.
        message: String,
    },
    /// The file holds no examples.
    #[error("{path}: no examples found")]
    Empty {
        /// The data file.
        path: PathBuf,
    },
}

/// Sizes of the train / validation / test parts of a data set with no split of its own.
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
}

/// Counts the examples (records) in the data file.
pub fn count_examples(data: &DataConfig) -> Result<u64, DataError> {
    let read_err = |source| DataError::Read {
        path: data.path.clone(),
        source,
    };
    let n = match data.format {
        DataFormat::Jsonl => {
            let text = std::fs::read_to_string(&data.path).map_err(read_err)?;
            text.lines().filter(|l| !l.trim().is_empty()).count() as u64
        }
        DataFormat::Csv | DataFormat::Tsv => {
            let file = std::fs::File::open(&data.path).map_err(read_err)?;
            let mut reader = csv::ReaderBuilder::new()
                .delimiter(if data.format == DataFormat::Tsv {
                    b'\t'
                } else {
                    b','
                })
                .has_headers(data.has_header)
                .flexible(true)
                .from_reader(std::io::BufReader::new(file));
            let mut n = 0u64;
            for record in reader.records() {
                record.map_err(|e| DataError::Record {
                    path: data.path.clone(),
                    record: n + 1,
                    message: e.to_string(),
                })?;
                n += 1;
            }
            n
        }
    };
    if n == 0 {
        return Err(DataError::Empty {
            path: data.path.clone(),
        });
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

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
