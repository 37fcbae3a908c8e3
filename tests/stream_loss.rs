//! Loss is measured and said: a per-device `seq` gap is counted, shown in the API and in
//! `/readyz` (which stays ready); a `seq` that restarts is a reset, not a stream of duplicates;
//! and against a default-configured Mosquitto that drops what a slower subscriber has not taken,
//! what forewarn received plus what it reports missing is what was published.
#![cfg(feature = "embedded-broker")]

mod support;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::time::Duration;
use support::daemon::*;
use support::poll::eventually;

/// The two tests run one after the other: the flood saturates both cores, and the gap test's
/// daemon, started beside it, could miss its readiness wait.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seq_gap_is_reported_and_a_seq_restart_is_a_reset_not_duplicates() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let b = broker();
    let dirs = Dirs::new();
    let cfg = config(&b.url(), &dirs, "fw-gaps");
    let (h, tok) = start(cfg.clone()).await;
    ready(&h).await;
    let api = Api::new(&h);
    let dev = mqtt(&b, "gap-pub").await;
    // seq 1..=10, then 11..=13 lost upstream, then 14..=20.
    for hr in (0..10).chain(13..20) {
        dev.publish("devices/gap-1/telemetry", reading(hr, hr as u64 + 1, 70.0))
            .await;
    }
    readings_applied(&h, "gap-1", 17, "17 readings applied").await;
    assert_eq!(api.metric("forewarn_readings_missing_total").await, 3.0);
    let gaps = api.get_json("/api/v1/gaps").await;
    let g = &gaps.as_array().unwrap()[0];
    assert_eq!(g["device_id"], "gap-1");
    assert_eq!(
        (g["after_seq"].as_u64(), g["next_seq"].as_u64()),
        (Some(10), Some(14))
    );
    assert_eq!(g["missing"], 3);
    let r = api.readyz().await;
    assert_eq!(
        r.status(),
        200,
        "loss upstream does not make forewarn unready"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["upstream_loss"]["readings_missing"], 3);

    // The device reboots: its seq starts again at 1, on newer readings.
    for (i, hr) in (20..30).enumerate() {
        dev.publish("devices/gap-1/telemetry", reading(hr, i as u64 + 1, 70.0))
            .await;
    }
    readings_applied(&h, "gap-1", 27, "the readings after the reboot applied").await;
    assert_eq!(api.metric("forewarn_seq_resets_total").await, 1.0);
    assert_eq!(
        api.metric("forewarn_readings_dropped_total{reason=\"duplicate\"}")
            .await,
        0.0
    );
    // A redelivery of a reading from before the reboot is dropped (older than the tolerance),
    // neither a second reset nor a gap.
    dev.publish("devices/gap-1/telemetry", reading(15, 16, 70.0))
        .await;
    eventually("the old redelivery dropped", || async {
        api.metric("forewarn_readings_dropped_total{reason=\"late\"}")
            .await
            == 1.0
    })
    .await;
    assert_eq!(stored_readings(&h, "gap-1"), 27);
    assert_eq!(api.metric("forewarn_seq_resets_total").await, 1.0);
    assert_eq!(api.metric("forewarn_readings_missing_total").await, 3.0);

    // A malformed message uses a seq too: the gap it leaves is the rejection (already counted
    // as rejected), not a loss at the broker. A gap beyond it still is one.
    for hr in 0..3 {
        dev.publish("devices/gap-2/telemetry", reading(hr, hr as u64 + 1, 70.0))
            .await;
    }
    dev.publish(
        "devices/gap-2/telemetry",
        br#"{"ts":"not a time","seq":4,"metrics":{"temp":70.0}}"#.to_vec(),
    )
    .await;
    for hr in 4..6 {
        dev.publish("devices/gap-2/telemetry", reading(hr, hr as u64 + 1, 70.0))
            .await;
    }
    // seq 7 and 8 lost upstream, seq 9 arrives.
    dev.publish("devices/gap-2/telemetry", reading(8, 9, 70.0))
        .await;
    readings_applied(
        &h,
        "gap-2",
        6,
        "the readings around the rejected one applied",
    )
    .await;
    assert_eq!(
        api.metric("forewarn_rejected_total{reason=\"bad_timestamp\"}")
            .await,
        1.0
    );
    assert_eq!(api.metric("forewarn_readings_missing_total").await, 5.0);
    stop(h, tok).await;

    // A restart does not forget where each device's stream lost readings.
    let (h, tok) = start(cfg).await;
    ready(&h).await;
    let api = Api::new(&h);
    let gaps = api.get_json("/api/v1/gaps").await;
    let mut got: Vec<(String, u64)> = gaps
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["device_id"].as_str().unwrap().to_string(),
                g["missing"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(got, vec![("gap-1".into(), 3), ("gap-2".into(), 2)]);
    stop(h, tok).await;
}

const DEVICES: u64 = 50;
const PER_DEVICE: u64 = 400;

