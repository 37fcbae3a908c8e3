//! Training on what `forewarn export` writes: a daemon's archived history and its ticket outcomes,
//! read back by `forewarn train`. A maintenance that confirmed a predicted fault is a failure that
//! was prevented, so it teaches the model as much as a failure does.

mod support;

use forewarn::archive::{self, Files, Record};
use forewarn::cli::export::{export, Summary};
use forewarn::domain::{
    DeviceEvent, EventKind, ModelRef, Outcome, Priority, Reading, Status, Ticket, Timestamp,
};
use forewarn::store::Store;
use forewarn::train::csv::{read_dismissals, History};
use forewarn::train::fit::{train, EstimatorKind};
use std::path::Path;
use support::train::options;

const H: i64 = 3_600_000;

/// Eight devices whose `temp` climbs over the 30 h before their belt gives out. Devices 0–3 failed;
/// on devices 4–7 the daemon's ticket sent a technician who replaced the belt (a maintenance
/// event), and the ticket was settled as a confirmed fault.
fn daemon_data_dir(dir: &Path) {
    let mut files = Files::new(archive::dir(dir), &archive::Config::default()).unwrap();
    let mut tickets = Vec::new();
    for d in 0..8i64 {
        let id = format!("d{d}");
        let end = 200 + 13 * d;
        let mut batch = Vec::new();
        for h in 0..end {
            let noise = ((h * 7 + d * 3) % 5) as f64 * 0.3;
            let temp = 50.0 + (h - (end - 30)).max(0) as f64 + noise;
            batch.push(Record::Reading(Reading {
                device_id: forewarn::domain::DeviceId::parse(&id).unwrap(),
                ts: Timestamp::from_millis(h * H),
                seq: Some(h as u64 + 1),
                metrics: vec![("temp".into(), temp)],
            }));
        }
        // A day of healthy running after the repair, so the device's history goes on.
        for h in end..end + 24 {
            batch.push(Record::Reading(Reading {
                device_id: forewarn::domain::DeviceId::parse(&id).unwrap(),
                ts: Timestamp::from_millis(h * H),
                seq: Some(h as u64 + 1),
                metrics: vec![("temp".into(), 50.0)],
            }));
        }
        let prevented = d >= 4;
        batch.push(Record::Event(DeviceEvent {
            device_id: forewarn::domain::DeviceId::parse(&id).unwrap(),
            ts: Timestamp::from_millis(end * H),
            kind: if prevented {
                EventKind::Maintenance
            } else {
                EventKind::Failure
            },
            code: "belt".into(),
        }));
        files.write(&batch, Timestamp::EPOCH).unwrap();
        if prevented {
            let opened = (end - 10) * H;
            tickets.push(Ticket {
                id: format!("t{d}"),
                device_id: forewarn::domain::DeviceId::parse(&id).unwrap(),
                customer_id: None,
                failure_mode: "belt".into(),
                status: Status::Resolved,
                priority: Priority::High,
                probability: 0.9,
                predicted_failure_at: None,
                opened_at: Timestamp::from_millis(opened).format(),
                updated_at: Timestamp::from_millis(end * H).format(),
                model: ModelRef {
                    name: "m".into(),
                    version: "1".into(),
                },
                evidence: vec![],
                history: vec![],
                outcome: Some(Outcome::ConfirmedFault),
                opened_ms: Timestamp::from_millis(opened),
            });
        }
    }
    files.close();
    let store = Store::open(dir, 16 << 20).unwrap();
    let mut tx = store.tx();
    for t in &tickets {
        tx.put_ticket(t);
    }
    store.commit(tx).unwrap();
}

fn belt_positives(telemetry: &Path, events: &Path) -> (usize, History) {
    let h = History::load(telemetry, events, None).unwrap();
    let opts = options(EstimatorKind::Linear, 4, 1, "export");
    let (_, summary) = train(&h, "0".repeat(64), &opts).unwrap();
    let belt = summary.iter().find(|m| m.mode == "belt").unwrap();
    (belt.positives, h)
}

/// The eight devices' data dir, with whatever `more` adds to it, exported: the folder (kept
/// alive by the returned guard), the export folder and what the export wrote.
fn exported(more: impl FnOnce(&Path)) -> (tempfile::TempDir, std::path::PathBuf, Summary) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = tmp.path().join("export");
    daemon_data_dir(&data);
    more(&data);
    let sum = export(&data, &out).unwrap();
    (tmp, out, sum)
}

