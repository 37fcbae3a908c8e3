//! Backtest = live: `forewarn evaluate` over a history and the running daemon fed the same history
//! through a real broker open exactly the same tickets, settled the same way.
#![cfg(feature = "embedded-broker")]

mod support;

use forewarn::config::Config;
use support::parity::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_opens_exactly_the_tickets_the_backtest_opens_for_the_same_history() {
    let tmp = tempfile::tempdir().unwrap();
    let hist = SimHistory::write(&tmp.path().join("history"), 24, 45, 11);
    let failures = hist.failures_by_mode();
    assert!(
        failures.len() >= 2 && failures.values().sum::<usize>() >= 5,
        "history must hold several failures of more than one mode: {failures:?}"
    );

    let model = demo_model();
    let broker = forewarn::broker::start(&Default::default()).unwrap();
    let setup = DaemonSetup {
        broker_url: broker.url(),
        topic_prefix: "devices".into(),
        client_id: "fw-parity".into(),
        root: tmp.path().join("daemon"),
        replay_chunk: None,
    };
    let cfg = daemon_config(&setup, &model, &hist);
    assert_eq!(
        cfg.engine_config(),
        Config::default().engine_config(),
        "both sides run the default engine configuration"
    );

    let backtest = evaluate_tickets(&cfg, model, &hist);
    let modes: std::collections::BTreeSet<&str> =
        backtest.iter().map(|t| t.failure_mode.as_str()).collect();
    assert!(
        backtest.len() >= 5 && modes.len() >= 2,
        "the backtest must open tickets of several modes to compare: {} tickets, modes {modes:?}",
        backtest.len()
    );
    assert!(
        backtest.iter().any(|t| t.outcome.is_some()),
        "some tickets must be settled by events"
    );

    let live = daemon_tickets(cfg, &setup, &hist).await;
    assert_same_tickets(&backtest, &live);
}
