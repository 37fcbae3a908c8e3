//! Cluster mode's test processes: `forewarn serve` members of one cluster (each its own
//! process, data directory and API port) against a [`super::nats::NatsServer`], and what the
//! cluster tests wait for and read — readiness, the partitions each member owns, the claims
//! bucket, the durable consumers draining — and a dispatch webhook on loopback that each
//! member reaches under its own path.

use super::http::get_text;
use super::nats::NatsServer;
use super::net::free_port;
use super::process::{sigterm, spawn_serve, write_config, Serve};
use async_nats::jetstream;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use forewarn::cluster::partition;
use futures_util::StreamExt;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Held by each test of a file that starts a cluster, so that the file's clusters run one after
/// the other: two clusters of debug-built instances side by side on a 2-core machine can starve
/// an instance's lease rounds past the 3 s lease, and a lapsed instance stands aside until it
/// rejoins (see README, "A frozen instance is fenced").
pub static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The partitions of every cluster test (the server's subject mapping has as many).
pub const PARTITIONS: u32 = 8;
/// The partitioned subjects' prefix.
pub const PREFIX: &str = "fwp";
/// The claims bucket (`cluster.buckets` left at its default).
pub const CLAIMS: &str = "forewarn-claims";

/// A `forewarn serve` process in cluster mode; killed (SIGKILL) when dropped.
pub struct Member {
    pub name: String,
    pub child: Option<Serve>,
    /// `HOST:PORT` of its API.
    pub api: String,
    /// Its folder: configuration, data directory, `serve.log`.
    pub root: PathBuf,
    pub log: PathBuf,
}

impl Member {
    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        // A `Serve` kills its process when dropped.
        self.child = None;
    }

    /// SIGTERM, and waits for the process to end (its leases released, its store closed).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            sigterm(&mut c);
        }
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGSTOP (`freeze: true`) or SIGCONT: a process paused, as a long stall would.
    pub fn freeze(&self, freeze: bool) {
        let pid = self.pid().expect("running") as i32;
        let signal = if freeze { libc::SIGSTOP } else { libc::SIGCONT };
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// Starves the process of CPU until the returned guard is dropped: it runs `run`, then is
    /// stopped (SIGSTOP) for `stopped`, over and over, as a process that gets a sliver of a
    /// loaded machine's CPU does (every wait it makes, a round trip to NATS included, can last
    /// up to `stopped`). Dropping the guard lets it run (SIGCONT) for good.
    pub fn starve(&self, run: Duration, stopped: Duration) -> Starved {
        let pid = self.pid().expect("running") as i32;
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let cycles = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = cycles.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                std::thread::sleep(run);
                unsafe {
                    libc::kill(pid, libc::SIGSTOP);
                }
                std::thread::sleep(stopped);
                unsafe {
                    libc::kill(pid, libc::SIGCONT);
                }
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
        Starved {
            pid,
            done,
            cycles,
            thread: Some(thread),
        }
    }

    /// The last 30 lines of its log, named.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("--- {} ---\n{tail}", self.name)
    }
}

/// A process being starved of CPU ([`Member::starve`]); let run for good when dropped.
pub struct Starved {
    pid: i32,
    done: Arc<AtomicBool>,
    cycles: Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Starved {
    /// How many times it has been stopped and let run again so far.
    pub fn cycles(&self) -> u64 {
        self.cycles.load(Ordering::SeqCst)
    }
}

impl Drop for Starved {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        unsafe {
            libc::kill(self.pid, libc::SIGCONT);
        }
    }
}

/// Starts `forewarn serve` as cluster member `name` of `nats` from `cfg`, in `dir` (kept
/// across restarts: the same member started again): a free API port, the cluster's URL, the
/// member's name, [`PARTITIONS`] under [`PREFIX`], lease and acknowledgement wait 3 s (what
/// `cfg` says of the rest of `[cluster]` stands).
/// The configuration of cluster member `name` whose files live under `dir`: NATS's MQTT
/// listener as its broker, the example model (which scores devices of model P200) saved into
/// `dir/models`, the test token, its store in `dir/data` with a small cache, and a 100 ms idle
/// release of the reorder buffer.
pub fn member_config(nats: &NatsServer, dir: &Path, name: &str) -> forewarn::config::Config {
    std::fs::create_dir_all(dir.join("models")).unwrap();
    super::daemon::hot_model()
        .save(&dir.join("models/hot.json"))
        .unwrap();
    let mut cfg = forewarn::config::Config::default();
    cfg.broker.url = format!("mqtt://127.0.0.1:{}", nats.mqtt_port);
    cfg.broker.client_id = format!("{name}-mqtt");
    cfg.api.tokens = vec![forewarn::api::TokenConfig::Bare(
        super::daemon::TOKEN.into(),
    )];
    cfg.store.data_dir = dir.join("data");
    cfg.store.cache_bytes = 8 << 20;
    cfg.scoring.models_dir = dir.join("models");
    cfg.ingest.reorder_idle = Some("100ms".parse().unwrap());
    cfg
}

