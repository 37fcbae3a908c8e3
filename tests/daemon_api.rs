//! The HTTP API over loopback against a running daemon.
#![cfg(feature = "embedded-broker")]

mod support;

use serde_json::json;
use support::daemon::*;
use support::http::json_of;
use support::poll::eventually;

async fn open_ticket(b: &forewarn::broker::EmbeddedBroker, api: &Api, device: &str) -> String {
    let dev = mqtt(b, &format!("{device}-pub")).await;
    dev.publish_degrading(device, 40).await;
    api.first_ticket(device).await["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_without_a_valid_token_are_refused() {
    let b = broker();
    let dirs = Dirs::new();
    let (h, tok) = start(config(&b.url(), &dirs, "fw-auth")).await;
    ready(&h).await;
    let api = Api::new(&h);
    let anon = reqwest::Client::new();
    let id = open_ticket(&b, &api, "auth-1").await;
    let url = format!("{}/api/v1/tickets/{id}/transitions", api.base);
    let r = anon
        .post(&url)
        .json(&json!({"to": "acknowledged"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let r = anon
        .post(&url)
        .bearer_auth("wrong")
        .json(&json!({"to": "acknowledged"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = anon
        .put(format!("{}/api/v1/devices/d9", api.base))
        .json(&json!({"customer_id": "c1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The ticket is unchanged.
    let t = api.get_json(&format!("/api/v1/tickets/{id}")).await;
    assert_eq!(t["status"], "open");
    stop(h, tok).await;
}

/// The watch level is internal: a device at or above it is listed by `GET /api/v1/watch` and
/// counted by `forewarn_watched_devices`, and leaves both when its score falls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_above_the_watch_level_is_listed_and_counted_until_its_score_falls() {
    let b = broker();
    let dirs = Dirs::new();
    let (h, tok) = start(config(&b.url(), &dirs, "fw-watch")).await;
    ready(&h).await;
    let api = Api::new(&h);
    let dev = mqtt(&b, "watch-pub").await;
    // The example model's watch level is its ticket level, P(overheat) 0.5 (temp 80).
    let temps = [70.0, 70.5, 86.0, 87.0];
    for (i, t) in temps.iter().enumerate() {
        dev.publish(
            "devices/watch-1/telemetry",
            reading(i as i64, i as u64 + 1, *t),
        )
        .await;
    }
    dev.publish("devices/calm-1/telemetry", reading(0, 1, 70.0))
        .await;
    // Listed since the first scoring at or above the level (hour 2), updated by the next.
    eventually(
        "watch-1 on watch, updated by its latest scoring",
        || async {
            let w = api.get_json("/api/v1/watch").await;
            w.as_array().is_some_and(|a| a.len() == 1) && w[0]["since"] != w[0]["scored_at"]
        },
    )
    .await;
    let w = api.get_json("/api/v1/watch").await;
    assert_eq!(w[0]["device_id"], "watch-1", "{w}");
    assert_eq!(w[0]["mode"], "overheat");
    assert!(w[0]["probability"].as_f64().unwrap_or(0.0) > 0.99, "{w}");
    assert_eq!(
        api.metric("forewarn_watched_devices{mode=\"overheat\"}")
            .await,
        1.0
    );
    // New models, new levels: the list starts again from the next scoring under them.
    assert_eq!(h.app.reload_models().ok(), Some(1));
    assert!(api
        .get_json("/api/v1/watch")
        .await
        .as_array()
        .is_some_and(|a| a.is_empty()));
    assert_eq!(
        api.metric("forewarn_watched_devices{mode=\"overheat\"}")
            .await,
        0.0
    );
    dev.publish("devices/watch-1/telemetry", reading(4, 5, 88.0))
        .await;
    eventually("watch-1 on watch again", || async {
        api.get_json("/api/v1/watch")
            .await
            .as_array()
            .is_some_and(|a| a.len() == 1)
    })
    .await;
    assert_eq!(
        api.metric("forewarn_watched_devices{mode=\"overheat\"}")
            .await,
        1.0
    );
    // Back to normal: off the list, and the gauge falls.
    dev.publish("devices/watch-1/telemetry", reading(5, 6, 70.0))
        .await;
    eventually("watch-1 off watch", || async {
        api.get_json("/api/v1/watch")
            .await
            .as_array()
            .is_some_and(|a| a.is_empty())
    })
    .await;
    assert_eq!(
        api.metric("forewarn_watched_devices{mode=\"overheat\"}")
            .await,
        0.0
    );
    stop(h, tok).await;
}

const READER: &str = "reader-token-5150";
const WRITER: &str = "writer-token-2112";

/// Every read route, with and without a token, by default (no `protect_reads` in the config).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_route_needs_a_token_by_default() {
    use forewarn::api::{Scope, ScopedToken, TokenConfig};
    let b = broker();
    let dirs = Dirs::new();
    let mut cfg = config(&b.url(), &dirs, "fw-protect");
    for (token, scope) in [(READER, Scope::Read), (WRITER, Scope::Write)] {
        cfg.api.tokens.push(TokenConfig::Scoped(ScopedToken {
            token: token.into(),
            scope,
        }));
    }
    let (h, tok) = start(cfg).await;
    ready(&h).await;
    let api = Api::new(&h);
    let id = open_ticket(&b, &api, "prot-1").await;
    let r = api
        .http
        .put(format!("{}/api/v1/customers/acme", api.base))
        .json(&json!({"contacts": {"email": "ops@acme.example"}}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let r = api
        .http
        .put(format!("{}/api/v1/devices/prot-1", api.base))
        .json(&json!({"customer_id": "acme"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let anon = reqwest::Client::new();
    let get = |path: String, token: Option<&'static str>| {
        let (anon, base) = (anon.clone(), api.base.clone());
        async move {
            let mut rq = anon.get(format!("{base}{path}"));
            if let Some(t) = token {
                rq = rq.bearer_auth(t);
            }
            rq.send().await.unwrap()
        }
    };
    // (route, the scope it needs)
    let routes = [
        ("/api/v1/tickets".to_string(), Scope::Read),
        (format!("/api/v1/tickets/{id}"), Scope::Read),
        ("/api/v1/tickets?status=open".to_string(), Scope::Read),
        ("/api/v1/devices".to_string(), Scope::Read),
        ("/api/v1/devices/prot-1".to_string(), Scope::Read),
        ("/api/v1/customers".to_string(), Scope::Read),
        ("/api/v1/customers/acme".to_string(), Scope::Read),
        ("/api/v1/customers/acme/timeline".to_string(), Scope::Read),
        ("/api/v1/gaps".to_string(), Scope::Read),
        ("/api/v1/watch".to_string(), Scope::Read),
        ("/api/v1/rejects".to_string(), Scope::Admin),
        ("/api/v1/quarantine".to_string(), Scope::Admin),
    ];
    for (path, needs) in &routes {
        let r = get(path.clone(), None).await;
        assert_eq!(r.status(), 401, "GET {path} without a token");
        assert_eq!(r.headers()["www-authenticate"], "Bearer", "{path}");
        let body = r.text().await.unwrap();
        assert!(
            !body.contains("acme.example") && !body.contains("prot-1"),
            "{path}: {body}"
        );
        let r = get(path.clone(), Some("not-a-token")).await;
        assert_eq!(r.status(), 401, "GET {path} with a wrong token");
        let r = get(path.clone(), Some(READER)).await;
        let want = if *needs == Scope::Read { 200 } else { 403 };
        assert_eq!(r.status(), want, "GET {path} with a read token");
        let r = get(path.clone(), Some(TOKEN)).await;
        assert_eq!(r.status(), 200, "GET {path} with an admin token");
    }
    // What the read token returns is what was stored.
    let r = get("/api/v1/customers/acme".into(), Some(READER)).await;
    let c: serde_json::Value = r.json().await.unwrap();
    assert_eq!(c["contacts"]["email"], "ops@acme.example");
    // Scopes: read cannot write, write can, and neither reaches admin routes.
    let transition = |token: &'static str| {
        let (anon, url) = (
            anon.clone(),
            format!("{}/api/v1/tickets/{id}/transitions", api.base),
        );
        async move {
            anon.post(url)
                .bearer_auth(token)
                .json(&json!({"to": "acknowledged"}))
                .send()
                .await
                .unwrap()
        }
    };
    let r = transition(READER).await;
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(transition(WRITER).await.status(), 200);
    assert_eq!(
        get("/api/v1/rejects".into(), Some(WRITER)).await.status(),
        403
    );
    // Scrapers and probes need no token.
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(get(path.into(), None).await.status(), 200, "{path}");
    }
    stop(h, tok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_reads_need_both_the_setting_and_a_loopback_listener() {
    let b = broker();
    let dirs = Dirs::new();
    let mut cfg = config(&b.url(), &dirs, "fw-open");
    cfg.api.protect_reads = false;
    cfg.api.listen = "0.0.0.0:0".into();
    let e = forewarn::serve::run(cfg.clone(), Default::default())
        .await
        .err()
        .expect("open reads on a public address must not start");
    assert!(e.is_config(), "{e}");
    assert!(e.to_string().contains("api.protect_reads"), "{e}");
    assert!(e.to_string().contains("loopback"), "{e}");
    cfg.api.listen = "127.0.0.1:0".into();
    let (h, tok) = start(cfg).await;
    ready(&h).await;
    let anon = reqwest::Client::new();
    let base = format!("http://{}", h.api_addr);
    let r = anon
        .get(format!("{base}/api/v1/tickets"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "open reads on loopback");
    let r = anon
        .put(format!("{base}/api/v1/devices/d1"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "writes still need a token");
    stop(h, tok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_rotate_through_the_tokens_file_without_a_restart() {
    let b = broker();
    let dirs = Dirs::new();
    let file = dirs.path().join("tokens");
    std::fs::write(&file, "# first generation\nread gen-1-token-abcdef\n").unwrap();
    let mut cfg = config(&b.url(), &dirs, "fw-rotate");
    cfg.api.tokens_file = Some(file.clone());
    let (h, tok) = start(cfg).await;
    ready(&h).await;
    let anon = reqwest::Client::new();
    let url = format!("http://{}/api/v1/tickets", h.api_addr);
    let status = |token: &'static str| {
        let (anon, url) = (anon.clone(), url.clone());
        async move {
            anon.get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status("gen-1-token-abcdef").await, 200);
    assert_eq!(status("gen-2-token-abcdef").await, 401);
    // A different size as well as a new mtime, so the change is seen even on coarse clocks.
    std::fs::write(&file, "read gen-2-token-abcdef\nadmin gen-2-admin-token\n").unwrap();
    eventually("the new tokens file in force", || async {
        status("gen-2-token-abcdef").await == 200 && status("gen-1-token-abcdef").await == 401
    })
    .await;
    // A broken file keeps what is in force.
    std::fs::write(&file, "sudo broken-line-that-is-long\n").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(status("gen-2-token-abcdef").await, 200);
    stop(h, tok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_routes_can_have_their_own_listener() {
    let b = broker();
    let dirs = Dirs::new();
    let mut cfg = config(&b.url(), &dirs, "fw-public");
    cfg.api.public_listen = Some("127.0.0.1:0".into());
    let (h, tok) = start(cfg).await;
    ready(&h).await;
    let public = format!("http://{}", h.public_addr.expect("a public listener"));
    let private = format!("http://{}", h.api_addr);
    let api = Api::new(&h);
    let status = |url: String| {
        let http = api.http.clone();
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    // The self-service page answers on the public listener (an unknown link: 4xx from the page's
    // own handler, not the router's 404 JSON), and not on the private one.
    let page = reqwest::get(format!("{public}/notify/v1/s/not-a-link"))
        .await
        .unwrap();
    assert!(page.status().is_client_error());
    // An HTML page: framing refused, no referrer, not cached, and a CSP that loads nothing.
    let hd = page.headers();
    assert!(hd["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert_eq!(hd["x-frame-options"], "DENY");
    assert_eq!(hd["referrer-policy"], "no-referrer");
    assert_eq!(hd["cache-control"], "no-store");
    let csp = hd["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(
        status(format!("{private}/notify/v1/s/not-a-link")).await,
        404
    );
    // The API is not on the public listener, even with a valid token.
    assert_eq!(status(format!("{public}/api/v1/tickets")).await, 404);
    assert_eq!(
        status(format!("{public}/api/v1/customers/acme/timeline")).await,
        404
    );
    assert_eq!(status(format!("{public}/metrics")).await, 404);
    assert_eq!(status(format!("{public}/healthz")).await, 200);
    assert_eq!(status(format!("{private}/api/v1/tickets")).await, 200);
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
    assert_eq!(api.tickets("?since=2015-01-01T00:00:00Z").await.len(), 1);
    assert_eq!(api.tickets("?since=2099-01-01T00:00:00Z").await.len(), 0);
    let r = api
        .http
        .get(format!("{}/api/v1/tickets?since=yesterday", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transition_through_the_api_is_seen_by_the_ticket_policy() {
    let b = broker();
    let dirs = Dirs::new();
    let (h, tok) = start(config(&b.url(), &dirs, "fw-policy")).await;
    ready(&h).await;
    let api = Api::new(&h);
    let id = open_ticket(&b, &api, "pol-1").await;
    let r = api
        .http
        .post(format!("{}/api/v1/tickets/{id}/transitions", api.base))
        .bearer_auth(TOKEN)
        .json(&json!({"to": "acknowledged", "note": "crew informed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The device keeps heating: the policy updates the acknowledged ticket, never reopens it
    // and never opens a second one.
    let dev = mqtt(&b, "pol-1-more").await;
    for hr in 40..50 {
        dev.publish(
            "devices/pol-1/telemetry",
            reading(hr, hr as u64 + 1, 74.0 + (hr - 30) as f64 * 1.5),
        )
        .await;
    }
    eventually("updates applied", || async {
        api.get_json(&format!("/api/v1/tickets/{id}")).await["updated_at"] == "2015-01-03T01:00:00Z"
    })
    .await;
    let all = api.tickets("?device_id=pol-1").await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["status"], "acknowledged");
    stop(h, tok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_transitions_racing_readings_never_leave_two_live_tickets() {
    let b = broker();
    let dirs = Dirs::new();
    let mut cfg = config(&b.url(), &dirs, "fw-race");
    cfg.ingest.commit_group = 16;
    let (h, tok) = start(cfg).await;
    ready(&h).await;
    let api = Api::new(&h);
    let stop_flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A dispatcher desk that dismisses or acknowledges every ticket it sees, as fast as it can.
    let desk = {
        let (http, base, stop_flag) = (api.http.clone(), api.base.clone(), stop_flag.clone());
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop_flag.load(std::sync::atomic::Ordering::Relaxed) {
                let list: Vec<serde_json::Value> =
                    json_of(http.get(format!("{base}/api/v1/tickets?status=open"))).await;
                for t in list {
                    n += 1;
                    let to = if n % 2 == 0 {
                        "dismissed"
                    } else {
                        "acknowledged"
                    };
                    let _ = http
                        .post(format!(
                            "{base}/api/v1/tickets/{}/transitions",
                            t["id"].as_str().unwrap()
                        ))
                        .bearer_auth(TOKEN)
                        .json(&json!({"to": to}))
                        .send()
                        .await
                        .unwrap();
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            n
        })
    };
    let dev = mqtt(&b, "race-pub").await;
    let series = degrading(60);
    for (i, (hr, t)) in series.iter().enumerate() {
        for d in 0..10 {
            dev.publish(
                &format!("devices/race-{d}/telemetry"),
                reading(*hr, i as u64 + 1, *t),
            )
            .await;
        }
    }
    eventually("all readings applied", || async {
        api.metric("forewarn_readings_total").await == 600.0
    })
    .await;
    stop_flag.store(true, std::sync::atomic::Ordering::Relaxed);
    let transitions = desk.await.unwrap();
    assert!(transitions > 0);
    for d in 0..10 {
        let all = api.tickets(&format!("?device_id=race-{d}")).await;
        let live = all
            .iter()
            .filter(|t| {
                ["open", "acknowledged", "scheduled"].contains(&t["status"].as_str().unwrap())
            })
            .count();
        assert!(live <= 1, "race-{d}: {live} live tickets");
        assert!(
            h.app
                .store
                .live_tickets(&format!("race-{d}"))
                .unwrap()
                .len()
                <= 1
        );
        for t in &all {
            // A dismissed ticket is never touched by the policy afterwards.
            if t["status"] == "dismissed" {
                let last = t["history"].as_array().unwrap().last().unwrap();
                assert_eq!(last["action"], "dismissed", "{t}");
            }
        }
    }
    stop(h, tok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_are_validated_per_channel_and_webhooks_must_be_public() {
    let b = broker();
    let dirs = Dirs::new();
    let (h, tok) = start(config(&b.url(), &dirs, "fw-contacts")).await;
    ready(&h).await;
    let api = Api::new(&h);
    let put = |contacts: serde_json::Value| {
        let (http, url) = (
            api.http.clone(),
            format!("{}/api/v1/customers/contact-check", api.base),
        );
        async move {
            let r = http
                .put(url)
                .json(&json!({"contacts": contacts}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };
    for bad in [
        json!({"sms": "0812345678"}),
        json!({"voice": "call me"}),
        json!({"email": "not-an-address"}),
        json!({"webhook": "http://hooks.acme.example/x"}),
        json!({"webhook": "https://127.0.0.1:9/x"}),
        json!({"webhook": "https://169.254.169.254/latest/meta-data"}),
        json!({"webhook": "https://user:pw@hooks.acme.example/x"}),
        json!({"mqtt": "customers/#"}),
    ] {
        let (status, body) = put(bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let good = json!({"sms": "+66812345678", "email": "ops@acme.example",
        "webhook": "https://hooks.acme.example/forewarn"});
    let (status, body) = put(good).await;
    assert_eq!(status, 201, "{body}");
    stop(h, tok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_changed_through_the_api_leaves_the_contact_index() {
    use forewarn::fleet::{contact_index_key, Channel};
    let b = broker();
    let dirs = Dirs::new();
    let (h, tok) = start(config(&b.url(), &dirs, "fw-index")).await;
    ready(&h).await;
    let api = Api::new(&h);
    let put = |sms: &'static str| {
        let (http, url) = (
            api.http.clone(),
            format!("{}/api/v1/customers/acme", api.base),
        );
        async move {
            http.put(url)
                .json(&json!({"contacts": {"sms": sms, "email": "ops@acme.example"}}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(put("+66810000001").await, 201);
    // What the notifier writes when it queues a message to these addresses.
    let old_sms = contact_index_key(Channel::Sms, "+66810000001");
    let email = contact_index_key(Channel::Email, "ops@acme.example");
    let mut tx = h.app.store.tx();
    tx.put_kv(&old_sms, &"acme");
    tx.put_kv(&email, &"acme");
    h.app.store.commit(tx).unwrap();
    assert_eq!(put("+66810000002").await, 200);
    let get = |k: &str| h.app.store.get_kv::<String>(k).unwrap();
    assert_eq!(
        get(&old_sms),
        None,
        "a reply from the old number finds no one"
    );
    assert_eq!(
        get(&email).as_deref(),
        Some("acme"),
        "the unchanged address stays"
    );
    stop(h, tok).await;
}
