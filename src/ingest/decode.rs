//! Payload decoding: bytes in, typed readings and events out, or a reason for rejecting them.
//!
//! Pure and allocation-bounded so it can be fuzzed: nothing here touches the network, the clock
//! (the receive time is passed in) or the store.

use serde::Deserialize;
use serde_json::value::RawValue;

/// Epoch milliseconds, in event time.
pub type Millis = i64;

/// Longest device id accepted anywhere (topic, API, CSV).
pub const MAX_DEVICE_ID_LEN: usize = 128;

/// One telemetry reading of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub device_id: String,
    pub ts: Millis,
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
    pub device_id: String,
    pub ts: Millis,
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
}

impl RejectReason {
    pub const ALL: [RejectReason; 9] = [
        Self::TooLarge,
        Self::NotUtf8,
        Self::InvalidJson,
        Self::NoMetrics,
        Self::NonFiniteValue,
        Self::BadTimestamp,
        Self::BadDeviceId,
        Self::BadEvent,
        Self::BatchTooLarge,
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
        }
    }
}

/// A rejected payload: the reason and a human-readable detail.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct Reject {
    pub reason: RejectReason,
    pub detail: String,
}

impl Reject {
    fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Reject {
            reason,
            detail: detail.into(),
        }
    }
}

/// Limits applied while decoding.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_payload_bytes: usize,
    pub max_batch: usize,
    pub max_metrics: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: 256 * 1024,
            max_batch: 1000,
            max_metrics: 256,
        }
    }
}

/// Validates a device id: non-empty, bounded, and free of MQTT wildcards, separators and control
/// characters, so it is safe as a topic level, a URL segment and a key.
pub fn validate_device_id(id: &str) -> Result<(), Reject> {
    if id.is_empty() {
        return Err(Reject::new(RejectReason::BadDeviceId, "empty device id"));
    }
    if id.len() > MAX_DEVICE_ID_LEN {
        return Err(Reject::new(
            RejectReason::BadDeviceId,
            format!("device id longer than {MAX_DEVICE_ID_LEN} bytes"),
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| matches!(c, '/' | '+' | '#') || c.is_control() || c.is_whitespace())
    {
        return Err(Reject::new(
            RejectReason::BadDeviceId,
            format!("device id contains forbidden character {c:?}"),
        ));
    }
    Ok(())
}

/// Parses a contract timestamp: RFC 3339 text or integer epoch milliseconds.
pub fn parse_ts_str(s: &str) -> Option<Millis> {
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.timestamp_millis())
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TsField {
    Millis(i64),
    Text(String),
    Float(f64),
}

fn parse_ts(ts: Option<TsField>, received_at: Millis) -> Result<Millis, Reject> {
    match ts {
        None => Ok(received_at),
        Some(TsField::Millis(ms)) => Ok(ms),
        Some(TsField::Float(f)) if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
            Ok(f as i64)
        }
        Some(TsField::Float(f)) => Err(Reject::new(
            RejectReason::BadTimestamp,
            format!("timestamp {f} is not integer epoch milliseconds"),
        )),
        Some(TsField::Text(s)) => parse_ts_str(&s).ok_or_else(|| {
            Reject::new(
                RejectReason::BadTimestamp,
                format!("timestamp {:?} is not RFC 3339", truncate(&s, 40)),
            )
        }),
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[derive(Deserialize)]
struct RawReading<'a> {
    #[serde(default)]
    ts: Option<TsField>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default, borrow)]
    metrics: Option<&'a RawValue>,
    #[serde(default)]
    device_id: Option<String>,
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(default)]
    ts: Option<TsField>,
    kind: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    device_id: Option<String>,
}

fn check_size<'a>(payload: &'a [u8], limits: &Limits) -> Result<&'a str, Reject> {
    if payload.len() > limits.max_payload_bytes {
        return Err(Reject::new(
            RejectReason::TooLarge,
            format!(
                "payload of {} bytes exceeds the limit of {}",
                payload.len(),
                limits.max_payload_bytes
            ),
        ));
    }
    std::str::from_utf8(payload)
        .map_err(|e| Reject::new(RejectReason::NotUtf8, format!("payload is not UTF-8: {e}")))
}

fn resolve_device(topic_id: Option<&str>, payload_id: Option<String>) -> Result<String, Reject> {
    let id = match (topic_id, payload_id) {
        (Some(t), _) => t.to_string(),
        (None, Some(p)) => p,
        (None, None) => {
            return Err(Reject::new(
                RejectReason::BadDeviceId,
                "no device id in topic or payload",
            ))
        }
    };
    validate_device_id(&id)?;
    Ok(id)
}

