//! Customer notifications: routing to the best channel for the moment, the durable outbox,
//! fallback, quiet hours, escalation, replies and the customer timeline.

use serde::{Deserialize, Serialize};

/// `[notify]` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    pub enabled: bool,
}

impl NotifyConfig {
    /// Checks the section; on error returns (key below `notify.`, message).
    pub fn validate(&self) -> Result<(), (String, String)> {
        Ok(())
    }
}
