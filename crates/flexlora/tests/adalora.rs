//! AdaLoRA against Hugging Face PEFT 0.21.2: the same real model (all-MiniLM-L6-v2, adapters on
//! query and value), the same initial adapters and head, the same batches of real sentences and
//! a plain AdamW on both sides; the masks must agree after every step and the adapters at the
//! end. And `flexlora train --method adalora` end to end.

mod common;

use common::{jsonl as lines, kill_when, run_flexlora as flexlora};

use common::{assert_close, golden_with_args, max_abs_diff, minilm, rel_err, repo_root};
use flexlora::adalora::AdaLoraAllocator;
use flexlora::adapter::{
    AdaptedLinear, Adapter, SvdAdapter, SvdAdapterConfig, orthogonality_regulariser,
};
use flexlora::config::{Config, ScalePolicy, TaskKind};
use flexlora::models::{EncoderInput, TextTokenizer};
use flexlora::optim::{AdamW, AdamWConfig};
use flexlora::train::model::TaskModel;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Device, Kind, Tensor};

const CPU: Device = Device::Cpu;
/// Optimiser steps of the parity run: T = 36 with t_init 4, t_final 8, ΔT 3 masks at PEFT's
/// global steps 6, 9, ..., 27, finalises at 28 and re-applies the final mask from 29 on.
const STEPS: u64 = 36;
const BATCHES: usize = 6;
const BATCH: usize = 8;
const LR: f64 = 5e-3;

/// The first `n` positive and `n` negative sentences of the real Pang & Lee file.
fn sentences(n: usize) -> (Vec<String>, Vec<String>) {
    common::polarity_sentences(0, n)
}

/// Batch `i`: four positive then four negative sentences, labels 1 and 0.
fn batches(tok: &TextTokenizer) -> Vec<(EncoderInput, Tensor)> {
    let (pos, neg) = sentences(BATCHES * BATCH / 2);
    (0..BATCHES)
        .map(|i| {
            let h = BATCH / 2;
            let texts: Vec<&str> = pos[i * h..(i + 1) * h]
                .iter()
                .chain(&neg[i * h..(i + 1) * h])
                .map(String::as_str)
                .collect();
            let labels: Vec<i64> = (0..BATCH).map(|j| i64::from(j < h)).collect();
            (
                tok.encode(&texts, None, CPU).unwrap(),
                Tensor::from_slice(&labels),
            )
        })
        .collect()
}

fn parity_config() -> Config {
    let sets: Vec<String> = [
        format!("model.path={:?}", minilm().display().to_string()),
        "model.target_modules=[\"query\", \"value\"]".into(),
        "method.name=\"adalora\"".into(),
        "method.r_init=4".into(),
        "method.target_r=2".into(),
        "method.alpha=8.0".into(),
        "method.dropout=0.0".into(),
        "method.orth_reg_weight=0.1".into(),
        "schedule.t_init=4".into(),
        "schedule.t_final=8".into(),
        "schedule.delta_t=3".into(),
        "data.max_length=32".into(),
    ]
    .into();
    Config::load(&repo_root().join("configs/default.toml"), &sets)
        .unwrap()
        .config
}

