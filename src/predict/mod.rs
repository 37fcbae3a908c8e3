//! Model artifacts (the versioned JSON files in `models/`) and scoring.
//!
//! An artifact is self-describing: its feature spec, the devices it applies to, per failure mode a
//! classifier (probability of failing within the horizon), a regressor of time to failure, the
//! decision threshold chosen on validation, and where it came from. `forewarn train` writes them,
//! `serve` and `evaluate` load them through [`Artifact::load`], which refuses what it cannot serve.

mod config;
pub mod example;
mod flat;

pub use config::Config;
pub use flat::{FlatTrees, SplitRow, MAX_COMPLETE_DEPTH, ROW_FEATURES};

use crate::domain::Evidence;
use crate::features::{Attributes, FeatureSpec};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const ARTIFACT_FORMAT: &str = "forewarn-model";
/// Bumped on any change a previous daemon could not read correctly. Version 2 added calibration,
/// the three levels (watch, ticket, customer alert) with their out-of-fold evidence, event-code
/// features and event-time windows; version 1 artifacts still load (their one threshold serves as
/// every level, as it did). Version 3 added a mode's hold-back (`levels.hold_back_hours`: a ticket
/// opens only while the predicted time to failure is within it); version 2 artifacts still load,
/// with no hold-back. Version 4 added `levels.hold_back_in_rule` (a scoring counts toward the
/// ticket rule only when it is also within the hold-back); version 3 artifacts still load, with
/// the hold-back checked at the opening scoring alone, as before. Version 5 added a mode's
/// `score_reference` (the training scores the live drift statistic compares against); older
/// artifacts still load, their drift measured against the first scores after start.
pub const ARTIFACT_VERSION: u32 = 5;
/// The oldest artifact version this build reads.
pub const ARTIFACT_MIN_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a forewarn model artifact: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: artifact format {found:?} version {version} is not supported (this build reads {ARTIFACT_FORMAT:?} versions {ARTIFACT_MIN_VERSION} to {ARTIFACT_VERSION})")]
    Version {
        path: PathBuf,
        found: String,
        version: u32,
    },
    #[error("{path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
}

/// What makes an artifact unusable (a tree pointing outside itself, a feature the spec does not
/// have, a threshold that is not a probability, …), worded for the operator.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidArtifact(pub String);

impl From<String> for InvalidArtifact {
    fn from(s: String) -> Self {
        InvalidArtifact(s)
    }
}

impl From<&str> for InvalidArtifact {
    fn from(s: &str) -> Self {
        InvalidArtifact(s.to_string())
    }
}

/// Which devices a model scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "match")]
pub enum AppliesTo {
    #[default]
    All,
    /// Devices whose attribute `name` is one of `values`.
    Attribute { name: String, values: Vec<String> },
}

impl AppliesTo {
    pub fn matches(&self, attrs: Option<&Attributes>) -> bool {
        match self {
            AppliesTo::All => true,
            AppliesTo::Attribute { name, values } => attrs
                .and_then(|a| a.get(name))
                .is_some_and(|v| values.iter().any(|x| x == v)),
        }
    }
}

/// How a raw model output becomes the served number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    Identity,
    /// Logistic sigmoid: the model outputs log-odds.
    Logistic,
}

impl Link {
    fn apply(self, x: f64) -> f64 {
        match self {
            Link::Identity => x,
            Link::Logistic => 1.0 / (1.0 + (-x).exp()),
        }
    }
}

/// Standardisation fitted on training rows only; NaN (a missing feature) maps to the mean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl Scaler {
    pub fn transform(&self, x: &[f64], out: &mut Vec<f64>) {
        out.clear();
        out.extend(
            x.iter()
                .zip(self.mean.iter().zip(&self.std))
                .map(|(v, (m, s))| {
                    if v.is_finite() {
                        (v - m) / if *s > 1e-12 { *s } else { 1.0 }
                    } else {
                        0.0
                    }
                }),
        );
    }
}

/// One node of a regression tree, stored flat. A leaf has `feature == LEAF`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub feature: u32,
    pub threshold: f64,
    pub left: u32,
    pub right: u32,
    /// Leaf output (or, for inner nodes, the mean output below, used for evidence).
    pub value: f64,
    /// Where a missing (NaN) feature goes.
    pub missing_left: bool,
}

