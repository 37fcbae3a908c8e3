//! `forewarn serve`, as a library: [`run`] starts every stage from the configuration and returns
//! a [`Handle`] with the bound API address; cancelling the token shuts the daemon down in order.
//!
//! The story of a reading: the MQTT polling task (`ingest::Stage`) forwards publishes over a
//! bounded channel → the processing thread (`app::process`) takes what has arrived (up to
//! `ingest.commit_group`), runs it through the engine under the writer's core lock (the group's
//! devices shared out to `ingest.apply_threads` threads, each device on one) and applies its
//! steps (one step log record), tickets and outbox rows in one atomic batch → the flusher makes
//! it durable (one fsync for every group waiting, while the processor goes on with the next) →
//! the acker sends the group's acks → the dispatcher publishes the ticket changes from the
//! outbox (rows are read durable), the notifier sends the customers' messages from its own.
//!
//! Cluster mode (`[cluster]`): the same processor, flusher and acker, fed by the partitions this
//! instance leases from a JetStream stream instead of MQTT subscriptions (`cluster`); the MQTT
//! connection then only carries the dispatcher's ticket publishes.
//!
//! Shutdown (one token): the polling task stops forwarding → the processor drains what it holds,
//! commits and hands over the last acks → the acker sends them → the polling task disconnects
//! (at most `shutdown.ack_grace`). The API, the dispatcher, the notifier and the timers stop on
//! the same token; [`Handle::stopped`] waits for them at most `shutdown.grace`.
//!
//! The data directory's lock ([`standby::DataDirLock`]) is taken before the store is opened and
//! released only after everything has stopped; `serve --standby` waits on it ([`standby`]).

mod build;
mod error;
mod reload;
pub mod standby;

use crate::app::{self, App};
use crate::config::Config;
use crate::notify::TicketDesk;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use build::{check, CheckSummary};
pub use error::{CheckError, ServeError};

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

/// Starts the daemon: every stage built from its configuration and running; the returned
/// [`Handle`] waits for them to drain once `shutdown` is cancelled.
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

/// The daemon, start to finish: build each stage from its configuration, start them (the API
/// first, so `/readyz` answers while the broker connects), and hand back what waits for them to
/// drain.
async fn start(
    cfg: Config,
    shutdown: CancellationToken,
    clock: Arc<dyn crate::notify::Clock>,
    takeover: Option<standby::TakeOver>,
) -> Result<Handle, ServeError> {
    crate::tls::install_crypto();
    // Whatever is wrong with the configuration, the fleet file or the models fails here,
    // before the data directory is taken.
    let checked = build::Checked::load(&cfg)?;
    let held = match takeover {
        Some(t) => t,
        None => standby::TakeOver::now(&cfg.store.data_dir)?,
    };
    // The daemon's one wall clock: the notifier's, the writer's and its timers', the outbox
    // workers' due times, the store's quarantine stamps, the archive's rotation.
    let store = build::open_store(&cfg.store)?.with_clock(clock.clone());
    let registry = prometheus::Registry::new();
    let notifier = build::notifier(&cfg, clock.clone(), &registry)?;
    // Cluster mode: connected before anything reads, so the shared ticket-id secret is known.
    let cluster = build::cluster(&cfg.cluster, &registry).await?;
    if let Some(c) = &cluster {
        // Cluster mode: the fleet file goes to the fleet-wide registry, under the same rule
        // as single-machine mode's, before this instance reads the registry.
        let file = &checked.inputs.fleet;
        if !file.customers.is_empty() || !file.devices.is_empty() {
            let applied = c.import_fleet_file(&store, file, clock.now_ms()).await?;
            tracing::info!(
                "fleet file: {} record(s) written to the cluster's registry, {} left as it has them",
                applied.written,
                applied.kept
            );
        }
    }
    let app = build::writer(
        &cfg,
        checked.inputs,
        store,
        &notifier,
        &cluster,
        clock,
        &registry,
    )?;
    build::count_takeover(&app, &cfg, held.waited);
    let auth = build::auth(&cfg.api)?;
    let api = crate::api::server::Stage::bind(&cfg.api, held.listener).await?;
    if let Some(c) = &cluster {
        c.set_api_addr(api.addr);
    }
    // Customers' replies move tickets through the writer, like the API's transitions.
    let desk: Arc<dyn TicketDesk> = Arc::new(app.tickets());
    let (routes, notify_routes) = build::routes(&cfg, &app, &notifier, &desk, &auth, &shutdown)?;
    let ack_grace = cfg.shutdown.ack_grace.std();
    let (ingest, feed) = cfg
        .ingest
        .build(&cfg.broker, checked.mqtt, ack_grace, cluster.is_none());
    let dispatcher = build::dispatcher(&cfg.dispatch, &app, ingest.client.clone())?;

    // SIGHUP is handled from here on, before the API can answer ready.
    let reloads = reload::spawn(&app, &auth, &cfg.api, &shutdown);

    let (api_addr, public_addr) = (api.addr, api.public_addr);
    let mut tasks = api.spawn(routes, notify_routes, &shutdown, cfg.shutdown.grace.std());
    let group = cfg.ingest.commit_group;
    let processor =
        app::process::spawn(app.clone(), feed, group, shutdown.clone()).map_err(|source| {
            ServeError::Thread {
                what: "processor",
                source,
            }
        })?;
    let (client, forward) = (ingest.client.clone(), ingest.forward());
    let observer = app.broker_observer(&cfg.broker.url, &cfg.broker.client_id);
    let (ingest_tasks, acks) = ingest.spawn(observer, app.formats().take_commands(), &shutdown);
    tasks.extend(ingest_tasks);
    tasks.extend(match &cluster {
        // The stream's partitions feed the processor too, and their acks go to the stream.
        Some(c) => c.spawn_intake(&app, forward, client, acks, &shutdown),
        None => vec![acks.spawn_mqtt(client)],
    });
    // Cluster mode: the outboxes send only while this instance is in good standing (its
    // membership known live), first after its first heartbeat, which drops what it left unsent
    // when it stopped and another instance sent meanwhile (and the same after a freeze).
    let gate = cluster
        .as_ref()
        .map(|c| c.clone() as Arc<dyn crate::outbox::Gate>);
    tasks.push(tokio::spawn(
        dispatcher.with_gate(gate.clone()).run(shutdown.clone()),
    ));
    tasks.push(notifier.spawn_worker(app.store.clone(), desk, gate, shutdown.clone()));
    tasks.extend(app::timers::spawn(&app, &shutdown));
    tasks.extend(reloads);
    let models = app.metrics.models_loaded.get();
    tracing::info!(api = %api_addr, broker = %cfg.broker.url, models, "forewarn serve started");
    Ok(Handle {
        api_addr,
        public_addr,
        app,
        shutdown,
        tasks,
        processor,
        lock: held.lock,
    })
}
