//! The only module that knows the storage engine (sled).
//!
//! One tree, keys by prefix, so that one state change — device state, the tickets it touched, the
//! outbox rows and timeline entries it caused — is one atomic `apply_batch`, flushed before the
//! MQTT acks go out. sled batches are atomic across keys of a tree; a single writer (the core lock
//! in `serve`) does the read-modify-write, so no optimistic transaction has to be retried.
//!
//! | prefix | value |
//! |---|---|
//! | `meta/schema` | schema version |
//! | `s/{device}` | device state (postcard) |
//! | `r/{device}` | the device's reorder buffer: items held for event-time order (postcard) |
//! | `w/{seq}` | the step log: one record per commit, the steps it applied (see below) |
//! | `t/{ticket id}` | ticket (JSON) |
//! | `l/{device}\x1f{mode}` | id of the live ticket of that device and mode |
//! | `o/{queue}/{seq}` | outbox row (JSON, owned by the queue's worker) |
//! | `c/{customer}/{ms}{seq}` | customer timeline entry (JSON) |
//! | `fd/{device}`, `fc/{customer}` | fleet registry records (JSON) |
//! | `k/{name}` | small key-value records owned by other modules (idempotency marks, …) |
//! | `q/{original key}` | a record that could not be decoded, moved aside (JSON [`Quarantined`]) |
//!
//! A device's state is its snapshot (`s/` and `r/`) plus the steps the step log holds for it
//! after its last snapshot. sled's cost is per key written (and grows with the number of keys),
//! not per byte, so a commit writes one log record with all the steps of its group (readings and
//! events offered, idle flushes) instead of one or two records per device; the devices' whole
//! states are written at checkpoints, and the log records before a checkpoint are removed. What
//! a step means is the app's business; the store keeps bytes.
//!
//! A record that cannot be decoded is never allowed to stop a reader: every scan moves it to
//! `q/` under its own key (one atomic batch), counts it, logs it and goes on.

mod config;
pub mod events;

pub use config::Config;

