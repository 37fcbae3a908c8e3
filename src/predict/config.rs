//! `[scoring]`: where model artifacts are loaded from and how often a device is scored.

use crate::domain::Dur;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Folder of model artifacts (`*.json`), loaded at start and on SIGHUP.
    pub models_dir: PathBuf,
    /// A device is scored at most once per this much event time.
    pub interval: Dur,
    /// Override every model's ticket rule with this many scorings above threshold in a row, at
    /// most 16 (unset: the model's own rule).
    pub consecutive: Option<u16>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            models_dir: PathBuf::from("models"),
            interval: Dur::hours(1),
            consecutive: None,
        }
    }
}
