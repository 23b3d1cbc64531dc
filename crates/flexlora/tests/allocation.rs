//! One allocation step end to end: scores from the adapters, the core's decision, prunes and
//! expansions applied, exactly the changed slots' optimiser state restarted.

use flexlora::adapter::{SvdAdapter, SvdAdapterConfig};
use flexlora::allocation::{AllocationPolicy, apply_allocation, register_adapters};
use flexlora::config::{NewDirectionInit, ScalePolicy};
use flexlora::core::{
    AdjustmentSchedule, AllocationActivity, AllocationDirection, BudgetSchedule, Importance,
    RankAllocator,
};
use flexlora::optim::{AdamW, AdamWConfig};
use flexlora::sensitivity::SensitivityEma;
use tch::{Device, Kind, Tensor};

const F32: (Kind, Device) = (Kind::Float, Device::Cpu);

fn adapter(lambdas: &[f32]) -> SvdAdapter {
    let config = SvdAdapterConfig {
        r_init: 3,
        r_max: 4,
        alpha: 3.0,
        dropout: 0.0,
        scale: ScalePolicy::InitRank,
        init_std: 0.02,
    };
    let mut l = lambdas.to_vec();
    l.resize(4, 0.0);
    let active: Vec<bool> = (0..4).map(|i| i < lambdas.len()).collect();
    SvdAdapter::from_parts(
        Tensor::randn([8, 4], F32),
        Tensor::from_slice(&l),
        Tensor::randn([4, 6], F32),
        active,
        config,
    )
    .unwrap()
}

fn policy(direction: AllocationDirection) -> AllocationPolicy {
    AllocationPolicy {
        importance: Importance::Entropy,
        exact_spectrum: false,
        allocator: RankAllocator::new(direction),
        init: NewDirectionInit::Zero,
        init_std: 0.02,
    }
}

/// A schedule for the calls below, which pass `b(t)` themselves (only `adaptive` reads it).
fn cubic() -> AdjustmentSchedule {
    AdjustmentSchedule {
        t_init: 0,
        t_final: 0,
        delta_t: 1,
        total_steps: 100,
        b0: 4,
        schedule: BudgetSchedule::Cubic,
        exp_rate: 5.0,
    }
}

fn train_once(adapters: &[SvdAdapter], opt: &mut AdamW) {
    let x = Tensor::randn([5, 6], F32);
    let loss = adapters
        .iter()
        .map(|a| a.forward_delta(&x, true).square().sum(Kind::Float))
        .reduce(|a, b| a + b)
        .unwrap();
    opt.zero_grad();
    loss.backward();
    opt.step(1e-3);
}

#[test]
fn one_step_moves_rank_from_concentrated_to_spread_spectrum() {
    tch::manual_seed(21);
    // Entropy: matrix 0 concentrated (low), matrix 2 spread (high), 1 and 3 in between.
    let mut adapters = vec![
        adapter(&[-3.0, 0.01, 0.02]),
        adapter(&[1.0, 0.5, 0.1]),
        adapter(&[1.0, 1.0, 0.9]),
        adapter(&[1.0, 0.3, 0.3]),
    ];
    let mut opt = AdamW::new(AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    });
    register_adapters(&mut opt, &adapters);
    for _ in 0..3 {
        train_once(&adapters, &mut opt);
    }
    let lambda0 = adapters[0].lambdas();
    let record = apply_allocation(
        &mut adapters.iter_mut().collect::<Vec<_>>(),
        &mut opt,
        &policy(AllocationDirection::Both),
        None,
        (40, 1, &cubic()),
        &mut AllocationActivity::default(),
    )
    .unwrap();
    assert_eq!(record.step, 40);
    // Smallest |lambda| of matrix 0 is slot 1 (not slot 0, the smallest signed value).
    let smallest = (0..3)
        .min_by(|&i, &j| lambda0[i].abs().total_cmp(&lambda0[j].abs()))
        .unwrap();
    assert_eq!(record.pruned, vec![(0, smallest)]);
    assert_eq!(record.expanded, vec![(2, 3)]);
    assert_eq!(record.ranks, vec![2, 3, 4, 3]);
    assert_eq!(record.ranks.iter().sum::<usize>(), 12, "total rank kept");
    assert!(record.scores[0] < record.scores[1] && record.scores[2] > record.scores[3]);
    // Exactly the changed slots restarted in the optimiser; the rest keep counting.
    for (k, slot) in record.pruned.iter().chain(&record.expanded) {
        for counts in opt.slot_step_counts(*k) {
            assert_eq!(counts[*slot], 0.0, "matrix {k} slot {slot}");
        }
    }
    for counts in opt.slot_step_counts(1) {
        assert_eq!(counts, vec![3.0; 4]);
    }
    assert_eq!(opt.slot_step_counts(0)[0][0], 3.0);
    // Training continues with the new ranks.
    train_once(&adapters, &mut opt);
    assert_eq!(opt.slot_step_counts(2)[0][3], 1.0);
}

