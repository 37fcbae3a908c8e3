//! Cluster mode: several forewarn instances share one fleet through NATS JetStream
//! (`[cluster]`, `forewarn serve --cluster nats://HOST:PORT`).
//!
//! The story of a reading: a device publishes on `devices.ID.telemetry` (directly, or as the MQTT
//! topic `devices/ID/telemetry` through NATS's MQTT listener); the server's subject mapping
//! (`{{partition(P,1)}}` on the device id, see README) turns it into `PREFIX.N.devices.ID.telemetry`;
//! the stream `cluster.stream` keeps it. The instance holding partition N's lease reads it from
//! the partition's durable consumer and hands it to the same processor as the MQTT path; the
//! acknowledgement goes out only after the group's commit is durable ([`ack_loop`]).
//!
//! Ownership ([`Cluster::spawn`]): every instance heartbeats `m.NAME` in the lease bucket, reads
//! the live members, and wants the partitions rendezvous hashing gives it
//! ([`partition::share`]). A lease is the key `p.N`, created only if absent and renewed with
//! the revision it last wrote (compare-and-set); the bucket's `max_age` is the lease time, so
//! the keys of an instance that dies vanish and another creates them. A partition no longer
//! wanted (a member joined) is released: its consumer stops, its acknowledgements drain, then
//! the key is deleted.
//!
//! State hand-off: a partition's owner writes a checkpoint — its devices' states and tickets
//! and the stream sequence they cover — to the bucket `BUCKETS-state` every `checkpoint_every`
//! messages and when it hands the partition on ([`checkpoint`]). A new owner takes the
//! checkpoint (unless its own state of the partition is further on), reads the durable
//! consumer's acknowledgement floor, replays the partition from after the checkpoint up to the
//! floor (effects of those messages were committed and sent by the earlier owner: ticket
//! changes are stored, nothing is sent — [`Fleetwide::replaying`]), waits until the replay is
//! committed, then consumes everything after it, in order. Without a readable checkpoint the
//! replay starts at the stream's start (the stream keeps `stream_max_age`).
//!
//! No message is applied twice to a state that holds it: the instance remembers, per
//! partition, the last stream sequence its state holds everything up to (`applied`); a
//! consumer re-made after a lost connection, or a partition taken again, starts after it, and a
//! message delivered again below it is skipped. (Before, a NATS restart made the consumer start
//! again at its acknowledgement floor — the acknowledgements of committed groups lost with the
//! connection — and replayed the partition from the start over the live state; a device whose
//! reorder buffer the idle timer had emptied meanwhile took an error event at its newest time
//! again, counting it twice.)
//!
//! The fleet registry (devices, customers) is the fleet's: a record accepted through an
//! instance's API is committed there, then put in the bucket `BUCKETS-registry`
//! ([`Fleetwide::share_registry`], [`registry`]); every instance watches the bucket — its
//! whole content at start, then each change — and applies what it sees through the same
//! upsert ([`Cluster::registry_loop`]), so the registries converge on the bucket's last
//! value of each record. The fleet file is brought into the bucket at start
//! ([`Cluster::import_fleet_file`]), and no partition is consumed before the bucket's first
//! load.
//!
//! Transitions: one accepted here is published on the partition's `PREFIX.N.forewarn.transition`
//! before it is stored ([`Fleetwide::record_transition`]); replays and the live consumer apply
//! such records in stream order ([`App::apply_recorded`]), so a ticket's transitions move with
//! its partition.
//!
//! The board's records beside a transition (an assignment, a proposal, a booked visit) travel
//! in its record, and the device's tickets' records in the partition's checkpoint.
//!
//! The applied sequence of each partition is also kept in the store (written after each
//! acknowledged group), so a restart on the same store without a readable checkpoint replays
//! only what follows it ([`Cluster::keep_applied`]).
//!
//! One ticket fleet-wide: before a commit that opens a ticket, its key `t.ID` is created only
//! if absent in the claims bucket ([`Fleetwide::claim`]), and likewise `c.ID.KIND.MS` before a
//! later update or settlement, so the dispatch and notification rows of a change are written by
//! one instance only; claims expire after `claims_max_age`. Once every row a claimed change
//! wrote has left the claimant's outboxes, its sent mark `s.KEY` is written; a partition's
//! owner takes over the unmarked claims of departed instances and sends them again
//! ([`Cluster::send_departed`]: at least once across a crash). Ticket ids are keyed with a secret
//! shared through the ticket bucket (which never expires), so every instance derives the same id.
//!
//! Fencing: an instance acts as a member (sends from its outboxes, claims, forwards and
//! acknowledges what its consumers read, takes over departed instances' changes) only while
//! its membership key is known live ([`Standing`]: three quarters of a lease after its last
//! heartbeat, on an unbroken run of heartbeats it has rejoined on). The heartbeat has a task
//! of its own ([`Cluster::membership_loop`]), so a starved process keeps its membership
//! whenever it gets the CPU for one put; a partition's consumer also needs its lease renewed
//! within three quarters of a lease ([`Cluster::fence`]), as the lease round is apart from the
//! heartbeat. A late heartbeat on an unbroken run only pauses the instance; a process that
//! wakes from a pause past its lease (SIGSTOP, a stall) sends nothing before it has rejoined
//! ([`Cluster::rejoin`]): the rows of
//! the changes another instance took over and sent meanwhile are dropped, and the claims it
//! keeps are written again at the revision it read, which a take-over based on an earlier read
//! cannot pass ([`Cluster::take_over`] reads the membership key after the claims). A departed
//! instance's claim of a transition whose record never reached the stream is deleted
//! ([`Cluster::abandon_unrecorded`]).
//!
//! One visit per technician and slot fleet-wide: before the board books a visit, the key
//! `s.TECH.START` (the technician id in hex, the slot's start in epoch ms) is created only if
//! absent in the visits bucket with the ticket id as its value ([`Fleetwide::reserve_slot`]);
//! a slot held by another ticket is refused as taken. The key is deleted when the visit moves
//! or its ticket is dismissed or resolved by a person (the writer's transition, whatever made
//! it), and pruned a day after its slot by the holder of partition 0 ([`visits`]).

pub mod checkpoint;
pub mod config;
pub mod partition;
pub mod registry;
mod visits;

pub use config::Config;

use crate::app::{
    App, Applied, ClaimError, ClusterReadiness, ClusterStatus, Fleetwide, Peers,
    RecordedTransition, ShareError,
};
use crate::clock::Clock as _;
use crate::domain::Timestamp;
use crate::engine::{Change, ChangeKind};
use crate::ingest::mqtt::{self, Inbound, Publish, StreamAck};
use async_nats::jetstream::{self, consumer, kv, stream};
use futures_util::StreamExt;
use parking_lot::Mutex;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect { url: String, source: BoxError },
    #[error("JetStream stream {name}: {source}")]
    Stream { name: String, source: BoxError },
    #[error("key-value bucket {name}: {source}")]
    Bucket { name: String, source: BoxError },
    #[error("the shared ticket id key in {bucket}: {reason}")]
    TicketKey { bucket: String, reason: String },
    #[error("cluster metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("partition {partition}: {source}")]
    Partition { partition: u32, source: BoxError },
}

fn partition_error(partition: u32) -> impl Fn(BoxError) -> ClusterError {
    move |source| ClusterError::Partition { partition, source }
}

/// Where the ticket-id secret every instance shares is kept in the ticket bucket.
const TICKET_ID_KEY: &str = "meta.ticket-id-key";
/// How long a call to NATS made from the processor thread may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

struct ClusterMetrics {
    owned: IntGauge,
    leases: IntCounterVec,
    claims: IntCounterVec,
    replayed: IntCounter,
    transitions: IntCounterVec,
    skipped: IntCounter,
    checkpoints: IntCounterVec,
    checkpoint_bytes: IntGauge,
    outbox: IntCounterVec,
    registry: IntCounterVec,
    visits: IntCounterVec,
}

impl ClusterMetrics {
    fn new(r: &Registry) -> Result<ClusterMetrics, prometheus::Error> {
        let owned = IntGauge::new(
            "forewarn_cluster_partitions_owned",
            "Partitions whose lease this instance holds",
        )?;
        let leases = IntCounterVec::new(
            Opts::new(
                "forewarn_cluster_lease_events_total",
                "Partition leases acquired, released (handed on) and lost (expired or taken); \
                 lapsed: this instance's membership key may have expired (a heartbeat landed \
                 more than a lease after the one before: frozen, starved or cut off), so it \
                 stopped sending, claiming and consuming until it rejoined; suspended: its \
                 standing ran out (no heartbeat for three quarters of a lease) but the next \
                 heartbeat showed the membership unbroken, so it went on without a rejoin",
            ),
            &["event"],
        )?;
        let claims = IntCounterVec::new(
            Opts::new(
                "forewarn_cluster_ticket_claims_total",
                "Fleet-wide ticket claims: created, mine (made before by this instance), other \
                 (opened by another instance: stored here, nothing sent)",
            ),
            &["result"],
        )?;
        let replayed = IntCounter::new(
            "forewarn_cluster_replayed_messages_total",
            "Messages replayed to rebuild the state of partitions taken over",
        )?;
        r.register(Box::new(owned.clone()))?;
        r.register(Box::new(leases.clone()))?;
        r.register(Box::new(claims.clone()))?;
        let transitions = IntCounterVec::new(
            Opts::new(
                "forewarn_cluster_transitions_total",
                "Ticket transitions: recorded (in the stream, accepted here), applied (read from \
                 the stream: replayed or made elsewhere), already (in the ticket's history), \
                 refused (not applicable to the ticket as rebuilt here)",
            ),
            &["result"],
        )?;
        r.register(Box::new(replayed.clone()))?;
        r.register(Box::new(transitions.clone()))?;
        let skipped = IntCounter::new(
            "forewarn_cluster_redelivered_skipped_total",
            "Messages delivered again (after a lost connection, a re-made consumer or an \
             acknowledgement wait) that this instance's state already holds: not applied twice",
        )?;
        let checkpoints = IntCounterVec::new(
            Opts::new(
                "forewarn_cluster_checkpoints_total",
                "Partition checkpoints: written, superseded (a newer one was there), failed, \
                 resumed (a partition taken over started from one), unreadable",
            ),
            &["event"],
        )?;
        let checkpoint_bytes = IntGauge::new(
            "forewarn_cluster_checkpoint_bytes",
            "Size of the last partition checkpoint this instance wrote",
        )?;
        r.register(Box::new(skipped.clone()))?;
        r.register(Box::new(checkpoints.clone()))?;
        r.register(Box::new(checkpoint_bytes.clone()))?;
        let outbox = IntCounterVec::new(
            Opts::new(
                "forewarn_cluster_outbox_claims_total",
                "Claimed ticket changes and their outbox rows: marked (every row of a change \
                 claimed here has left the outboxes: its sent mark written), requeued (claimed \
                 by an instance that left without marking it sent: its rows written again here, \
                 the owner of the device's partition), rewritten (one per ticket whose requeued \
                 changes were written again together), dropped (a change this instance claimed \
                 and had not sent when it stopped or lapsed, sent meanwhile by the instance \
                 that took it over: its rows removed from the outboxes when it rejoined), \
                 abandoned (a departed instance's claim of a person's transition whose record \
                 never reached the stream, or could not be applied: deleted)",
            ),
            &["event"],
        )?;
        r.register(Box::new(outbox.clone()))?;
        let registry = IntCounterVec::new(
            Opts::new(
                "forewarn_cluster_registry_records_total",
                "Fleet registry records (devices, customers): shared (put in the fleet-wide \
                 bucket after a commit here), imported (written to the bucket from the fleet \
                 file at start), applied (read from the bucket and written here), unreadable \
                 (skipped), failed (a batch not written here)",
            ),
            &["event"],
        )?;
        r.register(Box::new(registry.clone()))?;
        let visits = IntCounterVec::new(
            Opts::new(
                "forewarn_cluster_visit_reservations_total",
                "Fleet-wide reservations of technicians' visit slots: released (given up by \
                 the ticket holding it: its visit moved or cancelled, the ticket resolved or \
                 dismissed), pruned (its slot's day past, removed by the holder of partition 0)",
            ),
            &["event"],
        )?;
        r.register(Box::new(visits.clone()))?;
        Ok(ClusterMetrics {
            owned,
            leases,
            claims,
            replayed,
            transitions,
            skipped,
            checkpoints,
            checkpoint_bytes,
            outbox,
            registry,
            visits,
        })
    }
}

/// What the lease loop last saw and what this instance holds.
#[derive(Default)]
struct View {
    members: Vec<String>,
    owned: BTreeSet<u32>,
    replaying: BTreeSet<u32>,
    /// Owned partitions whose live consumer is not up yet (being set up, or replaying): the
    /// instance is not ready while there are any.
    starting: BTreeSet<u32>,
    /// When a lease round last succeeded (`None`: never, the instance has not joined).
    last_round: Option<Instant>,
    assignment: BTreeMap<u32, String>,
    /// Each partition's lease holder as last seen, kept after its key is gone: whether the
    /// instance a partition was just taken from is still a member decides whether a fleet
    /// read can be whole ([`Peers::unowned`]).
    last_holder: BTreeMap<u32, String>,
    /// Each live member's advertised API address, from its membership record.
    apis: BTreeMap<String, Option<String>>,
}

/// The value of a membership key `m.NAME`.
#[derive(serde::Serialize, serde::Deserialize)]
struct MemberRecord {
    /// Where this member's API answers, for the fleet-wide API.
    #[serde(default)]
    api: Option<String>,
}

