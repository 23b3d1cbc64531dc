//! SvdAdapter and LoraAdapter: parity with PyTorch, gradients against finite differences,
//! zero-impact rank changes, the exact spectrum and the orthogonality regulariser.

mod common;

use common::{assert_close, golden};
use flexlora::adapter::{
    AdaptedLinear, Adapter, AdapterError, LoraAdapter, SvdAdapter, SvdAdapterConfig,
    orthogonality_regulariser,
};
use flexlora::config::{NewDirectionInit, OrthNorm, ScalePolicy};
use tch::{Device, Kind, Tensor};

const F32: (Kind, Device) = (Kind::Float, Device::Cpu);
const F64: (Kind, Device) = (Kind::Double, Device::Cpu);

fn cfg(r_init: usize, r_max: usize) -> SvdAdapterConfig {
    SvdAdapterConfig {
        r_init,
        r_max,
        alpha: 12.0,
        dropout: 0.0,
        scale: ScalePolicy::InitRank,
        init_std: 0.02,
    }
}

/// An SVD adapter with non-zero λ, P and Q far from orthogonal, and slots 1 and 4 inactive.
fn trained_svd(in_f: i64, out_f: i64, options: (Kind, Device)) -> SvdAdapter {
    let active = vec![true, false, true, true, false, true];
    let p = Tensor::randn([out_f, 6], options);
    let q = Tensor::randn([6, in_f], options);
    let lambda = Tensor::randn([6], options);
    for (i, &a) in active.iter().enumerate() {
        if !a {
            let _ = lambda.narrow(0, i as i64, 1).fill_(0.0);
        }
    }
    SvdAdapter::from_parts(p, lambda, q, active, cfg(4, 6)).unwrap()
}

fn layer(in_f: i64, out_f: i64, options: (Kind, Device), adapter: Adapter) -> AdaptedLinear {
    let mut l = AdaptedLinear::new(
        Tensor::randn([out_f, in_f], options),
        Some(Tensor::randn([out_f], options)),
    );
    l.adapter = Some(adapter);
    l
}

#[test]
fn svd_forward_and_gradients_match_pytorch() {
    tch::manual_seed(1);
    let (in_f, out_f) = (24, 16);
    let l = layer(
        in_f,
        out_f,
        F32,
        Adapter::Svd(trained_svd(in_f, out_f, F32)),
    );
    let x = Tensor::randn([3, 5, in_f], F32).set_requires_grad(true);
    let gy = Tensor::randn([3, 5, out_f], F32);
    let y = l.forward(&x, false);
    (&y * &gy).sum(Kind::Float).backward();
    let Some(Adapter::Svd(a)) = &l.adapter else {
        unreachable!()
    };
    let mask: Vec<f32> = a.active().iter().map(|&b| f32::from(u8::from(b))).collect();
    let mask = Tensor::from_slice(&mask);
    let scale = Tensor::from(a.scale() as f32);
    let g = golden(
        "adapter_forward.py",
        &[
            ("x", &x),
            ("gy", &gy),
            ("W", &l.weight),
            ("b", l.bias.as_ref().unwrap()),
            ("scale", &scale),
            ("P", &a.p),
            ("lam", &a.lambda),
            ("mask", &mask),
            ("Q", &a.q),
        ],
    );
    assert_close("y", &y, &g["y"], 1e-5);
    assert_close("dx", &x.grad(), &g["dx"], 1e-5);
    assert_close("dP", &a.p.grad(), &g["dP"], 1e-5);
    assert_close("dlambda", &a.lambda.grad(), &g["dlam"], 1e-5);
    assert_close("dQ", &a.q.grad(), &g["dQ"], 1e-5);
    // Inactive slots get exactly zero gradient.
    for slot in [1, 4] {
        assert_eq!(
            a.p.grad().narrow(1, slot, 1).abs().max().double_value(&[]),
            0.0
        );
        assert_eq!(
            a.q.grad().narrow(0, slot, 1).abs().max().double_value(&[]),
            0.0
        );
        assert_eq!(a.lambda.grad().double_value(&[slot]), 0.0);
    }
}

