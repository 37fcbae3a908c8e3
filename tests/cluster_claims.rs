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
use forewarn::cluster::partition;
use forewarn::domain::Ticket;
use std::time::{Duration, Instant};
use support::cluster::{
    claim_keys, get_json, metric, publish_readings, settled, spawn_member, tails, unmarked, until,
    wait_drained, Member, Webhook, CLAIMS, PARTITIONS, PREFIX,
};
use support::nats::NatsServer;
use support::parity::*;

const TOKEN: &str = "parity-token";

/// A `forewarn serve` member (lease and ack wait 3 s) under `root/name` (a root used before
/// keeps its store: the same instance started again), dispatching to its path of `webhook`
/// with quick retries; with the single-machine configuration it was made from.
fn start_member(
    nats: &NatsServer,
    root: &std::path::Path,
    name: &str,
    model: &forewarn::predict::Artifact,
    hist: &SimHistory,
    webhook: &Webhook,
) -> Member {
    let setup = DaemonSetup {
        broker_url: format!("mqtt://127.0.0.1:{}", nats.mqtt_port),
        topic_prefix: "devices".into(),
        client_id: format!("{name}-mqtt"),
        root: root.join(name),
        replay_chunk: None,
    };
    let mut cfg = daemon_config(&setup, model, hist);
    cfg.cluster.checkpoint_every = 200;
    cfg.dispatch.webhook_url = Some(webhook.url_of(name).into());
    cfg.dispatch.webhook_secret = Some("cluster-claims-secret".into());
    cfg.dispatch.retry_min = "200ms".parse().unwrap();
    cfg.dispatch.retry_max = "500ms".parse().unwrap();
    cfg.dispatch.max_attempts = 10_000;
    spawn_member(nats, &setup.root, name, cfg)
}

/// What each test here starts from: a NATS server, a simulated history on disk, the demo model,
/// an HTTP client and the dispatch webhook (None where no nats-server can run, outside CI).
struct Setup {
    nats: NatsServer,
    tmp: tempfile::TempDir,
    hist: SimHistory,
    model: forewarn::predict::Artifact,
    http: reqwest::Client,
    hook: std::sync::Arc<Webhook>,
}

