//! Per-device rolling state and feature extraction, in event time. Pure: no I/O, no clock.
//!
//! The same [`DeviceState::observe`] / [`FeatureSpec::extract`] pair runs in the daemon, in
//! `forewarn train` (to build training rows) and in `forewarn evaluate` (backtests), so the three
//! compute the same numbers for the same readings.
//!
//! State per device is bounded: a ring of the last `window_readings` readings (f32 values, one
//! timestamp per slot), exponentially weighted mean/variance per metric for each span, a few
//! counters, and one clock per failure mode. With the defaults (ring of 30, spans 5/20/60) and four
//! metrics that is about 1 KiB (see `DeviceState::approx_bytes`).

mod config;

pub use config::Config;

use crate::domain::{DeviceEvent, EventKind, Reading, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

pub const HOUR_MS: f64 = 3_600_000.0;

/// Size of the dedup memory of recent timestamps, for readings that carry no `seq`.
const RECENT_TS: usize = 8;

/// Occurrences remembered per tracked event code: a count in a window saturates here.
pub const CODE_MEMORY: usize = 32;

/// The shape of the rolling windows every device keeps. Part of a model's feature spec: a model
/// can only be served by a daemon whose windows match it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowSpec {
    /// Readings kept per device in the ring window (min, max, mean, std, slope come from it).
    pub window_readings: usize,
    /// Spans, in readings, of the exponentially weighted means and deviations (alpha = 2/(span+1)).
    pub ew_spans: Vec<u32>,
    /// Spans, in hours of event time, of further EW means and deviations: a reading `dt` hours
    /// after the metric's previous one weighs 1 − e^(−2·dt/span), which at an even cadence is the
    /// reading span's alpha for span ÷ cadence readings. A baseline that covers the same stretch of
    /// time whatever the data's cadence. Their EW slots follow the reading spans' (index
    /// `ew_spans.len() + i`). Absent from artifacts trained before it existed: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ew_hours: Vec<f64>,
    /// Readings older than the newest one by more than this are dropped as late.
    pub late_tolerance_ms: i64,
}

impl Default for WindowSpec {
    fn default() -> Self {
        WindowSpec {
            window_readings: 30,
            ew_spans: vec![5, 20, 60],
            ew_hours: vec![DEFAULT_BASELINE_HOURS],
            late_tolerance_ms: 5 * 60 * 1000,
        }
    }
}

/// The default event-time baseline: a week.
pub const DEFAULT_BASELINE_HOURS: f64 = 168.0;

impl WindowSpec {
    /// EW slots per metric: the reading spans, then the event-time spans.
    pub fn ew_len(&self) -> usize {
        self.ew_spans.len() + self.ew_hours.len()
    }

    /// Whether a daemon keeping these windows computes every feature of a model trained with
    /// `trained`: the same ring, reading spans and tolerance, and the model's event-time spans
    /// leading this one's (a model from before event-time spans reads none of them).
    pub fn serves(&self, trained: &WindowSpec) -> bool {
        self.window_readings == trained.window_readings
            && self.ew_spans == trained.ew_spans
            && self.late_tolerance_ms == trained.late_tolerance_ms
            && self.ew_hours.starts_with(&trained.ew_hours)
    }

    /// The label of EW slot `i`: `60` for a reading span, `168h` for an event-time one.
    fn ew_label(&self, i: u8) -> String {
        let i = i as usize;
        match self.ew_spans.get(i) {
            Some(s) => s.to_string(),
            None => match self.ew_hours.get(i - self.ew_spans.len()) {
                Some(h) => format!("{h}h"),
                None => "0".into(),
            },
        }
    }
}

/// Interned metric names: the metrics the loaded models use, in a fixed order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricIndex {
    names: Vec<String>,
    #[serde(skip)]
    ids: HashMap<String, u16>,
}

impl MetricIndex {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Self {
        let mut idx = MetricIndex::default();
        for n in names {
            idx.intern(n.into());
        }
        idx
    }
    pub fn intern(&mut self, name: String) -> u16 {
        if let Some(&id) = self.ids.get(&name) {
            return id;
        }
        let id = self.names.len() as u16;
        self.ids.insert(name.clone(), id);
        self.names.push(name);
        id
    }
    pub fn get(&self, name: &str) -> Option<u16> {
        // A few names (the usual case, looked up for every metric of every reading): comparing
        // them beats hashing the name. Same answer as the map, which mirrors `names`.
        if self.names.len() <= 16 && self.ids.len() == self.names.len() {
            return self.names.iter().position(|n| n == name).map(|i| i as u16);
        }
        self.ids.get(name).copied()
    }
    /// [`MetricIndex::get`] looking first at id `hint` (a reading's `k`-th metric is usually
    /// the index's `k`-th: devices send their metrics in one order): one comparison instead of
    /// one per name before it. The same answer.
    pub fn get_hinted(&self, hint: usize, name: &str) -> Option<u16> {
        match self.names.get(hint) {
            Some(n) if n == name && self.ids.len() == self.names.len() => Some(hint as u16),
            _ => self.get(name),
        }
    }
    pub fn names(&self) -> &[String] {
        &self.names
    }
    pub fn len(&self) -> usize {
        self.names.len()
    }
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Rolling state of one metric of one device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MetricWindow {
    /// Values aligned with the device's timestamp ring; NaN where the reading lacked this metric.
    ring: Vec<f32>,
    /// (mean, variance) per EW span; `None` until the first value.
    ew: Vec<(f64, f64)>,
    seen: u32,
    last: f64,
}

impl MetricWindow {
    fn new(spec: &WindowSpec) -> Self {
        MetricWindow {
            ring: vec![f32::NAN; spec.window_readings],
            ew: vec![(0.0, 0.0); spec.ew_len()],
            seen: 0,
            last: f64::NAN,
        }
    }

