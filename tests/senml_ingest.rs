//! SenML packs (RFC 8428) through the in-process broker: JSON and CBOR packs become readings of
//! the device their base name names, through the same pipeline as JSON readings (a rising
//! temperature opens a ticket); what is not a number is counted; a malformed pack is rejected
//! with its reason and kept for inspection.
#![cfg(feature = "embedded-broker")]

mod support;

use support::daemon::*;
use support::poll::eventually;

const DEVICE: &str = "urn:dev:mac:0024befffe804ff1";

/// Six hours of one device in one pack: base name, base time (seconds since the epoch) and
/// per-record offsets, a string value among the numbers.
fn pack(first_hour: i64, temps: &[(i64, f64)]) -> String {
    let bt = (T0 + first_hour * HOUR) / 1000;
    let mut records = vec![serde_json::json!({
        "bn": format!("{DEVICE}:"), "bt": bt, "bu": "Cel", "n": "firmware", "vs": "4.2"
    })];
    for (h, t) in temps {
        records.push(serde_json::json!({"n": "temp", "t": (h - first_hour) * 3600, "v": t}));
        records.push(
            serde_json::json!({"n": "volt", "u": "V", "t": (h - first_hour) * 3600, "v": 170}),
        );
    }
    serde_json::Value::Array(records).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senml_packs_become_readings_of_their_base_name_and_open_a_ticket() {
    let b = broker();
    let dirs = Dirs::new();
    let mut cfg = config(&b.url(), &dirs, "fw-senml");
    cfg.ingest.senml.topics = vec!["senml/+".into()];
    let (h, tok) = start(cfg).await;
    ready(&h).await;
    let api = Api::new(&h);
    let dev = mqtt(&b, "senml-pub").await;

    let hours = degrading(36);
    for chunk in hours.chunks(6) {
        dev.publish("senml/gateway-1", pack(chunk[0].0, chunk))
            .await;
    }
    // A CBOR pack of another device (integer labels: -2 bn, -3 bt, 0 n, 2 v).
    use ciborium::Value as C;
    let cbor = C::Array(vec![C::Map(vec![
        (
            C::Integer((-2).into()),
            C::Text("urn:dev:ow:10e2073a0108006:".into()),
        ),
        (C::Integer((-3).into()), C::Integer((T0 / 1000).into())),
        (C::Integer(0.into()), C::Text("temp".into())),
        (C::Integer(2.into()), C::Float(21.5)),
    ])]);
    let mut bytes = Vec::new();
    ciborium::into_writer(&cbor, &mut bytes).unwrap();
    dev.publish("senml/gateway-2", bytes).await;
    // Not a pack: a record that is not an object.
    dev.publish("senml/gateway-1", r#"[{"bn":"x:","n":"a","v":1}, 7]"#)
        .await;

    eventually("a ticket for the SenML device", || async {
        !api.tickets(&format!("?device_id={DEVICE}"))
            .await
            .is_empty()
    })
    .await;
    let t = &api.tickets(&format!("?device_id={DEVICE}")).await[0];
    assert_eq!(t["failure_mode"], "overheat", "{t}");

    eventually("the CBOR device's reading applied", || async {
        h.app
            .device_state("urn:dev:ow:10e2073a0108006")
            .unwrap()
            .is_some()
    })
    .await;
    // What the daemon applied (the stored state is a checkpoint that may lag it).
    let state = |id: &str| h.app.device_state(id).unwrap().unwrap();
    let s = state(DEVICE);
    assert_eq!(
        (s.first_ts.as_millis(), s.last_ts.as_millis()),
        (T0, T0 + 35 * HOUR)
    );
    assert_eq!(state("urn:dev:ow:10e2073a0108006").last_ts.as_millis(), T0);

    // One reading per (device, time): 36 + 1, each pack's firmware string skipped.
    assert_eq!(api.metric("forewarn_readings_total").await, 37.0);
    assert_eq!(
        api.metric("forewarn_senml_records_not_numeric_total").await,
        6.0
    );
    assert_eq!(
        api.metric(r#"forewarn_rejected_total{reason="bad_senml"}"#)
            .await,
        1.0
    );
    let rejects = api.get_json("/api/v1/rejects").await;
    let r = &rejects[0];
    assert_eq!(r["reason"], "bad_senml", "{rejects}");
    assert_eq!(r["topic"], "senml/gateway-1");
    assert!(
        r["detail"].as_str().unwrap().contains("record 1"),
        "{rejects}"
    );
    stop(h, tok).await;
}
