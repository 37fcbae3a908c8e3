//! The dispatch board: pages people work tickets from, served by the daemon beside the API.
//!
//! | route | what |
//! |---|---|
//! | `GET /board` | the queue: live tickets, soonest predicted failure first, with filters |
//! | `GET /board/tickets/{id}` | evidence in words and charts, history, the actions |
//! | `POST /board/tickets/{id}/{action}` | acknowledge, assign, propose, schedule, resolve, dismiss |
//! | `GET /board/day` | technicians against the hours of a day, with their visits (the fleet's in cluster mode) |
//! | `GET /board/devices/{id}`, `/board/customers/{id}` | a device's windows and tickets; a customer's timeline |
//! | `GET /board/events` | server-sent events: the queue changed |
//! | `GET/POST /board/login`, `POST /board/logout` | sign-in with an API token |
//! | `/api/v1/technicians`, `/api/v1/visits`, `/api/v1/tickets/{id}/{slots,assignment,proposal,visit}` | the same as JSON, behind the API's bearer tokens |
//!
//! Every change goes through [`Tickets::transition_with`] — the single writer the JSON API's
//! transitions use — so a board action and an API call are the same commit: the ticket, its
//! dispatch row, the customer's notifications, and the board's own record (an assignment, a
//! proposal, a visit). The pages are plain HTML forms that work without JavaScript; a small
//! script (`assets/board.js`) refreshes the queue on server-sent events and keeps focus.
//!
//! The pieces: [`sla`] deadlines over business hours, [`slots`] free visit slots, [`queue`]
//! rows, order and filters, [`session`] sign-in and CSRF, [`svg`] charts (all pure); [`pages`]
//! and [`api`] are the thin HTTP shell.

pub mod api;
mod config;
mod pages;
pub mod queue;
pub mod session;
pub mod sla;
pub mod slots;
pub mod svg;

pub use config::{Config, SlaConfig, Technician};

use crate::app::{CoreError, Fleet, Tickets, Transition};
use crate::domain::{
    assignment_key, proposal_key, visit_key, DeviceId, Outcome, Priority, Proposal, Slot, Status,
    Ticket, Timestamp, Visit, ASSIGNMENT_PREFIX, PROPOSAL_PREFIX, VISIT_PREFIX,
};
use crate::notify::TimelineEntry;
use crate::store::{StoreError, TicketFilter, Tx};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Why a board action was refused.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who a ticket is assigned to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Assignment {
    pub ticket_id: String,
    pub technician_id: String,
    /// RFC 3339.
    pub at: String,
    pub by: String,
}

/// Records that `tech` is on the ticket: assigning, proposing slots and booking a visit all do.
fn put_assignment(tx: &mut Tx, ticket_id: &str, tech: &Technician, now: Timestamp, actor: &str) {
    tx.put_kv(
        &assignment_key(ticket_id),
        &Assignment {
            ticket_id: ticket_id.to_string(),
            technician_id: tech.id.clone(),
            at: now.format(),
            by: actor.to_string(),
        },
    );
}
const TECHNICIAN_PREFIX: &str = "board/technician/";

/// What the board keeps beside one ticket: who is on it, the slots offered to the customer,
/// the visit booked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TicketRecords {
    pub ticket_id: String,
    pub assignment: Option<Assignment>,
    pub proposal: Option<Proposal>,
    pub visit: Option<Visit>,
}

/// How a person says a ticket ended; each maps onto the training label ([`Outcome`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    FaultConfirmed,
    ReplacedPart,
    NoFaultFound,
}

impl Resolution {
    pub const ALL: [Resolution; 3] = [
        Resolution::FaultConfirmed,
        Resolution::ReplacedPart,
        Resolution::NoFaultFound,
    ];
    pub fn parse(s: &str) -> Option<Resolution> {
        Resolution::ALL.into_iter().find(|r| r.as_str() == s)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::FaultConfirmed => "fault_confirmed",
            Resolution::ReplacedPart => "replaced_part",
            Resolution::NoFaultFound => "no_fault_found",
        }
    }
    pub fn words(self) -> &'static str {
        match self {
            Resolution::FaultConfirmed => "fault confirmed",
            Resolution::ReplacedPart => "replaced part",
            Resolution::NoFaultFound => "no fault found",
        }
    }
    /// The label: a fault found (repaired or a part replaced) confirms the prediction; none
    /// found makes it a false alarm.
    pub fn outcome(self) -> Outcome {
        match self {
            Resolution::FaultConfirmed | Resolution::ReplacedPart => Outcome::ConfirmedFault,
            Resolution::NoFaultFound => Outcome::FalseAlarm,
        }
    }
}

/// The board: configuration, the business calendar, sessions, and the app it works on.
pub struct Board {
    /// Ticket reads and transitions (through the single writer, like the API's).
    tickets: Tickets,
    fleet: Fleet,
    metrics: crate::metrics::Metrics,
    auth: Arc<crate::api::Auth>,
    cfg: Config,
    cal: sla::BusinessCalendar,
    slas: [sla::Sla; 3],
    sessions: session::Sessions,
    public_url: String,
    shutdown: CancellationToken,
    /// Bumped by changes that are not ticket changes (technicians), so live pages refresh.
    local_changes: AtomicU64,
    /// Cluster mode: the client the queue asks the other instances with.
    fleet_http: Option<reqwest::Client>,
}

