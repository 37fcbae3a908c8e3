//! `forewarn serve`, as a library: [`run`] starts every stage from the configuration and returns
//! a [`Handle`] with the bound API address; cancelling the token shuts the daemon down in order.
//!
//! The story of a reading: the MQTT polling task (`ingest::mqtt::drive`) forwards publishes over
//! a bounded channel → the processing thread takes what has arrived (up to
//! `ingest.commit_group`), runs it through the engine under the core lock (the group's devices
//! shared out to `ingest.apply_threads` threads, each device on one) and applies its steps
//! (one step log record), tickets and outbox rows in one atomic batch
//! (`app::App::process_group_applied`) → the flusher makes it durable (one fsync for every group
//! waiting, while the processor goes on with the next) → the acker sends the group's acks → the
//! dispatcher publishes the ticket changes from the outbox (rows are read durable).
//!
//! Cluster mode (`[cluster]`): the same processor, flusher and acker, fed by the partitions this
//! instance leases from a JetStream stream instead of MQTT subscriptions (`cluster`); the MQTT
//! connection then only carries the dispatcher's ticket publishes.
//!
//! Shutdown (one token): the polling task stops forwarding → the processor drains what it holds,
//! commits and hands over the last acks → the acker sends them → the polling task disconnects.
//! The API server and the dispatcher stop on the same token.
//!
//! The data directory's lock ([`standby::DataDirLock`]) is taken before the store is opened and
//! released only after everything has stopped; `serve --standby` waits on it ([`standby`]).

pub mod standby;

use crate::app::{self, App, Settings};
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::fleet::FleetFile;
use crate::ingest::mqtt::Publish;
use crate::ingest::mqtt::{self, ConnectionObserver, DriveOptions, Inbound};
use crate::metrics::Metrics;
use crate::notify::{Notifier, TicketDesk};
use crate::store::{Store, StoreError};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Bad configuration, fleet file or model artifact: exit code 2.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Lock(#[from] standby::LockError),
    #[error("{0}")]
    Runtime(String),
}

impl ServeError {
    pub fn is_config(&self) -> bool {
        matches!(self, ServeError::Config(_))
    }
}

/// A running daemon.
pub struct Handle {
    /// Where the HTTP API listens.
    pub api_addr: SocketAddr,
    /// Where the public routes listen on their own (`api.public_listen`), if they do.
    pub public_addr: Option<SocketAddr>,
    pub app: Arc<App>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    processor: std::thread::JoinHandle<()>,
    /// The data directory's lock: released only once every stage has stopped, so a standby
    /// cannot take the directory while this process still drains into it.
    lock: standby::DataDirLock,
}

impl Handle {
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until every stage has stopped (after the shutdown token is cancelled), at most
    /// `grace` for the background tasks.
    pub async fn stopped(self, grace: Duration) {
        let Handle {
            app,
            tasks,
            processor,
            lock,
            ..
        } = self;
        let _ = tokio::task::spawn_blocking(move || processor.join()).await;
        let all = futures_join(tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("some tasks did not stop within {grace:?}");
        }
        tracing::info!("stopped");
        drop(app);
        drop(lock);
    }
}

