//! `forewarn train`: history → rows → per failure mode a classifier and a time-to-failure
//! regressor → calibration, levels (watch, ticket, customer alert) and consecutive scorings chosen
//! on out-of-fold predictions → artifact.
//!
//! Honesty rules: the training devices are split into k folds grouped by device (every mode's
//! failing devices spread over the folds; never the evaluation set). Each fold's classifier is
//! fitted on the other folds, early-stopped on its own fold and scores it: those out-of-fold
//! scores, over every training device, choose the number of boosting rounds, the calibration,
//! the thresholds and `consecutive`, and give the per-mode figures the artifact reports. The
//! served classifier is the mean (in log-odds) of those fold classifiers, so the levels keep on
//! new devices the meaning they had out of fold ([`ServedClassifier`]; a classifier refitted on
//! every device with the chosen rounds on request). A mode with too few failures, or whose
//! out-of-fold tickets were not mostly right, may only raise a watch.

use super::csv::History;
use super::gbm::{GbmParams, Loss};
use super::linear;
use super::rows::{build_rows, build_spec, Rows};
use super::select::{self, Target, ValidDevice};
use super::TrainError;
use crate::domain::EventKind;
use crate::engine::EngineConfig;
use crate::features::{FeatureSpec, MetricStat};
use crate::predict::{
    AppliesTo, Artifact, Calibration, Estimator, Levels, ModeEvidence, ModeModel, OpenRule,
    OutOfFold, TrainingInfo, ValidationMetrics, ARTIFACT_FORMAT, ARTIFACT_VERSION,
};
use linfa::Dataset;
use ndarray::{Array1, Array2};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Which family of models to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EstimatorKind {
    /// Gradient-boosted trees on every window statistic (the default).
    Gbm,
    /// The plain baseline: linear models on the last value of each metric.
    Linear,
}

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub engine: EngineConfig,
    pub horizon_h: f64,
    /// Cap of the time-to-failure target; default [`default_ttf_cap`].
    pub ttf_cap_h: Option<f64>,
    pub estimator: EstimatorKind,
    pub target: Target,
    /// Ticket match window for threshold selection; default twice the horizon.
    pub match_window_h: Option<f64>,
    /// Folds of the device-grouped cross-validation (at most one per device).
    pub folds: usize,
    /// Cap on false customer alerts per device-month, out of fold.
    pub alert_cap: f64,
    pub seed: u64,
    /// Which classifier the artifact serves.
    pub served: ServedClassifier,
    pub name: String,
    pub command: String,
}

/// Which classifier an artifact serves for each mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServedClassifier {
    /// The mean, in log-odds, of the cross-validation folds' classifiers (the default). Each of
    /// them is the kind of model whose out-of-fold scores chose the calibration and the levels,
    /// so a level means on a new device what it meant out of fold. A model refitted on every
    /// device scores the top of the range less extremely than the fold models did, and levels
    /// chosen at the top (the customer alert's) were then never reached.
    FoldMean,
    /// One classifier refitted on every training device with the folds' median rounds (the
    /// earlier default; the linear estimator always uses it).
    Refit,
}

/// Default cap of the regression target: four horizons. Far beyond the horizon a ticket's
/// predicted time no longer changes what anyone does, and rows that far out mostly look healthy,
/// so an uncapped target would only add noise.
pub fn default_ttf_cap(horizon_h: f64) -> f64 {
    4.0 * horizon_h
}

/// What training did, for the command's output.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModeSummary {
    pub mode: String,
    pub rows: usize,
    pub positives: usize,
    /// Rows labelled "no failure within the horizon" (the rest of `rows` less `positives` is
    /// censored: not trained on).
    pub negatives: usize,
    pub classifier_rounds: Option<usize>,
    /// Trees the served classifier holds (every fold's, when it is the folds' mean).
    pub classifier_trees: Option<usize>,
    pub served: ServedClassifier,
    pub regressor_rounds: Option<usize>,
    pub consecutive: u16,
    pub validation: ValidationMetrics,
    pub levels: Levels,
}

/// A ticketing mode whose customer-alert level is chosen after the loop over modes.
struct PendingAlert<'a> {
    /// Index of the mode in the summaries and the artifact's modes.
    at: usize,
    /// The ticket level: an alert is never below it.
    floor: f64,
    rule: OpenRule,
    /// The ticket's hold-back: an alert is held back as the ticket is.
    hold_back: Option<f64>,
    months: f64,
    devices: Vec<ValidDevice<'a>>,
}

