//! Session sanity: at start, forewarn says so when the broker resumes a session the data directory
//! does not know, or when the data directory expects a session the broker no longer has.
#![cfg(feature = "embedded-broker")]

mod support;

use support::daemon::*;

async fn readyz(h: &forewarn::serve::Handle) -> serde_json::Value {
    Api::new(h).get_json("/readyz").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_data_directory_does_not_know_is_reported() {
    let b = broker();
    let first = Dirs::new();
    let (h, tok) = start(config(&b.url(), &first, "fw-session")).await;
    ready(&h).await;
    assert!(
        readyz(&h).await["session"].is_null(),
        "a first start is not a mismatch"
    );
    stop(h, tok).await;

    // Same client id, a new data directory: the broker resumes the first daemon's session.
    let second = Dirs::new();
    let (h, tok) = start(config(&b.url(), &second, "fw-session")).await;
    ready(&h).await;
    let note = readyz(&h).await["session"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(note.contains("does not know"), "{note:?}");
    stop(h, tok).await;

    // The first data directory again: the session it recorded is the broker's.
    let (h, tok) = start(config(&b.url(), &first, "fw-session")).await;
    ready(&h).await;
    assert!(readyz(&h).await["session"].is_null());
    stop(h, tok).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_broker_lost_is_reported() {
    let b = broker();
    let dirs = Dirs::new();
    // A data directory that had a session at this broker, which (restarted without persistence)
    // no longer has it.
    {
        let store = forewarn::store::Store::open(&dirs.data(), 1 << 20).unwrap();
        let mut tx = store.tx();
        tx.put_kv(
            "broker_session",
            &forewarn::app::BrokerSession {
                broker: b.url(),
                client_id: "fw-lost".into(),
            },
        );
        store.commit(tx).unwrap();
    }
    let (h, tok) = start(config(&b.url(), &dirs, "fw-lost")).await;
    ready(&h).await;
    let note = readyz(&h).await["session"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(note.contains("broker has none"), "{note:?}");
    stop(h, tok).await;
}
