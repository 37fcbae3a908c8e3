//! The writer's timers: the reorder idle release and the sweep of devices unseen for
//! `ingest.forget_after`. One mechanism runs both: a tokio interval (so paused time drives it in
//! tests) calling the writer from a blocking thread, reading "now" off the writer's clock.

use super::{App, CoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A job the writer runs every `period`, and the words its failures are logged with.
struct Timer {
    period: Duration,
    /// Given the writer and its clock's "now" (epoch ms); returns what it did (unused).
    job: fn(&App, i64) -> Result<usize, CoreError>,
    /// The warning when the job fails (nothing was committed: the next tick tries again).
    failed: &'static str,
    /// The error when the blocking task itself fails.
    task: &'static str,
}

/// Starts the timers the writer's settings ask for: the idle release when readings may be held
/// (`features.late_tolerance` above zero), the sweep when `ingest.forget_after` is set.
pub fn spawn(app: &Arc<App>, shutdown: &CancellationToken) -> Vec<JoinHandle<()>> {
    timers(&app.settings)
        .into_iter()
        .map(|t| tokio::spawn(every(t, app.clone(), shutdown.clone())))
        .collect()
}

fn timers(settings: &super::Settings) -> Vec<Timer> {
    let mut out = Vec::new();
    if settings.window.late_tolerance_ms > 0 {
        // Releases what silent devices still hold, a few times per idle period.
        out.push(Timer {
            period: (settings.reorder_idle / 4)
                .clamp(Duration::from_millis(10), Duration::from_secs(5)),
            job: |app, _| app.release_idle(),
            failed: "releasing held readings of idle devices failed",
            task: "idle release task failed",
        });
    }
    if let Some(after) = settings.ingest.forget_after {
        // Sweeps ten times per period (at most hourly, at least every half second).
        out.push(Timer {
            period: (after.std() / 10).clamp(Duration::from_millis(500), Duration::from_secs(3600)),
            job: |app, now| app.forget_unseen(now),
            failed: "forgetting unseen devices failed",
            task: "forget task failed",
        });
    }
    out
}

/// Runs `t` on its interval until shutdown; a late tick is delayed, not made up for.
async fn every(t: Timer, app: Arc<App>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(t.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (a, job) = (app.clone(), t.job);
        let now = app.now_ms();
        match tokio::task::spawn_blocking(move || job(&a, now)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("{}: {e}", t.failed),
            Err(e) => tracing::error!("{}: {e}", t.task),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{reading, writer_with};
    use super::*;
    use crate::clock::TokioClock;
    use crate::domain::Dur;

    const T0: i64 = 1_800_000_000_000;

    /// Sleeps on tokio's paused clock (it jumps, no real time passes) to `at` after the start.
    async fn until(start: tokio::time::Instant, at: Duration) {
        tokio::time::sleep_until(start + at).await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_unseen_device_is_forgotten_within_a_sweep_of_forget_after() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = crate::config::Config::default();
        cfg.ingest.forget_after = Some(Dur::secs(600));
        // Readings are applied as they come: nothing held for the idle release.
        cfg.features.late_tolerance = Dur::secs(0);
        let start = tokio::time::Instant::now();
        let app = writer_with(dir.path(), &cfg, TokioClock::new(T0));
        app.process_group(&[reading("pump-1", T0, 1, r#"{"volt": 170.0}"#)])
            .expect("group commits");
        assert_eq!(app.store.state_count(), 1);
        let shutdown = CancellationToken::new();
        let tasks = spawn(&app, &shutdown);
        assert_eq!(tasks.len(), 1, "only the sweep runs");

        // The sweep runs every minute (a tenth of forget_after); the device was last seen at
        // the start, so the sweep at ten minutes still keeps it...
        until(start, Duration::from_secs(10 * 60 + 30)).await;
        assert_eq!(
            app.store.state_count(),
            1,
            "kept until forget_after has passed"
        );
        assert_eq!(app.metrics.devices_forgotten.get(), 0);
        // ...and the one at eleven forgets it.
        until(start, Duration::from_secs(11 * 60 + 30)).await;
        assert_eq!(app.store.state_count(), 0, "forgotten after forget_after");
        assert_eq!(app.metrics.devices_forgotten.get(), 1);

        shutdown.cancel();
        for t in tasks {
            t.await.expect("timer stops on shutdown");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_sparkplug_edge_node_unseen_for_forget_after_is_forgotten_from_memory_and_disk() {
        use crate::ingest::mqtt::{Inbound, Publish};
        use crate::ingest::sparkplug::payload::{payload::metric::Value, payload::Metric, Payload};
        use prost::Message;
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = crate::config::Config::default();
        cfg.ingest.forget_after = Some(Dur::secs(600));
        cfg.ingest.sparkplug.enabled = true;
        cfg.features.late_tolerance = Dur::secs(0);
        let start = tokio::time::Instant::now();
        let app = writer_with(dir.path(), &cfg, TokioClock::new(T0));
        let birth = Payload {
            timestamp: u64::try_from(T0).ok(),
            seq: Some(0),
            metrics: vec![Metric {
                name: Some("bdSeq".into()),
                datatype: Some(4),
                value: Some(Value::LongValue(1)),
                ..Metric::default()
            }],
            ..Payload::default()
        };
        let inbound = Inbound {
            publish: Publish::new(
                "spBv1.0/plant/NBIRTH/gw1".to_string(),
                birth.encode_to_vec(),
            ),
            received: std::time::Instant::now(),
            received_ms: T0,
        };
        app.process_group(&[inbound]).expect("group commits");
        let stored = || {
            app.store
                .scan_kv::<crate::ingest::sparkplug::StoredNode>(
                    crate::ingest::sparkplug::STATE_PREFIX,
                )
                .expect("scan")
                .len()
        };
        assert_eq!(stored(), 1, "the birth is kept");
        let shutdown = CancellationToken::new();
        let tasks = spawn(&app, &shutdown);
        until(start, Duration::from_secs(10 * 60 + 30)).await;
        assert_eq!(stored(), 1, "kept until forget_after has passed");
        until(start, Duration::from_secs(11 * 60 + 30)).await;
        assert_eq!(stored(), 0, "forgotten on disk");
        assert!(
            app.formats().node("plant", "gw1").is_none(),
            "and in memory"
        );
        shutdown.cancel();
        for t in tasks {
            t.await.expect("timer stops on shutdown");
        }
    }
}
