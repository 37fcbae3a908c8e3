//! The ingest stage as `serve` runs it: the MQTT connection and its subscriptions, the polling
//! task feeding the processing thread over a bounded channel, and the acker sending the acks of
//! the groups the processor has made durable.

use super::formats::Command;
use super::mqtt::{self, Client, Connection, ConnectionObserver, DriveOptions, Inbound, Publish};
use super::{BrokerConfig, Config};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The stage built and not yet started.
pub struct Stage {
    /// The MQTT client: the dispatcher's ticket publishes and Sparkplug rebirth requests go out
    /// through it too.
    pub client: Client,
    conn: Connection,
    forward: mpsc::Sender<Inbound>,
    ack_queue: AckQueue,
    drive: DriveOptions,
}

/// The processing thread's ends of the stage: what arrived, in order, and where the publishes
/// of the groups it has made durable go to be acknowledged.
pub struct Feed {
    pub inbound: mpsc::Receiver<Inbound>,
    pub acks: mpsc::UnboundedSender<Vec<Publish>>,
}

/// The acks of durable groups, for whichever acker sends them (the MQTT one, or cluster mode's,
/// which acknowledges on the stream); `flushed` fires once the last is sent.
pub struct AckQueue {
    pub rx: mpsc::UnboundedReceiver<Vec<Publish>>,
    pub flushed: CancellationToken,
}

impl AckQueue {
    /// The MQTT acker.
    pub fn spawn_mqtt(self, client: Client) -> JoinHandle<()> {
        tokio::spawn(mqtt::ack_loop(client, self.rx, self.flushed))
    }
}

impl Config {
    /// Builds the stage on a checked connection (`mqtt::options`). With `subscribe` false
    /// (cluster mode, whose partitions feed the processor) the connection subscribes to
    /// nothing: it only carries the dispatcher's publishes.
    pub fn build(
        &self,
        broker: &BrokerConfig,
        options: mqtt::Options,
        ack_grace: Duration,
        subscribe: bool,
    ) -> (Stage, Feed) {
        let (client, conn) = options.connect(4096);
        // Capacity: a few groups' worth. When full, the polling task waits (backpressure
        // through the broker's in-flight window); nothing is dropped.
        let (forward, inbound) =
            mpsc::channel::<Inbound>(self.commit_group.saturating_mul(4).max(64));
        // Unbounded in type, bounded in practice by the broker's in-flight window.
        let (acks, rx) = mpsc::unbounded_channel::<Vec<Publish>>();
        let stage = Stage {
            client,
            conn,
            forward,
            ack_queue: AckQueue {
                rx,
                flushed: CancellationToken::new(),
            },
            drive: DriveOptions {
                subscriptions: if subscribe {
                    self.subscriptions()
                } else {
                    Vec::new()
                },
                reconnect_min: broker.reconnect_min.std(),
                reconnect_max: broker.reconnect_max.std(),
                grace: ack_grace,
            },
        };
        (stage, Feed { inbound, acks })
    }

    /// Every filter the daemon subscribes to: readings and events, Sparkplug B and SenML, the
    /// broker's dropped-message count; the data filters shared when `shared_group` is set.
    fn subscriptions(&self) -> Vec<String> {
        let mut filters = self.telemetry_topics.clone();
        filters.extend(self.event_topics.iter().cloned());
        // One subscription for readings and events where possible: a device's messages then
        // arrive in the order it sent them (see `ordered_subscriptions`).
        let mut subscriptions = mqtt::ordered_subscriptions(&filters);
        if subscriptions.len() > 1 {
            tracing::warn!(
                "telemetry and event topic filters differ in shape; subscribing to each: the \
                 broker may deliver a device's events out of order with its readings"
            );
        }
        subscriptions.extend(super::formats::subscriptions(self));
        let data_filters = subscriptions.len();
        // The broker's own word on what it dropped (Mosquitto's $SYS tree), never shared.
        if !self.broker_drops_topic.is_empty() {
            subscriptions.push(self.broker_drops_topic.clone());
        }
        mqtt::shared(&subscriptions, self.shared_group.as_deref(), data_filters)
    }
}

impl Stage {
    /// Where another source (cluster mode's partitions) forwards to the same processor.
    pub fn forward(&self) -> mpsc::Sender<Inbound> {
        self.forward.clone()
    }

    /// Starts the polling task (and the publisher of Sparkplug rebirth `commands`, when there
    /// are any). Returns its tasks and the ack queue, for the acker to start. After `shutdown`
    /// the polling task stops forwarding and keeps the connection until the acks are flushed
    /// or `shutdown.ack_grace` has passed.
    pub fn spawn(
        self,
        observer: Arc<dyn ConnectionObserver>,
        commands: Option<mpsc::Receiver<Command>>,
        shutdown: &CancellationToken,
    ) -> (Vec<JoinHandle<()>>, AckQueue) {
        let mut tasks = vec![tokio::spawn(mqtt::drive(
            self.conn,
            self.client.clone(),
            self.forward,
            self.drive,
            observer,
            shutdown.clone(),
            self.ack_queue.flushed.clone(),
        ))];
        if let Some(commands) = commands {
            tasks.push(tokio::spawn(super::formats::publish_commands(
                self.client,
                commands,
                shutdown.clone(),
            )));
        }
        (tasks, self.ack_queue)
    }
}
