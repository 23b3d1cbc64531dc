//! Training loss and validation metric curves.

use super::{DrawResult, FAMILY, PlotError, step_label, text_available, write_png};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::error::Error;
use std::path::Path;

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
pub(super) struct Curves {
    pub(super) train: Vec<(f64, f64)>,
    pub(super) valid: Vec<(f64, f64)>,
    pub(super) metric: String,
    pub(super) text: bool,
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
    pub(super) fn draw(
        &self,
        root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    ) -> DrawResult {
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
