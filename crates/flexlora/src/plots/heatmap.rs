//! The rank heatmap.

use super::{DrawResult, FAMILY, PlotError, rank_colour, step_label, text_available, write_png};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

/// Writes a heatmap of the rank of every adapted matrix over training to `path` (PNG).
///
/// Rows are the matrices in the order of `matrix_labels` (first at the top, e.g. `L0 query`,
/// `L0 key`, ..., `L5 output`; a line separates layers, the layer being the label's first
/// word). Snapshot `ranks[i]` (one rank per matrix) was taken at optimiser step `steps[i]`
/// and its cells span from that step to the next snapshot's step, so irregular intervals show
/// as such; the last snapshot's cells run to `end_step` (the end of training; when it is not
/// after the last snapshot, they get the width of the interval before it). Colours run from 0
/// (grey, matrix switched off) to `r_max` (or the largest rank seen, if larger), explained by
/// a colour bar. No snapshots gives an empty chart. Steps must not decrease.
pub fn rank_heatmap(
    path: &Path,
    steps: &[u64],
    ranks: &[Vec<usize>],
    matrix_labels: &[String],
    r_max: usize,
    end_step: u64,
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
        end_step,
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

/// A row label of at most 40 characters.
fn short_label(label: &str) -> String {
    if label.chars().count() <= 40 {
        label.to_string()
    } else {
        label.chars().take(39).chain(std::iter::once('…')).collect()
    }
}

/// Everything [`rank_heatmap`] draws, checked.
pub(super) struct Heatmap<'a> {
    pub(super) end_step: u64,
    pub(super) steps: &'a [u64],
    pub(super) ranks: &'a [Vec<usize>],
    pub(super) labels: &'a [String],
    pub(super) scale_max: usize,
    pub(super) text: bool,
}

impl Heatmap<'_> {
    /// Pixel height of one matrix row: roomy for a few rows, at least 12 for ~100.
    fn row_px(&self) -> u32 {
        (900 / self.labels.len().max(1) as u32).clamp(12, 24)
    }

    pub(super) fn size(&self) -> (u32, u32) {
        let rows = self.labels.len().max(1) as u32;
        (1400, (rows * self.row_px() + 150).max(420))
    }

    pub(super) fn draw(
        &self,
        root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    ) -> DrawResult {
        root.fill(&WHITE)?;
        let text = self.text;
        let n = self.labels.len();
        let (main, bar) = root.split_horizontally(1400 - 130);

        // x: steps; the last snapshot lasts until the end of training.
        let x0 = self.steps.first().copied().unwrap_or(0) as f64;
        let last = self.steps.last().copied().unwrap_or(0) as f64;
        let x1 = if self.end_step as f64 > last {
            self.end_step as f64
        } else {
            let last_width = match self.steps {
                [.., a, b] if b > a => (b - a) as f64,
                _ => 1.0_f64.max((last - x0) / 20.0),
            };
            last + last_width
        };
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