async fn futures_join(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

/// What `--check-config` found.
#[derive(Debug)]
pub struct CheckSummary {
    pub models: usize,
    pub modes: usize,
    pub devices: usize,
    pub customers: usize,
}

const TICKET_ID_KEY: &str = "ticket_id_key";

/// The key this daemon's ticket ids are derived under: 32 random bytes made at the first start
/// and kept in the data directory, so ids stay the same across restarts and cannot be computed
/// by anyone who knows only a device id and a time.
fn ticket_id_key(store: &Store) -> Result<Vec<u8>, ServeError> {
    let stored = store
        .get_kv::<Vec<u8>>(TICKET_ID_KEY)
        .map_err(|e| ServeError::Runtime(format!("ticket id key: {e}")))?;
    if let Some(k) = stored.filter(|k| k.len() == 32) {
        return Ok(k);
    }
    let mut key = vec![0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut key[..]);
    let mut tx = store.tx();
    tx.put_kv(TICKET_ID_KEY, &key);
    store
        .commit(tx)
        .map_err(|e| ServeError::Runtime(format!("ticket id key: {e}")))?;
    Ok(key)
}

/// Validates everything `serve` would load at start — configuration, fleet file (contacts
/// included), model artifacts, broker URL and CA file, the API tokens file — without starting
/// anything.
pub fn check(cfg: &Config) -> Result<CheckSummary, ServeError> {
    let fleet = load_fleet(cfg)?;
    let artifacts = crate::predict::load_dir(&cfg.scoring.models_dir)
        .map_err(|e| ServeError::Config(format!("config key scoring.models_dir: {e}")))?;
    let modes = artifacts.iter().map(|a| a.modes.len()).sum();
    let models = artifacts.len();
    crate::engine::Models::new(artifacts, &cfg.features.window())
        .map_err(|e| ServeError::Config(format!("config key scoring.models_dir: {e}")))?;
    mqtt::options(&cfg.broker, &cfg.broker.client_id)
        .map_err(|e| ServeError::Config(e.to_string()))?;
    crate::api::Auth::new(&cfg.api).map_err(|e| ServeError::Config(format!("api: {e}")))?;
    crate::notify::templates::Templates::load(
        cfg.notify.templates_dir.as_deref(),
        &cfg.notify.fallback_locale,
    )
    .map_err(|e| ServeError::Config(format!("notify templates: {e}")))?;
    Ok(CheckSummary {
        models,
        modes,
        devices: fleet.devices.len(),
        customers: fleet.customers.len(),
    })
}

/// Where customers' webhook contacts may point: `[notify.webhook] allow`.
fn contact_policy(cfg: &Config) -> Result<crate::netguard::AddressPolicy, ServeError> {
    let allow = cfg
        .notify
        .webhook
        .as_ref()
        .map(|w| w.allow.clone())
        .unwrap_or_default();
    crate::netguard::AddressPolicy::new(&allow)
        .map_err(|e| ServeError::Config(format!("config key notify.webhook.allow: {e}")))
}

/// The fleet file, with every customer's contacts checked against the address policy.
fn load_fleet(cfg: &Config) -> Result<FleetFile, ServeError> {
    let f = match &cfg.fleet.file {
        Some(p) => FleetFile::load(p).map_err(|e| ServeError::Config(format!("fleet file {e}")))?,
        None => FleetFile::default(),
    };
    let policy = contact_policy(cfg)?;
    for c in &f.customers {
        c.validate_with(&policy)
            .map_err(|e| ServeError::Config(format!("fleet file: {e}")))?;
    }
    Ok(f)
}

struct Observer {
    app: Arc<App>,
    /// The broker and client id, for the session check at the first connection.
    broker: String,
    client_id: String,
    checked: std::sync::atomic::AtomicBool,
}

impl ConnectionObserver for Observer {
    fn connected(&self, session_present: bool) {
        if !self.checked.swap(true, Ordering::Relaxed) {
            self.app
                .check_session(session_present, &self.broker, &self.client_id);
        }
        self.app.broker_connected.store(true, Ordering::Relaxed);
        self.app.metrics.broker_connected.set(1);
        self.app.metrics.broker_connects.inc();
        // Retained ticket publishes that waited for the broker can go now.
        self.app.dispatch_wake.notify_one();
    }
    fn disconnected(&self, error: &str) {
        if self.app.broker_connected.swap(false, Ordering::Relaxed) {
            self.app.metrics.broker_disconnects.inc();
            tracing::warn!("disconnected from broker: {error}");
        }
        self.app.metrics.broker_connected.set(0);
    }
}

/// Starts the daemon: store, models, fleet, notifier, API, MQTT, processor, dispatcher, reload
/// on SIGHUP.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<Handle, ServeError> {
    run_with_clock(cfg, shutdown, Arc::new(crate::notify::SystemClock)).await
}

