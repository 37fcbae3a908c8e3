//! What cluster mode (`crate::cluster`, which implements [`Fleetwide`]) provides the commit
//! path and the API.

use super::{App, CoreError};
use crate::domain::{DeviceId, HistoryEntry, Outcome, Status, Ticket, Timestamp};
use crate::engine::{Change, ChangeKind};
use serde::{Deserialize, Serialize};

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
    /// [`Fleetwide::claim`] under a key the caller derived (a person's transition:
    /// [`transition_claim_key`]).
    fn claim_as(&self, key: &str, change: &Change) -> Result<bool, ClaimError>;
    /// The partition assignment as this instance last saw it (`GET /api/v1/cluster`).
    fn status(&self) -> ClusterStatus;
    /// The live instances and where their APIs answer, for the fleet-wide API (`api::fleet`).
    fn peers(&self) -> Peers;
    /// The instance holding the lease of the device's partition, as last read; its copy of the
    /// device's tickets is the authoritative one.
    fn owner(&self, device: &str) -> Option<String>;
    /// Whether this instance can serve its share of the fleet (`/readyz` in cluster mode).
    fn readiness(&self) -> ClusterReadiness;
    /// Records a transition accepted here (API, board, customer reply) where the partition's
    /// next owner will find it: in the stream, after the device's readings so far. Called before
    /// the transition is stored; an error leaves it unmade.
    fn record_transition(&self, t: &RecordedTransition) -> Result<(), ClaimError>;
    /// Reserves, fleet-wide, the visit of `technician` starting at `start` for ticket `ticket`
    /// (create-if-absent on a key per technician and slot start): `Ok(None)` when the slot is
    /// now this ticket's (just reserved, or reserved by it before), `Ok(Some(other))` when
    /// ticket `other` holds it. Without a fleet (the default), every slot is free here.
    fn reserve_slot(
        &self,
        _technician: &str,
        _start: Timestamp,
        _ticket: &str,
    ) -> Result<Option<String>, ClaimError> {
        Ok(None)
    }
    /// The ticket holding the fleet-wide reservation of `technician`'s slot at `start`.
    fn slot_holder(
        &self,
        _technician: &str,
        _start: Timestamp,
    ) -> Result<Option<String>, ClaimError> {
        Ok(None)
    }
    /// Gives up ticket `ticket`'s reservation of `technician`'s slot at `start` (a reservation
    /// held by another ticket is left alone).
    fn release_slot(
        &self,
        _technician: &str,
        _start: Timestamp,
        _ticket: &str,
    ) -> Result<(), ClaimError> {
        Ok(())
    }
    /// Puts fleet records committed here where every instance applies them (the registry
    /// bucket, which each instance watches). Called after the local commit; an error means the
    /// others have not got them (the caller is told, rather than the fleet silently diverging).
    fn share_registry(
        &self,
        customers: &[crate::fleet::Customer],
        devices: &[crate::fleet::Device],
    ) -> Result<(), ShareError>;
}

/// A ticket transition as cluster mode records it in the stream (JSON), so that the owner that
/// rebuilds the partition from the stream applies it at the same place among the readings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedTransition {
    pub ticket: String,
    pub device_id: DeviceId,
    /// `None`: a note only.
    pub to: Option<Status>,
    pub actor: String,
    pub note: String,
    pub outcome: Option<Outcome>,
    /// When it was made (epoch milliseconds), as its history entry says.
    pub at_ms: Timestamp,
    /// The instance that accepted it (filled in by cluster mode).
    #[serde(default)]
    pub instance: String,
    /// What the board wrote beside it in the same commit (an assignment, a proposal, a booked
    /// visit, or their removal), so the partition's next owner has them too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<TicketRecord>,
}

/// One of the board's records beside a ticket ([`crate::domain::ticket_record_keys`]): its
/// store key and value, `None` for a removal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketRecord {
    pub key: String,
    pub value: Option<serde_json::Value>,
}

impl TicketRecord {
    /// The records of `captured` (from [`crate::store::Tx::take_captured`]) that are ticket
    /// `id`'s board records; others (and a value that is not JSON) are left out.
    pub fn of_ticket(id: &str, captured: Vec<(String, Option<Vec<u8>>)>) -> Vec<TicketRecord> {
        let keys = crate::domain::ticket_record_keys(id);
        captured
            .into_iter()
            .filter(|(k, _)| keys.contains(k))
            .filter_map(|(key, v)| match v {
                None => Some(TicketRecord { key, value: None }),
                Some(bytes) => serde_json::from_slice(&bytes)
                    .ok()
                    .map(|value| TicketRecord {
                        key,
                        value: Some(value),
                    }),
            })
            .collect()
    }
}

/// The fleet-wide claim key of a ticket change ([`Fleetwide::claim`]): `t.ID` for an opening,
/// `c.ID.KIND.MS` for a later update or settlement at event time MS. `None` for a transition
/// (its key is [`transition_claim_key`], from the time it was made) and a change whose time
/// does not read.
pub fn claim_key(change: &Change) -> Option<String> {
    let t = &change.ticket;
    match change.kind {
        ChangeKind::Opened => Some(format!("t.{}", t.id)),
        ChangeKind::Updated | ChangeKind::Settled => Timestamp::parse(&t.updated_at)
            .map(|ms| format!("c.{}.{}.{}", t.id, change.kind.as_str(), ms.as_millis())),
        ChangeKind::Transition => None,
    }
}

/// The fleet-wide claim key of a transition a person made on ticket `id` at `at` (the time of
/// its history entry): `c.ID.transition.MS`. Claimed by the instance that accepts it, so that
/// its rows are sent by another instance if that one dies first.
pub fn transition_claim_key(id: &str, at: Timestamp) -> String {
    format!("c.{id}.transition.{}", at.as_millis())
}

