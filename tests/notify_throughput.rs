//! A measurement, not a check of behaviour: how fast tickets with their notification commit and
//! how fast the worker drains the outbox to a provider on loopback.
//! `cargo test --release --test notify_throughput -- --ignored --nocapture`

mod support;

use forewarn::domain::Priority;
use forewarn::fleet::Channel;
use std::time::Instant;
use support::notify::Harness;

#[tokio::test]
#[ignore = "measurement; run by hand"]
async fn notify_throughput() {
    let n = 500;
    let h = Harness::start(|c| {
        c.daily_budget = 10_000;
        c.max_reminders = 0;
    })
    .await;
    let c = h.customer("acme", "en", &[Channel::Push]);
    let t0 = Instant::now();
    for i in 0..n {
        h.open(&c, &format!("pump-{i}"), Priority::High, 0.7, Some(72));
    }
    let commit = t0.elapsed();
    let t1 = Instant::now();
    h.run().await;
    let drain = t1.elapsed();
    assert_eq!(h.fakes.delivered("push").len(), n);
    println!(
        "{n} tickets+outbox rows committed (flush each) in {:.2}s ({:.2} ms each); \
         drained to the push provider in {:.2}s ({:.0} msg/s)",
        commit.as_secs_f64(),
        commit.as_secs_f64() * 1000.0 / n as f64,
        drain.as_secs_f64(),
        n as f64 / drain.as_secs_f64()
    );
}
