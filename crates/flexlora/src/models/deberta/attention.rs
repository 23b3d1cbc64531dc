//! Disentangled self-attention (DeBERTa §3.1): content-to-content scores plus the
//! content-to-position (`c2p`) and position-to-content (`p2c`) terms over a table of relative
//! position embeddings, with DeBERTa-v3's log-bucketed relative positions.

use super::DebertaV2Config;
use crate::adapter::AdaptedLinear;
use crate::dropout::WithDropout;
use tch::{Device, Kind, Tensor};

/// Relative positions `i − j` of query `i` to key `j` for a sequence of `len` tokens,
/// `[len, len]` int64; log-bucketed when `buckets > 0`.
pub fn relative_positions(len: i64, buckets: i64, max_position: i64, device: Device) -> Tensor {
    let ids = Tensor::arange(len, (Kind::Int64, device));
    let rel = ids.unsqueeze(1) - ids.unsqueeze(0);
    if buckets > 0 && max_position > 0 {
        log_buckets(&rel, buckets, max_position)
    } else {
        rel
    }
}

/// Maps relative positions to buckets: distances below `buckets / 2` keep their value, longer
/// ones are spread logarithmically up to `max_position`.
///
/// The arithmetic is float32 and in transformers' order (divide, log, divide by the log of
/// the range as a float32 scalar, scale, ceil): a bucket index that rounded differently
/// would select another embedding row, a difference far above any float tolerance.
fn log_buckets(rel: &Tensor, buckets: i64, max_position: i64) -> Tensor {
    let sign = rel.sign();
    let mid = buckets / 2;
    let near = rel.lt(mid).logical_and(&rel.gt(-mid));
    let abs = rel.abs().masked_fill(&near, mid - 1);
    let range = Tensor::from(((max_position - 1) as f64 / mid as f64) as f32).log();
    let log_pos = ((abs.to_kind(Kind::Float) / mid as f64).log() / range * (mid - 1) as f64).ceil()
        + mid as f64;
    rel.to_kind(Kind::Float)
        .where_self(&abs.le(mid), &(log_pos * sign))
        .to_kind(Kind::Int64)
}

/// What every layer's attention shares in one forward pass: the relative positions and the
/// (normalised) relative embedding table.
#[derive(Debug)]
pub struct RelativeContext {
    /// Bucketed relative positions `[len, len]` (int64).
    pub positions: Tensor,
    /// The relative embedding table `[2 · span, hidden]`.
    pub embeddings: Tensor,
    /// Half the table's rows (`att_span`).
    pub span: i64,
}

/// The projections of one layer's self-attention (Hugging Face `attention.self`).
#[derive(Debug)]
pub struct SelfAttention {
    /// `attention.self.query_proj`.
    pub query_proj: AdaptedLinear,
    /// `attention.self.key_proj`.
    pub key_proj: AdaptedLinear,
    /// `attention.self.value_proj`.
    pub value_proj: AdaptedLinear,
    /// `attention.self.pos_key_proj` (v2: `c2p` without `share_att_key`).
    pub pos_key_proj: Option<AdaptedLinear>,
    /// `attention.self.pos_query_proj` (v2: `p2c` without `share_att_key`).
    pub pos_query_proj: Option<AdaptedLinear>,
}

impl SelfAttention {
    /// The context vectors `[batch, len, hidden]` for hidden states `h` `[batch, len, hidden]`.
    ///
    /// `key_padding` is `[batch, 1, 1, len]`, true at padded keys. `relative` is `None` when
    /// the config has no relative attention. `train` switches the dropouts on.
    pub fn forward(
        &self,
        c: &DebertaV2Config,
        h: &Tensor,
        key_padding: &Tensor,
        relative: Option<&RelativeContext>,
        train: bool,
    ) -> Tensor {
        let (batch, len) = (h.size()[0], h.size()[1]);
        let heads = c.num_attention_heads;
        // [batch, len, heads · d] -> [batch, heads, len, d]
        let split = |t: Tensor| t.view([batch, len, heads, -1]).transpose(1, 2);
        let q = split(self.query_proj.forward(h, train));
        let k = split(self.key_proj.forward(h, train));
        let v = split(self.value_proj.forward(h, train));
        // transformers scales by √(d · (1 + number of relative terms)) in float32 even when
        // relative attention is off (the terms are counted from `pos_att_type` alone), and
        // divides the keys before the product.
        let factor = 1 + i64::from(c.c2p()) + i64::from(c.p2c());
        let scale = f64::from((c.head_size() as f32 * factor as f32).sqrt());
        let content = q.matmul(&(k.transpose(-1, -2) / scale));
        // Added after both relative terms are summed, in transformers' order.
        let scores = match relative.and_then(|rel| self.relative_bias(c, &q, &k, rel, scale, train))
        {
            Some(bias) => content + bias,
            None => content,
        };
        // transformers masks with the dtype's minimum (not −∞), so a row with no real key is
        // uniform rather than NaN; only padded query rows are such, and they are discarded.
        let probs = scores
            .masked_fill(key_padding, f64::from(f32::MIN))
            .softmax(-1, Kind::Float)
            .with_dropout(c.attention_probs_dropout_prob, train);
        probs.matmul(&v).transpose(1, 2).reshape([
            batch,
            len,
            c.num_attention_heads * c.head_size(),
        ])
    }

    /// The `c2p` and `p2c` terms `[batch, heads, len, len]`, already divided by `scale`;
    /// `None` when `pos_att_type` names neither.
    fn relative_bias(
        &self,
        c: &DebertaV2Config,
        q: &Tensor,
        k: &Tensor,
        rel: &RelativeContext,
        scale: f64,
        train: bool,
    ) -> Option<Tensor> {
        let (batch, heads, len) = (q.size()[0], c.num_attention_heads, q.size()[2]);
        // [2 · span, heads · d] -> [heads, 2 · span, d]
        let split = |t: Tensor| t.view([-1, heads, c.head_size()]).transpose(0, 1);
        let table = rel.embeddings.with_dropout(c.hidden_dropout_prob, train);
        let last = 2 * rel.span - 1;
        let mut bias: Option<Tensor> = None;
        if c.c2p() {
            let proj = match (&self.pos_key_proj, c.share_att_key) {
                (Some(p), false) => p,
                _ => &self.key_proj,
            };
            let pos_key = split(proj.forward(&table, train));
            let index = (&rel.positions + rel.span)
                .clamp(0, last)
                .expand([batch, heads, len, len], false);
            let c2p = q
                .matmul(&pos_key.transpose(-1, -2))
                .gather(-1, &index, false)
                / scale;
            bias = Some(c2p);
        }
        if c.p2c() {
            let proj = match (&self.pos_query_proj, c.share_att_key) {
                (Some(p), false) => p,
                _ => &self.query_proj,
            };
            let pos_query = split(proj.forward(&table, train));
            let index = (rel.positions.neg() + rel.span)
                .clamp(0, last)
                .expand([batch, heads, len, len], false);
            let p2c = k
                .matmul(&pos_query.transpose(-1, -2))
                .gather(-1, &index, false)
                .transpose(-1, -2)
                / scale;
            bias = Some(match bias {
                Some(b) => b + p2c,
                None => p2c,
            });
        }
        bias
    }
}
