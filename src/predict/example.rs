//! A small, fully specified model artifact: the smallest that opens tickets. Tests, examples and
//! the test support of other crates build on it instead of writing their own copy.

use super::{
    AppliesTo, Artifact, Estimator, Link, ModeModel, Scaler, TrainingInfo, ValidationMetrics,
    ARTIFACT_FORMAT, ARTIFACT_VERSION,
};
use crate::features::{FeatureSpec, MetricStat, WindowSpec};

/// One mode, "overheat": probability rises steeply once `temp` passes 80; time to failure
/// 20 h minus the excess.
pub fn hot_model() -> Artifact {
    let window = WindowSpec::default();
    Artifact {
        format: ARTIFACT_FORMAT.into(),
        format_version: ARTIFACT_VERSION,
        name: "hot".into(),
        version: "1".into(),
        applies_to: AppliesTo::All,
        horizon_hours: 24.0,
        consecutive: 2,
        features: FeatureSpec {
            window,
            metrics: vec!["temp".into()],
            stats: vec![MetricStat::Last],
            device: vec![],
        },
        modes: vec![ModeModel {
            mode: "overheat".into(),
            classifier: Estimator::Linear {
                scaler: Scaler {
                    mean: vec![80.0],
                    std: vec![1.0],
                },
                weights: vec![1.0],
                bias: 0.0,
                link: Link::Logistic,
            },
            regressor: Some(Estimator::Linear {
                scaler: Scaler {
                    mean: vec![80.0],
                    std: vec![1.0],
                },
                weights: vec![-1.0],
                bias: 20.0,
                link: Link::Identity,
            }),
            threshold: 0.5,
            threshold_rule: "test".into(),
            ttf_cap_hours: None,
            validation: ValidationMetrics::default(),
            calibration: None,
            levels: None,
            score_reference: None,
        }],
        training: TrainingInfo::default(),
    }
}
