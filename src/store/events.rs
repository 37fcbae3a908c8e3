//! What the store tells the operator, one struct per happening: its `emit` writes the log line
//! and counts `forewarn_store_quarantined_total` together, so the two cannot drift apart.

/// A stored record that could not be decoded was set aside under `q/` (or, if the move could
/// not be written, left where it was and read as absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    /// The record's key (lossy UTF-8).
    pub key: String,
    /// Why it could not be read.
    pub detail: String,
    /// Whether the move to `q/` was written.
    pub moved: bool,
}

impl SetAside {
    pub fn emit(&self, quarantined: &prometheus::IntCounter) {
        quarantined.inc();
        tracing::error!(
            key = %self.key,
            moved = self.moved,
            "stored record could not be decoded and was set aside: {}",
            self.detail
        );
    }
}
