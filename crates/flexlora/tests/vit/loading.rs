//! Loading: names, the new head, broken folders, training-mode randomness.

use crate::case::*;
use crate::common::max_abs_diff;
use flexlora::models::{CheckpointError, VitClassifier, VitModel, Weights};
use serde_json::{Value, json};
use std::path::Path;
use tch::{Kind, Tensor};

/// A new head is drawn exactly as transformers' from_pretrained draws it after the same
/// `manual_seed` (ViT: normal; DINOv2: a normal draw replaced by a truncated normal), and a
/// checkpoint's classifier of the right shape is used instead.
#[test]
fn head_initialisation_matches_transformers() {
    for (model_type, config, in_features) in [
        ("vit", vit_config(), 32),
        ("dinov2", dinov2_small_config(), 64),
    ] {
        let case = Case::new(model_type, config.clone(), 7, true, "saved");
        let x = pixels(1, 3, 24, 24, 71);
        let seed = Tensor::from_slice(&[17.0f32]);
        let want = case.golden(&[("pixel_values.0", &x), ("init_seed", &seed)]);
        let (model, w) = VitModel::from_folder(&case.folder(), CPU).unwrap();
        tch::manual_seed(17);
        let clf = VitClassifier::new(model, &w, LABELS).unwrap();
        assert!(!clf.head_from_checkpoint);
        assert_eq!(clf.classifier_weight.size(), [LABELS, in_features]);
        assert!(clf.head_parameters().iter().all(|t| t.requires_grad()));
        let d = max_abs_diff(&clf.classifier_weight, &want["init.weight"]);
        eprintln!("{model_type}: new head differs by {d:e}");
        assert_eq!(d, 0.0, "{model_type}: the new head's draw");
        assert_eq!(max_abs_diff(&clf.classifier_bias, &want["init.bias"]), 0.0);
        // A single normal draw is not what transformers does for DINOv2.
        tch::manual_seed(17);
        let plain = Tensor::randn([LABELS, in_features], (Kind::Float, CPU)) * 0.02;
        let d = max_abs_diff(&plain, &want["init.weight"]);
        assert_eq!(d == 0.0, model_type == "vit", "{model_type}: {d:e}");
        assert_eq!(clf.architecture().starts_with("ViT"), model_type == "vit");
        assert_eq!(clf.prefix(), model_type);

        // A classification checkpoint's head is read back when the label count matches.
        let case = Case::new(model_type, config, 8, false, "saved");
        case.golden(&[("pixel_values.0", &x)]);
        let w = Weights::read(&case.folder(), "").unwrap();
        let saved = w
            .tensor(
                "classifier.weight",
                &[LABELS, in_features],
                Kind::Float,
                CPU,
            )
            .unwrap();
        let (model, w) = VitModel::from_folder(&case.folder(), CPU).unwrap();
        let clf = VitClassifier::new(model, &w, LABELS).unwrap();
        assert!(clf.head_from_checkpoint);
        assert!(clf.classifier_weight.equal(&saved));
        assert!(clf.classifier_weight.requires_grad());
        let (model, w) = VitModel::from_folder(&case.folder(), CPU).unwrap();
        let clf = VitClassifier::new(model, &w, LABELS + 2).unwrap();
        assert!(
            !clf.head_from_checkpoint,
            "another label count gets a new head"
        );
        assert_eq!(clf.classifier_weight.size(), [LABELS + 2, in_features]);
        let (model, w) = VitModel::from_folder(&case.folder(), CPU).unwrap();
        let e = VitClassifier::new(model, &w, 0).unwrap_err().to_string();
        assert!(e.contains("`num_labels` = 0"), "{e}");
    }
}

