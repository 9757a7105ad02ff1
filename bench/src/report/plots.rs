//! SVG line charts of a run (plotters, SVG backend only: no system fonts or fontconfig; the
//! text is SVG `<text>` in a generic `sans-serif` family that any viewer has).
//!
//! A chart is data first ([`Chart`], [`Series`]) and drawing second ([`draw`]), so what a
//! scenario plots is testable without looking at pictures.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

/// One line.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// How the x axis reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XAxis {
    Linear,
    /// x is "nines" (−log10(1 − q)): 1 = p90, 2 = p99, 3 = p99.9; labelled as percentiles.
    Nines,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_axis: XAxis,
    pub series: Vec<Series>,
}

impl Chart {
    pub fn new(title: impl Into<String>, x: impl Into<String>, y: impl Into<String>) -> Chart {
        Chart {
            title: title.into(),
            x_label: x.into(),
            y_label: y.into(),
            x_axis: XAxis::Linear,
            series: Vec::new(),
        }
    }

    pub fn line(mut self, name: impl Into<String>, points: Vec<(f64, f64)>) -> Chart {
        self.series.push(Series {
            name: name.into(),
            points: points
                .into_iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect(),
        });
        self
    }

    pub fn nines(mut self) -> Chart {
        self.x_axis = XAxis::Nines;
        self
    }

    fn has_points(&self) -> bool {
        self.series.iter().any(|s| !s.points.is_empty())
    }

    /// (min, max) of x and of y over every series, widened so that neither range is empty;
    /// y starts at 0.
    fn bounds(&self) -> ((f64, f64), (f64, f64)) {
        let all = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
        for &(x, y) in all {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
        if !x0.is_finite() {
            (x0, x1) = (0.0, 1.0);
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        if y1 <= 0.0 {
            y1 = 1.0;
        }
        ((x0, x1), (0.0, y1 * 1.08))
    }
}

/// Line colours, distinct on white (the "tab10" set).
const PALETTE: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (255, 127, 14),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

/// The "nines" x of quantile `q` (0 ≤ q < 1).
pub fn nines(q: f64) -> f64 {
    -(1.0 - q.clamp(0.0, 0.999_999)).log10()
}

fn nines_label(x: f64) -> String {
    let q = 100.0 * (1.0 - 10f64.powf(-x));
    if q < 99.0 {
        format!("p{q:.0}")
    } else {
        let text = format!("p{q:.4}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// Draws `chart` into `path` (SVG). A chart without points is not drawn (`Ok(false)`).
pub fn draw(path: &Path, chart: &Chart) -> anyhow::Result<bool> {
    if !chart.has_points() {
        return Ok(false);
    }
    let err = |e: &dyn std::fmt::Display| anyhow!("plotting {}: {e}", path.display());
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let ((mut x0, mut x1), (y0, y1)) = chart.bounds();
    let nines_axis = chart.x_axis == XAxis::Nines;
    if nines_axis {
        // Whole nines only: p0, p90, p99, p99.9, …
        (x0, x1) = (0.0, x1.ceil().max(1.0));
    }
    let mut ctx = ChartBuilder::on(&root)
        .caption(&chart.title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| err(&e))?;
    let format_x = move |x: &f64| {
        if nines_axis {
            nines_label(*x)
        } else if x.abs() >= 100.0 || x.fract() == 0.0 {
            format!("{x:.0}")
        } else {
            format!("{x:.2}")
        }
    };
    let mut mesh = ctx.configure_mesh();
    if nines_axis {
        mesh.x_labels(x1 as usize + 1);
    }
    mesh.x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .x_label_formatter(&format_x)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, series) in chart.series.iter().enumerate() {
        let (r, g, b) = PALETTE[i % PALETTE.len()];
        let color = RGBColor(r, g, b).to_rgba();
        ctx.draw_series(LineSeries::new(
            series.points.iter().copied(),
            color.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label(series.name.as_str())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    ctx.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_svg_with_text_is_written_without_system_fonts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latency.svg");
        let chart = Chart::new("send → deliver", "second", "ms")
            .line("p50", vec![(0.0, 1.0), (1.0, 2.0), (2.0, 1.5)])
            .line("p99", vec![(0.0, 5.0), (1.0, 9.0), (2.0, 7.0)]);
        assert!(draw(&path, &chart).unwrap());
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        for text in ["send → deliver", "p50", "p99", "second"] {
            assert!(svg.contains(text), "{text} missing");
        }
        assert!(svg.contains("<polyline"), "no lines drawn");
    }

    #[test]
    fn empty_charts_are_skipped_and_degenerate_ranges_widened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.svg");
        assert!(!draw(&path, &Chart::new("t", "x", "y").line("a", vec![])).unwrap());
        assert!(!path.exists());
        let one = Chart::new("t", "x", "y").line("a", vec![(3.0, 0.0), (f64::NAN, 1.0)]);
        assert_eq!(one.series[0].points.len(), 1);
        assert_eq!(one.bounds(), ((3.0, 4.0), (0.0, 1.08)));
        assert!(draw(&path, &one).unwrap());
    }

    #[test]
    fn nines_map_quantiles_and_read_back_as_percentiles() {
        assert!((nines(0.9) - 1.0).abs() < 1e-9);
        assert!((nines(0.999) - 3.0).abs() < 1e-9);
        assert_eq!(nines_label(nines(0.5)), "p50");
        assert_eq!(nines_label(2.0), "p99");
        assert_eq!(nines_label(3.0), "p99.9");
        assert!(nines(1.0).is_finite());
    }
}
