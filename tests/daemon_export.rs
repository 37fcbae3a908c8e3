//! The fleet's own outcomes back into training: the daemon archives what it accepted, and
//! `forewarn export` turns the archive and the ticket outcomes into history files that the
//! training reader takes. Real embedded broker, real sled store, real HTTP.
#![cfg(feature = "embedded-broker")]

mod support;

use forewarn::history::{read_devices, read_events, read_telemetry, BadRows};
use std::path::Path;
use support::daemon::*;
use support::poll::eventually;

async fn open_ticket_on(dev: &Mqtt, api: &Api, id: &str) -> String {
    dev.publish_degrading(id, 48).await;
    let q = format!("?status=open&device_id={id}");
    eventually("ticket opened", || async {
        api.tickets(&q).await.len() == 1
    })
    .await;
    api.tickets(&q).await[0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn event(dev: &Mqtt, id: &str, hours: i64, kind: &str) {
    dev.publish(
        &format!("devices/{id}/events"),
        serde_json::json!({"ts": T0 + hours * HOUR, "kind": kind, "code": "overheat"}).to_string(),
    )
    .await;
}

/// The `outcome` cell of each events.csv row, by (device, kind).
fn outcomes(path: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("device_id,ts,kind,code,outcome"));
    lines
        .map(|l| {
            let c: Vec<&str> = l.split(',').collect();
            (c[0].to_string(), c[2].to_string(), c[4].to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_exports_history_with_outcomes_that_the_training_reader_takes() {
    let b = broker();
    let dirs = Dirs::new();
    let fleet = dirs.fleet_file(&acme_fleet("pump-a"));
    let mut cfg = config(&b.url(), &dirs, "fw-export");
    cfg.fleet.file = Some(fleet);
    cfg.archive.enabled = true;
    let (h, tok) = start(cfg).await;
    ready(&h).await;
    let api = Api::new(&h);

    // A quiet device first: its scores are the reference of the drift statistic.
    let quiet = mqtt(&b, "pump-q").await;
    for h in 0..400 {
        quiet
            .publish(
                "devices/pump-q/telemetry",
                reading(h, h as u64 + 1, 70.0 + (h % 3) as f64 * 0.5),
            )
            .await;
    }

    // pump-a: serviced, fault found. pump-b: failed before service. pump-c: dismissed.
    let a = mqtt(&b, "pump-a").await;
    let ta = open_ticket_on(&a, &api, "pump-a").await;
    event(&a, "pump-a", 49, "maintenance").await;
    let bb = mqtt(&b, "pump-b").await;
    let tb = open_ticket_on(&bb, &api, "pump-b").await;
    event(&bb, "pump-b", 50, "failure").await;
    let c = mqtt(&b, "pump-c").await;
    let tc = open_ticket_on(&c, &api, "pump-c").await;
    let r = api
        .post(
            &format!("/api/v1/tickets/{tc}/transitions"),
            &serde_json::json!({"to": "dismissed", "note": "nothing wrong"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    // pump-d: a person resolved it after a visit that found nothing (no maintenance event).
    let dd = mqtt(&b, "pump-d").await;
    let td = open_ticket_on(&dd, &api, "pump-d").await;
    let r = api.post(&format!("/api/v1/tickets/{td}/transitions"), &serde_json::json!({"to": "resolved", "note": "no fault found", "outcome": "false_alarm"})).await;
    assert_eq!(r.status(), 200);
    let r = api
        .post(
            &format!("/api/v1/tickets/{td}/transitions"),
            &serde_json::json!({"to": "acknowledged", "outcome": "false_alarm"}),
        )
        .await;
    assert_eq!(r.status(), 409, "a resolved ticket stays resolved");
    for id in [&ta, &tb] {
        eventually("ticket settled", || async {
            api.get_json(&format!("/api/v1/tickets/{id}")).await["status"] == "resolved"
        })
        .await;
    }

    // Two of the four settled predictions were right.
    let p = api
        .metric("forewarn_model_realised_precision{mode=\"overheat\",model=\"hot\"}")
        .await;
    assert!((p - 2.0 / 4.0).abs() < 1e-9, "realised precision {p}");

    // The degrading devices' scores moved away from the quiet reference.
    let drift = api
        .metric("forewarn_model_score_drift_psi{mode=\"overheat\",model=\"hot\"}")
        .await;
    assert!(drift > 0.1, "drift {drift}");

    // The store is held by the running daemon: export says so instead of reading half a state.
    let out = dirs.path().join("export");
    let err = forewarn::cli::export::export(&dirs.data(), &out).unwrap_err();
    assert!(err.to_string().contains("stop the daemon"), "{err}");

    // Everything accepted reaches the archive (a batch is written after its commit).
    eventually("archive holds every reading", || async {
        let mut n = 0;
        for p in
            forewarn::archive::files(&forewarn::archive::dir(&dirs.data()), "telemetry").unwrap()
        {
            n += std::fs::read_to_string(&p).unwrap().lines().count() - 1;
        }
        n == 400 + 4 * 48
    })
    .await;
    assert_eq!(api.metric("forewarn_archive_dropped_total").await, 0.0);
    assert_eq!(api.metric("forewarn_archive_errors_total").await, 0.0);
    stop(h, tok).await;

    let sum = forewarn::cli::export::export(&dirs.data(), &out).unwrap();
    assert_eq!(
        (sum.readings, sum.events, sum.outcomes),
        (400 + 4 * 48, 3, 3)
    );

    // The files read back with the reader `forewarn train` uses, failing on any bad row.
    let tel = out.join("telemetry.csv");
    let mut rows = 0;
    let (metrics, _) = read_telemetry(
        std::fs::File::open(&tel).unwrap(),
        &tel,
        BadRows::Fail,
        |_| {
            rows += 1;
            Ok(())
        },
    )
    .unwrap();
    assert!(metrics.contains(&"temp".to_string()), "{metrics:?}");
    assert_eq!(rows, 400 + 4 * 48);
    let ev = out.join("events.csv");
    let mut events = Vec::new();
    read_events(
        std::fs::File::open(&ev).unwrap(),
        &ev,
        BadRows::Fail,
        |_, e| {
            events.push(e);
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(
        outcomes(&ev),
        vec![
            ("pump-a".into(), "maintenance".into(), "confirmed".into()),
            ("pump-b".into(), "failure".into(), "failed".into()),
            ("pump-d".into(), "maintenance".into(), "false_alarm".into()),
        ],
        "the dismissed ticket had no visit, so it adds no event; the visit that found nothing does"
    );
    // The dismissal goes to dismissals.csv instead, for `train --dismissals`.
    assert_eq!(sum.dismissals, 1);
    let dis = forewarn::train::csv::read_dismissals(&out.join("dismissals.csv")).unwrap();
    assert_eq!(dis.len(), 1);
    assert_eq!(
        (dis[0].0.as_str(), dis[0].1.mode.as_str()),
        ("pump-c", "overheat")
    );
    // The training loader takes the three files, the `outcome` column included.
    let with = forewarn::train::csv::read_events_with_outcomes(&ev).unwrap();
    let confirmed = with
        .iter()
        .filter(|(e, o)| e.device_id == "pump-a" && o.is_some())
        .count();
    assert_eq!(confirmed, 1);
    let hist =
        forewarn::train::csv::History::load(&tel, &ev, Some(&out.join("devices.csv"))).unwrap();
    assert_eq!(hist.failure_modes(), vec!["overheat".to_string()]);
    let dev = out.join("devices.csv");
    let (attrs, _) = read_devices(std::fs::File::open(&dev).unwrap(), &dev, BadRows::Fail).unwrap();
    assert_eq!(attrs["pump-a"]["model"], "P200");
    assert_eq!(attrs["pump-a"]["customer_id"], "acme");
}
