//! Parquet data sets (`data.format = "parquet"`), written here with the `parquet` crate's
//! Arrow writer from the real Pang & Lee sentences: one file and a folder of shards give
//! exactly the examples of the same rows as CSV; labels come from integer, string, float or
//! boolean columns; shards with other columns, nulls and corrupt files are errors naming the
//! file.

mod common;

use arrow_array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    builder::StringDictionaryBuilder, types::Int32Type,
};
use flexlora::config::{Config, DataConfig};
use flexlora::data::{count_examples, load_splits, split_sizes};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `(label, sentence)` of `n` positive then `n` negative real sentences.
fn rows(n: usize) -> Vec<(i64, String)> {
    let (pos, neg) = common::polarity_sentences(0, n);
    pos.into_iter()
        .map(|s| (1, s))
        .chain(neg.into_iter().map(|s| (-1, s)))
        .collect()
}

/// A batch with an Int64 `label` column and a Utf8 `sentence` column.
fn batch(rows: &[(i64, String)]) -> RecordBatch {
    let labels: ArrayRef = Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0)));
    let texts: ArrayRef = Arc::new(StringArray::from_iter_values(
        rows.iter().map(|r| r.1.as_str()),
    ));
    RecordBatch::try_from_iter([("label", labels), ("sentence", texts)]).unwrap()
}

/// Writes `batch` as a Parquet file compressed with `compression`.
fn write_parquet(path: &Path, batch: &RecordBatch, compression: Compression) -> PathBuf {
    let file = std::fs::File::create(path).unwrap();
    let props = WriterProperties::builder()
        .set_compression(compression)
        .set_max_row_group_row_count(Some(64))
        .build();
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
    path.to_path_buf()
}

/// The same rows as a header-less CSV file (label, sentence).
fn write_csv(path: &Path, rows: &[(i64, String)]) -> PathBuf {
    let mut w = csv::Writer::from_path(path).unwrap();
    for (label, s) in rows {
        w.write_record([label.to_string().as_str(), s.as_str()])
            .unwrap();
    }
    w.flush().unwrap();
    path.to_path_buf()
}

/// The shipped config's `[data]` reading `path` with `sets` (validated, as a run would).
fn data(path: &Path, sets: &[&str]) -> DataConfig {
    let mut all = vec![format!("data.path={:?}", path.display().to_string())];
    all.extend(sets.iter().map(|s| s.to_string()));
    Config::load(&common::repo_root().join("configs/default.toml"), &all)
        .unwrap()
        .config
        .data
}

fn parquet_data(path: &Path) -> DataConfig {
    data(
        path,
        &[
            "data.format=\"parquet\"",
            "data.text_column=\"sentence\"",
            "data.label_column=\"label\"",
        ],
    )
}

fn err(c: &DataConfig) -> String {
    load_splits(c).expect_err("should fail").to_string()
}

#[test]
fn a_file_and_a_folder_of_shards_read_as_the_same_csv() {
    let dir = tempfile::tempdir().unwrap();
    let rows = rows(100);
    let csv = data(&write_csv(&dir.path().join("d.csv"), &rows), &[]);
    let want = load_splits(&csv).unwrap();
    assert_eq!(want.label_names, ["-1", "1"]);
    // One file, snappy (pyarrow's default codec), read by column names.
    let file = write_parquet(
        &dir.path().join("d.parquet"),
        &batch(&rows),
        Compression::SNAPPY,
    );
    let one = parquet_data(&file);
    assert_eq!(load_splits(&one).unwrap(), want);
    assert_eq!(count_examples(&one).unwrap(), 200);
    assert_eq!(split_sizes(&one).unwrap(), split_sizes(&csv).unwrap());
    // By position in the schema (label 0, sentence 1), as the CSV columns are given.
    let by_index = data(&file, &["data.format=\"parquet\""]);
    assert_eq!(load_splits(&by_index).unwrap(), want);
    // Three zstd shards, written out of name order, and a marker file that is not a shard.
    let shards = dir.path().join("shards");
    std::fs::create_dir(&shards).unwrap();
    for (i, name) in [
        (2, "part-2.parquet"),
        (0, "part-0.parquet"),
        (1, "part-1.parquet"),
    ] {
        let part = &rows[i * 70..((i + 1) * 70).min(rows.len())];
        let zstd = Compression::ZSTD(ZstdLevel::default());
        write_parquet(&shards.join(name), &batch(part), zstd);
    }
    std::fs::write(shards.join("_SUCCESS"), "").unwrap();
    let folder = parquet_data(&shards);
    assert_eq!(count_examples(&folder).unwrap(), 200);
    assert_eq!(load_splits(&folder).unwrap(), want);
}

