//! The host state machine on payloads built here; `tests/sparkplug_pysparkplug.rs` checks the
//! same against a third-party edge node.

use super::*;

const T: i64 = 1_700_000_000_000;

fn host() -> Host {
    Host::new(Config::default(), Limits::default())
}

fn metric(name: &str, alias: Option<u64>, dt: DataType, value: Value) -> Metric {
    Metric {
        name: Some(name.to_string()),
        alias,
        datatype: Some(dt as u32),
        value: Some(value),
        ..Metric::default()
    }
}

/// A DATA metric by alias only, without its datatype (as edge nodes send them).
fn by_alias(alias: u64, value: Value) -> Metric {
    Metric {
        alias: Some(alias),
        value: Some(value),
        ..Metric::default()
    }
}

fn payload(seq: Option<u64>, ts: Option<u64>, metrics: Vec<Metric>) -> Vec<u8> {
    Payload {
        timestamp: ts,
        seq,
        metrics,
        ..Payload::default()
    }
    .encode_to_vec()
}

fn bd(n: u64) -> Metric {
    metric("bdSeq", None, DataType::Int64, Value::LongValue(n))
}

/// NBIRTH (seq 0, bdSeq 3) and DBIRTH (seq 1) of `plant/gw1/press`: aliases 1 = Temp (Double),
/// 2 = Offset (Int16), 3 = Running (Boolean), 4 = Label (String).
fn born(h: &mut Host) {
    let nb = payload(
        Some(0),
        Some(T as u64),
        vec![
            bd(3),
            metric(
                "Node Control/Rebirth",
                Some(100),
                DataType::Boolean,
                Value::BooleanValue(false),
            ),
            metric("Uptime", Some(50), DataType::UInt32, Value::IntValue(10)),
        ],
    );
    let o = h.handle("spBv1.0/plant/NBIRTH/gw1", &nb, T, T).unwrap();
    assert_eq!(o.reject, None);
    assert_eq!(o.readings.len(), 1);
    assert_eq!(o.readings[0].device_id, "plant.gw1");
    assert_eq!(o.readings[0].metrics, vec![("Uptime".into(), 10.0)]);
    let db = payload(
        Some(1),
        Some(T as u64),
        vec![
            metric("Temp", Some(1), DataType::Double, Value::DoubleValue(20.5)),
            metric(
                "Offset",
                Some(2),
                DataType::Int16,
                Value::IntValue(0xFFFF_FFFE),
            ),
            metric(
                "Running",
                Some(3),
                DataType::Boolean,
                Value::BooleanValue(true),
            ),
            metric(
                "Label",
                Some(4),
                DataType::String,
                Value::StringValue("A".into()),
            ),
        ],
    );
    let o = h
        .handle("spBv1.0/plant/DBIRTH/gw1/press", &db, T, T)
        .unwrap();
    assert_eq!(o.reject, None);
    assert_eq!(o.readings.len(), 1);
    assert_eq!(o.readings[0].device_id, "plant.gw1.press");
    assert_eq!(
        o.readings[0].metrics,
        vec![
            ("Temp".into(), 20.5),
            ("Offset".into(), -2.0),
            ("Running".into(), 1.0)
        ]
    );
    assert_eq!(o.skipped, vec![(Skip::NotNumeric, 1)]);
}

#[test]
fn data_by_alias_becomes_readings_of_the_device_with_birth_datatypes() {
    let mut h = host();
    born(&mut h);
    let dd = payload(
        Some(2),
        Some(T as u64 + 1000),
        vec![
            by_alias(1, Value::DoubleValue(21.25)),
            // Int16 -3, sign-extended to 32 bits by this encoder.
            by_alias(2, Value::IntValue((-3i32) as u32)),
            by_alias(3, Value::BooleanValue(false)),
        ],
    );
    let o = h
        .handle("spBv1.0/plant/DDATA/gw1/press", &dd, T + 5, T + 5)
        .unwrap();
    assert_eq!(o.reject, None);
    assert_eq!(o.gap, None);
    assert_eq!(o.rebirth, None);
    assert_eq!(
        o.readings,
        vec![Reading {
            device_id: crate::domain::DeviceId::parse("plant.gw1.press").unwrap(),
            ts: Timestamp::from_millis(T + 1000),
            seq: None,
            metrics: vec![
                ("Temp".into(), 21.25),
                ("Offset".into(), -3.0),
                ("Running".into(), 0.0)
            ],
        }]
    );
}

