//! A Sparkplug edge node's BIRTH, once acknowledged, outlives a daemon restart: its aliases,
//! datatypes and `seq` are committed with the message, so DATA after the restart is read without
//! a rebirth. (Payloads encoded here with forewarn's own generated types; the third-party edge
//! node is in `sparkplug_pysparkplug`.)
#![cfg(feature = "embedded-broker")]

mod support;

use forewarn::ingest::sparkplug::payload::payload::{metric::Value, Metric};
use forewarn::ingest::sparkplug::payload::{DataType, Payload};
use prost::Message as _;
use support::daemon::*;
use support::poll::eventually;

fn payload(seq: u64, ts: i64, metrics: Vec<Metric>) -> Vec<u8> {
    Payload {
        timestamp: Some(ts as u64),
        seq: Some(seq),
        metrics,
        ..Payload::default()
    }
    .encode_to_vec()
}

fn temp(alias: u64, name: Option<&str>, v: f64) -> Metric {
    Metric {
        name: name.map(str::to_string),
        alias: Some(alias),
        datatype: name.map(|_| DataType::Double as u32),
        value: Some(Value::DoubleValue(v)),
        ..Metric::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_birth_acknowledged_before_a_restart_still_reads_data_after_it() {
    let b = broker();
    let dirs = Dirs::new();
    let mut cfg = config(&b.url(), &dirs, "fw-spb-restart");
    cfg.ingest.sparkplug.enabled = true;
    let (h, tok) = start(cfg.clone()).await;
    ready(&h).await;
    let edge = mqtt(&b, "spb-edge").await;
    edge.publish("spBv1.0/site/NBIRTH/gw", payload(0, T0, vec![]))
        .await;
    edge.publish(
        "spBv1.0/site/DBIRTH/gw/oven",
        payload(1, T0, vec![temp(4, Some("temp"), 70.0)]),
    )
    .await;
    let api = Api::new(&h);
    eventually("both births committed", || async {
        api.metric(r#"forewarn_sparkplug_messages_total{type="DBIRTH"}"#)
            .await
            == 1.0
    })
    .await;
    stop(h, tok).await;

    let (h, tok) = start(cfg).await;
    ready(&h).await;
    let api = Api::new(&h);
    edge.publish(
        "spBv1.0/site/DDATA/gw/oven",
        payload(2, T0 + HOUR, vec![temp(4, None, 71.5)]),
    )
    .await;
    eventually("the DDATA applied", || async {
        h.app
            .device_state("site.gw.oven")
            .unwrap()
            .is_some_and(|s| s.last_ts == forewarn::domain::Timestamp::from_millis(T0 + HOUR))
    })
    .await;
    assert_eq!(
        api.metric(r#"forewarn_rejected_total{reason="no_birth"}"#)
            .await,
        0.0
    );
    assert_eq!(api.metric("forewarn_readings_missing_total").await, 0.0);
    for reason in ["no_birth", "seq_gap", "unknown_alias"] {
        let sample = format!(r#"forewarn_sparkplug_rebirth_requests_total{{reason="{reason}"}}"#);
        assert_eq!(api.metric(&sample).await, 0.0, "{sample}");
    }
    stop(h, tok).await;
}