/// A connected cluster member.
pub struct Cluster {
    cfg: Config,
    instance: String,
    client: async_nats::Client,
    stream: stream::Stream,
    leases: kv::Store,
    /// Fleet-wide ticket claims, expiring after `claims_max_age`.
    claims: kv::Store,
    /// Partition checkpoints ([`checkpoint`]), never expiring.
    checkpoints: kv::Store,
    /// Fleet-wide reservations of technicians' visit slots (`s.TECH.START`, the technician id
    /// in hex), never expiring: a key is deleted when its visit is cancelled or moved, or its
    /// ticket settled, and pruned a day after its slot.
    visits: kv::Store,
    /// The fleet registry ([`registry`]), never expiring.
    fleet_registry: kv::Store,
    /// Whether the registry bucket's whole content has been applied here once (its first
    /// load): until then no partition is consumed and the instance is not ready, so no device
    /// is scored without the attributes the fleet gave it.
    registry_loaded: tokio::sync::watch::Sender<bool>,
    /// Per partition, the last stream sequence this instance's device state holds every message
    /// of the partition up to (forwarded in stream order and committed, or taken from a
    /// checkpoint), in this process's life. A partition consumed again here (a re-made
    /// consumer after a lost connection, a lease lost and taken again) starts after it, so no
    /// message is applied twice to a state that already holds it.
    applied: Mutex<HashMap<u32, u64>>,
    /// Per partition, the sequence last written to this instance's store as what its state
    /// holds (`App::keep_stream_applied`): read back at the next start, so a restart without
    /// a readable checkpoint replays after it rather than from the stream's start.
    kept: Mutex<HashMap<u32, u64>>,
    /// When the stream was created (epoch ms): a kept sequence of another stream by the same
    /// name (deleted and made again, its sequences starting over) is not used.
    stream_created_ms: i64,
    ticket_id_key: Vec<u8>,
    /// The runtime the processor thread's claims run on.
    rt: tokio::runtime::Handle,
    /// std-style mutex: held for a lookup or an update, never across an `.await`.
    view: Mutex<View>,
    /// This instance's API address, advertised in its membership record once the API is bound.
    api: Mutex<Option<String>>,
    /// The writer that applies transitions read from the stream (set by [`Cluster::spawn_intake`];
    /// weak, as the writer holds this cluster).
    writer: std::sync::OnceLock<std::sync::Weak<App>>,
    js: jetstream::Context,
    metrics: ClusterMetrics,
    /// Partitions whose lease was lost while their consumer had forwarded messages not yet
    /// committed: the task and its count of those messages, waited for before the partition is
    /// consumed (or replayed) again here.
    lost: Mutex<HashMap<u32, Vec<Lost>>>,
    /// How many times the connection to NATS was lost. A partition's consumer set up before
    /// the last loss is set up again: what the server had delivered to it and that never
    /// arrived would otherwise come back only after `ack_wait`, behind newer readings.
    disconnects: Arc<AtomicU64>,
    /// Changes claimed by this instance (taken over from a departed one before a restart)
    /// whose rows are not written here yet: written once this instance's copy of the ticket
    /// has the change ([`Cluster::rejoin`] finds them).
    again: Mutex<BTreeSet<String>>,
    /// Whether this instance is in good standing: its membership key known live. Nothing is
    /// sent, claimed or consumed here outside it ([`Cluster::standing`]).
    standing: Mutex<Standing>,
    /// Woken when a heartbeat finds the membership broken (or first written): the rejoin
    /// task ([`Cluster::rejoin_loop`]) settles what was left unsent before standing again.
    rejoin_wanted: tokio::sync::Notify,
    /// Per partition held here, when the last create or renewal of its lease that succeeded
    /// began: the lease lives on the server until at least then plus a lease. Its consumer
    /// forwards only within three quarters of a lease of it ([`Cluster::fence`]), so a lease
    /// round that stalls (it no longer carries the heartbeat) cannot leave a consumer reading
    /// a partition whose lease may have gone to another instance.
    renewed: Mutex<HashMap<u32, Instant>>,
}

/// How long this instance's membership key is known to live, and how many times it has
/// rejoined. A membership key put at `t` lives until at least `t + lease` on the server (the
/// bucket's `max_age`; the put reaches the server after `t`), so until then no other instance
/// can take this one for departed and take its claims over. The heartbeat runs on a task of
/// its own ([`Cluster::membership_loop`]), every sixth of a lease, behind nothing else.
///
/// Two questions, kept apart. **Is the membership unbroken?** A heartbeat that returns
/// before the key put by the one before can have expired (within nine tenths of a lease of
/// that one's start) continues the run: the key never left the server, so no instance could
/// take this one for departed meanwhile. One that returns later starts a new run: the key may
/// have expired, others may have taken the claims over, and the instance must rejoin
/// ([`Cluster::rejoin`], on a task of its own, while the heartbeats go on) before it acts
/// again. **May it act now?** Only on the run it rejoined on, and only within three quarters
/// of a lease of the start of the last heartbeat: the quarter left is the margin for a
/// decision taken just before (its send, its claim) to land while the key still lives. Past
/// that, with the run unbroken (a heartbeat merely late: a starved process, a slow server),
/// the instance stands aside until the next heartbeat and then goes on without a rejoin
/// (`suspended`); a rejoin is needed only when the run broke (`lapsed`). So a starved process
/// that gets the CPU for one heartbeat now and then keeps standing, where one frozen past its
/// lease rejoins.
#[derive(Default)]
struct Standing {
    /// When the last heartbeat that succeeded began (`None`: none yet).
    last_put: Option<Instant>,
    /// The unbroken run of heartbeats the membership is on: bumped by a heartbeat that
    /// returned too late to be sure the key never expired (and by the first).
    run: u64,
    /// The run this instance has rejoined on (`None`: not yet): it stands only on that run.
    joined: Option<u64>,
    /// Bumped at every rejoin: a claim or a partition consumer begun in an earlier standing is
    /// not trusted in a later one (it may straddle the lapse).
    epoch: u64,
}

/// Whether a partition's consumer may forward what it reads ([`Cluster::fence`]).
#[derive(Debug, PartialEq)]
enum Fence {
    /// In good standing, in the consumer's epoch, its lease renewed within three quarters of
    /// a lease.
    Open,
    /// The standing or the lease is only out of date (a late heartbeat or renewal): wait.
    Wait,
    /// The membership broke since the consumer was set up: set up again once rejoined.
    Lapsed,
}

/// The API address in a membership record. A record that is not ours to read (written by a
/// version without an address) leaves the member without one: the fleet-wide API then answers
/// 503 naming it rather than leaving its tickets out.
fn member_api(record: &[u8]) -> Option<String> {
    serde_json::from_slice::<MemberRecord>(record)
        .ok()
        .and_then(|r| r.api)
}

/// The claims bucket's index key of claim `claim` while `instance` has not sent its change:
/// written before the claim is made, deleted when its sent mark is written, so a departed
/// instance's unsent changes are listed by the subject filter `u.INSTANCE.>` rather than by
/// listing the bucket.
fn unsent_key(instance: &str, claim: &str) -> String {
    format!("u.{instance}.{claim}")
}

/// The claims bucket's key naming an instance that claims changes (`i.INSTANCE`), refreshed
/// while it runs: how the others know whose index to look at once it is gone.
fn claimant_key(instance: &str) -> String {
    format!("i.{instance}")
}

/// What is left of a partition whose lease was lost: its stopped consumer task, and how many
/// of the messages it forwarded are not yet committed and acknowledged. Those may still be
/// committed (a group retrying its claims while NATS is away commits once it is back); if the
/// partition is acquired again meanwhile, its replay must not start before they are, or they
/// would be committed as replayed — stored, but neither claimed nor dispatched — and their
/// redelivery dropped as duplicates.
struct Lost {
    task: JoinHandle<()>,
    outstanding: Arc<AtomicUsize>,
}

/// A departed instance's claim found under its index key ([`Cluster::take_over`]).
struct Found {
    claim: String,
    /// The claim's revision as read: it is taken over (or deleted) only at it.
    revision: u64,
    /// When that revision was written (the server's time).
    created: time::OffsetDateTime,
    partition: u32,
    record: ClaimRecord,
}

/// Who holds a claim this instance made, as its rejoin finds it ([`Cluster::hold_again`]).
enum Holding {
    /// This instance, unsent: written again at the revision read.
    Mine,
    /// Another instance (that took it over), or it has its sent mark: sent elsewhere.
    Elsewhere,
    /// No claim (expired, deleted) or one this version does not read: kept as this instance's.
    Absent,
}

/// The claim stored under `t.ID` (opening) or `c.ID.KIND.MS` (a later change at event time MS):
/// who made the change, and what it is about.
#[derive(serde::Serialize, serde::Deserialize)]
struct ClaimRecord {
    instance: String,
    /// opened, updated, settled.
    change: String,
    device_id: String,
    failure_mode: String,
    opened_at: String,
    updated_at: String,
    /// Made by a version that marks a claimed change sent (`s.KEY`) once its rows have left
    /// the claimant's outboxes: only such a claim without its mark is sent again by the
    /// partition's next owner (an older claim has no mark, sent or not).
    #[serde(default)]
    tracked: bool,
    /// Set when this instance took the claim over from a departed one (named here) to send
    /// the change itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    taken_from: Option<String>,
}

/// A partition this instance holds.
struct Held {
    /// The lease key's revision this instance last wrote.
    revision: u64,
    stop: CancellationToken,
    task: JoinHandle<()>,
    outstanding: Arc<AtomicUsize>,
}

fn boxed<E: std::error::Error + Send + Sync + 'static>(e: E) -> BoxError {
    Box::new(e)
}

