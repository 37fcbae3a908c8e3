//! Payload encoding: the contract's telemetry and event payloads from typed readings and
//! events — the inverse of [`super::decode`], which the round-trip property below holds it to.
//! Used by the simulator, replay, the demo and the tests that play devices.

use crate::domain::{DeviceEvent, Reading, Timestamp};
use std::io::Write;

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Rare: let serde_json do the escaping.
        let quoted = serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
        out.extend_from_slice(quoted.as_bytes());
    }
}

fn push_number(out: &mut Vec<u8>, x: f64) {
    if x.is_finite() {
        let _ = write!(out, "{x}");
    } else {
        // Not representable in JSON: a reading never holds one (the decoder refuses them).
        out.extend_from_slice(b"null");
    }
}

/// A telemetry payload from its parts (what [`to_payload`] writes for a whole reading).
pub fn telemetry_payload<'a>(
    ts: Timestamp,
    seq: Option<u64>,
    metrics: impl Iterator<Item = (&'a str, f64)>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"{\"ts\":\"");
    out.extend_from_slice(ts.format().as_bytes());
    out.push(b'"');
    if let Some(seq) = seq {
        let _ = write!(out, ",\"seq\":{seq}");
    }
    out.extend_from_slice(b",\"metrics\":{");
    for (i, (name, x)) in metrics.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_json_str(&mut out, name);
        out.push(b':');
        push_number(&mut out, x);
    }
    out.extend_from_slice(b"}}");
    out
}

/// A reading as the contract's telemetry payload: `{"ts": RFC 3339, "seq": n, "metrics": {…}}`.
pub fn to_payload(r: &Reading) -> Vec<u8> {
    telemetry_payload(r.ts, r.seq, r.metrics.iter().map(|(n, x)| (n.as_str(), *x)))
}

/// An event as the contract's event payload: `{"ts": RFC 3339, "kind": …, "code": …}`.
pub fn event_payload(e: &DeviceEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(80);
    out.extend_from_slice(b"{\"ts\":\"");
    out.extend_from_slice(e.ts.format().as_bytes());
    out.extend_from_slice(b"\",\"kind\":\"");
    out.extend_from_slice(e.kind.as_str().as_bytes());
    out.extend_from_slice(b"\",\"code\":");
    push_json_str(&mut out, &e.code);
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EventKind;
    use crate::ingest::decode::{decode_events, decode_telemetry, Limits};
    use proptest::prelude::*;

    fn reading() -> impl Strategy<Value = Reading> {
        (
            "[a-zA-Z0-9é_.-]{1,12}",
            -62_000_000_000_000i64..253_402_300_799_999,
            proptest::option::of(any::<u64>()),
            proptest::collection::vec(
                (
                    "[a-z\"\\\\ é\u{1}]{1,6}",
                    any::<f64>().prop_filter("finite", |v| v.is_finite()),
                ),
                1..6,
            ),
        )
            .prop_map(|(device_id, ts, seq, metrics)| Reading {
                device_id: crate::domain::DeviceId::try_from(device_id).unwrap(),
                ts: Timestamp::from_millis(ts),
                seq,
                metrics,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn an_encoded_reading_decodes_to_itself(r in reading()) {
            let back = decode_telemetry(&to_payload(&r), Some(&r.device_id), 0, &Limits::default());
            let back = back.map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(back.len(), 1);
            prop_assert_eq!(&back[0], &r);
            for ((_, a), (_, b)) in back[0].metrics.iter().zip(&r.metrics) {
                prop_assert_eq!(a.to_bits(), b.to_bits());
            }
        }

        #[test]
        fn an_encoded_event_decodes_to_itself(
            device_id in "[a-z0-9-]{1,12}",
            ts in -62_000_000_000_000i64..253_402_300_799_999,
            kind in prop_oneof![Just(EventKind::Failure), Just(EventKind::Maintenance), Just(EventKind::Error)],
            code in "[a-z0-9 \"\\\\é_]{1,20}",
        ) {
            let device_id = crate::domain::DeviceId::try_from(device_id).unwrap();
            let e = DeviceEvent { device_id, ts: Timestamp::from_millis(ts), kind, code };
            let back = decode_events(&event_payload(&e), Some(&e.device_id), 0, &Limits::default())
                .map_err(|err| TestCaseError::fail(err.to_string()))?;
            prop_assert_eq!(back, vec![e]);
        }
    }
}
