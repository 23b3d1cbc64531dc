//! The adapter-gradient products of [`super::tape`] as one fused CPU kernel.
//!
//! For a tapped layer with input `x` (`[tokens, in]`), output gradient `g` (`[tokens, out]`)
//! and update factors `down` (`[r, in]`) and `up` (`[out, r]`):
//!
//! ```text
//! right = x downᵀ        [tokens, r]      grad_up   = gᵀ right   [out, r]
//! left  = g up           [tokens, r]      grad_down = leftᵀ x    [r, in]
//! ```
//!
//! As four library GEMMs these are rank-`r` products that MKL runs at a fraction of its rate,
//! each reading `x` or `g` again and each a separate operator call with its own output. Here
//! the tokens are taken eight at a time: their rows of `right` and `left` are formed in
//! registers and immediately accumulated into `grad_up` and `grad_down`, so `x` and `g` are
//! read from memory once and every inner loop is eight fused multiply-adds on 8-wide vectors.
//! The rank is handled in chunks of eight columns (zero-padded). The kernel is compiled twice,
//! for AVX2 with FMA (chosen at run time where the CPU has them) and portably. On one core of
//! the benchmark machine it runs at 63-64 GFLOP/s against 58-60 for LibTorch's four products
//! (`cargo run --release --example kernel_time`); in the training step, where it also saves
//! the operator calls, it took about 3 ms off a ~140 ms step (docs/performance.md).

/// Tokens per block: the rows of `right` and `left` kept in registers.
const BLOCK: usize = 8;
/// Columns of the rank per chunk: one 8-wide vector.
const LANES: usize = 8;

type Lanes = [f32; LANES];

/// `(grad_down, grad_up)` of the module docs, row-major (`[r, in]` and `[out, r]`), from
/// row-major `x` (`[tokens, in]`), `g` (`[tokens, out]`), `down` (`[r, in]`), `up`
/// (`[out, r]`). Sums run in a fixed order, so the result does not depend on the thread that
/// computes it.
///
/// # Panics
/// If a slice's length does not match the sizes.
pub fn factor_gradients(
    x: &[f32],
    g: &[f32],
    down: &[f32],
    up: &[f32],
    dims: (usize, usize, usize, usize),
) -> (Vec<f32>, Vec<f32>) {
    factor_gradients_with(has_fma(), x, g, down, up, dims)
}

/// Whether the CPU has AVX2 with FMA (the fast build).
fn has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`factor_gradients`] on the AVX2/FMA build (`fma`, only where [`has_fma`]) or the portable one.
fn factor_gradients_with(
    fma: bool,
    x: &[f32],
    g: &[f32],
    down: &[f32],
    up: &[f32],
    (tokens, inp, out, r): (usize, usize, usize, usize),
) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(x.len(), tokens * inp, "x is [tokens, in]");
    assert_eq!(g.len(), tokens * out, "g is [tokens, out]");
    assert_eq!(down.len(), r * inp, "down is [r, in]");
    assert_eq!(up.len(), out * r, "up is [out, r]");
    let chunks = r.div_ceil(LANES);
    // down as [chunk][in][lane] and up as [chunk][out][lane], zero past r.
    let mut down_t = vec![[0f32; LANES]; chunks * inp];
    for j in 0..r {
        for i in 0..inp {
            down_t[(j / LANES) * inp + i][j % LANES] = down[j * inp + i];
        }
    }
    let mut up_c = vec![[0f32; LANES]; chunks * out];
    for o in 0..out {
        for j in 0..r {
            up_c[(j / LANES) * out + o][j % LANES] = up[o * r + j];
        }
    }
    let mut grad_down_t = vec![[0f32; LANES]; chunks * inp];
    let mut grad_up_c = vec![[0f32; LANES]; chunks * out];
    let mut kernel = Kernel {
        fma,
        inp,
        out,
        down_t: &down_t,
        up_c: &up_c,
        grad_down_t: &mut grad_down_t,
        grad_up_c: &mut grad_up_c,
    };
    let full = tokens / BLOCK * BLOCK;
    for start in (0..full).step_by(BLOCK) {
        kernel.block(
            &x[start * inp..(start + BLOCK) * inp],
            &g[start * out..(start + BLOCK) * out],
        );
    }
    if full < tokens {
        // The last tokens, zero-padded to a block (zero rows add nothing).
        let mut xb = vec![0f32; BLOCK * inp];
        let mut gb = vec![0f32; BLOCK * out];
        xb[..(tokens - full) * inp].copy_from_slice(&x[full * inp..]);
        gb[..(tokens - full) * out].copy_from_slice(&g[full * out..]);
        kernel.block(&xb, &gb);
    }
    let mut grad_down = vec![0f32; r * inp];
    for j in 0..r {
        for i in 0..inp {
            grad_down[j * inp + i] = grad_down_t[(j / LANES) * inp + i][j % LANES];
        }
    }
    let mut grad_up = vec![0f32; out * r];
    for o in 0..out {
        for j in 0..r {
            grad_up[o * r + j] = grad_up_c[(j / LANES) * out + o][j % LANES];
        }
    }
    (grad_down, grad_up)
}

