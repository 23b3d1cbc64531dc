//! PNG pictures of a training run (`runs/<name>/plots/`): the rank of every adapted matrix over
//! training as a heatmap ([`rank_heatmap`]) and the training loss with the validation metric
//! ([`loss_curves`]); and for the ablation runner, a bar chart with error bars ([`bar_chart`]).
//!
//! Drawing uses `plotters` with its bitmap backend; text is rendered with `ab_glyph` from a
//! TrueType font found at run time (the file named by `FLEXLORA_PLOT_FONT`, else DejaVu Sans,
//! Liberation Sans, Noto Sans, FreeSans or Arial in the usual system folders). Without any of
//! them the pictures are still written, without text. Every file is written whole or not at
//! all: it is rendered into a temporary file beside the target and then renamed into place.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use plotters::prelude::*;

/// Why a picture could not be written; every variant names the target file.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The data given cannot be drawn (lengths that do not match, steps going backwards).
    #[error("cannot plot {}: {message}", path.display())]
    Input {
        /// The picture that was to be written.
        path: PathBuf,
        /// What is wrong with the data.
        message: String,
    },
    /// Creating the folder, the temporary file or renaming it into place failed.
    #[error("cannot write plot {}: {source}", path.display())]
    Io {
        /// The picture that was to be written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Drawing or encoding the picture failed.
    #[error("cannot draw plot {}: {message}", path.display())]
    Draw {
        /// The picture that was to be written.
        path: PathBuf,
        /// The drawing library's message.
        message: String,
    },
}

type DrawResult = Result<(), Box<dyn Error>>;

/// Environment variable naming a TrueType/OpenType font file to draw text with.
pub const FONT_ENV: &str = "FLEXLORA_PLOT_FONT";

/// Font files tried, in order, when [`FONT_ENV`] is not set or not readable.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/google-noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/usr/share/fonts/gnu-free/FreeSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// The family name text is drawn with; plotters' mesh labels use it by default too.
const FAMILY: &str = "sans-serif";

/// Registers the first usable font once per process; false when none was found.
fn text_available() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let from_env = std::env::var_os(FONT_ENV).map(PathBuf::from);
        from_env
            .into_iter()
            .chain(FONT_CANDIDATES.iter().map(PathBuf::from))
            .any(|p| {
                let Ok(bytes) = std::fs::read(&p) else {
                    return false;
                };
                // plotters keeps fonts for the whole process; one leaked file (~0.7 MB) is fine.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).is_ok()
            })
    })
}

