//! Heads on a BERT encoder: sequence classification (the transformers
//! `BertForSequenceClassification` layout) and mean-pooled sentence embeddings.

use super::bert::{BertModel, EncoderInput};
use super::hf::{CheckpointError, Weights};
use crate::dropout::WithDropout;
use tch::{Kind, Tensor};

/// Mean of the hidden states over real tokens (sentence-transformers' pooling):
/// `Σ_t h_t · m_t / max(Σ_t m_t, 1e-9)`.
pub fn mean_pool(hidden: &Tensor, attention_mask: &Tensor) -> Tensor {
    let m = attention_mask.to_kind(hidden.kind()).unsqueeze(-1);
    (hidden * &m).sum_dim_intlist(1, false, hidden.kind())
        / m.sum_dim_intlist(1, false, hidden.kind()).clamp_min(1e-9)
}

/// Divides each row by its L2 norm (as `torch.nn.functional.normalize`, eps 1e-12).
pub fn l2_normalize(x: &Tensor) -> Tensor {
    let n = x.norm_scalaropt_dim(2.0, [-1], true).clamp_min(1e-12);
    x / n
}

/// The tensors of a new sequence-classification head (BERT's and DeBERTa's share the shapes
/// and the rules; only their forward passes differ).
pub(crate) struct NewHead {
    pub(crate) pooler_weight: Tensor,
    pub(crate) pooler_bias: Tensor,
    pub(crate) pooler_is_new: bool,
    pub(crate) classifier_weight: Tensor,
    pub(crate) classifier_bias: Tensor,
}

/// The pooler `pooler.dense` from `weights` (frozen) when the checkpoint has one, else a new
/// trained one; always a new classifier with `num_labels` outputs: `N(0, std²)` weights, zero
/// biases (transformers' `_init_weights`). Draws from LibTorch's global generator, pooler first.
pub(crate) fn new_head(
    weights: &Weights,
    h: i64,
    std: f64,
    num_labels: i64,
    device: tch::Device,
) -> Result<NewHead, CheckpointError> {
    let (pooler_weight, pooler_bias, pooler_is_new) = if weights.contains("pooler.dense.weight") {
        (
            weights.tensor("pooler.dense.weight", &[h, h], Kind::Float, device)?,
            weights.tensor("pooler.dense.bias", &[h], Kind::Float, device)?,
            false,
        )
    } else {
        (
            Tensor::randn([h, h], (Kind::Float, device)) * std,
            Tensor::zeros([h], (Kind::Float, device)),
            true,
        )
    };
    let classifier_weight =
        (Tensor::randn([num_labels, h], (Kind::Float, device)) * std).set_requires_grad(true);
    let classifier_bias =
        Tensor::zeros([num_labels], (Kind::Float, device)).set_requires_grad(true);
    Ok(NewHead {
        pooler_weight: pooler_weight.set_requires_grad(pooler_is_new),
        pooler_bias: pooler_bias.set_requires_grad(pooler_is_new),
        pooler_is_new,
        classifier_weight,
        classifier_bias,
    })
}

/// `BertForSequenceClassification`: pooler (`tanh(W h_[CLS] + b)`), dropout, linear.
///
/// The pooler comes from the checkpoint when it has one (and stays frozen, as in the reference
/// setup), otherwise it is new and trained. The classifier is always new: `N(0, σ²)` weights
/// with σ = `initializer_range`, zero bias (transformers' `_init_weights`). `num_labels = 1`
/// means regression.
#[derive(Debug)]
pub struct SequenceClassifier {
    /// The encoder.
    pub bert: BertModel,
    /// Pooler weight, `hidden × hidden`.
    pub pooler_weight: Tensor,
    /// Pooler bias, `hidden`.
    pub pooler_bias: Tensor,
    /// Whether the pooler was newly initialised (and so is trained).
    pub pooler_is_new: bool,
    /// Classifier weight, `num_labels × hidden`.
    pub classifier_weight: Tensor,
    /// Classifier bias, `num_labels`.
    pub classifier_bias: Tensor,
    dropout: f64,
}

impl SequenceClassifier {
    /// Builds the head on `bert`, taking the pooler from `weights` when present. Draws new
    /// weights from LibTorch's global generator.
    pub fn new(
        bert: BertModel,
        weights: &Weights,
        num_labels: i64,
    ) -> Result<Self, CheckpointError> {
        let head = new_head(
            weights,
            bert.config.hidden_size,
            bert.config.initializer_range,
            num_labels,
            bert.device(),
        )?;
        let dropout = bert
            .config
            .classifier_dropout
            .unwrap_or(bert.config.hidden_dropout_prob);
        Ok(Self {
            bert,
            pooler_weight: head.pooler_weight,
            pooler_bias: head.pooler_bias,
            pooler_is_new: head.pooler_is_new,
            classifier_weight: head.classifier_weight,
            classifier_bias: head.classifier_bias,
            dropout,
        })
    }

    /// The head's trainable tensors (classifier, and the pooler when it is new).
    pub fn head_parameters(&self) -> Vec<&Tensor> {
        let mut v = vec![&self.classifier_weight, &self.classifier_bias];
        if self.pooler_is_new {
            v.extend([&self.pooler_weight, &self.pooler_bias]);
        }
        v
    }

    /// Logits `[batch, num_labels]`.
    pub fn forward(&self, input: &EncoderInput, train: bool) -> Tensor {
        let hidden = self.bert.forward(input, train);
        self.logits_from_hidden(&hidden, train)
    }

    /// Logits from last hidden states already computed.
    pub fn logits_from_hidden(&self, hidden: &Tensor, train: bool) -> Tensor {
        let cls = hidden.select(1, 0);
        let pooled = cls
            .linear(&self.pooler_weight, Some(&self.pooler_bias))
            .tanh();
        pooled
            .with_dropout(self.dropout, train)
            .linear(&self.classifier_weight, Some(&self.classifier_bias))
    }
}
