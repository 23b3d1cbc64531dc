//! Padding-free BERT: per-token work on the real tokens only, attention on groups of sequences
//! of similar length.
//!
//! A padded batch `[batch, len]` of short sentences is mostly padding (the step benchmark's
//! 32 × 64 batch holds 767 real tokens of 2,048). [`TokenPacking`] packs the real tokens as
//! `[tokens, features]` for every per-token layer, and runs attention on
//! [`attention_groups`]: the sequences sorted by length and cut into groups, each padded only
//! to its own longest member. Attention's cost grows with `n · L²` per group, so a batch whose
//! lengths run from 10 to 64 spends a fraction of the padded `batch · 64²`.
//!
//! BERT's attention has no positions inside it (they were added to the embeddings), so a
//! sequence's real tokens may sit in any slots of its group's row: real tokens get the values
//! of the padded computation up to summation order. The slots past a sequence's length hold
//! copies of its first token, masked out of every softmax; their outputs are dropped, and the
//! gradient they send back is exactly zero (their attention probabilities are exactly zero).

use tch::{Device, Kind, Tensor};

/// Fixed cost of one more attention group (its dozen operator calls forward and backward) in
/// the units of [`attention_groups`]' cost model, `n · L²` score elements per head: about one
/// 64-token sequence's worth, measured as the per-call overhead of LibTorch's CPU operators
/// against the time per score element on the 2-core machine of docs/performance.md.
pub const GROUP_COST: i64 = 4096;

/// Cuts sequences of the given lengths into attention groups: indices of the sequences of each
/// group, shortest group first, each in order of length. Sequences of length 0 belong to none.
///
/// Minimises `Σ_groups (n_g · L_g² + GROUP_COST)`, with `n_g` the group's sequences and `L_g`
/// its longest, over groups of consecutive sequences in length order (an optimal grouping of
/// this cost never interleaves lengths), by dynamic programming over the sorted lengths.
pub fn attention_groups(lengths: &[i64]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).filter(|&i| lengths[i] > 0).collect();
    order.sort_by_key(|&i| (lengths[i], i));
    let n = order.len();
    // best[i]: the cheapest grouping of the first i sorted sequences; cut[i]: its last group's start.
    let mut best = vec![0i64; n + 1];
    let mut cut = vec![0usize; n + 1];
    for i in 1..=n {
        let longest = lengths[order[i - 1]];
        let (start, cost) = (0..i)
            .map(|j| {
                let members = (i - j) as i64;
                (j, best[j] + members * longest * longest + GROUP_COST)
            })
            .min_by_key(|&(j, c)| (c, std::cmp::Reverse(j)))
            .unwrap_or((0, 0));
        best[i] = cost;
        cut[i] = start;
    }
    let mut groups = Vec::new();
    let mut end = n;
    while end > 0 {
        let start = cut[end];
        groups.push(order[start..end].to_vec());
        end = start;
    }
    groups.reverse();
    groups
}

/// One attention group: `sequences` rows padded to `len`.
#[derive(Debug)]
struct Group {
    sequences: i64,
    len: i64,
    /// Additive mask `[sequences, 1, 1, len]`: 0 at real slots, `f32::MIN` past each length.
    mask: Tensor,
}

/// Where the real tokens of a padded `[batch, len]` batch are, packed in the order of their
/// attention groups, and how to lay them out for attention and back.
#[derive(Debug)]
pub struct TokenPacking {
    /// Flat positions (`b · len + t`) of the real tokens, in packed order.
    positions: Tensor,
    /// For every slot of every group (groups one after another, each `[sequences · len]`),
    /// the packed token it holds.
    slot_tokens: Tensor,
    /// For every packed token, its slot in that concatenation.
    token_slots: Tensor,
    groups: Vec<Group>,
    tokens: i64,
    /// No padding at all: one group holding every sequence in order, so every index above is
    /// the identity and packing is a reshape (no copies).
    identity: bool,
}

