//! The report folder of `forewarn evaluate`: `summary.json` and three SVG plots.
//!
//! Plots are drawn with plotters' SVG backend without any font: plotters lays text out with a
//! registered font, and we ship none, so the chart itself carries no text and the titles and axis
//! names are added as plain SVG `<text>` elements that the viewer renders with its own fonts.

use super::evaluate::Evaluation;
use super::TrainError;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::ops::Range;
use std::path::Path;

const W: u32 = 640;
const H: u32 = 420;
const MARGIN: u32 = 50;

fn write(path: &Path, body: &str) -> Result<(), TrainError> {
    std::fs::write(path, body).map_err(|e| TrainError::io(path, e))
}

fn plot_err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Data(format!("plot: {e}"))
}

/// Adds a title and axis names (and the axis ranges) as SVG text.
fn annotate(svg: String, title: &str, x: &str, y: &str, xr: (f64, f64), yr: (f64, f64)) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let text = format!(
        concat!(
            "<text x=\"{cx}\" y=\"22\" text-anchor=\"middle\" font-family=\"sans-serif\" font-size=\"15\">{t}</text>\n",
            "<text x=\"{cx}\" y=\"{by}\" text-anchor=\"middle\" font-family=\"sans-serif\" font-size=\"12\">{x} ({x0:.3} … {x1:.3})</text>\n",
            "<text x=\"14\" y=\"{cy}\" text-anchor=\"middle\" font-family=\"sans-serif\" font-size=\"12\" transform=\"rotate(-90 14 {cy})\">{y} ({y0:.3} … {y1:.3})</text>\n",
        ),
        cx = W / 2,
        by = H - 12,
        cy = H / 2,
        t = esc(title),
        x = esc(x),
        y = esc(y),
        x0 = xr.0,
        x1 = xr.1,
        y0 = yr.0,
        y1 = yr.1,
    );
    match svg.rfind("</svg>") {
        Some(i) => format!("{}{}{}", &svg[..i], text, &svg[i..]),
        None => svg,
    }
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A white page with an unlabelled mesh over `x` × `y`, handed to `paint` for the series; the SVG.
fn draw(
    x: Range<f64>,
    y: Range<f64>,
    paint: impl FnOnce(&mut Chart<'_, '_>) -> Result<(), TrainError>,
) -> Result<String, TrainError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let area = root.margin(MARGIN, MARGIN, MARGIN, MARGIN);
        let mut chart = ChartBuilder::on(&area)
            .build_cartesian_2d(x, y)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_labels(0)
            .y_labels(0)
            .draw()
            .map_err(plot_err)?;
        paint(&mut chart)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

fn range(v: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = v
        .filter(|x| x.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-9 {
        return (lo - 0.5, hi + 0.5);
    }
    (lo, hi)
}

fn histogram(values: &[f64], title: &str, xname: &str) -> Result<String, TrainError> {
    let (lo, hi) = range(values.iter().copied());
    let bins = 20usize;
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0u32; bins];
    for v in values {
        let b = (((v - lo) / width) as usize).min(bins - 1);
        counts[b] += 1;
    }
    let ymax = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let svg = draw(lo..hi, 0.0..ymax * 1.05, |chart| {
        chart
            .draw_series(counts.iter().enumerate().map(|(i, &c)| {
                let x0 = lo + i as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width, c as f64)], BLUE.mix(0.6).filled())
            }))
            .map_err(plot_err)?;
        Ok(())
    })?;
    Ok(annotate(svg, title, xname, "count", (lo, hi), (0.0, ymax)))
}

fn curve(points: &[(f64, f64)], title: &str, x: &str, y: &str) -> Result<String, TrainError> {
    let svg = draw(0.0..1.0, 0.0..1.02, |chart| {
        chart
            .draw_series(LineSeries::new(points.iter().copied(), RED.stroke_width(2)))
            .map_err(plot_err)?;
        Ok(())
    })?;
    Ok(annotate(svg, title, x, y, (0.0, 1.0), (0.0, 1.0)))
}

fn scatter(pairs: &[(f64, f64)], title: &str) -> Result<String, TrainError> {
    let (lo, hi) = range(pairs.iter().flat_map(|(a, b)| [*a, *b]));
    // At most 20k points keep the SVG small; strided, so every part of the data shows.
    let stride = (pairs.len() / 20_000).max(1);
    let svg = draw(lo..hi, lo..hi, |chart| {
        chart
            .draw_series(LineSeries::new([(lo, lo), (hi, hi)], BLACK.stroke_width(1)))
            .map_err(plot_err)?;
        chart
            .draw_series(
                pairs
                    .iter()
                    .step_by(stride)
                    .map(|&(t, p)| Circle::new((t, p), 2, BLUE.mix(0.3).filled())),
            )
            .map_err(plot_err)?;
        Ok(())
    })?;
    Ok(annotate(
        svg,
        title,
        "true time to failure (h, capped)",
        "predicted (h)",
        (lo, hi),
        (lo, hi),
    ))
}

/// Reliability diagram: observed frequency against mean predicted probability per tenth, with
/// the diagonal a calibrated model follows.
fn reliability(points: &[(f64, f64, usize)], brier: Option<f64>) -> Result<String, TrainError> {
    let svg = draw(0.0..1.0, 0.0..1.0, |chart| {
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (1.0, 1.0)],
                BLACK.stroke_width(1),
            ))
            .map_err(plot_err)?;
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.0, p.1)),
                RED.stroke_width(2),
            ))
            .map_err(plot_err)?;
        chart
            .draw_series(
                points
                    .iter()
                    .map(|p| Circle::new((p.0, p.1), 4, RED.filled())),
            )
            .map_err(plot_err)?;
        Ok(())
    })?;
    let title = match brier {
        Some(b) => format!("Reliability (Brier score {b:.4})"),
        None => "Reliability".to_string(),
    };
    Ok(annotate(
        svg,
        &title,
        "mean predicted probability",
        "observed frequency",
        (0.0, 1.0),
        (0.0, 1.0),
    ))
}

/// Writes `summary.json`, `lead_time.svg`, `precision_recall.svg`, `ttf_predicted_vs_true.svg`
/// and `reliability.svg`.
pub fn write_report(dir: &Path, ev: &Evaluation) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let json =
        serde_json::to_string_pretty(&ev.summary).map_err(|e| TrainError::Data(e.to_string()))?;
    write(&dir.join("summary.json"), &json)?;
    write(
        &dir.join("lead_time.svg"),
        &histogram(
            &ev.lead_hours,
            "Lead time of detected failures",
            "hours from ticket to failure",
        )?,
    )?;
    write(
        &dir.join("precision_recall.svg"),
        &curve(
            &ev.pr_curve,
            "Precision-recall of the classifier (per scoring)",
            "recall",
            "precision",
        )?,
    )?;
    write(
        &dir.join("ttf_predicted_vs_true.svg"),
        &scatter(&ev.ttf_pairs, "Predicted vs true time to failure")?,
    )?;
    write(
        &dir.join("reliability.svg"),
        &reliability(
            &ev.summary.calibration.reliability,
            ev.summary.calibration.brier,
        )?,
    )?;
    Ok(())
}