    /// `dt_h`: hours since this metric's previous value (for the event-time spans).
    fn push(&mut self, slot: usize, v: f64, dt_h: f64, spec: &WindowSpec) {
        self.ring[slot] = v as f32;
        if self.seen == 0 {
            for e in &mut self.ew {
                *e = (v, 0.0);
            }
        } else {
            // A state stored before event-time spans were kept: they start from this value.
            if self.ew.len() < spec.ew_len() {
                self.ew.resize(spec.ew_len(), (v, 0.0));
            }
            let reading_alphas = spec.ew_spans.iter().map(|&s| 2.0 / (s as f64 + 1.0));
            let time_alphas = spec.ew_hours.iter().map(|&h| {
                if h > 0.0 && h.is_finite() {
                    1.0 - (-2.0 * dt_h.max(0.0) / h).exp()
                } else {
                    1.0
                }
            });
            for (e, a) in self.ew.iter_mut().zip(reading_alphas.chain(time_alphas)) {
                let d = v - e.0;
                let incr = a * d;
                e.0 += incr;
                e.1 = (1.0 - a) * (e.1 + d * incr);
            }
        }
        self.seen = self.seen.saturating_add(1);
        self.last = v;
    }
}

/// What happened to a reading offered to a device's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    Applied,
    /// Same `seq` (or, without `seq`, same timestamp) as one already applied: a redelivery.
    Duplicate,
    /// Older than the newest reading by more than the tolerance.
    Late,
}

/// Everything forewarn remembers about one device between readings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceState {
    pub first_ts: Timestamp,
    pub last_ts: Timestamp,
    pub last_seq: Option<u64>,
    recent_ts: [Timestamp; RECENT_TS],
    recent_head: u8,
    /// Next slot of the ring and number of filled slots.
    head: u16,
    filled: u16,
    ts_ring: Vec<Timestamp>,
    /// Indexed by `MetricIndex` id; grown on demand.
    metrics: Vec<Option<MetricWindow>>,
    /// Readings applied since the last reset of the windows.
    pub readings: u32,
    /// Per failure mode: event time of the last maintenance or failure (the mode's clock start).
    pub mode_reset: Vec<(String, Timestamp)>,
    /// Exponentially decayed count of error events (half-life one day of event time).
    pub error_rate: f64,
    pub last_error_ts: Timestamp,
    /// Event time of the last scoring, for the scoring interval.
    pub last_scored_ts: Option<Timestamp>,
    /// Per (model, mode) key, the ticket policy's memory: which of the latest 16 scorings were at
    /// or above the ticket level, one bit each, the latest in bit 0
    /// ([`crate::predict::OpenRule::remember`]). States stored when this held a count of
    /// scorings in a row read it as bits; the difference is gone after 16 scorings.
    pub streaks: Vec<(String, u16)>,
    /// Per event code the loaded models read: event times of its latest occurrences, oldest
    /// first, at most [`CODE_MEMORY`]. Codes no model reads are not kept, so the state stays
    /// bounded whatever a device logs.
    pub codes: Vec<(String, Vec<Timestamp>)>,
}

/// The layout of [`DeviceState`] before event codes were tracked, to read states stored by an
/// older daemon (postcard is not self-describing: a field added at the end changes the bytes).
#[derive(Deserialize)]
struct DeviceStateV1 {
    first_ts: Timestamp,
    last_ts: Timestamp,
    last_seq: Option<u64>,
    recent_ts: [Timestamp; RECENT_TS],
    recent_head: u8,
    head: u16,
    filled: u16,
    ts_ring: Vec<Timestamp>,
    metrics: Vec<Option<MetricWindow>>,
    readings: u32,
    mode_reset: Vec<(String, Timestamp)>,
    error_rate: f64,
    last_error_ts: Timestamp,
    last_scored_ts: Option<Timestamp>,
    streaks: Vec<(String, u16)>,
}

impl DeviceState {
    pub fn new(spec: &WindowSpec, first_ts: Timestamp) -> Self {
        DeviceState {
            first_ts,
            last_ts: Timestamp::MIN,
            last_seq: None,
            recent_ts: [Timestamp::MIN; RECENT_TS],
            recent_head: 0,
            head: 0,
            filled: 0,
            ts_ring: vec![Timestamp::EPOCH; spec.window_readings],
            metrics: Vec::new(),
            readings: 0,
            mode_reset: Vec::new(),
            error_rate: 0.0,
            last_error_ts: Timestamp::MIN,
            last_scored_ts: None,
            streaks: Vec::new(),
            codes: Vec::new(),
        }
    }

    /// The window's values of metric `id` (a [`MetricIndex`] id), oldest first, with their
    /// event times; readings that lacked the metric are left out. For charts: the board draws
    /// what drove a score from these.
    pub fn series(&self, id: u16) -> Vec<(Timestamp, f64)> {
        let n = self.ts_ring.len();
        let Some(Some(mw)) = self.metrics.get(id as usize) else {
            return Vec::new();
        };
        let filled = (self.filled as usize).min(n);
        (0..filled)
            .map(|k| (self.head as usize + n - filled + k) % n)
            .filter_map(|slot| {
                let v = *mw.ring.get(slot)?;
                (!v.is_nan()).then(|| (self.ts_ring[slot], f64::from(v)))
            })
            .collect()
    }

    /// Applies a reading unless it is a duplicate or too late. Only metrics in `index` are kept.
    pub fn observe(&mut self, r: &Reading, spec: &WindowSpec, index: &MetricIndex) -> Observed {
        if let (Some(seq), Some(last)) = (r.seq, self.last_seq) {
            if seq <= last {
                return Observed::Duplicate;
            }
        } else if r.seq.is_none() && self.recent_ts.contains(&r.ts) {
            return Observed::Duplicate;
        }
        if self.readings > 0 && r.ts < self.last_ts.saturating_sub(spec.late_tolerance_ms) {
            return Observed::Late;
        }
        if r.seq.is_some() {
            self.last_seq = r.seq;
        }
        self.recent_ts[self.recent_head as usize] = r.ts;
        self.recent_head = ((self.recent_head as usize + 1) % RECENT_TS) as u8;
        if self.readings == 0 && self.first_ts > r.ts {
            self.first_ts = r.ts;
        }
        // The device's previous reading: the fallback for a metric whose previous value has left
        // the ring.
        let prev_ts = (self.readings > 0).then_some(self.last_ts);
        self.last_ts = self.last_ts.max(r.ts);
        let n = spec.window_readings;
        if n > 0 {
            let slot = self.head as usize;
            // Earlier readings still in the ring (this one takes the oldest slot).
            let earlier = if spec.ew_hours.is_empty() {
                0
            } else {
                (self.filled as usize).min(n - 1)
            };
            self.ts_ring[slot] = r.ts;
            for m in self.metrics.iter_mut().flatten() {
                m.ring[slot] = f32::NAN;
            }
            for (k, (name, v)) in r.metrics.iter().enumerate() {
                if let Some(id) = index.get_hinted(k, name) {
                    let id = id as usize;
                    if self.metrics.len() <= id {
                        self.metrics.resize(id + 1, None);
                    }
                    let mw = self.metrics[id].get_or_insert_with(|| MetricWindow::new(spec));
                    // Hours since this metric's previous value: its newest slot in the ring,
                    // else the device's previous reading.
                    let prev = (1..=earlier)
                        .map(|k| (slot + n - k) % n)
                        .find(|&s| !mw.ring[s].is_nan())
                        .map(|s| self.ts_ring[s])
                        .or(prev_ts);
                    let dt_h = prev.map_or(0.0, |p| (r.ts - p) as f64 / HOUR_MS);
                    mw.push(slot, *v, dt_h, spec);
                }
            }
            self.head = ((slot + 1) % n) as u16;
            self.filled = (self.filled + 1).min(n as u16);
        }
        self.readings = self.readings.saturating_add(1);
        Observed::Applied
    }

