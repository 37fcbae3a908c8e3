//! A deterministic simulated fleet: devices that wear out, get serviced and fail. Pure: no I/O
//! except the CSV writer at the bottom, no clock, no global randomness.
//!
//! Every device reports four metrics once per `interval` of event time. Each device carries a wear
//! level per failure mode that grows at a device-specific speed (its model type and install year
//! change the speed); the wear shows in a mode-specific combination of metrics, growing steeply as
//! it nears 1.0, under sensor noise and a daily cycle. When wear crosses 1.0 the device fails (a
//! `failure` event), is repaired and the mode's wear starts again near zero. Maintenance visits
//! find and fix worn parts (a `maintenance` event per mode fixed). Error codes occur more often as
//! a device wears. On request a small fraction of payloads is malformed, as real fleets send them.
//!
//! The same seed gives the same stream, byte for byte: tests, benchmarks, the demo and `forewarn
//! simulate` can all rely on it. The generator uses its own small PRNG (SplitMix64) so the stream
//! does not change when a dependency does.

// Modes, metrics and their tables are parallel arrays indexed together: index loops read best.
#![allow(clippy::needless_range_loop)]

pub mod realistic;

use crate::domain::{DeviceEvent, DeviceId, EventKind, Reading, Timestamp};
use crate::features::Attributes;
use crate::history::{DeviceWriter, EventWriter, TelemetryWriter};
use crate::ingest::encode::telemetry_payload;
use std::collections::VecDeque;
use std::path::Path;

/// The metrics every simulated device reports, in payload order.
pub const METRICS: [&str; 4] = ["temperature", "vibration", "pressure", "current"];

/// The failure modes the fleet suffers from.
pub const MODES: [&str; 3] = ["bearing_wear", "overheating", "seal_leak"];

/// Device model types (the `model` attribute).
pub const MODELS: [&str; 3] = ["m100", "m200", "m300"];

/// Error codes carried by `error` events.
pub const ERROR_CODES: [&str; 3] = ["E101", "E204", "E310"];

const HOUR_MS: f64 = 3_600_000.0;

/// How each mode's wear shows in each metric (added at full wear, before the steepening curve).
/// Rows are modes, columns [`METRICS`]. Each mode has its own signature, so a model can tell
/// them apart: bearings shake, overheating runs hot and draws current, a leaking seal loses pressure.
const SIGNATURE: [[f64; 4]; 3] = [
    // temperature, vibration, pressure, current
    [4.0, 6.0, 0.0, 0.6],
    [22.0, 0.3, 0.0, 2.5],
    [1.0, 0.8, -18.0, 1.2],
];

/// Sensor noise (standard deviation) per metric.
const NOISE: [f64; 4] = [0.8, 0.15, 1.0, 0.2];

/// Healthy baseline per metric, before per-device variation.
const BASELINE: [f64; 4] = [60.0, 2.0, 100.0, 10.0];

/// Mean hours from new to failure per mode, before model and age factors.
const MEAN_LIFE_HOURS: [f64; 3] = [2400.0, 1500.0, 3200.0];

/// Life multiplier per (model type, mode): each model type has its weak spot.
const MODEL_LIFE: [[f64; 3]; 3] = [[1.0, 1.0, 1.0], [1.2, 0.6, 1.1], [0.8, 1.3, 0.6]];

/// Configuration of a simulated fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    pub devices: usize,
    pub seed: u64,
    /// Event time of the first tick.
    pub start_ms: Timestamp,
    /// Event time between two readings of one device.
    pub interval_ms: i64,
    /// Number of ticks (readings per device) to generate.
    pub ticks: u64,
    /// Fraction of readings replaced by a malformed payload (0 in CSV files).
    pub malformed_fraction: f64,
    /// Mean event time between two maintenance visits of one device.
    pub maintenance_every_ms: i64,
    /// Error events per device-hour for a new device (grows with wear).
    pub error_rate_per_hour: f64,
    /// Device ids are `{id_prefix}{n:06}`; a prefix that makes them invalid device ids (a `/`,
    /// `+`, `#`, whitespace or a control character) leaves the fleet empty.
    pub id_prefix: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            devices: 100,
            seed: 1,
            // 2025-01-01T00:00:00Z
            start_ms: Timestamp::from_millis(1_735_689_600_000),
            interval_ms: 3_600_000,
            ticks: 24 * 30,
            malformed_fraction: 0.0,
            maintenance_every_ms: 45 * 24 * 3_600_000,
            error_rate_per_hour: 0.0005,
            id_prefix: "dev-".into(),
        }
    }
}

