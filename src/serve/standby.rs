//! Active/standby: two `forewarn serve` processes on one data directory, one of them working.
//!
//! Every `serve` holds an exclusive lock on `<data_dir>/forewarn.lock` (`flock`) from before it
//! opens the store until it has stopped. Without `--standby` a held lock is an error at start.
//! With `--standby` the process validates its configuration and models, answers `/healthz`,
//! `/readyz` (503, `"role": "standby"`) and `/metrics` on its API address, and waits for the
//! lock; when the active process ends — a clean stop, a crash, `kill -9`: the kernel releases a
//! dead process's locks — it gets the lock, opens the store (crash recovery replays the step
//! log), connects with the same `broker.client_id` and resumes the broker session, so the
//! broker redelivers what the active had not acknowledged (acknowledgements only follow durable
//! commits) and hands over what it queued meanwhile.
//!
//! Why a lock file of its own rather than sled's lock on its `db` file: the active lets go of
//! sled's lock while it reopens the store after an I/O error (`Store::reopen`); a standby
//! taking the store in that moment would leave two processes with one client id pushing each
//! other off the broker. This lock is held across reopens, for the life of the process.
//!
//! Why a blocking `flock` in a thread rather than polling: the kernel wakes the waiter the
//! moment the lock is free, so the takeover starts at once and nothing polls meanwhile.

use crate::clock::Clock as _;
use crate::config::Config;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "forewarn.lock";

/// How often a standby says again that it is still waiting.
const STILL_WAITING_EVERY: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open the lock file {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the data directory {dir} is in use by another forewarn serve ({holder}); start this one \
         with --standby to take over when that one stops"
    )]
    Held { dir: String, holder: String },
}

/// The data directory's lock, held for as long as this value lives.
#[derive(Debug)]
pub struct DataDirLock {
    /// Locked with `flock(LOCK_EX)`; closing it (or the process ending) releases the lock.
    _file: File,
}

fn lock_path(dir: &Path) -> PathBuf {
    dir.join(LOCK_FILE)
}

fn open_lock_file(path: &Path) -> Result<File, LockError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| LockError::Open {
            path: path.display().to_string(),
            source,
        })
}

impl DataDirLock {
    /// Takes the lock if it is free; `Err(Held)` naming the holder when it is not.
    pub fn acquire_now(dir: &Path) -> Result<DataDirLock, LockError> {
        let path = lock_path(dir);
        let file = open_lock_file(&path)?;
        match fs2::FileExt::try_lock_exclusive(&file) {
            Ok(()) => Ok(DataDirLock::stamped(file)),
            Err(e) if e.kind() == fs2::lock_contended_error().kind() => Err(LockError::Held {
                dir: dir.display().to_string(),
                holder: holder(dir),
            }),
            Err(source) => Err(LockError::Lock {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Waits (blocking the calling thread) until the lock is free, then takes it.
    fn acquire_blocking(dir: &Path) -> Result<DataDirLock, LockError> {
        let path = lock_path(dir);
        let file = open_lock_file(&path)?;
        loop {
            match fs2::FileExt::lock_exclusive(&file) {
                Ok(()) => return Ok(DataDirLock::stamped(file)),
                // A signal arrived while waiting: wait again.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(LockError::Lock {
                        path: path.display().to_string(),
                        source,
                    })
                }
            }
        }
    }

    /// Writes who holds the lock into the file, for the standby's log. Best effort: the lock
    /// is what counts, not the text.
    fn stamped(mut file: File) -> DataDirLock {
        // The operator's wall time, not the daemon's injected clock (the demo's is simulated):
        // the note says when this process took the directory.
        let since = chrono::DateTime::from_timestamp_millis(crate::clock::SystemClock.now_ms())
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        let text = format!("pid {} since {since}\n", std::process::id());
        let _ = file
            .set_len(0)
            .and_then(|_| file.write_all(text.as_bytes()))
            .and_then(|_| file.flush());
        DataDirLock { _file: file }
    }
}

/// Who holds the lock, as the holder wrote it ("pid 123 since …"), or "unknown".
fn holder(dir: &Path) -> String {
    std::fs::read_to_string(lock_path(dir))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "holder unknown".into())
}

/// What a standby hands to [`super::run_taken_over`]: the lock, and the API listener it answered
/// on while waiting (kept bound, so the address stays the same and no request is refused).
pub struct TakeOver {
    pub(crate) lock: DataDirLock,
    pub(crate) listener: Option<std::net::TcpListener>,
    /// When the lock was taken and how long this process had waited for it, if it had to (a
    /// takeover); `None` when the lock was free at start.
    pub(crate) waited: Option<(Instant, Duration)>,
}

impl TakeOver {
    /// What a process without `--standby` starts on: the data directory (created if missing)
    /// and its lock, taken at once or not at all.
    pub(crate) fn now(dir: &Path) -> Result<TakeOver, super::ServeError> {
        std::fs::create_dir_all(dir).map_err(|e| super::ServeError::data_dir(dir, e))?;
        Ok(TakeOver {
            lock: DataDirLock::acquire_now(dir)?,
            listener: None,
            waited: None,
        })
    }
}

