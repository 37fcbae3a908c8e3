//! Sparkplug B from a third-party edge node (`pysparkplug`) through a real Mosquitto broker:
//! `FOREWARN_MOSQUITTO=127.0.0.1:1883 cargo test --test e2e_mosquitto_sparkplug -- --include-ignored`
//!
//! The Sparkplug group carries a per-run suffix, so runs can share one broker.

mod ci_support;
mod common;
mod sparkplug_support;

fn broker_addr() -> String {
    std::env::var("FOREWARN_MOSQUITTO").unwrap_or_else(|_| "127.0.0.1:1883".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Mosquitto: FOREWARN_MOSQUITTO=host:port (see .ci/run)"]
async fn a_pysparkplug_edge_node_behind_mosquitto_is_ingested_asked_to_rebirth_and_recorded() {
    let test = "a_pysparkplug_edge_node_behind_mosquitto_is_ingested_asked_to_rebirth_and_recorded";
    if !sparkplug_support::pysparkplug_available(test) {
        return;
    }
    let addr = broker_addr();
    let (host, port) = addr
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.parse::<u16>().unwrap()))
        .unwrap();
    if std::net::TcpStream::connect((host.as_str(), port)).is_err() {
        ci_support::cannot_run(test, &format!("no MQTT broker at {addr}"));
        return;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let group = format!("fw-e2e-{}-{nanos}", std::process::id());
    forewarn::tls::install_crypto();
    let dirs = common::Dirs::new();
    let mut cfg = common::config(&format!("mqtt://{addr}"), &dirs, &format!("{group}-daemon"));
    // Only the Sparkplug group of this run (no JSON device traffic from other runs).
    cfg.ingest.telemetry_topics = vec![format!("{group}/+/telemetry")];
    cfg.ingest.event_topics = vec![format!("{group}/+/events")];
    cfg.dispatch.topic_prefix = format!("{group}-tickets");
    sparkplug_support::enable(&mut cfg, &group);
    let (h, token) = common::start(cfg).await;
    common::ready(&h).await;
    let run =
        sparkplug_support::run_edge_node(&host, port, &group, "gw1", "press", common::T0).await;
    sparkplug_support::assert_ingested(&h, &run, &group, "gw1", "press").await;
    common::stop(h, token).await;
}
