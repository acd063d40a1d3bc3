//! Line charts with labeled axes, drawn by `plotters` as SVG text or as PNG bytes.
//!
//! Every chart of the report (reliability diagram, ROC and risk-coverage curves, score
//! histograms as step lines) is a [`LineChart`]: a few named series of `(x, y)` points over
//! fixed axis ranges. Text is drawn with the DejaVu Sans font compiled into the binary, so the
//! same chart renders on any machine, with or without fonts installed.

use std::sync::Once;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;

/// Width and height of every chart, in pixels.
pub const SIZE: (u32, u32) = (560, 400);

/// Colours of the series, in order (Tableau 10).
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// One named line.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Name shown in the legend.
    pub name: String,
    /// Points in drawing order.
    pub points: Vec<(f64, f64)>,
}

/// A chart of lines over fixed axis ranges.
#[derive(Clone, Debug, PartialEq)]
pub struct LineChart {
    /// Title above the plot.
    pub title: String,
    /// Label of the x axis, with its unit.
    pub x_label: String,
    /// Label of the y axis, with its unit.
    pub y_label: String,
    /// Range of the x axis.
    pub x_range: (f64, f64),
    /// Range of the y axis.
    pub y_range: (f64, f64),
    /// The lines, drawn in order with the colours of the palette.
    pub series: Vec<Series>,
    /// Draws the dashed diagonal `y = x` (perfect calibration, chance ROC).
    pub diagonal: bool,
}

/// Registers the embedded font once per process; plotters looks fonts up by family name.
fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is a valid TrueType file compiled into the `dejavu` crate.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

impl LineChart {
    /// The chart as an SVG document.
    ///
    /// # Errors
    /// When plotters fails to lay out the chart (for example an empty axis range).
    pub fn to_svg(&self) -> Result<String> {
        register_font();
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
            self.draw(&root)?;
            root.present().map_err(|e| anyhow!("cannot finish the svg chart: {e}"))?;
        }
        Ok(svg)
    }

    /// The chart as PNG bytes.
    ///
    /// # Errors
    /// When plotters fails to lay out the chart or the PNG cannot be encoded.
    pub fn to_png(&self) -> Result<Vec<u8>> {
        register_font();
        let (width, height) = SIZE;
        let mut rgb = vec![0u8; (width * height * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
            self.draw(&root)?;
            root.present().map_err(|e| anyhow!("cannot finish the bitmap chart: {e}"))?;
        }
        let image = image::RgbImage::from_raw(width, height, rgb)
            .ok_or_else(|| anyhow!("chart buffer has the wrong size"))?;
        let mut png = Vec::new();
        image.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
        Ok(png)
    }

    fn draw<B: DrawingBackend>(&self, root: &DrawingArea<B, Shift>) -> Result<()>
    where
        B::ErrorType: 'static,
    {
        let error = |e: DrawingAreaErrorKind<B::ErrorType>| anyhow!("cannot draw chart: {e}");
        root.fill(&WHITE).map_err(error)?;

        let (x0, x1) = self.x_range;
        let (y0, y1) = self.y_range;
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(error)?;
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .label_style(("sans-serif", 12))
            .axis_desc_style(("sans-serif", 14))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(error)?;

        if self.diagonal {
            let line = DashedLineSeries::new([(x0, x0), (x1, x1)], 6, 4, BLACK.mix(0.4).into());
            chart.draw_series(line).map_err(error)?;
        }
        for (i, series) in self.series.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(series.points.iter().copied(), colour.stroke_width(2)))
                .map_err(error)?
                .label(&series.name)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2))
                });
        }
        if !self.series.is_empty() {
            chart
                .configure_series_labels()
                .label_font(("sans-serif", 12))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .draw()
                .map_err(error)?;
        }
        Ok(())
    }
}

/// A histogram as a step line: `counts` over equal bins of `range`, scaled to a density (the
/// area under the steps is 1), so sets of different sizes compare.
pub fn density_steps(counts: &[u64], range: (f64, f64)) -> Vec<(f64, f64)> {
    let total: u64 = counts.iter().sum();
    let width = (range.1 - range.0) / counts.len() as f64;
    let mut points = Vec::with_capacity(2 * counts.len() + 2);
    points.push((range.0, 0.0));
    for (i, &count) in counts.iter().enumerate() {
        let density = if total == 0 { 0.0 } else { count as f64 / (total as f64 * width) };
        points.push((range.0 + i as f64 * width, density));
        points.push((range.0 + (i + 1) as f64 * width, density));
    }
    points.push((range.1, 0.0));
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> LineChart {
        LineChart {
            title: "Reliability".into(),
            x_label: "confidence".into(),
            y_label: "accuracy".into(),
            x_range: (0.0, 1.0),
            y_range: (0.0, 1.0),
            series: vec![Series { name: "T = 1".into(), points: vec![(0.1, 0.2), (0.9, 0.8)] }],
            diagonal: true,
        }
    }

    #[test]
    fn svg_carries_title_axis_labels_and_legend() {
        let svg = chart().to_svg().unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        for text in ["Reliability", "confidence", "accuracy", "T = 1"] {
            assert!(svg.contains(text), "{text} missing");
        }
    }

    #[test]
    fn png_decodes_at_the_chart_size_and_is_not_blank() {
        let png = chart().to_png().unwrap();
        let image = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(image.dimensions(), SIZE);
        let dark = image.pixels().filter(|p| p.0.iter().all(|&c| c < 100)).count();
        assert!(dark > 500, "{dark} dark pixels: text and axes should be drawn");
    }

    #[test]
    fn density_steps_integrate_to_one() {
        let points = density_steps(&[1, 3, 0, 4], (0.0, 2.0));
        let area: f64 = points.windows(2).map(|w| (w[1].0 - w[0].0) * w[0].1.max(w[1].1)).sum();
        // Vertical segments have zero width; each bin's flat top contributes density x width.
        assert!((area - 1.0).abs() < 1e-12, "area {area}");
    }
}
