//! Device state: the slots in memory, the step log and snapshots, recovery after a crash,
//! checkpoints, eviction, forgetting unseen devices and the reorder idle release.

use super::commit::{Shared, Tally};
use super::{App, CoreError};
use crate::domain::{DeviceId, Reading, Ticket, Timestamp};
use crate::engine::{Change, DeviceCtx, Engine, Scoring};
use crate::features::{DeviceState, Observed};
use crate::fleet::Device;
use crate::ingest::reorder::{self, Item, Offer, Pending};
use crate::store::{Store, Tx};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

/// A device's in-memory state.
pub(super) struct Slot {
    pub(super) state: DeviceState,
    /// The device's live tickets (open, acknowledged, scheduled): the ticket policy's input.
    pub(super) live: Vec<Ticket>,
    /// Readings and events held until the device's watermark passes them (event-time order).
    pub(super) reorder: reorder::Buffer,
    /// Whether the store holds a reorder buffer for the device (so an empty one is removed).
    pub(super) reorder_stored: bool,
    /// Wall time of the device's last message, for the reorder idle timer.
    pub(super) last_arrival: Instant,
    /// Last touch, for least-recently-seen eviction.
    pub(super) tick: u64,
    /// Changed since the last commit.
    pub(super) dirty: bool,
    /// Whether the store holds a snapshot of the device (its first commit writes one).
    pub(super) snapshot_stored: bool,
    /// The step log holds steps of this device after its snapshot (written at the next
    /// checkpoint, or before the device leaves memory).
    pub(super) logged: bool,
    /// This group's steps (encoded [`Step`]s), logged at its commit unless a snapshot is due.
    pub(super) steps: Vec<Vec<u8>>,
    /// Write the whole state at the next commit (its snapshot was set aside).
    pub(super) force_snapshot: bool,
}

/// One step of a device's state machine as the step log keeps it (postcard): replayed over the
/// snapshot through the same code as the live path, the steps give the state the daemon had.
/// Steps that changed nothing (a duplicate or late arrival) are not logged.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Step<P> {
    /// Held by the reorder buffer, with the tolerance then in force (what the watermark passed
    /// was released and applied).
    Offer { tolerance_ms: i64, item: P },
    /// Applied at once (no reorder tolerance).
    Apply(P),
    /// The idle timer released everything the buffer held.
    Flush,
}

pub(super) fn encode_step(step: &Step<&Pending>) -> Vec<u8> {
    // Strings, numbers and options only: postcard cannot fail on them.
    postcard::to_allocvec(step).unwrap_or_default()
}

