//! Cluster mode's claims of the changes people make (issue 15), against a real nats-server with
//! JetStream, real `forewarn serve` processes killed with SIGKILL, and a real dispatch webhook
//! on loopback: a person's transition accepted by an instance that dies before its rows are
//! sent is sent by the partition's next owner, and the instance started again on its store does
//! not send it a second time.
//!
//! Needs `nats-server` (on the PATH, `/usr/sbin`, or `FOREWARN_NATS_SERVER`); without it the
//! test skips with a note, and fails under `CI=true`.

mod support;

use async_nats::jetstream;
use axum::extract::State;
use axum::http::StatusCode;
use forewarn::cluster::partition;
use forewarn::domain::Ticket;
use futures_util::StreamExt;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::http::get_text;
use support::nats::NatsServer;
use support::net::free_port;
use support::parity::*;
use support::process::{spawn_serve, write_config, Serve};

const PARTITIONS: u32 = 8;
const PREFIX: &str = "fwp";
const TOKEN: &str = "parity-token";
const CLAIMS: &str = "forewarn-claims";

/// A field-service webhook on loopback that answers 503 while it is down and 200 while it is
/// up, keeping every body it was sent (as JSON) and whether it took it.
#[derive(Default)]
struct Webhook {
    up: AtomicBool,
    /// `(taken, body)` of every request, in arrival order.
    seen: Mutex<Vec<(bool, serde_json::Value)>>,
}

impl Webhook {
    async fn start() -> (Arc<Webhook>, String) {
        let hook = Arc::new(Webhook::default());
        hook.up.store(true, Ordering::SeqCst);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route(
                "/dispatch",
                axum::routing::post(
                    |State(h): State<Arc<Webhook>>, body: axum::body::Bytes| async move {
                        let up = h.up.load(Ordering::SeqCst);
                        let json = serde_json::from_slice(&body).unwrap_or_default();
                        h.seen.lock().unwrap().push((up, json));
                        if up {
                            StatusCode::OK
                        } else {
                            StatusCode::SERVICE_UNAVAILABLE
                        }
                    },
                ),
            )
            .with_state(hook.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (hook, format!("http://{addr}/dispatch"))
    }

    /// How many requests announced transition `to` of ticket `id`: `(answered 503, taken)`.
    fn transitions(&self, id: &str, to: &str) -> (usize, usize) {
        let seen = self.seen.lock().unwrap();
        let of = seen.iter().filter(|(_, b)| {
            b["event"] == "ticket.transition"
                && b["ticket"]["id"] == id
                && b["ticket"]["status"] == to
        });
        let (taken, refused): (Vec<_>, Vec<_>) = of.partition(|(taken, _)| *taken);
        (refused.len(), taken.len())
    }
}

/// A `forewarn serve` process in cluster mode (lease and ack wait 3 s), dispatching to the
/// webhook with quick retries; killed (SIGKILL) when dropped.
struct Instance {
    name: String,
    child: Option<Serve>,
    api: String,
    log: std::path::PathBuf,
}

impl Instance {
    /// Started under `root/name` (a root used before keeps its store: the same instance
    /// started again); with the single-machine configuration it was made from.
    fn start(
        nats: &NatsServer,
        root: &std::path::Path,
        name: &str,
        model: &forewarn::predict::Artifact,
        hist: &SimHistory,
        webhook: &str,
    ) -> Instance {
        let setup = DaemonSetup {
            broker_url: format!("mqtt://127.0.0.1:{}", nats.mqtt_port),
            topic_prefix: "devices".into(),
            client_id: format!("{name}-mqtt"),
            root: root.join(name),
            replay_chunk: None,
        };
        let mut cfg = daemon_config(&setup, model, hist);
        let api = format!("127.0.0.1:{}", free_port());
        cfg.api.listen = api.clone();
        cfg.cluster.url = Some(nats.url());
        cfg.cluster.instance = Some(name.into());
        cfg.cluster.partitions = PARTITIONS;
        cfg.cluster.subject_prefix = PREFIX.into();
        cfg.cluster.lease = "3s".parse().unwrap();
        cfg.cluster.ack_wait = "3s".parse().unwrap();
        cfg.cluster.checkpoint_every = 200;
        cfg.dispatch.webhook_url = Some(webhook.into());
        cfg.dispatch.webhook_secret = Some("cluster-claims-secret".into());
        cfg.dispatch.retry_min = "200ms".parse().unwrap();
        cfg.dispatch.retry_max = "500ms".parse().unwrap();
        cfg.dispatch.max_attempts = 10_000;
        std::fs::create_dir_all(&setup.root).unwrap();
        let path = write_config(&setup.root, &cfg);
        let log = setup.root.join("serve.log");
        let child = spawn_serve(&path, &log, "info");
        Instance {
            name: name.into(),
            child: Some(child),
            api,
            log,
        }
    }