#[test]
fn metric_timestamps_split_a_message_into_readings() {
    let mut h = host();
    born(&mut h);
    let mut a = by_alias(1, Value::DoubleValue(1.0));
    a.timestamp = Some(T as u64 + 10);
    let mut b = by_alias(1, Value::DoubleValue(2.0));
    b.timestamp = Some(T as u64 + 20);
    let c = by_alias(2, Value::IntValue(5));
    let o = h
        .handle(
            "spBv1.0/plant/DDATA/gw1/press",
            &payload(Some(2), None, vec![a, b, c]),
            T + 99,
            T,
        )
        .unwrap();
    let got: Vec<(i64, usize)> = o
        .readings
        .iter()
        .map(|r| (r.ts.as_millis(), r.metrics.len()))
        .collect();
    // No payload timestamp: the metric without one is stamped with the receipt.
    assert_eq!(got, vec![(T + 10, 1), (T + 20, 1), (T + 99, 1)]);
}

#[test]
fn a_seq_jump_is_a_gap_that_asks_for_a_rebirth_and_the_counter_wraps() {
    let mut h = host();
    born(&mut h);
    let dd = |seq| payload(Some(seq), None, vec![by_alias(1, Value::DoubleValue(1.0))]);
    let topic = "spBv1.0/plant/DDATA/gw1/press";
    // 1 → 5: seq 2, 3 and 4 never arrived.
    let o = h.handle(topic, &dd(5), T, T).unwrap();
    assert_eq!(
        o.gap,
        Some(SeqGap {
            node_id: "plant.gw1".into(),
            prev: 1,
            seq: 5,
            missing: 3
        })
    );
    assert_eq!(o.readings.len(), 1, "the data after a gap is still applied");
    let r = o.rebirth.expect("a rebirth request");
    assert_eq!(r.topic, "spBv1.0/plant/NCMD/gw1");
    assert_eq!(r.reason, RebirthReason::SeqGap);
    // Up to 255 and over to 0 without a gap.
    for seq in 6..=255 {
        assert_eq!(h.handle(topic, &dd(seq), T, T).unwrap().gap, None, "{seq}");
    }
    let o = h.handle(topic, &dd(0), T, T).unwrap();
    assert_eq!(o.gap, None);
    assert_eq!(h.node("plant", "gw1").unwrap().last_seq, Some(0));
    // 0 → 2 across nothing else: one missing.
    assert_eq!(
        h.handle(topic, &dd(2), T, T)
            .unwrap()
            .gap
            .map(|g| g.missing),
        Some(1)
    );
}

#[test]
fn a_repeated_seq_is_a_redelivery_not_a_gap() {
    let mut h = host();
    born(&mut h);
    let dd = |seq| payload(Some(seq), None, vec![by_alias(1, Value::DoubleValue(1.0))]);
    let topic = "spBv1.0/plant/DDATA/gw1/press";
    assert_eq!(h.handle(topic, &dd(2), T, T).unwrap().gap, None);
    assert_eq!(h.handle(topic, &dd(3), T, T).unwrap().gap, None);
    let again = h.handle(topic, &dd(2), T, T).unwrap();
    assert_eq!(again.gap, None);
    assert_eq!(again.rebirth, None);
    assert_eq!(
        again.readings.len(),
        1,
        "handed on; the engine drops it by timestamp"
    );
    assert_eq!(h.node("plant", "gw1").unwrap().last_seq, Some(3));
}

