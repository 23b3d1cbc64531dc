//! The ViT and DINOv2 encoders against transformers on small random-initialised models: last
//! hidden states and classification logits at the config's image size and at other sizes
//! (position embeddings resized, non-square too), adapter and parameter gradients, the new
//! head's initial draw, both spellings of the weight names, broken folders.
//!
//! Each model is built and saved by python/golden/vit.py with transformers, then loaded here
//! from that folder, so loading (names, shapes, prefixes) is checked too. Every parity check is
//! paired with deliberately wrong settings that must move the result far beyond the
//! tolerance, so the comparison cannot pass vacuously.

#[path = "vit/case.rs"]
mod case;
mod common;
#[path = "vit/loading.rs"]
mod loading;

use case::*;
use common::{assert_close, max_abs_diff};
use flexlora::adapter::{Adapter, SvdAdapter, SvdAdapterConfig, inject_adapters};
use flexlora::config::ScalePolicy;
use flexlora::models::vit::PositionInterpolation;
use flexlora::models::{VitClassifier, VitModel};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use tch::{Kind, Tensor};

/// A deliberately wrong model: a name, the input it is tried on, and how it is made.
struct Wrong {
    name: &'static str,
    input: usize,
    make: Box<dyn Fn(&Path) -> VitModel>,
}

fn edited(name: &'static str, input: usize, edits: Vec<(&'static str, Value)>) -> Wrong {
    Wrong {
        name,
        input,
        make: Box::new(move |folder| {
            let dir = edited_copy(folder, &edits);
            VitModel::from_folder(dir.path(), CPU).unwrap().0
        }),
    }
}

fn interpolated(name: &'static str, input: usize, mode: PositionInterpolation) -> Wrong {
    Wrong {
        name,
        input,
        make: Box::new(move |folder| {
            let mut m = VitModel::from_folder(folder, CPU).unwrap().0;
            m.interpolation = mode;
            m
        }),
    }
}

/// DINOv2 with every layer-scale entry set to 1 (as if there were no layer scale).
fn no_layer_scale(input: usize) -> Wrong {
    Wrong {
        name: "no layer scale",
        input,
        make: Box::new(|folder| {
            let m = VitModel::from_folder(folder, CPU).unwrap().0;
            let mut n = 0;
            for (name, t) in m.named_parameters() {
                if name.ends_with("lambda1") {
                    let _ = tch::no_grad(|| t.shallow_clone().fill_(1.0));
                    n += 1;
                }
            }
            assert_eq!(n, 4, "two layer scales in each of two layers");
            m
        }),
    }
}

/// Hidden states and logits for every input against transformers (classifier weights given to
/// both); each wrong model must move the hidden states by more than [`MOVED`] on its input.
fn check_forward(case: &Case, inputs: &[Tensor], wrong: &[Wrong]) {
    tch::manual_seed(99);
    let cw = Tensor::randn([LABELS, case.features], (Kind::Float, CPU)) * 0.5;
    let cb = Tensor::randn([LABELS], (Kind::Float, CPU)) * 0.5;
    let names: Vec<String> = (0..inputs.len())
        .map(|n| format!("pixel_values.{n}"))
        .collect();
    let mut named: Vec<(&str, &Tensor)> = names.iter().map(String::as_str).zip(inputs).collect();
    named.extend([("classifier.weight", &cw), ("classifier.bias", &cb)]);
    let want = case.golden(&named);
    let (model, w) = VitModel::from_folder(&case.folder(), CPU).unwrap();
    let mut clf = VitClassifier::new(model, &w, LABELS).unwrap();
    clf.classifier_weight = cw.shallow_clone();
    clf.classifier_bias = cb.shallow_clone();
    let mut hidden = Vec::new();
    for (n, x) in inputs.iter().enumerate() {
        let (h, logits) = tch::no_grad(|| {
            let h = clf.model.forward(x, false);
            let l = clf.logits_from_hidden(&h);
            (h, l)
        });
        assert_eq!(
            logits.double_value(&[0, 0]),
            tch::no_grad(|| clf.forward(x, false)).double_value(&[0, 0])
        );
        let dh = max_abs_diff(&h, &want[&format!("hidden.{n}")]);
        let dl = max_abs_diff(&logits, &want[&format!("logits.{n}")]);
        eprintln!("input {n} {:?}: hidden {dh:e}, logits {dl:e}", x.size());
        assert!(dh <= TOL, "input {n}: last hidden states differ by {dh:e}");
        assert!(dl <= TOL, "input {n}: logits differ by {dl:e}");
        hidden.push(h);
    }
    for wr in wrong {
        let other = tch::no_grad(|| (wr.make)(&case.folder()).forward(&inputs[wr.input], false));
        let d = max_abs_diff(&other, &want[&format!("hidden.{}", wr.input)]);
        eprintln!(
            "  {} on input {}: hidden differ by {d:e}",
            wr.name, wr.input
        );
        assert!(
            d > MOVED,
            "{} should change the output (differs by {d:e})",
            wr.name
        );
    }
    // At the config's own size nothing is resized: the interpolation mode is irrelevant.
    let mut m = case.model();
    m.interpolation = PositionInterpolation::Bilinear;
    assert!(tch::no_grad(|| m.forward(&inputs[0], false)).equal(&hidden[0]));
}

