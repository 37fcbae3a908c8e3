//! The one reader of history files. It owns every rule of the format — header columns, field
//! counts, device ids, timestamps, numbers, event kinds and codes, the line cap — and leaves one
//! decision to the caller: what a bad row means ([`BadRows`]).

use crate::domain::{
    validate_device_id, DeviceEvent, DeviceId, DeviceIdError, EventKind, Timestamp,
};
use crate::features::Attributes;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Longest line accepted in a history file.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Most metric columns accepted in telemetry.csv.
pub const MAX_METRICS: usize = 4096;
/// Longest event code (a failure mode or an error code).
pub const MAX_CODE_LEN: usize = 128;
/// How many row errors a skipping read keeps verbatim (the rest are only counted).
const KEEP_ERRORS: usize = 20;

/// What a bad row means to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRows {
    /// The read stops at the first bad row with its `file:line` (training and backtests: a model
    /// must not be fitted on a file that was silently thinned).
    Fail,
    /// The row is counted and skipped (replay: the rest of the history still goes out, as a
    /// device's bad messages would be rejected and the stream go on).
    Skip,
}

/// A row that could not be used, with where it is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}:{line}: {message}", path.display())]
pub struct RowError {
    pub path: PathBuf,
    pub line: u64,
    pub message: String,
}

/// Why a history file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The header row is missing, unreadable or lacks a required column.
    #[error("{}: {detail}", path.display())]
    Header { path: PathBuf, detail: String },
    /// A bad row under [`BadRows::Fail`].
    #[error(transparent)]
    Row(#[from] RowError),
}

/// Why the caller's sink refused a row that the format accepts (under [`BadRows::Fail`] it
/// stops the read at that line, under [`BadRows::Skip`] it is counted like any bad row).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// What a read accepted and skipped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadSummary {
    /// Data rows handed to the sink and accepted by it.
    pub rows: u64,
    /// Bad rows skipped (always 0 under [`BadRows::Fail`]).
    pub skipped: u64,
    /// The first skipped rows, for the operator.
    pub first_errors: Vec<RowError>,
}

/// One telemetry row as the sink sees it: `values` in the order of the header's metric columns,
/// NaN where a cell is empty.
#[derive(Debug, Clone, Copy)]
pub struct TelemetryRow<'a> {
    pub line: u64,
    pub device_id: &'a str,
    pub ts: Timestamp,
    pub values: &'a [f64],
}

/// Refuses lines longer than [`MAX_LINE_BYTES`] before the CSV parser buffers them, so a hostile
/// file cannot make one record allocate without bound.
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

/// A history file being read: the CSV parser, the header and the bad-row bookkeeping.
struct Source<R: Read> {
    rdr: csv::Reader<LineCap<R>>,
    path: PathBuf,
    policy: BadRows,
    header: Vec<String>,
    summary: ReadSummary,
}

impl<R: Read> Source<R> {
    fn open(r: R, path: &Path, policy: BadRows) -> Result<Source<R>, HistoryError> {
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(true)
            // Field counts are checked here, so a short row is one bad row with its line.
            .flexible(true)
            .from_reader(LineCap { inner: r, run: 0 });
        let header = match rdr.byte_headers() {
            Ok(h) => h
                .iter()
                .map(|f| String::from_utf8_lossy(f).trim().to_string())
                .collect(),
            Err(e) => {
                return Err(HistoryError::Header {
                    path: path.to_path_buf(),
                    detail: format!("cannot read the header row: {e}"),
                })
            }
        };
        Ok(Source {
            rdr,
            path: path.to_path_buf(),
            policy,
            header,
            summary: ReadSummary::default(),
        })
    }

    fn header_error(&self, detail: impl Into<String>) -> HistoryError {
        HistoryError::Header {
            path: self.path.clone(),
            detail: detail.into(),
        }
    }

