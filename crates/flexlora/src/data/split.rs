//! Sharing a data set's examples out between train, validation and test: the sizes of the
//! parts from the record counts alone, then the parts themselves (rules in the module
//! documentation of [`crate::data`]).

use super::error::DataError;
use super::example::Example;
use super::order::{derive_seed, shuffled_indices};
use crate::config::DataConfig;
use std::path::Path;

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

/// Record counts of a data set's parts: the training pool, and the separate validation and
/// test sets when the data has them.
#[derive(Debug, Clone, Copy)]
pub(super) struct PartCounts {
    pub pool: u64,
    pub validation: Option<u64>,
    pub test: Option<u64>,
}

/// Stream of [`derive_seed`] that samples a separate test set down to `data.test_examples`.
const TEST_SAMPLE_STREAM: u64 = 0x7e57;
/// Stream of [`derive_seed`] that samples a separate validation file down to
/// `data.validation_examples`.
const VALIDATION_SAMPLE_STREAM: u64 = 0x7a11;

/// The sizes of the parts of a training pool (read from `path`) and of the separate parts in
/// `counts` (module docs), checked to leave a training and a test set.
pub(super) fn plan_sizes(
    cfg: &DataConfig,
    path: &Path,
    counts: PartCounts,
) -> Result<SplitSizes, DataError> {
    let err = |message: String| DataError::Config {
        path: cfg.location().to_path_buf(),
        message,
    };
    let n_pool = counts.pool;
    let mut sizes = match counts.validation {
        Some(n_validation) => {
            let train = match cfg.train_examples {
                Some(k) if k > n_pool => {
                    return Err(err(format!(
                        "data.train_examples = {k} is more than the {n_pool} examples of {}",
                        path.display()
                    )));
                }
                Some(k) => k,
                // Train, validation and test files: the whole training file trains.
                None if counts.test.is_some() => n_pool,
                None => ((n_pool as f64 * cfg.train_fraction).round() as u64).min(n_pool),
            };
            SplitSizes {
                train,
                validation: cfg
                    .validation_examples
                    .map_or(n_validation, |k| k.min(n_validation)),
                test: counts.test.unwrap_or(n_pool - train),
            }
        }
        None => drawn_sizes(cfg, path, n_pool, counts.test).map_err(err)?,
    };
    if let Some(k) = cfg.test_examples {
        sizes.test = sizes.test.min(k);
    }
    if sizes.train == 0 || sizes.test == 0 {
        let part = if sizes.train == 0 { "training" } else { "test" };
        return Err(err(match (counts.validation, counts.test) {
            (None, None) => format!(
                "{n_pool} examples with train_fraction = {} and validation_fraction = {} (or \
                 data.train_examples / validation_examples / test_examples) leave an empty {part} set",
                cfg.train_fraction, cfg.validation_fraction
            ),
            (None, Some(_)) => format!(
                "{n_pool} training examples with validation_fraction = {} (or \
                 data.train_examples / validation_examples / test_examples) leave an empty {part} set",
                cfg.validation_fraction
            ),
            (Some(_), _) => format!(
                "the {n_pool} examples of {} with train_fraction = {} (or data.train_examples / \
                 test_examples) leave an empty {part} set",
                path.display(),
                cfg.train_fraction
            ),
        }));
    }
    Ok(sizes)
}

/// The sizes when the validation set is drawn from the pool: the one-file rule, or the GLUE
/// rule when there is a separate test set of `n_test`; counts replace fractions.
fn drawn_sizes(
    cfg: &DataConfig,
    path: &Path,
    n_pool: u64,
    n_test: Option<u64>,
) -> Result<SplitSizes, String> {
    if cfg.train_examples.is_none() && cfg.validation_examples.is_none() {
        return Ok(match n_test {
            None => SplitSizes::of(n_pool, cfg.train_fraction, cfg.validation_fraction),
            Some(t) => SplitSizes::glue(n_pool, cfg.validation_fraction, t),
        });
    }
    let part = |f: f64| (n_pool as f64 * f).round() as u64;
    let train = cfg
        .train_examples
        .unwrap_or_else(|| part(cfg.train_fraction));
    let validation = cfg
        .validation_examples
        .unwrap_or_else(|| part(cfg.validation_fraction));
    if train.saturating_add(validation) > n_pool {
        return Err(format!(
            "{train} training + {validation} validation examples (data.train_examples, \
             data.validation_examples) are more than the {n_pool} of {}",
            path.display()
        ));
    }
    Ok(SplitSizes {
        train,
        validation,
        test: n_test.unwrap_or(n_pool - train - validation),
    })
}

/// The three parts: the pool taken in the order `shuffled_indices(n_pool, split_seed)` (train
/// first, then a drawn validation set, then a drawn test set), and each separate file whole in
/// file order, or a seeded sample of it kept in file order when `sizes` asks for fewer.
pub(super) fn share_out(
    cfg: &DataConfig,
    sizes: SplitSizes,
    pool: Vec<Example>,
    validation: Option<Vec<Example>>,
    test: Option<Vec<Example>>,
) -> (Vec<Example>, Vec<Example>, Vec<Example>) {
    let order = shuffled_indices(pool.len(), cfg.split_seed);
    let mut slots: Vec<Option<Example>> = pool.into_iter().map(Some).collect();
    let mut take = |indices: &[usize]| -> Vec<Example> {
        indices.iter().filter_map(|&i| slots[i].take()).collect()
    };
    let t = sizes.train as usize;
    let train = take(&order[..t]);
    let (validation, v) = match validation {
        Some(file) => (
            sample(
                file,
                sizes.validation as usize,
                cfg.split_seed,
                VALIDATION_SAMPLE_STREAM,
            ),
            0,
        ),
        None => {
            let v = sizes.validation as usize;
            (take(&order[t..t + v]), v)
        }
    };
    let k = sizes.test as usize;
    let test = match test {
        Some(file) => sample(file, k, cfg.split_seed, TEST_SAMPLE_STREAM),
        None => take(&order[t + v..t + v + k]),
    };
    (train, validation, test)
}

/// `examples` whole, or the indices `shuffled_indices(n, derive_seed(split_seed, stream))[..k]`
/// of them in file order.
fn sample(examples: Vec<Example>, k: usize, split_seed: u64, stream: u64) -> Vec<Example> {
    if k >= examples.len() {
        return examples;
    }
    let mut keep = vec![false; examples.len()];
    for &i in &shuffled_indices(examples.len(), derive_seed(split_seed, stream))[..k] {
        keep[i] = true;
    }
    examples
        .into_iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|(e, _)| e)
        .collect()
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
