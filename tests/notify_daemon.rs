//! Notifications inside the daemon: a degrading device opens a ticket, the customer gets an SMS
//! (fake Twilio over HTTP), answers it through the signed webhook on the daemon's API server, and
//! the ticket and the customer's timeline show it.

mod support;

use support::daemon;
use support::daemon::*;
use support::notify::providers::{Fakes, TOKEN as TWILIO_TOKEN};
use support::poll::eventually;

const PUBLIC: &str = "https://forewarn.example";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_opened_by_telemetry_reaches_the_customer_and_their_sms_reply_acknowledges_it() {
    let b = broker();
    let fakes = Fakes::start().await;
    let dirs = Dirs::new();
    let fleet = dirs.fleet_file(ACME_SMS_FLEET);
    let mut cfg = config(&b.url(), &dirs, "fw-notify");
    cfg.fleet.file = Some(fleet);
    cfg.api.public_url = PUBLIC.into();
    cfg.notify.poll_interval = "50ms".parse().unwrap();
    cfg.notify.link_secret = Some("daemon-test-link-secret".into());
    cfg.notify.sms = Some(fakes.twilio());
    let (h, tok) = start(cfg).await;
    ready(&h).await;
    let api = Api::new(&h);
    let dev = mqtt(&b, "pump-1").await;
    dev.publish_degrading("pump-1", 48).await;
    eventually("the customer got an SMS", || async {
        !fakes.delivered("sms").is_empty()
    })
    .await;
    // The ticket opened already urgent (failure predicted within a day) and its priority rose
    // to urgent later: the second urgent alert is not sent.
    eventually("both urgent rows handled", || async {
        h.app.store.outbox_len(forewarn::notify::QUEUE) <= 1
    })
    .await;
    let open = api.tickets("?device_id=pump-1").await;
    assert_eq!(open.len(), 1);
    let id = open[0]["id"].as_str().unwrap().to_string();
    let sms = fakes.delivered("sms");
    assert_eq!(sms.len(), 1, "one ticket, one message");
    assert_eq!(sms[0].to, "+66810000001");
    // Within two segments: the SMS says how to answer by reply, the e-mail carries the link.
    assert!(sms[0].body.contains("Reply 1"), "{}", sms[0].body);
    assert!(!sms[0].body.contains("/notify/v1/s/"), "{}", sms[0].body);

    // Twilio posts the reply, signed for the public URL it was configured with.
    let params = vec![
        ("From".to_string(), "+66810000001".to_string()),
        ("Body".to_string(), "yes".to_string()),
    ];
    let sig = forewarn::notify::inbound::twilio_signature(
        TWILIO_TOKEN,
        &format!("{PUBLIC}/notify/v1/twilio/sms"),
        &params,
    );
    let r = reqwest::Client::new()
        .post(format!("http://{}/notify/v1/twilio/sms", h.api_addr))
        .header("X-Twilio-Signature", sig)
        .form(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t = api.get_json(&format!("/api/v1/tickets/{id}")).await;
    assert_eq!(t["status"], "scheduled", "\"yes\" books the visit");
    let tl = api.get_json("/api/v1/customers/acme/timeline").await;
    let kinds: Vec<&str> = tl["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in ["ticket", "queued", "decision", "message", "reply"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    assert!(tl["entries"].as_array().unwrap().iter().any(
        |e| e["detail"] == "not sent: the customer already had an urgent alert for this ticket"
    ));
    assert!(
        api.metric("forewarn_notify_messages_total{channel=\"sms\",outcome=\"sent\"}")
            .await
            >= 1.0,
        "notify metrics are served at /metrics"
    );
    // Revoking the ticket's links is a write: refused without the token, done with it.
    let revoke = format!("http://{}/api/v1/tickets/{id}/links/revoke", h.api_addr);
    let http = reqwest::Client::new();
    assert_eq!(http.post(&revoke).send().await.unwrap().status(), 401);
    let r = http
        .post(&revoke)
        .bearer_auth(daemon::TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    stop(h, tok).await;
}
