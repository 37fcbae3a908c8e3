//! Drill: an active/standby pair (`forewarn serve --standby`) behind a real Mosquitto, the active
//! killed with SIGKILL in the middle of a replayed history.
//!
//! Two `forewarn serve` processes share one data directory and one `broker.client_id` (a
//! persistent MQTT 3.1.1 session); each has its own API address. The first gets the data
//! directory's lock and works; the second answers `/healthz`, `/readyz` (503, `"role":
//! "standby"`) and `/metrics` and waits. A publisher replays a simulated history (20 devices × 40
//! days) at a steady rate; once the active has taken about a third of it, it is killed with
//! SIGKILL. The standby must become ready within [`TAKEOVER_LIMIT`] (the time is printed), resume
//! the broker session (no session note in `/readyz`), and end with every device's state at its
//! last reading (last `seq` and time), no reading missing or late on either process, and exactly
//! the tickets `forewarn evaluate` computes for the same history (device, mode, opened at,
//! status, priority, probability, predicted failure time; not the id, which each data directory
//! keys with its own secret) — none missing, none twice.
//!
//! A lighter test does a planned switch: SIGTERM to the active, the standby takes over and
//! ingests, the old active comes back as the standby and stops cleanly while standing by.
//!
//! Mosquitto starts per test with its own configuration; without the binary the test skips with
//! a note, and fails under `CI=true`.
#![cfg(feature = "embedded-broker")]

mod support;

use forewarn::config::Config;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::daemon;
use support::http::{get, metric, readyz};
use support::mosquitto::{mosquitto_bin, Mosquitto, ROOMY};
use support::net::free_addr;
use support::parity::{
    assert_same_tickets, daemon_config, demo_model, evaluate_tickets, probe_message, DaemonSetup,
    SimHistory, MARKER_T0, PROBE,
};
use support::poll::wait_until;
use support::process::{sigterm, spawn_serve, spawn_serve_with, wait_ready, write_config};

/// The most a takeover may take in this drill (debug build, a loaded 2-core machine), from the
/// SIGKILL to the standby's `/readyz` answering 200.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(15);

/// Messages per second from the publisher: the replay lasts ~10 s, so the kill lands mid-stream.
const RATE: f64 = 2000.0;

async fn metric_or(http: &reqwest::Client, addr: &str, name: &str) -> f64 {
    metric(http, addr, name).await.unwrap_or(-1.0)
}

