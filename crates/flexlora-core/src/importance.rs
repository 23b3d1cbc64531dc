//! Importance of one adapted matrix, from its active singular values (docs/method.md §2).
//!
//! Every metric here sees only the active `λ` values of one matrix (inactive slots are left
//! out by the caller) and returns a finite `f64`: never NaN, never infinite. A metric that
//! needs more than the singular values (AdaLoRA's gradient sensitivity) lives with the tensor
//! code that has the gradients, and hands the allocator a plain score like these do.

use serde::{Deserialize, Serialize};

/// The `ε` inside the logarithm of the spectral entropy, as in the reference implementation.
pub const ENTROPY_EPS: f64 = 1e-8;

/// A per-matrix importance score computed from the active singular values `λ_1..λ_r`.
///
/// Higher means "more deserving of rank": the allocator expands the highest-scoring matrices
/// and prunes the lowest-scoring ones.
pub trait ImportanceMetric {
    /// The name used in configs and logs (`"entropy"`, `"nuclear"`, `"frobenius"`).
    fn name(&self) -> &'static str;
    /// The score of one matrix. Must be finite for every input, including empty, all-zero and
    /// non-finite ones.
    fn score(&self, lambdas: &[f32]) -> f64;
}

/// Normalised spectral-energy entropy (FlexLoRA's metric).
///
/// `e_i = λ_i² / Σ_j λ_j²`, `I(Λ) = −(1 / log r) · Σ_i e_i · log(e_i + ε)`, `ε = 1e-8`.
///
/// Edge cases (where the reference code returns NaN):
/// - `r = 1` with `λ ≠ 0`: the score is `1`. The normalised entropy is the *evenness* of the
///   energy over the directions the matrix has, `H / log r`; with one direction it is 0/0, and
///   we take the value evenness takes for a one-outcome distribution, 1: every direction the
///   matrix has carries energy, none is idle. This is also what keeps the allocation able to
///   act: with the other limit, 0, a rank-1 matrix is the lowest possible score, it cannot be
///   pruned (`r ≥ 1`) and it can never win an expansion (that needs a score strictly above the
///   paired prune candidate's), so a matrix pruned to rank 1 stayed there for good and a config
///   that starts every matrix at rank 1 could never move. With 1, a rank-1 matrix whose single
///   direction is in use competes with the most evenly spread matrices for new rank.
/// - all `λ = 0` (any `r`, including `r = 1` and the empty spectrum): `0`. A matrix with no
///   energy shows no use of any direction; this is every matrix's state before its first
///   update, where equal scores move nothing. One update of `λ` makes it non-zero, after which
///   the rules above apply: a zero matrix is never stuck.
/// - any non-finite `λ`: `0` (the trainer stops on non-finite parameters; the metric never
///   propagates NaN into the allocator).
///
/// The `ε` can push the raw value a hair below 0 (`−log(1 + ε)` when one `e_i = 1`); the result
/// is clamped to `[0, 1]`.
pub fn spectral_entropy(lambdas: &[f32]) -> f64 {
    let r = lambdas.len();
    if lambdas.iter().any(|l| !l.is_finite()) {
        return 0.0;
    }
    let total: f64 = lambdas.iter().map(|&l| f64::from(l) * f64::from(l)).sum();
    if total == 0.0 {
        return 0.0;
    }
    if r == 1 {
        return 1.0;
    }
    let h: f64 = lambdas
        .iter()
        .map(|&l| {
            let e = f64::from(l) * f64::from(l) / total;
            -e * (e + ENTROPY_EPS).ln()
        })
        .sum();
    (h / (r as f64).ln()).clamp(0.0, 1.0)
}

/// Spectral-energy entropy as an [`ImportanceMetric`]; see [`spectral_entropy`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SpectralEntropy;

impl ImportanceMetric for SpectralEntropy {
    fn name(&self) -> &'static str {
        "entropy"
    }
    fn score(&self, lambdas: &[f32]) -> f64 {
        spectral_entropy(lambdas)
    }
}

/// Nuclear norm `Σ_i |λ_i|` (the paper's "nuclear" ablation). Non-finite input scores `0`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NuclearNorm;

impl ImportanceMetric for NuclearNorm {
    fn name(&self) -> &'static str {
        "nuclear"
    }
    fn score(&self, lambdas: &[f32]) -> f64 {
        finite_or_zero(lambdas.iter().map(|&l| f64::from(l).abs()).sum())
    }
}

/// Frobenius norm `sqrt(Σ_i λ_i²)` (the paper's "Frobenius" ablation). Non-finite input
/// scores `0`.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrobeniusNorm;

