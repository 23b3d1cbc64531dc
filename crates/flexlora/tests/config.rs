//! The shipped config parses, validates, and survives a round trip through its resolved form
//! (what a run directory's `config.toml` will hold).

mod common;

use flexlora::config::{
    AllocationConfig, Config, MethodConfig, MethodName, OptimiserConfig, ScheduleConfig,
    TrainingConfig,
};
use std::path::Path;

fn default_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/default.toml")
}

#[test]
fn default_config_round_trips() {
    let loaded = Config::load(&default_path(), &[]).expect("default config is valid");
    let c = loaded.config;
    assert_eq!(c.method.name, MethodName::Flexlora);
    assert_eq!((c.method.r_init, c.method.r_max), (8, 16));
    let resolved = toml::to_string(&c).expect("serialises");
    let table: toml::Table = resolved.parse().expect("resolved config is TOML");
    assert_eq!(
        Config::from_table(table, "resolved").expect("parses back"),
        c
    );
}

/// A config of only `[model]` and `[data]` gets every other key's default, `target_modules`
/// from the model's architecture and a header row because the columns are named.
#[test]
fn minimal_config_takes_documented_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let root = common::repo_root();
    // Each architecture's default is what the shipped config for it names.
    for (model, shipped) in [
        ("assets/all-MiniLM-L6-v2", "configs/default.toml"),
        (
            "assets/dinov2-vits14",
            "configs/vision/fashion-mnist-1k.toml",
        ),
        (
            "assets/smollm2-135m-instruct",
            "configs/commonsense/smollm2-flexlora.toml",
        ),
    ] {
        let targets = Config::load(&root.join(shipped), &[])
            .unwrap()
            .config
            .model
            .target_modules;
        let path = dir.path().join("minimal.toml");
        let text = format!(
            "[model]\npath = {:?}\n[data]\npath = \"d.csv\"\n",
            root.join(model).display().to_string()
        );
        std::fs::write(&path, text).unwrap();
        let c = Config::load(&path, &[]).unwrap().config;
        assert_eq!(c.model.target_modules, targets, "{model} against {shipped}");
        assert_eq!(c.method, MethodConfig::default());
        assert_eq!(c.method.alpha, 64.0, "flexlora's scale 8 at rank 8");
        assert!(c.data.header(), "named default columns imply a header");
        assert_eq!(c.total_steps(2800), 3 * 88);
    }
    // A model folder without config.json cannot give the default targets: the error says why.
    let path = dir.path().join("no-model.toml");
    std::fs::write(
        &path,
        "[model]\npath = \"nowhere\"\n[data]\npath = \"d.csv\"\n",
    )
    .unwrap();
    let e = Config::load(&path, &[]).unwrap_err().to_string();
    assert!(
        e.contains("model.target_modules") && e.contains("nowhere"),
        "{e}"
    );
    // Given explicitly, they are not looked up.
    let c = Config::load(&path, &["model.target_modules=[\"query\"]".into()]).unwrap();
    assert_eq!(c.config.model.target_modules, ["query"]);
}

/// One set of defaults: configs/default.toml writes every section but `[model]` and `[data]`
/// (which describe its job) with exactly the values a config that leaves them out gets.
#[test]
fn the_default_config_shows_the_code_defaults() {
    let c = Config::load(&default_path(), &[]).unwrap().config;
    assert_eq!(c.method, MethodConfig::default());
    assert_eq!(c.allocation, AllocationConfig::default());
    assert_eq!(c.schedule, ScheduleConfig::default());
    assert_eq!(c.optimiser, OptimiserConfig::default());
    assert_eq!(c.training, TrainingConfig::default());
}

/// `flexlora config --show-defaults` prints TOML that reads back as the defaults, and
/// `flexlora config` the resolved form of a file.
#[test]
fn show_defaults_prints_the_defaults() {
    let out = common::run_flexlora(&["config".into(), "--show-defaults".into()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("#   deberta-v2: [\"query_proj\", \"key_proj\", \"value_proj\", "),
        "{text}"
    );
    let table: toml::Table = text.parse().expect("TOML");
    let c = Config::from_table(table, "printed").unwrap();
    assert_eq!(c.method, MethodConfig::default());
    assert_eq!(c.schedule, ScheduleConfig::default());
    assert_eq!(c.training, TrainingConfig::default());
    let out = common::run_flexlora(&["config".into()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: toml::Table = String::from_utf8(out.stdout).unwrap().parse().unwrap();
    let c = Config::from_table(printed, "printed").unwrap();
    assert_eq!(c, Config::load(&default_path(), &[]).unwrap().config);
}

/// Only `--model` and `--data` on the command line: a CSV with a `text,label` header (the
/// columns' default names) trains with every default and learns, on a job as short as the
/// allocation study's short one (57 optimiser steps; docs/results.md), with the 3-layer MiniLM
/// to keep the test short.
#[test]
fn a_run_from_model_and_data_flags_alone_trains() {
    let dir = tempfile::tempdir().unwrap();
    let (pos, neg) = common::polarity_sentences(0, 430);
    let data = dir.path().join("reviews.csv");
    let mut w = csv::Writer::from_path(&data).unwrap();
    w.write_record(["text", "label"]).unwrap();
    for (text, label) in pos
        .iter()
        .map(|s| (s, "positive"))
        .chain(neg.iter().map(|s| (s, "negative")))
    {
        w.write_record([text.as_str(), label]).unwrap();
    }
    w.flush().unwrap();
    let run = dir.path().join("run");
    let args: Vec<String> = [
        "train",
        "--model",
        common::repo_root()
            .join("assets/paraphrase-MiniLM-L3-v2")
            .to_str()
            .unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--output",
        run.to_str().unwrap(),
        "--quiet",
    ]
    .map(String::from)
    .to_vec();
    let out = common::run_flexlora(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resolved = Config::load(&run.join("config.toml"), &[]).unwrap().config;
    assert_eq!(resolved.method, MethodConfig::default());
    assert_eq!(resolved.model.target_modules.len(), 6);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    // 602 training sentences: 19 steps per epoch, 3 epochs.
    assert_eq!(summary["steps"], 57, "{summary}");
    let acc = summary["test_metric"].as_f64().unwrap();
    assert!(acc > 0.6, "test accuracy {acc}");
}

#[test]
fn steps_count_optimiser_steps_under_accumulation() {
    let mut c = Config::load(&default_path(), &[]).unwrap().config;
    c.training.grad_accum = 4;
    // 2800 / 32 = 87.5 -> 88 micro-batches -> 22 optimiser steps per epoch.
    assert_eq!(c.steps_per_epoch(2800), 22);
    c.training.grad_accum = 3;
    assert_eq!(c.steps_per_epoch(2800), 30); // 88 / 3 = 29.3 -> 30
}
