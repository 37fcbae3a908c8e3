//! The worker's own duties — due times, wake-ups, lanes, dead letters, gauges — with a scripted
//! delivery type, on paused tokio time.

use super::*;
use crate::clock::TokioClock;
use serde::Deserialize;
use std::collections::VecDeque;
use std::sync::Mutex;

const T0: i64 = 1_800_000_000_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Row {
    id: String,
    lane: String,
    due_ms: i64,
    created_ms: i64,
    attempts: u32,
}

fn row(id: &str, lane: &str, due_ms: i64) -> Row {
    Row {
        id: id.into(),
        lane: lane.into(),
        due_ms,
        created_ms: T0,
        attempts: 0,
    }
}

/// Answers each call from a script (an empty script accepts); notes who was called when.
#[derive(Default)]
struct Scripted {
    answers: Mutex<VecDeque<bool>>,
    calls: Mutex<Vec<(String, i64)>>,
    /// Rows in the queue (the one being sent included) at each call.
    queued: Mutex<Vec<usize>>,
    clock: Option<Arc<dyn Clock>>,
}

/// Three attempts, then the dead-letter queue; retries after 1 s, 2 s, 4 s… (no jitter).
const MAX_ATTEMPTS: u32 = 3;

impl Delivery for Scripted {
    type Row = Row;
    type Known = ();
    type Record = ();
    type Io = ();
    type Seen = bool;
    const QUEUE: &'static str = "test";
    const DEAD_QUEUE: Option<&'static str> = Some("test_dead");

    fn due_ms(row: &Row) -> i64 {
        row.due_ms
    }
    fn created_ms(row: &Row) -> Option<i64> {
        Some(row.created_ms)
    }
    fn lane(row: &Row) -> Option<String> {
        Some(row.lane.clone())
    }
    fn step(row: &Row, facts: &FactsOf<Self>, now_ms: i64) -> Step<Self> {
        match facts.seen.first() {
            None => (vec![Effect::Io(())], Update::Keep),
            Some(true) => (Vec::new(), Update::Remove),
            Some(false) => {
                let mut row = row.clone();
                row.attempts += 1;
                if row.attempts >= MAX_ATTEMPTS {
                    return (Vec::new(), Update::Dead(row));
                }
                row.due_ms = now_ms + 1000 * (1 << (row.attempts - 1));
                (Vec::new(), Update::Put(row))
            }
        }
    }
    fn known(&self, _: &Store, _: &Row, _: i64) -> Result<(), StoreError> {
        Ok(())
    }
    fn record(&self, _: &mut Tx, _: ()) {}
    async fn perform(&self, store: &Store, _: &[u8], row: &Row, _: &(), _: ()) -> bool {
        let at = self.clock.as_ref().map_or(0, |c| c.now_ms());
        self.queued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(store.outbox_len(Self::QUEUE));
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((row.id.clone(), at));
        self.answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
            .unwrap_or(true)
    }
}

struct Bench {
    _dir: tempfile::TempDir,
    store: Store,
    worker: Arc<Worker<Scripted>>,
}

fn bench(answers: &[bool], poll: Duration) -> Bench {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), 1 << 20).expect("store");
    let clock: Arc<dyn Clock> = TokioClock::new(T0);
    let depth = prometheus::IntGauge::new("test_depth", "rows").expect("gauge");
    let oldest = prometheus::Gauge::new("test_oldest_age_seconds", "age").expect("gauge");
    let worker = Worker {
        delivery: Scripted {
            answers: Mutex::new(answers.iter().copied().collect()),
            calls: Mutex::default(),
            queued: Mutex::default(),
            clock: Some(clock.clone()),
        },
        store: store.clone(),
        clock,
        gauges: Gauges {
            depth,
            oldest_age: Some(oldest),
        },
        wake: Arc::new(Notify::new()),
        poll,
        gate: None,
    };
    Bench {
        _dir: dir,
        store,
        worker: Arc::new(worker),
    }
}

