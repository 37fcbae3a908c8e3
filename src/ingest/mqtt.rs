//! The MQTT driver (rumqttc; MQTT 3.1.1 by default, MQTT 5 with `broker.protocol = 5`): connection
//! options, the polling task and the acker. Both protocol versions end in the same [`Publish`]
//! (topic, payload, what its ack needs) and the same [`Client`], so nothing past this module knows
//! which one is spoken.
//!
//! What forewarn needs from the broker:
//! - QoS 1 and persistent sessions (clean_session = false): messages published while forewarn is
//!   away or not yet acknowledged are kept and redelivered to the same `broker.client_id`. The
//!   broker's queue for an offline client bounds how long forewarn may be down without loss
//!   (Mosquitto: `max_queued_messages`, default 1000 — raise it for a real fleet).
//! - A packet size limit at least `broker.max_packet_bytes` for batched readings.
//! - An in-flight window: forewarn acknowledges a message only after its effects are committed,
//!   in groups of up to `ingest.commit_group`, so throughput is bounded by the broker's per-client
//!   in-flight limit (Mosquitto `max_inflight_messages`, default 20) divided by the commit time.
//!   Set it to at least `ingest.commit_group` for rated throughput.
//! - Retained messages for the ticket topics (`dispatch.topic_prefix`).
//!
//! With MQTT 5 the connection says the rest itself: a session expiry interval
//! (`broker.session_expiry`; with `clean_start = false` alone an MQTT 5 broker keeps no session),
//! a receive maximum (`broker.receive_maximum`: the broker never has more unacknowledged QoS 1
//! messages out to forewarn than that) and a maximum packet size (`broker.max_packet_bytes`: the
//! broker discards a larger message for us instead of sending it, so the 3.1.1 work-around below
//! is not needed; the loss then shows as a `seq` gap and in the broker's drop count).
//!
//! Tasks (trap: never await a client request inside the task that polls the event loop):
//! - `drive` polls the `EventLoop`, forwards publishes over a bounded channel and reconnects with
//!   exponential backoff and jitter (rumqttc retries at once on its own).
//! - the processor (in `serve`) drains that channel, commits, then hands the group's publishes to
//! - `ack_loop`, which sends the acks through the `AsyncClient`.

use super::config::BrokerConfig;
use crate::clock::Clock as _;
use rand::Rng;
use rumqttc::v5;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, Transport};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("config key broker.url: {0}")]
    Url(#[from] BrokerUrlError),
    #[error("config key broker.ca_file: {path}: {message}")]
    Ca { path: String, message: String },
    #[error("config key broker.protocol: {0} is not supported (4 = MQTT 3.1.1, 5 = MQTT 5)")]
    Protocol(u8),
}

/// A request to the MQTT client that could not be queued: the event loop is gone.
#[derive(Debug, thiserror::Error)]
#[error("mqtt client: {0}")]
pub struct ClientError(String);

/// One message as the broker delivered it, whichever the protocol version.
#[derive(Debug, Clone)]
pub struct Publish {
    pub topic: String,
    pub payload: bytes::Bytes,
    /// What acknowledging it needs (its packet id and QoS).
    ack: AckToken,
    /// Set when the message came from a stream (cluster mode) rather than the MQTT broker.
    stream: Option<StreamAck>,
}

/// How a message read from a JetStream stream (cluster mode) is acknowledged once committed.
#[derive(Debug, Clone)]
pub struct StreamAck {
    /// The subject the acknowledgement is published to; `None` for a message replayed to
    /// rebuild state, which an earlier owner acknowledged long ago.
    pub reply: Option<String>,
    /// The partition's count of messages handed to the processor and not yet acknowledged
    /// (or, replayed, not yet committed): counted down after the acknowledgement.
    pub outstanding: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// The message's partition and stream sequence: once its group is committed, the
    /// partition's state holds everything up to it (kept in the store, see
    /// `crate::cluster`).
    pub partition: u32,
    pub seq: u64,
}

#[derive(Debug, Clone, Copy)]
struct AckToken {
    pkid: u16,
    qos: QoS,
}

impl Publish {
    fn from_v4(p: rumqttc::Publish) -> Publish {
        Publish {
            topic: p.topic,
            payload: p.payload,
            ack: AckToken {
                pkid: p.pkid,
                qos: p.qos,
            },
            stream: None,
        }
    }

