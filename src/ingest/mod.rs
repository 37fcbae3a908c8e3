//! Telemetry in: payload decoding (pure, fuzzable), its inverse (encoding, for everything that
//! plays a device) and the MQTT driver; beside forewarn's own JSON, Sparkplug B and SenML
//! (`formats`, pure decoders in `sparkplug` and `senml`); `stage` wires the driver to the
//! processing thread.

pub mod config;
pub mod decode;
pub mod encode;
pub mod formats;
pub mod mqtt;
pub mod reorder;
pub mod senml;
pub mod sparkplug;
pub mod stage;

pub use config::{BrokerConfig, Config};
pub use stage::{AckQueue, Feed, Stage};
