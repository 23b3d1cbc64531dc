//! The ablation table: per method the mean, standard deviation and per-seed values of the task
//! metric, a paired comparison with the baseline, trainable parameters, total rank and time;
//! written as `ablation.md`, `ablation.csv` and `ablation.png`.

use super::{PlannedRun, Variant};
use crate::stats::{mean_sd, paired_t_test};
use crate::train::Summary;
use anyhow::Context;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

/// One method's line of the table. Metric values are as `summary.json` has them (fractions
/// for accuracy and F1); the Markdown table shows them ×100.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodRow {
    /// The method name.
    pub method: String,
    /// What the method is.
    pub description: String,
    /// The learning rate of its runs.
    pub lr: String,
    /// `(seed, test metric)` of every finished run, by seed.
    pub per_seed: Vec<(u64, f64)>,
    /// Mean of the test metric over seeds.
    pub mean: f64,
    /// Sample standard deviation (`n − 1`; 0 for one seed).
    pub sd: f64,
    /// Mean over the seeds both have of (this − baseline); `None` for the baseline itself or
    /// without common seeds.
    pub delta: Option<f64>,
    /// Two-sided p-value of the paired t-test on those differences (`None` below two pairs or
    /// when every difference is equal).
    pub p_value: Option<f64>,
    /// Trainable parameters at the end of the run (mean over seeds, rounded).
    pub trainable_parameters: i64,
    /// Total adapter rank at the end (mean over seeds; 0 without adapters).
    pub total_rank: f64,
    /// Training seconds per run (mean).
    pub train_seconds: f64,
}

/// A learning rate chosen on validation: the rate kept and every `(rate, validation metric)`
/// tried, in grid order.
#[derive(Debug, Clone, PartialEq)]
pub struct LrChoice {
    /// The rate kept (the best validation metric; ties: the first tried).
    pub chosen: String,
    /// Every rate tried with its validation metric.
    pub tried: Vec<(String, f64)>,
}

/// The whole table, with the choices behind it.
#[derive(Debug, Clone)]
pub struct Report {
    /// The task metric's name.
    pub metric: String,
    /// The baseline of the paired comparison.
    pub baseline: String,
    /// One row per method with at least one finished run, in `--methods` order.
    pub rows: Vec<MethodRow>,
    /// Learning rates chosen on validation, by method.
    pub lr_search: BTreeMap<String, LrChoice>,
    /// Examples in train / validation / test.
    pub examples: [usize; 3],
    /// The command that produced it.
    pub command_line: String,
}

impl Report {
    /// Builds the table from the finished runs.
    pub fn build(
        methods: &[String],
        variants: &[Variant],
        baseline: &str,
        finished: &[(PlannedRun, Summary)],
        lr_search: &BTreeMap<String, LrChoice>,
        command_line: &str,
    ) -> Report {
        let by_method = |m: &str| -> BTreeMap<u64, (&PlannedRun, &Summary)> {
            finished
                .iter()
                .filter(|(r, _)| r.method == m)
                .map(|(r, s)| (r.seed, (r, s)))
                .collect()
        };
        let base = by_method(baseline);
        let mut rows = Vec::new();
        for m in methods {
            let runs = by_method(m);
            let Some((first, _)) = runs.values().next() else {
                continue;
            };
            let per_seed: Vec<(u64, f64)> = runs
                .iter()
                .map(|(&s, (_, sum))| (s, sum.test_metric))
                .collect();
            let values: Vec<f64> = per_seed.iter().map(|&(_, v)| v).collect();
            let (mean, sd) = mean_sd(&values);
            let (delta, p_value) = if m == baseline {
                (None, None)
            } else {
                let pairs: Vec<(f64, f64)> = runs
                    .iter()
                    .filter_map(|(s, (_, sum))| {
                        base.get(s).map(|(_, b)| (sum.test_metric, b.test_metric))
                    })
                    .collect();
                if pairs.is_empty() {
                    (None, None)
                } else {
                    let (a, b): (Vec<f64>, Vec<f64>) = pairs.into_iter().unzip();
                    let (d, p) = paired_t_test(&a, &b);
                    (Some(d), p)
                }
            };
            let avg = |f: &dyn Fn(&Summary) -> f64| {
                runs.values().map(|(_, s)| f(s)).sum::<f64>() / runs.len() as f64
            };
            rows.push(MethodRow {
                method: m.clone(),
                description: variants
                    .iter()
                    .find(|v| v.name == *m)
                    .map(|v| v.description.clone())
                    .unwrap_or_default(),
                lr: first.lr.clone(),
                per_seed,
                mean,
                sd,
                delta,
                p_value,
                trainable_parameters: avg(&|s| s.trainable_parameters as f64).round() as i64,
                total_rank: avg(&|s| s.total_rank as f64),
                train_seconds: avg(&|s| s.train_seconds),
            });
        }
        let any = finished.first().map(|(_, s)| s);
        Report {
            metric: any.map_or_else(|| "metric".into(), |s| s.metric.clone()),
            baseline: baseline.to_string(),
            rows,
            lr_search: lr_search.clone(),
            examples: any.map_or([0; 3], |s| s.examples),
            command_line: command_line.to_string(),
        }
    }

