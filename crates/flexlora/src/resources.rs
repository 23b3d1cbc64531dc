//! Memory checks made before work starts: a data file or a batch shape that cannot fit is
//! refused with the estimate and the limit, rather than ending in an out-of-memory kill after
//! minutes of loading or hours of training.
//!
//! The estimates are deliberately simple upper-bound-style sums (documented at each function);
//! they catch settings that are off by a large factor (a 100 GB file, `batch_size = 100000`),
//! not marginal ones, which the limit's own slack and the allocator decide.

use std::path::Path;

/// Memory a process may use, and where that figure comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryLimit {
    /// Bytes.
    pub bytes: u64,
    /// For messages: `MemAvailable in /proc/meminfo`, `the cgroup's memory.max`, or
    /// `FLEXLORA_MEMORY_LIMIT`.
    pub source: String,
}

/// Why work was refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "{what} needs an estimated {} but only {} is available ({}); {hint}",
    mib(*estimate),
    mib(limit.bytes),
    limit.source
)]
pub struct TooLarge {
    /// What was to be done, naming the file or config keys.
    pub what: String,
    /// Estimated bytes.
    pub estimate: u64,
    /// The limit it exceeds.
    pub limit: MemoryLimit,
    /// What to change.
    pub hint: String,
}

fn mib(bytes: u64) -> String {
    let m = bytes as f64 / (1024.0 * 1024.0);
    if m >= 10_240.0 {
        format!("{:.1} GiB", m / 1024.0)
    } else {
        format!("{m:.0} MiB")
    }
}

/// Parses `512MiB`, `2GiB`, `2G`, `1000000` (bytes).
fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// The memory this process may still use: the smallest of `FLEXLORA_MEMORY_LIMIT` (when set:
/// a size such as `8GiB`), the kernel's `MemAvailable` and the room left under a cgroup v2
/// `memory.max`. `None` where none of them can be read (then nothing is refused).
pub fn available_memory() -> Option<MemoryLimit> {
    let mut limits = Vec::new();
    if let Ok(v) = std::env::var("FLEXLORA_MEMORY_LIMIT") {
        if let Some(bytes) = parse_size(&v) {
            limits.push(MemoryLimit {
                bytes,
                source: format!("FLEXLORA_MEMORY_LIMIT={v}"),
            });
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/meminfo") {
        let kib = text
            .lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            });
        if let Some(kib) = kib {
            limits.push(MemoryLimit {
                bytes: kib * 1024,
                source: "MemAvailable in /proc/meminfo".into(),
            });
        }
    }
    let cgroup = |f: &str| {
        std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(f))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
    };
    if let (Some(max), Some(current)) = (cgroup("memory.max"), cgroup("memory.current")) {
        limits.push(MemoryLimit {
            bytes: max.saturating_sub(current),
            source: "room under the cgroup's memory.max".into(),
        });
    }
    limits.into_iter().min_by_key(|l| l.bytes)
}

/// Refuses `estimate` bytes of work when they exceed the available memory.
pub fn check(what: impl FnOnce() -> String, estimate: u64, hint: &str) -> Result<(), TooLarge> {
    match available_memory() {
        Some(limit) if estimate > limit.bytes => Err(TooLarge {
            what: what(),
            estimate,
            limit,
            hint: hint.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Reading a data file of `file_bytes` into examples: the file's bytes, the parsed records'
/// strings and the examples made from them are alive at once, so three times the file.
pub fn data_file_bytes(file_bytes: u64) -> u64 {
    file_bytes.saturating_mul(3)
}

/// The shape of a transformer encoder, for [`training_step_bytes`].
#[derive(Debug, Clone, Copy)]
pub struct EncoderShape {
    /// Number of layers.
    pub layers: u64,
    /// Hidden size `h`.
    pub hidden: u64,
    /// Feed-forward size `I`.
    pub intermediate: u64,
    /// Attention heads.
    pub heads: u64,
    /// All weights of the model.
    pub parameters: u64,
}

/// One training step of `batch` sequences of `seq` tokens in float32: the weights (and for
/// full fine-tuning their gradients and two AdamW moments), plus the activations kept for
/// the backward pass, per layer and token about `10 h + 2 I` values (Q, K, V, the attention
/// context and output, two residual sums and norms, the feed-forward input and its two
/// intermediate tensors) and `3 · heads · seq` for the attention scores, probabilities and
/// dropout mask.
pub fn training_step_bytes(shape: EncoderShape, batch: u64, seq: u64, full: bool) -> u64 {
    let per_token = 10 * shape.hidden + 2 * shape.intermediate + 3 * shape.heads * seq;
    let activations = shape
        .layers
        .saturating_mul(batch)
        .saturating_mul(seq)
        .saturating_mul(per_token);
    let weights = shape.parameters * if full { 4 } else { 1 };
    activations.saturating_add(weights).saturating_mul(4)
}

/// Tells glibc's allocator to keep freed tensor buffers for reuse instead of handing them back
/// to the kernel, for the rest of the process.
///
/// LibTorch's CPU allocator takes every buffer from `malloc`; glibc serves the large ones
/// (activations, gradients: megabytes each) with fresh `mmap`s and unmaps them on `free`, so
/// every training step page-faults and zeroes the same memory again (`clear_page_erms` was 4.5%
/// of a LoRA job's profile, docs/performance.md). Raising the mmap threshold to 256 MiB and the
/// trim threshold to 1 GiB lets the heap keep and reuse those buffers; peak memory is still the
/// step's working set. Only on glibc; elsewhere nothing changes.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's tuning parameters; it is called before the process
    // starts other threads of its own, and glibc takes its arena locks while applying them.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size(" 1000 "), Some(1000));
        assert_eq!(parse_size("1.5G"), None);
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("99999999999999T"), None);
    }

    #[test]
    fn the_step_estimate_grows_with_the_shape() {
        // all-MiniLM-L6-v2 at the main job's shape: a few hundred MiB (the measured peak RSS
        // of a whole run is about 1 GiB, libraries included).
        let minilm = EncoderShape {
            layers: 6,
            hidden: 384,
            intermediate: 1536,
            heads: 12,
            parameters: 22_700_000,
        };
        let b = training_step_bytes(minilm, 32, 64, false);
        assert!((200 << 20..800 << 20).contains(&b), "{}", mib(b));
        assert!(training_step_bytes(minilm, 32, 128, false) > 2 * b - (100 << 20));
        assert!(training_step_bytes(minilm, 32, 64, true) > b);
        assert!(training_step_bytes(minilm, 100_000, 512, false) > 1 << 40);
    }
}
