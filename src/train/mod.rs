//! Offline training and backtesting, built on the daemon's own code: rows come from the same
//! `DeviceState` windows and `FeatureSpec::extract` as serving, and backtests run the
//! [`crate::engine::Engine`] itself.
//!
//! - [`csv`]      history files (contract section 2), strict and bounded
//! - [`labels`]   time-to-failure labels that respect maintenance and censoring
//! - [`rows`]     feature spec from the data, training rows by replaying devices in event time
//! - [`gbm`]      gradient-boosted histogram trees on linfa's traits
//! - [`linear`]   the plain baseline: ridge / linfa logistic regression on last values
//! - [`select`]   device split, ranking metrics, ticket matching, threshold choice
//! - [`fit`]      `forewarn train`: everything above into a model artifact
//! - [`evaluate`] `forewarn evaluate`: replay through the engine, metrics, tickets, predictions
//! - [`report`]   the report folder: summary and plots

pub mod csv;
pub mod evaluate;
pub mod fit;
pub mod gbm;
pub mod labels;
pub mod linear;
pub mod report;
pub mod rows;
pub mod select;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}:{line}: {detail}")]
    Csv {
        path: PathBuf,
        line: u64,
        detail: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Data(String),
    #[error("linfa: {0}")]
    Linfa(#[from] linfa::Error),
    #[error("logistic regression: {0}")]
    Logistic(#[from] linfa_logistic::error::Error),
    #[error(transparent)]
    Artifact(#[from] crate::predict::ArtifactError),
}

impl TrainError {
    pub fn csv(path: &Path, line: u64, detail: impl Into<String>) -> TrainError {
        TrainError::Csv {
            path: path.to_path_buf(),
            line,
            detail: detail.into(),
        }
    }
    pub fn io(path: &Path, source: std::io::Error) -> TrainError {
        TrainError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A progress bar on a terminal, hidden otherwise.
pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    let pb = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(len)
    } else {
        indicatif::ProgressBar::hidden()
    };
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {elapsed}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}
