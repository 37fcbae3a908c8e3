//! Backtest = live: `forewarn evaluate` over a history and the running daemon fed the same history
//! through a real broker open exactly the same tickets, settled the same way.
#![cfg(feature = "embedded-broker")]

mod support;

use forewarn::config::Config;
use support::parity::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_opens_exactly_the_tickets_the_backtest_opens_for_the_same_history() {
    let tmp = tempfile::tempdir().unwrap();
    let hist = SimHistory::write(&tmp.path().join("history"), 24, 45, 11);
    let failures = hist.failures_by_mode();
    assert!(
        failures.len() >= 2 && failures.values().sum::<usize>() >= 5,
        "history must hold several failures of more than one mode: {failures:?}"
    );

    let model = demo_model();
    let broker = forewarn::broker::start(&Default::default()).unwrap();
    let setup = DaemonSetup {
        broker_url: broker.url(),
        topic_prefix: "devices".into(),
        client_id: "fw-parity".into(),
        root: tmp.path().join("daemon"),
        replay_chunk: None,
    };
    let cfg = daemon_config(&setup, &model, &hist);
    assert_eq!(
        cfg.engine_config(),
        Config::default().engine_config(),
        "both sides run the default engine configuration"
    );

    let backtest = evaluate_tickets(&cfg, model, &hist);
    let modes: std::collections::BTreeSet<&str> =
        backtest.iter().map(|t| t.failure_mode.as_str()).collect();
    assert!(
        backtest.len() >= 5 && modes.len() >= 2,
        "the backtest must open tickets of several modes to compare: {} tickets, modes {modes:?}",
        backtest.len()
    );
    assert!(
        backtest.iter().any(|t| t.outcome.is_some()),
        "some tickets must be settled by events"
    );

    let live = daemon_tickets(cfg, &setup, &hist).await;
    assert_same_tickets(&backtest, &live);
}

