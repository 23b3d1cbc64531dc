//! Decoder runs end to end on the real commonsense data: a tiny random LLaMA (built by
//! transformers, with the real SmolLM2 tokenizer) trains with FlexLoRA, AdaLoRA and LoRA on a
//! mixture of two tasks through the training engine, writes the classifiers' run layout
//! (checkpoints, logs), scores and plots; the same seed gives the same numbers; a run killed
//! with SIGKILL and resumed ends byte-identical to an uninterrupted one; `--init-from`
//! continues from another run; `lm-eval --run` reproduces the run's table; `generate --adapter`
//! runs; bad configs and weights are clear errors.

mod common;

use common::{golden_with_args, jsonl, repo_root, run_flexlora, short_train_args};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// A tiny LlamaForCausalLM over SmolLM2's 49,152-token vocabulary, with its tokenizer.
fn tiny_decoder(dir: &Path) -> PathBuf {
    let spec = json!({"config": {
        "vocab_size": 49152, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "tie_word_embeddings": true,
        "max_position_embeddings": 512, "eos_token_id": 2, "bos_token_id": 1
    }, "seed": 3, "std": 0.05});
    let spec_path = dir.join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let folder = dir.join("tiny-llama");
    golden_with_args(
        "llama.py",
        &[spec_path.to_str().unwrap(), folder.to_str().unwrap()],
        &[],
    );
    let real = repo_root().join("assets/smollm2-135m-instruct");
    std::fs::copy(real.join("tokenizer.json"), folder.join("tokenizer.json"))
        .expect("the SmolLM2 tokenizer (scripts/fetch-assets llama)");
    folder
}

/// `train` on PIQA + ARC-Easy (8 training questions each, one of them held out for validation,
/// and 4 evaluation questions each), eight steps.
fn train_args(model: &Path, out: &Path, method: &str, sets: &[&str]) -> Vec<String> {
    let mut all = vec![
        "data.tasks=[\"piqa\", \"arc_easy\"]",
        "data.train_per_task=8",
        "data.eval_per_task=4",
        "training.batch_size=4",
        "training.grad_accum=1",
        "training.epochs=2",
        "method.target_r=2",
    ];
    all.extend_from_slice(sets);
    let mut a = short_train_args(
        "configs/commonsense/smollm2-flexlora.toml",
        model,
        out,
        method,
        &all,
    );
    // No step cap: two epochs of four micro-batches.
    let cap = a.iter().position(|s| s == "training.max_steps=6").unwrap();
    a.drain(cap - 1..=cap);
    a
}

fn summary(run: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap()
}

