//! `DebertaV2ForSequenceClassification`'s head: the context pooler and the classifier.

use super::DebertaV2Model;
use crate::dropout::WithDropout;
use crate::models::bert::EncoderInput;
use crate::models::hf::{CheckpointError, Weights};
use tch::Tensor;

/// Sequence classification on a DeBERTa encoder: `[CLS]` state, dropout (`pooler_dropout`),
/// dense (`pooler.dense`), `pooler_hidden_act`, dropout (`cls_dropout`, else
/// `hidden_dropout_prob`), linear (`classifier`).
///
/// The pooler comes from the checkpoint when it has one (and stays frozen, as for BERT's head),
/// otherwise it is new and trained (pretrained DeBERTa-v3 checkpoints ship none). The
/// classifier is always new: `N(0, σ²)` weights with σ = `initializer_range`, zero bias
/// (transformers' `_init_weights`). `num_labels = 1` means regression.
#[derive(Debug)]
pub struct DebertaV2Classifier {
    /// The encoder.
    pub deberta: DebertaV2Model,
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
}

impl DebertaV2Classifier {
    /// Builds the head on `deberta`, taking the pooler from `weights` when present. Draws new
    /// weights from LibTorch's global generator.
    pub fn new(
        deberta: DebertaV2Model,
        weights: &Weights,
        num_labels: i64,
    ) -> Result<Self, CheckpointError> {
        let head = crate::models::heads::new_head(
            weights,
            deberta.config.hidden_size,
            deberta.config.initializer_range,
            num_labels,
            deberta.device(),
        )?;
        Ok(Self {
            deberta,
            pooler_weight: head.pooler_weight,
            pooler_bias: head.pooler_bias,
            pooler_is_new: head.pooler_is_new,
            classifier_weight: head.classifier_weight,
            classifier_bias: head.classifier_bias,
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
        let hidden = self.deberta.forward(input, train);
        self.logits_from_hidden(&hidden, train)
    }

    /// Logits from last hidden states already computed.
    pub fn logits_from_hidden(&self, hidden: &Tensor, train: bool) -> Tensor {
        let c = &self.deberta.config;
        let cls = hidden.select(1, 0).with_dropout(c.pooler_dropout, train);
        let pooled = c
            .pooler_hidden_act
            .apply(&cls.linear(&self.pooler_weight, Some(&self.pooler_bias)));
        pooled
            .with_dropout(c.classifier_dropout(), train)
            .linear(&self.classifier_weight, Some(&self.classifier_bias))
    }
}