impl SimConfig {
    /// A fleet of `devices` reporting hourly for `days` days.
    pub fn hourly(devices: usize, days: u64, seed: u64) -> SimConfig {
        SimConfig {
            devices,
            seed,
            ticks: days * 24,
            ..SimConfig::default()
        }
    }

    /// Event time of the tick after the last one.
    pub fn end_ms(&self) -> Timestamp {
        self.start_ms
            .saturating_add(self.interval_ms.saturating_mul(self.ticks as i64))
    }
}

/// One item of the simulated stream.
#[derive(Debug, Clone, PartialEq)]
pub enum SimEvent {
    Reading(Reading),
    Event(DeviceEvent),
    /// A payload a real device might send that forewarn must reject (and keep going).
    Malformed {
        device_id: String,
        payload: Vec<u8>,
    },
}

impl SimEvent {
    pub fn device_id(&self) -> &str {
        match self {
            SimEvent::Reading(r) => &r.device_id,
            SimEvent::Event(e) => &e.device_id,
            SimEvent::Malformed { device_id, .. } => device_id,
        }
    }
}

/// Static facts about a simulated device.
#[derive(Debug, Clone, PartialEq)]
pub struct SimDevice {
    pub id: String,
    /// Index into [`MODELS`].
    pub model: usize,
    pub install_year: u16,
}

impl SimDevice {
    /// The device's attributes as `devices.csv` lists them.
    pub fn attributes(&self) -> Attributes {
        let mut a = Attributes::new();
        a.insert("model".into(), MODELS[self.model].into());
        a.insert("install_year".into(), self.install_year.to_string());
        a
    }
}

/// SplitMix64: tiny, fast, and fixed forever, so a seed always means the same fleet.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// A pair of independent standard normals (Box–Muller).
    fn normal2(&mut self) -> (f64, f64) {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        (r * c, r * s)
    }
    fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }
}

/// Moving parts of one device.
#[derive(Debug, Clone)]
struct DeviceSim {
    info: SimDevice,
    /// `info.id` as the readings and events carry it.
    key: DeviceId,
    baseline: [f64; 4],
    /// Wear per mode: 0 is new, 1.0 is failure.
    wear: [f64; 3],
    /// Wear gained per hour of event time, per mode.
    rate: [f64; 3],
    next_maintenance: Timestamp,
    seq: u64,
}

/// The simulated fleet: an iterator of [`SimEvent`] in event-time order (non-decreasing `ts`).
///
/// Per tick, devices are visited in id order; a device's reading comes first, then the events it
/// caused at the same event time (its failure, maintenance, errors).
#[derive(Debug, Clone)]
pub struct Fleet {
    cfg: SimConfig,
    devices: Vec<DeviceSim>,
    rng: Rng,
    tick: u64,
    next_device: usize,
    /// Daily temperature swing for the current tick (same for the whole fleet).
    ambient: f64,
    pending: VecDeque<SimEvent>,
}

impl Fleet {
    pub fn new(cfg: SimConfig) -> Fleet {
        let mut rng = Rng(cfg.seed ^ 0x5EED_F04E_3A11);
        let width = cfg.devices.saturating_sub(1).to_string().len().max(6);
        let mut devices = Vec::with_capacity(cfg.devices);
        for i in 0..cfg.devices {
            let model = rng.below(MODELS.len());
            let install_year = 2012 + rng.below(13) as u16;
            let age = (2025 - install_year as i32).max(0) as f64;
            let mut baseline = BASELINE;
            for (k, b) in baseline.iter_mut().enumerate() {
                let (z, _) = rng.normal2();
                *b += z * NOISE[k] * 2.0 + if k == 0 { model as f64 * 3.0 } else { 0.0 };
            }
            let mut wear = [0.0; 3];
            let mut rate = [0.0; 3];
            for m in 0..3 {
                let (z, _) = rng.normal2();
                // Older devices wear faster; every unit differs a little (log-normal spread).
                let life = MEAN_LIFE_HOURS[m]
                    * MODEL_LIFE[model][m]
                    * (1.0 - 0.03 * age).max(0.5)
                    * (0.35 * z).exp();
                rate[m] = 1.0 / life.max(24.0);
                // Devices are in service already: a fleet in steady state has its wear spread over
                // the whole range, so failures arrive from the first day, not in one later wave.
                wear[m] = rng.uniform() * 0.98;
            }
            let next_maintenance =
                cfg.start_ms + (rng.uniform() * cfg.maintenance_every_ms as f64) as i64;
            let id = format!("{}{:0width$}", cfg.id_prefix, i);
            let Ok(key) = DeviceId::parse(&id) else {
                continue;
            };
            devices.push(DeviceSim {
                key,
                info: SimDevice {
                    id,
                    model,
                    install_year,
                },
                baseline,
                wear,
                rate,
                next_maintenance,
                seq: 0,
            });
        }
        Fleet {
            cfg,
            devices,
            rng,
            tick: 0,
            next_device: 0,
            ambient: 0.0,
            pending: VecDeque::with_capacity(8),
        }
    }

    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// The fleet's devices and their attributes.
    pub fn devices(&self) -> impl Iterator<Item = &SimDevice> {
        self.devices.iter().map(|d| &d.info)
    }

