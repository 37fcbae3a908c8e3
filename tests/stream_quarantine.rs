//! Nothing is written that cannot be read back, and what cannot be read never stops the daemon:
//! records planted corrupt in a real sled store are set aside at start and by every reader, and
//! the rest flows.
#![cfg(feature = "embedded-broker")]

mod support;

use support::daemon::*;
use support::poll::eventually;

/// Writes records no reader can decode straight into the store's tree, as a crash, a disk fault
/// or an older build might have left them.
fn plant_corrupt_records(dir: &std::path::Path) {
    let db = sled::open(dir).unwrap();
    let tree = db.open_tree("forewarn").unwrap();
    // A ticket whose evidence holds a null where a number belongs (what a NaN became before).
    tree.insert(
        b"t/T-bad".as_slice(),
        br#"{"id":"T-bad","evidence":[{"feature":"attr.age","value":null,"weight":null}]}"#
            .as_slice(),
    )
    .unwrap();
    tree.insert(b"l/ghost\x1foverheat".as_slice(), b"T-bad".as_slice())
        .unwrap();
    let mut k = b"o/dispatch/".to_vec();
    k.extend_from_slice(&1u64.to_be_bytes());
    tree.insert(k, b"not json".as_slice()).unwrap();
    let mut k = b"o/notify/".to_vec();
    k.extend_from_slice(&1u64.to_be_bytes());
    tree.insert(k, b"{\"truncated\":".as_slice()).unwrap();
    tree.insert(b"fd/broken".as_slice(), b"[1,2".as_slice())
        .unwrap();
    tree.insert(b"s/q-1".as_slice(), b"\xff\xff\xff".as_slice())
        .unwrap();
    // A step log record (replayed at start) that is not a list of (device, step).
    let mut k = b"w/".to_vec();
    k.extend_from_slice(&7u64.to_be_bytes());
    tree.insert(k, b"\xff\xff\xff\xff".as_slice()).unwrap();
    db.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_records_are_quarantined_and_tickets_still_flow_to_dispatch() {
    let b = broker();
    let dirs = Dirs::new();
    plant_corrupt_records(&dirs.data());
    let (h, tok) = start(config(&b.url(), &dirs, "fw-quarantine")).await;
    ready(&h).await;
    let api = Api::new(&h);

    // The ticket list answers, without the corrupt ticket.
    assert!(api.tickets("").await.is_empty());

    let dev = mqtt(&b, "q-1-pub").await;
    dev.publish_degrading("q-1", 36).await;
    eventually(
        "a ticket opened for the device whose state was corrupt",
        || async { !api.tickets("?device_id=q-1").await.is_empty() },
    )
    .await;
    eventually(
        "the ticket dispatched past the corrupt outbox row",
        || async {
            api.metric(r#"forewarn_dispatch_deliveries_total{result="ok",target="mqtt"}"#)
                .await
                >= 1.0
        },
    )
    .await;

    let q = api.get_json("/api/v1/quarantine").await;
    let keys: Vec<String> = q
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap().to_string())
        .collect();
    for want in ["t/T-bad", "o/dispatch/", "fd/broken", "s/q-1", "w/"] {
        assert!(
            keys.iter().any(|k| k.starts_with(want)),
            "{want} quarantined: {keys:?}"
        );
    }
    let detail = q.as_array().unwrap().iter().find(|r| r["key"] == "t/T-bad");
    assert!(detail.unwrap()["detail"].as_str().unwrap().contains("null"));
    assert!(api.metric("forewarn_store_quarantined_total").await >= 4.0);
    // A second listing does not find them again: they were moved, not just skipped.
    let before = api.metric("forewarn_store_quarantined_total").await;
    assert!(api.tickets("").await.len() == 1);
    assert_eq!(api.metric("forewarn_store_quarantined_total").await, before);
    stop(h, tok).await;
}
