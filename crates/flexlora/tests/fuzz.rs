//! Mutation fuzzing of the parsers of outside input: each target starts from a valid seed file
//! (the project's own config, real data, the real model's config.json and tokenizer.json, a
//! safetensors file), applies random byte edits (flips, inserts of format tokens, deletions,
//! truncation, duplicated ranges) and asserts that the parser returns `Ok` or `Err` and never
//! panics. Short mode (CI): 1,000 cases per target (the tokenizer target a tenth: its seed is
//! 700 kB; the run-folder targets half). Long mode, `FLEXLORA_FUZZ_CASES` cases for every
//! target: `FLEXLORA_FUZZ_CASES=100000 cargo test --release -p flexlora --test fuzz --
//! --nocapture --test-threads 1` (figures in docs/reliability.md).

mod common;

use flexlora::config::Config;
use flexlora::models::{BertConfig, TextTokenizer, Weights};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use tch::{Kind, Tensor};

/// Cases per target: `FLEXLORA_FUZZ_CASES` when set (long mode: every target gets that many),
/// else 1,000 divided by `divisor` (short mode; slow targets take fewer).
fn cases(divisor: u32) -> u32 {
    match std::env::var("FLEXLORA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(n) => n,
        None => (1_000u32 / divisor).max(10),
    }
}

/// Bytes that mean something in the formats fuzzed here.
const TOKENS: &[&str] = &[
    "=",
    "[",
    "]",
    "{",
    "}",
    "\"",
    "'",
    ",",
    ":",
    "\n",
    "\t",
    "\r\n",
    "\\",
    "-1",
    "0",
    "1e309",
    "nan",
    "inf",
    "-inf",
    "99999999999999999999",
    "true",
    "null",
    "\u{0}",
    "\u{feff}",
    "é",
    "[[",
    "]]",
    "#",
    ".",
    "..",
    "/",
    "\"\"\"",
];

#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, usize),
    Delete(usize, usize),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
        4 => (any::<usize>(), 0..TOKENS.len()).prop_map(|(i, t)| Edit::Insert(i, t)),
        2 => (any::<usize>(), 1usize..64).prop_map(|(i, n)| Edit::Delete(i, n)),
        1 => any::<usize>().prop_map(Edit::Truncate),
        1 => (any::<usize>(), 1usize..256).prop_map(|(i, n)| Edit::Duplicate(i, n)),
    ];
    proptest::collection::vec(edit, 1..6)
}

fn apply(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for e in edits {
        let len = v.len().max(1);
        match *e {
            Edit::Flip(i, b) => {
                if !v.is_empty() {
                    let i = i % v.len();
                    v[i] ^= b.max(1);
                }
            }
            Edit::Insert(i, t) => {
                let i = i % (v.len() + 1);
                v.splice(i..i, TOKENS[t].bytes());
            }
            Edit::Delete(i, n) => {
                let i = i % len;
                let end = (i + n).min(v.len());
                if i < end {
                    v.drain(i..end);
                }
            }
            Edit::Truncate(i) => v.truncate(i % len),
            Edit::Duplicate(i, n) => {
                if !v.is_empty() {
                    let i = i % v.len();
                    let end = (i + n).min(v.len());
                    let copy = v[i..end].to_vec();
                    v.splice(end..end, copy);
                }
            }
        }
    }
    v
}