#[test]
fn confirmed_maintenance_in_an_export_trains_like_the_failure_it_prevented() {
    let (tmp, out, sum) = exported(|_| {});
    assert_eq!(sum.outcomes, 4, "{sum:?}");
    assert_eq!(sum.events, 8, "{sum:?}");

    let tel = out.join("telemetry.csv");
    let ev = out.join("events.csv");
    let (with_outcomes, h) = belt_positives(&tel, &ev);
    // Every device's belt episode ended in a (failed or prevented) failure as training sees it.
    for d in &h.devices {
        assert!(
            d.labels
                .iter()
                .any(|e| e.kind == EventKind::Failure && e.code == "belt"),
            "{}: {:?}",
            d.id,
            d.labels
        );
    }

    // The same export without its outcome column: the repaired devices only say "maintenance",
    // which censors the rows before it instead of making them positives.
    let text = std::fs::read_to_string(&ev).unwrap();
    let stripped: String = text
        .lines()
        .map(|l| l.splitn(5, ',').take(4).collect::<Vec<_>>().join(",") + "\n")
        .collect();
    let ev_plain = tmp.path().join("events_plain.csv");
    std::fs::write(&ev_plain, stripped).unwrap();
    let (without, _) = belt_positives(&tel, &ev_plain);
    assert!(without > 0);
    assert_eq!(
        with_outcomes,
        2 * without,
        "four prevented failures count like the four failures"
    );
}

/// A ninth device, sound all along, whose data ends 4 h after a belt ticket that a person
/// dismissed through the API without a visit (no event carries that verdict).
fn dismissed_without_a_visit(dir: &Path) {
    let id = forewarn::domain::DeviceId::parse("d8").unwrap();
    let mut files = Files::new(archive::dir(dir), &archive::Config::default()).unwrap();
    let batch: Vec<Record> = (0..100i64)
        .map(|h| {
            Record::Reading(Reading {
                device_id: id.clone(),
                ts: Timestamp::from_millis(h * H),
                seq: Some(h as u64 + 1),
                metrics: vec![("temp".into(), 50.0 + (h % 4) as f64 * 0.3)],
            })
        })
        .collect();
    files.write(&batch, Timestamp::EPOCH).unwrap();
    files.close();
    let store = Store::open(dir, 16 << 20).unwrap();
    let mut tx = store.tx();
    tx.put_ticket(&Ticket {
        id: "t8".into(),
        device_id: id,
        customer_id: None,
        failure_mode: "belt".into(),
        status: Status::Dismissed,
        priority: Priority::Advisory,
        probability: 0.4,
        predicted_failure_at: None,
        opened_at: Timestamp::from_millis(93 * H).format(),
        updated_at: Timestamp::from_millis(95 * H).format(),
        model: ModelRef {
            name: "m".into(),
            version: "1".into(),
        },
        evidence: vec![],
        history: vec![],
        outcome: Some(Outcome::FalseAlarm),
        opened_ms: Timestamp::from_millis(93 * H),
    });
    store.commit(tx).unwrap();
}

fn belt_negatives(h: &History) -> usize {
    let opts = options(EstimatorKind::Linear, 4, 1, "export");
    let (artifact, summary) = train(h, "0".repeat(64), &opts).unwrap();
    let belt = summary.iter().find(|m| m.mode == "belt").unwrap();
    // The artifact carries how the model scores rows it was not fitted on (every row, out of
    // fold): the reference of the live drift statistic.
    let reference = artifact.modes[0].score_reference.as_ref().unwrap();
    assert_eq!(reference.len(), forewarn::predict::SCORE_BINS);
    assert_eq!(reference.iter().sum::<u64>() as usize, belt.rows);
    belt.negatives
}

#[test]
fn a_dismissal_without_a_visit_is_exported_and_trains_its_rows_as_no_fault() {
    let (_tmp, out, sum) = exported(dismissed_without_a_visit);
    assert_eq!(sum.dismissals, 1, "{sum:?}");
    assert_eq!(sum.events, 8, "a dismissal adds no event: {sum:?}");
    let dis = out.join("dismissals.csv");
    assert_eq!(
        std::fs::read_to_string(&dis).unwrap(),
        "device_id,failure_mode,opened,dismissed\n\
         d8,belt,1970-01-04T21:00:00Z,1970-01-04T23:00:00Z\n"
    );

    let (tel, ev) = (out.join("telemetry.csv"), out.join("events.csv"));
    let plain = History::load(&tel, &ev, None).unwrap();
    let mut with = History::load(&tel, &ev, None).unwrap();
    let list = read_dismissals(&dis).unwrap();
    assert_eq!(with.add_dismissals(list), 1);
    // d8's data ends at 99 h: with a 12 h horizon its rows from 87 h on are censored. The
    // dismissal vouches for 93, 94 and 95 h: three more rows say "no failure", nothing else moves.
    assert_eq!(belt_negatives(&with), belt_negatives(&plain) + 3);
}
