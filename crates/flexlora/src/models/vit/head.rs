//! `ViTForImageClassification` and `Dinov2ForImageClassification`: one linear layer on the
//! last hidden states.

use super::{VitModel, VitVariant};
use crate::models::hf::{CheckpointError, Weights};
use tch::{Device, Kind, Tensor};

/// Image classification on a ViT or DINOv2 encoder, as transformers' heads: ViT's classifier
/// reads the class token (`hidden` inputs); DINOv2's reads the class token concatenated with
/// the mean of the patch tokens (`2 × hidden` inputs). Neither has dropout.
///
/// The classifier comes from the checkpoint when it has a `classifier.weight` of the right
/// shape (a fine-tuned classification checkpoint with the same labels), otherwise it is new:
/// ViT's weights `N(0, σ²)`, DINOv2's drawn as transformers does (a normal draw that its own
/// `_init_weights` then replaces by a truncated normal on [−2, 2]), σ = `initializer_range`,
/// zero biases. Both are trained.
#[derive(Debug)]
pub struct VitClassifier {
    /// The encoder.
    pub model: VitModel,
    /// Classifier weight, `num_labels × hidden` (ViT) or `num_labels × 2·hidden` (DINOv2).
    pub classifier_weight: Tensor,
    /// Classifier bias, `num_labels`.
    pub classifier_bias: Tensor,
    /// Whether the classifier was read from the checkpoint rather than newly drawn.
    pub head_from_checkpoint: bool,
}

impl VitClassifier {
    /// Builds the head on `model` with `num_labels` outputs (at least 1), from `weights` when
    /// they hold a classifier of that shape. New weights are drawn from LibTorch's global
    /// generator.
    pub fn new(
        model: VitModel,
        weights: &Weights,
        num_labels: i64,
    ) -> Result<Self, CheckpointError> {
        if num_labels < 1 {
            return Err(CheckpointError::Unsupported {
                path: weights.path().to_path_buf(),
                field: "num_labels".into(),
                value: num_labels.to_string(),
                message: "a classification head needs at least one output".into(),
            });
        }
        let c = model.config();
        let device = model.device();
        let inputs = match c.variant {
            VitVariant::Vit => c.hidden_size,
            VitVariant::Dinov2 => 2 * c.hidden_size,
        };
        let saved = match weights.contains("classifier.weight") {
            true => {
                match weights.tensor(
                    "classifier.weight",
                    &[num_labels, inputs],
                    Kind::Float,
                    device,
                ) {
                    Ok(w) => Some((
                        w,
                        weights.tensor("classifier.bias", &[num_labels], Kind::Float, device)?,
                    )),
                    // Another label set (or another head): a new classifier, as
                    // transformers' `ignore_mismatched_sizes` gives.
                    Err(CheckpointError::BadTensor { .. }) => None,
                    Err(e) => return Err(e),
                }
            }
            false => None,
        };
        let head_from_checkpoint = saved.is_some();
        let (weight, bias) = match saved {
            Some(wb) => wb,
            None => {
                let shape = [num_labels, inputs];
                let std = c.initializer_range;
                let weight = match c.variant {
                    VitVariant::Vit => Tensor::randn(shape, (Kind::Float, device)) * std,
                    VitVariant::Dinov2 => {
                        // PreTrainedModel._init_weights draws first; Dinov2's then redraws.
                        let _ = Tensor::randn(shape, (Kind::Float, device));
                        trunc_normal(shape, std, -2.0, 2.0, device)
                    }
                };
                (weight, Tensor::zeros([num_labels], (Kind::Float, device)))
            }
        };
        Ok(Self {
            model,
            classifier_weight: weight.set_requires_grad(true),
            classifier_bias: bias.set_requires_grad(true),
            head_from_checkpoint,
        })
    }

    /// Logits `[batch, num_labels]` for `pixel_values` `[batch, channels, height, width]`.
    pub fn forward(&self, pixel_values: &Tensor, train: bool) -> Tensor {
        self.logits_from_hidden(&self.model.forward(pixel_values, train))
    }

    /// Logits from last hidden states already computed.
    pub fn logits_from_hidden(&self, hidden: &Tensor) -> Tensor {
        let cls = hidden.select(1, 0);
        let features = match self.model.config().variant {
            VitVariant::Vit => cls,
            VitVariant::Dinov2 => {
                let patches = hidden.narrow(1, 1, hidden.size()[1] - 1);
                let mean = patches.mean_dim(1, false, hidden.kind());
                Tensor::cat(&[cls, mean], 1)
            }
        };
        features.linear(&self.classifier_weight, Some(&self.classifier_bias))
    }

    /// The head's trainable tensors (classifier weight and bias).
    pub fn head_parameters(&self) -> Vec<&Tensor> {
        vec![&self.classifier_weight, &self.classifier_bias]
    }

    /// The transformers class of the whole model (`ViTForImageClassification`,
    /// `Dinov2ForImageClassification`).
    pub fn architecture(&self) -> &'static str {
        self.model.config().variant.architecture()
    }

    /// The encoder's prefix in the classification checkpoint (`vit`, `dinov2`).
    pub fn prefix(&self) -> &'static str {
        self.model.config().variant.prefix()
    }
}

/// `torch.nn.init.trunc_normal_` (mean 0) on a new float tensor: uniform draws mapped through
/// the inverse normal CDF, the same draws and arithmetic as PyTorch.
fn trunc_normal(shape: [i64; 2], std: f64, a: f64, b: f64, device: Device) -> Tensor {
    let cdf = |x: f64| {
        let erf = Tensor::from(x / std::f64::consts::SQRT_2)
            .erf()
            .double_value(&[]);
        (1.0 + erf) / 2.0
    };
    let (l, u) = (cdf(a / std), cdf(b / std));
    let mut t = Tensor::empty(shape, (Kind::Float, device));
    let _ = t.uniform_(2.0 * l - 1.0, 2.0 * u - 1.0);
    let _ = t.erfinv_();
    let _ = t.g_mul_scalar_(std * std::f64::consts::SQRT_2);
    t.clamp(a, b)
}
