//! The per-reading pipeline, pure: window update → features → scoring → ticket policy.
//!
//! `serve` wraps it with MQTT and sled, `evaluate` with CSV files; neither adds logic of its own,
//! so a backtest opens exactly the tickets the daemon opens for the same readings.

use crate::domain::{DeviceEvent, DeviceId, EventKind, Reading};
use crate::domain::{HistoryEntry, ModelRef, Outcome, Priority, Status, Ticket, Timestamp};
use crate::features::{
    streak_key, Attributes, DeviceState, FeatureSpec, MetricIndex, Observed, WindowSpec,
};
use crate::predict::{within_hold_back, Artifact, CompiledMode, OpenRule};
use crate::tickets::ticket_id;
use std::cell::RefCell;
use std::sync::Arc;

/// Policy knobs that are not part of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    pub window: WindowSpec,
    /// A device is scored at most once per this much event time.
    pub scoring_interval_ms: i64,
    /// A live ticket is re-published when its probability moves by at least this much...
    pub update_min_probability_delta: f64,
    /// ...or its predicted failure time moves by at least this fraction of the remaining time.
    pub update_min_ttf_fraction: f64,
    /// Number of top features kept as a ticket's evidence.
    pub evidence_features: usize,
    /// The newest automatic `updated` lines a ticket's history keeps.
    pub history_updates_kept: usize,
    /// Scorings in a row required before opening (at most [`OpenRule::MAX_N`]); `None` uses each
    /// model's own rule.
    pub consecutive_override: Option<u16>,
    /// The key ticket ids are derived under (see [`crate::tickets::ticket_id`]); empty in
    /// `evaluate` and `train`.
    pub ticket_id_key: Vec<u8>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            window: WindowSpec::default(),
            scoring_interval_ms: 3_600_000,
            update_min_probability_delta: 0.05,
            update_min_ttf_fraction: 0.2,
            evidence_features: 5,
            history_updates_kept: 20,
            consecutive_override: None,
            ticket_id_key: Vec::new(),
        }
    }
}

/// A loaded artifact with its metric ids resolved and what scoring needs precomputed.
#[derive(Debug)]
pub struct LoadedModel {
    pub artifact: Artifact,
    ids: Vec<Option<u16>>,
    /// Where the mode-dependent features sit in a row (see `FeatureSpec::mode_positions`).
    mode_positions: Vec<usize>,
    /// Per mode, in `artifact.modes` order: the policy's streak key and the compiled trees.
    streak_keys: Vec<String>,
    compiled: Vec<CompiledMode>,
    /// The artifact's feature names, for tickets' evidence (formatted once, not per change).
    names: Vec<String>,
    /// Per mode: its name as every [`Scoring`] carries it (shared, not copied per scoring).
    mode_names: Vec<Arc<str>>,
}

impl LoadedModel {
    fn new(artifact: Artifact, index: &MetricIndex) -> LoadedModel {
        LoadedModel {
            ids: artifact.features.resolve(index),
            mode_positions: artifact.features.mode_positions(),
            streak_keys: artifact
                .modes
                .iter()
                .map(|m| streak_key(&artifact.name, &m.mode))
                .collect(),
            compiled: artifact.modes.iter().map(CompiledMode::new).collect(),
            names: artifact.features.names(),
            mode_names: artifact
                .modes
                .iter()
                .map(|m| Arc::from(m.mode.as_str()))
                .collect(),
            artifact,
        }
    }
}

/// The models the engine serves, with the index of metrics they read.
#[derive(Debug, Default)]
pub struct Models {
    pub list: Vec<LoadedModel>,
    pub index: MetricIndex,
    /// Event codes some model reads: the only ones device states remember.
    pub codes: Vec<String>,
}

/// Why a set of artifacts cannot be served together.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelsError {
    #[error(
        "model {name:?} was trained with windows {trained:?} but the daemon keeps {daemon:?}; \
         set [features] in the configuration to match or retrain"
    )]
    WindowMismatch {
        name: String,
        trained: Box<WindowSpec>,
        daemon: Box<WindowSpec>,
    },
}

