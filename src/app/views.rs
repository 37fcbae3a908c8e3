//! Device states for the board's pages, read without the writer's core lock.
//!
//! The board asks about a few devices at a time (the tickets people open, a device's page) while
//! the processing thread holds the core across a group's apply and commit. So the first look at
//! a device goes through the writer once and makes it watched; after that the writer publishes
//! the watched device's state here after every commit that changed it, and the pages read it
//! behind a read lock. Bounded: the least recently asked device is dropped beyond [`WATCHED`].

use crate::features::DeviceState;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// How many devices the board's reads keep watched: far more than a few people have open, and
/// a bound on what the writer copies after a commit.
const WATCHED: usize = 1024;

/// A watched device: its state as of the last commit (`None`: it has none), and when the
/// board last asked, for dropping the least recently asked.
struct Watched {
    state: Option<Arc<DeviceState>>,
    asked: AtomicU64,
}

/// The published states (see the module doc). Written by the writer, holding its core, so a
/// publication and a first look through the writer cannot cross.
#[derive(Default)]
pub(super) struct Views {
    watched: RwLock<HashMap<String, Watched>>,
    /// Whether anything is watched: the commit path's only cost while the board is unused.
    any: AtomicBool,
    asks: AtomicU64,
}

impl Views {
    fn ask(&self) -> u64 {
        self.asks.fetch_add(1, Ordering::Relaxed)
    }

    /// A watched device's published state: `Some(None)` when it has none, `None` when it is not
    /// watched (ask the writer, then [`Views::watch`]).
    pub(super) fn get(&self, device: &str) -> Option<Option<Arc<DeviceState>>> {
        let w = self.watched.read();
        let v = w.get(device)?;
        v.asked.store(self.ask(), Ordering::Relaxed);
        Some(v.state.clone())
    }

    /// Watches `device`, whose state the writer has just read (holding its core).
    pub(super) fn watch(&self, device: &str, state: Option<Arc<DeviceState>>) {
        let asked = self.ask();
        let mut w = self.watched.write();
        if w.len() >= WATCHED && !w.contains_key(device) {
            let oldest = w
                .iter()
                .min_by_key(|(_, v)| v.asked.load(Ordering::Relaxed))
                .map(|(d, _)| d.clone());
            if let Some(d) = oldest {
                w.remove(&d);
            }
        }
        let asked = AtomicU64::new(asked);
        w.insert(device.to_string(), Watched { state, asked });
        self.any.store(true, Ordering::Release);
    }

    /// After a commit (the writer holding its core): the new states of the watched devices
    /// among `dirty`.
    pub(super) fn publish<'a>(
        &self,
        dirty: &[String],
        state_of: impl Fn(&str) -> Option<&'a DeviceState>,
    ) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let changed: Vec<(&String, Arc<DeviceState>)> = {
            let w = self.watched.read();
            dirty
                .iter()
                .filter(|d| w.contains_key(d.as_str()))
                .filter_map(|d| Some((d, Arc::new(state_of(d)?.clone()))))
                .collect()
        };
        if changed.is_empty() {
            return;
        }
        let mut w = self.watched.write();
        for (d, s) in changed {
            if let Some(v) = w.get_mut(d.as_str()) {
                v.state = Some(s);
            }
        }
    }

    /// The writer dropped these devices' states (forgotten unseen).
    pub(super) fn forget(&self, devices: &[String]) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let mut w = self.watched.write();
        for d in devices {
            if let Some(v) = w.get_mut(d.as_str()) {
                v.state = None;
            }
        }
    }

    /// The writer no longer trusts its memory (a failed commit): what was published may be
    /// ahead of the store, so every device is asked of the writer again.
    pub(super) fn clear(&self) {
        self.watched.write().clear();
        self.any.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{reading, writer_with};
    use crate::clock::SystemClock;
    use crate::domain::{Dur, Timestamp};
    use std::sync::Arc;
    use std::time::Duration;

    const T0: i64 = 1_800_000_000_000;

    #[test]
    fn board_device_reads_answer_while_the_writer_holds_its_core() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = crate::config::Config::default();
        // Readings are applied as they come (none held in the reorder buffer).
        cfg.features.late_tolerance = Dur::secs(0);
        let app = writer_with(dir.path(), &cfg, Arc::new(SystemClock));
        let volt = r#"{"volt": 170.0}"#;
        app.process_group(&[reading("press-7", T0, 1, volt)])
            .expect("group commits");
        let tickets = app.tickets();
        // The first look goes through the writer and watches the device...
        let first = tickets.device_state("press-7").expect("read");
        assert_eq!(first.map(|s| s.last_ts), Some(Timestamp::from_millis(T0)));
        // ...whose state the writer publishes after every commit that changes it.
        app.process_group(&[reading("press-7", T0 + 60_000, 2, volt)])
            .expect("group commits");
        // What the processing thread holds across a group's apply and commit.
        let held = app.core.lock();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = tickets.clone();
        std::thread::spawn(move || {
            let state = reader.device_state("press-7").ok().flatten();
            let _ = tx.send(state.map(|s| s.last_ts));
        });
        let answer = rx.recv_timeout(Duration::from_secs(5));
        drop(held);
        assert_eq!(answer.ok(), Some(Some(Timestamp::from_millis(T0 + 60_000))));
    }

    #[test]
    fn a_forgotten_device_reads_as_gone_on_the_board() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = crate::config::Config::default();
        cfg.features.late_tolerance = Dur::secs(0);
        cfg.ingest.forget_after = Some(Dur::secs(600));
        let app = writer_with(dir.path(), &cfg, Arc::new(SystemClock));
        app.process_group(&[reading("press-7", T0, 1, r#"{"volt": 170.0}"#)])
            .expect("group commits");
        let tickets = app.tickets();
        assert!(tickets.device_state("press-7").expect("read").is_some());
        assert_eq!(app.forget_unseen(T0 + 3_600_000).expect("sweep"), 1);
        assert!(tickets.device_state("press-7").expect("read").is_none());
    }
}
