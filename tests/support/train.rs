//! Training from a test: a small history written as the contract's CSV files, and the options
//! `forewarn train` would use with its defaults, varied only where a test says so.

use forewarn::engine::EngineConfig;
use forewarn::train::csv::History;
use forewarn::train::fit::{EstimatorKind, ServedClassifier, TrainOptions};
use forewarn::train::select::Target;
use std::path::Path;

/// Writes `telemetry.csv` and `events.csv` (their whole text) into `dir` and loads them.
pub fn write_history(dir: &Path, telemetry: &str, events: &str) -> History {
    let t = dir.join("telemetry.csv");
    let e = dir.join("events.csv");
    std::fs::write(&t, telemetry).expect("write telemetry.csv");
    std::fs::write(&e, events).expect("write events.csv");
    History::load(&t, &e, None).expect("the written history loads")
}

/// Training options with a 12 h horizon, best-F1 thresholds and the default engine; what the
/// tests vary is the estimator, the folds, the seed and the model's name.
pub fn options(estimator: EstimatorKind, folds: usize, seed: u64, name: &str) -> TrainOptions {
    TrainOptions {
        engine: EngineConfig::default(),
        horizon_h: 12.0,
        ttf_cap_h: None,
        estimator,
        target: Target::BestF1,
        match_window_h: None,
        folds,
        alert_cap: 0.05,
        seed,
        served: ServedClassifier::FoldMean,
        name: name.into(),
        command: String::new(),
    }
}
