//! The whole configuration tree. One TOML file (`config/forewarn.toml` is the annotated default),
//! every key overridable by `FOREWARN__SECTION__KEY`. Unknown keys are errors; durations are
//! written `30s`, `24h`, `7d`. [`Config::validate`] does no I/O.

use crate::features::WindowSpec;
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// The annotated default configuration, embedded so `forewarn demo` needs no files.
pub const DEFAULT_TOML: &str = include_str!("../config/forewarn.toml");

/// A duration written as `500ms`, `30s`, `5m`, `24h` or `7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub std::time::Duration);

impl Dur {
    pub const fn secs(s: u64) -> Dur {
        Dur(std::time::Duration::from_secs(s))
    }
    pub const fn hours(h: u64) -> Dur {
        Dur(std::time::Duration::from_secs(h * 3600))
    }
    pub fn as_millis_i64(self) -> i64 {
        self.0.as_millis().min(i64::MAX as u128) as i64
    }
    pub fn as_hours_f64(self) -> f64 {
        self.0.as_secs_f64() / 3600.0
    }
    pub fn std(self) -> std::time::Duration {
        self.0
    }
}

impl std::str::FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {s:?} needs a unit (ms, s, m, h, d)"))?;
        let (num, unit) = s.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("duration {s:?} does not start with a number"))?;
        let ms = match unit {
            "ms" => n,
            "s" => n * 1e3,
            "m" | "min" => n * 60e3,
            "h" => n * 3600e3,
            "d" => n * 86400e3,
            _ => {
                return Err(format!(
                    "duration {s:?} has unknown unit {unit:?} (ms, s, m, h, d)"
                ))
            }
        };
        if !ms.is_finite() || !(0.0..=1e15).contains(&ms) {
            return Err(format!("duration {s:?} is out of range"));
        }
        Ok(Dur(std::time::Duration::from_micros((ms * 1e3) as u64)))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            write!(f, "0s")
        } else if ms % 86_400_000 == 0 {
            write!(f, "{}d", ms / 86_400_000)
        } else if ms % 3_600_000 == 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms % 60_000 == 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub broker: BrokerConfig,
    pub ingest: IngestConfig,
    pub features: FeaturesConfig,
    pub scoring: ScoringConfig,
    pub tickets: TicketsConfig,
    pub store: StoreConfig,
    pub api: ApiConfig,
    pub fleet: FleetConfig,
    pub dispatch: DispatchConfig,
    pub notify: crate::notify::NotifyConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// `mqtt://host:port` or `mqtts://host:port` (TLS with rustls).
    pub url: String,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM file of CA certificates to trust for `mqtts://` (default: the system's web PKI roots).
    pub ca_file: Option<PathBuf>,
    pub keep_alive: Dur,
    /// Largest packet accepted from the broker (rumqttc's default of 10 KiB is too small).
    pub max_packet_bytes: usize,
    /// Unacknowledged QoS 1 messages the client accepts at once.
    pub inflight: u16,
    pub reconnect_min: Dur,
    pub reconnect_max: Dur,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            url: "mqtt://127.0.0.1:1883".into(),
            client_id: "forewarn".into(),
            username: None,
            password: None,
            ca_file: None,
            keep_alive: Dur::secs(30),
            max_packet_bytes: 1024 * 1024,
            inflight: 100,
            reconnect_min: Dur(std::time::Duration::from_millis(200)),
            reconnect_max: Dur::secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    pub telemetry_topics: Vec<String>,
    pub event_topics: Vec<String>,
    /// Which topic level (0-based) holds the device id; `None` reads the payload's `device_id`.
    pub device_id_level: Option<usize>,
    pub max_payload_bytes: usize,
    pub max_batch: usize,
    /// Messages processed and committed together before their acks are sent.
    pub commit_group: usize,
    /// Rejected payloads kept for inspection through the API.
    pub recent_rejects: usize,
    /// Devices kept in memory; the least recently seen beyond this are evicted (their state stays
    /// in the store and is reloaded when they speak again).
    pub max_devices_in_memory: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            telemetry_topics: vec!["devices/+/telemetry".into()],
            event_topics: vec!["devices/+/events".into()],
            device_id_level: Some(1),
            max_payload_bytes: 256 * 1024,
            max_batch: 1000,
            commit_group: 256,
            recent_rejects: 200,
            max_devices_in_memory: 1_000_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeaturesConfig {
    pub window_readings: usize,
    pub ew_spans: Vec<u32>,
    pub late_tolerance: Dur,
}

impl Default for FeaturesConfig {
    fn default() -> Self {
        let w = WindowSpec::default();
        FeaturesConfig {
            window_readings: w.window_readings,
            ew_spans: w.ew_spans,
            late_tolerance: Dur(std::time::Duration::from_millis(w.late_tolerance_ms as u64)),
        }
    }
}

impl FeaturesConfig {
    pub fn window(&self) -> WindowSpec {
        WindowSpec {
            window_readings: self.window_readings,
            ew_spans: self.ew_spans.clone(),
            late_tolerance_ms: self.late_tolerance.as_millis_i64(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoringConfig {
    pub models_dir: PathBuf,
    /// A device is scored at most once per this much event time.
    pub interval: Dur,
    /// Override every model's "consecutive scorings above threshold" (unset: the model's own).
    pub consecutive: Option<u16>,
}

impl Default for ScoringConfig {
    fn default() -> Self {
        ScoringConfig {
            models_dir: PathBuf::from("models"),
            interval: Dur::hours(1),
            consecutive: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TicketsConfig {
    pub update_min_probability_delta: f64,
    pub update_min_ttf_fraction: f64,
    pub evidence_features: usize,
}

impl Default for TicketsConfig {
    fn default() -> Self {
        TicketsConfig {
            update_min_probability_delta: 0.05,
            update_min_ttf_fraction: 0.2,
            evidence_features: 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    /// sled's page cache (its default of 1 GiB is too much for a small box).
    pub cache_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            data_dir: PathBuf::from("data"),
            cache_bytes: 128 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    pub listen: String,
    /// Bearer tokens allowed to mutate (also `FOREWARN_API_TOKEN`).
    pub tokens: Vec<String>,
    /// Whether reads need a token too.
    pub protect_reads: bool,
    pub max_body_bytes: usize,
    /// Public base URL for links in customer messages (self-service pages).
    pub public_url: String,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8080".into(),
            tokens: Vec::new(),
            protect_reads: false,
            max_body_bytes: 64 * 1024,
            public_url: "http://127.0.0.1:8080".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// TOML file of devices and customers loaded at start (optional).
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchConfig {
    /// Ticket changes are published here, retained, QoS 1: `{prefix}/{device_id}/{failure_mode}`.
    pub topic_prefix: String,
    /// Field-service webhook (unset: MQTT only).
    pub webhook_url: Option<String>,
    /// HMAC-SHA256 secret for `X-Forewarn-Signature` (also `FOREWARN_DISPATCH_SECRET`).
    pub webhook_secret: Option<String>,
    pub max_attempts: u32,
    pub retry_min: Dur,
    pub retry_max: Dur,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            topic_prefix: "forewarn/tickets".into(),
            webhook_url: None,
            webhook_secret: None,
            max_attempts: 20,
            retry_min: Dur::secs(1),
            retry_max: Dur::secs(300),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter, e.g. `info,forewarn=debug` (also `RUST_LOG`).
    pub filter: String,
    /// At most this many reject log lines per minute; the rest are only counted.
    pub rejects_per_minute: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            filter: "info".into(),
            rejects_per_minute: 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(String),
    #[error("config key {key}: {message}")]
    Invalid { key: String, message: String },
}

impl Config {
    /// Loads the embedded defaults, then `file` (if any), then `FOREWARN__…` variables.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(p) = file {
            if !p.exists() {
                return Err(ConfigError::Load(format!(
                    "{}: configuration file not found",
                    p.display()
                )));
            }
            fig = fig.merge(Toml::file(p));
        }
        fig = fig.merge(Env::prefixed("FOREWARN__").split("__"));
        let cfg: Config = fig.extract().map_err(|e| {
            let mut msg = String::new();
            for err in e {
                let key = err.path.join(".");
                let src = err
                    .metadata
                    .as_ref()
                    .and_then(|m| m.source.as_ref())
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default();
                if !msg.is_empty() {
                    msg.push_str("; ");
                }
                if key.is_empty() {
                    msg.push_str(&format!("{}{src}", err.kind));
                } else {
                    msg.push_str(&format!("config key {key}: {}{src}", err.kind));
                }
            }
            ConfigError::Load(msg)
        })?;
        let mut cfg = cfg;
        if let Ok(t) = std::env::var("FOREWARN_API_TOKEN") {
            if !t.is_empty() && !cfg.api.tokens.contains(&t) {
                cfg.api.tokens.push(t);
            }
        }
        if let Ok(s) = std::env::var("FOREWARN_DISPATCH_SECRET") {
            if !s.is_empty() {
                cfg.dispatch.webhook_secret = Some(s);
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// The engine settings `serve` and `evaluate` share.
    pub fn engine_config(&self) -> crate::engine::EngineConfig {
        crate::engine::EngineConfig {
            window: self.features.window(),
            scoring_interval_ms: self.scoring.interval.as_millis_i64(),
            update_min_probability_delta: self.tickets.update_min_probability_delta,
            update_min_ttf_fraction: self.tickets.update_min_ttf_fraction,
            evidence_features: self.tickets.evidence_features,
            consecutive_override: self.scoring.consecutive,
        }
    }

    /// Checks values that parse but make no sense. No I/O.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: &str| {
            Err(ConfigError::Invalid {
                key: key.into(),
                message: message.into(),
            })
        };
        if !(self.broker.url.starts_with("mqtt://") || self.broker.url.starts_with("mqtts://")) {
            return bad("broker.url", "must start with mqtt:// or mqtts://");
        }
        if self.broker.client_id.is_empty() {
            return bad("broker.client_id", "must not be empty");
        }
        if self.broker.reconnect_min > self.broker.reconnect_max {
            return bad(
                "broker.reconnect_min",
                "must not exceed broker.reconnect_max",
            );
        }
        if self.ingest.telemetry_topics.is_empty() {
            return bad("ingest.telemetry_topics", "needs at least one topic filter");
        }
        if self.ingest.commit_group == 0 {
            return bad("ingest.commit_group", "must be at least 1");
        }
        if self.features.window_readings == 0 || self.features.window_readings > 256 {
            return bad("features.window_readings", "must be between 1 and 256");
        }
        if self.features.ew_spans.len() > 8 || self.features.ew_spans.contains(&0) {
            return bad("features.ew_spans", "at most 8 spans, each at least 1");
        }
        if !(0.0..=1.0).contains(&self.tickets.update_min_probability_delta) {
            return bad(
                "tickets.update_min_probability_delta",
                "must be within 0..1",
            );
        }
        if self.api.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad("api.listen", "must be an address like 127.0.0.1:8080");
        }
        if let Some(u) = &self.dispatch.webhook_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return bad("dispatch.webhook_url", "must be an http(s) URL");
            }
            if self
                .dispatch
                .webhook_secret
                .as_deref()
                .unwrap_or("")
                .is_empty()
            {
                return bad(
                    "dispatch.webhook_secret",
                    "is needed to sign webhook deliveries (or set FOREWARN_DISPATCH_SECRET)",
                );
            }
        }
        self.notify
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                key: format!("notify.{key}"),
                message,
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        assert_eq!("30s".parse::<Dur>().unwrap(), Dur::secs(30));
        assert_eq!("24h".parse::<Dur>().unwrap(), Dur::hours(24));
        assert_eq!("7d".parse::<Dur>().unwrap().to_string(), "7d");
        assert_eq!("500ms".parse::<Dur>().unwrap().to_string(), "500ms");
        assert!("30".parse::<Dur>().is_err());
        assert!("3 weeks".parse::<Dur>().is_err());
    }

    #[test]
    fn default_file_parses_to_the_defaults() {
        let from_file: Config = toml::from_str(DEFAULT_TOML).unwrap();
        from_file.validate().unwrap();
        assert_eq!(from_file.broker, BrokerConfig::default());
        assert_eq!(from_file.ingest, IngestConfig::default());
        assert_eq!(from_file.features, FeaturesConfig::default());
        assert_eq!(from_file.scoring, ScoringConfig::default());
        assert_eq!(from_file.notify, crate::notify::NotifyConfig::default());
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let e = toml::from_str::<Config>("[broker]\nurll = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("urll"), "{e}");
    }
}
