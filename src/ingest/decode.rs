//! Payload decoding: bytes in, typed readings and events out, or a reason for rejecting them.
//!
//! Pure and allocation-bounded so it can be fuzzed: nothing here touches the network, the clock
//! (the receive time is passed in) or the store.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::domain::{DeviceEvent, DeviceId, EventKind, Reading, RejectReason, Timestamp};

/// A rejected payload: the reason and a human-readable detail.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct Reject {
    pub reason: RejectReason,
    pub detail: String,
}

impl Reject {
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Reject {
            reason,
            detail: detail.into(),
        }
    }

    /// The detail fit for a log line: every value the payload carried — quoted strings, and
    /// what serde puts between backticks — replaced by `…`. The full detail stays in
    /// `GET /api/v1/rejects` (admin scope).
    pub fn log_detail(&self) -> String {
        let mut out = String::with_capacity(self.detail.len());
        let mut chars = self.detail.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' | '`' => {
                    out.push(c);
                    out.push('…');
                    let mut escaped = false;
                    for d in chars.by_ref() {
                        if escaped {
                            escaped = false;
                        } else if d == '\\' {
                            escaped = true;
                        } else if d == c {
                            break;
                        }
                    }
                    out.push(c);
                }
                c => out.push(c),
            }
        }
        out
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

#[derive(Deserialize)]
#[serde(untagged)]
enum TsField {
    Millis(i64),
    Text(String),
    Float(f64),
}

fn ts_field(ts: Option<TsField>, received_at: Timestamp) -> Result<Timestamp, Reject> {
    match ts {
        None => Ok(received_at),
        Some(TsField::Millis(ms)) => Ok(Timestamp::from_millis(ms)),
        Some(TsField::Float(f)) if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
            Ok(Timestamp::from_millis(f as i64))
        }
        Some(TsField::Float(f)) => Err(Reject::new(
            RejectReason::BadTimestamp,
            format!("timestamp {f} is not integer epoch milliseconds"),
        )),
        Some(TsField::Text(s)) => Timestamp::parse_rfc3339(&s).ok_or_else(|| {
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

/// Refuses a payload over `limits.max_payload_bytes` (`too_large`), whatever its format.
pub(crate) fn check_len(payload: &[u8], limits: &Limits) -> Result<(), Reject> {
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
    Ok(())
}

fn check_size<'a>(payload: &'a [u8], limits: &Limits) -> Result<&'a str, Reject> {
    check_len(payload, limits)?;
    std::str::from_utf8(payload)
        .map_err(|e| Reject::new(RejectReason::NotUtf8, format!("payload is not UTF-8: {e}")))
}

fn resolve_device(topic_id: Option<&str>, payload_id: Option<String>) -> Result<DeviceId, Reject> {
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
    DeviceId::try_from(id).map_err(|e| Reject::new(RejectReason::BadDeviceId, e.to_string()))
}

/// Decodes a telemetry payload (one reading or a JSON array of them).
///
/// `topic_device` is the id taken from the topic, when the topic carries it; otherwise each
/// reading must carry a `device_id` field. A batch is all-or-nothing: one bad element rejects it,
/// so a publisher never has to guess which half was kept.
pub fn decode_telemetry(
    payload: &[u8],
    topic_device: Option<&str>,
    received_at: i64,
    limits: &Limits,
) -> Result<Vec<Reading>, Reject> {
    let received_at = Timestamp::from_millis(received_at);
    decode_telemetry_with(payload, topic_device, received_at, limits, decode_one)
}

type DecodeOne = fn(&str, Option<&str>, Timestamp, &Limits) -> Result<Reading, Reject>;

fn decode_telemetry_with(
    payload: &[u8],
    topic_device: Option<&str>,
    received_at: Timestamp,
    limits: &Limits,
    decode_one: DecodeOne,
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

/// One reading: the single-pass decoder when it accepts the text, else the exact decoder, which
/// owns every rejection (so the fast path cannot change what is rejected, or why).
fn decode_one(
    text: &str,
    topic_device: Option<&str>,
    received_at: Timestamp,
    limits: &Limits,
) -> Result<Reading, Reject> {
    match fast::decode_one(text, topic_device, received_at, limits) {
        Some(r) => Ok(r),
        None => decode_one_exact(text, topic_device, received_at, limits),
    }
}

/// The reference decoder of one reading: every field captured first, then checked in a fixed
/// order (JSON, device id, timestamp, metrics present, count, values), each failure with its
/// reason. Only payloads that [`fast::decode_one`] does not accept get here.
fn decode_one_exact(
    text: &str,
    topic_device: Option<&str>,
    received_at: Timestamp,
    limits: &Limits,
) -> Result<Reading, Reject> {
    let raw: RawReading = serde_json::from_str(text)
        .map_err(|e| Reject::new(RejectReason::InvalidJson, e.to_string()))?;
    let device_id = resolve_device(topic_device, raw.device_id)?;
    let ts = ts_field(raw.ts, received_at)?;
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

/// The single-pass reading decoder: `metrics` parsed straight into `(String, f64)` pairs, the
/// known fields matched without allocating, the timestamp parsed in place. It answers only for
/// payloads it accepts whole; `None` means "ask [`decode_one_exact`]".
///
/// It accepts exactly what the exact decoder accepts and yields the same reading: the same
/// serde_json number parser (`float_roundtrip`) turns each value into the same `f64`
/// (`u64`/`i64`/`f64` as `serde_json::Value::as_f64` converts them), and the timestamp rules
/// are the exact decoder's `TsField` rules. `decode_parity` below checks both on fuzzed input.
mod fast {
    use super::{resolve_device, Limits, Reading, Timestamp};
    use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
    use std::fmt;

    /// Any error: the caller falls back to the exact decoder, which words the real one.
    fn bail<E: de::Error>() -> E {
        E::custom("fast path declined")
    }

    pub(super) fn decode_one(
        text: &str,
        topic_device: Option<&str>,
        received_at: Timestamp,
        limits: &Limits,
    ) -> Option<Reading> {
        let mut de = serde_json::Deserializer::from_str(text);
        let visitor = ReadingVisitor {
            max_metrics: limits.max_metrics,
        };
        let f = serde::Deserializer::deserialize_map(&mut de, visitor).ok()?;
        de.end().ok()?;
        let metrics = f.metrics?;
        let device_id = resolve_device(topic_device, f.device_id).ok()?;
        Some(Reading {
            device_id,
            ts: f.ts.unwrap_or(received_at),
            seq: f.seq,
            metrics,
        })
    }

    #[derive(Default)]
    struct Fields {
        /// `None` when absent or null: the time of receipt.
        ts: Option<Timestamp>,
        seq: Option<u64>,
        metrics: Option<Vec<(String, f64)>>,
        device_id: Option<String>,
    }

    enum Field {
        Ts,
        Seq,
        Metrics,
        DeviceId,
        Other,
    }

    impl<'de> de::Deserialize<'de> for Field {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Field;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a field name")
                }
                fn visit_str<E: de::Error>(self, s: &str) -> Result<Field, E> {
                    Ok(match s {
                        "ts" => Field::Ts,
                        "seq" => Field::Seq,
                        "metrics" => Field::Metrics,
                        "device_id" => Field::DeviceId,
                        _ => Field::Other,
                    })
                }
            }
            d.deserialize_identifier(V)
        }
    }

    struct ReadingVisitor {
        max_metrics: usize,
    }

    impl<'de> Visitor<'de> for ReadingVisitor {
        type Value = Fields;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a reading object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Fields, A::Error> {
            let mut out = Fields::default();
            // A repeated known field is an error for the exact decoder (serde's derive).
            let mut seen = [false; 4];
            let mut first = |i: usize| -> Result<(), A::Error> {
                if std::mem::replace(&mut seen[i], true) {
                    return Err(bail());
                }
                Ok(())
            };
            while let Some(key) = m.next_key::<Field>()? {
                match key {
                    Field::Ts => {
                        first(0)?;
                        out.ts = m.next_value_seed(TsSeed)?;
                    }
                    Field::Seq => {
                        first(1)?;
                        out.seq = m.next_value()?;
                    }
                    Field::Metrics => {
                        first(2)?;
                        out.metrics = Some(m.next_value_seed(MetricsSeed {
                            max: self.max_metrics,
                        })?);
                    }
                    Field::DeviceId => {
                        first(3)?;
                        out.device_id = m.next_value()?;
                    }
                    Field::Other => {
                        m.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(out)
        }
    }

    /// The exact decoder's `TsField` (integer millis, RFC 3339 text, integral float) and
    /// `ts_field`, declining whatever that would reject.
    struct TsSeed;

    impl<'de> DeserializeSeed<'de> for TsSeed {
        type Value = Option<Timestamp>;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl Visitor<'_> for TsSeed {
        type Value = Option<Timestamp>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a timestamp")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(Timestamp::from_millis(v)))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            i64::try_from(v)
                .map(|v| Some(Timestamp::from_millis(v)))
                .map_err(|_| bail())
        }
        fn visit_f64<E: de::Error>(self, f: f64) -> Result<Self::Value, E> {
            if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15 {
                Ok(Some(Timestamp::from_millis(f as i64)))
            } else {
                Err(bail())
            }
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Timestamp::parse_rfc3339(s).map(Some).ok_or_else(bail)
        }
    }

    /// The `metrics` object as pairs in payload order; declines a non-object, an empty object,
    /// more than `max` metrics and any value that is not a number.
    struct MetricsSeed {
        max: usize,
    }

    impl<'de> DeserializeSeed<'de> for MetricsSeed {
        type Value = Vec<(String, f64)>;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for MetricsSeed {
        type Value = Vec<(String, f64)>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object of metric name to number")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(8.min(self.max));
            while let Some(name) = m.next_key::<String>()? {
                // serde_json's number parser, as `Value` uses it; a non-number is an error.
                let v: f64 = m.next_value()?;
                if out.len() == self.max || !v.is_finite() {
                    return Err(bail());
                }
                out.push((name, v));
            }
            if out.is_empty() {
                return Err(bail());
            }
            Ok(out)
        }
    }
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
    received_at: i64,
    limits: &Limits,
) -> Result<Vec<DeviceEvent>, Reject> {
    let received_at = Timestamp::from_millis(received_at);
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
            let ts = ts_field(raw.ts, received_at)?;
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
    #[test]
    fn log_detail_keeps_the_shape_but_not_the_values() {
        let r = Reject::new(
            RejectReason::InvalidJson,
            "invalid type: string \"pin=4711 \\\" x\", expected f64 at line 1 column 30; `12` seen",
        );
        let d = r.log_detail();
        assert_eq!(
            d,
            "invalid type: string \"…\", expected f64 at line 1 column 30; `…` seen"
        );
    }

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
        assert_eq!(r[0].ts, Timestamp::from_millis(1_420_092_000_000));
        assert_eq!(r[0].seq, Some(17));
        assert_eq!(
            r[0].metrics,
            vec![("volt".into(), 176.2), ("rotate".into(), 418.5)]
        );
    }

    #[test]
    fn missing_time_means_time_of_receipt_and_millis_are_accepted() {
        assert_eq!(
            dec(r#"{"metrics":{"a":1}}"#).unwrap()[0].ts,
            Timestamp::from_millis(1_000)
        );
        assert_eq!(
            dec(r#"{"ts":5000,"metrics":{"a":1}}"#).unwrap()[0].ts,
            Timestamp::from_millis(5_000)
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
    fn payload_without_a_device_id_is_refused() {
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

    /// The single-pass decoder against the exact one, on payloads built to hit every branch of
    /// both: the results must be equal, values to the bit.
    mod decode_parity {
        use super::super::*;
        use proptest::prelude::*;

        fn exact(p: &[u8], topic: Option<&str>, l: &Limits) -> Result<Vec<Reading>, Reject> {
            decode_telemetry_with(p, topic, Timestamp::from_millis(7), l, decode_one_exact)
        }

        fn assert_same(p: &[u8], topic: Option<&str>, l: &Limits) {
            let fast = decode_telemetry(p, topic, 7, l);
            let slow = exact(p, topic, l);
            let text = String::from_utf8_lossy(p);
            match (&fast, &slow) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b, "{text}");
                    for (x, y) in a.iter().zip(b) {
                        for ((_, u), (_, v)) in x.metrics.iter().zip(&y.metrics) {
                            assert_eq!(u.to_bits(), v.to_bits(), "{text}");
                        }
                    }
                }
                _ => assert_eq!(fast, slow, "{text}"),
            }
        }

        fn number() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => any::<f64>().prop_filter("finite", |v| v.is_finite()).prop_map(|v| format!("{v}")),
                2 => any::<f64>().prop_filter("finite", |v| v.is_finite()).prop_map(|v| format!("{v:e}")),
                2 => any::<i64>().prop_map(|v| v.to_string()),
                2 => any::<u64>().prop_map(|v| v.to_string()),
                2 => "-?[0-9]{1,25}(\\.[0-9]{1,25})?([eE][-+]?[0-9]{1,3})?",
                1 => prop::sample::select(vec![
                    "-0", "0", "-0.0", "1e308", "1.8e308", "1e999", "-1e999", "1e-400", "4.9e-324",
                    "2.2250738585072011e-308", "18446744073709551616", "-9223372036854775809",
                    "9007199254740993", "01", "1.", ".5", "+1", "NaN", "-", "1e", "0x10",
                ].into_iter().map(String::from).collect::<Vec<_>>()),
            ]
        }

        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                8 => number(),
                1 => prop::sample::select(vec![
                    "null", "true", "\"12\"", "[1]", "[1e999]", "{}", "{\"a\":1}", "\"\\ud800\"",
                    "[[[[[[1]]]]]]",
                ].into_iter().map(String::from).collect::<Vec<_>>()),
            ]
        }

        fn name() -> impl Strategy<Value = String> {
            prop_oneof![
                6 => "[a-z_]{1,8}".prop_map(|n| format!("\"{n}\"")),
                1 => prop::sample::select(vec![
                    "\"\"", "\"t\\u00e9\"", "\"a\\\"b\"", "\"\\ud800\"", "\"\\ud83d\\ude00\"",
                    "\"a\\x\"", "1", "\"ts\"",
                ].into_iter().map(String::from).collect::<Vec<_>>()),
            ]
        }

        fn ts() -> impl Strategy<Value = String> {
            prop_oneof![
                3 => (-62_000_000_000_000i64..253_402_300_799_000).prop_map(|ms| {
                    let t = chrono::DateTime::from_timestamp_millis(ms).unwrap();
                    format!("\"{}\"", t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
                }),
                2 => any::<i64>().prop_map(|v| v.to_string()),
                1 => number(),
                2 => "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,11})?(Z|z|[+-][0-9]{2}:[0-9]{2})?"
                    .prop_map(|s| format!("\"{s}\"")),
                1 => prop::sample::select(vec![
                    "null", "true", "{}", "[]", "\" 2015-01-01T06:00:00Z \"", "\"2016-12-31T23:59:60Z\"",
                    "\"2015-02-29T00:00:00Z\"", "\"yesterday\"", "1.5", "1e20", "-0", "-0.0",
                    "9223372036854775808",
                ].into_iter().map(String::from).collect::<Vec<_>>()),
            ]
        }

        fn field() -> impl Strategy<Value = String> {
            prop_oneof![
                3 => ts().prop_map(|t| format!("\"ts\":{t}")),
                2 => prop_oneof![
                    any::<u64>().prop_map(|v| v.to_string()),
                    Just("-1".to_string()), Just("1.0".to_string()), Just("null".to_string()),
                    Just("\"3\"".to_string()),
                ].prop_map(|v| format!("\"seq\":{v}")),
                4 => proptest::collection::vec((name(), value()), 0..6).prop_map(|kv| {
                    let body: Vec<String> = kv.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                    format!("\"metrics\":{{{}}}", body.join(","))
                }),
                1 => prop::sample::select(vec![
                    "\"metrics\":null", "\"metrics\":[1]", "\"metrics\":5", "\"device_id\":\"d-9\"",
                    "\"device_id\":null", "\"device_id\":7", "\"device_id\":\"a/b\"", "\"x\":[1e999]",
                    "\"x\":{\"y\":[true]}", "\"seq\":1e999",
                ].into_iter().map(String::from).collect::<Vec<_>>()),
            ]
        }

        fn object() -> impl Strategy<Value = String> {
            (proptest::collection::vec(field(), 0..5), any::<bool>()).prop_map(|(f, ws)| {
                let sep = if ws { " ,\n" } else { "," };
                format!("{{{}}}", f.join(sep))
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn single_pass_decoder_answers_as_the_exact_one(
                items in proptest::collection::vec(object(), 1..4),
                batch in any::<bool>(),
                topic in prop_oneof![4 => Just(Some("pump-1")), 1 => Just(None), 1 => Just(Some("a b"))],
                max_metrics in prop_oneof![4 => Just(256usize), 1 => 0usize..4],
                cut in any::<prop::sample::Index>(),
                byte in any::<u8>(),
                mutate in any::<bool>(),
            ) {
                let text = if batch || items.len() > 1 {
                    format!("[{}]", items.join(","))
                } else {
                    items[0].clone()
                };
                let l = Limits { max_metrics, max_batch: 2, ..Limits::default() };
                assert_same(text.as_bytes(), topic, &l);
                if mutate {
                    let mut b = text.into_bytes();
                    let i = cut.index(b.len());
                    b[i] = byte;
                    assert_same(&b, topic, &l);
                    assert_same(&b[..i], topic, &l);
                }
            }
        }
    }
}
