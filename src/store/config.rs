//! `[store]`: where the database lives and how much memory its cache may take.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data_dir: PathBuf,
    /// sled's page cache (its default of 1 GiB is too much for a small box).
    pub cache_bytes: u64,
    /// A device's whole state is written (a snapshot) after at most this many journaled steps
    /// (readings and events); in between, each commit writes only the small journal records of
    /// the steps. 1 writes the whole state at every commit that touches the device. Bounds the
    /// replay at start-up after a crash, too.
    pub snapshot_every: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("data"),
            cache_bytes: 128 * 1024 * 1024,
            snapshot_every: 32,
        }
    }
}
