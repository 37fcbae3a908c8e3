//! What settled tickets say about the models: `forewarn_model_realised_precision{model,mode}`.
//!
//! A settled ticket's outcome is the fleet's verdict on a prediction: a confirmed fault or a
//! failure before service says the prediction was right, a dismissal (false alarm) says it was
//! not. The gauge is computed from the store when `/metrics` is scraped, so it always agrees
//! with the tickets the API lists and survives restarts without its own state; the cost is one
//! scan of the tickets per scrape. Labels are the model name and the failure mode, both bounded
//! by the loaded artifacts.

use crate::domain::{Outcome, Ticket};
use crate::store::{Store, TicketFilter};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, Opts};
use std::collections::BTreeMap;

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
    let mut out: BTreeMap<(String, String), Tally> = BTreeMap::new();
    for t in tickets {
        let Some(o) = t.outcome else { continue };
        let e = out
            .entry((t.model.name.clone(), t.failure_mode.clone()))
            .or_default();
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
}

impl Collector for PrecisionCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.gauge.reset();
        match self.store.tickets(&TicketFilter::default()) {
            Ok(tickets) => {
                for ((model, mode), t) in tally(&tickets) {
                    if let Some(p) = t.precision() {
                        self.gauge.with_label_values(&[&model, &mode]).set(p);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "realised precision: tickets unreadable"),
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
    registry.register(Box::new(PrecisionCollector { store, gauge }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ModelRef, Priority, Status};

    fn ticket(id: &str, mode: &str, outcome: Option<Outcome>) -> Ticket {
        Ticket {
            id: id.into(),
            device_id: "d1".into(),
            customer_id: None,
            failure_mode: mode.into(),
            status: Status::Resolved,
            priority: Priority::High,
            probability: 0.9,
            predicted_failure_at: None,
            opened_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            model: ModelRef {
                name: "m".into(),
                version: "1".into(),
            },
            evidence: vec![],
            history: vec![],
            outcome,
            opened_ms: 0,
        }
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
