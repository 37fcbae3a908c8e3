//! What devices send: telemetry readings and events, and the bounded set of reasons input is
//! refused for.

use super::{DeviceId, Timestamp};

/// One telemetry reading of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub device_id: DeviceId,
    pub ts: Timestamp,
    pub seq: Option<u64>,
    /// Metric name → finite value, in payload order.
    pub metrics: Vec<(String, f64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Failure,
    Maintenance,
    Error,
}

impl EventKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "failure" => Some(Self::Failure),
            "maintenance" => Some(Self::Maintenance),
            "error" => Some(Self::Error),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failure => "failure",
            Self::Maintenance => "maintenance",
            Self::Error => "error",
        }
    }
}

/// A device event: a failure, a maintenance visit or an error code.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceEvent {
    pub device_id: DeviceId,
    pub ts: Timestamp,
    pub kind: EventKind,
    /// The failure mode (for failure and maintenance) or error code.
    pub code: String,
}

/// Why a payload was rejected. The label set is bounded: it is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    TooLarge,
    NotUtf8,
    InvalidJson,
    NoMetrics,
    NonFiniteValue,
    BadTimestamp,
    BadDeviceId,
    BadEvent,
    BatchTooLarge,
    /// Stamped further ahead of its receipt than `ingest.max_clock_skew`.
    FutureTs,
    /// A Sparkplug B payload that is not a valid protobuf `Payload`.
    InvalidProtobuf,
    /// A Sparkplug B message that breaks the specification's rules (a `seq` over 255, a DATA
    /// topic without its device level, …).
    BadSparkplug,
    /// Sparkplug B DATA from an edge node or device whose BIRTH forewarn has not seen: its
    /// aliases and datatypes are unknown, so a rebirth is requested instead.
    NoBirth,
    /// A SenML pack (RFC 8428) that is not one: a record that is not an object, a label of the
    /// wrong type, a name outside the RFC's characters, an unknown must-understand label.
    BadSenml,
}

impl RejectReason {
    pub const ALL: [RejectReason; 14] = [
        Self::TooLarge,
        Self::NotUtf8,
        Self::InvalidJson,
        Self::NoMetrics,
        Self::NonFiniteValue,
        Self::BadTimestamp,
        Self::BadDeviceId,
        Self::BadEvent,
        Self::BatchTooLarge,
        Self::FutureTs,
        Self::InvalidProtobuf,
        Self::BadSparkplug,
        Self::NoBirth,
        Self::BadSenml,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::NotUtf8 => "not_utf8",
            Self::InvalidJson => "invalid_json",
            Self::NoMetrics => "no_metrics",
            Self::NonFiniteValue => "non_finite_value",
            Self::BadTimestamp => "bad_timestamp",
            Self::BadDeviceId => "bad_device_id",
            Self::BadEvent => "bad_event",
            Self::BatchTooLarge => "batch_too_large",
            Self::FutureTs => "future_ts",
            Self::InvalidProtobuf => "invalid_protobuf",
            Self::BadSparkplug => "bad_sparkplug",
            Self::NoBirth => "no_birth",
            Self::BadSenml => "bad_senml",
        }
    }
}
