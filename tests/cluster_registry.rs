//! The fleet registry and the visit reservations of cluster mode, against a real nats-server
//! (started by each test, with JetStream and the partition mapping) and real `forewarn serve`
//! processes: the `[fleet]` file reaches every instance through the registry bucket under the
//! single-machine rule (an API change outlives a restart with the same file; an edited file
//! wins, the replaced record kept as history), instances started at once with one file write
//! each record once, `forewarn fleet import` against one instance reaches the others, and a
//! fresh instance is ready only with the fleet's registry loaded. A visit's slot reservation is
//! released when its ticket is dismissed or resolved through the API (forwarded to the owner),
//! a dismissal cancels the visit as the board's does (single-machine mode too), and
//! reservations of past slots are pruned by the holder of partition 0.
#![cfg(feature = "embedded-broker")]

mod support;

use async_nats::jetstream;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::cluster::{member_config, spawn_member, wait_ready, Member, PARTITIONS, PREFIX};
use support::daemon::{self as d, Dirs, TOKEN};
use support::http::get_text;
use support::nats::NatsServer;
use support::process::forewarn;

const TECH: &str = "t-1";

/// Starts `forewarn serve` as cluster member `name` (its data under `root/name`, kept across
/// restarts), with `fleet` as its fleet file when given; the example model (which scores
/// devices of model P200 only), one technician working every day 08:00–17:00 UTC.
fn start(nats: &NatsServer, root: &std::path::Path, name: &str, fleet: Option<&str>) -> Member {
    let dir = root.join(name);
    let mut cfg = member_config(nats, &dir, name);
    cfg.fleet.file = fleet.map(|toml| {
        let p = dir.join("fleet.toml");
        std::fs::write(&p, toml).unwrap();
        p
    });
    cfg.board.business_days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .map(String::from)
        .to_vec();
    cfg.board.technicians = vec![forewarn::board::Technician {
        id: TECH.into(),
        name: "Ana".into(),
        skills: Vec::new(),
        region: String::new(),
        hours: "08:00-17:00".into(),
    }];
    spawn_member(nats, &dir, name, cfg)
}

