//! The BERT encoder on the real all-MiniLM-L6-v2 checkpoint against transformers: hidden
//! states, classification logits, embeddings and adapter gradients; and broken folders.

mod common;

use common::{assert_close, golden_with_args, max_abs_diff, max_abs_diff_real_tokens, minilm};
use flexlora::adapter::{Adapter, SvdAdapter, SvdAdapterConfig, inject_adapters};
use flexlora::config::ScalePolicy;
use flexlora::models::{
    BertModel, CheckpointError, SequenceClassifier, TextTokenizer, TokenizerError, mean_pool,
};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

const CPU: Device = Device::Cpu;

const TEXTS: [&str; 4] = [
    "the rock is destined to be the 21st century's new conan .",
    "a gorgeous , witty , seductive movie .",
    "it's a charming and often affecting journey .",
    // Longer than max_length below: exercises truncation.
    "the gorgeously elaborate continuation of the lord of the rings trilogy is so huge that a \
     column of words cannot adequately describe co-writer/director peter jackson's expanded \
     vision of j . r . r . tolkien's middle-earth .",
];
const MAX_LEN: usize = 32;

fn spec(pairs: Option<&[&str]>, max_length: usize) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    let spec = serde_json::json!({"texts": TEXTS, "pairs": pairs, "max_length": max_length, "num_labels": 3});
    std::fs::write(f.path(), spec.to_string()).unwrap();
    f
}

fn reference(pairs: Option<&[&str]>, inputs: &[(&str, &Tensor)]) -> HashMap<String, Tensor> {
    reference_for(&minilm(), pairs, MAX_LEN, inputs)
}

fn reference_for(
    folder: &Path,
    pairs: Option<&[&str]>,
    max_length: usize,
    inputs: &[(&str, &Tensor)],
) -> HashMap<String, Tensor> {
    let spec = spec(pairs, max_length);
    golden_with_args(
        "bert.py",
        &[folder.to_str().unwrap(), spec.path().to_str().unwrap()],
        inputs,
    )
}

#[test]
fn hidden_states_logits_and_embeddings_match_transformers() {
    tch::manual_seed(31);
    let folder = minilm();
    let (bert, weights) = BertModel::from_folder(&folder, CPU).unwrap();
    let tok = TextTokenizer::from_folder(&folder, MAX_LEN).unwrap();
    let input = tok.encode(&TEXTS, None, CPU).unwrap();
    let clf = SequenceClassifier::new(bert, &weights, 3).unwrap();
    assert!(!clf.pooler_is_new, "all-MiniLM-L6-v2 ships a pooler");
    let (hidden, logits) = tch::no_grad(|| {
        let h = clf.bert.forward(&input, false);
        let l = clf.logits_from_hidden(&h, false);
        (h, l)
    });
    let want = reference(
        None,
        &[
            ("classifier.weight", &clf.classifier_weight),
            ("classifier.bias", &clf.classifier_bias),
        ],
    );
    assert!(
        input.input_ids.equal(&want["input_ids"]),
        "token ids differ"
    );
    assert!(
        input.attention_mask.equal(&want["attention_mask"]),
        "attention masks differ"
    );
    assert_eq!(
        input.input_ids.size()[1],
        MAX_LEN as i64,
        "the long text is truncated"
    );
    let d = max_abs_diff_real_tokens(&hidden, &want["hidden"], &input.attention_mask);
    assert!(d <= 1e-5, "last hidden states differ by {d:e}");
    let d = max_abs_diff(&logits, &want["logits"]);
    assert!(d <= 1e-5, "logits differ by {d:e}");
    let ours = mean_pool(&hidden, &input.attention_mask);
    let cos = Tensor::cosine_similarity(&ours, &want["embeddings"], 1, 1e-12);
    let worst = cos.min().double_value(&[]);
    assert!(worst >= 0.99999, "embedding cosine {worst}");
}

