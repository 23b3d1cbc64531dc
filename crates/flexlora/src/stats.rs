//! The statistics the reports print: mean and sample standard deviation over seeds, and the
//! paired t-test of two methods run on the same seeds.

use statrs::distribution::{ContinuousCDF, StudentsT};

/// Mean and sample standard deviation (`n − 1`): `(NaN, NaN)` for no value, sd `0` for one.
pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = v.iter().sum::<f64>() / n;
    let sd = if v.len() < 2 {
        0.0
    } else {
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    };
    (mean, sd)
}

/// The paired t-test of `a` against `b` (same seeds, same order): `t = d̄ / (s_d / √n)` with
/// `n − 1` degrees of freedom; returns `(d̄, two-sided p)`. `p` is `None` for fewer than two
/// pairs or when all differences are equal (`s_d = 0`: the test is undefined).
pub fn paired_t_test(a: &[f64], b: &[f64]) -> (f64, Option<f64>) {
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let (mean, sd) = mean_sd(&d);
    if d.len() < 2 || sd.is_nan() || sd <= 0.0 {
        return (mean, None);
    }
    let n = d.len() as f64;
    let t = mean / (sd / n.sqrt());
    let p = StudentsT::new(0.0, 1.0, n - 1.0)
        .ok()
        .map(|dist| (2.0 * dist.cdf(-t.abs())).clamp(0.0, 1.0));
    (mean, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_t_test_matches_hand_computation() {
        // d = (1, 2, 3): mean 2, s_d = 1, t = 2 / (1 / √3) = 3.4641 with 2 degrees of freedom.
        // Two-sided p for t(2): p = 1 − t / √(t² + 2) = 1 − 3.4641 / √14 = 0.0742.
        let (d, p) = paired_t_test(&[11.0, 12.0, 13.0], &[10.0, 10.0, 10.0]);
        assert_eq!(d, 2.0);
        let want = 1.0 - 12f64.sqrt() / 14f64.sqrt();
        assert!((p.unwrap() - want).abs() < 1e-9, "{p:?} vs {want}");
        // The critical value t(4) = 2.776445 gives p = 0.05: differences with mean m, sd s,
        // n = 5, t = m √5 / s.
        let s = 1.0;
        let m = 2.776_445_105_197_8 * s / 5f64.sqrt();
        let base = [0.0; 5];
        let spread = [-2.0, -1.0, 0.0, 1.0, 2.0].map(|x: f64| x * s / 2.5f64.sqrt() + m);
        let (_, p) = paired_t_test(&spread, &base);
        assert!((p.unwrap() - 0.05).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn paired_t_test_is_undefined_without_spread() {
        assert_eq!(paired_t_test(&[1.0], &[0.5]), (0.5, None));
        assert_eq!(paired_t_test(&[1.0, 2.0], &[0.0, 1.0]), (1.0, None));
    }
}
