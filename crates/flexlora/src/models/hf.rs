//! Hugging Face checkpoint folders: `config.json` and `model.safetensors`, read with errors
//! that name the file, the field or tensor, and what was expected.

use crate::adapter::AdaptedLinear;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};
use thiserror::Error;

/// A checkpoint folder that cannot be used.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// A file is missing or unreadable.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `config.json` is not valid JSON or a field has the wrong type.
    #[error("{path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
    /// The config describes something this build does not implement.
    #[error("{path}: `{field}` = {value}: {message}")]
    Unsupported {
        /// The config file.
        path: PathBuf,
        /// The field.
        field: String,
        /// Its value.
        value: String,
        /// What is supported.
        message: String,
    },
    /// `model.safetensors` is malformed (truncated, bad header, bad offsets).
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors {
        /// The weights file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A tensor the architecture needs is absent.
    #[error("{path}: missing tensor `{name}` (expected shape {expected:?})")]
    MissingTensor {
        /// The weights file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// Its expected shape.
        expected: Vec<i64>,
    },
    /// A tensor has the wrong shape or type.
    #[error("{path}: tensor `{name}` {message}")]
    BadTensor {
        /// The weights file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// Its shape and type in the file, and what the config needs.
        message: String,
    },
}

/// Reads and parses `config.json` of a checkpoint folder into `T`, naming the field at fault.
pub fn read_config<T: serde::de::DeserializeOwned>(folder: &Path) -> Result<T, CheckpointError> {
    let path = folder.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| CheckpointError::Read {
        path: path.clone(),
        source,
    })?;
    let de = &mut serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        CheckpointError::Config {
            path: path.clone(),
            message: if field == "." {
                e.into_inner().to_string()
            } else {
                format!("`{field}`: {}", e.into_inner())
            },
        }
    })
}

/// The tensors of a `model.safetensors` file, checked by name and shape before use.
pub struct Weights {
    path: PathBuf,
    bytes: Vec<u8>,
    /// Name in the file for each name we ask for (a `bert.`-style prefix stripped).
    names: HashMap<String, String>,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("path", &self.path)
            .field("tensors", &self.names.len())
            .finish()
    }
}

impl Weights {
    /// Reads `<folder>/model.safetensors` and validates its header and offsets.
    /// `strip_prefix` (e.g. `"bert."`) is removed from names that carry it, so a
    /// `BertForSequenceClassification` checkpoint and a bare `BertModel` one load alike.
    pub fn read(folder: &Path, strip_prefix: &str) -> Result<Self, CheckpointError> {
        let path = folder.join("model.safetensors");
        let bytes = std::fs::read(&path).map_err(|source| CheckpointError::Read {
            path: path.clone(),
            source,
        })?;
        let names = {
            let st =
                SafeTensors::deserialize(&bytes).map_err(|e| CheckpointError::Safetensors {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            st.names()
                .into_iter()
                .map(|n| {
                    let short = n.strip_prefix(strip_prefix).unwrap_or(n);
                    (short.to_string(), n.to_string())
                })
                .collect()
        };
        Ok(Self { path, bytes, names })
    }

    /// The weights file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a tensor is present.
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// A floating-point tensor of exactly `shape`, converted to `kind` on `device`.
    pub fn tensor(
        &self,
        name: &str,
        shape: &[i64],
        kind: Kind,
        device: Device,
    ) -> Result<Tensor, CheckpointError> {
        let missing = || CheckpointError::MissingTensor {
            path: self.path.clone(),
            name: name.to_string(),
            expected: shape.to_vec(),
        };
        let file_name = self.names.get(name).ok_or_else(missing)?;
        let st =
            SafeTensors::deserialize(&self.bytes).map_err(|e| CheckpointError::Safetensors {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        let view = st.tensor(file_name).map_err(|_| missing())?;
        let found: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let file_kind = match view.dtype() {
            Dtype::F32 => Some(Kind::Float),
            Dtype::F16 => Some(Kind::Half),
            Dtype::BF16 => Some(Kind::BFloat16),
            Dtype::F64 => Some(Kind::Double),
            _ => None,
        };
        let (Some(file_kind), true) = (file_kind, found == shape) else {
            return Err(CheckpointError::BadTensor {
                path: self.path.clone(),
                name: name.to_string(),
                message: format!(
                    "has shape {found:?} and type {:?}; the config needs shape {shape:?} of type \
                     F32, F16, BF16 or F64",
                    view.dtype()
                ),
            });
        };
        let t = Tensor::f_from_data_size(view.data(), shape, file_kind).map_err(|e| {
            CheckpointError::Safetensors {
                path: self.path.clone(),
                message: format!("tensor `{name}`: {e}"),
            }
        })?;
        Ok(t.to_kind(kind).to_device(device))
    }
}

/// A layer norm with its (frozen) affine parameters, as every encoder here loads them.
#[derive(Debug)]
pub struct LayerNorm {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// `<prefix>.weight` and `<prefix>.bias` of width `dim`.
    pub(crate) fn load(
        w: &Weights,
        prefix: &str,
        dim: i64,
        eps: f64,
        device: Device,
    ) -> Result<Self, CheckpointError> {
        Ok(Self {
            weight: w.tensor(&format!("{prefix}.weight"), &[dim], Kind::Float, device)?,
            bias: w.tensor(&format!("{prefix}.bias"), &[dim], Kind::Float, device)?,
            eps,
        })
    }

    /// Normalises over the last dimension.
    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        x.layer_norm(
            [self.weight.size()[0]],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            false,
        )
    }
}

/// A frozen `nn.Linear` (`<prefix>.weight` `out × inp`, `<prefix>.bias`) ready for an adapter.
pub(crate) fn linear(
    w: &Weights,
    prefix: &str,
    out: i64,
    inp: i64,
    device: Device,
) -> Result<AdaptedLinear, CheckpointError> {
    Ok(AdaptedLinear::new(
        w.tensor(
            &format!("{prefix}.weight"),
            &[out, inp],
            Kind::Float,
            device,
        )?,
        Some(w.tensor(&format!("{prefix}.bias"), &[out], Kind::Float, device)?),
    ))
}
