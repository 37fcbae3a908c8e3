//! Delivery: routing by preference and urgency, quiet hours with an injected clock, real SMTP,
//! fallback and retries against fake providers over HTTP, escalation, the daily budget, and a
//! restart between "sent" and "recorded".

mod support;

use forewarn::domain::Priority;
use forewarn::fleet::Channel;
use std::time::Duration;
use support::notify::providers::Mode;
use support::notify::{smtp, Harness, HOUR};

const MIN: Duration = Duration::from_secs(60);

#[tokio::test]
async fn advisory_goes_to_the_first_preferred_asynchronous_channel() {
    let h = Harness::start(|_| {}).await;
    let c = h.customer("acme", "en", &[Channel::Push, Channel::Email]);
    let t = h.open(&c, "pump-1", Priority::High, 0.7, Some(72));
    h.run().await;
    let push = h.fakes.delivered("push");
    assert_eq!(push.len(), 1);
    assert_eq!(push[0].to, "topic-acme");
    assert!(push[0].body.contains("pump-1"), "{}", push[0].body);
    assert!(
        h.smtp.mails().is_empty(),
        "only one channel is used when it works"
    );
    let tl = h.timeline("acme");
    let decision = tl.iter().find(|e| e.kind == "decision").unwrap();
    assert!(
        decision.detail.starts_with("PUSH: advisory"),
        "{}",
        decision.detail
    );
    assert!(
        decision.detail.contains("push: preferred #1"),
        "{}",
        decision.detail
    );
    assert!(tl
        .iter()
        .any(|e| e.kind == "message" && e.ticket_id == t.id));
    assert_eq!(h.outbox_len(), 0);
    assert_eq!(
        h.metric(
            "forewarn_notify_messages_total",
            &[("channel", "push"), ("outcome", "sent")]
        ),
        1.0
    );
}

#[tokio::test]
async fn email_is_sent_over_real_smtp_with_plain_and_html_parts() {
    let h = Harness::start(|_| {}).await;
    let c = h.customer("acme", "en", &[Channel::Email]);
    let t = h.open(&c, "pump-1", Priority::High, 0.7, Some(72));
    h.run().await;
    let mails = h.smtp.mails();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].to, vec!["acme@customer.test".to_string()]);
    let data = &mails[0].data;
    assert!(
        data.contains(&format!("[{}]", t.id)),
        "subject carries the ticket id"
    );
    // The message's own reply address: the configured one with an unguessable token.
    let reply_to = support::notify::reply_to_of(data).unwrap();
    let token = forewarn::notify::reply_token(&reply_to).unwrap();
    assert_eq!(reply_to, format!("replies+{token}@forewarn.test"));
    let parts = smtp::parts(data);
    let plain = parts.iter().find(|p| p.0.contains("text/plain")).unwrap();
    let html = parts.iter().find(|p| p.0.contains("text/html")).unwrap();
    assert!(
        plain
            .1
            .contains("pump-1 needs a service visit before Thu 26 Nov 2026, 12:00"),
        "{}",
        plain.1
    );
    assert!(
        plain.1.contains("What we see: worn bearings."),
        "{}",
        plain.1
    );
    assert!(!plain.1.contains('%'), "no probability: {}", plain.1);
    assert!(html.1.contains("<a href=\"http://127.0.0.1:"), "{}", html.1);
    assert!(html.1.contains("/notify/v1/s/"));
}

