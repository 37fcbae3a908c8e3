//! The app: one writer and the narrow handles the rest of the daemon reads and changes through.
//!
//! - [`App`], the single writer: per-device state and live tickets in memory and the commit
//!   path. Every change (a group of MQTT messages, an API or board transition, a fleet upsert)
//!   runs under its `core` mutex and ends in one atomic store commit — the ticket, its dispatch
//!   row and the notifier's rows together. The processing thread drives it ([`process`]);
//!   [`timers`] release what silent devices hold and forget the unseen. Every "now" it reads
//!   comes from the daemon's one injected clock (`serve` passes it; tests pause it).
//! - [`Tickets`]: ticket reads (from the store) and [`Transition`]s (through the writer) — the
//!   API, the board and customers' replies; and the device states the board's pages show,
//!   which the writer publishes after each commit (`views`), read without the core.
//! - [`Fleet`]: devices and customers. Reads take only the registry's read lock, never the
//!   core the processor holds across a group's commit and flush; upserts go through the writer.
//! - [`Monitor`]: readiness, upstream loss, gaps, watches and rejects, each behind its own small
//!   lock the writer updates.
//!
//! Files by concern: `commit` (a group through the engine into one batch), `state` (device
//! slots, the step log, recovery, checkpoints, eviction), `status`, `tickets`, `views` (the
//! board's device states), `fleet`, `models` (reload, the metric index), `cluster` (what
//! cluster mode provides the commit path), `timers` (`testkit`: the unit tests' writer).

mod cluster;
mod commit;
mod fleet;
mod models;
pub mod process;
mod state;
mod status;
#[cfg(test)]
mod testkit;
mod tickets;
pub mod timers;
mod views;

pub use cluster::{
    claim_key, parse_claim_key, transition_claim_key, Applied, ClaimError, ClusterReadiness,
    ClusterStatus, DeviceBlob, DeviceStates, Fleetwide, Peers, RecordedTransition, ShareError,
    StreamApplied, TicketRecord, Unsent, UNSENT_PREFIX,
};
pub use commit::GroupStats;
pub use fleet::Fleet;
pub use models::ReloadError;
pub(crate) use models::{load_metric_index, save_metric_index};
pub use status::{session_verdict, BrokerSession, Gap, Loss, Monitor, RejectRecord, Watch};
pub use tickets::{Tickets, Transition};

use crate::clock::Clock;
use crate::engine::{Engine, EngineConfig, Models};
use crate::features::WindowSpec;
use crate::ingest::decode::Limits;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::store::{Store, StoreError};
use crate::tickets::TransitionError;
use fleet::Registry;
use parking_lot::{Mutex, RwLock};
use state::Core;
use status::{LogBudget, Signals};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Notify;

/// What the API and the board work through: the narrow handles and the metrics, never the
/// writer itself.
#[derive(Clone)]
pub struct Handles {
    pub tickets: Tickets,
    pub fleet: Fleet,
    pub monitor: Monitor,
    pub metrics: Metrics,
}

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("ticket {0} not found")]
    TicketNotFound(String),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Claim(#[from] ClaimError),
    #[error(transparent)]
    Share(#[from] ShareError),
}

/// What the single writer needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ingest: crate::ingest::Config,
    pub engine: EngineConfig,
    pub window: WindowSpec,
    /// Where `reload_models` reads the artifacts from.
    pub models_dir: PathBuf,
    /// At most this many reject log lines per minute; the rest are only counted.
    pub rejects_per_minute: u32,
    /// Whether dispatch rows also wait for the webhook.
    pub has_webhook: bool,
    /// Wall time a device may stay silent before what it has held in the reorder buffer is
    /// released anyway.
    pub reorder_idle: std::time::Duration,
    /// Where customers' webhook contacts may point (`[notify.webhook] allow`), checked when
    /// customers are written through the API.
    pub contact_policy: crate::netguard::AddressPolicy,
    /// `store.snapshot_every`.
    pub snapshot_every: u32,
}

