//! SenML (RFC 8428) packs as readings: JSON (`application/senml+json`) and CBOR
//! (`application/senml+cbor`, RFC 8428 §6, integer labels), told apart by their first byte.
//!
//! Pure, like [`super::decode`]: bytes, the topic and the receipt time in; readings or a reason
//! out. How a pack resolves (RFC 8428 §4.6): base fields (`bn`, `bt`, `bu`, `bv`, `bs`) apply to
//! the record that carries them and to every later one until changed; the name is `bn` + `n`;
//! the time is `bt` + `t` (absent: 0) in seconds — below 2^28 it is relative to now (the
//! receipt), otherwise seconds since the epoch; the unit is `u`, else `bu`.
//!
//! What becomes a reading value: `v` (plus `bv`), else `vb` as 1 or 0, else `s` (plus `bs`), else
//! `bv` alone. A record with only `vs` or `vd` (a string or data value) is not a number: it is
//! skipped and counted, like the non-numeric metrics of Sparkplug. Records are grouped into one
//! reading per (device, timestamp), in pack order. Units are resolved and checked but not kept:
//! a metric is known by its name, as in the JSON payload. A pack that breaks the RFC (a record
//! that is not a map, a label of the wrong type, a name outside the RFC's characters, an unknown
//! label ending in `_`, a record with no value at all) is rejected whole (`bad_senml`).

use crate::domain::{
    validate_device_id, DeviceId, DeviceIdError, Reading, RejectReason, Timestamp,
};
use crate::ingest::decode::{Limits, Reject};
use serde::{Deserialize, Serialize};

/// `[ingest.senml]`: SenML packs as a telemetry source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Topic filters carrying SenML packs (JSON or CBOR). Empty (the default): not subscribed.
    pub topics: Vec<String>,
    /// Where a record's device id comes from: `"base_name"` (the base name in effect, trailing
    /// `:`, `/`, `.`, `-`, `_` removed, with `n` as the metric name; a record with no `n` is
    /// split at the last `:` or `/` of its name) or `"topic"` (the topic level at
    /// `device_id_level`, with the whole resolved name as the metric name).
    pub device_id: DeviceIdFrom,
    /// The topic level (0-based) holding the device id when `device_id = "topic"`.
    pub device_id_level: usize,
}

/// Where a SenML record's device id comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeviceIdFrom {
    /// The base name in effect for the record (`"base_name"`).
    BaseName,
    /// A level of the topic the pack arrived on (`"topic"`).
    Topic,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            topics: Vec::new(),
            device_id: DeviceIdFrom::BaseName,
            device_id_level: 1,
        }
    }
}

impl Config {
    /// Checks the topic filters (no I/O): `(key, message)` of the first fault.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for t in &self.topics {
            let levels: Vec<&str> = t.split('/').collect();
            let bad_hash = levels
                .iter()
                .enumerate()
                .any(|(i, l)| l.contains('#') && (*l != "#" || i + 1 != levels.len()));
            let bad_plus = levels.iter().any(|l| l.contains('+') && *l != "+");
            if t.is_empty() || bad_hash || bad_plus {
                return Err(("topics", format!("{t:?} is not an MQTT topic filter")));
            }
        }
        Ok(())
    }
}

/// Relative times are below 2^28 seconds (RFC 8428 §4.5.3).
const RELATIVE_LIMIT: f64 = 268_435_456.0;

/// What a pack gave: its readings, and how many records were not numbers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decoded {
    pub readings: Vec<Reading>,
    /// Records with only a string (`vs`) or data (`vd`) value.
    pub not_numeric: u64,
}

/// One label's value, from either encoding.
enum Val {
    Num(f64),
    Text(String),
    Bool(bool),
    Bytes,
    Other,
}

/// One record as the pack wrote it.
#[derive(Default)]
struct Rec {
    bn: Option<String>,
    bt: Option<f64>,
    bu: Option<String>,
    bv: Option<f64>,
    bs: Option<f64>,
    n: Option<String>,
    u: Option<String>,
    v: Option<f64>,
    vs: bool,
    vb: Option<bool>,
    vd: bool,
    s: Option<f64>,
    t: Option<f64>,
}

fn bad(detail: impl Into<String>) -> Reject {
    Reject::new(RejectReason::BadSenml, detail)
}