/// [`run`] with the clock customer messages and API transitions are stamped and scheduled by:
/// the wall clock in production; the demo's simulated clock, so its messages speak of the
/// simulated days (dates, quiet hours, reminders) rather than of today.
pub async fn run_with_clock(
    cfg: Config,
    shutdown: CancellationToken,
    clock: Arc<dyn crate::notify::Clock>,
) -> Result<Handle, ServeError> {
    start(cfg, shutdown, clock, None).await
}

/// [`run`] for a standby that got the data directory ([`standby::wait`]): on the lock and the
/// API listener it already holds; counts the takeover and its duration.
pub async fn run_taken_over(
    cfg: Config,
    shutdown: CancellationToken,
    takeover: standby::TakeOver,
) -> Result<Handle, ServeError> {
    start(
        cfg,
        shutdown,
        Arc::new(crate::notify::SystemClock),
        Some(takeover),
    )
    .await
}

/// How long a process that has the data directory's lock waits for sled's own lock on the
/// store: the previous holder's sled files close a moment after its lock file does.
const STORE_LOCK_WAIT: Duration = Duration::from_secs(10);

fn open_store(cfg: &Config) -> Result<Store, ServeError> {
    let deadline = std::time::Instant::now() + STORE_LOCK_WAIT;
    loop {
        match Store::open(&cfg.store.data_dir, cfg.store.cache_bytes) {
            Err(e) if Store::is_locked_error(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r.map_err(ServeError::from),
        }
    }
}

async fn start(
    cfg: Config,
    shutdown: CancellationToken,
    clock: Arc<dyn crate::notify::Clock>,
    takeover: Option<standby::TakeOver>,
) -> Result<Handle, ServeError> {
    crate::tls::install_crypto();
    // Checked here too (not only by `Config::load`): open reads on a public address must not
    // start whoever built the configuration.
    cfg.api
        .validate()
        .map_err(|(key, message)| ServeError::Config(format!("config key api.{key}: {message}")))?;
    let fleet = load_fleet(&cfg)?;
    let webhook_policy = contact_policy(&cfg)?;
    let artifacts = crate::predict::load_dir(&cfg.scoring.models_dir)
        .map_err(|e| ServeError::Config(format!("config key scoring.models_dir: {e}")))?;
    let mqtt_opts = mqtt::options(&cfg.broker, &cfg.broker.client_id)
        .map_err(|e| ServeError::Config(e.to_string()))?;
    std::fs::create_dir_all(&cfg.store.data_dir).map_err(|e| {
        ServeError::Runtime(format!(
            "cannot create data dir {}: {e}",
            cfg.store.data_dir.display()
        ))
    })?;
    let (lock, prebound, waited) = match takeover {
        Some(t) => (t.lock, t.listener, t.waited),
        None => (
            standby::DataDirLock::acquire_now(&cfg.store.data_dir)?,
            None,
            None,
        ),
    };
    let store = open_store(&cfg)?;
    let base = app::load_metric_index(&store);
    let models = crate::engine::Models::with_index(artifacts, &cfg.features.window(), base)
        .map_err(|e| ServeError::Config(format!("config key scoring.models_dir: {e}")))?;
    app::save_metric_index(&store, &models.index)?;
    if !fleet.customers.is_empty() || !fleet.devices.is_empty() {
        let applied = crate::fleet::apply_file(&store, &fleet)?;
        tracing::info!(
            "fleet file: {} record(s) written, {} left as the registry has them",
            applied.written,
            applied.kept
        );
    }
    let registry = prometheus::Registry::new();
    // Built (templates checked, providers set up) before anything starts, so a bad template or
    // provider table is a config error at start.
    let notifier = Arc::new(
        Notifier::build(&cfg.notify, &cfg.api.public_url, &registry)
            .map_err(|e| ServeError::Config(e.to_string()))?
            .with_clock(clock),
    );
    let metrics = Metrics::new(&registry);
    let n_models = models.list.len();
    // Cluster mode: connected before anything reads, so the shared ticket-id secret is known.
    let cluster = match cfg.cluster.enabled() {
        true => Some(
            crate::cluster::Cluster::connect(&cfg.cluster, &registry)
                .await
                .map_err(|e| ServeError::Runtime(e.to_string()))?,
        ),
        false => None,
    };
    let mut engine = cfg.engine_config();
    engine.ticket_id_key = match &cluster {
        Some(c) => c.ticket_id_key(),
        None => ticket_id_key(&store)?,
    };
    let settings = Settings {
        contact_policy: webhook_policy,
        ingest: cfg.ingest.clone(),
        engine,
        window: cfg.features.window(),
        models_dir: cfg.scoring.models_dir.clone(),
        rejects_per_minute: cfg.log.rejects_per_minute,
        has_webhook: cfg.dispatch.webhook_url.is_some(),
        reorder_idle: cfg.ingest.reorder_idle.map_or(
            Duration::from_millis(cfg.features.window().late_tolerance_ms.max(0) as u64),
            |d| d.std(),
        ),
        snapshot_every: cfg.store.snapshot_every,
    };
    let archive = crate::archive::Archive::build(&cfg.archive, &cfg.store.data_dir, &registry)
        .map_err(|e| ServeError::Config(e.to_string()))?;
    crate::outcomes::register(&registry, store.clone())
        .map_err(|e| ServeError::Runtime(e.to_string()))?;
    let mut app = App::new(settings, store, metrics, models, notifier.clone())
        .map_err(|e| ServeError::Runtime(e.to_string()))?;
    app.archive = archive;
    if let Some(c) = &cluster {
        app.fleetwide = Some(c.clone());
    }
    let app = Arc::new(app);
    // Counted before the API serves, so a /readyz that says ready already shows the takeover.
    if let Some((locked_at, waited)) = waited {
        let took = locked_at.elapsed();
        app.metrics.role.takeovers.inc();
        app.metrics.role.takeover_seconds.set(took.as_secs_f64());
        tracing::warn!(
            "standby: took over the data directory {} (stood by {waited:?}; store opened and \
             recovered in {took:?}); resuming the broker session as {}",
            cfg.store.data_dir.display(),
            cfg.broker.client_id
        );
    }
    let auth = Arc::new(
        crate::api::Auth::new(&cfg.api).map_err(|e| ServeError::Config(format!("api: {e}")))?,
    );
    if !auth.has_tokens() {
        tracing::warn!(
            "no API tokens configured (api.tokens, api.tokens_file, FOREWARN_API_TOKEN): \
             every call but /metrics and the health checks is refused"
        );
    }
    if !cfg.api.protect_reads {
        tracing::warn!(
            "api.protect_reads = false: reads are open to anyone who can reach {}",
            cfg.api.listen
        );
    }

    let listener = match prebound {
        Some(l) => tokio::net::TcpListener::from_std(l).map_err(|source| ServeError::Listen {
            addr: cfg.api.listen.clone(),
            source,
        })?,
        None => bind(&cfg.api.listen).await?,
    };
    let api_addr = local_addr(&listener, &cfg.api.listen)?;
    if let Some(c) = &cluster {
        c.set_api_addr(api_addr);
    }
    let public_listener = match &cfg.api.public_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let public_addr = match (&public_listener, &cfg.api.public_listen) {
        (Some(l), Some(addr)) => Some(local_addr(l, addr)?),
        _ => None,
    };
    let desk: Arc<dyn TicketDesk> = app.clone();
    let notify = crate::api::notify_routes(
        notifier.clone(),
        app.store.clone(),
        desk.clone(),
        auth.clone(),
        &cfg.api,
    );
    let limits = crate::api::server::Limits::from_config(&cfg.api);
    let mut router = crate::api::router(app.clone(), auth.clone(), &cfg.api).merge(notify.private);
    if cfg.board.enabled {
        // The board stays on the private listener, beside the API it shares tokens with.
        let board = crate::board::Board::build(
            &cfg.board,
            app.clone(),
            auth.clone(),
            &cfg.api.public_url,
            shutdown.clone(),
        )
        .map_err(|e| ServeError::Config(e.to_string()))?;
        router = router.merge(board.router(cfg.api.max_body_bytes));
    }
    let mut tasks = Vec::new();
    let grace = cfg.shutdown.grace.std();
    match public_listener {
        Some(l) => {
            // The public listener has the provider callbacks and the page, and a liveness check
            // for the proxy in front of it; nothing else.
            let public = notify.public.route(
                "/healthz",
                axum::routing::get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
            );
            let public = crate::api::server::harden(public, &limits);
            tasks.push(tokio::spawn(crate::api::server::serve(
                l,
                public,
                limits.clone(),
                shutdown.clone(),
                grace,
            )));
        }
        None => router = router.merge(notify.public),
    }
    let router = crate::api::server::harden(router, &limits);
    tasks.push(tokio::spawn(crate::api::server::serve(
        listener,
        router,
        limits,
        shutdown.clone(),
        grace,
    )));

    // MQTT: polling task → bounded channel → processor thread → acker.
    let (client, eventloop) = mqtt_opts.connect(4096);
    // Capacity: a few groups' worth. When full, the polling task waits (backpressure through
    // the broker's in-flight window); nothing is dropped.
    let (fwd_tx, fwd_rx) =
        mpsc::channel::<Inbound>(cfg.ingest.commit_group.saturating_mul(4).max(64));
    let (ack_tx, ack_rx) = mpsc::unbounded_channel::<Vec<Publish>>();
    let acks_flushed = CancellationToken::new();
    let mut filters = cfg.ingest.telemetry_topics.clone();
    filters.extend(cfg.ingest.event_topics.iter().cloned());
    // One subscription for readings and events where possible: a device's messages then arrive
    // in the order it sent them (see `ordered_subscriptions`).
    let mut subscriptions = mqtt::ordered_subscriptions(&filters);
    // Sparkplug B and SenML topics, when configured.
    subscriptions.extend(crate::ingest::formats::subscriptions(&cfg.ingest));
    // The broker's own word on what it dropped (Mosquitto's $SYS tree; a broker without it
    // simply never publishes there).
    app.metrics.broker_dropped.set(-1);
    let data_filters = subscriptions.len();
    if !cfg.ingest.broker_drops_topic.is_empty() {
        subscriptions.push(cfg.ingest.broker_drops_topic.clone());
    }
    let subscriptions = mqtt::shared(
        &subscriptions,
        cfg.ingest.shared_group.as_deref(),
        data_filters,
    );
    // Cluster mode reads the fleet from the stream; the MQTT connection only carries the
    // dispatcher's ticket publishes.
    let subscriptions = match &cluster {
        Some(_) => Vec::new(),
        None => subscriptions,
    };
    if mqtt::ordered_subscriptions(&filters).len() > 1 {
        tracing::warn!(
            "telemetry and event topic filters differ in shape; subscribing to each: the broker \
             may deliver a device's events out of order with its readings"
        );
    }
    // The stream's partitions forward to the same processor (cluster mode).
    let cluster_fwd = cluster.as_ref().map(|_| fwd_tx.clone());
    tasks.push(tokio::spawn(mqtt::drive(
        eventloop,
        client.clone(),
        fwd_tx,
        DriveOptions {
            subscriptions,
            reconnect_min: cfg.broker.reconnect_min.std(),
            reconnect_max: cfg.broker.reconnect_max.std(),
            grace: cfg.shutdown.ack_grace.std(),
        },
        Arc::new(Observer {
            app: app.clone(),
            broker: cfg.broker.url.clone(),
            client_id: cfg.broker.client_id.clone(),
            checked: std::sync::atomic::AtomicBool::new(false),
        }),
        shutdown.clone(),
        acks_flushed.clone(),
    )));
    // Sparkplug rebirth requests go out through the same client, from their own task.
    if let Some(commands) = app.formats().take_commands() {
        tasks.push(tokio::spawn(crate::ingest::formats::publish_commands(
            client.clone(),
            commands,
            shutdown.clone(),
        )));
    }
    match (&cluster, cluster_fwd) {
        (Some(c), Some(fwd)) => {
            tasks.push(c.spawn(fwd, shutdown.clone()));
            tasks.push(tokio::spawn(crate::cluster::ack_loop(
                c.clone(),
                client.clone(),
                ack_rx,
                acks_flushed,
            )));
        }
        _ => tasks.push(tokio::spawn(mqtt::ack_loop(
            client.clone(),
            ack_rx,
            acks_flushed,
        ))),
    }
    let proc_app = app.clone();
    let group = cfg.ingest.commit_group.max(1);
    let processor = std::thread::Builder::new()
        .name("forewarn-processor".into())
        .spawn({
            let shutdown = shutdown.clone();
            let rt = tokio::runtime::Handle::current();
            move || process_loop(proc_app, fwd_rx, ack_tx, group, shutdown, rt)
        })
        .map_err(|e| ServeError::Runtime(format!("cannot start the processor thread: {e}")))?;

    let dispatcher = Dispatcher::new(
        cfg.dispatch.clone(),
        app.store.clone(),
        app.metrics.clone(),
        app.dispatch_wake.clone(),
        app.broker_connected.clone(),
        client,
    )
    .map_err(|e| ServeError::Runtime(format!("dispatch HTTP client: {e}")))?
    .with_clock(notifier.clock());
    tasks.push(tokio::spawn(dispatcher.run(shutdown.clone())));
    tasks.push(notifier.spawn_worker(app.store.clone(), desk, shutdown.clone()));
    if cfg.features.window().late_tolerance_ms > 0 {
        tasks.push(tokio::spawn(release_idle_loop(
            app.clone(),
            shutdown.clone(),
        )));
    }
    if let Some(after) = cfg.ingest.forget_after {
        tasks.push(tokio::spawn(forget_loop(
            app.clone(),
            after.std(),
            shutdown.clone(),
        )));
    }
    tasks.push(tokio::spawn(reload_on_sighup(
        app.clone(),
        auth.clone(),
        shutdown.clone(),
    )));
    if cfg.api.tokens_file.is_some() {
        tasks.push(tokio::spawn(watch_tokens_file(auth, shutdown.clone())));
    }
    tracing::info!(
        api = %api_addr,
        broker = %cfg.broker.url,
        models = n_models,
        "forewarn serve started"
    );
    Ok(Handle {
        api_addr,
        public_addr,
        app,
        shutdown,
        tasks,
        processor,
        lock,
    })
}

/// Sweeps the states of devices unseen for `ingest.forget_after`, ten times per period (at most
/// hourly, at least every half second).
async fn forget_loop(app: Arc<App>, after: Duration, shutdown: CancellationToken) {
    let period = (after / 10).clamp(Duration::from_millis(500), Duration::from_secs(3600));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let a = app.clone();
        let now = chrono::Utc::now().timestamp_millis();
        match tokio::task::spawn_blocking(move || a.forget_unseen(now)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("forgetting unseen devices failed: {e}"),
            Err(e) => tracing::error!("forget task failed: {e}"),
        }
    }
}