#[tokio::test]
async fn urgent_uses_an_immediate_channel_in_quiet_hours_while_advisory_waits_until_they_end() {
    let h = Harness::start(|_| {}).await;
    let c = h.customer("acme", "en", &[Channel::Email, Channel::Sms]);
    h.advance(Duration::from_secs(11 * 3600)); // 23:00 in Bangkok
    let urgent = h.open(&c, "pump-1", Priority::Urgent, 0.97, Some(6));
    let advisory = h.open(&c, "pump-2", Priority::Advisory, 0.6, Some(200));
    h.run().await;
    let sms = h.fakes.delivered("sms");
    assert_eq!(sms.len(), 1, "urgent goes out at night by SMS");
    assert!(sms[0].body.contains("pump-1"), "{}", sms[0].body);
    let _ = &urgent.id;
    assert!(h.smtp.mails().is_empty(), "advisory e-mail is held");
    let tl = h.timeline("acme");
    let urgent_decision = tl
        .iter()
        .find(|e| e.kind == "decision" && e.ticket_id == urgent.id)
        .unwrap();
    assert!(
        urgent_decision.detail.starts_with("SMS: urgent"),
        "{}",
        urgent_decision.detail
    );
    assert!(urgent_decision.detail.contains("sms: preferred #2"));
    assert!(urgent_decision
        .detail
        .contains("email skipped: quiet hours until 07:00"));
    let held = tl
        .iter()
        .find(|e| e.kind == "decision" && e.ticket_id == advisory.id)
        .unwrap();
    assert_eq!(held.outcome.as_deref(), Some("held"));
    assert!(
        held.detail.contains("held: quiet hours until 07:00"),
        "{}",
        held.detail
    );
    // 06:59: still quiet.
    h.advance(Duration::from_secs(7 * 3600 + 59 * 60));
    h.run().await;
    assert!(h.smtp.mails().is_empty());
    assert_eq!(
        h.metric("forewarn_notify_outbox_depth", &[]),
        2.0,
        "held advisory + reminder timer"
    );
    assert_eq!(
        h.metric("forewarn_notify_outbox_oldest_age_seconds", &[]),
        (7 * 3600 + 59 * 60) as f64
    );
    // 07:00: the e-mail goes.
    h.advance(MIN);
    h.run().await;
    let mails = h.smtp.mails();
    assert_eq!(mails.len(), 1);
    assert!(mails[0].data.contains(&advisory.id));
}

#[tokio::test]
async fn sms_outage_falls_back_to_email_after_retries() {
    let h = Harness::start(|_| {}).await;
    h.fakes.set("sms", Mode::Down);
    let c = h.customer("acme", "en", &[Channel::Sms, Channel::Email]);
    let t = h.open(&c, "pump-1", Priority::Urgent, 0.97, Some(6));
    for _ in 0..3 {
        h.run().await;
        h.advance(Duration::from_secs(120));
    }
    h.run().await;
    assert_eq!(
        h.fakes.requests("sms"),
        3,
        "max_attempts on the first channel"
    );
    assert!(h.fakes.delivered("sms").is_empty());
    let mails = h.smtp.mails();
    assert_eq!(mails.len(), 1, "fell back to e-mail");
    assert!(mails[0].data.contains(&t.id));
    let tl = h.timeline("acme");
    let fb = tl.iter().find(|e| e.kind == "fallback").unwrap();
    assert!(
        fb.detail.starts_with("sms failed (provider answered 503"),
        "{}",
        fb.detail
    );
    assert!(fb.detail.contains("trying email next"));
    assert_eq!(
        h.metric("forewarn_notify_fallbacks_total", &[("channel", "sms")]),
        1.0
    );
}

#[tokio::test]
async fn a_rejected_number_falls_back_at_once() {
    let h = Harness::start(|_| {}).await;
    h.fakes.set("sms", Mode::Reject);
    let c = h.customer("acme", "en", &[Channel::Sms, Channel::Voice]);
    h.open(&c, "pump-1", Priority::Urgent, 0.97, Some(6));
    h.run().await;
    h.run().await;
    assert_eq!(h.fakes.requests("sms"), 1, "a 400 is not retried");
    let calls = h.fakes.delivered("voice");
    assert_eq!(calls.len(), 1);
    assert!(
        calls[0]
            .body
            .starts_with("<Response><Say language=\"en-US\">"),
        "{}",
        calls[0].body
    );
    assert!(calls[0].body.contains("pump-1"));
    assert!(calls[0]
        .status_callback
        .ends_with("/notify/v1/twilio/status"));
}

#[tokio::test]
async fn provider_coming_back_delivers_the_message_exactly_once() {
    let h = Harness::start(|_| {}).await;
    h.fakes.set("sms", Mode::Down);
    let c = h.customer("acme", "en", &[Channel::Sms]);
    h.open(&c, "pump-1", Priority::Urgent, 0.97, Some(6));
    h.run().await;
    assert_eq!(h.fakes.requests("sms"), 1);
    h.run().await;
    assert_eq!(h.fakes.requests("sms"), 1, "not retried before the backoff");
    h.fakes.set("sms", Mode::Ok);
    h.advance(Duration::from_secs(5));
    h.run().await;
    h.advance(Duration::from_secs(60));
    h.run().await;
    assert_eq!(h.fakes.requests("sms"), 2);
    assert_eq!(h.fakes.delivered("sms").len(), 1);
    assert_eq!(h.outbox_len(), 1, "only the reminder timer is left");
}

