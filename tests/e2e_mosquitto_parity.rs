//! Backtest = live through a real Mosquitto broker:
//! `FOREWARN_MOSQUITTO=127.0.0.1:1883 cargo test --test e2e_mosquitto_parity -- --include-ignored`
//!
//! Topics and client ids carry a per-run prefix, so runs can share one broker.

mod support;

use support::parity::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Mosquitto: FOREWARN_MOSQUITTO=host:port (see .ci/run)"]
async fn daemon_behind_mosquitto_opens_exactly_the_tickets_the_backtest_opens() {
    let Ok(addr) = std::env::var("FOREWARN_MOSQUITTO") else {
        support::ci::cannot_run(
            "e2e_mosquitto_parity",
            "FOREWARN_MOSQUITTO is not set (e.g. 127.0.0.1:1883)",
        );
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let prefix = format!("fw-parity-{}-{nanos}", std::process::id());

    let tmp = tempfile::tempdir().unwrap();
    let hist = SimHistory::write(&tmp.path().join("history"), 20, 40, 17);
    let failures = hist.failures_by_mode();
    assert!(
        failures.len() >= 2 && failures.values().sum::<usize>() >= 5,
        "history must hold several failures of more than one mode: {failures:?}"
    );
    let model = demo_model();
    let setup = DaemonSetup {
        broker_url: format!("mqtt://{addr}"),
        topic_prefix: prefix.clone(),
        client_id: prefix.clone(),
        root: tmp.path().join("daemon"),
        // Well below Mosquitto's default per-client queue of 1000 QoS 1 messages: with 800,
        // Mosquitto logged "Outgoing messages are being dropped" for the daemon in 4 of 8 runs.
        replay_chunk: Some(400),
    };
    let cfg = daemon_config(&setup, &model, &hist);
    let backtest = evaluate_tickets(&cfg, model, &hist);
    assert!(
        backtest.len() >= 5,
        "the backtest must open tickets to compare: {}",
        backtest.len()
    );
    let live = daemon_tickets(cfg, &setup, &hist).await;
    assert_same_tickets(&backtest, &live);
}