#[test]
fn labels_from_string_float_boolean_and_dictionary_columns() {
    let dir = tempfile::tempdir().unwrap();
    let rows = rows(10);
    let texts: ArrayRef = Arc::new(StringArray::from_iter_values(
        rows.iter().map(|r| r.1.as_str()),
    ));
    let write = |name: &str, labels: ArrayRef| {
        let b =
            RecordBatch::try_from_iter([("label", labels), ("sentence", texts.clone())]).unwrap();
        parquet_data(&write_parquet(
            &dir.path().join(name),
            &b,
            Compression::UNCOMPRESSED,
        ))
    };
    let words = |r: &(i64, String)| if r.0 == 1 { "pos" } else { "neg" };
    let strings = write(
        "s.parquet",
        Arc::new(StringArray::from_iter_values(rows.iter().map(words))),
    );
    assert_eq!(load_splits(&strings).unwrap().label_names, ["neg", "pos"]);
    let floats = write(
        "f.parquet",
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.0 as f64 * 0.5),
        )),
    );
    assert_eq!(load_splits(&floats).unwrap().label_names, ["-0.5", "0.5"]);
    let booleans = write(
        "b.parquet",
        Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.0 == 1)))),
    );
    assert_eq!(
        load_splits(&booleans).unwrap().label_names,
        ["false", "true"]
    );
    // pandas writes a categorical column as a dictionary of strings.
    let mut dict = StringDictionaryBuilder::<Int32Type>::new();
    for r in &rows {
        dict.append_value(words(r));
    }
    let categorical = write("c.parquet", Arc::new(dict.finish()));
    let s = load_splits(&categorical).unwrap();
    assert_eq!(s.label_names, ["neg", "pos"]);
    assert_eq!(s, load_splits(&strings).unwrap());
}

#[test]
fn bad_parquet_is_a_clear_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let rows = rows(40);
    let good = write_parquet(
        &dir.path().join("good.parquet"),
        &batch(&rows),
        Compression::SNAPPY,
    );
    let bytes = std::fs::read(&good).unwrap();
    // A truncated file and random bytes.
    let cut = dir.path().join("cut.parquet");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = err(&parquet_data(&cut));
    assert!(
        e.contains("cut.parquet") && e.contains("not a readable Parquet file"),
        "{e}"
    );
    let mut noise = flexlora::data::SplitMix64::new(7);
    let random: Vec<u8> = (0..4096).map(|_| noise.next_u64() as u8).collect();
    let junk = dir.path().join("junk.parquet");
    std::fs::write(&junk, &random).unwrap();
    let e = err(&parquet_data(&junk));
    assert!(
        e.contains("junk.parquet") && e.contains("not a readable Parquet file"),
        "{e}"
    );
    assert!(count_examples(&parquet_data(&junk)).is_err());
    // A shard whose label column has another type.
    let shards = dir.path().join("shards");
    std::fs::create_dir(&shards).unwrap();
    write_parquet(
        &shards.join("a.parquet"),
        &batch(&rows[..40]),
        Compression::SNAPPY,
    );
    let strings: ArrayRef = Arc::new(StringArray::from_iter_values(
        rows[40..].iter().map(|r| r.0.to_string()),
    ));
    let texts: ArrayRef = Arc::new(StringArray::from_iter_values(
        rows[40..].iter().map(|r| r.1.as_str()),
    ));
    let other = RecordBatch::try_from_iter([("label", strings), ("sentence", texts)]).unwrap();
    write_parquet(&shards.join("b.parquet"), &other, Compression::SNAPPY);
    let e = err(&parquet_data(&shards));
    assert!(
        e.contains("b.parquet") && e.contains("differ from those of the first shard"),
        "{e}"
    );
    assert!(
        e.contains("`label`: Utf8") && e.contains("`label`: Int64"),
        "{e}"
    );
    // A null text in row 3.
    let labels: ArrayRef = Arc::new(Int64Array::from(vec![1, -1, 1, -1]));
    let texts: ArrayRef = Arc::new(StringArray::from(vec![
        Some("good"),
        Some("bad"),
        None,
        Some("awful"),
    ]));
    let nulls = RecordBatch::try_from_iter([("label", labels), ("sentence", texts)]).unwrap();
    let path = write_parquet(
        &dir.path().join("nulls.parquet"),
        &nulls,
        Compression::SNAPPY,
    );
    let e = err(&parquet_data(&path));
    assert!(
        e.contains("nulls.parquet: record 3: column `sentence` (data.text_column) is null"),
        "{e}"
    );
    // A missing column, a column index past the schema, a label column as text.
    let e = err(&data(
        &good,
        &["data.format=\"parquet\"", "data.text_column=\"text\""],
    ));
    assert!(
        e.contains("good.parquet: no column \"text\" (data.text_column)")
            && e.contains("\"label\", \"sentence\""),
        "{e}"
    );
    let e = err(&data(
        &good,
        &["data.format=\"parquet\"", "data.label_column=5"],
    ));
    assert!(
        e.contains("data.label_column = 5, but the file has 2 column(s)"),
        "{e}"
    );
    let e = err(&data(
        &good,
        &[
            "data.format=\"parquet\"",
            "data.text_column=\"label\"",
            "data.label_column=\"sentence\"",
        ],
    ));
    assert!(
        e.contains("column `label` (data.text_column) holds Int64, expected strings"),
        "{e}"
    );
    // An empty folder.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = err(&parquet_data(&empty));
    assert!(e.contains("must hold .parquet files"), "{e}");
}
