//! Tickets for the API, the board and customers' replies: reads from the store, transitions
//! through the single writer.

use super::{App, CoreError};
use crate::domain::{HistoryEntry, Outcome, Status, Ticket, Timestamp};
use crate::engine::{Change, ChangeKind};
use crate::features::DeviceState;
use crate::fleet::{Customer, Device};
use crate::notify::{DeskError, Notifier, TicketDesk};
use crate::store::{Store, Tx};
use std::sync::Arc;

/// Ticket reads and transitions. A transition commits the ticket, its dispatch row and the
/// notifier's rows in one batch, through the writer (so it waits for a group being applied;
/// call it from a blocking thread).
#[derive(Clone)]
pub struct Tickets {
    writer: Arc<App>,
}

impl Tickets {
    pub(super) fn new(writer: Arc<App>) -> Tickets {
        Tickets { writer }
    }

    pub fn ticket(&self, id: &str) -> Option<Ticket> {
        self.writer.store.ticket(id).ok().flatten()
    }

    /// The store, for reads (ticket lists, the board's own records).
    pub fn store(&self) -> &Store {
        &self.writer.store
    }

    /// Cluster mode's view of the fleet, when it is on (the board's fleet-wide queue).
    pub fn fleetwide(&self) -> Option<Arc<dyn super::Fleetwide>> {
        self.writer.fleetwide.clone()
    }

    /// The notifier: its clock, its templates, customers' links.
    pub fn notifier(&self) -> &Arc<Notifier> {
        self.writer.notifier()
    }

    /// A device's state as the writer has applied it, for the board's pages: after the first
    /// look (through the writer, which may wait for a group being applied: call it from a
    /// blocking thread), as the writer published it after its last commit, without waiting
    /// (see [`App::device_view`]).
    pub fn device_state(&self, device: &str) -> Result<Option<Arc<DeviceState>>, CoreError> {
        self.writer.device_view(device)
    }

    /// Makes `t` through the single writer, committing the ticket, its dispatch row and the
    /// notifier's rows.
    pub fn transition(&self, t: Transition<'_>) -> Result<Ticket, CoreError> {
        self.writer.transition_with(t, |_, _| Ok(()))
    }

    /// [`Tickets::transition`], with `also`: further records written in the same commit as the
    /// change (the board's booked visit or assignment), given the changed ticket. `also` runs
    /// inside the single writer: no I/O, no waiting.
    pub fn transition_with(
        &self,
        t: Transition<'_>,
        also: impl FnOnce(&Ticket, &mut Tx) -> Result<(), CoreError>,
    ) -> Result<Ticket, CoreError> {
        self.writer.transition_with(t, also)
    }
}

/// What a person asks of a ticket (through the API, the board or a reply): a move to `to`, or
/// with `to: None` a note in its history; `outcome` (when resolving or dismissing) is the label
/// for the next training run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transition<'a> {
    pub id: &'a str,
    pub to: Option<Status>,
    pub actor: &'a str,
    pub note: &'a str,
    pub outcome: Option<Outcome>,
}

