//! Field-service dispatch: retained MQTT ticket state and a signed webhook on a real loopback
//! HTTP server.
#![cfg(feature = "embedded-broker")]

mod support;

use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::daemon::*;
use support::poll::eventually;

type Received = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

/// A dispatch system on loopback that fails its first request, then accepts.
async fn webhook_server() -> (String, Received) {
    let got: Received = Arc::default();
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let g = g.clone();
            async move {
                let mut v = g.lock().unwrap();
                v.push((headers, body.to_vec()));
                if v.len() == 1 {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (format!("http://{addr}/hook"), got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_is_published_retained_and_posted_signed_to_the_dispatch_webhook() {
    let b = broker();
    let dirs = Dirs::new();
    let (url, got) = webhook_server().await;
    let mut cfg = config(&b.url(), &dirs, "fw-dispatch");
    cfg.dispatch.webhook_url = Some(url.into());
    cfg.dispatch.webhook_secret = Some("s3cret".into());
    let (h, tok) = start(cfg).await;
    ready(&h).await;
    let api = Api::new(&h);
    let dev = mqtt(&b, "disp-1-pub").await;
    dev.publish_degrading("disp-1", 36).await;
    let id = api.first_ticket("disp-1").await["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Webhook: first attempt refused, retried, every body signed.
    eventually("webhook delivered after a retry", || async {
        got.lock().unwrap().len() >= 2
    })
    .await;
    for (headers, body) in got.lock().unwrap().iter() {
        let sig = headers["x-forewarn-signature"].to_str().unwrap();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(body);
        assert_eq!(
            sig,
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        );
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["event"], "ticket.opened");
        assert_eq!(v["ticket"]["id"], id.as_str());
    }
    eventually("outbox drained", || async {
        api.metric("forewarn_outbox_depth{queue=\"dispatch\"}")
            .await
            == 0.0
    })
    .await;
    assert!(
        api.metric("forewarn_dispatch_deliveries_total{result=\"error\",target=\"webhook\"}")
            .await
            >= 1.0
    );

    // MQTT: a late subscriber gets the current state, retained.
    let mut watcher = mqtt(&b, "dispatch-watcher").await;
    watcher
        .client
        .subscribe(
            "forewarn/tickets/disp-1/overheat",
            rumqttc::QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    let p = tokio::time::timeout(Duration::from_secs(10), watcher.incoming.recv())
        .await
        .expect("retained ticket")
        .unwrap();
    assert!(p.retain, "ticket state is retained");
    let t: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(t["id"], id.as_str());
    assert_eq!(t["status"], "open");
    stop(h, tok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_webhook_the_retained_message_is_the_ticket_as_stored_after_each_change() {
    // No webhook: the dispatch rows name their ticket; what is published is the ticket as the
    // store holds it when the row goes out, byte for byte what the API reads back.
    let b = broker();
    let dirs = Dirs::new();
    let (h, tok) = start(config(&b.url(), &dirs, "fw-dispatch-named")).await;
    ready(&h).await;
    let api = Api::new(&h);
    let dev = mqtt(&b, "disp-2-pub").await;
    dev.publish_degrading("ปั๊ม-۲", 36).await;
    let id = api.first_ticket("ปั๊ม-۲").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let topic = "forewarn/tickets/ปั๊ม-۲/overheat";
    let latest = |status: &'static str| {
        let (b, api, id) = (&b, &api, id.clone());
        async move {
            eventually("the retained ticket", || async {
                let mut w = mqtt(b, &format!("watcher-{status}")).await;
                w.client
                    .subscribe(topic, rumqttc::QoS::AtLeastOnce)
                    .await
                    .unwrap();
                let Ok(Some(p)) =
                    tokio::time::timeout(Duration::from_secs(5), w.incoming.recv()).await
                else {
                    return false;
                };
                let t: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                let stored = api.get_json(&format!("/api/v1/tickets/{id}")).await;
                p.retain && t["status"] == status && t == stored
            })
            .await;
        }
    };
    latest("open").await;
    let r = api
        .post(
            &format!("/api/v1/tickets/{id}/transitions"),
            &serde_json::json!({"to": "acknowledged", "note": "รับทราบ — دیده شد"}),
        )
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    latest("acknowledged").await;
    eventually("outbox drained", || async {
        api.metric("forewarn_outbox_depth{queue=\"dispatch\"}")
            .await
            == 0.0
    })
    .await;
    stop(h, tok).await;
}
