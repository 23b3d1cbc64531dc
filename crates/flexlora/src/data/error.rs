//! [`DataError`]: every way a data set can be refused, each naming the file and, when one
//! record is at fault, the record and its line.

use std::path::PathBuf;
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
    /// A text file holds bytes that are not valid in its encoding (`data.encoding`).
    #[error(
        "{path}: line {line}: not valid {encoding} text (data.encoding); give the file's encoding"
    )]
    Encoding {
        /// The data file.
        path: PathBuf,
        /// 1-based line of the first invalid byte.
        line: u64,
        /// The encoding's name.
        encoding: &'static str,
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
pub(super) fn list(items: &[String]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}
