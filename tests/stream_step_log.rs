//! Device states are snapshots plus the step log: a commit writes one log record with the
//! steps of its group, and the devices' whole states are written at checkpoints (every
//! `store.snapshot_every` steps, at shutdown). Killed (SIGKILL) with steps only in the log, the
//! real `forewarn serve` binary restarts to exactly the state and the tickets of a run that was
//! never interrupted: the log is replayed through the same code.
#![cfg(feature = "embedded-broker")]

mod support;

use forewarn::features::DeviceState;
use forewarn::store::Store;
use std::time::Duration;
use support::daemon::*;
use support::poll::eventually;
use support::process::{sigterm, spawn_serve, wait_ready, write_config};

const DEVICES: [&str; 3] = ["jr-1", "jr-2", "jr-3"];
/// Hours published before the kill: the degrading device's first reading at the ticket level
/// (hour 34) is applied, so its streak (one of the two the model needs) lives only in the
/// step log when the daemon dies.
const BEFORE_KILL: i64 = 35;
const HOURS: i64 = 48;

/// Device 0 degrades; the others stay healthy.
fn series(i: usize) -> Vec<(i64, f64)> {
    let d = degrading(HOURS);
    if i == 0 {
        d
    } else {
        d.into_iter()
            .map(|(h, _)| (h, 70.0 + (h % 3) as f64 * 0.5))
            .collect()
    }
}

async fn publish(dev: &Mqtt, hours: std::ops::Range<i64>) {
    for h in hours {
        for (i, d) in DEVICES.iter().enumerate() {
            let t = series(i)[h as usize].1;
            dev.publish(
                &format!("devices/{d}/telemetry"),
                reading(h, h as u64 + 1, t),
            )
            .await;
        }
    }
}

fn log_config(
    b: &forewarn::broker::EmbeddedBroker,
    dirs: &Dirs,
    id: &str,
) -> forewarn::config::Config {
    let mut cfg = config(&b.url(), dirs, id);
    // No checkpoint within this test: after a device's first commit, its steps are in the log
    // only.
    cfg.store.snapshot_every = 1000;
    cfg.ingest.commit_group = 4;
    cfg
}

/// Every device's state, encoded (NaN-safe comparison), and the tickets as (device, mode,
/// opened, status) — not the id: each data directory keys its ticket ids with its own secret.
fn outcome(store: &Store) -> (Vec<Vec<u8>>, Vec<String>) {
    let states = DEVICES
        .iter()
        .map(|d| {
            store
                .load_state(d)
                .unwrap()
                .and_then(|b| DeviceState::decode(&b))
                .map(|s| s.encode())
                .unwrap_or_default()
        })
        .collect();
    let mut tickets: Vec<String> = store
        .tickets(&Default::default())
        .unwrap()
        .into_iter()
        .map(|t| {
            format!(
                "{} {} {} {:?} p={:.6}",
                t.device_id, t.failure_mode, t.opened_at, t.status, t.probability
            )
        })
        .collect();
    tickets.sort();
    (states, tickets)
}