/// The reorder idle timer: releases what silent devices still hold, a few times per idle period.
async fn release_idle_loop(app: Arc<App>, shutdown: CancellationToken) {
    let period =
        (app.settings.reorder_idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let a = app.clone();
        match tokio::task::spawn_blocking(move || a.release_idle()).await {
            Ok(Ok(_)) => {}
            // Nothing was committed: the items stay held and the next tick tries again.
            Ok(Err(e)) => tracing::warn!("releasing held readings of idle devices failed: {e}"),
            Err(e) => tracing::error!("idle release task failed: {e}"),
        }
    }
}

/// The single writer of ingest: takes what has arrived (up to `group` messages), processes it
/// and applies its effects in one atomic batch, then hands the group to the flusher, which
/// makes it durable and only then passes its publishes to the acker. The flusher takes every
/// group waiting at once (one fsync for all of them), and the next group is processed while it
/// flushes: the two cores work at once.
///
/// A failed commit or flush is retried with backoff (nothing is acknowledged meanwhile, so the
/// channel fills and the broker holds back): memory is rebuilt from the store, the groups the
/// flusher could not make durable are processed again, oldest first, each flushed before its
/// acks. On shutdown what is not durable is left unacknowledged for the broker to redeliver.
fn process_loop(
    app: Arc<App>,
    mut rx: mpsc::Receiver<Inbound>,
    acks: mpsc::UnboundedSender<Vec<Publish>>,
    group: usize,
    shutdown: CancellationToken,
    rt: tokio::runtime::Handle,
) {
    // The idle wake-up's timer is the runtime's.
    let _rt = rt.enter();
    // Groups handed to the flusher and not yet acknowledged or handed back.
    let in_flusher = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Unbounded: at most the broker's in-flight window is ever unacknowledged.
    // A group and what it gives the history archive once durable.
    type Applied = (Vec<Inbound>, Vec<crate::archive::Record>);
    let (to_flush, flush_rx) = std::sync::mpsc::channel::<Applied>();
    let (failed_tx, failed_rx) = std::sync::mpsc::channel::<Vec<Inbound>>();
    let flusher = std::thread::Builder::new()
        .name("forewarn-flusher".into())
        .spawn({
            let (app, acks, in_flusher) = (app.clone(), acks.clone(), in_flusher.clone());
            move || {
                while let Ok(first) = flush_rx.recv() {
                    let mut groups = vec![first];
                    groups.extend(flush_rx.try_iter());
                    let n = groups.len();
                    match app.store.flush() {
                        Ok(()) => {
                            for (g, archived) in groups {
                                app.archive_durable(archived);
                                let _ = acks.send(g.into_iter().map(|m| m.publish).collect());
                            }
                        }
                        Err(e) => {
                            // A commit that did not reach the disk.
                            app.metrics.commit_failures.inc();
                            app.set_store_writable(false);
                            tracing::error!("flush of {n} group(s) failed, not acknowledged: {e}");
                            for (g, _) in groups {
                                let _ = failed_tx.send(g);
                            }
                        }
                    }
                    in_flusher.fetch_sub(n, Ordering::SeqCst);
                }
            }
        });
    let flusher = match flusher {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::error!(
                "cannot start the flusher thread ({e}): every group is flushed in turn"
            );
            None
        }
    };
    // Waits until the flusher has acknowledged or handed back everything it holds; returns what
    // it handed back, oldest first.
    let settle = |failed_rx: &std::sync::mpsc::Receiver<Vec<Inbound>>| {
        while in_flusher.load(Ordering::SeqCst) > 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
        failed_rx.try_iter().collect::<Vec<_>>()
    };
    let mut buf: Vec<Inbound> = Vec::with_capacity(group);
    loop {
        // A group, or (every 100 ms while idle) a look at what the flusher handed back.
        let first = match rt.block_on(tokio::time::timeout(Duration::from_millis(100), rx.recv())) {
            Ok(Some(m)) => Some(m),
            Ok(None) => break,
            Err(_) => None,
        };
        if let Some(first) = first {
            buf.push(first);
            while buf.len() < group {
                match rx.try_recv() {
                    Ok(m) => buf.push(m),
                    Err(_) => break,
                }
            }
        }
        let mut redo = failed_rx.try_iter().collect::<Vec<_>>();
        if !redo.is_empty() {
            redo.extend(settle(&failed_rx));
            app.distrust_memory();
            app.set_store_writable(false);
            for g in redo {
                commit_sync(&app, g, &acks, &shutdown);
            }
        }
        if buf.is_empty() {
            continue;
        }
        if flusher.is_none() {
            commit_sync(&app, std::mem::take(&mut buf), &acks, &shutdown);
            continue;
        }
        match app.process_group_applied(&buf) {
            Ok(_) => {
                app.set_store_writable(true);
                in_flusher.fetch_add(1, Ordering::SeqCst);
                let archived = app.take_unflushed_archive();
                if let Err(back) = to_flush.send((std::mem::take(&mut buf), archived)) {
                    // The flusher is gone: this group is already applied, flush it here.
                    in_flusher.fetch_sub(1, Ordering::SeqCst);
                    let (g, archived) = back.0;
                    match app.store.flush() {
                        Ok(()) => {
                            app.archive_durable(archived);
                            let _ = acks.send(g.into_iter().map(|m| m.publish).collect());
                        }
                        Err(e) => {
                            tracing::error!("flush failed, not acknowledged: {e}");
                            app.distrust_memory();
                            commit_sync(&app, g, &acks, &shutdown);
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(
                    "commit of {} messages failed, not acknowledged: {e}",
                    buf.len()
                );
                // What the flusher could not make durable is older: it goes first.
                for g in settle(&failed_rx) {
                    commit_sync(&app, g, &acks, &shutdown);
                }
                commit_sync(&app, std::mem::take(&mut buf), &acks, &shutdown);
            }
        }
    }
    drop(to_flush);
    if let Some(f) = flusher {
        let _ = f.join();
    }
    // Intake has stopped: leave every device's whole state on disk (a checkpoint), so the next
    // start has nothing to replay.
    if let Err(e) = app.checkpoint() {
        tracing::warn!(
            "no checkpoint at shutdown ({e}): the step log is replayed at the next start"
        );
    }
}

/// Processes a group and commits it flushed, retrying with backoff until it succeeds (reopening
/// the store after an I/O error), then hands its publishes to the acker. On shutdown the group
/// is left unacknowledged for the broker to redeliver.
fn commit_sync(
    app: &App,
    mut buf: Vec<Inbound>,
    acks: &mpsc::UnboundedSender<Vec<Publish>>,
    shutdown: &CancellationToken,
) {
    let mut backoff = mqtt::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match app.process_group(&buf) {
            Ok(_) => {
                app.set_store_writable(true);
                let _ = acks.send(buf.drain(..).map(|m| m.publish).collect());
                return;
            }
            Err(e) => {
                if matches!(e, app::CoreError::Store(_)) {
                    app.set_store_writable(false);
                }
                tracing::error!(
                    "commit of {} messages failed, not acknowledged: {e}",
                    buf.len()
                );
                if shutdown.is_cancelled() {
                    return;
                }
                std::thread::sleep(backoff.next_delay());
                if let app::CoreError::Store(se) = &e {
                    if crate::store::Store::is_io_error(se) {
                        // sled refuses everything after an I/O error until reopened.
                        match app.store.reopen() {
                            Ok(()) => tracing::warn!("store reopened after an I/O error"),
                            Err(e) => tracing::error!("store not writable yet: {e}"),
                        }
                    }
                }
            }
        }
    }
}

async fn bind(addr: &str) -> Result<tokio::net::TcpListener, ServeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen {
            addr: addr.to_string(),
            source,
        })
}