    fn from_v5(p: v5::mqttbytes::v5::Publish) -> Publish {
        // The broker checks that topics are UTF-8 (both versions require it).
        let topic = match String::from_utf8(p.topic.to_vec()) {
            Ok(t) => t,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        let qos = match p.qos {
            v5::mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
            v5::mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
            v5::mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
        };
        Publish {
            topic,
            payload: p.payload,
            ack: AckToken { pkid: p.pkid, qos },
            stream: None,
        }
    }

    /// A message built by hand (tests, benchmarks): nothing to acknowledge.
    pub fn new(topic: impl Into<String>, payload: impl Into<bytes::Bytes>) -> Publish {
        Publish {
            topic: topic.into(),
            payload: payload.into(),
            ack: AckToken {
                pkid: 0,
                qos: QoS::AtMostOnce,
            },
            stream: None,
        }
    }

    /// A message read from a stream; acknowledged through `ack`, not over MQTT.
    pub fn from_stream(
        topic: impl Into<String>,
        payload: impl Into<bytes::Bytes>,
        ack: StreamAck,
    ) -> Publish {
        Publish {
            stream: Some(ack),
            ..Publish::new(topic, payload)
        }
    }

    /// How to acknowledge it, when it came from a stream.
    pub fn stream_ack(&self) -> Option<&StreamAck> {
        self.stream.as_ref()
    }

    /// Read from a stream only to rebuild state (cluster mode's replay): an earlier owner
    /// committed it and sent what it changed.
    pub fn is_replayed(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.reply.is_none())
    }
}

fn qos_v5(q: QoS) -> v5::mqttbytes::QoS {
    match q {
        QoS::AtMostOnce => v5::mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => v5::mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => v5::mqttbytes::QoS::ExactlyOnce,
    }
}

/// The handle the daemon publishes, subscribes and acknowledges through.
#[derive(Clone)]
pub enum Client {
    V4(AsyncClient),
    V5(v5::AsyncClient),
}

impl Client {
    /// A publish at `qos`; QoS 1 is queued into the session (re-sent after a reconnect until
    /// acknowledged), QoS 0 suits commands that are asked again when lost.
    pub async fn publish(
        &self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), ClientError> {
        match self {
            Client::V4(c) => c
                .publish(topic, qos, retain, payload)
                .await
                .map_err(|e| ClientError(e.to_string())),
            Client::V5(c) => c
                .publish(topic, qos_v5(qos), retain, payload)
                .await
                .map_err(|e| ClientError(e.to_string())),
        }
    }

    /// Acknowledges a delivered message (nothing for QoS 0, nor for a message that came from a
    /// stream: see [`StreamAck`]).
    pub async fn ack(&self, p: &Publish) -> Result<(), ClientError> {
        if p.stream.is_some() {
            return Ok(());
        }
        match self {
            Client::V4(c) => {
                let mut m = rumqttc::Publish::new("", p.ack.qos, Vec::new());
                m.pkid = p.ack.pkid;
                c.ack(&m).await.map_err(|e| ClientError(e.to_string()))
            }
            Client::V5(c) => {
                let mut m =
                    v5::mqttbytes::v5::Publish::new("", qos_v5(p.ack.qos), Vec::new(), None);
                m.pkid = p.ack.pkid;
                c.ack(&m).await.map_err(|e| ClientError(e.to_string()))
            }
        }
    }

    fn try_subscribe_many(&self, filters: &[String]) -> Result<(), ClientError> {
        match self {
            Client::V4(c) => c
                .try_subscribe_many(
                    filters
                        .iter()
                        .map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce)),
                )
                .map_err(|e| ClientError(e.to_string())),
            Client::V5(c) => c
                .try_subscribe_many(filters.iter().map(|t| {
                    v5::mqttbytes::v5::Filter::new(t.clone(), v5::mqttbytes::QoS::AtLeastOnce)
                }))
                .map_err(|e| ClientError(e.to_string())),
        }
    }

    fn try_disconnect(&self) -> Result<(), ClientError> {
        match self {
            Client::V4(c) => c.try_disconnect().map_err(|e| ClientError(e.to_string())),
            Client::V5(c) => c.try_disconnect().map_err(|e| ClientError(e.to_string())),
        }
    }
}

