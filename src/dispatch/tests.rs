//! The dispatch step, table by table: row state × what the targets reported → effects, update.
//! No broker, no HTTP.

use super::*;
use crate::outbox::Facts;

const NOW: i64 = 1_800_000_000_000;

fn ticket() -> Ticket {
    Ticket {
        probability: 0.8,
        ..Ticket::example("T-1", "pump-1", crate::domain::Timestamp::from_millis(NOW))
    }
}

fn row(mqtt_done: bool, webhook_done: bool, attempts: u32) -> DispatchRow {
    DispatchRow {
        event: "opened".into(),
        ticket: TicketJson::new(&ticket()).unwrap(),
        mqtt_done,
        webhook_done,
        attempts,
        next_attempt_ms: 0,
        last_error: None,
        ticket_as_sent: AsSent,
    }
}

fn known(broker_connected: bool) -> Known {
    Known {
        broker_connected,
        max_attempts: 3,
        backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(300)),
    }
}

fn facts(connected: bool, seen: Vec<Seen>) -> FactsOf<Targets> {
    Facts::new(known(connected)).seen(seen).jitter(1.0)
}

fn counted(target: Target, result: Attempt) -> Effect<Record, Io> {
    Effect::Record(Record::Attempted(events::Attempted { target, result }))
}

#[test]
fn a_first_step_calls_each_undone_target_the_broker_allowing() {
    // (mqtt done, webhook done, broker connected) → calls
    let table: [(bool, bool, bool, Vec<Io>); 6] = [
        (false, false, true, vec![Io::Publish, Io::Post]),
        (false, false, false, vec![Io::Post]),
        (true, false, true, vec![Io::Post]),
        (false, true, true, vec![Io::Publish]),
        // Waiting for the broker is not an attempt: nothing to do, the row stays as it is.
        (false, true, false, vec![]),
        (true, false, false, vec![Io::Post]),
    ];
    for (mqtt, hook, connected, calls) in table {
        let (effects, update) = step(&row(mqtt, hook, 0), &facts(connected, vec![]), NOW);
        let want: Vec<Effect<Record, Io>> = calls.into_iter().map(Effect::Io).collect();
        assert_eq!(
            effects, want,
            "mqtt {mqtt}, webhook {hook}, connected {connected}"
        );
        assert_eq!(update, Update::Keep);
    }
}

#[test]
fn a_row_both_targets_took_is_removed() {
    let (effects, update) = step(
        &row(false, false, 0),
        &facts(true, vec![Seen::Published(Ok(())), Seen::Posted(Ok(()))]),
        NOW,
    );
    assert_eq!(
        effects,
        vec![
            counted(Target::Mqtt, Attempt::Ok),
            counted(Target::Webhook, Attempt::Ok)
        ]
    );
    assert_eq!(update, Update::Remove);
    // Already done (a row from before a crash): removed without a call.
    assert_eq!(
        step(&row(true, true, 2), &facts(true, vec![]), NOW),
        (vec![], Update::Remove)
    );
}

#[test]
fn a_webhook_taken_while_the_broker_is_away_is_kept_as_progress() {
    let (effects, update) = step(
        &row(false, false, 0),
        &facts(false, vec![Seen::Posted(Ok(()))]),
        NOW,
    );
    assert_eq!(effects, vec![counted(Target::Webhook, Attempt::Ok)]);
    assert_eq!(update, Update::Put(row(false, true, 0)));
}

#[test]
fn a_webhook_500_is_retried_at_the_backoff_and_keeps_the_publish() {
    let (effects, update) = step(
        &row(false, false, 0),
        &facts(
            true,
            vec![
                Seen::Published(Ok(())),
                Seen::Posted(Err(DeliveryError::Status {
                    code: 500,
                    reason: Some("Internal Server Error"),
                })),
            ],
        ),
        NOW,
    );
    let error = "webhook: HTTP 500 Internal Server Error".to_string();
    assert_eq!(
        effects,
        vec![
            counted(Target::Mqtt, Attempt::Ok),
            counted(Target::Webhook, Attempt::Error),
            Effect::Record(Record::Retrying(events::Retrying {
                ticket: "T-1".into(),
                attempt: 1,
                wait_ms: 1_000,
                error: error.clone(),
            })),
        ]
    );
    let mut want = row(true, false, 1);
    want.next_attempt_ms = NOW + 1_000;
    want.last_error = Some(error);
    assert_eq!(update, Update::Put(want));
}