impl Bench {
    fn push(&self, rows: &[Row]) {
        let mut tx = self.store.tx();
        for r in rows {
            tx.push_outbox("test", r);
        }
        self.store.commit(tx).expect("commit");
    }
    fn spawn(&self) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let token = CancellationToken::new();
        let w = self.worker.clone();
        let t = token.clone();
        (token, tokio::spawn(async move { w.run(t).await }))
    }
    fn calls(&self) -> Vec<(String, i64)> {
        self.worker
            .delivery
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    fn left(&self, queue: &str) -> Vec<Row> {
        self.store
            .outbox::<Row>(queue)
            .expect("outbox")
            .into_iter()
            .map(|(_, r)| r)
            .collect()
    }
    fn depth(&self) -> i64 {
        self.worker.gauges.depth.get()
    }
    fn oldest_age(&self) -> f64 {
        self.worker
            .gauges
            .oldest_age
            .as_ref()
            .map_or(f64::NAN, |g| g.get())
    }
}

/// Lets the spawned worker run to its next sleep (time stands still meanwhile).
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[test]
fn backoff_doubles_from_min_with_jitter_and_stops_at_max() {
    let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
    // (attempt, jitter) → wait: half of min·2^(n-1) at jitter 0, all of it at jitter 1.
    let table = [
        (1, 0.0, 500),
        (1, 1.0, 1_000),
        (2, 1.0, 2_000),
        (3, 0.5, 3_000),
        (4, 1.0, 8_000),
        (5, 1.0, 10_000),
        (5, 0.0, 5_000),
        (60, 1.0, 10_000),
        // Out-of-range draws are clamped, never a negative or longer wait.
        (1, -3.0, 500),
        (1, 7.0, 1_000),
    ];
    for (attempt, jitter, want) in table {
        assert_eq!(
            b.delay_ms(attempt, jitter),
            want,
            "attempt {attempt}, jitter {jitter}"
        );
    }
    // A zero minimum still waits: a failing target is never hammered.
    assert!(Backoff::new(Duration::ZERO, Duration::ZERO).delay_ms(1, 1.0) >= 1);
}

