//! `flexlora train` end to end on a small balanced slice of the real Pang & Lee data with the
//! real all-MiniLM-L6-v2: outputs, a fixed total rank, SIGKILL + resume giving the same bytes,
//! gradient accumulation counted in optimiser steps, and bad inputs.

mod common;

use common::{jsonl as lines, kill_when, run_flexlora as flexlora};

use common::minilm;
use std::path::{Path, PathBuf};
use std::process::Command;

/// 60 positive and 60 negative real sentences in the file's format.
fn slice(dir: &Path) -> PathBuf {
    common::polarity_slice(dir, 60)
}

/// A small FlexLoRA run: 84 train / 12 validation / 24 test, batch 8, 2 epochs = 22 steps,
/// adjustments every 2 steps between 2 and 18 with a constant b = 2.
fn base_args(data: &Path, out: &Path) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "train".into(),
        "--config".into(),
        "configs/default.toml".into(),
        "--model".into(),
        minilm().display().to_string(),
        "--data".into(),
        data.display().to_string(),
        "--epochs".into(),
        "2".into(),
        "--output".into(),
        out.display().to_string(),
        "--quiet".into(),
    ];
    for s in [
        "training.batch_size=8",
        "training.threads=1",
        "training.device=\"cpu\"",
        "training.log_every=2",
        "data.max_length=32",
        "schedule.kind=\"constant\"",
        "schedule.b0=2",
        "schedule.t_init=2",
        "schedule.t_final=4",
        "schedule.delta_t=2",
        "method.r_init=2",
        "method.r_max=4",
        "optimiser.lr=0.01",
    ] {
        v.push("--set".into());
        v.push(s.into());
    }
    v
}