    fn kill(&mut self) {
        // A `Serve` kills its process (SIGKILL) when dropped.
        self.child = None;
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("--- {} ---\n{tail}", self.name)
    }
}

fn tails(instances: &[&Instance]) -> String {
    instances
        .iter()
        .map(|i| i.log_tail())
        .collect::<Vec<_>>()
        .join("\n")
}

async fn get_json(http: &reqwest::Client, url: &str) -> Option<serde_json::Value> {
    let r = http.get(url).bearer_auth(TOKEN).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

async fn metric(http: &reqwest::Client, api: &str, name: &str) -> f64 {
    let text = get_text(http, format!("http://{api}/metrics")).await;
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits (up to `limit`) for `ok`, polling every 200 ms; fails with `what` and the log tails.
async fn until<F, Fut>(limit: Duration, what: &str, live: &[&Instance], mut ok: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !ok().await {
        assert!(started.elapsed() < limit, "{what}:\n{}", tails(live));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether every instance is ready and, between them, they own every partition.
async fn settled(http: &reqwest::Client, live: &[&Instance]) -> bool {
    let mut owned = Vec::new();
    for i in live {
        let Ok(r) = http.get(format!("http://{}/readyz", i.api)).send().await else {
            return false;
        };
        if r.status() != 200 {
            return false;
        }
        let Some(v) = get_json(http, &format!("http://{}/api/v1/cluster", i.api)).await else {
            return false;
        };
        owned.extend(
            v["owned"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_u64()),
        );
    }
    owned.sort_unstable();
    owned == (0..u64::from(PARTITIONS)).collect::<Vec<_>>()
}

/// The claims bucket's live keys.
async fn claim_keys(js: &jetstream::Context) -> BTreeSet<String> {
    let claims = js.get_key_value(CLAIMS).await.unwrap();
    let mut keys = claims.keys().await.unwrap();
    let mut all = BTreeSet::new();
    while let Some(k) = keys.next().await {
        all.insert(k.unwrap());
    }
    all
}

/// The claimed ticket changes (`t.…`, `c.…`) without their sent mark.
fn unmarked(keys: &BTreeSet<String>) -> Vec<String> {
    keys.iter()
        .filter(|k| k.starts_with("t.") || k.starts_with("c."))
        .filter(|k| !keys.contains(&format!("s.{k}")))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persons_transition_left_unsent_by_a_killed_instance_is_sent_by_the_next_owner_and_not_again_after_its_restart(
) {
    let Some(nats) = NatsServer::start("cluster_claims transition", PARTITIONS, PREFIX) else {
        return;
    };
    forewarn::tls::install_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let hist = SimHistory::write(&tmp.path().join("history"), 16, 30, 5);
    let model = demo_model();
    let http = reqwest::Client::new();
    let (hook, hook_url) = Webhook::start().await;
    let start = |name: &str| Instance::start(&nats, tmp.path(), name, &model, &hist, &hook_url);
    let mut instances = [start("fw-a"), start("fw-b")];
    {
        let live: Vec<&Instance> = instances.iter().collect();
        until(
            Duration::from_secs(60),
            "the two instances never shared the partitions",
            &live,
            || settled(&http, &live),
        )
        .await;
    }

    // The history's readings, as devices send them; every ticket change they make is sent (the
    // webhook is up) and marked sent in the claims bucket.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    // Readings only: no failure or maintenance event settles a ticket, so some stay open.
    let messages: Vec<forewarn::replay::Message> = hist
        .replay()
        .messages("devices")
        .filter(|m| m.topic.ends_with("/telemetry"))
        .collect();
    for chunk in messages.chunks(500) {
        let mut acks = Vec::new();
        for m in chunk {
            let subject = m.topic.replace('/', ".");
            acks.push(js.publish(subject, m.payload.clone().into()).await.unwrap());
        }
        for a in acks {
            a.await.expect("stored by the stream");
        }
    }
    let both: Vec<&Instance> = instances.iter().collect();
    // Every partition consumed, and the devices' last readings released from the reorder
    // buffers (idle timer, 1 s): the tickets are as the history leaves them.
    let stream = js.get_stream("FOREWARN").await.unwrap();
    until(
        Duration::from_secs(120),
        "the partitions never drained",
        &both,
        || {
            let stream = stream.clone();
            async move {
                let mut left = 0;
                for p in 0..PARTITIONS {
                    match stream.consumer_info(format!("fw-p{p}")).await {
                        Ok(i) => left += i.num_pending + i.num_ack_pending as u64,
                        Err(_) => left += 1,
                    }
                }
                left == 0
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    until(
        Duration::from_secs(60),
        "claimed changes never all marked sent",
        &both,
        || {
            let js = js.clone();
            async move {
                let keys = claim_keys(&js).await;
                keys.iter().any(|k| k.starts_with("t.")) && unmarked(&keys).is_empty()
            }
        },
    )
    .await;
    let waited = Instant::now();
    let ticket: Ticket = loop {
        let list: Vec<Ticket> = get_json(
            &http,
            &format!("http://{}/api/v1/tickets?status=open", instances[0].api),
        )
        .await
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
        if let Some(t) = list.into_iter().next() {
            break t;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(90),
            "no open ticket in the fleet:\n{}",
            tails(&both)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // The owner of the ticket's device's partition accepts a person's transition while the
    // webhook answers 503: its dispatch row stays in the owner's outbox, retried.
    let cluster = get_json(
        &http,
        &format!("http://{}/api/v1/cluster", instances[0].api),
    )
    .await
    .expect("cluster status");
    let p = partition::of_device(&ticket.device_id, PARTITIONS);
    let owner = cluster["assignment"][p.to_string()]
        .as_str()
        .expect("the partition is owned")
        .to_string();
    let victim = instances.iter().position(|i| i.name == owner).unwrap();
    let survivor = 1 - victim;
    hook.up.store(false, Ordering::SeqCst);
    let r = http
        .post(format!(
            "http://{}/api/v1/tickets/{}/transitions",
            instances[victim].api, ticket.id
        ))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"to": "acknowledged", "note": "เห็นแล้ว — on my way"}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert!(
        status.is_success(),
        "transition: {status} {}",
        r.text().await.unwrap_or_default()
    );
    until(
        Duration::from_secs(20),
        "the owner never tried the webhook with the transition",
        &both,
        || {
            let tried = hook.transitions(&ticket.id, "acknowledged").0 >= 1;
            async move { tried }
        },
    )
    .await;
    let keys = claim_keys(&js).await;
    let claim = keys
        .iter()
        .find(|k| k.starts_with(&format!("c.{}.transition.", ticket.id)))
        .cloned()
        .expect("the transition is claimed fleet-wide");
    assert!(
        keys.contains(&format!("u.{owner}.{claim}")),
        "the unsent transition is under its instance's index: {keys:?}"
    );
    assert!(!keys.contains(&format!("s.{claim}")), "not sent yet");

    // SIGKILL, then the webhook comes back: the partition's next owner sends the transition.
    instances[victim].kill();
    let killed_at = Instant::now();
    hook.up.store(true, Ordering::SeqCst);
    let alive: Vec<&Instance> = vec![&instances[survivor]];
    until(
        Duration::from_secs(60),
        "the transition accepted by the killed instance never reached the webhook",
        &alive,
        || {
            let taken = hook.transitions(&ticket.id, "acknowledged").1 >= 1;
            async move { taken }
        },
    )
    .await;
    let sent_after = killed_at.elapsed();
    let claims = js.get_key_value(CLAIMS).await.unwrap();
    let record: serde_json::Value =
        serde_json::from_slice(&claims.get(&claim).await.unwrap().expect("the claim")).unwrap();
    assert_eq!(
        record["instance"],
        instances[survivor].name.as_str(),
        "{record}"
    );
    assert_eq!(record["taken_from"], owner.as_str(), "{record}");
    until(
        Duration::from_secs(30),
        "the taken-over transition never marked sent",
        &alive,
        || {
            let js = js.clone();
            let claim = claim.clone();
            async move { claim_keys(&js).await.contains(&format!("s.{claim}")) }
        },
    )
    .await;
    let keys = claim_keys(&js).await;
    let left: Vec<&String> = keys
        .iter()
        .filter(|k| k.starts_with(&format!("u.{owner}.")))
        .collect();
    assert!(
        left.is_empty(),
        "the departed instance's index is emptied: {left:?}"
    );
    let delivered = hook.transitions(&ticket.id, "acknowledged").1;
    eprintln!(
        "{owner} killed with the transition unsent; {} sent it {:.2} s later ({delivered} delivery)",
        instances[survivor].name,
        sent_after.as_secs_f64()
    );

    // The killed instance started again on its store: its outbox still holds the row, whose
    // change was sent meanwhile by the instance that took its claim over: dropped, not sent.
    instances[victim] = start(&owner);
    let restarted = &instances[victim];
    let both: Vec<&Instance> = instances.iter().collect();
    until(
        Duration::from_secs(60),
        "the restarted instance never got ready",
        &both,
        || settled(&http, &both),
    )
    .await;
    let dropped = metric(
        &http,
        &restarted.api,
        "forewarn_cluster_outbox_claims_total{event=\"dropped\"}",
    )
    .await;
    assert!(
        dropped >= 1.0,
        "nothing dropped at restart:\n{}",
        restarted.log_tail()
    );
    // Longer than the dispatcher's retry backoff and its first round after the start.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        hook.transitions(&ticket.id, "acknowledged").1,
        delivered,
        "the restarted instance sent the transition again:\n{}",
        restarted.log_tail()
    );
    let depth = metric(
        &http,
        &restarted.api,
        "forewarn_outbox_depth{queue=\"dispatch\"}",
    )
    .await;
    assert_eq!(depth, 0.0, "its dispatch outbox is empty");
}
