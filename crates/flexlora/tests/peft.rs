//! Hugging Face PEFT interoperability, checked by Python PEFT and transformers themselves (the
//! venv's, at test time) on the real all-MiniLM-L6-v2 and real Pang & Lee sentences: exported
//! adapters load in `PeftModel.from_pretrained`, adapters trained by Python PEFT import here,
//! merged folders load in transformers without PEFT (logits within 1e-4 each time), export ->
//! import -> export gives identical tensors, and bad adapters are clear errors.

mod common;

use common::{golden_with_args, max_abs_diff, minilm, repo_root};
use flexlora::adapter::Adapter;
use flexlora::config::{Config, MethodName, TaskKind};
use flexlora::models::TextTokenizer;
use flexlora::peft::{self, PeftFormat};
use flexlora::train::model::TaskModel;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tch::{Device, Kind, Tensor};

const MAX_LEN: usize = 48;
const TOL: f64 = 1e-4;

/// Real sentences: `n` positive (label 1), then `n` negative (label 0), skipping `skip` of each.
fn sentences(skip: usize, n: usize) -> (Vec<String>, Vec<i64>) {
    let (pos, neg) = common::polarity_sentences(skip, n);
    let labels = [vec![1; pos.len()], vec![0; neg.len()]].concat();
    ([pos, neg].concat(), labels)
}

/// A small data file of real sentences (30 positive, 30 negative) in the file's own format.
fn data_slice(dir: &Path) -> PathBuf {
    common::polarity_slice(dir, 30)
}

/// The default config on `model` and `data` with `method`, ranks 2 of 4 slots, on the CPU.
fn template(model: &Path, data: &Path, method: &str) -> Config {
    let q = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let sets = [
        format!("model.path={}", q(model)),
        format!("data.path={}", q(data)),
        format!("method.name=\"{method}\""),
        "method.r_init=2".into(),
        "method.r_max=4".into(),
        "method.target_r=1".into(),
        "training.device=\"cpu\"".into(),
        format!("data.max_length={MAX_LEN}"),
    ];
    Config::load(&repo_root().join("configs/default.toml"), &sets)
        .unwrap()
        .config
}

/// How the SVD adapters' slots are set: every module with a different rank, or all rank 2.
#[derive(Clone, Copy, PartialEq)]
enum Ranks {
    Varied,
    Uniform,
}

/// A model of `config` with non-zero adapters and head: SVD adapters get random `P`, `Q`,
/// `λ` with ranks 1 to 4 of 4 slots (so above `r_init = 2`), LoRA adapters a random `B`.
fn perturbed(config: &Config, seed: i64, ranks: Ranks) -> TaskModel {
    tch::manual_seed(seed);
    let mut m = TaskModel::build(config, 2, TaskKind::Classification, Device::Cpu).unwrap();
    let opts = (Kind::Float, Device::Cpu);
    tch::no_grad(|| {
        for (k, a) in m.svd_adapters_mut().into_iter().enumerate() {
            let slots = a.active().len();
            let active: Vec<bool> = (0..slots)
                .map(|i| match (ranks, k % 4) {
                    (Ranks::Uniform, _) => i < 2,
                    (_, 0) => true,
                    (_, 1) => i == 1,
                    (_, 2) => i % 2 == 0,
                    _ => i < 3,
                })
                .collect();
            let mask: Vec<f32> = active.iter().map(|&b| f32::from(u8::from(b))).collect();
            let p = Tensor::randn(a.p.size(), opts) * 0.05;
            let q = Tensor::randn(a.q.size(), opts) * 0.05;
            let lam = Tensor::randn([slots as i64], opts) * 0.5 * Tensor::from_slice(&mask);
            a.restore(&p, &lam, &q, active).unwrap();
        }
        for l in m.classifier.linears_mut() {
            if let Some(Adapter::Lora(a)) = &mut l.adapter {
                a.b.copy_(&(Tensor::randn(a.b.size(), opts) * 0.05));
            }
        }
        let (cw, cb) = m.classifier.classifier();
        cw.shallow_clone()
            .copy_(&(Tensor::randn(cw.size(), opts) * 0.5));
        cb.shallow_clone()
            .copy_(&(Tensor::randn(cb.size(), opts) * 0.1));
    });
    m
}

