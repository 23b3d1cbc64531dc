//! Vision transformers in the Hugging Face layouts: ViT (`model_type = "vit"`, transformers'
//! `ViTModel`) and DINOv2 (`model_type = "dinov2"`, `Dinov2Model`), one type for both.
//!
//! Images are cut into patches by a strided convolution, a class token is prepended, position
//! embeddings are added (resized bicubically when the image's patch grid differs from the
//! config's, as transformers does), and pre-norm layers follow. Every attention and MLP linear
//! layer is an [`AdaptedLinear`] reachable by its transformers 5.24 module path
//! (`layers.3.attention.q_proj` in ViT, `encoder.layer.3.mlp.fc1` in DINOv2), so adapters are
//! injected by the same PEFT-style patterns as on text encoders. No image preprocessing
//! happens here: `pixel_values` arrive normalised.

mod config;
mod head;
mod layer;

pub use config::{VitConfig, VitVariant};
pub use head::VitClassifier;
pub use layer::VitLayer;

use super::hf::{CheckpointError, LayerNorm, Weights};
use crate::adapter::AdaptedLinear;
use crate::dropout::WithDropout;
use layer::{MODULES, module_prefix};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// How position embeddings are resized to another patch grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PositionInterpolation {
    /// transformers' choice for both models (5.24): bicubic to the target size,
    /// `align_corners = false`, no antialiasing.
    #[default]
    Bicubic,
    /// Bicubic with antialiasing when shrinking (newer DINOv2 reference code has this
    /// option); not what transformers computes.
    BicubicAntialias,
    /// Bilinear, `align_corners = false`; not what transformers computes.
    Bilinear,
}

/// A ViT or DINOv2 encoder without head (see [`VitClassifier`]).
#[derive(Debug)]
pub struct VitModel {
    config: VitConfig,
    /// How position embeddings are resized for other image sizes (default: as transformers).
    pub interpolation: PositionInterpolation,
    cls_token: Tensor,
    /// DINOv2's `mask_token` (`[1, hidden]`) when the checkpoint has one; unused at inference.
    mask_token: Option<Tensor>,
    position_embeddings: Tensor,
    patch_weight: Tensor,
    patch_bias: Tensor,
    /// The encoder layers.
    pub layers: Vec<VitLayer>,
    layernorm: LayerNorm,
    device: Device,
}

impl VitModel {
    /// Loads a ViT or DINOv2 encoder from a Hugging Face folder (`config.json`,
    /// `model.safetensors`) onto `device`, frozen. Names may carry the `vit.` / `dinov2.`
    /// prefix of classification checkpoints; layer tensors may be spelled as `save_pretrained`
    /// writes them (`attention.attention.query`, `attention.output.dense`, ViT's
    /// `intermediate.dense`) or as transformers 5 names its modules (`attention.q_proj`,
    /// `mlp.fc1`). A bare ViT's pooler and a missing (or differently shaped) DINOv2
    /// `mask_token` are fine: neither is used.
    pub fn from_folder(folder: &Path, device: Device) -> Result<(Self, Weights), CheckpointError> {
        let config = VitConfig::from_folder(folder)?;
        let w = Weights::read(folder, &format!("{}.", config.variant.prefix()))?;
        let model = Self::from_weights(config, &w, device)?;
        Ok((model, w))
    }

