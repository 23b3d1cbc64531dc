//! The GEMM work of one BERT training step, counted from the model's shapes, and the machine's
//! GEMM rate measured on exactly those shapes.

use crate::gemm::{CpuGemm, linear_with};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// One GEMM shape `[m, k] × [k, n]` (or a batch of them in one call) and how often a training
/// step runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmShape {
    /// Rows of the left operand.
    pub m: i64,
    /// The shared dimension.
    pub k: i64,
    /// Columns of the right operand.
    pub n: i64,
    /// Matrix products per call: 1 for a linear layer, `batch · heads` for attention's batched
    /// products (one `bmm` call each, and measured as one).
    pub batch: i64,
    /// Calls per training step.
    pub count: u64,
}

impl GemmShape {
    /// `2 · batch · m k n` per call.
    pub fn flops(&self) -> f64 {
        2.0 * self.batch as f64 * self.m as f64 * self.k as f64 * self.n as f64
    }
}

/// The dimensions that fix a BERT step's GEMM work.
#[derive(Debug, Clone)]
pub struct StepDims {
    /// Tokens the per-token GEMMs (every linear layer) run on: `batch · seq` for a padded
    /// implementation (transformers), the real tokens only for flexlora, which packs them
    /// (see [`crate::models::BertModel::forward`]).
    pub tokens: i64,
    /// Attention's batched products: `(sequences, len)` of each group, `[(batch, seq)]` for a
    /// padded implementation, flexlora's length groups
    /// ([`crate::models::packing::TokenPacking::group_shapes`]) otherwise.
    pub attention: Vec<(i64, i64)>,
    /// Hidden size.
    pub hidden: i64,
    /// Feed-forward size.
    pub intermediate: i64,
    /// Encoder layers.
    pub layers: i64,
    /// Attention heads.
    pub heads: i64,
    /// Adapter rank on every linear layer (0: none).
    pub rank: i64,
    /// Adapters trained through the merged weight ([`crate::adapter::tape`], flexlora) rather
    /// than term by term (PEFT).
    pub merged_adapters: bool,
}

/// The step's GEMMs: forward of every frozen linear layer on `tokens` rows, their input
/// gradients (not for layer 0's query/key/value, whose input, the frozen embeddings, needs
/// none), no weight gradients (the weights are frozen); attention's `QKᵀ` and `AV` forward and
/// both operands' gradients for every group; the adapters' products. Term by term (PEFT):
/// `x Aᵀ` and `· Bᵀ` forward, `dA`, `dB` and the input gradient's two products. Merged
/// (flexlora; layer 0's query/key/value stay term by term, without the input gradient): the
/// merged weight `W + B A`, then `x Aᵀ`, `g B`, `dA` and `dB`. The classifier and the
/// elementwise work are left out.
pub fn step_gemms(d: &StepDims) -> Vec<GemmShape> {
    let m = d.tokens;
    let (h, f, l) = (d.hidden, d.intermediate, d.layers as u64);
    let square = 4 * l; // query, key, value, attention output
    let linear = |k: i64, n: i64, count: u64| GemmShape {
        m,
        k,
        n,
        batch: 1,
        count,
    };
    let mut v = vec![
        // Forward.
        linear(h, h, square),
        linear(h, f, l),
        linear(f, h, l),
        // Input gradients: dX = dY W (the shapes swap k and n).
        linear(h, h, square - 3),
        linear(f, h, l),
        linear(h, f, l),
    ];
    let head_dim = h / d.heads.max(1);
    for &(sequences, len) in &d.attention {
        let bh = sequences * d.heads;
        // Per (sequence, head): QKᵀ [len, d]×[d, len] and AV [len, len]×[len, d]; backward
        // needs two GEMMs of the same size for each.
        v.push(GemmShape {
            m: len,
            k: head_dim,
            n: len,
            batch: bh,
            count: 3 * l,
        });
        v.push(GemmShape {
            m: len,
            k: len,
            n: head_dim,
            batch: bh,
            count: 3 * l,
        });
    }
    if d.rank > 0 {
        let r = d.rank;
        let thin = |m: i64, k: i64, n: i64, count: u64| GemmShape {
            m,
            k,
            n,
            batch: 1,
            count,
        };
        for (inp, out, count) in [(h, h, square), (h, f, l), (f, h, l)] {
            // Layer 0's query, key and value: term by term on both sides, no input gradient.
            let first = if inp == h && out == h { 3 } else { 0 };
            let (merged, plain) = if d.merged_adapters {
                (count - first, first)
            } else {
                (0, count)
            };
            // x Aᵀ, (x Aᵀ) Bᵀ, dA = (g B)ᵀ x, dB = gᵀ (x Aᵀ), g B.
            v.push(thin(m, inp, r, count));
            v.push(thin(m, r, out, plain));
            v.push(thin(r, m, inp, count));
            v.push(thin(out, m, r, count));
            v.push(thin(m, out, r, count));
            // The input gradient's (g B) A, where the input needs one.
            let with_input_grad = if d.merged_adapters { 0 } else { count - first };
            v.push(thin(m, r, inp, with_input_grad));
            // The merged weight W + B A.
            v.push(thin(out, r, inp, merged));
        }
    }
    v.retain(|s| s.count > 0);
    v
}