impl Cluster {
    /// Connects, and makes sure the stream and both buckets exist (created with the
    /// configuration's settings when absent; an existing one is used as it is).
    pub async fn connect(cfg: &Config, registry: &Registry) -> Result<Arc<Cluster>, ClusterError> {
        let url = cfg.url.clone().unwrap_or_default();
        let servers = cfg.servers();
        let instance = cfg.instance.clone().unwrap_or_else(|| {
            let mut b = [0u8; 4];
            rand::Rng::fill(&mut rand::rng(), &mut b[..]);
            format!("fw-{}", hex::encode(b))
        });
        let disconnects = Arc::new(AtomicU64::new(0));
        let counted = disconnects.clone();
        let client = async_nats::ConnectOptions::new()
            .name(format!("forewarn {instance}"))
            .event_callback(move |event| {
                let counted = counted.clone();
                async move {
                    if matches!(event, async_nats::Event::Disconnected) {
                        counted.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
            // A list: the client reads one string as one address, commas and all.
            .connect(servers.as_slice())
            .await
            .map_err(|e| ClusterError::Connect {
                url: url.clone(),
                source: boxed(e),
            })?;
        let js = jetstream::new(client.clone());
        let stream = device_stream(&js, cfg).await?;
        let leases = bucket(
            &js,
            &format!("{}-leases", cfg.buckets),
            cfg.lease.std(),
            cfg.replicas,
        )
        .await?;
        // Holds the shared ticket-id secret, which never expires.
        let tickets = bucket(
            &js,
            &format!("{}-tickets", cfg.buckets),
            Duration::ZERO,
            cfg.replicas,
        )
        .await?;
        let claims = bucket(
            &js,
            &format!("{}-claims", cfg.buckets),
            cfg.claims_max_age.std(),
            cfg.replicas,
        )
        .await?;
        let checkpoints = bucket(
            &js,
            &format!("{}-state", cfg.buckets),
            Duration::ZERO,
            cfg.replicas,
        )
        .await?;
        let visits = bucket(
            &js,
            &format!("{}-visits", cfg.buckets),
            Duration::ZERO,
            cfg.replicas,
        )
        .await?;
        let fleet_registry = bucket(
            &js,
            &format!("{}-registry", cfg.buckets),
            Duration::ZERO,
            cfg.replicas,
        )
        .await?;
        let ticket_id_key = shared_ticket_key(&tickets).await?;
        let stream_created_ms =
            (stream.cached_info().created.unix_timestamp_nanos() / 1_000_000) as i64;
        let metrics = ClusterMetrics::new(registry)?;
        tracing::info!(%instance, %url, partitions = cfg.partitions, "joined the cluster");
        Ok(Arc::new(Cluster {
            cfg: cfg.clone(),
            instance,
            client,
            stream,
            leases,
            claims,
            checkpoints,
            visits,
            fleet_registry,
            registry_loaded: tokio::sync::watch::Sender::new(false),
            applied: Mutex::new(HashMap::new()),
            kept: Mutex::new(HashMap::new()),
            stream_created_ms,
            ticket_id_key,
            rt: tokio::runtime::Handle::current(),
            view: Mutex::new(View::default()),
            api: Mutex::new(cfg.api_url.clone()),
            writer: std::sync::OnceLock::new(),
            js,
            metrics,
            lost: Mutex::new(HashMap::new()),
            disconnects,
            again: Mutex::new(BTreeSet::new()),
            standing: Mutex::new(Standing::default()),
            rejoin_wanted: tokio::sync::Notify::new(),
            renewed: Mutex::new(HashMap::new()),
        }))
    }

    /// The secret ticket ids are keyed with, the same on every instance.
    pub fn ticket_id_key(&self) -> Vec<u8> {
        self.ticket_id_key.clone()
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The epoch of this instance's standing while its membership key is known live (see
    /// [`Standing`]); `None` while it has lapsed (or before it first joined).
    fn standing(&self) -> Option<u64> {
        let s = self.standing.lock();
        let on_time = s
            .last_put
            .is_some_and(|t| Instant::now() < t + self.cfg.lease.std() * 3 / 4);
        (s.joined == Some(s.run) && on_time).then_some(s.epoch)
    }

    /// Writes this instance's membership key once and stands on it (three quarters of a
    /// lease), for a caller that claims ticket changes without running the loops (a test of
    /// the claims against a real server). Not for an instance that runs them: it would skip
    /// the rejoin that settles what it left unsent.
    pub async fn heartbeat(&self) -> Result<(), ClusterError> {
        let put_at = self.put_membership().await?;
        self.beat(put_at, Instant::now());
        let mut s = self.standing.lock();
        s.joined = Some(s.run);
        s.epoch += 1;
        Ok(())
    }

    /// A heartbeat begun at `put_at` returned at `returned`: whether it continued the run of
    /// the one before (the key never expired in between: it landed before `returned`, and the
    /// one before lives on the server until at least its start plus a lease; a tenth of a lease
    /// is left spare), and whether it ended a suspension (the standing had run out on the
    /// unbroken run, and now stands again without a rejoin).
    fn beat(&self, put_at: Instant, returned: Instant) -> (bool, bool) {
        let lease = self.cfg.lease.std();
        let mut s = self.standing.lock();
        let continuous = s.last_put.is_some_and(|t| returned < t + lease * 9 / 10);
        let resumed = continuous
            && s.joined == Some(s.run)
            && s.last_put.is_some_and(|t| returned >= t + lease * 3 / 4);
        if !continuous {
            s.run += 1;
        }
        s.last_put = Some(put_at);
        (continuous, resumed)
    }

    /// The run of heartbeats this instance has not rejoined on yet, if any.
    fn run_to_join(&self) -> Option<u64> {
        let s = self.standing.lock();
        (s.last_put.is_some() && s.joined != Some(s.run)).then_some(s.run)
    }

    /// Whether partition `p`'s consumer, set up in standing `epoch`, may forward now.
    fn fence(&self, p: u32, epoch: u64) -> Fence {
        {
            let s = self.standing.lock();
            if s.epoch != epoch || s.joined != Some(s.run) {
                return Fence::Lapsed;
            }
        }
        if self.standing() != Some(epoch) {
            return Fence::Wait;
        }
        let fresh = self
            .renewed
            .lock()
            .get(&p)
            .is_some_and(|t| Instant::now() < *t + self.cfg.lease.std() * 3 / 4);
        if fresh {
            Fence::Open
        } else {
            Fence::Wait
        }
    }

    /// Writes this instance's membership key (its API address) and returns when the write
    /// began: what standing counts from.
    async fn put_membership(&self) -> Result<Instant, ClusterError> {
        let bucket_error = |e: BoxError| ClusterError::Bucket {
            name: self.leases.name.clone(),
            source: e,
        };
        let record = MemberRecord {
            api: self.api.lock().clone(),
        };
        let record = serde_json::to_vec(&record).map_err(|e| bucket_error(boxed(e)))?;
        let put_at = Instant::now();
        self.leases
            .put(format!("m.{}", self.instance), record.into())
            .await
            .map_err(|e| bucket_error(boxed(e)))?;
        Ok(put_at)
    }

    /// Puts the membership key every sixth of a lease, on its own: no lease round, listing,
    /// claim or commit runs before it, so a starved process heartbeats whenever it gets the
    /// CPU at all. Each heartbeat that returns says whether the membership stayed unbroken
    /// ([`Cluster::beat`]); one that broke it wakes the rejoin task.
    async fn membership_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let lease = self.cfg.lease.std();
        let mut tick = tokio::time::interval(lease / 6);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let put = tokio::select! {
                _ = shutdown.cancelled() => break,
                put = tokio::time::timeout(lease, self.put_membership()) => put,
            };
            let put_at = match put {
                Ok(Ok(put_at)) => put_at,
                Ok(Err(e)) => {
                    tracing::warn!("cluster heartbeat: {e}");
                    continue;
                }
                Err(_) => {
                    tracing::warn!("cluster heartbeat: no answer within a lease");
                    continue;
                }
            };
            let returned = Instant::now();
            let previous = self.standing.lock().last_put;
            let (continuous, resumed) = self.beat(put_at, returned);
            let gap_ms = previous.map(|t| returned.saturating_duration_since(t).as_millis());
            if resumed {
                self.metrics.leases.with_label_values(&["suspended"]).inc();
                tracing::info!(
                    gap_ms,
                    "heartbeat late, the membership unbroken: standing again without a rejoin"
                );
            }
            if !continuous {
                if previous.is_some() {
                    self.metrics.leases.with_label_values(&["lapsed"]).inc();
                    tracing::warn!(
                        gap_ms,
                        "this instance's membership lapsed (a heartbeat landed more than a \
                         lease after the one before): rejoining before it sends, claims or \
                         consumes again"
                    );
                }
                self.rejoin_wanted.notify_one();
            }
        }
    }

    /// Rejoins on every new run of heartbeats ([`Standing`]): settles what was left unsent
    /// ([`Cluster::rejoin`]) while the heartbeats go on, then stands on that run — unless it
    /// broke again meanwhile, and then it starts over on the new one. A rejoin takes a few
    /// round trips and the writer's lock once (to read what is noted unsent); none of that
    /// holds a heartbeat up.
    async fn rejoin_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let pause = self.cfg.lease.std() / 6;
        loop {
            let Some(run) = self.run_to_join() else {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.rejoin_wanted.notified() => {}
                    _ = tokio::time::sleep(pause) => {}
                }
                continue;
            };
            let Some(app) = self.app() else {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                continue;
            };
            let started = Instant::now();
            let done = tokio::select! {
                _ = shutdown.cancelled() => return,
                done = self.rejoin(&app) => done,
            };
            if let Err(e) = done {
                tracing::warn!("cluster rejoin: {e}; trying again");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                continue;
            }
            let first = {
                let mut s = self.standing.lock();
                if s.run != run {
                    // The membership broke during the rejoin: what it read may be stale.
                    None
                } else {
                    s.joined = Some(run);
                    s.epoch += 1;
                    Some(s.epoch == 1)
                }
            };
            match first {
                None => tracing::warn!(
                    "the membership lapsed again during the rejoin: rejoining once more"
                ),
                Some(true) => tracing::info!(
                    ms = started.elapsed().as_millis(),
                    "joined: sending, claiming and consuming"
                ),
                Some(false) => tracing::info!(
                    ms = started.elapsed().as_millis(),
                    "rejoined the cluster: sending, claiming and consuming again"
                ),
            }
        }
    }

    /// Where this instance's API listens, unless `cluster.api_url` says otherwise: advertised
    /// to the others from the next lease round on (call before [`Cluster::spawn`]).
    pub fn set_api_addr(&self, addr: std::net::SocketAddr) {
        let mut api = self.api.lock();
        if api.is_none() {
            let host = match addr.ip() {
                ip if ip.is_unspecified() => std::net::IpAddr::from([127, 0, 0, 1]),
                ip => ip,
            };
            *api = Some(format!(
                "http://{}",
                std::net::SocketAddr::new(host, addr.port())
            ));
        }
    }

    /// Starts the lease loop, which starts and stops the partitions' consumers; they forward
    /// to the processor over `forward`. On shutdown every partition stops, its acknowledgements
    /// drain (at most `ack_wait`) and its lease is deleted, so the others take over at once.
    pub fn spawn(
        self: &Arc<Self>,
        forward: mpsc::Sender<Inbound>,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        tokio::spawn(self.clone().lease_loop(forward, shutdown))
    }

    /// Cluster mode's intake: the partitions this instance leases feed the processor over
    /// `forward`, and the acks of its durable groups go to the stream (`client` carries the
    /// MQTT side of the groups, the dispatcher's publishes).
    pub fn spawn_intake(
        self: &Arc<Self>,
        writer: &Arc<App>,
        forward: mpsc::Sender<Inbound>,
        client: mqtt::Client,
        acks: crate::ingest::AckQueue,
        shutdown: &CancellationToken,
    ) -> Vec<JoinHandle<()>> {
        let _ = self.writer.set(Arc::downgrade(writer));
        self.load_applied(writer);
        // No partition is consumed before the fleet registry's first load.
        let leases = {
            let (me, stop) = (self.clone(), shutdown.clone());
            let mut loaded = self.registry_loaded.subscribe();
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = loaded.wait_for(|l| *l) => {}
                }
                me.lease_loop(forward, stop).await;
            })
        };
        vec![
            leases,
            tokio::spawn(ack_loop(self.clone(), client, acks.rx, acks.flushed)),
            tokio::spawn(self.clone().outbox_loop(shutdown.clone())),
            tokio::spawn(self.clone().registry_loop(shutdown.clone())),
            tokio::spawn(self.clone().visits_loop(shutdown.clone())),
        ]
    }

    /// Applies the fleet registry bucket to this instance's registry: its whole content first,
    /// then each change as it is put. A lost watch starts again from the whole content (what
    /// is held already is left out by the writer). Records put together by one upsert
    /// elsewhere arrive one by one; those already waiting are applied in one commit. The first
    /// load is over once the watch has caught up (an entry with nothing pending after it, or
    /// an empty bucket) and what it read is applied.
    async fn registry_loop(self: Arc<Self>, shutdown: CancellationToken) {
        use futures_util::FutureExt as _;
        const BATCH: usize = 512;
        loop {
            if !*self.registry_loaded.borrow() {
                let mut backing = self.fleet_registry.stream.clone();
                match backing.info().await {
                    Ok(info) if info.state.messages == 0 => {
                        self.registry_loaded.send_replace(true);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("cluster registry: cannot read the bucket: {e}"),
                }
            }
            let mut watch = tokio::select! {
                _ = shutdown.cancelled() => return,
                w = self.fleet_registry.watch_with_history(">") => match w {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::warn!("cluster registry: cannot watch the bucket: {e}");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                },
            };
            loop {
                let first = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    e = watch.next() => e,
                };
                let mut entries = match first {
                    Some(Ok(e)) => vec![e],
                    Some(Err(e)) => {
                        tracing::warn!("cluster registry: watch: {e}");
                        break;
                    }
                    None => break,
                };
                while entries.len() < BATCH {
                    match watch.next().now_or_never() {
                        Some(Some(Ok(e))) => entries.push(e),
                        _ => break,
                    }
                }
                let caught_up = entries.last().is_some_and(|e| e.delta == 0);
                self.apply_registry(entries).await;
                if caught_up && !*self.registry_loaded.borrow() {
                    tracing::info!("cluster registry: loaded");
                    self.registry_loaded.send_replace(true);
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn apply_registry(&self, entries: Vec<kv::Entry>) {
        let Some(app) = self.app() else { return };
        let mut customers = Vec::new();
        let mut devices = Vec::new();
        for e in entries {
            if e.operation != kv::Operation::Put || registry::is_file_mark(&e.key) {
                continue;
            }
            match registry::decode(&e.key, &e.value) {
                Ok(registry::Record::Customer(c)) => {
                    customers.retain(|o: &crate::fleet::Customer| o.id != c.id);
                    customers.push(c);
                }
                Ok(registry::Record::Device(d)) => {
                    devices.retain(|o: &crate::fleet::Device| o.id != d.id);
                    devices.push(d);
                }
                Err(err) => {
                    self.metrics
                        .registry
                        .with_label_values(&["unreadable"])
                        .inc();
                    tracing::warn!("cluster registry: skipped: {err}");
                }
            }
        }
        if customers.is_empty() && devices.is_empty() {
            return;
        }
        let applied =
            tokio::task::spawn_blocking(move || app.apply_shared_fleet(customers, devices)).await;
        match applied {
            Ok(Ok(n)) => self
                .metrics
                .registry
                .with_label_values(&["applied"])
                .inc_by(n as u64),
            Ok(Err(e)) => {
                self.metrics.registry.with_label_values(&["failed"]).inc();
                tracing::warn!("cluster registry: applying records: {e}");
            }
            Err(e) => tracing::warn!("cluster registry: applying records: {e}"),
        }
    }

    /// Once a lease: tells the fleet which changes claimed here are sent
    /// ([`Cluster::mark_sent`]), and sends those a departed instance claimed and did not
    /// ([`Cluster::send_departed`]).
    async fn outbox_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.cfg.lease.std());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<(Vec<String>, BTreeSet<u32>)> = None;
        let mut rounds: u32 = 0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.mark_sent().await {
                tracing::warn!("cluster outbox: marking sent changes: {e}");
            }
            // The claims bucket is listed when the members or the partitions consumed here
            // changed since the last listing, and every tenth lease otherwise.
            let now = {
                let v = self.view.lock();
                let live: BTreeSet<u32> = v
                    .owned
                    .iter()
                    .filter(|p| !v.starting.contains(p) && !v.replaying.contains(p))
                    .copied()
                    .collect();
                (v.members.clone(), live)
            };
            rounds += 1;
            if last.as_ref() == Some(&now) && rounds % 10 != 0 {
                continue;
            }
            if self.standing().is_none() {
                // Lapsed: its view of the members and of its partitions may be stale; it takes
                // nothing over before it has rejoined.
                last = None;
                continue;
            }
            match self.send_departed(&now.0, &now.1).await {
                Ok(()) => last = Some(now),
                Err(e) => tracing::warn!("cluster outbox: changes of departed instances: {e}"),
            }
        }
    }

    fn app(&self) -> Option<Arc<App>> {
        self.writer.get().and_then(std::sync::Weak::upgrade)
    }

    /// Writes the sent mark `s.KEY` of every change claimed here whose rows have all left this
    /// instance's outboxes (delivered, or given up into a dead-letter queue).
    async fn mark_sent(&self) -> Result<(), BoxError> {
        let Some(app) = self.app() else {
            return Ok(());
        };
        let a = app.clone();
        let sent = tokio::task::spawn_blocking(move || a.sent_claims()).await??;
        let mut marked = Vec::new();
        for k in sent {
            self.claims
                .put(format!("s.{k}"), self.instance.clone().into_bytes().into())
                .await?;
            if let Err(e) = self.claims.delete(unsent_key(&self.instance, &k)).await {
                // Left behind, it is only looked at if this instance departs (and then
                // dropped: the change has its sent mark).
                tracing::warn!(claim = %k, "cluster outbox: index key not deleted: {e}");
            }
            self.metrics.outbox.with_label_values(&["marked"]).inc();
            marked.push(k);
        }
        tokio::task::spawn_blocking(move || app.forget_unsent(&marked)).await??;
        Ok(())
    }

    /// Sends the changes claimed by instances that are no longer members and not marked sent,
    /// for devices of the partitions this instance consumes (`live`). A departed instance's
    /// unsent changes are found under its index keys (`u.NAME.>`, [`unsent_key`]); the claims
    /// bucket is not listed. Each claim is taken over (compare-and-set on its revision, so one
    /// instance does it) and the changes of one ticket are written again here together, from
    /// the ticket as this instance has it, once it has reached them
    /// ([`App::requeue_claims`]). A row the departed instance sent just before it died goes
    /// again: at least once.
    async fn send_departed(
        &self,
        members: &[String],
        live: &BTreeSet<u32>,
    ) -> Result<(), BoxError> {
        let Some(app) = self.app() else {
            return Ok(());
        };
        // Kept fresh well within the bucket's max_age, so this instance's index is looked at
        // should it depart.
        self.claims
            .put(claimant_key(&self.instance), bytes::Bytes::new())
            .await?;
        if live.is_empty() {
            return Ok(());
        }
        self.send_again(&app, live).await?;
        for key in list_keys(&self.client, &self.claims, "i.>").await? {
            let Some(name) = key.strip_prefix("i.") else {
                continue;
            };
            if name == self.instance || members.iter().any(|m| m == name) {
                continue;
            }
            let index = list_keys(&self.client, &self.claims, &format!("u.{name}.>")).await?;
            if index.is_empty() {
                // Nothing of it left unsent (it comes back if the instance starts again).
                if let Err(e) = self.claims.delete(&key).await {
                    tracing::warn!(instance = %name, "cluster outbox: claimant key not deleted: {e}");
                }
                continue;
            }
            self.take_over(&app, name, &index, members, live).await?;
        }
        Ok(())
    }

    /// Takes over and sends the changes under departed instance `from`'s index keys `index`
    /// that belong to the partitions consumed here; drops the index keys that no longer name
    /// an unsent change of `from` (sent, expired, or held by another instance). A person's
    /// transition `from` claimed and never recorded in the stream (it died between the two)
    /// is deleted with its index key ([`Cluster::abandon_unrecorded`]).
    async fn take_over(
        &self,
        app: &Arc<App>,
        from: &str,
        index: &[String],
        members: &[String],
        live: &BTreeSet<u32>,
    ) -> Result<(), BoxError> {
        let prefix = format!("u.{from}.");
        let mut by_ticket: BTreeMap<String, Vec<Found>> = BTreeMap::new();
        for ukey in index {
            let Some(claim) = ukey.strip_prefix(&prefix) else {
                continue;
            };
            let Some((id, _, _)) = crate::app::parse_claim_key(claim) else {
                self.drop_index(ukey).await;
                continue;
            };
            let entry = self
                .claims
                .entry(claim)
                .await?
                .filter(|e| e.operation == kv::Operation::Put);
            let record = entry.as_ref().and_then(|e| {
                serde_json::from_slice::<ClaimRecord>(&e.value)
                    .ok()
                    .map(|r| (e.revision, e.created, r))
            });
            let Some((revision, created, record)) = record else {
                // Expired, or not a claim this version reads.
                self.drop_index(ukey).await;
                continue;
            };
            // Held by a live instance (this one, or one that took it over), or by another
            // departed one that took it over (its own index names it), or sent already.
            if record.instance != from
                || members.contains(&record.instance)
                || self.claims.get(format!("s.{claim}")).await?.is_some()
            {
                self.drop_index(ukey).await;
                continue;
            }
            let p = partition::of_device(&record.device_id, self.cfg.partitions);
            if !record.tracked || !live.contains(&p) {
                continue;
            }
            by_ticket.entry(id).or_default().push(Found {
                claim: claim.to_string(),
                revision,
                created,
                partition: p,
                record,
            });
        }
        if by_ticket.is_empty() {
            return Ok(());
        }
        // Read after the claims, and the claims are taken over only at the revisions read:
        // an instance that was frozen, not dead, and is back writes its membership key before
        // it writes again the claims it keeps (its rejoin), so either this finds the key, or
        // the take-over meets a revision it did not read and fails.
        if self.leases.get(format!("m.{from}")).await?.is_some() {
            tracing::info!(instance = %from, "a departed instance is back: its claims are its own");
            return Ok(());
        }
        for (id, claims) in by_ticket {
            let a = app.clone();
            let (ready, waiting) = tokio::task::spawn_blocking(move || {
                let (mut ready, mut waiting) = (Vec::new(), Vec::new());
                for c in claims {
                    match a.has_change(&c.claim)? {
                        true => ready.push(c),
                        false => waiting.push(c),
                    }
                }
                Ok::<_, crate::app::CoreError>((ready, waiting))
            })
            .await??;
            for c in waiting {
                if let Some((_, ChangeKind::Transition, Some(ms))) =
                    crate::app::parse_claim_key(&c.claim)
                {
                    self.abandon_unrecorded(app, from, &id, ms, &c).await?;
                }
            }
            let mut taken = Vec::new();
            for Found {
                claim,
                revision,
                mut record,
                ..
            } in ready
            {
                // Indexed as this instance's before the claim names it, so that it is found
                // should this instance die before sending it too.
                let mine = unsent_key(&self.instance, &claim);
                self.claims.put(&mine, bytes::Bytes::new()).await?;
                record.instance = self.instance.clone();
                record.taken_from = Some(from.to_string());
                let value = serde_json::to_vec(&record)?;
                match self.claims.update(&claim, value.into(), revision).await {
                    Ok(_) => {}
                    // Another instance took it over first, or its claimant came back.
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                        self.drop_index(&mine).await;
                        continue;
                    }
                    Err(e) => return Err(boxed(e)),
                }
                self.drop_index(&unsent_key(from, &claim)).await;
                taken.push(claim);
            }
            if !taken.is_empty() {
                self.requeue(app, &id, taken, from).await?;
            }
        }
        Ok(())
    }

    /// A person's transition of ticket `id` made at `ms` that departed instance `from` claimed
    /// (`found`), and which this instance's copy of the ticket does not have: if its record is
    /// not in the partition's stream (`from` died after the claim and before the publish: the
    /// transition was never made, its caller was refused), or it is there but was not
    /// applicable here (its sequence is behind this instance's state of the partition), the
    /// claim and its index key are deleted and counted (`abandoned`) instead of being read
    /// again at every listing until the bucket's `max_age`. A record this instance has not
    /// reached yet leaves the claim to a later listing.
    async fn abandon_unrecorded(
        &self,
        app: &Arc<App>,
        from: &str,
        id: &str,
        ms: i64,
        found: &Found,
    ) -> Result<(), BoxError> {
        let p = found.partition;
        let recorded =
            tokio::time::timeout(CALL_TIMEOUT, self.find_transition(p, id, ms, found.created))
                .await
                .map_err(boxed)??;
        let why = match recorded {
            None => "its record never reached the stream",
            Some(seq) if seq <= self.applied_through(p) => {
                // Applied since the ticket was looked at? Then it is taken over at the next
                // listing, not deleted.
                let (a, claim) = (app.clone(), found.claim.clone());
                if tokio::task::spawn_blocking(move || a.has_change(&claim)).await?? {
                    return Ok(());
                }
                "its record was not applicable to the ticket here"
            }
            Some(_) => return Ok(()),
        };
        match self
            .claims
            .delete_expect_revision(&found.claim, Some(found.revision))
            .await
        {
            Ok(()) => {}
            // Taken over, or written again by its claimant come back: not ours to delete.
            Err(e) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => return Ok(()),
            Err(e) => return Err(boxed(e)),
        }
        self.drop_index(&unsent_key(from, &found.claim)).await;
        self.metrics.outbox.with_label_values(&["abandoned"]).inc();
        tracing::info!(
            ticket = %id,
            claim = %found.claim,
            from = %from,
            "a departed instance's claim of a transition deleted: {why}"
        );
        Ok(())
    }

    /// The stream sequence of the transition record of ticket `id` made at `ms` in partition
    /// `p`'s stream, if it is there. Read on the partition's transition subject only, from a
    /// minute before the claim was made: before the claim's revision was written (`created`,
    /// the server's time; the record is published after its claim) or before `ms` (the
    /// accepting instance's clock), whichever is earlier (a claim written again by its
    /// claimant's rejoin has a later revision than its record).
    async fn find_transition(
        &self,
        p: u32,
        id: &str,
        ms: i64,
        created: time::OffsetDateTime,
    ) -> Result<Option<u64>, BoxError> {
        let created_ms = i64::try_from(created.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let before = Duration::from_millis(u64::try_from(created_ms - ms).unwrap_or(0))
            + Duration::from_secs(60);
        let consumer = self
            .stream
            .create_consumer(consumer::pull::Config {
                filter_subject: partition::transitions(&self.cfg.subject_prefix, p),
                ack_policy: consumer::AckPolicy::None,
                deliver_policy: consumer::DeliverPolicy::ByStartTime {
                    start_time: created - before,
                },
                inactive_threshold: Duration::from_secs(60),
                // As many copies as the stream: on a NATS cluster with a server down, a
                // one-copy consumer may be placed on that server and never answer.
                num_replicas: self.cfg.replicas,
                ..Default::default()
            })
            .await
            .map_err(boxed)?;
        let name = consumer.cached_info().name.clone();
        let mut found = None;
        if consumer.cached_info().num_pending > 0 {
            let mut messages = consumer.messages().await.map_err(boxed)?;
            while let Some(m) = messages.next().await {
                let m = m.map_err(boxed)?;
                let info = m.info().map_err(|e| e.to_string())?;
                let (seq, pending) = (info.stream_sequence, info.pending);
                if let Ok(r) = serde_json::from_slice::<RecordedTransition>(&m.message.payload) {
                    if r.ticket == id && r.at_ms.as_millis() == ms {
                        found = Some(seq);
                        break;
                    }
                }
                if pending == 0 {
                    break;
                }
            }
        }
        let _ = self.stream.delete_consumer(&name).await;
        Ok(found)
    }

    /// Writes again, together, the rows of these changes of ticket `id`, whose claims this
    /// instance holds now; remembered to try again ([`Cluster::send_again`]) if the ticket
    /// cannot be written.
    async fn requeue(
        &self,
        app: &Arc<App>,
        id: &str,
        claims: Vec<String>,
        from: &str,
    ) -> Result<(), BoxError> {
        let a = app.clone();
        let c = claims.clone();
        let written = tokio::task::spawn_blocking(move || a.requeue_claims(&c)).await?;
        match written {
            Ok(true) => {
                let n = claims.len() as u64;
                self.metrics
                    .outbox
                    .with_label_values(&["requeued"])
                    .inc_by(n);
                self.metrics.outbox.with_label_values(&["rewritten"]).inc();
                let mut again = self.again.lock();
                for c in &claims {
                    again.remove(c);
                }
                tracing::info!(ticket = %id, changes = n, from = %from, "changes claimed by a departed instance were not marked sent: sent from here");
                Ok(())
            }
            Ok(false) => {
                self.again.lock().extend(claims);
                Ok(())
            }
            Err(e) => {
                self.again.lock().extend(claims);
                Err(boxed(e))
            }
        }
    }

    /// Writes the rows of the changes this instance holds the claims of without having written
    /// them (taken over before a restart, or before a store error), for the partitions it
    /// consumes, once its copy of each ticket has the change and no note of its rows is here.
    async fn send_again(&self, app: &Arc<App>, live: &BTreeSet<u32>) -> Result<(), BoxError> {
        let pending: Vec<String> = self.again.lock().iter().cloned().collect();
        if pending.is_empty() {
            return Ok(());
        }
        let a = app.clone();
        let partitions = self.cfg.partitions;
        let live = live.clone();
        // By ticket: those whose ticket is here, of a partition consumed here, and has them.
        let groups = tokio::task::spawn_blocking(move || {
            let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let mut settled = Vec::new();
            for claim in pending {
                let Some((id, _, _)) = crate::app::parse_claim_key(&claim) else {
                    settled.push(claim);
                    continue;
                };
                if a.has_unsent(&claim)? {
                    // Written here meanwhile (a redelivery claimed again): noted already.
                    settled.push(claim);
                    continue;
                }
                let Some(t) = a.store.ticket(&id)? else {
                    continue;
                };
                if live.contains(&partition::of_device(&t.device_id, partitions))
                    && a.has_change(&claim)?
                {
                    groups.entry(id).or_default().push(claim);
                }
            }
            Ok::<_, crate::app::CoreError>((groups, settled))
        })
        .await??;
        {
            let mut again = self.again.lock();
            for c in &groups.1 {
                again.remove(c);
            }
        }
        for (id, claims) in groups.0 {
            let from = self.instance.clone();
            self.requeue(app, &id, claims, &from).await?;
        }
        Ok(())
    }

    /// Deletes an index key that no longer names an unsent change of its instance (best
    /// effort: one left behind is looked at again, and dropped again, at the next listing).
    async fn drop_index(&self, key: &str) {
        if let Err(e) = self.claims.delete(key).await {
            tracing::warn!(key = %key, "cluster outbox: index key not deleted: {e}");
        }
    }

    /// Run on each new run of heartbeats ([`Standing`]: the first, and the first after a
    /// lapse) by [`Cluster::rejoin_loop`], while the heartbeats go on, before the instance
    /// sends, claims or consumes anything (outside its standing nothing is). The
    /// changes this instance claimed and has not sent, and which the instance that took their
    /// claims over meanwhile has sent (the claim names another instance now, or has its sent
    /// mark), are removed from the outboxes and counted (`dropped`) rather than sent again —
    /// after a restart, and after a freeze past its membership's expiry alike. Each claim it
    /// keeps is written again at the revision it read (compare-and-set), so an instance that
    /// read it before this rejoin, and took this one for departed, can no longer take it over
    /// ([`Cluster::take_over`] reads the membership key after the claim, and takes it over
    /// only at the revision it read); its index key is written again too (a store from a
    /// version without the index gets it). Index keys of this instance without a note here
    /// are dropped, or, for a claim this instance holds without having written its rows
    /// (taken over just before it stopped), kept to be sent ([`Cluster::send_again`]). An
    /// error fails the round: the instance stays out of standing and tries again at the next.
    async fn rejoin(&self, app: &Arc<App>) -> Result<(), BoxError> {
        self.claims
            .put(claimant_key(&self.instance), bytes::Bytes::new())
            .await?;
        let a = app.clone();
        // Read under the writer's lock: a claim made before the lapse whose commit the pause
        // held up is committed, and noted, first.
        let noted = tokio::task::spawn_blocking(move || a.unsent_claims()).await??;
        let mut sent_elsewhere = Vec::new();
        for claim in &noted {
            match self.hold_again(claim).await? {
                Holding::Elsewhere => sent_elsewhere.push(claim.clone()),
                Holding::Mine | Holding::Absent => {
                    self.claims
                        .put(unsent_key(&self.instance, claim), bytes::Bytes::new())
                        .await?;
                }
            }
        }
        if !sent_elsewhere.is_empty() {
            let a = app.clone();
            let d = sent_elsewhere.clone();
            let rows = tokio::task::spawn_blocking(move || a.drop_unsent(&d)).await??;
            for claim in &sent_elsewhere {
                self.drop_index(&unsent_key(&self.instance, claim)).await;
            }
            self.metrics
                .outbox
                .with_label_values(&["dropped"])
                .inc_by(sent_elsewhere.len() as u64);
            tracing::info!(
                changes = sent_elsewhere.len(),
                rows,
                "changes claimed here and not sent before a stop or a lapse were sent by another \
                 instance: their rows dropped from the outboxes"
            );
        }
        let noted: BTreeSet<String> = noted.into_iter().collect();
        let prefix = format!("u.{}.", self.instance);
        let index = list_keys(&self.client, &self.claims, &format!("{prefix}>")).await?;
        for ukey in index {
            let Some(claim) = ukey.strip_prefix(&prefix) else {
                continue;
            };
            if noted.contains(claim) {
                continue;
            }
            if matches!(self.hold_again(claim).await?, Holding::Mine) {
                self.again.lock().insert(claim.to_string());
            } else {
                self.drop_index(&ukey).await;
            }
        }
        Ok(())
    }

    /// Who holds claim `claim` now, as seen at this instance's rejoin; one this instance holds,
    /// unsent, is written again at the revision read (so a take-over based on an earlier read
    /// fails).
    async fn hold_again(&self, claim: &str) -> Result<Holding, BoxError> {
        for _ in 0..3 {
            let Some(e) = self
                .claims
                .entry(claim)
                .await?
                .filter(|e| e.operation == kv::Operation::Put)
            else {
                return Ok(Holding::Absent);
            };
            let Ok(record) = serde_json::from_slice::<ClaimRecord>(&e.value) else {
                return Ok(Holding::Absent);
            };
            if record.instance != self.instance
                || self.claims.get(format!("s.{claim}")).await?.is_some()
            {
                return Ok(Holding::Elsewhere);
            }
            match self.claims.update(claim, e.value.clone(), e.revision).await {
                Ok(_) => return Ok(Holding::Mine),
                // Written meanwhile (taken over, most likely): read again.
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(boxed(e)),
            }
        }
        Err(format!("claim {claim} kept changing while this instance rejoined").into())
    }

    async fn lease_loop(
        self: Arc<Self>,
        forward: mpsc::Sender<Inbound>,
        shutdown: CancellationToken,
    ) {
        let mut held: HashMap<u32, Held> = HashMap::new();
        let heartbeats = tokio::spawn(self.clone().membership_loop(shutdown.clone()));
        let rejoins = tokio::spawn(self.clone().rejoin_loop(shutdown.clone()));
        let mut tick = tokio::time::interval(self.cfg.lease.std() / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let started = Instant::now();
            if let Err(e) = self.round(&mut held, &forward, &shutdown).await {
                tracing::warn!("cluster lease round: {e}");
            }
            let took = started.elapsed();
            if took > self.cfg.lease.std() / 3 {
                tracing::debug!(ms = took.as_millis(), "cluster lease round slow");
            }
        }
        // No heartbeat after the membership key is deleted below.
        let _ = heartbeats.await;
        let _ = rejoins.await;
        drop(forward);
        let parts: Vec<(u32, Held)> = held.drain().collect();
        for (_, h) in &parts {
            h.stop.cancel();
        }
        for (p, h) in parts {
            self.clone().release(p, h).await;
        }
        let _ = self.leases.delete(format!("m.{}", self.instance)).await;
        self.renewed.lock().clear();
        self.publish_view(|v| {
            v.owned.clear();
            v.starting.clear();
        });
    }

    /// One round: renew, read members and leases, release, acquire. The heartbeat is not part
    /// of it ([`Cluster::membership_loop`]). The leases held here are renewed first, each by a
    /// compare-and-set on the revision this instance last wrote (refused: lost), so a slow
    /// listing never holds a renewal up; then the bucket is read in one listing (members,
    /// their API addresses and the partitions' holders), not a read per key.
    async fn round(
        self: &Arc<Self>,
        held: &mut HashMap<u32, Held>,
        forward: &mpsc::Sender<Inbound>,
        shutdown: &CancellationToken,
    ) -> Result<(), ClusterError> {
        let bucket_error = |e: BoxError| ClusterError::Bucket {
            name: self.leases.name.clone(),
            source: e,
        };
        let mine: Vec<u32> = held.keys().copied().collect();
        for p in mine {
            let rev = held.get(&p).map_or(0, |h| h.revision);
            let asked = Instant::now();
            match self
                .leases
                .update(
                    format!("p.{p}"),
                    self.instance.clone().into_bytes().into(),
                    rev,
                )
                .await
            {
                Ok(r) => {
                    self.renewed.lock().insert(p, asked);
                    if let Some(h) = held.get_mut(&p) {
                        h.revision = r;
                    }
                }
                Err(e) => {
                    self.renewed.lock().remove(&p);
                    if let Some(h) = held.remove(&p) {
                        h.stop.cancel();
                        self.keep_lost(p, h);
                    }
                    self.metrics.leases.with_label_values(&["lost"]).inc();
                    tracing::warn!(
                        partition = p,
                        "lease lost (expired or taken; renewal refused: {e}): consumer stopped"
                    );
                }
            }
        }
        let entries = list_entries(&self.client, &self.leases, ">", CALL_TIMEOUT)
            .await
            .map_err(bucket_error)?;
        // Member → its advertised API address; a key listed twice counts once.
        let mut apis: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut assignment: BTreeMap<u32, (String, u64)> = BTreeMap::new();
        for (key, value, revision) in entries {
            if let Some(m) = key.strip_prefix("m.") {
                apis.insert(m.to_string(), member_api(&value));
            } else if let Some(p) = key.strip_prefix("p.").and_then(|p| p.parse::<u32>().ok()) {
                if p < self.cfg.partitions {
                    let holder = String::from_utf8_lossy(&value).into_owned();
                    assignment.insert(p, (holder, revision));
                }
            }
        }
        // What this instance renewed above is its own, whatever the listing (read after it)
        // saw.
        for (p, h) in held.iter() {
            assignment.insert(*p, (self.instance.clone(), h.revision));
        }
        self.read_what_the_listing_missed(&mut apis, &mut assignment)
            .await
            .map_err(bucket_error)?;
        apis.remove(&self.instance);
        let mut members: Vec<String> = apis.keys().cloned().collect();
        members.push(self.instance.clone());
        members.sort();
        let desired: BTreeSet<u32> =
            partition::share(&self.instance, &members, self.cfg.partitions)
                .into_iter()
                .collect();
        let unwanted: Vec<u32> = held
            .keys()
            .filter(|p| !desired.contains(p))
            .copied()
            .collect();
        for p in unwanted {
            if let Some(h) = held.remove(&p) {
                // A member joined that should own it: hand it on. Apart from this round, so the
                // drain never delays the renewal of the other leases; the key stays until the
                // drain ends (or it expires), so the new owner waits for it.
                h.stop.cancel();
                tokio::spawn(self.clone().release(p, h));
            }
        }
        for &p in &desired {
            if held.contains_key(&p) {
                continue;
            }
            let asked = Instant::now();
            let created = match assignment.get(&p) {
                None => self
                    .leases
                    .create(format!("p.{p}"), self.instance.clone().into_bytes().into())
                    .await
                    .ok(),
                // Another holder: it releases it, or its lease expires.
                Some(_) => None,
            };
            if let Some(revision) = created {
                self.renewed.lock().insert(p, asked);
                self.metrics.leases.with_label_values(&["acquired"]).inc();
                tracing::info!(partition = p, "lease acquired");
                assignment.insert(p, (self.instance.clone(), revision));
                self.publish_view(|v| {
                    v.starting.insert(p);
                });
                let stop = shutdown.child_token();
                let outstanding = Arc::new(AtomicUsize::new(0));
                let previous = self.lost.lock().remove(&p).unwrap_or_default();
                let task = tokio::spawn(self.clone().partition_task(
                    p,
                    forward.clone(),
                    stop.clone(),
                    outstanding.clone(),
                    previous,
                ));
                held.insert(
                    p,
                    Held {
                        revision,
                        stop,
                        task,
                        outstanding,
                    },
                );
            }
        }
        let owned: BTreeSet<u32> = held.keys().copied().collect();
        self.metrics.owned.set(owned.len() as i64);
        self.publish_view(|v| {
            v.starting.retain(|p| owned.contains(p));
            v.last_round = Some(Instant::now());
            v.members = members;
            v.apis = apis;
            v.owned = owned;
            v.assignment = assignment.into_iter().map(|(p, (h, _))| (p, h)).collect();
            let seen: Vec<(u32, String)> =
                v.assignment.iter().map(|(p, h)| (*p, h.clone())).collect();
            v.last_holder.extend(seen);
        });
        Ok(())
    }

    /// A listing of the lease bucket can leave out a key rewritten while it runs (against
    /// nats-server 2.9.10, 22 of 400 listings missed one of 11 keys rewritten every 3 ms: the
    /// value it was about to deliver is replaced and the listing ends before the new one),
    /// and members heartbeat and renew all the time. A member missed would be left out of the
    /// fleet-wide reads (a fleet list answered without its share, as if whole) and of the
    /// shares; a lease missed would look free. So what the listing should have shown is read
    /// by key: each partition it does not list, and each member it does not list that this
    /// instance knew at its last round or that holds a listed lease. Nothing more when it
    /// missed nothing; one read a round per partition nobody holds.
    async fn read_what_the_listing_missed(
        &self,
        apis: &mut BTreeMap<String, Option<String>>,
        assignment: &mut BTreeMap<u32, (String, u64)>,
    ) -> Result<(), BoxError> {
        for p in 0..self.cfg.partitions {
            if assignment.contains_key(&p) {
                continue;
            }
            if let Some(e) = self.leases.entry(format!("p.{p}")).await.map_err(boxed)? {
                if e.operation == kv::Operation::Put {
                    let holder = String::from_utf8_lossy(&e.value).into_owned();
                    assignment.insert(p, (holder, e.revision));
                }
            }
        }
        let mut expected: BTreeSet<String> = self.view.lock().members.iter().cloned().collect();
        expected.extend(assignment.values().map(|(holder, _)| holder.clone()));
        for m in expected {
            if m == self.instance || apis.contains_key(&m) {
                continue;
            }
            if let Some(v) = self.leases.get(format!("m.{m}")).await.map_err(boxed)? {
                apis.insert(m, member_api(&v));
            }
        }
        Ok(())
    }

    /// Keeps what is left of a partition whose lease was lost, for its next acquisition here.
    fn keep_lost(&self, p: u32, h: Held) {
        let mut lost = self.lost.lock();
        let left = lost.entry(p).or_default();
        // Those already done need no waiting for.
        left.retain(|l| !l.task.is_finished() || l.outstanding.load(Ordering::SeqCst) > 0);
        left.push(Lost {
            task: h.task,
            outstanding: h.outstanding,
        });
    }

    fn publish_view(&self, f: impl FnOnce(&mut View)) {
        f(&mut self.view.lock());
    }

    /// Hands a partition on: its consumer has been told to stop; waits for it, then for the
    /// acknowledgements of what it forwarded (at most `ack_wait`: what is left is redelivered
    /// to the next owner), then deletes the lease.
    async fn release(self: Arc<Self>, p: u32, h: Held) {
        let _ = h.task.await;
        // Its consumer has stopped; the lease is no longer renewed.
        self.renewed.lock().remove(&p);
        let deadline = Instant::now() + self.cfg.ack_wait.std();
        while h.outstanding.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if h.outstanding.load(Ordering::SeqCst) == 0 {
            // Everything it forwarded is committed: the next owner starts from here.
            self.write_checkpoint(p, "hand-off").await;
        }
        let _ = self
            .leases
            .delete_expect_revision(format!("p.{p}"), Some(h.revision))
            .await;
        self.publish_view(|v| {
            v.owned.remove(&p);
            v.replaying.remove(&p);
            v.starting.remove(&p);
        });
        self.metrics.leases.with_label_values(&["released"]).inc();
        tracing::info!(partition = p, "lease released");
    }

    /// Consumes one partition until `stop`; errors are logged and the partition set up again.
    async fn partition_task(
        self: Arc<Self>,
        p: u32,
        forward: mpsc::Sender<Inbound>,
        stop: CancellationToken,
        outstanding: Arc<AtomicUsize>,
        previous: Vec<Lost>,
    ) {
        // Acquired again after losing it: what the earlier consumer forwarded is committed (and
        // claimed) first, as itself, not as part of the replay below.
        let waited = !previous.is_empty();
        let since = Instant::now();
        for l in previous {
            let _ = l.task.await;
            let mut said = false;
            while l.outstanding.load(Ordering::SeqCst) > 0 {
                if !said && since.elapsed() > self.cfg.ack_wait.std() {
                    said = true;
                    tracing::warn!(
                        partition = p,
                        left = l.outstanding.load(Ordering::SeqCst),
                        "waiting for the messages the lost lease's consumer forwarded to be \
                         committed before replaying"
                    );
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
            }
        }
        if waited {
            // The earlier task cleared the partition's marks as it ended.
            self.publish_view(|v| {
                v.starting.insert(p);
            });
        }
        let mut backoff = mqtt::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        while !stop.is_cancelled() {
            match self.consume(p, &forward, &stop, &outstanding).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!("{e}; setting the partition up again");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
        self.publish_view(|v| {
            v.replaying.remove(&p);
            v.starting.remove(&p);
        });
    }

    async fn consume(
        &self,
        p: u32,
        forward: &mpsc::Sender<Inbound>,
        stop: &CancellationToken,
        outstanding: &Arc<AtomicUsize>,
    ) -> Result<(), ClusterError> {
        let err = partition_error(p);
        let name = format!("fw-p{p}");
        // Set up again after an error: what the last attempt forwarded is acknowledged first,
        // so the floor read below covers it and none of it is committed as a replay.
        while outstanding.load(Ordering::SeqCst) > 0 {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
        // Consumed only while this instance is in good standing; a consumer set up in an
        // earlier standing is set up again (after a lapse the partition may be another's).
        let epoch = loop {
            if let Some(e) = self.standing() {
                break e;
            }
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        };
        let lapsed = || {
            err(
                "this instance's membership lapsed: nothing more forwarded or acknowledged \
                 from this consumer; set up again once rejoined, if the lease is still ours"
                    .into(),
            )
        };
        // Fails once the membership broke; otherwise fine (a consumer waiting on a late
        // heartbeat or renewal just waits, see below).
        let in_standing = || -> Result<(), ClusterError> {
            match self.fence(p, epoch) {
                Fence::Lapsed => Err(lapsed()),
                Fence::Open | Fence::Wait => Ok(()),
            }
        };
        // Never two consumers of one partition: after an outage the lease may have expired and
        // gone to another instance before this one's lease round notices.
        self.check_lease(p).await?;
        let generation = self.disconnects.load(Ordering::SeqCst);
        let reconnected = || -> Result<(), ClusterError> {
            match self.disconnects.load(Ordering::SeqCst) == generation {
                true => Ok(()),
                false => Err(err(
                    "the connection to NATS was lost: set up again, in order".into(),
                )),
            }
        };
        let floor = match self.stream.consumer_info(&name).await {
            Ok(info) => {
                // Made again below, starting after the floor: what an earlier owner was
                // delivered and did not acknowledge then comes in stream order, not after
                // `ack_wait` behind newer messages.
                self.stream
                    .delete_consumer(&name)
                    .await
                    .map_err(|e| err(boxed(e)))?;
                info.ack_floor.stream_sequence
            }
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::ConsumerInfoErrorKind::NotFound
                ) =>
            {
                0
            }
            Err(e) => return Err(err(boxed(e))),
        };
        // Where this instance's state of the partition starts: what it already holds, or the
        // partition's checkpoint when that is further on.
        self.resume_from_checkpoint(p).await;
        let base = self.applied_through(p);
        if floor > base {
            self.replay(p, base, floor, forward, stop, outstanding)
                .await?;
            if stop.is_cancelled() {
                return Ok(());
            }
            // A replay cut short by a lost connection may have missed messages.
            reconnected()?;
        }
        // What lies between the floor and what this state holds (committed, its
        // acknowledgements lost with the connection, or a checkpoint's) is not delivered again.
        let start = floor.max(base);
        self.check_lease(p).await?;
        let filter = partition::filter(&self.cfg.subject_prefix, p);
        let consumer = self
            .stream
            .get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: filter,
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.cfg.ack_wait.std(),
                    max_ack_pending: self.cfg.max_ack_pending,
                    deliver_policy: if start > 0 {
                        consumer::DeliverPolicy::ByStartSequence {
                            start_sequence: start + 1,
                        }
                    } else {
                        consumer::DeliverPolicy::All
                    },
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| err(boxed(e)))?;
        // State rebuilt, consuming live from here on: this partition no longer holds `/readyz`.
        self.publish_view(|v| {
            v.starting.remove(&p);
        });
        let mut watch = tokio::time::interval(Duration::from_millis(100));
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Messages taken in since the last checkpoint.
        let mut since_checkpoint = 0u64;
        // The consumer sequence of the last delivery: every delivery of the consumer made
        // above must reach this task, one after the other.
        let mut delivered = 0u64;
        loop {
            let mut messages = consumer.messages().await.map_err(|e| err(boxed(e)))?;
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = watch.tick() => {
                        reconnected()?;
                        in_standing()?;
                        continue;
                    }
                    m = messages.next() => m,
                };
                let m = match next {
                    None => break,
                    Some(Err(e)) => {
                        reconnected()?;
                        in_standing()?;
                        tracing::warn!(partition = p, "reading the partition: {e}");
                        // Not a tight loop while the error lasts (a consumer deleted by the
                        // partition's next owner keeps failing until the lease round stops us).
                        tokio::select! {
                            _ = stop.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        }
                        continue;
                    }
                    Some(Ok(m)) => m,
                };
                // Woken from a pause past the lease, this consumer may have pulled from a
                // durable consumer another instance has made again since: nothing it read is
                // forwarded or acknowledged (an acknowledgement would move that owner's floor
                // over a message it never had). Forwarded only while the instance stands in
                // this epoch and the partition's lease was renewed within three quarters of a
                // lease; while either is merely late (a starved process, a slow round) it
                // waits here: the next heartbeat or renewal either shows both unbroken, or the
                // membership lapses (set up again) or the lease is found lost (stopped).
                loop {
                    match self.fence(p, epoch) {
                        Fence::Open => break,
                        Fence::Lapsed => return Err(lapsed()),
                        Fence::Wait => {}
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
                let (seq, dseq) = m
                    .info()
                    .map_or((0, 0), |i| (i.stream_sequence, i.consumer_sequence));
                if dseq > 0 {
                    if dseq != delivered + 1 {
                        // A delivery went elsewhere: another process pulling from this
                        // consumer (an owner that has not noticed its lease is gone), or a pull
                        // lost with the connection. What it took would be missing here, or
                        // come later out of order: set up again after what this state holds.
                        return Err(err(format!(
                            "delivery {dseq} of the partition's consumer after {delivered}: \
                             deliveries went elsewhere; set up again, in order"
                        )
                        .into()));
                    }
                    delivered = dseq;
                }
                if seq > 0 && seq <= self.applied_through(p) {
                    // Delivered again (its acknowledgement wait ran out while its group was
                    // being committed): the state holds it already. Acknowledged here once
                    // everything forwarded is committed; otherwise the first delivery's
                    // acknowledgement covers it.
                    self.metrics.skipped.inc();
                    if outstanding.load(Ordering::SeqCst) == 0 {
                        let _ = m.ack().await;
                    }
                    continue;
                }
                if partition::is_transition(&self.cfg.subject_prefix, m.message.subject.as_str()) {
                    // Applied after everything before it is committed; acknowledged once
                    // stored (unless the partition stops meanwhile: redelivered then).
                    if !self.apply_transition(p, &m, stop, outstanding).await? {
                        return Ok(());
                    }
                    self.note_applied(p, seq);
                    if let Err(e) = m.ack().await {
                        tracing::warn!(partition = p, "acknowledging a transition: {e}");
                    }
                } else {
                    let reply = m.message.reply.as_ref().map(|r| r.to_string());
                    let inbound = self.inbound(p, &m, reply, outstanding);
                    outstanding.fetch_add(1, Ordering::SeqCst);
                    tokio::select! {
                        _ = stop.cancelled() => {
                            outstanding.fetch_sub(1, Ordering::SeqCst);
                            return Ok(());
                        }
                        sent = forward.send(inbound) => if sent.is_err() {
                            outstanding.fetch_sub(1, Ordering::SeqCst);
                            return Ok(());
                        }
                    }
                    self.note_applied(p, seq);
                }
                since_checkpoint += 1;
                let every = self.cfg.checkpoint_every;
                if every > 0 && since_checkpoint >= every {
                    // The checkpoint covers exactly what was forwarded: wait until it is all
                    // committed (the partition pauses meanwhile).
                    while outstanding.load(Ordering::SeqCst) > 0 {
                        tokio::select! {
                            _ = stop.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                        }
                    }
                    self.write_checkpoint(p, "periodic").await;
                    since_checkpoint = 0;
                }
            }
        }
    }

    /// Replays the partition from after `after` (what this instance's state holds already: 0,
    /// the stream's start) through `floor` (what an earlier owner acknowledged) and waits until
    /// all of it is committed. Meanwhile the partition is marked replaying: its ticket changes
    /// are stored, nothing is sent.
    async fn replay(
        &self,
        p: u32,
        after: u64,
        floor: u64,
        forward: &mpsc::Sender<Inbound>,
        stop: &CancellationToken,
        outstanding: &Arc<AtomicUsize>,
    ) -> Result<(), ClusterError> {
        let err = partition_error(p);
        self.publish_view(|v| {
            v.replaying.insert(p);
        });
        let started = Instant::now();
        let consumer = self
            .stream
            .create_consumer(consumer::pull::Config {
                filter_subject: partition::filter(&self.cfg.subject_prefix, p),
                ack_policy: consumer::AckPolicy::None,
                deliver_policy: if after > 0 {
                    consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: after + 1,
                    }
                } else {
                    consumer::DeliverPolicy::All
                },
                inactive_threshold: Duration::from_secs(60),
                // As many copies as the stream (see `find_transition`'s consumer).
                num_replicas: self.cfg.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| err(boxed(e)))?;
        let mut messages = consumer.messages().await.map_err(|e| err(boxed(e)))?;
        let mut n = 0u64;
        let generation = self.disconnects.load(Ordering::SeqCst);
        let mut watch = tokio::time::interval(Duration::from_millis(100));
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Nothing of the partition after `after` (the floor can name a later sequence of
        // another partition): no message would ever end the loop below.
        let empty = consumer.cached_info().num_pending == 0;
        loop {
            if empty {
                break;
            }
            let next = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = watch.tick() => {
                    if self.disconnects.load(Ordering::SeqCst) != generation {
                        return Err(err(
                            "the connection to NATS was lost during the replay: set up again"
                                .into(),
                        ));
                    }
                    continue;
                }
                m = messages.next() => m,
            };
            let m = match next {
                None => break,
                Some(Err(e)) => return Err(err(boxed(e))),
                Some(Ok(m)) => m,
            };
            let (seq, pending) = match m.info() {
                Ok(i) => (i.stream_sequence, i.pending),
                Err(e) => return Err(err(e)),
            };
            if seq > floor {
                break;
            }
            if partition::is_transition(&self.cfg.subject_prefix, m.message.subject.as_str()) {
                if !self.apply_transition(p, &m, stop, outstanding).await? {
                    return Ok(());
                }
            } else {
                let inbound = self.inbound(p, &m, None, outstanding);
                outstanding.fetch_add(1, Ordering::SeqCst);
                if forward.send(inbound).await.is_err() {
                    return Ok(());
                }
            }
            self.note_applied(p, seq);
            n += 1;
            if seq >= floor || pending == 0 {
                break;
            }
        }
        drop(messages);
        let _ = self
            .stream
            .delete_consumer(&consumer.cached_info().name)
            .await;
        while outstanding.load(Ordering::SeqCst) > 0 {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
        self.metrics.replayed.inc_by(n);
        self.publish_view(|v| {
            v.replaying.remove(&p);
        });
        tracing::info!(
            partition = p,
            messages = n,
            after,
            through = floor,
            seconds = started.elapsed().as_secs_f64(),
            "partition replayed: device state rebuilt"
        );
        Ok(())
    }

    /// Fails unless partition `p`'s lease key names this instance now.
    async fn check_lease(&self, p: u32) -> Result<(), ClusterError> {
        let err = partition_error(p);
        let entry = self
            .leases
            .entry(format!("p.{p}"))
            .await
            .map_err(|e| err(boxed(e)))?;
        match entry {
            Some(e)
                if e.operation == kv::Operation::Put
                    && e.value.as_ref() == self.instance.as_bytes() =>
            {
                Ok(())
            }
            _ => Err(err(
                "its lease is not this instance's now: not consumed until the lease round \
                 settles it"
                    .into(),
            )),
        }
    }

    /// Takes what the store says this instance's state holds of each partition (written by
    /// [`Cluster::keep_applied`] in an earlier life of the same store, for the same stream).
    fn load_applied(&self, writer: &App) {
        let marks = match writer.stream_applied() {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("cluster: the partitions' applied sequences unreadable: {e}");
                return;
            }
        };
        let mut applied = self.applied.lock();
        let mut kept = self.kept.lock();
        for m in marks
            .into_iter()
            .filter(|m| m.stream_created_ms == self.stream_created_ms)
        {
            tracing::info!(
                partition = m.partition,
                seq = m.seq,
                "this instance's state holds the partition up to this sequence (from its store)"
            );
            let a = applied.entry(m.partition).or_insert(0);
            *a = (*a).max(m.seq);
            kept.insert(m.partition, m.seq);
        }
    }

    /// Writes to the store, per partition, the sequence its committed state now holds
    /// everything up to, where it moved on (not flushed: a crash before the next flush keeps
    /// an earlier one, which only replays more).
    async fn keep_applied(&self, through: &BTreeMap<u32, u64>) {
        let marks: Vec<crate::app::StreamApplied> = {
            let mut kept = self.kept.lock();
            let mut marks = Vec::new();
            for (&p, &seq) in through {
                if seq > 0 && kept.get(&p).is_none_or(|k| seq > *k) {
                    kept.insert(p, seq);
                    marks.push(crate::app::StreamApplied {
                        partition: p,
                        seq,
                        stream_created_ms: self.stream_created_ms,
                    });
                }
            }
            marks
        };
        if marks.is_empty() {
            return;
        }
        let Some(app) = self.app() else {
            return;
        };
        let done = tokio::task::spawn_blocking(move || app.keep_stream_applied(&marks)).await;
        if let Ok(Err(e)) = done {
            tracing::warn!("cluster: the partitions' applied sequences not kept: {e}");
        }
    }

    /// The last stream sequence of partition `p` this instance's state holds every message up
    /// to (0: none known).
    fn applied_through(&self, p: u32) -> u64 {
        self.applied.lock().get(&p).copied().unwrap_or(0)
    }

    /// Partition `p`'s message `seq` was forwarded in stream order (or applied, a transition).
    fn note_applied(&self, p: u32, seq: u64) {
        if seq > 0 {
            let mut a = self.applied.lock();
            let e = a.entry(p).or_insert(0);
            *e = (*e).max(seq);
        }
    }

    /// Takes partition `p`'s checkpoint as this instance's state when it is further on than
    /// what the instance holds: its devices' states and tickets replace the local ones, and the
    /// partition is then consumed after its sequence. Nothing readable (none yet, NATS
    /// unreachable, a torn or foreign checkpoint): the local state stands, and the replay
    /// starts where it ends.
    async fn resume_from_checkpoint(&self, p: u32) {
        let started = Instant::now();
        let ck = match tokio::time::timeout(CALL_TIMEOUT, checkpoint::read(&self.checkpoints, p))
            .await
        {
            Ok(Ok(Some(ck))) => ck,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => return self.checkpoint_unreadable(p, &e),
            Err(_) => return self.checkpoint_unreadable(p, &"checkpoint not read in time"),
        };
        let held = self.applied_through(p);
        if ck.seq <= held {
            tracing::info!(
                partition = p,
                held,
                checkpoint = ck.seq,
                "this instance's state is at least as recent as the partition's checkpoint"
            );
            return;
        }
        let Some(writer) = self.writer.get().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        let (seq, from) = (ck.seq, ck.instance.clone());
        let (devices, tickets) = (ck.states.devices.len(), ck.states.tickets.len());
        let adopted = tokio::task::spawn_blocking(move || writer.adopt_devices(&ck.states)).await;
        match adopted {
            Ok(Ok((n, refused))) => {
                self.applied.lock().insert(p, seq);
                self.keep_applied(&BTreeMap::from([(p, seq)])).await;
                self.count_checkpoint("resumed");
                tracing::info!(
                    partition = p,
                    through = seq,
                    written_by = %from,
                    devices = n,
                    refused,
                    tickets,
                    seconds = started.elapsed().as_secs_f64(),
                    "partition resumed from its checkpoint"
                );
            }
            Ok(Err(e)) => self.checkpoint_unreadable(
                p,
                &format_args!("checkpoint of {devices} devices not adopted ({e})"),
            ),
            Err(e) => tracing::warn!(partition = p, "checkpoint not adopted: {e}"),
        }
    }

    /// Counts a checkpoint event (`forewarn_cluster_checkpoints_total{event}`).
    fn count_checkpoint(&self, event: &str) {
        self.metrics.checkpoints.with_label_values(&[event]).inc();
    }

    /// Partition `p`'s checkpoint could not be used: counted, logged, and the partition replays
    /// its stream without it.
    fn checkpoint_unreadable(&self, p: u32, why: &dyn std::fmt::Display) {
        self.count_checkpoint("unreadable");
        tracing::warn!(partition = p, "{why}: replaying without it");
    }

    /// Partition `p`'s checkpoint was not written: counted and logged; the previous one stays.
    fn checkpoint_failed(&self, p: u32, why: &dyn std::fmt::Display) {
        self.count_checkpoint("failed");
        tracing::warn!(partition = p, "{why}");
    }

    /// Writes partition `p`'s checkpoint at the last sequence forwarded; the caller makes sure
    /// all of it is committed and nothing more is forwarded meanwhile. A failure is logged and
    /// counted: the previous checkpoint stays, and the next owner replays from there.
    async fn write_checkpoint(&self, p: u32, why: &'static str) {
        let seq = self.applied_through(p);
        if seq == 0 {
            return;
        }
        let Some(writer) = self.writer.get().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        let started = Instant::now();
        let partitions = self.cfg.partitions;
        let exported = tokio::task::spawn_blocking(move || {
            writer.export_devices(&|d| partition::of_device(d, partitions) == p)
        })
        .await;
        let states = match exported {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return self.checkpoint_failed(p, &format_args!("checkpoint not written: {e}"))
            }
            Err(e) => {
                return self.checkpoint_failed(p, &format_args!("checkpoint not written: {e}"))
            }
        };
        let (devices, tickets) = (states.devices.len(), states.tickets.len());
        let ck = checkpoint::Checkpoint {
            partition: p,
            seq,
            instance: self.instance.clone(),
            states,
        };
        match tokio::time::timeout(CALL_TIMEOUT, checkpoint::write(&self.checkpoints, &ck)).await {
            Ok(Ok(checkpoint::Written::Stored(bytes))) => {
                self.count_checkpoint("written");
                self.metrics
                    .checkpoint_bytes
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
                tracing::info!(
                    partition = p,
                    through = seq,
                    devices,
                    tickets,
                    bytes,
                    seconds = started.elapsed().as_secs_f64(),
                    why,
                    "checkpoint written"
                );
            }
            Ok(Ok(checkpoint::Written::Superseded)) => {
                self.count_checkpoint("superseded");
            }
            Ok(Err(e)) => self.checkpoint_failed(p, &e),
            Err(_) => self.checkpoint_failed(p, &"checkpoint not written in time"),
        }
    }

    /// Applies a recorded transition read from partition `p`'s stream once everything forwarded
    /// before it is committed (so its ticket is as the readings before it left it). `Ok(false)`:
    /// the partition is stopping, nothing applied. An unreadable record is counted as refused
    /// and skipped; a store that cannot take it is an error (the partition is set up again).
    async fn apply_transition(
        &self,
        p: u32,
        m: &jetstream::Message,
        stop: &CancellationToken,
        outstanding: &Arc<AtomicUsize>,
    ) -> Result<bool, ClusterError> {
        while outstanding.load(Ordering::SeqCst) > 0 {
            tokio::select! {
                _ = stop.cancelled() => return Ok(false),
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
        let record: RecordedTransition = match serde_json::from_slice(&m.message.payload) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(partition = p, "unreadable transition record skipped: {e}");
                self.metrics
                    .transitions
                    .with_label_values(&["refused"])
                    .inc();
                return Ok(true);
            }
        };
        let Some(writer) = self.writer.get().and_then(std::sync::Weak::upgrade) else {
            // Shutting down: the writer is gone.
            return Ok(false);
        };
        let applied = tokio::task::spawn_blocking(move || {
            let r = writer.apply_recorded(&record);
            (record, r)
        })
        .await
        .map_err(|e| partition_error(p)(boxed(e)))?;
        let result = match applied {
            (_, Ok(Applied::Applied)) => "applied",
            (_, Ok(Applied::Already)) => "already",
            (r, Ok(Applied::Refused(why))) => {
                tracing::info!(
                    partition = p,
                    ticket = %r.ticket,
                    "recorded transition not applicable here: {why}"
                );
                "refused"
            }
            (_, Err(e)) => return Err(partition_error(p)(boxed(e))),
        };
        self.metrics.transitions.with_label_values(&[result]).inc();
        Ok(true)
    }

    /// A stream message as the processor takes it: the subject read as its MQTT topic, and the
    /// time the stream stored it as the receipt time (so a replay sees the times the first
    /// owner saw).
    fn inbound(
        &self,
        p: u32,
        m: &jetstream::Message,
        reply: Option<String>,
        outstanding: &Arc<AtomicUsize>,
    ) -> Inbound {
        let subject = m.message.subject.as_str();
        let topic = partition::topic(&self.cfg.subject_prefix, subject)
            .unwrap_or_else(|| subject.to_string());
        // Without the stream's time, the receipt time as the MQTT driver takes it (the system's
        // wall clock: latency and clock skew are measured against it).
        let received_ms = m.info().map_or_else(
            |_| crate::clock::SystemClock.now_ms(),
            |i| (i.published.unix_timestamp_nanos() / 1_000_000) as i64,
        );
        Inbound {
            publish: Publish::from_stream(
                topic,
                m.message.payload.clone(),
                StreamAck {
                    reply,
                    outstanding: outstanding.clone(),
                    partition: p,
                    seq: m.info().map_or(0, |i| i.stream_sequence),
                },
            ),
            received: Instant::now(),
            received_ms,
        }
    }
}

