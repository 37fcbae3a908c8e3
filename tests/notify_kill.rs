//! Nothing is lost and nothing doubled across kill -9: a child process commits a ticket with its
//! notification and is killed while the provider holds the request (sent, not yet recorded).
//! The restarted notifier asks the provider's Messages list what went to the customer, finds
//! the text and does not send it again (the fake, like Twilio, does not de-duplicate): the
//! customer gets exactly one message.

mod support;

use forewarn::domain::Priority;
use forewarn::fleet::Channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::notify::providers::{Fakes, Inner, Mode};
use support::notify::smtp::SmtpServer;
use support::notify::Harness;

const DIR: &str = "FOREWARN_TEST_NOTIFY_KILL_DIR";
const BASE: &str = "FOREWARN_TEST_NOTIFY_KILL_FAKES";

/// The child half: does nothing unless started by the test below.
#[tokio::test]
#[ignore = "child process of outbox_survives_kill_9_between_send_and_record"]
async fn kill_child_sends_until_killed() {
    let (Ok(dir), Ok(base)) = (std::env::var(DIR), std::env::var(BASE)) else {
        return;
    };
    let fakes = Fakes {
        base,
        inner: Arc::new(Mutex::new(Inner::default())),
    };
    let h = Harness::with(dir.into(), None, fakes, SmtpServer::start().await, |c| {
        c.send_timeout = "60s".parse().unwrap()
    })
    .await;
    let c = h.customer("acme", "en", &[Channel::Sms]);
    h.open(&c, "pump-1", Priority::Urgent, 0.97, Some(6));
    h.run().await; // the provider hangs: killed in here
    panic!("the parent should have killed this process");
}

#[tokio::test]
async fn outbox_survives_kill_9_between_send_and_record() {
    let fakes = Fakes::start().await;
    // The provider's clock agrees with the child's injected one.
    fakes.set_clock(Arc::new(|| support::notify::NOON_BKK));
    fakes.set("sms", Mode::Hang(60_000));
    let tmp = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "kill_child_sends_until_killed",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(DIR, tmp.path())
        .env(BASE, &fakes.base)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while fakes.delivered("sms").is_empty() {
        assert!(
            Instant::now() < deadline,
            "child never reached the provider"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    fakes.set("sms", Mode::Ok);
    let path = tmp.path().to_path_buf();
    let h = Harness::with(path, Some(tmp), fakes, SmtpServer::start().await, |_| {}).await;
    let c = h.customer("acme", "en", &[Channel::Sms]);
    let tickets = h.store.tickets(&Default::default()).unwrap();
    assert_eq!(tickets.len(), 1, "the ticket survived");
    assert_eq!(h.outbox_len(), 1, "its notification survived");
    h.run().await;
    assert_eq!(
        h.fakes.requests("sms_list"),
        1,
        "the provider was asked first"
    );
    assert_eq!(h.fakes.requests("sms"), 1, "and nothing was sent again");
    let sent = h.fakes.delivered("sms");
    assert_eq!(sent.len(), 1, "exactly one text");
    assert_eq!(sent[0].to, c.contacts[&Channel::Sms]);
    assert_eq!(h.outbox_len(), 1, "only the reminder timer is left");
}
