//! What the writer's unit tests share: a writer on a fresh store, on a clock the test chooses,
//! and readings as the MQTT driver hands them over.

use super::{App, Settings};
use crate::clock::{Clock, SystemClock};
use crate::engine::Models;
use crate::features::MetricIndex;
use crate::ingest::mqtt::{Inbound, Publish};
use crate::netguard::AddressPolicy;
use crate::store::Store;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A writer on a fresh store in `dir`, with the default configuration, no models and the
/// system clock.
pub fn writer(dir: &std::path::Path) -> Arc<App> {
    writer_with(
        dir,
        &crate::config::Config::default(),
        Arc::new(SystemClock),
    )
}

/// A writer on a fresh store in `dir`, configured by `cfg` (its models apart: none), whose
/// notifier and timers read `clock`.
pub fn writer_with(
    dir: &std::path::Path,
    cfg: &crate::config::Config,
    clock: Arc<dyn Clock>,
) -> Arc<App> {
    let store = Store::open(dir, cfg.store.cache_bytes).expect("store");
    let registry = prometheus::Registry::new();
    let notifier = crate::notify::Notifier::build(&cfg.notify, &cfg.api.public_url, &registry)
        .expect("notifier")
        .with_clock(clock.clone());
    let window = cfg.features.window();
    let models = Models::with_index(Vec::new(), &window, MetricIndex::default()).expect("models");
    let settings = Settings {
        contact_policy: AddressPolicy::new(&[]).expect("policy"),
        ingest: cfg.ingest.clone(),
        engine: cfg.engine_config(),
        window,
        models_dir: cfg.scoring.models_dir.clone(),
        rejects_per_minute: 10,
        has_webhook: false,
        reorder_idle: Duration::from_secs(1),
        snapshot_every: cfg.store.snapshot_every,
    };
    let metrics = crate::metrics::Metrics::new(&registry);
    let app = App::new(settings, store, metrics, models, Arc::new(notifier), clock).expect("app");
    Arc::new(app)
}

/// A reading of `device` at event time `ts_ms`, as received on the default telemetry topic.
pub fn reading(device: &str, ts_ms: i64, seq: u64, metrics: &str) -> Inbound {
    let payload = format!(
        r#"{{"ts": "{}", "seq": {seq}, "metrics": {metrics}}}"#,
        crate::domain::Timestamp::from_millis(ts_ms).format()
    );
    Inbound {
        publish: Publish::new(format!("devices/{device}/telemetry"), payload),
        received: Instant::now(),
        received_ms: ts_ms,
    }
}