#[tokio::test]
async fn rate_limit_retry_after_is_honoured() {
    let h = Harness::start(|_| {}).await;
    h.fakes.set("push", Mode::RateLimit(120));
    let c = h.customer("acme", "en", &[Channel::Push]);
    h.open(&c, "pump-1", Priority::High, 0.7, Some(72));
    h.run().await;
    h.fakes.set("push", Mode::Ok);
    h.advance(Duration::from_secs(119));
    h.run().await;
    assert_eq!(
        h.fakes.requests("push"),
        1,
        "waits for Retry-After, not the 1s backoff"
    );
    h.advance(Duration::from_secs(2));
    h.run().await;
    assert_eq!(h.fakes.delivered("push").len(), 1);
    let tl = h.timeline("acme");
    assert!(tl.iter().any(|e| e.kind == "attempt"
        && e.detail.contains("429")
        && e.detail.contains("retry in 120s")));
}

#[tokio::test]
async fn unacknowledged_urgent_ticket_is_escalated_to_a_more_immediate_channel_up_to_the_limit() {
    let h = Harness::start(|c| c.max_reminders = 2).await;
    let c = h.customer("acme", "en", &[Channel::Sms, Channel::Voice]);
    let t = h.open(&c, "pump-1", Priority::Urgent, 0.97, Some(6));
    h.run().await;
    assert_eq!(h.fakes.delivered("sms").len(), 1);
    h.advance(Duration::from_secs(3600));
    h.run().await;
    assert!(
        h.fakes.delivered("voice").is_empty(),
        "not before ack_timeout"
    );
    h.advance(Duration::from_secs(3600));
    h.run().await;
    let calls = h.fakes.delivered("voice");
    assert_eq!(calls.len(), 1, "first reminder climbs from SMS to a call");
    assert!(calls[0].body.contains("Reminder"), "{}", calls[0].body);
    h.advance(Duration::from_secs(2 * 3600));
    h.run().await;
    h.advance(Duration::from_secs(2 * 3600));
    h.run().await;
    let total = h.fakes.delivered("voice").len() + h.fakes.delivered("sms").len();
    assert_eq!(total, 3, "alert + two reminders, then it stops");
    assert_eq!(h.outbox_len(), 0);
    assert_eq!(h.metric("forewarn_notify_escalations_total", &[]), 2.0);
    let tl = h.timeline("acme");
    assert!(tl.iter().any(|e| e.kind == "decision"
        && e.ticket_id == t.id
        && e.detail.contains("escalating beyond sms")));
}

#[tokio::test]
async fn an_acknowledged_ticket_gets_no_reminder() {
    let h = Harness::start(|_| {}).await;
    let c = h.customer("acme", "en", &[Channel::Sms]);
    let t = h.open(&c, "pump-1", Priority::Urgent, 0.97, Some(6));
    h.run().await;
    use forewarn::notify::TicketDesk;
    h.desk
        .customer_reply(
            &t.id,
            Some(forewarn::domain::Status::Acknowledged),
            "api:ops",
            "",
        )
        .unwrap();
    h.advance(Duration::from_secs(3 * 3600));
    h.run().await;
    assert_eq!(h.fakes.delivered("sms").len(), 1);
    assert!(h.fakes.delivered("voice").is_empty());
    let tl = h.timeline("acme");
    assert!(tl.iter().any(|e| e.kind == "dropped"
        && e.detail
            .contains("reminder not needed: ticket acknowledged")));
}