fn ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "flexlora failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn flexlora_decoder_run_trains_scores_reproduces_and_generates() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_decoder(dir.path());
    let run = dir.path().join("run");
    ok(&run_flexlora(&train_args(&model, &run, "flexlora", &[])));
    let s = summary(&run);
    let tasks = s["tasks"].as_array().unwrap();
    let names: Vec<&str> = tasks.iter().map(|t| t["task"].as_str().unwrap()).collect();
    assert_eq!(names, ["piqa", "arc_easy", "average"]);
    // round(8 · 0.1) = 1 question of each task is held out for validation.
    assert_eq!(s["train_sequences"], json!([14, 0]));
    assert_eq!(s["validation_questions"], 2);
    assert_eq!(s["eval_questions"], 8);
    assert_eq!(s["steps"], 8);
    let val = s["validation_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&val), "validation accuracy {val}");
    let best_epoch = s["best_epoch"].as_u64().unwrap();
    assert!((1..=2).contains(&best_epoch));
    for t in tasks {
        for m in ["acc", "acc_norm"] {
            let v = t[m].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{m} = {v}");
        }
    }
    for f in [
        "checkpoints/final/model.safetensors",
        "checkpoints/best/model.safetensors",
        "predictions.jsonl",
        "plots/loss.png",
        "plots/ranks.png",
        "config.toml",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    assert_eq!(jsonl(&run.join("predictions.jsonl")).len(), 8);
    let metrics = jsonl(&run.join("metrics.jsonl"));
    let losses: Vec<f64> = metrics.iter().filter_map(|m| m["loss"].as_f64()).collect();
    assert_eq!(losses.len(), 8);
    let validations: Vec<&Value> = metrics.iter().filter_map(|m| m.get("validation")).collect();
    assert_eq!(validations.len(), 2, "one validation per epoch");
    assert_eq!(
        validations[best_epoch as usize - 1]["value"].as_f64(),
        Some(val),
        "the summary's validation accuracy is the best epoch's"
    );
    assert!(losses.iter().all(|l| l.is_finite() && *l > 0.0));
    // FlexLoRA's allocation ran (the constant schedule adjusts from step 1 on).
    let ranks = jsonl(&run.join("ranks.jsonl"));
    assert!(
        ranks.iter().any(|r| r.get("pruned").is_some()),
        "no allocation record"
    );

    // Same seed, same numbers.
    let again = dir.path().join("again");
    ok(&run_flexlora(&train_args(&model, &again, "flexlora", &[])));
    assert_eq!(summary(&again)["tasks"], s["tasks"]);
    let losses_again: Vec<f64> = jsonl(&again.join("metrics.jsonl"))
        .iter()
        .filter_map(|m| m["loss"].as_f64())
        .collect();
    assert_eq!(losses_again, losses);

    // lm-eval with the run's adapters reproduces its table; without them the scores differ.
    let out = run_flexlora(&[
        "lm-eval".into(),
        "--run".into(),
        run.display().to_string(),
        "--quiet".into(),
        "--output".into(),
        dir.path().join("eval.json").display().to_string(),
    ]);
    ok(&out);
    let eval: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("eval.json")).unwrap())
            .unwrap();
    assert_eq!(eval["tasks"], s["tasks"]);
    let config = run.join("config.toml");
    let out = run_flexlora(&[
        "lm-eval".into(),
        "--config".into(),
        config.display().to_string(),
        "--quiet".into(),
        "--output".into(),
        dir.path().join("zero.json").display().to_string(),
    ]);
    ok(&out);
    let zero: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("zero.json")).unwrap())
            .unwrap();
    assert_ne!(
        zero["outcomes"], eval["outcomes"],
        "the adapters changed no score"
    );

    // generate with the run's adapters: greedy twice gives the same text.
    let generated = |extra: &[&str]| {
        let mut a: Vec<String> = ["generate", "--adapter"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.push(run.display().to_string());
        a.extend(
            [
                "--prompt",
                "The capital of France is",
                "--max-new-tokens",
                "5",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        a.extend(extra.iter().map(|s| s.to_string()));
        let out = run_flexlora(&a);
        ok(&out);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(generated(&[]), generated(&["--no-cache"]));
}

#[test]
fn adalora_and_lora_decoder_runs_finish() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_decoder(dir.path());
    for method in ["adalora", "lora"] {
        let run = dir.path().join(method);
        ok(&run_flexlora(&train_args(&model, &run, method, &[])));
        let s = summary(&run);
        assert_eq!(s["method"], method);
        assert!(s["trainable_parameters"].as_i64().unwrap() > 0);
        assert!(run.join("checkpoints/final/model.safetensors").exists());
    }
}

/// The outputs of a decoder run that must not depend on whether it was interrupted.
const SAME_BYTES: [&str; 5] = [
    "checkpoints/final/model.safetensors",
    "checkpoints/best/model.safetensors",
    "metrics.jsonl",
    "ranks.jsonl",
    "predictions.jsonl",
];

#[test]
fn a_decoder_run_killed_and_resumed_equals_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_decoder(dir.path());
    // Epochs of 4 steps, a step checkpoint every 3 and a log line every 4: the third
    // checkpoint write (after step 3's and epoch 1's best) is the epoch-end checkpoint at step
    // 4, killed half-written; the resumed run starts from step 3, inside a logging window, and
    // redoes step 4, the validation and the best checkpoint.
    let sets = ["training.checkpoint_every=3", "training.log_every=4"];
    let reference = dir.path().join("reference");
    ok(&run_flexlora(&train_args(
        &model, &reference, "flexlora", &sets,
    )));
    let run = dir.path().join("run");
    let args = train_args(&model, &run, "flexlora", &sets);
    let killed = std::process::Command::new(env!("CARGO_BIN_EXE_flexlora"))
        .args(&args)
        .current_dir(common::repo_root())
        .env("FAILPOINTS", "checkpoint.files_written=2*off->return(kill)")
        .output()
        .unwrap();
    assert!(!killed.status.success(), "the run was not killed");
    assert!(!run.join("summary.json").exists());
    let out = run_flexlora(&[
        "train".into(),
        "--resume".into(),
        run.display().to_string(),
        "--quiet".into(),
    ]);
    ok(&out);
    for f in SAME_BYTES {
        let a = std::fs::read(reference.join(f)).unwrap();
        let b = std::fs::read(run.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(a == b, "{f} differs from the uninterrupted run's");
    }
    assert_eq!(summary(&run)["tasks"], summary(&reference)["tasks"]);

    // --init-from starts from the finished run's best adapters: its first loss is below a
    // fresh start's (same seed, same data order), and it trains on.
    let continued = dir.path().join("continued");
    let mut args = train_args(&model, &continued, "flexlora", &sets);
    args.extend(["--init-from".into(), reference.display().to_string()]);
    ok(&run_flexlora(&args));
    let first_loss = |run: &Path| {
        jsonl(&run.join("metrics.jsonl"))
            .iter()
            .find_map(|m| m["loss"].as_f64())
            .unwrap()
    };
    assert!(
        first_loss(&continued) < first_loss(&reference),
        "--init-from: first logged loss {} is not below a fresh start's {}",
        first_loss(&continued),
        first_loss(&reference)
    );
}

#[test]
fn bad_decoder_configs_and_weights_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_decoder(dir.path());
    let fails = |args: Vec<String>, needle: &str| {
        let out = run_flexlora(&args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "should fail: {args:?}");
        assert!(
            err.contains(needle),
            "error should mention {needle:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    };
    let run = dir.path().join("run");
    fails(
        train_args(
            &model,
            &run,
            "flexlora",
            &["data.tasks=[\"piqa\", \"nope\"]"],
        ),
        "data.tasks: unknown task \"nope\"",
    );
    fails(
        train_args(&model, &run, "flexlora", &["data.max_length=8"]),
        "longer than data.max_length = 8",
    );
    fails(
        train_args(&model, &run, "full", &[]),
        "decoders train with adapters only",
    );
    fails(
        train_args(&model, &run, "flexlora", &["data.format=\"csv\""]),
        "data.format = \"commonsense\"",
    );
    // A classifier's encoder cannot read the suite.
    fails(
        train_args(&common::minilm(), &run, "flexlora", &[]),
        "commonsense",
    );
    // A prompt longer than the model's context.
    let long = "word ".repeat(600);
    let out = run_flexlora(&[
        "generate".into(),
        "--model".into(),
        model.display().to_string(),
        "--prompt".into(),
        long,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("context of 512"),
        "{err}"
    );
    // Weights of an unsupported type: q_proj stored as int32.
    let bad = dir.path().join("bad-llama");
    std::fs::create_dir_all(&bad).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(model.join(f), bad.join(f)).unwrap();
    }
    let mut tensors: Vec<(String, tch::Tensor)> =
        tch::Tensor::read_safetensors(model.join("model.safetensors")).unwrap();
    for (name, t) in tensors.iter_mut() {
        if name == "model.layers.0.self_attn.q_proj.weight" {
            *t = t.to_kind(tch::Kind::Int);
        }
    }
    tch::Tensor::write_safetensors(&tensors, bad.join("model.safetensors")).unwrap();
    let out = run_flexlora(&[
        "generate".into(),
        "--model".into(),
        bad.display().to_string(),
        "--prompt".into(),
        "Hi".into(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("layers.0.self_attn.q_proj.weight")
            && err.contains("I32"),
        "{err}"
    );
}
