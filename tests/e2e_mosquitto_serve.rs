//! The daemon behind a real Mosquitto broker, fed a simulated fleet by replay's publisher:
//! `FOREWARN_MOSQUITTO=127.0.0.1:1883 cargo test --test e2e_mosquitto_serve -- --include-ignored`
//!
//! Topics carry a per-run prefix, so runs can share one broker.

mod support;

use forewarn::features::MetricStat;
use forewarn::predict::*;
use forewarn::replay::{publish, Message, PublishOptions};
use forewarn::sim::{Fleet, SimConfig, SimEvent};
use std::collections::HashSet;
use support::daemon;
use support::mosquitto::{shared_addr, sim_message};

/// Overheating shows as a hot device: probability passes one half around 78 °C (EW mean over 5
/// readings, so one noisy reading does not open a ticket).
fn overheating_model() -> Artifact {
    let mut a = daemon::hot_model();
    a.name = "overheat-e2e".into();
    a.horizon_hours = 48.0;
    a.features.metrics = vec!["temperature".into()];
    a.features.stats = vec![MetricStat::Ewm(0)];
    let m = &mut a.modes[0];
    m.mode = "overheating".into();
    m.classifier = Estimator::Linear {
        scaler: Scaler {
            mean: vec![78.0],
            std: vec![1.0],
        },
        weights: vec![1.5],
        bias: 0.0,
        link: Link::Logistic,
    };
    m.regressor = None;
    m.threshold_rule = "e2e".into();
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Mosquitto: FOREWARN_MOSQUITTO=host:port (see .ci/run)"]
async fn daemon_behind_mosquitto_processes_every_published_reading_and_opens_one_ticket_per_problem(
) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let prefix = format!("fw-e2e-serve-{}-{nanos}", std::process::id());
    let dirs = daemon::Dirs::new();
    std::fs::remove_file(dirs.models().join("hot.json")).unwrap();
    overheating_model()
        .save(&dirs.models().join("overheating.json"))
        .unwrap();
    forewarn::tls::install_crypto();
    let mut cfg = daemon::config(
        &format!("mqtt://{}", shared_addr()),
        &dirs,
        &format!("{prefix}-daemon"),
    );
    cfg.ingest.telemetry_topics = vec![format!("{prefix}/+/telemetry")];
    cfg.ingest.event_topics = vec![format!("{prefix}/+/events")];
    cfg.ingest.device_id_level = Some(1);
    cfg.dispatch.topic_prefix = format!("{prefix}-tickets");
    let (h, token) = daemon::start(cfg).await;
    daemon::ready(&h).await;
    let api = daemon::Api::new(&h);

    let items: Vec<SimEvent> = Fleet::new(SimConfig {
        devices: 30,
        ticks: 24 * 30,
        malformed_fraction: 0.002,
        seed: 23,
        ..SimConfig::default()
    })
    .collect();
    let count = |f: fn(&SimEvent) -> bool| items.iter().filter(|e| f(e)).count() as f64;
    let readings = count(|e| matches!(e, SimEvent::Reading(_)));
    let events = count(|e| matches!(e, SimEvent::Event(_)));
    let malformed = count(|e| matches!(e, SimEvent::Malformed { .. }));
    assert!(malformed > 0.0);
    let messages: Vec<Message> = items.iter().map(|e| sim_message(&prefix, e)).collect();
    // In chunks below Mosquitto's default per-client queue of 1000 QoS 1 messages (beyond it the
    // broker drops messages for a subscriber that falls behind): after each chunk, wait until the
    // daemon has received it.
    let opts = PublishOptions::new(format!("mqtt://{}", shared_addr()));
    let (mut published, mut acked) = (0u64, 0u64);
    for chunk in messages.chunks(400) {
        let sum = publish(chunk.iter().cloned(), &opts, |_, _| {})
            .await
            .unwrap();
        published += sum.published;
        acked += sum.acked;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while api.metric("forewarn_mqtt_messages_total").await < published as f64
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    assert_eq!(acked, published);
    assert_eq!(published as usize, items.len());

    // Published equals processed: every reading decoded, every malformed payload rejected.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let got = api.metric("forewarn_readings_total").await;
        if got == readings || std::time::Instant::now() > deadline {
            assert_eq!(got, readings, "readings processed");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let text = api.metrics().await;
    let rejected: f64 = text
        .lines()
        .filter(|l| l.starts_with("forewarn_rejected_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(rejected, malformed, "malformed payloads rejected");
    support::poll::eventually("events applied", || async {
        api.metric("forewarn_device_events_total").await == events
    })
    .await;
    assert_eq!(
        api.metric("forewarn_readings_dropped_total{reason=\"duplicate\"}")
            .await,
        0.0
    );

    // Overheating devices got tickets, at most one live per device and mode, and failures or
    // maintenance settled some of them.
    let tickets = api.tickets("").await;
    assert!(!tickets.is_empty(), "no ticket opened");
    let mut live = HashSet::new();
    for t in &tickets {
        let status = t["status"].as_str().unwrap();
        if matches!(status, "open" | "acknowledged" | "scheduled") {
            let key = (t["device_id"].to_string(), t["failure_mode"].to_string());
            assert!(live.insert(key), "two live tickets for one problem");
        }
    }
    assert!(
        tickets.iter().any(|t| t["status"] == "resolved"),
        "no ticket settled by a failure or maintenance event"
    );
    daemon::stop(h, token).await;
}