#[test]
fn retries_back_off_exponentially_by_attempt() {
    // attempts before this failure → wait (jitter 1: the whole exponential step)
    for (before, wait) in [(0, 1_000), (1, 2_000)] {
        let (_, update) = step(
            &row(true, false, before),
            &facts(
                true,
                vec![Seen::Posted(Err(DeliveryError::Transport {
                    url: "https://fs.example/hook".into(),
                    what: Transport::TimedOut,
                }))],
            ),
            NOW,
        );
        let Update::Put(r) = update else {
            panic!("attempt {before}: {update:?}")
        };
        assert_eq!(
            r.next_attempt_ms,
            NOW + wait,
            "after attempt {}",
            before + 1
        );
    }
}

#[test]
fn the_last_attempt_moves_the_row_to_the_dead_letter_queue() {
    let (effects, update) = step(
        &row(true, false, 2),
        &facts(
            true,
            vec![Seen::Posted(Err(DeliveryError::Status {
                code: 503,
                reason: None,
            }))],
        ),
        NOW,
    );
    assert_eq!(
        effects,
        vec![
            counted(Target::Webhook, Attempt::Error),
            Effect::Record(Record::GaveUp(events::GaveUp {
                ticket: "T-1".into(),
                attempts: 3,
                error: "webhook: HTTP 503".into(),
            })),
        ]
    );
    let mut want = row(true, false, 3);
    want.last_error = Some("webhook: HTTP 503".into());
    assert_eq!(update, Update::Dead(want));
}

#[test]
fn a_failed_publish_is_an_attempt_like_a_failed_post() {
    let (_, update) = step(
        &row(false, true, 0),
        &facts(
            true,
            vec![Seen::Published(Err(DeliveryError::Client(
                "request queue closed".into(),
            )))],
        ),
        NOW,
    );
    let Update::Put(r) = update else {
        panic!("{update:?}")
    };
    assert_eq!(r.attempts, 1);
    assert_eq!(r.last_error.as_deref(), Some("mqtt: request queue closed"));
}

#[test]
fn rows_written_before_the_outbox_worker_still_decode() {
    let old = serde_json::json!({
        "event": "settled",
        "ticket": ticket(),
        "mqtt_done": true,
        "webhook_done": false,
        "attempts": 4,
        "next_attempt_ms": NOW,
    });
    let r: DispatchRow = serde_json::from_value(old).expect("old row decodes");
    assert_eq!((r.attempts, r.last_error), (4, None));
}

#[test]
fn a_row_without_the_as_sent_mark_publishes_its_ticket_encoded_again() {
    // Written by an older version: a ticket without the fields added since, its keys in
    // another order. It goes out as it always did: decoded, then encoded as today.
    let mut old = serde_json::to_value(ticket()).unwrap();
    let fields = old.as_object_mut().unwrap();
    fields.remove("customer_id");
    fields.remove("predicted_failure_at");
    let stored = serde_json::json!({
        "event": "opened",
        "ticket": old,
        "mqtt_done": false,
        "webhook_done": true,
        "attempts": 0,
        "next_attempt_ms": 0,
    });
    let r: DispatchRow = serde_json::from_value(stored).expect("old row decodes");
    assert_eq!(
        r.ticket.carried(),
        Some(&serde_json::to_vec(&ticket()).unwrap()[..])
    );
    assert_eq!(
        (r.ticket.id.as_str(), r.ticket.failure_mode.as_str()),
        ("T-1", "bearing_wear")
    );
    // Rewritten (an attempt recorded), it is marked and reads back the same.
    let again: DispatchRow = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
    assert_eq!(again, r);
}

#[test]
fn a_row_whose_ticket_is_not_a_ticket_is_refused() {
    for ticket in [
        serde_json::json!({"id": "T-1"}),
        serde_json::json!({"id": "T-1", "device_id": "", "failure_mode": "m"}),
        serde_json::json!([1, 2]),
    ] {
        for as_sent in [true, false] {
            let stored = serde_json::json!({
                "event": "opened", "ticket": ticket, "mqtt_done": false, "webhook_done": true,
                "attempts": 0, "next_attempt_ms": 0, "ticket_as_sent": as_sent,
            });
            assert!(
                serde_json::from_value::<DispatchRow>(stored).is_err(),
                "{ticket}"
            );
        }
    }
}

#[test]
fn a_webhook_status_reads_as_the_http_library_words_it() {
    for code in [500, 503, 404, 599] {
        let s = reqwest::StatusCode::from_u16(code).expect("status");
        assert_eq!(DeliveryError::status(s).to_string(), format!("HTTP {s}"));
    }
}

