//! The ingest stage's settings: the broker connection (`[broker]`) and what is taken from it
//! (`[ingest]`).

use crate::domain::Dur;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// `mqtt://host:port` or `mqtts://host:port` (TLS with rustls).
    pub url: String,
    /// MQTT protocol version: 4 (MQTT 3.1.1, the default) or 5 (MQTT 5: session expiry,
    /// receive maximum and maximum packet size are announced to the broker).
    pub protocol: u8,
    /// The MQTT client id; the broker keeps this client's session, so use one id per data
    /// directory (the two processes of an active/standby pair share it: `serve --standby`).
    pub client_id: String,
    /// MQTT user name, if the broker asks for one.
    pub username: Option<String>,
    /// MQTT password (better set by environment variable).
    pub password: Option<crate::secret::Secret>,
    /// PEM file of CA certificates to trust for `mqtts://` (default: the system's web PKI roots).
    pub ca_file: Option<PathBuf>,
    /// MQTT keep-alive interval.
    pub keep_alive: Dur,
    /// Largest packet accepted from the broker (rumqttc's default of 10 KiB is too small).
    pub max_packet_bytes: usize,
    /// Unacknowledged QoS 1 messages the client itself keeps in flight (its own publishes).
    pub inflight: u16,
    /// MQTT 5 only: how long the broker keeps forewarn's session (subscriptions and queued
    /// messages) after a disconnect. MQTT 3.1.1 sessions last until the broker's own limit.
    pub session_expiry: Dur,
    /// MQTT 5 only: the most unacknowledged QoS 1 messages the broker may send forewarn at once
    /// (forewarn acknowledges after each commit group; keep it a few `ingest.commit_group`s).
    pub receive_maximum: u16,
    /// Reconnect backoff after losing the broker: exponential with jitter, from this...
    pub reconnect_min: Dur,
    /// ...up to this.
    pub reconnect_max: Dur,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            url: "mqtt://127.0.0.1:1883".into(),
            protocol: 4,
            client_id: "forewarn".into(),
            username: None,
            password: None,
            ca_file: None,
            keep_alive: Dur::secs(30),
            max_packet_bytes: 1024 * 1024,
            inflight: 100,
            session_expiry: Dur::secs(7 * 24 * 3600),
            receive_maximum: 1024,
            reconnect_min: Dur(std::time::Duration::from_millis(200)),
            reconnect_max: Dur::secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Topic filters of readings; the device id is the topic level at `device_id_level`.
    pub telemetry_topics: Vec<String>,
    /// Topic filters of device events (failures, maintenance, errors).
    pub event_topics: Vec<String>,
    /// Which topic level (0-based) holds the device id; `None` reads the payload's `device_id`.
    pub device_id_level: Option<usize>,
    /// Larger payloads are rejected (reason `too_large`).
    pub max_payload_bytes: usize,
    /// Readings per batch payload at most.
    pub max_batch: usize,
    /// Messages processed and committed together before their acks are sent.
    pub commit_group: usize,
    /// Threads that apply a commit group's readings and events (scoring, ticket policy), each
    /// taking a share of the group's devices; `0` uses one per core. A device's items are always
    /// applied by one thread, in arrival order, so the tickets do not depend on this.
    pub apply_threads: usize,
    /// Rejected payloads kept for inspection through the API.
    pub recent_rejects: usize,
    /// Devices kept in memory; the least recently seen beyond this are evicted (their state stays
    /// in the store and is reloaded when they speak again).
    pub max_devices_in_memory: usize,
    /// A device silent this long (wall time) has what it holds in the reorder buffer released
    /// anyway (see `features.late_tolerance`); unset, the tolerance itself.
    pub reorder_idle: Option<Dur>,
    /// A reading or event stamped more than this ahead of its receipt is rejected (`future_ts`):
    /// one far-future timestamp would otherwise make every later reading of the device late.
    /// `0s` accepts any timestamp.
    pub max_clock_skew: Dur,
    /// The state of a device whose newest timestamp is older than this (a device retired or
    /// renamed) is dropped from memory and disk, its live tickets kept; so is a Sparkplug edge
    /// node's (its births and `seq`) unseen as long. Unset: kept forever.
    pub forget_after: Option<Dur>,
    /// A topic where the broker publishes how many messages it has dropped (Mosquitto:
    /// `$SYS/broker/publish/messages/dropped`, every `sys_interval`): a rise is logged and shown
    /// in `/readyz` and `forewarn_broker_dropped_messages`, because the loss of a device's *last*
    /// readings leaves no `seq` gap until it sends again. Empty (the default): not subscribed —
    /// a broker that does not allow `$SYS` subscriptions (rumqttd) closes the connection.
    pub broker_drops_topic: String,
    /// Subscribe to the data filters as members of this shared subscription group
    /// (`$share/{group}/{filter}`; MQTT 5, and Mosquitto accepts it from 3.1.1 too). The broker
    /// gives each message to ONE member of the group, so members each see part of every
    /// device's stream: for moving a stream between instances, not load sharing (README,
    /// "MQTT 5"). Unset: plain subscriptions.
    pub shared_group: Option<String>,
    /// Sparkplug B edge nodes and devices (`[ingest.sparkplug]`); off by default.
    pub sparkplug: super::sparkplug::Config,
    /// SenML packs (`[ingest.senml]`); off by default.
    pub senml: super::senml::Config,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            telemetry_topics: vec!["devices/+/telemetry".into()],
            event_topics: vec!["devices/+/events".into()],
            device_id_level: Some(1),
            max_payload_bytes: 256 * 1024,
            max_batch: 1000,
            commit_group: 256,
            apply_threads: 0,
            recent_rejects: 200,
            max_devices_in_memory: 1_000_000,
            reorder_idle: None,
            max_clock_skew: Dur::secs(600),
            forget_after: None,
            broker_drops_topic: String::new(),
            shared_group: None,
            sparkplug: Default::default(),
            senml: Default::default(),
        }
    }
}