/// Fewest failures (with scorings before them) a mode needs out of fold before it may ticket.
pub const MIN_FAILURES: usize = 3;
/// Out-of-fold ticket precision a mode needs before it may ticket: below it, most of its tickets
/// would send a technician for nothing.
pub const MIN_TICKET_PRECISION: f64 = 0.5;
/// Boosting rounds of a fold that cannot early-stop (its devices hold one class only) when no
/// other fold of the mode could either: as many as early stopping waits for without improvement.
pub const UNINFORMED_FOLD_ROUNDS: usize = 40;
/// Cap on false watch episodes (score rising to the watch level with no failure following within
/// the match window) per device-month, out of fold: about one false watch per device-mode in ten
/// months. A watch is internal, so it may be wrong more often than a customer alert, but a list
/// that holds most of the fleet tells dispatch nothing (at one per device-month it did).
pub const WATCH_CAP: f64 = 0.1;

/// Platt scaling fitted on (raw probability, label) pairs by Newton's method on the log-loss.
/// `None` when the pairs hold one class only or the fit is not increasing (it must not reorder).
pub fn fit_platt(p: &[f64], y: &[bool]) -> Option<Calibration> {
    let pos = y.iter().filter(|v| **v).count();
    if pos == 0 || pos == y.len() {
        return None;
    }
    let z: Vec<f64> = p
        .iter()
        .map(|p| {
            let p = p.clamp(1e-12, 1.0 - 1e-12);
            (p / (1.0 - p)).ln()
        })
        .collect();
    // Platt's targets: a little off 0 and 1, so a separable set does not diverge.
    let n_pos = pos as f64;
    let n_neg = (y.len() - pos) as f64;
    let t_pos = (n_pos + 1.0) / (n_pos + 2.0);
    let t_neg = 1.0 / (n_neg + 2.0);
    let (mut a, mut b) = (1.0f64, 0.0f64);
    for _ in 0..100 {
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 1e-9, 0.0, 1e-9);
        for (zi, yi) in z.iter().zip(y) {
            let q = 1.0 / (1.0 + (-(a * zi + b)).exp());
            let t = if *yi { t_pos } else { t_neg };
            let d = q - t;
            let w = (q * (1.0 - q)).max(1e-12);
            ga += d * zi;
            gb += d;
            haa += w * zi * zi;
            hab += w * zi;
            hbb += w;
        }
        let det = haa * hbb - hab * hab;
        if det.abs() < 1e-18 {
            break;
        }
        let da = (hbb * ga - hab * gb) / det;
        let db = (haa * gb - hab * ga) / det;
        // Damped: the log-loss is convex, but a full step can overshoot on few positives.
        let step = 1.0f64.min(5.0 / (da.abs() + db.abs()).max(1e-12));
        a -= step * da;
        b -= step * db;
        if da.abs() + db.abs() < 1e-9 {
            break;
        }
    }
    (a.is_finite() && b.is_finite() && a > 1e-6).then_some(Calibration::Platt { a, b })
}

/// Mean squared difference between probabilities and outcomes.
pub fn brier(p: &[f64], y: &[bool]) -> Option<f64> {
    (!p.is_empty()).then(|| {
        p.iter()
            .zip(y)
            .map(|(p, y)| (p - if *y { 1.0 } else { 0.0 }).powi(2))
            .sum::<f64>()
            / p.len() as f64
    })
}

/// SHA-256 over the bytes of the input files, in order.
pub fn fingerprint(files: &[&Path]) -> Result<String, TrainError> {
    let mut h = Sha256::new();
    for p in files {
        let mut f = std::fs::File::open(p).map_err(|e| TrainError::io(p, e))?;
        std::io::copy(&mut f, &mut h).map_err(|e| TrainError::io(p, e))?;
    }
    Ok(hex::encode(h.finalize()))
}

fn matrix(rows: &Rows, idx: &[usize]) -> Array2<f64> {
    let mut x = Array2::zeros((idx.len(), rows.n_features));
    for (i, &r) in idx.iter().enumerate() {
        for (j, v) in rows.row(r).iter().enumerate() {
            x[[i, j]] = *v;
        }
    }
    x
}

struct Fitted {
    estimator: Estimator,
    rounds: Option<usize>,
}

