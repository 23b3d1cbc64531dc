//! Numerical guards: a run whose loss, gradients or singular values (λ) stop being finite is
//! stopped at once, naming the step and the matrix, before anything non-finite reaches a
//! checkpoint. Training on would only write garbage over good results.

use super::model::TrainableModel;
use tch::{Kind, Tensor};

/// A non-finite value found by a guard; the trainer adds the last good checkpoint and stops.
#[derive(Debug, thiserror::Error)]
#[error("{what} at optimiser step {step}")]
pub struct NonFinite {
    /// What went non-finite, e.g. `the gradient of adapters.encoder.layer.0.attention.self.query.Q (inf)`.
    pub what: String,
    /// The optimiser step (1-based) being computed.
    pub step: u64,
}

/// Whether every element of `t` is finite.
fn all_finite(t: &Tensor) -> bool {
    t.isfinite().all().int64_value(&[]) != 0
}

/// `inf`, `-inf` or `NaN`: the first non-finite value of `t` (for the message).
fn first_bad_value(t: &Tensor) -> String {
    let flat = t.detach().to_kind(Kind::Double).flatten(0, -1);
    let bad = flat.isfinite().logical_not().nonzero();
    if bad.size().first().copied().unwrap_or(0) == 0 {
        return "non-finite".into();
    }
    let at = bad.int64_value(&[0, 0]);
    format!("{}", flat.double_value(&[at]))
}

/// The first trainable tensor of `model` whose gradient holds a non-finite value, with that
/// value. Called only when the global gradient norm is not finite, so its cost is off the
/// normal path.
pub fn non_finite_gradient<M: TrainableModel + ?Sized>(model: &M) -> Option<String> {
    model.named_trainables().into_iter().find_map(|(name, t)| {
        let g = t.grad();
        (g.defined() && !all_finite(&g))
            .then(|| format!("the gradient of {name} ({})", first_bad_value(&g)))
    })
}

/// The first SVD adapter whose λ holds a non-finite value, with that value. One reduction
/// over all λ per step; the per-matrix search runs only when it fails.
pub fn non_finite_lambda<M: TrainableModel + ?Sized>(model: &M) -> Option<String> {
    let lambdas: Vec<Tensor> = model
        .svd_adapters()
        .iter()
        .map(|a| a.lambda.detach().flatten(0, -1))
        .collect();
    if lambdas.is_empty() || all_finite(&Tensor::cat(&lambdas, 0)) {
        return None;
    }
    model
        .named_trainables()
        .into_iter()
        .filter(|(name, _)| name.ends_with(".lambda"))
        .find_map(|(name, t)| {
            (!all_finite(&t)).then(|| format!("{name} ({})", first_bad_value(&t)))
        })
}
