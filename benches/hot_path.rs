//! The in-process hot path, per 4-metric reading: decode → window update → features → scoring →
//! ticket check, with a model of realistic shape (2 modes × (classifier + regressor) × 100 trees
//! of depth 5, or the artifacts in `models/` when there are any).
//!
//! Cases:
//! - `decode_only`: the JSON decoder alone (the baseline the others are compared with);
//! - `hourly_scoring`: a reading every second of event time, scored once per hour (1 in 3600);
//! - `every_reading_scored`: the scoring interval set to zero.
//!
//! Run: `cargo bench --bench hot_path -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use forewarn::domain::Ticket;
use forewarn::engine::{DeviceCtx, Engine, EngineConfig, Models};
use forewarn::features::DeviceState;
use forewarn::ingest::decode::{decode_telemetry, Limits};
use forewarn::ingest::encode::to_payload;
use forewarn::predict::Artifact;
use forewarn::sim::{synthetic_model, Fleet, SimConfig, SimEvent};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEVICES: usize = 10;
/// Ten hours of event time per device at one reading per second.
const TICKS: u64 = 36_000;

struct Stream {
    /// (device id as the topic carries it, payload)
    msgs: Vec<(String, Vec<u8>)>,
}

fn stream() -> Stream {
    let fleet = Fleet::new(SimConfig {
        devices: DEVICES,
        ticks: TICKS,
        interval_ms: 1_000,
        seed: 42,
        ..SimConfig::default()
    });
    let msgs = fleet
        .filter_map(|e| match e {
            SimEvent::Reading(r) => Some((r.device_id.to_string(), to_payload(&r))),
            _ => None,
        })
        .collect();
    Stream { msgs }
}

fn artifacts() -> Vec<Artifact> {
    let dir = std::path::Path::new("models");
    if let Ok(list) = forewarn::predict::load_dir(dir) {
        let fits: Vec<Artifact> = list
            .into_iter()
            .filter(|a| a.features.window == EngineConfig::default().window)
            .collect();
        if !fits.is_empty() {
            eprintln!("hot_path: using {} artifact(s) from models/", fits.len());
            return fits;
        }
    }
    eprintln!("hot_path: using a synthetic 2-mode × 2 × 100-tree depth-5 model");
    vec![synthetic_model(2, 100, 5, 7)]
}

/// Runs `iters` readings through decode + engine, with fresh device state at every pass over
/// the stream (so sequence numbers and event time always move forward).
fn run_engine(engine: &Engine, s: &Stream, iters: u64) -> Duration {
    let limits = Limits::default();
    let mut devices: HashMap<String, (DeviceState, Vec<Ticket>)> = HashMap::new();
    let mut changes = Vec::new();
    let mut elapsed = Duration::ZERO;
    let mut done = 0u64;
    while done < iters {
        devices.clear();
        let n = (iters - done).min(s.msgs.len() as u64) as usize;
        let start = Instant::now();
        for (id, payload) in &s.msgs[..n] {
            let readings = match decode_telemetry(payload, Some(id), 0, &limits) {
                Ok(r) => r,
                Err(_) => continue,
            };
            for r in &readings {
                let (state, live) = match devices.get_mut(r.device_id.as_str()) {
                    Some(x) => x,
                    None => devices
                        .entry(r.device_id.to_string())
                        .or_insert_with(|| (engine.new_state(r.ts), Vec::new())),
                };
                changes.clear();
                black_box(engine.reading(state, live, DeviceCtx::default(), r, &mut changes, None));
            }
        }
        elapsed += start.elapsed();
        done += n as u64;
    }
    elapsed
}

fn hot_path(c: &mut Criterion) {
    let s = stream();
    let arts = artifacts();
    let engine_with = |interval_ms: i64| {
        let cfg = EngineConfig {
            scoring_interval_ms: interval_ms,
            ..EngineConfig::default()
        };
        let models = Models::new(arts.clone(), &cfg.window).expect("model windows match");
        Engine::new(cfg, Arc::new(models))
    };
    let hourly = engine_with(3_600_000);
    let every = engine_with(0);

    let mut g = c.benchmark_group("hot_path");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    g.bench_function("decode_only", |b| {
        let limits = Limits::default();
        b.iter_custom(|iters| {
            let start = Instant::now();
            for i in 0..iters as usize {
                let (id, p) = &s.msgs[i % s.msgs.len()];
                let _ = black_box(decode_telemetry(p, Some(id), 0, &limits));
            }
            start.elapsed()
        })
    });
    g.bench_function("hourly_scoring", |b| {
        b.iter_custom(|iters| run_engine(&hourly, &s, iters))
    });
    g.bench_function("every_reading_scored", |b| {
        b.iter_custom(|iters| run_engine(&every, &s, iters))
    });
    g.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
