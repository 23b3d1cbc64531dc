//! Image files as model input (`flexlora predict` on an image run, `flexlora embed` on a
//! vision model): one image file, or a folder of them, decoded to 8-bit grey images.
//!
//! - **A file** is decoded by its content (PNG, JPEG, BMP, WebP, PNM, TGA, ICO; the extension
//!   does not matter); one that is not such an image is an error naming it.
//! - **A folder** holds its image files: the regular files directly inside it whose extension
//!   is one of those formats' (case-insensitive: `.png`, `.jpg`, `.jpeg`, ...), taken in file
//!   name order (byte order). Other files (a README, `.DS_Store`) are left out and listed in
//!   [`ImageFiles::skipped`]; sub-folders are not entered. A folder without image files is an
//!   error.
//! - **Grey**: every image is converted to 8-bit luma as the `image` crate does it (colour:
//!   `0.2126 R + 0.7152 G + 0.0722 B`, Rec. 709; 16-bit samples scaled to 8 bits; alpha
//!   dropped), so it reaches the model as the run's grey data sets do ([`GreyImage`] with white
//!   = 255, then the model's resize and normalisation).
//!
//! Decoding is bounded by the `image` crate's default limit (512 MiB per image), so a corrupt
//! or hostile header cannot make it allocate without bound.

use super::example::GreyImage;
use anyhow::{Context, bail};
use image::ImageFormat;
use std::path::{Path, PathBuf};

/// The image files of an input path, in the order they are read.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFiles {
    /// Per image: its file name (for output rows) and its path.
    pub files: Vec<(String, PathBuf)>,
    /// File names in a folder that were left out (not an image by their extension).
    pub skipped: Vec<String>,
}

impl ImageFiles {
    /// Tells the user on stderr which files of the folder `input` were left out, if any.
    pub fn report_skipped(&self, input: &Path) {
        if !self.skipped.is_empty() {
            eprintln!(
                "left out {} file(s) of {} that are not images by their extension: {}",
                self.skipped.len(),
                input.display(),
                self.skipped.join(", ")
            );
        }
    }
}

/// The formats decoded, in the order messages list them.
const FORMATS: [ImageFormat; 7] = [
    ImageFormat::Png,
    ImageFormat::Jpeg,
    ImageFormat::Bmp,
    ImageFormat::WebP,
    ImageFormat::Pnm,
    ImageFormat::Tga,
    ImageFormat::Ico,
];

/// The image formats this build decodes, as their usual extensions (`png`, `jpg`, ...).
pub fn image_extensions() -> Vec<&'static str> {
    FORMATS
        .iter()
        .filter(|f| f.reading_enabled())
        .flat_map(|f| f.extensions_str().iter().copied())
        .collect()
}

fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .and_then(ImageFormat::from_extension)
        .is_some_and(|f| FORMATS.contains(&f) && f.reading_enabled())
}

/// The image files of `path`: the file itself, or a folder's image files by name (rules in
/// the module docs). Nothing is decoded yet ([`read_grey_image`] does that).
pub fn image_files(path: &Path) -> anyhow::Result<ImageFiles> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read input {}", path.display()))?;
    let name_of = |p: &Path| {
        p.file_name().map_or_else(
            || p.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    };
    if !meta.is_dir() {
        return Ok(ImageFiles {
            files: vec![(name_of(path), path.to_path_buf())],
            skipped: Vec::new(),
        });
    }
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(path)
        .with_context(|| format!("cannot list the folder {}", path.display()))?
    {
        let entry = entry.with_context(|| format!("cannot list the folder {}", path.display()))?;
        let p = entry.path();
        // Follows symbolic links: a link to an image file is an image file.
        if p.is_file() {
            entries.push(p);
        }
    }
    entries.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    let (images, others): (Vec<PathBuf>, Vec<PathBuf>) =
        entries.into_iter().partition(|p| is_image_name(p));
    if images.is_empty() {
        bail!(
            "{}: the folder holds no image files (expected files ending in {}){}",
            path.display(),
            image_extensions()
                .iter()
                .map(|e| format!(".{e}"))
                .collect::<Vec<_>>()
                .join(", "),
            if others.is_empty() {
                String::new()
            } else {
                format!("; it holds {} other file(s)", others.len())
            }
        );
    }
    Ok(ImageFiles {
        files: images.iter().map(|p| (name_of(p), p.clone())).collect(),
        skipped: others.iter().map(|p| name_of(p)).collect(),
    })
}

/// Decodes the image file `path` (by its content) to an 8-bit grey image (white = 255).
pub fn read_grey_image(path: &Path) -> anyhow::Result<GreyImage> {
    let not_image = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!(
            "{}: not an image this build decodes ({}): {e}",
            path.display(),
            image_extensions().join(", ")
        )
    };
    let reader = image::io::Reader::open(path)
        .with_context(|| format!("cannot read image file {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read image file {}", path.display()))?;
    if reader.format().is_none() {
        return Err(not_image(&"its content is no known image format"));
    }
    let decoded = reader.decode().map_err(|e| not_image(&e))?;
    let grey = decoded.to_luma8();
    let (width, height) = grey.dimensions();
    if width == 0 || height == 0 {
        bail!(
            "{}: an empty image ({width}x{height} pixels)",
            path.display()
        );
    }
    Ok(GreyImage {
        height,
        width,
        max: 255,
        pixels: grey.into_raw().into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_becomes_rec709_luma_and_folders_keep_image_names_in_order() {
        let dir = tempfile::tempdir().unwrap();
        // One red, one green and one blue pixel, and white.
        let rgb =
            image::RgbImage::from_raw(2, 2, vec![255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255])
                .unwrap();
        rgb.save(dir.path().join("b.png")).unwrap();
        let g = read_grey_image(&dir.path().join("b.png")).unwrap();
        assert_eq!((g.height, g.width, g.max), (2, 2, 255));
        // Integer luma, truncated: 255 * 2126 / 10000 = 54, * 7152 → 182, * 722 → 18.
        assert_eq!(&g.pixels[..], &[54, 182, 18, 255]);
        std::fs::copy(dir.path().join("b.png"), dir.path().join("A.PNG")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        std::fs::create_dir(dir.path().join("sub.png")).unwrap();
        let f = image_files(dir.path()).unwrap();
        let names: Vec<&str> = f.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["A.PNG", "b.png"]);
        assert_eq!(f.skipped, ["notes.txt"]);
    }
}
