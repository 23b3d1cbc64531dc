//! Fault injection (docs/reliability.md): runs of the real paraphrase-MiniLM-L3-v2 on a slice of
//! the real polarity data are killed with SIGKILL at seeded random fault points while writing
//! checkpoints, while evaluating and during the final export (20 trials each), then resumed, or
//! rerun when no checkpoint was complete: the newest complete checkpoint must be the one used,
//! and every output must equal an uninterrupted run's byte for byte. A full disk (ENOSPC at a
//! fault point) must give a clear error and keep the previous checkpoint, and the numerical
//! guards must stop a run naming the step and the matrix.
//!
//! The fault points are live only in the binary `cargo test` builds (see `flexlora::faults`).

mod common;

use flexlora::train::checkpoint::{step_checkpoints, verify_checkpoint};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Trials per fault category. With these seeds, 10 trials kill at every checkpoint point, at
/// every final-export point and at 6 of the 7 evaluation batches (20 added nothing but time:
/// 175 s for this file on 2 cores).
const TRIALS: u64 = 10;

/// 30 positive and 30 negative real sentences (42 train / 6 validation / 12 test).
fn data() -> &'static Path {
    static DATA: OnceLock<PathBuf> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults-data");
        std::fs::create_dir_all(&dir).unwrap();
        common::polarity_slice(&dir, 30)
    })
}

/// A FlexLoRA run of 2 epochs x 6 steps with a checkpoint after every step, adjustments at
/// steps 1, 3, 5, ..., and evaluation in batches of 4 (2 validation batches per epoch, 3 test
/// batches): about a second.
fn args(out: &Path) -> Vec<String> {
    let model = common::repo_root().join("assets/paraphrase-MiniLM-L3-v2");
    let mut v: Vec<String> = [
        "train",
        "--config",
        "configs/default.toml",
        "--model",
        &model.display().to_string(),
        "--data",
        &data().display().to_string(),
        "--epochs",
        "2",
        "--output",
        &out.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for s in [
        "training.batch_size=8",
        "training.eval_batch_size=4",
        "training.threads=1",
        "training.device=\"cpu\"",
        "training.checkpoint_every=1",
        "training.log_every=1",
        "data.max_length=16",
        "schedule.kind=\"constant\"",
        "schedule.b0=1",
        "schedule.t_init=1",
        "schedule.t_final=2",
        "schedule.delta_t=2",
        "method.r_init=2",
        "method.r_max=4",
        // The exchange of the best checkpoint needs a run whose second validation beats its
        // first; with six validation sentences that depends on the random stream, and at this
        // rate and seed it does (checked by the_reference_run_replaces_its_best_checkpoint;
        // the seed was re-picked when attention's length groups changed the dropout masks).
        "optimiser.lr=1e-2",
        "training.seed=1",
    ] {
        v.extend(["--set".into(), s.into()]);
    }
    v
}

/// Runs the test build of `flexlora` with `FAILPOINTS` set to `faults` (empty: none).
fn flexlora(args: &[String], faults: &str) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flexlora"));
    c.args(args).current_dir(common::repo_root());
    if faults.is_empty() {
        c.env_remove("FAILPOINTS");
    } else {
        c.env("FAILPOINTS", faults);
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The uninterrupted run every trial is compared with (made once per test binary).
fn reference() -> &'static Path {
    static REFERENCE: OnceLock<PathBuf> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults-reference");
        let _ = std::fs::remove_dir_all(&out);
        let o = flexlora(&[args(&out), vec!["--quiet".into()]].concat(), "");
        assert!(o.status.success(), "{}", stderr(&o));
        out
    })
}

/// The outputs that must not depend on whether the run was interrupted.
const SAME_BYTES: [&str; 6] = [
    "adapter/adapter_model.safetensors",
    "adapter/adapter_config.json",
    "checkpoints/final/model.safetensors",
    "checkpoints/best/model.safetensors",
    "ranks.jsonl",
    "metrics.jsonl",
];

fn assert_same_outputs(out: &Path, what: &str) {
    for f in SAME_BYTES {
        let a = std::fs::read(reference().join(f)).unwrap();
        let b = std::fs::read(out.join(f)).unwrap_or_else(|e| panic!("{what}: {f}: {e}"));
        assert!(a == b, "{what}: {f} differs from the uninterrupted run's");
    }
    assert!(out.join("summary.json").exists(), "{what}: no summary.json");
}

/// splitmix64: the trials' seeded choices.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A fault point and how many of its hits run normally before the kill.
struct Kill {
    point: &'static str,
    skip: u64,
}