pub fn spawn_member(
    nats: &NatsServer,
    dir: &Path,
    name: &str,
    mut cfg: forewarn::config::Config,
) -> Member {
    let api = format!("127.0.0.1:{}", free_port());
    cfg.api.listen = api.clone();
    // `nats`, and the drills' short lease (3 s), unless the configuration names its own (a
    // drill on a NATS cluster: every server, and a lease longer than a leader election).
    let defaults = forewarn::cluster::Config::default();
    if cfg.cluster.url.is_none() {
        cfg.cluster.url = Some(nats.url());
    }
    if cfg.cluster.lease == defaults.lease {
        cfg.cluster.lease = "3s".parse().unwrap();
    }
    cfg.cluster.instance = Some(name.into());
    cfg.cluster.partitions = PARTITIONS;
    cfg.cluster.subject_prefix = PREFIX.into();
    cfg.cluster.ack_wait = "3s".parse().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let path = write_config(dir, &cfg);
    let log = dir.join("serve.log");
    let child = spawn_serve(&path, &log, "info");
    Member {
        name: name.into(),
        child: Some(child),
        api,
        root: dir.to_path_buf(),
        log,
    }
}

/// The last lines of each member's log, for a failure message.
pub fn tails(members: &[&Member]) -> String {
    members
        .iter()
        .map(|m| m.log_tail())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `GET /readyz`: the status code and the body.
pub async fn readyz(http: &reqwest::Client, api: &str) -> Option<(u16, serde_json::Value)> {
    let r = http.get(format!("http://{api}/readyz")).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().await.ok()?))
}

