//! Decoder runs in Hugging Face PEFT's format, checked by Python PEFT and transformers on the
//! real SmolLM2-135M-Instruct: `flexlora export` (LoRA and AdaLoRA, `task_type` CAUSAL_LM)
//! loaded onto `LlamaForCausalLM`, and `flexlora merge` loaded without PEFT, give our logits.

mod common;

use common::{golden_with_args, max_abs_diff, repo_root, run_flexlora, smollm2};
use flexlora::adapter::Adapter;
use flexlora::config::Config;
use flexlora::lm::{LmModel, LmTokenizer};
use flexlora::train::model::TrainableModel;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// The commonsense decoder config on the real SmolLM2 with `method`, rank 2 of 4 slots.
fn config(method: &str) -> Config {
    let q = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let sets = [
        format!("model.path={}", q(&smollm2())),
        format!("method.name=\"{method}\""),
        "method.r_init=2".into(),
        "method.r_max=4".into(),
        "training.device=\"cpu\"".into(),
    ];
    let file = repo_root().join("configs/commonsense/smollm2-flexlora.toml");
    Config::load(&file, &sets).unwrap().config
}

/// The decoder of `config` with non-zero adapters: SVD adapters get random `P`, `Q`, `λ` with
/// ranks 1 to 4 of 4 slots (a different rank in neighbouring modules, one module at rank 0),
/// LoRA adapters a random `B`.
fn perturbed(config: &Config, seed: i64) -> LmModel {
    tch::manual_seed(seed);
    let mut m = LmModel::build(config, Device::Cpu).unwrap();
    let opts = (Kind::Float, Device::Cpu);
    tch::no_grad(|| {
        for (k, a) in m.svd_adapters_mut().into_iter().enumerate() {
            let slots = a.active().len();
            let active: Vec<bool> = (0..slots)
                .map(|i| match k % 5 {
                    0 => true,
                    1 => i == 1,
                    2 => i % 2 == 0,
                    3 => false, // rank 0: no LoRA pair in PEFT, ΔW = 0
                    _ => i < 3,
                })
                .collect();
            let mask: Vec<f32> = active.iter().map(|&b| f32::from(u8::from(b))).collect();
            let p = Tensor::randn(a.p.size(), opts) * 0.05;
            let q = Tensor::randn(a.q.size(), opts) * 0.05;
            let lam = Tensor::randn([slots as i64], opts) * 0.5 * Tensor::from_slice(&mask);
            a.restore(&p, &lam, &q, active).unwrap();
        }
        for l in m.model.linears_mut() {
            if let Some(Adapter::Lora(a)) = &mut l.adapter {
                a.b.copy_(&(Tensor::randn(a.b.size(), opts) * 0.02));
            }
        }
    });
    m
}

