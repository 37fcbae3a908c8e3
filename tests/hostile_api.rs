//! Hostile access: every mutating route of the daemon (the API's and the notifier's inbound
//! routes) refuses a missing or wrong credential and changes nothing; request bodies over
//! `api.max_body_bytes` get 413 on every route that takes one; hostile ids (`/`, `+`, `#`,
//! control characters, absurd lengths) are refused at every entry point: MQTT topic, API path,
//! API body, fleet file, history and training CSV.
#![cfg(feature = "embedded-broker")]

mod support;

use serde_json::json;
use support::daemon::*;
use support::notify::providers::Fakes;
use support::poll::eventually;

const LIMIT: usize = 4096;

async fn daemon(
    b: &forewarn::broker::EmbeddedBroker,
    dirs: &Dirs,
    fakes: &Fakes,
    name: &str,
) -> (forewarn::serve::Handle, tokio_util::sync::CancellationToken) {
    let fleet = dirs.fleet_file(ACME_SMS_FLEET);
    let mut cfg = config(&b.url(), dirs, name);
    cfg.fleet.file = Some(fleet);
    cfg.api.max_body_bytes = LIMIT;
    cfg.notify.poll_interval = "50ms".parse().unwrap();
    cfg.notify.link_secret = Some("hostile-link-secret-0123456789".into());
    cfg.notify.inbound_email_signing_key = Some("hostile-mailgun-signing-key".into());
    cfg.notify.sms = Some(fakes.twilio());
    let (h, tok) = start(cfg).await;
    ready(&h).await;
    (h, tok)
}

