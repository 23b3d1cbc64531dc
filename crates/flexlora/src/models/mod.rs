//! Pretrained models loaded from Hugging Face checkpoint folders.
//!
//! Architectures that load: BERT (`model_type = "bert"`, absolute position embeddings; e.g.
//! all-MiniLM-L6-v2, paraphrase-MiniLM-L3-v2, bert-base-uncased); DeBERTa-v2/v3
//! (`model_type = "deberta-v2"`, [`deberta`]); ViT and DINOv2 (`model_type = "vit"`,
//! `"dinov2"`, [`vit`]); LLaMA-family decoders (`model_type = "llama"`, [`llama`]). Which
//! one a folder holds is decided in one place, [`Architecture::of_folder`].

pub mod architecture;
pub mod bert;
pub mod classifier;
pub mod deberta;
pub mod heads;
pub mod hf;
pub mod image;
pub mod input;
pub mod llama;
pub mod packing;
pub mod tokenizer;
pub mod vit;

pub use architecture::Architecture;
pub use bert::{BertConfig, BertModel, EncoderInput};
pub use classifier::{Classifier, Encoder, HfNames};
pub use deberta::{DebertaV2Classifier, DebertaV2Config, DebertaV2Model};
pub use heads::{SequenceClassifier, l2_normalize, mean_pool};
pub use hf::{CheckpointError, Weights};
pub use image::ImageProcessor;
pub use input::{ModelInput, Preprocessor};
pub use llama::{KvCache, LlamaConfig, LlamaModel};
pub use tokenizer::{TextTokenizer, TokenizerError};
pub use vit::{VitClassifier, VitConfig, VitModel, VitVariant};