/// Decodes a telemetry payload (one reading or a JSON array of them).
///
/// `topic_device` is the id taken from the topic, when the topic carries it; otherwise each
/// reading must carry a `device_id` field. A batch is all-or-nothing: one bad element rejects it,
/// so a publisher never has to guess which half was kept.
pub fn decode_telemetry(
    payload: &[u8],
    topic_device: Option<&str>,
    received_at: Millis,
    limits: &Limits,
) -> Result<Vec<Reading>, Reject> {
    let text = check_size(payload, limits)?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let items: Vec<&RawValue> = serde_json::from_str(text)
            .map_err(|e| Reject::new(RejectReason::InvalidJson, e.to_string()))?;
        if items.len() > limits.max_batch {
            return Err(Reject::new(
                RejectReason::BatchTooLarge,
                format!(
                    "batch of {} readings exceeds {}",
                    items.len(),
                    limits.max_batch
                ),
            ));
        }
        if items.is_empty() {
            return Err(Reject::new(RejectReason::NoMetrics, "empty batch"));
        }
        items
            .into_iter()
            .map(|raw| decode_one(raw.get(), topic_device, received_at, limits))
            .collect()
    } else {
        Ok(vec![decode_one(text, topic_device, received_at, limits)?])
    }
}

fn decode_one(
    text: &str,
    topic_device: Option<&str>,
    received_at: Millis,
    limits: &Limits,
) -> Result<Reading, Reject> {
    let raw: RawReading = serde_json::from_str(text)
        .map_err(|e| Reject::new(RejectReason::InvalidJson, e.to_string()))?;
    let device_id = resolve_device(topic_device, raw.device_id)?;
    let ts = parse_ts(raw.ts, received_at)?;
    let metrics_raw = raw
        .metrics
        .ok_or_else(|| Reject::new(RejectReason::NoMetrics, "no \"metrics\" object"))?;
    let map: Vec<(String, serde_json::Value)> = parse_metric_pairs(metrics_raw.get())?;
    if map.is_empty() {
        return Err(Reject::new(RejectReason::NoMetrics, "\"metrics\" is empty"));
    }
    if map.len() > limits.max_metrics {
        return Err(Reject::new(
            RejectReason::TooLarge,
            format!(
                "{} metrics exceed the limit of {}",
                map.len(),
                limits.max_metrics
            ),
        ));
    }
    let mut metrics = Vec::with_capacity(map.len());
    for (name, value) in map {
        let v = match &value {
            serde_json::Value::Number(n) => n.as_f64(),
            _ => None,
        };
        match v {
            Some(v) if v.is_finite() => metrics.push((name, v)),
            _ => {
                return Err(Reject::new(
                    RejectReason::NonFiniteValue,
                    format!("metric {:?} is not a finite number", truncate(&name, 64)),
                ))
            }
        }
    }
    Ok(Reading {
        device_id,
        ts,
        seq: raw.seq,
        metrics,
    })
}

