//! `SvdAdapter`: the SVD-form update `ΔW = s · P diag(λ) Q` in fixed-capacity rank slots
//! (docs/method.md §1 and §4, docs/architecture.md "Ranks change without reallocating").

use super::AdapterError;
use crate::config::{NewDirectionInit, OrthNorm, ScalePolicy};
use tch::{Device, Kind, Tensor};

/// Shape and behaviour of one SVD adapter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SvdAdapterConfig {
    /// Active slots at the start.
    pub r_init: usize,
    /// Slots in all (the most rank this matrix can reach).
    pub r_max: usize,
    /// `α` of the scale.
    pub alpha: f64,
    /// Dropout on the adapter input (training only).
    pub dropout: f64,
    /// `s = α / r_init` or `α / r_current`.
    pub scale: ScalePolicy,
    /// Standard deviation of the initial P and Q entries (0.02 in AdaLoRA and FlexLoRA).
    pub init_std: f64,
}

impl SvdAdapterConfig {
    /// Checks the configuration: `1 ≤ r_init ≤ r_max`, `α > 0`, `0 ≤ dropout < 1`,
    /// `init_std > 0`.
    pub fn validate(&self) -> Result<(), AdapterError> {
        let bad =
            |field: &'static str, message: String| Err(AdapterError::Config { field, message });
        if self.r_init == 0 {
            return bad("r_init", "must be at least 1".into());
        }
        if self.r_max < self.r_init {
            return bad(
                "r_max",
                format!("{} is less than r_init ({})", self.r_max, self.r_init),
            );
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return bad(
                "alpha",
                format!("{} is not a finite number > 0", self.alpha),
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout", format!("{} is not in [0, 1)", self.dropout));
        }
        if !(self.init_std.is_finite() && self.init_std > 0.0) {
            return bad(
                "init_std",
                format!("{} is not a finite number > 0", self.init_std),
            );
        }
        Ok(())
    }
}

/// The SVD-form adapter of one frozen linear layer (`out × in`).
///
/// `P` (`out × r_max`), `λ` (`r_max`) and `Q` (`r_max × in`) are trainable; a 0/1 mask marks
/// the active slots. Inactive slots get exactly zero gradient from the task (their `λ·mask` is
/// 0) and are left out of the orthogonality penalty, so the tensors never change shape: the
/// optimiser, checkpoints and compiled graphs stay valid when ranks move.
#[derive(Debug)]
pub struct SvdAdapter {
    /// Left directions, `out × r_max`.
    pub p: Tensor,
    /// Singular values, `r_max`.
    pub lambda: Tensor,
    /// Right directions, `r_max × in`.
    pub q: Tensor,
    mask: Tensor,
    active: Vec<bool>,
    config: SvdAdapterConfig,
}

impl SvdAdapter {
    /// A new adapter in docs/method.md's initial state: `λ = 0`, `P, Q ~ N(0, init_std²)`, the first
    /// `r_init` slots active, so `ΔW = 0`. Draws from LibTorch's global generator
    /// (`tch::manual_seed`).
    pub fn new(
        in_features: i64,
        out_features: i64,
        config: SvdAdapterConfig,
        options: (Kind, Device),
    ) -> Result<Self, AdapterError> {
        config.validate()?;
        let r = config.r_max as i64;
        let p =
            (Tensor::randn([out_features, r], options) * config.init_std).set_requires_grad(true);
        let q =
            (Tensor::randn([r, in_features], options) * config.init_std).set_requires_grad(true);
        let lambda = Tensor::zeros([r], options).set_requires_grad(true);
        let active: Vec<bool> = (0..config.r_max).map(|i| i < config.r_init).collect();
        let mask = mask_tensor(&active, options);
        Ok(Self {
            p,
            lambda,
            q,
            mask,
            active,
            config,
        })
    }

