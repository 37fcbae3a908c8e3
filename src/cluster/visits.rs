//! Pruning the fleet-wide visit reservations (`s.TECH.START` in `BUCKETS-visits`): a slot
//! whose day is past can no longer be booked (the board refuses a slot that has passed), so
//! its reservation holds nothing and is removed. One instance does it — the holder of
//! partition 0's lease — at its first lease round holding it, then every [`SWEEP_EVERY`].

use super::Cluster;
use crate::clock::Clock as _;
use futures_util::StreamExt as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the holder of partition 0 sweeps the visit reservations.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// A reservation is pruned once its slot started this long ago: a day, so that a visit running
/// late (or a clock a little behind) keeps its slot until it cannot matter.
const PRUNE_AFTER_MS: i64 = 24 * 3_600_000;

/// The slot start (epoch ms) of a reservation key `s.TECH.START`.
fn slot_start(key: &str) -> Option<i64> {
    let rest = key.strip_prefix("s.")?;
    let (_, start) = rest.rsplit_once('.')?;
    start.parse().ok()
}

/// Whether the reservation under `key` is past pruning at `now_ms`.
fn is_past(key: &str, now_ms: i64) -> bool {
    slot_start(key).is_some_and(|s| s < now_ms.saturating_sub(PRUNE_AFTER_MS))
}

impl Cluster {
    /// Every lease, while this instance holds partition 0: prunes the reservations of past
    /// slots, at most once every [`SWEEP_EVERY`].
    pub(super) async fn visits_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.cfg.lease.std());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let sweeper = self.view.lock().owned.contains(&0);
            if !sweeper || last.is_some_and(|t| t.elapsed() < SWEEP_EVERY) {
                continue;
            }
            let now_ms = crate::clock::SystemClock.now_ms();
            match self.prune_visits(now_ms).await {
                Ok(n) => {
                    last = Some(Instant::now());
                    if n > 0 {
                        tracing::info!(
                            pruned = n,
                            "cluster visits: reservations of past slots pruned"
                        );
                    }
                }
                Err(e) => tracing::warn!("cluster visits: pruning past reservations: {e}"),
            }
        }
    }

    /// Removes every reservation whose slot is past (see [`is_past`]): its key's messages are
    /// purged from the bucket's stream, leaving no delete marker behind. Returns how many.
    async fn prune_visits(&self, now_ms: i64) -> Result<usize, super::BoxError> {
        let mut keys = self.visits.keys().await?;
        let mut past = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k?;
            if is_past(&k, now_ms) {
                past.push(k);
            }
        }
        for k in &past {
            self.visits
                .stream
                .purge()
                .filter(format!("{}{k}", self.visits.prefix))
                .await?;
            self.metrics.visits.with_label_values(&["pruned"]).inc();
        }
        Ok(past.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservation_is_past_a_day_after_its_slot_started() {
        let start = 1_767_225_600_000_i64;
        let key = format!("s.{}.{start}", hex::encode("tech-1"));
        assert_eq!(slot_start(&key), Some(start));
        assert!(!is_past(&key, start));
        assert!(!is_past(&key, start + PRUNE_AFTER_MS));
        assert!(is_past(&key, start + PRUNE_AFTER_MS + 1));
        // Keys of another shape are left alone.
        assert!(!is_past("s.abc", i64::MAX));
        assert!(!is_past("x.abc.1", i64::MAX));
    }
}