/// Runs `target` on `cases` mutations of `seed` written to `file`; fails on any panic.
fn fuzz(name: &str, seed: &[u8], file: &Path, cases: u32, target: impl Fn(&Path)) {
    let started = std::time::Instant::now();
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let result = runner.run(&edits(), |e| {
        let bytes = apply(seed, &e);
        std::fs::write(file, &bytes).unwrap();
        catch_unwind(AssertUnwindSafe(|| target(file))).map_err(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            TestCaseError::fail(format!("{name} panicked: {msg}"))
        })
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    // The long run's figures for docs/reliability.md (visible with --nocapture).
    eprintln!(
        "fuzz {name}: {cases} cases, no panic, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn run_config_toml_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let seed = std::fs::read(common::repo_root().join("configs/default.toml")).unwrap();
    let file = dir.path().join("config.toml");
    fuzz("run config", &seed, &file, cases(1), |p| {
        if let Ok(loaded) = Config::load(p, &[]) {
            // Everything derived from a validated config must be computable.
            let c = loaded.config;
            let t = c.total_steps(2800);
            let _ = c.adjustment_schedule(t).moves_at(t / 2);
            let _ = c.adalora_budget(36, t);
        }
    });
}

#[test]
fn set_overrides_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::repo_root().join("configs/default.toml");
    let seed = b"schedule.t_init=30".to_vec();
    let file = dir.path().join("override");
    fuzz("--set", &seed, &file, cases(1), |p| {
        let arg = String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned();
        let _ = Config::load(&config, &[arg]);
    });
}

/// The data readers with each format's layout (CSV and TSV from the real Pang & Lee file,
/// JSONL and Parquet built from the same sentences).
#[test]
fn data_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (pos, neg) = common::polarity_sentences(0, 10);
    let rows: Vec<(&str, &String)> = pos
        .iter()
        .map(|s| ("1", s))
        .chain(neg.iter().map(|s| ("-1", s)))
        .collect();
    let csv: String = rows
        .iter()
        .map(|(l, s)| format!("{l},\"{}\"\n", s.replace('"', "\"\"")))
        .collect();
    let tsv: String = std::iter::once("label\tsentence\n".to_string())
        .chain(rows.iter().map(|(l, s)| format!("{l}\t{s}\n")))
        .collect();
    let jsonl: String = rows
        .iter()
        .map(|(l, s)| format!("{}\n", serde_json::json!({"label": l, "text": s})))
        .collect();
    let base = Config::load(&common::repo_root().join("configs/default.toml"), &[])
        .unwrap()
        .config;
    for (format, seed, has_header, text, label) in [
        ("csv", csv, false, "1", "0"),
        ("tsv", tsv, true, "\"sentence\"", "\"label\""),
        ("jsonl", jsonl, false, "\"text\"", "\"label\""),
    ] {
        let file = dir.path().join(format!("data.{format}"));
        let cfg = Config::load(
            &common::repo_root().join("configs/default.toml"),
            &[
                format!("data.path={:?}", file.display().to_string()),
                format!("data.format=\"{format}\""),
                format!("data.has_header={has_header}"),
                format!("data.text_column={text}"),
                format!("data.label_column={label}"),
            ],
        )
        .unwrap()
        .config;
        assert_ne!(cfg.data, base.data);
        fuzz(format, seed.as_bytes(), &file, cases(1), |_| {
            let _ = flexlora::data::load_splits(&cfg.data);
        });
    }
    // An Arrow IPC stream file: the real MRPC pairs of a Hugging Face save_to_disk folder.
    let arrow = common::repo_root()
        .join("assets/hf_datasets/glue/mrpc/validation/data-00000-of-00001.arrow");
    let seed = std::fs::read(&arrow).expect("run scripts/fetch-assets");
    let file = dir.path().join("data.arrow");
    let cfg = Config::load(
        &common::repo_root().join("configs/mrpc.toml"),
        &[format!("data.path={:?}", file.display().to_string())],
    )
    .unwrap()
    .config;
    fuzz("arrow", &seed, &file, cases(4), |_| {
        let _ = flexlora::data::load_splits(&cfg.data);
    });
    // A Parquet file of the same real sentences (snappy, two row groups), read by column name.
    let file = dir.path().join("data.parquet");
    let seed = parquet_seed(&rows);
    let cfg = Config::load(
        &common::repo_root().join("configs/default.toml"),
        &[
            format!("data.path={:?}", file.display().to_string()),
            "data.format=\"parquet\"".into(),
            "data.text_column=\"sentence\"".into(),
            "data.label_column=\"label\"".into(),
        ],
    )
    .unwrap()
    .config;
    fuzz("parquet", &seed, &file, cases(4), |_| {
        let _ = flexlora::data::count_examples(&cfg.data);
        let _ = flexlora::data::load_splits(&cfg.data);
    });
}

