//! Reading one data file into raw examples (texts and the label as written), or counting its
//! records; the rules are in the module documentation of [`crate::data`].

use super::error::DataError;
use super::example::{Layout, RawExample};
use super::file::read_bytes;
use crate::config::{Column, DataFormat};
use std::path::Path;

/// The text of a CSV, TSV or JSONL file as UTF-8 bytes: the file itself for UTF-8 (invalid
/// bytes are then refused by the parsers, which name the record), else the file decoded from
/// `encoding` (a byte-order mark of that encoding is dropped; bytes that are not valid in it
/// are refused with the line named).
fn read_text(path: &Path, encoding: &'static encoding_rs::Encoding) -> Result<Vec<u8>, DataError> {
    let bytes = read_bytes(path)?;
    if encoding == encoding_rs::UTF_8 {
        return Ok(bytes);
    }
    let body = match encoding_rs::Encoding::for_bom(&bytes) {
        Some((bom, len)) if bom == encoding => &bytes[len..],
        _ => &bytes[..],
    };
    let mut decoder = encoding.new_decoder_without_bom_handling();
    let capacity = decoder
        .max_utf8_buffer_length_without_replacement(body.len())
        .unwrap_or(body.len());
    let mut text = String::with_capacity(capacity);
    let mut at = 0;
    loop {
        let (result, read) =
            decoder.decode_to_string_without_replacement(&body[at..], &mut text, true);
        at += read;
        match result {
            encoding_rs::DecoderResult::InputEmpty => return Ok(text.into_bytes()),
            encoding_rs::DecoderResult::OutputFull => text.reserve(body.len() - at + 16),
            encoding_rs::DecoderResult::Malformed(..) => {
                return Err(DataError::Encoding {
                    path: path.to_path_buf(),
                    line: text.matches('\n').count() as u64 + 1,
                    encoding: encoding.name(),
                });
            }
        }
    }
}

/// The CSV/TSV reader every command uses: flexible record lengths, no header handling (done
/// here), quoting only for CSV.
fn delimited_reader(bytes: &[u8], format: DataFormat) -> csv::Reader<&[u8]> {
    let tsv = format == DataFormat::Tsv;
    csv::ReaderBuilder::new()
        .delimiter(if tsv { b'\t' } else { b',' })
        .quoting(!tsv)
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes)
}

fn is_blank(record: &csv::StringRecord) -> bool {
    record.iter().all(|f| f.trim().is_empty())
}

/// A CSV/TSV record error (bad UTF-8, I/O) as a [`DataError::Record`].
fn csv_error(path: &Path, record: u64, e: &csv::Error) -> DataError {
    let line = e.position().map_or(0, |p| p.line());
    DataError::Record {
        path: path.to_path_buf(),
        record,
        line,
        message: match e.kind() {
            csv::ErrorKind::Utf8 { err, .. } => {
                format!("field {} is not valid UTF-8", err.field() + 1)
            }
            _ => e.to_string(),
        },
    }
}

/// Counts what [`read_examples`] would return for a file: non-blank records after the header
/// (CSV/TSV), non-blank lines (JSONL) or rows (Arrow, Parquet). Fields are not checked.
pub(crate) fn count_records(path: &Path, layout: &Layout) -> Result<u64, DataError> {
    let format = layout.format;
    match format {
        DataFormat::Arrow => return Ok(super::arrow::read_rows(path)?.len() as u64),
        DataFormat::Parquet => return super::parquet::count_rows(path),
        _ => {}
    }
    let bytes = read_text(path, layout.encoding)?;
    let n = match format {
        DataFormat::Arrow | DataFormat::Parquet => unreachable!("handled above"),
        DataFormat::Idx | DataFormat::PixelCsv | DataFormat::Commonsense => {
            unreachable!("images and the commonsense suite have their own readers (load_splits)")
        }
        DataFormat::Jsonl => jsonl_lines(path, &bytes)?.len() as u64,
        DataFormat::Csv | DataFormat::Tsv => {
            let mut reader = delimited_reader(&bytes, format);
            let mut record = csv::StringRecord::new();
            let mut n = 0u64;
            let mut header_pending = layout.has_header;
            loop {
                match reader.read_record(&mut record) {
                    Ok(false) => break,
                    Ok(true) if is_blank(&record) => {}
                    Ok(true) if header_pending => header_pending = false,
                    Ok(true) => n += 1,
                    Err(e) => return Err(csv_error(path, n + 1, &e)),
                }
            }
            n
        }
    };
    Ok(n)
}

