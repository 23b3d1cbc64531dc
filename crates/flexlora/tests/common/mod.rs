//! Test helpers: golden values from the project's Python venv, and tensor comparisons.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `python/golden/<script>` in the venv on `inputs` and returns its output tensors.
/// Panics with a clear message when the venv is missing (`scripts/setup` makes it).
pub fn golden(script: &str, inputs: &[(&str, &Tensor)]) -> HashMap<String, Tensor> {
    golden_with_args(script, &[], inputs)
}

/// As [`golden`], with `args` passed before the input and output files.
pub fn golden_with_args(
    script: &str,
    args: &[&str],
    inputs: &[(&str, &Tensor)],
) -> HashMap<String, Tensor> {
    let root = repo_root();
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup (or scripts/test)",
        python.display()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let (inp, out) = (
        dir.path().join("in.safetensors"),
        dir.path().join("out.safetensors"),
    );
    let owned: Vec<(&str, Tensor)> = inputs
        .iter()
        .map(|(n, t)| (*n, t.detach().contiguous()))
        .collect();
    Tensor::write_safetensors(&owned, &inp).expect("write golden inputs");
    let status = std::process::Command::new(&python)
        .arg(root.join("python/golden").join(script))
        .args(args)
        .arg(&inp)
        .arg(&out)
        .status()
        .expect("run the venv's python");
    assert!(status.success(), "python/golden/{script} failed");
    Tensor::read_safetensors(&out)
        .expect("read golden outputs")
        .into_iter()
        .collect()
}

/// A bare `Dinov2Model` folder: hidden 32, 2 layers, 2 heads, patch 4 on a 16x16 grid of
/// position embeddings, layer scale; no preprocessor config (ImageNet's mean/std apply).
pub fn tiny_dinov2(dir: &Path) -> PathBuf {
    let folder = dir.join("dinov2");
    let spec = dir.join("spec.json");
    std::fs::write(
        &spec,
        serde_json::json!({
            "model_type": "dinov2",
            "config": {
                "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                "mlp_ratio": 2, "patch_size": 4, "image_size": 16, "layerscale_value": 1.0,
                "layer_norm_eps": 1e-6
            },
            "seed": 0, "num_labels": 10, "std": 0.05, "bare": true
        })
        .to_string(),
    )
    .unwrap();
    let px = Tensor::zeros([1, 3, 16, 16], (tch::Kind::Float, tch::Device::Cpu));
    let spec_arg = spec.display().to_string();
    let folder_arg = folder.display().to_string();
    golden_with_args(
        "vit.py",
        &[&spec_arg, &folder_arg],
        &[("pixel_values.0", &px)],
    );
    folder
}

/// The all-MiniLM-L6-v2 folder fetched by `scripts/fetch-assets`.
pub fn minilm() -> PathBuf {
    let p = repo_root().join("assets/all-MiniLM-L6-v2");
    assert!(
        p.join("model.safetensors").exists(),
        "{} is missing: run scripts/fetch-assets",
        p.display()
    );
    p
}

/// The SmolLM2-135M-Instruct folder converted by `scripts/fetch-assets llama`.
pub fn smollm2() -> PathBuf {
    let p = repo_root().join("assets/smollm2-135m-instruct");
    assert!(
        p.join("model.safetensors").exists(),
        "{} is missing: run scripts/fetch-assets llama",
        p.display()
    );
    p
}

/// A DeBERTa-v2 folder with DeBERTa-v3's attention settings at toy width (random weights saved
/// by transformers through python/golden/deberta.py) and the real DeBERTa-v3 tokenizer copied in
/// beside it: a bare `DebertaV2Model` when `bare`, else a `DebertaV2ForSequenceClassification`
/// with 2 labels and its pooler in the checkpoint.
pub fn tiny_deberta_v3(dir: &Path, bare: bool) -> PathBuf {
    let folder = dir.join("deberta");
    let spec = dir.join("deberta-spec.json");
    let config = serde_json::json!({
        "config": {
            "vocab_size": 128100, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 512,
            "relative_attention": true, "position_buckets": 256, "max_relative_positions": -1,
            "pos_att_type": ["p2c", "c2p"], "share_att_key": true,
            "norm_rel_ebd": "layer_norm", "position_biased_input": false,
            "type_vocab_size": 0, "pad_token_id": 0, "layer_norm_eps": 1e-7
        },
        "seed": if bare { 0 } else { 3 }, "num_labels": 2, "std": 0.2, "bare": bare
    });
    std::fs::write(&spec, config.to_string()).unwrap();
    let ids = Tensor::from_slice(&[1i64, 2023, 2003, 2]).view([1, 4]);
    let mask = Tensor::ones([1, 4], (tch::Kind::Int64, tch::Device::Cpu));
    golden_with_args(
        "deberta.py",
        &[spec.to_str().unwrap(), folder.to_str().unwrap()],
        &[("input_ids", &ids), ("attention_mask", &mask)],
    );
    let tokenizer = repo_root().join("assets/deberta-v3-tokenizer");
    for entry in std::fs::read_dir(&tokenizer).expect("run scripts/fetch-assets") {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), folder.join(entry.file_name())).unwrap();
    }
    folder
}