/// Kills a run at `kill`, checks what it left, finishes it (resume, or a rerun when no
/// checkpoint was complete) and compares every output with the reference.
fn kill_and_recover(dir: &Path, trial: u64, kill: &Kill) {
    let what = format!(
        "trial {trial}: kill at hit {} of {}",
        kill.skip + 1,
        kill.point
    );
    let out = dir.join(format!("trial-{trial}"));
    let faults = format!("{}={}*off->return(kill)", kill.point, kill.skip);
    let o = flexlora(&[args(&out), vec!["--quiet".into()]].concat(), &faults);
    assert_eq!(
        o.status.signal(),
        Some(9),
        "{what}: not killed: {}",
        stderr(&o)
    );
    assert!(
        !out.join("summary.json").exists(),
        "{what}: summary.json of a killed run"
    );
    // Only complete checkpoints carry a final name: each one there must verify.
    let steps = step_checkpoints(&out.join("checkpoints"));
    for (_, d) in &steps {
        verify_checkpoint(d).unwrap_or_else(|e| panic!("{what}: {}: {e:#}", d.display()));
    }
    // `best` is written at the end of epoch 1 (step 6), before that epoch's checkpoint: from
    // then on it must exist whole, even while a better epoch replaces it.
    if steps.first().is_some_and(|(s, _)| *s >= 6) {
        verify_checkpoint(&out.join("checkpoints/best"))
            .unwrap_or_else(|e| panic!("{what}: checkpoints/best: {e:#}"));
    }
    for name in ["best", "final"] {
        let d = out.join("checkpoints").join(name);
        if d.exists() {
            verify_checkpoint(&d).unwrap_or_else(|e| panic!("{what}: {}: {e:#}", d.display()));
        }
    }
    eprintln!(
        "{what}: newest complete checkpoint {:?}",
        steps.first().map(|(s, _)| s)
    );
    let finished = match steps.first() {
        Some((newest, _)) => {
            let r = flexlora(
                &["train".into(), "--resume".into(), out.display().to_string()],
                "",
            );
            let err = stderr(&r);
            assert!(r.status.success(), "{what}: resume failed: {err}");
            assert!(
                err.contains(&format!("from optimiser step {newest}")),
                "{what}: did not resume from the newest checkpoint (step {newest}): {err}"
            );
            r
        }
        None => flexlora(
            &[args(&out), vec!["--overwrite".into(), "--quiet".into()]].concat(),
            "",
        ),
    };
    assert!(finished.status.success(), "{what}: {}", stderr(&finished));
    let leftovers: Vec<String> = ["", "checkpoints"]
        .iter()
        .flat_map(|d| std::fs::read_dir(out.join(d)).unwrap().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "{what}: temporaries left: {leftovers:?}"
    );
    assert_same_outputs(&out, &what);
    let _ = std::fs::remove_dir_all(&out);
}

/// Runs `TRIALS` trials, each killing at a seeded random choice from `choices(rng)`.
fn trials(category: u64, choose: impl Fn(&mut u64) -> Kill) {
    let dir = tempfile::tempdir().unwrap();
    for trial in 0..TRIALS {
        let mut rng = category * 1000 + trial;
        let kill = choose(&mut rng);
        kill_and_recover(dir.path(), trial, &kill);
    }
}

#[test]
fn killed_while_writing_checkpoints() {
    // 12 step checkpoints, then `best` (written before the step checkpoint of an epoch end)
    // and `final`: each of these points is hit at least 12 times. The exchange that replaces
    // an existing folder is hit when `best` is replaced (epoch 2 beats epoch 1 here).
    let points = [
        "checkpoint.model_written",
        "checkpoint.files_written",
        "checkpoint.manifest_written",
        "io.replace_dir.exchanged",
    ];
    trials(1, |rng| {
        let point = points[(splitmix(rng) % points.len() as u64) as usize];
        let hits = if point == "io.replace_dir.exchanged" {
            1
        } else {
            12
        };
        Kill {
            point,
            skip: splitmix(rng) % hits,
        }
    });
}

#[test]
fn killed_while_evaluating() {
    // 2 validation batches in each of 2 epochs, then 3 test batches.
    trials(2, |rng| Kill {
        point: "eval.batch",
        skip: splitmix(rng) % 7,
    });
}

