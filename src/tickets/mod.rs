//! Tickets: the promise that a device will be serviced before it fails.
//!
//! [`Ticket`] and its state machine are pure. The policy that opens, updates and settles tickets
//! from scores and device events lives in [`crate::engine`], shared by `serve` and `evaluate`.

use crate::ingest::decode::Millis;
use crate::predict::Evidence;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Open,
    Acknowledged,
    Scheduled,
    Resolved,
    Dismissed,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Open,
        Status::Acknowledged,
        Status::Scheduled,
        Status::Resolved,
        Status::Dismissed,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Acknowledged => "acknowledged",
            Status::Scheduled => "scheduled",
            Status::Resolved => "resolved",
            Status::Dismissed => "dismissed",
        }
    }
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|x| x.as_str() == s)
    }
    /// Open, acknowledged and scheduled tickets are live: at most one per (device, mode).
    pub fn is_live(self) -> bool {
        matches!(
            self,
            Status::Open | Status::Acknowledged | Status::Scheduled
        )
    }
    /// Whether a transition from `self` to `to` is allowed.
    pub fn can_become(self, to: Status) -> bool {
        use Status::*;
        matches!(
            (self, to),
            (Open, Acknowledged | Scheduled | Resolved | Dismissed)
                | (Acknowledged, Scheduled | Resolved | Dismissed)
                | (Scheduled, Scheduled | Resolved | Dismissed)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Advisory,
    High,
    Urgent,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Advisory => "advisory",
            Priority::High => "high",
            Priority::Urgent => "urgent",
        }
    }
}

/// How a ticket ended: the label for the next training run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Serviced for this mode while the ticket was live.
    ConfirmedFault,
    /// Dismissed: the prediction was wrong.
    FalseAlarm,
    /// The device failed before it was serviced.
    FailedBeforeService,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    pub name: String,
    pub version: String,
}

/// One line of a ticket's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// RFC 3339.
    pub at: String,
    /// "forewarn" for the policy, "api:<token name>", "customer:<channel>", "device".
    pub actor: String,
    /// "opened", "updated", a status name, or "notified".
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Status>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ticket {
    pub id: String,
    pub device_id: String,
    pub customer_id: Option<String>,
    pub failure_mode: String,
    pub status: Status,
    pub priority: Priority,
    pub probability: f64,
    /// RFC 3339, when the model predicts a time.
    pub predicted_failure_at: Option<String>,
    /// RFC 3339: event time of the reading that opened it.
    pub opened_at: String,
    /// RFC 3339: event time of the latest change.
    pub updated_at: String,
    pub model: ModelRef,
    pub evidence: Vec<Evidence>,
    pub history: Vec<HistoryEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Event time of opening in epoch ms (for ordering and filters).
    pub opened_ms: Millis,
}

/// Formats event time as RFC 3339 (UTC, second precision unless sub-second).
pub fn rfc3339(ms: Millis) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        None => ms.to_string(),
    }
}

/// A ticket id derived from what opened it, so a replay of the same history names tickets the same.
pub fn ticket_id(device_id: &str, mode: &str, opened_ms: Millis) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(device_id.as_bytes());
    h.update([0x1f]);
    h.update(mode.as_bytes());
    h.update([0x1f]);
    h.update(opened_ms.to_be_bytes());
    let d = h.finalize();
    format!("T-{}", hex::encode(&d[..8]))
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TransitionError {
    #[error("ticket is {from}, it cannot become {to}", from = .from.as_str(), to = .to.as_str())]
    NotAllowed { from: Status, to: Status },
}

impl Ticket {
    /// Applies a status change, recording it in the history.
    pub fn transition(
        &mut self,
        to: Status,
        actor: &str,
        at: Millis,
        note: &str,
    ) -> Result<(), TransitionError> {
        if !self.status.can_become(to) {
            return Err(TransitionError::NotAllowed {
                from: self.status,
                to,
            });
        }
        let from = self.status;
        self.status = to;
        if to == Status::Dismissed && self.outcome.is_none() {
            self.outcome = Some(Outcome::FalseAlarm);
        }
        self.updated_at = rfc3339(at);
        self.history.push(HistoryEntry {
            at: rfc3339(at),
            actor: actor.to_string(),
            action: to.as_str().to_string(),
            from: Some(from),
            to: Some(to),
            note: note.to_string(),
        });
        Ok(())
    }

    pub fn is_live(&self) -> bool {
        self.status.is_live()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Ticket {
        Ticket {
            id: ticket_id("d", "m", 0),
            device_id: "d".into(),
            customer_id: None,
            failure_mode: "m".into(),
            status: Status::Open,
            priority: Priority::High,
            probability: 0.9,
            predicted_failure_at: None,
            opened_at: rfc3339(0),
            updated_at: rfc3339(0),
            model: ModelRef {
                name: "x".into(),
                version: "1".into(),
            },
            evidence: vec![],
            history: vec![],
            outcome: None,
            opened_ms: 0,
        }
    }

    #[test]
    fn lifecycle_moves_forward_and_keeps_history() {
        let mut tk = t();
        tk.transition(Status::Acknowledged, "api", 1000, "")
            .unwrap();
        tk.transition(Status::Scheduled, "api", 2000, "tue 10:00")
            .unwrap();
        tk.transition(Status::Resolved, "api", 3000, "").unwrap();
        assert_eq!(tk.history.len(), 3);
        assert_eq!(tk.history[1].note, "tue 10:00");
        let e = tk.transition(Status::Open, "api", 4000, "").unwrap_err();
        assert_eq!(e.to_string(), "ticket is resolved, it cannot become open");
    }

    #[test]
    fn dismissal_records_a_false_alarm() {
        let mut tk = t();
        tk.transition(Status::Dismissed, "api", 1, "").unwrap();
        assert_eq!(tk.outcome, Some(Outcome::FalseAlarm));
        assert!(!tk.is_live());
    }

    #[test]
    fn ids_are_stable_per_opening() {
        assert_eq!(ticket_id("a", "m", 5), ticket_id("a", "m", 5));
        assert_ne!(ticket_id("a", "m", 5), ticket_id("a", "m", 6));
        assert_eq!(rfc3339(1_420_092_000_000), "2015-01-01T06:00:00Z");
    }
}
