//! LLaMA decoders against transformers' `LlamaForCausalLM` (python/golden/llama.py): logits of
//! random-initialised models (grouped-query attention, tied and untied embeddings, biases,
//! scaled RoPE, padding masks), adapter gradients, and greedy generation with and without the
//! key/value cache.

mod common;

use common::{assert_close, golden_with_args, max_abs_diff, rel_err};
use flexlora::adapter::{Adapter, SvdAdapter, SvdAdapterConfig, inject_adapters};
use flexlora::config::ScalePolicy;
use flexlora::lm::{GenerateOptions, Sampling, generate};
use flexlora::models::LlamaModel;
use serde_json::{Value, json};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

const CPU: Device = Device::Cpu;
/// Largest difference allowed from transformers (logits absolute, gradients relative).
const TOL: f64 = 1e-4;

/// GQA (4 query heads over 2 key/value heads), tied embeddings, default RoPE.
fn gqa_tied() -> Value {
    json!({
        "vocab_size": 97, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": true,
        "rope_theta": 500.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 64
    })
}

/// Untied output, biases on attention and MLP, explicit head_dim, Llama 3.1 RoPE scaling.
fn untied_scaled() -> Value {
    json!({
        "vocab_size": 61, "hidden_size": 24, "intermediate_size": 40, "num_hidden_layers": 2,
        "num_attention_heads": 3, "num_key_value_heads": 1, "head_dim": 10,
        "tie_word_embeddings": false, "attention_bias": true, "mlp_bias": true,
        "max_position_embeddings": 64,
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16}
    })
}

/// A model folder built by the golden script on its first call.
struct Case {
    dir: tempfile::TempDir,
    spec: Value,
}

impl Case {
    fn new(config: Value, seed: u64, extra: Value) -> Self {
        let mut spec = json!({"config": config, "seed": seed, "std": 0.2});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        let case = Self {
            dir: tempfile::tempdir().unwrap(),
            spec,
        };
        case.golden(&[]);
        case
    }

    fn golden(&self, inputs: &[(&str, &Tensor)]) -> HashMap<String, Tensor> {
        let spec_path = self.dir.path().join("spec.json");
        std::fs::write(&spec_path, self.spec.to_string()).unwrap();
        let folder = self.dir.path().join("model");
        golden_with_args(
            "llama.py",
            &[spec_path.to_str().unwrap(), folder.to_str().unwrap()],
            inputs,
        )
    }

    fn model(&self) -> LlamaModel {
        LlamaModel::from_folder(&self.dir.path().join("model"), CPU).unwrap()
    }
}

fn ids(vocab: i64, shape: [i64; 2], seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randint(vocab, shape, (Kind::Int64, CPU))
}

fn logits(model: &LlamaModel, ids: &Tensor, mask: Option<&Tensor>) -> Tensor {
    tch::no_grad(|| model.logits(&model.forward(ids, mask, None, false)))
}

#[test]
fn gqa_tied_logits_match_transformers() {
    let case = Case::new(gqa_tied(), 3, json!({}));
    let model = case.model();
    let x = ids(97, [2, 11], 1);
    let want = case.golden(&[("input_ids.0", &x)]);
    let got = logits(&model, &x, None);
    let d = max_abs_diff(&got, &want["logits.0"]);
    eprintln!("gqa tied logits {d:e}");
    assert!(d <= TOL, "logits differ by {d:e}");
    assert!(want["logits.0"].abs().max().double_value(&[]) > 1.0);
}

#[test]
fn untied_biased_llama3_rope_logits_match_transformers() {
    let case = Case::new(untied_scaled(), 4, json!({}));
    let model = case.model();
    // Longer than original_max_position_embeddings, so the scaled frequencies matter.
    let x = ids(61, [2, 40], 2);
    let want = case.golden(&[("input_ids.0", &x)]);
    let d = max_abs_diff(&logits(&model, &x, None), &want["logits.0"]);
    eprintln!("untied llama3 logits {d:e}");
    assert!(d <= TOL, "logits differ by {d:e}");
}

#[test]
fn padding_masks_match_transformers_on_real_tokens() {
    let case = Case::new(gqa_tied(), 5, json!({}));
    let model = case.model();
    let x = ids(97, [3, 9], 3);
    // Row 0 full, row 1 padded on the right, row 2 on the left.
    let mask = Tensor::from_slice2(&[
        [1i64, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 1, 1, 1, 1],
    ]);
    let want = case.golden(&[("input_ids.0", &x), ("attention_mask.0", &mask)]);
    let got = logits(&model, &x, Some(&mask));
    let real = mask.unsqueeze(-1).to_kind(Kind::Float);
    let d = max_abs_diff(&(&got * &real), &(&want["logits.0"] * &real));
    eprintln!("masked logits {d:e}");
    assert!(d <= TOL, "logits on real tokens differ by {d:e}");
    // Without the mask, the left-padded row sees its padding and moves.
    let unmasked = logits(&model, &x, None);
    let moved = max_abs_diff(
        &(&unmasked * &real).get(2),
        &(&want["logits.0"] * &real).get(2),
    );
    assert!(
        moved > 10.0 * TOL,
        "the padding mask changed nothing ({moved:e})"
    );
}