#[test]
fn a_new_row_carries_its_ticket_for_a_webhook_names_it_otherwise_and_is_its_own_json() {
    // A ticket with every optional part filled, and one with none.
    let mut full = ticket();
    full.customer_id = Some("c-\"1\"".into());
    full.predicted_failure_at = Some("2027-01-20T08:00:00Z".into());
    full.evidence = vec![crate::domain::Evidence {
        feature: "attr.âge".into(),
        value: None,
        weight: -0.25,
    }];
    full.history = vec![crate::domain::HistoryEntry {
        at: "2027-01-15T08:00:00Z".into(),
        actor: "api:ops".into(),
        action: "acknowledged".into(),
        from: Some(crate::domain::Status::Open),
        to: Some(crate::domain::Status::Acknowledged),
        note: "on it".into(),
    }];
    full.outcome = Some(crate::domain::Outcome::FalseAlarm);
    full.device_id = crate::domain::DeviceId::parse("ปั๊ม-\"۱\"").unwrap();
    for t in [ticket(), full] {
        let ticket_json = serde_json::to_vec(&t).unwrap();
        for kind in [
            ChangeKind::Opened,
            ChangeKind::Updated,
            ChangeKind::Settled,
            ChangeKind::Transition,
        ] {
            for has_webhook in [false, true] {
                let change = Change {
                    kind,
                    previous_priority: None,
                    ticket: t.clone(),
                };
                let row = DispatchRow::new(&change, has_webhook).unwrap();
                let want = serde_json::to_vec(&row).unwrap();
                let got = DispatchRow::new_json(kind, &t, &ticket_json, has_webhook);
                assert_eq!(
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(&want),
                    "{kind:?}, webhook {has_webhook}"
                );
                let read: DispatchRow = serde_json::from_slice(&got).unwrap();
                assert_eq!(read, row);
                let text = String::from_utf8(got.clone()).unwrap();
                if has_webhook {
                    // The webhook's body is the change's own state: the row carries it, and
                    // the worker's reader, which does not scan the ticket, reads the same row.
                    assert_eq!(read.ticket.carried(), Some(&ticket_json[..]));
                    assert_eq!(DispatchRow::read_stored(&got).as_ref(), Some(&read));
                } else {
                    // MQTT only: the row names its ticket; no copy of it (history, evidence).
                    assert_eq!(read.ticket.carried(), None);
                    assert!(
                        !text.contains("\"ticket\"") && !text.contains("on it"),
                        "{text}"
                    );
                    assert_eq!(DispatchRow::read_stored(&got), None, "left to JSON");
                }
                // The head is what the worker reads.
                assert_eq!(
                    (
                        read.ticket.id.as_str(),
                        read.ticket.device_id.as_str(),
                        read.ticket.failure_mode.as_str()
                    ),
                    (t.id.as_str(), t.device_id.as_str(), t.failure_mode.as_str())
                );
                // Posted, the body is what it always held: the ticket as a JSON value.
                let body = serde_json::to_vec(&serde_json::json!({
                    "event": format!("ticket.{}", kind.as_str()),
                    "ticket": t,
                }))
                .unwrap();
                assert_eq!(webhook_body(&read.event, &ticket_json), body);
            }
        }
    }
}

#[test]
fn a_row_with_neither_ticket_nor_head_is_refused() {
    let stored = br#"{"event":"opened","mqtt_done":false,"webhook_done":true,"attempts":0,"next_attempt_ms":0}"#;
    assert!(serde_json::from_slice::<DispatchRow>(stored).is_err());
}

#[test]
fn a_row_sends_its_tickets_json_as_stored_when_sent_and_an_absent_or_foreign_one_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 20).expect("store");
    let mut t = ticket();
    let change = Change {
        kind: ChangeKind::Opened,
        previous_priority: None,
        ticket: t.clone(),
    };
    let row = DispatchRow::new(&change, false).unwrap();
    // Not stored (yet): an error of the attempt, naming the ticket.
    let absent = ticket_json(&store, &row).unwrap_err();
    assert_eq!(absent, DeliveryError::Unreadable("T-1".into()));
    assert!(absent.to_string().contains("T-1"), "{absent}");
    // Stored, then changed since the row was written: the row sends the ticket as it is.
    for status in [
        crate::domain::Status::Open,
        crate::domain::Status::Acknowledged,
    ] {
        t.status = status;
        let mut tx = store.tx();
        tx.put_ticket(&t);
        store.commit(tx).unwrap();
        assert_eq!(
            ticket_json(&store, &row).unwrap(),
            serde_json::to_vec(&t).unwrap(),
            "{status:?}"
        );
    }
    // A row that carries its ticket sends what it carries.
    let carried = DispatchRow {
        ticket: TicketJson::new(&ticket()).unwrap(),
        ..row.clone()
    };
    assert_eq!(
        ticket_json(&store, &carried).unwrap(),
        serde_json::to_vec(&ticket()).unwrap()
    );
    // A row naming a ticket whose record holds another ticket: not sent.
    let other = DispatchRow {
        ticket: TicketJson::named(&Ticket::example(
            "T-2",
            "pump-1",
            crate::domain::Timestamp::from_millis(NOW),
        )),
        ..row
    };
    // T-1's JSON under T-2's key.
    store.outbox_put(b"t/T-2", &ticket()).unwrap();
    assert_eq!(
        ticket_json(&store, &other).unwrap_err(),
        DeliveryError::Unreadable("T-2".into())
    );
}

