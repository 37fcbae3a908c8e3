//! End-to-end through a real Mosquitto broker (what CI runs after the unit tests):
//! `FOREWARN_MOSQUITTO=127.0.0.1:1883 cargo test --test e2e_mosquitto -- --include-ignored`
//!
//! Each test uses its own topic prefix, so several runs can share one broker.

mod support;

use forewarn::domain::Reading;
use forewarn::ingest::decode::{decode_events, decode_telemetry, Limits};
use forewarn::replay::{publish, History, Message, PublishOptions, PublishSummary};
use forewarn::sim::{write_csv, Fleet, SimConfig, SimEvent};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::mosquitto::{shared_addr, sim_message};

fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("fw-e2e-{test}-{}-{nanos}", std::process::id())
}

type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A QoS 1 subscriber to `{prefix}/+/telemetry` and `{prefix}/+/events`, collecting in the
/// background what arrives.
async fn subscribe(prefix: &str) -> Received {
    let (host, port) = shared_addr()
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.parse().unwrap()))
        .unwrap();
    let mut mo = MqttOptions::new(format!("{prefix}-sub"), host, port);
    mo.set_keep_alive(Duration::from_secs(30));
    mo.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(mo, 100);
    client
        .subscribe(format!("{prefix}/+/telemetry"), QoS::AtLeastOnce)
        .await
        .unwrap();
    client
        .subscribe(format!("{prefix}/+/events"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let received: Received = Default::default();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let sink = received.clone();
    tokio::spawn(async move {
        let _client = client;
        let mut ready = Some(ready_tx);
        let mut subacks = 0;
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    subacks += 1;
                    if subacks == 2 {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    sink.lock().unwrap().push((p.topic, p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(e) => panic!("subscriber lost the broker: {e}"),
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .expect("broker did not acknowledge the subscriptions")
        .unwrap();
    received
}

/// Publishes in chunks smaller than Mosquitto's default per-client queue (1000 QoS 1 messages
/// beyond the 20 in flight; more are dropped for a subscriber that falls behind) and lets the
/// subscriber catch up after each chunk. Returns the summed publish summary.
async fn publish_paced(messages: Vec<Message>, received: &Received) -> PublishSummary {
    let mut total = PublishSummary::default();
    let mut sent = 0usize;
    for chunk in messages.chunks(400) {
        let s = publish(chunk.iter().cloned(), &opts(), |_, _| {})
            .await
            .unwrap();
        total.published += s.published;
        total.acked += s.acked;
        total.readings += s.readings;
        total.events += s.events;
        sent += chunk.len();
        let deadline = Instant::now() + Duration::from_secs(30);
        while received.lock().unwrap().len() < sent && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    total
}

fn opts() -> PublishOptions {
    PublishOptions::new(format!("mqtt://{}", shared_addr()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Mosquitto: FOREWARN_MOSQUITTO=host:port (see .ci/run)"]
async fn every_simulated_message_is_acknowledged_and_delivered_intact() {
    let prefix = unique_prefix("sim");
    let received = subscribe(&prefix).await;
    let fleet = Fleet::new(SimConfig {
        devices: 40,
        ticks: 24 * 10,
        malformed_fraction: 0.01,
        seed: 17,
        ..SimConfig::default()
    });
    let items: Vec<SimEvent> = fleet.collect();
    let messages: Vec<Message> = items.iter().map(|e| sim_message(&prefix, e)).collect();
    let sum = publish_paced(messages, &received).await;
    assert_eq!(sum.published as usize, items.len());
    assert_eq!(sum.acked, sum.published, "every QoS 1 message acknowledged");

    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), items.len(), "every message delivered");
    let limits = Limits::default();
    let (mut readings, mut events, mut rejected) = (Vec::new(), 0usize, 0usize);
    for (topic, payload) in &got {
        let mut parts = topic.split('/');
        let (_, device, kind) = (parts.next(), parts.next(), parts.next());
        if kind == Some("telemetry") {
            match decode_telemetry(payload, device, 0, &limits) {
                Ok(rs) => readings.extend(rs),
                Err(_) => rejected += 1,
            }
        } else {
            events += decode_events(payload, device, 0, &limits).unwrap().len();
        }
    }
    let mut sent: Vec<Reading> = items
        .iter()
        .filter_map(|e| match e {
            SimEvent::Reading(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    let malformed = items
        .iter()
        .filter(|e| matches!(e, SimEvent::Malformed { .. }))
        .count();
    assert!(malformed > 0);
    assert_eq!(
        rejected, malformed,
        "exactly the malformed payloads are refused"
    );
    assert_eq!(events as u64, sum.events);
    let key = |r: &Reading| (r.device_id.clone(), r.seq);
    sent.sort_by_key(key);
    readings.sort_by_key(key);
    assert_eq!(readings, sent, "readings arrive bit for bit as simulated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Mosquitto: FOREWARN_MOSQUITTO=host:port (see .ci/run)"]
async fn replayed_history_files_arrive_in_event_time_order_per_device() {
    let prefix = unique_prefix("csv");
    let dir = tempfile::tempdir().unwrap();
    let sum = write_csv(
        dir.path(),
        &SimConfig {
            devices: 20,
            ticks: 24 * 30,
            ..SimConfig::default()
        },
        |_| {},
    )
    .unwrap();
    let mut h = History::default();
    h.read_telemetry_file(&dir.path().join("telemetry.csv"))
        .unwrap();
    h.read_events_file(&dir.path().join("events.csv")).unwrap();
    assert_eq!(h.row_errors, 0);
    let total = (sum.readings + sum.failures + sum.maintenance + sum.errors) as usize;
    assert_eq!(h.len(), total);

    let received = subscribe(&prefix).await;
    let published = publish_paced(h.messages(&prefix).collect(), &received).await;
    assert_eq!(published.published as usize, total);
    assert_eq!(published.acked, published.published);
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), total);
    // Per device, readings arrive with increasing seq and non-decreasing time.
    let mut last: std::collections::HashMap<String, (u64, i64)> = Default::default();
    for (topic, payload) in got.iter().filter(|(t, _)| t.ends_with("/telemetry")) {
        let device = topic.split('/').nth(1).unwrap();
        let r = &decode_telemetry(payload, Some(device), 0, &Limits::default()).unwrap()[0];
        let prev = last.insert(device.to_string(), (r.seq.unwrap(), r.ts.as_millis()));
        if let Some((seq, ts)) = prev {
            assert_eq!(r.seq.unwrap(), seq + 1);
            assert!(r.ts >= forewarn::domain::Timestamp::from_millis(ts));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Mosquitto: FOREWARN_MOSQUITTO=host:port (see .ci/run)"]
async fn rate_limit_paces_publishing() {
    let prefix = unique_prefix("rate");
    let messages = (0..300).map(|i| Message {
        topic: format!("{prefix}/d{}/telemetry", i % 3),
        payload: format!(r#"{{"ts":{i},"metrics":{{"a":{i}}}}}"#).into_bytes(),
        is_reading: true,
    });
    let mut o = opts();
    o.rate = Some(500.0);
    let start = Instant::now();
    let sum = publish(messages, &o, |_, _| {}).await.unwrap();
    let took = start.elapsed();
    assert_eq!(sum.acked, 300);
    assert!(
        took >= Duration::from_millis(550),
        "300 messages at 500/s took {took:?}"
    );
}

#[test]
#[ignore = "needs Mosquitto: FOREWARN_MOSQUITTO=host:port (see .ci/run)"]
fn replay_command_reports_every_message_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let tel = dir.path().join("telemetry.csv");
    std::fs::write(
        &tel,
        "device_id,ts,temp\n\
         a,2025-01-01T00:00:00Z,1\n\
         a,not-a-time,2\n\
         b,2025-01-01T00:00:00Z,3\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_forewarn"))
        .args(["replay", "--telemetry"])
        .arg(&tel)
        .args(["--broker", &format!("mqtt://{}", shared_addr())])
        .args(["--topic-prefix", &unique_prefix("cli")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("published 2 (2 readings, 0 events), acked 2, row errors 1"),
        "{stdout}"
    );
    assert!(
        stderr.contains("telemetry.csv:3: ts \"not-a-time\""),
        "{stderr}"
    );
}
