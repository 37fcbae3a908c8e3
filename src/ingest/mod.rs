//! Telemetry in: payload decoding (pure, fuzzable) and the MQTT driver.

pub mod config;
pub mod decode;
pub mod mqtt;
pub mod reorder;

pub use config::{BrokerConfig, Config};
