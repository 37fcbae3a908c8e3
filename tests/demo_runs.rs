//! `forewarn demo` end to end: the embedded broker, the daemon with the committed demo model, the
//! simulated fleet and the notification sink, run for a few seconds with the default seed.
#![cfg(feature = "embedded-broker")]

use forewarn::demo::{run, DemoOptions};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Sum of every sample of `name` in a Prometheus text exposition (all label sets).
fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_forewarns_failures_rejects_bad_payloads_and_messages_customers() {
    forewarn::tls::install_crypto();
    let tmp = tempfile::tempdir().unwrap();
    // A port we know, so the daemon's /metrics can be watched while the demo runs.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let opts = DemoOptions {
        devices: 90,
        // 10 s at 24 simulated hours per second: 10 days of a 90-device fleet, published in
        // full however long a loaded runner takes (a debug build beside the other tests on a
        // slow 2-core machine took over 100 s). The default seed has its first forewarned
        // failure on day 5 and four by day 8.
        sim_hours_per_second: 24.0,
        duration: Duration::from_secs(10),
        wall_guard: Duration::from_secs(900),
        listen: listen.clone(),
        keep_running: false,
        seed: 42,
        data_dir: Some(tmp.path().join("demo")),
        config: None,
        // Ten times the CLI's share, so even a slow runner's first few thousand readings
        // carry malformed payloads to reject.
        malformed_fraction: 0.005,
    };

    let rejected = Arc::new(AtomicU64::new(0));
    let stop_watch = CancellationToken::new();
    let watcher = tokio::spawn({
        let (rejected, stop) = (rejected.clone(), stop_watch.clone());
        async move {
            let http = reqwest::Client::new();
            let url = format!("http://{listen}/metrics");
            while !stop.is_cancelled() {
                if let Ok(r) = http.get(&url).send().await {
                    if let Ok(text) = r.text().await {
                        let n = metric_sum(&text, "forewarn_rejected_total");
                        rejected.fetch_max(n, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });

    let summary = run(opts, CancellationToken::new()).await.unwrap();
    stop_watch.cancel();
    let _ = watcher.await;

    assert_eq!(summary.api_addr, format!("127.0.0.1:{port}"));
    // Ten days of 90 devices are about 21,000 readings, every one published.
    assert!(summary.readings >= 20_000, "{summary:?}");
    assert!(summary.malformed >= 1, "{summary:?}");
    assert!(
        rejected.load(Ordering::Relaxed) >= 1,
        "the daemon counted no rejected payload ({} malformed sent)",
        summary.malformed
    );
    assert!(summary.tickets_opened >= 1, "{summary:?}");
    assert!(summary.failures >= 1, "{summary:?}");
    assert!(
        summary.failures_forewarned >= 1,
        "no failure had a ticket before it: {summary:?}"
    );
    assert!(summary.lead_hours.iter().all(|h| *h >= 0.0), "{summary:?}");
    assert!(summary.messages >= 1, "no customer message: {summary:?}");
    assert!(
        summary.replies >= 1,
        "no simulated customer reply landed: {summary:?}"
    );
}

/// `forewarn demo` as a process stops on SIGTERM like `serve` does: it drains and exits 0 well
/// before its publishing time is up.
#[cfg(unix)]
#[test]
fn demo_process_stops_cleanly_on_sigterm() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_forewarn"))
        .args(["demo", "--devices", "3", "--duration", "600s", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until its API answers, so the signal arrives while it runs.
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the demo's API never came up"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the demo exited before it was signalled: {status}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = i32::try_from(child.id()).unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let signalled = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if signalled.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the demo ignored SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}
