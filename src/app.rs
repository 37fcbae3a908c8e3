//! The app core: per-device state and live tickets in memory, the fleet registry, and the commit
//! path. One writer: every change (a group of MQTT messages, an API transition, a fleet upsert)
//! runs under the `core` mutex and ends in one atomic, flushed store commit — the ticket, its
//! dispatch row and the notifier's rows together.

use crate::dispatch::DispatchRow;
use crate::domain::Reading;
use crate::domain::{format_ts, HistoryEntry, Millis, Outcome, RejectReason, Status, Ticket};
use crate::engine::{Change, ChangeKind, DeviceCtx, Engine, EngineConfig, Models, Scoring};
use crate::features::{DeviceState, MetricIndex, Observed, WindowSpec};
use crate::fleet::{Customer, Device};
use crate::ingest::decode::{self, Limits, Reject};
use crate::ingest::mqtt::{topic_matches, Inbound};
use crate::ingest::reorder::{self, Item, Offer, Pending};
use crate::metrics::Metrics;
use crate::notify::{DeskError, Notifier, TicketDesk};
use crate::store::{Store, StoreError, Tx};
use crate::tickets::TransitionError;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Notify;

/// Where the broker session this data directory relies on is recorded.
const BROKER_SESSION_KEY: &str = "broker_session";

/// The persistent session a data directory has at a broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct BrokerSession {
    pub broker: String,
    pub client_id: String,
}

/// Whether the broker's `session_present` at start agrees with what the data directory knows;
/// `Some(explanation)` when it does not.
pub fn session_verdict(
    session_present: bool,
    known: Option<&BrokerSession>,
    now: &BrokerSession,
) -> Option<String> {
    let same = known == Some(now);
    match (session_present, same) {
        (true, false) => Some(format!(
            "the broker resumed a session for client id {:?} that this data directory does not \
             know (another daemon with the same client id, or a new data directory): what it \
             queued is applied here",
            now.client_id
        )),
        (false, true) => Some(format!(
            "this data directory expects a persistent session at {} for client id {:?} but the \
             broker has none (restarted without persistence, or the session expired): what was \
             published while forewarn was away is lost",
            now.broker, now.client_id
        )),
        _ => None,
    }
}

/// Where the metric index (metric name → id used inside stored device states) is kept.
const METRIC_INDEX_KEY: &str = "metric_index";

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
}

/// What cluster mode (`crate::cluster`, which implements it) asks of the commit path.
pub trait Fleetwide: Send + Sync {
    /// Whether the device's partition is being replayed to rebuild its state: its ticket changes
    /// are stored but send nothing, as the partition's earlier owner committed (and sent) them.
    fn replaying(&self, device: &str) -> bool;
    /// Claims the fleet-wide key of a ticket change (an opening, an update, a settlement) before
    /// anything is written: `Ok(true)` when this instance holds it (just created, or created by
    /// this instance before), `Ok(false)` when another instance made the same change first —
    /// the ticket is then stored here and nothing is sent for the change.
    fn claim(&self, change: &Change) -> Result<bool, ClaimError>;
    /// The partition assignment as this instance last saw it (`GET /api/v1/cluster`).
    fn status(&self) -> ClusterStatus;
    /// The live instances and where their APIs answer, for the fleet-wide API (`api::fleet`).
    fn peers(&self) -> Peers;
    /// The instance holding the lease of the device's partition, as last read; its copy of the
    /// device's tickets is the authoritative one.
    fn owner(&self, device: &str) -> Option<String>;
}

/// The fleet as the API sees it: who this instance is, the live instances with the API
/// address each advertised in its membership record, and how long to wait for one of them.
#[derive(Debug, Clone)]
pub struct Peers {
    pub me: String,
    /// Instance name → API base URL (`None`: it advertised none, e.g. an older version).
    pub apis: std::collections::BTreeMap<String, Option<String>>,
    pub timeout: std::time::Duration,
}

/// Cluster mode as one instance sees it: `GET /api/v1/cluster`.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct ClusterStatus {
    /// False in single-machine mode (the rest is then empty).
    pub enabled: bool,
    /// This instance's name in the leases.
    pub instance: String,
    /// Partitions of the device subjects.
    pub partitions: u32,
    /// Live instances (membership keys not expired), sorted.
    pub members: Vec<String>,
    /// Partitions whose lease this instance holds.
    pub owned: Vec<u32>,
    /// Owned partitions still being replayed to rebuild device state (nothing acknowledged).
    pub replaying: Vec<u32>,
    /// Each leased partition and its holder, as last read from the lease bucket.
    pub assignment: std::collections::BTreeMap<u32, String>,
}

/// A fleet-wide ticket claim that could not be made: the group is not committed (nor
/// acknowledged) and is tried again.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("fleet-wide claim of ticket {ticket} failed: {source}")]
    Unreachable {
        ticket: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Why the models directory could not be (re)loaded; the models in use stay.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Artifact(#[from] crate::predict::ArtifactError),
    #[error(transparent)]
    Models(#[from] crate::engine::ModelsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("device states could not be checkpointed before the models change: {0}")]
    Checkpoint(Box<CoreError>),
}

/// A device's in-memory state.
struct Slot {
    state: DeviceState,
    /// The device's live tickets (open, acknowledged, scheduled): the ticket policy's input.
    live: Vec<Ticket>,
    /// Readings and events held until the device's watermark passes them (event-time order).
    reorder: reorder::Buffer,
    /// Whether the store holds a reorder buffer for the device (so an empty one is removed).
    reorder_stored: bool,
    /// Wall time of the device's last message, for the reorder idle timer.
    last_arrival: Instant,
    /// Last touch, for least-recently-seen eviction.
    tick: u64,
    /// Changed since the last commit.
    dirty: bool,
    /// Whether the store holds a snapshot of the device (its first commit writes one).
    snapshot_stored: bool,
    /// The step log holds steps of this device after its snapshot (written at the next
    /// checkpoint, or before the device leaves memory).
    logged: bool,
    /// This group's steps (encoded [`Step`]s), logged at its commit unless a snapshot is due.
    steps: Vec<Vec<u8>>,
    /// Write the whole state at the next commit (its snapshot was set aside).
    force_snapshot: bool,
}

/// One step of a device's state machine as the step log keeps it (postcard): replayed over the
/// snapshot through the same code as the live path, the steps give the state the daemon had.
/// Steps that changed nothing (a duplicate or late arrival) are not logged.
#[derive(Debug, Serialize, Deserialize)]
enum Step<P> {
    /// Held by the reorder buffer, with the tolerance then in force (what the watermark passed
    /// was released and applied).
    Offer { tolerance_ms: i64, item: P },
    /// Applied at once (no reorder tolerance).
    Apply(P),
    /// The idle timer released everything the buffer held.
    Flush,
}

fn encode_step(step: &Step<&Pending>) -> Vec<u8> {
    // Strings, numbers and options only: postcard cannot fail on them.
    postcard::to_allocvec(step).unwrap_or_default()
}

/// What one reading does to its device's state and live tickets: a `seq` restart check, then
/// the engine. The live path ([`App::apply`]) and the log replay both step through here, so
/// a replayed state equals the state the daemon had. Returns what the state made of the reading
/// and the restart noticed, `(last seq, new seq)`.
fn apply_reading(
    engine: &Engine,
    state: &mut DeviceState,
    live: &mut Vec<Ticket>,
    ctx: DeviceCtx<'_>,
    r: &Reading,
    changes: &mut Vec<Change>,
    scorings: Option<&mut Vec<Scoring>>,
) -> (Observed, Option<(u64, u64)>) {
    // A `seq` at or below the last one on a reading newer than anything the device sent is a
    // restart of its counter (reboot, firmware update), not a redelivery (which carries the old
    // timestamp).
    let mut reset = None;
    if let (Some(seq), Some(last)) = (r.seq, state.last_seq) {
        if seq <= last && r.ts > state.last_ts {
            state.last_seq = None;
            reset = Some((last, seq));
        }
    }
    let obs = engine.reading(state, live, ctx, r, changes, scorings);
    (obs, reset)
}

/// Counts of one group, added to the metrics once per group: the hot path stays free of label
/// lookups.
#[derive(Default)]
struct Tally {
    duplicates: u64,
    /// Readings a `seq` gap says never arrived.
    missing: u64,
    resets: u64,
    late: u64,
    scorings: u64,
    events: u64,
    /// Accepted readings and events for the history archive (only collected when it is on).
    archived: Vec<crate::archive::Record>,
    /// (mode, probability) of each scoring, for the drift statistic.
    scores: Vec<(String, f64)>,
    /// Gaps noticed, written with the group.
    gaps: Vec<Gap>,
    /// Sparkplug edge node states (births, aliases, `seq`) changed, written with the group.
    sparkplug: Vec<crate::ingest::sparkplug::StoredNode>,
    /// Devices the registry does not know, first seen in this group.
    unregistered: Vec<String>,
}

impl Tally {
    /// Adds a shard's counts and lists (the archive's records are the caller's to order).
    fn absorb(&mut self, o: Tally) {
        self.duplicates += o.duplicates;
        self.missing += o.missing;
        self.resets += o.resets;
        self.late += o.late;
        self.scorings += o.scorings;
        self.events += o.events;
        self.archived.extend(o.archived);
        self.scores.extend(o.scores);
        self.gaps.extend(o.gaps);
        self.sparkplug.extend(o.sparkplug);
        for d in o.unregistered {
            if !self.unregistered.contains(&d) {
                self.unregistered.push(d);
            }
        }
    }
}

/// Below this many items a group is applied on the processing thread alone: a thread's start
/// costs more than it saves.
const PARALLEL_MIN_ITEMS: usize = 32;

/// What applying an item needs of the core besides its device's slot: read only, shared by the
/// shards of a group.
struct Shared<'a> {
    engine: &'a Engine,
    devices: &'a HashMap<String, Device>,
    unregistered: &'a std::collections::HashSet<String>,
}

/// One item of a group waiting for its device's shard.
struct Queued {
    /// Its place in the group's arrival order.
    idx: usize,
    item: Item,
    received_ms: i64,
    received: Instant,
}

/// A device of the group, its slot taken out of the core while its shard applies its items.
struct DeviceWork {
    device: String,
    slot: Slot,
    items: Vec<Queued>,
}

/// What a shard made of its devices: counts, and the ticket changes and archive records tagged
/// with the arrival index of the item that made them.
#[derive(Default)]
struct ShardOut {
    tally: Tally,
    changes: Vec<(usize, Change, i64)>,
    archived: Vec<(usize, crate::archive::Record)>,
}

struct Core {
    engine: Engine,
    slots: HashMap<String, Slot>,
    tick: u64,
    devices: HashMap<String, Device>,
    customers: HashMap<String, Customer>,
    /// Devices seen on the stream that the registry does not know (`forewarn_unregistered_devices`);
    /// a device leaves the set when it is registered or forgotten.
    unregistered: std::collections::HashSet<String>,
    /// Devices whose reorder buffer is on disk but not in memory (held at start, or evicted
    /// while holding), with their last arrival: the idle release loads and flushes them.
    held_on_disk: HashMap<String, Instant>,
    /// `store.snapshot_every`: a checkpoint (every device's whole state written, the step log
    /// emptied) after this many logged steps.
    snapshot_every: u32,
    /// Sequence numbers of the step log records on disk, oldest first.
    log: Vec<u64>,
    /// Steps logged since the last checkpoint.
    log_steps: u64,
    /// Set at start and after a failed commit: the slots in memory cannot be trusted, what is
    /// on disk (snapshots and the step log) is rebuilt before anything else.
    needs_recovery: bool,
}

/// A rejected payload kept for `GET /api/v1/rejects`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RejectRecord {
    /// Wall-clock receipt time (RFC 3339).
    pub received_at: String,
    pub topic: String,
    pub reason: &'static str,
    pub detail: String,
    /// The first bytes of the payload (lossy UTF-8).
    pub payload_prefix: String,
}