/// `(label, sentence)` rows as the bytes of a snappy Parquet file of two row groups.
fn parquet_seed(rows: &[(&str, &String)]) -> Vec<u8> {
    use arrow_array::{ArrayRef, RecordBatch, StringArray};
    let labels: ArrayRef =
        std::sync::Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0)));
    let texts: ArrayRef = std::sync::Arc::new(StringArray::from_iter_values(
        rows.iter().map(|r| r.1.as_str()),
    ));
    let batch = RecordBatch::try_from_iter([("label", labels), ("sentence", texts)]).unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_max_row_group_row_count(Some(rows.len() / 2))
        .build();
    let mut bytes = Vec::new();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(&mut bytes, batch.schema(), Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    bytes
}

/// An IDX pair of the first `n` Fashion-MNIST training images in `dir`.
fn idx_slice(dir: &Path, n: usize) -> (Vec<u8>, Vec<u8>) {
    use std::io::Read;
    let read = |name: &str| {
        let path = common::repo_root().join("assets/fashion-mnist").join(name);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(
            std::fs::File::open(&path).expect("run scripts/fetch-assets images"),
        )
        .read_to_end(&mut out)
        .unwrap();
        out
    };
    let (images, labels) = (
        read("train-images-idx3-ubyte.gz"),
        read("train-labels-idx1-ubyte.gz"),
    );
    let mut img = vec![0, 0, 8, 3];
    img.extend((n as u32).to_be_bytes());
    img.extend(&images[8..16 + 784 * n]);
    let mut lab = vec![0, 0, 8, 1];
    lab.extend((n as u32).to_be_bytes());
    lab.extend(&labels[8..8 + n]);
    std::fs::write(dir.join("train-images-idx3-ubyte"), &img).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte"), &lab).unwrap();
    (img, lab)
}