    /// Whether an event at or before the newest applied event of its kind and code (the newest
    /// maintenance or failure of its mode, the newest error): an event that comes back after its
    /// release (a broker redelivery after a restart or a takeover) is such a one. Events carry no
    /// `seq`, so this is what tells a redelivery (a duplicate) from an event that came late.
    pub fn has_applied_event_like(&self, ev: &DeviceEvent) -> bool {
        match ev.kind {
            EventKind::Error => self.last_error_ts != Timestamp::MIN && ev.ts <= self.last_error_ts,
            EventKind::Maintenance | EventKind::Failure => self
                .mode_reset
                .iter()
                .any(|(m, t)| *m == ev.code && ev.ts <= *t),
        }
    }

    /// Applies a device event. Maintenance or failure restarts the mode's clock; a failure also
    /// clears the windows (the device was repaired or replaced, old readings describe another part).
    /// `tracked` lists the event codes whose occurrences the loaded models read.
    pub fn on_event(&mut self, ev: &DeviceEvent, spec: &WindowSpec, tracked: &[String]) {
        match ev.kind {
            EventKind::Error => {
                self.error_rate = self.decayed_errors(ev.ts) + 1.0;
                self.last_error_ts = self.last_error_ts.max(ev.ts);
                if tracked.contains(&ev.code) {
                    self.remember_code(&ev.code, ev.ts);
                }
            }
            EventKind::Maintenance | EventKind::Failure => {
                match self.mode_reset.iter_mut().find(|(m, _)| *m == ev.code) {
                    Some(e) => e.1 = e.1.max(ev.ts),
                    None => self.mode_reset.push((ev.code.clone(), ev.ts)),
                }
                self.streaks
                    .retain(|(k, _)| !streak_key_is_mode(k, &ev.code));
                if ev.kind == EventKind::Failure {
                    self.clear_windows(spec);
                }
            }
        }
    }

    fn remember_code(&mut self, code: &str, ts: Timestamp) {
        let pos = match self.codes.iter().position(|(c, _)| c == code) {
            Some(p) => p,
            None => {
                self.codes.push((code.to_string(), Vec::new()));
                self.codes.len() - 1
            }
        };
        let times = &mut self.codes[pos].1;
        // Events arrive in event-time order within the late tolerance: insert in place.
        let at = times.partition_point(|t| *t <= ts);
        times.insert(at, ts);
        if times.len() > CODE_MEMORY {
            times.remove(0);
        }
    }

    /// Occurrences of `code` in `(now − hours, now]` (at most [`CODE_MEMORY`]).
    pub fn code_count(&self, code: &str, hours: f64, now: Timestamp) -> f64 {
        let from = now.saturating_sub((hours * HOUR_MS) as i64);
        self.codes
            .iter()
            .find(|(c, _)| c == code)
            .map_or(0, |(_, t)| {
                t.iter().filter(|&&t| t > from && t <= now).count()
            }) as f64
    }

    /// Hours since the latest occurrence of `code` at or before `now`; `None` if none is known.
    pub fn hours_since_code(&self, code: &str, now: Timestamp) -> Option<f64> {
        let (_, times) = self.codes.iter().find(|(c, _)| c == code)?;
        let last = times.iter().rev().find(|&&t| t <= now)?;
        Some((now - *last) as f64 / HOUR_MS)
    }

    fn clear_windows(&mut self, spec: &WindowSpec) {
        self.head = 0;
        self.filled = 0;
        self.ts_ring.iter_mut().for_each(|t| *t = Timestamp::EPOCH);
        self.metrics.clear();
        self.readings = 0;
        let _ = spec;
    }

    fn decayed_errors(&self, now: Timestamp) -> f64 {
        if self.last_error_ts == Timestamp::MIN {
            return 0.0;
        }
        let dt_h = (now - self.last_error_ts).max(0) as f64 / HOUR_MS;
        self.error_rate * 0.5f64.powf(dt_h / 24.0)
    }

    /// True (and the interval restarts) when the device is due for scoring at event time `ts`.
    pub fn take_scoring_slot(&mut self, ts: Timestamp, interval_ms: i64) -> bool {
        match self.last_scored_ts {
            Some(last) if ts < last.saturating_add(interval_ms) => false,
            _ => {
                self.last_scored_ts = Some(ts);
                true
            }
        }
    }

    /// Hours since the mode's clock started: its last maintenance or failure, or the first reading.
    pub fn hours_since_reset(&self, mode: &str, now: Timestamp) -> f64 {
        let start = self
            .mode_reset
            .iter()
            .find(|(m, _)| m == mode)
            .map(|(_, t)| *t)
            .unwrap_or(self.first_ts);
        (now - start).max(0) as f64 / HOUR_MS
    }

    pub fn streak_mut(&mut self, key: &str) -> &mut u16 {
        self.streak_mut_at(usize::MAX, key)
    }

    /// [`DeviceState::streak_mut`] looking first at place `hint`, where the key usually is (a
    /// model's modes are scored in one order, so each device's streaks were made in it): one
    /// comparison instead of one per key before it.
    pub fn streak_mut_at(&mut self, hint: usize, key: &str) -> &mut u16 {
        let hinted = self.streaks.get(hint).is_some_and(|(k, _)| k == key);
        let found = if hinted {
            Some(hint)
        } else {
            self.streaks.iter().position(|(k, _)| k == key)
        };
        let pos = match found {
            Some(p) => p,
            None => {
                self.streaks.push((key.to_string(), 0));
                self.streaks.len() - 1
            }
        };
        &mut self.streaks[pos].1
    }

    fn metric(&self, id: u16) -> Option<&MetricWindow> {
        self.metrics.get(id as usize).and_then(|m| m.as_ref())
    }