/// Fits one estimator; `valid` (GBM only) drives early stopping.
#[allow(clippy::too_many_arguments)]
fn fit_one(
    kind: EstimatorKind,
    loss: Loss,
    rows: &Rows,
    train: &[usize],
    y: &[f64],
    valid: Option<(&[usize], &[f64])>,
    seed: u64,
    fixed_rounds: Option<usize>,
) -> Result<Fitted, TrainError> {
    let pos = y.iter().filter(|v| **v > 0.5).count().max(1) as f64;
    let neg = (y.len() as f64 - pos).max(1.0);
    // Class balance: positives weigh neg/pos (at most 100×), so the rare class is not ignored.
    let w_pos = (neg / pos).clamp(1.0, 100.0);
    let weights = |ys: &[f64]| -> Array1<f32> {
        ys.iter()
            .map(|v| {
                if loss == Loss::Logistic && *v > 0.5 {
                    w_pos as f32
                } else {
                    1.0
                }
            })
            .collect()
    };
    match kind {
        EstimatorKind::Gbm => {
            let ds = Dataset::new(matrix(rows, train), Array1::from_vec(y.to_vec()))
                .with_weights(weights(y));
            let vds = valid.map(|(vi, vy)| {
                Dataset::new(matrix(rows, vi), Array1::from_vec(vy.to_vec()))
                    .with_weights(weights(vy))
            });
            let mut p = GbmParams::new(loss);
            p.seed = seed;
            if let Some(r) = fixed_rounds {
                p.max_rounds = r.max(1);
            }
            let m = p.fit_with_validation(&ds, vds.as_ref())?;
            let mut estimator = m.estimator;
            // Weighting positives by w multiplies the fitted odds by w: take ln w off the
            // log-odds so tickets carry a probability, not a weighted score. Rankings (and so
            // the threshold choice) are unchanged.
            if let (Loss::Logistic, Estimator::Trees { base, .. }) = (loss, &mut estimator) {
                *base -= w_pos.ln();
            }
            Ok(Fitted {
                estimator,
                rounds: Some(m.rounds),
            })
        }
        EstimatorKind::Linear => {
            let rs: Vec<&[f64]> = train.iter().map(|&i| rows.row(i)).collect();
            let scaler = linear::fit_scaler(&rs, rows.n_features);
            let estimator = match loss {
                Loss::SquaredError => linear::ridge(&rs, y, scaler, 1e-3)?,
                Loss::Logistic => {
                    let yb: Vec<bool> = y.iter().map(|v| *v > 0.5).collect();
                    linear::logistic(&rs, &yb, scaler)?
                }
            };
            Ok(Fitted {
                estimator,
                rounds: None,
            })
        }
    }
}

/// Runs `f` on every job, on up to as many threads as the machine has cores, and returns the
/// results in the jobs' order. A panic in a job is raised again here.
fn in_parallel<T: Send>(jobs: &[usize], f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(jobs.len());
    if workers <= 1 {
        return jobs.iter().map(|&j| f(j)).collect();
    }
    let next = AtomicUsize::new(0);
    let mut out: Vec<Option<T>> = jobs.iter().map(|_| None).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&job) = jobs.get(i) else { break };
                        done.push((i, f(job)));
                    }
                    done
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(done) => {
                    for (i, t) in done {
                        out[i] = Some(t);
                    }
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    out.into_iter().flatten().collect()
}

/// The (row, target) pairs of the devices a filter accepts: labelled rows for the classifier,
/// rows with a time to failure for the regressor.
type SelectRows<'a> = dyn Fn(&dyn Fn(usize) -> bool) -> (Vec<usize>, Vec<f64>) + Sync + 'a;

/// What every fold of one model shares: the folds, the mode's rows and the loss.
struct FoldJob<'a> {
    k: usize,
    /// Fold of each device.
    fold: &'a [usize],
    rows: &'a Rows,
    loss: Loss,
    opts: &'a TrainOptions,
}

/// The fold models of one mode's classifier or regressor.
struct Folds {
    /// `(fold, model)`: the folds that could early-stop first, in fold order, then the others;
    /// `None` where the other folds' rows could not be fitted.
    fitted: Vec<(usize, Option<Fitted>)>,
    /// Rounds of the folds that early-stopped on their own rows, in fold order.
    rounds: Vec<usize>,
}

