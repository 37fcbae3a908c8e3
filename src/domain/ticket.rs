//! Tickets as values: the promise that a device will be serviced before it fails, with typed
//! statuses, priorities and outcomes. How a ticket moves between statuses is `tickets`' business.

use super::{DeviceId, Timestamp};
use serde::{Deserialize, Serialize};

/// One feature behind a score, as a ticket shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Evidence {
    pub feature: String,
    /// `None` when the feature had no value (a missing device attribute, an empty window).
    pub value: Option<f64>,
    /// Contribution to the log-odds (positive pushes toward failure).
    pub weight: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
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
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    schemars::JsonSchema,
)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Serviced for this mode while the ticket was live.
    ConfirmedFault,
    /// Dismissed: the prediction was wrong.
    FalseAlarm,
    /// The device failed before it was serviced.
    FailedBeforeService,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelRef {
    pub name: String,
    pub version: String,
}

/// One line of a ticket's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Ticket {
    pub id: String,
    #[schema(value_type = String)]
    pub device_id: DeviceId,
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
    #[schema(value_type = i64)]
    pub opened_ms: Timestamp,
}

#[cfg(test)]
impl Ticket {
    /// The ticket unit tests start from: `id` on `device`, open, high priority, probability 0.9,
    /// a `bearing_wear` prediction of model `m` version 1, no customer, opened (and last changed)
    /// at `opened`. A test sets what it is about on top:
    /// `Ticket { priority: Priority::Urgent, ..Ticket::example("T-1", "pump-1", t0) }`.
    pub(crate) fn example(id: &str, device: &str, opened: Timestamp) -> Ticket {
        Ticket {
            id: id.to_string(),
            device_id: DeviceId::parse(device).expect("a valid device id"),
            customer_id: None,
            failure_mode: "bearing_wear".into(),
            status: Status::Open,
            priority: Priority::High,
            probability: 0.9,
            predicted_failure_at: None,
            opened_at: opened.format(),
            updated_at: opened.format(),
            model: ModelRef {
                name: "m".into(),
                version: "1".into(),
            },
            evidence: vec![],
            history: vec![],
            outcome: None,
            opened_ms: opened,
        }
    }
}
