//! A commit group's devices are applied by several threads (`ingest.apply_threads`), each device
//! by one of them in arrival order: the tickets, their evidence and every device's state are the
//! same as with one thread, and the same as `forewarn evaluate`'s.
#![cfg(feature = "embedded-broker")]

mod support;

use forewarn::domain::Ticket;
use forewarn::store::TicketFilter;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use support::parity::*;
use tokio_util::sync::CancellationToken;

/// Runs the history through a daemon applying with `threads` threads, fed straight into its
/// commit path in groups of 256 messages (every group holds many devices); returns its tickets
/// and every device's state (encoded: a window may hold NaN, which equals nothing) once the
/// reorder buffers are released.
async fn run(
    hist: &SimHistory,
    root: &Path,
    threads: usize,
) -> (Vec<Ticket>, BTreeMap<String, Vec<u8>>) {
    let (_broker, mut cfg) = fed_daemon_config(hist, root, &format!("fw-apply-{threads}"));
    cfg.ingest.apply_threads = threads;
    cfg.ingest.reorder_idle = Some("50ms".parse().unwrap());
    let shutdown = CancellationToken::new();
    let handle = forewarn::serve::run(cfg, shutdown.clone())
        .await
        .expect("daemon starts");
    let app = handle.app.clone();
    let msgs = inbound(hist);
    let a = app.clone();
    tokio::task::spawn_blocking(move || {
        for group in msgs.chunks(256) {
            a.process_group(group).expect("group commits");
        }
    })
    .await
    .unwrap();
    // What each device still holds for event-time order goes once it has been idle.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let a = app.clone();
    tokio::task::spawn_blocking(move || a.release_idle().expect("idle release"))
        .await
        .unwrap();
    let tickets = app
        .store
        .tickets(&TicketFilter::default())
        .expect("read tickets");
    let mut states = BTreeMap::new();
    for d in app.fleet().devices() {
        if let Some(s) = app.device_state(&d.id).expect("device state") {
            states.insert(d.id.to_string(), s.encode());
        }
    }
    drop(app);
    shutdown.cancel();
    handle.stopped(Duration::from_secs(10)).await;
    (tickets, states)
}

/// A ticket as both runs must agree on it: everything but the id (each data directory keys its
/// ids with its own secret).
fn without_id(tickets: &[Ticket]) -> BTreeMap<String, serde_json::Value> {
    tickets
        .iter()
        .map(|t| {
            let mut v = serde_json::to_value(t).unwrap();
            v.as_object_mut().unwrap().remove("id");
            (
                format!("{} {} {}", t.device_id, t.failure_mode, t.opened_at),
                v,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apply_threads_give_the_tickets_and_states_of_one() {
    forewarn::tls::install_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let hist = SimHistory::write(&tmp.path().join("history"), 24, 45, 11);
    let cfg = daemon_config(
        &DaemonSetup {
            broker_url: "mqtt://127.0.0.1:1".into(),
            topic_prefix: "devices".into(),
            client_id: "fw-apply-backtest".into(),
            root: tmp.path().join("backtest"),
            replay_chunk: None,
        },
        &demo_model(),
        &hist,
    );
    let backtest = evaluate_tickets(&cfg, demo_model(), &hist);
    assert!(
        backtest.len() >= 5 && backtest.iter().any(|t| t.outcome.is_some()),
        "the history must open and settle tickets: {} tickets",
        backtest.len()
    );

    let (one, one_states) = run(&hist, &tmp.path().join("one"), 1).await;
    let (two, two_states) = run(&hist, &tmp.path().join("two"), 2).await;
    assert_same_tickets(&backtest, &two);
    assert_eq!(
        without_id(&one),
        without_id(&two),
        "tickets (with evidence and history) differ between one and two apply threads"
    );
    assert_eq!(one_states.len(), 24, "every device has a state");
    assert!(
        one_states == two_states,
        "device states differ between one and two apply threads"
    );
}