async fn get(http: &reqwest::Client, api: &str, path: &str) -> Option<Value> {
    let r = http
        .get(format!("http://{api}{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    api: &str,
    path: &str,
    body: &Value,
) -> (u16, String) {
    let r = http
        .request(method, format!("http://{api}{path}"))
        .bearer_auth(TOKEN)
        .json(body)
        .send()
        .await
        .expect("the API answers");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// The `model` attribute of device `id` as instance `i` has it.
async fn model_of(http: &reqwest::Client, i: &Member, id: &str) -> Option<String> {
    let v = get(http, &i.api, &format!("/api/v1/devices/{id}")).await?;
    v["attributes"]["model"].as_str().map(str::to_string)
}

/// Waits (at most 10 s) until instance `i` has device `id` of model `want`.
async fn await_model(http: &reqwest::Client, i: &Member, id: &str, want: &str) {
    let started = Instant::now();
    loop {
        let got = model_of(http, i, id).await;
        if got.as_deref() == Some(want) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{} never had {id} of model {want}: {got:?}\n{}",
            i.name,
            i.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The sum of the samples of metric `name` whose labels contain `label`.
async fn metric(http: &reqwest::Client, i: &Member, name: &str, label: &str) -> f64 {
    let text = get_text(http, format!("http://{}/metrics", i.api)).await;
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A fleet file: a customer and three devices of `model` (ids in Thai and Persian too).
fn fleet_file(model: &str) -> String {
    format!(
        r#"
[[customers]]
id = "ลูกค้า-۱"
name = "บริษัท ปั๊ม"
locale = "th"
time_zone = "Asia/Bangkok"

[[devices]]
id = "pump-r"
customer_id = "ลูกค้า-۱"
attributes = {{ model = "{model}" }}

[[devices]]
id = "ปั๊ม-๒"
attributes = {{ model = "P200" }}

[[devices]]
id = "پمپ-۳"
attributes = {{ model = "P200" }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_file_reaches_every_instance_and_an_api_change_outlives_a_restart_with_it() {
    let _one_at_a_time = support::cluster::ONE_CLUSTER_AT_A_TIME.lock().await;
    let Some(nats) = NatsServer::start("cluster_registry fleet file", PARTITIONS, PREFIX) else {
        return;
    };
    forewarn::tls::install_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();

    // Two instances start at once with the same file: each record is written to the bucket
    // once (compare-and-set), and both have all of it.
    let file = fleet_file("P200");
    let mut a = start(&nats, tmp.path(), "fw-a", Some(&file));
    let b = start(&nats, tmp.path(), "fw-b", Some(&file));
    wait_ready(&http, &a).await;
    wait_ready(&http, &b).await;
    let imported = metric(
        &http,
        &a,
        "forewarn_cluster_registry_records_total",
        "imported",
    )
    .await
        + metric(
            &http,
            &b,
            "forewarn_cluster_registry_records_total",
            "imported",
        )
        .await;
    assert_eq!(
        imported, 4.0,
        "one customer and three devices, written once"
    );
    for i in [&a, &b] {
        for id in ["pump-r", "ปั๊ม-๒", "پمپ-۳"] {
            await_model(&http, i, id, "P200").await;
        }
    }

    // An instance without a fleet file is ready only with the fleet's registry loaded: at its
    // first 200 it already knows every device and its attributes.
    let c = start(&nats, tmp.path(), "fw-c", None);
    let body = wait_ready(&http, &c).await;
    assert_eq!(body["cluster"]["registry_loaded"], true, "{body}");
    for id in ["pump-r", "ปั๊ม-๒", "پمپ-۳"] {
        assert_eq!(
            model_of(&http, &c, id).await.as_deref(),
            Some("P200"),
            "{id} at fw-c's first ready answer"
        );
    }
    let customer = get(&http, &c.api, "/api/v1/customers/ลูกค้า-۱").await;
    assert_eq!(
        customer.as_ref().map(|v| v["name"].clone()),
        Some(json!("บริษัท ปั๊ม")),
        "{customer:?}"
    );
    // Its partitions were taken only after the registry was loaded.
    let log = std::fs::read_to_string(&c.log).unwrap();
    let loaded = log
        .find("cluster registry: loaded")
        .expect("loaded, logged");
    if let Some(first_lease) = log.find("lease acquired") {
        assert!(loaded < first_lease, "a lease before the registry:\n{log}");
    }

    // Changed through the API of fw-c; fw-a restarted with the same file keeps the change.
    let (status, text) = send(
        &http,
        reqwest::Method::PUT,
        &c.api,
        "/api/v1/devices/pump-r",
        &json!({"customer_id": "ลูกค้า-۱", "attributes": {"model": "P300"}}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    await_model(&http, &a, "pump-r", "P300").await;
    a.stop();
    let mut a = start(&nats, tmp.path(), "fw-a", Some(&file));
    wait_ready(&http, &a).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in [&a, &b, &c] {
        assert_eq!(
            model_of(&http, i, "pump-r").await.as_deref(),
            Some("P300"),
            "{}: the API's change stands after a restart with the same file",
            i.name
        );
    }

    // The file edited: its version wins everywhere; fw-a keeps the one it replaced as history.
    a.stop();
    let mut a = start(&nats, tmp.path(), "fw-a", Some(&fleet_file("P400")));
    wait_ready(&http, &a).await;
    for i in [&a, &b, &c] {
        await_model(&http, i, "pump-r", "P400").await;
    }
    a.stop();
    {
        let store = forewarn::store::Store::open(&a.root.join("data"), 8 << 20).unwrap();
        let history: Vec<forewarn::fleet::Device> =
            store.scan_kv("fleet_history/device/pump-r/").unwrap();
        let models: Vec<&str> = history
            .iter()
            .filter_map(|d| d.attributes.get("model").map(String::as_str))
            .collect();
        assert_eq!(models, vec!["P300"], "the replaced record, kept as history");
    }

    // `forewarn fleet import` against fw-c reaches fw-b.
    let csv = tmp.path().join("devices.csv");
    std::fs::write(&csv, "device_id,model,customer_id\nเครื่อง-๔,P500,ลูกค้า-۱\n").unwrap();
    let out = forewarn()
        .args(["fleet", "import", "--devices"])
        .arg(&csv)
        .args(["--api", &format!("http://{}", c.api)])
        .env("FOREWARN_API_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fleet import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    await_model(&http, &b, "เครื่อง-๔", "P500").await;
}

/// Publishes a degrading device's readings (see `support::daemon::degrading`) on NATS.
async fn publish_degrading(client: &async_nats::Client, device: &str, hours: i64) {
    for (i, (h, t)) in d::degrading(hours).iter().enumerate() {
        client
            .publish(
                format!("devices.{device}.telemetry"),
                d::reading(*h, i as u64 + 1, *t).into(),
            )
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
}

/// Each live instance's owned partitions.
async fn owned(http: &reqwest::Client, i: &Member) -> Vec<u32> {
    let v = get(http, &i.api, "/api/v1/cluster")
        .await
        .expect("cluster status");
    if !v["replaying"].as_array().is_some_and(|r| r.is_empty()) {
        return Vec::new();
    }
    v["owned"]
        .as_array()
        .expect("owned")
        .iter()
        .filter_map(|p| p.as_u64().map(|p| p as u32))
        .collect()
}

/// The partitions each of `a` and `b` owns once they hold all of them between them, nothing
/// replaying, the same on two reads a second apart.
async fn settled(http: &reqwest::Client, a: &Member, b: &Member) -> (Vec<u32>, Vec<u32>) {
    let started = Instant::now();
    let mut last = None;
    loop {
        let (oa, ob) = (owned(http, a).await, owned(http, b).await);
        let mut all: Vec<u32> = oa.iter().chain(&ob).copied().collect();
        all.sort_unstable();
        let whole = all == (0..PARTITIONS).collect::<Vec<_>>();
        if whole && last.as_ref() == Some(&(oa.clone(), ob.clone())) {
            return (oa, ob);
        }
        last = whole.then_some((oa, ob));
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never settled: {last:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The visits `GET /api/v1/visits` of instance `i` lists (the fleet's): `(ticket, start_ms)`.
async fn visits(http: &reqwest::Client, i: &Member) -> Vec<(String, i64)> {
    let v = get(http, &i.api, "/api/v1/visits").await.expect("visits");
    v.as_array()
        .expect("a list")
        .iter()
        .map(|v| {
            (
                v["ticket_id"].as_str().unwrap_or_default().to_string(),
                v["slot"]["start_ms"].as_i64().unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visits_slot_is_freed_for_the_fleet_when_its_ticket_is_dismissed_or_resolved_through_the_api(
) {
    let _one_at_a_time = support::cluster::ONE_CLUSTER_AT_A_TIME.lock().await;
    let Some(nats) = NatsServer::start("cluster_registry visits", PARTITIONS, PREFIX) else {
        return;
    };
    forewarn::tls::install_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let devices: Vec<String> = (0..8).map(|n| format!("pump-{n}")).collect();
    let fleet: String = devices
        .iter()
        .map(|id| format!("[[devices]]\nid = \"{id}\"\nattributes = {{ model = \"P200\" }}\n"))
        .collect();
    let mut a = start(&nats, tmp.path(), "fw-a", Some(&fleet));
    let mut b = start(&nats, tmp.path(), "fw-b", Some(&fleet));
    wait_ready(&http, &a).await;
    wait_ready(&http, &b).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    for id in &devices {
        publish_degrading(&client, id, 40).await;
    }
    // A live ticket of each device, and who owns it.
    let started = Instant::now();
    let tickets: Vec<(String, String)> = loop {
        let list = get(&http, &a.api, "/api/v1/tickets?status=open")
            .await
            .unwrap_or(json!([]));
        let mut found: std::collections::BTreeMap<String, String> = Default::default();
        for t in list.as_array().into_iter().flatten() {
            let device = t["device_id"].as_str().unwrap_or_default().to_string();
            let id = t["id"].as_str().unwrap_or_default().to_string();
            found.entry(device).or_insert(id);
        }
        if found.len() == devices.len() {
            break found.into_iter().map(|(dev, id)| (id, dev)).collect();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "a ticket per device: {found:?}\n{}\n{}",
            a.log_tail(),
            b.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (own_a, own_b) = settled(&http, &a, &b).await;
    let of = |own: &[u32]| -> Vec<String> {
        tickets
            .iter()
            .filter(|(_, dev)| {
                own.contains(&forewarn::cluster::partition::of_device(dev, PARTITIONS))
            })
            .map(|(id, _)| id.clone())
            .collect()
    };
    let (of_a, of_b) = (of(&own_a), of(&own_b));
    assert!(
        of_a.len() >= 2 && !of_b.is_empty(),
        "tickets of both: {of_a:?} {of_b:?}"
    );
    let slots = get(
        &http,
        &a.api,
        &format!("/api/v1/tickets/{}/slots?technician={TECH}", of_a[0]),
    )
    .await
    .expect("free slots");
    let slot = slots[0].clone();
    let start_ms = slot["start_ms"].as_i64().expect("a slot");
    let book = |i: &Member, id: &str| {
        let (http, api, path) = (
            http.clone(),
            i.api.clone(),
            format!("/api/v1/tickets/{id}/visit"),
        );
        let body = json!({"technician_id": TECH, "slot": slot});
        async move { send(&http, reqwest::Method::POST, &api, &path, &body).await }
    };
    let transition = |i: &Member, id: &str, body: Value| {
        let (http, api, path) = (
            http.clone(),
            i.api.clone(),
            format!("/api/v1/tickets/{id}/transitions"),
        );
        async move { send(&http, reqwest::Method::POST, &api, &path, &body).await }
    };

    // Booked on fw-a for its ticket: fw-b cannot have the slot.
    let (status, text) = book(&a, &of_a[0]).await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = book(&b, &of_b[0]).await;
    assert_eq!(status, 400, "the slot is held: {text}");

    // Dismissed through fw-b's API (made by the owner, fw-a): the visit is cancelled and the
    // slot is the fleet's again.
    let (status, text) = transition(&b, &of_a[0], json!({"to": "dismissed"})).await;
    assert_eq!(status, 200, "{text}");
    for i in [&a, &b] {
        let v = visits(&http, i).await;
        assert!(
            v.iter().all(|(t, _)| *t != of_a[0]),
            "{}: the dismissed ticket's visit is gone: {v:?}",
            i.name
        );
    }
    let (status, text) = book(&b, &of_b[0]).await;
    assert_eq!(status, 200, "the freed slot, booked by fw-b: {text}");

    // Resolved through fw-a's API (made by fw-b): the visit stays listed as history, and the
    // slot's reservation is released, so fw-a books it for another of its tickets.
    let (status, text) = transition(
        &a,
        &of_b[0],
        json!({"to": "resolved", "outcome": "confirmed_fault"}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let v = visits(&http, &a).await;
    assert!(
        v.contains(&(of_b[0].clone(), start_ms)),
        "a resolved ticket's visit stays listed: {v:?}"
    );
    let (status, text) = book(&a, &of_a[1]).await;
    assert_eq!(
        status, 200,
        "the resolved ticket's slot, booked by fw-a: {text}"
    );
    let released = metric(
        &http,
        &a,
        "forewarn_cluster_visit_reservations_total",
        "released",
    )
    .await
        + metric(
            &http,
            &b,
            "forewarn_cluster_visit_reservations_total",
            "released",
        )
        .await;
    assert_eq!(released, 2.0, "one release per settled ticket");

    // A reservation whose day is past is pruned by the holder of partition 0 (here: fw-a,
    // alone after a restart); one ahead stays.
    let js = jetstream::new(client.clone());
    let bucket = js.get_key_value("forewarn-visits").await.unwrap();
    let tech = hex_of(TECH);
    let past = format!("s.{tech}.{}", 1_420_070_400_000_i64);
    bucket.put(&past, "T-past".into()).await.unwrap();
    let ahead = format!("s.{tech}.{start_ms}");
    a.stop();
    b.stop();
    let a = start(&nats, tmp.path(), "fw-a", Some(&fleet));
    wait_ready(&http, &a).await;
    let started = Instant::now();
    while bucket.get(&past).await.unwrap().is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the past reservation was never pruned\n{}",
            a.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        bucket.get(&ahead).await.unwrap().map(|v| v.to_vec()),
        Some(of_a[1].as_bytes().to_vec()),
        "the reservation ahead stays"
    );
    assert_eq!(
        metric(
            &http,
            &a,
            "forewarn_cluster_visit_reservations_total",
            "pruned"
        )
        .await,
        1.0
    );
}

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_machine_an_api_dismissal_cancels_the_visit_as_the_boards_does() {
    let broker = d::broker();
    let dirs = Dirs::new();
    let mut cfg = d::config(&broker.url(), &dirs, "fw-creg-visit");
    cfg.fleet.file = Some(dirs.fleet_file(&d::acme_fleet("pump-v")));
    cfg.board.business_days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .map(String::from)
        .to_vec();
    cfg.board.technicians = vec![forewarn::board::Technician {
        id: TECH.into(),
        name: "Ana".into(),
        skills: Vec::new(),
        region: String::new(),
        hours: "08:00-17:00".into(),
    }];
    let (h, token) = d::start(cfg).await;
    d::ready(&h).await;
    let api = d::Api::new(&h);
    let dev = d::mqtt(&broker, "pump-v-pub").await;
    dev.publish_degrading("pump-v", 40).await;
    let id = api.first_ticket("pump-v").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let slots: Value = api
        .get_json(&format!("/api/v1/tickets/{id}/slots?technician={TECH}"))
        .await;
    let first = slots[0].clone();
    let r = api
        .post(
            &format!("/api/v1/tickets/{id}/visit"),
            &json!({"technician_id": TECH, "slot": first}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let other: Value = api
        .get_json(&format!("/api/v1/tickets/T-other/slots?technician={TECH}"))
        .await;
    assert!(
        other.as_array().unwrap().iter().all(|s| *s != first),
        "booked, the slot is not offered: {other}"
    );
    let r = api
        .post(
            &format!("/api/v1/tickets/{id}/transitions"),
            &json!({"to": "dismissed", "note": "not a fault"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let visits: Value = api.get_json("/api/v1/visits").await;
    assert_eq!(visits, json!([]), "the dismissal cancelled the visit");
    let other: Value = api
        .get_json(&format!("/api/v1/tickets/T-other/slots?technician={TECH}"))
        .await;
    assert_eq!(other[0], first, "the slot is offered again: {other}");
    d::stop(h, token).await;
}
