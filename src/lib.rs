//! forewarn — an IoT predictive-service daemon.
//!
//! The module map, bottom-up: each module imports only modules listed above it (the import graph
//! has no cycles).
//!
//! - [`domain`]   the shared vocabulary, importing nothing: readings, events, event time
//!   (`Timestamp`: one parse, one format), device ids (`DeviceId`: checked where they arrive),
//!   tickets and their statuses, durations
//! - [`clock`]    the daemon's one injected wall clock, importing nothing: `serve` builds it once
//!   and every stage that reads the time of day takes it (the system's in production, the
//!   demo's simulated one, a manual or paused-tokio one in tests)
//! - [`features`] per-device rolling windows and feature extraction, in event time (pure)
//! - [`predict`]  model artifacts (load, version check) and scoring (pure)
//! - [`tickets`]  the ticket state machine (pure)
//! - [`engine`]   the per-reading pipeline shared by `serve` and `evaluate`: window → features →
//!   score → ticket policy (pure)
//! - [`store`]    sled: one atomic batch per state change, flushed before acks; a record that
//!   does not decode is set aside (`store::events`)
//! - [`history`]  the CSV history format: one reader with the caller's bad-row policy, the writer
//! - [`ingest`]   payload decoding and encoding (pure, fuzzable) — forewarn's JSON, Sparkplug B
//!   (a pure host state machine: births, aliases, `seq`, rebirth requests) and SenML — the MQTT
//!   driver (rumqttc, manual acks) and the stage wiring it to the processing thread, the
//!   per-device reorder buffer
//! - [`netguard`] where requests made for a customer (webhooks) may go: the address policy
//! - [`error_body`] the JSON error body of every HTTP route (`{"error": {"code", "message"}}`)
//! - [`fleet`]    devices and customers: attributes, owners, contact channels, preferences
//! - [`metrics`]  typed Prometheus metrics with bounded labels (a stage's happenings are its
//!   `events` structs: one `emit` logs and counts, labels from enums)
//! - [`sign`]     the webhook signature and constant-time comparison; [`tls`] the TLS provider;
//!   [`secret`] secrets that never print, URLs with their credentials redacted
//! - [`outbox`]   the durable outbox: one worker for every delivery type — due times, commit
//!   order, backoff, dead letters, gauges — executing the effects of each type's pure
//!   `step(row, facts, now)`
//! - [`notify`]   customer notifications: routing, the notification row's step and its
//!   executors (channels), replies, timeline; `notify::events`, what it logs and counts
//! - [`dispatch`] field-service dispatch: the dispatch row's step and its executors (MQTT, the
//!   webhook); `dispatch::events`, what it logs and counts
//! - [`archive`]  the optional history archive of accepted readings and events (`forewarn export`)
//! - [`outcomes`] what settled tickets and live scores say about the models: realised precision,
//!   score drift
//! - [`app`]      the single writer (`App`: in-memory device state, the commit path, the
//!   processing thread and its timers, on the daemon's one injected clock) and the narrow
//!   handles the API and the board use: `Tickets` (reads, the board's device states without
//!   the writer's lock; transitions through the writer), `Fleet` (devices and customers, read
//!   without the writer's lock), `Monitor` (readiness, loss, gaps, watches, rejects)
//! - [`cluster`]  cluster mode on NATS JetStream: partitioned device subjects, partition leases
//!   in a key-value bucket, partition checkpoints and replay on take-over, fleet-wide ticket
//!   claims (off by default)
//! - [`api`]      every HTTP route (axum): tickets, fleet, rejects, the notifier's, `/metrics`,
//!   health; one bearer-token extractor; the listeners (`api::server::Stage`)
//! - [`board`]    the dispatch board: server-rendered pages for dispatchers (queue, ticket, day
//!   view, device, customer), sign-in, technicians and visits; changes go through `app`'s
//!   `Tickets` handle
//! - [`openapi`]  the OpenAPI document of every route: the API's part with the board's
//! - [`serve`]    the daemon on one screen (`serve::run`): builds each stage from its config,
//!   spawns them, drains on shutdown;
//!   holds the data directory's lock, which `serve::standby` waits on (an active/standby pair)
//! - [`config`]   aggregates the stages' own `Config`s; loading, env overrides, validation;
//!   [`config_reference`] the reference of every key, generated from those `Config`s
//! - [`cli`]      one file per command (`serve`, `train`, `evaluate`, `replay`, `simulate`,
//!   `demo`, `fleet`, `export`)
//! - tools beside the daemon: [`sim`] a deterministic simulated fleet, [`replay`] history files →
//!   MQTT device traffic, [`train`] offline training and backtesting (reusing `features`,
//!   `engine` and `history`), `demo` and `broker` (feature `embedded-broker`)

pub mod api;
pub mod app;
pub mod archive;
pub mod board;
#[cfg(feature = "embedded-broker")]
pub mod broker;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod config_reference;
#[cfg(feature = "embedded-broker")]
pub mod demo;
pub mod dispatch;
pub mod domain;
pub mod engine;
pub mod error_body;
pub mod features;
pub mod fleet;
pub mod history;
pub mod ingest;
pub mod metrics;
pub mod netguard;
pub mod notify;
pub mod openapi;
pub mod outbox;
pub mod outcomes;
pub mod predict;
pub mod replay;
pub mod secret;
pub mod serve;
pub mod sign;
pub mod sim;
pub mod store;
pub mod tickets;
pub mod tls;
pub mod train;
