//! Data sets that come as separate split files (`data.train`, `data.validation`,
//! `data.test`), written from the real Pang & Lee sentences: the splits are exactly the files'
//! records, a missing part is drawn from the training file by the documented rule, and a
//! missing file, a column missing in one file only or a label seen only outside the training
//! file is an error naming that file; `flexlora eval` on a run trained on split files reads the
//! same files. Also `data.encoding`: a windows-1252 file reads to the right strings, and the
//! same file as UTF-8 is refused with its line named; and a run stopped before its first
//! validation says so in its printed summary.

mod common;

use flexlora::config::{Config, DataConfig};
use flexlora::data::{SplitSizes, Splits, count_examples, load_splits, split_sizes};
use std::path::{Path, PathBuf};

/// `(label, sentence)` rows: `n` positive and `n` negative real sentences after skipping
/// `skip` of each.
fn rows(skip: usize, n: usize) -> Vec<(String, String)> {
    let (pos, neg) = common::polarity_sentences(skip, n);
    pos.into_iter()
        .map(|s| ("1".to_string(), s))
        .chain(neg.into_iter().map(|s| ("-1".to_string(), s)))
        .collect()
}

/// Writes `rows` as a CSV file with the header `header` (label column first).
fn write_csv(path: &Path, header: [&str; 2], rows: &[(String, String)]) -> PathBuf {
    let mut w = csv::Writer::from_path(path).unwrap();
    w.write_record(header).unwrap();
    for (label, text) in rows {
        w.write_record([label, text]).unwrap();
    }
    w.flush().unwrap();
    path.to_path_buf()
}

/// Three split files of the real sentences: 150 + 150 train, 20 + 20 validation, 40 + 40 test,
/// no sentence in two files.
struct ThreeFiles {
    _dir: tempfile::TempDir,
    train: (PathBuf, Vec<(String, String)>),
    validation: (PathBuf, Vec<(String, String)>),
    test: (PathBuf, Vec<(String, String)>),
}

fn three_files() -> ThreeFiles {
    let dir = tempfile::tempdir().unwrap();
    let header = ["label", "sentence"];
    let part = |name: &str, skip, n| {
        let r = rows(skip, n);
        (write_csv(&dir.path().join(name), header, &r), r)
    };
    ThreeFiles {
        train: part("train.csv", 0, 150),
        validation: part("validation.csv", 150, 20),
        test: part("test.csv", 170, 40),
        _dir: dir,
    }
}

/// The shipped config's `[data]` with `sets` applied (through `--set`, so validated).
fn data_config(sets: &[String]) -> Result<DataConfig, String> {
    let mut all = vec![
        "data.has_header=true".to_string(),
        "data.text_column=\"sentence\"".into(),
        "data.label_column=\"label\"".into(),
    ];
    all.extend(sets.iter().cloned());
    Config::load(&common::repo_root().join("configs/default.toml"), &all)
        .map(|l| l.config.data)
        .map_err(|e| e.to_string())
}

/// `--set` values that clear `data.path` and name split files.
fn files(train: &Path, validation: Option<&Path>, test: Option<&Path>) -> Vec<String> {
    let mut sets = vec![
        "data.path=\"\"".to_string(),
        format!("data.train={:?}", train.display().to_string()),
    ];
    if let Some(v) = validation {
        sets.push(format!("data.validation={:?}", v.display().to_string()));
    }
    if let Some(t) = test {
        sets.push(format!("data.test={:?}", t.display().to_string()));
    }
    sets
}

/// The sorted `(label, text)` pairs of `examples`, labels as written.
fn pairs(s: &Splits, examples: &[flexlora::data::Example]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = examples
        .iter()
        .map(|e| (s.label_names[e.label as usize].clone(), e.text.clone()))
        .collect();
    v.sort();
    v
}

fn sorted(rows: &[(String, String)]) -> Vec<(String, String)> {
    let mut v = rows.to_vec();
    v.sort();
    v
}