/// Writes a finished-looking run directory: `config.toml`, `checkpoints/best` and `final`.
fn write_run(dir: &Path, config: &Config, model: &TaskModel) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.toml"), toml::to_string(config).unwrap()).unwrap();
    for name in ["best", "final"] {
        flexlora::train::checkpoint::write_checkpoint(&dir.join("checkpoints").join(name), |d| {
            Ok(Tensor::write_safetensors(
                &model.state(),
                d.join("model.safetensors"),
            )?)
        })
        .unwrap();
    }
}

/// Our logits on `texts`, tokenised with `folder`'s tokenizer.
fn logits(model: &TaskModel, folder: &Path, texts: &[String]) -> Tensor {
    let tok = TextTokenizer::from_folder(folder, MAX_LEN).unwrap();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let input = tok.encode(&refs, None, Device::Cpu).unwrap();
    let input = flexlora::models::ModelInput::Text(input);
    tch::no_grad(|| model.classifier.forward(&input, false))
}

/// Our logits with every adapter taken off (to show that the adapters matter).
fn logits_without_adapters(mut model: TaskModel, folder: &Path, texts: &[String]) -> Tensor {
    for l in model.classifier.linears_mut() {
        l.adapter = None;
    }
    logits(&model, folder, texts)
}

/// Runs `python/golden/<script>` with a JSON spec.
fn python(script: &str, spec: &Value) -> HashMap<String, Tensor> {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), spec.to_string()).unwrap();
    golden_with_args(
        script,
        &[f.path().to_str().unwrap()],
        &[("unused", &Tensor::zeros([1], (Kind::Float, Device::Cpu)))],
    )
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn read_tensors(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

fn flexlora(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flexlora"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap()
}

fn check_close(what: &str, ours: &Tensor, theirs: &Tensor) -> f64 {
    let d = max_abs_diff(ours, theirs);
    eprintln!("{what}: max |ours - Python| = {d:.3e}");
    assert!(d <= TOL, "{what}: max abs difference {d:e} > {TOL:e}");
    d
}

fn l3() -> PathBuf {
    let p = repo_root().join("assets/paraphrase-MiniLM-L3-v2");
    assert!(
        p.join("model.safetensors").exists(),
        "{} is missing: run scripts/fetch-assets",
        p.display()
    );
    p
}

#[test]
fn exported_adapters_load_in_python_peft_with_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_slice(dir.path());
    let (texts, _) = sentences(40, 4);
    let base = minilm();
    let mut jobs = Vec::new();
    let mut ours = HashMap::new();

    // FlexLoRA with ranks 1..4 of 4 slots (r_init 2) on all 36 linear layers.
    let flex_cfg = template(&base, &data, "flexlora");
    let flex = perturbed(&flex_cfg, 1, Ranks::Varied);
    let flex_run = dir.path().join("flex");
    write_run(&flex_run, &flex_cfg, &flex);
    let flex_logits = logits(&flex, &base, &texts);
    let moved = max_abs_diff(
        &flex_logits,
        &logits_without_adapters(perturbed(&flex_cfg, 1, Ranks::Varied), &base, &texts),
    );
    assert!(
        moved > 1e-2,
        "the adapters barely move the logits ({moved})"
    );
    for (name, format) in [
        ("flex_lora", PeftFormat::Lora),
        ("flex_adalora", PeftFormat::Adalora),
    ] {
        let out = dir.path().join(name);
        peft::export_run(&flex_run, format, &out).unwrap();
        jobs.push(json!({"name": name, "base": base, "adapter": out, "num_labels": 2}));
        ours.insert(name, flex_logits.shallow_clone());
    }
    // The LoRA export carries each module's rank (some above r = 2) with alpha = rank.
    let c = read_json(&dir.path().join("flex_lora/adapter_config.json"));
    assert_eq!(c["peft_type"], "LORA");
    let ranks: Vec<usize> = flex.svd_adapters().iter().map(|a| a.rank()).collect();
    for (path, &r) in flex.adapted_paths.iter().zip(&ranks) {
        assert_eq!(c["rank_pattern"][path], json!(r), "{path}");
        assert_eq!(c["alpha_pattern"][path], json!(r), "{path}");
    }
    assert!(ranks.contains(&4) && ranks.contains(&1));
    let a = read_json(&dir.path().join("flex_adalora/adapter_config.json"));
    assert_eq!(a["peft_type"], "ADALORA");
    assert_eq!(a["init_r"], 4);

    // An AdaLoRA run (trained with PEFT's scale alpha / (r + 1e-5)), exported both ways.
    let ada_cfg = template(&base, &data, "adalora");
    let ada = perturbed(&ada_cfg, 7, Ranks::Uniform);
    let ada_run = dir.path().join("ada");
    write_run(&ada_run, &ada_cfg, &ada);
    let ada_logits = logits(&ada, &base, &texts);
    for (name, format) in [
        ("ada_lora", PeftFormat::Lora),
        ("ada_adalora", PeftFormat::Adalora),
    ] {
        let out = dir.path().join(name);
        peft::export_run(&ada_run, format, &out).unwrap();
        jobs.push(json!({"name": name, "base": base, "adapter": out, "num_labels": 2}));
        ours.insert(name, ada_logits.shallow_clone());
    }
    let a = read_json(&dir.path().join("ada_adalora/adapter_config.json"));
    assert_eq!(
        a["lora_alpha"].as_f64(),
        Some(ada_cfg.method.alpha),
        "PEFT's own alpha, exactly"
    );

    // LoRA, rank 2 everywhere.
    let lora_cfg = template(&base, &data, "lora");
    let lora = perturbed(&lora_cfg, 2, Ranks::Varied);
    let lora_run = dir.path().join("lora");
    write_run(&lora_run, &lora_cfg, &lora);
    peft::export_run(&lora_run, PeftFormat::Lora, &dir.path().join("lora_lora")).unwrap();
    jobs.push(json!({"name": "lora_lora", "base": base, "adapter": dir.path().join("lora_lora"), "num_labels": 2}));
    ours.insert("lora_lora", logits(&lora, &base, &texts));

    // A base without pooler: the run trains a new one, which goes in modules_to_save.
    let small = l3();
    let l3_cfg = template(&small, &data, "flexlora");
    let l3_model = perturbed(&l3_cfg, 3, Ranks::Varied);
    assert!(l3_model.classifier.pooler_is_new());
    let l3_run = dir.path().join("l3");
    write_run(&l3_run, &l3_cfg, &l3_model);
    peft::export_run(&l3_run, PeftFormat::Lora, &dir.path().join("l3_lora")).unwrap();
    let c = read_json(&dir.path().join("l3_lora/adapter_config.json"));
    assert_eq!(c["modules_to_save"], json!(["classifier", "pooler"]));
    jobs.push(json!({"name": "l3_lora", "base": small, "adapter": dir.path().join("l3_lora"), "num_labels": 2}));
    ours.insert("l3_lora", logits(&l3_model, &small, &texts));

    let golden = python(
        "peft_logits.py",
        &json!({"texts": texts, "max_length": MAX_LEN, "jobs": jobs}),
    );
    let ids = TextTokenizer::from_folder(&base, MAX_LEN)
        .unwrap()
        .encode(
            &texts.iter().map(String::as_str).collect::<Vec<_>>(),
            None,
            Device::Cpu,
        )
        .unwrap()
        .input_ids;
    assert!(
        ids.equal(&golden["input_ids"]),
        "tokenisation differs from Python"
    );
    for (name, ours) in &ours {
        check_close(
            &format!("export {name}"),
            ours,
            &golden[&format!("logits.{name}")],
        );
    }
}