#[test]
fn sentence_pairs_match_transformers() {
    let folder = minilm();
    let (bert, _) = BertModel::from_folder(&folder, CPU).unwrap();
    let tok = TextTokenizer::from_folder(&folder, MAX_LEN).unwrap();
    let pairs = [
        "a second sentence .",
        "short",
        "and another one that is a little longer .",
        "x",
    ];
    let input = tok.encode(&TEXTS, Some(&pairs), CPU).unwrap();
    let hidden = tch::no_grad(|| bert.forward(&input, false));
    let want = reference(Some(&pairs), &[]);
    assert!(
        input.input_ids.equal(&want["input_ids"]),
        "pair token ids differ"
    );
    assert!(
        input.token_type_ids.equal(&want["token_type_ids"]),
        "token type ids differ"
    );
    assert!(
        input.token_type_ids.max().int64_value(&[]) == 1,
        "second segment present"
    );
    let d = max_abs_diff_real_tokens(&hidden, &want["hidden"], &input.attention_mask);
    assert!(d <= 1e-5, "last hidden states differ by {d:e}");
}

#[test]
fn adapter_gradients_through_the_whole_model_match_transformers() {
    tch::manual_seed(32);
    let folder = minilm();
    let (mut bert, _) = BertModel::from_folder(&folder, CPU).unwrap();
    let paths = bert.linear_paths();
    let config = SvdAdapterConfig {
        r_init: 4,
        r_max: 6,
        alpha: 4.0,
        dropout: 0.0,
        scale: ScalePolicy::InitRank,
        init_std: 0.02,
    };
    let adapted = inject_adapters(
        bert.linears_mut(),
        &paths,
        &["query".into(), "value".into()],
        |i, o| {
            let mut a = SvdAdapter::new(i, o, config, (Kind::Float, CPU))?;
            // Non-zero lambda so every gradient is exercised; slot 5 stays inactive.
            tch::no_grad(|| {
                a.lambda
                    .copy_(&(Tensor::randn([6], (Kind::Float, CPU)) * 0.5))
            });
            let _ = tch::no_grad(|| a.lambda.narrow(0, 4, 2).fill_(0.0));
            Ok(Adapter::Svd(a))
        },
    )
    .unwrap();
    assert_eq!(adapted.len(), 12);
    assert_eq!(adapted[0], "encoder.layer.0.attention.self.query");
    assert_eq!(adapted[1], "encoder.layer.0.attention.self.value");
    let tok = TextTokenizer::from_folder(&folder, MAX_LEN).unwrap();
    let input = tok.encode(&TEXTS, None, CPU).unwrap();
    let hidden = bert.forward(&input, false);
    // An upstream gradient on real tokens only, as from every head (mean pooling over the
    // mask, [CLS]): padding positions' outputs feed no loss (flexlora leaves them zero, while
    // transformers computes unused values there that would otherwise pass gradients back).
    let real = input.attention_mask.to_kind(Kind::Float).unsqueeze(-1);
    let gy = hidden.randn_like() * real;
    (&hidden * &gy).sum(Kind::Float).backward();

    let mut named: Vec<(String, Tensor)> = vec![("gy".into(), gy.shallow_clone())];
    named.extend(common::svd_adapter_inputs(&paths, bert.linears()));
    let inputs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let want = reference(None, &inputs);
    // Hidden states on real tokens and every adapter gradient against transformers.
    let check = |what: &str, hidden: &Tensor, bert: &BertModel| {
        let d = max_abs_diff_real_tokens(hidden, &want["hidden"], &input.attention_mask);
        assert!(d <= 1e-5, "{what}: adapted hidden states differ by {d:e}");
        for (path, layer) in paths.iter().zip(bert.linears()) {
            let Some(a) = layer.svd_adapter() else {
                continue;
            };
            for (n, t) in [("P", &a.p), ("lam", &a.lambda), ("Q", &a.q)] {
                assert_close(
                    &format!("{what}: {path} d{n}"),
                    &t.grad(),
                    &want[&format!("grad.{path}.{n}")],
                    1e-4,
                );
            }
        }
    };
    check("term-by-term path", &hidden, &bert);

    // The training step's merged path (adapter::tape): the same gradients.
    let mut trainables = Vec::new();
    for layer in bert.linears() {
        if let Some(a) = layer.svd_adapter() {
            for t in [&a.p, &a.lambda, &a.q] {
                let mut g = t.grad();
                let _ = g.zero_();
                trainables.push(t.shallow_clone());
            }
        }
    }
    let (hidden, taps) = flexlora::adapter::tape::record(|| bert.forward(&input, false));
    assert_eq!(
        taps.len(),
        10,
        "every adapted layer above the first takes the merged path"
    );
    let loss = (&hidden * &gy).sum(Kind::Float);
    flexlora::adapter::tape::backward(&loss, taps, || trainables);
    check("merged path", &hidden, &bert);
}

