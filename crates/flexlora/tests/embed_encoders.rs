//! `flexlora embed` beyond BERT, against transformers (python/golden/embed.py): a DeBERTa-v3
//! (small, random, with the real DeBERTa-v3 tokenizer) mean-pools real sentences; the real
//! DINOv2 ViT-S/14 and a small random ViT embed real Fashion-MNIST images as transformers'
//! `pooler_output`; decoders, pooler-less ViTs and bad image input are clear errors.

mod common;

use common::{assert_close, golden_with_args, repo_root};
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The first `n` test images of the real Fashion-MNIST (28 x 28, 8-bit grey).
fn fashion_images(n: usize) -> Vec<Vec<u8>> {
    let gz = std::fs::read(repo_root().join("assets/fashion-mnist/t10k-images-idx3-ubyte.gz"))
        .expect("run scripts/fetch-assets images");
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut bytes)
        .unwrap();
    (0..n)
        .map(|i| bytes[16 + i * 784..16 + (i + 1) * 784].to_vec())
        .collect()
}

/// Runs `flexlora args` from the repository root.
fn run(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    common::run_flexlora(&args)
}

fn text(p: &Path) -> String {
    p.display().to_string()
}

/// The `embedding` of every line of a JSONL file as `[n, dim]`, and the `key` field of each.
fn embeddings(path: &Path, key: &str) -> (Tensor, Vec<serde_json::Value>) {
    let rows = common::jsonl(path);
    let dim = rows[0]["embedding"].as_array().unwrap().len() as i64;
    let flat: Vec<f32> = rows
        .iter()
        .flat_map(|r| {
            let e = r["embedding"].as_array().unwrap();
            assert_eq!(e.len() as i64, dim);
            e.iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    let keys = rows.iter().map(|r| r[key].clone()).collect();
    (
        Tensor::from_slice(&flat).view([rows.len() as i64, dim]),
        keys,
    )
}

/// transformers' embeddings of the images `pixels` (8-bit grey) with the model in `folder`.
fn golden_images(
    dir: &Path,
    folder: &Path,
    pixels: &[(u32, u32, Vec<u8>)],
    size: Option<u32>,
) -> Tensor {
    let spec = dir.join("embed-spec.json");
    std::fs::write(
        &spec,
        serde_json::json!({"folder": folder, "image_size": size}).to_string(),
    )
    .unwrap();
    let tensors: Vec<(String, Tensor)> = pixels
        .iter()
        .enumerate()
        .map(|(i, (h, w, p))| {
            let t = Tensor::from_slice(p).view([*h as i64, *w as i64]);
            (format!("pixels.{i}"), t)
        })
        .collect();
    let inputs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = golden_with_args("embed.py", &[&text(&spec)], &inputs);
    out.remove("embeddings").unwrap()
}

#[test]
fn deberta_embeddings_are_transformers_mean_pooled_hidden_states() {
    let dir = tempfile::tempdir().unwrap();
    let folder = common::tiny_deberta_v3(dir.path(), true);
    // Real sentences of different lengths (so batches pad), and an empty line that is skipped.
    let (pos, neg) = common::polarity_sentences(0, 3);
    let texts: Vec<String> = pos.into_iter().chain(neg).collect();
    let input = dir.path().join("texts.txt");
    std::fs::write(
        &input,
        format!("{}\n\n{}\n", texts[..2].join("\n"), texts[2..].join("\n")),
    )
    .unwrap();
    let output = dir.path().join("e.jsonl");
    let o = run(&[
        "embed",
        "--model",
        &text(&folder),
        "--input",
        &text(&input),
        "--output",
        &text(&output),
        "--batch-size",
        "4",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("embedded 6 texts"));
    let (ours, lines) = embeddings(&output, "line");
    assert_eq!(lines, [1, 2, 4, 5, 6, 7].map(serde_json::Value::from));
    let spec = dir.path().join("embed-spec.json");
    std::fs::write(
        &spec,
        serde_json::json!({"folder": folder, "texts": texts, "max_length": 512}).to_string(),
    )
    .unwrap();
    let want = golden_with_args("embed.py", &[&text(&spec)], &[]);
    assert_eq!(ours.size(), [6, 32]);
    assert_close("DeBERTa embeddings", &ours, &want["embeddings"], 1e-5);
}

#[test]
fn dinov2_embeddings_are_transformers_pooler_output() {
    let dir = tempfile::tempdir().unwrap();
    let folder = repo_root().join("assets/dinov2-vits14");
    assert!(
        folder.join("model.safetensors").exists(),
        "run scripts/fetch-assets vision"
    );
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let mut pixels: Vec<(u32, u32, Vec<u8>)> = Vec::new();
    for (i, p) in fashion_images(3).into_iter().enumerate() {
        let img = image::GrayImage::from_raw(28, 28, p.clone()).unwrap();
        img.save(images.join(format!("{i}.png"))).unwrap();
        pixels.push((28, 28, p));
    }
    // Not square, and in colour with R = G = B: squashed to the model's square, the same grey.
    let (h, w) = (21u32, 35u32);
    let wide: Vec<u8> = (0..h * w).map(|i| ((i * 7) % 256) as u8).collect();
    let rgb: Vec<u8> = wide.iter().flat_map(|&v| [v, v, v]).collect();
    image::RgbImage::from_raw(w, h, rgb)
        .unwrap()
        .save(images.join("3-wide.png"))
        .unwrap();
    pixels.push((h, w, wide));
    std::fs::write(images.join("labels.txt"), "0 1 2").unwrap();
    let output = dir.path().join("e.jsonl");
    let o = run(&[
        "embed",
        "--model",
        &text(&folder),
        "--input",
        &text(&images),
        "--output",
        &text(&output),
        "--batch-size",
        "3",
        "--device",
        "cpu",
        "--threads",
        "2",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("embedded 4 images") && stderr.contains("labels.txt"),
        "{stderr}"
    );
    let (ours, files) = embeddings(&output, "file");
    assert_eq!(
        files,
        ["0.png", "1.png", "2.png", "3-wide.png"].map(serde_json::Value::from)
    );
    // preprocessor_config.json's crop size, 224: transformers' class token after the norm.
    let want = golden_images(dir.path(), &folder, &pixels, None);
    assert_eq!(ours.size(), [4, 384]);
    assert_close("DINOv2 pooler_output", &ours, &want, 1e-4);

    // --normalize: unit vectors in the same directions.
    let normed = dir.path().join("n.jsonl");
    let o = run(&[
        "embed",
        "--model",
        &text(&folder),
        "--input",
        &text(&images.join("0.png")),
        "--output",
        &text(&normed),
        "--normalize",
        "--device",
        "cpu",
        "--image-size",
        "56",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (one, _) = embeddings(&normed, "file");
    let want = golden_images(dir.path(), &folder, &pixels[..1], Some(56));
    let want = &want / want.norm_scalaropt_dim(2.0, [1], true);
    assert_close("DINOv2 at 56 pixels, normalised", &one, &want, 1e-4);
}

/// A small random ViT (patch 4, 16 pixels) saved as transformers' `ViTModel` with its pooler,
/// or (`bare` false) as a `ViTForImageClassification`, which has none.
fn tiny_vit(dir: &Path, bare: bool) -> PathBuf {
    let folder = dir.join(if bare { "vit" } else { "vit-classifier" });
    let spec = dir.join(format!("vit-spec-{bare}.json"));
    std::fs::write(
        &spec,
        serde_json::json!({
            "model_type": "vit",
            "config": {
                "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                "intermediate_size": 64, "patch_size": 4, "image_size": 16
            },
            "seed": 1, "num_labels": 3, "std": 0.1, "bare": bare
        })
        .to_string(),
    )
    .unwrap();
    let px = Tensor::zeros([1, 3, 16, 16], (Kind::Float, Device::Cpu));
    golden_with_args(
        "vit.py",
        &[&text(&spec), &text(&folder)],
        &[("pixel_values.0", &px)],
    );
    folder
}

#[test]
fn vit_embeddings_go_through_its_pooler() {
    let dir = tempfile::tempdir().unwrap();
    let folder = tiny_vit(dir.path(), true);
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let pixels: Vec<(u32, u32, Vec<u8>)> =
        fashion_images(5).into_iter().map(|p| (28, 28, p)).collect();
    for (i, (h, w, p)) in pixels.iter().enumerate() {
        let img = image::GrayImage::from_raw(*w, *h, p.clone()).unwrap();
        img.save(images.join(format!("img{i}.png"))).unwrap();
    }
    let output = dir.path().join("e.jsonl");
    // 20 pixels: a 5 x 5 patch grid, so the 4 x 4 position table is interpolated.
    let o = run(&[
        "embed",
        "--model",
        &text(&folder),
        "--input",
        &text(&images),
        "--output",
        &text(&output),
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--image-size",
        "20",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (ours, _) = embeddings(&output, "file");
    let want = golden_images(dir.path(), &folder, &pixels, Some(20));
    assert_close("ViT pooler_output", &ours, &want, 1e-5);
    // pooler_output is tanh of something: inside (-1, 1).
    assert!(ours.abs().max().double_value(&[]) < 1.0);
}

#[test]
fn embed_refuses_decoders_pooler_less_vits_and_bad_images() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("o.jsonl");
    let fails = |model: &Path, input: &Path, extra: &[&str]| {
        let mut args = vec!["embed", "--model"];
        let (m, i, o) = (text(model), text(input), text(&output));
        args.extend([
            m.as_str(),
            "--input",
            i.as_str(),
            "--output",
            o.as_str(),
            "--device",
            "cpu",
        ]);
        args.extend(extra);
        let out = run(&args);
        assert!(!out.status.success());
        assert!(!output.exists(), "nothing half-written");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let texts = dir.path().join("t.txt");
    std::fs::write(&texts, "hello\n").unwrap();
    let e = fails(
        &repo_root().join("assets/smollm2-135m-instruct"),
        &texts,
        &[],
    );
    assert!(
        e.contains("config.json: model_type \"llama\" is a decoder; `embed` takes encoders"),
        "{e}"
    );
    let classifier = tiny_vit(dir.path(), false);
    let png = dir.path().join("a.png");
    image::GrayImage::new(16, 16).save(&png).unwrap();
    let e = fails(&classifier, &png, &[]);
    assert!(
        e.contains(
            "model.safetensors: no `pooler.dense.weight`: this ViT checkpoint has no pooler"
        ),
        "{e}"
    );
    let dinov2 = repo_root().join("assets/dinov2-vits14");
    let e = fails(&dinov2, &texts, &[]);
    assert!(e.contains("t.txt: not an image this build decodes"), "{e}");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = fails(&dinov2, &empty, &[]);
    assert!(e.contains("the folder holds no image files"), "{e}");
    let e = fails(&dinov2, &png, &["--image-size", "10"]);
    assert!(
        e.contains("--image-size = 10: smaller than one 14x14 patch"),
        "{e}"
    );
}