#[test]
fn three_files_are_exactly_the_three_splits() {
    let f = three_files();
    let data = data_config(&files(&f.train.0, Some(&f.validation.0), Some(&f.test.0))).unwrap();
    let s = load_splits(&data).unwrap();
    assert_eq!(s.label_names, ["-1", "1"]);
    assert_eq!(pairs(&s, &s.train), sorted(&f.train.1));
    assert_eq!(pairs(&s, &s.validation), sorted(&f.validation.1));
    assert_eq!(pairs(&s, &s.test), sorted(&f.test.1));
    // Separate files keep their file order.
    let test_texts: Vec<&str> = s.test.iter().map(|e| e.text.as_str()).collect();
    let file_texts: Vec<&str> = f.test.1.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(test_texts, file_texts);
    assert_eq!(count_examples(&data).unwrap(), 300 + 40 + 80);
    assert_eq!(
        split_sizes(&data).unwrap(),
        SplitSizes {
            train: 300,
            validation: 40,
            test: 80
        }
    );
    // Counts cap the separate files: a seeded sample of each, in file order.
    let mut capped = data.clone();
    capped.validation_examples = Some(10);
    capped.test_examples = Some(30);
    capped.train_examples = Some(100);
    let c = load_splits(&capped).unwrap();
    assert_eq!(
        (c.train.len(), c.validation.len(), c.test.len()),
        (100, 10, 30)
    );
    let positions: Vec<usize> = c
        .test
        .iter()
        .map(|e| file_texts.iter().position(|t| *t == e.text).unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    assert_eq!(load_splits(&capped).unwrap(), c, "the sample is seeded");
}

#[test]
fn a_missing_part_is_drawn_from_the_training_file() {
    let f = three_files();
    let train_rows = sorted(&f.train.1);
    // Train only: exactly as if the training file were data.path.
    let only = load_splits(&data_config(&files(&f.train.0, None, None)).unwrap()).unwrap();
    let as_path =
        data_config(&[format!("data.path={:?}", f.train.0.display().to_string())]).unwrap();
    assert_eq!(only, load_splits(&as_path).unwrap());
    assert_eq!(
        (only.train.len(), only.validation.len(), only.test.len()),
        (210, 30, 60)
    );
    // Train and test files: validation is the last round(300 * 0.1) = 30 of the shuffled
    // training file, train the other 270 (the GLUE rule).
    let data = data_config(&files(&f.train.0, None, Some(&f.test.0))).unwrap();
    let s = load_splits(&data).unwrap();
    assert_eq!(
        (s.train.len(), s.validation.len(), s.test.len()),
        (270, 30, 80)
    );
    let mut pool = pairs(&s, &s.train);
    pool.extend(pairs(&s, &s.validation));
    pool.sort();
    assert_eq!(pool, train_rows);
    assert_eq!(pairs(&s, &s.test), sorted(&f.test.1));
    // Train and validation files: the training file splits into round(300 * 0.7) = 210 train
    // and 90 test, as one file with validation_fraction = 0 would.
    let data = data_config(&files(&f.train.0, Some(&f.validation.0), None)).unwrap();
    let s = load_splits(&data).unwrap();
    assert_eq!(
        (s.train.len(), s.validation.len(), s.test.len()),
        (210, 40, 90)
    );
    assert_eq!(
        split_sizes(&data).unwrap(),
        SplitSizes {
            train: 210,
            validation: 40,
            test: 90
        }
    );
    let mut pool = pairs(&s, &s.train);
    pool.extend(pairs(&s, &s.test));
    pool.sort();
    assert_eq!(pool, train_rows);
    assert_eq!(pairs(&s, &s.validation), sorted(&f.validation.1));
}

#[test]
fn a_bad_split_file_is_named() {
    let f = three_files();
    let dir = f.train.0.parent().unwrap();
    // A missing test file.
    let missing = dir.join("no-such-test.csv");
    let data = data_config(&files(&f.train.0, Some(&f.validation.0), Some(&missing))).unwrap();
    let e = load_splits(&data).unwrap_err().to_string();
    assert!(
        e.contains("cannot read data file") && e.contains("no-such-test.csv"),
        "{e}"
    );
    assert!(split_sizes(&data).is_err());
    // The text column is missing in the validation file only.
    let renamed = write_csv(&dir.join("renamed.csv"), ["label", "text"], &f.validation.1);
    let data = data_config(&files(&f.train.0, Some(&renamed), Some(&f.test.0))).unwrap();
    let e = load_splits(&data).unwrap_err().to_string();
    assert!(
        e.contains("renamed.csv") && e.contains("no column \"sentence\" (data.text_column)"),
        "{e}"
    );
    // A label that only the test file has: the classes come from the training file.
    let mut odd = f.test.1.clone();
    odd[5].0 = "0".into();
    let odd = write_csv(&dir.join("odd-test.csv"), ["label", "sentence"], &odd);
    let data = data_config(&files(&f.train.0, None, Some(&odd))).unwrap();
    let e = load_splits(&data).unwrap_err().to_string();
    assert!(
        e.contains("odd-test.csv: record 6 (line 7): unknown label \"0\"")
            && e.contains("\"-1\", \"1\""),
        "{e}"
    );
    // With data.labels listing it, the same label is a class.
    let mut with_labels = data.clone();
    with_labels.labels = Some(vec!["-1".into(), "0".into(), "1".into()]);
    assert_eq!(load_splits(&with_labels).unwrap().num_labels(), 3);
}

#[test]
fn inconsistent_file_settings_are_config_errors() {
    let f = three_files();
    let train = format!("data.train={:?}", f.train.0.display().to_string());
    let test = format!("data.test={:?}", f.test.0.display().to_string());
    // The shipped config gives data.path; adding data.train is ambiguous.
    let e = data_config(std::slice::from_ref(&train)).unwrap_err();
    assert!(
        e.contains("`data.train`") && e.contains("data.path is given too"),
        "{e}"
    );
    // A test file with data.path: the parts would come from two places.
    let e = data_config(std::slice::from_ref(&test)).unwrap_err();
    assert!(
        e.contains("`data.test`") && e.contains("needs data.train"),
        "{e}"
    );
    // Neither path nor train.
    let e = data_config(&["data.path=\"\"".into()]).unwrap_err();
    assert!(e.contains("`data.path`") && e.contains("data.train"), "{e}");
    // Split files are for row formats, not GLUE folders.
    let mut sets = files(&f.train.0, None, None);
    sets.push("data.preset=\"sst2\"".into());
    let e = data_config(&sets).unwrap_err();
    assert!(e.contains("a GLUE preset"), "{e}");
    // The resolved config (a run folder's config.toml) keeps the files and drops the empty
    // path, so eval and predict read the same splits.
    let data = data_config(&files(&f.train.0, None, Some(&f.test.0))).unwrap();
    let c = Config::load(
        &common::repo_root().join("configs/default.toml"),
        &files(&f.train.0, None, Some(&f.test.0)),
    )
    .unwrap()
    .config;
    let text = toml::to_string(&c).unwrap();
    assert!(!text.contains("path = \"\""), "{text}");
    let back = Config::from_table(text.parse().unwrap(), "resolved").unwrap();
    back.validate("resolved").unwrap();
    assert_eq!(back.data.train, data.train);
    assert_eq!(back.data.test, data.test);
}

/// Real sentences with accents and curly quotes, as windows-1252 bytes (é = E9, ’ = 92,
/// “ ” = 93 94, € = 80), one per line after a header.
#[test]
fn a_windows_1252_file_decodes_with_data_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let sentences = [
        (
            "1",
            "a charming caf\u{e9} comedy , and the director\u{2019}s best .",
        ),
        (
            "-1",
            "\u{201c}na\u{ef}ve\u{201d} is the kindest word for it .",
        ),
        ("1", "worth every \u{20ac} of the ticket ."),
        ("-1", "the pi\u{f1}ata scene drags on forever ."),
    ];
    let mut text = String::from("label,sentence\n");
    for (label, s) in sentences {
        text.push_str(&format!("{label},\"{s}\"\n"));
    }
    let (bytes, _, unmappable) = encoding_rs::WINDOWS_1252.encode(&text);
    assert!(!unmappable);
    assert!(bytes.contains(&0x92) && bytes.contains(&0xE9) && bytes.contains(&0x80));
    let path = dir.path().join("cp1252.csv");
    std::fs::write(&path, &bytes).unwrap();
    let at = format!("data.path={:?}", path.display().to_string());
    for label in ["windows-1252", "cp1252", "latin-1", "ISO-8859-1"] {
        let data = data_config(&[at.clone(), format!("data.encoding=\"{label}\"")]).unwrap();
        let s = load_splits(&data).unwrap();
        let mut got: Vec<&str> = s
            .train
            .iter()
            .chain(&s.validation)
            .chain(&s.test)
            .map(|e| e.text.as_str())
            .collect();
        got.sort();
        let mut want: Vec<&str> = sentences.iter().map(|(_, s)| *s).collect();
        want.sort();
        assert_eq!(got, want, "data.encoding = {label}");
        assert_eq!(count_examples(&data).unwrap(), 4);
    }
    // The default (UTF-8) refuses the file and names the first bad line (the first sentence,
    // line 2).
    let data = data_config(std::slice::from_ref(&at)).unwrap();
    let e = load_splits(&data).unwrap_err().to_string();
    assert!(
        e.contains("cp1252.csv") && e.contains("(line 2)") && e.contains("not valid UTF-8"),
        "{e}"
    );
    // An unknown label is a config error naming the key and giving examples.
    let e = data_config(&[at.clone(), "data.encoding=\"klingon\"".into()]).unwrap_err();
    assert!(
        e.contains("`data.encoding` = \"klingon\"") && e.contains("\"windows-1252\""),
        "{e}"
    );
    // Bytes that are not valid in a multi-byte encoding name the line.
    std::fs::write(&path, b"label,sentence\n1,fine\n-1,bad \x82\xff here\n").unwrap();
    let data = data_config(&[at, "data.encoding=\"shift_jis\"".into()]).unwrap();
    let e = load_splits(&data).unwrap_err().to_string();
    assert!(
        e.contains("cp1252.csv: line 3: not valid Shift_JIS text"),
        "{e}"
    );
}