    /// Builds an adapter from given tensors (for loading checkpoints and golden tests).
    pub fn from_parts(
        p: Tensor,
        lambda: Tensor,
        q: Tensor,
        active: Vec<bool>,
        config: SvdAdapterConfig,
    ) -> Result<Self, AdapterError> {
        config.validate()?;
        let r = config.r_max as i64;
        let (out_f, in_f) = (p.size().first().copied(), q.size().get(1).copied());
        let shapes_ok = p.size().len() == 2
            && p.size()[1] == r
            && lambda.size() == [r]
            && q.size().len() == 2
            && q.size()[0] == r
            && active.len() == config.r_max;
        if !shapes_ok {
            return Err(AdapterError::Shape(format!(
                "P {:?}, lambda {:?}, Q {:?}, {} slot flags do not fit r_max = {r} (out {out_f:?}, in {in_f:?})",
                p.size(),
                lambda.size(),
                q.size(),
                active.len()
            )));
        }
        let options = (p.kind(), p.device());
        let mask = mask_tensor(&active, options);
        Ok(Self {
            p: p.set_requires_grad(true),
            lambda: lambda.set_requires_grad(true),
            q: q.set_requires_grad(true),
            mask,
            active,
            config,
        })
    }

    /// The adapter's configuration.
    pub fn config(&self) -> &SvdAdapterConfig {
        &self.config
    }

    /// Which slots are active.
    pub fn active(&self) -> &[bool] {
        &self.active
    }

    /// The current rank (number of active slots).
    pub fn rank(&self) -> usize {
        self.active.iter().filter(|&&a| a).count()
    }

    /// The scale `s`: `α / r_init` (default, as the reference), `α / r_current`, or PEFT
    /// AdaLoRA's `α / (r_init + 1e-5)` (with `r_init + 1e-5` rounded to `f32` as PEFT's
    /// `ranknum` is).
    pub fn scale(&self) -> f64 {
        let r = match self.config.scale {
            ScalePolicy::InitRank => self.config.r_init as f64,
            ScalePolicy::CurrentRank => self.rank().max(1) as f64,
            ScalePolicy::PeftAdalora => f64::from(self.config.r_init as f32 + 1e-5_f32),
        };
        self.config.alpha / r
    }

    /// PEFT AdaLoRA's `ranknum + 1e-5`: `r_init` in the parameters' precision plus `1e-5`,
    /// as a one-element tensor (the divisor of [`ScalePolicy::PeftAdalora`]).
    fn ranknum(&self) -> Tensor {
        Tensor::full(
            [1],
            self.config.r_init as f64,
            (self.p.kind(), self.p.device()),
        ) + 1e-5
    }

    /// The update's contribution to the layer output, `dropout(x) downᵀ upᵀ` with the factors
    /// of [`SvdAdapter::factors`]: `s · ((dropout(x) Qᵀ) ⊙ (λ ⊙ mask)) Pᵀ`, never
    /// materialising `ΔW`.
    pub fn forward_delta(&self, x: &Tensor, train: bool) -> Tensor {
        super::low_rank_delta(x, self.config.dropout, train, self.factors())
    }

    /// `ΔW = up · down` as two differentiable factors, with `λ ⊙ mask` and the scale folded
    /// into the small `out × r_max` factor: `down = Q`, `up = P diag(s · λ ⊙ mask)`. With
    /// [`ScalePolicy::PeftAdalora`], PEFT's grouping: `down = Q ⊙ (λ ⊙ mask)` (row-wise),
    /// `up = P · α / (r_init + 1e-5)`. Scaling the factors instead of the `[tokens, out]`
    /// product spares the training step a pass over the layer's output each way.
    pub fn factors(&self) -> (Tensor, Tensor) {
        let lambda = &self.lambda * &self.mask;
        if self.config.scale == ScalePolicy::PeftAdalora {
            let down = &self.q * lambda.unsqueeze(1);
            let up = &self.p * self.config.alpha / self.ranknum();
            return (down, up);
        }
        let up = &self.p * (lambda * self.scale()).unsqueeze(0);
        (self.q.shallow_clone(), up)
    }