/// Why the queue's tickets could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the store could not be read: {0}")]
    Store(#[from] StoreError),
    /// The blocking read did not finish (the runtime is shutting down).
    #[error("the store read was cancelled")]
    Cancelled,
    /// Cluster mode: an instance did not answer (the error names it).
    #[error(transparent)]
    Fleet(crate::api::ApiError),
}

/// A board action on a ticket, as its form gives it.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Acknowledge {
        note: String,
    },
    Assign {
        technician: String,
    },
    Propose {
        technician: String,
        slots: Vec<Slot>,
    },
    Schedule {
        technician: String,
        slot: Slot,
    },
    Resolve {
        how: Resolution,
        note: String,
    },
    Dismiss {
        note: String,
    },
}

impl Action {
    /// What it is done, in words (the page's notice).
    pub fn done(&self) -> String {
        match self {
            Action::Acknowledge { .. } => "Acknowledged.".into(),
            Action::Assign { .. } => "Technician assigned.".into(),
            Action::Propose { slots, .. } => {
                format!("{} slot(s) proposed to the customer.", slots.len())
            }
            Action::Schedule { .. } => "Visit booked; the ticket is scheduled.".into(),
            Action::Resolve { how, .. } => format!("Resolved: {}.", how.words()),
            Action::Dismiss { .. } => "Dismissed as a false alarm.".into(),
        }
    }

    /// The same action as the API takes it: the route under `/api/v1/tickets/{id}/` and the
    /// JSON body (what an instance that does not own the ticket sends to the owner).
    pub fn request(&self) -> (&'static str, serde_json::Value) {
        use serde_json::json;
        match self {
            Action::Acknowledge { note } => (
                "transitions",
                json!({"to": Status::Acknowledged.as_str(), "note": note}),
            ),
            Action::Assign { technician } => ("assignment", json!({"technician_id": technician})),
            Action::Propose { technician, slots } => (
                "proposal",
                json!({"technician_id": technician, "slots": slots}),
            ),
            Action::Schedule { technician, slot } => {
                ("visit", json!({"technician_id": technician, "slot": slot}))
            }
            Action::Resolve { how, note } => (
                "transitions",
                json!({"to": Status::Resolved.as_str(), "note": resolution_note(*how, note),
                       "outcome": how.outcome()}),
            ),
            Action::Dismiss { note } => (
                "transitions",
                json!({"to": Status::Dismissed.as_str(), "note": note,
                       "outcome": Outcome::FalseAlarm}),
            ),
        }
    }
}

/// A resolution's history note: how it ended, and the person's note if any.
fn resolution_note(how: Resolution, note: &str) -> String {
    if note.trim().is_empty() {
        how.words().to_string()
    } else {
        format!("{}: {}", how.words(), note.trim())
    }
}

/// Why the board could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
#[error("config key board.{key}: {message}")]
pub struct BoardConfigError {
    pub key: &'static str,
    pub message: String,
}

/// Refuses a change to a ticket that is already settled, saying what could not be done.
fn still_live(t: &Ticket, refused: &str) -> Result<(), CoreError> {
    if t.is_live() {
        return Ok(());
    }
    Err(CoreError::Invalid(format!(
        "ticket {} is {}: {refused}",
        t.id,
        t.status.as_str()
    )))
}

impl Board {
    pub fn build(
        cfg: &Config,
        tickets: Tickets,
        fleet: Fleet,
        metrics: crate::metrics::Metrics,
        auth: Arc<crate::api::Auth>,
        public_url: &str,
        shutdown: CancellationToken,
    ) -> Result<Arc<Board>, BoardConfigError> {
        let err = |(key, message)| BoardConfigError { key, message };
        cfg.validate().map_err(err)?;
        let tickets_fleetwide = tickets.fleetwide().is_some();
        Ok(Arc::new(Board {
            cal: cfg.calendar().map_err(err)?,
            slas: cfg.slas().map_err(err)?,
            sessions: session::Sessions::new(cfg.session_ttl.std()),
            cfg: cfg.clone(),
            tickets,
            fleet,
            metrics,
            auth,
            public_url: public_url.to_string(),
            shutdown,
            local_changes: AtomicU64::new(0),
            // Built only in cluster mode: `serve` has installed the TLS provider by then.
            fleet_http: tickets_fleetwide
                .then(|| reqwest::Client::builder().build().ok())
                .flatten(),
        }))
    }

    /// The board's routes: the pages and their JSON twins.
    pub fn router(self: &Arc<Self>, max_body: usize) -> axum::Router {
        pages::routes(self.clone())
            .merge(api::routes(self.clone()))
            .layer(axum::extract::DefaultBodyLimit::max(max_body))
    }

