//! A run that is refused leaves nothing behind: the model, the data and the schedule are
//! checked before the run directory is made, for classifier and decoder runs alike, so the
//! corrected command needs no `--resume` and no `--overwrite`.

mod common;

use common::{minilm, repo_root, run_flexlora};
use std::path::{Path, PathBuf};

/// A copy of the model folder `src` whose `model.safetensors` is cut to its first `keep` bytes
/// (a download that stopped part-way); the other files are copied whole.
fn truncated_copy(src: &Path, dst: &Path, keep: usize) -> PathBuf {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        if name == "model.safetensors" {
            let mut bytes = vec![0u8; keep];
            let mut f = std::fs::File::open(&path).unwrap();
            std::io::Read::read_exact(&mut f, &mut bytes).unwrap();
            std::fs::write(dst.join(name), bytes).unwrap();
        } else if path.is_file() {
            std::fs::copy(&path, dst.join(name)).unwrap();
        }
    }
    dst.to_path_buf()
}

/// Runs `flexlora train` with `args` into `out`; it must fail with `needle` in its message and
/// leave `out` absent.
fn refused(what: &str, args: &[String], out: &Path, needle: &str) {
    let o = run_flexlora(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{what}: should be refused");
    assert!(
        err.contains(needle),
        "{what}: expected {needle:?} in: {err}"
    );
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert!(
        !out.exists(),
        "{what}: the refused run left {} behind",
        out.display()
    );
}

fn args(config: &str, model: &Path, out: &Path, sets: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "train".into(),
        "--config".into(),
        config.into(),
        "--model".into(),
        model.display().to_string(),
        "--output".into(),
        out.display().to_string(),
        "--quiet".into(),
    ];
    for s in sets {
        a.extend(["--set".into(), (*s).into()]);
    }
    a
}

#[test]
fn refused_classifier_runs_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let config = "configs/default.toml";
    let cut = truncated_copy(&minilm(), &dir.path().join("cut-minilm"), 4096);
    refused(
        "a truncated model.safetensors",
        &args(config, &cut, &out, &[]),
        &out,
        "model.safetensors",
    );
    let data = common::polarity_slice(dir.path(), 10);
    let data_set = format!("data.path={:?}", data.display().to_string());
    refused(
        "20 sentences for a 3-epoch schedule with t_init 30 and t_final 80 steps",
        &args(
            config,
            &minilm(),
            &out,
            &[&data_set, "schedule.t_init=30", "schedule.t_final=80"],
        ),
        &out,
        "schedule.t_",
    );
    refused(
        "a data file that does not exist",
        &args(config, &minilm(), &out, &["data.path=\"no-such-file.csv\""]),
        &out,
        "no-such-file.csv",
    );
    refused(
        "a model folder that does not exist",
        &args(config, &dir.path().join("no-model"), &out, &[]),
        &out,
        "no-model",
    );
}

#[test]
fn refused_decoder_runs_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let config = "configs/commonsense/smollm2-flexlora.toml";
    let smollm2 = repo_root().join("assets/smollm2-135m-instruct");
    let cut = truncated_copy(&smollm2, &dir.path().join("cut-smollm2"), 1 << 16);
    refused(
        "a truncated model.safetensors",
        &args(config, &cut, &out, &[]),
        &out,
        "model.safetensors",
    );
    refused(
        "too few training questions for the schedule",
        &args(
            config,
            &smollm2,
            &out,
            &[
                "data.tasks=[\"piqa\"]",
                "data.train_per_task=4",
                "schedule.t_init=30",
                "schedule.t_final=80",
            ],
        ),
        &out,
        "schedule.t_",
    );
}