/// Three small split files of real sentences in `dir` (40 / 8 / 16 examples) and the
/// `flexlora train` arguments of a one-epoch LoRA run on them (5 optimiser steps), with `sets`
/// as further overrides.
fn small_run(dir: &Path, out: &Path, sets: &[&str]) -> Vec<String> {
    let header = ["label", "sentence"];
    let train = write_csv(&dir.join("train.csv"), header, &rows(0, 20));
    let validation = write_csv(&dir.join("validation.csv"), header, &rows(20, 4));
    let test = write_csv(&dir.join("test.csv"), header, &rows(24, 8));
    let mut args: Vec<String> = vec![
        "train".into(),
        "--config".into(),
        "configs/default.toml".into(),
        "--model".into(),
        common::minilm().display().to_string(),
        "--method".into(),
        "lora".into(),
        "--epochs".into(),
        "1".into(),
        "--output".into(),
        out.display().to_string(),
        "--quiet".into(),
    ];
    let mut all = files(&train, Some(&validation), Some(&test));
    all.extend(
        [
            "data.has_header=true",
            "data.text_column=\"sentence\"",
            "data.label_column=\"label\"",
            "data.max_length=32",
            "training.batch_size=8",
            "training.threads=1",
            "training.device=\"cpu\"",
            "method.r_init=2",
        ]
        .iter()
        .chain(sets)
        .map(|s| s.to_string()),
    );
    for s in all {
        args.extend(["--set".into(), s]);
    }
    args
}

