//! `flexlora ablate` end to end on a slice of the real Pang & Lee data with the real
//! all-MiniLM-L6-v2: every method trains through the runner, the table's numbers are the run
//! directories' numbers, an interrupted runner resumes without redoing finished runs, and bad
//! arguments are refused with a clear message.

mod common;

use common::{kill_when, minilm, run_flexlora as flexlora};
use std::path::Path;

/// `ablate` over a 30 + 30 sentence slice: 42 train / 6 validation / 12 test, batch 8, one
/// epoch = 6 optimiser steps, allocations at steps 2, 3 and 4.
fn ablate_args(dir: &Path, out: &Path, methods: &str, seeds: u64) -> Vec<String> {
    let data = common::polarity_slice(dir, 30);
    let mut v: Vec<String> = [
        "ablate",
        "--config",
        "configs/default.toml",
        "--methods",
        methods,
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend([
        "--seeds".into(),
        seeds.to_string(),
        "--output".into(),
        out.display().to_string(),
    ]);
    for s in [
        format!("model.path={}", toml_string(&minilm())),
        format!("data.path={}", toml_string(&data)),
        "training.epochs=1".into(),
        "training.batch_size=8".into(),
        "training.threads=1".into(),
        "training.device=\"cpu\"".into(),
        "training.log_every=1".into(),
        "data.max_length=24".into(),
        "schedule.b0=2".into(),
        "schedule.t_init=1".into(),
        "schedule.t_final=1".into(),
        "schedule.delta_t=1".into(),
        "method.r_init=2".into(),
        "method.r_max=4".into(),
        "optimiser.lr=0.01".into(),
    ] {
        v.push("--set".into());
        v.push(s);
    }
    v
}

fn toml_string(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

/// The CSV rows of `ablation.csv` as header → value maps.
fn csv_rows(path: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    r.records()
        .map(|rec| {
            header
                .iter()
                .cloned()
                .zip(rec.unwrap().iter().map(String::from))
                .collect()
        })
        .collect()
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let sd = if v.len() < 2 {
        0.0
    } else {
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    };
    (m, sd)
}

#[test]
fn every_method_trains_through_the_runner_and_the_table_is_the_runs_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ablation");
    let methods = "flexlora,adalora,lora,full,nuclear,frobenius,sensitivity,exact_spectrum,\
                   prune_only,expand_only,small_init,orthogonal_init,cubic_ref,linear,exp,constant,\
                   adaptive,svd_fixed";
    let mut args = ablate_args(dir.path(), &out, methods, 1);
    args.extend(["--jobs".into(), "2".into()]);
    let o = flexlora(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let printed = String::from_utf8_lossy(&o.stdout);
    for f in ["ablation.md", "ablation.csv", "ablation.png"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let rows = csv_rows(&out.join("ablation.csv"));
    assert_eq!(rows.len(), 18, "one row per method");
    for row in &rows {
        let method = &row["method"];
        let run = out.join(format!("runs/{method}-lr1e-2-seed0"));
        let s = summary(&run);
        assert_eq!(s["steps"], 6, "{method}");
        let test = s["test_metric"].as_f64().unwrap();
        assert_eq!(row["seed_0"].parse::<f64>().unwrap(), test, "{method}");
        assert_eq!(row["mean"].parse::<f64>().unwrap(), test, "{method}");
        assert_eq!(
            row["trainable_parameters"].parse::<i64>().unwrap(),
            s["trainable_parameters"].as_i64().unwrap(),
            "{method}"
        );
        assert!(
            printed.contains(&format!("| {method} | 1e-2 | {:.2} ±", 100.0 * test)),
            "{method} not printed as in the run: {printed}"
        );
    }
    let rank = |m: &str| summary(&out.join(format!("runs/{m}-lr1e-2-seed0")))["total_rank"].clone();
    // 36 matrices at rank 2: the two-sided variants keep 72, one-sided ones move it.
    assert_eq!(rank("flexlora"), 72);
    assert_eq!(rank("sensitivity"), 72);
    assert!(rank("prune_only").as_u64().unwrap() < 72);
    assert!(rank("expand_only").as_u64().unwrap() > 72);
    // AdaLoRA starts at round(1.5 · 2) = 3 and ends at the same average rank 2.
    assert_eq!(rank("adalora"), 72);
    // Every FlexLoRA run reports how much its allocation acted; the b = 0 control never moves,
    // and other methods report nothing.
    let activity =
        |m: &str| summary(&out.join(format!("runs/{m}-lr1e-2-seed0")))["allocation"].clone();
    assert_eq!(activity("svd_fixed")["moves"], 0);
    assert_eq!(activity("svd_fixed")["adjustments"], 0);
    assert_eq!(activity("svd_fixed")["matrices"], 36);
    assert!(activity("lora").is_null());
    let flex = activity("flexlora");
    let moves = flex["moves"].as_u64().unwrap();
    assert!(moves > 0, "{flex}");
    assert_eq!(
        flex["moved_fraction"].as_f64().unwrap(),
        moves as f64 / 72.0
    );
    assert!(flex["matrices_changed"].as_u64().unwrap() >= 2);
    // The running figures of the last ranks.jsonl line are the summary's.
    let lines = common::jsonl(&out.join("runs/flexlora-lr1e-2-seed0/ranks.jsonl"));
    assert_eq!(lines.last().unwrap()["activity"], flex);
    // The sensitivity ablation scored matrices by gradients (not all zero) and moved ranks.
    let ranks = common::jsonl(&out.join("runs/sensitivity-lr1e-2-seed0/ranks.jsonl"));
    let moved = ranks
        .iter()
        .filter(|r| r["pruned"].as_array().is_some_and(|p| !p.is_empty()))
        .count();
    assert!(moved > 0, "no allocation moved rank: {ranks:?}");
    assert!(ranks.iter().any(|r| {
        r["scores"]
            .as_array()
            .is_some_and(|s| s.iter().any(|x| x.as_f64().unwrap() > 0.0))
    }));
}

#[test]
fn an_interrupted_runner_resumes_and_reuses_finished_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ablation");
    let mut args = ablate_args(dir.path(), &out, "lora,flexlora", 2);
    args.extend(["--lr-grid".into(), "flexlora=1e-2,3e-2".into()]);
    // Killed once the first run has finished and another has started.
    let runs = out.join("runs");
    kill_when(&args, || {
        let Ok(entries) = std::fs::read_dir(&runs) else {
            return false;
        };
        let dirs: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        dirs.iter().any(|d| d.join("summary.json").exists())
            && dirs
                .iter()
                .any(|d| d.join("config.toml").exists() && !d.join("summary.json").exists())
    });
    let finished: Vec<_> = std::fs::read_dir(&runs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|d| d.join("summary.json").exists())
        .map(|d| {
            let t = std::fs::metadata(d.join("summary.json"))
                .unwrap()
                .modified()
                .unwrap();
            (d, t)
        })
        .collect();
    assert!(!finished.is_empty());
    assert!(
        !out.join("ablation.csv").exists(),
        "no table before the runs finish"
    );

    let o = flexlora(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (d, t) in &finished {
        let now = std::fs::metadata(d.join("summary.json"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(now, *t, "{} was trained again", d.display());
    }
    // The learning-rate search ran both rates on seed 0 and kept the better validation one.
    let val = |lr: &str| {
        summary(&runs.join(format!("flexlora-lr{lr}-seed0")))["validation_metric"]
            .as_f64()
            .unwrap()
    };
    let chosen = if val("3e-2") > val("1e-2") {
        "3e-2"
    } else {
        "1e-2"
    };
    assert!(
        runs.join(format!("flexlora-lr{chosen}-seed1/summary.json"))
            .exists()
    );
    let rows = csv_rows(&out.join("ablation.csv"));
    let flex = rows.iter().find(|r| r["method"] == "flexlora").unwrap();
    assert_eq!(flex["lr"], chosen);
    assert_eq!(flex["seeds"], "2");
    // Mean, sd and the paired difference recomputed from the run directories.
    let tests = |m: &str, lr: &str| -> Vec<f64> {
        (0..2)
            .map(|s| {
                summary(&runs.join(format!("{m}-lr{lr}-seed{s}")))["test_metric"]
                    .as_f64()
                    .unwrap()
            })
            .collect()
    };
    let (f, l) = (tests("flexlora", chosen), tests("lora", "1e-2"));
    let (m, sd) = mean_sd(&f);
    assert!((flex["mean"].parse::<f64>().unwrap() - m).abs() < 1e-12);
    assert!((flex["sd"].parse::<f64>().unwrap() - sd).abs() < 1e-12);
    let delta = (f[0] - l[0] + f[1] - l[1]) / 2.0;
    assert!((flex["delta_vs_baseline"].parse::<f64>().unwrap() - delta).abs() < 1e-12);
    let md = std::fs::read_to_string(out.join("ablation.md")).unwrap();
    assert!(
        md.contains(&format!("flexlora: 1e-2: {:.2}", 100.0 * val("1e-2"))),
        "{md}"
    );

    // A finished run is never silently mixed with another config.
    let mut changed = args.clone();
    changed.extend(["--set".into(), "optimiser.weight_decay=0.1".into()]);
    let o = flexlora(&changed);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("different config"), "{err}");
}

#[test]
fn bad_arguments_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ablation");
    let cases: [(&str, &[&str], &str); 4] = [
        ("lora,bogus", &[], "unknown method `bogus`"),
        (
            "lora",
            &["--baseline", "adalora"],
            "--baseline adalora: not among --methods",
        ),
        (
            "lora",
            &["--lr-grid", "lora=fast"],
            "`fast` is not a positive learning rate",
        ),
        ("lora,lora", &[], "lora is listed twice"),
    ];
    for (methods, extra, want) in cases {
        let mut args = ablate_args(dir.path(), &out, methods, 1);
        args.extend(extra.iter().map(|s| s.to_string()));
        let o = flexlora(&args);
        assert!(!o.status.success(), "{methods} {extra:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{want} not in {err}");
    }
    assert!(!out.join("runs").exists(), "nothing trained");
}
