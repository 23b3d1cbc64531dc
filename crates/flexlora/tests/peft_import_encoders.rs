//! `flexlora import` beyond BERT: LoRA adapters made by Python PEFT (python/golden/peft_make.py)
//! on a small random DeBERTa-v3 sequence classifier (with the real DeBERTa-v3 tokenizer) and on
//! a small random DINOv2 image classifier import with PEFT's logits, through the library and
//! through `import` + `predict`; adapters under transformers 4's vision module names import
//! too; an adapter for another architecture is a clear error.

mod common;

use common::{golden_with_args, max_abs_diff, repo_root};
use flexlora::config::{Config, MethodName};
use flexlora::data::GreyImage;
use flexlora::models::{Architecture, ImageProcessor, ModelInput, TextTokenizer};
use flexlora::peft::import_peft;
use flexlora::train::model::TaskModel;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;
const MAX_LEN: usize = 64;

fn text(p: &Path) -> String {
    p.display().to_string()
}

fn run(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    common::run_flexlora(&args)
}

/// peft_make.py on `spec` with `inputs`: the adapter is written to `spec.out`.
fn make_adapter(dir: &Path, spec: &Value, inputs: &[(&str, &Tensor)]) -> HashMap<String, Tensor> {
    let path = dir.join("make-spec.json");
    std::fs::write(&path, spec.to_string()).unwrap();
    golden_with_args("peft_make.py", &[&text(&path)], inputs)
}

fn check_close(what: &str, ours: &Tensor, theirs: &Tensor) {
    let d = max_abs_diff(ours, theirs);
    eprintln!("{what}: max |ours - PEFT| = {d:.3e}");
    assert!(d <= TOL, "{what}: logits differ by {d:e} > {TOL:e}");
}

/// Our logits with and without the adapters (the second shows that they matter).
fn logits_both(model: &mut TaskModel, input: &ModelInput) -> (Tensor, Tensor) {
    let with = tch::no_grad(|| model.classifier.forward(input, false));
    for l in model.classifier.linears_mut() {
        l.adapter = None;
    }
    let without = tch::no_grad(|| model.classifier.forward(input, false));
    (with, without)
}

/// `config` with `model.path = model` and the `sets`.
fn template(config: &str, model: &Path, sets: &[String]) -> Config {
    let mut all = vec![format!("model.path={}", toml::Value::String(text(model)))];
    all.extend(sets.iter().cloned());
    Config::load(&repo_root().join(config), &all)
        .unwrap()
        .config
}

