//! `[features]`: the shape of every device's rolling windows.

use super::WindowSpec;
use crate::domain::Dur;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Readings kept per device in the ring window (min, max, mean, std, slope); 1 to 256.
    pub window_readings: usize,
    /// Spans, in readings, of the exponentially weighted means and deviations (at most 8).
    pub ew_spans: Vec<u32>,
    /// Spans in hours of event time of the EW baselines that follow the reading spans.
    pub ew_hours: Vec<f64>,
    /// Readings and events up to this much out of order are held and applied in event-time order;
    /// older ones are dropped (reason `late`). `0s` applies everything in arrival order.
    pub late_tolerance: Dur,
}

impl Default for Config {
    fn default() -> Self {
        let w = WindowSpec::default();
        Config {
            window_readings: w.window_readings,
            ew_spans: w.ew_spans,
            ew_hours: w.ew_hours,
            late_tolerance: Dur(std::time::Duration::from_millis(w.late_tolerance_ms as u64)),
        }
    }
}

impl Config {
    pub fn window(&self) -> WindowSpec {
        WindowSpec {
            window_readings: self.window_readings,
            ew_spans: self.ew_spans.clone(),
            ew_hours: self.ew_hours.clone(),
            late_tolerance_ms: self.late_tolerance.as_millis_i64(),
        }
    }
}