#[test]
fn lora_forward_and_gradients_match_pytorch() {
    tch::manual_seed(2);
    let (in_f, out_f) = (20, 12);
    let mut lora = LoraAdapter::new(in_f, out_f, 4, 8.0, 0.0, F32).unwrap();
    // B = 0 at init would make dA zero; give it values so every gradient is exercised.
    lora.b = Tensor::randn([out_f, 4], F32).set_requires_grad(true);
    let scale = Tensor::from(lora.scale() as f32);
    let l = layer(in_f, out_f, F32, Adapter::Lora(lora));
    let x = Tensor::randn([4, in_f], F32).set_requires_grad(true);
    let gy = Tensor::randn([4, out_f], F32);
    let y = l.forward(&x, false);
    (&y * &gy).sum(Kind::Float).backward();
    let Some(Adapter::Lora(a)) = &l.adapter else {
        unreachable!()
    };
    let g = golden(
        "adapter_forward.py",
        &[
            ("x", &x),
            ("gy", &gy),
            ("W", &l.weight),
            ("b", l.bias.as_ref().unwrap()),
            ("scale", &scale),
            ("A", &a.a),
            ("B", &a.b),
        ],
    );
    assert_close("y", &y, &g["y"], 1e-5);
    assert_close("dx", &x.grad(), &g["dx"], 1e-5);
    assert_close("dA", &a.a.grad(), &g["dA"], 1e-5);
    assert_close("dB", &a.b.grad(), &g["dB"], 1e-5);
}

#[test]
fn lora_initialisation_follows_peft() {
    tch::manual_seed(3);
    let lora = LoraAdapter::new(64, 32, 8, 16.0, 0.0, F32).unwrap();
    assert_eq!(
        lora.b.abs().max().double_value(&[]),
        0.0,
        "B starts at zero"
    );
    let bound = 1.0 / 64f64.sqrt();
    assert!(lora.a.abs().max().double_value(&[]) <= bound);
    assert!(
        lora.a.abs().max().double_value(&[]) > 0.9 * bound,
        "uniform over the full range"
    );
    assert_eq!(lora.scale(), 2.0);
}

/// Central differences in f64 of `f(θ)` for every entry of `param`.
fn finite_difference(param: &Tensor, f: &dyn Fn() -> f64) -> Tensor {
    let h = 1e-6;
    let n = param.numel() as i64;
    let mut out = vec![0f64; n as usize];
    let flat = param.view([-1]);
    for (i, slot) in out.iter_mut().enumerate() {
        let i = i as i64;
        let orig = flat.double_value(&[i]);
        tch::no_grad(|| {
            let _ = flat.narrow(0, i, 1).fill_(orig + h);
        });
        let up = f();
        tch::no_grad(|| {
            let _ = flat.narrow(0, i, 1).fill_(orig - h);
        });
        let down = f();
        tch::no_grad(|| {
            let _ = flat.narrow(0, i, 1).fill_(orig);
        });
        *slot = (up - down) / (2.0 * h);
    }
    Tensor::from_slice(&out).view(param.size().as_slice())
}

#[test]
fn gradients_match_finite_differences_in_f64() {
    tch::manual_seed(4);
    let (in_f, out_f) = (5, 4);
    let l = layer(
        in_f,
        out_f,
        F64,
        Adapter::Svd(trained_svd(in_f, out_f, F64)),
    );
    let x = Tensor::randn([3, in_f], F64);
    let gy = Tensor::randn([3, out_f], F64);
    let Some(Adapter::Svd(a)) = &l.adapter else {
        unreachable!()
    };
    for norm in [OrthNorm::Fro, OrthNorm::Fro2] {
        // Task loss plus the regulariser, as training sees it.
        let loss = || {
            let y = l.forward(&x, false);
            (&y * &gy).sum(Kind::Double) + orthogonality_regulariser([a], 0.3, norm).unwrap()
        };
        for t in [&a.p, &a.lambda, &a.q] {
            let mut t = t.shallow_clone();
            t.zero_grad();
        }
        loss().backward();
        for (name, t) in [("P", &a.p), ("lambda", &a.lambda), ("Q", &a.q)] {
            let numeric = finite_difference(t, &|| tch::no_grad(|| loss().double_value(&[])));
            assert_close(&format!("{name} ({norm:?})"), &t.grad(), &numeric, 1e-6);
        }
    }
}

