//! Ticket ids are not guessable: the daemon derives them under a random key kept in its data
//! directory, so knowing a device id and the hour it failed does not give a ticket's id (ids
//! travel in SMS and e-mail replies). The key survives a restart; `evaluate` stays unkeyed.
#![cfg(feature = "embedded-broker")]

mod support;

use forewarn::tickets::ticket_id;
use support::daemon::*;
use support::poll::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_keys_ticket_ids_with_a_secret_that_survives_a_restart() {
    let b = broker();
    let dirs = Dirs::new();
    let cfg = config(&b.url(), &dirs, "fw-ids");
    let (h, tok) = start(cfg.clone()).await;
    ready(&h).await;
    let api = Api::new(&h);
    let dev = mqtt(&b, "pump-ids").await;
    dev.publish_degrading("pump-ids", 48).await;
    eventually("a ticket opened", || async {
        !api.tickets("?device_id=pump-ids").await.is_empty()
    })
    .await;
    let t = api.tickets("?device_id=pump-ids").await.remove(0);
    let id = t["id"].as_str().unwrap().to_string();
    let mode = t["failure_mode"].as_str().unwrap();
    let opened = chrono::DateTime::parse_from_rfc3339(t["opened_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    assert_ne!(
        id,
        ticket_id(
            &[],
            "pump-ids",
            mode,
            forewarn::domain::Timestamp::from_millis(opened)
        ),
        "the id is not the public hash of device, mode and time"
    );
    let key: Vec<u8> = h.app.store.get_kv("ticket_id_key").unwrap().unwrap();
    assert_eq!(key.len(), 32);
    assert_ne!(key, vec![0u8; 32]);
    assert_eq!(
        id,
        ticket_id(
            &key,
            "pump-ids",
            mode,
            forewarn::domain::Timestamp::from_millis(opened)
        )
    );
    stop(h, tok).await;

    let (h, tok) = start(cfg).await;
    let again: Vec<u8> = h.app.store.get_kv("ticket_id_key").unwrap().unwrap();
    assert_eq!(again, key, "the key is kept across restarts");
    stop(h, tok).await;

    // Another data directory, another key.
    let other = Dirs::new();
    let (h, tok) = start(config(&b.url(), &other, "fw-ids-2")).await;
    let k2: Vec<u8> = h.app.store.get_kv("ticket_id_key").unwrap().unwrap();
    assert_ne!(k2, key);
    stop(h, tok).await;
}