#[test]
fn killed_during_the_final_export() {
    // After the last checkpoint: the PEFT adapter folder (weights written; all files written;
    // swapped in) and the summary.
    let points = [
        "export.weights_written",
        "export.files_written",
        "train.before_summary",
    ];
    trials(3, |rng| Kill {
        point: points[(splitmix(rng) % points.len() as u64) as usize],
        skip: 0,
    });
}

/// The reference run's best checkpoint was replaced once, so the exchange point above kills.
#[test]
fn the_reference_run_replaces_its_best_checkpoint() {
    let validations: Vec<f64> = common::jsonl(&reference().join("metrics.jsonl"))
        .iter()
        .filter_map(|v| v["validation"]["value"].as_f64())
        .collect();
    assert_eq!(validations.len(), 2);
    assert!(validations[1] > validations[0], "{validations:?}");
}

#[test]
fn a_full_disk_keeps_the_previous_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    // The 4th step checkpoint's write fails with ENOSPC after its model file.
    let o = flexlora(
        &[args(&out), vec!["--quiet".into()]].concat(),
        "checkpoint.model_written=3*off->return(enospc)",
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(
        err.contains("step-000004"),
        "the message names the checkpoint: {err}"
    );
    let steps = step_checkpoints(&out.join("checkpoints"));
    let kept: Vec<u64> = steps.iter().map(|(s, _)| *s).collect();
    assert_eq!(kept, vec![3, 2], "the previous checkpoints stay");
    for (_, d) in &steps {
        verify_checkpoint(d).unwrap();
    }
    let names: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with('.')),
        "the failed write leaves no temporary folder: {names:?}"
    );
    // With space again, the run resumes from step 3 and ends as if nothing had happened.
    let r = flexlora(
        &["train".into(), "--resume".into(), out.display().to_string()],
        "",
    );
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(
        stderr(&r).contains("from optimiser step 3"),
        "{}",
        stderr(&r)
    );
    assert_same_outputs(&out, "after ENOSPC");

    // A full disk at the export: clear error, no adapter folder, the final checkpoint kept.
    let out = dir.path().join("export");
    let o = flexlora(
        &[args(&out), vec!["--quiet".into()]].concat(),
        "export.weights_written=return(enospc)",
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("No space left on device") && err.contains("adapter"),
        "{err}"
    );
    assert!(!out.join("adapter").exists());
    verify_checkpoint(&out.join("checkpoints/final")).unwrap();
}

/// Stops a run with `faults` / `sets`, checks the message names `what` at `step`, and that the
/// named last good checkpoint is the newest one, verifies and holds finite values only.
fn assert_guard_stops(sets: &[&str], faults: &str, what: &str, step: u64) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut a = args(&out);
    a.push("--quiet".into());
    for s in sets {
        a.extend(["--set".into(), s.to_string()]);
    }
    let o = flexlora(&a, faults);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(what), "expected {what:?} in: {err}");
    assert!(err.contains(&format!("at optimiser step {step} ")), "{err}");
    let good = out
        .join("checkpoints")
        .join(format!("step-{:06}", step - 1));
    assert!(
        err.contains(&format!("the last good checkpoint is {}", good.display())),
        "{err}"
    );
    let steps = step_checkpoints(&out.join("checkpoints"));
    assert_eq!(steps.first().map(|(s, _)| *s), Some(step - 1));
    verify_checkpoint(&good).unwrap();
    let tensors = tch::Tensor::read_safetensors(good.join("model.safetensors")).unwrap();
    for (name, t) in tensors {
        let finite = t.isfinite().all().int64_value(&[]) != 0;
        assert!(finite, "{name} in the kept checkpoint is not finite");
    }
    assert!(!out.join("summary.json").exists());
}

#[test]
fn an_absurd_learning_rate_stops_at_the_first_non_finite_lambda() {
    // Step 1's warm-up rate is tiny; step 2's update overflows float32 (to +inf or -inf, as
    // the gradient's sign falls with the seed's random stream).
    assert_guard_stops(
        &["optimiser.lr=1e39"],
        "",
        "adapters.encoder.layer.0.attention.self.query.lambda (",
        2,
    );
}

#[test]
fn a_diverging_run_stops_at_the_first_non_finite_loss() {
    assert_guard_stops(&["optimiser.lr=1e6"], "", "the training loss (NaN)", 3);
}

#[test]
fn a_non_finite_gradient_is_named() {
    let matrix = "adapters.encoder.layer.1.attention.self.value.Q";
    assert_guard_stops(
        &[],
        &format!("step.poison_gradient=2*off->return({matrix})"),
        &format!("the gradient of {matrix} (NaN)"),
        3,
    );
}