    /// Filled ring slots, oldest first (at most 256: artifacts are validated to that).
    fn slots(&self) -> impl Iterator<Item = usize> + '_ {
        let n = self.ts_ring.len();
        let filled = self.filled as usize;
        let start = (self.head as usize + n - filled) % n.max(1);
        (0..filled).map(move |i| (start + i) % n)
    }

    /// Approximate heap + inline bytes of this state, for the memory budget.
    pub fn approx_bytes(&self) -> usize {
        let mut b = std::mem::size_of::<Self>() + self.ts_ring.capacity() * 8;
        b += self.metrics.capacity() * std::mem::size_of::<Option<MetricWindow>>();
        for m in self.metrics.iter().flatten() {
            b += m.ring.capacity() * 4 + m.ew.capacity() * 16;
        }
        for (k, _) in &self.mode_reset {
            b += k.capacity() + 32;
        }
        for (k, _) in &self.streaks {
            b += k.capacity() + 32;
        }
        for (k, t) in &self.codes {
            b += k.capacity() + t.capacity() * 8 + 48;
        }
        b
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Reads a stored state, in this layout or the one before event codes were tracked.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if let Ok(s) = postcard::from_bytes::<DeviceState>(bytes) {
            return Some(s);
        }
        let v1: DeviceStateV1 = postcard::from_bytes(bytes).ok()?;
        Some(DeviceState {
            first_ts: v1.first_ts,
            last_ts: v1.last_ts,
            last_seq: v1.last_seq,
            recent_ts: v1.recent_ts,
            recent_head: v1.recent_head,
            head: v1.head,
            filled: v1.filled,
            ts_ring: v1.ts_ring,
            metrics: v1.metrics,
            readings: v1.readings,
            mode_reset: v1.mode_reset,
            error_rate: v1.error_rate,
            last_error_ts: v1.last_error_ts,
            last_scored_ts: v1.last_scored_ts,
            streaks: v1.streaks,
            codes: Vec::new(),
        })
    }
}

fn streak_key_is_mode(key: &str, mode: &str) -> bool {
    key.rsplit_once('\u{1f}').map(|(_, m)| m) == Some(mode)
}

/// Key under which the policy keeps a streak: model name and failure mode.
pub fn streak_key(model: &str, mode: &str) -> String {
    format!("{model}\u{1f}{mode}")
}

/// One statistic of one metric.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "stat", content = "arg")]
pub enum MetricStat {
    Last,
    Mean,
    Std,
    Min,
    Max,
    /// Least-squares slope over the ring, per hour of event time.
    Slope,
    /// EW mean for the span at this index of `WindowSpec::ew_spans` (then of `ew_hours`).
    Ewm(u8),
    /// EW standard deviation for the span at this index.
    Ewstd(u8),
    /// Difference of two EW means (short − long): a trend that trees cannot form themselves.
    EwmDiff(u8, u8),
    /// Mean over the readings of the last this many hours of event time (within the ring).
    MeanHours(f64),
    /// Standard deviation over the readings of the last this many hours (within the ring).
    StdHours(f64),
    /// Mean over the last this many hours minus the EW mean of the span at this index: the recent
    /// level against the device's own longer baseline. Over a day-long window it is free of device
    /// offsets, slow drift and the daily cycle, which a tree cannot subtract by itself.
    MeanHoursLessEwm(f64, u8),
}

impl MetricStat {
    fn label(&self, spec: &WindowSpec) -> String {
        let span = |i: &u8| spec.ew_label(*i);
        match self {
            MetricStat::Last => "last".into(),
            MetricStat::Mean => format!("mean{}", spec.window_readings),
            MetricStat::Std => format!("std{}", spec.window_readings),
            MetricStat::Min => format!("min{}", spec.window_readings),
            MetricStat::Max => format!("max{}", spec.window_readings),
            MetricStat::Slope => format!("slope{}", spec.window_readings),
            MetricStat::Ewm(i) => format!("ewm{}", span(i)),
            MetricStat::Ewstd(i) => format!("ewstd{}", span(i)),
            MetricStat::EwmDiff(a, b) => format!("ewm{}-ewm{}", span(a), span(b)),
            MetricStat::MeanHours(h) => format!("mean{h}h"),
            MetricStat::StdHours(h) => format!("std{h}h"),
            MetricStat::MeanHoursLessEwm(h, i) => format!("mean{h}h-ewm{}", span(i)),
        }
    }
}

/// A device-level feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum DeviceFeature {
    /// Hours since the mode's last maintenance/failure (or the device's first reading).
    HoursSinceReset,
    /// Readings since the windows were last cleared.
    Readings,
    /// Decayed count of recent error events.
    ErrorRate,
    /// A numeric device attribute (NaN when missing or not a number).
    AttrNumber { name: String },
    /// 1.0 when a categorical attribute equals the value, else 0.0.
    AttrIs { name: String, value: String },
    /// Occurrences of an event code in the last `hours` of event time.
    CodeCount { code: String, hours: f64 },
    /// Hours since the event code last occurred (NaN when it has not, as far as the state knows).
    CodeHoursSince { code: String },
}

/// Which features a model reads, in order. Stored in every model artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    pub window: WindowSpec,
    /// Metrics read, in order; a metric missing from a device is NaN.
    pub metrics: Vec<String>,
    /// Statistics taken of every metric.
    pub stats: Vec<MetricStat>,
    pub device: Vec<DeviceFeature>,
}

/// Device attributes as read from the fleet registry or `devices.csv`.
pub type Attributes = std::collections::BTreeMap<String, String>;

impl FeatureSpec {
    /// The default statistics: every ring statistic, each EW mean and deviation, and short-vs-long
    /// trends.
    pub fn default_stats(window: &WindowSpec) -> Vec<MetricStat> {
        let mut stats = vec![
            MetricStat::Last,
            MetricStat::Mean,
            MetricStat::Std,
            MetricStat::Min,
            MetricStat::Max,
            MetricStat::Slope,
        ];
        let k = window.ew_spans.len().min(8) as u8;
        for i in 0..k {
            stats.push(MetricStat::Ewm(i));
            stats.push(MetricStat::Ewstd(i));
        }
        for i in 1..k {
            stats.push(MetricStat::EwmDiff(0, i));
        }
        // Every middle span against the longest too: a level shift over hours to days, with less
        // of the short span's noise.
        for i in 1..k.saturating_sub(1) {
            stats.push(MetricStat::EwmDiff(i, k - 1));
        }
        // The event-time baselines: their mean and deviation, and every reading span but the
        // shortest against the longest of them (the device against its own normal of the last
        // week, whatever the cadence).
        let hours = window.ew_hours.len().min(8) as u8;
        if hours > 0 {
            let base = k + hours - 1;
            for i in k..k + hours {
                stats.push(MetricStat::Ewm(i));
                stats.push(MetricStat::Ewstd(i));
            }
            for i in 1..k {
                stats.push(MetricStat::EwmDiff(i, base));
            }
        }
        stats
    }

