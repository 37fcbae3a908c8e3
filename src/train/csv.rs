//! A data set as training and backtests see it: each device's readings sorted by event time, its
//! events, and the fleet's attributes — read with [`crate::history`]'s reader under
//! [`BadRows::Fail`] (every bad row is an error naming `file:line`).

use super::labels::Dismissal;
use super::TrainError;
use crate::domain::{DeviceEvent, DeviceId, EventKind, Reading, Timestamp};
use crate::features::Attributes;
use crate::history::{self, BadRows, HistoryError, RowError};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// One device's history: readings sorted by event time, and its events.
#[derive(Debug, Clone)]
pub struct DeviceHistory {
    pub id: DeviceId,
    pub ts: Vec<Timestamp>,
    /// Row-major, `ts.len() × metrics.len()`; NaN where the cell was empty.
    pub values: Vec<f64>,
    /// Sorted by event time.
    pub events: Vec<DeviceEvent>,
    /// The events as labels see them, sorted: a maintenance whose `outcome` is `confirmed` is a
    /// failure that was prevented (a positive of its mode), one whose outcome is `false_alarm` is
    /// left out (the part was fine: rows before it are not censored by it). Without an `outcome`
    /// column, the same as `events`.
    pub labels: Vec<DeviceEvent>,
    /// Tickets dismissed as false alarms without a visit (`--dismissals`): rows they vouch for
    /// are negatives (see [`super::labels::with_dismissals`]).
    pub dismissals: Vec<Dismissal>,
}

/// The optional fifth column of `events.csv`: what a ticket's visit found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    Confirmed,
    FalseAlarm,
    Failed,
}

impl EventOutcome {
    pub fn parse(s: &str) -> Option<EventOutcome> {
        match s {
            "confirmed" => Some(EventOutcome::Confirmed),
            "false_alarm" => Some(EventOutcome::FalseAlarm),
            "failed" => Some(EventOutcome::Failed),
            _ => None,
        }
    }
}

/// How an event with an outcome counts for labels (see [`DeviceHistory::labels`]).
fn as_label(ev: &DeviceEvent, outcome: Option<EventOutcome>) -> Option<DeviceEvent> {
    match (ev.kind, outcome) {
        (EventKind::Maintenance, Some(EventOutcome::Confirmed)) => Some(DeviceEvent {
            kind: EventKind::Failure,
            ..ev.clone()
        }),
        (EventKind::Maintenance, Some(EventOutcome::FalseAlarm)) => None,
        _ => Some(ev.clone()),
    }
}

/// A data set: every device's readings and events, and the fleet's attributes.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Metric columns of telemetry.csv, in file order.
    pub metrics: Vec<String>,
    /// Sorted by device id.
    pub devices: Vec<DeviceHistory>,
    pub attrs: BTreeMap<String, Attributes>,
    pub rows: usize,
}

/// One step of a device's replay, in event time.
pub enum Step<'a> {
    Reading(usize),
    Event(&'a DeviceEvent),
}

impl DeviceHistory {
    fn new(id: DeviceId) -> DeviceHistory {
        DeviceHistory {
            id,
            ts: Vec::new(),
            values: Vec::new(),
            events: Vec::new(),
            labels: Vec::new(),
            dismissals: Vec::new(),
        }
    }

    pub fn row(&self, i: usize, n_metrics: usize) -> &[f64] {
        &self.values[i * n_metrics..(i + 1) * n_metrics]
    }

    /// The reading at row `i` as the daemon would have decoded it.
    pub fn reading(&self, i: usize, metrics: &[String]) -> Reading {
        Reading {
            device_id: self.id.clone(),
            ts: self.ts[i],
            seq: None,
            metrics: metrics
                .iter()
                .zip(self.row(i, metrics.len()))
                .filter(|(_, v)| v.is_finite())
                .map(|(m, v)| (m.clone(), *v))
                .collect(),
        }
    }