/// Writes a finished-looking decoder run: `config.toml`, `checkpoints/best` and `final`.
fn write_run(dir: &Path, config: &Config, model: &LmModel) {
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

fn ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn flexlora(args: &[&Path]) -> std::process::Output {
    run_flexlora(
        &args
            .iter()
            .map(|a| a.display().to_string())
            .collect::<Vec<_>>(),
    )
}

/// The bound of tests/llama_real.rs: f32 through 30 layers, relative to the logits' scale.
fn bound(reference: &Tensor) -> f64 {
    (1e-5 * reference.abs().max().double_value(&[])).max(1e-4)
}

#[test]
fn decoder_adapters_export_to_peft_and_merge_with_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    // "The capital of France is" and a few more tokens of SmolLM2's vocabulary.
    let ids = Tensor::from_slice(&[1i64, 504, 3575, 282, 4649, 314, 7042, 30, 198, 504, 2988])
        .unsqueeze(0);
    let mut jobs = vec![json!({"name": "base", "base": smollm2()})];
    let mut ours: HashMap<String, Tensor> = HashMap::new();
    for method in ["flexlora", "lora"] {
        let config = config(method);
        let model = perturbed(&config, 7);
        let run = dir.path().join(method);
        write_run(&run, &config, &model);
        ours.insert(
            method.into(),
            tch::no_grad(|| {
                model
                    .model
                    .logits(&model.model.forward(&ids, None, None, false))
            }),
        );
        let formats: &[&str] = if method == "lora" {
            &["peft-lora"]
        } else {
            &["peft-lora", "peft-adalora"]
        };
        for format in formats {
            let out = dir.path().join(format!("{method}-{format}"));
            ok(&flexlora(&[
                Path::new("export"),
                Path::new("--run"),
                &run,
                Path::new("--format"),
                Path::new(format),
                Path::new("--output"),
                &out,
            ]));
            let config: Value = serde_json::from_str(
                &std::fs::read_to_string(out.join("adapter_config.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(config["task_type"], "CAUSAL_LM");
            assert_eq!(config["modules_to_save"], Value::Null);
            jobs.push(
                json!({"name": format!("{method}-{format}"), "base": smollm2(), "adapter": out}),
            );
        }
        let merged = dir.path().join(format!("{method}-merged"));
        ok(&flexlora(&[
            Path::new("merge"),
            Path::new("--run"),
            &run,
            Path::new("--output"),
            &merged,
        ]));
        jobs.push(json!({"name": format!("{method}-merged"), "merged": merged}));
    }
    let spec = dir.path().join("spec.json");
    std::fs::write(&spec, json!({ "jobs": jobs }).to_string()).unwrap();
    let golden = golden_with_args(
        "peft_causal_lm.py",
        &[spec.to_str().unwrap()],
        &[("input_ids", &ids)],
    );
    for (name, theirs) in &golden {
        let Some(job) = name.strip_prefix("logits.") else {
            continue;
        };
        if job == "base" {
            continue;
        }
        let method = job.split('-').next().unwrap();
        let d = max_abs_diff(&ours[method], theirs);
        let b = bound(theirs);
        eprintln!("{job}: max |ours - theirs| {d:e} (bound {b:e})");
        assert!(d <= b, "{job}: logits differ by {d:e} (bound {b:e})");
        // The adapters matter: far beyond the tolerance from the base model's logits.
        let moved = max_abs_diff(theirs, &golden["logits.base"]);
        assert!(
            moved > 100.0 * b,
            "{job}: the adapter moved the logits by {moved:e} only"
        );
    }
    assert_eq!(
        golden.keys().filter(|k| k.starts_with("logits.")).count(),
        6
    );
}

/// Adapters trained by Python PEFT on the real SmolLM2 (python/golden/peft_causal_lm_train.py:
/// one LoRA with a single rank and scale, one with rank and alpha patterns and rsLoRA) import
/// as decoder runs: our logits equal PEFT's, `generate --adapter` continues a prompt as PEFT's
/// greedy `generate` does, and `lm-eval --run` scores questions with them.
#[test]
fn peft_lora_adapters_trained_on_llama_import_as_decoder_runs() {
    let dir = tempfile::tempdir().unwrap();
    let prompt = "Question: Which is heavier, a kilogram of feathers or a pound of iron?\nAnswer:";
    let tokenizer = LmTokenizer::from_folder(&smollm2()).unwrap();
    let ids = Tensor::from_slice(&tokenizer.encode(prompt, true).unwrap()).unsqueeze(0);
    let adapters = dir.path().join("peft");
    let spec = dir.path().join("spec.json");
    let texts = [
        "Question: Is the sun a star?\nAnswer: yes",
        "Question: Can penguins fly?\nAnswer: no",
        "Question: Does water boil at 100 degrees Celsius at sea level?\nAnswer: yes",
        "Question: Is a tomato a vegetable in botany?\nAnswer: no",
    ];
    std::fs::write(
        &spec,
        json!({"base": smollm2(), "texts": texts, "steps": 4, "max_new_tokens": 8, "out": adapters})
            .to_string(),
    )
    .unwrap();
    let golden = golden_with_args(
        "peft_causal_lm_train.py",
        &[spec.to_str().unwrap()],
        &[("input_ids", &ids)],
    );
    let base_logits = tch::no_grad(|| {
        let base = flexlora::models::LlamaModel::from_folder(&smollm2(), Device::Cpu).unwrap();
        base.logits(&base.forward(&ids, None, None, false))
    });
    for (name, method) in [("lora_uniform", "lora"), ("lora_patterns", "flexlora")] {
        let run = dir.path().join(format!("{name}-run"));
        let s = |p: &Path| p.display().to_string();
        let out = run_flexlora(&[
            "import".into(),
            "--peft".into(),
            s(&adapters.join(name)),
            "--model".into(),
            s(&smollm2()),
            "--output".into(),
            s(&run),
            "--set".into(),
            "data.eval_per_task=1".into(),
            "--set".into(),
            "data.tasks=[\"boolq\", \"piqa\"]".into(),
        ]);
        ok(&out);
        let provenance: Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("import.json")).unwrap())
                .unwrap();
        assert_eq!(provenance["method"], method, "{name}");
        let (config, model) = LmModel::from_run(&run, Device::Cpu).unwrap();
        assert_eq!(
            serde_json::to_value(config.method.name).unwrap(),
            method,
            "{name}"
        );
        let ours = tch::no_grad(|| {
            model
                .model
                .logits(&model.model.forward(&ids, None, None, false))
        });
        let theirs = &golden[&format!("logits.{name}")];
        let (d, b) = (max_abs_diff(&ours, theirs), bound(theirs));
        eprintln!("{name}: max |ours - PEFT| {d:e} (bound {b:e})");
        assert!(
            d <= b,
            "{name}: logits differ from PEFT's by {d:e} (bound {b:e})"
        );
        let moved = max_abs_diff(theirs, &base_logits);
        assert!(
            moved > 100.0 * b,
            "{name}: training moved the logits by {moved:e} only"
        );

        let generated = run_flexlora(&[
            "generate".into(),
            "--adapter".into(),
            s(&run),
            "--prompt".into(),
            prompt.into(),
            "--max-new-tokens".into(),
            "8".into(),
        ]);
        ok(&generated);
        let expected_ids = Vec::<i64>::try_from(&golden[&format!("generated.{name}")]).unwrap();
        let expected = tokenizer.decode(&expected_ids, false).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&generated.stdout).trim_end_matches('\n'),
            expected,
            "{name}: greedy continuation"
        );
    }
    // Scoring with an imported adapter: one question of each of two tasks.
    let scores = dir.path().join("scores.json");
    let run = dir.path().join("lora_uniform-run");
    ok(&flexlora(&[
        Path::new("lm-eval"),
        Path::new("--run"),
        &run,
        Path::new("--quiet"),
        Path::new("--output"),
        &scores,
    ]));
    let table: Value = serde_json::from_str(&std::fs::read_to_string(&scores).unwrap()).unwrap();
    assert_eq!(table["outcomes"].as_array().unwrap().len(), 2);
    assert_eq!(table["run"], run.display().to_string());
}

