//! Levels chosen out of fold: a mode without enough failures may watch, never ticket.

mod support;

use forewarn::engine::EngineConfig;
use forewarn::predict::ModeEvidence;
use forewarn::train::csv::History;
use forewarn::train::evaluate::{evaluate, EvalOptions};
use forewarn::train::fit::{train, EstimatorKind};
use std::fmt::Write as _;
use support::train::{options, write_history};

/// Twelve devices whose `temp` climbs before a `belt` failure; one of them also has a `fuse`
/// failure, once, preceded by the same climb in `volt`.
fn fleet(dir: &std::path::Path) -> History {
    let mut tel = String::from("device_id,ts,temp,volt\n");
    let mut ev = String::from("device_id,ts,kind,code\n");
    for d in 0..12i64 {
        let life = 150 + 11 * d;
        let fuse_at = (d == 4).then_some(80);
        for h in 0..=life {
            let noise = ((h * 7 + d * 3) % 5) as f64 * 0.3;
            let temp = 50.0 + (h - (life - 30)).max(0) as f64 + noise;
            let volt = 230.0
                + fuse_at.map_or(0.0, |f| {
                    if h <= f {
                        (h - (f - 20)).max(0) as f64
                    } else {
                        0.0
                    }
                })
                + noise;
            let ts = forewarn::domain::Timestamp::from_millis(h * 3_600_000).format();
            writeln!(tel, "d{d:02},{ts},{temp:.2},{volt:.2}").unwrap();
        }
        if let Some(f) = fuse_at {
            let ts = forewarn::domain::Timestamp::from_millis(f * 3_600_000).format();
            writeln!(ev, "d{d:02},{ts},failure,fuse").unwrap();
        }
        let ts = forewarn::domain::Timestamp::from_millis(life * 3_600_000).format();
        writeln!(ev, "d{d:02},{ts},failure,belt").unwrap();
    }
    write_history(dir, &tel, &ev)
}

#[test]
fn a_mode_with_one_failure_gets_no_ticket_level_and_never_opens_a_ticket() {
    let tmp = tempfile::tempdir().unwrap();
    let h = fleet(tmp.path());
    let opts = options(EstimatorKind::Linear, 4, 1, "levels");
    let (a, summary) = train(&h, "0".repeat(64), &opts).unwrap();
    let fuse = a.modes.iter().find(|m| m.mode == "fuse").unwrap();
    let levels = fuse.levels.as_ref().unwrap();
    assert_eq!(levels.evidence, ModeEvidence::TooFewFailures, "{levels:?}");
    assert_eq!(levels.ticket, None);
    assert_eq!(levels.customer_alert, None);
    assert_eq!(fuse.ticket_threshold(), None);
    // Not a degenerate threshold: the watch level is above every healthy device's scores.
    assert!(levels.watch > 1e-3, "{levels:?}");
    let belt = a.modes.iter().find(|m| m.mode == "belt").unwrap();
    let bl = belt.levels.as_ref().unwrap();
    assert_eq!(bl.evidence, ModeEvidence::Sufficient, "{bl:?}");
    assert!(bl.ticket.is_some());
    assert!(bl.out_of_fold.failures >= 10, "{bl:?}");
    assert!(bl.out_of_fold.precision.is_some() && bl.out_of_fold.recall.is_some());
    assert!(bl.customer_alert.is_none_or(|c| c >= bl.ticket.unwrap()));
    assert!(bl.watch <= bl.ticket.unwrap());
    // The false-alert cap holds for a device's alerts of every mode together, with a margin:
    // each alerting mode's out-of-fold false alerts, plus their Poisson margin, within its
    // share of the cap.
    let ticketing: Vec<_> = a
        .modes
        .iter()
        .filter_map(|m| m.levels.as_ref())
        .filter(|l| l.ticket.is_some())
        .collect();
    let share = opts.alert_cap / ticketing.len() as f64;
    for l in &ticketing {
        if let (Some(_), Some(rate)) = (
            l.customer_alert,
            l.out_of_fold.false_alerts_per_device_month,
        ) {
            let months = l.out_of_fold.device_months;
            let false_alerts = (rate * months).round() as usize;
            assert!(
                forewarn::train::select::false_rate_bound(false_alerts, months) <= share + 1e-12,
                "{l:?}"
            );
        }
    }
    // The train summary says the same per mode.
    let s = summary.iter().find(|s| s.mode == "fuse").unwrap();
    assert_eq!(s.levels.evidence, ModeEvidence::TooFewFailures);

    // The artifact round-trips, and a backtest on the same fleet opens belt tickets only.
    let path = tmp.path().join("m.json");
    a.save(&path).unwrap();
    let back = forewarn::predict::Artifact::load(&path).unwrap();
    assert_eq!(back, a);
    let ev = evaluate(
        back,
        &h,
        None,
        &EvalOptions {
            engine: EngineConfig::default(),
            match_window_h: None,
            rmse_cap_h: None,
        },
    )
    .unwrap();
    assert!(ev.tickets.iter().all(|t| t.failure_mode == "belt"));
    assert!(!ev.tickets.is_empty());
}

#[test]
fn folds_without_a_failure_do_not_run_to_the_round_limit() {
    // The fuse mode's single failure sits in one fold: the other folds' own devices hold no
    // failure, so their validation loss cannot tell when to stop. They must not run to the
    // 500-round limit (the served classifier holds every fold's trees).
    let tmp = tempfile::tempdir().unwrap();
    let h = fleet(tmp.path());
    let opts = options(EstimatorKind::Gbm, 4, 1, "levels");
    let (_, summary) = train(&h, "0".repeat(64), &opts).unwrap();
    let fuse = summary.iter().find(|s| s.mode == "fuse").unwrap();
    let trees = fuse.classifier_trees.unwrap_or(0);
    assert!(
        trees <= 3 * forewarn::train::fit::UNINFORMED_FOLD_ROUNDS,
        "{trees} trees"
    );
    assert_eq!(fuse.levels.evidence, ModeEvidence::TooFewFailures);
}