    /// Readings and events merged in the apply order of [`crate::domain::apply_order`] (events
    /// sorted by it on load): at equal timestamps events come first, as `serve` applies them.
    pub fn steps(&self) -> impl Iterator<Item = Step<'_>> + '_ {
        let (mut i, mut j) = (0usize, 0usize);
        std::iter::from_fn(move || {
            let r = self.ts.get(i);
            let e = self.events.get(j);
            match (r, e) {
                (Some(&rt), Some(ev)) if !crate::domain::event_applies_before(ev.ts, rt) => {
                    i += 1;
                    Some(Step::Reading(i - 1))
                }
                (_, Some(ev)) => {
                    j += 1;
                    Some(Step::Event(ev))
                }
                (Some(_), None) => {
                    i += 1;
                    Some(Step::Reading(i - 1))
                }
                (None, None) => None,
            }
        })
    }

    /// Last event time observed for this device (reading or event).
    pub fn observed_until(&self) -> Timestamp {
        let r = self.ts.last().copied().unwrap_or(Timestamp::MIN);
        let e = self.events.last().map_or(Timestamp::MIN, |e| e.ts);
        r.max(e)
    }

    /// First event time observed for this device (reading or event); the epoch when it has
    /// neither.
    pub fn observed_from(&self) -> Timestamp {
        self.ts
            .first()
            .copied()
            .into_iter()
            .chain(self.events.first().map(|e| e.ts))
            .min()
            .unwrap_or(Timestamp::EPOCH)
    }

    /// How long the device was observed, in months of 30 days (the unit of the false-alarm
    /// rates per device-month).
    pub fn observed_months(&self) -> f64 {
        (self.observed_until() - self.observed_from()).max(0) as f64
            / (30.0 * 24.0 * crate::features::HOUR_MS)
    }
}

impl History {
    /// Reads the three files (devices.csv optional).
    pub fn load(
        telemetry: &Path,
        events: &Path,
        devices: Option<&Path>,
    ) -> Result<History, TrainError> {
        let mut h = read_telemetry(telemetry)?;
        let evs = read_events_with_outcomes(events)?;
        let mut by_id: HashMap<DeviceId, usize> = h
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id.clone(), i))
            .collect();
        for (ev, outcome) in evs {
            let i = match by_id.get(ev.device_id.as_str()) {
                Some(&i) => i,
                None => {
                    h.devices.push(DeviceHistory::new(ev.device_id.clone()));
                    by_id.insert(ev.device_id.clone(), h.devices.len() - 1);
                    h.devices.len() - 1
                }
            };
            if let Some(l) = as_label(&ev, outcome) {
                h.devices[i].labels.push(l);
            }
            h.devices[i].events.push(ev);
        }
        for d in &mut h.devices {
            let order = |a: &DeviceEvent, b: &DeviceEvent| {
                crate::domain::apply_order(
                    (a.ts, Some(a.kind), &a.code),
                    (b.ts, Some(b.kind), &b.code),
                )
            };
            d.events.sort_by(order);
            d.labels.sort_by(order);
        }
        h.devices.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(p) = devices {
            h.attrs = read_devices(p)?;
        }
        Ok(h)
    }

    /// Gives each device its dismissals; returns how many reached a device of the data set (a
    /// device without readings has no rows for them to label).
    pub fn add_dismissals(&mut self, list: Vec<(DeviceId, Dismissal)>) -> usize {
        let mut n = 0;
        for (id, d) in list {
            if let Ok(i) = self.devices.binary_search_by(|h| h.id.cmp(&id)) {
                self.devices[i].dismissals.push(d);
                n += 1;
            }
        }
        n
    }

    /// Failure modes named by failure events (and confirmed maintenance), sorted.
    pub fn failure_modes(&self) -> Vec<String> {
        let mut m: Vec<String> = self
            .devices
            .iter()
            .flat_map(|d| d.labels.iter())
            .filter(|e| e.kind == EventKind::Failure)
            .map(|e| e.code.clone())
            .collect();
        m.sort();
        m.dedup();
        m
    }
}