/// The last `seq` gap seen for a device, as `GET /api/v1/gaps` shows it (kept in the store, so
/// a restart does not forget where the stream lost readings).
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Gap {
    pub device_id: String,
    /// Last `seq` applied before the gap, and the `seq` that came after it.
    pub after_seq: u64,
    pub next_seq: u64,
    pub missing: u64,
    /// Event time of the reading after the gap (RFC 3339).
    pub ts: String,
    /// Wall-clock time the gap was noticed (RFC 3339).
    pub noticed_at: String,
}

/// A device a mode watches: its latest score is at or above the mode's watch level, below which
/// nothing is said and above which, unless the ticket level is reached too, nothing is done
/// (internal: `GET /api/v1/watch` and `forewarn_watched_devices` only). Kept in memory: after a
/// restart a device is listed again at its next scoring.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Watch {
    pub device_id: String,
    /// The failure mode whose score is at or above its watch level.
    pub mode: String,
    /// The latest score: the model's probability of this mode failing within its horizon.
    pub probability: f64,
    /// Event time of the first scoring of this watch (RFC 3339): the score has stayed at or
    /// above the watch level since.
    pub since: String,
    /// Event time of the latest scoring (RFC 3339).
    pub scored_at: String,
}

/// A watch as the ingest path keeps it: times stay numbers until the API asks (formatting a
/// timestamp at every scoring of a watched device cost more than the rest of the bookkeeping).
#[derive(Debug, Clone)]
struct WatchEntry {
    mode: String,
    probability: f64,
    since: Millis,
    scored: Millis,
}

fn new_watch(s: &Scoring) -> WatchEntry {
    WatchEntry {
        mode: s.mode.clone(),
        probability: s.probability,
        since: s.ts,
        scored: s.ts,
    }
}

/// Upstream loss since start, for `/readyz`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Loss {
    pub readings_missing: u64,
    pub seq_resets: u64,
    /// Wall-clock time (epoch ms) of the last gap, if any.
    pub last_gap_ms: Option<i64>,
    /// The broker's dropped-message count when forewarn first heard it, and the latest.
    pub broker_dropped: Option<(u64, u64)>,
}

#[derive(Debug, Clone, Copy)]
enum LossNote {
    Gap {
        prev: u64,
        seq: u64,
        missing: u64,
    },
    /// A Sparkplug edge node's `seq` counts its messages (each may carry many readings).
    NodeGap {
        prev: u64,
        seq: u64,
        missing: u64,
    },
    Reset {
        last: u64,
        seq: u64,
    },
}

/// Limits how many reject lines are logged per minute; the rest are only counted.
struct LogBudget {
    minute: i64,
    used: u32,
    suppressed: u64,
}

impl LogBudget {
    /// Whether one more line of `what` may be logged this minute (at most `per_minute`); at the
    /// turn of the minute says how many were held back.
    fn allow(&mut self, now_ms: i64, per_minute: u32, what: &str) -> bool {
        let minute = now_ms / 60_000;
        if minute != self.minute {
            if self.suppressed > 0 {
                tracing::warn!("{} more {what} not logged", self.suppressed);
            }
            *self = LogBudget {
                minute,
                used: 0,
                suppressed: 0,
            };
        }
        if self.used >= per_minute {
            self.suppressed += 1;
            return false;
        }
        self.used += 1;
        true
    }
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

/// The daemon's shared state: what the processor, the API and the workers use.
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
    /// API mutations on blocking threads; never across an `.await`.
    core: Mutex<Core>,
    rejects: Mutex<VecDeque<RejectRecord>>,
    log_budget: Mutex<LogBudget>,
    /// Budget of the loss and reset log lines (per minute), apart from rejects'.
    loss_log_budget: Mutex<LogBudget>,
    /// What the last applied (not yet flushed) group gives the history archive; the caller
    /// takes it with [`App::take_unflushed_archive`] and hands it over after the flush.
    unflushed_archive: Mutex<Vec<crate::archive::Record>>,
    /// Each device's last `seq` gap (bounded by the devices seen; dropped when forgotten).
    gaps: Mutex<HashMap<String, Gap>>,
    /// Per device, the modes it is watched for (bounded by devices × modes; dropped when the
    /// device is forgotten or its score falls below the watch level). Apart from `core` so the
    /// API reads it without waiting for a group.
    watches: Mutex<HashMap<String, Vec<WatchEntry>>>,
    /// Per device (from the topic), telemetry payloads rejected and not yet matched by a `seq`
    /// gap: a device's malformed message used a `seq` too, and the gap it leaves is a rejection
    /// already counted, not a loss upstream. Bounded: cleared when it holds too many devices.
    rejected_unmatched: Mutex<HashMap<String, u64>>,
    loss: Mutex<Loss>,
    /// What the session check at the first broker connection found amiss, for `/readyz`.
    session_note: Mutex<Option<String>>,
    /// Plans the customer notifications of every ticket change, inside the change's commit.
    notifier: Arc<Notifier>,
    limits: Limits,
    /// Threads applying a group (`ingest.apply_threads`, `0` resolved to the cores).
    apply_threads: usize,
    /// Sparkplug B and SenML: asked first whether a topic is theirs.
    formats: crate::ingest::formats::Formats,
    /// Wakes the dispatch worker after a commit that added rows.
    pub dispatch_wake: Arc<Notify>,
    /// Kept by the MQTT driver's connection observer.
    pub broker_connected: Arc<AtomicBool>,
    models_ready: AtomicBool,
    /// Kept by the commit loop: false from a failed commit until one succeeds (or the store is
    /// reopened). `/readyz` reports it.
    store_writable: AtomicBool,
}

/// Result of processing one group.
#[derive(Debug, Default, Clone, Copy)]
pub struct GroupStats {
    pub readings: usize,
    pub changes: usize,
}

impl App {
    /// The notifier (the demo's simulated customers answer through its routes, on its clock).
    pub fn notifier(&self) -> &Arc<Notifier> {
        &self.notifier
    }

    /// The Sparkplug B and SenML decoders (`serve` publishes their rebirth requests).
    pub fn formats(&self) -> &crate::ingest::formats::Formats {
        &self.formats
    }