impl<'a> Transition<'a> {
    /// Ticket `id` to status `to`.
    pub fn to(id: &'a str, to: Status, actor: &'a str, note: &'a str) -> Transition<'a> {
        Transition {
            id,
            to: Some(to),
            actor,
            note,
            outcome: None,
        }
    }

    /// A note in ticket `id`'s history, its status unchanged.
    pub fn note(id: &'a str, actor: &'a str, note: &'a str) -> Transition<'a> {
        Transition {
            id,
            to: None,
            actor,
            note,
            outcome: None,
        }
    }

    /// With how the ticket ended.
    pub fn outcome(self, outcome: Option<Outcome>) -> Transition<'a> {
        Transition { outcome, ..self }
    }
}

/// Customer replies move tickets through the single writer, like API transitions.
impl TicketDesk for Tickets {
    fn ticket(&self, id: &str) -> Option<Ticket> {
        Tickets::ticket(self, id)
    }
    fn customer_reply(
        &self,
        id: &str,
        to: Option<Status>,
        actor: &str,
        note: &str,
    ) -> Result<Ticket, DeskError> {
        let t = Transition {
            id,
            to,
            actor,
            note,
            outcome: None,
        };
        self.transition(t).map_err(desk_error)
    }
    fn customer_booking(
        &self,
        id: &str,
        to: Option<Status>,
        actor: &str,
        note: &str,
        visit: &crate::domain::Visit,
    ) -> Result<(Ticket, bool), DeskError> {
        let t = Transition {
            id,
            to,
            actor,
            note,
            outcome: None,
        };
        self.transition_with(t, |t, tx| {
            // The customer picked one of the proposed slots: the visit is booked and the
            // proposal used up, in the transition's commit (and its cluster record).
            if t.status == Status::Scheduled {
                tx.put_kv(&crate::domain::visit_key(&t.id), visit);
                tx.remove_kv(&crate::domain::proposal_key(&t.id));
            }
            Ok(())
        })
        .map(|t| (t, true))
        .map_err(desk_error)
    }
    fn customer(&self, id: &str) -> Option<Customer> {
        self.writer.registry.read().customers.get(id).cloned()
    }
    fn device(&self, id: &str) -> Option<Device> {
        self.writer.registry.read().devices.get(id).cloned()
    }
}

/// A writer's error as the notifier's desk words it.
fn desk_error(e: CoreError) -> DeskError {
    match e {
        CoreError::Store(e) => DeskError::Store(e),
        CoreError::TicketNotFound(id) => DeskError::TicketNotFound(id),
        CoreError::Transition(e) => DeskError::Transition(e),
        CoreError::Invalid(m) => DeskError::Invalid(m),
        // Cluster mode could not claim or record the transition (NATS unreachable): refused
        // with the reason, nothing stored.
        e @ (CoreError::Claim(_) | CoreError::Share(_)) => DeskError::Invalid(e.to_string()),
    }
}

impl App {
    /// See [`Tickets::transition_with`].
    fn transition_with(
        &self,
        Transition {
            id,
            to,
            actor,
            note,
            outcome,
        }: Transition<'_>,
        also: impl FnOnce(&Ticket, &mut Tx) -> Result<(), CoreError>,
    ) -> Result<Ticket, CoreError> {
        let mut guard = self.core.lock();
        let core = &mut *guard;
        let mut t = self
            .store
            .ticket(id)?
            .ok_or_else(|| CoreError::TicketNotFound(id.to_string()))?;
        let now = Timestamp::from_millis(self.now_ms());
        let previous_priority = Some(t.priority);
        match to {
            Some(to) => t.transition(to, actor, now, note)?,
            None => {
                t.history.push(HistoryEntry {
                    at: now.format(),
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
        if self.fleetwide.is_some() {
            tx.capture_kv();
        }
        // Settled, whoever settles it (the API, the board, a customer's reply): a proposal is
        // void; a dismissal cancels the booked visit, a resolution keeps it as history. Either
        // gives up the visit's fleet-wide slot reservation once committed.
        let settled = to.is_some_and(|s| matches!(s, Status::Resolved | Status::Dismissed));
        let visit: Option<crate::domain::Visit> = match settled {
            // An unreadable visit record is set aside by the store; it cannot stop the change.
            true => self
                .store
                .get_kv(&crate::domain::visit_key(&t.id))
                .ok()
                .flatten(),
            false => None,
        };
        if settled {
            tx.remove_kv(&crate::domain::proposal_key(&t.id));
        }
        if to == Some(Status::Dismissed) {
            tx.remove_kv(&crate::domain::visit_key(&t.id));
        }
        also(&t, &mut tx)?;
        let mut claim = None;
        if let Some(f) = &self.fleetwide {
            // Cluster mode: claimed like an automatic change (so that, should this instance
            // die before its rows are sent, the partition's next owner sends them), then in
            // the stream before it is stored, for that owner, with the board's records
            // written beside it.
            let key = super::transition_claim_key(&t.id, now);
            // Held by another instance (a transition of this ticket made there within the same
            // millisecond): its rows are sent from here all the same, not tracked.
            claim = f.claim_as(&key, &change)?.then_some(key);
            let records = super::TicketRecord::of_ticket(&t.id, tx.take_captured());
            let r = super::RecordedTransition::new(&t, to, actor, note, outcome, now)
                .with_records(records);
            f.record_transition(&r)?;
        }
        self.record_claimed(&mut tx, &change, now.as_millis(), claim);
        self.store.commit(tx)?;
        if let Some(slot) = core.slots.get_mut(t.device_id.as_str()) {
            slot.live.retain(|x| x.id != t.id);
            if t.is_live() {
                slot.live.push(t.clone());
            }
        }
        drop(guard);
        self.dispatch_wake.notify_one();
        if let Some((fw, v)) = self.fleetwide.as_ref().zip(visit) {
            // The slot is free for the fleet again. Not released (NATS away): it is pruned
            // once its day is past.
            if let Err(e) = fw.release_slot(&v.technician_id, v.slot.start_ms, &t.id) {
                tracing::warn!(ticket = %t.id, error = %e, "a visit slot's reservation was not released");
            }
        }
        Ok(t)
    }
}