/// One node of the pair under `dir/name`: `cfg` with an API address of its own (the same data
/// directory and client id) written as its config file; its API address, config and log paths.
fn node(dir: &Path, name: &str, cfg: &mut Config) -> (String, PathBuf, PathBuf) {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    cfg.api.listen = free_addr();
    (
        cfg.api.listen.clone(),
        write_config(&dir, cfg),
        dir.join("serve.log"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_after_kill_9_with_every_reading_and_the_backtests_tickets() {
    drill(
        "standby_takes_over_after_kill_9_with_every_reading_and_the_backtests_tickets",
        4,
        None,
    )
    .await;
}

/// The same over MQTT 5 (session expiry instead of 3.1.1's persistent session) with
/// `ingest.shared_group`: the pair is one member of the group, since the member is the session
/// and the standby resumes it; the share the broker kept for it while it was away arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_resumes_an_mqtt5_session_with_a_shared_subscription() {
    drill(
        "standby_resumes_an_mqtt5_session_with_a_shared_subscription",
        5,
        Some("forewarn"),
    )
    .await;
}

/// A planned switch: SIGTERM to the active (it drains, then lets go of the data directory), the
/// standby takes over and ingests; the old active, started again with `--standby`, is the new
/// standby, and a SIGTERM while it stands by ends it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_after_a_clean_stop_and_the_old_active_stands_by() {
    let test = "standby_takes_over_after_a_clean_stop_and_the_old_active_stands_by";
    let Some(bin) = mosquitto_bin(test) else {
        return;
    };
    forewarn::tls::install_crypto();
    let dirs = daemon::Dirs::new();
    let broker = Mosquitto::on_free_port(&bin, dirs.path(), ROOMY);
    let broker_url = broker.url();
    let http = reqwest::Client::new();
    let mut cfg = daemon::config(&broker_url, &dirs, "forewarn-ha-switch");
    let (addr_a, config_a, log_a) = node(dirs.path(), "a", &mut cfg);
    let (addr_b, config_b, log_b) = node(dirs.path(), "b", &mut cfg);

    let mut a = spawn_serve_with(&config_a, &log_a, "info", &["--standby"]);
    wait_ready(&http, &addr_a).await;
    let mut b = spawn_serve_with(&config_b, &log_b, "info", &["--standby"]);
    wait_until("the standby answers", Duration::from_secs(30), || async {
        matches!(readyz(&http, &addr_b).await, Some((503, body)) if body["role"] == "standby")
    })
    .await;

    let stopped = Instant::now();
    assert!(sigterm(&mut a).success(), "the active stops cleanly");
    wait_until(
        "the standby takes over after the clean stop",
        TAKEOVER_LIMIT,
        || async { matches!(readyz(&http, &addr_b).await, Some((200, _))) },
    )
    .await;
    eprintln!(
        "{test}: ready {:?} after the active's SIGTERM",
        stopped.elapsed()
    );
    assert_eq!(
        metric(&http, &addr_b, "forewarn_takeovers_total").await,
        Some(1.0)
    );

    // The new active ingests.
    let mut opts = forewarn::replay::PublishOptions::new(broker_url.clone());
    opts.client_id = "forewarn-ha-switch-device".into();
    let message = forewarn::replay::Message {
        topic: "devices/sw-1/telemetry".into(),
        payload: daemon::reading(0, 1, 70.0).into_bytes(),
        is_reading: true,
    };
    forewarn::replay::publish(std::iter::once(message), &opts, |_, _| {})
        .await
        .expect("a device publishes");
    wait_until(
        "the new active applies the reading",
        Duration::from_secs(30),
        || async { metric_or(&http, &addr_b, "forewarn_readings_total").await >= 1.0 },
    )
    .await;

    // The old active comes back as the standby, and stops cleanly while standing by.
    let mut again = spawn_serve_with(&config_a, &log_a, "info", &["--standby"]);
    wait_until(
        "the old active stands by",
        Duration::from_secs(30),
        || async {
            matches!(readyz(&http, &addr_a).await, Some((503, body)) if body["role"] == "standby")
        },
    )
    .await;
    assert!(sigterm(&mut again).success(), "a standby stops cleanly");
    let log = std::fs::read_to_string(&log_a).unwrap();
    assert!(log.contains("stopped while standing by"), "{log}");
    assert!(sigterm(&mut b).success());
    let log = std::fs::read_to_string(&log_b).unwrap();
    assert!(log.contains("took over the data directory"), "{log}");
}

async fn drill(test: &str, protocol: u8, shared_group: Option<&str>) {
    let Some(bin) = mosquitto_bin(test) else {
        return;
    };
    forewarn::tls::install_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::on_free_port(&bin, tmp.path(), ROOMY);
    let broker_url = broker.url();
    let http = reqwest::Client::new();

    let hist = SimHistory::write(&tmp.path().join("history"), 20, 40, 17);
    let model = demo_model();
    let setup = DaemonSetup {
        broker_url: broker_url.clone(),
        topic_prefix: "ha".into(),
        client_id: "forewarn-ha".into(),
        root: tmp.path().join("daemon"),
        replay_chunk: None,
    };
    let mut cfg = daemon_config(&setup, &model, &hist);
    cfg.broker.protocol = protocol;
    cfg.broker.session_expiry = "1h".parse().unwrap();
    cfg.ingest.shared_group = shared_group.map(String::from);
    let backtest = evaluate_tickets(&cfg, model, &hist);
    assert!(
        backtest.len() >= 5,
        "the backtest must open tickets to compare: {}",
        backtest.len()
    );

    // One configuration but for the API address: same data directory, same client id.
    let (addr_a, config_a, log_a) = node(tmp.path(), "a", &mut cfg);
    let (addr_b, config_b, log_b) = node(tmp.path(), "b", &mut cfg);
    let (_, config_c, log_c) = node(tmp.path(), "c", &mut cfg);

    // Both start with --standby: the first to get the data directory works.
    let mut active = spawn_serve_with(&config_a, &log_a, "info", &["--standby"]);
    wait_ready(&http, &addr_a).await;
    let mut standby = spawn_serve_with(&config_b, &log_b, "info", &["--standby"]);
    wait_until("the standby answers", Duration::from_secs(30), || async {
        matches!(
            get(&http, &format!("http://{addr_b}/healthz")).await,
            Some((200, _))
        )
    })
    .await;
    let (status, body) = readyz(&http, &addr_b).await.expect("standby /readyz");
    assert_eq!(status, 503, "a standby is not ready: {body}");
    assert_eq!(body["role"], "standby", "{body}");
    assert_eq!(body["store"], false, "{body}");
    assert_eq!(
        metric(&http, &addr_b, "forewarn_role{role=\"standby\"}").await,
        Some(1.0)
    );
    assert_eq!(
        metric(&http, &addr_b, "forewarn_role{role=\"active\"}").await,
        Some(0.0)
    );
    assert_eq!(readyz(&http, &addr_a).await.unwrap().1["role"], "active");
    assert_eq!(
        metric(&http, &addr_a, "forewarn_role{role=\"active\"}").await,
        Some(1.0)
    );
    let standby_log = std::fs::read_to_string(&log_b).unwrap();
    assert!(
        standby_log.contains("waiting to take over"),
        "the standby says it waits: {standby_log}"
    );

    // Without --standby a data directory in use is an error at start, naming the holder.
    let mut third = spawn_serve(&config_c, &log_c, "info");
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(s) = third.try_wait().unwrap() {
            break s.code();
        }
        assert!(Instant::now() < deadline, "the third serve did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let third_log = std::fs::read_to_string(&log_c).unwrap();
    assert_eq!(code, Some(1), "{third_log}");
    assert!(
        third_log.contains("is in use by another forewarn serve (pid "),
        "{third_log}"
    );

    // The active's session is subscribed once a probe event reaches it (the event itself may
    // wait in the reorder buffer).
    let mut opts = forewarn::replay::PublishOptions::new(broker_url.clone());
    opts.client_id = "forewarn-ha-replay".into();
    let mut marker = MARKER_T0;
    wait_until(
        "the active receives through Mosquitto",
        Duration::from_secs(30),
        || {
            marker += 1_000;
            let (http, addr, opts) = (&http, &addr_a, &opts);
            let m = marker;
            async move {
                forewarn::replay::publish(std::iter::once(probe_message("ha", m)), opts, |_, _| {})
                    .await
                    .expect("probe publishes");
                tokio::time::sleep(Duration::from_millis(200)).await;
                metric_or(http, addr, "forewarn_mqtt_messages_total").await >= 1.0
            }
        },
    )
    .await;

    let replay = hist.replay();
    let messages: Vec<_> = replay.messages("ha").collect();
    let readings = replay.readings() as f64;
    let n = messages.len() as u64;
    let mut paced = opts.clone();
    paced.rate = Some(RATE);
    let publisher = tokio::spawn(async move {
        forewarn::replay::publish(messages.into_iter(), &paced, |_, _| {})
            .await
            .expect("replay publishes")
    });

    // Mid-stream: the active has taken about a third of the readings.
    wait_until(
        "the active takes a third of the readings",
        Duration::from_secs(60),
        || async { metric_or(&http, &addr_a, "forewarn_readings_total").await >= readings / 3.0 },
    )
    .await;
    let missing_a = metric_or(&http, &addr_a, "forewarn_readings_missing_total").await;
    let taken_a = metric_or(&http, &addr_a, "forewarn_readings_total").await;
    let killed = Instant::now();
    active.kill().unwrap(); // SIGKILL
    active.wait().unwrap();
    assert_eq!(missing_a, 0.0, "no reading missing at the active");

    let mut ready = None;
    while killed.elapsed() < TAKEOVER_LIMIT {
        if let Some((200, body)) = readyz(&http, &addr_b).await {
            ready = Some((killed.elapsed(), body));
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let Some((took, body)) = ready else {
        panic!(
            "the standby was not ready {TAKEOVER_LIMIT:?} after the kill; its log:\n{}",
            std::fs::read_to_string(&log_b).unwrap_or_default()
        );
    };
    assert_eq!(body["role"], "active", "{body}");
    assert!(
        body["session"].is_null(),
        "the broker session is resumed, not lost or unknown: {body}"
    );
    let inside = metric_or(&http, &addr_b, "forewarn_takeover_seconds").await;
    eprintln!(
        "{test}: takeover: ready {took:?} after SIGKILL (lock to store opened and recovered: {inside:.3} s); \
         the active had taken {taken_a} of {readings} readings"
    );
    assert_eq!(
        metric(&http, &addr_b, "forewarn_takeovers_total").await,
        Some(1.0)
    );
    assert_eq!(
        metric(&http, &addr_b, "forewarn_role{role=\"active\"}").await,
        Some(1.0)
    );

    let sent = publisher.await.unwrap();
    assert_eq!(
        (sent.published, sent.acked),
        (n, n),
        "the broker took every message"
    );
    let done = MARKER_T0 + 365 * 86_400_000;
    forewarn::replay::publish(std::iter::once(probe_message("ha", done)), &opts, |_, _| {})
        .await
        .expect("final marker publishes");

    // Settled: nothing new for 3 s (longer than ingest.reorder_idle, so what the reorder buffer
    // held for each device's last reading is released and applied).
    let mut last = -1.0;
    let mut since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = metric_or(&http, &addr_b, "forewarn_commits_total").await
            + metric_or(&http, &addr_b, "forewarn_mqtt_messages_total").await;
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() > Duration::from_secs(3) {
            break;
        }
        assert!(Instant::now() < deadline, "the new active never settled");
    }
    let missing_b = metric_or(&http, &addr_b, "forewarn_readings_missing_total").await;
    let late_b = metric_or(
        &http,
        &addr_b,
        "forewarn_readings_dropped_total{reason=\"late\"}",
    )
    .await;
    let dup_b = metric_or(
        &http,
        &addr_b,
        "forewarn_readings_dropped_total{reason=\"duplicate\"}",
    )
    .await;
    let taken_b = metric_or(&http, &addr_b, "forewarn_readings_total").await;
    eprintln!(
        "{test}: the new active took {taken_b} readings ({dup_b} of them redelivered duplicates already \
         committed by the killed one)"
    );
    assert_eq!(missing_b, 0.0, "no reading missing at the new active");
    assert_eq!(late_b, 0.0, "no reading dropped as late");
    assert!(sigterm(&mut standby).success(), "SIGTERM is a clean stop");

    let store = forewarn::store::Store::open(&cfg.store.data_dir, 8 << 20).unwrap();
    let state = |id: &str| {
        store
            .load_state(id)
            .unwrap()
            .map(|b| forewarn::features::DeviceState::decode(&b).unwrap())
    };
    assert_eq!(
        state(PROBE).map(|s| s.last_error_ts.as_millis()),
        Some(done),
        "the marker published after the history was applied"
    );
    let h = forewarn::train::csv::History::load(&hist.telemetry(), &hist.events(), None).unwrap();
    for d in &h.devices {
        let s = state(&d.id).unwrap_or_else(|| panic!("no state for {}", d.id));
        assert_eq!(
            (s.last_seq, s.last_ts),
            (Some(d.ts.len() as u64), *d.ts.last().unwrap()),
            "{} ends at its last reading",
            d.id
        );
    }
    let live = store.tickets(&Default::default()).unwrap();
    assert_same_tickets(&backtest, &live);
    eprintln!(
        "{test}: {} tickets, equal to the backtest's; takeover {took:?}",
        live.len()
    );
}
