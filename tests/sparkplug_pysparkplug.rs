//! Sparkplug B from a third-party edge node (`pysparkplug`, PyPI) through the in-process broker:
//! births, data by alias, a `seq` gap, an unknown alias and deaths become readings, rebirth
//! requests (decoded by pysparkplug), counted losses and error events. The same scenario runs
//! through Mosquitto in `e2e_mosquitto_sparkplug`.
#![cfg(feature = "embedded-broker")]

mod support;

use support::daemon::*;
use support::sparkplug;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pysparkplug_edge_node_is_ingested_asked_to_rebirth_and_its_deaths_recorded() {
    let test = "a_pysparkplug_edge_node_is_ingested_asked_to_rebirth_and_its_deaths_recorded";
    if !support::ci::python_can_import(test, &["pysparkplug"]) {
        return;
    }
    let b = broker();
    let dirs = Dirs::new();
    let mut cfg = config(&b.url(), &dirs, "fw-sparkplug");
    sparkplug::enable(&mut cfg, "plant");
    let (h, tok) = start(cfg).await;
    ready(&h).await;
    let run =
        sparkplug::run_edge_node("127.0.0.1", b.addr.port(), "plant", "gw1", "press", T0).await;
    sparkplug::assert_ingested(&h, &run, "plant", "gw1", "press").await;
    stop(h, tok).await;
}