/// `serve --standby` up to the takeover: validates the configuration (so a standby that could
/// never take over fails now, not then), then takes the data directory's lock at once if it
/// is free, or answers `/healthz`, `/readyz` and `/metrics` as a standby until it is. `None`
/// when `shutdown` came first.
pub async fn wait(
    cfg: &Config,
    shutdown: CancellationToken,
) -> Result<Option<TakeOver>, super::ServeError> {
    crate::tls::install_crypto();
    super::check(cfg)?;
    let dir = cfg.store.data_dir.clone();
    std::fs::create_dir_all(&dir).map_err(|e| super::ServeError::data_dir(&dir, e))?;
    match DataDirLock::acquire_now(&dir) {
        Ok(lock) => {
            tracing::info!(
                "standby: the data directory {} is free: starting as the active",
                dir.display()
            );
            return Ok(Some(TakeOver {
                lock,
                listener: None,
                waited: None,
            }));
        }
        Err(LockError::Held { .. }) => {}
        Err(e) => return Err(e.into()),
    }

    // The API address is bound now and kept for the active this process becomes.
    let listener = std::net::TcpListener::bind(&cfg.api.listen).map_err(|source| {
        super::ServeError::Listen {
            addr: cfg.api.listen.clone(),
            source,
        }
    })?;
    let listen_err = |source| super::ServeError::Listen {
        addr: cfg.api.listen.clone(),
        source,
    };
    listener.set_nonblocking(true).map_err(listen_err)?;
    let serving = listener
        .try_clone()
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(listen_err)?;
    let addr = serving.local_addr().map_err(listen_err)?;
    let registry = prometheus::Registry::new();
    let role = crate::metrics::RoleMetrics::new(&registry);
    role.set_active(false);
    let limits = crate::api::server::Limits::from_config(&cfg.api);
    let router = crate::api::server::harden(crate::api::standby_router(registry), &limits);
    // Said before the first request can be answered.
    tracing::info!(
        api = %addr,
        "standby: the data directory {} is held ({}); waiting to take over",
        dir.display(),
        holder(&dir)
    );
    let standby_stop = shutdown.child_token();
    let server = tokio::spawn(crate::api::server::serve(
        serving,
        router,
        limits,
        standby_stop.clone(),
        Duration::from_secs(1),
    ));

    // A thread of its own: the wait is a blocking flock. If shutdown comes first the thread
    // stays blocked until the process ends; should it get the lock before then, the send
    // fails and the lock is released at once.
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let waiter = dir.clone();
    std::thread::Builder::new()
        .name("forewarn-standby".into())
        .spawn(move || {
            let _ = tx.send(DataDirLock::acquire_blocking(&waiter));
        })
        .map_err(|source| super::ServeError::Thread {
            what: "standby",
            source,
        })?;
    let since = Instant::now();
    let mut still = tokio::time::interval_at(
        tokio::time::Instant::now() + STILL_WAITING_EVERY,
        STILL_WAITING_EVERY,
    );
    let got = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break None,
            r = &mut rx => break Some(r),
            _ = still.tick() => tracing::info!(
                "standby: still waiting for the data directory {} ({}), for {:?}",
                dir.display(),
                holder(&dir),
                since.elapsed()
            ),
        }
    };
    let locked_at = Instant::now();
    // The standby's own answers end (what it is answering finishes) before the daemon's start
    // on the same listener.
    standby_stop.cancel();
    let _ = server.await;
    let lock = match got {
        None => return Ok(None),
        Some(Ok(Ok(lock))) => lock,
        Some(Ok(Err(e))) => return Err(e.into()),
        Some(Err(_)) => return Err(super::ServeError::StandbyGone),
    };
    let waited = locked_at.duration_since(since);
    tracing::warn!(
        "standby: got the data directory {} after {waited:?}: taking over",
        dir.display()
    );
    Ok(Some(TakeOver {
        lock,
        listener: Some(listener),
        waited: Some((locked_at, waited)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_names_its_holder_and_is_free_once_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire_now(dir.path()).unwrap();
        match DataDirLock::acquire_now(dir.path()) {
            Err(LockError::Held { holder, .. }) => {
                assert!(
                    holder.starts_with(&format!("pid {} since ", std::process::id())),
                    "{holder}"
                );
            }
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        DataDirLock::acquire_now(dir.path()).expect("free once dropped");
    }

    #[test]
    fn a_blocked_waiter_gets_the_lock_when_the_holder_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire_now(dir.path()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let path = dir.path().to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(DataDirLock::acquire_blocking(&path).map(|_| ()));
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "no lock while the first holds it"
        );
        drop(first);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("woken when the holder lets go")
            .expect("locked");
    }
}
