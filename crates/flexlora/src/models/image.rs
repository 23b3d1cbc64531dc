//! Image preprocessing for vision transformers: stored grey images to the model's
//! `pixel_values` (`[batch, 3, size, size]`, f32).
//!
//! Per image, in this order: scale to `[0, 1]` by the data set's white value, resize to
//! `size × size` with bilinear interpolation (half-pixel centres, no antialiasing: the data
//! sets here are upsampled, 28 or 8 pixels to the model's size), repeat the grey channel as
//! R, G and B, then normalise each channel with the checkpoint's `image_mean` and
//! `image_std`. This is the data side of the VTAB-1K setup, not a copy of transformers'
//! image processors (which resize a PIL image with bicubic filtering and centre-crop); the
//! model's parity with transformers is checked on `pixel_values` directly.

use super::architecture::Architecture;
use super::hf::CheckpointError;
use crate::data::GreyImage;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// ImageNet's channel means and standard deviations (DINOv2's preprocessing).
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
/// ImageNet's channel standard deviations.
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// The largest image side accepted (a batch of 32 such images is 6 GiB of f32 pixels).
pub const MAX_IMAGE_SIZE: u32 = 4096;

/// How one checkpoint wants its images: size and channel normalisation.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    /// Images are resized to `size × size`.
    pub size: u32,
    /// Per-channel mean subtracted after scaling to `[0, 1]`.
    pub mean: [f64; 3],
    /// Per-channel standard deviation divided by.
    pub std: [f64; 3],
}

/// The fields of `preprocessor_config.json` used here (all optional).
#[derive(Debug, Default, serde::Deserialize)]
struct PreprocessorConfig {
    #[serde(default)]
    image_mean: Option<Vec<f64>>,
    #[serde(default)]
    image_std: Option<Vec<f64>>,
    #[serde(default)]
    crop_size: Option<Size>,
    #[serde(default)]
    size: Option<Size>,
}

/// transformers writes sizes as `{"height": h, "width": w}`, `{"shortest_edge": s}` or a number.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum Size {
    Square(u32),
    Box { height: u32, width: u32 },
    Edge { shortest_edge: u32 },
}

impl Size {
    fn side(&self) -> u32 {
        match *self {
            Size::Square(s) | Size::Edge { shortest_edge: s } => s,
            Size::Box { height, width } => height.min(width),
        }
    }
}

impl ImageProcessor {
    /// The preprocessing of the checkpoint in `folder`: mean and std from its
    /// `preprocessor_config.json` (else ImageNet's for DINOv2 and 0.5 for ViT, transformers'
    /// defaults), size `image_size` if given, else the file's crop size or size, else
    /// `config.json`'s `image_size`.
    pub fn from_folder(
        folder: &Path,
        architecture: Architecture,
        image_size: Option<u32>,
    ) -> Result<Self, CheckpointError> {
        let path = folder.join("preprocessor_config.json");
        let pre: PreprocessorConfig = match std::fs::read_to_string(&path) {
            Ok(text) => parse(&path, &text)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PreprocessorConfig::default(),
            Err(source) => return Err(CheckpointError::Read { path, source }),
        };
        let (mean, std) = if architecture == Architecture::Dinov2 {
            (IMAGENET_MEAN, IMAGENET_STD)
        } else {
            ([0.5; 3], [0.5; 3])
        };
        let three = |field: &str, v: Option<Vec<f64>>, default: [f64; 3]| match v {
            None => Ok(default),
            Some(v) => match <[f64; 3]>::try_from(v.as_slice()) {
                Ok(a) if field == "image_mean" || a.iter().all(|&s| s > 0.0) => Ok(a),
                _ => Err(CheckpointError::Config {
                    path: path.clone(),
                    message: format!(
                        "`{field}` = {v:?}: expected three numbers (R, G, B){}",
                        if field == "image_std" {
                            ", each > 0"
                        } else {
                            ""
                        }
                    ),
                }),
            },
        };
        let mean = three("image_mean", pre.image_mean, mean)?;
        let std = three("image_std", pre.image_std, std)?;
        let size = match image_size.or(pre.crop_size.or(pre.size).map(|s| s.side())) {
            Some(s) => s,
            None => {
                #[derive(serde::Deserialize)]
                struct ImageSize {
                    image_size: u32,
                }
                super::hf::read_config::<ImageSize>(folder)?.image_size
            }
        };
        if size == 0 || size > MAX_IMAGE_SIZE {
            return Err(CheckpointError::Config {
                path: folder.join("preprocessor_config.json"),
                message: format!(
                    "image size {size} (data.image_size, else this file's crop size or size, else \
                     config.json's image_size): expected 1..={MAX_IMAGE_SIZE} pixels"
                ),
            });
        }
        Ok(Self { size, mean, std })
    }

