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
            if index as i64 >= n {
                bail!(
                    "device `{name}` requested but {} (LibTorch sees {n} CUDA device(s))",
                    if n == 0 {
                        "no CUDA GPU is usable here"
                    } else {
                        "that index does not exist"
                    }
                );
            }
            Ok(Device::Cuda(index))
        }
    }
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
            assert!(e.contains("no CUDA GPU is usable"), "{e}");
            assert_eq!(parse_device("auto").unwrap(), Device::Cpu);
        }
    }
}
