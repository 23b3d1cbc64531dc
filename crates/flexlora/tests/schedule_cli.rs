//! End-to-end tests of `flexlora schedule`: the real binary on the shipped default config and
//! on broken configs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn flexlora(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flexlora"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("the flexlora binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["schedule", "--json"];
    all.extend_from_slice(args);
    let out = flexlora(&all);
    assert!(
        out.status.success(),
        "flexlora {all:?} failed: {}",
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).expect("valid JSON")
}

/// The default config on the real Pang & Lee file: 4000 sentences, 2800 for training, batch 32
/// -> 88 steps per epoch, 3 epochs -> T = 264; t_init 0.1 T = 26.4 -> 26, t_final 0.3 T = 79.2 ->
/// 79, delta_t 10, b0 9, cubic.
#[test]
fn default_config_on_real_data() {
    let plan = json(&["--config", "configs/default.toml"]);
    assert_eq!(plan["steps"]["examples"], 4000);
    assert_eq!(plan["steps"]["split"]["train"], 2800);
    assert_eq!(plan["steps"]["steps_per_epoch"], 88);
    assert_eq!(plan["total_steps"], 264);
    assert_eq!(plan["t_init"], 26);
    assert_eq!(plan["t_final"], 79);
    assert_eq!(plan["freeze_step"], 185);
    // b(t) = round_half_even(9 * (1 - (t - 26) / 159)^3) at t = 36, 46, ...:
    // 7.41, 6.01, 4.81, 3.77, 2.90, 2.17, 1.58, 1.10, 0.74, then < 0.5.
    let steps: Vec<(u64, u64)> = plan["adjustments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["step"].as_u64().unwrap(), a["b"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        steps,
        vec![
            (36, 7),
            (46, 6),
            (56, 5),
            (66, 4),
            (76, 3),
            (86, 2),
            (96, 2),
            (106, 1),
            (116, 1)
        ]
    );
    assert_eq!(plan["max_slot_moves"], 31);
}

#[test]
fn overrides_change_the_plan() {
    let plan = json(&[
        "--config",
        "configs/default.toml",
        "--set",
        "training.max_steps=100",
        "--set",
        "schedule.kind=\"constant\"",
        "--set",
        "schedule.t_init=30",
        "--set",
        "schedule.t_final=20",
        "--set",
        "schedule.delta_t=20",
        "--set",
        "schedule.b0=4",
    ]);
    assert_eq!(plan["total_steps"], 100);
    assert_eq!(plan["steps"]["source"], "max_steps");
    // 30 < t < 80, t - 30 multiple of 20: 50, 70; constant b = 4.
    assert_eq!(
        plan["adjustments"],
        serde_json::json!([{"step": 50, "b": 4}, {"step": 70, "b": 4}])
    );
    assert_eq!(plan["max_slot_moves"], 8);
}

#[test]
fn fixed_rank_methods_have_no_adjustments() {
    let plan = json(&[
        "--set",
        "method.name=lora",
        "--set",
        "training.max_steps=50",
    ]);
    assert_eq!(plan["adjustments"], serde_json::json!([]));
    assert_eq!(plan["freeze_step"], serde_json::Value::Null);
}

#[test]
fn table_output_lists_steps_and_freeze() {
    let out = flexlora(&["schedule", "--set", "training.max_steps=200"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ranks freeze at step 140"), "{text}");
    assert!(text.contains("T = 200 optimiser steps"), "{text}");
}

/// Each broken input exits non-zero with a message naming the key (or file) and the rule.
#[test]
fn bad_configs_are_clear_errors() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--set", "schedule.t_innit=3"],
            &[
                "`schedule.t_innit`",
                "unknown field `t_innit`",
                "expected one of",
            ],
        ),
        (
            &[
                "--set",
                "training.max_steps=100",
                "--set",
                "schedule.t_final=95",
            ],
            &[
                "`schedule.t_init` = 0.1",
                "t_init (10) + t_final (95)",
                "must be less than",
                "T (100)",
            ],
        ),
        (
            &["--set", "method.r_max=4"],
            &["`method.r_max` = 4", "at least method.r_init (8)"],
        ),
        (
            &["--set", "schedule.delta_t=-5"],
            &["`schedule.delta_t`", "invalid value: integer `-5`"],
        ),
        (
            &["--set", "method.dropout=1.5"],
            &["`method.dropout` = 1.5", "[0, 1)"],
        ),
        (
            &["--set", "schedule.kind=quartic"],
            &["`schedule.kind`", "unknown variant `quartic`"],
        ),
        (&["--set", "schedule"], &["--set schedule:", "key=value"]),
        (
            &["--config", "does/not/exist.toml"],
            &["cannot read config file does/not/exist.toml"],
        ),
        (
            &["--set", "data.path=missing.csv"],
            &["cannot read data file missing.csv"],
        ),
    ];
    for (args, needles) in cases {
        let mut all = vec!["schedule"];
        all.extend_from_slice(args);
        let out = flexlora(&all);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        for needle in *needles {
            assert!(
                err.contains(needle),
                "{args:?}: expected {needle:?} in {err}"
            );
        }
    }
}