#[test]
fn image_files_never_panic() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let (img, lab) = idx_slice(dir.path(), 40);
    let keys = |path: &Path, format: &str, extra: &[&str]| {
        let mut sets = vec![
            format!("data.path={:?}", path.display().to_string()),
            format!("data.format=\"{format}\""),
            "data.train_examples=20".into(),
            "data.validation_examples=10".into(),
        ];
        sets.extend(extra.iter().map(|s| s.to_string()));
        Config::load(
            &common::repo_root().join("configs/vision/fashion-mnist-1k.toml"),
            &sets,
        )
        .unwrap()
        .config
    };
    let cfg = keys(dir.path(), "idx", &[]);
    assert_eq!(
        flexlora::data::load_splits(&cfg.data).unwrap().train.len(),
        20
    );
    // Every image goes through the preprocessing too (resize, normalise).
    let processor = flexlora::models::ImageProcessor {
        size: 28,
        mean: flexlora::models::image::IMAGENET_MEAN,
        std: flexlora::models::image::IMAGENET_STD,
    };
    let load = |cfg: &Config| {
        if let Ok(s) = flexlora::data::load_splits(&cfg.data) {
            let images: Vec<_> = s.train.iter().filter_map(|e| e.image.as_ref()).collect();
            let _ = processor.pixel_values(&images, tch::Device::Cpu);
        }
    };
    let images = dir.path().join("train-images-idx3-ubyte");
    fuzz("idx images", &img, &images, cases(2), |_| load(&cfg));
    std::fs::write(&images, &img).unwrap();
    let labels = dir.path().join("train-labels-idx1-ubyte");
    fuzz("idx labels", &lab, &labels, cases(2), |_| load(&cfg));
    std::fs::write(&labels, &lab).unwrap();
    // The same images gzipped: the decoder sees the corrupt bytes.
    std::fs::remove_file(&images).unwrap();
    let gz_path = dir.path().join("train-images-idx3-ubyte.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&img).unwrap();
    let gz = enc.finish().unwrap();
    fuzz("idx.gz", &gz, &gz_path, cases(2), |_| load(&cfg));
    // A pixel CSV: the real 8x8 digits' first 60 rows.
    let digits = {
        use std::io::Read;
        let mut text = String::new();
        flate2::read::GzDecoder::new(
            std::fs::File::open(common::repo_root().join("assets/digits/digits.csv.gz")).unwrap(),
        )
        .read_to_string(&mut text)
        .unwrap();
        text.lines()
            .take(60)
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    };
    let csv = dir.path().join("digits.csv");
    let cfg = keys(
        &csv,
        "pixel_csv",
        &[
            "data.label_column=64",
            "data.image_shape=[8, 8]",
            "data.pixel_max=16",
        ],
    );
    std::fs::write(&csv, &digits).unwrap();
    assert_eq!(
        flexlora::data::load_splits(&cfg.data).unwrap().test.len(),
        30
    );
    fuzz("pixel csv", digits.as_bytes(), &csv, cases(2), |_| {
        load(&cfg)
    });
    // The converted DINOv2 folder's config.json and preprocessor_config.json.
    let real = common::repo_root().join("assets/dinov2-vits14");
    let folder = dir.path().join("dinov2");
    std::fs::create_dir_all(&folder).unwrap();
    for name in ["config.json", "preprocessor_config.json"] {
        let seed = std::fs::read(real.join(name)).expect("run scripts/fetch-assets vision");
        for other in ["config.json", "preprocessor_config.json"] {
            std::fs::copy(real.join(other), folder.join(other)).unwrap();
        }
        fuzz(
            &format!("dinov2 {name}"),
            &seed,
            &folder.join(name),
            cases(2),
            |_| {
                let _ = flexlora::models::VitConfig::from_folder(&folder);
                let _ = flexlora::models::HfNames::of_folder(&folder);
                if let Ok(p) = flexlora::models::ImageProcessor::from_folder(
                    &folder,
                    flexlora::models::Architecture::Dinov2,
                    None,
                ) {
                    let _ = p.size;
                }
            },
        );
    }
}

#[test]
fn model_config_json_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let seed = std::fs::read(common::minilm().join("config.json")).unwrap();
    let file = dir.path().join("config.json");
    fuzz("config.json", &seed, &file, cases(1), |p| {
        let _ = flexlora::models::hf::read_config::<BertConfig>(p.parent().unwrap());
    });
    // A DeBERTa-v3-base-style config.json (the fields of microsoft/deberta-v3-base's), through
    // the architecture dispatch and DeBERTa's own checks.
    let deberta = serde_json::json!({
        "model_type": "deberta-v2", "vocab_size": 128100, "hidden_size": 768,
        "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 512, "type_vocab_size": 0, "initializer_range": 0.02,
        "layer_norm_eps": 1e-7, "relative_attention": true, "max_relative_positions": -1,
        "position_buckets": 256, "norm_rel_ebd": "layer_norm", "share_att_key": true,
        "pos_att_type": ["p2c", "c2p"], "position_biased_input": false, "pad_token_id": 0
    });
    let seed = serde_json::to_vec_pretty(&deberta).unwrap();
    let file = dir.path().join("deberta").join("config.json");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, &seed).unwrap();
    assert!(flexlora::models::DebertaV2Config::from_folder(file.parent().unwrap()).is_ok());
    fuzz("deberta config.json", &seed, &file, cases(1), |p| {
        let folder = p.parent().unwrap();
        let _ = flexlora::models::DebertaV2Config::from_folder(folder);
        let _ = flexlora::models::HfNames::of_folder(folder);
    });
}

