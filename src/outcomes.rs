//! What settled tickets say about the models: `forewarn_model_realised_precision{model,mode}`.
//!
//! A settled ticket's outcome is the fleet's verdict on a prediction: a confirmed fault or a
//! failure before service says the prediction was right, a dismissal (false alarm) says it was
//! not. The gauge is computed from the store when `/metrics` is scraped, so it always agrees
//! with the tickets the API lists and survives restarts without its own state. The tickets are
//! scanned once (and again only after a record was quarantined); after that the store hands
//! over the outcomes each commit writes (`Store::take_outcomes`), so a scrape every 100 ms
//! during a ticket storm costs a pass over the settled outcomes in memory, not a read of every
//! ticket. Labels are the model name and the failure mode, both bounded
//! by the loaded artifacts.

use crate::domain::{Outcome, Ticket};
use crate::store::{Store, TicketFilter};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, Opts};
use std::collections::{BTreeMap, HashMap};

/// Settled outcomes of one (model, mode).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Confirmed faults and failures before service.
    pub right: u64,
    /// Dismissed as false alarms.
    pub wrong: u64,
}

impl Tally {
    /// `None` before any outcome.
    pub fn precision(self) -> Option<f64> {
        let n = self.right + self.wrong;
        (n > 0).then(|| self.right as f64 / n as f64)
    }
}

/// Outcomes per (model name, failure mode).
pub fn tally<'a>(
    tickets: impl IntoIterator<Item = &'a Ticket>,
) -> BTreeMap<(String, String), Tally> {
    let noted: Vec<(String, String, Outcome)> = tickets
        .into_iter()
        .filter_map(|t| Some((t.model.name.clone(), t.failure_mode.clone(), t.outcome?)))
        .collect();
    tally_outcomes(noted.iter())
}

/// Outcomes per (model name, failure mode), from (model, mode, outcome) triples.
fn tally_outcomes<'a>(
    noted: impl IntoIterator<Item = &'a (String, String, Outcome)>,
) -> BTreeMap<(String, String), Tally> {
    let mut out: BTreeMap<(String, String), Tally> = BTreeMap::new();
    for (model, mode, o) in noted {
        let e = out.entry((model.clone(), mode.clone())).or_default();
        match o {
            Outcome::ConfirmedFault | Outcome::FailedBeforeService => e.right += 1,
            Outcome::FalseAlarm => e.wrong += 1,
        }
    }
    out
}

struct PrecisionCollector {
    store: Store,
    gauge: GaugeVec,
    /// Outcome per ticket id, and the store's quarantine epoch it was scanned at.
    known: parking_lot::Mutex<Option<(u64, Known)>>,
}

/// Ticket id → (model, mode, outcome).
type Known = HashMap<String, (String, String, Outcome)>;

impl Collector for PrecisionCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut known = self.known.lock();
        let epoch = self.store.outcome_epoch();
        if known.as_ref().is_none_or(|(at, _)| *at != epoch) {
            // Tracking first, then the scan: an outcome committed in between is in both, and
            // applying it twice is harmless (keyed by ticket id).
            self.store.track_outcomes();
            match self.store.tickets(&TicketFilter::default()) {
                Ok(tickets) => {
                    let map = tickets
                        .into_iter()
                        .filter_map(|t| Some((t.id, (t.model.name, t.failure_mode, t.outcome?))))
                        .collect();
                    *known = Some((epoch, map));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "realised precision: tickets unreadable");
                    return self.gauge.collect();
                }
            }
        }
        let Some((_, map)) = known.as_mut() else {
            return self.gauge.collect();
        };
        for n in self.store.take_outcomes() {
            map.insert(n.ticket, (n.model, n.mode, n.outcome));
        }
        self.gauge.reset();
        for ((model, mode), t) in tally_outcomes(map.values()) {
            if let Some(p) = t.precision() {
                self.gauge.with_label_values(&[&model, &mode]).set(p);
            }
        }
        self.gauge.collect()
    }
}

