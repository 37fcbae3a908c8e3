//! `forewarn export --data-dir DIR --out FOLDER`: a stopped daemon's archived history and its
//! ticket outcomes as training files (`telemetry.csv`, `events.csv` with the `outcome` column,
//! `devices.csv`), so the next `forewarn train` learns from what the fleet confirmed.
//!
//! Each settled ticket's outcome goes on the event that settled it: the maintenance of its mode
//! (`confirmed`) or the failure of its mode (`failed`) on its device, at or after the ticket
//! opened and at or before it settled. A ticket dismissed through the API without any visit has
//! no event to carry its outcome: it goes to `dismissals.csv` (`device_id,failure_mode,opened,
//! dismissed`), which `forewarn train --dismissals` reads as evidence of no fault. A ticket a
//! person resolved with a verdict (the board's "fault confirmed", "replaced part" or "no fault
//! found", or the API's `outcome`) was a visit: when no archived maintenance carries it, that
//! visit is written as the maintenance event.

use super::{CliResult, Failure};
use crate::archive;
use crate::domain::{DeviceEvent, EventKind, Outcome, Status, Timestamp};
use crate::fleet::Device;
use crate::history::{
    read_events, BadRows, DeviceWriter, EventWriter, HistoryError, TelemetryReader, TelemetryWriter,
};
use crate::store::{Store, StoreError, TicketFilter};
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The daemon's data dir (`store.data_dir`); the daemon must be stopped.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Folder to write telemetry.csv, events.csv, devices.csv and dismissals.csv into (created
    /// if missing).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot open the store in {dir}: {source} (the store allows one process at a time: stop the daemon using it first)")]
    Locked { dir: PathBuf, source: StoreError },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What an export wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub readings: u64,
    pub events: u64,
    /// Events that carry an outcome.
    pub outcomes: u64,
    pub devices: u64,
    /// Tickets dismissed without a visit (`dismissals.csv`).
    pub dismissals: u64,
}

pub fn run(a: Args) -> CliResult {
    let s = export(&a.data_dir, &a.out).map_err(Failure::runtime)?;
    println!(
        "exported {} readings, {} events ({} with an outcome), {} devices, {} dismissals without a visit to {}",
        s.readings,
        s.events,
        s.outcomes,
        s.devices,
        s.dismissals,
        a.out.display()
    );
    Ok(())
}

