//! Which library multiplies the dense layers' matrices on the CPU.
//!
//! LibTorch sends a float32 `linear` on the CPU to MKL's `sgemm`. On AMD processors MKL takes
//! its AVX2 code path even where the core has AVX-512: on this project's Zen 5 benchmark machine
//! it runs the encoder's shapes at about 220 GFLOP/s on two cores, while oneDNN (also inside
//! LibTorch, dispatching on the instruction set rather than the vendor) runs the same shapes at
//! up to about 430 GFLOP/s, and a LoRA training step 10-12% faster (docs/performance.md has
//! the measurements and the commands). [`linear`]
//! therefore routes float32 CPU layers through oneDNN's inner product
//! (`mkldnn_linear`, which has LibTorch's autograd formula for the input, weight and bias
//! gradients), converting the activations to and from oneDNN's layout around it; everything
//! else (CUDA, bfloat16, which LibTorch already sends to oneDNN, empty inputs) keeps
//! `Tensor::linear`.
//!
//! `FLEXLORA_CPU_GEMM=mkl` in the environment switches back to MKL for the whole process (to
//! measure the difference, or on a machine where MKL is the faster of the two).

use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

/// Primitives oneDNN keeps compiled (its default is 1024).
///
/// oneDNN compiles one primitive per GEMM shape, and with dynamic padding every batch brings
/// new row counts; each cached primitive holds megabytes (its packed copy of the weight), so
/// the default cache grew a LoRA main job's peak memory from 2.0 to 3.2 GiB. 32 holds a step's
/// shapes (forward and backward of each distinct layer shape) with room to spare; measured on
/// the main job (docs/performance.md): 16 → 2.0 GiB, 32 → 2.1 GiB, 64 → 2.3 GiB, 4 → 10%
/// slower (recompiling within a step).
pub const ONEDNN_CACHE_CAPACITY: u32 = 32;

/// Process set-up for [`linear`]'s oneDNN path: caps oneDNN's primitive cache at
/// [`ONEDNN_CACHE_CAPACITY`] unless `ONEDNN_PRIMITIVE_CACHE_CAPACITY` is already set.
///
/// # Safety
/// Writes an environment variable (oneDNN reads it when it makes its first primitive), so it
/// must run before the process starts other threads, as the first thing in `main`.
pub unsafe fn configure_process() {
    const VAR: &str = "ONEDNN_PRIMITIVE_CACHE_CAPACITY";
    if std::env::var_os(VAR).is_none() {
        // SAFETY: the caller guarantees no other thread exists yet.
        unsafe { std::env::set_var(VAR, ONEDNN_CACHE_CAPACITY.to_string()) };
    }
}

/// The library that runs float32 `linear` layers on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuGemm {
    /// Intel oneDNN's inner product (the default where LibTorch was built with it).
    OneDnn,
    /// MKL's `sgemm`, LibTorch's own choice for float32.
    Mkl,
}

impl CpuGemm {
    /// The library in use: `FLEXLORA_CPU_GEMM` (`onednn` or `mkl`, read once per process),
    /// else oneDNN when LibTorch has it, else MKL. An unknown value is reported once on
    /// standard error and ignored.
    pub fn current() -> CpuGemm {
        static CHOICE: OnceLock<CpuGemm> = OnceLock::new();
        *CHOICE.get_or_init(|| {
            let available = if tch::utils::has_mkldnn() {
                CpuGemm::OneDnn
            } else {
                CpuGemm::Mkl
            };
            match std::env::var("FLEXLORA_CPU_GEMM").ok().as_deref() {
                None | Some("") => available,
                Some("mkl") => CpuGemm::Mkl,
                Some("onednn") => available,
                Some(other) => {
                    eprintln!(
                        "warning: FLEXLORA_CPU_GEMM={other:?} is not onednn or mkl; using {}",
                        available.name()
                    );
                    available
                }
            }
        })
    }