pub const LEAF: u32 = u32::MAX;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    /// A tree of one split: `below` where feature `feature` is at most `threshold` (or missing),
    /// `above` beyond it; the root holds their mean. Small hand-made models in tests and examples.
    pub fn stump(feature: u32, threshold: f64, below: f64, above: f64) -> Tree {
        let leaf = |value| Node {
            feature: LEAF,
            threshold: 0.0,
            left: 0,
            right: 0,
            value,
            missing_left: true,
        };
        Tree {
            nodes: vec![
                Node {
                    feature,
                    threshold,
                    left: 1,
                    right: 2,
                    value: (below + above) / 2.0,
                    missing_left: true,
                },
                leaf(below),
                leaf(above),
            ],
        }
    }

    #[inline]
    pub fn predict(&self, x: &[f64]) -> f64 {
        let mut i = 0usize;
        loop {
            let n = &self.nodes[i];
            if n.feature == LEAF {
                return n.value;
            }
            let v = x[n.feature as usize];
            let left = if v.is_nan() {
                n.missing_left
            } else {
                v <= n.threshold
            };
            i = if left { n.left } else { n.right } as usize;
        }
    }
}

/// A mode's estimators compiled for serving (see [`FlatTrees`]).
#[derive(Debug, Clone)]
pub struct CompiledMode {
    classifier: Option<FlatTrees>,
    regressor: Option<FlatTrees>,
    /// Whether either reads a [`SplitRow`]: then a scoring prepares one for both.
    reads_row: bool,
}

impl CompiledMode {
    /// Whether the classifier was compiled (trees that share nodes are scored as stored).
    pub fn has_compiled_classifier(&self) -> bool {
        self.classifier.is_some()
    }

    pub fn new(m: &ModeModel) -> CompiledMode {
        let classifier = FlatTrees::compile(&m.classifier);
        let regressor = m.regressor.as_ref().and_then(FlatTrees::compile);
        let reads_row = classifier
            .iter()
            .chain(regressor.iter())
            .any(FlatTrees::is_complete);
        CompiledMode {
            classifier,
            regressor,
            reads_row,
        }
    }
}

fn predict_with(e: &Estimator, flat: Option<&FlatTrees>, x: &[f64], row: Option<&SplitRow>) -> f64 {
    match (flat, row) {
        (Some(f), Some(row)) => f.predict_prepared(x, row),
        (Some(f), None) => f.predict(x),
        (None, _) => e.predict(x),
    }
}

/// A fitted estimator. Both kinds score a feature row straight from [`FeatureSpec::extract`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Estimator {
    /// Linear model on standardised features (logistic regression when `link` is logistic).
    Linear {
        scaler: Scaler,
        weights: Vec<f64>,
        bias: f64,
        link: Link,
    },
    /// Additive tree ensemble (gradient boosting, or a forest with `learning_rate` 1/n).
    Trees {
        base: f64,
        learning_rate: f64,
        trees: Vec<Tree>,
        link: Link,
    },
}

impl Estimator {
    pub fn n_features(&self) -> Option<usize> {
        match self {
            Estimator::Linear { weights, .. } => Some(weights.len()),
            Estimator::Trees { .. } => None,
        }
    }

    fn max_feature(&self) -> Option<usize> {
        match self {
            Estimator::Linear { weights, .. } => weights.len().checked_sub(1),
            Estimator::Trees { trees, .. } => trees
                .iter()
                .flat_map(|t| t.nodes.iter())
                .filter(|n| n.feature != LEAF)
                .map(|n| n.feature as usize)
                .max(),
        }
    }

    fn check(&self) -> Result<(), InvalidArtifact> {
        if let Estimator::Trees { trees, .. } = self {
            for (ti, t) in trees.iter().enumerate() {
                if t.nodes.is_empty() {
                    return Err(format!("tree {ti} is empty").into());
                }
                for n in &t.nodes {
                    if n.feature != LEAF
                        && (n.left as usize >= t.nodes.len() || n.right as usize >= t.nodes.len())
                    {
                        return Err(format!("tree {ti} has a child index out of range").into());
                    }
                }
            }
        }
        if let Estimator::Linear {
            scaler, weights, ..
        } = self
        {
            if scaler.mean.len() != weights.len() || scaler.std.len() != weights.len() {
                return Err("linear model scaler and weights differ in length".into());
            }
        }
        Ok(())
    }