#[tokio::test]
async fn daily_budget_holds_advisories_but_lets_urgent_through_within_its_allowance() {
    let h = Harness::start(|c| {
        c.daily_budget = 2;
        c.urgent_over_budget = 1;
        c.max_reminders = 0;
    })
    .await;
    let c = h.customer("acme", "en", &[Channel::Push, Channel::Sms]);
    for d in ["p1", "p2", "p3"] {
        h.open(&c, d, Priority::High, 0.7, Some(72));
    }
    h.run().await;
    assert_eq!(h.fakes.delivered("push").len(), 2);
    let tl = h.timeline("acme");
    assert!(tl
        .iter()
        .any(|e| e.outcome.as_deref() == Some("held")
            && e.detail.contains("daily budget used (2/2)")));
    h.open(&c, "p4", Priority::Urgent, 0.97, Some(6));
    h.open(&c, "p5", Priority::Urgent, 0.97, Some(6));
    h.run().await;
    assert_eq!(
        h.fakes.delivered("sms").len(),
        1,
        "one urgent over budget, not two"
    );
    // Local midnight refills the budget; 00:01 is quiet hours, so the advisory waits for 07:00.
    h.advance(Duration::from_secs(12 * 3600 + 60));
    h.run().await;
    assert_eq!(h.fakes.delivered("sms").len(), 2, "urgent goes at 00:01");
    assert_eq!(h.fakes.delivered("push").len(), 2);
    h.advance(Duration::from_secs(7 * 3600));
    h.run().await;
    assert_eq!(
        h.fakes.delivered("push").len() + h.fakes.delivered("sms").len(),
        5
    );
}

/// Kills the worker while the provider holds the request (the message is sent, the answer
/// never recorded) and restarts it on the same data directory.
async fn interrupted_then_restarted(service: &'static str, prefs: &[Channel]) -> Harness {
    let h = Harness::start(|c| c.send_timeout = "1s".parse().unwrap()).await;
    let c = h.customer("acme", "en", prefs);
    h.open(&c, "pump-1", Priority::Urgent, 0.97, Some(6));
    // The provider accepts the message but we die before hearing back.
    h.fakes.set(service, Mode::Hang(10_000));
    let (n, store, desk) = (h.notifier.clone(), h.store.clone(), h.desk.clone());
    let job = tokio::spawn(async move { n.run_once(&store, desk.as_ref()).await });
    while h.fakes.delivered(service).is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    job.abort();
    let _ = job.await;
    let Harness {
        dir,
        tmp,
        fakes,
        smtp,
        server,
        store,
        notifier,
        desk,
        ..
    } = h;
    drop((store, notifier, desk));
    server.abort();
    let _ = server.await;
    // Restart on the same data directory.
    fakes.set(service, Mode::Ok);
    let h = Harness::with(dir, tmp, fakes, smtp, |_| {}).await;
    h.add_customer(c);
    assert_eq!(h.outbox_len(), 1, "the interrupted row survived");
    h
}

#[tokio::test]
async fn restart_between_send_and_record_finds_the_sms_at_the_provider_and_sends_nothing_again() {
    let h = interrupted_then_restarted("sms", &[Channel::Sms]).await;
    h.run().await;
    // Twilio does not de-duplicate (nor does the fake): the notifier asked the Messages list
    // what went to this number, found the interrupted text and did not send it again.
    assert_eq!(h.fakes.requests("sms_list"), 1, "asked the provider first");
    assert_eq!(h.fakes.requests("sms"), 1, "and sent nothing again");
    assert_eq!(h.fakes.delivered("sms").len(), 1);
    let tl = h.timeline("acme");
    let msg = tl.iter().find(|e| e.kind == "message").unwrap();
    assert!(
        msg.detail.contains("found at the provider") && msg.detail.contains("not sent again"),
        "{}",
        msg.detail
    );
    // Its delivery report still lands on the ticket: the provider id was recorded.
    let sid = h.fakes.delivered("sms")[0].sid.clone();
    let r = h.message_status(&sid, "delivered").await;
    assert_eq!(r.status(), 204);
    assert!(h
        .timeline("acme")
        .iter()
        .any(|e| e.kind == "delivery" && e.outcome.as_deref() == Some("delivered")));
}

#[tokio::test]
async fn restart_between_send_and_record_finds_the_call_at_the_provider_and_calls_once() {
    let h = interrupted_then_restarted("voice", &[Channel::Voice]).await;
    h.run().await;
    assert_eq!(h.fakes.requests("voice_list"), 1);
    assert_eq!(h.fakes.delivered("voice").len(), 1, "one call");
}

