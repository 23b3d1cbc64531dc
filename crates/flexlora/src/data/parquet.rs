//! Apache Parquet data sets (`data.format = "parquet"`): one `.parquet` file, or a folder of
//! shards (its `*.parquet` files in file-name order, every one with the first's columns and
//! types). Only the columns the config names are decoded.
//!
//! Columns are found by name or by position in the schema. Text columns must hold strings
//! (`Utf8`, `LargeUtf8`, `Utf8View`, or a dictionary of them, as pandas writes categoricals);
//! a label column may also hold integers, floats or booleans, which become label text as the
//! Arrow reader writes them (`1`, `2.5`, `true`). A null, or a float that is not finite, in a
//! used column is an error naming the shard, the row (1-based within the shard, reported as
//! the record) and the column.

use super::error::DataError;
use super::example::{Layout, RawExample};
use super::file::check_size;
use crate::config::Column;
use arrow_array::{Array, cast::AsArray};
use arrow_schema::{DataType, Schema};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// A shard opened as far as its footer (schema, row groups, row counts).
type Shard = ParquetRecordBatchReaderBuilder<std::fs::File>;

fn unreadable(file: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Config {
        path: file.to_path_buf(),
        message: format!("not a readable Parquet file: {e}"),
    }
}

/// The files of `path`: the file itself, or a folder's `*.parquet` files in file-name order.
fn shard_files(path: &Path) -> Result<Vec<PathBuf>, DataError> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path).map_err(|source| DataError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| DataError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file = entry.path();
        let is_parquet = file
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
        if is_parquet && file.is_file() {
            files.push(file);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    if files.is_empty() {
        return Err(DataError::Config {
            path: path.to_path_buf(),
            message: "a folder with data.format = \"parquet\" must hold .parquet files (its \
                      shards, read in file-name order); it has none"
                .into(),
        });
    }
    Ok(files)
}

/// Opens one shard's footer; a panic of the reader is a corrupt file too.
fn open(file: &Path) -> Result<Shard, DataError> {
    check_size(file)?;
    let handle = std::fs::File::open(file).map_err(|source| DataError::Read {
        path: file.to_path_buf(),
        source,
    })?;
    match catch_unwind(AssertUnwindSafe(|| Shard::try_new(handle))) {
        Ok(Ok(shard)) => Ok(shard),
        Ok(Err(e)) => Err(unreadable(file, e)),
        Err(_) => Err(unreadable(
            file,
            "the Parquet reader failed on its contents (it panicked)",
        )),
    }
}

/// `` `text`: Utf8, `label`: Int64 ``.
fn describe(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("`{}`: {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether two shards have the same columns, in the same order, of the same types
/// (nullability and metadata aside).
fn same_columns(a: &Schema, b: &Schema) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields()
            .iter()
            .zip(b.fields())
            .all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type())
}

/// Opens the shards of `path` one at a time, checks each against the first's schema, and
/// hands it to `visit`.
fn each_shard(
    path: &Path,
    mut visit: impl FnMut(&Path, Shard) -> Result<(), DataError>,
) -> Result<(), DataError> {
    let mut first: Option<(PathBuf, std::sync::Arc<Schema>)> = None;
    for file in shard_files(path)? {
        let shard = open(&file)?;
        let schema = shard.schema().clone();
        match &first {
            None => first = Some((file.clone(), schema)),
            Some((first_file, first_schema)) if !same_columns(first_schema, &schema) => {
                return Err(DataError::Config {
                    path: file,
                    message: format!(
                        "its columns ({}) differ from those of the first shard {} ({}); every \
                         shard of a Parquet folder must have the same columns and types",
                        describe(&schema),
                        first_file.display(),
                        describe(first_schema)
                    ),
                });
            }
            Some(_) => {}
        }
        visit(&file, shard)?;
    }
    Ok(())
}

/// The rows of the Parquet file or folder at `path`, from the footers alone.
pub(super) fn count_rows(path: &Path) -> Result<u64, DataError> {
    let mut rows = 0u64;
    each_shard(path, |file, shard| {
        let n = shard.metadata().file_metadata().num_rows();
        let n = u64::try_from(n).map_err(|_| unreadable(file, format!("it claims {n} rows")))?;
        rows = rows.saturating_add(n);
        Ok(())
    })?;
    Ok(rows)
}

/// A column the config names, found in a shard's schema.
struct Wanted {
    /// The config key, e.g. `data.text_column`.
    key: &'static str,
    name: String,
    /// Position in the schema.
    index: usize,
}

/// Whether values of `data_type` can serve as texts (strings) or labels (also numbers and
/// booleans).
fn usable(data_type: &DataType, label: bool) -> bool {
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, values) => usable(values, label),
        DataType::Boolean | DataType::Float32 | DataType::Float64 => label,
        t => label && t.is_integer(),
    }
}