/// Connection options for the configured protocol version.
#[derive(Debug)]
pub enum Options {
    V4(Box<MqttOptions>),
    V5(Box<v5::MqttOptions>),
}

impl Options {
    /// The client and the event loop the polling task ([`drive`]) owns.
    pub fn connect(self, capacity: usize) -> (Client, Connection) {
        match self {
            Options::V4(o) => {
                let (c, e) = AsyncClient::new(*o, capacity);
                (Client::V4(c), Connection::V4(Box::new(e)))
            }
            Options::V5(o) => {
                let (c, e) = v5::AsyncClient::new(*o, capacity);
                (Client::V5(c), Connection::V5(Box::new(e)))
            }
        }
    }
}

/// The event loop of either protocol version.
pub enum Connection {
    V4(Box<EventLoop>),
    V5(Box<v5::EventLoop>),
}

/// What one poll of the event loop yields, the same for both versions.
enum Polled {
    Publish(Publish),
    ConnAck { session_present: bool },
    Other,
}

impl Connection {
    async fn poll(&mut self) -> Result<Polled, rumqttc::ConnectionError> {
        Ok(match self {
            Connection::V4(e) => match e.poll().await? {
                Event::Incoming(Packet::Publish(p)) => Polled::Publish(Publish::from_v4(p)),
                Event::Incoming(Packet::ConnAck(a)) => Polled::ConnAck {
                    session_present: a.session_present,
                },
                _ => Polled::Other,
            },
            Connection::V5(e) => match e.poll().await.map_err(v5_error)? {
                v5::Event::Incoming(v5::Incoming::Publish(p)) => {
                    Polled::Publish(Publish::from_v5(p))
                }
                v5::Event::Incoming(v5::Incoming::ConnAck(a)) => Polled::ConnAck {
                    session_present: a.session_present,
                },
                _ => Polled::Other,
            },
        })
    }

    /// The packet limit set at start (3.1.1 only: MQTT 5 announces it to the broker).
    fn packet_limit(&self) -> usize {
        match self {
            Connection::V4(e) => e.mqtt_options.max_packet_size(),
            Connection::V5(_) => MQTT_MAX_PACKET,
        }
    }
}

/// MQTT 5 connection errors in the 3.1.1 error type, so [`drive`] handles one kind. Only the
/// message is kept (the caller logs and reconnects).
fn v5_error(e: v5::ConnectionError) -> rumqttc::ConnectionError {
    rumqttc::ConnectionError::Io(std::io::Error::other(format!("mqtt 5: {e}")))
}

/// One message as received: the publish (kept for its ack) and when it arrived.
pub struct Inbound {
    pub publish: Publish,
    /// Monotonic receipt time, for the reading → ticket latency.
    pub received: Instant,
    /// Wall-clock receipt time (epoch ms): the event time of readings without `ts`.
    pub received_ms: i64,
}

/// A broker URL that is not `mqtt[s]://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerUrlError {
    #[error("{0:?} must start with mqtt:// or mqtts://")]
    Scheme(String),
    #[error("{0:?}: unclosed [ in host")]
    Bracket(String),
    #[error("{url:?}: bad port {port:?}")]
    Port { url: String, port: String },
    #[error("{0:?}: no usable host")]
    Host(String),
}

/// Splits `mqtt://host:port` / `mqtts://host:port` into (tls, host, port): the one broker-URL
/// parser (the daemon, replay, the demo and the MQTT notification channel use it).
pub fn parse_url(url: &str) -> Result<(bool, String, u16), BrokerUrlError> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(BrokerUrlError::Scheme(url.to_string()));
    };
    let rest = rest.trim_end_matches('/');
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, tail) = v6
            .split_once(']')
            .ok_or_else(|| BrokerUrlError::Bracket(url.to_string()))?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| BrokerUrlError::Port {
                url: url.to_string(),
                port: p.to_string(),
            })?,
            None => default_port,
        };
        (h.to_string(), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse().map_err(|_| BrokerUrlError::Port {
                    url: url.to_string(),
                    port: p.to_string(),
                })?,
            ),
            None => (rest.to_string(), default_port),
        }
    };
    if host.is_empty() || host.contains('/') {
        return Err(BrokerUrlError::Host(url.to_string()));
    }
    Ok((tls, host, port))
}

