//! What a model reads, and how labelled examples become it: tokens for text encoders, pixels
//! for vision transformers. The preprocessing is chosen by the checkpoint's `model_type`, so
//! training, evaluation and prediction do not depend on the modality.

use super::architecture::Architecture;
use super::bert::EncoderInput;
use super::image::ImageProcessor;
use super::tokenizer::TextTokenizer;
use crate::config::DataConfig;
use crate::data::Example;
use anyhow::bail;
use std::path::Path;
use tch::{Device, Tensor};

/// A batch as the model reads it.
#[derive(Debug)]
pub enum ModelInput {
    /// Token ids, attention mask and token types (BERT, DeBERTa).
    Text(EncoderInput),
    /// `pixel_values` `[batch, 3, height, width]` (ViT, DINOv2).
    Image(Tensor),
}

impl ModelInput {
    /// The token input; panics on an image batch (a text encoder is only ever given text: the
    /// [`Preprocessor`] is chosen from the same checkpoint as the model).
    pub fn text(&self) -> &EncoderInput {
        match self {
            ModelInput::Text(t) => t,
            ModelInput::Image(_) => panic!("a text encoder was given an image batch"),
        }
    }

    /// The pixel values; panics on a text batch (see [`ModelInput::text`]).
    pub fn pixels(&self) -> &Tensor {
        match self {
            ModelInput::Image(p) => p,
            ModelInput::Text(_) => panic!("a vision encoder was given a text batch"),
        }
    }
}

/// Turns examples into model inputs for one checkpoint.
pub enum Preprocessor {
    /// The checkpoint's tokenizer (boxed: it is large).
    Text(Box<TextTokenizer>),
    /// The checkpoint's image preprocessing.
    Image(ImageProcessor),
}

impl Preprocessor {
    /// The preprocessing of the model in `folder` for data read with `data` (its `max_length`
    /// for texts, `image_size` for images).
    pub fn for_model(folder: &Path, data: &DataConfig) -> anyhow::Result<Self> {
        let arch = Architecture::of_folder(folder)?;
        let model_type = arch.model_type();
        let vision = arch.is_vision();
        if arch.is_decoder() || data.format == crate::config::DataFormat::Commonsense {
            bail!(
                "{}: model_type \"{model_type}\" with data.format = {:?}: decoders (model_type \
                 \"llama\") train on data.format = \"commonsense\" only, and classifiers on \
                 labelled examples",
                folder.join("config.json").display(),
                data.format
            );
        }
        if vision != data.format.is_image() {
            bail!(
                "{}: a {} model (model_type \"{model_type}\") cannot read {} data (data.format = {:?}); \
                 use {}",
                folder.join("config.json").display(),
                if vision { "vision" } else { "text" },
                if vision { "text" } else { "image" },
                data.format,
                if vision {
                    "data.format = \"idx\" or \"pixel_csv\""
                } else {
                    "a text data format (csv, tsv, jsonl, arrow)"
                }
            );
        }
        Ok(if vision {
            let processor =
                ImageProcessor::for_vision_model(folder, arch, data.image_size, "data.image_size")?;
            Preprocessor::Image(processor)
        } else {
            Preprocessor::Text(Box::new(TextTokenizer::from_folder(
                folder,
                data.max_length,
            )?))
        })
    }

    /// The model input of `examples` on `device`.
    pub fn batch(&self, examples: &[&Example], device: Device) -> anyhow::Result<ModelInput> {
        Ok(match self {
            Preprocessor::Text(tokenizer) => {
                let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
                let pairs: Option<Vec<&str>> =
                    examples.iter().map(|e| e.text_pair.as_deref()).collect();
                ModelInput::Text(tokenizer.encode(&texts, pairs.as_deref(), device)?)
            }
            Preprocessor::Image(processor) => {
                let mut images = Vec::with_capacity(examples.len());
                for e in examples {
                    match &e.image {
                        Some(img) => images.push(img),
                        None => bail!("a vision model was given an example without an image"),
                    }
                }
                ModelInput::Image(processor.pixel_values(&images, device))
            }
        })
    }
}