    /// Model output after the link (a probability for classifiers, hours for regressors).
    pub fn predict(&self, x: &[f64]) -> f64 {
        match self {
            Estimator::Linear {
                scaler,
                weights,
                bias,
                link,
            } => {
                let mut z = *bias;
                for ((v, w), (m, s)) in x
                    .iter()
                    .zip(weights)
                    .zip(scaler.mean.iter().zip(&scaler.std))
                {
                    if v.is_finite() {
                        z += w * (v - m) / if *s > 1e-12 { *s } else { 1.0 };
                    }
                }
                link.apply(z)
            }
            Estimator::Trees {
                base,
                learning_rate,
                trees,
                link,
            } => {
                let mut z = *base;
                for t in trees {
                    z += learning_rate * t.predict(x);
                }
                link.apply(z)
            }
        }
    }

    /// Per-feature contribution to the raw output for row `x` (linear: weight × scaled value;
    /// trees: the change of the node mean along the decision path, summed per feature).
    pub fn contributions(&self, x: &[f64], n_features: usize) -> Vec<f64> {
        let mut c = vec![0.0; n_features];
        match self {
            Estimator::Linear {
                scaler, weights, ..
            } => {
                for (i, ((v, w), (m, s))) in x
                    .iter()
                    .zip(weights)
                    .zip(scaler.mean.iter().zip(&scaler.std))
                    .enumerate()
                {
                    if v.is_finite() && i < n_features {
                        c[i] = w * (v - m) / if *s > 1e-12 { *s } else { 1.0 };
                    }
                }
            }
            Estimator::Trees {
                trees,
                learning_rate,
                ..
            } => {
                for t in trees {
                    let mut i = 0usize;
                    loop {
                        let n = &t.nodes[i];
                        if n.feature == LEAF {
                            break;
                        }
                        let v = x[n.feature as usize];
                        let left = if v.is_nan() {
                            n.missing_left
                        } else {
                            v <= n.threshold
                        };
                        let next = if left { n.left } else { n.right } as usize;
                        if (n.feature as usize) < n_features {
                            c[n.feature as usize] +=
                                learning_rate * (t.nodes[next].value - n.value);
                        }
                        i = next;
                    }
                }
            }
        }
        c
    }
}

/// Validation figures recorded at training time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ValidationMetrics {
    pub pr_auc: Option<f64>,
    pub roc_auc: Option<f64>,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    pub rmse_hours: Option<f64>,
    pub rows: usize,
    pub positives: usize,
}

/// The predictors for one failure mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModeModel {
    pub mode: String,
    /// P(this mode fails within the horizon).
    pub classifier: Estimator,
    /// Hours until this mode fails (capped at `ttf_cap_hours` in training).
    pub regressor: Option<Estimator>,
    /// Probability at or above which a scoring counts toward a ticket.
    pub threshold: f64,
    /// How the threshold was chosen, in words ("best F1 on validation devices").
    #[serde(default)]
    pub threshold_rule: String,
    #[serde(default)]
    pub ttf_cap_hours: Option<f64>,
    #[serde(default)]
    pub validation: ValidationMetrics,
    /// Maps the classifier's output to a calibrated probability (fitted out of fold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// The three levels and the out-of-fold evidence behind them. `None` (version 1 artifacts):
    /// `threshold` serves as every level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub levels: Option<Levels>,
    /// How the served model scores the training data: the out-of-fold calibrated probabilities
    /// of the training rows counted in [`SCORE_BINS`] equal bins of 0..1 (version 5). The
    /// reference of `forewarn_model_score_drift_psi`; `None` before version 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_reference: Option<Vec<u64>>,
}

/// Bins of a score distribution (equal widths over 0..1): the artifact's `score_reference` and
/// the live drift statistic's.
pub const SCORE_BINS: usize = 10;