#[test]
fn safetensors_headers_and_offsets_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("model.safetensors");
    let a = Tensor::randn([4, 3], (Kind::Float, tch::Device::Cpu));
    let b = Tensor::arange(5, (Kind::Int64, tch::Device::Cpu));
    let c = Tensor::ones([2], (Kind::Float, tch::Device::Cpu));
    Tensor::write_safetensors(&[("bert.a", &a), ("b", &b), ("c", &c)], &file).unwrap();
    let seed = std::fs::read(&file).unwrap();
    fuzz("safetensors", &seed, &file, cases(1), |p| {
        if let Ok(w) = Weights::read(p.parent().unwrap(), "bert.") {
            for (name, shape) in [("a", vec![4, 3]), ("b", vec![5]), ("c", vec![2])] {
                let _ = w.tensor(name, &shape, Kind::Float, tch::Device::Cpu);
            }
        }
    });
}

#[test]
fn tokenizer_json_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let seed = std::fs::read(common::minilm().join("tokenizer.json")).unwrap();
    let file = dir.path().join("tokenizer.json");
    fuzz("tokenizer.json", &seed, &file, cases(10), |p| {
        if let Ok(t) = TextTokenizer::from_folder(p.parent().unwrap(), 32) {
            let _ = t.encode(
                &["a fuzzed tokenizer still encodes"],
                None,
                tch::Device::Cpu,
            );
        }
    });
}

