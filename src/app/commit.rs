//! The commit path: a group of messages decoded, offered to the devices' reorder buffers,
//! applied through the engine (shared out to threads, each device on one) and committed as one
//! batch — device steps, tickets, dispatch rows and the notifier's rows together.

use super::state::{apply_reading, clip, encode_step, gap_key, log_record, Core, Slot, Step};
use super::status::LossNote;
use super::{App, CoreError, Gap};
use crate::clock::Clock;
use crate::dispatch::DispatchRow;
use crate::domain::{DeviceId, RejectReason, Timestamp};
use crate::engine::{Change, ChangeKind, DeviceCtx, Engine};
use crate::features::Observed;
use crate::fleet::Device;
use crate::ingest::decode::{self, Reject};
use crate::ingest::mqtt::{topic_matches, Inbound};
use crate::ingest::reorder::{Item, Offer, Pending};
use crate::store::Tx;
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// Result of processing one group.
#[derive(Debug, Default, Clone, Copy)]
pub struct GroupStats {
    pub readings: usize,
    pub changes: usize,
}

/// Counts of one group, added to the metrics once per group: the hot path stays free of label
/// lookups.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) duplicates: u64,
    /// Readings a `seq` gap says never arrived.
    pub(super) missing: u64,
    pub(super) resets: u64,
    pub(super) late: u64,
    pub(super) scorings: u64,
    pub(super) events: u64,
    /// Accepted readings and events for the history archive (only collected when it is on).
    pub(super) archived: Vec<crate::archive::Record>,
    /// (mode, probability) of each scoring, for the drift statistic.
    pub(super) scores: Vec<(std::sync::Arc<str>, f64)>,
    /// Gaps noticed, written with the group.
    pub(super) gaps: Vec<Gap>,
    /// Sparkplug edge node states (births, aliases, `seq`) changed, written with the group.
    pub(super) sparkplug: Vec<crate::ingest::sparkplug::StoredNode>,
    /// Devices the registry does not know, first seen in this group.
    pub(super) unregistered: Vec<String>,
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

/// Below this many items a group is applied on the processing thread alone: handing a shard to
/// an apply thread and waiting for it costs more than it saves.
const PARALLEL_MIN_ITEMS: usize = 32;

/// What applying an item needs of the core besides its device's slot: read only, shared by the
/// shards of a group.
pub(super) struct Shared<'a> {
    pub(super) engine: &'a Engine,
    pub(super) devices: &'a HashMap<DeviceId, Device>,
    pub(super) unregistered: &'a std::collections::HashSet<String>,
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

impl App {
    /// Processes a group of messages and commits all their effects in one flushed batch. The
    /// caller acknowledges the group only when this returns `Ok`.
    pub fn process_group(&self, msgs: &[Inbound]) -> Result<GroupStats, CoreError> {
        self.process(msgs, true)
    }

