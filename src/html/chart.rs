//! Charts: metric line charts drawn with plotters' SVG backend (axes, ticks and labels come
//! from it), and the one-line sparklines of the durations table (a polyline needs no crate).

use super::esc;
use plotters::prelude::*;

/// Line colours for the members of one chart (colour-blind-safe Tableau-like palette).
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(23, 190, 207),
];

/// One line of a chart.
pub struct Line<'a> {
    pub name: &'a str,
    pub values: &'a [Option<f64>],
}

const W: u32 = 440;
const H: u32 = 230;

/// A metric over runs: x is the run (labelled by `labels`), one line per member, and a dashed
/// red line per gate threshold. Returns an `<svg>` that scales to its container's width.
pub fn line_chart(labels: &[String], lines: &[Line], thresholds: &[(String, f64)]) -> String {
    let n = labels.len().max(1);
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for v in lines
        .iter()
        .flat_map(|l| l.values.iter().flatten())
        .chain(thresholds.iter().map(|(_, t)| t))
    {
        lo = lo.min(*v);
        hi = hi.max(*v);
    }
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = if hi > lo {
        (hi - lo) * 0.08
    } else {
        lo.abs().max(1.0) * 0.1
    };
    let (lo, hi) = (lo - pad, hi + pad);
    let mut buf = String::new();
    let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
        let root = SVGBackend::with_string(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .margin_right(44)
            .x_label_area_size(30)
            .y_label_area_size(58)
            .build_cartesian_2d(-0.4f64..(n as f64 - 0.6).max(0.6), lo..hi)?;
        let label_of = |x: &f64| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        let y_fmt = |y: &f64| short_num(*y);
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n.min(4))
            .y_labels(5)
            .x_label_formatter(&label_of)
            .y_label_formatter(&y_fmt)
            .label_style(("sans-serif", 16).into_font().color(&RGBColor(73, 80, 87)))
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(233, 236, 239))
            .axis_style(RGBColor(150, 150, 150))
            .draw()?;
        for (op, t) in thresholds {
            let style = ShapeStyle::from(&RGBColor(214, 39, 40)).stroke_width(2);
            chart.draw_series(DashedLineSeries::new(
                [(-0.4, *t), ((n as f64 - 0.6).max(0.6), *t)],
                6,
                4,
                style,
            ))?;
            chart.draw_series(std::iter::once(Text::new(
                format!("gate {op} {}", short_num(*t)),
                (-0.35, *t),
                ("sans-serif", 15).into_font().color(&RGBColor(214, 39, 40)),
            )))?;
        }
        for (li, line) in lines.iter().enumerate() {
            let c = PALETTE[li % PALETTE.len()];
            let pts: Vec<(f64, f64)> = line
                .values
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.map(|v| (i as f64, v)))
                .collect();
            chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?;
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
        }
        root.present()?;
        Ok(())
    })();
    if drawn.is_err() {
        return String::new();
    }
    responsive(&buf)
}

/// Make a fixed-size SVG scale to its container (and drop the namespace, which inline SVG
/// in HTML does not need: the report holds no `http` text at all).
pub fn responsive(svg: &str) -> String {
    let Some(start) = svg.find("<svg") else {
        return svg.to_string();
    };
    let Some(end) = svg[start..].find('>') else {
        return svg.to_string();
    };
    let head = &svg[start..start + end];
    let view = head
        .split("viewBox=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .map(str::to_string)
        .unwrap_or_else(|| format!("0 0 {W} {H}"));
    format!(
        "<svg viewBox=\"{view}\" width=\"100%\" preserveAspectRatio=\"xMidYMid meet\" role=\"img\">{}",
        &svg[start + end + 1..]
    )
}

/// A number in at most about 6 characters.
pub fn short_num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e6).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A 120×24 sparkline of durations (seconds; None: the stage did not run that time).
pub fn sparkline(values: &[Option<f64>], title: &str) -> String {
    let (w, h) = (120.0, 24.0);
    let max = values.iter().flatten().fold(0.0f64, |a, b| a.max(*b));
    let n = values.len().max(2) - 1;
    let pts: Vec<(f64, f64)> = values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            v.map(|v| {
                let x = 2.0 + (w - 4.0) * i as f64 / n as f64;
                let y = if max > 0.0 {
                    h - 3.0 - (h - 6.0) * v / max
                } else {
                    h - 3.0
                };
                (x, y)
            })
        })
        .collect();
    let poly: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let last = pts
        .last()
        .map(|(x, y)| format!("<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"2.5\"/>"))
        .unwrap_or_default();
    format!(
        "<svg class=\"spark\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\"><title>{}</title><polyline points=\"{}\"/>{last}</svg>",
        esc(title),
        poly.join(" ")
    )
}
