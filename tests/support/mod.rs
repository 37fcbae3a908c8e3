//! What the integration tests share, one module per concern. Every test file declares
//! `mod support;` and uses what it needs; a newcomer looking for a helper looks here first.
//!
//! - `daemon`: the daemon in-process (embedded broker, temp store and models, MQTT and HTTP
//!   clients, a cuttable TCP proxy) and the telemetry fixtures the daemon tests feed it.
//! - `process`: the real `forewarn serve` binary as a child process, with a config file.
//! - `mosquitto`: a Mosquitto broker process started by the test.
//! - `nats`: a nats-server with JetStream for the cluster tests.
//! - `cluster`: `forewarn serve` cluster members against it, what the cluster tests wait for
//!   and read (readiness, ownership, the claims bucket, drained consumers), a dispatch webhook.
//! - `parity`: backtest-equals-live: a simulated history, `evaluate`'s tickets, the same
//!   history replayed into the daemon, and a readable diff of the two.
//! - `sparkplug`: a third-party Sparkplug B edge node (`edge_node.py`) against the daemon.
//! - `notify`: the notification harness, fake providers, an SMTP server and real peers.
//! - `browser`: headless Chromium through chromedriver.
//! - `train`: a small history on disk and training options for the training tests.
//! - `decoders`: the payload decoders' property tests' limits and what an accepted reading
//!   must satisfy.
//! - `http`, `net`, `poll`: reading /metrics, free ports, and waiting for a condition.
//! - `ci`: the rule for tests that need something from the machine (skip locally, fail in CI).

// Each test binary compiles this tree on its own and uses only part of it: without this, every
// binary would warn about the helpers that other binaries use.
#![allow(dead_code)]

pub mod browser;
pub mod ci;
pub mod cluster;
pub mod daemon;
pub mod decoders;
pub mod http;
pub mod mosquitto;
pub mod nats;
pub mod net;
pub mod notify;
pub mod parity;
pub mod poll;
pub mod process;
pub mod sparkplug;
pub mod train;
