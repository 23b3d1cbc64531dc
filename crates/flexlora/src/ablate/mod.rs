//! `flexlora ablate`: every method × seed through `flexlora train`, then one table.
//!
//! Each run is a child `flexlora train` process writing an ordinary run directory,
//! `<output>/runs/<method>-lr<lr>-seed<seed>`, so a run here is exactly what a user gets from
//! `flexlora train` with the same config. The runner can be interrupted at any point and
//! rerun with the same arguments:
//! - a finished run (its `summary.json` exists) is reused, after checking that its saved config
//!   is the one this invocation would train (a different one is an error: results are never
//!   silently mixed);
//! - an unfinished run with a valid checkpoint is resumed (`flexlora train --resume`), one
//!   without is started again;
//! - the children die with the runner (Linux: `PR_SET_PDEATHSIG`), so no orphan keeps writing.
//!
//! Learning rates: `--lr-grid <method>=<lr>,<lr>,...` trains seed 0 at every rate, keeps the
//! rate with the best *validation* metric (ties: the first listed) and trains the other seeds at
//! it; the chosen seed-0 run is one of the table's runs. Nothing is ever chosen on test data.

mod exec;
mod report;
mod variants;

pub use report::{LrChoice, MethodRow, Report};
pub use variants::{NAMES, Variant, variant};

use crate::config::Config;
use crate::train::Summary;
use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What `flexlora ablate` was asked to do.
#[derive(Debug, Clone)]
pub struct AblateOptions {
    /// The base run config (TOML).
    pub config: PathBuf,
    /// `--set KEY=VALUE` overrides for every method.
    pub overrides: Vec<String>,
    /// Method names (see [`NAMES`]), in table order.
    pub methods: Vec<String>,
    /// Seeds `0..seeds`.
    pub seeds: u64,
    /// Runs at the same time (each gets `cores / jobs` threads).
    pub jobs: usize,
    /// The output folder.
    pub output: PathBuf,
    /// The method the paired comparison is against (default: the first).
    pub baseline: Option<String>,
    /// `METHOD:KEY=VALUE` overrides for one method.
    pub method_overrides: Vec<String>,
    /// `METHOD=LR,LR,...` learning-rate grids chosen on validation.
    pub lr_grids: Vec<String>,
    /// Only rebuild the table from the finished runs; train nothing.
    pub report_only: bool,
    /// No progress bar.
    pub quiet: bool,
    /// The command line, for the report.
    pub command_line: String,
}

/// One planned training run.
#[derive(Debug, Clone)]
pub struct PlannedRun {
    /// The method name.
    pub method: String,
    /// The seed.
    pub seed: u64,
    /// The learning rate as written in the run's name (`5e-3`).
    pub lr: String,
    /// Every override after the base config's file.
    pub overrides: Vec<String>,
    /// The config it trains (validated).
    pub config: Config,
    /// Its run directory.
    pub dir: PathBuf,
}

/// A method's settings before the learning rate is fixed.
struct MethodPlan {
    variant: Variant,
    overrides: Vec<String>,
    grid: Option<Vec<String>>,
}

/// Runs (or reuses) every method × seed and writes `ablation.md`, `ablation.csv` and
/// `ablation.png` into `opts.output`. Returns the report.
pub fn ablate(opts: &AblateOptions) -> anyhow::Result<Report> {
    if opts.methods.is_empty() {
        bail!("--methods: give at least one method ({})", NAMES.join(", "));
    }
    if opts.seeds == 0 {
        bail!("--seeds: expected at least 1");
    }
    if opts.jobs == 0 {
        bail!("--jobs: expected at least 1");
    }
    let base = Config::load(&opts.config, &opts.overrides)?.config;
    let plans = method_plans(opts, &base)?;
    let baseline = match &opts.baseline {
        Some(b) if !opts.methods.contains(b) => {
            bail!(
                "--baseline {b}: not among --methods ({})",
                opts.methods.join(", ")
            )
        }
        Some(b) => b.clone(),
        None => opts.methods[0].clone(),
    };
    let threads = exec::threads_per_job(opts.jobs);
    let runs_dir = opts.output.join("runs");
    let plan_run = |method: &MethodPlan, seed: u64, lr: Option<&str>| {
        plan_one(opts, &runs_dir, method, seed, lr, threads)
    };

    // Phase 1: learning-rate search on seed 0, for the methods with a grid.
    let mut chosen: BTreeMap<String, LrChoice> = BTreeMap::new();
    let mut search = Vec::new();
    for m in plans.iter().filter(|m| m.grid.is_some()) {
        for lr in m.grid.iter().flatten() {
            search.push(plan_run(m, 0, Some(lr))?);
        }
    }
    exec::run_all(&opts.config, &search, opts, "learning-rate search")?;
    for m in plans.iter().filter(|m| m.grid.is_some()) {
        let mut tried = Vec::new();
        for run in search.iter().filter(|r| r.method == m.variant.name) {
            match read_summary(&run.dir) {
                Ok(s) => tried.push((run.lr.clone(), s.validation_metric)),
                // --report-only before the search finished: choose among the finished rates.
                Err(_) if opts.report_only => {}
                Err(e) => return Err(e),
            }
        }
        // The first best in grid order wins ties.
        let best = tried
            .iter()
            .fold(None::<&(String, f64)>, |best, t| match best {
                Some(b) if b.1 >= t.1 => Some(b),
                _ => Some(t),
            })
            .map(|(lr, _)| lr.clone());
        if let Some(lr) = best {
            chosen.insert(m.variant.name.clone(), LrChoice { chosen: lr, tried });
        }
    }

    // Phase 2: every method at its rate, seed by seed (so an interrupted runner leaves whole
    // seeds behind it).
    let mut runs = Vec::new();
    for seed in 0..opts.seeds {
        for m in &plans {
            let lr = match (&m.grid, chosen.get(&m.variant.name)) {
                (Some(_), Some(c)) => Some(c.chosen.as_str()),
                (Some(_), None) => continue, // report-only before the search finished
                (None, _) => None,
            };
            runs.push(plan_run(m, seed, lr)?);
        }
    }
    exec::run_all(&opts.config, &runs, opts, "ablation")?;

    let mut finished = Vec::new();
    for run in &runs {
        match read_summary(&run.dir) {
            Ok(s) => finished.push((run.clone(), s)),
            Err(_) if opts.report_only => {}
            Err(e) => return Err(e),
        }
    }
    let report = Report::build(
        &opts.methods,
        &plans.iter().map(|m| m.variant.clone()).collect::<Vec<_>>(),
        &baseline,
        &finished,
        &chosen,
        &opts.command_line,
    );
    report.write(&opts.output)?;
    Ok(report)
}

