//! Replies on any channel land on the same ticket: SMS (signed Twilio webhook), e-mail
//! (inbound parse), the signed self-service page; status callbacks drive fallback; the customer
//! timeline shows it all in order.

mod support;

use forewarn::domain::{Priority, Status};
use forewarn::fleet::Channel;
use forewarn::notify::TicketDesk;
use std::time::Duration;
use support::http::text_of;
use support::notify::Harness;

fn link_of(h: &Harness, t: &forewarn::domain::Ticket) -> String {
    use forewarn::notify::Clock;
    h.notifier
        .link(&t.id, t.customer_id.as_deref().unwrap(), h.clock.now_ms())
}

#[allow(dead_code)]
fn link_in(text: &str) -> String {
    let i = text.find("http://").expect("a link in the message");
    text[i..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches(['.', ','])
        .to_string()
}

#[tokio::test]
async fn sms_reply_books_a_visit_for_a_ticket_first_notified_by_email_and_shows_in_the_timeline() {
    let h = Harness::start(|_| {}).await;
    let c = h.customer("acme", "en", &[Channel::Email, Channel::Sms]);
    let t = h.open(&c, "pump-1", Priority::High, 0.7, Some(72));
    h.run().await;
    assert_eq!(h.smtp.mails().len(), 1, "first notified by e-mail");
    assert!(h.fakes.delivered("sms").is_empty());
    h.advance(Duration::from_secs(600));
    let r = h
        .sms_in(c.contacts[&Channel::Sms].as_str(), "SMreply1", "1")
        .await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("<Response>"));
    let now = h.desk.ticket(&t.id).unwrap();
    assert_eq!(
        now.status,
        Status::Scheduled,
        "1 books the visit, as the message says"
    );
    let last = now.history.last().unwrap();
    assert_eq!(last.actor, "customer:sms");
    assert_eq!(last.note, "visit confirmed by sms: 1");

    let tl: serde_json::Value = h
        .get("/api/v1/customers/acme/timeline")
        .await
        .json()
        .await
        .unwrap();
    let entries = tl["entries"].as_array().unwrap();
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["ticket", "queued", "decision", "message", "ticket", "queued", "reply"]
    );
    assert_eq!(entries[3]["channel"], "email");
    assert_eq!(entries[5]["detail"], "visit_confirmed message queued");
    assert_eq!(entries[6]["outcome"], "scheduled");
    assert!(entries.iter().all(|e| e["ticket_id"] == t.id.as_str()));
    // The customer's story of this ticket: alerted by e-mail, answered by SMS, visit booked.
    let stories = tl["stories"].as_array().unwrap();
    assert_eq!(stories.len(), 1);
    assert_eq!(stories[0]["ticket_id"], t.id.as_str());
    assert_eq!(stories[0]["alerted_on"], "email");
    assert_eq!(stories[0]["replies"], 1);
    assert_eq!(stories[0]["status"], "scheduled");
    let story_kinds: Vec<&str> = stories[0]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(story_kinds, ["ticket", "message", "ticket", "reply"]);
    let times: Vec<&str> = entries.iter().map(|e| e["at"].as_str().unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "time order: {times:?}"
    );
}

/// A bare "1" by SMS answers the warning that phone received last — not a later ticket whose
/// warning went out by e-mail, nor one still waiting in the outbox.
#[tokio::test]
async fn a_bare_sms_reply_answers_the_last_warning_that_reached_the_phone() {
    let h = Harness::start(|_| {}).await;
    let c = h.customer("acme", "en", &[Channel::Email, Channel::Sms]);
    let by_sms = h.open(&c, "pump-1", Priority::Urgent, 0.9, Some(12));
    h.run().await;
    assert_eq!(h.fakes.delivered("sms").len(), 1, "the urgent one by SMS");
    h.advance(Duration::from_secs(60));
    let by_mail = h.open(&c, "pump-2", Priority::High, 0.7, Some(72));
    h.run().await;
    assert_eq!(h.smtp.mails().len(), 1, "the advisory one by e-mail");
    h.advance(Duration::from_secs(60));
    // A third warning is queued but not yet delivered when the customer answers.
    let queued = h.open(&c, "pump-3", Priority::Urgent, 0.9, Some(12));
    let r = h
        .sms_in(c.contacts[&Channel::Sms].as_str(), "SMreply-bare", "1")
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(h.desk.ticket(&by_sms.id).unwrap().status, Status::Scheduled);
    assert_eq!(h.desk.ticket(&by_mail.id).unwrap().status, Status::Open);
    assert_eq!(h.desk.ticket(&queued.id).unwrap().status, Status::Open);
}

