//! One type for every encoder a task model can be built on, and for its sequence-classification
//! head, so that training, evaluation, checkpoints and export do not depend on the
//! architecture. The architecture is chosen by `config.json`'s `model_type`
//! ([`Architecture`]).

use super::architecture::Architecture;
use super::bert::BertModel;
use super::deberta::{DebertaV2Classifier, DebertaV2Model};
use super::heads::SequenceClassifier;
use super::hf::{CheckpointError, Weights};
use super::input::ModelInput;
use super::vit::{VitClassifier, VitModel};
use crate::adapter::AdaptedLinear;
use std::path::Path;
use tch::{Device, Tensor};

/// A pretrained encoder without a head (variants boxed: the architectures differ in size).
#[derive(Debug)]
pub enum Encoder {
    /// `model_type = "bert"`.
    Bert(Box<BertModel>),
    /// `model_type = "deberta-v2"` (DeBERTa-v2 and v3).
    DebertaV2(Box<DebertaV2Model>),
    /// `model_type = "vit"` or `"dinov2"` (reads images).
    Vit(Box<VitModel>),
}

/// How a `...ForSequenceClassification` checkpoint of one architecture names things (PEFT's
/// module paths and merged checkpoints use these names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HfNames {
    /// The encoder's (or decoder's) prefix: `bert`, `deberta`, `model`.
    pub prefix: &'static str,
    /// The pooler's dense layer: `bert.pooler.dense`, `pooler.dense`; none for image
    /// classifiers, whose heads read the hidden states directly.
    pub pooler: Option<&'static str>,
    /// The class name for `architectures`.
    pub architecture: &'static str,
    /// PEFT's `task_type` for the adapter config: `SEQ_CLS` for text classifiers, `CAUSAL_LM`
    /// for decoders; none for image classifiers (PEFT's sequence-classification wrapper passes
    /// token inputs).
    pub peft_task_type: Option<&'static str>,
}

const BERT_NAMES: HfNames = HfNames {
    prefix: "bert",
    pooler: Some("bert.pooler.dense"),
    architecture: "BertForSequenceClassification",
    peft_task_type: Some("SEQ_CLS"),
};

const DEBERTA_NAMES: HfNames = HfNames {
    prefix: "deberta",
    pooler: Some("pooler.dense"),
    architecture: "DebertaV2ForSequenceClassification",
    peft_task_type: Some("SEQ_CLS"),
};

const VIT_NAMES: HfNames = HfNames {
    prefix: "vit",
    pooler: None,
    architecture: "ViTForImageClassification",
    peft_task_type: None,
};

const DINOV2_NAMES: HfNames = HfNames {
    prefix: "dinov2",
    pooler: None,
    architecture: "Dinov2ForImageClassification",
    peft_task_type: None,
};

/// A LLaMA-family decoder as transformers' `LlamaForCausalLM` names it (no classifier head).
const LLAMA_NAMES: HfNames = HfNames {
    prefix: "model",
    pooler: None,
    architecture: "LlamaForCausalLM",
    peft_task_type: Some("CAUSAL_LM"),
};

impl HfNames {
    /// The names of `architecture`'s classifiers; none for a decoder (whose names
    /// [`HfNames::of_folder`] gives).
    pub fn of(architecture: Architecture) -> Option<Self> {
        match architecture {
            Architecture::Bert => Some(BERT_NAMES),
            Architecture::DebertaV2 => Some(DEBERTA_NAMES),
            Architecture::Vit => Some(VIT_NAMES),
            Architecture::Dinov2 => Some(DINOV2_NAMES),
            Architecture::Llama => None,
        }
    }

    /// The names for the checkpoint folder `folder` (by its `model_type`).
    pub fn of_folder(folder: &Path) -> Result<Self, CheckpointError> {
        let arch = Architecture::of_folder(folder)?;
        // A decoder's names are those of its `LlamaForCausalLM` (PEFT export and merge).
        Ok(Self::of(arch).unwrap_or(LLAMA_NAMES))
    }