#[test]
fn merged_folders_load_in_transformers_with_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_slice(dir.path());
    let (texts, _) = sentences(40, 4);
    let base = minilm();
    let mut jobs = Vec::new();
    let mut ours = HashMap::new();
    for (name, method, seed) in [("flex", "flexlora", 4), ("lora", "lora", 5)] {
        let cfg = template(&base, &data, method);
        let model = perturbed(&cfg, seed, Ranks::Varied);
        let run = dir.path().join(name);
        write_run(&run, &cfg, &model);
        let merged = dir.path().join(format!("{name}_merged"));
        peft::merge_run(&run, &merged).unwrap();
        let hf = read_json(&merged.join("config.json"));
        assert_eq!(
            hf["architectures"],
            json!(["BertForSequenceClassification"])
        );
        assert_eq!(
            hf["id2label"],
            json!({"0": "-1", "1": "1"}),
            "the data's labels"
        );
        assert!(merged.join("tokenizer.json").exists());
        jobs.push(json!({"name": name, "merged": merged}));
        ours.insert(name, logits(&model, &base, &texts));
        // Merging again replaces the earlier merge.
        if name == "flex" {
            peft::merge_run(&run, &merged).unwrap();
        }
    }
    let golden = python(
        "peft_logits.py",
        &json!({"texts": texts, "max_length": MAX_LEN, "jobs": jobs}),
    );
    for (name, ours) in &ours {
        check_close(
            &format!("merge {name}"),
            ours,
            &golden[&format!("logits.{name}")],
        );
    }
}