impl TokenPacking {
    /// The packing of a batch with `attention_mask` (`[batch, len]`, 1 for real tokens).
    pub fn new(attention_mask: &Tensor) -> Self {
        let (batch, len) = (attention_mask.size()[0], attention_mask.size()[1]);
        let device = attention_mask.device();
        let flat: Vec<i64> = Vec::try_from(
            attention_mask
                .to_device(Device::Cpu)
                .to_kind(Kind::Int64)
                .reshape([-1]),
        )
        .unwrap_or_default();
        let real: Vec<Vec<i64>> = (0..batch as usize)
            .map(|b| {
                (0..len as usize)
                    .filter(|&t| flat.get(b * len as usize + t).is_some_and(|&m| m != 0))
                    .map(|t| (b * len as usize + t) as i64)
                    .collect()
            })
            .collect();
        let lengths: Vec<i64> = real.iter().map(|r| r.len() as i64).collect();
        let mut positions = Vec::new();
        let mut slot_tokens = Vec::new();
        let mut token_slots = Vec::new();
        let mut groups = Vec::new();
        for members in attention_groups(&lengths) {
            let group_len = members.iter().map(|&b| lengths[b]).max().unwrap_or(0);
            let mut mask = Vec::with_capacity(members.len() * group_len as usize);
            for &b in &members {
                let first = positions.len() as i64;
                for t in 0..group_len {
                    let real_slot = t < lengths[b];
                    if real_slot {
                        token_slots.push(slot_tokens.len() as i64);
                        slot_tokens.push(first + t);
                    } else {
                        slot_tokens.push(first);
                    }
                    mask.push(if real_slot { 0.0 } else { f32::MIN });
                }
                positions.extend_from_slice(&real[b]);
            }
            groups.push(Group {
                sequences: members.len() as i64,
                len: group_len,
                mask: Tensor::from_slice(&mask)
                    .view([members.len() as i64, 1, 1, group_len])
                    .to_device(device),
            });
        }
        let index = |v: &[i64]| Tensor::from_slice(v).to_device(device);
        // Equal lengths make a single group in sequence order (see attention_groups).
        let identity = positions.len() as i64 == batch * len && groups.len() == 1;
        Self {
            identity,
            tokens: positions.len() as i64,
            positions: index(&positions),
            slot_tokens: index(&slot_tokens),
            token_slots: index(&token_slots),
            groups,
        }
    }

    /// `[batch, len, ...features]` → `[tokens, features]` (real tokens, packed order).
    pub fn pack(&self, t: &Tensor) -> Tensor {
        let size = t.size();
        let features: i64 = size[2..].iter().product();
        let flat = t.reshape([size[0] * size[1], features]);
        if self.identity {
            return flat;
        }
        flat.index_select(0, &self.positions)
    }

    /// `[tokens, features]` → `[batch, len, features]`, zeros at padding.
    pub fn unpack(&self, t: &Tensor, batch: i64, len: i64) -> Tensor {
        let features = t.size()[1];
        if self.identity {
            return t.view([batch, len, features]);
        }
        t.new_zeros([batch * len, features], (t.kind(), t.device()))
            .index_copy(0, &self.positions, t)
            .view([batch, len, features])
    }

    /// Packed tokens in the packing's order.
    pub fn tokens(&self) -> i64 {
        self.tokens
    }

    /// `(sequences, len)` of each attention group.
    pub fn group_shapes(&self) -> Vec<(i64, i64)> {
        self.groups.iter().map(|g| (g.sequences, g.len)).collect()
    }

