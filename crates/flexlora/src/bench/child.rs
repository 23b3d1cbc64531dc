//! Child processes timed from outside, the same measurement for both sides of a comparison.
//! (Peak memory is reported by each child itself from `/proc/self/status`'s `VmHWM`: the
//! `ru_maxrss` a parent gets from `wait4` survives `exec`, so it would count this process's
//! own memory at the fork.)

use anyhow::{Context, bail};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// What one finished child cost.
#[derive(Debug, Clone, Copy)]
pub struct ChildCost {
    /// Wall time from spawn to exit, in seconds.
    pub seconds: f64,
}

/// Runs `cmd` to completion with its output appended to `log`; fails (naming the log) on a
/// non-zero exit.
pub fn run_measured(mut cmd: Command, log: &Path) -> anyhow::Result<ChildCost> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    let started = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let ok = child.wait()?.success();
    let seconds = started.elapsed().as_secs_f64();
    if !ok {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(8).collect();
        bail!(
            "{cmd:?} failed; its output is in {}:\n{}",
            log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(ChildCost { seconds })
}
