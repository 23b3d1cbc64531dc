//! The run directory: resolved config, logs, checkpoints, plots and summary.
//!
//! ```text
//! runs/<name>/config.toml       the fully resolved config
//!             metrics.jsonl     training loss, lr, grad norm; validation per epoch; test at the end
//!             ranks.jsonl       every adjustment step: scores, pruned and expanded slots, ranks
//!                               (AdaLoRA: every masking: budget, triplet scores, rank pattern)
//!             checkpoints/      step-NNNNNN (resume), best (best validation epoch), final
//!             plots/ranks.png   rank of every adapted matrix against the step
//!             plots/loss.png    training loss and validation metric
//!             summary.json      written last: the run finished
//! ```

use super::checkpoint::{self, TrainerState};
use super::model::TrainableModel;
use crate::adalora::AdaLoraAllocator;
use crate::config::Config;
use crate::optim::AdamW;
use crate::sensitivity::SensitivityEma;
use anyhow::{Context, bail};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Step checkpoints kept for resuming (older ones are removed).
const KEEP_CHECKPOINTS: usize = 2;

/// An open run directory.
#[derive(Debug)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// Opens `root` for a new run (refusing to replace a finished or unfinished run unless
    /// `overwrite`) or for resuming (which requires a run there); writes the resolved config of
    /// a new run.
    pub fn prepare(
        root: &Path,
        config: &Config,
        resume: bool,
        overwrite: bool,
    ) -> anyhow::Result<Self> {
        let run = Self {
            root: root.to_path_buf(),
        };
        if resume {
            if !root.join("config.toml").exists() {
                bail!(
                    "--resume {}: no run there (config.toml missing)",
                    root.display()
                );
            }
            if root.join("summary.json").exists() {
                bail!(
                    "--resume {}: the run already finished (summary.json exists)",
                    root.display()
                );
            }
            return Ok(run);
        }
        let occupied = root.join("summary.json").exists() || root.join("config.toml").exists();
        if occupied && !overwrite {
            let what = if root.join("summary.json").exists() {
                "a finished run"
            } else {
                "an unfinished run (continue it with --resume)"
            };
            bail!(
                "{} holds {what}; pass --overwrite to replace it",
                root.display()
            );
        }
        if occupied {
            std::fs::remove_dir_all(root)
                .with_context(|| format!("removing {}", root.display()))?;
        }
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let text = toml::to_string(config).context("serialising the config")?;
        crate::io::write_atomic(&root.join("config.toml"), |w| w.write_all(text.as_bytes()))?;
        for f in ["metrics.jsonl", "ranks.jsonl"] {
            std::fs::write(root.join(f), "")?;
        }
        Ok(run)
    }

    /// How errors name this run's config.
    pub fn config_origin(&self) -> String {
        self.root.join("config.toml").display().to_string()
    }

    /// The checkpoints folder.
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    fn append(&self, file: &str, value: &serde_json::Value) -> anyhow::Result<()> {
        let path = self.root.join(file);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)?;
        writeln!(f, "{value}").with_context(|| format!("writing {}", path.display()))
    }

    /// Appends a line to `metrics.jsonl`.
    pub fn log_metrics(&self, value: &serde_json::Value) -> anyhow::Result<()> {
        self.append("metrics.jsonl", value)
    }

    /// Appends a line to `ranks.jsonl`.
    pub fn log_ranks(&self, value: &serde_json::Value) -> anyhow::Result<()> {
        self.append("ranks.jsonl", value)
    }

    /// The checkpoint to resume from: the newest valid one when resuming (an error if there is
    /// none), `None` for a new run.
    pub fn latest_checkpoint(&self, resume: bool) -> anyhow::Result<Option<PathBuf>> {
        if !resume {
            return Ok(None);
        }
        match checkpoint::latest_valid(&self.checkpoints()) {
            Some(dir) => Ok(Some(dir)),
            None => bail!(
                "--resume {}: no valid checkpoint to resume from",
                self.root.display()
            ),
        }
    }

    /// Restores model, optimiser and trainer state from a checkpoint, and cuts the logs back to
    /// that step so the resumed run appends exactly what an uninterrupted one would have.
    pub fn load_checkpoint<M: TrainableModel + ?Sized>(
        &self,
        dir: &Path,
        model: &mut M,
        optimiser: &mut AdamW,
    ) -> anyhow::Result<TrainerState> {
        let tensors = read_tensors(&dir.join("model.safetensors"))?;
        model
            .load_state(&tensors)
            .with_context(|| format!("loading {}", dir.display()))?;
        optimiser.load(&dir.join("optimiser.safetensors"))?;
        let text = std::fs::read_to_string(dir.join("state.json"))?;
        let state: TrainerState =
            serde_json::from_str(&text).with_context(|| format!("{}/state.json", dir.display()))?;
        for f in ["metrics.jsonl", "ranks.jsonl"] {
            truncate_log(&self.root.join(f), state.step)?;
        }
        Ok(state)
    }

    /// Writes a step checkpoint (with the allocator's own state, e.g. AdaLoRA's in
    /// `adalora.safetensors`, when given) and removes old ones.
    pub fn save_checkpoint<M: TrainableModel + ?Sized>(
        &self,
        state: &TrainerState,
        model: &M,
        optimiser: &AdamW,
        allocator: Option<&dyn CheckpointedState>,
    ) -> anyhow::Result<()> {
        let dir = self.checkpoints().join(format!("step-{:06}", state.step));
        checkpoint::write_checkpoint(&dir, |tmp| {
            Tensor::write_safetensors(&model.state(), tmp.join("model.safetensors"))?;
            fail::fail_point!("checkpoint.model_written", |a| Err(
                crate::faults::io_error("checkpoint.model_written", a).into()
            ));
            optimiser.save(&tmp.join("optimiser.safetensors"))?;
            std::fs::write(tmp.join("state.json"), serde_json::to_string_pretty(state)?)?;
            save_allocator(tmp, allocator)?;
            Ok(())
        })?;
        checkpoint::prune_old(&self.checkpoints(), state.step, KEEP_CHECKPOINTS);
        Ok(())
    }

    /// Writes the best validation epoch's trainable state.
    pub fn save_best<M: TrainableModel + ?Sized>(&self, model: &M) -> anyhow::Result<()> {
        checkpoint::write_checkpoint(&self.checkpoints().join("best"), |tmp| {
            Ok(Tensor::write_safetensors(
                &model.state(),
                tmp.join("model.safetensors"),
            )?)
        })
    }

    /// Loads the best validation epoch's trainable state into `model`.
    pub fn load_best<M: TrainableModel + ?Sized>(&self, model: &mut M) -> anyhow::Result<()> {
        load_model_checkpoint(&self.checkpoints().join("best"), model)
    }

    /// Writes the final trainable state and trainer state (and the allocator's state: for
    /// AdaLoRA, its `adalora.<k>.keep` flags are the final rank pattern).
    pub fn save_final<M: TrainableModel + ?Sized>(
        &self,
        state: &TrainerState,
        model: &M,
        allocator: Option<&dyn CheckpointedState>,
    ) -> anyhow::Result<()> {
        checkpoint::write_checkpoint(&self.checkpoints().join("final"), |tmp| {
            Tensor::write_safetensors(&model.state(), tmp.join("model.safetensors"))?;
            std::fs::write(tmp.join("state.json"), serde_json::to_string_pretty(state)?)?;
            save_allocator(tmp, allocator)
        })
    }

    /// Restores an allocator's state from the checkpoint `dir` (resuming).
    pub fn load_allocator(
        &self,
        dir: &Path,
        allocator: &mut dyn CheckpointedState,
    ) -> anyhow::Result<()> {
        let path = dir.join(allocator.file_name());
        let tensors = read_tensors(&path)?;
        allocator
            .load_tensors(&tensors)
            .with_context(|| format!("loading {}", path.display()))
    }

    /// Draws `plots/ranks.png` (when there are SVD adapters) and `plots/loss.png`.
    pub fn plots(
        &self,
        state: &TrainerState,
        labels: &[String],
        r_max: usize,
        metric: &str,
    ) -> anyhow::Result<()> {
        let dir = self.root.join("plots");
        std::fs::create_dir_all(&dir)?;
        if state
            .rank_history
            .first()
            .is_some_and(|(_, r)| !r.is_empty())
        {
            let steps: Vec<u64> = state.rank_history.iter().map(|(s, _)| *s).collect();
            let ranks: Vec<Vec<usize>> =
                state.rank_history.iter().map(|(_, r)| r.clone()).collect();
            crate::plots::rank_heatmap(
                &dir.join("ranks.png"),
                &steps,
                &ranks,
                labels,
                r_max,
                state.step,
            )?;
        }
        crate::plots::loss_curves(
            &dir.join("loss.png"),
            &state.loss_history,
            &state.validation_history,
            metric,
        )?;
        Ok(())
    }

    /// Logs an update's AdaLoRA mask or FlexLoRA allocation to `ranks.jsonl` and adds the new
    /// ranks to `state`'s history when they changed (the rank heatmap's rows).
    pub fn record_rank_changes(
        &self,
        state: &mut TrainerState,
        mask: Option<crate::adalora::MaskRecord>,
        allocation: Option<crate::allocation::AllocationRecord>,
    ) -> anyhow::Result<()> {
        if let Some(record) = mask {
            if state
                .rank_history
                .last()
                .is_none_or(|(_, r)| *r != record.ranks)
            {
                state.rank_history.push((state.step, record.ranks.clone()));
            }
            self.log_ranks(&serde_json::to_value(&record)?)?;
        }
        if let Some(record) = allocation {
            if !record.pruned.is_empty() || !record.expanded.is_empty() {
                state.rank_history.push((state.step, record.ranks.clone()));
            }
            self.log_ranks(&serde_json::to_value(&record)?)?;
        }
        Ok(())
    }
}

