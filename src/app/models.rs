//! Reloading the models (SIGHUP) and the metric index stored with the device states.

use super::{App, CoreError};
use crate::engine::{Engine, Models};
use crate::features::{MetricIndex, WindowSpec};
use crate::store::{Store, StoreError};
use std::path::Path;
use std::sync::Arc;

/// Where the metric index (metric name → id used inside stored device states) is kept.
pub(super) const METRIC_INDEX_KEY: &str = "metric_index";

/// Why the models directory could not be (re)loaded; the models in use stay.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Artifact(#[from] crate::predict::ArtifactError),
    #[error(transparent)]
    Models(#[from] crate::engine::ModelsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("device states could not be checkpointed before the models change: {0}")]
    Checkpoint(Box<CoreError>),
}

impl App {
    /// Reloads every artifact of the models directory. On any error the old models stay.
    pub fn reload_models(&self) -> Result<usize, ReloadError> {
        let dir = self.settings.models_dir.clone();
        let res = {
            let base = load_metric_index(&self.store);
            let mut core = self.core.lock();
            let base = merge_index(base, &core.engine.models.index);
            match build_models(&dir, &self.settings.window, base) {
                Ok(models) => {
                    let n = models.list.len();
                    // The step log replays under the models of the day: checkpoint before
                    // they change.
                    let checkpointed = self
                        .recover_if_needed(&mut core)
                        .and_then(|()| self.checkpoint_locked(&mut core, true));
                    match checkpointed {
                        Err(e) => Err(ReloadError::Checkpoint(Box::new(e))),
                        Ok(_) => match save_metric_index(&self.store, &models.index) {
                            Ok(()) => {
                                core.engine =
                                    Engine::new(self.settings.engine.clone(), Arc::new(models));
                                // New models, new levels (and perhaps other modes): a device
                                // is watched again from its next scoring under them.
                                self.clear_watches();
                                Ok(n)
                            }
                            Err(e) => Err(ReloadError::Store(e)),
                        },
                    }
                }
                Err(e) => Err(e),
            }
        };
        match &res {
            Ok(n) => {
                self.metrics.models_loaded.set(*n as i64);
                self.metrics.model_reloads.with_label_values(&["ok"]).inc();
                tracing::info!("reloaded {n} model artifact(s) from {}", dir.display());
            }
            Err(e) => {
                self.metrics
                    .model_reloads
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!("model reload failed, keeping the current models: {e}");
            }
        }
        res
    }
}

/// The metric index stored with the device states (ids inside stored states refer to it).
pub(crate) fn load_metric_index(store: &Store) -> MetricIndex {
    match store.get_kv::<Vec<String>>(METRIC_INDEX_KEY) {
        Ok(Some(names)) => MetricIndex::new(names),
        _ => MetricIndex::default(),
    }
}

pub(crate) fn save_metric_index(store: &Store, index: &MetricIndex) -> Result<(), StoreError> {
    let mut tx = store.tx();
    tx.put_kv(METRIC_INDEX_KEY, &index.names().to_vec());
    store.commit(tx)
}

pub(super) fn merge_index(mut base: MetricIndex, current: &MetricIndex) -> MetricIndex {
    for n in current.names() {
        base.intern(n.clone());
    }
    base
}

/// Loads and indexes every artifact of `dir`, keeping the ids of `base` stable.
pub(super) fn build_models(
    dir: &Path,
    window: &WindowSpec,
    base: MetricIndex,
) -> Result<Models, ReloadError> {
    let artifacts = crate::predict::load_dir(dir)?;
    Ok(Models::with_index(artifacts, window, base)?)
}
