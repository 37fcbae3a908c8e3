//! `[tickets]`: when a live ticket is updated, and how much evidence it carries.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub update_min_probability_delta: f64,
    pub update_min_ttf_fraction: f64,
    pub evidence_features: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            update_min_probability_delta: 0.05,
            update_min_ttf_fraction: 0.2,
            evidence_features: 5,
        }
    }
}