/// Parses a JSON object into ordered pairs, rejecting anything that is not an object.
fn parse_metric_pairs(text: &str) -> Result<Vec<(String, serde_json::Value)>, Reject> {
    use serde::de::{MapAccess, Visitor};
    struct Pairs;
    impl<'de> Visitor<'de> for Pairs {
        type Value = Vec<(String, serde_json::Value)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of metric name to number")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(m.size_hint().unwrap_or(4).min(64));
            while let Some((k, v)) = m.next_entry::<String, serde_json::Value>()? {
                out.push((k, v));
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    serde::Deserializer::deserialize_map(&mut de, Pairs).map_err(|e| {
        Reject::new(
            RejectReason::NoMetrics,
            format!("\"metrics\" is not an object of numbers: {e}"),
        )
    })
}

/// Decodes a device event payload (one event or a JSON array of them).
pub fn decode_events(
    payload: &[u8],
    topic_device: Option<&str>,
    received_at: Millis,
    limits: &Limits,
) -> Result<Vec<DeviceEvent>, Reject> {
    let text = check_size(payload, limits)?;
    let raws: Vec<RawEvent> = if text.trim_start().starts_with('[') {
        serde_json::from_str(text)
    } else {
        serde_json::from_str(text).map(|e| vec![e])
    }
    .map_err(|e| Reject::new(RejectReason::InvalidJson, e.to_string()))?;
    if raws.len() > limits.max_batch {
        return Err(Reject::new(
            RejectReason::BatchTooLarge,
            format!(
                "batch of {} events exceeds {}",
                raws.len(),
                limits.max_batch
            ),
        ));
    }
    raws.into_iter()
        .map(|raw| {
            let device_id = resolve_device(topic_device, raw.device_id)?;
            let ts = parse_ts(raw.ts, received_at)?;
            let kind = EventKind::parse(&raw.kind).ok_or_else(|| {
                Reject::new(
                    RejectReason::BadEvent,
                    format!(
                        "kind {:?} is not failure, maintenance or error",
                        truncate(&raw.kind, 32)
                    ),
                )
            })?;
            let code = raw.code.unwrap_or_default();
            if kind != EventKind::Error && code.is_empty() {
                return Err(Reject::new(
                    RejectReason::BadEvent,
                    "failure and maintenance events need a \"code\" naming the failure mode",
                ));
            }
            if code.len() > 128 || code.chars().any(|c| c.is_control()) {
                return Err(Reject::new(RejectReason::BadEvent, "unusable event code"));
            }
            Ok(DeviceEvent {
                device_id,
                ts,
                kind,
                code,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(p: &str) -> Result<Vec<Reading>, Reject> {
        decode_telemetry(p.as_bytes(), Some("pump-1"), 1_000, &Limits::default())
    }

    #[test]
    fn single_reading_with_rfc3339_time_decodes() {
        let r = dec(
            r#"{"ts":"2015-01-01T06:00:00Z","seq":17,"metrics":{"volt":176.2,"rotate":418.5}}"#,
        )
        .unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].ts, 1_420_092_000_000);
        assert_eq!(r[0].seq, Some(17));
        assert_eq!(
            r[0].metrics,
            vec![("volt".into(), 176.2), ("rotate".into(), 418.5)]
        );
    }

    #[test]
    fn missing_time_means_time_of_receipt_and_millis_are_accepted() {
        assert_eq!(dec(r#"{"metrics":{"a":1}}"#).unwrap()[0].ts, 1_000);
        assert_eq!(
            dec(r#"{"ts":5000,"metrics":{"a":1}}"#).unwrap()[0].ts,
            5_000
        );
    }

    #[test]
    fn batch_is_all_or_nothing() {
        assert_eq!(
            dec(r#"[{"metrics":{"a":1}},{"metrics":{"a":2}}]"#)
                .unwrap()
                .len(),
            2
        );
        let e = dec(r#"[{"metrics":{"a":1}},{"metrics":{"a":"x"}}]"#).unwrap_err();
        assert_eq!(e.reason, RejectReason::NonFiniteValue);
    }

    #[test]
    fn bad_payloads_are_rejected_with_a_reason() {
        assert_eq!(
            dec("not json").unwrap_err().reason,
            RejectReason::InvalidJson
        );
        assert_eq!(
            dec(r#"{"ts":1}"#).unwrap_err().reason,
            RejectReason::NoMetrics
        );
        assert_eq!(
            dec(r#"{"metrics":{}}"#).unwrap_err().reason,
            RejectReason::NoMetrics
        );
        assert_eq!(
            dec(r#"{"metrics":[1]}"#).unwrap_err().reason,
            RejectReason::NoMetrics
        );
        assert_eq!(
            dec(r#"{"metrics":{"a":null}}"#).unwrap_err().reason,
            RejectReason::NonFiniteValue
        );
        assert_eq!(
            dec(r#"{"ts":"yesterday","metrics":{"a":1}}"#)
                .unwrap_err()
                .reason,
            RejectReason::BadTimestamp
        );
        let big = format!(r#"{{"metrics":{{"a":1}},"pad":"{}"}}"#, "x".repeat(300_000));
        assert_eq!(dec(&big).unwrap_err().reason, RejectReason::TooLarge);
        assert_eq!(
            decode_telemetry(&[0xff, 0xfe], Some("d"), 0, &Limits::default())
                .unwrap_err()
                .reason,
            RejectReason::NotUtf8
        );
    }

    #[test]
    fn device_ids_with_wildcards_or_controls_are_refused() {
        for bad in ["", "a/b", "a+b", "a#", "a\u{0}b", "a b"] {
            assert!(validate_device_id(bad).is_err(), "{bad:?}");
        }
        assert!(validate_device_id(&"x".repeat(MAX_DEVICE_ID_LEN + 1)).is_err());
        assert!(validate_device_id("engine-001").is_ok());
        let e =
            decode_telemetry(br#"{"metrics":{"a":1}}"#, None, 0, &Limits::default()).unwrap_err();
        assert_eq!(e.reason, RejectReason::BadDeviceId);
    }

    #[test]
    fn events_decode_and_need_a_mode_code() {
        let e = decode_events(
            br#"{"ts":"2015-01-01T06:00:00Z","kind":"maintenance","code":"comp2"}"#,
            Some("d1"),
            0,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(e[0].kind, EventKind::Maintenance);
        assert_eq!(e[0].code, "comp2");
        let bad = decode_events(br#"{"kind":"failure"}"#, Some("d1"), 0, &Limits::default());
        assert_eq!(bad.unwrap_err().reason, RejectReason::BadEvent);
        let bad = decode_events(
            br#"{"kind":"explode","code":"x"}"#,
            Some("d1"),
            0,
            &Limits::default(),
        );
        assert_eq!(bad.unwrap_err().reason, RejectReason::BadEvent);
    }
}