/// A claim key read back: the ticket id, the kind of change and, for a later change (or a
/// transition), its time (epoch ms). `None` for any other key.
pub fn parse_claim_key(key: &str) -> Option<(String, ChangeKind, Option<i64>)> {
    if let Some(id) = key.strip_prefix("t.") {
        return (!id.is_empty() && !id.contains('.'))
            .then(|| (id.to_string(), ChangeKind::Opened, None));
    }
    let rest = key.strip_prefix("c.")?;
    let mut parts = rest.rsplitn(3, '.');
    let ms: i64 = parts.next()?.parse().ok()?;
    let kind = match parts.next()? {
        "updated" => ChangeKind::Updated,
        "settled" => ChangeKind::Settled,
        "transition" => ChangeKind::Transition,
        _ => return None,
    };
    let id = parts.next()?;
    (!id.is_empty() && !id.contains('.')).then(|| (id.to_string(), kind, Some(ms)))
}

/// Where this instance notes, until they have left its outboxes, the rows of a ticket change
/// it claimed fleet-wide (written in the change's commit): `cluster/unsent/<claim key>`.
pub const UNSENT_PREFIX: &str = "cluster/unsent/";

/// The outbox rows a claimed change wrote, by full store key (hex).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unsent {
    pub claim: String,
    pub rows: Vec<String>,
}

/// Where this instance keeps, per partition, the stream sequence its committed state holds
/// every message of the partition up to: `cluster/applied/<partition>`.
pub const APPLIED_PREFIX: &str = "cluster/applied/";

/// A partition's applied sequence as kept in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamApplied {
    pub partition: u32,
    pub seq: u64,
    /// When the stream these sequences are of was created (epoch ms).
    pub stream_created_ms: i64,
}

/// What applying a recorded transition did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Stored (nothing sent: the instance that accepted it sent what it had to).
    Applied,
    /// Already in the ticket's history (made here, or applied before).
    Already,
    /// Not applicable to the ticket as rebuilt here (gone, or in a status it cannot leave that
    /// way); counted and skipped.
    Refused(String),
}

impl App {
    /// [`App::record_change`] of a change this instance claimed fleet-wide as `claim`: with,
    /// in the same commit, the note of its outbox rows ([`Unsent`]), which
    /// [`App::sent_claims`] reads until every row has left the outboxes.
    pub(super) fn record_claimed(
        &self,
        tx: &mut crate::store::Tx,
        c: &Change,
        now_ms: i64,
        claim: Option<String>,
    ) {
        let Some(claim) = claim else {
            return self.record_change(tx, c, now_ms);
        };
        tx.capture_outbox();
        self.record_change(tx, c, now_ms);
        let rows = tx.take_pushed().iter().map(hex::encode).collect();
        self.note_unsent(tx, &[claim], rows);
    }

    /// Notes `rows` as the rows of each of `claims` (in `tx`), kept with the rows a note of the
    /// same claim already lists (two transitions of one ticket within a millisecond share a
    /// key: the note waits for the rows of both).
    fn note_unsent(&self, tx: &mut crate::store::Tx, claims: &[String], rows: Vec<String>) {
        for claim in claims {
            let key = format!("{UNSENT_PREFIX}{claim}");
            let mut all = rows.clone();
            if let Ok(Some(json)) = self.store.get_kv_json(&key) {
                if let Ok(before) = serde_json::from_slice::<Unsent>(&json) {
                    all.extend(before.rows.into_iter().filter(|r| !rows.contains(r)));
                }
            }
            tx.put_kv(
                &key,
                &Unsent {
                    claim: claim.clone(),
                    rows: all,
                },
            );
        }
    }

    /// Cluster mode: the partitions' applied sequences kept in the store.
    pub fn stream_applied(&self) -> Result<Vec<StreamApplied>, CoreError> {
        Ok(self.store.scan_kv::<StreamApplied>(APPLIED_PREFIX)?)
    }

    /// Keeps these partitions' applied sequences (applied, not flushed: the next flush of
    /// the store makes them durable; one lost to a crash leaves an earlier one, which only
    /// makes the next replay longer).
    pub fn keep_stream_applied(&self, marks: &[StreamApplied]) -> Result<(), CoreError> {
        let mut tx = self.store.tx();
        for m in marks {
            tx.put_kv(&format!("{APPLIED_PREFIX}{}", m.partition), m);
        }
        self.store.apply(tx)?;
        Ok(())
    }

    /// Cluster mode: the claimed changes whose rows have all left the outboxes (delivered, or
    /// given up into a dead-letter queue), by claim key; their notes are removed by
    /// [`App::forget_unsent`] once the fleet knows.
    pub fn sent_claims(&self) -> Result<Vec<String>, CoreError> {
        let mut sent = Vec::new();
        for u in self.store.scan_kv::<Unsent>(UNSENT_PREFIX)? {
            let mut left = false;
            for r in &u.rows {
                if let Ok(k) = hex::decode(r) {
                    left |= self.store.contains_raw(&k)?;
                }
            }
            if !left {
                sent.push(u.claim);
            }
        }
        Ok(sent)
    }

    /// Whether the rows of a change claimed here as `claim` are noted as not all sent yet.
    pub fn has_unsent(&self, claim: &str) -> Result<bool, CoreError> {
        Ok(self
            .store
            .get_kv_json(&format!("{UNSENT_PREFIX}{claim}"))?
            .is_some())
    }