    /// [`ImageProcessor::from_folder`] for the ViT or DINOv2 encoder in `folder`, checked
    /// against it: the size must hold at least one patch (errors name it as `setting`, where
    /// `image_size` comes from: `data.image_size`, `--image-size`), and the encoder must read
    /// RGB (grey images are repeated to three channels).
    pub fn for_vision_model(
        folder: &Path,
        architecture: Architecture,
        image_size: Option<u32>,
        setting: &str,
    ) -> anyhow::Result<Self> {
        let processor = Self::from_folder(folder, architecture, image_size)?;
        let c = super::vit::VitConfig::from_folder(folder)?;
        let patch = c.patch_size[0].max(c.patch_size[1]);
        if i64::from(processor.size) < patch {
            anyhow::bail!(
                "{setting} = {}: smaller than one {}x{} patch of {}; use a multiple of {patch} \
                 (e.g. {})",
                processor.size,
                c.patch_size[0],
                c.patch_size[1],
                folder.display(),
                patch * 8
            );
        }
        if c.num_channels != 3 {
            anyhow::bail!(
                "{}: num_channels = {}; images are given to the model as RGB (3 channels)",
                folder.join("config.json").display(),
                c.num_channels
            );
        }
        Ok(processor)
    }

    /// `pixel_values` `[batch, 3, size, size]` of `images` on `device`.
    pub fn pixel_values(&self, images: &[&GreyImage], device: Device) -> Tensor {
        let s = self.size as i64;
        let resized: Vec<Tensor> = images
            .iter()
            .map(|img| {
                let (h, w) = (img.height as i64, img.width as i64);
                let x = Tensor::from_slice(&img.pixels)
                    .view([1, 1, h, w])
                    .to_device(device)
                    .to_kind(Kind::Float)
                    / img.max as f64;
                if (h, w) == (s, s) {
                    x
                } else {
                    x.upsample_bilinear2d([s, s], false, None, None)
                }
            })
            .collect();
        let grey = Tensor::cat(&resized, 0);
        let channels = |v: &[f64; 3]| {
            Tensor::from_slice(v)
                .to_kind(Kind::Float)
                .view([1, 3, 1, 1])
                .to_device(device)
        };
        (grey.expand([-1, 3, s, s], false) - channels(&self.mean)) / channels(&self.std)
    }
}

fn parse(path: &Path, text: &str) -> Result<PreprocessorConfig, CheckpointError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| CheckpointError::Config {
        message: {
            let field = e.path().to_string();
            format!("`{field}`: {}", e.into_inner())
        },
        path: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn scales_resizes_and_normalises() {
        let p = ImageProcessor {
            size: 4,
            mean: [0.5, 0.0, 0.25],
            std: [0.5, 1.0, 0.25],
        };
        let img = GreyImage {
            height: 2,
            width: 2,
            max: 16,
            pixels: Arc::from(vec![0u8, 16, 16, 0]),
        };
        let x = p.pixel_values(&[&img, &img], Device::Cpu);
        assert_eq!(x.size(), [2, 3, 4, 4]);
        // Corner pixels keep their value under half-pixel bilinear upsampling by 2.
        let g = x.double_value(&[1, 1, 0, 0]);
        assert!(g.abs() < 1e-6, "{g}");
        let g = x.double_value(&[0, 1, 0, 3]);
        assert!((g - 1.0).abs() < 1e-6, "{g}");
        // Channel 0: (1 - 0.5) / 0.5 = 1; channel 2: (1 - 0.25) / 0.25 = 3.
        assert!((x.double_value(&[0, 0, 0, 3]) - 1.0).abs() < 1e-6);
        assert!((x.double_value(&[0, 2, 0, 3]) - 3.0).abs() < 1e-6);
        // Between the corners: bilinear, 0.25 of the way from 0 to 1.
        let mid = x.double_value(&[0, 1, 0, 1]);
        assert!((mid - 0.25).abs() < 1e-6, "{mid}");
    }
}
