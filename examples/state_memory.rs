//! Memory held per device: builds the state of 1,000,000 simulated devices (default windows, the
//! synthetic 2-mode gradient-boosted model so scoring creates its per-device entries) after ~40
//! readings each, and reports bytes per device two ways: `DeviceState::approx_bytes` and the
//! growth of the process's resident set (`VmRSS` in /proc/self/status), which also counts the map
//! and its keys and the allocator's overhead. Fails (exit 1) if 1M devices need more than 2.5 GB.
//!
//! Run: `cargo run --release --example state_memory [-- DEVICES READINGS]`

use forewarn::engine::{DeviceCtx, Engine, EngineConfig, Models};
use forewarn::features::DeviceState;
use forewarn::sim::{synthetic_model, Fleet, SimConfig, SimEvent};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

fn status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let devices: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let readings: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(40);
    let cfg = EngineConfig::default();
    let models = Models::new(vec![synthetic_model(2, 100, 5, 7)], &cfg.window)
        .expect("synthetic model matches the default windows");
    let engine = Engine::new(cfg, Arc::new(models));
    // Readings every minute, scored hourly: each device is scored (and gets its policy memory)
    // once in its first reading, as in a live fleet.
    let fleet = Fleet::new(SimConfig {
        devices,
        ticks: readings,
        interval_ms: 60_000,
        seed: 3,
        ..SimConfig::default()
    });
    let rss_before = status_kib("VmRSS:").unwrap_or(0);
    let started = Instant::now();
    let mut states: HashMap<String, DeviceState> = HashMap::with_capacity(devices);
    let mut live = Vec::new();
    let mut changes = Vec::new();
    let mut n = 0u64;
    for e in fleet {
        if let SimEvent::Reading(r) = e {
            let st = match states.get_mut(r.device_id.as_str()) {
                Some(s) => s,
                None => states
                    .entry(r.device_id.to_string())
                    .or_insert_with(|| engine.new_state(r.ts)),
            };
            live.clear();
            changes.clear();
            engine.reading(st, &mut live, DeviceCtx::default(), &r, &mut changes, None);
            n += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let rss_after = status_kib("VmRSS:").unwrap_or(0);
    let hwm = status_kib("VmHWM:").unwrap_or(0);
    let approx: usize = states.values().map(|s| s.approx_bytes()).sum();
    let per_approx = approx as f64 / devices as f64;
    let per_rss = (rss_after.saturating_sub(rss_before) * 1024) as f64 / devices as f64;
    let projected_1m_gb = per_rss * 1e6 / 1e9;
    println!(
        "state_memory: {devices} devices, {n} readings in {secs:.1} s; \
         approx_bytes {per_approx:.0} B/device; RSS growth {per_rss:.0} B/device \
         (map + keys + allocator); RSS {:.2} GB, peak {:.2} GB; 1M devices ≈ {projected_1m_gb:.2} GB",
        rss_after as f64 * 1024.0 / 1e9,
        hwm as f64 * 1024.0 / 1e9,
    );
    if projected_1m_gb > 2.5 {
        eprintln!("state_memory: 1M devices would need {projected_1m_gb:.2} GB > 2.5 GB");
        std::process::exit(1);
    }
}