    /// Removes the notes of these claims' rows (the fleet has their `sent` marks).
    pub fn forget_unsent(&self, claims: &[String]) -> Result<(), CoreError> {
        if claims.is_empty() {
            return Ok(());
        }
        let mut tx = self.store.tx();
        for c in claims {
            tx.remove_kv(&format!("{UNSENT_PREFIX}{c}"));
        }
        self.store.commit(tx)?;
        Ok(())
    }

    /// Whether this instance's copy of the ticket has reached the change claim `claim` names:
    /// the ticket exists; for a later change it was updated at or after the change's time; for
    /// a transition its history has the entry made at that time (applied from the stream).
    pub fn has_change(&self, claim: &str) -> Result<bool, CoreError> {
        let Some((id, kind, at_ms)) = parse_claim_key(claim) else {
            return Ok(false);
        };
        let Some(t) = self.store.ticket(&id)? else {
            return Ok(false);
        };
        Ok(match (kind, at_ms) {
            (_, None) => true,
            (ChangeKind::Transition, Some(ms)) => {
                let at = Timestamp::from_millis(ms).format();
                t.history.iter().any(|h| h.at == at)
            }
            (_, Some(ms)) => Timestamp::parse(&t.updated_at).is_some_and(|u| u.as_millis() >= ms),
        })
    }

    /// The claims of the changes whose rows this instance has noted as not all sent. Read
    /// under the writer's lock, so a claim being made and committed meanwhile is read with its
    /// note.
    pub fn unsent_claims(&self) -> Result<Vec<String>, CoreError> {
        let _core = self.core.lock();
        Ok(self
            .store
            .scan_kv::<Unsent>(UNSENT_PREFIX)?
            .into_iter()
            .map(|u| u.claim)
            .collect())
    }

    /// Removes from the outboxes the rows still there of these claims' changes, and their
    /// notes: the changes were sent by another instance (which took their claims over while
    /// this one was gone). Returns how many rows were removed.
    pub fn drop_unsent(&self, claims: &[String]) -> Result<usize, CoreError> {
        let _core = self.core.lock();
        let mut tx = self.store.tx();
        let mut dropped = 0;
        for claim in claims {
            let key = format!("{UNSENT_PREFIX}{claim}");
            let Some(json) = self.store.get_kv_json(&key)? else {
                continue;
            };
            if let Ok(u) = serde_json::from_slice::<Unsent>(&json) {
                for row in u.rows.iter().filter_map(|r| hex::decode(r).ok()) {
                    if self.store.contains_raw(&row)? {
                        tx.remove_raw(&row);
                        dropped += 1;
                    }
                }
            }
            tx.remove_kv(&key);
        }
        self.store.commit(tx)?;
        Ok(dropped)
    }

    /// Cluster mode: writes again the dispatch and notification rows of changes of one ticket
    /// that another instance claimed and died before sending (their claims are this
    /// instance's now), from the ticket as this instance has it, noted like changes claimed
    /// here. Coalesced: one dispatch row for all of them (it carries the ticket's current
    /// state, whichever change it announces: the newest one's kind), and the notifier's rows
    /// once per kind of change among them (an opening and a settlement say different things).
    /// `false` when the ticket is not here (or `claims` names none, or several tickets).
    pub fn requeue_claims(&self, claims: &[String]) -> Result<bool, CoreError> {
        let mut parsed: Vec<(String, ChangeKind, Option<i64>)> =
            claims.iter().filter_map(|c| parse_claim_key(c)).collect();
        let Some(id) = parsed.first().map(|(id, _, _)| id.clone()) else {
            return Ok(false);
        };
        if parsed.len() != claims.len() || parsed.iter().any(|(i, _, _)| *i != id) {
            return Ok(false);
        }
        // In the order they were made: the opening (no time) first.
        parsed.sort_by_key(|(_, _, at)| at.unwrap_or(i64::MIN));
        let mut kinds: Vec<ChangeKind> = Vec::new();
        for (_, k, _) in &parsed {
            if !kinds.contains(k) {
                kinds.push(*k);
            }
        }
        let newest = parsed.last().map_or(ChangeKind::Updated, |(_, k, _)| *k);
        let _core = self.core.lock();
        let Some(ticket) = self.store.ticket(&id)? else {
            return Ok(false);
        };
        let now_ms = self.now_ms();
        let mut tx = self.store.tx();
        tx.capture_outbox();
        let change = |kind| Change {
            kind,
            previous_priority: None,
            ticket: ticket.clone(),
        };
        self.record_change(&mut tx, &change(newest), now_ms);
        for k in kinds.into_iter().filter(|k| *k != newest) {
            self.notify_change(&mut tx, &change(k), now_ms);
        }
        let rows: Vec<String> = tx.take_pushed().iter().map(hex::encode).collect();
        self.note_unsent(&mut tx, claims, rows);
        self.store.commit(tx)?;
        self.dispatch_wake.notify_one();
        Ok(true)
    }

