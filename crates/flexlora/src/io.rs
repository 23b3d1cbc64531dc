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

/// Puts the complete folder `tmp` in the place of `dir` (which may exist), so that `dir` is
/// at every instant either the old folder or the new one, never missing or mixed: on Linux the
/// two are swapped with one `renameat2(RENAME_EXCHANGE)` and the old one, now at `tmp`, is
/// removed. Where the file system cannot exchange, the old folder is moved aside first (a
/// crash between the two renames then leaves `dir` absent, with the old folder beside it).
pub fn replace_dir(tmp: &Path, dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return std::fs::rename(tmp, dir);
    }
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| {
            std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other)
        };
        let (from, to) = (c(tmp)?, c(dir)?);
        // SAFETY: two valid NUL-terminated paths relative to the working directory.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if rc == 0 {
            fail::fail_point!("io.replace_dir.exchanged", |a| Err(
                crate::faults::io_error("io.replace_dir.exchanged", a)
            ));
            return std::fs::remove_dir_all(tmp);
        }
        let e = std::io::Error::last_os_error();
        if !matches!(
            e.raw_os_error(),
            Some(libc::EINVAL | libc::ENOSYS | libc::ENOTSUP)
        ) {
            return Err(e);
        }
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let old = dir.with_file_name(format!(".{name}.old-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&old);
    std::fs::rename(dir, &old)?;
    std::fs::rename(tmp, dir)?;
    std::fs::remove_dir_all(&old)
}

/// Removes what writers killed mid-way left in `dir`: `.<name>.tmp-<pid>` and
/// `.<name>.old-<pid>` entries whose process no longer runs. Returns how many were removed.
pub fn remove_stale_temporaries(dir: &Path) -> usize {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix('.')
            .and_then(|n| n.rsplit_once(".tmp-").or_else(|| n.rsplit_once(".old-")))
            .and_then(|(_, pid)| pid.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists() {
            continue; // a live writer's (another run in the same folder would be a user error)
        }
        let p = entry.path();
        let gone = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        removed += usize::from(gone.is_ok());
    }
    removed
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
