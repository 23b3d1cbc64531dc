//! Vision through the whole tool: a small random-initialised DINOv2 (made and saved by
//! transformers in the venv) adapts to a slice of the real Fashion-MNIST images with FlexLoRA,
//! evaluates, exports a PEFT adapter that PEFT loads onto transformers'
//! `Dinov2ForImageClassification` with the same logits, and merges into a folder transformers
//! loads without PEFT; linear probe and full fine-tuning run too; bad image settings get clear
//! errors. The weights are random, so the metric means nothing; the plumbing is the point.

mod common;

use flexlora::config::TaskKind;
use flexlora::data::load_splits;
use flexlora::models::{ModelInput, Preprocessor};
use flexlora::train::model::TaskModel;
use std::path::Path;
use tch::{Device, Tensor};

fn train_args(model: &Path, out: &Path, method: &str, extra: &[&str]) -> Vec<String> {
    let mut sets = vec![
        "data.train_examples=32",
        "data.validation_examples=16",
        "data.test_examples=24",
        "data.image_size=20",
        "training.batch_size=8",
    ];
    sets.extend(extra);
    common::short_train_args(
        "configs/vision/fashion-mnist-1k.toml",
        model,
        out,
        method,
        &sets,
    )
}

fn summary(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn flexlora_adapts_a_dinov2_to_fashion_mnist_and_exports_peft() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_dinov2(dir.path());
    let out = dir.path().join("run");
    let o = common::run_flexlora(&train_args(&model, &out, "flexlora", &[]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = summary(&out);
    assert_eq!(s["metric"], "accuracy");
    assert_eq!(s["steps"], 6);
    assert_eq!(s["examples"], serde_json::json!([32, 16, 24]));
    // 2 layers x 6 linears, rank 2 each; the total is kept while ranks move.
    assert_eq!(s["total_rank"], 24);
    let moves = common::jsonl(&out.join("ranks.jsonl"))
        .iter()
        .filter(|r| r["pruned"].as_array().is_some_and(|p| !p.is_empty()))
        .count();
    assert!(moves > 0);

    // The PEFT adapter names DINOv2's modules as transformers 5 does, keeps the new head,
    // and has no sequence-classification task type.
    let weights = Tensor::read_safetensors(out.join("adapter/adapter_model.safetensors")).unwrap();
    let names: Vec<&str> = weights.iter().map(|(n, _)| n.as_str()).collect();
    let q = "base_model.model.dinov2.encoder.layer.0.attention.q_proj.lora_A.weight";
    assert!(names.contains(&q), "{names:?}");
    assert!(
        names.contains(&"base_model.model.classifier.weight"),
        "{names:?}"
    );
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert!(cfg["task_type"].is_null(), "{cfg}");

    // Our logits on four real test images, from the library on the run's best checkpoint.
    let mut config = flexlora::train::load_run_config(&out).unwrap();
    // The run's paths are relative to where `flexlora` ran: the repository root.
    config.data.path = common::repo_root().join(&config.data.path);
    let splits = load_splits(&config.data).unwrap();
    let mut ours = TaskModel::build(&config, 10, TaskKind::Classification, Device::Cpu).unwrap();
    flexlora::train::run::load_model_checkpoint(&out.join("checkpoints/best"), &mut ours).unwrap();
    let pre = Preprocessor::for_model(&config.model.path, &config.data).unwrap();
    let batch: Vec<_> = splits.test.iter().take(4).collect();
    let input = pre.batch(&batch, Device::Cpu).unwrap();
    let pixels = match &input {
        ModelInput::Image(p) => p.shallow_clone(),
        ModelInput::Text(_) => panic!("a DINOv2 reads images"),
    };
    assert_eq!(pixels.size(), [4, 3, 20, 20]);
    let logits = tch::no_grad(|| ours.classifier.forward(&input, false));

    // `merge` writes a Dinov2ForImageClassification folder.
    let merged = dir.path().join("merged");
    let m = common::run_flexlora(&[
        "merge".into(),
        "--run".into(),
        out.display().to_string(),
        "--output".into(),
        merged.display().to_string(),
    ]);
    assert!(m.status.success(), "{}", String::from_utf8_lossy(&m.stderr));
    let spec = dir.path().join("peft.json");
    std::fs::write(
        &spec,
        serde_json::json!({
            "images": true,
            "jobs": [
                {"name": "peft", "base": model, "adapter": out.join("adapter"), "num_labels": 10},
                {"name": "merged", "merged": merged},
            ],
        })
        .to_string(),
    )
    .unwrap();
    let spec_arg = spec.display().to_string();
    let golden =
        common::golden_with_args("peft_logits.py", &[&spec_arg], &[("pixel_values", &pixels)]);
    for job in ["peft", "merged"] {
        common::assert_close(job, &logits, &golden[&format!("logits.{job}")], 1e-4);
    }
    // eval on the finished run gives the summary's test metric.
    let e = common::run_flexlora(&["eval".into(), "--run".into(), out.display().to_string()]);
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&e.stdout).unwrap();
    assert_eq!(printed["result"]["value"], s["test_metric"]);
}

#[test]
fn linear_probe_trains_the_head_only_and_full_trains_everything() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_dinov2(dir.path());
    let probe = dir.path().join("probe");
    let o = common::run_flexlora(&train_args(&model, &probe, "linear_probe", &[]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // DINOv2's head reads [class token, mean patch token]: 10 x 64 + 10.
    assert_eq!(summary(&probe)["trainable_parameters"], 650);
    let state =
        Tensor::read_safetensors(probe.join("checkpoints/final/model.safetensors")).unwrap();
    let names: Vec<&str> = state.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(!probe.join("adapter").exists());

    let full = dir.path().join("full");
    let o = common::run_flexlora(&train_args(
        &model,
        &full,
        "full",
        &["training.max_steps=2"],
    ));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let state = Tensor::read_safetensors(full.join("checkpoints/final/model.safetensors")).unwrap();
    assert!(
        state
            .iter()
            .any(|(n, _)| n == "dinov2.encoder.layer.1.mlp.fc2.weight"),
        "{:?}",
        state.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
}

#[test]
fn bad_image_settings_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_dinov2(dir.path());
    let run_on = |model: &Path, name: &str, extra: &[&str]| {
        let o = common::run_flexlora(&train_args(model, &dir.path().join(name), "lora", extra));
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let run = |name: &str, extra: &[&str]| {
        let o = common::run_flexlora(&train_args(&model, &dir.path().join(name), "lora", extra));
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let e = run("small", &["data.image_size=3"]);
    assert!(
        e.contains("data.image_size = 3: smaller than one 4x4 patch"),
        "{e}"
    );
    // A batch of images whose training step cannot fit in memory is refused up front.
    let e = run(
        "huge",
        &["training.batch_size=100000", "data.image_size=4096"],
    );
    assert!(
        e.contains("training.batch_size = 100000 x data.image_size = 4096 pixels (1048577 tokens)")
            && e.contains("needs an estimated"),
        "{e}"
    );
    // A corrupt image file.
    let bad = dir.path().join("bad-idx");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(
        bad.join("train-images-idx3-ubyte"),
        [0u8, 0, 8, 3, 0, 0, 0, 9],
    )
    .unwrap();
    std::fs::write(
        bad.join("train-labels-idx1-ubyte"),
        [0u8, 0, 8, 1, 0, 0, 0, 0],
    )
    .unwrap();
    let path = format!("data.path={:?}", bad.display().to_string());
    let e = run("corrupt", &[&path]);
    assert!(
        e.contains("train-images-idx3-ubyte: truncated IDX header"),
        "{e}"
    );
    // A text model given image data.
    let e = run_on(&common::minilm(), "text-model", &[]);
    assert!(
        e.contains("a text model") && e.contains("cannot read image data"),
        "{e}"
    );
}