    /// The encoder prefixes of every architecture's classifiers (`bert`, `deberta`, `vit`,
    /// `dinov2`).
    pub fn all_prefixes() -> Vec<&'static str> {
        Architecture::ALL
            .into_iter()
            .filter_map(Self::of)
            .map(|n| n.prefix)
            .collect()
    }
}

impl Encoder {
    /// Loads the encoder of a Hugging Face folder (config.json, model.safetensors) onto
    /// `device`, frozen, with the weights file kept for the head.
    pub fn from_folder(folder: &Path, device: Device) -> Result<(Self, Weights), CheckpointError> {
        match Architecture::of_folder(folder)? {
            Architecture::DebertaV2 => {
                let (m, w) = DebertaV2Model::from_folder(folder, device)?;
                Ok((Encoder::DebertaV2(Box::new(m)), w))
            }
            Architecture::Vit | Architecture::Dinov2 => {
                let (m, w) = VitModel::from_folder(folder, device)?;
                Ok((Encoder::Vit(Box::new(m)), w))
            }
            Architecture::Bert => {
                let (m, w) = BertModel::from_folder(folder, device)?;
                Ok((Encoder::Bert(Box::new(m)), w))
            }
            Architecture::Llama => Err(CheckpointError::Unsupported {
                path: folder.join("config.json"),
                field: "model_type".into(),
                value: "\"llama\"".into(),
                message: "a decoder has no encoder for a classifier; decoders train on \
                          data.format = \"commonsense\""
                    .into(),
            }),
        }
    }

    /// The last hidden states `[batch, tokens, hidden]` (text encoders: zeros, or unused
    /// values, at padding; vision encoders: the class token first, after the final layer
    /// norm). `train` switches dropout on.
    ///
    /// # Panics
    /// When a text encoder is given pixels or a vision encoder tokens (see [`ModelInput::text`]).
    pub fn forward(&self, input: &ModelInput, train: bool) -> Tensor {
        match self {
            Encoder::Bert(m) => m.forward(input.text(), train),
            Encoder::DebertaV2(m) => m.forward(input.text(), train),
            Encoder::Vit(m) => m.forward(input.pixels(), train),
        }
    }

    /// The longest token sequence a text encoder was trained for (`max_position_embeddings`);
    /// none for vision encoders.
    pub fn max_positions(&self) -> Option<i64> {
        match self {
            Encoder::Bert(m) => Some(m.config.max_position_embeddings),
            Encoder::DebertaV2(m) => Some(m.config.max_position_embeddings),
            Encoder::Vit(_) => None,
        }
    }

    /// Hugging Face module paths of the linear layers, in model order.
    pub fn linear_paths(&self) -> Vec<String> {
        match self {
            Encoder::Bert(m) => m.linear_paths(),
            Encoder::DebertaV2(m) => m.linear_paths(),
            Encoder::Vit(m) => m.linear_paths(),
        }
    }

    /// For each of [`Encoder::linear_paths`], the name its weights have in a saved checkpoint
    /// (the module path, except for transformers 5's vision models, which save under older
    /// names: `attention.attention.query` for the module `attention.q_proj`).
    pub fn linear_saved_names(&self) -> Vec<String> {
        match self {
            Encoder::Vit(m) => m.linear_saved_names(),
            _ => self.linear_paths(),
        }
    }

    /// The linear layers, in the order of [`Encoder::linear_paths`].
    pub fn linears(&self) -> Vec<&AdaptedLinear> {
        match self {
            Encoder::Bert(m) => m.linears(),
            Encoder::DebertaV2(m) => m.linears(),
            Encoder::Vit(m) => m.linears(),
        }
    }

