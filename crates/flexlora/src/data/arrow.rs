//! Hugging Face `datasets` folders written by `save_to_disk`: `state.json` lists the Arrow IPC
//! stream files (`data-00000-of-00001.arrow`, ...) that hold the rows; `dataset_info.json`
//! describes the features (a `ClassLabel` column stores class indices). A single `.arrow`
//! stream file is read the same way.
//!
//! Rows come out as JSON objects, so the JSONL code maps columns to examples and reports bad
//! rows with the same messages. Scalars (strings, booleans, integers, finite floats) are JSON
//! scalars; lists (`List`, `LargeList`, `FixedSizeList`, e.g. hellaswag's `endings`) are JSON
//! arrays of their items; structs are JSON objects of their fields (a Hugging Face `Sequence`
//! of a dict is stored as a struct of lists, so ARC's `choices` is
//! `{"text": [...], "label": [...]}`). Nulls, non-finite floats and columns of other Arrow
//! types (binary, dates, ...) come out as `null`; they are an error only where a caller needs
//! the value.

use super::error::DataError;
use arrow_array::{Array, RecordBatch, cast::AsArray, types};
use arrow_schema::DataType;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// The Arrow files of `path`: the files `state.json` lists (in order) when `path` is a
/// `save_to_disk` folder, else `path` itself.
fn arrow_files(path: &Path) -> Result<Vec<PathBuf>, DataError> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let state = path.join("state.json");
    let bad = |message: String| DataError::Config {
        path: state.clone(),
        message,
    };
    let text = std::fs::read_to_string(&state).map_err(|e| {
        bad(format!(
            "{e}; a data folder with data.format = \"arrow\" must be a Hugging Face save_to_disk folder (state.json, data-*.arrow)"
        ))
    })?;
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let files = v["_data_files"]
        .as_array()
        .ok_or_else(|| bad("no `_data_files` list".into()))?;
    let mut out = Vec::new();
    for f in files {
        let name = f["filename"]
            .as_str()
            .ok_or_else(|| bad("an entry of `_data_files` has no `filename` string".into()))?;
        // Names only: a listed file must be inside the folder.
        if name.contains('/') || name.contains('\\') || name == ".." {
            return Err(bad(format!(
                "`_data_files` names `{name}`, not a file of the folder"
            )));
        }
        out.push(path.join(name));
    }
    if out.is_empty() {
        return Err(bad("`_data_files` is empty".into()));
    }
    Ok(out)
}

