//! The DeBERTa-v2/v3 encoder against transformers on small random-initialised models (no
//! DeBERTa weights ship in any package scripts/fetch-assets can reach): hidden states,
//! classification logits and adapter gradients for a v3-style and a v2-style config; relative
//! position buckets; broken folders.
//!
//! Each model is built and saved by python/golden/deberta.py with transformers, then loaded
//! here from that folder, so loading (names, shapes, prefixes) is checked too. Every parity
//! check is paired with a deliberately wrong setting that must move the result, so the
//! tolerance is known to be tight enough to catch a missing term.

mod common;

use common::{assert_close, golden_with_args, max_abs_diff, max_abs_diff_real_tokens};
use flexlora::adapter::{Adapter, SvdAdapter, SvdAdapterConfig, inject_adapters};
use flexlora::config::ScalePolicy;
use flexlora::models::deberta::relative_positions;
use flexlora::models::{
    CheckpointError, DebertaV2Classifier, DebertaV2Model, EncoderInput, Weights,
};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

const CPU: Device = Device::Cpu;
const VOCAB: i64 = 100;
const HIDDEN: i64 = 32;
const LABELS: i64 = 3;

/// DeBERTa-v3-base's settings at toy size: log buckets (16 here, 256 there, so 40-token
/// inputs reach the logarithmic range), both relative terms through the shared content
/// projections, a layer-normed relative table, no absolute positions, no token types.
fn v3_config() -> Value {
    json!({
        "vocab_size": VOCAB, "hidden_size": HIDDEN, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 64, "hidden_act": "gelu",
        "max_position_embeddings": 128, "relative_attention": true, "position_buckets": 16,
        "max_relative_positions": -1, "pos_att_type": ["p2c", "c2p"], "share_att_key": true,
        "norm_rel_ebd": "layer_norm", "position_biased_input": false, "type_vocab_size": 0,
        "layer_norm_eps": 1e-7
    })
}

/// DeBERTa-v2-xlarge's settings at toy size, without buckets: relative distances clipped at
/// 12 (inputs reach 40), own position projections (`share_att_key` false), the convolution
/// beside the first layer, the older `"c2p|p2c"` string form, no absolute positions; plus
/// token types, a narrower embedding with `embed_proj`, grouped convolution and tanh-GELU so
/// that those paths run too.
fn v2_config() -> Value {
    json!({
        "vocab_size": VOCAB, "hidden_size": HIDDEN, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 48, "hidden_act": "gelu_new",
        "max_position_embeddings": 64, "relative_attention": true, "position_buckets": 0,
        "max_relative_positions": 12, "pos_att_type": "c2p|p2c", "share_att_key": false,
        "norm_rel_ebd": "none", "position_biased_input": false, "type_vocab_size": 2,
        "conv_kernel_size": 3, "conv_act": "gelu", "conv_groups": 2, "embedding_size": 24,
        "pooler_hidden_act": "tanh", "layer_norm_eps": 1e-7
    })
}

/// A model folder (built by the golden script on its first call) and its spec.
struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new(config: Value, seed: u64, bare: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let spec =
            json!({"config": config, "seed": seed, "num_labels": LABELS, "std": 0.2, "bare": bare});
        std::fs::write(dir.path().join("spec.json"), spec.to_string()).unwrap();
        Self { dir }
    }

    fn folder(&self) -> PathBuf {
        self.dir.path().join("model")
    }

    /// transformers' outputs on `inputs`; the first call builds the folder.
    fn golden(&self, inputs: &[(&str, &Tensor)]) -> HashMap<String, Tensor> {
        let spec = self.dir.path().join("spec.json");
        golden_with_args(
            "deberta.py",
            &[spec.to_str().unwrap(), self.folder().to_str().unwrap()],
            inputs,
        )
    }
}