impl Rec {
    fn set(&mut self, i: usize, label: &str, v: Val) -> Result<(), Reject> {
        let wrong = |want: &str| bad(format!("record {i}: label {label:?} must be {want}"));
        let num = |v: Val| match v {
            Val::Num(x) => Ok(x),
            _ => Err(wrong("a number")),
        };
        let text = |v: Val| match v {
            Val::Text(s) => Ok(s),
            _ => Err(wrong("a string")),
        };
        match label {
            "bn" => self.bn = Some(text(v)?),
            "bt" => self.bt = Some(num(v)?),
            "bu" => self.bu = Some(text(v)?),
            "bv" => self.bv = Some(num(v)?),
            "bs" => self.bs = Some(num(v)?),
            "bver" => {
                num(v)?;
            }
            "n" => self.n = Some(text(v)?),
            "u" => self.u = Some(text(v)?),
            "v" => self.v = Some(num(v)?),
            "vs" => {
                text(v)?;
                self.vs = true;
            }
            "vb" => match v {
                Val::Bool(b) => self.vb = Some(b),
                _ => return Err(wrong("true or false")),
            },
            "vd" => match v {
                Val::Text(_) | Val::Bytes => self.vd = true,
                _ => return Err(wrong("data")),
            },
            "s" => self.s = Some(num(v)?),
            "t" => self.t = Some(num(v)?),
            "ut" => {
                num(v)?;
            }
            // Labels ending in `_` must be understood (RFC 8428 §4.4); others may be ignored.
            l if l.ends_with('_') => {
                return Err(bad(format!(
                    "record {i}: must-understand label {:?} is not supported",
                    clip(l, 40)
                )))
            }
            _ => {}
        }
        Ok(())
    }
}

/// Decodes a SenML pack published on `topic`.
pub fn decode(
    payload: &[u8],
    topic: &str,
    cfg: &Config,
    received_at: i64,
    limits: &Limits,
) -> Result<Decoded, Reject> {
    super::decode::check_len(payload, limits)?;
    let records = match payload.first() {
        // A CBOR array (major type 4); JSON text never starts with these bytes.
        Some(0x80..=0x9f) => cbor_records(payload, limits)?,
        _ => json_records(payload, limits)?,
    };
    if records.is_empty() {
        return Err(Reject::new(RejectReason::NoMetrics, "empty SenML pack"));
    }
    let topic_device = match cfg.device_id {
        DeviceIdFrom::Topic => {
            Some(topic.split('/').nth(cfg.device_id_level).ok_or_else(|| {
                Reject::new(
                    RejectReason::BadDeviceId,
                    format!("topic has no level {}", cfg.device_id_level),
                )
            })?)
        }
        DeviceIdFrom::BaseName => None,
    };
    resolve(
        records,
        topic_device,
        Timestamp::from_millis(received_at),
        limits,
    )
}

fn json_records(payload: &[u8], limits: &Limits) -> Result<Vec<Rec>, Reject> {
    let text = std::str::from_utf8(payload)
        .map_err(|e| Reject::new(RejectReason::NotUtf8, format!("payload is not UTF-8: {e}")))?;
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Reject::new(RejectReason::InvalidJson, e.to_string()))?;
    let serde_json::Value::Array(items) = value else {
        return Err(bad("a SenML pack is a JSON array of records"));
    };
    check_count(items.len(), limits)?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let serde_json::Value::Object(map) = item else {
            return Err(bad(format!("record {i} is not an object")));
        };
        let mut rec = Rec::default();
        for (label, v) in map {
            let v = match v {
                serde_json::Value::Number(n) => n.as_f64().map_or(Val::Other, Val::Num),
                serde_json::Value::String(s) => Val::Text(s),
                serde_json::Value::Bool(b) => Val::Bool(b),
                _ => Val::Other,
            };
            rec.set(i, &label, v)?;
        }
        out.push(rec);
    }
    Ok(out)
}

fn check_count(n: usize, limits: &Limits) -> Result<(), Reject> {
    if n > limits.max_batch {
        return Err(Reject::new(
            RejectReason::BatchTooLarge,
            format!("pack of {n} records exceeds {}", limits.max_batch),
        ));
    }
    Ok(())
}