/// One adapted layer against PEFT's `SVDLinear`, with a masked triplet (`λ = 0`) among three:
/// output, gradients and `ΔW` agree within 1e-6 of their scale. Not to the bit, although the
/// operations are PEFT's in PEFT's order on the same LibTorch: MKL's sgemm rounds differently
/// depending on how its operands happen to be aligned in memory (the same product in one
/// Python process differs by 2-4e-7 between buffer offsets). FlexLoRA's `α / r` (no `+ 1e-5`,
/// a relative change of 3.3e-6 at r = 3) fails the same check, so the check sees the `1e-5`.
#[test]
fn layer_arithmetic_is_peft_svdlinear() {
    tch::set_num_threads(1);
    tch::manual_seed(11);
    let (inp, out, r, alpha) = (48i64, 40i64, 3usize, 12.0);
    let opts = (Kind::Float, CPU);
    let w = Tensor::randn([out, inp], opts) * 0.1;
    let b = Tensor::randn([out], opts) * 0.1;
    let p = Tensor::randn([out, r as i64], opts);
    let lam = Tensor::randn([r as i64], opts);
    let _ = lam.narrow(0, 1, 1).fill_(0.0);
    let q = Tensor::randn([r as i64, inp], opts);
    let x = Tensor::randn([3, 7, inp], opts);
    let gy = Tensor::randn([3, 7, out], opts);
    let layer = |scale| {
        let mut l = AdaptedLinear::new(w.copy(), Some(b.copy()));
        let config = SvdAdapterConfig {
            r_init: r,
            r_max: r,
            alpha,
            dropout: 0.0,
            scale,
            init_std: 0.02,
        };
        let a = SvdAdapter::from_parts(p.copy(), lam.copy(), q.copy(), vec![true; r], config);
        l.adapter = Some(Adapter::Svd(a.unwrap()));
        l
    };
    let ours = layer(ScalePolicy::PeftAdalora);
    let y = ours.forward(&x, true);
    (&y * &gy).sum(Kind::Float).backward();
    let want = golden_with_args(
        "adalora_layer.py",
        &[&alpha.to_string()],
        &[
            ("W", &w),
            ("b", &b),
            ("P", &p),
            ("lambda", &lam),
            ("Q", &q),
            ("x", &x),
            ("gy", &gy),
        ],
    );
    let Some(Adapter::Svd(a)) = &ours.adapter else {
        unreachable!()
    };
    let tol = 1e-6;
    assert_close("output", &y, &want["y"], tol);
    for (name, t) in [("P", &a.p), ("lambda", &a.lambda), ("Q", &a.q)] {
        assert_close(
            &format!("gradient of {name}"),
            &t.grad(),
            &want[&format!("grad.{name}")],
            tol,
        );
    }
    assert_close("ΔW", &a.delta_weight(), &want["delta"], tol);
    assert_eq!(a.scale(), alpha / f64::from(3.0f32 + 1e-5f32));
    let plain = layer(ScalePolicy::InitRank);
    let Some(Adapter::Svd(plain)) = &plain.adapter else {
        unreachable!()
    };
    let e = rel_err(&plain.delta_weight(), &want["delta"]);
    eprintln!(
        "SVDLinear: output {:e}, ΔW {:e} (α / r_init: {e:e})",
        rel_err(&y, &want["y"]),
        rel_err(&a.delta_weight(), &want["delta"])
    );
    assert!(e > tol, "α / r_init is {e:e} from PEFT's ΔW");
}