    fn column(&self, name: &str) -> Result<usize, HistoryError> {
        self.header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| self.header_error(format!("header has no {name:?} column")))
    }

    /// A bad row: the error under [`BadRows::Fail`], counted under [`BadRows::Skip`].
    fn bad_row(&mut self, line: u64, message: String) -> Result<(), HistoryError> {
        let e = RowError {
            path: self.path.clone(),
            line,
            message,
        };
        match self.policy {
            BadRows::Fail => Err(HistoryError::Row(e)),
            BadRows::Skip => {
                self.summary.skipped += 1;
                if self.summary.first_errors.len() < KEEP_ERRORS {
                    self.summary.first_errors.push(e);
                }
                Ok(())
            }
        }
    }

    /// Reads the next record with the header's number of fields into `rec` and returns its
    /// line; `None` at the end of the input. A read error (the line cap, a failing disk) ends
    /// the input: under [`BadRows::Skip`] it is counted as a bad row at its line.
    fn next(&mut self, rec: &mut csv::ByteRecord) -> Result<Option<u64>, HistoryError> {
        loop {
            let line = self.rdr.position().line();
            match self.rdr.read_byte_record(rec) {
                Ok(false) => return Ok(None),
                Ok(true) => {}
                Err(e) => {
                    let stops = matches!(e.kind(), csv::ErrorKind::Io(_));
                    let line = e.position().map_or(line, |p| p.line());
                    let message = match e.kind() {
                        csv::ErrorKind::Io(io) => io.to_string(),
                        _ => e.to_string(),
                    };
                    self.bad_row(line, message)?;
                    if stops {
                        return Ok(None);
                    }
                    continue;
                }
            }
            let line = rec.position().map_or(line, |p| p.line());
            if rec.len() != self.header.len() {
                let message = format!("{} fields, the header has {}", rec.len(), self.header.len());
                self.bad_row(line, message)?;
                continue;
            }
            return Ok(Some(line));
        }
    }

    /// Hands an accepted row to the sink and books its verdict.
    fn offer(&mut self, line: u64, verdict: Result<(), Refused>) -> Result<(), HistoryError> {
        match verdict {
            Ok(()) => {
                self.summary.rows += 1;
                Ok(())
            }
            Err(Refused(m)) => self.bad_row(line, m),
        }
    }
}

/// Why a row is bad, worded for `file:line: …`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
enum RowProblem {
    #[error("{0}: not valid UTF-8")]
    NotUtf8(String),
    #[error("device_id: {0}")]
    DeviceId(#[from] DeviceIdError),
    #[error("ts {0:?} is neither RFC 3339 nor epoch milliseconds")]
    Timestamp(String),
    #[error("metric {0:?} is not a finite number: {1:?}")]
    NotFinite(String, String),
    #[error("kind {0:?} is not failure, maintenance or error")]
    Kind(String),
    #[error("failure and maintenance events need a code naming the failure mode")]
    NoCode,
    #[error("unusable event code")]
    BadCode,
    #[error("device {0:?} listed twice")]
    ListedTwice(String),
}

/// A cell as text: UTF-8, trimmed.
fn text<'r>(rec: &'r csv::ByteRecord, i: usize, column: &str) -> Result<&'r str, RowProblem> {
    std::str::from_utf8(&rec[i])
        .map(str::trim)
        .map_err(|_| RowProblem::NotUtf8(column.to_string()))
}