async fn open_ticket(b: &forewarn::broker::EmbeddedBroker, api: &Api) -> String {
    let dev = mqtt(b, "hostile-pump").await;
    dev.publish_degrading("pump-1", 48).await;
    eventually("ticket opened", || async {
        !api.tickets("?device_id=pump-1").await.is_empty()
    })
    .await;
    // The last readings wait in the event-time reorder buffer until the idle timer releases
    // them: the snapshot is taken once every reading has been scored.
    eventually("every reading scored", || async {
        api.metric("forewarn_scorings_total").await >= 48.0
    })
    .await;
    api.tickets("?device_id=pump-1").await[0]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// What a mutation could have changed: the ticket, the fleet, the customer's timeline.
async fn snapshot(api: &Api, id: &str) -> String {
    let t = api.get_json(&format!("/api/v1/tickets/{id}")).await;
    let d = api.get_json("/api/v1/devices").await;
    let c = api.get_json("/api/v1/customers").await;
    let tl = api.get_json("/api/v1/customers/acme/timeline").await;
    format!(
        "{t}\n{d}\n{c}\n{}",
        tl["entries"].as_array().map_or(0, |a| a.len())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutating_route_refuses_a_missing_or_wrong_credential_and_changes_nothing() {
    let b = broker();
    let dirs = Dirs::new();
    let fakes = Fakes::start().await;
    let (h, tok) = daemon(&b, &dirs, &fakes, "fw-hostile-auth").await;
    let api = Api::new(&h);
    let id = open_ticket(&b, &api).await;
    eventually("the SMS went out", || async {
        !fakes.delivered("sms").is_empty()
    })
    .await;
    let before = snapshot(&api, &id).await;
    let base = &api.base;
    // No default token: each request below says what it presents.
    let anon = reqwest::Client::new();
    let http = &anon;
    let form = [("From", "+66810000001"), ("Body", "yes")];
    // The bearer-token routes: none, wrong, and a wrong scheme.
    let bearer: Vec<(reqwest::Method, String, serde_json::Value)> = vec![
        (
            reqwest::Method::POST,
            format!("{base}/api/v1/tickets/{id}/transitions"),
            json!({"to": "dismissed", "note": "x"}),
        ),
        (
            reqwest::Method::PUT,
            format!("{base}/api/v1/devices/pump-1"),
            json!({"customer_id": null}),
        ),
        (
            reqwest::Method::PUT,
            format!("{base}/api/v1/devices/intruder"),
            json!({}),
        ),
        (
            reqwest::Method::PUT,
            format!("{base}/api/v1/customers/acme"),
            json!({"name": "Mallory", "contacts": {"sms": "+10000000000"}, "preferences": ["sms"]}),
        ),
    ];
    for (m, url, body) in &bearer {
        for auth in [
            None,
            Some("Bearer wrong-token"),
            Some(TOKEN),
            Some("Basic dGVzdC10b2tlbg=="),
        ] {
            let mut rq = http.request(m.clone(), url).json(body);
            if let Some(a) = auth {
                rq = rq.header("authorization", a);
            }
            let r = rq.send().await.unwrap();
            assert_eq!(r.status(), 401, "{m} {url} with {auth:?}");
        }
    }
    // The notifier's inbound routes: Twilio signature, inbound key, link token.
    let r = http
        .post(format!("{base}/notify/v1/twilio/sms"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "SMS reply without a signature");
    let r = http
        .post(format!("{base}/notify/v1/twilio/sms"))
        .header("X-Twilio-Signature", "bm9wZQ==")
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "SMS reply with a wrong signature");
    let sid = fakes.delivered("sms")[0].sid.clone();
    let status = [("MessageSid", sid.as_str()), ("MessageStatus", "failed")];
    for sig in [None, Some("bm9wZQ==")] {
        let mut rq = http
            .post(format!("{base}/notify/v1/twilio/status"))
            .form(&status);
        if let Some(s) = sig {
            rq = rq.header("X-Twilio-Signature", s);
        }
        assert_eq!(
            rq.send().await.unwrap().status(),
            403,
            "status callback {sig:?}"
        );
    }
    // Inbound e-mail needs Mailgun's signature: none, a wrong one, the old static key, the
    // right signature on a stale timestamp.
    let now = (chrono::Utc::now().timestamp()).to_string();
    let stale = (chrono::Utc::now().timestamp() - 3600).to_string();
    let good_stale = forewarn::notify::signature::mailgun_signature(
        "hostile-mailgun-signing-key",
        &stale,
        "tok-stale",
    );
    let subject = format!("Re: {id}");
    let forged: [(&str, Vec<(&str, &str)>); 4] = [
        ("unsigned", vec![]),
        (
            "wrong signature",
            vec![
                ("timestamp", &now),
                ("token", "tok-1"),
                ("signature", "00ff"),
            ],
        ),
        ("static key", vec![("key", "hostile-mailgun-signing-key")]),
        (
            "stale",
            vec![
                ("timestamp", &stale),
                ("token", "tok-stale"),
                ("signature", &good_stale),
            ],
        ),
    ];
    for (what, extra) in forged {
        let mut form = vec![
            ("from", "ops@acme.example"),
            ("subject", subject.as_str()),
            ("text", "yes"),
        ];
        form.extend(extra);
        let r = http
            .post(format!("{base}/notify/v1/email/inbound"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert!(
            [401, 403].contains(&r.status().as_u16()),
            "inbound e-mail {what}: {}",
            r.status()
        );
    }
    for token in ["forged", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"] {
        let r = http
            .post(format!("{base}/notify/v1/s/{token}"))
            .form(&[("answer", "dismiss")])
            .send()
            .await
            .unwrap();
        assert!(
            [403, 404, 410].contains(&r.status().as_u16()),
            "self-service page {token}: {}",
            r.status()
        );
    }
    assert_eq!(snapshot(&api, &id).await, before, "nothing changed");
    // The right token still works (the refusals were about the credential).
    let r = http
        .post(format!("{base}/api/v1/tickets/{id}/transitions"))
        .bearer_auth(TOKEN)
        .json(&json!({"to": "acknowledged"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    stop(h, tok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_413_on_every_route_that_takes_one() {
    let b = broker();
    let dirs = Dirs::new();
    let fakes = Fakes::start().await;
    let (h, tok) = daemon(&b, &dirs, &fakes, "fw-hostile-413").await;
    let api = Api::new(&h);
    let base = &api.base;
    let big = "x".repeat(LIMIT * 4);
    let json_big = json!({"note": big}).to_string();
    let form_big = format!("Body={big}&From=%2B66810000001");
    let routes = [
        (
            "POST",
            "/api/v1/tickets/T-0000000000000000/transitions",
            "application/json",
            &json_big,
        ),
        (
            "PUT",
            "/api/v1/devices/pump-2",
            "application/json",
            &json_big,
        ),
        (
            "PUT",
            "/api/v1/customers/acme",
            "application/json",
            &json_big,
        ),
        (
            "POST",
            "/notify/v1/twilio/sms",
            "application/x-www-form-urlencoded",
            &form_big,
        ),
        (
            "POST",
            "/notify/v1/twilio/status",
            "application/x-www-form-urlencoded",
            &form_big,
        ),
        (
            "POST",
            "/notify/v1/email/inbound",
            "application/x-www-form-urlencoded",
            &form_big,
        ),
        (
            "POST",
            "/notify/v1/s/some-token",
            "application/x-www-form-urlencoded",
            &form_big,
        ),
    ];
    for (m, path, ct, body) in routes {
        let r = api
            .http
            .request(m.parse().unwrap(), format!("{base}{path}"))
            .bearer_auth(TOKEN)
            .header("content-type", ct)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413, "{m} {path}");
    }
    stop(h, tok).await;
}

fn hostile_ids() -> Vec<String> {
    vec![
        "a/b".into(),
        "a+b".into(),
        "a#b".into(),
        "a\u{0}b".into(),
        "a\nb".into(),
        "a\u{1b}[31mb".into(),
        "a b".into(),
        "x".repeat(300),
        "x".repeat(2_000),
        "x".repeat(100_000),
    ]
}

fn pct(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ids_are_refused_at_the_topic_the_api_and_in_bodies() {
    let b = broker();
    let dirs = Dirs::new();
    let fakes = Fakes::start().await;
    let (h, tok) = daemon(&b, &dirs, &fakes, "fw-hostile-ids").await;
    let api = Api::new(&h);
    let dev = mqtt(&b, "hostile-ids-pub").await;
    // MQTT forbids wildcards in a PUBLISH topic name (the broker refuses those itself); what a
    // broker does deliver: control characters, spaces and absurd lengths in the id level.
    let topic_ids = ["a\u{1}b", "a\u{7f}b", "a b", &"x".repeat(300)];
    for id in topic_ids {
        dev.publish(&format!("devices/{id}/telemetry"), reading(0, 1, 70.0))
            .await;
        dev.publish(
            &format!("devices/{id}/events"),
            json!({"ts": T0, "kind": "maintenance"}).to_string(),
        )
        .await;
    }
    dev.publish("devices/fine-1/telemetry", reading(0, 1, 70.0))
        .await;
    eventually("the good reading arrived", || async {
        api.metric("forewarn_readings_total").await >= 1.0
    })
    .await;
    eventually("every hostile topic rejected", || async {
        api.metric("forewarn_rejected_total{reason=\"bad_device_id\"}")
            .await
            >= 2.0 * topic_ids.len() as f64
    })
    .await;
    let store = h.app.store.clone();
    for id in topic_ids {
        assert!(
            store.load_state(id).unwrap().is_none(),
            "{id:?} has no state"
        );
    }

    let base = &api.base;
    // (A 100 kB path is refused by the HTTP client itself; 2 kB is the longest sent.)
    for id in hostile_ids().into_iter().filter(|id| id.len() <= 2_000) {
        let p = pct(&id);
        for (kind, body) in [
            ("devices", json!({})),
            (
                "customers",
                json!({"name": "x", "contacts": {}, "preferences": []}),
            ),
        ] {
            let r = api
                .http
                .put(format!("{base}/api/v1/{kind}/{p}"))
                .bearer_auth(TOKEN)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(
                [400, 404, 414, 431].contains(&r.status().as_u16()),
                "PUT {kind}/{:?}: {}",
                id.chars().take(20).collect::<String>(),
                r.status()
            );
        }
        // In a body: a device naming a hostile customer.
        if id.len() < 1000 {
            let r = api
                .http
                .put(format!("{base}/api/v1/devices/fine-2"))
                .bearer_auth(TOKEN)
                .json(&json!({"customer_id": id}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "customer_id {id:?}");
        }
    }
    let devices = api.get_json("/api/v1/devices").await.to_string();
    let customers = api.get_json("/api/v1/customers").await.to_string();
    for id in hostile_ids() {
        let needle = serde_json::to_string(&id).unwrap();
        assert!(!devices.contains(&needle) && !customers.contains(&needle));
    }
    assert!(!devices.contains("fine-2"), "{devices}");
    stop(h, tok).await;
}

#[test]
fn hostile_ids_are_refused_in_the_fleet_file_and_both_csv_readers() {
    let dir = tempfile::tempdir().unwrap();
    for id in hostile_ids() {
        let q = serde_json::to_string(&id).unwrap(); // a valid TOML basic string
        let fleet = dir.path().join("fleet.toml");
        std::fs::write(&fleet, format!("[[devices]]\nid = {q}\n")).unwrap();
        assert!(
            forewarn::fleet::FleetFile::load(&fleet).is_err(),
            "device {id:?}"
        );
        std::fs::write(
            &fleet,
            format!("[[customers]]\nid = {q}\nname = \"n\"\ncontacts = {{}}\npreferences = []\n"),
        )
        .unwrap();
        assert!(
            forewarn::fleet::FleetFile::load(&fleet).is_err(),
            "customer {id:?}"
        );

        // CSV: quote the field so the reader sees the whole id.
        let field = format!("\"{}\"", id.replace('"', "\"\""));
        let csv = format!(
            "device_id,ts,temp\n{field},2025-01-01T00:00:00Z,70\nok-1,2025-01-01T00:00:00Z,71\n"
        );
        let path = dir.path().join("telemetry.csv");
        std::fs::write(&path, &csv).unwrap();
        // Training: the file is refused with the line named.
        match forewarn::train::csv::read_telemetry(&path) {
            Ok(h) => panic!("training read {id:?}: {} devices", h.devices.len()),
            Err(e) => assert!(e.to_string().contains("device_id"), "{e}"),
        }
        // Replay: the row is counted as an error, the good one kept.
        let mut h = forewarn::replay::History::default();
        h.read_telemetry(csv.as_bytes(), &path).unwrap();
        assert_eq!(h.row_errors, 1, "replay row {id:?}");
        assert_eq!(h.readings(), 1);
    }
}
