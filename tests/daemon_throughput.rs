//! Throughput of the daemon's hot path (run with `--ignored --nocapture`, ideally `--release`).
#![cfg(feature = "embedded-broker")]

mod support;

use forewarn::ingest::mqtt::Inbound;
use std::time::{Duration, Instant};
use support::daemon::*;

fn payload(device: usize, h: i64, seq: u64, batch: usize) -> String {
    let items: Vec<String> = (0..batch as i64)
        .map(|k| {
            serde_json::json!({"ts": T0 + (h + k) * HOUR, "seq": seq + k as u64,
                "metrics": {"temp": 70.0 + ((device + k as usize) % 7) as f64, "volt": 170.0, "rotate": 420.0}})
            .to_string()
        })
        .collect();
    format!("[{}]", items.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput_of_the_commit_path_in_process() {
    let b = broker();
    let dirs = Dirs::new();
    let (h, tok) = start(config(&b.url(), &dirs, "fw-tp")).await;
    ready(&h).await;
    let devices = 1000;
    let batch = 10;
    let rounds = 20; // readings = devices * batch * rounds
                     // Received now: a receipt time before the readings' timestamps rejects them (`future_ts`).
    let received_ms = chrono::Utc::now().timestamp_millis();
    let mut groups = Vec::new();
    for r in 0..rounds {
        let mut msgs = Vec::new();
        for d in 0..devices {
            let p = payload(d, (r * batch) as i64, (r * batch) as u64 + 1, batch);
            msgs.push(Inbound {
                publish: forewarn::ingest::mqtt::Publish::new(
                    format!("devices/dev-{d}/telemetry"),
                    p,
                ),
                received: Instant::now(),
                received_ms,
            });
        }
        groups.push(msgs);
    }
    let app = h.app.clone();
    let t = Instant::now();
    let n = tokio::task::spawn_blocking(move || {
        let mut n = 0;
        for g in groups {
            for chunk in g.chunks(256) {
                n += app.process_group(chunk).unwrap().readings;
            }
        }
        n
    })
    .await
    .unwrap();
    let el = t.elapsed();
    println!(
        "commit path: {n} readings of {devices} devices in {el:?}: {:.0} readings/s",
        n as f64 / el.as_secs_f64()
    );
    assert_eq!(n, devices * batch * rounds, "every reading applied");
    assert_eq!(
        h.app.metrics.readings.get(),
        (devices * batch * rounds) as u64,
        "every reading counted"
    );
    stop(h, tok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput_end_to_end_through_the_broker() {
    let b = broker();
    let dirs = Dirs::new();
    let (h, tok) = start(config(&b.url(), &dirs, "fw-tp2")).await;
    ready(&h).await;
    let api = Api::new(&h);
    let dev = mqtt(&b, "tp-pub").await;
    let devices = 100;
    let batch = 100;
    let rounds = 10;
    let total = devices * batch * rounds;
    let t = Instant::now();
    for r in 0..rounds {
        for d in 0..devices {
            dev.publish(
                &format!("devices/dev-{d}/telemetry"),
                payload(d, (r * batch) as i64, (r * batch) as u64 + 1, batch),
            )
            .await;
        }
    }
    let published = t.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    while api.metric("forewarn_readings_total").await < total as f64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let el = t.elapsed();
    println!(
        "end to end: {total} readings in {} messages: published in {published:?}, applied in {el:?}: {:.0} readings/s",
        devices * rounds,
        total as f64 / el.as_secs_f64()
    );
    assert_eq!(api.metric("forewarn_readings_total").await, total as f64);
    stop(h, tok).await;
}

/// Publishes `n` single-reading messages over `devices` devices under `prefix/{device}/telemetry`.
async fn publish_singles(
    b: &forewarn::broker::EmbeddedBroker,
    prefix: &str,
    devices: usize,
    n: usize,
) {
    let dev = mqtt(b, &format!("{prefix}-pub")).await;
    for i in 0..n {
        let d = i % devices;
        let k = (i / devices) as i64;
        dev.publish(
            &format!("{prefix}/dev-{d}/telemetry"),
            reading(k, k as u64 + 1, 70.0 + (i % 5) as f64),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn single_reading_messages_daemon_versus_a_trivial_subscriber() {
    let b = broker();
    let n = 20_000;
    let devices = 100;

    // A trivial subscriber: QoS 1, persistent session, manual acks right after receipt.
    let mut o = rumqttc::MqttOptions::new("trivial", "127.0.0.1", b.addr.port());
    o.set_clean_session(false);
    o.set_manual_acks(true);
    let (client, mut el) = rumqttc::AsyncClient::new(o, 4096);
    client
        .subscribe("bench/+/telemetry", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let c2 = client.clone();
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<rumqttc::Publish>();
    tokio::spawn(async move {
        while let Some(p) = ack_rx.recv().await {
            let _ = c2.ack(&p).await;
        }
    });
    tokio::spawn(async move {
        let mut got = 0;
        let mut done = Some(done_tx);
        loop {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) = el.poll().await {
                let _ = ack_tx.send(p);
                got += 1;
                if got == n {
                    if let Some(d) = done.take() {
                        let _ = d.send(());
                    }
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    publish_singles(&b, "bench", devices, n).await;
    done_rx.await.unwrap();
    let trivial = t.elapsed();

    let dirs = Dirs::new();
    let (h, tok) = start(config(&b.url(), &dirs, "fw-tp3")).await;
    ready(&h).await;
    let api = Api::new(&h);
    let t = Instant::now();
    publish_singles(&b, "devices", devices, n).await;
    while api.metric("forewarn_readings_total").await < n as f64 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let daemon = t.elapsed();
    let commits = api.metric("forewarn_commits_total").await;
    let commit_s = api.metric("forewarn_commit_seconds_sum").await;
    println!(
        "forewarn: {commits} commits ({:.1} messages each), {:.3} ms per commit, {:.0}% of the time in commits",
        n as f64 / commits,
        commit_s * 1e3 / commits,
        100.0 * commit_s / daemon.as_secs_f64()
    );
    println!(
        "{n} single-reading messages: trivial subscriber {trivial:?} ({:.0} msg/s), forewarn serve {daemon:?} ({:.0} msg/s)",
        n as f64 / trivial.as_secs_f64(),
        n as f64 / daemon.as_secs_f64()
    );
    stop(h, tok).await;
}