impl Models {
    /// Indexes the artifacts' metrics. The daemon's windows must serve every artifact's
    /// ([`WindowSpec::serves`]).
    pub fn new(artifacts: Vec<Artifact>, window: &WindowSpec) -> Result<Models, ModelsError> {
        Models::with_index(artifacts, window, MetricIndex::default())
    }

    /// Like [`Models::new`], starting from an existing index so that metric ids already used by
    /// stored device states stay the same across restarts and model reloads.
    pub fn with_index(
        artifacts: Vec<Artifact>,
        window: &WindowSpec,
        base: MetricIndex,
    ) -> Result<Models, ModelsError> {
        let mut index = base;
        for a in &artifacts {
            if !window.serves(&a.features.window) {
                return Err(ModelsError::WindowMismatch {
                    name: a.name.clone(),
                    trained: Box::new(a.features.window.clone()),
                    daemon: Box::new(window.clone()),
                });
            }
            for m in &a.features.metrics {
                index.intern(m.clone());
            }
        }
        let mut codes: Vec<String> = Vec::new();
        for a in &artifacts {
            for c in a.features.codes() {
                if !codes.contains(&c) {
                    codes.push(c);
                }
            }
        }
        let list = artifacts
            .into_iter()
            .map(|artifact| LoadedModel::new(artifact, &index))
            .collect();
        Ok(Models { list, index, codes })
    }

    pub fn modes(&self) -> impl Iterator<Item = &str> {
        self.list
            .iter()
            .flat_map(|m| m.artifact.modes.iter().map(|x| x.mode.as_str()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    Opened,
    /// Probability, predicted time or priority moved.
    Updated,
    /// Closed by a maintenance or failure event.
    Settled,
    /// Closed or moved by a person through the API or a customer reply.
    Transition,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Opened => "opened",
            ChangeKind::Updated => "updated",
            ChangeKind::Settled => "settled",
            ChangeKind::Transition => "transition",
        }
    }
}

/// A ticket change the engine decided on; the caller persists and publishes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub kind: ChangeKind,
    /// The ticket's priority before this change (`None` when it was just opened).
    pub previous_priority: Option<Priority>,
    pub ticket: Ticket,
}

/// One scoring, as written by `evaluate --predictions-out`.
#[derive(Debug, Clone, PartialEq)]
pub struct Scoring {
    pub device_id: DeviceId,
    pub ts: Timestamp,
    pub mode: Arc<str>,
    pub probability: f64,
    /// The regressor's estimate: always from an engine made [`Engine::estimating_every_scoring`]
    /// (`evaluate`); otherwise only where something read it (see [`Engine::reading`]).
    pub ttf_hours: Option<f64>,
    /// At or above the mode's watch level (internal: API and metrics only).
    pub watch: bool,
}

/// History action of a ticket whose customer was not alerted when it opened (its score was below
/// the customer-alert level); the notifier then sends nothing until [`ALERT_RAISED`].
pub const ALERT_WITHHELD: &str = "alert_withheld";
/// History action recording that a live ticket reached the customer-alert level.
pub const ALERT_RAISED: &str = "customer_alert";

/// Who a device belongs to and what it is, as the fleet registry knows it. `attrs: None` is a
/// device the registry does not know: it is scored with every attribute missing, and its tickets
/// say so.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeviceCtx<'a> {
    pub attrs: Option<&'a Attributes>,
    pub customer_id: Option<&'a str>,
}

pub struct Engine {
    pub cfg: EngineConfig,
    pub models: Arc<Models>,
    /// Runs every mode's regressor at every scoring, read or not (for `evaluate`'s
    /// predictions); a daemon runs it only where its result is read.
    estimate_always: bool,
}

