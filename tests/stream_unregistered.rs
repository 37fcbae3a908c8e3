//! A device the fleet registry does not know is a first-class case: scored with its attributes
//! missing, its tickets listed and dispatched, counted; `forewarn fleet import` then registers it
//! through the running daemon's API.
#![cfg(feature = "embedded-broker")]

mod support;

use forewarn::features::DeviceFeature;
use forewarn::predict::{Estimator, Scaler};
use support::daemon::*;
use support::poll::eventually;

/// The hot model, also reading the device attribute `age`.
fn model_reading_attributes() -> forewarn::predict::Artifact {
    let mut a = hot_model();
    a.name = "hot-aged".into();
    a.features.device = vec![DeviceFeature::AttrNumber { name: "age".into() }];
    let m = &mut a.modes[0];
    m.classifier = Estimator::Linear {
        scaler: Scaler {
            mean: vec![80.0, 5.0],
            std: vec![1.0, 1.0],
        },
        weights: vec![1.0, 0.5],
        bias: 0.0,
        link: forewarn::predict::Link::Logistic,
    };
    m.regressor = Some(Estimator::Linear {
        scaler: Scaler {
            mean: vec![80.0, 5.0],
            std: vec![1.0, 1.0],
        },
        weights: vec![-1.0, -0.5],
        bias: 20.0,
        link: forewarn::predict::Link::Identity,
    });
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistered_device_is_scored_ticketed_dispatched_and_then_imported() {
    let b = broker();
    let dirs = Dirs::new();
    std::fs::remove_file(dirs.models().join("hot.json")).unwrap();
    model_reading_attributes()
        .save(&dirs.models().join("aged.json"))
        .unwrap();
    let (h, tok) = start(config(&b.url(), &dirs, "fw-unregistered")).await;
    ready(&h).await;
    let api = Api::new(&h);
    let dev = mqtt(&b, "stray-pub").await;
    dev.publish_degrading("stray-1", 36).await;
    eventually("a ticket for the unregistered device", || async {
        !api.tickets("?device_id=stray-1").await.is_empty()
    })
    .await;
    let t = &api.tickets("?device_id=stray-1").await[0];
    let note = t["history"][0]["note"].as_str().unwrap();
    assert!(note.contains("device not in registry"), "{note}");
    assert!(t["customer_id"].is_null());
    for e in t["evidence"].as_array().unwrap() {
        assert!(e["value"].is_null() || e["value"].is_f64(), "{e}");
    }
    eventually("the ticket dispatched", || async {
        api.metric(r#"forewarn_dispatch_deliveries_total{result="ok",target="mqtt"}"#)
            .await
            >= 1.0
    })
    .await;
    assert_eq!(api.metric("forewarn_unregistered_devices").await, 1.0);
    assert_eq!(api.metric("forewarn_store_quarantined_total").await, 0.0);

    // Registered through the API by the CLI, from the contract's devices.csv.
    let csv = dirs.path().join("devices.csv");
    std::fs::write(&csv, "device_id,age,model\nstray-1,12,P200\n").unwrap();
    let base = api.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_forewarn"))
            .args(["fleet", "import", "--devices"])
            .arg(&csv)
            .args(["--api", &base, "--token", TOKEN])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii_end()).unwrap();
    assert_eq!(summary["created"], 1);
    let d = api.get_json("/api/v1/devices/stray-1").await;
    assert_eq!(d["attributes"]["age"], "12");
    assert_eq!(api.metric("forewarn_unregistered_devices").await, 0.0);
    stop(h, tok).await;
}
