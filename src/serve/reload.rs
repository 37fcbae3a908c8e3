//! What `serve` re-reads while it runs: the models and the API tokens file on SIGHUP, and the
//! tokens file whenever it changes.

use crate::app::App;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Starts the SIGHUP handler and, with `api.tokens_file`, its watcher.
///
/// The handler is installed here, before `serve` reports ready, not inside the spawned task: a
/// SIGHUP that arrives before the task first runs would otherwise meet the default action and
/// end the process.
pub(super) fn spawn(
    app: &Arc<App>,
    auth: &Arc<crate::api::Auth>,
    cfg: &crate::api::Config,
    shutdown: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![tokio::spawn(reload_on_sighup(
        hangups(),
        app.clone(),
        auth.clone(),
        shutdown.clone(),
    ))];
    if cfg.tokens_file.is_some() {
        tasks.push(tokio::spawn(watch_tokens_file(
            auth.clone(),
            shutdown.clone(),
        )));
    }
    tasks
}

/// What re-reading the API tokens file gave; on error the tokens in force stay.
fn log_tokens_reload(result: Result<usize, crate::api::auth::TokensFileError>) {
    match result {
        Ok(n) => tracing::info!("API tokens file re-read: {n} token(s)"),
        Err(e) => tracing::warn!("{e}; the tokens read before stay in force"),
    }
}

/// Checks the tokens file every second (a `stat`) and re-reads it when it changed.
async fn watch_tokens_file(auth: Arc<crate::api::Auth>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(r) = auth.reload_if_changed() {
            log_tokens_reload(r);
        }
    }
}

#[cfg(unix)]
type Hangups = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangups = ();

/// Listens for SIGHUP from now on; `None` (logged) when the handler cannot be installed.
#[cfg(unix)]
fn hangups() -> Option<Hangups> {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP (model reload disabled): {e}");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangups() -> Option<Hangups> {
    None
}

#[cfg(unix)]
async fn reload_on_sighup(
    hup: Option<Hangups>,
    app: Arc<App>,
    auth: Arc<crate::api::Auth>,
    shutdown: CancellationToken,
) {
    let Some(mut hup) = hup else {
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            s = hup.recv() => {
                if s.is_none() { break; }
                let app = app.clone();
                let _ = tokio::task::spawn_blocking(move || app.reload_models()).await;
                if auth.has_file() {
                    log_tokens_reload(auth.reload());
                }
            }
        }
    }
}

#[cfg(not(unix))]
async fn reload_on_sighup(
    _hup: Option<Hangups>,
    _app: Arc<App>,
    _auth: Arc<crate::api::Auth>,
    shutdown: CancellationToken,
) {
    shutdown.cancelled().await;
}