/// The single writer: device state, live tickets and the commit path. The processing thread,
/// the timers and the handles' changes go through it; readers use the handles.
pub struct App {
    pub settings: Settings,
    /// The optional history archive, fed after each successful commit (`serve` sets it).
    pub archive: Option<crate::archive::Archive>,
    /// Cluster mode's replay and ticket claims (`serve` sets it when `[cluster]` is on).
    pub fleetwide: Option<Arc<dyn Fleetwide>>,
    /// Live score drift per model and mode (`forewarn_model_score_drift_psi`).
    drift: Option<crate::outcomes::Drift>,
    pub store: Store,
    pub metrics: Metrics,
    /// std-style mutex (parking_lot): held by the processing thread for a whole group, and by
    /// API mutations on blocking threads; never across an `.await`. Taken before `registry`.
    core: Mutex<Core>,
    /// Devices and customers, apart from `core` so that [`Fleet`] reads never wait for a
    /// group; written only by the writer, holding `core` (so a group sees one registry).
    registry: Arc<RwLock<Registry>>,
    /// What the writer reports and [`Monitor`] reads.
    signals: Arc<Signals>,
    /// Device states the board reads without `core`, published after each commit.
    views: views::Views,
    log_budget: Mutex<LogBudget>,
    /// Budget of the loss and reset log lines (per minute), apart from rejects'.
    loss_log_budget: Mutex<LogBudget>,
    /// What the last applied (not yet flushed) group gives the history archive; the caller
    /// takes it with [`App::take_unflushed_archive`] and hands it over after the flush.
    unflushed_archive: Mutex<Vec<crate::archive::Record>>,
    /// Per device (from the topic), telemetry payloads rejected and not yet matched by a `seq`
    /// gap: a device's malformed message used a `seq` too, and the gap it leaves is a rejection
    /// already counted, not a loss upstream. Bounded: cleared when it holds too many devices.
    rejected_unmatched: Mutex<HashMap<String, u64>>,
    /// Plans the customer notifications of every ticket change, inside the change's commit.
    notifier: Arc<Notifier>,
    limits: Limits,
    /// Threads applying a group (`ingest.apply_threads`, `0` resolved to the cores).
    apply_threads: usize,
    /// The `apply_threads - 1` threads that take a group's other shards (the processing thread
    /// applies one itself), kept between groups; `None` with one apply thread, or when they
    /// could not be started (then every shard is applied by the processing thread, in turn).
    apply_pool: Option<rayon::ThreadPool>,
    /// Sparkplug B and SenML: asked first whether a topic is theirs.
    formats: crate::ingest::formats::Formats,
    /// Wakes the dispatch worker after a commit that added rows.
    pub dispatch_wake: Arc<Notify>,
    /// The daemon's one wall clock (the notifier's and the outbox workers' too): what ticket
    /// changes, gaps and rejects are stamped with, the timers' "now", the log budgets' minute.
    clock: Arc<dyn Clock>,
}

impl App {
    /// The notifier (the demo's simulated customers answer through its routes, on its clock).
    pub fn notifier(&self) -> &Arc<Notifier> {
        &self.notifier
    }

    /// The daemon's wall clock, as the writer reads it.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The daemon's wall clock, for the stages that share it (the outbox workers' due times).
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// The Sparkplug B and SenML decoders (`serve` publishes their rebirth requests).
    pub fn formats(&self) -> &crate::ingest::formats::Formats {
        &self.formats
    }

