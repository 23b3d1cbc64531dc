//! Importance of one adapted matrix, from its active singular values (METHOD.md §2).
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
/// - `r ≤ 1`: the score is `0`, the limit of the definition (all energy in one direction).
///   Such a matrix still may be expanded, but its score is the lowest possible, so it is rarely
///   among the highest: the rank heatmap shows this rather than hiding it.
/// - all `λ = 0`: `0` (no energy, nothing spread).
/// - any non-finite `λ`: `0` (the trainer stops on non-finite parameters; the metric never
///   propagates NaN into the allocator).
///
/// The `ε` can push the raw value a hair below 0 (`−log(1 + ε)` when one `e_i = 1`); the result
/// is clamped to `[0, 1]`.
pub fn spectral_entropy(lambdas: &[f32]) -> f64 {
    let r = lambdas.len();
    if r <= 1 || lambdas.iter().any(|l| !l.is_finite()) {
        return 0.0;
    }
    let total: f64 = lambdas.iter().map(|&l| f64::from(l) * f64::from(l)).sum();
    if total == 0.0 {
        return 0.0;
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

/// The importance metric chosen in a config (`importance = "entropy" | "nuclear" |
/// "frobenius"`).
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
}

impl ImportanceMetric for Importance {
    fn name(&self) -> &'static str {
        match self {
            Importance::Entropy => SpectralEntropy.name(),
            Importance::Nuclear => NuclearNorm.name(),
            Importance::Frobenius => FrobeniusNorm.name(),
        }
    }
    fn score(&self, lambdas: &[f32]) -> f64 {
        match self {
            Importance::Entropy => SpectralEntropy.score(lambdas),
            Importance::Nuclear => NuclearNorm.score(lambdas),
            Importance::Frobenius => FrobeniusNorm.score(lambdas),
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

    /// The reference divides by log(1) = 0 and gets NaN, which torch.topk ranks highest.
    #[test]
    fn reference_failure_rank_one_scores_zero() {
        assert_eq!(spectral_entropy(&[0.7]), 0.0);
        assert_eq!(spectral_entropy(&[]), 0.0);
    }

    /// The reference computes 0/0 = NaN for a matrix whose λ are all zero (its state at step 0).
    #[test]
    fn reference_failure_all_zero_scores_zero() {
        assert_eq!(spectral_entropy(&[0.0; 8]), 0.0);
        assert_eq!(NuclearNorm.score(&[0.0; 8]), 0.0);
        assert_eq!(FrobeniusNorm.score(&[0.0; 8]), 0.0);
    }

    #[test]
    fn non_finite_input_scores_zero() {
        for metric in [
            Importance::Entropy,
            Importance::Nuclear,
            Importance::Frobenius,
        ] {
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
        ] {
            assert_eq!(metric.name(), name);
        }
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
            for metric in [Importance::Entropy, Importance::Nuclear, Importance::Frobenius] {
                let s = metric.score(&l);
                prop_assert!(s.is_finite() && s >= 0.0, "{} gave {s}", metric.name());
            }
        }
    }
}
