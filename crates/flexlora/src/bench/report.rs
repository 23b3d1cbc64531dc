//! The benchmark's figures, as `bench.json` and as the Markdown of `docs/benchmarks.md`, each
//! ratio next to its target.

use super::BenchOptions;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// One method of the step benchmark.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRow {
    /// flexlora's method.
    pub method: String,
    /// flexlora's median milliseconds per step.
    pub ours_ms: f64,
    /// PEFT's method (none for FlexLoRA, which PEFT does not have).
    pub peft_method: Option<String>,
    /// PEFT's median milliseconds per step.
    pub peft_ms: Option<f64>,
    /// Timed steps per side.
    pub samples: usize,
}

/// Inference throughput.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PredictRow {
    /// Test sentences.
    pub examples: usize,
    /// flexlora's sentences per second (best of the repeats).
    pub ours_per_s: f64,
    /// PEFT's sentences per second (best of the repeats).
    pub peft_per_s: f64,
}

/// One whole-job comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRow {
    /// flexlora's method.
    pub ours_method: String,
    /// PEFT's method.
    pub peft_method: String,
    /// Wall seconds of `flexlora train`.
    pub ours_seconds: f64,
    /// Wall seconds of the PEFT script (imports included, as a user waits for them).
    pub peft_seconds: f64,
    /// Peak resident MiB of `flexlora train`.
    pub ours_rss_mib: f64,
    /// Peak resident MiB of the PEFT script.
    pub peft_rss_mib: f64,
    /// flexlora's test accuracy (a check that both trained, not a comparison of methods).
    pub ours_accuracy: f64,
    /// PEFT's test accuracy.
    pub peft_accuracy: f64,
    /// Optimiser steps.
    pub steps: u64,
    /// flexlora's allocator time over its training time.
    pub allocation_fraction: f64,
}

/// Everything `flexlora bench` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    /// The command.
    pub command_line: String,
    /// CPU model and cores.
    pub machine: String,
    /// Software versions.
    pub versions: String,
    /// Threads on both sides.
    pub threads: usize,
    /// `f32`, or `bf16` (flexlora's frozen base in bfloat16, PEFT under bf16 autocast).
    #[serde(default = "f32_name")]
    pub precision: String,
    /// Whether this was the short mode (figures not meaningful).
    pub quick: bool,
    /// The step benchmark's shapes.
    pub shapes: String,
    /// GEMM GFLOP of flexlora's training step (counted; linear layers on the real tokens).
    pub step_gflop: f64,
    /// `(sequences, len)` of each of flexlora's attention groups for the step's batch; empty
    /// in reports made before attention was grouped by length (it ran at the padded shape).
    #[serde(default)]
    pub attention_groups: Vec<(i64, i64)>,
    /// GEMM GFLOP of a padded implementation's step (PEFT's: every position of the batch).
    pub padded_step_gflop: f64,
    /// GEMM GFLOP/s of this machine on the step's shapes.
    pub gemm_peak_gflops: f64,
    /// `(m, k, n, GFLOP/s)` per shape.
    pub gemm_per_shape: Vec<(i64, i64, i64, f64)>,
    /// The step-weighted GEMM rate of each library alone (`mkl`, `onednn`); empty in reports
    /// made before the libraries were measured apart.
    #[serde(default)]
    pub gemm_peak_by_library: Vec<(String, f64)>,
    /// The library flexlora's linear layers used (`onednn` or `mkl`, [`crate::gemm`]).
    #[serde(default)]
    pub cpu_gemm: String,
    /// Step benchmark rows.
    pub steps: Vec<StepRow>,
    /// Inference throughput.
    pub predict: Option<PredictRow>,
    /// Whole-job rows.
    pub jobs: Vec<JobRow>,
}

fn f32_name() -> String {
    "f32".into()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cpu}, {cores} cores available")
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