/// A publisher faster than forewarn: QoS 1, a wide in-flight window, no pacing.
/// Publishes `PER_DEVICE` readings of every device as fast as the broker takes them, hours
/// (and `seq`) continuing from round `round`'s start, and waits for the broker's acks.
async fn flood(port: u16, round: u64) -> u64 {
    let mut o = MqttOptions::new(format!("loss-flood-{round}"), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(1000);
    let (client, mut el) = AsyncClient::new(o, 10_000);
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let a = acked.clone();
    let poll = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    for hr in round * PER_DEVICE..(round + 1) * PER_DEVICE {
        for d in 0..DEVICES {
            client
                .publish(
                    format!("devices/fl-{d}/telemetry"),
                    QoS::AtLeastOnce,
                    false,
                    reading(hr as i64, hr + 1, 70.0),
                )
                .await
                .unwrap();
        }
    }
    let total = DEVICES * PER_DEVICE;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked.load(std::sync::atomic::Ordering::SeqCst) < total {
        assert!(
            std::time::Instant::now() < deadline,
            "broker acknowledged every publish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    poll.abort();
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_default_mosquitto_received_plus_reported_missing_is_what_was_published() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(bin) = support::mosquitto::mosquitto_bin("stream_loss") else {
        return;
    };
    forewarn::tls::install_crypto();
    let dirs = Dirs::new();
    let mdir = dirs.path().join("mosquitto");
    std::fs::create_dir_all(&mdir).unwrap();
    // Mosquitto's defaults: max_inflight_messages 20, max_queued_messages 1000. Its $SYS tree
    // every second (default 10 s), so its own count of dropped messages arrives within the test.
    let broker = support::mosquitto::Mosquitto::on_free_port(
        &bin,
        &mdir,
        "allow_anonymous true\nsys_interval 1\n",
    );
    let port = broker.port;
    let mut cfg = config(&broker.url(), &dirs, "fw-loss");
    cfg.ingest.broker_drops_topic = "$SYS/broker/publish/messages/dropped".into();
    let (h, tok) = start(cfg).await;
    ready(&h).await;
    let api = Api::new(&h);
    // A flood overflows the default broker's queue for forewarn unless forewarn happens to keep
    // up with it (now and then it does): flood again, the devices' hours and `seq` going on,
    // until the broker says it dropped some (at most five floods).
    let mut published = 0;
    let mut rounds = 0;
    loop {
        published += flood(port, rounds).await;
        rounds += 1;
        // Let forewarn drain what the broker kept.
        let mut last = -1.0;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = api.metric("forewarn_readings_total").await;
            if now == last {
                break;
            }
            last = now;
        }
        // Before any device sends again (no seq gap can show a loss at the end of a stream
        // yet), the broker's own report ($SYS every second) says whether it dropped messages.
        let reported = tokio::time::timeout(Duration::from_secs(5), async {
            while api.metric("forewarn_broker_dropped_messages").await <= 0.0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .is_ok();
        if reported {
            break;
        }
        assert!(
            rounds < 5,
            "the default broker dropped nothing of {rounds} floods of {published} readings \
             (forewarn kept up), or its $SYS report of drops never reached forewarn"
        );
    }
    // A last reading per device, paced, makes a loss at the end of each stream a gap too.
    let closer = {
        let mut o = MqttOptions::new("loss-closer", "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut el) = AsyncClient::new(o, 100);
        tokio::spawn(async move {
            loop {
                if el.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        client
    };
    let applied = |api: &Api| {
        let api = Api {
            base: api.base.clone(),
            http: api.http.clone(),
        };
        async move {
            api.metric("forewarn_readings_total").await
                - api
                    .metric("forewarn_readings_dropped_total{reason=\"duplicate\"}")
                    .await
                - api
                    .metric("forewarn_readings_dropped_total{reason=\"late\"}")
                    .await
        }
    };
    let body = api.get_json("/readyz").await;
    assert!(
        body["broker_dropped"].as_u64().is_some_and(|n| n > 0),
        "readyz says the broker dropped messages: {body}"
    );
    for d in 0..DEVICES {
        closer
            .publish(
                format!("devices/fl-{d}/telemetry"),
                QoS::AtLeastOnce,
                false,
                reading((rounds * PER_DEVICE) as i64, rounds * PER_DEVICE + 1, 70.0),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let expected = (published + DEVICES) as f64;
    eventually(
        "every published reading received or reported missing",
        || async {
            let got = applied(&api).await + api.metric("forewarn_readings_missing_total").await;
            got >= expected - 20.0
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received = applied(&api).await;
    let missing = api.metric("forewarn_readings_missing_total").await;
    eprintln!("published {expected}, received {received}, reported missing {missing}");
    assert!(
        missing > 0.0,
        "the default broker settings must have dropped some of a flood this fast"
    );
    // Within the broker's in-flight window (20 by default).
    assert!(
        (received + missing - expected).abs() <= 20.0,
        "published {expected}, received {received}, reported missing {missing}"
    );
    let body = api.get_json("/readyz").await;
    assert!(body["upstream_loss"]["readings_missing"].as_f64().unwrap() > 0.0);
    stop(h, tok).await;
}
