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
        // 10 s at 24 simulated hours per second: 10 days of a 90-device fleet. The default seed
        // has its first forewarned failure on day 5 and four by day 8, so a machine that
        // publishes at half speed still sees one.
        sim_hours_per_second: 24.0,
        duration: Duration::from_secs(10),
        listen: listen.clone(),
        keep_running: false,
        seed: 42,
        data_dir: Some(tmp.path().join("demo")),
        config: None,
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
    assert!(summary.readings >= 5_000, "{summary:?}");
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