/// Total FLOPs of `shapes`.
pub fn total_flops(shapes: &[GemmShape]) -> f64 {
    shapes.iter().map(|s| s.flops() * s.count as f64).sum()
}

/// The measured rate of each distinct shape and the step-weighted peak.
#[derive(Debug, Clone)]
pub struct GemmPeak {
    /// `(m, k, n, GFLOP/s)` of each shape: the faster library's rate (best of the repeats).
    pub per_shape: Vec<(i64, i64, i64, f64)>,
    /// The step's GEMM FLOPs divided by the time the measured GEMMs would take back to back,
    /// each shape on the faster library: the rate at which this machine can run this step's
    /// GEMM mix.
    pub gflops: f64,
    /// The same step-weighted rate for each library alone (`mkl`, and `onednn` where LibTorch
    /// has it).
    pub by_library: Vec<(String, f64)>,
}

/// Measures `a Wᵀ` (`a`: `[m, k]`, `W`: `[n, k]`, f32, `device`) for every shape of `shapes`
/// with each GEMM library [`crate::gemm::linear_with`] can use (MKL, and oneDNN on the CPU
/// where LibTorch has it), best of `repeats` timed runs after one warm-up, and weights the rates
/// by the step's counts. `quick` times a single call per shape (a check that it runs, not a
/// measurement).
pub fn measure_peak(shapes: &[GemmShape], repeats: usize, quick: bool, device: Device) -> GemmPeak {
    let key = |s: &GemmShape| (s.batch, s.m, s.k, s.n);
    let mut distinct: Vec<(i64, i64, i64, i64)> = Vec::new();
    for s in shapes {
        if !distinct.contains(&key(s)) {
            distinct.push(key(s));
        }
    }
    let mut libraries = vec![CpuGemm::Mkl];
    if device == Device::Cpu && tch::utils::has_mkldnn() {
        libraries.push(CpuGemm::OneDnn);
    }
    // seconds[l][d]: one run of shape d with library l.
    let seconds: Vec<Vec<f64>> = libraries
        .iter()
        .map(|&lib| {
            distinct
                .iter()
                .map(|&(b, m, k, n)| time_shape(lib, b, m, k, n, repeats, quick, device))
                .collect()
        })
        .collect();
    let count_of = |shape: (i64, i64, i64, i64)| -> f64 {
        shapes
            .iter()
            .filter(|s| key(s) == shape)
            .map(|s| s.count as f64)
            .sum()
    };
    let flops = total_flops(shapes);
    let weighted = |time_of: &dyn Fn(usize) -> f64| {
        let step: f64 = (0..distinct.len())
            .map(|d| time_of(d) * count_of(distinct[d]))
            .sum();
        flops / step.max(1e-12) / 1e9
    };
    let best = |d: usize| {
        seconds
            .iter()
            .map(|per| per[d])
            .fold(f64::INFINITY, f64::min)
    };
    GemmPeak {
        per_shape: distinct
            .iter()
            .enumerate()
            .map(|(d, &(b, m, k, n))| (m, k, n, 2.0 * (b * m * k * n) as f64 / best(d) / 1e9))
            .collect(),
        gflops: weighted(&best),
        by_library: libraries
            .iter()
            .zip(&seconds)
            .map(|(lib, per)| (lib.name().to_string(), weighted(&|d| per[d])))
            .collect(),
    }
}

