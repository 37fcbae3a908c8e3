//! The writer's timers: the reorder idle release and the sweep of devices unseen for
//! `ingest.forget_after`, each on its own task, calling the writer from a blocking thread.

use super::App;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Starts the timers the writer's settings ask for: the idle release when readings may be held
/// (`features.late_tolerance` above zero), the sweep when `ingest.forget_after` is set.
pub fn spawn(app: &Arc<App>, shutdown: &CancellationToken) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    if app.settings.window.late_tolerance_ms > 0 {
        tasks.push(tokio::spawn(release_idle_loop(
            app.clone(),
            shutdown.clone(),
        )));
    }
    if let Some(after) = app.settings.ingest.forget_after {
        tasks.push(tokio::spawn(forget_loop(
            app.clone(),
            after.std(),
            shutdown.clone(),
        )));
    }
    tasks
}

/// Sweeps the states of devices unseen for `ingest.forget_after`, ten times per period (at most
/// hourly, at least every half second).
async fn forget_loop(app: Arc<App>, after: Duration, shutdown: CancellationToken) {
    let period = (after / 10).clamp(Duration::from_millis(500), Duration::from_secs(3600));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let a = app.clone();
        let now = chrono::Utc::now().timestamp_millis();
        match tokio::task::spawn_blocking(move || a.forget_unseen(now)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("forgetting unseen devices failed: {e}"),
            Err(e) => tracing::error!("forget task failed: {e}"),
        }
    }
}

/// The reorder idle timer: releases what silent devices still hold, a few times per idle period.
async fn release_idle_loop(app: Arc<App>, shutdown: CancellationToken) {
    let period =
        (app.settings.reorder_idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let a = app.clone();
        match tokio::task::spawn_blocking(move || a.release_idle()).await {
            Ok(Ok(_)) => {}
            // Nothing was committed: the items stay held and the next tick tries again.
            Ok(Err(e)) => tracing::warn!("releasing held readings of idle devices failed: {e}"),
            Err(e) => tracing::error!("idle release task failed: {e}"),
        }
    }
}
