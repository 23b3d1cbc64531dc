//! Output folders written whole or not at all: filled under a temporary sibling name, then
//! renamed into place.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};

/// Writes the folder `out` through `fill(tmp)` into a temporary sibling folder and renames it
/// into place, so a reader (or a crash) never sees a half-written folder.
///
/// An existing `out` is replaced only when it is empty or `is_ours(out)` says it holds an
/// earlier output of the same kind (`what` names that kind in the error otherwise); the check
/// comes before any work. On error the temporary folder is removed and `out` is left as it was.
pub(crate) fn write_dir_atomic(
    out: &Path,
    what: &str,
    is_ours: impl Fn(&Path) -> bool,
    fill: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if out.exists() {
        if !out.is_dir() {
            bail!("{} exists and is not a folder", out.display());
        }
        let empty = std::fs::read_dir(out)
            .with_context(|| format!("reading {}", out.display()))?
            .next()
            .is_none();
        if !empty && !is_ours(out) {
            bail!(
                "{} exists and does not hold {what}; remove it or choose another output folder",
                out.display()
            );
        }
    }
    let parent: PathBuf = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .with_context(|| format!("{}: not a folder name", out.display()))?
        .to_string_lossy()
        .into_owned();
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let pid = std::process::id();
    let tmp = parent.join(format!(".{name}.tmp-{pid}"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = fill(&tmp).and_then(|()| {
        fail::fail_point!("export.files_written", |a| Err(crate::faults::io_error(
            "export.files_written",
            a
        )
        .into()));
        crate::io::replace_dir(&tmp, out)?;
        Ok(())
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result.with_context(|| format!("writing {}", out.display()))
}

/// Writes `value` as pretty JSON to `path`.
pub(crate) fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_are_replaced_only_when_ours_and_never_half_written() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("adapter");
        write_dir_atomic(
            &out,
            "an adapter",
            |_| false,
            |d| {
                std::fs::write(d.join("a.txt"), "1")?;
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(out.join("a.txt")).unwrap(), "1");
        // Not ours: refused before any work.
        let e = write_dir_atomic(&out, "an adapter", |_| false, |_| unreachable!()).unwrap_err();
        assert!(e.to_string().contains("does not hold an adapter"), "{e}");
        // A failing fill leaves the old folder and no temporary one.
        let e = write_dir_atomic(
            &out,
            "an adapter",
            |_| true,
            |d| {
                std::fs::write(d.join("a.txt"), "2")?;
                anyhow::bail!("boom")
            },
        );
        assert!(e.is_err());
        assert_eq!(std::fs::read_to_string(out.join("a.txt")).unwrap(), "1");
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
        // Ours: replaced whole.
        write_dir_atomic(
            &out,
            "an adapter",
            |_| true,
            |d| {
                std::fs::write(d.join("b.txt"), "3")?;
                Ok(())
            },
        )
        .unwrap();
        assert!(!out.join("a.txt").exists());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }
}
