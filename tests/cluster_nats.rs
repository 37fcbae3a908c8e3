//! Cluster mode against a real nats-server (started by the test, with JetStream and the
//! partition mapping): the server and forewarn agree on every device's partition; three
//! `forewarn serve` processes share a history's partitions, one is killed with SIGKILL mid-stream,
//! the others take its partitions over within the lease time, a fourth joins mid-stream and gets
//! its share, and the tickets of the fleet are exactly the backtest's, none opened twice; every
//! instance answers the ticket API for the whole fleet, and a transition posted to one that does
//! not own the ticket is made by the owner and seen from every instance; a ticket is opened and
//! acted on through the board of an instance that does not own it. Apart, the nats-server itself
//! is killed mid-stream and restarted: the instances recover by themselves, nothing lost, nothing
//! claimed twice; and with three nats-servers in one NATS cluster (three copies of everything),
//! the stream's leader is killed mid-stream and the fleet goes on through the other two. Two owners booking one technician's slot at once end with one visit, which
//! every instance's visit list and day view show. A customer and a device written through one
//! instance's API (ids in Thai and Persian) are answered by every instance, one started
//! afterwards included.
#![cfg(feature = "embedded-broker")]

mod support;

use async_nats::jetstream;
use forewarn::cluster::partition;
use forewarn::domain::Ticket;
use futures_util::StreamExt;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};
use support::cluster::{
    announced_claim, claim_keys, covers_all, get_json, in_rendezvous_shares, metric, metric_sum,
    ownership, publish_history, publish_history_retrying, readyz, spawn_member, tails, unmarked,
    until, wait_drained, wait_ready, Member, Webhook, PARTITIONS, PREFIX,
};
use support::http::get_text;
use support::nats::{cluster_urls, NatsServer};
use support::net::free_port;
use support::parity::*;

const TOKEN: &str = "parity-token";
/// `cluster.checkpoint_every` of the drills' instances.
const CHECKPOINT_EVERY: u64 = 200;

/// A stream over every partitioned subject (`{PREFIX}.<partition>.…`) of the server.
async fn partitioned_stream(
    nats: &NatsServer,
    name: &str,
) -> (jetstream::Context, jetstream::stream::Stream) {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    let stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: name.into(),
            subjects: vec![format!("{PREFIX}.*.>")],
            ..Default::default()
        })
        .await
        .unwrap();
    (js, stream)
}

/// The stream's messages from its first, read without acknowledgements.
async fn read_from_start(stream: &jetstream::stream::Stream) -> jetstream::consumer::pull::Stream {
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    consumer.messages().await.unwrap()
}

/// What most drills below start from: their own nats-server (with JetStream and its MQTT
/// listener), that listener's URL, a temporary folder with a simulated history of `devices`
/// devices over `days` days, the demo model and an HTTP client. `None` when nats-server is not
/// installed (outside CI; under `CI=true` that fails instead).
type Drill = (
    NatsServer,
    String,
    tempfile::TempDir,
    SimHistory,
    forewarn::predict::Artifact,
    reqwest::Client,
);