/// `flexlora bench-decoder` on the real SmolLM2: every side reports its peak memory and step
/// times, and the first step's loss (new adapters change nothing) is PEFT's on flexlora's LoRA
/// and FlexLoRA sides alike (FlexLoRA's orthogonality regulariser must not leak into the task
/// loss a step reports).
#[test]
fn decoder_bench_sides_start_from_the_same_loss() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_flexlora(&[
        "bench-decoder".into(),
        "--batch".into(),
        "2".into(),
        "--steps".into(),
        "2".into(),
        "--threads".into(),
        "1".into(),
        "--workdir".into(),
        dir.path().display().to_string(),
    ]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("| PEFT lora |"));
    let sides: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("decoder-bench.json")).unwrap(),
    )
    .unwrap();
    let names: Vec<&str> = sides.iter().map(|s| s["side"].as_str().unwrap()).collect();
    assert_eq!(names, ["flexlora lora", "flexlora flexlora", "PEFT lora"]);
    let first = |s: &Value| s["losses"][0].as_f64().unwrap();
    let peft = first(&sides[2]);
    for s in &sides {
        assert!(s["peak_rss_mib"].as_f64().unwrap() > 100.0, "{s}");
        assert_eq!(s["step_seconds"].as_array().unwrap().len(), 2, "{s}");
        let d = (first(s) - peft).abs();
        assert!(
            d <= 1e-5 * peft,
            "{}: first loss {} vs PEFT's {peft}",
            s["side"],
            first(s)
        );
        // The second step's loss moved: the step trained something.
        assert_ne!(s["losses"][1].as_f64().unwrap(), first(s), "{s}");
    }
}

/// llama.cpp's name of a decoder projection and the head count whose rows its converter
/// reorders (q_proj, k_proj), written out here independently of the exporter.
fn llama_cpp_tensor(path: &str, heads: i64, kv_heads: i64) -> (String, Option<i64>) {
    let parts: Vec<&str> = path.split('.').collect();
    let (layer, module) = (parts[1], parts[3]);
    let (name, h) = match module {
        "q_proj" => ("attn_q", Some(heads)),
        "k_proj" => ("attn_k", Some(kv_heads)),
        "v_proj" => ("attn_v", None),
        "o_proj" => ("attn_output", None),
        "gate_proj" => ("ffn_gate", None),
        "up_proj" => ("ffn_up", None),
        "down_proj" => ("ffn_down", None),
        other => panic!("unexpected module {other}"),
    };
    (format!("blk.{layer}.{name}.weight"), h)
}

