//! Input cannot blind a device: a far-future timestamp is rejected (`future_ts`) instead of making
//! every later reading late; event codes no model uses leave no state behind; and the state of a
//! device unseen for `ingest.forget_after` is dropped from memory and disk.
#![cfg(feature = "embedded-broker")]

mod support;

use forewarn::features::DeviceState;
use support::daemon::*;
use support::poll::eventually;

fn state(h: &forewarn::serve::Handle, device: &str) -> Option<DeviceState> {
    // The committed state: the daemon's memory, else the stored snapshot.
    h.app.device_state(device).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_future_timestamp_is_rejected_and_the_device_keeps_its_readings() {
    let b = broker();
    let dirs = Dirs::new();
    let (h, tok) = start(config(&b.url(), &dirs, "fw-future")).await;
    ready(&h).await;
    let api = Api::new(&h);
    let dev = mqtt(&b, "future-pub").await;
    dev.publish("devices/fut-1/telemetry", reading(0, 1, 70.0))
        .await;
    // A clock gone wrong: thirty years ahead.
    let far =
        serde_json::json!({"ts": "2056-01-01T00:00:00Z", "seq": 2, "metrics": {"temp": 70.0}});
    dev.publish("devices/fut-1/telemetry", far.to_string())
        .await;
    for hr in 1..10 {
        dev.publish("devices/fut-1/telemetry", reading(hr, hr as u64 + 2, 70.0))
            .await;
    }
    eventually("the readings after it applied", || async {
        state(&h, "fut-1").is_some_and(|s| s.readings == 10)
    })
    .await;
    assert_eq!(
        api.metric("forewarn_rejected_total{reason=\"future_ts\"}")
            .await,
        1.0
    );
    assert_eq!(
        api.metric("forewarn_readings_dropped_total{reason=\"late\"}")
            .await,
        0.0
    );
    let rejects = api.get_json("/api/v1/rejects").await;
    assert_eq!(rejects[0]["reason"], "future_ts");
    stop(h, tok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_event_codes_leave_no_state_and_unseen_devices_are_forgotten() {
    let b = broker();
    let dirs = Dirs::new();
    let mut cfg = config(&b.url(), &dirs, "fw-forget");
    cfg.ingest.forget_after = Some("1m".parse().unwrap());
    let (h, tok) = start(cfg).await;
    ready(&h).await;
    let api = Api::new(&h);
    let dev = mqtt(&b, "forget-pub").await;
    // An old device (history stamped 2015) and a current one.
    for hr in 0..3 {
        dev.publish("devices/old-1/telemetry", reading(hr, hr as u64 + 1, 70.0))
            .await;
    }
    for code in ["c1", "c2", "c3", "overheat"] {
        let ev = serde_json::json!({"ts": T0 + 3 * HOUR, "kind": "maintenance", "code": code});
        dev.publish("devices/old-1/events", ev.to_string()).await;
    }
    let now = chrono::Utc::now().timestamp_millis();
    for i in 0..3 {
        let r = serde_json::json!({"ts": now - (3 - i) * 1000, "seq": i + 1, "metrics": {"temp": 70.0}});
        dev.publish("devices/new-1/telemetry", r.to_string()).await;
    }
    eventually("the current device applied", || async {
        state(&h, "new-1").is_some_and(|s| s.readings >= 2)
    })
    .await;
    eventually("the old device forgotten", || async {
        api.metric("forewarn_devices_forgotten_total").await >= 1.0
    })
    .await;
    assert!(state(&h, "old-1").is_none(), "dropped from disk");
    assert!(state(&h, "new-1").is_some(), "a current device stays");
    assert_eq!(api.metric("forewarn_devices_forgotten_total").await, 1.0);
    stop(h, tok).await;
}

#[test]
fn only_the_failure_modes_models_score_are_kept_in_device_state() {
    use forewarn::domain::{DeviceEvent, EventKind};
    use forewarn::engine::{Engine, EngineConfig, Models};
    let cfg = EngineConfig::default();
    let models = Models::new(vec![hot_model()], &cfg.window).unwrap();
    let e = Engine::new(cfg, std::sync::Arc::new(models));
    let mut st = e.new_state(forewarn::domain::Timestamp::EPOCH);
    let (mut live, mut changes) = (vec![], vec![]);
    for (i, code) in ["c1", "c2", "overheat", "c3"].iter().enumerate() {
        for kind in [EventKind::Maintenance, EventKind::Failure] {
            let ev = DeviceEvent {
                device_id: forewarn::domain::DeviceId::parse("d").unwrap(),
                ts: forewarn::domain::Timestamp::from_millis(i as i64 * HOUR),
                kind,
                code: (*code).into(),
            };
            e.event(&mut st, &mut live, &ev, &mut changes);
        }
    }
    let kept: Vec<&str> = st.mode_reset.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(kept, vec!["overheat"]);
}
