//! Telemetry formats beside forewarn's own JSON: Sparkplug B ([`super::sparkplug`]) and SenML
//! ([`super::senml`]). The single writer asks [`Formats::decode`] first whether a topic is one of
//! theirs; what they decode is the same [`Reading`](crate::domain::Reading) and
//! [`DeviceEvent`](crate::domain::DeviceEvent) the JSON decoder yields, so it goes through the
//! same reorder buffer, features, scoring and tickets — and `forewarn train` learns from the
//! archive of it like from any other reading.
//!
//! The one thing that goes the other way is the Sparkplug rebirth request: an NCMD handed to
//! [`publish_commands`] over a bounded channel (full: dropped and counted; the next DATA the
//! host cannot read asks again once `rebirth_interval` has passed).

use super::decode::{Limits, Reject};
use super::mqtt::topic_matches;
use super::reorder::Item;
use super::sparkplug::{self, Host, RebirthReason, SeqGap, Skip};
use super::{senml, Config};
use parking_lot::Mutex;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Rebirth requests waiting for the MQTT client. A handful is plenty: each edge node asks at
/// most once per `rebirth_interval`.
const COMMAND_QUEUE: usize = 256;

/// A message forewarn publishes to a device: a Sparkplug NCMD.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// What a message on one of these formats' topics held.
#[derive(Debug)]
pub struct Decoded {
    /// Its readings and events, or why it was rejected.
    pub result: Result<Vec<Item>, Reject>,
    /// Sparkplug: messages of the edge node its `seq` says never arrived.
    pub gap: Option<SeqGap>,
}

struct FormatMetrics {
    sparkplug_messages: IntCounterVec,
    sparkplug_skipped: IntCounterVec,
    rebirths: IntCounterVec,
    rebirths_dropped: IntCounter,
    senml_not_numeric: IntCounter,
}

impl FormatMetrics {
    fn new(registry: &Registry) -> FormatMetrics {
        fn vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
            let c = IntCounterVec::new(Opts::new(name, help), &[label])
                .unwrap_or_else(|_| invalid_metric(name));
            // A second daemon on one registry (some tests) keeps the first one's series.
            let _ = registry.register(Box::new(c.clone()));
            c
        }
        fn one(registry: &Registry, name: &str, help: &str) -> IntCounter {
            let c = IntCounter::new(name, help).unwrap_or_else(|_| invalid_metric(name));
            let _ = registry.register(Box::new(c.clone()));
            c
        }
        let m = FormatMetrics {
            sparkplug_messages: vec(
                registry,
                "forewarn_sparkplug_messages_total",
                "Sparkplug B messages received, by message type",
                "type",
            ),
            sparkplug_skipped: vec(
                registry,
                "forewarn_sparkplug_metrics_skipped_total",
                "Sparkplug B metrics that did not become reading values, by why (control, \
                 not_numeric, null, not_finite, unknown_alias, unnamed)",
                "reason",
            ),
            rebirths: vec(
                registry,
                "forewarn_sparkplug_rebirth_requests_total",
                "Rebirth requests (NCMD Node Control/Rebirth) sent to edge nodes, by why",
                "reason",
            ),
            rebirths_dropped: one(
                registry,
                "forewarn_sparkplug_rebirth_requests_dropped_total",
                "Rebirth requests dropped because the MQTT client's command queue was full or gone",
            ),
            senml_not_numeric: one(
                registry,
                "forewarn_senml_records_not_numeric_total",
                "SenML records with only a string or data value, skipped",
            ),
        };
        for r in RebirthReason::ALL {
            m.rebirths.with_label_values(&[r.as_str()]);
        }
        for s in Skip::ALL {
            m.sparkplug_skipped.with_label_values(&[s.as_str()]);
        }
        m
    }
}

/// Metric names and help texts above are constants; prometheus only refuses invalid names.
fn invalid_metric(name: &str) -> ! {
    panic!("metric {name} has an invalid name or labels (a bug in ingest/formats.rs)")
}

/// The Sparkplug and SenML decoders as the single writer uses them.
pub struct Formats {
    /// `None` when `[ingest.sparkplug]` is off. A mutex only to be `Sync`: the single writer is
    /// the only one to lock it.
    sparkplug: Option<Mutex<Host>>,
    sparkplug_filters: Vec<String>,
    senml: senml::Config,
    limits: Limits,
    commands: mpsc::Sender<Command>,
    /// Taken by `serve`, which publishes what arrives; left here in tests without a client (the
    /// queue then fills and further requests are dropped and counted).
    commands_rx: Mutex<Option<mpsc::Receiver<Command>>>,
    metrics: FormatMetrics,
}

/// The topic filters the formats need subscribed (none when both are off).
pub fn subscriptions(cfg: &Config) -> Vec<String> {
    let mut v = cfg.sparkplug.subscriptions();
    v.extend(cfg.senml.topics.iter().cloned());
    v
}

