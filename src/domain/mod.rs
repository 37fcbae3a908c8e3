//! The vocabulary every stage speaks: readings and device events, event time, device ids,
//! tickets and their statuses, durations as the configuration writes them.
//!
//! A leaf: nothing here imports from the rest of the crate, and nothing here does I/O. The
//! parser that first produced a [`Reading`] (`ingest::decode`) and the state machine that moves a
//! [`Ticket`] (`tickets`) both build on these types; neither owns them.

mod device;
mod duration;
mod order;
mod reading;
mod ticket;
mod time;
mod visit;

pub use device::{validate_device_id, DeviceId, DeviceIdError, MAX_DEVICE_ID_LEN};
pub use duration::{Dur, DurError};
pub use order::{apply_order, event_applies_before, rank as order_rank};
pub use reading::{DeviceEvent, EventKind, Reading, RejectReason};
pub use ticket::{Evidence, HistoryEntry, ModelRef, Outcome, Priority, Status, Ticket};
pub use time::{Timestamp, TimestampError};
pub use visit::{
    assignment_key, proposal_key, ticket_record_keys, visit_key, Proposal, Slot, Visit,
    ASSIGNMENT_PREFIX, PROPOSAL_PREFIX, VISIT_PREFIX,
};
