//! `flexlora bench --quick`: both sides (flexlora and transformers + PEFT from the venv) run
//! every part of the benchmark on the real model and data and report figures. Timings are
//! never asserted: CI machines are shared and noisy.

mod common;

use common::{minilm, run_flexlora as flexlora};

#[test]
fn the_short_benchmark_runs_both_sides_and_reports_every_figure() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("bench");
    let md = dir.path().join("benchmarks.md");
    let args: Vec<String> = [
        "bench",
        "--quick",
        "--threads",
        "1",
        "--set",
        &format!("model.path={:?}", minilm().display().to_string()),
        "--workdir",
        &work.display().to_string(),
        "--markdown",
        &md.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let o = flexlora(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(work.join("bench.json")).unwrap()).unwrap();
    let positive = |v: &serde_json::Value, what: &str| {
        let x = v.as_f64().unwrap_or(f64::NAN);
        assert!(x.is_finite() && x > 0.0, "{what}: {v}");
    };
    assert_eq!(report["quick"], true);
    positive(&report["step_gflop"], "step GFLOP");
    positive(&report["gemm_peak_gflops"], "GEMM rate");
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    for s in steps {
        positive(&s["ours_ms"], "flexlora ms/step");
        if s["method"] != "flexlora" {
            positive(&s["peft_ms"], "PEFT ms/step");
        }
    }
    positive(&report["predict"]["ours_per_s"], "flexlora predict");
    positive(&report["predict"]["peft_per_s"], "PEFT predict");
    let jobs = report["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 3);
    for j in jobs {
        for key in [
            "ours_seconds",
            "peft_seconds",
            "ours_rss_mib",
            "peft_rss_mib",
        ] {
            positive(&j[key], key);
        }
        assert_eq!(j["steps"], 3);
    }
    let text = std::fs::read_to_string(&md).unwrap();
    assert!(text.contains("Short mode"), "{text}");
    assert!(text.contains("| lora (PEFT lora) |"), "{text}");
}
