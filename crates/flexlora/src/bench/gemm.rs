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
#[derive(Debug, Clone, Copy)]
pub struct StepDims {
    /// Batch size.
    pub batch: i64,
    /// Sequence length (every sequence padded to it).
    pub seq: i64,
    /// Tokens the per-token GEMMs (every linear layer) run on: `batch · seq` for a padded
    /// implementation (transformers), the real tokens only for flexlora, which packs them
    /// (see [`crate::models::BertModel::forward`]).
    pub tokens: i64,
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
}

/// The step's GEMMs (linear layers on `tokens` rows, attention at the padded shape): forward
/// of every frozen linear layer, their input gradients (not for
/// layer 0's query/key/value, whose input, the frozen embeddings, needs none), no weight
/// gradients (the weights are frozen); attention's `QKᵀ` and `AV` forward and both operands'
/// gradients; the adapters' two thin GEMMs forward, their weight gradients and their share of
/// the input gradient. The classifier and the elementwise work are left out.
pub fn step_gemms(d: &StepDims) -> Vec<GemmShape> {
    let m = d.tokens;
    let (h, f, l) = (d.hidden, d.intermediate, d.layers as u64);
    let square = 4 * l; // query, key, value, attention output
    let mut v = vec![
        // Forward.
        GemmShape {
            m,
            k: h,
            n: h,
            batch: 1,
            count: square,
        },
        GemmShape {
            m,
            k: h,
            n: f,
            batch: 1,
            count: l,
        },
        GemmShape {
            m,
            k: f,
            n: h,
            batch: 1,
            count: l,
        },
        // Input gradients: dX = dY W (the shapes swap k and n).
        GemmShape {
            m,
            k: h,
            n: h,
            batch: 1,
            count: square - 3,
        },
        GemmShape {
            m,
            k: f,
            n: h,
            batch: 1,
            count: l,
        },
        GemmShape {
            m,
            k: h,
            n: f,
            batch: 1,
            count: l,
        },
    ];
    let head_dim = h / d.heads.max(1);
    let bh = d.batch * d.heads;
    // Per (batch, head): QKᵀ [seq, d]×[d, seq] and AV [seq, seq]×[seq, d]; backward needs two
    // GEMMs of the same size for each.
    v.push(GemmShape {
        m: d.seq,
        k: head_dim,
        n: d.seq,
        batch: bh,
        count: 3 * l,
    });
    v.push(GemmShape {
        m: d.seq,
        k: d.seq,
        n: head_dim,
        batch: bh,
        count: 3 * l,
    });
    if d.rank > 0 {
        let r = d.rank;
        // Each adapted linear (in → out): x Aᵀ [m,in]×[in,r], then ·Bᵀ [m,r]×[r,out]; weight
        // gradients dA (r×in from [r,m]×[m,in]) and dB; input gradient through the adapter.
        for (inp, out, count) in [(h, h, square), (h, f, l), (f, h, l)] {
            v.push(GemmShape {
                m,
                k: inp,
                n: r,
                batch: 1,
                count,
            });
            v.push(GemmShape {
                m,
                k: r,
                n: out,
                batch: 1,
                count,
            });
            v.push(GemmShape {
                m: r,
                k: m,
                n: inp,
                batch: 1,
                count,
            });
            v.push(GemmShape {
                m: out,
                k: m,
                n: r,
                batch: 1,
                count,
            });
            v.push(GemmShape {
                m,
                k: out,
                n: r,
                batch: 1,
                count,
            });
            v.push(GemmShape {
                m,
                k: r,
                n: inp,
                batch: 1,
                count,
            });
        }
    }
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
            batch: 32,
            seq: 64,
            tokens: 32 * 64,
            hidden: 384,
            intermediate: 1536,
            layers: 6,
            heads: 12,
            rank: 0,
        };
        // Linear forward: 2 · 2048 · (4 · 384² + 2 · 384 · 1536) · 6 = 43.49 GFLOP; input
        // gradients the same less layer 0's q, k, v (3 · 2 · 2048 · 384²) = 41.67; attention
        // 3 · 2 · (2 · 64 · 32 · 64) · 32 · 12 · 6 = 3.62.
        let g = total_flops(&step_gemms(&d)) / 1e9;
        assert!((g - 88.785).abs() < 0.001, "{g}");
        let with_adapters = total_flops(&step_gemms(&StepDims { rank: 8, ..d })) / 1e9;
        assert!(
            with_adapters > g && with_adapters < g * 1.05,
            "{with_adapters}"
        );
    }
}