fn summary(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

/// `flexlora train` on three split files, then `flexlora eval` on the run folder: eval reads
/// the same files from the run's config.toml and reproduces the summary's test metric and the
/// parts' sizes.
#[test]
fn train_then_eval_read_the_same_split_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = common::run_flexlora(&small_run(dir.path(), &out, &[]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let printed = String::from_utf8_lossy(&o.stdout);
    assert!(
        printed.contains("best validation epoch 1, validation 0."),
        "{printed}"
    );
    let summary = summary(&out);
    assert_eq!(summary["examples"], serde_json::json!([40, 8, 16]));
    let eval = |split: &str| -> serde_json::Value {
        let e = common::run_flexlora(&[
            "eval".into(),
            "--run".into(),
            out.display().to_string(),
            "--split".into(),
            split.into(),
        ]);
        assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
        serde_json::from_slice(&e.stdout).unwrap()
    };
    let t = eval("test");
    assert_eq!(t["examples"], 16);
    let accuracy = t["result"]["accuracy"].as_f64().unwrap();
    let reported = summary["test_metric"].as_f64().unwrap();
    assert!(
        (accuracy - reported).abs() < 1e-9,
        "{accuracy} vs {reported}"
    );
    assert_eq!(eval("validation")["examples"], 8);
}

/// A run that `training.max_steps` stops before its first epoch ends never validates: the
/// printed summary says so instead of printing NaN, and summary.json holds `null`.
#[test]
fn a_run_stopped_before_validation_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = common::run_flexlora(&small_run(dir.path(), &out, &["training.max_steps=2"]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let printed = String::from_utf8_lossy(&o.stdout);
    assert!(
        printed.contains("no validation ran") && !printed.contains("NaN"),
        "{printed}"
    );
    let summary = summary(&out);
    assert_eq!(summary["steps"], 2);
    assert!(summary["validation_metric"].is_null(), "{summary}");
    assert!(summary["test_metric"].as_f64().is_some());
}
