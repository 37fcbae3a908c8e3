//! `[features]`: the shape of every device's rolling windows.

use super::WindowSpec;
use crate::domain::Dur;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub window_readings: usize,
    pub ew_spans: Vec<u32>,
    /// Spans in hours of event time of the EW baselines that follow the reading spans.
    pub ew_hours: Vec<f64>,
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
