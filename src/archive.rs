//! `[archive]`: an optional history archive of what the daemon accepted, so the fleet's own
//! outcomes can train the next model (`forewarn export`).
//!
//! After a group's store commit, the accepted readings and device events go to a bounded queue;
//! a writer thread appends them under `DATA_DIR/archive/` in the layout of the history files
//! (`telemetry-<opened>-<n>.csv`, `events-<opened>-<n>.csv`, written by [`crate::history`]'s
//! writers). A file is closed after `rotate` of wall time (read off the daemon's injected
//! clock), or when a reading brings a metric
//! the header lacks (the next file's header is the wider one); files opened longer ago than
//! `retention` are deleted. The ingest loop never waits for this disk: a full queue drops the
//! batch and counts it, a write error is counted and logged, and ingest goes on.

use crate::clock::Clock;
use crate::domain::{DeviceEvent, Dur, Reading, Timestamp};
use crate::history::{EventWriter, TelemetryWriter};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Off by default: the archive grows with the fleet's traffic.
    pub enabled: bool,
    /// A file is closed and a new one opened after this much wall time.
    pub rotate: Dur,
    /// Files opened longer ago than this are deleted.
    pub retention: Dur,
    /// Batches (one per store commit) waiting for the writer; when full, a batch is dropped and
    /// counted rather than holding up ingest.
    pub queue: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: false,
            rotate: Dur::hours(24),
            retention: Dur::hours(30 * 24),
            queue: 1024,
        }
    }
}

