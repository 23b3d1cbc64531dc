//! Inverted dropout whose masks are drawn in parallel on the CPU.
//!
//! LibTorch draws CPU dropout masks with one Mersenne Twister, serially (`bernoulli_`; its
//! parallel MKL path is taken on Intel processors only). On two cores that made the masks 14% of
//! the main thread's time in a LoRA training step, with the second core idle meanwhile
//! (docs/performance.md). Here each element's keep/drop decision is a hash of a per-call key and
//! the element's index (SplitMix64's output function, a counter-based generator), so the mask is
//! the same whichever thread fills which part, and the threads split it evenly.
//!
//! The per-call key is drawn from LibTorch's generator, so `tch::manual_seed` fixes every mask
//! of a step as before: the same seed gives the same run. CUDA tensors keep LibTorch's own
//! dropout (its generator is already parallel).

use tch::{Device, Kind, Tensor};

/// Elements below which one thread fills the mask (a thread start costs more than the work).
const PARALLEL_MIN_ELEMENTS: usize = 1 << 16;

/// `x ⊙ m / (1 − p)` with `m` Bernoulli(1 − p) per element when `train`, else `x` itself.
pub fn dropout(x: &Tensor, p: f64, train: bool) -> Tensor {
    if !train || p <= 0.0 {
        return x.shallow_clone();
    }
    if p >= 1.0 {
        return x.zeros_like();
    }
    if x.device() != Device::Cpu || !matches!(x.kind(), Kind::Float | Kind::BFloat16) {
        return x.dropout(p, true);
    }
    let mask = keep_mask(&x.size(), p, draw_key());
    if x.kind() == Kind::Float {
        x * mask
    } else {
        x * mask.to_kind(x.kind())
    }
}

/// [`dropout`] as a method, for chains: `x.with_dropout(p, train)`.
pub trait WithDropout {
    /// [`dropout`] of `self`.
    fn with_dropout(&self, p: f64, train: bool) -> Tensor;
}

impl WithDropout for Tensor {
    fn with_dropout(&self, p: f64, train: bool) -> Tensor {
        dropout(self, p, train)
    }
}

/// A key for one mask, from LibTorch's CPU generator (so `tch::manual_seed` decides it).
fn draw_key() -> u64 {
    let t = Tensor::randint(i64::MAX, [2], (Kind::Int64, Device::Cpu));
    let hi = t.int64_value(&[0]) as u64;
    let lo = t.int64_value(&[1]) as u64;
    (hi << 32) ^ lo
}

/// A float32 CPU tensor of `size` holding `1 / (1 − p)` where an element is kept (probability
/// `1 − p`) and `0` where it is dropped; element `i`'s decision depends only on `key` and `i`.
pub fn keep_mask(size: &[i64], p: f64, key: u64) -> Tensor {
    let mask = Tensor::empty(size, (Kind::Float, Device::Cpu));
    let n = mask.numel();
    if n == 0 {
        return mask;
    }
    let threshold = drop_threshold(p);
    let scale = (1.0 / (1.0 - p)) as f32;
    let threads = (tch::get_num_threads().max(1) as usize).min(n / PARALLEL_MIN_ELEMENTS + 1);
    // Chunks of an even length, so each 64-bit hash's two halves stay in one chunk. The
    // threads are LibTorch's own (`omp`): threads started here would compete with its
    // spinning ones for the cores.
    let base = mask.data_ptr() as usize;
    crate::omp::for_each_thread(threads, &|index, team| {
        let chunk = n.div_ceil(team).next_multiple_of(2);
        let start = (index * chunk).min(n);
        let end = (start + chunk).min(n);
        // SAFETY: `mask` was just allocated: a contiguous float32 CPU buffer of exactly `n`
        // elements that nothing else refers to until it is returned, alive until
        // `for_each_thread` has joined every member; the members' ranges `start..end` are
        // disjoint. Filling it in place spares a zeroed staging vector and a copy per call.
        let part =
            unsafe { std::slice::from_raw_parts_mut((base as *mut f32).add(start), end - start) };
        fill_mask(part, start, key, threshold, scale);
    });
    mask
}

/// The 32-bit value at or above which an element is kept: `round(p · 2³²)`.
fn drop_threshold(p: f64) -> u64 {
    (p * 4_294_967_296.0).round() as u64
}

