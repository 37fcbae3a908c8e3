//! Every kind of message in every locale, delivered to real peers and read back: e-mail through
//! a real SMTP server process (Python's aiosmtpd) and parsed by Python's MIME parser; SMS to the
//! fake provider (which, like Twilio, does not de-duplicate) with its segments counted; inbound
//! SMS signed by the official `twilio` library.

mod support;

use forewarn::domain::{Outcome, Priority, Status};
use forewarn::engine::ChangeKind;
use forewarn::fleet::{Channel, Customer};
use forewarn::notify::templates::sms_segments;
use forewarn::notify::TicketDesk;
use std::time::Duration;
use support::ci::python_can_import;
use support::notify::peers::{twilio_library_signature, AioSmtpd};
use support::notify::providers::TOKEN;
use support::notify::Harness;

/// Walks one customer through all eight moments; returns nothing, the peers hold the result.
async fn conversation(h: &Harness, c: &Customer, reply: &dyn Fn(&str) -> String, smtpd: &AioSmtpd) {
    let (by_sms, by_mail) = (
        c.preferences[0] == Channel::Sms,
        c.preferences[0] == Channel::Email,
    );
    let answer = |t: &forewarn::domain::Ticket, text: String| {
        let (h, c, id) = (h, c.clone(), t.id.clone());
        async move {
            if by_sms {
                let from = c.contacts[&Channel::Sms].clone();
                let sid = format!("SM-{id}");
                let path = "/notify/v1/twilio/sms";
                let params = [
                    ("MessageSid", sid.as_str()),
                    ("From", from.as_str()),
                    ("To", "+15550100"),
                    ("Body", text.as_str()),
                ];
                // Signed by the official library, not by forewarn's own code.
                let sig = twilio_library_signature(TOKEN, &format!("{}{path}", h.url), &params);
                let r = h
                    .http
                    .post(format!("{}{path}", h.url))
                    .header("X-Twilio-Signature", sig)
                    .form(&params)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "signature accepted");
            } else if by_mail {
                // The answer goes to the reply address our e-mail about this ticket carried
                // (as Python's parser reads it), signed as Mailgun forwards it.
                let to = smtpd
                    .messages()
                    .into_iter()
                    .find(|m| m.subject.contains(&format!("[{id}]")))
                    .map(|m| m.reply_to)
                    .unwrap_or_default();
                assert!(to.starts_with("replies+"), "{to:?}");
                let r = h
                    .mailgun_post(&[
                        ("sender", c.contacts[&Channel::Email].as_str()),
                        ("recipient", to.as_str()),
                        ("subject", format!("Re: [{id}]").as_str()),
                        ("stripped-text", text.as_str()),
                    ])
                    .await;
                assert_eq!(r.status(), 200);
            }
        }
    };
    // Every conversation starts at noon in Bangkok, so the dates below are the same for all.
    h.clock.set(support::notify::NOON_BKK);
    // alert → visit confirmed → no action needed (dismissed after the alert)
    let t1 = h.open(c, &format!("{}-a", c.id), Priority::High, 0.7, Some(72));
    h.run().await;
    answer(&t1, reply("1")).await;
    assert_eq!(h.desk.ticket(&t1.id).unwrap().status, Status::Scheduled);
    h.run().await;
    h.desk
        .customer_reply(&t1.id, Some(Status::Dismissed), "api:ops", "false alarm")
        .unwrap();
    h.run().await;
    // urgent → visit rescheduled → resolved by maintenance
    let t2 = h.open(c, &format!("{}-b", c.id), Priority::Urgent, 0.95, Some(10));
    h.run().await;
    answer(&t2, reply("2")).await;
    h.run().await;
    let mut t2 = h.desk.ticket(&t2.id).unwrap();
    t2.transition(Status::Resolved, "device", t2.opened_ms + 1, "maintenance")
        .unwrap();
    t2.outcome = Some(Outcome::ConfirmedFault);
    h.change(c, ChangeKind::Settled, Some(Priority::Urgent), &t2);
    h.run().await;
    // advisory → priority rises (update); urgent unanswered → reminder
    let mut t3 = h.open(c, &format!("{}-c", c.id), Priority::High, 0.6, Some(72));
    h.run().await;
    t3.priority = Priority::Urgent;
    h.change(c, ChangeKind::Updated, Some(Priority::High), &t3);
    h.run().await;
    h.advance(Duration::from_secs(3600 + 60));
    h.run().await;
}