/// Waits (at most 60 s) until the member answers `/readyz` 200; its body.
pub async fn wait_ready(http: &reqwest::Client, m: &Member) -> serde_json::Value {
    let started = Instant::now();
    loop {
        if let Some((200, body)) = readyz(http, &m.api).await {
            return body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} never ready: {:?}\n{}",
            m.name,
            readyz(http, &m.api).await,
            m.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `GET` with the bearer token `token`: the JSON body of a 2xx answer.
pub async fn get_json(http: &reqwest::Client, url: &str, token: &str) -> Option<serde_json::Value> {
    let r = http.get(url).bearer_auth(token).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// The sum of the series of metric `name` (a prefix of the line: a name, or a name and its
/// labels) in the member's `/metrics`.
pub async fn metric(http: &reqwest::Client, api: &str, name: &str) -> f64 {
    let text = get_text(http, format!("http://{api}/metrics")).await;
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// [`metric`] summed over the members.
pub async fn metric_sum(http: &reqwest::Client, live: &[&Member], name: &str) -> f64 {
    let mut sum = 0.0;
    for m in live {
        sum += metric(http, &m.api, name).await;
    }
    sum
}

/// Waits (up to `limit`) for `ok`, polling every 200 ms; fails with `what` and the log tails.
pub async fn until<F, Fut>(limit: Duration, what: &str, live: &[&Member], mut ok: F)
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

/// Each member's owned partitions, from `GET /api/v1/cluster` (read with `token`); with
/// `settled`, `None` while any of them is still replaying a partition it took over.
pub async fn ownership(
    http: &reqwest::Client,
    live: &[&Member],
    token: &str,
    settled: bool,
) -> Option<BTreeMap<String, Vec<u32>>> {
    let mut out = BTreeMap::new();
    for m in live {
        let v = get_json(http, &format!("http://{}/api/v1/cluster", m.api), token).await?;
        if settled && !v["replaying"].as_array()?.is_empty() {
            return None;
        }
        let owned = v["owned"]
            .as_array()?
            .iter()
            .filter_map(|p| p.as_u64().map(|p| p as u32))
            .collect();
        out.insert(m.name.clone(), owned);
    }
    Some(out)
}

/// Whether the owned sets cover every partition exactly once.
pub fn covers_all(own: &BTreeMap<String, Vec<u32>>) -> bool {
    let mut all: Vec<u32> = own.values().flatten().copied().collect();
    all.sort_unstable();
    all == (0..PARTITIONS).collect::<Vec<_>>()
}

/// Whether each member owns exactly its rendezvous share among the members listed.
pub fn in_rendezvous_shares(own: &BTreeMap<String, Vec<u32>>) -> bool {
    let members: Vec<String> = own.keys().cloned().collect();
    own.iter()
        .all(|(name, o)| *o == partition::share(name, &members, PARTITIONS))
}

/// Whether every member is ready and, between them, they own every partition.
pub async fn settled(http: &reqwest::Client, live: &[&Member], token: &str) -> bool {
    for m in live {
        if !matches!(readyz(http, &m.api).await, Some((200, _))) {
            return false;
        }
    }
    ownership(http, live, token, false)
        .await
        .is_some_and(|own| covers_all(&own))
}

/// The claims bucket's live keys. A listing that fails or does not end within 10 s (a NATS
/// cluster moving a leader) is made again, for at most 30 s.
pub async fn claim_keys(js: &jetstream::Context) -> BTreeSet<String> {
    let started = Instant::now();
    loop {
        let listed = tokio::time::timeout(Duration::from_secs(10), try_claim_keys(js))
            .await
            .unwrap_or_else(|_| Err("no end of the listing within 10 s".into()));
        match listed {
            Ok(all) => return all,
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "the claims bucket could not be listed for 30 s: {e}"
                );
                eprintln!("listing the claims bucket failed ({e}); listing it again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The keys from the bucket stream's subjects, each kept if its last value is not a delete
/// (not the client's `keys()`: its listing consumer can be placed on a server that is down).
async fn try_claim_keys(js: &jetstream::Context) -> Result<BTreeSet<String>, String> {
    let claims = js.get_key_value(CLAIMS).await.map_err(|e| e.to_string())?;
    let prefix = format!("$KV.{CLAIMS}.");
    let mut subjects = claims
        .stream
        .info_with_subjects(format!("{prefix}>"))
        .await
        .map_err(|e| e.to_string())?;
    let mut all = BTreeSet::new();
    while let Some(s) = subjects.next().await {
        let (subject, _) = s.map_err(|e| e.to_string())?;
        let Some(key) = subject.strip_prefix(prefix.as_str()) else {
            continue;
        };
        let entry = claims.entry(key).await.map_err(|e| e.to_string())?;
        if entry.is_some_and(|e| e.operation == async_nats::jetstream::kv::Operation::Put) {
            all.insert(key.to_string());
        }
    }
    Ok(all)
}

/// The claimed ticket changes (`t.…`, `c.…`) without their sent mark.
pub fn unmarked(keys: &BTreeSet<String>) -> Vec<String> {
    keys.iter()
        .filter(|k| k.starts_with("t.") || k.starts_with("c."))
        .filter(|k| !keys.contains(&format!("s.{k}")))
        .cloned()
        .collect()
}

/// Publishes `batch` to JetStream as devices send it (`devices.ID.telemetry|events`), waiting
/// for the stream to store each chunk.
pub async fn publish_history(js: &jetstream::Context, batch: &[forewarn::replay::Message]) {
    for chunk in batch.chunks(500) {
        let mut acks = Vec::new();
        for m in chunk {
            acks.push(
                js.publish(m.topic.replace('/', "."), m.payload.clone().into())
                    .await
                    .unwrap(),
            );
        }
        for a in acks {
            a.await.expect("stored by the stream");
        }
    }
}

/// Publishes `batch` as [`publish_history`] does, through a NATS cluster that may be electing
/// a new stream leader. Each message carries an id (`Nats-Msg-Id`: `first` plus its place in
/// `batch`), so the stream stores a message published again only once. The first message is
/// published alone until it is stored (the stream has a leader again); then a chunk not
/// wholly stored is published again in full, in order. Fails after 60 s.
pub async fn publish_history_retrying(
    js: &jetstream::Context,
    batch: &[forewarn::replay::Message],
    first: usize,
) {
    let started = Instant::now();
    let mut from = 0;
    while from < batch.len() {
        let size = if from == 0 { 1 } else { 500 };
        let chunk = &batch[from..(from + size).min(batch.len())];
        match publish_with_ids(js, chunk, first + from).await {
            Ok(()) => from += chunk.len(),
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "the stream stored nothing new for 60 s: {e}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// Publishes `chunk` with ids `m<first>`, `m<first + 1>`, …; whether JetStream stored all.
async fn publish_with_ids(
    js: &jetstream::Context,
    chunk: &[forewarn::replay::Message],
    first: usize,
) -> Result<(), String> {
    let mut acks = Vec::new();
    for (i, m) in chunk.iter().enumerate() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("m{}", first + i).as_str(),
        );
        let subject = m.topic.replace('/', ".");
        let ack = js
            .publish_with_headers(subject, headers, m.payload.clone().into())
            .await
            .map_err(|e| e.to_string())?;
        acks.push(ack);
    }
    for a in acks {
        a.await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Publishes the history's readings only, as devices send them (no failure or maintenance
/// event settles a ticket, so some stay open), and returns the JetStream context and the
/// deployment's stream.
pub async fn publish_readings(
    nats: &NatsServer,
    hist: &super::parity::SimHistory,
) -> (jetstream::Context, jetstream::stream::Stream) {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    let messages: Vec<forewarn::replay::Message> = hist
        .replay()
        .messages("devices")
        .filter(|m| m.topic.ends_with("/telemetry"))
        .collect();
    publish_history(&js, &messages).await;
    let stream = js.get_stream("FOREWARN").await.unwrap();
    (js, stream)
}

/// Waits (up to 120 s) until no durable partition consumer has anything pending or
/// unacknowledged.
pub async fn wait_drained(stream: &jetstream::stream::Stream, live: &[&Member]) {
    let drained = Instant::now();
    loop {
        let mut left = 0;
        for p in 0..PARTITIONS {
            match stream.consumer_info(format!("fw-p{p}")).await {
                Ok(i) => left += i.num_pending + i.num_ack_pending as u64,
                Err(_) => left += 1,
            }
        }
        if left == 0 {
            break;
        }
        assert!(
            drained.elapsed() < Duration::from_secs(120),
            "{left} message(s) still pending:\n{}",
            tails(live)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A field-service webhook on loopback: `POST /dispatch/<member>` answers 200, or 503 while
/// that member's path is down (all paths are up at first); every request is kept, with its
/// path's member, whether it was taken, and its body (as JSON).
#[derive(Default)]
pub struct Webhook {
    down: Mutex<BTreeSet<String>>,
    /// `(member, taken, body)` of every request, in arrival order.
    seen: Mutex<Vec<(String, bool, serde_json::Value)>>,
    /// Whether any path is down for everyone (`set_all_up(false)`).
    all_down: AtomicBool,
    base: String,
}

impl Webhook {
    pub async fn start() -> Arc<Webhook> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hook = Arc::new(Webhook {
            base: format!("http://{addr}/dispatch"),
            ..Webhook::default()
        });
        let app = axum::Router::new()
            .route(
                "/dispatch/{member}",
                axum::routing::post(
                    |State(h): State<Arc<Webhook>>,
                     UrlPath(member): UrlPath<String>,
                     body: axum::body::Bytes| async move {
                        let up = !h.all_down.load(Ordering::SeqCst)
                            && !h.down.lock().unwrap().contains(&member);
                        let json = serde_json::from_slice(&body).unwrap_or_default();
                        h.seen.lock().unwrap().push((member, up, json));
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
        hook
    }

    /// The URL member `name` dispatches to.
    pub fn url_of(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    /// Every path answers 503 (`false`) or as its own setting says (`true`).
    pub fn set_all_up(&self, up: bool) {
        self.all_down.store(!up, Ordering::SeqCst);
    }

    /// Member `name`'s path answers 200 (`true`) or 503.
    pub fn set_up(&self, name: &str, up: bool) {
        let mut down = self.down.lock().unwrap();
        if up {
            down.remove(name);
        } else {
            down.insert(name.to_string());
        }
    }

    /// Every request so far: `(member, taken, body)`.
    pub fn seen(&self) -> Vec<(String, bool, serde_json::Value)> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests announced transition `to` of ticket `id`: `(answered 503, taken)`.
    pub fn transitions(&self, id: &str, to: &str) -> (usize, usize) {
        let seen = self.seen.lock().unwrap();
        let of = seen.iter().filter(|(_, _, b)| {
            b["event"] == "ticket.transition"
                && b["ticket"]["id"] == id
                && b["ticket"]["status"] == to
        });
        let (taken, refused): (Vec<_>, Vec<_>) = of.partition(|(_, taken, _)| *taken);
        (refused.len(), taken.len())
    }
}

/// The claim key a dispatch webhook body announces (`t.ID` for an opening, `c.ID.KIND.MS` for
/// an update or a settlement at its `updated_at`); `None` for a transition (its key is the
/// time of its history entry) or a body that does not read.
pub fn announced_claim(body: &serde_json::Value) -> Option<String> {
    let id = body["ticket"]["id"].as_str()?;
    let kind = body["event"].as_str()?.strip_prefix("ticket.")?;
    match kind {
        "opened" => Some(format!("t.{id}")),
        "updated" | "settled" => {
            let at = forewarn::domain::Timestamp::parse(body["ticket"]["updated_at"].as_str()?)?;
            Some(format!("c.{id}.{kind}.{}", at.as_millis()))
        }
        _ => None,
    }
}