/// Finds the layout's columns in `schema` and checks their types.
fn find_columns(file: &Path, layout: &Layout, schema: &Schema) -> Result<Vec<Wanted>, DataError> {
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let mut columns = vec![("data.text_column", &layout.text)];
    if let Some(pair) = &layout.text_pair {
        columns.push(("data.text_pair_column", pair));
    }
    columns.push(("data.label_column", &layout.label));
    let mut wanted = Vec::new();
    for (key, column) in columns {
        let index = match column {
            Column::Index(i) if *i < names.len() => *i,
            Column::Index(i) => {
                return Err(DataError::Config {
                    path: file.to_path_buf(),
                    message: format!(
                        "{key} = {i}, but the file has {} column(s): {}",
                        names.len(),
                        describe(schema)
                    ),
                });
            }
            Column::Name(name) => names
                .iter()
                .position(|n| n.trim() == name.trim())
                .ok_or_else(|| DataError::MissingColumn {
                    path: file.to_path_buf(),
                    key,
                    name: name.clone(),
                    header: names.clone(),
                })?,
        };
        let field = schema.field(index);
        let label = key == "data.label_column";
        if !usable(field.data_type(), label) {
            return Err(DataError::Config {
                path: file.to_path_buf(),
                message: format!(
                    "column `{}` ({key}) holds {}, expected {}",
                    field.name(),
                    field.data_type(),
                    if label {
                        "strings, integers, floats or booleans"
                    } else {
                        "strings"
                    }
                ),
            });
        }
        wanted.push(Wanted {
            key,
            name: field.name().clone(),
            index,
        });
    }
    Ok(wanted)
}

/// A column's values as text: strings trimmed, numbers and booleans as JSON writes them; an
/// error for nulls and non-finite floats.
fn column_text(column: &dyn Array) -> Vec<Result<String, &'static str>> {
    if let DataType::Dictionary(..) = column.data_type() {
        let dictionary = column.as_any_dictionary();
        let values = column_text(dictionary.values().as_ref());
        let keys = dictionary.normalized_keys();
        return (0..column.len())
            .map(|i| match column.is_null(i) {
                true => Err("is null"),
                false => values.get(keys[i]).cloned().unwrap_or(Err("is null")),
            })
            .collect();
    }
    (0..column.len())
        .map(|i| {
            if column.is_null(i) {
                return Err("is null");
            }
            match column.data_type() {
                DataType::Utf8View => Ok(column.as_string_view().value(i).trim().to_string()),
                _ => match super::arrow::cell(column, i) {
                    Value::String(s) => Ok(s.trim().to_string()),
                    Value::Number(x) => Ok(x.to_string()),
                    Value::Bool(b) => Ok(b.to_string()),
                    _ => Err("is not a finite number"),
                },
            }
        })
        .collect()
}

/// Reads one shard's examples into `out`; rows are numbered from 1 within the shard.
fn read_shard(
    file: &Path,
    shard: Shard,
    layout: &Layout,
    out: &mut Vec<RawExample>,
) -> Result<(), DataError> {
    let wanted = find_columns(file, layout, shard.schema())?;
    let read = catch_unwind(AssertUnwindSafe(|| -> Result<(), DataError> {
        let mask = ProjectionMask::roots(shard.parquet_schema(), wanted.iter().map(|w| w.index));
        let reader = shard
            .with_projection(mask)
            .build()
            .map_err(|e| unreadable(file, e))?;
        let mut row = 0u64;
        for batch in reader {
            let batch = batch.map_err(|e| unreadable(file, e))?;
            let mut values = Vec::with_capacity(wanted.len());
            for w in &wanted {
                let column = batch
                    .column_by_name(&w.name)
                    .ok_or_else(|| unreadable(file, format!("column `{}` was not read", w.name)))?;
                values.push(column_text(column.as_ref()));
            }
            for i in 0..batch.num_rows() {
                row += 1;
                let mut texts = Vec::with_capacity(wanted.len());
                for (w, column) in wanted.iter().zip(values.iter_mut()) {
                    let value = std::mem::replace(&mut column[i], Err("was read already"));
                    texts.push(value.map_err(|problem| DataError::Record {
                        path: file.to_path_buf(),
                        record: row,
                        line: 0,
                        message: format!("column `{}` ({}) {problem}", w.name, w.key),
                    })?);
                }
                let label = texts.pop().unwrap_or_default();
                let text_pair = layout.text_pair.as_ref().and_then(|_| texts.pop());
                out.push(RawExample {
                    record: row,
                    line: 0,
                    text: texts.pop().unwrap_or_default(),
                    text_pair,
                    label,
                    image: None,
                });
            }
        }
        Ok(())
    }));
    read.unwrap_or_else(|_| {
        Err(unreadable(
            file,
            "the Parquet reader failed on its contents (it panicked)",
        ))
    })
}

/// Every example of the Parquet file or folder at `path` (module docs).
pub(super) fn read_examples(path: &Path, layout: &Layout) -> Result<Vec<RawExample>, DataError> {
    let mut out = Vec::new();
    each_shard(path, |file, shard| {
        read_shard(file, shard, layout, &mut out)
    })?;
    Ok(out)
}