impl Formats {
    pub fn build(cfg: &Config, limits: Limits, registry: &Registry) -> Formats {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        Formats {
            sparkplug: cfg
                .sparkplug
                .enabled
                .then(|| Mutex::new(Host::new(cfg.sparkplug.clone(), limits))),
            sparkplug_filters: cfg.sparkplug.subscriptions(),
            senml: cfg.senml.clone(),
            limits,
            commands: tx,
            commands_rx: Mutex::new(Some(rx)),
            metrics: FormatMetrics::new(registry),
        }
    }

    /// Puts back the Sparkplug edge node states the store kept.
    pub fn restore(&self, stored: Vec<sparkplug::StoredNode>) {
        if let Some(host) = &self.sparkplug {
            host.lock().restore(stored);
        }
    }

    /// The Sparkplug edge node states changed since the last call, for the group's commit.
    pub fn take_changed(&self) -> Vec<sparkplug::StoredNode> {
        match &self.sparkplug {
            Some(host) => host.lock().take_changed(),
            None => Vec::new(),
        }
    }

    /// What the Sparkplug host knows of an edge node (a copy), if Sparkplug is on and it was seen.
    #[cfg(test)]
    pub fn node(&self, group: &str, edge: &str) -> Option<sparkplug::Node> {
        self.sparkplug.as_ref()?.lock().node(group, edge).cloned()
    }

    /// Forgets the Sparkplug edge nodes last seen before `cutoff_ms`; the store keys of their
    /// states.
    pub fn forget_unseen(&self, cutoff_ms: i64) -> Vec<String> {
        match &self.sparkplug {
            Some(host) => host.lock().forget_unseen(cutoff_ms),
            None => Vec::new(),
        }
    }

    /// The commands (rebirth requests) to publish, once.
    pub fn take_commands(&self) -> Option<mpsc::Receiver<Command>> {
        self.commands_rx.lock().take()
    }

    /// Decodes a message when its topic belongs to Sparkplug B or SenML; `None` otherwise.
    /// `now_ms` is the daemon's clock (when a rebirth may be asked for again, and the request's
    /// own timestamp).
    pub fn decode(
        &self,
        topic: &str,
        payload: &[u8],
        received_ms: i64,
        now_ms: i64,
    ) -> Option<Decoded> {
        if let Some(host) = &self.sparkplug {
            if self
                .sparkplug_filters
                .iter()
                .any(|f| topic_matches(f, topic))
            {
                let out = host.lock().handle(topic, payload, received_ms, now_ms)?;
                return Some(self.sparkplug_outcome(out));
            }
        }
        if self.senml.topics.iter().any(|f| topic_matches(f, topic)) {
            let result =
                senml::decode(payload, topic, &self.senml, received_ms, &self.limits).map(|d| {
                    self.metrics.senml_not_numeric.inc_by(d.not_numeric);
                    d.readings.into_iter().map(Item::Reading).collect()
                });
            return Some(Decoded { result, gap: None });
        }
        None
    }

    fn sparkplug_outcome(&self, out: sparkplug::Outcome) -> Decoded {
        if let Some(k) = out.kind {
            self.metrics
                .sparkplug_messages
                .with_label_values(&[k.as_str()])
                .inc();
        }
        for (why, n) in &out.skipped {
            self.metrics
                .sparkplug_skipped
                .with_label_values(&[why.as_str()])
                .inc_by(*n);
        }
        if let Some(r) = out.rebirth {
            let reason = r.reason;
            match self.commands.try_send(Command {
                topic: r.topic,
                payload: r.payload,
            }) {
                Ok(()) => {
                    self.metrics
                        .rebirths
                        .with_label_values(&[reason.as_str()])
                        .inc();
                }
                Err(_) => self.metrics.rebirths_dropped.inc(),
            }
        }
        let result = match out.reject {
            Some(r) => Err(r),
            None => {
                // Events first: what shares a timestamp applies in the contract's order anyway.
                let mut items: Vec<Item> = out.events.into_iter().map(Item::Event).collect();
                items.extend(out.readings.into_iter().map(Item::Reading));
                Ok(items)
            }
        };
        Decoded {
            result,
            gap: out.gap,
        }
    }
}

/// Publishes the formats' commands (Sparkplug rebirth requests) until shutdown. Runs apart from
/// the task that polls the MQTT event loop, so awaiting the client cannot stall it.
pub async fn publish_commands(
    client: super::mqtt::Client,
    mut rx: mpsc::Receiver<Command>,
    shutdown: CancellationToken,
) {
    loop {
        let cmd = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = rx.recv() => match c {
                Some(c) => c,
                None => return,
            },
        };
        // QoS 0, like the commands Sparkplug hosts send: a lost request is asked again.
        if let Err(e) = client
            .publish(cmd.topic, rumqttc::QoS::AtMostOnce, false, cmd.payload)
            .await
        {
            tracing::warn!("could not queue a Sparkplug rebirth request: {e}");
        }
    }
}
