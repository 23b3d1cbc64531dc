//! The Python side: a persistent `python/bench/peft_worker.py` process per PEFT method, driven
//! by one JSON line per command.

use anyhow::{Context, bail};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// A running worker.
pub struct PeftWorker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    name: String,
}

impl PeftWorker {
    /// Starts `python worker.py folder spec.json` and waits for it to be ready (imports and
    /// model loading done). Its stderr goes to `log`.
    pub fn start(
        python: &Path,
        worker: &Path,
        folder: &Path,
        spec: &Path,
        log: &Path,
        name: &str,
    ) -> anyhow::Result<Self> {
        let err =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new(python)
            .arg(worker)
            .arg(folder)
            .arg(spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {} {}", python.display(), worker.display()))?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("worker stdout")?);
        let mut w = Self {
            child,
            stdin,
            stdout,
            name: name.to_string(),
        };
        let ready = w.read_line(log)?;
        if ready.get("ready").and_then(|v| v.as_bool()) != Some(true) {
            bail!("{name}: unexpected first line {ready}");
        }
        Ok(w)
    }

    fn read_line(&mut self, log: &Path) -> anyhow::Result<serde_json::Value> {
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line)?;
        if n == 0 {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(8).collect();
            bail!(
                "the PEFT worker ({}) exited; its stderr ({}):\n{}",
                self.name,
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let v: serde_json::Value = serde_json::from_str(line.trim())
            .with_context(|| format!("{}: not JSON: {line}", self.name))?;
        if let Some(e) = v.get("error") {
            bail!("{}: {e}", self.name);
        }
        Ok(v)
    }

    /// Sends one command and returns the answer.
    pub fn call(
        &mut self,
        cmd: serde_json::Value,
        log: &Path,
    ) -> anyhow::Result<serde_json::Value> {
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()?;
        self.read_line(log)
    }

    /// `n` training steps; the wall time of each.
    pub fn steps(&mut self, n: usize, log: &Path) -> anyhow::Result<Vec<f64>> {
        let v = self.call(serde_json::json!({"cmd": "steps", "n": n}), log)?;
        serde_json::from_value(v["seconds"].clone()).context("steps: no seconds")
    }
}

impl Drop for PeftWorker {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", serde_json::json!({"cmd": "quit"}));
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}