fn drill(name: &str, devices: usize, days: u64, seed: u64) -> Option<Drill> {
    let nats = NatsServer::start(name, PARTITIONS, PREFIX)?;
    forewarn::tls::install_crypto();
    let broker_url = format!("mqtt://127.0.0.1:{}", nats.mqtt_port);
    let tmp = tempfile::tempdir().unwrap();
    let hist = SimHistory::write(&tmp.path().join("history"), devices, days, seed);
    Some((
        nats,
        broker_url,
        tmp,
        hist,
        demo_model(),
        reqwest::Client::new(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_mapping_and_forewarn_put_every_device_in_the_same_partition() {
    let Some(nats) = NatsServer::start("cluster_nats mapping", PARTITIONS, PREFIX) else {
        return;
    };
    let (js, stream) = partitioned_stream(&nats, "MAPPING").await;
    let devices: Vec<String> = (0..200)
        .map(|i| format!("dev-{i}"))
        .chain(["ü-pump".to_string(), "x".to_string(), "A_b-9".to_string()])
        .collect();
    for d in &devices {
        js.publish(format!("devices.{d}.telemetry"), "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let mut messages = read_from_start(&stream).await;
    let mut seen = BTreeMap::new();
    while seen.len() < devices.len() {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("every published subject is in the stream")
            .unwrap()
            .unwrap();
        let tokens: Vec<&str> = m.message.subject.as_str().split('.').collect();
        assert_eq!(tokens.len(), 5, "{}", m.message.subject);
        seen.insert(tokens[3].to_string(), tokens[1].parse::<u32>().unwrap());
    }
    let mut used = BTreeSet::new();
    for d in &devices {
        let server = seen[d.as_str()];
        used.insert(server);
        assert_eq!(
            partition::of_device(d, PARTITIONS),
            server,
            "device {d}: forewarn and nats-server disagree on the partition"
        );
    }
    assert_eq!(used.len() as u32, PARTITIONS, "every partition used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_change_two_instances_both_make_is_claimed_by_one_of_them() {
    use forewarn::app::Fleetwide;
    use forewarn::cluster::Cluster;
    use forewarn::engine::{Change, ChangeKind};
    let Some(nats) = NatsServer::start("cluster_nats claims", PARTITIONS, PREFIX) else {
        return;
    };
    let connect = |name: &str| {
        let cfg = forewarn::cluster::Config {
            url: Some(nats.url()),
            instance: Some(name.into()),
            partitions: PARTITIONS,
            subject_prefix: PREFIX.into(),
            ..Default::default()
        };
        async move {
            Cluster::connect(&cfg, &prometheus::Registry::new())
                .await
                .unwrap()
        }
    };
    let a = connect("fw-a").await;
    let b = connect("fw-b").await;
    // Members in good standing (an instance claims nothing outside it), without a lease loop.
    a.heartbeat().await.unwrap();
    b.heartbeat().await.unwrap();
    assert_eq!(
        a.ticket_id_key(),
        b.ticket_id_key(),
        "one ticket-id secret for the fleet"
    );
    let ticket: Ticket = serde_json::from_value(serde_json::json!({
        "id": "T-00112233aabbccdd", "device_id": "d1", "customer_id": null,
        "failure_mode": "comp2", "status": "open", "priority": "high", "probability": 0.8,
        "predicted_failure_at": null, "opened_at": "2015-01-03T06:00:00Z",
        "updated_at": "2015-01-03T06:00:00Z", "model": {"name": "m", "version": "1"},
        "evidence": [], "history": [], "opened_ms": 1_420_264_800_000i64
    }))
    .unwrap();
    let opened = Change {
        kind: ChangeKind::Opened,
        previous_priority: None,
        ticket: ticket.clone(),
    };
    let mut updated = opened.clone();
    updated.kind = ChangeKind::Updated;
    updated.ticket.updated_at = "2015-01-03T09:00:00Z".into();
    // Claims block (they are made on the processor thread): off the async workers.
    tokio::task::spawn_blocking(move || {
        assert!(a.claim(&opened).unwrap(), "the first to open it sends it");
        assert!(
            !b.claim(&opened).unwrap(),
            "the other instance stores it and sends nothing"
        );
        assert!(
            a.claim(&opened).unwrap(),
            "the opener again (a redelivery after a crash) still holds it"
        );
        assert!(b.claim(&updated).unwrap(), "b makes the update first");
        assert!(!a.claim(&updated).unwrap(), "and a sends it no more");
        let mut other = opened.clone();
        other.ticket.id = "T-99112233aabbccdd".into();
        assert!(b.claim(&other).unwrap(), "another ticket is another key");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_retention_reaches_the_stream_and_the_claims_bucket() {
    use forewarn::cluster::Cluster;
    let Some(nats) = NatsServer::start("cluster_nats retention", PARTITIONS, PREFIX) else {
        return;
    };
    let day = Duration::from_secs(24 * 3600);
    let connect = |stream_days: u64, claims_days: u64, bytes: Option<u64>| {
        let cfg = forewarn::cluster::Config {
            url: Some(nats.url()),
            instance: Some("fw-ret".into()),
            partitions: PARTITIONS,
            subject_prefix: PREFIX.into(),
            stream_max_age: format!("{stream_days}d").parse().unwrap(),
            claims_max_age: format!("{claims_days}d").parse().unwrap(),
            stream_max_bytes: bytes,
            ..Default::default()
        };
        cfg.validate().unwrap();
        async move {
            Cluster::connect(&cfg, &prometheus::Registry::new())
                .await
                .unwrap()
        }
    };
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    let limits = |name: &'static str| {
        let js = js.clone();
        async move {
            let mut s = js.get_stream(name).await.unwrap();
            let c = s.info().await.unwrap().config.clone();
            (c.max_age, c.max_bytes)
        }
    };

    // Created with the settings.
    drop(connect(3, 4, Some(1 << 30)).await);
    assert_eq!(limits("FOREWARN").await, (day * 3, 1 << 30), "the stream");
    assert_eq!(limits("KV_forewarn-claims").await.0, day * 4, "the claims");
    assert_eq!(
        limits("KV_forewarn-tickets").await.0,
        Duration::ZERO,
        "the shared ticket-id secret never expires"
    );
    // Changed settings reach the existing stream and bucket at the next start.
    drop(connect(5, 6, None).await);
    assert_eq!(
        limits("FOREWARN").await,
        (day * 5, -1),
        "the stream, updated"
    );
    assert_eq!(
        limits("KV_forewarn-claims").await.0,
        day * 6,
        "the claims, updated"
    );

    // A claims age below the stream's is a configuration error naming the key.
    let bad = forewarn::cluster::Config {
        claims_max_age: "1d".parse().unwrap(),
        ..Default::default()
    };
    assert_eq!(bad.validate().unwrap_err().0, "cluster.claims_max_age");
}

#[test]
fn serve_cluster_flag_switches_cluster_mode_on_and_a_bad_url_is_a_usage_error() {
    let serve = |url: &str| {
        Command::new(env!("CARGO_BIN_EXE_forewarn"))
            .args(["serve", "--print-config", "--cluster", url])
            .output()
            .unwrap()
    };
    let out = serve("nats://10.0.0.7:4222");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: toml::Value = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(v["cluster"]["url"].as_str(), Some("nats://10.0.0.7:4222"));
    assert_eq!(v["cluster"]["partitions"].as_integer(), Some(16));
    let out = serve("http://10.0.0.7:4222");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cluster.url"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_device_publishing_through_nats_lands_in_its_partition() {
    let Some(nats) = NatsServer::start("cluster_nats mqtt", PARTITIONS, PREFIX) else {
        return;
    };
    let (_, stream) = partitioned_stream(&nats, "MQTTIN").await;
    let mut opts = rumqttc::MqttOptions::new("dev-7", "127.0.0.1", nats.mqtt_port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (mqtt, mut events) = rumqttc::AsyncClient::new(opts, 10);
    let payload = r#"{"ts":"2015-01-01T06:00:00Z","seq":1,"metrics":{"volt":176.2}}"#;
    mqtt.publish(
        "devices/dev-7/telemetry",
        rumqttc::QoS::AtLeastOnce,
        false,
        payload,
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => break,
                Ok(_) => {}
                Err(e) => panic!("MQTT through nats-server: {e}"),
            }
        }
    })
    .await
    .expect("nats-server acknowledged the QoS 1 publish");
    let mut messages = read_from_start(&stream).await;
    let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
        .await
        .expect("the MQTT publish reached the stream")
        .unwrap()
        .unwrap();
    let p = partition::of_device("dev-7", PARTITIONS);
    assert_eq!(
        m.message.subject.as_str(),
        format!("{PREFIX}.{p}.devices.dev-7.telemetry")
    );
    assert_eq!(
        partition::topic(PREFIX, m.message.subject.as_str()).as_deref(),
        Some("devices/dev-7/telemetry"),
        "forewarn reads it as the topic the device used"
    );
    assert_eq!(&m.message.payload[..], payload.as_bytes());
}

/// A `forewarn serve --config …` in cluster mode (lease and ack wait 3 s, a checkpoint every
/// [`CHECKPOINT_EVERY`] messages of a partition), its own data
/// directory under `root` and API port; with the single-machine configuration it was made from
/// (for the backtest).
fn start_instance(
    nats: &NatsServer,
    broker_url: &str,
    root: &std::path::Path,
    name: &str,
    model: &forewarn::predict::Artifact,
    hist: &SimHistory,
) -> (Member, forewarn::config::Config) {
    start_instance_with(nats, broker_url, root, name, model, hist, |_| {})
}

/// The board's technician every drill instance knows.
const TECH: &str = "tech-1";
const TECH_NAME: &str = "Drill Tech";

/// [`start_instance`], its configuration changed by `tweak` before it is written (a root
/// used before keeps its data directory: the same instance started again).
fn start_instance_with(
    nats: &NatsServer,
    broker_url: &str,
    root: &std::path::Path,
    name: &str,
    model: &forewarn::predict::Artifact,
    hist: &SimHistory,
    tweak: impl FnOnce(&mut forewarn::config::Config),
) -> (Member, forewarn::config::Config) {
    let setup = DaemonSetup {
        broker_url: broker_url.to_string(),
        topic_prefix: "devices".into(),
        client_id: format!("{name}-mqtt"),
        root: root.join(name),
        replay_chunk: None,
    };
    let mut cfg = daemon_config(&setup, model, hist);
    let plain = cfg.clone();
    // Often, so that a take-over resumes from a checkpoint well inside the history.
    cfg.cluster.checkpoint_every = CHECKPOINT_EVERY;
    cfg.board.technicians = vec![forewarn::board::Technician {
        id: TECH.into(),
        name: TECH_NAME.into(),
        skills: Vec::new(),
        region: String::new(),
        hours: String::new(),
    }];
    tweak(&mut cfg);
    let instance = spawn_member(nats, &setup.root, name, cfg);
    (instance, plain)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_the_cluster_and_says_when_nats_is_gone() {
    let Some(mut nats) = NatsServer::start("cluster_nats readyz", PARTITIONS, PREFIX) else {
        return;
    };
    forewarn::tls::install_crypto();
    let broker_url = format!("mqtt://127.0.0.1:{}", nats.mqtt_port);
    let tmp = tempfile::tempdir().unwrap();
    let hist = SimHistory::write(&tmp.path().join("history"), 4, 3, 5);
    let model = demo_model();
    let (instance, _) = start_instance(&nats, &broker_url, tmp.path(), "fw-r", &model, &hist);
    let http = reqwest::Client::new();

    // Alone, it owns every partition: ready once it has joined and set each of them up.
    let started = Instant::now();
    let body = loop {
        if let Some((200, body)) = readyz(&http, &instance.api).await {
            break body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never ready: {:?}\n{}",
            readyz(&http, &instance.api).await,
            instance.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let c = &body["cluster"];
    assert_eq!(body["ready"], true, "{body}");
    assert_eq!(c["ready"], true, "{body}");
    assert_eq!(c["instance"], "fw-r", "{body}");
    assert_eq!(c["nats"], true, "{body}");
    assert_eq!(c["joined"], true, "{body}");
    assert_eq!(c["lease_view"], true, "{body}");
    assert_eq!(c["replaying"], serde_json::json!([]), "{body}");
    let own = ownership(&http, &[&instance], TOKEN, false)
        .await
        .expect("cluster status");
    assert_eq!(
        own["fw-r"].len(),
        PARTITIONS as usize,
        "alone, it owns all: {own:?}"
    );

    // The NATS server goes away: not ready, and the body says why.
    nats.stop();
    let stopped = Instant::now();
    let body = loop {
        if let Some((503, body)) = readyz(&http, &instance.api).await {
            if body["cluster"]["nats"] == false {
                break body;
            }
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(30),
            "still ready without NATS: {:?}",
            readyz(&http, &instance.api).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["ready"], false, "{body}");
    let reason = body["cluster"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("NATS"), "the reason names NATS: {body}");
}

/// The value of a hidden `csrf` field in a board page.
fn csrf_of(html: &str) -> String {
    let Some((_, rest)) = html.split_once("name=\"csrf\" value=\"") else {
        panic!("a csrf field in {html}");
    };
    rest.chars().take_while(|c| *c != '"').collect()
}

/// The `name=value` pair of the cookie `name` the response sets.
fn cookie_pair(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .and_then(|v| v.split(';').next())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no {name} cookie"))
}

/// A client (redirects not followed) signed in to the board of one instance with [`TOKEN`],
/// and the session cookie (`name=value`).
async fn board_session(api: &str) -> (reqwest::Client, String) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = format!("http://{api}");
    let r = http
        .get(format!("{base}/board/login"))
        .send()
        .await
        .unwrap();
    let login = cookie_pair(&r, "fw_board_login");
    let csrf = csrf_of(&r.text().await.unwrap());
    let r = http
        .post(format!("{base}/board/login"))
        .header("cookie", &login)
        .form(&[("csrf", csrf.as_str()), ("token", TOKEN), ("name", "drill")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "signed in to the board of {api}");
    (http, cookie_pair(&r, "fw_board"))
}

/// A board page of one instance (`path` from `/board`), signed in with [`TOKEN`].
async fn board_page(http: &reqwest::Client, session: &str, api: &str, path: &str) -> (u16, String) {
    let r = http
        .get(format!("http://{api}{path}"))
        .header("cookie", session)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The board's queue page of one instance, signed in with [`TOKEN`].
async fn board_queue(api: &str) -> (u16, String) {
    let (http, session) = board_session(api).await;
    board_page(&http, &session, api, "/board").await
}

/// Whether both lists hold the same tickets in the same state (not comparing ids).
fn same_tickets(a: &[Ticket], b: &[Ticket]) -> bool {
    let key = |t: &Ticket| {
        format!(
            "{} {} {} {:?} {}",
            t.device_id, t.failure_mode, t.opened_at, t.status, t.updated_at
        )
    };
    let a: BTreeSet<String> = a.iter().map(key).collect();
    let b: BTreeSet<String> = b.iter().map(key).collect();
    a == b
}

/// `GET /api/v1/tickets` of one instance (in cluster mode: the fleet's). Read again for up to
/// 10 s while it answers 503: just after a take-over the instance asked may not have seen the
/// new owner yet (its next lease round), and a partition it knows no live owner of makes the
/// read refuse rather than leave that partition's tickets out.
async fn fleet_list(http: &reqwest::Client, api: &str, more: &str) -> Vec<Ticket> {
    let url = format!("http://{api}/api/v1/tickets?limit=10000{more}");
    let started = Instant::now();
    loop {
        let r = http.get(&url).bearer_auth(TOKEN).send().await.unwrap();
        let status = r.status();
        if status == reqwest::StatusCode::SERVICE_UNAVAILABLE
            && started.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let body = r.text().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "tickets not readable ({status}): {body}"
        );
        return serde_json::from_str(&body).unwrap();
    }
}

fn assert_no_duplicates(list: &[Ticket], from: &str) {
    let ids: BTreeSet<&str> = list.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids.len(), list.len(), "a ticket listed twice by {from}");
    let keys: BTreeSet<(&str, &str, &str)> = list
        .iter()
        .map(|t| {
            (
                t.device_id.as_str(),
                t.failure_mode.as_str(),
                t.opened_at.as_str(),
            )
        })
        .collect();
    assert_eq!(
        keys.len(),
        list.len(),
        "a ticket opened twice, listed by {from}"
    );
}

/// Waits (at most 60 s) until the `live` instances own every partition between them, each its
/// rendezvous share; fails with `what` and the instances' log tails. The assignment.
async fn await_shares(
    http: &reqwest::Client,
    live: &[&Member],
    what: &str,
) -> BTreeMap<String, Vec<u32>> {
    let started = Instant::now();
    loop {
        if let Some(own) = ownership(http, live, TOKEN, true).await {
            if covers_all(&own) && in_rendezvous_shares(&own) {
                return own;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what}:\n{}",
            tails(live)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Three instances `fw-a`, `fw-b`, `fw-c` started and settled (each holding its rendezvous
/// share, every partition owned and set up), with the backtest's tickets on the same history
/// (at least 5).
async fn start_three(
    nats: &NatsServer,
    broker_url: &str,
    root: &std::path::Path,
    model: &forewarn::predict::Artifact,
    hist: &SimHistory,
    http: &reqwest::Client,
) -> (Vec<Member>, Vec<Ticket>) {
    start_three_with(nats, broker_url, |_, _| {}, root, model, hist, http).await
}

/// [`start_three`], each instance's configuration changed by `tweak` (given its name)
/// before it is written.
async fn start_three_with(
    nats: &NatsServer,
    broker_url: &str,
    tweak: impl Fn(&str, &mut forewarn::config::Config),
    root: &std::path::Path,
    model: &forewarn::predict::Artifact,
    hist: &SimHistory,
    http: &reqwest::Client,
) -> (Vec<Member>, Vec<Ticket>) {
    let mut instances = Vec::new();
    let mut backtest = Vec::new();
    for name in ["fw-a", "fw-b", "fw-c"] {
        let (instance, cfg) = start_instance_with(nats, broker_url, root, name, model, hist, |c| {
            tweak(name, c)
        });
        if backtest.is_empty() {
            backtest = evaluate_tickets(&cfg, model.clone(), hist);
        }
        instances.push(instance);
    }
    assert!(
        backtest.len() >= 5,
        "the backtest must open tickets: {}",
        backtest.len()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let live: Vec<&Member> = instances.iter().collect();
        if let Some(own) = ownership(http, &live, TOKEN, true).await {
            if in_rendezvous_shares(&own) && covers_all(&own) {
                eprintln!("assignment with three instances: {own:?}");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "three instances never shared the partitions:\n{}",
            tails(&live)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (instances, backtest)
}

/// The opening claims in the fleet-wide bucket and the backtest's tickets, each as
/// `device mode opened_at`, sorted.
async fn claims_and_expected(
    js: &jetstream::Context,
    backtest: &[Ticket],
) -> (Vec<String>, Vec<String>) {
    // A set: a listing yields a key again when it is written meanwhile (an instance
    // rejoining after the server's restart writes its unsent claims again).
    let claims = js.get_key_value("forewarn-claims").await.unwrap();
    let mut claimed = Vec::new();
    for k in claim_keys(js).await {
        if k.starts_with("t.") {
            let v = claims.get(&k).await.unwrap().unwrap();
            let r: serde_json::Value = serde_json::from_slice(&v).unwrap();
            claimed.push(format!(
                "{} {} {}",
                r["device_id"].as_str().unwrap(),
                r["failure_mode"].as_str().unwrap(),
                r["opened_at"].as_str().unwrap()
            ));
        }
    }
    claimed.sort();
    let mut expected: Vec<String> = backtest
        .iter()
        .map(|t| format!("{} {} {}", t.device_id, t.failure_mode, t.opened_at))
        .collect();
    expected.sort();
    (claimed, expected)
}

/// Once the devices' held readings are released (up to 20 s): every live instance lists the
/// backtest's tickets, each once, and the claims bucket holds one opening claim per ticket.
async fn assert_fleet_is_the_backtests(
    http: &reqwest::Client,
    js: &jetstream::Context,
    live: &[&Member],
    backtest: &[Ticket],
) {
    let settle = Instant::now();
    let tickets = loop {
        let list = fleet_list(http, &live[0].api, "").await;
        if same_tickets(backtest, &list) || settle.elapsed() > Duration::from_secs(20) {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_same_tickets(backtest, &tickets);
    for i in live {
        let list = fleet_list(http, &i.api, "").await;
        assert_no_duplicates(&list, &i.name);
        assert_same_tickets(backtest, &list);
    }
    let (claimed, expected) = claims_and_expected(js, backtest).await;
    if claimed != expected {
        // Which of the listed tickets has no opening claim when read by key (not a listing).
        let claims = js.get_key_value("forewarn-claims").await.unwrap();
        let mut unclaimed = Vec::new();
        for t in &tickets {
            if !matches!(claims.get(format!("t.{}", t.id)).await, Ok(Some(_))) {
                unclaimed.push(format!(
                    "{} {} {} {}",
                    t.id, t.device_id, t.failure_mode, t.opened_at
                ));
            }
        }
        eprintln!("tickets without an opening claim, read by key: {unclaimed:?}");
    }
    assert_eq!(claimed, expected, "one fleet-wide claim per ticket");
}

/// Waits (up to 30 s) until every ticket change claimed in the fleet-wide bucket (`t.…`,
/// `c.…`) has its sent mark (`s.<claim>`); answers how many there are, and the claims an
/// instance took over from another (claim key, the instance it was taken from).
async fn all_claims_marked_sent(
    js: &jetstream::Context,
    live: &[&Member],
) -> (usize, Vec<(String, String)>) {
    let claims = js.get_key_value("forewarn-claims").await.unwrap();
    let started = Instant::now();
    loop {
        let all = claim_keys(js).await;
        let changes: Vec<&String> = all
            .iter()
            .filter(|k| k.starts_with("t.") || k.starts_with("c."))
            .collect();
        let missing: Vec<&&String> = changes
            .iter()
            .filter(|k| !all.contains(&format!("s.{k}")))
            .collect();
        if missing.is_empty() {
            let mut taken = Vec::new();
            for k in &changes {
                let v = claims.get(k.as_str()).await.unwrap().unwrap();
                let r: serde_json::Value = serde_json::from_slice(&v).unwrap();
                if let Some(from) = r["taken_from"].as_str() {
                    taken.push((k.to_string(), from.to_string()));
                }
            }
            return (changes.len(), taken);
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "claimed ticket changes never marked sent: {missing:?}\n{}",
            tails(live)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_one_killed_a_fourth_joining_open_exactly_the_backtests_tickets_and_any_answers_for_the_fleet(
) {
    let Some(nats) = NatsServer::start("cluster_nats drill", PARTITIONS, PREFIX) else {
        return;
    };
    forewarn::tls::install_crypto();
    // The MQTT side only carries the dispatcher's ticket publishes in cluster mode: to NATS's
    // own MQTT listener, so the whole deployment is forewarn and one nats-server.
    let broker_url = format!("mqtt://127.0.0.1:{}", nats.mqtt_port);
    let tmp = tempfile::tempdir().unwrap();
    let hist = SimHistory::write(&tmp.path().join("history"), 24, 45, 11);
    let model = demo_model();
    let lease = Duration::from_secs(3);

    let start = |name: &str| start_instance(&nats, &broker_url, tmp.path(), name, &model, &hist);
    let http = reqwest::Client::new();
    // The victim-to-be (the instance rendezvous hashing gives the most partitions among the
    // three) cannot reach its MQTT broker: the ticket changes it claims stay unsent in its
    // outbox until it is killed, and their partitions' next owners must send them.
    let three: Vec<String> = ["fw-a", "fw-b", "fw-c"].map(String::from).to_vec();
    let planned: BTreeMap<String, Vec<u32>> = three
        .iter()
        .map(|n| (n.clone(), partition::share(n, &three, PARTITIONS)))
        .collect();
    let planned_victim = planned
        .iter()
        .max_by_key(|(_, o)| o.len())
        .map(|(n, _)| n.clone())
        .unwrap();
    let dead_broker = format!("mqtt://127.0.0.1:{}", free_port());
    let broker_of = |name: &str, cfg: &mut forewarn::config::Config| {
        if name == planned_victim {
            cfg.broker.url = dead_broker.clone();
        }
    };
    // Every ticket publish that reaches NATS's MQTT listener (the dispatcher's topic
    // `devices/tickets/<device>/<mode>`), by ticket id.
    let dispatched: std::sync::Arc<std::sync::Mutex<BTreeSet<String>>> = Default::default();
    {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let mut sub = client.subscribe("devices.tickets.>").await.unwrap();
        let seen = dispatched.clone();
        tokio::spawn(async move {
            let _client = client;
            while let Some(m) = sub.next().await {
                if let Ok(t) = serde_json::from_slice::<serde_json::Value>(&m.payload) {
                    if let Some(id) = t["id"].as_str() {
                        seen.lock().unwrap().insert(id.to_string());
                    }
                }
            }
        });
    }
    let (mut instances, backtest) = start_three_with(
        &nats,
        &broker_url,
        broker_of,
        tmp.path(),
        &model,
        &hist,
        &http,
    )
    .await;
    let modes: BTreeSet<&str> = backtest.iter().map(|t| t.failure_mode.as_str()).collect();
    assert!(
        modes.len() >= 2,
        "the backtest must open tickets of several modes: {modes:?}"
    );

    // The history as devices send it: `devices.ID.telemetry|events`, acknowledged by JetStream.
    let messages: Vec<forewarn::replay::Message> = hist.replay().messages("devices").collect();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    let publish = |batch: &[forewarn::replay::Message]| {
        let js = js.clone();
        let batch: Vec<(String, Vec<u8>)> = batch
            .iter()
            .map(|m| (m.topic.replace('/', "."), m.payload.clone()))
            .collect();
        async move {
            for chunk in batch.chunks(500) {
                let mut acks = Vec::new();
                for (subject, payload) in chunk {
                    acks.push(
                        js.publish(subject.clone(), payload.clone().into())
                            .await
                            .unwrap(),
                    );
                }
                for a in acks {
                    a.await.expect("stored by the stream");
                }
            }
        }
    };
    let half = messages.len() / 2;
    publish(&messages[..half]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The victim: whoever holds the most partitions.
    let own = ownership(&http, &instances.iter().collect::<Vec<_>>(), TOKEN, true)
        .await
        .expect("ownership readable");
    let victim = own
        .iter()
        .max_by_key(|(_, o)| o.len())
        .map(|(n, _)| n.clone())
        .unwrap();
    assert_eq!(
        victim, planned_victim,
        "the instance without a broker is the victim"
    );
    let victims_partitions = own[&victim].clone();
    let killed_at = Instant::now();
    instances
        .iter_mut()
        .find(|i| i.name == victim)
        .unwrap()
        .kill();
    let three_quarters = messages.len() * 3 / 4;
    publish(&messages[half..three_quarters]).await;

    // Take-over: the survivors own every partition and have finished replaying.
    let survivors: Vec<&Member> = instances.iter().filter(|i| i.name != victim).collect();
    let mut acquired = None;
    let takeover = loop {
        if acquired.is_none() {
            if let Some(own) = ownership(&http, &survivors, TOKEN, false).await {
                if covers_all(&own) {
                    acquired = Some(killed_at.elapsed());
                }
            }
        }
        if let Some(own) = ownership(&http, &survivors, TOKEN, true).await {
            if covers_all(&own) {
                break killed_at.elapsed();
            }
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "the survivors never took over {victim}'s partitions {victims_partitions:?}:\n{}",
            tails(&survivors)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let acquired = acquired.unwrap_or(takeover);
    eprintln!(
        "killed {victim} (partitions {victims_partitions:?}); the survivors held every lease \
         {:.2} s later and had replayed the taken-over partitions {:.2} s later (lease {lease:?})",
        acquired.as_secs_f64(),
        takeover.as_secs_f64()
    );
    // Lease expiry (at most one lease after the victim's last renewal) + the survivors' next
    // round (a third of it) + the round's own requests and this poll: 4 s and some; two leases
    // leave room for a loaded machine.
    assert!(acquired <= lease * 2, "the leases moved after {acquired:?}");

    // The survivors resumed the victim's partitions from their checkpoints and replayed only
    // what came after, not the partitions' history from the start. (Ready: every partition's
    // live consumer is up, so each resumed and replayed first.)
    for i in &survivors {
        loop {
            if let Some((200, _)) = readyz(&http, &i.api).await {
                break;
            }
            assert!(
                killed_at.elapsed() < Duration::from_secs(60),
                "{} not ready after the take-over:\n{}",
                i.name,
                tails(&survivors)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let resumed = metric_sum(
        &http,
        &survivors,
        "forewarn_cluster_checkpoints_total{event=\"resumed\"}",
    )
    .await;
    let replayed_at_takeover = metric_sum(
        &http,
        &survivors,
        "forewarn_cluster_replayed_messages_total",
    )
    .await;
    let victims: BTreeSet<u32> = victims_partitions.iter().copied().collect();
    let full_replay = messages[..three_quarters]
        .iter()
        .filter(|m| {
            let device = m.topic.split('/').nth(1).unwrap_or_default();
            victims.contains(&partition::of_device(device, PARTITIONS))
        })
        .count();
    eprintln!(
        "take-over: {resumed} partition(s) resumed from a checkpoint, {replayed_at_takeover} \
         message(s) replayed after them (the victim's partitions held {full_replay} messages: \
         a replay from the start would have read up to that many)"
    );
    assert!(
        resumed >= 1.0,
        "no partition of {victim} resumed from a checkpoint:\n{}",
        tails(&survivors)
    );
    assert!(
        replayed_at_takeover < full_replay as f64 / 2.0,
        "{replayed_at_takeover} messages replayed, from the start rather than the checkpoints \
         ({full_replay} in the victim's partitions)"
    );

    // A fourth instance joins mid-stream: started, then the last quarter of the history is
    // published while it joins; it takes its rendezvous share from the survivors (handed on,
    // not expired) and replays those partitions.
    let joined_at = Instant::now();
    let (fourth, _) = start("fw-d");
    instances.push(fourth);
    publish(&messages[three_quarters..]).await;
    let live: Vec<&Member> = instances.iter().filter(|i| i.name != victim).collect();
    let survivors = live;
    loop {
        if let Some(own) = ownership(&http, &survivors, TOKEN, true).await {
            if covers_all(&own) && in_rendezvous_shares(&own) {
                assert!(!own["fw-d"].is_empty(), "fw-d got no partition: {own:?}");
                eprintln!(
                    "fw-d joined: assignment {own:?} settled {:.2} s after its start",
                    joined_at.elapsed().as_secs_f64()
                );
                break;
            }
        }
        assert!(
            joined_at.elapsed() < Duration::from_secs(60),
            "fw-d never got its share:\n{}",
            tails(&survivors)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every partition drained: nothing pending nor unacknowledged on any durable consumer.
    let stream = js.get_stream("FOREWARN").await.unwrap();
    wait_drained(&stream, &survivors).await;

    // The fleet's tickets: each survivor's tickets of the devices in the partitions it owns.
    let fleet_tickets =
        |own: BTreeMap<String, Vec<u32>>| {
            let http = http.clone();
            let survivors: Vec<(String, String)> = survivors
                .iter()
                .map(|i| (i.name.clone(), i.api.clone()))
                .collect();
            async move {
                let mut all: Vec<Ticket> = Vec::new();
                for (name, api) in survivors {
                    let owned: BTreeSet<u32> = own[&name].iter().copied().collect();
                    let list = fleet_list(&http, &api, "").await;
                    all.extend(list.into_iter().filter(|t| {
                        owned.contains(&partition::of_device(&t.device_id, PARTITIONS))
                    }));
                }
                all
            }
        };
    // The devices' last readings are held for event-time order until the idle timer (1 s).
    let settle = Instant::now();
    let live = loop {
        let own = ownership(&http, &survivors, TOKEN, true)
            .await
            .expect("ownership readable");
        let live = fleet_tickets(own).await;
        if same_tickets(&backtest, &live) || settle.elapsed() > Duration::from_secs(20) {
            break live;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_same_tickets(&backtest, &live);

    // The API is the fleet's: every instance lists the whole fleet's tickets, each once, and
    // finds any of them by id.
    for i in &survivors {
        let fleet = fleet_list(&http, &i.api, "").await;
        assert_no_duplicates(&fleet, &i.name);
        assert_same_tickets(&backtest, &fleet);
        for t in backtest.iter().take(3) {
            let id = &live
                .iter()
                .find(|l| l.device_id == t.device_id && l.opened_at == t.opened_at)
                .expect("in the fleet")
                .id;
            let one = get_json(
                &http,
                &format!("http://{}/api/v1/tickets/{id}", i.api),
                TOKEN,
            )
            .await
            .expect("any instance finds any ticket");
            assert_eq!(one["id"].as_str(), Some(id.as_str()));
        }
    }

    // One claim per ticket in the fleet-wide bucket, and no claim the backtest does not have.
    let (claimed, expected) = claims_and_expected(&js, &backtest).await;
    assert_eq!(claimed, expected, "fleet-wide ticket claims");

    // No message lost: every claimed ticket change was sent (its claim has its sent mark),
    // those the victim claimed and could not send included: its partitions' new owners took
    // the claims over and sent them, and the tickets reached NATS's MQTT listener.
    let (changes, taken) = all_claims_marked_sent(&js, &survivors).await;
    let from_victim: Vec<&String> = taken
        .iter()
        .filter(|(_, from)| *from == victim)
        .map(|(k, _)| k)
        .collect();
    assert!(
        !from_victim.is_empty(),
        "{victim} claimed ticket changes it could not send (no broker); none was taken over: \
         {taken:?}"
    );
    let requeued = metric_sum(
        &http,
        &survivors,
        "forewarn_cluster_outbox_claims_total{event=\"requeued\"}",
    )
    .await;
    assert!(requeued >= from_victim.len() as f64, "{requeued} requeued");
    // Coalesced per ticket: each taken-over ticket's dispatch row written again once (more
    // only if its changes became ready in different rounds), not once per change.
    let rewritten = metric_sum(
        &http,
        &survivors,
        "forewarn_cluster_outbox_claims_total{event=\"rewritten\"}",
    )
    .await;
    let victims_tickets: BTreeSet<&str> = from_victim
        .iter()
        .filter_map(|k| k.split('.').nth(1))
        .collect();
    eprintln!(
        "{requeued} changes of {} tickets taken over from {victim}: written again as \
         {rewritten} dispatch rows (publishes)",
        victims_tickets.len()
    );
    assert!(
        rewritten >= victims_tickets.len() as f64 && rewritten <= requeued,
        "{rewritten} rows for {requeued} changes of {} tickets",
        victims_tickets.len()
    );
    let sent_at = Instant::now();
    loop {
        let missing: Vec<&String> = {
            let seen = dispatched.lock().unwrap();
            from_victim
                .iter()
                .copied()
                .filter(|k| {
                    let id = k.split('.').nth(1).unwrap_or_default();
                    !seen.contains(id)
                })
                .collect()
        };
        if missing.is_empty() {
            break;
        }
        assert!(
            sent_at.elapsed() < Duration::from_secs(20),
            "the tickets of {missing:?} ({victim}'s unsent changes) never reached the broker"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "{changes} claimed ticket changes, each marked sent; {} of them claimed by {victim} \
         (no broker) and sent by the partitions' new owners",
        from_victim.len()
    );

    // The take-overs started warm: from checkpoints, and a replay of what came after them.
    let replayed = metric_sum(
        &http,
        &survivors,
        "forewarn_cluster_replayed_messages_total",
    )
    .await;
    let resumed = metric_sum(
        &http,
        &survivors,
        "forewarn_cluster_checkpoints_total{event=\"resumed\"}",
    )
    .await;
    assert!(
        resumed >= 1.0,
        "the survivors resumed the partitions they took over from checkpoints"
    );
    eprintln!(
        "{} messages, {} tickets equal to the backtest, {} claims, {replayed} messages replayed",
        messages.len(),
        live.len(),
        claimed.len()
    );
    // Of the two first-generation survivors, one leaves; the other and fw-d stay.
    let names: Vec<String> = survivors
        .iter()
        .filter(|i| i.name != "fw-d")
        .map(|i| i.name.clone())
        .collect();

    // A graceful leave: SIGTERM hands the leaver's partitions on when it stops, without waiting
    // for its leases to expire; the last instance then holds the whole fleet's tickets.
    let (leaver, stayer) = (&names[0], &names[1]);
    let mut child = instances
        .iter_mut()
        .find(|i| &i.name == leaver)
        .and_then(|i| i.child.take())
        .unwrap();
    let left_at = Instant::now();
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            left_at.elapsed() < Duration::from_secs(30),
            "{leaver} did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let exited = left_at.elapsed();
    assert!(status.success(), "SIGTERM is a clean shutdown: {status:?}");
    let remaining: Vec<&Member> = instances
        .iter()
        .filter(|i| i.name == *stayer || i.name == "fw-d")
        .collect();
    let last = remaining[0];
    let handed = loop {
        if let Some(own) = ownership(&http, &remaining, TOKEN, false).await {
            if covers_all(&own) {
                break left_at.elapsed();
            }
        }
        assert!(
            left_at.elapsed() < Duration::from_secs(30),
            "{stayer} and fw-d never took over {leaver}'s partitions:\n{}",
            last.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "SIGTERM to {leaver}: exited after {:.2} s; {stayer} and fw-d held every lease {:.2} s \
         after the signal",
        exited.as_secs_f64(),
        handed.as_secs_f64()
    );
    // Released, not expired: the next round of the one left (a third of a lease) after the exit.
    assert!(
        handed < exited + lease * 2 / 3,
        "hand-off took {handed:?} after an exit at {exited:?}"
    );
    let settle = Instant::now();
    let last_tickets = loop {
        let tickets = match ownership(&http, &remaining, TOKEN, true).await {
            Some(own) if covers_all(&own) => fleet_list(&http, &last.api, "").await,
            _ => Vec::new(),
        };
        if same_tickets(&backtest, &tickets) || settle.elapsed() > Duration::from_secs(20) {
            break tickets;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_same_tickets(&backtest, &last_tickets);
    assert_no_duplicates(&last_tickets, &last.name);

    // A transition posted to an instance that does not own the ticket's device lands on the
    // owner, and every instance then shows it.
    let own = ownership(&http, &remaining, TOKEN, true)
        .await
        .expect("ownership readable");
    let owner_of = |device: &str| {
        let p = partition::of_device(device, PARTITIONS);
        own.iter()
            .find(|(_, o)| o.contains(&p))
            .map(|(n, _)| n.clone())
            .expect("every partition owned")
    };
    let target = last_tickets
        .iter()
        .find(|t| t.status == forewarn::domain::Status::Open)
        .expect("an open ticket");
    let owner_name = owner_of(&target.device_id);
    let owner = remaining.iter().find(|i| i.name == owner_name).unwrap();
    let other = remaining.iter().find(|i| i.name != owner_name).unwrap();
    let resp = http
        .post(format!(
            "http://{}/api/v1/tickets/{}/transitions",
            other.api, target.id
        ))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"to": "acknowledged", "note": "seen from the other instance"}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert!(
        status.is_success(),
        "transition through {} (not the owner {owner_name}): {status} {body}",
        other.name
    );
    let local = |api: &str| {
        let http = http.clone();
        let url = format!("http://{api}/api/v1/tickets/{}", target.id);
        async move {
            let r = http
                .get(url)
                .bearer_auth(TOKEN)
                .header("x-forewarn-scope", "instance")
                .send()
                .await
                .unwrap();
            match r.status().is_success() {
                true => Some(r.json::<Ticket>().await.unwrap().status),
                false => None,
            }
        }
    };
    assert_eq!(
        local(&owner.api).await,
        Some(forewarn::domain::Status::Acknowledged),
        "made on the owner {owner_name}"
    );
    assert_ne!(
        local(&other.api).await,
        Some(forewarn::domain::Status::Acknowledged),
        "not made on {}, which only forwarded it",
        other.name
    );
    for i in &remaining {
        // A read through a non-owner asks its peers; a peer slower than `cluster.peer_timeout`
        // (a loaded machine) makes it answer 503 for that moment, so the read may be retried.
        let url = format!("http://{}/api/v1/tickets/{}", i.api, target.id);
        let mut one = None;
        for _ in 0..20 {
            one = get_json(&http, &url, TOKEN).await;
            if one.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let one = one.expect("readable from every instance within 10 s");
        assert_eq!(one["status"], "acknowledged", "seen from {}", i.name);
        let acked = fleet_list(&http, &i.api, "&status=acknowledged").await;
        assert!(
            acked.iter().any(|t| t.id == target.id),
            "listed as acknowledged by {}",
            i.name
        );
        let open = fleet_list(&http, &i.api, "&status=open").await;
        assert!(
            !open.iter().any(|t| t.id == target.id),
            "a stale open copy is not listed by {}",
            i.name
        );
    }

    // The dispatch board works against any instance: its queue lists the fleet's live tickets,
    // including those of partitions the instance never owned.
    let fleet_live: Vec<Ticket> = fleet_list(&http, &last.api, "")
        .await
        .into_iter()
        .filter(|t| t.is_live())
        .collect();
    assert!(!fleet_live.is_empty(), "live tickets in the fleet");
    for i in &remaining {
        let (status, html) = board_queue(&i.api).await;
        assert_eq!(status, 200, "the board of {}: {html}", i.name);
        let missing: Vec<&str> = fleet_live
            .iter()
            .map(|t| t.id.as_str())
            .filter(|id| !html.contains(id))
            .collect();
        assert!(
            missing.is_empty(),
            "the board of {} misses the fleet's live tickets {missing:?}",
            i.name
        );
    }

    // All the way: a ticket owned by one instance is opened, with its device's page, and
    // acted on through the other instance's board; the owner makes the changes.
    let picked = fleet_live
        .iter()
        .find(|t| {
            t.status == forewarn::domain::Status::Open
                && t.id != target.id
                && owner_of(&t.device_id) == owner_name
        })
        .expect("another open ticket owned by the same instance");
    let (bhttp, session) = board_session(&other.api).await;
    let page = format!("/board/tickets/{}", picked.id);
    let (status, html) = board_page(&bhttp, &session, &other.api, &page).await;
    assert_eq!(
        status, 200,
        "ticket {} (owned by {owner_name}) on the board of {}: {html}",
        picked.id, other.name
    );
    assert!(
        html.contains(picked.device_id.as_str()),
        "the ticket page: {html}"
    );
    let device_page = format!("/board/devices/{}", picked.device_id);
    let (status, html) = board_page(&bhttp, &session, &other.api, &device_page).await;
    assert_eq!(status, 200, "device page on {}: {html}", other.name);
    assert!(
        html.contains(&picked.id),
        "the device page of {} on {} lists its ticket {}: {html}",
        picked.device_id,
        other.name,
        picked.id
    );
    let (_, html) = board_page(&bhttp, &session, &other.api, &page).await;
    let csrf = csrf_of(&html);
    // A free visit slot of the technician, as the owner books them.
    let slots = get_json(
        &http,
        &format!(
            "http://{}/api/v1/tickets/{}/slots?technician={TECH}",
            owner.api, picked.id
        ),
        TOKEN,
    )
    .await
    .expect("the owner's free slots");
    let slot = slots[0]["start_ms"]
        .as_i64()
        .expect("a free slot")
        .to_string();
    for (action, form, expected) in [
        (
            "acknowledge",
            vec![("csrf", csrf.as_str()), ("note", "seen on the other board")],
            forewarn::domain::Status::Acknowledged,
        ),
        (
            "assign",
            vec![("csrf", csrf.as_str()), ("technician", TECH)],
            forewarn::domain::Status::Acknowledged,
        ),
        (
            "schedule",
            vec![
                ("csrf", csrf.as_str()),
                ("technician", TECH),
                ("slot", slot.as_str()),
            ],
            forewarn::domain::Status::Scheduled,
        ),
        (
            "resolve",
            vec![
                ("csrf", csrf.as_str()),
                ("outcome", "replaced_part"),
                ("note", "bearing swapped"),
            ],
            forewarn::domain::Status::Resolved,
        ),
    ] {
        let r = bhttp
            .post(format!("http://{}{page}/{action}", other.api))
            .header("cookie", &session)
            .form(&form)
            .send()
            .await
            .unwrap();
        let location = r
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let status = r.status();
        assert!(
            status == 303 && location.contains("done="),
            "{action} through the board of {} (owner {owner_name}): {status} {location} {}",
            other.name,
            r.text().await.unwrap_or_default()
        );
        let local_of = |api: &str| {
            let http = http.clone();
            let url = format!("http://{api}/api/v1/tickets/{}", picked.id);
            async move {
                let r = http
                    .get(url)
                    .bearer_auth(TOKEN)
                    .header("x-forewarn-scope", "instance")
                    .send()
                    .await
                    .unwrap();
                match r.status().is_success() {
                    true => Some(r.json::<Ticket>().await.unwrap()),
                    false => None,
                }
            }
        };
        let made = local_of(&owner.api).await.expect("the owner has it");
        assert_eq!(
            made.status, expected,
            "{action} made on the owner {owner_name}"
        );
        if action == "resolve" {
            assert_eq!(
                made.outcome,
                Some(forewarn::domain::Outcome::ConfirmedFault),
                "the resolution's label"
            );
        }
        assert_ne!(
            local_of(&other.api).await.map(|t| t.status),
            Some(expected),
            "not made on {}, which only forwarded it",
            other.name
        );
        let (status, html) = board_page(&bhttp, &session, &other.api, &page).await;
        assert_eq!(status, 200, "{html}");
        assert!(
            html.contains(&format!("data-status=\"{}\"", expected.as_str())),
            "the board of {} shows the owner's {}: {html}",
            other.name,
            expected.as_str()
        );
    }
    // Made by the owner for the person signed in to the other board, and named so; the
    // owner's board records (assignment, visit) show on the other board's ticket page.
    let made: Ticket = {
        let r = http
            .get(format!("http://{}/api/v1/tickets/{}", owner.api, picked.id))
            .bearer_auth(TOKEN)
            .header("x-forewarn-scope", "instance")
            .send()
            .await
            .unwrap();
        r.json().await.unwrap()
    };
    let by_person = made
        .history
        .iter()
        .filter(|h| h.actor == "board:drill")
        .count();
    assert!(
        by_person >= 4 && !made.history.iter().any(|h| h.actor == "api"),
        "the owner's history names the board's person for each action: {:?}",
        made.history
    );
    let (_, html) = board_page(&bhttp, &session, &other.api, &page).await;
    assert!(
        html.contains(&format!("id=\"technician\">{TECH_NAME}<"))
            && !html.contains("id=\"visit\">none booked<"),
        "the board of {} shows the owner's assignment and visit: {html}",
        other.name
    );
    let picked_id = picked.id.clone();
    eprintln!(
        "ticket {} of {owner_name} opened, acknowledged, assigned, scheduled and resolved \
         through the board of {}",
        picked.id, other.name
    );

    // The dispatcher's ticket publishes went out through NATS's MQTT listener.
    let text = get_text(&http, format!("http://{}/metrics", last.api)).await;
    let delivered: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("forewarn_dispatch_deliveries_total{") && l.contains("result=\"ok\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(delivered > 0.0, "no ticket change dispatched:\n{text}");

    // An instance that stops answering (SIGSTOP: its membership key lives on until its lease
    // runs out) makes a fleet read fail with 503 naming it, rather than a list without its share.
    let (stopped, asked) = (other, owner);
    let pid = instances
        .iter()
        .find(|i| i.name == stopped.name)
        .and_then(|i| i.child.as_ref())
        .map(|c| c.id())
        .expect("running");
    unsafe {
        libc::kill(pid as i32, libc::SIGSTOP);
    }
    let resp = http
        .get(format!("http://{}/api/v1/tickets", asked.api))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE, "{body}");
    // Timed out asking it; or, on a machine loaded enough that its membership had already
    // expired, its partitions have no live owner yet: either way the 503 names it.
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&stopped.name)
            && (message.contains("no answer within") || message.contains("no live owner")),
        "the 503 names {} and says it timed out or left its partitions unowned: {message}",
        stopped.name
    );
    eprintln!(
        "{} stopped: {} answered 503: {message}",
        stopped.name, asked.name
    );

    // The transition survives a hand-off: the owner that accepted it is killed, and the other
    // instance, which rebuilds the partition from the stream, has the ticket acknowledged too.
    unsafe {
        libc::kill(pid as i32, libc::SIGCONT);
    }
    await_shares(
        &http,
        &remaining,
        &format!("{} never got its share back after SIGCONT", stopped.name),
    )
    .await;
    let (owner_name, other_name, other_api) =
        (owner.name.clone(), other.name.clone(), other.api.clone());
    let killed_at = Instant::now();
    instances
        .iter_mut()
        .find(|i| i.name == owner_name)
        .unwrap()
        .kill();
    let heir: Vec<&Member> = instances.iter().filter(|i| i.name == other_name).collect();
    loop {
        if let Some(own) = ownership(&http, &heir, TOKEN, true).await {
            if covers_all(&own) {
                break;
            }
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "{other_name} never took over from {owner_name}:\n{}",
            tails(&heir)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = loop {
        match readyz(&http, &other_api).await {
            Some((200, body)) => break body,
            other => assert!(
                killed_at.elapsed() < Duration::from_secs(60),
                "{other_name} not ready after the take-over: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        ready["cluster"]["replaying"],
        serde_json::json!([]),
        "{ready}"
    );
    assert_eq!(
        local(&other_api).await,
        Some(forewarn::domain::Status::Acknowledged),
        "the new owner {other_name} rebuilt the ticket with its transition"
    );
    let applied = metric(
        &http,
        &other_api,
        "forewarn_cluster_transitions_total{result=\"applied\"}",
    )
    .await;
    assert!(applied >= 1.0, "the transition was applied from the stream");
    // The board's records moved with the partition: the assignment and the booked visit
    // made through the other board are the new owner's now, in its own store.
    let records = get_json(
        &http,
        &format!("http://{other_api}/api/v1/board/records"),
        TOKEN,
    )
    .await
    .expect("the new owner's board records");
    let of_picked = records
        .as_array()
        .and_then(|l| l.iter().find(|r| r["ticket_id"] == picked_id.as_str()))
        .unwrap_or_else(|| panic!("{other_name} has no board records of {picked_id}: {records}"));
    assert_eq!(
        of_picked["assignment"]["technician_id"], TECH,
        "{of_picked}"
    );
    assert_eq!(of_picked["visit"]["technician_id"], TECH, "{of_picked}");
    assert_eq!(
        of_picked["visit"]["booked_by"], "board:drill",
        "{of_picked}"
    );
    eprintln!(
        "killed {owner_name}: {other_name} owned every partition, replayed, with ticket {} \
         acknowledged, {:.2} s later",
        target.id,
        killed_at.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_server_killed_mid_stream_and_restarted_loses_nothing_and_duplicates_nothing() {
    let Some(mut nats) = NatsServer::start("cluster_nats nats restart", PARTITIONS, PREFIX) else {
        return;
    };
    forewarn::tls::install_crypto();
    let broker_url = format!("mqtt://127.0.0.1:{}", nats.mqtt_port);
    let tmp = tempfile::tempdir().unwrap();
    let hist = SimHistory::write(&tmp.path().join("history"), 24, 45, 11);
    let model = demo_model();

    let http = reqwest::Client::new();
    let (instances, backtest) =
        start_three(&nats, &broker_url, tmp.path(), &model, &hist, &http).await;
    let live: Vec<&Member> = instances.iter().collect();

    // The first half of the history, then the server dies (SIGKILL) while the instances are
    // still working through it.
    let messages: Vec<forewarn::replay::Message> = hist.replay().messages("devices").collect();
    let half = messages.len() / 2;
    let in_flight = {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = jetstream::new(client);
        publish_history(&js, &messages[..half]).await;
        // How much of it the instances had yet to consume or acknowledge (for the record).
        let mut left = 0;
        if let Ok(stream) = js.get_stream("FOREWARN").await {
            for p in 0..PARTITIONS {
                if let Ok(i) = stream.consumer_info(format!("fw-p{p}")).await {
                    left += i.num_pending + i.num_ack_pending as u64;
                }
            }
        }
        left
    };
    nats.stop();
    let killed_at = Instant::now();

    // Every instance says it is not ready, and names NATS.
    for i in &live {
        loop {
            if let Some((503, body)) = readyz(&http, &i.api).await {
                let reason = body["cluster"]["reason"].as_str().unwrap_or_default();
                if body["cluster"]["nats"] == false {
                    assert!(reason.contains("NATS"), "{}: {body}", i.name);
                    break;
                }
            }
            assert!(
                killed_at.elapsed() < Duration::from_secs(30),
                "{} still ready without NATS: {:?}",
                i.name,
                readyz(&http, &i.api).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let noticed = killed_at.elapsed();
    // Down for longer than a lease (3 s), so every lease has run out when it comes back.
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(noticed)).await;
    nats.restart();
    let restarted_at = Instant::now();

    // Each recovers by itself: ready again, with every partition owned and replayed.
    let mut ready_after = BTreeMap::new();
    loop {
        note_ready(&http, &live, restarted_at, &mut ready_after).await;
        if ready_after.len() == live.len() {
            if let Some(own) = ownership(&http, &live, TOKEN, true).await {
                if covers_all(&own) {
                    break;
                }
            }
        }
        assert!(
            restarted_at.elapsed() < Duration::from_secs(90),
            "not all ready after the restart: {ready_after:?}\n{}",
            tails(&live)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let settled = restarted_at.elapsed();
    eprintln!(
        "nats-server killed with {in_flight} of {half} readings not yet consumed and \
         acknowledged: every instance not ready within {:.2} s; restarted after {:.2} s; \
         ready again {:?} after the restart; every partition owned and replayed {:.2} s after it",
        noticed.as_secs_f64(),
        restarted_at.duration_since(killed_at).as_secs_f64(),
        ready_after
            .iter()
            .map(|(n, d)| format!("{n} {:.2} s", d.as_secs_f64()))
            .collect::<Vec<_>>(),
        settled.as_secs_f64()
    );

    // The rest of the history, through a new connection.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    publish_history(&js, &messages[half..]).await;

    // No reading lost: the stream holds every message, and every durable consumer drained it.
    let mut stream = js.get_stream("FOREWARN").await.unwrap();
    let info = stream.info().await.unwrap();
    assert!(
        info.state.messages >= messages.len() as u64,
        "the stream kept {} of {} readings",
        info.state.messages,
        messages.len()
    );
    wait_drained(&stream, &live).await;

    // The tickets are the backtest's, each once, from any instance, one claim per ticket.
    assert_fleet_is_the_backtests(&http, &js, &live, &backtest).await;
    let skipped = metric_sum(&http, &live, "forewarn_cluster_redelivered_skipped_total").await;
    let replayed = metric_sum(&http, &live, "forewarn_cluster_replayed_messages_total").await;
    eprintln!(
        "{} readings, {} tickets equal to the backtest, one claim each, after the restart; \
         {skipped} redelivered message(s) skipped as already applied, {replayed} replayed",
        messages.len(),
        backtest.len()
    );
}

/// Notes, for each of `live` not yet in `ready` that answers `/readyz` with 200 now, how long
/// after `since` it was seen ready.
async fn note_ready(
    http: &reqwest::Client,
    live: &[&Member],
    since: Instant,
    ready: &mut BTreeMap<String, Duration>,
) {
    for i in live {
        if !ready.contains_key(&i.name) {
            if let Some((200, _)) = readyz(http, &i.api).await {
                ready.insert(i.name.clone(), since.elapsed());
            }
        }
    }
}

/// The stream's leader: the index in `servers` of the server its leader is (by name,
/// `fw-test-<port>`), once it has one (at most 30 s).
async fn stream_leader(stream: &mut jetstream::stream::Stream, servers: &[NatsServer]) -> usize {
    let started = Instant::now();
    loop {
        if let Ok(info) = stream.info().await {
            let leader = info.cluster.as_ref().and_then(|c| c.leader.clone());
            if let Some(i) = leader.and_then(|l| {
                servers
                    .iter()
                    .position(|s| l == format!("fw-test-{}", s.port))
            }) {
                return i;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the stream has no leader"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// NATS is no single point of failure: three nats-servers in one NATS cluster keep the stream
/// and every bucket on all three (`cluster.replicas = 3`), and each instance is given all three
/// URLs. The stream's leader is killed (SIGKILL) while the instances are still working through
/// the first half of a history, and stays down while the second half is published (through the
/// two left, once they have elected a new leader). Nothing is lost, the fleet's tickets are the
/// backtest's, each claimed once, and every instance stays ready or is ready again, without a
/// restart; the killed server, started again, catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_leader_of_a_three_server_nats_cluster_killed_mid_stream_loses_nothing() {
    let Some(mut servers) =
        NatsServer::start_cluster("cluster_nats nats cluster", 3, PARTITIONS, PREFIX).await
    else {
        return;
    };
    forewarn::tls::install_crypto();
    let urls = cluster_urls(&servers);
    // The instances' MQTT connection (their ticket publishes) is to the first server, which
    // is not the one killed.
    let broker_url = format!("mqtt://127.0.0.1:{}", servers[0].mqtt_port);
    let tmp = tempfile::tempdir().unwrap();
    let hist = SimHistory::write(&tmp.path().join("history"), 24, 45, 11);
    let model = demo_model();
    let http = reqwest::Client::new();
    // A lease longer than a leader election (about 5 s measured by hand with nats-server 2.9).
    let (instances, backtest) = start_three_with(
        &servers[0],
        &broker_url,
        |_, c| {
            c.cluster.url = Some(urls.clone());
            c.cluster.replicas = 3;
            c.cluster.lease = "12s".parse().unwrap();
        },
        tmp.path(),
        &model,
        &hist,
        &http,
    )
    .await;
    let live: Vec<&Member> = instances.iter().collect();

    let list: Vec<String> = servers.iter().map(NatsServer::url).collect();
    let client = async_nats::connect(list.as_slice()).await.unwrap();
    let js = jetstream::new(client.clone());
    let mut stream = js.get_stream("FOREWARN").await.unwrap();
    for name in [
        "FOREWARN",
        "KV_forewarn-claims",
        "KV_forewarn-leases",
        "KV_forewarn-state",
    ] {
        let mut s = js.get_stream(name).await.unwrap();
        let replicas = s.info().await.unwrap().config.num_replicas;
        assert_eq!(replicas, 3, "{name} is kept by {replicas} server(s)");
    }
    // A leader other than the first server: asked to step down until it is.
    let mut leader = stream_leader(&mut stream, &servers).await;
    for _ in 0..10 {
        if leader != 0 {
            break;
        }
        let _ = client
            .request("$JS.API.STREAM.LEADER.STEPDOWN.FOREWARN", "".into())
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        leader = stream_leader(&mut stream, &servers).await;
    }
    assert_ne!(
        leader, 0,
        "the stream's leadership never left the first server"
    );

    let messages: Vec<forewarn::replay::Message> = hist.replay().messages("devices").collect();
    let half = messages.len() / 2;
    publish_history(&js, &messages[..half]).await;
    servers[leader].stop();
    let killed_at = Instant::now();
    publish_history_retrying(&js, &messages[half..], half).await;
    let published = killed_at.elapsed();
    let new_leader = stream_leader(&mut stream, &servers).await;
    assert_ne!(new_leader, leader);

    let info = stream.info().await.unwrap();
    assert_eq!(
        info.state.messages,
        messages.len() as u64,
        "the stream keeps every message once"
    );
    wait_drained(&stream, &live).await;
    assert_fleet_is_the_backtests(&http, &js, &live, &backtest).await;
    let mut ready_within = BTreeMap::new();
    loop {
        note_ready(&http, &live, killed_at, &mut ready_within).await;
        if ready_within.len() == live.len() {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(120),
            "not every instance ready with two of three servers: {ready_within:?}\n{}",
            tails(&live)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    await_shares(
        &http,
        &live,
        "the partitions not shared out again with two of three servers",
    )
    .await;

    // The killed server, started again, catches up with the stream.
    servers[leader].restart();
    let restarted = Instant::now();
    let mut caught_up = None;
    while restarted.elapsed() < Duration::from_secs(60) {
        let info = stream.info().await.unwrap();
        let replicas = info
            .cluster
            .as_ref()
            .map(|c| c.replicas.clone())
            .unwrap_or_default();
        let name = format!("fw-test-{}", servers[leader].port);
        if replicas.iter().any(|r| r.name == name && r.current) {
            caught_up = Some(restarted.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let caught_up = caught_up.expect("the restarted server caught up with the stream within 60 s");
    let skipped = metric_sum(&http, &live, "forewarn_cluster_redelivered_skipped_total").await;
    eprintln!(
        "stream leader fw-test-{} killed after {half} of {} messages; the rest published {:.2} s \
         after the kill (stored once each); new leader fw-test-{}; every instance ready {:?} \
         after the kill; {} tickets equal to the backtest, one claim each; {skipped} \
         redelivered message(s) skipped; the killed server current again {:.2} s after its \
         restart",
        servers[leader].port,
        messages.len(),
        published.as_secs_f64(),
        servers[new_leader].port,
        ready_within
            .iter()
            .map(|(n, d)| format!("{n} {:.2} s", d.as_secs_f64()))
            .collect::<Vec<_>>(),
        backtest.len(),
        caught_up.as_secs_f64()
    );
}

/// An instance frozen (SIGSTOP) for longer than its lease, holding ticket changes it claimed
/// and could not send (its webhook answers 503), loses its partitions to the others, and its
/// unsent changes too: they take the claims over and send them. Woken (SIGCONT, its webhook
/// answering again), it still believes it holds its partitions and its rows until its next
/// lease round. It must neither send those rows (the changes would reach the webhook twice)
/// nor consume what it lost meanwhile (two pullers on one durable consumer would split a
/// partition's messages between two states): it finds its membership lapsed, drops the rows
/// the others sent, rejoins, and gets its share back through hand-offs with checkpoints. Every
/// claimed change ends sent, none reaches the webhook twice, and the tickets are still the
/// backtest's, each opened once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_frozen_past_its_lease_sends_nothing_twice_and_consumes_nothing_it_lost() {
    let Some((nats, broker_url, tmp, hist, model, http)) = drill("cluster_nats frozen", 24, 45, 11)
    else {
        return;
    };
    let hook = Webhook::start().await;
    let (instances, backtest) = start_three_with(
        &nats,
        &broker_url,
        |name, cfg| {
            cfg.dispatch.webhook_url = Some(hook.url_of(name).into());
            cfg.dispatch.webhook_secret = Some("frozen-drill-secret".into());
            cfg.dispatch.retry_min = "200ms".parse().unwrap();
            cfg.dispatch.retry_max = "500ms".parse().unwrap();
            cfg.dispatch.max_attempts = 10_000;
        },
        tmp.path(),
        &model,
        &hist,
        &http,
    )
    .await;
    let live: Vec<&Member> = instances.iter().collect();
    let own = ownership(&http, &live, TOKEN, true)
        .await
        .expect("ownership");
    let name = own
        .iter()
        .max_by_key(|(_, o)| o.len())
        .map(|(n, _)| n.clone())
        .unwrap();
    let frozen = instances.iter().find(|i| i.name == name).unwrap();
    let others: Vec<&Member> = instances.iter().filter(|i| i.name != name).collect();
    hook.set_up(&name, false);

    // Half the history, all of it consumed: the changes the instance to be frozen claimed
    // stay in its outbox.
    let messages: Vec<forewarn::replay::Message> = hist.replay().messages("devices").collect();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    let stream = js.get_stream("FOREWARN").await.unwrap();
    let half = messages.len() / 2;
    publish_history(&js, &messages[..half]).await;
    wait_drained(&stream, &live).await;
    // The devices' held readings released (idle timer), their changes claimed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = claim_keys(&js)
        .await
        .into_iter()
        .filter(|k| k.starts_with(&format!("u.{name}.")))
        .count();
    assert!(
        held > 0,
        "{name} holds no unsent change: the drill would prove nothing\n{}",
        frozen.log_tail()
    );

    // Frozen: the others take its partitions over, then its unsent changes, and send them.
    frozen.freeze(true);
    let frozen_at = Instant::now();
    until(
        Duration::from_secs(60),
        &format!("the others never took {name}'s partitions over"),
        &others,
        || {
            let (http, others) = (&http, &others);
            async move {
                ownership(http, others, TOKEN, true)
                    .await
                    .is_some_and(|own| covers_all(&own))
            }
        },
    )
    .await;
    let partitions_after = frozen_at.elapsed();
    until(
        Duration::from_secs(60),
        &format!("{name}'s unsent changes were never all taken over and sent"),
        &others,
        || {
            let js = js.clone();
            let prefix = format!("u.{name}.");
            async move {
                let keys = claim_keys(&js).await;
                !keys.iter().any(|k| k.starts_with(&prefix)) && unmarked(&keys).is_empty()
            }
        },
    )
    .await;
    let sent_after = frozen_at.elapsed();
    // A quarter more while it is still frozen.
    let three_quarters = messages.len() * 3 / 4;
    publish_history(&js, &messages[half..three_quarters]).await;

    // Woken, its webhook answering: whatever it sent now would be taken.
    hook.set_up(&name, true);
    frozen.freeze(false);
    let frozen_for = frozen_at.elapsed();
    publish_history(&js, &messages[three_quarters..]).await;

    // It gets its share back, everything drains, and the fleet's tickets are the backtest's.
    await_shares(&http, &live, &format!("{name} never got its share back")).await;
    wait_drained(&stream, &live).await;
    assert_fleet_is_the_backtests(&http, &js, &live, &backtest).await;
    let (changes, taken) = all_claims_marked_sent(&js, &live).await;
    let from_frozen: BTreeSet<String> = taken
        .iter()
        .filter(|(_, from)| *from == name)
        .map(|(k, _)| k.clone())
        .collect();
    assert!(
        !from_frozen.is_empty(),
        "nothing of {name}'s taken over: {taken:?}"
    );

    // Nothing reached the webhook twice: the woken instance sent none of the changes taken
    // from it, and no change was taken twice by the webhook, from anyone.
    let seen = hook.seen();
    let again: Vec<String> = seen
        .iter()
        .filter(|(m, ok, _)| *m == name && *ok)
        .filter_map(|(_, _, body)| announced_claim(body))
        .filter(|c| from_frozen.contains(c))
        .collect();
    assert!(
        again.is_empty(),
        "{name} sent again what the others had sent: {again:?}\n{}",
        frozen.log_tail()
    );
    let mut deliveries: BTreeMap<String, usize> = BTreeMap::new();
    for (_, ok, body) in &seen {
        if *ok {
            let change = format!(
                "{} {} {} {}",
                body["event"],
                body["ticket"]["id"],
                body["ticket"]["updated_at"],
                body["ticket"]["status"]
            );
            *deliveries.entry(change).or_default() += 1;
        }
    }
    let twice: Vec<&String> = deliveries
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(c, _)| c)
        .collect();
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
    let dropped = metric(
        &http,
        &frozen.api,
        "forewarn_cluster_outbox_claims_total{event=\"dropped\"}",
    )
    .await;
    let lapsed = metric(
        &http,
        &frozen.api,
        "forewarn_cluster_lease_events_total{event=\"lapsed\"}",
    )
    .await;
    assert!(
        dropped >= 1.0 && lapsed >= 1.0,
        "{name} woke without dropping what the others sent (dropped {dropped}, lapsed \
         {lapsed}):\n{}",
        frozen.log_tail()
    );
    let log = std::fs::read_to_string(&frozen.log).unwrap_or_default();
    let refused = log.matches("its lease is not this instance's now").count();
    let gaps = log.matches("deliveries went elsewhere").count();
    let resumed = metric_sum(
        &http,
        &live,
        "forewarn_cluster_checkpoints_total{event=\"resumed\"}",
    )
    .await;
    eprintln!(
        "{name} frozen with {held} unsent change(s) for {:.2} s: the others held every partition \
         {:.2} s and had sent its {} taken-over change(s) {:.2} s after the freeze; woken, it \
         lapsed {lapsed} time(s), dropped {dropped} change(s) sent elsewhere, sent none again; \
         {} webhook deliveries, none twice; {refused} set-up(s) refused for a lease no longer \
         its own, {gaps} delivery gap(s); {resumed} partition(s) resumed from checkpoints; \
         {changes} claimed changes all marked sent; {} tickets equal to the backtest, one \
         claim each",
        frozen_for.as_secs_f64(),
        partitions_after.as_secs_f64(),
        from_frozen.len(),
        sent_after.as_secs_f64(),
        deliveries.len(),
        backtest.len()
    );
}

/// An instance killed with SIGKILL and started again on its store, with no checkpoint to
/// resume from (periodic checkpoints off, none written at a kill): its store says how far its
/// state holds each partition, so it replays only what lies after that, not the retained
/// stream from its start; the tickets are still the backtest's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_restarted_without_a_checkpoint_replays_only_what_its_store_lacks() {
    let Some((nats, broker_url, tmp, hist, model, http)) =
        drill("cluster_nats restart", 24, 45, 11)
    else {
        return;
    };
    let no_checkpoints = |c: &mut forewarn::config::Config| c.cluster.checkpoint_every = 0;
    let (mut first, cfg) = start_instance_with(
        &nats,
        &broker_url,
        tmp.path(),
        "fw-s",
        &model,
        &hist,
        no_checkpoints,
    );
    let backtest = evaluate_tickets(&cfg, model.clone(), &hist);
    wait_ready(&http, &first).await;

    let messages: Vec<forewarn::replay::Message> = hist.replay().messages("devices").collect();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    publish_history(&js, &messages).await;
    let stream = js.get_stream("FOREWARN").await.unwrap();
    wait_drained(&stream, &[&first]).await;
    assert_fleet_is_the_backtests(&http, &js, &[&first], &backtest).await;

    first.kill();
    let killed_at = Instant::now();
    let (second, _) = start_instance_with(
        &nats,
        &broker_url,
        tmp.path(),
        "fw-s",
        &model,
        &hist,
        no_checkpoints,
    );
    // Its old leases run out (3 s), then it takes every partition and replays.
    wait_ready(&http, &second).await;
    loop {
        if let Some(own) = ownership(&http, &[&second], TOKEN, true).await {
            if covers_all(&own) {
                break;
            }
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "never owned every partition again:\n{}",
            second.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let replayed = metric(
        &http,
        &second.api,
        "forewarn_cluster_replayed_messages_total",
    )
    .await;
    let resumed = metric(
        &http,
        &second.api,
        "forewarn_cluster_checkpoints_total{event=\"resumed\"}",
    )
    .await;
    eprintln!(
        "restarted without a checkpoint ({resumed} resumed): {replayed} of {} messages \
         replayed, ready {:.2} s after the kill",
        messages.len(),
        killed_at.elapsed().as_secs_f64()
    );
    assert_eq!(resumed, 0.0, "no checkpoint to resume from");
    assert!(
        replayed < messages.len() as f64 / 10.0,
        "{replayed} of {} messages replayed: from the stream's start, not after what the store \
         holds",
        messages.len()
    );
    assert_fleet_is_the_backtests(&http, &js, &[&second], &backtest).await;
}

/// The board's customer page of any instance shows the fleet's tickets of the customer and
/// every instance's timeline entries of them (each instance records the changes it made), not
/// only those of the partitions it owns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_boards_customer_page_answers_for_the_fleet() {
    let Some((nats, broker_url, tmp, hist, model, http)) =
        drill("cluster_nats customer", 24, 45, 11)
    else {
        return;
    };
    // One customer owns every device (no contacts: nothing is sent to it, its timeline
    // records the tickets).
    let one_customer = |c: &mut forewarn::config::Config| {
        let path = c.fleet.file.clone().expect("a fleet file");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut fleet: forewarn::fleet::FleetFile = toml::from_str(&text).unwrap();
        fleet.customers =
            vec![toml::from_str("id = \"acme\"\nname = \"Acme Pumps\"").expect("a customer")];
        for d in &mut fleet.devices {
            d.customer_id = Some("acme".into());
        }
        std::fs::write(&path, toml::to_string(&fleet).unwrap()).unwrap();
    };
    let mut instances = Vec::new();
    let mut backtest = Vec::new();
    for name in ["fw-a", "fw-b"] {
        let (i, cfg) = start_instance_with(
            &nats,
            &broker_url,
            tmp.path(),
            name,
            &model,
            &hist,
            one_customer,
        );
        if backtest.is_empty() {
            backtest = evaluate_tickets(&cfg, model.clone(), &hist);
        }
        instances.push(i);
    }
    let live: Vec<&Member> = instances.iter().collect();
    await_shares(&http, &live, "two instances never shared the partitions").await;
    let messages: Vec<forewarn::replay::Message> = hist.replay().messages("devices").collect();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    publish_history(&js, &messages).await;
    let stream = js.get_stream("FOREWARN").await.unwrap();
    wait_drained(&stream, &live).await;
    assert_fleet_is_the_backtests(&http, &js, &live, &backtest).await;
    let fleet = fleet_list(&http, &live[0].api, "").await;
    let own = ownership(&http, &live, TOKEN, true)
        .await
        .expect("ownership");
    for i in &live {
        let owned: BTreeSet<u32> = own[&i.name].iter().copied().collect();
        let elsewhere = fleet
            .iter()
            .filter(|t| !owned.contains(&partition::of_device(&t.device_id, PARTITIONS)))
            .count();
        assert!(elsewhere > 0, "{} owns every ticket's partition", i.name);
        let (bhttp, session) = board_session(&i.api).await;
        let (status, html) = board_page(&bhttp, &session, &i.api, "/board/customers/acme").await;
        assert_eq!(status, 200, "the customer page of {}: {html}", i.name);
        let missing: Vec<&str> = fleet
            .iter()
            .map(|t| t.id.as_str())
            .filter(|id| !html.contains(id))
            .collect();
        assert!(
            missing.is_empty(),
            "the customer page of {} misses the fleet's tickets {missing:?}",
            i.name
        );
        // The timeline's lines name their ticket (`<a …>ID</a>: what`): every ticket's
        // entries are there, those recorded by the other instance included.
        let untold: Vec<&str> = fleet
            .iter()
            .map(|t| t.id.as_str())
            .filter(|id| !html.contains(&format!("{id}</a>: ")))
            .collect();
        assert!(
            untold.is_empty(),
            "the customer page of {} has no timeline entries of {untold:?}: {html}",
            i.name
        );
    }
    eprintln!(
        "the customer page of each of two instances lists the fleet's {} tickets and their \
         openings",
        fleet.len()
    );
}

/// `POST` of `body` to `path` of the API at `api`, with the drill's token: the status and body.
async fn post_json(
    http: &reqwest::Client,
    api: &str,
    path: &str,
    body: &serde_json::Value,
) -> (u16, String) {
    let r = http
        .post(format!("http://{api}{path}"))
        .bearer_auth(TOKEN)
        .json(body)
        .send()
        .await
        .expect("the API answers");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// `GET /api/v1/visits` of one instance: `(ticket, technician, start_ms)` of each visit.
async fn visits_of(http: &reqwest::Client, api: &str) -> Vec<(String, String, i64)> {
    let v = get_json(http, &format!("http://{api}/api/v1/visits"), TOKEN)
        .await
        .expect("visits readable");
    v.as_array()
        .expect("a list")
        .iter()
        .map(|v| {
            (
                v["ticket_id"].as_str().unwrap_or_default().to_string(),
                v["technician_id"].as_str().unwrap_or_default().to_string(),
                v["slot"]["start_ms"].as_i64().unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_technicians_slot_is_booked_once_for_the_fleet_and_every_day_view_shows_the_visit() {
    let Some((nats, broker_url, tmp, hist, model, http)) = drill("cluster_nats visits", 24, 45, 11)
    else {
        return;
    };
    let mut instances = Vec::new();
    for name in ["fw-a", "fw-b"] {
        instances.push(start_instance(&nats, &broker_url, tmp.path(), name, &model, &hist).0);
    }
    let live: Vec<&Member> = instances.iter().collect();
    await_shares(&http, &live, "two instances never shared the partitions").await;
    let messages: Vec<forewarn::replay::Message> = hist.replay().messages("devices").collect();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    // The readings without the devices' events: no failure settles a ticket, so both
    // instances own live ones.
    let readings: Vec<forewarn::replay::Message> = messages
        .into_iter()
        .filter(|m| !m.topic.ends_with("/events"))
        .collect();
    publish_history(&js, &readings).await;
    let stream = js.get_stream("FOREWARN").await.unwrap();
    wait_drained(&stream, &live).await;
    let own = ownership(&http, &live, TOKEN, true)
        .await
        .expect("ownership");
    let owned_by = |name: &str, t: &Ticket| {
        own[name].contains(&partition::of_device(&t.device_id, PARTITIONS))
    };
    // The readings held for reordering are released by the idle timer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fleet = fleet_list(&http, &live[0].api, "").await;
    let (a, b) = (&instances[0], &instances[1]);
    let of_a = fleet
        .iter()
        .find(|t| t.is_live() && owned_by(&a.name, t))
        .expect("a live ticket owned by fw-a");
    let of_b = fleet
        .iter()
        .find(|t| t.is_live() && owned_by(&b.name, t))
        .expect("a live ticket owned by fw-b");
    // The technician's first free slots, as fw-a offers them (nobody has a visit yet).
    let slots = get_json(
        &http,
        &format!(
            "http://{}/api/v1/tickets/{}/slots?technician={TECH}",
            a.api, of_a.id
        ),
        TOKEN,
    )
    .await
    .expect("free slots");
    let (slot, next) = (slots[0].clone(), slots[1].clone());
    let start = slot["start_ms"].as_i64().expect("a free slot");

    // Both owners book the same technician and slot at once, each for a ticket it owns.
    let book = |api: String, id: String, slot: serde_json::Value| {
        let http = http.clone();
        async move {
            let body = serde_json::json!({"technician_id": TECH, "slot": slot});
            post_json(&http, &api, &format!("/api/v1/tickets/{id}/visit"), &body).await
        }
    };
    let (ra, rb) = tokio::join!(
        book(a.api.clone(), of_a.id.clone(), slot.clone()),
        book(b.api.clone(), of_b.id.clone(), slot.clone())
    );
    let mut codes = [ra.0, rb.0];
    codes.sort_unstable();
    assert_eq!(
        codes,
        [200, 400],
        "one booking of the slot wins, the other is refused: fw-a {ra:?}, fw-b {rb:?}"
    );
    let (winner, loser, won, lost, refusal) = if ra.0 == 200 {
        (a, b, of_a, of_b, rb.1)
    } else {
        (b, a, of_b, of_a, ra.1)
    };
    assert!(
        refusal.contains("already has a visit"),
        "the board's usual answer: {refusal}"
    );
    eprintln!(
        "{} booked {TECH} at {start} for {}; {} was refused: {refusal}",
        winner.name, won.id, loser.name
    );

    // Every instance lists the one visit, the instance that does not own its ticket too, and
    // the day view of each shows it.
    let date = chrono::DateTime::from_timestamp_millis(start)
        .expect("a time")
        .format("%Y-%m-%d")
        .to_string();
    for i in &live {
        let visits = visits_of(&http, &i.api).await;
        let at_slot: Vec<&(String, String, i64)> = visits
            .iter()
            .filter(|(_, tech, s)| tech == TECH && *s == start)
            .collect();
        assert_eq!(
            at_slot,
            vec![&(won.id.clone(), TECH.to_string(), start)],
            "GET /api/v1/visits of {}: {visits:?}",
            i.name
        );
        let (bhttp, session) = board_session(&i.api).await;
        let (status, html) =
            board_page(&bhttp, &session, &i.api, &format!("/board/day?date={date}")).await;
        assert_eq!(status, 200, "the day view of {}: {html}", i.name);
        assert!(
            html.contains(&won.id),
            "the day view of {} shows the visit of {} booked on {}: {html}",
            i.name,
            won.id,
            winner.name
        );
    }

    // The loser's owner no longer offers the slot for its ticket.
    let offered = get_json(
        &http,
        &format!(
            "http://{}/api/v1/tickets/{}/slots?technician={TECH}",
            loser.api, lost.id
        ),
        TOKEN,
    )
    .await
    .expect("free slots");
    let starts: Vec<i64> = offered
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|s| s["start_ms"].as_i64())
        .collect();
    assert!(
        !starts.is_empty() && !starts.contains(&start),
        "{} offers {TECH}'s slot booked on {}: {starts:?}",
        loser.name,
        winner.name
    );

    // The winner moves its visit to the next slot: the first is free for the fleet again.
    let (status, body) = book(winner.api.clone(), won.id.clone(), next.clone()).await;
    assert_eq!(status, 200, "the visit moved: {body}");
    let (status, body) = book(loser.api.clone(), lost.id.clone(), slot.clone()).await;
    assert_eq!(
        status, 200,
        "the freed slot is booked by {}: {body}",
        loser.name
    );
    let visits = visits_of(&http, &loser.api).await;
    let mut mine: Vec<&(String, String, i64)> =
        visits.iter().filter(|(_, tech, _)| tech == TECH).collect();
    mine.sort_by_key(|v| v.2);
    assert_eq!(mine.len(), 2, "two visits in the fleet: {visits:?}");
    assert_eq!(mine[0].0, lost.id, "{visits:?}");
    assert_eq!(mine[1].0, won.id, "{visits:?}");
}

/// `GET` of a registry record from one instance's API: the JSON once it answers 200.
async fn registry_record(
    http: &reqwest::Client,
    api: &str,
    path: &str,
) -> Option<serde_json::Value> {
    let r = http
        .get(format!("http://{api}/api/v1/{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .ok()?;
    if r.status() != reqwest::StatusCode::OK {
        return None;
    }
    r.json().await.ok()
}

/// Waits (at most `within`) until `path` answers on `api` with a record whose `field` is
/// `want`.
async fn await_record(
    http: &reqwest::Client,
    i: &Member,
    path: &str,
    field: &str,
    want: &serde_json::Value,
    within: Duration,
) {
    let started = Instant::now();
    loop {
        let got = registry_record(http, &i.api, path).await;
        if got.as_ref().map(|v| &v[field]) == Some(want) {
            return;
        }
        assert!(
            started.elapsed() < within,
            "{} never answered {path} with {field} = {want}: {got:?}\n{}",
            i.name,
            i.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_and_a_device_upserted_on_one_instance_are_known_to_every_instance() {
    let Some((nats, broker_url, tmp, hist, model, http)) = drill("cluster_nats registry", 4, 3, 5)
    else {
        return;
    };
    let (a, _) = start_instance(&nats, &broker_url, tmp.path(), "fw-a", &model, &hist);
    let (b, _) = start_instance(&nats, &broker_url, tmp.path(), "fw-b", &model, &hist);
    wait_ready(&http, &a).await;
    wait_ready(&http, &b).await;

    // Thai and Persian ids: not valid key-value keys as they are.
    let customer = "ลูกค้า-۱";
    let device = "ปั๊ม.น้ำ-7";
    let put = |path: String, body: serde_json::Value| {
        let http = http.clone();
        let api = a.api.clone();
        async move {
            let r = http
                .put(format!("http://{api}/api/v1/{path}"))
                .bearer_auth(TOKEN)
                .json(&body)
                .send()
                .await
                .expect("PUT");
            r.status().as_u16()
        }
    };
    let status = put(
        format!("customers/{customer}"),
        serde_json::json!({"name": "บริษัท ปั๊ม", "locale": "th"}),
    )
    .await;
    assert!(status == 200 || status == 201, "PUT customer: {status}");
    let status = put(
        format!("devices/{device}"),
        serde_json::json!({"customer_id": customer, "attributes": {"site": "ชลบุรี"}}),
    )
    .await;
    assert!(status == 200 || status == 201, "PUT device: {status}");

    let within = Duration::from_secs(5);
    let name = serde_json::json!("บริษัท ปั๊ม");
    let owner = serde_json::json!(customer);
    await_record(
        &http,
        &b,
        &format!("customers/{customer}"),
        "name",
        &name,
        within,
    )
    .await;
    await_record(
        &http,
        &b,
        &format!("devices/{device}"),
        "customer_id",
        &owner,
        within,
    )
    .await;

    // Replaced on B: A has the new record.
    let status = {
        let r = http
            .put(format!("http://{}/api/v1/customers/{customer}", b.api))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({"name": "renamed", "locale": "fa"}))
            .send()
            .await
            .expect("PUT on B");
        r.status().as_u16()
    };
    assert_eq!(status, 200, "the customer is known on B");
    let renamed = serde_json::json!("renamed");
    await_record(
        &http,
        &a,
        &format!("customers/{customer}"),
        "name",
        &renamed,
        within,
    )
    .await;

    // An instance started afterwards gets the whole registry.
    let (c, _) = start_instance(&nats, &broker_url, tmp.path(), "fw-c", &model, &hist);
    wait_ready(&http, &c).await;
    await_record(
        &http,
        &c,
        &format!("customers/{customer}"),
        "name",
        &renamed,
        within,
    )
    .await;
    await_record(
        &http,
        &c,
        &format!("devices/{device}"),
        "customer_id",
        &owner,
        within,
    )
    .await;
}