    pub fn len(&self) -> usize {
        self.metrics.len() * self.stats.len() + self.device.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Feature names, aligned with [`FeatureSpec::extract`]'s output.
    pub fn names(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.len());
        for m in &self.metrics {
            for s in &self.stats {
                out.push(format!("{m}.{}", s.label(&self.window)));
            }
        }
        for d in &self.device {
            out.push(match d {
                DeviceFeature::HoursSinceReset => "hours_since_reset".into(),
                DeviceFeature::Readings => "readings".into(),
                DeviceFeature::ErrorRate => "error_rate".into(),
                DeviceFeature::AttrNumber { name } => format!("attr.{name}"),
                DeviceFeature::AttrIs { name, value } => format!("attr.{name}={value}"),
                DeviceFeature::CodeCount { code, hours } => format!("code.{code}.count{hours}h"),
                DeviceFeature::CodeHoursSince { code } => format!("code.{code}.hours_since"),
            });
        }
        out
    }

    /// The event codes this spec reads: what a device's state must track for it.
    pub fn codes(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for d in &self.device {
            if let DeviceFeature::CodeCount { code, .. } | DeviceFeature::CodeHoursSince { code } =
                d
            {
                if !out.contains(code) {
                    out.push(code.clone());
                }
            }
        }
        out
    }

    /// Positions in [`FeatureSpec::extract`]'s output of the features that depend on the failure
    /// mode (hours since the mode's reset); every other feature is the same for all modes.
    pub fn mode_positions(&self) -> Vec<usize> {
        let base = self.metrics.len() * self.stats.len();
        self.device
            .iter()
            .enumerate()
            .filter(|(_, d)| matches!(d, DeviceFeature::HoursSinceReset))
            .map(|(i, _)| base + i)
            .collect()
    }

    /// Turns a row extracted for one mode into the row [`FeatureSpec::extract`] gives for
    /// `mode`, by rewriting the `positions` from [`FeatureSpec::mode_positions`]: extracting
    /// once per model instead of once per mode.
    pub fn patch_mode(
        state: &DeviceState,
        positions: &[usize],
        mode: &str,
        now: Timestamp,
        row: &mut [f64],
    ) {
        for &p in positions {
            row[p] = state.hours_since_reset(mode, now);
        }
    }

    /// Resolves metric names to ids once, so extraction does no string lookups.
    pub fn resolve(&self, index: &MetricIndex) -> Vec<Option<u16>> {
        self.metrics.iter().map(|m| index.get(m)).collect()
    }

    /// Appends this spec's features for `state` at event time `now` to `out`.
    /// `ids` comes from [`FeatureSpec::resolve`] against the index the state was built with.
    pub fn extract(
        &self,
        state: &DeviceState,
        ids: &[Option<u16>],
        mode: &str,
        attrs: Option<&Attributes>,
        now: Timestamp,
        out: &mut Vec<f64>,
    ) {
        // Ring timestamps in hours relative to the newest, shared by every metric's slope.
        // Fixed arrays: extraction runs at every scoring and should not allocate.
        let mut t_hours: [f64; 256] = [0.0; 256];
        let mut slot_buf: [u16; 256] = [0; 256];
        let mut filled = 0;
        for (i, s) in state.slots().take(256).enumerate() {
            slot_buf[i] = s as u16;
            filled = i + 1;
        }
        let slots = &slot_buf[..filled];
        let t_end = slots
            .last()
            .map(|&s| state.ts_ring[s as usize])
            .unwrap_or(Timestamp::EPOCH);
        for (i, &s) in slots.iter().enumerate() {
            t_hours[i] = (state.ts_ring[s as usize] - t_end) as f64 / HOUR_MS;
        }
        for id in ids {
            let mw = id.and_then(|id| state.metric(id));
            let Some(mw) = mw else {
                out.extend(std::iter::repeat_n(f64::NAN, self.stats.len()));
                continue;
            };
            let ring = RingStats::compute(mw, slots, &t_hours[..slots.len()]);
            // Time windows end at `now` (the scoring's event time), not at the newest reading:
            // after a gap the window holds fewer readings, or none.
            let lag_h = (now - t_end) as f64 / HOUR_MS;
            // A time window's statistics, computed once per metric and span however many of
            // the spec's stats read them (the demo model reads the 24-hour window four times).
            let mut memo = [(0u64, RingStats::EMPTY); TIMED_MEMO];
            let mut memoized = 0;
            let mut timed = |h: f64| {
                if let Some((_, r)) = memo[..memoized].iter().find(|(b, _)| *b == h.to_bits()) {
                    return *r;
                }
                let from = slots
                    .iter()
                    .enumerate()
                    .position(|(i, _)| t_hours[i] - lag_h > -h)
                    .unwrap_or(slots.len());
                let r = RingStats::compute(mw, &slots[from..], &t_hours[from..slots.len()]);
                if let Some(m) = memo.get_mut(memoized) {
                    *m = (h.to_bits(), r);
                    memoized += 1;
                }
                r
            };
            for s in &self.stats {
                out.push(match *s {
                    MetricStat::Last => mw.last,
                    MetricStat::Mean => ring.mean,
                    MetricStat::Std => ring.std,
                    MetricStat::Min => ring.min,
                    MetricStat::Max => ring.max,
                    MetricStat::Slope => ring.slope,
                    MetricStat::Ewm(i) => mw.ew.get(i as usize).map_or(f64::NAN, |e| e.0),
                    MetricStat::Ewstd(i) => mw
                        .ew
                        .get(i as usize)
                        .map_or(f64::NAN, |e| e.1.max(0.0).sqrt()),
                    MetricStat::EwmDiff(a, b) => {
                        match (mw.ew.get(a as usize), mw.ew.get(b as usize)) {
                            (Some(x), Some(y)) => x.0 - y.0,
                            _ => f64::NAN,
                        }
                    }
                    MetricStat::MeanHours(h) => timed(h).mean,
                    MetricStat::StdHours(h) => timed(h).std,
                    MetricStat::MeanHoursLessEwm(h, i) => mw
                        .ew
                        .get(i as usize)
                        .map_or(f64::NAN, |e| timed(h).mean - e.0),
                });
            }
        }
        for d in &self.device {
            out.push(match d {
                DeviceFeature::HoursSinceReset => state.hours_since_reset(mode, now),
                DeviceFeature::Readings => state.readings as f64,
                DeviceFeature::ErrorRate => state.decayed_errors(now),
                DeviceFeature::AttrNumber { name } => attrs
                    .and_then(|a| a.get(name))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .filter(|v| v.is_finite())
                    .unwrap_or(f64::NAN),
                DeviceFeature::AttrIs { name, value } => match attrs.and_then(|a| a.get(name)) {
                    Some(v) if v == value => 1.0,
                    _ => 0.0,
                },
                DeviceFeature::CodeCount { code, hours } => state.code_count(code, *hours, now),
                DeviceFeature::CodeHoursSince { code } => {
                    state.hours_since_code(code, now).unwrap_or(f64::NAN)
                }
            });
        }
    }
}