/// The first `n` positive and `n` negative sentences of the real Pang & Lee file (which is sorted
/// by label), after skipping `skip` of each; texts trimmed.
pub fn polarity_sentences(skip: usize, n: usize) -> (Vec<String>, Vec<String>) {
    let path = repo_root().join("assets/polarity/pang-lee-sentences.csv");
    let text = std::fs::read_to_string(&path).expect("run scripts/fetch-assets");
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.trim_start_matches('\u{feff}').as_bytes());
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    for r in reader.records() {
        let r = r.unwrap();
        let side = if &r[0] == "1" { &mut pos } else { &mut neg };
        side.push(r[1].trim().to_string());
    }
    let pick = |v: Vec<String>| v.into_iter().skip(skip).take(n).collect::<Vec<_>>();
    (pick(pos), pick(neg))
}

/// A small balanced data file in the Pang & Lee format (`1` / `-1`, text): `n` sentences of each.
pub fn polarity_slice(dir: &Path, n: usize) -> PathBuf {
    let (pos, neg) = polarity_sentences(0, n);
    let path = dir.join("slice.csv");
    let mut w = csv::Writer::from_path(&path).unwrap();
    for (label, s) in pos
        .iter()
        .map(|s| ("1", s))
        .chain(neg.iter().map(|s| ("-1", s)))
    {
        w.write_record([label, s.as_str()]).unwrap();
    }
    w.flush().unwrap();
    path
}

/// Runs the `flexlora` binary from the repository root and waits for it.
pub fn run_flexlora(args: &[String]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_flexlora"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap()
}

/// `flexlora train` arguments for a short run of `method` on `model` from `config` (a path
/// relative to the repository root): six optimiser steps on one thread, rank 2 of 4 slots and a
/// constant schedule that adjusts ranks at every step from step 2 on (so FlexLoRA moves ranks
/// within the six), then `sets` as further `--set` overrides.
pub fn short_train_args(
    config: &str,
    model: &Path,
    out: &Path,
    method: &str,
    sets: &[&str],
) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "train".into(),
        "--config".into(),
        config.into(),
        "--model".into(),
        model.display().to_string(),
        "--method".into(),
        method.into(),
        "--output".into(),
        out.display().to_string(),
        "--quiet".into(),
    ];
    let short = [
        "training.max_steps=6",
        "training.threads=1",
        "method.r_init=2",
        "method.r_max=4",
        "schedule.kind=\"constant\"",
        "schedule.b0=1",
        "schedule.t_init=1",
        "schedule.t_final=1",
        "schedule.delta_t=1",
    ];
    for s in short.iter().chain(sets) {
        a.extend(["--set".into(), (*s).into()]);
    }
    a
}

/// The JSON objects of a JSONL file.
pub fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Starts `flexlora args` and kills it with SIGKILL as soon as `ready()` holds (polled every
/// few milliseconds); fails if the run ends first or nothing happens within two minutes.
pub fn kill_when(args: &[String], ready: impl Fn() -> bool) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flexlora"))
        .args(args)
        .current_dir(repo_root())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !ready() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run finished before it could be killed"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "the run never got there"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// Largest absolute difference over the real (unpadded) tokens of `[batch, len, ...]` tensors.
/// Hidden states at padded positions are never used downstream, and there even transformers'
/// own attention implementations disagree with its f64 result by ~2e-5.
pub fn max_abs_diff_real_tokens(a: &Tensor, b: &Tensor, attention_mask: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    let keep = attention_mask.to_kind(tch::Kind::Double).unsqueeze(-1);
    ((a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double)) * keep)
        .abs()
        .max()
        .double_value(&[])
}

/// Largest `|a − b| / max(|b|_∞, tiny)`: the error relative to the reference's scale.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    let a = a.to_kind(tch::Kind::Double);
    let b = b.to_kind(tch::Kind::Double);
    let diff = (&a - &b).abs().max().double_value(&[]);
    let scale = b.abs().max().double_value(&[]).max(1e-30);
    diff / scale
}

/// Asserts `rel_err(a, b) <= tol` with a message naming `what`.
pub fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f64) {
    let e = rel_err(a, b);
    assert!(e <= tol, "{what}: relative error {e:e} > {tol:e}");
}

/// configs/default.toml on the real all-MiniLM-L6-v2 with adapter dropout off, 32 tokens and
/// `training.precision = precision` (the precision and CUDA tests' model).
pub fn minilm_config(precision: &str) -> flexlora::config::Config {
    let sets = vec![
        format!("model.path={:?}", minilm().display().to_string()),
        "method.dropout=0.0".to_string(),
        "data.max_length=32".to_string(),
        format!("training.precision=\"{precision}\""),
    ];
    flexlora::config::Config::load(&repo_root().join("configs/default.toml"), &sets)
        .unwrap()
        .config
}

/// The golden scripts' inputs for every SVD adapter among `linears` (module paths `paths`):
/// `adapter.<path>.P`, `.lam`, `.Q`, `.mask` (1 = active slot) and `.scale`.
pub fn svd_adapter_inputs(
    paths: &[String],
    linears: Vec<&flexlora::adapter::AdaptedLinear>,
) -> Vec<(String, Tensor)> {
    let mut named = Vec::new();
    for (path, layer) in paths.iter().zip(linears) {
        let Some(a) = layer.svd_adapter() else {
            continue;
        };
        let mask: Vec<f32> = a.active().iter().map(|&b| f32::from(u8::from(b))).collect();
        named.push((format!("adapter.{path}.P"), a.p.detach()));
        named.push((format!("adapter.{path}.lam"), a.lambda.detach()));
        named.push((format!("adapter.{path}.Q"), a.q.detach()));
        named.push((format!("adapter.{path}.mask"), Tensor::from_slice(&mask)));
        named.push((
            format!("adapter.{path}.scale"),
            Tensor::from_slice(&[a.scale() as f32]),
        ));
    }
    named
}
