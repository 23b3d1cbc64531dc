//! The records a data set is made of: [`Example`] as training uses it, [`RawExample`] as a
//! reader returns it (label still as written), and [`GreyImage`].

use crate::config::{Column, DataFormat};
use std::sync::Arc;

/// One labelled example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The (first) text, trimmed; empty in an image data set.
    pub text: String,
    /// The second text of a pair task, trimmed.
    pub text_pair: Option<String>,
    /// Classification: the class index (`0..num_labels`) as `f32`; regression: the target.
    pub label: f32,
    /// The image of an image data set (`data.format = "idx" | "pixel_csv"`).
    pub image: Option<GreyImage>,
}

/// A grey image as stored: `height × width` pixels, row-major, from 0 (black) to `max`
/// (white).
#[derive(Debug, Clone, PartialEq)]
pub struct GreyImage {
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
    /// The value of white (255 for 8-bit images, 16 for scikit-learn's digits).
    pub max: u8,
    /// `height · width` pixel values, row-major.
    pub pixels: Arc<[u8]>,
}

/// How one file is laid out and which of its columns matter.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub format: DataFormat,
    pub has_header: bool,
    pub text: Column,
    pub text_pair: Option<Column>,
    pub label: Column,
    /// The encoding of text files (`data.encoding`).
    pub encoding: &'static encoding_rs::Encoding,
}

/// One record as read: trimmed texts and the trimmed label field, with its position.
#[derive(Debug, Clone)]
pub(crate) struct RawExample {
    /// 1-based record number (the header does not count).
    pub record: u64,
    /// 1-based line where the record starts.
    pub line: u64,
    pub text: String,
    pub text_pair: Option<String>,
    pub label: String,
    /// The image of an image data set.
    pub image: Option<GreyImage>,
}
