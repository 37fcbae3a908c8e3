//! Notification metrics; labels are bounded (channel, outcome), never a customer or device.

use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

#[derive(Clone)]
pub struct NotifyMetrics {
    /// outcome: sent, retry, failed, delivered, undelivered, held, dropped.
    pub messages: IntCounterVec,
    /// From the ticket change to the provider accepting the message.
    pub latency: HistogramVec,
    pub fallbacks: IntCounterVec,
    pub escalations: IntCounter,
    pub replies: IntCounterVec,
    /// Inbound messages recorded but not acted on: replayed provider id, automatic reply,
    /// unknown sender (bounded `reason` label).
    pub inbound_ignored: IntCounterVec,
    pub depth: IntGauge,
    pub oldest_age: Gauge,
}

impl NotifyMetrics {
    pub fn register(r: &Registry) -> Result<NotifyMetrics, prometheus::Error> {
        let m = NotifyMetrics {
            messages: IntCounterVec::new(
                Opts::new(
                    "forewarn_notify_messages_total",
                    "Customer notification attempts by channel and outcome",
                ),
                &["channel", "outcome"],
            )?,
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "forewarn_notify_delivery_seconds",
                    "Time from the ticket change to the provider accepting the message",
                )
                .buckets(vec![
                    0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0, 43200.0,
                ]),
                &["channel"],
            )?,
            fallbacks: IntCounterVec::new(
                Opts::new(
                    "forewarn_notify_fallbacks_total",
                    "Messages moved to the next channel, by the channel that failed",
                ),
                &["channel"],
            )?,
            escalations: IntCounter::new(
                "forewarn_notify_escalations_total",
                "Reminders sent because an urgent ticket was not acknowledged",
            )?,
            replies: IntCounterVec::new(
                Opts::new(
                    "forewarn_notify_replies_total",
                    "Customer replies applied to tickets, by channel",
                ),
                &["channel"],
            )?,
            inbound_ignored: IntCounterVec::new(
                Opts::new(
                    "forewarn_notify_inbound_ignored_total",
                    "Inbound messages recorded but not acted on, by reason (replay, auto_reply, \
                     unknown_sender)",
                ),
                &["reason"],
            )?,
            depth: IntGauge::new(
                "forewarn_notify_outbox_depth",
                "Notifications waiting in the outbox (including held ones)",
            )?,
            oldest_age: Gauge::new(
                "forewarn_notify_outbox_oldest_age_seconds",
                "Age of the oldest notification waiting in the outbox",
            )?,
        };
        r.register(Box::new(m.messages.clone()))?;
        r.register(Box::new(m.latency.clone()))?;
        r.register(Box::new(m.fallbacks.clone()))?;
        r.register(Box::new(m.escalations.clone()))?;
        r.register(Box::new(m.replies.clone()))?;
        r.register(Box::new(m.inbound_ignored.clone()))?;
        r.register(Box::new(m.depth.clone()))?;
        r.register(Box::new(m.oldest_age.clone()))?;
        Ok(m)
    }
}