fn clip(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

fn device_and_ts(
    rec: &csv::ByteRecord,
    id_col: usize,
    ts_col: usize,
) -> Result<(&str, Timestamp), RowProblem> {
    let id = text(rec, id_col, "device_id")?;
    validate_device_id(id)?;
    let ts_s = text(rec, ts_col, "ts")?;
    let ts = Timestamp::parse(ts_s).ok_or_else(|| RowProblem::Timestamp(clip(ts_s, 40)))?;
    Ok((id, ts))
}

/// Telemetry (`device_id,ts,<metric>…`; the two named columns may stand anywhere, every other
/// column is a metric), row by row: the header is checked when it is opened, so a caller can
/// compare the metric columns before taking any row.
pub struct TelemetryReader<R: Read> {
    src: Source<R>,
    id_col: usize,
    ts_col: usize,
    metric_cols: Vec<usize>,
    names: Vec<String>,
    rec: csv::ByteRecord,
    values: Vec<f64>,
}

impl<R: Read> TelemetryReader<R> {
    pub fn new(r: R, path: &Path, policy: BadRows) -> Result<Self, HistoryError> {
        let src = Source::open(r, path, policy)?;
        let id_col = src.column("device_id")?;
        let ts_col = src.column("ts")?;
        let metric_cols: Vec<usize> = (0..src.header.len())
            .filter(|&i| i != id_col && i != ts_col)
            .collect();
        if metric_cols.is_empty() {
            return Err(src.header_error("telemetry header names no metric columns"));
        }
        if metric_cols.len() > MAX_METRICS {
            return Err(src.header_error(format!("more than {MAX_METRICS} metric columns")));
        }
        let names: Vec<String> = metric_cols.iter().map(|&i| src.header[i].clone()).collect();
        let mut seen = std::collections::HashSet::new();
        if let Some(m) = names
            .iter()
            .find(|m| m.is_empty() || !seen.insert(m.as_str()))
        {
            return Err(src.header_error(format!("metric column {m:?} is empty or repeated")));
        }
        Ok(TelemetryReader {
            src,
            id_col,
            ts_col,
            values: Vec::with_capacity(names.len()),
            metric_cols,
            names,
            rec: csv::ByteRecord::new(),
        })
    }

    /// The metric columns, in file order.
    pub fn metrics(&self) -> &[String] {
        &self.names
    }

    /// The next good row; bad rows on the way follow the policy.
    pub fn next_row(&mut self) -> Result<Option<TelemetryRow<'_>>, HistoryError> {
        loop {
            let Some(line) = self.src.next(&mut self.rec)? else {
                return Ok(None);
            };
            match self.parse() {
                Ok(ts) => {
                    self.src.summary.rows += 1;
                    return Ok(Some(TelemetryRow {
                        line,
                        // Checked as UTF-8 by `parse`.
                        device_id: std::str::from_utf8(&self.rec[self.id_col])
                            .map(str::trim)
                            .unwrap_or_default(),
                        ts,
                        values: &self.values,
                    }));
                }
                Err(m) => self.src.bad_row(line, m.to_string())?,
            }
        }
    }

    /// The caller sets aside the row it was just given (under [`BadRows::Fail`] this is the
    /// error to return).
    pub fn refuse(&mut self, line: u64, why: Refused) -> Result<(), HistoryError> {
        self.src.summary.rows = self.src.summary.rows.saturating_sub(1);
        self.src.bad_row(line, why.0)
    }

    /// The metric names and what was read and skipped.
    pub fn finish(self) -> (Vec<String>, ReadSummary) {
        (self.names, self.src.summary)
    }

    fn parse(&mut self) -> Result<Timestamp, RowProblem> {
        let (_, ts) = device_and_ts(&self.rec, self.id_col, self.ts_col)?;
        self.values.clear();
        for (k, &c) in self.metric_cols.iter().enumerate() {
            let cell = text(&self.rec, c, &self.names[k])?;
            if cell.is_empty() {
                self.values.push(f64::NAN);
                continue;
            }
            match cell.parse::<f64>() {
                Ok(v) if v.is_finite() => self.values.push(v),
                _ => return Err(RowProblem::NotFinite(self.names[k].clone(), clip(cell, 32))),
            }
        }
        Ok(ts)
    }
}