#[test]
fn adapters_trained_by_python_peft_import_with_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_slice(dir.path());
    let (train, labels) = sentences(100, 6);
    let (texts, _) = sentences(40, 4);
    let base = minilm();
    let trained = dir.path().join("trained");
    let golden = python(
        "peft_train.py",
        &json!({"base": base, "texts": train, "labels": labels, "eval_texts": texts,
                "max_length": MAX_LEN, "steps": 9, "out": trained}),
    );
    let tmpl = template(&base, &data, "flexlora");
    for (name, method) in [
        ("lora_uniform", MethodName::Lora),
        ("lora_patterns", MethodName::Flexlora),
        ("adalora", MethodName::Flexlora),
    ] {
        let imported =
            peft::import_peft(&trained.join(name), Some(&base), &tmpl, Device::Cpu).unwrap();
        assert_eq!(imported.config.method.name, method, "{name}");
        let ours = logits(&imported.model, &base, &texts);
        check_close(
            &format!("import {name}"),
            &ours,
            &golden[&format!("logits.{name}")],
        );
        let moved = max_abs_diff(
            &ours,
            &logits_without_adapters(imported.model, &base, &texts),
        );
        eprintln!("import {name}: the adapter moves the logits by up to {moved:.3e}");
        assert!(moved > 1e-3, "{name}: the adapter barely matters ({moved})");
        let ranks: Vec<usize> = imported.ranks.iter().map(|(_, r)| *r).collect();
        match name {
            "lora_patterns" => {
                assert_eq!(
                    imported.ranks[0],
                    ("encoder.layer.0.attention.self.query".into(), 6)
                );
                assert!(ranks.contains(&2) && ranks.contains(&4));
            }
            "adalora" => {
                assert_eq!(ranks.len(), 36);
                assert!(ranks.iter().all(|&r| r <= 6));
                assert!(
                    ranks.iter().min() != ranks.iter().max(),
                    "AdaLoRA moved ranks"
                );
            }
            _ => assert!(ranks.iter().all(|&r| r == 4)),
        }
    }
    // Through the command line: a run directory that `flexlora eval` accepts.
    let run = dir.path().join("imported");
    let o = flexlora(&[
        "import",
        "--peft",
        trained.join("adalora").to_str().unwrap(),
        "--model",
        base.to_str().unwrap(),
        "--output",
        run.to_str().unwrap(),
        "--set",
        &format!(
            "data.path={}",
            toml::Value::String(data.display().to_string())
        ),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let e = flexlora(&["eval", "--run", run.to_str().unwrap()]);
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    let result: Value = serde_json::from_slice(&e.stdout).unwrap();
    assert!(result["result"]["accuracy"].as_f64().is_some(), "{result}");
}

/// Exports `run` as `format` into `a`, imports that into a run directory, exports again into
/// `b`, and asserts identical tensors and patterns.
fn round_trip(dir: &Path, run: &Path, data: &Path, format: PeftFormat, tag: &str) -> MethodName {
    let a = dir.join(format!("{tag}_a"));
    let b = dir.join(format!("{tag}_b"));
    let back = dir.join(format!("{tag}_run"));
    peft::export_run(run, format, &a).unwrap();
    let tmpl = template(&minilm(), data, "flexlora");
    let imported = peft::import_to_run(&a, Some(&minilm()), &tmpl, &back, false).unwrap();
    peft::export_run(&back, format, &b).unwrap();
    let (ta, tb) = (
        read_tensors(&a.join("adapter_model.safetensors")),
        read_tensors(&b.join("adapter_model.safetensors")),
    );
    let mut names: Vec<&String> = ta.keys().collect();
    names.sort();
    let mut names_b: Vec<&String> = tb.keys().collect();
    names_b.sort();
    assert_eq!(names, names_b, "{tag}: tensor names");
    for n in names {
        assert!(
            ta[n].size() == tb[n].size() && ta[n].equal(&tb[n]),
            "{tag}: {n} differs after the round trip"
        );
    }
    let (ca, cb) = (
        read_json(&a.join("adapter_config.json")),
        read_json(&b.join("adapter_config.json")),
    );
    for field in [
        "peft_type",
        "rank_pattern",
        "alpha_pattern",
        "target_modules",
        "modules_to_save",
        "init_r",
        "r",
    ] {
        assert_eq!(ca[field], cb[field], "{tag}: {field}");
    }
    let (la, lb) = (
        ca["lora_alpha"].as_f64().unwrap(),
        cb["lora_alpha"].as_f64().unwrap(),
    );
    assert!(
        (la - lb).abs() <= 1e-12 * la.abs(),
        "{tag}: lora_alpha {la} vs {lb}"
    );
    eprintln!(
        "round trip {tag}: {} tensors identical (imported as {:?})",
        ta.len(),
        imported.config.method.name
    );
    imported.config.method.name
}

#[test]
fn export_import_export_gives_identical_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_slice(dir.path());
    let base = minilm();
    let flex_cfg = template(&base, &data, "flexlora");
    let varied = dir.path().join("varied");
    write_run(&varied, &flex_cfg, &perturbed(&flex_cfg, 6, Ranks::Varied));
    let uniform = dir.path().join("uniform");
    write_run(
        &uniform,
        &flex_cfg,
        &perturbed(&flex_cfg, 7, Ranks::Uniform),
    );
    let lora_cfg = template(&base, &data, "lora");
    let lora = dir.path().join("lora");
    write_run(&lora, &lora_cfg, &perturbed(&lora_cfg, 8, Ranks::Varied));
    let d = dir.path();
    assert_eq!(
        round_trip(d, &varied, &data, PeftFormat::Lora, "varied-lora"),
        MethodName::Flexlora
    );
    assert_eq!(
        round_trip(d, &uniform, &data, PeftFormat::Lora, "uniform-lora"),
        MethodName::Lora
    );
    assert_eq!(
        round_trip(d, &varied, &data, PeftFormat::Adalora, "varied-adalora"),
        MethodName::Flexlora
    );
    assert_eq!(
        round_trip(d, &lora, &data, PeftFormat::Lora, "lora-lora"),
        MethodName::Lora
    );
}