#[test]
fn one_sided_ablations_change_the_total() {
    tch::manual_seed(22);
    let mut adapters = vec![adapter(&[1.0, 0.01, 0.01]), adapter(&[1.0, 1.0, 1.0])];
    let mut opt = AdamW::new(AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    });
    register_adapters(&mut opt, &adapters);
    let r = apply_allocation(
        &mut adapters.iter_mut().collect::<Vec<_>>(),
        &mut opt,
        &policy(AllocationDirection::PruneOnly),
        None,
        (1, 2, &cubic()),
        &mut AllocationActivity::default(),
    )
    .unwrap();
    assert_eq!(r.ranks, vec![2, 2]);
    let r = apply_allocation(
        &mut adapters.iter_mut().collect::<Vec<_>>(),
        &mut opt,
        &policy(AllocationDirection::ExpandOnly),
        None,
        (2, 1, &cubic()),
        &mut AllocationActivity::default(),
    )
    .unwrap();
    assert_eq!(r.ranks.iter().sum::<usize>(), 5);
}

/// `importance = "sensitivity"`: after one EMA update from zero, `Ī = (1 − β1) I` and
/// `Ū = (1 − β2) β1 I`, so every entry's `s = c · I²` with `c = (1 − β1)(1 − β2) β1` and
/// `I = |p · ∇p|`; a matrix scores the mean over its active slots of
/// `S_i = s(λ_i) + mean_j s(Q_ij) + mean_o s(P_oi)`. Changed slots restart their EMAs.
#[test]
fn sensitivity_importance_scores_the_mean_triplet_sensitivity() {
    tch::manual_seed(23);
    let (b1, b2) = (0.85, 0.7);
    let mut adapters = vec![
        adapter(&[1.0, 0.5, 0.1]),
        adapter(&[0.2, 0.3]),
        adapter(&[2.0, 1.0, 0.5]),
    ];
    let mut opt = AdamW::new(AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    });
    register_adapters(&mut opt, &adapters);
    let mut ema = SensitivityEma::new(&adapters.iter().collect::<Vec<_>>(), b1, b2).unwrap();
    train_once(&adapters, &mut opt);
    ema.update(&adapters.iter_mut().collect::<Vec<_>>());
    // By hand, from the parameters and gradients still in place.
    let c = (1.0 - b1) * (1.0 - b2) * b1;
    let expected: Vec<f64> = adapters
        .iter()
        .map(|a| {
            let [(p, _), (l, _), (q, _)] = a.slotted_parameters();
            let s = |t: &Tensor| (t * t.grad()).abs().square().to_kind(Kind::Double) * c;
            let per_slot = s(l) + s(q).mean_dim(1, false, None) + s(p).mean_dim(0, false, None);
            let v = Vec::<f64>::try_from(&per_slot).unwrap();
            let active: Vec<f64> = v
                .iter()
                .zip(a.active())
                .filter(|(_, on)| **on)
                .map(|(x, _)| *x)
                .collect();
            active.iter().sum::<f64>() / active.len() as f64
        })
        .collect();
    let mut sens_policy = policy(AllocationDirection::Both);
    sens_policy.importance = Importance::Sensitivity;
    // Without the EMAs the step refuses to run.
    let err = apply_allocation(
        &mut adapters.iter_mut().collect::<Vec<_>>(),
        &mut opt,
        &sens_policy,
        None,
        (10, 1, &cubic()),
        &mut AllocationActivity::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("sensitivity"), "{err}");
    let record = apply_allocation(
        &mut adapters.iter_mut().collect::<Vec<_>>(),
        &mut opt,
        &sens_policy,
        Some(&mut ema),
        (10, 1, &cubic()),
        &mut AllocationActivity::default(),
    )
    .unwrap();
    for (got, want) in record.scores.iter().zip(&expected) {
        assert!(
            (got - want).abs() <= 1e-4 * want.abs() + 1e-12,
            "score {got} vs hand-computed {want}"
        );
    }
    assert_eq!(record.pruned.len(), 1);
    assert_eq!(record.expanded.len(), 1);
    let scores = ema.triplet_scores_host();
    for &(k, slot) in record.pruned.iter().chain(&record.expanded) {
        assert_eq!(scores[k][slot], 0.0, "matrix {k} slot {slot} EMAs restart");
    }
}

