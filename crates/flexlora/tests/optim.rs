//! AdamW against torch.optim.AdamW, per-slot resets, clipping, state round trips and the
//! learning-rate schedules.

mod common;

use common::{assert_close, golden};
use flexlora::config::LrSchedule;
use flexlora::optim::{AdamW, AdamWConfig, learning_rate};
use tch::{Device, Kind, Tensor};

const F32: (Kind, Device) = (Kind::Float, Device::Cpu);
const CONFIG: AdamWConfig = AdamWConfig {
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weight_decay: 0.01,
};

fn params() -> Vec<Tensor> {
    vec![
        Tensor::randn([6, 4], F32).set_requires_grad(true), // P-like, slot axis 1
        Tensor::randn([4], F32).set_requires_grad(true),    // lambda-like, slot axis 0
        Tensor::randn([3, 2], F32).set_requires_grad(true), // a head, no slots
    ]
}

fn optimiser(ps: &[Tensor]) -> AdamW {
    let mut opt = AdamW::new(CONFIG);
    opt.add_group(&[(&ps[0], Some(1)), (&ps[1], Some(0))]);
    opt.add_group(&[(&ps[2], None)]);
    opt
}

fn set_grads(ps: &[Tensor], grads: &[Tensor]) {
    for (p, g) in ps.iter().zip(grads) {
        let mut pg = p.grad();
        if pg.defined() {
            pg.copy_(g);
        } else {
            // First step: create the gradient through autograd.
            (p * g).sum(Kind::Float).backward();
        }
    }
}

fn copies(ps: &[Tensor]) -> Vec<Tensor> {
    ps.iter()
        .map(|p| p.detach().copy().set_requires_grad(true))
        .collect()
}

#[test]
fn adamw_matches_torch_step_by_step() {
    tch::manual_seed(11);
    let ps = params();
    let initial: Vec<Tensor> = ps.iter().map(|p| p.detach().copy()).collect();
    let mut opt = optimiser(&ps);
    let steps = 6;
    let lrs: Vec<f64> = (0..steps)
        .map(|t| learning_rate(LrSchedule::Linear, 1e-2, t, steps, 0.34))
        .collect();
    let grads: Vec<Vec<Tensor>> = (0..steps)
        .map(|_| ps.iter().map(|p| p.randn_like()).collect())
        .collect();
    let mut ours = Vec::new();
    for (t, lr) in lrs.iter().enumerate() {
        set_grads(&ps, &grads[t]);
        opt.step(*lr);
        ours.push(ps.iter().map(|p| p.detach().copy()).collect::<Vec<_>>());
    }
    let hyper = Tensor::from_slice(&[CONFIG.beta1, CONFIG.beta2, CONFIG.eps, CONFIG.weight_decay]);
    let lr = Tensor::from_slice(&lrs);
    let mut names: Vec<(String, Tensor)> = vec![("hyper".into(), hyper), ("lr".into(), lr)];
    for (i, p) in initial.iter().enumerate() {
        names.push((format!("p{i}"), p.shallow_clone()));
        for (t, g) in grads.iter().enumerate() {
            names.push((format!("g{i}_{t}"), g[i].shallow_clone()));
        }
    }
    let inputs: Vec<(&str, &Tensor)> = names.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let want = golden("adamw.py", &inputs);
    for (t, step) in ours.iter().enumerate() {
        for (i, p) in step.iter().enumerate() {
            assert_close(
                &format!("param {i} after step {t}"),
                p,
                &want[&format!("p{i}_{t}")],
                1e-6,
            );
        }
    }
}

