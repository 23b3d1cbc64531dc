//! Task metrics as GLUE reports them (scikit-learn's and SciPy's definitions).
//!
//! Classification metrics take the predicted and true class indices as `f32` (as
//! [`crate::data::Example::label`] holds them) and round each to the nearest integer; the
//! correlations take real values. Everything is computed in `f64`. Where a metric is undefined
//! (no examples, a constant input, an empty class) it is 0 rather than NaN, so that model
//! selection never compares NaN; a NaN prediction still makes the correlations NaN.
//!
//! # Panics
//! Every function panics when `predictions` and `labels` differ in length (a caller's bug).

use crate::config::MetricName;
use std::collections::BTreeMap;

/// The metric `name` of `predictions` against `labels`.
pub fn metric(name: MetricName, predictions: &[f32], labels: &[f32]) -> f64 {
    match name {
        MetricName::Accuracy => accuracy(predictions, labels),
        MetricName::F1 => f1_binary(predictions, labels),
        MetricName::Matthews => matthews(predictions, labels),
        MetricName::Pearson => pearson(predictions, labels),
        MetricName::Spearman => spearman(predictions, labels),
    }
}

fn check(predictions: &[f32], labels: &[f32]) {
    assert_eq!(
        predictions.len(),
        labels.len(),
        "metric: {} predictions for {} labels",
        predictions.len(),
        labels.len()
    );
}

/// The class index a value stands for.
fn class(x: f32) -> i64 {
    x.round() as i64
}

/// `(1/n) Σᵢ [ŷᵢ = yᵢ]`: the fraction of correct predictions (0 for no examples).
pub fn accuracy(predictions: &[f32], labels: &[f32]) -> f64 {
    check(predictions, labels);
    if labels.is_empty() {
        return 0.0;
    }
    let correct = predictions
        .iter()
        .zip(labels)
        .filter(|(p, l)| class(**p) == class(**l))
        .count();
    correct as f64 / labels.len() as f64
}

/// F1 of the positive class 1: `2·TP / (2·TP + FP + FN)`, the harmonic mean of precision and
/// recall; 0 when there are no positive predictions and no positive labels
/// (scikit-learn's `f1_score` with `zero_division=0`).
pub fn f1_binary(predictions: &[f32], labels: &[f32]) -> f64 {
    check(predictions, labels);
    let (mut tp, mut fp, mut fn_) = (0u64, 0u64, 0u64);
    for (&p, &l) in predictions.iter().zip(labels) {
        match (class(p) == 1, class(l) == 1) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            (false, false) => {}
        }
    }
    let denominator = 2 * tp + fp + fn_;
    if denominator == 0 {
        0.0
    } else {
        (2 * tp) as f64 / denominator as f64
    }
}

/// Matthews correlation coefficient in scikit-learn's multiclass form (Gorodkin's `R_K`):
/// with `n` examples, `c` of them correct, `p_k` predictions and `t_k` labels of class `k`,
/// `MCC = (c·n − Σ_k p_k t_k) / √((n² − Σ_k p_k²)(n² − Σ_k t_k²))`. For two classes this is
/// `(TP·TN − FP·FN) / √((TP+FP)(TP+FN)(TN+FP)(TN+FN))`. 0 when the denominator is 0 (all
/// predictions, or all labels, one class), as scikit-learn.
pub fn matthews(predictions: &[f32], labels: &[f32]) -> f64 {
    check(predictions, labels);
    let mut predicted: BTreeMap<i64, f64> = BTreeMap::new();
    let mut actual: BTreeMap<i64, f64> = BTreeMap::new();
    let mut correct = 0.0;
    for (&p, &l) in predictions.iter().zip(labels) {
        let (p, l) = (class(p), class(l));
        *predicted.entry(p).or_default() += 1.0;
        *actual.entry(l).or_default() += 1.0;
        if p == l {
            correct += 1.0;
        }
    }
    let n = labels.len() as f64;
    let cross: f64 = predicted
        .iter()
        .map(|(k, p)| p * actual.get(k).copied().unwrap_or(0.0))
        .sum();
    let sum_sq = |m: &BTreeMap<i64, f64>| m.values().map(|x| x * x).sum::<f64>();
    let denominator = ((n * n - sum_sq(&predicted)) * (n * n - sum_sq(&actual))).sqrt();
    if denominator == 0.0 {
        0.0
    } else {
        (correct * n - cross) / denominator
    }
}

/// Pearson correlation `r = Σ(xᵢ−x̄)(yᵢ−ȳ) / √(Σ(xᵢ−x̄)² · Σ(yᵢ−ȳ)²)` of predictions `x` and
/// labels `y` (SciPy's `pearsonr` statistic); 0 for fewer than 2 examples or a constant input
/// (where SciPy gives NaN).
pub fn pearson(predictions: &[f32], labels: &[f32]) -> f64 {
    check(predictions, labels);
    let x: Vec<f64> = predictions.iter().map(|&v| f64::from(v)).collect();
    let y: Vec<f64> = labels.iter().map(|&v| f64::from(v)).collect();
    pearson_f64(&x, &y)
}