/// AdaLoRA's allocator state inside a checkpoint folder.
/// State an allocator keeps besides the model and the optimiser (sensitivity EMAs, AdaLoRA's
/// rank pattern), written into every checkpoint so a resumed run continues exactly.
pub trait CheckpointedState {
    /// The file inside a checkpoint folder.
    fn file_name(&self) -> &'static str;
    /// The tensors to write (CPU copies).
    fn tensors(&self) -> Vec<(String, Tensor)>;
    /// Restores tensors written by [`CheckpointedState::tensors`] for the same adapters.
    fn load_tensors(&mut self, tensors: &HashMap<String, Tensor>) -> anyhow::Result<()>;
}

impl CheckpointedState for AdaLoraAllocator {
    fn file_name(&self) -> &'static str {
        "adalora.safetensors"
    }
    fn tensors(&self) -> Vec<(String, Tensor)> {
        self.state()
    }
    fn load_tensors(&mut self, tensors: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        Ok(self.load_state(tensors)?)
    }
}

/// FlexLoRA's `importance = "sensitivity"` EMAs, in `sensitivity.safetensors`.
impl CheckpointedState for SensitivityEma {
    fn file_name(&self) -> &'static str {
        "sensitivity.safetensors"
    }
    fn tensors(&self) -> Vec<(String, Tensor)> {
        self.state("sensitivity")
    }
    fn load_tensors(&mut self, tensors: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        crate::io::check_saved_tensors(&self.tensors(), tensors, "the sensitivity EMAs")
            .map_err(anyhow::Error::msg)?;
        self.load_state("sensitivity", tensors)
            .map_err(anyhow::Error::msg)
    }
}

