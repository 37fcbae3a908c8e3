//! A cluster instance starved of CPU, against a real nats-server (started by the test, with
//! JetStream and the partition mapping) and real `forewarn serve` processes: the instance is
//! stopped (SIGSTOP) and let run (SIGCONT) over and over — a sliver of CPU now and then, as a
//! debug build gets on a loaded 2-core machine beside other clusters — from its start on. It
//! must still join, stand (in good standing: sending, claiming, consuming), take its share of
//! the partitions and consume them, and not lapse over and over while it stays starved; and
//! it must stay safe meanwhile (its fleet's tickets opened once each).
#![cfg(feature = "embedded-broker")]

mod support;

use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::cluster::{
    member_config, publish_history, readyz, spawn_member, wait_drained, wait_ready, Member,
    PARTITIONS, PREFIX,
};
use support::daemon::{self as d, TOKEN};
use support::nats::NatsServer;

/// Starts `forewarn serve` as cluster member `name` (its data under `root/name`) with the
/// example model (which scores devices of model P200) and `fleet` as its fleet file.
fn start(nats: &NatsServer, root: &std::path::Path, name: &str, fleet: &str) -> Member {
    let dir = root.join(name);
    let mut cfg = member_config(nats, &dir, name);
    let file = dir.join("fleet.toml");
    std::fs::write(&file, fleet).unwrap();
    cfg.fleet.file = Some(file);
    spawn_member(nats, &dir, name, cfg)
}

/// How the starved instance is let run: `FOREWARN_DRILL_STARVE=RUN_MS/STOPPED_MS`, by default
/// 100 ms, then stopped 2.2 s: a heartbeat can land only once every 2.3 s, later than three
/// quarters of the 3 s lease after the one before (so its standing runs out between two)
/// and earlier than the lease (so its membership key never expires).
fn duty() -> (Duration, Duration) {
    let spec = std::env::var("FOREWARN_DRILL_STARVE").unwrap_or_else(|_| "100/2200".into());
    let (run, stopped) = spec
        .split_once('/')
        .and_then(|(r, s)| Some((r.trim().parse().ok()?, s.trim().parse().ok()?)))
        .expect("FOREWARN_DRILL_STARVE is RUN_MS/STOPPED_MS");
    (Duration::from_millis(run), Duration::from_millis(stopped))
}

