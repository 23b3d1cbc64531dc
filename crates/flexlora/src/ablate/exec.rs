//! Running the planned `flexlora train` children: reuse, resume or start each run, a few at a
//! time, with a progress bar over the runs and one log file per run.

use super::{AblateOptions, PlannedRun};
use crate::config::Config;
use crate::train::checkpoint;
use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Intra-op threads per run: `None` (every core) for one job at a time, else the cores split
/// evenly (at least one each).
pub fn threads_per_job(jobs: usize) -> Option<usize> {
    if jobs <= 1 {
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Some((cores / jobs).max(1))
}

/// What to do with one planned run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Finished with the same config: nothing to do.
    Reuse,
    /// Unfinished with the same config and a valid checkpoint.
    Resume,
    /// Nothing usable there yet.
    Start,
}

/// Decides [`Action`] for `run`; a finished run with another config is an error.
fn action(run: &PlannedRun) -> anyhow::Result<Action> {
    let saved = run.dir.join("config.toml");
    if !saved.exists() {
        return Ok(Action::Start);
    }
    let same = same_config(&saved, &run.config)?;
    if run.dir.join("summary.json").exists() {
        if !same {
            bail!(
                "{} holds a finished run of a different config than this ablation would train \
                 (compare its config.toml with the --config and --set values); move it away or \
                 choose another --output",
                run.dir.display()
            );
        }
        return Ok(Action::Reuse);
    }
    if same && checkpoint::latest_valid(&run.dir.join("checkpoints")).is_some() {
        return Ok(Action::Resume);
    }
    Ok(Action::Start)
}

/// Whether the config saved at `path` trains what `want` does (the thread count aside, which
/// changes speed, not results).
fn same_config(path: &Path, want: &Config) -> anyhow::Result<bool> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(_) => return Ok(false),
    };
    let Ok(mut saved) = Config::from_table(table, &path.display().to_string()) else {
        return Ok(false);
    };
    let mut want = want.clone();
    saved.training.threads = None;
    want.training.threads = None;
    Ok(saved == want)
}

/// Runs every run of `runs` that is not finished, `opts.jobs` at a time, and returns the first
/// failure (the others already started are let finish; no new one starts after a failure).
pub fn run_all(
    config_path: &Path,
    runs: &[PlannedRun],
    opts: &AblateOptions,
    phase: &str,
) -> anyhow::Result<()> {
    let mut todo = Vec::new();
    for run in runs {
        match action(run)? {
            Action::Reuse => {}
            _ if opts.report_only => {}
            a => todo.push((run, a)),
        }
    }
    if todo.is_empty() {
        return Ok(());
    }
    let exe = std::env::current_exe().context("finding the flexlora executable")?;
    let logs = opts.output.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let bar = if opts.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(todo.len() as u64).with_style(
            ProgressStyle::with_template(
                "{prefix} {bar:30} {pos}/{len} runs  {elapsed}  eta {eta}  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    };
    bar.set_prefix(phase.to_string());
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let running: Mutex<Vec<String>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..opts.jobs.min(todo.len()) {
            scope.spawn(|| {
                loop {
                    if failed.load(Ordering::SeqCst) {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&(run, act)) = todo.get(i) else {
                        break;
                    };
                    let name = run_name(run);
                    if let Ok(mut r) = running.lock() {
                        r.push(name.clone());
                        bar.set_message(r.join(", "));
                    }
                    let result = train_child(
                        &exe,
                        config_path,
                        run,
                        act,
                        &logs.join(format!("{name}.log")),
                    );
                    if let Ok(mut r) = running.lock() {
                        r.retain(|n| *n != name);
                        bar.set_message(r.join(", "));
                    }
                    bar.inc(1);
                    if let Err(e) = result {
                        failed.store(true, Ordering::SeqCst);
                        if let Ok(mut slot) = first_error.lock() {
                            slot.get_or_insert(e);
                        }
                        break;
                    }
                    bar.println(format!("[ablate] {name} finished"));
                }
            });
        }
    });
    bar.finish_and_clear();
    match first_error.into_inner().ok().flatten() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn run_name(run: &PlannedRun) -> String {
    run.dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| run.method.clone())
}

/// One `flexlora train` child, its output appended to `log`.
fn train_child(
    exe: &Path,
    config_path: &Path,
    run: &PlannedRun,
    act: Action,
    log: &Path,
) -> anyhow::Result<()> {
    let mut cmd = Command::new(exe);
    cmd.arg("train").arg("--quiet");
    match act {
        Action::Resume => {
            cmd.arg("--resume").arg(&run.dir);
        }
        _ => {
            cmd.arg("--config")
                .arg(config_path)
                .arg("--output")
                .arg(&run.dir)
                .arg("--overwrite");
            for o in &run.overrides {
                cmd.arg("--set").arg(o);
            }
        }
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let file2 = file.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(file).stderr(file2);
    die_with_parent(&mut cmd);
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", exe.display()))?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(6).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "training {} failed ({status}); its output is in {}:\n{}",
            run.dir.display(),
            log.display(),
            tail.join("\n")
        );
    }
    Ok(())
}

/// Makes the child receive SIGKILL when the runner dies, so an interrupted runner leaves no
/// training process behind still writing into a run directory.
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl and getppid are async-signal-safe and touch no memory of the parent; this
    // runs in the child between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may already have died between fork and prctl.
            if libc::getppid() == 1 {
                return Err(std::io::Error::other("the ablation runner exited"));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}