/// The bin of a probability among [`SCORE_BINS`] (out-of-range values in the end bins).
pub fn score_bin(p: f64) -> usize {
    ((p.clamp(0.0, 1.0) * SCORE_BINS as f64) as usize).min(SCORE_BINS - 1)
}

impl ModeModel {
    /// Score at which a ticket opens; `None` when the mode may not open tickets at all.
    pub fn ticket_threshold(&self) -> Option<f64> {
        match &self.levels {
            Some(l) => l.ticket,
            None => Some(self.threshold),
        }
    }
    /// Scorings at or above the ticket level that open a ticket: the mode's own choice,
    /// else `artifact_default` (the artifact's `consecutive`).
    pub fn consecutive(&self, artifact_default: u16) -> u16 {
        self.levels
            .as_ref()
            .and_then(|l| l.consecutive)
            .unwrap_or(artifact_default)
    }
    /// When this mode opens a ticket: `consecutive` of its last `of_last` scorings at or above
    /// the ticket level (in a row when the artifact names no `of_last`).
    pub fn open_rule(&self, artifact_default: u16) -> OpenRule {
        let k = self.consecutive(artifact_default);
        let n = self.levels.as_ref().and_then(|l| l.of_last).unwrap_or(k);
        OpenRule::new(k, n)
    }
    /// Hours of predicted time to failure beyond which no ticket or customer alert opens.
    pub fn hold_back_hours(&self) -> Option<f64> {
        self.levels.as_ref().and_then(|l| l.hold_back_hours)
    }
    /// Whether a scoring beyond the hold-back also does not count toward the ticket rule.
    pub fn hold_back_in_rule(&self) -> bool {
        self.levels.as_ref().is_some_and(|l| l.hold_back_in_rule)
    }
    /// Score at which a device is watched (internal: API and metrics only).
    pub fn watch_threshold(&self) -> f64 {
        self.levels.as_ref().map_or(self.threshold, |l| l.watch)
    }
    /// Score at which a live ticket also alerts the customer; `None`: never.
    pub fn alert_threshold(&self) -> Option<f64> {
        match &self.levels {
            Some(l) => l.customer_alert,
            None => Some(self.threshold),
        }
    }
}

/// A monotone map from a classifier's raw probability to a calibrated one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Calibration {
    /// Platt scaling on the log-odds: p' = σ(a · logit(p) + b), with a > 0 (monotone).
    Platt { a: f64, b: f64 },
}

impl Calibration {
    pub fn apply(&self, p: f64) -> f64 {
        match *self {
            Calibration::Platt { a, b } => {
                let p = p.clamp(1e-12, 1.0 - 1e-12);
                let z = a * (p / (1.0 - p)).ln() + b;
                1.0 / (1.0 + (-z).exp())
            }
        }
    }
}

/// Whether a mode's predictions earned the right to open tickets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ModeEvidence {
    /// Enough failures, and out-of-fold tickets that were mostly right.
    #[default]
    Sufficient,
    /// Too few failures in training to choose or check a ticket threshold: watch only.
    TooFewFailures,
    /// Out of fold, no ticket policy found failures with acceptable precision: watch only.
    NoOutOfFoldEvidence,
}

/// Out-of-fold figures of a mode at its chosen levels (k-fold grouped by device).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OutOfFold {
    pub folds: usize,
    pub devices: usize,
    pub device_months: f64,
    /// Failures of the mode the devices were scored before (a warning was possible).
    pub failures: usize,
    pub tickets: usize,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub lead_hours_median: Option<f64>,
    pub false_tickets_per_device_month: Option<f64>,
    pub alerts: usize,
    pub false_alerts_per_device_month: Option<f64>,
    pub watches: usize,
    pub false_watches_per_device_month: Option<f64>,
    /// Brier score of the calibrated out-of-fold probabilities, and before calibration.
    pub brier: Option<f64>,
    pub brier_uncalibrated: Option<f64>,
}

