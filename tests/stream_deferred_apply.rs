//! The processing thread hands each group's batch to the store without applying it (the flusher
//! applies it, then flushes). Every other store operation applies what is deferred first, so an
//! API transition made between a group and its flush reads the group's tickets and is never
//! overwritten by them: the same groups and transitions, deferred or committed one by one, leave
//! the same tickets and device states.
#![cfg(feature = "embedded-broker")]

mod support;

use forewarn::app::Transition;
use forewarn::domain::{Status, Ticket};
use forewarn::store::{Store, TicketFilter};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use support::parity::*;
use tokio_util::sync::CancellationToken;

/// A ticket as both runs must agree on it: not its id (each data directory keys ids with its
/// own secret) nor wall-clock times, but its status, probability and the actions of its history.
fn summary(tickets: &[Ticket]) -> BTreeMap<String, String> {
    tickets
        .iter()
        .map(|t| {
            let actions: Vec<String> = t
                .history
                .iter()
                .map(|h| format!("{}:{}", h.actor, h.action))
                .collect();
            (
                format!("{} {} {}", t.device_id, t.failure_mode, t.opened_at),
                format!(
                    "{:?} p={:.9} {}",
                    t.status,
                    t.probability,
                    actions.join(",")
                ),
            )
        })
        .collect()
}

/// Runs the history in groups of 256 through `process_group_applied` (`deferred`) or
/// `process_group`, acknowledging after each group every open ticket of an even-numbered
/// device through the API path; returns the tickets and device states (what each device's
/// reorder buffer still holds apart) read back from the data directory after shutdown, and how
/// many transitions were made.
async fn run(
    hist: &SimHistory,
    root: &Path,
    deferred: bool,
) -> (BTreeMap<String, String>, BTreeMap<String, Vec<u8>>, usize) {
    let (_broker, mut cfg) = fed_daemon_config(hist, root, &format!("fw-deferred-{deferred}"));
    // No idle release during the run: the daemon's timer would apply held items (and settle
    // tickets) between a group and the transitions that follow it, differently in each run.
    cfg.ingest.reorder_idle = Some("1h".parse().unwrap());
    // Checkpoints and their deferred snapshots within the run.
    cfg.store.snapshot_every = 500;
    let data = cfg.store.data_dir.clone();
    let shutdown = CancellationToken::new();
    let handle = forewarn::serve::run(cfg, shutdown.clone())
        .await
        .expect("daemon starts");
    let app = handle.app.clone();
    let msgs = inbound(hist);
    let a = app.clone();
    let acked = tokio::task::spawn_blocking(move || {
        let tickets = a.tickets();
        let mut acked = 0;
        for group in msgs.chunks(256) {
            if deferred {
                a.process_group_applied(group).expect("group deferred");
            } else {
                a.process_group(group).expect("group commits");
            }
            let open = a
                .store
                .tickets(&TicketFilter {
                    status: Some(Status::Open),
                    ..Default::default()
                })
                .expect("read tickets");
            for t in open {
                let even = t
                    .device_id
                    .chars()
                    .last()
                    .and_then(|c| c.to_digit(10))
                    .is_some_and(|d| d % 2 == 0);
                if even {
                    tickets
                        .transition(Transition::to(
                            &t.id,
                            Status::Acknowledged,
                            "tester",
                            "seen",
                        ))
                        .expect("acknowledged");
                    acked += 1;
                }
            }
        }
        a.store.flush().expect("flush");
        acked
    })
    .await
    .unwrap();
    drop(app);
    shutdown.cancel();
    handle.stopped(Duration::from_secs(10)).await;
    // A task that outlived the stop's grace on a loaded machine still holds the store (sled
    // locks its directory while any handle is open): reopen once the last handle is gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let store = loop {
        match Store::open(&data, 16 << 20) {
            Ok(s) => break s,
            Err(e)
                if format!("{e:?}").contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("reopen the data directory: {e}"),
        }
    };
    let tickets = store.tickets(&TicketFilter::default()).expect("tickets");
    let states = store
        .states()
        .expect("states")
        .into_iter()
        .filter_map(|(d, b)| forewarn::features::DeviceState::decode(&b).map(|s| (d, s.encode())))
        .collect();
    (summary(&tickets), states, acked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_between_deferred_groups_and_their_flush_are_kept() {
    forewarn::tls::install_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let hist = SimHistory::write(&tmp.path().join("history"), 24, 45, 11);
    let (sync_tickets, sync_states, sync_acked) = run(&hist, &tmp.path().join("sync"), false).await;
    let (deferred_tickets, deferred_states, deferred_acked) =
        run(&hist, &tmp.path().join("deferred"), true).await;
    assert!(
        sync_acked >= 2,
        "the history must open tickets to acknowledge: {sync_acked}"
    );
    assert_eq!(deferred_acked, sync_acked, "the same transitions were made");
    assert!(
        deferred_tickets
            .values()
            .filter(|s| s.contains("tester:"))
            .count()
            >= 2,
        "acknowledgements are on disk: {deferred_tickets:?}"
    );
    assert_eq!(
        deferred_tickets, sync_tickets,
        "deferred groups give the tickets (status, history) of synchronous commits"
    );
    assert_eq!(sync_states.len(), 24, "every device has a state");
    assert!(
        deferred_states == sync_states,
        "device states differ between deferred and synchronous commits"
    );
}
