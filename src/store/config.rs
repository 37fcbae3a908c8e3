//! `[store]`: where the database lives and how much memory its cache may take.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The database folder.
    pub data_dir: PathBuf,
    /// sled's page cache (its default of 1 GiB is too much for a small box).
    pub cache_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("data"),
            cache_bytes: 128 * 1024 * 1024,
        }
    }
}