/// `flexlora export --format gguf-lora` on decoder runs with uneven ranks (FlexLoRA, ranks 0 to
/// 4 of 4 slots) and on a LoRA run, in f32, f16 and bf16, read back by the `gguf` package:
/// llama.cpp's metadata and names, one pair per matrix of rank > 0 with that matrix's rank, and
/// `lora_b · lora_a` (its rows put back in transformers' order for q and k) equal to the run's
/// `ΔW` within each type's rounding.
#[test]
fn decoder_runs_export_as_llama_cpp_lora_adapters() {
    let dir = tempfile::tempdir().unwrap();
    let llama = flexlora::models::LlamaConfig::from_folder(&smollm2()).unwrap();
    let (heads, kv_heads) = (llama.num_attention_heads, llama.num_key_value_heads);
    let mut files = Vec::new();
    let mut models = HashMap::new();
    for method in ["flexlora", "lora"] {
        let config = config(method);
        let model = perturbed(&config, 11);
        let run = dir.path().join(method);
        write_run(&run, &config, &model);
        let types: &[&str] = if method == "flexlora" {
            &["f32", "f16", "bf16"]
        } else {
            &["f32"]
        };
        for ty in types {
            let file = dir.path().join(format!("{method}-{ty}.gguf"));
            ok(&flexlora(&[
                Path::new("export"),
                Path::new("--run"),
                &run,
                Path::new("--format"),
                Path::new("gguf-lora"),
                Path::new("--outtype"),
                Path::new(ty),
                Path::new("--output"),
                &file,
            ]));
            files.push(json!({
                "name": format!("{method}-{ty}"), "path": file,
                "tensor_type": ty.to_uppercase(),
                "metadata": {"general.architecture": "llama", "general.type": "adapter",
                             "adapter.type": "lora", "adapter.lora.alpha": 0.0},
            }));
        }
        models.insert(method, model);
    }
    let spec = dir.path().join("gguf.json");
    std::fs::write(&spec, json!({ "files": files }).to_string()).unwrap();
    let read = golden_with_args("gguf_read.py", &[spec.to_str().unwrap()], &[]);
    for file in &files {
        let name = file["name"].as_str().unwrap();
        let (method, ty) = name.split_once('-').unwrap();
        let model = &models[method];
        let tolerance = match ty {
            "f32" => 1e-6,
            "f16" => 2e-3,
            _ => 1.6e-2,
        };
        let adapted: Vec<_> = model
            .model
            .linears()
            .into_iter()
            .filter(|l| l.adapter.is_some())
            .collect();
        let mut expected_pairs = 0;
        for (path, linear) in model.adapted_paths.iter().zip(adapted) {
            let adapter = linear.adapter.as_ref().unwrap();
            let rank = match adapter {
                Adapter::Svd(a) => a.active().iter().filter(|&&x| x).count(),
                Adapter::Lora(a) => a.b.size()[1] as usize,
            };
            let (tensor, rotary) = llama_cpp_tensor(path, heads, kv_heads);
            let key = |part: &str| format!("{name}.{tensor}.{part}");
            if rank == 0 {
                assert!(
                    !read.contains_key(&key("lora_a")),
                    "{name}: {path} has rank 0"
                );
                continue;
            }
            expected_pairs += 1;
            let (a, b) = (&read[&key("lora_a")], &read[&key("lora_b")]);
            assert_eq!(a.size()[0], rank as i64, "{name}: {path}'s rank");
            assert_eq!(b.size()[1], rank as i64, "{name}: {path}'s rank");
            let b = match rotary {
                // llama.cpp's order [head, head_dim/2, 2] back to transformers' [head, 2, head_dim/2].
                Some(h) => {
                    let s = b.size();
                    b.reshape([h, s[0] / h / 2, 2, s[1]])
                        .transpose(1, 2)
                        .reshape(s.as_slice())
                }
                None => b.shallow_clone(),
            };
            let ours = tch::no_grad(|| adapter.delta_weight());
            let theirs = b.matmul(a);
            let scale = ours.abs().max().double_value(&[]);
            let d = max_abs_diff(&ours, &theirs);
            assert!(
                d <= tolerance * scale,
                "{name}: {path}: ΔW differs by {d:e} (scale {scale:e})"
            );
        }
        let pairs = read.keys().filter(|k| k.starts_with(&format!("{name}.")));
        assert_eq!(
            pairs.count(),
            2 * expected_pairs,
            "{name}: tensors in the file"
        );
    }
}