#[test]
fn vit_matches_transformers() {
    let case = Case::new("vit", vit_config(), 1, false, "saved");
    let inputs = [
        pixels(3, 3, 32, 32, 11),
        // 6 × 5 patches (enlarged, non-square), 3 × 3 (shrunk), 4 × 3 with leftover pixels.
        pixels(2, 3, 48, 40, 12),
        pixels(2, 3, 24, 24, 13),
        pixels(2, 3, 35, 29, 14),
    ];
    check_forward(
        &case,
        &inputs,
        &[
            interpolated(
                "bilinear position embeddings",
                1,
                PositionInterpolation::Bilinear,
            ),
            interpolated(
                "antialiased position embeddings",
                2,
                PositionInterpolation::BicubicAntialias,
            ),
            edited("no qkv biases", 0, vec![("qkv_bias", json!(false))]),
            edited(
                "tanh-GELU",
                0,
                vec![("hidden_act", json!("gelu_pytorch_tanh"))],
            ),
            edited("epsilon 0.1", 0, vec![("layer_norm_eps", json!(0.1))]),
        ],
    );
}

/// Grey images, no query/key/value biases, and weights saved under transformers 5's module
/// names (`layers.0.attention.q_proj.weight`, `layers.0.mlp.fc1.weight`).
#[test]
fn vit_grey_module_spelling_matches_transformers() {
    let case = Case::new("vit", vit_grey_config(), 2, false, "modules");
    let inputs = [
        pixels(2, 1, 28, 28, 21),
        pixels(3, 1, 42, 21, 22),
        pixels(2, 1, 14, 14, 23),
    ];
    check_forward(
        &case,
        &inputs,
        &[
            interpolated(
                "bilinear position embeddings",
                1,
                PositionInterpolation::Bilinear,
            ),
            interpolated(
                "antialiased position embeddings",
                2,
                PositionInterpolation::BicubicAntialias,
            ),
            edited("exact GELU", 0, vec![("hidden_act", json!("gelu"))]),
        ],
    );
}

#[test]
fn dinov2_matches_transformers() {
    let case = Case::new("dinov2", dinov2_config(), 3, false, "saved");
    let inputs = [
        pixels(3, 3, 56, 56, 31),
        pixels(2, 3, 84, 70, 32),
        pixels(2, 3, 42, 42, 33),
        pixels(2, 3, 60, 45, 34),
    ];
    check_forward(
        &case,
        &inputs,
        &[
            no_layer_scale(0),
            interpolated(
                "bilinear position embeddings",
                1,
                PositionInterpolation::Bilinear,
            ),
            interpolated(
                "antialiased position embeddings",
                2,
                PositionInterpolation::BicubicAntialias,
            ),
            edited("epsilon 0.1", 0, vec![("layer_norm_eps", json!(0.1))]),
            edited("ReLU", 0, vec![("hidden_act", json!("relu"))]),
        ],
    );
}

/// No query/key/value biases, drop path configured (identity in evaluation), weights saved
/// under transformers 5's module names (`encoder.layer.0.attention.q_proj.weight`).
#[test]
fn dinov2_small_module_spelling_matches_transformers() {
    let case = Case::new("dinov2", dinov2_small_config(), 4, false, "modules");
    let inputs = [
        pixels(2, 3, 24, 24, 41),
        pixels(2, 3, 20, 36, 42),
        pixels(3, 3, 16, 16, 43),
    ];
    check_forward(
        &case,
        &inputs,
        &[
            no_layer_scale(0),
            interpolated(
                "bilinear position embeddings",
                1,
                PositionInterpolation::Bilinear,
            ),
            interpolated(
                "antialiased position embeddings",
                2,
                PositionInterpolation::BicubicAntialias,
            ),
        ],
    );
}