/// Builds rumqttc options from `[broker]` for its protocol version.
pub fn options(cfg: &BrokerConfig, client_id: &str) -> Result<Options, MqttError> {
    match cfg.protocol {
        4 => options_v4(cfg, client_id).map(|o| Options::V4(Box::new(o))),
        5 => options_v5(cfg, client_id).map(|o| Options::V5(Box::new(o))),
        p => Err(MqttError::Protocol(p)),
    }
}

/// MQTT 5: a persistent session that outlives the connection for `broker.session_expiry`, manual
/// acks, and the receive maximum and packet limit announced to the broker.
fn options_v5(cfg: &BrokerConfig, client_id: &str) -> Result<v5::MqttOptions, MqttError> {
    let (tls, host, port) = parse_url(&cfg.url)?;
    let mut o = v5::MqttOptions::new(client_id, host, port);
    o.set_keep_alive(cfg.keep_alive.std().max(Duration::from_secs(1)));
    o.set_clean_start(false);
    // 0 would end the session at every disconnect; u32::MAX means "never expires".
    let expiry = cfg.session_expiry.std().as_secs().clamp(1, u32::MAX as u64) as u32;
    o.set_session_expiry_interval(Some(expiry));
    o.set_receive_maximum(Some(cfg.receive_maximum.max(1)));
    let limit = cfg.max_packet_bytes.clamp(64, MQTT_MAX_PACKET) as u32;
    o.set_max_packet_size(Some(limit));
    o.set_manual_acks(true);
    o.set_request_channel_capacity(4096);
    if let Some(u) = &cfg.username {
        let p = cfg
            .password
            .as_ref()
            .map(|p| p.expose())
            .unwrap_or_default();
        o.set_credentials(u.clone(), p);
    }
    if tls {
        o.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(tls_config(cfg)?)),
        ));
    }
    Ok(o)
}

/// MQTT 3.1.1: persistent session, manual acks, our packet limit.
fn options_v4(cfg: &BrokerConfig, client_id: &str) -> Result<MqttOptions, MqttError> {
    let (tls, host, port) = parse_url(&cfg.url)?;
    let mut o = MqttOptions::new(client_id, host, port);
    o.set_keep_alive(cfg.keep_alive.std().max(Duration::from_secs(1)));
    // The broker keeps our subscriptions and unacknowledged messages while we are away.
    o.set_clean_session(false);
    // Ack only after the commit (see the module doc).
    o.set_manual_acks(true);
    o.set_max_packet_size(cfg.max_packet_bytes, cfg.max_packet_bytes);
    o.set_inflight(cfg.inflight.max(1));
    // Acks and ticket publishes queue here; the polling task drains it on every poll.
    o.set_request_channel_capacity(4096);
    if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
        o.set_credentials(u.clone(), p.expose());
    } else if let Some(u) = &cfg.username {
        o.set_credentials(u.clone(), String::new());
    }
    if tls {
        o.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(tls_config(cfg)?)),
        ));
    }
    Ok(o)
}

fn tls_config(cfg: &BrokerConfig) -> Result<rustls::ClientConfig, MqttError> {
    tls_client_config(cfg.ca_file.as_deref())
}

/// The rustls client configuration for an `mqtts://` broker: the certificates of `ca_file`
/// (PEM), or the web PKI roots. Shared by ingest and the notify MQTT channel.
pub fn tls_client_config(
    ca_file: Option<&std::path::Path>,
) -> Result<rustls::ClientConfig, MqttError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let ca_err = |message: String| MqttError::Ca {
                path: path.display().to_string(),
                message,
            };
            let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
            let mut n = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| ca_err(e.to_string()))?;
                roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
                n += 1;
            }
            if n == 0 {
                return Err(ca_err("no PEM certificates found".into()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Exponential backoff with full jitter between `min` and `max`.
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min: min.max(Duration::from_millis(1)),
            max: max.max(min),
            attempt: 0,
        }
    }
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
    /// The next wait: uniformly random in [min, min·2^attempt] capped at max.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.min.saturating_mul(1u32 << self.attempt.min(20));
        let cap = exp.min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let lo = self.min.as_millis() as u64;
        let hi = (cap.as_millis() as u64).max(lo);
        Duration::from_millis(rand::rng().random_range(lo..=hi))
    }
}