    /// The linear layers, mutably.
    pub fn linears_mut(&mut self) -> Vec<&mut AdaptedLinear> {
        match self {
            Encoder::Bert(m) => m.linears_mut(),
            Encoder::DebertaV2(m) => m.linears_mut(),
            Encoder::Vit(m) => m.linears_mut(),
        }
    }

    /// Every weight by its Hugging Face name (without the architecture prefix).
    pub fn named_parameters(&self) -> Vec<(String, &Tensor)> {
        match self {
            Encoder::Bert(m) => m.named_parameters(),
            Encoder::DebertaV2(m) => m.named_parameters(),
            Encoder::Vit(m) => m.named_parameters(),
        }
    }

    /// Makes every encoder weight trainable (full fine-tuning) or frozen.
    pub fn set_trainable(&mut self, trainable: bool) {
        match self {
            Encoder::Bert(m) => m.set_trainable(trainable),
            Encoder::DebertaV2(m) => m.set_trainable(trainable),
            Encoder::Vit(m) => m.set_trainable(trainable),
        }
    }

    /// How checkpoints of this architecture name things.
    pub fn hf_names(&self) -> HfNames {
        match self {
            Encoder::Bert(_) => BERT_NAMES,
            Encoder::DebertaV2(_) => DEBERTA_NAMES,
            Encoder::Vit(m) => vit_names(m),
        }
    }
}

/// A sequence classifier: an encoder with its architecture's head.
#[derive(Debug)]
pub enum Classifier {
    /// `BertForSequenceClassification`.
    Bert(Box<SequenceClassifier>),
    /// `DebertaV2ForSequenceClassification`.
    DebertaV2(Box<DebertaV2Classifier>),
    /// `ViTForImageClassification` / `Dinov2ForImageClassification`.
    Vit(Box<VitClassifier>),
}

fn vit_names(m: &VitModel) -> HfNames {
    match m.config().variant {
        super::vit::VitVariant::Vit => VIT_NAMES,
        super::vit::VitVariant::Dinov2 => DINOV2_NAMES,
    }
}

impl Classifier {
    /// Puts a new head with `num_labels` outputs on `encoder` (a pooler from `weights` when the
    /// checkpoint has one). Draws from LibTorch's global generator.
    pub fn new(
        encoder: Encoder,
        weights: &Weights,
        num_labels: i64,
    ) -> Result<Self, CheckpointError> {
        Ok(match encoder {
            Encoder::Bert(m) => {
                Classifier::Bert(Box::new(SequenceClassifier::new(*m, weights, num_labels)?))
            }
            Encoder::DebertaV2(m) => {
                Classifier::DebertaV2(Box::new(DebertaV2Classifier::new(*m, weights, num_labels)?))
            }
            Encoder::Vit(m) => {
                Classifier::Vit(Box::new(VitClassifier::new(*m, weights, num_labels)?))
            }
        })
    }

    /// Logits `[batch, num_labels]`.
    pub fn forward(&self, input: &ModelInput, train: bool) -> Tensor {
        match self {
            Classifier::Bert(c) => c.forward(input.text(), train),
            Classifier::DebertaV2(c) => c.forward(input.text(), train),
            Classifier::Vit(c) => c.forward(input.pixels(), train),
        }
    }

    /// Hugging Face module paths of the encoder's linear layers.
    pub fn linear_paths(&self) -> Vec<String> {
        match self {
            Classifier::Bert(c) => c.bert.linear_paths(),
            Classifier::DebertaV2(c) => c.deberta.linear_paths(),
            Classifier::Vit(c) => c.model.linear_paths(),
        }
    }

    /// For each linear path, the name of its weights in a saved checkpoint (see
    /// [`Encoder::linear_saved_names`]).
    pub fn linear_saved_names(&self) -> Vec<String> {
        match self {
            Classifier::Vit(c) => c.model.linear_saved_names(),
            _ => self.linear_paths(),
        }
    }