/// Our side of the parity run: the trainer's step with the trainer's pieces (model, loss plus
/// orthogonality regulariser, backward, AdamW step, AdaLoRA update and mask, zero_grad), on a
/// fixed batch sequence, dropout off, constant learning rate, no clipping.
#[test]
fn adalora_matches_peft_step_by_step() {
    tch::set_num_threads(1);
    tch::manual_seed(7);
    let config = parity_config();
    let mut model = TaskModel::build(&config, 2, TaskKind::Classification, CPU).unwrap();
    assert_eq!(model.adapted_paths.len(), 12, "query and value of 6 layers");
    let tok = TextTokenizer::from_folder(&minilm(), config.data.max_length).unwrap();
    let data = batches(&tok);
    let o = &config.optimiser;
    let mut optimiser = AdamW::new(AdamWConfig {
        beta1: o.beta1,
        beta2: o.beta2,
        eps: o.eps,
        weight_decay: 0.0,
    });
    for g in model.optimiser_groups() {
        optimiser.add_group(&g);
    }
    let k = model.adapted_paths.len();
    let a = &config.allocation;
    let mut alloc = AdaLoraAllocator::new(
        &model.svd_adapters(),
        config.adalora_budget(k, STEPS),
        a.sensitivity_beta1,
        a.sensitivity_beta2,
    )
    .unwrap();

    // Inputs for PEFT: the initial adapters and head, and the batches.
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for (path, ad) in model.adapted_paths.iter().zip(model.svd_adapters()) {
        named.push((format!("init.{path}.P"), ad.p.detach().copy()));
        named.push((format!("init.{path}.lambda"), ad.lambda.detach().copy()));
        named.push((format!("init.{path}.Q"), ad.q.detach().copy()));
    }
    let (cw, cb) = model.classifier.classifier();
    named.push(("classifier.weight".into(), cw.detach().copy()));
    named.push(("classifier.bias".into(), cb.detach().copy()));
    for (i, (input, labels)) in data.iter().enumerate() {
        named.push((format!("batch.{i}.input_ids"), input.input_ids.copy()));
        named.push((
            format!("batch.{i}.attention_mask"),
            input.attention_mask.copy(),
        ));
        named.push((
            format!("batch.{i}.token_type_ids"),
            input.token_type_ids.copy(),
        ));
        named.push((format!("batch.{i}.labels"), labels.copy()));
    }

    let gamma = config.method.orth_reg_weight;
    let (mut losses, mut lambdas, mut patterns) = (Vec::new(), Vec::new(), Vec::new());
    let mut masked_steps = Vec::new();
    for t in 0..STEPS {
        let (input, labels) = &data[t as usize % BATCHES];
        let input = flexlora::models::ModelInput::Text(EncoderInput {
            input_ids: input.input_ids.shallow_clone(),
            attention_mask: input.attention_mask.shallow_clone(),
            token_type_ids: input.token_type_ids.shallow_clone(),
        });
        let (loss, _) = model.loss(&input, &labels.to_kind(Kind::Float), false);
        let reg = orthogonality_regulariser(model.svd_adapters(), gamma, config.method.orth_norm)
            .unwrap();
        let total = loss + reg;
        total.backward();
        losses.push(total.double_value(&[]));
        optimiser.step(LR);
        if let Some(r) = alloc
            .update_and_allocate(&mut model.svd_adapters_mut(), t)
            .unwrap()
        {
            assert_eq!(r.global_step, t);
            masked_steps.push((t, r.budget, r.ranks.iter().sum::<usize>(), r.final_mask));
        }
        optimiser.zero_grad();
        let l: Vec<Tensor> = model
            .svd_adapters()
            .iter()
            .map(|a| a.lambda.detach().copy())
            .collect();
        lambdas.push(Tensor::stack(&l, 0));
        let flags: Vec<f32> = alloc
            .rank_pattern()
            .iter()
            .flatten()
            .map(|&b| f32::from(u8::from(b)))
            .collect();
        patterns.push(Tensor::from_slice(&flags).view([k as i64, 4]));
    }
    // The phases happened as planned: masks at 6, 9, ..., 27 with PEFT's cubic budgets, the
    // final mask at 28.
    let expect: Vec<(u64, usize)> = vec![
        (6, 42),
        (9, 35),
        (12, 31),
        (15, 27),
        (18, 25),
        (21, 24),
        (24, 24),
        (27, 24),
        (28, 24),
    ];
    assert_eq!(
        masked_steps
            .iter()
            .map(|&(t, b, _, _)| (t, b))
            .collect::<Vec<_>>(),
        expect
    );
    assert!(masked_steps.iter().all(|&(_, b, kept, _)| kept == b));
    assert!(
        masked_steps.last().unwrap().3,
        "the last mask is the final one"
    );

    let spec = serde_json::json!({
        "paths": model.adapted_paths, "target_modules": ["query", "value"], "num_labels": 2,
        "init_r": 4, "target_r": 2, "lora_alpha": config.method.alpha,
        "tinit": 4, "tfinal": 8, "deltaT": 3, "total_step": STEPS,
        "beta1": a.sensitivity_beta1, "beta2": a.sensitivity_beta2,
        "orth_reg_weight": gamma, "lr": LR, "adam_betas": [o.beta1, o.beta2], "adam_eps": o.eps,
        "batches": BATCHES, "threads": 1,
    });
    let spec_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(spec_file.path(), spec.to_string()).unwrap();
    let inputs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let want = golden_with_args(
        "adalora_train.py",
        &[
            minilm().to_str().unwrap(),
            spec_file.path().to_str().unwrap(),
        ],
        &inputs,
    );

    // The same masks after every step: which λ are exactly zero, and PEFT's rank_pattern.
    let mut worst_lambda = 0.0f64;
    for t in 0..STEPS as usize {
        let ours = &lambdas[t];
        let theirs = want["lambda"].get(t as i64);
        assert!(
            ours.eq(0.0).equal(&theirs.eq(0.0)),
            "step {t}: the zero λ differ:\nours {ours}\nPEFT {theirs}"
        );
        assert!(
            patterns[t].equal(&want["pattern"].get(t as i64)),
            "step {t}: rank patterns differ"
        );
        worst_lambda = worst_lambda.max(max_abs_diff(ours, &theirs));
    }
    let loss_diff = (Tensor::from_slice(&losses) - &want["loss"])
        .abs()
        .max()
        .double_value(&[]);

    // The adapters and head after all steps.
    let mut worst = 0.0f64;
    for (path, ad) in model.adapted_paths.iter().zip(model.svd_adapters()) {
        for (name, t) in [("P", &ad.p), ("lambda", &ad.lambda), ("Q", &ad.q)] {
            let d = max_abs_diff(t, &want[&format!("final.{path}.{name}")]);
            worst = worst.max(d);
        }
    }
    let (cw, cb) = model.classifier.classifier();
    let head = max_abs_diff(cw, &want["final.classifier.weight"])
        .max(max_abs_diff(cb, &want["final.classifier.bias"]));
    eprintln!(
        "AdaLoRA vs PEFT after {STEPS} steps: adapters max |diff| {worst:e}, head {head:e}, \
         λ over all steps {worst_lambda:e}, loss {loss_diff:e}"
    );
    assert!(worst <= 1e-5, "adapters differ by {worst:e}");
    assert!(head <= 1e-5, "head differs by {head:e}");
    assert!(loss_diff <= 1e-5, "losses differ by {loss_diff:e}");
}

