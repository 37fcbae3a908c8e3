//! What the notifier tells the operator, one struct per happening: an `emit` that counts also
//! writes the log line, so the two cannot drift apart. Labels of
//! `forewarn_notify_messages_total{channel, outcome}` and `forewarn_notify_fallbacks_total{channel}`
//! come from the enums here. The worker's attempts come first, then the providers' status
//! callbacks (`inbound`).

use super::metrics::NotifyMetrics;
use super::templates::MessageKind;
use crate::fleet::Channel;

/// The `outcome` label of a notification attempt, as the worker sees it (the providers' later
/// status callbacks count `delivered` and `undelivered` in `inbound`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Held for quiet hours or the daily budget.
    Held,
    /// Not sent and not kept (unknown customer, stale row, the routing said no).
    Dropped,
    /// The provider did not take it; tried again later.
    Retry,
    /// The channel failed for good.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Held => "held",
            Outcome::Dropped => "dropped",
            Outcome::Retry => "retry",
            Outcome::Failed => "failed",
        }
    }
}

/// The `channel` label: `none` for a row no channel was tried for.
fn channel_label(channel: Option<Channel>) -> &'static str {
    channel.map_or("none", Channel::as_str)
}

/// A notification attempt that did not reach the provider, or a row held or dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub channel: Option<Channel>,
    pub outcome: Outcome,
}

impl Attempt {
    pub fn channel_label(&self) -> &'static str {
        channel_label(self.channel)
    }

    pub fn emit(&self, m: &NotifyMetrics) {
        tracing::debug!(
            channel = self.channel_label(),
            outcome = self.outcome.as_str(),
            "notification attempt"
        );
        m.messages
            .with_label_values(&[self.channel_label(), self.outcome.as_str()])
            .inc();
    }
}

/// A provider accepted a message for the customer: counted as `outcome="sent"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub channel: Channel,
    pub kind: MessageKind,
    pub ticket: String,
}

impl Sent {
    pub fn emit(&self, m: &NotifyMetrics) {
        tracing::info!(
            channel = self.channel.as_str(),
            kind = self.kind.as_str(),
            ticket = %self.ticket,
            "customer notified"
        );
        m.messages
            .with_label_values(&[self.channel.as_str(), "sent"])
            .inc();
    }
}

/// A row whose attempt failed is tried again after `wait_ms` (counted by its [`Attempt`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retrying {
    pub channel: Channel,
    pub ticket: String,
    pub tries: u32,
    pub wait_ms: i64,
    pub error: String,
}

impl Retrying {
    pub fn emit(&self) {
        tracing::warn!(
            channel = self.channel.as_str(),
            ticket = %self.ticket,
            tries = self.tries,
            wait_ms = self.wait_ms,
            error = %self.error,
            "notification will be retried"
        );
    }
}

/// Every channel of the plan failed (each counted by its [`Attempt`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undeliverable {
    pub ticket: String,
}

impl Undeliverable {
    pub fn emit(&self) {
        tracing::warn!(ticket = %self.ticket, "notification undeliverable on every channel");
    }
}

/// A provider's final word on a message, from its status callback: the `outcome` label
/// `delivered` or `undelivered`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// `delivered`, `completed` (a call) or `read`.
    Delivered,
    /// `undelivered`, `failed`, `busy`, `no-answer` or `canceled`.
    Undelivered,
}

impl Delivery {
    /// The final result a provider's status word gives; `None` for one on the way (`queued`,
    /// `sent`, `ringing`…).
    pub fn of(status: &str) -> Option<Delivery> {
        match status {
            "delivered" | "completed" | "read" => Some(Delivery::Delivered),
            "undelivered" | "failed" | "busy" | "no-answer" | "canceled" => {
                Some(Delivery::Undelivered)
            }
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Delivered => "delivered",
            Delivery::Undelivered => "undelivered",
        }
    }
}

/// A provider reported how a message it accepted ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    pub channel: Channel,
    pub delivery: Delivery,
    pub ticket: String,
}

impl Reported {
    pub fn emit(&self, m: &NotifyMetrics) {
        tracing::debug!(
            channel = self.channel.as_str(),
            outcome = self.delivery.as_str(),
            ticket = %self.ticket,
            "provider delivery status"
        );
        m.messages
            .with_label_values(&[self.channel.as_str(), self.delivery.as_str()])
            .inc();
    }
}

/// An undelivered message goes on to the plan's next channel: counted under the channel that
/// failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FellBack {
    pub from: Channel,
    pub to: Channel,
    pub ticket: String,
}

impl FellBack {
    pub fn emit(&self, m: &NotifyMetrics) {
        tracing::info!(
            channel = self.from.as_str(),
            next = self.to.as_str(),
            ticket = %self.ticket,
            "notification undelivered, trying the next channel"
        );
        m.fallbacks.with_label_values(&[self.from.as_str()]).inc();
    }
}

/// A status callback whose effects could not be committed (the provider is answered all the
/// same; the message stays unsettled).
#[derive(Debug)]
pub struct StatusNotRecorded<'a> {
    pub error: &'a crate::store::StoreError,
}

impl StatusNotRecorded<'_> {
    pub fn emit(&self) {
        tracing::error!(error = %self.error, "status callback not recorded");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_final_status_settles_a_message() {
        for (status, want) in [
            ("delivered", Some(Delivery::Delivered)),
            ("completed", Some(Delivery::Delivered)),
            ("read", Some(Delivery::Delivered)),
            ("undelivered", Some(Delivery::Undelivered)),
            ("failed", Some(Delivery::Undelivered)),
            ("busy", Some(Delivery::Undelivered)),
            ("no-answer", Some(Delivery::Undelivered)),
            ("canceled", Some(Delivery::Undelivered)),
            ("queued", None),
            ("sent", None),
            ("ringing", None),
        ] {
            assert_eq!(Delivery::of(status), want, "{status}");
        }
    }
}