#[test]
fn the_workers_reader_reads_what_the_worker_rewrites_and_leaves_other_layouts_to_json() {
    // A ticket whose text holds the row's own marker: inside a string its quotes are escaped,
    // so it cannot be taken for the row's field.
    let mut t = ticket();
    t.history.push(crate::domain::HistoryEntry {
        at: "2027-01-15T08:00:00Z".into(),
        actor: "api:ops".into(),
        action: "note".into(),
        from: None,
        to: None,
        note: r#"x,"mqtt_done":true,"head":{} ünïcode"#.into(),
    });
    let change = Change {
        kind: ChangeKind::Updated,
        previous_priority: None,
        ticket: t.clone(),
    };
    let json = serde_json::to_vec(&t).unwrap();
    // A row that carries its ticket, as commits wrote them before rows named their ticket.
    let carrying = DispatchRow {
        ticket: TicketJson::new(&t).unwrap(),
        ..DispatchRow::new(&change, true).unwrap()
    };
    let stored = serde_json::to_vec(&carrying).unwrap();
    let read = DispatchRow::read_stored(&stored).expect("read without scanning the ticket");
    assert_eq!(read, carrying);
    assert_eq!(read.ticket.carried(), Some(&json[..]));
    // Rewritten by the worker after a failed attempt (an error with quotes in it): the same.
    let mut retried = read.clone();
    retried.attempts = 2;
    retried.mqtt_done = true;
    retried.next_attempt_ms = NOW;
    retried.last_error = Some(r#"webhook: "quoted", \ and ,"mqtt_done":"#.into());
    let rewritten = serde_json::to_vec(&retried).unwrap();
    assert_eq!(DispatchRow::read_stored(&rewritten), Some(retried.clone()));
    assert_eq!(
        serde_json::from_slice::<DispatchRow>(&rewritten).unwrap(),
        retried
    );
    // Other layouts are left to the JSON decoder: rows written before the head or the as-sent
    // mark, other field orders, an unknown event, a ticket that is not an object, a tail that
    // does not decode.
    let ticket_value = serde_json::to_value(&t).unwrap();
    let others = [
        serde_json::to_vec(&serde_json::json!({
            "event": "opened", "ticket": ticket_value, "mqtt_done": false,
            "webhook_done": true, "attempts": 0, "next_attempt_ms": 0,
        }))
        .unwrap(),
        serde_json::to_vec(&serde_json::json!({
            "event": "opened", "ticket": ticket_value, "mqtt_done": false,
            "webhook_done": true, "attempts": 0, "next_attempt_ms": 0, "ticket_as_sent": true,
        }))
        .unwrap(),
        String::from_utf8(stored.clone())
            .unwrap()
            .replacen("\"updated\"", "\"reopened\"", 1)
            .into_bytes(),
        br#"{"event":"opened","ticket":[1],"mqtt_done":false,"webhook_done":true,"attempts":0,"next_attempt_ms":0,"ticket_as_sent":true,"head":{"id":"T-1","device_id":"d","failure_mode":"m"}}"#.to_vec(),
        br#"{"event":"opened","ticket":{},"mqtt_done":"no","webhook_done":true,"attempts":0,"next_attempt_ms":0,"ticket_as_sent":true,"head":{"id":"T-1","device_id":"d","failure_mode":"m"}}"#.to_vec(),
        br#"{"ticket":{},"event":"opened","mqtt_done":false,"webhook_done":true,"attempts":0,"next_attempt_ms":0,"ticket_as_sent":true,"head":{"id":"T-1","device_id":"d","failure_mode":"m"}}"#.to_vec(),
    ];
    for bytes in others {
        assert_eq!(
            DispatchRow::read_stored(&bytes),
            None,
            "{}",
            String::from_utf8_lossy(&bytes)
        );
    }
}