    pub(crate) fn new(
        settings: Settings,
        store: Store,
        metrics: Metrics,
        models: Models,
        notifier: Arc<Notifier>,
    ) -> Result<App, CoreError> {
        let devices = store
            .fleet_devices::<Device>()?
            .into_iter()
            .map(|d| (d.id.clone(), d))
            .collect();
        let customers = store
            .fleet_customers::<Customer>()?
            .into_iter()
            .map(|c| (c.id.clone(), c))
            .collect();
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
        let app = App {
            core: Mutex::new(Core {
                engine,
                slots: HashMap::new(),
                tick: 0,
                devices,
                customers,
                unregistered: Default::default(),
                held_on_disk: HashMap::new(),
                snapshot_every: settings.snapshot_every.max(1),
                log: Vec::new(),
                log_steps: 0,
                needs_recovery: true,
            }),
            rejects: Mutex::new(VecDeque::new()),
            log_budget: Mutex::new(LogBudget {
                minute: 0,
                used: 0,
                suppressed: 0,
            }),
            loss_log_budget: Mutex::new(LogBudget {
                minute: 0,
                used: 0,
                suppressed: 0,
            }),
            gaps: Mutex::new(
                store
                    .scan_kv::<Gap>(GAP_PREFIX)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|g| (g.device_id.clone(), g))
                    .collect(),
            ),
            rejected_unmatched: Mutex::new(HashMap::new()),
            watches: Mutex::new(HashMap::new()),
            unflushed_archive: Mutex::new(Vec::new()),
            loss: Mutex::new(Loss::default()),
            session_note: Mutex::new(None),
            notifier,
            formats: crate::ingest::formats::Formats::build(
                &settings.ingest,
                limits,
                &metrics.registry,
            ),
            limits,
            apply_threads: match settings.ingest.apply_threads {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            },
            dispatch_wake: Arc::new(Notify::new()),
            broker_connected: Arc::new(AtomicBool::new(false)),
            models_ready: AtomicBool::new(true),
            store_writable: AtomicBool::new(true),
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

    // ---------------------------------------------------------------- ingest

    /// Processes a group of messages and commits all their effects in one flushed batch. The
    /// caller acknowledges the group only when this returns `Ok`.
    pub fn process_group(&self, msgs: &[Inbound]) -> Result<GroupStats, CoreError> {
        self.process(msgs, true)
    }

    /// Like [`App::process_group`], but the batch is only applied: the caller acknowledges the
    /// group after a successful [`Store::flush`] that began after this returned, and calls
    /// [`App::distrust_memory`] if that flush fails.
    pub fn process_group_applied(&self, msgs: &[Inbound]) -> Result<GroupStats, CoreError> {
        self.process(msgs, false)
    }

    /// The history archive's records of the group [`App::process_group_applied`] just applied.
    pub fn take_unflushed_archive(&self) -> Vec<crate::archive::Record> {
        std::mem::take(&mut *self.unflushed_archive.lock())
    }

    /// Hands records to the history archive once their group is durable.
    pub fn archive_durable(&self, records: Vec<crate::archive::Record>) {
        if let Some(a) = &self.archive {
            a.send(records);
        }
    }

    /// A flush failed: what was applied since the last good one may be lost, so memory is
    /// rebuilt from the store before the next use.
    pub fn distrust_memory(&self) {
        let mut core = self.core.lock();
        self.distrust(&mut core);
    }

    fn process(&self, msgs: &[Inbound], durable: bool) -> Result<GroupStats, CoreError> {
        let mut core = self.core.lock();
        let core = &mut *core;
        self.recover_if_needed(core)?;
        let mut changes: Vec<(Change, i64)> = Vec::new();
        let mut dirty: Vec<String> = Vec::new();
        let mut stats = GroupStats::default();
        let mut tally = Tally::default();
        let level = self.settings.ingest.device_id_level;
        // Every item of the group, by device (in order of first appearance), each numbered in
        // arrival order.
        let mut queued: Vec<(String, Vec<Queued>)> = Vec::new();
        let mut by_device: HashMap<String, usize> = HashMap::new();
        let mut order = 0usize;
        self.metrics.messages.inc_by(msgs.len() as u64);
        for m in msgs {
            let topic = m.publish.topic.as_str();
            let topic_device = level.and_then(|l| topic.split('/').nth(l));
            let is_telemetry = self
                .settings
                .ingest
                .telemetry_topics
                .iter()
                .any(|f| topic_matches(f, topic));
            let items: Vec<Item> = if let Some(d) =
                self.formats
                    .decode(topic, &m.publish.payload, m.received_ms)
            {
                if let Some(g) = d.gap {
                    self.sparkplug_gap(g, m.received_ms, &mut tally);
                }
                match d.result {
                    Ok(items) => items,
                    Err(rej) => {
                        self.reject(topic, &m.publish.payload, &rej);
                        continue;
                    }
                }
            } else if is_telemetry {
                match decode::decode_telemetry(
                    &m.publish.payload,
                    topic_device,
                    m.received_ms,
                    &self.limits,
                ) {
                    Ok(r) => r.into_iter().map(Item::Reading).collect(),
                    Err(rej) => {
                        self.reject(topic, &m.publish.payload, &rej);
                        if let Some(d) = topic_device {
                            let mut u = self.rejected_unmatched.lock();
                            if u.len() >= 100_000 && !u.contains_key(d) {
                                u.clear();
                            }
                            *u.entry(d.to_string()).or_default() += 1;
                        }
                        continue;
                    }
                }
            } else if self
                .settings
                .ingest
                .event_topics
                .iter()
                .any(|f| topic_matches(f, topic))
            {
                match decode::decode_events(
                    &m.publish.payload,
                    topic_device,
                    m.received_ms,
                    &self.limits,
                ) {
                    Ok(e) => e.into_iter().map(Item::Event).collect(),
                    Err(rej) => {
                        self.reject(topic, &m.publish.payload, &rej);
                        continue;
                    }
                }
            } else if !self.settings.ingest.broker_drops_topic.is_empty()
                && topic == self.settings.ingest.broker_drops_topic
            {
                self.broker_drops(&m.publish.payload);
                continue;
            } else {
                // A topic our subscriptions match but neither filter list names (an overlapping
                // broker-side subscription): nothing to do, acknowledged with the group.
                tracing::debug!(topic = %clip(topic, 200), "message on an unhandled topic ignored");
                continue;
            };
            let skew = self.settings.ingest.max_clock_skew.as_millis_i64();
            if skew > 0 {
                if let Some(ts) = items
                    .iter()
                    .map(Item::ts)
                    .find(|&ts| ts > m.received_ms.saturating_add(skew))
                {
                    let rej = Reject::new(
                        RejectReason::FutureTs,
                        format!(
                            "timestamp {} is more than {} ahead of receipt",
                            format_ts(ts),
                            self.settings.ingest.max_clock_skew
                        ),
                    );
                    self.reject(topic, &m.publish.payload, &rej);
                    continue;
                }
            }
            stats.readings += items
                .iter()
                .filter(|i| matches!(i, Item::Reading(_)))
                .count();
            for item in items {
                let device = item.device_id().to_string();
                core.slot(&self.store, &device, item.ts(), &mut dirty)?;
                let idx = order;
                order += 1;
                let w = match by_device.get(device.as_str()) {
                    Some(&w) => w,
                    None => {
                        by_device.insert(device.clone(), queued.len());
                        queued.push((device, Vec::new()));
                        queued.len() - 1
                    }
                };
                queued[w].1.push(Queued {
                    idx,
                    item,
                    received_ms: m.received_ms,
                    received: m.received,
                });
            }
        }
        // Each device's items are applied in arrival order by one shard; devices are
        // independent, so the shards run at once and their ticket changes are put back in the
        // order one thread would have made them.
        let mut work: Vec<DeviceWork> = Vec::with_capacity(queued.len());
        for (device, items) in queued {
            let Some((device, slot)) = core.slots.remove_entry(device.as_str()) else {
                for w in work {
                    core.slots.insert(w.device, w.slot);
                }
                return Err(CoreError::Invalid("device slot vanished".into()));
            };
            work.push(DeviceWork {
                device,
                slot,
                items,
            });
        }
        let outs = {
            let shared = Shared {
                engine: &core.engine,
                devices: &core.devices,
                unregistered: &core.unregistered,
            };
            self.run_shards(&shared, &mut work)
        };
        for w in work {
            core.slots.insert(w.device, w.slot);
        }
        let mut tagged: Vec<(usize, Change, i64)> = Vec::new();
        let mut archived: Vec<(usize, crate::archive::Record)> = Vec::new();
        for out in outs {
            tally.absorb(out.tally);
            tagged.extend(out.changes);
            archived.extend(out.archived);
        }
        // Stable: the changes of one item keep their order.
        tagged.sort_by_key(|(idx, _, _)| *idx);
        archived.sort_by_key(|(idx, _)| *idx);
        changes.extend(tagged.into_iter().map(|(_, c, r)| (c, r)));
        tally.archived.extend(archived.into_iter().map(|(_, a)| a));
        self.metrics.readings.inc_by(stats.readings as u64);
        stats.changes = changes.len();
        tally.sparkplug = self.formats.take_changed();
        self.commit_group(core, &dirty, &changes, tally, durable)?;
        Ok(stats)
    }

    /// Runs the group's devices through [`App::offer`], split into shards (one per
    /// `ingest.apply_threads`, devices dealt round-robin) that run on threads of their own.
    /// Returns each shard's output.
    fn run_shards(&self, sh: &Shared<'_>, work: &mut [DeviceWork]) -> Vec<ShardOut> {
        let items: usize = work.iter().map(|w| w.items.len()).sum();
        let k = self.apply_threads.min(work.len());
        if k <= 1 || items < PARALLEL_MIN_ITEMS {
            return vec![self.run_shard(sh, work.iter_mut())];
        }
        std::thread::scope(|scope| {
            let mut shards: Vec<Vec<&mut DeviceWork>> = (0..k).map(|_| Vec::new()).collect();
            for (i, w) in work.iter_mut().enumerate() {
                shards[i % k].push(w);
            }
            let mut shards = shards.into_iter();
            let mine = shards.next().unwrap_or_default();
            let mut handles = Vec::new();
            // Shards no thread could be started for: this thread does them after its own.
            let mut inline = Vec::new();
            for shard in shards {
                // The shard goes over a channel once the thread runs, so a failed start leaves
                // it here.
                let (tx, rx) = std::sync::mpsc::channel::<Vec<&mut DeviceWork>>();
                let spawned = std::thread::Builder::new()
                    .name("forewarn-apply".into())
                    .spawn_scoped(scope, move || {
                        rx.recv()
                            .map(|shard| self.run_shard(sh, shard.into_iter()))
                            .unwrap_or_default()
                    });
                match spawned {
                    Ok(h) => match tx.send(shard) {
                        Ok(()) => handles.push(h),
                        Err(back) => inline.push(back.0),
                    },
                    Err(e) => {
                        tracing::debug!("apply thread not started ({e}): applied in turn");
                        inline.push(shard);
                    }
                }
            }
            let mut outs = vec![self.run_shard(sh, mine.into_iter())];
            for shard in inline {
                outs.push(self.run_shard(sh, shard.into_iter()));
            }
            for h in handles {
                match h.join() {
                    Ok(out) => outs.push(out),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            outs
        })
    }

    /// Offers one shard's devices their items, in arrival order per device.
    fn run_shard<'w>(
        &self,
        sh: &Shared<'_>,
        work: impl Iterator<Item = &'w mut DeviceWork>,
    ) -> ShardOut {
        let mut out = ShardOut::default();
        let mut scratch: Vec<(Change, i64)> = Vec::new();
        let mut released: Vec<(Item, i64)> = Vec::new();
        for w in work {
            for q in w.items.drain(..) {
                self.offer(
                    sh,
                    &w.device,
                    &mut w.slot,
                    q.item,
                    q.received_ms,
                    q.received,
                    &mut out.tally,
                    &mut scratch,
                    &mut released,
                );
                out.changes
                    .extend(scratch.drain(..).map(|(c, r)| (q.idx, c, r)));
                out.archived
                    .extend(out.tally.archived.drain(..).map(|a| (q.idx, a)));
            }
        }
        out
    }

    /// One reading or event offered to its device: held by the reorder buffer until the
    /// device's watermark passes it (whatever that releases is applied), or applied at once
    /// without a reorder tolerance. Logs the step.
    #[allow(clippy::too_many_arguments)]
    fn offer(
        &self,
        sh: &Shared<'_>,
        device: &str,
        slot: &mut Slot,
        item: Item,
        received_ms: i64,
        received: Instant,
        tally: &mut Tally,
        changes: &mut Vec<(Change, i64)>,
        released: &mut Vec<(Item, i64)>,
    ) {
        let tolerance = self.settings.window.late_tolerance_ms;
        if tolerance <= 0 {
            // No reorder tolerance: applied in arrival order, as before.
            let pending = match &item {
                Item::Reading(r) => Pending::reading(r, received_ms),
                Item::Event(e) => Pending::event(e, received_ms),
            };
            slot.steps.push(encode_step(&Step::Apply(&pending)));
            self.apply(sh, slot, &item, received_ms, tally, changes);
            return;
        }
        slot.last_arrival = received;
        let reading_seq = match &item {
            Item::Reading(r) => r.seq,
            Item::Event(_) => None,
        };
        // Whether an event at or before the newest applied one of its kind was seen (the state
        // only changes once the offer's releases are applied, below).
        let event_applied = match &item {
            Item::Event(e) => slot.state.has_applied_event_like(e),
            Item::Reading(_) => false,
        };
        let pending = Pending::from_item(item, received_ms);
        let step = encode_step(&Step::Offer {
            tolerance_ms: tolerance,
            item: &pending,
        });
        match slot.reorder.offer(pending, tolerance) {
            Offer::Held => slot.steps.push(step),
            // A redelivery of a reading applied long ago is a duplicate, not a loss.
            Offer::Late
                if reading_seq
                    .zip(slot.state.last_seq)
                    .is_some_and(|(s, l)| s <= l) =>
            {
                tally.duplicates += 1
            }
            // Likewise an event at or before the newest applied one of its kind: events carry
            // no `seq`, so that is how a redelivery is told from a late arrival.
            Offer::Late if event_applied => tally.duplicates += 1,
            Offer::Late => tally.late += 1,
            Offer::Duplicate => tally.duplicates += 1,
        }
        slot.reorder.release(device, released);
        for (item, received_ms) in released.drain(..) {
            self.apply(sh, slot, &item, received_ms, tally, changes);
        }
    }

    /// Applies one reading or event to its device through the engine.
    fn apply(
        &self,
        sh: &Shared<'_>,
        slot: &mut Slot,
        item: &Item,
        received_ms: i64,
        tally: &mut Tally,
        changes: &mut Vec<(Change, i64)>,
    ) {
        let mut scratch: Vec<Change> = Vec::new();
        match item {
            Item::Reading(r) => {
                let dev = sh.devices.get(&r.device_id);
                if dev.is_none()
                    && !sh.unregistered.contains(r.device_id.as_str())
                    && !tally.unregistered.contains(&r.device_id)
                {
                    tally.unregistered.push(r.device_id.clone());
                }
                let ctx = DeviceCtx {
                    attrs: dev.map(|d| &d.attributes),
                    customer_id: dev.and_then(|d| d.customer_id.as_deref()),
                };
                let before = slot.state.last_scored_ts;
                let mut scored = Vec::new();
                let last_seq = slot.state.last_seq;
                let (obs, reset) = apply_reading(
                    sh.engine,
                    &mut slot.state,
                    &mut slot.live,
                    ctx,
                    r,
                    &mut scratch,
                    Some(&mut scored),
                );
                if !scored.is_empty() {
                    self.note_watches(&scored);
                }
                // The last `seq` before this reading, unless the reading restarted the counter.
                let prev_seq = if let Some((last, seq)) = reset {
                    tally.resets += 1;
                    self.note_loss(&r.device_id, LossNote::Reset { last, seq });
                    None
                } else {
                    last_seq
                };
                if self.drift.is_some() {
                    tally
                        .scores
                        .extend(scored.into_iter().map(|s| (s.mode, s.probability)));
                }
                if let (Observed::Applied, Some(seq), Some(prev)) = (obs, r.seq, prev_seq) {
                    let gap = seq.saturating_sub(prev.saturating_add(1));
                    // The part of the gap the device's own rejected payloads explain.
                    let explained = if gap > 0 {
                        let mut u = self.rejected_unmatched.lock();
                        match u.get_mut(r.device_id.as_str()) {
                            Some(n) => {
                                let e = (*n).min(gap);
                                *n -= e;
                                if *n == 0 {
                                    u.remove(r.device_id.as_str());
                                }
                                e
                            }
                            None => 0,
                        }
                    } else {
                        0
                    };
                    if gap > explained {
                        let missing = gap - explained;
                        tally.missing += missing;
                        let gap = Gap {
                            device_id: r.device_id.clone(),
                            after_seq: prev,
                            next_seq: seq,
                            missing,
                            ts: format_ts(r.ts),
                            noticed_at: format_ts(chrono::Utc::now().timestamp_millis()),
                        };
                        self.gaps.lock().insert(r.device_id.clone(), gap.clone());
                        tally.gaps.push(gap);
                        self.note_loss(&r.device_id, LossNote::Gap { prev, seq, missing });
                    }
                }
                match obs {
                    Observed::Applied if self.archive.is_some() => {
                        tally
                            .archived
                            .push(crate::archive::Record::Reading(r.clone()));
                    }
                    Observed::Applied => {}
                    Observed::Duplicate => tally.duplicates += 1,
                    Observed::Late => tally.late += 1,
                }
                if slot.state.last_scored_ts != before {
                    tally.scorings += 1;
                }
            }
            Item::Event(ev) => {
                tally.events += 1;
                if self.archive.is_some() {
                    tally
                        .archived
                        .push(crate::archive::Record::Event(ev.clone()));
                }
                sh.engine
                    .event(&mut slot.state, &mut slot.live, ev, &mut scratch);
            }
        }
        changes.extend(scratch.into_iter().map(|c| (c, received_ms)));
    }

    /// Commits what a group (or an idle release) did: the dirty device states and reorder
    /// buffers, and every ticket change with its outbox rows, in one flushed batch.
    fn commit_group(
        &self,
        core: &mut Core,
        dirty: &[String],
        changes: &[(Change, i64)],
        tally: Tally,
        durable: bool,
    ) -> Result<(), CoreError> {
        self.metrics.events.inc_by(tally.events);
        if !tally.unregistered.is_empty() {
            core.unregistered.extend(tally.unregistered.iter().cloned());
            self.metrics
                .unregistered_devices
                .set(core.unregistered.len() as i64);
        }
        if tally.missing > 0 || tally.resets > 0 {
            self.metrics.readings_missing.inc_by(tally.missing);
            self.metrics.seq_resets.inc_by(tally.resets);
            let mut l = self.loss.lock();
            l.readings_missing += tally.missing;
            l.seq_resets += tally.resets;
            if tally.missing > 0 {
                l.last_gap_ms = Some(chrono::Utc::now().timestamp_millis());
            }
        }
        self.metrics.scorings.inc_by(tally.scorings);
        self.metrics
            .dropped
            .with_label_values(&["duplicate"])
            .inc_by(tally.duplicates);
        self.metrics
            .dropped
            .with_label_values(&["late"])
            .inc_by(tally.late);
        // Cluster mode: which ticket changes are stored without sending anything (replayed, or
        // made first by another instance), decided before anything is written, so that a
        // claim that cannot be made leaves the group uncommitted.
        let mut quiet = vec![false; changes.len()];
        if let Some(f) = &self.fleetwide {
            for ((c, _), q) in changes.iter().zip(quiet.iter_mut()) {
                if f.replaying(&c.ticket.device_id) {
                    *q = true;
                } else {
                    match f.claim(c) {
                        Ok(mine) => *q = !mine,
                        Err(e) => {
                            self.metrics.commit_failures.inc();
                            self.distrust(core);
                            return Err(e.into());
                        }
                    }
                }
            }
        }
        let mut tx = self.store.tx();
        let mut records: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut logged = 0;
        for d in dirty {
            if let Some(slot) = core.slots.get_mut(d.as_str()) {
                logged += slot.persist(&mut tx, d, &mut records);
                slot.dirty = false;
            }
        }
        let log_seq = (!records.is_empty()).then(|| tx.put_log(log_record(&records)));
        for g in &tally.gaps {
            tx.put_kv(&gap_key(&g.device_id), g);
        }
        for n in &tally.sparkplug {
            tx.put_kv(&n.key(), n);
        }
        // The notifier's clock: the wall clock, or the simulated one in the demo.
        let now_ms = self.notifier.now_ms();
        for ((c, _), quiet) in changes.iter().zip(&quiet) {
            if *quiet {
                tx.put_ticket(&c.ticket);
            } else {
                self.record_change(core, &mut tx, c, now_ms);
            }
        }
        let started = Instant::now();
        let committed = if durable {
            self.store.commit(tx)
        } else {
            self.store.apply(tx)
        };
        if let Err(e) = committed {
            // Nothing was written: forget what these messages did in memory so a redelivery
            // starts again from the stored state.
            self.metrics.commit_failures.inc();
            self.distrust(core);
            return Err(e.into());
        }
        core.log.extend(log_seq);
        core.log_steps += logged;
        let done = Instant::now();
        self.metrics
            .commit_seconds
            .observe(done.duration_since(started).as_secs_f64());
        self.metrics.commits.inc();
        if let Some(a) = &self.archive {
            if durable {
                a.send(tally.archived);
            } else {
                // Archived once durable: a group lost before its flush is redelivered and
                // archived then.
                self.unflushed_archive.lock().extend(tally.archived);
            }
        }
        if let Some(d) = &self.drift {
            d.observe_scorings(&core.engine.models, tally.scores);
        }
        let done_ms = chrono::Utc::now().timestamp_millis();
        for (c, received_ms) in changes {
            if matches!(c.kind, ChangeKind::Opened | ChangeKind::Updated) {
                self.metrics
                    .reading_to_ticket
                    .observe((done_ms - received_ms).max(0) as f64 / 1000.0);
            }
        }
        if !changes.is_empty() {
            self.dispatch_wake.notify_one();
        }
        if core.log_steps >= u64::from(core.snapshot_every) {
            if let Err(e) = self.checkpoint_locked(core) {
                tracing::warn!("checkpoint failed (tried again after the next commit): {e}");
            }
        }
        self.evict(core);
        self.metrics.devices_in_memory.set(core.slots.len() as i64);
        Ok(())
    }

    /// After a failed commit the slots in memory are ahead of the store: drop them all; the
    /// next user of the core rebuilds them from the snapshots and the step log.
    fn distrust(&self, core: &mut Core) {
        core.slots.clear();
        core.needs_recovery = true;
        self.metrics.devices_in_memory.set(0);
    }

    fn recover_if_needed(&self, core: &mut Core) -> Result<(), CoreError> {
        if core.needs_recovery {
            self.recover(core)?;
        }
        Ok(())
    }

    /// Rebuilds the devices the step log has steps of (their snapshots with the steps replayed,
    /// through the same code as the live path) and checkpoints them. Returns how many devices
    /// the log had steps of.
    fn recover(&self, core: &mut Core) -> Result<usize, CoreError> {
        let mut steps: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
        let mut order: Vec<String> = Vec::new();
        core.log.clear();
        for (seq, bytes) in self.store.log()? {
            core.log.push(seq);
            let Ok(record) = postcard::from_bytes::<Vec<(String, Vec<u8>)>>(&bytes) else {
                self.store
                    .quarantine_log(seq, &bytes, "step log record does not decode");
                continue;
            };
            for (device, step) in record {
                if step.is_empty() {
                    // A snapshot (or a forgetting) after the steps before it.
                    steps.remove(&device);
                } else {
                    if !steps.contains_key(&device) {
                        order.push(device.clone());
                    }
                    steps.entry(device).or_default().push(step);
                }
            }
        }
        let mut n = 0;
        for device in order {
            let Some(list) = steps.remove(&device) else {
                continue;
            };
            let (mut slot, _) = core.load(&self.store, &device, Millis::MIN)?;
            core.replay_steps(&device, &mut slot, list);
            slot.logged = true;
            core.slots.insert(device, slot);
            n += 1;
        }
        let started = Instant::now();
        core.held_on_disk = self
            .store
            .reorder_devices()?
            .into_iter()
            .filter(|d| !core.slots.contains_key(d.as_str()))
            .map(|d| (d, started))
            .collect();
        core.needs_recovery = false;
        self.checkpoint_locked(core)?;
        self.metrics.devices_in_memory.set(core.slots.len() as i64);
        Ok(n)
    }

    /// Writes the whole state of the listed devices that have steps in the log (in commits of
    /// at most 512), each followed by its mark in the log. A failed commit leaves the core to
    /// be rebuilt from the store.
    fn snapshot_devices(&self, core: &mut Core, devices: &[String]) -> Result<(), CoreError> {
        for chunk in devices.chunks(512) {
            let mut tx = self.store.tx();
            let mut marks: Vec<(&str, Vec<u8>)> = Vec::new();
            for d in chunk {
                if let Some(slot) = core.slots.get_mut(d.as_str()) {
                    if slot.logged || slot.force_snapshot || !slot.snapshot_stored {
                        slot.snapshot(&mut tx, d);
                        marks.push((d, Vec::new()));
                    }
                }
            }
            if marks.is_empty() {
                continue;
            }
            let seq = tx.put_log(log_record(&marks));
            if let Err(e) = self.store.commit(tx) {
                self.distrust(core);
                return Err(e.into());
            }
            core.log.push(seq);
        }
        Ok(())
    }

    /// Writes the whole state of every device with steps in the log, then empties the log.
    fn checkpoint_locked(&self, core: &mut Core) -> Result<(), CoreError> {
        let devices: Vec<String> = core
            .slots
            .iter()
            .filter(|(_, s)| s.logged || s.force_snapshot)
            .map(|(d, _)| d.clone())
            .collect();
        self.snapshot_devices(core, &devices)?;
        for chunk in core.log.chunks(4096) {
            let mut tx = self.store.tx();
            for &seq in chunk {
                tx.remove_log(seq);
            }
            self.store.commit(tx)?;
        }
        core.log.clear();
        core.log_steps = 0;
        Ok(())
    }

    /// Drops the least recently seen device states beyond `ingest.max_devices_in_memory`
    /// (all are committed by now). A device leaves memory with its whole state written (one
    /// commit for all of them), so that what is on disk is its state; if that commit fails,
    /// memory is rebuilt from the store. Evicts down to 90 % of the bound at once so the sort
    /// is paid rarely.
    fn evict(&self, core: &mut Core) {
        let max = self.settings.ingest.max_devices_in_memory;
        if core.slots.len() <= max {
            return;
        }
        let target = (max - max / 10).max(1).min(max);
        let mut ticks: Vec<u64> = core.slots.values().map(|s| s.tick).collect();
        let n_evict = core.slots.len() - target;
        ticks.select_nth_unstable(n_evict - 1);
        let cutoff = ticks[n_evict - 1];
        let victims: Vec<String> = core
            .slots
            .iter()
            .filter(|(_, s)| s.tick <= cutoff && !s.dirty)
            .map(|(d, _)| d.clone())
            .collect();
        if let Err(e) = self.snapshot_devices(core, &victims) {
            tracing::warn!("device states not evicted (their snapshots could not be written): {e}");
            return;
        }
        let before = core.slots.len();
        // A device holding items for event-time order may go too (they are on disk): the idle
        // release finds it through `held_on_disk`.
        let held = &mut core.held_on_disk;
        core.slots.retain(|d, s| {
            let keep = s.tick > cutoff || s.dirty;
            if !keep && !s.reorder.is_empty() {
                held.insert(d.clone(), s.last_arrival);
            }
            keep
        });
        self.metrics
            .evictions
            .inc_by((before - core.slots.len()) as u64);
    }

    /// Drops the state of devices whose newest timestamp is older than `now_ms - forget_after`
    /// from memory and disk (their tickets stay). Returns how many were forgotten.
    pub fn forget_unseen(&self, now_ms: i64) -> Result<usize, CoreError> {
        let Some(after) = self.settings.ingest.forget_after else {
            return Ok(0);
        };
        let cutoff = now_ms.saturating_sub(after.as_millis_i64());
        let mut core = self.core.lock();
        let core = &mut *core;
        self.recover_if_needed(core)?;
        let mut gone = Vec::new();
        for (device, bytes) in self.store.states()? {
            let newest = match core.slots.get(device.as_str()) {
                Some(slot) => Some(
                    slot.state
                        .last_ts
                        .max(slot.reorder.max_seen.unwrap_or(Millis::MIN)),
                ),
                None => DeviceState::decode(&bytes).map(|s| s.last_ts),
            };
            // A state that does not decode is the quarantine's business, not this sweep's.
            if newest.is_some_and(|t| t < cutoff) {
                gone.push(device);
            }
        }
        if gone.is_empty() {
            return Ok(0);
        }
        let mut tx = self.store.tx();
        for d in &gone {
            tx.remove_device_state(d);
            tx.remove_kv(&gap_key(d));
        }
        // Marks in the step log: a replay must not bring back what the log holds of them.
        let marks: Vec<(&str, Vec<u8>)> = gone.iter().map(|d| (d.as_str(), Vec::new())).collect();
        let log_seq = tx.put_log(log_record(&marks));
        self.store.commit(tx)?;
        core.log.push(log_seq);
        let mut gaps = self.gaps.lock();
        for d in &gone {
            core.slots.remove(d.as_str());
            core.unregistered.remove(d.as_str());
            gaps.remove(d.as_str());
            self.forget_watches(d);
        }
        self.metrics.devices_forgotten.inc_by(gone.len() as u64);
        self.metrics
            .unregistered_devices
            .set(core.unregistered.len() as i64);
        self.metrics.devices_in_memory.set(core.slots.len() as i64);
        tracing::info!(
            "forgot the state of {} device(s) unseen for {after}",
            gone.len()
        );
        Ok(gone.len())
    }

    /// Writes the whole state of every device the step log has steps of and empties the log
    /// (rebuilding memory from the store first when it cannot be trusted: at start, after a
    /// failed commit). At start-up, at shutdown, before the models change and whenever
    /// `store.snapshot_every` steps have been logged. Returns how many devices were rebuilt
    /// from the log.
    pub fn checkpoint(&self) -> Result<usize, CoreError> {
        let mut core = self.core.lock();
        let core = &mut *core;
        if core.needs_recovery {
            return self.recover(core);
        }
        self.checkpoint_locked(core)?;
        Ok(0)
    }

    /// A device's state as applied (in the store's batches; durable once flushed): the one in
    /// memory, else its snapshot (a device leaves memory with its whole state written). `None`
    /// for a device the daemon has no state of.
    pub fn device_state(&self, device: &str) -> Result<Option<DeviceState>, CoreError> {
        let mut core = self.core.lock();
        let core = &mut *core;
        self.recover_if_needed(core)?;
        if let Some(s) = core.slots.get(device) {
            return Ok(Some(s.state.clone()));
        }
        let (slot, found) = core.load(&self.store, device, Millis::MIN)?;
        Ok(found.then_some(slot.state))
    }

    /// Releases what devices silent for `reorder_idle` still hold in their reorder buffers (and,
    /// once, what was held at start), applies it and commits. Returns the items released.
    pub fn release_idle(&self) -> Result<usize, CoreError> {
        let mut core = self.core.lock();
        let core = &mut *core;
        self.recover_if_needed(core)?;
        let idle = self.settings.reorder_idle;
        let now = Instant::now();
        let mut devices: Vec<String> = core
            .slots
            .iter()
            .filter(|(_, s)| !s.reorder.is_empty() && now.duration_since(s.last_arrival) >= idle)
            .map(|(d, _)| d.clone())
            .collect();
        core.held_on_disk.retain(|d, at| {
            let due = now.duration_since(*at) >= idle;
            if due {
                devices.push(d.clone());
            }
            !due
        });
        if devices.is_empty() {
            return Ok(0);
        }
        let mut dirty = Vec::new();
        let mut changes = Vec::new();
        let mut tally = Tally::default();
        let mut released = Vec::new();
        for d in &devices {
            core.slot(&self.store, d, Millis::MIN, &mut dirty)?;
            if let Some(slot) = core.slots.get_mut(d.as_str()) {
                slot.steps.push(encode_step(&Step::Flush));
                slot.reorder.flush(d, &mut released);
            }
        }
        let n = released.len();
        {
            let shared = Shared {
                engine: &core.engine,
                devices: &core.devices,
                unregistered: &core.unregistered,
            };
            for (item, received_ms) in released {
                let device = item.device_id();
                if let Some(slot) = core.slots.get_mut(device) {
                    self.apply(&shared, slot, &item, received_ms, &mut tally, &mut changes);
                }
            }
        }
        self.commit_group(core, &dirty, &changes, tally, true)?;
        Ok(n)
    }

    /// Writes one ticket change into the transaction: the ticket, its dispatch outbox row and
    /// whatever the notifier adds.
    fn record_change(&self, core: &Core, tx: &mut Tx, c: &Change, now_ms: i64) {
        tx.put_ticket(&c.ticket);
        tx.push_outbox(
            crate::dispatch::QUEUE,
            &DispatchRow::new(c, self.settings.has_webhook),
        );
        self.metrics
            .ticket_changes
            .with_label_values(&[c.kind.as_str()])
            .inc();
        // Notifications integration point: the notifier writes its outbox rows into the same
        // commit as the ticket change.
        let device = core.devices.get(&c.ticket.device_id);
        let customer = c
            .ticket
            .customer_id
            .as_deref()
            .or(device.and_then(|d| d.customer_id.as_deref()))
            .and_then(|id| core.customers.get(id));
        self.notifier
            .on_ticket_change(tx, c, customer, device, now_ms);
    }

    /// The broker's count of dropped publishes (broker-wide): kept, exported, and a rise since
    /// forewarn first heard it logged, within the per-minute budget.
    fn broker_drops(&self, payload: &[u8]) {
        let Some(n) = std::str::from_utf8(payload)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
        else {
            tracing::debug!("the broker's dropped-message count is not a number; ignored");
            return;
        };
        self.metrics
            .broker_dropped
            .set(i64::try_from(n).unwrap_or(i64::MAX));
        let rose = {
            let mut l = self.loss.lock();
            let (first, last) = l.broker_dropped.unwrap_or((n, n));
            l.broker_dropped = Some((first, n));
            n > last
        };
        let now = chrono::Utc::now().timestamp_millis();
        if rose
            && self.loss_log_budget.lock().allow(
                now,
                self.settings.rejects_per_minute,
                "broker drop reports",
            )
        {
            tracing::warn!(
                dropped = n,
                "the broker reports {n} dropped publishes (all its subscribers): messages for a \
                 subscriber that fell behind are dropped beyond its queue and in-flight limits \
                 (Mosquitto: max_queued_messages, max_inflight_messages); a device's last \
                 readings lost this way show as a seq gap only when it sends again"
            );
        }
    }

    /// A Sparkplug edge node's `seq` gap: counted with the other losses and kept as the node's
    /// last gap (`GET /api/v1/gaps`, under the node's device id), in messages rather than readings.
    fn sparkplug_gap(
        &self,
        g: crate::ingest::sparkplug::SeqGap,
        received_ms: i64,
        tally: &mut Tally,
    ) {
        let (prev, seq) = (u64::from(g.prev), u64::from(g.seq));
        tally.missing += g.missing;
        let gap = Gap {
            device_id: g.node_id.clone(),
            after_seq: prev,
            next_seq: seq,
            missing: g.missing,
            ts: format_ts(received_ms),
            noticed_at: format_ts(chrono::Utc::now().timestamp_millis()),
        };
        self.gaps.lock().insert(g.node_id.clone(), gap.clone());
        tally.gaps.push(gap);
        self.note_loss(
            &g.node_id,
            LossNote::NodeGap {
                prev,
                seq,
                missing: g.missing,
            },
        );
    }

    /// Logs a `seq` gap or reset, within the per-minute budget (the rest are only counted).
    fn note_loss(&self, device: &str, note: LossNote) {
        let now = chrono::Utc::now().timestamp_millis();
        if !self.loss_log_budget.lock().allow(
            now,
            self.settings.rejects_per_minute,
            "seq gaps or resets",
        ) {
            return;
        }
        let device = clip(device, 200);
        match note {
            LossNote::Gap { prev, seq, missing } => tracing::warn!(
                device,
                missing,
                "{missing} reading(s) of device {device} never arrived (seq {prev} then {seq}): \
                 the broker drops QoS 1 messages a slow or offline subscriber has not taken \
                 beyond its queue and in-flight limits (Mosquitto: max_queued_messages, default \
                 1000; max_inflight_messages, default 20) — raise them (see the README)"
            ),
            LossNote::NodeGap { prev, seq, missing } => tracing::warn!(
                device,
                missing,
                "{missing} Sparkplug message(s) of edge node {device} never arrived (seq {prev} \
                 then {seq}): the broker drops QoS 1 messages a slow or \
                 offline subscriber has not taken beyond its queue and in-flight limits \
                 (Mosquitto: max_queued_messages, max_inflight_messages) — raise them (see the \
                 README)"
            ),
            LossNote::Reset { last, seq } => tracing::warn!(
                device,
                "device {device} restarted its seq ({last} then {seq}, on a newer reading): \
                 counted as a reset, its readings are applied"
            ),
        }
    }

    /// At the first connection: compares the broker's `session_present` with what the data
    /// directory expects (a persistent session at this broker under this client id, recorded
    /// after the first connection), says so when they disagree, and records the session.
    pub fn check_session(&self, session_present: bool, broker: &str, client_id: &str) {
        let mark = BrokerSession {
            broker: broker.to_string(),
            client_id: client_id.to_string(),
        };
        let known = self
            .store
            .get_kv::<BrokerSession>(BROKER_SESSION_KEY)
            .ok()
            .flatten();
        let note = session_verdict(session_present, known.as_ref(), &mark);
        if let Some(n) = &note {
            tracing::warn!("broker session: {n}");
        }
        *self.session_note.lock() = note;
        if known.as_ref() != Some(&mark) {
            let mut tx = self.store.tx();
            tx.put_kv(BROKER_SESSION_KEY, &mark);
            if let Err(e) = self.store.commit(tx) {
                tracing::warn!("could not record the broker session: {e}");
            }
        }
    }

    /// What the session check found amiss at start, if anything.
    pub fn session_note(&self) -> Option<String> {
        self.session_note.lock().clone()
    }

    /// Updates the watch list from one reading's scorings: a mode at or above its watch level
    /// is listed (or its entry refreshed), one below it is dropped.
    fn note_watches(&self, scored: &[Scoring]) {
        let mut all = self.watches.lock();
        for s in scored {
            match all.get_mut(s.device_id.as_str()) {
                Some(list) => match list.iter().position(|w| w.mode == s.mode) {
                    Some(i) if s.watch => {
                        list[i].probability = s.probability;
                        list[i].scored = s.ts;
                    }
                    Some(i) => {
                        list.swap_remove(i);
                        self.metrics
                            .watched_devices
                            .with_label_values(&[s.mode.as_str()])
                            .dec();
                        if list.is_empty() {
                            all.remove(s.device_id.as_str());
                        }
                    }
                    None if s.watch => {
                        list.push(new_watch(s));
                        self.metrics
                            .watched_devices
                            .with_label_values(&[s.mode.as_str()])
                            .inc();
                    }
                    None => {}
                },
                None if s.watch => {
                    all.insert(s.device_id.clone(), vec![new_watch(s)]);
                    self.metrics
                        .watched_devices
                        .with_label_values(&[s.mode.as_str()])
                        .inc();
                }
                None => {}
            }
        }
    }

    /// Drops a device's watches (the device was forgotten).
    fn forget_watches(&self, device: &str) {
        if let Some(list) = self.watches.lock().remove(device) {
            for w in list {
                self.metrics
                    .watched_devices
                    .with_label_values(&[w.mode.as_str()])
                    .dec();
            }
        }
    }

    /// Empties the watch list (the models changed).
    fn clear_watches(&self) {
        let mut all = self.watches.lock();
        for w in all.values().flatten() {
            self.metrics
                .watched_devices
                .with_label_values(&[w.mode.as_str()])
                .dec();
        }
        all.clear();
    }

    /// Every watched device and mode, by device id then mode.
    pub fn watches(&self) -> Vec<Watch> {
        let mut v: Vec<Watch> = self
            .watches
            .lock()
            .iter()
            .flat_map(|(device, list)| {
                list.iter().map(move |w| Watch {
                    device_id: device.clone(),
                    mode: w.mode.clone(),
                    probability: w.probability,
                    since: format_ts(w.since),
                    scored_at: format_ts(w.scored),
                })
            })
            .collect();
        v.sort_by(|a, b| (&a.device_id, &a.mode).cmp(&(&b.device_id, &b.mode)));
        v
    }

    /// Each device's last `seq` gap, by device id.
    pub fn gaps(&self) -> Vec<Gap> {
        let mut v: Vec<Gap> = self.gaps.lock().values().cloned().collect();
        v.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        v
    }

    /// Upstream loss since start.
    pub fn loss(&self) -> Loss {
        *self.loss.lock()
    }

    fn reject(&self, topic: &str, payload: &[u8], rej: &Reject) {
        self.metrics
            .rejected
            .with_label_values(&[rej.reason.as_str()])
            .inc();
        let now = chrono::Utc::now().timestamp_millis();
        if self
            .log_budget
            .lock()
            .allow(now, self.settings.rejects_per_minute, "rejected payloads")
        {
            // Values the payload carried stay out of the log (they may be anything a device
            // sent); the full detail is kept for GET /api/v1/rejects.
            tracing::warn!(topic = %clip(topic, 200), reason = rej.reason.as_str(), "rejected payload: {}", rej.log_detail());
        }
        let cap = self.settings.ingest.recent_rejects;
        if cap == 0 {
            return;
        }
        let prefix = &payload[..payload.len().min(256)];
        let rec = RejectRecord {
            received_at: format_ts(now),
            topic: clip(topic, 200).to_string(),
            reason: rej.reason.as_str(),
            detail: clip(&rej.detail, 500).to_string(),
            payload_prefix: String::from_utf8_lossy(prefix).into_owned(),
        };
        let mut q = self.rejects.lock();
        while q.len() >= cap {
            q.pop_front();
        }
        q.push_back(rec);
    }

    /// Recent rejects, newest first.
    pub fn rejects(&self) -> Vec<RejectRecord> {
        self.rejects.lock().iter().rev().cloned().collect()
    }

    // ---------------------------------------------------------------- tickets

    pub fn ticket(&self, id: &str) -> Option<Ticket> {
        self.store.ticket(id).ok().flatten()
    }

    /// Moves a ticket to `to` (or, with `None`, adds a history note) through the single writer,
    /// committing the ticket, its dispatch row and the notifier's rows.
    pub fn transition(
        &self,
        id: &str,
        to: Option<Status>,
        actor: &str,
        note: &str,
    ) -> Result<Ticket, CoreError> {
        self.transition_with(id, to, actor, note, None, |_, _| Ok(()))
    }

    /// [`App::transition`], with the outcome a person gives when resolving or dismissing (the
    /// label for the next training run), and `also`: further records written in the same
    /// commit as the change (the board's booked visit or assignment), given the changed ticket.
    /// `also` runs inside the single writer: no I/O, no waiting.
    pub fn transition_with(
        &self,
        id: &str,
        to: Option<Status>,
        actor: &str,
        note: &str,
        outcome: Option<Outcome>,
        also: impl FnOnce(&Ticket, &mut Tx) -> Result<(), CoreError>,
    ) -> Result<Ticket, CoreError> {
        let mut core = self.core.lock();
        let core = &mut *core;
        let mut t = self
            .store
            .ticket(id)?
            .ok_or_else(|| CoreError::TicketNotFound(id.to_string()))?;
        let now = self.notifier.now_ms();
        let previous_priority = Some(t.priority);
        match to {
            Some(to) => t.transition(to, actor, now, note)?,
            None => {
                t.history.push(HistoryEntry {
                    at: format_ts(now),
                    actor: actor.to_string(),
                    action: "note".into(),
                    from: None,
                    to: None,
                    note: note.to_string(),
                });
            }
        }
        if let Some(o) = outcome {
            if !matches!(t.status, Status::Resolved | Status::Dismissed) {
                return Err(CoreError::Invalid(
                    "an outcome is given only when resolving or dismissing a ticket".into(),
                ));
            }
            t.outcome = Some(o);
        }
        let change = Change {
            kind: ChangeKind::Transition,
            previous_priority,
            ticket: t.clone(),
        };
        let mut tx = self.store.tx();
        also(&t, &mut tx)?;
        self.record_change(core, &mut tx, &change, now);
        self.store.commit(tx)?;
        if let Some(slot) = core.slots.get_mut(t.device_id.as_str()) {
            slot.live.retain(|x| x.id != t.id);
            if t.is_live() {
                slot.live.push(t.clone());
            }
        }
        self.dispatch_wake.notify_one();
        Ok(t)
    }

    /// For the notifier's `TicketDesk`: a customer's reply moves the ticket (or, with `to:
    /// None`, only adds a history note) through the single writer.
    pub fn customer_reply(
        &self,
        id: &str,
        to: Option<Status>,
        actor: &str,
        note: &str,
    ) -> Result<Ticket, DeskError> {
        self.transition(id, to, actor, note).map_err(|e| match e {
            CoreError::Store(e) => DeskError::Store(e),
            CoreError::TicketNotFound(id) => DeskError::TicketNotFound(id),
            CoreError::Transition(e) => DeskError::Transition(e),
            CoreError::Invalid(m) => DeskError::Invalid(m),
            // A transition opens no ticket, so it claims none; kept total all the same.
            e @ CoreError::Claim(_) => DeskError::Invalid(e.to_string()),
        })
    }

    // ---------------------------------------------------------------- fleet

    pub fn device(&self, id: &str) -> Option<Device> {
        self.core.lock().devices.get(id).cloned()
    }

    pub fn customer(&self, id: &str) -> Option<Customer> {
        self.core.lock().customers.get(id).cloned()
    }

    pub fn devices(&self) -> Vec<Device> {
        let mut v: Vec<Device> = self.core.lock().devices.values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    pub fn customers(&self) -> Vec<Customer> {
        let mut v: Vec<Customer> = self.core.lock().customers.values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Inserts or replaces fleet records (validated by the caller) in one commit.
    pub fn upsert_fleet(
        &self,
        customers: Vec<Customer>,
        devices: Vec<Device>,
    ) -> Result<(), CoreError> {
        let mut core = self.core.lock();
        // The step log replays under the registry of the day: write these devices' whole
        // states before it changes.
        self.recover_if_needed(&mut core)?;
        let ids: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
        self.snapshot_devices(&mut core, &ids)?;
        let mut tx = self.store.tx();
        for c in &customers {
            if let Some(old) = core.customers.get(&c.id) {
                crate::fleet::prune_contact_index(&self.store, &mut tx, old, c)?;
            }
            tx.put_fleet_customer(&c.id, c);
        }
        for d in &devices {
            tx.put_fleet_device(&d.id, d);
        }
        self.store.commit(tx)?;
        for c in customers {
            core.customers.insert(c.id.clone(), c);
        }
        for d in devices {
            core.unregistered.remove(d.id.as_str());
            core.devices.insert(d.id.clone(), d);
        }
        self.metrics
            .unregistered_devices
            .set(core.unregistered.len() as i64);
        Ok(())
    }

    // ---------------------------------------------------------------- models

    pub fn models_ready(&self) -> bool {
        self.models_ready.load(Ordering::Relaxed)
    }

    /// Whether the last commit (or reopening) of the store succeeded.
    pub fn store_writable(&self) -> bool {
        self.store_writable.load(Ordering::Relaxed)
    }

    /// Recorded by the commit loop after each commit attempt.
    pub fn set_store_writable(&self, ok: bool) {
        self.store_writable.store(ok, Ordering::Relaxed);
    }

    pub fn broker_connected(&self) -> bool {
        self.broker_connected.load(Ordering::Relaxed)
    }

    /// Reloads every artifact of the models directory. On any error the old models stay.
    pub fn reload_models(&self) -> Result<usize, ReloadError> {
        let dir = self.settings.models_dir.clone();
        let res = {
            let base = load_metric_index(&self.store);
            let mut core = self.core.lock();
            let base = merge_index(base, &core.engine.models.index);
            match build_models(&dir, &self.settings.window, base) {
                Ok(models) => {
                    let n = models.list.len();
                    // The step log replays under the models of the day: checkpoint before
                    // they change.
                    let checkpointed = self
                        .recover_if_needed(&mut core)
                        .and_then(|()| self.checkpoint_locked(&mut core));
                    match checkpointed {
                        Err(e) => Err(ReloadError::Checkpoint(Box::new(e))),
                        Ok(_) => match save_metric_index(&self.store, &models.index) {
                            Ok(()) => {
                                core.engine =
                                    Engine::new(self.settings.engine.clone(), Arc::new(models));
                                // New models, new levels (and perhaps other modes): a device
                                // is watched again from its next scoring under them.
                                self.clear_watches();
                                Ok(n)
                            }
                            Err(e) => Err(ReloadError::Store(e)),
                        },
                    }
                }
                Err(e) => Err(e),
            }
        };
        match &res {
            Ok(n) => {
                self.metrics.models_loaded.set(*n as i64);
                self.metrics.model_reloads.with_label_values(&["ok"]).inc();
                tracing::info!("reloaded {n} model artifact(s) from {}", dir.display());
            }
            Err(e) => {
                self.metrics
                    .model_reloads
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!("model reload failed, keeping the current models: {e}");
            }
        }
        res
    }
}

/// Customer replies move tickets through the single writer, like API transitions.
impl TicketDesk for App {
    fn ticket(&self, id: &str) -> Option<Ticket> {
        App::ticket(self, id)
    }
    fn customer_reply(
        &self,
        id: &str,
        to: Option<Status>,
        actor: &str,
        note: &str,
    ) -> Result<Ticket, DeskError> {
        App::customer_reply(self, id, to, actor, note)
    }
    fn customer(&self, id: &str) -> Option<Customer> {
        App::customer(self, id)
    }
    fn device(&self, id: &str) -> Option<Device> {
        App::device(self, id)
    }
}

impl Core {
    /// Makes sure the device has a slot (loading its stored state and live tickets on first
    /// touch) and marks it dirty.
    fn slot(
        &mut self,
        store: &Store,
        device: &str,
        ts: i64,
        dirty: &mut Vec<String>,
    ) -> Result<(), CoreError> {
        self.tick += 1;
        let tick = self.tick;
        if let Some(s) = self.slots.get_mut(device) {
            s.tick = tick;
            if !s.dirty {
                s.dirty = true;
                dirty.push(device.to_string());
            }
            return Ok(());
        }
        // Back in memory: the idle release finds it among the slots again.
        self.held_on_disk.remove(device);
        let (mut slot, _) = self.load(store, device, ts)?;
        slot.tick = tick;
        slot.dirty = true;
        self.slots.insert(device.to_string(), slot);
        dirty.push(device.to_string());
        Ok(())
    }

    /// A device's snapshot as the store has it (a new state from event time `ts` when there is
    /// none), with its reorder buffer and its live tickets; says whether the store had a state
    /// of the device. Records that cannot be decoded are set aside.
    fn load(&self, store: &Store, device: &str, ts: Millis) -> Result<(Slot, bool), CoreError> {
        let state = store.load_state(device)?.and_then(|bytes| {
            let s = DeviceState::decode(&bytes);
            if s.is_none() {
                store.quarantine_state(device, &bytes, "device state does not decode");
            }
            s
        });
        let (reorder, reorder_stored) = match store.load_reorder(device)? {
            Some(bytes) => match reorder::Buffer::decode(&bytes) {
                Some(b) => (b, true),
                None => {
                    store.quarantine_reorder(device, &bytes, "reorder buffer does not decode");
                    (reorder::Buffer::default(), false)
                }
            },
            None => (reorder::Buffer::default(), false),
        };
        let found = state.is_some();
        let slot = Slot {
            state: state.unwrap_or_else(|| self.engine.new_state(ts)),
            live: store.live_tickets(device)?,
            reorder,
            reorder_stored,
            last_arrival: Instant::now(),
            tick: 0,
            dirty: false,
            // A snapshot set aside is written again at the next commit.
            snapshot_stored: found,
            logged: false,
            steps: Vec::new(),
            force_snapshot: false,
        };
        Ok((slot, found))
    }

    /// Replays logged steps (in log order) over a loaded slot. Without a snapshot the state
    /// starts where the live path started it: at the first item offered. A step that does not
    /// decode is skipped and logged.
    fn replay_steps(&self, device: &str, slot: &mut Slot, steps: Vec<Vec<u8>>) {
        let mut released = Vec::new();
        for (i, bytes) in steps.into_iter().enumerate() {
            let step = match postcard::from_bytes::<Step<Pending>>(&bytes) {
                Ok(step) => step,
                Err(e) => {
                    tracing::error!(device = %clip(device, 200), "logged step does not decode, skipped: {e}");
                    continue;
                }
            };
            if i == 0 && !slot.snapshot_stored {
                if let Step::Offer { item, .. } | Step::Apply(item) = &step {
                    slot.state = self.engine.new_state(item.ts);
                }
            }
            match step {
                Step::Offer { tolerance_ms, item } => {
                    if slot.reorder.offer(item, tolerance_ms) == Offer::Held {
                        slot.reorder.release(device, &mut released);
                    }
                }
                Step::Apply(item) => released.push(item.into_item(device)),
                Step::Flush => slot.reorder.flush(device, &mut released),
            }
            for (item, _) in released.drain(..) {
                self.replay(&mut slot.state, &item);
            }
        }
    }

    /// Applies a logged item to a state: what [`App::apply`] did to it, without the effects
    /// already committed (ticket changes, counts, gaps).
    fn replay(&self, state: &mut DeviceState, item: &Item) {
        let mut changes = Vec::new();
        let mut live = Vec::new();
        match item {
            Item::Reading(r) => {
                let dev = self.devices.get(&r.device_id);
                let ctx = DeviceCtx {
                    attrs: dev.map(|d| &d.attributes),
                    customer_id: dev.and_then(|d| d.customer_id.as_deref()),
                };
                apply_reading(&self.engine, state, &mut live, ctx, r, &mut changes, None);
            }
            Item::Event(ev) => self.engine.event(state, &mut live, ev, &mut changes),
        }
    }
}

impl Slot {
    /// Adds what a commit must keep of the device: this group's steps for the step log, or its
    /// whole state (with its mark in the log) when it has none stored yet. Returns the steps
    /// logged.
    fn persist<'a>(
        &mut self,
        tx: &mut Tx,
        device: &'a str,
        records: &mut Vec<(&'a str, Vec<u8>)>,
    ) -> u64 {
        if !self.snapshot_stored || self.force_snapshot {
            self.snapshot(tx, device);
            records.push((device, Vec::new()));
            return 0;
        }
        let n = self.steps.len() as u64;
        if n > 0 {
            self.logged = true;
            records.extend(self.steps.drain(..).map(|s| (device, s)));
        }
        n
    }

    /// Writes the device's whole state (state and reorder buffer); the caller marks it in the
    /// step log. The bookkeeping changes in memory at once; a caller whose commit fails drops
    /// the slots (memory is rebuilt from the store).
    fn snapshot(&mut self, tx: &mut Tx, device: &str) {
        tx.put_state(device, self.state.encode());
        if !self.reorder.is_empty() {
            tx.put_reorder(device, self.reorder.encode());
            self.reorder_stored = true;
        } else if self.reorder_stored {
            tx.remove_reorder(device);
            self.reorder_stored = false;
        }
        self.steps.clear();
        self.snapshot_stored = true;
        self.force_snapshot = false;
        self.logged = false;
    }
}

/// A step log record: (device, encoded step) in the order applied; an empty step marks the
/// device's whole state written (or forgotten) at that point, so a replay drops what came
/// before.
fn log_record(records: &[(&str, Vec<u8>)]) -> Vec<u8> {
    // Strings and bytes only: postcard cannot fail on them.
    postcard::to_allocvec(records).unwrap_or_default()
}

/// Where a device's last gap is kept (`k/gap/<device>`).
const GAP_PREFIX: &str = "gap/";

fn gap_key(device: &str) -> String {
    format!("{GAP_PREFIX}{device}")
}

fn clip(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The metric index stored with the device states (ids inside stored states refer to it).
pub(crate) fn load_metric_index(store: &Store) -> MetricIndex {
    match store.get_kv::<Vec<String>>(METRIC_INDEX_KEY) {
        Ok(Some(names)) => MetricIndex::new(names),
        _ => MetricIndex::default(),
    }
}

pub(crate) fn save_metric_index(store: &Store, index: &MetricIndex) -> Result<(), StoreError> {
    let mut tx = store.tx();
    tx.put_kv(METRIC_INDEX_KEY, &index.names().to_vec());
    store.commit(tx)
}

fn merge_index(mut base: MetricIndex, current: &MetricIndex) -> MetricIndex {
    for n in current.names() {
        base.intern(n.clone());
    }
    base
}

/// Loads and indexes every artifact of `dir`, keeping the ids of `base` stable.
pub(crate) fn build_models(
    dir: &Path,
    window: &WindowSpec,
    base: MetricIndex,
) -> Result<Models, ReloadError> {
    let artifacts = crate::predict::load_dir(dir)?;
    Ok(Models::with_index(artifacts, window, base)?)
}