#[test]
fn trains_evaluates_and_writes_every_output() {
    let dir = tempfile::tempdir().unwrap();
    let data = slice(dir.path());
    let out = dir.path().join("run");
    let o = flexlora(&base_args(&data, &out));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "config.toml",
        "metrics.jsonl",
        "ranks.jsonl",
        "summary.json",
        "plots/ranks.png",
        "plots/loss.png",
        "checkpoints/best/model.safetensors",
        "checkpoints/final/model.safetensors",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 22);
    assert_eq!(summary["examples"], serde_json::json!([84, 12, 24]));
    let acc = summary["test_metric"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc), "{acc}");
    // The default targets: 6 layers x 6 linear layers = 36 matrices at rank 2.
    let ranks = lines(&out.join("ranks.jsonl"));
    assert_eq!(ranks[0]["ranks"].as_array().unwrap().len(), 36);
    let totals: Vec<u64> = ranks
        .iter()
        .map(|r| {
            r["ranks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap())
                .sum()
        })
        .collect();
    assert!(
        totals.iter().all(|&t| t == 72),
        "total rank changed: {totals:?}"
    );
    let steps: Vec<u64> = ranks
        .iter()
        .skip(1)
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![4, 6, 8, 10, 12, 14, 16], "adjustment steps");
    assert!(
        ranks
            .iter()
            .skip(1)
            .any(|r| !r["pruned"].as_array().unwrap().is_empty()),
        "ranks moved"
    );
    let metrics = lines(&out.join("metrics.jsonl"));
    assert_eq!(
        metrics
            .iter()
            .filter(|m| m.get("validation").is_some())
            .count(),
        2
    );
    assert!(metrics.iter().any(|m| m.get("test").is_some()));
    assert!(
        metrics
            .iter()
            .filter_map(|m| m["loss"].as_f64())
            .all(f64::is_finite)
    );
    // A finished run is not overwritten without --overwrite.
    let again = flexlora(&base_args(&data, &out));
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("holds a finished run; pass --overwrite")
    );
    // eval and predict on the finished run.
    let e = Command::new(env!("CARGO_BIN_EXE_flexlora"))
        .args(["eval", "--run", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    let result: serde_json::Value = serde_json::from_slice(&e.stdout).unwrap();
    assert!(
        (result["result"]["accuracy"].as_f64().unwrap() - acc).abs() < 1e-9,
        "eval reproduces the test metric"
    );
    let texts = dir.path().join("texts.txt");
    std::fs::write(
        &texts,
        "a wonderful , moving film .\nthe worst movie of the year .\n",
    )
    .unwrap();
    let preds = dir.path().join("preds.csv");
    let p = Command::new(env!("CARGO_BIN_EXE_flexlora"))
        .args([
            "predict",
            "--run",
            out.to_str().unwrap(),
            "--input",
            texts.to_str().unwrap(),
            "--output",
            preds.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let csv = std::fs::read_to_string(&preds).unwrap();
    assert!(csv.starts_with("line,prediction,p_-1,p_1\n"), "{csv}");
    assert_eq!(csv.lines().count(), 3);
}

/// Kills a run with SIGKILL once it has written two step checkpoints, truncates the newest one,
/// resumes (which must fall back to the older checkpoint), and compares the final adapters with
/// an uninterrupted run's, byte for byte.
#[test]
fn sigkill_and_resume_give_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let data = slice(dir.path());
    let args = |out: &Path| {
        let mut a = base_args(&data, out);
        a.extend(["--set".into(), "training.checkpoint_every=3".into()]);
        a
    };
    let straight = dir.path().join("straight");
    let o = flexlora(&args(&straight));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let killed = dir.path().join("killed");
    let ckpts = killed.join("checkpoints");
    let step_checkpoints = || {
        std::fs::read_dir(&ckpts)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("step-"))
                    .count()
            })
            .unwrap_or(0)
    };
    kill_when(&args(&killed), || step_checkpoints() >= 2);
    assert!(!killed.join("summary.json").exists());
    let mut steps: Vec<PathBuf> = std::fs::read_dir(&ckpts)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("step-")
        })
        .collect();
    steps.sort();
    let newest = steps.last().unwrap().join("model.safetensors");
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();

    let r = flexlora(&[
        "train".into(),
        "--resume".into(),
        killed.display().to_string(),
        "--quiet".into(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("skipping checkpoint"),
        "the corrupt checkpoint is reported"
    );
    for f in [
        "checkpoints/final/model.safetensors",
        "checkpoints/best/model.safetensors",
    ] {
        let a = std::fs::read(straight.join(f)).unwrap();
        let b = std::fs::read(killed.join(f)).unwrap();
        assert!(a == b, "{f} differs after SIGKILL + resume");
    }
    let (a, b) = (
        lines(&straight.join("ranks.jsonl")),
        lines(&killed.join("ranks.jsonl")),
    );
    assert_eq!(a, b, "ranks.jsonl differs after resume");
    // Checkpoints every 3 steps, logs every 2: the resumed run starts inside a logging window,
    // whose running loss sum is in the checkpoint, so every logged mean is the same.
    let (a, b) = (
        lines(&straight.join("metrics.jsonl")),
        lines(&killed.join("metrics.jsonl")),
    );
    assert_eq!(a, b, "metrics.jsonl differs after resume");
}

/// With gradient accumulation the allocation runs once per optimiser step: 1 x 16 and 2 x 8
/// give the same adjustment steps.
#[test]
fn gradient_accumulation_counts_optimiser_steps() {
    let dir = tempfile::tempdir().unwrap();
    let data = slice(dir.path());
    let mut steps = Vec::new();
    for (batch, accum) in [(16, 1), (8, 2)] {
        let out = dir.path().join(format!("b{batch}a{accum}"));
        let mut a = base_args(&data, &out);
        for s in [
            format!("training.batch_size={batch}"),
            format!("training.grad_accum={accum}"),
        ] {
            a.extend(["--set".into(), s]);
        }
        a.extend([
            "--set".into(),
            "schedule.t_final=2".into(),
            "--set".into(),
            "schedule.delta_t=1".into(),
        ]);
        let o = flexlora(&a);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap())
                .unwrap();
        assert_eq!(
            summary["steps"], 12,
            "6 optimiser steps per epoch either way"
        );
        let s: Vec<u64> = lines(&out.join("ranks.jsonl"))
            .iter()
            .skip(1)
            .map(|r| r["step"].as_u64().unwrap())
            .collect();
        steps.push(s);
    }
    assert_eq!(steps[0], (3..10).collect::<Vec<u64>>());
    assert_eq!(steps[0], steps[1]);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = slice(dir.path());
    let empty = dir.path().join("empty.csv");
    std::fs::write(&empty, "").unwrap();
    let set = |kv: &str| vec!["--set".to_string(), kv.to_string()];
    let cases: Vec<(&Path, Vec<String>, &str)> = vec![
        (&data, set("data.text_column=7"), "column"),
        (&data, set("data.labels=[\"pos\", \"neg\"]"), "label"),
        (&empty, vec![], "empty.csv"),
        (
            &data,
            vec!["--config".into(), "no/such/config.toml".into()],
            "cannot read config file no/such/config.toml",
        ),
        (
            &data,
            vec!["--method".into(), "qlora".into()],
            "unknown variant `qlora`",
        ),
    ];
    for (data, extra, needle) in cases {
        let out = dir.path().join("bad");
        let mut a = base_args(data, &out);
        if extra.first().is_some_and(|x| x == "--config") {
            // The case's config replaces the base's.
            let i = a.iter().position(|x| x == "--config").unwrap();
            a.drain(i..i + 2);
        }
        a.extend(extra.iter().cloned());
        let o = flexlora(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{extra:?} should fail");
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{extra:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        let _ = std::fs::remove_dir_all(&out);
    }
    // A diverging run stops at the first non-finite loss, naming the step.
    let out = dir.path().join("nan");
    let mut a = base_args(&data, &out);
    for kv in ["optimiser.lr=1e8", "optimiser.clip_norm=0"] {
        a.extend(["--set".to_string(), kv.to_string()]);
    }
    a.extend(["--method".to_string(), "full".to_string()]);
    let o = flexlora(&a);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("the training loss (NaN) at optimiser step"),
        "{err}"
    );
    assert!(!out.join("summary.json").exists());
    let r = flexlora(&[
        "train".into(),
        "--resume".into(),
        dir.path().join("nothing").display().to_string(),
    ]);
    assert!(String::from_utf8_lossy(&r.stderr).contains("no run there"));
}

/// `allocation.measure_impact` scores the step's first micro-batch just before and after each
/// adjustment. Zero-impact initialisation with only expansions (nothing pruned) leaves the loss
/// exactly as it was; `small` initialisation (λ ≠ 0) changes it; without the setting nothing is
/// measured. The run's summary reports the allocation's activity.
#[test]
fn measured_impact_of_adjustments_is_zero_for_zero_init_expansions() {
    let dir = tempfile::tempdir().unwrap();
    let data = slice(dir.path());
    let run = |name: &str, sets: &[&str]| {
        let out = dir.path().join(name);
        let mut args = base_args(&data, &out);
        for s in sets {
            args.extend(["--set".into(), (*s).into()]);
        }
        let o = flexlora(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let adjustments: Vec<serde_json::Value> = lines(&out.join("ranks.jsonl"))
            .into_iter()
            .filter(|l| l.get("initial").is_none())
            .collect();
        assert!(!adjustments.is_empty(), "{name}: no adjustment");
        (out, adjustments)
    };
    let expand_only = "allocation.direction=\"expand_only\"";
    let (_, zero) = run("zero", &["allocation.measure_impact=true", expand_only]);
    for a in &zero {
        assert_eq!(
            a["loss_change"], 0.0,
            "zero-impact expansion moved the loss: {a}"
        );
        assert!(!a["expanded"].as_array().unwrap().is_empty(), "{a}");
    }
    let (_, small) = run(
        "small",
        &[
            "allocation.measure_impact=true",
            expand_only,
            "allocation.new_direction_init=\"small\"",
        ],
    );
    assert!(
        small
            .iter()
            .any(|a| a["loss_change"].as_f64().unwrap() != 0.0),
        "small init never changed the loss: {small:?}"
    );
    let (out, plain) = run("plain", &[]);
    assert!(plain.iter().all(|a| a.get("loss_change").is_none()));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let activity = &summary["allocation"];
    assert_eq!(activity["adjustments"], plain.len());
    assert_eq!(activity, &plain.last().unwrap()["activity"]);
    assert!(activity["moves"].as_u64().unwrap() > 0, "{activity}");
}