fn local_addr(l: &tokio::net::TcpListener, addr: &str) -> Result<SocketAddr, ServeError> {
    l.local_addr().map_err(|source| ServeError::Listen {
        addr: addr.to_string(),
        source,
    })
}

/// What re-reading the API tokens file gave; on error the tokens in force stay.
fn log_tokens_reload(result: Result<usize, crate::api::auth::TokensFileError>) {
    match result {
        Ok(n) => tracing::info!("API tokens file re-read: {n} token(s)"),
        Err(e) => tracing::warn!("{e}; the tokens read before stay in force"),
    }
}

/// Checks the tokens file every second (a `stat`) and re-reads it when it changed.
async fn watch_tokens_file(auth: Arc<crate::api::Auth>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(r) = auth.reload_if_changed() {
            log_tokens_reload(r);
        }
    }
}

#[cfg(unix)]
async fn reload_on_sighup(app: Arc<App>, auth: Arc<crate::api::Auth>, shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP (model reload disabled): {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            s = hup.recv() => {
                if s.is_none() { break; }
                let app = app.clone();
                let _ = tokio::task::spawn_blocking(move || app.reload_models()).await;
                if auth.has_file() {
                    log_tokens_reload(auth.reload());
                }
            }
        }
    }
}

#[cfg(not(unix))]
async fn reload_on_sighup(
    _app: Arc<App>,
    _auth: Arc<crate::api::Auth>,
    shutdown: CancellationToken,
) {
    shutdown.cancelled().await;
}
