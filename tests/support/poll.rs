//! Waiting for something that happens on its own time (a process, a broker, a background task).
//! Tests that drive a timer in-process use paused time instead (`start_paused`).

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is looked at again.
const EVERY: Duration = Duration::from_millis(50);

/// Polls `f` until it returns true, at most `limit`; panics naming `what` after that.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(EVERY).await;
    }
}

/// [`wait_until`] with the limit an in-process daemon needs for anything (15 s).
pub async fn eventually<F, Fut>(what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_until(what, Duration::from_secs(15), f).await
}