fn adam() -> AdamW {
    AdamW::new(AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    })
}

/// Zero-impact holds under every scale policy: an expansion leaves the layer's output as it
/// was, and a prune removes exactly the pruned direction's term, also with
/// `scale = "current_rank"`, whose `s = α / r` changes with the rank (λ is rescaled to keep
/// `s · λ`). Without that rescale the expansion below would shrink the output by 3/4.
#[test]
fn rank_changes_keep_the_output_under_every_scale_policy() {
    for scale in [ScalePolicy::InitRank, ScalePolicy::CurrentRank] {
        tch::manual_seed(31);
        let mut adapters: Vec<SvdAdapter> = [[1.0f32, 0.9, 0.8], [2.0, 0.01, 0.02]]
            .iter()
            .map(|l| {
                let mut a = adapter(l);
                let c = *a.config();
                a = SvdAdapter::from_parts(
                    a.p.detach().copy(),
                    a.lambda.detach().copy(),
                    a.q.detach().copy(),
                    a.active().to_vec(),
                    SvdAdapterConfig { scale, ..c },
                )
                .unwrap();
                a
            })
            .collect();
        let mut opt = adam();
        register_adapters(&mut opt, &adapters);
        train_once(&adapters, &mut opt);
        let x = Tensor::randn([5, 6], F32);
        let before: Vec<Tensor> = adapters
            .iter()
            .map(|a| a.forward_delta(&x, false).detach())
            .collect();
        // The term of the slot that will be pruned from matrix 1 (its smallest |λ|).
        let l1 = adapters[1].lambdas();
        let slot = (0..3)
            .min_by(|&i, &j| l1[i].abs().total_cmp(&l1[j].abs()))
            .unwrap() as i64;
        let s1 = adapters[1].scale();
        let term = x
            .matmul(&adapters[1].q.narrow(0, slot, 1).tr())
            .matmul(&adapters[1].p.narrow(1, slot, 1).tr())
            * f64::from(l1[slot as usize])
            * s1;
        let record = apply_allocation(
            &mut adapters.iter_mut().collect::<Vec<_>>(),
            &mut opt,
            &policy(AllocationDirection::Both),
            None,
            (5, 1, &cubic()),
            &mut AllocationActivity::new(&[3, 3]),
        )
        .unwrap();
        assert_eq!(record.expanded, vec![(0, 3)], "{scale:?}");
        assert_eq!(record.pruned, vec![(1, slot as usize)], "{scale:?}");
        let after0 = adapters[0].forward_delta(&x, false);
        let diff = (&after0 - &before[0]).abs().max().double_value(&[]);
        assert!(
            diff < 1e-6,
            "{scale:?}: expansion changed the output by {diff}"
        );
        let after1 = adapters[1].forward_delta(&x, false);
        let diff = (&after1 - (&before[1] - &term))
            .abs()
            .max()
            .double_value(&[]);
        assert!(
            diff < 1e-6,
            "{scale:?}: prune changed more than its own term ({diff})"
        );
        // Training goes on from there without a jump in the step size: one more step is
        // finite and moves the new direction.
        train_once(&adapters, &mut opt);
        assert!(adapters[0].lambdas()[3] != 0.0);
    }
}