    /// Like [`App::process_group`], but the batch is only handed to the store
    /// ([`Store::defer`](crate::store::Store::defer)): the caller acknowledges the group after a
    /// successful [`Store::flush`](crate::store::Store::flush) that began after this returned,
    /// if [`Store::epoch`](crate::store::Store::epoch) has not moved since before this call,
    /// and calls [`App::distrust_memory`] otherwise.
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
        // Sized for a group of distinct devices (the usual case with many devices), so neither
        // grows and rehashes while the group is read.
        let mut queued: Vec<(String, Vec<Queued>)> = Vec::with_capacity(msgs.len());
        let mut by_device: HashMap<String, usize> = HashMap::with_capacity(msgs.len());
        let mut order = 0usize;
        // Cluster mode: the devices with an item from a message read live (not replayed), whose
        // ticket changes are claimed and sent even if their partition is being set up again.
        let mut live: HashSet<String> = HashSet::new();
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
            let items: Vec<Item> = if let Some(d) = self.formats.decode(
                topic,
                &m.publish.payload,
                m.received_ms,
                self.clock.now_ms(),
            ) {
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
                    .find(|&ts| ts > Timestamp::from_millis(m.received_ms).saturating_add(skew))
                {
                    let rej = Reject::new(
                        RejectReason::FutureTs,
                        format!(
                            "timestamp {} is more than {} ahead of receipt",
                            ts.format(),
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
                if self.fleetwide.is_some() && !m.publish.is_replayed() && !live.contains(&device) {
                    live.insert(device.clone());
                }
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
            let registry = self.registry.read();
            let shared = Shared {
                engine: &core.engine,
                devices: &registry.devices,
                unregistered: &core.unregistered,
            };
            self.run_shards(&shared, &mut work)
        };
        for w in work {
            core.slots.insert(w.device, w.slot);
        }
        let n_changes: usize = outs.iter().map(|o| o.changes.len()).sum();
        let mut tagged: Vec<(usize, Change, i64)> = Vec::with_capacity(n_changes);
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
        self.commit_group(core, &dirty, &changes, &live, tally, durable)?;
        Ok(stats)
    }

    /// Runs the group's devices through [`App::offer`], split into shards (one per
    /// `ingest.apply_threads`, devices dealt round-robin): the processing thread applies the
    /// first, the apply pool's threads the others. Returns each shard's output.
    fn run_shards(&self, sh: &Shared<'_>, work: &mut [DeviceWork]) -> Vec<ShardOut> {
        let items: usize = work.iter().map(|w| w.items.len()).sum();
        let k = self.apply_threads.min(work.len());
        let pool = match &self.apply_pool {
            Some(pool) if k > 1 && items >= PARALLEL_MIN_ITEMS => pool,
            _ => return vec![self.run_shard(sh, work.iter_mut())],
        };
        let mut shards: Vec<Vec<&mut DeviceWork>> = (0..k).map(|_| Vec::new()).collect();
        for (i, w) in work.iter_mut().enumerate() {
            shards[i % k].push(w);
        }
        let mut shards = shards.into_iter();
        let mine = shards.next().unwrap_or_default();
        let theirs = parking_lot::Mutex::new(Vec::with_capacity(k - 1));
        // Runs here (not on the pool) and returns once every spawned shard is done; a panic in
        // one is raised here.
        let own = pool.in_place_scope(|scope| {
            for shard in shards {
                let theirs = &theirs;
                scope.spawn(move |_| {
                    let out = self.run_shard(sh, shard.into_iter());
                    theirs.lock().push(out);
                });
            }
            self.run_shard(sh, mine.into_iter())
        });
        let mut outs = theirs.into_inner();
        outs.push(own);
        outs
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
        let (pending, id) = Pending::from_item(item, received_ms);
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
        slot.reorder.release(&id, released);
        for (item, received_ms) in released.drain(..) {
            self.apply(sh, slot, &item, received_ms, tally, changes);
        }
    }

    /// Applies one reading or event to its device through the engine.
    pub(super) fn apply(
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
                let dev = sh.devices.get(r.device_id.as_str());
                if dev.is_none()
                    && !sh.unregistered.contains(r.device_id.as_str())
                    && !tally.unregistered.iter().any(|d| *d == *r.device_id)
                {
                    tally.unregistered.push(r.device_id.to_string());
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
                            device_id: r.device_id.to_string(),
                            after_seq: prev,
                            next_seq: seq,
                            missing,
                            ts: r.ts.format(),
                            noticed_at: Timestamp::from_millis(self.now_ms()).format(),
                        };
                        self.signals
                            .gaps
                            .lock()
                            .insert(r.device_id.to_string(), gap.clone());
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
    pub(super) fn commit_group(
        &self,
        core: &mut Core,
        dirty: &[String],
        changes: &[(Change, i64)],
        live: &HashSet<String>,
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
            let mut l = self.signals.loss.lock();
            l.readings_missing += tally.missing;
            l.seq_resets += tally.resets;
            if tally.missing > 0 {
                l.last_gap_ms = Some(self.now_ms());
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
        // claim that cannot be made leaves the group uncommitted. A device's change is taken
        // as replayed only when none of its items in this group was read live: a group read
        // live before its partition's connection was lost, processed while the partition is
        // set up again (and so marked replaying), still claims and sends what it changed.
        let mut quiet = vec![false; changes.len()];
        if let Some(f) = &self.fleetwide {
            for ((c, _), q) in changes.iter().zip(quiet.iter_mut()) {
                let device = c.ticket.device_id.as_str();
                if !live.contains(device) && f.replaying(device) {
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
        // The daemon's clock: the wall clock, or the simulated one in the demo.
        let now_ms = self.now_ms();
        let claimed = self.fleetwide.is_some();
        for ((c, _), quiet) in changes.iter().zip(&quiet) {
            if *quiet {
                tx.put_ticket(&c.ticket);
            } else {
                // Cluster mode: a claimed change's rows are noted until they are sent, so the
                // fleet learns it (and a partition's next owner sends what was not).
                let claim = claimed.then(|| super::claim_key(c)).flatten();
                self.record_claimed(&mut tx, c, now_ms, claim);
            }
        }
        let started = Instant::now();
        let committed = if durable {
            self.store.commit(tx)
        } else {
            // Applied by the flusher (or whoever touches the store first), in order.
            self.store.defer(tx)
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
        self.metrics
            .step_log_steps
            .set(i64::try_from(core.log_steps).unwrap_or(i64::MAX));
        self.views
            .publish(dirty, |d| core.slots.get(d).map(|s| &s.state));
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
        // A latency, not a stamp: measured on the clock the MQTT driver stamped `received_ms`
        // with (the system's), whichever clock the daemon reasons in.
        let done_ms = crate::clock::SystemClock.now_ms();
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
            if let Err(e) = self.checkpoint_locked(core, durable) {
                tracing::warn!("checkpoint failed (tried again after the next commit): {e}");
            }
        }
        self.evict(core, durable);
        self.metrics.devices_in_memory.set(core.slots.len() as i64);
        Ok(())
    }

    /// Writes one ticket change into the transaction: the ticket, its dispatch outbox row and
    /// whatever the notifier adds. Called by the writer, holding the core.
    pub(super) fn record_change(&self, tx: &mut Tx, c: &Change, now_ms: i64) {
        // The ticket is encoded once: its record and, with a webhook, its dispatch row carry
        // the same JSON (without one the row names the ticket).
        match serde_json::to_vec(&c.ticket) {
            Ok(json) => {
                tx.push_outbox_json(
                    crate::dispatch::QUEUE,
                    DispatchRow::new_json(c.kind, &c.ticket, &json, self.settings.has_webhook),
                );
                // An automatic update moves a live ticket's numbers, never its status: its
                // live index entry stays as written when it opened.
                if c.kind == ChangeKind::Updated && c.ticket.is_live() {
                    tx.put_unmoved_ticket_json(&c.ticket, json);
                } else {
                    tx.put_ticket_json(&c.ticket, json);
                }
            }
            // Remembered by the transaction, whose commit then fails.
            Err(_) => tx.put_ticket(&c.ticket),
        }
        self.metrics
            .ticket_changes
            .with_label_values(&[c.kind.as_str()])
            .inc();
        self.notify_change(tx, c, now_ms);
    }

    /// The notifier's part of [`App::record_change`]: its rows for the change, in `tx`.
    pub(super) fn notify_change(&self, tx: &mut Tx, c: &Change, now_ms: i64) {
        // Notifications integration point: the notifier writes its outbox rows into the same
        // commit as the ticket change.
        let registry = self.registry.read();
        let device = registry.devices.get(c.ticket.device_id.as_str());
        let customer = c
            .ticket
            .customer_id
            .as_deref()
            .or(device.and_then(|d| d.customer_id.as_deref()))
            .and_then(|id| registry.customers.get(id));
        self.notifier
            .on_ticket_change(tx, c, customer, device, now_ms);
    }
}