/// Fits one model per fold on the other folds' rows, early-stopped on its own fold's rows.
/// `select(keep)` gives the (row, target) pairs of the devices `keep` accepts. A fold whose own
/// targets are not `informative` cannot tell when boosting stops helping (its validation loss
/// keeps falling as every prediction is pushed towards what it holds, so it would run to the
/// round limit): such folds are fitted after the others, with the median rounds of the folds
/// that could tell ([`UNINFORMED_FOLD_ROUNDS`] when none could). A fold whose training targets
/// are not `trainable` gets no model. The folds are fitted at once, on up to every core: each
/// fit is a function of its own rows and seed alone, so the models (and their order) are the
/// same whatever the number of threads.
fn fit_folds(
    job: &FoldJob<'_>,
    select: &SelectRows<'_>,
    informative: impl Fn(&[f64]) -> bool,
    trainable: impl Fn(&[f64]) -> bool + Sync,
) -> Result<Folds, TrainError> {
    let FoldJob {
        k,
        fold,
        rows,
        loss,
        opts,
    } = *job;
    let informed: Vec<bool> = (0..k)
        .map(|f| informative(&select(&|d| fold[d] == f).1))
        .collect();
    let fit_fold = |f: usize, fixed: Option<usize>| -> Result<Option<Fitted>, TrainError> {
        let (ti, ty) = select(&|d| fold[d] != f);
        if !trainable(&ty) {
            return Ok(None);
        }
        let own = fixed.is_none().then(|| select(&|d| fold[d] == f));
        let valid = own.as_ref().map(|(vi, vy)| (&vi[..], &vy[..]));
        fit_one(
            opts.estimator,
            loss,
            rows,
            &ti,
            &ty,
            valid,
            opts.seed.wrapping_add(f as u64),
            fixed,
        )
        .map(Some)
    };
    let (told, untold): (Vec<usize>, Vec<usize>) = (0..k).partition(|&f| informed[f]);
    let first = in_parallel(&told, |f| fit_fold(f, None));
    let mut fitted = Vec::with_capacity(k);
    let mut rounds = Vec::new();
    for (&f, m) in told.iter().zip(first) {
        let m = m?;
        if let Some(r) = m.as_ref().and_then(|m| m.rounds) {
            rounds.push(r);
        }
        fitted.push((f, m));
    }
    let mut sorted = rounds.clone();
    sorted.sort_unstable();
    let median = sorted
        .get(sorted.len() / 2)
        .copied()
        .unwrap_or(UNINFORMED_FOLD_ROUNDS);
    let rest = in_parallel(&untold, |f| fit_fold(f, Some(median)));
    for (&f, m) in untold.iter().zip(rest) {
        fitted.push((f, m?));
    }
    Ok(Folds { fitted, rounds })
}

/// The mean in log-odds (before the link) of tree ensembles, as one ensemble: every model's
/// trees with leaves scaled by its learning rate, at learning rate 1/n, and the mean of the
/// bases. It scores exactly the mean of the models' raw outputs. `None` unless there are at least
/// two models, all trees with the same link.
pub fn mean_of_trees(models: &[Estimator]) -> Option<Estimator> {
    if models.len() < 2 {
        return None;
    }
    let n = models.len() as f64;
    let mut base_sum = 0.0;
    let mut all = Vec::new();
    let mut link0 = None;
    for m in models {
        let Estimator::Trees {
            base,
            learning_rate,
            trees,
            link,
        } = m
        else {
            return None;
        };
        if link0.is_some_and(|l| l != *link) {
            return None;
        }
        link0 = Some(*link);
        base_sum += base;
        for t in trees {
            let mut t = t.clone();
            for node in &mut t.nodes {
                node.value *= learning_rate;
            }
            all.push(t);
        }
    }
    Some(Estimator::Trees {
        base: base_sum / n,
        learning_rate: 1.0 / n,
        trees: all,
        link: link0?,
    })
}