thread_local! {
    static SCRATCH: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

impl Engine {
    pub fn new(cfg: EngineConfig, models: Arc<Models>) -> Engine {
        Engine {
            cfg,
            models,
            estimate_always: false,
        }
    }

    /// This engine with the time-to-failure estimate computed at every scoring, so that every
    /// [`Scoring`] carries it; the tickets are the same either way.
    pub fn estimating_every_scoring(mut self) -> Engine {
        self.estimate_always = true;
        self
    }

    pub fn new_state(&self, ts: Timestamp) -> DeviceState {
        DeviceState::new(&self.cfg.window, ts)
    }

    /// Handles one reading of one device. `live` holds the device's live tickets and is updated
    /// in place; every change is also appended to `changes`.
    pub fn reading(
        &self,
        state: &mut DeviceState,
        live: &mut Vec<Ticket>,
        ctx: DeviceCtx<'_>,
        r: &Reading,
        changes: &mut Vec<Change>,
        mut scorings: Option<&mut Vec<Scoring>>,
    ) -> Observed {
        let (obs, due) = observe_and_slot(
            state,
            r,
            &self.cfg,
            &self.models.index,
            !self.models.list.is_empty(),
        );
        if !due {
            return obs;
        }
        SCRATCH.with(|cell| {
            let mut x = cell.borrow_mut();
            for lm in &self.models.list {
                let a = &lm.artifact;
                if !a.applies_to.matches(ctx.attrs) {
                    continue;
                }
                // One extraction per model; per mode only the mode's clock features change.
                x.clear();
                if let Some(first) = a.modes.first() {
                    a.features
                        .extract(state, &lm.ids, &first.mode, ctx.attrs, r.ts, &mut x);
                }
                for (k, mm) in a.modes.iter().enumerate() {
                    if k > 0 {
                        FeatureSpec::patch_mode(state, &lm.mode_positions, &mm.mode, r.ts, &mut x);
                    }
                    // The regressor's estimate (the predicted time to failure) is read only by
                    // a live ticket's update, a scoring that may open a ticket (at or above the
                    // ticket level: the hold-back, the priority) and `evaluate`'s predictions;
                    // below the level with no live ticket nothing reads it, and most scorings
                    // are there.
                    // The mode's live ticket, looked up once per scoring.
                    let live_at = live.iter().position(|t| t.failure_mode == mm.mode);
                    let estimate = self.estimate_always || live_at.is_some();
                    let ticket_level = mm.ticket_threshold();
                    let s = a.score_mode_compiled_if(mm, &lm.compiled[k], &x, |p| {
                        estimate || ticket_level.is_some_and(|t| p >= t)
                    });
                    if let Some(out) = scorings.as_deref_mut() {
                        out.push(Scoring {
                            device_id: r.device_id.clone(),
                            ts: r.ts,
                            mode: Arc::clone(&lm.mode_names[k]),
                            probability: s.probability,
                            ttf_hours: s.ttf_hours,
                            watch: s.probability >= mm.watch_threshold(),
                        });
                    }
                    // The hold-back: beyond it (predicted time to failure too far out) no ticket
                    // or customer alert opens; the scoring still counts in the rule's memory
                    // unless the mode counts only scorings within the bound.
                    let within = within_hold_back(mm.hold_back_hours(), s.ttf_hours);
                    // A mode without evidence has no ticket level: it can only be watched.
                    let above = mm.ticket_threshold().is_some_and(|t| s.probability >= t)
                        && (within || !mm.hold_back_in_rule());
                    let alert = mm.alert_threshold().is_some_and(|t| s.probability >= t);
                    let recent = state.streak_mut_at(k, &lm.streak_keys[k]);
                    *recent = OpenRule::remember(*recent, above);
                    let recent = *recent;
                    let rule = self
                        .cfg
                        .consecutive_override
                        .map_or_else(|| mm.open_rule(a.consecutive), OpenRule::in_a_row);
                    let prio = priority(s.ttf_hours, a.horizon_hours, s.probability);
                    // Formatted only when a ticket takes it.
                    let predicted = || {
                        s.ttf_hours
                            .map(|h| (r.ts + (h * 3_600_000.0) as i64).format())
                    };
                    // A live ticket takes this scoring's numbers and evidence; returns its
                    // priority before.
                    let refresh = |t: &mut Ticket| {
                        let before = Some(t.priority);
                        t.probability = s.probability;
                        t.predicted_failure_at = predicted();
                        t.priority = t.priority.max(prio);
                        t.updated_at = r.ts.format();
                        t.evidence = a.evidence_named(
                            mm,
                            Some(&lm.compiled[k]),
                            &x,
                            self.cfg.evidence_features,
                            &lm.names,
                        );
                        before
                    };
                    if let Some(t) = live_at.and_then(|i| live.get_mut(i)) {
                        let raise = alert
                            && within
                            && t.history.iter().any(|h| h.action == ALERT_WITHHELD)
                            && !t.history.iter().any(|h| h.action == ALERT_RAISED);
                        if raise {
                            let previous_priority = refresh(t);
                            t.history.push(HistoryEntry {
                                at: r.ts.format(),
                                actor: "forewarn".into(),
                                action: ALERT_RAISED.into(),
                                from: None,
                                to: None,
                                note: "reached the customer-alert level".into(),
                            });
                            changes.push(Change {
                                kind: ChangeKind::Updated,
                                previous_priority,
                                ticket: t.clone(),
                            });
                        } else if self.should_update(t, s.probability, s.ttf_hours, r.ts, prio) {
                            let previous_priority = refresh(t);
                            push_update(
                                &mut t.history,
                                HistoryEntry {
                                    at: r.ts.format(),
                                    actor: "forewarn".into(),
                                    action: UPDATED.into(),
                                    from: None,
                                    to: None,
                                    note: format!("probability {}", two_digits(s.probability)),
                                },
                                self.cfg.history_updates_kept,
                            );
                            changes.push(Change {
                                kind: ChangeKind::Updated,
                                previous_priority,
                                ticket: t.clone(),
                            });
                        }
                    } else if above && within && rule.met(recent) {
                        let mut t = self.open(lm, k, r, ctx, s.probability, predicted(), prio, &x);
                        if !alert {
                            t.history.push(HistoryEntry {
                                at: r.ts.format(),
                                actor: "forewarn".into(),
                                action: ALERT_WITHHELD.into(),
                                from: None,
                                to: None,
                                note: "below the customer-alert level: dispatch only".into(),
                            });
                        }
                        live.push(t.clone());
                        changes.push(Change {
                            kind: ChangeKind::Opened,
                            previous_priority: None,
                            ticket: t,
                        });
                    }
                }
            }
        });
        obs
    }

    #[allow(clippy::too_many_arguments)]
    fn open(
        &self,
        lm: &LoadedModel,
        k: usize,
        r: &Reading,
        ctx: DeviceCtx<'_>,
        probability: f64,
        predicted: Option<String>,
        priority: Priority,
        x: &[f64],
    ) -> Ticket {
        let a = &lm.artifact;
        let mm = &a.modes[k];
        let at = r.ts.format();
        Ticket {
            id: ticket_id(&self.cfg.ticket_id_key, &r.device_id, &mm.mode, r.ts),
            device_id: r.device_id.clone(),
            customer_id: ctx.customer_id.map(str::to_string),
            failure_mode: mm.mode.clone(),
            status: Status::Open,
            priority,
            probability,
            predicted_failure_at: predicted,
            opened_at: at.clone(),
            updated_at: at.clone(),
            model: ModelRef {
                name: a.name.clone(),
                version: a.version.clone(),
            },
            evidence: a.evidence_named(
                mm,
                Some(&lm.compiled[k]),
                x,
                self.cfg.evidence_features,
                &lm.names,
            ),
            history: vec![HistoryEntry {
                at,
                actor: "forewarn".into(),
                action: "opened".into(),
                from: None,
                to: Some(Status::Open),
                note: format!(
                    "probability {} ≥ threshold {} ({}){}",
                    two_digits(probability),
                    two_digits(mm.ticket_threshold().unwrap_or(mm.threshold)),
                    rule_summary(&mm.threshold_rule),
                    if ctx.attrs.is_none() {
                        "; device not in registry: scored without its attributes"
                    } else {
                        ""
                    }
                ),
            }],
            outcome: None,
            opened_ms: r.ts,
        }
    }

    fn should_update(
        &self,
        t: &Ticket,
        p: f64,
        ttf: Option<f64>,
        now: Timestamp,
        prio: Priority,
    ) -> bool {
        if prio > t.priority {
            return true;
        }
        if (p - t.probability).abs() >= self.cfg.update_min_probability_delta {
            return true;
        }
        let old = t.predicted_failure_at.as_deref().and_then(Timestamp::parse);
        match (old, ttf) {
            (Some(old), Some(h)) => {
                let new = now + (h * 3_600_000.0) as i64;
                let remaining = (old - now).max(3_600_000) as f64;
                ((new - old).abs() as f64) / remaining >= self.cfg.update_min_ttf_fraction
            }
            (None, Some(_)) => true,
            _ => false,
        }
    }

    /// Handles a device event: a maintenance or failure settles the mode's live ticket.
    pub fn event(
        &self,
        state: &mut DeviceState,
        live: &mut Vec<Ticket>,
        ev: &DeviceEvent,
        changes: &mut Vec<Change>,
    ) {
        // Only the failure modes the loaded models score are remembered: every distinct code a
        // device sends must not grow its state. A failure of another mode still clears the
        // windows (the device was repaired), but leaves no clock behind.
        let known = ev.kind == EventKind::Error || self.models.modes().any(|m| m == ev.code);
        if !known && ev.kind == EventKind::Maintenance {
            return;
        }
        state.on_event(ev, &self.cfg.window, &self.models.codes);
        if !known {
            state.mode_reset.retain(|(m, _)| *m != ev.code);
        }
        if ev.kind == EventKind::Error {
            return;
        }
        let (outcome, note) = match ev.kind {
            EventKind::Failure => (Outcome::FailedBeforeService, "device reported a failure"),
            _ => (Outcome::ConfirmedFault, "maintenance performed"),
        };
        live.retain_mut(|t| {
            if t.failure_mode != ev.code {
                return true;
            }
            let previous_priority = Some(t.priority);
            // A live ticket can always become resolved.
            let _ = t.transition(Status::Resolved, "device", ev.ts.max(t.opened_ms), note);
            t.outcome = Some(outcome);
            changes.push(Change {
                kind: ChangeKind::Settled,
                previous_priority,
                ticket: t.clone(),
            });
            false
        });
    }
}

/// Applies a reading to a device's windows and says whether the device is due for scoring at
/// this reading (only when `scoring` and the reading was applied). `Engine::reading` and
/// `forewarn train` both step through here, so training rows are taken at exactly the readings
/// the daemon scores.
pub fn observe_and_slot(
    state: &mut DeviceState,
    r: &Reading,
    cfg: &EngineConfig,
    index: &MetricIndex,
    scoring: bool,
) -> (Observed, bool) {
    let obs = state.observe(r, &cfg.window, index);
    if obs != Observed::Applied || !scoring {
        return (obs, false);
    }
    (obs, state.take_scoring_slot(r.ts, cfg.scoring_interval_ms))
}

/// The history action of an automatic update (a new probability or predicted time).
const UPDATED: &str = "updated";

/// Appends an automatic update to a ticket's history, dropping the oldest update beyond `kept`
/// (transitions and notifications are never dropped): a ticket live for months would otherwise
/// carry, and rewrite with every change, hundreds of lines nobody reads.
fn push_update(history: &mut Vec<HistoryEntry>, entry: HistoryEntry, kept: usize) {
    history.push(entry);
    if history.iter().filter(|h| h.action == UPDATED).count() > kept.max(1) {
        if let Some(i) = history.iter().position(|h| h.action == UPDATED) {
            history.remove(i);
        }
    }
}

/// Urgency from how soon the failure is predicted, relative to the model's horizon.
pub fn priority(ttf_hours: Option<f64>, horizon_hours: f64, probability: f64) -> Priority {
    match ttf_hours {
        Some(h) if h <= horizon_hours / 4.0 => Priority::Urgent,
        Some(h) if h <= horizon_hours / 2.0 => Priority::High,
        Some(_) => Priority::Advisory,
        None if probability >= 0.9 => Priority::High,
        None => Priority::Advisory,
    }
}

/// A probability for a person to read: two decimals, or below 0.01 its first two significant
/// digits ("0.0042", not "0.00", which read as "probability 0.00 ≥ threshold 0.00").
fn two_digits(p: f64) -> String {
    if !(p > 0.0 && p < 0.01) {
        return format!("{p:.2}");
    }
    let decimals = (1.0 - p.log10().floor()).clamp(3.0, 12.0) as usize;
    format!("{p:.decimals$}")
}

/// The first clause of a mode's threshold rule (up to its first `;` outside parentheses): how
/// the threshold was chosen, in the words of a ticket's opening note. The whole rule — every
/// level's criterion, a thousand characters for a trained model — stays in the model file;
/// written into every ticket it was half of each ticket's JSON, stored, published and posted
/// with every change.
fn rule_summary(rule: &str) -> &str {
    let mut depth = 0u32;
    for (i, c) in rule.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ';' if depth == 0 => return rule[..i].trim_end(),
            _ => {}
        }
    }
    rule
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_in_notes_keep_two_significant_digits_below_a_hundredth() {
        assert_eq!(two_digits(0.934), "0.93");
        assert_eq!(two_digits(0.01), "0.01");
        assert_eq!(two_digits(0.0042), "0.0042");
        assert_eq!(two_digits(0.00063566), "0.00064");
        assert_eq!(two_digits(1e-9), "0.0000000010");
        assert_eq!(two_digits(0.0), "0.00");
        assert_eq!(two_digits(1.0), "1.00");
        assert_eq!(two_digits(f64::NAN), "NaN");
    }

    #[test]
    fn a_tickets_opening_note_names_the_first_clause_of_the_threshold_rule_only() {
        let rule = "out of fold (5 folds; grouped by device); ticket: best F1 (a ticket is \
                    correct when …); watch: lowest score";
        assert_eq!(
            rule_summary(rule),
            "out of fold (5 folds; grouped by device)"
        );
        assert_eq!(rule_summary("synthetic"), "synthetic");
        assert_eq!(
            rule_summary("เลือกจาก F1 (ข้อมูล; ทดสอบ) ; انتخاب"),
            "เลือกจาก F1 (ข้อมูล; ทดสอบ)"
        );
        assert_eq!(rule_summary("آستانه) نامتوازن; بقیه"), "آستانه) نامتوازن");
        assert_eq!(rule_summary(""), "");
    }

    use crate::predict::example::hot_model;

    fn r(h: i64, temp: f64) -> Reading {
        Reading {
            device_id: crate::domain::DeviceId::parse("d1").unwrap(),
            ts: Timestamp::from_millis(h * 3_600_000),
            seq: None,
            metrics: vec![("temp".into(), temp)],
        }
    }

    fn engine() -> Engine {
        let cfg = EngineConfig::default();
        let models = Models::new(vec![hot_model()], &cfg.window).unwrap();
        Engine::new(cfg, Arc::new(models))
    }

    #[test]
    fn ticket_opens_after_consecutive_high_scores_and_only_once() {
        let e = engine();
        let mut st = e.new_state(Timestamp::EPOCH);
        let mut live = vec![];
        let mut ch = vec![];
        for (h, t) in [(0, 70.0), (1, 85.0), (2, 86.0), (3, 87.0), (4, 87.2)] {
            e.reading(
                &mut st,
                &mut live,
                DeviceCtx::default(),
                &r(h, t),
                &mut ch,
                None,
            );
        }
        let opened: Vec<_> = ch.iter().filter(|c| c.kind == ChangeKind::Opened).collect();
        assert_eq!(opened.len(), 1);
        assert_eq!(opened[0].ticket.opened_at, "1970-01-01T02:00:00Z");
        assert!(opened[0].ticket.predicted_failure_at.is_some());
        assert_eq!(live.len(), 1);
    }

    #[test]
    fn the_regressor_skipped_below_the_level_changes_no_ticket() {
        // A hold-back makes the estimate decide the opening; the daemon's engine runs the
        // regressor only where it is read, `evaluate`'s at every scoring: the same changes.
        let mut a = hot_model();
        let th = a.modes[0].threshold;
        a.modes[0].levels = Some(crate::predict::Levels {
            watch: th / 2.0,
            ticket: Some(th),
            customer_alert: Some(th),
            evidence: crate::predict::ModeEvidence::Sufficient,
            rule: String::new(),
            out_of_fold: Default::default(),
            consecutive: Some(2),
            of_last: None,
            hold_back_hours: Some(48.0),
            hold_back_in_rule: true,
        });
        let cfg = EngineConfig::default();
        let models = Arc::new(Models::new(vec![a], &cfg.window).unwrap());
        let lazy = Engine::new(cfg.clone(), models.clone());
        let every = Engine::new(cfg, models).estimating_every_scoring();
        let temps = [
            70.0, 71.0, 85.0, 70.0, 86.0, 88.0, 90.0, 72.0, 95.0, 99.0, 60.0, 91.0, 93.0,
        ];
        let run = |e: &Engine| {
            let mut st = e.new_state(Timestamp::EPOCH);
            let (mut live, mut ch, mut sc) = (vec![], vec![], vec![]);
            for (h, t) in temps.iter().enumerate() {
                e.reading(
                    &mut st,
                    &mut live,
                    DeviceCtx::default(),
                    &r(h as i64, *t),
                    &mut ch,
                    Some(&mut sc),
                );
            }
            let ch: Vec<String> = ch
                .iter()
                .map(|c| serde_json::to_string(&c.ticket).unwrap())
                .collect();
            (ch, sc)
        };
        let (lazy_changes, lazy_scorings) = run(&lazy);
        let (every_changes, every_scorings) = run(&every);
        assert!(!every_changes.is_empty());
        assert_eq!(lazy_changes, every_changes);
        assert!(every_scorings.iter().all(|s| s.ttf_hours.is_some()));
        assert!(lazy_scorings.iter().any(|s| s.ttf_hours.is_none()));
        for (l, e) in lazy_scorings.iter().zip(&every_scorings) {
            assert_eq!(l.probability, e.probability);
            if l.ttf_hours.is_some() {
                assert_eq!(l.ttf_hours, e.ttf_hours);
            }
        }
    }

    #[test]
    fn a_mode_keeps_the_consecutive_scorings_its_threshold_was_chosen_with() {
        // The artifact asks for two scorings in a row; the mode chose its threshold for one.
        let mut a = hot_model();
        let th = a.modes[0].threshold;
        a.modes[0].levels = Some(crate::predict::Levels {
            watch: th,
            ticket: Some(th),
            customer_alert: None,
            evidence: crate::predict::ModeEvidence::Sufficient,
            rule: String::new(),
            out_of_fold: Default::default(),
            consecutive: Some(1),
            of_last: None,
            hold_back_hours: None,
            hold_back_in_rule: false,
        });
        assert_eq!(a.consecutive, 2);
        let cfg = EngineConfig::default();
        let e = Engine::new(
            cfg.clone(),
            Arc::new(Models::new(vec![a], &cfg.window).unwrap()),
        );
        let mut st = e.new_state(Timestamp::EPOCH);
        let (mut live, mut ch) = (vec![], vec![]);
        for (h, t) in [(0, 70.0), (1, 85.0), (2, 86.0)] {
            e.reading(
                &mut st,
                &mut live,
                DeviceCtx::default(),
                &r(h, t),
                &mut ch,
                None,
            );
        }
        let opened: Vec<_> = ch.iter().filter(|c| c.kind == ChangeKind::Opened).collect();
        assert_eq!(opened.len(), 1);
        assert_eq!(opened[0].ticket.opened_at, "1970-01-01T01:00:00Z");
    }

    #[test]
    fn a_ticket_keeps_its_newest_updates_and_every_other_line() {
        let cfg = EngineConfig {
            history_updates_kept: 3,
            ..EngineConfig::default()
        };
        let models = Models::new(vec![hot_model()], &cfg.window).unwrap();
        let e = Engine::new(cfg, Arc::new(models));
        let mut st = e.new_state(Timestamp::EPOCH);
        let (mut live, mut ch) = (vec![], vec![]);
        // Opens at the third hot hour, then climbs and falls: every swing is an update.
        let temps = [
            70.0, 85.0, 86.0, 87.0, 95.0, 86.0, 99.0, 86.0, 99.0, 86.0, 99.0, 86.0,
        ];
        for (h, t) in temps.into_iter().enumerate() {
            e.reading(
                &mut st,
                &mut live,
                DeviceCtx::default(),
                &r(h as i64, t),
                &mut ch,
                None,
            );
        }
        let updates = ch.iter().filter(|c| c.kind == ChangeKind::Updated).count();
        assert!(updates > 3, "the swings update the ticket ({updates})");
        let history = &live[0].history;
        let kept: Vec<&str> = history
            .iter()
            .filter(|h| h.action == UPDATED)
            .map(|h| h.at.as_str())
            .collect();
        assert_eq!(kept.len(), 3, "{history:?}");
        let newest = ch.last().map(|c| c.ticket.updated_at.clone()).unwrap();
        assert_eq!(
            kept.last().copied(),
            Some(newest.as_str()),
            "the newest kept"
        );
        assert_eq!(
            history[0].action, "opened",
            "the opening line is never dropped"
        );
    }

    #[test]
    fn maintenance_settles_and_a_new_problem_opens_a_new_ticket() {
        let e = engine();
        let mut st = e.new_state(Timestamp::EPOCH);
        let mut live = vec![];
        let mut ch = vec![];
        for h in 0..3 {
            e.reading(
                &mut st,
                &mut live,
                DeviceCtx::default(),
                &r(h, 90.0),
                &mut ch,
                None,
            );
        }
        let ev = DeviceEvent {
            device_id: crate::domain::DeviceId::parse("d1").unwrap(),
            ts: Timestamp::from_millis(3 * 3_600_000),
            kind: EventKind::Maintenance,
            code: "overheat".into(),
        };
        e.event(&mut st, &mut live, &ev, &mut ch);
        assert!(live.is_empty());
        let settled = ch.iter().find(|c| c.kind == ChangeKind::Settled).unwrap();
        assert_eq!(settled.ticket.outcome, Some(Outcome::ConfirmedFault));
        assert_eq!(settled.ticket.status, Status::Resolved);
        for h in 4..7 {
            e.reading(
                &mut st,
                &mut live,
                DeviceCtx::default(),
                &r(h, 90.0),
                &mut ch,
                None,
            );
        }
        assert_eq!(
            ch.iter().filter(|c| c.kind == ChangeKind::Opened).count(),
            2
        );
    }

    #[test]
    fn scoring_interval_limits_work_for_chatty_devices() {
        let e = engine();
        let mut st = e.new_state(Timestamp::EPOCH);
        let mut live = vec![];
        let mut ch = vec![];
        let mut sc = vec![];
        for m in 0..120 {
            let rd = Reading {
                ts: Timestamp::from_millis(m * 60_000),
                ..r(0, 50.0)
            };
            e.reading(
                &mut st,
                &mut live,
                DeviceCtx::default(),
                &rd,
                &mut ch,
                Some(&mut sc),
            );
        }
        assert_eq!(sc.len(), 2, "two hours of minute readings score twice");
    }
}