/// What the polling task reports to the rest of the daemon.
pub trait ConnectionObserver: Send + Sync {
    /// Connected; `session_present` is the broker's word on whether it kept our session.
    fn connected(&self, session_present: bool);
    /// The connection was lost (or refused); the task will try again.
    fn disconnected(&self, error: &str);
    /// The task ended because the daemon is shutting down: an orderly end, not a fault.
    fn closed(&self);
}

/// Settings of the polling task.
pub struct DriveOptions {
    pub subscriptions: Vec<String>,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// After shutdown, how long to keep polling so the last acks reach the broker.
    pub grace: Duration,
}

/// Polls the event loop until shutdown. Publishes go to `forward`; when it is full, `send`
/// waits, so we stop reading from the socket and the broker stops sending once our in-flight
/// window is used up: backpressure, nothing dropped. After `shutdown`, nothing more is forwarded
/// (those messages stay unacknowledged and are redelivered to the next run); we keep polling until
/// `acks_flushed` fires or the grace time ends, so acks queued by the processor still go out.
pub async fn drive(
    mut conn: Connection,
    client: Client,
    forward: mpsc::Sender<Inbound>,
    opts: DriveOptions,
    observer: Arc<dyn ConnectionObserver>,
    shutdown: CancellationToken,
    acks_flushed: CancellationToken,
) {
    let mut forward = Some(forward);
    let mut backoff = Backoff::new(opts.reconnect_min, opts.reconnect_max);
    // broker.max_packet_bytes (both directions were set from it).
    let packet_limit = conn.packet_limit();
    let mut connected = false;
    let grace_end = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(grace_end);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if forward.is_some() => {
                forward = None;
                grace_end.as_mut().reset(tokio::time::Instant::now() + opts.grace);
                if !connected {
                    break;
                }
            }
            _ = acks_flushed.cancelled(), if forward.is_none() => {
                // Give the queued acks one more round through the socket, then say goodbye.
                let _ = client.try_disconnect();
                let _ = tokio::time::timeout(Duration::from_millis(300), async {
                    while conn.poll().await.is_ok() {}
                }).await;
                break;
            }
            _ = &mut grace_end, if forward.is_none() => break,
            ev = conn.poll() => match ev {
                Ok(Polled::Publish(p)) => {
                    if let Some(f) = &forward {
                        let msg = Inbound {
                            publish: p,
                            received: Instant::now(),
                            // Real wall time, not the daemon's clock: a device's clock skew
                            // and the reading-to-ticket latency are measured against it.
                            received_ms: crate::clock::SystemClock.now_ms(),
                        };
                        if f.send(msg).await.is_err() {
                            forward = None;
                        }
                    }
                }
                Ok(Polled::ConnAck { session_present }) => {
                    // A limit raised for one oversized message applies to this connection
                    // only (it is fixed when connecting); the next one is back to the bound.
                    if let Connection::V4(e) = &mut conn {
                        if e.mqtt_options.max_packet_size() != packet_limit {
                            e.mqtt_options.set_max_packet_size(packet_limit, packet_limit);
                        }
                    }
                    connected = true;
                    backoff.reset();
                    observer.connected(session_present);
                    tracing::info!(session_present, "connected to broker");
                    // Subscribing again is harmless with a kept session and needed without one.
                    // Not awaited here (trap 5): a request awaited in the polling task can hang.
                    // None in cluster mode, where the connection only carries ticket publishes.
                    let subscribed = if opts.subscriptions.is_empty() {
                        Ok(())
                    } else {
                        client.try_subscribe_many(&opts.subscriptions)
                    };
                    if let Err(e) = subscribed {
                        tracing::error!("could not queue subscriptions: {e}");
                    }
                }
                Ok(Polled::Other) => {}
                Err(e) => {
                    if connected {
                        connected = false;
                    }
                    if let (Some(n), Connection::V4(ev)) = (oversized_packet(&e), &mut conn) {
                        // MQTT 3.1.1 cannot tell the broker our packet limit, so a message over
                        // it is redelivered on every reconnect and would stall the session for
                        // good. Read it once at its size (at most the MQTT maximum): ingest then
                        // rejects it (too_large) and acknowledges it.
                        tracing::warn!(
                            bytes = n,
                            limit = packet_limit,
                            "the broker sent a packet over broker.max_packet_bytes; accepting \
                             it once on the next connection so it is rejected and acknowledged"
                        );
                        ev.mqtt_options
                            .set_max_packet_size(n.min(MQTT_MAX_PACKET), packet_limit);
                    }
                    observer.disconnected(&e.to_string());
                    if forward.is_none() {
                        break;
                    }
                    let wait = backoff.next_delay();
                    tracing::warn!("broker connection: {e}; retrying in {wait:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
            }
        }
    }
    observer.closed();
}

