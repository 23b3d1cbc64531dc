//! The models of the ViT and DINOv2 tests: small configs, folders built by
//! python/golden/vit.py, inputs, edited copies.

use crate::common::golden_with_args;
use flexlora::models::VitModel;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Where every test model runs.
pub const CPU: Device = Device::Cpu;
/// Outputs of every classification head here.
pub const LABELS: i64 = 3;
/// Largest difference allowed from transformers (hidden states and logits: absolute;
/// gradients: relative to the reference's largest entry).
pub const TOL: f64 = 1e-4;
/// A wrong setting must move the hidden states by more than this: five times the tolerance
/// (the GELU approximation alone moves them by 6e-4 to 9e-4; everything else by 1e-2 or more).
pub const MOVED: f64 = 5.0 * TOL;
/// Encoder parameters whose gradients are compared (full fine-tuning).
pub const GRADIENT_PARAMS: [&str; 3] = [
    "embeddings.position_embeddings",
    "embeddings.cls_token",
    "embeddings.patch_embeddings.projection.weight",
];
/// DINOv2's first layer scale, compared too.
pub const LAYER_SCALE: &str = "encoder.layer.0.layer_scale1.lambda1";

/// ViT on a 4 × 4 grid of 8-pixel patches (32 × 32 images), RGB, exact GELU.
pub fn vit_config() -> Value {
    json!({
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "image_size": 32, "patch_size": 8, "num_channels": 3
    })
}

/// ViT for 28 × 28 grey images (MNIST-like) in 7-pixel patches, no query/key/value biases,
/// tanh-GELU, a non-default epsilon.
pub fn vit_grey_config() -> Value {
    json!({
        "hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 3,
        "intermediate_size": 40, "image_size": 28, "patch_size": 7, "num_channels": 1,
        "qkv_bias": false, "hidden_act": "gelu_new", "layer_norm_eps": 1e-6
    })
}

/// DINOv2 with its real 14-pixel patches on a 4 × 4 grid (56 × 56 images).
pub fn dinov2_config() -> Value {
    json!({
        "hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 3, "mlp_ratio": 4,
        "image_size": 56, "patch_size": 14, "layerscale_value": 0.5
    })
}

/// DINOv2 without query/key/value biases, MLP ratio 2, a 6 × 6 grid of 4-pixel patches and a
/// drop path rate (inactive in evaluation).
pub fn dinov2_small_config() -> Value {
    json!({
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "mlp_ratio": 2,
        "image_size": 24, "patch_size": 4, "qkv_bias": false, "drop_path_rate": 0.1
    })
}

/// A model folder (built by the golden script on its first call) and its spec.
pub struct Case {
    pub dir: tempfile::TempDir,
    /// Inputs of the classifier: the hidden size, twice it for DINOv2.
    pub features: i64,
}

impl Case {
    pub fn new(model_type: &str, config: Value, seed: u64, bare: bool, spelling: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut param_grads = GRADIENT_PARAMS.to_vec();
        if model_type == "dinov2" {
            param_grads.push(LAYER_SCALE);
        }
        let spec = json!({
            "model_type": model_type, "config": config, "seed": seed, "num_labels": LABELS,
            "std": 0.2, "bare": bare, "spelling": spelling, "param_grads": param_grads
        });
        std::fs::write(dir.path().join("spec.json"), spec.to_string()).unwrap();
        let hidden = config["hidden_size"].as_i64().unwrap();
        let features = if model_type == "dinov2" {
            2 * hidden
        } else {
            hidden
        };
        Self { dir, features }
    }

    pub fn folder(&self) -> PathBuf {
        self.dir.path().join("model")
    }

    /// transformers' outputs; the first call builds the folder.
    pub fn golden(&self, inputs: &[(&str, &Tensor)]) -> HashMap<String, Tensor> {
        let spec = self.dir.path().join("spec.json");
        golden_with_args(
            "vit.py",
            &[spec.to_str().unwrap(), self.folder().to_str().unwrap()],
            inputs,
        )
    }

    pub fn model(&self) -> VitModel {
        VitModel::from_folder(&self.folder(), CPU).unwrap().0
    }
}

/// Normalised-looking random images `[batch, channels, height, width]`.
pub fn pixels(batch: i64, channels: i64, height: i64, width: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randn([batch, channels, height, width], (Kind::Float, CPU))
}

/// A copy of `folder` (weights linked) whose config.json has `edits` applied (`null` removes).
pub fn edited_copy(folder: &Path, edits: &[(&str, Value)]) -> tempfile::TempDir {
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