/// Regression (found by the long run, docs/reliability.md): a `decoder` object that is not
/// valid JSON (here a non-string key) made the tokenizers crate panic (`expect("Helper")`);
/// it is a clear error naming the file.
#[test]
fn regression_tokenizer_decoder_with_a_non_string_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(common::minilm().join("tokenizer.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["decoder"] = serde_json::json!("DECODER");
    let broken = serde_json::to_string(&v)
        .unwrap()
        .replace("\"DECODER\"", r#"{"type":"WordPiece",1:true}"#);
    std::fs::write(dir.path().join("tokenizer.json"), broken).unwrap();
    let result = catch_unwind(|| TextTokenizer::from_folder(dir.path(), 32));
    let e = match result.expect("no panic") {
        Ok(_) => panic!("a broken tokenizer.json was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("tokenizer.json")
            && e.contains("not valid JSON")
            && e.contains("key must be a string"),
        "{e}"
    );
}

/// The real MRPC Arrow stream changed by `corrupt`, in a temporary folder, with the
/// configs/mrpc.toml data config pointing at it.
fn corrupt_mrpc_arrow(corrupt: impl FnOnce(&mut Vec<u8>)) -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().unwrap();
    let arrow = common::repo_root()
        .join("assets/hf_datasets/glue/mrpc/validation/data-00000-of-00001.arrow");
    let mut bytes = std::fs::read(&arrow).expect("run scripts/fetch-assets");
    corrupt(&mut bytes);
    let file = dir.path().join("data.arrow");
    std::fs::write(&file, &bytes).unwrap();
    let cfg = Config::load(
        &common::repo_root().join("configs/mrpc.toml"),
        &[format!("data.path={:?}", file.display().to_string())],
    )
    .unwrap()
    .config;
    (dir, cfg)
}

/// Regression (found by the long run, docs/reliability.md): one corrupt byte in the schema of
/// an Arrow stream made arrow-ipc panic (a buffer slice past the body); it is a clear error.
#[test]
fn regression_arrow_stream_with_a_corrupt_schema_byte() {
    let (_dir, cfg) = corrupt_mrpc_arrow(|bytes| bytes[32] = 0);
    let result = catch_unwind(AssertUnwindSafe(|| flexlora::data::load_splits(&cfg.data)));
    let e = match result.expect("no panic") {
        Ok(_) => panic!("a corrupt Arrow file was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("data.arrow") && e.contains("not a readable Arrow IPC stream"),
        "{e}"
    );
}

/// Regression (found by the long run, docs/reliability.md): a record batch whose metadata
/// claims a body of about 2^54 bytes made arrow-ipc try to allocate it and abort the process;
/// the stream's framing is now checked against the file first.
#[test]
fn regression_arrow_stream_claiming_a_huge_body() {
    let (_dir, cfg) = corrupt_mrpc_arrow(|bytes| {
        // The record batch's bodyLength (an int64 in its flatbuffer metadata): 105896.
        let at = bytes
            .windows(8)
            .position(|w| w == 105_896i64.to_le_bytes())
            .expect("the body length of the MRPC batch");
        bytes[at + 6] = 0x40;
    });
    let e = flexlora::data::load_splits(&cfg.data)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("claims a body of") && e.contains("data.arrow"),
        "{e}"
    );
}

/// The harness itself: a parser that panics on some inputs is caught and reported.
#[test]
fn the_harness_reports_a_panicking_parser() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x");
    let caught = catch_unwind(AssertUnwindSafe(|| {
        fuzz("deliberate", b"abcdef", &file, 200, |p| {
            let bytes = std::fs::read(p).unwrap();
            assert!(bytes.len() >= 6, "deliberate panic on a shortened input");
        });
    }));
    let message = caught.expect_err("the harness must fail on a panicking target");
    let text = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(text.contains("deliberate panicked"), "{text}");
}

/// A finished two-step FlexLoRA run on a real slice: its PEFT adapter folder and checkpoints
/// are the seeds of the next two targets.
/// A two-step run of the real paraphrase-MiniLM-L3-v2 with rank-2 adapters on the query
/// layers only: its files are small, so each case (which hashes the checkpoint) is fast.
fn tiny_run(dir: &Path) -> std::path::PathBuf {
    let data = common::polarity_slice(dir, 20);
    let out = dir.join("run");
    let model = common::repo_root().join("assets/paraphrase-MiniLM-L3-v2");
    let args: Vec<String> = [
        "train",
        "--config",
        "configs/default.toml",
        "--model",
        &model.display().to_string(),
        "--set",
        "model.target_modules=[\"query\"]",
        "--set",
        "method.r_init=2",
        "--set",
        "method.r_max=4",
        "--data",
        &data.display().to_string(),
        "--output",
        &out.display().to_string(),
        "--quiet",
        "--set",
        "training.max_steps=2",
        "--set",
        "training.batch_size=8",
        "--set",
        "training.checkpoint_every=1",
        "--set",
        "schedule.t_init=0",
        "--set",
        "schedule.t_final=0",
        "--set",
        "schedule.delta_t=1",
        "--set",
        "data.max_length=16",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let o = common::run_flexlora(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

#[test]
fn peft_adapter_folders_and_checkpoints_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let run = tiny_run(dir.path());
    let adapter = run.join("adapter");
    for name in ["adapter_config.json", "adapter_model.safetensors"] {
        let file = adapter.join(name);
        let seed = std::fs::read(&file).unwrap();
        assert!(flexlora::peft::read_peft_adapter(&adapter).is_ok());
        fuzz(name, &seed, &file, cases(2), |p| {
            let _ = flexlora::peft::read_peft_adapter(p.parent().unwrap());
        });
        std::fs::write(&file, &seed).unwrap();
    }
    let step = flexlora::train::checkpoint::step_checkpoints(&run.join("checkpoints"))
        .first()
        .map(|(_, d)| d.clone())
        .expect("a step checkpoint");
    for name in ["manifest.json", "state.json"] {
        let file = step.join(name);
        let seed = std::fs::read(&file).unwrap();
        assert!(flexlora::train::checkpoint::verify_checkpoint(&step).is_ok());
        fuzz(name, &seed, &file, cases(2), |p| {
            let dir = p.parent().unwrap();
            if flexlora::train::checkpoint::verify_checkpoint(dir).is_ok() {
                // A checkpoint that verifies must also be readable.
                let _ = flexlora::train::checkpoint::latest_valid(dir.parent().unwrap());
            }
        });
        std::fs::write(&file, &seed).unwrap();
    }
}