    /// The Markdown table (what `ablation.md` holds and the command prints).
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.metric;
        let _ = writeln!(s, "# Ablation: test {m}\n");
        let _ = writeln!(s, "Command: `{}`\n", self.command_line);
        let [tr, va, te] = self.examples;
        let _ = writeln!(
            s,
            "Examples: {tr} train / {va} validation / {te} test. Each run reports the test \
             {m} of its best validation epoch; values ×100, mean ± sample standard deviation \
             over seeds. Δ and p: paired over the seeds both methods have, against `{}` \
             (two-sided paired t-test; p is undefined below two seeds).\n",
            self.baseline
        );
        let _ = writeln!(
            s,
            "| method | lr | test {m} (×100) | per seed | Δ vs {} | p | trainable parameters | total rank | train s/run |",
            self.baseline
        );
        let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        for r in &self.rows {
            let seeds: Vec<String> = r
                .per_seed
                .iter()
                .map(|(_, v)| format!("{:.1}", 100.0 * v))
                .collect();
            let delta = r.delta.map_or("—".into(), |d| format!("{:+.2}", 100.0 * d));
            let p = r.p_value.map_or("—".into(), |p| format!("{p:.3}"));
            let rank = if r.total_rank > 0.0 {
                format!("{:.0}", r.total_rank)
            } else {
                "—".into()
            };
            let _ = writeln!(
                s,
                "| {} | {} | {:.2} ± {:.2} | {} | {delta} | {p} | {} | {rank} | {:.1} |",
                r.method,
                r.lr,
                100.0 * r.mean,
                100.0 * r.sd,
                seeds.join(" / "),
                r.trainable_parameters,
                r.train_seconds
            );
        }
        if !self.lr_search.is_empty() {
            let _ = writeln!(
                s,
                "\nLearning rates chosen on the validation split (seed 0):\n"
            );
            for (method, LrChoice { chosen, tried }) in &self.lr_search {
                let tried: Vec<String> = tried
                    .iter()
                    .map(|(lr, v)| format!("{lr}: {:.2}", 100.0 * v))
                    .collect();
                let _ = writeln!(s, "- {method}: {} → {chosen}", tried.join(", "));
            }
        }
        let _ = writeln!(s, "\nMethods:\n");
        for r in &self.rows {
            let _ = writeln!(s, "- `{}`: {}", r.method, r.description);
        }
        s
    }

    /// The table as CSV: one line per method, per-seed values in `seed_<k>` columns.
    pub fn csv(&self) -> anyhow::Result<Vec<u8>> {
        let seeds: Vec<u64> = {
            let mut v: Vec<u64> = self
                .rows
                .iter()
                .flat_map(|r| r.per_seed.iter().map(|&(s, _)| s))
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let mut w = csv::Writer::from_writer(Vec::new());
        let mut header: Vec<String> = [
            "method",
            "lr",
            "metric",
            "seeds",
            "mean",
            "sd",
            "delta_vs_baseline",
            "p_value",
            "baseline",
            "trainable_parameters",
            "total_rank",
            "train_seconds_per_run",
        ]
        .iter()
        .map(|h| h.to_string())
        .collect();
        header.extend(seeds.iter().map(|s| format!("seed_{s}")));
        w.write_record(&header)?;
        let opt = |x: Option<f64>| x.map_or(String::new(), |v| v.to_string());
        for r in &self.rows {
            let mut rec = vec![
                r.method.clone(),
                r.lr.clone(),
                self.metric.clone(),
                r.per_seed.len().to_string(),
                r.mean.to_string(),
                r.sd.to_string(),
                opt(r.delta),
                opt(r.p_value),
                self.baseline.clone(),
                r.trainable_parameters.to_string(),
                r.total_rank.to_string(),
                r.train_seconds.to_string(),
            ];
            for s in &seeds {
                rec.push(
                    r.per_seed
                        .iter()
                        .find(|(k, _)| k == s)
                        .map_or(String::new(), |(_, v)| v.to_string()),
                );
            }
            w.write_record(&rec)?;
        }
        w.into_inner().context("writing the CSV")
    }

    /// Writes `ablation.md`, `ablation.csv` and `ablation.png` into `dir` (each atomically).
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let md = self.markdown();
        crate::io::write_atomic(&dir.join("ablation.md"), |w| w.write_all(md.as_bytes()))?;
        let csv = self.csv()?;
        crate::io::write_atomic(&dir.join("ablation.csv"), |w| w.write_all(&csv))?;
        if !self.rows.is_empty() {
            let bars: Vec<crate::plots::Bar> = self
                .rows
                .iter()
                .map(|r| crate::plots::Bar {
                    label: r.method.clone(),
                    values: r.per_seed.iter().map(|(_, v)| 100.0 * v).collect(),
                })
                .collect();
            crate::plots::bar_chart(
                &dir.join("ablation.png"),
                &format!("test {} by method (mean ± sd over seeds)", self.metric),
                &format!("test {} ×100", self.metric),
                &bars,
            )?;
        }
        Ok(())
    }
}