/// Fills `out`, whose first element is element `start` of the mask (`start` even). Each 64-bit
/// hash decides two elements, by its low and its high 32 bits. Where the CPU has AVX-512
/// (64-bit multiplies in vector registers), a copy of the same code compiled for it writes the
/// same values; with the blocking it took a `[767, 384]` mask from 216 to 42-45 µs
/// (docs/performance.md).
fn fill_mask(out: &mut [f32], start: usize, key: u64, threshold: u64, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512dq")
    {
        // SAFETY: the features the function is compiled for were just detected.
        return unsafe { fill_mask_avx512(out, start, key, threshold, scale) };
    }
    fill_mask_portable(out, start, key, threshold, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
fn fill_mask_avx512(out: &mut [f32], start: usize, key: u64, threshold: u64, scale: f32) {
    fill_mask_portable(out, start, key, threshold, scale)
}

/// [`fill_mask`]'s body, written so that it vectorises: eight pairs per round, hashes first,
/// then branch-free decisions.
#[inline(always)]
fn fill_mask_portable(out: &mut [f32], start: usize, key: u64, threshold: u64, scale: f32) {
    let decide = |bits: u64| if bits >= threshold { scale } else { 0.0 };
    const PAIRS: usize = 8;
    let mut pair_index = (start / 2) as u64;
    let mut blocks = out.chunks_exact_mut(2 * PAIRS);
    for block in &mut blocks {
        let mut hashes = [0u64; PAIRS];
        for (k, h) in hashes.iter_mut().enumerate() {
            *h = mix(key, pair_index + k as u64);
        }
        for (pair, h) in block.chunks_exact_mut(2).zip(hashes) {
            pair[0] = decide(h & 0xffff_ffff);
            pair[1] = decide(h >> 32);
        }
        pair_index += PAIRS as u64;
    }
    let mut pairs = blocks.into_remainder().chunks_exact_mut(2);
    for pair in &mut pairs {
        let h = mix(key, pair_index);
        pair[0] = decide(h & 0xffff_ffff);
        pair[1] = decide(h >> 32);
        pair_index += 1;
    }
    if let [last] = pairs.into_remainder() {
        *last = decide(mix(key, pair_index) & 0xffff_ffff);
    }
}

/// SplitMix64's output for counter `i` of the stream `key` (Steele, Lea and Flood 2014).
#[inline(always)]
fn mix(key: u64, i: u64) -> u64 {
    let mut z = key.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.reshape([-1])).unwrap()
    }

    /// The kept fraction is `1 − p` within four standard deviations, kept elements hold
    /// `1 / (1 − p)`, and a mask filled by several threads equals the one-thread mask.
    /// Both builds of the blocked loop write the mask's definition: element `start + j` is
    /// decided by half `(start + j) % 2` of `mix(key, (start + j) / 2)`; checked through the
    /// blocks and both remainders.
    #[test]
    fn blocked_loops_write_the_definition() {
        let threshold = drop_threshold(0.3);
        for (len, start) in [(1usize, 0usize), (17, 2), (33, 40), (1000, 0), (1001, 7770)] {
            let expected: Vec<f32> = (start..start + len)
                .map(|e| {
                    let h = mix(77, (e / 2) as u64);
                    let bits = if e % 2 == 0 { h & 0xffff_ffff } else { h >> 32 };
                    if bits >= threshold { 2.0 } else { 0.0 }
                })
                .collect();
            let (mut a, mut b) = (vec![9f32; len], vec![9f32; len]);
            fill_mask(&mut a, start, 77, threshold, 2.0);
            fill_mask_portable(&mut b, start, 77, threshold, 2.0);
            assert_eq!(a, expected, "len {len} start {start}");
            assert_eq!(b, expected, "portable: len {len} start {start}");
        }
    }

    #[test]
    fn mask_has_the_rate_and_scale_and_ignores_threads() {
        let n = 300_001usize;
        for p in [0.1, 0.5, 0.9] {
            let v = values(&keep_mask(&[n as i64], p, 42));
            let kept = v.iter().filter(|&&x| x != 0.0).count() as f64;
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            assert!(
                (kept - n as f64 * (1.0 - p)).abs() < 4.0 * sd,
                "p {p}: kept {kept}"
            );
            let scale = (1.0 / (1.0 - p)) as f32;
            assert!(v.iter().all(|&x| x == 0.0 || x == scale));
            let mut serial = vec![0f32; n];
            fill_mask(&mut serial, 0, 42, drop_threshold(p), scale);
            assert_eq!(v, serial, "p {p}: threads changed the mask");
        }
    }

    /// Neighbouring elements (the two halves of one hash, and consecutive hashes) are
    /// uncorrelated: both kept as often as independence predicts.
    #[test]
    fn neighbours_are_independent() {
        let n = 400_000usize;
        let p = 0.5;
        let v = values(&keep_mask(&[n as i64], p, 7));
        for lag in [1usize, 2, 3] {
            let both = (0..n - lag)
                .filter(|&i| v[i] != 0.0 && v[i + lag] != 0.0)
                .count() as f64;
            let expected = (n - lag) as f64 * 0.25;
            let sd = ((n - lag) as f64 * 0.25 * 0.75).sqrt();
            assert!((both - expected).abs() < 4.0 * sd, "lag {lag}: {both}");
        }
    }

    /// Other keys give other masks; `manual_seed` fixes the drawn key, so the same seed gives
    /// the same dropout; evaluation and `p = 0` leave the input alone.
    #[test]
    fn seeded_and_switchable() {
        let a = values(&keep_mask(&[1000], 0.3, 1));
        let b = values(&keep_mask(&[1000], 0.3, 2));
        assert_ne!(a, b);
        let x = Tensor::ones([64, 33], (Kind::Float, Device::Cpu));
        tch::manual_seed(5);
        let first = dropout(&x, 0.2, true);
        tch::manual_seed(5);
        let second = dropout(&x, 0.2, true);
        assert!(first.equal(&second));
        assert!(!first.equal(&dropout(&x, 0.2, true)));
        assert!(dropout(&x, 0.2, false).equal(&x));
        assert!(dropout(&x, 0.0, true).equal(&x));
        assert_eq!(
            dropout(&x, 1.0, true)
                .abs()
                .sum(Kind::Float)
                .double_value(&[]),
            0.0
        );
    }

    /// The gradient is the mask: `∂(Σ dropout(x) ⊙ g)/∂x = g ⊙ m / (1 − p)`.
    #[test]
    fn gradient_is_the_mask() {
        let x = Tensor::randn([50, 40], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let g = Tensor::randn([50, 40], (Kind::Float, Device::Cpu));
        let y = dropout(&x, 0.25, true);
        (y.shallow_clone() * &g).sum(Kind::Float).backward();
        // Where x is kept, y = x / 0.75, so the gradient is g / 0.75 there and 0 elsewhere.
        let kept = y.detach().ne(0.0).to_kind(Kind::Float);
        let expected = &g * &kept / 0.75;
        let diff = (x.grad() - expected).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{diff}");
    }
}