/// The second real checkpoint: paraphrase-MiniLM-L3-v2, converted from ONNX by the fetch step.
/// It has no pooler, so the classification head gets a new (trained) one.
#[test]
fn converted_onnx_checkpoint_matches_transformers() {
    tch::manual_seed(33);
    let folder = common::repo_root().join("assets/paraphrase-MiniLM-L3-v2");
    let (bert, weights) = BertModel::from_folder(&folder, CPU).unwrap();
    assert_eq!(bert.layers.len(), 3);
    let tok = TextTokenizer::from_folder(&folder, 128).unwrap();
    let input = tok.encode(&TEXTS, None, CPU).unwrap();
    let clf = SequenceClassifier::new(bert, &weights, 3).unwrap();
    assert!(clf.pooler_is_new, "the ONNX export has no pooler");
    assert_eq!(
        clf.head_parameters().len(),
        4,
        "a new pooler is trained with the classifier"
    );
    let (hidden, logits) = tch::no_grad(|| {
        let h = clf.bert.forward(&input, false);
        let l = clf.logits_from_hidden(&h, false);
        (h, l)
    });
    let want = reference_for(
        &folder,
        None,
        128,
        &[
            ("classifier.weight", &clf.classifier_weight),
            ("classifier.bias", &clf.classifier_bias),
            ("pooler.weight", &clf.pooler_weight),
            ("pooler.bias", &clf.pooler_bias),
        ],
    );
    assert!(
        input.input_ids.equal(&want["input_ids"]),
        "token ids differ"
    );
    let d = max_abs_diff_real_tokens(&hidden, &want["hidden"], &input.attention_mask);
    assert!(d <= 1e-5, "last hidden states differ by {d:e}");
    let d = max_abs_diff(&logits, &want["logits"]);
    assert!(d <= 1e-5, "logits differ by {d:e}");
}