/// Renders into a temporary `.png` file beside `path` with `draw`, then renames it to `path`.
/// The parent folder is created when missing; on any error the temporary file is removed.
fn write_png(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> DrawResult,
) -> Result<(), PlotError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let io_err = |source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(io_err)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The `.png` ending makes the encoder choose PNG whatever the target is called.
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}.png",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    // Creating it first turns an unwritable folder into a plain I/O error.
    std::fs::File::create(&tmp).map_err(io_err)?;
    let result = (|| {
        let drawn = {
            let root = BitMapBackend::new(&tmp, size).into_drawing_area();
            draw(&root).and_then(|()| root.present().map_err(Into::into))
        };
        drawn.map_err(|e| PlotError::Draw {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        std::fs::rename(&tmp, path).map_err(io_err)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The colour of `rank` on a scale up to `max`: light grey for 0 (matrix switched off), then
/// viridis from dark violet (1) to yellow (`max`).
fn rank_colour(rank: usize, max: usize) -> RGBColor {
    const VIRIDIS: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    if rank == 0 {
        return RGBColor(217, 217, 217);
    }
    let t = if max <= 1 {
        1.0
    } else {
        (rank.min(max) - 1) as f64 / (max - 1) as f64
    };
    let x = t * (VIRIDIS.len() - 1) as f64;
    let i = (x.floor() as usize).min(VIRIDIS.len() - 2);
    let f = x - i as f64;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    let mix = |p: f64, q: f64| (p + (q - p) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

mod bars;
mod curves;
mod heatmap;

pub use bars::{Bar, bar_chart};
pub use curves::loss_curves;
pub use heatmap::rank_heatmap;

/// A step axis label: whole steps only (ticks between two steps stay unlabelled).
fn step_label(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-6 {
        format!("{}", v.round() as i64)
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::curves::Curves;
    use super::heatmap::Heatmap;
    use super::*;

    /// Width and height from a PNG's IHDR chunk, after checking the signature.
    fn png_size(path: &Path) -> (u32, u32) {
        let bytes = std::fs::read(path).unwrap();
        assert!(
            bytes.len() > 33,
            "{} is too short for a PNG",
            path.display()
        );
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        assert_eq!(&bytes[12..16], b"IHDR");
        let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
        (be(16), be(20))
    }

    /// Copies a picture to the folder `FLEXLORA_PLOTS_CHECK` names, to look at by eye.
    fn keep(path: &Path, name: &str) {
        if let Some(dir) = std::env::var_os("FLEXLORA_PLOTS_CHECK") {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(path, Path::new(&dir).join(name)).unwrap();
        }
    }

    fn sensible(size: (u32, u32)) {
        assert!((400..=4000).contains(&size.0), "width {size:?}");
        assert!((300..=4000).contains(&size.1), "height {size:?}");
    }

    fn labels() -> Vec<String> {
        let modules = [
            "query",
            "key",
            "value",
            "attn.out",
            "intermediate",
            "output",
        ];
        (0..6)
            .flat_map(|l| modules.iter().map(move |m| format!("L{l} {m}")))
            .collect()
    }

    /// 20 snapshots of 36 matrices at irregular steps, ranks in 1..=16.
    fn realistic_ranks() -> (Vec<u64>, Vec<Vec<usize>>) {
        let steps: Vec<u64> = (0..20u64)
            .map(|i| if i < 10 { i * 50 } else { 500 + (i - 10) * 120 })
            .collect();
        let ranks = (0..20usize)
            .map(|t| {
                (0..36usize)
                    .map(|m| {
                        if t == 0 {
                            8
                        } else {
                            1 + (m * 7 + t * (m % 5 + 1) + m / 6) % 16
                        }
                    })
                    .collect()
            })
            .collect();
        (steps, ranks)
    }

    type Series = Vec<(u64, f64)>;

    fn realistic_loss() -> (Series, Series) {
        let train = (1..=300u64)
            .map(|s| {
                let noise = ((s * 7919) % 101) as f64 / 101.0 - 0.5;
                (s, 0.35 + 0.4 * (-(s as f64) / 60.0).exp() + 0.08 * noise)
            })
            .collect();
        let valid = vec![(100, 0.81), (200, 0.865), (300, 0.882)];
        (train, valid)
    }

    #[test]
    fn heatmap_of_a_realistic_run_is_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs/demo/plots/ranks.png");
        let (steps, ranks) = realistic_ranks();
        rank_heatmap(&path, &steps, &ranks, &labels(), 16, 2000).unwrap();
        sensible(png_size(&path));
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left");
        keep(&path, "ranks.png");
    }

    #[test]
    fn heatmap_with_many_rows_and_columns_and_none() {
        let dir = tempfile::tempdir().unwrap();
        let labels: Vec<String> = (0..100).map(|i| format!("L{} m{}", i / 4, i % 4)).collect();
        let steps: Vec<u64> = (0..300).map(|i| i * 10).collect();
        let ranks: Vec<Vec<usize>> = (0..300)
            .map(|t| (0..100).map(|m| (t + m) % 9).collect())
            .collect();
        let big = dir.path().join("big.png");
        rank_heatmap(&big, &steps, &ranks, &labels, 8, 0).unwrap();
        let (w, h) = png_size(&big);
        sensible((w, h));
        assert!(h >= 100 * 12, "rows of at least 12 px, got height {h}");
        keep(&big, "ranks-100x300.png");

        let empty = dir.path().join("empty.png");
        rank_heatmap(&empty, &[], &[], &[], 0, 0).unwrap();
        sensible(png_size(&empty));
        keep(&empty, "ranks-empty.png");
        let one = dir.path().join("one.png");
        rank_heatmap(&one, &[0], &[vec![4, 0]], &labels[..2], 4, 0).unwrap();
        sensible(png_size(&one));
    }

    #[test]
    fn heatmap_rejects_mismatched_input_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.png");
        let e = rank_heatmap(&path, &[0, 10], &[vec![1]], &labels()[..1], 4, 0).unwrap_err();
        assert!(matches!(e, PlotError::Input { .. }), "{e}");
        assert!(e.to_string().contains("bad.png"), "{e}");
        let e = rank_heatmap(&path, &[0], &[vec![1, 2]], &labels()[..1], 4, 0).unwrap_err();
        assert!(e.to_string().contains("2 ranks for 1 matrices"), "{e}");
        let e =
            rank_heatmap(&path, &[10, 0], &[vec![1], vec![1]], &labels()[..1], 4, 0).unwrap_err();
        assert!(e.to_string().contains("backwards"), "{e}");
        assert!(!path.exists());
    }

    #[test]
    fn loss_curves_are_a_png_with_full_and_empty_series() {
        let dir = tempfile::tempdir().unwrap();
        let (train, valid) = realistic_loss();
        let path = dir.path().join("plots/loss.png");
        loss_curves(&path, &train, &valid, "accuracy").unwrap();
        sensible(png_size(&path));
        keep(&path, "loss.png");
        for (name, t, v) in [
            ("no-valid.png", &train[..], &[][..]),
            ("no-train.png", &[][..], &valid[..]),
            ("nothing.png", &[][..], &[][..]),
            ("one-each.png", &train[..1], &valid[..1]),
        ] {
            let p = dir.path().join(name);
            loss_curves(&p, t, v, "").unwrap();
            sensible(png_size(&p));
            keep(&p, name);
        }
        let odd = [(0, f64::NAN), (1, 2.0), (2, f64::INFINITY), (3, 1.5)];
        let p = dir.path().join("odd.png");
        loss_curves(&p, &odd, &[(3, f64::NAN)], "f1").unwrap();
        sensible(png_size(&p));
    }

    #[test]
    fn an_unwritable_path_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        // A regular file where the plots folder should be: no user (root included) can write there.
        let blocker = dir.path().join("plots");
        std::fs::write(&blocker, b"not a folder").unwrap();
        let path = blocker.join("loss.png");
        let e = loss_curves(&path, &[(1, 1.0)], &[], "accuracy").unwrap_err();
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        let e = rank_heatmap(&path, &[0], &[vec![1]], &labels()[..1], 4, 0).unwrap_err();
        assert!(matches!(e, PlotError::Io { .. }), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }

    #[test]
    fn pictures_are_written_without_any_font() {
        let dir = tempfile::tempdir().unwrap();
        let (steps, ranks) = realistic_ranks();
        let labels = labels();
        let heat = Heatmap {
            end_step: 2000,
            steps: &steps,
            ranks: &ranks,
            labels: &labels,
            scale_max: 16,
            text: false,
        };
        let p = dir.path().join("ranks.png");
        write_png(&p, heat.size(), |root| heat.draw(root)).unwrap();
        sensible(png_size(&p));
        keep(&p, "ranks-no-font.png");
        let (train, valid) = realistic_loss();
        let curves = Curves {
            train: train.iter().map(|&(s, v)| (s as f64, v)).collect(),
            valid: valid.iter().map(|&(s, v)| (s as f64, v)).collect(),
            metric: "accuracy".into(),
            text: false,
        };
        let p = dir.path().join("loss.png");
        write_png(&p, (1200, 860), |root| curves.draw(root)).unwrap();
        sensible(png_size(&p));
        keep(&p, "loss-no-font.png");
    }

    #[test]
    fn rank_colours_are_distinct_and_zero_is_grey() {
        let colours: Vec<_> = (0..=16).map(|r| rank_colour(r, 16)).collect();
        for w in colours.windows(2) {
            assert_ne!(w[0], w[1]);
        }
        assert_eq!(colours[0], RGBColor(217, 217, 217));
        assert_eq!(rank_colour(16, 16), RGBColor(253, 231, 37));
        assert_eq!(rank_colour(40, 16), rank_colour(16, 16));
    }
}
