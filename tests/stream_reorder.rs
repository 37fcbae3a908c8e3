//! Event time, really: whatever order a device's messages arrive in within the tolerance —
//! readings overtaking each other, events and readings of the same hour swapped — the daemon,
//! fed through a real broker into a real store, opens exactly the tickets `forewarn evaluate`
//! opens for the history.
#![cfg(feature = "embedded-broker")]

mod support;

use forewarn::replay::Message;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use support::parity::*;

const TOLERANCE_MS: i64 = 2 * 3_600_000;

/// Event time of a message (both payload kinds carry `ts` as RFC 3339).
fn ts_of(m: &Message) -> i64 {
    let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("payload is JSON");
    forewarn::domain::Timestamp::parse(v["ts"].as_str().expect("ts"))
        .expect("ts parses")
        .as_millis()
}

/// Delays every message by a random amount up to the tolerance (in event time) and publishes in
/// order of delayed time: a message can overtake any other of up to the tolerance earlier, and
/// messages of equal time arrive in random order.
fn shuffle_within_tolerance(messages: Vec<Message>, seed: u64) -> Vec<Message> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut keyed: Vec<(i64, u64, Message)> = messages
        .into_iter()
        .map(|m| {
            let at = ts_of(&m) + rng.random_range(0..=TOLERANCE_MS);
            (at, rng.random::<u64>(), m)
        })
        .collect();
    keyed.sort_by_key(|(at, tie, _)| (*at, *tie));
    keyed.into_iter().map(|(_, _, m)| m).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_arrival_order_within_the_tolerance_gives_the_backtests_tickets(seed in any::<u64>()) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run(seed));
    }
}

async fn run(seed: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let hist = SimHistory::write(&tmp.path().join("history"), 8, 30, 11);
    let mut model = demo_model();
    model.features.window.late_tolerance_ms = TOLERANCE_MS;
    let broker = forewarn::broker::start(&Default::default()).unwrap();
    let setup = DaemonSetup {
        broker_url: broker.url(),
        topic_prefix: "devices".into(),
        client_id: format!("fw-reorder-{seed}"),
        root: tmp.path().join("daemon"),
        replay_chunk: None,
    };
    let mut cfg = daemon_config(&setup, &model, &hist);
    cfg.features.late_tolerance = "2h".parse().unwrap();
    // Longer than any pause of the publisher: only the end of the history is released by it.
    cfg.ingest.reorder_idle = Some("2s".parse().unwrap());
    let backtest = evaluate_tickets(&cfg, model, &hist);
    assert!(
        backtest.len() >= 2 && backtest.iter().any(|t| t.outcome.is_some()),
        "the history must open and settle tickets: {} tickets",
        backtest.len()
    );
    let live =
        daemon_tickets_arriving(cfg, &setup, &hist, |m| shuffle_within_tolerance(m, seed)).await;
    assert_same_tickets(&backtest, &live);
}