/// A batch of random token ids with the given real lengths, padded (id 0) to the longest.
/// With `pairs`, the second half of each sequence's real tokens is segment 1.
fn batch(lengths: &[i64], pairs: bool, seed: i64) -> EncoderInput {
    tch::manual_seed(seed);
    let len = *lengths.iter().max().unwrap();
    let b = lengths.len() as i64;
    let pos = Tensor::arange(len, (Kind::Int64, CPU)).unsqueeze(0);
    let lens = Tensor::from_slice(lengths).unsqueeze(1);
    let attention_mask = pos.lt_tensor(&lens).to_kind(Kind::Int64);
    let input_ids = Tensor::randint_low(1, VOCAB, [b, len], (Kind::Int64, CPU)) * &attention_mask;
    let token_type_ids = match pairs {
        true => {
            pos.ge_tensor(&lens.floor_divide_scalar(2))
                .to_kind(Kind::Int64)
                * &attention_mask
        }
        false => Tensor::zeros([b, len], (Kind::Int64, CPU)),
    };
    EncoderInput {
        input_ids,
        attention_mask,
        token_type_ids,
    }
}

fn input_tensors(input: &EncoderInput) -> Vec<(&'static str, &Tensor)> {
    vec![
        ("input_ids", &input.input_ids),
        ("attention_mask", &input.attention_mask),
        ("token_type_ids", &input.token_type_ids),
    ]
}

/// The head on the loaded encoder, with the classifier weights given to transformers.
fn classifier(folder: &Path, weight: &Tensor, bias: &Tensor) -> (DebertaV2Classifier, Weights) {
    let (model, w) = DebertaV2Model::from_folder(folder, CPU).unwrap();
    let mut clf = DebertaV2Classifier::new(model, &w, LABELS).unwrap();
    clf.classifier_weight = weight.shallow_clone();
    clf.classifier_bias = bias.shallow_clone();
    (clf, w)
}

