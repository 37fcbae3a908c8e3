//! What dispatch tells the operator, one struct per happening: each `emit` writes the log line
//! and counts `forewarn_dispatch_deliveries_total{target, result}` together, so the two cannot
//! drift apart. Labels come from the enums here, never from free text.

use crate::metrics::Metrics;
use std::time::Duration;

/// Where a dispatch delivery goes: the `target` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The retained ticket publish.
    Mqtt,
    /// The signed webhook POST.
    Webhook,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Mqtt => "mqtt",
            Target::Webhook => "webhook",
        }
    }
}

/// How one call to a target went: the `result` label (`dead` belongs to [`GaveUp`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Ok,
    Error,
}

impl Attempt {
    pub fn as_str(self) -> &'static str {
        match self {
            Attempt::Ok => "ok",
            Attempt::Error => "error",
        }
    }
}

/// One call to one target and its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempted {
    pub target: Target,
    pub result: Attempt,
}

impl Attempted {
    pub fn emit(&self, m: &Metrics) {
        tracing::debug!(
            target = self.target.as_str(),
            result = self.result.as_str(),
            "dispatch delivery attempt"
        );
        m.dispatch
            .with_label_values(&[self.target.as_str(), self.result.as_str()])
            .inc();
    }
}

/// A row's attempt failed; it is tried again after `wait_ms`. Counted by its [`Attempted`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retrying {
    pub ticket: String,
    pub attempt: u32,
    pub wait_ms: i64,
    pub error: String,
}

impl Retrying {
    pub fn emit(&self) {
        let wait = Duration::from_millis(u64::try_from(self.wait_ms).unwrap_or(0));
        tracing::warn!(
            ticket = %self.ticket,
            attempt = self.attempt,
            "dispatch failed, retrying in {wait:?}: {}",
            self.error
        );
    }
}

/// A row used up its attempts and moves to the dead-letter queue: counted as
/// `{target="any", result="dead"}`, the row as a whole rather than one of its targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaveUp {
    pub ticket: String,
    pub attempts: u32,
    pub error: String,
}

impl GaveUp {
    pub fn emit(&self, m: &Metrics) {
        tracing::error!(
            ticket = %self.ticket,
            "dispatch gave up after {} attempts: {}",
            self.attempts,
            self.error
        );
        m.dispatch.with_label_values(&["any", "dead"]).inc();
    }
}
