//! The durable outbox: one worker for every kind of delivery.
//!
//! A delivery (field-service dispatch, a customer notification) is a row in a store queue,
//! written in the same commit as the change it announces. What happens to a row is decided by
//! a pure step of its [`Delivery`] type — `step(&row, &facts, now) -> (effects, update)`, no
//! I/O — and carried out here: the [`Worker`] reads the due rows, gathers the facts, commits
//! the update together with the step's [`Effect::Record`]s, and only then makes the step's
//! [`Effect::Io`] calls, whose reports come back as facts for the next step of the same row.
//! So an attempt is durable before it leaves (crash recovery can find it), and a row is removed
//! only by a step that saw its delivery succeed.
//!
//! The worker owns what every queue shares: due times (it sleeps until the next one, or until a
//! commit wakes it), per-lane commit order, the backoff draw, the dead-letter queue and the
//! depth and oldest-age gauges. The split follows rumqttc's `state.rs` (state changes, no
//! network) and `eventloop.rs` (the network, driving the state).

use crate::clock::Clock;
use crate::store::{Store, StoreError, Tx};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What a step asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect<R, I> {
    /// Recorded in the commit that carries the row's update (store writes, counters, logs):
    /// nothing leaves the process.
    Record(R),
    /// A call to the outside, made once that commit is durable; its report is a fact of the
    /// row's next step.
    Io(I),
}

/// What becomes of the row, committed with the step's records.
#[derive(Debug, Clone, PartialEq)]
pub enum Update<R> {
    /// Unchanged (waiting for something that wakes the worker, e.g. a broker connection).
    Keep,
    /// Rewritten: progress, an attempt recorded before a send, a new due time.
    Put(R),
    /// Delivered, or nothing left to deliver: removed.
    Remove,
    /// Given up: moved to the queue's dead-letter queue.
    Dead(R),
}

/// Everything a step may look at besides its row and the time.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts<K, S> {
    /// What the row's type read about it before the first step (store, desk, connection).
    pub known: K,
    /// What the previous step's I/O reported, in effect order; empty on a row's first step.
    pub seen: Vec<S>,
    /// A uniform draw in [0, 1) for backoff jitter: drawn by the worker so steps stay
    /// deterministic.
    pub jitter: f64,
}

impl<K, S> Facts<K, S> {
    pub fn new(known: K) -> Self {
        Facts {
            known,
            seen: Vec::new(),
            jitter: 0.0,
        }
    }
    pub fn seen(mut self, seen: Vec<S>) -> Self {
        self.seen = seen;
        self
    }
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }
}

/// The step of a delivery type: what to do and what the row becomes.
pub type Step<D> = (
    Vec<Effect<<D as Delivery>::Record, <D as Delivery>::Io>>,
    Update<<D as Delivery>::Row>,
);

/// The facts of a delivery type.
pub type FactsOf<D> = Facts<<D as Delivery>::Known, <D as Delivery>::Seen>;

/// One kind of outbox row: its pure step, and the executors of its effects.
pub trait Delivery: Sync {
    type Row: Serialize + DeserializeOwned + Clone + Send + Sync;
    /// What is read about a row before its first step.
    type Known: Send + Sync;
    type Record: Send;
    type Io: Send;
    /// What an I/O effect reports.
    type Seen: Send + Sync;

    /// The store queue of the rows.
    const QUEUE: &'static str;
    /// Where rows that gave up go (`None`: a step of this type never answers [`Update::Dead`]).
    const DEAD_QUEUE: Option<&'static str>;

    /// Wall time (epoch ms) before which the row is not stepped.
    fn due_ms(row: &Self::Row) -> i64;
    /// When the row was queued (the oldest-age gauge), if known.
    fn created_ms(row: &Self::Row) -> Option<i64>;
    /// A faster read of a stored row than decoding its JSON, for the layouts the type writes
    /// itself; `None` (the default) has the row decoded as JSON, which quarantines a row that
    /// cannot be read.
    fn read_row(_bytes: &[u8]) -> Option<Self::Row> {
        None
    }
    /// Rows of one lane go out in commit order: a later row waits while an earlier one stays.
    fn lane(_row: &Self::Row) -> Option<String> {
        None
    }

