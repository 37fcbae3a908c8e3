//! `forewarn evaluate`: history replayed through the daemon's [`Engine`], unchanged, in event time
//! (per device, readings and events merged in the apply order: an event stamped at a reading's
//! own time before the reading), then scored at ticket level and reading level.

use super::csv::{History, Step};
use super::labels::label;
use super::select::{self, TicketTally};
use super::TrainError;
use crate::domain::Ticket;
use crate::domain::{EventKind, Timestamp};
use crate::engine::{ChangeKind, DeviceCtx, Engine, EngineConfig, Models, Scoring};
use crate::features::HOUR_MS;
use crate::predict::Artifact;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub engine: EngineConfig,
    /// A ticket is correct when its failure follows within this; default twice the horizon.
    pub match_window_h: Option<f64>,
    /// Cap on true time to failure for the RMSE; default the model's own cap.
    pub rmse_cap_h: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Quantiles {
    pub p10: Option<f64>,
    pub median: Option<f64>,
    pub p90: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TicketSummary {
    pub opened: usize,
    pub correct: usize,
    pub precision: Option<f64>,
    pub due_failures: usize,
    pub detected: usize,
    pub recall: Option<f64>,
    pub lead_time_hours: Quantiles,
    pub false_alarms: usize,
    pub device_months: f64,
    pub false_alarms_per_device_month: Option<f64>,
    pub match_window_hours: f64,
}

/// Customer alerts: tickets that reached their mode's customer-alert level, counted from the
/// moment they did; an alert is false unless a failure of its mode follows within the match window.
#[derive(Debug, Clone, Serialize)]
pub struct AlertSummary {
    pub alerts: usize,
    pub correct: usize,
    pub false_alerts: usize,
    pub false_per_device_month: Option<f64>,
    /// Scorings at or above the watch level (internal), and the devices and modes they concern.
    pub watch_scorings: usize,
    pub watched_device_modes: usize,
    /// Share of all scorings that were on watch: the watch list's mean size as a share of the
    /// device-modes scored.
    pub watch_share: Option<f64>,
    /// Times a device-mode went on watch, and those with no failure of the mode following within
    /// the match window, per device-month.
    pub watch_episodes: usize,
    pub false_watch_episodes_per_device_month: Option<f64>,
    /// Failures (with scorings in the horizon before them) whose device-mode was on watch at a
    /// scoring in the match window before them, and of those, the ones on watch before their first ticket of
    /// that window (or with no ticket at all).
    pub failures_watched: usize,
    pub failures_watched_before_ticket: usize,
}

/// How well the probabilities mean what they say, over labelled scorings.
#[derive(Debug, Clone, Serialize)]
pub struct CalibrationSummary {
    pub brier: Option<f64>,
    /// Per tenth of predicted probability: (mean predicted, observed frequency, scorings).
    pub reliability: Vec<(f64, f64, usize)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReadingSummary {
    pub scorings: usize,
    pub labelled: usize,
    pub positives: usize,
    pub pr_auc: Option<f64>,
    pub roc_auc: Option<f64>,
    /// Over scorings whose failure was observed; truth capped at `rmse_cap_hours`.
    pub ttf_rmse_hours: Option<f64>,
    pub ttf_rows: usize,
    pub rmse_cap_hours: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TruthSummary {
    pub devices: usize,
    /// At each device's last scoring, truth capped at `rmse_cap_hours`.
    pub rmse_hours: Option<f64>,
    /// PHM08 score (d = predicted − true; e^(−d/13) − 1 early, e^(d/10) − 1 late), same cap.
    pub phm08_score: Option<f64>,
}

/// How one mode of the model opens tickets, as the engine applies it in this backtest.
#[derive(Debug, Clone, Serialize)]
pub struct ModeRule {
    pub mode: String,
    /// The ticket level; `None`: the mode is only watched.
    pub ticket: Option<f64>,
    pub customer_alert: Option<f64>,
    /// `consecutive` of the last `of_last` scorings at or above the ticket level.
    pub consecutive: u16,
    pub of_last: u16,
    /// Tickets and customer alerts open only while the predicted time to failure is at most
    /// this; `None`: no bound.
    pub hold_back_hours: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub model: String,
    pub model_version: String,
    pub horizon_hours: f64,
    /// Per mode, the levels, rule and hold-back the tickets below were opened by.
    pub modes: Vec<ModeRule>,
    pub devices: usize,
    pub readings: usize,
    pub tickets: TicketSummary,
    pub customer_alerts: AlertSummary,
    pub readings_level: ReadingSummary,
    pub calibration: CalibrationSummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truth: Option<TruthSummary>,
}

/// Everything a backtest produced.
pub struct Evaluation {
    pub summary: Summary,
    /// Every ticket opened, in its final state, in order of opening.
    pub tickets: Vec<Ticket>,
    pub scorings: Vec<Scoring>,
    pub lead_hours: Vec<f64>,
    pub pr_curve: Vec<(f64, f64)>,
    /// (true, predicted) time to failure, capped, per labelled scoring.
    pub ttf_pairs: Vec<(f64, f64)>,
}

/// Reads `truth.csv` (`device_id,<remaining hours at the last reading>`).
pub fn read_truth(path: &Path) -> Result<BTreeMap<String, f64>, TrainError> {
    let attrs = super::csv::read_devices(path)?;
    let mut out = BTreeMap::new();
    for (id, a) in attrs {
        let v = a
            .values()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite())
            .ok_or_else(|| {
                TrainError::Data(format!(
                    "{}: device {id:?} has no numeric remaining life",
                    path.display()
                ))
            })?;
        out.insert(id, v);
    }
    Ok(out)
}

pub fn evaluate(
    artifact: Artifact,
    h: &History,
    truth: Option<&BTreeMap<String, f64>>,
    opts: &EvalOptions,
) -> Result<Evaluation, TrainError> {
    let horizon = artifact.horizon_hours;
    let window_h = opts.match_window_h.unwrap_or(2.0 * horizon);
    let cap = opts
        .rmse_cap_h
        .or_else(|| artifact.modes.iter().find_map(|m| m.ttf_cap_hours));
    let name = artifact.name.clone();
    let version = artifact.version.clone();
    let modes: Vec<String> = artifact.modes.iter().map(|m| m.mode.clone()).collect();
    let mode_rules: Vec<ModeRule> = artifact
        .modes
        .iter()
        .map(|m| {
            let rule = opts.engine.consecutive_override.map_or_else(
                || m.open_rule(artifact.consecutive),
                crate::predict::OpenRule::in_a_row,
            );
            ModeRule {
                mode: m.mode.clone(),
                ticket: m.ticket_threshold(),
                customer_alert: m.alert_threshold(),
                consecutive: rule.k,
                of_last: rule.n,
                hold_back_hours: m.hold_back_hours(),
            }
        })
        .collect();
    let models = Models::new(vec![artifact], &opts.engine.window)
        .map_err(|e| TrainError::Data(e.to_string()))?;
    let engine = Engine::new(opts.engine.clone(), Arc::new(models)).estimating_every_scoring();

    let pb = super::progress(h.devices.len() as u64, "backtest");
    let mut scorings = Vec::new();
    let mut changes = Vec::new();
    let mut device_months = 0.0;
    for d in &h.devices {
        let attrs = h.attrs.get(d.id.as_str());
        let ctx = DeviceCtx {
            attrs,
            customer_id: attrs
                .and_then(|a| a.get("customer_id").or_else(|| a.get("customer")))
                .map(String::as_str),
        };
        let first = d.observed_from();
        device_months += d.observed_months();
        let mut state = engine.new_state(first);
        let mut live: Vec<Ticket> = Vec::new();
        for step in d.steps() {
            match step {
                Step::Reading(i) => {
                    let r = d.reading(i, &h.metrics);
                    engine.reading(
                        &mut state,
                        &mut live,
                        ctx,
                        &r,
                        &mut changes,
                        Some(&mut scorings),
                    );
                }
                Step::Event(ev) => engine.event(&mut state, &mut live, ev, &mut changes),
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();

    // Final state of every ticket, in order of opening.
    let mut order = Vec::new();
    let mut last: HashMap<String, Ticket> = HashMap::new();
    for c in changes {
        if c.kind == ChangeKind::Opened {
            order.push(c.ticket.id.clone());
        }
        last.insert(c.ticket.id.clone(), c.ticket);
    }
    let tickets: Vec<Ticket> = order.iter().filter_map(|id| last.remove(id)).collect();

    // Ticket level, per (device, mode).
    let by_id: HashMap<&str, usize> = h
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.as_str(), i))
        .collect();
    let mut tally = TicketTally::default();
    let mut scored: HashMap<(&str, &str), Vec<Timestamp>> = HashMap::new();
    for s in &scorings {
        scored
            .entry((s.device_id.as_str(), &*s.mode))
            .or_default()
            .push(s.ts);
    }
    for d in &h.devices {
        for m in &modes {
            let opened: Vec<Timestamp> = tickets
                .iter()
                .filter(|t| t.device_id == d.id && &t.failure_mode == m)
                .map(|t| t.opened_ms)
                .collect();
            let fails: Vec<Timestamp> = d
                .events
                .iter()
                .filter(|e| &e.code == m && e.kind == EventKind::Failure)
                .map(|e| e.ts)
                .collect();
            let sc = scored
                .get(&(d.id.as_str(), m.as_str()))
                .map_or(&[][..], |v| &v[..]);
            tally.add(select::match_tickets(
                &opened, &fails, sc, horizon, window_h,
            ));
        }
    }
    let false_alarms = tally.tickets - tally.correct;
    let tickets_summary = TicketSummary {
        opened: tally.tickets,
        correct: tally.correct,
        precision: tally.precision(),
        due_failures: tally.due,
        detected: tally.detected,
        recall: tally.recall(),
        lead_time_hours: Quantiles {
            p10: select::quantile(&tally.lead_hours, 0.1),
            median: select::quantile(&tally.lead_hours, 0.5),
            p90: select::quantile(&tally.lead_hours, 0.9),
        },
        false_alarms,
        device_months,
        false_alarms_per_device_month: (device_months > 0.0)
            .then(|| false_alarms as f64 / device_months),
        match_window_hours: window_h,
    };

    // Customer alerts: from opening, unless withheld then, from when the level was reached.
    let mut alerts = (0usize, 0usize);
    for t in &tickets {
        let withheld = t
            .history
            .iter()
            .any(|e| e.action == crate::engine::ALERT_WITHHELD);
        let at = if withheld {
            t.history
                .iter()
                .find(|e| e.action == crate::engine::ALERT_RAISED)
                .and_then(|e| Timestamp::parse(&e.at))
        } else {
            Some(t.opened_ms)
        };
        let Some(at) = at else { continue };
        alerts.0 += 1;
        let w = (window_h * HOUR_MS) as i64;
        let hit = by_id.get(t.device_id.as_str()).is_some_and(|&di| {
            h.devices[di].events.iter().any(|e| {
                e.kind == EventKind::Failure
                    && e.code == t.failure_mode
                    && !crate::domain::event_applies_before(e.ts, at)
                    && e.ts <= at.saturating_add(w)
            })
        });
        if hit {
            alerts.1 += 1;
        }
    }
    let mut watched: std::collections::HashSet<(&str, &str)> = Default::default();
    for s in scorings.iter().filter(|s| s.watch) {
        watched.insert((s.device_id.as_str(), &*s.mode));
    }
    // Watch episodes and failures seen on watch, per (device, mode), in scoring order.
    let mut watch_rows: HashMap<(&str, &str), Vec<(Timestamp, bool)>> = HashMap::new();
    for s in &scorings {
        watch_rows
            .entry((s.device_id.as_str(), &*s.mode))
            .or_default()
            .push((s.ts, s.watch));
    }
    let mut watch_tally = TicketTally::default();
    let (mut failures_watched, mut watched_before_ticket) = (0usize, 0usize);
    let w_ms = (window_h * HOUR_MS) as i64;
    for d in &h.devices {
        for m in &modes {
            let rows = watch_rows
                .get(&(d.id.as_str(), m.as_str()))
                .map_or(&[][..], |v| &v[..]);
            let mut on = false;
            let mut opened = Vec::new();
            for &(ts, w) in rows {
                if w && !on {
                    opened.push(ts);
                }
                on = w;
            }
            let fails: Vec<Timestamp> = d
                .events
                .iter()
                .filter(|e| &e.code == m && e.kind == EventKind::Failure)
                .map(|e| e.ts)
                .collect();
            let sc: Vec<Timestamp> = rows.iter().map(|r| r.0).collect();
            let t = select::match_tickets(&opened, &fails, &sc, horizon, window_h);
            let ticket_opened: Vec<Timestamp> = tickets
                .iter()
                .filter(|t| t.device_id == d.id && &t.failure_mode == m)
                .map(|t| t.opened_ms)
                .collect();
            let mut prev = Timestamp::MIN;
            for &f in &fails {
                // A scoring at a failure's own time comes after it (events first).
                let lo = f.saturating_sub(w_ms).max(prev);
                let first_watch = rows
                    .iter()
                    .find(|&&(ts, w)| w && ts >= lo && ts < f)
                    .map(|r| r.0);
                let first_ticket = ticket_opened
                    .iter()
                    .copied()
                    .filter(|&o| o >= lo && o < f)
                    .min();
                let hz = f.saturating_sub((horizon * HOUR_MS) as i64);
                let due = rows.iter().any(|&(ts, _)| ts >= hz && ts < f);
                if let (true, Some(fw)) = (due, first_watch) {
                    failures_watched += 1;
                    if first_ticket.is_none_or(|ft| fw < ft) {
                        watched_before_ticket += 1;
                    }
                }
                prev = f;
            }
            watch_tally.add(t);
        }
    }
    let customer_alerts = AlertSummary {
        alerts: alerts.0,
        correct: alerts.1,
        false_alerts: alerts.0 - alerts.1,
        false_per_device_month: (device_months > 0.0)
            .then(|| (alerts.0 - alerts.1) as f64 / device_months),
        watch_scorings: scorings.iter().filter(|s| s.watch).count(),
        watched_device_modes: watched.len(),
        watch_share: (!scorings.is_empty())
            .then(|| scorings.iter().filter(|s| s.watch).count() as f64 / scorings.len() as f64),
        watch_episodes: watch_tally.tickets,
        false_watch_episodes_per_device_month: (device_months > 0.0)
            .then(|| (watch_tally.tickets - watch_tally.correct) as f64 / device_months),
        failures_watched,
        failures_watched_before_ticket: watched_before_ticket,
    };

    // Reading level.
    let (mut ps, mut ls) = (Vec::new(), Vec::new());
    let mut ttf_pairs = Vec::new();
    for s in &scorings {
        let Some(&di) = by_id.get(s.device_id.as_str()) else {
            continue;
        };
        let d = &h.devices[di];
        let l = label(
            &d.events,
            &s.mode,
            s.ts,
            d.observed_until(),
            horizon,
            cap.unwrap_or(f64::INFINITY),
        );
        if let Some(p) = l.positive {
            ps.push(s.probability);
            ls.push(p);
        }
        if let (Some(t), Some(pred)) = (l.ttf_hours, s.ttf_hours) {
            let t = cap.map_or(t, |c| t.min(c));
            ttf_pairs.push((t, pred));
        }
    }
    let rmse = |pairs: &[(f64, f64)]| {
        (!pairs.is_empty()).then(|| {
            (pairs.iter().map(|(t, p)| (p - t).powi(2)).sum::<f64>() / pairs.len() as f64).sqrt()
        })
    };
    let readings_level = ReadingSummary {
        scorings: scorings.len(),
        labelled: ps.len(),
        positives: ls.iter().filter(|l| **l).count(),
        pr_auc: select::pr_auc(&ps, &ls),
        roc_auc: select::roc_auc(&ps, &ls),
        ttf_rmse_hours: rmse(&ttf_pairs),
        ttf_rows: ttf_pairs.len(),
        rmse_cap_hours: cap,
    };
    let pr_curve = select::pr_curve(&ps, &ls);
    let mut bins = vec![(0.0f64, 0.0f64, 0usize); 10];
    for (p, l) in ps.iter().zip(&ls) {
        let b = ((p * 10.0) as usize).min(9);
        bins[b].0 += p;
        bins[b].1 += if *l { 1.0 } else { 0.0 };
        bins[b].2 += 1;
    }
    let calibration = CalibrationSummary {
        brier: super::fit::brier(&ps, &ls),
        reliability: bins
            .into_iter()
            .filter(|b| b.2 > 0)
            .map(|(sp, sy, n)| (sp / n as f64, sy / n as f64, n))
            .collect(),
    };

    // Truth at each device's last reading: the last scoring, shifted by any gap to that reading.
    let truth_summary = truth.map(|truth| {
        let mut pairs = Vec::new();
        for d in &h.devices {
            let (Some(&rul), Some(&last_ts)) = (truth.get(d.id.as_str()), d.ts.last()) else {
                continue;
            };
            // With several modes the device fails at its soonest predicted mode.
            let last = scorings
                .iter()
                .filter(|s| s.device_id == d.id && s.ttf_hours.is_some())
                .fold(None::<(Timestamp, f64)>, |acc, s| {
                    let v = s.ttf_hours.unwrap_or(f64::INFINITY);
                    match acc {
                        Some((ts, best)) if ts > s.ts => Some((ts, best)),
                        Some((ts, best)) if ts == s.ts => Some((ts, best.min(v))),
                        _ => Some((s.ts, v)),
                    }
                });
            if let Some((ts, pred)) = last {
                let t = rul + (last_ts - ts) as f64 / HOUR_MS;
                let t = cap.map_or(t, |c| t.min(c));
                pairs.push((t, pred));
            }
        }
        let score = pairs
            .iter()
            .map(|(t, p)| {
                let d = p - t;
                if d < 0.0 {
                    (-d / 13.0).exp() - 1.0
                } else {
                    (d / 10.0).exp() - 1.0
                }
            })
            .sum::<f64>();
        TruthSummary {
            devices: pairs.len(),
            rmse_hours: rmse(&pairs),
            phm08_score: (!pairs.is_empty()).then_some(score),
        }
    });

    Ok(Evaluation {
        summary: Summary {
            model: name,
            model_version: version,
            horizon_hours: horizon,
            modes: mode_rules,
            devices: h.devices.len(),
            readings: h.rows,
            tickets: tickets_summary,
            customer_alerts,
            readings_level,
            calibration,
            truth: truth_summary,
        },
        tickets,
        scorings,
        lead_hours: tally.lead_hours,
        pr_curve,
        ttf_pairs,
    })
}