/// A mode's three levels, each chosen on out-of-fold predictions for its stated target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Levels {
    /// Watch (internal): the lowest score whose false watches stay under the watch cap.
    pub watch: f64,
    /// Ticket (dispatch); `None` when the evidence is not sufficient.
    pub ticket: Option<f64>,
    /// Customer alert: the lowest score at or above the ticket's whose false alerts stay under
    /// the alert cap; `None` when none does.
    pub customer_alert: Option<f64>,
    pub evidence: ModeEvidence,
    /// How each level was chosen, in words.
    pub rule: String,
    pub out_of_fold: OutOfFold,
    /// Scorings at or above the ticket level before a ticket opens, as chosen with the
    /// threshold for this mode; `None` (older artifacts): the artifact's `consecutive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive: Option<u16>,
    /// Out of how many of the latest scorings the `consecutive` ones count; `None` (older
    /// artifacts) or equal to `consecutive`: they must be in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub of_last: Option<u16>,
    /// Hold-back: a ticket (and a customer alert) opens only while the mode's predicted time to
    /// failure is at most this many hours, chosen out of fold with the level and the rule;
    /// `None` (also every artifact before version 3): no bound. The watch is never held back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_back_hours: Option<f64>,
    /// Whether a scoring counts toward the ticket rule (`consecutive` of `of_last`) only when it
    /// is also within the hold-back, so one dip of the predicted time under the bound does not
    /// open a ticket where the rule asks for more than one scoring. `false` (every artifact
    /// before version 4): the bound is checked at the opening scoring alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hold_back_in_rule: bool,
}

/// Whether a scoring with predicted time to failure `ttf_hours` is within the hold-back `bound`:
/// always without a bound; never when a bound is set and nothing was predicted. Training's
/// out-of-fold replay and the engine decide with this one function.
pub fn within_hold_back(bound: Option<f64>, ttf_hours: Option<f64>) -> bool {
    match bound {
        None => true,
        Some(b) => ttf_hours.is_some_and(|h| h <= b),
    }
}

/// When a ticket opens: the latest scoring at or above the ticket level, and at least `k` of the
/// last `n` scorings (the latest included). `k` of `k` is `k` in a row. A fault whose score
/// flickers around the level (above, below, above) never gives three in a row however close the
/// failure, while a rule such as two of the last four still asks for more than one lone spike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenRule {
    pub k: u16,
    pub n: u16,
}

impl OpenRule {
    /// Scorings the engine remembers per (model, mode): the bits of a `u16`.
    pub const MAX_N: u16 = 16;

    /// `k` of the last `n`, with 1 ≤ k ≤ n ≤ [`OpenRule::MAX_N`] (larger values are clamped).
    pub fn new(k: u16, n: u16) -> OpenRule {
        let k = k.clamp(1, Self::MAX_N);
        OpenRule {
            k,
            n: n.clamp(k, Self::MAX_N),
        }
    }

    /// `k` scorings in a row.
    pub fn in_a_row(k: u16) -> OpenRule {
        OpenRule::new(k, k)
    }

    /// The memory after one more scoring: bit 0 is the latest scoring (1: at or above the
    /// level), bit i the one i scorings before.
    pub fn remember(recent: u16, above: bool) -> u16 {
        (recent << 1) | u16::from(above)
    }

    /// Whether the memory `recent` ([`OpenRule::remember`]) opens a ticket.
    pub fn met(&self, recent: u16) -> bool {
        let window = u16::MAX >> (Self::MAX_N - self.n.clamp(1, Self::MAX_N));
        recent & 1 == 1 && (recent & window).count_ones() >= u32::from(self.k.max(1))
    }
}
/// Where a model came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainingInfo {
    /// SHA-256 of the training files' bytes.
    pub fingerprint: String,
    pub devices: usize,
    pub rows: usize,
    pub trained_at: String,
    pub command: String,
}

/// A model artifact as stored in `models/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub format: String,
    pub format_version: u32,
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub applies_to: AppliesTo,
    /// The classifier's horizon, in hours.
    pub horizon_hours: f64,
    /// Consecutive scorings at or above threshold before a ticket opens.
    pub consecutive: u16,
    pub features: FeatureSpec,
    pub modes: Vec<ModeModel>,
    #[serde(default)]
    pub training: TrainingInfo,
}