fn save_allocator(dir: &Path, allocator: Option<&dyn CheckpointedState>) -> anyhow::Result<()> {
    if let Some(a) = allocator {
        Tensor::write_safetensors(&a.tensors(), dir.join(a.file_name()))?;
    }
    Ok(())
}

/// Loads `model.safetensors` of a verified checkpoint folder into `model`.
pub fn load_model_checkpoint<M: TrainableModel + ?Sized>(
    dir: &Path,
    model: &mut M,
) -> anyhow::Result<()> {
    checkpoint::verify_checkpoint(dir)?;
    let tensors = read_tensors(&dir.join("model.safetensors"))?;
    model
        .load_state(&tensors)
        .with_context(|| format!("loading {}", dir.display()))
}

fn read_tensors(path: &Path) -> anyhow::Result<HashMap<String, Tensor>> {
    Ok(Tensor::read_safetensors(path)
        .with_context(|| format!("reading {}", path.display()))?
        .into_iter()
        .collect())
}

/// Keeps the lines of a JSONL log whose `step` is at most `step`.
fn truncate_log(path: &Path, step: u64) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // Every record of steps up to the checkpoint's was written before it, except the test
    // record of the final phase (written after the last checkpoint, at the same step): a run
    // killed after logging it and resumed logs it again. A half-written last line (killed mid
    // append) does not parse and goes too.
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .filter(|v| v.get("test").is_none())
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .collect();
    crate::io::write_atomic(path, |w| {
        for l in kept {
            writeln!(w, "{l}")?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Short labels for adapted matrices (`L3 query`, `L3 attn.out`, `L3 inter`, `L3 out`).
pub fn matrix_labels(paths: &[String]) -> Vec<String> {
    paths
        .iter()
        .map(|p| {
            let layer = p
                .split('.')
                .skip_while(|s| *s != "layer" && *s != "layers")
                .nth(1)
                .unwrap_or("?");
            let module = if p.ends_with("attention.output.dense") {
                "attn.out"
            } else if p.ends_with("intermediate.dense") {
                "inter"
            } else if p.ends_with("output.dense") {
                "out"
            } else {
                p.rsplit('.').next().unwrap_or(p)
            };
            format!("L{layer} {module}")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::matrix_labels;

    #[test]
    fn labels_name_layer_and_module_in_every_layout() {
        let paths = [
            "encoder.layer.3.attention.self.query",
            "encoder.layer.3.attention.output.dense",
            "layers.11.self_attn.q_proj",
            "layers.2.mlp.down_proj",
        ];
        let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            matrix_labels(&paths),
            ["L3 query", "L3 attn.out", "L11 q_proj", "L2 down_proj"]
        );
    }
}