#[tokio::test]
async fn every_message_in_every_locale_reaches_real_peers_and_reads_back() {
    if !python_can_import(
        "every_message_in_every_locale_reaches_real_peers_and_reads_back",
        &["aiosmtpd", "twilio"],
    ) {
        return;
    }
    let smtpd = AioSmtpd::start();
    let port = smtpd.port;
    let h = Harness::start(move |c| {
        if let Some(e) = c.email.as_mut() {
            e.port = port;
        }
        c.max_reminders = 1;
        c.ack_timeout = "1h".parse().unwrap();
        c.daily_budget = 50;
    })
    .await;
    type Reply = fn(&str) -> String;
    let replies: [(&str, Reply); 3] = [
        ("en", |d| match d {
            "1" => "Yes please".into(),
            _ => "later, I am away".into(),
        }),
        ("th", |d| match d {
            "1" => "๑ ค่ะ".into(),
            _ => "ขอเวลาอื่นได้ไหมคะ".into(),
        }),
        ("fa", |d| match d {
            "1" => "۱ باشه، لطفاً فردا صبح".into(),
            _ => "۲".into(),
        }),
    ];
    for (loc, reply) in replies {
        let mut by_mail = h.customer(&format!("{loc}mail"), loc, &[Channel::Email]);
        by_mail.contacts.retain(|ch, _| *ch == Channel::Email);
        h.add_customer(by_mail.clone());
        let mut by_sms = h.customer(&format!("{loc}sms"), loc, &[Channel::Sms]);
        by_sms.contacts.retain(|ch, _| *ch == Channel::Sms);
        h.add_customer(by_sms.clone());
        conversation(&h, &by_mail, &reply, &smtpd).await;
        conversation(&h, &by_sms, &reply, &smtpd).await;
    }

    // E-mail, parsed back by Python's MIME parser.
    let mails = smtpd.messages();
    let headlines = [
        (
            "en",
            [
                "Service advisory",
                "Visit booked",
                "No action needed",
                "Urgent: service needed",
                "Another time for your visit",
                "Fixed",
                "Service needed sooner",
                "Reminder: service needed",
            ],
        ),
        (
            "th",
            [
                "แจ้งเตือนการบำรุงรักษา",
                "ยืนยันนัดช่างแล้ว",
                "ไม่ต้องดำเนินการใดๆ",
                "ด่วน: ควรซ่อมบำรุง",
                "ขอเวลานัดใหม่",
                "แก้ไขเรียบร้อยแล้ว",
                "ควรซ่อมบำรุงเร็วขึ้น",
                "เตือนอีกครั้ง: ควรซ่อมบำรุง",
            ],
        ),
        (
            "fa",
            [
                "اطلاعیهٔ سرویس",
                "بازدید ثبت شد",
                "اقدامی لازم نیست",
                "فوری: نیاز به سرویس",
                "زمان دیگری برای بازدید",
                "برطرف شد",
                "سرویس زودتر لازم است",
                "یادآوری: نیاز به سرویس",
            ],
        ),
    ];
    for (loc, want) in headlines {
        let mine: Vec<_> = mails
            .iter()
            .filter(|m| m.to.contains(&format!("{loc}mail@")))
            .collect();
        // Eight kinds of message; the third ticket starts with an advisory too.
        assert_eq!(mine.len(), 9, "{loc}: one e-mail per moment: {mine:#?}");
        for w in want {
            let m = mine
                .iter()
                .find(|m| m.subject.contains(w))
                .unwrap_or_else(|| panic!("{loc}: no e-mail titled {w:?}: {mine:#?}"));
            assert!(
                m.content_types.contains(&"text/plain".to_string())
                    && m.content_types.contains(&"text/html".to_string()),
                "{:?}",
                m.content_types
            );
            assert!(m.subject.contains("[T-"), "the ticket id threads replies");
            assert!(!m.text.contains('%') && !m.text.contains('٪'), "{}", m.text);
            assert!(!m.text.contains("{{"), "{}", m.text);
            let warning = m.text.contains("/notify/v1/s/");
            assert_eq!(
                m.html.contains("/notify/v1/s/"),
                warning,
                "the link is in both parts or neither"
            );
        }
        let alert = mine.iter().find(|m| m.subject.contains(want[0])).unwrap();
        let date = match loc {
            "en" => "Thu 26 Nov 2026, 12:00",
            "th" => "26 พ.ย. 2569 12:00 น.",
            _ => "۵ آذر ۱۴۰۵، ۱۲:۰۰",
        };
        assert!(alert.text.contains(date), "{loc}: {}", alert.text);
        assert!(
            alert.text.contains("/notify/v1/s/"),
            "the alert links to the page"
        );
        if loc == "fa" {
            assert!(alert.html.contains("dir=\"rtl\""));
        }
        for closing in [want[2], want[5]] {
            let m = mine.iter().find(|m| m.subject.contains(closing)).unwrap();
            assert!(
                !m.text.contains("/notify/v1/s/"),
                "no dead link: {}",
                m.text
            );
        }
    }

    // SMS: every moment, within two segments, in the customer's language.
    let texts = h.fakes.delivered("sms");
    for loc in ["en", "th", "fa"] {
        let mine: Vec<_> = texts
            .iter()
            .filter(|d| {
                Some(&d.to)
                    == h.desk
                        .customer(&format!("{loc}sms"))
                        .unwrap()
                        .contacts
                        .get(&Channel::Sms)
            })
            .collect();
        assert_eq!(mine.len(), 9, "{loc}: one text per moment: {mine:#?}");
        for d in &mine {
            let n = sms_segments(&d.body);
            assert!((1..=2).contains(&n), "{loc}: {n} segments: {}", d.body);
            eprintln!("{loc} sms ({n} segments): {}", d.body);
        }
    }
}