/// The largest remaining length an MQTT packet can declare.
const MQTT_MAX_PACKET: usize = 268_435_455;

/// The declared size of an incoming packet refused for being over our limit.
fn oversized_packet(e: &rumqttc::ConnectionError) -> Option<usize> {
    match e {
        rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::Error::PayloadSizeLimitExceeded(n),
        )) => Some(*n),
        _ => None,
    }
}

/// Sends acks for committed groups. Runs apart from the polling task so that a full request
/// channel only delays acks, never the loop that drains it. The channel is unbounded in type but
/// bounded in practice by the broker's in-flight window: each entry is a message the broker
/// delivered and is waiting on.
pub async fn ack_loop(
    client: Client,
    mut acks: mpsc::UnboundedReceiver<Vec<Publish>>,
    flushed: CancellationToken,
) {
    while let Some(group) = acks.recv().await {
        for p in &group {
            // Fails only when the event loop is gone; the broker then redelivers, and
            // processing is idempotent.
            if client.ack(p).await.is_err() {
                break;
            }
        }
    }
    flushed.cancel();
}

/// The first `n` filters as members of the shared subscription `group` (`$share/{group}/...`):
/// the broker then gives each message to one member of the group. The rest (the broker's own
/// `$SYS` topics, which cannot be shared) stay plain subscriptions.
pub fn shared(filters: &[String], group: Option<&str>, n: usize) -> Vec<String> {
    match group {
        Some(g) => filters
            .iter()
            .enumerate()
            .map(|(i, f)| {
                if i < n {
                    format!("$share/{g}/{f}")
                } else {
                    f.clone()
                }
            })
            .collect(),
        None => filters.to_vec(),
    }
}

