//! History files in the contract's CSV layout (`telemetry.csv`, `events.csv`, `devices.csv`).
//!
//! Every bad row is an error naming `file:line`; nothing panics on input. Lines are capped at
//! [`MAX_LINE_BYTES`] before the CSV parser buffers them, so a hostile file cannot make one record
//! allocate without bound.

use super::TrainError;
use crate::domain::{parse_ts, validate_device_id, DeviceEvent, EventKind, Millis, Reading};
use crate::features::Attributes;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

/// Longest line accepted in a history file.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Most metric columns accepted in telemetry.csv.
pub const MAX_METRICS: usize = 4096;

/// One device's history: readings sorted by event time, and its events.
#[derive(Debug, Clone, Default)]
pub struct DeviceHistory {
    pub id: String,
    pub ts: Vec<Millis>,
    /// Row-major, `ts.len() × metrics.len()`; NaN where the cell was empty.
    pub values: Vec<f64>,
    /// Sorted by event time.
    pub events: Vec<DeviceEvent>,
    /// The events as labels see them, sorted: a maintenance whose `outcome` is `confirmed` is a
    /// failure that was prevented (a positive of its mode), one whose outcome is `false_alarm` is
    /// left out (the part was fine: rows before it are not censored by it). Without an `outcome`
    /// column, the same as `events`.
    pub labels: Vec<DeviceEvent>,
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
                (Some(&rt), Some(ev)) if rt < ev.ts => {
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
    pub fn observed_until(&self) -> Millis {
        let r = self.ts.last().copied().unwrap_or(Millis::MIN);
        let e = self.events.last().map_or(Millis::MIN, |e| e.ts);
        r.max(e)
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
        let mut by_id: HashMap<String, usize> = h
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id.clone(), i))
            .collect();
        for (ev, outcome) in evs {
            let i = match by_id.get(&ev.device_id) {
                Some(&i) => i,
                None => {
                    h.devices.push(DeviceHistory {
                        id: ev.device_id.clone(),
                        ..Default::default()
                    });
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

/// Refuses lines longer than [`MAX_LINE_BYTES`] before the CSV parser buffers them.
struct LineCap<R> {
    inner: R,
    run: usize,
}

impl<R: Read> Read for LineCap<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &b in &buf[..n] {
            if b == b'\n' {
                self.run = 0;
            } else {
                self.run += 1;
                if self.run > MAX_LINE_BYTES {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("a line is longer than {MAX_LINE_BYTES} bytes"),
                    ));
                }
            }
        }
        Ok(n)
    }
}

fn open(
    path: &Path,
) -> Result<csv::Reader<LineCap<std::io::BufReader<std::fs::File>>>, TrainError> {
    let f = std::fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
    Ok(csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(LineCap {
            inner: std::io::BufReader::new(f),
            run: 0,
        }))
}

fn line_of(rec: &csv::StringRecord) -> u64 {
    rec.position().map_or(0, |p| p.line())
}

fn csv_err(path: &Path, e: csv::Error) -> TrainError {
    let line = e.position().map_or(0, |p| p.line());
    let detail = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("expected {expected_len} fields, found {len}"),
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".to_string(),
        _ => e.to_string(),
    };
    TrainError::csv(path, line, detail)
}

fn headers(path: &Path, rdr: &mut csv::Reader<impl Read>) -> Result<Vec<String>, TrainError> {
    let h = rdr.headers().map_err(|e| csv_err(path, e))?;
    Ok(h.iter().map(|s| s.trim().to_string()).collect())
}

fn expect_columns(path: &Path, got: &[String], want: &[&str]) -> Result<(), TrainError> {
    for (i, w) in want.iter().enumerate() {
        if got.get(i).map(String::as_str) != Some(*w) {
            return Err(TrainError::csv(
                path,
                1,
                format!("column {} must be {w:?} (header: {})", i + 1, got.join(",")),
            ));
        }
    }
    Ok(())
}

fn device_id(path: &Path, line: u64, s: &str) -> Result<String, TrainError> {
    let id = s.trim();
    validate_device_id(id).map_err(|r| TrainError::csv(path, line, format!("device_id: {r}")))?;
    Ok(id.to_string())
}

fn timestamp(path: &Path, line: u64, s: &str) -> Result<Millis, TrainError> {
    parse_ts(s).ok_or_else(|| {
        TrainError::csv(path, line, format!("ts {s:?} is not an RFC 3339 timestamp"))
    })
}