impl From<HistoryError> for TrainError {
    fn from(e: HistoryError) -> TrainError {
        match e {
            HistoryError::Io { path, source } => TrainError::Io { path, source },
            HistoryError::Header { path, detail } => TrainError::Csv {
                path,
                line: 1,
                detail,
            },
            HistoryError::Row(RowError {
                path,
                line,
                message,
            }) => TrainError::Csv {
                path,
                line,
                detail: message,
            },
        }
    }
}

/// telemetry.csv: `device_id,ts,<metric>…`; an empty cell is a missing value. The first bad row
/// is an error naming `file:line`.
pub fn read_telemetry(path: &Path) -> Result<History, TrainError> {
    let mut devices: Vec<DeviceHistory> = Vec::new();
    let mut by_id: HashMap<DeviceId, usize> = HashMap::new();
    let (metrics, summary) =
        history::read_telemetry(history::open(path)?, path, BadRows::Fail, |row| {
            let i = match by_id.get(row.device_id) {
                Some(&i) => i,
                None => {
                    let id = DeviceId::parse(row.device_id)
                        .map_err(|e| history::Refused(e.to_string()))?;
                    devices.push(DeviceHistory::new(id.clone()));
                    by_id.insert(id, devices.len() - 1);
                    devices.len() - 1
                }
            };
            let d = &mut devices[i];
            d.ts.push(row.ts);
            d.values.extend_from_slice(row.values);
            Ok(())
        })?;
    let k = metrics.len();
    // Sort each device's readings by time, keeping file order among equal timestamps.
    for d in &mut devices {
        if d.ts.windows(2).any(|w| w[0] > w[1]) {
            let mut order: Vec<usize> = (0..d.ts.len()).collect();
            order.sort_by_key(|&i| d.ts[i]);
            let ts = order.iter().map(|&i| d.ts[i]).collect();
            let values = order
                .iter()
                .flat_map(|&i| d.values[i * k..(i + 1) * k].iter().copied())
                .collect();
            d.ts = ts;
            d.values = values;
        }
    }
    Ok(History {
        metrics,
        devices,
        attrs: BTreeMap::new(),
        rows: summary.rows as usize,
    })
}

/// events.csv: `device_id,ts,kind,code`. The first bad row is an error naming `file:line`.
pub fn read_events(path: &Path) -> Result<Vec<DeviceEvent>, TrainError> {
    let mut out = Vec::new();
    history::read_events(history::open(path)?, path, BadRows::Fail, |_, e| {
        out.push(e);
        Ok(())
    })?;
    Ok(out)
}

/// events.csv with its optional fifth column `outcome` (`confirmed`, `false_alarm`, `failed`; an
/// empty cell is no outcome). Events are read by the shared reader; the outcome column, which it
/// ignores, by a second pass that matches rows by line.
pub fn read_events_with_outcomes(
    path: &Path,
) -> Result<Vec<(DeviceEvent, Option<EventOutcome>)>, TrainError> {
    let mut lines = Vec::new();
    history::read_events(history::open(path)?, path, BadRows::Fail, |line, e| {
        lines.push((line, e));
        Ok(())
    })?;
    let outcomes = read_outcomes(path)?;
    Ok(lines
        .into_iter()
        .map(|(line, e)| (e, outcomes.get(&line).copied()))
        .collect())
}

/// Line → outcome, for the rows of `events.csv` that carry one.
fn read_outcomes(path: &Path) -> Result<HashMap<u64, EventOutcome>, TrainError> {
    let mut out = HashMap::new();
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(history::open(path)?);
    let col = rdr
        .byte_headers()
        .map_err(|e| TrainError::csv(path, 1, e.to_string()))?
        .iter()
        .position(|h| h == b"outcome");
    let Some(col) = col else {
        return Ok(out);
    };
    let mut rec = csv::ByteRecord::new();
    loop {
        match rdr.read_byte_record(&mut rec) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                return Err(TrainError::csv(path, line, e.to_string()));
            }
        }
        let line = rec.position().map_or(0, |p| p.line());
        let cell = rec.get(col).unwrap_or_default();
        let text = String::from_utf8_lossy(cell);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let o = EventOutcome::parse(text).ok_or_else(|| {
            TrainError::csv(
                path,
                line,
                format!("outcome {text:?} is not confirmed, false_alarm or failed"),
            )
        })?;
        out.insert(line, o);
    }
    Ok(out)
}