#[test]
fn expanding_and_pruning_zero_lambda_leave_output_bit_identical() {
    tch::manual_seed(5);
    let (in_f, out_f) = (32, 16);
    let mut l = layer(
        in_f,
        out_f,
        F32,
        Adapter::Svd(trained_svd(in_f, out_f, F32)),
    );
    let x = Tensor::randn([7, in_f], F32);
    let before = l.forward(&x, false);
    let Some(Adapter::Svd(a)) = &mut l.adapter else {
        unreachable!()
    };
    a.expand(1, NewDirectionInit::Zero, 1.0).unwrap();
    assert_eq!(a.rank(), 5);
    assert!(
        a.p.narrow(1, 1, 1).abs().max().double_value(&[]) > 0.0,
        "new direction drawn"
    );
    let after_expand = l.forward(&x, false);
    assert!(
        before.equal(&after_expand),
        "zero-impact expansion changed the output"
    );
    let Some(Adapter::Svd(a)) = &mut l.adapter else {
        unreachable!()
    };
    a.prune(1).unwrap();
    let after_prune = l.forward(&x, false);
    assert!(
        before.equal(&after_prune),
        "pruning a lambda = 0 slot changed the output"
    );
}

#[test]
fn orthogonal_init_is_orthogonal_to_active_directions() {
    tch::manual_seed(6);
    let mut a = trained_svd(40, 30, F64);
    a.expand(4, NewDirectionInit::Orthogonal, 0.5).unwrap();
    for other in [0i64, 2, 3, 5] {
        let dp = (a.p.narrow(1, 4, 1) * a.p.narrow(1, other, 1))
            .sum(Kind::Double)
            .double_value(&[]);
        let dq = (a.q.narrow(0, 4, 1) * a.q.narrow(0, other, 1))
            .sum(Kind::Double)
            .double_value(&[]);
        assert!(
            dp.abs() < 1e-9 && dq.abs() < 1e-9,
            "slot {other}: {dp} {dq}"
        );
    }
    assert_eq!(a.lambda.double_value(&[4]), 0.0);
}

#[test]
fn exact_spectrum_equals_full_svd_of_the_delta() {
    tch::manual_seed(7);
    for options in [F32, F64] {
        let a = trained_svd(48, 40, options);
        let delta = a.delta_weight().to_kind(Kind::Double) / a.scale();
        let (_, s, _) = delta.svd(true, false);
        let want = s.narrow(0, 0, 4);
        let got = Tensor::from_slice(&a.exact_spectrum()).to_kind(Kind::Double);
        assert_close("exact spectrum", &got, &want, 1e-5);
    }
    // With orthonormal P and Q the exact spectrum is |lambda|, sorted.
    let (qp, _) = Tensor::linalg_qr(&Tensor::randn([20, 3], F64), "reduced");
    let (qq, _) = Tensor::linalg_qr(&Tensor::randn([30, 3], F64), "reduced");
    let lambda = Tensor::from_slice(&[0.5f64, -2.0, 1.0]);
    let a =
        SvdAdapter::from_parts(qp, lambda, qq.tr().contiguous(), vec![true; 3], cfg(3, 3)).unwrap();
    let got = a.exact_spectrum();
    for (g, w) in got.iter().zip([2.0f32, 1.0, 0.5]) {
        assert!((g - w).abs() < 1e-6, "{got:?}");
    }
}

