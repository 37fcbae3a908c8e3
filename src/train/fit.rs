//! `forewarn train`: history → rows → per failure mode a classifier and a time-to-failure
//! regressor → threshold and consecutive scorings chosen on validation devices → artifact.
//!
//! Honesty rules: the validation devices are a seeded split of the TRAINING devices (never the
//! evaluation set); scalers, bins and class weights come from training rows only; early stopping,
//! threshold and `consecutive` are chosen on validation; the final models are then refitted on
//! every training device with the chosen number of rounds.

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
    AppliesTo, Artifact, Estimator, ModeModel, TrainingInfo, ValidationMetrics, ARTIFACT_FORMAT,
    ARTIFACT_VERSION,
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
    pub valid_fraction: f64,
    pub seed: u64,
    pub name: String,
    pub command: String,
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
    pub validation_devices: usize,
    pub classifier_rounds: Option<usize>,
    pub regressor_rounds: Option<usize>,
    pub threshold: f64,
    pub consecutive: u16,
    pub validation: ValidationMetrics,
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
    let spec = build_spec(h, &opts.engine.window, stats);
    if spec.metrics.is_empty() {
        return Err(TrainError::Data(
            "every telemetry metric is constant or empty: nothing to learn from".into(),
        ));
    }
    let failing: Vec<(String, bool)> = h
        .devices
        .iter()
        .map(|d| {
            (
                d.id.clone(),
                d.events.iter().any(|e| e.kind == EventKind::Failure),
            )
        })
        .collect();
    let (_, valid_dev) = select::split_devices(&failing, opts.valid_fraction, opts.seed);
    let mut is_valid = vec![false; h.devices.len()];
    for &i in &valid_dev {
        is_valid[i] = true;
    }

    let pb = super::progress(h.devices.len() as u64, "features");
    let all_rows = build_rows(
        h,
        &spec,
        &opts.engine,
        &modes,
        opts.horizon_h,
        cap,
        &is_valid,
        &pb,
    );
    pb.finish_and_clear();

    let pb = super::progress(modes.len() as u64 * 2, "fitting");
    let mut mode_models = Vec::new();
    let mut summaries = Vec::new();
    let mut consecutive_votes = Vec::new();
    for (mode, rows) in modes.iter().zip(&all_rows) {
        let cls_rows = |valid: bool| -> (Vec<usize>, Vec<f64>) {
            (0..rows.len())
                .filter(|&i| is_valid[rows.device[i] as usize] == valid)
                .filter_map(|i| {
                    rows.labels[i]
                        .positive
                        .map(|p| (i, if p { 1.0 } else { 0.0 }))
                })
                .unzip()
        };
        let reg_rows = |valid: bool| -> (Vec<usize>, Vec<f64>) {
            (0..rows.len())
                .filter(|&i| is_valid[rows.device[i] as usize] == valid)
                .filter_map(|i| rows.labels[i].target.map(|t| (i, t)))
                .unzip()
        };
        let (ct, cy) = cls_rows(false);
        let (cv, cvy) = cls_rows(true);
        let positives = cy.iter().chain(&cvy).filter(|v| **v > 0.5).count();
        if positives == 0 || cy.iter().all(|v| *v > 0.5) {
            return Err(TrainError::Data(format!(
                "mode {mode:?}: training rows need both failing-within-horizon and healthy examples \
                 (positives {positives}); try another --horizon"
            )));
        }
        let validate = !cv.is_empty();
        let cls = fit_one(
            opts.estimator,
            Loss::Logistic,
            rows,
            &ct,
            &cy,
            validate.then_some((&cv[..], &cvy[..])),
            opts.seed,
            None,
        )?;
        pb.inc(1);
        let (rt, ry) = reg_rows(false);
        let (rv, rvy) = reg_rows(true);
        let reg = if rt.len() >= 10 {
            Some(fit_one(
                opts.estimator,
                Loss::SquaredError,
                rows,
                &rt,
                &ry,
                (!rv.is_empty()).then_some((&rv[..], &rvy[..])),
                opts.seed,
                None,
            )?)
        } else {
            None
        };
        pb.inc(1);

        // Validation figures and the ticket policy, on validation devices only.
        let mut vm = ValidationMetrics {
            rows: cv.len(),
            positives: cvy.iter().filter(|v| **v > 0.5).count(),
            ..Default::default()
        };
        let vscores: Vec<f64> = cv
            .iter()
            .map(|&i| cls.estimator.predict(rows.row(i)))
            .collect();
        let vlabels: Vec<bool> = cvy.iter().map(|v| *v > 0.5).collect();
        vm.roc_auc = select::roc_auc(&vscores, &vlabels);
        vm.pr_auc = select::pr_auc(&vscores, &vlabels);
        if let Some(r) = &reg {
            if !rv.is_empty() {
                let se: f64 = rv
                    .iter()
                    .zip(&rvy)
                    .map(|(&i, t)| (r.estimator.predict(rows.row(i)).clamp(0.0, cap) - t).powi(2))
                    .sum();
                vm.rmse_hours = Some((se / rv.len() as f64).sqrt());
            }
        }
        let vdevs: Vec<ValidDevice> = valid_dev
            .iter()
            .map(|&d| ValidDevice {
                rows: (0..rows.len())
                    .filter(|&i| rows.device[i] as usize == d)
                    .map(|i| (rows.ts[i], cls.estimator.predict(rows.row(i))))
                    .collect(),
                events: &h.devices[d].events,
            })
            .collect();
        let (threshold, consecutive, rule) = if vdevs.is_empty() {
            (
                0.5,
                2,
                "0.5 (too few devices for a validation split)".to_string(),
            )
        } else {
            let c = select::choose_policy(&vdevs, mode, opts.horizon_h, window_h, opts.target);
            vm.precision = c.tally.precision();
            vm.recall = c.tally.recall();
            vm.f1 = Some(c.tally.f1());
            (c.threshold, c.consecutive, opts.target.describe(window_h))
        };
        consecutive_votes.push(consecutive);

        // Refit on every training device with the rounds validation chose.
        let (mut cls, mut reg) = (cls, reg);
        if validate {
            let all: Vec<usize> = ct.iter().chain(&cv).copied().collect();
            let ally: Vec<f64> = cy.iter().chain(&cvy).copied().collect();
            cls = fit_one(
                opts.estimator,
                Loss::Logistic,
                rows,
                &all,
                &ally,
                None,
                opts.seed,
                cls.rounds,
            )?;
            if let Some(r) = &reg {
                let all: Vec<usize> = rt.iter().chain(&rv).copied().collect();
                let ally: Vec<f64> = ry.iter().chain(&rvy).copied().collect();
                reg = Some(fit_one(
                    opts.estimator,
                    Loss::SquaredError,
                    rows,
                    &all,
                    &ally,
                    None,
                    opts.seed,
                    r.rounds,
                )?);
            }
        }
        summaries.push(ModeSummary {
            mode: mode.clone(),
            rows: rows.len(),
            positives,
            validation_devices: valid_dev.len(),
            classifier_rounds: cls.rounds,
            regressor_rounds: reg.as_ref().and_then(|r| r.rounds),
            threshold,
            consecutive,
            validation: vm.clone(),
        });
        mode_models.push(ModeModel {
            mode: mode.clone(),
            classifier: cls.estimator,
            regressor: reg.map(|r| r.estimator),
            threshold,
            threshold_rule: rule,
            ttf_cap_hours: Some(cap),
            validation: vm,
        });
    }
    pb.finish_and_clear();
    // One artifact holds one `consecutive`: the most cautious the modes asked for.
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
            trained_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            command: opts.command.clone(),
        },
    };
    artifact
        .validate()
        .map_err(|d| TrainError::Data(format!("trained artifact is invalid: {d}")))?;
    Ok((artifact, summaries))
}
