//! `forewarn train`: fit failure predictors from history files into a model artifact.

use super::{load_config, CliResult, Failure, HistoryFiles};
use crate::domain::Dur;
use crate::train::fit::{self, EstimatorKind, ServedClassifier, TrainOptions};
use crate::train::select::Target;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub history: HistoryFiles,
    /// The classifier predicts a failure within this much event time.
    #[arg(long, default_value = "24h")]
    pub horizon: Dur,
    /// Configuration (windows and scoring interval must match the daemon's).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where to write the model artifact (JSON).
    #[arg(long)]
    pub out: PathBuf,
    /// Cap of the time-to-failure target [default: 4 × horizon].
    #[arg(long)]
    pub ttf_cap: Option<Dur>,
    /// Model family: gbm (boosted trees on every window statistic) or linear (baseline on last values).
    #[arg(long, value_enum, default_value = "gbm")]
    pub estimator: EstimatorKind,
    /// Choose the threshold for the highest recall at this ticket precision on validation
    /// [default: best ticket F1].
    #[arg(long)]
    pub min_precision: Option<f64>,
    /// A validation ticket counts as correct when the failure follows within this [default: 2 × horizon].
    #[arg(long)]
    pub match_window: Option<Dur>,
    /// Folds of the cross-validation grouped by device that chooses rounds, calibration and levels.
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Cap on false customer alerts per device-month (out of fold) for the customer-alert level.
    #[arg(long, default_value_t = 0.05)]
    pub alert_cap: f64,
    /// Seed of the device split and of the boosting subsamples.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// The classifier served per mode: fold-mean (the mean of the cross-validation folds'
    /// classifiers, whose out-of-fold scores chose the levels) or refit (one refitted on every
    /// device).
    #[arg(long, value_enum, default_value = "fold-mean")]
    pub served: ServedClassifier,
    /// dismissals.csv from `forewarn export` (`device_id,failure_mode,opened,dismissed`): tickets
    /// a person dismissed as false alarms without a visit. Rows of the mode while such a ticket
    /// was live, which the history alone leaves unknown, are trained as "no failure".
    #[arg(long)]
    pub dismissals: Option<PathBuf>,
    /// Model name [default: the output file's stem].
    #[arg(long)]
    pub name: Option<String>,
}

pub fn run(args: Args) -> CliResult {
    let started = std::time::Instant::now();
    let cfg = load_config(args.config.as_deref())?;
    if let Some(p) = args.min_precision {
        if !(0.0..=1.0).contains(&p) {
            return Err(Failure::usage("--min-precision must be between 0 and 1"));
        }
    }
    if args.folds < 2 {
        return Err(Failure::usage("--folds must be at least 2"));
    }
    if args.alert_cap.is_nan() || args.alert_cap < 0.0 {
        return Err(Failure::usage("--alert-cap must be a non-negative number"));
    }
    if args.horizon.as_hours_f64() <= 0.0 {
        return Err(Failure::usage("--horizon must be positive"));
    }
    let mut history = args.history.load()?;
    let dismissals = match &args.dismissals {
        Some(p) => {
            let list = crate::train::csv::read_dismissals(p).map_err(Failure::runtime)?;
            let read = list.len();
            let used = history.add_dismissals(list);
            Some(serde_json::json!({"read": read, "of_devices_in_the_data": used}))
        }
        None => None,
    };
    let mut files = args.history.paths();
    files.extend(args.dismissals.as_deref());
    let fingerprint = fit::fingerprint(&files).map_err(Failure::runtime)?;
    let name = args.name.clone().unwrap_or_else(|| {
        args.out
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    let opts = TrainOptions {
        engine: cfg.engine_config(),
        horizon_h: args.horizon.as_hours_f64(),
        ttf_cap_h: args.ttf_cap.map(Dur::as_hours_f64),
        estimator: args.estimator,
        target: args
            .min_precision
            .map_or(Target::BestF1, Target::MinPrecision),
        match_window_h: args.match_window.map(Dur::as_hours_f64),
        folds: args.folds,
        alert_cap: args.alert_cap,
        seed: args.seed,
        served: args.served,
        name,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let (artifact, modes) = fit::train(&history, fingerprint, &opts).map_err(Failure::runtime)?;
    artifact
        .save(&args.out)
        .map_err(|e| Failure::runtime(format!("{}: {e}", args.out.display())))?;
    let mut summary = serde_json::json!({
        "model": artifact.name,
        "version": artifact.version,
        "out": args.out.display().to_string(),
        "devices": history.devices.len(),
        "readings": history.rows,
        "features": artifact.features.len(),
        "horizon_hours": artifact.horizon_hours,
        "consecutive": artifact.consecutive,
        "modes": modes,
        "seconds": (started.elapsed().as_secs_f64() * 100.0).round() / 100.0,
    });
    if let Some(d) = dismissals {
        summary["dismissals"] = d;
    }
    println!("{summary}");
    Ok(())
}