/// Resolves every method's variant, its own overrides and its learning-rate grid.
fn method_plans(opts: &AblateOptions, base: &Config) -> anyhow::Result<Vec<MethodPlan>> {
    let mut seen = std::collections::HashSet::new();
    let mut plans = Vec::new();
    for name in &opts.methods {
        if !seen.insert(name.clone()) {
            bail!("--methods: {name} is listed twice");
        }
        let variant = variant(name, base).with_context(|| {
            format!(
                "--methods: unknown method `{name}`; expected one of {}",
                NAMES.join(", ")
            )
        })?;
        plans.push(MethodPlan {
            variant,
            overrides: Vec::new(),
            grid: None,
        });
    }
    for arg in &opts.method_overrides {
        let (method, kv) = arg.split_once(':').with_context(|| {
            format!("--set-for {arg}: expected METHOD:KEY=VALUE, e.g. lora:optimiser.lr=2e-3")
        })?;
        let plan = plans
            .iter_mut()
            .find(|p| p.variant.name == method)
            .with_context(|| format!("--set-for {arg}: {method} is not among --methods"))?;
        plan.overrides.push(kv.to_string());
    }
    for arg in &opts.lr_grids {
        let (method, list) = arg.split_once('=').with_context(|| {
            format!("--lr-grid {arg}: expected METHOD=LR,LR,..., e.g. adalora=2e-3,5e-3,1e-2")
        })?;
        let plan = plans
            .iter_mut()
            .find(|p| p.variant.name == method)
            .with_context(|| format!("--lr-grid {arg}: {method} is not among --methods"))?;
        let mut grid = Vec::new();
        for lr in list.split(',').map(str::trim) {
            match lr.parse::<f64>() {
                Ok(x) if x > 0.0 && x.is_finite() => grid.push(lr_name(x)),
                _ => bail!("--lr-grid {arg}: `{lr}` is not a positive learning rate"),
            }
        }
        if grid.is_empty() {
            bail!("--lr-grid {arg}: no learning rate given");
        }
        plan.grid = Some(grid);
    }
    Ok(plans)
}

/// The run of `method` with `seed` (and the learning rate `lr` when it has a grid).
fn plan_one(
    opts: &AblateOptions,
    runs_dir: &Path,
    method: &MethodPlan,
    seed: u64,
    lr: Option<&str>,
    threads: Option<usize>,
) -> anyhow::Result<PlannedRun> {
    let mut overrides = opts.overrides.clone();
    overrides.extend(method.variant.overrides.iter().cloned());
    overrides.extend(method.overrides.iter().cloned());
    if let Some(lr) = lr {
        overrides.push(format!("optimiser.lr={lr}"));
    }
    overrides.push(format!("training.seed={seed}"));
    if let Some(t) = threads {
        overrides.push(format!("training.threads={t}"));
    }
    let config = Config::load(&opts.config, &overrides)
        .with_context(|| format!("method {}", method.variant.name))?
        .config;
    let lr = lr_name(config.optimiser.lr);
    let dir = runs_dir.join(format!("{}-lr{lr}-seed{seed}", method.variant.name));
    Ok(PlannedRun {
        method: method.variant.name.clone(),
        seed,
        lr,
        overrides,
        config,
        dir,
    })
}

/// A learning rate as a short, exact name: `0.005` → `5e-3`.
pub fn lr_name(lr: f64) -> String {
    format!("{lr:e}")
}

/// Reads `<dir>/summary.json`.
pub fn read_summary(dir: &Path) -> anyhow::Result<Summary> {
    let path = dir.join("summary.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a run summary", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lr_names_are_short_and_exact() {
        assert_eq!(lr_name(0.005), "5e-3");
        assert_eq!(lr_name(2e-3), "2e-3");
        assert_eq!(lr_name(5e-5), "5e-5");
        assert_eq!(lr_name(0.0012), "1.2e-3");
        assert_eq!(lr_name(1.0), "1e0");
    }
}