    /// `onednn` or `mkl`.
    pub fn name(self) -> &'static str {
        match self {
            CpuGemm::OneDnn => "onednn",
            CpuGemm::Mkl => "mkl",
        }
    }
}

/// `x Wᵀ + b` over the last dimension of `x`, as `Tensor::linear`, with float32 CPU work sent
/// to the library [`CpuGemm::current`] names. Gradients flow to `x`, `weight` and `bias` as
/// they require.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    linear_with(CpuGemm::current(), x, weight, bias)
}

/// [`linear`] with the library chosen by the caller (the benchmark measures both).
pub fn linear_with(gemm: CpuGemm, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let onednn = gemm == CpuGemm::OneDnn
        && x.device() == Device::Cpu
        && x.kind() == Kind::Float
        && weight.kind() == Kind::Float
        && bias.is_none_or(|b| b.kind() == Kind::Float)
        && x.dim() >= 2
        && x.numel() > 0;
    if !onednn {
        return x.linear(weight, bias);
    }
    let size = x.size();
    let features = size[size.len() - 1];
    let rows = x.numel() as i64 / features;
    let flat = x.reshape([rows, features]).contiguous();
    let y = flat
        .to_mkldnn()
        .mkldnn_linear(&weight.contiguous(), bias.map(|b| b.contiguous()))
        .to_dense(None, false);
    let mut out_size = size;
    let last = out_size.len() - 1;
    out_size[last] = weight.size()[0];
    y.view(out_size.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    /// Values and all three gradients equal MKL's (to float32 summation order) for 2-D and
    /// 3-D inputs, with and without a bias.
    #[test]
    fn onednn_linear_matches_mkl_values_and_gradients() {
        tch::manual_seed(3);
        for shape in [vec![7i64, 12], vec![2, 5, 12]] {
            for with_bias in [true, false] {
                let x = Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu));
                let w = Tensor::randn([9, 12], (Kind::Float, Device::Cpu));
                let b = Tensor::randn([9], (Kind::Float, Device::Cpu));
                let mut out_shape = shape.clone();
                *out_shape.last_mut().unwrap() = 9;
                let upstream = Tensor::randn(out_shape.as_slice(), (Kind::Float, Device::Cpu));
                let run = |gemm: CpuGemm| {
                    let x = x.copy().set_requires_grad(true);
                    let w = w.copy().set_requires_grad(true);
                    let b = b.copy().set_requires_grad(true);
                    let y = linear_with(gemm, &x, &w, with_bias.then_some(&b));
                    (y.shallow_clone() * &upstream).sum(Kind::Float).backward();
                    (y.detach(), x.grad(), w.grad(), with_bias.then(|| b.grad()))
                };
                let (y1, gx1, gw1, gb1) = run(CpuGemm::OneDnn);
                let (y2, gx2, gw2, gb2) = run(CpuGemm::Mkl);
                assert_eq!(y1.size(), out_shape);
                assert!(max_abs_diff(&y1, &y2) < 1e-4, "values");
                assert!(max_abs_diff(&gx1, &gx2) < 1e-4, "input gradient");
                assert!(max_abs_diff(&gw1, &gw2) < 1e-4, "weight gradient");
                if let (Some(a), Some(b)) = (gb1, gb2) {
                    assert!(max_abs_diff(&a, &b) < 1e-4, "bias gradient");
                }
            }
        }
    }

    /// A frozen weight gets no gradient and the input's still flows.
    #[test]
    fn frozen_weight_gets_no_gradient() {
        let x = Tensor::randn([4, 6], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let w = Tensor::randn([3, 6], (Kind::Float, Device::Cpu));
        linear_with(CpuGemm::OneDnn, &x, &w, None)
            .sum(Kind::Float)
            .backward();
        assert!(!w.grad().defined());
        let expected = w.sum_dim_intlist([0i64].as_slice(), false, Kind::Float);
        let got = x.grad();
        for row in 0..4 {
            assert!(max_abs_diff(&got.get(row), &expected) < 1e-5);
        }
    }
}