#[test]
fn data_before_any_birth_is_rejected_and_asks_for_a_rebirth_at_most_once_per_interval() {
    let mut h = host();
    let dd = payload(Some(7), None, vec![by_alias(1, Value::DoubleValue(1.0))]);
    let o = h
        .handle("spBv1.0/plant/DDATA/gw9/press", &dd, T, T)
        .unwrap();
    assert_eq!(
        o.reject.as_ref().map(|r| r.reason),
        Some(RejectReason::NoBirth)
    );
    assert!(o.readings.is_empty());
    let r = o.rebirth.expect("a rebirth request");
    assert_eq!(r.topic, "spBv1.0/plant/NCMD/gw9");
    assert_eq!(r.reason, RebirthReason::NoBirth);
    let decoded = Payload::decode(r.payload.as_slice()).unwrap();
    assert_eq!(decoded.metrics.len(), 1);
    assert_eq!(decoded.metrics[0].name.as_deref(), Some(REBIRTH_METRIC));
    assert_eq!(decoded.metrics[0].value, Some(Value::BooleanValue(true)));
    assert_eq!(decoded.metrics[0].datatype, Some(DataType::Boolean as u32));
    // The next one within rebirth_interval (10 s) is not asked again; after it, it is.
    let again = |h: &mut Host, now| {
        h.handle(
            "spBv1.0/plant/NDATA/gw9",
            &payload(Some(8), None, vec![]),
            T,
            now,
        )
        .unwrap()
    };
    let o = again(&mut h, T + 9_999);
    assert_eq!(o.reject.map(|r| r.reason), Some(RejectReason::NoBirth));
    assert_eq!(o.rebirth, None);
    assert!(again(&mut h, T + 10_000).rebirth.is_some());
    // Rebirth requests off: rejected all the same, nothing to publish.
    let mut quiet = Host::new(
        Config {
            rebirth: false,
            ..Config::default()
        },
        Limits::default(),
    );
    let o = quiet.handle("spBv1.0/plant/NDATA/gw9", &dd, T, T).unwrap();
    assert_eq!(o.reject.map(|r| r.reason), Some(RejectReason::NoBirth));
    assert_eq!(o.rebirth, None);
}

#[test]
fn an_unknown_alias_is_skipped_and_asks_for_a_rebirth() {
    let mut h = host();
    born(&mut h);
    let dd = payload(
        Some(2),
        None,
        vec![
            by_alias(1, Value::DoubleValue(3.0)),
            by_alias(77, Value::DoubleValue(9.0)),
        ],
    );
    let o = h
        .handle("spBv1.0/plant/DDATA/gw1/press", &dd, T, T)
        .unwrap();
    assert_eq!(o.reject, None);
    assert_eq!(o.readings[0].metrics, vec![("Temp".into(), 3.0)]);
    assert_eq!(o.skipped, vec![(Skip::UnknownAlias, 1)]);
    assert_eq!(
        o.rebirth.map(|r| r.reason),
        Some(RebirthReason::UnknownAlias)
    );
}

#[test]
fn deaths_are_error_events_and_a_stale_ndeath_is_ignored() {
    let mut h = host();
    born(&mut h);
    let dd = payload(Some(2), Some(T as u64 + 50), vec![]);
    let o = h
        .handle("spBv1.0/plant/DDEATH/gw1/press", &dd, T + 60, T)
        .unwrap();
    assert_eq!(
        o.events,
        vec![DeviceEvent {
            device_id: crate::domain::DeviceId::parse("plant.gw1.press").unwrap(),
            ts: Timestamp::from_millis(T + 50),
            kind: EventKind::Error,
            code: DDEATH_CODE.into(),
        }]
    );
    // DDATA of a dead device: it must be born again.
    let o = h
        .handle(
            "spBv1.0/plant/DDATA/gw1/press",
            &payload(Some(3), None, vec![by_alias(1, Value::DoubleValue(1.0))]),
            T,
            T,
        )
        .unwrap();
    assert_eq!(o.reject.map(|r| r.reason), Some(RejectReason::NoBirth));

    // An NDEATH from an older session (bdSeq 2, the NBIRTH said 3) changes nothing.
    let mut h = host();
    born(&mut h);
    let stale = payload(None, None, vec![bd(2)]);
    let o = h
        .handle("spBv1.0/plant/NDEATH/gw1", &stale, T + 70, T)
        .unwrap();
    assert!(o.events.is_empty());
    assert!(h.node("plant", "gw1").unwrap().online);
    // The right one: the node and its online device die, at the time of receipt.
    let o = h
        .handle(
            "spBv1.0/plant/NDEATH/gw1",
            &payload(None, Some(1), vec![bd(3)]),
            T + 80,
            T,
        )
        .unwrap();
    let got: Vec<(&str, i64, &str)> = o
        .events
        .iter()
        .map(|e| (e.device_id.as_str(), e.ts.as_millis(), e.code.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("plant.gw1", T + 80, NDEATH_CODE),
            ("plant.gw1.press", T + 80, NDEATH_CODE)
        ]
    );
    assert!(!h.node("plant", "gw1").unwrap().online);
    let o = h
        .handle(
            "spBv1.0/plant/NDATA/gw1",
            &payload(Some(4), None, vec![]),
            T,
            T,
        )
        .unwrap();
    assert_eq!(o.reject.map(|r| r.reason), Some(RejectReason::NoBirth));
}

