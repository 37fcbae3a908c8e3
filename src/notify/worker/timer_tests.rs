//! The notification worker on paused tokio time: its rows' due times, read off the same clock
//! the policy uses, wake it — not a poll.

use super::*;
use crate::clock::{Clock, TokioClock};
use std::time::Duration;

/// 05:00 UTC of a day: noon in Bangkok (UTC+7).
const T0: i64 = 1_800_000_000_000 - 1_800_000_000_000 % 86_400_000 + 5 * 3_600_000;
const HOUR: i64 = 3_600_000;

/// A desk whose one ticket the customer already acknowledged.
struct Desk {
    ticket: Ticket,
    customer: Customer,
}

impl TicketDesk for Desk {
    fn ticket(&self, id: &str) -> Option<Ticket> {
        (id == self.ticket.id).then(|| self.ticket.clone())
    }
    fn customer_reply(
        &self,
        id: &str,
        _: Option<Status>,
        _: &str,
        _: &str,
    ) -> Result<Ticket, super::super::DeskError> {
        Err(super::super::DeskError::TicketNotFound(id.into()))
    }
    fn customer(&self, id: &str) -> Option<Customer> {
        (id == self.customer.id).then(|| self.customer.clone())
    }
    fn device(&self, _: &str) -> Option<crate::fleet::Device> {
        None
    }
}

fn ticket() -> Ticket {
    Ticket {
        customer_id: Some("acme".into()),
        status: Status::Acknowledged,
        priority: crate::domain::Priority::Urgent,
        probability: 0.97,
        ..Ticket::example("T-1", "pump-1", crate::domain::Timestamp::from_millis(T0))
    }
}

fn reminder(due_ms: i64) -> OutboxRow {
    let reason = "urgent: not acknowledged 2h after the first message";
    OutboxRow {
        id: "T-1/urgent/0/r1".into(),
        reminder: 1,
        escalate_from: Some(Channel::Sms),
        ..OutboxRow::queued(
            &ticket(),
            "acme",
            MessageKind::Reminder,
            true,
            reason.into(),
            due_ms,
        )
    }
}

async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_reminder_waits_for_its_due_time_then_is_dropped_for_an_acknowledged_ticket() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), 1 << 20).expect("store");
    // A poll far longer than the reminder's wait: only its due time can wake the worker.
    let cfg = NotifyConfig {
        poll_interval: crate::domain::Dur::hours(24),
        ..NotifyConfig::default()
    };
    let clock = TokioClock::new(T0);
    let registry = prometheus::Registry::new();
    let notifier = Arc::new(
        Notifier::build(&cfg, "http://forewarn.test", &registry)
            .expect("notifier")
            .with_clock(clock.clone()),
    );
    let mut tx = store.tx();
    tx.push_outbox(QUEUE, &reminder(T0 + 2 * HOUR));
    store.commit(tx).expect("commit");
    let desk = Arc::new(Desk {
        ticket: ticket(),
        customer: Customer {
            id: "acme".into(),
            name: "Acme".into(),
            locale: "en".into(),
            time_zone: "Asia/Bangkok".into(),
            contacts: BTreeMap::new(),
            preferences: vec![],
            quiet_hours: None,
            urgent_in_quiet_hours: true,
            daily_budget: None,
        },
    });
    let token = tokio_util::sync::CancellationToken::new();
    let job = notifier
        .clone()
        .spawn_worker(store.clone(), desk, None, token.clone());
    settle().await;
    assert_eq!(store.outbox_len(QUEUE), 1);
    tokio::time::advance(Duration::from_millis(2 * HOUR as u64 - 1)).await;
    settle().await;
    assert_eq!(store.outbox_len(QUEUE), 1, "not a millisecond early");
    tokio::time::advance(Duration::from_millis(1)).await;
    settle().await;
    assert_eq!(store.outbox_len(QUEUE), 0);
    let timeline: Vec<TimelineEntry> = store.timeline("acme").expect("timeline");
    let last = timeline.last().expect("an entry");
    assert_eq!(
        (last.kind.as_str(), last.detail.as_str(), last.at.as_str()),
        (
            "dropped",
            "reminder not needed: ticket acknowledged",
            crate::domain::Timestamp::from_millis(clock.now_ms())
                .format()
                .as_str()
        )
    );
    token.cancel();
    job.await.expect("worker stops");
}
