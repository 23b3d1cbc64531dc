//! DeBERTa through the whole tool: a small random-initialised DeBERTa-v3-style model (made and
//! saved by transformers in the venv) trains with FlexLoRA on the real GLUE MRPC pairs
//! (configs/mrpc.toml), evaluates, resumes, and exports a PEFT adapter whose module paths are
//! DeBERTa's. The weights are random, so the metric means nothing; the plumbing is the point.

mod common;

use std::path::{Path, PathBuf};
use tch::Tensor;

/// A `DebertaV2ForSequenceClassification` folder with v3's attention settings, all-MiniLM's
/// WordPiece tokenizer (any tokenizer.json whose ids fit the vocabulary works; the real
/// DeBERTa-v3 tokenizer is checked on its own), and no pooler in the checkpoint.
fn tiny_deberta(dir: &Path) -> PathBuf {
    let folder = dir.join("deberta");
    let spec = dir.join("spec.json");
    std::fs::write(
        &spec,
        serde_json::json!({
            "config": {
                "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2,
                "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 512,
                "relative_attention": true, "position_buckets": 16, "max_relative_positions": -1,
                "pos_att_type": ["p2c", "c2p"], "share_att_key": true,
                "norm_rel_ebd": "layer_norm", "position_biased_input": false,
                "type_vocab_size": 0, "pad_token_id": 0
            },
            "seed": 0, "num_labels": 2, "std": 0.05, "bare": true
        })
        .to_string(),
    )
    .unwrap();
    let ids = Tensor::from_slice(&[101i64, 2023, 2003, 102]).view([1, 4]);
    let mask = Tensor::ones([1, 4], (tch::Kind::Int64, tch::Device::Cpu));
    let spec_arg = spec.display().to_string();
    let folder_arg = folder.display().to_string();
    common::golden_with_args(
        "deberta.py",
        &[&spec_arg, &folder_arg],
        &[("input_ids", &ids), ("attention_mask", &mask)],
    );
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "special_tokens_map.json",
    ] {
        let src = common::minilm().join(f);
        if src.exists() {
            std::fs::copy(src, folder.join(f)).unwrap();
        }
    }
    folder
}

fn train_args(model: &Path, out: &Path, method: &str) -> Vec<String> {
    common::short_train_args(
        "configs/mrpc.toml",
        model,
        out,
        method,
        &[
            "model.target_modules=[\"query_proj\", \"key_proj\", \"value_proj\", \"attention.output.dense\", \"intermediate.dense\", \"output.dense\"]",
            "training.checkpoint_every=2",
            "data.max_length=48",
        ],
    )
}

#[test]
fn flexlora_trains_a_deberta_on_mrpc_pairs_and_exports_peft() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_deberta(dir.path());
    let out = dir.path().join("run");
    let o = common::run_flexlora(&train_args(&model, &out, "flexlora"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["metric"], "f1");
    assert_eq!(summary["steps"], 6);
    // 2 layers x 6 linears, rank 2 each.
    assert_eq!(summary["total_rank"], 24);
    // Ranks moved (adjustments at steps 2..4).
    let moves = common::jsonl(&out.join("ranks.jsonl"))
        .iter()
        .filter(|r| r["pruned"].as_array().is_some_and(|p| !p.is_empty()))
        .count();
    assert!(moves > 0);
    // The PEFT adapter carries DeBERTa's module paths and the new pooler.
    let weights = Tensor::read_safetensors(out.join("adapter/adapter_model.safetensors")).unwrap();
    let names: Vec<&str> = weights.iter().map(|(n, _)| n.as_str()).collect();
    let q = "base_model.model.deberta.encoder.layer.0.attention.self.query_proj.lora_A.weight";
    assert!(names.contains(&q), "{names:?}");
    assert!(
        names.contains(&"base_model.model.pooler.dense.weight"),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.contains("bert.")), "{names:?}");
    // PEFT loads the exported adapter onto transformers' DebertaV2ForSequenceClassification
    // (every tensor unchanged) and gives the probabilities our `predict` gives.
    let pairs = [
        (
            "The company said profits rose .",
            "Profits rose , the company said .",
        ),
        ("He left on Monday .", "The weather was cold in March ."),
        (
            "Shares fell 3 percent in early trading .",
            "The stock dropped 3 % early on .",
        ),
    ];
    let input = dir.path().join("pairs.jsonl");
    let lines: String = pairs
        .iter()
        .map(|(a, b)| format!("{}\n", serde_json::json!({"text": a, "text_pair": b})))
        .collect();
    std::fs::write(&input, lines).unwrap();
    let preds = dir.path().join("preds.jsonl");
    let p = common::run_flexlora(&[
        "predict".into(),
        "--run".into(),
        out.display().to_string(),
        "--input".into(),
        input.display().to_string(),
        "--output".into(),
        preds.display().to_string(),
    ]);
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let ours: Vec<Vec<f64>> = common::jsonl(&preds)
        .iter()
        .map(|v| {
            v["probabilities"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect();
    // `merge` writes a DebertaV2ForSequenceClassification folder transformers loads without
    // PEFT (no missing or unexpected weights), with the same probabilities.
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
            "texts": pairs.iter().map(|p| p.0).collect::<Vec<_>>(),
            "pairs": pairs.iter().map(|p| p.1).collect::<Vec<_>>(),
            "max_length": 48,
            "jobs": [
                {"name": "deberta", "base": model, "adapter": out.join("adapter"), "num_labels": 2},
                {"name": "merged", "merged": merged},
            ],
        })
        .to_string(),
    )
    .unwrap();
    let spec_arg = spec.display().to_string();
    let golden = common::golden_with_args("peft_logits.py", &[&spec_arg], &[]);
    for job in ["deberta", "merged"] {
        let theirs = golden[&format!("logits.{job}")].softmax(-1, tch::Kind::Double);
        for (i, row) in ours.iter().enumerate() {
            for (j, p) in row.iter().enumerate() {
                let t = theirs.double_value(&[i as i64, j as i64]);
                assert!(
                    (p - t).abs() < 1e-5,
                    "{job}: pair {i} class {j}: ours {p}, theirs {t}"
                );
            }
        }
    }
    // eval on the finished run gives the summary's test metric.
    let e = common::run_flexlora(&["eval".into(), "--run".into(), out.display().to_string()]);
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&e.stdout).unwrap();
    assert_eq!(printed["result"]["value"], summary["test_metric"]);
}

#[test]
fn full_fine_tuning_of_a_deberta_checkpoints_its_weights() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_deberta(dir.path());
    let out = dir.path().join("full");
    let o = common::run_flexlora(&train_args(&model, &out, "full"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let state = Tensor::read_safetensors(out.join("checkpoints/final/model.safetensors")).unwrap();
    assert!(
        state
            .iter()
            .any(|(n, _)| n == "deberta.encoder.layer.1.attention.self.query_proj.weight"),
        "{:?}",
        state.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
}