/// `flexlora embed` end to end: the normalised vectors sentence-transformers gives
/// (Transformer -> mean pooling -> Normalize, max_seq_length 256 for this model).
#[test]
fn embed_command_matches_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("texts.txt");
    std::fs::write(
        &input,
        format!("{}\n\n{}\n{}\n{}\n", TEXTS[0], TEXTS[1], TEXTS[2], TEXTS[3]),
    )
    .unwrap();
    let output = dir.path().join("emb.jsonl");
    let folder = minilm();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_flexlora"))
        .args([
            "embed",
            "--model",
            folder.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ])
        .args([
            "--output",
            output.to_str().unwrap(),
            "--normalize",
            "--device",
            "cpu",
            "--batch-size",
            "3",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4, "the empty line is skipped");
    let lines: Vec<u64> = rows.iter().map(|r| r["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, vec![1, 3, 4, 5]);
    let ours: Vec<f32> = rows
        .iter()
        .flat_map(|r| {
            r["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
        })
        .collect();
    let ours = Tensor::from_slice(&ours).view([4, 384]);
    let want = reference_for(&folder, None, 256, &[]);
    let cos = Tensor::cosine_similarity(&ours, &want["embeddings"], 1, 1e-12);
    let worst = cos.min().double_value(&[]);
    assert!(worst >= 0.99999, "embedding cosine {worst}");
    let norms = ours.norm_scalaropt_dim(2.0, [1], false);
    assert!(
        (norms - 1.0).abs().max().double_value(&[]) < 1e-5,
        "normalised"
    );
}

#[test]
fn embed_command_rejects_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    let bad_json = dir.path().join("bad.jsonl");
    std::fs::write(&bad_json, "{\"text\": \"ok\"}\n{\"txt\": 1}\n").unwrap();
    let folder = minilm();
    for (input, needle) in [
        (&empty, "no texts to embed"),
        (&bad_json, "bad.jsonl: line 2: no string field `text`"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_flexlora"))
            .args([
                "embed",
                "--model",
                folder.to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
            ])
            .args([
                "--output",
                dir.path().join("o.jsonl").to_str().unwrap(),
                "--device",
                "cpu",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "{err}");
        assert!(!dir.path().join("o.jsonl").exists(), "nothing half-written");
    }
}

/// A copy of the MiniLM folder in a temp dir, large files linked, with `edit` applied.
fn broken_copy(edit: impl FnOnce(&Path)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::os::unix::fs::symlink(minilm().join(f), dir.path().join(f)).unwrap();
    }
    edit(dir.path());
    dir
}

/// A broken copy whose config.json has `key` set to `value`; the error loading it.
fn load_with_config_field(key: &str, value: serde_json::Value) -> String {
    let dir = broken_copy(|d| {
        let text = std::fs::read_to_string(minilm().join("config.json")).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v[key] = value;
        replace(d, "config.json", v.to_string().as_bytes());
    });
    BertModel::from_folder(dir.path(), CPU)
        .unwrap_err()
        .to_string()
}

fn replace(dir: &Path, file: &str, bytes: &[u8]) {
    std::fs::remove_file(dir.join(file)).unwrap();
    std::fs::write(dir.join(file), bytes).unwrap();
}

#[test]
fn broken_folders_are_clear_errors() {
    // Truncated weights.
    let dir = broken_copy(|d| {
        let bytes = std::fs::read(minilm().join("model.safetensors")).unwrap();
        replace(d, "model.safetensors", &bytes[..bytes.len() / 2]);
    });
    let e = BertModel::from_folder(dir.path(), CPU).unwrap_err();
    assert!(matches!(e, CheckpointError::Safetensors { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("model.safetensors: not a valid safetensors file"),
        "{e}"
    );

    // A config whose hidden size disagrees with the weights.
    let e = load_with_config_field("hidden_size", 768.into());
    assert!(
        e.contains("embeddings.word_embeddings.weight")
            && e.contains("[30522, 384]")
            && e.contains("[30522, 768]"),
        "{e}"
    );

    // Another architecture, and a field of the wrong type.
    let dir = broken_copy(|d| replace(d, "config.json", br#"{"model_type": "roberta"}"#));
    let e = BertModel::from_folder(dir.path(), CPU)
        .unwrap_err()
        .to_string();
    assert!(e.contains("config.json"), "{e}");
    let e = load_with_config_field("model_type", "roberta".into());
    assert!(e.contains("`model_type` = \"roberta\""), "{e}");
    let e = load_with_config_field("num_hidden_layers", "six".into());
    assert!(e.contains("config.json: `num_hidden_layers`"), "{e}");

    // A tokenizer.json that is not JSON.
    let dir = broken_copy(|d| replace(d, "tokenizer.json", b"not json {"));
    let e = TextTokenizer::from_folder(dir.path(), 64).err().unwrap();
    assert!(matches!(e, TokenizerError::Load { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("tokenizer.json: cannot load the tokenizer"),
        "{e}"
    );

    // A missing folder.
    let e = BertModel::from_folder(Path::new("/nonexistent/model"), CPU)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot read /nonexistent/model/config.json"),
        "{e}"
    );
}
