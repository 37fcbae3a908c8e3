//! Property tests of the Sparkplug B host and the SenML decoder with a fixed budget: arbitrary
//! bytes, truncated and mutated valid payloads never panic; what they accept has finite values,
//! usable device ids and at most the limit of metrics per reading.

mod support;

use forewarn::domain::validate_device_id;
use forewarn::ingest::senml;
use forewarn::ingest::sparkplug::payload::payload::{metric::Value, Metric};
use forewarn::ingest::sparkplug::payload::Payload;
use forewarn::ingest::sparkplug::{Config, Host};
use proptest::prelude::*;
use prost::Message as _;
use support::decoders::{check_accepted as check, limits};

fn topic() -> impl Strategy<Value = String> {
    let kind = prop::sample::select(vec![
        "NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH", "NCMD", "STATE", "X",
    ]);
    let id = prop_oneof![4 => "[a-z0-9]{1,4}", 1 => "[a-z /+#é]{0,4}"];
    (kind, id.clone(), id.clone(), proptest::option::of(id)).prop_map(|(k, g, e, d)| match d {
        Some(d) => format!("spBv1.0/{g}/{k}/{e}/{d}"),
        None => format!("spBv1.0/{g}/{k}/{e}"),
    })
}

fn metric() -> impl Strategy<Value = Metric> {
    let value = prop_oneof![
        any::<u32>().prop_map(Value::IntValue),
        any::<u64>().prop_map(Value::LongValue),
        any::<f32>().prop_map(Value::FloatValue),
        any::<f64>().prop_map(Value::DoubleValue),
        any::<bool>().prop_map(Value::BooleanValue),
        "[a-z]{0,3}".prop_map(Value::StringValue),
    ];
    (
        proptest::option::of("[a-zA-Z/ ]{0,6}"),
        proptest::option::of(0u64..6),
        proptest::option::of(any::<u64>()),
        proptest::option::of(0u32..40),
        proptest::option::of(value),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(
            |(name, alias, timestamp, datatype, value, is_null)| Metric {
                name,
                alias,
                timestamp,
                datatype,
                value,
                is_null,
                ..Metric::default()
            },
        )
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::option::of(0u64..300),
        proptest::option::of(any::<u64>()),
        proptest::collection::vec(metric(), 0..24),
    )
        .prop_map(|(seq, timestamp, metrics)| {
            Payload {
                seq,
                timestamp,
                metrics,
                ..Payload::default()
            }
            .encode_to_vec()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn sparkplug_messages_never_panic_and_accepted_ones_are_usable(
        msgs in proptest::collection::vec((topic(), payload(), any::<bool>(), any::<prop::sample::Index>(), any::<u8>()), 1..12),
    ) {
        let l = limits();
        let cfg = Config { max_metrics: l.max_metrics, ..Config::default() };
        let mut host = Host::new(cfg, l);
        for (i, (t, mut p, mutate, at, byte)) in msgs.into_iter().enumerate() {
            if mutate && !p.is_empty() {
                let k = at.index(p.len());
                p[k] = byte;
                p.truncate(k + 1 + (byte as usize % 4));
            }
            if let Some(o) = host.handle(&t, &p, 1_000, i as i64 * 1_000) {
                if o.reject.is_some() {
                    prop_assert!(o.readings.is_empty() && o.events.is_empty());
                }
                check(&o.readings, &l);
                for e in &o.events {
                    prop_assert!(validate_device_id(&e.device_id).is_ok());
                }
            }
        }
    }

    #[test]
    fn arbitrary_bytes_are_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), t in topic()) {
        let l = limits();
        let mut host = Host::new(Config::default(), l);
        let _ = host.handle(&t, &bytes, 0, 0);
        let cfg = senml::Config::default();
        if let Ok(d) = senml::decode(&bytes, "senml/x", &cfg, 0, &l) {
            check(&d.readings, &l);
        }
    }

    #[test]
    fn near_valid_senml_packs_never_panic(
        records in proptest::collection::vec(
            proptest::collection::vec((
                prop::sample::select(vec!["bn", "bt", "bu", "bv", "bs", "n", "u", "v", "vs", "vb", "vd", "s", "t", "ut", "bver", "x_", "y"]),
                prop_oneof![
                    "[a-z:/.]{0,6}".prop_map(serde_json::Value::String),
                    any::<f64>().prop_filter("finite", |v| v.is_finite()).prop_map(|v| serde_json::json!(v)),
                    (-400_000_000i64..2_000_000_000).prop_map(|v| serde_json::json!(v)),
                    any::<bool>().prop_map(serde_json::Value::Bool),
                    Just(serde_json::Value::Null),
                ],
            ), 0..6),
            0..10,
        ),
        cbor in any::<bool>(),
    ) {
        let l = limits();
        let pack: Vec<serde_json::Map<String, serde_json::Value>> = records
            .into_iter()
            .map(|r| r.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            .collect();
        let bytes = if cbor {
            let mut b = Vec::new();
            ciborium::into_writer(&pack, &mut b).unwrap();
            b
        } else {
            serde_json::to_vec(&pack).unwrap()
        };
        for device_id in [senml::DeviceIdFrom::BaseName, senml::DeviceIdFrom::Topic] {
            let cfg = senml::Config { device_id, ..senml::Config::default() };
            if let Ok(d) = senml::decode(&bytes, "senml/dev-1", &cfg, 1_700_000_000_000, &l) {
                check(&d.readings, &l);
            }
        }
    }
}