/// A copy of `folder` (weights linked) whose config.json has `edits` applied.
fn edited_copy(folder: &Path, edits: &[(&str, Value)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        folder.join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let text = std::fs::read_to_string(folder.join("config.json")).unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    for (k, val) in edits {
        match val {
            Value::Null => {
                v.as_object_mut().unwrap().remove(*k);
            }
            _ => v[*k] = val.clone(),
        }
    }
    std::fs::write(dir.path().join("config.json"), v.to_string()).unwrap();
    dir
}

/// Last hidden states of the model in `folder` with `edits` to its config.
fn hidden_with(folder: &Path, edits: &[(&str, Value)], input: &EncoderInput) -> Tensor {
    let dir = edited_copy(folder, edits);
    let (model, _) = DebertaV2Model::from_folder(dir.path(), CPU).unwrap();
    tch::no_grad(|| model.forward(input, false))
}

/// Hidden states and logits for every input against transformers; each edit in `wrong`
/// must move the hidden states by far more than the tolerance.
fn check_forward(case: &Case, inputs: &[EncoderInput], wrong: &[&[(&str, Value)]]) {
    let cw = Tensor::randn([LABELS, HIDDEN], (Kind::Float, CPU)) * 0.5;
    let cb = Tensor::randn([LABELS], (Kind::Float, CPU)) * 0.5;
    for (n, input) in inputs.iter().enumerate() {
        let mut named = input_tensors(input);
        named.extend([("classifier.weight", &cw), ("classifier.bias", &cb)]);
        let want = case.golden(&named);
        let (clf, _) = classifier(&case.folder(), &cw, &cb);
        assert!(!clf.pooler_is_new, "the checkpoint has a pooler");
        let (hidden, logits) = tch::no_grad(|| {
            let h = clf.deberta.forward(input, false);
            (h.shallow_clone(), clf.logits_from_hidden(&h, false))
        });
        let dh = max_abs_diff_real_tokens(&hidden, &want["hidden"], &input.attention_mask);
        let dl = max_abs_diff(&logits, &want["logits"]);
        eprintln!(
            "input {n} {:?}: hidden {dh:e}, logits {dl:e}",
            input.input_ids.size()
        );
        assert!(dh <= 1e-5, "input {n}: last hidden states differ by {dh:e}");
        assert!(dl <= 1e-5, "input {n}: logits differ by {dl:e}");
        let pad = input.attention_mask.eq(0).unsqueeze(-1);
        assert_eq!(
            hidden
                .masked_select(&pad)
                .abs()
                .sum(Kind::Float)
                .double_value(&[]),
            0.0,
            "padding positions are zeros"
        );
        if n == 0 {
            for edits in wrong {
                let other = hidden_with(&case.folder(), edits, input);
                let d = max_abs_diff_real_tokens(&other, &want["hidden"], &input.attention_mask);
                eprintln!("  with {edits:?}: hidden differ by {d:e}");
                assert!(
                    d > 1e-2,
                    "{edits:?} should change the output (differs by {d:e})"
                );
            }
        }
    }
}

#[test]
fn v3_config_matches_transformers() {
    let case = Case::new(v3_config(), 1, false);
    let inputs = [
        batch(&[40], false, 11),
        batch(&[40, 23, 7], false, 12),
        // Pairs: token types are ignored without a token type table, as in transformers.
        batch(&[31, 18], true, 13),
    ];
    check_forward(
        &case,
        &inputs,
        &[
            &[("pos_att_type", json!(["c2p"]))],
            &[("pos_att_type", json!(["p2c"]))],
            // The same table size without buckets: positions beyond ±8 land elsewhere.
            &[
                ("position_buckets", json!(-1)),
                ("max_relative_positions", json!(16)),
            ],
            &[("norm_rel_ebd", json!("none"))],
        ],
    );
}

#[test]
fn v2_config_matches_transformers() {
    let case = Case::new(v2_config(), 2, false);
    let inputs = [
        batch(&[40], true, 21),
        batch(&[40, 26, 9, 3], true, 22),
        batch(&[17, 12], false, 23),
    ];
    check_forward(
        &case,
        &inputs,
        &[
            &[("conv_kernel_size", json!(0))],
            &[("conv_act", json!("tanh"))],
            &[("share_att_key", json!(true))],
            &[("pos_att_type", json!(["c2p"]))],
            &[("type_vocab_size", json!(0))],
        ],
    );
}

/// Absolute positions only (no relative attention), from a bare `DebertaV2Model` folder (no
/// `deberta.` prefix, no pooler): the head gets a new pooler. `pos_att_type` still scales
/// the scores when relative attention is off, as in transformers.
#[test]
fn absolute_positions_and_bare_folder_match_transformers() {
    let mut config = v3_config();
    config["relative_attention"] = json!(false);
    config["position_biased_input"] = json!(true);
    config["type_vocab_size"] = json!(2);
    let case = Case::new(config, 3, true);
    let input = batch(&[30, 20, 5], true, 31);
    let cw = Tensor::randn([LABELS, HIDDEN], (Kind::Float, CPU)) * 0.5;
    let cb = Tensor::randn([LABELS], (Kind::Float, CPU)) * 0.5;
    // Builds the folder; the pooler is not known yet.
    let first = case.golden(&input_tensors(&input));
    let (clf, _) = classifier(&case.folder(), &cw, &cb);
    assert!(
        clf.pooler_is_new,
        "a bare DebertaV2Model folder has no pooler"
    );
    assert_eq!(clf.head_parameters().len(), 4);
    let mut named = input_tensors(&input);
    named.extend([
        ("classifier.weight", &cw),
        ("classifier.bias", &cb),
        ("pooler.weight", &clf.pooler_weight),
        ("pooler.bias", &clf.pooler_bias),
    ]);
    let want = case.golden(&named);
    let (hidden, logits) = tch::no_grad(|| {
        let h = clf.deberta.forward(&input, false);
        (h.shallow_clone(), clf.logits_from_hidden(&h, false))
    });
    let dh = max_abs_diff_real_tokens(&hidden, &want["hidden"], &input.attention_mask);
    let dl = max_abs_diff(&logits, &want["logits"]);
    eprintln!("absolute: hidden {dh:e}, logits {dl:e}");
    assert!(dh <= 1e-5, "last hidden states differ by {dh:e}");
    assert!(dl <= 1e-5, "logits differ by {dl:e}");
    assert!(
        first["hidden"].equal(&want["hidden"]),
        "the folder is built once"
    );
    let other = hidden_with(&case.folder(), &[("pos_att_type", json!([]))], &input);
    let d = max_abs_diff_real_tokens(&other, &want["hidden"], &input.attention_mask);
    assert!(d > 1e-2, "the score scale must matter (differs by {d:e})");
}

/// SVD adapters on every adaptable layer: hidden states and the gradients of P, λ and Q.
fn check_adapter_gradients(case: &Case, input: &EncoderInput, expected_per_layer: usize) {
    // Builds the folder.
    case.golden(&input_tensors(input));
    let (mut model, _) = DebertaV2Model::from_folder(&case.folder(), CPU).unwrap();
    let paths = model.linear_paths();
    assert_eq!(paths.len(), 2 * expected_per_layer);
    let config = SvdAdapterConfig {
        r_init: 4,
        r_max: 6,
        alpha: 4.0,
        dropout: 0.0,
        scale: ScalePolicy::InitRank,
        init_std: 0.02,
    };
    tch::manual_seed(41);
    let adapted = inject_adapters(model.linears_mut(), &paths, &["re:.*".into()], |i, o| {
        let mut a = SvdAdapter::new(i, o, config, (Kind::Float, CPU))?;
        // P and Q large enough that the update moves the output; lambda non-zero so every
        // gradient is exercised; slot 5 stays inactive.
        tch::no_grad(|| {
            a.p.copy_(&(a.p.randn_like() * 0.3));
            a.q.copy_(&(a.q.randn_like() * 0.3));
            a.lambda
                .copy_(&(Tensor::randn([6], (Kind::Float, CPU)) * 0.5));
        });
        let _ = tch::no_grad(|| a.lambda.narrow(0, 4, 2).fill_(0.0));
        Ok(Adapter::Svd(a))
    })
    .unwrap();
    assert_eq!(adapted, paths);
    let hidden = model.forward(input, false);
    let real = input.attention_mask.to_kind(Kind::Float).unsqueeze(-1);
    let gy = hidden.randn_like() * real;
    (&hidden * &gy).sum(Kind::Float).backward();

    let mut named: Vec<(String, Tensor)> = vec![("gy".into(), gy.shallow_clone())];
    named.extend(common::svd_adapter_inputs(&paths, model.linears()));
    let mut inputs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    inputs.extend(input_tensors(input));
    let want = case.golden(&inputs);
    let d = max_abs_diff_real_tokens(&hidden, &want["hidden"], &input.attention_mask);
    eprintln!("adapted hidden {d:e}");
    assert!(d <= 1e-5, "adapted hidden states differ by {d:e}");
    let mut worst = 0.0f64;
    for (path, layer) in paths.iter().zip(model.linears()) {
        let a = layer.svd_adapter().unwrap();
        for (n, t) in [("P", &a.p), ("lam", &a.lambda), ("Q", &a.q)] {
            let want = &want[&format!("grad.{path}.{n}")];
            worst = worst.max(common::rel_err(&t.grad(), want));
            assert_close(&format!("{path} d{n}"), &t.grad(), want, 1e-4);
        }
    }
    eprintln!("worst relative gradient error {worst:e}");
    // The adapters matter: without them the output is far from the adapted reference.
    for l in model.linears_mut() {
        l.adapter = None;
    }
    let plain = tch::no_grad(|| model.forward(input, false));
    let d = max_abs_diff_real_tokens(&plain, &want["hidden"], &input.attention_mask);
    assert!(
        d > 1e-2,
        "adapters should change the output (differs by {d:e})"
    );
}

#[test]
fn v3_adapter_gradients_match_transformers() {
    // With share_att_key the query and key adapters also act on the relative embeddings.
    check_adapter_gradients(
        &Case::new(v3_config(), 4, false),
        &batch(&[40, 23, 7], false, 42),
        6,
    );
}

#[test]
fn v2_adapter_gradients_match_transformers() {
    // pos_key_proj and pos_query_proj are adaptable too: 8 linear layers per layer.
    check_adapter_gradients(
        &Case::new(v2_config(), 5, false),
        &batch(&[33, 20], true, 52),
        8,
    );
}

#[test]
fn module_paths_follow_the_hugging_face_layout() {
    let case = Case::new(v2_config(), 6, false);
    case.golden(&input_tensors(&batch(&[4], false, 61)));
    let (model, _) = DebertaV2Model::from_folder(&case.folder(), CPU).unwrap();
    let paths = model.linear_paths();
    assert_eq!(
        &paths[..8],
        [
            "encoder.layer.0.attention.self.query_proj",
            "encoder.layer.0.attention.self.key_proj",
            "encoder.layer.0.attention.self.value_proj",
            "encoder.layer.0.attention.self.pos_key_proj",
            "encoder.layer.0.attention.self.pos_query_proj",
            "encoder.layer.0.attention.output.dense",
            "encoder.layer.0.intermediate.dense",
            "encoder.layer.0.output.dense",
        ]
    );
    // Every parameter name is one of the checkpoint's (after the `deberta.` prefix).
    let w = Weights::read(&case.folder(), "deberta.").unwrap();
    let named = model.named_parameters();
    for (n, _) in &named {
        assert!(w.contains(n), "{n} is not a checkpoint name");
    }
    // 6 embedding/encoder tensors (word, token type, embed_proj, relative table, conv weight
    // and bias), 6 layer norms (embeddings, conv, 2 per layer), 8 linears with bias per layer:
    // all of the checkpoint but the head.
    assert_eq!(named.len(), 6 + 2 * 6 + 2 * 8 * 2);
}

/// Bucketed relative positions of transformers' build_relative_position, exactly, at DeBERTa-v3's
/// real setting (256 buckets over 512 positions) and small ones.
#[test]
fn relative_position_buckets_match_transformers() {
    let settings = [
        (600, 256, 512),
        (40, 16, 128),
        (50, 8, 12),
        (30, 0, 12),
        (9, -1, -1),
    ];
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.json");
    std::fs::write(&spec, json!({"relative_positions": settings}).to_string()).unwrap();
    let want = golden_with_args("deberta.py", &[spec.to_str().unwrap(), "-"], &[]);
    for (i, &(len, buckets, max_position)) in settings.iter().enumerate() {
        let ours = relative_positions(len, buckets, max_position, CPU);
        assert!(
            ours.equal(&want[&format!("rel.{i}")]),
            "relative positions differ for {len} tokens, {buckets} buckets, {max_position}"
        );
    }
    // Bucketing changes far positions only: the first setting is not the identity.
    let plain = relative_positions(600, 0, 512, CPU);
    assert!(!plain.equal(&want["rel.0"]));
    assert!(
        plain
            .narrow(1, 0, 100)
            .narrow(0, 0, 100)
            .equal(&want["rel.0"].narrow(1, 0, 100).narrow(0, 0, 100))
    );
}

#[test]
fn broken_configs_are_clear_errors() {
    let case = Case::new(v3_config(), 7, false);
    case.golden(&input_tensors(&batch(&[4], false, 71)));
    let folder = case.folder();
    let load = |edits: &[(&str, Value)]| {
        let dir = edited_copy(&folder, edits);
        DebertaV2Model::from_folder(dir.path(), CPU)
            .unwrap_err()
            .to_string()
    };
    // A field of the wrong type.
    let e = load(&[("hidden_size", json!("wide"))]);
    assert!(e.contains("config.json: `hidden_size`"), "{e}");
    let e = load(&[("pos_att_type", json!(3))]);
    assert!(e.contains("config.json: `pos_att_type`"), "{e}");
    // Values this build (and transformers) cannot use.
    let e = load(&[("pos_att_type", json!(["c2p", "p2p"]))]);
    assert!(
        e.contains("config.json: `pos_att_type`") && e.contains("\"p2p\""),
        "{e}"
    );
    let e = load(&[("conv_kernel_size", json!(2))]);
    assert!(e.contains("`conv_kernel_size` = 2: must be odd"), "{e}");
    let e = load(&[("norm_rel_ebd", json!("batch_norm"))]);
    assert!(e.contains("`norm_rel_ebd`"), "{e}");
    let e = load(&[("num_attention_heads", json!(5))]);
    assert!(
        e.contains("`num_attention_heads` = 5: must divide hidden_size (32)"),
        "{e}"
    );
    let e = load(&[("position_buckets", json!(300))]);
    assert!(e.contains("`position_buckets` = 300"), "{e}");
    let e = load(&[("model_type", json!("deberta"))]);
    assert!(e.contains("`model_type` = \"deberta\""), "{e}");
    // A missing field takes transformers' default (intermediate_size 6144), which the weights
    // contradict: the error names the weights file, the tensor and both shapes.
    let e = load(&[("intermediate_size", Value::Null)]);
    assert!(
        e.contains("model.safetensors: tensor `encoder.layer.0.intermediate.dense.weight`")
            && e.contains("[64, 32]")
            && e.contains("[6144, 32]"),
        "{e}"
    );
    // Without hidden_size (default 1536) the saved pooler width disagrees first.
    let e = load(&[("hidden_size", Value::Null)]);
    assert!(
        e.contains("config.json: `pooler_hidden_size` = 32: must equal hidden_size (1536)"),
        "{e}"
    );
    // A config that needs tensors the checkpoint lacks (v2's own position projections).
    let e = load(&[("share_att_key", json!(false))]);
    assert!(
        e.contains("missing tensor `encoder.layer.0.attention.self.pos_key_proj.weight`"),
        "{e}"
    );
    let e = DebertaV2Model::from_folder(Path::new("/nonexistent/model"), CPU).unwrap_err();
    assert!(matches!(e, CheckpointError::Read { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("cannot read /nonexistent/model/config.json"),
        "{e}"
    );
    // The unedited copy loads.
    let dir = edited_copy(&folder, &[]);
    assert!(DebertaV2Model::from_folder(dir.path(), CPU).is_ok());
}

/// DeBERTa-v3-base's real attention geometry (768 wide, 12 heads of 64, 256 buckets over 512
/// positions) on full-length inputs, two layers and a small vocabulary to stay quick; the
/// weights are drawn narrower (σ 0.05) so that 768-wide products stay in softmax's useful range.
#[test]
fn v3_base_geometry_matches_transformers() {
    let mut config = v3_config();
    for (k, v) in [
        ("hidden_size", json!(768)),
        ("num_attention_heads", json!(12)),
        ("intermediate_size", json!(3072)),
        ("max_position_embeddings", json!(512)),
        ("position_buckets", json!(256)),
    ] {
        config[k] = v;
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = json!({"config": config, "seed": 8, "num_labels": LABELS, "std": 0.05});
    std::fs::write(dir.path().join("spec.json"), spec.to_string()).unwrap();
    let case = Case { dir };
    let input = batch(&[512, 300], false, 81);
    let want = case.golden(&input_tensors(&input));
    let (model, _) = DebertaV2Model::from_folder(&case.folder(), CPU).unwrap();
    let hidden = tch::no_grad(|| model.forward(&input, false));
    let d = max_abs_diff_real_tokens(&hidden, &want["hidden"], &input.attention_mask);
    eprintln!("v3-base geometry: hidden {d:e}");
    assert!(d <= 1e-5, "last hidden states differ by {d:e}");
    let other = hidden_with(
        &case.folder(),
        &[("max_relative_positions", json!(256))],
        &input,
    );
    let d = max_abs_diff_real_tokens(&other, &want["hidden"], &input.attention_mask);
    assert!(
        d > 1e-2,
        "the bucket range should matter at 512 tokens (differs by {d:e})"
    );
}

/// Dropout runs in training mode only: evaluation is deterministic, training is not, and
/// with every dropout at zero training equals evaluation.
#[test]
fn dropout_only_in_training() {
    let case = Case::new(v2_config(), 9, false);
    let input = batch(&[20, 11], true, 91);
    case.golden(&input_tensors(&input));
    let (model, w) = DebertaV2Model::from_folder(&case.folder(), CPU).unwrap();
    let clf = DebertaV2Classifier::new(model, &w, LABELS).unwrap();
    let eval = tch::no_grad(|| clf.forward(&input, false));
    assert!(eval.equal(&tch::no_grad(|| clf.forward(&input, false))));
    let train = tch::no_grad(|| clf.forward(&input, true));
    assert!(
        max_abs_diff(&train, &eval) > 1e-4,
        "dropout is on in training"
    );
    let zero = edited_copy(
        &case.folder(),
        &[
            ("hidden_dropout_prob", json!(0)),
            ("attention_probs_dropout_prob", json!(0.0)),
        ],
    );
    let (model, _) = DebertaV2Model::from_folder(zero.path(), CPU).unwrap();
    let a = tch::no_grad(|| model.forward(&input, true));
    let b = tch::no_grad(|| model.forward(&input, false));
    assert!(a.equal(&b), "no dropout left when every rate is zero");
}

/// Configs in the form of microsoft/deberta-v3-base's and microsoft/deberta-v2-xlarge's (written
/// from the model cards' known settings; the hub is not reachable here to copy the files) parse
/// and pass validation with the values transformers reads: the `"p2c|c2p"` string form,
/// `max_relative_positions = -1`, an explicit `attention_head_size`.
#[test]
fn checkpoint_style_configs_parse() {
    let v3_base = json!({
        "model_type": "deberta-v2", "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02,
        "intermediate_size": 3072, "max_position_embeddings": 512, "relative_attention": true,
        "position_buckets": 256, "norm_rel_ebd": "layer_norm", "share_att_key": true,
        "pos_att_type": "p2c|c2p", "layer_norm_eps": 1e-7, "max_relative_positions": -1,
        "position_biased_input": false, "num_attention_heads": 12, "num_hidden_layers": 12,
        "type_vocab_size": 0, "vocab_size": 128100
    });
    let v2_xlarge = json!({
        "model_type": "deberta-v2", "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "hidden_size": 1536, "initializer_range": 0.02,
        "intermediate_size": 6144, "max_position_embeddings": 512, "relative_attention": true,
        "position_buckets": 256, "norm_rel_ebd": "layer_norm", "share_att_key": true,
        "pos_att_type": "p2c|c2p", "conv_kernel_size": 3, "conv_act": "gelu",
        "layer_norm_eps": 1e-7, "max_relative_positions": -1, "position_biased_input": false,
        "num_attention_heads": 24, "attention_head_size": 64, "num_hidden_layers": 24,
        "type_vocab_size": 0, "vocab_size": 128100, "pooler_hidden_size": 1536,
        "pooler_dropout": 0, "pooler_hidden_act": "gelu"
    });
    for (name, config) in [("v3-base", v3_base), ("v2-xlarge", v2_xlarge)] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        let c = flexlora::models::DebertaV2Config::from_folder(dir.path()).unwrap();
        assert_eq!(c.pos_att_type, ["p2c", "c2p"], "{name}");
        assert!(c.c2p() && c.p2c() && c.norm_rel_embeddings(), "{name}");
        assert_eq!(c.head_size(), 64, "{name}");
        assert_eq!(c.max_relative_positions(), 512, "{name}");
        assert_eq!(c.attention_span(), 256, "{name}");
        assert_eq!(c.embedding_size(), c.hidden_size, "{name}");
        assert_eq!(c.classifier_dropout(), 0.1, "{name}");
        assert_eq!(c.conv_kernel_size > 0, name == "v2-xlarge");
        // No weights file: loading the model names it.
        let e = DebertaV2Model::from_folder(dir.path(), CPU)
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.safetensors"), "{e}");
    }
}
