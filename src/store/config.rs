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
    /// A checkpoint — every device's whole state written, the step log emptied — after this
    /// many logged steps (readings and events of the whole fleet); in between, a commit writes
    /// one step log record for its group instead of each device's state. 1 checkpoints at every
    /// commit. Also bounds what is replayed at start-up after a crash (6–10 µs a step on the
    /// 2-core machines of BENCHMARKS.md: 6–10 s for the default). A checkpoint costs about one
    /// whole state write per device with steps in the log (~100 MB of disk writes for 10,000
    /// devices), so a smaller value spends that more often during a burst.
    /// `forewarn_step_log_steps` shows what a crash would replay now.
    pub snapshot_every: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("data"),
            cache_bytes: 128 * 1024 * 1024,
            snapshot_every: 1_000_000,
        }
    }
}
