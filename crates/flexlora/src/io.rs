//! Output files written whole or not at all.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::Path;
use tch::Tensor;

/// Checks that `saved` holds a tensor of the same shape for every tensor of `expected` (what a
/// checkpoint must contain to be loaded into live state); the message names the first tensor
/// that is missing or mis-shaped, and `owner` says what needs it ("the model", ...).
pub fn check_saved_tensors(
    expected: &[(String, Tensor)],
    saved: &HashMap<String, Tensor>,
    owner: &str,
) -> Result<(), String> {
    for (name, want) in expected {
        let got = saved
            .get(name)
            .ok_or_else(|| format!("the checkpoint has no tensor `{name}`"))?;
        if got.size() != want.size() {
            return Err(format!(
                "checkpoint tensor `{name}` has shape {:?}, {owner} needs {:?}",
                got.size(),
                want.size()
            ));
        }
    }
    Ok(())
}

/// Writes `path` through `fill` into a temporary file beside it, then renames it into place,
/// so readers (and a crash) never see a half-written file. On error the temporary file is
/// removed and `path` is left as it was.
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut w = BufWriter::new(std::fs::File::create(&tmp)?);
        fill(&mut w)?;
        w.flush()?;
        w.get_ref().sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_writes_leave_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        write_atomic(&path, |w| w.write_all(b"first\n")).unwrap();
        let e = write_atomic(&path, |w| {
            w.write_all(b"half")?;
            Err(std::io::Error::other("boom"))
        });
        assert!(e.is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "first\n");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }
}
