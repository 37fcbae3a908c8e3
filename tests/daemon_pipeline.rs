//! The daemon end to end: real embedded broker, real sled store, real HTTP.
#![cfg(feature = "embedded-broker")]

mod support;

use std::time::Duration;
use support::daemon::*;
use support::poll::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degrading_device_gets_exactly_one_ticket_before_its_failure() {
    let b = broker();
    let dirs = Dirs::new();
    let fleet = dirs.fleet_file(&acme_fleet("pump-1"));
    let mut cfg = config(&b.url(), &dirs, "fw-degrading");
    cfg.fleet.file = Some(fleet);
    let (h, tok) = start(cfg).await;
    ready(&h).await;
    let api = Api::new(&h);
    let dev = mqtt(&b, "pump-1").await;
    let series = degrading(48);
    for (i, (hr, t)) in series.iter().enumerate() {
        dev.publish("devices/pump-1/telemetry", reading(*hr, i as u64 + 1, *t))
            .await;
    }
    readings_applied(&h, "pump-1", 48, "all readings applied").await;
    let open = api.tickets("?status=open&device_id=pump-1").await;
    assert_eq!(open.len(), 1, "{open:?}");
    let t = &open[0];
    assert_eq!(t["failure_mode"], "overheat");
    assert_eq!(
        t["customer_id"], "acme",
        "customer comes from the fleet file"
    );
    assert_eq!(
        t["opened_at"], "2015-01-02T11:00:00Z",
        "opened at the 2nd hot reading (event time)"
    );
    let failure_ts = T0 + 50 * HOUR;
    dev.publish(
        "devices/pump-1/events",
        serde_json::json!({"ts": failure_ts, "kind": "failure", "code": "overheat"}).to_string(),
    )
    .await;
    let id = t["id"].as_str().unwrap().to_string();
    eventually("ticket settled by the failure event", || async {
        api.get_json(&format!("/api/v1/tickets/{id}")).await["status"] == "resolved"
    })
    .await;
    let all = api.tickets("?device_id=pump-1").await;
    assert_eq!(all.len(), 1, "exactly one ticket for the whole degradation");
    assert_eq!(all[0]["outcome"], "failed_before_service");
    assert_eq!(api.tickets("?customer_id=acme").await.len(), 1);
    assert_eq!(
        api.metric("forewarn_ticket_changes_total{kind=\"opened\"}")
            .await,
        1.0
    );
    assert!(api.metric("forewarn_scorings_total").await >= 40.0);
    assert!(api.metric("forewarn_reading_to_ticket_seconds_count").await >= 1.0);
    stop(h, tok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_and_duplicated_readings_do_not_duplicate_the_ticket() {
    let b = broker();
    let dirs = Dirs::new();
    let (h, tok) = start(config(&b.url(), &dirs, "fw-dups")).await;
    ready(&h).await;
    let api = Api::new(&h);
    let dev = mqtt(&b, "pump-2").await;
    let series = degrading(45);
    for (i, (hr, t)) in series.iter().enumerate() {
        let p = reading(*hr, i as u64 + 1, *t);
        dev.publish("devices/pump-2/telemetry", p.clone()).await;
        // The same reading again, as a redelivery would bring it...
        dev.publish("devices/pump-2/telemetry", p.clone()).await;
        // ...and inside a batch with an older one.
        if i > 0 {
            let (ph, pt) = series[i - 1];
            let batch = format!("[{},{}]", reading(ph, i as u64, pt), p);
            dev.publish("devices/pump-2/telemetry", batch).await;
        }
    }
    eventually("all messages processed", || async {
        api.metric("forewarn_readings_total").await == (45 + 45 + 44 * 2) as f64
    })
    .await;
    // The newest reading is held for event-time order until the device's idle timer.
    readings_applied(&h, "pump-2", 45, "every reading applied").await;
    assert_eq!(
        api.metric("forewarn_readings_dropped_total{reason=\"duplicate\"}")
            .await,
        (45 + 44 * 2) as f64
    );
    let all = api.tickets("?device_id=pump-2").await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(
        api.metric("forewarn_ticket_changes_total{kind=\"opened\"}")
            .await,
        1.0
    );
    stop(h, tok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_stream_loses_nothing_and_duplicates_nothing() {
    let b = broker();
    let dirs = Dirs::new();
    let cfg = config(&b.url(), &dirs, "fw-restart");
    let (h, tok) = start(cfg.clone()).await;
    ready(&h).await;
    let dev = mqtt(&b, "pump-3").await;
    let series = degrading(60);
    for (i, (hr, t)) in series.iter().enumerate().take(40) {
        dev.publish("devices/pump-3/telemetry", reading(*hr, i as u64 + 1, *t))
            .await;
    }
    // Stop while those are still arriving; the rest is published while forewarn is away.
    stop(h, tok).await;
    for (i, (hr, t)) in series.iter().enumerate().skip(40) {
        dev.publish("devices/pump-3/telemetry", reading(*hr, i as u64 + 1, *t))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (h, tok) = start(cfg).await;
    ready(&h).await;
    let api = Api::new(&h);
    readings_applied(&h, "pump-3", 60, "every reading applied once").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stored_readings(&h, "pump-3"), 60, "nothing applied twice");
    let all = api.tickets("?device_id=pump-3").await;
    assert_eq!(all.len(), 1, "{all:?}");
    stop(h, tok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_payloads_are_rejected_counted_and_acknowledged_while_good_readings_flow() {
    let b = broker();
    let dirs = Dirs::new();
    let cfg = config(&b.url(), &dirs, "fw-rejects");
    let (h, tok) = start(cfg.clone()).await;
    ready(&h).await;
    let api = Api::new(&h);
    let dev = mqtt(&b, "pump-4").await;
    let long_id = "x".repeat(200);
    dev.publish("devices/pump-4/telemetry", reading(0, 1, 70.0))
        .await;
    dev.publish("devices/pump-4/telemetry", "{not json").await;
    dev.publish("devices/pump-4/telemetry", reading(1, 2, 70.0))
        .await;
    dev.publish("devices/pump-4/telemetry", r#"{"metrics":{}}"#)
        .await;
    dev.publish("devices/pump-4/telemetry", r#"{"metrics":{"temp":"hot"}}"#)
        .await;
    dev.publish(&format!("devices/{long_id}/telemetry"), reading(2, 3, 70.0))
        .await;
    dev.publish("devices/pump-4/events", r#"{"kind":"explosion"}"#)
        .await;
    dev.publish("devices/pump-4/telemetry", reading(2, 3, 70.0))
        .await;
    readings_applied(&h, "pump-4", 3, "good readings applied").await;
    eventually("all rejects counted", || async {
        api.metric("forewarn_rejected_total{reason=\"bad_event\"}")
            .await
            == 1.0
    })
    .await;
    for reason in [
        "invalid_json",
        "no_metrics",
        "non_finite_value",
        "bad_device_id",
    ] {
        assert_eq!(
            api.metric(&format!("forewarn_rejected_total{{reason=\"{reason}\"}}"))
                .await,
            1.0,
            "{reason}"
        );
    }
    let rejects = api.get_json("/api/v1/rejects").await;
    let rejects = rejects.as_array().unwrap();
    assert_eq!(rejects.len(), 5);
    assert_eq!(rejects[4]["reason"], "invalid_json", "newest first");
    assert_eq!(rejects[4]["payload_prefix"], "{not json");
    stop(h, tok).await;

    // Acknowledged: the same session again gets none of them redelivered.
    let (h, tok) = start(cfg).await;
    ready(&h).await;
    let api = Api::new(&h);
    dev.publish("devices/pump-4/telemetry", reading(3, 4, 70.0))
        .await;
    readings_applied(&h, "pump-4", 4, "the next reading applied").await;
    assert_eq!(api.metric("forewarn_readings_total").await, 1.0);
    let rejected: f64 = api
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("forewarn_rejected_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        rejected, 0.0,
        "rejected payloads were acknowledged, not redelivered"
    );
    stop(h, tok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_loss_reconnects_and_receives_what_the_broker_kept() {
    let b = broker();
    let proxy = Proxy::start(b.addr).await;
    let dirs = Dirs::new();
    let (h, tok) = start(config(&proxy.url(), &dirs, "fw-reconnect")).await;
    ready(&h).await;
    let api = Api::new(&h);
    let dev = mqtt(&b, "pump-5").await;
    for h in 0..10 {
        dev.publish("devices/pump-5/telemetry", reading(h, h as u64 + 1, 70.0))
            .await;
    }
    readings_applied(&h, "pump-5", 10, "first readings applied").await;
    proxy.cut();
    eventually("daemon sees the loss", || async {
        api.metric("forewarn_broker_connected").await == 0.0
    })
    .await;
    let r = api.readyz().await;
    assert_eq!(r.status(), 503, "not ready without the broker");
    for h in 10..30 {
        dev.publish("devices/pump-5/telemetry", reading(h, h as u64 + 1, 70.0))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore();
    eventually(
        "readings kept by the broker arrive after reconnecting",
        || async { stored_readings(&h, "pump-5") == 30 },
    )
    .await;
    assert!(api.metric("forewarn_broker_connects_total").await >= 2.0);
    assert!(api.metric("forewarn_broker_disconnects_total").await >= 1.0);
    stop(h, tok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_devices_resume_from_the_store_when_they_speak_again() {
    let b = broker();
    let dirs = Dirs::new();
    let mut cfg = config(&b.url(), &dirs, "fw-evict");
    cfg.ingest.max_devices_in_memory = 5;
    cfg.ingest.commit_group = 8;
    let (h, tok) = start(cfg).await;
    ready(&h).await;
    let api = Api::new(&h);
    let dev = mqtt(&b, "evict-pub").await;
    // Device e0 degrades half-way, then 20 other devices push it out of memory.
    let series = degrading(45);
    for (i, (hr, t)) in series.iter().enumerate().take(36) {
        dev.publish("devices/e0/telemetry", reading(*hr, i as u64 + 1, *t))
            .await;
    }
    for d in 1..=20 {
        for hr in 0..3 {
            dev.publish(
                &format!("devices/e{d}/telemetry"),
                reading(hr, hr as u64 + 1, 70.0),
            )
            .await;
        }
    }
    readings_applied(&h, "e20", 3, "others applied").await;
    assert!(api.metric("forewarn_device_evictions_total").await >= 15.0);
    assert!(api.metric("forewarn_devices_in_memory").await <= 5.0);
    // e0 comes back: its window, seq and live ticket come from the store.
    for (i, (hr, t)) in series.iter().enumerate().skip(36) {
        dev.publish("devices/e0/telemetry", reading(*hr, i as u64 + 1, *t))
            .await;
    }
    // A redelivery of an old reading is still recognised after the reload.
    dev.publish("devices/e0/telemetry", reading(10, 11, 70.0))
        .await;
    readings_applied(&h, "e0", 45, "e0 applied").await;
    eventually("duplicate counted", || async {
        api.metric("forewarn_readings_dropped_total{reason=\"duplicate\"}")
            .await
            == 1.0
    })
    .await;
    assert_eq!(api.tickets("?device_id=e0").await.len(), 1);
    stop(h, tok).await;
}