/// The stream of the partitioned device subjects, with the configured retention: created when
/// absent; an existing one keeps its other settings and gets `stream_max_age` and
/// `stream_max_bytes` when they differ (so a changed retention reaches the server at the next
/// start).
async fn device_stream(
    js: &jetstream::Context,
    cfg: &Config,
) -> Result<stream::Stream, ClusterError> {
    let fail = |e: BoxError| ClusterError::Stream {
        name: cfg.stream.clone(),
        source: e,
    };
    let max_age = cfg.stream_max_age.std();
    let max_bytes = cfg
        .stream_max_bytes
        .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX));
    let mut stream = js
        .get_or_create_stream(stream::Config {
            name: cfg.stream.clone(),
            subjects: vec![format!("{}.*.>", cfg.subject_prefix)],
            storage: stream::StorageType::File,
            max_age,
            max_bytes,
            num_replicas: cfg.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| fail(boxed(e)))?;
    let current = current_config(&mut stream).await.map_err(fail)?;
    if current.max_age != max_age
        || current.max_bytes != max_bytes
        || current.num_replicas != cfg.replicas
    {
        tracing::info!(
            stream = %cfg.stream,
            max_age = ?max_age,
            max_bytes,
            replicas = cfg.replicas,
            "applying the configured retention and replicas to the existing stream"
        );
        js.update_stream(stream::Config {
            max_age,
            max_bytes,
            num_replicas: cfg.replicas,
            // JetStream wants the duplicate window within the age limit.
            duplicate_window: current.duplicate_window.min(max_age),
            ..current
        })
        .await
        .map_err(|e| fail(boxed(e)))?;
        stream = js
            .get_stream(&cfg.stream)
            .await
            .map_err(|e| fail(boxed(e)))?;
    }
    Ok(stream)
}

