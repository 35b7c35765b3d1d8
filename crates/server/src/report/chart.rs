//! The seed's histogram as a chart: one bar per second of delay, axes labelled, as SVG (a
//! string) or PNG (a file).
//!
//! Role: draw with plotters on its ab_glyph text backend, so no system font library is
//! needed; the font is DejaVu Sans, embedded (assets/DejaVuSans.ttf, Bitstream Vera
//! licence in assets/DejaVuSans.LICENSE) and registered before any drawing: plotters fails
//! with `FontUnavailable` otherwise, even for SVG (crates.md).
//!
//! Must not: compute statistics (it draws [`Analysis::histogram`]) or do I/O other than the
//! PNG file plotters writes itself.
//!
//! Invariants: every bar is a `<rect>` filled with [`BAR_COLOR`] (the tests count them), and
//! its height is proportional to its count (the y axis starts at 0).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::stats::Analysis;

/// Size of the charts, pixels.
pub const SIZE: (u32, u32) = (900, 500);

/// The bars' colour.
pub const BAR_COLOR: RGBColor = RGBColor(0x2B, 0x6C, 0xB0);

const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// The chart as an SVG document.
pub fn svg(a: &Analysis) -> Result<String, String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        draw(&root, a)?;
    }
    Ok(out)
}

/// Writes the chart as a PNG file.
pub fn png(a: &Analysis, path: &Path) -> Result<(), String> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    draw(&root, a)
}

fn draw<B: DrawingBackend>(root: &DrawingArea<B, Shift>, a: &Analysis) -> Result<(), String> {
    register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| "the embedded font is not a font".to_owned())?;
    let bars: Vec<(u64, u64)> = a.histogram().collect();
    let last = bars.last().map_or(0, |(s, _)| *s);
    let top = bars.iter().map(|(_, n)| *n).max().unwrap_or(0);
    // Headroom above the longest bar; the axis starts at 0 so heights stay proportional.
    let y_max = top + top / 10 + 1;
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(root)
        .caption(
            "Pre-greeting traffic: connections by delay",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((0u64..last + 1).into_segmented(), 0u64..y_max)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc("Delay before the client talked (seconds)")
        .y_desc("Connections")
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(
            Histogram::vertical(&chart)
                .style(BAR_COLOR.filled())
                .margin(1)
                .data(bars.iter().copied()),
        )
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::parse::Parsed;
    use super::*;

    #[test]
    fn svg_has_one_bar_rect_per_delay_and_labels() {
        let mut a = Analysis::default();
        for (seconds, n) in [(0, 3), (2, 6), (7, 1)] {
            for _ in 0..n {
                a.accept(Parsed::Pregreet {
                    qid: None,
                    seconds,
                    waited_ms: None,
                });
            }
        }
        a.finish();
        let text = svg(&a).unwrap();
        assert_eq!(text.matches("fill=\"#2B6CB0\"").count(), 3, "{text}");
        assert!(text.contains("Connections"));
        assert!(text.contains("Delay before the client talked (seconds)"));
    }

    #[test]
    fn an_empty_histogram_still_draws() {
        let text = svg(&Analysis::default()).unwrap();
        assert!(text.starts_with("<svg"));
        assert_eq!(text.matches("fill=\"#2B6CB0\"").count(), 0);
    }
}