/// The value of row `i` of `column` as JSON: scalars, lists as arrays, structs as objects
/// (module docs); anything else is `null`.
pub(super) fn cell(column: &dyn Array, i: usize) -> Value {
    if column.is_null(i) {
        return Value::Null;
    }
    match column.data_type() {
        DataType::Utf8 => Value::String(column.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Value::String(column.as_string::<i64>().value(i).to_string()),
        DataType::Boolean => Value::Bool(column.as_boolean().value(i)),
        DataType::Int8 => column.as_primitive::<types::Int8Type>().value(i).into(),
        DataType::Int16 => column.as_primitive::<types::Int16Type>().value(i).into(),
        DataType::Int32 => column.as_primitive::<types::Int32Type>().value(i).into(),
        DataType::Int64 => column.as_primitive::<types::Int64Type>().value(i).into(),
        DataType::UInt8 => column.as_primitive::<types::UInt8Type>().value(i).into(),
        DataType::UInt16 => column.as_primitive::<types::UInt16Type>().value(i).into(),
        DataType::UInt32 => column.as_primitive::<types::UInt32Type>().value(i).into(),
        DataType::UInt64 => column.as_primitive::<types::UInt64Type>().value(i).into(),
        DataType::Float32 => finite(f64::from(
            column.as_primitive::<types::Float32Type>().value(i),
        )),
        DataType::Float64 => finite(column.as_primitive::<types::Float64Type>().value(i)),
        DataType::List(_) => items(column.as_list::<i32>().value(i).as_ref()),
        DataType::LargeList(_) => items(column.as_list::<i64>().value(i).as_ref()),
        DataType::FixedSizeList(..) => items(column.as_fixed_size_list().value(i).as_ref()),
        DataType::Struct(_) => {
            let s = column.as_struct();
            Value::Object(
                s.fields()
                    .iter()
                    .zip(s.columns())
                    .map(|(f, c)| (f.name().clone(), cell(c.as_ref(), i)))
                    .collect(),
            )
        }
        _ => Value::Null,
    }
}

/// The items of one list value as a JSON array.
fn items(list: &dyn Array) -> Value {
    Value::Array((0..list.len()).map(|j| cell(list, j)).collect())
}

fn finite(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

fn rows_of(batch: &RecordBatch, out: &mut Vec<Map<String, Value>>) {
    let schema = batch.schema();
    for i in 0..batch.num_rows() {
        let mut row = Map::new();
        for (field, column) in schema.fields().iter().zip(batch.columns()) {
            row.insert(field.name().clone(), cell(column.as_ref(), i));
        }
        out.push(row);
    }
}

/// Walks the messages of an Arrow IPC stream (`0xFFFFFFFF`, metadata length, flatbuffer
/// metadata, body) and checks that every length stays inside the file, before arrow-ipc sees
/// it: arrow-ipc allocates each body at the length the metadata claims, so a corrupt length
/// aborted the process with an allocation failure (found by the long fuzz run).
fn check_stream_framing(bytes: &[u8]) -> Result<(), String> {
    let word = |at: usize| -> Option<i32> {
        bytes
            .get(at..at + 4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut pos = 0usize;
    while pos < bytes.len() {
        let mut meta_len = word(pos).ok_or("a message header is cut short")?;
        pos += 4;
        if meta_len == -1 {
            // The continuation marker precedes the length in the current format.
            meta_len = word(pos).ok_or("a message header is cut short")?;
            pos += 4;
        }
        if meta_len == 0 {
            return Ok(()); // end-of-stream marker
        }
        let meta_len = usize::try_from(meta_len)
            .map_err(|_| format!("a message claims {meta_len} bytes of metadata"))?;
        let meta = bytes
            .get(pos..pos.saturating_add(meta_len))
            .ok_or_else(|| format!("a message claims {meta_len} bytes of metadata past the end"))?;
        let message = arrow_ipc::root_as_message(meta)
            .map_err(|e| format!("a message's metadata is not valid: {e}"))?;
        pos += meta_len;
        let body = usize::try_from(message.bodyLength())
            .map_err(|_| format!("a message claims a body of {} bytes", message.bodyLength()))?;
        if pos.saturating_add(body) > bytes.len() {
            return Err(format!(
                "a message claims a body of {body} bytes but only {} remain",
                bytes.len() - pos
            ));
        }
        pos += body;
    }
    Ok(())
}

/// Every row of the data set at `path` (a `save_to_disk` folder or one Arrow stream file), as
/// JSON objects of column name to value.
pub(crate) fn read_rows(path: &Path) -> Result<Vec<Map<String, Value>>, DataError> {
    let mut rows = Vec::new();
    for file in arrow_files(path)? {
        let bytes = super::file::read_bytes(&file)?;
        let bad = |e: &dyn std::fmt::Display| DataError::Config {
            path: file.clone(),
            message: format!("not a readable Arrow IPC stream: {e}"),
        };
        // arrow-ipc panics on some corrupt files (buffer offsets past the body, found by the
        // long fuzz run, docs/reliability.md): a panic is a corrupt file too.
        let read = std::panic::catch_unwind(|| -> Result<Vec<Map<String, Value>>, String> {
            check_stream_framing(&bytes)?;
            let reader = arrow_ipc::reader::StreamReader::try_new(bytes.as_slice(), None)
                .map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            for batch in reader {
                rows_of(&batch.map_err(|e| e.to_string())?, &mut out);
            }
            Ok(out)
        });
        match read {
            Ok(Ok(r)) => rows.extend(r),
            Ok(Err(e)) => return Err(bad(&e)),
            Err(_) => {
                return Err(bad(
                    &"the Arrow reader failed on its contents (it panicked)",
                ));
            }
        }
    }
    Ok(rows)
}