impl Config {
    /// Checks without I/O; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.rotate.std().is_zero() {
            return Err(("archive.rotate", "must be more than zero".into()));
        }
        if self.retention.std() < self.rotate.std() {
            return Err((
                "archive.retention",
                "must be at least archive.rotate".into(),
            ));
        }
        if self.queue == 0 {
            return Err(("archive.queue", "must be at least 1".into()));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive folder {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("archive metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// One accepted record.
#[derive(Debug, Clone)]
pub enum Record {
    Reading(Reading),
    Event(DeviceEvent),
}

/// The archive's folder inside a data dir.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("archive")
}

/// The handle the app holds: hands batches to the writer thread without waiting.
pub struct Archive {
    tx: mpsc::SyncSender<Vec<Record>>,
    dropped: prometheus::IntCounter,
}

impl Archive {
    /// Starts the writer thread when the archive is enabled; `None` when it is off. Files are
    /// opened, named, rotated and pruned by `clock`'s time.
    pub fn build(
        cfg: &Config,
        data_dir: &Path,
        registry: &prometheus::Registry,
        clock: Arc<dyn Clock>,
    ) -> Result<Option<Archive>, ArchiveError> {
        if !cfg.enabled {
            return Ok(None);
        }
        let dropped = prometheus::IntCounter::new(
            "forewarn_archive_dropped_total",
            "Accepted records left out of the history archive because its writer fell behind",
        )?;
        let errors = prometheus::IntCounter::new(
            "forewarn_archive_errors_total",
            "History archive writes that failed (records in that batch may be missing)",
        )?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        let mut files = Files::new(dir(data_dir), cfg)?;
        let (tx, rx) = mpsc::sync_channel::<Vec<Record>>(cfg.queue);
        std::thread::Builder::new()
            .name("archive".into())
            .spawn(move || {
                // Ends when the app drops its handle; each batch is flushed as it is written.
                while let Ok(batch) = rx.recv() {
                    let now = Timestamp::from_millis(clock.now_ms());
                    if let Err(e) = files.write(&batch, now) {
                        errors.inc();
                        tracing::warn!(error = %e, records = batch.len(), "history archive write failed");
                        // A half-written file is closed; the next batch opens a fresh one.
                        files.close();
                    }
                }
            })
            .map_err(|source| ArchiveError::Io {
                path: dir(data_dir),
                source,
            })?;
        Ok(Some(Archive { tx, dropped }))
    }

    /// Queues a committed batch; never blocks (a full queue drops and counts it).
    pub fn send(&self, batch: Vec<Record>) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        if self.tx.try_send(batch).is_err() {
            self.dropped.inc_by(n);
        }
    }
}

struct TelFile {
    opened_ms: Timestamp,
    metrics: Vec<String>,
    pos: HashMap<String, usize>,
    w: TelemetryWriter<BufWriter<File>>,
}

struct EvFile {
    opened_ms: Timestamp,
    w: EventWriter<BufWriter<File>>,
}

/// The writer's state: the open files, rotation and retention. Time is passed in, so tests
/// drive rotation without waiting.
pub struct Files {
    dir: PathBuf,
    rotate_ms: i64,
    retention_ms: i64,
    tel: Option<TelFile>,
    ev: Option<EvFile>,
    /// Metrics of the last telemetry file, so a rotated file keeps the width.
    metrics: Vec<String>,
}

impl Files {
    pub fn new(dir: PathBuf, cfg: &Config) -> Result<Files, ArchiveError> {
        std::fs::create_dir_all(&dir).map_err(|source| ArchiveError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Files {
            dir,
            rotate_ms: cfg.rotate.as_millis_i64(),
            retention_ms: cfg.retention.as_millis_i64(),
            tel: None,
            ev: None,
            metrics: Vec::new(),
        })
    }

    /// Appends a batch at wall time `now` and flushes it.
    pub fn write(&mut self, batch: &[Record], now: Timestamp) -> std::io::Result<()> {
        let mut expired = false;
        if self
            .tel
            .as_ref()
            .is_some_and(|t| now - t.opened_ms >= self.rotate_ms)
        {
            self.tel.take().map(|t| t.w.finish()).transpose()?;
            expired = true;
        }
        if self
            .ev
            .as_ref()
            .is_some_and(|e| now - e.opened_ms >= self.rotate_ms)
        {
            self.ev.take().map(|e| e.w.finish()).transpose()?;
            expired = true;
        }
        if expired {
            self.prune(now)?;
        }
        let mut values = Vec::new();
        for rec in batch {
            match rec {
                Record::Reading(r) => {
                    let wider = r.metrics.iter().any(|(m, _)| {
                        self.tel
                            .as_ref()
                            .map_or(!self.metrics.contains(m), |t| !t.pos.contains_key(m))
                    });
                    if wider || self.tel.is_none() {
                        for (m, _) in &r.metrics {
                            if !self.metrics.contains(m) {
                                self.metrics.push(m.clone());
                            }
                        }
                        self.tel.take().map(|t| t.w.finish()).transpose()?;
                        self.tel = Some(self.open_telemetry(now)?);
                    }
                    let Some(t) = self.tel.as_mut() else {
                        continue;
                    };
                    values.clear();
                    values.resize(t.metrics.len(), f64::NAN);
                    for (m, v) in &r.metrics {
                        if let Some(&i) = t.pos.get(m) {
                            values[i] = *v;
                        }
                    }
                    t.w.row(&r.device_id, r.ts, values.iter().copied())?;
                }
                Record::Event(e) => {
                    if self.ev.is_none() {
                        let path = self.new_path("events", now)?;
                        let w = EventWriter::new(BufWriter::new(create(&path)?))?;
                        self.ev = Some(EvFile { opened_ms: now, w });
                    }
                    if let Some(f) = self.ev.as_mut() {
                        f.w.row(e)?;
                    }
                }
            }
        }
        if let Some(t) = self.tel.as_mut() {
            t.w.flush()?;
        }
        if let Some(e) = self.ev.as_mut() {
            e.w.flush()?;
        }
        Ok(())
    }

    /// Closes the open files (after an error, or to end).
    pub fn close(&mut self) {
        if let Some(t) = self.tel.take() {
            let _ = t.w.finish();
        }
        if let Some(e) = self.ev.take() {
            let _ = e.w.finish();
        }
    }

    fn open_telemetry(&mut self, now: Timestamp) -> std::io::Result<TelFile> {
        let path = self.new_path("telemetry", now)?;
        let names: Vec<&str> = self.metrics.iter().map(String::as_str).collect();
        let w = TelemetryWriter::new(BufWriter::new(create(&path)?), &names)?;
        Ok(TelFile {
            opened_ms: now,
            pos: self
                .metrics
                .iter()
                .enumerate()
                .map(|(i, m)| (m.clone(), i))
                .collect(),
            metrics: self.metrics.clone(),
            w,
        })
    }

    /// `<kind>-<opened, basic RFC 3339>-<n>.csv`: names sort in the order files were opened.
    fn new_path(&self, kind: &str, now: Timestamp) -> std::io::Result<PathBuf> {
        let stamp = stamp(now);
        for n in 0..10_000u32 {
            let p = self.dir.join(format!("{kind}-{stamp}-{n:04}.csv"));
            if !p.exists() {
                return Ok(p);
            }
        }
        Err(std::io::Error::other(
            "too many archive files opened in one second",
        ))
    }

    /// Deletes archive files opened more than `retention` before `now` (by the time in their
    /// name, so a copied folder keeps its ages).
    pub fn prune(&self, now: Timestamp) -> std::io::Result<usize> {
        let mut n = 0;
        for (path, opened) in list(&self.dir)? {
            // An open file is younger than `rotate`, which is at most `retention`: never deleted.
            if now - opened > self.retention_ms {
                std::fs::remove_file(&path)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

fn create(path: &Path) -> std::io::Result<File> {
    File::options().write(true).create_new(true).open(path)
}

/// `20260102T030405Z`: the RFC 3339 time without separators (safe in every file system).
fn stamp(ms: Timestamp) -> String {
    let t = (ms - ms.as_millis().rem_euclid(1000)).format();
    let t = t
        .strip_suffix(".000Z")
        .or(t.strip_suffix('Z'))
        .unwrap_or(&t);
    format!("{}Z", t.replace(['-', ':'], ""))
}

/// Reads a stamp back.
fn parse_stamp(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() != 16 || !s.is_ascii() {
        return None;
    }
    let iso = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    );
    Timestamp::parse(&iso)
}

/// The archive's files of one kind (`telemetry` or `events`), in the order they were opened.
pub fn files(dir: &Path, kind: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    if !dir.exists() {
        return Ok(Vec::new());
    }
    for (path, _) in list(dir)? {
        if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            if name.starts_with(&format!("{kind}-")) {
                out.push((name.to_string(), path));
            }
        }
    }
    out.sort();
    Ok(out.into_iter().map(|(_, p)| p).collect())
}

/// Every archive file with the time it was opened.
fn list(dir: &Path) -> std::io::Result<Vec<(PathBuf, Timestamp)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(rest) = name
            .strip_prefix("telemetry-")
            .or_else(|| name.strip_prefix("events-"))
        else {
            continue;
        };
        if let Some(opened) = rest.get(..16).and_then(parse_stamp) {
            out.push((path, opened));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EventKind;
    use crate::history::{read_events, read_telemetry, BadRows};

    const HOUR: i64 = 3_600_000;

    fn reading(id: &str, ts: Timestamp, m: &[(&str, f64)]) -> Record {
        Record::Reading(Reading {
            device_id: crate::domain::DeviceId::parse(id).unwrap(),
            ts,
            seq: None,
            metrics: m.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        })
    }

    fn cfg() -> Config {
        Config {
            enabled: true,
            rotate: Dur::hours(24),
            retention: Dur::hours(48),
            queue: 8,
        }
    }

    #[test]
    fn stamps_read_back_and_sort_like_time() {
        let t = Timestamp::from_millis(1_767_225_600_000 + 3_723_000);
        assert_eq!(stamp(t), "20260101T010203Z");
        assert_eq!(parse_stamp(&stamp(t)), Some(t));
        assert!(stamp(t) < stamp(t + 10 * HOUR));
    }

    #[test]
    fn a_new_metric_widens_the_next_file_and_old_rows_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let mut f = Files::new(tmp.path().join("archive"), &cfg()).unwrap();
        let t0 = 1_767_225_600_000;
        f.write(
            &[reading("d1", Timestamp::from_millis(t0), &[("temp", 1.5)])],
            Timestamp::from_millis(t0),
        )
        .unwrap();
        f.write(
            &[
                reading(
                    "d1",
                    Timestamp::from_millis(t0 + 1),
                    &[("temp", 2.0), ("vib", 0.25)],
                ),
                Record::Event(DeviceEvent {
                    device_id: crate::domain::DeviceId::parse("d1").unwrap(),
                    ts: Timestamp::from_millis(t0 + 2),
                    kind: EventKind::Maintenance,
                    code: "bearing".into(),
                }),
            ],
            Timestamp::from_millis(t0),
        )
        .unwrap();
        let tel = files(&tmp.path().join("archive"), "telemetry").unwrap();
        assert_eq!(tel.len(), 2);
        let mut widths = Vec::new();
        let mut rows = 0;
        for p in &tel {
            let (names, _) = read_telemetry(File::open(p).unwrap(), p, BadRows::Fail, |_| {
                rows += 1;
                Ok(())
            })
            .unwrap();
            widths.push(names);
        }
        assert_eq!(widths[0], vec!["temp"]);
        assert_eq!(widths[1], vec!["temp", "vib"]);
        assert_eq!(rows, 2);
        let ev = files(&tmp.path().join("archive"), "events").unwrap();
        let mut got = Vec::new();
        read_events(
            File::open(&ev[0]).unwrap(),
            &ev[0],
            BadRows::Fail,
            |_, e| {
                got.push(e);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(got[0].code, "bearing");
    }

    /// The opening times in the names of the telemetry files, once the writer thread has opened
    /// `n` of them (it is given at most 10 s).
    fn opened(dir: &Path, n: usize) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let got = files(dir, "telemetry").unwrap();
            if got.len() >= n || std::time::Instant::now() > deadline {
                return got
                    .iter()
                    .filter_map(|p| p.file_name()?.to_str()?.get(10..26).map(str::to_string))
                    .collect();
            }
            std::thread::yield_now();
        }
    }

    #[test]
    fn the_writer_names_and_rotates_files_by_the_injected_clock() {
        let tmp = tempfile::tempdir().unwrap();
        let t0 = 1_767_225_600_000; // 2026-01-01T00:00:00Z, not today
        let clock = crate::clock::ManualClock::new(t0 + 5 * HOUR);
        let registry = prometheus::Registry::new();
        let archive = Archive::build(&cfg(), tmp.path(), &registry, clock.clone())
            .unwrap()
            .expect("enabled");
        let dir = dir(tmp.path());
        let send = |temp: f64| {
            let at = Timestamp::from_millis(t0);
            archive.send(vec![reading("d1", at, &[("temp", temp)])]);
        };
        send(1.0);
        assert_eq!(opened(&dir, 1), ["20260101T050000Z"]);
        // A day (`rotate`) after it opened, by the clock: a new file, named by the clock's time.
        clock.advance(std::time::Duration::from_secs(24 * 3600));
        send(2.0);
        assert_eq!(opened(&dir, 2), ["20260101T050000Z", "20260102T050000Z"]);
    }

    #[test]
    fn files_rotate_daily_and_old_ones_are_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("archive");
        let mut f = Files::new(dir.clone(), &cfg()).unwrap();
        let t0 = 1_767_225_600_000;
        for day in 0..5 {
            let now = t0 + day * 24 * HOUR;
            f.write(
                &[reading(
                    "d1",
                    Timestamp::from_millis(now),
                    &[("temp", day as f64)],
                )],
                Timestamp::from_millis(now),
            )
            .unwrap();
        }
        // Days 0..=4 opened a file each; retention 48 h keeps what was opened on days 2, 3, 4.
        let left = files(&dir, "telemetry").unwrap();
        assert_eq!(left.len(), 3, "{left:?}");
        assert!(left[0]
            .to_string_lossy()
            .contains(&stamp(Timestamp::from_millis(t0 + 2 * 24 * HOUR))));
    }
}