/// telemetry.csv: `device_id,ts,<metric>…`; an empty cell is a missing value.
pub fn read_telemetry(path: &Path) -> Result<History, TrainError> {
    let mut rdr = open(path)?;
    let cols = headers(path, &mut rdr)?;
    expect_columns(path, &cols, &["device_id", "ts"])?;
    let metrics: Vec<String> = cols[2..].to_vec();
    if metrics.is_empty() {
        return Err(TrainError::csv(
            path,
            1,
            "no metric columns after device_id,ts",
        ));
    }
    if metrics.len() > MAX_METRICS {
        return Err(TrainError::csv(
            path,
            1,
            format!("more than {MAX_METRICS} metric columns"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for m in &metrics {
        if m.is_empty() || !seen.insert(m.as_str()) {
            return Err(TrainError::csv(
                path,
                1,
                format!("metric column {m:?} is empty or repeated"),
            ));
        }
    }
    let k = metrics.len();
    let mut devices: Vec<DeviceHistory> = Vec::new();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut rows = 0usize;
    let mut rec = csv::StringRecord::new();
    loop {
        match rdr.read_record(&mut rec) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(csv_err(path, e)),
        }
        let line = line_of(&rec);
        let id = device_id(path, line, &rec[0])?;
        let ts = timestamp(path, line, &rec[1])?;
        let i = match by_id.get(&id) {
            Some(&i) => i,
            None => {
                devices.push(DeviceHistory {
                    id: id.clone(),
                    ..Default::default()
                });
                by_id.insert(id, devices.len() - 1);
                devices.len() - 1
            }
        };
        let d = &mut devices[i];
        d.ts.push(ts);
        for (j, cell) in rec.iter().skip(2).enumerate() {
            let cell = cell.trim();
            let v = if cell.is_empty() {
                f64::NAN
            } else {
                match cell.parse::<f64>() {
                    Ok(v) if v.is_finite() => v,
                    _ => {
                        return Err(TrainError::csv(
                            path,
                            line,
                            format!("{}: {cell:?} is not a finite number", metrics[j]),
                        ))
                    }
                }
            };
            d.values.push(v);
        }
        rows += 1;
    }
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
        rows,
    })
}

/// events.csv: `device_id,ts,kind,code`.
pub fn read_events(path: &Path) -> Result<Vec<DeviceEvent>, TrainError> {
    Ok(read_events_with_outcomes(path)?
        .into_iter()
        .map(|(e, _)| e)
        .collect())
}

/// events.csv: `device_id,ts,kind,code[,outcome]`; an empty outcome cell is no outcome.
pub fn read_events_with_outcomes(
    path: &Path,
) -> Result<Vec<(DeviceEvent, Option<EventOutcome>)>, TrainError> {
    let mut rdr = open(path)?;
    let cols = headers(path, &mut rdr)?;
    expect_columns(path, &cols, &["device_id", "ts", "kind", "code"])?;
    let with_outcome = cols.get(4).is_some_and(|c| c == "outcome");
    let mut out = Vec::new();
    let mut rec = csv::StringRecord::new();
    loop {
        match rdr.read_record(&mut rec) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(csv_err(path, e)),
        }
        let line = line_of(&rec);
        let device_id = device_id(path, line, &rec[0])?;
        let ts = timestamp(path, line, &rec[1])?;
        let kind = EventKind::parse(rec[2].trim()).ok_or_else(|| {
            TrainError::csv(
                path,
                line,
                format!("kind {:?} is not failure, maintenance or error", &rec[2]),
            )
        })?;
        let code = rec[3].trim();
        if code.is_empty() || code.len() > 128 {
            return Err(TrainError::csv(
                path,
                line,
                "code must be 1 to 128 characters",
            ));
        }
        let outcome = match rec.get(4).map(str::trim) {
            Some(o) if with_outcome && !o.is_empty() => {
                Some(EventOutcome::parse(o).ok_or_else(|| {
                    TrainError::csv(
                        path,
                        line,
                        format!("outcome {o:?} is not confirmed, false_alarm or failed"),
                    )
                })?)
            }
            _ => None,
        };
        out.push((
            DeviceEvent {
                device_id,
                ts,
                kind,
                code: code.to_string(),
            },
            outcome,
        ));
    }
    Ok(out)
}

/// devices.csv: `device_id,<attribute>…`.
pub fn read_devices(path: &Path) -> Result<BTreeMap<String, Attributes>, TrainError> {
    let mut rdr = open(path)?;
    let cols = headers(path, &mut rdr)?;
    expect_columns(path, &cols, &["device_id"])?;
    let mut out = BTreeMap::new();
    let mut rec = csv::StringRecord::new();
    loop {
        match rdr.read_record(&mut rec) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(csv_err(path, e)),
        }
        let line = line_of(&rec);
        let id = device_id(path, line, &rec[0])?;
        let attrs: Attributes = cols[1..]
            .iter()
            .zip(rec.iter().skip(1))
            .filter(|(_, v)| !v.trim().is_empty())
            .map(|(k, v)| (k.clone(), v.trim().to_string()))
            .collect();
        if out.insert(id.clone(), attrs).is_some() {
            return Err(TrainError::csv(
                path,
                line,
                format!("device {id:?} listed twice"),
            ));
        }
    }
    Ok(out)
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
        let err = read_events(&bad).unwrap_err().to_string();
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
        let long = "x".repeat(MAX_LINE_BYTES + 10);
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