#[tokio::test]
async fn an_interrupted_attempt_that_never_reached_the_provider_is_sent_after_the_restart() {
    use forewarn::notify::{Attempt, OutboxRow, QUEUE};
    let h = Harness::start(|c| c.max_reminders = 0).await;
    let c = h.customer("acme", "en", &[Channel::Sms]);
    h.open(&c, "pump-1", Priority::Urgent, 0.97, Some(6));
    // A crash right after the attempt was recorded, before the request left: the row says
    // "sending", the provider has nothing.
    let (key, mut row) = h.store.outbox::<OutboxRow>(QUEUE).unwrap().remove(0);
    row.attempts.push(Attempt {
        at_ms: support::notify::NOON_BKK,
        channel: Channel::Sms,
        outcome: "sending".into(),
        detail: String::new(),
        fingerprint: Some(forewarn::notify::fingerprint("an earlier text")),
    });
    h.store.outbox_put(&key, &row).unwrap();
    h.run().await;
    assert_eq!(h.fakes.requests("sms_list"), 1, "asked first");
    assert_eq!(
        h.fakes.delivered("sms").len(),
        1,
        "nothing found: sent once"
    );
    assert_eq!(h.outbox_len(), 0);
}

#[tokio::test]
async fn a_refused_attempt_is_retried_without_a_look_up() {
    let h = Harness::start(|c| c.max_reminders = 0).await;
    let c = h.customer("acme", "en", &[Channel::Sms]);
    h.open(&c, "pump-1", Priority::Urgent, 0.97, Some(6));
    // A 503 is an answer: the provider did not take the message.
    h.fakes.set("sms", Mode::Down);
    h.run().await;
    h.fakes.set("sms", Mode::Ok);
    h.advance(Duration::from_secs(120));
    h.run().await;
    assert_eq!(h.fakes.requests("sms_list"), 0);
    assert_eq!(h.fakes.delivered("sms").len(), 1);
}

#[tokio::test]
async fn a_provider_that_cannot_be_asked_gets_nothing_sent_again() {
    let h = interrupted_then_restarted("sms", &[Channel::Sms]).await;
    h.fakes.set("sms_list", Mode::Down);
    h.run().await;
    assert_eq!(h.fakes.requests("sms"), 1, "no look-up, no second send");
    assert_eq!(h.outbox_len(), 1, "the row waits");
    h.fakes.set("sms_list", Mode::Ok);
    h.advance(Duration::from_secs(120));
    h.run().await;
    assert_eq!(h.fakes.delivered("sms").len(), 1, "found, still one text");
}

#[tokio::test]
async fn a_timed_out_request_is_looked_up_before_it_is_repeated() {
    let h = Harness::start(|c| {
        c.send_timeout = "300ms".parse().unwrap();
        c.max_reminders = 0;
    })
    .await;
    let c = h.customer("acme", "en", &[Channel::Sms]);
    h.open(&c, "pump-1", Priority::Urgent, 0.97, Some(6));
    // The provider takes the message but answers too late: a timeout here, a text there.
    h.fakes.set("sms", Mode::Hang(2_000));
    h.run().await;
    assert_eq!(h.fakes.delivered("sms").len(), 1);
    h.fakes.set("sms", Mode::Ok);
    h.advance(Duration::from_secs(120));
    h.run().await;
    assert_eq!(h.fakes.requests("sms_list"), 1);
    assert_eq!(h.fakes.delivered("sms").len(), 1, "one text, not two");
    assert_eq!(h.outbox_len(), 0);
}