/// With `exact_spectrum = true` the pruned slot is the one whose rank-one term has the least
/// energy `|λ_i| ‖p_i‖ ‖q_i‖`, not merely the smallest `|λ|`: here slot 2 has the smallest
/// `|λ|` but a P column 100 times longer than slot 1's.
#[test]
fn exact_spectrum_prunes_the_least_energy_slot() {
    tch::manual_seed(32);
    let concentrated = adapter(&[3.0, 0.05, 0.04]);
    tch::no_grad(|| {
        let _ = concentrated.p.narrow(1, 1, 1).g_mul_scalar_(0.1);
        let _ = concentrated.p.narrow(1, 2, 1).g_mul_scalar_(10.0);
    });
    let energies = concentrated.slot_energies();
    assert!(energies[1] < energies[2], "{energies:?}");
    let mut adapters = vec![concentrated, adapter(&[1.0, 1.0, 0.9])];
    for (exact, want) in [(false, 2), (true, 1)] {
        let mut candidates: Vec<SvdAdapter> = adapters
            .iter()
            .map(|a| {
                SvdAdapter::from_parts(
                    a.p.detach().copy(),
                    a.lambda.detach().copy(),
                    a.q.detach().copy(),
                    a.active().to_vec(),
                    *a.config(),
                )
                .unwrap()
            })
            .collect();
        let mut opt = adam();
        register_adapters(&mut opt, &candidates);
        let mut p = policy(AllocationDirection::Both);
        p.exact_spectrum = exact;
        let record = apply_allocation(
            &mut candidates.iter_mut().collect::<Vec<_>>(),
            &mut opt,
            &p,
            None,
            (5, 1, &cubic()),
            &mut AllocationActivity::new(&[3, 3]),
        )
        .unwrap();
        assert_eq!(record.pruned, vec![(0, want)], "exact_spectrum = {exact}");
    }
    adapters.clear();
}

/// The `adaptive` schedule moves `b0 · (1 − τ)`: all of `b0` at the first adjustment, none when
/// the ranking did not change since the previous one. Each record carries τ and the running
/// activity figures.
#[test]
fn adaptive_schedule_stops_when_the_ranking_settles() {
    tch::manual_seed(33);
    let mut adapters = vec![
        adapter(&[3.0, 0.01, 0.02]),
        adapter(&[1.0, 0.5, 0.1]),
        adapter(&[1.0, 1.0, 0.9]),
        adapter(&[1.0, 0.3, 0.3]),
    ];
    let mut opt = adam();
    register_adapters(&mut opt, &adapters);
    let mut schedule = cubic();
    schedule.schedule = BudgetSchedule::Adaptive;
    let mut activity = AllocationActivity::new(&[3; 4]);
    let mut step = |adapters: &mut Vec<SvdAdapter>, t: u64| {
        apply_allocation(
            &mut adapters.iter_mut().collect::<Vec<_>>(),
            &mut opt,
            &policy(AllocationDirection::Both),
            None,
            (t, 1, &schedule),
            &mut activity,
        )
        .unwrap()
    };
    let first = step(&mut adapters, 10);
    assert_eq!((first.b, first.tau), (1, None));
    assert_eq!(first.pruned.len(), 1);
    assert_eq!(first.activity.moves, 1);
    assert_eq!(first.activity.moved_fraction, 1.0 / 12.0);
    assert_eq!(first.activity.matrices_changed, 2);
    // Nothing trains in between: only the moves change scores, so once a step moves nothing
    // the next one sees the same ranking (τ = 1) and moves nothing either.
    let second = step(&mut adapters, 20);
    let third = step(&mut adapters, 30);
    assert!(
        second.pruned.is_empty(),
        "τ = {:?} rounds b to 0",
        second.tau
    );
    assert_eq!(third.tau, Some(1.0), "unchanged λ give the same ranking");
    assert_eq!(third.b, 0);
    assert!(third.pruned.is_empty() && third.expanded.is_empty());
    assert_eq!(third.activity.adjustments, 3);
    assert_eq!(third.activity.moves, 1);
}