/// Module paths as transformers 5.24 names the modules; parameter names as its
/// `save_pretrained` writes them (all of a bare checkpoint but ViT's unused pooler).
#[test]
fn names_follow_transformers() {
    for (model_type, config, channels, first, saved, skip) in [
        (
            "vit",
            vit_grey_config(),
            1,
            [
                "layers.0.attention.q_proj",
                "layers.0.mlp.fc1",
                "layers.1.mlp.fc2",
            ],
            "encoder.layer.0.intermediate.dense",
            "pooler.",
        ),
        (
            "dinov2",
            dinov2_config(),
            3,
            [
                "encoder.layer.0.attention.q_proj",
                "encoder.layer.0.mlp.fc1",
                "encoder.layer.1.mlp.fc2",
            ],
            "encoder.layer.0.mlp.fc1",
            "-",
        ),
    ] {
        let case = Case::new(model_type, config, 9, true, "saved");
        case.golden(&[("pixel_values.0", &pixels(1, channels, 14, 14, 91))]);
        let model = case.model();
        let paths = model.linear_paths();
        assert_eq!(paths.len(), 12);
        assert_eq!([&paths[0], &paths[4], &paths[11]], first);
        assert_eq!(paths[3].rsplit('.').next(), Some("o_proj"));
        let saved_names = model.linear_saved_names();
        assert_eq!(saved_names.len(), 12);
        assert_eq!(saved_names[0], "encoder.layer.0.attention.attention.query");
        assert_eq!(saved_names[3], "encoder.layer.0.attention.output.dense");
        assert_eq!(saved_names[4], saved);
        let w = Weights::read(&case.folder(), "").unwrap();
        let named = model.named_parameters();
        for (n, t) in &named {
            assert!(w.contains(n), "{n} is not a checkpoint name");
            assert!(!t.requires_grad(), "{n} is frozen");
        }
        let file = tch::Tensor::read_safetensors(case.folder().join("model.safetensors")).unwrap();
        let expected = file.iter().filter(|(n, _)| !n.starts_with(skip)).count();
        assert_eq!(named.len(), expected, "{model_type}: every saved tensor");
        let mut model = model;
        model.set_trainable(true);
        assert!(
            model
                .named_parameters()
                .iter()
                .all(|(_, t)| t.requires_grad())
        );
        let l = &model.linears()[0];
        assert!(l.bias.is_none() == (model_type == "vit"), "qkv_bias");
    }
}

/// A copy of `folder` whose weights file lacks the tensor `drop`.
fn without_tensor(folder: &Path, drop: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(folder.join("config.json"), dir.path().join("config.json")).unwrap();
    let kept: Vec<(String, Tensor)> = Tensor::read_safetensors(folder.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .filter(|(n, _)| n != drop)
        .collect();
    let n = Tensor::read_safetensors(folder.join("model.safetensors"))
        .unwrap()
        .len();
    assert_eq!(kept.len() + 1, n, "{drop} was in the file");
    Tensor::write_safetensors(&kept, dir.path().join("model.safetensors")).unwrap();
    dir
}

#[test]
fn broken_folders_are_clear_errors() {
    let dinov2 = Case::new("dinov2", dinov2_small_config(), 10, false, "modules");
    let vit = Case::new("vit", vit_config(), 11, false, "saved");
    for case in [&dinov2, &vit] {
        case.golden(&[("pixel_values.0", &pixels(1, 3, 24, 24, 101))]);
    }
    let load = |case: &Case, edits: &[(&str, Value)]| {
        let dir = edited_copy(&case.folder(), edits);
        VitModel::from_folder(dir.path(), CPU)
            .unwrap_err()
            .to_string()
    };
    let e = load(&dinov2, &[("use_swiglu_ffn", json!(true))]);
    assert!(
        e.contains("config.json: `use_swiglu_ffn` = true: the SwiGLU feed-forward"),
        "{e}"
    );
    // A missing tensor is named (without the `dinov2.` prefix), in the file's own spelling.
    let dir = without_tensor(
        &dinov2.folder(),
        "dinov2.encoder.layer.1.layer_scale2.lambda1",
    );
    let e = VitModel::from_folder(dir.path(), CPU).unwrap_err();
    assert!(matches!(e, CheckpointError::MissingTensor { .. }), "{e}");
    let e = e.to_string();
    assert!(
        e.contains("model.safetensors: missing tensor `encoder.layer.1.layer_scale2.lambda1`"),
        "{e}"
    );
    let e = load(&dinov2, &[("qkv_bias", json!(true))]);
    assert!(
        e.contains("missing tensor `encoder.layer.0.attention.q_proj.bias`"),
        "{e}"
    );
    let dir = without_tensor(&vit.folder(), "vit.embeddings.position_embeddings");
    let e = VitModel::from_folder(dir.path(), CPU)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("missing tensor `embeddings.position_embeddings` (expected shape [1, 17, 32])"),
        "{e}"
    );
    // A missing field takes transformers' default (intermediate_size 3072), which the weights
    // contradict: the error names the weights file, the tensor and both shapes.
    let e = load(&vit, &[("intermediate_size", Value::Null)]);
    assert!(
        e.contains("model.safetensors: tensor `encoder.layer.0.intermediate.dense.weight`")
            && e.contains("[64, 32]")
            && e.contains("[3072, 32]"),
        "{e}"
    );
    // Values this build (or transformers) cannot use, each named with its field.
    let cases: [(&[(&str, Value)], &str); 11] = [
        (
            &[("model_type", json!("deit"))],
            "`model_type` = \"deit\": only \"vit\" and \"dinov2\"",
        ),
        (&[("model_type", Value::Null)], "`model_type` = absent"),
        (
            &[("hidden_act", json!("quick_gelu"))],
            "`hidden_act` = \"quick_gelu\": supported:",
        ),
        (
            &[("hidden_size", json!("wide"))],
            "config.json: `hidden_size`",
        ),
        (
            &[("num_attention_heads", json!(5))],
            "`num_attention_heads` = 5: must divide hidden_size (32)",
        ),
        (
            &[("image_size", json!([32, 32, 3]))],
            "`image_size` = [32, 32, 3]: must be one number or [height, width]",
        ),
        (
            &[("patch_size", json!(64))],
            "`patch_size` = [64, 64]: must not exceed",
        ),
        (
            &[("drop_path_rate", json!(1.0))],
            "`drop_path_rate` = 1: must be in [0, 1)",
        ),
        (
            &[("hidden_dropout_prob", json!(-0.1))],
            "`hidden_dropout_prob` = -0.1",
        ),
        (&[("layer_norm_eps", json!(0))], "`layer_norm_eps` = 0"),
        (
            &[("num_hidden_layers", json!(0))],
            "`num_hidden_layers` = 0: must be positive",
        ),
    ];
    for (edits, want) in cases {
        let e = load(&vit, edits);
        assert!(e.contains(want), "{edits:?}: {e}");
    }
    let e = load(&dinov2, &[("mlp_ratio", json!(0))]);
    assert!(e.contains("`mlp_ratio` = 0.0: must be positive"), "{e}");
    let e = VitModel::from_folder(Path::new("/nonexistent/model"), CPU).unwrap_err();
    assert!(matches!(e, CheckpointError::Read { .. }), "{e}");
    // DINOv2's mask token is unused: a file without it loads (and saves) without it.
    let dir = without_tensor(&dinov2.folder(), "dinov2.embeddings.mask_token");
    let model = VitModel::from_folder(dir.path(), CPU).unwrap().0;
    assert!(
        model
            .named_parameters()
            .iter()
            .all(|(n, _)| n != "embeddings.mask_token")
    );
    // The unedited copies load.
    for case in [&dinov2, &vit] {
        let dir = edited_copy(&case.folder(), &[]);
        assert!(VitModel::from_folder(dir.path(), CPU).is_ok());
    }
}

