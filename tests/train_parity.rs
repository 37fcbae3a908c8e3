//! Training rows and the daemon's scorings are the same numbers: a row built by `forewarn train`
//! scores exactly like the engine's scoring of the same reading in `forewarn evaluate`.

mod support;

use forewarn::predict::Artifact;
use forewarn::train::csv::History;
use forewarn::train::evaluate::{evaluate, EvalOptions, Evaluation};
use forewarn::train::fit::{train, EstimatorKind, TrainOptions};
use forewarn::train::rows::{build_rows, Rows};
use std::fmt::Write as _;
use support::train::{options, write_history};

/// Both sides of the comparison: the model trained on `h`, its training rows of `mode`, and
/// `evaluate`'s scorings of the same history with it.
fn rows_and_scorings(h: &History, opts: &TrainOptions, mode: &str) -> (Artifact, Rows, Evaluation) {
    let (artifact, _) = train(h, "0".repeat(64), opts).unwrap();
    let pb = indicatif::ProgressBar::hidden();
    let mut rows = build_rows(
        h,
        &artifact.features,
        &opts.engine,
        &[mode.to_string()],
        12.0,
        48.0,
        &vec![true; h.devices.len()],
        &pb,
    );
    let ev = evaluate(
        artifact.clone(),
        h,
        None,
        &EvalOptions {
            engine: opts.engine.clone(),
            match_window_h: None,
            rmse_cap_h: None,
        },
    )
    .unwrap();
    (artifact, rows.swap_remove(0), ev)
}

#[test]
fn training_rows_score_exactly_like_the_engine_scores_the_same_readings() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tel = String::from("device_id,ts,temp,load\n");
    let mut ev = String::from("device_id,ts,kind,code\n");
    for d in 0..8i64 {
        let life = 90 + 7 * d;
        // Readings every 20 minutes: the 1 h scoring interval keeps one in three.
        for k in 0..=(life * 3) {
            let h = k as f64 / 3.0;
            let temp =
                50.0 + ((h - (life as f64 - 30.0)).max(0.0)) + ((k * 7 + d) % 5) as f64 * 0.3;
            let load = if k % 4 == 0 {
                String::new()
            } else {
                format!("{}", (k % 9) as f64)
            };
            let ts = forewarn::domain::Timestamp::from_millis(k * 1_200_000).format();
            writeln!(tel, "m{d},{ts},{temp:.2},{load}").unwrap();
        }
        if d % 3 == 0 {
            let ts = forewarn::domain::Timestamp::from_millis(30 * 3_600_000).format();
            writeln!(ev, "m{d},{ts},maintenance,belt").unwrap();
        }
        writeln!(
            ev,
            "m{d},{},failure,belt",
            forewarn::domain::Timestamp::from_millis(life * 3_600_000).format()
        )
        .unwrap();
    }
    let h = write_history(tmp.path(), &tel, &ev);
    let opts = options(EstimatorKind::Linear, 4, 3, "parity");
    let (artifact, rows, ev) = rows_and_scorings(&h, &opts, "belt");
    assert_eq!(rows.len(), ev.scorings.len());
    assert!(rows.len() < h.rows / 2, "scoring interval not applied");
    for (i, s) in ev.scorings.iter().enumerate() {
        assert_eq!(h.devices[rows.device[i] as usize].id, s.device_id);
        assert_eq!(rows.ts[i], s.ts);
        let mine = artifact.score_mode(&artifact.modes[0], rows.row(i));
        assert_eq!(mine.probability, s.probability, "row {i}");
        assert_eq!(mine.ttf_hours, s.ttf_hours, "row {i}");
    }
}

/// Error codes get features of their own (counts in event-time windows, hours since the last
/// one), and the engine keeps exactly the codes the model reads: a row built by training and the
/// engine's scoring of the same reading agree, with gradient-boosted trees that split on them.
#[test]
fn event_code_features_are_computed_alike_in_training_and_in_the_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let mut tel = String::from("device_id,ts,temp\n");
    let mut ev = String::from("device_id,ts,kind,code\n");
    for d in 0..10i64 {
        let life = 120 + 9 * d;
        for h in 0..=life {
            // Telemetry says nothing: only the code E7 warns, in the 20 h before a failure.
            let temp = 50.0 + ((h * 13 + d * 7) % 11) as f64 * 0.2;
            writeln!(
                tel,
                "m{d},{},{temp:.2}",
                forewarn::domain::Timestamp::from_millis(h * 3_600_000).format()
            )
            .unwrap();
            if life - h <= 20 && h % 3 == 0 {
                let ts = forewarn::domain::Timestamp::from_millis(h * 3_600_000 + 600_000).format();
                writeln!(ev, "m{d},{ts},error,E7").unwrap();
            }
            if (h + d) % 17 == 0 {
                let ts = forewarn::domain::Timestamp::from_millis(h * 3_600_000 + 900_000).format();
                writeln!(ev, "m{d},{ts},error,E1").unwrap();
            }
        }
        writeln!(
            ev,
            "m{d},{},failure,pump",
            forewarn::domain::Timestamp::from_millis(life * 3_600_000).format()
        )
        .unwrap();
    }
    let h = write_history(tmp.path(), &tel, &ev);
    let opts = options(EstimatorKind::Gbm, 5, 3, "codes");
    let (artifact, rows, ev) = rows_and_scorings(&h, &opts, "pump");
    assert_eq!(artifact.features.codes(), vec!["E1", "E7"]);
    let names = artifact.features.names();
    let count_e7 = names
        .iter()
        .position(|n| n.starts_with("code.E7.count"))
        .expect("a count feature for E7");
    assert!((0..rows.len()).any(|i| rows.row(i)[count_e7] >= 2.0));
    assert_eq!(rows.len(), ev.scorings.len());
    let mut distinct = std::collections::BTreeSet::new();
    for (i, s) in ev.scorings.iter().enumerate() {
        assert_eq!(rows.ts[i], s.ts);
        let mine = artifact.score_mode(&artifact.modes[0], rows.row(i));
        assert_eq!(mine.probability, s.probability, "row {i}");
        distinct.insert(s.probability.to_bits());
    }
    // The trees split on the code features: the scores vary with them.
    assert!(distinct.len() > 5, "{}", distinct.len());
    // And the code does predict: tickets before most failures, from the code alone.
    assert!(
        ev.summary.tickets.recall.unwrap_or(0.0) >= 0.6,
        "{:?}",
        ev.summary.tickets
    );
}