    /// Runs `attend(q, k, v, mask)` on every group, with `q`, `k`, `v` packed
    /// `[tokens, heads · head_dim]` laid out as `[sequences, heads, len, head_dim]` and `mask`
    /// the group's additive mask `[sequences, 1, 1, len]`; returns the outputs packed again.
    pub fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: i64,
        attend: impl Fn(&Tensor, &Tensor, &Tensor, &Tensor) -> Tensor,
    ) -> Tensor {
        let hidden = q.size()[1];
        let head_dim = hidden / heads;
        let sizes: Vec<i64> = self.groups.iter().map(|g| g.sequences * g.len).collect();
        // One gather per tensor, split into groups (split's backward is one concatenation).
        let slotted = |t: &Tensor| {
            if self.identity {
                return vec![t.shallow_clone()];
            }
            t.index_select(0, &self.slot_tokens)
                .split_with_sizes(&sizes, 0)
        };
        let (qs, ks, vs) = (slotted(q), slotted(k), slotted(v));
        let outputs: Vec<Tensor> = self
            .groups
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let heads_first = |t: &Tensor| {
                    t.view([g.sequences, g.len, heads, head_dim])
                        .transpose(1, 2)
                };
                attend(
                    &heads_first(&qs[i]),
                    &heads_first(&ks[i]),
                    &heads_first(&vs[i]),
                    &g.mask,
                )
                .transpose(1, 2)
                .reshape([g.sequences * g.len, hidden])
            })
            .collect();
        if self.identity {
            return outputs.into_iter().next().unwrap_or_else(|| q.zeros_like());
        }
        Tensor::cat(&outputs, 0).index_select(0, &self.token_slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(lengths: &[i64], groups: &[Vec<usize>]) -> i64 {
        groups
            .iter()
            .map(|g| {
                let l = g.iter().map(|&b| lengths[b]).max().unwrap_or(0);
                g.len() as i64 * l * l + GROUP_COST
            })
            .sum()
    }

    #[test]
    fn groups_cover_every_nonempty_sequence_once_and_beat_any_split_of_the_sorted_order() {
        let lengths = [12, 64, 9, 0, 33, 30, 11, 64, 20, 18, 45, 10];
        let groups = attention_groups(&lengths);
        let mut seen: Vec<usize> = groups.concat();
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11]);
        let best = cost(&lengths, &groups);
        // Every grouping of the sorted order into consecutive runs (2^(n-1) of them).
        let mut sorted: Vec<usize> = seen.clone();
        sorted.sort_by_key(|&i| (lengths[i], i));
        let n = sorted.len();
        for cuts in 0u32..(1 << (n - 1)) {
            let mut gs = vec![vec![sorted[0]]];
            for (i, &s) in sorted.iter().enumerate().skip(1) {
                if cuts & (1 << (i - 1)) != 0 {
                    gs.push(Vec::new());
                }
                gs.last_mut().unwrap().push(s);
            }
            assert!(
                best <= cost(&lengths, &gs),
                "{gs:?} is cheaper than {groups:?}"
            );
        }
        // Equal lengths make one group; no sequences make none.
        assert_eq!(attention_groups(&[5, 5, 5]).len(), 1);
        assert!(attention_groups(&[0, 0]).is_empty());
    }

    #[test]
    fn packing_round_trips_and_groups_hold_each_sequence_once() {
        let mask = Tensor::from_slice(&[1i64, 1, 1, 0, 1, 0, 0, 0, 1, 1, 1, 1]).view([3, 4]);
        let p = TokenPacking::new(&mask);
        assert_eq!(p.tokens(), 8);
        let x = Tensor::arange(12 * 2, (Kind::Float, Device::Cpu)).view([3, 4, 2]) + 1.0;
        let packed = p.pack(&x);
        let back = p.unpack(&packed, 3, 4);
        let want = &x * mask.unsqueeze(-1).to_kind(Kind::Float);
        assert_eq!(back, want);
        let real_slots: i64 = p.group_shapes().iter().map(|(n, l)| n * l).sum();
        assert!(real_slots >= 8);
        // Identity attention (returns v) gives back the packed tokens.
        let out = p.attention(&packed, &packed, &packed, 1, |_, _, v, _| v.shallow_clone());
        assert_eq!(out, packed);

        // Without padding: one group, packing is a reshape, attention sees the batch as is.
        let full = TokenPacking::new(&Tensor::ones([3, 4], (Kind::Int64, Device::Cpu)));
        assert!(full.identity);
        assert_eq!(full.group_shapes(), vec![(3, 4)]);
        let packed = full.pack(&x);
        assert_eq!(packed, x.view([12, 2]));
        assert_eq!(full.unpack(&packed, 3, 4), x);
        let out = full.attention(&packed, &packed, &packed, 1, |_, _, v, _| v * 2.0);
        assert_eq!(out, &packed * 2.0);
    }
}
