//! `broker.protocol = 5` against Mosquitto's MQTT 5 listener (a broker each test starts with its
//! own configuration): the session outlives the connection for `broker.session_expiry` (and not
//! longer: forewarn then says the session was lost, and the gap shows), a message over
//! `broker.max_packet_bytes` is discarded by the broker (no reconnect loop; the `seq` gap says
//! so), and `ingest.shared_group` makes forewarn one member of a shared subscription.
//! Without the mosquitto binary these tests skip, and fail under `CI=true`.
#![cfg(feature = "embedded-broker")]

mod support;

use rumqttc::{AsyncClient, MqttOptions, QoS};
use std::time::Duration;
use support::daemon::*;
use support::mosquitto::{mosquitto_bin, Mosquitto, ROOMY};

fn mosquitto(test: &str) -> Option<(Mosquitto, tempfile::TempDir)> {
    let bin = mosquitto_bin(test)?;
    let dir = tempfile::tempdir().unwrap();
    Some((Mosquitto::on_free_port(&bin, dir.path(), ROOMY), dir))
}

fn v5_config(port: u16, dirs: &Dirs, client_id: &str) -> forewarn::config::Config {
    let mut cfg = config(&format!("mqtt://127.0.0.1:{port}"), dirs, client_id);
    cfg.broker.protocol = 5;
    cfg.broker.session_expiry = "1h".parse().unwrap();
    cfg
}

/// A plain MQTT 3.1.1 publisher (devices need not speak MQTT 5 for forewarn to).
async fn publisher(port: u16, id: &str) -> AsyncClient {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_inflight(100);
    connect(o).await.client
}

/// Publishes `n` hourly readings for each of `devices` devices and waits until the broker has
/// acknowledged them all (a final QoS 1 round trip on the same connection).
async fn publish_readings(c: &AsyncClient, devices: usize, n: usize) {
    for h in 0..n {
        for d in 0..devices {
            c.publish(
                format!("devices/d{d}/telemetry"),
                QoS::AtLeastOnce,
                false,
                reading(h as i64, h as u64 + 1, 60.0),
            )
            .await
            .unwrap();
        }
    }
}

async fn metric(api: &Api, name: &str) -> f64 {
    api.metric(name).await
}

