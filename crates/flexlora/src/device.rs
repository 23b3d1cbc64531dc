//! Choosing where tensors live: `cpu`, `cuda`, `cuda:N` or `auto`.

use anyhow::bail;
use tch::Device;

/// Parses a device name. `auto` picks CUDA when a GPU is usable; asking for CUDA where none is
/// usable is an error that says why, never a silent fallback.
pub fn parse_device(name: &str) -> anyhow::Result<Device> {
    let cuda_count = || {
        if tch::Cuda::is_available() {
            tch::Cuda::device_count()
        } else {
            0
        }
    };
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available()),
        _ => {
            let index = match name.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => match rest.strip_prefix(':').and_then(|n| n.parse::<usize>().ok()) {
                    Some(i) => i,
                    None => bail!("unknown device `{name}`: expected cpu, cuda, cuda:N or auto"),
                },
                None => bail!("unknown device `{name}`: expected cpu, cuda, cuda:N or auto"),
            };
            let n = cuda_count();
            if n == 0 {
                bail!(
                    "device `{name}` requested but no CUDA GPU is usable here: {}",
                    cuda_unusable_reason()
                );
            }
            if index as i64 >= n {
                bail!(
                    "device `{name}` requested but that index does not exist (LibTorch sees {n} CUDA device(s): cuda:0..cuda:{})",
                    n - 1
                );
            }
            Ok(Device::Cuda(index))
        }
    }
}

/// Why LibTorch sees no CUDA device, in the order a user would check: a LibTorch without CUDA
/// in this process, no NVIDIA driver library, or a driver that reports no GPU.
pub fn cuda_unusable_reason() -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    if !maps.contains("libtorch_cuda") {
        return "this binary's LibTorch has no CUDA support (libtorch_cuda.so is not loaded); \
                build against a CUDA LibTorch such as the venv's torch 2.11.0+cu130 (scripts/setup)"
            .into();
    }
    // SAFETY: dlopen/dlclose with a valid NUL-terminated name; the handle is closed at once.
    let driver = unsafe {
        let handle = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_LAZY);
        if !handle.is_null() {
            libc::dlclose(handle);
        }
        !handle.is_null()
    };
    if !driver {
        return "no NVIDIA driver is installed (libcuda.so.1 cannot be loaded)".into();
    }
    "the NVIDIA driver reports no usable GPU (check `nvidia-smi` and CUDA_VISIBLE_DEVICES)".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert!(parse_device("gpu").is_err());
        assert!(parse_device("cuda:x").is_err());
        if !tch::Cuda::is_available() {
            let e = parse_device("cuda").unwrap_err().to_string();
            assert!(e.contains("no CUDA GPU is usable here: "), "{e}");
            // This build links LibTorch's CUDA library (docs/architecture.md), so the reason is the
            // missing driver or GPU, not the build.
            assert!(!e.contains("no CUDA support"), "{e}");
            assert_eq!(parse_device("auto").unwrap(), Device::Cpu);
        }
    }
}