    /// Current wear of a device per mode (for tests and demos that want the ground truth).
    pub fn wear(&self, device: usize) -> Option<[f64; 3]> {
        self.devices.get(device).map(|d| d.wear)
    }

    /// Readings this stream will hold in total (malformed payloads included).
    pub fn total_readings(&self) -> u64 {
        self.cfg.ticks.saturating_mul(self.cfg.devices as u64)
    }

    /// Advances one device by one tick, queueing what it emits.
    fn step(&mut self, i: usize, ts: Timestamp) {
        let cfg = &self.cfg;
        let rng = &mut self.rng;
        let d = &mut self.devices[i];
        let dt_h = cfg.interval_ms as f64 / HOUR_MS;
        for m in 0..3 {
            d.wear[m] += d.rate[m] * dt_h * (0.5 + rng.uniform());
        }
        // Metric values: baseline + ambient + each mode's signature, steepening near failure.
        let mut v = d.baseline;
        v[0] += self.ambient;
        let mut worst: f64 = 0.0;
        for m in 0..3 {
            let w = d.wear[m].min(1.2);
            worst = worst.max(w);
            let s = w * w * w;
            for k in 0..4 {
                v[k] += SIGNATURE[m][k] * s;
            }
        }
        let (n0, n1) = rng.normal2();
        let (n2, n3) = rng.normal2();
        for (k, n) in [n0, n1, n2, n3].into_iter().enumerate() {
            v[k] = ((v[k] + n * NOISE[k]) * 1000.0).round() / 1000.0;
        }
        d.seq += 1;
        let device_id = d.key.clone();
        if cfg.malformed_fraction > 0.0 && rng.uniform() < cfg.malformed_fraction {
            let payload = malformed_payload(rng.below(6), ts, d.seq, &v);
            self.pending.push_back(SimEvent::Malformed {
                device_id: d.info.id.clone(),
                payload,
            });
        } else {
            self.pending.push_back(SimEvent::Reading(Reading {
                device_id: device_id.clone(),
                ts,
                seq: Some(d.seq),
                metrics: METRICS
                    .iter()
                    .zip(v)
                    .map(|(n, x)| (n.to_string(), x))
                    .collect(),
            }));
        }
        let event = |kind, code: &str| {
            SimEvent::Event(DeviceEvent {
                device_id: device_id.clone(),
                ts,
                kind,
                code: code.to_string(),
            })
        };
        for m in 0..3 {
            if d.wear[m] >= 1.0 {
                // Repaired on the spot: a new part starts nearly unworn.
                d.wear[m] = rng.uniform() * 0.05;
                self.pending.push_back(event(EventKind::Failure, MODES[m]));
            }
        }
        if ts >= d.next_maintenance {
            // A technician finds worn parts more reliably the more worn they are.
            for m in 0..3 {
                if d.wear[m] > 0.3 && rng.uniform() < d.wear[m] {
                    d.wear[m] = rng.uniform() * 0.05;
                    self.pending
                        .push_back(event(EventKind::Maintenance, MODES[m]));
                }
            }
            d.next_maintenance =
                ts + ((0.5 + rng.uniform()) * cfg.maintenance_every_ms as f64) as i64;
        }
        let p_err = cfg.error_rate_per_hour * dt_h * (1.0 + 30.0 * worst.powi(4));
        if rng.uniform() < p_err {
            let code = ERROR_CODES[rng.below(ERROR_CODES.len())];
            self.pending.push_back(event(EventKind::Error, code));
        }
    }
}

