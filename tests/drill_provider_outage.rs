//! Drill: the SMS provider is down for ten minutes (injected clock; real HTTP, real sled).
//! Messages for five urgent tickets queue and are retried with backoff but not given up; the
//! outbox depth and oldest-age gauges show the outage while it lasts; when the provider comes
//! back every customer gets their message exactly once and the age gauge falls back.

mod support;

use forewarn::domain::Priority;
use forewarn::fleet::Channel;
use std::collections::BTreeSet;
use std::time::Duration;
use support::notify::providers::Mode;
use support::notify::Harness;

const TICKETS: usize = 5;
const STEP: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_ten_minute_sms_outage_queues_then_delivers_everything_once() {
    let h = Harness::start(|c| {
        // Enough patience for a ten-minute outage: no fallback to another channel.
        c.max_attempts = 50;
        c.retry_min = "1s".parse().unwrap();
        c.retry_max = "60s".parse().unwrap();
    })
    .await;
    h.fakes.set("sms", Mode::Down);
    let mut phones = BTreeSet::new();
    for i in 0..TICKETS {
        let c = h.customer(&format!("c{i}"), "en", &[Channel::Sms]);
        phones.insert(c.contacts[&Channel::Sms].clone());
        h.open(&c, &format!("pump-{i}"), Priority::Urgent, 0.97, Some(6));
    }
    let depth = || h.metric("forewarn_notify_outbox_depth", &[]);
    let age = || h.metric("forewarn_notify_outbox_oldest_age_seconds", &[]);
    let mut last_age = -1.0;
    let mut outage = Duration::ZERO;
    while outage < Duration::from_secs(600) {
        h.run().await;
        assert!(h.fakes.delivered("sms").is_empty());
        assert!(depth() >= TICKETS as f64, "queued: depth {}", depth());
        assert!(
            age() > last_age,
            "the age gauge grows: {} after {last_age}",
            age()
        );
        assert!(
            (age() - outage.as_secs_f64()).abs() < 1.0,
            "age {} s after {outage:?}",
            age()
        );
        last_age = age();
        h.advance(STEP);
        outage += STEP;
    }
    let tries = h.fakes.requests("sms");
    assert!(
        (5 * TICKETS..=20 * TICKETS).contains(&tries),
        "retried with backoff, not hammered: {tries} requests"
    );
    assert!(h.smtp.mails().is_empty(), "no fallback during the outage");
    assert_eq!(
        h.metric(
            "forewarn_notify_messages_total",
            &[("channel", "sms"), ("outcome", "sent")]
        ),
        0.0
    );

    h.fakes.set("sms", Mode::Ok);
    for _ in 0..4 {
        h.advance(STEP);
        h.run().await;
    }
    let delivered = h.fakes.delivered("sms");
    let to: BTreeSet<String> = delivered.iter().map(|d| d.to.clone()).collect();
    assert_eq!(delivered.len(), TICKETS, "one message per ticket");
    assert_eq!(to, phones, "every customer reached");
    assert_eq!(age(), 0.0, "only future reminder timers are left");
    assert_eq!(
        depth(),
        TICKETS as f64,
        "one reminder timer per urgent ticket"
    );
    eprintln!("outage: {tries} refused requests over 10 minutes for {TICKETS} messages");
}
