//! PNG pictures of a training run (`runs/<name>/plots/`): the rank of every adapted matrix over
//! training as a heatmap ([`rank_heatmap`]) and the training loss with the validation metric
//! ([`loss_curves`]).
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

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

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

/// Writes a heatmap of the rank of every adapted matrix over training to `path` (PNG).
///
/// Rows are the matrices in the order of `matrix_labels` (first at the top, e.g. `L0 query`,
/// `L0 key`, ..., `L5 output`; a line separates layers, the layer being the label's first
/// word). Snapshot `ranks[i]` (one rank per matrix) was taken at optimiser step `steps[i]`
/// and its cells span from that step to the next snapshot's step, so irregular intervals show
/// as such; the last snapshot gets the width of the interval before it. Colours run from 0
/// (grey, matrix switched off) to `r_max` (or the largest rank seen, if larger), explained by
/// a colour bar. No snapshots gives an empty chart. Steps must not decrease.
pub fn rank_heatmap(
    path: &Path,
    steps: &[u64],
    ranks: &[Vec<usize>],
    matrix_labels: &[String],
    r_max: usize,
) -> Result<(), PlotError> {
    let input_err = |message: String| PlotError::Input {
        path: path.to_path_buf(),
        message,
    };
    if steps.len() != ranks.len() {
        return Err(input_err(format!(
            "{} steps but {} rank snapshots",
            steps.len(),
            ranks.len()
        )));
    }
    if let Some((i, r)) = ranks
        .iter()
        .enumerate()
        .find(|(_, r)| r.len() != matrix_labels.len())
    {
        return Err(input_err(format!(
            "snapshot {i} (step {}) has {} ranks for {} matrices",
            steps[i],
            r.len(),
            matrix_labels.len()
        )));
    }
    if let Some(w) = steps.windows(2).find(|w| w[1] < w[0]) {
        return Err(input_err(format!(
            "steps go backwards ({} then {})",
            w[0], w[1]
        )));
    }
    let heat = Heatmap {
        steps,
        ranks,
        labels: matrix_labels,
        scale_max: ranks
            .iter()
            .flatten()
            .copied()
            .fold(r_max.max(1), usize::max),
        text: text_available(),
    };
    write_png(path, heat.size(), |root| heat.draw(root))
}

/// A linear f64 axis whose ticks are exactly `keys` (row centres, colour-bar levels);
/// plotters' own `with_key_points` cannot be given a label formatter for f64.
struct Keyed {
    inner: RangedCoordf64,
    keys: Vec<f64>,
}

impl Keyed {
    fn new(range: std::ops::Range<f64>, keys: Vec<f64>) -> Self {
        Self {
            inner: range.into(),
            keys,
        }
    }
}

impl Ranged for Keyed {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        self.keys.clone()
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.inner.range()
    }
}

/// A step axis label: whole steps only (ticks between two steps stay unlabelled).
fn step_label(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-6 {
        format!("{}", v.round() as i64)
    } else {
        String::new()
    }
}

/// A row label of at most 40 characters.
fn short_label(label: &str) -> String {
    if label.chars().count() <= 40 {
        label.to_string()
    } else {
        label.chars().take(39).chain(std::iter::once('…')).collect()
    }
}

/// Everything [`rank_heatmap`] draws, checked.
struct Heatmap<'a> {
    steps: &'a [u64],
    ranks: &'a [Vec<usize>],
    labels: &'a [String],
    scale_max: usize,
    text: bool,
}