/// Reads every example of `path`. An empty result is an error ([`DataError::Empty`]).
pub(crate) fn read_examples(path: &Path, layout: &Layout) -> Result<Vec<RawExample>, DataError> {
    check_columns(path, layout)?;
    let examples = match layout.format {
        DataFormat::Arrow => read_arrow(path, layout)?,
        DataFormat::Parquet => super::parquet::read_examples(path, layout)?,
        DataFormat::Jsonl => read_jsonl(path, &read_text(path, layout.encoding)?, layout)?,
        DataFormat::Csv | DataFormat::Tsv => {
            read_delimited(path, &read_text(path, layout.encoding)?, layout)?
        }
        DataFormat::Idx | DataFormat::PixelCsv | DataFormat::Commonsense => {
            unreachable!("images and the commonsense suite have their own readers (load_splits)")
        }
    };
    if examples.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(examples)
}

/// The columns with their config keys.
fn columns(layout: &Layout) -> Vec<(&'static str, &Column)> {
    let mut cols = vec![("data.text_column", &layout.text)];
    if let Some(pair) = &layout.text_pair {
        cols.push(("data.text_pair_column", pair));
    }
    cols.push(("data.label_column", &layout.label));
    cols
}

/// Column kinds the format cannot serve: a name without a header, an index in JSON lines or
/// an Arrow data set. (Parquet takes both: a name, or a position in its schema.)
fn check_columns(path: &Path, layout: &Layout) -> Result<(), DataError> {
    for (key, column) in columns(layout) {
        match (layout.format, column) {
            (DataFormat::Jsonl | DataFormat::Arrow, Column::Index(index)) => {
                return Err(DataError::IndexOnJsonl {
                    path: path.to_path_buf(),
                    key,
                    index: *index,
                });
            }
            (DataFormat::Csv | DataFormat::Tsv, Column::Name(name)) if !layout.has_header => {
                return Err(DataError::NameWithoutHeader {
                    path: path.to_path_buf(),
                    key,
                    name: name.clone(),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// A column resolved to a field position, with how to describe it in a message.
struct Field {
    index: usize,
    what: String,
}

fn resolve(
    path: &Path,
    key: &'static str,
    column: &Column,
    header: Option<&[String]>,
) -> Result<Field, DataError> {
    match column {
        Column::Index(index) => Ok(Field {
            index: *index,
            what: format!("{key} = {index}"),
        }),
        Column::Name(name) => {
            let header = header.unwrap_or_default();
            match header.iter().position(|h| h.trim() == name.trim()) {
                Some(index) => Ok(Field {
                    index,
                    what: format!("{key} = \"{name}\" (field {})", index + 1),
                }),
                None => Err(DataError::MissingColumn {
                    path: path.to_path_buf(),
                    key,
                    name: name.clone(),
                    header: header.to_vec(),
                }),
            }
        }
    }
}

fn read_delimited(
    path: &Path,
    bytes: &[u8],
    layout: &Layout,
) -> Result<Vec<RawExample>, DataError> {
    let mut reader = delimited_reader(bytes, layout.format);
    let mut record = csv::StringRecord::new();
    let mut n = 0u64;
    let next = |reader: &mut csv::Reader<&[u8]>,
                record: &mut csv::StringRecord,
                n: u64|
     -> Result<bool, DataError> {
        loop {
            match reader.read_record(record) {
                Ok(true) if is_blank(record) => {}
                Ok(more) => return Ok(more),
                Err(e) => return Err(csv_error(path, n + 1, &e)),
            }
        }
    };
    let header: Option<Vec<String>> = if layout.has_header {
        if !next(&mut reader, &mut record, 0)? {
            return Ok(Vec::new());
        }
        Some(record.iter().map(|h| h.trim().to_string()).collect())
    } else {
        None
    };
    let text = resolve(path, "data.text_column", &layout.text, header.as_deref())?;
    let pair = match &layout.text_pair {
        Some(c) => Some(resolve(
            path,
            "data.text_pair_column",
            c,
            header.as_deref(),
        )?),
        None => None,
    };
    let label = resolve(path, "data.label_column", &layout.label, header.as_deref())?;
    let mut examples = Vec::new();
    while next(&mut reader, &mut record, n)? {
        n += 1;
        let line = record.position().map_or(0, |p| p.line());
        let get = |field: &Field| -> Result<String, DataError> {
            record
                .get(field.index)
                .map(|s| s.trim().to_string())
                .ok_or_else(|| DataError::Record {
                    path: path.to_path_buf(),
                    record: n,
                    line,
                    message: format!("has {} field(s), too few for {}", record.len(), field.what),
                })
        };
        examples.push(RawExample {
            record: n,
            line,
            text: get(&text)?,
            text_pair: pair.as_ref().map(&get).transpose()?,
            label: get(&label)?,
            image: None,
        });
    }
    Ok(examples)
}

/// The non-blank lines of a JSONL file as (1-based line number, line).
fn jsonl_lines<'a>(path: &Path, bytes: &'a [u8]) -> Result<Vec<(u64, &'a str)>, DataError> {
    let mut lines = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i as u64 + 1;
        let text = std::str::from_utf8(raw).map_err(|_| DataError::Record {
            path: path.to_path_buf(),
            record: lines.len() as u64 + 1,
            line,
            message: "not valid UTF-8".into(),
        })?;
        if !text.trim().is_empty() {
            lines.push((line, text));
        }
    }
    Ok(lines)
}

fn read_jsonl(path: &Path, bytes: &[u8], layout: &Layout) -> Result<Vec<RawExample>, DataError> {
    let keys = FieldKeys::of(layout);
    let mut examples = Vec::new();
    for (i, (line, text)) in jsonl_lines(path, bytes)?.into_iter().enumerate() {
        let record = i as u64 + 1;
        let err = |message: String| DataError::Record {
            path: path.to_path_buf(),
            record,
            line,
            message,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| err(format!("invalid JSON: {e}")))?;
        let serde_json::Value::Object(object) = value else {
            return Err(err("not a JSON object".into()));
        };
        examples.push(keys.example(path, record, line, &object)?);
    }
    Ok(examples)
}

/// The rows of a Hugging Face `save_to_disk` folder or Arrow stream file (row `n` is record
/// and "line" `n`), mapped to examples as JSON objects are.
fn read_arrow(path: &Path, layout: &Layout) -> Result<Vec<RawExample>, DataError> {
    let keys = FieldKeys::of(layout);
    super::arrow::read_rows(path)?
        .iter()
        .enumerate()
        .map(|(i, row)| keys.example(path, i as u64 + 1, i as u64 + 1, row))
        .collect()
}

/// The field names of text, pair and label in JSON objects (and Arrow rows).
struct FieldKeys {
    text: String,
    pair: Option<String>,
    label: String,
}

impl FieldKeys {
    fn of(layout: &Layout) -> Self {
        let name = |c: &Column| match c {
            Column::Name(n) => n.clone(),
            Column::Index(i) => i.to_string(), // rejected by check_columns
        };
        Self {
            text: name(&layout.text),
            pair: layout.text_pair.as_ref().map(name),
            label: name(&layout.label),
        }
    }

    /// The example of one object: strings for texts; a string, number or boolean label.
    fn example(
        &self,
        path: &Path,
        record: u64,
        line: u64,
        object: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<RawExample, DataError> {
        let err = |message: String| DataError::Record {
            path: path.to_path_buf(),
            record,
            line,
            message,
        };
        let field = |key: &str, config_key: &str, is_label: bool| -> Result<String, DataError> {
            let value = object.get(key).ok_or_else(|| {
                let keys: Vec<String> = object.keys().map(|k| format!("`{k}`")).collect();
                err(format!(
                    "no field `{key}` ({config_key}); the object has {}",
                    if keys.is_empty() {
                        "no fields".to_string()
                    } else {
                        keys.join(", ")
                    }
                ))
            })?;
            match value {
                serde_json::Value::String(s) => Ok(s.trim().to_string()),
                serde_json::Value::Number(x) if is_label => Ok(x.to_string()),
                serde_json::Value::Bool(b) if is_label => Ok(b.to_string()),
                other => Err(err(format!(
                    "field `{key}` ({config_key}) is {}, expected {}",
                    json_kind(other),
                    if is_label {
                        "a string, number or boolean"
                    } else {
                        "a string"
                    }
                ))),
            }
        };
        Ok(RawExample {
            record,
            line,
            text: field(&self.text, "data.text_column", false)?,
            text_pair: match &self.pair {
                Some(k) => Some(field(k, "data.text_pair_column", false)?),
                None => None,
            },
            label: field(&self.label, "data.label_column", true)?,
            image: None,
        })
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
