//! The notification step, table by table: row state × facts → effects, update. No store, no
//! provider, no clock: what the worker and the channels execute is pinned here.

use super::*;
use crate::domain::{Priority, Timestamp};
use std::time::Duration;

/// Noon in Bangkok (UTC+7).
fn noon() -> i64 {
    (Timestamp::parse("2027-01-15T05:00:00Z").expect("time")).as_millis()
}
const HOUR: i64 = 3_600_000;

fn ticket(status: Status) -> Ticket {
    Ticket {
        customer_id: Some("acme".into()),
        status,
        priority: Priority::Urgent,
        probability: 0.97,
        ..Ticket::example("T-1", "pump-1", Timestamp::from_millis(noon()))
    }
}

fn customer() -> Customer {
    let mut contacts = BTreeMap::new();
    contacts.insert(Channel::Sms, "+66810000001".to_string());
    contacts.insert(Channel::Email, "ops@acme.test".to_string());
    Customer {
        id: "acme".into(),
        name: "Acme".into(),
        locale: "en".into(),
        time_zone: "Asia/Bangkok".into(),
        contacts,
        preferences: vec![Channel::Sms, Channel::Email],
        quiet_hours: Some("22:00-07:00".into()),
        urgent_in_quiet_hours: true,
        daily_budget: None,
    }
}

fn row(kind: MessageKind, urgent: bool) -> OutboxRow {
    let reason = if urgent {
        "urgent: test"
    } else {
        "advisory: test"
    };
    let t = ticket(Status::Open);
    OutboxRow {
        id: format!("T-1/{}/0", kind.as_str()),
        ..OutboxRow::queued(&t, "acme", kind, urgent, reason.into(), noon())
    }
}

/// A row routed to SMS then e-mail, its SMS attempt under way.
fn sending(kind: MessageKind, urgent: bool) -> OutboxRow {
    let mut r = row(kind, urgent);
    r.plan = vec![Channel::Sms, Channel::Email];
    r.attempts.push(Attempt {
        at_ms: noon(),
        channel: Channel::Sms,
        outcome: "sending".into(),
        detail: String::new(),
        fingerprint: Some(fingerprint("the text")),
    });
    r
}

fn known() -> Known {
    Known {
        cfg: Arc::new(NotifyConfig::default()),
        ticket: ticket(Status::Open),
        answered: None,
        had_urgent: false,
        alerted: false,
        customer: Some(customer()),
        day: "2027-01-15".into(),
        sent_today: Some(0),
        available: [Channel::Sms, Channel::Email].into_iter().collect(),
        opted_out: BTreeSet::new(),
        unusable: BTreeMap::new(),
        rendered: Some(Rendered {
            locale: "en".into(),
            sms: "the text".into(),
            ..Rendered::default()
        }),
        reply: Some(("a1b2".into(), "replies+a1b2@forewarn.test".into())),
    }
}

fn first(row: &OutboxRow, k: Known, now: i64) -> NotifyStep {
    step(row, &Facts::new(k), now)
}

fn reported(row: &OutboxRow, result: Result<Accepted, SendError>, resent: bool) -> NotifyStep {
    let seen = vec![Seen::Sent {
        channel: Channel::Sms,
        result,
        resent,
    }];
    step(row, &Facts::new(known()).seen(seen).jitter(1.0), noon())
}

/// The timeline entries a step records: (kind, outcome, detail).
fn entries(effects: &[Effect<Record, Io>]) -> Vec<(String, Option<String>, String)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Record(Record::Timeline { entry, .. }) => Some((
                entry.kind.clone(),
                entry.outcome.clone(),
                entry.detail.clone(),
            )),
            _ => None,
        })
        .collect()
}

fn has(effects: &[Effect<Record, Io>], r: Record) -> bool {
    effects.contains(&Effect::Record(r))
}

fn counted(effects: &[Effect<Record, Io>], channel: &str, outcome: &str) -> bool {
    effects.iter().any(|e| match e {
        Effect::Record(Record::Attempt(a)) => {
            a.channel_label() == channel && a.outcome.as_str() == outcome
        }
        Effect::Record(Record::Sent(s)) => s.channel.as_str() == channel && outcome == "sent",
        _ => false,
    })
}