#[test]
fn bad_messages_are_rejected_with_a_reason_and_other_topics_left_alone() {
    let mut h = host();
    let reason = |h: &mut Host, topic: &str, p: &[u8]| {
        h.handle(topic, p, T, T).unwrap().reject.map(|r| r.reason)
    };
    assert_eq!(
        reason(&mut h, "spBv1.0/plant/NBIRTH/gw1", &[0xff, 0xff, 0xff]),
        Some(RejectReason::InvalidProtobuf)
    );
    assert_eq!(
        reason(
            &mut h,
            "spBv1.0/plant/NBIRTH/gw1",
            &payload(Some(300), None, vec![])
        ),
        Some(RejectReason::BadSparkplug)
    );
    assert_eq!(
        reason(
            &mut h,
            "spBv1.0/plant/DDATA/gw1",
            &payload(Some(1), None, vec![])
        ),
        Some(RejectReason::BadSparkplug)
    );
    assert_eq!(
        reason(
            &mut h,
            "spBv1.0/plant/NDATA/gw1/extra",
            &payload(Some(1), None, vec![])
        ),
        Some(RejectReason::BadSparkplug)
    );
    assert_eq!(
        reason(
            &mut h,
            "spBv1.0/plant/NBIRTH/gw 1",
            &payload(Some(0), None, vec![])
        ),
        Some(RejectReason::BadDeviceId)
    );
    let big = vec![0u8; Limits::default().max_payload_bytes + 1];
    assert_eq!(
        reason(&mut h, "spBv1.0/plant/NBIRTH/gw1", &big),
        Some(RejectReason::TooLarge)
    );
    // Not Sparkplug at all; a host's STATE and the commands this host sends: nothing to do.
    assert!(h.handle("devices/x/telemetry", b"{}", T, T).is_none());
    for topic in ["spBv1.0/STATE/forewarn", "spBv1.0/plant/NCMD/gw1"] {
        let o = h.handle(topic, b"\x00junk", T, T).unwrap();
        assert_eq!(o.reject, None, "{topic}");
        assert!(o.readings.is_empty() && o.events.is_empty());
    }
}

#[test]
fn nulls_nans_and_controls_are_not_readings() {
    let mut h = host();
    let mut null = metric("Pressure", None, DataType::Float, Value::FloatValue(1.0));
    null.is_null = Some(true);
    let nb = payload(
        Some(0),
        Some(T as u64),
        vec![
            bd(1),
            null,
            metric("Flow", None, DataType::Float, Value::FloatValue(f32::NAN)),
            metric("Level", None, DataType::Int8, Value::IntValue(0xFF)),
            metric("Count", None, DataType::UInt64, Value::LongValue(1 << 40)),
            metric(
                "Delta",
                None,
                DataType::Int64,
                Value::LongValue(-7i64 as u64),
            ),
            metric("When", None, DataType::DateTime, Value::LongValue(T as u64)),
        ],
    );
    let o = h.handle("spBv1.0/plant/NBIRTH/gw1", &nb, T, T).unwrap();
    assert_eq!(
        o.readings[0].metrics,
        vec![
            ("Level".into(), -1.0),
            ("Count".into(), (1u64 << 40) as f64),
            ("Delta".into(), -7.0)
        ]
    );
    let mut skipped = o.skipped.clone();
    skipped.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(
        skipped,
        vec![
            (Skip::Control, 1),
            (Skip::NotFinite, 1),
            (Skip::NotNumeric, 1),
            (Skip::Null, 1)
        ]
    );
}

#[test]
fn templates_are_checked() {
    let ok = Config::default();
    assert!(ok.validate().is_ok());
    for (dev, node) in [
        ("{group}.{edge}", "{group}.{edge}"),
        ("{group}.{edge}.{device}", "{group}"),
        ("{edge}.{device}.{site}", "{edge}"),
        ("{edge}.{device", "{edge}"),
        ("{edge}-{device}", "{edge}-{device}"),
    ] {
        let c = Config {
            device_id_template: dev.into(),
            node_id_template: node.into(),
            ..Config::default()
        };
        assert!(c.validate().is_err(), "{dev} / {node}");
    }
    let c = Config {
        enabled: true,
        groups: vec!["plant".into(), "yard".into()],
        ..Config::default()
    };
    assert_eq!(
        c.subscriptions(),
        vec!["spBv1.0/plant/#".to_string(), "spBv1.0/yard/#".to_string()]
    );
    assert!(Config::default().subscriptions().is_empty());
}

