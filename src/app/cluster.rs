//! What cluster mode (`crate::cluster`, which implements [`Fleetwide`]) provides the commit
//! path and the API.

use crate::engine::Change;
use serde::Serialize;

/// What cluster mode (`crate::cluster`, which implements it) asks of the commit path.
pub trait Fleetwide: Send + Sync {
    /// Whether the device's partition is being replayed to rebuild its state: its ticket changes
    /// are stored but send nothing, as the partition's earlier owner committed (and sent) them.
    fn replaying(&self, device: &str) -> bool;
    /// Claims the fleet-wide key of a ticket change (an opening, an update, a settlement) before
    /// anything is written: `Ok(true)` when this instance holds it (just created, or created by
    /// this instance before), `Ok(false)` when another instance made the same change first —
    /// the ticket is then stored here and nothing is sent for the change.
    fn claim(&self, change: &Change) -> Result<bool, ClaimError>;
    /// The partition assignment as this instance last saw it (`GET /api/v1/cluster`).
    fn status(&self) -> ClusterStatus;
    /// The live instances and where their APIs answer, for the fleet-wide API (`api::fleet`).
    fn peers(&self) -> Peers;
    /// The instance holding the lease of the device's partition, as last read; its copy of the
    /// device's tickets is the authoritative one.
    fn owner(&self, device: &str) -> Option<String>;
}

/// The fleet as the API sees it: who this instance is, the live instances with the API
/// address each advertised in its membership record, and how long to wait for one of them.
#[derive(Debug, Clone)]
pub struct Peers {
    pub me: String,
    /// Instance name → API base URL (`None`: it advertised none, e.g. an older version).
    pub apis: std::collections::BTreeMap<String, Option<String>>,
    pub timeout: std::time::Duration,
}

/// Cluster mode as one instance sees it: `GET /api/v1/cluster`.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct ClusterStatus {
    /// False in single-machine mode (the rest is then empty).
    pub enabled: bool,
    /// This instance's name in the leases.
    pub instance: String,
    /// Partitions of the device subjects.
    pub partitions: u32,
    /// Live instances (membership keys not expired), sorted.
    pub members: Vec<String>,
    /// Partitions whose lease this instance holds.
    pub owned: Vec<u32>,
    /// Owned partitions still being replayed to rebuild device state (nothing acknowledged).
    pub replaying: Vec<u32>,
    /// Each leased partition and its holder, as last read from the lease bucket.
    pub assignment: std::collections::BTreeMap<u32, String>,
}

/// A fleet-wide ticket claim that could not be made: the group is not committed (nor
/// acknowledged) and is tried again.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("fleet-wide claim of ticket {ticket} failed: {source}")]
    Unreachable {
        ticket: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