async fn wait_metric(api: &Api, name: &str, want: f64, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let v = metric(api, name).await;
        if v >= want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} reached {v}, not {want}, within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_outlives_the_connection_for_its_expiry_interval_and_not_longer() {
    let Some((m, _dir)) =
        mosquitto("the_session_outlives_the_connection_for_its_expiry_interval_and_not_longer")
    else {
        return;
    };
    forewarn::tls::install_crypto();
    let p = publisher(m.port, "pub-session").await;

    // An hour's expiry: what is published while forewarn is away waits for it.
    let dirs = Dirs::new();
    let mut cfg = v5_config(m.port, &dirs, "fw-session");
    cfg.broker.receive_maximum = 16;
    let (h, tok) = start(cfg.clone()).await;
    ready(&h).await;
    stop(h, tok).await;
    publish_readings(&p, 20, 100).await;
    let (h, tok) = start(cfg).await;
    let api = Api::new(&h);
    wait_metric(
        &api,
        "forewarn_readings_total",
        2000.0,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(metric(&api, "forewarn_readings_total").await, 2000.0);
    assert_eq!(metric(&api, "forewarn_readings_missing_total").await, 0.0);
    let body = api.get_json("/readyz").await;
    assert_eq!(body["session"], serde_json::Value::Null, "{body}");
    stop(h, tok).await;

    // A one-second expiry: the broker forgets the session and what was published meanwhile;
    // forewarn says so at start, and the device's next message shows the gap.
    let dirs = Dirs::new();
    let mut cfg = v5_config(m.port, &dirs, "fw-expiring");
    cfg.broker.session_expiry = "1s".parse().unwrap();
    let (h, tok) = start(cfg.clone()).await;
    ready(&h).await;
    p.publish(
        "devices/e1/telemetry",
        QoS::AtLeastOnce,
        false,
        reading(0, 1, 60.0),
    )
    .await
    .unwrap();
    let api = Api::new(&h);
    wait_metric(
        &api,
        "forewarn_readings_total",
        1.0,
        Duration::from_secs(15),
    )
    .await;
    stop(h, tok).await;
    for h in 1..4 {
        p.publish(
            "devices/e1/telemetry",
            QoS::AtLeastOnce,
            false,
            reading(h, h as u64 + 1, 60.0),
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (h, tok) = start(cfg).await;
    ready(&h).await;
    let api = Api::new(&h);
    let body = api.get_json("/readyz").await;
    assert!(
        body["session"].to_string().contains("lost"),
        "forewarn says the broker lost its session: {body}"
    );
    p.publish(
        "devices/e1/telemetry",
        QoS::AtLeastOnce,
        false,
        reading(4, 5, 60.0),
    )
    .await
    .unwrap();
    wait_metric(
        &api,
        "forewarn_readings_missing_total",
        3.0,
        Duration::from_secs(15),
    )
    .await;
    stop(h, tok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_announced_packet_limit_is_discarded_by_the_broker_and_counted_missing()
{
    let Some((m, _dir)) = mosquitto(
        "a_message_over_the_announced_packet_limit_is_discarded_by_the_broker_and_counted_missing",
    ) else {
        return;
    };
    forewarn::tls::install_crypto();
    let dirs = Dirs::new();
    let mut cfg = v5_config(m.port, &dirs, "fw-big");
    cfg.broker.max_packet_bytes = 4096;
    let (h, tok) = start(cfg).await;
    ready(&h).await;
    let api = Api::new(&h);
    let p = publisher(m.port, "pub-big").await;
    let big = serde_json::json!({
        "ts": T0 + HOUR, "seq": 2, "metrics": {"temp": 60.0, "volt": 170.0},
        "note": "x".repeat(20_000),
    })
    .to_string();
    // seq 1, the oversized seq 2, then 3 and 4.
    for payload in [
        reading(0, 1, 60.0),
        big,
        reading(2, 3, 60.0),
        reading(3, 4, 60.0),
    ] {
        p.publish("devices/big-1/telemetry", QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
    wait_metric(
        &api,
        "forewarn_readings_total",
        3.0,
        Duration::from_secs(15),
    )
    .await;
    wait_metric(
        &api,
        "forewarn_readings_missing_total",
        1.0,
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(
        metric(&api, "forewarn_broker_connects_total").await,
        1.0,
        "MQTT 5 needs no reconnect to get past an oversized message"
    );
    assert_eq!(metric(&api, "forewarn_readings_total").await, 3.0);
    stop(h, tok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_splits_the_stream_between_its_members_and_loses_nothing() {
    let Some((m, _dir)) =
        mosquitto("a_shared_group_splits_the_stream_between_its_members_and_loses_nothing")
    else {
        return;
    };
    forewarn::tls::install_crypto();
    let dirs = Dirs::new();
    let mut cfg = v5_config(m.port, &dirs, "fw-shared");
    cfg.ingest.shared_group = Some("fwpair".into());
    let (h, tok) = start(cfg.clone()).await;
    ready(&h).await;
    let api = Api::new(&h);

    // The other member: an MQTT 5 client of the same group.
    let mut o = rumqttc::v5::MqttOptions::new("other-member", "127.0.0.1", m.port);
    o.set_keep_alive(Duration::from_secs(30));
    let (other, mut el) = rumqttc::v5::AsyncClient::new(o, 100);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (sub_tx, sub_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut sub = Some(sub_tx);
        loop {
            match el.poll().await {
                Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::SubAck(_))) => {
                    if let Some(s) = sub.take() {
                        let _ = s.send(());
                    }
                }
                Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::Publish(_))) => {
                    let _ = tx.send(());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    other
        .subscribe(
            "$share/fwpair/devices/+/+",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), sub_rx)
        .await
        .unwrap()
        .unwrap();

    let p = publisher(m.port, "pub-shared").await;
    let total = 200.0;
    publish_readings(&p, 1, 200).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut others = 0.0;
    loop {
        while rx.try_recv().is_ok() {
            others += 1.0;
        }
        let ours = metric(&api, "forewarn_mqtt_messages_total").await;
        if ours + others >= total {
            assert_eq!(
                ours + others,
                total,
                "each message went to exactly one member"
            );
            assert!(
                ours > 0.0 && others > 0.0,
                "both members received part: forewarn {ours}, other {others}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "forewarn {ours} + other member {others} of {total} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(h, tok).await;

    // The active member away (its session kept): what does the other member get?
    let before = others;
    publish_readings(&p, 1, 100).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    while rx.try_recv().is_ok() {
        others += 1.0;
    }
    let away = others - before;
    assert!(away > 0.0, "the member still connected got part of it");
    // Mosquitto 2.0 keeps handing the absent member (its session kept) its turn: those messages
    // wait in its session and arrive when it returns. Nothing is lost either way.
    let (h, tok) = start(cfg).await;
    let api = Api::new(&h);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ours = metric(&api, "forewarn_mqtt_messages_total").await;
        if ours + away >= 100.0 {
            assert_eq!(
                ours + away,
                100.0,
                "each message went to exactly one member"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after its return forewarn got {ours}, the other member {away}, of 100"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(h, tok).await;
}