    /// Applies a transition read from the stream (cluster mode: a partition's replay, or one
    /// accepted by another instance): the ticket is stored with it, and nothing is sent. One
    /// already in the ticket's history is not applied twice.
    pub fn apply_recorded(&self, r: &RecordedTransition) -> Result<Applied, CoreError> {
        let mut core = self.core.lock();
        let Some(mut t) = self.store.ticket(&r.ticket)? else {
            return Ok(Applied::Refused(format!("ticket {} not found", r.ticket)));
        };
        if recorded_in(&t, r) {
            return Ok(Applied::Already);
        }
        match r.to {
            Some(to) => {
                if let Err(e) = t.transition(to, &r.actor, r.at_ms, &r.note) {
                    return Ok(Applied::Refused(e.to_string()));
                }
            }
            None => t.history.push(HistoryEntry {
                at: r.at_ms.format(),
                actor: r.actor.clone(),
                action: "note".into(),
                from: None,
                to: None,
                note: r.note.clone(),
            }),
        }
        if let Some(o) = r.outcome {
            t.outcome = Some(o);
        }
        let mut tx = self.store.tx();
        tx.put_ticket(&t);
        // Only the ticket's own board records: a record cannot write anything else here.
        let keys = crate::domain::ticket_record_keys(&r.ticket);
        for rec in r.records.iter().filter(|rec| keys.contains(&rec.key)) {
            match &rec.value {
                Some(v) => match serde_json::to_vec(v) {
                    Ok(json) => tx.put_kv_json(&rec.key, json),
                    Err(e) => tracing::warn!(key = %rec.key, "board record not stored: {e}"),
                },
                None => tx.remove_kv(&rec.key),
            }
        }
        self.store.commit(tx)?;
        // The engine's copy of the device's live tickets is the one its next change starts from.
        if let Some(slot) = core.slots.get_mut(t.device_id.as_str()) {
            slot.live.retain(|x| x.id != t.id);
            if t.is_live() {
                slot.live.push(t);
            }
        }
        Ok(Applied::Applied)
    }
}

/// One device's state as a partition checkpoint carries it: the encoded [`DeviceState`] and
/// reorder buffer, as the store keeps them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceBlob {
    pub device: String,
    pub state: Vec<u8>,
    /// `None`: nothing held for event-time order.
    pub reorder: Option<Vec<u8>>,
}

/// The devices of one partition as this instance has applied them, with every stored ticket of
/// those devices: what cluster mode hands to a partition's next owner instead of the whole
/// retained history.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceStates {
    pub devices: Vec<DeviceBlob>,
    pub tickets: Vec<Ticket>,
    /// The board's records beside those tickets (assignments, proposals, booked visits): store
    /// key and JSON. `None`: the checkpoint was written before they were carried (an adopting
    /// instance then keeps its own).
    pub records: Option<Vec<(String, Vec<u8>)>>,
}

impl App {
    /// The state of every device `belongs` selects (in memory, else as stored) and all their
    /// tickets. The caller makes sure nothing of those devices is being processed (cluster
    /// mode: the partition's consumer is paused and what it forwarded is committed); the core
    /// is held meanwhile, so no group is half applied.
    pub fn export_devices(
        &self,
        belongs: &dyn Fn(&str) -> bool,
    ) -> Result<DeviceStates, CoreError> {
        let mut core = self.core.lock();
        let core = &mut *core;
        self.recover_if_needed(core)?;
        let mut devices: Vec<DeviceBlob> = core
            .slots
            .iter()
            .filter(|(d, _)| belongs(d))
            .map(|(d, slot)| DeviceBlob {
                device: d.clone(),
                state: slot.state.encode(),
                reorder: (!slot.reorder.is_empty()).then(|| slot.reorder.encode()),
            })
            .collect();
        for (device, state) in self.store.states()? {
            if belongs(&device) && !core.slots.contains_key(device.as_str()) {
                let reorder = self.store.load_reorder(&device)?;
                devices.push(DeviceBlob {
                    device,
                    state,
                    reorder,
                });
            }
        }
        devices.sort_by(|a, b| a.device.cmp(&b.device));
        let tickets: Vec<Ticket> = self
            .store
            .tickets(&crate::store::TicketFilter::default())?
            .into_iter()
            .filter(|t| belongs(t.device_id.as_str()))
            .collect();
        let mut records = Vec::new();
        for t in &tickets {
            for key in crate::domain::ticket_record_keys(&t.id) {
                if let Some(json) = self.store.get_kv_json(&key)? {
                    records.push((key, json));
                }
            }
        }
        Ok(DeviceStates {
            devices,
            tickets,
            records: Some(records),
        })
    }

    /// Takes over the given device states and tickets as this instance's own, in one durable
    /// commit (each device's mark in the step log, so a recovery does not replay older steps
    /// over it); the devices are reloaded from the store at their next message. A state that
    /// does not decode is left out (counted in the return's second member). Returns how many
    /// devices were adopted and how many were left out.
    pub fn adopt_devices(&self, s: &DeviceStates) -> Result<(usize, usize), CoreError> {
        let mut core = self.core.lock();
        let core = &mut *core;
        self.recover_if_needed(core)?;
        let mut tx = self.store.tx();
        let mut adopted: Vec<(&DeviceBlob, crate::features::DeviceState)> = Vec::new();
        let mut refused = 0;
        for d in &s.devices {
            let Some(state) = crate::features::DeviceState::decode(&d.state) else {
                refused += 1;
                continue;
            };
            if d.reorder
                .as_ref()
                .is_some_and(|b| crate::ingest::reorder::Buffer::decode(b).is_none())
            {
                refused += 1;
                continue;
            }
            tx.put_state(&d.device, d.state.clone());
            match &d.reorder {
                Some(b) => tx.put_reorder(&d.device, b.clone()),
                None => tx.remove_reorder(&d.device),
            }
            adopted.push((d, state));
        }
        // The live index has one entry per (device, mode), which a settled ticket's write
        // removes: the settled ones go first, so a live one of the same mode stays indexed.
        for t in s.tickets.iter().filter(|t| !t.is_live()) {
            tx.put_ticket(t);
        }
        for t in s.tickets.iter().filter(|t| t.is_live()) {
            tx.put_ticket(t);
        }
        // The board's records of those tickets become the checkpoint's: present ones written,
        // the others removed (a visit cancelled since this instance last had the ticket).
        if let Some(records) = &s.records {
            let by_key: std::collections::HashMap<&str, &Vec<u8>> =
                records.iter().map(|(k, v)| (k.as_str(), v)).collect();
            for t in &s.tickets {
                for key in crate::domain::ticket_record_keys(&t.id) {
                    match by_key.get(key.as_str()) {
                        Some(json) => tx.put_kv_json(&key, (*json).clone()),
                        None => tx.remove_kv(&key),
                    }
                }
            }
        }
        let marks: Vec<(&str, Vec<u8>)> = adopted
            .iter()
            .map(|(d, _)| (d.device.as_str(), Vec::new()))
            .collect();
        let log_seq = (!marks.is_empty()).then(|| tx.put_log(super::state::log_record(&marks)));
        self.store.commit(tx)?;
        core.log.extend(log_seq);
        let now = std::time::Instant::now();
        for (d, _) in &adopted {
            core.slots.remove(d.device.as_str());
            core.held_on_disk.remove(d.device.as_str());
            if d.reorder.is_some() {
                // Released by the idle timer like any buffer held on disk.
                core.held_on_disk.insert(d.device.clone(), now);
            }
        }
        let names: Vec<String> = adopted.iter().map(|(d, _)| d.device.clone()).collect();
        let by_name: std::collections::HashMap<&str, &crate::features::DeviceState> = adopted
            .iter()
            .map(|(d, s)| (d.device.as_str(), s))
            .collect();
        self.views.publish(&names, |d| by_name.get(d).copied());
        self.metrics.devices_in_memory.set(core.slots.len() as i64);
        Ok((adopted.len(), refused))
    }
}

