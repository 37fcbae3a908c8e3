//! The feature spec a data set supports, and training rows taken exactly where the daemon scores.

use super::csv::{History, Step};
use super::labels::{label, with_dismissals, Label};
use crate::domain::{EventKind, Timestamp};
use crate::engine::{observe_and_slot, EngineConfig};
use crate::features::{
    DeviceFeature, DeviceState, FeatureSpec, MetricIndex, MetricStat, WindowSpec,
};
use std::collections::{BTreeMap, BTreeSet};

/// Categorical attributes with more distinct values than this are not one-hot encoded.
pub const MAX_CATEGORIES: usize = 10;

/// Attribute columns that name an owner, not a property of the device.
const IDENTITY_ATTRS: [&str; 3] = ["customer", "customer_id", "owner"];

/// Event codes with features of their own, at most: the most frequent in training.
pub const MAX_CODES: usize = 50;

/// The data's cadence: the median time between two readings of a device, in hours (1 when there
/// are too few readings to tell).
pub fn cadence_hours(h: &History) -> f64 {
    let mut gaps: Vec<i64> = Vec::new();
    for d in &h.devices {
        // A few thousand gaps per device are plenty for a median.
        let step = (d.ts.len() / 4096).max(1);
        gaps.extend(
            d.ts.windows(2)
                .step_by(step)
                .map(|w| w[1] - w[0])
                .filter(|g| *g > 0),
        );
    }
    if gaps.is_empty() {
        return 1.0;
    }
    let mid = gaps.len() / 2;
    let (_, m, _) = gaps.select_nth_unstable(mid);
    // Whole seconds: the windows' names stay readable and stable across runs.
    ((*m as f64 / 1000.0).round().max(1.0)) / 3600.0
}

/// Windows in event time derived from the cadence `c` and horizon `hz` (hours), so the same rule
/// serves a 10-second fleet and an hourly one. Metric windows: a short one of 3 readings and a
/// day-long one of 24 readings, both within the ring the daemon keeps. Event-code windows: the
/// longer of 6 readings and a quarter horizon, and the longer of 24 readings and the horizon.
pub fn time_windows(c: f64, hz: f64, window: &WindowSpec) -> (Vec<f64>, Vec<f64>) {
    let ring = window.window_readings as f64 * c;
    let round = |h: f64| (h * 3600.0).round() / 3600.0;
    let mut metric: Vec<f64> = [3.0 * c, 24.0 * c]
        .into_iter()
        .map(|h| round(h.min(ring)))
        .filter(|h| *h > 0.0)
        .collect();
    metric.dedup();
    let mut code: Vec<f64> = [(6.0 * c).max(hz / 4.0), (24.0 * c).max(hz)]
        .into_iter()
        .map(round)
        .collect();
    code.dedup();
    (metric, code)
}

/// The feature spec for a data set: every telemetry metric that is not constant (or absent) in
/// training, `stats` of each (plus mean and deviation over event-time windows when `timed`); the
/// mode clock, readings, the error rate when the data has error events, per error code seen in
/// training its counts over event-time windows and the hours since it last occurred, numeric
/// attributes, and one-hot categorical attributes with few values.
pub fn build_spec(
    h: &History,
    window: &WindowSpec,
    mut stats: Vec<MetricStat>,
    horizon_h: f64,
    timed: bool,
) -> FeatureSpec {
    let (metric_windows, code_windows) = time_windows(cadence_hours(h), horizon_h, window);
    if timed {
        for w in &metric_windows {
            stats.push(MetricStat::MeanHours(*w));
            stats.push(MetricStat::StdHours(*w));
        }
        // The longest window's mean against the longest EW mean: how far the device has moved
        // from its own recent normal, whatever its offset.
        if let (Some(w), Some(last)) = (metric_windows.last(), window.ew_spans.len().checked_sub(1))
        {
            stats.push(MetricStat::MeanHoursLessEwm(*w, last as u8));
            // And against the longest event-time baseline, when the windows keep one.
            if !window.ew_hours.is_empty() && window.ew_len() <= 16 {
                stats.push(MetricStat::MeanHoursLessEwm(
                    *w,
                    (window.ew_len() - 1) as u8,
                ));
            }
        }
    }
    let k = h.metrics.len();
    let mut lo = vec![f64::INFINITY; k];
    let mut hi = vec![f64::NEG_INFINITY; k];
    for d in &h.devices {
        for row in d.values.chunks_exact(k.max(1)) {
            for (j, v) in row.iter().enumerate() {
                if v.is_finite() {
                    lo[j] = lo[j].min(*v);
                    hi[j] = hi[j].max(*v);
                }
            }
        }
    }
    let metrics = h
        .metrics
        .iter()
        .enumerate()
        .filter(|(j, _)| hi[*j] > lo[*j])
        .map(|(_, m)| m.clone())
        .collect();
    let mut device = vec![DeviceFeature::HoursSinceReset, DeviceFeature::Readings];
    if h.devices
        .iter()
        .any(|d| d.events.iter().any(|e| e.kind == EventKind::Error))
    {
        device.push(DeviceFeature::ErrorRate);
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for d in &h.devices {
        for e in d.events.iter().filter(|e| e.kind == EventKind::Error) {
            *counts.entry(e.code.as_str()).or_default() += 1;
        }
    }
    let mut codes: Vec<(&str, usize)> = counts.into_iter().filter(|(_, n)| *n >= 2).collect();
    codes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    codes.truncate(MAX_CODES);
    codes.sort();
    for (code, _) in codes {
        for w in &code_windows {
            device.push(DeviceFeature::CodeCount {
                code: code.into(),
                hours: *w,
            });
        }
        device.push(DeviceFeature::CodeHoursSince { code: code.into() });
    }
    let mut values: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for attrs in h.attrs.values() {
        for (k, v) in attrs {
            values.entry(k).or_default().insert(v);
        }
    }
    for (name, vals) in values {
        if IDENTITY_ATTRS.contains(&name) || vals.len() < 2 {
            continue;
        }
        if vals
            .iter()
            .all(|v| v.parse::<f64>().is_ok_and(f64::is_finite))
        {
            device.push(DeviceFeature::AttrNumber { name: name.into() });
        } else if vals.len() <= MAX_CATEGORIES {
            for v in vals {
                device.push(DeviceFeature::AttrIs {
                    name: name.into(),
                    value: v.into(),
                });
            }
        }
    }
    FeatureSpec {
        window: window.clone(),
        metrics,
        stats,
        device,
    }
}

/// Feature rows of one failure mode, row-major, with where they came from and their labels.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    pub n_features: usize,
    pub x: Vec<f64>,
    /// Index into `History::devices`.
    pub device: Vec<u32>,
    pub ts: Vec<Timestamp>,
    pub labels: Vec<Label>,
}