#[test]
fn regulariser_is_a_mean_over_factors_of_active_slots() {
    // Orthonormal active columns and garbage in the inactive slot: penalty 0.
    let (qp, _) = Tensor::linalg_qr(&Tensor::randn([10, 3], F64), "reduced");
    let (qq, _) = Tensor::linalg_qr(&Tensor::randn([12, 3], F64), "reduced");
    let p = Tensor::cat(&[qp, Tensor::full([10, 1], 7.0, F64)], 1);
    let q = Tensor::cat(&[qq.tr(), Tensor::full([1, 12], -3.0, F64)], 0);
    let ortho = SvdAdapter::from_parts(
        p,
        Tensor::zeros([4], F64),
        q,
        vec![true, true, true, false],
        cfg(3, 4),
    )
    .unwrap();
    let pen = ortho.orth_penalty(OrthNorm::Fro).double_value(&[]);
    assert!(pen.abs() < 1e-12, "{pen}");
    // Scaled by 2: P^T P - I = 3I, norm 3 * sqrt(3) for each factor.
    let scaled = SvdAdapter::from_parts(
        &ortho.p * 2.0,
        Tensor::zeros([4], F64),
        &ortho.q * 2.0,
        vec![true, true, true, false],
        cfg(3, 4),
    )
    .unwrap();
    let want = 2.0 * 3.0 * 3f64.sqrt();
    let got = scaled.orth_penalty(OrthNorm::Fro).double_value(&[]);
    assert!((got - want).abs() < 1e-9, "{got} vs {want}");
    let got2 = scaled.orth_penalty(OrthNorm::Fro2).double_value(&[]);
    assert!((got2 - 2.0 * 27.0).abs() < 1e-9, "{got2}");
    // R = gamma / (2K) * sum over both adapters.
    let r = orthogonality_regulariser([&ortho, &scaled], 0.1, OrthNorm::Fro).unwrap();
    assert!((r.double_value(&[]) - 0.1 / 4.0 * want).abs() < 1e-9);
    assert!(orthogonality_regulariser(std::iter::empty(), 0.1, OrthNorm::Fro).is_none());
}

#[test]
fn bad_configurations_are_errors_not_panics() {
    let e = SvdAdapter::new(8, 8, cfg(8, 4), F32).unwrap_err();
    assert!(
        matches!(e, AdapterError::Config { field: "r_max", .. }),
        "{e}"
    );
    let mut c = cfg(2, 4);
    c.dropout = -0.1;
    let e = SvdAdapter::new(8, 8, c, F32).unwrap_err();
    assert!(
        matches!(
            e,
            AdapterError::Config {
                field: "dropout",
                ..
            }
        ),
        "{e}"
    );
    assert!(LoraAdapter::new(8, 8, 0, 8.0, 0.0, F32).is_err());
    assert!(LoraAdapter::new(8, 8, 4, 8.0, 1.0, F32).is_err());
    let mut a = SvdAdapter::new(8, 8, cfg(1, 3), F32).unwrap();
    assert!(
        matches!(a.prune(0), Err(AdapterError::Slot(_))),
        "the last direction stays"
    );
    assert!(
        matches!(a.prune(2), Err(AdapterError::Slot(_))),
        "slot 2 is not active"
    );
    assert!(matches!(
        a.expand(0, NewDirectionInit::Zero, 1.0),
        Err(AdapterError::Slot(_))
    ));
    assert!(matches!(
        a.expand(9, NewDirectionInit::Zero, 1.0),
        Err(AdapterError::Slot(_))
    ));
}

#[test]
fn initial_state_is_zero_update_with_r_init_active() {
    tch::manual_seed(8);
    let a = SvdAdapter::new(30, 20, cfg(3, 7), F32).unwrap();
    assert_eq!(a.rank(), 3);
    assert_eq!(a.active(), &[true, true, true, false, false, false, false]);
    assert_eq!(a.delta_weight().abs().max().double_value(&[]), 0.0);
    let std = f64::try_from(a.p.std(true)).unwrap();
    assert!(
        (std - 0.02).abs() < 0.004,
        "P ~ N(0, 0.02^2), got std {std}"
    );
    let mut c = cfg(3, 7);
    c.scale = ScalePolicy::CurrentRank;
    let mut b = SvdAdapter::new(30, 20, c, F32).unwrap();
    assert_eq!(b.scale(), 4.0);
    b.expand(3, NewDirectionInit::Zero, 0.02).unwrap();
    assert_eq!(b.scale(), 3.0, "current_rank follows the rank");
    assert_eq!(a.scale(), 4.0);
}

