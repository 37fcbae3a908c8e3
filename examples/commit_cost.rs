//! The writer's cost per reading on a fixed input: a simulated fleet (hourly readings, seed 11,
//! the keep-up benchmark's stream in event-time order) fed straight into a running daemon's
//! commit path in groups, the way the processing thread takes them off the feed, with the store
//! flushed every few groups as the flusher does. The MQTT driver and the broker are left out, so
//! what is measured is the processing thread's work plus the flusher's apply.
//!
//! Run: `cargo run --release --example commit_cost -- [realistic|storm] [DEVICES] [HOURS]`
//! (defaults: storm, 1000 devices, 100 hours). `APPLY_THREADS` sets `ingest.apply_threads`
//! (default 1, so that every instruction of a group runs on one thread).
//!
//! For instruction counts, repeatable on a busy machine, run it under callgrind and count only
//! the commit path:
//!
//! ```text
//! MIMALLOC_PURGE_DELAY=1000 valgrind --tool=callgrind --collect-atstart=no \
//!     --toggle-collect='*process_group_applied*' --toggle-collect='*Store*flush*' \
//!     target/release/examples/commit_cost storm
//! ```
//!
//! and divide the total by the readings printed. Outside callgrind it prints the process's CPU
//! time and minor page faults per reading (both noisy under load).

use forewarn::ingest::mqtt::{Inbound, Publish};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The daemon's allocator (see `src/main.rs`); run with `MIMALLOC_PURGE_DELAY=1000` for its
/// setting too.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Groups the processing thread takes off a busy feed (`ingest.commit_group`'s default).
const GROUP: usize = 256;
/// Groups applied between two flushes: the flusher takes every group waiting at once.
const FLUSH_EVERY: usize = 4;

fn usage() -> ! {
    eprintln!("usage: commit_cost [realistic|storm] [DEVICES] [HOURS]");
    std::process::exit(2);
}

/// CPU seconds (user + system) and minor page faults of the whole process so far.
fn rusage() -> (f64, i64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (in parentheses): minflt is 10, utime 14, stime 15.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    // /proc counts in USER_HZ, 100 on Linux whatever the kernel's tick.
    let hz = 100.0;
    ((num(11) + num(12)) as f64 / hz, num(7))
}

fn model_json(kind: &str) -> String {
    let demo = forewarn::demo::DEMO_MODEL.to_string();
    if kind == "realistic" {
        return demo;
    }
    // The keep-up benchmark's storm: every threshold 1e-9, one scoring enough, no levels.
    let mut v: serde_json::Value = match serde_json::from_str(&demo) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("demo model: {e}");
            std::process::exit(1);
        }
    };
    v["name"] = "storm".into();
    v["consecutive"] = 1.into();
    if let Some(modes) = v["modes"].as_array_mut() {
        for m in modes {
            m["threshold"] = 1e-9.into();
            m["levels"] = serde_json::Value::Null;
        }
    }
    v.to_string()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let kind = args
        .first()
        .map(String::as_str)
        .unwrap_or("storm")
        .to_string();
    if kind != "realistic" && kind != "storm" {
        usage();
    }
    let num = |i: usize, d: usize| match args.get(i) {
        Some(v) => v.parse::<usize>().unwrap_or_else(|_| usage()),
        None => d,
    };
    let devices = num(1, 1000);
    let hours = num(2, 100);
    let threads = std::env::var("APPLY_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1usize);

    let dir = tempfile::tempdir().expect("temporary folder");
    let root = dir.path();
    let fleet = root.join("fleet");
    let sim = forewarn::sim::SimConfig {
        ticks: hours as u64,
        ..forewarn::sim::SimConfig::hourly(devices, 1, 11)
    };
    forewarn::sim::write_csv(&fleet, &sim, |_| {}).expect("simulated history");
    let mut history = forewarn::replay::History::default();
    history
        .read_telemetry_file(&fleet.join("telemetry.csv"))
        .expect("telemetry");
    history
        .read_events_file(&fleet.join("events.csv"))
        .expect("events");
    let received_ms = chrono::Utc::now().timestamp_millis();
    let msgs: Vec<Inbound> = history
        .messages("devices")
        .map(|m| Inbound {
            publish: Publish::new(m.topic, m.payload),
            received: Instant::now(),
            received_ms,
        })
        .collect();

    let models = root.join("models");
    std::fs::create_dir_all(&models).expect("models folder");
    std::fs::write(models.join("model.json"), model_json(&kind)).expect("model");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Carries only what the daemon publishes (its tickets); kept until the end of `main`.
    let broker = forewarn::broker::start(&Default::default()).expect("in-process broker");
    let mut cfg = forewarn::config::Config::default();
    cfg.broker.url = broker.url();
    cfg.broker.client_id = "commit-cost".into();
    cfg.api.listen = "127.0.0.1:0".into();
    cfg.store.data_dir = root.join("data");
    cfg.scoring.models_dir = models;
    cfg.ingest.apply_threads = threads;
    // Nothing is released by the idle timer while the groups are fed (under callgrind a group
    // takes long enough for devices to look idle).
    cfg.ingest.reorder_idle = Some("1h".parse().expect("duration"));
    let shutdown = CancellationToken::new();
    let handle = rt
        .block_on(forewarn::serve::run(cfg, shutdown.clone()))
        .expect("daemon starts");
    let app = handle.app.clone();

    let (cpu0, flt0) = rusage();
    let started = Instant::now();
    let (mut readings, mut changes) = (0usize, 0usize);
    for (i, group) in msgs.chunks(GROUP).enumerate() {
        let s = app.process_group_applied(group).expect("group applied");
        readings += s.readings;
        changes += s.changes;
        if (i + 1) % FLUSH_EVERY == 0 {
            app.store.flush().expect("flush");
        }
    }
    app.store.flush().expect("flush");
    let wall = started.elapsed();
    let (cpu1, flt1) = rusage();
    let per = |v: f64| v / readings.max(1) as f64;
    println!(
        "{kind}: {devices} devices, {} messages, {readings} readings, {changes} ticket changes, apply threads {threads}",
        msgs.len()
    );
    println!(
        "wall {:.2} s, process CPU {:.2} s = {:.1} us/reading, minor faults {} = {:.2}/reading",
        wall.as_secs_f64(),
        cpu1 - cpu0,
        per((cpu1 - cpu0) * 1e6),
        flt1 - flt0,
        per((flt1 - flt0) as f64)
    );
    drop(app);
    shutdown.cancel();
    rt.block_on(handle.stopped(Duration::from_secs(10)));
}