/// SVD adapters with fixed random factors on a query projection and an MLP layer, on images of
/// another size than the config's: the adapted hidden states, the gradients of P, λ and Q, and
/// (the whole encoder made trainable) the gradients of the position embeddings (through the
/// bicubic resize), the class token and the patch projection.
fn check_gradients(case: &Case, targets: &[&str], x: &Tensor) {
    case.golden(&[("pixel_values.0", x)]);
    let mut model = case.model();
    let paths = model.linear_paths();
    let config = SvdAdapterConfig {
        r_init: 4,
        r_max: 6,
        alpha: 4.0,
        dropout: 0.0,
        scale: ScalePolicy::InitRank,
        init_std: 0.02,
    };
    tch::manual_seed(51);
    let patterns: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
    let adapted = inject_adapters(model.linears_mut(), &paths, &patterns, |i, o| {
        let mut a = SvdAdapter::new(i, o, config, (Kind::Float, CPU))?;
        // Factors large enough that the update moves the output; λ non-zero so that every
        // gradient is exercised; slots 4 and 5 stay inactive.
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
    assert_eq!(adapted, patterns);
    model.set_trainable(true);
    let hidden = model.forward(x, false);
    let gy = hidden.randn_like();
    (&hidden * &gy).sum(Kind::Float).backward();

    let mut named: Vec<(String, Tensor)> = vec![
        ("gy.0".into(), gy.shallow_clone()),
        ("pixel_values.0".into(), x.shallow_clone()),
    ];
    named.extend(common::svd_adapter_inputs(&paths, model.linears()));
    let inputs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let want = case.golden(&inputs);
    let d = max_abs_diff(&hidden, &want["hidden.0"]);
    eprintln!("adapted hidden {d:e}");
    assert!(d <= TOL, "adapted hidden states differ by {d:e}");
    let mut worst = 0.0f64;
    for (path, layer) in paths.iter().zip(model.linears()) {
        let Some(a) = layer.svd_adapter() else {
            continue;
        };
        for (n, t) in [("P", &a.p), ("lam", &a.lambda), ("Q", &a.q)] {
            let want = &want[&format!("grad.{path}.{n}")];
            assert!(
                want.abs().max().double_value(&[]) > 0.0,
                "{path} d{n} is not zero"
            );
            worst = worst.max(common::rel_err(&t.grad(), want));
            assert_close(&format!("{path} d{n}"), &t.grad(), want, TOL);
        }
    }
    let params: HashMap<String, &Tensor> = model.named_parameters().into_iter().collect();
    let mut names = GRADIENT_PARAMS.to_vec();
    if params.contains_key(LAYER_SCALE) {
        names.push(LAYER_SCALE);
    }
    for name in names {
        let got = params[name].grad();
        let want = &want[&format!("grad.param.{name}")];
        assert!(
            want.abs().max().double_value(&[]) > 0.0,
            "d {name} is not zero"
        );
        worst = worst.max(common::rel_err(&got, want));
        assert_close(&format!("d {name}"), &got, want, TOL);
    }
    eprintln!("worst relative gradient error {worst:e}");
    // The adapters matter: without them the output is far from the adapted reference.
    for l in model.linears_mut() {
        l.adapter = None;
    }
    let plain = tch::no_grad(|| model.forward(x, false));
    let d = max_abs_diff(&plain, &want["hidden.0"]);
    assert!(
        d > MOVED,
        "adapters should change the output (differs by {d:e})"
    );
}

#[test]
fn vit_gradients_match_transformers() {
    let case = Case::new("vit", vit_config(), 5, true, "saved");
    check_gradients(
        &case,
        &["layers.0.attention.q_proj", "layers.1.mlp.fc1"],
        &pixels(2, 3, 40, 48, 52),
    );
}

#[test]
fn dinov2_gradients_match_transformers() {
    let case = Case::new("dinov2", dinov2_config(), 6, true, "saved");
    check_gradients(
        &case,
        &[
            "encoder.layer.0.attention.q_proj",
            "encoder.layer.1.mlp.fc2",
        ],
        &pixels(2, 3, 70, 42, 62),
    );
}

/// The real DINOv2 ViT-S/14 (`assets/dinov2-vits14`, converted from the ONNX saliency model by
/// `scripts/fetch-assets vision`; 37 × 37 position grid) against transformers' `Dinov2Model`
/// on the same folder, at 112 × 112 and 224 × 224: both resize the position embeddings.
#[test]
fn dinov2_vits14_matches_transformers() {
    let folder = common::repo_root().join("assets/dinov2-vits14");
    assert!(
        folder.join("model.safetensors").exists(),
        "{} is missing: run scripts/fetch-assets vision",
        folder.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.json");
    std::fs::write(
        &spec,
        json!({"model_type": "dinov2", "bare": true}).to_string(),
    )
    .unwrap();
    let inputs = [pixels(2, 3, 112, 112, 131), pixels(2, 3, 224, 224, 132)];
    let want = common::golden_with_args(
        "vit.py",
        &[spec.to_str().unwrap(), folder.to_str().unwrap()],
        &[
            ("pixel_values.0", &inputs[0]),
            ("pixel_values.1", &inputs[1]),
        ],
    );
    let mut model = VitModel::from_folder(&folder, CPU).unwrap().0;
    assert_eq!(model.config().grid(), [37, 37]);
    assert_eq!(
        model.named_parameters().len(),
        223,
        "every tensor of the file"
    );
    for (n, x) in inputs.iter().enumerate() {
        let want = &want[&format!("hidden.{n}")];
        let hidden = tch::no_grad(|| model.forward(x, false));
        let d = max_abs_diff(&hidden, want);
        let scale = want.abs().max().double_value(&[]);
        eprintln!(
            "ViT-S/14 {:?}: hidden {d:e} (largest |value| {scale:.1})",
            x.size()
        );
        assert!(d <= TOL, "input {n}: last hidden states differ by {d:e}");
    }
    model.interpolation = PositionInterpolation::BicubicAntialias;
    let other = tch::no_grad(|| model.forward(&inputs[1], false));
    let d = max_abs_diff(&other, &want["hidden.1"]);
    eprintln!("  antialiased position embeddings: hidden differ by {d:e}");
    assert!(
        d > MOVED,
        "antialiasing should change the output (differs by {d:e})"
    );
}
