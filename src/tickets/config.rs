//! `[tickets]`: when a live ticket is updated, and how much evidence it carries.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// A live ticket is re-published when its probability moves this much (0 to 1)...
    pub update_min_probability_delta: f64,
    /// ...or its predicted failure time moves by this fraction of the time left.
    pub update_min_ttf_fraction: f64,
    /// Top features kept as evidence on a ticket.
    pub evidence_features: usize,
    /// The newest automatic `updated` lines a ticket's history keeps (at least 1); older ones are
    /// dropped as new ones come. Transitions and notifications are all kept.
    pub history_updates_kept: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            update_min_probability_delta: 0.05,
            update_min_ttf_fraction: 0.2,
            evidence_features: 5,
            history_updates_kept: 20,
        }
    }
}
