//! Sparkplug B from a third-party edge node (`pysparkplug`) through a real Mosquitto broker:
//! `FOREWARN_MOSQUITTO=127.0.0.1:1883 cargo test --test e2e_mosquitto_sparkplug -- --include-ignored`
//!
//! The Sparkplug group carries a per-run suffix, so runs can share one broker.

mod support;

use support::daemon;
use support::mosquitto::shared_addr;
use support::sparkplug;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Mosquitto: FOREWARN_MOSQUITTO=host:port (see .ci/run)"]
async fn a_pysparkplug_edge_node_behind_mosquitto_is_ingested_asked_to_rebirth_and_recorded() {
    let test = "a_pysparkplug_edge_node_behind_mosquitto_is_ingested_asked_to_rebirth_and_recorded";
    if !support::ci::python_can_import(test, &["pysparkplug"]) {
        return;
    }
    let addr = shared_addr();
    let (host, port) = addr
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.parse::<u16>().unwrap()))
        .unwrap();
    if std::net::TcpStream::connect((host.as_str(), port)).is_err() {
        support::ci::cannot_run(test, &format!("no MQTT broker at {addr}"));
        return;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let group = format!("fw-e2e-{}-{nanos}", std::process::id());
    forewarn::tls::install_crypto();
    let dirs = daemon::Dirs::new();
    let mut cfg = daemon::config(&format!("mqtt://{addr}"), &dirs, &format!("{group}-daemon"));
    // Only the Sparkplug group of this run (no JSON device traffic from other runs).
    cfg.ingest.telemetry_topics = vec![format!("{group}/+/telemetry")];
    cfg.ingest.event_topics = vec![format!("{group}/+/events")];
    cfg.dispatch.topic_prefix = format!("{group}-tickets");
    sparkplug::enable(&mut cfg, &group);
    let (h, token) = daemon::start(cfg).await;
    daemon::ready(&h).await;
    let run = sparkplug::run_edge_node(&host, port, &group, "gw1", "press", daemon::T0).await;
    sparkplug::assert_ingested(&h, &run, &group, "gw1", "press").await;
    daemon::stop(h, token).await;
}
