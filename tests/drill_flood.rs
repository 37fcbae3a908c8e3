//! Drills: a flood of distinct device ids, and oversized payloads. With
//! `ingest.max_devices_in_memory` set low, the daemon evicts idle devices (counted), keeps its
//! device states in memory within the bound, and keeps serving a known device whose readings
//! are interleaved with the flood. Oversized payloads are rejected (`too_large`) — including
//! one larger than the daemon's MQTT packet limit — and the daemon keeps serving.
//! `FOREWARN_DRILL_FLOOD_DEVICES` sets the flood size (default 50 000).
#![cfg(feature = "embedded-broker")]

mod support;

use forewarn::features::DeviceState;
use std::time::{Duration, Instant};
use support::daemon::*;
use support::poll::wait_until;

const MAX_IN_MEMORY: usize = 1000;

fn applied(store: &forewarn::store::Store, id: &str) -> u32 {
    store
        .load_state(id)
        .ok()
        .flatten()
        .and_then(|b| DeviceState::decode(&b))
        .map_or(0, |s| s.readings)
}

/// Resident and peak resident memory of a process, KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_device_ids_is_evicted_within_the_bound_and_known_devices_keep_working() {
    let flood: usize = std::env::var("FOREWARN_DRILL_FLOOD_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let b = broker();
    let dirs = Dirs::new();
    let mut cfg = config(&b.url(), &dirs, "fw-flood");
    cfg.ingest.max_devices_in_memory = MAX_IN_MEMORY;
    let addr = support::net::free_addr();
    cfg.api.listen = addr.clone();
    let path = support::process::write_config(dirs.path(), &cfg);
    let log = dirs.path().join("serve.log");
    let http = http_with_token(TOKEN);
    // The daemon as its own process, so its memory is measured apart from the broker's.
    let mut child = support::process::spawn_serve(&path, &log, "warn");
    support::process::wait_ready(&http, &addr).await;
    let m = |name: &'static str| {
        let (http, addr) = (http.clone(), addr.clone());
        async move {
            support::http::metric(&http, &addr, name)
                .await
                .unwrap_or(0.0)
        }
    };
    let (rss_start, _) = rss_kib(child.id());
    let dev = mqtt(&b, "flood-pub").await;
    let started = Instant::now();
    let known = degrading(48);
    let every = flood / known.len();
    let mut k = 0;
    let mut rss_half = 0;
    for i in 0..flood {
        dev.publish(
            &format!("devices/flood-{i:07}/telemetry"),
            reading(0, 1, 70.0),
        )
        .await;
        if i % every == 0 && k < known.len() {
            let (hr, t) = known[k];
            dev.publish("devices/known-1/telemetry", reading(hr, k as u64 + 1, t))
                .await;
            k += 1;
        }
        if i == flood / 2 {
            rss_half = rss_kib(child.id()).0;
        }
    }
    for (n, (hr, t)) in known.iter().enumerate().skip(k) {
        dev.publish("devices/known-1/telemetry", reading(*hr, n as u64 + 1, *t))
            .await;
    }
    let total = (flood + known.len()) as f64;
    let deadline = Instant::now() + Duration::from_secs(50 + flood as u64 / 2_000);
    let mut peak_in_memory = 0.0f64;
    loop {
        let n = m("forewarn_readings_total").await;
        peak_in_memory = peak_in_memory.max(m("forewarn_devices_in_memory").await);
        if n >= total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} of {total} readings in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed();
    // Each device's newest reading is held for event-time order until its idle timer (100 ms in
    // the test configuration); give the release a moment before stopping the daemon.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let evictions = m("forewarn_device_evictions_total").await;
    let in_memory = m("forewarn_devices_in_memory").await;
    let (rss_end, hwm) = rss_kib(child.id());
    eprintln!(
        "flood: {flood} device ids in {elapsed:?}; in memory now {in_memory}, peak seen \
         {peak_in_memory}; evictions {evictions}; daemon RSS {rss_start} KiB at start, \
         {rss_half} KiB half-way, {rss_end} KiB at the end, peak {hwm} KiB"
    );
    let tickets = support::http::get(
        &http,
        &format!("http://{addr}/api/v1/tickets?device_id=known-1"),
    )
    .await
    .map(|(_, b)| b.matches("\"known-1\"").count())
    .unwrap_or(0);
    assert!(support::process::sigterm(&mut child).success());
    assert!(in_memory <= MAX_IN_MEMORY as f64, "{in_memory} in memory");
    assert!(
        peak_in_memory <= MAX_IN_MEMORY as f64 + 300.0,
        "peak {peak_in_memory}"
    );
    assert!(
        evictions >= (flood - MAX_IN_MEMORY) as f64,
        "{evictions} evictions for {flood} ids"
    );
    assert!(tickets >= 1, "the known device's problem was still caught");
    let store = forewarn::store::Store::open(&dirs.data(), 8 << 20).unwrap();
    // Evicted states stay on disk: the first flood device is still known.
    assert_eq!(applied(&store, "flood-0000000"), 1);
    assert_eq!(applied(&store, "known-1"), known.len() as u32);
    assert_eq!(store.tickets(&Default::default()).unwrap().len(), 1);
    // Memory: the second half of the flood must not grow the daemon much (bounded states).
    assert!(
        rss_end.saturating_sub(rss_half) < 64 * 1024,
        "daemon RSS grew from {rss_half} to {rss_end} KiB over the second half"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_payloads_are_rejected_and_the_daemon_keeps_serving() {
    let b = forewarn::broker::start(&forewarn::broker::BrokerOptions {
        max_payload_bytes: 8 << 20,
        max_inflight: 1000,
    })
    .unwrap();
    forewarn::tls::install_crypto();
    if std::env::var("FOREWARN_DRILL_TRACE").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info,forewarn=debug,rumqttd=warn")
            .try_init();
    }
    let dirs = Dirs::new();
    let mut cfg = config(&b.url(), &dirs, "fw-oversize");
    cfg.ingest.max_payload_bytes = 4096;
    cfg.broker.max_packet_bytes = 256 * 1024;
    let (h, tok) = start(cfg).await;
    ready(&h).await;
    let api = Api::new(&h);
    let mut o = rumqttc::MqttOptions::new("oversize-pub", "127.0.0.1", b.addr.port());
    o.set_max_packet_size(16 << 20, 16 << 20);
    let (dev, mut el) = rumqttc::AsyncClient::new(o, 100);
    tokio::spawn(async move { while el.poll().await.is_ok() {} });
    let qos = rumqttc::QoS::AtLeastOnce;
    // Over the ingest limit (but a valid MQTT packet for the daemon).
    let big = format!(
        "{{\"ts\": {T0}, \"metrics\": {{\"temp\": 70, \"pad\": \"{}\"}}}}",
        "x".repeat(8000)
    );
    dev.publish("devices/big-1/telemetry", qos, false, big)
        .await
        .unwrap();
    // Over the daemon's MQTT packet limit.
    let huge = format!(
        "{{\"ts\": {T0}, \"metrics\": {{\"temp\": 70, \"pad\": \"{}\"}}}}",
        "x".repeat(1 << 20)
    );
    dev.publish("devices/huge-1/telemetry", qos, false, huge)
        .await
        .unwrap();
    for (i, (hr, t)) in degrading(48).iter().enumerate() {
        dev.publish(
            "devices/after-1/telemetry",
            qos,
            false,
            reading(*hr, i as u64 + 1, *t),
        )
        .await
        .unwrap();
    }
    let app = h.app.clone();
    let state_of = |id: &str| {
        app.device_state(id)
            .unwrap()
            .map_or(0, |s: DeviceState| s.readings)
    };
    wait_until(
        "the device after the oversized payloads is served",
        Duration::from_secs(20),
        || async { state_of("after-1") == 48 },
    )
    .await;
    // Both are over ingest.max_payload_bytes (a message redelivered after the disconnect may
    // be counted twice; it is applied never).
    let too_large = api
        .metric("forewarn_rejected_total{reason=\"too_large\"}")
        .await;
    assert!(
        (2.0..=3.0).contains(&too_large),
        "{too_large} too_large rejections"
    );
    assert_eq!(state_of("big-1"), 0);
    assert_eq!(state_of("huge-1"), 0);
    assert_eq!(api.tickets("?device_id=after-1").await.len(), 1);
    stop(h, tok).await;
}