#[test]
fn invalid_toml_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, "[model]\npath = \"x\"\n[data\n").unwrap();
    let out = flexlora(&["schedule", "--config", path.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("broken.toml: invalid TOML"), "{err}");
    assert!(err.contains("line 3"), "{err}");
}

/// Every recipe of configs/paper/ (the GLUE recipes for DeBERTaV3-base) dry-runs without its
/// data: T from the training-split size its header gives, AdaLoRA's t_init / t_final / ΔT, and
/// adjustments strictly between t_init and T - t_final.
#[test]
fn paper_recipes_dry_run() {
    let dir = repo_root().join("configs/paper");
    let mut tasks: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    tasks.sort();
    assert_eq!(
        tasks,
        ["cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb"].map(|t| format!("{t}.toml"))
    );
    for task in tasks {
        let path = format!("configs/paper/{task}");
        let text = std::fs::read_to_string(repo_root().join(&path)).unwrap();
        let train: u64 = text
            .split("--train-examples ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{path}: no --train-examples in its header"));
        let value = |key: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{key} = ")))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{path}: no {key}"))
        };
        let plan = json(&["--config", &path, "--train-examples", &train.to_string()]);
        let epochs = value("epochs") as u64;
        let t = plan["total_steps"].as_u64().unwrap();
        assert_eq!(t, epochs * train.div_ceil(32), "{path}");
        assert_eq!(plan["t_init"].as_f64().unwrap(), value("t_init"), "{path}");
        assert_eq!(
            plan["t_final"].as_f64().unwrap(),
            value("t_final"),
            "{path}"
        );
        assert_eq!(
            plan["delta_t"].as_f64().unwrap(),
            value("delta_t"),
            "{path}"
        );
        let adjustments = plan["adjustments"].as_array().unwrap();
        assert!(!adjustments.is_empty(), "{path}");
        let freeze = plan["freeze_step"].as_u64().unwrap();
        for a in adjustments {
            let s = a["step"].as_u64().unwrap();
            assert!(s > value("t_init") as u64 && s < freeze, "{path}: step {s}");
        }
        // The budget leaves the allocation room to act: no warning that ranks cannot move.
        assert_eq!(plan["warnings"], serde_json::json!([]), "{path}");
        // AdaLoRA's final budget, rank 1 everywhere, would be frozen, and is said to be.
        let frozen = json(&[
            "--config",
            &path,
            "--train-examples",
            &train.to_string(),
            "--set",
            "method.r_init=1",
        ]);
        let warnings = frozen["warnings"].as_array().unwrap();
        assert!(
            warnings
                .iter()
                .any(|w| w.as_str().unwrap().contains("ranks cannot move")),
            "{path}: {warnings:?}"
        );
    }
}

/// The warnings of `flexlora schedule` name what keeps ranks from moving: every matrix at
/// r_max with both directions on, and no adjustment step with b(t) > 0; a schedule given as
/// fractions of T resolves to steps.
#[test]
fn schedule_warns_when_ranks_cannot_move_and_takes_fractions() {
    let full = json(&[
        "--config",
        "configs/default.toml",
        "--set",
        "training.max_steps=200",
        "--set",
        "method.r_max=8",
    ]);
    let w = full["warnings"].as_array().unwrap();
    assert!(
        w.iter()
            .any(|w| w.as_str().unwrap().contains("method.r_max = 8")),
        "{w:?}"
    );
    // b0 = 0 is the control (SVD form, fixed ranks): allowed, and said to be.
    let control = json(&["--config", "configs/default.toml", "--set", "schedule.b0=0"]);
    assert_eq!(control["adjustments"], serde_json::json!([]));
    let w = control["warnings"].as_array().unwrap();
    assert!(
        w.iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("schedule.b0 = 0: no allocation")),
        "{w:?}"
    );
    let fractions = json(&[
        "--config",
        "configs/default.toml",
        "--set",
        "training.max_steps=200",
        "--set",
        "schedule.t_init=0.1",
        "--set",
        "schedule.t_final=0.25",
    ]);
    assert_eq!(fractions["t_init"], 20);
    assert_eq!(fractions["t_final"], 50);
    assert_eq!(fractions["freeze_step"], 150);
    assert_eq!(fractions["warnings"], serde_json::json!([]));
    let out = flexlora(&[
        "schedule",
        "--config",
        "configs/default.toml",
        "--set",
        "schedule.t_init=1.5",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("schedule.t_init") && err.contains("[0, 1)"),
        "{err}"
    );
}