/// A stream's configuration as the server has it now.
async fn current_config(stream: &mut stream::Stream) -> Result<stream::Config, BoxError> {
    Ok(stream.info().await.map_err(boxed)?.config.clone())
}

/// The key of `technician`'s visit slot starting at `start` in the visits bucket: the id in
/// hex (an id may hold characters a key may not).
fn slot_key(technician: &str, start: Timestamp) -> String {
    format!(
        "s.{}.{}",
        hex::encode(technician.as_bytes()),
        start.as_millis()
    )
}

impl Cluster {
    /// Runs a call on the visits bucket from a blocking thread (the board's actions run on
    /// one), within [`CALL_TIMEOUT`].
    fn slot_call<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, BoxError>>,
    ) -> Result<T, ClaimError> {
        let fail = |source: BoxError| ClaimError::Unreachable {
            ticket: what.to_string(),
            source,
        };
        self.rt
            .block_on(tokio::time::timeout(CALL_TIMEOUT, call))
            .map_err(|e| fail(boxed(e)))?
            .map_err(fail)
    }
}

/// A key-value bucket whose values expire after `max_age` (zero: never). An existing bucket
/// gets `max_age` when it differs (the claims' age limit reaches the server at the next start).
async fn bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, ClusterError> {
    let fail = |e: BoxError| ClusterError::Bucket {
        name: name.to_string(),
        source: e,
    };
    let b = made_bucket(js, name, max_age, replicas).await?;
    answering(&b).await.map_err(fail)?;
    Ok(b)
}

