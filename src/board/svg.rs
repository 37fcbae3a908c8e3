//! Charts drawn on the server as SVG (pure): a panel per metric over the window, and
//! sparklines. Each SVG has `role="img"` and a label saying what it shows in words, so a
//! screen reader gets the numbers the picture shows.

use crate::domain::Timestamp;
use crate::notify::templates::html_escape;

/// One metric's values over time.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(Timestamp, f64)>,
}

impl Series {
    fn finite(&self) -> Vec<(Timestamp, f64)> {
        self.points
            .iter()
            .copied()
            .filter(|(_, v)| v.is_finite())
            .collect()
    }
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// The polyline of `pts` scaled into `w`×`h` (inset by `pad`).
fn path(pts: &[(Timestamp, f64)], w: f64, h: f64, pad: f64) -> String {
    let (t0, t1) = (
        pts.first().map_or(Timestamp::EPOCH, |p| p.0),
        pts.last().map_or(Timestamp::EPOCH, |p| p.0),
    );
    let (lo, hi) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (_, v)| {
            (a.min(*v), b.max(*v))
        });
    let span_t = (t1 - t0).max(1) as f64;
    let span_v = if hi > lo { hi - lo } else { 1.0 };
    pts.iter()
        .map(|(t, v)| {
            let x = pad + (*t - t0) as f64 / span_t * (w - 2.0 * pad);
            let y = if hi > lo {
                h - pad - (v - lo) / span_v * (h - 2.0 * pad)
            } else {
                h / 2.0
            };
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A panel per series: the line, its first and last value, and its range in the label.
pub fn metric_panels(series: &[Series], width: u32) -> String {
    let (w, h) = (f64::from(width), 90.0);
    let mut out = String::new();
    for s in series {
        let pts = s.finite();
        let name = html_escape(&s.name);
        if pts.len() < 2 {
            out.push_str(&format!(
                "<p class=\"nochart\">{name}: not enough readings in the window to draw.</p>"
            ));
            continue;
        }
        let (lo, hi) = pts
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (_, v)| {
                (a.min(*v), b.max(*v))
            });
        let first = pts.first().map_or(0.0, |p| p.1);
        let last = pts.last().map_or(0.0, |p| p.1);
        let label = format!(
            "{} over the last {} readings: from {} to {} (lowest {}, highest {})",
            s.name,
            pts.len(),
            fmt(first),
            fmt(last),
            fmt(lo),
            fmt(hi)
        );
        out.push_str(&format!(
            "<figure class=\"chart\"><svg xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" \
             aria-label=\"{label}\" viewBox=\"0 0 {w} {h}\" width=\"100%\" preserveAspectRatio=\"none\">\
             <rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"#ffffff\" stroke=\"#767676\"/>\
             <polyline fill=\"none\" stroke=\"#1a4d99\" stroke-width=\"2\" points=\"{p}\"/></svg>\
             <figcaption><strong>{name}</strong> {first} \u{2192} {last} \
             <span class=\"range\">(range {lo}\u{2013}{hi})</span></figcaption></figure>",
            label = html_escape(&label),
            p = path(&pts, w, h, 6.0),
            first = fmt(first),
            last = fmt(last),
            lo = fmt(lo),
            hi = fmt(hi),
        ));
    }
    out
}

/// A small inline line for a table cell.
pub fn sparkline(s: &Series) -> String {
    let pts = s.finite();
    if pts.len() < 2 {
        return String::new();
    }
    let last = pts.last().map_or(0.0, |p| p.1);
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"spark\" role=\"img\" aria-label=\"{l}\" \
         viewBox=\"0 0 120 28\" width=\"120\" height=\"28\"><polyline fill=\"none\" stroke=\"#1a4d99\" \
         stroke-width=\"1.5\" points=\"{p}\"/></svg>",
        l = html_escape(&format!(
            "{}: {} readings, latest {}",
            s.name,
            pts.len(),
            fmt(last)
        )),
        p = path(&pts, 120.0, 28.0, 2.0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panel_says_in_words_what_it_draws() {
        let s = Series {
            name: "temp".into(),
            points: vec![
                (Timestamp::EPOCH, 70.0),
                (Timestamp::from_millis(1000), f64::NAN),
                (Timestamp::from_millis(2000), 85.5),
                (Timestamp::from_millis(3000), 90.4),
            ],
        };
        let svg = metric_panels(std::slice::from_ref(&s), 600);
        assert!(svg.contains("role=\"img\""));
        assert!(
            svg.contains("temp over the last 3 readings: from 70.0 to 90.4"),
            "{svg}"
        );
        // Three points, the first at the left edge and the highest at the top.
        let pts = svg
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(pts.split(' ').count(), 3);
        assert!(pts.starts_with("6.0,84.0"), "{pts}");
        assert!(pts.ends_with("594.0,6.0"), "{pts}");
        assert!(sparkline(&s).contains("latest 90.4"));
    }

    #[test]
    fn too_few_points_are_said_not_drawn_and_names_are_escaped() {
        let s = Series {
            name: "<b>".into(),
            points: vec![(Timestamp::EPOCH, 1.0)],
        };
        let out = metric_panels(std::slice::from_ref(&s), 600);
        assert!(out.contains("&lt;b&gt;") && !out.contains("<svg"));
        assert_eq!(sparkline(&s), "");
    }
}