    /// The pure decision: no I/O, no clock, no randomness but `facts.jitter`.
    fn step(row: &Self::Row, facts: &FactsOf<Self>, now_ms: i64) -> Step<Self>;

    /// Reads what the step needs to know about a row (a read error leaves the row for the next
    /// round).
    fn known(&self, store: &Store, row: &Self::Row, now_ms: i64)
        -> Result<Self::Known, StoreError>;
    /// Executes a record into the commit (store writes) or the process (counters, logs).
    fn record(&self, tx: &mut Tx, record: Self::Record);
    /// Executes a call to the outside; `row` is the row as just committed.
    fn perform(
        &self,
        store: &Store,
        key: &[u8],
        row: &Self::Row,
        known: &Self::Known,
        io: Self::Io,
    ) -> impl Future<Output = Self::Seen> + Send;
}

/// Exponential backoff with jitter, in whole milliseconds: between half and all of
/// `min·2^(attempt-1)`, capped at `max` (`jitter` in [0, 1) picks the point).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max }
    }

    /// The wait after the `attempt`-th failure (1-based).
    pub fn delay_ms(&self, attempt: u32, jitter: f64) -> i64 {
        let min = ms(self.min).max(1);
        let max = ms(self.max).max(min);
        let exp = min
            .saturating_mul(1i64 << attempt.saturating_sub(1).min(30))
            .min(max);
        ((exp as f64) * (0.5 + 0.5 * jitter.clamp(0.0, 1.0))) as i64
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The gauges of one queue.
#[derive(Clone)]
pub struct Gauges {
    pub depth: prometheus::IntGauge,
    /// Seconds since the oldest row was queued (not kept for every queue).
    pub oldest_age: Option<prometheus::Gauge>,
}

impl Gauges {
    fn set<D: Delivery + ?Sized>(&self, rows: &[(Vec<u8>, D::Row)], now_ms: i64) {
        self.depth.set(rows.len() as i64);
        if let Some(g) = &self.oldest_age {
            let oldest = rows.iter().filter_map(|(_, r)| D::created_ms(r)).min();
            g.set(oldest.map_or(0.0, |o| (now_ms - o).max(0) as f64 / 1000.0));
        }
    }
}

/// Whether this process may send now. Cluster mode closes it while the instance's membership
/// is not known live (`crate::cluster`): a process that wakes from a pause longer than its
/// lease sends nothing before it has rejoined and dropped the rows of the changes another
/// instance took over and sent meanwhile. Checked before each row and again just before its
/// I/O (after the commit of the attempt, which can take a while): a send whose request had
/// started to leave when the pause began is not stopped (nothing in the process can stop it).
pub trait Gate: Send + Sync {
    fn open(&self) -> bool;
    /// Changes each time the gate opens again after the rows may have been changed behind the
    /// worker's back (cluster mode: each rejoin, which removes rows sent elsewhere): rows read
    /// in one epoch are not sent in another, but read again.
    fn epoch(&self) -> u64 {
        0
    }
}

/// How soon a worker whose gate is closed looks again.
const GATE_RETRY_MS: i64 = 100;

/// A row whose steps keep asking for I/O is left for the next round after this many (logged):
/// a row takes two steps today (the attempt, the report).
const MAX_STEPS: usize = 8;

/// Runs a delivery type's rows: [`Worker::round`] once (tests stepping delivery by hand) or
/// [`Worker::run`] until shutdown.
pub struct Worker<D> {
    pub delivery: D,
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub gauges: Gauges,
    /// Notified by commits that add rows (and whatever else a waiting row waits for).
    pub wake: Arc<Notify>,
    /// The longest sleep between rounds, however far the next due row: rows committed without
    /// a wake-up are found within it.
    pub poll: Duration,
    /// Nothing is sent while it is closed (`None`: always open).
    pub gate: Option<Arc<dyn Gate>>,
}

impl<D: Delivery> Worker<D> {
    /// Rounds until `shutdown`: after each, sleeps until the next due row, a wake-up or `poll`.
    pub async fn run(&self, shutdown: CancellationToken) {
        loop {
            let next_due = self.round().await;
            let wait = match next_due {
                Some(due) => Duration::from_millis(
                    u64::try_from(due.saturating_sub(self.clock.now_ms())).unwrap_or(0),
                )
                .min(self.poll),
                None => self.poll,
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One pass: every due row is stepped until it asks for no more I/O. Answers the due time
    /// of the earliest row left waiting for its time.
    pub async fn round(&self) -> Option<i64> {
        // Before the rows are read: a gate that reopened since may have seen some removed.
        let epoch = self.gate.as_ref().map(|g| g.epoch());
        let rows = match self.store.outbox_read::<D::Row>(D::QUEUE, D::read_row) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(queue = D::QUEUE, error = %e, "outbox unreadable");
                return None;
            }
        };
        self.gauges.set::<D>(&rows, self.clock.now_ms());
        let mut blocked: HashSet<String> = HashSet::new();
        let mut next_due: Option<i64> = None;
        let mut handled = false;
        // The removals of rows delivered this round that record nothing else, applied together
        // at the round's end (before its flush): one store batch instead of one per row. Not
        // used in cluster mode (see `handle`).
        let mut removed = self.store.tx();
        for (key, row) in rows {
            if !self.may_send(epoch) {
                // Looked at again shortly (read afresh); the rows stay as they are.
                next_due = Some(self.clock.now_ms() + GATE_RETRY_MS);
                break;
            }
            let lane = D::lane(&row);
            if lane.as_ref().is_some_and(|l| blocked.contains(l)) {
                continue;
            }
            let due = D::due_ms(&row);
            if due > self.clock.now_ms() {
                next_due = Some(next_due.map_or(due, |n| n.min(due)));
                blocked.extend(lane);
                continue;
            }
            handled = true;
            match self.handle(&key, row, epoch, &mut removed).await {
                Ok(None) => {}
                Ok(Some((left, rewritten))) => {
                    // A row rewritten due now (the next channel of a fallback) goes in the next
                    // round at once; one left unchanged waits for a wake-up or the poll.
                    let due = D::due_ms(&left);
                    if rewritten || due > self.clock.now_ms() {
                        next_due = Some(next_due.map_or(due, |n| n.min(due)));
                    }
                    blocked.extend(lane);
                }
                Err(e) => {
                    tracing::error!(queue = D::QUEUE, error = %e, "outbox row could not be updated");
                    blocked.extend(lane);
                }
            }
        }
        if !removed.is_empty() {
            if let Err(e) = self.store.apply(removed) {
                // Left in the queue: sent again next round, as at-least-once allows.
                tracing::error!(queue = D::QUEUE, error = %e, "delivered outbox rows could not be removed");
            }
        }
        if handled {
            // Final updates were applied without waiting for the disk (below): one flush for
            // the round. A crash before it repeats those deliveries, as at-least-once allows.
            if let Err(e) = self.store.flush() {
                tracing::error!(queue = D::QUEUE, error = %e, "outbox flush failed");
            }
            if self.gauges.oldest_age.is_none() {
                // The depth alone: counting the rows needs none of them decoded.
                self.gauges
                    .depth
                    .set(self.store.outbox_len(D::QUEUE) as i64);
            } else if let Ok(rows) = self.store.outbox_read::<D::Row>(D::QUEUE, D::read_row) {
                self.gauges.set::<D>(&rows, self.clock.now_ms());
            }
        }
        next_due
    }

    /// Whether the gate is open in the epoch the round read its rows in.
    fn may_send(&self, epoch: Option<u64>) -> bool {
        self.gate
            .as_ref()
            .is_none_or(|g| g.open() && Some(g.epoch()) == epoch)
    }

    /// Steps one due row until it waits; answers the row if it stays in the queue, and whether
    /// it was rewritten. Outside cluster mode a removal that records nothing else goes into
    /// `removed` (applied by the round); any other update is applied here.
    async fn handle(
        &self,
        key: &[u8],
        mut row: D::Row,
        epoch: Option<u64>,
        removed: &mut Tx,
    ) -> Result<Option<(D::Row, bool)>, StoreError> {
        let d = &self.delivery;
        let known = d.known(&self.store, &row, self.clock.now_ms())?;
        let mut facts = Facts::new(known).jitter(rand::random::<f64>());
        let mut rewritten = false;
        for _ in 0..MAX_STEPS {
            let (effects, update) = D::step(&row, &facts, self.clock.now_ms());
            let mut tx = self.store.tx();
            let mut io = Vec::new();
            for e in effects {
                match e {
                    Effect::Record(r) => d.record(&mut tx, r),
                    Effect::Io(i) => io.push(i),
                }
            }
            let left = match update {
                Update::Keep => Some(row),
                Update::Put(r) => {
                    tx.put_outbox_row(key, &r);
                    rewritten = true;
                    Some(r)
                }
                // Nothing else to write: removed with the round's other removals. Not in
                // cluster mode (a gate): there a row's absence is what tells the fleet that
                // its change was sent (`App::sent_claims`), and an instance paused between a
                // send and the round's end would leave sent rows looking unsent, for another
                // instance to take over and send again.
                Update::Remove if tx.is_empty() && self.gate.is_none() => {
                    removed.remove_raw(key);
                    return Ok(None);
                }
                Update::Remove => {
                    tx.remove_raw(key);
                    None
                }
                Update::Dead(r) => {
                    match D::DEAD_QUEUE {
                        Some(q) => {
                            tx.push_outbox(q, &r);
                        }
                        None => tracing::error!(
                            queue = D::QUEUE,
                            "a row gave up on a queue without a dead-letter queue: removed"
                        ),
                    }
                    tx.remove_raw(key);
                    None
                }
            };
            let Some(current) = left else {
                // Removed: I/O asked for with a removal has nothing to report to.
                self.store.apply(tx)?;
                return Ok(None);
            };
            if io.is_empty() {
                self.store.apply(tx)?;
                return Ok(Some((current, rewritten)));
            }
            // Durable before anything leaves: after a crash the next round sees the attempt.
            // (Nothing written: the row itself was flushed when the round read it.)
            if !tx.is_empty() {
                self.store.commit(tx)?;
            }
            if !self.may_send(epoch) {
                // Closed during the commit (a pause, a lapse): nothing leaves; the row stays,
                // its attempt counted, and is looked at again once the gate opens.
                return Ok(Some((current, rewritten)));
            }
            let mut seen = Vec::with_capacity(io.len());
            for i in io {
                let perform = d.perform(&self.store, key, &current, &facts.known, i);
                let Some(s) = fenced(|| self.may_send(epoch), perform).await else {
                    // Closed while it was under way (a pause past the standing): what had not
                    // left stays unsent; the row stays, its attempt counted, as above.
                    return Ok(Some((current, rewritten)));
                };
                seen.push(s);
            }
            facts.seen = seen;
            row = current;
        }
        tracing::error!(
            queue = D::QUEUE,
            "outbox row still asking for I/O after {MAX_STEPS} steps: left for the next round"
        );
        Ok(Some((row, rewritten)))
    }
}

/// Runs `io` only while `open` holds when it is polled: checked before every poll, so a process
/// paused (SIGSTOP, a stall) past its standing while a delivery was under way — connecting, or
/// between an MQTT publish and a webhook post — takes it no further once it wakes (`None`).
/// What the I/O had already handed to the kernel or to a connection's own task before the pause
/// still goes out: at least once, as a receiver expects.
async fn fenced<T>(open: impl Fn() -> bool, io: impl std::future::Future<Output = T>) -> Option<T> {
    let mut io = std::pin::pin!(io);
    std::future::poll_fn(|cx| {
        if !open() {
            return std::task::Poll::Ready(None);
        }
        io.as_mut().poll(cx).map(Some)
    })
    .await
}

#[cfg(test)]
mod tests;