/// How long a bucket just made or found may take to answer its first read at start (a NATS
/// cluster's new bucket answers once its copies have a leader), and each try.
const FIRST_READ_WITHIN: Duration = Duration::from_secs(60);
const FIRST_READ_TRY: Duration = Duration::from_secs(3);

/// Waits until `b` answers a read (of a key nobody writes), at most [`FIRST_READ_WITHIN`]: on a
/// NATS cluster a bucket another instance has just made can time out reads for a few seconds
/// while its copies elect a leader, and a start-up read that failed would stop the instance.
async fn answering(b: &kv::Store) -> Result<(), BoxError> {
    let started = tokio::time::Instant::now();
    loop {
        let why = match tokio::time::timeout(FIRST_READ_TRY, b.get("meta.first-read")).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {FIRST_READ_TRY:?}"),
        };
        if started.elapsed() >= FIRST_READ_WITHIN {
            return Err(format!("not answering reads after {FIRST_READ_WITHIN:?}: {why}").into());
        }
        tracing::info!(bucket = %b.name, "the bucket does not answer reads yet ({why}); waiting");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// [`bucket`] without the first read.
async fn made_bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, ClusterError> {
    let fail = |e: BoxError| ClusterError::Bucket {
        name: name.to_string(),
        source: e,
    };
    if let Ok(b) = js.get_key_value(name).await {
        let mut backing = js
            .get_stream(format!("KV_{name}"))
            .await
            .map_err(|e| fail(boxed(e)))?;
        let current = current_config(&mut backing).await.map_err(fail)?;
        if current.max_age != max_age || current.num_replicas != replicas {
            tracing::info!(
                bucket = name,
                max_age = ?max_age,
                replicas,
                "applying the configured age limit and replicas"
            );
            js.update_stream(stream::Config {
                max_age,
                duplicate_window: dedup_window(max_age),
                num_replicas: replicas,
                ..current
            })
            .await
            .map_err(|e| fail(boxed(e)))?;
        }
        return Ok(b);
    }
    // The bucket's stream is made here, with the key-value layout (`KV_NAME` keeping
    // `$KV.NAME.>`, one value per key, roll-ups, direct gets): the client's own
    // `create_key_value` first reads the account's limits in a form nats-server 2.9 does not
    // answer ("data did not match any variant of untagged enum Response").
    let made = js
        .get_or_create_stream(stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_age,
            duplicate_window: dedup_window(max_age),
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            num_replicas: replicas,
            ..Default::default()
        })
        .await;
    if let Err(e) = made {
        // Instances started at once both find no bucket and both make it; the server refuses
        // the second ("subjects overlap with an existing stream"): the other one's is as good.
        return match js.get_key_value(name).await {
            Ok(b) => Ok(b),
            Err(_) => Err(fail(boxed(e))),
        };
    }
    js.get_key_value(name).await.map_err(|e| fail(boxed(e)))
}

