//! Throughput of the daemon's hot path (run with `--ignored --nocapture`, ideally `--release`).

mod common;

use common::*;
use forewarn::ingest::mqtt::Inbound;
use std::time::{Duration, Instant};

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
    let mut groups = Vec::new();
    for r in 0..rounds {
        let mut msgs = Vec::new();
        for d in 0..devices {
            let p = payload(d, (r * batch) as i64, (r * batch) as u64 + 1, batch);
            msgs.push(Inbound {
                publish: rumqttc::Publish::new(
                    format!("devices/dev-{d}/telemetry"),
                    rumqttc::QoS::AtLeastOnce,
                    p,
                ),
                received: Instant::now(),
                received_ms: 0,
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
