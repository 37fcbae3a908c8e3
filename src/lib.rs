//! forewarn — an IoT predictive-service daemon.
//!
//! Modules in data-flow order:
//!
//! - [`domain`]   the shared vocabulary, importing nothing: readings, events, event time, device
//!   ids, tickets and their statuses, durations
//! - [`cli`]      one file per command (`serve`, `train`, `evaluate`, `replay`, `demo`)
//! - [`config`]   the whole configuration tree, `"30s"` durations, validation without I/O
//! - [`ingest`]   MQTT driver (rumqttc, manual acks) and payload decoding (pure, fuzzable)
//! - [`features`] per-device rolling windows and feature extraction, in event time (pure)
//! - [`predict`]  model artifacts (load, version check) and scoring
//! - [`engine`]   the per-reading pipeline shared by `serve` and `evaluate`: window → features →
//!   score → ticket policy (pure)
//! - [`tickets`]  the ticket type and its state machine (pure)
//! - [`store`]    sled: one atomic batch per state change, flushed before acks
//! - [`fleet`]    devices and customers: attributes, owners, contact channels, preferences
//! - [`notify`]   customer notifications: routing, outbox, channels, replies, timeline
//! - [`serve`]    the daemon: app core (single writer, commit path), dispatch outbox worker, reload
//! - [`api`]      the HTTP API (axum): tickets, fleet, rejects, `/metrics`, health
//! - [`archive`]  optional history archive of accepted readings and events (`forewarn export`)
//! - [`outcomes`] realised precision of settled tickets on `/metrics`
//! - [`metrics`]  typed Prometheus metrics with bounded labels
//! - `broker`     an embedded MQTT broker for tests and the demo (feature `embedded-broker`)
//! - [`sim`]      a deterministic simulated fleet (tests, benchmarks, demo, `forewarn simulate`)
//! - [`replay`]   history files → MQTT device traffic (`forewarn replay`)
//! - [`train`]    offline training and backtesting (`forewarn train` / `evaluate`), reusing
//!   `features` and `engine` so training, backtests and serving compute the same numbers

pub mod api;
pub mod app;
pub mod archive;
#[cfg(feature = "embedded-broker")]
pub mod broker;
pub mod cli;
pub mod config;
#[cfg(feature = "embedded-broker")]
pub mod demo;
pub mod dispatch;
pub mod domain;
pub mod engine;
pub mod features;
pub mod fleet;
pub mod history;
pub mod ingest;
pub mod metrics;
pub mod notify;
pub mod outcomes;
pub mod predict;
pub mod replay;
pub mod serve;
pub mod sign;
pub mod sim;
pub mod store;
pub mod tickets;
pub mod tls;
pub mod train;
