//! `LoraAdapter`: the plain LoRA baseline, `ΔW = B A · α / r` with PEFT's initialisation.

use super::AdapterError;
use tch::{Device, Kind, Tensor};

/// The LoRA adapter of one frozen linear layer (`out × in`).
#[derive(Debug)]
pub struct LoraAdapter {
    /// `A`, `r × in`, Kaiming-uniform with `a = √5` (bound `1/√in`), as PEFT.
    pub a: Tensor,
    /// `B`, `out × r`, zeros, so `ΔW = 0` at the start.
    pub b: Tensor,
    rank: usize,
    alpha: f64,
    dropout: f64,
}

impl LoraAdapter {
    /// A new adapter of rank `r` with scale `α / r`.
    pub fn new(
        in_features: i64,
        out_features: i64,
        r: usize,
        alpha: f64,
        dropout: f64,
        options: (Kind, Device),
    ) -> Result<Self, AdapterError> {
        let bad =
            |field: &'static str, message: String| Err(AdapterError::Config { field, message });
        if r == 0 {
            return bad("r_init", "must be at least 1".into());
        }
        if !(alpha.is_finite() && alpha > 0.0) {
            return bad("alpha", format!("{alpha} is not a finite number > 0"));
        }
        if !(0.0..1.0).contains(&dropout) {
            return bad("dropout", format!("{dropout} is not in [0, 1)"));
        }
        // kaiming_uniform_(a=√5): gain = √(2 / (1 + 5)), bound = gain · √(3 / fan_in) = 1/√in.
        let bound = 1.0 / (in_features as f64).sqrt();
        let a = Tensor::empty([r as i64, in_features], options)
            .uniform_(-bound, bound)
            .set_requires_grad(true);
        let b = Tensor::zeros([out_features, r as i64], options).set_requires_grad(true);
        Ok(Self {
            a,
            b,
            rank: r,
            alpha,
            dropout,
        })
    }

    /// Builds an adapter from given `A` (`r × in`) and `B` (`out × r`).
    pub fn from_parts(
        a: Tensor,
        b: Tensor,
        alpha: f64,
        dropout: f64,
    ) -> Result<Self, AdapterError> {
        let (sa, sb) = (a.size(), b.size());
        if sa.len() != 2 || sb.len() != 2 || sa[0] != sb[1] || sa[0] == 0 {
            return Err(AdapterError::Shape(format!(
                "A {sa:?} and B {sb:?} do not form a rank-r pair"
            )));
        }
        let rank = sa[0] as usize;
        Ok(Self {
            a: a.set_requires_grad(true),
            b: b.set_requires_grad(true),
            rank,
            alpha,
            dropout,
        })
    }

    /// The rank `r`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The scale `α / r`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// `s · (dropout(x) Aᵀ) Bᵀ`.
    pub fn forward_delta(&self, x: &Tensor, train: bool) -> Tensor {
        super::low_rank_delta(x, self.dropout, train, self.factors())
    }

    /// `ΔW = up · down` as two differentiable factors: `down = A`, `up = s · B` (the scale on
    /// the small factor, not on the `[tokens, out]` product; nothing at all when `s = 1`).
    pub fn factors(&self) -> (Tensor, Tensor) {
        let s = self.scale();
        let up = if s == 1.0 {
            self.b.shallow_clone()
        } else {
            &self.b * s
        };
        (self.a.shallow_clone(), up)
    }

    /// The dropout probability on the adapter's input.
    pub fn dropout(&self) -> f64 {
        self.dropout
    }

    /// `ΔW = s · B A`.
    pub fn delta_weight(&self) -> Tensor {
        self.b.matmul(&self.a) * self.scale()
    }
}