    /// `ΔW = s · P diag(λ ⊙ mask) Q` (`out × in`), for merging, export and tests (with
    /// [`ScalePolicy::PeftAdalora`], PEFT's `get_delta_weight` order:
    /// `P (Q ⊙ λ) · α / (r_init + 1e-5)`).
    pub fn delta_weight(&self) -> Tensor {
        let lambda = &self.lambda * &self.mask;
        if self.config.scale == ScalePolicy::PeftAdalora {
            let qe = &self.q * lambda.unsqueeze(1);
            return self.p.matmul(&qe) * self.config.alpha / self.ranknum();
        }
        (&self.p * lambda.unsqueeze(0)).matmul(&self.q) * self.scale()
    }

    /// Zeroes `λ` of every slot whose `keep` flag is false (AdaLoRA's masking, PEFT's
    /// `masked_fill_(…, 0.0)`); the slots stay active, so their `λ` keeps receiving gradients
    /// and may grow back, and the optimiser state is untouched, as in PEFT.
    pub fn zero_lambdas(&mut self, keep: &[bool]) -> Result<(), AdapterError> {
        if keep.len() != self.active.len() {
            return Err(AdapterError::Shape(format!(
                "{} keep flags for {} slots",
                keep.len(),
                self.active.len()
            )));
        }
        let masked: Vec<bool> = keep.iter().map(|&k| !k).collect();
        let masked = Tensor::from_slice(&masked).to_device(self.lambda.device());
        tch::no_grad(|| {
            let _ = self.lambda.masked_fill_(&masked, 0.0);
        });
        Ok(())
    }

    /// The `λ` of the active slots, in slot order.
    pub fn active_lambdas(&self) -> Vec<f32> {
        let all = self.lambdas();
        all.into_iter()
            .zip(&self.active)
            .filter_map(|(l, &a)| a.then_some(l))
            .collect()
    }

    /// `λ` of every slot (inactive ones are 0).
    pub fn lambdas(&self) -> Vec<f32> {
        let l = self
            .lambda
            .detach()
            .to_kind(Kind::Float)
            .to_device(Device::Cpu);
        Vec::<f32>::try_from(&l).unwrap_or_default()
    }

    /// The true singular values of `P_a diag(λ_a) Q_a` over the active slots (without `s`),
    /// largest first: `P_a = U_P R_P` and `Q_aᵀ = U_Q R_Q` (QR), then the SVD of the small
    /// `r × r` core `R_P diag(λ_a) R_Qᵀ`. Equal to `λ` (up to sign and order) while `P` and `Q`
    /// are orthonormal, and correct when they drift.
    pub fn exact_spectrum(&self) -> Vec<f32> {
        let idx: Vec<i64> = (0..self.active.len() as i64)
            .filter(|&i| self.active[i as usize])
            .collect();
        if idx.is_empty() {
            return Vec::new();
        }
        tch::no_grad(|| {
            let index = Tensor::from_slice(&idx).to_device(self.p.device());
            let p = self.p.index_select(1, &index).to_kind(Kind::Double);
            let q = self.q.index_select(0, &index).to_kind(Kind::Double);
            let l = self.lambda.index_select(0, &index).to_kind(Kind::Double);
            let (_, r_p) = Tensor::linalg_qr(&p, "reduced");
            let (_, r_q) = Tensor::linalg_qr(&q.tr(), "reduced");
            let core = (r_p * l.unsqueeze(0)).matmul(&r_q.tr());
            let (_, s, _) = core.svd(true, false);
            let s = s.to_kind(Kind::Float).to_device(Device::Cpu);
            Vec::<f32>::try_from(&s).unwrap_or_default()
        })
    }