/// Reads all of a telemetry file through `sink`. Returns the metric names, in column order, and
/// the summary.
pub fn read_telemetry<R: Read>(
    r: R,
    path: &Path,
    policy: BadRows,
    mut sink: impl FnMut(TelemetryRow<'_>) -> Result<(), Refused>,
) -> Result<(Vec<String>, ReadSummary), HistoryError> {
    let mut t = TelemetryReader::new(r, path, policy)?;
    while let Some(row) = t.next_row()? {
        let line = row.line;
        if let Err(why) = sink(row) {
            t.refuse(line, why)?;
        }
    }
    Ok(t.finish())
}

/// Reads events (`device_id,ts,kind[,code]`; other columns are ignored). A failure or
/// maintenance event needs a code naming the failure mode; an error event may have none.
pub fn read_events<R: Read>(
    r: R,
    path: &Path,
    policy: BadRows,
    mut sink: impl FnMut(u64, DeviceEvent) -> Result<(), Refused>,
) -> Result<ReadSummary, HistoryError> {
    let mut src = Source::open(r, path, policy)?;
    let id_col = src.column("device_id")?;
    let ts_col = src.column("ts")?;
    let kind_col = src.column("kind")?;
    let code_col = src.header.iter().position(|h| h == "code");
    let mut rec = csv::ByteRecord::new();
    while let Some(line) = src.next(&mut rec)? {
        let event = device_and_ts(&rec, id_col, ts_col).and_then(|(id, ts)| {
            let kind_s = text(&rec, kind_col, "kind")?;
            let kind =
                EventKind::parse(kind_s).ok_or_else(|| RowProblem::Kind(clip(kind_s, 32)))?;
            let code = match code_col {
                Some(c) => text(&rec, c, "code")?,
                None => "",
            };
            if kind != EventKind::Error && code.is_empty() {
                return Err(RowProblem::NoCode);
            }
            if code.len() > MAX_CODE_LEN || code.chars().any(char::is_control) {
                return Err(RowProblem::BadCode);
            }
            Ok(DeviceEvent {
                device_id: DeviceId::parse(id)?,
                ts,
                kind,
                code: code.to_string(),
            })
        });
        match event {
            Ok(e) => {
                let verdict = sink(line, e);
                src.offer(line, verdict)?;
            }
            Err(m) => src.bad_row(line, m.to_string())?,
        }
    }
    Ok(src.summary)
}

/// Reads static device attributes (`device_id,<attribute>…`); empty cells are left out. A
/// device listed twice is a bad row.
pub fn read_devices<R: Read>(
    r: R,
    path: &Path,
    policy: BadRows,
) -> Result<(BTreeMap<String, Attributes>, ReadSummary), HistoryError> {
    let mut src = Source::open(r, path, policy)?;
    let id_col = src.column("device_id")?;
    let mut out = BTreeMap::new();
    let mut rec = csv::ByteRecord::new();
    while let Some(line) = src.next(&mut rec)? {
        let row = (|| {
            let id = text(&rec, id_col, "device_id")?;
            validate_device_id(id)?;
            if out.contains_key(id) {
                return Err(RowProblem::ListedTwice(id.to_string()));
            }
            let mut attrs = Attributes::new();
            for (i, name) in src.header.iter().enumerate() {
                if i == id_col {
                    continue;
                }
                let v = text(&rec, i, name)?;
                if !v.is_empty() {
                    attrs.insert(name.clone(), v.to_string());
                }
            }
            Ok((id.to_string(), attrs))
        })();
        match row {
            Ok((id, attrs)) => {
                out.insert(id, attrs);
                src.offer(line, Ok(()))?;
            }
            Err(m) => src.bad_row(line, m.to_string())?,
        }
    }
    Ok((out, src.summary))
}

/// Opens a history file for one of the readers above.
pub fn open(path: &Path) -> Result<std::io::BufReader<std::fs::File>, HistoryError> {
    let f = std::fs::File::open(path).map_err(|source| HistoryError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(std::io::BufReader::with_capacity(1 << 20, f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn telemetry(
        text: &str,
        policy: BadRows,
    ) -> Result<(Vec<(String, Timestamp)>, ReadSummary), HistoryError> {
        let mut rows = Vec::new();
        let (_, sum) = read_telemetry(text.as_bytes(), Path::new("t.csv"), policy, |r| {
            rows.push((r.device_id.to_string(), r.ts));
            Ok(())
        })?;
        Ok((rows, sum))
    }

    fn events(
        text: &str,
        policy: BadRows,
    ) -> Result<(Vec<DeviceEvent>, ReadSummary), HistoryError> {
        let mut out = Vec::new();
        let sum = read_events(text.as_bytes(), Path::new("e.csv"), policy, |_, e| {
            out.push(e);
            Ok(())
        })?;
        Ok((out, sum))
    }

    #[test]
    fn epoch_millis_and_rfc3339_are_the_same_time_for_every_caller() {
        let text = "device_id,ts,a\nd,2015-01-01T06:00:00Z,1\nd,1420092000000,2\n";
        for policy in [BadRows::Fail, BadRows::Skip] {
            let (rows, sum) = telemetry(text, policy).unwrap();
            assert_eq!(rows[0].1, rows[1].1);
            assert_eq!(sum.rows, 2);
        }
    }

    #[test]
    fn an_error_event_may_have_no_code_but_a_failure_needs_one() {
        let text = "device_id,ts,kind,code\nd,2015-01-01T06:00:00Z,error,\n";
        for policy in [BadRows::Fail, BadRows::Skip] {
            let (evs, _) = events(text, policy).unwrap();
            assert_eq!(evs[0].kind, EventKind::Error);
            assert_eq!(evs[0].code, "");
        }
        let bad = "device_id,ts,kind,code\nd,2015-01-01T06:00:00Z,failure,\n";
        let e = events(bad, BadRows::Fail).unwrap_err().to_string();
        assert!(e.starts_with("e.csv:2: failure and maintenance"), "{e}");
        let (evs, sum) = events(bad, BadRows::Skip).unwrap();
        assert!(evs.is_empty());
        assert_eq!(sum.skipped, 1);
    }

    #[test]
    fn control_characters_in_a_code_or_an_id_are_bad_rows_for_every_caller() {
        let text = "device_id,ts,kind,code\nd,1,failure,\"a\u{7}b\"\n\"d\u{1}\",1,error,x\nok,1,failure,fan\n";
        let (evs, sum) = events(text, BadRows::Skip).unwrap();
        assert_eq!(evs.len(), 1);
        assert_eq!(sum.skipped, 2);
        assert_eq!(
            sum.first_errors.iter().map(|e| e.line).collect::<Vec<_>>(),
            vec![2, 3]
        );
        let e = events(text, BadRows::Fail).unwrap_err().to_string();
        assert!(
            e.contains("e.csv:2") && e.contains("unusable event code"),
            "{e}"
        );
    }

    #[test]
    fn an_overlong_line_ends_the_read_as_a_bad_row_at_its_line() {
        let long = "x".repeat(MAX_LINE_BYTES + 10);
        let text = format!("device_id,ts,a\nd,1,1\n{long}\nd,2,2\n");
        let e = telemetry(&text, BadRows::Fail).unwrap_err().to_string();
        assert!(e.contains("longer than"), "{e}");
        let (rows, sum) = telemetry(&text, BadRows::Skip).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(sum.skipped, 1);
    }

    #[test]
    fn a_short_row_is_one_bad_row_and_the_rest_is_read() {
        let text = "device_id,ts,a,b\nd,1,1\nd,2,2,3\n";
        let (rows, sum) = telemetry(text, BadRows::Skip).unwrap();
        assert_eq!(rows, vec![("d".to_string(), Timestamp::from_millis(2))]);
        assert_eq!(
            sum.first_errors[0].to_string(),
            "t.csv:2: 3 fields, the header has 4"
        );
        let e = telemetry(text, BadRows::Fail).unwrap_err().to_string();
        assert_eq!(e, "t.csv:2: 3 fields, the header has 4");
    }

    #[test]
    fn a_refusal_by_the_sink_follows_the_policy() {
        let text = "device_id,ts,a\nd,1,\nd,2,5\n";
        let sink = |r: TelemetryRow<'_>| {
            if r.values.iter().all(|v| v.is_nan()) {
                Err(Refused("row has no metric values".into()))
            } else {
                Ok(())
            }
        };
        let (_, sum) =
            read_telemetry(text.as_bytes(), Path::new("t.csv"), BadRows::Skip, sink).unwrap();
        assert_eq!((sum.rows, sum.skipped), (1, 1));
        let e =
            read_telemetry(text.as_bytes(), Path::new("t.csv"), BadRows::Fail, sink).unwrap_err();
        assert_eq!(e.to_string(), "t.csv:2: row has no metric values");
    }

    #[test]
    fn a_header_without_the_named_columns_is_refused_whatever_the_policy() {
        for policy in [BadRows::Fail, BadRows::Skip] {
            let e = telemetry("id,ts,a\n", policy).unwrap_err().to_string();
            assert_eq!(e, "t.csv: header has no \"device_id\" column");
            let e = telemetry("device_id,ts,a,a\n", policy)
                .unwrap_err()
                .to_string();
            assert!(e.contains("repeated"), "{e}");
        }
    }
}