/// Whether the ticket's history already holds the recorded transition.
fn recorded_in(t: &Ticket, r: &RecordedTransition) -> bool {
    let at = r.at_ms.format();
    t.history
        .iter()
        .any(|h| h.at == at && h.actor == r.actor && h.note == r.note && h.to == r.to)
}

impl RecordedTransition {
    /// The record of `to` (or a note) made on `ticket` at `at_ms`.
    pub fn new(
        ticket: &Ticket,
        to: Option<Status>,
        actor: &str,
        note: &str,
        outcome: Option<Outcome>,
        at_ms: Timestamp,
    ) -> RecordedTransition {
        RecordedTransition {
            ticket: ticket.id.clone(),
            device_id: ticket.device_id.clone(),
            to,
            actor: actor.to_string(),
            note: note.to_string(),
            outcome,
            at_ms,
            instance: String::new(),
            records: Vec::new(),
        }
    }

    /// With the board's records written beside it.
    pub fn with_records(self, records: Vec<TicketRecord>) -> RecordedTransition {
        RecordedTransition { records, ..self }
    }
}

/// Cluster mode's part of `/readyz`: ready once the instance is connected to NATS, has joined
/// (its membership key written), holds a fresh view of the leases (a lease round succeeded
/// within one lease time), has loaded the fleet registry from the cluster once (so no device
/// is scored without its attributes) and has finished replaying every partition it owns. An
/// instance that owns no partition (more instances than partitions, or waiting for a lease to
/// be handed on) is ready: it serves the fleet-wide API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ClusterReadiness {
    /// All of the below hold.
    pub ready: bool,
    /// This instance's name in the leases.
    pub instance: String,
    /// Connected to the NATS server now.
    pub nats: bool,
    /// It has joined the cluster: its membership key written, and what an earlier life left
    /// unsent settled.
    pub joined: bool,
    /// In good standing: its membership unbroken since it last joined, so it sends, claims and
    /// consumes. False from a lapse (no heartbeat landed for most of a lease: frozen, starved
    /// or cut off) until it has rejoined. A heartbeat merely late (less than a lease) leaves it
    /// true: the instance holds back until that heartbeat lands, then goes on without a rejoin.
    #[serde(default)]
    pub standing: bool,
    /// The last lease round succeeded within one lease time.
    pub lease_view: bool,
    /// Owned partitions not yet consumed live: their state is still being rebuilt from the
    /// stream.
    pub replaying: Vec<u32>,
    /// The fleet registry (devices, customers) shared through NATS has been read and applied
    /// here once; until then no partition is consumed.
    #[serde(default)]
    pub registry_loaded: bool,
    /// Why it is not ready, in words (`null` when ready).
    pub reason: Option<String>,
}

impl ClusterReadiness {
    /// Fills `ready` and `reason` from the facts.
    pub fn judge(mut self) -> ClusterReadiness {
        let mut why: Vec<String> = Vec::new();
        if !self.nats {
            why.push("lost the connection to NATS".into());
        }
        if !self.joined {
            why.push("has not joined the cluster yet".into());
        } else {
            if !self.standing {
                why.push(
                    "not in good standing (its membership lapsed): sending, claiming and \
                     consuming nothing until it has rejoined"
                        .into(),
                );
            }
            if !self.lease_view {
                why.push("no lease round succeeded within one lease time".into());
            }
        }
        if !self.registry_loaded {
            why.push("the fleet registry has not been loaded from NATS yet".into());
        }
        if !self.replaying.is_empty() {
            why.push(format!("partitions {:?} still replaying", self.replaying));
        }
        self.ready = why.is_empty();
        self.reason = (!why.is_empty()).then(|| why.join("; "));
        self
    }
}