    /// The energy of every slot's rank-one term, `|λ_i| · ‖p_i‖ · ‖q_i‖` (the Frobenius norm of
    /// `λ_i p_i q_iᵀ`; 0 for inactive slots). Removing slot `i` changes `ΔW / s` by exactly
    /// this much, so the slot with the least energy is the one-slot removal closest to
    /// `P diag(λ) Q`: the slot-level counterpart of dropping the smallest singular value
    /// (Eckart–Young), which is what [`SvdAdapter::exact_spectrum`] scores. While `P` and `Q`
    /// are orthonormal it equals `|λ_i|`.
    pub fn slot_energies(&self) -> Vec<f32> {
        tch::no_grad(|| {
            let l = (&self.lambda * &self.mask).to_kind(Kind::Double).abs();
            let pn = self
                .p
                .to_kind(Kind::Double)
                .norm_scalaropt_dim(2, [0], false);
            let qn = self
                .q
                .to_kind(Kind::Double)
                .norm_scalaropt_dim(2, [1], false);
            let e = (l * pn * qn).to_kind(Kind::Float).to_device(Device::Cpu);
            Vec::<f32>::try_from(&e).unwrap_or_default()
        })
    }

    /// The factor by which a rank change from `before` to `after` changes the scale `s`
    /// (`s_before / s_after`): `after / before` under [`ScalePolicy::CurrentRank`], 1 under the
    /// policies whose `s` does not follow the rank.
    pub fn rescale_for_rank_change(&self, before: usize, after: usize) -> f64 {
        match self.config.scale {
            ScalePolicy::CurrentRank if before > 0 && after > 0 => after as f64 / before as f64,
            _ => 1.0,
        }
    }

    /// `‖P_aᵀP_a − I‖ + ‖Q_aQ_aᵀ − I‖` over the active slots, with the plain (`fro`) or squared
    /// (`fro2`) Frobenius norm. Differentiable; inactive slots get no gradient from it.
    pub fn orth_penalty(&self, norm: OrthNorm) -> Tensor {
        let eye = self.mask.diag(0);
        let pm = &self.p * self.mask.unsqueeze(0);
        let qm = &self.q * self.mask.unsqueeze(1);
        let gp = pm.tr().matmul(&pm) - &eye;
        let gq = qm.matmul(&qm.tr()) - &eye;
        match norm {
            OrthNorm::Fro => gp.norm() + gq.norm(),
            OrthNorm::Fro2 => gp.square().sum(gp.kind()) + gq.square().sum(gq.kind()),
        }
    }

    /// Deactivates `slot`: its `λ` is zeroed and it leaves the forward pass and the penalty.
    /// The caller resets the slot's optimiser state (see [`crate::allocation`]).
    pub fn prune(&mut self, slot: usize) -> Result<(), AdapterError> {
        self.check_slot(slot, true)?;
        if self.rank() <= 1 {
            return Err(AdapterError::Slot(format!(
                "cannot prune slot {slot}: the adapter would have no active direction left"
            )));
        }
        self.active[slot] = false;
        tch::no_grad(|| {
            let _ = self.lambda.narrow(0, slot as i64, 1).fill_(0.0);
            let _ = self.mask.narrow(0, slot as i64, 1).fill_(0.0);
        });
        Ok(())
    }

    /// Activates the free `slot` with the chosen initialisation (docs/method.md §4):
    /// - `zero`: `λ = 0`, P column and Q row `~ N(0, std²)`: the output is unchanged;
    /// - `small`: as `zero` but `λ ~ N(0, (std/10)²)`: a small change;
    /// - `orthogonal`: as `zero`, with the new P column and Q row orthogonalised against the
    ///   active ones (Gram–Schmidt) and rescaled to the drawn norm.
    pub fn expand(
        &mut self,
        slot: usize,
        init: NewDirectionInit,
        std: f64,
    ) -> Result<(), AdapterError> {
        self.check_slot(slot, false)?;
        let options = (self.p.kind(), self.p.device());
        let (out_f, in_f) = (self.p.size()[0], self.q.size()[1]);
        let mut p_new = Tensor::randn([out_f], options) * std;
        let mut q_new = Tensor::randn([in_f], options) * std;
        if init == NewDirectionInit::Orthogonal {
            tch::no_grad(|| {
                let pm = self.p.detach() * self.mask.unsqueeze(0);
                let qm = self.q.detach() * self.mask.unsqueeze(1);
                p_new = orthogonalise(&p_new, &pm.tr());
                q_new = orthogonalise(&q_new, &qm);
            });
        }
        let lambda_new = match init {
            NewDirectionInit::Small => Tensor::randn([1], options) * (std / 10.0),
            _ => Tensor::zeros([1], options),
        };
        tch::no_grad(|| {
            self.p.narrow(1, slot as i64, 1).copy_(&p_new.unsqueeze(1));
            self.q.narrow(0, slot as i64, 1).copy_(&q_new.unsqueeze(0));
            self.lambda.narrow(0, slot as i64, 1).copy_(&lambda_new);
            let _ = self.mask.narrow(0, slot as i64, 1).fill_(1.0);
        });
        self.active[slot] = true;
        Ok(())
    }