/// The factors, rearranged, and the accumulators.
struct Kernel<'a> {
    /// Run the AVX2/FMA build (checked by the caller: [`has_fma`]).
    fma: bool,
    inp: usize,
    out: usize,
    down_t: &'a [Lanes],
    up_c: &'a [Lanes],
    grad_down_t: &'a mut [Lanes],
    grad_up_c: &'a mut [Lanes],
}

impl Kernel<'_> {
    /// Accumulates one block of [`BLOCK`] tokens (`xb`: `[BLOCK, in]`, `gb`: `[BLOCK, out]`).
    fn block(&mut self, xb: &[f32], gb: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        if self.fma {
            // SAFETY: `fma` is set only where `has_fma` detected the features the function
            // is compiled for.
            return unsafe { self.block_avx2(xb, gb) };
        }
        self.block_body::<false>(xb, gb)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn block_avx2(&mut self, xb: &[f32], gb: &[f32]) {
        self.block_body::<true>(xb, gb)
    }

    /// For each chunk of the rank: `right` and `left` rows of the block, then their
    /// contributions `Σ_k g[k, o] right[k]` and `Σ_k x[k, i] left[k]` to the gradients.
    /// `FMA`: fused multiply-adds (only where the CPU has them: otherwise `mul_add` is a
    /// library call).
    #[inline(always)]
    fn block_body<const FMA: bool>(&mut self, xb: &[f32], gb: &[f32]) {
        let (inp, out) = (self.inp, self.out);
        let chunks = self.down_t.len() / inp.max(1);
        for c in 0..chunks {
            let down_t = &self.down_t[c * inp..(c + 1) * inp];
            let up_c = &self.up_c[c * out..(c + 1) * out];
            let right = rows_times::<FMA>(xb, inp, down_t);
            let left = rows_times::<FMA>(gb, out, up_c);
            accumulate::<FMA>(&mut self.grad_up_c[c * out..(c + 1) * out], gb, out, &right);
            accumulate::<FMA>(
                &mut self.grad_down_t[c * inp..(c + 1) * inp],
                xb,
                inp,
                &left,
            );
        }
    }
}

#[inline(always)]
fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// The block's rows of a row-major `[BLOCK, n]` matrix.
#[inline(always)]
fn split_rows(rows: &[f32], n: usize) -> [&[f32]; BLOCK] {
    std::array::from_fn(|k| &rows[k * n..(k + 1) * n])
}

/// `acc[k] = Σ_i rows[k, i] · m[i]` for the block's rows (`rows`: `[BLOCK, n]`, `m`: `[n]`
/// vectors).
#[inline(always)]
fn rows_times<const FMA: bool>(rows: &[f32], n: usize, m: &[Lanes]) -> [Lanes; BLOCK] {
    let rows = split_rows(rows, n);
    let mut acc = [[0f32; LANES]; BLOCK];
    for (i, mi) in m[..n].iter().enumerate() {
        for k in 0..BLOCK {
            let a = rows[k][i];
            for l in 0..LANES {
                acc[k][l] = fmadd::<FMA>(a, mi[l], acc[k][l]);
            }
        }
    }
    acc
}