/// A bucket's duplicate window: within its age limit (JetStream requires it), and no longer
/// than two minutes (key-value writes carry no message ids; a long window only costs memory).
fn dedup_window(max_age: Duration) -> Duration {
    let two_minutes = Duration::from_secs(120);
    if max_age.is_zero() {
        two_minutes
    } else {
        max_age.min(two_minutes)
    }
}

/// The ticket-id secret: made by the first instance that starts, read by the others.
async fn shared_ticket_key(tickets: &kv::Store) -> Result<Vec<u8>, ClusterError> {
    let mut key = vec![0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut key[..]);
    let bad = |reason: String| ClusterError::TicketKey {
        bucket: tickets.name.clone(),
        reason,
    };
    match tickets.create(TICKET_ID_KEY, key.clone().into()).await {
        Ok(_) => Ok(key),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            match tickets.get(TICKET_ID_KEY).await {
                Ok(Some(v)) if v.len() == 32 => Ok(v.to_vec()),
                Ok(Some(v)) => Err(bad(format!("{} bytes instead of 32", v.len()))),
                Ok(None) => Err(bad("deleted while being read".into())),
                Err(e) => Err(bad(e.to_string())),
            }
        }
        Err(e) => Err(bad(e.to_string())),
    }
}

/// The keys of `store` matching the subject filter `filter` (`u.NAME.>`), live ones only
/// (deleted and purged keys left out): [`kv::Store::keys`] for part of a bucket.
async fn list_keys(
    client: &async_nats::Client,
    store: &kv::Store,
    filter: &str,
) -> Result<Vec<String>, BoxError> {
    let listed = list(client, store, filter, true, CALL_TIMEOUT).await?;
    Ok(listed.into_iter().map(|(k, _, _)| k).collect())
}