#[test]
fn command_line_export_import_merge_on_a_trained_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_slice(dir.path());
    let run = dir.path().join("run");
    let run_s = run.to_str().unwrap();
    let minilm = minilm();
    let mut args: Vec<String> = [
        "train",
        "--config",
        "configs/default.toml",
        "--model",
        minilm.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--epochs",
        "1",
        "--output",
        run_s,
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for s in [
        "training.batch_size=8",
        "training.threads=1",
        "training.device=\"cpu\"",
        "training.max_steps=3",
        "data.max_length=32",
        "schedule.t_init=1",
        "schedule.t_final=0",
        "schedule.delta_t=1",
        "method.r_init=2",
        "method.r_max=4",
        "optimiser.lr=0.05",
    ] {
        args.push("--set".into());
        args.push(s.into());
    }
    let o = flexlora(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Default output: <run>/adapter.
    let o = flexlora(&["export", "--run", run_s]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(run.join("adapter/adapter_model.safetensors").exists());
    let ada = dir.path().join("ada");
    let o = flexlora(&[
        "export",
        "--run",
        run_s,
        "--format",
        "peft-adalora",
        "--output",
        ada.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let merged = dir.path().join("merged");
    let o = flexlora(&[
        "merge",
        "--run",
        run_s,
        "--output",
        merged.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(merged.join("model.safetensors").exists());

    let eval = |run: &Path| -> Value {
        let e = flexlora(&["eval", "--run", run.to_str().unwrap()]);
        assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
        serde_json::from_slice(&e.stdout).unwrap()
    };
    let original = eval(&run);
    // The data settings come from --config / --set: the run's own config, or the default one
    // with the run's data file and max_length.
    let data_set = format!(
        "data.path={}",
        toml::Value::String(data.display().to_string())
    );
    let run_config = run.join("config.toml");
    let from_run_config = ["--config", run_config.to_str().unwrap()];
    let from_sets = ["--set", &data_set, "--set", "data.max_length=32"];
    for (name, adapter, settings) in [
        ("from_lora", run.join("adapter"), &from_run_config[..]),
        ("from_adalora", ada, &from_sets[..]),
    ] {
        let imported = dir.path().join(name);
        let mut a = vec![
            "import",
            "--peft",
            adapter.to_str().unwrap(),
            "--output",
            imported.to_str().unwrap(),
        ];
        a.extend(settings);
        let o = flexlora(&a);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let again = eval(&imported);
        assert_eq!(
            again["result"]["accuracy"], original["result"]["accuracy"],
            "{name}"
        );
        let (l0, l1) = (
            original["result"]["loss"].as_f64().unwrap(),
            again["result"]["loss"].as_f64().unwrap(),
        );
        assert!((l0 - l1).abs() < 1e-5, "{name}: loss {l0} vs {l1}");
        // An existing run directory is not replaced without --overwrite.
        let o = flexlora(&[
            "import",
            "--peft",
            run.join("adapter").to_str().unwrap(),
            "--output",
            imported.to_str().unwrap(),
            "--set",
            &data_set,
        ]);
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("--overwrite"));
        // Further training starts from the imported adapter.
        let further = dir.path().join(format!("{name}_further"));
        let o = flexlora(&[
            "train",
            "--init-from",
            imported.to_str().unwrap(),
            "--output",
            further.to_str().unwrap(),
            "--set",
            "training.max_steps=3",
            "--set",
            "schedule.t_init=0",
            "--set",
            "schedule.t_final=1",
            "--set",
            "schedule.delta_t=1",
            "--quiet",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(further.join("summary.json").exists());
        assert!(further.join("adapter/adapter_config.json").exists());
    }
}

/// A copy of the adapter folder `src` with `edit` applied.
fn edited(src: &Path, dst: &Path, edit: impl FnOnce(&Path)) -> PathBuf {
    std::fs::create_dir_all(dst).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    edit(dst);
    dst.to_path_buf()
}

fn set_field(dir: &Path, field: &str, value: Value) {
    let path = dir.join("adapter_config.json");
    let mut c = read_json(&path);
    c[field] = value;
    std::fs::write(path, c.to_string()).unwrap();
}

#[test]
fn bad_adapters_and_runs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_slice(dir.path());
    let base = minilm();
    let cfg = template(&base, &data, "lora");
    let run = dir.path().join("run");
    write_run(&run, &cfg, &perturbed(&cfg, 9, Ranks::Varied));
    let good = dir.path().join("good");
    peft::export_run(&run, PeftFormat::Lora, &good).unwrap();
    // llama.cpp runs decoders: a classifier run has no gguf-lora export, and nothing is written.
    let gguf = dir.path().join("adapter.gguf");
    let e = format!(
        "{:#}",
        peft::export_run_gguf(&run, flexlora::gguf::TensorType::F32, &gguf).unwrap_err()
    );
    assert!(e.contains("decoder runs") && e.contains("peft-lora"), "{e}");
    assert!(!gguf.exists());
    let tmpl = template(&base, &data, "flexlora");
    let import = |d: &Path, base: &Path| {
        format!(
            "{:#}",
            peft::import_peft(d, Some(base), &tmpl, Device::Cpu).unwrap_err()
        )
    };
    let p = |name: &str| dir.path().join(name);

    // A base model without the adapter's modules, and one with other shapes.
    let e = import(&good, &l3());
    assert!(
        e.contains("encoder.layer.3.attention.self.query") && e.contains("not an adaptable"),
        "{e}"
    );
    let e = import(
        &edited(&good, &p("shape"), |d| {
            let f = d.join("adapter_model.safetensors");
            let mut t = read_tensors(&f);
            let key = "base_model.model.bert.encoder.layer.1.attention.self.value.lora_A.weight";
            let b = "base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight";
            t.insert(
                key.into(),
                Tensor::zeros([2, 768], (Kind::Float, Device::Cpu)),
            );
            t.insert(
                b.into(),
                Tensor::zeros([768, 2], (Kind::Float, Device::Cpu)),
            );
            let v: Vec<(String, Tensor)> = t.into_iter().collect();
            Tensor::write_safetensors(&v, &f).unwrap();
        }),
        &base,
    );
    assert!(
        e.contains("encoder.layer.1.attention.self.value")
            && e.contains("768 -> 768")
            && e.contains("384 -> 384"),
        "{e}"
    );
    // Unsupported peft_type, fields we do not implement, unknown fields.
    let e = import(
        &edited(&good, &p("ia3"), |d| {
            set_field(d, "peft_type", json!("IA3"))
        }),
        &base,
    );
    assert!(e.contains("`peft_type` = \"IA3\" is not supported"), "{e}");
    let e = import(
        &edited(&good, &p("dora"), |d| set_field(d, "use_dora", json!(true))),
        &base,
    );
    assert!(e.contains("`use_dora`") && e.contains("DoRA"), "{e}");
    let e = import(
        &edited(&good, &p("pissa"), |d| {
            set_field(d, "init_lora_weights", json!("pissa"))
        }),
        &base,
    );
    assert!(
        e.contains("`init_lora_weights`") && e.contains("pissa"),
        "{e}"
    );
    let e = import(
        &edited(&good, &p("bias"), |d| set_field(d, "bias", json!("all"))),
        &base,
    );
    assert!(e.contains("`bias`"), "{e}");
    let e = import(
        &edited(&good, &p("unknown"), |d| {
            set_field(d, "use_magic", json!(3))
        }),
        &base,
    );
    assert!(
        e.contains("`use_magic`") && e.contains("refusing to ignore"),
        "{e}"
    );
    // An empty unknown field is a default and passes.
    peft::import_peft(
        &edited(&good, &p("empty"), |d| {
            set_field(d, "new_thing", json!(null))
        }),
        Some(&base),
        &tmpl,
        Device::Cpu,
    )
    .unwrap();
    // A rank_pattern that disagrees with the tensors, a missing half of a pair.
    let e = import(
        &edited(&good, &p("rank"), |d| {
            set_field(
                d,
                "rank_pattern",
                json!({"encoder.layer.0.attention.self.query": 5}),
            )
        }),
        &base,
    );
    assert!(e.contains("rank 5") && e.contains("has 2 rows"), "{e}");
    let e = import(
        &edited(&good, &p("half"), |d| {
            let f = d.join("adapter_model.safetensors");
            let mut t = read_tensors(&f);
            t.remove("base_model.model.bert.encoder.layer.2.output.dense.lora_B.weight");
            let v: Vec<(String, Tensor)> = t.into_iter().collect();
            Tensor::write_safetensors(&v, &f).unwrap();
        }),
        &base,
    );
    assert!(
        e.contains("encoder.layer.2.output.dense.lora_B.weight") && e.contains("missing"),
        "{e}"
    );
    // A LoRA run has no singular values to export as AdaLoRA; a folder that is not ours is
    // not replaced.
    let e = format!(
        "{:#}",
        peft::export_run(&run, PeftFormat::Adalora, &p("ada")).unwrap_err()
    );
    assert!(e.contains("--format peft-lora"), "{e}");
    std::fs::create_dir_all(p("other")).unwrap();
    std::fs::write(p("other/notes.txt"), "mine").unwrap();
    let e = format!(
        "{:#}",
        peft::export_run(&run, PeftFormat::Lora, &p("other")).unwrap_err()
    );
    assert!(e.contains("does not hold a PEFT adapter"), "{e}");
    assert!(p("other/notes.txt").exists());
    // The command line reports errors without panicking.
    let o = flexlora(&[
        "export",
        "--run",
        dir.path().join("nothing").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("config.toml missing"));
}