impl ImportanceMetric for FrobeniusNorm {
    fn name(&self) -> &'static str {
        "frobenius"
    }
    fn score(&self, lambdas: &[f32]) -> f64 {
        let sq: f64 = lambdas.iter().map(|&l| f64::from(l) * f64::from(l)).sum();
        finite_or_zero(sq.sqrt())
    }
}

fn finite_or_zero(x: f64) -> f64 {
    if x.is_finite() { x } else { 0.0 }
}

/// AdaLoRA's sensitivity summed up per matrix (the `"sensitivity"` ablation, docs/method.md §2):
/// the mean triplet score over the active slots,
/// `I_k = (1 / r_k) · Σ_{i active} S_i` with `S_i = s(λ_i) + mean_j s(Q_ij) + mean_o s(P_oi)`
/// (computed by the tensor code, which holds the gradients).
///
/// The mean, not the sum: a sum grows with the rank, so the matrices that already hold the
/// most rank would keep winning it; the mean asks how important a matrix's average direction
/// is, as the spectral metrics do. Non-finite triplet scores are left out; no active slot (or
/// none finite) scores `0`. `active` shorter than `triplet_scores` counts the missing slots as
/// inactive.
pub fn matrix_sensitivity(triplet_scores: &[f64], active: &[bool]) -> f64 {
    let (sum, n) = triplet_scores
        .iter()
        .zip(active)
        .filter(|(s, a)| **a && s.is_finite())
        .fold((0.0, 0usize), |(sum, n), (s, _)| (sum + s, n + 1));
    if n == 0 {
        0.0
    } else {
        finite_or_zero(sum / n as f64)
    }
}

/// The importance metric chosen in a config (`importance = "entropy" | "nuclear" |
/// "frobenius" | "sensitivity"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Importance {
    /// [`SpectralEntropy`], FlexLoRA's metric.
    #[default]
    Entropy,
    /// [`NuclearNorm`].
    Nuclear,
    /// [`FrobeniusNorm`].
    Frobenius,
    /// AdaLoRA's gradient sensitivity per matrix, [`matrix_sensitivity`]: not a function of
    /// the singular values, so [`Importance::spectral`] is `None` for it.
    Sensitivity,
}