/// The live entries of `store` matching `filter`, each as `(key, value, revision)`, in one
/// listing (one consumer) rather than a read per key; at most `within`.
async fn list_entries(
    client: &async_nats::Client,
    store: &kv::Store,
    filter: &str,
    within: Duration,
) -> Result<Vec<(String, bytes::Bytes, u64)>, BoxError> {
    list(client, store, filter, false, within).await
}

async fn list(
    _client: &async_nats::Client,
    store: &kv::Store,
    filter: &str,
    headers_only: bool,
    within: Duration,
) -> Result<Vec<(String, bytes::Bytes, u64)>, BoxError> {
    // The keys from the bucket's stream's subjects (answered by the stream's leader), then each
    // key's last value read by key (direct gets, answered by any copy), a few at a time. Not a
    // consumer: on a NATS cluster with a server down, nats-server 2.9 can place a listing's
    // ephemeral consumer on that server, and every listing then times out.
    let call = async {
        let mut subjects = store
            .stream
            .info_with_subjects(format!("{}{filter}", store.prefix))
            .await
            .map_err(boxed)?;
        let mut keys = Vec::new();
        while let Some(s) = subjects.next().await {
            let (subject, _) = s.map_err(boxed)?;
            if let Some(k) = subject.strip_prefix(store.prefix.as_str()) {
                keys.push(k.to_string());
            }
        }
        keys.sort();
        let read: Vec<Result<Option<kv::Entry>, kv::EntryError>> =
            futures_util::stream::iter(keys.clone())
                .map(|k| {
                    let store = store.clone();
                    async move { store.entry(k).await }
                })
                .buffered(LIST_READS_AT_ONCE)
                .collect()
                .await;
        let mut entries = Vec::new();
        for (k, e) in keys.into_iter().zip(read) {
            // Gone since the subjects were read (deleted, or expired and removed), or a
            // delete marker: not a live key.
            let Some(e) = e.map_err(boxed)? else {
                continue;
            };
            if e.operation == kv::Operation::Put {
                let value = if headers_only {
                    bytes::Bytes::new()
                } else {
                    e.value
                };
                entries.push((k, value, e.revision));
            }
        }
        Ok(entries)
    };
    tokio::time::timeout(within, call).await.map_err(boxed)?
}

/// Keys a listing reads at once.
const LIST_READS_AT_ONCE: usize = 16;

impl Fleetwide for Cluster {
    fn replaying(&self, device: &str) -> bool {
        let p = partition::of_device(device, self.cfg.partitions);
        self.view.lock().replaying.contains(&p)
    }

    fn claim(&self, change: &Change) -> Result<bool, ClaimError> {
        // No key: a transition (claimed under the key of the time it was made, by the instance
        // accepting it: `claim_as`), or a change whose time does not read.
        match crate::app::claim_key(change) {
            Some(key) => self.claim_as(&key, change),
            None => Ok(true),
        }
    }

    fn claim_as(&self, key: &str, change: &Change) -> Result<bool, ClaimError> {
        let ticket = &change.ticket;
        let Some(epoch) = self.standing() else {
            return Err(ClaimError::Lapsed {
                ticket: ticket.id.clone(),
            });
        };
        let record = ClaimRecord {
            instance: self.instance.clone(),
            change: change.kind.as_str().to_string(),
            device_id: ticket.device_id.to_string(),
            failure_mode: ticket.failure_mode.clone(),
            opened_at: ticket.opened_at.clone(),
            updated_at: ticket.updated_at.clone(),
            tracked: true,
            taken_from: None,
        };
        let fail = |source: BoxError| ClaimError::Unreachable {
            ticket: ticket.id.clone(),
            source,
        };
        let value = serde_json::to_vec(&record).map_err(|e| fail(boxed(e)))?;
        let tickets = self.claims.clone();
        let key = key.to_string();
        let index = unsent_key(&self.instance, &key);
        let me = self.instance.clone();
        let call = async move {
            // Indexed first: should this instance die once the claim is made, its next owner
            // finds it under this instance's index, whether or not the change was committed.
            tickets
                .put(&index, bytes::Bytes::new())
                .await
                .map_err(boxed)?;
            let held = match tickets.create(&key, value.into()).await {
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    tickets.get(&key).await.map_err(boxed)?
                }
                Err(e) => return Err(boxed(e)),
            };
            let mine = held
                .as_ref()
                .and_then(|v| serde_json::from_slice::<ClaimRecord>(v).ok())
                .is_some_and(|r| r.instance == me);
            if !mine {
                // Another instance's change: not in this instance's index (one left behind is
                // dropped when the index is read).
                let _ = tickets.delete(&index).await;
            }
            Ok(held)
        };
        let got = self
            .rt
            .block_on(tokio::time::timeout(CALL_TIMEOUT, call))
            .map_err(|e| fail(boxed(e)))?
            .map_err(fail)?;
        if self.standing() != Some(epoch) {
            // The claim straddled a lapse: another instance may have taken it over meanwhile.
            // Not committed: tried again once rejoined (then found held, by this instance or
            // by the one that took it).
            return Err(ClaimError::Lapsed {
                ticket: ticket.id.clone(),
            });
        }
        let result = match got {
            None => "created",
            Some(v) => match serde_json::from_slice::<ClaimRecord>(&v) {
                Ok(r) if r.instance == self.instance => "mine",
                _ => "other",
            },
        };
        self.metrics.claims.with_label_values(&[result]).inc();
        Ok(result != "other")
    }

    fn status(&self) -> ClusterStatus {
        let v = self.view.lock();
        ClusterStatus {
            enabled: true,
            instance: self.instance.clone(),
            partitions: self.cfg.partitions,
            members: v.members.clone(),
            owned: v.owned.iter().copied().collect(),
            replaying: v.replaying.iter().copied().collect(),
            assignment: v.assignment.clone(),
        }
    }

    fn peers(&self) -> Peers {
        let (mut apis, unowned) = {
            let v = self.view.lock();
            let live = |name: &str| name == self.instance || v.members.iter().any(|m| m == name);
            // A partition is answered for by its lease holder, or, between two owners, by the
            // instance that handed it on; by nobody once that one is gone too.
            let unowned = (0..self.cfg.partitions)
                .filter_map(|p| {
                    let answered = match v.assignment.get(&p) {
                        Some(holder) => live(holder),
                        None => v.last_holder.get(&p).is_some_and(|h| live(h)),
                    };
                    (!answered).then(|| (p, v.last_holder.get(&p).cloned()))
                })
                .collect();
            (v.apis.clone(), unowned)
        };
        apis.insert(self.instance.clone(), self.api.lock().clone());
        Peers {
            me: self.instance.clone(),
            apis,
            timeout: self.cfg.peer_timeout.std(),
            unowned,
        }
    }

    fn owner(&self, device: &str) -> Option<String> {
        let p = partition::of_device(device, self.cfg.partitions);
        self.view.lock().assignment.get(&p).cloned()
    }

    fn record_transition(&self, t: &RecordedTransition) -> Result<(), ClaimError> {
        let fail = |source: BoxError| ClaimError::Unreachable {
            ticket: t.ticket.clone(),
            source,
        };
        if self.standing().is_none() {
            return Err(ClaimError::Lapsed {
                ticket: t.ticket.clone(),
            });
        }
        let mut record = t.clone();
        record.instance = self.instance.clone();
        let payload = serde_json::to_vec(&record).map_err(|e| fail(boxed(e)))?;
        let p = partition::of_device(&t.device_id, self.cfg.partitions);
        let subject = partition::transitions(&self.cfg.subject_prefix, p);
        let js = self.js.clone();
        // Stored by the stream (its acknowledgement awaited) before the transition is.
        let call = async move {
            js.publish(subject, payload.into())
                .await
                .map_err(boxed)?
                .await
                .map_err(boxed)
        };
        self.rt
            .block_on(tokio::time::timeout(CALL_TIMEOUT, call))
            .map_err(|e| fail(boxed(e)))?
            .map_err(fail)?;
        self.metrics
            .transitions
            .with_label_values(&["recorded"])
            .inc();
        Ok(())
    }

    fn reserve_slot(
        &self,
        technician: &str,
        start: Timestamp,
        ticket: &str,
    ) -> Result<Option<String>, ClaimError> {
        let key = slot_key(technician, start);
        let visits = self.visits.clone();
        let value = ticket.as_bytes().to_vec();
        let call = async move {
            match visits.create(&key, value.into()).await {
                Ok(_) => Ok(None),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    visits.get(&key).await.map_err(boxed)
                }
                Err(e) => Err(boxed(e)),
            }
        };
        let held = self.slot_call(ticket, call)?;
        Ok(held
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .filter(|holder| holder != ticket))
    }

    fn slot_holder(
        &self,
        technician: &str,
        start: Timestamp,
    ) -> Result<Option<String>, ClaimError> {
        let key = slot_key(technician, start);
        let visits = self.visits.clone();
        let call = async move { visits.get(&key).await.map_err(boxed) };
        Ok(self
            .slot_call(technician, call)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn release_slot(
        &self,
        technician: &str,
        start: Timestamp,
        ticket: &str,
    ) -> Result<(), ClaimError> {
        let key = slot_key(technician, start);
        let visits = self.visits.clone();
        let mine = ticket.as_bytes().to_vec();
        // Deleted only at the revision read as this ticket's: a reservation another ticket
        // made meanwhile stays.
        let call = async move {
            match visits.entry(&key).await.map_err(boxed)? {
                Some(e) if e.operation == kv::Operation::Put && e.value[..] == mine[..] => visits
                    .delete_expect_revision(&key, Some(e.revision))
                    .await
                    .map(|()| true)
                    .map_err(boxed),
                _ => Ok(false),
            }
        };
        if self.slot_call(ticket, call)? {
            self.metrics.visits.with_label_values(&["released"]).inc();
        }
        Ok(())
    }

    fn share_registry(
        &self,
        customers: &[crate::fleet::Customer],
        devices: &[crate::fleet::Device],
    ) -> Result<(), ShareError> {
        let mut puts = Vec::with_capacity(customers.len() + devices.len());
        for c in customers {
            let key = registry::customer_key(&c.id);
            let value = serde_json::to_vec(c).map_err(|source| ShareError::Encode {
                key: key.clone(),
                source,
            })?;
            puts.push((key, value));
        }
        for d in devices {
            let key = registry::device_key(&d.id);
            let value = serde_json::to_vec(d).map_err(|source| ShareError::Encode {
                key: key.clone(),
                source,
            })?;
            puts.push((key, value));
        }
        for (key, value) in puts {
            let bucket = self.fleet_registry.clone();
            let k = key.clone();
            let call = async move { bucket.put(k, value.into()).await.map_err(boxed) };
            self.rt
                .block_on(tokio::time::timeout(CALL_TIMEOUT, call))
                .map_err(|e| ShareError::Unreachable {
                    key: key.clone(),
                    source: boxed(e),
                })?
                .map_err(|source| ShareError::Unreachable {
                    key: key.clone(),
                    source,
                })?;
            self.metrics.registry.with_label_values(&["shared"]).inc();
        }
        Ok(())
    }

    fn readiness(&self) -> ClusterReadiness {
        let nats = self.client.connection_state() == async_nats::connection::State::Connected;
        let (joined, standing) = {
            let s = self.standing.lock();
            (s.joined.is_some(), s.joined == Some(s.run))
        };
        let v = self.view.lock();
        ClusterReadiness {
            ready: false,
            instance: self.instance.clone(),
            nats,
            joined,
            standing,
            lease_view: v
                .last_round
                .is_some_and(|t| t.elapsed() <= self.cfg.lease.std()),
            replaying: v.starting.iter().copied().collect(),
            registry_loaded: *self.registry_loaded.borrow(),
            reason: None,
        }
        .judge()
    }
}

impl crate::outbox::Gate for Cluster {
    /// Open while this instance is in good standing ([`Standing`]).
    fn open(&self) -> bool {
        self.standing().is_some()
    }

    /// The standing's epoch: bumped by each rejoin, after it removed the rows of changes sent
    /// elsewhere, so rows an outbox worker read before the rejoin are read again, not sent.
    fn epoch(&self) -> u64 {
        self.standing.lock().epoch
    }
}

/// Sends the acknowledgements of committed groups: over NATS for messages from the stream
/// (then flushed, then counted down), over MQTT for anything the MQTT connection delivered.
/// Like [`mqtt::ack_loop`], it runs apart from the intake so a slow acknowledgement never holds
/// up reading.
pub async fn ack_loop(
    cluster: Arc<Cluster>,
    mqtt_client: mqtt::Client,
    mut acks: mpsc::UnboundedReceiver<Vec<Publish>>,
    flushed: CancellationToken,
) {
    while let Some(group) = acks.recv().await {
        let mut done: Vec<Arc<AtomicUsize>> = Vec::new();
        // Committed: each partition's state holds its messages up to these.
        let mut through: BTreeMap<u32, u64> = BTreeMap::new();
        for p in &group {
            match p.stream_ack() {
                Some(sa) => {
                    let t = through.entry(sa.partition).or_insert(0);
                    *t = (*t).max(sa.seq);
                    if let Some(reply) = &sa.reply {
                        // Lost only with the connection; JetStream then redelivers after
                        // `ack_wait`, and processing is idempotent.
                        if let Err(e) = cluster
                            .client
                            .publish(reply.clone(), bytes::Bytes::from_static(b"+ACK"))
                            .await
                        {
                            tracing::warn!("acknowledgement not sent: {e}");
                        }
                    }
                    done.push(sa.outstanding.clone());
                }
                None => {
                    let _ = mqtt_client.ack(p).await;
                }
            }
        }
        if let Err(e) = cluster.client.flush().await {
            tracing::warn!("acknowledgements not flushed: {e}");
        }
        cluster.keep_applied(&through).await;
        for d in done {
            d.fetch_sub(1, Ordering::SeqCst);
        }
    }
    flushed.cancel();
}
