//! Hugging Face `save_to_disk` data sets (Arrow IPC): the real GLUE MRPC validation pairs
//! (configs/mrpc.toml) are read, split and trained on as a sentence-pair task, and broken
//! folders or files give errors that name the file and what is wrong.

mod common;

use flexlora::config::Config;
use std::path::Path;

fn mrpc(sets: &[String]) -> Config {
    Config::load(&common::repo_root().join("configs/mrpc.toml"), sets)
        .unwrap()
        .config
}

fn mrpc_folder() -> std::path::PathBuf {
    let p = common::repo_root().join("assets/hf_datasets/glue/mrpc/validation");
    assert!(
        p.join("state.json").exists(),
        "{} is missing: run scripts/fetch-assets",
        p.display()
    );
    p
}

#[test]
fn the_real_mrpc_pairs_are_read_and_split() {
    let c = mrpc(&[format!(
        "data.path={:?}",
        mrpc_folder().display().to_string()
    )]);
    // dataset_info.json of the same folder says 408 validation examples.
    let info: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(mrpc_folder().join("dataset_info.json")).unwrap(),
    )
    .unwrap();
    let n = info["splits"]["validation"]["num_examples"]
        .as_u64()
        .unwrap();
    assert_eq!(flexlora::data::count_examples(&c.data).unwrap(), n);
    let s = flexlora::data::load_splits(&c.data).unwrap();
    assert_eq!(
        (s.train.len(), s.validation.len(), s.test.len()),
        (286, 41, 81)
    );
    assert_eq!(s.label_names, vec!["0", "1"]);
    let all: Vec<_> = s.train.iter().chain(&s.validation).chain(&s.test).collect();
    assert!(all.iter().all(|e| !e.text.is_empty()));
    assert!(
        all.iter()
            .all(|e| e.text_pair.as_ref().is_some_and(|p| !p.is_empty()))
    );
    // MRPC's validation split is about two-thirds paraphrases.
    let positives = all.iter().filter(|e| e.label == 1.0).count() as f64 / n as f64;
    assert!((0.6..0.75).contains(&positives), "{positives}");
    // A known pair of GLUE MRPC validation (its first row), in some split.
    assert!(all.iter().any(|e| e.text.starts_with(
        "He said the foodservice pie business doesn 't fit the company 's long-term growth strategy"
    ) && e.label == 1.0));
}

fn copy_folder(dir: &Path) -> std::path::PathBuf {
    let out = dir.join("mrpc");
    std::fs::create_dir_all(&out).unwrap();
    for f in [
        "state.json",
        "dataset_info.json",
        "data-00000-of-00001.arrow",
    ] {
        std::fs::copy(mrpc_folder().join(f), out.join(f)).unwrap();
    }
    out
}

fn load_error(path: &Path, extra: &[&str]) -> String {
    let mut sets = vec![format!("data.path={:?}", path.display().to_string())];
    sets.extend(extra.iter().map(|s| s.to_string()));
    flexlora::data::load_splits(&mrpc(&sets).data)
        .unwrap_err()
        .to_string()
}

#[test]
fn broken_folders_and_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let folder = copy_folder(dir.path());
    // A column the rows do not have; an index where names are needed.
    let e = load_error(&folder, &["data.text_column=\"sentence\""]);
    assert!(
        e.contains("no field `sentence` (data.text_column)") && e.contains("`sentence1`"),
        "{e}"
    );
    let e = load_error(&folder, &["data.text_column=0"]);
    assert!(
        e.contains("is a column index") && e.contains("Arrow"),
        "{e}"
    );
    // A numeric column used as text.
    let e = load_error(&folder, &["data.text_column=\"idx\""]);
    assert!(
        e.contains("field `idx` (data.text_column) is a number, expected a string"),
        "{e}"
    );
    // A truncated Arrow file.
    let arrow = folder.join("data-00000-of-00001.arrow");
    let bytes = std::fs::read(&arrow).unwrap();
    std::fs::write(&arrow, &bytes[..bytes.len() / 3]).unwrap();
    let e = load_error(&folder, &[]);
    assert!(
        e.contains("data-00000-of-00001.arrow") && e.contains("not a readable Arrow IPC stream"),
        "{e}"
    );
    // No state.json: not a save_to_disk folder.
    std::fs::remove_file(folder.join("state.json")).unwrap();
    let e = load_error(&folder, &[]);
    assert!(
        e.contains("state.json") && e.contains("save_to_disk"),
        "{e}"
    );
    // A state.json naming a file outside the folder.
    std::fs::write(
        folder.join("state.json"),
        r#"{"_data_files": [{"filename": "../secret.arrow"}]}"#,
    )
    .unwrap();
    let e = load_error(&folder, &[]);
    assert!(e.contains("not a file of the folder"), "{e}");
}

/// A few optimiser steps of a pair task from the Arrow folder, end to end.
#[test]
fn trains_on_mrpc_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let model = common::repo_root().join("assets/paraphrase-MiniLM-L3-v2");
    let mut args: Vec<String> = vec![
        "train".into(),
        "--config".into(),
        "configs/mrpc.toml".into(),
        "--model".into(),
        model.display().to_string(),
        "--output".into(),
        out.display().to_string(),
        "--quiet".into(),
    ];
    for s in [
        "training.max_steps=3",
        "data.max_length=48",
        "method.name=\"lora\"",
    ] {
        args.extend(["--set".into(), s.into()]);
    }
    let o = common::run_flexlora(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["metric"], "f1");
    assert_eq!(summary["examples"], serde_json::json!([286, 41, 81]));
}