/// What one reading does to its device's state and live tickets: a `seq` restart check, then
/// the engine. The live path ([`App::apply`]) and the log replay both step through here, so
/// a replayed state equals the state the daemon had. Returns what the state made of the reading
/// and the restart noticed, `(last seq, new seq)`.
pub(super) fn apply_reading(
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

/// What the writer's `core` lock guards: the engine, the devices' slots, the step log's place.
pub(super) struct Core {
    pub(super) engine: Engine,
    pub(super) slots: HashMap<String, Slot>,
    pub(super) tick: u64,
    /// Devices seen on the stream that the registry does not know (`forewarn_unregistered_devices`);
    /// a device leaves the set when it is registered or forgotten.
    pub(super) unregistered: std::collections::HashSet<String>,
    /// Devices whose reorder buffer is on disk but not in memory (held at start, or evicted
    /// while holding), with their last arrival: the idle release loads and flushes them.
    pub(super) held_on_disk: HashMap<String, Instant>,
    /// `store.snapshot_every`: a checkpoint (every device's whole state written, the step log
    /// emptied) after this many logged steps.
    pub(super) snapshot_every: u32,
    /// Sequence numbers of the step log records on disk, oldest first.
    pub(super) log: Vec<u64>,
    /// Steps logged since the last checkpoint.
    pub(super) log_steps: u64,
    /// Set at start and after a failed commit: the slots in memory cannot be trusted, what is
    /// on disk (snapshots and the step log) is rebuilt before anything else.
    pub(super) needs_recovery: bool,
}

impl App {
    /// After a failed commit the slots in memory are ahead of the store: drop them all; the
    /// next user of the core rebuilds them from the snapshots and the step log.
    pub(super) fn distrust(&self, core: &mut Core) {
        core.slots.clear();
        self.views.clear();
        core.needs_recovery = true;
        // Memory is rebuilt from the store (which applies what is still deferred first) before
        // the next group is applied: deferring may go on.
        self.store.trust_deferred();
        self.metrics.devices_in_memory.set(0);
    }

    pub(super) fn recover_if_needed(&self, core: &mut Core) -> Result<(), CoreError> {
        if core.needs_recovery {
            self.recover(core)?;
        }
        Ok(())
    }

    /// Rebuilds the devices the step log has steps of (their snapshots with the steps replayed,
    /// through the same code as the live path) and checkpoints them. Returns how many devices
    /// the log had steps of.
    pub(super) fn recover(&self, core: &mut Core) -> Result<usize, CoreError> {
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
            let (mut slot, _) = core.load(&self.store, &device, Timestamp::MIN)?;
            core.replay_steps(&self.registry.read().devices, &device, &mut slot, list);
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
        self.checkpoint_locked(core, true)?;
        self.metrics.devices_in_memory.set(core.slots.len() as i64);
        Ok(n)
    }

    /// Writes the whole state of the listed devices that have steps in the log (in commits of
    /// at most 512), each followed by its mark in the log. A failed commit leaves the core to
    /// be rebuilt from the store.
    ///
    /// With `durable` false the commits are only deferred (applied in order by the flusher):
    /// the caller is the commit path of a group whose flush (the flusher's) comes after them
    /// and covers them. sled makes a prefix
    /// of the applied batches durable, so a crash before that flush loses the snapshots and the
    /// group together and the step log still holds what they replaced; an fsync per chunk on
    /// the processing thread (21 of them per checkpoint of 10,000 devices) is saved.
    pub(super) fn snapshot_devices(
        &self,
        core: &mut Core,
        devices: &[String],
        durable: bool,
    ) -> Result<(), CoreError> {
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
            let written = if durable {
                self.store.commit(tx)
            } else {
                self.store.defer(tx)
            };
            if let Err(e) = written {
                self.distrust(core);
                return Err(e.into());
            }
            core.log.push(seq);
        }
        Ok(())
    }

    /// Writes the whole state of every device with steps in the log, then empties the log.
    /// `durable` as for [`App::snapshot_devices`].
    pub(super) fn checkpoint_locked(
        &self,
        core: &mut Core,
        durable: bool,
    ) -> Result<(), CoreError> {
        let devices: Vec<String> = core
            .slots
            .iter()
            .filter(|(_, s)| s.logged || s.force_snapshot)
            .map(|(d, _)| d.clone())
            .collect();
        self.snapshot_devices(core, &devices, durable)?;
        for chunk in core.log.chunks(4096) {
            let mut tx = self.store.tx();
            for &seq in chunk {
                tx.remove_log(seq);
            }
            if durable {
                self.store.commit(tx)?;
            } else {
                self.store.defer(tx)?;
            }
        }
        core.log.clear();
        core.log_steps = 0;
        self.metrics.step_log_steps.set(0);
        self.metrics.checkpoints.inc();
        Ok(())
    }

    /// Drops the least recently seen device states beyond `ingest.max_devices_in_memory`
    /// (all are committed by now). A device leaves memory with its whole state written (one
    /// commit for all of them), so that what is on disk is its state; if that commit fails,
    /// memory is rebuilt from the store. Evicts down to 90 % of the bound at once so the sort
    /// is paid rarely.
    /// `durable` as for [`App::snapshot_devices`].
    pub(super) fn evict(&self, core: &mut Core, durable: bool) {
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
        if let Err(e) = self.snapshot_devices(core, &victims, durable) {
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
        let cutoff = Timestamp::from_millis(now_ms).saturating_sub(after.as_millis_i64());
        let mut core = self.core.lock();
        let core = &mut *core;
        self.recover_if_needed(core)?;
        let mut gone = Vec::new();
        for (device, bytes) in self.store.states()? {
            let newest = match core.slots.get(device.as_str()) {
                Some(slot) => Some(
                    slot.state
                        .last_ts
                        .max(slot.reorder.max_seen.unwrap_or(Timestamp::MIN)),
                ),
                None => DeviceState::decode(&bytes).map(|s| s.last_ts),
            };
            // A state that does not decode is the quarantine's business, not this sweep's.
            if newest.is_some_and(|t| t < cutoff) {
                gone.push(device);
            }
        }
        // Sparkplug edge nodes unseen as long go too (their alias tables and `seq`).
        let nodes = self.formats.forget_unseen(cutoff.as_millis());
        if gone.is_empty() && nodes.is_empty() {
            return Ok(0);
        }
        let mut tx = self.store.tx();
        for d in &gone {
            tx.remove_device_state(d);
            tx.remove_kv(&gap_key(d));
        }
        for key in &nodes {
            tx.remove_kv(key);
        }
        // Marks in the step log: a replay must not bring back what the log holds of them.
        let marks: Vec<(&str, Vec<u8>)> = gone.iter().map(|d| (d.as_str(), Vec::new())).collect();
        let log_seq = (!marks.is_empty()).then(|| tx.put_log(log_record(&marks)));
        self.store.commit(tx)?;
        core.log.extend(log_seq);
        self.views.forget(&gone);
        let mut gaps = self.signals.gaps.lock();
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
            "forgot the state of {} device(s) and {} Sparkplug edge node(s) unseen for {after}",
            gone.len(),
            nodes.len()
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
        self.checkpoint_locked(core, true)?;
        Ok(0)
    }

    /// A device's state as applied (in the store's batches; durable once flushed): the one in
    /// memory, else its snapshot (a device leaves memory with its whole state written). `None`
    /// for a device the daemon has no state of.
    pub fn device_state(&self, device: &str) -> Result<Option<DeviceState>, CoreError> {
        let mut core = self.core.lock();
        self.device_state_locked(&mut core, device)
    }

    fn device_state_locked(
        &self,
        core: &mut Core,
        device: &str,
    ) -> Result<Option<DeviceState>, CoreError> {
        self.recover_if_needed(core)?;
        if let Some(s) = core.slots.get(device) {
            return Ok(Some(s.state.clone()));
        }
        let (slot, found) = core.load(&self.store, device, Timestamp::MIN)?;
        Ok(found.then_some(slot.state))
    }

    /// A device's state for the board: published by the writer after each commit once the
    /// device is watched, so read without the core lock; the first look goes through the
    /// writer (see [`views`](super::views)).
    pub fn device_view(&self, device: &str) -> Result<Option<Arc<DeviceState>>, CoreError> {
        if let Some(state) = self.views.get(device) {
            return Ok(state);
        }
        let mut core = self.core.lock();
        let state = self.device_state_locked(&mut core, device)?.map(Arc::new);
        self.views.watch(device, state.clone());
        Ok(state)
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
            // Slots are keyed by ids that passed the rule on the way in; one that does not (a
            // store written by hand) keeps its buffer rather than release readings without an id.
            let Ok(id) = DeviceId::parse(d) else {
                tracing::warn!(device = %clip(d, 200), "reorder buffer of an invalid device id left held");
                continue;
            };
            core.slot(&self.store, d, Timestamp::MIN, &mut dirty)?;
            if let Some(slot) = core.slots.get_mut(d.as_str()) {
                slot.steps.push(encode_step(&Step::Flush));
                slot.reorder.flush(&id, &mut released);
            }
        }
        let n = released.len();
        {
            let registry = self.registry.read();
            let shared = Shared {
                engine: &core.engine,
                devices: &registry.devices,
                unregistered: &core.unregistered,
            };
            for (item, received_ms) in released {
                let device = item.device_id();
                if let Some(slot) = core.slots.get_mut(device) {
                    self.apply(&shared, slot, &item, received_ms, &mut tally, &mut changes);
                }
            }
        }
        self.commit_group(core, &dirty, &changes, &HashSet::new(), tally, true)?;
        Ok(n)
    }
}