/// Distinct time-window spans one metric's extraction remembers (more are computed each time).
const TIMED_MEMO: usize = 8;

#[derive(Clone, Copy)]
struct RingStats {
    mean: f64,
    std: f64,
    min: f64,
    max: f64,
    slope: f64,
}

impl RingStats {
    const EMPTY: RingStats = RingStats {
        mean: f64::NAN,
        std: f64::NAN,
        min: f64::NAN,
        max: f64::NAN,
        slope: f64::NAN,
    };

    fn compute(mw: &MetricWindow, slots: &[u16], t: &[f64]) -> Self {
        let (mut n, mut sx, mut sxx, mut st, mut stt, mut stx) = (0f64, 0., 0., 0., 0., 0.);
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        for (i, &s) in slots.iter().enumerate() {
            let v = mw.ring[s as usize];
            if v.is_nan() {
                continue;
            }
            let v = v as f64;
            let ti = t[i];
            n += 1.0;
            sx += v;
            sxx += v * v;
            st += ti;
            stt += ti * ti;
            stx += ti * v;
            min = min.min(v);
            max = max.max(v);
        }
        if n == 0.0 {
            return RingStats::EMPTY;
        }
        let mean = sx / n;
        let var = (sxx / n - mean * mean).max(0.0);
        let denom = n * stt - st * st;
        let slope = if n >= 2.0 && denom.abs() > 1e-12 {
            (n * stx - st * sx) / denom
        } else {
            0.0
        };
        RingStats {
            mean,
            std: var.sqrt(),
            min,
            max,
            slope,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(ts_h: i64, seq: Option<u64>, v: f64) -> Reading {
        Reading {
            device_id: crate::domain::DeviceId::parse("d").unwrap(),
            ts: Timestamp::from_millis(ts_h * 3_600_000),
            seq,
            metrics: vec![("temp".into(), v), ("other".into(), 1.0)],
        }
    }

    /// `s`'s features of `st` at hour `at_h`, no attributes.
    fn features_at(s: &FeatureSpec, st: &DeviceState, idx: &MetricIndex, at_h: i64) -> Vec<f64> {
        let mut out = Vec::new();
        let now = Timestamp::from_millis(at_h * 3_600_000);
        s.extract(st, &s.resolve(idx), "m", None, now, &mut out);
        out
    }

    fn spec() -> FeatureSpec {
        let window = WindowSpec::default();
        FeatureSpec {
            stats: FeatureSpec::default_stats(&window),
            window,
            metrics: vec!["temp".into(), "absent".into()],
            device: vec![DeviceFeature::HoursSinceReset, DeviceFeature::Readings],
        }
    }

    #[test]
    fn ring_statistics_follow_a_linear_trend() {
        let s = spec();
        let idx = MetricIndex::new(["temp"]);
        let mut st = DeviceState::new(&s.window, Timestamp::EPOCH);
        for h in 0..50 {
            assert_eq!(
                st.observe(&reading(h, None, 2.0 * h as f64), &s.window, &idx),
                Observed::Applied
            );
        }
        let out = features_at(&s, &st, &idx, 49);
        let names = s.names();
        assert_eq!(out.len(), names.len());
        let get = |n: &str| out[names.iter().position(|x| x == n).unwrap()];
        assert_eq!(get("temp.last"), 98.0);
        assert_eq!(get("temp.min30"), 40.0);
        assert_eq!(get("temp.max30"), 98.0);
        assert!((get("temp.slope30") - 2.0).abs() < 1e-6);
        assert!((get("temp.mean30") - 69.0).abs() < 1e-6);
        assert!(get("absent.last").is_nan());
        assert_eq!(get("hours_since_reset"), 49.0);
        assert_eq!(get("readings"), 50.0);
    }

    #[test]
    fn each_time_window_stat_reads_its_own_span_however_the_spans_repeat_and_interleave() {
        let window = WindowSpec::default();
        let s = FeatureSpec {
            stats: vec![
                MetricStat::MeanHours(3.0),
                MetricStat::MeanHours(24.0),
                MetricStat::StdHours(3.0),
                MetricStat::StdHours(24.0),
                MetricStat::MeanHoursLessEwm(24.0, 0),
                MetricStat::MeanHours(3.0),
                MetricStat::MeanHours(12.0),
            ],
            window: window.clone(),
            metrics: vec!["temp".into(), "other".into()],
            device: vec![],
        };
        let idx = MetricIndex::new(["temp", "other"]);
        let mut st = DeviceState::new(&window, Timestamp::EPOCH);
        for h in 0..30i64 {
            st.observe(&reading(h, None, h as f64), &window, &idx);
        }
        let out = features_at(&s, &st, &idx, 29);
        // The readings of the last `h` hours, (29 − h, 29]: 27..=29, 6..=29, 18..=29.
        let ewm = st.metric(0).unwrap().ew[0].0;
        let std24 = ((24.0f64 * 24.0 - 1.0) / 12.0).sqrt();
        let want = [
            28.0,
            17.5,
            (2.0f64 / 3.0).sqrt(),
            std24,
            17.5 - ewm,
            28.0,
            23.5,
        ];
        for (i, w) in want.iter().enumerate() {
            assert!((out[i] - w).abs() < 1e-9, "temp stat {i}: {} ≠ {w}", out[i]);
        }
        // The second metric is constant: its own windows, not the first metric's.
        assert_eq!(&out[7..9], &[1.0, 1.0]);
        assert!(out[9].abs() < 1e-9 && out[10].abs() < 1e-9);
        assert_eq!(out[12], 1.0);
        assert_eq!(out[13], 1.0);
    }

    #[test]
    fn a_series_is_the_window_oldest_first_after_the_ring_wraps() {
        let s = spec();
        let idx = MetricIndex::new(["temp"]);
        let mut st = DeviceState::new(&s.window, Timestamp::EPOCH);
        let n = s.window.window_readings as i64;
        for h in 0..n + 5 {
            st.observe(&reading(h, None, h as f64), &s.window, &idx);
        }
        let series = st.series(idx.get("temp").unwrap());
        assert_eq!(series.len(), n as usize);
        assert_eq!(series[0], (Timestamp::from_millis(5 * 3_600_000), 5.0));
        assert_eq!(
            series.last().copied(),
            Some((Timestamp::from_millis((n + 4) * 3_600_000), (n + 4) as f64))
        );
        assert!(st.series(7).is_empty());
    }

    #[test]
    fn day_level_against_the_baseline_ignores_a_device_offset_and_sees_a_shift() {
        let window = WindowSpec::default();
        let s = FeatureSpec {
            stats: vec![MetricStat::MeanHoursLessEwm(24.0, 2)],
            window: window.clone(),
            metrics: vec!["temp".into()],
            device: vec![],
        };
        let idx = MetricIndex::new(["temp"]);
        let feature = |offset: f64, shift: f64| {
            let mut st = DeviceState::new(&window, Timestamp::EPOCH);
            for h in 0..200i64 {
                // A daily cycle, the device's offset, and a shift over the last day.
                let daily = 5.0 * (h as f64 * std::f64::consts::TAU / 24.0).sin();
                let v = 50.0 + offset + daily + if h >= 176 { shift } else { 0.0 };
                st.observe(&reading(h, None, v), &window, &idx);
            }
            let out = features_at(&s, &st, &idx, 199);
            out[0]
        };
        let healthy = feature(0.0, 0.0);
        assert!(healthy.abs() < 1.0, "{healthy}");
        // The ring keeps f32 values: equal up to their rounding.
        assert!((feature(37.0, 0.0) - healthy).abs() < 1e-3);
        // The EW baseline follows the shift too (about half of it after a day at span 60): a
        // sizable part of it still shows.
        assert!(feature(37.0, 4.0) - healthy > 1.2);
        assert_eq!(s.names(), vec!["temp.mean24h-ewm60".to_string()]);
    }

    /// The event-time baseline after a level step, fed at `cadence_s` seconds per reading.
    fn baseline_after_a_step(cadence_s: i64, readings_per_gap: i64) -> (f64, String) {
        let window = WindowSpec::default();
        let s = FeatureSpec {
            stats: vec![MetricStat::Ewm(window.ew_spans.len() as u8)],
            window: window.clone(),
            metrics: vec!["temp".into()],
            device: vec![],
        };
        let idx = MetricIndex::new(["temp"]);
        let mut st = DeviceState::new(&window, Timestamp::EPOCH);
        let week_ms = 168 * 3_600_000;
        let step_ms = cadence_s * 1000;
        let mut ts = 0;
        // Two weeks at 10, then one week at 20; every `readings_per_gap`-th reading is missing.
        let mut i = 0;
        while ts <= 3 * week_ms {
            let v = if ts < 2 * week_ms { 10.0 } else { 20.0 };
            if readings_per_gap == 0 || i % readings_per_gap != 0 {
                let r = Reading {
                    device_id: crate::domain::DeviceId::parse("d").unwrap(),
                    ts: Timestamp::from_millis(ts),
                    seq: None,
                    metrics: vec![("temp".into(), v)],
                };
                st.observe(&r, &window, &idx);
            }
            ts += step_ms;
            i += 1;
        }
        let mut out = Vec::new();
        s.extract(&st, &s.resolve(&idx), "m", None, st.last_ts, &mut out);
        (out[0], s.names()[0].clone())
    }

    #[test]
    fn the_event_time_baseline_covers_the_same_time_at_any_cadence() {
        // After a week at the new level an EW of span one week (weight e^(-2) left on the old
        // level) sits near 20 − 10·e^(−2) ≈ 18.6, at an hourly or a one-minute cadence, with or
        // without missing readings; the reading spans would not (span 60 is an hour at 1/min).
        let expected = 20.0 - 10.0 * (-2.0f64).exp();
        for (cadence, gaps) in [(3600, 0), (60, 0), (3600, 4), (600, 3)] {
            let (v, name) = baseline_after_a_step(cadence, gaps);
            assert!(
                (v - expected).abs() < 0.15,
                "cadence {cadence}s gaps {gaps}: {v}"
            );
            assert_eq!(name, "temp.ewm168h");
        }
    }

    #[test]
    fn windows_from_before_event_time_spans_load_and_are_served() {
        // An artifact's window spec as written before `ew_hours` existed.
        let old: WindowSpec = serde_json::from_str(
            r#"{"window_readings":30,"ew_spans":[5,20,60],"late_tolerance_ms":300000}"#,
        )
        .unwrap();
        assert!(old.ew_hours.is_empty());
        let daemon = WindowSpec::default();
        assert!(daemon.serves(&old));
        assert!(daemon.serves(&daemon));
        // It re-serialises as before.
        assert!(!serde_json::to_string(&old).unwrap().contains("ew_hours"));
        // A model needing a baseline the daemon does not keep is refused.
        assert!(!old.serves(&daemon));
        let other = WindowSpec {
            ew_hours: vec![24.0],
            ..WindowSpec::default()
        };
        assert!(!daemon.serves(&other));
        // The reading spans' features are the same whether or not the daemon keeps baselines.
        let stats = FeatureSpec::default_stats(&old);
        let spec = |w: &WindowSpec| FeatureSpec {
            stats: stats.clone(),
            window: w.clone(),
            metrics: vec!["temp".into()],
            device: vec![],
        };
        let idx = MetricIndex::new(["temp"]);
        let run = |w: &WindowSpec| {
            let mut st = DeviceState::new(w, Timestamp::EPOCH);
            for h in 0..100 {
                st.observe(&reading(h * 2 + h % 3, None, (h as f64).sin()), w, &idx);
            }
            let mut out = Vec::new();
            spec(w).extract(&st, &spec(w).resolve(&idx), "m", None, st.last_ts, &mut out);
            out
        };
        assert_eq!(run(&old), run(&daemon));
        // A stored state without the baseline slots gains them on its next reading.
        let mut st = DeviceState::new(&old, Timestamp::EPOCH);
        st.observe(&reading(1, None, 3.0), &old, &idx);
        st.observe(&reading(2, None, 5.0), &daemon, &idx);
        let full = FeatureSpec {
            stats: FeatureSpec::default_stats(&daemon),
            window: daemon.clone(),
            metrics: vec!["temp".into()],
            device: vec![],
        };
        let mut out = Vec::new();
        full.extract(&st, &full.resolve(&idx), "m", None, st.last_ts, &mut out);
        assert!(out.iter().all(|v| v.is_finite()), "{out:?}");
    }

    #[test]
    fn redelivered_and_late_readings_are_not_applied() {
        let w = WindowSpec::default();
        let idx = MetricIndex::new(["temp"]);
        let mut st = DeviceState::new(&w, Timestamp::EPOCH);
        assert_eq!(
            st.observe(&reading(10, Some(1), 1.0), &w, &idx),
            Observed::Applied
        );
        assert_eq!(
            st.observe(&reading(10, Some(1), 1.0), &w, &idx),
            Observed::Duplicate
        );
        assert_eq!(
            st.observe(&reading(11, None, 1.0), &w, &idx),
            Observed::Applied
        );
        assert_eq!(
            st.observe(&reading(11, None, 1.0), &w, &idx),
            Observed::Duplicate
        );
        assert_eq!(st.observe(&reading(2, None, 1.0), &w, &idx), Observed::Late);
        assert_eq!(st.readings, 2);
    }

    #[test]
    fn a_hint_finds_what_the_plain_lookup_finds_wherever_it_points() {
        // Few names (compared) and many (hashed), Thai and Persian among them.
        for n in [3usize, 40] {
            let mut names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
            names[1] = "อุณหภูมิ".into();
            names[2] = "دما".into();
            let idx = MetricIndex::new(names.clone());
            for name in names.iter().map(String::as_str).chain(["absent", "دم", ""]) {
                for hint in [0, 1, 2, n - 1, n, usize::MAX] {
                    assert_eq!(
                        idx.get_hinted(hint, name),
                        idx.get(name),
                        "{name} at {hint}"
                    );
                }
            }
        }
        let w = WindowSpec::default();
        let mut st = DeviceState::new(&w, Timestamp::EPOCH);
        *st.streak_mut("a") = 1;
        *st.streak_mut("ب") = 2;
        for hint in [0, 1, 2, usize::MAX] {
            assert_eq!(*st.streak_mut_at(hint, "a"), 1);
            assert_eq!(*st.streak_mut_at(hint, "ب"), 2);
        }
        *st.streak_mut_at(0, "ค") = 3;
        assert_eq!(st.streaks.len(), 3, "a key not there is added once");
        assert_eq!(*st.streak_mut_at(2, "ค"), 3);
    }

    #[test]
    fn maintenance_restarts_the_mode_clock_and_state_round_trips() {
        let w = WindowSpec::default();
        let idx = MetricIndex::new(["temp"]);
        let mut st = DeviceState::new(&w, Timestamp::EPOCH);
        st.observe(&reading(5, None, 1.0), &w, &idx);
        *st.streak_mut(&streak_key("m1", "bearing")) = 3;
        st.on_event(
            &DeviceEvent {
                device_id: crate::domain::DeviceId::parse("d").unwrap(),
                ts: Timestamp::from_millis(8 * 3_600_000),
                kind: EventKind::Maintenance,
                code: "bearing".into(),
            },
            &w,
            &[],
        );
        assert_eq!(
            st.hours_since_reset("bearing", Timestamp::from_millis(10 * 3_600_000)),
            2.0
        );
        assert_eq!(
            st.hours_since_reset("other", Timestamp::from_millis(10 * 3_600_000)),
            10.0
        );
        assert!(st.streaks.is_empty());
        // NaN slots make `==` useless here: compare the encodings.
        let back = DeviceState::decode(&st.encode()).unwrap();
        assert_eq!(back.encode(), st.encode());
        assert_eq!(
            back.hours_since_reset("bearing", Timestamp::from_millis(10 * 3_600_000)),
            2.0
        );
    }

    #[test]
    fn an_event_at_or_before_the_newest_applied_of_its_kind_is_known() {
        let w = WindowSpec::default();
        let mut st = DeviceState::new(&w, Timestamp::EPOCH);
        let ev = |h: i64, kind, code: &str| DeviceEvent {
            device_id: crate::domain::DeviceId::parse("d").unwrap(),
            ts: Timestamp::from_millis(h * 3_600_000),
            kind,
            code: code.into(),
        };
        assert!(!st.has_applied_event_like(&ev(1, EventKind::Error, "e1")));
        st.on_event(&ev(8, EventKind::Maintenance, "bearing"), &w, &[]);
        st.on_event(&ev(9, EventKind::Error, "e1"), &w, &[]);
        assert!(st.has_applied_event_like(&ev(8, EventKind::Maintenance, "bearing")));
        assert!(st.has_applied_event_like(&ev(8, EventKind::Failure, "bearing")));
        assert!(!st.has_applied_event_like(&ev(8, EventKind::Failure, "motor")));
        assert!(!st.has_applied_event_like(&ev(9, EventKind::Maintenance, "bearing")));
        assert!(st.has_applied_event_like(&ev(9, EventKind::Error, "e7")));
        assert!(!st.has_applied_event_like(&ev(10, EventKind::Error, "e1")));
    }

    #[test]
    fn default_state_for_four_metrics_stays_under_two_kib() {
        let w = WindowSpec::default();
        let idx = MetricIndex::new(["a", "b", "c", "d"]);
        let mut st = DeviceState::new(&w, Timestamp::EPOCH);
        for h in 0..100 {
            let r = Reading {
                device_id: crate::domain::DeviceId::parse("d").unwrap(),
                ts: Timestamp::from_millis(h * 60_000),
                seq: Some(h as u64),
                metrics: vec![
                    ("a".into(), 1.0),
                    ("b".into(), 2.0),
                    ("c".into(), 3.0),
                    ("d".into(), 4.0),
                ],
            };
            st.observe(&r, &w, &idx);
        }
        assert!(st.approx_bytes() < 2048, "{}", st.approx_bytes());
    }
}