#[test]
fn births_and_seq_survive_a_restart_through_the_stored_state() {
    let mut h = host();
    born(&mut h);
    let changed = h.take_changed();
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].key(), "sparkplug/plant/gw1");
    assert!(h.take_changed().is_empty(), "taken once");
    // What the store writes and reads back (JSON).
    let json = serde_json::to_string(&changed).unwrap();
    let back: Vec<StoredNode> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, changed);

    let mut after = host();
    after.restore(back);
    let dd = payload(Some(2), None, vec![by_alias(1, Value::DoubleValue(5.0))]);
    let o = after
        .handle("spBv1.0/plant/DDATA/gw1/press", &dd, T, T)
        .unwrap();
    assert_eq!(o.reject, None);
    assert_eq!(o.gap, None);
    assert_eq!(o.rebirth, None);
    assert_eq!(o.readings[0].metrics, vec![("Temp".into(), 5.0)]);
    assert_eq!(after.take_changed().len(), 1);
}

#[test]
fn a_reading_over_max_metrics_is_rejected_but_the_birth_aliases_are_kept() {
    let mut h = Host::new(
        Config {
            max_metrics: 2,
            ..Config::default()
        },
        Limits::default(),
    );
    let nb = payload(
        Some(0),
        Some(T as u64),
        (1..=3)
            .map(|i| {
                metric(
                    &format!("m{i}"),
                    Some(i),
                    DataType::Double,
                    Value::DoubleValue(1.0),
                )
            })
            .collect(),
    );
    let o = h.handle("spBv1.0/plant/NBIRTH/gw1", &nb, T, T).unwrap();
    let r = o.reject.expect("rejected");
    assert_eq!(r.reason, RejectReason::TooLarge);
    assert!(r.detail.contains("ingest.sparkplug.max_metrics"), "{r}");
    assert!(o.readings.is_empty());
    let nd = payload(Some(1), None, vec![by_alias(3, Value::DoubleValue(2.0))]);
    let o = h.handle("spBv1.0/plant/NDATA/gw1", &nd, T, T).unwrap();
    assert_eq!(o.reject, None);
    assert_eq!(o.readings[0].metrics, vec![("m3".into(), 2.0)]);
}

#[test]
fn an_edge_node_unseen_past_the_cutoff_is_forgotten_with_its_devices() {
    let mut h = host();
    born(&mut h);
    // A node stored before `last_seen_ms` was kept reads back without it, and is kept.
    let json = r#"{"group":"old","edge":"gw0","node":{"online":true,"bd_seq":1,"last_seq":4,"table":{"aliases":{},"types":{}},"devices":{}}}"#;
    let old: StoredNode = serde_json::from_str(json).unwrap();
    assert_eq!(old.node.last_seen_ms, None);
    h.restore(vec![old]);
    let later = T + 3_600_000;
    let dd = payload(
        Some(2),
        Some(later as u64),
        vec![by_alias(1, Value::DoubleValue(5.0))],
    );
    h.handle("spBv1.0/plant/DDATA/gw1/press", &dd, later, later)
        .unwrap();
    assert_eq!(
        h.node("plant", "gw1").and_then(|n| n.last_seen_ms),
        Some(later),
        "the newest message's time, the device's included"
    );
    assert!(
        h.forget_unseen(later).is_empty(),
        "seen at the cutoff: kept"
    );
    assert!(h.node("old", "gw0").is_some(), "no time known: kept");
    h.take_changed();
    assert_eq!(h.forget_unseen(later + 1), vec!["sparkplug/plant/gw1"]);
    assert!(h.node("plant", "gw1").is_none());
    assert!(h.take_changed().is_empty(), "nothing left to write for it");
    // Its device must be born again: data now is data before any birth.
    let o = h
        .handle("spBv1.0/plant/DDATA/gw1/press", &dd, later, later)
        .unwrap();
    assert!(o.reject.is_some());
}