/// Whether an MQTT topic matches a filter with `+` and `#` wildcards.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The subscriptions that carry `filters`: when they all have the same number of levels and no
/// `#`, ONE filter covering them all (levels that differ become `+`), else the filters as given.
///
/// Why: MQTT orders messages only within a topic, and brokers deliver what different
/// subscriptions match on separate paths (rumqttd moved a device's events thousands of messages
/// away from its readings when `telemetry` and `events` were two subscriptions). A device's
/// failure or maintenance event must reach the engine between the readings it came between,
/// or the daemon's tickets differ from what `forewarn evaluate` computes for the same history.
/// Under one subscription a broker keeps each publisher's order. Topics the covering filter adds
/// that neither list names are acknowledged and ignored by the processor.
pub fn ordered_subscriptions(filters: &[String]) -> Vec<String> {
    let split: Vec<Vec<&str>> = filters.iter().map(|f| f.split('/').collect()).collect();
    let Some(first) = split.first() else {
        return Vec::new();
    };
    if split.len() == 1
        || split
            .iter()
            .any(|l| l.len() != first.len() || l.contains(&"#"))
    {
        return filters.to_vec();
    }
    let merged: Vec<&str> = (0..first.len())
        .map(|i| {
            if split.iter().all(|l| l[i] == first[i]) {
                first[i]
            } else {
                "+"
            }
        })
        .collect();
    vec![merged.join("/")]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn readings_and_events_share_one_subscription_when_one_filter_covers_both() {
        let got = ordered_subscriptions(&strings(&["devices/+/telemetry", "devices/+/events"]));
        assert_eq!(got, strings(&["devices/+/+"]));
        for t in ["devices/a/telemetry", "devices/a/events"] {
            assert!(topic_matches(&got[0], t));
        }
        assert_eq!(
            ordered_subscriptions(&strings(&["site/x/+/telemetry", "site/y/+/events"])),
            strings(&["site/+/+/+"])
        );
    }

    #[test]
    fn filters_of_different_shapes_stay_separate_subscriptions() {
        let uneven = strings(&["devices/+/telemetry", "alarms/#"]);
        assert_eq!(ordered_subscriptions(&uneven), uneven);
        let levels = strings(&["a/+/telemetry", "a/+/x/events"]);
        assert_eq!(ordered_subscriptions(&levels), levels);
        assert_eq!(ordered_subscriptions(&strings(&["a/+"])), strings(&["a/+"]));
        assert!(ordered_subscriptions(&[]).is_empty());
    }

    #[test]
    fn urls_parse_with_default_ports() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1884").unwrap(),
            (false, "127.0.0.1".into(), 1884)
        );
        assert_eq!(
            parse_url("mqtts://broker.example").unwrap(),
            (true, "broker.example".into(), 8883)
        );
        assert_eq!(
            parse_url("mqtt://[::1]:1999").unwrap(),
            (false, "::1".into(), 1999)
        );
        assert!(parse_url("http://x").is_err());
        assert!(parse_url("mqtt://x:notaport").is_err());
    }

    #[test]
    fn tls_options_use_the_configured_ca_file_and_refuse_a_bad_one() {
        crate::tls::install_crypto();
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(&ca, ck.cert.pem()).unwrap();
        let mut cfg = BrokerConfig {
            url: "mqtts://localhost:8883".into(),
            ca_file: Some(ca.clone()),
            username: Some("forewarn".into()),
            password: Some("pw".into()),
            ..BrokerConfig::default()
        };
        let Options::V4(o) = options(&cfg, "fw").unwrap() else {
            panic!("protocol 4 is MQTT 3.1.1")
        };
        assert!(matches!(o.transport(), Transport::Tls(_)));
        assert!(!o.clean_session());
        assert_eq!(
            o.credentials().map(|c| c.username),
            Some("forewarn".to_string())
        );
        std::fs::write(&ca, "not a certificate").unwrap();
        let e = options(&cfg, "fw").unwrap_err().to_string();
        assert!(e.contains("broker.ca_file"), "{e}");
        cfg.ca_file = None;
        assert!(options(&cfg, "fw").is_ok(), "web PKI roots by default");
    }

    #[test]
    fn mqtt5_options_announce_session_expiry_receive_maximum_and_packet_limit() {
        let cfg = BrokerConfig {
            protocol: 5,
            session_expiry: crate::domain::Dur::secs(3600),
            receive_maximum: 512,
            max_packet_bytes: 64 * 1024,
            username: Some("forewarn".into()),
            ..BrokerConfig::default()
        };
        let Options::V5(o) = options(&cfg, "fw").unwrap() else {
            panic!("protocol 5 is MQTT 5")
        };
        assert!(!o.clean_start());
        assert_eq!(o.session_expiry_interval(), Some(3600));
        assert_eq!(o.receive_maximum(), Some(512));
        assert_eq!(o.max_packet_size(), Some(64 * 1024));
        assert!(o.manual_acks());
        let bad = BrokerConfig {
            protocol: 3,
            ..BrokerConfig::default()
        };
        let e = options(&bad, "fw").err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("broker.protocol")));
    }

    #[test]
    fn shared_subscriptions_prefix_every_filter() {
        let f = strings(&["devices/+/+", "$SYS/broker/publish/messages/dropped"]);
        assert_eq!(
            shared(&f, Some("forewarn"), 1),
            strings(&[
                "$share/forewarn/devices/+/+",
                "$SYS/broker/publish/messages/dropped"
            ])
        );
        assert_eq!(shared(&f, None, 1), f);
    }

    #[test]
    fn backoff_grows_within_bounds() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..30 {
            let d = b.next_delay();
            assert!(d >= Duration::from_millis(100) && d <= Duration::from_secs(2));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn wildcards_match_levels() {
        assert!(topic_matches("devices/+/telemetry", "devices/d1/telemetry"));
        assert!(!topic_matches("devices/+/telemetry", "devices/d1/events"));
        assert!(!topic_matches(
            "devices/+/telemetry",
            "devices/a/b/telemetry"
        ));
        assert!(topic_matches("devices/#", "devices/a/b"));
    }
}