    /// The encoder's linear layers.
    pub fn linears(&self) -> Vec<&AdaptedLinear> {
        match self {
            Classifier::Bert(c) => c.bert.linears(),
            Classifier::DebertaV2(c) => c.deberta.linears(),
            Classifier::Vit(c) => c.model.linears(),
        }
    }

    /// The encoder's linear layers, mutably.
    pub fn linears_mut(&mut self) -> Vec<&mut AdaptedLinear> {
        match self {
            Classifier::Bert(c) => c.bert.linears_mut(),
            Classifier::DebertaV2(c) => c.deberta.linears_mut(),
            Classifier::Vit(c) => c.model.linears_mut(),
        }
    }

    /// The encoder's weights by Hugging Face name (without the architecture prefix).
    pub fn encoder_parameters(&self) -> Vec<(String, &Tensor)> {
        match self {
            Classifier::Bert(c) => c.bert.named_parameters(),
            Classifier::DebertaV2(c) => c.deberta.named_parameters(),
            Classifier::Vit(c) => c.model.named_parameters(),
        }
    }

    /// How checkpoints of this architecture name things.
    pub fn hf_names(&self) -> HfNames {
        match self {
            Classifier::Bert(_) => BERT_NAMES,
            Classifier::DebertaV2(_) => DEBERTA_NAMES,
            Classifier::Vit(c) => vit_names(&c.model),
        }
    }

    /// The head's trainable tensors (classifier, and the pooler when it is new).
    pub fn head_parameters(&self) -> Vec<&Tensor> {
        match self {
            Classifier::Bert(c) => c.head_parameters(),
            Classifier::DebertaV2(c) => c.head_parameters(),
            Classifier::Vit(c) => c.head_parameters(),
        }
    }

    /// The head's tensors: classifier weight and bias, then pooler weight and bias when the
    /// pooler is new (trained), with the names checkpoints use (`classifier.*`, `pooler.*`).
    pub fn head_tensors(&self) -> Vec<(&'static str, &Tensor)> {
        let (cw, cb) = self.classifier();
        let mut v = vec![("classifier.weight", cw), ("classifier.bias", cb)];
        if let (true, Some((pw, pb))) = (self.pooler_is_new(), self.pooler()) {
            v.extend([("pooler.weight", pw), ("pooler.bias", pb)]);
        }
        v
    }

    /// Whether the pooler is new (not in the checkpoint) and so trained.
    pub fn pooler_is_new(&self) -> bool {
        match self {
            Classifier::Bert(c) => c.pooler_is_new,
            Classifier::DebertaV2(c) => c.pooler_is_new,
            Classifier::Vit(_) => false,
        }
    }

    /// The pooler's weight and bias (pretrained and frozen, or new and trained); none for
    /// image classifiers, whose heads read the hidden states directly.
    pub fn pooler(&self) -> Option<(&Tensor, &Tensor)> {
        match self {
            Classifier::Bert(c) => Some((&c.pooler_weight, &c.pooler_bias)),
            Classifier::DebertaV2(c) => Some((&c.pooler_weight, &c.pooler_bias)),
            Classifier::Vit(_) => None,
        }
    }

    /// The classifier's weight and bias.
    pub fn classifier(&self) -> (&Tensor, &Tensor) {
        match self {
            Classifier::Bert(c) => (&c.classifier_weight, &c.classifier_bias),
            Classifier::DebertaV2(c) => (&c.classifier_weight, &c.classifier_bias),
            Classifier::Vit(c) => (&c.classifier_weight, &c.classifier_bias),
        }
    }

    /// Makes every encoder weight trainable or frozen.
    pub fn set_encoder_trainable(&mut self, trainable: bool) {
        match self {
            Classifier::Bert(c) => c.bert.set_trainable(trainable),
            Classifier::DebertaV2(c) => c.deberta.set_trainable(trainable),
            Classifier::Vit(c) => c.model.set_trainable(trainable),
        }
    }
}