impl Setup {
    async fn start(what: &str) -> Option<Setup> {
        let nats = NatsServer::start(what, PARTITIONS, PREFIX)?;
        forewarn::tls::install_crypto();
        let tmp = tempfile::tempdir().unwrap();
        let hist = SimHistory::write(&tmp.path().join("history"), 16, 30, 5);
        Some(Setup {
            nats,
            hist,
            tmp,
            model: demo_model(),
            http: reqwest::Client::new(),
            hook: Webhook::start().await,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persons_transition_left_unsent_by_a_killed_instance_is_sent_by_the_next_owner_and_not_again_after_its_restart(
) {
    let _one_at_a_time = support::cluster::ONE_CLUSTER_AT_A_TIME.lock().await;
    let Some(Setup {
        nats,
        tmp,
        hist,
        model,
        http,
        hook,
    }) = Setup::start("cluster_claims transition").await
    else {
        return;
    };
    let start = |name: &str| start_member(&nats, tmp.path(), name, &model, &hist, &hook);
    let mut instances = [start("fw-a"), start("fw-b")];
    {
        let live: Vec<&Member> = instances.iter().collect();
        until(
            Duration::from_secs(60),
            "the two instances never shared the partitions",
            &live,
            || settled(&http, &live, TOKEN),
        )
        .await;
    }

    // The history's readings, as devices send them; every ticket change they make is sent (the
    // webhook is up) and marked sent in the claims bucket.
    let (js, stream) = publish_readings(&nats, &hist).await;
    let both: Vec<&Member> = instances.iter().collect();
    // Every partition consumed, and the devices' last readings released from the reorder
    // buffers (idle timer, 1 s): the tickets are as the history leaves them.
    wait_drained(&stream, &both).await;
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
            TOKEN,
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
        TOKEN,
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
    hook.set_all_up(false);
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
    hook.set_all_up(true);
    let alive: Vec<&Member> = vec![&instances[survivor]];
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
    let both: Vec<&Member> = instances.iter().collect();
    until(
        Duration::from_secs(60),
        "the restarted instance never got ready",
        &both,
        || settled(&http, &both, TOKEN),
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

/// What an instance `fw-ghost` leaves in the claims bucket when it dies after claiming a
/// person's transition of `ticket` made at `at_ms`: its claimant key, the claim (naming it,
/// tracked) and the claim's index key.
async fn ghost_claims_transition(js: &jetstream::Context, ticket: &Ticket, at_ms: i64) -> String {
    let claims = js.get_key_value(CLAIMS).await.unwrap();
    let claim = format!("c.{}.transition.{at_ms}", ticket.id);
    let record = serde_json::json!({
        "instance": "fw-ghost",
        "change": "transition",
        "device_id": ticket.device_id.to_string(),
        "failure_mode": ticket.failure_mode,
        "opened_at": ticket.opened_at,
        "updated_at": ticket.updated_at,
        "tracked": true,
    });
    claims.put("i.fw-ghost", "".into()).await.unwrap();
    claims
        .put(format!("u.fw-ghost.{claim}"), "".into())
        .await
        .unwrap();
    claims
        .put(&claim, serde_json::to_vec(&record).unwrap().into())
        .await
        .unwrap();
    claim
}

/// A departed instance's claims of two transitions of one ticket: one whose record reached the
/// stream (it died after publishing it, before its rows were sent) is sent by the partition's
/// owner; one whose record never did (it died between the claim and the publish: the
/// transition was never made) is deleted with its index key and counted, rather than read
/// again at every listing until the bucket's `max_age`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transition_claimed_by_an_instance_that_died_before_recording_it_is_deleted_by_the_next_owner(
) {
    let _one_at_a_time = support::cluster::ONE_CLUSTER_AT_A_TIME.lock().await;
    let Some(Setup {
        nats,
        tmp,
        hist,
        model,
        http,
        hook,
    }) = Setup::start("cluster_claims unrecorded").await
    else {
        return;
    };
    let mut owner = start_member(&nats, tmp.path(), "fw-a", &model, &hist, &hook);
    {
        let alone = [&owner];
        until(
            Duration::from_secs(60),
            "the instance never owned every partition",
            &alone,
            || settled(&http, &alone, TOKEN),
        )
        .await;
    }
    let (js, stream) = publish_readings(&nats, &hist).await;
    wait_drained(&stream, &[&owner]).await;
    let waited = Instant::now();
    let ticket: Ticket = loop {
        let list: Vec<Ticket> = get_json(
            &http,
            &format!("http://{}/api/v1/tickets?status=open", owner.api),
            TOKEN,
        )
        .await
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
        if let Some(t) = list.into_iter().next() {
            break t;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(90),
            "no open ticket:\n{}",
            owner.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // While the owner is stopped, fw-ghost's leftovers appear: two claimed transitions, the
    // record of the later one in the partition's stream, none of the earlier one.
    owner.stop();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let unrecorded = ghost_claims_transition(&js, &ticket, now_ms - 2_000).await;
    let recorded_at = now_ms - 1_000;
    let recorded = ghost_claims_transition(&js, &ticket, recorded_at).await;
    let mut record = forewarn::app::RecordedTransition::new(
        &ticket,
        Some(forewarn::domain::Status::Acknowledged),
        "api",
        "ช่างรับทราบแล้ว",
        None,
        forewarn::domain::Timestamp::from_millis(recorded_at),
    );
    record.instance = "fw-ghost".into();
    let p = partition::of_device(&ticket.device_id, PARTITIONS);
    js.publish(
        format!("{PREFIX}.{p}.forewarn.transition"),
        serde_json::to_vec(&record).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .expect("stored by the stream");

    let owner = start_member(&nats, tmp.path(), "fw-a", &model, &hist, &hook);
    let started = Instant::now();
    until(
        Duration::from_secs(60),
        "fw-ghost's recorded transition never reached the webhook",
        &[&owner],
        || {
            let taken = hook.transitions(&ticket.id, "acknowledged").1 >= 1;
            async move { taken }
        },
    )
    .await;
    until(
        Duration::from_secs(60),
        "fw-ghost's unrecorded transition claim was never deleted",
        &[&owner],
        || {
            let js = js.clone();
            let unrecorded = unrecorded.clone();
            async move {
                let keys = claim_keys(&js).await;
                !keys.contains(&unrecorded) && !keys.contains(&format!("u.fw-ghost.{unrecorded}"))
            }
        },
    )
    .await;
    let resolved_after = started.elapsed();
    let abandoned = metric(
        &http,
        &owner.api,
        "forewarn_cluster_outbox_claims_total{event=\"abandoned\"}",
    )
    .await;
    assert_eq!(abandoned, 1.0, "one claim abandoned:\n{}", owner.log_tail());
    until(
        Duration::from_secs(30),
        "the taken-over transition never marked sent",
        &[&owner],
        || {
            let js = js.clone();
            let recorded = recorded.clone();
            async move { claim_keys(&js).await.contains(&format!("s.{recorded}")) }
        },
    )
    .await;
    let claims = js.get_key_value(CLAIMS).await.unwrap();
    let taken: serde_json::Value =
        serde_json::from_slice(&claims.get(&recorded).await.unwrap().expect("the claim")).unwrap();
    assert_eq!(taken["instance"], "fw-a", "{taken}");
    assert_eq!(taken["taken_from"], "fw-ghost", "{taken}");
    assert_eq!(
        hook.transitions(&ticket.id, "acknowledged").1,
        1,
        "sent once"
    );
    let log = std::fs::read_to_string(&owner.log).unwrap_or_default();
    assert!(
        log.contains("its record never reached the stream"),
        "{}",
        owner.log_tail()
    );
    eprintln!(
        "fw-ghost's unrecorded transition claim deleted and its recorded one sent {:.2} s after \
         the owner started again",
        resolved_after.as_secs_f64()
    );
}