/// The backtest's tickets, each with the time to failure its mode predicted at the scoring that
/// opened it.
fn backtest_with_predictions(
    cfg: &Config,
    model: forewarn::predict::Artifact,
    hist: &SimHistory,
) -> Vec<(forewarn::domain::Ticket, Option<f64>)> {
    let h = forewarn::train::csv::History::load(
        &hist.telemetry(),
        &hist.events(),
        Some(&hist.devices()),
    )
    .expect("history loads");
    let ev = forewarn::train::evaluate::evaluate(
        model,
        &h,
        None,
        &forewarn::train::evaluate::EvalOptions {
            engine: cfg.engine_config(),
            match_window_h: None,
            rmse_cap_h: None,
        },
    )
    .expect("evaluate");
    ev.tickets
        .into_iter()
        .map(|t| {
            let ttf = ev
                .scorings
                .iter()
                .find(|s| {
                    s.device_id == t.device_id && s.ts == t.opened_ms && *s.mode == *t.failure_mode
                })
                .and_then(|s| s.ttf_hours);
            (t, ttf)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_back_keeps_the_same_tickets_back_in_the_backtest_and_the_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let hist = SimHistory::write(&tmp.path().join("history"), 24, 45, 11);
    let broker = forewarn::broker::start(&Default::default()).unwrap();
    let setup = DaemonSetup {
        broker_url: broker.url(),
        topic_prefix: "devices".into(),
        client_id: "fw-parity-hold-back".into(),
        root: tmp.path().join("daemon"),
        replay_chunk: None,
    };

    // Without a bound: the mode with the most tickets, and the times to failure its tickets
    // predicted when they opened.
    let unbounded = demo_model();
    let cfg = daemon_config(&setup, &unbounded, &hist);
    let all = backtest_with_predictions(&cfg, unbounded.clone(), &hist);
    let mut per_mode: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    for (t, ttf) in &all {
        if let Some(h) = ttf {
            per_mode
                .entry(t.failure_mode.as_str())
                .or_default()
                .push(*h);
        }
    }
    let (mode, mut hours) = per_mode
        .into_iter()
        .max_by_key(|(_, h)| h.len())
        .expect("the unbounded backtest opens tickets with a predicted failure time");
    hours.sort_by(f64::total_cmp);
    assert!(
        hours.len() >= 4 && hours[0] < hours[hours.len() - 1],
        "{mode}: tickets must predict different times to compare: {hours:?}"
    );
    // Bound the mode between its tickets' shortest and longest predictions.
    let bound = (hours[0] + hours[hours.len() - 1]) / 2.0;
    let mode = mode.to_string();
    let mut model = unbounded;
    model.format_version = forewarn::predict::ARTIFACT_VERSION;
    let mm = model
        .modes
        .iter_mut()
        .find(|m| m.mode == mode)
        .expect("the mode is in the model");
    // The demo model is a version 1 artifact: its one threshold serves as every level, as the
    // levels written here keep it.
    let th = mm.threshold;
    let levels = mm.levels.get_or_insert_with(|| forewarn::predict::Levels {
        watch: th,
        ticket: Some(th),
        customer_alert: Some(th),
        evidence: forewarn::predict::ModeEvidence::Sufficient,
        rule: String::new(),
        out_of_fold: Default::default(),
        consecutive: None,
        of_last: None,
        hold_back_hours: None,
        hold_back_in_rule: false,
    });
    levels.hold_back_hours = Some(bound);
    // The same bound counted in a rule of two of the last three scorings (version 4).
    let mut in_rule = model.clone();
    if let Some(l) = in_rule
        .modes
        .iter_mut()
        .find(|m| m.mode == mode)
        .and_then(|m| m.levels.as_mut())
    {
        l.hold_back_in_rule = true;
        l.consecutive = Some(2);
        l.of_last = Some(3);
    }

    let cfg = daemon_config(&setup, &model, &hist);
    let bounded = backtest_with_predictions(&cfg, model, &hist);
    let of_mode = |ts: &[(forewarn::domain::Ticket, Option<f64>)], want: bool| {
        ts.iter()
            .filter(|(t, _)| (t.failure_mode == mode) == want)
            .count()
    };
    // Every unbounded ticket of the mode that opened beyond the bound is gone (a later one may
    // open in its place once the predicted time falls within the bound).
    let beyond: Vec<&str> = all
        .iter()
        .filter(|(t, ttf)| t.failure_mode == mode && ttf.is_some_and(|h| h > bound))
        .map(|(t, _)| t.id.as_str())
        .collect();
    assert!(
        !beyond.is_empty(),
        "{mode}: no ticket opened beyond {bound:.1} h"
    );
    for id in &beyond {
        assert!(
            !bounded.iter().any(|(t, _)| t.id == *id),
            "{mode}: {id} opened beyond the bound {bound:.1} h and was not held back"
        );
    }
    for (t, ttf) in bounded.iter().filter(|(t, _)| t.failure_mode == mode) {
        let h = ttf.unwrap_or_else(|| panic!("{}: opened with no predicted time", t.id));
        assert!(
            h <= bound,
            "{mode}: {} opened {h:.1} h out, bound {bound:.1} h",
            t.id
        );
    }
    assert_eq!(
        of_mode(&bounded, false),
        of_mode(&all, false),
        "the other modes' tickets are not held back"
    );

    let backtest: Vec<forewarn::domain::Ticket> = bounded.into_iter().map(|(t, _)| t).collect();
    let live = daemon_tickets(cfg, &setup, &hist).await;
    assert_same_tickets(&backtest, &live);

    // Counted in the rule, the bound still holds every ticket of the mode, and the daemon opens
    // what the backtest opens.
    let setup = DaemonSetup {
        client_id: "fw-parity-hold-back-in-rule".into(),
        root: tmp.path().join("daemon-in-rule"),
        ..setup
    };
    let cfg = daemon_config(&setup, &in_rule, &hist);
    let counted = backtest_with_predictions(&cfg, in_rule, &hist);
    assert!(
        counted.iter().any(|(t, _)| t.failure_mode == mode),
        "{mode}: the rule of two within the bound still opens tickets"
    );
    for (t, ttf) in counted.iter().filter(|(t, _)| t.failure_mode == mode) {
        let h = ttf.unwrap_or_else(|| panic!("{}: opened with no predicted time", t.id));
        assert!(h <= bound, "{mode}: {} opened {h:.1} h out", t.id);
    }
    let backtest: Vec<forewarn::domain::Ticket> = counted.into_iter().map(|(t, _)| t).collect();
    let live = daemon_tickets(cfg, &setup, &hist).await;
    assert_same_tickets(&backtest, &live);
}