#[tokio::test]
async fn thai_and_persian_customers_get_their_language() {
    let h = Harness::start(|_| {}).await;
    let th = h.customer("somchai", "th-TH", &[Channel::Sms]);
    let fa = h.customer("darya", "fa", &[Channel::Email]);
    h.open(&th, "pump-th", Priority::High, 0.7, Some(72));
    h.open(&fa, "pump-fa", Priority::High, 0.7, Some(72));
    // SMS is immediate, not asynchronous: advisory still reaches an SMS-only customer.
    h.run().await;

    let sms = h.fakes.delivered("sms");
    assert_eq!(sms.len(), 1);
    assert!(
        sms[0].body.contains("ต้องตรวจเช็กก่อน 26 พ.ย. 2569") && sms[0].body.contains("ลูกปืนสึกหรอ"),
        "{}",
        sms[0].body
    );
    assert!(sms[0].body.contains("pump-th"));
    let mails = h.smtp.mails();
    assert_eq!(mails.len(), 1);
    let parts = smtp::parts(&mails[0].data);
    let html = &parts.iter().find(|p| p.0.contains("text/html")).unwrap().1;
    assert!(
        html.contains("dir=\"rtl\"") && html.contains("lang=\"fa\""),
        "{html}"
    );
    assert!(html.contains("اطلاعیهٔ سرویس"), "{html}");
    let plain = &parts.iter().find(|p| p.0.contains("text/plain")).unwrap().1;
    assert!(
        plain.contains("pump-fa") && plain.contains("گرامی"),
        "{plain}"
    );
    assert!(
        plain.contains("تا ۵ آذر ۱۴۰۵، ۱۲:۰۰") && plain.contains("فرسودگی بلبرینگ"),
        "Solar Hijri date, Persian digits, the mode in Persian: {plain}"
    );
}

#[tokio::test]
async fn customer_webhook_is_signed_and_idempotent() {
    let h = Harness::start(|_| {}).await;
    let c = h.customer("acme", "en", &[Channel::Webhook]);
    let t = h.open(&c, "pump-1", Priority::High, 0.7, Some(72));
    h.run().await;
    let hooks = h.fakes.delivered("webhook");
    assert_eq!(hooks.len(), 1, "the fake checks the HMAC signature");
    let v: serde_json::Value = serde_json::from_str(&hooks[0].body).unwrap();
    assert_eq!(v["ticket_id"], t.id.as_str());
    assert_eq!(v["schema"], "forewarn.notification/v1");
    assert_eq!(hooks[0].idempotency, v["idempotency_key"].as_str().unwrap());
}

#[tokio::test]
async fn without_any_provider_nothing_fails_and_the_timeline_says_why() {
    let h = Harness::start(|c| {
        c.email = None;
        c.sms = None;
        c.voice = None;
        c.push = None;
        c.webhook = None;
    })
    .await;
    let c = h.customer("acme", "en", &[Channel::Email]);
    h.open(&c, "pump-1", Priority::High, 0.7, Some(72));
    h.run().await;
    assert_eq!(h.outbox_len(), 0);
    let tl = h.timeline("acme");
    let d = tl.iter().find(|e| e.kind == "decision").unwrap();
    assert_eq!(d.outcome.as_deref(), Some("dropped"));
    assert!(
        d.detail.contains("email skipped: no provider configured"),
        "{}",
        d.detail
    );
}

#[tokio::test]
async fn worker_task_delivers_and_stops_on_shutdown() {
    let h = Harness::start(|_| {}).await;
    let c = h.customer("acme", "en", &[Channel::Push]);
    let token = tokio_util::sync::CancellationToken::new();
    let job = h
        .notifier
        .clone()
        .spawn_worker(h.store.clone(), h.desk.clone(), None, token.clone());
    h.open(&c, "pump-1", Priority::High, 0.7, Some(72));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while h.fakes.delivered("push").is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.fakes.delivered("push").len(), 1);
    token.cancel();
    tokio::time::timeout(Duration::from_secs(2), job)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(h.metric("forewarn_notify_outbox_depth", &[]), 0.0);
    let _ = HOUR;
}