async fn wait_readings(addr: &str, n: f64) {
    let http = reqwest::Client::new();
    support::poll::wait_until("every reading applied", Duration::from_secs(30), || async {
        support::http::metric(&http, addr, "forewarn_readings_total")
            .await
            .is_some_and(|v| v >= n)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_log_and_checkpoint_restarts_to_the_uninterrupted_state_and_tickets() {
    let b = broker();

    // The uninterrupted run (in-process; the same code as the binary).
    let ref_dirs = Dirs::new();
    let (h, tok) = start(log_config(&b, &ref_dirs, "fw-steplog-ref")).await;
    ready(&h).await;
    let dev = mqtt(&b, "steplog-ref-pub").await;
    publish(&dev, 0..HOURS).await;
    let app = h.app.clone();
    eventually("the reference applied every reading", || async {
        DEVICES.iter().all(|d| {
            app.device_state(d)
                .unwrap()
                .is_some_and(|s| s.readings == HOURS as u32)
        })
    })
    .await;
    // The last readings are held for event-time order until the idle timer releases them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(app);
    stop(h, tok).await;
    let want = outcome(&Store::open(&ref_dirs.data(), 8 << 20).unwrap());
    assert_eq!(
        want.1.len(),
        1,
        "one ticket, for the degrading device: {:?}",
        want.1
    );
    assert!(
        want.1[0].contains(&forewarn::domain::Timestamp::from_millis(T0 + 35 * HOUR).format()),
        "opened at hour 35, its second reading at the level: {:?}",
        want.1
    );

    // The same stream, the daemon killed with every step after the first in the log only.
    let dirs = Dirs::new();
    let mut cfg = log_config(&b, &dirs, "fw-steplog-kill");
    let addr = support::net::free_addr();
    cfg.api.listen = addr.clone();
    let path = write_config(dirs.path(), &cfg);
    let log = dirs.path().join("serve.log");
    let mut child = spawn_serve(&path, &log, "warn");
    wait_ready(&reqwest::Client::new(), &addr).await;
    let dev = mqtt(&b, "steplog-kill-pub").await;
    publish(&dev, 0..BEFORE_KILL).await;
    wait_readings(&addr, (BEFORE_KILL as usize * DEVICES.len()) as f64).await;
    // Let the idle timer release (and log) what the buffers held, then kill.
    tokio::time::sleep(Duration::from_millis(500)).await;
    child.kill().unwrap();
    child.wait().unwrap();

    // On disk: snapshots of the first reading only, every later step in the log.
    {
        let store = Store::open(&dirs.data(), 8 << 20).unwrap();
        for d in DEVICES {
            let snap = DeviceState::decode(&store.load_state(d).unwrap().unwrap()).unwrap();
            assert!(
                snap.readings < BEFORE_KILL as u32,
                "{d}: the snapshot lags ({} readings)",
                snap.readings
            );
        }
        assert!(
            !store.log().unwrap().is_empty(),
            "the rest is in the step log"
        );
        assert!(
            store.tickets(&Default::default()).unwrap().is_empty(),
            "no ticket yet: the streak is one reading long"
        );
    }

    // Restarted: the log is replayed; the stream goes on.
    let mut child = spawn_serve(&path, &log, "info");
    wait_ready(&reqwest::Client::new(), &addr).await;
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("replayed the step log of 3 device(s)"),
        "start-up replays the log left by the kill: {said}"
    );
    publish(&dev, BEFORE_KILL..HOURS).await;
    wait_readings(
        &addr,
        ((HOURS - BEFORE_KILL) as usize * DEVICES.len()) as f64,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sigterm(&mut child).success(), "SIGTERM is a clean shutdown");
    // One store for both checks: sled keeps a closed store's lock a moment past the close.
    let store = Store::open(&dirs.data(), 8 << 20).unwrap();
    let got = outcome(&store);
    assert_eq!(got.1, want.1, "the same ticket, opened at the same reading");
    for (i, d) in DEVICES.iter().enumerate() {
        assert!(
            got.0[i] == want.0[i],
            "{d}: the state after kill -9 and replay equals the uninterrupted one"
        );
    }
    assert!(
        store.log().unwrap().is_empty(),
        "a clean shutdown checkpoints: nothing left to replay"
    );
}

/// Starts a daemon on `cfg`, publishes every device's hours and waits until the last readings
/// (held for event-time order until the idle timer) are applied and logged. Returns the daemon,
/// its API address and `forewarn_checkpoints_total` as it was once ready.
async fn run_stream(
    b: &forewarn::broker::EmbeddedBroker,
    cfg: forewarn::config::Config,
    publisher: &str,
) -> (
    forewarn::serve::Handle,
    tokio_util::sync::CancellationToken,
    String,
    Option<f64>,
) {
    let (h, tok) = start(cfg).await;
    ready(&h).await;
    let addr = h.api_addr.to_string();
    let at_start = metric(&addr, "forewarn_checkpoints_total").await;
    let dev = mqtt(b, publisher).await;
    publish(&dev, 0..HOURS).await;
    wait_readings(&addr, (DEVICES.len() as i64 * HOURS) as f64).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    (h, tok, addr, at_start)
}

async fn metric(addr: &str, name: &str) -> Option<f64> {
    support::http::metric(&reqwest::Client::new(), addr, name).await
}

/// What a crash would replay is on `/metrics`: `forewarn_step_log_steps` counts the steps
/// logged since the last checkpoint and `forewarn_checkpoints_total` the checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_steps_a_crash_would_replay_and_the_checkpoints_are_metrics() {
    let b = broker();
    let readings = (DEVICES.len() as i64 * HOURS) as f64;
    let devices = DEVICES.len() as f64;

    // No checkpoint while the stream flows: every step after a device's first commit (which
    // writes its whole state) stays in the log, with the idle releases.
    let dirs = Dirs::new();
    let cfg = log_config(&b, &dirs, "fw-steplog-gauge");
    let (h, tok, addr, at_start) = run_stream(&b, cfg, "steplog-gauge-pub").await;
    assert_eq!(at_start, Some(1.0), "the checkpoint at start-up");
    let logged = metric(&addr, "forewarn_step_log_steps").await;
    assert!(
        logged.is_some_and(|n| n >= readings - devices && n <= readings + devices),
        "{logged:?} steps logged for {readings} readings of {devices} devices"
    );
    assert_eq!(metric(&addr, "forewarn_checkpoints_total").await, at_start);
    stop(h, tok).await;

    // A checkpoint every 10 steps: the count grows, and what is left to replay stays below.
    let dirs = Dirs::new();
    let mut cfg = log_config(&b, &dirs, "fw-steplog-gauge-10");
    cfg.store.snapshot_every = 10;
    let (h, tok, addr, _) = run_stream(&b, cfg, "steplog-gauge-10-pub").await;
    // At least one checkpoint per 20 steps logged (a commit of up to 4 readings and an idle
    // release may take the log past 10 before the checkpoint).
    let checkpoints = metric(&addr, "forewarn_checkpoints_total").await;
    assert!(
        checkpoints.is_some_and(|n| n >= 1.0 + ((readings - devices) / 20.0).floor()),
        "{checkpoints:?} checkpoints for {readings} readings"
    );
    let left = metric(&addr, "forewarn_step_log_steps").await;
    assert!(
        left.is_some_and(|n| n < 10.0),
        "{left:?} steps left in the log"
    );
    stop(h, tok).await;
}