/// The columns of `dismissals.csv`, as `forewarn export` writes it.
pub const DISMISSALS_HEADER: [&str; 4] = ["device_id", "failure_mode", "opened", "dismissed"];

/// `dismissals.csv` (`device_id,failure_mode,opened,dismissed`, columns found by name, times in
/// RFC 3339): the tickets dismissed as false alarms without a visit. The first bad row is an
/// error naming `file:line`.
pub fn read_dismissals(path: &Path) -> Result<Vec<(DeviceId, Dismissal)>, TrainError> {
    let mut rdr = csv::ReaderBuilder::new().from_reader(history::open(path)?);
    let header = rdr
        .headers()
        .map_err(|e| TrainError::csv(path, 1, e.to_string()))?
        .clone();
    let mut cols = [0usize; 4];
    for (c, name) in cols.iter_mut().zip(DISMISSALS_HEADER) {
        *c = header
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| {
                TrainError::csv(
                    path,
                    1,
                    format!(
                        "no column {name:?} (expected {})",
                        DISMISSALS_HEADER.join(",")
                    ),
                )
            })?;
    }
    let mut out = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| {
            TrainError::csv(path, e.position().map_or(0, |p| p.line()), e.to_string())
        })?;
        let line = rec.position().map_or(0, |p| p.line());
        let cell = |i: usize| rec.get(cols[i]).unwrap_or_default().trim();
        let id = DeviceId::parse(cell(0))
            .map_err(|e| TrainError::csv(path, line, format!("device_id: {e}")))?;
        let mode = cell(1);
        if mode.is_empty() {
            return Err(TrainError::csv(path, line, "failure_mode is empty"));
        }
        let time = |i: usize| {
            Timestamp::parse(cell(i)).ok_or_else(|| {
                TrainError::csv(
                    path,
                    line,
                    format!(
                        "{} {:?} is not an RFC 3339 time",
                        DISMISSALS_HEADER[i],
                        cell(i)
                    ),
                )
            })
        };
        let (opened, dismissed) = (time(2)?, time(3)?);
        if dismissed < opened {
            return Err(TrainError::csv(path, line, "dismissed before it opened"));
        }
        out.push((
            id,
            Dismissal {
                mode: mode.to_string(),
                opened,
                dismissed,
            },
        ));
    }
    Ok(out)
}