#[tokio::test(start_paused = true)]
async fn failed_calls_are_retried_at_their_backoff_due_times_then_dead_lettered() {
    let b = bench(&[false, false, false], Duration::from_secs(3600));
    b.push(&[row("a", "l", T0)]);
    let (token, job) = b.spawn();
    settle().await;
    assert_eq!(b.calls(), vec![("a".to_string(), T0)]);
    // First retry 1 s after the failure: not a millisecond earlier.
    tokio::time::advance(Duration::from_millis(999)).await;
    settle().await;
    assert_eq!(b.calls().len(), 1);
    tokio::time::advance(Duration::from_millis(1)).await;
    settle().await;
    assert_eq!(b.calls().last(), Some(&("a".to_string(), T0 + 1_000)));
    // Second retry 2 s later; that third failure uses up the attempts.
    tokio::time::advance(Duration::from_millis(2_000)).await;
    settle().await;
    assert_eq!(b.calls().last(), Some(&("a".to_string(), T0 + 3_000)));
    assert!(b.left("test").is_empty());
    let dead = b.left("test_dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, MAX_ATTEMPTS);
    // Nothing is called again, however long the worker runs.
    tokio::time::advance(Duration::from_secs(86_400)).await;
    settle().await;
    assert_eq!(b.calls().len(), 3);
    assert_eq!(b.depth(), 0);
    token.cancel();
    job.await.expect("worker stops");
}

#[tokio::test(start_paused = true)]
async fn a_deferred_row_goes_out_when_it_becomes_due_without_polling() {
    // The poll is far longer than the deferral: only the row's due time can wake the worker.
    let b = bench(&[], Duration::from_secs(86_400));
    b.push(&[row("later", "l", T0 + 3_600_000)]);
    let (token, job) = b.spawn();
    settle().await;
    assert!(b.calls().is_empty());
    assert_eq!(b.depth(), 1);
    tokio::time::advance(Duration::from_millis(3_600_000 - 1)).await;
    settle().await;
    assert!(b.calls().is_empty(), "not before it is due");
    tokio::time::advance(Duration::from_millis(1)).await;
    settle().await;
    assert_eq!(b.calls(), vec![("later".to_string(), T0 + 3_600_000)]);
    assert!(b.left("test").is_empty());
    // The gauges were read after the round: empty queue, no oldest row.
    assert_eq!(b.depth(), 0);
    assert_eq!(b.oldest_age(), 0.0);
    token.cancel();
    job.await.expect("worker stops");
}

#[tokio::test(start_paused = true)]
async fn a_commit_that_wakes_the_worker_is_delivered_at_once() {
    let b = bench(&[], Duration::from_secs(86_400));
    let (token, job) = b.spawn();
    settle().await;
    b.push(&[row("new", "l", T0)]);
    b.worker.wake.notify_one();
    settle().await;
    assert_eq!(b.calls(), vec![("new".to_string(), T0)]);
    token.cancel();
    job.await.expect("worker stops");
}

#[tokio::test(start_paused = true)]
async fn a_later_row_of_a_lane_waits_for_the_earlier_one() {
    let b = bench(&[false], Duration::from_secs(3600));
    b.push(&[
        row("first", "pump-1", T0),
        row("second", "pump-1", T0),
        row("other", "pump-2", T0),
    ]);
    b.worker.round().await;
    // The first failed and waits 1 s; its lane's next row waits behind it, another lane not.
    let names: Vec<String> = b.calls().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["first", "other"]);
    assert_eq!(b.depth(), 2);
    tokio::time::advance(Duration::from_secs(1)).await;
    b.worker.round().await;
    let names: Vec<String> = b.calls().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["first", "other", "first", "second"]);
    assert!(b.left("test").is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_oldest_age_gauge_counts_from_when_the_row_was_queued() {
    let b = bench(&[], Duration::from_secs(3600));
    b.push(&[row("later", "l", T0 + 60_000)]);
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(b.worker.round().await, Some(T0 + 60_000));
    assert_eq!(b.oldest_age(), 30.0);
}

/// A gate opened and closed by hand (cluster mode's is the instance's standing).
struct Switch(std::sync::atomic::AtomicBool);

impl Gate for Switch {
    fn open(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test(start_paused = true)]
async fn nothing_is_sent_while_the_gate_is_closed_and_every_row_once_it_opens() {
    let switch = Arc::new(Switch(std::sync::atomic::AtomicBool::new(false)));
    let mut b = bench(&[], Duration::from_secs(1));
    Arc::get_mut(&mut b.worker).expect("not shared yet").gate = Some(switch.clone());
    b.push(&[row("a", "l", T0), row("b", "m", T0)]);
    let (token, job) = b.spawn();
    for _ in 0..50 {
        tokio::time::advance(Duration::from_millis(100)).await;
        settle().await;
    }
    assert!(b.calls().is_empty(), "sent while closed: {:?}", b.calls());
    assert_eq!(b.left("test").len(), 2, "the rows stay as they were");
    switch.0.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::advance(Duration::from_millis(GATE_RETRY_MS as u64)).await;
    settle().await;
    let mut sent: Vec<String> = b.calls().into_iter().map(|(id, _)| id).collect();
    sent.sort();
    assert_eq!(sent, ["a", "b"], "each once, soon after the gate opened");
    assert!(b.left("test").is_empty());
    token.cancel();
    let _ = job.await;
}

#[tokio::test(start_paused = true)]
async fn in_cluster_mode_a_delivered_row_leaves_the_queue_before_the_next_send() {
    // A row's absence is what tells the fleet its change was sent: a removal kept for the
    // round's end would leave a sent change looking unsent while the instance is paused.
    let switch = Arc::new(Switch(std::sync::atomic::AtomicBool::new(true)));
    let mut b = bench(&[], Duration::from_secs(1));
    Arc::get_mut(&mut b.worker).expect("not shared yet").gate = Some(switch);
    b.push(&[row("a", "l", T0), row("b", "m", T0), row("c", "n", T0)]);
    b.worker.round().await;
    let queued = b
        .worker
        .delivery
        .queued
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert_eq!(
        queued,
        [3, 2, 1],
        "each send finds the rows sent before it gone"
    );
    assert!(b.left("test").is_empty());
}

#[tokio::test(start_paused = true)]
async fn alone_a_round_removes_its_delivered_rows_together_at_its_end() {
    let b = bench(&[], Duration::from_secs(1));
    b.push(&[row("a", "l", T0), row("b", "m", T0), row("c", "n", T0)]);
    b.worker.round().await;
    let queued = b
        .worker
        .delivery
        .queued
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert_eq!(
        queued,
        [3, 3, 3],
        "removed in one batch after the round's sends"
    );
    assert!(b.left("test").is_empty(), "and removed by the round's end");
}

/// A gate that reopens in a new epoch between a round's reading of its rows and its first
/// row, removing row `b` as it does — as a cluster instance's rejoin removes the rows of
/// changes another instance sent meanwhile.
struct Rejoining {
    store: Store,
    epoch_reads: std::sync::atomic::AtomicU64,
}

impl Gate for Rejoining {
    fn open(&self) -> bool {
        true
    }
    fn epoch(&self) -> u64 {
        use std::sync::atomic::Ordering::SeqCst;
        let read = self.epoch_reads.fetch_add(1, SeqCst);
        if read == 1 {
            let mut tx = self.store.tx();
            for (key, r) in self.store.outbox::<Row>("test").expect("outbox") {
                if r.id == "b" {
                    tx.remove_raw(&key);
                }
            }
            self.store.apply(tx).expect("removed");
        }
        u64::from(read >= 1)
    }
}

#[tokio::test(start_paused = true)]
async fn rows_read_before_the_gate_reopened_in_a_new_epoch_are_read_again_not_sent() {
    let mut b = bench(&[], Duration::from_secs(1));
    let gate = Arc::new(Rejoining {
        store: b.store.clone(),
        epoch_reads: Default::default(),
    });
    Arc::get_mut(&mut b.worker).expect("not shared yet").gate = Some(gate);
    b.push(&[row("a", "l", T0), row("b", "m", T0)]);
    b.worker.round().await;
    assert!(
        b.calls().is_empty(),
        "sent from a stale read: {:?}",
        b.calls()
    );
    b.worker.round().await;
    let sent: Vec<String> = b.calls().into_iter().map(|(id, _)| id).collect();
    assert_eq!(sent, ["a"], "the row removed meanwhile is never sent");
    assert!(b.left("test").is_empty());
}

/// A delivery in two steps (a poll that waits, then one that sends), counting what it did.
struct TwoSteps<'a> {
    polled: &'a std::sync::atomic::AtomicUsize,
    sent: &'a std::sync::atomic::AtomicBool,
}

impl std::future::Future for TwoSteps<'_> {
    type Output = &'static str;
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<&'static str> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.polled.fetch_add(1, SeqCst) == 0 {
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        self.sent.store(true, SeqCst);
        std::task::Poll::Ready("sent")
    }
}

/// Runs a [`TwoSteps`] delivery fenced by `open` (given the polls so far): what it answered,
/// how often it was polled, whether it sent.
async fn fenced_two_steps(open: impl Fn(usize) -> bool) -> (Option<&'static str>, usize, bool) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    let (polled, sent) = (AtomicUsize::new(0), AtomicBool::new(false));
    let io = TwoSteps {
        polled: &polled,
        sent: &sent,
    };
    let r = fenced(|| open(polled.load(SeqCst)), io).await;
    (r, polled.load(SeqCst), sent.load(SeqCst))
}

#[tokio::test]
async fn a_fenced_delivery_goes_no_further_once_the_gate_closes_between_its_polls() {
    // Open throughout: the delivery runs to its end.
    assert_eq!(fenced_two_steps(|_| true).await, (Some("sent"), 2, true));
    // Closed before it starts: never polled.
    assert_eq!(fenced_two_steps(|_| false).await, (None, 0, false));
    // Closed after its first poll (a pause past the standing while it waited): the step that
    // would send is never taken.
    assert_eq!(fenced_two_steps(|polls| polls == 0).await, (None, 1, false));
}
