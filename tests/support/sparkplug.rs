//! A third-party Sparkplug B edge node against the daemon: `edge_node.py` (the `pysparkplug`
//! package, run as it is) publishes births, hourly data by alias, a `seq` gap, an unknown alias
//! and deaths through a real broker, and decodes the rebirth requests forewarn sends back. What
//! the daemon made of it is then read through its API, its metrics and its store.
//!
//! Missing `pysparkplug` makes a test skip locally and fail under `CI=true` (`.ci/run` installs
//! it).

use super::daemon::{Api, HOUR, T0};
use super::poll::eventually;
use forewarn::config::Config;
use forewarn::serve::Handle;
use std::process::Command;

/// Hourly DDATA messages the edge node publishes (the device's temperature rises after hour 30,
/// which the test model turns into a ticket).
pub const HOURS: i64 = 36;

/// Sparkplug on for `group`, rebirth requests unthrottled (the script waits for each one).
pub fn enable(cfg: &mut Config, group: &str) {
    cfg.ingest.sparkplug.enabled = true;
    cfg.ingest.sparkplug.groups = vec![group.to_string()];
    cfg.ingest.sparkplug.rebirth_interval = "0s".parse().unwrap();
}

/// What the edge node saw.
#[derive(Debug)]
pub struct EdgeRun {
    /// The NCMDs it received, as pysparkplug decoded them.
    pub ncmd: Vec<serde_json::Value>,
}

/// Runs the edge node script to its end.
pub async fn run_edge_node(
    host: &str,
    port: u16,
    group: &str,
    edge: &str,
    device: &str,
    t0: i64,
) -> EdgeRun {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/edge_node.py");
    let args: Vec<String> = vec![
        script.into(),
        "--host".into(),
        host.into(),
        "--port".into(),
        port.to_string(),
        "--group".into(),
        group.into(),
        "--edge".into(),
        edge.into(),
        "--device".into(),
        device.into(),
        "--t0".into(),
        t0.to_string(),
        "--hours".into(),
        HOURS.to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || Command::new("python3").args(&args).output())
        .await
        .unwrap()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the pysparkplug edge node failed ({}): {stderr}\n{stdout}",
        out.status
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("edge node output {stdout:?}: {e}"));
    EdgeRun {
        ncmd: v["ncmd"].as_array().cloned().unwrap_or_default(),
    }
}

/// Everything the daemon should have made of the run, with `group`/`edge`/`device` under the
/// default templates.
pub async fn assert_ingested(h: &Handle, run: &EdgeRun, group: &str, edge: &str, device: &str) {
    let api = Api::new(h);
    let node_id = format!("{group}.{edge}");
    let device_id = format!("{group}.{edge}.{device}");

    // Three rebirth requests, decoded by pysparkplug: before any BIRTH, after the gap, for the
    // unknown alias.
    assert!(run.ncmd.len() >= 3, "{:?}", run.ncmd);
    for c in &run.ncmd {
        assert_eq!(c["topic"], format!("spBv1.0/{group}/NCMD/{edge}"), "{c}");
        let m = &c["metrics"][0];
        assert_eq!(m["name"], "Node Control/Rebirth", "{c}");
        assert_eq!(m["value"], true, "{c}");
        assert_eq!(m["datatype"], 11, "Boolean: {c}");
    }
    for reason in ["no_birth", "seq_gap", "unknown_alias"] {
        let sample = format!(r#"forewarn_sparkplug_rebirth_requests_total{{reason="{reason}"}}"#);
        eventually(&sample, || async { api.metric(&sample).await >= 1.0 }).await;
    }

    // The deaths: DDEATH of the device, then NDEATH of the node (the device already dead).
    eventually("both deaths applied as events", || async {
        api.metric("forewarn_device_events_total").await >= 2.0
    })
    .await;
    assert_eq!(api.metric("forewarn_device_events_total").await, 2.0);
    for kind in ["NBIRTH", "DBIRTH", "DDEATH", "NDEATH"] {
        let sample = format!(r#"forewarn_sparkplug_messages_total{{type="{kind}"}}"#);
        assert_eq!(api.metric(&sample).await, 1.0, "{sample}");
    }
    let ddata = api
        .metric(r#"forewarn_sparkplug_messages_total{type="DDATA"}"#)
        .await;
    assert_eq!(
        ddata,
        (HOURS + 2) as f64,
        "hourly data, the gap's, the unknown alias's"
    );

    // The gap: seq jumped by four, three messages missing, counted and kept for the node.
    assert_eq!(api.metric("forewarn_readings_missing_total").await, 3.0);
    let gaps = api.get_json("/api/v1/gaps").await;
    let gap = gaps
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["device_id"] == node_id.as_str())
        .unwrap_or_else(|| panic!("no gap for {node_id}: {gaps}"));
    assert_eq!(gap["missing"], 3, "{gap}");

    // DATA before the BIRTH: rejected with its reason (and the rebirth asked above).
    assert!(
        api.metric(r#"forewarn_rejected_total{reason="no_birth"}"#)
            .await
            >= 1.0
    );
    let rejects = api.get_json("/api/v1/rejects").await;
    assert!(
        rejects
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["reason"] == "no_birth"),
        "{rejects}"
    );
    assert_eq!(
        api.metric(r#"forewarn_sparkplug_metrics_skipped_total{reason="unknown_alias"}"#)
            .await,
        1.0
    );
    assert!(
        api.metric(r#"forewarn_sparkplug_metrics_skipped_total{reason="not_numeric"}"#)
            .await
            >= 1.0,
        "the DBIRTH's firmware string"
    );

    // The readings, under the template's ids, in event time: the device's hours and the node's
    // own metric from its NBIRTH.
    // What the daemon applied (the stored state is a checkpoint that may lag it).
    let state = |id: String| {
        h.app
            .device_state(&id)
            .unwrap()
            .unwrap_or_else(|| panic!("no state for {id}"))
    };
    let t0 = T0;
    let s = state(device_id.clone());
    assert_eq!(s.first_ts, forewarn::domain::Timestamp::from_millis(t0));
    assert_eq!(
        s.last_ts,
        forewarn::domain::Timestamp::from_millis(t0 + HOURS * HOUR),
        "the reading after the gap"
    );
    assert_eq!(
        state(node_id.clone()).first_ts,
        forewarn::domain::Timestamp::from_millis(t0)
    );

    // The same pipeline as JSON readings: the rising temperature opened a ticket.
    eventually("a ticket for the Sparkplug device", || async {
        !api.tickets(&format!("?device_id={device_id}"))
            .await
            .is_empty()
    })
    .await;
    let t = &api.tickets(&format!("?device_id={device_id}")).await[0];
    assert_eq!(t["failure_mode"], "overheat", "{t}");
}