impl Rows {
    pub fn len(&self) -> usize {
        self.ts.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }
    pub fn row(&self, i: usize) -> &[f64] {
        &self.x[i * self.n_features..(i + 1) * self.n_features]
    }
}

/// Rows per mode kept in memory for training. Past it, rows far from any failure (negative, time
/// to failure beyond the cap) are thinned evenly; rows near failures are all kept.
pub const ROW_BUDGET: usize = 200_000;

/// Replays every device through the daemon's window/scoring-slot step and extracts `spec`'s
/// features at each reading the daemon would score, one row per mode. Devices marked in
/// `keep_all` (validation devices, whose scorings replay the ticket policy) are never thinned.
#[allow(clippy::too_many_arguments)]
pub fn build_rows(
    h: &History,
    spec: &FeatureSpec,
    cfg: &EngineConfig,
    modes: &[String],
    horizon_h: f64,
    cap_h: f64,
    keep_all: &[bool],
    pb: &indicatif::ProgressBar,
) -> Vec<Rows> {
    let index = MetricIndex::new(spec.metrics.iter().cloned());
    let ids = spec.resolve(&index);
    let codes = spec.codes();
    let nf = spec.len();
    let mut out: Vec<Rows> = modes
        .iter()
        .map(|_| Rows {
            n_features: nf,
            ..Default::default()
        })
        .collect();
    // Keep one in `thin` of the far-from-failure rows when the data is larger than the budget.
    let thin = h.rows.div_ceil(ROW_BUDGET).max(1);
    let mut far_seen = vec![0usize; modes.len()];
    for (di, d) in h.devices.iter().enumerate() {
        let attrs = h.attrs.get(d.id.as_str());
        let end = d.observed_until();
        let first = d.observed_from();
        let mut state = DeviceState::new(&cfg.window, first);
        for step in d.steps() {
            match step {
                Step::Event(ev) => state.on_event(ev, &cfg.window, &codes),
                Step::Reading(i) => {
                    let r = d.reading(i, &h.metrics);
                    let (_, due) = observe_and_slot(&mut state, &r, cfg, &index, true);
                    if !due {
                        continue;
                    }
                    for (m, (mode, rows)) in modes.iter().zip(out.iter_mut()).enumerate() {
                        let l = with_dismissals(
                            label(&d.labels, mode, r.ts, end, horizon_h, cap_h),
                            &d.dismissals,
                            mode,
                            r.ts,
                        );
                        let far =
                            l.positive == Some(false) && l.ttf_hours.is_none_or(|t| t >= cap_h);
                        if far && thin > 1 && !keep_all.get(di).copied().unwrap_or(false) {
                            far_seen[m] += 1;
                            if far_seen[m] % thin != 0 {
                                continue;
                            }
                        }
                        spec.extract(&state, &ids, mode, attrs, r.ts, &mut rows.x);
                        rows.device.push(di as u32);
                        rows.ts.push(r.ts);
                        rows.labels.push(l);
                    }
                }
            }
        }
        pb.inc(1);
    }
    out
}