impl Importance {
    /// The name used in configs and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Importance::Entropy => SpectralEntropy.name(),
            Importance::Nuclear => NuclearNorm.name(),
            Importance::Frobenius => FrobeniusNorm.name(),
            Importance::Sensitivity => "sensitivity",
        }
    }

    /// The metric as a function of the singular values, or `None` for
    /// [`Importance::Sensitivity`], which needs gradients.
    pub fn spectral(&self) -> Option<&'static dyn ImportanceMetric> {
        match self {
            Importance::Entropy => Some(&SpectralEntropy),
            Importance::Nuclear => Some(&NuclearNorm),
            Importance::Frobenius => Some(&FrobeniusNorm),
            Importance::Sensitivity => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn entropy_of_uniform_spectrum_is_one() {
        // e_i = 1/4 each: H = -4 * 1/4 * ln(1/4 + eps) = ln 4 (up to eps), / ln 4 = 1.
        let s = spectral_entropy(&[2.0, -2.0, 2.0, 2.0]);
        assert!(close(s, 1.0, 1e-7), "{s}");
    }

    #[test]
    fn entropy_hand_computed_two_values() {
        // λ = (1, 2): e = (0.2, 0.8); H = -(0.2 ln 0.2 + 0.8 ln 0.8) = 0.500402423538188;
        // / ln 2 = 0.7219280948873623 (eps changes the 8th digit at most).
        let s = spectral_entropy(&[1.0, 2.0]);
        assert!(close(s, 0.721_928_094_887_362_3, 1e-7), "{s}");
    }

    #[test]
    fn entropy_of_single_direction_is_zero() {
        let s = spectral_entropy(&[0.0, 3.0, 0.0]);
        assert!(close(s, 0.0, 1e-12), "{s}");
        assert!(s >= 0.0, "clamped at 0, got {s}");
    }

    /// The reference divides by log(1) = 0 and gets NaN, which torch.topk ranks highest. Here
    /// a rank-1 matrix in use scores 1 (evenness over the one direction it has), one with no
    /// energy 0, and nothing is NaN.
    #[test]
    fn reference_failure_rank_one_is_defined() {
        assert_eq!(spectral_entropy(&[0.7]), 1.0);
        assert_eq!(spectral_entropy(&[-1e-20]), 1.0);
        assert_eq!(spectral_entropy(&[0.0]), 0.0);
        assert_eq!(spectral_entropy(&[]), 0.0);
    }

    /// The reference computes 0/0 = NaN for a matrix whose λ are all zero (its state at step 0).
    #[test]
    fn reference_failure_all_zero_scores_zero() {
        assert_eq!(spectral_entropy(&[0.0; 8]), 0.0);
        assert_eq!(NuclearNorm.score(&[0.0; 8]), 0.0);
        assert_eq!(FrobeniusNorm.score(&[0.0; 8]), 0.0);
    }

    const SPECTRAL: [&dyn ImportanceMetric; 3] = [&SpectralEntropy, &NuclearNorm, &FrobeniusNorm];

    #[test]
    fn non_finite_input_scores_zero() {
        for metric in SPECTRAL {
            assert_eq!(metric.score(&[1.0, f32::NAN]), 0.0, "{}", metric.name());
            assert_eq!(
                metric.score(&[1.0, f32::INFINITY]),
                0.0,
                "{}",
                metric.name()
            );
        }
    }

    #[test]
    fn norms_hand_computed() {
        assert!(close(NuclearNorm.score(&[3.0, -4.0]), 7.0, 1e-12));
        assert!(close(FrobeniusNorm.score(&[3.0, -4.0]), 5.0, 1e-12));
    }

    #[test]
    fn metric_names_round_trip_through_serde_names() {
        for (metric, name) in [
            (Importance::Entropy, "entropy"),
            (Importance::Nuclear, "nuclear"),
            (Importance::Frobenius, "frobenius"),
            (Importance::Sensitivity, "sensitivity"),
        ] {
            assert_eq!(metric.name(), name);
            assert_eq!(
                metric.spectral().map(|m| m.name()),
                (metric != Importance::Sensitivity).then_some(name)
            );
        }
    }

    #[test]
    fn matrix_sensitivity_is_the_mean_over_active_finite_slots() {
        // Active slots 0, 2, 3 with scores 1, 3, 8 (slot 1 inactive, slot 3's NaN left out):
        // (1 + 3) / 2 = 2.
        let s = matrix_sensitivity(&[1.0, 100.0, 3.0, f64::NAN], &[true, false, true, true]);
        assert_eq!(s, 2.0);
        assert_eq!(matrix_sensitivity(&[5.0, 7.0], &[true, true]), 6.0);
        assert_eq!(matrix_sensitivity(&[5.0, 7.0], &[false, false]), 0.0);
        assert_eq!(matrix_sensitivity(&[5.0, 7.0], &[true]), 5.0);
        assert_eq!(matrix_sensitivity(&[], &[]), 0.0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn entropy_is_in_unit_interval(l in proptest::collection::vec(-1e6f32..1e6, 0..64)) {
            let s = spectral_entropy(&l);
            prop_assert!((0.0..=1.0).contains(&s), "{s}");
        }

        #[test]
        fn entropy_ignores_sign_and_scale(
            l in proptest::collection::vec(-10f32..10.0, 2..32),
            c in 0.01f32..100.0,
        ) {
            let flipped: Vec<f32> = l.iter().map(|x| -x).collect();
            let scaled: Vec<f32> = l.iter().map(|x| x * c).collect();
            let s = spectral_entropy(&l);
            prop_assert!((s - spectral_entropy(&flipped)).abs() < 1e-9);
            // Scaling is exact up to f32 rounding of the scaled inputs and eps.
            prop_assert!((s - spectral_entropy(&scaled)).abs() < 1e-4);
        }

        #[test]
        fn every_metric_is_finite_and_non_negative(
            l in proptest::collection::vec(proptest::num::f32::ANY, 0..16),
        ) {
            for metric in SPECTRAL {
                let s = metric.score(&l);
                prop_assert!(s.is_finite() && s >= 0.0, "{} gave {s}", metric.name());
            }
        }

        #[test]
        fn matrix_sensitivity_is_finite_and_within_the_active_range(
            v in proptest::collection::vec((proptest::num::f64::ANY, any::<bool>()), 0..32),
        ) {
            let (scores, active): (Vec<f64>, Vec<bool>) = v.into_iter().unzip();
            let s = matrix_sensitivity(&scores, &active);
            prop_assert!(s.is_finite());
            let used: Vec<f64> = scores.iter().zip(&active)
                .filter(|(x, a)| **a && x.is_finite()).map(|(x, _)| *x).collect();
            if !used.is_empty() && s != 0.0 {
                let lo = used.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = used.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                prop_assert!(s >= lo - 1e-9 * lo.abs() && s <= hi + 1e-9 * hi.abs(), "{s} not in [{lo}, {hi}]");
            }
        }
    }
}