/// The fleet as the API sees it: who this instance is, the live instances with the API
/// address each advertised in its membership record, how long to wait for one of them, and
/// the partitions none of them answers for.
#[derive(Debug, Clone)]
pub struct Peers {
    pub me: String,
    /// Instance name → API base URL (`None`: it advertised none, e.g. an older version).
    pub apis: std::collections::BTreeMap<String, Option<String>>,
    pub timeout: std::time::Duration,
    /// Partitions whose tickets no live instance is known to hold now, each with the instance
    /// that held its lease last (if one was seen): its lease is held by an instance that is no
    /// longer a member, or by nobody while its last holder is gone too (its membership expired
    /// and no one has taken it over yet). A fleet read then cannot be whole. A partition
    /// between two live owners (handed on, its key deleted, not yet created by the next) is
    /// not here: the instance that handed it on still answers with its copies.
    pub unowned: std::collections::BTreeMap<u32, Option<String>>,
}

impl Peers {
    /// Why a fleet read cannot answer for the whole fleet now (`None`: it can, as far as this
    /// instance knows): some partitions have no live owner.
    pub fn incomplete(&self) -> Option<String> {
        if self.unowned.is_empty() {
            return None;
        }
        let parts: Vec<String> = self.unowned.keys().map(u32::to_string).collect();
        let last: std::collections::BTreeSet<&str> = self
            .unowned
            .values()
            .flatten()
            .map(String::as_str)
            .collect();
        let last = match last.is_empty() {
            true => String::new(),
            false => format!(
                " (last held by {}, no longer a live member)",
                last.into_iter().collect::<Vec<_>>().join(", ")
            ),
        };
        Some(format!(
            "partitions {} have no live owner right now{last}: the fleet's answer would miss \
             their devices' tickets until another instance takes them over; try again",
            parts.join(", ")
        ))
    }
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
    /// This instance's membership is not known live (it was frozen or stalled for most of a
    /// lease): it claims nothing until it has rejoined.
    #[error(
        "ticket {ticket}: this instance's cluster membership lapsed; nothing is claimed until \
         it has rejoined (within a lease)"
    )]
    Lapsed { ticket: String },
}

