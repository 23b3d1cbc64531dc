//! CUDA against the CPU. Every test here needs a usable GPU: without one it prints why (the
//! same reason `--device cuda` gives) and returns, so CPU-only CI stays green; on a GPU
//! machine they run. What they check is listed in docs/gpu.md.

mod common;

use flexlora::config::TaskKind;
use flexlora::models::TextTokenizer;
use flexlora::train::model::TaskModel;
use std::collections::HashMap;
use tch::{Device, Tensor};

/// The GPU, or `None` after printing why there is none.
fn gpu(test: &str) -> Option<Device> {
    if tch::Cuda::is_available() && tch::Cuda::device_count() > 0 {
        return Some(Device::Cuda(0));
    }
    eprintln!(
        "skipping {test}: no CUDA GPU ({})",
        flexlora::device::cuda_unusable_reason()
    );
    None
}

/// Loss, logits and adapter gradients of one forward/backward on `device`, from the trainable
/// state `init` (made on the CPU, so both devices start from the same numbers). Dropout is off
/// in the adapters but on in the encoder, so the model runs in eval mode.
fn step(device: Device, precision: &str, init: &HashMap<String, Tensor>) -> (Tensor, Vec<Tensor>) {
    let c = common::minilm_config(precision);
    let mut model = TaskModel::build(&c, 2, TaskKind::Classification, device).unwrap();
    model.load_state(init).unwrap();
    let tok = TextTokenizer::from_folder(&common::minilm(), 32).unwrap();
    let (pos, neg) = common::polarity_sentences(0, 8);
    let texts: Vec<&str> = pos.iter().chain(&neg).map(String::as_str).collect();
    let input = flexlora::models::ModelInput::Text(tok.encode(&texts, None, device).unwrap());
    let labels = Tensor::from_slice(&(0..16).map(|i| i64::from(i < 8)).collect::<Vec<_>>())
        .to_device(device);
    let (loss, logits) = model.loss(&input, &labels, false);
    loss.backward();
    let grads = model
        .named_trainables()
        .into_iter()
        .filter(|(n, _)| n.starts_with("adapters."))
        .map(|(_, t)| t.grad().to_device(Device::Cpu))
        .collect();
    (logits.detach().to_device(Device::Cpu), grads)
}

/// A CPU-made trainable state with non-zero λ (a fresh adapter's λ = 0 would hide the adapter).
fn initial_state() -> HashMap<String, Tensor> {
    tch::manual_seed(3);
    let mut model = TaskModel::build(
        &common::minilm_config("f32"),
        2,
        TaskKind::Classification,
        Device::Cpu,
    )
    .unwrap();
    tch::no_grad(|| {
        for a in model.svd_adapters_mut() {
            let _ = a.lambda.shallow_clone().normal_(0.0, 0.5);
        }
    });
    model.state().into_iter().collect()
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).norm().double_value(&[]) / b.norm().double_value(&[]).max(1e-12)
}

#[test]
fn a_training_step_on_cuda_matches_the_cpu_in_f32() {
    let Some(gpu) = gpu("a_training_step_on_cuda_matches_the_cpu_in_f32") else {
        return;
    };
    let init = initial_state();
    let (l_cpu, g_cpu) = step(Device::Cpu, "f32", &init);
    let (l_gpu, g_gpu) = step(gpu, "f32", &init);
    assert!(common::max_abs_diff(&l_gpu, &l_cpu) < 1e-4);
    for (a, b) in g_gpu.iter().zip(&g_cpu) {
        assert!(
            common::max_abs_diff(a, b) < 1e-4,
            "{}",
            common::max_abs_diff(a, b)
        );
    }
}

#[test]
fn a_bf16_training_step_on_cuda_is_within_the_documented_tolerance() {
    let Some(gpu) = gpu("a_bf16_training_step_on_cuda_is_within_the_documented_tolerance") else {
        return;
    };
    let init = initial_state();
    let (l_cpu, g_cpu) = step(Device::Cpu, "f32", &init);
    let (l_gpu, g_gpu) = step(gpu, "auto", &init); // auto = bf16 on CUDA
    assert!(rel_err(&l_gpu, &l_cpu) < 0.02);
    let mut errs: Vec<f64> = g_gpu
        .iter()
        .zip(&g_cpu)
        .map(|(a, b)| rel_err(a, b))
        .collect();
    errs.sort_by(f64::total_cmp);
    assert!(
        errs[errs.len() / 2] < 0.02 && errs[errs.len() - 1] < 0.05,
        "{errs:?}"
    );
}

/// The same seed gives the same pruned and expanded slots on both devices (f32, dropout off).
#[test]
fn allocation_decisions_are_the_same_on_both_devices() {
    if gpu("allocation_decisions_are_the_same_on_both_devices").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = common::polarity_slice(dir.path(), 40);
    let mut decisions = Vec::new();
    for device in ["cpu", "cuda"] {
        let out = dir.path().join(device);
        let mut args: Vec<String> = vec![
            "train".into(),
            "--config".into(),
            "configs/default.toml".into(),
            "--model".into(),
            common::minilm().display().to_string(),
            "--data".into(),
            data.display().to_string(),
            "--device".into(),
            device.into(),
            "--output".into(),
            out.display().to_string(),
            "--quiet".into(),
        ];
        for s in [
            "training.precision=\"f32\"",
            "training.batch_size=8",
            "method.dropout=0.0",
            "data.max_length=32",
            "schedule.t_init=2",
            "schedule.t_final=2",
            "schedule.delta_t=2",
        ] {
            args.extend(["--set".into(), s.into()]);
        }
        let o = common::run_flexlora(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let moves: Vec<(serde_json::Value, serde_json::Value)> =
            common::jsonl(&out.join("ranks.jsonl"))
                .into_iter()
                .filter(|r| r.get("pruned").is_some())
                .map(|r| (r["pruned"].clone(), r["expanded"].clone()))
                .collect();
        assert!(!moves.is_empty());
        decisions.push(moves);
    }
    assert_eq!(decisions[0], decisions[1]);
}
