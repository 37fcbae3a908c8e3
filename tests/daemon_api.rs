//! The HTTP API over loopback against a running daemon.

mod common;

use common::*;
use serde_json::json;

async fn open_ticket(b: &forewarn::broker::EmbeddedBroker, api: &Api, device: &str) -> String {
    let dev = mqtt(b, &format!("{device}-pub")).await;
    for (i, (hr, t)) in degrading(40).iter().enumerate() {
        dev.publish(
            &format!("devices/{device}/telemetry"),
            reading(*hr, i as u64 + 1, *t),
        )
        .await;
    }
    let q = format!("?device_id={device}");
    eventually("a ticket opened", || async {
        !api.tickets(&q).await.is_empty()
    })
    .await;
    api.tickets(&q).await[0]["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_without_a_valid_token_are_refused() {
    let b = broker();
    let dirs = Dirs::new();
    let (h, tok) = start(config(&b.url(), &dirs, "fw-auth")).await;
    ready(&h).await;
    let api = Api::new(&h);
    let id = open_ticket(&b, &api, "auth-1").await;
    let url = format!("{}/api/v1/tickets/{id}/transitions", api.base);
    let r = api
        .http
        .post(&url)
        .json(&json!({"to": "acknowledged"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let r = api
        .http
        .post(&url)
        .bearer_auth("wrong")
        .json(&json!({"to": "acknowledged"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = api
        .http
        .put(format!("{}/api/v1/devices/d9", api.base))
        .json(&json!({"customer_id": "c1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Reads are open by default; the ticket is unchanged.
    let t = api.get_json(&format!("/api/v1/tickets/{id}")).await;
    assert_eq!(t["status"], "open");
    stop(h, tok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_need_a_token_when_protected() {
    let b = broker();
    let dirs = Dirs::new();
    let mut cfg = config(&b.url(), &dirs, "fw-protect");
    cfg.api.protect_reads = true;
    let (h, tok) = start(cfg).await;
    ready(&h).await;
    let api = Api::new(&h);
    let r = api
        .http
        .get(format!("{}/api/v1/tickets", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = api
        .http
        .get(format!("{}/api/v1/tickets", api.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "metrics stay open");
    stop(h, tok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_follow_the_lifecycle_keep_history_and_refuse_with_409() {
    let b = broker();
    let dirs = Dirs::new();
    let (h, tok) = start(config(&b.url(), &dirs, "fw-trans")).await;
    ready(&h).await;
    let api = Api::new(&h);
    let id = open_ticket(&b, &api, "trans-1").await;
    let post = |to: &'static str| {
        let url = format!("{}/api/v1/tickets/{id}/transitions", api.base);
        let http = api.http.clone();
        async move {
            http.post(url)
                .bearer_auth(TOKEN)
                .json(&json!({"to": to, "note": format!("to {to}")}))
                .send()
                .await
                .unwrap()
        }
    };
    let r = post("acknowledged").await;
    assert_eq!(r.status(), 200);
    let t: serde_json::Value = r.json().await.unwrap();
    assert_eq!(t["status"], "acknowledged");
    assert_eq!(post("scheduled").await.status(), 200);
    let r = post("open").await;
    assert_eq!(r.status(), 409);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "conflict");
    assert_eq!(post("teleported").await.status(), 400);
    assert_eq!(post("dismissed").await.status(), 200);
    let t = api.get_json(&format!("/api/v1/tickets/{id}")).await;
    assert_eq!(t["status"], "dismissed");
    assert_eq!(t["outcome"], "false_alarm");
    let actions: Vec<&str> = t["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .filter(|a| *a != "updated")
        .collect();
    assert_eq!(
        actions,
        ["opened", "acknowledged", "scheduled", "dismissed"]
    );
    assert_eq!(api.tickets("?status=dismissed").await.len(), 1);
    assert_eq!(api.tickets("?status=open").await.len(), 0);
    assert_eq!(
        api.metric("forewarn_ticket_changes_total{kind=\"transition\"}")
            .await,
        3.0
    );
    let r = api
        .http
        .get(format!("{}/api/v1/tickets?status=weird", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    stop(h, tok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_and_customers_are_upserted_and_bad_input_is_refused() {
    let b = broker();
    let dirs = Dirs::new();
    let mut cfg = config(&b.url(), &dirs, "fw-fleet");
    cfg.api.max_body_bytes = 2048;
    let (h, tok) = start(cfg).await;
    ready(&h).await;
    let api = Api::new(&h);
    let put = |path: String, body: serde_json::Value| {
        let http = api.http.clone();
        let url = format!("{}{}", api.base, path);
        async move {
            http.put(url)
                .bearer_auth(TOKEN)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let r = put(
        "/api/v1/customers/acme".into(),
        json!({"name": "Acme", "time_zone": "Asia/Bangkok", "locale": "th",
               "contacts": {"sms": "+66800000000"}, "preferences": ["sms"]}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let r = put(
        "/api/v1/devices/pump-9".into(),
        json!({"customer_id": "acme", "attributes": {"model": "P200"}}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let r = put(
        "/api/v1/devices/pump-9".into(),
        json!({"id": "pump-9", "customer_id": "acme", "attributes": {"model": "P300"}}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let d = api.get_json("/api/v1/devices/pump-9").await;
    assert_eq!(d["attributes"]["model"], "P300");
    assert_eq!(
        api.get_json("/api/v1/devices")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(api.get_json("/api/v1/customers/acme").await["locale"], "th");

    // A ticket of this device carries its customer.
    let id = open_ticket(&b, &api, "pump-9").await;
    let t = api.get_json(&format!("/api/v1/tickets/{id}")).await;
    assert_eq!(t["customer_id"], "acme");

    // Refused: wrong id in body, bad time zone, unknown fields, ids with forbidden characters.
    assert_eq!(
        put("/api/v1/devices/pump-9".into(), json!({"id": "other"}))
            .await
            .status(),
        400
    );
    assert_eq!(
        put(
            "/api/v1/customers/c2".into(),
            json!({"time_zone": "Mars/Olympus"})
        )
        .await
        .status(),
        400
    );
    assert_eq!(
        put("/api/v1/devices/d2".into(), json!({"colour": "red"}))
            .await
            .status(),
        400
    );
    for bad in ["a%2Fb", "a+b", "a%23b", "a%0Ab", &"x".repeat(300)] {
        let r = api
            .http
            .get(format!("{}/api/v1/devices/{bad}", api.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_request");
    }
    let r = api
        .http
        .get(format!("{}/api/v1/devices/nobody", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Over the body limit: 413 with the JSON error shape.
    let big = json!({"name": "x".repeat(4096)});
    let r = put("/api/v1/customers/big".into(), big).await;
    assert_eq!(r.status(), 413);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
    let r = api
        .http
        .get(format!("{}/nope", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    stop(h, tok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_model_is_a_config_error_at_start_and_ignored_on_reload() {
    let b = broker();
    let dirs = Dirs::new();
    let cfg = config(&b.url(), &dirs, "fw-models");
    let (h, tok) = start(cfg.clone()).await;
    ready(&h).await;
    let api = Api::new(&h);
    assert_eq!(api.metric("forewarn_models_loaded").await, 1.0);
    std::fs::write(dirs.models().join("broken.json"), "{\"format\": 1}").unwrap();
    assert!(h.app.reload_models().is_err());
    assert_eq!(
        api.metric("forewarn_models_loaded").await,
        1.0,
        "old models stay"
    );
    assert_eq!(
        api.metric("forewarn_model_reloads_total{result=\"error\"}")
            .await,
        1.0
    );
    stop(h, tok).await;
    let err = match forewarn::serve::run(cfg.clone(), Default::default()).await {
        Ok(_) => panic!("started with a broken model"),
        Err(e) => e,
    };
    assert!(err.is_config(), "{err}");
    assert!(err.to_string().contains("broken.json"), "{err}");
    assert!(forewarn::serve::check(&cfg).is_err());
    std::fs::remove_file(dirs.models().join("broken.json")).unwrap();
    let s = forewarn::serve::check(&cfg).unwrap();
    assert_eq!((s.models, s.modes), (1, 1));
}