/// Fleet records committed here that could not be put in the fleet-wide registry.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("stored on this instance but not shared with the fleet: {key}: {source}")]
    Unreachable {
        key: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("fleet record {key} cannot be encoded: {source}")]
    Encode {
        key: String,
        source: serde_json::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> ClusterReadiness {
        ClusterReadiness {
            instance: "fw-a".into(),
            nats: true,
            joined: true,
            standing: true,
            lease_view: true,
            registry_loaded: true,
            ..Default::default()
        }
    }

    fn ticket(id: &str, status: &str, opened_at: &str) -> Ticket {
        let opened_ms = Timestamp::parse(opened_at).map_or(0, |t| t.as_millis());
        serde_json::from_value(serde_json::json!({
            "id": id, "device_id": "d1", "customer_id": null,
            "failure_mode": "comp2", "status": status, "priority": "high", "probability": 0.8,
            "predicted_failure_at": null, "opened_at": opened_at,
            "updated_at": opened_at, "model": {"name": "m", "version": "1"},
            "evidence": [], "history": [], "opened_ms": opened_ms
        }))
        .expect("ticket")
    }

    #[test]
    fn a_partitions_devices_move_to_another_writer_with_their_tickets_and_a_live_one_stays_live() {
        let (da, db) = (
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        );
        let a = crate::app::testkit::writer(da.path());
        let t0 = 1_420_070_400_000;
        let group: Vec<_> = (0..3)
            .map(|i| {
                crate::app::testkit::reading(
                    "d1",
                    t0 + i * 3_600_000,
                    i as u64 + 1,
                    r#"{"volt": 170.5}"#,
                )
            })
            .chain([crate::app::testkit::reading(
                "d2",
                t0,
                1,
                r#"{"volt": 1.0}"#,
            )])
            .collect();
        a.process_group(&group).expect("group");
        // The store lists the newer (live) ticket first; a settled one of the same device and
        // mode after it must not take the live one out of the device's live index.
        let live = ticket("T-0000000000000002", "open", "2015-01-03T06:00:00Z");
        let settled = ticket("T-0000000000000001", "dismissed", "2015-01-01T06:00:00Z");
        let mut tx = a.store.tx();
        tx.put_ticket(&settled);
        tx.put_ticket(&live);
        a.store.commit(tx).expect("commit");

        let states = a.export_devices(&|d| d == "d1").expect("export");
        assert_eq!(states.devices.len(), 1, "only the partition's device");
        assert!(
            states.devices[0].reorder.is_some(),
            "its held reading moves too"
        );
        let order: Vec<&str> = states.tickets.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(
            order,
            [live.id.as_str(), settled.id.as_str()],
            "newest first"
        );

        let b = crate::app::testkit::writer(db.path());
        assert_eq!(b.adopt_devices(&states).expect("adopt"), (1, 0));
        assert_eq!(
            b.device_state("d1").expect("state"),
            a.device_state("d1").expect("state")
        );
        assert_eq!(b.device_state("d2").expect("state"), None);
        let ids: Vec<String> = b
            .store
            .live_tickets("d1")
            .expect("live")
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ids, vec![live.id.clone()]);
        assert_eq!(
            b.store.ticket(&settled.id).expect("read").map(|t| t.status),
            Some(crate::domain::Status::Dismissed)
        );
    }

    #[test]
    fn the_boards_records_move_with_a_checkpoint_and_with_a_recorded_transition() {
        let (da, db) = (
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        );
        let a = crate::app::testkit::writer(da.path());
        let b = crate::app::testkit::writer(db.path());
        let t = ticket("T-00cc", "scheduled", "2015-01-03T06:00:00Z");
        let [assignment, proposal, visit] = crate::domain::ticket_record_keys(&t.id);
        let mut tx = a.store.tx();
        tx.put_ticket(&t);
        tx.put_kv(&assignment, &serde_json::json!({"technician_id": "t1"}));
        tx.put_kv(
            &visit,
            &serde_json::json!({"technician_id": "t1", "booked_by": "board:x"}),
        );
        tx.put_kv(
            "board/assignment/T-other",
            &serde_json::json!({"technician_id": "t9"}),
        );
        a.store.commit(tx).expect("commit");
        // The next owner had a proposal of that ticket from before: the checkpoint's records
        // replace it.
        let mut tx = b.store.tx();
        tx.put_kv(&proposal, &serde_json::json!({"slots": []}));
        b.store.commit(tx).expect("commit");

        let states = a.export_devices(&|d| d == "d1").expect("export");
        let keys: Vec<&str> = states
            .records
            .iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(
            keys,
            [assignment.as_str(), visit.as_str()],
            "the ticket's only"
        );
        b.adopt_devices(&states).expect("adopt");
        let json = |s: &crate::store::Store, k: &str| {
            s.get_kv_json(k)
                .expect("read")
                .map(|v| serde_json::from_slice::<serde_json::Value>(&v).expect("json"))
        };
        assert_eq!(
            json(&b.store, &visit).map(|v| v["booked_by"].clone()),
            Some(serde_json::json!("board:x"))
        );
        assert!(json(&b.store, &assignment).is_some());
        assert_eq!(
            json(&b.store, &proposal),
            None,
            "not in the checkpoint: removed"
        );

        // A recorded transition carries what the board wrote beside it, and nothing else.
        let mut r = RecordedTransition::new(
            &t,
            None,
            "board:y",
            "assigned to T2 (t2)",
            None,
            Timestamp::from_millis(1_420_300_000_000),
        );
        r.records = vec![
            TicketRecord {
                key: assignment.clone(),
                value: Some(serde_json::json!({"technician_id": "t2"})),
            },
            TicketRecord {
                key: visit.clone(),
                value: None,
            },
            TicketRecord {
                key: "board/technician/t2".into(),
                value: Some(serde_json::json!({"id": "t2"})),
            },
        ];
        let wire: RecordedTransition =
            serde_json::from_slice(&serde_json::to_vec(&r).expect("json")).expect("back");
        assert_eq!(b.apply_recorded(&wire).expect("apply"), Applied::Applied);
        assert_eq!(
            json(&b.store, &assignment).map(|v| v["technician_id"].clone()),
            Some(serde_json::json!("t2"))
        );
        assert_eq!(json(&b.store, &visit), None, "removed as recorded");
        assert_eq!(
            json(&b.store, "board/technician/t2"),
            None,
            "not one of the ticket's records"
        );
    }

    #[test]
    fn a_claim_key_reads_back_as_the_change_it_names() {
        let mut t = ticket("T-00aa", "open", "2015-01-03T06:00:00Z");
        let opened = Change {
            kind: ChangeKind::Opened,
            previous_priority: None,
            ticket: t.clone(),
        };
        let key = claim_key(&opened).expect("a key");
        assert_eq!(key, "t.T-00aa");
        assert_eq!(
            parse_claim_key(&key),
            Some(("T-00aa".into(), ChangeKind::Opened, None))
        );
        t.updated_at = "2015-01-04T00:00:00Z".into();
        let settled = Change {
            kind: ChangeKind::Settled,
            previous_priority: None,
            ticket: t,
        };
        let key = claim_key(&settled).expect("a key");
        assert_eq!(
            parse_claim_key(&key),
            Some((
                "T-00aa".into(),
                ChangeKind::Settled,
                Some(1_420_329_600_000)
            ))
        );
        assert_eq!(
            parse_claim_key("s.t.T-00aa"),
            None,
            "a sent mark is no claim"
        );
        assert_eq!(
            parse_claim_key("c.T-1.transition.5"),
            Some(("T-1".into(), ChangeKind::Transition, Some(5)))
        );
        assert_eq!(parse_claim_key("c.T-1.noted.5"), None);
    }

    #[test]
    fn a_claimed_changes_rows_are_noted_until_they_leave_the_outbox() {
        let d = tempfile::tempdir().expect("dir");
        let a = crate::app::testkit::writer(d.path());
        let t = ticket("T-00bb", "open", "2015-01-03T06:00:00Z");
        let c = Change {
            kind: ChangeKind::Opened,
            previous_priority: None,
            ticket: t,
        };
        let mut tx = a.store.tx();
        a.record_claimed(&mut tx, &c, 0, claim_key(&c));
        a.store.commit(tx).expect("commit");
        assert!(
            a.sent_claims().expect("read").is_empty(),
            "its row is queued"
        );
        let rows = a
            .store
            .outbox::<serde_json::Value>(crate::dispatch::QUEUE)
            .expect("outbox");
        assert_eq!(rows.len(), 1);
        let mut tx = a.store.tx();
        tx.remove_raw(&rows[0].0);
        a.store.commit(tx).expect("commit");
        assert_eq!(a.sent_claims().expect("read"), vec!["t.T-00bb".to_string()]);
        a.forget_unsent(&["t.T-00bb".to_string()]).expect("forget");
        assert!(a.sent_claims().expect("read").is_empty());
        // Taken over from a departed claimant: written again from the ticket as stored here,
        // and noted until sent, like a change claimed here.
        assert!(
            a.requeue_claims(&["t.T-00bb".to_string()])
                .expect("requeue"),
            "the ticket is here"
        );
        assert_eq!(
            a.store
                .outbox::<serde_json::Value>(crate::dispatch::QUEUE)
                .expect("outbox")
                .len(),
            1
        );
        assert!(a.has_unsent("t.T-00bb").expect("read"));
        assert!(
            a.sent_claims().expect("read").is_empty(),
            "its row is queued"
        );
        assert!(
            !a.requeue_claims(&["t.T-none".to_string()])
                .expect("requeue"),
            "no such ticket here"
        );
    }

    #[test]
    fn a_tickets_taken_over_changes_are_sent_in_one_dispatch_row_and_noted_under_each_claim() {
        let d = tempfile::tempdir().expect("dir");
        let a = crate::app::testkit::writer(d.path());
        let mut t = ticket("T-00dd", "acknowledged", "2015-01-03T06:00:00Z");
        t.updated_at = "2015-01-04T00:00:00Z".into();
        t.history.push(HistoryEntry {
            at: Timestamp::from_millis(1_700_000_000_123).format(),
            actor: "api".into(),
            action: "transition".into(),
            from: Some(Status::Open),
            to: Some(Status::Acknowledged),
            note: "ดูแล้ว".into(),
        });
        let mut tx = a.store.tx();
        tx.put_ticket(&t);
        a.store.commit(tx).expect("commit");
        let transition = transition_claim_key(&t.id, Timestamp::from_millis(1_700_000_000_123));
        let claims = vec![
            "t.T-00dd".to_string(),
            "c.T-00dd.updated.1420329600000".to_string(),
            transition.clone(),
        ];
        for c in &claims {
            assert!(a.has_change(c).expect("read"), "{c} is in the ticket here");
        }
        assert!(
            !a.has_change("c.T-00dd.transition.1700000000999")
                .expect("read"),
            "a transition not in its history is not"
        );
        assert!(a.requeue_claims(&claims).expect("requeue"));
        let rows = a
            .store
            .outbox::<serde_json::Value>(crate::dispatch::QUEUE)
            .expect("outbox");
        assert_eq!(
            rows.len(),
            1,
            "one dispatch row for the ticket's three changes"
        );
        assert_eq!(rows[0].1["event"], "transition", "the newest change's kind");
        // No webhook: the row names the ticket, sent as stored (its current state).
        assert_eq!(rows[0].1["head"]["id"], "T-00dd");
        assert!(rows[0].1.get("ticket").is_none(), "{}", rows[0].1);
        assert_eq!(
            a.store
                .ticket("T-00dd")
                .expect("read")
                .expect("stored")
                .status,
            Status::Acknowledged,
            "its current state"
        );
        for c in &claims {
            assert!(
                a.has_unsent(c).expect("read"),
                "{c} noted until the row leaves"
            );
        }
        let mut tx = a.store.tx();
        tx.remove_raw(&rows[0].0);
        a.store.commit(tx).expect("commit");
        let mut sent = a.sent_claims().expect("read");
        sent.sort();
        let mut all = claims.clone();
        all.sort();
        assert_eq!(sent, all, "each claim marked sent once the row is gone");

        // Sent by another instance while this one was gone: the rows still here are dropped.
        assert!(a
            .requeue_claims(std::slice::from_ref(&transition))
            .expect("requeue"));
        assert_eq!(
            a.drop_unsent(std::slice::from_ref(&transition))
                .expect("drop"),
            1
        );
        assert!(!a.has_unsent(&transition).expect("read"));
        assert!(a
            .store
            .outbox::<serde_json::Value>(crate::dispatch::QUEUE)
            .expect("outbox")
            .is_empty());
    }

    #[test]
    fn an_instance_owning_nothing_but_joined_and_connected_is_ready() {
        let r = facts().judge();
        assert!(r.ready);
        assert_eq!(r.reason, None);
    }

    #[test]
    fn replaying_partitions_and_a_lost_connection_are_named() {
        let mut f = facts();
        f.replaying = vec![3, 5];
        f.nats = false;
        let r = f.judge();
        assert!(!r.ready);
        let why = r.reason.unwrap_or_default();
        assert!(why.contains("[3, 5]") && why.contains("NATS"), "{why}");
        let mut f = facts();
        f.joined = false;
        f.lease_view = false;
        let r = f.judge();
        assert!(!r.ready);
        assert_eq!(r.reason.as_deref(), Some("has not joined the cluster yet"));
    }

    fn peers(unowned: &[(u32, Option<&str>)]) -> Peers {
        Peers {
            me: "fw-a".into(),
            apis: Default::default(),
            timeout: std::time::Duration::from_secs(2),
            unowned: unowned
                .iter()
                .map(|(p, h)| (*p, h.map(str::to_string)))
                .collect(),
        }
    }

    #[test]
    fn a_fleet_with_every_partition_owned_by_a_live_member_can_be_read_whole() {
        assert_eq!(peers(&[]).incomplete(), None);
    }

    #[test]
    fn a_fleet_read_says_which_partitions_have_no_live_owner_and_who_held_them_last() {
        let why = peers(&[(1, Some("fw-b")), (3, Some("fw-b")), (6, None)])
            .incomplete()
            .unwrap_or_default();
        assert!(
            why.starts_with("partitions 1, 3, 6 have no live owner"),
            "{why}"
        );
        assert!(why.contains("last held by fw-b,"), "{why}");
    }

    #[test]
    fn an_instance_out_of_good_standing_is_not_ready_and_says_so() {
        let mut f = facts();
        f.standing = false;
        let r = f.judge();
        assert!(!r.ready);
        let why = r.reason.unwrap_or_default();
        assert!(why.starts_with("not in good standing"), "{why}");
    }

    #[test]
    fn an_instance_without_the_fleet_registry_is_not_ready_and_says_so() {
        let mut f = facts();
        f.registry_loaded = false;
        let r = f.judge();
        assert!(!r.ready);
        assert_eq!(
            r.reason.as_deref(),
            Some("the fleet registry has not been loaded from NATS yet")
        );
    }
}
