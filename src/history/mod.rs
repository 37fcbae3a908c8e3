//! History files (contract section 2): `telemetry.csv`, `events.csv`, `devices.csv`.
//!
//! One reader ([`read`]) used by `forewarn train`, `forewarn evaluate` and `forewarn replay`, so
//! a file that replays into the daemon is a file that trains, row for row: the same header
//! rules, timestamps (RFC 3339 or epoch milliseconds), event rules (an error event may have no
//! code), control-character and line-length limits. What differs is the caller's choice of
//! [`BadRows`]: training and backtests fail at the first bad row with its `file:line`, replay
//! skips and counts. The writer ([`write`](mod@write)) produces what the reader reads back.

pub mod read;
pub mod write;

pub use read::{
    open, read_devices, read_events, read_telemetry, BadRows, HistoryError, ReadSummary, Refused,
    RowError, TelemetryReader, TelemetryRow, MAX_LINE_BYTES, MAX_METRICS,
};
pub use write::{DeviceWriter, EventWriter, TelemetryWriter};