/// Inbound SMS and status callbacks signed by the official `twilio` library in both schemes
/// (Auth Token HMAC-SHA1; a Webhooks Rule SharedKey with HMAC-SHA256 named in
/// `X-Twilio-Webhooks-Signature-Settings`), on a URL with a query string, signed with and
/// without the port, a JSON status callback signed through `bodySHA256`; a replayed
/// `MessageSid` changes nothing and a wrong key is refused.
#[tokio::test]
async fn twilio_signatures_from_the_official_library_in_both_schemes() {
    use support::notify::peers::{twilio_library_body_hash, twilio_library_signature_with};
    if !python_can_import(
        "twilio_signatures_from_the_official_library_in_both_schemes",
        &["twilio"],
    ) {
        return;
    }
    const SHARED: &str = "webhooks-rule-shared-key-secret";
    let h = Harness::start(|c| {
        c.max_reminders = 0;
        if let Some(s) = c.sms.as_mut() {
            s.webhook_shared_key = Some(SHARED.into());
        }
    })
    .await;
    let c = h.customer("acme", "en", &[Channel::Sms]);
    let from = c.contacts[&Channel::Sms].clone();
    let t = h.open(&c, "pump-1", Priority::High, 0.7, Some(72));
    h.run().await;
    let post = |url: String,
                sig: String,
                settings: Option<&'static str>,
                form: Vec<(&'static str, String)>| {
        let mut r = h
            .http
            .post(url)
            .header("X-Twilio-Signature", sig)
            .form(&form);
        if let Some(s) = settings {
            r = r.header("X-Twilio-Webhooks-Signature-Settings", s);
        }
        r.send()
    };
    let form = |sid: &'static str, body: &'static str| -> Vec<(&'static str, String)> {
        vec![
            ("MessageSid", sid.to_string()),
            ("From", from.clone()),
            ("To", "+15550100".to_string()),
            ("Body", body.to_string()),
        ]
    };
    let pairs = |f: &[(&'static str, String)]| -> Vec<(&'static str, String)> { f.to_vec() };
    let sign = |key: &str, url: &str, f: &[(&'static str, String)], alg: &str| {
        let p: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
        twilio_library_signature_with(key, url, &p, alg)
    };

    // Auth Token scheme, a query string on the webhook URL, signed without the port.
    let url = format!("{}/notify/v1/twilio/sms?src=carrier-a", h.url);
    let portless = url.replacen(&format!(":{}", h.url.rsplit(':').next().unwrap()), "", 1);
    assert_ne!(portless, url);
    let f = form("SMlib1", "3");
    let sig = sign(TOKEN, &portless, &pairs(&f), "HMAC_SHA1");
    let r = post(url.clone(), sig, None, f).await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "Auth Token scheme, query string, port-less signature"
    );
    assert_eq!(h.desk.ticket(&t.id).unwrap().status, Status::Acknowledged);

    // The same request again (a replay): accepted by the signature, ignored by MessageSid.
    let f = form("SMlib1", "1");
    let sig = sign(TOKEN, &url, &pairs(&f), "HMAC_SHA1");
    let r = post(url.clone(), sig, None, f).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(h.desk.ticket(&t.id).unwrap().status, Status::Acknowledged);
    assert_eq!(
        h.metric(
            "forewarn_notify_inbound_ignored_total",
            &[("reason", "replay")]
        ),
        1.0
    );

    // SharedKey scheme, HMAC-SHA256.
    let settings = Some("key=webhooks_sharedkey_test,algorithm=HMAC_SHA256");
    let f = form("SMlib2", "1");
    let sig = sign(SHARED, &url, &pairs(&f), "HMAC_SHA256");
    let r = post(url.clone(), sig, settings, f).await.unwrap();
    assert_eq!(r.status(), 200, "SharedKey scheme");
    assert_eq!(h.desk.ticket(&t.id).unwrap().status, Status::Scheduled);

    // A signature by another key, or the Auth Token claimed as the SharedKey: refused.
    let f = form("SMlib3", "3");
    let sig = sign("not-the-token", &url, &pairs(&f), "HMAC_SHA1");
    assert_eq!(
        post(url.clone(), sig, None, f.clone())
            .await
            .unwrap()
            .status(),
        403
    );
    let sig = sign(TOKEN, &url, &pairs(&f), "HMAC_SHA256");
    assert_eq!(
        post(url.clone(), sig, settings, f).await.unwrap().status(),
        403
    );

    // A JSON status callback, signed through bodySHA256.
    let sid = h.fakes.delivered("sms")[0].sid.clone();
    let body = serde_json::json!({"MessageSid": sid, "MessageStatus": "delivered"}).to_string();
    let hash = twilio_library_body_hash(&body);
    let url = format!("{}/notify/v1/twilio/status?bodySHA256={hash}", h.url);
    let sig = sign(TOKEN, &url, &[], "HMAC_SHA1");
    let send = |b: String, sig: String| {
        h.http
            .post(url.clone())
            .header("X-Twilio-Signature", sig)
            .header("Content-Type", "application/json")
            .body(b)
            .send()
    };
    let tampered = body.replace("delivered", "undelivered");
    assert_eq!(send(tampered, sig.clone()).await.unwrap().status(), 403);
    assert_eq!(send(body, sig).await.unwrap().status(), 204);
    assert!(h
        .timeline("acme")
        .iter()
        .any(|e| e.kind == "delivery" && e.outcome.as_deref() == Some("delivered")));
}