impl Heatmap<'_> {
    /// Pixel height of one matrix row: roomy for a few rows, at least 12 for ~100.
    fn row_px(&self) -> u32 {
        (900 / self.labels.len().max(1) as u32).clamp(12, 24)
    }

    fn size(&self) -> (u32, u32) {
        let rows = self.labels.len().max(1) as u32;
        (1400, (rows * self.row_px() + 150).max(420))
    }

    fn draw(&self, root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> DrawResult {
        root.fill(&WHITE)?;
        let text = self.text;
        let n = self.labels.len();
        let (main, bar) = root.split_horizontally(1400 - 130);

        // x: steps; the last snapshot lasts as long as the interval before it.
        let x0 = self.steps.first().copied().unwrap_or(0) as f64;
        let last = self.steps.last().copied().unwrap_or(0) as f64;
        let last_width = match self.steps {
            [.., a, b] if b > a => (b - a) as f64,
            _ => 1.0_f64.max((last - x0) / 20.0),
        };
        let x1 = last + last_width;
        // y: row i (from the top) is [n-1-i, n-i]; labels sit at the centres.
        let rows = n.max(1) as f64;
        let centres: Vec<f64> = (0..n).map(|i| i as f64 + 0.5).collect();
        let y_range = Keyed::new(0.0..rows, centres);

        let mut builder = ChartBuilder::on(&main);
        builder.margin(12).margin_right(20);
        if text {
            builder
                .caption(
                    "Rank of each adapted matrix over training",
                    (FAMILY, 22).into_font(),
                )
                .x_label_area_size(50)
                .y_label_area_size(self.label_width());
        }
        let mut chart = builder.build_cartesian_2d(x0..x1, y_range)?;
        let label_px = (self.row_px() as f64 * 0.75).round().min(14.0);
        let y_fmt = |v: &f64| {
            let row = v.floor() as usize;
            n.checked_sub(row + 1)
                .map(|i| short_label(&self.labels[i]))
                .unwrap_or_default()
        };
        let x_fmt = step_label;
        let mut mesh = chart.configure_mesh();
        mesh.disable_y_mesh()
            .disable_x_mesh()
            .y_label_formatter(&y_fmt)
            .x_label_formatter(&x_fmt);
        if text {
            mesh.x_labels(12)
                .x_desc("optimiser step (each cell lasts until the next rank adjustment)")
                .y_desc("adapted matrix")
                .y_label_style((FAMILY, label_px))
                .x_label_style((FAMILY, 14))
                .axis_desc_style((FAMILY, 15));
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw()?;

        // Cells: one rectangle per (snapshot, matrix).
        let ends: Vec<f64> = self
            .steps
            .iter()
            .skip(1)
            .map(|&s| s as f64)
            .chain(std::iter::once(x1))
            .collect();
        let cells = self
            .steps
            .iter()
            .zip(&ends)
            .zip(self.ranks)
            .filter(|((s, e), _)| **e > **s as f64)
            .flat_map(|((&s, &e), snap)| {
                snap.iter().enumerate().map(move |(i, &r)| {
                    let top = (n - i) as f64;
                    Rectangle::new(
                        [(s as f64, top), (e, top - 1.0)],
                        rank_colour(r, self.scale_max).filled(),
                    )
                })
            });
        chart.draw_series(cells)?;

        // Lines between layers (the layer being the label's first word).
        let layer = |l: &String| l.split_whitespace().next().unwrap_or("").to_string();
        let separators = (1..n)
            .filter(|&i| layer(&self.labels[i]) != layer(&self.labels[i - 1]))
            .map(|i| {
                let y = (n - i) as f64;
                PathElement::new(vec![(x0, y), (x1, y)], WHITE.stroke_width(2))
            });
        chart.draw_series(separators)?;
        chart.draw_series(std::iter::once(Rectangle::new(
            [(x0, rows), (x1, 0.0)],
            BLACK.stroke_width(1),
        )))?;
        if self.steps.is_empty() && text {
            let centre = Pos::new(HPos::Center, VPos::Center);
            chart.draw_series(std::iter::once(Text::new(
                "no rank snapshots",
                ((x0 + x1) / 2.0, rows / 2.0),
                (FAMILY, 20).into_font().color(&BLACK).pos(centre),
            )))?;
        }
        self.draw_colour_bar(&bar)
    }

    /// Room for the longest row label at its font size.
    fn label_width(&self) -> u32 {
        let chars = self
            .labels
            .iter()
            .map(|l| short_label(l).chars().count())
            .max()
            .unwrap_or(0) as f64;
        let px = (self.row_px() as f64 * 0.75).round().min(14.0);
        (chars * px * 0.62 + 30.0).clamp(60.0, 320.0) as u32
    }

    /// A vertical bar with one block per rank 0..=scale_max, labelled.
    fn draw_colour_bar(
        &self,
        area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    ) -> DrawResult {
        let levels = self.scale_max + 1;
        // Label every rank when they fit, else about 16 evenly spaced ones (always 0 and max).
        let every = levels.div_ceil(17).max(1);
        let key: Vec<f64> = (0..levels)
            .filter(|k| k % every == 0 || *k == self.scale_max)
            .map(|k| k as f64 + 0.5)
            .collect();
        let mut builder = ChartBuilder::on(area);
        builder.margin_top(60).margin_bottom(70).margin_right(50);
        if self.text {
            builder
                .caption("rank", (FAMILY, 16).into_font())
                .y_label_area_size(0)
                .right_y_label_area_size(36);
        }
        let mut chart =
            builder.build_cartesian_2d(0.0..1.0, Keyed::new(0.0..levels as f64, key))?;
        let fmt = |v: &f64| format!("{}", v.floor() as usize);
        let mut mesh = chart.configure_mesh();
        mesh.disable_mesh().x_labels(0).y_label_formatter(&fmt);
        if self.text {
            mesh.y_label_style((FAMILY, 13));
        } else {
            mesh.y_labels(0);
        }
        mesh.draw()?;
        chart.draw_series((0..levels).map(|k| {
            Rectangle::new(
                [(0.0, k as f64), (1.0, k as f64 + 1.0)],
                rank_colour(k, self.scale_max).filled(),
            )
        }))?;
        chart.draw_series(std::iter::once(Rectangle::new(
            [(0.0, 0.0), (1.0, levels as f64)],
            BLACK.stroke_width(1),
        )))?;
        Ok(())
    }
}

/// Writes the training loss and the validation metric against the optimiser step to `path`
/// (PNG), as two panels over the same step axis: training loss on top (the raw values and,
/// from 20 points on, their running mean), the validation metric (`metric_name`, e.g.
/// `accuracy`) below with a marker per evaluation. Either series may be empty (its panel says
/// so); non-finite values are skipped.
pub fn loss_curves(
    path: &Path,
    train_loss: &[(u64, f64)],
    validation: &[(u64, f64)],
    metric_name: &str,
) -> Result<(), PlotError> {
    let finite = |s: &[(u64, f64)]| -> Vec<(f64, f64)> {
        s.iter()
            .filter(|(_, v)| v.is_finite())
            .map(|&(t, v)| (t as f64, v))
            .collect()
    };
    let curves = Curves {
        train: finite(train_loss),
        valid: finite(validation),
        metric: if metric_name.trim().is_empty() {
            "metric".to_string()
        } else {
            metric_name.trim().to_string()
        },
        text: text_available(),
    };
    write_png(path, (1200, 860), |root| curves.draw(root))
}

/// Everything [`loss_curves`] draws, finite values only.
struct Curves {
    train: Vec<(f64, f64)>,
    valid: Vec<(f64, f64)>,
    metric: String,
    text: bool,
}

/// A y range around `values` with a little room; a sensible one for none or one value.
fn padded_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo > hi {
        return 0.0..1.0;
    }
    let pad = if hi > lo {
        (hi - lo) * 0.06
    } else {
        (lo.abs() * 0.1).max(0.5)
    };
    (lo - pad)..(hi + pad)
}