/// The CBOR labels of RFC 8428 §6 (table 6).
fn cbor_label(k: i128) -> Option<&'static str> {
    Some(match k {
        -1 => "bver",
        -2 => "bn",
        -3 => "bt",
        -4 => "bu",
        -5 => "bv",
        -6 => "bs",
        0 => "n",
        1 => "u",
        2 => "v",
        3 => "vs",
        4 => "vb",
        5 => "s",
        6 => "t",
        7 => "ut",
        8 => "vd",
        _ => return None,
    })
}

fn cbor_records(payload: &[u8], limits: &Limits) -> Result<Vec<Rec>, Reject> {
    use ciborium::Value as C;
    let value: C =
        ciborium::from_reader(payload).map_err(|e| bad(format!("not a CBOR SenML pack: {e}")))?;
    let C::Array(items) = value else {
        return Err(bad("a SenML pack is a CBOR array of records"));
    };
    check_count(items.len(), limits)?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let C::Map(pairs) = item else {
            return Err(bad(format!("record {i} is not a map")));
        };
        let mut rec = Rec::default();
        for (k, v) in pairs {
            let v = match v {
                C::Integer(n) => Val::Num(i128::from(n) as f64),
                C::Float(f) => Val::Num(f),
                C::Text(s) => Val::Text(s),
                C::Bool(b) => Val::Bool(b),
                C::Bytes(_) => Val::Bytes,
                _ => Val::Other,
            };
            match k {
                // Integer labels this table does not name are ignored, like unknown JSON labels.
                C::Integer(n) => {
                    if let Some(l) = cbor_label(i128::from(n)) {
                        rec.set(i, l, v)?;
                    }
                }
                C::Text(l) => rec.set(i, &l, v)?,
                _ => return Err(bad(format!("record {i}: a label is not an integer"))),
            }
        }
        out.push(rec);
    }
    Ok(out)
}

/// Whether a resolved name uses only the RFC's characters: `A-Z a-z 0-9 - : . / _`, starting
/// with a letter or digit.
fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | ':' | '.' | '/' | '_'))
}

