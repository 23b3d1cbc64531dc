//! A bar chart with error bars: one bar per method (the mean over seeds), a whisker of one
//! standard deviation either side, and every seed's value as a dot.

use super::{DrawResult, FAMILY, PlotError, text_available, write_png};
use crate::stats::mean_sd;
use plotters::prelude::*;
use std::path::Path;

/// One bar of [`bar_chart`].
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// The label under the bar.
    pub label: String,
    /// The values (one per seed); the bar is their mean, the whisker their standard deviation.
    pub values: Vec<f64>,
}

/// Writes a bar chart of `bars` to `path` (PNG) with `y_label` on the vertical axis. The axis
/// spans the values' range with some room (it does not start at 0: the differences between
/// methods are what the picture is for). Non-finite values are left out; a bar without values
/// is drawn empty.
pub fn bar_chart(path: &Path, title: &str, y_label: &str, bars: &[Bar]) -> Result<(), PlotError> {
    if bars.is_empty() {
        return Err(PlotError::Input {
            path: path.to_path_buf(),
            message: "no bars to draw".into(),
        });
    }
    let bars: Vec<(String, Vec<f64>)> = bars
        .iter()
        .map(|b| {
            let v = b.values.iter().copied().filter(|x| x.is_finite()).collect();
            (b.label.clone(), v)
        })
        .collect();
    let text = text_available();
    let width = (160 + 125 * bars.len() as u32).max(640);
    write_png(path, (width, 620), |root| {
        draw(root, title, y_label, &bars, text)
    })
}

fn draw(
    root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    y_label: &str,
    bars: &[(String, Vec<f64>)],
    text: bool,
) -> DrawResult {
    root.fill(&WHITE)?;
    let (lo, hi) = bars
        .iter()
        .flat_map(|(_, v)| {
            let (m, s) = mean_sd(v);
            v.iter().copied().chain([m - s, m + s])
        })
        .filter(|x| x.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        });
    let (lo, hi) = if lo > hi {
        (0.0, 1.0)
    } else if hi > lo {
        (lo - 0.15 * (hi - lo), hi + 0.1 * (hi - lo))
    } else {
        (lo - 1.0, hi + 1.0)
    };
    let n = bars.len();
    let mut builder = ChartBuilder::on(root);
    builder.margin(20);
    if text {
        builder
            .caption(title, (FAMILY, 24))
            .x_label_area_size(40)
            .y_label_area_size(70);
    }
    let mut chart = builder.build_cartesian_2d(0.0..n as f64, lo..hi)?;
    let labels: Vec<String> = bars.iter().map(|(l, _)| l.clone()).collect();
    if text {
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n * 2 + 1)
            .x_label_formatter(&|x: &f64| {
                let centre = x - 0.5;
                let i = centre.round();
                if (centre - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
                    labels[i as usize].clone()
                } else {
                    String::new()
                }
            })
            .x_label_style((FAMILY, 14).into_font())
            .y_desc(y_label)
            .draw()?;
    } else {
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_labels(0)
            .draw()?;
    }
    let fill = RGBColor(59, 82, 139);
    for (i, (_, v)) in bars.iter().enumerate() {
        let x = i as f64;
        let (mean, sd) = mean_sd(v);
        if mean.is_finite() {
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x + 0.15, lo), (x + 0.85, mean)],
                fill.mix(0.75).filled(),
            )))?;
            let whisker = BLACK.stroke_width(2);
            chart.draw_series([
                PathElement::new(vec![(x + 0.5, mean - sd), (x + 0.5, mean + sd)], whisker),
                PathElement::new(vec![(x + 0.38, mean - sd), (x + 0.62, mean - sd)], whisker),
                PathElement::new(vec![(x + 0.38, mean + sd), (x + 0.62, mean + sd)], whisker),
            ])?;
        }
        let k = v.len().max(1) as f64;
        chart.draw_series(v.iter().enumerate().map(|(j, &y)| {
            let dx = 0.25 + 0.5 * (j as f64 + 0.5) / k;
            Circle::new((x + dx, y), 4, RGBColor(253, 231, 37).filled())
        }))?;
        chart.draw_series(v.iter().enumerate().map(|(j, &y)| {
            let dx = 0.25 + 0.5 * (j as f64 + 0.5) / k;
            Circle::new((x + dx, y), 4, BLACK.stroke_width(1))
        }))?;
    }
    Ok(())
}