    /// The writer on `store`; `clock` is the daemon's one wall clock, the one `notifier`
    /// stamps and schedules customer messages by.
    pub(crate) fn new(
        settings: Settings,
        store: Store,
        metrics: Metrics,
        models: Models,
        notifier: Arc<Notifier>,
        clock: Arc<dyn Clock>,
    ) -> Result<App, CoreError> {
        let registry = Registry::load(&store)?;
        let limits = Limits {
            max_payload_bytes: settings.ingest.max_payload_bytes,
            max_batch: settings.ingest.max_batch,
            ..Limits::default()
        };
        metrics.models_loaded.set(models.list.len() as i64);
        // Registered once per registry; a second App on the same registry keeps the first.
        let _ = metrics
            .registry
            .register(Box::new(store.quarantined_counter()));
        let engine = Engine::new(settings.engine.clone(), Arc::new(models));
        let apply_threads = match settings.ingest.apply_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let app = App {
            core: Mutex::new(Core {
                engine,
                slots: HashMap::new(),
                tick: 0,
                unregistered: Default::default(),
                held_on_disk: HashMap::new(),
                snapshot_every: settings.snapshot_every.max(1),
                log: Vec::new(),
                log_steps: 0,
                needs_recovery: true,
            }),
            registry: Arc::new(RwLock::new(registry)),
            signals: Arc::new(Signals::new(
                store
                    .scan_kv::<Gap>(state::GAP_PREFIX)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|g| (g.device_id.clone(), g))
                    .collect(),
            )),
            views: views::Views::default(),
            log_budget: Mutex::new(LogBudget::default()),
            loss_log_budget: Mutex::new(LogBudget::default()),
            rejected_unmatched: Mutex::new(HashMap::new()),
            unflushed_archive: Mutex::new(Vec::new()),
            notifier,
            formats: crate::ingest::formats::Formats::build(
                &settings.ingest,
                limits,
                &metrics.registry,
            ),
            limits,
            apply_threads,
            apply_pool: (apply_threads > 1)
                .then(|| {
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(apply_threads - 1)
                        .thread_name(|i| format!("forewarn-apply-{i}"))
                        .build()
                        .map_err(|e| {
                            tracing::warn!(
                                "apply threads not started ({e}): each group applied by one thread"
                            )
                        })
                        .ok()
                })
                .flatten(),
            dispatch_wake: Arc::new(Notify::new()),
            clock,
            settings,
            store,
            metrics,
            archive: None,
            fleetwide: None,
            drift: None,
        };
        let mut app = app;
        // Sparkplug births acknowledged before a restart still count.
        match app
            .store
            .scan_kv::<crate::ingest::sparkplug::StoredNode>(crate::ingest::sparkplug::STATE_PREFIX)
        {
            Ok(nodes) => app.formats.restore(nodes),
            Err(e) => tracing::warn!("Sparkplug edge node states not read back: {e}"),
        }
        // After a crash, device states are snapshots plus the step log: replay and checkpoint
        // now, so that what is on disk is every device's state again (the log replays under the
        // registry and models of this start).
        // (Recovery also lists the devices whose reorder buffers wait on disk for the idle
        // release.)
        let replayed = app.checkpoint()?;
        if replayed > 0 {
            tracing::info!("replayed the step log of {replayed} device(s) left by the last run");
        }
        // A second App on the same registry (some tests) finds the name taken and goes without.
        app.drift = crate::outcomes::Drift::build(&app.metrics.registry).ok();
        app.metrics
            .outbox_depth
            .with_label_values(&[crate::dispatch::QUEUE])
            .set(app.store.outbox_len(crate::dispatch::QUEUE) as i64);
        Ok(app)
    }

    /// The handle ticket reads and transitions go through.
    pub fn tickets(self: &Arc<Self>) -> Tickets {
        Tickets::new(self.clone())
    }

    /// The handle fleet reads (without the core lock) and upserts go through.
    pub fn fleet(self: &Arc<Self>) -> Fleet {
        Fleet::new(self.registry.clone(), self.clone())
    }

    /// The read-only handle on readiness and what the stream lost.
    pub fn monitor(&self) -> Monitor {
        Monitor::new(self.signals.clone(), self.fleetwide.clone())
    }

    /// Every handle, for the API and the board.
    pub fn handles(self: &Arc<Self>) -> Handles {
        Handles {
            tickets: self.tickets(),
            fleet: self.fleet(),
            monitor: self.monitor(),
            metrics: self.metrics.clone(),
        }
    }
}