fn clip(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The resolved records as readings.
fn resolve(
    records: Vec<Rec>,
    topic_device: Option<&str>,
    received_at: Timestamp,
    limits: &Limits,
) -> Result<Decoded, Reject> {
    let mut bn = String::new();
    let mut bt = 0.0f64;
    let mut bu: Option<String> = None;
    let mut bv: Option<f64> = None;
    let mut bs: Option<f64> = None;
    let mut out = Decoded::default();
    // One reading per (device, ts), in pack order.
    let mut groups: Vec<Reading> = Vec::new();
    for (i, r) in records.into_iter().enumerate() {
        if let Some(b) = r.bn {
            bn = b;
        }
        if let Some(b) = r.bt {
            bt = b;
        }
        if r.bu.is_some() {
            bu = r.bu;
        }
        if r.bv.is_some() {
            bv = r.bv;
        }
        if r.bs.is_some() {
            bs = r.bs;
        }
        let n = r.n.unwrap_or_default();
        let name = format!("{bn}{n}");
        if !valid_name(&name) {
            return Err(bad(format!(
                "record {i}: name {:?} is empty or uses characters RFC 8428 does not allow",
                clip(&name, 64)
            )));
        }
        // Resolved and checked, not kept (see the module doc).
        let _unit = r.u.as_ref().or(bu.as_ref());
        let value = if let Some(v) = r.v {
            Some(bv.unwrap_or(0.0) + v)
        } else if let Some(b) = r.vb {
            Some(f64::from(u8::from(b)))
        } else if r.vs || r.vd {
            None
        } else if let Some(s) = r.s {
            Some(bs.unwrap_or(0.0) + s)
        } else if let Some(b) = bv {
            Some(b)
        } else {
            return Err(bad(format!(
                "record {i} ({:?}) has no value",
                clip(&name, 64)
            )));
        };
        let Some(value) = value else {
            out.not_numeric += 1;
            continue;
        };
        if !value.is_finite() {
            return Err(Reject::new(
                RejectReason::NonFiniteValue,
                format!("record {i} ({:?}) is not a finite number", clip(&name, 64)),
            ));
        }
        let time = bt + r.t.unwrap_or(0.0);
        let ms = (time * 1000.0).round();
        let ts = if time.abs() < RELATIVE_LIMIT {
            Some(received_at.saturating_add(ms as i64))
        } else if ms.is_finite() && ms.abs() < 9.0e15 {
            Some(Timestamp::from_millis(ms as i64))
        } else {
            None
        }
        .ok_or_else(|| {
            Reject::new(
                RejectReason::BadTimestamp,
                format!("record {i}: time {time} is not usable"),
            )
        })?;
        let (device, metric) = match topic_device {
            Some(d) => (d.to_string(), name),
            None => split(&bn, &n, &name).ok_or_else(|| {
                bad(format!(
                    "record {i}: cannot tell the device from the metric in {:?} (no base name \
                     and no ':' or '/')",
                    clip(&name, 64)
                ))
            })?,
        };
        let bad_id = |e: DeviceIdError, device: &str| {
            Reject::new(
                RejectReason::BadDeviceId,
                format!("record {i}: device id {:?}: {e}", clip(device, 64)),
            )
        };
        validate_device_id(&device).map_err(|e| bad_id(e, &device))?;
        let device = DeviceId::try_from(device).map_err(|e| bad_id(e, ""))?;
        match groups
            .iter_mut()
            .find(|r| r.ts == ts && r.device_id == device)
        {
            Some(r) => match r.metrics.iter_mut().find(|(m, _)| *m == metric) {
                Some(slot) => slot.1 = value,
                None => r.metrics.push((metric, value)),
            },
            None => groups.push(Reading {
                device_id: device,
                ts,
                seq: None,
                metrics: vec![(metric, value)],
            }),
        }
    }
    if let Some(r) = groups.iter().find(|r| r.metrics.len() > limits.max_metrics) {
        return Err(Reject::new(
            RejectReason::TooLarge,
            format!(
                "device {:?}: more than {} metrics with one time",
                clip(&r.device_id, 64),
                limits.max_metrics
            ),
        ));
    }
    out.readings = groups;
    Ok(out)
}

/// (device, metric) from the base name and `n`, or from the resolved name alone.
fn split(bn: &str, n: &str, name: &str) -> Option<(String, String)> {
    let device = bn.trim_end_matches([':', '/', '.', '-', '_']);
    if !device.is_empty() && !n.is_empty() {
        return Some((device.to_string(), n.to_string()));
    }
    let (d, m) = name.rsplit_once([':', '/'])?;
    (!d.is_empty() && !m.is_empty()).then(|| (d.to_string(), m.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2^28 seconds and more: absolute.
    const NOW: i64 = 1_700_000_000_000;

    fn dec(pack: &str) -> Result<Decoded, Reject> {
        decode(
            pack.as_bytes(),
            "senml/x",
            &Config::default(),
            NOW,
            &Limits::default(),
        )
    }

    #[test]
    fn base_name_and_base_time_resolve_per_the_rfc() {
        // RFC 8428 §5.1.2-style: several measurements of one device, relative times.
        let d = dec(r#"[
            {"bn":"urn:dev:ow:10e2073a01080063:","bt":1.320067464e9,"bu":"%RH","v":20},
            {"u":"lon","n":"lon","v":24.30621},
            {"u":"lat","n":"lat","v":60.07965},
            {"n":"temp","u":"Cel","t":60,"v":23.1},
            {"n":"temp","u":"Cel","t":120,"v":23.5}
        ]"#);
        let e = d.unwrap_err();
        // The first record has no name: bn alone does not split into device and metric.
        assert_eq!(e.reason, RejectReason::BadSenml, "{e}");

        let d = dec(r#"[
            {"bn":"urn:dev:ow:10e2073a01080063:","bt":1.320067464e9,"n":"humidity","bu":"%RH","v":20},
            {"u":"lon","n":"lon","v":24.30621},
            {"n":"temp","u":"Cel","t":60,"v":23.1},
            {"n":"temp","u":"Cel","t":120,"v":23.5}
        ]"#)
        .unwrap();
        let t0 = 1_320_067_464_000;
        assert_eq!(d.readings.len(), 3);
        let r = &d.readings[0];
        assert_eq!(r.device_id, "urn:dev:ow:10e2073a01080063");
        assert_eq!(r.ts, Timestamp::from_millis(t0));
        assert_eq!(
            r.metrics,
            vec![("humidity".into(), 20.0), ("lon".into(), 24.30621)]
        );
        assert_eq!(d.readings[1].ts, Timestamp::from_millis(t0 + 60_000));
        assert_eq!(d.readings[1].metrics, vec![("temp".into(), 23.1)]);
        assert_eq!(d.readings[2].ts, Timestamp::from_millis(t0 + 120_000));
    }

    #[test]
    fn times_below_2_pow_28_are_relative_to_the_receipt() {
        let d = dec(
            r#"[{"bn":"dev-1:","n":"a","v":1},{"n":"a","t":-5,"v":2},{"n":"b","t":-5.5,"v":3}]"#,
        )
        .unwrap();
        let ts: Vec<i64> = d.readings.iter().map(|r| r.ts.as_millis()).collect();
        assert_eq!(ts, vec![NOW, NOW - 5_000, NOW - 5_500]);
        // A base time in the relative range moves the records too.
        let d = dec(r#"[{"bn":"dev-1:","bt":-60,"n":"a","v":1,"t":10}]"#).unwrap();
        assert_eq!(d.readings[0].ts, Timestamp::from_millis(NOW - 50_000));
    }

    #[test]
    fn base_value_and_base_sum_add_and_booleans_count_as_numbers() {
        let d = dec(r#"[
            {"bn":"meter-9/","bt":1.7e9,"bv":100,"n":"level","v":5},
            {"n":"level2","v":-1.5},
            {"n":"on","vb":true},
            {"bs":1000,"n":"energy","s":2.5},
            {"n":"base_only"}
        ]"#)
        .unwrap();
        assert_eq!(d.readings.len(), 1);
        let r = &d.readings[0];
        assert_eq!(r.device_id, "meter-9");
        assert_eq!(r.ts, Timestamp::from_millis(1_700_000_000_000));
        assert_eq!(
            r.metrics,
            vec![
                ("level".into(), 105.0),
                ("level2".into(), 98.5),
                ("on".into(), 1.0),
                ("energy".into(), 1002.5),
                ("base_only".into(), 100.0),
            ]
        );
    }

    #[test]
    fn string_and_data_values_are_skipped_and_counted() {
        let d = dec(
            r#"[{"bn":"dev-2:","n":"fw","vs":"1.2.3"},{"n":"blob","vd":"aGk"},{"n":"t","v":4}]"#,
        )
        .unwrap();
        assert_eq!(d.not_numeric, 2);
        assert_eq!(d.readings[0].metrics, vec![("t".into(), 4.0)]);
        // Only strings: nothing to apply, not an error.
        let d = dec(r#"[{"bn":"dev-2:","n":"fw","vs":"1.2.3"}]"#).unwrap();
        assert!(d.readings.is_empty());
    }

    #[test]
    fn names_without_a_base_name_split_at_the_last_separator() {
        let d = dec(
            r#"[{"n":"urn:dev:mac:0024befffe804ff1:temp","v":21},{"n":"pump-4/rpm","v":1400}]"#,
        )
        .unwrap();
        let ids: Vec<&str> = d.readings.iter().map(|r| r.device_id.as_str()).collect();
        assert_eq!(ids, vec!["urn:dev:mac:0024befffe804ff1", "pump-4"]);
        assert_eq!(d.readings[1].metrics, vec![("rpm".into(), 1400.0)]);
    }

    #[test]
    fn the_device_id_can_come_from_the_topic() {
        let cfg = Config {
            device_id: DeviceIdFrom::Topic,
            device_id_level: 1,
            ..Config::default()
        };
        let d = decode(
            br#"[{"bn":"urn:dev:x:","n":"temp","v":3}]"#,
            "senml/boiler-7",
            &cfg,
            NOW,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(d.readings[0].device_id, "boiler-7");
        assert_eq!(d.readings[0].metrics, vec![("urn:dev:x:temp".into(), 3.0)]);
        let e = decode(
            br#"[{"n":"a","v":1}]"#,
            "senml",
            &cfg,
            NOW,
            &Limits::default(),
        );
        assert_eq!(e.unwrap_err().reason, RejectReason::BadDeviceId);
    }

    #[test]
    fn malformed_packs_are_rejected_with_a_reason() {
        let reason = |p: &str| dec(p).unwrap_err().reason;
        assert_eq!(reason("not json"), RejectReason::InvalidJson);
        assert_eq!(reason(r#"{"n":"a","v":1}"#), RejectReason::BadSenml);
        assert_eq!(reason("[]"), RejectReason::NoMetrics);
        assert_eq!(reason(r#"[1]"#), RejectReason::BadSenml);
        assert_eq!(
            reason(r#"[{"bn":"d:","n":"a","v":"1"}]"#),
            RejectReason::BadSenml
        );
        assert_eq!(
            reason(r#"[{"bn":"d:","n":"a b","v":1}]"#),
            RejectReason::BadSenml
        );
        assert_eq!(reason(r#"[{"bn":"d:","n":"a"}]"#), RejectReason::BadSenml);
        assert_eq!(
            reason(r#"[{"bn":"d:","n":"a","v":1,"crit_":1}]"#),
            RejectReason::BadSenml
        );
        assert_eq!(
            reason(r#"[{"bn":"d:","n":"a","v":1e308,"bv":1e308}]"#),
            RejectReason::NonFiniteValue
        );
        assert_eq!(
            reason(r#"[{"bn":"d:","n":"a","v":1,"t":1e300}]"#),
            RejectReason::BadTimestamp
        );
        assert_eq!(
            reason(r#"[{"bn":"a/b:","n":"x","v":1}]"#),
            RejectReason::BadDeviceId
        );
        // Unknown labels that are not must-understand are ignored.
        assert!(dec(r#"[{"bn":"d:","n":"a","v":1,"extra":{"x":1}}]"#).is_ok());
        assert_eq!(
            decode(
                &[0xff, 0x00],
                "t",
                &Config::default(),
                NOW,
                &Limits::default()
            )
            .unwrap_err()
            .reason,
            RejectReason::NotUtf8
        );
    }

    #[test]
    fn topic_filters_are_checked() {
        let with = |t: &str| Config {
            topics: vec![t.to_string()],
            ..Config::default()
        };
        assert!(with("senml/+").validate().is_ok());
        assert!(with("senml/#").validate().is_ok());
        for bad in ["", "senml/#/x", "senml/a+", "se#nml"] {
            assert!(with(bad).validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cbor_packs_use_the_integer_labels() {
        use ciborium::Value as C;
        let pack = C::Array(vec![
            C::Map(vec![
                (
                    C::Integer((-2).into()),
                    C::Text("urn:dev:ow:10e2073a0108006:".into()),
                ),
                (C::Integer((-3).into()), C::Float(1.276020076001e9)),
                (C::Integer((-4).into()), C::Text("A".into())),
                (C::Integer(0.into()), C::Text("voltage".into())),
                (C::Integer(1.into()), C::Text("V".into())),
                (C::Integer(2.into()), C::Float(120.1)),
            ]),
            C::Map(vec![
                (C::Integer(0.into()), C::Text("current".into())),
                (C::Integer(6.into()), C::Integer((-5).into())),
                (C::Integer(2.into()), C::Float(1.2)),
            ]),
        ]);
        let mut bytes = Vec::new();
        ciborium::into_writer(&pack, &mut bytes).unwrap();
        let d = decode(
            &bytes,
            "senml/x",
            &Config::default(),
            NOW,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(d.readings.len(), 2);
        assert_eq!(d.readings[0].device_id, "urn:dev:ow:10e2073a0108006");
        assert_eq!(d.readings[0].ts, Timestamp::from_millis(1_276_020_076_001));
        assert_eq!(d.readings[0].metrics, vec![("voltage".into(), 120.1)]);
        assert_eq!(d.readings[1].ts, Timestamp::from_millis(1_276_020_071_001));
        assert_eq!(d.readings[1].metrics, vec![("current".into(), 1.2)]);
        // Truncated CBOR: rejected, not a panic.
        let e = decode(
            &bytes[..bytes.len() - 3],
            "senml/x",
            &Config::default(),
            NOW,
            &Limits::default(),
        );
        assert_eq!(e.unwrap_err().reason, RejectReason::BadSenml);
    }
}