fn slice(dir: &Path) -> PathBuf {
    common::polarity_slice(dir, 60)
}

/// A small AdaLoRA run: 84 train / 12 validation / 24 test, batch 8, 2 epochs = T = 22 steps,
/// adapters on query and value of 6 layers (K = 12) at init_r 2 -> target_r 1.
fn adalora_args(data: &Path, out: &Path) -> Vec<String> {
    let mut v: Vec<String> = [
        "train",
        "--config",
        "configs/default.toml",
        "--method",
        "adalora",
        "--model",
        minilm().to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--epochs",
        "2",
        "--output",
        out.to_str().unwrap(),
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for s in [
        "model.target_modules=[\"query\", \"value\"]",
        "training.batch_size=8",
        "training.threads=1",
        "training.device=\"cpu\"",
        "training.log_every=2",
        "data.max_length=32",
        "schedule.t_init=2",
        "schedule.t_final=6",
        "schedule.delta_t=2",
        "method.r_init=2",
        "method.target_r=1",
        "optimiser.lr=0.01",
    ] {
        v.push("--set".into());
        v.push(s.into());
    }
    v
}

/// `flexlora train --method adalora`: masks at PEFT's steps, the total rank falls from
/// `r_init · K` to `target_r · K` by `T − t_final` and stays there, the summary agrees, the
/// final λ are zero exactly where the final pattern says.
#[test]
fn train_command_runs_adalora() {
    let dir = tempfile::tempdir().unwrap();
    let data = slice(dir.path());
    let out = dir.path().join("run");
    let o = flexlora(&adalora_args(&data, &out));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 22);
    assert_eq!(summary["method"], "adalora");
    let (k, t_final, total) = (12u64, 6u64, 22u64);

    let records = lines(&out.join("ranks.jsonl"));
    let total_rank = |r: &serde_json::Value| -> u64 {
        r["ranks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .sum()
    };
    assert_eq!(records[0]["initial"], true);
    assert_eq!(total_rank(&records[0]), 2 * k);
    // PEFT's global_step g = step - 1: masks at even g in (t_init, T - t_final) = 4, 6, ...,
    // 14, the final mask at g = 16; logged at the step after each.
    let steps: Vec<u64> = records[1..]
        .iter()
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![5, 7, 9, 11, 13, 15, 17]);
    let totals: Vec<u64> = records.iter().map(total_rank).collect();
    assert!(
        totals.windows(2).all(|w| w[1] <= w[0]),
        "the total rank never grows: {totals:?}"
    );
    let last = records.last().unwrap();
    assert_eq!(last["final"], true);
    assert_eq!(last["step"].as_u64().unwrap(), total - t_final + 1);
    assert_eq!(total_rank(last), k, "target_r x K after T - t_final");
    for r in &records[1..] {
        assert_eq!(total_rank(r), r["budget"].as_u64().unwrap(), "{r}");
    }
    assert_eq!(summary["total_rank"], k);

    // The metrics log the kept total, and the parameter count follows it: each of the 12
    // matrices is 384 x 384, a kept triplet is 384 + 384 + 1 parameters, the head 2 x 384 + 2.
    let metrics = lines(&out.join("metrics.jsonl"));
    let last_logged = metrics
        .iter()
        .rev()
        .find(|m| m.get("total_rank").is_some())
        .unwrap();
    assert_eq!(last_logged["total_rank"], k);
    assert_eq!(summary["trainable_parameters"], k * 769 + 770);

    // The final λ are zero exactly where the final pattern masks.
    let model = Tensor::read_safetensors(out.join("checkpoints/final/model.safetensors")).unwrap();
    let model: std::collections::HashMap<String, Tensor> = model.into_iter().collect();
    let pattern = last["rank_pattern"].as_array().unwrap();
    let paths: Vec<String> = (0..6)
        .flat_map(|l| ["query", "value"].map(|m| format!("encoder.layer.{l}.attention.self.{m}")))
        .collect();
    for (path, keep) in paths.iter().zip(pattern) {
        let lam = Vec::<f32>::try_from(&model[&format!("adapters.{path}.lambda")]).unwrap();
        for (l, k) in lam.iter().zip(keep.as_array().unwrap()) {
            assert_eq!(
                *l == 0.0,
                !k.as_bool().unwrap(),
                "{path}: {lam:?} vs {keep}"
            );
        }
    }
    assert!(out.join("checkpoints/final/adalora.safetensors").exists());

    // `flexlora eval` rebuilds the AdaLoRA model and reproduces the test metric.
    let e = Command::new(env!("CARGO_BIN_EXE_flexlora"))
        .args(["eval", "--run", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    let result: serde_json::Value = serde_json::from_slice(&e.stdout).unwrap();
    let acc = summary["test_metric"].as_f64().unwrap();
    assert!((result["result"]["accuracy"].as_f64().unwrap() - acc).abs() < 1e-9);
}

#[test]
fn adalora_schedule_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = slice(dir.path());
    for (kv, needle) in [
        ("schedule.t_init=16", "`schedule.t_init` = 16"),
        ("method.target_r=3", "`method.target_r` = 3"),
        (
            "allocation.sensitivity_beta1=1.0",
            "`allocation.sensitivity_beta1` = 1",
        ),
    ] {
        let out = dir.path().join("bad");
        let mut a = adalora_args(&data, &out);
        a.extend(["--set".to_string(), kv.to_string()]);
        let o = flexlora(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{kv} should fail");
        assert!(err.contains(needle), "{kv}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        let _ = std::fs::remove_dir_all(&out);
    }
}

/// A run killed (SIGKILL) in the budgeting phase and resumed ends with the same bytes as an
/// uninterrupted one: the sensitivity EMAs and the rank pattern are checkpointed.
#[test]
fn adalora_resume_gives_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let data = slice(dir.path());
    let args = |out: &Path| {
        let mut a = adalora_args(&data, out);
        a.extend(["--set".into(), "training.checkpoint_every=3".into()]);
        a
    };
    let straight = dir.path().join("straight");
    let o = flexlora(&args(&straight));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let killed = dir.path().join("killed");
    // Step 6 (PEFT's global step 5): after the first masking, with live EMAs.
    let target = killed.join("checkpoints/step-000006/manifest.json");
    kill_when(&args(&killed), || target.exists());
    assert!(!killed.join("summary.json").exists());
    let r = flexlora(&[
        "train".into(),
        "--resume".into(),
        killed.display().to_string(),
        "--quiet".into(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    for f in [
        "checkpoints/final/model.safetensors",
        "checkpoints/final/adalora.safetensors",
        "checkpoints/best/model.safetensors",
    ] {
        let a = std::fs::read(straight.join(f)).unwrap();
        let b = std::fs::read(killed.join(f)).unwrap();
        assert!(a == b, "{f} differs after SIGKILL + resume");
    }
    assert_eq!(
        lines(&straight.join("ranks.jsonl")),
        lines(&killed.join("ranks.jsonl")),
        "ranks.jsonl differs after resume"
    );
}