/// One mode's score for one feature row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModeScore {
    pub probability: f64,
    pub ttf_hours: Option<f64>,
}

impl Artifact {
    /// Reads and validates an artifact file.
    pub fn load(path: &Path) -> Result<Artifact, ArtifactError> {
        let text = std::fs::read_to_string(path).map_err(|source| ArtifactError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text, path)
    }

    pub fn from_json(text: &str, path: &Path) -> Result<Artifact, ArtifactError> {
        // Check the header first, so a future format gets a version error, not a parse error.
        #[derive(Deserialize)]
        struct Header {
            format: String,
            format_version: u32,
        }
        let header: Header = serde_json::from_str(text).map_err(|source| ArtifactError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        if header.format != ARTIFACT_FORMAT
            || !(ARTIFACT_MIN_VERSION..=ARTIFACT_VERSION).contains(&header.format_version)
        {
            return Err(ArtifactError::Version {
                path: path.to_path_buf(),
                found: header.format,
                version: header.format_version,
            });
        }
        let a: Artifact = serde_json::from_str(text).map_err(|source| ArtifactError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        a.validate().map_err(|e| ArtifactError::Invalid {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        Ok(a)
    }

    pub fn validate(&self) -> Result<(), InvalidArtifact> {
        let n = self.features.len();
        if self.modes.is_empty() {
            return Err("artifact has no failure modes".into());
        }
        if self.features.window.window_readings == 0 || self.features.window.window_readings > 256 {
            return Err("feature spec window_readings must be 1..=256".into());
        }
        if self.features.window.ew_spans.len() > 8 {
            return Err("feature spec has more than 8 EW spans".into());
        }
        let hours = &self.features.window.ew_hours;
        if hours.len() > 8 || hours.iter().any(|h| !h.is_finite() || *h <= 0.0) {
            return Err("feature spec ew_hours must be at most 8 positive, finite spans".into());
        }
        for m in &self.modes {
            for (what, e) in std::iter::once(("classifier", &m.classifier))
                .chain(m.regressor.iter().map(|r| ("regressor", r)))
            {
                e.check()
                    .map_err(|d| format!("mode {:?} {what}: {d}", m.mode))?;
                if let Some(f) = e.max_feature() {
                    if f >= n {
                        return Err(format!(
                            "mode {:?} {what} reads feature {f} but the feature spec has {n}",
                            m.mode
                        )
                        .into());
                    }
                }
                if let Some(k) = e.n_features() {
                    if k != n {
                        return Err(format!(
                            "mode {:?} {what} expects {k} features, the feature spec has {n}",
                            m.mode
                        )
                        .into());
                    }
                }
            }
            if let Some(r) = &m.score_reference {
                if r.len() != SCORE_BINS || r.iter().all(|&c| c == 0) {
                    return Err(format!(
                        "mode {:?} score_reference must be {SCORE_BINS} counts, not all zero",
                        m.mode
                    )
                    .into());
                }
            }
            if !(0.0..=1.0).contains(&m.threshold) {
                return Err(format!(
                    "mode {:?} threshold {} is not a probability",
                    m.mode, m.threshold
                )
                .into());
            }
            if let Some(b) = m.hold_back_hours() {
                if !b.is_finite() || b <= 0.0 {
                    return Err(format!(
                        "mode {:?} hold_back_hours {b} is not a positive number of hours",
                        m.mode
                    )
                    .into());
                }
                if m.regressor.is_none() {
                    return Err(format!(
                        "mode {:?} has hold_back_hours but no time-to-failure regressor to bound",
                        m.mode
                    )
                    .into());
                }
            }
        }
        Ok(())
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(tmp, path)
    }

    /// Scores one mode on a feature row.
    pub fn score_mode(&self, mode: &ModeModel, x: &[f64]) -> ModeScore {
        Self::score(mode, None, x, |_| true)
    }

    /// [`Artifact::score_mode`] with the mode's compiled trees: the same numbers, faster.
    pub fn score_mode_compiled(
        &self,
        mode: &ModeModel,
        compiled: &CompiledMode,
        x: &[f64],
    ) -> ModeScore {
        Self::score(mode, Some(compiled), x, |_| true)
    }

    /// [`Artifact::score_mode_compiled`] that runs the regressor only when `needs_ttf`, given
    /// the probability, says its estimate is used; otherwise `ttf_hours` is `None`. The
    /// probability is the same either way; a caller that passes `|_| true` gets exactly
    /// [`Artifact::score_mode_compiled`].
    pub fn score_mode_compiled_if(
        &self,
        mode: &ModeModel,
        compiled: &CompiledMode,
        x: &[f64],
        needs_ttf: impl FnOnce(f64) -> bool,
    ) -> ModeScore {
        Self::score(mode, Some(compiled), x, needs_ttf)
    }

    fn score(
        mode: &ModeModel,
        compiled: Option<&CompiledMode>,
        x: &[f64],
        needs_ttf: impl FnOnce(f64) -> bool,
    ) -> ModeScore {
        match compiled {
            // One prepared row for the classifier and the regressor.
            Some(c) if c.reads_row => flat::with_row(x, |row| {
                Self::score_on(mode, compiled, x, Some(row), needs_ttf)
            }),
            _ => Self::score_on(mode, compiled, x, None, needs_ttf),
        }
    }

    fn score_on(
        mode: &ModeModel,
        compiled: Option<&CompiledMode>,
        x: &[f64],
        row: Option<&SplitRow>,
        needs_ttf: impl FnOnce(f64) -> bool,
    ) -> ModeScore {
        let flat_cls = compiled.and_then(|c| c.classifier.as_ref());
        let flat_reg = compiled.and_then(|c| c.regressor.as_ref());
        let mut p = predict_with(&mode.classifier, flat_cls, x, row).clamp(0.0, 1.0);
        if let (Some(c), false) = (&mode.calibration, p.is_nan()) {
            p = c.apply(p);
        }
        let probability = if p.is_nan() { 0.0 } else { p };
        let regressor = mode.regressor.as_ref().filter(|_| needs_ttf(probability));
        let ttf = regressor.map(|r| {
            let v = predict_with(r, flat_reg, x, row).max(0.0);
            match mode.ttf_cap_hours {
                Some(cap) => v.min(cap),
                None => v,
            }
        });
        ModeScore {
            probability,
            ttf_hours: ttf.filter(|v| v.is_finite()),
        }
    }

    /// The `k` features that pushed this mode's score up the most.
    pub fn evidence(&self, mode: &ModeModel, x: &[f64], k: usize) -> Vec<Evidence> {
        self.evidence_named(mode, None, x, k, &self.features.names())
    }

    /// [`Artifact::evidence`] with the feature names given (`self.features.names()`, formatted
    /// once per loaded model rather than for every ticket change).
    /// With `compiled` (the mode's [`CompiledMode`]) the contributions walk its compiled
    /// classifier, whose arrays the scoring has just read: the same numbers, sooner.
    pub fn evidence_named(
        &self,
        mode: &ModeModel,
        compiled: Option<&CompiledMode>,
        x: &[f64],
        k: usize,
        names: &[String],
    ) -> Vec<Evidence> {
        let c = compiled
            .and_then(|c| c.classifier.as_ref())
            .and_then(|f| f.contributions(x, names.len()))
            .unwrap_or_else(|| mode.classifier.contributions(x, names.len()));
        let mut idx: Vec<usize> = (0..c.len())
            .filter(|&i| c[i] > 0.0 && c[i].is_finite())
            .collect();
        idx.sort_by(|&a, &b| c[b].total_cmp(&c[a]));
        idx.into_iter()
            .take(k)
            .map(|i| Evidence {
                feature: names[i].clone(),
                value: Some(x[i]).filter(|v| v.is_finite()),
                weight: c[i],
            })
            .collect()
    }
}

/// Loads every `*.json` artifact of a folder, sorted by file name.
pub fn load_dir(dir: &Path) -> Result<Vec<Artifact>, ArtifactError> {
    let rd = std::fs::read_dir(dir).map_err(|source| ArtifactError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths.iter().map(|p| Artifact::load(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_rule_counts_the_latest_scorings_and_needs_the_latest_above() {
        // (k, n, scorings oldest first, opens at the last one)
        let table: [(u16, u16, &[bool], bool); 9] = [
            (1, 1, &[true], true),
            (1, 1, &[true, false], false),
            (2, 2, &[true, true], true),
            (2, 2, &[true, false, true], false),
            (2, 3, &[true, false, true], true),
            (2, 3, &[true, true, false], false),
            (2, 4, &[true, false, false, true], true),
            (2, 4, &[true, false, false, false, true], false),
            (3, 6, &[true, false, true, false, false, true], true),
        ];
        for (k, n, seq, want) in table {
            let recent = seq.iter().fold(0u16, |m, a| OpenRule::remember(m, *a));
            assert_eq!(OpenRule::new(k, n).met(recent), want, "{k} of {n}: {seq:?}");
        }
        // k above n, or either beyond the memory, is clamped to a rule that can be met.
        assert_eq!(OpenRule::new(3, 2), OpenRule { k: 3, n: 3 });
        assert_eq!(OpenRule::new(40, 50), OpenRule { k: 16, n: 16 });
        assert!(OpenRule::in_a_row(16).met(u16::MAX));
        assert!(!OpenRule::in_a_row(16).met(u16::MAX - 2));
    }

    /// The shared example model with a one-stump tree classifier and no regressor.
    fn tiny() -> Artifact {
        let mut a = super::example::hot_model();
        a.name = "tiny".into();
        a.modes[0].classifier = Estimator::Trees {
            base: -2.0,
            learning_rate: 1.0,
            link: Link::Logistic,
            trees: vec![Tree::stump(0, 80.0, -1.0, 4.0)],
        };
        a.modes[0].regressor = None;
        a
    }

    #[test]
    fn artifact_round_trips_and_scores() {
        let a = tiny();
        let json = serde_json::to_string(&a).unwrap();
        let b = Artifact::from_json(&json, Path::new("m.json")).unwrap();
        assert_eq!(a, b);
        let hot = b.score_mode(&b.modes[0], &[90.0]);
        let cold = b.score_mode(&b.modes[0], &[20.0]);
        assert!(hot.probability > 0.8 && cold.probability < 0.1);
        let ev = b.evidence(&b.modes[0], &[90.0], 3);
        assert_eq!(ev[0].feature, "temp.last");
    }

    #[test]
    fn unknown_version_or_feature_spec_is_refused_with_a_clear_error() {
        let mut v = serde_json::to_value(tiny()).unwrap();
        v["format_version"] = 99.into();
        let e = Artifact::from_json(&v.to_string(), Path::new("m.json")).unwrap_err();
        assert!(e.to_string().contains("version 99"), "{e}");
        let mut v = serde_json::to_value(tiny()).unwrap();
        v["features"]["stats"] = serde_json::json!([{"stat": "fourier"}]);
        let e = Artifact::from_json(&v.to_string(), Path::new("m.json")).unwrap_err();
        assert!(e.to_string().contains("m.json"), "{e}");
        let mut a = tiny();
        a.features.metrics.clear();
        let e = Artifact::from_json(&serde_json::to_string(&a).unwrap(), Path::new("m.json"))
            .unwrap_err();
        assert!(e.to_string().contains("reads feature 0"), "{e}");
        let mut a = tiny();
        a.modes[0].score_reference = Some(vec![1, 2, 3]);
        let e = Artifact::from_json(&serde_json::to_string(&a).unwrap(), Path::new("m.json"))
            .unwrap_err();
        assert!(e.to_string().contains("score_reference"), "{e}");
        a.modes[0].score_reference = Some(vec![5; SCORE_BINS]);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(Artifact::from_json(&json, Path::new("m.json")).unwrap(), a);
    }

    #[test]
    fn trees_sharing_a_node_are_not_compiled_and_still_score() {
        let mut a = tiny();
        if let Estimator::Trees { trees, .. } = &mut a.modes[0].classifier {
            trees[0].nodes[0].right = 1;
        }
        let c = CompiledMode::new(&a.modes[0]);
        assert!(c.classifier.is_none());
        let s = a.score_mode_compiled(&a.modes[0], &c, &[90.0]);
        assert_eq!(s, a.score_mode(&a.modes[0], &[90.0]));
    }
}