/// Gradients of every parameter and of the input, and the loss, through three adapted layers:
/// the first above an input that needs no gradient (term-by-term path even while recording),
/// the other two on the merged path while recording.
fn stack_gradients(options: (Kind, Device), recorded: bool, scale: ScalePolicy) -> Vec<Tensor> {
    tch::manual_seed(7);
    let mut l1 = layer(
        5,
        7,
        options,
        Adapter::Lora(LoraAdapter::new(5, 7, 3, 6.0, 0.0, options).unwrap()),
    );
    if let Some(Adapter::Lora(a)) = &mut l1.adapter {
        a.b = Tensor::randn([7, 3], options).set_requires_grad(true);
    }
    let mut svd = trained_svd(7, 6, options);
    svd = SvdAdapter::from_parts(
        svd.p.detach(),
        svd.lambda.detach(),
        svd.q.detach(),
        svd.active().to_vec(),
        SvdAdapterConfig { scale, ..cfg(4, 6) },
    )
    .unwrap();
    let l2 = layer(7, 6, options, Adapter::Svd(svd));
    let mut l3 = layer(
        6,
        4,
        options,
        Adapter::Lora(LoraAdapter::new(6, 4, 2, 2.0, 0.0, options).unwrap()),
    );
    if let Some(Adapter::Lora(a)) = &mut l3.adapter {
        a.b = Tensor::randn([4, 2], options).set_requires_grad(true);
    }
    let x = Tensor::randn([3, 2, 5], options);
    let target = Tensor::randn([3, 2, 4], options);
    let forward = || {
        let h = l1.forward(&x, true).tanh();
        let h = l2.forward(&h, true).gelu("none");
        (l3.forward(&h, true) - &target).square().sum(options.0)
    };
    let mut params: Vec<Tensor> = Vec::new();
    for l in [&l1, &l2, &l3] {
        match l.adapter.as_ref().unwrap() {
            Adapter::Lora(a) => params.extend([a.a.shallow_clone(), a.b.shallow_clone()]),
            Adapter::Svd(a) => params.extend([
                a.p.shallow_clone(),
                a.lambda.shallow_clone(),
                a.q.shallow_clone(),
            ]),
        }
    }
    let loss = if recorded {
        let (loss, taps) = flexlora::adapter::tape::record(forward);
        assert_eq!(
            taps.len(),
            2,
            "the layers above the first take the merged path"
        );
        flexlora::adapter::tape::backward(&loss, taps, || {
            params.iter().map(Tensor::shallow_clone).collect()
        });
        loss
    } else {
        let loss = forward();
        loss.backward();
        loss
    };
    let mut out = vec![loss.detach()];
    out.extend(params.iter().map(|p| p.grad().copy()));
    out
}

#[test]
fn merged_training_path_gives_the_term_by_term_gradients() {
    for scale in [ScalePolicy::InitRank, ScalePolicy::PeftAdalora] {
        for (options, tol) in [(F64, 1e-10), (F32, 1e-4)] {
            let plain = stack_gradients(options, false, scale);
            let merged = stack_gradients(options, true, scale);
            let names = ["loss", "A1", "B1", "P2", "λ2", "Q2", "A3", "B3"];
            for ((name, want), got) in names.iter().zip(&plain).zip(&merged) {
                assert!(
                    want.abs().max().double_value(&[]) > 0.0 || *name == "λ2",
                    "{name}: no gradient to compare"
                );
                assert_close(name, got, want, tol);
            }
            // Inactive slots of the SVD adapter still get exactly zero gradient.
            for slot in [1, 4] {
                assert_eq!(
                    merged[4].double_value(&[slot]),
                    0.0,
                    "λ of inactive slot {slot}"
                );
                assert_eq!(
                    merged[3].narrow(1, slot, 1).abs().max().double_value(&[]),
                    0.0
                );
                assert_eq!(
                    merged[5].narrow(0, slot, 1).abs().max().double_value(&[]),
                    0.0
                );
            }
        }
    }
}