#[test]
fn reset_slot_restarts_only_that_slot() {
    tch::manual_seed(12);
    let a = params();
    let b = copies(&a);
    let (mut oa, mut ob) = (optimiser(&a), optimiser(&b));
    let lr = 1e-2;
    for _ in 0..3 {
        let g: Vec<Tensor> = a.iter().map(|p| p.randn_like()).collect();
        set_grads(&a, &g);
        set_grads(&b, &g);
        oa.step(lr);
        ob.step(lr);
    }
    oa.reset_slot(0, 2).unwrap();
    assert_eq!(oa.slot_step_counts(0)[0], vec![3.0, 3.0, 0.0, 3.0]);
    let before: Vec<Tensor> = a.iter().map(|p| p.detach().copy()).collect();
    let g: Vec<Tensor> = a.iter().map(|p| p.randn_like()).collect();
    set_grads(&a, &g);
    set_grads(&b, &g);
    oa.step(lr);
    ob.step(lr);
    // Slot 2 of P (column) and lambda: exactly a fresh AdamW's first step,
    // p * (1 - lr wd) - lr * g / (|g| + eps).
    let fresh = |p: &Tensor, g: &Tensor| {
        p * (1.0 - lr * CONFIG.weight_decay) - g / (g.abs() + CONFIG.eps) * lr
    };
    assert_close(
        "P slot 2",
        &a[0].narrow(1, 2, 1),
        &fresh(&before[0].narrow(1, 2, 1), &g[0].narrow(1, 2, 1)),
        1e-6,
    );
    assert_close(
        "lambda slot 2",
        &a[1].narrow(0, 2, 1),
        &fresh(&before[1].narrow(0, 2, 1), &g[1].narrow(0, 2, 1)),
        1e-6,
    );
    // Every other slot, and the other group, continue exactly as without the reset.
    for slot in [0, 1, 3] {
        assert!(
            a[0].narrow(1, slot, 1).equal(&b[0].narrow(1, slot, 1)),
            "P slot {slot}"
        );
        assert!(
            a[1].narrow(0, slot, 1).equal(&b[1].narrow(0, slot, 1)),
            "lambda slot {slot}"
        );
    }
    assert!(a[2].equal(&b[2]), "other group");
    assert!(
        !a[0].narrow(1, 2, 1).equal(&b[0].narrow(1, 2, 1)),
        "the reset changed something"
    );
    assert!(oa.reset_slot(5, 0).is_err());
    assert!(oa.reset_slot(0, 4).is_err());
}

#[test]
fn state_round_trips_through_a_file() {
    tch::manual_seed(13);
    let a = params();
    let mut oa = optimiser(&a);
    for _ in 0..2 {
        let g: Vec<Tensor> = a.iter().map(|p| p.randn_like()).collect();
        set_grads(&a, &g);
        oa.step(1e-2);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("optimiser.safetensors");
    oa.save(&path).unwrap();
    let b = copies(&a);
    let mut ob = optimiser(&b);
    ob.load(&path).unwrap();
    let g: Vec<Tensor> = a.iter().map(|p| p.randn_like()).collect();
    set_grads(&a, &g);
    set_grads(&b, &g);
    oa.step(1e-2);
    ob.step(1e-2);
    for (x, y) in a.iter().zip(&b) {
        assert!(x.equal(y), "resumed optimiser diverged");
    }
    // A state for other parameters is refused with the tensor named.
    let other = [Tensor::zeros([5, 4], F32).set_requires_grad(true)];
    let mut oc = AdamW::new(CONFIG);
    oc.add_group(&[(&other[0], Some(1))]);
    let e = oc.load(&path).unwrap_err().to_string();
    assert!(e.contains("param.0.exp_avg") && e.contains("[6, 4]"), "{e}");
}

#[test]
fn clipping_scales_to_the_global_norm() {
    let p = Tensor::zeros([2], F32).set_requires_grad(true);
    let q = Tensor::zeros([1], F32).set_requires_grad(true);
    let mut opt = AdamW::new(CONFIG);
    opt.add_group(&[(&p, None), (&q, None)]);
    set_grads(
        &[p.shallow_clone(), q.shallow_clone()],
        &[
            Tensor::from_slice(&[3f32, 0.0]),
            Tensor::from_slice(&[4f32]),
        ],
    );
    let norm = opt.clip_grad_norm(1.0);
    assert!((norm - 5.0).abs() < 1e-6, "{norm}");
    let after = (p.grad().square().sum(Kind::Float) + q.grad().square().sum(Kind::Float)).sqrt();
    assert!((after.double_value(&[]) - 1.0).abs() < 1e-5);
    assert!(
        (opt.clip_grad_norm(10.0) - 1.0).abs() < 1e-5,
        "no clipping below the limit"
    );
}

#[test]
fn learning_rate_schedules() {
    let lr = |s, t| learning_rate(s, 1.0, t, 100, 0.06);
    // warm-up = ceil(6) = 6 steps.
    assert_eq!(lr(LrSchedule::Linear, 0), 0.0);
    assert_eq!(lr(LrSchedule::Linear, 3), 0.5);
    assert_eq!(lr(LrSchedule::Linear, 6), 1.0);
    assert_eq!(lr(LrSchedule::Linear, 53), 0.5);
    assert_eq!(lr(LrSchedule::Linear, 100), 0.0);
    assert!((lr(LrSchedule::Cosine, 53) - 0.5).abs() < 1e-12);
    assert_eq!(lr(LrSchedule::Constant, 90), 1.0);
    assert_eq!(
        learning_rate(LrSchedule::Linear, 1.0, 0, 10, 0.0),
        1.0,
        "no warm-up"
    );
}