/// devices.csv: `device_id,<attribute>…`. The first bad row is an error naming `file:line`.
pub fn read_devices(path: &Path) -> Result<BTreeMap<String, Attributes>, TrainError> {
    let (attrs, _) = history::read_devices(history::open(path)?, path, BadRows::Fail)?;
    Ok(attrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(dir: &tempfile::TempDir, name: &str, body: &str) -> std::path::PathBuf {
        let p = dir.path().join(name);
        std::fs::File::create(&p)
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        p
    }

    #[test]
    fn dismissals_read_back_by_column_name_and_bad_rows_name_their_line() {
        let d = tempfile::tempdir().unwrap();
        let ok = file(
            &d,
            "dismissals.csv",
            "opened,device_id,dismissed,failure_mode\n\
             2020-01-01T00:00:00Z,pompe-é,2020-01-01T06:00:00Z,روغن\n",
        );
        let got = read_dismissals(&ok).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.as_str(), "pompe-é");
        assert_eq!(got[0].1.mode, "روغن");
        assert_eq!(got[0].1.dismissed - got[0].1.opened, 6 * 3_600_000);
        for (body, want) in [
            ("device_id,failure_mode,opened\n", "no column \"dismissed\""),
            (
                "device_id,failure_mode,opened,dismissed\na,pump,yesterday,2020-01-01T00:00:00Z\n",
                "bad.csv:2",
            ),
            (
                "device_id,failure_mode,opened,dismissed\na,pump,2020-01-02T00:00:00Z,2020-01-01T00:00:00Z\n",
                "before it opened",
            ),
        ] {
            let bad = file(&d, "bad.csv", body);
            let err = read_dismissals(&bad).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn outcomes_turn_confirmed_maintenance_into_prevented_failures() {
        let d = tempfile::tempdir().unwrap();
        let t = file(
            &d,
            "t.csv",
            "device_id,ts,temp\na,2020-01-01T00:00:00Z,1\nb,2020-01-01T00:00:00Z,1\n",
        );
        let e = file(
            &d,
            "e.csv",
            "device_id,ts,kind,code,outcome\n\
             a,2020-01-02T00:00:00Z,maintenance,pump,confirmed\n\
             a,2020-01-03T00:00:00Z,maintenance,pump,false_alarm\n\
             b,2020-01-02T00:00:00Z,maintenance,pump,\n\
             b,2020-01-04T00:00:00Z,failure,pump,failed\n",
        );
        let h = History::load(&t, &e, None).unwrap();
        let a = &h.devices[0];
        // What the daemon saw is unchanged; what labels see is the prevented failure only.
        assert_eq!(a.events.len(), 2);
        assert!(a.events.iter().all(|e| e.kind == EventKind::Maintenance));
        assert_eq!(a.labels.len(), 1);
        assert_eq!(a.labels[0].kind, EventKind::Failure);
        let b = &h.devices[1];
        assert_eq!(b.labels, b.events);
        assert_eq!(h.failure_modes(), vec!["pump".to_string()]);
        let bad = file(
            &d,
            "bad.csv",
            "device_id,ts,kind,code,outcome\na,2020-01-02T00:00:00Z,maintenance,pump,maybe\n",
        );
        let err = read_events_with_outcomes(&bad).unwrap_err().to_string();
        assert!(
            err.contains("bad.csv:2") && err.contains("outcome"),
            "{err}"
        );
    }

    #[test]
    fn bad_number_is_reported_with_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let p = file(
            &d,
            "t.csv",
            "device_id,ts,temp\na,2020-01-01T00:00:00Z,1\na,2020-01-01T01:00:00Z,hot\n",
        );
        let e = read_telemetry(&p).unwrap_err().to_string();
        assert!(e.contains("t.csv:3") && e.contains("temp"), "{e}");
    }

    #[test]
    fn overlong_line_is_refused_without_buffering_it() {
        let d = tempfile::tempdir().unwrap();
        let long = "x".repeat(history::MAX_LINE_BYTES + 10);
        let p = file(&d, "t.csv", &format!("device_id,ts,temp\n{long}\n"));
        let e = read_telemetry(&p).unwrap_err().to_string();
        assert!(e.contains("longer than"), "{e}");
    }

    #[test]
    fn readings_are_sorted_and_merged_with_events_event_first_on_ties() {
        let d = tempfile::tempdir().unwrap();
        let t = file(
            &d,
            "t.csv",
            "device_id,ts,temp\na,2020-01-01T02:00:00Z,2\na,2020-01-01T01:00:00Z,\n",
        );
        let e = file(
            &d,
            "e.csv",
            "device_id,ts,kind,code\na,2020-01-01T02:00:00Z,failure,fan\n",
        );
        let h = History::load(&t, &e, None).unwrap();
        let dev = &h.devices[0];
        assert!(dev.ts[0] < dev.ts[1]);
        assert!(dev.values[0].is_nan() && dev.values[1] == 2.0);
        let kinds: Vec<bool> = dev.steps().map(|s| matches!(s, Step::Reading(_))).collect();
        // Contract 7: at equal timestamps events apply before readings.
        assert_eq!(kinds, vec![true, false, true]);
        assert_eq!(h.failure_modes(), vec!["fan".to_string()]);
        let bad = file(
            &d,
            "e2.csv",
            "device_id,ts,kind,code\na,2020-01-01T02:00:00Z,boom,fan\n",
        );
        let err = read_events(&bad).unwrap_err().to_string();
        assert!(err.contains("e2.csv:2") && err.contains("boom"), "{err}");
    }
}