    /// The clock tickets are stamped by (the demo's simulated one, or the wall clock).
    pub fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.tickets.notifier().now_ms())
    }

    /// Grows with every ticket change and every board-only change: what live pages watch.
    pub fn version(&self) -> u64 {
        use prometheus::core::Collector;
        let tickets: u64 = self
            .metrics
            .ticket_changes
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum();
        tickets + self.local_changes.load(Ordering::Relaxed)
    }

    fn sla_of(&self, p: Priority) -> sla::Sla {
        match p {
            Priority::Urgent => self.slas[0],
            Priority::High => self.slas[1],
            Priority::Advisory => self.slas[2],
        }
    }

    /// When a ticket must have had a response.
    pub fn deadline(&self, t: &Ticket) -> Timestamp {
        self.cal.deadline(t.opened_ms, self.sla_of(t.priority))
    }

    // ------------------------------------------------------------ technicians and visits

    /// Technicians from the configuration, then those the API added or replaced.
    pub fn technicians(&self) -> Vec<Technician> {
        let mut by_id: std::collections::BTreeMap<String, Technician> = self
            .cfg
            .technicians
            .iter()
            .map(|t| (t.id.clone(), t.clone()))
            .collect();
        for t in self
            .tickets
            .store()
            .scan_kv::<Technician>(TECHNICIAN_PREFIX)
            .unwrap_or_default()
        {
            by_id.insert(t.id.clone(), t);
        }
        by_id.into_values().collect()
    }

    pub fn technician(&self, id: &str) -> Option<Technician> {
        self.technicians().into_iter().find(|t| t.id == id)
    }

    /// Adds or replaces a technician (kept in the store, over the configuration's).
    pub fn put_technician(&self, t: &Technician) -> Result<(), BoardError> {
        if crate::domain::validate_device_id(&t.id).is_err() {
            return Err(BoardError::Invalid(format!(
                "technician id {:?} is not a valid id",
                t.id
            )));
        }
        if !t.hours.is_empty() {
            sla::parse_hours(&t.hours).map_err(|e| BoardError::Invalid(format!("hours: {e}")))?;
        }
        let mut tx = self.tickets.store().tx();
        tx.put_kv(&format!("{TECHNICIAN_PREFIX}{}", t.id), t);
        self.tickets.store().commit(tx)?;
        self.local_changes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn hours_of(&self, t: &Technician) -> (u32, u32) {
        sla::parse_hours(&t.hours).unwrap_or((self.cal.open, self.cal.close))
    }

    /// Every booked visit.
    pub fn visits(&self) -> Vec<Visit> {
        let mut v = self
            .tickets
            .store()
            .scan_kv::<Visit>(VISIT_PREFIX)
            .unwrap_or_default();
        v.sort_by_key(|x| x.slot.start_ms);
        v
    }

    /// The visits this instance answers for: in cluster mode those of the tickets whose
    /// device's partition it owns, or that has no owner right now (a previous owner's copy is
    /// stale); otherwise every one.
    pub fn visits_here(&self) -> Vec<Visit> {
        let mut visits = self.visits();
        if let Some(fw) = self.tickets.fleetwide() {
            let me = fw.peers().me;
            let store = self.tickets.store();
            visits.retain(|v| match store.ticket(&v.ticket_id) {
                Ok(Some(t)) => fw.owner(&t.device_id).is_none_or(|o| o == me),
                _ => false,
            });
        }
        visits
    }

    /// Every booked visit, earliest first; in cluster mode the fleet's: each instance's
    /// [`Board::visits_here`], gathered from every live instance with `headers` (the caller's
    /// token) like the ticket list, one visit per ticket (the latest booked, should a
    /// partition between owners give two).
    pub async fn fleet_visits(
        self: &Arc<Self>,
        headers: &axum::http::HeaderMap,
    ) -> Result<Vec<Visit>, QueueError> {
        let b = self.clone();
        let mine = tokio::task::spawn_blocking(move || b.visits_here())
            .await
            .map_err(|_| QueueError::Cancelled)?;
        let Some((fw, http)) = self.tickets.fleetwide().zip(self.fleet_http.clone()) else {
            return Ok(mine);
        };
        let others = crate::api::fleet::from_each::<Vec<Visit>>(
            fw.as_ref(),
            &http,
            headers,
            "/api/v1/visits",
        )
        .await
        .map_err(QueueError::Fleet)?;
        let mut by_ticket: HashMap<String, Visit> = HashMap::new();
        let theirs = others.into_iter().flat_map(|(_, l)| l.unwrap_or_default());
        for v in mine.into_iter().chain(theirs) {
            match by_ticket.get(&v.ticket_id) {
                Some(kept) if kept.booked_at >= v.booked_at => {}
                _ => {
                    by_ticket.insert(v.ticket_id.clone(), v);
                }
            }
        }
        let mut all: Vec<Visit> = by_ticket.into_values().collect();
        all.sort_by(|a, b| (a.slot.start_ms, &a.ticket_id).cmp(&(b.slot.start_ms, &b.ticket_id)));
        Ok(all)
    }

    /// [`Board::fleet_visits`] for a signed-in person (their token).
    pub async fn fleet_visits_for(
        self: &Arc<Self>,
        bearer: &crate::secret::Secret,
    ) -> Result<Vec<Visit>, QueueError> {
        self.fleet_visits(&Self::fleet_headers(bearer)).await
    }

    pub fn visit(&self, ticket_id: &str) -> Option<Visit> {
        self.tickets
            .store()
            .get_kv(&visit_key(ticket_id))
            .ok()
            .flatten()
    }

    pub fn proposal(&self, ticket_id: &str) -> Option<Proposal> {
        self.tickets
            .store()
            .get_kv(&proposal_key(ticket_id))
            .ok()
            .flatten()
    }

    pub fn assignment(&self, ticket_id: &str) -> Option<Assignment> {
        self.tickets
            .store()
            .get_kv(&assignment_key(ticket_id))
            .ok()
            .flatten()
    }

    /// Ticket `id`'s records in this instance's store.
    pub fn records_of(&self, id: &str) -> TicketRecords {
        TicketRecords {
            ticket_id: id.to_string(),
            assignment: self.assignment(id),
            proposal: self.proposal(id),
            visit: self.visit(id),
        }
    }

    /// The records of every ticket that has one in this instance's store, by ticket id.
    pub fn records_here(&self) -> Vec<TicketRecords> {
        fn entry<'a>(
            by: &'a mut std::collections::BTreeMap<String, TicketRecords>,
            id: &str,
        ) -> &'a mut TicketRecords {
            by.entry(id.to_string()).or_insert_with(|| TicketRecords {
                ticket_id: id.to_string(),
                ..TicketRecords::default()
            })
        }
        let store = self.tickets.store();
        let mut by = std::collections::BTreeMap::new();
        for a in store
            .scan_kv::<Assignment>(ASSIGNMENT_PREFIX)
            .unwrap_or_default()
        {
            let id = a.ticket_id.clone();
            entry(&mut by, &id).assignment = Some(a);
        }
        for p in store
            .scan_kv::<Proposal>(PROPOSAL_PREFIX)
            .unwrap_or_default()
        {
            let id = p.ticket_id.clone();
            entry(&mut by, &id).proposal = Some(p);
        }
        for v in store.scan_kv::<Visit>(VISIT_PREFIX).unwrap_or_default() {
            let id = v.ticket_id.clone();
            entry(&mut by, &id).visit = Some(v);
        }
        by.into_values().collect()
    }

    /// The board's records of `tickets`, by ticket id (tickets without any are left out). In
    /// cluster mode each ticket's are the owner's of its device's partition (another
    /// instance's copy is stale), gathered from every instance with the person's token like
    /// the queue; with no owner right now, this instance's.
    pub async fn records(
        self: &Arc<Self>,
        tickets: &[Ticket],
        bearer: &crate::secret::Secret,
    ) -> Result<HashMap<String, TicketRecords>, QueueError> {
        let fleetwide = self.tickets.fleetwide().zip(self.fleet_http.clone());
        let b = self.clone();
        let ids: Vec<String> = tickets.iter().map(|t| t.id.clone()).collect();
        let here_only = fleetwide.is_none();
        let mine: Vec<TicketRecords> = tokio::task::spawn_blocking(move || match here_only {
            true => ids.iter().map(|id| b.records_of(id)).collect(),
            false => b.records_here(),
        })
        .await
        .map_err(|_| QueueError::Cancelled)?;
        let Some((fw, http)) = fleetwide else {
            return Ok(mine.into_iter().map(|r| (r.ticket_id.clone(), r)).collect());
        };
        let others = crate::api::fleet::from_each::<Vec<TicketRecords>>(
            fw.as_ref(),
            &http,
            &Self::fleet_headers(bearer),
            "/api/v1/board/records",
        )
        .await
        .map_err(QueueError::Fleet)?;
        let me = fw.peers().me;
        let mut by_instance: HashMap<String, HashMap<String, TicketRecords>> = HashMap::new();
        let others = others
            .into_iter()
            .map(|(name, list)| (name, list.unwrap_or_default()));
        for (name, list) in std::iter::once((me.clone(), mine)).chain(others) {
            by_instance.insert(
                name,
                list.into_iter().map(|r| (r.ticket_id.clone(), r)).collect(),
            );
        }
        let mut out = HashMap::new();
        for t in tickets {
            let from = fw.owner(&t.device_id).unwrap_or_else(|| me.clone());
            if let Some(r) = by_instance.get(&from).and_then(|m| m.get(&t.id)) {
                out.insert(t.id.clone(), r.clone());
            }
        }
        Ok(out)
    }

    /// The technician's booked time, apart from `except`'s visit (a ticket being rebooked).
    fn busy(&self, technician: &str, except: &str) -> Vec<Slot> {
        self.visits()
            .into_iter()
            .filter(|v| v.technician_id == technician && v.ticket_id != except)
            .map(|v| v.slot)
            .collect()
    }

    /// The technician's next free slots for a ticket. In cluster mode a slot reserved for
    /// another ticket's visit (booked on any instance) is left out: more are computed, those
    /// reserved elsewhere dropped (a reservation that cannot be read is not held against a
    /// slot: booking it checks again). Reads NATS: call from a blocking thread.
    pub fn free_slots(&self, technician: &Technician, ticket_id: &str) -> Vec<Slot> {
        let fw = self.tickets.fleetwide();
        let wanted = self.cfg.slots_offered;
        // Three times as many: enough unless the technician is mostly booked elsewhere.
        let computed = if fw.is_some() { wanted * 3 } else { wanted };
        let mut free = slots::free_slots(
            &self.cal,
            self.hours_of(technician),
            self.cfg.slot_length.as_millis_i64(),
            self.now(),
            &self.busy(&technician.id, ticket_id),
            computed,
        );
        if let Some(fw) = fw {
            free.retain(|s| {
                !matches!(fw.slot_holder(&technician.id, s.start_ms),
                          Ok(Some(holder)) if holder != ticket_id)
            });
            free.truncate(wanted);
        }
        free
    }

    /// A slot the technician can take for this ticket: working hours, a business day, ahead,
    /// and clear of their other visits.
    fn check_slot(&self, tech: &Technician, ticket_id: &str, s: &Slot) -> Result<(), BoardError> {
        if !slots::within_hours(&self.cal, self.hours_of(tech), s) {
            return Err(BoardError::Invalid(format!(
                "{} is outside {}'s working hours on a business day",
                s.start_ms.format(),
                tech.name
            )));
        }
        if s.start_ms < self.now() {
            return Err(BoardError::Invalid(format!(
                "{} has passed",
                s.start_ms.format()
            )));
        }
        let taken = || {
            BoardError::Invalid(format!(
                "{} already has a visit at {}",
                tech.name,
                s.start_ms.format()
            ))
        };
        if self.busy(&tech.id, ticket_id).iter().any(|b| b.overlaps(s)) {
            return Err(taken());
        }
        // Cluster mode: a visit another instance booked holds the slot's reservation.
        if let Some(fw) = self.tickets.fleetwide() {
            let holder = fw
                .slot_holder(&tech.id, s.start_ms)
                .map_err(CoreError::from)?;
            if holder.is_some_and(|h| h != ticket_id) {
                return Err(taken());
            }
        }
        Ok(())
    }

    fn known_technician(&self, id: &str) -> Result<Technician, BoardError> {
        self.technician(id)
            .ok_or_else(|| BoardError::NotFound(format!("technician {id} not found")))
    }

    // ------------------------------------------------------------ actions

    /// The one way the board changes a ticket: the single writer's transition, with the
    /// board's records in the same commit.
    fn change(
        &self,
        t: Transition<'_>,
        also: impl FnOnce(&Ticket, &mut crate::store::Tx) -> Result<(), CoreError>,
    ) -> Result<Ticket, BoardError> {
        if t.note.len() > 4096 {
            return Err(BoardError::Invalid("note is longer than 4096 bytes".into()));
        }
        Ok(self.tickets.transition_with(t, also)?)
    }

    pub fn acknowledge(&self, id: &str, actor: &str, note: &str) -> Result<Ticket, BoardError> {
        let t = Transition::to(id, Status::Acknowledged, actor, note);
        self.change(t, |_, _| Ok(()))
    }

    pub fn assign(&self, id: &str, technician: &str, actor: &str) -> Result<Ticket, BoardError> {
        let tech = self.known_technician(technician)?;
        let now = self.now();
        let note = format!("assigned to {} ({})", tech.name, tech.id);
        self.change(Transition::note(id, actor, &note), |t, tx| {
            still_live(t, "nothing to assign")?;
            put_assignment(tx, &t.id, &tech, now, actor);
            Ok(())
        })
    }

    /// Offers the customer `slots` with `technician`: the self-service page shows exactly these.
    pub fn propose(
        &self,
        id: &str,
        technician: &str,
        slots: &[Slot],
        actor: &str,
    ) -> Result<Ticket, BoardError> {
        let tech = self.known_technician(technician)?;
        if slots.is_empty() || slots.len() > 20 {
            return Err(BoardError::Invalid("propose between 1 and 20 slots".into()));
        }
        for s in slots {
            self.check_slot(&tech, id, s)?;
        }
        let mut slots = slots.to_vec();
        slots.sort();
        slots.dedup();
        let now = self.now();
        let note = format!(
            "proposed {} visit slot(s) with {}: {}",
            slots.len(),
            tech.name,
            slots
                .iter()
                .map(|s| s.start_ms.format())
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.change(Transition::note(id, actor, &note), |t, tx| {
            still_live(t, "no visit to propose")?;
            tx.put_kv(
                &proposal_key(&t.id),
                &Proposal {
                    ticket_id: t.id.clone(),
                    technician_id: tech.id.clone(),
                    slots,
                    proposed_at: now.format(),
                    by: actor.to_string(),
                },
            );
            put_assignment(tx, &t.id, &tech, now, actor);
            Ok(())
        })
    }

    /// Books a visit and schedules the ticket, in one commit.
    pub fn schedule(
        &self,
        id: &str,
        technician: &str,
        slot: Slot,
        actor: &str,
    ) -> Result<Ticket, BoardError> {
        let tech = self.known_technician(technician)?;
        self.check_slot(&tech, id, &slot)?;
        // Cluster mode: the slot is reserved fleet-wide before the visit is written, so two
        // owners booking the technician's slot at once end with one visit.
        let fw = self.tickets.fleetwide();
        let before = self.visit(id);
        let same_as_before =
            |v: &Visit| v.technician_id == tech.id && v.slot.start_ms == slot.start_ms;
        if let Some(fw) = &fw {
            if fw
                .reserve_slot(&tech.id, slot.start_ms, id)
                .map_err(CoreError::from)?
                .is_some()
            {
                return Err(BoardError::Invalid(format!(
                    "{} already has a visit at {}",
                    tech.name,
                    slot.start_ms.format()
                )));
            }
        }
        let booked = self.book(id, &tech, slot, actor);
        if let Some(fw) = &fw {
            // The reservation no visit holds any more: the new one if the booking failed, the
            // old one if it moved.
            let unheld = match &booked {
                Err(_) if !before.as_ref().is_some_and(same_as_before) => {
                    Some((tech.id.clone(), slot.start_ms))
                }
                Ok(_) => before
                    .filter(|v| !same_as_before(v))
                    .map(|v| (v.technician_id, v.slot.start_ms)),
                Err(_) => None,
            };
            if let Some((who, start)) = unheld {
                if let Err(e) = fw.release_slot(&who, start, id) {
                    tracing::warn!(ticket = id, error = %e, "a visit slot's reservation was not released");
                }
            }
        }
        booked
    }

    /// The visit's commit: the ticket scheduled, the visit written, the proposal gone.
    fn book(
        &self,
        id: &str,
        tech: &Technician,
        slot: Slot,
        actor: &str,
    ) -> Result<Ticket, BoardError> {
        let now = self.now();
        let note = format!(
            "visit booked with {} at {}",
            tech.name,
            slot.start_ms.format()
        );
        let scheduled = Transition::to(id, Status::Scheduled, actor, &note);
        self.change(scheduled, |t, tx| {
            tx.put_kv(
                &visit_key(&t.id),
                &Visit {
                    ticket_id: t.id.clone(),
                    technician_id: tech.id.clone(),
                    slot,
                    booked_at: now.format(),
                    booked_by: actor.to_string(),
                },
            );
            tx.remove_kv(&proposal_key(&t.id));
            put_assignment(tx, &t.id, tech, now, actor);
            Ok(())
        })
    }

    /// Resolves with how it ended; the outcome is the ticket's training label.
    pub fn resolve(
        &self,
        id: &str,
        how: Resolution,
        note: &str,
        actor: &str,
    ) -> Result<Ticket, BoardError> {
        let note = resolution_note(how, note);
        let t = Transition::to(id, Status::Resolved, actor, &note).outcome(Some(how.outcome()));
        // The writer's transition removes the proposal (the visit stays as history) and, in
        // cluster mode, releases the visit's slot reservation.
        self.change(t, |_, _| Ok(()))
    }

    /// Dismisses as a false alarm (the label: the prediction was wrong).
    pub fn dismiss(&self, id: &str, note: &str, actor: &str) -> Result<Ticket, BoardError> {
        let t =
            Transition::to(id, Status::Dismissed, actor, note).outcome(Some(Outcome::FalseAlarm));
        // The writer's transition removes the proposal and the visit and, in cluster mode,
        // releases the visit's slot reservation, as for a dismissal through the API.
        self.change(t, |_, _| Ok(()))
    }

    // ------------------------------------------------------------ reading

    pub fn mode_words(&self, mode: &str) -> String {
        self.tickets.notifier().templates().mode_name("en", mode)
    }

    /// The queue's rows for `tickets`, ordered, with the board's records of them
    /// ([`Board::records`]).
    pub fn rows(
        &self,
        tickets: &[Ticket],
        records: &HashMap<String, TicketRecords>,
    ) -> Vec<queue::Row> {
        let mut stories: HashMap<String, Vec<crate::notify::story::Story>> = HashMap::new();
        let techs = self.technicians();
        let mut rows: Vec<queue::Row> = tickets
            .iter()
            .map(|t| {
                let device = self.fleet.device(&t.device_id);
                let cid = t
                    .customer_id
                    .clone()
                    .or_else(|| device.as_ref().and_then(|d| d.customer_id.clone()))
                    .unwrap_or_default();
                let customer = (!cid.is_empty())
                    .then(|| self.fleet.customer(&cid))
                    .flatten();
                let story = if cid.is_empty() {
                    None
                } else {
                    let list = stories.entry(cid.clone()).or_insert_with(|| {
                        let entries = self
                            .tickets
                            .store()
                            .timeline::<TimelineEntry>(&cid)
                            .unwrap_or_default();
                        crate::notify::story::group(&entries)
                    });
                    list.iter().find(|s| s.ticket_id == t.id).cloned()
                };
                let (reached, answered) = self.contact_words(t, story.as_ref());
                let on = records.get(&t.id);
                let technician = on
                    .and_then(|r| r.assignment.as_ref())
                    .and_then(|a| techs.iter().find(|x| x.id == a.technician_id))
                    .map(|x| x.name.clone())
                    .unwrap_or_default();
                queue::Row {
                    id: t.id.clone(),
                    device_id: t.device_id.clone(),
                    customer_name: customer.map(|c| c.name).unwrap_or_default(),
                    customer_id: cid,
                    mode: t.failure_mode.clone(),
                    mode_words: self.mode_words(&t.failure_mode),
                    region: device
                        .as_ref()
                        .and_then(|d| d.attributes.get("region").cloned())
                        .unwrap_or_default(),
                    status: t.status,
                    priority: t.priority,
                    probability: t.probability,
                    predicted_ms: t.predicted_failure_at.as_deref().and_then(Timestamp::parse),
                    opened_ms: t.opened_ms,
                    deadline_ms: self.deadline(t),
                    responded: t.status != Status::Open,
                    reached,
                    answered,
                    technician,
                    visit: on.and_then(|r| r.visit.as_ref()).map(|v| v.slot),
                }
            })
            .collect();
        queue::order(&mut rows);
        rows
    }

    /// How the customer was reached and what they answered, in words.
    fn contact_words(
        &self,
        t: &Ticket,
        story: Option<&crate::notify::story::Story>,
    ) -> (String, String) {
        let reached = match story {
            Some(s) => match s.alerted_on {
                Some(ch) if s.delivered => format!("{}, delivered", ch.as_str()),
                Some(ch) => format!("{}, sent", ch.as_str()),
                None => "not reached yet".to_string(),
            },
            None => "not reached yet".to_string(),
        };
        let answer: Option<crate::notify::Answer> = self
            .tickets
            .store()
            .get_kv(&format!("notify/answer/{}", t.id))
            .ok()
            .flatten();
        let mut answered = answer
            .map(|a| format!("{} (by {})", a.answer, a.channel))
            .unwrap_or_default();
        if story.is_some_and(|s| s.needs_human) {
            if !answered.is_empty() {
                answered.push_str("; ");
            }
            answered.push_str("a message waits for a person");
        }
        (reached, answered)
    }

    /// The queue's tickets ([`Board::tickets`]); in cluster mode the fleet's, each as the owner
    /// of its device's partition has it, gathered from every instance like
    /// `GET /api/v1/tickets` with the token the person signed in with: the board works against
    /// any instance.
    pub async fn queue_tickets(
        self: &Arc<Self>,
        status: queue::StatusFilter,
        bearer: &crate::secret::Secret,
    ) -> Result<Vec<Ticket>, QueueError> {
        let fleetwide = self.tickets.fleetwide().zip(self.fleet_http.clone());
        let b = self.clone();
        let here_only = fleetwide.is_none();
        let mine = tokio::task::spawn_blocking(move || match here_only {
            true => b.tickets(status),
            // Every instance lists all it has (a stale copy's status may differ from the
            // owner's); the status applies to the merged list, as in the API.
            false => b.tickets.store().tickets(&TicketFilter {
                limit: Some(10_000),
                ..TicketFilter::default()
            }),
        })
        .await
        .map_err(|_| QueueError::Cancelled)??;
        let Some((fw, http)) = fleetwide else {
            return Ok(mine);
        };
        let headers = Self::fleet_headers(bearer);
        let (one, limit) = match status {
            queue::StatusFilter::One(s) => (Some(s), 5000),
            queue::StatusFilter::All => (None, 5000),
            queue::StatusFilter::Live => (None, usize::MAX),
        };
        let mut list = crate::api::fleet::list(
            fw.as_ref(),
            &http,
            &headers,
            "limit=10000",
            mine,
            one,
            limit,
        )
        .await
        .map_err(QueueError::Fleet)?;
        if status == queue::StatusFilter::Live {
            list.retain(Ticket::is_live);
        }
        Ok(list)
    }

    /// The API headers a fleet-wide call makes on behalf of a signed-in person: their token.
    fn fleet_headers(bearer: &crate::secret::Secret) -> axum::http::HeaderMap {
        let mut headers = axum::http::HeaderMap::new();
        if let Ok(v) = format!("Bearer {}", bearer.0).parse() {
            headers.insert(axum::http::header::AUTHORIZATION, v);
        }
        headers
    }

    /// [`Board::fleet_headers`] of an action: also the person's name, so the owner's history
    /// names them as its own board would (`board:<name>`).
    fn action_headers(bearer: &crate::secret::Secret, name: &str) -> axum::http::HeaderMap {
        let mut headers = Self::fleet_headers(bearer);
        if let Some(v) = crate::api::fleet::actor_header(name) {
            headers.insert(crate::api::fleet::ACTOR, v);
        }
        headers
    }

    /// One ticket as the board shows it: this instance's copy, or in cluster mode the fleet's
    /// (the copy of the owner of the device's partition, as `GET /api/v1/tickets/{id}` has it).
    pub async fn ticket(
        self: &Arc<Self>,
        id: &str,
        bearer: &crate::secret::Secret,
    ) -> Result<Option<Ticket>, QueueError> {
        let b = self.clone();
        let id2 = id.to_string();
        let mine = tokio::task::spawn_blocking(move || b.tickets.store().ticket(&id2))
            .await
            .map_err(|_| QueueError::Cancelled)??;
        let Some((fw, http)) = self.tickets.fleetwide().zip(self.fleet_http.clone()) else {
            return Ok(mine);
        };
        crate::api::fleet::get(fw.as_ref(), &http, &Self::fleet_headers(bearer), id, mine)
            .await
            .map_err(QueueError::Fleet)
    }

    /// A device's tickets (newest first, at most 200); in cluster mode the fleet's.
    pub async fn device_tickets(
        self: &Arc<Self>,
        device: &DeviceId,
        bearer: &crate::secret::Secret,
    ) -> Result<Vec<Ticket>, QueueError> {
        let fleetwide = self.tickets.fleetwide().zip(self.fleet_http.clone());
        let b = self.clone();
        let device2 = device.clone();
        let mine = tokio::task::spawn_blocking(move || {
            b.tickets.store().tickets(&TicketFilter {
                device_id: Some(device2),
                limit: Some(if fleetwide.is_some() { 10_000 } else { 200 }),
                ..TicketFilter::default()
            })
        })
        .await
        .map_err(|_| QueueError::Cancelled)??;
        let Some((fw, http)) = self.tickets.fleetwide().zip(self.fleet_http.clone()) else {
            return Ok(mine);
        };
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("device_id", device)
            .append_pair("limit", "10000")
            .finish();
        crate::api::fleet::list(
            fw.as_ref(),
            &http,
            &Self::fleet_headers(bearer),
            &query,
            mine,
            None,
            200,
        )
        .await
        .map_err(QueueError::Fleet)
    }

    /// A customer's tickets (newest first, at most 200) and timeline (what was sent to them and
    /// what they answered, in time order); in cluster mode the fleet's: the tickets merged as
    /// the API merges them, the timeline entries of every instance (each instance records what
    /// it sent and received).
    pub async fn customer_view(
        self: &Arc<Self>,
        customer: &str,
        bearer: &crate::secret::Secret,
    ) -> Result<(Vec<Ticket>, Vec<TimelineEntry>), QueueError> {
        let fleetwide = self.tickets.fleetwide().zip(self.fleet_http.clone());
        let b = self.clone();
        let id = customer.to_string();
        let limit = if fleetwide.is_some() { 10_000 } else { 200 };
        let (mine, mut entries) = tokio::task::spawn_blocking(move || {
            let tickets = b.tickets.store().tickets(&TicketFilter {
                customer_id: Some(id.clone()),
                limit: Some(limit),
                ..TicketFilter::default()
            })?;
            let entries = b.tickets.store().timeline::<TimelineEntry>(&id)?;
            Ok::<_, StoreError>((tickets, entries))
        })
        .await
        .map_err(|_| QueueError::Cancelled)??;
        let Some((fw, http)) = fleetwide else {
            return Ok((mine, entries));
        };
        let headers = Self::fleet_headers(bearer);
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("customer_id", customer)
            .append_pair("limit", "10000")
            .finish();
        let tickets =
            crate::api::fleet::list(fw.as_ref(), &http, &headers, &query, mine, None, 200)
                .await
                .map_err(QueueError::Fleet)?;
        /// The part of a peer's `GET /api/v1/customers/{id}/timeline` the page shows.
        #[derive(Deserialize)]
        struct PeerTimeline {
            entries: Vec<TimelineEntry>,
        }
        let path = format!(
            "/api/v1/customers/{}/timeline",
            form_urlencoded::byte_serialize(customer.as_bytes()).collect::<String>()
        );
        let others =
            crate::api::fleet::from_each::<PeerTimeline>(fw.as_ref(), &http, &headers, &path)
                .await
                .map_err(QueueError::Fleet)?;
        entries.extend(
            others
                .into_iter()
                .flat_map(|(_, t)| t.map(|t| t.entries))
                .flatten(),
        );
        entries.sort_by(|a, b| a.at.cmp(&b.at));
        Ok((tickets, entries))
    }

    /// Cluster mode: where an action on `t` must be made — `None` here, or the owner of its
    /// device's partition (name and API address) when that is another instance.
    pub fn action_owner(&self, t: &Ticket) -> Result<Option<(String, String)>, QueueError> {
        let Some(fw) = self.tickets.fleetwide() else {
            return Ok(None);
        };
        crate::api::fleet::transition_owner(fw.as_ref(), &t.device_id).map_err(QueueError::Fleet)
    }

    /// Makes `action` on ticket `id` through the owner's API (its JSON twin: a transition, an
    /// assignment, a proposal or a visit), as the signed-in person (their token, and their
    /// `name` for the history): the owner's status and body.
    pub async fn forward_action(
        &self,
        id: &str,
        action: &Action,
        owner: &str,
        api: &str,
        bearer: &crate::secret::Secret,
        name: &str,
    ) -> Result<(axum::http::StatusCode, axum::body::Bytes), QueueError> {
        let (Some(fw), Some(http)) = (self.tickets.fleetwide(), self.fleet_http.as_ref()) else {
            return Err(QueueError::Fleet(crate::api::ApiError::unavailable(
                "not in cluster mode",
            )));
        };
        let (what, body) = action.request();
        let path = format!("/api/v1/tickets/{id}/{what}");
        crate::api::fleet::post_to_owner(
            fw.as_ref(),
            http,
            &Self::action_headers(bearer, name),
            owner,
            api,
            &path,
            &body,
        )
        .await
        .map_err(QueueError::Fleet)
    }

    /// Makes `action` on ticket `id` here.
    pub fn act(&self, id: &str, action: &Action, actor: &str) -> Result<Ticket, BoardError> {
        match action {
            Action::Acknowledge { note } => self.acknowledge(id, actor, note),
            Action::Assign { technician } => self.assign(id, technician, actor),
            Action::Propose { technician, slots } => self.propose(id, technician, slots, actor),
            Action::Schedule { technician, slot } => self.schedule(id, technician, *slot, actor),
            Action::Resolve { how, note } => self.resolve(id, *how, note, actor),
            Action::Dismiss { note } => self.dismiss(id, note, actor),
        }
    }

    /// Tickets for the queue: every live one (however old), or for another status filter the
    /// newest up to a bound.
    pub fn tickets(&self, status: queue::StatusFilter) -> Result<Vec<Ticket>, StoreError> {
        let (status, limit) = match status {
            queue::StatusFilter::Live => (None, None),
            queue::StatusFilter::All => (None, Some(5000)),
            queue::StatusFilter::One(s) => (Some(s), Some(5000)),
        };
        let mut list = self.tickets.store().tickets(&TicketFilter {
            status,
            limit,
            ..TicketFilter::default()
        })?;
        list.retain(|t| limit.is_some() || t.is_live());
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolutions_become_training_labels() {
        assert_eq!(
            Resolution::FaultConfirmed.outcome(),
            Outcome::ConfirmedFault
        );
        assert_eq!(Resolution::ReplacedPart.outcome(), Outcome::ConfirmedFault);
        assert_eq!(Resolution::NoFaultFound.outcome(), Outcome::FalseAlarm);
        for r in Resolution::ALL {
            assert_eq!(Resolution::parse(r.as_str()), Some(r));
        }
        assert_eq!(Resolution::parse("fixed"), None);
    }

    #[test]
    fn a_forwarded_action_is_the_apis_twin_with_the_same_note_and_label() {
        let (route, body) = Action::Resolve {
            how: Resolution::NoFaultFound,
            note: " looked fine ".into(),
        }
        .request();
        assert_eq!(route, "transitions");
        assert_eq!(body["to"], "resolved");
        assert_eq!(body["note"], "no fault found: looked fine");
        assert_eq!(body["outcome"], "false_alarm");
        let slot = Slot {
            start_ms: Timestamp::from_millis(3_600_000),
            end_ms: Timestamp::from_millis(7_200_000),
        };
        let (route, body) = Action::Schedule {
            technician: "t1".into(),
            slot,
        }
        .request();
        assert_eq!(route, "visit");
        assert_eq!(body["technician_id"], "t1");
        let back: Slot = serde_json::from_value(body["slot"].clone()).expect("a slot");
        assert_eq!(back, slot);
        let (route, body) = Action::Dismiss { note: "n".into() }.request();
        assert_eq!(
            (route, &body["outcome"]),
            ("transitions", &serde_json::json!("false_alarm"))
        );
    }
}