/// The running mean of `points` over a trailing window of `w` points.
fn running_mean(points: &[(f64, f64)], w: usize) -> Vec<(f64, f64)> {
    let mut sum = 0.0;
    points
        .iter()
        .enumerate()
        .map(|(i, &(x, y))| {
            sum += y;
            if i >= w {
                sum -= points[i - w].1;
            }
            (x, sum / (i + 1).min(w) as f64)
        })
        .collect()
}

impl Curves {
    fn draw(&self, root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> DrawResult {
        root.fill(&WHITE)?;
        let root = if self.text {
            root.margin(8, 0, 0, 0).titled(
                "Training loss and validation metric",
                (FAMILY, 22).into_font(),
            )?
        } else {
            root.clone()
        };
        let x_max = self
            .train
            .iter()
            .chain(&self.valid)
            .map(|p| p.0)
            .fold(0.0_f64, f64::max);
        let x_range = 0.0..(x_max * 1.02).max(10.0);
        let (top, bottom) = root.split_vertically((root.dim_in_pixel().1 as f64 * 0.58) as u32);

        let blue = RGBColor(31, 119, 180);
        let light_blue = RGBColor(158, 202, 225);
        let orange = RGBColor(230, 97, 1);

        let mut chart = self.panel(
            &top,
            x_range.clone(),
            self.train.iter().map(|p| p.1),
            "training loss",
        )?;
        if self.train.is_empty() {
            self.say_empty(&mut chart, "no training loss recorded")?;
        } else {
            let smooth = self.train.len() >= 20;
            let raw_colour = if smooth { light_blue } else { blue };
            if self.train.len() <= 30 {
                chart.draw_series(self.train.iter().map(|&p| Circle::new(p, 3, blue.filled())))?;
            }
            let raw = chart.draw_series(LineSeries::new(
                self.train.iter().copied(),
                raw_colour.stroke_width(1),
            ))?;
            if self.text {
                raw.label("training loss").legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], raw_colour.stroke_width(2))
                });
            }
            if smooth {
                let w = (self.train.len() / 25).max(5);
                let mean = chart.draw_series(LineSeries::new(
                    running_mean(&self.train, w),
                    blue.stroke_width(2),
                ))?;
                if self.text {
                    mean.label(format!("running mean of {w} points"))
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 24, y)], blue.stroke_width(2))
                        });
                }
            }
            self.legend(&mut chart, &self.train)?;
        }

        let label = format!("validation {}", self.metric);
        let mut chart = self.panel(&bottom, x_range, self.valid.iter().map(|p| p.1), &label)?;
        if self.valid.is_empty() {
            self.say_empty(&mut chart, "no validation points")?;
        } else {
            let line = chart.draw_series(LineSeries::new(
                self.valid.iter().copied(),
                orange.stroke_width(2),
            ))?;
            if self.text {
                line.label(label.clone()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], orange.stroke_width(2))
                });
            }
            chart.draw_series(
                self.valid
                    .iter()
                    .map(|&p| Circle::new(p, 4, orange.filled())),
            )?;
            self.legend(&mut chart, &self.valid)?;
        }
        Ok(())
    }

    /// One panel with its axes: x = optimiser step, y = `values`' range named `y_desc`.
    fn panel<'a>(
        &self,
        area: &DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>,
        x_range: std::ops::Range<f64>,
        values: impl Iterator<Item = f64>,
        y_desc: &str,
    ) -> Result<
        ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
        Box<dyn Error>,
    > {
        let mut builder = ChartBuilder::on(area);
        builder.margin(14).margin_right(30);
        if self.text {
            builder.x_label_area_size(48).y_label_area_size(80);
        }
        let mut chart = builder.build_cartesian_2d(x_range, padded_range(values))?;
        let x_fmt = step_label;
        let mut mesh = chart.configure_mesh();
        mesh.x_label_formatter(&x_fmt)
            .max_light_lines(4)
            .light_line_style(RGBColor(235, 235, 235))
            .bold_line_style(RGBColor(200, 200, 200));
        if self.text {
            mesh.x_labels(12)
                .y_labels(8)
                .x_desc("optimiser step")
                .y_desc(y_desc)
                .label_style((FAMILY, 14))
                .axis_desc_style((FAMILY, 15));
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw()?;
        Ok(chart)
    }

    /// The legend in the right-hand corner (upper or lower) that the curve's last third
    /// leaves free.
    fn legend<'a>(
        &self,
        chart: &mut ChartContext<
            'a,
            BitMapBackend<'a>,
            Cartesian2d<RangedCoordf64, RangedCoordf64>,
        >,
        points: &[(f64, f64)],
    ) -> DrawResult {
        if self.text {
            let (x, y) = (chart.x_range(), chart.y_range());
            let right = x.start + (x.end - x.start) * 0.6;
            let mid = (y.start + y.end) / 2.0;
            let high = points
                .iter()
                .filter(|p| p.0 >= right)
                .map(|p| if p.1 > mid { 1i64 } else { -1 })
                .sum::<i64>();
            let position = if high > 0 {
                SeriesLabelPosition::LowerRight
            } else {
                SeriesLabelPosition::UpperRight
            };
            chart
                .configure_series_labels()
                .position(position)
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(160, 160, 160))
                .label_font((FAMILY, 14))
                .draw()?;
        }
        Ok(())
    }

    fn say_empty(
        &self,
        chart: &mut ChartContext<
            '_,
            BitMapBackend<'_>,
            Cartesian2d<RangedCoordf64, RangedCoordf64>,
        >,
        message: &str,
    ) -> DrawResult {
        if self.text {
            let (x, y) = (chart.x_range(), chart.y_range());
            let centre = Pos::new(HPos::Center, VPos::Center);
            chart.draw_series(std::iter::once(Text::new(
                message.to_string(),
                ((x.start + x.end) / 2.0, (y.start + y.end) / 2.0),
                (FAMILY, 18)
                    .into_font()
                    .color(&RGBColor(90, 90, 90))
                    .pos(centre),
            )))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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
        rank_heatmap(&path, &steps, &ranks, &labels(), 16).unwrap();
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
        rank_heatmap(&big, &steps, &ranks, &labels, 8).unwrap();
        let (w, h) = png_size(&big);
        sensible((w, h));
        assert!(h >= 100 * 12, "rows of at least 12 px, got height {h}");
        keep(&big, "ranks-100x300.png");

        let empty = dir.path().join("empty.png");
        rank_heatmap(&empty, &[], &[], &[], 0).unwrap();
        sensible(png_size(&empty));
        keep(&empty, "ranks-empty.png");
        let one = dir.path().join("one.png");
        rank_heatmap(&one, &[0], &[vec![4, 0]], &labels[..2], 4).unwrap();
        sensible(png_size(&one));
    }

    #[test]
    fn heatmap_rejects_mismatched_input_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.png");
        let e = rank_heatmap(&path, &[0, 10], &[vec![1]], &labels()[..1], 4).unwrap_err();
        assert!(matches!(e, PlotError::Input { .. }), "{e}");
        assert!(e.to_string().contains("bad.png"), "{e}");
        let e = rank_heatmap(&path, &[0], &[vec![1, 2]], &labels()[..1], 4).unwrap_err();
        assert!(e.to_string().contains("2 ranks for 1 matrices"), "{e}");
        let e = rank_heatmap(&path, &[10, 0], &[vec![1], vec![1]], &labels()[..1], 4).unwrap_err();
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
        let e = rank_heatmap(&path, &[0], &[vec![1]], &labels()[..1], 4).unwrap_err();
        assert!(matches!(e, PlotError::Io { .. }), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }

    #[test]
    fn pictures_are_written_without_any_font() {
        let dir = tempfile::tempdir().unwrap();
        let (steps, ranks) = realistic_ranks();
        let labels = labels();
        let heat = Heatmap {
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