#[tokio::test]
async fn priority_rising_to_urgent_alerts_again_and_settling_sends_a_short_resolved_note() {
    use forewarn::engine::ChangeKind;
    let h = Harness::start(|c| c.max_reminders = 0).await;
    let c = h.customer("acme", "en", &[Channel::Email, Channel::Sms]);
    let mut t = h.open(&c, "pump-1", Priority::High, 0.7, Some(72));
    h.run().await;
    assert_eq!(h.smtp.mails().len(), 1);
    // A probability change alone does not message the customer.
    t.probability = 0.75;
    h.change(&c, ChangeKind::Updated, Some(Priority::High), &t);
    h.run().await;
    assert_eq!(h.smtp.mails().len() + h.fakes.delivered("sms").len(), 1);
    // Rising to urgent does, on an immediate channel.
    t.priority = Priority::Urgent;
    h.change(&c, ChangeKind::Updated, Some(Priority::High), &t);
    h.run().await;
    let sms = h.fakes.delivered("sms");
    assert_eq!(sms.len(), 1);
    assert!(
        sms[0].body.contains("pump-1 needs a service visit before"),
        "{}",
        sms[0].body
    );
    // A maintenance event settles it: a short note, no question, no link.
    t.outcome = Some(forewarn::domain::Outcome::ConfirmedFault);
    t.transition(
        forewarn::domain::Status::Resolved,
        "device",
        t.opened_ms + 1,
        "",
    )
    .unwrap();
    h.change(&c, ChangeKind::Settled, Some(Priority::Urgent), &t);
    h.run().await;
    let mails = h.smtp.mails();
    assert_eq!(mails.len(), 2);
    let plain = smtp::parts(&mails[1].data)
        .into_iter()
        .find(|p| p.0.contains("text/plain"))
        .unwrap()
        .1;
    assert!(plain.contains("is fixed"), "{plain}");
    assert!(!plain.contains("likely"), "not a new alert: {plain}");
    assert!(!plain.contains("Reply"), "{plain}");
    assert!(!plain.contains("/notify/v1/s/"), "no link: {plain}");
}

#[tokio::test]
async fn a_bounced_email_falls_back_to_push() {
    let h = Harness::start(|_| {}).await;
    h.smtp.mode.store(2, std::sync::atomic::Ordering::SeqCst);
    let c = h.customer("acme", "en", &[Channel::Email, Channel::Push]);
    h.open(&c, "pump-1", Priority::High, 0.7, Some(72));
    h.run().await;
    h.run().await;
    assert_eq!(h.fakes.delivered("push").len(), 1);
    let tl = h.timeline("acme");
    let fb = tl.iter().find(|e| e.kind == "fallback").unwrap();
    assert!(
        fb.detail
            .starts_with("email failed (smtp rejected the message (550"),
        "{}",
        fb.detail
    );
}

#[tokio::test]
async fn a_temporary_smtp_failure_is_retried_on_email() {
    let h = Harness::start(|_| {}).await;
    h.smtp.mode.store(1, std::sync::atomic::Ordering::SeqCst);
    let c = h.customer("acme", "en", &[Channel::Email, Channel::Push]);
    h.open(&c, "pump-1", Priority::High, 0.7, Some(72));
    h.run().await;
    h.smtp.mode.store(0, std::sync::atomic::Ordering::SeqCst);
    h.advance(Duration::from_secs(5));
    h.run().await;
    assert_eq!(h.smtp.mails().len(), 1);
    assert!(h.fakes.delivered("push").is_empty());
}

async fn email_over_tls(
    mode: fn(std::sync::Arc<tokio_rustls::rustls::ServerConfig>) -> smtp::TlsMode,
    tls: forewarn::notify::config::SmtpTls,
) {
    let (ca_pem, server_cfg) = smtp::localhost_tls();
    let server = smtp::SmtpServer::start_with(mode(server_cfg)).await;
    let fakes = support::notify::providers::Fakes::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let data = tmp.path().join("db");
    let h = Harness::with(data, Some(tmp), fakes, server, |c| {
        let e = c.email.as_mut().unwrap();
        e.host = "localhost".into();
        e.tls = tls;
        e.ca_file = Some(ca);
    })
    .await;
    let c = h.customer("acme", "en", &[Channel::Email]);
    h.open(&c, "pump-1", Priority::High, 0.7, Some(72));
    h.run().await;
    let mails = h.smtp.mails();
    assert_eq!(mails.len(), 1, "{:?}", h.timeline("acme"));
    assert!(mails[0].tls, "the message travelled encrypted");
}

#[tokio::test]
async fn email_upgrades_with_starttls_when_configured() {
    email_over_tls(
        smtp::TlsMode::Starttls,
        forewarn::notify::config::SmtpTls::Starttls,
    )
    .await;
}

#[tokio::test]
async fn email_uses_implicit_tls_when_configured() {
    email_over_tls(
        smtp::TlsMode::Implicit,
        forewarn::notify::config::SmtpTls::Tls,
    )
    .await;
}
