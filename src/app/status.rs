//! What the writer reports about the stream and the daemon's health ([`Signals`]), the
//! [`Monitor`] handle the API reads it through, and the broker session check.

use super::commit::Tally;
use super::state::clip;
use super::{App, Fleetwide};
use crate::domain::{DeviceId, Timestamp};
use crate::engine::Scoring;
use crate::ingest::decode::Reject;
use crate::ingest::mqtt::ConnectionObserver;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
    #[schema(value_type = String)]
    pub device_id: DeviceId,
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
pub(super) struct WatchEntry {
    mode: String,
    probability: f64,
    since: Timestamp,
    scored: Timestamp,
}

pub(super) fn new_watch(s: &Scoring) -> WatchEntry {
    WatchEntry {
        mode: s.mode.to_string(),
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
pub(super) enum LossNote {
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
#[derive(Default)]
pub(super) struct LogBudget {
    minute: i64,
    used: u32,
    suppressed: u64,
}

impl LogBudget {
    /// Whether one more line of `what` may be logged this minute (at most `per_minute`); at the
    /// turn of the minute says how many were held back.
    pub(super) fn allow(&mut self, now_ms: i64, per_minute: u32, what: &str) -> bool {
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

impl App {
    /// The broker's count of dropped publishes (broker-wide): kept, exported, and a rise since
    /// forewarn first heard it logged, within the per-minute budget.
    pub(super) fn broker_drops(&self, payload: &[u8]) {
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
            let mut l = self.signals.loss.lock();
            let (first, last) = l.broker_dropped.unwrap_or((n, n));
            l.broker_dropped = Some((first, n));
            n > last
        };
        let now = self.now_ms();
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
    pub(super) fn sparkplug_gap(
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
            ts: Timestamp::from_millis(received_ms).format(),
            noticed_at: Timestamp::from_millis(self.now_ms()).format(),
        };
        self.signals
            .gaps
            .lock()
            .insert(g.node_id.clone(), gap.clone());
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
    pub(super) fn note_loss(&self, device: &str, note: LossNote) {
        let now = self.now_ms();
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
        *self.signals.session_note.lock() = note;
        if known.as_ref() != Some(&mark) {
            let mut tx = self.store.tx();
            tx.put_kv(BROKER_SESSION_KEY, &mark);
            if let Err(e) = self.store.commit(tx) {
                tracing::warn!("could not record the broker session: {e}");
            }
        }
    }

    /// Updates the watch list from one reading's scorings: a mode at or above its watch level
    /// is listed (or its entry refreshed), one below it is dropped. The device's entry is
    /// looked up once for all its modes.
    pub(super) fn note_watches(&self, scored: &[Scoring]) {
        let mut all = self.signals.watches.lock();
        for same in scored.chunk_by(|a, b| a.device_id == b.device_id) {
            let Some(first) = same.first() else {
                continue;
            };
            let device = first.device_id.as_str();
            if !all.contains_key(device) {
                if !same.iter().any(|s| s.watch) {
                    continue;
                }
                all.insert(first.device_id.clone(), Vec::new());
            }
            let Some(list) = all.get_mut(device) else {
                continue;
            };
            for s in same {
                match list.iter().position(|w| *w.mode == *s.mode) {
                    Some(i) if s.watch => {
                        list[i].probability = s.probability;
                        list[i].scored = s.ts;
                    }
                    Some(i) => {
                        list.swap_remove(i);
                        self.metrics
                            .watched_devices
                            .with_label_values(&[&*s.mode])
                            .dec();
                    }
                    None if s.watch => {
                        list.push(new_watch(s));
                        self.metrics
                            .watched_devices
                            .with_label_values(&[&*s.mode])
                            .inc();
                    }
                    None => {}
                }
            }
            if list.is_empty() {
                all.remove(device);
            }
        }
    }

    /// Drops a device's watches (the device was forgotten).
    pub(super) fn forget_watches(&self, device: &str) {
        if let Some(list) = self.signals.watches.lock().remove(device) {
            for w in list {
                self.metrics
                    .watched_devices
                    .with_label_values(&[w.mode.as_str()])
                    .dec();
            }
        }
    }

    /// Empties the watch list (the models changed).
    pub(super) fn clear_watches(&self) {
        let mut all = self.signals.watches.lock();
        for w in all.values().flatten() {
            self.metrics
                .watched_devices
                .with_label_values(&[w.mode.as_str()])
                .dec();
        }
        all.clear();
    }

    pub(super) fn reject(&self, topic: &str, payload: &[u8], rej: &Reject) {
        self.metrics
            .rejected
            .with_label_values(&[rej.reason.as_str()])
            .inc();
        let now = self.now_ms();
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
            received_at: Timestamp::from_millis(now).format(),
            topic: clip(topic, 200).to_string(),
            reason: rej.reason.as_str(),
            detail: clip(&rej.detail, 500).to_string(),
            payload_prefix: String::from_utf8_lossy(prefix).into_owned(),
        };
        let mut q = self.signals.rejects.lock();
        while q.len() >= cap {
            q.pop_front();
        }
        q.push_back(rec);
    }

    /// The broker connection flag: set by the MQTT driver's observer, read by the dispatch
    /// worker (retained publishes wait for the broker) and by [`Monitor`].
    pub fn broker_flag(&self) -> &Arc<AtomicBool> {
        &self.signals.broker_connected
    }

    /// Recorded by the commit loop after each commit attempt.
    pub fn set_store_writable(&self, ok: bool) {
        self.signals.store_writable.store(ok, Ordering::Relaxed);
    }
}

/// What the processor and the MQTT driver report and the API reads (`/readyz`, loss, gaps,
/// watches, rejects): each piece behind its own small lock, apart from the writer's core, so a
/// read never waits for a group's commit or flush.
pub(super) struct Signals {
    pub(super) rejects: Mutex<VecDeque<RejectRecord>>,
    /// Each device's last `seq` gap (bounded by the devices seen; dropped when forgotten).
    pub(super) gaps: Mutex<HashMap<String, Gap>>,
    /// Per device, the modes it is watched for (bounded by devices × modes; dropped when the
    /// device is forgotten or its score falls below the watch level).
    pub(super) watches: Mutex<HashMap<DeviceId, Vec<WatchEntry>>>,
    pub(super) loss: Mutex<Loss>,
    /// What the session check at the first broker connection found amiss, for `/readyz`.
    pub(super) session_note: Mutex<Option<String>>,
    /// Kept by the MQTT driver's connection observer; shared with the dispatch worker, which
    /// holds retained publishes while the broker is away.
    pub(super) broker_connected: Arc<AtomicBool>,
    pub(super) models_ready: AtomicBool,
    /// Kept by the commit loop: false from a failed commit until one succeeds (or the store is
    /// reopened).
    pub(super) store_writable: AtomicBool,
}

impl Signals {
    pub(super) fn new(gaps: HashMap<String, Gap>) -> Signals {
        Signals {
            rejects: Mutex::new(VecDeque::new()),
            gaps: Mutex::new(gaps),
            watches: Mutex::new(HashMap::new()),
            loss: Mutex::new(Loss::default()),
            session_note: Mutex::new(None),
            broker_connected: Arc::new(AtomicBool::new(false)),
            models_ready: AtomicBool::new(true),
            store_writable: AtomicBool::new(true),
        }
    }
}

/// The API's read-only view of the daemon's health and of what the stream lost: readiness,
/// loss, gaps, watches, recent rejects and (in cluster mode) the partition assignment.
#[derive(Clone)]
pub struct Monitor {
    signals: Arc<Signals>,
    fleetwide: Option<Arc<dyn Fleetwide>>,
}

impl Monitor {
    pub(super) fn new(signals: Arc<Signals>, fleetwide: Option<Arc<dyn Fleetwide>>) -> Monitor {
        Monitor { signals, fleetwide }
    }

    /// Cluster mode's view of the fleet, when it is on.
    pub fn fleetwide(&self) -> Option<&dyn Fleetwide> {
        self.fleetwide.as_deref()
    }

    /// Whether the models loaded (at start, and after every reload).
    pub fn models_ready(&self) -> bool {
        self.signals.models_ready.load(Ordering::Relaxed)
    }

    /// Whether the last commit (or reopening) of the store succeeded.
    pub fn store_writable(&self) -> bool {
        self.signals.store_writable.load(Ordering::Relaxed)
    }

    /// Whether the MQTT connection is up.
    pub fn broker_connected(&self) -> bool {
        self.signals.broker_connected.load(Ordering::Relaxed)
    }

    /// What the session check found amiss at start, if anything.
    pub fn session_note(&self) -> Option<String> {
        self.signals.session_note.lock().clone()
    }

    /// Upstream loss since start.
    pub fn loss(&self) -> Loss {
        *self.signals.loss.lock()
    }

    /// Each device's last `seq` gap, by device id.
    pub fn gaps(&self) -> Vec<Gap> {
        let mut v: Vec<Gap> = self.signals.gaps.lock().values().cloned().collect();
        v.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        v
    }

    /// Every watched device and mode, by device id then mode.
    pub fn watches(&self) -> Vec<Watch> {
        let mut v: Vec<Watch> = self
            .signals
            .watches
            .lock()
            .iter()
            .flat_map(|(device, list)| {
                list.iter().map(move |w| Watch {
                    device_id: device.clone(),
                    mode: w.mode.clone(),
                    probability: w.probability,
                    since: w.since.format(),
                    scored_at: w.scored.format(),
                })
            })
            .collect();
        v.sort_by(|a, b| (&a.device_id, &a.mode).cmp(&(&b.device_id, &b.mode)));
        v
    }

    /// Recent rejects, newest first.
    pub fn rejects(&self) -> Vec<RejectRecord> {
        self.signals.rejects.lock().iter().rev().cloned().collect()
    }
}

/// What the MQTT driver reports, kept by the writer: the connection flag and counts, the
/// session check at the first connection, a wake-up for the dispatcher.
struct BrokerObserver {
    app: Arc<App>,
    /// The broker and client id, for the session check at the first connection.
    broker: String,
    client_id: String,
    checked: AtomicBool,
}

impl App {
    /// The MQTT driver's observer, for a connection to `broker` as `client_id`.
    pub fn broker_observer(
        self: &Arc<Self>,
        broker: &str,
        client_id: &str,
    ) -> Arc<dyn ConnectionObserver> {
        // Unknown until the broker publishes its count (a broker without `$SYS` never does).
        self.metrics.broker_dropped.set(-1);
        Arc::new(BrokerObserver {
            app: self.clone(),
            broker: broker.to_string(),
            client_id: client_id.to_string(),
            checked: AtomicBool::new(false),
        })
    }
}

impl ConnectionObserver for BrokerObserver {
    fn connected(&self, session_present: bool) {
        if !self.checked.swap(true, Ordering::Relaxed) {
            self.app
                .check_session(session_present, &self.broker, &self.client_id);
        }
        self.app.broker_flag().store(true, Ordering::Relaxed);
        self.app.metrics.broker_connected.set(1);
        self.app.metrics.broker_connects.inc();
        // Retained ticket publishes that waited for the broker can go now.
        self.app.dispatch_wake.notify_one();
    }

    fn disconnected(&self, error: &str) {
        if self.app.broker_flag().swap(false, Ordering::Relaxed) {
            self.app.metrics.broker_disconnects.inc();
            tracing::warn!("disconnected from broker: {error}");
        }
        self.app.metrics.broker_connected.set(0);
    }

    fn closed(&self) {
        if self.app.broker_flag().swap(false, Ordering::Relaxed) {
            tracing::info!("disconnected from broker: shutting down");
        }
        self.app.metrics.broker_connected.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scoring(device: &str, mode: &str, probability: f64, hour: i64, watch: bool) -> Scoring {
        Scoring {
            device_id: DeviceId::parse(device).expect("id"),
            ts: Timestamp::from_millis(hour * 3_600_000),
            mode: Arc::from(mode),
            probability,
            ttf_hours: None,
            watch,
        }
    }

    /// Asserts the watch list: (device, mode, probability, since hour, scored hour), sorted.
    #[track_caller]
    fn assert_listed(app: &App, want: &[(&str, &str, f64, i64, i64)]) {
        let hour = |t: Timestamp| t.as_millis() / 3_600_000;
        let mut got: Vec<(String, String, f64, i64, i64)> = app
            .signals
            .watches
            .lock()
            .iter()
            .flat_map(|(d, list)| {
                list.iter().map(move |w| {
                    (
                        d.to_string(),
                        w.mode.clone(),
                        w.probability,
                        hour(w.since),
                        hour(w.scored),
                    )
                })
            })
            .collect();
        got.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let want: Vec<(String, String, f64, i64, i64)> = want
            .iter()
            .map(|&(d, m, p, since, scored)| (d.to_string(), m.to_string(), p, since, scored))
            .collect();
        assert_eq!(got, want);
    }

    fn gauge(app: &App, mode: &str) -> i64 {
        app.metrics.watched_devices.with_label_values(&[mode]).get()
    }

    #[test]
    fn each_scoring_lists_refreshes_or_drops_its_mode_and_a_device_with_none_left_goes() {
        let dir = tempfile::tempdir().expect("dir");
        let app = super::super::testkit::writer(dir.path());
        // Hour 1: modes a and b of d1 reach their watch level, c does not; d2's x does.
        app.note_watches(&[
            scoring("d1", "a", 0.5, 1, true),
            scoring("d1", "b", 0.6, 1, true),
            scoring("d1", "c", 0.1, 1, false),
            scoring("d2", "x", 0.7, 1, true),
        ]);
        assert_listed(
            &app,
            &[
                ("d1", "a", 0.5, 1, 1),
                ("d1", "b", 0.6, 1, 1),
                ("d2", "x", 0.7, 1, 1),
            ],
        );
        // Hour 2: a stays (refreshed, listed since hour 1), b falls below, c rises.
        app.note_watches(&[
            scoring("d1", "a", 0.55, 2, true),
            scoring("d1", "b", 0.2, 2, false),
            scoring("d1", "c", 0.4, 2, true),
        ]);
        assert_listed(
            &app,
            &[
                ("d1", "a", 0.55, 1, 2),
                ("d1", "c", 0.4, 2, 2),
                ("d2", "x", 0.7, 1, 1),
            ],
        );
        // Hour 3: a and c fall below, then a rises again in the same call (a device emptied
        // and listed again by one call keeps the one entry).
        app.note_watches(&[
            scoring("d1", "a", 0.1, 3, false),
            scoring("d1", "c", 0.1, 3, false),
            scoring("d1", "a", 0.8, 3, true),
        ]);
        assert_listed(&app, &[("d1", "a", 0.8, 3, 3), ("d2", "x", 0.7, 1, 1)]);
        // Hour 4: d1's last mode falls below: the device leaves the list.
        app.note_watches(&[scoring("d1", "a", 0.1, 4, false)]);
        assert_listed(&app, &[("d2", "x", 0.7, 1, 1)]);
        assert!(!app.signals.watches.lock().contains_key("d1"));
        for (mode, n) in [("a", 0), ("b", 0), ("c", 0), ("x", 1)] {
            assert_eq!(
                gauge(&app, mode),
                n,
                "forewarn_watched_devices of mode {mode}"
            );
        }
        // A device not listed whose scorings are all below: nothing listed, nothing counted.
        app.note_watches(&[scoring("d3", "a", 0.1, 4, false)]);
        assert_listed(&app, &[("d2", "x", 0.7, 1, 1)]);
    }
}
