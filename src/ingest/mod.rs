//! Telemetry in: payload decoding (pure, fuzzable) and the MQTT driver.

pub mod decode;
pub mod mqtt;