/// The probabilities of a predictions JSONL file, as `[n, classes]`.
fn probabilities(path: &Path) -> Tensor {
    let rows: Vec<Tensor> = common::jsonl(path)
        .iter()
        .map(|r| {
            let p: Vec<f64> = r["probabilities"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            Tensor::from_slice(&p)
        })
        .collect();
    Tensor::stack(&rows, 0)
}

#[test]
fn peft_lora_on_a_deberta_classifier_imports_with_peft_logits() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::tiny_deberta_v3(dir.path(), false);
    let (pos, neg) = common::polarity_sentences(50, 3);
    let texts: Vec<String> = pos.into_iter().chain(neg).collect();
    let adapter = dir.path().join("adapter");
    let golden = make_adapter(
        dir.path(),
        &json!({
            "base": base, "num_labels": 2, "seed": 1, "std": 0.1, "out": adapter,
            "texts": texts, "max_length": MAX_LEN,
            "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                     "target_modules": ["query_proj", "value_proj", "intermediate.dense"]},
        }),
        &[],
    );
    let data = common::polarity_slice(dir.path(), 20);
    let sets = [
        format!("data.path={}", toml::Value::String(text(&data))),
        format!("data.max_length={MAX_LEN}"),
    ];
    let tmpl = template("configs/default.toml", &base, &sets);
    let mut imported = import_peft(&adapter, Some(&base), &tmpl, Device::Cpu).unwrap();
    assert_eq!(imported.config.method.name, MethodName::Lora);
    assert_eq!(imported.ranks.len(), 6);
    assert_eq!(
        imported.ranks[0],
        ("encoder.layer.0.attention.self.query_proj".to_string(), 4)
    );
    let tok = TextTokenizer::from_folder(&base, MAX_LEN).unwrap();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let encoded = tok.encode(&refs, None, Device::Cpu).unwrap();
    assert!(
        encoded.input_ids.equal(&golden["input_ids"]),
        "the tokenizers agree"
    );
    let (ours, bare) = logits_both(&mut imported.model, &ModelInput::Text(encoded));
    check_close("DeBERTa LoRA", &ours, &golden["logits"]);
    assert!(max_abs_diff(&ours, &bare) > 1e-2, "the adapter matters");

    // The command line: import into a run directory, then predict the same texts.
    let run_dir = dir.path().join("run");
    let mut args = vec![
        "import".to_string(),
        "--peft".into(),
        text(&adapter),
        "--model".into(),
        text(&base),
        "--output".into(),
        text(&run_dir),
    ];
    for s in &sets {
        args.extend(["--set".into(), s.clone()]);
    }
    let o = common::run_flexlora(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let input = dir.path().join("texts.txt");
    std::fs::write(&input, texts.join("\n")).unwrap();
    let output = dir.path().join("p.jsonl");
    let o = run(&[
        "predict",
        "--run",
        &text(&run_dir),
        "--input",
        &text(&input),
        "--output",
        &text(&output),
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = golden["logits"].softmax(-1, Kind::Double);
    check_close(
        "DeBERTa import + predict (probabilities)",
        &probabilities(&output),
        &want,
    );
}

/// The first `n` test images of the real Fashion-MNIST.
fn fashion_images(n: usize) -> Vec<GreyImage> {
    let gz = std::fs::read(repo_root().join("assets/fashion-mnist/t10k-images-idx3-ubyte.gz"))
        .expect("run scripts/fetch-assets images");
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut bytes)
        .unwrap();
    (0..n)
        .map(|i| GreyImage {
            height: 28,
            width: 28,
            max: 255,
            pixels: bytes[16 + i * 784..16 + (i + 1) * 784].into(),
        })
        .collect()
}

#[test]
fn peft_lora_on_a_dinov2_classifier_imports_with_peft_logits() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::tiny_dinov2(dir.path());
    let images = fashion_images(4);
    let refs: Vec<&GreyImage> = images.iter().collect();
    let processor = ImageProcessor::from_folder(&base, Architecture::Dinov2, Some(20)).unwrap();
    let pixels = processor.pixel_values(&refs, Device::Cpu);
    let lora = |patterns: bool| {
        let mut l = json!({"r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                           "target_modules": ["q_proj", "v_proj", "fc1"],
                           "modules_to_save": ["classifier"]});
        if patterns {
            l["rank_pattern"] = json!({"fc1": 2});
            l["alpha_pattern"] = json!({"fc1": 6});
        }
        l
    };
    let tmpl = template(
        "configs/vision/fashion-mnist-1k.toml",
        &base,
        &["data.image_size=20".into()],
    );
    let mut imported_logits = HashMap::new();
    for (name, patterns, method) in [
        ("uniform", false, MethodName::Lora),
        ("patterns", true, MethodName::Flexlora),
    ] {
        let adapter = dir.path().join(name);
        let golden = make_adapter(
            dir.path(),
            &json!({"base": base, "num_labels": 10, "images": true, "seed": 2, "std": 0.1,
                    "out": adapter, "lora": lora(patterns)}),
            &[("pixel_values", &pixels)],
        );
        let mut imported = import_peft(&adapter, Some(&base), &tmpl, Device::Cpu).unwrap();
        assert_eq!(imported.config.method.name, method, "{name}");
        assert_eq!(
            imported.ranks[0],
            ("encoder.layer.0.attention.q_proj".to_string(), 4)
        );
        let input = ModelInput::Image(pixels.shallow_clone());
        let (ours, bare) = logits_both(&mut imported.model, &input);
        check_close(&format!("DINOv2 LoRA {name}"), &ours, &golden["logits"]);
        assert!(
            max_abs_diff(&ours, &bare) > 1e-3,
            "{name}: the adapter matters"
        );
        imported_logits.insert(name, (ours, golden));
    }

    // The same adapter under transformers 4's module names (`attention.attention.query`).
    let old = dir.path().join("old-names");
    std::fs::create_dir(&old).unwrap();
    std::fs::copy(
        dir.path().join("uniform/adapter_config.json"),
        old.join("adapter_config.json"),
    )
    .unwrap();
    let renamed: Vec<(String, Tensor)> =
        Tensor::read_safetensors(dir.path().join("uniform/adapter_model.safetensors"))
            .unwrap()
            .into_iter()
            .map(|(n, t)| {
                let n = n
                    .replace(".attention.q_proj.", ".attention.attention.query.")
                    .replace(".attention.v_proj.", ".attention.attention.value.");
                (n, t)
            })
            .collect();
    assert!(
        renamed
            .iter()
            .any(|(n, _)| n.contains("attention.attention.query"))
    );
    Tensor::write_safetensors(&renamed, old.join("adapter_model.safetensors")).unwrap();
    let mut imported = import_peft(&old, Some(&base), &tmpl, Device::Cpu).unwrap();
    assert_eq!(imported.ranks[0].0, "encoder.layer.0.attention.q_proj");
    let (ours, _) = logits_both(
        &mut imported.model,
        &ModelInput::Image(pixels.shallow_clone()),
    );
    assert!(
        ours.equal(&imported_logits["uniform"].0),
        "the same adapter, the same logits"
    );

    // The command line: import into a run on Fashion-MNIST, then predict PNG files of the
    // same images.
    let run_dir = dir.path().join("run");
    let o = run(&[
        "import",
        "--peft",
        &text(&dir.path().join("patterns")),
        "--model",
        &text(&base),
        "--output",
        &text(&run_dir),
        "--config",
        "configs/vision/fashion-mnist-1k.toml",
        "--set",
        "data.image_size=20",
        "--set",
        "data.train_examples=32",
        "--set",
        "data.validation_examples=16",
        "--set",
        "data.test_examples=16",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pngs = dir.path().join("pngs");
    std::fs::create_dir(&pngs).unwrap();
    for (i, img) in images.iter().enumerate() {
        image::GrayImage::from_raw(28, 28, img.pixels.to_vec())
            .unwrap()
            .save(pngs.join(format!("{i}.png")))
            .unwrap();
    }
    let output = dir.path().join("p.jsonl");
    let o = run(&[
        "predict",
        "--run",
        &text(&run_dir),
        "--input",
        &text(&pngs),
        "--output",
        &text(&output),
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = imported_logits["patterns"].1["logits"].softmax(-1, Kind::Double);
    check_close(
        "DINOv2 import + predict (probabilities)",
        &probabilities(&output),
        &want,
    );

    // A DINOv2 adapter is not for a ViT or a DeBERTa: a clear error.
    let deberta = common::tiny_deberta_v3(dir.path(), false);
    let o = run(&[
        "import",
        "--peft",
        &text(&dir.path().join("uniform")),
        "--model",
        &text(&deberta),
        "--output",
        &text(&dir.path().join("wrong")),
    ]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("module `dinov2.encoder.layer.0.attention.q_proj` is not under `deberta.`")
            && e.contains("another architecture's"),
        "{e}"
    );
    assert!(!dir.path().join("wrong").exists());
}