impl Iterator for Fleet {
    type Item = SimEvent;

    fn next(&mut self) -> Option<SimEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            if self.tick >= self.cfg.ticks || self.devices.is_empty() {
                return None;
            }
            let ts = self.cfg.start_ms + self.cfg.interval_ms * self.tick as i64;
            if self.next_device == 0 {
                let hour_of_day = (ts.as_millis().rem_euclid(86_400_000)) as f64 / HOUR_MS;
                self.ambient = 3.0 * (std::f64::consts::TAU * (hour_of_day - 9.0) / 24.0).sin();
            }
            let i = self.next_device;
            self.step(i, ts);
            self.next_device += 1;
            if self.next_device == self.devices.len() {
                self.next_device = 0;
                self.tick += 1;
            }
        }
    }
}

/// A malformed payload of one of six kinds, each of which the decoder must reject.
fn malformed_payload(kind: usize, ts: Timestamp, seq: u64, v: &[f64; 4]) -> Vec<u8> {
    let ms = ts.as_millis();
    match kind {
        // Cut off mid-way, as by a dropped connection.
        0 => {
            let full = telemetry_payload(
                ts,
                Some(seq),
                METRICS.iter().copied().zip(v.iter().copied()),
            );
            full[..full.len() / 2].to_vec()
        }
        // A sensor reporting a string.
        1 => format!(r#"{{"ts":{ms},"seq":{seq},"metrics":{{"temperature":"ERR"}}}}"#).into_bytes(),
        // No metrics at all.
        2 => format!(r#"{{"ts":{ms},"seq":{seq},"metrics":{{}}}}"#).into_bytes(),
        // A clock that lost its mind.
        3 => format!(
            r#"{{"ts":"soon","seq":{seq},"metrics":{{"pressure":{}}}}}"#,
            v[2]
        )
        .into_bytes(),
        // Firmware writing Latin-1.
        4 => vec![b'{', 0xff, 0xfe, b'}'],
        // Infinity is not JSON.
        _ => format!(r#"{{"ts":{ms},"metrics":{{"current":1e999}}}}"#).into_bytes(),
    }
}

/// What [`write_csv`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CsvSummary {
    pub devices: usize,
    pub readings: u64,
    pub failures: u64,
    pub maintenance: u64,
    pub errors: u64,
}

/// Writes the fleet's history in the contract's CSV layout: `telemetry.csv`, `events.csv` and
/// `devices.csv` in `dir` (created if missing). Malformed payloads have no CSV form and are not
/// generated. `progress` is called with the number of readings written so far, now and then.
pub fn write_csv(
    dir: &Path,
    cfg: &SimConfig,
    mut progress: impl FnMut(u64),
) -> std::io::Result<CsvSummary> {
    std::fs::create_dir_all(dir)?;
    let cfg = SimConfig {
        malformed_fraction: 0.0,
        ..cfg.clone()
    };
    let fleet = Fleet::new(cfg);
    let mut sum = CsvSummary {
        devices: fleet.devices.len(),
        ..CsvSummary::default()
    };
    let open = |name: &str| -> std::io::Result<std::io::BufWriter<std::fs::File>> {
        Ok(std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(dir.join(name))?,
        ))
    };
    let mut dev = DeviceWriter::new(open("devices.csv")?, &["model", "install_year"])?;
    for d in fleet.devices() {
        dev.row(&d.id, &[MODELS[d.model], &d.install_year.to_string()])?;
    }
    dev.finish()?;
    let mut tel = TelemetryWriter::new(open("telemetry.csv")?, &METRICS)?;
    let mut evs = EventWriter::new(open("events.csv")?)?;
    for item in fleet {
        match item {
            SimEvent::Reading(r) => {
                tel.row(&r.device_id, r.ts, r.metrics.iter().map(|(_, x)| *x))?;
                sum.readings += 1;
                if sum.readings % 65_536 == 0 {
                    progress(sum.readings);
                }
            }
            SimEvent::Event(e) => {
                match e.kind {
                    EventKind::Failure => sum.failures += 1,
                    EventKind::Maintenance => sum.maintenance += 1,
                    EventKind::Error => sum.errors += 1,
                }
                evs.row(&e)?;
            }
            SimEvent::Malformed { .. } => {}
        }
    }
    progress(sum.readings);
    tel.finish()?;
    evs.finish()?;
    Ok(sum)
}

/// A model artifact with the shape of a trained gradient-boosted one, over the default features of
/// the simulated fleet's four metrics: per mode a classifier and a time-to-failure regressor of
/// `trees` full trees of depth `depth`. Split thresholds are taken from feature rows of the
/// simulated fleet, so decisions branch as they would on real data. It predicts nothing useful:
/// it exists so benchmarks and memory measurements do the work a real model makes the engine do.
pub fn synthetic_model(
    modes: usize,
    trees: usize,
    depth: u32,
    seed: u64,
) -> crate::predict::Artifact {
    use crate::features::{DeviceFeature, DeviceState, FeatureSpec, MetricIndex, WindowSpec};
    use crate::predict::*;
    let window = WindowSpec::default();
    let features = FeatureSpec {
        stats: FeatureSpec::default_stats(&window),
        window,
        metrics: METRICS.iter().map(|m| m.to_string()).collect(),
        device: vec![
            DeviceFeature::HoursSinceReset,
            DeviceFeature::Readings,
            DeviceFeature::ErrorRate,
        ],
    };
    // Sample feature rows from a small simulated fleet.
    let index = MetricIndex::new(METRICS);
    let ids = features.resolve(&index);
    let mut states: Vec<DeviceState> = Vec::new();
    let mut rows: Vec<Vec<f64>> = Vec::new();
    let fleet = Fleet::new(SimConfig {
        devices: 20,
        ticks: 24 * 20,
        seed,
        ..SimConfig::default()
    });
    for e in fleet {
        if let SimEvent::Reading(r) = e {
            let i: usize = r.device_id[r.device_id.len() - 6..].parse().unwrap_or(0);
            if states.len() <= i {
                states.resize_with(i + 1, || DeviceState::new(&features.window, r.ts));
            }
            states[i].observe(&r, &features.window, &index);
            if r.seq.unwrap_or(0) % 7 == 0 {
                let mut x = Vec::new();
                features.extract(&states[i], &ids, MODES[0], None, r.ts, &mut x);
                rows.push(x);
            }
        }
    }
    let n_features = features.len() as u32;
    let mut rng = Rng(seed ^ 0xB0057);
    let tree = |rng: &mut Rng, scale: f64| {
        let inner = (1usize << depth) - 1;
        let mut nodes = Vec::with_capacity(2 * inner + 1);
        for i in 0..2 * inner + 1 {
            if i < inner {
                let feature = rng.below(n_features as usize) as u32;
                let row = &rows[rng
                    .below(rows.len().max(1))
                    .min(rows.len().saturating_sub(1))];
                let t = row.get(feature as usize).copied().unwrap_or(0.0);
                nodes.push(Node {
                    feature,
                    threshold: if t.is_finite() { t } else { 0.0 },
                    left: (2 * i + 1) as u32,
                    right: (2 * i + 2) as u32,
                    value: 0.0,
                    missing_left: rng.uniform() < 0.5,
                });
            } else {
                nodes.push(Node {
                    feature: LEAF,
                    threshold: 0.0,
                    left: 0,
                    right: 0,
                    value: (rng.uniform() - 0.5) * scale,
                    missing_left: true,
                });
            }
        }
        Tree { nodes }
    };
    let modes = (0..modes)
        .map(|m| ModeModel {
            mode: MODES[m % MODES.len()].to_string(),
            classifier: Estimator::Trees {
                base: -3.0,
                learning_rate: 0.1,
                trees: (0..trees).map(|_| tree(&mut rng, 2.0)).collect(),
                link: Link::Logistic,
            },
            regressor: Some(Estimator::Trees {
                base: 200.0,
                learning_rate: 0.1,
                trees: (0..trees).map(|_| tree(&mut rng, 100.0)).collect(),
                link: Link::Identity,
            }),
            threshold: 0.5,
            threshold_rule: "synthetic".into(),
            ttf_cap_hours: Some(720.0),
            validation: ValidationMetrics::default(),
            calibration: None,
            levels: None,
            score_reference: None,
        })
        .collect();
    Artifact {
        format: ARTIFACT_FORMAT.into(),
        format_version: ARTIFACT_VERSION,
        name: "synthetic".into(),
        version: "1".into(),
        applies_to: AppliesTo::All,
        horizon_hours: 48.0,
        consecutive: 2,
        features,
        modes,
        training: TrainingInfo::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::decode::{decode_events, decode_telemetry, Limits};
    use crate::ingest::encode::{event_payload, to_payload};

    fn small(seed: u64) -> SimConfig {
        SimConfig {
            devices: 50,
            ticks: 24 * 120,
            seed,
            ..SimConfig::default()
        }
    }

    #[test]
    fn same_seed_gives_the_same_stream_and_another_seed_does_not() {
        let a: Vec<SimEvent> = Fleet::new(small(7)).take(5_000).collect();
        let b: Vec<SimEvent> = Fleet::new(small(7)).take(5_000).collect();
        let c: Vec<SimEvent> = Fleet::new(small(8)).take(5_000).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn stream_is_in_event_time_order_with_one_reading_per_device_per_tick() {
        let cfg = SimConfig {
            devices: 20,
            ticks: 48,
            interval_ms: 60_000,
            ..SimConfig::default()
        };
        let mut last = Timestamp::MIN;
        let mut readings = 0;
        let mut seqs = std::collections::HashMap::new();
        for e in Fleet::new(cfg.clone()) {
            let ts = match &e {
                SimEvent::Reading(r) => {
                    readings += 1;
                    let prev = seqs.insert(r.device_id.clone(), r.seq.unwrap());
                    assert_eq!(r.seq.unwrap(), prev.unwrap_or(0) + 1);
                    r.ts
                }
                SimEvent::Event(e) => e.ts,
                SimEvent::Malformed { .. } => unreachable!("none requested"),
            };
            assert!(ts >= last);
            assert!(ts < cfg.end_ms());
            last = ts;
        }
        assert_eq!(readings, 20 * 48);
        assert_eq!(last, cfg.start_ms + 47 * 60_000);
    }

    #[test]
    fn every_mode_fails_and_is_maintained_and_errors_occur() {
        let mut counts = std::collections::HashMap::new();
        for e in Fleet::new(small(3)) {
            if let SimEvent::Event(e) = e {
                *counts.entry((e.kind, e.code)).or_insert(0u32) += 1;
            }
        }
        for m in MODES {
            assert!(
                counts
                    .get(&(EventKind::Failure, m.into()))
                    .copied()
                    .unwrap_or(0)
                    >= 3,
                "{m}: {counts:?}"
            );
            assert!(
                counts
                    .get(&(EventKind::Maintenance, m.into()))
                    .copied()
                    .unwrap_or(0)
                    >= 3,
                "{m}: {counts:?}"
            );
        }
        let errors: u32 = counts
            .iter()
            .filter(|((k, _), _)| *k == EventKind::Error)
            .map(|(_, n)| n)
            .sum();
        assert!(errors > 0);
    }

    /// The mean of each metric over the last 12 readings before a failure minus the device's
    /// early mean, averaged per mode: each mode must move its own metrics.
    #[test]
    fn each_mode_shows_in_its_own_metrics_before_failure() {
        let mut hist: std::collections::HashMap<String, Vec<[f64; 4]>> = Default::default();
        let mut shift = [[0.0f64; 4]; 3];
        let mut n = [0usize; 3];
        for e in Fleet::new(SimConfig {
            devices: 100,
            ..small(11)
        }) {
            match e {
                SimEvent::Reading(r) => {
                    let mut v = [0.0; 4];
                    for (k, (_, x)) in r.metrics.iter().enumerate() {
                        v[k] = *x;
                    }
                    hist.entry(r.device_id.into_string()).or_default().push(v);
                }
                SimEvent::Event(e) if e.kind == EventKind::Failure => {
                    let h = hist.entry(e.device_id.into_string()).or_default();
                    if h.len() >= 200 {
                        let m = MODES.iter().position(|x| *x == e.code).unwrap();
                        let late = &h[h.len() - 12..];
                        for k in 0..4 {
                            let lm = late.iter().map(|v| v[k]).sum::<f64>() / 12.0;
                            let em = h[..24].iter().map(|v| v[k]).sum::<f64>() / 24.0;
                            shift[m][k] += lm - em;
                        }
                        n[m] += 1;
                    }
                    h.clear();
                }
                _ => {}
            }
        }
        for m in 0..3 {
            assert!(n[m] > 0, "no long-lived failure for {}", MODES[m]);
            for k in 0..4 {
                shift[m][k] /= n[m] as f64;
            }
        }
        // Every mode wears at once, so all metrics drift before any failure; what tells the modes
        // apart is which metric moves most before *this* mode's failure than before the others'.
        let (bearing, hot, seal) = (0, 1, 2);
        let (temp, vib, pres) = (0, 1, 2);
        assert!(
            shift[bearing][vib] > 2.0 * shift[hot][vib].max(shift[seal][vib]),
            "{shift:?}"
        );
        assert!(
            shift[hot][temp] > 2.0 * shift[bearing][temp].max(shift[seal][temp]),
            "{shift:?}"
        );
        assert!(
            shift[seal][pres] < 2.0 * shift[bearing][pres].min(shift[hot][pres]),
            "{shift:?}"
        );
        assert!(shift[seal][pres] < -6.0, "{shift:?}");
    }

    #[test]
    fn payloads_decode_back_to_the_same_reading_and_event() {
        let limits = Limits::default();
        let mut seen_event = false;
        for e in Fleet::new(small(5)).take(20_000) {
            match e {
                SimEvent::Reading(r) => {
                    let back =
                        decode_telemetry(&to_payload(&r), Some(&r.device_id), 0, &limits).unwrap();
                    assert_eq!(back, vec![r]);
                }
                SimEvent::Event(ev) => {
                    let back = decode_events(&event_payload(&ev), Some(&ev.device_id), 0, &limits)
                        .unwrap();
                    assert_eq!(back, vec![ev]);
                    seen_event = true;
                }
                SimEvent::Malformed { .. } => unreachable!(),
            }
        }
        assert!(seen_event);
    }

    #[test]
    fn malformed_payloads_are_all_rejected_by_the_decoder() {
        let cfg = SimConfig {
            malformed_fraction: 0.2,
            ..small(9)
        };
        let mut reasons = std::collections::HashSet::new();
        let mut malformed = 0;
        for e in Fleet::new(cfg).take(10_000) {
            if let SimEvent::Malformed { device_id, payload } = e {
                let err = decode_telemetry(&payload, Some(&device_id), 0, &Limits::default())
                    .expect_err("malformed payload accepted");
                reasons.insert(err.reason);
                malformed += 1;
            }
        }
        assert!(malformed > 1_000, "{malformed}");
        assert!(reasons.len() >= 4, "{reasons:?}");
    }

    #[test]
    fn synthetic_model_is_a_valid_artifact_that_branches_on_fleet_data() {
        let a = synthetic_model(2, 10, 5, 1);
        a.validate().unwrap();
        assert_eq!(a.modes.len(), 2);
        let json = serde_json::to_string(&a).unwrap();
        let b = crate::predict::Artifact::from_json(&json, Path::new("m.json")).unwrap();
        // Thresholds come from real rows: different inputs land in different leaves.
        let x1 = vec![0.0; a.features.len()];
        let x2 = vec![1.0e6; a.features.len()];
        assert_ne!(
            b.score_mode(&b.modes[0], &x1).probability,
            b.score_mode(&b.modes[0], &x2).probability
        );
    }

    #[test]
    fn csv_layout_has_the_contract_headers_and_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SimConfig {
            devices: 10,
            ticks: 24 * 60,
            ..SimConfig::default()
        };
        let sum = write_csv(dir.path(), &cfg, |_| {}).unwrap();
        assert_eq!(sum.readings, 10 * 24 * 60);
        let tel = std::fs::read_to_string(dir.path().join("telemetry.csv")).unwrap();
        let mut lines = tel.lines();
        assert_eq!(
            lines.next(),
            Some("device_id,ts,temperature,vibration,pressure,current")
        );
        let first: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!(first[0], "dev-000000");
        assert_eq!(first[1], "2025-01-01T00:00:00Z");
        assert_eq!(tel.lines().count() as u64, sum.readings + 1);
        let evs = std::fs::read_to_string(dir.path().join("events.csv")).unwrap();
        assert!(evs.starts_with("device_id,ts,kind,code\n"));
        assert_eq!(
            evs.lines().count() as u64,
            sum.failures + sum.maintenance + sum.errors + 1
        );
        let devs = std::fs::read_to_string(dir.path().join("devices.csv")).unwrap();
        assert!(devs.starts_with("device_id,model,install_year\n"));
        assert_eq!(devs.lines().count(), 11);
    }
}