/// Whether an event of `t`'s device and mode that carries an outcome lies in the ticket's life
/// (from its opening to `settled`): then the verdict already has its event.
fn carried_in_life(
    carried: &BTreeSet<(&str, &str, Timestamp)>,
    t: &crate::domain::Ticket,
    settled: Timestamp,
) -> bool {
    carried.iter().any(|(d, c, ts)| {
        t.device_id == **d && *c == t.failure_mode && *ts >= t.opened_ms && *ts <= settled
    })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How long export waits for sled's lock on the store: a store closed a moment ago in this
/// process (sled's background writes hold its files a little past the close) opens within
/// it; a running daemon's does not, and export then says so.
const STORE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Writes the three files from `data_dir` into `out`.
pub fn export(data_dir: &Path, out: &Path) -> Result<Summary, ExportError> {
    let store = Store::open_waiting(data_dir, 16 << 20, STORE_LOCK_WAIT).map_err(|source| {
        ExportError::Locked {
            dir: data_dir.to_path_buf(),
            source,
        }
    })?;
    std::fs::create_dir_all(out).map_err(io(out))?;
    let dir = archive::dir(data_dir);
    let mut sum = Summary::default();

    // Telemetry: the union of the files' metric columns, in first-seen order.
    let tel_files = archive::files(&dir, "telemetry").map_err(io(&dir))?;
    let mut metrics: Vec<String> = Vec::new();
    for p in &tel_files {
        let r = TelemetryReader::new(
            BufReader::new(File::open(p).map_err(io(p))?),
            p,
            BadRows::Skip,
        )?;
        for m in r.metrics() {
            if !metrics.contains(m) {
                metrics.push(m.clone());
            }
        }
    }
    let tel_path = out.join("telemetry.csv");
    let names: Vec<&str> = metrics.iter().map(String::as_str).collect();
    let mut tw = TelemetryWriter::new(
        BufWriter::new(File::create(&tel_path).map_err(io(&tel_path))?),
        &names,
    )
    .map_err(io(&tel_path))?;
    let pos: HashMap<&str, usize> = names.iter().enumerate().map(|(i, m)| (*m, i)).collect();
    let mut values = vec![f64::NAN; names.len()];
    for p in &tel_files {
        let f = BufReader::new(File::open(p).map_err(io(p))?);
        let mut cols: Vec<usize> = Vec::new();
        let mut write_err = None;
        // A file cut short by a crash ends in a partial row: skipped, the rest is kept.
        let mut reader = TelemetryReader::new(f, p, BadRows::Skip)?;
        cols.extend(
            reader
                .metrics()
                .iter()
                .filter_map(|m| pos.get(m.as_str()).copied()),
        );
        while let Some(row) = reader.next_row()? {
            values.iter_mut().for_each(|v| *v = f64::NAN);
            for (c, v) in cols.iter().zip(row.values) {
                values[*c] = *v;
            }
            if let Err(e) = tw.row(row.device_id, row.ts, values.iter().copied()) {
                write_err = Some(e);
                break;
            }
            sum.readings += 1;
        }
        if let Some(e) = write_err {
            return Err(io(&tel_path)(e));
        }
    }
    tw.finish().map_err(io(&tel_path))?;

    // Events, with the outcome of the ticket each one settled.
    let mut events: Vec<DeviceEvent> = Vec::new();
    for p in archive::files(&dir, "events").map_err(io(&dir))? {
        let f = BufReader::new(File::open(&p).map_err(io(&p))?);
        read_events(f, &p, BadRows::Skip, |_, e| {
            events.push(e);
            Ok(())
        })?;
    }
    events.sort_by(|a, b| (&a.device_id, a.ts).cmp(&(&b.device_id, b.ts)));
    let tickets = store.tickets(&TicketFilter::default())?;
    let mut outcome: Vec<Option<&'static str>> = vec![None; events.len()];
    for t in &tickets {
        let Some(o) = t.outcome else { continue };
        let (kind, word) = match o {
            Outcome::ConfirmedFault => (EventKind::Maintenance, "confirmed"),
            Outcome::FalseAlarm => (EventKind::Maintenance, "false_alarm"),
            Outcome::FailedBeforeService => (EventKind::Failure, "failed"),
        };
        let settled: Timestamp = Timestamp::parse(&t.updated_at).unwrap_or(Timestamp::MAX);
        // The latest matching event in the ticket's life is the one that settled it.
        if let Some(i) = events
            .iter()
            .enumerate()
            .filter(|(i, e)| {
                outcome[*i].is_none()
                    && e.device_id == t.device_id
                    && e.kind == kind
                    && e.code == t.failure_mode
                    && e.ts >= t.opened_ms
                    && e.ts <= settled
            })
            .map(|(i, _)| i)
            .next_back()
        {
            outcome[i] = Some(word);
        }
    }
    // A ticket a person resolved with a verdict (on the board or through the API) records a
    // visit: when no archived maintenance carries it, the visit itself becomes the maintenance
    // event of the mode at the resolution, with the verdict (`confirmed`, or `false_alarm` when
    // no fault was found). Dismissals had no visit: they go to `dismissals.csv` (below).
    let carried: BTreeSet<(&str, &str, Timestamp)> = events
        .iter()
        .zip(&outcome)
        .filter(|(_, o)| o.is_some())
        .map(|(e, _)| (e.device_id.as_str(), e.code.as_str(), e.ts))
        .collect();
    let mut visits: Vec<(DeviceEvent, Option<&'static str>)> = Vec::new();
    for t in &tickets {
        let word = match (t.status, t.outcome) {
            (Status::Resolved, Some(Outcome::ConfirmedFault)) => "confirmed",
            (Status::Resolved, Some(Outcome::FalseAlarm)) => "false_alarm",
            _ => continue,
        };
        let by_person = t.history.last().is_some_and(|h| {
            h.to == Some(Status::Resolved)
                && (h.actor == "api"
                    || h.actor.starts_with("api:")
                    || h.actor.starts_with("board:"))
        });
        let Some(settled) = Timestamp::parse(&t.updated_at).filter(|_| by_person) else {
            continue;
        };
        if !carried_in_life(&carried, t, settled) {
            visits.push((
                DeviceEvent {
                    device_id: t.device_id.clone(),
                    ts: settled,
                    kind: EventKind::Maintenance,
                    code: t.failure_mode.clone(),
                },
                Some(word),
            ));
        }
    }
    // A dismissal whose verdict no event carries had no visit: the person's word that the part
    // was sound, for training to read as evidence of no fault.
    let dis_path = out.join("dismissals.csv");
    let mut dw = csv::Writer::from_writer(BufWriter::new(
        File::create(&dis_path).map_err(io(&dis_path))?,
    ));
    let csv_err = |e: csv::Error| io(&dis_path)(std::io::Error::other(e));
    dw.write_record(crate::train::csv::DISMISSALS_HEADER)
        .map_err(csv_err)?;
    for t in tickets.iter().filter(|t| t.status == Status::Dismissed) {
        let Some(dismissed) = Timestamp::parse(&t.updated_at) else {
            continue;
        };
        if carried_in_life(&carried, t, dismissed) {
            continue;
        }
        dw.write_record([
            t.device_id.as_str(),
            t.failure_mode.as_str(),
            &t.opened_ms.format(),
            &dismissed.format(),
        ])
        .map_err(csv_err)?;
        sum.dismissals += 1;
    }
    dw.flush().map_err(io(&dis_path))?;

    let mut rows: Vec<(DeviceEvent, Option<&'static str>)> =
        events.into_iter().zip(outcome).chain(visits).collect();
    rows.sort_by(|a, b| (&a.0.device_id, a.0.ts).cmp(&(&b.0.device_id, b.0.ts)));
    let ev_path = out.join("events.csv");
    let mut ew = EventWriter::with_outcome(BufWriter::new(
        File::create(&ev_path).map_err(io(&ev_path))?,
    ))
    .map_err(io(&ev_path))?;
    for (e, o) in &rows {
        ew.row_with_outcome(e, *o).map_err(io(&ev_path))?;
        sum.events += 1;
        sum.outcomes += u64::from(o.is_some());
    }
    ew.finish().map_err(io(&ev_path))?;

    // Devices: the registry's attributes (the owner as `customer_id`).
    let devices: Vec<Device> = store.fleet_devices()?;
    let mut attrs: BTreeSet<&str> = BTreeSet::new();
    for d in &devices {
        attrs.extend(d.attributes.keys().map(String::as_str));
    }
    let has_customer =
        devices.iter().any(|d| d.customer_id.is_some()) && !attrs.contains("customer_id");
    let mut header: Vec<&str> = attrs.iter().copied().collect();
    if has_customer {
        header.push("customer_id");
    }
    let dev_path = out.join("devices.csv");
    let mut dw = DeviceWriter::new(
        BufWriter::new(File::create(&dev_path).map_err(io(&dev_path))?),
        &header,
    )
    .map_err(io(&dev_path))?;
    for d in &devices {
        let row: Vec<&str> = header
            .iter()
            .map(|h| match (*h, has_customer) {
                ("customer_id", true) => d.customer_id.as_deref().unwrap_or(""),
                _ => d.attributes.get(*h).map_or("", String::as_str),
            })
            .collect();
        dw.row(&d.id, &row).map_err(io(&dev_path))?;
        sum.devices += 1;
    }
    dw.finish().map_err(io(&dev_path))?;
    Ok(sum)
}