impl Core {
    /// Makes sure the device has a slot (loading its stored state and live tickets on first
    /// touch) and marks it dirty.
    pub(super) fn slot(
        &mut self,
        store: &Store,
        device: &str,
        ts: Timestamp,
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
    pub(super) fn load(
        &self,
        store: &Store,
        device: &str,
        ts: Timestamp,
    ) -> Result<(Slot, bool), CoreError> {
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
    pub(super) fn replay_steps(
        &self,
        devices: &HashMap<DeviceId, Device>,
        device: &str,
        slot: &mut Slot,
        steps: Vec<Vec<u8>>,
    ) {
        // The step log is keyed by ids that passed the rule on the way in.
        let Ok(id) = DeviceId::parse(device) else {
            tracing::error!(device = %clip(device, 200), "logged steps of an invalid device id skipped");
            return;
        };
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
                        slot.reorder.release(&id, &mut released);
                    }
                }
                Step::Apply(item) => released.push(item.into_item(&id)),
                Step::Flush => slot.reorder.flush(&id, &mut released),
            }
            for (item, _) in released.drain(..) {
                self.replay(devices, &mut slot.state, &item);
            }
        }
    }

    /// Applies a logged item to a state: what [`App::apply`] did to it, without the effects
    /// already committed (ticket changes, counts, gaps).
    pub(super) fn replay(
        &self,
        devices: &HashMap<DeviceId, Device>,
        state: &mut DeviceState,
        item: &Item,
    ) {
        let mut changes = Vec::new();
        let mut live = Vec::new();
        match item {
            Item::Reading(r) => {
                let dev = devices.get(r.device_id.as_str());
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
    pub(super) fn persist<'a>(
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
    pub(super) fn snapshot(&mut self, tx: &mut Tx, device: &str) {
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
pub(super) fn log_record(records: &[(&str, Vec<u8>)]) -> Vec<u8> {
    // Strings and bytes only: postcard cannot fail on them.
    postcard::to_allocvec(records).unwrap_or_default()
}

/// Where a device's last gap is kept (`k/gap/<device>`).
pub(super) const GAP_PREFIX: &str = "gap/";

pub(super) fn gap_key(device: &str) -> String {
    format!("{GAP_PREFIX}{device}")
}

pub(super) fn clip(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
