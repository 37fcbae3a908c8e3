//! The whole configuration tree, aggregated from the stages: each section is the `Config` of the
//! stage it configures (`[ingest]` is `ingest::Config`, `[store]` is `store::Config`, …); this
//! file only puts them together, loads them and checks how they fit. One TOML file
//! (`config/forewarn.toml` is the annotated default), every key overridable by
//! `FOREWARN__SECTION__KEY`. Unknown keys are errors; durations are written `30s`, `24h`, `7d`.
//! [`Config::validate`] does no I/O.

use crate::domain::Dur;
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The annotated default configuration, embedded so `forewarn demo` needs no files.
pub const DEFAULT_TOML: &str = include_str!("../config/forewarn.toml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub broker: crate::ingest::BrokerConfig,
    pub ingest: crate::ingest::Config,
    pub features: crate::features::Config,
    pub scoring: crate::predict::Config,
    pub tickets: crate::tickets::Config,
    pub store: crate::store::Config,
    pub archive: crate::archive::Config,
    pub api: crate::api::Config,
    pub board: crate::board::Config,
    pub fleet: crate::fleet::Config,
    pub dispatch: crate::dispatch::Config,
    pub notify: crate::notify::NotifyConfig,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
    pub cluster: crate::cluster::Config,
}

/// `[shutdown]`: how long each stage may take to drain once the shutdown token is cancelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// The MQTT driver keeps its connection this long for the last acknowledgements.
    pub ack_grace: Dur,
    /// Every background task (API, dispatch, notifications) together, after the processor
    /// has committed what it held.
    pub grace: Dur,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            ack_grace: Dur::secs(5),
            grace: Dur::secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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
            if !t.is_empty() && !cfg.api.tokens.iter().any(|x| x.secret().expose() == t) {
                cfg.api
                    .tokens
                    .push(crate::api::TokenConfig::Bare(crate::secret::Secret::new(t)));
            }
        }
        if let Ok(s) = std::env::var("FOREWARN_DISPATCH_SECRET") {
            if !s.is_empty() {
                cfg.dispatch.webhook_secret = Some(s.into());
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
            history_updates_kept: self.tickets.history_updates_kept,
            consecutive_override: self.scoring.consecutive,
            ticket_id_key: Vec::new(),
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
        if !matches!(self.broker.protocol, 4 | 5) {
            return bad("broker.protocol", "must be 4 (MQTT 3.1.1) or 5 (MQTT 5)");
        }
        if self
            .ingest
            .shared_group
            .as_deref()
            .is_some_and(|g| g.is_empty() || g.contains(['/', '+', '#']))
        {
            return bad(
                "ingest.shared_group",
                "must be a non-empty name without '/', '+' or '#'",
            );
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
        self.ingest
            .sparkplug
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                key: format!("ingest.sparkplug.{key}"),
                message,
            })?;
        self.ingest
            .senml
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                key: format!("ingest.senml.{key}"),
                message,
            })?;
        if !(1..=10_000_000).contains(&self.store.snapshot_every) {
            return bad("store.snapshot_every", "must be between 1 and 10000000");
        }
        if self.features.window_readings == 0 || self.features.window_readings > 256 {
            return bad("features.window_readings", "must be between 1 and 256");
        }
        if self.features.ew_spans.len() > 8 || self.features.ew_spans.contains(&0) {
            return bad("features.ew_spans", "at most 8 spans, each at least 1");
        }
        if self.tickets.history_updates_kept == 0 {
            return bad("tickets.history_updates_kept", "must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.tickets.update_min_probability_delta) {
            return bad(
                "tickets.update_min_probability_delta",
                "must be within 0..1",
            );
        }
        self.api
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                key: format!("api.{key}"),
                message,
            })?;
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
        self.board
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                key: format!("board.{key}"),
                message,
            })?;
        self.archive
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                key: key.into(),
                message,
            })?;
        self.cluster
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                key: key.into(),
                message,
            })?;
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
    fn default_file_parses_to_the_defaults() {
        let from_file: Config = toml::from_str(DEFAULT_TOML).unwrap();
        from_file.validate().unwrap();
        assert_eq!(from_file.broker, crate::ingest::BrokerConfig::default());
        assert_eq!(from_file.ingest, crate::ingest::Config::default());
        assert_eq!(from_file.features, crate::features::Config::default());
        assert_eq!(from_file.scoring, crate::predict::Config::default());
        assert_eq!(from_file.notify, crate::notify::NotifyConfig::default());
        assert_eq!(from_file.api, crate::api::Config::default());
        assert_eq!(from_file.board, crate::board::Config::default());
        assert_eq!(from_file.cluster, crate::cluster::Config::default());
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let e = toml::from_str::<Config>("[broker]\nurll = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("urll"), "{e}");
    }
}
