//! Reading a data file's bytes, refusing one far larger than memory first.

use super::error::DataError;
use std::path::Path;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Refuses a file far larger than memory before reading starts.
pub(crate) fn check_size(path: &Path) -> Result<(), DataError> {
    if let Ok(meta) = std::fs::metadata(path) {
        crate::resources::check(
            || {
                format!(
                    "reading data file {} ({} bytes)",
                    path.display(),
                    meta.len()
                )
            },
            crate::resources::data_file_bytes(meta.len()),
            "use a smaller file or split it",
        )?;
    }
    Ok(())
}

/// The bytes of a data file (within the memory limit), without a UTF-8 byte-order mark.
pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>, DataError> {
    check_size(path)?;
    let mut bytes = std::fs::read(path).map_err(|source| DataError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.starts_with(BOM) {
        bytes.drain(..BOM.len());
    }
    Ok(bytes)
}