/// Seconds per call of one shape with one library: `a Wᵀ` through
/// [`crate::gemm::linear_with`], or for a batched shape one `bmm` of `batch` products (as
/// attention runs them, whichever library the linear layers use); best of `repeats` timings of
/// enough calls to last a few milliseconds.
#[allow(clippy::too_many_arguments)]
fn time_shape(
    lib: CpuGemm,
    batch: i64,
    m: i64,
    k: i64,
    n: i64,
    repeats: usize,
    quick: bool,
    device: Device,
) -> f64 {
    tch::no_grad(|| {
        let (a, w) = if batch == 1 {
            (
                Tensor::randn([m, k], (Kind::Float, device)),
                Tensor::randn([n, k], (Kind::Float, device)),
            )
        } else {
            (
                Tensor::randn([batch, m, k], (Kind::Float, device)),
                Tensor::randn([batch, n, k], (Kind::Float, device)).transpose(1, 2),
            )
        };
        // Operands made once: only the products are timed.
        let run = || {
            if batch == 1 {
                linear_with(lib, &a, &w, None)
            } else {
                a.bmm(&w)
            }
        };
        let flops = 2.0 * (batch * m * k * n) as f64;
        let calls = if quick {
            1
        } else {
            ((5e8 / flops).ceil() as usize).clamp(1, 10_000)
        };
        let _ = run();
        let mut best = f64::INFINITY;
        for _ in 0..repeats.max(1) {
            let started = Instant::now();
            let mut last = None;
            for _ in 0..calls {
                last = Some(run());
            }
            if let Some(out) = last {
                // Waits for an asynchronous device; a no-op cost on the CPU.
                let _ = out.sum(Kind::Float).double_value(&[]);
            }
            best = best.min(started.elapsed().as_secs_f64() / calls as f64);
        }
        best
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// all-MiniLM-L6-v2 at batch 32 × 64 tokens: the "about 91 GFLOP" per step.
    #[test]
    fn minilm_step_is_about_91_gflop() {
        let d = StepDims {
            tokens: 32 * 64,
            attention: vec![(32, 64)],
            hidden: 384,
            intermediate: 1536,
            layers: 6,
            heads: 12,
            rank: 0,
            merged_adapters: false,
        };
        // Linear forward: 2 · 2048 · (4 · 384² + 2 · 384 · 1536) · 6 = 43.49 GFLOP; input
        // gradients the same less layer 0's q, k, v (3 · 2 · 2048 · 384²) = 41.67; attention
        // 3 · 2 · (2 · 64 · 32 · 64) · 32 · 12 · 6 = 3.62.
        let g = total_flops(&step_gemms(&d)) / 1e9;
        assert!((g - 88.785).abs() < 0.001, "{g}");
        let with_adapters = total_flops(&step_gemms(&StepDims {
            rank: 8,
            ..d.clone()
        })) / 1e9;
        assert!(
            with_adapters > g && with_adapters < g * 1.05,
            "{with_adapters}"
        );
        // Rank-8 adapters on one 384 → 384 layer per step (layers 1-5 of them, so with input
        // gradients): term by term 6 products of 2 · 2048 · 384 · 8 FLOP each; merged 4 of
        // them plus the merged weight 2 · 384 · 8 · 384.
        let one = |merged_adapters| {
            let d = StepDims {
                rank: 8,
                merged_adapters,
                layers: 1,
                ..d.clone()
            };
            total_flops(&step_gemms(&d)) - total_flops(&step_gemms(&StepDims { rank: 0, ..d }))
        };
        let product = 2.0 * 2048.0 * 384.0 * 8.0;
        // One layer: layer 0's q, k, v (5 products each), the attention output (6), and the
        // feed-forward pair, whose products are 1 or 4 times a square one's (x Aᵀ, · Bᵀ, dA,
        // dB, g B, (g B) A: 1+4+1+4+4+1 and 4+1+4+1+1+4).
        let plain = (3.0 * 5.0 + 6.0 + 15.0 + 15.0) * product;
        assert!(
            (one(false) - plain).abs() < 1.0,
            "{} vs {plain}",
            one(false)
        );
        // Merged: the attention output's 4 products (x Aᵀ, g B, dA, dB), the feed-forward
        // pair's 1+4+1+4 each, and the merged weights (1 + 4 + 4 square ones).
        let weight = 2.0 * 384.0 * 8.0 * 384.0;
        let merged = (3.0 * 5.0 + 4.0 + 10.0 + 10.0) * product + 9.0 * weight;
        assert!(
            (one(true) - merged).abs() < 1.0,
            "{} vs {merged}",
            one(true)
        );
        // Length groups: attention's work is the sum over groups.
        let grouped = StepDims {
            attention: vec![(12, 18), (20, 40)],
            ..d.clone()
        };
        let attention = |d: &StepDims| {
            total_flops(&step_gemms(d))
                - total_flops(&step_gemms(&StepDims {
                    attention: vec![],
                    ..d.clone()
                }))
        };
        let per_layer = |n: f64, len: f64| 3.0 * 2.0 * 2.0 * n * 12.0 * len * len * 32.0;
        let want = 6.0 * (per_layer(12.0, 18.0) + per_layer(20.0, 40.0));
        assert!((attention(&grouped) - want).abs() < 1.0);
    }
}