/// `GET` with the token; the JSON of a 2xx answer.
async fn get(http: &reqwest::Client, api: &str, path: &str, scope: bool) -> Option<Value> {
    let mut r = http.get(format!("http://{api}{path}")).bearer_auth(TOKEN);
    if scope {
        r = r.header("x-forewarn-scope", "instance");
    }
    let r = r.send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// The sum of the samples of metric `name` (a name and its labels) in `i`'s `/metrics`; asked
/// again when the request fails (a kept-alive connection the starved process dropped).
async fn metric(http: &reqwest::Client, i: &Member, name: &str) -> f64 {
    for _ in 0..20 {
        let answer = http.get(format!("http://{}/metrics", i.api)).send().await;
        if let Ok(text) = match answer {
            Ok(r) => r.text().await,
            Err(e) => Err(e),
        } {
            return text
                .lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .fold(0.0, |a, b| a + b);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{} never answered /metrics\n{}", i.name, i.log_tail());
}

/// Whether `i` answers `/readyz` 200 in good standing and owns its rendezvous share of the
/// partitions among `members`, none of them replaying.
async fn stands_with_its_share(http: &reqwest::Client, i: &Member, members: &[String]) -> bool {
    let Some((200, body)) = readyz(http, &i.api).await else {
        return false;
    };
    if body["cluster"]["standing"] == Value::Bool(false) {
        return false;
    }
    let Some(v) = get(http, &i.api, "/api/v1/cluster", false).await else {
        return false;
    };
    let owned: Vec<u32> = v["owned"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_u64().map(|p| p as u32))
        .collect();
    let replaying = v["replaying"].as_array().is_some_and(|r| !r.is_empty());
    !replaying && owned == forewarn::cluster::partition::share(&i.name, members, PARTITIONS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_starved_of_cpu_joins_stands_and_consumes_its_share_without_flapping() {
    let Some(nats) = NatsServer::start("cluster_starved", PARTITIONS, PREFIX) else {
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
    let b = start(&nats, tmp.path(), "fw-b", &fleet);
    wait_ready(&http, &b).await;

    // fw-a starts starved and stays starved until the end of the test.
    let (run, stopped) = duty();
    let a = start(&nats, tmp.path(), "fw-a", &fleet);
    let starved = a.starve(run, stopped);
    let started = Instant::now();
    let members = vec!["fw-a".to_string(), "fw-b".to_string()];
    let limit = Duration::from_secs(90);
    while !stands_with_its_share(&http, &a, &members).await {
        assert!(
            started.elapsed() < limit,
            "starved ({run:?} run, {stopped:?} stopped), fw-a never stood with its share \
             within {limit:?}: {:?}\n{}\n{}",
            readyz(&http, &a.api).await,
            a.log_tail(),
            b.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stood_after = started.elapsed();
    let lapsed_at_stand = metric(
        &http,
        &a,
        "forewarn_cluster_lease_events_total{event=\"lapsed\"}",
    )
    .await;

    // Readings of every device, half of them in fw-a's partitions: all consumed (acknowledged
    // once committed) while fw-a stays starved.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let messages: Vec<forewarn::replay::Message> = devices
        .iter()
        .flat_map(|id| {
            d::degrading(40)
                .into_iter()
                .enumerate()
                .map(move |(n, (h, t))| forewarn::replay::Message {
                    topic: format!("devices/{id}/telemetry"),
                    payload: d::reading(h, n as u64 + 1, t).into_bytes(),
                    is_reading: true,
                })
        })
        .collect();
    let published = Instant::now();
    publish_history(&js, &messages).await;
    let stream = js.get_stream("FOREWARN").await.unwrap();
    wait_drained(&stream, &[&a, &b]).await;
    let drained_after = published.elapsed();

    // Each device's ticket opened once, on its partition's owner: fw-a's own store has those of
    // its partitions.
    let own_a = forewarn::cluster::partition::share("fw-a", &members, PARTITIONS);
    let mine: Vec<&String> = devices
        .iter()
        .filter(|dev| own_a.contains(&forewarn::cluster::partition::of_device(dev, PARTITIONS)))
        .collect();
    let settle = Instant::now();
    let opened: BTreeMap<String, usize> = loop {
        let list = get(&http, &a.api, "/api/v1/tickets", true)
            .await
            .unwrap_or_default();
        let mut opened: BTreeMap<String, usize> = BTreeMap::new();
        for t in list.as_array().into_iter().flatten() {
            if let Some(dev) = t["device_id"].as_str() {
                *opened.entry(dev.to_string()).or_default() += 1;
            }
        }
        if mine.iter().all(|dev| opened.contains_key(*dev)) {
            break opened;
        }
        assert!(
            settle.elapsed() < Duration::from_secs(60),
            "fw-a never opened the tickets of its devices {mine:?}: {opened:?}\n{}",
            a.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        opened.values().all(|n| *n == 1),
        "a device's ticket twice: {opened:?}"
    );

    // Still starved, it keeps standing: no lapse after the one it may have had on its way in.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let lapsed = metric(
        &http,
        &a,
        "forewarn_cluster_lease_events_total{event=\"lapsed\"}",
    )
    .await;
    let suspended = metric(
        &http,
        &a,
        "forewarn_cluster_lease_events_total{event=\"suspended\"}",
    )
    .await;
    let still = stands_with_its_share(&http, &a, &members).await;
    let cycles = starved.cycles();
    drop(starved);
    eprintln!(
        "fw-a starved ({} ms run, {} ms stopped; {cycles} cycles): stood with its share {:.2} s \
         after its start, {} readings of {} devices drained {:.2} s after the publish began, \
         {} tickets of its devices opened once each; lapsed {lapsed} time(s) ({lapsed_at_stand} \
         before it first stood), standing ran out and came back without a rejoin {suspended} \
         time(s)",
        run.as_millis(),
        stopped.as_millis(),
        stood_after.as_secs_f64(),
        messages.len(),
        devices.len(),
        drained_after.as_secs_f64(),
        mine.len()
    );
    assert!(
        still,
        "fw-a no longer stands with its share while starved: {:?}\n{}",
        readyz(&http, &a.api).await,
        a.log_tail()
    );
    assert!(
        lapsed <= lapsed_at_stand + 1.0,
        "fw-a kept lapsing while starved: {lapsed_at_stand} before it stood, {lapsed} at the \
         end\n{}",
        a.log_tail()
    );
}