    /// Builds the encoder for `config` (already validated) from `w`.
    pub fn from_weights(
        config: VitConfig,
        w: &Weights,
        device: Device,
    ) -> Result<Self, CheckpointError> {
        let c = &config;
        let h = c.hidden_size;
        let [gh, gw] = c.grid();
        let get = |name: &str, shape: &[i64]| w.tensor(name, shape, Kind::Float, device);
        // Unused at inference: absent, or of another shape, it is simply not kept.
        let mask_token =
            match w.contains("embeddings.mask_token") && c.variant == VitVariant::Dinov2 {
                true => match get("embeddings.mask_token", &[1, h]) {
                    Ok(t) => Some(t),
                    Err(CheckpointError::BadTensor { .. }) => None,
                    Err(e) => return Err(e),
                },
                false => None,
            };
        let [ph, pw] = c.patch_size;
        let layers = (0..c.num_hidden_layers as usize)
            .map(|i| VitLayer::load(w, c, i, device))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            interpolation: PositionInterpolation::default(),
            cls_token: get("embeddings.cls_token", &[1, 1, h])?,
            mask_token,
            position_embeddings: get("embeddings.position_embeddings", &[1, gh * gw + 1, h])?,
            patch_weight: get(
                "embeddings.patch_embeddings.projection.weight",
                &[h, c.num_channels, ph, pw],
            )?,
            patch_bias: get("embeddings.patch_embeddings.projection.bias", &[h])?,
            layers,
            layernorm: LayerNorm::load(w, "layernorm", h, c.layer_norm_eps, device)?,
            device,
            config,
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// Hidden width.
    pub fn hidden_size(&self) -> i64 {
        self.config.hidden_size
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Module paths of every adaptable linear layer as transformers 5.24 names the modules of
    /// the bare model, in forward order: per layer `attention.q_proj`, `k_proj`, `v_proj`,
    /// `o_proj`, `mlp.fc1`, `mlp.fc2`, under `layers.N` (ViT) or `encoder.layer.N` (DINOv2).
    pub fn linear_paths(&self) -> Vec<String> {
        (0..self.layers.len())
            .flat_map(|i| {
                let p = module_prefix(self.config.variant, i);
                MODULES.iter().map(move |m| format!("{p}.{m}"))
            })
            .collect()
    }

    /// For each of [`VitModel::linear_paths`], the name under which `save_pretrained` writes
    /// that layer (`encoder.layer.0.attention.attention.query`; add `.weight` / `.bias`), for
    /// merged checkpoints.
    pub fn linear_saved_names(&self) -> Vec<String> {
        (0..self.layers.len())
            .flat_map(|i| VitLayer::saved_linear_names(self.config.variant, i))
            .collect()
    }

    /// Every adaptable linear layer, in the order of [`VitModel::linear_paths`].
    pub fn linears(&self) -> Vec<&AdaptedLinear> {
        self.layers.iter().flat_map(|l| &l.linears).collect()
    }

    /// Every adaptable linear layer, in the order of [`VitModel::linear_paths`].
    pub fn linears_mut(&mut self) -> Vec<&mut AdaptedLinear> {
        self.layers
            .iter_mut()
            .flat_map(|l| &mut l.linears)
            .collect()
    }

    /// Every weight of the encoder under the name transformers 5.24's `save_pretrained`
    /// writes (no prefix): `embeddings.cls_token`, `embeddings.position_embeddings`,
    /// `encoder.layer.0.attention.attention.query.weight`, ..., `layernorm.weight`.
    pub fn named_parameters(&self) -> Vec<(String, &Tensor)> {
        let mut v: Vec<(String, &Tensor)> = vec![("embeddings.cls_token".into(), &self.cls_token)];
        v.extend(
            self.mask_token
                .as_ref()
                .map(|t| ("embeddings.mask_token".to_string(), t)),
        );
        v.extend([
            (
                "embeddings.position_embeddings".to_string(),
                &self.position_embeddings,
            ),
            (
                "embeddings.patch_embeddings.projection.weight".into(),
                &self.patch_weight,
            ),
            (
                "embeddings.patch_embeddings.projection.bias".into(),
                &self.patch_bias,
            ),
        ]);
        for (i, layer) in self.layers.iter().enumerate() {
            v.extend(layer.named_parameters(self.config.variant, i));
        }
        v.push(("layernorm.weight".into(), &self.layernorm.weight));
        v.push(("layernorm.bias".into(), &self.layernorm.bias));
        v
    }

    /// Makes every encoder weight trainable (full fine-tuning) or frozen.
    pub fn set_trainable(&mut self, trainable: bool) {
        for (_, t) in self.named_parameters() {
            let _ = t.set_requires_grad(trainable);
        }
    }

    /// The last hidden states after the final layer norm, `[batch, 1 + patches, hidden]`
    /// (class token first, then patches row by row), for `pixel_values` `[batch, channels,
    /// height, width]`. Rows and columns that do not fill a patch are ignored (a strided
    /// convolution). `train` switches dropout (and DINOv2's drop path) on.
    ///
    /// # Panics
    /// When `pixel_values` is not 4-D with `num_channels` channels and at least one patch.
    pub fn forward(&self, pixel_values: &Tensor, train: bool) -> Tensor {
        let mut x = self.embeddings(pixel_values, train);
        for layer in &self.layers {
            x = layer.forward(&self.config, &x, train);
        }
        self.layernorm.forward(&x)
    }

    /// Patch embeddings with the class token and position embeddings, `[batch, 1 + patches,
    /// hidden]`, before the first layer.
    pub fn embeddings(&self, pixel_values: &Tensor, train: bool) -> Tensor {
        let c = &self.config;
        let size = pixel_values.size();
        let [ph, pw] = c.patch_size;
        assert!(
            size.len() == 4 && size[1] == c.num_channels && size[2] >= ph && size[3] >= pw,
            "pixel_values must be [batch, {}, height >= {ph}, width >= {pw}]; got {size:?}",
            c.num_channels
        );
        let patches = pixel_values
            .to_device(self.device)
            .to_kind(self.patch_weight.kind())
            .conv2d(
                &self.patch_weight,
                Some(&self.patch_bias),
                c.patch_size,
                0,
                1,
                1,
            )
            .flatten(2, -1)
            .transpose(1, 2);
        let cls = self.cls_token.expand([size[0], -1, -1], false);
        let x = Tensor::cat(&[cls, patches], 1)
            + self.position_embeddings_for(size[2] / ph, size[3] / pw);
        x.with_dropout(c.hidden_dropout_prob, train)
    }

    /// Position embeddings for a grid of `rows × columns` patches, `[1, 1 + rows·columns,
    /// hidden]`: the checkpoint's on its own grid, else its patch part resized with
    /// [`VitModel::interpolation`] (the class token's embedding is kept).
    ///
    /// transformers compares patch counts and whether the image is square instead of grids;
    /// on the square grids of every released checkpoint the decisions agree, and resizing a
    /// grid to itself is the identity.
    pub fn position_embeddings_for(&self, rows: i64, columns: i64) -> Tensor {
        let [gh, gw] = self.config.grid();
        let pe = &self.position_embeddings;
        if (rows, columns) == (gh, gw) {
            return pe.shallow_clone();
        }
        let dim = self.config.hidden_size;
        let grid = pe
            .narrow(1, 1, gh * gw)
            .reshape([1, gh, gw, dim])
            .permute([0, 3, 1, 2]);
        // DINOv2 resizes in float32 and casts back; ViT in the table's own type.
        let kind = grid.kind();
        let grid = match self.config.variant {
            VitVariant::Dinov2 => grid.to_kind(Kind::Float),
            VitVariant::Vit => grid,
        };
        let size = [rows, columns];
        let resized = match self.interpolation {
            PositionInterpolation::Bicubic => grid.upsample_bicubic2d(size, false, None, None),
            PositionInterpolation::BicubicAntialias => {
                grid.internal_upsample_bicubic2d_aa(size, false, None, None)
            }
            PositionInterpolation::Bilinear => grid.upsample_bilinear2d(size, false, None, None),
        };
        let resized = resized
            .to_kind(kind)
            .permute([0, 2, 3, 1])
            .reshape([1, rows * columns, dim]);
        Tensor::cat(&[pe.narrow(1, 0, 1), resized], 1)
    }
}
