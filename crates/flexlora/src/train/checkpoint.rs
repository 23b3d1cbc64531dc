//! Checkpoints: a folder per checkpoint, written whole under a temporary name and renamed,
//! with a manifest of sizes and SHA-256 sums so a partial or corrupt one is detected.
//!
//! `checkpoints/step-000123/` holds `model.safetensors` (the trainable state),
//! `optimiser.safetensors` (moments and per-slot step counts), `state.json` (the trainer's
//! position and histories), for AdaLoRA `adalora.safetensors` (the sensitivity EMAs and the
//! rank pattern, see [`crate::adalora::AdaLoraAllocator::state`]) and `manifest.json`, written
//! last.

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The best validation result so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestEpoch {
    /// 0-based epoch.
    pub epoch: u64,
    /// Optimiser step at the end of that epoch.
    pub step: u64,
    /// Its validation metric.
    pub metric: f64,
}

/// Where training stands: enough, with the model and optimiser files, to continue
/// bit-identically (the random generator is re-seeded from the seed and step at every step, and
/// the data order is a function of the seed and epoch, so neither needs saving).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimiser steps done.
    pub step: u64,
    /// Current epoch (0-based).
    pub epoch: u64,
    /// Micro-batches of this epoch already consumed.
    pub micro_in_epoch: u64,
    /// Best validation epoch so far.
    pub best: Option<BestEpoch>,
    /// `(step, ranks)` at the start and after every adjustment that changed ranks.
    pub rank_history: Vec<(u64, Vec<usize>)>,
    /// `(step, mean training loss)` at each logging point.
    pub loss_history: Vec<(u64, f64)>,
    /// `(step, validation metric)` at each epoch end.
    pub validation_history: Vec<(u64, f64)>,
    /// Training time so far, in seconds (evaluation excluded).
    pub train_seconds: f64,
    /// The part of `train_seconds` spent in the rank allocators.
    #[serde(default)]
    pub allocation_seconds: f64,
    /// How much FlexLoRA's allocation has acted so far (moves, churn, ranking stability).
    #[serde(default)]
    pub allocation_activity: flexlora_core::AllocationActivity,
    /// The running sum and count of training losses since the last logging point, so that a
    /// run resumed in the middle of a logging window logs the same mean as an uninterrupted one.
    #[serde(default)]
    pub loss_window: (f64, u64),
}

const FILES: [&str; 3] = ["model.safetensors", "optimiser.safetensors", "state.json"];

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

/// Writes a checkpoint folder `dir` atomically: `write(tmp_dir)` fills a temporary sibling
/// folder, a manifest of every file's size and hash is added, and the folder is put in place
/// with [`crate::io::replace_dir`] (an older one of the same name, e.g. `best`, stays whole
/// until the new one is complete).
pub fn write_checkpoint(
    dir: &Path,
    write: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let parent = dir.parent().context("checkpoint folder has no parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = dir
        .file_name()
        .context("checkpoint folder has no name")?
        .to_string_lossy();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let result = (|| -> anyhow::Result<()> {
        write(&tmp)?;
        fail::fail_point!("checkpoint.files_written", |a| Err(
            crate::faults::io_error("checkpoint.files_written", a).into()
        ));
        let mut manifest = BTreeMap::new();
        for entry in std::fs::read_dir(&tmp)? {
            let p = entry?.path();
            let size = std::fs::metadata(&p)?.len();
            let file = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            manifest.insert(
                file,
                serde_json::json!({"size": size, "sha256": sha256_file(&p)?}),
            );
        }
        crate::io::write_atomic(&tmp.join("manifest.json"), |w| {
            serde_json::to_writer_pretty(&mut *w, &manifest).map_err(std::io::Error::other)
        })?;
        fail::fail_point!("checkpoint.manifest_written", |a| Err(
            crate::faults::io_error("checkpoint.manifest_written", a).into()
        ));
        crate::io::replace_dir(&tmp, dir)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result.with_context(|| format!("writing checkpoint {}", dir.display()))
}

/// Checks a checkpoint folder against its manifest (presence, sizes, hashes).
pub fn verify_checkpoint(dir: &Path) -> anyhow::Result<()> {
    let manifest_path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("{}: no manifest (an incomplete checkpoint)", dir.display()))?;
    let manifest: BTreeMap<String, serde_json::Value> = serde_json::from_str(&text)
        .with_context(|| format!("{}: unreadable", manifest_path.display()))?;
    for (file, meta) in &manifest {
        let p = dir.join(file);
        let size = std::fs::metadata(&p).map(|m| m.len()).ok();
        if size != meta["size"].as_u64() {
            bail!(
                "{}: size {size:?} differs from the manifest's {}",
                p.display(),
                meta["size"]
            );
        }
        if Some(sha256_file(&p)?.as_str()) != meta["sha256"].as_str() {
            bail!(
                "{}: content differs from the manifest (corrupt)",
                p.display()
            );
        }
    }
    Ok(())
}

/// Step checkpoints (`step-NNNNNN`) under `root`, newest first.
pub fn step_checkpoints(root: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    v.sort_by_key(|(step, _)| std::cmp::Reverse(*step));
    v
}

/// The newest step checkpoint that verifies; corrupt or partial ones are reported on stderr
/// and skipped.
pub fn latest_valid(root: &Path) -> Option<PathBuf> {
    for (_, dir) in step_checkpoints(root) {
        match verify_checkpoint(&dir) {
            Ok(()) => return Some(dir),
            Err(e) => eprintln!("warning: skipping checkpoint: {e:#}"),
        }
    }
    None
}

/// After writing the checkpoint of step `current`: removes step checkpoints newer than it
/// (left by a run that was resumed from an older one because they were corrupt) and all but the
/// newest `keep` of the others.
pub fn prune_old(root: &Path, current: u64, keep: usize) {
    let (newer, older): (Vec<_>, Vec<_>) = step_checkpoints(root)
        .into_iter()
        .partition(|(s, _)| *s > current);
    for (_, dir) in newer.into_iter().chain(older.into_iter().skip(keep)) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The file names inside a step checkpoint.
pub fn files() -> [&'static str; 3] {
    FILES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_and_partial_checkpoints_are_detected() {
        let root = tempfile::tempdir().unwrap();
        for step in [10u64, 20] {
            write_checkpoint(&root.path().join(format!("step-{step:06}")), |d| {
                for f in FILES {
                    std::fs::write(d.join(f), format!("{f} at {step}"))?;
                }
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(
            latest_valid(root.path()).unwrap().file_name().unwrap(),
            "step-000020"
        );
        // Corrupt the newest: the previous one is used.
        std::fs::write(
            root.path().join("step-000020/state.json"),
            "state.json at 99",
        )
        .unwrap();
        assert!(verify_checkpoint(&root.path().join("step-000020")).is_err());
        assert_eq!(
            latest_valid(root.path()).unwrap().file_name().unwrap(),
            "step-000010"
        );
        // A folder without manifest (killed mid-write before the rename cannot leave one under
        // the final name, but a user copy might) is skipped too.
        std::fs::create_dir_all(root.path().join("step-000030")).unwrap();
        assert_eq!(
            latest_valid(root.path()).unwrap().file_name().unwrap(),
            "step-000010"
        );
        prune_old(root.path(), 10, 1);
        let left: Vec<u64> = step_checkpoints(root.path())
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(left, vec![10]);
    }
}