#[test]
fn adapter_gradients_match_transformers() {
    let case = Case::new(gqa_tied(), 6, json!({}));
    let mut model = case.model();
    let paths = model.linear_paths();
    let config = SvdAdapterConfig {
        r_init: 3,
        r_max: 5,
        alpha: 4.0,
        dropout: 0.0,
        scale: ScalePolicy::InitRank,
        init_std: 0.02,
    };
    tch::manual_seed(7);
    let patterns: Vec<String> = [
        "layers.0.self_attn.k_proj",
        "layers.1.mlp.down_proj",
        "layers.1.self_attn.q_proj",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    inject_adapters(model.linears_mut(), &paths, &patterns, |i, o| {
        let mut a = SvdAdapter::new(i, o, config, (Kind::Float, CPU))?;
        tch::no_grad(|| {
            a.p.copy_(&(a.p.randn_like() * 0.3));
            a.q.copy_(&(a.q.randn_like() * 0.3));
            a.lambda
                .copy_(&(Tensor::randn([5], (Kind::Float, CPU)) * 0.5));
            let _ = a.lambda.narrow(0, 3, 2).fill_(0.0);
        });
        Ok(Adapter::Svd(a))
    })
    .unwrap();
    let x = ids(97, [2, 8], 8);
    let out = model.logits(&model.forward(&x, None, None, false));
    let gy = out.randn_like();
    (&out * &gy).sum(Kind::Float).backward();
    let mut named: Vec<(String, Tensor)> = vec![
        ("input_ids.0".into(), x.shallow_clone()),
        ("gy.0".into(), gy),
    ];
    named.extend(common::svd_adapter_inputs(&paths, model.linears()));
    let inputs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let want = case.golden(&inputs);
    let d = max_abs_diff(&out, &want["logits.0"]);
    assert!(d <= TOL, "adapted logits differ by {d:e}");
    let mut worst = 0.0f64;
    for (path, layer) in paths.iter().zip(model.linears()) {
        let Some(a) = layer.svd_adapter() else {
            continue;
        };
        for (n, t) in [("P", &a.p), ("lam", &a.lambda), ("Q", &a.q)] {
            let want = &want[&format!("grad.{path}.{n}")];
            assert!(
                want.abs().max().double_value(&[]) > 0.0,
                "{path} d{n} is zero"
            );
            worst = worst.max(rel_err(&t.grad(), want));
            assert_close(&format!("{path} d{n}"), &t.grad(), want, TOL);
        }
    }
    eprintln!("worst relative adapter gradient error {worst:e}");
}

#[test]
fn generation_with_and_without_cache_matches_transformers() {
    let case = Case::new(gqa_tied(), 9, json!({"generate": 12}));
    let model = case.model();
    let x = ids(97, [2, 5], 10);
    let want = case.golden(&[("input_ids.0", &x)]);
    for row in 0..2 {
        let prompt: Vec<i64> = Vec::try_from(&x.get(row)).unwrap();
        let mut opts = GenerateOptions {
            max_new_tokens: 12,
            sampling: Sampling::Greedy,
            use_cache: true,
            stop_tokens: vec![],
        };
        let cached = generate(&model, &prompt, &opts).unwrap();
        opts.use_cache = false;
        let uncached = generate(&model, &prompt, &opts).unwrap();
        let hf: Vec<i64> = Vec::try_from(&want["greedy.0"].get(row)).unwrap();
        let hf_nocache: Vec<i64> = Vec::try_from(&want["greedy_nocache.0"].get(row)).unwrap();
        assert_eq!(cached, uncached, "row {row}: the cache changed the tokens");
        assert_eq!(
            cached, hf,
            "row {row}: greedy tokens differ from transformers"
        );
        assert_eq!(hf, hf_nocache);
    }
    // Sampling is seeded: the same seed gives the same tokens, another seed other tokens.
    let prompt: Vec<i64> = Vec::try_from(&x.get(0)).unwrap();
    let sampled = |seed| {
        let opts = GenerateOptions {
            max_new_tokens: 12,
            sampling: Sampling::Sample {
                temperature: 1.5,
                top_p: 0.95,
                seed,
            },
            use_cache: true,
            stop_tokens: vec![],
        };
        generate(&model, &prompt, &opts).unwrap()
    };
    assert_eq!(sampled(1), sampled(1));
    assert_ne!(sampled(1), sampled(2));
}

#[test]
fn too_long_prompts_and_unknown_tokens_are_clear_errors() {
    let case = Case::new(gqa_tied(), 11, json!({}));
    let model = case.model();
    let opts = GenerateOptions {
        max_new_tokens: 10,
        sampling: Sampling::Greedy,
        use_cache: true,
        stop_tokens: vec![],
    };
    let long = vec![1i64; 60];
    let e = generate(&model, &long, &opts).unwrap_err().to_string();
    assert!(
        e.contains("60 prompt tokens") && e.contains("context of 64"),
        "{e}"
    );
    let e = generate(&model, &[5, 97], &opts).unwrap_err().to_string();
    assert!(e.contains("token id 97"), "{e}");
    let e = generate(&model, &[], &opts).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
}