    /// Overwrites `P`, `λ`, `Q` and the active slots in place (the optimiser keeps pointing at
    /// the same tensors), e.g. from a checkpoint. Shapes must match.
    pub fn restore(
        &mut self,
        p: &Tensor,
        lambda: &Tensor,
        q: &Tensor,
        active: Vec<bool>,
    ) -> Result<(), AdapterError> {
        if p.size() != self.p.size()
            || lambda.size() != self.lambda.size()
            || q.size() != self.q.size()
            || active.len() != self.active.len()
        {
            return Err(AdapterError::Shape(format!(
                "restore: P {:?}, lambda {:?}, Q {:?}, {} slots do not match the adapter's {:?}, {:?}, {:?}, {}",
                p.size(),
                lambda.size(),
                q.size(),
                active.len(),
                self.p.size(),
                self.lambda.size(),
                self.q.size(),
                self.active.len()
            )));
        }
        let options = (self.p.kind(), self.p.device());
        tch::no_grad(|| {
            self.p.copy_(p);
            self.lambda.copy_(lambda);
            self.q.copy_(q);
            self.mask.copy_(&mask_tensor(&active, options));
        });
        self.active = active;
        Ok(())
    }

    /// The trainable tensors with their slot axis: `P` (axis 1), `λ` (0), `Q` (0).
    pub fn slotted_parameters(&self) -> [(&Tensor, usize); 3] {
        [(&self.p, 1), (&self.lambda, 0), (&self.q, 0)]
    }

    fn check_slot(&self, slot: usize, want_active: bool) -> Result<(), AdapterError> {
        match self.active.get(slot) {
            None => Err(AdapterError::Slot(format!(
                "slot {slot} does not exist (r_max = {})",
                self.config.r_max
            ))),
            Some(&a) if a != want_active => Err(AdapterError::Slot(format!(
                "slot {slot} is {}",
                if a { "already active" } else { "not active" }
            ))),
            Some(_) => Ok(()),
        }
    }
}

fn mask_tensor(active: &[bool], options: (Kind, Device)) -> Tensor {
    let m: Vec<f32> = active.iter().map(|&a| if a { 1.0 } else { 0.0 }).collect();
    Tensor::from_slice(&m)
        .to_kind(options.0)
        .to_device(options.1)
}

/// Removes from `v` its components along the rows of `basis` (masked rows are zero and drop
/// out), twice for numerical safety, and restores the original norm.
fn orthogonalise(v: &Tensor, basis: &Tensor) -> Tensor {
    let norm = v.norm();
    let mut out = v.shallow_clone();
    for _ in 0..2 {
        let gram = basis.matmul(&basis.tr());
        // Solve in the span of the active rows: least squares via the pseudo-inverse of the
        // small Gram matrix keeps this correct when the rows are not orthonormal.
        let coeff = gram.pinverse(1e-10).matmul(&basis.matmul(&out));
        out = &out - basis.tr().matmul(&coeff);
    }
    let n = out.norm();
    &out * (norm / n.clamp_min(1e-30))
}