fn sends(effects: &[Effect<Record, Io>]) -> Vec<Io> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Io(io) => Some(io.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_new_urgent_row_is_routed_recorded_as_sending_and_sent() {
    let r = row(MessageKind::Urgent, true);
    let (effects, update) = first(&r, known(), noon());
    assert_eq!(
        sends(&effects),
        vec![Io::Send {
            channel: Channel::Sms,
            address: "+66810000001".into(),
            interrupted: vec![],
        }]
    );
    let decision = &entries(&effects)[0];
    assert_eq!(decision.0, "decision");
    assert!(decision.2.starts_with("SMS: "), "{}", decision.2);
    let Update::Put(r) = update else {
        panic!("{update:?}")
    };
    assert_eq!(r.plan, vec![Channel::Sms, Channel::Email]);
    // Durable before the call, with the fingerprint recovery looks for at the provider.
    assert_eq!(r.attempts.len(), 1);
    assert_eq!(r.attempts[0].outcome, "sending");
    assert_eq!(r.attempts[0].fingerprint, Some(fingerprint("the text")));
}

#[test]
fn stale_rows_are_dropped_with_the_reason() {
    let mut acknowledged = known();
    acknowledged.ticket.status = Status::Acknowledged;
    let mut answered = known();
    answered.answered = Some(Answer {
        answer: "yes".into(),
        channel: "sms".into(),
        at: "2027-01-15T05:10:00Z".into(),
        changes: 0,
    });
    let mut had_urgent = known();
    had_urgent.had_urgent = true;
    let mut closed = known();
    closed.ticket.status = Status::Resolved;
    let mut alerted = known();
    alerted.alerted = true;
    alerted.ticket.status = Status::Resolved;
    // (row, facts) → the timeline's reason, or None when the row goes on
    let table: Vec<(OutboxRow, Known, Option<&str>)> = vec![
        (
            row(MessageKind::Reminder, true),
            acknowledged,
            Some("reminder not needed: ticket acknowledged"),
        ),
        (
            row(MessageKind::Reminder, true),
            answered,
            Some("reminder not needed: ticket open, customer answered \"yes\" by sms"),
        ),
        (
            row(MessageKind::Resolved, false),
            closed.clone(),
            Some("not sent: the customer was never alerted about this ticket"),
        ),
        (row(MessageKind::Resolved, false), alerted, None),
        (
            row(MessageKind::Urgent, true),
            had_urgent.clone(),
            Some("not sent: the customer already had an urgent alert for this ticket"),
        ),
        // A fallback row of that alert has its plan and goes on.
        (sending(MessageKind::Urgent, true), had_urgent, None),
        (
            row(MessageKind::Alert, false),
            closed,
            Some("not sent: ticket already resolved"),
        ),
    ];
    for (r, k, why) in table {
        let (effects, update) = first(&r, k, noon());
        match why {
            Some(why) => {
                assert_eq!(update, Update::Remove, "{why}");
                assert_eq!(
                    entries(&effects),
                    vec![("dropped".into(), None, why.into())]
                );
            }
            None => assert!(matches!(update, Update::Put(_)), "{:?}: {update:?}", r.kind),
        }
    }
}

#[test]
fn a_row_of_an_unknown_customer_is_dropped_and_counted() {
    let mut k = known();
    k.customer = None;
    let (effects, update) = first(&row(MessageKind::Urgent, true), k, noon());
    assert_eq!(update, Update::Remove);
    assert!(counted(&effects, "none", "dropped"));
    assert_eq!(entries(&effects)[0].2, "customer unknown");
}

#[test]
fn an_unreadable_budget_leaves_the_row_for_the_next_round() {
    let mut k = known();
    k.sent_today = None;
    assert_eq!(
        first(&row(MessageKind::Urgent, true), k, noon()),
        (vec![], Update::Keep)
    );
}

#[test]
fn an_advisory_in_quiet_hours_is_deferred_to_their_end() {
    let late = noon() + 11 * HOUR; // 23:00 in Bangkok
    let (effects, update) = first(&row(MessageKind::Alert, false), known(), late);
    let Update::Put(r) = update else {
        panic!("{update:?}")
    };
    assert_eq!(r.due_ms, noon() + 19 * HOUR, "07:00 the next morning");
    assert!(r.plan.is_empty(), "routed again when due");
    assert!(counted(&effects, "none", "held"));
    assert!(sends(&effects).is_empty());
    // Urgent messages go in quiet hours when the customer allows it.
    let (effects, _) = first(&row(MessageKind::Urgent, true), known(), late);
    assert_eq!(sends(&effects).len(), 1);
}

#[test]
fn a_retry_of_an_advisory_never_lands_in_quiet_hours() {
    let mut r = row(MessageKind::Alert, false);
    r.plan = vec![Channel::Email];
    let late = noon() + 11 * HOUR;
    let (effects, update) = first(&r, known(), late);
    let Update::Put(held) = update else {
        panic!("{update:?}")
    };
    assert_eq!(held.due_ms, noon() + 19 * HOUR);
    assert_eq!(
        entries(&effects),
        vec![(
            "decision".into(),
            Some("held".into()),
            "retry held: quiet hours until 07:00".into()
        )]
    );
}

#[test]
fn the_daily_budget_holds_advisories_and_lets_a_few_urgent_messages_over() {
    // (urgent, sent today) → sent now? (budget 6, 2 more for urgent messages)
    let table = [
        (false, 5, true),
        (false, 6, false),
        (true, 6, true),
        (true, 7, true),
        (true, 8, false),
    ];
    for (urgent, sent, goes) in table {
        let mut k = known();
        k.sent_today = Some(sent);
        let kind = if urgent {
            MessageKind::Urgent
        } else {
            MessageKind::Alert
        };
        let (effects, update) = first(&row(kind, urgent), k, noon());
        assert_eq!(
            !sends(&effects).is_empty(),
            goes,
            "urgent {urgent}, sent {sent}"
        );
        if !goes {
            let Update::Put(r) = update else {
                panic!("{update:?}")
            };
            assert_eq!(r.due_ms, noon() + 12 * HOUR, "local midnight");
        }
    }
}

#[test]
fn a_channel_without_contact_or_provider_falls_back_to_the_next() {
    let mut no_provider = known();
    no_provider.available.remove(&Channel::Sms);
    let mut no_contact = known();
    if let Some(c) = no_contact.customer.as_mut() {
        c.contacts.remove(&Channel::Sms);
    }
    for (k, why) in [
        (no_provider, "no provider configured"),
        (no_contact, "no contact on this channel"),
    ] {
        let mut r = row(MessageKind::Urgent, true);
        r.plan = vec![Channel::Sms, Channel::Email];
        let (effects, update) = first(&r, k, noon());
        assert!(counted(&effects, "sms", "failed"));
        assert!(has(&effects, Record::Fallback(Channel::Sms)));
        assert_eq!(
            entries(&effects),
            vec![(
                "fallback".into(),
                None,
                format!("sms failed ({why}); trying email next")
            )]
        );
        let Update::Put(r) = update else {
            panic!("{update:?}")
        };
        assert_eq!((r.step, r.tries, r.due_ms), (1, 0, noon()), "due at once");
    }
}

#[test]
fn an_email_records_its_reply_address_before_it_leaves() {
    let mut r = row(MessageKind::Alert, false);
    r.plan = vec![Channel::Email];
    let (effects, _) = first(&r, known(), noon());
    assert!(has(
        &effects,
        Record::ReplyTo {
            token: "a1b2".into(),
            address: "replies+a1b2@forewarn.test".into(),
            target: super::super::ReplyTarget {
                ticket_id: "T-1".into(),
                customer_id: "acme".into(),
            },
        }
    ));
}

#[test]
fn an_accepted_message_is_removed_with_budget_warning_and_reminder() {
    let accepted = Accepted {
        provider_id: Some("SM1".into()),
        detail: "queued".into(),
    };
    let (effects, update) = reported(&sending(MessageKind::Urgent, true), Ok(accepted), false);
    assert_eq!(update, Update::Remove);
    assert!(counted(&effects, "sms", "sent"));
    for r in [
        Record::Budget {
            customer: "acme".into(),
            day: "2027-01-15".into(),
            sent: 1,
        },
        Record::UrgentSent {
            ticket: "T-1".into(),
        },
        Record::Warned {
            ticket: "T-1".into(),
            customer: "acme".into(),
            channel: Channel::Sms,
        },
    ] {
        assert!(has(&effects, r.clone()), "{r:?}");
    }
    let reminder = effects.iter().find_map(|e| match e {
        Effect::Record(Record::Reminder(r)) => Some(r),
        _ => None,
    });
    let reminder = reminder.expect("a reminder after the acknowledgement timeout");
    assert_eq!(reminder.due_ms, noon() + 2 * HOUR);
    assert_eq!(reminder.escalate_from, Some(Channel::Sms));
    assert_eq!(reminder.id, "T-1/urgent/0/r1");
    let sid = effects.iter().find_map(|e| match e {
        Effect::Record(Record::ProviderId { id, record }) => Some((id, record)),
        _ => None,
    });
    let (id, record) = sid.expect("the SID is kept for status callbacks");
    assert_eq!(id, "SM1");
    assert_eq!(record.row.attempts[0].outcome, "accepted");
}

#[test]
fn an_interrupted_send_found_at_the_provider_is_taken_as_sent() {
    let mut r = sending(MessageKind::Urgent, true);
    // The first attempt never got its answer recorded (a crash): the next step names it.
    let (effects, _) = first(&r, known(), noon() + 60_000);
    let Some(Io::Send { interrupted, .. }) = sends(&effects).into_iter().next() else {
        panic!("{effects:?}")
    };
    assert_eq!(interrupted, r.attempts);
    r.attempts.push(Attempt {
        detail: "after an interrupted attempt".into(),
        ..r.attempts[0].clone()
    });
    let found = Accepted {
        provider_id: Some("SM9".into()),
        detail: format!("{FOUND} (delivered)"),
    };
    let (effects, update) = reported(&r, Ok(found), true);
    assert_eq!(update, Update::Remove);
    let message = &entries(&effects)[0];
    assert!(message.2.ends_with(", not sent again)"), "{}", message.2);
    // Not found: sent again, and the timeline says so.
    let again = Accepted {
        provider_id: Some("SM10".into()),
        detail: "queued".into(),
    };
    let (effects, _) = reported(&r, Ok(again), true);
    assert!(entries(&effects)[0].2.contains("sent again"));
}

#[test]
fn a_retryable_failure_waits_the_backoff_or_retry_after() {
    let r = sending(MessageKind::Urgent, true);
    // (Retry-After) → wait: the backoff (2 s at the first try) unless the provider asks longer.
    for (after, wait) in [
        (None, 2_000),
        (Some(Duration::from_secs(30)), 30_000),
        (Some(Duration::from_millis(10)), 2_000),
    ] {
        let (effects, update) = reported(
            &r,
            Err(SendError::Retry {
                detail: "HTTP 503".into(),
                after,
            }),
            false,
        );
        assert!(counted(&effects, "sms", "retry"));
        let Update::Put(next) = update else {
            panic!("{update:?}")
        };
        assert_eq!((next.tries, next.due_ms), (1, noon() + wait), "{after:?}");
        assert_eq!(next.attempts[0].outcome, "retry");
        assert_eq!(
            entries(&effects)[0].2,
            format!("sms attempt 1 failed: HTTP 503; retry in {}s", wait / 1000)
        );
    }
}

#[test]
fn max_attempts_or_a_permanent_failure_falls_back_then_gives_up() {
    let mut tired = sending(MessageKind::Urgent, true);
    tired.tries = 4;
    let (effects, update) = reported(
        &tired,
        Err(SendError::Retry {
            detail: "timed out".into(),
            after: None,
        }),
        false,
    );
    assert!(has(&effects, Record::Fallback(Channel::Sms)));
    assert!(entries(&effects)[0]
        .2
        .starts_with("sms failed (timed out (after 5 attempts))"));
    assert!(matches!(update, Update::Put(r) if r.step == 1));

    let (effects, update) = reported(
        &sending(MessageKind::Urgent, true),
        Err(SendError::Permanent {
            detail: "HTTP 400".into(),
        }),
        false,
    );
    let Update::Put(r) = update else {
        panic!("{update:?}")
    };
    assert_eq!(r.attempts[0].outcome, "failed");
    assert!(counted(&effects, "sms", "failed"));

    // The last channel fails: nothing is left, the row goes with a reason a person reads.
    let mut last = sending(MessageKind::Urgent, true);
    last.plan = vec![Channel::Sms];
    let (effects, update) = reported(
        &last,
        Err(SendError::Permanent {
            detail: "HTTP 400".into(),
        }),
        false,
    );
    assert_eq!(update, Update::Remove);
    assert_eq!(
        entries(&effects),
        vec![(
            "dropped".into(),
            Some("failed".into()),
            "sms failed (HTTP 400); no channel left: message undeliverable".into()
        )]
    );
}
