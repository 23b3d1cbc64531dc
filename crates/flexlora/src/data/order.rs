//! Seeded orders: the split shuffle and the per-epoch order of training examples.
//!
//! Everything here runs on [`SplitMix64`], a 64-bit generator small enough to be written out in
//! full, so an order depends only on its seed: the same on every platform, compiler and crate
//! version (no `rand` version or `usize` width can change it).

/// Batches per length-sorted chunk in [`epoch_order`]'s bucketing.
pub const BUCKET_CHUNK_BATCHES: usize = 50;

/// SplitMix64 (Steele, Lea & Flood 2014; the generator of Java's `SplittableRandom` and the
/// usual seeder of xoshiro): the state advances by the golden-ratio constant
/// `γ = 0x9E37_79B9_7F4A_7C15` and each output is the state passed through a bijective mixer
/// `z ← (z ⊕ z≫30)·0xBF58_476D_1CE4_E5B9; z ← (z ⊕ z≫27)·0x94D0_49BB_1331_11EB; z ⊕ z≫31`
/// (wrapping arithmetic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose first output is `mix(seed + γ)`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound ≥ 1`): the high 64 bits of `next_u64() · bound`
    /// (Lemire's multiply-shift, without rejection: the bias is below `bound / 2⁶⁴`).
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// Shuffles `items` in place by Fisher–Yates (Durstenfeld's form): for `i` from
    /// `len − 1` down to 1, swap item `i` with item `below(i + 1)`.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// A seed for an independent stream `stream` of `seed` (an epoch, a worker, ...):
/// `SplitMix64::new(seed ⊕ SplitMix64::new(stream).next_u64()).next_u64()`.
pub fn derive_seed(seed: u64, stream: u64) -> u64 {
    SplitMix64::new(seed ^ SplitMix64::new(stream).next_u64()).next_u64()
}

/// `0..n` in a seeded random order: [`SplitMix64::new(seed)`](SplitMix64::new) drives a
/// Fisher–Yates shuffle of the identity ([`SplitMix64::shuffle`]). The split of a data set
/// with no split of its own takes its parts from this order.
pub fn shuffled_indices(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    SplitMix64::new(seed).shuffle(&mut order);
    order
}

/// The order of the `n` training examples in epoch `epoch` (0-based) of a run with seed `seed`.
///
/// Without bucketing it is `shuffled_indices(n, derive_seed(seed, epoch))`, so every epoch has
/// its own order and the same `(seed, epoch)` always gives the same one.
///
/// With `bucket_by = Some(lengths)` (`lengths[i]` = example `i`'s length, e.g. in tokens) the
/// order is bucketed so that batches pad little yet stay random:
/// 1. shuffle as above;
/// 2. cut the order into chunks of [`BUCKET_CHUNK_BATCHES`] · `batch_size` examples and sort
///    each chunk by length (a stable sort, so equal lengths keep their shuffled order);
/// 3. cut the result into batches of `batch_size`; shuffle the order of the full batches with
///    the same generator (continuing after step 1); a final short batch (when `batch_size`
///    does not divide `n`) stays last.
///
/// Cutting the returned order into consecutive pieces of `batch_size` therefore gives exactly
/// these batches. A `batch_size` of 0 counts as 1.
///
/// # Panics
/// When `lengths.len() != n` (a caller's bug, not bad data).
pub fn epoch_order(
    n: usize,
    seed: u64,
    epoch: u64,
    bucket_by: Option<&[usize]>,
    batch_size: usize,
) -> Vec<usize> {
    let mut rng = SplitMix64::new(derive_seed(seed, epoch));
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    let Some(lengths) = bucket_by else {
        return order;
    };
    assert_eq!(
        lengths.len(),
        n,
        "epoch_order: {} lengths for {n} examples",
        lengths.len()
    );
    let b = batch_size.max(1);
    for chunk in order.chunks_mut(b.saturating_mul(BUCKET_CHUNK_BATCHES)) {
        chunk.sort_by_key(|&i| lengths[i]);
    }
    let full = n / b;
    let mut batches: Vec<usize> = (0..full).collect();
    rng.shuffle(&mut batches);
    let mut out = Vec::with_capacity(n);
    for k in batches {
        out.extend_from_slice(&order[k * b..(k + 1) * b]);
    }
    out.extend_from_slice(&order[full * b..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_reference_outputs() {
        // The reference sequence for seed 1234567 (Vigna's splitmix64.c).
        let mut r = SplitMix64::new(1234567);
        let got: Vec<u64> = (0..5).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            [
                6457827717110365317,
                3203168211198807973,
                9817491932198370423,
                4593380528125082431,
                16408922859458223821
            ]
        );
    }

    #[test]
    fn shuffled_indices_is_a_fixed_permutation() {
        for n in [0, 1, 2, 7, 100] {
            let mut o = shuffled_indices(n, 3);
            assert_eq!(o, shuffled_indices(n, 3));
            o.sort_unstable();
            assert_eq!(o, (0..n).collect::<Vec<_>>());
        }
        assert_ne!(shuffled_indices(100, 0), shuffled_indices(100, 1));
        // Pinned so that a change of the algorithm cannot go unnoticed.
        assert_eq!(shuffled_indices(10, 0), PINNED_10_0);
    }

    // Computed independently (Python, same algorithm).
    const PINNED_10_0: [usize; 10] = [4, 9, 2, 5, 1, 7, 6, 0, 3, 8];

    #[test]
    fn epoch_seeds_differ_by_epoch_and_seed() {
        let a = derive_seed(0, 0);
        assert_ne!(a, derive_seed(0, 1));
        assert_ne!(a, derive_seed(1, 0));
        assert_eq!(
            epoch_order(50, 7, 2, None, 4),
            shuffled_indices(50, derive_seed(7, 2))
        );
    }

    #[test]
    fn bucketed_order_keeps_the_short_batch_last() {
        let lengths: Vec<usize> = (0..103).map(|i| (i * 37) % 61).collect();
        let order = epoch_order(103, 1, 0, Some(&lengths), 10);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..103).collect::<Vec<_>>());
        // One chunk (50 batches > 103 examples): every batch is a run of the sorted order, so
        // the 3-example tail holds the 3 longest.
        let mut by_length = lengths.clone();
        by_length.sort_unstable();
        let mut tail: Vec<usize> = order[100..].iter().map(|&i| lengths[i]).collect();
        tail.sort_unstable();
        assert_eq!(tail, by_length[100..]);
        // batch_size 0 counts as 1; no examples is fine.
        assert_eq!(epoch_order(5, 1, 0, Some(&[1; 5]), 0).len(), 5);
        assert!(epoch_order(0, 1, 0, Some(&[]), 8).is_empty());
    }

    #[test]
    fn below_stays_in_range() {
        let mut r = SplitMix64::new(9);
        for bound in 1..200u64 {
            assert!(r.below(bound) < bound);
        }
    }
}
