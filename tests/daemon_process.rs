//! The `forewarn serve` binary as a process: kill -9 mid-stream and `--check-config`.
#![cfg(feature = "embedded-broker")]

mod support;

use forewarn::features::DeviceState;
use std::time::Duration;
use support::daemon::*;
use support::http::{get_text, metric, sample};
use support::net::free_addr;
use support::poll::eventually;
use support::process::{forewarn, spawn_serve, wait_ready, write_config, Serve};

/// `forewarn serve --config <config>`, its output in the test's `serve.log`.
fn spawn(dirs: &Dirs, config: &std::path::Path) -> Serve {
    spawn_serve(config, &dirs.path().join("serve.log"), "warn")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_nothing_and_duplicates_nothing() {
    let b = broker();
    let dirs = Dirs::new();
    let mut cfg = config(&b.url(), &dirs, "fw-kill9");
    let addr = free_addr();
    cfg.api.listen = addr.clone();
    // Small groups: many commits, so the kill lands between and inside them.
    cfg.ingest.commit_group = 4;
    let path = write_config(dirs.path(), &cfg);
    let http = reqwest::Client::new();
    let mut first = Some(spawn(&dirs, &path));
    wait_ready(&http, &addr).await;
    let dev = mqtt(&b, "kill9-pub").await;
    let series = degrading(200);
    for (i, (hr, t)) in series.iter().enumerate() {
        dev.publish("devices/k9/telemetry", reading(*hr, i as u64 + 1, *t))
            .await;
        if i == 60 {
            if let Some(mut child) = first.take() {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut child = spawn(&dirs, &path);
    wait_ready(&http, &addr).await;
    let metrics_url = format!("http://{addr}/metrics");
    // The restarted process receives what the broker kept (everything after the last ack);
    // wait until its intake settles.
    let mut prev = -1.0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let text = get_text(&http, &metrics_url).await;
        let n = sample(&text, "forewarn_readings_total").unwrap_or(0.0);
        if n > 0.0 && n == prev {
            break;
        }
        prev = n;
    }
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(
        child.wait().unwrap().success(),
        "SIGTERM is a clean shutdown"
    );
    let store = forewarn::store::Store::open(&dirs.data(), 8 << 20).unwrap();
    let st = DeviceState::decode(&store.load_state("k9").unwrap().unwrap()).unwrap();
    assert_eq!(st.readings, 200, "every reading applied exactly once");
    let tickets = store.tickets(&Default::default()).unwrap();
    assert_eq!(tickets.len(), 1, "{tickets:?}");
}

#[test]
fn check_config_exits_0_when_valid_and_2_on_a_broken_model() {
    let dirs = Dirs::new();
    let cfg = config("mqtt://127.0.0.1:1", &dirs, "fw-check");
    let path = write_config(dirs.path(), &cfg);
    let out = forewarn()
        .args(["serve", "--check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 model(s)"));
    std::fs::write(dirs.models().join("zz.json"), "not json").unwrap();
    let out = forewarn()
        .args(["serve", "--check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("zz.json"));
    let out = forewarn()
        .args([
            "serve",
            "--check-config",
            "--broker",
            "http://nope",
            "--config",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("broker.url"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_models_and_keeps_them_when_an_artifact_is_bad() {
    let b = broker();
    let dirs = Dirs::new();
    let mut cfg = config(&b.url(), &dirs, "fw-hup");
    let addr = free_addr();
    cfg.api.listen = addr.clone();
    let path = write_config(dirs.path(), &cfg);
    let http = reqwest::Client::new();
    let mut child = spawn(&dirs, &path);
    // Ready means the SIGHUP handler listens: the signal may follow at once (before the handler
    // was installed ahead of readiness, a signal this early ended the process).
    wait_ready(&http, &addr).await;
    let read_metric = |name: &'static str| {
        let (http, addr) = (http.clone(), addr.clone());
        async move { metric(&http, &addr, name).await.unwrap_or(-1.0) }
    };
    assert_eq!(read_metric("forewarn_models_loaded").await, 1.0);
    let mut second = hot_model();
    second.name = "hot2".into();
    second.save(&dirs.models().join("hot2.json")).unwrap();
    unsafe {
        libc::kill(child.id() as i32, libc::SIGHUP);
    }
    eventually("second model loaded", || async {
        read_metric("forewarn_models_loaded").await == 2.0
    })
    .await;
    std::fs::write(dirs.models().join("hot3.json"), "{").unwrap();
    unsafe {
        libc::kill(child.id() as i32, libc::SIGHUP);
    }
    eventually("reload error counted", || async {
        read_metric("forewarn_model_reloads_total{result=\"error\"}").await == 1.0
    })
    .await;
    assert_eq!(
        read_metric("forewarn_models_loaded").await,
        2.0,
        "old models stay"
    );
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(child.wait().unwrap().success());
}