/// `target[i] += Σ_k rows[k, i] · v[k]` (`rows`: `[BLOCK, n]`), summed over `k` in order.
#[inline(always)]
fn accumulate<const FMA: bool>(target: &mut [Lanes], rows: &[f32], n: usize, v: &[Lanes; BLOCK]) {
    let rows = split_rows(rows, n);
    let v = *v;
    for (i, t) in target[..n].iter_mut().enumerate() {
        let mut acc = *t;
        for k in 0..BLOCK {
            let a = rows[k][i];
            for l in 0..LANES {
                acc[l] = fmadd::<FMA>(a, v[k][l], acc[l]);
            }
        }
        *t = acc;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The four products of the module docs in f64, one element at a time.
    fn reference(
        x: &[f32],
        g: &[f32],
        down: &[f32],
        up: &[f32],
        (t, inp, out, r): (usize, usize, usize, usize),
    ) -> (Vec<f64>, Vec<f64>) {
        let right = |k: usize, j: usize| -> f64 {
            (0..inp)
                .map(|i| x[k * inp + i] as f64 * down[j * inp + i] as f64)
                .sum()
        };
        let left = |k: usize, j: usize| -> f64 {
            (0..out)
                .map(|o| g[k * out + o] as f64 * up[o * r + j] as f64)
                .sum()
        };
        let mut gd = vec![0f64; r * inp];
        let mut gu = vec![0f64; out * r];
        for k in 0..t {
            for j in 0..r {
                let (rk, lk) = (right(k, j), left(k, j));
                for i in 0..inp {
                    gd[j * inp + i] += lk * x[k * inp + i] as f64;
                }
                for o in 0..out {
                    gu[o * r + j] += g[k * out + o] as f64 * rk;
                }
            }
        }
        (gd, gu)
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        (0..n as u64)
            .map(|i| {
                let h = (i ^ seed)
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    .rotate_left(29);
                (h % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Any sizes, tails included (tokens not a multiple of 8, rank not a multiple of 8):
        /// the kernel's gradients are the products', to float32 rounding.
        #[test]
        fn kernel_computes_the_four_products(
            t in 1usize..40, inp in 1usize..24, out in 1usize..24, r in 1usize..20, seed: u64
        ) {
            let dims = (t, inp, out, r);
            let (x, g) = (values(t * inp, seed), values(t * out, seed ^ 1));
            let (down, up) = (values(r * inp, seed ^ 2), values(out * r, seed ^ 3));
            let (gd, gu) = factor_gradients(&x, &g, &down, &up, dims);
            let (rd, ru) = reference(&x, &g, &down, &up, dims);
            let scale = (t * inp.max(out)) as f64;
            for (a, b) in gd.iter().zip(&rd).chain(gu.iter().zip(&ru)) {
                prop_assert!((*a as f64 - b).abs() <= 1e-5 * scale, "{a} vs {b}");
            }
        }
    }

    /// The portable build (no fused multiply-adds) computes the products too, and agrees
    /// with the fast build to float32 rounding.
    #[test]
    fn portable_build_agrees() {
        let dims = (21, 13, 17, 11);
        let (t, inp, out, r) = dims;
        let (x, g) = (values(t * inp, 4), values(t * out, 5));
        let (down, up) = (values(r * inp, 6), values(out * r, 7));
        let (pd, pu) = factor_gradients_with(false, &x, &g, &down, &up, dims);
        let (fd, fu) = factor_gradients(&x, &g, &down, &up, dims);
        let (rd, ru) = reference(&x, &g, &down, &up, dims);
        for ((p, f), b) in pd
            .iter()
            .chain(&pu)
            .zip(fd.iter().chain(&fu))
            .zip(rd.iter().chain(&ru))
        {
            assert!((*p as f64 - b).abs() < 1e-4, "portable {p} vs {b}");
            assert!((p - f).abs() < 1e-4, "portable {p} vs fast {f}");
        }
        assert!(pd.iter().any(|&v| v != 0.0) && pu.iter().any(|&v| v != 0.0));
    }
}