/// Trains the artifact. `fingerprint` is the SHA-256 of the input files.
pub fn train(
    h: &History,
    fingerprint: String,
    opts: &TrainOptions,
) -> Result<(Artifact, Vec<ModeSummary>), TrainError> {
    let modes = h.failure_modes();
    if modes.is_empty() {
        return Err(TrainError::Data(
            "events.csv has no failure events: nothing to predict".into(),
        ));
    }
    if opts.horizon_h.is_nan() || opts.horizon_h <= 0.0 {
        return Err(TrainError::Data("the horizon must be positive".into()));
    }
    let cap = opts
        .ttf_cap_h
        .unwrap_or_else(|| default_ttf_cap(opts.horizon_h));
    let window_h = opts.match_window_h.unwrap_or(2.0 * opts.horizon_h);
    let stats = match opts.estimator {
        EstimatorKind::Gbm => FeatureSpec::default_stats(&opts.engine.window),
        EstimatorKind::Linear => vec![MetricStat::Last],
    };
    let spec = build_spec(
        h,
        &opts.engine.window,
        stats,
        opts.horizon_h,
        opts.estimator == EstimatorKind::Gbm,
    );
    if spec.metrics.is_empty() {
        return Err(TrainError::Data(
            "every telemetry metric is constant or empty: nothing to learn from".into(),
        ));
    }
    let ids: Vec<String> = h.devices.iter().map(|d| d.id.to_string()).collect();
    let failed: Vec<Vec<String>> = h
        .devices
        .iter()
        .map(|d| {
            let mut m: Vec<String> = d
                .labels
                .iter()
                .filter(|e| e.kind == EventKind::Failure)
                .map(|e| e.code.clone())
                .collect();
            m.sort();
            m.dedup();
            m
        })
        .collect();
    let k = opts.folds.clamp(1, h.devices.len().max(1));
    let fold = select::device_folds(&ids, &failed, k, opts.seed);
    // Device-months of history, for false alarms per device-month out of fold.
    let months: Vec<f64> = h.devices.iter().map(|d| d.observed_months()).collect();

    let pb = super::progress(h.devices.len() as u64, "features");
    // Every device's rows are replayed by the out-of-fold ticket policy: none is thinned.
    let keep_all = vec![k >= 2; h.devices.len()];
    let all_rows = build_rows(
        h,
        &spec,
        &opts.engine,
        &modes,
        opts.horizon_h,
        cap,
        &keep_all,
        &pb,
    );
    pb.finish_and_clear();

    let pb = super::progress(modes.len() as u64 * (2 * k as u64 + 2), "fitting");
    let mut mode_models = Vec::new();
    let mut summaries = Vec::new();
    let mut consecutive_votes = Vec::new();
    let mut pending_alerts: Vec<PendingAlert> = Vec::new();
    for (mode, rows) in modes.iter().zip(&all_rows) {
        let labelled = |keep: &dyn Fn(usize) -> bool| -> (Vec<usize>, Vec<f64>) {
            (0..rows.len())
                .filter(|&i| keep(rows.device[i] as usize))
                .filter_map(|i| {
                    rows.labels[i]
                        .positive
                        .map(|p| (i, if p { 1.0 } else { 0.0 }))
                })
                .unzip()
        };
        let (all_i, all_y) = labelled(&|_| true);
        let positives = all_y.iter().filter(|v| **v > 0.5).count();
        if positives == 0 || positives == all_y.len() {
            return Err(TrainError::Data(format!(
                "mode {mode:?}: training rows need both failing-within-horizon and healthy examples \
                 (positives {positives}); try another --horizon"
            )));
        }

        // Out of fold: each fold scored by a classifier that never saw its devices.
        let mut oof = vec![f64::NAN; rows.len()];
        let mut rounds = Vec::new();
        let mut fold_models = Vec::new();
        if k >= 2 {
            // A fold whose own devices hold no failing (or no healthy) example cannot tell when
            // boosting stops helping: its validation loss keeps falling as every score is pushed
            // towards the one class it holds, so it would run to the round limit.
            let both_classes = |ys: &[f64]| {
                let pos = ys.iter().filter(|v| **v > 0.5).count();
                pos > 0 && pos < ys.len()
            };
            let folds = fit_folds(
                &FoldJob {
                    k,
                    fold: &fold,
                    rows,
                    loss: Loss::Logistic,
                    opts,
                },
                &labelled,
                both_classes,
                both_classes,
            )?;
            rounds = folds.rounds;
            for (f, m) in folds.fitted {
                pb.inc(1);
                let Some(m) = m else { continue };
                for (i, o) in oof.iter_mut().enumerate() {
                    if fold[rows.device[i] as usize] == f {
                        *o = m.estimator.predict(rows.row(i));
                    }
                }
                fold_models.push(m.estimator);
            }
        }
        rounds.sort_unstable();
        let chosen_rounds = rounds.get(rounds.len() / 2).copied();
        let fold_mean = match opts.served {
            ServedClassifier::FoldMean => mean_of_trees(&fold_models),
            ServedClassifier::Refit => None,
        };
        let (cls, served) = match fold_mean {
            Some(estimator) => (
                Fitted {
                    estimator,
                    rounds: chosen_rounds,
                },
                ServedClassifier::FoldMean,
            ),
            None => (
                fit_one(
                    opts.estimator,
                    Loss::Logistic,
                    rows,
                    &all_i,
                    &all_y,
                    None,
                    opts.seed,
                    chosen_rounds,
                )?,
                ServedClassifier::Refit,
            ),
        };
        let classifier_trees = match &cls.estimator {
            Estimator::Trees { trees, .. } => Some(trees.len()),
            Estimator::Linear { .. } => None,
        };
        pb.inc(1);

        // Regressor, chosen like the classifier: each fold's is fitted on the other folds and
        // early-stopped on its own (a fold whose targets are all alike cannot tell when to stop:
        // it takes the told folds' median), predicts its own rows (the out-of-fold time to
        // failure the hold-back is chosen on), and the median of the folds' rounds is refitted
        // on every device. Stopping on one fold alone stopped some modes after two rounds: most
        // targets sit at the cap, and a fold with few failures of the mode barely moves.
        let targeted = |keep: &dyn Fn(usize) -> bool| -> (Vec<usize>, Vec<f64>) {
            (0..rows.len())
                .filter(|&i| keep(rows.device[i] as usize))
                .filter_map(|i| rows.labels[i].target.map(|t| (i, t)))
                .unzip()
        };
        let (reg_i, reg_y) = targeted(&|_| true);
        let mut vm = ValidationMetrics::default();
        let mut oof_ttf = vec![f64::NAN; rows.len()];
        let reg = if reg_i.len() >= 10 {
            let mut reg_rounds: Vec<usize> = Vec::new();
            if k >= 2 {
                // A fold whose targets are all alike cannot tell when to stop.
                let varied = |ys: &[f64]| ys.iter().any(|y| (y - ys[0]).abs() > 1e-9);
                let folds = fit_folds(
                    &FoldJob {
                        k,
                        fold: &fold,
                        rows,
                        loss: Loss::SquaredError,
                        opts,
                    },
                    &targeted,
                    varied,
                    |ys: &[f64]| ys.len() >= 10,
                )?;
                reg_rounds = folds.rounds;
                for (f, m) in folds.fitted {
                    pb.inc(1);
                    let Some(m) = m else { continue };
                    for (i, o) in oof_ttf.iter_mut().enumerate() {
                        if fold[rows.device[i] as usize] == f {
                            *o = m.estimator.predict(rows.row(i)).clamp(0.0, cap);
                        }
                    }
                }
                let (mut se, mut n) = (0.0, 0usize);
                for (&i, t) in reg_i.iter().zip(&reg_y) {
                    if oof_ttf[i].is_finite() {
                        se += (oof_ttf[i] - t).powi(2);
                        n += 1;
                    }
                }
                vm.rmse_hours = (n > 0).then(|| (se / n as f64).sqrt());
            }
            reg_rounds.sort_unstable();
            let chosen = reg_rounds.get(reg_rounds.len() / 2).copied();
            Some(fit_one(
                opts.estimator,
                Loss::SquaredError,
                rows,
                &reg_i,
                &reg_y,
                None,
                opts.seed,
                chosen,
            )?)
        } else {
            None
        };
        pb.inc(1);

        // Calibration and ranking figures on the labelled out-of-fold rows.
        let (mut op, mut oy) = (Vec::new(), Vec::new());
        for (&i, y) in all_i.iter().zip(&all_y) {
            if oof[i].is_finite() {
                op.push(oof[i]);
                oy.push(*y > 0.5);
            }
        }
        let calibration = fit_platt(&op, &oy);
        let calibrate = |p: f64| calibration.as_ref().map_or(p, |c| c.apply(p));
        // How the served model scores data it was not fitted on: every row's out-of-fold
        // probability, labelled or not (the daemon scores them all), calibrated.
        let mut score_reference = vec![0u64; crate::predict::SCORE_BINS];
        for p in oof.iter().filter(|p| p.is_finite()) {
            score_reference[crate::predict::score_bin(calibrate(*p))] += 1;
        }
        let score_reference = score_reference
            .iter()
            .any(|&c| c > 0)
            .then_some(score_reference);
        let op_cal: Vec<f64> = op.iter().map(|p| calibrate(*p)).collect();
        vm.rows = op.len();
        vm.positives = oy.iter().filter(|v| **v).count();
        vm.roc_auc = select::roc_auc(&op, &oy);
        vm.pr_auc = select::pr_auc(&op, &oy);

        // Levels, on every device that has out-of-fold scores.
        let mut oof_devices: Vec<usize> = Vec::new();
        let mut vdevs: Vec<ValidDevice> = Vec::new();
        for d in 0..h.devices.len() {
            let at: Vec<usize> = (0..rows.len())
                .filter(|&i| rows.device[i] as usize == d && oof[i].is_finite())
                .collect();
            if !at.is_empty() {
                oof_devices.push(d);
                vdevs.push(ValidDevice {
                    rows: at
                        .iter()
                        .map(|&i| (rows.ts[i], calibrate(oof[i])))
                        .collect(),
                    // A hold-back bounds what the served regressor predicts: only a mode that
                    // has one chooses it.
                    ttf: if reg.is_some() {
                        at.iter().map(|&i| oof_ttf[i]).collect()
                    } else {
                        Vec::new()
                    },
                    events: &h.devices[d].labels,
                });
            }
        }
        let oof_months: f64 = oof_devices.iter().map(|&d| months[d]).sum();
        let per_month = |n: usize| (oof_months > 0.0).then(|| n as f64 / oof_months);
        let mut out = OutOfFold {
            folds: k,
            devices: vdevs.len(),
            device_months: oof_months,
            brier: brier(&op_cal, &oy),
            brier_uncalibrated: brier(&op, &oy),
            ..OutOfFold::default()
        };
        let (levels, consecutive) = if vdevs.is_empty() {
            (
                Levels {
                    watch: 1.0,
                    ticket: None,
                    customer_alert: None,
                    evidence: ModeEvidence::NoOutOfFoldEvidence,
                    rule: "no out-of-fold predictions (too few devices to cross-validate)".into(),
                    out_of_fold: out,
                    consecutive: None,
                    of_last: None,
                    hold_back_hours: None,
                    hold_back_in_rule: false,
                },
                2,
            )
        } else {
            let c = select::choose_policy(&vdevs, mode, opts.horizon_h, window_h, opts.target);
            out.failures = c.tally.due;
            let evidence = if c.tally.due < MIN_FAILURES {
                ModeEvidence::TooFewFailures
            } else if c.tally.detected == 0
                || c.tally.precision().unwrap_or(0.0) < MIN_TICKET_PRECISION
            {
                ModeEvidence::NoOutOfFoldEvidence
            } else {
                ModeEvidence::Sufficient
            };
            let ticket = (evidence == ModeEvidence::Sufficient).then_some(c.threshold);
            if ticket.is_some() {
                out.tickets = c.tally.tickets;
                out.precision = c.tally.precision();
                out.recall = c.tally.recall();
                out.lead_hours_median = select::quantile(&c.tally.lead_hours, 0.5);
                out.false_tickets_per_device_month = per_month(c.tally.tickets - c.tally.correct);
                vm.precision = c.tally.precision();
                vm.recall = c.tally.recall();
                vm.f1 = Some(c.tally.f1());
            }
            let watch = select::watch_level(
                &vdevs,
                mode,
                WATCH_CAP,
                oof_months,
                opts.horizon_h,
                window_h,
            );
            let watch_th = match (watch.as_ref().map(|w| w.0), ticket) {
                (Some(w), Some(t)) => w.min(t),
                (Some(w), None) => w,
                (None, Some(t)) => t,
                (None, None) => 1.0,
            };
            // Reported at the level served: when the ticket level is below the capped watch
            // level the watch is lowered to it, and its false episodes may then exceed the cap.
            if watch.is_some() || ticket.is_some() {
                let wt = select::watch_tally(&vdevs, mode, watch_th, opts.horizon_h, window_h);
                out.watches = wt.tickets;
                out.false_watches_per_device_month = per_month(wt.tickets - wt.correct);
            }
            // The customer-alert level is chosen once every mode's ticket level is known (the
            // false-alert cap is shared by the modes that may alert).
            if let Some(t) = ticket {
                pending_alerts.push(PendingAlert {
                    at: summaries.len(),
                    floor: t,
                    rule: c.rule,
                    hold_back: c.hold_back,
                    months: oof_months,
                    devices: vdevs,
                });
            }
            let rule = format!(
                "out of fold ({k} folds grouped by device); ticket: {}; needs {MIN_FAILURES} \
                 failures and precision >= {MIN_TICKET_PRECISION}; watch: lowest score whose \
                 false watch episodes plus {} of their Poisson deviation stay at most {WATCH_CAP} \
                 per device-month, never above the ticket's; customer alert: lowest score \
                 at or above the ticket's whose false alerts plus {} of their Poisson deviation \
                 stay at most {} per device-month shared equally by the modes with a ticket level; \
                 hold-back (tickets and alerts open only while the out-of-fold predicted time to \
                 failure is within it, and only scorings within it count toward the rule): none, \
                 or {:?} horizons when it scores strictly higher",
                opts.target.describe(window_h),
                select::FALSE_RATE_MARGIN_SD,
                select::FALSE_RATE_MARGIN_SD,
                opts.alert_cap,
                select::HOLD_BACK_HORIZONS,
            );
            (
                Levels {
                    watch: watch_th,
                    ticket,
                    customer_alert: None,
                    evidence,
                    rule,
                    out_of_fold: out,
                    consecutive: ticket.map(|_| c.rule.k),
                    of_last: ticket.map(|_| c.rule.n),
                    hold_back_hours: ticket.and(c.hold_back),
                    hold_back_in_rule: ticket.and(c.hold_back).is_some(),
                },
                c.rule.k,
            )
        };
        // Only a mode that may ticket has a say in the artifact's `consecutive`.
        if levels.ticket.is_some() {
            consecutive_votes.push(consecutive);
        }
        summaries.push(ModeSummary {
            mode: mode.clone(),
            rows: rows.len(),
            positives,
            negatives: all_y.len() - positives,
            classifier_rounds: cls.rounds,
            classifier_trees,
            served,
            regressor_rounds: reg.as_ref().and_then(|r| r.rounds),
            consecutive,
            validation: vm.clone(),
            levels: levels.clone(),
        });
        mode_models.push(ModeModel {
            mode: mode.clone(),
            classifier: cls.estimator,
            regressor: reg.map(|r| r.estimator),
            threshold: levels.ticket.unwrap_or(1.0),
            threshold_rule: levels.rule.clone(),
            ttf_cap_hours: Some(cap),
            validation: vm,
            calibration,
            levels: Some(levels),
            score_reference,
        });
    }
    pb.finish_and_clear();
    // Customer alerts: `alert_cap` bounds a device's false alerts of every mode together, so each
    // mode that may alert gets an equal share of it.
    let share = opts.alert_cap / pending_alerts.len().max(1) as f64;
    for p in &pending_alerts {
        let (Some(summary), Some(model)) = (summaries.get_mut(p.at), mode_models.get_mut(p.at))
        else {
            continue;
        };
        let alert = select::lowest_under_cap(
            &p.devices,
            &summary.mode,
            p.floor,
            p.rule,
            p.hold_back,
            share,
            p.months,
            true,
            opts.horizon_h,
            window_h,
        );
        let levels = &mut summary.levels;
        levels.customer_alert = alert.as_ref().map(|a| a.0);
        if let Some((_, at)) = &alert {
            levels.out_of_fold.alerts = at.tickets;
            levels.out_of_fold.false_alerts_per_device_month =
                (p.months > 0.0).then(|| (at.tickets - at.correct) as f64 / p.months);
        }
        model.levels = Some(levels.clone());
    }
    // Each ticketing mode keeps its own `consecutive` (in its levels); the artifact's is what
    // older daemons and modes without a ticket level use: the most cautious one asked for.
    let consecutive = consecutive_votes.iter().copied().max().unwrap_or(2);
    let artifact = Artifact {
        format: ARTIFACT_FORMAT.into(),
        format_version: ARTIFACT_VERSION,
        name: opts.name.clone(),
        version: fingerprint.chars().take(12).collect(),
        applies_to: AppliesTo::All,
        horizon_hours: opts.horizon_h,
        consecutive,
        features: spec,
        modes: mode_models,
        training: TrainingInfo {
            fingerprint,
            devices: h.devices.len(),
            rows: h.rows,
            // When the artifact was made: real wall time (training runs outside the daemon).
            trained_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            command: opts.command.clone(),
        },
    };
    artifact
        .validate()
        .map_err(|d| TrainError::Data(format!("trained artifact is invalid: {d}")))?;
    Ok((artifact, summaries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fold_mean_scores_the_mean_log_odds_of_the_fold_models() {
        use crate::predict::{Link, Tree};
        let stump = Tree::stump;
        let a = Estimator::Trees {
            base: -3.0,
            learning_rate: 0.1,
            trees: vec![stump(0, 1.0, -2.0, 5.0), stump(1, 0.0, 1.0, -1.0)],
            link: Link::Logistic,
        };
        let b = Estimator::Trees {
            base: -1.0,
            learning_rate: 0.3,
            trees: vec![stump(1, 2.0, 0.5, 4.0)],
            link: Link::Logistic,
        };
        let mean = mean_of_trees(&[a.clone(), b.clone()]).expect("two tree models");
        let logit = |p: f64| (p / (1.0 - p)).ln();
        for x in [[0.0, -1.0], [2.0, 1.0], [0.5, 3.0], [f64::NAN, 5.0]] {
            let want = (logit(a.predict(&x)) + logit(b.predict(&x))) / 2.0;
            let got = logit(mean.predict(&x));
            assert!((got - want).abs() < 1e-9, "{x:?}: {got} vs {want}");
            // Compiled for serving, it scores the same.
            let flat = crate::predict::FlatTrees::compile(&mean).expect("compiles");
            assert!((flat.predict(&x) - mean.predict(&x)).abs() < 1e-12);
        }
        assert!(mean_of_trees(&[a]).is_none(), "one model is not a mean");
    }

    #[test]
    fn calibration_is_monotone_and_moves_probabilities_toward_frequencies() {
        // Raw scores that overstate risk: a tenth of the rows scored 0.8 fail.
        let mut p = Vec::new();
        let mut y = Vec::new();
        for i in 0..1000 {
            let raw = if i % 2 == 0 { 0.8 } else { 0.2 };
            p.push(raw);
            y.push(if raw > 0.5 { i % 20 == 0 } else { i % 200 == 1 });
        }
        let c = fit_platt(&p, &y).expect("two classes");
        let hi = c.apply(0.8);
        assert!((hi - 0.1).abs() < 0.03, "{hi}");
        let mut last = 0.0;
        for i in 0..=1000 {
            let q = c.apply(i as f64 / 1000.0);
            assert!(q >= last, "not monotone at {i}: {q} < {last}");
            last = q;
        }
        assert!(fit_platt(&[0.1, 0.9], &[false, false]).is_none());
    }
}
