//! Telemetry in: payload decoding (pure, fuzzable), its inverse (encoding, for everything that
//! plays a device) and the MQTT driver.

pub mod config;
pub mod decode;
pub mod encode;
pub mod mqtt;
pub mod reorder;

pub use config::{BrokerConfig, Config};