fn pearson_f64(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len();
    if n < 2 {
        return 0.0;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / n as f64;
    let (mx, my) = (mean(x), mean(y));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    let denominator = (sxx * syy).sqrt();
    if denominator == 0.0 {
        0.0
    } else {
        (sxy / denominator).clamp(-1.0, 1.0)
    }
}

/// 1-based ranks with ties given their average rank (SciPy's `rankdata(method="average")`).
fn average_ranks(v: &[f32]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut ranks = vec![0.0; v.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && v[order[end]] == v[order[start]] {
            end += 1;
        }
        // Positions start..end (0-based) share the mean of ranks start+1 ..= end.
        let rank = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

/// Spearman rank correlation: the Pearson correlation of the average ranks (ties share the
/// mean of the ranks they span), as SciPy's `spearmanr`; 0 where Pearson is undefined.
pub fn spearman(predictions: &[f32], labels: &[f32]) -> f64 {
    check(predictions, labels);
    if predictions.iter().chain(labels).any(|v| v.is_nan()) {
        return f64::NAN;
    }
    pearson_f64(&average_ranks(predictions), &average_ranks(labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn accuracy_counts_rounded_classes() {
        close(accuracy(&[0., 1., 1., 0.], &[0., 1., 0., 0.]), 0.75);
        close(accuracy(&[2.0, 0.9999], &[2., 1.]), 1.0);
        close(accuracy(&[], &[]), 0.0);
    }

    #[test]
    fn f1_by_hand() {
        // TP = 2 (items 0, 3), FP = 1 (item 1), FN = 1 (item 4): 4 / (4 + 1 + 1).
        close(
            f1_binary(&[1., 1., 0., 1., 0.], &[1., 0., 0., 1., 1.]),
            2.0 / 3.0,
        );
        close(f1_binary(&[0., 0.], &[0., 0.]), 0.0);
        close(f1_binary(&[1., 1.], &[0., 0.]), 0.0);
        close(f1_binary(&[1., 0.], &[1., 0.]), 1.0);
    }

    #[test]
    fn matthews_by_hand() {
        // TP 2, TN 1, FP 1, FN 1: (2·1 − 1·1) / √(3·3·2·2) = 1/6.
        close(
            matthews(&[1., 1., 0., 1., 0.], &[1., 0., 0., 1., 1.]),
            1.0 / 6.0,
        );
        close(matthews(&[0., 1., 0., 1.], &[0., 1., 0., 1.]), 1.0);
        close(matthews(&[1., 0., 1., 0.], &[0., 1., 0., 1.]), -1.0);
        // Constant predictions: undefined, 0 as scikit-learn.
        close(matthews(&[1., 1., 1.], &[0., 1., 0.]), 0.0);
        // Three classes: n = 6, c = 4, p = (2, 2, 2), t = (2, 2, 2):
        // (4·6 − 12) / √((36 − 12)(36 − 12)) = 12 / 24.
        close(
            matthews(&[0., 1., 2., 2., 1., 0.], &[0., 2., 2., 1., 1., 0.]),
            0.5,
        );
    }

    #[test]
    fn pearson_by_hand() {
        // dx = (−1.5, −.5, .5, 1.5), dy = (−3, −1, 0, 4): Σdxdy = 11, Σdx² = 5, Σdy² = 26.
        close(
            pearson(&[1., 2., 3., 4.], &[2., 4., 5., 9.]),
            11.0 / 130f64.sqrt(),
        );
        close(pearson(&[1., 2., 3.], &[6., 4., 2.]), -1.0);
        close(pearson(&[1., 1., 1.], &[1., 2., 3.]), 0.0);
        close(pearson(&[1.], &[1.]), 0.0);
    }

    #[test]
    fn spearman_averages_tied_ranks() {
        assert_eq!(average_ranks(&[10., 20., 20., 5.]), [2.0, 3.5, 3.5, 1.0]);
        // Ranks (1, 2.5, 2.5, 4) and (1, 3, 2, 4): Σdxdy = 4.5, Σdx² = 4.5, Σdy² = 5.
        close(
            spearman(&[1., 2., 2., 3.], &[1., 3., 2., 4.]),
            4.5 / 22.5f64.sqrt(),
        );
        // Monotone but not linear: 1.
        close(spearman(&[1., 2., 3., 4.], &[1., 8., 27., 64.]), 1.0);
        assert!(spearman(&[f32::NAN, 1.], &[1., 2.]).is_nan());
    }

    #[test]
    fn metric_dispatches() {
        let (p, l) = ([1., 0., 1., 1.], [1., 0., 0., 1.]);
        close(metric(MetricName::Accuracy, &p, &l), accuracy(&p, &l));
        close(metric(MetricName::F1, &p, &l), f1_binary(&p, &l));
        close(metric(MetricName::Matthews, &p, &l), matthews(&p, &l));
        close(metric(MetricName::Pearson, &p, &l), pearson(&p, &l));
        close(metric(MetricName::Spearman, &p, &l), spearman(&p, &l));
    }
}
