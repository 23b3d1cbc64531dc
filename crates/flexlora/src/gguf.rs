//! Writing GGUF files (version 3), the container llama.cpp reads: a header, typed metadata
//! key-value pairs, tensor descriptions, then each tensor's data at an offset aligned to 32 bytes.
//!
//! Only what an adapter file needs is here: string, `u32` and `f32` metadata, and `F32`, `F16`
//! and `BF16` tensors. Dimensions are written in GGML's order (fastest-varying first), the
//! reverse of a row-major shape: a `[rows, cols]` matrix is `ne = [cols, rows]`.

use std::io::Write;
use tch::{Kind, Tensor};

/// The data alignment GGUF uses unless `general.alignment` says otherwise.
pub const ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// GGUF type 4.
    U32(u32),
    /// GGUF type 6.
    F32(f32),
    /// GGUF type 8.
    Str(String),
}

/// The element type of a tensor in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TensorType {
    /// 32-bit float (GGML type 0).
    F32,
    /// IEEE half (GGML type 1).
    F16,
    /// bfloat16 (GGML type 30).
    Bf16,
}

impl TensorType {
    fn ggml_id(self) -> u32 {
        match self {
            TensorType::F32 => 0,
            TensorType::F16 => 1,
            TensorType::Bf16 => 30,
        }
    }

    fn kind(self) -> Kind {
        match self {
            TensorType::F32 => Kind::Float,
            TensorType::F16 => Kind::Half,
            TensorType::Bf16 => Kind::BFloat16,
        }
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// The little-endian bytes of `t` (contiguous, on the CPU) as `ty`.
fn tensor_bytes(t: &Tensor, ty: TensorType) -> anyhow::Result<Vec<u8>> {
    let t = t
        .to_device(tch::Device::Cpu)
        .to_kind(ty.kind())
        .contiguous();
    let numel = t.numel();
    let mut bytes = vec![0u8; numel * ty.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut bytes, numel)?;
    Ok(bytes)
}

/// The bytes of a GGUF file holding `metadata` (in order) and `tensors` (name, row-major
/// tensor), every tensor stored as `ty`.
pub fn gguf_bytes(
    metadata: &[(&str, MetaValue)],
    tensors: &[(String, Tensor)],
    ty: TensorType,
) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_string(&mut out, key);
        match value {
            MetaValue::U32(v) => {
                out.extend(4u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            MetaValue::F32(v) => {
                out.extend(6u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            MetaValue::Str(s) => {
                out.extend(8u32.to_le_bytes());
                put_string(&mut out, s);
            }
        }
    }
    let mut data: Vec<u8> = Vec::new();
    for (name, t) in tensors {
        let shape = t.size();
        put_string(&mut out, name);
        out.extend((shape.len() as u32).to_le_bytes());
        for &d in shape.iter().rev() {
            out.extend((d as u64).to_le_bytes());
        }
        out.extend(ty.ggml_id().to_le_bytes());
        out.extend((data.len() as u64).to_le_bytes());
        data.extend(tensor_bytes(t, ty)?);
        data.resize(data.len().next_multiple_of(ALIGNMENT as usize), 0);
    }
    out.resize(out.len().next_multiple_of(ALIGNMENT as usize), 0);
    out.extend(data);
    Ok(out)
}

/// Writes [`gguf_bytes`] to `path` atomically (a temporary file renamed into place).
pub fn write_gguf(
    path: &std::path::Path,
    metadata: &[(&str, MetaValue)],
    tensors: &[(String, Tensor)],
    ty: TensorType,
) -> anyhow::Result<()> {
    let bytes = gguf_bytes(metadata, tensors, ty)?;
    crate::io::write_atomic(path, |w| w.write_all(&bytes))
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
}
