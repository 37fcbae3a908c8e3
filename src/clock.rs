//! Wall time, injected: the daemon's one clock. `serve` builds it once (the system's, or the
//! demo's simulated one) and hands it to every stage that reads the time of day: it stamps
//! ticket changes, customer messages, quarantined records and fleet imports, decides quiet hours
//! and budgets, says when an outbox row is due and when an archive file rotates. Tests give a
//! [`ManualClock`] or a [`TokioClock`] under `tokio::time::pause()` and see their own time.
//!
//! A leaf, like `domain`: it imports nothing from the crate, so every stage can take one.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Wall time in epoch milliseconds, injectable so quiet hours, escalation and retry timers can
/// be tested without waiting.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;
}

/// The system's wall clock (production).
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
}

/// A clock that moves only when told to.
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(ms: i64) -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicI64::new(ms)))
    }
    pub fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst)
    }
    pub fn advance(&self, d: std::time::Duration) {
        self.0.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Wall time that follows tokio's clock from a fixed start: under `tokio::time::pause()` it
/// moves with `tokio::time::advance` (and the runtime's auto-advance), so the worker's sleeps
/// and the rows' due times are read off the same clock.
pub struct TokioClock {
    start_ms: i64,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn new(start_ms: i64) -> Arc<TokioClock> {
        Arc::new(TokioClock {
            start_ms,
            start: tokio::time::Instant::now(),
        })
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> i64 {
        let elapsed = tokio::time::Instant::now().duration_since(self.start);
        self.start_ms
            .saturating_add(i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
    }
}