/// Dropout and drop path run in training mode only: evaluation is deterministic, training with
/// a rate is not, and with every rate at zero training equals evaluation.
#[test]
fn dropout_and_drop_path_only_in_training() {
    let vit = Case::new("vit", vit_config(), 12, true, "saved");
    let dinov2 = Case::new("dinov2", dinov2_small_config(), 13, true, "saved");
    let x = pixels(4, 3, 24, 24, 121);
    for (case, rates) in [
        (
            &vit,
            vec![
                ("hidden_dropout_prob", json!(0.1)),
                ("attention_probs_dropout_prob", json!(0.1)),
            ],
        ),
        (&dinov2, vec![("drop_path_rate", json!(0.5))]),
        (&dinov2, vec![("attention_probs_dropout_prob", json!(0.1))]),
    ] {
        case.golden(&[("pixel_values.0", &x)]);
        let zero = edited_copy(
            &case.folder(),
            &[
                ("hidden_dropout_prob", json!(0)),
                ("attention_probs_dropout_prob", json!(0.0)),
                ("drop_path_rate", json!(0)),
            ],
        );
        let model = VitModel::from_folder(zero.path(), CPU).unwrap().0;
        let eval = tch::no_grad(|| model.forward(&x, false));
        assert!(eval.equal(&tch::no_grad(|| model.forward(&x, true))));
        let noisy = edited_copy(&case.folder(), &rates);
        let model = VitModel::from_folder(noisy.path(), CPU).unwrap().0;
        assert!(eval.equal(&tch::no_grad(|| model.forward(&x, false))));
        let a = tch::no_grad(|| model.forward(&x, true));
        let b = tch::no_grad(|| model.forward(&x, true));
        assert!(
            max_abs_diff(&a, &eval) > MOVED,
            "{rates:?} is on in training"
        );
        assert!(max_abs_diff(&a, &b) > MOVED, "{rates:?} draws anew");
    }
}
