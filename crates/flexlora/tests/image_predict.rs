//! `flexlora predict` on an image run: a short FlexLoRA run of a small random DINOv2 on real
//! Fashion-MNIST images, its test-split images written as PNG files, and `predict` on them
//! gives what `eval --predictions` gives on the same images through the run's data; bad image
//! input is a clear error that writes nothing.

mod common;

use flexlora::data::load_splits;
use std::path::{Path, PathBuf};

/// Trains the short run every test here uses and returns its directory.
fn short_run(dir: &Path) -> PathBuf {
    let model = common::tiny_dinov2(dir);
    let out = dir.join("run");
    let args = common::short_train_args(
        "configs/vision/fashion-mnist-1k.toml",
        &model,
        &out,
        "flexlora",
        &[
            "data.train_examples=32",
            "data.validation_examples=16",
            "data.test_examples=24",
            "data.image_size=20",
            "training.batch_size=8",
            "training.eval_batch_size=8",
        ],
    );
    let o = common::run_flexlora(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

fn run(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    common::run_flexlora(&args)
}

fn text(p: &Path) -> String {
    p.display().to_string()
}

/// `file` → (prediction, probabilities) of a predictions JSONL file.
fn rows(path: &Path, key: &str) -> Vec<(String, String, Vec<f64>)> {
    common::jsonl(path)
        .iter()
        .map(|r| {
            let id = match &r[key] {
                serde_json::Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            let probs = r["probabilities"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_f64().unwrap())
                .collect();
            (id, r["prediction"].as_str().unwrap().to_string(), probs)
        })
        .collect()
}

#[test]
fn predict_on_png_files_matches_eval_on_the_same_test_images() {
    let dir = tempfile::tempdir().unwrap();
    let out = short_run(dir.path());
    // The run's test split, as the run reads it (its data path is relative to the repository).
    let mut config = flexlora::train::load_run_config(&out).unwrap();
    config.data.path = common::repo_root().join(&config.data.path);
    let test = load_splits(&config.data).unwrap().test;
    assert_eq!(test.len(), 24);
    let pngs = dir.path().join("pngs");
    std::fs::create_dir(&pngs).unwrap();
    for (i, e) in test.iter().enumerate() {
        let img = e.image.as_ref().unwrap();
        assert_eq!((img.height, img.width, img.max), (28, 28, 255));
        let grey = image::GrayImage::from_raw(img.width, img.height, img.pixels.to_vec()).unwrap();
        grey.save(pngs.join(format!("test-{i:03}.png"))).unwrap();
    }
    // Not an image by its name: left out, and said so.
    std::fs::write(pngs.join("README.txt"), "Fashion-MNIST test images").unwrap();

    let evaluated = dir.path().join("eval.jsonl");
    let e = run(&[
        "eval",
        "--run",
        &text(&out),
        "--predictions",
        &text(&evaluated),
    ]);
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    let predicted = dir.path().join("p.jsonl");
    let p = run(&[
        "predict",
        "--run",
        &text(&out),
        "--input",
        &text(&pngs),
        "--output",
        &text(&predicted),
    ]);
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let stderr = String::from_utf8_lossy(&p.stderr);
    assert!(
        stderr.contains("left out 1 file(s)") && stderr.contains("README.txt"),
        "{stderr}"
    );
    assert!(stderr.contains("predicted 24 images"), "{stderr}");

    let ev = rows(&evaluated, "index");
    let pr = rows(&predicted, "file");
    assert_eq!((ev.len(), pr.len()), (24, 24));
    let labels: Vec<String> = (0..10).map(|c| c.to_string()).collect();
    for (i, ((index, ev_label, ev_p), (file, pr_label, pr_p))) in ev.iter().zip(&pr).enumerate() {
        assert_eq!(index, &i.to_string());
        assert_eq!(file, &format!("test-{i:03}.png"));
        assert!(labels.contains(pr_label), "{pr_label}");
        // The same images in the same batches of 8: the same numbers.
        assert_eq!(pr_label, ev_label, "{file}");
        assert_eq!(pr_p.len(), 10);
        let diff = ev_p
            .iter()
            .zip(pr_p)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(diff <= 1e-6, "{file}: probabilities differ by {diff}");
        let sum: f64 = pr_p.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "{sum}");
    }
    // eval's rows carry the true label too.
    let first = &common::jsonl(&evaluated)[0];
    let want = test[0].label as usize;
    assert_eq!(first["label"], want.to_string());

    // One file, in colour (R = G = B: the same grey), as CSV.
    let rgb_file = dir.path().join("seven.png");
    let img = test[7].image.as_ref().unwrap();
    let rgb: Vec<u8> = img.pixels.iter().flat_map(|&v| [v, v, v]).collect();
    image::RgbImage::from_raw(img.width, img.height, rgb)
        .unwrap()
        .save(&rgb_file)
        .unwrap();
    let csv_out = dir.path().join("one.csv");
    let p = run(&[
        "predict",
        "--run",
        &text(&out),
        "--input",
        &text(&rgb_file),
        "--output",
        &text(&csv_out),
    ]);
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let csv = std::fs::read_to_string(&csv_out).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "file,prediction,p_0,p_1,p_2,p_3,p_4,p_5,p_6,p_7,p_8,p_9"
    );
    assert_eq!(lines.len(), 2, "{csv}");
    let fields: Vec<&str> = lines[1].split(',').collect();
    assert_eq!((fields[0], fields[1]), ("seven.png", pr[7].1.as_str()));
    for (f, want) in fields[2..].iter().zip(&pr[7].2) {
        let got: f64 = f.parse().unwrap();
        // A batch of one instead of eight, and six decimals.
        assert!((got - want).abs() < 2e-6, "{got} vs {want}");
    }
}

#[test]
fn bad_image_input_is_a_clear_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = short_run(dir.path());
    let output = dir.path().join("p.csv");
    let fails = |input: &Path| {
        let o = run(&[
            "predict",
            "--run",
            &text(&out),
            "--input",
            &text(input),
            "--output",
            &text(&output),
        ]);
        assert!(!o.status.success());
        assert!(
            !output.exists(),
            "an output was written for {}",
            input.display()
        );
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    // A text file, with and without an image name.
    for name in ["notes.txt", "fake.png"] {
        let path = dir.path().join(name);
        std::fs::write(&path, "not an image at all").unwrap();
        let e = fails(&path);
        assert!(
            e.contains(&format!(
                "{name}: not an image this build decodes (png, jpg"
            )),
            "{e}"
        );
    }
    // An empty folder, and one with no image files.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = fails(&empty);
    assert!(
        e.contains("empty: the folder holds no image files (expected files ending in .png, .jpg"),
        "{e}"
    );
    std::fs::write(empty.join("a.csv"), "1,2,3").unwrap();
    let e = fails(&empty);
    assert!(
        e.contains("holds no image files") && e.contains("it holds 1 other file(s)"),
        "{e}"
    );
    // A folder with one broken image among good ones: nothing is written.
    let mixed = dir.path().join("mixed");
    std::fs::create_dir(&mixed).unwrap();
    image::GrayImage::new(28, 28)
        .save(mixed.join("a.png"))
        .unwrap();
    std::fs::write(mixed.join("b.jpg"), [0xff, 0xd8, 0xff, 0x00]).unwrap();
    let e = fails(&mixed);
    assert!(e.contains("b.jpg: not an image this build decodes"), "{e}");
    let e = fails(&dir.path().join("missing"));
    assert!(
        e.contains("cannot read input") && e.contains("missing"),
        "{e}"
    );
}
