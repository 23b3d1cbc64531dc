//! `flexlora embed` on ViT and DINOv2: transformers' `pooler_output` of each image.
//!
//! - **DINOv2** (`Dinov2Model`): the class token of the last hidden states, after the final
//!   layer norm.
//! - **ViT** (`ViTModel`): `tanh(pooler.dense(class token))`, the class token after the final
//!   layer norm through the checkpoint's pooler (`config.json`'s `pooler_output_size` wide,
//!   default the hidden size; `pooler_act` must be `tanh`, its default). A checkpoint without
//!   pooler weights (`ViTForImageClassification`, or a `ViTModel` saved with
//!   `add_pooling_layer=False`) is an error: transformers would draw that pooler at random.
//!
//! Images are read as `flexlora predict` reads them ([`crate::data::image_files`]: 8-bit grey),
//! then resized to the checkpoint's size, repeated to RGB and normalised with its mean and std
//! ([`ImageProcessor`]). They are decoded a batch at a time.

use super::{EmbedOptions, progress, rows};
use crate::data;
use crate::models::hf::read_config;
use crate::models::{Architecture, CheckpointError, Encoder, ImageProcessor, ModelInput, Weights};
use anyhow::{Context, bail};
use std::io::Write;
use std::path::Path;
use tch::{Kind, Tensor};

/// How the vectors are taken from the last hidden states.
enum Pooling {
    /// The class token (DINOv2).
    ClassToken,
    /// `tanh(x W^T + b)` of the class token (ViT's pooler).
    Pooler { weight: Tensor, bias: Tensor },
}

impl Pooling {
    fn of(
        model_dir: &Path,
        arch: Architecture,
        encoder: &Encoder,
        weights: &Weights,
    ) -> anyhow::Result<Self> {
        let hidden = match encoder {
            Encoder::Vit(m) => m.hidden_size(),
            _ => bail!("a text encoder has no image embedding"),
        };
        if arch == Architecture::Dinov2 {
            return Ok(Pooling::ClassToken);
        }
        if !weights.contains("pooler.dense.weight") {
            bail!(
                "{}: no `pooler.dense.weight`: this ViT checkpoint has no pooler (a \
                 ViTForImageClassification, or a ViTModel saved without one), and `embed` returns \
                 ViTModel's pooler_output, tanh(pooler.dense(class token)), which needs it",
                weights.path().display()
            );
        }
        let device = match encoder {
            Encoder::Vit(m) => m.device(),
            _ => tch::Device::Cpu,
        };
        #[derive(serde::Deserialize)]
        struct PoolerConfig {
            #[serde(default)]
            pooler_output_size: Option<i64>,
            #[serde(default)]
            pooler_act: Option<String>,
        }
        let c: PoolerConfig = read_config(model_dir)?;
        if let Some(act) = c.pooler_act.filter(|a| a != "tanh") {
            return Err(CheckpointError::Unsupported {
                path: model_dir.join("config.json"),
                field: "pooler_act".into(),
                value: format!("{act:?}"),
                message: "the ViT pooler is supported with \"tanh\" (transformers' default)".into(),
            }
            .into());
        }
        let width = c.pooler_output_size.unwrap_or(hidden);
        let get = |name: &str, shape: &[i64]| weights.tensor(name, shape, Kind::Float, device);
        Ok(Pooling::Pooler {
            weight: get("pooler.dense.weight", &[width, hidden])?,
            bias: get("pooler.dense.bias", &[width])?,
        })
    }

    fn apply(&self, hidden: &Tensor) -> Tensor {
        let cls = hidden.select(1, 0);
        match self {
            Pooling::ClassToken => cls,
            Pooling::Pooler { weight, bias } => cls.linear(weight, Some(bias)).tanh(),
        }
    }
}

/// Embeds the image file or folder `input` with the vision encoder `encoder` (loaded from
/// `model_dir`, with its `weights`) and writes `{"file", "embedding"}` lines to `output`;
/// returns the number of images.
pub(super) fn embed_images(
    model_dir: &Path,
    arch: Architecture,
    encoder: &Encoder,
    weights: &Weights,
    input: &Path,
    output: &Path,
    opts: &EmbedOptions,
) -> anyhow::Result<usize> {
    let pooling = Pooling::of(model_dir, arch, encoder, weights)?;
    let processor =
        ImageProcessor::for_vision_model(model_dir, arch, opts.image_size, "--image-size")?;
    let files = data::image_files(input)?;
    let mut vectors = Vec::with_capacity(files.files.len());
    let bar = progress(files.files.len(), "images");
    for chunk in files.files.chunks(opts.batch_size) {
        let images = chunk
            .iter()
            .map(|(_, path)| data::read_grey_image(path))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let refs: Vec<&data::GreyImage> = images.iter().collect();
        let pixels = ModelInput::Image(processor.pixel_values(&refs, opts.device));
        let pooled = tch::no_grad(|| pooling.apply(&encoder.forward(&pixels, false)));
        vectors.extend(rows(pooled, opts.normalize)?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    crate::io::write_atomic(output, |w| {
        for ((name, _), v) in files.files.iter().zip(&vectors) {
            writeln!(w, "{}", serde_json::json!({"file": name, "embedding": v}))?;
        }
        Ok(())
    })
    .with_context(|| format!("writing {}", output.display()))?;
    files.report_skipped(input);
    Ok(files.files.len())
}
