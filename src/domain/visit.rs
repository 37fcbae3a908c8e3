//! Visits as values: the slots a dispatcher proposes for a ticket, and the visit that gets
//! booked — by the dispatcher, or by the customer picking one of the proposed slots on the
//! self-service page (one conversation, two sides). Where they are kept is named here so the
//! board and the notifier read and write the same records.

use super::Timestamp;
use serde::{Deserialize, Serialize};

/// A stretch of time `[start_ms, end_ms)`, epoch milliseconds.
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
)]
pub struct Slot {
    #[schema(value_type = i64)]
    pub start_ms: Timestamp,
    #[schema(value_type = i64)]
    pub end_ms: Timestamp,
}

impl Slot {
    pub fn overlaps(&self, other: &Slot) -> bool {
        self.start_ms < other.end_ms && other.start_ms < self.end_ms
    }
}

/// The slots a dispatcher offered the customer for a ticket's visit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Proposal {
    pub ticket_id: String,
    pub technician_id: String,
    pub slots: Vec<Slot>,
    /// RFC 3339.
    pub proposed_at: String,
    /// Who proposed them ("board:<name>", "api").
    pub by: String,
}

/// A booked visit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Visit {
    pub ticket_id: String,
    pub technician_id: String,
    pub slot: Slot,
    /// RFC 3339.
    pub booked_at: String,
    /// "board:<name>", "api", or "customer:link" when the customer picked a proposed slot.
    pub booked_by: String,
}

/// Store key of a ticket's proposal.
pub fn proposal_key(ticket_id: &str) -> String {
    format!("visits/proposal/{ticket_id}")
}

/// Store key of a ticket's booked visit.
pub fn visit_key(ticket_id: &str) -> String {
    format!("visits/visit/{ticket_id}")
}

/// Store key of a ticket's assignment (the board's record of who is on it).
pub fn assignment_key(ticket_id: &str) -> String {
    format!("board/assignment/{ticket_id}")
}

/// The keys of what the board keeps beside a ticket: its assignment, proposal and booked
/// visit. Cluster mode carries these with the ticket (in a transition's stream record and in a
/// partition's checkpoint).
pub fn ticket_record_keys(ticket_id: &str) -> [String; 3] {
    [
        assignment_key(ticket_id),
        proposal_key(ticket_id),
        visit_key(ticket_id),
    ]
}

/// Prefix of every assignment's key.
pub const ASSIGNMENT_PREFIX: &str = "board/assignment/";

/// Prefix of every proposal's key.
pub const PROPOSAL_PREFIX: &str = "visits/proposal/";

/// Prefix of every booked visit's key.
pub const VISIT_PREFIX: &str = "visits/visit/";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_overlap_only_when_they_share_time() {
        let a = Slot {
            start_ms: Timestamp::EPOCH,
            end_ms: Timestamp::from_millis(10),
        };
        let b = Slot {
            start_ms: Timestamp::from_millis(10),
            end_ms: Timestamp::from_millis(20),
        };
        let c = Slot {
            start_ms: Timestamp::from_millis(5),
            end_ms: Timestamp::from_millis(15),
        };
        assert!(!a.overlaps(&b));
        assert!(a.overlaps(&c) && c.overlaps(&b));
    }
}
