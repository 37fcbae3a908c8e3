//! The customer's side of the conversation: replies in three scripts mean what they say,
//! automatic replies and replayed provider messages change nothing, carrier keywords are
//! honoured, an unclear reply reaches a person, and each moment gets its message (and only
//! those). Real HTTP on loopback, real sled, the real SMTP test server.

mod support;

use forewarn::domain::{Outcome, Priority, Status};
use forewarn::engine::ChangeKind;
use forewarn::fleet::Channel;
use forewarn::notify::TicketDesk;
use std::time::Duration;
use support::notify::Harness;

async fn sms(h: &Harness, from: &str, sid: &str, body: &str) -> String {
    let r = h.sms_in(from, sid, body).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

async fn email(
    h: &Harness,
    from: &str,
    subject: &str,
    text: &str,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let hdrs: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // Sent to the reply address of our last e-mail to that sender (if any), signed as
    // Mailgun forwards it.
    let recipient = h.reply_address(from);
    let hdrs = serde_json::to_string(&hdrs).unwrap();
    let r = h
        .mailgun_post(&[
            ("sender", from),
            ("recipient", &recipient),
            ("subject", subject),
            ("stripped-text", text),
            ("message-headers", &hdrs),
        ])
        .await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

#[tokio::test]
async fn replies_in_thai_persian_and_english_book_the_visit_and_get_a_confirmation() {
    let h = Harness::start(|c| c.max_reminders = 0).await;
    let th = h.customer("somchai", "th", &[Channel::Sms]);
    let fa = h.customer("darya", "fa", &[Channel::Sms]);
    let en = h.customer("acme", "en", &[Channel::Email]);
    let tth = h.open(&th, "pump-th", Priority::High, 0.7, Some(72));
    let tfa = h.open(&fa, "pump-fa", Priority::High, 0.7, Some(72));
    let ten = h.open(&en, "pump-en", Priority::High, 0.7, Some(72));
    h.run().await;
    assert_eq!(h.fakes.delivered("sms").len(), 2);
    sms(&h, &th.contacts[&Channel::Sms], "SMth1", "ตกลงค่ะ").await;
    sms(
        &h,
        &fa.contacts[&Channel::Sms],
        "SMfa1",
        "۱ باشه، لطفاً فردا صبح",
    )
    .await;
    let subject = format!("Re: [{}] Service advisory: pump-en", ten.id);
    let (status, _) = email(
        &h,
        "acme@customer.test",
        &subject,
        "Yes please, any morning.\n\n> quoted",
        &[("Message-Id", "<r1@customer.test>")],
    )
    .await;
    assert_eq!(status, 200);
    for t in [&tth, &tfa, &ten] {
        assert_eq!(h.desk.ticket(&t.id).unwrap().status, Status::Scheduled);
    }
    // Each customer hears back, in their language, that the visit is booked.
    h.run().await;
    let texts = h.fakes.delivered("sms");
    assert_eq!(texts.len(), 4, "two alerts, two confirmations");
    assert!(
        texts[2..].iter().any(|m| m.body.contains("ยืนยันนัดช่างแล้ว")),
        "{texts:?}"
    );
    assert!(
        texts[2..].iter().any(|m| m.body.contains("بازدید ثبت شد")),
        "{texts:?}"
    );
    let mails = h.smtp.mails();
    assert_eq!(mails.len(), 2);
    assert!(mails[1].data.contains("Visit booked"), "{}", mails[1].data);
}

#[tokio::test]
async fn a_replayed_message_sid_changes_nothing() {
    let h = Harness::start(|c| c.max_reminders = 0).await;
    let c = h.customer("acme", "en", &[Channel::Sms]);
    let t = h.open(&c, "pump-1", Priority::High, 0.7, Some(72));
    h.run().await;
    let from = c.contacts[&Channel::Sms].clone();
    sms(&h, &from, "SMreplay", "3").await;
    let after = h.desk.ticket(&t.id).unwrap();
    assert_eq!(after.status, Status::Acknowledged);
    // The same signed request again, even with another body, is not applied again.
    for body in ["3", "1"] {
        sms(&h, &from, "SMreplay", body).await;
    }
    let now = h.desk.ticket(&t.id).unwrap();
    assert_eq!(now.status, Status::Acknowledged);
    assert_eq!(now.history.len(), after.history.len());
    assert_eq!(
        h.metric(
            "forewarn_notify_inbound_ignored_total",
            &[("reason", "replay")]
        ),
        2.0
    );
    let replies = h
        .timeline("acme")
        .into_iter()
        .filter(|e| e.kind == "reply")
        .count();
    assert_eq!(replies, 1);
}

#[tokio::test]
async fn an_out_of_office_reply_is_recorded_and_never_acted_on() {
    let h = Harness::start(|_| {}).await;
    // Reachable by e-mail only, so even the urgent alert is an e-mail (the out-of-office
    // answers its reply address).
    let mut c = h.customer("acme", "en", &[Channel::Email]);
    c.contacts.retain(|ch, _| *ch == Channel::Email);
    h.add_customer(c.clone());
    let t = h.open(&c, "pump-1", Priority::Urgent, 0.97, Some(6));
    h.run().await;
    assert_eq!(h.smtp.mails().len(), 1);
    let subject = format!("Automatic reply: [{}] Urgent", t.id);
    for (headers, subject) in [
        (vec![("Auto-Submitted", "auto-replied")], subject.clone()),
        (vec![("X-Autoreply", "yes")], format!("Re: [{}]", t.id)),
        (vec![("Precedence", "bulk")], format!("Re: [{}]", t.id)),
        (vec![], format!("ตอบกลับอัตโนมัติ: [{}]", t.id)),
        (vec![], format!("پاسخ خودکار: [{}]", t.id)),
    ] {
        let (status, body) = email(
            &h,
            "acme@customer.test",
            &subject,
            "1 - I am out of the office until Monday.",
            &headers,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body["ignored"], "auto_reply", "{subject}");
    }
    assert_eq!(h.desk.ticket(&t.id).unwrap().status, Status::Open);
    let ignored = h
        .timeline("acme")
        .into_iter()
        .filter(|e| e.kind == "reply" && e.outcome.as_deref() == Some("auto_reply"))
        .count();
    assert_eq!(ignored, 5);
    // The reminder still comes: nobody answered.
    assert_eq!(h.outbox_len(), 1);
}

#[tokio::test]
async fn stop_opts_out_of_sms_and_routing_respects_it_until_start() {
    let h = Harness::start(|c| c.max_reminders = 0).await;
    let c = h.customer("somchai", "th", &[Channel::Sms, Channel::Email]);
    let from = c.contacts[&Channel::Sms].clone();
    h.open(&c, "pump-1", Priority::Urgent, 0.97, Some(6));
    h.run().await;
    assert_eq!(h.fakes.delivered("sms").len(), 1);
    let answer = sms(&h, &from, "SMstop", "STOP").await;
    assert!(answer.contains("<Message>"), "{answer}");
    assert!(answer.contains("START"), "{answer}");
    assert!(answer.contains("คุณจะไม่ได้รับ SMS"), "in Thai: {answer}");
    h.open(&c, "pump-2", Priority::Urgent, 0.97, Some(6));
    h.run().await;
    assert_eq!(h.fakes.delivered("sms").len(), 1, "no SMS after STOP");
    assert_eq!(h.smtp.mails().len(), 1, "the e-mail carries it instead");
    let tl = h.timeline("somchai");
    assert!(tl.iter().any(|e| e.kind == "opt_out"));
    assert!(tl
        .iter()
        .any(|e| e.kind == "decision" && e.detail.contains("sms skipped: customer opted out")));
    let help = sms(&h, &from, "SMhelp", "HELP").await;
    assert!(help.contains("STOP"), "{help}");
    sms(&h, &from, "SMstart", "START").await;
    h.open(&c, "pump-3", Priority::Urgent, 0.97, Some(6));
    h.run().await;
    assert_eq!(h.fakes.delivered("sms").len(), 2, "SMS again after START");
}

#[tokio::test]
async fn an_unclear_reply_is_kept_for_a_person_and_changes_no_status() {
    let h = Harness::start(|c| c.max_reminders = 0).await;
    let c = h.customer("darya", "fa", &[Channel::Sms, Channel::Email]);
    let t = h.open(&c, "pump-1", Priority::High, 0.7, Some(72));
    h.run().await;
    sms(
        &h,
        &c.contacts[&Channel::Sms],
        "SMq",
        "دستگاه صدای عجیبی می‌دهد، کی می‌آیید؟",
    )
    .await;
    let now = h.desk.ticket(&t.id).unwrap();
    assert_eq!(now.status, Status::Open);
    assert!(now
        .history
        .last()
        .unwrap()
        .note
        .contains("for a person to read"));
    let tl = h.timeline("darya");
    let kept = tl
        .iter()
        .find(|e| e.kind == "reply" && e.outcome.as_deref() == Some("needs_human"))
        .expect("the reply is on the timeline for a person");
    assert!(kept.detail.contains("صدای عجیبی"), "{}", kept.detail);
    // An e-mail that answers nothing is not taken as an acknowledgement either.
    let (status, body) = email(
        &h,
        "darya@customer.test",
        &format!("Re: [{}]", t.id),
        "Who is this?",
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["needs_human"], true);
    assert_eq!(h.desk.ticket(&t.id).unwrap().status, Status::Open);
    // A text from a number no customer has is kept for a person too.
    sms(&h, "+4915100000000", "SMstranger", "Hallo, wer ist da?").await;
    let tl: serde_json::Value = h
        .get("/api/v1/customers/unknown-sender/timeline")
        .await
        .json()
        .await
        .unwrap();
    let e = &tl["entries"][0];
    assert_eq!(e["outcome"], "needs_human");
    assert!(e["detail"].as_str().unwrap().contains("wer ist da"), "{e}");
}

#[tokio::test]
async fn dismissal_after_an_alert_says_no_action_needed_and_never_to_the_unalerted() {
    let h = Harness::start(|c| c.max_reminders = 0).await;
    let c = h.customer("acme", "en", &[Channel::Email]);
    let t = h.open(&c, "pump-1", Priority::High, 0.7, Some(72));
    h.run().await;
    assert_eq!(h.smtp.mails().len(), 1);
    h.desk
        .customer_reply(&t.id, Some(Status::Dismissed), "api:ops", "false alarm")
        .unwrap();
    h.run().await;
    let mails = h.smtp.mails();
    assert_eq!(mails.len(), 2);
    assert!(
        mails[1].data.contains("No action needed"),
        "{}",
        mails[1].data
    );
    assert!(!mails[1].data.contains("/notify/v1/s/"), "no dead link");

    // Held by quiet hours, then dismissed: the alert is dropped and so is the "no action".
    h.advance(Duration::from_secs(11 * 3600));
    let t2 = h.open(&c, "pump-2", Priority::Advisory, 0.5, Some(300));
    h.run().await;
    h.desk
        .customer_reply(&t2.id, Some(Status::Dismissed), "api:ops", "false alarm")
        .unwrap();
    h.advance(Duration::from_secs(9 * 3600));
    h.run().await;
    assert_eq!(h.smtp.mails().len(), 2, "nothing about a ticket never told");
    assert!(h
        .timeline("acme")
        .iter()
        .any(|e| e.ticket_id == t2.id && e.detail.contains("never alerted")));
}

#[tokio::test]
async fn fixed_is_told_only_to_an_alerted_customer_and_only_after_a_service() {
    let h = Harness::start(|c| c.max_reminders = 0).await;
    let c = h.customer("acme", "en", &[Channel::Email]);
    let fixed = |h: &Harness| {
        h.smtp
            .mails()
            .iter()
            .filter(|m| m.data.contains("] Fixed: "))
            .count()
    };
    // Alerted, then a maintenance settles it: "fixed".
    let mut t = h.open(&c, "pump-1", Priority::High, 0.7, Some(72));
    h.run().await;
    t.transition(Status::Resolved, "device", t.opened_ms + 1, "maintenance")
        .unwrap();
    t.outcome = Some(Outcome::ConfirmedFault);
    h.change(&c, ChangeKind::Settled, Some(Priority::High), &t);
    h.run().await;
    assert_eq!(h.smtp.mails().len(), 2);
    assert_eq!(fixed(&h), 1);
    assert!(
        !h.smtp.mails()[1].data.contains("/notify/v1/s/"),
        "no dead link"
    );

    // Never told (the advisory waits for quiet hours to end), then serviced: nothing.
    h.advance(Duration::from_secs(11 * 3600));
    let mut t2 = h.open(&c, "pump-2", Priority::Advisory, 0.5, Some(300));
    h.run().await;
    t2.transition(Status::Resolved, "device", t2.opened_ms + 1, "maintenance")
        .unwrap();
    t2.outcome = Some(Outcome::ConfirmedFault);
    h.change(&c, ChangeKind::Settled, Some(Priority::Advisory), &t2);
    h.advance(Duration::from_secs(9 * 3600));
    h.run().await;
    assert_eq!(h.smtp.mails().len(), 2, "nothing about a ticket never told");

    // Alerted, then the maintenance found nothing (a false alarm): not "fixed".
    let mut t3 = h.open(&c, "pump-3", Priority::High, 0.7, Some(72));
    h.run().await;
    t3.transition(Status::Resolved, "device", t3.opened_ms + 1, "maintenance")
        .unwrap();
    t3.outcome = Some(Outcome::FalseAlarm);
    h.change(&c, ChangeKind::Settled, Some(Priority::High), &t3);
    h.run().await;
    assert_eq!(h.smtp.mails().len(), 3, "the third alert, nothing after it");
    assert_eq!(fixed(&h), 1);
}

#[tokio::test]
async fn a_replayed_email_message_id_changes_nothing() {
    let h = Harness::start(|c| c.max_reminders = 0).await;
    let c = h.customer("acme", "en", &[Channel::Email]);
    let t = h.open(&c, "pump-1", Priority::High, 0.7, Some(72));
    h.run().await;
    let subject = format!("Re: [{}] Service advisory: pump-1", t.id);
    let id = [("Message-Id", "<r1@customer.test>")];
    let (status, _) = email(&h, "acme@customer.test", &subject, "3", &id).await;
    assert_eq!(status, 200);
    assert_eq!(h.desk.ticket(&t.id).unwrap().status, Status::Acknowledged);
    let (status, body) = email(&h, "acme@customer.test", &subject, "1", &id).await;
    assert_eq!((status, body["ignored"].as_str()), (200, Some("replay")));
    assert_eq!(h.desk.ticket(&t.id).unwrap().status, Status::Acknowledged);
}

#[tokio::test]
async fn a_replayed_or_stale_mailgun_request_changes_nothing() {
    use forewarn::notify::Clock;
    use support::notify::mailgun_fields;
    let h = Harness::start(|c| c.max_reminders = 0).await;
    let c = h.customer("acme", "en", &[Channel::Email]);
    let t = h.open(&c, "pump-1", Priority::High, 0.7, Some(72));
    h.run().await;
    let to = h.reply_address("acme@customer.test");
    let subject = format!("Re: [{}]", t.id);
    let post = |text: &str, fields: Vec<(String, String)>| {
        let mut form: Vec<(String, String)> = [
            ("sender", "acme@customer.test"),
            ("recipient", to.as_str()),
            ("subject", subject.as_str()),
            ("stripped-text", text),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        form.extend(fields);
        h.http
            .post(format!("{}/notify/v1/email/inbound", h.url))
            .form(&form)
            .send()
    };
    // Signed ten minutes ago: outside the five-minute window.
    let stale = mailgun_fields(h.clock.now_ms() - 600_000, "tok-stale");
    assert_eq!(post("1", stale).await.unwrap().status(), 403);
    assert_eq!(h.desk.ticket(&t.id).unwrap().status, Status::Open);
    let once = mailgun_fields(h.clock.now_ms(), "tok-once");
    assert_eq!(post("3", once.clone()).await.unwrap().status(), 200);
    assert_eq!(h.desk.ticket(&t.id).unwrap().status, Status::Acknowledged);
    // The same signed request again, even with another text: ignored.
    let r = post("1", once).await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["ignored"], "replay");
    assert_eq!(h.desk.ticket(&t.id).unwrap().status, Status::Acknowledged);
}

#[tokio::test]
async fn a_failure_gets_a_person_not_a_message() {
    let h = Harness::start(|c| c.max_reminders = 0).await;
    let c = h.customer("acme", "en", &[Channel::Email]);
    let mut t = h.open(&c, "pump-1", Priority::High, 0.7, Some(72));
    h.run().await;
    t.transition(Status::Resolved, "device", t.opened_ms + 1, "failure")
        .unwrap();
    t.outcome = Some(Outcome::FailedBeforeService);
    h.change(&c, ChangeKind::Settled, Some(Priority::High), &t);
    h.run().await;
    assert_eq!(h.smtp.mails().len(), 1, "nothing automatic after a failure");
    assert!(h
        .timeline("acme")
        .iter()
        .any(|e| e.kind == "follow_up" && e.outcome.as_deref() == Some("needs_human")));
}

#[tokio::test]
async fn a_failure_time_already_past_reads_as_soon_as_possible() {
    let h = Harness::start(|c| c.max_reminders = 0).await;
    let c = h.customer("acme", "en", &[Channel::Sms]);
    h.open(&c, "pump-1", Priority::Urgent, 0.97, Some(-2));
    h.run().await;
    let body = &h.fakes.delivered("sms")[0].body;
    assert!(body.contains("as soon as possible"), "{body}");
    assert!(!body.contains("2026"), "{body}");
}

#[tokio::test]
async fn the_call_does_not_claim_a_text_was_sent() {
    let h = Harness::start(|c| c.max_reminders = 0).await;
    let c = h.customer("acme", "en", &[Channel::Voice]);
    h.open(&c, "pump-1", Priority::Urgent, 0.97, Some(6));
    h.run().await;
    let call = &h.fakes.delivered("voice")[0].body;
    assert!(!call.contains("text message"), "{call}");
    assert!(call.contains("worn bearings"), "{call}");
}

#[tokio::test]
async fn a_thai_call_is_spoken_in_thai_and_a_persian_customer_gets_a_text_instead() {
    let h = Harness::start(|c| c.max_reminders = 0).await;
    let th = h.customer("somchai", "th", &[Channel::Voice, Channel::Sms]);
    h.open(&th, "pump-th", Priority::Urgent, 0.97, Some(6));
    h.run().await;
    let calls = h.fakes.delivered("voice");
    assert_eq!(calls.len(), 1, "the Thai customer is called");
    let twiml = &calls[0].body;
    // Twilio's default voice has no Thai: a Google Thai voice, with the language named.
    assert!(
        twiml.contains("<Say voice=\"Google.th-TH-Standard-A\" language=\"th-TH\">"),
        "{twiml}"
    );
    assert!(twiml.contains("ลูกปืนสึกหรอ"), "said in Thai: {twiml}");
    assert!(!twiml.contains("bearing"), "{twiml}");

    let fa = h.customer("dariush", "fa", &[Channel::Voice, Channel::Sms]);
    h.open(&fa, "pump-fa", Priority::Urgent, 0.97, Some(6));
    h.run().await;
    assert_eq!(
        h.fakes.delivered("voice").len(),
        1,
        "no call in a language the provider cannot speak"
    );
    let texts = h.fakes.delivered("sms");
    assert_eq!(texts.len(), 1, "the urgent alert goes by text instead");
    assert_eq!(texts[0].to, fa.contacts[&Channel::Sms]);
    assert!(
        texts[0].body.contains("فرسودگی بلبرینگ"),
        "{}",
        texts[0].body
    );
    assert!(
        h.timeline("dariush").iter().any(|e| e.kind == "decision"
            && e.detail
                .contains("voice skipped: no text-to-speech voice for fa")),
        "the routing decision says why"
    );
}

#[tokio::test]
async fn an_operator_who_has_a_persian_voice_can_enable_calls_in_persian() {
    let dir = tempfile::tempdir().unwrap();
    let fa = forewarn::notify::templates::EMBEDDED
        .iter()
        .find(|(n, _)| *n == "fa")
        .unwrap()
        .1;
    let with_voice = fa.replacen(
        "calendar = ",
        "voice_language = \"fa-IR\"\nvoice = \"Acme.fa-IR-1\"\ncalendar = ",
        1,
    );
    std::fs::write(dir.path().join("fa.toml"), with_voice).unwrap();
    let path = dir.path().to_path_buf();
    let h = Harness::start(move |c| {
        c.max_reminders = 0;
        c.templates_dir = Some(path);
    })
    .await;
    let c = h.customer("dariush", "fa", &[Channel::Voice, Channel::Sms]);
    h.open(&c, "pump-fa", Priority::Urgent, 0.97, Some(6));
    h.run().await;
    let calls = h.fakes.delivered("voice");
    assert_eq!(calls.len(), 1);
    assert!(
        calls[0]
            .body
            .contains("<Say voice=\"Acme.fa-IR-1\" language=\"fa-IR\">"),
        "{}",
        calls[0].body
    );
    assert!(
        calls[0].body.contains("فرسودگی بلبرینگ"),
        "{}",
        calls[0].body
    );
}

/// Every inbound route with arbitrary Unicode: no panic (a 500), and a known customer's text is
/// never lost (it lands on their timeline).
#[test]
fn no_input_crashes_an_inbound_route() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let h = rt.block_on(Harness::start(|c| c.max_reminders = 0));
    let c = h.customer("acme", "th", &[Channel::Sms, Channel::Email]);
    let t = h.open(&c, "pump-1", Priority::High, 0.7, Some(72));
    rt.block_on(h.run());
    let link = {
        use forewarn::notify::Clock;
        h.notifier.link(&t.id, "acme", h.clock.now_ms())
    };
    const TEXT: &str =
        "(\\PC|[๐-๙۰-۹٠-٩ก-ฮا-ی\u{200c}\u{0301}]|T-[0-9a-fA-F]{0,18}|STOP|1|۲){0,40}";
    let text = || proptest::string::string_regex(TEXT).unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    let from = c.contacts[&Channel::Sms].clone();
    let n = std::sync::atomic::AtomicU32::new(0);
    runner
        .run(
            &(text(), text(), any::<bool>()),
            |(a, b, known): (String, String, bool)| {
                let sid = format!(
                    "SMfuzz{}",
                    n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                );
                rt.block_on(async {
                    let before = h.timeline("acme").len();
                    let sender = if known { from.as_str() } else { a.as_str() };
                    let r = h
                        .twilio_post(
                            "/notify/v1/twilio/sms",
                            &[("MessageSid", &sid), ("From", sender), ("Body", &b)],
                        )
                        .await;
                    assert_eq!(r.status(), 200, "sms {a:?} {b:?}");
                    if known {
                        assert!(h.timeline("acme").len() > before, "kept: {b:?}");
                    }
                    let r = h.message_status(&a, &b).await;
                    assert_eq!(r.status(), 204, "status {a:?} {b:?}");
                    let sender = if known {
                        "acme@customer.test"
                    } else {
                        a.as_str()
                    };
                    let (status, _) = email(&h, sender, &a, &b, &[("Auto-Submitted", &a)]).await;
                    assert!(
                        [200, 403, 404, 409, 422].contains(&status),
                        "email {status} {a:?} {b:?}"
                    );
                    let bad = h
                        .http
                        .get(format!("{}/notify/v1/s/{}", h.url, url_escape(&a)))
                        .header("Accept-Language", "fa")
                        .send()
                        .await
                        .unwrap();
                    assert!([404, 410].contains(&bad.status().as_u16()), "page {a:?}");
                    let r = h
                        .http
                        .post(&link)
                        .form(&[("action", a.as_str()), ("when", b.as_str())])
                        .send()
                        .await
                        .unwrap();
                    assert!(
                        [200, 400, 409].contains(&r.status().as_u16()),
                        "page post {} {a:?}",
                        r.status()
                    );
                });
                Ok(())
            },
        )
        .unwrap();
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