use crate::clock::{Clock, SystemClock};
use crate::domain::Ticket;
use serde::{de::DeserializeOwned, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// 2: the step log (`w/`). A data directory of version 1 (no step log) is upgraded in
/// place when opened; an older build refuses a version 2 directory.
pub const SCHEMA_VERSION: u32 = 2;
/// Versions this build opens (and upgrades to [`SCHEMA_VERSION`]).
const READABLE_SCHEMAS: &[&str] = &["1", "2"];
const SEP: u8 = 0x1f;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("store: corrupt record {key}: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("store at {path} has schema version {found}, this build uses {SCHEMA_VERSION}")]
    Schema { path: String, found: String },
    #[error("store: being reopened after an I/O error")]
    Reopening,
    /// A deferred batch could not be applied: it and every batch queued after it were dropped,
    /// and further deferred batches are refused until the writer has rebuilt its memory from
    /// the store ([`Store::trust_deferred`]).
    #[error("store: an earlier deferred batch could not be applied; deferred writes wait for memory to be rebuilt")]
    Discarded,
    /// A value could not be serialised: the whole transaction is refused rather than an empty
    /// record written.
    #[error("store: cannot encode {key}: {source}")]
    Encode {
        key: String,
        source: serde_json::Error,
    },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A handle on the database. After an I/O error (a full disk, say) sled refuses every further
/// operation for the life of the open database, so [`Store::reopen`] swaps in a fresh one once
/// the disk takes writes again; every clone of the handle sees the new one.
#[derive(Clone)]
pub struct Store {
    inner: Arc<parking_lot::RwLock<Option<Open>>>,
    dir: PathBuf,
    cache_bytes: u64,
    /// Records moved aside since start (`forewarn_store_quarantined_total`, registered by the
    /// app: the store knows no registry).
    quarantined: prometheus::IntCounter,
    /// Bumped by every quarantine (a ticket may have gone): readers that summarise outcomes
    /// start again from a scan when it moved.
    outcome_epoch: Arc<std::sync::atomic::AtomicU64>,
    /// Outcomes written by commits since the last [`Store::take_outcomes`], once
    /// [`Store::track_outcomes`] turned it on (off by default, so nothing accumulates unread).
    outcome_log: Arc<parking_lot::Mutex<Option<Vec<OutcomeNote>>>>,
    /// Batches handed over by [`Store::defer`] and not applied yet.
    deferred: Arc<Deferred>,
    /// What a quarantined record's `at_ms` is read from: the daemon's one clock once `serve`
    /// hands it over ([`Store::with_clock`]), the system's until then.
    clock: Arc<dyn Clock>,
}

/// Batches the ingest path hands over without applying them ([`Store::defer`]), applied in the
/// order handed over by whichever thread touches the store next (normally the flusher).
///
/// The rule that keeps this invisible: **every operation on the tree first applies every
/// deferred batch** (reads and writes alike, on any thread), so the store behaves exactly as if
/// each batch had been applied when it was deferred — a synchronous write (an API transition,
/// an outbox update, a quarantine) can never be overwritten by an older batch still queued, and
/// a read never misses one. Only the thread that does sled's work changes.
#[derive(Default)]
struct Deferred {
    queue: parking_lot::Mutex<std::collections::VecDeque<(sled::Batch, Vec<OutcomeNote>)>>,
    /// Held while batches are taken from the queue and applied, so that they are applied one
    /// at a time in queue order, and so that a thread finding the queue empty knows the last
    /// batch taken is in the tree. Taken before `inner`.
    applying: parking_lot::Mutex<()>,
    /// Batches queued or being applied; 0 lets every operation skip the lock.
    pending: std::sync::atomic::AtomicUsize,
    /// Moves each time queued batches are dropped because one could not be applied: whoever
    /// waits for a batch to be durable compares it with its value when the batch was deferred.
    epoch: std::sync::atomic::AtomicU64,
    /// Set when batches were dropped: deferring is refused until [`Store::trust_deferred`].
    refused: std::sync::atomic::AtomicBool,
    /// Tests: the next apply of a deferred batch fails as an I/O error would.
    #[cfg(test)]
    fail_next: std::sync::atomic::AtomicBool,
}

/// A ticket written with an outcome (for summaries kept up to date without rescanning).
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeNote {
    pub ticket: String,
    pub model: String,
    pub mode: String,
    pub outcome: crate::domain::Outcome,
}

/// A record set aside because it could not be decoded, as `GET /api/v1/quarantine` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Quarantined {
    /// The record's key where it was found (lossy UTF-8).
    pub key: String,
    /// Why it could not be read.
    pub detail: String,
    /// Wall-clock time it was moved aside (epoch ms).
    pub at_ms: i64,
    /// The record's bytes as they were (lossy UTF-8).
    pub value: String,
}

#[derive(Clone)]
struct Open {
    db: sled::Db,
    tree: sled::Tree,
}

/// Filters of `GET /api/v1/tickets`.
#[derive(Debug, Clone, Default)]
pub struct TicketFilter {
    pub status: Option<crate::domain::Status>,
    pub device_id: Option<crate::domain::DeviceId>,
    pub customer_id: Option<String>,
    /// Only tickets updated (event time, epoch ms) at or after this.
    pub since_ms: Option<i64>,
    pub limit: Option<usize>,
}

/// Changes collected for one atomic commit.
pub struct Tx {
    batch: sled::Batch,
    ops: usize,
    /// The first value that could not be serialised; [`Store::commit`] then fails.
    encode_error: Option<StoreError>,
    /// For sequence numbers of outbox and timeline rows (monotonic across restarts).
    db: Option<sled::Db>,
    /// Tickets written with an outcome (see `Store::take_outcomes`).
    outcomes: Vec<OutcomeNote>,
    /// While `Some` ([`Tx::capture_kv`]): every `k/` record written or removed, as JSON (`None`
    /// for a removal), so that cluster mode can carry a change's side records with it.
    captured: Option<Vec<(String, Option<Vec<u8>>)>>,
    /// While `Some` ([`Tx::capture_outbox`]): the keys of the outbox rows pushed.
    pushed: Option<Vec<Vec<u8>>>,
}

impl Tx {
    pub fn len(&self) -> usize {
        self.ops
    }
    pub fn is_empty(&self) -> bool {
        self.ops == 0
    }

    /// Inserts `value` as JSON under `key`; a value that cannot be serialised is remembered and
    /// fails the commit.
    fn insert_json<T: Serialize + ?Sized>(&mut self, key: Vec<u8>, value: &T) {
        match serde_json::to_vec(value) {
            Ok(json) => self.batch.insert(key, json),
            Err(source) => self.encode_failed(String::from_utf8_lossy(&key).into_owned(), source),
        }
    }

    /// Remembers the first value that could not be encoded: the commit fails with it.
    fn encode_failed(&mut self, key: String, source: serde_json::Error) {
        if self.encode_error.is_none() {
            self.encode_error = Some(StoreError::Encode { key, source });
        }
    }

    pub fn put_state(&mut self, device: &str, bytes: Vec<u8>) {
        self.batch.insert(key2(b"s/", device), bytes);
        self.ops += 1;
    }

    /// Forgets a device's state and reorder buffer.
    pub fn remove_device_state(&mut self, device: &str) {
        self.batch.remove(key2(b"s/", device));
        self.batch.remove(key2(b"r/", device));
        self.ops += 1;
    }

    /// Appends a record to the step log; returns its sequence number (monotonic across
    /// restarts: the log is read back in this order).
    pub fn put_log(&mut self, record: Vec<u8>) -> u64 {
        let seq = self.seq();
        self.batch.insert(log_key(seq), record);
        self.ops += 1;
        seq
    }

    /// Removes a step log record (its steps are in the snapshots now).
    pub fn remove_log(&mut self, seq: u64) {
        self.batch.remove(log_key(seq));
        self.ops += 1;
    }

    pub fn put_reorder(&mut self, device: &str, bytes: Vec<u8>) {
        self.batch.insert(key2(b"r/", device), bytes);
        self.ops += 1;
    }

    pub fn remove_reorder(&mut self, device: &str) {
        self.batch.remove(key2(b"r/", device));
        self.ops += 1;
    }

    /// Stores a ticket and keeps the live index in step with its status.
    pub fn put_ticket(&mut self, t: &Ticket) {
        match serde_json::to_vec(t) {
            Ok(json) => self.put_ticket_json(t, json),
            Err(source) => self.encode_failed(format!("t/{}", t.id), source),
        }
    }

    /// [`Tx::put_ticket`] for a caller that already has the ticket's JSON
    /// (`serde_json::to_vec(t)`, e.g. to build the dispatch row around it): the ticket is
    /// encoded once per commit, not once per row that carries it.
    pub fn put_ticket_json(&mut self, t: &Ticket, json: Vec<u8>) {
        let mut lk = key2(b"l/", &t.device_id);
        lk.push(SEP);
        lk.extend_from_slice(t.failure_mode.as_bytes());
        if t.is_live() {
            self.batch.insert(lk, t.id.as_bytes());
        } else {
            self.batch.remove(lk);
        }
        self.put_ticket_record(t, json);
    }

    /// [`Tx::put_ticket_json`] for a change that leaves the live index as it is: a live
    /// ticket that stays live under its id, device and mode (the engine's automatic updates,
    /// most of a busy fleet's changes), whose index entry was written when it became live.
    pub fn put_unmoved_ticket_json(&mut self, t: &Ticket, json: Vec<u8>) {
        debug_assert!(
            t.is_live(),
            "only a live ticket's change leaves the live index as it is"
        );
        self.put_ticket_record(t, json);
    }

    /// The ticket's record (and its outcome's note) without the live index.
    fn put_ticket_record(&mut self, t: &Ticket, json: Vec<u8>) {
        if let Some(outcome) = t.outcome {
            self.outcomes.push(OutcomeNote {
                ticket: t.id.clone(),
                model: t.model.name.clone(),
                mode: t.failure_mode.clone(),
                outcome,
            });
        }
        self.batch.insert(key2(b"t/", &t.id), json);
        self.ops += 1;
    }

    fn seq(&mut self) -> u64 {
        // generate_id only fails if sled cannot persist its id counter; the commit that follows
        // would then fail too and nothing is written, so a fallback value is never stored.
        self.db
            .as_ref()
            .and_then(|db| db.generate_id().ok())
            .unwrap_or(u64::MAX)
    }

    /// Appends an outbox row; returns its key (stable: use it as the row's identity).
    pub fn push_outbox<T: Serialize>(&mut self, queue: &str, row: &T) -> Vec<u8> {
        let seq = self.seq();
        let k = outbox_key(queue, seq);
        self.insert_json(k.clone(), row);
        self.ops += 1;
        if let Some(p) = &mut self.pushed {
            p.push(k.clone());
        }
        k
    }

    /// From now on, remembers the keys of the outbox rows pushed (see [`Tx::take_pushed`]).
    pub fn capture_outbox(&mut self) {
        self.pushed.get_or_insert_with(Vec::new);
    }

    /// The keys of the outbox rows pushed since [`Tx::capture_outbox`]; capturing stops.
    pub fn take_pushed(&mut self) -> Vec<Vec<u8>> {
        self.pushed.take().unwrap_or_default()
    }

    /// [`Tx::push_outbox`] for a row the caller has already encoded as JSON.
    pub fn push_outbox_json(&mut self, queue: &str, json: Vec<u8>) -> Vec<u8> {
        let seq = self.seq();
        let k = outbox_key(queue, seq);
        self.batch.insert(k.clone(), json);
        self.ops += 1;
        if let Some(p) = &mut self.pushed {
            p.push(k.clone());
        }
        k
    }

    /// Appends an entry to a customer's timeline at event time `ms`.
    pub fn push_timeline<T: Serialize>(&mut self, customer: &str, ms: i64, entry: &T) {
        let seq = self.seq();
        let mut k = key2(b"c/", customer);
        k.push(b'/');
        k.extend_from_slice(&(ms as u64 ^ (1 << 63)).to_be_bytes());
        k.extend_from_slice(&seq.to_be_bytes());
        self.insert_json(k, entry);
        self.ops += 1;
    }

    /// Rewrites an outbox row as part of this transaction (worker bookkeeping).
    pub fn put_outbox_row<T: Serialize>(&mut self, key: &[u8], row: &T) {
        self.insert_json(key.to_vec(), row);
        self.ops += 1;
    }

    /// Removes a row by its full key (an outbox row delivered or moved to another queue, …).
    pub fn remove_raw(&mut self, key: &[u8]) {
        self.batch.remove(key);
        self.ops += 1;
    }

    pub fn put_kv<T: Serialize>(&mut self, name: &str, value: &T) {
        match serde_json::to_vec(value) {
            Ok(json) => self.put_kv_json(name, json),
            Err(source) => self.encode_failed(format!("k/{name}"), source),
        }
    }

    /// [`Tx::put_kv`] for a value already encoded as JSON (as [`Store::get_kv_json`] reads it).
    pub fn put_kv_json(&mut self, name: &str, json: Vec<u8>) {
        if let Some(c) = &mut self.captured {
            c.push((name.to_string(), Some(json.clone())));
        }
        self.batch.insert(key2(b"k/", name), json);
        self.ops += 1;
    }

    pub fn remove_kv(&mut self, name: &str) {
        if let Some(c) = &mut self.captured {
            c.push((name.to_string(), None));
        }
        self.batch.remove(key2(b"k/", name));
        self.ops += 1;
    }

    /// From now on, remembers every `k/` record written or removed (see [`Tx::take_captured`]).
    pub fn capture_kv(&mut self) {
        self.captured.get_or_insert_with(Vec::new);
    }

    /// The `k/` records written (JSON) or removed (`None`) since [`Tx::capture_kv`], in order;
    /// capturing stops.
    pub fn take_captured(&mut self) -> Vec<(String, Option<Vec<u8>>)> {
        self.captured.take().unwrap_or_default()
    }

    pub fn put_fleet_device<T: Serialize>(&mut self, id: &str, v: &T) {
        self.insert_json(key2(b"fd/", id), v);
        self.ops += 1;
    }

    pub fn put_fleet_customer<T: Serialize>(&mut self, id: &str, v: &T) {
        self.insert_json(key2(b"fc/", id), v);
        self.ops += 1;
    }
}

fn key2(prefix: &[u8], s: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + s.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(s.as_bytes());
    k
}

fn log_key(seq: u64) -> Vec<u8> {
    let mut k = b"w/".to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn outbox_prefix(queue: &str) -> Vec<u8> {
    let mut k = key2(b"o/", queue);
    k.push(b'/');
    k
}

fn outbox_key(queue: &str, seq: u64) -> Vec<u8> {
    let mut k = outbox_prefix(queue);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// sled's log segment size for a new store. sled writes a page larger than a quarter of a
/// segment as a file of its own (a "blob": created, written, later removed), and a page is a
/// whole leaf of up to 17 entries: with the default 512 KiB, the leaf holding the newest step
/// log records (one of ~26 kB per group of 256 readings) went out as a blob at nearly every
/// commit. At 4 MiB a leaf of step log records stays in the log.
const SEGMENT_SIZE: usize = 4 << 20;

/// The segment size to open `dir` with: the one it was created with (sled refuses another),
/// [`SEGMENT_SIZE`] for a new store.
fn segment_size(dir: &Path) -> usize {
    // sled's `conf`: `key: value` lines, then a 4-byte checksum (not text).
    std::fs::read(dir.join("conf"))
        .ok()
        .and_then(|conf| {
            String::from_utf8_lossy(&conf)
                .lines()
                .find_map(|l| l.strip_prefix("segment_size:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(SEGMENT_SIZE)
}

fn decode<T: DeserializeOwned>(k: &[u8], v: &[u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        detail: e.to_string(),
    })
}

impl Store {
    /// Opens (or creates) the database in `dir`, checking its schema version.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store> {
        let open = Self::open_db(dir, cache_bytes)?;
        let quarantined = prometheus::IntCounter::new(
            "forewarn_store_quarantined_total",
            "Stored records that could not be decoded and were moved aside",
        )
        .map_err(|e| StoreError::Corrupt {
            key: "metrics".into(),
            detail: e.to_string(),
        })?;
        Ok(Store {
            inner: Arc::new(parking_lot::RwLock::new(Some(open))),
            dir: dir.to_path_buf(),
            cache_bytes,
            quarantined,
            outcome_epoch: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            outcome_log: Arc::new(parking_lot::Mutex::new(None)),
            deferred: Arc::new(Deferred::default()),
            clock: Arc::new(SystemClock),
        })
    }

    /// The store on `clock` (the daemon's one clock): what quarantined records are stamped with.
    /// Clones made after this share it.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Store {
        self.clock = clock;
        self
    }

    fn open_db(dir: &Path, cache_bytes: u64) -> Result<Open> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .flush_every_ms(Some(1000))
            .segment_size(segment_size(dir))
            .open()?;
        let tree = db.open_tree("forewarn")?;
        match tree.get(b"meta/schema")? {
            None => {
                tree.insert(b"meta/schema", SCHEMA_VERSION.to_string().as_bytes())?;
                db.flush()?;
            }
            Some(v) if v.as_ref() == SCHEMA_VERSION.to_string().as_bytes() => {}
            Some(v) if READABLE_SCHEMAS.iter().any(|r| r.as_bytes() == v.as_ref()) => {
                tree.insert(b"meta/schema", SCHEMA_VERSION.to_string().as_bytes())?;
                db.flush()?;
                tracing::info!(
                    "store at {} upgraded from schema version {} to {SCHEMA_VERSION}",
                    dir.display(),
                    String::from_utf8_lossy(&v)
                );
            }
            Some(v) => {
                return Err(StoreError::Schema {
                    path: dir.display().to_string(),
                    found: String::from_utf8_lossy(&v).into_owned(),
                })
            }
        }
        Ok(Open { db, tree })
    }

    /// The open database, once every deferred batch is applied (see [`Deferred`]): every
    /// operation on the tree goes through here.
    fn h(&self) -> Result<Open> {
        self.apply_deferred()?;
        self.raw()
    }

    /// The open database as it is, deferred batches or not (sequence numbers, sizes).
    fn raw(&self) -> Result<Open> {
        let current = self.inner.read().clone();
        match current {
            Some(open) => Ok(open),
            // Closed by a reopen that failed (the disk still full): any user tries again.
            None => {
                self.reopen()?;
                self.inner.read().clone().ok_or(StoreError::Reopening)
            }
        }
    }

    /// Hands a transaction over to be applied later, in order, by whichever thread touches the
    /// store next (see [`Deferred`]); the caller's own later reads see it. Durable after the
    /// next [`Store::flush`] that began after this returned, provided [`Store::epoch`] has not
    /// moved meanwhile (then it may have been dropped: nothing of it or of what was deferred
    /// after it is in the store). Refused while dropped batches are not yet accounted for.
    pub fn defer(&self, mut tx: Tx) -> Result<()> {
        use std::sync::atomic::Ordering;
        if !has_work(&mut tx)? {
            return Ok(());
        }
        let d = &self.deferred;
        let mut q = d.queue.lock();
        // Checked under the queue's lock: a drop of the queue cannot slip between.
        if d.refused.load(Ordering::SeqCst) {
            return Err(StoreError::Discarded);
        }
        q.push_back((tx.batch, tx.outcomes));
        d.pending.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Moves each time deferred batches are dropped (see [`Store::defer`]).
    pub fn epoch(&self) -> u64 {
        self.deferred
            .epoch
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The writer has rebuilt its memory from the store after deferred batches were dropped:
    /// deferring is allowed again.
    pub fn trust_deferred(&self) {
        self.deferred
            .refused
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Applies every deferred batch, oldest first. When one cannot be applied, it and every
    /// batch queued after it are dropped (they were built on it), the epoch moves and deferring
    /// is refused until [`Store::trust_deferred`].
    fn apply_deferred(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        let d = &self.deferred;
        if d.pending.load(Ordering::SeqCst) == 0 {
            return Ok(());
        }
        let _applying = d.applying.lock();
        loop {
            let Some((batch, outcomes)) = d.queue.lock().pop_front() else {
                return Ok(());
            };
            #[cfg(test)]
            let injected = d.fail_next.swap(false, Ordering::SeqCst);
            #[cfg(not(test))]
            let injected = false;
            let epoch = d.epoch.load(Ordering::SeqCst);
            let applied = match self.raw() {
                Ok(_) if injected => Err(StoreError::Sled(sled::Error::Io(std::io::Error::other(
                    "injected failure",
                )))),
                Ok(h) if d.epoch.load(Ordering::SeqCst) == epoch => {
                    h.tree.apply_batch(batch).map_err(StoreError::from)
                }
                Ok(_) => {
                    // Reopened meanwhile: the queue is dropped, and so is this batch.
                    d.pending.fetch_sub(1, Ordering::SeqCst);
                    return Err(StoreError::Discarded);
                }
                Err(e) => Err(e),
            };
            match applied {
                Ok(()) => {
                    d.pending.fetch_sub(1, Ordering::SeqCst);
                    if !outcomes.is_empty() {
                        if let Some(log) = self.outcome_log.lock().as_mut() {
                            log.extend(outcomes);
                        }
                    }
                }
                Err(e) => {
                    let later = self.drop_deferred(1);
                    tracing::error!(
                        "a deferred batch could not be applied ({e}): it and {later} later one(s) dropped"
                    );
                    return Err(e);
                }
            }
        }
    }

    /// Drops every queued deferred batch (and counts `in_progress` taken ones as done with),
    /// moves the epoch and refuses deferring until [`Store::trust_deferred`]. Returns how many
    /// queued batches were dropped.
    fn drop_deferred(&self, in_progress: usize) -> usize {
        use std::sync::atomic::Ordering;
        let d = &self.deferred;
        let mut q = d.queue.lock();
        let n = q.len();
        if n + in_progress == 0 {
            return 0;
        }
        q.clear();
        d.pending.fetch_sub(n + in_progress, Ordering::SeqCst);
        d.refused.store(true, Ordering::SeqCst);
        d.epoch.fetch_add(1, Ordering::SeqCst);
        n
    }

    /// Closes the database and opens it again from disk (what was flushed is all there is: a
    /// failed commit was never acknowledged). Fails while the disk still refuses writes or
    /// while another thread still holds a handle of the old database (try again later).
    pub fn reopen(&self) -> Result<()> {
        // Batches deferred for the old database were built on what it held in memory, not on
        // what reached its disk: they do not go to the new one.
        let dropped = self.drop_deferred(0);
        if dropped > 0 {
            tracing::warn!("{dropped} deferred batch(es) dropped: the store is reopened");
        }
        let mut g = self.inner.write();
        if let Some(old) = g.take() {
            drop(old);
        }
        let mut last = StoreError::Reopening;
        for _ in 0..10 {
            match Self::open_db(&self.dir, self.cache_bytes) {
                Ok(open) => {
                    let probe = open
                        .tree
                        .insert(b"meta/probe", &b"1"[..])
                        .and_then(|_| open.db.flush().map(|_| ()));
                    match probe {
                        Ok(()) => {
                            *g = Some(open);
                            return Ok(());
                        }
                        Err(e) => {
                            // Still failing: close it again and report.
                            drop(open);
                            last = e.into();
                            break;
                        }
                    }
                }
                Err(e) => {
                    // The old database's lock goes when its last handle does.
                    last = e;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        }
        Err(last)
    }

    /// The I/O error sled keeps returning once it has had one (cleared only by reopening).
    pub fn is_io_error(e: &StoreError) -> bool {
        matches!(
            e,
            StoreError::Sled(sled::Error::Io(_)) | StoreError::Reopening
        )
    }

    /// [`Store::open`], waiting up to `wait` while sled's lock on the files is held: a store
    /// closed a moment ago (sled's background writes keep its files a little past the close)
    /// opens within it; a store another process keeps open does not, and the lock error is
    /// returned.
    pub fn open_waiting(dir: &Path, cache_bytes: u64, wait: std::time::Duration) -> Result<Store> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            match Self::open(dir, cache_bytes) {
                Err(e) if Self::is_locked_error(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                r => return r,
            }
        }
    }

    /// The database's files are locked by another process (sled takes an exclusive `flock` on
    /// its `db` file for as long as the database is open).
    pub fn is_locked_error(e: &StoreError) -> bool {
        match e {
            StoreError::Sled(sled::Error::Io(io)) => {
                io.to_string().contains("could not acquire lock")
            }
            _ => false,
        }
    }

    /// Starts collecting one atomic change.
    pub fn tx(&self) -> Tx {
        Tx {
            batch: sled::Batch::default(),
            ops: 0,
            encode_error: None,
            db: self.raw().ok().map(|o| o.db),
            outcomes: Vec::new(),
            captured: None,
            pushed: None,
        }
    }

    /// Applies the transaction atomically and flushes it to disk.
    pub fn commit(&self, tx: Tx) -> Result<()> {
        self.apply(tx)?;
        self.flush()
    }

    /// Applies the transaction atomically (after every deferred batch), without waiting for the
    /// disk: readers see it at once; it is durable after the next [`Store::flush`] (or sled's
    /// own, within a second). Whoever acknowledges what it holds flushes first.
    pub fn apply(&self, mut tx: Tx) -> Result<()> {
        if !has_work(&mut tx)? {
            return Ok(());
        }
        let h = self.h()?;
        h.tree.apply_batch(tx.batch)?;
        if !tx.outcomes.is_empty() {
            if let Some(log) = self.outcome_log.lock().as_mut() {
                log.extend(tx.outcomes);
            }
        }
        Ok(())
    }

    /// Makes everything applied or deferred so far durable (the deferred batches applied, then
    /// one fsync for every transaction since the last one).
    pub fn flush(&self) -> Result<()> {
        self.h()?.db.flush()?;
        Ok(())
    }

    /// From now on, commits note the outcomes they write for [`Store::take_outcomes`].
    pub fn track_outcomes(&self) {
        self.outcome_log.lock().get_or_insert_with(Vec::new);
    }

    /// The outcomes committed since the last call (empty unless tracking is on).
    pub fn take_outcomes(&self) -> Vec<OutcomeNote> {
        self.outcome_log
            .lock()
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Moves whenever a record is quarantined (a ticket with an outcome may have gone).
    pub fn outcome_epoch(&self) -> u64 {
        self.outcome_epoch
            .load(std::sync::atomic::Ordering::Acquire)
    }

    fn bump_outcome_epoch(&self) {
        self.outcome_epoch
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Whether the store can take a write right now (for `/readyz`).
    pub fn probe(&self) -> Result<()> {
        let h = self.h()?;
        h.tree.insert(b"meta/probe", &b"1"[..])?;
        h.db.flush()?;
        Ok(())
    }

    pub fn load_state(&self, device: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.h()?.tree.get(key2(b"s/", device))?.map(|v| v.to_vec()))
    }

    /// Sets a device state that could not be decoded aside (see [`Store::quarantine`]).
    pub fn quarantine_state(&self, device: &str, bytes: &[u8], detail: &str) {
        self.quarantine(&key2(b"s/", device), bytes, detail);
    }

    pub fn load_reorder(&self, device: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.h()?.tree.get(key2(b"r/", device))?.map(|v| v.to_vec()))
    }

    /// Every stored device state: (device, bytes).
    pub fn states(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for kv in self.h()?.tree.scan_prefix(b"s/") {
            let (k, v) = kv?;
            out.push((String::from_utf8_lossy(&k[2..]).into_owned(), v.to_vec()));
        }
        Ok(out)
    }

    /// Devices with a stored reorder buffer.
    pub fn reorder_devices(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for kv in self.h()?.tree.scan_prefix(b"r/") {
            let (k, _) = kv?;
            out.push(String::from_utf8_lossy(&k[2..]).into_owned());
        }
        Ok(out)
    }

    /// Every step log record, in log order: (sequence number, bytes). A key that is not a
    /// sequence number is set aside.
    pub fn log(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        for kv in self.h()?.tree.scan_prefix(b"w/") {
            let (k, v) = kv?;
            match k.get(2..).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                Some(b) => out.push((u64::from_be_bytes(b), v.to_vec())),
                None => self.quarantine(&k, &v, "step log key without a sequence number"),
            }
        }
        Ok(out)
    }

    /// Sets a step log record that could not be decoded aside.
    pub fn quarantine_log(&self, seq: u64, bytes: &[u8], detail: &str) {
        self.quarantine(&log_key(seq), bytes, detail);
    }

    /// Sets a reorder buffer that could not be decoded aside.
    pub fn quarantine_reorder(&self, device: &str, bytes: &[u8], detail: &str) {
        self.quarantine(&key2(b"r/", device), bytes, detail);
    }

    pub fn state_count(&self) -> usize {
        self.h().map_or(0, |h| h.tree.scan_prefix(b"s/").count())
    }

    /// A ticket by id; `None` when absent or when it could not be decoded (then quarantined).
    pub fn ticket(&self, id: &str) -> Result<Option<Ticket>> {
        let k = key2(b"t/", id);
        match self.h()?.tree.get(&k)? {
            Some(v) => Ok(self.decode_or_quarantine(&k, &v)),
            None => Ok(None),
        }
    }

    /// A ticket's stored JSON as it is, undecoded (dispatch sends it as it is); `None` when
    /// absent.
    pub fn ticket_json(&self, id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.h()?.tree.get(key2(b"t/", id))?.map(|v| v.to_vec()))
    }

    /// The counter of quarantined records, for the app to register.
    pub fn quarantined_counter(&self) -> prometheus::IntCounter {
        self.quarantined.clone()
    }

    /// Decodes a record; one that cannot be decoded is moved aside (see [`Store::quarantine`])
    /// and read as absent.
    fn decode_or_quarantine<T: DeserializeOwned>(&self, k: &[u8], v: &[u8]) -> Option<T> {
        match decode(k, v) {
            Ok(t) => Some(t),
            Err(e) => {
                let detail = match e {
                    StoreError::Corrupt { detail, .. } => detail,
                    other => other.to_string(),
                };
                self.quarantine(k, v, &detail);
                None
            }
        }
    }

    /// Moves the record at `key` (holding `value`) to `q/{key}` in one flushed batch, counts
    /// and logs it. Best effort: if the move cannot be written the record stays where it was and
    /// is read as absent again next time.
    pub fn quarantine(&self, key: &[u8], value: &[u8], detail: &str) {
        let rec = Quarantined {
            key: String::from_utf8_lossy(key).into_owned(),
            detail: detail.to_string(),
            at_ms: self.clock.now_ms(),
            value: String::from_utf8_lossy(value).into_owned(),
        };
        let mut qk = b"q/".to_vec();
        qk.extend_from_slice(key);
        let mut batch = sled::Batch::default();
        batch.insert(qk, serde_json::to_vec(&rec).unwrap_or_default());
        batch.remove(key);
        let moved = self
            .h()
            .and_then(|h| {
                h.tree.apply_batch(batch)?;
                h.db.flush()?;
                Ok(())
            })
            .is_ok();
        self.bump_outcome_epoch();
        events::SetAside {
            key: rec.key,
            detail: rec.detail,
            moved,
        }
        .emit(&self.quarantined);
    }

    /// Records set aside by [`Store::quarantine`], in key order.
    pub fn quarantine_list(&self) -> Result<Vec<Quarantined>> {
        let mut out = Vec::new();
        for kv in self.h()?.tree.scan_prefix(b"q/") {
            let (_, v) = kv?;
            if let Ok(q) = serde_json::from_slice(&v) {
                out.push(q);
            }
        }
        Ok(out)
    }

    /// Live tickets of a device, found through the live index.
    pub fn live_tickets(&self, device: &str) -> Result<Vec<Ticket>> {
        let mut prefix = key2(b"l/", device);
        prefix.push(SEP);
        let mut out = Vec::new();
        for kv in self.h()?.tree.scan_prefix(&prefix) {
            let (_, id) = kv?;
            if let Some(t) = self.ticket(&String::from_utf8_lossy(&id))? {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// All tickets matching the filter, most recently opened first.
    pub fn tickets(&self, f: &TicketFilter) -> Result<Vec<Ticket>> {
        let mut out = Vec::new();
        for kv in self.h()?.tree.scan_prefix(b"t/") {
            let (k, v) = kv?;
            let Some(t): Option<Ticket> = self.decode_or_quarantine(&k, &v) else {
                continue;
            };
            if f.status.is_some_and(|s| s != t.status)
                || f.device_id.as_ref().is_some_and(|d| *d != t.device_id)
                || f.customer_id
                    .as_ref()
                    .is_some_and(|c| Some(c) != t.customer_id.as_ref())
            {
                continue;
            }
            if let Some(since) = f.since_ms {
                let upd = crate::domain::Timestamp::parse(&t.updated_at).unwrap_or(t.opened_ms);
                if upd.as_millis() < since {
                    continue;
                }
            }
            out.push(t);
        }
        out.sort_by(|a, b| b.opened_ms.cmp(&a.opened_ms).then(a.id.cmp(&b.id)));
        if let Some(l) = f.limit {
            out.truncate(l);
        }
        Ok(out)
    }

    /// Outbox rows of a queue, oldest first: (key, row). Durable: a row is acted on (a
    /// message sent, a ticket published) only once the commit that wrote it is on disk, even
    /// when ingest applied it without waiting ([`Store::apply`]).
    pub fn outbox<T: DeserializeOwned>(&self, queue: &str) -> Result<Vec<(Vec<u8>, T)>> {
        self.outbox_read(queue, |_| None)
    }

    /// [`Store::outbox`], each row read first by `read` (a queue's faster reader of the layout
    /// it writes itself), and decoded as JSON (or quarantined) when that answers `None`.
    pub fn outbox_read<T: DeserializeOwned>(
        &self,
        queue: &str,
        read: impl Fn(&[u8]) -> Option<T>,
    ) -> Result<Vec<(Vec<u8>, T)>> {
        let mut out = Vec::new();
        for kv in self.h()?.tree.scan_prefix(outbox_prefix(queue)) {
            let (k, v) = kv?;
            if let Some(row) = read(&v).or_else(|| self.decode_or_quarantine(&k, &v)) {
                out.push((k.to_vec(), row));
            }
        }
        if !out.is_empty() {
            self.flush()?;
        }
        Ok(out)
    }

    pub fn outbox_len(&self, queue: &str) -> usize {
        self.h()
            .map_or(0, |h| h.tree.scan_prefix(outbox_prefix(queue)).count())
    }

    /// Rewrites one outbox row (attempt bookkeeping) and flushes.
    pub fn outbox_put<T: Serialize>(&self, key: &[u8], row: &T) -> Result<()> {
        let json = serde_json::to_vec(row).map_err(|source| StoreError::Encode {
            key: String::from_utf8_lossy(key).into_owned(),
            source,
        })?;
        self.h()?.tree.insert(key, json)?;
        self.h()?.db.flush()?;
        Ok(())
    }

    /// A customer's timeline in event-time order.
    pub fn timeline<T: DeserializeOwned>(&self, customer: &str) -> Result<Vec<T>> {
        let mut prefix = key2(b"c/", customer);
        prefix.push(b'/');
        let mut out = Vec::new();
        for kv in self.h()?.tree.scan_prefix(&prefix) {
            let (k, v) = kv?;
            out.extend(self.decode_or_quarantine(&k, &v));
        }
        Ok(out)
    }

    pub fn get_kv<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        let k = key2(b"k/", name);
        match self.h()?.tree.get(&k)? {
            Some(v) => Ok(self.decode_or_quarantine(&k, &v)),
            None => Ok(None),
        }
    }

    /// Whether a row is stored under the full key `key` (an outbox row still queued).
    pub fn contains_raw(&self, key: &[u8]) -> Result<bool> {
        Ok(self.h()?.tree.contains_key(key)?)
    }

    /// A `k/` record's stored JSON, undecoded (what [`Tx::put_kv_json`] writes back).
    pub fn get_kv_json(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.h()?.tree.get(key2(b"k/", name))?.map(|v| v.to_vec()))
    }

    /// Every `k/` record whose name starts with `prefix`, in key order.
    pub fn scan_kv<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>> {
        self.scan_json(&key2(b"k/", prefix))
    }

    pub fn fleet_devices<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        self.scan_json(b"fd/")
    }

    pub fn fleet_customers<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        self.scan_json(b"fc/")
    }

    fn scan_json<T: DeserializeOwned>(&self, prefix: &[u8]) -> Result<Vec<T>> {
        let mut out = Vec::new();
        for kv in self.h()?.tree.scan_prefix(prefix) {
            let (k, v) = kv?;
            out.extend(self.decode_or_quarantine(&k, &v));
        }
        Ok(out)
    }

    pub fn size_on_disk(&self) -> u64 {
        self.raw()
            .ok()
            .and_then(|h| h.db.size_on_disk().ok())
            .unwrap_or(0)
    }
}

/// What [`Store::apply`] and [`Store::defer`] check first: a record that could not be encoded
/// fails the transaction, an empty one has nothing to do (`Ok(false)`), and one built while the
/// database was closed holds placeholder sequence numbers.
fn has_work(tx: &mut Tx) -> Result<bool> {
    if let Some(e) = tx.encode_error.take() {
        return Err(e);
    }
    if tx.ops == 0 {
        return Ok(false);
    }
    if tx.db.is_none() {
        return Err(StoreError::Reopening);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Status;

    #[test]
    fn a_value_that_cannot_be_encoded_fails_the_whole_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        // JSON object keys must be strings: this map cannot be serialised.
        let unencodable: std::collections::HashMap<(u8, u8), u8> = [((1, 2), 3)].into();
        let mut tx = store.tx();
        tx.put_state("d1", vec![1]);
        tx.put_kv("bad", &unencodable);
        let e = store.commit(tx).unwrap_err();
        assert!(matches!(e, StoreError::Encode { .. }), "{e}");
        assert_eq!(
            store.load_state("d1").unwrap(),
            None,
            "nothing of it was written"
        );
        assert_eq!(store.get_kv::<u8>("bad").unwrap(), None);
        let e = store.outbox_put(b"o/x/1", &unencodable).unwrap_err();
        assert!(matches!(e, StoreError::Encode { .. }), "{e}");
    }

    #[test]
    fn a_store_written_with_sleds_default_segment_size_opens_with_it_and_a_new_one_gets_4_mib() {
        // As an earlier build wrote it: sled's defaults, a ticket and the schema mark.
        let old = tempfile::tempdir().unwrap();
        {
            let db = sled::Config::new().path(old.path()).open().unwrap();
            let tree = db.open_tree("forewarn").unwrap();
            tree.insert(b"meta/schema", SCHEMA_VERSION.to_string().as_bytes())
                .unwrap();
            let t = crate::domain::Ticket::example(
                "T-ปั๊ม-۱",
                "d1",
                crate::domain::Timestamp::from_millis(0),
            );
            tree.insert(key2(b"t/", &t.id), serde_json::to_vec(&t).unwrap())
                .unwrap();
            db.flush().unwrap();
        }
        assert_eq!(segment_size(old.path()), 512 * 1024);
        let store = Store::open(old.path(), 1 << 20).expect("an earlier store opens");
        assert_eq!(
            store.ticket("T-ปั๊ม-۱").unwrap().unwrap().device_id.as_str(),
            "d1"
        );
        drop(store);
        let new = tempfile::tempdir().unwrap();
        assert_eq!(segment_size(new.path()), SEGMENT_SIZE);
        let store = Store::open(new.path(), 1 << 20).unwrap();
        // Step log records of a large group in one leaf: written and read back, and the
        // store reopens with the size it was created with.
        let record = vec![7u8; 30_000];
        for _ in 0..20 {
            let mut tx = store.tx();
            tx.put_log(record.clone());
            store.commit(tx).unwrap();
        }
        drop(store);
        assert_eq!(segment_size(new.path()), SEGMENT_SIZE);
        let store = Store::open(new.path(), 1 << 20).unwrap();
        let log = store.log().unwrap();
        assert_eq!(log.len(), 20);
        assert!(log.iter().all(|(_, r)| *r == record));
    }

    #[test]
    fn a_quarantined_record_is_stamped_by_the_injected_clock() {
        let dir = tempfile::tempdir().unwrap();
        let clock = crate::clock::ManualClock::new(1_767_225_600_000);
        let store = Store::open(dir.path(), 1 << 20)
            .unwrap()
            .with_clock(clock.clone());
        store.quarantine(b"t/broken", b"{not json", "unreadable");
        clock.advance(std::time::Duration::from_secs(90));
        store.clone().quarantine(b"t/later", b"[", "unreadable");
        let at: Vec<(String, i64)> = store
            .quarantine_list()
            .unwrap()
            .into_iter()
            .map(|q| (q.key, q.at_ms))
            .collect();
        assert_eq!(
            at,
            vec![
                ("t/broken".to_string(), 1_767_225_600_000),
                ("t/later".to_string(), 1_767_225_690_000),
            ]
        );
    }

    #[test]
    fn a_second_open_of_a_database_in_use_is_refused_as_locked_until_the_first_closes() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path(), 1 << 20).unwrap();
        let e = Store::open(dir.path(), 1 << 20).err().expect("refused");
        assert!(Store::is_locked_error(&e), "{e}");
        drop(first);
        // sled's background flusher lets go of the files a moment after the last handle.
        let mut second = Store::open(dir.path(), 1 << 20);
        for _ in 0..50 {
            if second.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            second = Store::open(dir.path(), 1 << 20);
        }
        assert!(second
            .expect("free once the first is closed")
            .probe()
            .is_ok());
    }

    #[test]
    fn reopen_keeps_what_was_committed_and_every_clone_uses_the_new_database() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let other = store.clone();
        let mut tx = store.tx();
        tx.put_state("d1", vec![1, 2, 3]);
        store.commit(tx).unwrap();
        store.reopen().unwrap();
        assert_eq!(other.load_state("d1").unwrap(), Some(vec![1, 2, 3]));
        let mut tx = other.tx();
        tx.put_state("d2", vec![4]);
        other.commit(tx).unwrap();
        assert_eq!(store.load_state("d2").unwrap(), Some(vec![4]));
        // A transaction still holding the old database keeps its lock: reopening waits, fails
        // cleanly, and works once it is gone.
        let held = store.tx();
        assert!(store.reopen().is_err());
        assert!(
            store.probe().is_err(),
            "closed until it can be opened again"
        );
        drop(held);
        store.reopen().unwrap();
        store.probe().unwrap();
        assert_eq!(store.load_state("d2").unwrap(), Some(vec![4]));
    }

    fn ticket(id: &str, status: Status) -> Ticket {
        crate::tickets::bare(id, "d1", status)
    }

    #[test]
    fn an_unmoved_update_keeps_the_live_index_entry_its_opening_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        let mut t = crate::tickets::bare("T-ข้อ-۱", "d1", Status::Open);
        let mut tx = s.tx();
        tx.put_ticket(&t);
        s.commit(tx).unwrap();
        for p in [0.5, 0.75] {
            t.probability = p;
            let mut tx = s.tx();
            tx.put_unmoved_ticket_json(&t, serde_json::to_vec(&t).unwrap());
            s.commit(tx).unwrap();
            let live = s.live_tickets("d1").unwrap();
            assert_eq!(live.len(), 1);
            assert_eq!(
                live[0].probability, p,
                "the live index reads the newest record"
            );
        }
        t.status = Status::Resolved;
        let mut tx = s.tx();
        tx.put_ticket(&t);
        s.commit(tx).unwrap();
        assert!(s.live_tickets("d1").unwrap().is_empty());
        assert_eq!(
            s.ticket("T-ข้อ-۱").unwrap().map(|t| t.probability),
            Some(0.75)
        );
    }

    #[test]
    fn a_commit_survives_reopening_and_keeps_the_live_index() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), 1 << 20).unwrap();
            let mut tx = s.tx();
            tx.put_ticket(&ticket("T-1", Status::Open));
            tx.put_state("d1", vec![1, 2, 3]);
            tx.push_outbox("dispatch", &serde_json::json!({"n": 1}));
            tx.push_timeline("c1", 5, &serde_json::json!({"e": "opened"}));
            s.commit(tx).unwrap();
        }
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.live_tickets("d1").unwrap().len(), 1);
        assert_eq!(s.load_state("d1").unwrap(), Some(vec![1, 2, 3]));
        assert_eq!(s.outbox::<serde_json::Value>("dispatch").unwrap().len(), 1);
        assert_eq!(s.timeline::<serde_json::Value>("c1").unwrap().len(), 1);
        let mut tx = s.tx();
        tx.put_ticket(&ticket("T-1", Status::Resolved));
        s.commit(tx).unwrap();
        assert!(s.live_tickets("d1").unwrap().is_empty());
        let f = TicketFilter {
            status: Some(Status::Resolved),
            ..Default::default()
        };
        assert_eq!(s.tickets(&f).unwrap().len(), 1);
    }

    #[test]
    fn a_ticket_with_a_missing_evidence_value_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        let mut t = ticket("T-2", Status::Open);
        t.evidence = vec![crate::domain::Evidence {
            feature: "attr.age".into(),
            value: None,
            weight: 0.4,
        }];
        let mut tx = s.tx();
        tx.put_ticket(&t);
        s.commit(tx).unwrap();
        assert_eq!(s.ticket("T-2").unwrap(), Some(t));
        assert!(s.quarantine_list().unwrap().is_empty());
    }

    #[test]
    fn the_step_log_reads_back_in_commit_order_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut seqs = Vec::new();
        {
            let s = Store::open(dir.path(), 1 << 20).unwrap();
            for i in 0..3u8 {
                let mut tx = s.tx();
                seqs.push(tx.put_log(vec![i]));
                s.commit(tx).unwrap();
            }
        }
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        let mut tx = s.tx();
        let later = tx.put_log(vec![9]);
        tx.remove_log(seqs[0]);
        s.commit(tx).unwrap();
        assert!(
            later > seqs[2],
            "sequence numbers keep rising after a restart"
        );
        let log: Vec<Vec<u8>> = s.log().unwrap().into_iter().map(|(_, v)| v).collect();
        assert_eq!(log, vec![vec![1], vec![2], vec![9]]);
        s.h().unwrap().tree.insert(b"w/x", &b"?"[..]).unwrap();
        assert_eq!(s.log().unwrap().len(), 3);
        assert_eq!(
            s.quarantine_list().unwrap().len(),
            1,
            "a malformed key is set aside"
        );
    }

    #[test]
    fn a_data_dir_of_the_previous_layout_opens_and_a_newer_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let tree = db.open_tree("forewarn").unwrap();
            tree.insert(b"meta/schema", &b"1"[..]).unwrap();
            tree.insert(b"s/d1", &[1u8, 2, 3][..]).unwrap();
            db.flush().unwrap();
        }
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.load_state("d1").unwrap(), Some(vec![1, 2, 3]));
        assert!(
            s.log().unwrap().is_empty(),
            "no step log: the state is the snapshot"
        );
        assert_eq!(
            s.h()
                .unwrap()
                .tree
                .get(b"meta/schema")
                .unwrap()
                .unwrap()
                .as_ref(),
            SCHEMA_VERSION.to_string().as_bytes(),
            "upgraded in place"
        );
        drop(s);

        let newer = tempfile::tempdir().unwrap();
        {
            let db = sled::open(newer.path()).unwrap();
            let tree = db.open_tree("forewarn").unwrap();
            tree.insert(b"meta/schema", &b"3"[..]).unwrap();
            db.flush().unwrap();
        }
        let e = Store::open(newer.path(), 1 << 20).err().unwrap();
        assert!(
            e.to_string()
                .contains("schema version 3, this build uses 2"),
            "{e}"
        );
    }

    #[test]
    fn a_deferred_batch_is_read_back_at_once_and_never_overwrites_a_later_write() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        let mut tx = s.tx();
        tx.put_ticket(&ticket("T-1", Status::Open));
        tx.put_state("d1", vec![1]);
        s.defer(tx).unwrap();
        // Read before anything flushed it: the writer's next group sees its last one.
        assert_eq!(s.load_state("d1").unwrap(), Some(vec![1]));
        let mut tx = s.tx();
        tx.put_state("d1", vec![2]);
        s.defer(tx).unwrap();
        // A synchronous change made after the deferral (an API transition) comes after it,
        // although nothing has applied the queued batches yet.
        let mut tx = s.tx();
        tx.put_ticket(&ticket("T-1", Status::Acknowledged));
        s.commit(tx).unwrap();
        s.flush().unwrap();
        drop(s);
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            s.ticket("T-1").unwrap().map(|t| t.status),
            Some(Status::Acknowledged),
            "the older deferred ticket did not overwrite the newer one"
        );
        assert_eq!(
            s.load_state("d1").unwrap(),
            Some(vec![2]),
            "in deferral order"
        );
    }

    #[test]
    fn deferred_batches_apply_in_order_while_other_threads_flush_and_write() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 8 << 20).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // The flusher, and an outbox worker writing keys of its own.
        let flusher = {
            let (s, stop) = (s.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    s.flush().unwrap();
                }
            })
        };
        let worker = {
            let (s, stop) = (s.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let mut tx = s.tx();
                    tx.put_kv("worker", &i);
                    s.apply(tx).unwrap();
                    i += 1;
                }
            })
        };
        for i in 0..2000u64 {
            let mut tx = s.tx();
            tx.put_kv("n", &i);
            tx.put_log(i.to_be_bytes().to_vec());
            s.defer(tx).unwrap();
            assert_eq!(
                s.get_kv::<u64>("n").unwrap(),
                Some(i),
                "the deferring thread reads its last batch"
            );
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        flusher.join().unwrap();
        worker.join().unwrap();
        s.flush().unwrap();
        let logged: Vec<u64> = s
            .log()
            .unwrap()
            .into_iter()
            .map(|(_, v)| u64::from_be_bytes(v.try_into().unwrap()))
            .collect();
        assert_eq!(logged, (0..2000).collect::<Vec<_>>(), "applied in order");
        assert_eq!(s.get_kv::<u64>("n").unwrap(), Some(1999));
    }

    #[test]
    fn a_batch_that_cannot_be_applied_drops_the_later_ones_and_refuses_more_until_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        let mut tx = s.tx();
        tx.put_state("d0", vec![0]);
        s.defer(tx).unwrap();
        s.flush().unwrap();
        let epoch = s.epoch();
        for d in ["d1", "d2"] {
            let mut tx = s.tx();
            tx.put_state(d, vec![1]);
            s.defer(tx).unwrap();
        }
        s.deferred
            .fail_next
            .store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(s.flush().is_err(), "the failure reaches whoever applied");
        assert_ne!(
            s.epoch(),
            epoch,
            "the epoch moved: those groups are not durable"
        );
        assert_eq!(s.load_state("d1").unwrap(), None, "dropped");
        assert_eq!(
            s.load_state("d2").unwrap(),
            None,
            "built on the dropped one: dropped too"
        );
        assert_eq!(s.load_state("d0").unwrap(), Some(vec![0]));
        let mut tx = s.tx();
        tx.put_state("d3", vec![3]);
        assert!(matches!(s.defer(tx), Err(StoreError::Discarded)));
        // Synchronous writes go on meanwhile.
        let mut tx = s.tx();
        tx.put_state("d4", vec![4]);
        s.commit(tx).unwrap();
        s.trust_deferred();
        let mut tx = s.tx();
        tx.put_state("d3", vec![3]);
        s.defer(tx).unwrap();
        s.flush().unwrap();
        assert_eq!(s.load_state("d3").unwrap(), Some(vec![3]));
        assert_eq!(s.load_state("d4").unwrap(), Some(vec![4]));
    }

    #[test]
    fn timeline_is_in_event_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        let mut tx = s.tx();
        tx.push_timeline("c1", 300, &3);
        tx.push_timeline("c1", -100, &1);
        tx.push_timeline("c1", 200, &2);
        s.commit(tx).unwrap();
        assert_eq!(s.timeline::<i32>("c1").unwrap(), vec![1, 2, 3]);
    }
}