impl BenchReport {
    /// An empty report for `opts`.
    pub fn new(opts: &BenchOptions, threads: usize) -> Self {
        Self {
            command_line: opts.command_line.clone(),
            machine: machine(),
            versions: String::new(),
            threads,
            precision: f32_name(),
            quick: opts.quick,
            shapes: String::new(),
            step_gflop: 0.0,
            attention_groups: Vec::new(),
            padded_step_gflop: 0.0,
            gemm_peak_gflops: 0.0,
            gemm_per_shape: Vec::new(),
            gemm_peak_by_library: Vec::new(),
            cpu_gemm: crate::gemm::CpuGemm::current().name().into(),
            steps: Vec::new(),
            predict: None,
            jobs: Vec::new(),
        }
    }

    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Benchmarks: flexlora against transformers + PEFT\n");
        let _ = writeln!(s, "Command: `{}`\n", self.command_line);
        let _ = writeln!(
            s,
            "Machine: {}; {} threads on both sides.\n",
            self.machine, self.threads
        );
        let _ = writeln!(s, "Software: {}.\n", self.versions);
        if self.precision != "f32" {
            let _ = writeln!(
                s,
                "Precision: {} (flexlora: frozen base layers in bfloat16, `training.precision`; PEFT: \
                 forward and loss under `torch.autocast(\"cpu\", torch.bfloat16)`). The GEMM peak \
                 and efficiency below are float32 figures.\n",
                self.precision
            );
        }
        if self.quick {
            let _ = writeln!(
                s,
                "**Short mode: a handful of steps; these figures mean nothing.**\n"
            );
        }
        let _ = writeln!(
            s,
            "Every figure below comes from this one run, the two sides alternating; ratios are \
             flexlora / PEFT (time) unless said otherwise.\n"
        );
        let _ = writeln!(s, "## Training step at fixed shapes\n");
        let _ = writeln!(
            s,
            "all-MiniLM-L6-v2, batch {}, adapters on all six linear layers of every encoder layer \
             at the config's rank, classifier trained, dropout on, AdamW + clipping + scheduler, \
             AdaLoRA's update every step. Median of the timed steps.\n",
            self.shapes
        );
        let _ = writeln!(
            s,
            "| method | flexlora ms/step | PEFT ms/step | ratio | target | |"
        );
        let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- |");
        for r in &self.steps {
            match (r.peft_ms, &r.peft_method) {
                (Some(p), Some(pm)) => {
                    let ratio = r.ours_ms / p;
                    let _ = writeln!(
                        s,
                        "| {} (PEFT {pm}) | {:.0} | {p:.0} | {ratio:.2} | ≤ 0.75 | {} |",
                        r.method,
                        r.ours_ms,
                        verdict(ratio <= 0.75)
                    );
                }
                _ => {
                    let _ = writeln!(
                        s,
                        "| {} | {:.0} | (not in PEFT) | | | |",
                        r.method, r.ours_ms
                    );
                }
            }
        }
        if let Some(lora) = self.steps.first() {
            let achieved = self.step_gflop / (lora.ours_ms / 1e3);
            let frac = achieved / self.gemm_peak_gflops;
            let by_library = if self.gemm_peak_by_library.is_empty() {
                String::new()
            } else {
                let each: Vec<String> = self
                    .gemm_peak_by_library
                    .iter()
                    .map(|(lib, g)| format!("{lib} alone {g:.0}"))
                    .collect();
                format!(" ({})", each.join(", "))
            };
            let attention = if self.attention_groups.is_empty() {
                "attention keeps the padded shape".to_string()
            } else {
                let groups: Vec<String> = self
                    .attention_groups
                    .iter()
                    .map(|(n, l)| format!("{n} × {l}"))
                    .collect();
                format!(
                    "attention runs on groups of sequences of similar length, each padded to \
                     its longest: {}; adapters trained through the merged weight",
                    groups.join(", ")
                )
            };
            let _ = writeln!(
                s,
                "\nGEMM work of one step, counted from the shapes (forward, input gradients, adapter \
                 gradients; frozen weights get no weight gradient): {:.1} GFLOP for flexlora, which \
                 runs every linear layer on the real tokens only (padding is packed away; \
                 {attention}), and {:.1} GFLOP for a padded implementation such as \
                 transformers. This machine's GEMM rate on flexlora's shapes, measured in this run \
                 with each shape on the faster of LibTorch's GEMM libraries: {:.0} GFLOP/s{}. \
                 flexlora's {} step (linear layers on {}) achieves {achieved:.0} GFLOP/s = {:.0}% \
                 of it (target ≥ 70%: {}).",
                self.step_gflop,
                self.padded_step_gflop,
                self.gemm_peak_gflops,
                by_library,
                lora.method,
                if self.cpu_gemm.is_empty() {
                    "mkl"
                } else {
                    &self.cpu_gemm
                },
                100.0 * frac,
                verdict(frac >= 0.70)
            );
            if let Some(p) = lora.peft_ms {
                let _ = writeln!(
                    s,
                    "PEFT's step runs its {:.1} GFLOP at {:.0} GFLOP/s.",
                    self.padded_step_gflop,
                    self.padded_step_gflop / (p / 1e3),
                );
            }
            let shapes: Vec<String> = self
                .gemm_per_shape
                .iter()
                .filter(|(m, _, _, _)| *m >= 256)
                .map(|(m, k, n, g)| format!("{m}×{k}×{n}: {g:.0}"))
                .collect();
            let _ = writeln!(
                s,
                "\nGFLOP/s per large shape (m×k×n): {}.",
                shapes.join(", ")
            );
        }
        if let Some(p) = &self.predict {
            let ratio = p.ours_per_s / p.peft_per_s;
            let _ = writeln!(
                s,
                "\n## Inference\n\n`predict` over {} test sentences (batches by length, no gradients): \
                 flexlora {:.0} sentences/s, PEFT {:.0} sentences/s: {ratio:.2}× PEFT's throughput.",
                p.examples, p.ours_per_s, p.peft_per_s
            );
        }
        if !self.jobs.is_empty() {
            let _ = writeln!(s, "\n## The whole main job\n");
            let _ = writeln!(
                s,
                "Train + validation every epoch + test, each side a separate process started and \
                 timed from outside (PEFT's time includes importing torch, transformers and PEFT, \
                 as a user waits for it), dynamic padding on both sides, the same split.\n"
            );
            let _ = writeln!(
                s,
                "| flexlora | PEFT | steps | flexlora s | PEFT s | ratio (target ≤ 0.5) | flexlora peak MiB | PEFT peak MiB | test acc. flexlora / PEFT | allocators' share of training (target < 1%) |"
            );
            let _ = writeln!(
                s,
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
            );
            for j in &self.jobs {
                let ratio = j.ours_seconds / j.peft_seconds;
                let share = if j.ours_method == "lora" {
                    "—".to_string()
                } else {
                    format!(
                        "{:.2}% ({})",
                        100.0 * j.allocation_fraction,
                        verdict(j.allocation_fraction < 0.01)
                    )
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:.0} | {:.0} | {ratio:.2} ({}) | {:.0} | {:.0} ({}) | {:.1} / {:.1} | {share} |",
                    j.ours_method,
                    j.peft_method,
                    j.steps,
                    j.ours_seconds,
                    j.peft_seconds,
                    verdict(ratio <= 0.5),
                    j.ours_rss_mib,
                    j.peft_rss_mib,
                    if j.ours_rss_mib <= j.peft_rss_mib {
                        "ours ≤ PEFT's: met"
                    } else {
                        "ours > PEFT's: **missed**"
                    },
                    100.0 * j.ours_accuracy,
                    100.0 * j.peft_accuracy,
                );
            }
        }
        s
    }
}
