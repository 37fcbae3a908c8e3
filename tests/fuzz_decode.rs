//! Property tests of the payload decoders with a fixed budget (a few seconds): arbitrary bytes and
//! near-valid JSON never panic, are rejected with a reason, or decode to readings whose values are
//! finite and whose device ids are usable.

mod support;

use forewarn::domain::{validate_device_id, EventKind, Reading};
use forewarn::ingest::decode::{decode_events, decode_telemetry, Limits};
use proptest::prelude::*;
use support::decoders::{check_accepted, limits};

/// A reading's metrics, in payload order.
type Metrics = Vec<(String, f64)>;

/// What every accepted batch must satisfy: 1 to `max_batch` readings, each acceptable.
fn check_readings(rs: &[Reading], l: &Limits) {
    assert!(!rs.is_empty() && rs.len() <= l.max_batch);
    check_accepted(rs, l);
}

/// A JSON string literal of `s`.
fn lit(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A timestamp field: mostly valid, sometimes not.
fn ts_json() -> impl Strategy<Value = (String, bool)> {
    prop_oneof![
        4 => (0i64..4_000_000_000_000).prop_map(|ms| (ms.to_string(), true)),
        4 => (0i64..4_000_000_000).prop_map(|s| {
            let t = chrono::DateTime::from_timestamp(s, 0).unwrap();
            (lit(&t.to_rfc3339()), true)
        }),
        1 => "[a-z0-9: -]{0,12}".prop_map(|s| (lit(&s), false)),
        1 => Just(("1.5".to_string(), false)),
        1 => Just(("null".to_string(), false)),
        1 => Just(("{}".to_string(), false)),
    ]
}

/// A metric value: a finite number (valid) or something that is not.
fn value_json() -> impl Strategy<Value = (String, Option<f64>)> {
    prop_oneof![
        6 => any::<f64>().prop_filter("finite", |v| v.is_finite()).prop_map(|v| (format!("{v:?}"), Some(v))),
        3 => (-1_000_000i64..1_000_000).prop_map(|v| (v.to_string(), Some(v as f64))),
        1 => Just(("1e999".to_string(), None)),
        1 => Just(("NaN".to_string(), None)),
        1 => Just(("\"12\"".to_string(), None)),
        1 => Just(("null".to_string(), None)),
        1 => Just(("[1]".to_string(), None)),
        1 => Just(("true".to_string(), None)),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z_]{1,10}",
        1 => ".{0,6}",
    ]
}

/// One reading object and whether it is valid, with its expected metrics when it is.
fn reading_json() -> impl Strategy<Value = (String, Option<Vec<(String, f64)>>)> {
    (
        proptest::option::of(ts_json()),
        proptest::option::of(any::<u64>()),
        proptest::collection::vec((name(), value_json()), 0..6),
    )
        .prop_map(|(ts, seq, metrics)| {
            let mut fields = Vec::new();
            let mut valid = true;
            if let Some((t, ok)) = ts {
                fields.push(format!("\"ts\":{t}"));
                valid &= ok;
            }
            if let Some(s) = seq {
                fields.push(format!("\"seq\":{s}"));
            }
            let mut names = std::collections::HashSet::new();
            let mut expected = Vec::new();
            let body: Vec<String> = metrics
                .iter()
                .map(|(n, (text, v))| {
                    match v {
                        Some(v) => expected.push((n.clone(), *v)),
                        None => valid = false,
                    }
                    if !names.insert(n.clone()) {
                        // Duplicate names: what wins is the decoder's business, not this test's.
                        valid = false;
                    }
                    format!("{}:{text}", lit(n))
                })
                .collect();
            if metrics.is_empty() {
                valid = false;
            }
            fields.push(format!("\"metrics\":{{{}}}", body.join(",")));
            let text = format!("{{{}}}", fields.join(","));
            (text, valid.then_some(expected))
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_and_accepted_readings_are_sound(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        topic in proptest::option::of(".{0,8}"),
    ) {
        let l = limits();
        if let Ok(rs) = decode_telemetry(&bytes, topic.as_deref(), 0, &l) {
            check_readings(&rs, &l);
        }
        if let Ok(evs) = decode_events(&bytes, topic.as_deref(), 0, &l) {
            for e in evs {
                prop_assert!(validate_device_id(&e.device_id).is_ok());
                prop_assert!(e.kind == EventKind::Error || !e.code.is_empty());
            }
        }
    }

    #[test]
    fn near_valid_readings_decode_exactly_or_are_rejected_with_a_reason(
        items in proptest::collection::vec(reading_json(), 1..4),
        batch in any::<bool>(),
        device in prop_oneof![4 => "[a-z0-9-]{1,12}", 1 => ".{0,6}"],
    ) {
        let l = limits();
        let (text, expected): (String, Option<Vec<Metrics>>) = if batch || items.len() > 1 {
            let t = format!("[{}]", items.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>().join(","));
            (t, items.iter().map(|(_, e)| e.clone()).collect())
        } else {
            (items[0].0.clone(), items[0].1.clone().map(|e| vec![e]))
        };
        let device_ok = validate_device_id(&device).is_ok();
        match decode_telemetry(text.as_bytes(), Some(&device), 7, &l) {
            Ok(rs) => {
                check_readings(&rs, &l);
                prop_assert!(device_ok);
                // Whatever is accepted is exactly what was sent.
                if let Some(exp) = expected {
                    let got: Vec<Metrics> = rs.into_iter().map(|r| r.metrics).collect();
                    prop_assert_eq!(got, exp);
                }
            }
            Err(e) => {
                prop_assert!(!e.reason.as_str().is_empty());
                // A fully valid payload for a usable device is never refused.
                prop_assert!(expected.is_none() || !device_ok, "refused valid {text}: {e}");
            }
        }
    }

    #[test]
    fn mutated_valid_payloads_never_panic(
        (text, _) in reading_json(),
        cut in any::<prop::sample::Index>(),
        pos in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let l = limits();
        let mut b = text.into_bytes();
        let p = pos.index(b.len());
        b[p] = byte;
        let c = cut.index(b.len() + 1);
        for payload in [&b[..], &b[..c]] {
            if let Ok(rs) = decode_telemetry(payload, Some("d-1"), 0, &l) {
                check_readings(&rs, &l);
            }
        }
    }

    #[test]
    fn event_payloads_decode_or_are_rejected(
        kind in prop_oneof![Just("failure".to_string()), Just("maintenance".to_string()), Just("error".to_string()), "[a-z]{0,8}"],
        code in proptest::option::of(".{0,10}"),
        ts in proptest::option::of(ts_json()),
    ) {
        let mut fields = vec![format!("\"kind\":{}", lit(&kind))];
        if let Some(c) = &code {
            fields.push(format!("\"code\":{}", lit(c)));
        }
        if let Some((t, _)) = &ts {
            fields.push(format!("\"ts\":{t}"));
        }
        let text = format!("{{{}}}", fields.join(","));
        match decode_events(text.as_bytes(), Some("d-1"), 0, &limits()) {
            Ok(evs) => {
                prop_assert_eq!(evs.len(), 1);
                prop_assert_eq!(evs[0].kind.as_str(), &kind[..]);
                prop_assert!(evs[0].kind == EventKind::Error || !evs[0].code.is_empty());
                prop_assert!(!evs[0].code.chars().any(|c| c.is_control()));
            }
            Err(e) => prop_assert!(!e.detail.is_empty() || !e.reason.as_str().is_empty()),
        }
    }
}