/// Registers the realised-precision gauge, read from `store` at each scrape.
pub fn register(registry: &prometheus::Registry, store: Store) -> Result<(), prometheus::Error> {
    let gauge = GaugeVec::new(
        Opts::new(
            "forewarn_model_realised_precision",
            "Settled tickets whose outcome confirmed the prediction (fault found or failed before service) over all settled with an outcome, per model and mode",
        ),
        &["model", "mode"],
    )?;
    registry.register(Box::new(PrecisionCollector {
        store,
        gauge,
        known: parking_lot::Mutex::new(None),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Status;

    fn ticket(id: &str, mode: &str, outcome: Option<Outcome>) -> Ticket {
        Ticket {
            failure_mode: mode.into(),
            status: Status::Resolved,
            outcome,
            ..Ticket::example(id, "d1", crate::domain::Timestamp::EPOCH)
        }
    }

    #[test]
    fn drift_is_small_for_the_same_scores_and_large_for_shifted_ones() {
        let reg = prometheus::Registry::new();
        let d = Drift::build(&reg).unwrap();
        let same = (0..2 * DRIFT_REFERENCE).map(|i| (i % 100) as f64 / 100.0);
        d.observe("m", "a", None, same);
        let low = (0..DRIFT_REFERENCE).map(|i| (i % 100) as f64 / 100.0);
        d.observe("m", "b", None, low);
        d.observe("m", "b", None, (0..DRIFT_REFERENCE).map(|_| 0.95));
        let a = d.gauge.with_label_values(&["m", "a"]).get();
        let b = d.gauge.with_label_values(&["m", "b"]).get();
        assert!(a < 0.01, "same distribution: {a}");
        assert!(b > 1.0, "all scores moved to the top bin: {b}");
        assert_eq!(psi(&[0, 0], &[1, 1]), None);
    }

    #[test]
    fn a_model_that_carries_its_training_scores_is_measured_against_them_from_the_first_score() {
        let reg = prometheus::Registry::new();
        let d = Drift::build(&reg).unwrap();
        // Trained: nearly every row scored low.
        let mut trained = vec![0u64; BINS];
        trained[0] = 9_000;
        trained[9] = 100;
        // Live from the start: all high. Without the reference the first 500 would be taken as
        // normal and nothing would show.
        d.observe("m", "a", Some(&trained), (0..100).map(|_| 0.97));
        let a = d.gauge.with_label_values(&["m", "a"]).get();
        assert!(a > 1.0, "{a}");
        // Live like training: small.
        let like = (0..DRIFT_REFERENCE).map(|i| if i % 90 == 0 { 0.95 } else { 0.01 });
        d.observe("m", "b", Some(&trained), like);
        let b = d.gauge.with_label_values(&["m", "b"]).get();
        assert!(b < 0.05, "{b}");
    }

    #[test]
    fn precision_counts_confirmed_and_failed_against_dismissed() {
        let ts = [
            ticket("1", "bearing", Some(Outcome::ConfirmedFault)),
            ticket("2", "bearing", Some(Outcome::FailedBeforeService)),
            ticket("3", "bearing", Some(Outcome::FalseAlarm)),
            ticket("4", "bearing", Some(Outcome::FalseAlarm)),
            ticket("5", "seal", None),
        ];
        let t = tally(&ts);
        assert_eq!(t[&("m".into(), "bearing".into())].precision(), Some(0.5));
        assert!(!t.contains_key(&("m".to_string(), "seal".to_string())));
    }
}

/// Latest scores per (model, mode) the drift statistic compares with the reference: the training
/// scores the artifact carries (`score_reference`, version 5), or for an older artifact the
/// first as many scores the daemon computes after start.
pub const DRIFT_REFERENCE: usize = 500;
const BINS: usize = crate::predict::SCORE_BINS;

#[derive(Default)]
struct ScoreHist {
    reference: [u64; BINS],
    reference_n: usize,
    /// Bins of the latest scores after the reference filled, oldest first.
    recent: std::collections::VecDeque<u8>,
    recent_counts: [u64; BINS],
}

/// Population stability index of `live` against `reference` (both counts over the same bins);
/// half an observation is added to every bin so an empty bin keeps the statistic finite.
pub fn psi(reference: &[u64], live: &[u64]) -> Option<f64> {
    let (rn, ln) = (reference.iter().sum::<u64>(), live.iter().sum::<u64>());
    if rn == 0 || ln == 0 || reference.len() != live.len() {
        return None;
    }
    let k = reference.len() as f64 * 0.5;
    let (rn, ln) = (rn as f64 + k, ln as f64 + k);
    Some(
        reference
            .iter()
            .zip(live)
            .map(|(&r, &l)| {
                let r = (r as f64 + 0.5) / rn;
                let l = (l as f64 + 0.5) / ln;
                (l - r) * (l / r).ln()
            })
            .sum(),
    )
}

/// Live score drift per (model, mode): `forewarn_model_score_drift_psi{model,mode}`.
pub struct Drift {
    hists: parking_lot::Mutex<std::collections::HashMap<(String, String), ScoreHist>>,
    gauge: GaugeVec,
}

impl Drift {
    pub fn build(registry: &prometheus::Registry) -> Result<Drift, prometheus::Error> {
        let gauge = GaugeVec::new(
            Opts::new(
                "forewarn_model_score_drift_psi",
                "Population stability index of the latest 500 live scores against the training scores the model carries (10 bins over 0..1), or against the first 500 scores after start for a model without them, per model and mode",
            ),
            &["model", "mode"],
        )?;
        registry.register(Box::new(gauge.clone()))?;
        Ok(Drift {
            hists: Default::default(),
            gauge,
        })
    }

    /// Adds the (mode, probability) pairs of a commit, each under the first loaded model that
    /// scores the mode (exact when no two models share a mode).
    pub fn observe_scorings(
        &self,
        models: &crate::engine::Models,
        scores: Vec<(std::sync::Arc<str>, f64)>,
    ) {
        let mut by: std::collections::BTreeMap<std::sync::Arc<str>, Vec<f64>> = Default::default();
        for (mode, p) in scores {
            by.entry(mode).or_default().push(p);
        }
        for (mode, ps) in by {
            let found = models.list.iter().find_map(|m| {
                m.artifact
                    .modes
                    .iter()
                    .find(|mm| *mm.mode == *mode)
                    .map(|mm| (m.artifact.name.as_str(), mm.score_reference.as_deref()))
            });
            let (model, reference) = found.unwrap_or(("", None));
            self.observe(model, &mode, reference, ps);
        }
    }

    /// Adds scores (probabilities in 0..1) of one (model, mode) and updates its gauge.
    /// `reference` is the training score distribution the model carries ([`BINS`] counts); without
    /// it the first [`DRIFT_REFERENCE`] scores are the reference.
    pub fn observe(
        &self,
        model: &str,
        mode: &str,
        reference: Option<&[u64]>,
        scores: impl IntoIterator<Item = f64>,
    ) {
        let mut hists = self.hists.lock();
        let key = (model.to_string(), mode.to_string());
        let h = hists.entry(key).or_default();
        if h.reference_n == 0 {
            if let Some(r) = reference.filter(|r| r.len() == BINS && r.iter().any(|&c| c > 0)) {
                h.reference.copy_from_slice(r);
                // Full: every score from now on is a live one.
                h.reference_n = DRIFT_REFERENCE;
            }
        }
        let mut recent = false;
        for p in scores {
            if !p.is_finite() {
                continue;
            }
            let b = crate::predict::score_bin(p);
            if h.reference_n < DRIFT_REFERENCE {
                h.reference[b] += 1;
                h.reference_n += 1;
                continue;
            }
            recent = true;
            h.recent.push_back(b as u8);
            h.recent_counts[b] += 1;
            if h.recent.len() > DRIFT_REFERENCE {
                if let Some(old) = h.recent.pop_front() {
                    h.recent_counts[old as usize] -= 1;
                }
            }
        }
        if recent {
            if let Some(v) = psi(&h.reference, &h.recent_counts) {
                self.gauge.with_label_values(&[model, mode]).set(v);
            }
        }
    }
}