#[tokio::test]
async fn a_forged_sms_webhook_is_refused() {
    let h = Harness::start(|_| {}).await;
    let c = h.customer("acme", "en", &[Channel::Sms]);
    let t = h.open(&c, "pump-1", Priority::High, 0.7, Some(72));
    let r = h
        .http
        .post(format!("{}/notify/v1/twilio/sms", h.url))
        .header("X-Twilio-Signature", "bm90IGEgc2lnbmF0dXJl")
        .form(&[("From", c.contacts[&Channel::Sms].as_str()), ("Body", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_signature");
    assert_eq!(h.desk.ticket(&t.id).unwrap().status, Status::Open);
}

#[tokio::test]
async fn an_email_reply_asking_for_another_time_lands_on_the_ticket_and_is_not_asked_again() {
    let h = Harness::start(|_| {}).await;
    let c = h.customer("acme", "en", &[Channel::Email, Channel::Sms]);
    let t = h.open(&c, "pump-1", Priority::High, 0.7, Some(72));
    h.run().await;
    let subject = format!("Re: [{}] Service advisory: pump-1", t.id);
    // The e-mail's own reply address: the answer goes to it, whoever `From` claims to be.
    let reply_to = h.reply_address("acme@customer.test");
    assert!(reply_to.starts_with("replies+"), "{reply_to}");
    let post = |from: &'static str, to: String| {
        let (subject, h) = (subject.clone(), &h);
        async move {
            h.mailgun_post(&[
                ("sender", from),
                ("recipient", &to),
                ("subject", &subject),
                ("stripped-text", "2 - next week would be better\n\n> quoted"),
            ])
            .await
        }
    };
    // Unsigned (the old static key): refused.
    let r = h
        .http
        .post(format!("{}/notify/v1/email/inbound?key=whatever", h.url))
        .form(&[
            ("sender", "acme@customer.test"),
            ("subject", subject.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // The customer's own From address, but to the shared address (no token): the From is not
    // trusted, the message is kept for a person and nothing changes.
    let r = post("acme@customer.test", "replies@forewarn.test".into()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(h.desk.ticket(&t.id).unwrap().status, Status::Open);
    assert!(h
        .timeline(forewarn::notify::UNKNOWN_SENDER)
        .iter()
        .any(|e| e.outcome.as_deref() == Some("needs_human")));
    let r = post("acme@customer.test", reply_to.clone()).await;
    assert_eq!(r.status(), 200);
    let now = h.desk.ticket(&t.id).unwrap();
    assert_eq!(now.status, Status::Acknowledged);
    assert_eq!(
        now.history.last().unwrap().note,
        "another time requested by email: 2 - next week would be better"
    );
    // The same answer again (a resent e-mail) changes nothing.
    let r = post("acme@customer.test", reply_to.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        h.desk.ticket(&t.id).unwrap().history.len(),
        now.history.len()
    );
    let replies: Vec<_> = h
        .timeline("acme")
        .into_iter()
        .filter(|e| e.kind == "reply")
        .map(|e| e.outcome.unwrap_or_default())
        .collect();
    assert_eq!(
        replies,
        ["acknowledged", "repeat"],
        "kept, not applied twice"
    );
}

#[tokio::test]
async fn self_service_link_confirms_a_visit_and_stops_reminders() {
    let h = Harness::start(|_| {}).await;
    let c = h.customer("acme", "en", &[Channel::Sms, Channel::Voice]);
    let t = h.open(&c, "pump-1", Priority::Urgent, 0.97, Some(6));
    h.run().await;
    let link = link_of(&h, &t);
    assert!(
        link.starts_with(&format!("{}/notify/v1/s/", h.url)),
        "{link}"
    );
    let page = h.http.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("pump-1") && html.contains("Book a visit"),
        "{html}"
    );
    let tampered = format!("{}0", link);
    assert_eq!(h.http.get(&tampered).send().await.unwrap().status(), 404);
    let r = h
        .http
        .post(&link)
        .form(&[("action", "confirm"), ("when", "Tuesday morning")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains("Visit booked"), "{html}");
    let now = h.desk.ticket(&t.id).unwrap();
    assert_eq!(now.status, Status::Scheduled);
    assert_eq!(now.history.last().unwrap().actor, "customer:link");
    h.advance(Duration::from_secs(3 * 3600));
    h.run().await;
    assert!(
        h.fakes.delivered("voice").is_empty(),
        "no reminder after an answer"
    );
    assert_eq!(h.outbox_len(), 0);
    // The link expires.
    h.advance(Duration::from_secs(15 * 86400));
    assert_eq!(h.http.get(&link).send().await.unwrap().status(), 410);
}

#[tokio::test]
async fn undelivered_status_callback_falls_back_to_the_next_channel() {
    let h = Harness::start(|c| c.max_reminders = 0).await;
    let c = h.customer("acme", "en", &[Channel::Sms, Channel::Email]);
    let t = h.open(&c, "pump-1", Priority::Urgent, 0.97, Some(6));
    h.run().await;
    let sms = h.fakes.delivered("sms");
    assert_eq!(sms.len(), 1);
    let r = h.message_status(sms[0].sid.as_str(), "sent").await;
    assert_eq!(r.status(), 204);
    assert_eq!(h.outbox_len(), 0, "an intermediate status changes nothing");
    for _ in 0..2 {
        // Callbacks repeat; the second one is ignored.
        let r = h.message_status(sms[0].sid.as_str(), "undelivered").await;
        assert_eq!(r.status(), 204);
    }
    assert_eq!(h.outbox_len(), 1);
    h.run().await;
    let mails = h.smtp.mails();
    assert_eq!(mails.len(), 1);
    assert!(mails[0].data.contains(&t.id));
    let tl = h.timeline("acme");
    assert!(tl
        .iter()
        .any(|e| e.kind == "delivery" && e.outcome.as_deref() == Some("undelivered")));
    assert!(tl
        .iter()
        .any(|e| e.kind == "fallback" && e.detail == "sms undelivered; trying email next"));
    assert_eq!(
        h.metric(
            "forewarn_notify_messages_total",
            &[("channel", "sms"), ("outcome", "undelivered")]
        ),
        1.0
    );
}

#[tokio::test]
async fn timeline_of_an_unknown_customer_is_404() {
    let h = Harness::start(|_| {}).await;
    let r = h.get("/api/v1/customers/nobody/timeline").await;
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    let r = h.get("/api/v1/customers/a%20b/timeline").await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn the_self_service_page_speaks_the_customers_language() {
    let h = Harness::start(|_| {}).await;
    let c = h.customer("darya", "fa", &[Channel::Sms]);
    let t = h.open(&c, "pump-fa", Priority::Urgent, 0.97, Some(6));
    h.run().await;
    let sms = h.fakes.delivered("sms");
    assert!(sms[0].body.contains("فرسودگی بلبرینگ"), "{}", sms[0].body);
    let html = text_of(h.http.get(link_of(&h, &t))).await;
    assert!(html.contains("lang=\"fa\" dir=\"rtl\""), "{html}");
    assert!(
        html.contains("تأیید بازدید") && html.contains("pump-fa"),
        "{html}"
    );
}

#[tokio::test]
async fn after_an_answer_an_urgent_update_informs_without_asking_again() {
    let h = Harness::start(|_| {}).await;
    let c = h.customer("acme", "en", &[Channel::Sms]);
    let mut t = h.open(&c, "pump-1", Priority::High, 0.7, Some(72));
    h.run().await;
    assert!(h.fakes.delivered("sms")[0].body.contains("Reply 1"));
    let r = h
        .twilio_post(
            "/notify/v1/twilio/sms",
            &[("From", c.contacts[&Channel::Sms].as_str()), ("Body", "3")],
        )
        .await;
    assert_eq!(r.status(), 200);
    t = h.desk.ticket(&t.id).unwrap();
    assert_eq!(t.status, Status::Acknowledged);
    assert_eq!(t.history.last().unwrap().note, "not now by sms: 3");
    t.priority = Priority::Urgent;
    h.change(
        &c,
        forewarn::engine::ChangeKind::Updated,
        Some(Priority::High),
        &t,
    );
    h.run().await;
    let sms = h.fakes.delivered("sms");
    assert_eq!(sms.len(), 2);
    assert!(
        sms[1].body.contains("Service needed sooner"),
        "{}",
        sms[1].body
    );
    assert!(
        !sms[1].body.contains("Reply 1"),
        "not asked again: {}",
        sms[1].body
    );
    assert_eq!(h.outbox_len(), 0, "no reminder for an answered ticket");
}

#[tokio::test]
async fn an_unanswered_call_falls_back_to_sms_through_the_call_status_callback() {
    let h = Harness::start(|c| c.max_reminders = 0).await;
    let c = h.customer("acme", "en", &[Channel::Voice, Channel::Sms]);
    h.open(&c, "pump-1", Priority::Urgent, 0.97, Some(6));
    h.run().await;
    let calls = h.fakes.delivered("voice");
    assert_eq!(calls.len(), 1);
    assert!(h.fakes.delivered("sms").is_empty());
    let r = h
        .twilio_post(
            "/notify/v1/twilio/status",
            &[
                ("CallSid", calls[0].sid.as_str()),
                ("CallStatus", "no-answer"),
            ],
        )
        .await;
    assert_eq!(r.status(), 204);
    h.run().await;
    assert_eq!(h.fakes.delivered("sms").len(), 1);
    assert_eq!(
        h.metric("forewarn_notify_fallbacks_total", &[("channel", "voice")]),
        1.0
    );
}

#[tokio::test]
async fn a_page_answer_can_be_changed_once_after_a_confirmation() {
    let h = Harness::start(|c| c.max_reminders = 0).await;
    let c = h.customer("acme", "en", &[Channel::Email]);
    let t = h.open(&c, "pump-1", Priority::High, 0.7, Some(72));
    h.run().await;
    let link = link_of(&h, &t);
    let answer = |action: &'static str, confirm: bool| {
        let (http, link) = (h.http.clone(), link.clone());
        async move {
            let mut form = vec![("action", action), ("when", "")];
            if confirm {
                form.push(("confirm", "yes"));
            }
            let r = http.post(link).form(&form).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let status = || h.desk.ticket(&t.id).unwrap().status;
    assert_eq!(answer("reschedule", false).await.0, 200);
    assert_eq!(status(), Status::Acknowledged);
    // A different answer: first a confirmation page, nothing changed yet.
    let (code, page) = answer("confirm", false).await;
    assert_eq!(code, 200);
    assert!(
        page.contains("Change your answer?") && page.contains("confirm_change"),
        "{page}"
    );
    assert_eq!(status(), Status::Acknowledged);
    // Confirmed: changed.
    assert_eq!(answer("confirm", true).await.0, 200);
    assert_eq!(status(), Status::Scheduled);
    // A second change is refused, in the customer's words; the answer stays.
    let (code, page) = answer("not_now", true).await;
    assert_eq!(code, 409);
    assert!(page.contains("already changed your answer once"), "{page}");
    assert_eq!(status(), Status::Scheduled);
}

#[tokio::test]
async fn urgent_links_live_shorter_and_machine_channels_carry_a_short_lived_one() {
    use forewarn::notify::Clock;
    let h = Harness::start(|c| c.max_reminders = 0).await;
    let c = h.customer("acme", "en", &[Channel::Webhook]);
    let t = h.open(&c, "pump-1", Priority::High, 0.7, Some(72));
    h.run().await;
    let hook: serde_json::Value =
        serde_json::from_str(&h.fakes.delivered("webhook")[0].body).unwrap();
    let machine = hook["link"].as_str().unwrap().to_string();
    assert_ne!(machine, link_of(&h, &t), "not the customer's link");
    assert_eq!(h.http.get(&machine).send().await.unwrap().status(), 200);
    // An hour and a minute later the webhook's link is dead; the customer's is not.
    h.advance(Duration::from_secs(3660));
    assert_eq!(h.http.get(&machine).send().await.unwrap().status(), 410);
    let now = h.clock.now_ms();
    let advisory = h.notifier.link_for(&t, "acme", now);
    let mut urgent = t.clone();
    urgent.priority = Priority::Urgent;
    let urgent = h.notifier.link_for(&urgent, "acme", now);
    // Three days on: the urgent ticket's link (48 h) is gone, the advisory one (14 d) works.
    h.advance(Duration::from_secs(72 * 3600));
    assert_eq!(h.http.get(&urgent).send().await.unwrap().status(), 410);
    assert_eq!(h.http.get(&advisory).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn revoked_links_stop_working_and_new_ones_do() {
    use forewarn::notify::Clock;
    let h = Harness::start(|c| c.max_reminders = 0).await;
    let c = h.customer("acme", "en", &[Channel::Email]);
    let t = h.open(&c, "pump-1", Priority::High, 0.7, Some(72));
    h.run().await;
    let old = link_of(&h, &t);
    assert_eq!(h.http.get(&old).send().await.unwrap().status(), 200);
    h.advance(Duration::from_secs(60));
    let r = h
        .http
        .post(format!("{}/api/v1/tickets/{}/links/revoke", h.url, t.id))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // Every link issued so far is refused, its answer too; the ticket is untouched.
    assert_eq!(h.http.get(&old).send().await.unwrap().status(), 410);
    let r = h
        .http
        .post(&old)
        .form(&[("action", "confirm")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 410);
    assert_eq!(h.desk.ticket(&t.id).unwrap().status, Status::Open);
    // A link issued afterwards works.
    h.advance(Duration::from_secs(1));
    let new = h.notifier.link(&t.id, "acme", h.clock.now_ms());
    assert_eq!(h.http.get(&new).send().await.unwrap().status(), 200);
}
